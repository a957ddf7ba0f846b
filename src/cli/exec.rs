//! `procscope exec`: become a command inside a session cgroup, for gateways in
//! any language.
//!
//! `procscope exec` places itself, then *becomes* the command (`execve`, as
//! `exec` in a shell and `systemd-run --scope` do): the gateway holds the
//! command's own pid, and sees its own signals, exit status, stdio and
//! terminal. No procscope process stays per command. The tree:
//! `<root>/i-<owner pid>-<start>/s-<session>/p-<pid>-<start>-<grace ms>`. The
//! instance belongs to the owner (`--owner`, else `$PROCSCOPE_OWNER`, else the
//! parent process), so every `exec` below one gateway with the same
//! `--session` lands in the same session. The instance's guardian (one per
//! instance, started by the first `exec`) ends what a command leaves behind
//! when its main process exits, and everything when the owner dies.
//!
//! Where no cgroup2 can be written (a default container), `exec` holds the
//! command instead and stays in front of it (`exec/held.rs`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use procscope::cgroup::limits::{CpuMax, parse_bytes, parse_count, parse_cpu_max, parse_duration, parse_nesting};
use procscope::{ChildStage, Command, Error, Limits, Owner, PidFd, Root, Sealing, tree};

use super::USAGE;

mod held;

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
    /// cgroup.max.depth of a new session: levels of cgroups its commands may
    /// make below their own (default 16; "max" for no cap)
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_nesting("cgroup.max.depth", s).map_err(|e| e.to_string()))]
    max_depth: Option<u32>,
    /// cgroup.max.descendants of a new session: cgroups in all, one per
    /// command included (default 1024; "max" for no cap)
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_nesting("cgroup.max.descendants", s).map_err(|e| e.to_string()))]
    max_descendants: Option<u32>,
    /// How long what the command leaves behind (setsid helpers, daemons) gets
    /// between SIGTERM and cgroup.kill once the command itself has exited
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
    /// [default: sealed with CAP_SYS_ADMIN, failing if it cannot be; without
    /// it, sealed through a user namespace where unprivileged ones are
    /// allowed, else unsealed with a warning]
    #[arg(long)]
    seal: bool,
    /// The process that owns the session: it must be an ancestor of this one
    /// [default: $PROCSCOPE_OWNER, else the parent process; the command itself
    /// when its parent is outside its PID namespace, as for a container's PID 1]
    #[arg(long, value_name = "PID")]
    owner: Option<i32>,
    /// How to contain the command: in a session cgroup, or held by a
    /// subreaper with `exec` staying in front of it (where no cgroup2 can be
    /// written; see the README's "Containers") [default: cgroups where
    /// cgroup2 can be written, else holders]
    #[arg(long, value_enum, value_name = "HOW")]
    containment: Option<ContainmentArg>,
    /// The command and its arguments, after `--`
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainmentArg {
    Cgroups,
    Holders,
}

pub fn run(a: ExecArgs) -> i32 {
    let limits = Limits {
        memory_max: a.memory_max,
        memory_high: a.memory_high,
        pids_max: a.pids_max,
        cpu_max: a.cpu_max,
        max_depth: a.max_depth,
        max_descendants: a.max_descendants,
    };
    if a.command[0].is_empty() {
        eprintln!("procscope exec: the command is empty; give the program to run after --");
        return USAGE;
    }
    if let Some(id) = &a.session
        && let Err(e) = procscope::names::validate_session_id(id)
    {
        return fail(&e);
    }
    if let Err(e) = limits.validate() {
        return fail(&e);
    }
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]).transient_user(a.transient_user);
    if let (Some(uid), Some(gid)) = (a.uid, a.gid) {
        cmd.uid(uid).gid(gid);
    }
    cmd.sealing(match (a.seal, a.no_seal) {
        (true, _) => Sealing::Required,
        (_, true) => Sealing::Off,
        _ => Sealing::Auto,
    });
    // Before anything is placed: a command that cannot run keeps 127 / 126.
    if let Err(e) = cmd.check() {
        return exec_failure_code(&e);
    }
    let (owner, owner_fd) = match owner(a.owner) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let id = a.session.clone().unwrap_or_else(|| format!("exec-{me}"));
    if a.containment == Some(ContainmentArg::Holders) {
        return held::run(cmd, owner, owner_fd, id, limits, a.grace, a.seal);
    }
    let root = match &a.root {
        Some(p) => Root::open(p),
        None => Root::discover(),
    };
    let root = match root {
        // No cgroup2 can be written here (a default container): the command
        // is held instead, unless cgroups (or a cgroup root) were asked for.
        Err(e @ (Error::CgroupReadOnly { .. } | Error::NoCgroup2 { .. }))
            if a.containment.is_none() && a.root.is_none() =>
        {
            tracing::warn!(
                event = "exec.holders",
                reason = %e,
                "no cgroup2 can be written here: the command is contained with a holder, and exec stays in front of it"
            );
            return held::run(cmd, owner, owner_fd, id, limits, a.grace, a.seal);
        }
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    // The placing's events (`exec.place`, `guardian.start`) name the program
    // through this span.
    let _span = tracing::info_span!("exec", program = %a.command[0].to_string_lossy()).entered();
    let cgroup = match tree::place_command(&root, owner, &id, &limits, a.grace) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // Returns only on failure; the guardian removes the cgroup once we exit.
    let e = cmd.exec_in(&cgroup, Some(&owner_fd));
    exec_failure_code(&e)
}

