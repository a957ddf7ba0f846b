//! Never itself: the processes no kill may reach.
//!
//! An unsealed child that can write `cgroup.procs` can pull a process into
//! its session: the gateway, the guardian, the shell that runs `procscope
//! end`. A `cgroup.kill` of that session would then kill them too. Every path
//! that signals or kills therefore first looks for the protected processes
//! in what it is about to kill, and moves each one it finds back out:
//!
//! - this process, and each of its ancestors (not in the guardian, whose
//!   parent after it detached is whatever reaped it);
//! - the processes registered with [`protect`] (by pid *and* start time, so
//!   a recycled pid is never protected): a supervisor's guardian, and in the
//!   guardian the gateway it guards, with the gateway's ancestors.
//!
//! Membership is the kernel's: the `cgroup.procs` files of the cgroup about
//! to be killed, never a path compared with `/proc/PID/cgroup`. A protected
//! process found there goes back to the cgroup it was in when it was
//! registered (this process: when its first supervisor started), else to the
//! cgroup of its nearest ancestor outside. One that cannot be moved, or a
//! state that cannot be read (no fd left), is an error
//! ([`Error::ContainsProtected`], or the I/O error): nothing is killed then.
//! Signals sent through pidfds skip protected pids as well.
//!
//! What this cannot close: a child still running in the session can pull a
//! process in again between the move and the kill. Sealing (the default)
//! makes the cgroup filesystem read-only for children, which closes it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::cgroup::Cgroup;
use crate::cgroup::hierarchy::{self, MountEntry};
use crate::error::{Error, Result};

/// A registered process: pid, start time, and the cgroup it was in then.
struct Registered {
    pid: i32,
    start: u64,
    home: Option<PathBuf>,
}

/// Processes registered as protected (besides this process).
static EXTRA: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
/// This process's cgroup directory when it started containing others.
static HOME: OnceLock<Option<PathBuf>> = OnceLock::new();
/// Whether this process's ancestors are protected (not in the guardian).
static OWN_ANCESTORS: AtomicBool = AtomicBool::new(true);
/// The cgroup2 mount, read once.
static MOUNT: OnceLock<Option<MountEntry>> = OnceLock::new();

/// A protected process, and where it goes back to if it is found inside.
pub(crate) struct Protected {
    pub pid: i32,
    home: Option<PathBuf>,
}

/// Protects `pid` (and its ancestors) from every kill of this process, for
/// as long as that very process runs.
pub(crate) fn protect(pid: i32) {
    let Some(start) = crate::instance::start_time(pid) else { return };
    let home = dir_of(pid).ok().flatten();
    let mut extra = EXTRA.lock().unwrap_or_else(|e| e.into_inner());
    extra.retain(|r| crate::instance::start_time(r.pid) == Some(r.start));
    if !extra.iter().any(|r| r.pid == pid && r.start == start) {
        extra.push(Registered { pid, start, home });
    }
}

/// In the guardian: its own ancestors are not protected (after detaching,
/// its parent is whatever reaped it).
pub(crate) fn not_own_ancestors() {
    OWN_ANCESTORS.store(false, Ordering::Relaxed);
}

/// Records this process's current cgroup as the place it goes back to
/// (once; later calls keep the first).
pub(crate) fn remember_home() {
    HOME.get_or_init(|| dir_of(rustix::process::getpid().as_raw_nonzero().get()).ok().flatten());
}

/// This process, its ancestors, the registered processes that still run
/// and their ancestors.
///
/// # Errors
/// When `/proc` cannot be read for want of fds: an ancestor left out would
/// go unprotected.
pub(crate) fn protected() -> Result<Vec<Protected>> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let mut all: Vec<Protected> = vec![Protected { pid: me, home: HOME.get().cloned().flatten() }];
    if OWN_ANCESTORS.load(Ordering::Relaxed) {
        add_ancestors(me, &mut all)?;
    }
    let extra: Vec<(i32, u64, Option<PathBuf>)> =
        EXTRA.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|r| (r.pid, r.start, r.home.clone())).collect();
    for (pid, start, home) in extra {
        if crate::instance::start_time(pid) != Some(start) || all.iter().any(|p| p.pid == pid) {
            continue;
        }
        all.push(Protected { pid, home });
        add_ancestors(pid, &mut all)?;
    }
    Ok(all)
}

