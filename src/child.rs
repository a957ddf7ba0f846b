//! [`ContainedChild`]: a running child, known by its pidfd.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::process::{ExitStatus, Output};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;

use crate::autokill::AutoKill;
use crate::command::SpawnMechanism;
use crate::error::{Error, Result};
use crate::identity::TransientUser;
use crate::pidfd::PidFd;
use crate::signal::Signal;
use crate::sys::spawn::Spawned;

/// A child process of ours, shared between its [`ContainedChild`] handle and the
/// session that tracks it. Whoever drops the last reference to a child that has
/// not been reaped hands it to the reaper, so no zombie is left behind, and a
/// child tied to its pidfd is not killed by the drop.
#[derive(Debug)]
pub(crate) struct ChildCell {
    pidfd: PidFd,
    status: Mutex<Option<ExitStatus>>,
    /// Made with `CLONE_PIDFD_AUTOKILL | CLONE_AUTOREAP`: the kernel reaps
    /// it (its status comes from `PIDFD_GET_INFO`), and closing the last
    /// reference to `pidfd` kills it.
    autokill: bool,
    /// Started from a holder (`crate::holder`), which reaps it and reports
    /// its status on this pipe: not our child.
    held: Option<OwnedFd>,
}

impl ChildCell {
    pub(crate) fn pid(&self) -> i32 {
        self.pidfd.raw_pid()
    }

    pub(crate) fn pidfd(&self) -> &PidFd {
        &self.pidfd
    }

    /// Whether the child is still running (not exited).
    pub(crate) fn is_alive(&self) -> bool {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).is_none() && self.pidfd.is_alive()
    }

    /// The exit status if the child has been reaped, else reaps it if it has
    /// exited (or, for a child the kernel reaps, reads its status once it has).
    pub(crate) fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.is_none() {
            *status = match &self.held {
                Some(pipe) => crate::holder::read_status(pipe)?,
                None if self.autokill => self.pidfd.try_released_status()?,
                None => self.pidfd.try_wait()?,
            };
        }
        Ok(*status)
    }

    /// Waits for the exit and reaps. Cancel-safe.
    pub(crate) async fn wait(&self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            if let Some(pipe) = &self.held {
                crate::holder::status_ready(pipe).await?;
            } else if self.autokill {
                self.pidfd.released().await?;
            } else {
                self.pidfd.exited().await?;
            }
        }
    }

    /// Whether the kernel kills the child with the last reference to its pidfd.
    pub(crate) fn auto_kill(&self) -> AutoKill {
        if self.autokill { AutoKill::Pidfd } else { AutoKill::Off }
    }

    /// Signals the child unless it has been reaped (then its pid may be reused,
    /// but its pidfd never reaches another process: we skip the call anyway).
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        if self.status.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
        match self.pidfd.send_signal(sig) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }
}

impl Drop for ChildCell {
    fn drop(&mut self) {
        let reaped = self.status.get_mut().map(|s| s.is_some()).unwrap_or(true);
        // A held child is its holder's to reap.
        if reaped || self.held.is_some() {
            return;
        }
        if self.pidfd.exited_now(self.autokill) {
            return;
        }
        // Still running: never block in drop; the reaper waits for it (and
        // holds the pidfd of a child tied to it, which closing would kill).
        match rustix::io::fcntl_dupfd_cloexec(&self.pidfd, 3) {
            Ok(fd) => crate::reaper::adopt(PidFd::from_owned(fd, self.pidfd.rustix_pid()), self.autokill),
            Err(e) if self.autokill => tracing::error!(pid = self.pidfd.raw_pid(), error = %e,
                "cannot hand a running child to the reaper; the kernel kills it now (CLONE_PIDFD_AUTOKILL)"),
            Err(e) => tracing::error!(pid = self.pidfd.raw_pid(), error = %e,
                "cannot hand a running child to the reaper; it will stay a zombie after exit"),
        }
    }
}

