//! Sealing: whether a child is sealed, and what the parent prepares for it.
//!
//! A sealed child starts in a cgroup namespace rooted at its session cgroup and
//! in a mount namespace of its own in which every cgroup mount (v1 and v2) is
//! read-only. Even as uid 0 — which owns every cgroup file, capabilities or not
//! — it can then neither leave its session nor create cgroups, write any cgroup
//! interface file (its own session's limits, `cgroup.kill` and `cgroup.freeze`
//! included) or set xattrs on cgroup directories. Everything else it sees as
//! before: the same filesystem, mounts made later included (propagation is
//! kept). `/proc/self/cgroup` shows `0::/`: the namespace root.
//!
//! Where the cgroup2 mount has `nsdelegate` (systemd sets it), the cgroup
//! namespace is a delegation boundary of its own as well.
//!
//! # The guardian, out of reach
//! A sealed child also installs a seccomp filter (last of its sealing steps,
//! still with `CAP_SYS_ADMIN`) that refuses `fcntl(F_SETSIG)` with SIGKILL or
//! SIGSTOP. Without it, a uid-0 child could have the kernel send either to
//! the guardian: `F_SETOWN` names any process as an fd's owner, and the
//! SIGIO (or the `F_SETSIG` signal) sent when the fd becomes ready is
//! allowed when the process that set the owner had effective uid 0
//! (fs/fcntl.c `sigio_perm`), whatever the target's uids — the guardian's
//! own identity does not help there. Every other signal that path can carry
//! the guardian blocks. The filter checks the native ABI and the 32-bit
//! compat one (`fcntl`, `fcntl64`; x32 on x86_64); where procscope knows no
//! system call numbers (architectures other than x86_64 and aarch64), no
//! filter is installed. What a uid-0 child can still do to the guardian is
//! what any uid-0 process may do to one whose effective uid is 0: lower its
//! priority or scheduling class, which slows the cleanup but cannot stop it.
//!
//! # Defaults: fail closed
//! A process with `CAP_SYS_ADMIN` always seals: [`Sealing::Auto`] fails with
//! [`Error::SealingUnavailable`] where it cannot (a kernel without cgroup
//! namespaces), like [`Sealing::Required`]. Without it, `Auto` seals through
//! a user namespace of each child's own where unprivileged user namespaces
//! are allowed, and only otherwise runs children unsealed (one warning, and
//! `procscope doctor`).
//!
//! The parent prepares one sealed mount namespace: a copy of its own in which
//! every cgroup mount is read-only and receives no mounts from its peers. Each
//! child joins it (`setns`) as the first of its steps, while it still holds
//! `CAP_SYS_ADMIN`, takes a cgroup namespace of its own and returns to the
//! parent's working directory. No mount table is copied per child and none is
//! torn down when a child exits (a teardown waits for an RCU grace period,
//! which with many exits at once is slow). The namespace is built again
//! whenever `/proc/self/mountinfo` polls `POLLPRI` (the mount table changed),
//! so a child sealed later sees a hierarchy mounted meanwhile read-only, and
//! every other mount as the parent sees it then. A parent whose root is not
//! its namespace's root (a chroot) or whose working directory is gone has
//! each child copy the namespace and seal the copy itself instead.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};

use crate::cgroup::hierarchy::{MountEntry, parse_mountinfo};
use crate::error::{Error, Result};
use crate::sys::seal::{ChildSeal, SealMount};

