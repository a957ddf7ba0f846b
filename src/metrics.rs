//! Metrics: what runs under a root and what procscope did there, as a value
//! ([`Metrics`], `Serialize`) and in the Prometheus text exposition format
//! ([`Metrics::to_prometheus`]).
//!
//! [`Metrics::gather`] reads the tree from any process (the `procscope
//! metrics` command); [`Supervisor::metrics`] reports one supervisor's
//! instance with its in-memory [`Counters`].
//!
//! # What is measured, and from where
//! Per live session, from its cgroup files, with the best source the host
//! offers, named:
//! - memory: `memory.current` (source `memory.current`); without the memory
//!   controller in cgroup v2 (a hybrid host, where it belongs to v1), the
//!   sum of the resident set sizes of its processes (`/proc/PID/statm`,
//!   source `rss`: pages shared between them count once per process);
//! - peak memory: `memory.peak` (Linux ≥ 5.19); otherwise the sum of its
//!   live processes' own peaks (`VmHWM` of `/proc/PID/status`, source
//!   `vmhwm`), which misses processes that have exited;
//! - pids (tasks, as `pids.max` counts them): `pids.current`; otherwise the
//!   threads listed in `cgroup.threads` of the session and below (source
//!   `cgroup.threads`); and the processes, from `cgroup.procs`;
//! - CPU: `usage_usec` of `cpu.stat`, which cgroup v2 keeps without the cpu
//!   controller;
//! - OOM kills (`oom_kill` of `memory.events`) and forks refused by
//!   `pids.max` (`max` of `pids.events`): only where those files exist (the
//!   controller is on for the session); there is no per-session source
//!   without them, so the series are left out rather than reported as 0.
//!
//! Per instance: its owner's pid and whether it runs (active or stale), its
//! kind (a supervisor's, or one of `procscope exec` commands), whether its
//! guardian runs, and its counters.
//!
//! # Counters and where they are kept
//! An instance's counters are the [`Counters`] of its supervisor: in memory
//! for [`Supervisor::metrics`], and as the supervisor last persisted them
//! (at the end of each `close`, each sweep — a tick ends with one — and at
//! shutdown) for [`Metrics::gather`]. An instance of `procscope exec`
//! commands counts the sessions its `exec`s opened and the commands they
//! placed, and the sessions `procscope end` closed.
//!
//! The root keeps the totals ([`Metrics::totals`]) of everything counted
//! under it since it was made: each instance's counts as they are
//! persisted, so an instance that is gone — shut down, recovered, removed by
//! its guardian — has its counts there already; and what ending sessions
//! from outside a supervisor did (the recovery at a supervisor's start,
//! `procscope sweep`, `procscope end`). They survive gateway restarts, for
//! as long as the root cgroup exists (until a reboot for
//! `<cgroup2 mount>/procscope`; a delegated root goes with its systemd unit).
//!
//! Both live in procscope's metadata on the cgroups ([`Cgroup::meta`]): on a
//! root-owned tree `trusted.procscope.counters` and
//! `trusted.procscope.totals`, which only a process with `CAP_SYS_ADMIN` can
//! write, so no child (sealed or not, uid 0 or not) can forge or reset them;
//! on a tree delegated to a user, `user.procscope.*`, which that user's
//! processes can write. Reading `trusted.*` needs `CAP_SYS_ADMIN` too: run
//! `procscope metrics` as root on a root-owned tree.
//!
//! What a guardian ends — the leftovers of `exec` commands after their main
//! process exits, and a dead gateway's sessions — goes into the root's
//! totals only, through a spool: the guardian keeps `CAP_KILL` only and
//! cannot write `trusted.*`, so it writes its counts as files into a
//! directory only its own uid can write, and [`fold_guardian_spool`] (run
//! by `procscope metrics` before it gathers), each supervisor's persist
//! point and the recovery add them to the totals. Until one of them runs,
//! those counts are not in the totals. A sealed child cannot forge them; it
//! can at most move the spool away and lose them (the `spool` module's docs
//! say how). Not counted: what a supervisor counted after its last persist
//! point when it dies or is dropped without `shutdown`. Updates of the totals take an `flock` on the root directory,
//! waited for a bounded time: any process that can open the directory can
//! hold it, and then delays the totals (a supervisor adds its counts at its
//! next persist point) or, for `exec` and the command line tools, loses
//! that update (logged).
//!
//! # Cardinality
//! Session ids are labels only of the live sessions' gauges; an instance's
//! name is a label only while the instance exists (its counts are in the
//! root's totals already when it goes). The root's totals have no label.
//!
//! # The Prometheus families
//! Every name starts with `procscope_`; counters end in `_total`. The label
//! `procscope_instance` is the instance's directory name (not `instance`,
//! which Prometheus sets to the scrape target), `session` the session's
//! [`name`](SessionMetrics::name).
//!
//! | family | type | labels | from |
//! |---|---|---|---|
//! | `procscope_root_info` | gauge (1) | `root` | the root's path |
//! | `procscope_instances` | gauge | `state` (`active`, `stale`) | instances by whether their owner runs |
//! | `procscope_sessions` | gauge | `state` (`active`, `orphaned`, `stale`) | live sessions by state |
//! | `procscope_instance_info` | gauge (1) | `procscope_instance`, `owner_pid`, `kind` (`supervisor`, `exec`) | the instance's metadata |
//! | `procscope_instance_owner_alive` | gauge (0/1) | `procscope_instance` | the owner's pid and start time |
//! | `procscope_instance_guardian_alive` | gauge (0/1) | `procscope_instance` | the guardian's pid and start time (no series without a guardian) |
//! | `procscope_session_info` | gauge (1) | `procscope_instance`, `session`, `state` | the session's metadata |
//! | `procscope_session_processes` | gauge | `procscope_instance`, `session` | `cgroup.procs`, recursively |
//! | `procscope_session_pids` | gauge | … , `source` | `pids.current` or `cgroup.threads` |
//! | `procscope_session_memory_bytes` | gauge | … , `source` | `memory.current` or `rss` |
//! | `procscope_session_memory_peak_bytes` | gauge | … , `source` | `memory.peak` or `vmhwm` |
//! | `procscope_session_cpu_seconds_total` | counter | `procscope_instance`, `session` | `cpu.stat` `usage_usec` |
//! | `procscope_session_oom_kills_total` | counter | `procscope_instance`, `session` | `memory.events` `oom_kill` (where it exists) |
//! | `procscope_session_pids_max_refusals_total` | counter | `procscope_instance`, `session` | `pids.events` `max` (where it exists) |
//! | `procscope_instance_<counter>_total` | counter | `procscope_instance` | the instance's [`Counters`] |
//! | `procscope_<counter>_total` | counter | none | the root's totals |
//!
//! `<counter>` is one of `sessions_opened`, `sessions_closed`,
//! `sessions_finished`, `sessions_abandoned`, `sessions_orphaned`,
//! `sessions_removed`, `sessions_swept`, `processes_spawned`,
//! `processes_terminated` (ended by SIGTERM), `processes_killed` (by
//! `cgroup.kill`, or SIGKILL through a pidfd), `oom_kills`,
//! `pids_max_refusals` ([`Counters::pids_max_hits`]), `sweeps`,
//! `leaks_prevented`, `leaks_prevented_finished` and `errors`: the fields of
//! [`Counters`], which say what each counts.
//!
//! # Serialization
//! [`Metrics`] and the reports serialize (serde) as objects named like
//! their fields. Durations are seconds as a float, under the field's name
//! with `_secs` appended (`elapsed_secs`, `cpu_usage_secs`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::cgroup::Cgroup;
use crate::error::Result;
use crate::instance::{self, Owner, XATTR_SESSION};
use crate::root::Root;
use crate::supervisor::{Counters, Supervisor};
use crate::totals::{self, XATTR_COUNTERS, XATTR_TOTALS};
use crate::tree::SessionState;

