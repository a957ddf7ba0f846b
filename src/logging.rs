//! What procscope logs, and how to see it. (This module has no items; it is
//! a page of the documentation.)
//!
//! procscope reports through [`tracing`](https://docs.rs/tracing), the
//! logging facade tokio uses. It installs no subscriber and prints nothing by
//! itself: a gateway sees procscope's events once it installs a subscriber,
//! the way it sees its own. Every event's target is under `procscope` (the
//! module path, such as `procscope::supervisor`), so a filter of
//! `procscope=debug` picks all of them.
//!
//! # Turning it on
//!
//! In a gateway, with the `tracing-subscriber` crate and its `env-filter`
//! feature:
//!
//! ```ignore
//! tracing_subscriber::fmt()
//!     .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
//!     .with_writer(std::io::stderr)
//!     .init();
//! // RUST_LOG=procscope=debug ./gateway
//! ```
//!
//! The `procscope` command line tool does this for you: warnings by default,
//! `-v` for info, `-vv` for debug, `-vvv` for trace, `-q` for errors only,
//! and `RUST_LOG` when it is set (for example `RUST_LOG=procscope=debug`).
//! Its logs go to stderr, so they never mix with a command's stdout.
//!
//! # Spans
//!
//! | span | fields | covers |
//! |---|---|---|
//! | `session` | `id` | the session's spawns and its end, whether by [`close`](crate::Session::close), its guard or a sweep |
//! | `sweep` | `scope` | one [`Supervisor::sweep`](crate::Supervisor::sweep), including the sweep of a [`tick`](crate::Supervisor::tick) |
//!
//! # Events
//!
//! | level | when | fields |
//! |---|---|---|
//! | `INFO` | a supervisor started, with its root and instance | `root`, `instance` |
//! | `INFO` | instances of supervisors that are gone were recovered | `recovery` (the report) |
//! | `INFO` | the guardian watches an instance | `pid`, `instance` |
//! | `INFO` | a session ended with processes alive and went to the orphan pool | (the `session` span) |
//! | `INFO` | a sweep is done; a supervisor shut down | `report` |
//! | `INFO` | the gateway moved itself out of the cgroup it was delegated, into `supervisor/` | `root` |
//! | `DEBUG` | a child was spawned | `pid`, `program` |
//! | `DEBUG` | a session ended with nothing alive and its cgroup was removed | (the `session` span) |
//! | `DEBUG` | a session's cgroup was created | `session`, `cgroup`, `owner` |
//! | `WARN` | a session's limits struck (OOM kills, forks refused by `pids.max`) | `oom_kills`, `pids_max_hits` |
//! | `WARN` | ending or removing a session failed; it stays for the next sweep | `session`, `error` |
//! | `WARN` | a fallback was taken: `clone3(CLONE_INTO_CGROUP)` missing, no fd left to end a session, thawing after a freeze failed | `error`, `cgroup` |
//! | `DEBUG` | no shared sealed mount namespace: each sealed child makes its own | `error` |
//! | `WARN` | a supervisor was dropped without [`shutdown`](crate::Supervisor::shutdown): its sessions are killed | `instance` |
//! | `WARN` | the instance cgroup was removed by someone else and made again; processes were left in it after the final sweep | `instance` |
//! | `WARN` | a child moved a protected process (the gateway, an ancestor, the guardian) into a cgroup being ended, and it was moved back out | `pid`, `cgroup` |
//! | `WARN` | children run unsealed because this process cannot seal them | `error` |
//! | `ERROR` | the reaper thread cannot run: dropped children may stay zombies | `error` |
//!
//! The guardian, a separate process, writes its own log only when the
//! gateway's environment has `PROCSCOPE_GUARDIAN_LOG=FILE`: one line per
//! thing it does, appended to FILE.
