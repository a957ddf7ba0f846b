//! [`Supervisor`]: the root, this process's instance cgroup, the active sessions
//! and the orphan pool.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cgroup::Cgroup;
use crate::cgroup::limits::Limits;
use crate::ending::{self, Ending};
use crate::error::{Error, Result};
use crate::guardian::Guardian;
use crate::instance::{self, Owner, XATTR_SESSION, XATTR_STATE};
use crate::names::validate_session_id;
use crate::root::{Root, RootKind};
use crate::session::{Session, SessionShared};
use crate::sweep::{Leak, Place, SweepReport, Target, Termination};
use crate::totals::{self, XATTR_COUNTERS, XATTR_TOTALS};

/// The default grace period between SIGTERM and `cgroup.kill`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Which of this supervisor's sessions [`Supervisor::sweep`] ends. A sweep
/// never reaches other supervisors' sessions; for those, see
/// [`tree::sweep`](crate::tree::sweep) and its [`Scope`](crate::tree::Scope).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SweepScope {
    /// Only the sessions in this supervisor's orphan pool (ended by their
    /// jobs with something still running): safe while sibling jobs run.
    #[default]
    Orphans,
    /// Every session of this supervisor, active ones included (for shutdown).
    All,
}

/// How a [`Supervisor`] contains its sessions (see the README, "Containers").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Containment {
    /// Each session is a cgroup of its own, under the supervisor's instance
    /// cgroup: children are born in it (`CLONE_INTO_CGROUP`), sealed into it,
    /// limited by it and ended with `cgroup.kill`. The full mode.
    Cgroups,
    /// No cgroup is written: each command starts from a holder of its own,
    /// a small subreaper to which every orphan of the command's tree is
    /// re-parented (`setsid` helpers, double forks), and which SIGKILLs the
    /// tree when the gateway lets it go or dies, even by SIGKILL (see the
    /// README, "Containment with holders"). Signals go through pidfds
    /// verified against the tree. Chosen where
    /// cgroup2 is mounted read-only (a default container) or not at all.
    ///
    /// Compared with [`Cgroups`](Self::Cgroups) it gives up: limits (refused
    /// with [`Error::NeedsCgroup`]), sealing, the atomic `cgroup.kill` (the
    /// walk is repeated until nothing new appears, and a SIGKILLed process
    /// cannot fork), the tree on disk (`procscope ps`, `end`, `sweep` and
    /// the metrics of other processes do not see these sessions; the
    /// supervisor's own [`metrics`](Supervisor::metrics) and counters do),
    /// and containment against a child of the gateway's uid that kills its
    /// holder (the orphans then go to the next subreaper up, usually the
    /// container's init).
    Holders,
}

impl Containment {
    /// What [`Builder::start`] chooses here by default, without creating
    /// anything: holders where no cgroup2 is mounted or the cgroup2 mount
    /// is read-only, cgroups otherwise (which may still fail to start, for
    /// want of delegation).
    pub fn detect() -> Containment {
        match crate::cgroup::hierarchy::Hierarchy::discover() {
            Ok(h) if !crate::root::read_only(&h.mount_point) => Containment::Cgroups,
            Ok(_) | Err(Error::NoCgroup2 { .. }) => Containment::Holders,
            Err(_) => Containment::Cgroups,
        }
    }

    /// The name used by `procscope doctor` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Containment::Cgroups => "cgroups",
            Containment::Holders => "holders",
        }
    }
}

/// Settings of a [`Supervisor`].
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub grace: Duration,
}

/// Starts a [`Supervisor`] with settings.
#[derive(Debug)]
#[must_use]
pub struct Builder {
    root: Option<PathBuf>,
    grace: Duration,
    recover: bool,
    guardian: bool,
    containment: Option<Containment>,
}

impl Builder {
    /// Uses this root instead of discovering one ([`Root::discover`]).
    pub fn root(mut self, path: impl AsRef<Path>) -> Self {
        self.root = Some(path.as_ref().to_owned());
        self
    }

    /// Grace period between SIGTERM and `cgroup.kill` (default 2 s; 0 kills at once).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Whether [`start`](Self::start) first removes the instances of supervisors
    /// that are gone (default: yes).
    pub fn recover(mut self, on: bool) -> Self {
        self.recover = on;
        self
    }

    /// Starts a guardian: a small process that kills this instance's sessions when
    /// this process dies, even by SIGKILL. It is this very program, run again
    /// from `/proc/self/exe`: procscope links a start-up hook into every
    /// program that uses it, which turns that run into the guardian before
    /// `main`. No other binary and no call in `main` are needed. A guardian
    /// that cannot start fails [`start`](Self::start). Its memory is its own
    /// (about 1–2 MiB PSS): the program's code pages are shared with this
    /// process.
    pub fn guardian(mut self, on: bool) -> Self {
        self.guardian = on;
        self
    }

    /// How sessions are contained. By default
    /// ([`start`](Self::start) decides): with cgroups where cgroup2 can be
    /// written, and with holders ([`Containment::Holders`], with a warning
    /// logged) where the discovered cgroup2 is mounted read-only, as in a
    /// default container, or where no cgroup2 is mounted. A cgroup2 that
    /// is writable but not delegated to this process stays an error
    /// ([`Error::NotDelegated`]): that is a setting to fix (`Delegate=yes`),
    /// and silently giving up the cgroups would hide it. Ask for
    /// [`Containment::Holders`] to use holders anywhere; asked for
    /// [`Containment::Cgroups`], a read-only cgroup2 fails the start.
    pub fn containment(mut self, containment: Containment) -> Self {
        self.containment = Some(containment);
        self
    }

