//! Ending sessions: SIGTERM + SIGCONT to every process, an event-driven grace
//! period, `cgroup.kill` for what is left, reaping, `rmdir`. And the report of a
//! sweep.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::signal::Signal;
use tokio::time::Instant;

use crate::cgroup::{Cgroup, KillMechanism};
use crate::child::ChildCell;
use crate::error::{Error, Result};
use crate::holder::Holder;

/// How long processes get to die after `cgroup.kill` before the sweep reports
/// an error. A SIGKILLed process dies as soon as it next runs; this covers a
/// heavily loaded or emulated machine (5 s was seen to fall short under qemu
/// TCG with hundreds of processes ending at once). One that lives longer is
/// stuck in the kernel.
const KILL_WAIT: Duration = Duration::from_secs(15);
/// How long reaping one of our own children may take after the cgroup is empty.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// What ending one cgroup took.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Termination {
    /// Processes sent SIGTERM.
    pub signalled: usize,
    /// Of those, the ones that were gone by the end of the grace period.
    pub terminated: usize,
    /// Processes still there at the deadline and killed.
    pub killed: usize,
    /// The mechanism used to kill, when something had to be killed.
    pub kill_mechanism: Option<KillMechanism>,
    /// Whether the cgroup is gone (removed here, or by another process
    /// ending it at the same time).
    pub removed: bool,
    /// Directories removed here: the cgroup and every cgroup below it.
    pub cgroups_removed: usize,
    /// Processes the kernel OOM-killed in this cgroup over its life (its
    /// `memory.max`; `oom_kill` of `memory.events`).
    pub oom_kills: u64,
    /// Forks refused by its `pids.max` (`max` of `pids.events`).
    pub pids_max_hits: u64,
}

impl Termination {
    /// Whether something in the cgroup was still running when the ending
    /// began: a process was signalled or killed.
    pub(crate) fn ended_running(&self) -> bool {
        self.signalled > 0 || self.killed > 0 || self.kill_mechanism.is_some()
    }
}

/// What ending a session that still runs something prevents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leak {
    /// Nothing: the session is in use (a sweep of everything, shutdown,
    /// `procscope end` of an active session) or was closed by its job.
    No,
    /// A leak: the session of a tick job that returned `Ok` with its servers
    /// still running.
    OfFinishedJob,
    /// A leak: a session abandoned by its job, of a gateway that is gone, or
    /// marked orphaned by its owner for a reason not recorded.
    Abandoned,
}

/// Whether ending a session with `outcome` prevented a leak.
pub(crate) fn prevented(outcome: &Result<Termination>, leak: Leak) -> bool {
    leak != Leak::No && matches!(outcome, Ok(t) if t.ended_running())
}

