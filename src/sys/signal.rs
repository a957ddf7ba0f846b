//! Signal dispositions.

use std::io;

/// Sets `sig` to be ignored (`SIG_IGN`) or back to its default action.
pub(crate) fn set_ignored(sig: i32, ignored: bool) -> io::Result<()> {
    let handler = if ignored { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: SIG_IGN and SIG_DFL are not handlers: no code of ours runs on the
    // signal, so no async-signal-safety question arises.
    let prev = unsafe { libc::signal(sig, handler) };
    if prev == libc::SIG_ERR { Err(io::Error::last_os_error()) } else { Ok(()) }
}
