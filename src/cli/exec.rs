//! `procscope exec`: run a command in a session cgroup, for gateways in any
//! language.
//!
//! The tree: `<root>/i-<gateway pid>-<start>/s-<session>/p-<wrapper pid>`. The
//! instance belongs to the gateway (the wrapper's parent), so every `exec` a
//! gateway starts with the same `--session` lands in the same session, and the
//! gateway's death makes them all stale. Each wrapper has a leaf of its own, so
//! it ends exactly what it started; `procscope end` ends the whole session.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use procscope::cgroup::limits::{CpuMax, parse_bytes, parse_count, parse_cpu_max, parse_duration};
use procscope::{Cgroup, Command, Error, Limits, Owner, PidFd, Root, Sealing, Stdio, tree};
use tokio::signal::unix::{SignalKind, signal};

use super::USAGE;

/// Exit code: procscope failed before the command ran.
const WRAPPER_FAILED: i32 = 125;
/// Exit code: the command could not be executed.
const CANNOT_EXECUTE: i32 = 126;
/// Exit code: the command was not found.
const NOT_FOUND: i32 = 127;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The cgroup under which procscope keeps its tree [default: the caller's
    /// delegated cgroup, else <cgroup2 mount>/procscope]
    #[arg(long, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Session to join or create; several `exec`s of one gateway with the same id
    /// share it [default: a new session for this command]
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// memory.max of the session, e.g. 512M
    #[arg(long, allow_hyphen_values = true, value_name = "BYTES", value_parser = |s: &str| parse_bytes("memory.max", s).map_err(|e| e.to_string()))]
    memory_max: Option<u64>,
    /// memory.high of the session, e.g. 384M
    #[arg(long, allow_hyphen_values = true, value_name = "BYTES", value_parser = |s: &str| parse_bytes("memory.high", s).map_err(|e| e.to_string()))]
    memory_high: Option<u64>,
    /// pids.max of the session
    #[arg(long, allow_hyphen_values = true, value_name = "N", value_parser = |s: &str| parse_count("pids.max", s).map_err(|e| e.to_string()))]
    pids_max: Option<u64>,
    /// cpu.max of the session: a share of one CPU (0.5, 50%) or "QUOTA PERIOD" in µs
    #[arg(long, allow_hyphen_values = true, value_name = "QUOTA", value_parser = |s: &str| parse_cpu_max(s).map_err(|e| e.to_string()))]
    cpu_max: Option<CpuMax>,
    /// How long the command's processes get between SIGTERM and cgroup.kill
    #[arg(long, allow_hyphen_values = true, default_value = "2s", value_parser = |s: &str| parse_duration("grace", s).map_err(|e| e.to_string()))]
    grace: Duration,
    /// Run the command as this uid (needs --gid; supplementary groups are dropped)
    #[arg(long, requires = "gid", conflicts_with = "transient_user")]
    uid: Option<u32>,
    /// Run the command with this gid (needs --uid)
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    /// Run the command as a transient user: a uid and gid of its own from
    /// 2063597568..2063663103 that own no file, released when the command ends
    /// (like systemd's DynamicUser=). For untrusted servers that need no files
    /// of this user
    #[arg(long)]
    transient_user: bool,
    /// Do not seal the command into its session. This gives up containment
    /// against a hostile command: running as uid 0 it can then leave its session
    /// and write any cgroup file
    #[arg(long, conflicts_with = "seal")]
    no_seal: bool,
    /// Require sealing: fail (exit 125) rather than run the command unsealed
    /// [default: sealed whenever procscope runs with CAP_SYS_ADMIN]
    #[arg(long)]
    seal: bool,
    /// The process that owns the session [default: the parent process]
    #[arg(long, value_name = "PID")]
    owner: Option<i32>,
    /// The command and its arguments, after `--`
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn run(a: ExecArgs) -> i32 {
    super::run_async(exec(a))
}

fn wrapper_fail(e: &Error) -> i32 {
    eprintln!("procscope exec: {e}");
    if super::exit_code(e) == USAGE { USAGE } else { WRAPPER_FAILED }
}

/// Why the wrapper stopped waiting.
enum Ending {
    Exited(std::process::ExitStatus),
    Signal(&'static str),
    ParentDied,
}

async fn exec(a: ExecArgs) -> i32 {
    let limits =
        Limits { memory_max: a.memory_max, memory_high: a.memory_high, pids_max: a.pids_max, cpu_max: a.cpu_max };
    if a.command[0].is_empty() {
        eprintln!("procscope exec: the command is empty; give the program to run after --");
        return USAGE;
    }
    if let Some(id) = &a.session
        && let Err(e) = procscope::names::validate_session_id(id)
    {
        return wrapper_fail(&e);
    }
    if let Err(e) = limits.validate() {
        return wrapper_fail(&e);
    }
    let root = match &a.root {
        Some(p) => Root::open(p),
        None => Root::discover(),
    };
    let root = match root {
        Ok(r) => r,
        Err(e) => return wrapper_fail(&e),
    };
    // Hold the parent's pidfd; check afterwards that the parent is still ours,
    // so the pidfd cannot name a recycled pid.
    let ppid = rustix::process::getppid().map(|p| p.as_raw_nonzero().get()).unwrap_or(1);
    let parent = match rustix::process::Pid::from_raw(ppid).map(PidFd::open) {
        Some(Ok(fd)) if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(ppid) => fd,
        _ => {
            eprintln!("procscope exec: the parent process is already gone; not starting the command");
            return WRAPPER_FAILED;
        }
    };
    let owner_pid = a.owner.unwrap_or(ppid);
    let Some(start) = procscope::start_time(owner_pid) else {
        eprintln!("procscope exec: no process {owner_pid} (--owner)");
        return USAGE;
    };
    let owner = Owner { pid: owner_pid, start };
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let id = a.session.clone().unwrap_or_else(|| format!("exec-{me}"));

    // Signal handlers before the command starts: a SIGTERM that arrives at once
    // must end the command, not the wrapper.
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        eprintln!("procscope exec: cannot install signal handlers");
        return WRAPPER_FAILED;
    };
    let (instance, session, leaf) = match place(&root, owner, &id, &limits, me) {
        Ok(t) => t,
        Err(e) => return wrapper_fail(&e),
    };
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]).stdin(Stdio::Inherit).stdout(Stdio::Inherit).stderr(Stdio::Inherit);
    if let (Some(uid), Some(gid)) = (a.uid, a.gid) {
        cmd.uid(uid).gid(gid);
    }
    cmd.transient_user(a.transient_user);
    cmd.sealing(match (a.seal, a.no_seal) {
        (true, _) => Sealing::Required,
        (_, true) => Sealing::Off,
        _ => Sealing::Auto,
    });
    let mut child = match cmd.spawn_in(&leaf) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("procscope exec: {e}");
            let _ = session.remove_child(leaf.name());
            clean_up(&root, &instance, &session);
            return match &e {
                Error::ProgramNotFound { .. } => NOT_FOUND,
                Error::Spawn { stage: procscope::ChildStage::Exec, source, .. } => match source.raw_os_error() {
                    Some(libc::ENOENT) => NOT_FOUND,
                    _ => CANNOT_EXECUTE,
                },
                e => wrapper_fail(e),
            };
        }
    };
    // The command has the stdio fds now; the wrapper must not keep the pipes
    // open (a reader waits for EOF until every writer is gone).
    if let Ok(null) = std::fs::File::options().read(true).write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }

    let ending = {
        tokio::select! {
            s = child.wait() => match s {
                Ok(s) => Ending::Exited(s),
                Err(_) => Ending::Signal("wait failed"),
            },
            _ = term.recv() => Ending::Signal("SIGTERM"),
            _ = int.recv() => Ending::Signal("SIGINT"),
            _ = hup.recv() => Ending::Signal("SIGHUP"),
            _ = parent.exited() => Ending::ParentDied,
        }
    };
    match &ending {
        Ending::Exited(_) => {}
        Ending::Signal(why) => tracing_note(&format!("{why}: ending the command")),
        Ending::ParentDied => tracing_note("the parent process died: ending the command"),
    }
    // What the command left (or the command itself): SIGTERM, grace, kill, rmdir.
    if let Err(e) = tree::end(&session, &leaf, a.grace).await {
        eprintln!("procscope exec: ending the command's processes: {e}");
    }
    let status = match ending {
        Ending::Exited(s) => s,
        _ => match child.wait().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("procscope exec: {e}");
                return WRAPPER_FAILED;
            }
        },
    };
    clean_up(&root, &instance, &session);
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => WRAPPER_FAILED,
    }
}