/// Ends every process in `cg` and removes it from `parent`.
///
/// `children` are our own children in `cg` (signalled through their pidfds and
/// reaped); every other member is signalled through a pidfd verified to belong
/// to `cg`. Returns as soon as the cgroup is empty — the grace period is an upper
/// bound, never a sleep.
pub(crate) async fn end_cgroup(
    parent: &Cgroup,
    cg: &Cgroup,
    children: &[Arc<ChildCell>],
    grace: Duration,
) -> Result<Termination> {
    // Another process may end and remove the same cgroup meanwhile (a wrapper of
    // a shared session, a guardian, `procscope end`): gone counts as ended.
    let mut t = Termination::default();
    // Never itself: a gateway, guardian or caller that a child pulled into
    // the session is moved back out before anything is signalled (what could
    // not be moved makes the kill below fail), and no pidfd signal reaches it.
    let protected = crate::protect::protected()?;
    let _ = crate::protect::evacuate_among(cg, &protected);
    // Short of fds, `cgroup.kill` is the first resort: it needs one.
    let (members, short) = match cg.member_pidfds_recursive() {
        Ok(m) => (m, false),
        Err(e) if crate::cgroup::vanished(&e) => (Vec::new(), false),
        Err(e) if crate::cgroup::short_of_fds(&e) => (Vec::new(), true),
        Err(e) => return Err(e),
    };
    let live_children: Vec<&Arc<ChildCell>> = children.iter().filter(|c| c.is_alive()).collect();
    let child_pids: HashSet<i32> = live_children.iter().map(|c| c.pid()).collect();
    // One event for the step (SIGCONT follows each SIGTERM, so that a
    // stopped process acts on it: part of the step, not an event of its own).
    let mut step = crate::events::SignalStep::new(cg.path(), Signal::TERM);
    for c in &live_children {
        step.sent(c.pid(), c.signal(Signal::TERM));
        let _ = c.signal(Signal::CONT);
    }
    let others: Vec<_> = members
        .into_iter()
        .filter(|m| !child_pids.contains(&m.raw_pid()) && !crate::protect::is_protected(m.raw_pid(), &protected))
        .collect();
    for m in &others {
        step.sent(m.raw_pid(), m.send_signal(Signal::TERM));
        let _ = m.send_signal(Signal::CONT);
    }
    step.done();
    t.signalled = live_children.len() + others.len();

    let mut empty = !or_gone(cg.is_populated(), false)?;
    if !empty && !grace.is_zero() && !short {
        empty = or_gone(cg.wait_empty(Some(Instant::now() + grace)).await, true)?;
    }
    if !empty {
        let left = or_gone(cg.member_pidfds_recursive().map(|m| m.len()), 0)?;
        let killed = cg.kill().await;
        crate::events::kill(cg, Some(left), &killed);
        t.kill_mechanism = or_gone(killed.map(Some), None)?;
        t.killed = left;
        if !or_gone(cg.wait_empty(Some(Instant::now() + KILL_WAIT)).await, true)? {
            return Err(survived(cg));
        }
    }
    // Verified ending: every process we hold a pidfd for must be gone, also one
    // that left the cgroup (possible only for an unsealed child). It gets
    // SIGKILL through its pidfd; one that survives even that is an error, never
    // a success.
    let mut outside: Vec<&crate::pidfd::PidFd> =
        live_children.iter().map(|c| c.pidfd()).chain(others.iter()).filter(|p| p.is_alive()).collect();
    if !outside.is_empty() {
        let mut step = crate::events::SignalStep::new(cg.path(), Signal::KILL);
        for p in &outside {
            step.sent(p.raw_pid(), p.send_signal(Signal::KILL));
        }
        step.done();
        let deadline = Instant::now() + KILL_WAIT;
        for p in &outside {
            let _ = tokio::time::timeout_at(deadline, p.exited()).await;
        }
        t.killed += outside.len();
        outside.retain(|p| p.is_alive());
        if !outside.is_empty() {
            let pids: Vec<String> = outside.iter().map(|p| p.raw_pid().to_string()).collect();
            return Err(Error::io(
                "kill",
                cg.path(),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("process(es) {} outside the cgroup survived SIGKILL", pids.join(", ")),
                ),
            ));
        }
    }
    t.terminated = t.signalled.saturating_sub(t.killed);
    // The limits' verdicts, read before the cgroup (and its counters) is gone.
    t.oom_kills = cg.oom_kills();
    t.pids_max_hits = cg.pids_max_hits();
    for c in children {
        let _ = tokio::time::timeout(REAP_WAIT, c.wait()).await;
    }
    t.cgroups_removed = or_gone(parent.remove_child_tree(cg).await, 0)?;
    t.removed = true;
    Ok(t)
}

/// [`end_cgroup`]; when it fails for want of fds, ends the session again with
/// as few fds as it can be done with ([`end_short_of_fds`]), one session at
/// a time, on fds set aside for this at start.
pub(crate) async fn end_cgroup_retrying(
    parent: &Cgroup,
    cg: &Cgroup,
    children: &[Arc<ChildCell>],
    grace: Duration,
) -> Result<Termination> {
    match end_cgroup(parent, cg, children, grace).await {
        Err(e) if crate::cgroup::short_of_fds(&e) => {
            tracing::warn!(cgroup = %cg.path().display(), "no fd left to end the session; killing it with cgroup.kill");
            let _reserve = Reserve::release().await;
            end_short_of_fds(parent, cg, children).await
        }
        outcome => outcome,
    }
}