    /// Opens the root, recovers stale instances, creates this instance's cgroup
    /// and starts the guardian. Also reads which signals the gateway ignores,
    /// for its children to reset (see [`Command`](crate::Command)'s section on
    /// signals).
    ///
    /// Also raises the process's soft `RLIMIT_NOFILE` to its hard limit, as
    /// Go does: a supervisor of many sessions needs fds. Children spawned by
    /// procscope get the original soft limit back before `execve`; processes
    /// the gateway starts in other ways inherit the raised one.
    ///
    /// # Errors
    /// [`Error::Unsupported`] below the kernel floor (no `pidfd_open`: Linux
    /// < 5.3, see [`check_kernel_floor`](crate::check_kernel_floor)), before
    /// anything is created; root errors ([`Error::NoCgroup2`],
    /// [`Error::NotDelegated`], [`Error::CgroupReadOnly`] in a default
    /// container, …); I/O errors creating the instance; a
    /// guardian that was asked for by path and failed.
    pub async fn start(self) -> Result<Supervisor> {
        // Below the kernel floor: refused before anything is created.
        crate::pidfd::check_kernel_floor()?;
        let root = match (&self.root, self.containment) {
            (_, Some(Containment::Holders)) => None,
            (Some(p), _) => Some(Root::open(p)?),
            (None, Some(Containment::Cgroups)) => Some(Root::discover()?),
            (None, None) => match Root::discover() {
                Ok(root) => Some(root),
                Err(e @ (Error::CgroupReadOnly { .. } | Error::NoCgroup2 { .. })) => {
                    tracing::warn!(error = %e, "no cgroup can be written here: sessions are contained with holders \
                        (no limits, no sealing; see the README, \"Containers\")");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let owner = Owner::this_process()?;
        let Some(root) = root else { return Ok(self.start_holders(owner)) };
        // Where this process goes back to if a child pulls it into a session.
        crate::protect::remember_home();
        // Fds for many sessions (children get the original soft limit back),
        // and a few set aside for ending sessions when none are left.
        crate::sys::spawn::raise_nofile();
        crate::sweep::Reserve::set_aside();
        // Children reset the signals the gateway ignores as of now.
        crate::refresh_ignored_signals();
        let recovery =
            if self.recover { recover(&root, Some(owner), self.grace).await? } else { SweepReport::default() };
        let (instance_name, instance) = create_instance(&root, owner)?;
        let instance = Arc::new(instance);
        let guardian = if self.guardian {
            match Guardian::start(owner, &instance, crate::guardian::Role::Supervisor) {
                Ok(g) => {
                    crate::protect::protect(g.pid() as i32);
                    Some(g)
                }
                Err(e) => {
                    let _ = root.cgroup().remove_child(instance.name());
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mount =
            if root.kind() == RootKind::Owned { root.path().parent().and_then(|p| Cgroup::open(p).ok()) } else { None };
        if recovery.sessions > 0 || recovery.removed > 0 {
            tracing::info!(%recovery, "recovered instances of supervisors that are gone");
        }
        tracing::info!(root = %root.path().display(), instance = %instance_name, "supervisor started");
        let place = Some(CgroupPlace { root, mount, instance, guardian, recovery });
        Ok(Supervisor { inner: Arc::new(Inner::new(owner, Config { grace: self.grace }, place)) })
    }
}

/// What a supervisor with cgroups has and one with holders does not.
struct CgroupPlace {
    root: Root,
    mount: Option<Cgroup>,
    instance: Arc<Cgroup>,
    guardian: Option<Guardian>,
    recovery: SweepReport,
}

impl Inner {
    fn new(owner: Owner, config: Config, place: Option<CgroupPlace>) -> Inner {
        let (root, mount, instance, guardian, recovery) = match place {
            Some(p) => (Some(p.root), p.mount, Some(p.instance), p.guardian, p.recovery),
            None => (None, None, None, None, SweepReport::default()),
        };
        Inner {
            root,
            mount,
            instance: Mutex::new(instance),
            owner,
            config,
            state: Mutex::new(State::default()),
            counters: CounterCells::default(),
            persisted: Mutex::new(Counters::default()),
            persisting: tokio::sync::Mutex::new(()),
            guardian: Mutex::new(guardian),
            recovery,
            shut_down: AtomicBool::new(false),
            closing: InFlight::default(),
        }
    }
}

impl Builder {
    /// A supervisor whose sessions are contained with holders: no root, no
    /// instance cgroup, no recovery (nothing outlives a gateway: its holders
    /// end their trees when it dies) and no guardian (the holders are one).
    fn start_holders(self, owner: Owner) -> Supervisor {
        crate::sys::spawn::raise_nofile();
        crate::refresh_ignored_signals();
        tracing::info!(containment = "holders", "supervisor started");
        Supervisor { inner: Arc::new(Inner::new(owner, Config { grace: self.grace }, None)) }
    }
}

/// Records a new instance of a supervisor: its owner, and the guardian's
/// role (it keeps the instance until the supervisor removes it).
fn mark_supervisor_instance(cg: &Cgroup, owner: Owner) -> Result<()> {
    instance::mark_instance(cg, owner)?;
    cg.set_meta(crate::guardian::XATTR_ROLE, "supervisor")
}

fn create_instance(root: &Root, owner: Owner) -> Result<(String, Cgroup)> {
    let base = owner.instance_name();
    for n in 1..100 {
        let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        match root.cgroup().create_child(&name) {
            Ok(cg) => {
                if let Err(e) = mark_supervisor_instance(&cg, owner) {
                    let _ = root.cgroup().remove_child(&name);
                    return Err(e);
                }
                return Ok((name, cg));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::InvalidInput {
        what: "supervisor",
        value: base,
        fix: "too many supervisors in this process under one root".into(),
    })
}

#[derive(Default)]
struct State {
    active: HashMap<String, Arc<SessionShared>>,
    orphans: Vec<Arc<SessionShared>>,
    /// Directory names in use under the instance (active and orphaned sessions).
    dirs: HashSet<String>,
}

#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub(crate) struct CounterCells {
    pub sessions_opened: Counter,
    pub sessions_closed: Counter,
    pub sessions_finished: Counter,
    pub sessions_abandoned: Counter,
    pub sessions_orphaned: Counter,
    pub sessions_removed: Counter,
    pub sessions_swept: Counter,
    pub processes_spawned: Counter,
    pub processes_terminated: Counter,
    pub processes_killed: Counter,
    pub oom_kills: Counter,
    pub pids_max_hits: Counter,
    pub sweeps: Counter,
    pub leaks_prevented: Counter,
    pub leaks_prevented_finished: Counter,
    pub errors: Counter,
}

impl CounterCells {
    /// Counts a session's ending (decided once, in [`crate::ending`]).
    pub(crate) fn count_ending(&self, ending: Ending) {
        match ending {
            Ending::Closed => self.sessions_closed.inc(),
            Ending::Finished => self.sessions_finished.inc(),
            Ending::Abandoned => self.sessions_abandoned.inc(),
        }
    }

    /// The counters now.
    fn snapshot(&self) -> Counters {
        Counters {
            sessions_opened: self.sessions_opened.get(),
            sessions_closed: self.sessions_closed.get(),
            sessions_finished: self.sessions_finished.get(),
            sessions_abandoned: self.sessions_abandoned.get(),
            sessions_orphaned: self.sessions_orphaned.get(),
            sessions_removed: self.sessions_removed.get(),
            sessions_swept: self.sessions_swept.get(),
            processes_spawned: self.processes_spawned.get(),
            processes_terminated: self.processes_terminated.get(),
            processes_killed: self.processes_killed.get(),
            oom_kills: self.oom_kills.get(),
            pids_max_hits: self.pids_max_hits.get(),
            sweeps: self.sweeps.get(),
            leaks_prevented: self.leaks_prevented.get(),
            leaks_prevented_finished: self.leaks_prevented_finished.get(),
            errors: self.errors.get(),
        }
    }
}

/// Counters of a supervisor since it started.
///
/// # How sessions end
/// Each session a job is done with is counted once, in one of
/// [`sessions_closed`](Self::sessions_closed),
/// [`sessions_finished`](Self::sessions_finished) and
/// [`sessions_abandoned`](Self::sessions_abandoned). A session still in use
/// is in none of them, and neither is one that a sweep of everything
/// ([`SweepScope::All`], [`Supervisor::shutdown`]) ended while it was in use:
/// `sessions_opened` is their sum, plus those, plus the sessions still
/// active (and, while a tick runs, those waiting for their job's outcome).
///
/// A session a [`tick`](Supervisor::tick) job let go with processes running
/// is in the orphan pool (and in `sessions_orphaned`) at once, and in
/// `sessions_finished` or `sessions_abandoned` once the job's outcome is
/// known: when the job's task ends, before the tick's sweep. When
/// [`tick`](Supervisor::tick) returns, every session its jobs opened and let
/// go is counted.
///
/// # Where they are kept
/// In memory ([`Supervisor::counters`]), and in the tree: the supervisor
/// writes them into its instance's metadata and adds what they gained to
/// the root's totals (see [`metrics`](crate::metrics)) at the end of each
/// [`close`](Session::close), of each sweep (a [`tick`](Supervisor::tick)
/// ends with one) and at [`shutdown`](Supervisor::shutdown) — not on every
/// spawn or drop, whose counts wait for the next of those. A supervisor
/// dropped without `shutdown` loses what it had not written yet. The same
/// type holds those persisted counters of an instance and the root's
/// totals ([`Metrics`](crate::metrics::Metrics)); it serializes as an
/// object of numbers named like the fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Counters {
    /// Sessions created.
    pub sessions_opened: u64,
    /// Sessions ended by their job's [`Session::close`] (counted as the close
    /// begins; not a session that a sweep of everything had already taken).
    pub sessions_closed: u64,
    /// Sessions dropped without `close` whose job finished normally: nothing
    /// of theirs was alive at the drop (the guard removed the cgroup at once,
    /// whatever the job was doing), or a [`tick`](Supervisor::tick) job that
    /// opened them returned `Ok` while their processes were still running —
    /// servers still shutting down. Those went to the orphan pool, and the
    /// tick's sweep ends what is left of them.
    pub sessions_finished: u64,
    /// Sessions dropped without `close` with processes still alive, other
    /// than those of tick jobs that returned `Ok`: dropped while the thread
    /// was panicking; opened by a tick job that returned `Err`, panicked or
    /// was cancelled (or let go by a tick job that had not returned when a
    /// sweep took the session); or, outside a tick job, dropped with
    /// processes alive. Outside a tick the guard cannot tell a cancelled
    /// future, an early `?` return and a plain return from each other: a
    /// job that wants its normal end counted as such calls `close`, or runs
    /// in a tick. Sessions a tick job opens in tasks it spawns, and
    /// sessions that outlive the job that opened them, are outside a tick.
    pub sessions_abandoned: u64,
    /// Sessions that went to the orphan pool because something in them was
    /// alive at the drop: those of `sessions_abandoned`, and those of
    /// `sessions_finished` whose processes were still running. The next
    /// sweep ends them.
    pub sessions_orphaned: u64,
    /// Sessions whose cgroup was removed (at once, by `close`, or by a sweep).
    pub sessions_removed: u64,
    /// Sessions ended by sweeps.
    pub sessions_swept: u64,
    /// Processes spawned.
    pub processes_spawned: u64,
    /// Processes that exited after SIGTERM within the grace period.
    pub processes_terminated: u64,
    /// Processes killed at the deadline.
    pub processes_killed: u64,
    /// Processes of sessions killed by an OOM killer (`oom_kill` of the session's
    /// `memory.events`, which exists once the memory controller is on for
    /// sessions: their own `memory.max`, or a limit above them), counted when the
    /// session ends.
    pub oom_kills: u64,
    /// Forks refused by a session's `pids.max` (counted when the session ends).
    pub pids_max_hits: u64,
    /// Sweeps run.
    pub sweeps: u64,
    /// Leaks prevented: sessions of the orphan pool in which a sweep still
    /// found a process running, and ended it. One whose processes had all
    /// exited by the time the sweep came is not counted (see
    /// [`SweepReport::leaks_prevented`]); neither are the sessions of other
    /// gateways that the recovery at start ended ([`Supervisor::recovery`]).
    pub leaks_prevented: u64,
    /// Of `leaks_prevented`, the sessions of tick jobs that returned `Ok`
    /// (counted in `sessions_finished`); the others were abandoned.
    pub leaks_prevented_finished: u64,
    /// Endings that failed: a session a sweep or `close` could not end
    /// completely ([`SweepReport::errors`]). It goes back to the orphan pool
    /// and the next sweep tries again (and counts again if it fails again).
    pub errors: u64,
}

/// The shared part of a supervisor; sessions hold it too.
pub(crate) struct Inner {
    /// `None` with [`Containment::Holders`].
    root: Option<Root>,
    /// The cgroup2 mount root, when the root was created under it (controllers
    /// are enabled from there down).
    mount: Option<Cgroup>,
    /// The instance cgroup; replaced when it was removed under us and made
    /// again. `None` with [`Containment::Holders`].
    instance: Mutex<Option<Arc<Cgroup>>>,
    owner: Owner,
    pub(crate) config: Config,
    state: Mutex<State>,
    pub(crate) counters: CounterCells,
    /// The counters as last added to the root's totals.
    persisted: Mutex<Counters>,
    /// One persist at a time.
    persisting: tokio::sync::Mutex<()>,
    guardian: Mutex<Option<Guardian>>,
    recovery: SweepReport,
    shut_down: AtomicBool,
    /// `close()` tasks still running (their callers may have gone).
    pub(crate) closing: InFlight,
}

/// A count of tasks in flight and a way to wait until there are none.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicU64,
    idle: tokio::sync::Notify,
}

impl InFlight {
    pub(crate) fn enter(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Inner {
    /// The instance cgroup (none with [`Containment::Holders`]).
    pub(crate) fn instance(&self) -> Option<Arc<Cgroup>> {
        self.instance.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The instance's path, or `holders` without one: for events.
    pub(crate) fn label(&self) -> PathBuf {
        self.instance().map_or_else(|| PathBuf::from("holders"), |i| i.path().to_owned())
    }

    pub(crate) fn containment(&self) -> Containment {
        if self.root.is_some() { Containment::Cgroups } else { Containment::Holders }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session guard's work, from `Session::drop`: synchronous, no blocking,
    /// no panics.
    pub(crate) fn release(self: &Arc<Self>, shared: &Arc<SessionShared>) {
        let already_ended = shared.end();
        if already_ended {
            self.forget_active(shared);
            return;
        }
        // Cgroups: the shutdown's kill of the instance takes it. A session
        // of holders goes on below: `orphan` ends it under the pool's lock.
        if self.shut_down.load(Ordering::Acquire) && shared.cgroup.is_some() {
            self.forget_active(shared);
            return;
        }
        let _enter = shared.span.enter();
        let Some(cgroup) = &shared.cgroup else { return self.release_held(shared) };
        // Only our children's pidfds are checked here; grandchildren and
        // daemons keep the cgroup busy, and rmdir says so (EBUSY) without a
        // read of cgroup.events.
        let alive = shared.children_alive();
        let mut state = self.lock();
        if state.active.get(&shared.id).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            state.active.remove(&shared.id);
        }
        let instance = self.instance().expect("a supervisor with cgroups has an instance");
        if !alive {
            for c in shared.children() {
                let _ = c.try_wait();
            }
            // The limits' verdicts, read while the cgroup and its counters exist
            // and counted once it is gone (a busy session is counted by the
            // sweep that ends it). Without the controllers the files are missing
            // and the counts 0; `procscope exec` wrappers of the same gateway may
            // have enabled them, so they are not skipped.
            let oom = cgroup.oom_kills();
            let refused = cgroup.pids_max_hits();
            match instance.remove_child(&shared.dir) {
                Ok(()) => {
                    state.dirs.remove(&shared.dir);
                    self.counters.sessions_removed.inc();
                    self.counters.oom_kills.add(oom);
                    self.counters.pids_max_hits.add(refused);
                    if oom > 0 || refused > 0 {
                        tracing::warn!(oom_kills = oom, pids_max_hits = refused, "the session's limits struck");
                    }
                    crate::events::session_end(cgroup.path(), "guard", &Ok(Termination::default()), None);
                    ending::settle(shared, &self.counters, Ending::Finished);
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    crate::events::session_end(cgroup.path(), "guard", &Ok(Termination::default()), None);
                    state.dirs.remove(&shared.dir);
                    ending::settle(shared, &self.counters, Ending::Finished);
                    return;
                }
                // EBUSY: a process of the session outlived our children (or a
                // cgroup was made below it); the sweep takes it from here.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove the session's cgroup; a sweep will retry");
                }
            }
        }
        let _ = cgroup.set_meta(XATTR_STATE, "orphaned");
        self.orphan(state, shared);
    }

    /// Puts a released session with something alive into the orphan pool.
    fn orphan(self: &Arc<Self>, mut state: MutexGuard<'_, State>, shared: &Arc<SessionShared>) {
        // Decided under the lock that the final sweep takes its sessions
        // under: released after it, a session of holders is ended here.
        if shared.cgroup.is_none() && self.shut_down.load(Ordering::Acquire) {
            drop(state);
            return self.kill_held_after_shutdown(shared);
        }
        state.orphans.push(Arc::clone(shared));
        self.counters.sessions_orphaned.inc();
        // Decided under the pool's lock: no sweep takes it undecided.
        ending::let_go(shared, self);
        crate::events::session_orphan(shared.path());
    }

    /// A session of holders released after the shutdown's final sweep took
    /// its sessions: no sweep comes any more, so its trees are SIGKILLed
    /// now (the holders' control pipes end), without a grace period, and
    /// it is counted abandoned (or finished if nothing of it ran).
    fn kill_held_after_shutdown(&self, shared: &Arc<SessionShared>) {
        let alive = shared.holders_alive();
        if alive {
            tracing::warn!(session = %shared.id, "a session released during shutdown: killing its processes");
        }
        for h in shared.take_holders() {
            let _ = h.kill();
        }
        ending::settle(shared, &self.counters, if alive { Ending::Abandoned } else { Ending::Finished });
    }

    /// [`release`](Self::release) of a session contained with holders:
    /// empty when no holder's tree has a process left (daemons included);
    /// a holder whose command has just exited is about to exit too.
    fn release_held(self: &Arc<Self>, shared: &Arc<SessionShared>) {
        let alive = shared.holders_alive();
        let mut state = self.lock();
        if state.active.get(&shared.id).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            state.active.remove(&shared.id);
        }
        if alive {
            return self.orphan(state, shared);
        }
        for c in shared.children() {
            let _ = c.try_wait();
        }
        drop(shared.take_holders());
        state.dirs.remove(&shared.dir);
        crate::events::session_end(shared.path(), "guard", &Ok(Termination::default()), None);
        ending::settle(shared, &self.counters, Ending::Finished);
    }

    pub(crate) fn forget_active(&self, shared: &Arc<SessionShared>) {
        let mut state = self.lock();
        if state.active.get(&shared.id).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            state.active.remove(&shared.id);
        }
    }

    /// Records the end of a session taken by `close` or a sweep. A session that
    /// could not be ended goes back to the pool for the next sweep.
    pub(crate) fn finished(&self, shared: &Arc<SessionShared>, outcome: &Result<Termination>, swept: bool) {
        let mut state = self.lock();
        match outcome {
            Ok(t) => {
                if t.removed {
                    state.dirs.remove(&shared.dir);
                    self.counters.sessions_removed.inc();
                } else if shared.cgroup.is_none() {
                    state.dirs.remove(&shared.dir);
                    // Exited, all of them: their fds go.
                    drop(shared.take_holders());
                }
                if swept {
                    self.counters.sessions_swept.inc();
                }
                self.counters.processes_terminated.add(t.terminated as u64);
                self.counters.processes_killed.add(t.killed as u64);
                self.counters.oom_kills.add(t.oom_kills);
                self.counters.pids_max_hits.add(t.pids_max_hits);
            }
            Err(e) => {
                self.counters.errors.inc();
                tracing::warn!(session = %shared.id, error = %e, "ending the session failed; it stays in the orphan pool");
                if !self.shut_down.load(Ordering::Acquire) {
                    state.orphans.push(Arc::clone(shared));
                }
            }
        }
    }
}

impl Inner {
    /// Writes the counters into the instance's metadata and adds what they
    /// gained since the last time to the root's totals (see
    /// [`crate::totals`]). Does nothing when nothing changed; a failure is
    /// logged, and what could not be added is added next time.
    pub(crate) async fn persist_counters(&self) {
        // Kept in memory only without a root.
        let Some(root) = &self.root else { return };
        let _one = self.persisting.lock().await;
        let now = self.counters.snapshot();
        let last = *self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        if now == last {
            // Nothing of its own; what guardians ended still goes in.
            crate::spool::fold(root.cgroup(), totals::LOCK_WAIT).await;
            return;
        }
        if let Some(instance) = self.instance() {
            match instance.set_meta(XATTR_COUNTERS, &now.encode()) {
                Err(e) if !crate::cgroup::vanished(&e) => {
                    tracing::warn!(error = %e, "could not record the counters on the instance");
                }
                _ => {}
            }
        }
        let root = root.cgroup();
        let lock = match totals::lock(root, totals::LOCK_WAIT).await {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(error = %e, "could not add to the counters' totals; trying again at the next sweep");
                return;
            }
        };
        // What the guardian ended, from its spool (see `crate::spool`).
        crate::spool::fold_locked(root);
        // Under both locks: `metrics` sees the totals and what is not in
        // them yet consistently.
        let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        match totals::add_locked(root, XATTR_TOTALS, &now.since(&last)) {
            Ok(()) => *persisted = now,
            Err(e) => {
                tracing::warn!(error = %e, "could not add to the counters' totals; trying again at the next sweep")
            }
        }
        drop(persisted);
        drop(lock);
    }

    /// The root's totals, with what this supervisor has counted and not
    /// added to them yet.
    pub(crate) fn totals_now(&self) -> Counters {
        let persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = self.root.as_ref().map(|r| totals::read(r.cgroup(), XATTR_TOTALS)).unwrap_or_default();
        t.add(&self.counters.snapshot().since(&persisted));
        t
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.shut_down.load(Ordering::Acquire) {
            return;
        }
        // Dropped without shutdown(): kill what is left now (never wait here);
        // the empty instance cgroup is removed by the next recovery or sweep.
        // Holders SIGKILL their trees as their sessions are dropped with the
        // state.
        let Some(instance) = self.instance() else {
            let state = self.lock();
            if !state.orphans.is_empty() || !state.active.is_empty() {
                tracing::warn!("supervisor dropped without shutdown(); its holders kill their sessions' processes");
            }
            return;
        };
        if instance.is_populated().unwrap_or(false) {
            tracing::warn!(instance = %instance.path().display(),
                "supervisor dropped without shutdown(); killing its sessions");
            match crate::protect::evacuate(&instance) {
                Ok(()) => {
                    let killed = instance.write("cgroup.kill", "1").map(|()| crate::cgroup::KillMechanism::CgroupKill);
                    crate::events::kill(&instance, None, &killed);
                }
                Err(e) => tracing::error!(error = %e, "not killing the sessions"),
            }
        }
        // A guardian stays while the instance does, and ends it when this
        // process dies.
    }
}

/// The registry of sessions for one gateway process: its instance cgroup
/// (`i-<pidns>-<pid>-<start>` under the [`Root`]), the sessions in it, the
/// orphan pool, sweeps and, if asked for, the guardian. Cheap to clone: the
/// clones share one supervisor.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> procscope::Result<()> {
/// use procscope::{Command, Stdio, Supervisor};
///
/// let sup = Supervisor::start().await?;
/// {
///     let session = sup.session("job-42")?;
///     let server = session.spawn(Command::new("my-mcp-server").stdin(Stdio::piped()).stdout(Stdio::piped()))?;
///     let (_to_server, _from_server) = (server.stdin, server.stdout);
///     // ... talk to it; on any exit path the session guard takes over ...
/// }
/// let report = sup.sweep_orphans().await;   // ends what the job left running
/// println!("{report}");
/// sup.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`start`](Self::start) fails when there is no cgroup2 to manage
/// ([`Error::NoCgroup2`], [`Error::NotDelegated`], [`Error::CgroupReadOnly`])
/// or the guardian cannot
/// start; [`session`](Self::session) when the id is invalid or taken.
/// Sweeps never fail as a whole: what could not be ended is listed in the
/// [`SweepReport`]'s `errors` and stays for the next sweep.
///
/// # Caveats
/// - It needs a tokio runtime with IO and time enabled (the multi-thread or
///   the current-thread flavour).
/// - Drop the last clone without [`shutdown`](Self::shutdown) and every
///   session still running is killed at once with `cgroup.kill`, without a
///   grace period (a warning is logged).
/// - Only the gateway's own sweeps and shutdown end sessions while the
///   gateway lives. If it is SIGKILLed, its sessions run on until the next
///   start's recovery, a `procscope sweep`, or — with
///   [`guardian`](Builder::guardian) — within a second.
/// - One supervisor per process is the intended use; a second one gets an
///   instance of its own (`…-1`).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("containment", &self.inner.containment())
            .field("instance", &self.inner.instance().as_ref().map(|i| i.path().to_owned()))
            .finish()
    }
}

impl Supervisor {
    /// A builder with the defaults: discovered root, 2 s grace, recovery on,
    /// no guardian.
    pub fn builder() -> Builder {
        Builder { root: None, grace: DEFAULT_GRACE, recover: true, guardian: false, containment: None }
    }

    /// Starts a supervisor with the defaults ([`builder`](Self::builder)).
    pub async fn start() -> Result<Supervisor> {
        Supervisor::builder().start().await
    }

    /// Creates a session without limits (no controller is enabled).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for an invalid id, [`Error::SessionExists`] for an
    /// id that is active; nothing is created then.
    pub fn session(&self, id: &str) -> Result<Session> {
        self.session_with_limits(id, &Limits::default())
    }

    /// Creates a session with `limits`, enabling only the controllers they need.
    ///
    /// # Errors
    /// As [`session`](Self::session); [`Error::InvalidLimit`],
    /// [`Error::ControllerUnavailable`]. Nothing is created on error.
    pub fn session_with_limits(&self, id: &str, limits: &Limits) -> Result<Session> {
        validate_session_id(id)?;
        limits.validate()?;
        let inner = &self.inner;
        let mut state = inner.lock();
        if inner.shut_down.load(Ordering::Acquire) {
            return Err(Error::InvalidInput {
                what: "supervisor",
                value: inner.instance().map_or_else(|| "holders".to_owned(), |i| i.name().to_owned()),
                fix: "it has been shut down; start a new one".into(),
            });
        }
        if state.active.contains_key(id) {
            return Err(Error::SessionExists { id: id.to_owned() });
        }
        let base = format!("s-{id}");
        let dir = (1..)
            .map(|n| if n == 1 { base.clone() } else { format!("{base}~{n}") })
            .find(|d| !state.dirs.contains(d))
            .expect("an unused name");
        if inner.root.is_none() {
            if !limits.is_empty() {
                return Err(Error::NeedsCgroup { what: "limits" });
            }
            let shared = Arc::new(SessionShared::held(id.to_owned(), dir.clone()));
            state.active.insert(id.to_owned(), Arc::clone(&shared));
            state.dirs.insert(dir);
            drop(state);
            inner.counters.sessions_opened.inc();
            return Ok(Session::new(shared, Arc::clone(&self.inner)));
        }
        let instance = self.instance_for_session()?;
        if !limits.controllers().is_empty() {
            self.enable_controllers(&limits.controllers())?;
        }
        // A `procscope exec` of this process may have made the session in
        // this instance: the same id, taken.
        let cgroup = instance.create_child(&dir).map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => Error::SessionExists { id: id.to_owned() },
            _ => e,
        })?;
        let setup = || -> Result<()> {
            instance::mark_session(&cgroup, id)?;
            cgroup.set_nesting(limits, 0)?;
            cgroup.set_limits(limits)
        };
        if let Err(e) = setup() {
            let _ = instance.remove_child(&dir);
            return Err(e);
        }
        let shared = Arc::new(SessionShared::new(id.to_owned(), dir.clone(), cgroup));
        state.active.insert(id.to_owned(), Arc::clone(&shared));
        state.dirs.insert(dir);
        drop(state);
        inner.counters.sessions_opened.inc();
        Ok(Session::new(shared, Arc::clone(&self.inner)))
    }