/// What runs under a root and what procscope did there.
///
/// # Examples
/// ```no_run
/// # fn run(root: &procscope::Root) -> procscope::Result<()> {
/// let m = procscope::metrics::Metrics::gather(root)?;
/// for i in &m.instances {
///     println!("{}: {} session(s), {} opened", i.name, i.sessions.len(), i.counters.sessions_opened);
/// }
/// println!("leaks prevented under this root: {}", m.totals.leaks_prevented);
/// print!("{}", m.to_prometheus());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Metrics {
    /// The root's path.
    pub root: PathBuf,
    /// The instances under the root, by name.
    pub instances: Vec<InstanceMetrics>,
    /// The root's totals: everything counted under it since it was made,
    /// the instances that are gone included (see the [module](self) docs).
    pub totals: Counters,
}

/// Whether an instance's owner runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum InstanceState {
    /// Its owner runs (or is in another pid namespace, where it cannot be
    /// checked).
    Active,
    /// Its owner is gone: the next recovery or `procscope sweep` ends it.
    Stale,
}

impl InstanceState {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Active => "active",
            InstanceState::Stale => "stale",
        }
    }
}

/// Who made an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum InstanceKind {
    /// A [`Supervisor`].
    Supervisor,
    /// `procscope exec` commands of one gateway.
    Exec,
}

