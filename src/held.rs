//! `procscope exec` where no cgroup can be written: the registry of the
//! `exec`s that hold their commands, for `end`, `ps` and `sweep`.
//!
//! Where the cgroup2 filesystem is read-only (a default container) or
//! missing, `procscope exec` cannot place itself in a session cgroup and then
//! become its command. It stays in front of the command instead, as a
//! session of one command contained with a holder
//! ([`Containment::Holders`](crate::Containment::Holders)): it forwards
//! signals to the command, ends what the command leaves behind, and exits
//! with the command's status. Each such `exec` registers itself as a Unix
//! socket in a tree under the run directory (`$PROCSCOPE_RUN_DIR`, else
//! `/run/procscope`) that mirrors the cgroup tree:
//!
//! ```text
//! <run dir>/held/i-<pidns>-<owner pid>-<owner start>/s-<session>/p-<pid>-<start>-<grace ms>
//! ```
//!
//! The directories are made with mode 0700. `end` and `sweep` ask an `exec`
//! through its socket to end its session (one line, `end <grace ms>`), and
//! the `exec` answers once its tree is gone (`ended <signalled> <terminated>
//! <killed>`), so the ending is the one the library's sessions use.
//! `ps` reads the tree below each `exec`. A socket whose `exec` is gone (it
//! was SIGKILLed: its holder has then killed the tree) is stale, and
//! removed by `sweep`.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::error::{Error, Result};
use crate::instance::Owner;
use crate::sweep::{SweepError, SweepReport, Termination};
use crate::tree::{InstanceInfo, Scope, SessionInfo, SessionState};

/// The variable that names the run directory.
pub const RUN_DIR_ENV: &str = "PROCSCOPE_RUN_DIR";
/// The run directory when [`RUN_DIR_ENV`] is not set.
pub const DEFAULT_RUN_DIR: &str = "/run/procscope";

/// How long `end` waits for an `exec` beyond the grace it gave: the SIGKILL
/// of what is left and the holder's reaping.
const END_SLACK: Duration = Duration::from_secs(30);

/// The run directory: `$PROCSCOPE_RUN_DIR`, else `/run/procscope`.
pub fn run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV).filter(|v| !v.is_empty()).map_or_else(|| DEFAULT_RUN_DIR.into(), PathBuf::from)
}

/// Calls `f` with a short path to `path` (its directory as an open fd,
/// `/proc/self/fd/<fd>/<name>`): a socket's path must fit in 108 bytes,
/// and a run directory, an instance and a 64-character session id do not.
fn through_dir<T>(path: &Path, f: impl FnOnce(&Path) -> std::io::Result<T>) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let short = Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string()).join(name);
    f(&short)
}

fn held_dir(run: &Path) -> PathBuf {
    run.join("held")
}

/// One registered `exec`, as read from the run directory.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its instance directory's name, `i-<pidns>-<pid>-<start>`.
    pub instance: String,
    /// The owner the instance names.
    pub owner: Owner,
    /// Whether the instance belongs to another pid namespace than ours (an
    /// `exec` in a container, seen from the host): its pids are not ours,
    /// and its owner counts as alive.
    pub foreign_pid_namespace: bool,
    /// The session id.
    pub session: String,
    /// The `exec` itself (pid and start time).
    pub exec: Owner,
    /// The grace it was started with.
    pub grace: Duration,
    /// Its socket.
    pub path: PathBuf,
}

impl Entry {
    /// Whether the `exec` still runs: same pid, same start time, and a
    /// `procscope exec` (not a process that a forged name points at). One
    /// of another pid namespace runs while its socket accepts connections.
    pub fn is_alive(&self) -> bool {
        if self.foreign_pid_namespace {
            return match through_dir(&self.path, |p| std::os::unix::net::UnixStream::connect(p)) {
                Ok(_) => true,
                Err(e) => !matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound),
            };
        }
        let argv1 = std::fs::read(format!("/proc/{}/cmdline", self.exec.pid))
            .ok()
            .and_then(|raw| raw.split(|b| *b == 0).nth(1).map(<[u8]>::to_vec));
        self.exec.is_alive() && argv1.as_deref() == Some(b"exec".as_slice())
    }

    /// Whether its owner still runs (one of another pid namespace counts
    /// as alive: it cannot be checked from here).
    pub fn owner_alive(&self) -> bool {
        self.foreign_pid_namespace || self.owner.is_alive()
    }
}

