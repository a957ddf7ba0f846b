//! The child's sealing steps: a cgroup namespace rooted at its session and a
//! mount namespace of its own in which every cgroup mount is read-only.
//!
//! The read-only mount namespace is prepared once, by the parent
//! ([`build_template`]); each child joins it and takes a cgroup namespace of
//! its own. Both steps run first in the child, right after it is in its cgroup
//! and while it still holds `CAP_SYS_ADMIN`; the later steps drop every
//! capability, so the child can neither leave the namespaces (`setns` needs
//! `CAP_SYS_ADMIN`) nor remount anything writable. This is systemd's `ProtectControlGroups=strict`
//! (a cgroup namespace plus a read-only cgroup view) and runc's setup.
//!
//! # Async-signal safety
//!
//! Everything here but [`build_template`] runs in the child between clone and
//! `execve`: raw system calls on memory the parent prepared, no allocation, no
//! locks.
//!
//! # References
//! - unshare(2), cgroup_namespaces(7), mount_namespaces(7), mount_setattr(2)
//! - Documentation/admin-guide/cgroup-v2.rst, "Namespace" and "nsdelegate"

use std::ffi::{CStr, CString, c_long};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr;

use rustix::fs::{Mode, OFlags};

use super::spawn::ChildStage;

/// `MOUNT_ATTR_RDONLY` from `<linux/mount.h>`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `AT_RECURSIVE` from `<linux/fcntl.h>`: the mount and every mount below it.
const AT_RECURSIVE: u32 = 0x8000;
/// `AT_NO_AUTOMOUNT`.
const AT_NO_AUTOMOUNT: u32 = 0x800;
/// `AT_SYMLINK_NOFOLLOW`.
const AT_SYMLINK_NOFOLLOW: u32 = 0x100;
/// `SYS_mount_setattr`: the same number on every architecture (Linux 5.12).
const SYS_MOUNT_SETATTR: c_long = 442;

/// `struct mount_attr` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A cgroup mount to make read-only in the child's view, prepared by the parent.
#[derive(Debug)]
pub(crate) struct SealMount {
    /// The mount point, as the calling process sees it.
    pub path: CString,
    /// `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC` and the atime flags the mount has
    /// now, kept by the pre-5.12 remount (which would otherwise clear them).
    pub keep_flags: u64,
    /// Below an earlier mount of the list: the recursive `mount_setattr` of that
    /// one covered it already (only the per-mount remount needs it).
    pub covered: bool,
}

/// How a sealed child gets its read-only view of the cgroup mounts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ChildSeal<'a> {
    /// Join this prepared mount namespace (see [`build_template`]) and return
    /// to `cwd`, the parent's working directory, by path: `setns` resets the
    /// root and working directory to the namespace's root. Nothing is copied
    /// per child, and nothing is torn down when it exits.
    Template { ns: BorrowedFd<'a>, cwd: &'a CStr },
    /// Copy the parent's mount namespace and make these mounts read-only in
    /// the copy (a gateway whose root is not its namespace's root, or whose
    /// working directory has no path).
    Copy(&'a [SealMount]),
    /// For a parent without `CAP_SYS_ADMIN` (a non-root gateway in a delegated
    /// subtree): a user namespace of the child's own first, in which it holds
    /// the capabilities to make the others. Its uid and gid map onto
    /// themselves (`uid_map` and `gid_map` are "ID ID 1"), so the child stays
    /// who it was, and `setgroups` is denied in it.
    UserNs { mounts: &'a [SealMount], uid_map: &'a CStr, gid_map: &'a CStr },
}

/// Seals the calling child: a cgroup namespace of its own (rooted at the
/// cgroup it is in now), a mount namespace in which every cgroup mount is
/// read-only, and the seccomp filter that keeps it from picking SIGKILL or
/// SIGSTOP as the signal of `F_SETOWN` (see [`super::seccomp`]). The filter
/// is installed last, still with `CAP_SYS_ADMIN` (in the host's user
/// namespace or the child's own), so `no_new_privs` is not needed for it.
/// Async-signal-safe.
///
/// `filter_inherited`: the parent thread carries the filter already (see
/// [`super::seccomp::filter_spawning_thread`]), and the child has it from
/// `clone`.
pub(super) fn seal(how: ChildSeal<'_>, filter_inherited: bool) -> Result<(), (ChildStage, i32)> {
    namespaces(how)?;
    if filter_inherited {
        return Ok(());
    }
    super::seccomp::install_signal_filter().map_err(|e| (ChildStage::SealSignalFilter, e))
}

/// The namespace steps of [`seal`]. Async-signal-safe.
fn namespaces(how: ChildSeal<'_>) -> Result<(), (ChildStage, i32)> {
    match how {
        ChildSeal::Template { ns, cwd } => {
            // SAFETY: setns affects only this task, which has an fs_struct of
            // its own (no CLONE_FS); `ns` is an open mount-namespace fd.
            let r = unsafe { libc::syscall(libc::SYS_setns, ns.as_raw_fd(), libc::CLONE_NEWNS) };
            check(ChildStage::SealNamespaces, r)?;
            // SAFETY: as above.
            let r = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWCGROUP) };
            check(ChildStage::SealNamespaces, r)?;
            // Still with every capability: the caller's directory is entered
            // as the caller would, whatever uid the child switches to later.
            // SAFETY: a NUL-terminated path.
            let r = unsafe { libc::syscall(libc::SYS_chdir, cwd.as_ptr()) };
            check(ChildStage::Chdir, r)
        }
        ChildSeal::Copy(mounts) => {
            // SAFETY: unshare affects only this task; CLONE_NEWNS needs an
            // fs_struct of our own, which we have (no CLONE_FS).
            let r = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS) };
            check(ChildStage::SealNamespaces, r)?;
            read_only(mounts).map_err(|e| (ChildStage::SealMounts, e))
        }
        ChildSeal::UserNs { mounts, uid_map, gid_map } => {
            // SAFETY: as above. CLONE_NEWUSER needs a thread group of one and
            // an fs_struct of our own: this child has both.
            let r = unsafe {
                libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER | libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS)
            };
            check(ChildStage::SealNamespaces, r)?;
            write_file(c"/proc/self/setgroups", c"deny").map_err(|e| (ChildStage::SealNamespaces, e))?;
            write_file(c"/proc/self/uid_map", uid_map).map_err(|e| (ChildStage::SealNamespaces, e))?;
            write_file(c"/proc/self/gid_map", gid_map).map_err(|e| (ChildStage::SealNamespaces, e))?;
            read_only(mounts).map_err(|e| (ChildStage::SealMounts, e))
        }
    }
}