impl InstanceKind {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Supervisor => "supervisor",
            InstanceKind::Exec => "exec",
        }
    }
}

/// An instance's guardian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum GuardianState {
    /// It runs (or its instance's owner is in another pid namespace, where
    /// it cannot be checked).
    Running,
    /// One was started and is gone.
    Gone,
    /// The instance has none.
    Absent,
}

/// One instance: a supervisor's, or that of one gateway's `exec` commands.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct InstanceMetrics {
    /// Directory name, `i-<pidns>-<pid>-<start>`.
    pub name: String,
    /// The owner's pid (in the owner's pid namespace).
    pub owner_pid: i32,
    /// Active or stale.
    pub state: InstanceState,
    /// A supervisor's, or `exec`'s.
    pub kind: InstanceKind,
    /// Its guardian.
    pub guardian: GuardianState,
    /// Its counters (see the [module](self) docs for when they are written).
    pub counters: Counters,
    /// Its live sessions, by name.
    pub sessions: Vec<SessionMetrics>,
}

/// A value and the file it was read from (or how it was made up where the
/// file is missing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Reading {
    /// The value.
    pub value: u64,
    /// Where it comes from: a cgroup file name (`memory.current`), or `rss`,
    /// `vmhwm`, `cgroup.threads` for the fallbacks.
    pub source: &'static str,
}

/// One live session.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SessionMetrics {
    /// The session id.
    pub id: String,
    /// Its name in its instance, unique there: its directory's name without
    /// `s-`. The id, except for a second session of an id whose first one is
    /// still being ended (`job-1~2`).
    pub name: String,
    /// Active, orphaned or stale.
    pub state: SessionState,
    /// Processes in it and below (`cgroup.procs`).
    pub processes: u64,
    /// Tasks (processes and threads), as `pids.max` counts them.
    pub pids: Reading,
    /// Memory in bytes.
    pub memory: Reading,
    /// Peak memory in bytes.
    pub memory_peak: Reading,
    /// CPU time used (`usage_usec` of `cpu.stat`); serialized as
    /// `cpu_usage_secs`.
    #[serde(rename = "cpu_usage_secs", serialize_with = "serialize_opt_secs")]
    pub cpu_usage: Option<Duration>,
    /// Processes killed by an OOM killer, where `memory.events` exists.
    pub oom_kills: Option<u64>,
    /// Forks refused by `pids.max`, where `pids.events` exists.
    pub pids_max_refusals: Option<u64>,
}

/// Adds what the guardians under `root` ended and spooled to the root's
/// totals, and deletes the spool files it added; returns what it added.
/// Needs what writing the totals needs (`CAP_SYS_ADMIN` on a root-owned
/// tree) and reading the spool (root's `CAP_DAC_OVERRIDE`); otherwise, or
/// with no spool, it adds nothing. Waits for the totals' lock at most a
/// second. Run it before [`Metrics::gather`] for totals that include what
/// guardians ended since the last supervisor persisted its counters.
pub fn fold_guardian_spool(root: &Root) -> Counters {
    crate::spool::fold_blocking(root.cgroup(), totals::LOCK_WAIT)
}

impl Metrics {
    /// Reads every instance and live session under `root`, the instances'
    /// persisted counters and the root's totals. Only directories procscope
    /// made are read.
    ///
    /// # Errors
    /// The root's directory cannot be listed. Instances and sessions that go
    /// away meanwhile are left out.
    pub fn gather(root: &Root) -> Result<Metrics> {
        let mut instances = Vec::new();
        for found in crate::tree::instances(root)? {
            let counters = totals::read(&found.cgroup, XATTR_COUNTERS);
            instances.push(instance_metrics(&found.cgroup, found.name, found.owner.pid, found.owner_alive, counters));
        }
        Ok(Metrics { root: root.path().to_owned(), instances, totals: totals::read(root.cgroup(), XATTR_TOTALS) })
    }

