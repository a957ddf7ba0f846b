//! `procscope end`, `ps` and `sweep`: acting on the tree from outside.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use procscope::tree::{self, Scope};
use procscope::{Error, Owner};

use super::{FAILED, fail, locate_root_or_held, report_json};

/// The owner whose sessions `end` acts on: `--owner`, else
/// `$PROCSCOPE_OWNER`, else our parent process (the gateway that runs
/// `procscope end`).
fn owner_of(pid: Option<i32>) -> Result<Owner, Error> {
    let env = tree::owner_from_env()?;
    let pid = match pid.or(env) {
        Some(p) => p,
        None => rustix::process::getppid().map(|p| p.as_raw_nonzero().get()).unwrap_or(1),
    };
    Owner::of(pid).ok_or_else(|| Error::InvalidInput {
        what: "owner",
        value: pid.to_string(),
        fix: "no such process; give the pid of the gateway whose sessions to end".into(),
    })
}

/// The instances `end` looks in: the owner's own, and those that `exec`s
/// below it made through intermediaries (their lineage names the owner).
fn instances_of(root: &procscope::Root, owner: Owner) -> Vec<procscope::Cgroup> {
    let own = owner.instance_name();
    let names = root.cgroup().children().unwrap_or_default();
    names
        .iter()
        .filter(|n| n.starts_with("i-"))
        .filter_map(|n| root.cgroup().open_child(n).ok())
        .filter(|cg| cg.name() == own || tree::descends_from(cg, owner))
        .collect()
}

pub async fn end(
    root: Option<PathBuf>,
    grace: Duration,
    owner: Option<i32>,
    missing_ok: bool,
    json: bool,
    ids: Vec<String>,
) -> i32 {
    for id in &ids {
        if let Err(e) = procscope::names::validate_session_id(id) {
            return fail("end", &e);
        }
    }
    let owner = match owner_of(owner) {
        Ok(o) => o,
        Err(e) => return fail("end", &e),
    };
    // `--root` names a cgroup root: only its sessions. Without it, the
    // commands `exec` holds (where no cgroup2 can be written) too.
    let run = root.is_none().then(procscope::held::run_dir);
    let root = match locate_root_or_held(root) {
        Ok(r) => r,
        Err(e) => return fail("end", &e),
    };
    let mut not_found = Vec::new();
    let instances = root.as_ref().map(|r| instances_of(r, owner)).unwrap_or_default();
    let mut found: Vec<Vec<procscope::Cgroup>> = instances.iter().map(|_| Vec::new()).collect();
    let mut held = Vec::new();
    for id in &ids {
        let mut any = false;
        for (i, instance) in instances.iter().enumerate() {
            match tree::find_session(instance, id) {
                Ok(Some(cg)) => {
                    any = true;
                    found[i].push(cg);
                }
                Ok(None) => {}
                Err(e) => return fail("end", &e),
            }
        }
        // Commands that `exec` holds (where no cgroup2 can be written).
        let execs = run.as_deref().map(|run| procscope::held::of_owner(run, owner, id)).unwrap_or_default();
        any |= !execs.is_empty();
        held.extend(execs);
        if !any {
            not_found.push(id.clone());
        }
    }
    let mut report = procscope::SweepReport::default();
    if let Some(root) = &root {
        for (instance, sessions) in instances.into_iter().zip(found) {
            if !sessions.is_empty() {
                report.merge(tree::end_sessions(root, Arc::new(instance), sessions, grace).await);
            }
        }
    }
    if !held.is_empty() {
        report.merge(procscope::held::end(held, grace).await);
    }
    if json {
        let mut v = report_json(&report);
        v["not_found"] = serde_json::json!(not_found);
        println!("{v}");
    } else {
        println!("{report}");
    }
    for e in &report.errors {
        eprintln!("session {}: {}", e.session, e.error);
    }
    if !not_found.is_empty() && !missing_ok {
        eprintln!(
            "procscope end: no session {} of pid {} (or of an exec below it); --missing-ok accepts that",
            not_found.join(", "),
            owner.pid
        );
        return FAILED;
    }
    if report.errors.is_empty() { 0 } else { FAILED }
}

pub async fn sweep(root: Option<PathBuf>, orphans: bool, all: bool, force: bool, grace: Duration, json: bool) -> i32 {
    // `--root` names a cgroup root: only its sessions (as for `end`).
    let run = root.is_none().then(procscope::held::run_dir);
    let root = match locate_root_or_held(root) {
        Ok(r) => r,
        Err(e) => return fail("sweep", &e),
    };
    // `--all` without `--force` spares live owners: a running gateway keeps
    // its sessions, and is named as skipped.
    let scope = match (all, force, orphans) {
        (true, true, _) => Scope::Everything,
        (true, false, _) | (false, _, true) => Scope::StaleAndOrphaned,
        _ => Scope::Stale,
    };
    let mut report = match &root {
        Some(root) => match tree::sweep(root, scope, grace).await {
            Ok(r) => r,
            Err(e) => return fail("sweep", &e),
        },
        None => procscope::SweepReport::default(),
    };
    // Commands that `exec` holds (where no cgroup2 can be written).
    if let Some(run) = &run {
        report.merge(procscope::held::sweep(run, scope, grace).await);
    }
    let skipped: Vec<(String, i32, usize, bool)> = if all && !force {
        root.as_ref()
            .and_then(|r| tree::list(r).ok())
            .unwrap_or_default()
            .into_iter()
            .chain(run.as_deref().map(procscope::held::list).unwrap_or_default())
            .filter(|i| i.owner_alive)
            .map(|i| (i.name.clone(), i.owner_pid, i.sessions.len(), i.foreign_pid_namespace))
            .collect()
    } else {
        Vec::new()
    };
    if json {
        let mut v = report_json(&report);
        v["skipped_live"] = serde_json::json!(
            skipped
                .iter()
                .map(|(name, pid, n, foreign)| serde_json::json!({
                    "instance": name, "owner_pid": pid, "sessions": n, "foreign_pid_namespace": foreign,
                }))
                .collect::<Vec<_>>()
        );
        println!("{v}");
    } else {
        println!("{report}");
    }
    for e in &report.errors {
        eprintln!("session {}: {}", e.session, e.error);
    }
    for (name, pid, n, foreign) in &skipped {
        if *foreign {
            eprintln!(
                "skipped {name}: its owner (pid {pid} of another pid namespace, a container's) cannot be checked \
                 from here and counts as alive, with {n} session(s); run the sweep inside that namespace, or \
                 --force ends it too"
            );
        } else {
            eprintln!("skipped {name}: its owner (pid {pid}) is alive, with {n} session(s); --force ends it too");
        }
    }
    if report.errors.is_empty() { 0 } else { FAILED }
}
