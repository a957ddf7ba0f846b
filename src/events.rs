//! The structured events: one `tracing` event for each thing procscope does
//! to processes and cgroups, all with the target [`TARGET`] and the same
//! field names, which are written here and nowhere else. The vocabulary is
//! documented on the [`logging`](crate::logging) page.
//!
//! Every event has `action`, `cgroup` and `result` (`"ok"` or the error's
//! text); `session` and `instance` when the cgroup is one of a session or an
//! instance (read from its path); `pid` when it is about one process.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::cgroup::{Cgroup, KillMechanism};
use crate::error::{Error, Result};
use crate::signal::Signal;
use crate::sweep::{SweepReport, Termination};

/// The target of every event: `RUST_LOG=procscope::event=info` selects
/// exactly these.
pub(crate) const TARGET: &str = "procscope::event";

/// `result`: `ok`, or the error's text.
struct Outcome<'a, E: ?Sized>(Option<&'a E>);

impl<E: fmt::Display + ?Sized> fmt::Display for Outcome<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("ok"),
            Some(e) => e.fmt(f),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The session id and instance name a cgroup's path names, from its last
/// components: `…/i-<…>` is an instance, `…/i-<…>/s-<id>` a session
/// (`s-<id>~N` while an orphan of the same id is still being swept), and
/// `…/i-<…>/s-<id>/p-<…>` the cgroup of a `procscope exec` command.
pub(crate) fn labels(path: &Path) -> (Option<&str>, Option<&str>) {
    fn session(dir: Option<&str>) -> Option<&str> {
        let id = dir?.strip_prefix("s-")?;
        Some(id.split_once('~').map_or(id, |(id, _)| id))
    }
    fn instance(dir: Option<&str>) -> Option<&str> {
        dir.filter(|d| d.starts_with("i-"))
    }
    let mut names = path.iter().rev().map(|n| n.to_str().unwrap_or(""));
    let (last, parent, grandparent) = (names.next(), names.next(), names.next());
    if last.is_some_and(|p| p.starts_with("p-")) && session(parent).is_some() && instance(grandparent).is_some() {
        (session(parent), grandparent)
    } else if session(last).is_some() && instance(parent).is_some() {
        (session(last), parent)
    } else {
        (None, instance(last))
    }
}

/// `spawn`: a child started in `cgroup` (its pid), or a spawn that failed.
pub(crate) fn spawn(cgroup: &Path, program: &OsStr, spawned: std::result::Result<u32, &Error>) {
    let (session, instance) = labels(cgroup);
    let (pid, error) = match spawned {
        Ok(pid) => (Some(pid), None),
        Err(e) => (None, Some(e)),
    };
    tracing::info!(target: TARGET, action = "spawn", session, instance, pid, cgroup = %cgroup.display(),
        program = %program.to_string_lossy(), result = %Outcome(error),
        "{}", if error.is_none() { "spawned" } else { "spawn failed" });
}

/// `signal`, at DEBUG: `signal` sent to the process `pid` in `cgroup`.
pub(crate) fn signal_process(cgroup: &Path, pid: i32, signal: Signal, result: &std::io::Result<()>) {
    let (session, instance) = labels(cgroup);
    tracing::debug!(target: TARGET, action = "signal", session, instance, pid, cgroup = %cgroup.display(),
        signal = signal.name(), result = %Outcome(result.as_ref().err()), "signalled a process");
}

/// One step of ending a cgroup: one signal sent to each of its processes.
/// Each send is a DEBUG event ([`signal_process`]); the step, when it
/// reached any process, one `signal` event at INFO with their number
/// (`processes`) and the sends that failed (`failed`).
pub(crate) struct SignalStep<'a> {
    cgroup: &'a Path,
    signal: Signal,
    processes: usize,
    failed: usize,
    first_error: Option<std::io::Error>,
}

