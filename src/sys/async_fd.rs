//! Registering owned fds with tokio's reactor.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers `fd` with the current tokio runtime for `interest`.
///
/// # Errors
/// An error (instead of tokio's panic) when called outside a runtime.
pub(crate) fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("waiting needs a tokio runtime; call this from inside one"));
    }
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the fd stays open and
    // refers to the same file description until the AsyncFd is dropped, and
    // `as_raw_fd` of an OwnedFd always returns the same number.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}
