//! The guardian: one small process per instance that ends what the instance's
//! gateway leaves behind — each `procscope exec` command's leftovers when the
//! command's main process exits, and the whole instance when the gateway dies,
//! even by SIGKILL, with no systemd.
//!
//! # Starting
//! The supervisor (or the first `procscope exec`) of an instance runs
//! `/proc/self/exe` — the gateway's own program for a library user — with
//! [`GUARDIAN_ENV`] set; a constructor that procscope links into every program
//! turns that process into the guardian before its `main` (see `sys::hook`).
//! It forks once so that it is nobody's child (a server that waits for its
//! children never sees it), takes a session of its own, reports `ready PID` on
//! the pipe it was given and closes every inherited fd. If it cannot start,
//! the supervisor's `start` fails.
//!
//! # Watching
//! One `poll` loop, never a fixed sleep: a pidfd of the gateway; inotify on the
//! instance and its sessions, so that new sessions and `exec` commands are seen
//! as they are made; a pidfd of each command's main process (its cgroup is
//! `p-<pid>-<start>-<grace ms>`); `cgroup.events` of each command that is
//! ending.
//!
//! - A command's main process exits, however it exits: its grace period starts
//!   then — never before, so it cannot race the gateway's own TERM/KILL
//!   escalation. What is left in its cgroup (`setsid` helpers, daemons) gets
//!   SIGTERM and SIGCONT, then `cgroup.kill` when the grace runs out, and the
//!   cgroup is removed, its session too once it has no command left.
//! - The gateway dies: `cgroup.kill` of the whole instance, then every cgroup
//!   of it is removed. Every command's main process still running after that
//!   (one that left its cgroup while unsealed) gets SIGKILL through the pidfd
//!   the guardian holds, and must die within 5 s: one that survives is logged
//!   and counted as an error, never as ended.
//! - The instance is removed (a supervisor's shutdown, `procscope end`, a
//!   sweep): the guardian exits, touching nothing. An `exec` instance that has
//!   no session left is removed by the guardian itself, which then exits; the
//!   next `exec` starts a new one.
//!
//! Before acting it checks that the instance's recorded owner is the gateway
//! it was started for, so it can never kill a stranger's cgroup.
//!
//! What it ends is counted as a recovery counts it, in the root's totals:
//! it cannot write them (they are `trusted.*`), so it writes one file per
//! ending into a spool that its starter made, and readers with the
//! capabilities fold it in (see `crate::spool`).
//!
//! # Identity
//! Started with the gateway's capabilities, it takes an identity of its own
//! ([`GUARDIAN_UID`] as real and saved uid, effective uid 0, only `CAP_KILL`):
//! a child running as uid 0 can neither kill, stop nor ptrace it.
//!
//! `kill(2)` is not the only way to signal it: the kernel sends the owner of
//! an fd set with `F_SETOWN` a signal when the fd becomes ready, if the
//! process that set the owner had effective uid 0 (fs/fcntl.c
//! `sigio_perm`). So the guardian blocks every signal that can be blocked
//! and acts on none, and sealed children cannot pick SIGKILL or SIGSTOP as
//! that signal (`F_SETSIG`; a seccomp filter, see `sys::seccomp`). What such
//! a child can still do to it, as any uid-0 process can to a process with
//! effective uid 0: lower its priority (`setpriority`, `sched_setscheduler`
//! to `SCHED_IDLE`), which slows the cleanup but cannot stop it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::cgroup::Cgroup;
use crate::command::{Command, Stdio};
use crate::error::{Error, Result};
use crate::instance::Owner;
use crate::pidfd::{ExitStatusSource, PidFd};

/// The environment variable that makes a process linking procscope the
/// guardian: `MODE OWNER_PID OWNER_START INSTANCE_PATH`.
pub const GUARDIAN_ENV: &str = "PROCSCOPE_GUARDIAN";

/// A file the guardian appends what it does to, one line per event, when its
/// starter has this variable set (for debugging; nothing is logged otherwise).
pub const LOG_ENV: &str = "PROCSCOPE_GUARDIAN_LOG";

/// Appends a line to the guardian's log, if one was asked for.
fn log(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Some(path) = std::env::var_os(LOG_ENV)
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "{} {msg}", std::process::id());
    }
}

/// How long a starter waits for the guardian to report ready. A guardian
/// that fails or dies is seen at once (it reports the error, or its end of
/// the pipe closes); this bounds only one that lives and is slow, as on a
/// host whose CPUs are taken, where a spawn refused after a few seconds
/// would fail a command that a moment more would have contained.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Metadata on the instance: the guardian's pid and start time.
pub(crate) const XATTR_GUARDIAN: &str = "guardian";

/// Metadata on a supervisor's instance: `supervisor`.
pub(crate) const XATTR_ROLE: &str = "role";

/// What the guardian may do with its instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A supervisor's instance: only the supervisor removes it.
    Supervisor,
    /// An instance of `procscope exec` commands: removed with its last session.
    Exec,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Supervisor => "supervisor",
            Role::Exec => "exec",
        }
    }
}

/// A started guardian.
pub(crate) struct Guardian {
    pidfd: PidFd,
}

