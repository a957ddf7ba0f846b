//! Counters kept in the tree, where any process (the `procscope metrics`
//! command) reads them and children cannot forge them.
//!
//! - Each instance keeps its own counters in its `counters` metadata
//!   ([`Cgroup::meta`]). A supervisor writes its in-memory [`Counters`]
//!   there; for an instance of `procscope exec` commands, `exec` and
//!   `procscope end` add what they do.
//! - The root keeps the totals of everything counted under it in its `totals`
//!   metadata: every instance's counts as they are persisted (so an instance
//!   that is gone, however it went, has its counts there already), and what
//!   ending sessions from outside a supervisor does (the recovery at start,
//!   `procscope sweep`, `procscope end`), and what the guardians end, which
//!   they spool because they cannot write the totals themselves (see
//!   `crate::spool`).
//!
//! Both are `key=value` pairs separated by commas (`sessions_opened=8,...`),
//! zeros left out. On a root-owned tree they are `trusted.procscope.*`
//! xattrs, which only a process with `CAP_SYS_ADMIN` can write: no child,
//! sealed or not, and not the guardian (it keeps `CAP_KILL` only), can forge
//! or reset them. On a delegated tree they are `user.procscope.*`, which any
//! process of the delegated user can write.
//!
//! # The read-modify-write of the totals
//! Adding to the totals reads them, adds and writes them back, holding an
//! exclusive `flock` on the root directory (an fd of its own per update, so
//! that two updates of one process exclude each other too). Every updater
//! takes the lock, so no update is lost between them. Any process that can
//! open the root directory can take that lock, a child too (the cgroup mount
//! is read-only for a sealed child, not unreadable): the lock is therefore
//! waited for a bounded time only ([`LOCK_WAIT`]), and an update that does
//! not get it is not written. A supervisor keeps what it could not add and
//! adds it at its next persist point; `exec` and the command line tools
//! drop it, with a debug or warning message. A lock holder thus delays or
//! loses counts; it can never make them wrong by more than what it held up.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::supervisor::Counters;
use crate::sweep::SweepReport;

/// Metadata on an instance: its counters.
pub(crate) const XATTR_COUNTERS: &str = "counters";
/// Metadata on the root: the totals under it.
pub(crate) const XATTR_TOTALS: &str = "totals";

/// How long an update waits for the root's lock.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(1);
/// How long `procscope exec` waits for it: the command is about to start.
pub(crate) const EXEC_LOCK_WAIT: Duration = Duration::from_millis(200);
/// Between two attempts to take the lock.
const LOCK_RETRY: Duration = Duration::from_millis(2);