    /// The instance, made again (under the same name, with a new guardian if
    /// this supervisor has one) if someone removed it: an operator's
    /// `procscope sweep --all --force`, or `rmdir` by hand.
    fn instance_for_session(&self) -> Result<Arc<Cgroup>> {
        let inner = &self.inner;
        let (Some(root), Some(current)) = (&inner.root, inner.instance()) else {
            unreachable!("sessions with cgroups only")
        };
        // Through the fd: a directory made again under the same name (by an
        // `exec` of this process) is another one.
        match current.events() {
            Err(e) if crate::cgroup::vanished(&e) => {}
            _ => return Ok(current),
        }
        let mut slot = inner.instance.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(now) = slot.as_ref()
            && !Arc::ptr_eq(now, &current)
        {
            return Ok(Arc::clone(now));
        }
        let name = current.name().to_owned();
        let made = match root.cgroup().create_child(&name) {
            Ok(made) => {
                if let Err(e) = mark_supervisor_instance(&made, inner.owner) {
                    let _ = root.cgroup().remove_child(&name);
                    return Err(e);
                }
                made
            }
            // Made again meanwhile by an `exec` of this process: ours too,
            // once its recorded kind and owner say so.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let found = root.cgroup().open_child(&name)?;
                if instance::kind_of(&found).as_deref() != Some("instance")
                    || Owner::of_instance(&found) != Some(inner.owner)
                {
                    return Err(e);
                }
                found.set_meta(crate::guardian::XATTR_ROLE, "supervisor")?;
                found
            }
            Err(e) => return Err(e),
        };
        let made = Arc::new(made);
        let mut guardian = inner.guardian.lock().unwrap_or_else(|p| p.into_inner());
        if guardian.is_some() {
            match Guardian::start(inner.owner, &made, crate::guardian::Role::Supervisor) {
                Ok(g) => {
                    crate::protect::protect(g.pid() as i32);
                    *guardian = Some(g);
                }
                Err(e) => {
                    let _ = root.cgroup().remove_child(&name);
                    return Err(e);
                }
            }
        }
        tracing::warn!(instance = %made.path().display(),
            "this supervisor's instance cgroup was removed by someone else; made it again");
        *slot = Some(Arc::clone(&made));
        Ok(made)
    }

    /// Enables controllers from the top of our tree down to the instance, after
    /// checking at the top that all of them are available (so that a failure
    /// changes nothing).
    fn enable_controllers(&self, needed: &[&'static str]) -> Result<()> {
        let inner = &self.inner;
        let (Some(root), Some(instance)) = (&inner.root, inner.instance()) else {
            unreachable!("limits are refused without cgroups")
        };
        let chain: Vec<&Cgroup> = inner.mount.iter().chain([root.cgroup(), instance.as_ref()]).collect();
        crate::tree::enable_chain(&chain, needed)
    }

    /// Ends sessions: all targets in parallel, SIGTERM + SIGCONT, an
    /// event-driven grace period, `cgroup.kill`, reaping, `rmdir`. Returns as soon
    /// as every targeted session is gone. [`SweepScope::Orphans`] never touches an
    /// active session.
    pub async fn sweep(&self, scope: SweepScope) -> SweepReport {
        self.sweep_inner(scope, false).await
    }

    /// The sweep; with `shutting_down`, the supervisor is marked shut down under
    /// the same lock that takes the sessions, so no session can be created after
    /// the sweep took its targets.
    async fn sweep_inner(&self, scope: SweepScope, shutting_down: bool) -> SweepReport {
        let inner = &self.inner;
        let span = tracing::info_span!("sweep", ?scope);
        let enter = span.enter();
        inner.counters.sweeps.inc();
        let taken: Vec<(Leak, Arc<SessionShared>)> = {
            let mut state = inner.lock();
            if shutting_down {
                inner.shut_down.store(true, Ordering::Release);
            }
            // Orphans were ended when they were released; active sessions are
            // ended here, under the lock, so a concurrent drop or close() of one
            // sees it taken and leaves it to this sweep.
            // What ending each one prevents, with its ending decided.
            let mut t: Vec<_> =
                state.orphans.drain(..).map(|s| (ending::leak_of_orphan(&s, &inner.counters), s)).collect();
            if scope == SweepScope::All {
                let active: Vec<_> = state.active.drain().map(|(_, s)| s).collect();
                t.extend(active.into_iter().filter(|s| !s.end()).map(|s| (Leak::No, s)));
            }
            t
        };
        let scope_name = match scope {
            SweepScope::Orphans => "orphans",
            SweepScope::All => "all",
        };
        if taken.is_empty() {
            let report = SweepReport::default();
            crate::events::sweep(scope_name, &inner.label(), Ok(&report));
            // What the tick's jobs counted (sessions opened, closed,
            // finished) is persisted even when nothing is left to sweep.
            drop(enter);
            inner.persist_counters().await;
            return report;
        }
        let targets = taken
            .into_iter()
            .map(|(leak, shared)| {
                let done_inner = Arc::clone(&self.inner);
                let done_shared = Arc::clone(&shared);
                Target {
                    id: shared.id.clone(),
                    place: shared.place(inner.instance()),
                    children: shared.children(),
                    leak,
                    on_done: Some(Box::new(move |outcome| {
                        done_inner.finished(&done_shared, outcome, true);
                        if crate::sweep::prevented(outcome, leak) {
                            done_inner.counters.leaks_prevented.inc();
                            if leak == Leak::OfFinishedJob {
                                done_inner.counters.leaks_prevented_finished.inc();
                            }
                        }
                    })),
                }
            })
            .collect();
        // Not entered across the await: the span follows the sweep's future.
        drop(enter);
        let report =
            tracing::Instrument::instrument(crate::sweep::sweep_targets(targets, inner.config.grace), span.clone())
                .await;
        inner.persist_counters().await;
        span.in_scope(|| crate::events::sweep(scope_name, &inner.label(), Ok(&report)));
        report
    }

    /// [`sweep`](Self::sweep) of the orphan pool.
    pub async fn sweep_orphans(&self) -> SweepReport {
        self.sweep(SweepScope::Orphans).await
    }

    /// Ends every session (those `procscope exec` commands of this process
    /// made in its instance too, all in the report), removes the instance
    /// cgroup and waits for the guardian to exit.
    pub async fn shutdown(self) -> Result<SweepReport> {
        // The sessions this supervisor tracks, ended (or tried) by the sweep:
        // the pass for `exec` sessions below leaves them alone.
        let tracked: HashSet<String> = self.inner.lock().dirs.clone();
        let mut report = self.sweep_inner(SweepScope::All, true).await;
        let inner = &self.inner;
        // Sessions being closed by `close()` calls whose callers went away.
        inner.closing.wait_idle().await;
        let (Some(root), Some(instance)) = (&inner.root, inner.instance()) else {
            tracing::info!(%report, "supervisor shut down");
            return Ok(report);
        };
        // Sessions this supervisor does not track: those `procscope exec`
        // commands of this process made in its instance. Ended the same way,
        // and reported with the others.
        // In use by those commands: ending them prevents no leak.
        let others = targets_in(&instance, Leak::No, |name, cg| {
            !tracked.contains(name) && instance::kind_of(cg).as_deref() == Some("session")
        })
        .unwrap_or_default();
        if !others.is_empty() {
            report.merge(crate::sweep::sweep_targets(others, inner.config.grace).await);
        }
        // Whatever the sweeps could not reach (a session whose guard ran as the
        // shutdown began) dies with the instance: everything below it is ours.
        if instance.is_populated().unwrap_or(true) {
            tracing::warn!(instance = %instance.path().display(),
                "processes left in the instance after the final sweep; killing them");
            let killed = instance.kill().await;
            crate::events::kill(&instance, None, &killed);
            killed?;
        }
        // The last counts (of `close` calls that were still running) go to
        // the root's totals before the instance and its metadata go.
        inner.persist_counters().await;
        report.removed += root.cgroup().remove_child_tree(&instance).await?;
        // The guardian exits once its instance is gone.
        let guardian = inner.guardian.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(g) = guardian {
            g.wait_gone(Duration::from_secs(2)).await;
        }
        tracing::info!(%report, "supervisor shut down");
        Ok(report)
    }

    /// The sessions of a supervisor with holders, with the pids of their
    /// trees now (for its metrics).
    pub(crate) fn held_sessions(&self) -> Vec<HeldSession> {
        // The trees are walked outside the lock.
        let sessions: Vec<(Arc<SessionShared>, bool)> = {
            let state = self.inner.lock();
            let active = state.active.values().map(|s| (Arc::clone(s), false));
            active.chain(state.orphans.iter().map(|s| (Arc::clone(s), true))).collect()
        };
        sessions
            .into_iter()
            .map(|(s, orphaned)| HeldSession { id: s.id.clone(), dir: s.dir.clone(), orphaned, pids: s.held_pids() })
            .collect()
    }

    /// Counters since start.
    pub fn counters(&self) -> Counters {
        self.inner.counters.snapshot()
    }

    /// The root's totals as [`metrics`](Self::metrics) reports them: what
    /// is recorded on the root, plus what this supervisor counted and has
    /// not added yet.
    pub(crate) fn totals_now(&self) -> Counters {
        self.inner.totals_now()
    }

    /// Ids of the active sessions.
    pub fn active_sessions(&self) -> Vec<String> {
        self.inner.lock().active.keys().cloned().collect()
    }

    /// Ids of the sessions in the orphan pool.
    pub fn orphaned_sessions(&self) -> Vec<String> {
        self.inner.lock().orphans.iter().map(|s| s.id.clone()).collect()
    }

    /// How this supervisor contains its sessions.
    pub fn containment(&self) -> Containment {
        self.inner.containment()
    }

    /// The root (none with [`Containment::Holders`]).
    pub fn root(&self) -> Option<&Root> {
        self.inner.root.as_ref()
    }

    /// This supervisor's instance cgroup (none with
    /// [`Containment::Holders`]).
    pub fn instance(&self) -> Option<Arc<Cgroup>> {
        self.inner.instance()
    }

    /// This supervisor's owner identity (pid and start time).
    pub fn owner(&self) -> Owner {
        self.inner.owner
    }

    /// What the recovery at start removed.
    pub fn recovery(&self) -> &SweepReport {
        &self.inner.recovery
    }

    /// The guardian's pid, when one runs.
    pub fn guardian_pid(&self) -> Option<u32> {
        self.inner.guardian.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(Guardian::pid)
    }

    /// The grace period between SIGTERM and `cgroup.kill`.
    pub fn grace(&self) -> Duration {
        self.inner.config.grace
    }
}

