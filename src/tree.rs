//! The tree under a root as any process sees it: listing instances and sessions
//! with their state, sessions shared across processes (the `procscope exec`
//! wrapper), and sweeps by scope.
//!
//! Only directories procscope made (a `kind` in [`Cgroup::meta`]) are ever
//! listed, ended or removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cgroup::Cgroup;
use crate::cgroup::limits::Limits;
use crate::error::{Error, Result};
use crate::instance::{self, Owner, XATTR_CREATED, XATTR_SESSION, XATTR_STATE};
use crate::names::validate_session_id;
use crate::root::{Root, RootKind};
use crate::sweep::{Leak, Place, SweepReport, Target};
use crate::totals;

/// The state of a session as seen from outside its supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Its owner runs and the session has not ended.
    Active,
    /// Its owner runs, but the session ended with processes alive (orphan pool).
    Orphaned,
    /// Its owner is gone.
    Stale,
}

impl SessionState {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Orphaned => "orphaned",
            SessionState::Stale => "stale",
        }
    }
}

/// A session directory and what is in it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    /// The session id.
    pub id: String,
    /// Its cgroup.
    pub path: PathBuf,
    /// Active, orphaned or stale.
    pub state: SessionState,
    /// Live processes in it and below.
    pub processes: usize,
    /// Memory in bytes: `memory.current` where the controller is on, else the
    /// sum of the members' resident set sizes.
    pub memory_bytes: u64,
    /// `"memory.current"` or `"rss"`.
    pub memory_source: &'static str,
    /// Seconds since creation, when recorded.
    pub age_secs: Option<u64>,
    /// The command line of its first (oldest) process.
    pub command: Option<String>,
}

/// An instance directory: one supervisor (or one gateway using `procscope exec`).
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    /// Directory name, `i-<pidns>-<pid>-<start>`.
    pub name: String,
    /// Its cgroup.
    pub path: PathBuf,
    /// Owner pid (in the owner's pid namespace).
    pub owner_pid: i32,
    /// Whether the owner (pid and start time) still runs; an owner in another
    /// pid namespace cannot be checked and counts as alive.
    pub owner_alive: bool,
    /// Whether the owner is in another pid namespace than the caller (a
    /// gateway in a container, seen from the host).
    pub foreign_pid_namespace: bool,
    /// Seconds since creation, when recorded.
    pub age_secs: Option<u64>,
    /// Its sessions.
    pub sessions: Vec<SessionInfo>,
}

/// An instance directory procscope made, as read from the tree.
pub(crate) struct Found {
    pub name: String,
    pub cgroup: Cgroup,
    pub owner: Owner,
    pub owner_alive: bool,
}

/// The instances procscope made under `root`, by name; directories that go
/// away meanwhile are left out.
pub(crate) fn instances(root: &Root) -> Result<Vec<Found>> {
    let mut names = root.cgroup().children()?;
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(named) = Owner::from_instance_name(&name) else { continue };
        let Ok(cgroup) = root.cgroup().open_child(&name) else { continue };
        if instance::kind_of(&cgroup).as_deref() != Some("instance") {
            continue;
        }
        let owner = Owner::of_instance(&cgroup).unwrap_or(named);
        let owner_alive = !instance::owner_gone(&cgroup, owner);
        out.push(Found { name, cgroup, owner, owner_alive });
    }
    Ok(out)
}

/// The session directories procscope made in an instance: `(name, cgroup)`.
pub(crate) fn sessions_of(instance: &Cgroup) -> Vec<(String, Cgroup)> {
    let mut dirs = instance.children().unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .filter_map(|dir| {
            let s = instance.open_child(&dir).ok()?;
            (instance::kind_of(&s).as_deref() == Some("session")).then_some((dir, s))
        })
        .collect()
}

/// Lists every instance and session under `root` that procscope made.
pub fn list(root: &Root) -> Result<Vec<InstanceInfo>> {
    let mut out = Vec::new();
    for Found { name, cgroup: cg, owner, owner_alive: alive } in instances(root)? {
        let sessions = sessions_of(&cg).iter().map(|(dir, s)| session_info(s, dir, alive)).collect();
        out.push(InstanceInfo {
            name,
            path: cg.path().to_owned(),
            owner_pid: owner.pid,
            owner_alive: alive,
            foreign_pid_namespace: !instance::same_pid_namespace(&cg),
            age_secs: age(&cg),
            sessions,
        });
    }
    Ok(out)
}