    /// The commands that `procscope exec` holds where no cgroup2 can be
    /// written, from the registry under `run` ([`crate::held`]): an
    /// instance per owner (kind `exec`, no guardian, no counters), a
    /// session per session id with what the `exec`s' holders keep
    /// (processes, their threads, RSS and peak RSS). `root` is the
    /// registry's directory.
    pub fn gather_held(run: &std::path::Path) -> Metrics {
        let instances = crate::held::groups(run)
            .into_iter()
            .map(|g| InstanceMetrics {
                name: g.instance,
                owner_pid: g.owner.pid,
                state: if g.owner_alive { InstanceState::Active } else { InstanceState::Stale },
                kind: InstanceKind::Exec,
                guardian: GuardianState::Absent,
                counters: Counters::default(),
                sessions: g
                    .sessions
                    .into_iter()
                    .map(|(id, execs)| {
                        let pids = crate::held::live_pids(&execs).into_iter().map(|p| p as u32).collect();
                        let dir = format!("s-{id}");
                        held_session_metrics(crate::supervisor::HeldSession { id, dir, orphaned: false, pids })
                    })
                    .collect(),
            })
            .collect();
        Metrics { root: run.join("held"), instances, totals: Counters::default() }
    }

    /// The metrics in the Prometheus text exposition format (version
    /// 0.0.4): the families of the [module](self) docs, each with its
    /// `# HELP` and `# TYPE` lines, families without a sample left out.
    /// Serve it with the content type `text/plain; version=0.0.4`.
    pub fn to_prometheus(&self) -> String {
        let mut out = Exposition::default();
        out.family(
            "procscope_root_info",
            "gauge",
            "The procscope root these metrics are from (always 1).",
            vec![Sample::new(vec![("root", self.root.display().to_string())], 1)],
        );
        let instance_states = [InstanceState::Active, InstanceState::Stale];
        out.family(
            "procscope_instances",
            "gauge",
            "Instances under the root: active (owner running) or stale (owner gone, ended by the next recovery or \
             procscope sweep).",
            instance_states
                .iter()
                .map(|s| {
                    let n = self.instances.iter().filter(|i| i.state == *s).count();
                    Sample::new(vec![("state", s.as_str().to_owned())], n as u64)
                })
                .collect(),
        );
        let session_states = [SessionState::Active, SessionState::Orphaned, SessionState::Stale];
        out.family(
            "procscope_sessions",
            "gauge",
            "Live sessions under the root: active, orphaned (let go with processes running, for the next sweep) or \
             stale (owner gone).",
            session_states
                .iter()
                .map(|s| {
                    let n = self.instances.iter().flat_map(|i| &i.sessions).filter(|x| x.state == *s).count();
                    Sample::new(vec![("state", s.as_str().to_owned())], n as u64)
                })
                .collect(),
        );
        let inst = |i: &InstanceMetrics| vec![("procscope_instance", i.name.clone())];
        out.family(
            "procscope_instance_info",
            "gauge",
            "An instance: its owner's pid and its kind (a supervisor's, or procscope exec commands'); always 1.",
            self.instances
                .iter()
                .map(|i| {
                    let mut l = inst(i);
                    l.push(("owner_pid", i.owner_pid.to_string()));
                    l.push(("kind", i.kind.as_str().to_owned()));
                    Sample::new(l, 1)
                })
                .collect(),
        );
        out.family(
            "procscope_instance_owner_alive",
            "gauge",
            "Whether the instance's owner (pid and start time) runs: 1 active, 0 stale.",
            self.instances.iter().map(|i| Sample::new(inst(i), u64::from(i.state == InstanceState::Active))).collect(),
        );
        out.family(
            "procscope_instance_guardian_alive",
            "gauge",
            "Whether the instance's guardian runs: 1 running, 0 gone; no series for an instance without one.",
            self.instances
                .iter()
                .filter(|i| i.guardian != GuardianState::Absent)
                .map(|i| Sample::new(inst(i), u64::from(i.guardian == GuardianState::Running)))
                .collect(),
        );
        let sessions: Vec<(&InstanceMetrics, &SessionMetrics)> =
            self.instances.iter().flat_map(|i| i.sessions.iter().map(move |s| (i, s))).collect();
        let sess = |i: &InstanceMetrics, s: &SessionMetrics| {
            vec![("procscope_instance", i.name.clone()), ("session", s.name.clone())]
        };
        let with = |mut l: Vec<(&'static str, String)>, k: &'static str, v: &str| {
            l.push((k, v.to_owned()));
            l
        };
        out.family(
            "procscope_session_info",
            "gauge",
            "A live session and its state (active, orphaned, stale); always 1.",
            sessions.iter().map(|(i, s)| Sample::new(with(sess(i, s), "state", s.state.as_str()), 1)).collect(),
        );
        out.family(
            "procscope_session_processes",
            "gauge",
            "Processes in the session and below (cgroup.procs).",
            sessions.iter().map(|(i, s)| Sample::new(sess(i, s), s.processes)).collect(),
        );
        let reading = |name: &'static str, kind: &'static str, help: &str, pick: fn(&SessionMetrics) -> Reading| {
            let samples = sessions
                .iter()
                .map(|(i, s)| {
                    let r = pick(s);
                    Sample::new(with(sess(i, s), "source", r.source), r.value)
                })
                .collect();
            (name, kind, help.to_owned(), samples)
        };
        for (name, kind, help, samples) in [
            reading(
                "procscope_session_pids",
                "gauge",
                "Tasks (processes and threads) in the session, as pids.max counts them; source pids.current, or \
                 cgroup.threads counted where the pids controller is off.",
                |s| s.pids,
            ),
            reading(
                "procscope_session_memory_bytes",
                "gauge",
                "Memory of the session; source memory.current, or rss (the sum of its processes' resident sets, \
                 shared pages counted per process) where the memory controller is off (a hybrid host).",
                |s| s.memory,
            ),
            reading(
                "procscope_session_memory_peak_bytes",
                "gauge",
                "Peak memory of the session; source memory.peak, or vmhwm (the sum of its live processes' peak \
                 resident sets) where it is missing.",
                |s| s.memory_peak,
            ),
        ] {
            out.family(name, kind, &help, samples);
        }
        out.family(
            "procscope_session_cpu_seconds_total",
            "counter",
            "CPU time used by the session and below (usage_usec of cpu.stat).",
            sessions.iter().filter_map(|(i, s)| Some(Sample::float(sess(i, s), s.cpu_usage?.as_secs_f64()))).collect(),
        );
        out.family(
            "procscope_session_oom_kills_total",
            "counter",
            "Processes of the session killed by an OOM killer (oom_kill of memory.events); no series where the \
             memory controller is off.",
            sessions.iter().filter_map(|(i, s)| Some(Sample::new(sess(i, s), s.oom_kills?))).collect(),
        );
        out.family(
            "procscope_session_pids_max_refusals_total",
            "counter",
            "Forks the session's pids.max refused (max of pids.events); no series where the pids controller is off.",
            sessions.iter().filter_map(|(i, s)| Some(Sample::new(sess(i, s), s.pids_max_refusals?))).collect(),
        );
        for (key, name, help) in COUNTERS {
            out.family(
                &format!("procscope_instance_{name}_total"),
                "counter",
                &format!("{help} By this instance, as last persisted."),
                self.instances.iter().map(|i| Sample::new(inst(i), i.counters.get(key))).collect(),
            );
        }
        for (key, name, help) in COUNTERS {
            out.family(
                &format!("procscope_{name}_total"),
                "counter",
                &format!("{help} Under this root since it was made, instances that are gone included."),
                vec![Sample::new(Vec::new(), self.totals.get(key))],
            );
        }
        out.text
    }
}

/// The counters: key in [`Counters`], name in the families, help.
const COUNTERS: [(&str, &str, &str); 16] = [
    ("sessions_opened", "sessions_opened", "Sessions opened."),
    ("sessions_closed", "sessions_closed", "Sessions closed by their job (close, or procscope end)."),
    (
        "sessions_finished",
        "sessions_finished",
        "Sessions let go without close by a job that finished normally (nothing alive, or a tick job that \
         returned Ok).",
    ),
    (
        "sessions_abandoned",
        "sessions_abandoned",
        "Sessions abandoned: let go with processes alive by a job that failed, panicked or was cancelled, or \
         outside a tick.",
    ),
    ("sessions_orphaned", "sessions_orphaned", "Sessions that went to the orphan pool with processes alive."),
    ("sessions_removed", "sessions_removed", "Session cgroups removed."),
    ("sessions_swept", "sessions_swept", "Sessions ended by sweeps."),
    ("processes_spawned", "processes_spawned", "Processes spawned into sessions."),
    ("processes_terminated", "processes_terminated", "Processes ended by SIGTERM: gone within the grace period."),
    (
        "processes_killed",
        "processes_killed",
        "Processes killed at the end of the grace period (cgroup.kill, or SIGKILL through a pidfd).",
    ),
    ("oom_kills", "oom_kills", "Processes of sessions killed by an OOM killer, counted when the session ended."),
    ("pids_max_hits", "pids_max_refusals", "Forks refused by sessions' pids.max, counted when the session ended."),
    ("sweeps", "sweeps", "Sweeps run."),
    (
        "leaks_prevented",
        "leaks_prevented",
        "Leaks prevented: sessions let go with processes running in which a sweep still found one, and ended it.",
    ),
    (
        "leaks_prevented_finished",
        "leaks_prevented_finished",
        "Of the leaks prevented, those of tick jobs that returned Ok.",
    ),
    ("errors", "errors", "Session endings that failed (the session is left for the next sweep)."),
];

impl Supervisor {
    /// This supervisor's metrics: its instance with its live sessions and
    /// its in-memory [`counters`](Self::counters), and the root's totals
    /// with what it has counted and not persisted yet. Other instances under
    /// the root are left out ([`Metrics::gather`] reads them all).
    ///
    /// It reads the sessions' cgroup files and `/proc` (a few small reads
    /// per session); it never waits for anything.
    ///
    /// # Examples
    /// ```no_run
    /// # fn run(sup: &procscope::Supervisor) {
    /// let body = sup.metrics().to_prometheus();
    /// // Serve `body` as `text/plain; version=0.0.4` on /metrics.
    /// # let _ = body;
    /// # }
    /// ```
    ///
    /// With [`Containment::Holders`](crate::Containment::Holders) there is
    /// no tree to read: `root` is `holders`, the one instance is named
    /// `holders` and its sessions are this supervisor's, with what their
    /// holders' trees hold now (processes, their threads, RSS and peak RSS;
    /// no CPU time or limits). The totals are this supervisor's counters.
    pub fn metrics(&self) -> Metrics {
        let Some(instance) = self.instance() else {
            let sessions = self.held_sessions().into_iter().map(held_session_metrics).collect();
            let m = InstanceMetrics {
                name: "holders".into(),
                owner_pid: self.owner().pid,
                state: InstanceState::Active,
                kind: InstanceKind::Supervisor,
                guardian: GuardianState::Absent,
                counters: self.counters(),
                sessions,
            };
            return Metrics { root: PathBuf::from("holders"), instances: vec![m], totals: self.totals_now() };
        };
        let name = instance.name().to_owned();
        let m = instance_metrics(&instance, name, self.owner().pid, true, self.counters());
        let root = self.root().map(|r| r.path().to_owned()).unwrap_or_default();
        Metrics { root, instances: vec![m], totals: self.totals_now() }
    }
}

/// A session of holders as the metrics show it: from the processes of its
/// holders' trees.
fn held_session_metrics(s: crate::supervisor::HeldSession) -> SessionMetrics {
    let name = s.dir.strip_prefix("s-").unwrap_or(&s.dir).to_owned();
    let threads = s.pids.iter().map(|p| threads_of(*p)).sum();
    SessionMetrics {
        id: s.id,
        name,
        state: if s.orphaned { SessionState::Orphaned } else { SessionState::Active },
        processes: s.pids.len() as u64,
        pids: Reading { value: threads, source: "proc_status_threads" },
        memory: Reading { value: s.pids.iter().map(|p| rss_bytes(*p)).sum(), source: "rss" },
        memory_peak: Reading { value: s.pids.iter().map(|p| hwm_bytes(*p)).sum(), source: "vmhwm" },
        cpu_usage: None,
        oom_kills: None,
        pids_max_refusals: None,
    }
}

/// Threads of `pid` (`Threads` of `/proc/PID/status`), 0 if it is gone.
fn threads_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn instance_metrics(cg: &Cgroup, name: String, owner_pid: i32, alive: bool, counters: Counters) -> InstanceMetrics {
    let sessions = crate::tree::sessions_of(cg).iter().map(|(dir, s)| session_metrics(s, dir, alive)).collect();
    InstanceMetrics {
        name,
        owner_pid,
        state: if alive { InstanceState::Active } else { InstanceState::Stale },
        kind: if totals::is_supervisor_instance(cg) { InstanceKind::Supervisor } else { InstanceKind::Exec },
        guardian: guardian_state(cg),
        counters,
        sessions,
    }
}

/// The guardian recorded on the instance (pid and start time) and whether
/// it runs.
fn guardian_state(cg: &Cgroup) -> GuardianState {
    let Some(recorded) = cg.meta(crate::guardian::XATTR_GUARDIAN).ok().flatten() else {
        return GuardianState::Absent;
    };
    if !instance::same_pid_namespace(cg) {
        return GuardianState::Running;
    }
    let running =
        recorded.split_once(' ').is_some_and(|(pid, start)| match (pid.parse::<i32>(), start.parse::<u64>()) {
            (Ok(pid), Ok(start)) => {
                Owner { pid, start }.is_alive() && instance::stat_field(pid, 3).as_deref() != Some("Z")
            }
            _ => false,
        });
    if running { GuardianState::Running } else { GuardianState::Gone }
}

fn session_metrics(s: &Cgroup, dir: &str, owner_alive: bool) -> SessionMetrics {
    let name = dir.strip_prefix("s-").unwrap_or(dir).to_owned();
    let id = s.meta(XATTR_SESSION).ok().flatten().unwrap_or_else(|| name.clone());
    let state = crate::tree::session_state(s, owner_alive);
    let mut pids = Vec::new();
    let mut threads = 0u64;
    let _ = s.visit_tree(|c| {
        pids.extend(c.procs().unwrap_or_default());
        threads += c.read("cgroup.threads").map_or(0, |t| crate::cgroup::parse_pids(&t).len() as u64);
        Ok(())
    });
    let stats = s.stats();
    let pids_reading = match stats.pids_current {
        Some(v) => Reading { value: v, source: "pids.current" },
        None => Reading { value: threads, source: "cgroup.threads" },
    };
    let memory = match stats.memory_current {
        Some(v) => Reading { value: v, source: "memory.current" },
        None => Reading { value: pids.iter().map(|p| rss_bytes(*p)).sum(), source: "rss" },
    };
    let memory_peak = match stats.memory_peak {
        Some(v) => Reading { value: v, source: "memory.peak" },
        None => Reading { value: pids.iter().map(|p| hwm_bytes(*p)).sum(), source: "vmhwm" },
    };
    SessionMetrics {
        id,
        name,
        state,
        processes: pids.len() as u64,
        pids: pids_reading,
        memory,
        memory_peak,
        cpu_usage: stats.cpu_usage,
        oom_kills: stats.memory_events.map(|e| e.oom_kill),
        pids_max_refusals: s.has_file("pids.events").then(|| s.pids_max_hits()),
    }
}

/// Resident set size of `pid` in bytes (`/proc/PID/statm`), 0 if it is gone.
fn rss_bytes(pid: u32) -> u64 {
    let pages: u64 = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// Peak resident set size of `pid` in bytes (`VmHWM` of `/proc/PID/status`),
/// 0 if it is gone (or a kernel thread).
fn hwm_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .map_or(0, |kib: u64| kib * 1024)
}

/// One sample: labels and a value, both as they are written.
struct Sample {
    labels: Vec<(&'static str, String)>,
    value: String,
}

impl Sample {
    fn new(labels: Vec<(&'static str, String)>, value: u64) -> Sample {
        Sample { labels, value: value.to_string() }
    }

    fn float(labels: Vec<(&'static str, String)>, value: f64) -> Sample {
        Sample { labels, value: format!("{value}") }
    }
}

/// The text being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Writes a family: `# HELP`, `# TYPE` and its samples; nothing when it
    /// has none.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: Vec<Sample>) {
        if samples.is_empty() {
            return;
        }
        let t = &mut self.text;
        let _ = writeln!(t, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(t, "# TYPE {name} {kind}");
        for s in samples {
            t.push_str(name);
            if !s.labels.is_empty() {
                t.push('{');
                for (n, (k, v)) in s.labels.iter().enumerate() {
                    if n > 0 {
                        t.push(',');
                    }
                    let _ = write!(t, "{k}=\"{}\"", escape_label(v));
                }
                t.push('}');
            }
            let _ = writeln!(t, " {}", s.value);
        }
    }
}

/// A `# HELP` text: backslash and line feed escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serializes a duration as seconds (a float).
pub(crate) fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Serializes an optional duration as seconds (a float), or `null`.
pub(crate) fn serialize_opt_secs<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str, state: SessionState) -> SessionMetrics {
        SessionMetrics {
            id: name.to_owned(),
            name: name.to_owned(),
            state,
            processes: 3,
            pids: Reading { value: 4, source: "cgroup.threads" },
            memory: Reading { value: 1 << 20, source: "rss" },
            memory_peak: Reading { value: 2 << 20, source: "vmhwm" },
            cpu_usage: Some(Duration::from_micros(1_500_000)),
            oom_kills: None,
            pids_max_refusals: Some(2),
        }
    }