impl Counters {
    /// Every counter with its key, in the order of the fields.
    pub(crate) fn entries(&self) -> [(&'static str, u64); 16] {
        [
            ("sessions_opened", self.sessions_opened),
            ("sessions_closed", self.sessions_closed),
            ("sessions_finished", self.sessions_finished),
            ("sessions_abandoned", self.sessions_abandoned),
            ("sessions_orphaned", self.sessions_orphaned),
            ("sessions_removed", self.sessions_removed),
            ("sessions_swept", self.sessions_swept),
            ("processes_spawned", self.processes_spawned),
            ("processes_terminated", self.processes_terminated),
            ("processes_killed", self.processes_killed),
            ("oom_kills", self.oom_kills),
            ("pids_max_hits", self.pids_max_hits),
            ("sweeps", self.sweeps),
            ("leaks_prevented", self.leaks_prevented),
            ("leaks_prevented_finished", self.leaks_prevented_finished),
            ("errors", self.errors),
        ]
    }

    fn entry_mut(&mut self, key: &str) -> Option<&mut u64> {
        Some(match key {
            "sessions_opened" => &mut self.sessions_opened,
            "sessions_closed" => &mut self.sessions_closed,
            "sessions_finished" => &mut self.sessions_finished,
            "sessions_abandoned" => &mut self.sessions_abandoned,
            "sessions_orphaned" => &mut self.sessions_orphaned,
            "sessions_removed" => &mut self.sessions_removed,
            "sessions_swept" => &mut self.sessions_swept,
            "processes_spawned" => &mut self.processes_spawned,
            "processes_terminated" => &mut self.processes_terminated,
            "processes_killed" => &mut self.processes_killed,
            "oom_kills" => &mut self.oom_kills,
            "pids_max_hits" => &mut self.pids_max_hits,
            "sweeps" => &mut self.sweeps,
            "leaks_prevented" => &mut self.leaks_prevented,
            "leaks_prevented_finished" => &mut self.leaks_prevented_finished,
            "errors" => &mut self.errors,
            _ => return None,
        })
    }

    /// The value of counter `key` (0 for an unknown key).
    pub(crate) fn get(&self, key: &str) -> u64 {
        self.entries().iter().find(|(k, _)| *k == key).map_or(0, |(_, v)| *v)
    }

    /// `key=value,...`, zeros left out.
    pub(crate) fn encode(&self) -> String {
        let parts: Vec<String> =
            self.entries().iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(",")
    }

    /// Parses [`encode`](Self::encode)'s text; unknown keys (of a later
    /// version) and malformed pairs are skipped.
    pub(crate) fn decode(text: &str) -> Counters {
        let mut c = Counters::default();
        for pair in text.split(',') {
            let Some((k, v)) = pair.split_once('=') else { continue };
            if let (Some(slot), Ok(v)) = (c.entry_mut(k.trim()), v.trim().parse::<u64>()) {
                *slot = v;
            }
        }
        c
    }

    /// Adds `other` to these counters (saturating).
    pub(crate) fn add(&mut self, other: &Counters) {
        for (k, v) in other.entries() {
            if let Some(slot) = self.entry_mut(k) {
                *slot = slot.saturating_add(v);
            }
        }
    }

    /// What these counters have more than `earlier` (0 where they have less).
    pub(crate) fn since(&self, earlier: &Counters) -> Counters {
        let mut d = Counters::default();
        for ((k, now), (_, then)) in self.entries().into_iter().zip(earlier.entries()) {
            if let Some(slot) = d.entry_mut(k) {
                *slot = now.saturating_sub(then);
            }
        }
        d
    }

    /// Whether every counter is 0.
    pub(crate) fn is_zero(&self) -> bool {
        self.entries().iter().all(|(_, v)| *v == 0)
    }

    /// What a report of sessions ended from outside a supervisor counts:
    /// the sessions ended (as `closed` by their owner, or `swept`), their
    /// processes, the leaks prevented, the limits' verdicts, the errors.
    pub(crate) fn of_report(report: &SweepReport, closed: bool) -> Counters {
        let ended = report.sessions as u64;
        let errors = report.errors.len() as u64;
        let mut c = Counters {
            sessions_removed: ended.saturating_sub(errors),
            processes_terminated: report.terminated as u64,
            processes_killed: report.killed as u64,
            leaks_prevented: report.leaks_prevented as u64,
            leaks_prevented_finished: report.leaks_prevented_finished as u64,
            oom_kills: report.limits_hit.iter().map(|h| h.oom_kills).sum(),
            pids_max_hits: report.limits_hit.iter().map(|h| h.pids_max_hits).sum(),
            errors,
            ..Counters::default()
        };
        if closed {
            c.sessions_closed = ended.saturating_sub(errors);
        } else {
            c.sessions_swept = ended;
            c.sweeps = u64::from(ended > 0 || report.removed > 0);
        }
        c
    }
}

/// The counters recorded on `cg` under `key` (zeros when there are none).
pub(crate) fn read(cg: &Cgroup, key: &str) -> Counters {
    cg.meta(key).ok().flatten().map(|t| Counters::decode(&t)).unwrap_or_default()
}

/// The root's lock, if it is free now.
fn try_lock(root: &Cgroup) -> Result<Option<OwnedFd>> {
    let fd = rustix::fs::openat(root, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io("open", root.path(), e))?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => Ok(None),
        Err(e) => Err(Error::io("flock", root.path(), e)),
    }
}

fn lock_timeout(root: &Cgroup) -> Error {
    Error::io(
        "flock",
        root.path(),
        std::io::Error::new(std::io::ErrorKind::TimedOut, "another process holds the lock of the counters"),
    )
}

/// The root's lock, waited for at most `wait` (asynchronously).
pub(crate) async fn lock(root: &Cgroup, wait: Duration) -> Result<OwnedFd> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(fd) = try_lock(root)? {
            return Ok(fd);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(lock_timeout(root));
        }
        tokio::time::sleep(LOCK_RETRY).await;
    }
}