/// 127 for a command (or its script's interpreter) not found, 126 for one
/// that cannot be executed (not executable, or in no format the kernel
/// runs), 125 for any other failure before the command ran.
fn exec_failure_code(e: &Error) -> i32 {
    let code = match e {
        Error::ProgramNotFound { .. } | Error::InterpreterNotFound { .. } => NOT_FOUND,
        Error::NotExecutableFormat { .. } => CANNOT_EXECUTE,
        Error::Spawn { stage: ChildStage::Exec, source, .. } => match source.raw_os_error() {
            Some(libc::ENOENT) => NOT_FOUND,
            _ => CANNOT_EXECUTE,
        },
        e => return fail(e),
    };
    eprintln!("procscope exec: {e}");
    code
}

/// 2 for invalid arguments on the command line; 125 for any other failure,
/// a malformed `PROCSCOPE_OWNER` (from the environment, not the arguments)
/// included.
fn fail(e: &Error) -> i32 {
    eprintln!("procscope exec: {e}");
    match e {
        Error::OwnerMalformed { .. } => WRAPPER_FAILED,
        e if super::exit_code(e) == USAGE => USAGE,
        _ => WRAPPER_FAILED,
    }
}

/// This process as the owner of its own session (see [`owner`]).
fn own_owner() -> Result<(Owner, PidFd), Error> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let gone = |why: String| Error::OwnerUnusable { owner: "this process".into(), pid: me, why };
    let owner = Owner::of(me).ok_or_else(|| gone("its start time cannot be read".into()))?;
    let fd = PidFd::this_process().map_err(|e| gone(e.to_string()))?;
    Ok((owner, fd))
}

/// The owner of the session: `--owner`, else `$PROCSCOPE_OWNER`, else the
/// parent process (this process itself when its parent is outside its PID
/// namespace). It must be alive and an ancestor of this process, so that
/// its death is the gateway's.
fn owner(flag: Option<i32>) -> Result<(Owner, PidFd), Error> {
    // A malformed variable fails even under --owner: it would mislead every
    // other `exec` and `end` below the same gateway.
    let env = tree::owner_from_env()?;
    let (pid, what) = match (flag, env) {
        (Some(p), _) => (p, "--owner".to_owned()),
        (None, Some(p)) => (p, format!("{}={p}", tree::OWNER_ENV)),
        (None, None) => match rustix::process::getppid() {
            Some(p) => (p.as_raw_nonzero().get(), "parent".to_owned()),
            // No parent in our PID namespace: we are a container's PID 1 (or
            // started from outside it, as by `docker exec`). The command is
            // its own owner: its death ends its instance.
            None => return own_owner(),
        },
    };
    let gone = |why: &str| Error::OwnerUnusable { owner: what.clone(), pid, why: why.to_owned() };
    let owner = Owner::of(pid).ok_or_else(|| gone("no such process"))?;
    // Opened, then checked: the pidfd names the owner, not a recycled pid.
    let fd = PidFd::open(pid as u32).map_err(|_| gone("no such process"))?;
    if !tree::is_ancestor(owner) {
        return Err(gone("it is not an ancestor of this process; give the pid of the gateway that started it"));
    }
    Ok((owner, fd))
}