/// Whether children are sealed into their session.
///
/// A sealed child starts in a cgroup namespace rooted at its session and sees
/// every cgroup mount read-only, so even as uid 0 it cannot leave its session,
/// create cgroups, write any cgroup file or forge procscope's state (see the
/// crate's README, "Sealing").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Sealing {
    /// Seal wherever this process can, and then fail closed: a child whose
    /// sealing fails is not started. A process with `CAP_SYS_ADMIN` (a root
    /// gateway) always seals, and where it cannot (a kernel without cgroup
    /// namespaces) the spawn fails with [`Error::SealingUnavailable`] instead
    /// of running the child unsealed. A process without it (a non-root
    /// gateway in a delegated subtree) seals where unprivileged user
    /// namespaces are allowed: each child then takes a user namespace of its
    /// own, mapping its uid and gid onto themselves, to make the others.
    /// Only where it cannot do that either do children run unsealed, and one
    /// `tracing` warning and `procscope doctor` say so.
    #[default]
    Auto,
    /// Always seal; without the privilege to, the spawn fails with
    /// [`Error::SealingUnavailable`].
    Required,
    /// Never seal. This gives up containment against hostile children: a child
    /// running as uid 0 can then move itself out of its session, write any
    /// cgroup file and forge `user.*` xattrs.
    ///
    /// One part of sealing is inherited all the same: a gateway thread that
    /// has spawned a sealed child (with `CAP_SYS_ADMIN`) carries the seccomp
    /// filter that refuses `fcntl(F_SETSIG)` with SIGKILL or SIGSTOP, and so
    /// does everything it starts afterwards, unsealed children included.
    Off,
}

impl Sealing {
    /// The name used by the CLI and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Sealing::Auto => "auto",
            Sealing::Required => "required",
            Sealing::Off => "off",
        }
    }
}

