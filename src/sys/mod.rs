//! The only module with `unsafe` code.
//!
//! - [`spawn`]: `clone3` and the child's steps between clone and `execve`, all of
//!   them async-signal-safe; the holder's steps between its clone and its own
//!   `execve` (see `crate::holder`), async-signal-safe as well.
//! - [`seal`]: the child's sealing steps (cgroup and mount namespaces, read-only
//!   cgroup mounts), async-signal-safe as well.
//! - [`hook`]: the constructor that turns a re-executed program into the
//!   guardian before its `main`, and the guardian's `fork`.
//! - [`signal`]: signal dispositions and the SIGCHLD signalfd, used by the
//!   guardian and the holder.
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

/// The fds a holder starts with (see `crate::holder`), after every other
/// fd but stdio is closed: its status pipe's write end, its control pipe's
/// read end and its command's go pipe's write end, in that order. For the
/// holder's own process only, before it starts anything: nothing else
/// refers to those fds.
pub(crate) fn holder_fds() -> std::io::Result<[std::os::fd::OwnedFd; 3]> {
    use spawn::{HOLDER_CONTROL_FD, HOLDER_GO_FD, HOLDER_STATUS_FD};
    use std::os::fd::FromRawFd;
    let fds = [HOLDER_STATUS_FD, HOLDER_CONTROL_FD, HOLDER_GO_FD];
    for fd in fds {
        // SAFETY: a borrow for one fstat; a number that is not open fails
        // with EBADF, and nothing closes these fds meanwhile.
        let st = rustix::fs::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Fifo {
            return Err(std::io::Error::other(format!("fd {fd} is not a pipe")));
        }
    }
    // SAFETY: closes fds of this process above the holder's three; the
    // process has no other owner of them (it has just exec'd).
    let r = unsafe { libc::syscall(libc::SYS_close_range, (HOLDER_GO_FD + 1) as u32, u32::MAX, 0u32) };
    if r < 0 {
        let max = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(65536).min(1 << 20);
        for fd in HOLDER_GO_FD + 1..max as i32 {
            // SAFETY: as above; EBADF for unused numbers is harmless.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: the three fds were checked open above and are owned by
    // nothing else in this process.
    Ok(fds.map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
}

/// Whether the calling thread holds `CAP_SYS_ADMIN` in its effective set
/// (asked each time: a gateway may drop it).
pub(crate) fn has_sys_admin() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|c| c.effective.contains(rustix::thread::CapabilitySet::SYS_ADMIN))
}

/// The pid (in our pid namespace) of the process at the other end of a
/// connected Unix socket, as it was when it connected or listened
/// (`SO_PEERCRED`).
pub(crate) fn peer_pid(sock: &impl std::os::fd::AsRawFd) -> std::io::Result<i32> {
    // SAFETY: ucred is plain data.
    let mut cred = unsafe { std::mem::zeroed::<libc::ucred>() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the kernel to fill, `len` being
    // the size of `cred`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(cred.pid) }
}
