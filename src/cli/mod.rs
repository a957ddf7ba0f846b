//! The subcommands. Each returns the process exit code.

pub mod admin;
pub mod demo;
pub mod demo_server;
pub mod doctor;
pub mod exec;
pub mod metrics;
pub mod ps;

use std::future::Future;
use std::path::PathBuf;

use procscope::{Error, Root};

/// Exit code: the operation failed.
pub const FAILED: i32 = 1;
/// Exit code: invalid arguments or input.
pub const USAGE: i32 = 2;

/// Runs a subcommand on a current-thread runtime.
pub fn run_async(fut: impl Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("procscope: cannot start the runtime: {e}");
            FAILED
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT (for the commands that repeat
/// until stopped); never, if the handlers cannot be installed.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Prints an error and returns its exit code: 2 for bad input, 1 otherwise.
pub fn fail(context: &str, e: &Error) -> i32 {
    eprintln!("procscope {context}: {e}");
    exit_code(e)
}

pub fn exit_code(e: &Error) -> i32 {
    match e {
        Error::InvalidName { .. }
        | Error::InvalidLimit { .. }
        | Error::InvalidInput { .. }
        | Error::OwnerMalformed { .. }
        | Error::NotCgroup2 { .. }
        | Error::NoCgroup2 { .. }
        | Error::NotDelegated { .. }
        | Error::CgroupReadOnly { .. }
        | Error::ControllerUnavailable { .. }
        | Error::ContainsSelf { .. }
        | Error::NeedsCgroup { .. } => USAGE,
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => USAGE,
        _ => FAILED,
    }
}

/// The root from `--root`, or the one this process would use, without moving
/// anything.
pub fn locate_root(root: Option<PathBuf>) -> Result<Root, Error> {
    match root {
        Some(p) => Root::open(p),
        None => Root::locate(),
    }
}

/// [`locate_root`], but `None` where no cgroup2 can be written (read-only
/// or missing) and no root was given: there, `exec` holds its commands, and
/// only the registry of [`procscope::held`] has sessions; also `None` where
/// no root has been made yet but commands are held.
pub fn locate_root_or_held(root: Option<PathBuf>) -> Result<Option<Root>, Error> {
    let given = root.is_some();
    match locate_root(root) {
        Ok(r) => Ok(Some(r)),
        Err(Error::CgroupReadOnly { .. } | Error::NoCgroup2 { .. }) if !given => Ok(None),
        // No root made yet, but commands held: those are the sessions.
        Err(Error::Io { source, .. })
            if !given
                && source.kind() == std::io::ErrorKind::NotFound
                && !procscope::held::entries(&procscope::held::run_dir()).is_empty() =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `3h12m`-style ages.
pub fn human_age(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 60 => format!("{s}s"),
        Some(s) if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        Some(s) if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        Some(s) => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A sweep report as JSON.
pub fn report_json(r: &procscope::SweepReport) -> serde_json::Value {
    serde_json::json!({
        "sessions": r.sessions,
        "leaks_prevented": r.leaks_prevented,
        "leaks_prevented_finished": r.leaks_prevented_finished,
        "terminated": r.terminated,
        "killed": r.killed,
        "removed": r.removed,
        "errors": r.errors.iter().map(|e| serde_json::json!({"session": e.session, "error": e.error})).collect::<Vec<_>>(),
        "limits_hit": r.limits_hit.iter().map(|h| serde_json::json!({"session": h.session, "oom_kills": h.oom_kills, "pids_max_hits": h.pids_max_hits})).collect::<Vec<_>>(),
        "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
    })
}
