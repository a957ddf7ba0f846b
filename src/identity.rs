//! Transient users: a uid and gid of their own for one session, allocated when
//! it starts its first such child and released when it ends — systemd's
//! `DynamicUser=` for sessions.
//!
//! Two sessions with transient users cannot signal or ptrace each other or
//! read each other's `/proc/PID/environ` or memory, and neither can read
//! `/etc/shadow` or write a file owned by root: each runs as a user of its own
//! that owns nothing.
//!
//! # The range
//! Uids (and gids of the same number) [`TRANSIENT_UIDS`]: `0x7B000000` to
//! `0x7B00FFFF` (2063597568 to 2063663103). They lie outside every range
//! systemd documents (system and regular users, its dynamic users
//! 61184–65519, containers 524288–1879048191, the foreign range at
//! `0x7FFE0000`), below 2³¹ (which some tools read as negative), and away from
//! the guardian's uid ([`GUARDIAN_UID`](crate::guardian::GUARDIAN_UID)).
//!
//! # Allocation
//! One lock file per uid in [`LOCK_DIR`], held with `flock` by the process that
//! allocated the uid for as long as the session lasts; and a uid is never given
//! out while any process runs with it as its real, effective, saved or
//! filesystem uid or gid (`/proc/*/status`), or while `/etc/passwd` or
//! `/etc/group` names it. The lock orders allocators; the process check
//! covers a gateway that died while its session's processes still ran (its
//! locks went with it).
//!
//! # Caveats
//! Files a transient user leaves behind (in `/tmp`, `/dev/shm`) keep its uid,
//! and a later session that gets the same uid can read them, as with systemd's
//! `DynamicUser=` without `PrivateTmp=`. Give such servers a private
//! temporary directory.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::error::{Error, Result};

/// The uids (and gids) transient users are taken from.
pub const TRANSIENT_UIDS: Range<u32> = 0x7B00_0000..0x7B01_0000;

// The range, checked when compiling: above systemd's container range, below
// its foreign range and 2^31, apart from the guardian's uid.
const _: () = {
    assert!(TRANSIENT_UIDS.start > 1_879_048_191);
    assert!(TRANSIENT_UIDS.end <= 0x7FFE_0000 && TRANSIENT_UIDS.end < 1 << 31);
    let g = crate::guardian::GUARDIAN_UID;
    assert!(g < TRANSIENT_UIDS.start || g >= TRANSIENT_UIDS.end);
};

/// Where the allocation locks live: one file per uid in use.
pub const LOCK_DIR: &str = "/run/procscope/transient-users";

/// A uid and gid allocated for one session; released when dropped.
#[derive(Debug)]
pub(crate) struct TransientUser {
    uid: u32,
    path: PathBuf,
    /// The lock file, `flock`ed: holding it is holding the uid.
    lock: OwnedFd,
}

impl TransientUser {
    /// Allocates a free uid from [`TRANSIENT_UIDS`].
    ///
    /// # Errors
    /// [`Error::TransientUserUnavailable`] without the capabilities to switch
    /// to it, or when every uid of the range is in use; [`Error::Io`] when the
    /// lock directory or `/proc` cannot be read.
    pub(crate) fn allocate() -> Result<TransientUser> {
        use rustix::thread::CapabilitySet as C;
        let caps = rustix::thread::capabilities(None).map_or(C::empty(), |c| c.effective);
        if !caps.contains(C::SETUID | C::SETGID) {
            return Err(Error::TransientUserUnavailable {
                missing: "CAP_SETUID and CAP_SETGID (needed to switch the child to another user)".into(),
                fix: "run the gateway as root, or give the child a fixed --uid/--gid you may switch to",
            });
        }
        std::fs::create_dir_all(LOCK_DIR).map_err(|e| Error::io("create", LOCK_DIR, e))?;
        let _allocating = allocation_lock()?;
        let taken = ids_in_use()?;
        // Start where this process last stopped, spread by pid, so that
        // gateways allocating at once rarely try the same uid first.
        static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
        let count = TRANSIENT_UIDS.end - TRANSIENT_UIDS.start;
        let _ = NEXT.compare_exchange(
            u32::MAX,
            std::process::id().wrapping_mul(2_654_435_761) % count,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let start = NEXT.fetch_add(1, Ordering::Relaxed);
        for i in 0..count {
            let uid = TRANSIENT_UIDS.start + (start.wrapping_add(i) % count);
            if taken.contains(&uid) {
                continue;
            }
            if let Some(user) = try_lock(uid)? {
                NEXT.store(start.wrapping_add(i + 1) % count, Ordering::Relaxed);
                return Ok(user);
            }
        }
        Err(Error::TransientUserUnavailable {
            missing: format!("a free uid: all {count} of {}..{} are in use", TRANSIENT_UIDS.start, TRANSIENT_UIDS.end),
            fix: "end sessions that no longer run anything (`procscope sweep`), or give fixed --uid/--gid",
        })
    }

    /// The uid, which is also the gid.
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    /// For a process that becomes the command itself (`procscope exec`): the
    /// uid's lock file is released, and the allocation lock is returned
    /// instead, to be held (it is `FD_CLOEXEC`) until the process has switched
    /// to the uid and calls `execve`. From then on the running process itself
    /// keeps the uid taken: no allocator gives out a uid a process runs with.
    pub(crate) fn hand_over(self) -> Result<OwnedFd> {
        let lock = allocation_lock()?;
        drop(self);
        Ok(lock)
    }
}

/// The lock every allocation takes (`LOCK_DIR/.allocating`), so that a uid
/// being handed over to a starting process is never given out meanwhile.
/// Waited for at most 2 s.
fn allocation_lock() -> Result<OwnedFd> {
    let path = Path::new(LOCK_DIR).join(".allocating");
    let fd = open_lock_file(&path)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(fd),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(Error::io("flock", &path, e)),
        }
    }
}

