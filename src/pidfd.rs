//! [`PidFd`]: an owned pidfd and the pid it was opened for.
//!
//! A pidfd refers to one process for as long as the fd is open; a recycled pid
//! never makes it refer to another. Every signal procscope sends goes through
//! one.
//!
//! # References
//! - [pidfd_open(2)](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)
//! - [pidfd_send_signal(2)](https://man7.org/linux/man-pages/man2/pidfd_send_signal.2.html)
//! - [waitid(2)](https://man7.org/linux/man-pages/man2/waitid.2.html), `P_PIDFD`

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};
use tokio::io::Interest;

use crate::signal::Signal;

/// An owned pidfd plus the pid it was opened for.
///
/// The pid is informational (for logs, `/proc` and tables); every operation uses
/// the fd. A `PidFd` signals and watches a process but never reaps it: a
/// child's exit status belongs to its [`ContainedChild`](crate::ContainedChild),
/// whose [`wait`](crate::ContainedChild::wait) therefore always gets it.
///
/// Its methods return [`io::Result`], as the syscalls they wrap do (like
/// `std::os::fd`); `?` turns that into this crate's [`Error`](crate::Error).
pub struct PidFd {
    fd: OwnedFd,
    pid: Pid,
}

impl fmt::Debug for PidFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PidFd").field("fd", &self.fd.as_raw_fd()).field("pid", &self.pid.as_raw_nonzero()).finish()
    }
}

impl PidFd {
    /// `pidfd_open(pid, 0)` — opens a pidfd for a live process.
    ///
    /// A pid read from anywhere may have been recycled by the time this runs:
    /// verify the result afterwards (as [`Cgroup::member_pidfds`] does) before
    /// signalling it.
    ///
    /// [`Cgroup::member_pidfds`]: crate::Cgroup::member_pidfds
    ///
    /// # Errors
    /// `ESRCH` when no such process exists; `EINVAL` for pid 0 or a pid
    /// beyond the kernel's range; `ENOSYS` before Linux 5.3.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid = i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or(io::Error::from_raw_os_error(libc::EINVAL))?;
        PidFd::open_pid(pid)
    }

    pub(crate) fn open_pid(pid: Pid) -> io::Result<PidFd> {
        let fd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
        Ok(PidFd { fd, pid })
    }

    /// A pidfd of the calling process.
    pub fn this_process() -> io::Result<PidFd> {
        PidFd::open_pid(rustix::process::getpid())
    }

    pub(crate) fn from_owned(fd: OwnedFd, pid: Pid) -> PidFd {
        PidFd { fd, pid }
    }

    /// The pid this pidfd was opened for. A pid, not a pidfd: once the process has
    /// been reaped, the number may belong to another process.
    pub fn pid(&self) -> u32 {
        self.raw_pid() as u32
    }

    pub(crate) fn rustix_pid(&self) -> Pid {
        self.pid
    }

    /// The pid as the kernel's signed type.
    pub(crate) fn raw_pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
    ///
    /// Succeeds (and does nothing) for a process that has exited but not been
    /// reaped; a success is no proof of life, see [`is_alive`](Self::is_alive).
    ///
    /// # Errors
    /// `ESRCH` once the process has been reaped.
    #[doc(alias = "pidfd_send_signal")]
    pub fn send_signal(&self, sig: Signal) -> io::Result<()> {
        rustix::process::pidfd_send_signal(&self.fd, sig.to_rustix())?;
        Ok(())
    }

    /// Whether the process is still running: `poll` without waiting. A pidfd polls
    /// readable once the process has exited (zombie or reaped).
    pub fn is_alive(&self) -> bool {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })) {
            Ok(0) => true,
            Ok(_) => false,
            // A poll on our own fd cannot fail short of EINTR/ENOMEM; say alive, the
            // conservative answer for a containment library.
            Err(_) => true,
        }
    }

    /// Waits until the process has exited, without reaping it.
    ///
    /// Works for any process, not only children. Needs a tokio runtime with IO
    /// enabled. Cancel-safe.
    pub async fn exited(&self) -> io::Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        // A duplicate fd per wait, so that several tasks may wait on one process
        // (epoll registers an fd number once per epoll instance).
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.fd, 3)?;
        let afd = crate::sys::async_fd::register(dup, Interest::READABLE)?;
        let _ready = afd.readable().await?;
        Ok(())
    }

    /// `waitid(P_PIDFD, fd, WEXITED | WNOHANG)`: reaps the process if it has
    /// exited. Only for children of the calling process.
    ///
    /// # Errors
    /// `ECHILD` if the process is not our child or was already reaped.
    pub(crate) fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        loop {
            match rustix::process::waitid(WaitId::PidFd(self.fd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
            {
                Ok(Some(status)) => return Ok(Some(exit_status(&status))),
                Ok(None) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A waitid status as the std type users already know.
fn exit_status(status: &rustix::process::WaitIdStatus) -> ExitStatus {
    if let Some(code) = status.exit_status() {
        ExitStatus::from_raw((code & 0xff) << 8)
    } else if let Some(sig) = status.terminating_signal() {
        // The core-dump bit too, as std reports it (`core_dumped()`).
        ExitStatus::from_raw((sig & 0x7f) | if status.dumped() { 0x80 } else { 0 })
    } else {
        ExitStatus::from_raw(0)
    }
}