/// A session of holders, for the metrics.
pub(crate) struct HeldSession {
    pub id: String,
    pub dir: String,
    pub orphaned: bool,
    pub pids: Vec<u32>,
}

/// Ends the instances under `root` whose owner process is gone, and removes
/// them. A live instance — another running supervisor — is never touched, and
/// neither is anything procscope did not create (no `kind` metadata).
/// `me` is skipped too. What it ended is added to the root's totals
/// ([`metrics`](crate::metrics)) as one sweep.
pub async fn recover(root: &Root, me: Option<Owner>, grace: Duration) -> Result<SweepReport> {
    let start = tokio::time::Instant::now();
    // What guardians ended, from their spool (see `crate::spool`).
    crate::spool::fold(root.cgroup(), totals::LOCK_WAIT).await;
    let mut report = SweepReport::default();
    for name in root.cgroup().children()? {
        let Some(named) = Owner::from_instance_name(&name) else { continue };
        let Ok(cg) = root.cgroup().open_child(&name) else { continue };
        if instance::kind_of(&cg).as_deref() != Some("instance") {
            continue;
        }
        let owner = Owner::of_instance(&cg).unwrap_or(named);
        if Some(owner) == me || !instance::owner_gone(&cg, owner) {
            continue;
        }
        // One instance failing (say, its guardian removes it right now) does not
        // stop the recovery of the others.
        let (began, path) = (tokio::time::Instant::now(), cg.path().to_owned());
        let outcome = recover_instance(root, Arc::new(cg), grace).await;
        crate::events::recovery(&path, owner.pid, &outcome, began.elapsed());
        match outcome {
            Ok(r) => report.merge(r),
            Err(e) if crate::cgroup::vanished(&e) => {}
            Err(e) => report.errors.push(crate::sweep::SweepError { session: name, error: e.to_string() }),
        }
    }
    report.elapsed = start.elapsed();
    // Counted in the root's totals only: the instances are gone, and the
    // recovering supervisor's own counters leave other gateways' sessions out.
    if report.sessions > 0 || report.removed > 0 || !report.errors.is_empty() {
        totals::count_report(root.cgroup(), None, &report, false).await;
    }
    Ok(report)
}