/// The root's lock, waited for at most `wait` (blocking the thread).
pub(crate) fn lock_blocking(root: &Cgroup, wait: Duration) -> Result<OwnedFd> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(fd) = try_lock(root)? {
            return Ok(fd);
        }
        if std::time::Instant::now() >= deadline {
            return Err(lock_timeout(root));
        }
        std::thread::sleep(LOCK_RETRY);
    }
}

/// Adds `delta` to the counters recorded on `cg` under `key`. The caller
/// holds the root's lock.
pub(crate) fn add_locked(cg: &Cgroup, key: &str, delta: &Counters) -> Result<()> {
    let mut c = match cg.meta(key)? {
        Some(text) => Counters::decode(&text),
        None => Counters::default(),
    };
    c.add(delta);
    cg.set_meta(key, &c.encode())
}

/// Adds `delta` to the root's totals and, when given, to the counters of
/// `instance` (one that no supervisor writes: an instance of `exec`
/// commands), under the root's lock waited for at most `wait`.
pub(crate) async fn add(root: &Cgroup, instance: Option<&Cgroup>, delta: &Counters, wait: Duration) -> Result<()> {
    if delta.is_zero() {
        return Ok(());
    }
    let _lock = lock(root, wait).await?;
    add_both(root, instance, delta)
}

/// [`add`], blocking the thread while it waits for the lock.
pub(crate) fn add_blocking(root: &Cgroup, instance: Option<&Cgroup>, delta: &Counters, wait: Duration) -> Result<()> {
    if delta.is_zero() {
        return Ok(());
    }
    let _lock = lock_blocking(root, wait)?;
    add_both(root, instance, delta)
}

fn add_both(root: &Cgroup, instance: Option<&Cgroup>, delta: &Counters) -> Result<()> {
    if let Some(instance) = instance {
        // Gone meanwhile (its guardian removed it with its last session):
        // the root's totals keep the counts.
        match add_locked(instance, XATTR_COUNTERS, delta) {
            Err(e) if crate::cgroup::vanished(&e) => {}
            r => r?,
        }
    }
    add_locked(root, XATTR_TOTALS, delta)
}

/// Whether `instance` is a supervisor's, whose counters only the supervisor
/// writes (from its own memory).
pub(crate) fn is_supervisor_instance(instance: &Cgroup) -> bool {
    instance.meta(crate::guardian::XATTR_ROLE).ok().flatten().as_deref() == Some("supervisor")
}

/// Adds what ending sessions from outside a supervisor did (`report`) to
/// the root's totals, and to `instance`'s counters when no supervisor keeps
/// them. Failures are logged, never returned: counting never fails an
/// ending.
pub(crate) async fn count_report(root: &Cgroup, instance: Option<&Cgroup>, report: &SweepReport, closed: bool) {
    let delta = Counters::of_report(report, closed);
    let instance = instance.filter(|i| !is_supervisor_instance(i));
    if let Err(e) = add(root, instance, &delta, LOCK_WAIT).await {
        tracing::warn!(error = %e, root = %root.path().display(), "could not add to the counters' totals");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_add() {
        let c = Counters { sessions_opened: 8, sessions_closed: 2, errors: 1, ..Counters::default() };
        assert_eq!(c.encode(), "sessions_opened=8,sessions_closed=2,errors=1");
        assert_eq!(Counters::decode(&c.encode()), c);
        assert_eq!(Counters::decode(""), Counters::default());
        // Unknown keys (a later version's) and garbage are skipped.
        let d = Counters::decode("sessions_opened=3,future_thing=9,,x,sweeps=abc,sweeps=2");
        assert_eq!((d.sessions_opened, d.sweeps), (3, 2));
        let mut sum = c;
        sum.add(&d);
        assert_eq!((sum.sessions_opened, sum.sweeps, sum.errors), (11, 2, 1));
        assert_eq!(sum.since(&c), d);
        assert!(c.since(&sum).is_zero());
        let all = Counters::decode(
            &c.entries().iter().enumerate().map(|(i, (k, _))| format!("{k}={}", i + 1)).collect::<Vec<_>>().join(","),
        );
        assert!(all.entries().iter().enumerate().all(|(i, (_, v))| *v == i as u64 + 1), "{all:?}");
        assert_eq!(all.get("errors"), 16);
        assert_eq!(all.get("nope"), 0);
    }
}
