//! [`Cgroup`]: a cgroup-v2 directory held by an `O_DIRECTORY` fd.
//!
//! Every file and sub-cgroup is opened beneath that fd, one path component at a
//! time, without following symlinks; every directory is checked to be on a
//! cgroup2 filesystem (`fstatfs` magic).
//!
//! # References
//! - Documentation/admin-guide/cgroup-v2.rst in the kernel tree

mod events;
pub mod hierarchy;
mod kill;
pub mod limits;
mod walk;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::{Context, Error, Result};
use crate::pidfd::PidFd;

pub use events::Events;
pub use kill::KillMechanism;

/// `CGROUP2_SUPER_MAGIC` from `<linux/magic.h>`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Kernel file names used here.
pub(crate) mod files {
    pub const PROCS: &str = "cgroup.procs";
    pub const EVENTS: &str = "cgroup.events";
    pub const KILL: &str = "cgroup.kill";
    pub const FREEZE: &str = "cgroup.freeze";
    pub const CONTROLLERS: &str = "cgroup.controllers";
    pub const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
}

/// The xattr namespace of procscope's state on root-owned directories.
const META_TRUSTED: &str = "trusted.procscope.";
/// The xattr namespace of procscope's state on directories delegated to a user.
const META_USER: &str = "user.procscope.";

/// A cgroup-v2 directory, held open.
#[derive(Debug)]
pub struct Cgroup {
    dir: OwnedFd,
    path: PathBuf,
}

impl Cgroup {
    /// Opens the cgroup2 directory at `path` (symlinks in `path` itself are
    /// followed; nothing beneath it ever is).
    ///
    /// # Errors
    /// [`Error::NotCgroup2`] if `path` is not a directory on a cgroup2 filesystem.
    pub fn open(path: impl AsRef<Path>) -> Result<Cgroup> {
        let path = path.as_ref();
        let dir = rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(
            |e| match e {
                rustix::io::Errno::NOTDIR => Error::NotCgroup2 { path: path.to_owned() },
                e => Error::io("open cgroup", path, e),
            },
        )?;
        check_cgroup2(&dir, path)?;
        Ok(Cgroup { dir, path: path.to_owned() })
    }

    /// The absolute path (for messages and display; operations use the fd).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's name.
    pub fn name(&self) -> &str {
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or("")
    }

    /// `mkdirat` + open of a child cgroup called `name` (one path component).
    ///
    /// # Errors
    /// `EEXIST` (as [`Error::Io`]) if it exists already.
    pub fn create_child(&self, name: &str) -> Result<Cgroup> {
        let path = self.child_path(name)?;
        rustix::fs::mkdirat(&self.dir, name, Mode::from_raw_mode(0o755)).ctx("create cgroup", &path)?;
        self.open_child(name)
    }

    /// Opens the existing child cgroup `name` without following symlinks.
    pub fn open_child(&self, name: &str) -> Result<Cgroup> {
        crate::names::check_component(name)?;
        self.open_child_os(name.as_ref())
    }