impl Drop for TransientUser {
    fn drop(&mut self) {
        // Remove the file while holding its lock, and only if it is still ours:
        // an allocator that opened it before sees, once it holds the lock, that
        // the path no longer names what it locked, and moves on.
        if names(&self.lock, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
        // The lock goes with the fd.
    }
}

/// Opens (creating it, root-only) a lock file; never through a symlink.
fn open_lock_file(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| Error::io("open", path, e))
}

/// Whether `path` still names the file `fd` has open.
fn names(fd: &OwnedFd, path: &Path) -> bool {
    match (rustix::fs::fstat(fd), rustix::fs::stat(path)) {
        (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
        _ => false,
    }
}

/// Takes `uid`'s lock file if no one holds it. `None`: taken.
fn try_lock(uid: u32) -> Result<Option<TransientUser>> {
    let path = Path::new(LOCK_DIR).join(uid.to_string());
    let lock = open_lock_file(&path)?;
    match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
        Err(e) => return Err(Error::io("flock", &path, e)),
    }
    // A holder that was releasing may have removed the file between our open
    // and our lock: then we hold a lock on nothing.
    if !names(&lock, &path) {
        return Ok(None);
    }
    let _ = rustix::fs::ftruncate(&lock, 0);
    let _ = rustix::io::write(&lock, format!("{}\n", std::process::id()).as_bytes());
    Ok(Some(TransientUser { uid, path, lock }))
}

/// Every uid and gid of the range that a process runs with (any of its real,
/// effective, saved and filesystem ids) or that `/etc/passwd` or `/etc/group`
/// names.
fn ids_in_use() -> Result<HashSet<u32>> {
    let mut taken = HashSet::new();
    let in_range = |id: u32| TRANSIENT_UIDS.contains(&id);
    for file in ["/etc/passwd", "/etc/group"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        taken.extend(text.lines().filter_map(|l| l.split(':').nth(2)?.parse().ok()).filter(|id| in_range(*id)));
    }
    let proc = std::fs::read_dir("/proc").map_err(|e| Error::io("read", "/proc", e))?;
    let mut text = String::new();
    for entry in proc.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        text.clear();
        // A process that exits meanwhile is simply not counted.
        let Ok(mut f) = File::open(entry.path().join("status")) else { continue };
        if f.read_to_string(&mut text).is_err() {
            continue;
        }
        for line in text.lines() {
            if let Some(ids) = line.strip_prefix("Uid:").or_else(|| line.strip_prefix("Gid:")) {
                taken.extend(ids.split_whitespace().filter_map(|id| id.parse().ok()).filter(|id| in_range(*id)));
            }
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uid is held by one lock at a time, and released (its file removed)
    /// when dropped.
    #[test]
    fn one_holder_per_uid_and_release_on_drop() {
        std::fs::create_dir_all(LOCK_DIR).unwrap();
        let uid = TRANSIENT_UIDS.end - 1 - (std::process::id() % 1000);
        let first = try_lock(uid).unwrap().expect("free");
        assert!(try_lock(uid).unwrap().is_none(), "a second lock on the same uid");
        let path = first.path.clone();
        assert!(path.exists());
        drop(first);
        assert!(!path.exists(), "released");
        drop(try_lock(uid).unwrap().expect("free again"));
    }

    /// A process still running as a uid of the range (a dead gateway's
    /// server, say) keeps it from being given out.
    #[test]
    fn a_uid_a_process_runs_with_is_in_use() {
        use std::os::unix::process::CommandExt;
        let uid = TRANSIENT_UIDS.start + (std::process::id() % 1000);
        let mut sleeper = std::process::Command::new("sleep").arg("60").uid(uid).gid(uid).spawn().unwrap();
        let taken = ids_in_use();
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(taken.unwrap().contains(&uid));
    }
}