/// The parent's ends of the child's pipes.
pub(crate) struct ParentPipes {
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl ParentPipes {
    pub(crate) fn new(stdin: Option<OwnedFd>, stdout: Option<OwnedFd>, stderr: Option<OwnedFd>) -> Result<Self> {
        let pipe_err = |e: io::Error| Error::io("register pipe", "stdio", e);
        Ok(ParentPipes {
            stdin: stdin
                .map(|fd| pipe::Sender::from_owned_fd(fd).map(|inner| ChildStdin { inner }))
                .transpose()
                .map_err(pipe_err)?,
            stdout: stdout
                .map(|fd| pipe::Receiver::from_owned_fd(fd).map(|inner| ChildStdout { inner }))
                .transpose()
                .map_err(pipe_err)?,
            stderr: stderr
                .map(|fd| pipe::Receiver::from_owned_fd(fd).map(|inner| ChildStderr { inner }))
                .transpose()
                .map_err(pipe_err)?,
        })
    }
}

/// A running child in a session cgroup: what [`Session::spawn`] and
/// [`Command::spawn_in`] return, shaped like `tokio::process::Child`.
///
/// [`Session::spawn`]: crate::Session::spawn
/// [`Command::spawn_in`]: crate::Command::spawn_in
///
/// # Examples
/// ```no_run
/// # async fn run(session: &procscope::Session) -> procscope::Result<()> {
/// use procscope::{Command, Stdio};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// let mut child = session.spawn(Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()))?;
/// let mut stdin = child.stdin.take().expect("piped");
/// stdin.write_all(b"hello\n").await?;
/// drop(stdin);
/// let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
/// assert_eq!(lines.next_line().await?.as_deref(), Some("hello"));
/// assert!(child.wait().await?.success());
/// # Ok(()) }
/// ```
///
/// # Caveats
/// - Dropping the handle does not kill the child (unless
///   [`Command::kill_on_drop`](crate::Command::kill_on_drop) was set): inside
///   a session, the session guard decides what happens to it. In every case it
///   is reaped when it exits, so no zombie is left.
/// - The pid ([`id`](Self::id)) stays the child's number after it exited,
///   unlike tokio's `Option`: act on the child through its [`pidfd`](Self::pidfd)
///   or this handle, never by pid.
/// - [`signal`](Self::signal) and [`kill`](Self::kill) reach the child only,
///   as in tokio; its descendants are ended with the session
///   ([`Session::close`](crate::Session::close)).
/// - On Linux ≥ 7.1, in a gateway that holds `CAP_SYS_ADMIN`, the child dies
///   with the last handle of it ([`auto_kill`](Self::auto_kill)): procscope
///   holds its pidfd for as long as the child is meant to run (this handle,
///   its session, the orphan pool until it is swept, the reaper after a drop),
///   so while the gateway runs nothing changes. When the whole gateway process
///   is gone — it exits, crashes or is SIGKILLed, guardian or not — or calls
///   `execve` (pidfds are close-on-exec), the kernel SIGKILLs the child. A
///   `fork`ed copy of the gateway keeps it alive until the copy calls
///   `execve` or exits. The child's own descendants are not reached: its
///   session ends them (the guardian, a sweep, a recovery).
/// - Such a child is reaped by the kernel (`CLONE_AUTOREAP`): it never becomes
///   a zombie, sends no `SIGCHLD`, and `waitpid` on its pid fails with
///   `ECHILD`. [`wait`](Self::wait) and [`try_wait`](Self::try_wait) read its
///   status from the kernel (`PIDFD_INFO_EXIT`) instead: the same
///   [`ExitStatus`] (code, signal, core dump) as `waitid` gives.
#[derive(Debug)]
pub struct ContainedChild {
    handle: Handle,
    mechanism: SpawnMechanism,
    sealed: bool,
    /// The transient user the child runs as, held until the handle is dropped
    /// (a session holds its own for as long as it lasts).
    user: Option<Arc<TransientUser>>,
    /// The write end of the child's stdin, when it was [`Stdio::Piped`](crate::Stdio::Piped).
    pub stdin: Option<ChildStdin>,
    /// The read end of the child's stdout, when piped.
    pub stdout: Option<ChildStdout>,
    /// The read end of the child's stderr, when piped.
    pub stderr: Option<ChildStderr>,
}

impl ContainedChild {
    pub(crate) fn new(
        spawned: Spawned,
        pipes: ParentPipes,
        mechanism: SpawnMechanism,
        sealed: bool,
        kill_on_drop: bool,
        user: Option<Arc<TransientUser>>,
    ) -> ContainedChild {
        ContainedChild {
            handle: Handle {
                cell: Arc::new(ChildCell {
                    pidfd: PidFd::from_owned(spawned.pidfd, spawned.pid),
                    status: Mutex::new(None),
                    autokill: spawned.autokill,
                    held: spawned.held,
                }),
                kill_on_drop,
            },
            mechanism,
            sealed,
            user,
            stdin: pipes.stdin,
            stdout: pipes.stdout,
            stderr: pipes.stderr,
        }
    }

