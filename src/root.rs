//! [`Root`]: the cgroup under which procscope creates everything.
//!
//! ```text
//! <root>                              delegated to us, or <cgroup2 mount>/procscope as root
//! ├── supervisor/                     the gateway itself, when <root> is its own cgroup
//! └── i-<pidns>-<pid>-<starttime>/    one per supervisor instance
//!     └── s-<session-id>/             one per session
//! ```

use std::path::{Path, PathBuf};

use crate::cgroup::hierarchy::{Delegation, Hierarchy};
use crate::cgroup::{Cgroup, files};
use crate::error::{Error, Result};

/// Name of the cgroup the gateway moves itself into when its own cgroup is the root.
pub const SUPERVISOR_CGROUP: &str = "supervisor";
/// Name of the root procscope creates under the cgroup2 mount when running as root.
pub const DEFAULT_ROOT_NAME: &str = "procscope";
/// Metadata key marking a directory as made by procscope (value: `root`,
/// `instance`, `session`, `exec`); see [`Cgroup::meta`].
pub(crate) const XATTR_KIND: &str = "kind";

/// How the root was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootKind {
    /// Given explicitly.
    Explicit,
    /// The caller's own cgroup, delegated to it (systemd `Delegate=yes`).
    Delegated,
    /// `<cgroup2 mount>/procscope`, created by a root caller.
    Owned,
}

impl RootKind {
    /// The name used by `procscope doctor` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Explicit => "explicit",
            RootKind::Delegated => "delegated",
            RootKind::Owned => "owned",
        }
    }
}

/// The root cgroup of procscope's tree.
#[derive(Debug)]
pub struct Root {
    cgroup: Cgroup,
    kind: RootKind,
}

impl Root {
    /// Uses `path` as the root. It must be a cgroup2 directory this process can
    /// manage, and must not hold the calling process (except in its
    /// `supervisor/` child). A calling process found in one of the root's
    /// sessions (a child pulled it, or its parent, in) is moved back out
    /// first, with its ancestors.
    ///
    /// # Errors
    /// [`Error::NotCgroup2`], [`Error::NotDelegated`] ([`Error::CgroupReadOnly`]
    /// on a read-only mount), [`Error::ContainsSelf`].
    pub fn open(path: impl AsRef<Path>) -> Result<Root> {
        let path = path.as_ref();
        let cgroup = Cgroup::open(path)?;
        let delegation = Delegation::of(&cgroup)?;
        if !delegation.writable() {
            if read_only(path) {
                return Err(Error::CgroupReadOnly { mount: path.to_owned() });
            }
            return Err(Error::NotDelegated { path: path.to_owned(), reason: not_writable_reason(&delegation) });
        }
        let mut h = Hierarchy::discover()?;
        // Inside one of the root's instances, this process (or an ancestor)
        // was pulled into a session by a child: moved back out first.
        if let Some(instance) = h.own_dir.as_deref().and_then(|own| own.strip_prefix(path).ok()?.components().next())
            && instance.as_os_str().to_string_lossy().starts_with("i-")
            && let Ok(instance) = cgroup.open_child(&instance.as_os_str().to_string_lossy())
        {
            crate::protect::evacuate(&instance)?;
            h = Hierarchy::discover()?;
        }
        if let Some(own) = &h.own_dir {
            let inside = own.starts_with(path) && *own != path.join(SUPERVISOR_CGROUP);
            if inside {
                return Err(Error::ContainsSelf { op: "use as a procscope root", path: path.to_owned() });
            }
        }
        Ok(Root { cgroup, kind: RootKind::Explicit })
    }

    /// Finds the root and prepares it, as a long-running supervisor does:
    ///
    /// 1. our own cgroup is delegated to us → it is the root; we move ourselves
    ///    into its `supervisor/` child (a cgroup that enables controllers for its
    ///    children may not hold processes);
    /// 2. we already sit in `supervisor/` of a delegated cgroup → that cgroup;
    /// 3. we are root → `<cgroup2 mount>/procscope`, created if missing.
    ///
    /// # Errors
    /// [`Error::NoCgroup2`]; [`Error::CgroupReadOnly`] where cgroup2 is
    /// mounted read-only (a default container); [`Error::NotDelegated`] with
    /// how to get a delegated cgroup when none of the above applies.
    pub fn discover() -> Result<Root> {
        Root::find(true)
    }

    /// Like [`discover`](Self::discover) but without moving the calling process
    /// or creating anything that is missing (for tools that only look, like
    /// `procscope ps`).
    pub fn locate() -> Result<Root> {
        Root::find(false)
    }

    fn find(prepare: bool) -> Result<Root> {
        let h = Hierarchy::discover()?;
        // A default container: said as such, before any write fails with EROFS.
        if prepare && read_only(&h.mount_point) {
            return Err(Error::CgroupReadOnly { mount: h.mount_point });
        }
        if let Some(own_dir) = h.own_dir.as_deref().filter(|d| *d != h.mount_point) {
            let own = Cgroup::open(own_dir)?;
            if own.name() == SUPERVISOR_CGROUP
                && let Some(parent) = own_dir.parent()
            {
                let parent = Cgroup::open(parent)?;
                if Delegation::of(&parent)?.delegated() {
                    return Ok(Root { cgroup: parent, kind: RootKind::Delegated });
                }
            }
            if Delegation::of(&own)?.delegated() {
                if prepare {
                    let sup = match own.open_child(SUPERVISOR_CGROUP) {
                        Ok(c) => c,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => own.create_child(SUPERVISOR_CGROUP)?,
                        Err(e) => return Err(e),
                    };
                    sup.write(files::PROCS, &rustix::process::getpid().as_raw_nonzero().to_string())?;
                    tracing::info!(root = %own_dir.display(), "moved this process into supervisor/ of its delegated cgroup");
                }
                return Ok(Root { cgroup: own, kind: RootKind::Delegated });
            }
        }
        if rustix::process::geteuid().is_root() {
            let mount = h.open_mount()?;
            let root = match mount.open_child(DEFAULT_ROOT_NAME) {
                Ok(c) => c,
                Err(e) if prepare && e.raw_os_error() == Some(libc::ENOENT) => {
                    let c = mount.create_child(DEFAULT_ROOT_NAME)?;
                    c.set_meta(XATTR_KIND, "root")?;
                    c
                }
                Err(e) => return Err(e),
            };
            return Ok(Root { cgroup: root, kind: RootKind::Owned });
        }
        Err(Error::NotDelegated {
            path: h.own_dir.unwrap_or(h.mount_point),
            reason: format!("this process is not root and its cgroup {} is not delegated to it", h.own_cgroup),
        })
    }

    /// The root's cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        self.cgroup.path()
    }

    /// How the root was chosen.
    pub fn kind(&self) -> RootKind {
        self.kind
    }

    /// The default root path for `--root` help texts: what [`locate`](Self::locate)
    /// would use, if it can tell.
    pub fn default_path() -> Option<PathBuf> {
        Root::locate().ok().map(|r| r.path().to_owned())
    }
}

/// Whether the filesystem at `path` is mounted read-only (`ST_RDONLY`).
pub(crate) fn read_only(path: &Path) -> bool {
    rustix::fs::statvfs(path).is_ok_and(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

fn not_writable_reason(d: &Delegation) -> String {
    let mut missing = Vec::new();
    if !d.dir_writable {
        missing.push("the directory");
    }
    if !d.procs_writable {
        missing.push("cgroup.procs");
    }
    if !d.subtree_control_writable {
        missing.push("cgroup.subtree_control");
    }
    format!("this process (uid {}) cannot write {}", d.euid, missing.join(", "))
}