fn parse_entry(name: &str) -> Option<(Owner, Duration)> {
    let mut parts = name.strip_prefix("p-")?.split('-').map(|p| p.parse::<u64>().ok());
    let pid = i32::try_from(parts.next()??).ok().filter(|p| *p > 0)?;
    let start = parts.next()??;
    let grace = Duration::from_millis(parts.next()??);
    parts.next().is_none().then_some((Owner { pid, start }, grace))
}

/// The names in `dir` that start with `prefix` and are of the kind asked
/// for: real directories, or sockets (never symlinks, so that a planted
/// link cannot turn a sweep onto other files).
fn names_in(dir: &Path, prefix: &str, sockets: bool) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| if sockets { t.is_socket() } else { t.is_dir() }))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Every `exec` registered under `run` (directories that go away meanwhile
/// are left out; names that do not parse are not ours, and skipped).
pub fn entries(run: &Path) -> Vec<Entry> {
    let held = held_dir(run);
    let own_ns = crate::instance::pid_namespace_inode();
    let mut out = Vec::new();
    for inst in names_in(&held, "i-", false) {
        let Some((ns, owner)) = crate::instance::parse_instance_name(&inst) else { continue };
        for sdir in names_in(&held.join(&inst), "s-", false) {
            let session = sdir["s-".len()..].to_owned();
            if crate::names::validate_session_id(&session).is_err() {
                continue;
            }
            let dir = held.join(&inst).join(&sdir);
            for p in names_in(&dir, "p-", true) {
                if let Some((exec, grace)) = parse_entry(&p) {
                    out.push(Entry {
                        instance: inst.clone(),
                        owner,
                        foreign_pid_namespace: ns != own_ns && ns != 0,
                        session: session.clone(),
                        exec,
                        grace,
                        path: dir.join(p),
                    });
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The `exec`'s side.
// ---------------------------------------------------------------------------

/// An `exec`'s registration: its socket, removed (with the directories it
/// leaves empty) when this is dropped.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
    listener: Option<UnixListener>,
}

/// A request to end the session, received by a [`Registration`].
#[derive(Debug)]
pub struct EndRequest {
    /// The grace the requester gave.
    pub grace: Duration,
    stream: UnixStream,
}

/// The requests a [`Registration`] receives, read by a task of their own
/// so that none is lost while the `exec` does something else.
#[derive(Debug)]
pub struct Requests {
    rx: tokio::sync::mpsc::UnboundedReceiver<EndRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// Registers the calling process as the `exec` of `session` of `owner`,
    /// started with `grace`. Needs a tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad session id, [`Error::Io`] if the run
    /// directory cannot be written.
    pub fn new(run: &Path, owner: Owner, session: &str, grace: Duration) -> Result<Registration> {
        crate::names::validate_session_id(session)?;
        let me = Owner::this_process()?;
        let dir = held_dir(run).join(owner.instance_name()).join(format!("s-{session}"));
        let path = dir.join(format!("p-{}-{}-{}", me.pid, me.start, grace.as_millis()));
        let mut last = None;
        // An `exec` of the same owner that exits removes the directories it
        // leaves empty, perhaps between our mkdirs or before our bind: again.
        for _ in 0..16 {
            match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(Error::io("create the run directory", &dir, e)),
            }
            let _ = std::fs::remove_file(&path);
            match through_dir(&path, |short| UnixListener::bind(short)) {
                Ok(listener) => return Ok(Registration { path, listener: Some(listener) }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => last = Some(e),
                Err(e) => return Err(Error::io("bind the exec's socket", &path, e)),
            }
        }
        Err(Error::io("bind the exec's socket", &path, last.unwrap_or_else(|| std::io::Error::other("raced"))))
    }

    /// Its socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts receiving requests: a task accepts each connection and reads
    /// its request (`end <grace ms>`); one that sends anything else, or
    /// nothing for 5 s, is answered with an error and dropped.
    pub fn serve(&mut self) -> Requests {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let listener = self.listener.take();
        let task = tokio::spawn(async move {
            let Some(listener) = listener else { return };
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
                    let mut stream = reader.into_inner();
                    match (read, line.trim().strip_prefix("end ").map(str::parse::<u64>)) {
                        (Ok(Ok(_)), Some(Ok(ms))) => {
                            let _ = tx.send(EndRequest { grace: Duration::from_millis(ms), stream });
                        }
                        _ => {
                            let _ = stream.write_all(b"error: expected `end <grace ms>`\n").await;
                        }
                    }
                });
            }
        });
        Requests { rx, task }
    }
}

impl Requests {
    /// The next request to end the session.
    pub async fn recv(&mut self) -> Option<EndRequest> {
        self.rx.recv().await
    }

    /// Stops accepting, and returns the requests received but not taken.
    pub fn stop(mut self) -> Vec<EndRequest> {
        self.task.abort();
        let mut left = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            left.push(r);
        }
        left
    }
}

impl EndRequest {
    /// Answers with how the session ended.
    pub async fn reply(mut self, t: &Termination) {
        let line = format!("ended {} {} {}\n", t.signalled, t.terminated, t.killed);
        let _ = self.stream.write_all(line.as_bytes()).await;
    }

    /// Answers that the session could not be ended.
    pub async fn reply_error(mut self, error: &str) {
        let line = format!("error: {}\n", error.replace('\n', " "));
        let _ = self.stream.write_all(line.as_bytes()).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        remove_socket(&self.path);
    }
}

// ---------------------------------------------------------------------------
// `end`, `sweep` and `ps`.
// ---------------------------------------------------------------------------

/// Removes a socket and the session and instance directories it leaves
/// empty (another `exec`'s socket keeps its own), checking first that
/// neither directory on the way is a symlink.
fn remove_socket(path: &Path) {
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let (Some(session), Some(instance)) = (path.parent(), path.parent().and_then(Path::parent)) else { return };
    if !real_dir(instance) || !real_dir(session) {
        return;
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir(session);
    let _ = std::fs::remove_dir(instance);
}

/// Asks one `exec` to end its session within `grace`, and waits for its
/// answer.
async fn ask_end(e: &Entry, grace: Duration) -> std::io::Result<(usize, usize, usize)> {
    let stream = through_dir(&e.path, |short| std::os::unix::net::UnixStream::connect(short))?;
    // The socket must be the `exec`'s own, not one bound under its name.
    if !e.foreign_pid_namespace {
        let peer = crate::sys::peer_pid(&stream)?;
        if peer != e.exec.pid {
            return Err(std::io::Error::other(format!(
                "the socket of exec {} is served by pid {peer}: not ours, left alone",
                e.exec.pid
            )));
        }
    }
    stream.set_nonblocking(true)?;
    let mut stream = UnixStream::from_std(stream)?;
    stream.write_all(format!("end {}\n", grace.as_millis()).as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(grace + END_SLACK, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the exec"))?;
    let counts: Option<Vec<usize>> =
        line.trim().strip_prefix("ended ").map(|r| r.split(' ').filter_map(|n| n.parse().ok()).collect());
    if let Some([s, t, k]) = counts.as_deref() {
        return Ok((*s, *t, *k));
    }
    // No answer (the connection reset or closed): the `exec` was already
    // ending its session, and exits once it has. Its tree is gone with it.
    if read.is_err() || line.is_empty() {
        for _ in 0..500 {
            if !e.is_alive() {
                return Ok((0, 0, 0));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    match read {
        Err(err) => Err(err),
        Ok(_) => Err(std::io::Error::other(format!("unexpected answer from the exec: {:?}", line.trim()))),
    }
}

/// Ends the sessions of `entries` (each `exec` ends its own tree with
/// `grace`); stale entries are removed.
pub async fn end(entries: Vec<Entry>, grace: Duration) -> SweepReport {
    let started = std::time::Instant::now();
    let mut report = SweepReport::default();
    let mut sessions = std::collections::HashSet::new();
    // Concurrently: each `exec` waits out its own grace.
    let mut asks = tokio::task::JoinSet::new();
    for e in entries {
        asks.spawn(async move {
            let r = if e.is_alive() { Some(ask_end(&e, grace).await) } else { None };
            (e, r)
        });
    }
    while let Some(Ok((e, r))) = asks.join_next().await {
        sessions.insert((e.instance.clone(), e.session.clone()));
        match r {
            None => remove_socket(&e.path),
            Some(Ok((signalled, terminated, killed))) => {
                if signalled > 0 || killed > 0 {
                    report.leaks_prevented += 1;
                }
                report.terminated += terminated;
                report.killed += killed;
            }
            // It exited meanwhile: its socket may be left.
            Some(Err(_)) if !e.is_alive() => remove_socket(&e.path),
            Some(Err(err)) => report.errors.push(SweepError { session: e.session.clone(), error: err.to_string() }),
        }
    }
    report.sessions = sessions.len();
    report.elapsed = started.elapsed();
    report
}

/// Whether `who` is `pid` or one of its ancestors.
fn descends_from(pid: i32, who: Owner) -> bool {
    let mut p = pid;
    for _ in 0..256 {
        if p == who.pid {
            return who.is_alive();
        }
        match crate::tree::parent_of(p) {
            Some(pp) if pp > 0 => p = pp,
            _ => return false,
        }
    }
    false
}

/// The live `exec`s of `session` that belong to `owner`: registered under
/// its instance, or started below it through intermediaries (an `exec`
/// whose owner is a watchdog the gateway started).
pub fn of_owner(run: &Path, owner: Owner, session: &str) -> Vec<Entry> {
    let own = owner.instance_name();
    entries(run)
        .into_iter()
        .filter(|e| e.session == session)
        .filter(|e| e.instance == own || (e.is_alive() && descends_from(e.exec.pid, owner)))
        .collect()
}

/// `sweep` of the registry: [`Scope::Stale`] and
/// [`Scope::StaleAndOrphaned`] end the sessions whose owner is gone (an
/// `exec` ends its session itself when its owner dies; this catches one
/// that could not) and remove the sockets of `exec`s that are gone;
/// [`Scope::Everything`] ends every session.
pub async fn sweep(run: &Path, scope: Scope, grace: Duration) -> SweepReport {
    let chosen: Vec<Entry> = entries(run)
        .into_iter()
        .filter(|e| matches!(scope, Scope::Everything) || !e.is_alive() || !e.owner_alive())
        .collect();
    end(chosen, grace).await
}

/// The processes an `exec` holds: its holder's tree (the command and what
/// it left). None for one of another pid namespace, whose pids are not
/// ours.
pub(crate) fn pids_of(e: &Entry) -> Vec<i32> {
    if e.foreign_pid_namespace {
        return Vec::new();
    }
    // The exec's children are its holders; their trees are the session.
    crate::holder::children_of(e.exec.pid)
        .into_iter()
        .flat_map(|h| crate::holder::members_of_pid(h).into_iter().map(|fd| fd.pid() as i32))
        .collect()
}

/// The registered `exec`s of one owner, by session.
pub(crate) struct Group {
    /// The instance directory's name.
    pub instance: String,
    pub owner: Owner,
    pub owner_alive: bool,
    pub foreign_pid_namespace: bool,
    /// Each session id with its `exec`s, in the registry's order.
    pub sessions: Vec<(String, Vec<Entry>)>,
}

/// The registry by instance and session, for `ps` and the metrics.
pub(crate) fn groups(run: &Path) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for e in entries(run) {
        let at = match out.iter().position(|g| g.instance == e.instance) {
            Some(i) => i,
            None => {
                out.push(Group {
                    instance: e.instance.clone(),
                    owner: e.owner,
                    owner_alive: e.owner_alive(),
                    foreign_pid_namespace: e.foreign_pid_namespace,
                    sessions: Vec::new(),
                });
                out.len() - 1
            }
        };
        let sessions = &mut out[at].sessions;
        match sessions.iter_mut().find(|(id, _)| *id == e.session) {
            Some((_, execs)) => execs.push(e),
            None => sessions.push((e.session.clone(), vec![e])),
        }
    }
    out
}

/// The processes the live `exec`s among `execs` hold.
pub(crate) fn live_pids(execs: &[Entry]) -> Vec<i32> {
    execs.iter().filter(|e| e.is_alive()).flat_map(pids_of).collect()
}

/// The registry as `ps` shows it: instances, their sessions, and the
/// processes each `exec` holds (its holder's tree: the command and what it
/// left), with their resident memory.
pub fn list(run: &Path) -> Vec<InstanceInfo> {
    let age = |e: &Entry| std::fs::symlink_metadata(&e.path).ok()?.modified().ok()?.elapsed().ok().map(|d| d.as_secs());
    groups(run)
        .into_iter()
        .map(|g| {
            let sessions: Vec<SessionInfo> = g
                .sessions
                .iter()
                .map(|(id, execs)| {
                    let pids = live_pids(execs);
                    let alive = execs.iter().any(Entry::is_alive);
                    SessionInfo {
                        id: id.clone(),
                        path: execs[0].path.parent().map(Path::to_owned).unwrap_or_default(),
                        state: if g.owner_alive && alive { SessionState::Active } else { SessionState::Stale },
                        processes: pids.len(),
                        memory_bytes: pids.iter().map(|p| crate::tree::rss_bytes(*p)).sum(),
                        memory_source: "rss",
                        age_secs: execs.iter().filter_map(age).max(),
                        command: crate::tree::oldest_command(&pids),
                    }
                })
                .collect();
            InstanceInfo {
                path: held_dir(run).join(&g.instance),
                name: g.instance,
                owner_pid: g.owner.pid,
                owner_alive: g.owner_alive,
                foreign_pid_namespace: g.foreign_pid_namespace,
                age_secs: sessions.iter().filter_map(|s| s.age_secs).max(),
                sessions,
            }
        })
        .collect()
}

/// Ends the calling process as `status` says the command ended: with the
/// same exit code, or killed by the same signal (its action set back to
/// the default first, and no core dump of this process), so that whoever
/// waits for the `exec` sees what it would have seen of the command, but
/// for the core-dump flag.
pub fn exit_as(status: std::process::ExitStatus) -> ! {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    let sig = status.signal().unwrap_or(libc::SIGKILL);
    // No core of this process (the command's own, if any, is written):
    // not dumpable, which a piped `core_pattern` respects too.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let _ = crate::sys::signal::set_ignored(sig, false);
    let _ = crate::sys::signal::unblock(sig);
    if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), s);
    }
    // A signal whose default is to be ignored (SIGWINCH) or not delivered:
    // the shell's convention.
    std::process::exit(128 + sig)
}

/// Signals taken from their default actions for `exec` to forward: blocked
/// in the calling thread (and the threads it starts afterwards) and read
/// through a signalfd, which says who sent each. Make it before any other
/// thread starts, so that none of them takes a signal by its default action.
#[derive(Debug)]
pub struct Signals {
    fd: std::os::fd::OwnedFd,
}

/// A signal [`Signals`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The signal number.
    pub signal: i32,
    /// Whether the kernel sent it: a terminal's signal (`^C`, `^Z`, a
    /// resize) to its whole foreground process group, which the command,
    /// in the same group, has received as well.
    pub from_terminal: bool,
}

impl Signals {
    /// Blocks `signals` and opens a signalfd for them.
    ///
    /// # Errors
    /// An invalid signal number, or no signalfd.
    pub fn block(signals: &[i32]) -> Result<Signals> {
        let fd = crate::sys::signal::block_into_fd(signals)
            .map_err(|e| Error::io("block the signals to forward", "/proc/self", e))?;
        Ok(Signals { fd })
    }

    /// Starts reading them (inside a tokio runtime).
    ///
    /// # Errors
    /// Outside a runtime.
    pub fn reader(self) -> Result<SignalReader> {
        let fd = crate::sys::async_fd::register(self.fd, tokio::io::Interest::READABLE)
            .map_err(|e| Error::io("watch the signals to forward", "/proc/self", e))?;
        Ok(SignalReader { fd })
    }
}

/// [`Signals`] being read.
#[derive(Debug)]
pub struct SignalReader {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl SignalReader {
    /// The next signal received.
    ///
    /// # Errors
    /// A failed read of the signalfd.
    pub async fn recv(&self) -> Result<Received> {
        loop {
            let mut ready =
                self.fd.readable().await.map_err(|e| Error::io("read the signals to forward", "/proc/self", e))?;
            match crate::sys::signal::read_signalfd(self.fd.get_ref()) {
                Ok(Some((signal, from_terminal))) => return Ok(Received { signal, from_terminal }),
                Ok(None) => ready.clear_ready(),
                Err(e) => return Err(Error::io("read the signals to forward", "/proc/self", e)),
            }
        }
    }
}

/// Stops the calling process as the command was asked to stop: `sig`
/// (SIGTSTP, SIGTTIN or SIGTTOU), blocked for [`Signals`], is unblocked in
/// the calling thread, sent to this process at its default action, and
/// blocked again. The kernel then applies the rules of job control as it
/// did to the command: stopped until the next SIGCONT, or not at all in a
/// process group that no shell controls any more (an orphaned one).
pub fn stop_self(sig: i32) {
    let _ = crate::sys::signal::set_ignored(sig, false);
    if crate::sys::signal::unblock(sig).is_ok() {
        if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
            let _ = rustix::process::kill_process(rustix::process::getpid(), s);
        }
        let _ = crate::sys::signal::block(sig);
    }
}