    pub(crate) fn cell(&self) -> &Arc<ChildCell> {
        &self.handle.cell
    }

    /// The child's pid (informational: use the pidfd to act on it).
    pub fn id(&self) -> u32 {
        self.handle.cell.pidfd.raw_pid() as u32
    }

    /// The child's pidfd. For a child tied to it ([`auto_kill`](Self::auto_kill)),
    /// a duplicate of this fd (`dup`, or one passed to another process)
    /// keeps the child alive too; a pidfd opened anew with
    /// [`PidFd::open`] does not.
    pub fn pidfd(&self) -> &PidFd {
        &self.handle.cell.pidfd
    }

    /// How the child was placed in its cgroup.
    pub fn spawn_mechanism(&self) -> SpawnMechanism {
        self.mechanism
    }

    /// Whether the kernel kills the child when the last handle of it closes
    /// (`CLONE_PIDFD_AUTOKILL`, Linux ≥ 7.1, a gateway with `CAP_SYS_ADMIN`):
    /// see the caveats above.
    #[doc(alias = "CLONE_PIDFD_AUTOKILL")]
    pub fn auto_kill(&self) -> AutoKill {
        self.handle.cell.auto_kill()
    }

    /// The uid (and gid) of the transient user the child runs as, if it was
    /// started with [`Command::transient_user`](crate::Command::transient_user).
    pub fn transient_uid(&self) -> Option<u32> {
        self.user.as_ref().map(|u| u.uid())
    }

    /// Whether the child was sealed into its session (see
    /// [`Command::sealing`](crate::Command::sealing)).
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Waits for the child to exit and reaps it. Closes stdin first, so a child
    /// that reads until EOF can finish. Cancel-safe: nothing is reaped unless
    /// the future completes, and it can be awaited again.
    ///
    /// # Errors
    /// [`Error::Os`] if `waitid` (or, for a child the kernel reaps,
    /// `PIDFD_GET_INFO`) or the pidfd's registration with tokio fails (no
    /// tokio runtime with IO enabled).
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        drop(self.stdin.take());
        self.handle.cell.wait().await.map_err(|e| Error::os("wait for the child", self.id(), e))
    }