fn age(cg: &Cgroup) -> Option<u64> {
    let created: u64 = cg.meta(XATTR_CREATED).ok()??.parse().ok()?;
    Some(instance::now_secs().saturating_sub(created))
}

/// A session's state: stale once its owner is gone, else as its metadata says.
pub(crate) fn session_state(s: &Cgroup, owner_alive: bool) -> SessionState {
    if !owner_alive {
        SessionState::Stale
    } else if s.meta(XATTR_STATE).ok().flatten().as_deref() == Some("orphaned") {
        SessionState::Orphaned
    } else {
        SessionState::Active
    }
}

fn session_info(s: &Cgroup, dir: &str, owner_alive: bool) -> SessionInfo {
    let id = s.meta(XATTR_SESSION).ok().flatten().unwrap_or_else(|| dir.trim_start_matches("s-").to_owned());
    let state = session_state(s, owner_alive);
    let pids = member_pids(s);
    let (memory_bytes, memory_source) = match s.read("memory.current").ok().and_then(|v| v.trim().parse().ok()) {
        Some(bytes) => (bytes, "memory.current"),
        None => (pids.iter().map(|p| rss_bytes(*p)).sum(), "rss"),
    };
    let command = oldest_command(&pids);
    SessionInfo {
        id,
        path: s.path().to_owned(),
        state,
        processes: pids.len(),
        memory_bytes,
        memory_source,
        age_secs: age(s),
        command,
    }
}

/// The command line of the oldest of `pids`.
pub(crate) fn oldest_command(pids: &[i32]) -> Option<String> {
    pids.iter()
        .filter_map(|p| Some((instance::start_time(*p)?, *p)))
        .min()
        .and_then(|(_, pid)| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|raw| {
            let parts: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            parts.join(" ")
        })
}

fn member_pids(cg: &Cgroup) -> Vec<i32> {
    let mut pids = Vec::new();
    let _ = cg.visit_tree(|c| {
        pids.extend(c.procs().unwrap_or_default().iter().map(|&p| p as i32));
        Ok(())
    });
    pids
}

