//! Finding the cgroup2 hierarchy, the caller's own cgroup, delegation and the
//! kernel's features.
//!
//! The cgroup2 mount is read from `/proc/self/mountinfo`: it is `/sys/fs/cgroup`
//! on a pure cgroup2 host but `/sys/fs/cgroup/unified` on a hybrid one, and a
//! container may see only part of the tree. The caller's cgroup is the `0::`
//! line of `/proc/self/cgroup`.

use std::path::{Path, PathBuf};

use super::{Cgroup, files};
use crate::error::{Context, Error, Result};

/// One line of `/proc/<pid>/mountinfo` (proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount id.
    pub id: u32,
    /// Parent mount id.
    pub parent: u32,
    /// The root of the mount within its filesystem (field 4), unescaped.
    pub root: String,
    /// Where it is mounted (field 5), unescaped.
    pub mount_point: PathBuf,
    /// Per-mount options (field 6).
    pub options: String,
    /// Filesystem type, e.g. `cgroup2`.
    pub fs_type: String,
    /// Mount source.
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

/// Parses mountinfo text. Malformed lines are skipped, never fatal.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let parent = l.next()?.parse().ok()?;
    let devno = l.next()?;
    if !devno.contains(':') {
        return None;
    }
    let root = unescape(l.next()?);
    let mount_point = PathBuf::from(unescape(l.next()?));
    let options = l.next()?.to_owned();
    if !root.starts_with('/') || !mount_point.is_absolute() {
        return None;
    }
    let mut r = right.split(' ');
    let fs_type = r.next().filter(|s| !s.is_empty())?.to_owned();
    let source = unescape(r.next()?);
    let super_options = r.next().unwrap_or("").to_owned();
    Some(MountEntry { id, parent, root, mount_point, options, fs_type, source, super_options })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/<pid>/cgroup`, split into the v2 path and the v1 lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcCgroup {
    /// The path of the `0::` line (cgroup v2), if present.
    pub unified: Option<String>,
    /// The v1 lines: hierarchy id, controllers, path.
    pub v1: Vec<(u32, String, String)>,
}

/// Parses `/proc/<pid>/cgroup`. Malformed lines are skipped.
pub(crate) fn parse_proc_cgroup(text: &str) -> ProcCgroup {
    let mut out = ProcCgroup::default();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else { continue };
        let Ok(id) = id.parse::<u32>() else { continue };
        if !path.starts_with('/') {
            continue;
        }
        if id == 0 && ctrl.is_empty() {
            out.unified = Some(path.to_owned());
        } else {
            out.v1.push((id, ctrl.to_owned(), path.to_owned()));
        }
    }
    out
}

/// Picks the cgroup2 mount: the one whose root is `/` if there is one (a
/// container may also have a bind mount of a subtree), else the first.
pub(crate) fn find_cgroup2(mounts: &[MountEntry]) -> Option<&MountEntry> {
    let mut v2 = mounts.iter().filter(|m| m.fs_type == "cgroup2");
    let first = v2.clone().next();
    v2.find(|m| m.root == "/").or(first)
}

/// Maps a cgroup path as `/proc/<pid>/cgroup` shows it to a directory under the
/// mount, or `None` if the mount does not show that part of the tree.
pub(crate) fn cgroup_dir(mount: &MountEntry, cgroup: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rel = if root.is_empty() { cgroup } else { cgroup.strip_prefix(root)? };
    if !(rel.is_empty() || rel.starts_with('/')) || rel.split('/').any(|c| c == "..") {
        return None;
    }
    let rel = rel.trim_start_matches('/');
    Some(if rel.is_empty() { mount.mount_point.clone() } else { mount.mount_point.join(rel) })
}

/// The cgroup2 hierarchy as this process sees it.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    /// The cgroup2 mount point, e.g. `/sys/fs/cgroup/unified` on a hybrid host.
    pub mount_point: PathBuf,
    /// Whether cgroup v1 hierarchies are mounted too (hybrid or legacy host).
    pub hybrid: bool,
    /// The caller's own cgroup as `/proc/self/cgroup` names it.
    pub own_cgroup: String,
    /// The caller's own cgroup directory, if the mount shows it.
    pub own_dir: Option<PathBuf>,
}

impl Hierarchy {
    /// Discovers the hierarchy from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    ///
    /// # Errors
    /// [`Error::NoCgroup2`] when no cgroup2 filesystem is mounted.
    ///
    /// `PROCSCOPE_MOUNTINFO` names another mountinfo file to read instead (to
    /// simulate hosts in tests).
    pub fn discover() -> Result<Hierarchy> {
        let fake = std::env::var_os("PROCSCOPE_MOUNTINFO").map(std::path::PathBuf::from);
        let mountinfo = fake.as_deref().unwrap_or(Path::new("/proc/self/mountinfo"));
        let cgroup = Path::new("/proc/self/cgroup");
        let mi = std::fs::read_to_string(mountinfo).ctx("read", mountinfo)?;
        let cg = std::fs::read_to_string(cgroup).ctx("read", cgroup)?;
        Hierarchy::from_texts(&mi, &cg, mountinfo)
    }

    /// Discovery from given texts (for tests and for simulated hosts).
    pub fn from_texts(mountinfo: &str, proc_cgroup: &str, mountinfo_path: &Path) -> Result<Hierarchy> {
        let mounts = parse_mountinfo(mountinfo);
        let mount = find_cgroup2(&mounts).ok_or_else(|| Error::NoCgroup2 { mountinfo: mountinfo_path.to_owned() })?;
        let hybrid = mounts.iter().any(|m| m.fs_type == "cgroup");
        let own_cgroup = parse_proc_cgroup(proc_cgroup).unified.unwrap_or_else(|| "/".to_owned());
        let own_dir = cgroup_dir(mount, &own_cgroup);
        Ok(Hierarchy { mount_point: mount.mount_point.clone(), hybrid, own_cgroup, own_dir })
    }

    /// The cgroup2 root directory.
    pub fn open_mount(&self) -> Result<Cgroup> {
        Cgroup::open(&self.mount_point)
    }
}

/// What this process may do with a cgroup: the facts behind "delegated".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delegation {
    /// The directory's owner uid.
    pub owner_uid: u32,
    /// Our effective uid.
    pub euid: u32,
    /// We can create sub-cgroups (write + search on the directory).
    pub dir_writable: bool,
    /// We can write `cgroup.procs`.
    pub procs_writable: bool,
    /// We can write `cgroup.subtree_control`.
    pub subtree_control_writable: bool,
    /// systemd marked it delegated (`trusted.delegate` or `user.delegate` = 1).
    pub delegate_xattr: bool,
}

impl Delegation {
    /// Reads the facts for `cgroup`.
    pub fn of(cgroup: &Cgroup) -> Result<Delegation> {
        use rustix::fs::{Access, AtFlags};
        let can = |name: &str, access| {
            // AT_EACCESS alone: rustix emulates it before Linux 5.8 (faccessat2),
            // and cgroupfs holds no symlinks to guard against.
            rustix::fs::accessat(cgroup, name, access, AtFlags::EACCESS).is_ok()
        };
        let xattr_set = |name: &str| matches!(cgroup.xattr(name), Ok(Some(v)) if v.trim() == "1");
        Ok(Delegation {
            owner_uid: cgroup.owner_uid()?,
            euid: rustix::process::geteuid().as_raw(),
            dir_writable: can(".", Access::WRITE_OK | Access::EXEC_OK),
            procs_writable: can(files::PROCS, Access::WRITE_OK),
            subtree_control_writable: can(files::SUBTREE_CONTROL, Access::WRITE_OK),
            delegate_xattr: xattr_set("trusted.delegate") || xattr_set("user.delegate"),
        })
    }

    /// Whether we can manage sub-cgroups here: create them, move processes,
    /// enable controllers.
    pub fn writable(&self) -> bool {
        self.dir_writable && self.procs_writable && self.subtree_control_writable
    }

    /// Whether the cgroup was handed to us: systemd's delegate mark, or owned by
    /// our (non-root) uid and writable.
    pub fn delegated(&self) -> bool {
        self.writable() && (self.delegate_xattr || (self.euid != 0 && self.owner_uid == self.euid))
    }
}

/// Kernel features procscope uses, as seen from files and version numbers.
/// `procscope doctor` verifies the spawn and kill paths by exercising them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// Kernel release, e.g. `6.1.0-18-amd64`.
    pub kernel: String,
    /// `pidfd_open` works (5.3).
    pub pidfd: bool,
    /// `clone3` with `CLONE_INTO_CGROUP` is expected to work (5.7).
    pub clone_into_cgroup: bool,
    /// `cgroup.kill` exists (5.14).
    pub cgroup_kill: bool,
    /// `cgroup.freeze` exists (5.2).
    pub cgroup_freeze: bool,
}

impl Features {
    /// Probes the running kernel; `probe` is a non-root cgroup to look for
    /// `cgroup.kill` and `cgroup.freeze` in (the root cgroup has neither).
    pub fn detect(probe: &Cgroup) -> Features {
        let uname = rustix::system::uname();
        let kernel = uname.release().to_string_lossy().into_owned();
        let pidfd = crate::pidfd::PidFd::this_process().is_ok();
        Features {
            clone_into_cgroup: kernel_at_least(&kernel, 5, 7),
            kernel,
            pidfd,
            cgroup_kill: probe.has_file(files::KILL),
            cgroup_freeze: probe.has_file(files::FREEZE),
        }
    }
}

/// Whether a kernel release string (`6.1.0-18-amd64`) is at least `major.minor`.
pub(crate) fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let maj: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let min: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (maj, min) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine: hybrid, cgroup2 at /sys/fs/cgroup/unified.
    const HYBRID: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A Debian 12 host booted with a pure cgroup2 hierarchy (systemd).
    const PURE: &str = "\
24 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
25 24 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
28 25 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// A container with a cgroup namespace: the mount shows the container's
    /// subtree as its root.
    const CONTAINER_NS: &str = "\
601 600 0:52 / / rw,relatime master:300 - overlay overlay rw,lowerdir=/var/lib/docker/l/A,upperdir=/var/lib/docker/u,workdir=/var/lib/docker/w
610 601 0:57 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
611 610 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup ro,nsdelegate
";

    /// A container without a cgroup namespace: the host's subtree bind-mounted.
    const CONTAINER_BIND: &str = "\
701 700 0:60 / / rw - overlay overlay rw
711 701 0:28 /system.slice/docker-abc.scope /sys/fs/cgroup rw,nosuid - cgroup2 cgroup rw
";

    #[test]
    fn hybrid_host() {
        let h = Hierarchy::from_texts(HYBRID, "4:memory:/x\n1:cpu:/\n0::/\n", Path::new("mi")).unwrap();
        assert_eq!(h.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert!(h.hybrid);
        assert_eq!(h.own_cgroup, "/");
        assert_eq!(h.own_dir.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn pure_v2_in_a_delegated_unit() {
        let h = Hierarchy::from_texts(PURE, "0::/system.slice/gw.service/supervisor\n", Path::new("mi")).unwrap();
        assert_eq!(h.mount_point, Path::new("/sys/fs/cgroup"));
        assert!(!h.hybrid);
        assert_eq!(h.own_dir.as_deref(), Some(Path::new("/sys/fs/cgroup/system.slice/gw.service/supervisor")));
    }

    #[test]
    fn nested_containers() {
        let h = Hierarchy::from_texts(CONTAINER_NS, "0::/\n", Path::new("mi")).unwrap();
        assert_eq!(h.own_dir.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        let h =
            Hierarchy::from_texts(CONTAINER_BIND, "0::/system.slice/docker-abc.scope/app\n", Path::new("mi")).unwrap();
        assert_eq!(h.own_dir.as_deref(), Some(Path::new("/sys/fs/cgroup/app")));
        // Our cgroup outside the bind-mounted subtree: not reachable.
        let h = Hierarchy::from_texts(CONTAINER_BIND, "0::/other.slice\n", Path::new("mi")).unwrap();
        assert_eq!(h.own_dir, None);
        // A prefix that is not a path component boundary does not match.
        let h = Hierarchy::from_texts(CONTAINER_BIND, "0::/system.slice/docker-abc.scopeX\n", Path::new("mi")).unwrap();
        assert_eq!(h.own_dir, None);
    }

    #[test]
    fn no_cgroup2() {
        let only_v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let err = Hierarchy::from_texts(only_v1, "1:cpu:/\n", Path::new("/fake/mountinfo")).unwrap_err();
        assert!(matches!(err, Error::NoCgroup2 { .. }), "{err}");
        assert!(err.to_string().contains("/fake/mountinfo"), "{err}");
    }

    #[test]
    fn escapes_and_garbage() {
        let text = "41 31 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n\
                    garbage\n\
                    1 2 3\n\
                    x y 0:1 / /a rw - ext4 /dev/x rw\n\
                    5 6 0:1 relative /a rw - ext4 /dev/x rw\n\
                    7 8 0:1 / /a rw - \n\
                    \n\
                    9 10 0:1 / /a\\ rw - tmpfs t rw\n\
                    11 12 0:1 / /b rw - cgroup2 c\\134x rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3, "{m:#?}");
        assert_eq!(m[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[1].mount_point, Path::new("/a\\"));
        assert_eq!(m[2].source, "c\\x");
        assert!(parse_mountinfo("\u{0}\u{ffff} - - -").is_empty());
    }

    #[test]
    fn optional_fields_in_mountinfo() {
        let text = "28 25 0:25 / /sys/fs/cgroup rw shared:4 master:1 propagate_from:2 - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].fs_type, "cgroup2");
    }

    #[test]
    fn proc_cgroup_samples() {
        let p = parse_proc_cgroup("12:pids:/user.slice\n1:name=systemd:/init.scope\n0::/init.scope\n");
        assert_eq!(p.unified.as_deref(), Some("/init.scope"));
        assert_eq!(p.v1.len(), 2);
        let p = parse_proc_cgroup("0::/a:b/c\n");
        assert_eq!(p.unified.as_deref(), Some("/a:b/c"));
        let p = parse_proc_cgroup("garbage\n0:x\n::/\nx::/\n0::relative\n");
        assert_eq!(p, ProcCgroup::default());
    }

    #[test]
    fn kernel_versions() {
        assert!(kernel_at_least("6.18.44-fc-v595", 5, 14));
        assert!(kernel_at_least("5.14.0", 5, 14));
        assert!(!kernel_at_least("5.10.0-28-amd64", 5, 14));
        assert!(!kernel_at_least("garbage", 5, 7));
    }
}
