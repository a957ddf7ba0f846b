//! The guardian: one small process per supervisor that kills the supervisor's
//! instance cgroup when the supervisor dies — even by SIGKILL, with no systemd.
//!
//! It is the `procscope` program run as `procscope __guardian PID START PATH`,
//! started outside the instance cgroup (in the supervisor's own cgroup, in a
//! session of its own so terminal signals do not reach it). It holds a pidfd of
//! the supervisor and its end of a pipe; it never starts a runtime and stays at
//! a few hundred KiB of its own memory.
//!
//! - The supervisor writes `bye` on shutdown: the guardian exits, touching nothing.
//! - The supervisor's pidfd becomes readable (it died): the guardian writes
//!   `cgroup.kill` of the instance, waits for `populated 0`, removes the session
//!   cgroups and the instance, and exits.
//!
//! Before acting it checks that the instance cgroup's recorded owner is the
//! supervisor it was started for, so it can never kill a stranger's cgroup.
//!
//! It is started with the gateway's capabilities and then takes an identity of
//! its own ([`GUARDIAN_UID`] as real and saved uid, effective uid 0, only
//! `CAP_KILL`): a child running as uid 0 can neither kill, stop nor ptrace it.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use crate::cgroup::Cgroup;
use crate::child::ChildCell;
use crate::command::{Command, Stdio};
use crate::error::{Error, Result};
use crate::instance::{Owner, start_time};
use crate::pidfd::PidFd;

/// The argument that selects guardian mode in the `procscope` program.
pub const GUARDIAN_ARG: &str = "__guardian";

/// How long the supervisor waits for the guardian to report ready.
const READY_WAIT: Duration = Duration::from_secs(5);

/// The supervisor's handle on its guardian.
pub(crate) struct Guardian {
    child: Arc<ChildCell>,
    control: std::fs::File,
}

impl Guardian {
    /// Starts the guardian and waits until it is watching.
    pub(crate) fn start(program: &Path, owner: Owner, instance: &Cgroup) -> Result<Guardian> {
        let pipe =
            |what| rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::io("pipe", what, e));
        let (control_r, control_w) = pipe("guardian control")?;
        let (ready_r, ready_w) = pipe("guardian ready")?;
        let mut cmd = Command::new(program);
        cmd.arg(GUARDIAN_ARG)
            .arg(owner.pid.to_string())
            .arg(owner.start.to_string())
            .arg(instance.path())
            .stdin(Stdio::Fd(control_r))
            .stdout(Stdio::Fd(ready_w))
            .setsid(true);
        let child = cmd.spawn_guardian()?;
        drop(cmd);
        let cell = Arc::clone(child.cell());
        drop(child);
        let mut ready = std::fs::File::from(ready_r);
        let mut fds = [PollFd::new(&ready, PollFlags::IN)];
        let timeout = rustix::time::Timespec { tv_sec: READY_WAIT.as_secs() as i64, tv_nsec: 0 };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        let mut buf = [0u8; 16];
        let n = if fds[0].revents().contains(PollFlags::IN) { ready.read(&mut buf).unwrap_or(0) } else { 0 };
        if !buf[..n].starts_with(b"ready") {
            let _ = cell.signal(rustix::process::Signal::KILL);
            return Err(Error::io(
                "start guardian",
                program,
                std::io::Error::other("it did not report ready (is it the procscope program?)"),
            ));
        }
        tracing::info!(pid = cell.pid(), "guardian watching this process");
        Ok(Guardian { child: cell, control: std::fs::File::from(control_w) })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.pid() as u32
    }

    /// Tells the guardian to exit without acting, and waits for it.
    pub(crate) async fn stop(mut self) {
        let _ = self.control.write_all(b"bye\n");
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await.is_err() {
            let _ = self.child.signal(rustix::process::Signal::KILL);
            let _ = self.child.wait().await;
        }
    }

    /// Tells the guardian to exit, without waiting (from `Drop`); the reaper
    /// collects it.
    pub(crate) fn dismiss(mut self) {
        let _ = self.control.write_all(b"bye\n");
    }
}

/// Finds the `procscope` program for the guardian: `$PROCSCOPE_BIN`, the running
/// executable if it is `procscope`, a `procscope` next to it or one directory
/// up (cargo's `deps/` and `examples/`), then `PATH`.
pub fn find_program() -> Option<PathBuf> {
    let executable = |p: &Path| {
        rustix::fs::stat(p)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() && st.st_mode & 0o111 != 0)
    };
    if let Some(p) = std::env::var_os("PROCSCOPE_BIN").map(PathBuf::from) {
        return executable(&p).then_some(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_name().is_some_and(|n| n == "procscope") {
            return Some(exe);
        }
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("procscope");
            if executable(&candidate) {
                return Some(candidate);
            }
        }
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("procscope")).find(|p| executable(p))
}

