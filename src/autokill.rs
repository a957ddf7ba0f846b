//! [`AutoKill`]: direct children that die with the last handle of them, when
//! the kernel allows it (`CLONE_PIDFD_AUTOKILL`, Linux 7.1).
//!
//! An extra line of defence beside the session cgroups, the guardian and the
//! sweeps: a gateway SIGKILLed without a guardian closes every fd it held,
//! and the kernel kills each direct child whose pidfd that was the last
//! reference to. Grandchildren are not reached: their session ends them.
//!
//! Asked for only where the gateway holds `CAP_SYS_ADMIN` in its effective
//! set: without it the kernel wants `CLONE_NNP` too, which would set
//! `no_new_privs` in every child (a setuid program would lose its
//! privileges). A kernel that refuses the flags (before 7.1, or a seccomp
//! filter) is remembered, and children are spawned without them from then on.
//!
//! # References
//! - `CLONE_PIDFD_AUTOKILL`, `CLONE_AUTOREAP` in the kernel's
//!   `include/uapi/linux/sched.h` (7.1); clone(2)

use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys::spawn::{self, ChildPlan, Lifetime, Placement, SpawnFailure, Spawned};

/// Set once `clone3` refused `CLONE_PIDFD_AUTOKILL | CLONE_AUTOREAP` and took
/// the same spawn without them.
static REFUSED: AtomicBool = AtomicBool::new(false);
thread_local! {
    /// Tests force the spawn without the flags with this. Per thread, so
    /// that tests running beside it in one process (`cargo test`) are not
    /// touched.
    pub(crate) static FORCE_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the kernel kills a direct child when the last handle of it is
/// closed — in particular when the whole gateway process is gone, even by
/// SIGKILL and with no guardian.
///
/// [`ContainedChild::auto_kill`](crate::ContainedChild::auto_kill) tells it
/// for one child; [`AutoKill::current`] for the next spawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AutoKill {
    /// `clone3(CLONE_PIDFD_AUTOKILL | CLONE_AUTOREAP)` (Linux ≥ 7.1, a gateway
    /// with `CAP_SYS_ADMIN`): the kernel SIGKILLs the child when the last
    /// reference to its pidfd closes, and reaps it itself.
    Pidfd,
    /// Not used: a kernel before 7.1 (or one that refused the flags), a
    /// gateway without `CAP_SYS_ADMIN`, or the `clone(2)` path. What a killed
    /// gateway leaves is ended by its guardian or the next sweep or recovery.
    Off,
}

impl AutoKill {
    /// What the next spawn of this thread asks for: [`AutoKill::Pidfd`] on
    /// Linux ≥ 7.1 with `CAP_SYS_ADMIN` (unless `clone3` refused it already).
    /// A spawn is the proof: see [`ContainedChild::auto_kill`](crate::ContainedChild::auto_kill).
    pub fn current() -> AutoKill {
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        if wanted() && spawn::clone3_in_use() && crate::cgroup::hierarchy::kernel_at_least(&release, 7, 1) {
            AutoKill::Pidfd
        } else {
            AutoKill::Off
        }
    }

    /// The name used by `procscope doctor` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoKill::Pidfd => "pidfd_autokill",
            AutoKill::Off => "off",
        }
    }
}

/// Whether a spawn now asks for the flags: not refused before, not turned
/// off by a test, and `CAP_SYS_ADMIN` in this thread's effective set
/// (checked at every spawn: a gateway may drop it).
fn wanted() -> bool {
    !REFUSED.load(Ordering::Relaxed) && !FORCE_OFF.get() && crate::sys::has_sys_admin()
}

/// Spawns a child that the library holds a handle of for as long as it is
/// meant to run: tied to its pidfd where the kernel allows it. A `clone3`
/// that refuses the flags (`EINVAL` before Linux 7.1, `EPERM`, `E2BIG`,
/// `ENOSYS` from a filter) is asked again without them; when that works,
/// the refusal is remembered. Every other failure stands as it is (a
/// removed cgroup, `pids.max`).
pub(crate) fn spawn_tied(plan: &ChildPlan<'_>, placement: Placement<'_>) -> Result<Spawned, SpawnFailure> {
    if !wanted() {
        return spawn::spawn(plan, placement, Lifetime::Own);
    }
    match spawn::spawn(plan, placement, Lifetime::TiedToPidfd) {
        Err(SpawnFailure::Clone(e))
            if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM | libc::E2BIG | libc::ENOSYS)) =>
        {
            let again = spawn::spawn(plan, placement, Lifetime::Own);
            if again.is_ok() && !REFUSED.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %e, "clone3 refused CLONE_PIDFD_AUTOKILL (Linux 7.1); \
                    children are spawned without it from now on");
            }
            again
        }
        other => other,
    }
}