/// What [`capability`] found: can this process seal children, and how?
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Capability {
    /// With `CAP_SYS_ADMIN`: namespaces made by the child (a root gateway).
    Admin,
    /// Without it, through a user namespace of the child's own (a non-root
    /// gateway where unprivileged user namespaces are allowed).
    UserNamespace,
    /// It cannot: what is missing, and how to get it. `admin`: the process
    /// holds `CAP_SYS_ADMIN` (the kernel is what is missing), so it must not
    /// run children unsealed unless told to.
    No { missing: String, fix: &'static str, admin: bool },
}

thread_local! {
    /// Set by [`testing::force_no_cgroup_namespace`](crate::testing): this
    /// thread behaves as on a kernel without cgroup namespaces. Per thread,
    /// so that tests running beside it in one process (`cargo test`) are
    /// not touched.
    pub(crate) static FORCE_NO_CGROUP_NAMESPACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this process can seal children now: a kernel with cgroup
/// namespaces, and `CAP_SYS_ADMIN` in the calling thread's effective set
/// (checked at every call: a gateway may drop it) or else unprivileged user
/// namespaces (probed once).
pub(crate) fn capability() -> Capability {
    let admin = crate::sys::has_sys_admin();
    static CGROUP_NS: OnceLock<bool> = OnceLock::new();
    let cgroup_ns = *CGROUP_NS.get_or_init(|| std::path::Path::new("/proc/self/ns/cgroup").exists());
    if !cgroup_ns || FORCE_NO_CGROUP_NAMESPACE.get() {
        return Capability::No {
            missing: "cgroup namespaces (/proc/self/ns/cgroup is missing)".into(),
            fix: "use a kernel built with CONFIG_CGROUPS and namespaces (Linux 4.6 or later), \
                  or turn sealing off explicitly (Sealing::Off, `procscope exec --no-seal`), which gives up \
                  containment against hostile children",
            admin,
        };
    }
    if admin {
        return Capability::Admin;
    }
    static USERNS: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    match USERNS.get_or_init(probe_user_namespace) {
        Ok(()) => Capability::UserNamespace,
        Err(why) => Capability::No {
            missing: format!("CAP_SYS_ADMIN (and no user namespace can stand in for it: {why})"),
            fix: "run the gateway as root (or with CAP_SYS_ADMIN), or allow unprivileged user namespaces \
                  (user.max_user_namespaces > 0; kernel.unprivileged_userns_clone=1 on Debian's older \
                  kernels; kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu), or turn sealing off \
                  explicitly (Sealing::Off, `procscope exec --no-seal`), which gives up containment against \
                  hostile children",
            admin: false,
        },
    }
}

/// The uid and gid maps a child's own user namespace gets: this process's
/// effective ids onto themselves.
fn id_maps() -> (CString, CString) {
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    let map = |id: u32| CString::new(format!("{id} {id} 1\n")).expect("no NUL in digits");
    (map(uid), map(gid))
}

/// Whether a child of this process can take a user namespace of its own and
/// map its ids in it: one child that goes as far as that and then fails its
/// `execve` on purpose (no program is run).
fn probe_user_namespace() -> std::result::Result<(), String> {
    use crate::sys::spawn::{ChildPlan, Lifetime, Placement, SpawnFailure};
    let null = crate::command::dev_null().map_err(|e| e.to_string())?;
    let (uid_map, gid_map) = id_maps();
    let nothing = [std::ptr::null()];
    let plan = ChildPlan {
        program: c"",
        argv: &nothing,
        envp: &nothing,
        stdio: [null, null, null],
        cwd: None,
        uid: None,
        gid: None,
        setsid: false,
        process_group: None,
        last_cap: 0,
        keep_caps: true,
        seal: Some(ChildSeal::UserNs { mounts: &[], uid_map: &uid_map, gid_map: &gid_map }),
        signal_filter_inherited: false,
    };
    match crate::sys::spawn::spawn(&plan, Placement::Inherit, Lifetime::Own) {
        Err(SpawnFailure::Child { stage: crate::ChildStage::Exec, .. }) => Ok(()),
        Err(SpawnFailure::Child { errno, .. }) => Err(match errno.raw_os_error() {
            Some(libc::ENOSPC) => "user.max_user_namespaces is 0 or reached".into(),
            Some(libc::EPERM | libc::EACCES) => {
                format!("a user namespace is refused ({errno}): a sysctl, AppArmor or seccomp forbids it")
            }
            _ => format!("creating one failed: {errno}"),
        }),
        Err(SpawnFailure::Clone(e)) => Err(format!("clone: {e}")),
        Ok(_) => Err("the probe ran a program".into()),
    }
}

/// Decides for one spawn: `Some(plan)` to seal with, `None` for unsealed.
///
/// [`Sealing::Off`] never seals. [`Sealing::Required`] seals or fails.
/// [`Sealing::Auto`] seals wherever this process can; where it cannot, it
/// fails if the process holds `CAP_SYS_ADMIN` (then the kernel lacks cgroup
/// namespaces: a privileged gateway always seals, or refuses), and runs the
/// child unsealed, with one `tracing` warning, only for a process without
/// it and without unprivileged user namespaces.
///
/// # Errors
/// [`Error::SealingUnavailable`], naming what is missing, when sealing is
/// required (explicitly, or by [`Sealing::Auto`] for a process with
/// `CAP_SYS_ADMIN`) but cannot be done; [`Error::Io`] when the mount table
/// cannot be read.
pub(crate) fn plan(sealing: Sealing) -> Result<Option<SealPlan>> {
    plan_with(sealing, true)
}

/// [`plan`] for a process that seals itself and becomes the command: no
/// prepared namespace (joining one needs an fs_struct of its own, which a
/// thread of a multi-threaded process does not have); it copies its own.
pub(crate) fn plan_in_place(sealing: Sealing) -> Result<Option<SealPlan>> {
    plan_with(sealing, false)
}

fn plan_with(sealing: Sealing, template: bool) -> Result<Option<SealPlan>> {
    match (sealing, capability()) {
        (Sealing::Off, _) => Ok(None),
        (_, Capability::Admin) if !template => {
            let (mounts, _) = current(false)?;
            Ok(Some(SealPlan { mounts, template: None, user_ns: None }))
        }
        (_, Capability::Admin) => {
            let (mounts, template) = current(true)?;
            // The template's root is this process's root; the working
            // directory is re-entered by path (`setns` resets it), so a
            // directory without a path (removed) means copying instead.
            let cwd = std::env::current_dir().ok().and_then(|d| CString::new(d.into_os_string().into_vec()).ok());
            Ok(Some(SealPlan { mounts, template: template.zip(cwd), user_ns: None }))
        }
        (_, Capability::UserNamespace) => {
            let (mounts, _) = current(false)?;
            Ok(Some(SealPlan { mounts, template: None, user_ns: Some(id_maps()) }))
        }
        (Sealing::Required, Capability::No { missing, fix, .. })
        | (Sealing::Auto, Capability::No { missing, fix, admin: true }) => {
            Err(Error::SealingUnavailable { missing, fix })
        }
        (Sealing::Auto, Capability::No { missing, admin: false, .. }) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    %missing,
                    "children run unsealed: a child running as this user can leave its session \
                     and write cgroup files; `procscope doctor` says how to seal them"
                );
            });
            Ok(None)
        }
    }
}