impl Guardian {
    /// Starts the guardian of `instance` and waits until it is watching.
    ///
    /// # Errors
    /// [`Error::Io`] when the program cannot become a guardian (the
    /// constructor is not linked), the process cannot be started, or it does
    /// not report ready in time.
    pub(crate) fn start(owner: Owner, instance: &Cgroup, role: Role) -> Result<Guardian> {
        let started = Guardian::launch(owner, instance, role);
        let pid = started.as_ref().ok().map(|g| g.pidfd.raw_pid());
        crate::events::guardian_start(instance.path(), role.as_str(), pid, started.as_ref().err());
        started
    }

    /// [`start`](Self::start), without its event.
    fn launch(owner: Owner, instance: &Cgroup, role: Role) -> Result<Guardian> {
        const WHAT: &str = "/proc/self/exe";
        if !crate::sys::hook::ran() {
            return Err(Error::io(
                "start guardian",
                WHAT,
                std::io::Error::other("procscope's start-up hook did not run in this program"),
            ));
        }
        let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::io("pipe", "guardian ready", e))?;
        let spec = format!("{} {} {} {}", role.as_str(), owner.pid, owner.start, instance.path().display());
        let mut cmd = Command::new(WHAT);
        cmd.arg0(crate::sys::hook::GUARDIAN_ARGV0)
            .env_clear()
            .env(GUARDIAN_ENV, spec)
            .stdin(Stdio::Null)
            .stdout(Stdio::Fd(ready_w))
            .stderr(Stdio::Null);
        if let Some(log) = std::env::var_os(LOG_ENV) {
            cmd.env(LOG_ENV, log);
        }
        // What it ends is counted through the spool of the instance's root.
        if let Some(spool) =
            instance.path().parent().and_then(|p| Cgroup::open(p).ok()).and_then(|root| crate::spool::prepare(&root))
        {
            cmd.env(crate::spool::SPOOL_ENV, spool);
        }
        // The intermediate process forks the guardian and exits at once.
        let mut intermediate =
            cmd.spawn_guardian().map_err(|e| Error::io("start guardian", WHAT, std::io::Error::from(e)))?;
        drop(cmd);
        let line = read_line_within(std::fs::File::from(ready_r), READY_WAIT);
        // Reaped here, without a thread: `exec` may need to stay
        // single-threaded (sealing through a user namespace). It only forks
        // and exits.
        poll_in(intermediate.pidfd(), Duration::from_secs(60));
        if intermediate.try_wait().ok().flatten().is_none() {
            let _ = intermediate.start_kill();
            poll_in(intermediate.pidfd(), Duration::from_secs(5));
            let _ = intermediate.try_wait();
        }
        drop(intermediate);
        let fail = |why: &str| Error::io("start guardian", instance.path(), std::io::Error::other(why.to_owned()));
        let ready = line.trim().strip_prefix("ready ").and_then(|r| {
            let (pid, start) = r.split_once(' ')?;
            Some(Owner { pid: pid.parse().ok()?, start: start.parse().ok()? })
        });
        let Some(g) = ready else {
            return Err(fail(line.trim().strip_prefix("error ").unwrap_or("it did not report ready")));
        };
        // Open, then check its start time: the pidfd is the guardian's.
        let pidfd = u32::try_from(g.pid)
            .ok()
            .and_then(|p| PidFd::open(p).ok())
            .filter(|_| g.is_alive())
            .ok_or_else(|| fail("it exited right after reporting ready"))?;
        Ok(Guardian { pidfd })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pidfd.raw_pid() as u32
    }

    /// Waits until the guardian has exited (it does once its instance is
    /// gone), at most `limit`; then kills it.
    pub(crate) async fn wait_gone(self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.pidfd.exited()).await;
        if self.pidfd.is_alive() {
            let _ = self.pidfd.send_signal(crate::Signal::KILL);
        }
    }
}

/// Reads one line from `pipe`, waiting at most `limit` for it in all.
fn read_line_within(mut pipe: std::fs::File, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while !got.contains(&b'\n') && poll_in(&pipe, deadline.saturating_duration_since(Instant::now())) {
        let mut buf = [0u8; 256];
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_owned()
}

/// Waits until `fd` is readable (or hung up), at most `limit`, through any
/// signal that interrupts the wait (a gateway with a SIGCHLD handler gets one
/// when the guardian's intermediate process exits).
fn poll_in(fd: &impl AsFd, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::time::Timespec::try_from(left).unwrap_or(rustix::time::Timespec { tv_sec: 5, tv_nsec: 0 });
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) if fds[0].revents().intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) => return true,
            Ok(_) | Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
            _ => return false,
        }
    }
}

/// The guardian of `instance` for `procscope exec`: started unless one runs
/// (the instance records its pid and start time). Call it once the caller's
/// own cgroup exists in the instance, so that the instance cannot go away
/// meanwhile.
///
/// # Errors
/// As [`Guardian::start`].
pub(crate) fn ensure(owner: Owner, instance: &Cgroup) -> Result<()> {
    // Concurrent `exec`s of one gateway start one guardian: the first takes
    // the lock, the others then find it. The lock is waited for as long as a
    // start can take; held longer (by a process that can open the directory),
    // it is ignored, at worst with two guardians for one instance.
    let dir = rustix::fs::open(instance.path(), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io("open", instance.path(), e))?;
    let deadline = Instant::now() + READY_WAIT + Duration::from_secs(2);
    while rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let running = instance.meta(XATTR_GUARDIAN).ok().flatten().and_then(|v| {
        let (pid, start) = v.split_once(' ')?;
        let pid: i32 = pid.parse().ok()?;
        let guardian = Owner { pid, start: start.parse().ok()? };
        (guardian.is_alive() && !is_zombie(pid)).then_some(pid)
    });
    if running.is_none() {
        Guardian::start(owner, instance, Role::Exec)?;
    }
    Ok(())
}

