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
//! - `PIDFD_GET_INFO` in the kernel's `include/uapi/linux/pidfd.h` (6.13; exit
//!   information from 6.15)

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};
use tokio::io::Interest;

use crate::signal::Signal;
use crate::sys::pidfd_info::{self, PIDFD_INFO_CGROUPID, PIDFD_INFO_EXIT};

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

    /// Whether the process has been reaped (by anyone, the kernel included):
    /// the pidfd polls `POLLHUP`.
    pub(crate) fn is_released(&self) -> bool {
        // Asked for no event, poll reports POLLHUP (and errors) only.
        let mut fds = [PollFd::new(&self.fd, PollFlags::empty())];
        match rustix::event::poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })) {
            Ok(n) => n > 0 && fds[0].revents().contains(PollFlags::HUP),
            Err(_) => false,
        }
    }

    /// Whether the process has exited, reaping it unless the kernel does
    /// (`autokill`: a child made with `CLONE_AUTOREAP`). An error reaping
    /// counts as exited: nothing more can be done for it.
    pub(crate) fn exited_now(&self, autokill: bool) -> bool {
        if autokill { !self.is_alive() } else { !matches!(self.try_wait(), Ok(None)) }
    }

    /// Waits until the process has been reaped (`POLLHUP`), which for a
    /// process the kernel reaps itself (`CLONE_AUTOREAP`) follows its exit at
    /// once. Needs a tokio runtime with IO enabled. Cancel-safe.
    pub(crate) async fn released(&self) -> io::Result<()> {
        if self.is_released() {
            return Ok(());
        }
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.fd, 3)?;
        let afd = crate::sys::async_fd::register(dup, Interest::READABLE)?;
        loop {
            // Readable at the exit, again (with POLLHUP) at the reap: the
            // readiness is cleared before the check, so that a reap between
            // the two is not missed.
            let mut ready = afd.readable().await?;
            ready.clear_ready();
            if self.is_released() {
                return Ok(());
            }
        }
    }

    /// The exit status of a child the kernel reaps (`CLONE_AUTOREAP`), from
    /// `PIDFD_GET_INFO` with `PIDFD_INFO_EXIT` once it has been reaped; `None`
    /// until then. The kernel records it before the pidfd polls `POLLHUP`.
    ///
    /// # Errors
    /// From the ioctl; [`io::ErrorKind::Other`] if the kernel kept no status.
    pub(crate) fn try_released_status(&self) -> io::Result<Option<ExitStatus>> {
        if !self.is_released() {
            return Ok(None);
        }
        let info = pidfd_info::get_info(self.fd.as_fd(), PIDFD_INFO_EXIT)?;
        if info.mask & PIDFD_INFO_EXIT == 0 {
            return Err(io::Error::other("the kernel kept no exit status (PIDFD_INFO_EXIT)"));
        }
        Ok(Some(ExitStatus::from_raw(info.exit_code)))
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

/// How procscope verifies that a process it opened a pidfd for is a member of
/// a cgroup (the pid was read from `cgroup.procs` and may have been recycled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MembershipCheck {
    /// `ioctl(PIDFD_GET_INFO)` returns the cgroup id of the very process the
    /// pidfd refers to (Linux ≥ 6.13).
    PidfdInfo,
    /// `cgroup.procs` read again after opening the pidfds: a pid still listed
    /// is still that process (or it exited meanwhile).
    ProcsReread,
}

impl MembershipCheck {
    /// The one the running kernel allows.
    pub fn current() -> MembershipCheck {
        if pidfd_info_supported() { MembershipCheck::PidfdInfo } else { MembershipCheck::ProcsReread }
    }

    /// The name used by `procscope doctor` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MembershipCheck::PidfdInfo => "pidfd_get_info",
            MembershipCheck::ProcsReread => "cgroup_procs_reread",
        }
    }
}

/// How procscope learns the exit status of a process that is not its child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitStatusSource {
    /// `PIDFD_GET_INFO` with `PIDFD_INFO_EXIT` (Linux ≥ 6.15): any process
    /// once its parent has reaped it.
    PidfdInfoExit,
    /// Only children's statuses are known (`waitid`); a non-child's is not.
    ChildrenOnly,
}

