//! The only module with `unsafe` code.
//!
//! - [`spawn`]: `clone3` and the child's steps between clone and `execve`, all of
//!   them async-signal-safe.
//! - [`seal`]: the child's sealing steps (cgroup and mount namespaces, read-only
//!   cgroup mounts), async-signal-safe as well.
//! - [`hook`]: the constructor that turns a re-executed program into the
//!   guardian before its `main`, and the guardian's `fork`.
//! - [`signal`]: signal dispositions, used by the guardian.
//! - [`fsuid`]: the guardian's filesystem uid, for writing into its spool.
//! - [`pidfd_info`]: `ioctl(PIDFD_GET_INFO)` (Linux 6.13): a process's cgroup
//!   id and, from 6.15, the exit status of any reaped process.
//! - [`seccomp`]: the sealed child's filter that refuses SIGKILL and SIGSTOP
//!   as the signal of `F_SETOWN` (async-signal-safe), and, for tests only, a
//!   filter that makes a system call fail with `ENOSYS`, to show the refusal
//!   below the kernel floor.
//!
//! Everything else in the crate is `#![deny(unsafe_code)]` and goes through the
//! safe functions exported here.
#![allow(unsafe_code)]

pub(crate) mod async_fd;
pub(crate) mod fsuid;
pub(crate) mod hook;
pub(crate) mod pidfd_info;
pub(crate) mod seal;
pub(crate) mod seccomp;
pub(crate) mod signal;
pub(crate) mod spawn;

/// Whether the calling thread holds `CAP_SYS_ADMIN` in its effective set
/// (asked each time: a gateway may drop it).
pub(crate) fn has_sys_admin() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|c| c.effective.contains(rustix::thread::CapabilitySet::SYS_ADMIN))
}