/// Opens or creates instance → session → this wrapper's leaf, retrying if a
/// concurrent wrapper removed an empty session or instance in between.
fn place(root: &Root, owner: Owner, id: &str, limits: &Limits, me: i32) -> Result<(Cgroup, Cgroup, Cgroup), Error> {
    let mut last = None;
    for _ in 0..8 {
        let attempt = (|| {
            let instance = tree::open_or_create_instance(root, owner)?;
            let session = tree::open_or_create_session(root, &instance, id, limits)?;
            let leaf = session.create_child(&format!("p-{me}"))?;
            leaf.set_meta("kind", "exec")?;
            Ok::<_, Error>((instance, session, leaf))
        })();
        match attempt {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => last = Some(e),
            other => return other,
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Removes the session once it is empty, and the instance once it has no
/// sessions (another wrapper may still use either: then they stay).
fn clean_up(root: &Root, instance: &Cgroup, session: &Cgroup) {
    if session.children().is_ok_and(|c| c.is_empty()) {
        let _ = instance.remove_child(session.name());
    }
    tree::remove_if_empty(root, instance);
}

fn tracing_note(msg: &str) {
    if std::env::var_os("PROCSCOPE_DEBUG").is_some() {
        eprintln!("procscope exec: {msg}");
    }
}