    /// Opens `rel` (one component, or `..`) beneath this directory as a
    /// cgroup, without following symlinks; `path` is its path for messages.
    pub(crate) fn open_dir_at(&self, rel: &std::ffi::OsStr, path: PathBuf) -> Result<Cgroup> {
        let dir = rustix::fs::openat(
            &self.dir,
            rel,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => Error::NotCgroup2 { path: path.clone() },
            e => Error::io("open cgroup", &path, e),
        })?;
        check_cgroup2(&dir, &path)?;
        Ok(Cgroup { dir, path })
    }

    /// Names of the child cgroups (sub-directories), in no particular order.
    /// A name that is not UTF-8 comes out lossily converted (the tree walks
    /// use the kernel's bytes).
    pub fn children(&self) -> Result<Vec<String>> {
        Ok(self.child_names()?.into_iter().map(|n| n.to_string_lossy().into_owned()).collect())
    }

    /// Names of the child cgroups as the kernel has them (any bytes but `/`
    /// and NUL: a hostile child may use names that are not UTF-8).
    pub(crate) fn child_names(&self) -> Result<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStrExt;
        let fd =
            rustix::fs::openat(&self.dir, ".", OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .ctx("list cgroup", &self.path)?;
        let mut dir = rustix::fs::Dir::read_from(&fd).ctx("list cgroup", &self.path)?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.ctx("list cgroup", &self.path)?;
            let name = entry.file_name().to_bytes();
            if entry.file_type() == rustix::fs::FileType::Directory && name != b"." && name != b".." {
                names.push(std::ffi::OsStr::from_bytes(name).to_owned());
            }
        }
        Ok(names)
    }

    /// [`open_child`](Self::open_child) of a name as the kernel listed it.
    pub(crate) fn open_child_os(&self, name: &std::ffi::OsStr) -> Result<Cgroup> {
        self.open_dir_at(name, self.path.join(name))
    }

    /// [`remove_child`](Self::remove_child) of a name as the kernel listed it.
    pub(crate) fn remove_child_os(&self, name: &std::ffi::OsStr) -> Result<()> {
        rustix::fs::unlinkat(&self.dir, name, AtFlags::REMOVEDIR).ctx("remove cgroup", &self.path.join(name))
    }

    /// Reads `file` of the child cgroup `name` (a name as the kernel listed it).
    pub(crate) fn read_child_file(&self, name: &std::ffi::OsStr, file: &str) -> Result<String> {
        self.read_at(&Path::new(name).join(file))
    }

    /// `rmdir` of the child cgroup `name`, once. `EBUSY` while it still has
    /// processes (or did a moment ago) or child cgroups.
    pub fn remove_child(&self, name: &str) -> Result<()> {
        crate::names::check_component(name)?;
        self.remove_child_os(name.as_ref())
    }

    /// Reads a file of this cgroup.
    pub fn read(&self, file: &str) -> Result<String> {
        self.read_at(Path::new(file))
    }

    /// Reads the file at `rel` beneath this directory (symlinks not followed).
    fn read_at(&self, rel: &Path) -> Result<String> {
        let path = self.path.join(rel);
        let fd = rustix::fs::openat(&self.dir, rel, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .ctx("open", &path)?;
        let mut out = Vec::with_capacity(256);
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(&fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::io("read", &path, e)),
            }
        }
        String::from_utf8(out).map_err(|_| Error::io("read", &path, io::Error::from(io::ErrorKind::InvalidData)))
    }

    /// Writes `data` to a file of this cgroup in one `write`.
    pub fn write(&self, file: &str, data: &str) -> Result<()> {
        let path = self.path.join(file);
        let fd = self.open_file(file, OFlags::WRONLY).ctx("open", &path)?;
        rustix::io::write(&fd, data.as_bytes()).ctx("write", &path)?;
        Ok(())
    }

    /// Whether the kernel file `file` exists in this cgroup.
    pub fn has_file(&self, file: &str) -> bool {
        // fstatat, not faccessat: with AT_SYMLINK_NOFOLLOW the latter needs
        // faccessat2 (Linux 5.8).
        rustix::fs::statat(&self.dir, file, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    pub(crate) fn open_file(&self, file: &str, mode: OFlags) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat(&self.dir, file, mode | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
    }

    /// The pids in `cgroup.procs` (this cgroup only, not descendants). Pids, not
    /// processes: see [`member_pidfds`](Self::member_pidfds).
    pub fn procs(&self) -> Result<Vec<u32>> {
        Ok(parse_pids(&self.read(files::PROCS)?))
    }

    /// The cgroup's id: the inode number of its directory, which is what
    /// `PIDFD_GET_INFO` ([`PidFd::cgroup_id`]) and `name_to_handle_at` report
    /// for it on 64-bit kernels.
    pub fn id(&self) -> Result<u64> {
        let st = rustix::fs::fstat(&self.dir).map_err(|e| Error::io("fstat", &self.path, e))?;
        Ok(st.st_ino)
    }

    /// Pidfds of the processes in this cgroup, each verified to belong to it.
    ///
    /// Reads `cgroup.procs` and opens a pidfd per pid. Then, from Linux 6.13,
    /// asks the kernel for the cgroup of each pidfd's process
    /// (`PIDFD_GET_INFO`) and keeps those in this cgroup; before 6.13, reads
    /// `cgroup.procs` again and keeps the pidfds whose pid is still listed
    /// ([`MembershipCheck`](crate::MembershipCheck) tells which). A kept
    /// pidfd therefore refers to a process of this cgroup, or to one that has
    /// exited (signalling it does nothing): a pid recycled by a stranger is
    /// never kept.
    pub fn member_pidfds(&self) -> Result<Vec<PidFd>> {
        let before = self.procs()?;
        if before.is_empty() {
            return Ok(Vec::new());
        }
        let mut opened = Vec::with_capacity(before.len());
        for pid in before {
            match PidFd::open(pid) {
                Ok(fd) => opened.push(fd),
                // No fd left: an error, never a member silently skipped.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return Err(Error::io("pidfd_open", self.path.join(files::PROCS), e));
                }
                Err(_) => {}
            }
        }
        if crate::pidfd::pidfd_info_supported() {
            let id = self.id()?;
            // ESRCH: reaped meanwhile, nothing to keep.
            return Ok(opened.into_iter().filter(|p| p.cgroup_id().is_ok_and(|c| c == id)).collect());
        }
        let after = self.procs()?;
        Ok(opened.into_iter().filter(|p| after.contains(&p.pid())).collect())
    }

    /// Like [`member_pidfds`](Self::member_pidfds), for this cgroup and every
    /// cgroup below it.
    ///
    /// A sub-cgroup removed during the walk (by another process ending it) is
    /// skipped; only this cgroup itself vanishing is an error.
    pub fn member_pidfds_recursive(&self) -> Result<Vec<PidFd>> {
        let mut all = Vec::new();
        self.visit_populated(|cg| {
            all.extend(cg.member_pidfds()?);
            Ok(())
        })?;
        Ok(all)
    }

    /// Controllers this cgroup can enable for its children (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>> {
        Ok(self.read(files::CONTROLLERS)?.split_whitespace().map(str::to_owned).collect())
    }

    /// Controllers enabled for the children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> Result<Vec<String>> {
        Ok(self.read(files::SUBTREE_CONTROL)?.split_whitespace().map(str::to_owned).collect())
    }

    /// Enables `controllers` for the children, those not enabled yet.
    ///
    /// # Errors
    /// [`Error::ControllerUnavailable`] for a controller this cgroup does not
    /// offer; `EBUSY` if this cgroup holds processes itself.
    pub fn enable_controllers(&self, controllers: &[&'static str]) -> Result<()> {
        let enabled = self.subtree_control()?;
        let missing: Vec<&str> = controllers.iter().copied().filter(|c| !enabled.iter().any(|e| e == c)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let available = self.controllers()?;
        if let Some(c) = missing.iter().find(|c| !available.iter().any(|a| a == *c)) {
            let controller = controllers.iter().copied().find(|x| x == c).unwrap_or("?");
            return Err(Error::ControllerUnavailable { controller, path: self.path.join(files::CONTROLLERS) });
        }
        let line: String = missing.iter().map(|c| format!("+{c} ")).collect();
        self.write(files::SUBTREE_CONTROL, line.trim_end())
    }

    /// Reads the extended attribute `name` (e.g. `trusted.procscope.state`).
    pub fn xattr(&self, name: &str) -> Result<Option<String>> {
        let mut buf = vec![0u8; 256];
        loop {
            match rustix::fs::fgetxattr(&self.dir, name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
                }
                Err(rustix::io::Errno::NODATA) => return Ok(None),
                // Longer than the buffer (the counters, say): ask its size, and
                // again if it grew meanwhile.
                Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 16 => {
                    let size = rustix::fs::fgetxattr(&self.dir, name, &mut [0u8; 0][..]).unwrap_or(0);
                    buf.resize(size.max(buf.len() * 2).min(1 << 16), 0);
                }
                Err(e) => return Err(Error::io("read xattr", self.path.join(name), e)),
            }
        }
    }

    /// Sets the extended attribute `name` to `value`.
    pub fn set_xattr(&self, name: &str, value: &str) -> Result<()> {
        rustix::fs::fsetxattr(&self.dir, name, value.as_bytes(), rustix::fs::XattrFlags::empty())
            .ctx("set xattr", &self.path.join(name))
    }

    /// The xattr namespace procscope keeps its state in on this directory:
    /// `trusted.procscope.` on a directory owned by root, which only a process
    /// with `CAP_SYS_ADMIN` can read or write (a child running as uid 0 cannot
    /// forge it); `user.procscope.` on a directory delegated to another user,
    /// which any process of that user can write.
    ///
    /// "Root" is the host's root: in a user namespace that maps its uid 0 to
    /// another user (a rootless container), a directory that looks root-owned
    /// belongs to that user, and `user.procscope.` is used, as a process
    /// outside the namespace reads it too.
    pub fn meta_prefix(&self) -> &'static str {
        match self.owner_uid() {
            Ok(0) if uid0_is_host_root() => META_TRUSTED,
            Err(_) => META_TRUSTED,
            Ok(_) => META_USER,
        }
    }

    /// Reads procscope's metadata `key` (`kind`, `state`, `owner_pid`, …) in the
    /// namespace [`meta_prefix`](Self::meta_prefix) names. State in the other
    /// namespace is never read: on a root-owned directory a `user.*` value
    /// could have been written by any uid-0 process.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.xattr(&format!("{}{key}", self.meta_prefix()))
    }

    /// Sets procscope's metadata `key` (see [`meta`](Self::meta)).
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.set_xattr(&format!("{}{key}", self.meta_prefix()), value)
    }

    /// The owner uid of the directory.
    pub fn owner_uid(&self) -> Result<u32> {
        Ok(rustix::fs::fstat(&self.dir).ctx("stat", &self.path)?.st_uid)
    }

    fn child_path(&self, name: &str) -> Result<PathBuf> {
        crate::names::check_component(name)?;
        Ok(self.path.join(name))
    }
}