/// Ending a session when fds are short: `cgroup.kill` first (one fd, for
/// the write), then polling `cgroup.events` (one fd at a time) until it is
/// empty, a check through the pidfds already held, reaping, and `rmdir`
/// (no fd; a tree below the session needs a few for its walk).
async fn end_short_of_fds(parent: &Cgroup, cg: &Cgroup, children: &[Arc<ChildCell>]) -> Result<Termination> {
    let mut t = Termination { signalled: children.iter().filter(|c| c.is_alive()).count(), ..Termination::default() };
    if or_gone(cg.is_populated(), false)? {
        // Before Linux 5.14 the kill is the freeze-and-kill fallback, which
        // needs a few fds (the walk, `cgroup.events`, a pidfd per member):
        // the sessions ended beside this one give theirs back as they end.
        let deadline = Instant::now() + KILL_WAIT;
        t.kill_mechanism = loop {
            match cg.kill().await {
                Err(e) if crate::cgroup::short_of_fds(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                outcome => {
                    crate::events::kill(cg, None, &outcome);
                    break or_gone(outcome.map(Some), None)?;
                }
            }
        };
        let deadline = Instant::now() + KILL_WAIT;
        while or_gone(cg.is_populated(), false)? {
            if Instant::now() >= deadline {
                return Err(survived(cg));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut step = crate::events::SignalStep::new(cg.path(), Signal::KILL);
    for c in children.iter().filter(|c| c.is_alive()) {
        step.sent(c.pid(), c.signal(Signal::KILL));
    }
    step.done();
    t.killed = t.signalled;
    for c in children {
        let _ = tokio::time::timeout(REAP_WAIT, c.wait()).await;
    }
    t.cgroups_removed = match parent.remove_child(cg.name()) {
        Ok(()) => 1,
        Err(e) if crate::cgroup::vanished(&e) => 0,
        Err(_) => or_gone(parent.remove_child_tree(cg).await, 0)?,
    };
    t.removed = true;
    Ok(t)
}

/// Fds set aside at start for ending sessions when none are left: given
/// back to the process while one session is ended, then taken again.
pub(crate) struct Reserve;

/// How many fds are set aside.
const RESERVE_FDS: usize = 4;

static RESERVE: tokio::sync::Mutex<Vec<std::os::fd::OwnedFd>> = tokio::sync::Mutex::const_new(Vec::new());

impl Reserve {
    /// Sets the fds aside (once per process; at supervisor start).
    pub(crate) fn set_aside() {
        if let Ok(mut fds) = RESERVE.try_lock() {
            fill(&mut fds);
        }
    }

    /// Waits for its turn, then closes the fds set aside; they are taken
    /// again when the returned value is dropped.
    async fn release() -> MutexGuard {
        let mut fds = RESERVE.lock().await;
        fds.clear();
        MutexGuard(fds)
    }
}

/// The turn of one session ending short of fds; refills the reserve on drop.
struct MutexGuard(tokio::sync::MutexGuard<'static, Vec<std::os::fd::OwnedFd>>);

impl Drop for MutexGuard {
    fn drop(&mut self) {
        fill(&mut self.0);
    }
}

fn fill(fds: &mut Vec<std::os::fd::OwnedFd>) {
    while fds.len() < RESERVE_FDS {
        match rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                tracing::warn!(error = %e, set_aside = fds.len(), wanted = RESERVE_FDS,
                    "could not set fds aside for ending sessions when none are left");
                break;
            }
        }
    }
}

/// Processes still in `cg` after `cgroup.kill` and [`KILL_WAIT`].
fn survived(cg: &Cgroup) -> Error {
    Error::io("kill", cg.path(), std::io::Error::new(std::io::ErrorKind::TimedOut, "processes survived the kill"))
}

/// `value` when the cgroup turned out to be removed meanwhile.
fn or_gone<T>(r: Result<T>, value: T) -> Result<T> {
    match r {
        Err(e) if crate::cgroup::vanished(&e) => Ok(value),
        r => r,
    }
}

/// What a sweep did: from [`Supervisor::sweep`](crate::Supervisor::sweep),
/// [`shutdown`](crate::Supervisor::shutdown), a [`tick`](crate::Supervisor::tick)
/// ([`TickReport::sweep`](crate::TickReport::sweep)), the recovery at start
/// ([`Supervisor::recovery`](crate::Supervisor::recovery)) and
/// [`tree::sweep`](crate::tree::sweep). Its `Display` is one line for a log.
///
/// # Examples
/// ```no_run
/// # async fn run(sup: &procscope::Supervisor) {
/// let report = sup.sweep_orphans().await;
/// tracing::info!(%report, "swept");
/// if report.killed > 0 {
///     // Servers that ignored SIGTERM for the whole grace period.
///     tracing::warn!(killed = report.killed, "consider a longer grace period");
/// }
/// for e in &report.errors {
///     tracing::error!(session = %e.session, error = %e.error, "left for the next sweep");
/// }
/// # }
/// ```
///
/// # Caveats
/// - A sweep ends what it can and reports the rest in `errors`; those
///   sessions stay where they are and the next sweep tries again, so a sweep
///   as a whole never fails.
/// - The counts are per sweep. [`Counters`](crate::Counters) keeps the totals
///   of a supervisor's life.
/// - It serializes (serde) as an object named like its fields, with
///   `elapsed` as `elapsed_secs`, in seconds (a float), as every duration
///   of procscope's serialized types.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[non_exhaustive]
pub struct SweepReport {
    /// Sessions taken on by the sweep.
    pub sessions: usize,
    /// Leaks prevented: sessions let go with processes still running — by
    /// their job (the orphan pool), by a gateway that is gone (recovery,
    /// `procscope sweep`), or marked `orphaned` by a live one — in which the
    /// sweep still found a process running, and ended it. A session whose
    /// processes had all exited by the time the sweep came is not one, nor
    /// is a session in use (a sweep of everything, shutdown, `procscope end`
    /// of an active session).
    pub leaks_prevented: usize,
    /// Of `leaks_prevented`, the sessions of [`tick`](crate::Supervisor::tick)
    /// jobs that returned `Ok` with their servers still running
    /// ([`Counters::sessions_finished`](crate::Counters::sessions_finished));
    /// the others were abandoned, or their owner is gone.
    pub leaks_prevented_finished: usize,
    /// Processes that exited within the grace period after SIGTERM.
    pub terminated: usize,
    /// Processes killed at the deadline.
    pub killed: usize,
    /// Cgroups removed (sessions, every cgroup below them, and instances
    /// during recovery). A session that another process removed while this
    /// one ended it counts as one.
    pub removed: usize,
    /// Sessions that could not be ended completely, with why.
    pub errors: Vec<SweepError>,
    /// Sessions in which a limit struck: OOM kills by `memory.max`, forks refused
    /// by `pids.max`.
    pub limits_hit: Vec<LimitHit>,
    /// Time the sweep took.
    #[serde(rename = "elapsed_secs", serialize_with = "crate::metrics::serialize_secs")]
    pub elapsed: Duration,
}

/// A session whose limits struck while it ran.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LimitHit {
    /// The session id.
    pub session: String,
    /// Processes OOM-killed by its `memory.max`.
    pub oom_kills: u64,
    /// Forks refused by its `pids.max`.
    pub pids_max_hits: u64,
}

/// A session a sweep could not end completely.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepError {
    /// The session id (or cgroup name).
    pub session: String,
    /// What went wrong.
    pub error: String,
}

impl SweepReport {
    pub(crate) fn add(&mut self, session: &str, outcome: Result<Termination>, leak: Leak) {
        self.sessions += 1;
        if prevented(&outcome, leak) {
            self.leaks_prevented += 1;
            self.leaks_prevented_finished += usize::from(leak == Leak::OfFinishedJob);
        }
        match outcome {
            Ok(t) => {
                self.terminated += t.terminated;
                self.killed += t.killed;
                self.removed += t.cgroups_removed.max(usize::from(t.removed));
                if t.oom_kills > 0 || t.pids_max_hits > 0 {
                    self.limits_hit.push(LimitHit {
                        session: session.to_owned(),
                        oom_kills: t.oom_kills,
                        pids_max_hits: t.pids_max_hits,
                    });
                }
            }
            Err(e) => self.errors.push(SweepError { session: session.to_owned(), error: e.to_string() }),
        }
    }

    /// Adds another report's numbers to this one.
    pub fn merge(&mut self, other: SweepReport) {
        self.sessions += other.sessions;
        self.leaks_prevented += other.leaks_prevented;
        self.leaks_prevented_finished += other.leaks_prevented_finished;
        self.terminated += other.terminated;
        self.killed += other.killed;
        self.removed += other.removed;
        self.errors.extend(other.errors);
        self.limits_hit.extend(other.limits_hit);
        self.elapsed += other.elapsed;
    }
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "swept {} session(s), {} leak(s) prevented ({} of finished jobs): {} process(es) ended by SIGTERM, {} killed, {} cgroup(s) removed, {} error(s), in {:.1} ms",
            self.sessions,
            self.leaks_prevented,
            self.leaks_prevented_finished,
            self.terminated,
            self.killed,
            self.removed,
            self.errors.len(),
            self.elapsed.as_secs_f64() * 1e3
        )?;
        for hit in &self.limits_hit {
            write!(
                f,
                "; session {}: {} OOM kill(s), {} fork(s) refused by pids.max",
                hit.session, hit.oom_kills, hit.pids_max_hits
            )?;
        }
        Ok(())
    }
}

