//! procscope keeps the child processes of long-running, privileged gateways
//! contained on Linux.
//!
//! Every child is born inside a per-session cgroup-v2 directory
//! (`clone3(CLONE_INTO_CGROUP)`), is known by a pidfd — never a bare pid, so a
//! recycled pid is never signalled — and is ended with `pidfd_send_signal` and
//! `cgroup.kill`, grandchildren and daemonized helpers included. When a session
//! ends on any path (its job returns, fails, panics or is cancelled), its guard
//! hands what is still alive to an orphan pool that sweeps empty.
//!
//! # Example
//!
//! A gateway that runs a tick of jobs, each with an MCP stdio server of its
//! own, some of which are cut off half-way:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use procscope::{Command, Limits, Stdio, Supervisor};
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! async fn job(sup: Supervisor, id: String) -> procscope::Result<()> {
//!     // A cgroup of its own, with limits; gone when the session ends.
//!     let limits = Limits { memory_max: Some(512 << 20), pids_max: Some(64), ..Limits::default() };
//!     let session = sup.session_with_limits(&id, &limits)?;
//!     // Born inside the session's cgroup, sealed into it, held by a pidfd.
//!     let mut server = session.spawn(
//!         Command::new("npx")
//!             .args(["-y", "@modelcontextprotocol/server-everything"])
//!             .stdin(Stdio::piped())
//!             .stdout(Stdio::piped()),
//!     )?;
//!     let mut stdin = server.stdin.take().expect("piped");
//!     let mut stdout = BufReader::new(server.stdout.take().expect("piped")).lines();
//!     stdin.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).await?;
//!     stdin.write_all(b"\n").await?;
//!     // However this ends — an answer, a timeout, `?`, a panic or the task
//!     // being cancelled — nothing the server started outlives the session.
//!     let answer = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
//!     println!("{id}: {answer:?}");
//!     session.close().await?; // SIGTERM, a grace period, then cgroup.kill
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> procscope::Result<()> {
//!     // Recovers what a crashed run left, and starts a guardian that ends this
//!     // gateway's sessions if the gateway itself is SIGKILLed.
//!     let sup = Supervisor::builder().guardian(true).start().await?;
//!     let jobs = (0..8).map(|i| job(sup.clone(), format!("job-{i}")));
//!     // Runs the jobs (4 at a time), then sweeps what they left running.
//!     let report = sup.tick(jobs, Some(4)).await;
//!     println!("{report}");
//!     sup.shutdown().await?;
//!     Ok(())
//! }
//! ```
//!
//! More: `examples/gateway.rs` (ticks of jobs talking to real MCP servers
//! through the official Rust SDK, `rmcp`) and `examples/tokio_shaped.rs` (the
//! `tokio::process` verbs) in the repository.
//!
//! # Layers
//!
//! | item | what it owns |
//! |---|---|
//! | [`Supervisor`] | the gateway's instance cgroup, its sessions, the orphan pool, sweeps, the guardian |
//! | [`Session`] | one job's cgroup: spawn into it, close it; its guard ends it on drop |
//! | [`Command`] / [`ContainedChild`] | what to run and what runs, shaped like `tokio::process` |
//! | [`PidFd`] | an owned pidfd: signal, liveness, async exit, reaping |
//! | [`Cgroup`] | a cgroup2 directory held by an fd: create, limits, stats, events, kill, remove |
//! | [`Root`] | where procscope's tree lives |
//! | [`tree`] | the tree seen from outside a supervisor: list, sweep, place a command (`procscope exec`) |
//! | [`metrics`] | what runs and what was done, as a value and in the Prometheus text format; counters kept in the tree |
//! | `sys` (private) | the only `unsafe`: `clone3` and the child's async-signal-safe steps |
//!
//! # Coming from `tokio::process`
//!
//! | `tokio::process` | procscope | why it differs |
//! |---|---|---|
//! | `Command::new(p).spawn()` | [`session.spawn(&mut cmd)`](Session::spawn) | a child is always spawned *into* a cgroup: a session's, or one given to [`Command::spawn_in`] |
//! | `cmd.status().await` | [`session.status(&mut cmd)`](Session::status) | as above; stdio inherited unless set, and pipes closed, as in tokio |
//! | `cmd.output().await` | [`session.output(&mut cmd)`](Session::output) | as above; the defaults are `std`'s: stdin `/dev/null`, stdout and stderr captured unless set (tokio captures them always and inherits stdin) |
//! | `child.wait_with_output()` | [`ContainedChild::wait_with_output`] | the same |
//! | `child.wait()`, `try_wait()`, `start_kill()` | the same names | they return this crate's [`Result`]; `?` converts it into `io::Error` |
//! | the child's pid for `waitpid` | [`ContainedChild::pidfd`] | a [`PidFd`] signals and watches, but cannot reap: the handle's [`wait`](ContainedChild::wait) always gets the status |
//! | `child.kill().await` → `()` | [`kill`](ContainedChild::kill) → `ExitStatus` | the status comes for free once reaped |
//! | `child.id()` → `Option<u32>` | [`id`](ContainedChild::id) → `u32` | the child is held by a pidfd, so its number stays meaningful for logs; act through the handle or [`PidFd`], never by pid |
//! | `kill_on_drop(true)` | [`Command::kill_on_drop`] | the same; a session's end is the stronger tool, as it also ends the child's descendants |
//! | `process_group(0)` | [`Command::process_group`] | the same; [`Command::setsid`] also exists |
//! | `arg0` | [`Command::arg0`] | the same |
//! | `Stdio::piped()` / `null()` / `inherit()` | [`Stdio::piped`] / [`null`](Stdio::null) / [`inherit`](Stdio::inherit) | a type of its own: `std::process::Stdio` is opaque and cannot give its fd back. `File`, `OwnedFd`, `std::io::pipe` ends and `std::process` child pipes convert into it |
//! | `uid`, `gid`, `current_dir`, `env*` | the same names | — |
//! | `pre_exec` | none | the child runs only async-signal-safe steps of procscope's own (see [`Command`]); arbitrary code there could undo the sealing |
//! | a `SIGCHLD` driver | none | each child is waited for through its pidfd; children dropped while running are reaped by a thread of procscope's own (on Linux ≥ 7.1, as root, the kernel reaps them: [`AutoKill`]) |
//!
//! Errors are one type, [`Error`]: every variant says what failed, on which
//! path or process, and how to fix it. `From<io::Error> for Error` and
//! `From<Error> for io::Error` let `?` work in either kind of function.
//!
//! # Logging
//!
//! procscope reports through [`tracing`](https://docs.rs/tracing): see
//! [`logging`] for the spans and events and how to turn them on.
//!
//! # Features
//!
//! - `cli` (default): the `procscope` command line tool. Library users can
//!   turn default features off to keep `clap` out of their tree.
//! - `rmcp`: the `mcp` module, an `rmcp` client transport over a contained
//!   child.
//!
//! # Stability
//!
//! The public API uses std types, tokio's `AsyncRead`/`AsyncWrite` and
//! procscope's own types ([`Signal`]; pids as plain integers: `u32` for the
//! processes procscope acts on, the kernel's `i32` in [`Owner`] and the
//! [`tree`] records). Records and reports implement serde's `Serialize`.
//! tokio 1.x and serde 1.x are the majors this crate is built on: a new
//! major of either would be a new major of procscope (a new minor while
//! procscope is 0.x). The `rmcp` feature follows one `rmcp` major version
//! (3.x) the same way, noted in the changelog.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings), allow(dead_code))))]

mod autokill;
pub mod cgroup;
mod child;
mod command;
mod ending;
mod error;
mod events;
mod guardian;
pub mod held;
// Reached only through `testing::spawn_held` until sessions use holders.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
mod holder;
pub mod identity;
mod instance;
pub mod logging;
#[cfg(feature = "rmcp")]
pub mod mcp;
pub mod metrics;
pub mod names;
mod pidfd;
mod protect;
mod reaper;
mod root;
mod seal;
mod session;
mod signal;
mod spool;
mod supervisor;
mod sweep;
mod sys;
mod tick;
mod totals;
pub mod tree;

pub use autokill::AutoKill;
pub use cgroup::limits::{CpuMax, Limits, MemoryEvents, Stats};
pub use cgroup::{Cgroup, Events, KillMechanism};
pub use child::{ChildStderr, ChildStdin, ChildStdout, ContainedChild};
pub use command::{Command, SpawnMechanism, Stdio};
pub use error::{Error, Result};
pub use guardian::{GUARDIAN_UID, identity as guardian_identity};
pub use instance::Owner;
pub use metrics::Metrics;
pub use pidfd::{ExitStatusSource, MembershipCheck, PidFd, check_kernel_floor};
pub use root::{Root, RootKind};
pub use seal::{SealStatus, Sealing, status as seal_status};
pub use session::Session;
pub use signal::Signal;
pub use supervisor::{Builder, Containment, Counters, DEFAULT_GRACE, Supervisor, SweepScope, recover};
pub use sweep::{LimitHit, SweepError, SweepReport, Termination};
pub use sys::spawn::ChildStage;
pub use tick::{JobOutcome, TickReport};

/// Reads again which signals this process ignores, so that children spawned from
/// now on start with those at their default action too.
///
/// Needed only after the gateway ignores a signal (`SIG_IGN`) once it has
/// started its supervisor or made its first spawn, whichever came last; see
/// [`Command`]'s section on signals.
pub fn refresh_ignored_signals() {
    sys::spawn::refresh_ignored_signals();
}

/// The README's examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Hooks for procscope's own tests, behind the `test-hooks` feature, which
/// only the crate's dev-dependency on itself turns on. Not part of the API.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod testing {
    pub use crate::holder::Holder;

    /// Starts `cmd` from a holder of its own, as sessions are kept where no
    /// cgroup can be written (see the `holder` module): the child and its
    /// holder. The command is never sealed.
    ///
    /// # Errors
    /// As [`Command::spawn_in`](crate::Command::spawn_in).
    pub fn spawn_held(cmd: &mut crate::Command) -> crate::Result<(crate::ContainedChild, Holder)> {
        cmd.spawn_held()
    }

    /// Whether holders started from now on keep the gateway's uid instead
    /// of taking the guardian's identity (for control runs).
    pub fn holders_keep_uid(keep: bool) {
        crate::holder::KEEP_UID.store(keep, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether holders started from now on let their command start its
    /// program before they take their identity, and take it half a second
    /// later (for the control run of the test of that order).
    pub fn holders_go_first(first: bool) {
        crate::holder::GO_FIRST.store(first, std::sync::atomic::Ordering::SeqCst);
    }

    /// Children handed to the reaper thread and not reaped yet.
    pub fn reaper_pending() -> usize {
        crate::reaper::pending()
    }

    /// Whether a kernel release string (`uname -r`) is at least `major.minor`.
    pub fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
        crate::cgroup::hierarchy::kernel_at_least(release, major, minor)
    }

    /// Parses mountinfo text, for fuzzing.
    pub fn parse_mountinfo(text: &str) -> Vec<crate::cgroup::hierarchy::MountEntry> {
        crate::cgroup::hierarchy::parse_mountinfo(text)
    }

    /// The `0::` path of a `/proc/PID/cgroup` text, for fuzzing.
    pub fn parse_proc_cgroup_unified(text: &str) -> Option<String> {
        crate::cgroup::hierarchy::parse_proc_cgroup(text).unified
    }

    /// The start time field of a `/proc/PID/stat` line, for fuzzing.
    pub fn parse_start_time(stat: &str) -> Option<u64> {
        crate::instance::parse_start_time(stat)
    }

    /// Makes `pidfd_open(2)` fail with `ENOSYS` in the calling thread and
    /// in whatever it starts or executes from now on (a seccomp filter), as
    /// on a kernel older than 5.3. Cannot be undone: call it in a thread or
    /// process of its own.
    pub fn deny_pidfd_open() -> std::io::Result<()> {
        crate::sys::seccomp::deny_with_enosys(libc::SYS_pidfd_open)
    }

    /// Makes `clone(2)` and `clone3(2)` fail with `ENOSYS` in the calling
    /// thread and what it starts (seccomp filters): no process or thread can
    /// be started from it. Cannot be undone: call it in a thread of its own.
    pub fn deny_clone() -> std::io::Result<()> {
        crate::sys::seccomp::deny_with_enosys(libc::SYS_clone)?;
        crate::sys::seccomp::deny_with_enosys(libc::SYS_clone3)
    }

    /// Makes `clone3(2)` alone fail with `ENOSYS` in the calling thread and
    /// what it starts, as a container's default seccomp profile does without
    /// `CAP_SYS_ADMIN`: spawns go through `clone(2)`. Cannot be undone: call
    /// it in a thread of its own.
    pub fn deny_clone3() -> std::io::Result<()> {
        crate::sys::seccomp::deny_with_enosys(libc::SYS_clone3)
    }

    /// Makes `seccomp(2)` fail with `ENOSYS` in the calling thread and in
    /// whatever it starts from now on (a seccomp filter, installed with
    /// `prctl`), as on a kernel without `CONFIG_SECCOMP_FILTER`: a sealed
    /// child cannot install its own filter then. Cannot be undone: call it in
    /// a thread of its own.
    pub fn deny_seccomp() -> std::io::Result<()> {
        crate::sys::seccomp::deny_with_enosys(libc::SYS_seccomp)
    }

    /// Makes the calling thread behave, for sealing, as on a kernel without
    /// cgroup namespaces (`/proc/self/ns/cgroup` missing), until called again
    /// with `false`. Other threads are not touched.
    pub fn force_no_cgroup_namespace(on: bool) {
        crate::seal::FORCE_NO_CGROUP_NAMESPACE.set(on);
    }

    /// Makes the calling thread spawn children without
    /// `CLONE_PIDFD_AUTOKILL` (as on kernels before 7.1, or without
    /// `CAP_SYS_ADMIN`), until called again with `false`: the kernel does not
    /// reap them, and their status comes from `waitid`. Other threads are not
    /// touched.
    pub fn force_no_autokill(on: bool) {
        crate::autokill::FORCE_OFF.set(on);
    }

    /// Forces the `clone(2)` spawn path (as on hosts where `clone3` is missing
    /// or filtered), for the rest of the process.
    pub fn force_legacy_clone(on: bool) {
        crate::sys::spawn::FORCE_LEGACY_CLONE.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Creates the process-wide state procscope keeps for the life of the
    /// process — the reaper's epoll fd and thread, `/dev/null` for
    /// `Stdio::Null`, the fds set aside for ending sessions when none are
    /// left — and reads the ignored signals, so that a test that counts fds
    /// and threads can take its baseline after them.
    ///
    /// It first sets back to their default action the signals that end a
    /// process and that a shell leaves ignored for what it starts under
    /// `nohup` (SIGHUP) or as a background job without job control (SIGINT,
    /// SIGQUIT): `procscope exec` and every program a test starts would
    /// inherit that, and a test that ends one by such a signal would wait
    /// for ever. A signal with a handler is left as it is.
    pub fn init_process_state() {
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
            let _ = crate::sys::signal::default_if_ignored(sig);
        }
        let _ = crate::reaper::pending();
        crate::sweep::Reserve::set_aside();
        let _ = crate::command::dev_null();
        crate::seal::init();
        crate::sys::spawn::refresh_ignored_signals();
    }
}