impl AsFd for Cgroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// Whether an error means this process has no fd left (`EMFILE`, `ENFILE`).
pub(crate) fn short_of_fds(e: &Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether an error means the cgroup was removed meanwhile.
pub(crate) fn vanished(e: &Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV))
}

fn check_cgroup2(fd: &OwnedFd, path: &Path) -> Result<()> {
    let st = rustix::fs::fstatfs(fd).ctx("statfs", path)?;
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(Error::NotCgroup2 { path: path.to_owned() });
    }
    Ok(())
}

/// One pid per line; anything else is skipped.
pub(crate) fn parse_pids(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse::<u32>().ok()).filter(|p| (1..=i32::MAX as u32).contains(p)).collect()
}

/// Whether uid 0 of this process's user namespace is the host's uid 0
/// (`/proc/self/uid_map` maps 0 onto 0), read once.
pub(crate) fn uid0_is_host_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_else(|_| "0 0 4294967295".into());
        maps_0_to_0(&map)
    })
}

/// Whether a `uid_map` text maps id 0 onto 0.
fn maps_0_to_0(map: &str) -> bool {
    map.lines().any(|l| {
        let f: Vec<u64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        matches!(f[..], [inside, outside, count] if inside == 0 && outside == 0 && count > 0)
    })
}

#[cfg(test)]
mod uid_map_tests {
    #[test]
    fn only_a_map_of_0_onto_0_is_the_hosts_root() {
        assert!(super::maps_0_to_0("         0          0 4294967295\n"));
        assert!(!super::maps_0_to_0("         0      65534          1\n"));
        assert!(!super::maps_0_to_0("      1000       1000          1\n"));
        assert!(!super::maps_0_to_0(""));
    }
}
