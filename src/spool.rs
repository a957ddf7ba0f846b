//! The guardian's spool: how what the guardian ends reaches the root's
//! totals ([`crate::totals`]).
//!
//! The totals are `trusted.*` xattrs on a root-owned tree, which only a
//! process with `CAP_SYS_ADMIN` can write; the guardian keeps `CAP_KILL`
//! only. So it writes what it ended into a directory instead, and the
//! processes that can write the totals fold it in.
//!
//! # Where
//! `/run/procscope/guardian-spool/<inode>`, where `<inode>` is the inode
//! number of the root's cgroup directory (unique among live cgroups, and
//! never reused on 64-bit kernels before a reboot, which empties `/run` as
//! well): the spool lives exactly as long as the totals it feeds. The
//! parents are root-owned, mode 0755; the spool itself is owned by
//! [`GUARDIAN_UID`](crate::guardian::GUARDIAN_UID) (user and group), mode
//! 0700. Whoever starts a guardian (a supervisor, or `procscope exec`: root
//! with its capabilities) makes it if it is missing — `CAP_CHOWN` gives it
//! to the guardian's uid — and passes its path in [`SPOOL_ENV`]. Nothing is
//! spooled for a guardian that takes no identity of its own (a gateway that
//! is not root, or uid 0 of a user namespace).
//!
//! # Writing
//! For every ending it does — an `exec` command's leftovers ended (and its
//! session removed once it has no command left), or the whole instance of a
//! gateway that died — the guardian writes one file with its counts in
//! [`Counters`]' `key=value,...` format (the format of the totals), as
//! recovery counts them: `sessions_swept`, `sessions_removed`,
//! `processes_terminated`, `processes_killed`, `leaks_prevented`, `sweeps`,
//! `errors`. It writes with its filesystem uid set to its real uid
//! (`setfsuid`, which needs no capability), so the file is the guardian's
//! and the 0700 directory lets it in, into a temporary name (`.tmp-…`) that
//! it then renames: a reader sees whole files only. With
//! [`MAX_FILES`] files in the spool already (nobody folds it), the count is
//! dropped and said in the guardian's log.
//!
//! # Folding
//! `procscope metrics` (before it gathers), a supervisor at each save of its
//! counters, and the recovery fold the spool into the root's `totals`
//! holding the totals' lock, then delete the files they added. A reader
//! trusts the spool only if it is a directory (opened with `O_NOFOLLOW`,
//! every parent too) owned by the guardian's uid with mode 0700, and each
//! file only if it is a regular file (opened with `O_NOFOLLOW`) owned by the
//! guardian's uid; anything else is left alone and logged. A reader without
//! the capabilities to open the spool folds nothing. Temporary files of a
//! guardian that died while writing are deleted after a minute.
//!
//! # What a child can do
//! A sealed child running as uid 0 has no `CAP_DAC_OVERRIDE`, `CAP_CHOWN`
//! or `CAP_FOWNER`: it can neither write into a 0700 directory owned by
//! another uid nor make a file or directory owned by the guardian's uid, nor
//! become that uid (no `CAP_SETUID`). What it can do is rename or remove
//! the spool, or put a directory of its own in its place (the parents are
//! root's): the guardian's counts are then lost (a planted directory is
//! refused, and the next starter says so), never forged. An unsealed uid-0
//! process with capabilities can write anything, the totals included.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::cgroup::Cgroup;
use crate::guardian::GUARDIAN_UID;
use crate::supervisor::Counters;
use crate::totals::{self, XATTR_TOTALS};

/// The parent of every root's spool.
pub(crate) const SPOOL_BASE: &str = "/run/procscope/guardian-spool";

/// The environment variable through which a guardian's starter passes the
/// spool's path.
pub(crate) const SPOOL_ENV: &str = "PROCSCOPE_GUARDIAN_SPOOL";

/// At most this many files wait in a spool; the guardian drops what it would
/// add beyond.
pub(crate) const MAX_FILES: usize = 10_000;

/// A spool file larger than this is not one the guardian wrote.
const MAX_FILE_BYTES: u64 = 4096;

/// Where the spool of `root` is: [`SPOOL_BASE`]`/<inode of the root>`.
///
/// # Errors
/// The root's directory cannot be `fstat`ed.
pub(crate) fn path_of(root: &Cgroup) -> std::io::Result<PathBuf> {
    let st = rustix::fs::fstat(root)?;
    Ok(Path::new(SPOOL_BASE).join(st.st_ino.to_string()))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Opens [`SPOOL_BASE`] one component at a time, never following a symlink;
/// with `create`, makes what is missing (root-owned, 0755).
fn open_base(create: bool) -> std::io::Result<OwnedFd> {
    let mut dir = rustix::fs::open("/", DIR_FLAGS, Mode::empty())?;
    for part in Path::new(SPOOL_BASE).components().skip(1) {
        let name = part.as_os_str();
        let next = match rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                let fd = rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())?;
                // Whatever the umask.
                let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755));
                fd
            }
            r => r?,
        };
        dir = next;
    }
    Ok(dir)
}