impl ExitStatusSource {
    /// The one the running kernel allows.
    pub fn current() -> ExitStatusSource {
        if exit_info_supported() { ExitStatusSource::PidfdInfoExit } else { ExitStatusSource::ChildrenOnly }
    }

    /// The name used by `procscope doctor` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitStatusSource::PidfdInfoExit => "pidfd_info_exit",
            ExitStatusSource::ChildrenOnly => "children_only",
        }
    }
}

/// Checks the kernel floor: what procscope cannot work without, each tried
/// on this process. Today that is `pidfd_open(2)` (Linux 5.3), which
/// [`Supervisor::start`](crate::Supervisor::start) and `procscope doctor`
/// check before they create anything.
///
/// # Errors
/// [`Error::Unsupported`](crate::Error::Unsupported) with `feature:
/// "pidfd_open"` when the kernel lacks it (or a seccomp filter denies it
/// with `ENOSYS`); another error if the probe fails otherwise.
pub fn check_kernel_floor() -> crate::Result<()> {
    match PidFd::this_process() {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Err(crate::Error::Unsupported {
            feature: "pidfd_open",
            fix: "procscope needs Linux 5.3 or later (pidfd_open(2)); if the kernel is newer, a seccomp filter                   denies the system call",
        }),
        Err(e) => Err(crate::Error::os("pidfd_open", std::process::id(), e)),
    }
}

/// Whether `PIDFD_GET_INFO` returns cgroup ids here (probed once, on a pidfd
/// of this process).
pub(crate) fn pidfd_info_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        PidFd::this_process()
            .and_then(|me| pidfd_info::get_info(me.as_fd(), PIDFD_INFO_CGROUPID))
            .is_ok_and(|info| info.mask & PIDFD_INFO_CGROUPID != 0)
    })
}

/// Whether `PIDFD_INFO_EXIT` is known to the kernel (6.15). A live process
/// returns no exit information, so the kernel release decides.
pub(crate) fn exit_info_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        pidfd_info_supported() && crate::cgroup::hierarchy::kernel_at_least(&release, 6, 15)
    })
}

impl PidFd {
    /// `ioctl(pidfd, PIDFD_GET_INFO)` with `PIDFD_INFO_CGROUPID`: the id of the
    /// process's cgroup2 cgroup (compare with [`Cgroup::id`]). A process that
    /// exited but was not reaped yet still reports its cgroup.
    ///
    /// [`Cgroup::id`]: crate::Cgroup::id
    ///
    /// # Errors
    /// [`io::ErrorKind::Unsupported`] before Linux 6.13; `ESRCH` once the
    /// process has been reaped.
    #[doc(alias = "PIDFD_GET_INFO")]
    pub fn cgroup_id(&self) -> io::Result<u64> {
        if !pidfd_info_supported() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "PIDFD_GET_INFO needs Linux 6.13"));
        }
        let info = pidfd_info::get_info(self.fd.as_fd(), PIDFD_INFO_CGROUPID)?;
        if info.mask & PIDFD_INFO_CGROUPID == 0 {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "the kernel returned no cgroup id"));
        }
        Ok(info.cgroupid)
    }

    /// `ioctl(pidfd, PIDFD_GET_INFO)` with `PIDFD_INFO_EXIT`: the exit status
    /// of any process this pidfd refers to — a child or not — once whoever
    /// is its parent has reaped it. `None` while it runs or waits, as a
    /// zombie, for its parent.
    ///
    /// For a child procscope spawned, [`ContainedChild::wait`](crate::ContainedChild::wait)
    /// reaps it and returns the same status.
    ///
    /// # Errors
    /// [`io::ErrorKind::Unsupported`] before Linux 6.15; `ESRCH` when the
    /// process lives in a PID namespace the caller cannot see into.
    #[doc(alias = "PIDFD_INFO_EXIT")]
    pub fn exit_status(&self) -> io::Result<Option<ExitStatus>> {
        if !exit_info_supported() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "PIDFD_INFO_EXIT needs Linux 6.15"));
        }
        let info = pidfd_info::get_info(self.fd.as_fd(), PIDFD_INFO_EXIT)?;
        Ok((info.mask & PIDFD_INFO_EXIT != 0).then(|| ExitStatus::from_raw(info.exit_code)))
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
