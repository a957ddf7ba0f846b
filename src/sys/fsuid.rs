//! The thread's filesystem uid, for the guardian's spool (see
//! `crate::spool`): rustix has no `setfsuid`.

/// Sets the calling thread's filesystem uid to `uid` and returns the previous
/// one. The kernel accepts the real, effective, saved or current filesystem
/// uid without `CAP_SETUID` and leaves the fsuid unchanged otherwise; the
/// caller checks with a second call (the returned value is always the old one).
pub(crate) fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes an integer and touches no memory of ours; it
    // cannot fail in a way that leaves the thread in an undefined state.
    unsafe { libc::setfsuid(uid) as u32 }
}
