//! Holders: containment of a command's tree where no cgroup can be written
//! (a default container: cgroup2 read-only, no `CAP_SYS_ADMIN`).
//!
//! # The holder
//! A command is started from a small process of its own, its holder: the
//! gateway's thread clones the holder, the holder makes itself a subreaper
//! (`PR_SET_CHILD_SUBREAPER`) and clones the command, which waits; the
//! holder calls `execve` of the program that links procscope
//! (`/proc/self/exe`, the gateway's own program for a library user) as
//! `procscope-holder`, and a constructor turns it into the holder's loop
//! before `main` (`sys::hook`). Once the holder has taken its identity
//! (below), it lets the command go on through the usual steps to `execve`
//! (`sys::spawn::spawn_held`): the command's program never runs beside a
//! holder it could still signal. Every orphan of the command's tree — a
//! `setsid` helper, a double-forked daemon — is re-parented to the holder
//! rather than to init, so the tree stays together below the holder,
//! whatever its processes do to their sessions and process groups.
//!
//! # What the holder does
//! One `poll` loop over two fds, never a fixed sleep: a signalfd for
//! SIGCHLD and the read end of a control pipe whose write end only the
//! gateway holds.
//! - It reaps every child it has, and reports the command's raw wait status
//!   on its status pipe when the command exits: the gateway is not the
//!   command's parent, so this is how it learns the status (as `waitid`
//!   gives it: code, signal, core dump).
//! - The command's pid stays valid until the gateway has opened its pidfd:
//!   the holder reaps nothing before the gateway's first message.
//! - When it has no child left, it exits.
//! - When the control pipe reaches its end — the gateway ended the tree, or
//!   the gateway died, even by SIGKILL — it SIGKILLs every process below
//!   it, walking the tree again until nothing new appears, reaps them and
//!   exits.
//!
//! It blocks every signal that can be blocked, so only SIGKILL ends it.
//! Where the gateway is root, it then takes the guardian's identity (real
//! and saved uid [`crate::GUARDIAN_UID`], effective uid 0, `CAP_KILL` only,
//! not dumpable): the processes it keeps, whatever their uid, hold no
//! capability and cannot signal or ptrace it.
//!
//! # Walking the tree
//! A holder's tree is read from `/proc/<pid>/task/<tid>/children`,
//! breadth first. Every process found is opened as a pidfd and then
//! checked to still have the parent it was found under (or the holder, if
//! that parent has died meanwhile): a pid that was reused between the read
//! and the open names another process, which fails the check, and a pidfd
//! never reaches another process once opened.
//!
//! # What it does not guarantee, compared with a cgroup
//! - No atomic kill: a process may fork between a walk and its SIGKILL; the
//!   walk is repeated until nothing new appears, and a SIGKILLed process
//!   cannot fork again.
//! - A holder of a gateway that is not root keeps the gateway's uid: its
//!   commands can signal it. Killed, a holder's orphans go to the next
//!   subreaper up.
//! - No limits, no membership that a process can be asked about: the tree
//!   is what the holder's descendants are.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions};

use crate::pidfd::PidFd;

/// The `argv[0]` a holder is started with; the constructor acts on nothing
/// else.
pub(crate) const HOLDER_ARGV0: &str = "procscope-holder";
/// The variable that must be set (to `1`) in a holder's environment.
pub(crate) const HOLDER_ENV: &str = "PROCSCOPE_HOLDER";

// ---------------------------------------------------------------------------
// The holder's own process.
// ---------------------------------------------------------------------------

/// The holder's program, entered from the constructor: never returns.
pub(crate) fn main() -> ! {
    let code = match run() {
        Ok(()) => 0,
        Err(_) => {
            // Whatever failed, the tree must not outlive its holder.
            kill_all_blocking();
            1
        }
    };
    std::process::exit(code)
}