/// Whether `pid` is a zombie (`/proc/<pid>/stat` state `Z`).
fn is_zombie(pid: i32) -> bool {
    crate::instance::stat_field(pid, 3).as_deref() == Some("Z")
}

/// The name of an `exec` command's cgroup: `p-<pid>-<start>-<grace ms>`.
pub(crate) fn command_cgroup_name(main: Owner, grace: Duration) -> String {
    format!("p-{}-{}-{}", main.pid, main.start, grace.as_millis())
}

fn parse_command_cgroup_name(name: &str) -> Option<(Owner, Duration)> {
    let mut it = name.strip_prefix("p-")?.split('-');
    let pid = it.next()?.parse().ok().filter(|p| *p > 0)?;
    let start = it.next()?.parse().ok()?;
    let grace = Duration::from_millis(it.next()?.parse().ok()?);
    it.next().is_none().then_some((Owner { pid, start }, grace))
}

/// The guardian's main, from the constructor. Never returns.
pub(crate) fn main(spec: &OsStr) -> ! {
    // Whatever happens, report on the ready pipe (fd 1) and exit.
    let report = |line: &str| rustix::io::write(rustix::stdio::stdout(), format!("{line}\n").as_bytes()).is_ok();
    let code = match Watch::set_up(spec) {
        Ok(mut watch) => {
            let me = Owner::this_process().map(|o| o.start).unwrap_or(0);
            // A starter that gave up is not there to read it: then we go too.
            if !report(&format!("ready {} {me}", std::process::id())) {
                std::process::exit(1);
            }
            quiet_stdio();
            watch.run();
            0
        }
        Err(e) => {
            report(&format!("error {e}"));
            1
        }
    };
    std::process::exit(code)
}

/// `/dev/null` on fds 0, 1 and 2, so that no pipe of the gateway's (or of
/// the starter's) stays open here.
fn quiet_stdio() {
    match rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        Ok(null) => {
            let _ = rustix::stdio::dup2_stdin(&null);
            let _ = rustix::stdio::dup2_stdout(&null);
            let _ = rustix::stdio::dup2_stderr(&null);
        }
        // No /dev/null: put a pipe of our own over fd 1 at least, so that
        // the starter sees the end of the ready pipe.
        Err(_) => {
            if let Ok((_r, w)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
                let _ = rustix::stdio::dup2_stdout(&w);
            }
        }
    }
}

/// A command (an `exec`'s cgroup) the guardian follows.
struct Tracked {
    session: PathBuf,
    cgroup: Cgroup,
    grace: Duration,
    /// The main process, while it runs.
    main: Option<PidFd>,
    /// The main process once it exited: its parent (the gateway) reaps it,
    /// and from Linux 6.15 its exit status can be read through the pidfd.
    exited_main: Option<PidFd>,
    /// Once the main process is gone: `cgroup.events`, and when to kill.
    /// `cgroup.events` is `None` when the cgroup is gone already.
    ending: Option<(Option<OwnedFd>, Instant)>,
    /// Processes found left when the main process exited.
    left: usize,
    /// Of them, those still there when the grace ran out.
    killed: usize,
}

/// Where a watched directory sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// The root: only the instance's own removal matters there.
    Root,
    Instance,
    Session,
}

struct Watch {
    role: Role,
    path: PathBuf,
    instance: Cgroup,
    owner: PidFd,
    inotify: OwnedFd,
    /// Watch descriptor → directory. Every directory is watched for
    /// `IN_CREATE` and `IN_DELETE` of its subdirectories: cgroupfs sends no
    /// `IN_DELETE_SELF` or `IN_IGNORED` when a cgroup is removed, only the
    /// parent's `IN_DELETE`.
    dirs: HashMap<i32, (PathBuf, Level)>,
    commands: HashMap<PathBuf, Tracked>,
    /// The owner as recorded (pid and start time).
    owner_id: Owner,
    /// When to take in the instance again (see [`Watch::rescan`]).
    rescan_at: Option<Instant>,
    /// The spool that what it ends is counted in ([`crate::spool`]).
    spool: Option<OwnedFd>,
    /// Spool files written so far.
    spooled: u64,
    /// Main processes of ended commands not reaped yet by their parent (the
    /// gateway): their exit status is logged once it is (Linux 6.15), or
    /// given up on at the deadline.
    reaping: Vec<(PathBuf, PidFd, Instant)>,
}