/// Adds the ancestors of `pid`, nearest first, up to pid 1.
fn add_ancestors(pid: i32, all: &mut Vec<Protected>) -> Result<()> {
    let mut p = pid;
    // Bounded against loops (a pid recycled while the chain is read).
    for _ in 0..4096 {
        p = match parent_of(p)? {
            Some(parent) if parent > 0 => parent,
            _ => break,
        };
        if all.iter().any(|x| x.pid == p) {
            break;
        }
        all.push(Protected { pid: p, home: None });
    }
    Ok(())
}

/// The parent of `pid`; `None` if it is gone.
fn parent_of(pid: i32) -> Result<Option<i32>> {
    crate::instance::try_stat_field(pid, 4)
        .map(|f| f.and_then(|p| p.parse().ok()))
        .map_err(|e| Error::io("read", format!("/proc/{pid}/stat"), e))
}

/// Whether `pid` is protected.
pub(crate) fn is_protected(pid: i32, protected: &[Protected]) -> bool {
    protected.iter().any(|p| p.pid == pid)
}

/// Moves every protected process that is in `cg` or below out of it.
///
/// # Errors
/// [`Error::ContainsProtected`] for a protected process that could not be
/// moved (nowhere to go, or the move was refused); an I/O error when the
/// members or the protected processes cannot be read.
pub(crate) fn evacuate(cg: &Cgroup) -> Result<()> {
    evacuate_among(cg, &protected()?)
}

/// [`evacuate`] with the protected processes already read.
pub(crate) fn evacuate_among(cg: &Cgroup, protected: &[Protected]) -> Result<()> {
    let members = members(cg)?;
    for p in protected.iter().filter(|p| members.contains(&p.pid)) {
        let home = p
            .home
            .clone()
            .filter(|h| !h.starts_with(cg.path()) && h.exists())
            .or_else(|| ancestor_home(p.pid, &members));
        let moved = home.as_deref().ok_or_else(|| "no cgroup outside it to move it to".to_owned()).and_then(|home| {
            Cgroup::open(home).and_then(|h| h.write("cgroup.procs", &p.pid.to_string())).map_err(|e| e.to_string())
        });
        match moved {
            Ok(()) => tracing::warn!(pid = p.pid, cgroup = %cg.path().display(),
                home = %home.unwrap_or_default().display(),
                "a protected process was inside a cgroup about to be killed; moved it out"),
            // Gone meanwhile: nothing to protect.
            Err(_) if !members_now(cg)?.contains(&p.pid) => {}
            Err(why) => return Err(Error::ContainsProtected { pid: p.pid, path: cg.path().to_owned(), why }),
        }
    }
    Ok(())
}

/// The pids in `cg` and below, as the kernel lists them.
fn members(cg: &Cgroup) -> Result<HashSet<i32>> {
    let mut all = HashSet::new();
    cg.visit_populated(|c| {
        all.extend(c.procs()?.iter().map(|&p| p as i32));
        Ok(())
    })?;
    Ok(all)
}

fn members_now(cg: &Cgroup) -> Result<HashSet<i32>> {
    match members(cg) {
        Err(e) if crate::cgroup::vanished(&e) => Ok(HashSet::new()),
        r => r,
    }
}

/// The cgroup of the nearest ancestor of `pid` that is not among `members`.
fn ancestor_home(pid: i32, members: &HashSet<i32>) -> Option<PathBuf> {
    let mut p = pid;
    for _ in 0..4096 {
        p = parent_of(p).ok()??;
        if p <= 0 {
            return None;
        }
        if !members.contains(&p)
            && let Ok(Some(dir)) = dir_of(p)
        {
            return Some(dir);
        }
    }
    None
}

/// The cgroup2 directory of `pid`; `None` if it is gone or the mount does
/// not show its cgroup.
fn dir_of(pid: i32) -> Result<Option<PathBuf>> {
    let file = format!("/proc/{pid}/cgroup");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => return Ok(None),
        Err(e) => return Err(Error::io("read", file, e)),
    };
    let Some(unified) = hierarchy::parse_proc_cgroup(&text).unified else { return Ok(None) };
    let mount = match MOUNT.get() {
        Some(m) => m,
        None => {
            // Cached only once read: a read that failed for want of an fd is
            // tried again next time.
            let mi = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
            MOUNT.get_or_init(|| hierarchy::find_cgroup2(&hierarchy::parse_mountinfo(&mi)).cloned())
        }
    };
    Ok(mount.as_ref().and_then(|m| hierarchy::cgroup_dir(m, &unified)).filter(|d: &PathBuf| d.is_absolute()))
}