fn run() -> io::Result<()> {
    // Its name in `ps`, `top` and `/proc/<pid>/comm` (15 bytes at most), not
    // `exe` after `/proc/self/exe`.
    let _ = rustix::thread::set_name(c"procscope-hold");
    // SIGCHLD at its default (not ignored, so the kernel leaves the reaping
    // to us) and then blocked, read through the signalfd; every other
    // signal blocked too: only SIGKILL ends a holder.
    crate::sys::signal::set_ignored(libc::SIGCHLD, false)?;
    crate::sys::signal::block_all()?;
    let [status, control, go] = crate::sys::holder_fds()?;
    let go = go_before_identity(go)?;
    // The guardian's identity, where the gateway is root: a child (of any
    // uid, without capabilities) can then neither signal nor ptrace its
    // holder. Without it (a gateway that is not root), the holder keeps the
    // gateway's uid, as documented.
    if take_own_identity() {
        let _ = crate::guardian::take_identity();
    }
    // The command has waited for this byte before its first step: its
    // program starts only now, with its holder already out of its reach.
    if let Some(go) = go {
        rustix::io::write(&go, &[1]).map_err(io::Error::from)?;
    }
    // The gateway's stdio and working directory are not the holder's: a
    // reader of the gateway's output must not wait for the holder to close
    // it, and the holder must not keep a directory busy.
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    if std::os::fd::AsRawFd::as_raw_fd(&null) <= 2 {
        // It took one of the closed stdio numbers, which it now is.
        std::mem::forget(null);
    }
    rustix::process::chdir("/")?;
    let sigchld = crate::sys::signal::sigchld_fd()?;
    let mut holder = Loop { status, command: None, reported: false, sigchld };
    // The gateway's first message: the command's pid, once it holds the
    // command's pidfd. Nothing is reaped before it.
    let mut pid = [0u8; 4];
    if read_exact(&control, &mut pid).is_err() {
        holder.end_tree();
        return Ok(());
    }
    holder.command = Some(i32::from_le_bytes(pid));
    loop {
        if !holder.reap()? {
            return Ok(());
        }
        let mut fds = [PollFd::new(&control, PollFlags::IN), PollFd::new(&holder.sigchld, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        if !fds[0].revents().is_empty() {
            // Any byte or the end: the gateway is done with this tree.
            holder.end_tree();
            return Ok(());
        }
        holder.drain();
    }
}

/// Whether the holder takes an identity of its own: where the gateway is
/// root of the initial user namespace ([`crate::guardian::identity`]), and
/// unless procscope's tests turned it off for their control runs.
fn take_own_identity() -> bool {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os(KEEP_UID_ENV).is_some() {
        return false;
    }
    crate::guardian::identity().is_some()
}

/// The go pipe's write end, where the byte is still to be written after
/// the holder has taken its identity. Procscope's tests can have it
/// written first (the order before the go pipe existed), and the identity
/// taken half a second later, for the control run of the test of that
/// order.
fn go_before_identity(go: OwnedFd) -> io::Result<Option<OwnedFd>> {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os(GO_FIRST_ENV).is_some() {
        rustix::io::write(&go, &[1]).map_err(io::Error::from)?;
        std::thread::sleep(Duration::from_millis(500));
        return Ok(None);
    }
    Ok(Some(go))
}

/// Set (by procscope's tests only) in a holder's environment: it lets its
/// command go before it takes its identity (see [`go_before_identity`]).
#[cfg(feature = "test-hooks")]
pub(crate) const GO_FIRST_ENV: &str = "PROCSCOPE_HOLDER_GO_FIRST";

/// The environment entries (`NAME=1`) of the test hooks that are on, for
/// the holders started from now on.
#[cfg(feature = "test-hooks")]
pub(crate) fn hook_env() -> Vec<std::ffi::CString> {
    use std::sync::atomic::Ordering::SeqCst;
    [(&KEEP_UID, KEEP_UID_ENV), (&GO_FIRST, GO_FIRST_ENV)]
        .into_iter()
        .filter(|(on, _)| on.load(SeqCst))
        .map(|(_, name)| std::ffi::CString::new(format!("{name}=1")).expect("no NUL"))
        .collect()
}

/// Whether holders started from now on let their command go first (tests).
#[cfg(feature = "test-hooks")]
pub(crate) static GO_FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set (by procscope's tests only) in a holder's environment: it keeps the
/// gateway's uid.
#[cfg(feature = "test-hooks")]
pub(crate) const KEEP_UID_ENV: &str = "PROCSCOPE_HOLDER_KEEP_UID";

/// Whether holders started from now on keep the gateway's uid (tests).
#[cfg(feature = "test-hooks")]
pub(crate) static KEEP_UID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Loop {
    status: OwnedFd,
    command: Option<i32>,
    reported: bool,
    sigchld: OwnedFd,
}

impl Loop {
    /// Reaps every child that has exited, reporting the command's status.
    /// Returns false once the holder has no child left.
    fn reap(&mut self) -> io::Result<bool> {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, st))) => {
                    if Some(pid.as_raw_nonzero().get()) == self.command && !self.reported {
                        self.reported = true;
                        let _ = write_all(&self.status, &st.as_raw().to_le_bytes());
                    }
                }
                Ok(None) => return Ok(true),
                Err(Errno::INTR) => continue,
                Err(Errno::CHILD) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Empties the signalfd (its records say nothing `wait` does not).
    fn drain(&self) {
        let mut buf = [0u8; 128 * 8];
        while rustix::io::read(&self.sigchld, &mut buf).is_ok_and(|n| n > 0) {}
    }

    /// SIGKILLs everything below the holder, walking again until nothing is
    /// left, and reaps it.
    fn end_tree(&mut self) {
        let me = rustix::process::getpid();
        loop {
            for m in members_of(me) {
                let _ = m.send_signal(crate::Signal::KILL);
            }
            match self.reap() {
                Ok(true) => {}
                _ => return,
            }
            // Bounded: the next death (or orphan re-parented) wakes it.
            let mut fds = [PollFd::new(&self.sigchld, PollFlags::IN)];
            let step = rustix::time::Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
            let _ = rustix::event::poll(&mut fds, Some(&step));
            self.drain();
        }
    }
}

/// SIGKILLs and reaps everything below this process, with no signalfd:
/// for a holder that failed, which must not leave its tree behind.
fn kill_all_blocking() {
    let me = rustix::process::getpid();
    loop {
        for m in members_of(me) {
            let _ = m.send_signal(crate::Signal::KILL);
        }
        match rustix::process::wait(WaitOptions::empty()) {
            Err(Errno::CHILD) => return,
            Err(Errno::INTR) | Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn read_exact(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The tree, as anyone may read it.
// ---------------------------------------------------------------------------

/// The children of `pid`, of every thread, from `/proc`.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return kids };
    for t in tasks.flatten() {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        kids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    kids
}

/// The parent pid of `pid` (field 4 of `/proc/<pid>/stat`).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Every live process below `root` (not `root` itself), as verified pidfds
/// (see the module's docs): a parent's list of children counts only if the
/// parent, held by its pidfd, is still alive after the list was read (its
/// pid was its own throughout); each child is opened, then found to still
/// have the parent it was listed under, or `root` if that parent has died
/// since. `root` must be alive and stay so (a holder walking its own tree),
/// or be checked by the caller after the walk.
pub(crate) fn members_of(root: Pid) -> Vec<PidFd> {
    let root = root.as_raw_nonzero().get();
    let Ok(root_fd) = PidFd::open(root as u32) else { return Vec::new() };
    let mut found: Vec<PidFd> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // (pid, its index in `found`, or None for the root)
    let mut queue: Vec<(i32, Option<usize>)> = vec![(root, None)];
    loop {
        while let Some((parent, at)) = queue.pop() {
            let kids = children_of(parent);
            let parent_fd = at.map_or(&root_fd, |i| &found[i]);
            if !parent_fd.is_alive() {
                continue;
            }
            for pid in kids {
                if seen.contains(&pid) {
                    continue;
                }
                let Ok(fd) = PidFd::open(pid as u32) else { continue };
                if parent_of(pid).is_some_and(|p| p == parent || p == root) {
                    seen.insert(pid);
                    queue.push((pid, Some(found.len())));
                    found.push(fd);
                }
            }
        }
        // A process whose parent died during the walk was re-parented to
        // the root after the root's list was read, and was in neither
        // list: the root's children again, until none is new.
        let again: Vec<i32> = children_of(root).into_iter().filter(|p| !seen.contains(p)).collect();
        if again.is_empty() {
            return found;
        }
        queue.push((root, None));
    }
}

/// [`members_of`] by raw pid: nothing for a pid that is not a process.
pub(crate) fn members_of_pid(root: i32) -> Vec<PidFd> {
    Pid::from_raw(root).map(members_of).unwrap_or_default()
}

/// Whether `root` (alive) has a child: its tree is empty exactly when it
/// has none, as every orphan of the tree is re-parented to it before its
/// parent is reaped. One read, not a walk.
fn has_children(root: Pid) -> bool {
    !children_of(root.as_raw_nonzero().get()).is_empty()
}

// ---------------------------------------------------------------------------
// The gateway's side.
// ---------------------------------------------------------------------------

/// A command's holder, seen from the gateway that started it (see the
/// module's docs). Dropping it tells the holder to SIGKILL its whole tree.
#[derive(Debug)]
pub struct Holder {
    pid: Pid,
    /// A duplicate of the holder's pidfd (the reaper holds the other).
    pidfd: PidFd,
    /// The write end of the holder's control pipe; its end ends the tree.
    control: std::sync::Mutex<Option<OwnedFd>>,
}

impl Holder {
    pub(crate) fn new(pid: Pid, pidfd: PidFd, control: OwnedFd) -> Holder {
        Holder { pid, pidfd, control: std::sync::Mutex::new(Some(control)) }
    }

    /// The holder's pid.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// Every live process the holder keeps: the command while it runs and
    /// everything it left, as verified pidfds.
    pub fn members(&self) -> Vec<PidFd> {
        // The holder's pid is only its own while it runs: checked before and
        // after the walk, which then cannot have started from a stranger.
        if !self.pidfd.is_alive() {
            return Vec::new();
        }
        let members = members_of(self.pid);
        if self.pidfd.is_alive() { members } else { Vec::new() }
    }

    /// Whether nothing of its tree runs any more: the holder has exited, or
    /// is about to (it exits once it has no child left, and a tree without
    /// a process cannot grow again).
    pub fn is_empty(&self) -> bool {
        // A pid reused after the holder's exit can only make this say "not
        // empty", which a sweep then finds otherwise.
        !self.is_alive() || !has_children(self.pid)
    }

    /// Continues the holder, should a process of its tree (of the gateway's
    /// uid) have stopped it: a stopped holder acts on nothing.
    pub(crate) fn resume(&self) {
        let _ = self.pidfd.send_signal(crate::Signal::CONT);
    }

    /// Whether the holder is still running (its tree not yet empty).
    pub fn is_alive(&self) -> bool {
        self.pidfd.is_alive()
    }

    /// Ends the tree: SIGTERM and SIGCONT to every member, up to `grace` for
    /// the tree to empty (then the holder exits by itself), then the holder
    /// SIGKILLs what is left. Returns how many processes were signalled.
    ///
    /// # Errors
    /// Waiting for the holder needs a tokio runtime.
    pub async fn end(self, grace: Duration) -> crate::Result<usize> {
        let members = self.members();
        for m in &members {
            let _ = m.send_signal(crate::Signal::TERM);
            let _ = m.send_signal(crate::Signal::CONT);
        }
        let _ = tokio::time::timeout(grace, self.pidfd.exited()).await;
        self.kill()?;
        self.pidfd.exited().await?;
        Ok(members.len())
    }

    /// Tells the holder to SIGKILL its tree (the end of its control pipe);
    /// [`wait_gone`](Self::wait_gone) then returns once the tree is gone.
    pub(crate) fn kill(&self) -> io::Result<()> {
        drop(self.control.lock().unwrap_or_else(|p| p.into_inner()).take());
        Ok(())
    }

    /// Waits until the holder has exited: its tree is empty.
    ///
    /// # Errors
    /// Waiting needs a tokio runtime.
    pub async fn wait_gone(&self) -> crate::Result<()> {
        Ok(self.pidfd.exited().await?)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // The end of the control pipe: the holder SIGKILLs its tree.
        drop(self.control.get_mut().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// The command's exit status as its holder reports it: one raw wait status
/// on the status pipe (non-blocking). `Ok(None)`: not yet.
pub(crate) fn read_status(pipe: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    let mut buf = [0u8; 4];
    match rustix::io::read(pipe, &mut buf) {
        Ok(4) => Ok(Some(ExitStatus::from_raw(i32::from_le_bytes(buf)))),
        Ok(0) => Err(io::Error::other("the command's holder exited without reporting the command's exit")),
        Ok(_) => Err(io::Error::other("a short report from the command's holder")),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Waits (async) until the holder's status pipe has something to read.
pub(crate) async fn status_ready(pipe: &OwnedFd) -> io::Result<()> {
    let dup = rustix::io::fcntl_dupfd_cloexec(pipe.as_fd(), 3)?;
    let afd = crate::sys::async_fd::register(dup, tokio::io::Interest::READABLE)?;
    let _ready = afd.readable().await?;
    Ok(())
}