pub(crate) fn rss_bytes(pid: i32) -> u64 {
    let pages: u64 = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// Opens the instance of `owner` under `root`, creating it (with its xattrs) if
/// it does not exist, and says whether this call created it. Used by
/// processes that share an owner's sessions, such as `procscope exec`s
/// started by one gateway.
fn open_or_create_instance_tracked(root: &Root, owner: Owner) -> Result<(Cgroup, bool)> {
    let name = owner.instance_name();
    match root.cgroup().create_child(&name) {
        Ok(cg) => {
            if let Err(e) = instance::mark_instance(&cg, owner) {
                let _ = root.cgroup().remove_child(&name);
                return Err(e);
            }
            Ok((cg, true))
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok((root.cgroup().open_child(&name)?, false)),
        Err(e) => Err(e),
    }
}

/// Opens the session `id` of `instance`, creating it if needed; `limits` (if
/// any) are written either way. Several processes may do this at once.
pub fn open_or_create_session(root: &Root, instance: &Cgroup, id: &str, limits: &Limits) -> Result<Cgroup> {
    open_or_create_session_tracked(root, instance, id, limits).map(|(cg, _)| cg)
}

/// [`open_or_create_session`], and whether this call created it.
fn open_or_create_session_tracked(root: &Root, instance: &Cgroup, id: &str, limits: &Limits) -> Result<(Cgroup, bool)> {
    validate_session_id(id)?;
    limits.validate()?;
    if !limits.controllers().is_empty() {
        enable_chain(&chain(root, instance)?, &limits.controllers())?;
    }
    let dir = format!("s-{id}");
    let (cg, created) = match instance.create_child(&dir) {
        Ok(cg) => (cg, true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => (instance.open_child(&dir)?, false),
        Err(e) => return Err(e),
    };
    let setup = || -> Result<()> {
        if created {
            instance::mark_session(&cg, id)?;
            cg.set_nesting(limits, 1)?;
        }
        cg.set_limits(limits)
    };
    if let Err(e) = setup() {
        if created {
            let _ = instance.remove_child(&dir);
        }
        return Err(e);
    }
    Ok((cg, created))
}

/// Places a command that the calling process is about to become
/// ([`Command::exec_in`](crate::Command::exec_in)): instance of `owner` →
/// session `id` (with `limits`) → a cgroup of its own named after the calling
/// process (`p-<pid>-<start>-<grace ms>`), and makes sure the instance's
/// guardian runs. The guardian ends what the command leaves behind once its
/// main process exits (SIGTERM, then `cgroup.kill` after `grace`), and the
/// whole instance when `owner` dies. A new instance records the owner's
/// ancestors, so that `procscope end` run by any of them finds its sessions.
///
/// Retries when a concurrent `exec` or the guardian removed an empty session
/// or instance in between.
///
/// # Errors
/// Those of creating the instance's cgroup and its xattrs, and of [`open_or_create_session`]; the
/// guardian failing to start.
pub fn place_command(root: &Root, owner: Owner, id: &str, limits: &Limits, grace: Duration) -> Result<Cgroup> {
    let me = Owner::this_process()?;
    let name = crate::guardian::command_cgroup_name(me, grace);
    let placed = place(root, owner, id, limits, &name);
    let path = match &placed {
        Ok(leaf) => leaf.path().to_owned(),
        // Where it was to go.
        Err(_) => root.path().join(owner.instance_name()).join(format!("s-{id}")).join(&name),
    };
    crate::events::exec_place(&path, me.pid, owner.pid, placed.as_ref().err());
    placed
}

/// [`place_command`]: the calling process's cgroup `name`, placed.
fn place(root: &Root, owner: Owner, id: &str, limits: &Limits, name: &str) -> Result<Cgroup> {
    // Fds for the placing; the command gets the original soft limit back.
    crate::sys::spawn::raise_nofile();
    let mut last = None;
    for _ in 0..8 {
        // What this attempt created is removed again if it fails: a failed
        // `exec` leaves the tree as it found it (what someone else uses
        // meanwhile stays: rmdir refuses).
        let attempt = || -> Result<(Cgroup, Cgroup, bool)> {
            let (instance, instance_created) = open_or_create_instance_tracked(root, owner)?;
            let placed = (|| -> Result<(Cgroup, bool)> {
                if instance::kind_of(&instance).is_some() && instance.meta(XATTR_LINEAGE)?.is_none() {
                    instance.set_meta(XATTR_LINEAGE, &lineage(owner.pid))?;
                }
                let (session, session_created) = open_or_create_session_tracked(root, &instance, id, limits)?;
                let leaf = (|| -> Result<Cgroup> {
                    let leaf = session.create_child(name)?;
                    // The leaf keeps the instance from being removed meanwhile.
                    let ready = leaf
                        .set_meta(crate::root::XATTR_KIND, "exec")
                        .and_then(|()| crate::guardian::ensure(owner, &instance));
                    if let Err(e) = ready {
                        let _ = session.remove_child(name);
                        return Err(e);
                    }
                    Ok(leaf)
                })();
                if leaf.is_err() && session_created {
                    let _ = instance.remove_child(session.name());
                }
                leaf.map(|leaf| (leaf, session_created))
            })();
            match placed {
                Ok((leaf, session_created)) => Ok((instance, leaf, session_created)),
                Err(e) => {
                    if instance_created {
                        let _ = root.cgroup().remove_child(instance.name());
                    }
                    Err(e)
                }
            }
        };
        let outcome = attempt();
        match outcome {
            // Removed meanwhile (by a concurrent exec or the guardian).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => last = Some(e),
            Err(e) => return Err(e),
            Ok((instance, leaf, session_created)) => {
                count_exec(root, &instance, session_created);
                return Ok(leaf);
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Counts a placed command (and the session, if this `exec` created it) in
/// the root's totals, and in the instance's counters unless a supervisor
/// keeps them. Waits for the counters' lock briefly; the command starts
/// either way.
fn count_exec(root: &Root, instance: &Cgroup, session_created: bool) {
    let delta = crate::Counters {
        sessions_opened: u64::from(session_created),
        processes_spawned: 1,
        ..crate::Counters::default()
    };
    let own = Some(instance).filter(|i| !totals::is_supervisor_instance(i));
    if let Err(e) = totals::add_blocking(root.cgroup(), own, &delta, totals::EXEC_LOCK_WAIT) {
        tracing::debug!(error = %e, "this command was not counted");
    }
}

/// The environment variable through which a gateway declares itself the
/// owner of every `procscope exec` below it, whatever intermediaries
/// (watchdogs, `sh -c`, `npx`) stand between: `PROCSCOPE_OWNER=<its pid>`.
pub const OWNER_ENV: &str = "PROCSCOPE_OWNER";

/// The owner named by [`OWNER_ENV`], if it is set: a positive pid
/// (surrounding whitespace ignored).
///
/// # Errors
/// [`Error::OwnerMalformed`] when it is set but empty, not a number, or not
/// positive.
pub fn owner_from_env() -> Result<Option<i32>> {
    let Some(raw) = std::env::var_os(OWNER_ENV) else { return Ok(None) };
    let value = raw.to_string_lossy().into_owned();
    let malformed = |reason| Error::OwnerMalformed { value: value.clone(), reason };
    let text = raw.to_str().ok_or_else(|| malformed("it is not UTF-8"))?.trim();
    if text.is_empty() {
        return Err(malformed(
            "it is empty (a config that passes `${PROCSCOPE_OWNER}` on from a gateway that does not set it \
             gives an empty value)",
        ));
    }
    match text.parse::<i64>() {
        Ok(p) if p > 0 && p <= i64::from(i32::MAX) => Ok(Some(p as i32)),
        Ok(_) => Err(malformed("a pid is a number from 1 to 2147483647")),
        Err(_) => Err(malformed("it is not a decimal number")),
    }
}

/// Metadata on an instance made by `exec`: its owner's ancestors, as
/// `pid:start` separated by spaces, nearest first.
pub(crate) const XATTR_LINEAGE: &str = "lineage";

/// The ancestors of `pid` (not itself), nearest first, up to but not
/// including pid 1.
fn lineage(pid: i32) -> String {
    let mut out = Vec::new();
    let mut p = pid;
    for _ in 0..64 {
        let Some(parent) = parent_of(p).filter(|pp| *pp > 1) else { break };
        let Some(start) = crate::instance::start_time(parent) else { break };
        out.push(format!("{parent}:{start}"));
        p = parent;
    }
    out.join(" ")
}

/// The parent pid of `pid` (`/proc/<pid>/stat` field 4).
pub(crate) fn parent_of(pid: i32) -> Option<i32> {
    instance::stat_field(pid, 4)?.parse().ok()
}

/// Whether `ancestor` (pid and start time) is an ancestor of the calling
/// process.
pub fn is_ancestor(ancestor: Owner) -> bool {
    let mut p = rustix::process::getpid().as_raw_nonzero().get();
    for _ in 0..256 {
        match parent_of(p) {
            Some(pp) if pp == ancestor.pid => return ancestor.is_alive(),
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

/// Whether `instance`'s recorded lineage names `who`: it was made by an
/// `exec` below `who`, through intermediaries.
pub fn descends_from(instance: &Cgroup, who: Owner) -> bool {
    // Pids of another pid namespace name other processes.
    if !instance::same_pid_namespace(instance) {
        return false;
    }
    let needle = format!("{}:{}", who.pid, who.start);
    instance.meta(XATTR_LINEAGE).ok().flatten().is_some_and(|l| l.split(' ').any(|a| a == needle))
}

/// The cgroups from the top of our tree down to `instance`: the cgroup2 mount
/// root when the root was created under it, the root, the instance.
fn chain(root: &Root, instance: &Cgroup) -> Result<Vec<Cgroup>> {
    let mut chain = Vec::new();
    if root.kind() == RootKind::Owned
        && let Some(parent) = root.path().parent()
    {
        chain.push(Cgroup::open(parent)?);
    }
    chain.push(Cgroup::open(root.path())?);
    chain.push(Cgroup::open(instance.path())?);
    Ok(chain)
}

/// Enables `needed` controllers down `chain`, after checking at the top that all
/// are available, so that a failure changes nothing.
pub(crate) fn enable_chain<C: std::borrow::Borrow<Cgroup>>(chain: &[C], needed: &[&'static str]) -> Result<()> {
    let Some(top) = chain.first() else { return Ok(()) };
    let top = top.borrow();
    let available = top.controllers()?;
    if let Some(c) = needed.iter().find(|c| !available.iter().any(|a| a == *c)) {
        return Err(Error::ControllerUnavailable {
            controller: c,
            path: top.path().join(crate::cgroup::files::CONTROLLERS),
        });
    }
    for cg in chain {
        cg.borrow().enable_controllers(needed)?;
    }
    Ok(())
}

/// Finds session `id` in `instance`, if procscope made it.
pub fn find_session(instance: &Cgroup, id: &str) -> Result<Option<Cgroup>> {
    validate_session_id(id)?;
    match instance.open_child(&format!("s-{id}")) {
        Ok(cg) if instance::kind_of(&cg).as_deref() == Some("session") => Ok(Some(cg)),
        Ok(_) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Ends the given sessions of `instance` in parallel (SIGTERM, grace,
/// `cgroup.kill`, `rmdir`), then removes the instance if it is left empty.
/// Those marked orphaned that still ran something count as leaks prevented.
///
/// They are counted as closed by their owner (`procscope end`) in the
/// root's totals, and in the instance's counters unless a supervisor keeps
/// them ([`metrics`](crate::metrics)).
pub async fn end_sessions(root: &Root, instance: Arc<Cgroup>, sessions: Vec<Cgroup>, grace: Duration) -> SweepReport {
    let report = end_sessions_uncounted(&instance, sessions, grace).await;
    totals::count_report(root.cgroup(), Some(&instance), &report, true).await;
    remove_if_empty(root, &instance);
    report
}

/// [`end_sessions`] without counting them and without removing the instance.
async fn end_sessions_uncounted(instance: &Arc<Cgroup>, sessions: Vec<Cgroup>, grace: Duration) -> SweepReport {
    let targets = sessions
        .into_iter()
        .map(|cg| Target {
            id: cg.meta(XATTR_SESSION).ok().flatten().unwrap_or_else(|| cg.name().to_owned()),
            leak: if cg.meta(XATTR_STATE).ok().flatten().as_deref() == Some("orphaned") {
                Leak::Abandoned
            } else {
                Leak::No
            },
            place: Place::Cgroup { parent: Arc::clone(instance), cgroup: Arc::new(cg) },
            children: Vec::new(),
            on_done: None,
        })
        .collect();
    crate::sweep::sweep_targets(targets, grace).await
}

/// Removes an instance that has no sessions left (best effort: another process
/// may be adding one).
pub fn remove_if_empty(root: &Root, instance: &Cgroup) {
    if instance.children().is_ok_and(|c| c.is_empty()) {
        let _ = root.cgroup().remove_child(instance.name());
    }
}

/// Which sessions [`sweep`] ends, across every instance under a root (the
/// `procscope sweep` command). A supervisor's own sweeps take a
/// [`SweepScope`](crate::SweepScope) instead, which never reaches past that
/// supervisor's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Instances whose owner is gone, with all their sessions (`sweep`).
    Stale,
    /// Stale instances, plus the sessions that live owners have marked
    /// orphaned (`sweep --orphans`).
    StaleAndOrphaned,
    /// Every instance and session procscope made under the root, live
    /// owners' included (`sweep --all`).
    Everything,
}

/// Sweeps the tree under `root` from outside any supervisor. What it ends
/// is added to the root's totals ([`metrics`](crate::metrics)): the stale
/// instances as one sweep (that of [`recover`](crate::recover)), the
/// sessions of live owners as another.
pub async fn sweep(root: &Root, scope: Scope, grace: Duration) -> Result<SweepReport> {
    let report = sweep_scope(root, scope, grace).await;
    let name = match scope {
        Scope::Stale => "stale",
        Scope::StaleAndOrphaned => "orphans",
        Scope::Everything => "all",
    };
    crate::events::sweep(name, root.path(), report.as_ref());
    report
}

/// [`sweep`], without its event.
async fn sweep_scope(root: &Root, scope: Scope, grace: Duration) -> Result<SweepReport> {
    let start = tokio::time::Instant::now();
    let mut report = crate::supervisor::recover(root, None, grace).await?;
    if scope != Scope::Stale {
        let mut live = SweepReport::default();
        let me = Owner::this_process().ok();
        for info in list(root)? {
            if !info.owner_alive {
                continue;
            }
            let instance = Arc::new(Cgroup::open(&info.path)?);
            let mut sessions = Vec::new();
            for s in &info.sessions {
                let wanted = scope == Scope::Everything || s.state == SessionState::Orphaned;
                if wanted && let Ok(cg) = Cgroup::open(&s.path) {
                    sessions.push(cg);
                }
            }
            if !sessions.is_empty() {
                live.merge(end_sessions_uncounted(&instance, sessions, grace).await);
                remove_if_empty(root, &instance);
            }
            if scope == Scope::Everything && Some(info.owner_pid) != me.map(|m| m.pid) {
                let outcome = crate::sweep::end_cgroup(root.cgroup(), &instance, &[], grace).await;
                if let Ok(t) = outcome {
                    live.removed += usize::from(t.removed);
                }
            }
        }
        totals::count_report(root.cgroup(), None, &live, false).await;
        report.merge(live);
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Ends one cgroup from outside a supervisor: SIGTERM + SIGCONT to every
/// process, up to `grace` for them to exit, `cgroup.kill`, then `rmdir` from
/// `parent`. Processes that are our own children are left for the caller to
/// reap.
pub async fn end(parent: &Cgroup, cg: &Cgroup, grace: Duration) -> Result<crate::sweep::Termination> {
    crate::sweep::end_cgroup(parent, cg, &[], grace).await
}