    fn sample() -> Metrics {
        Metrics {
            root: PathBuf::from("/sys/fs/cgroup/pro\"scope\\x\ny"),
            instances: vec![InstanceMetrics {
                name: "i-1-2-3".into(),
                owner_pid: 2,
                state: InstanceState::Active,
                kind: InstanceKind::Supervisor,
                guardian: GuardianState::Gone,
                counters: Counters { sessions_opened: 5, pids_max_hits: 2, ..Counters::default() },
                sessions: vec![session("a", SessionState::Active), session("b~2", SessionState::Orphaned)],
            }],
            totals: Counters { sessions_opened: 9, errors: 1, ..Counters::default() },
        }
    }

    #[test]
    fn exposition_is_well_formed() {
        let text = sample().to_prometheus();
        assert!(text.ends_with('\n'));
        // One HELP and one TYPE per family, its samples right after them.
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        let mut series = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(seen.insert(name.clone()), "TYPE twice for {name}");
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{line}");
                let key = line.rsplit_once(' ').unwrap().0.to_owned();
                assert!(series.insert(key), "duplicate series {line}");
            }
        }
        assert!(text.contains("procscope_root_info{root=\"/sys/fs/cgroup/pro\\\"scope\\\\x\\ny\"} 1\n"), "{text}");
        assert!(text.contains("procscope_sessions{state=\"orphaned\"} 1\n"));
        assert!(text.contains("procscope_instance_guardian_alive{procscope_instance=\"i-1-2-3\"} 0\n"));
        assert!(text.contains(
            "procscope_session_memory_bytes{procscope_instance=\"i-1-2-3\",session=\"b~2\",source=\"rss\"} 1048576\n"
        ));
        assert!(
            text.contains("procscope_session_cpu_seconds_total{procscope_instance=\"i-1-2-3\",session=\"a\"} 1.5\n")
        );
        // No memory.events: no OOM series at all.
        assert!(!text.contains("procscope_session_oom_kills_total"));
        assert!(text.contains("procscope_instance_pids_max_refusals_total{procscope_instance=\"i-1-2-3\"} 2\n"));
        assert!(text.contains("procscope_sessions_opened_total 9\n"));
        assert!(text.ends_with("# TYPE procscope_errors_total counter\nprocscope_errors_total 1\n"), "{text}");
        // Counters end in _total, gauges do not.
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = line.split_once(' ').unwrap();
            assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
            assert!(name.starts_with("procscope_"));
        }
    }

    #[test]
    fn no_instance_no_instance_families() {
        let m = Metrics { root: "/r".into(), instances: Vec::new(), totals: Counters::default() };
        let text = m.to_prometheus();
        assert!(!text.contains("procscope_instance_") && !text.contains("procscope_instance="), "{text}");
        assert!(!text.contains("session="), "{text}");
        assert!(text.contains("procscope_sessions_opened_total 0\n"));
    }
}