/// Called with the outcome of ending a session.
pub(crate) type OnDone = Box<dyn FnOnce(&Result<Termination>) + Send>;

/// Where a session's processes are: its cgroup, or its holders' trees.
pub(crate) enum Place {
    /// The session's cgroup and its parent (the instance).
    Cgroup { parent: Arc<Cgroup>, cgroup: Arc<Cgroup> },
    /// The holders of its commands ([`Containment::Holders`](crate::Containment::Holders)),
    /// and the name its events carry.
    Holders { path: PathBuf, holders: Vec<Arc<Holder>> },
}

impl Place {
    /// The cgroup's path, or the name of a session of holders.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Place::Cgroup { cgroup, .. } => cgroup.path(),
            Place::Holders { path, .. } => path,
        }
    }

    /// Ends everything in the place (see [`end_cgroup`] and [`end_held`]).
    pub(crate) async fn end(self, children: &[Arc<ChildCell>], grace: Duration) -> Result<Termination> {
        match self {
            Place::Cgroup { parent, cgroup } => end_cgroup_retrying(&parent, &cgroup, children, grace).await,
            Place::Holders { path, holders } => end_held(&path, holders, children, grace).await,
        }
    }
}

/// Ends the trees of `holders`: SIGTERM and SIGCONT through a verified
/// pidfd to every process of each tree, and to each of `children` (the
/// commands, through their own pidfds) outside them (its holder died), up
/// to `grace` for the trees to empty (each holder exits when its tree has);
/// then SIGKILL to what is left, through the same pidfds and by the end of
/// each remaining holder's control pipe, on which it kills its tree,
/// walking it again until nothing is left. A holder that a process of its
/// tree stopped is continued first. Returns once every holder has exited
/// and every command is gone; anything still running [`KILL_WAIT`] later is
/// an error, and the holders stay the session's for the next try.
pub(crate) async fn end_held(
    path: &Path,
    holders: Vec<Arc<Holder>>,
    children: &[Arc<ChildCell>],
    grace: Duration,
) -> Result<Termination> {
    async fn gone(hs: &[Arc<Holder>], cs: &[&Arc<ChildCell>]) {
        for h in hs {
            let _ = h.wait_gone().await;
        }
        for c in cs {
            let _ = c.pidfd().exited().await;
        }
    }
    let mut t = Termination::default();
    for h in &holders {
        h.resume();
    }
    let members: Vec<crate::pidfd::PidFd> = holders.iter().flat_map(|h| h.members()).collect();
    let in_trees: HashSet<i32> = members.iter().map(|m| m.raw_pid()).collect();
    let outside: Vec<&Arc<ChildCell>> =
        children.iter().filter(|c| c.is_alive() && !in_trees.contains(&c.pid())).collect();
    let mut step = crate::events::SignalStep::new(path, Signal::TERM);
    for m in &members {
        step.sent(m.raw_pid(), m.send_signal(Signal::TERM));
        let _ = m.send_signal(Signal::CONT);
    }
    for c in &outside {
        step.sent(c.pid(), c.signal(Signal::TERM));
        let _ = c.signal(Signal::CONT);
    }
    step.done();
    t.signalled = members.len() + outside.len();
    if !grace.is_zero() {
        let _ = tokio::time::timeout(grace, gone(&holders, &outside)).await;
    }
    let left: Vec<Arc<Holder>> = holders.iter().filter(|h| !h.is_empty()).cloned().collect();
    let outside: Vec<&Arc<ChildCell>> = outside.into_iter().filter(|c| c.is_alive()).collect();
    let left_members: Vec<crate::pidfd::PidFd> = left.iter().flat_map(|h| h.members()).collect();
    if !left_members.is_empty() || !outside.is_empty() {
        t.killed = left_members.len() + outside.len();
        t.kill_mechanism = Some(KillMechanism::Holder);
        // From here through the verified pidfds, and from each holder,
        // which walks again for what forks meanwhile.
        let mut step = crate::events::SignalStep::new(path, Signal::KILL);
        for m in &left_members {
            step.sent(m.raw_pid(), m.send_signal(Signal::KILL));
        }
        for c in &outside {
            step.sent(c.pid(), c.signal(Signal::KILL));
        }
        step.done();
    }
    // Every holder is told to end its tree (one that is empty just exits).
    for h in &holders {
        h.resume();
        let _ = h.kill();
    }
    if tokio::time::timeout(KILL_WAIT, gone(&holders, &outside)).await.is_err() {
        let pids: Vec<String> = holders
            .iter()
            .filter(|h| h.is_alive())
            .map(|h| format!("holder {}", h.pid()))
            .chain(outside.iter().filter(|c| c.is_alive()).map(|c| c.pid().to_string()))
            .collect();
        return Err(Error::io(
            "kill",
            path,
            std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{} survived SIGKILL", pids.join(", "))),
        ));
    }
    t.terminated = t.signalled.saturating_sub(t.killed);
    for c in children {
        let _ = tokio::time::timeout(REAP_WAIT, c.wait()).await;
    }
    Ok(t)
}

