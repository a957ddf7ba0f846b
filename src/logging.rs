//! What procscope logs, and how to see it. (This module has no items; it is
//! a page of the documentation.)
//!
//! procscope reports through [`tracing`](https://docs.rs/tracing), the
//! logging facade tokio uses. It installs no subscriber and prints nothing by
//! itself: a gateway sees procscope's events once it installs a subscriber,
//! the way it sees its own. Every target is under `procscope`, so a filter
//! of `procscope=debug` picks all of them. What procscope does to processes
//! and cgroups is reported as [structured events](#structured-events) with
//! the target `procscope::event`; the rest (warnings, start-up, fallbacks)
//! has the module path as its target, such as `procscope::supervisor`.
//!
//! # Turning it on
//!
//! In a gateway, with the `tracing-subscriber` crate and its `env-filter`
//! feature (and `json` for JSON lines):
//!
//! ```ignore
//! tracing_subscriber::fmt()
//!     .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
//!     .with_writer(std::io::stderr)
//!     .init();
//! // RUST_LOG=procscope=debug ./gateway           everything procscope logs
//! // RUST_LOG=warn,procscope::event=info ./gateway  warnings, and the structured events
//! ```
//!
//! The `procscope` command line tool does this for you: warnings by default,
//! `-v` for info (the structured events), `-vv` for debug, `-vvv` for trace,
//! `-q` for errors only, and `RUST_LOG` when it is set (for example
//! `RUST_LOG=procscope::event=info`). Its logs go to stderr, so they never
//! mix with a command's stdout. `--log-format json` (a global option, so
//! `procscope -v --log-format json sweep` and `procscope sweep -v
//! --log-format json` are the same) writes one JSON object per line instead
//! of text, for journald or a log shipper.
//!
//! # Structured events
//!
//! One `tracing` event for each thing procscope does to processes and
//! cgroups, at `INFO`, with the target `procscope::event`:
//! `RUST_LOG=procscope::event=info` selects exactly these (and
//! `procscope::event=debug` adds the per-process detail). Their fields:
//!
//! | field | in | what |
//! |---|---|---|
//! | `action` | every event | what was done: one of the actions below |
//! | `cgroup` | every event | the path of the cgroup acted on (a session's, an instance's, an `exec` command's, or the root for a sweep across it) |
//! | `result` | every event | `"ok"`, or the error's text |
//! | `session` | events about a session | the session id |
//! | `instance` | events about an instance or its sessions | the instance directory's name, `i-<pidns>-<pid>-<start>` |
//! | `pid` | events about one process | its pid (a number) |
//!
//! `session` and `instance` are read from the cgroup's path (`…/i-…/s-<id>`;
//! `s-<id>~N` while an orphan of the same id is still being swept is still
//! session `<id>`). A field that does not apply is absent, never empty.
//!
//! | `action` | when | where | more fields |
//! |---|---|---|---|
//! | `spawn` | a child was started in a session (or any cgroup, [`Command::spawn_in`](crate::Command::spawn_in)), or a spawn failed (then no `pid`) | [`Session::spawn`](crate::Session::spawn) and the methods built on it, [`Command::spawn_in`](crate::Command::spawn_in) | `pid`, `program` |
//! | `signal` | one step of ending a cgroup: SIGTERM to each of its processes (each is also sent SIGCONT, so that a stopped one acts on it), or SIGKILL to those that left it; only when it reached a process | ending a session or instance (close, sweep, recovery, `procscope end`) | `signal` (`"SIGTERM"`, `"SIGKILL"`), `processes` (how many), `failed` (sends that failed, a gone process not counted) |
//! | `cgroup.kill` | the processes still there after the grace period were killed by writing `cgroup.kill` | ending a session or instance; a supervisor's shutdown and drop | `processes` (how many were there, when counted) |
//! | `kill.fallback` | the same on a kernel without `cgroup.kill` (before 5.14): freeze, SIGKILL each member through a verified pidfd, thaw, until none is left | as `cgroup.kill` | `processes` |
//! | `session.end` | a session was ended and its cgroup removed | its guard, when nothing was left running; [`Session::close`](crate::Session::close); a sweep | `by` (`"guard"`, `"close"` or `"sweep"`: also shutdown, recovery, `procscope end` and `procscope sweep`), `processes` (signalled), `terminated` (gone within the grace period), `killed`, `elapsed_ms` (not for `guard`); with an error, only `by` and `elapsed_ms` |
//! | `session.orphan` | a session's guard let it go with processes still running: it went to the orphan pool for the next sweep | the guard ([`Session`](crate::Session)'s `Drop`) | |
//! | `sweep` | one sweep | [`Supervisor::sweep`](crate::Supervisor::sweep) and the sweeps of [`tick`](crate::Supervisor::tick) and [`shutdown`](crate::Supervisor::shutdown) (`cgroup`: the instance); [`tree::sweep`](crate::tree::sweep) and `procscope sweep` (`cgroup`: the root) | `scope` (`"orphans"`, `"all"`; across a root also `"stale"`), `sessions`, `leaks_prevented`, `terminated`, `killed`, `removed` (cgroups), `errors`, `elapsed_ms` |
//! | `recovery` | the instance of a gateway that is gone was ended: its sessions, then the instance | [`recover`](crate::recover): a supervisor's start, `procscope sweep` | `owner` (the gone gateway's pid), `sessions`, `leaks_prevented`, `terminated`, `killed`, `removed`, `elapsed_ms` |
//! | `exec.place` | `procscope exec` placed itself (its `pid`, the command's to be) in its cgroup `…/i-…/s-<id>/p-…`, or failed to | [`tree::place_command`](crate::tree::place_command) | `owner` (the gateway's pid); the CLI adds the span `exec` with `program` |
//! | `guardian.start` | a guardian was started for an instance, or failed to | [`Builder::guardian`](crate::Builder::guardian), the first `procscope exec` of an instance | `pid` (the guardian's), `role` (`"supervisor"` or `"exec"`) |
//!
//! The number of lines stays bounded by sessions, not processes: ending a
//! session of 1000 processes is one `signal` event, at most one `cgroup.kill`
//! and one `session.end` at `INFO`. Each process signalled is a `DEBUG` event
//! of its own (action `signal`, with `pid` and no `processes`), and so is
//! each SIGKILL of the fallback kill. A sweep that found nothing to do is a
//! `sweep` event at `DEBUG`, so that a gateway that sweeps often and finds
//! nothing logs nothing at `INFO`.
//!
//! Not events: signals the gateway sends itself through
//! [`ContainedChild`](crate::ContainedChild) (its own action), and what the
//! guardian does (a separate process without a subscriber; see below).
//!
//! ## As JSON
//!
//! `procscope --log-format json` uses `tracing-subscriber`'s JSON layout with
//! the event's fields at the top level: `timestamp`, `level`, `message`, the
//! fields, `target`, and `span` and `spans` (the span the event is in and
//! all of them, each with its `name` and fields) when it is in one. A session's
//! spawns and its end by its guard are in its `session` span (`id`); what a
//! supervisor's sweep does, in the `sweep` span (`scope`). One line, wrapped
//! here:
//!
//! ```text
//! {"timestamp":"2026-05-04T10:21:07.402113Z","level":"INFO","message":"spawned",
//!  "action":"spawn","session":"t0-j1","instance":"i-4026531836-5120-9315",
//!  "pid":5127,"cgroup":"/sys/fs/cgroup/procscope/i-4026531836-5120-9315/s-t0-j1",
//!  "program":"npx","result":"ok","target":"procscope::event",
//!  "span":{"id":"t0-j1","name":"session"},"spans":[{"id":"t0-j1","name":"session"}]}
//! ```
//!
//! With `jq`, for example the sessions that had to be killed:
//! `procscope -v --log-format json sweep 2>&1 >/dev/null | jq -c 'select(.action == "session.end" and .killed > 0)'`.
//!
//! # Spans
//!
//! | span | fields | covers |
//! |---|---|---|
//! | `session` | `id` | the session's spawns, and its end by its guard |
//! | `sweep` | `scope` | one [`Supervisor::sweep`](crate::Supervisor::sweep), including the sweep of a [`tick`](crate::Supervisor::tick) and of [`shutdown`](crate::Supervisor::shutdown): the sessions it ends |
//! | `exec` | `program` | the placing of a `procscope exec` (set by the CLI) |
//!
//! # Other events
//!
//! | level | when | fields |
//! |---|---|---|
//! | `INFO` | a supervisor started, with its root and instance | `root`, `instance` |
//! | `INFO` | instances of supervisors that are gone were recovered at start (each one is also a `recovery` event) | `recovery` (the report) |
//! | `INFO` | a supervisor shut down | `report` |
//! | `INFO` | the gateway moved itself out of the cgroup it was delegated, into `supervisor/` | `root` |
//! | `WARN` | a session's limits struck (OOM kills, forks refused by `pids.max`) | `oom_kills`, `pids_max_hits` |
//! | `WARN` | ending or removing a session failed; it stays for the next sweep | `session`, `error` |
//! | `WARN` | a fallback was taken: `clone3(CLONE_INTO_CGROUP)` missing, no fd left to end a session, thawing after a freeze failed | `error`, `cgroup` |
//! | `DEBUG` | no shared sealed mount namespace: each sealed child makes its own | `error` |
//! | `DEBUG` | `clone3` refused `CLONE_PIDFD_AUTOKILL` (a kernel before 7.1): children are spawned without it from now on ([`AutoKill`](crate::AutoKill)) | `error` |
//! | `WARN` | a supervisor was dropped without [`shutdown`](crate::Supervisor::shutdown): its sessions are killed | `instance` |
//! | `WARN` | the instance cgroup was removed by someone else and made again; processes were left in it after the final sweep | `instance` |
//! | `WARN` | a child moved a protected process (the gateway, an ancestor, the guardian) into a cgroup being ended, and it was moved back out | `pid`, `cgroup` |
//! | `WARN` | children run unsealed because this process cannot seal them | `error` |
//! | `ERROR` | the reaper thread cannot run: dropped children may stay zombies | `error` |
//! | `ERROR` | a running child whose handle was dropped cannot be handed to the reaper: it will stay a zombie after it exits | `pid`, `error` |
//! | `ERROR` | a supervisor dropped without shutdown cannot kill its sessions, because a protected process is in its instance and cannot be moved out | `error` |
//!
//! The guardian, a separate process, writes its own log only when the
//! gateway's environment has `PROCSCOPE_GUARDIAN_LOG=FILE`: one line per
//! thing it does, appended to FILE.