impl<'a> SignalStep<'a> {
    pub(crate) fn new(cgroup: &'a Path, signal: Signal) -> SignalStep<'a> {
        SignalStep { cgroup, signal, processes: 0, failed: 0, first_error: None }
    }

    /// Records the send to `pid`; `ESRCH` (the process is gone already) is
    /// no failure.
    pub(crate) fn sent(&mut self, pid: i32, result: std::io::Result<()>) {
        let result = match result {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        };
        signal_process(self.cgroup, pid, self.signal, &result);
        self.processes += 1;
        if let Err(e) = result {
            self.failed += 1;
            self.first_error.get_or_insert(e);
        }
    }

    /// The step's INFO event, if any process was signalled.
    pub(crate) fn done(self) {
        if self.processes == 0 {
            return;
        }
        let (session, instance) = labels(self.cgroup);
        let error = self.first_error.map(|e| format!("{} of {} send(s) failed: {e}", self.failed, self.processes));
        tracing::info!(target: TARGET, action = "signal", session, instance, cgroup = %self.cgroup.display(),
            signal = self.signal.name(), processes = self.processes, failed = self.failed,
            result = %Outcome(error.as_deref()), "signalled {} process(es)", self.processes);
    }
}

/// `cgroup.kill`, or `kill.fallback` (freeze, SIGKILL each member, thaw):
/// every process in `cg` and below killed; `processes`, when counted, is
/// how many were there.
pub(crate) fn kill(cg: &Cgroup, processes: Option<usize>, result: &Result<KillMechanism>) {
    let mechanism = match result {
        Ok(m) => *m,
        Err(_) => cg.kill_mechanism(),
    };
    let action = match mechanism {
        KillMechanism::CgroupKill => "cgroup.kill",
        KillMechanism::FreezeKillThaw => "kill.fallback",
        // Not a cgroup's: its signals are `signal` events of the session.
        KillMechanism::Holder => "kill.holder",
    };
    let (session, instance) = labels(cg.path());
    tracing::info!(target: TARGET, action, session, instance, cgroup = %cg.path().display(), processes,
        result = %Outcome(result.as_ref().err()), "killed the cgroup");
}

/// `session.end`: a session's processes ended and its cgroup removed, `by`
/// its guard (nothing was left running), `close`, or a `sweep` (also at
/// shutdown, at recovery, and by `procscope end` / `sweep`).
pub(crate) fn session_end(cgroup: &Path, by: &str, outcome: &Result<Termination>, elapsed: Option<Duration>) {
    let (session, instance) = labels(cgroup);
    let t = outcome.as_ref().ok();
    tracing::info!(target: TARGET, action = "session.end", session, instance, cgroup = %cgroup.display(), by,
        processes = t.map(|t| t.signalled), terminated = t.map(|t| t.terminated), killed = t.map(|t| t.killed),
        elapsed_ms = elapsed.map(millis), result = %Outcome(outcome.as_ref().err()),
        "{}", if t.is_some() { "session ended" } else { "ending the session failed" });
}

/// `session.orphan`: a session let go by its guard with processes still
/// running, moved to the orphan pool for the next sweep.
pub(crate) fn session_orphan(cgroup: &Path) {
    let (session, instance) = labels(cgroup);
    tracing::info!(target: TARGET, action = "session.orphan", session, instance, cgroup = %cgroup.display(),
        result = "ok", "session let go with processes running; moved to the orphan pool");
}

/// `result` of a sweep or recovery: `ok`, or how many sessions could not be
/// ended and the first one's error.
fn report_error(report: &SweepReport) -> Option<String> {
    let first = report.errors.first()?;
    Some(format!("{} session(s) not ended: {}: {}", report.errors.len(), first.session, first.error))
}

/// `sweep`: one sweep of `scope` (`orphans` or `all` for a supervisor's;
/// `stale`, `orphans` or `all` across a root) over `cgroup` (the
/// supervisor's instance, or the root), or one that failed before it ended
/// anything. A sweep that found nothing to do is a DEBUG event.
pub(crate) fn sweep(scope: &str, cgroup: &Path, outcome: std::result::Result<&SweepReport, &Error>) {
    let (_, instance) = labels(cgroup);
    let report = outcome.ok();
    let error = match outcome {
        Ok(r) => report_error(r),
        Err(e) => Some(e.to_string()),
    };
    let sessions = report.map_or(0, |r| r.sessions);
    macro_rules! sweep_event {
        ($level:ident) => {
            tracing::$level!(target: TARGET, action = "sweep", instance, cgroup = %cgroup.display(), scope,
                sessions = report.map(|r| r.sessions), leaks_prevented = report.map(|r| r.leaks_prevented),
                terminated = report.map(|r| r.terminated), killed = report.map(|r| r.killed),
                removed = report.map(|r| r.removed), errors = report.map(|r| r.errors.len()),
                elapsed_ms = report.map(|r| millis(r.elapsed)),
                result = %Outcome(error.as_deref()), "swept {sessions} session(s)")
        };
    }
    if sessions > 0 || report.is_some_and(|r| r.removed > 0) || error.is_some() {
        sweep_event!(info);
    } else {
        sweep_event!(debug);
    }
}

/// `recovery`: the instance `cgroup` of a gateway that is gone (its pid
/// `owner`) ended: its sessions and then the instance itself.
pub(crate) fn recovery(cgroup: &Path, owner: i32, outcome: &Result<SweepReport>, elapsed: Duration) {
    let (_, instance) = labels(cgroup);
    let report = outcome.as_ref().ok();
    let error = match outcome {
        Ok(r) => report_error(r),
        Err(e) => Some(e.to_string()),
    };
    tracing::info!(target: TARGET, action = "recovery", instance, cgroup = %cgroup.display(), owner,
        sessions = report.map(|r| r.sessions), leaks_prevented = report.map(|r| r.leaks_prevented),
        terminated = report.map(|r| r.terminated), killed = report.map(|r| r.killed),
        removed = report.map(|r| r.removed), elapsed_ms = millis(elapsed),
        result = %Outcome(error.as_deref()), "recovered the instance of a gateway that is gone");
}

/// `exec.place`: the calling process (`pid`, about to become its command)
/// placed in its own cgroup `cgroup` of a session of `owner`'s instance.
pub(crate) fn exec_place(cgroup: &Path, pid: i32, owner: i32, error: Option<&Error>) {
    let (session, instance) = labels(cgroup);
    tracing::info!(target: TARGET, action = "exec.place", session, instance, pid, cgroup = %cgroup.display(),
        owner, result = %Outcome(error),
        "{}", if error.is_none() { "placed; becoming the command" } else { "placing failed" });
}

/// `guardian.start`: the guardian (`pid`) of the instance `cgroup` started,
/// or failed to.
pub(crate) fn guardian_start(cgroup: &Path, role: &str, pid: Option<i32>, error: Option<&Error>) {
    let (_, instance) = labels(cgroup);
    tracing::info!(target: TARGET, action = "guardian.start", instance, pid, cgroup = %cgroup.display(), role,
        result = %Outcome(error),
        "{}", if error.is_none() { "guardian watching this instance" } else { "the guardian did not start" });
}

#[cfg(test)]
mod tests {
    use super::labels;
    use std::path::Path;

    #[test]
    fn labels_come_from_the_path() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("/sys/fs/cgroup/procscope/i-4026531836-10-20", None, Some("i-4026531836-10-20")),
            ("/sys/fs/cgroup/procscope/i-1-10-20/s-job-7", Some("job-7"), Some("i-1-10-20")),
            ("/sys/fs/cgroup/procscope/i-1-10-20/s-job-7~2", Some("job-7"), Some("i-1-10-20")),
            ("/sys/fs/cgroup/procscope/i-1-10-20/s-s/p-5-6-2000", Some("s"), Some("i-1-10-20")),
            ("/sys/fs/cgroup/procscope", None, None),
            ("/sys/fs/cgroup/s-x/y", None, None),
            ("/sys/fs/cgroup/i-root-like/s-odd/i-1-2-3", None, Some("i-1-2-3")),
            ("/sys/fs/cgroup/procscope/supervisor", None, None),
            ("s-x", None, None),
        ];
        for (path, session, instance) in cases {
            assert_eq!(labels(Path::new(path)), (*session, *instance), "{path}");
        }
    }
}