/// One session to end: where its processes are, our children in it.
pub(crate) struct Target {
    pub id: String,
    pub place: Place,
    pub children: Vec<Arc<ChildCell>>,
    /// What ending it prevents if something in it still runs.
    pub leak: Leak,
    /// Called with the outcome once the session is ended (counters, pool).
    pub on_done: Option<OnDone>,
}

/// Ends all `targets` in parallel. Each runs as its own task, so a sweep that
/// is cancelled half-way still finishes the sessions it took on.
pub(crate) async fn sweep_targets(targets: Vec<Target>, grace: Duration) -> SweepReport {
    let start = Instant::now();
    let mut report = SweepReport::default();
    let handles: Vec<_> = targets
        .into_iter()
        .map(|mut t| {
            let task = async move {
                let start = Instant::now();
                let path = t.place.path().to_owned();
                let outcome = t.place.end(&t.children, grace).await;
                crate::events::session_end(&path, "sweep", &outcome, Some(start.elapsed()));
                if let Some(done) = t.on_done.take() {
                    done(&outcome);
                }
                (t.id, outcome, t.leak)
            };
            // Its events in the sweep's span.
            tokio::spawn(tracing::Instrument::instrument(task, tracing::Span::current()))
        })
        .collect();
    for h in handles {
        match h.await {
            Ok((id, outcome, leak)) => report.add(&id, outcome, leak),
            Err(e) => report.errors.push(SweepError { session: "?".into(), error: format!("sweep task failed: {e}") }),
        }
    }
    report.elapsed = start.elapsed();
    report
}