    /// Reaps the child if it has exited; `None` while it runs (and, for a
    /// child the kernel reaps, until the kernel has).
    ///
    /// # Errors
    /// [`Error::Os`] if `waitid` (or `PIDFD_GET_INFO`) fails.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.handle.cell.try_wait().map_err(|e| Error::os("reap the child", self.id(), e))
    }

    /// Closes stdin, reads stdout and stderr to their ends (those that are
    /// [`Stdio::Piped`](crate::Stdio::Piped); the others come back empty) while
    /// waiting for the child to exit, and returns all three, as
    /// `tokio::process::Child::wait_with_output` does.
    ///
    /// The pipes are read to EOF: a descendant that keeps the child's stdout
    /// open keeps this waiting until it exits or its session is ended.
    ///
    /// # Errors
    /// As [`wait`](Self::wait); [`Error::Os`] if reading a pipe fails.
    pub async fn wait_with_output(mut self) -> Result<Output> {
        drop(self.stdin.take());
        async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                p.read_to_end(&mut buf).await?;
            }
            Ok(buf)
        }
        let (stdout, stderr) = (self.stdout.take(), self.stderr.take());
        let pid = self.id();
        let (status, stdout, stderr) = tokio::join!(self.wait(), read_all(stdout), read_all(stderr));
        let read_err = |e| Error::os("read the child's output", pid, e);
        Ok(Output { status: status?, stdout: stdout.map_err(read_err)?, stderr: stderr.map_err(read_err)? })
    }

    /// Sends `sig` through the pidfd. A no-op once the child has been reaped.
    ///
    /// # Errors
    /// [`Error::Os`] if `pidfd_send_signal` fails other than for a process
    /// that is gone (for example `EPERM` for a child that changed its uid).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.handle.cell.signal(sig).map_err(|e| Error::os("signal the child", self.id(), e))
    }

    /// Sends SIGKILL without waiting, as tokio's `start_kill`.
    ///
    /// # Errors
    /// As [`signal`](Self::signal).
    pub fn start_kill(&self) -> Result<()> {
        self.signal(Signal::KILL)
    }

    /// Sends SIGKILL and waits for the exit. Unlike tokio's `kill`, which
    /// returns `()`, this returns the exit status (a signal death, unless the
    /// child had exited already).
    ///
    /// # Errors
    /// As [`signal`](Self::signal) and [`wait`](Self::wait).
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        self.start_kill()?;
        self.wait().await
    }
}

/// The handle's share of the child. Its own type, so that the `Drop` below
/// leaves `ContainedChild`'s pipe fields movable (`child.stdout.unwrap()`).
#[derive(Debug)]
struct Handle {
    cell: Arc<ChildCell>,
    kill_on_drop: bool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.kill_on_drop {
            // Only a child still running and not reaped gets it; the pidfd
            // never reaches another process.
            let _ = self.cell.signal(Signal::KILL);
        }
    }
}

macro_rules! pipe_type {
    ($name:ident, $inner:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug)]
        pub struct $name {
            inner: $inner,
        }

        impl $name {
            /// The pipe as a plain (blocking) fd, for handing to another program.
            ///
            /// # Errors
            /// [`Error::Os`] if the fd cannot be deregistered from tokio or
            /// made blocking.
            pub fn into_owned_fd(self) -> Result<OwnedFd> {
                self.inner.into_blocking_fd().map_err(|e| Error::Os { op: "take the pipe's fd", pid: None, source: e })
            }
        }

        impl AsFd for $name {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.inner.as_fd()
            }
        }

        impl AsRawFd for $name {
            fn as_raw_fd(&self) -> RawFd {
                self.inner.as_raw_fd()
            }
        }

        /// The pipe as another child's stdio (`a | b`), as tokio's
        /// `TryInto<Stdio>`: fails only if the fd cannot be taken from tokio.
        impl TryFrom<$name> for crate::Stdio {
            type Error = Error;

            fn try_from(pipe: $name) -> Result<crate::Stdio> {
                pipe.into_owned_fd().map(crate::Stdio::Fd)
            }
        }
    };
}

pipe_type!(ChildStdin, pipe::Sender, "The parent's end of a child's stdin: `AsyncWrite`.");
pipe_type!(ChildStdout, pipe::Receiver, "The parent's end of a child's stdout: `AsyncRead`.");
pipe_type!(ChildStderr, pipe::Receiver, "The parent's end of a child's stderr: `AsyncRead`.");

impl AsyncWrite for ChildStdin {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for ChildStdout {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncRead for ChildStderr {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
