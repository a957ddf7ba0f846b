//! Signal dispositions and the signal mask, used by the guardian.

use std::io;

/// Sets `sig` to be ignored (`SIG_IGN`) or back to its default action.
pub(crate) fn set_ignored(sig: i32, ignored: bool) -> io::Result<()> {
    let handler = if ignored { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: SIG_IGN and SIG_DFL are not handlers: no code of ours runs on the
    // signal, so no async-signal-safety question arises.
    let prev = unsafe { libc::signal(sig, handler) };
    if prev == libc::SIG_ERR { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Sets `sig` back to its default action if it is ignored; a handler is
/// left in place. Returns whether it was ignored.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub(crate) fn default_if_ignored(sig: i32) -> io::Result<bool> {
    // SAFETY: `sigaction` is plain data, valid all zeros.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reads the current action into `old`; no action is set.
    if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if old.sa_sigaction != libc::SIG_IGN {
        return Ok(false);
    }
    set_ignored(sig, false).map(|()| true)
}

/// Blocks every signal that can be blocked (all but SIGKILL and SIGSTOP,
/// which the kernel leaves out silently) for the calling thread and what it
/// starts: `rt_sigprocmask(SIG_SETMASK, all 64)`. A blocked signal stays
/// pending and never runs its action, so none can end or stop the process.
///
/// The raw system call, not libc's `sigprocmask`: glibc keeps signals 32 and
/// 33 (its internal SIGCANCEL and SIGSETXID) out of every mask it sets, and
/// both end a process that has no handler for them. For a single-threaded
/// process: it sets the mask of the calling thread only.
pub(crate) fn block_all() -> io::Result<()> {
    raw_sigprocmask(libc::SIG_SETMASK, !0)
}

/// Unblocks `sig` (1–64) for the calling thread.
pub(crate) fn unblock(sig: i32) -> io::Result<()> {
    raw_sigprocmask(libc::SIG_UNBLOCK, 1 << (sig - 1))
}

/// Blocks `sig` (1–64) for the calling thread.
pub(crate) fn block(sig: i32) -> io::Result<()> {
    raw_sigprocmask(libc::SIG_BLOCK, 1 << (sig - 1))
}

/// `rt_sigprocmask(how, set)` for the calling thread, with a 64-bit kernel
/// signal set (bit n-1 for signal n).
fn raw_sigprocmask(how: i32, set: u64) -> io::Result<()> {
    // SAFETY: a valid 8-byte kernel signal set; the old mask is not asked for.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            std::ptr::addr_of!(set),
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A signalfd (non-blocking, close-on-exec) for SIGCHLD, which the caller
/// has blocked ([`block_all`]): readable when a child has changed state.
pub(crate) fn sigchld_fd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: sigset_t is plain data; all zeros is the empty set, which
    // sigaddset fills in.
    let mut set = unsafe { std::mem::zeroed::<libc::sigset_t>() };
    // SAFETY: a valid set of our own and a valid signal number.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    // SAFETY: a new signalfd for a valid set; the returned fd is ours alone.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Blocks `signals` for the calling thread (threads it starts later inherit
/// the mask) and returns a signalfd (non-blocking, close-on-exec) for them.
/// glibc's `sigprocmask` is enough here: SIGCANCEL and SIGSETXID are not
/// among what callers pass.
pub(crate) fn block_into_fd(signals: &[i32]) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: sigset_t is plain data; all zeros is the empty set.
    let mut set = unsafe { std::mem::zeroed::<libc::sigset_t>() };
    // SAFETY: a valid set of our own.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: a valid set; an invalid number is refused with -1.
        if unsafe { libc::sigaddset(&mut set, sig) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: a valid set; the old mask is not asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: a new signalfd for a valid set; the returned fd is ours alone.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// One record read from a signalfd: the signal, and whether the kernel sent
/// it (`SI_KERNEL`: a terminal's signal to its foreground process group).
/// `Ok(None)`: nothing to read now.
pub(crate) fn read_signalfd(fd: &std::os::fd::OwnedFd) -> io::Result<Option<(i32, bool)>> {
    use std::os::fd::AsRawFd;
    // SAFETY: signalfd_siginfo is plain data.
    let mut info = unsafe { std::mem::zeroed::<libc::signalfd_siginfo>() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`, which has that size.
    let n = unsafe { libc::read(fd.as_raw_fd(), std::ptr::addr_of_mut!(info).cast(), size) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    if n as usize != size {
        return Err(io::Error::other("a short read from a signalfd"));
    }
    Ok(Some((info.ssi_signo as i32, info.ssi_code == libc::SI_KERNEL)))
}