/// The guardian's main: `args` are `PID START INSTANCE_PATH`. Never returns.
pub fn main(args: &[String]) -> ! {
    let code = match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("procscope guardian: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn run(args: &[String]) -> std::result::Result<(), String> {
    let [pid, start, path] = args else { return Err("usage: procscope __guardian PID START INSTANCE_PATH".into()) };
    let owner = Owner {
        pid: pid.parse().map_err(|_| format!("bad pid {pid:?}"))?,
        start: start.parse().map_err(|_| format!("bad start time {start:?}"))?,
    };
    for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
        let _ = crate::sys::signal::set_ignored(sig, true);
    }
    let instance = Cgroup::open(path).map_err(|e| e.to_string())?;
    if Owner::of_instance(&instance) != Some(owner) {
        return Err(format!(
            "{path} does not belong to pid {} (start {}); refusing to watch it",
            owner.pid, owner.start
        ));
    }
    // Our parent is the supervisor while getppid() says so: open its pidfd, then
    // check again, so that the pidfd cannot refer to a recycled pid.
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    let pidfd = if parent == Some(owner.pid) && start_time(owner.pid) == Some(owner.start) {
        let fd = PidFd::open(rustix::process::Pid::from_raw(owner.pid).expect("positive"))
            .map_err(|e| format!("pidfd_open({}): {e}", owner.pid))?;
        let still = rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(owner.pid);
        still.then_some(fd)
    } else {
        None
    };
    if let Err(e) = take_identity() {
        // A gateway without CAP_SETUID (not root): the guardian runs as the
        // gateway's user, as its children do; say so once.
        eprintln!("procscope guardian: running without an identity of its own ({e}); children of this uid can stop it");
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(b"ready\n").and_then(|_| stdout.flush());
    drop(stdout);
    if let Some(pidfd) = pidfd
        && !watch(&pidfd)
    {
        return Ok(());
    }
    clean_up(&instance, Path::new(path));
    Ok(())
}

/// The guardian's real and saved uid: one no other process uses (in systemd's
/// unused range 1879048192–2147483647, outside its "foreign" range).
///
/// `kill(2)` from a process without `CAP_KILL` needs its uid or euid to equal
/// the target's real or saved uid, and ptrace needs all of the target's uids
/// to match. A guardian with real and saved uid [`GUARDIAN_UID`] is out of
/// reach of every uid-0 child, while its effective uid 0 still lets it write
/// the root-owned `cgroup.kill` and remove the cgroups it guards.
pub const GUARDIAN_UID: u32 = 2_147_483_646;

/// Takes the guardian's identity: real and saved uid [`GUARDIAN_UID`],
/// effective uid 0 (for the cgroup files), then `CAP_KILL` as its only
/// capability, an empty bounding set, `no_new_privs` and not dumpable.
fn take_identity() -> std::result::Result<(), String> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in 0..=last.min(63) {
        let _ = rustix::thread::remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << cap));
    }
    let (guardian, root) = (rustix::process::Uid::from_raw(GUARDIAN_UID), rustix::process::Uid::ROOT);
    rustix::thread::set_thread_res_uid(guardian, root, guardian).map_err(|e| format!("setresuid: {e}"))?;
    // CAP_KILL only: the kill fallback (before cgroup.kill) signals members that
    // may run as any uid.
    let kill_only = CapabilitySets {
        effective: CapabilitySet::KILL,
        permitted: CapabilitySet::KILL,
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, kill_only).map_err(|e| format!("capset: {e}"))?;
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    Ok(())
}

/// Waits for the supervisor's death (true) or its `bye` (false).
fn watch(pidfd: &PidFd) -> bool {
    let stdin = rustix::stdio::stdin();
    let mut control_open = true;
    loop {
        let mut fds = vec![PollFd::new(pidfd, PollFlags::IN)];
        if control_open {
            fds.push(PollFd::new(&stdin, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return !pidfd.is_alive(),
        }
        if fds[0].revents().intersects(PollFlags::IN | PollFlags::HUP) {
            return true;
        }
        if control_open && !fds[1].revents().is_empty() {
            let mut buf = [0u8; 64];
            match rustix::io::read(stdin.as_fd(), &mut buf) {
                Ok(n) if buf[..n].windows(3).any(|w| w == b"bye") => return false,
                Ok(0) | Err(_) => control_open = false,
                Ok(_) => {}
            }
        }
    }
}

/// Kills everything in the instance and removes it, synchronously.
fn clean_up(instance: &Cgroup, path: &Path) {
    if instance.write("cgroup.kill", "1").is_err() {
        for _ in 0..64 {
            let members = instance.member_pidfds_recursive().unwrap_or_default();
            if members.is_empty() {
                break;
            }
            for m in &members {
                let _ = m.send_signal(rustix::process::Signal::KILL);
            }
            let _ = instance.wait_events_blocking(Some(Duration::from_millis(100)), |e| !e.populated);
        }
    }
    let _ = instance.wait_events_blocking(Some(Duration::from_secs(5)), |e| !e.populated);
    for name in instance.children().unwrap_or_default() {
        if let Ok(session) = instance.open_child(&name) {
            remove_blocking(instance, &session);
        }
    }
    if let Some(parent) = path.parent().and_then(|p| Cgroup::open(p).ok()) {
        remove_blocking(&parent, instance);
    }
}

fn remove_blocking(parent: &Cgroup, cg: &Cgroup) {
    for name in cg.children().unwrap_or_default() {
        if let Ok(child) = cg.open_child(&name) {
            remove_blocking(cg, &child);
        }
    }
    let mut wait = Duration::from_millis(1);
    for _ in 0..20 {
        match parent.remove_child(cg.name()) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Busy right after the last exit: wait for the next change of
                // cgroup.events, at most `wait`.
                let _ = cg.wait_events_blocking(Some(wait), |_| false);
                wait = (wait * 2).min(Duration::from_millis(100));
            }
            _ => return,
        }
    }
}
