//! Signal dispositions and synchronous waits for signals.

use std::io;
use std::mem::MaybeUninit;

/// Sets `sig` to be ignored (`SIG_IGN`) or back to its default action.
pub(crate) fn set_ignored(sig: i32, ignored: bool) -> io::Result<()> {
    let handler = if ignored { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: SIG_IGN and SIG_DFL are not handlers: no code of ours runs on the
    // signal, so no async-signal-safety question arises.
    let prev = unsafe { libc::signal(sig, handler) };
    if prev == libc::SIG_ERR { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Blocks every signal in `sigs` for the calling thread, so that they stay pending
/// until [`wait_blocked`] takes them.
pub(crate) fn block(sigs: &[i32]) -> io::Result<()> {
    let set = sigset(sigs)?;
    // SAFETY: a valid, initialised signal set; the old mask is not requested.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 { Err(io::Error::from_raw_os_error(r)) } else { Ok(()) }
}

/// Waits until one of `sigs` (blocked with [`block`]) is pending and takes it.
/// Returns the signal number and the pid of the sender.
pub(crate) fn wait_blocked(sigs: &[i32]) -> io::Result<(i32, i32)> {
    let set = sigset(sigs)?;
    loop {
        let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: a valid set and a writable siginfo buffer.
        let r = unsafe { libc::sigwaitinfo(&set, info.as_mut_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: sigwaitinfo filled `info`; si_pid is valid for signals sent by
        // kill(2) and pidfd_send_signal(2), and 0 for others.
        let pid = unsafe { info.assume_init_ref().si_pid() };
        return Ok((r, pid));
    }
}

fn sigset(sigs: &[i32]) -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only writes into it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &sig in sigs {
            if libc::sigaddset(set.as_mut_ptr(), sig) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(set.assume_init())
    }
}