/// Whether `fd` is a spool: a directory owned by the guardian's uid, mode
/// 0700.
fn trusted_dir(fd: &impl AsFd) -> std::io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        && st.st_uid == GUARDIAN_UID
        && st.st_mode & 0o7777 == 0o700)
}

/// Whether this process starts guardians that take an identity of their own
/// (and so may spool): root of the host's user namespace.
pub(crate) fn spools() -> bool {
    rustix::process::geteuid().is_root() && crate::cgroup::uid0_is_host_root()
}

/// Makes sure the spool of `root` exists (for a guardian about to start),
/// and returns its path; `None`, said in a warning, when it cannot be made
/// or something else is in its place.
pub(crate) fn prepare(root: &Cgroup) -> Option<PathBuf> {
    if !spools() {
        return None;
    }
    let made = (|| -> std::io::Result<PathBuf> {
        let path = path_of(root)?;
        let name = path.file_name().expect("a key");
        let base = open_base(true)?;
        let created = match rustix::fs::mkdirat(&base, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(e.into()),
        };
        let fd = rustix::fs::openat(&base, name, DIR_FLAGS, Mode::empty())?;
        if created {
            // Ours only if it is still the empty root-owned directory just
            // made (not one put in its place meanwhile).
            let st = rustix::fs::fstat(&fd)?;
            if st.st_uid == 0 && st.st_nlink == 2 {
                let guardian = rustix::process::Uid::from_raw(GUARDIAN_UID);
                let group = rustix::process::Gid::from_raw(GUARDIAN_UID);
                rustix::fs::fchown(&fd, Some(guardian), Some(group))?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
            }
        }
        if !trusted_dir(&fd)? {
            return Err(std::io::Error::other(format!(
                "not a directory owned by uid {GUARDIAN_UID} with mode 0700; remove it"
            )));
        }
        Ok(path)
    })();
    made.map_err(|e| {
        tracing::warn!(error = %e, spool = SPOOL_BASE,
            "the guardian's spool cannot be used: what the guardian ends is not counted");
    })
    .ok()
}

/// Opens the spool at `path` for the guardian (before it drops its
/// capabilities), checking that it is one.
pub(crate) fn open_for_guardian(path: &Path) -> Result<OwnedFd, String> {
    let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| format!("open {}: {e}", path.display()))?;
    match trusted_dir(&fd) {
        Ok(true) => Ok(fd),
        Ok(false) => Err(format!("{} is not owned by uid {GUARDIAN_UID} with mode 0700", path.display())),
        Err(e) => Err(format!("fstat {}: {e}", path.display())),
    }
}

/// The filesystem uid of this thread set to the guardian's uid while it
/// lives, back to 0 when dropped.
struct AsGuardian;

impl AsGuardian {
    fn take() -> Result<AsGuardian, String> {
        crate::sys::fsuid::set_fsuid(GUARDIAN_UID);
        // setfsuid returns the previous value: a second call says whether
        // the first one took.
        if crate::sys::fsuid::set_fsuid(GUARDIAN_UID) != GUARDIAN_UID {
            return Err(format!("setfsuid({GUARDIAN_UID}) refused"));
        }
        Ok(AsGuardian)
    }
}

impl Drop for AsGuardian {
    fn drop(&mut self) {
        crate::sys::fsuid::set_fsuid(0);
    }
}