impl Watch {
    fn set_up(spec: &OsStr) -> std::result::Result<Watch, String> {
        let spec = std::str::from_utf8(spec.as_bytes()).map_err(|_| "the spec is not UTF-8".to_owned())?;
        let mut parts = spec.splitn(4, ' ');
        let (role, pid, start, path) = (parts.next(), parts.next(), parts.next(), parts.next());
        let role = match role {
            Some("supervisor") => Role::Supervisor,
            Some("exec") => Role::Exec,
            _ => return Err(format!("bad spec {spec:?}: ROLE OWNER_PID OWNER_START INSTANCE_PATH")),
        };
        let owner = Owner {
            pid: pid.and_then(|p| p.parse().ok()).ok_or_else(|| format!("bad pid in {spec:?}"))?,
            start: start.and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad start time in {spec:?}"))?,
        };
        let path = PathBuf::from(path.ok_or_else(|| format!("no instance path in {spec:?}"))?);
        for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGPIPE, libc::SIGTERM] {
            let _ = crate::sys::signal::set_ignored(sig, true);
        }
        // Every signal that can be blocked is, for good: the guardian acts on
        // pidfds, inotify and `cgroup.events` in one `poll`, never on a
        // signal. A uid-0 child may still have the kernel send it one through
        // `F_SETOWN` (SIGIO, SIGURG, or what `F_SETSIG` picks: sealed
        // children cannot pick SIGKILL or SIGSTOP); blocked, it stays pending
        // and does nothing.
        crate::sys::signal::block_all().map_err(|e| format!("blocking signals: {e}"))?;
        crate::sys::hook::detach().map_err(|e| format!("fork: {e}"))?;
        let _ = rustix::process::chdir("/");
        // However many commands: raise the soft fd limit to the hard one.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
        );
        let instance = Cgroup::open(&path).map_err(|e| e.to_string())?;
        // Only an instance procscope made, by its recorded kind and owner
        // (never its name alone): `trusted.*` on a root-owned tree.
        let recorded = (crate::instance::kind_of(&instance).as_deref() == Some("instance"))
            .then(|| Owner::of_instance(&instance))
            .flatten();
        if recorded != Some(owner) {
            return Err(format!("{} is not the instance of pid {} (start {})", path.display(), owner.pid, owner.start));
        }
        // A supervisor's instance stays until the supervisor removes it,
        // whoever started the guardian.
        let role = if instance.meta(XATTR_ROLE).ok().flatten().as_deref() == Some("supervisor") {
            Role::Supervisor
        } else {
            role
        };
        // Recorded by the guardian itself, before it reports ready: `exec`
        // finds it there.
        let me = Owner::this_process().map_err(|e| e.to_string())?;
        instance.set_meta(XATTR_GUARDIAN, &format!("{} {}", me.pid, me.start)).map_err(|e| e.to_string())?;
        // Open, then check the start time: the pidfd cannot name a recycled pid.
        let pidfd = u32::try_from(owner.pid)
            .ok()
            .map(PidFd::open)
            .transpose()
            .map_err(|e| format!("pidfd_open({}): {e}", owner.pid))?
            .filter(|_| owner.is_alive())
            .ok_or_else(|| format!("the gateway (pid {}) is gone", owner.pid))?;
        // Never the gateway, its ancestors or the guardian itself: moved back
        // here if a child pulls them into a cgroup about to be killed.
        crate::protect::protect(owner.pid);
        crate::protect::remember_home();
        crate::protect::not_own_ancestors();
        let inotify =
            inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).map_err(|e| format!("inotify: {e}"))?;
        // Opened while it has its starter's capabilities (the spool is
        // the guardian's uid's, mode 0700).
        let spool = std::env::var_os(crate::spool::SPOOL_ENV).and_then(|p| {
            crate::spool::open_for_guardian(Path::new(&p))
                .map_err(|e| log(format_args!("not counting what it ends: {e}")))
                .ok()
        });
        let mut watch = Watch {
            role,
            path: path.clone(),
            instance,
            owner: pidfd,
            inotify,
            dirs: HashMap::new(),
            commands: HashMap::new(),
            owner_id: owner,
            reaping: Vec::new(),
            rescan_at: None,
            spool,
            spooled: 0,
        };
        let root = path.parent().ok_or("the instance has no parent")?;
        watch.add_dir(root, Level::Root)?;
        watch.add_dir(&path, Level::Instance)?;
        if identity().is_some() {
            take_identity().map_err(|e| format!("taking the guardian's identity: {e}"))?;
        } else {
            // A gateway that is not root: the guardian runs as the gateway's
            // user, as its children do.
            log(format_args!("no identity of its own: not root"));
        }
        Ok(watch)
    }

    /// Watches `dir` for directories made and removed in it, then takes in
    /// what it holds already (not for the root).
    fn add_dir(&mut self, dir: &Path, level: Level) -> std::result::Result<(), String> {
        let flags = match level {
            Level::Root => WatchFlags::DELETE | WatchFlags::ONLYDIR,
            _ => WatchFlags::CREATE | WatchFlags::DELETE | WatchFlags::ONLYDIR,
        };
        let wd = match inotify::add_watch(&self.inotify, dir, flags) {
            Ok(wd) => wd,
            // Gone already: a session removed meanwhile.
            Err(rustix::io::Errno::NOENT) if level == Level::Session => return Ok(()),
            Err(e) => return Err(format!("inotify_add_watch {}: {e}", dir.display())),
        };
        // The same directory made again: its old watch is stale.
        self.dirs.retain(|w, (d, _)| *w == wd || d != dir);
        self.dirs.insert(wd, (dir.to_owned(), level));
        log(format_args!("watching {} (wd {wd})", dir.display()));
        if level == Level::Root {
            return Ok(());
        }
        let names = Cgroup::open(dir).and_then(|c| c.children()).unwrap_or_default();
        for name in names {
            self.made(dir, level, &name);
        }
        Ok(())
    }

    /// Stops watching `dir` (removed) and forgets the commands below it.
    fn forget_dir(&mut self, dir: &Path) {
        let stale: Vec<i32> = self.dirs.iter().filter(|(_, (d, _))| d == dir).map(|(w, _)| *w).collect();
        for wd in stale {
            let _ = inotify::remove_watch(&self.inotify, wd);
            self.dirs.remove(&wd);
        }
        self.commands.retain(|p, _| !p.starts_with(dir));
    }

    /// A directory `name` was made in `dir` (or found there).
    fn made(&mut self, dir: &Path, level: Level, name: &str) {
        let path = dir.join(name);
        match level {
            Level::Root => {}
            Level::Instance => {
                if name.starts_with("s-")
                    && let Err(e) = self.add_dir(&path, Level::Session)
                {
                    log(format_args!("{e}"));
                    self.rescan_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            Level::Session => self.track(dir, &path, name),
        }
    }

    /// Follows the command whose cgroup is `path`.
    fn track(&mut self, session: &Path, path: &Path, name: &str) {
        let Some((main, grace)) = parse_command_cgroup_name(name) else { return };
        if self.commands.contains_key(path) {
            return;
        }
        let Ok(cgroup) = Cgroup::open(path) else { return };
        let main_fd = match main_process(main, &cgroup) {
            Ok(fd) => fd,
            // Not known (no fd left, say): never taken for "exited"; tried
            // again at the next rescan.
            Err(e) => {
                log(format_args!("command {}: main {} unknown: {e}", path.display(), main.pid));
                self.rescan_at = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        };
        log(format_args!("command {} (main {} alive: {})", path.display(), main.pid, main_fd.is_some()));
        let mut command = Tracked {
            session: session.to_owned(),
            cgroup,
            grace,
            main: main_fd,
            exited_main: None,
            ending: None,
            left: 0,
            killed: 0,
        };
        if command.main.is_none() {
            begin_ending(&mut command);
        }
        self.commands.insert(path.to_owned(), command);
    }

    /// Takes in again what the instance holds: after lost inotify events, or
    /// a directory or command that could not be taken in.
    fn rescan(&mut self) {
        self.rescan_at = None;
        let path = self.path.clone();
        if let Err(e) = self.add_dir(&path, Level::Instance) {
            log(format_args!("rescan: {e}"));
            self.rescan_at = Some(Instant::now() + Duration::from_secs(1));
        }
    }

    fn run(&mut self) {
        loop {
            if self.rescan_at.is_some_and(|t| t <= Instant::now()) {
                self.rescan();
            }
            let now = Instant::now();
            let keys: Vec<PathBuf> = self.commands.keys().cloned().collect();
            let timeout = self
                .commands
                .values()
                .filter_map(|c| c.ending.as_ref().map(|(_, t)| t.saturating_duration_since(now)))
                .chain(self.rescan_at.map(|t| t.saturating_duration_since(now)))
                .chain(self.reaping.iter().map(|(_, _, t)| t.saturating_duration_since(now)))
                .min();
            let mut fds = vec![PollFd::new(&self.owner, PollFlags::IN), PollFd::new(&self.inotify, PollFlags::IN)];
            for k in &keys {
                let c = &self.commands[k];
                match (&c.main, &c.ending) {
                    (_, Some((Some(events), _))) => fds.push(PollFd::new(events, PollFlags::PRI)),
                    (Some(main), None) => fds.push(PollFd::new(main, PollFlags::IN)),
                    // Nothing to wait for: a placeholder that never fires.
                    _ => fds.push(PollFd::new(&self.inotify, PollFlags::empty())),
                }
            }
            // An exited process's pidfd is readable until it is reaped; the
            // reap raises POLLHUP, which poll reports unasked.
            for (_, main, _) in &self.reaping {
                fds.push(PollFd::new(main, PollFlags::empty()));
            }
            let ts = timeout.map(|t| {
                rustix::time::Timespec::try_from(t).unwrap_or(rustix::time::Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
            });
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            let owner_gone = fds[0].revents().intersects(PollFlags::IN | PollFlags::HUP);
            let inotify_ready = !fds[1].revents().is_empty();
            let ready: Vec<bool> = fds[2..2 + keys.len()].iter().map(|f| !f.revents().is_empty()).collect();
            let reaped: Vec<bool> = fds[2 + keys.len()..].iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            self.log_reaped(&reaped);
            if owner_gone {
                log(format_args!("the owner is gone: ending the instance"));
                if Owner::of_instance(&self.instance) == Some(self.owner_id) {
                    let mut report = clean_up(&self.instance, &self.path);
                    let mains: Vec<(&Path, &PidFd)> =
                        self.commands.values().filter_map(|c| Some((c.cgroup.path(), c.main.as_ref()?))).collect();
                    kill_main_processes(&mains, &mut report);
                    self.count(&report);
                }
                return;
            }
            if inotify_ready && self.read_inotify() {
                return;
            }
            for (k, ready) in keys.iter().zip(ready) {
                if let Some(c) = self.commands.get_mut(k) {
                    if ready && c.ending.is_none() {
                        c.exited_main = c.main.take();
                        begin_ending(c);
                    }
                    if c.ending.is_some() && step_ending(c) {
                        let c = self.commands.remove(k).expect("present");
                        if self.finish(c) {
                            self.drain_reaping();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Reads inotify events; true when the instance is gone.
    fn read_inotify(&mut self) -> bool {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut events = Vec::new();
        {
            let mut reader = inotify::Reader::new(&self.inotify, &mut buf);
            while let Ok(ev) = reader.next() {
                if ev.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                    log(format_args!("inotify queue overflow: rescanning"));
                    self.rescan_at = Some(Instant::now());
                    continue;
                }
                let Some((dir, level)) = self.dirs.get(&ev.wd()).cloned() else { continue };
                let Some(name) = ev.file_name().and_then(|n| n.to_str().ok()) else { continue };
                let deleted = ev.events().contains(inotify::ReadFlags::DELETE);
                events.push((dir, level, name.to_owned(), deleted));
            }
        }
        for (dir, level, name, deleted) in events {
            log(format_args!("{} {}/{name}", if deleted { "removed" } else { "made" }, dir.display()));
            match (level, deleted) {
                (Level::Root, true) if dir.join(&name) == self.path => return true,
                (_, true) => self.forget_dir(&dir.join(&name)),
                (_, false) => self.made(&dir, level, &name),
            }
        }
        false
    }

    /// A command's cgroup is empty: removes it, its session once it holds no
    /// command, and (for `exec`) the instance once it holds no session. True
    /// when the instance is gone.
    fn finish(&mut self, mut c: Tracked) -> bool {
        log(format_args!("command {} ended", c.cgroup.path().display()));
        if let Some(main) = c.exited_main.take()
            && ExitStatusSource::current() == ExitStatusSource::PidfdInfoExit
        {
            self.reaping.push((c.cgroup.path().to_owned(), main, Instant::now() + REAP_WAIT));
            self.log_reaped(&[]);
        }
        let Ok(session) = Cgroup::open(&c.session) else { return false };
        remove_blocking(&session, &c.cgroup);
        if c.cgroup.path().exists() {
            // Still busy (or populated again): tried again in a second.
            c.ending = c.ending.map(|(events, _)| (events, Instant::now() + Duration::from_secs(1)));
            self.commands.insert(c.cgroup.path().to_owned(), c);
            return false;
        }
        // What it ended: the command's leftovers, and the session once it
        // has no command left.
        let mut report = crate::sweep::SweepReport {
            leaks_prevented: usize::from(c.left > 0),
            terminated: c.left.saturating_sub(c.killed),
            killed: c.killed,
            removed: 1,
            ..Default::default()
        };
        if session.children().is_ok_and(|l| l.is_empty())
            && !session.is_populated().unwrap_or(true)
            && self.instance.remove_child(session.name()).is_ok()
        {
            self.forget_dir(&c.session);
            report.sessions = 1;
            report.removed += 1;
        }
        // Counted before the instance may go, so that whoever sees it gone
        // finds the counts in the spool. A command that exited leaving
        // nothing, its session still in use: nothing ended.
        if c.left > 0 || report.sessions > 0 {
            self.count(&report);
        }
        self.role == Role::Exec
            && self.instance.children().is_ok_and(|l| l.is_empty())
            && self
                .path
                .parent()
                .and_then(|p| Cgroup::open(p).ok())
                .is_some_and(|root| root.remove_child(self.instance.name()).is_ok())
    }

    /// Writes what an ending did into the spool, as recovery counts it: in
    /// the root's totals only, once a reader folds it.
    fn count(&mut self, report: &crate::sweep::SweepReport) {
        let Some(spool) = &self.spool else { return };
        let counts = crate::supervisor::Counters::of_report(report, false);
        self.spooled += 1;
        match crate::spool::write(spool, &counts, self.spooled) {
            Ok(()) => log(format_args!("spooled {}", counts.encode())),
            Err(e) => log(format_args!("not counted: {e}")),
        }
    }
}

impl Watch {
    /// Logs the exit status of each ended command's main process that its
    /// parent has reaped (through `PIDFD_INFO_EXIT`: the main process is the
    /// gateway's child, not the guardian's), and gives up on those past
    /// their deadline. `reaped` flags the entries poll saw hang up.
    /// Before the guardian exits: waits, at most [`DRAIN_WAIT`], for the
    /// exit statuses still to be logged.
    fn drain_reaping(&mut self) {
        let end = Instant::now() + DRAIN_WAIT;
        while !self.reaping.is_empty() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds: Vec<PollFd<'_>> =
                self.reaping.iter().map(|(_, main, _)| PollFd::new(main, PollFlags::empty())).collect();
            let ts = rustix::time::Timespec::try_from(left).unwrap_or(rustix::time::Timespec { tv_sec: 1, tv_nsec: 0 });
            let _ = rustix::event::poll(&mut fds, Some(&ts));
            let reaped: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            self.log_reaped(&reaped);
        }
    }

    fn log_reaped(&mut self, reaped: &[bool]) {
        let now = Instant::now();
        let mut i = 0;
        self.reaping.retain(|(cgroup, main, deadline)| {
            let hung_up = reaped.get(i).copied().unwrap_or(false);
            i += 1;
            let status = main.exit_status();
            let done = match &status {
                Ok(Some(status)) => {
                    log(format_args!("command {}: main {} {status}", cgroup.display(), main.pid()));
                    true
                }
                Ok(None) if !hung_up && now < *deadline => false,
                Ok(None) => {
                    log(format_args!("command {}: main {} not reaped by its parent", cgroup.display(), main.pid()));
                    true
                }
                Err(e) => {
                    log(format_args!("command {}: main {}: exit status unknown: {e}", cgroup.display(), main.pid()));
                    true
                }
            };
            !done
        });
    }
}

/// How long the guardian waits for the gateway to reap an ended command's
/// main process before it stops waiting for its exit status.
const REAP_WAIT: Duration = Duration::from_secs(10);
/// How long an exiting guardian still waits for those exit statuses.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// The main process is gone: SIGTERM and SIGCONT to what is left, and the
/// grace period starts.
fn begin_ending(c: &mut Tracked) {
    // Who must not be signalled unknown: nobody is (the kill after the
    // grace period refuses too, and is tried again).
    let protected = crate::protect::protected().unwrap_or_else(|e| {
        log(format_args!("not signalling {}: {e}", c.cgroup.path().display()));
        Vec::new()
    });
    if !protected.is_empty() {
        let _ = crate::protect::evacuate_among(&c.cgroup, &protected);
    }
    let members: Vec<PidFd> = c
        .cgroup
        .member_pidfds_recursive()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !crate::protect::is_protected(m.raw_pid(), &protected))
        .collect();
    c.left = members.len();
    // Who must not be signalled unknown: nobody is.
    for m in members.iter().filter(|_| !protected.is_empty()) {
        let _ = m.send_signal(crate::Signal::TERM);
        let _ = m.send_signal(crate::Signal::CONT);
    }
    // No `cgroup.events` (the cgroup is gone): nothing to wait for.
    let events = c.cgroup.open_file(crate::cgroup::files::EVENTS, OFlags::RDONLY).ok();
    let deadline = if events.is_some() { Instant::now() + c.grace } else { Instant::now() };
    c.ending = Some((events, deadline));
}

/// True once the ending command's cgroup is empty, killing it when its
/// grace has run out.
fn step_ending(c: &mut Tracked) -> bool {
    let Some((events, deadline)) = &mut c.ending else { return false };
    // Reading the file is what re-arms its POLLPRI.
    if let Some(events) = events {
        let mut buf = [0u8; 256];
        let _ = rustix::io::pread(&*events, &mut buf, 0);
    }
    if is_empty(&c.cgroup) {
        return true;
    }
    if Instant::now() < *deadline {
        return false;
    }
    c.killed += kill_blocking(&c.cgroup);
    if is_empty(&c.cgroup) {
        return true;
    }
    // Not empty yet (a fork race on the fallback kill): again in a second.
    *deadline = Instant::now() + Duration::from_secs(1);
    false
}

/// Whether `cg` holds no process: gone counts as empty, an error that says
/// nothing does not.
fn is_empty(cg: &Cgroup) -> bool {
    match cg.is_populated() {
        Ok(populated) => !populated,
        Err(e) => crate::cgroup::vanished(&e),
    }
}

/// The main process of a command, if it still runs: `Ok(None)` only when it
/// provably exited (no such pid, or a pid reused by a process that is not in
/// its cgroup or started at another time).
fn main_process(main: Owner, cgroup: &Cgroup) -> std::io::Result<Option<PidFd>> {
    let Ok(pid) = u32::try_from(main.pid) else { return Ok(None) };
    let fd = match PidFd::open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    let same = match crate::instance::start_time(main.pid) {
        Some(start) => start == main.start,
        // /proc hidden (hidepid): its membership in the cgroup decides.
        None => cgroup.procs().map_err(|e| std::io::Error::other(e.to_string()))?.contains(&pid),
    };
    Ok(same.then_some(fd))
}

/// `cgroup.kill` (else SIGKILL to every member until none is left), then
/// waits until the cgroup is empty, at most 5 s. Returns how many processes
/// it found there to kill.
fn kill_blocking(cg: &Cgroup) -> usize {
    // Never the gateway or the guardian: moved out first, else not killed.
    if let Err(e) = crate::protect::evacuate(cg) {
        log(format_args!("not killing {}: {e}", cg.path().display()));
        return 0;
    }
    let found = cg.member_pidfds_recursive().map_or(0, |m| m.len());
    if cg.write("cgroup.kill", "1").is_err() {
        for _ in 0..64 {
            let Ok(protected) = crate::protect::protected() else { break };
            let members: Vec<_> = cg
                .member_pidfds_recursive()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| !crate::protect::is_protected(m.raw_pid(), &protected))
                .collect();
            if members.is_empty() {
                break;
            }
            for m in &members {
                let _ = m.send_signal(crate::Signal::KILL);
            }
            let _ = cg.wait_events_blocking(Some(Duration::from_millis(100)), |e| !e.populated);
        }
    }
    let _ = cg.wait_events_blocking(Some(Duration::from_secs(5)), |e| !e.populated);
    found
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

/// The real and saved uid a guardian started by this process takes:
/// [`GUARDIAN_UID`] for a process running as root (uid 0 of the initial user
/// namespace, or of one that maps it onto 0); `None` for any other, whose
/// guardian keeps its starter's uids (uid 0 of a user namespace that maps
/// it elsewhere cannot switch to the guardian's uid).
pub fn identity() -> Option<u32> {
    (rustix::process::geteuid().is_root() && crate::cgroup::uid0_is_host_root()).then_some(GUARDIAN_UID)
}

/// Takes the guardian's identity (a holder's too): real and saved uid [`GUARDIAN_UID`],
/// effective uid 0 (for the cgroup files), then `CAP_KILL` as its only
/// capability, an empty bounding set, `no_new_privs` and not dumpable.
pub(crate) fn take_identity() -> std::result::Result<(), String> {
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

/// Kills everything in the instance and removes it, synchronously: again
/// and again while something is left (an `exec` that was placing itself as
/// the owner died joins late), for at most a minute. Returns what it ended,
/// as a recovery reports it.
fn clean_up(instance: &Cgroup, path: &Path) -> crate::sweep::SweepReport {
    let mut report = crate::sweep::SweepReport::default();
    let mut sessions = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while path.exists() && Instant::now() < deadline {
        // The sessions as they are before the kill: those with something
        // running had leaked.
        for name in instance.children().unwrap_or_default() {
            if name.starts_with("s-") && sessions.insert(name.clone()) {
                report.sessions += 1;
                let running = instance.open_child(&name).is_ok_and(|s| s.is_populated().unwrap_or(false));
                report.leaks_prevented += usize::from(running);
            }
        }
        report.killed += kill_blocking(instance);
        for name in instance.children().unwrap_or_default() {
            if let Ok(session) = instance.open_child(&name) {
                remove_blocking(instance, &session);
                report.removed += usize::from(!session.path().exists());
            }
        }
        if let Some(parent) = path.parent().and_then(|p| Cgroup::open(p).ok()) {
            remove_blocking(&parent, instance);
        }
        if path.exists() {
            let _ = instance.wait_events_blocking(Some(Duration::from_millis(200)), |_| false);
        }
    }
    if path.exists() {
        report.errors.push(crate::sweep::SweepError {
            session: instance.name().to_owned(),
            error: "the instance could not be removed within a minute".into(),
        });
    } else {
        report.removed += 1;
    }
    report
}

/// How long the guardian waits for the main processes it SIGKILLed to die.
const MAIN_KILL_WAIT: Duration = Duration::from_secs(5);

/// Verified endings once the gateway is gone: SIGKILL through the pidfd of
/// every command's main process still running, then a check that each died.
/// The instance's `cgroup.kill` has ended every process still in it; a main
/// process alive after it had left its cgroup (possible only unsealed), and
/// is counted as killed here. One still alive after [`MAIN_KILL_WAIT`] is an
/// error of the report, logged: never reported as ended.
fn kill_main_processes(mains: &[(&Path, &PidFd)], report: &mut crate::sweep::SweepReport) {
    let alive: Vec<&(&Path, &PidFd)> = mains.iter().filter(|(_, m)| m.is_alive()).collect();
    for (cgroup, main) in &alive {
        log(format_args!("command {}: main {} outlived the instance's kill", cgroup.display(), main.pid()));
        if let Err(e) = main.send_signal(crate::Signal::KILL) {
            log(format_args!("command {}: SIGKILL to main {}: {e}", cgroup.display(), main.pid()));
        }
    }
    let deadline = Instant::now() + MAIN_KILL_WAIT;
    for (cgroup, main) in alive {
        let left = deadline.saturating_duration_since(Instant::now());
        if poll_in(main, left) || !main.is_alive() {
            report.killed += 1;
            continue;
        }
        let error = format!("the main process {} survived SIGKILL through its pidfd", main.pid());
        log(format_args!("error: command {}: {error}", cgroup.display()));
        let session = cgroup.parent().and_then(Path::file_name).unwrap_or_default().to_string_lossy();
        report.errors.push(crate::sweep::SweepError { session: session.into_owned(), error });
    }
}

fn remove_blocking(parent: &Cgroup, cg: &Cgroup) {
    if let Err(e) = parent.remove_child_tree_blocking(cg) {
        log(format_args!("removing {}: {e}", cg.path().display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_cgroup_names_round_trip() {
        let main = Owner { pid: 4242, start: 99 };
        let name = command_cgroup_name(main, Duration::from_millis(2500));
        assert_eq!(name, "p-4242-99-2500");
        assert_eq!(parse_command_cgroup_name(&name), Some((main, Duration::from_millis(2500))));
        for bad in ["p-1-2", "p-0-1-2", "p-x-1-2", "s-1-2-3", "p-1-2-3-4", "p-1-2-"] {
            assert_eq!(parse_command_cgroup_name(bad), None, "{bad}");
        }
    }
}
