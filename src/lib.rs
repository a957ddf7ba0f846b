//! procscope keeps the child processes of long-running, privileged gateways
//! contained on Linux.
//!
//! Every child is born inside a per-session cgroup-v2 directory
//! (`clone3(CLONE_INTO_CGROUP)`), is known by a pidfd — never a bare pid, so a
//! recycled pid is never signalled — and is ended with `pidfd_send_signal` and
//! `cgroup.kill`, grandchildren and daemonized helpers included.
//!
//! # Layers
//!
//! | module | what it owns |
//! |---|---|
//! | `sys` | the only `unsafe`: `clone3` and the child's async-signal-safe steps |
//! | [`PidFd`] | an owned pidfd: signal, liveness, async exit, reaping |
//! | [`Cgroup`] | a cgroup2 directory held by an fd: create, limits, stats, events, kill, remove |
//! | [`Command`] / [`ContainedChild`] | what to run and what runs |
//! | [`Root`] | where procscope's tree lives |
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cgroup;
mod child;
mod command;
mod error;
#[doc(hidden)]
pub mod guardian;
pub mod identity;
mod instance;
#[cfg(feature = "rmcp")]
pub mod mcp;
pub mod names;
mod pidfd;
mod protect;
mod reaper;
mod root;
mod seal;
mod session;
mod supervisor;
mod sweep;
mod sys;
mod tick;
pub mod tree;

pub use cgroup::limits::{CpuMax, Limits, MemoryEvents, Stats};
pub use cgroup::{Cgroup, Events, KillMechanism};
pub use child::{ChildStderr, ChildStdin, ChildStdout, ContainedChild};
pub use command::{Command, SpawnMechanism, Stdio};
pub use error::{Error, Result};
pub use instance::{Owner, parse_start_time, start_time};
pub use pidfd::PidFd;
pub use reaper::pending as reaper_pending;
pub use root::{Root, RootKind};
pub use rustix::process::{Pid, Signal};
pub use seal::{SealStatus, Sealing, status as seal_status};
pub use session::Session;
pub use supervisor::{Builder, Counters, DEFAULT_GRACE, Supervisor, SweepScope, recover};
pub use sweep::{LimitHit, SweepError, SweepReport, Termination};
pub use sys::spawn::ChildStage;

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

/// Hooks for tests of the crate's fallbacks. Not part of the API.
#[doc(hidden)]
pub mod testing {
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
    pub fn init_process_state() {
        let _ = crate::reaper::pending();
        crate::sweep::Reserve::set_aside();
        let _ = crate::command::dev_null();
        crate::seal::init();
        crate::sys::spawn::refresh_ignored_signals();
    }
}
pub use tick::{JobOutcome, TickReport};