/// The names of the entries of `dir` (`.` and `..` left out).
fn entries(dir: &impl AsFd) -> std::io::Result<Vec<std::ffi::CString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Writes `counts` into the spool `dir` as a new file: the guardian's side.
/// `seq` makes the name unique within this process.
pub(crate) fn write(dir: &OwnedFd, counts: &Counters, seq: u64) -> Result<(), String> {
    if counts.is_zero() {
        return Ok(());
    }
    let _fsuid = AsGuardian::take()?;
    let held = entries(dir).map_err(|e| format!("listing the spool: {e}"))?.len();
    if held >= MAX_FILES {
        return Err(format!("the spool holds {held} files already: dropped {}", counts.encode()));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let name = format!("{}-{}-{seq}", now.as_nanos(), std::process::id());
    let tmp = format!(".tmp-{name}");
    let written = (|| -> rustix::io::Result<()> {
        let f = rustix::fs::openat(
            dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let text = counts.encode() + "\n";
        let mut buf = text.as_bytes();
        while !buf.is_empty() {
            let n = rustix::io::write(&f, buf)?;
            buf = &buf[n..];
        }
        drop(f);
        rustix::fs::renameat(dir, &tmp, dir, &name)
    })();
    written.map_err(|e| {
        let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
        format!("writing {}: {e}", counts.encode())
    })
}

/// Reads the spool file `name` of `dir`: its counts if it is one the
/// guardian wrote, else why not.
fn read_one(dir: &OwnedFd, name: &CStr) -> Result<Counters, String> {
    let f = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open: {e}"))?;
    let st = rustix::fs::fstat(&f).map_err(|e| format!("fstat: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("not a regular file".into());
    }
    if st.st_uid != GUARDIAN_UID {
        return Err(format!("owned by uid {}, not the guardian's", st.st_uid));
    }
    if st.st_size as u64 > MAX_FILE_BYTES {
        return Err(format!("{} bytes", st.st_size));
    }
    let mut buf = vec![0u8; MAX_FILE_BYTES as usize];
    let mut len = 0;
    loop {
        match rustix::io::read(&f, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if len == buf.len() {
            break;
        }
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| "not UTF-8".to_owned())?;
    Ok(Counters::decode(text.trim()))
}

/// Folds the spool of `root` into its totals and deletes the files it added.
/// The caller holds the root's lock ([`totals::lock`]). Returns what it
/// added; a spool that is missing or cannot be opened (no capabilities)
/// adds nothing, a spool or file that is not the guardian's is logged and
/// left alone.
pub(crate) fn fold_locked(root: &Cgroup) -> Counters {
    let mut total = Counters::default();
    let Ok(path) = path_of(root) else { return total };
    let name = path.file_name().expect("a key");
    let dir = match open_base(false).and_then(|base| Ok(rustix::fs::openat(&base, name, DIR_FLAGS, Mode::empty())?)) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return total,
        Err(e) => {
            tracing::debug!(error = %e, spool = %path.display(), "the guardian's spool cannot be read");
            return total;
        }
    };
    match trusted_dir(&dir) {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(spool = %path.display(),
                "the guardian's spool is not a directory owned by the guardian's uid with mode 0700: ignored");
            return total;
        }
        Err(e) => {
            tracing::debug!(error = %e, spool = %path.display(), "the guardian's spool cannot be read");
            return total;
        }
    }
    let names = match entries(&dir) {
        Ok(names) => names,
        Err(e) => {
            tracing::debug!(error = %e, spool = %path.display(), "the guardian's spool cannot be listed");
            return total;
        }
    };
    let mut folded = Vec::new();
    for name in names {
        // Being written, or left half-written by a guardian that died.
        if name.as_bytes().starts_with(b".") {
            remove_if_stale(&dir, &name);
            continue;
        }
        match read_one(&dir, &name) {
            Ok(c) => {
                total.add(&c);
                folded.push(name);
            }
            Err(why) => tracing::warn!(spool = %path.display(), file = %name.to_string_lossy(), %why,
                "a file in the guardian's spool that the guardian did not write: ignored"),
        }
    }
    if folded.is_empty() {
        return total;
    }
    if let Err(e) = totals::add_locked(root, XATTR_TOTALS, &total) {
        tracing::warn!(error = %e, spool = %path.display(), "could not fold the guardian's spool into the totals");
        return Counters::default();
    }
    for name in folded {
        if let Err(e) = rustix::fs::unlinkat(&dir, &name, AtFlags::empty()) {
            tracing::warn!(error = %e, spool = %path.display(), file = %name.to_string_lossy(),
                "could not delete a folded file of the guardian's spool: it may be counted twice");
        }
    }
    total
}

/// Deletes the temporary file `name` if no guardian has touched it for a
/// minute (one that died half-way through writing it).
fn remove_if_stale(dir: &OwnedFd, name: &CStr) {
    const STALE: Duration = Duration::from_secs(60);
    let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else { return };
    let modified = std::time::UNIX_EPOCH + Duration::new(st.st_mtime as u64, st.st_mtime_nsec as u32);
    if st.st_uid == GUARDIAN_UID && modified.elapsed().is_ok_and(|age| age > STALE) {
        let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
}

/// [`fold_locked`], taking the root's lock (waited for at most `wait`,
/// blocking the thread) first; with no spool, not even the lock.
pub(crate) fn fold_blocking(root: &Cgroup, wait: Duration) -> Counters {
    if !spools() || !exists(root) {
        return Counters::default();
    }
    match totals::lock_blocking(root, wait) {
        Ok(_lock) => fold_locked(root),
        Err(e) => {
            tracing::debug!(error = %e, "the guardian's spool was not folded: the totals' lock is held");
            Counters::default()
        }
    }
}

/// [`fold_blocking`], waiting for the lock asynchronously.
pub(crate) async fn fold(root: &Cgroup, wait: Duration) -> Counters {
    if !spools() || !exists(root) {
        return Counters::default();
    }
    match totals::lock(root, wait).await {
        Ok(_lock) => fold_locked(root),
        Err(e) => {
            tracing::debug!(error = %e, "the guardian's spool was not folded: the totals' lock is held");
            Counters::default()
        }
    }
}

/// Whether `root` has a spool (cheap: one `stat`). Only root of the host's
/// user namespace reads one.
fn exists(root: &Cgroup) -> bool {
    path_of(root).is_ok_and(|p| std::fs::symlink_metadata(p).is_ok())
}
