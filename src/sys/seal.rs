//! The child's sealing steps: a cgroup namespace rooted at its session and a
//! mount namespace of its own in which every cgroup mount is read-only.
//!
//! They run first in the child, right after it is in its cgroup and while it
//! still holds `CAP_SYS_ADMIN`; the later steps drop every capability, so the
//! child can neither leave the namespaces (`setns` needs `CAP_SYS_ADMIN`) nor
//! remount anything writable. This is systemd's `ProtectControlGroups=strict`
//! (a cgroup namespace plus a read-only cgroup view) and runc's setup.
//!
//! # Async-signal safety
//!
//! Everything here runs in the child between clone and `execve`: raw system
//! calls on memory the parent prepared, no allocation, no locks.
//!
//! # References
//! - unshare(2), cgroup_namespaces(7), mount_namespaces(7), mount_setattr(2)
//! - Documentation/admin-guide/cgroup-v2.rst, "Namespace" and "nsdelegate"

use std::ffi::{CString, c_long};
use std::ptr;

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

/// Seals the calling child: new cgroup and mount namespaces, then every mount
/// in `mounts` read-only (recursively with `mount_setattr`, else one
/// `MS_REMOUNT | MS_BIND | MS_RDONLY` per mount). Async-signal-safe.
pub(super) fn seal(mounts: &[SealMount]) -> Result<(), (ChildStage, i32)> {
    // SAFETY: unshare affects only this task; CLONE_NEWNS needs an fs_struct of
    // our own, which we have (no CLONE_FS).
    let r = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS) };
    if r < 0 {
        return Err((ChildStage::SealNamespaces, errno()));
    }
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
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
            return Err((ChildStage::SealMounts, e));
        }
        recursive = false;
        // Before Linux 5.12: a read-only bind remount of this one mount (the
        // parent lists every cgroup mount, nested ones included).
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | m.keep_flags;
        // SAFETY: NUL-terminated path; NULL source, type and data are allowed
        // for a remount.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount,
                ptr::null::<libc::c_char>(),
                m.path.as_ptr(),
                ptr::null::<libc::c_char>(),
                flags,
                ptr::null::<libc::c_void>(),
            )
        };
        if r < 0 {
            return Err((ChildStage::SealMounts, errno()));
        }
    }
    Ok(())
}

/// This thread's errno (in a `CLONE_VM` child, the TLS of the suspended parent
/// thread, which no one else reads meanwhile).
fn errno() -> i32 {
    // SAFETY: reading errno of the current thread.
    unsafe { *libc::__errno_location() }
}