/// What one sealed spawn uses.
pub(crate) struct SealPlan {
    mounts: Arc<Vec<SealMount>>,
    /// The prepared namespace and this process's working directory.
    template: Option<(Arc<OwnedFd>, CString)>,
    /// The uid and gid maps of the child's own user namespace.
    user_ns: Option<(CString, CString)>,
}

impl SealPlan {
    /// The child's sealing step.
    pub(crate) fn child(&self) -> ChildSeal<'_> {
        match (&self.template, &self.user_ns) {
            (_, Some((uid_map, gid_map))) => ChildSeal::UserNs { mounts: &self.mounts, uid_map, gid_map },
            (Some((ns, cwd)), None) => ChildSeal::Template { ns: ns.as_fd(), cwd },
            (None, None) => ChildSeal::Copy(&self.mounts),
        }
    }
}

/// The watched mount table: an open `/proc/self/mountinfo` (it polls
/// `POLLPRI` once the table changes), the cgroup mounts read from it and the
/// sealed mount namespace built from them.
struct Table {
    watch: OwnedFd,
    mounts: Arc<Vec<SealMount>>,
    template: Option<Arc<OwnedFd>>,
    /// Whether building `template` was tried (it is `None` for a chrooted
    /// process, and for one that cannot build it).
    template_tried: bool,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// The cgroup mounts and the sealed namespace prepared from them.
type Prepared = (Arc<Vec<SealMount>>, Option<Arc<OwnedFd>>);

/// The cgroup mounts (v1 and v2) of this process's mount namespace and the
/// sealed namespace built from them, both made again when the mount table
/// changed since the last call: children sealed later see a hierarchy mounted
/// meanwhile read-only too, and every other mount as it is now.
///
/// # Errors
/// [`Error::Io`] when `/proc/self/mountinfo` cannot be read.
fn current(with_template: bool) -> Result<Prepared> {
    let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = table.as_ref() {
        let mut fds = [PollFd::new(&t.watch, PollFlags::PRI)];
        let changed = match rustix::event::poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })) {
            Ok(_) => fds[0].revents().intersects(PollFlags::PRI | PollFlags::ERR),
            Err(_) => true,
        };
        if !changed && (t.template_tried || !with_template) {
            return Ok((Arc::clone(&t.mounts), t.template.clone()));
        }
    }
    const PATH: &str = "/proc/self/mountinfo";
    let fd = rustix::fs::open(PATH, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io("open", PATH, e))?;
    let mut file = std::fs::File::from(fd);
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| Error::io("read", PATH, e))?;
    let mounts = Arc::new(seal_mounts(&parse_mountinfo(&text)));
    // A template that cannot be built is not fatal: each child then copies
    // the namespace itself, and fails closed if that fails too.
    let template = match with_template.then(|| crate::sys::seal::build_template(&mounts)).transpose() {
        Ok(ns) => ns.flatten().map(Arc::new),
        Err(e) => {
            tracing::debug!(error = %e, "no shared sealed mount namespace; each sealed child copies its own");
            None
        }
    };
    *table = Some(Table {
        watch: OwnedFd::from(file),
        mounts: Arc::clone(&mounts),
        template: template.clone(),
        template_tried: with_template,
    });
    Ok((mounts, template))
}

/// Opens the mount-table watch and builds the sealed namespace now, so that a
/// test counting fds can take its baseline after them.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub(crate) fn init() {
    match capability() {
        Capability::Admin => drop(current(true)),
        Capability::UserNamespace => drop(current(false)),
        Capability::No { .. } => {}
    }
}

