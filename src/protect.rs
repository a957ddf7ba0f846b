//! Never itself: the processes no kill may reach.
//!
//! An unsealed child that can write `cgroup.procs` can pull any process of
//! its uid into its session: the gateway, the guardian, the shell that runs
//! `procscope end`. A `cgroup.kill` of that session would then kill them too.
//! Every path that signals or kills therefore first looks for the protected
//! processes in what it is about to kill, and moves each one it finds back to
//! where it came from:
//!
//! - this process and each of its ancestors;
//! - the processes registered with [`protect`]: a supervisor's guardian, and
//!   in the guardian the gateway it guards, with their ancestors.
//!
//! A protected process that cannot be moved out is an error
//! ([`Error::ContainsProtected`]), and the cgroup is not killed. Signals sent
//! through pidfds skip protected pids as well, which also covers the moment
//! between moving a process out and the kill.
//!
//! Where to: the cgroup this process was in when it started (recorded by
//! [`remember_home`]) if that is outside the cgroup being killed; else the
//! cgroup of the protected process's nearest ancestor that is outside it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::cgroup::Cgroup;
use crate::cgroup::hierarchy::{self, MountEntry};
use crate::error::{Error, Result};

/// Pids registered as protected (besides this process and its ancestors).
static EXTRA: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// This process's cgroup directory when it started containing others.
static HOME: OnceLock<Option<PathBuf>> = OnceLock::new();
/// The cgroup2 mount, read once.
static MOUNT: OnceLock<Option<MountEntry>> = OnceLock::new();

/// Protects `pid` (and its ancestors) from every kill of this process.
pub(crate) fn protect(pid: i32) {
    let mut extra = EXTRA.lock().unwrap_or_else(|e| e.into_inner());
    if pid > 0 && !extra.contains(&pid) {
        extra.push(pid);
    }
}

/// Records this process's current cgroup as the place protected processes
/// go back to (once; later calls keep the first).
pub(crate) fn remember_home() {
    HOME.get_or_init(|| dir_of(rustix::process::getpid().as_raw_nonzero().get()).ok().flatten());
}

/// This process, its ancestors, the registered pids and their ancestors.
pub(crate) fn protected() -> Vec<i32> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let extra = EXTRA.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut all = Vec::new();
    for start in std::iter::once(me).chain(extra) {
        let mut pid = start;
        // The chain ends at pid 1 (or 0 above it); bounded against loops.
        for _ in 0..4096 {
            if pid <= 0 || all.contains(&pid) {
                break;
            }
            all.push(pid);
            pid = crate::instance::stat_field(pid, 4).and_then(|p| p.parse().ok()).unwrap_or(0);
        }
    }
    all
}

/// Whether `pid` is protected (see [`protected`]).
pub(crate) fn is_protected(pid: i32, protected: &[i32]) -> bool {
    protected.contains(&pid)
}

/// Moves every protected process that is in `cg` or below out of it.
///
/// # Errors
/// [`Error::ContainsProtected`] for a protected process that could not be
/// moved (nowhere to go, or the move was refused).
pub(crate) fn evacuate(cg: &Cgroup) -> Result<()> {
    let protected = protected();
    for &pid in &protected {
        if !inside(pid, cg.path())? {
            continue;
        }
        let home = home_for(pid, cg.path());
        let moved = home.as_deref().ok_or_else(|| "no cgroup outside it to move it to".to_owned()).and_then(|home| {
            Cgroup::open(home).and_then(|h| h.write("cgroup.procs", &pid.to_string())).map_err(|e| e.to_string())
        });
        match moved {
            Ok(()) => tracing::warn!(pid, cgroup = %cg.path().display(), home = %home.unwrap_or_default().display(),
                "a protected process was inside a cgroup about to be killed; moved it out"),
            // Gone meanwhile: nothing to protect.
            Err(_) if !inside(pid, cg.path())? => {}
            Err(why) => return Err(Error::ContainsProtected { pid, path: cg.path().to_owned(), why }),
        }
    }
    Ok(())
}

/// Where `pid` goes back to: this process's home, else the cgroup of its
/// nearest ancestor outside `path`.
fn home_for(pid: i32, path: &Path) -> Option<PathBuf> {
    if let Some(Some(home)) = HOME.get()
        && !home.starts_with(path)
    {
        return Some(home.clone());
    }
    let mut p = pid;
    for _ in 0..4096 {
        p = crate::instance::stat_field(p, 4).and_then(|x| x.parse().ok()).filter(|x: &i32| *x > 0)?;
        if let Ok(Some(dir)) = dir_of(p)
            && !dir.starts_with(path)
        {
            return Some(dir);
        }
    }
    None
}

/// Whether `pid` is in the cgroup at `path` or below it. An error when that
/// cannot be told (no fd left to read `/proc`): nothing may be killed then.
fn inside(pid: i32, path: &Path) -> Result<bool> {
    Ok(dir_of(pid)?.is_some_and(|d| d.starts_with(path)))
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
    Ok(mount.as_ref().and_then(|m| hierarchy::cgroup_dir(m, &unified)))
}
