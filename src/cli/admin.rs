//! `procscope end`, `ps` and `sweep`: acting on the tree from outside.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use procscope::tree::{self, Scope};
use procscope::{Error, Owner};

use super::{FAILED, fail, human_age, human_bytes, locate_root, print_table, report_json};

/// The owner whose sessions `end` acts on: `--owner`, else our parent process
/// (the gateway that runs `procscope end`).
fn owner_of(pid: Option<i32>) -> Result<Owner, Error> {
    let pid = match pid {
        Some(p) => p,
        None => rustix::process::getppid().map(|p| p.as_raw_nonzero().get()).unwrap_or(1),
    };
    let start = procscope::start_time(pid).ok_or_else(|| Error::InvalidInput {
        what: "owner",
        value: pid.to_string(),
        fix: "no such process; give the pid of the gateway whose sessions to end".into(),
    })?;
    Ok(Owner { pid, start })
}

pub async fn end(root: Option<PathBuf>, grace: Duration, owner: Option<i32>, json: bool, ids: Vec<String>) -> i32 {
    for id in &ids {
        if let Err(e) = procscope::names::validate_session_id(id) {
            return fail("end", &e);
        }
    }
    let root = match locate_root(root) {
        Ok(r) => r,
        Err(e) => return fail("end", &e),
    };
    let owner = match owner_of(owner) {
        Ok(o) => o,
        Err(e) => return fail("end", &e),
    };
    let mut found = Vec::new();
    let mut not_found = Vec::new();
    let instance = root.cgroup().open_child(&owner.instance_name()).ok();
    for id in &ids {
        match instance.as_ref().map(|i| tree::find_session(i, id)) {
            Some(Ok(Some(cg))) => found.push(cg),
            Some(Err(e)) => return fail("end", &e),
            _ => not_found.push(id.clone()),
        }
    }
    let report = match instance {
        Some(instance) if !found.is_empty() => tree::end_sessions(&root, Arc::new(instance), found, grace).await,
        _ => procscope::SweepReport::default(),
    };
    if json {
        let mut v = report_json(&report);
        v["not_found"] = serde_json::json!(not_found);
        println!("{v}");
    } else {
        println!("{report}");
        if !not_found.is_empty() {
            println!("not found (nothing to end): {}", not_found.join(", "));
        }
        for e in &report.errors {
            eprintln!("session {}: {}", e.session, e.error);
        }
    }
    if report.errors.is_empty() { 0 } else { FAILED }
}

pub async fn ps(root: Option<PathBuf>, json: bool) -> i32 {
    let root = match locate_root(root) {
        Ok(r) => r,
        Err(e) => return fail("ps", &e),
    };
    let instances = match tree::list(&root) {
        Ok(i) => i,
        Err(e) => return fail("ps", &e),
    };
    if json {
        let v = serde_json::json!({ "root": root.path(), "instances": instances });
        println!("{v}");
        return 0;
    }
    println!("root: {}", root.path().display());
    let mut rows = Vec::new();
    for i in &instances {
        let owner = format!("{}{}", i.owner_pid, if i.owner_alive { "" } else { " (gone)" });
        if i.sessions.is_empty() {
            let state = if i.owner_alive { "active" } else { "stale" };
            rows.push(vec![
                i.name.clone(),
                owner.clone(),
                state.into(),
                "-".into(),
                "0".into(),
                "-".into(),
                human_age(i.age_secs),
                String::new(),
            ]);
        }
        for s in &i.sessions {
            let mut cmd = s.command.clone().unwrap_or_default();
            if cmd.chars().count() > 60 {
                cmd = cmd.chars().take(57).collect::<String>() + "...";
            }
            rows.push(vec![
                i.name.clone(),
                owner.clone(),
                s.state.as_str().into(),
                s.id.clone(),
                s.processes.to_string(),
                human_bytes(s.memory_bytes),
                human_age(s.age_secs),
                cmd,
            ]);
        }
    }
    if rows.is_empty() {
        println!("no procscope instances");
    } else {
        print_table(&["INSTANCE", "OWNER", "STATE", "SESSION", "PROCS", "MEMORY", "AGE", "COMMAND"], &rows);
    }
    0
}

pub async fn sweep(root: Option<PathBuf>, orphans: bool, all: bool, grace: Duration, json: bool) -> i32 {
    let root = match locate_root(root) {
        Ok(r) => r,
        Err(e) => return fail("sweep", &e),
    };
    let scope = if all {
        Scope::All
    } else if orphans {
        Scope::Orphans
    } else {
        Scope::Stale
    };
    let report = match tree::sweep(&root, scope, grace).await {
        Ok(r) => r,
        Err(e) => return fail("sweep", &e),
    };
    if json {
        println!("{}", report_json(&report));
    } else {
        println!("{report}");
        for e in &report.errors {
            eprintln!("session {}: {}", e.session, e.error);
        }
    }
    if report.errors.is_empty() { 0 } else { FAILED }
}