/// Every `cgroup` and `cgroup2` mount point, once each, with the flags a
/// pre-5.12 remount must keep; first the tmpfs that holds them on hybrid and v1
/// hosts (`/sys/fs/cgroup`), as systemd's `ProtectControlGroups=` does.
fn seal_mounts(entries: &[MountEntry]) -> Vec<SealMount> {
    let is_cgroup = |m: &&MountEntry| m.fs_type == "cgroup" || m.fs_type == "cgroup2";
    let holders = entries.iter().filter(|h| {
        h.fs_type == "tmpfs"
            && h.mount_point != std::path::Path::new("/")
            && entries.iter().filter(is_cgroup).any(|m| m.parent == h.id)
    });
    let mut out: Vec<SealMount> = Vec::new();
    for m in holders.chain(entries.iter().filter(is_cgroup)) {
        let Ok(path) = std::ffi::CString::new(m.mount_point.as_os_str().as_bytes()) else { continue };
        if out.iter().any(|o| o.path == path) {
            continue;
        }
        let covered = out.iter().any(|o| m.mount_point.starts_with(std::ffi::OsStr::from_bytes(o.path.as_bytes())));
        out.push(SealMount { path, keep_flags: keep_flags(&m.options), covered });
    }
    out
}

/// The per-mount flags in mountinfo's options field that `MS_REMOUNT` would
/// otherwise reset.
fn keep_flags(options: &str) -> u64 {
    options
        .split(',')
        .map(|o| match o {
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            _ => 0,
        })
        .fold(0, |a, f| a | f)
}

/// What protects a sealed child on this host, for `procscope doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealStatus {
    /// Whether children of this process are sealed by default.
    pub sealed_by_default: bool,
    /// If not, what is missing and how to get it.
    pub missing: Option<(String, &'static str)>,
    /// The cgroup mounts a sealed child sees read-only.
    pub read_only_mounts: Vec<String>,
    /// Whether the cgroup2 mount has `nsdelegate` (the cgroup namespace is then
    /// a delegation boundary as well).
    pub nsdelegate: bool,
    /// `mount_setattr` (Linux 5.12) or the per-mount remount before it.
    pub read_only_by: &'static str,
    /// Whether each child takes a user namespace of its own to seal itself
    /// (this process lacks `CAP_SYS_ADMIN`; unprivileged user namespaces are
    /// allowed).
    pub user_namespace: bool,
    /// Whether [`Sealing::Auto`] refuses to start children: this process
    /// holds `CAP_SYS_ADMIN` but cannot seal (see `missing`), and a
    /// privileged gateway never runs children unsealed unless told to.
    pub refused_by_default: bool,
}

/// What sealing would do for a child of this process now.
pub fn status() -> SealStatus {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let entries = parse_mountinfo(&text);
    let nsdelegate =
        entries.iter().any(|m| m.fs_type == "cgroup2" && m.super_options.split(',').any(|o| o == "nsdelegate"));
    let read_only_mounts =
        seal_mounts(&entries).iter().map(|m| String::from_utf8_lossy(m.path.as_bytes()).into_owned()).collect();
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let read_only_by =
        if crate::cgroup::hierarchy::kernel_at_least(&release, 5, 12) { "mount_setattr" } else { "remount" };
    let (sealed_by_default, missing, user_namespace, refused_by_default) = match capability() {
        Capability::Admin => (true, None, false, false),
        Capability::UserNamespace => (true, None, true, false),
        Capability::No { missing, fix, admin } => (false, Some((missing, fix)), false, admin),
    };
    SealStatus {
        sealed_by_default,
        missing,
        read_only_mounts,
        nsdelegate,
        read_only_by,
        user_namespace,
        refused_by_default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_cgroup_mount_once_with_its_flags() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:5 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
42 27 0:38 / /srv/with\\040space rw - cgroup2 cgroup2 rw
43 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let m = seal_mounts(&parse_mountinfo(text));
        let paths: Vec<_> = m.iter().map(|m| m.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified", "/srv/with space"]);
        assert_eq!(m[1].keep_flags, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME);
        assert_eq!(m[3].keep_flags, 0);
        let covered: Vec<bool> = m.iter().map(|m| m.covered).collect();
        assert_eq!(covered, [false, true, true, false], "the recursive setattr of /sys/fs/cgroup covers both");
    }
}