/// Writes `text` to the file at `path` in one `write`. Async-signal-safe.
fn write_file(path: &CStr, text: &CStr) -> Result<(), i32> {
    // SAFETY: a NUL-terminated path; the fd is ours and closed below.
    let fd =
        unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    let bytes = text.to_bytes();
    // SAFETY: writing `bytes`, which outlive the call, to our fd.
    let n = unsafe { libc::syscall(libc::SYS_write, fd, bytes.as_ptr(), bytes.len()) };
    let e = errno();
    // SAFETY: closing the fd opened above.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    if n < 0 { Err(e) } else { Ok(()) }
}

/// Makes every mount in `mounts` read-only in the caller's mount namespace:
/// recursively with `mount_setattr`, else (before Linux 5.12) one
/// `MS_REMOUNT | MS_BIND | MS_RDONLY` per mount. Each also stops receiving
/// mounts from its peers (`MS_PRIVATE`), so that a cgroup hierarchy mounted
/// later beneath it does not appear writable. Async-signal-safe.
fn read_only(mounts: &[SealMount]) -> Result<(), i32> {
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: libc::MS_PRIVATE, userns_fd: 0 };
    let mut recursive = true;
    for m in mounts {
        if m.covered && recursive {
            continue;
        }
        // SAFETY: a NUL-terminated path and a valid `mount_attr` of the given size.
        let r = unsafe {
            libc::syscall(
                SYS_MOUNT_SETATTR,
                libc::AT_FDCWD,
                m.path.as_ptr(),
                AT_RECURSIVE | AT_NO_AUTOMOUNT | AT_SYMLINK_NOFOLLOW,
                ptr::addr_of!(attr),
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r == 0 {
            continue;
        }
        let e = errno();
        if e != libc::ENOSYS {
            return Err(e);
        }
        recursive = false;
        // Before Linux 5.12: a read-only bind remount of this one mount (the
        // parent lists every cgroup mount, nested ones included).
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | m.keep_flags;
        let r = mount(m.path.as_ptr(), flags);
        if r < 0 {
            return Err(errno());
        }
        if mount(m.path.as_ptr(), libc::MS_PRIVATE) < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// `mount(NULL, path, NULL, flags, NULL)`: a remount or a propagation change.
fn mount(path: *const libc::c_char, flags: u64) -> c_long {
    // SAFETY: `path` is NUL-terminated (callers pass a CString's pointer);
    // NULL source, type and data are allowed for a remount or propagation change.
    unsafe {
        libc::syscall(
            libc::SYS_mount,
            ptr::null::<libc::c_char>(),
            path,
            ptr::null::<libc::c_char>(),
            flags,
            ptr::null::<libc::c_void>(),
        )
    }
}

fn check(stage: ChildStage, r: c_long) -> Result<(), (ChildStage, i32)> {
    if r < 0 { Err((stage, errno())) } else { Ok(()) }
}

/// A prepared sealed mount namespace: a copy of the caller's in which every
/// mount of `mounts` is read-only and receives no later mounts from its peers.
/// Sealed children join it with `setns` instead of copying the mount table
/// each, so that neither their spawn nor their exit pays for a namespace.
///
/// Built on a short-lived thread of its own: `unshare(CLONE_NEWNS)` moves only
/// the calling thread, which then ends. `Ok(None)` when the caller's root is
/// not its namespace's root (a chroot): joining the namespace would leave the
/// chroot, so children copy the namespace instead.
///
/// # Errors
/// The failing step and its errno.
pub(crate) fn build_template(mounts: &[SealMount]) -> io::Result<Option<OwnedFd>> {
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<Option<OwnedFd>> {
            let root = rustix::fs::stat("/")?;
            // SAFETY: unshare moves only this thread, which ends right after;
            // CLONE_NEWNS implies a private fs_struct for it (CLONE_FS).
            if unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS) } < 0 {
                return Err(io::Error::last_os_error());
            }
            read_only(mounts).map_err(io::Error::from_raw_os_error)?;
            let ns = rustix::fs::open("/proc/thread-self/ns/mnt", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
            // Enter it as a child would (root and cwd become the namespace's
            // root) and compare roots.
            // SAFETY: as for unshare above; `ns` is an open mount-namespace fd.
            if unsafe { libc::syscall(libc::SYS_setns, ns.as_raw_fd(), libc::CLONE_NEWNS) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let joined = rustix::fs::stat("/")?;
            Ok((joined.st_dev == root.st_dev && joined.st_ino == root.st_ino).then_some(ns))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread building the sealed mount namespace panicked")))
    })
}

/// This thread's errno (in a `CLONE_VM` child, the TLS of the suspended parent
/// thread, which no one else reads meanwhile).
fn errno() -> i32 {
    // SAFETY: reading errno of the current thread.
    unsafe { *libc::__errno_location() }
}