/// The cgroups under `instance` that `keep` accepts, as sweep targets with
/// their session ids (the directory name when none is recorded); `leak`:
/// what ending one with something running prevents.
fn targets_in(instance: &Arc<Cgroup>, leak: Leak, mut keep: impl FnMut(&str, &Cgroup) -> bool) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for name in instance.children()? {
        let Ok(cg) = instance.open_child(&name) else { continue };
        if !keep(&name, &cg) {
            continue;
        }
        let id = cg.meta(XATTR_SESSION).ok().flatten().unwrap_or(name);
        targets.push(Target {
            id,
            place: Place::Cgroup { parent: Arc::clone(instance), cgroup: Arc::new(cg) },
            children: Vec::new(),
            leak,
            on_done: None,
        });
    }
    Ok(targets)
}

/// Ends the sessions of one stale instance in parallel, then the instance.
async fn recover_instance(root: &Root, instance: Arc<Cgroup>, grace: Duration) -> Result<SweepReport> {
    // Their owner is gone: whatever still runs in them had leaked.
    let targets = targets_in(&instance, Leak::Abandoned, |_, _| true)?;
    let mut report = crate::sweep::sweep_targets(targets, grace).await;
    // Members of the instance itself, if any, then the instance.
    let t = crate::sweep::end_cgroup_retrying(root.cgroup(), &instance, &[], grace).await?;
    report.removed += t.cgroups_removed.max(usize::from(t.removed));
    report.terminated += t.terminated;
    report.killed += t.killed;
    Ok(report)
}
