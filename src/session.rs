//! [`Session`]: one session cgroup and the children started in it. Its `Drop` is
//! the guard that ends the session on every path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::cgroup::limits::Stats;
use crate::cgroup::{Cgroup, Events};
use crate::child::{ChildCell, ContainedChild};
use crate::command::Command;
use crate::ending::EndingCell;
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::identity::TransientUser;
use crate::supervisor::Inner;
use crate::sweep::{Place, Termination};

/// State shared by a session's handle, the supervisor's registry and the orphan
/// pool.
pub(crate) struct SessionShared {
    pub id: String,
    /// Directory name under the instance (`s-<id>`, or `s-<id>~N` while an orphan
    /// of the same id is still being swept).
    pub dir: String,
    /// `None` for a session contained with holders.
    pub cgroup: Option<Arc<Cgroup>>,
    /// The cgroup's path, or `holders/<dir>`: what its events carry.
    path: PathBuf,
    pub created: SystemTime,
    pub span: tracing::Span,
    /// How the session ended, for the counters; and its tick job.
    pub ending: EndingCell,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    children: Vec<Arc<ChildCell>>,
    /// The holders of its commands, with [`Containment::Holders`](crate::Containment::Holders).
    /// Kept until they are ended successfully, so that an ending that
    /// failed is tried again on them.
    holders: Vec<Arc<Holder>>,
    /// The session's transient user, from its first child that wanted one
    /// until the session is gone (see [`Command::transient_user`]).
    user: Option<Arc<TransientUser>>,
    /// No more spawns: the session has been released, closed or taken by a sweep.
    ended: bool,
}

impl SessionShared {
    pub(crate) fn new(id: String, dir: String, cgroup: Cgroup) -> SessionShared {
        SessionShared::with(id, dir, Some(Arc::new(cgroup)))
    }

    /// A session contained with holders.
    pub(crate) fn held(id: String, dir: String) -> SessionShared {
        SessionShared::with(id, dir, None)
    }

    fn with(id: String, dir: String, cgroup: Option<Arc<Cgroup>>) -> SessionShared {
        let span = tracing::info_span!("session", id = %id);
        let path = cgroup.as_ref().map_or_else(|| Path::new("holders").join(&dir), |c| c.path().to_owned());
        SessionShared {
            id,
            dir,
            cgroup,
            path,
            created: SystemTime::now(),
            span,
            ending: EndingCell::new(),
            state: Mutex::new(SessionState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the session ended; returns whether it already was.
    pub(crate) fn end(&self) -> bool {
        std::mem::replace(&mut self.lock().ended, true)
    }

    pub(crate) fn children(&self) -> Vec<Arc<ChildCell>> {
        self.lock().children.clone()
    }

    /// Whether a child spawned in the session is still alive (its pidfd says).
    pub(crate) fn children_alive(&self) -> bool {
        self.lock().children.iter().any(|c| c.is_alive())
    }

    /// The cgroup's path, or `holders/<dir>` for a session of holders.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether something of a holder's tree is alive.
    pub(crate) fn holders_alive(&self) -> bool {
        self.holders().iter().any(|h| !h.is_empty())
    }

    /// The session's holders (their trees are read outside the lock).
    fn holders(&self) -> Vec<Arc<Holder>> {
        self.lock().holders.clone()
    }

    /// The pids of the processes of its holders' trees now.
    pub(crate) fn held_pids(&self) -> Vec<u32> {
        self.holders().iter().flat_map(|h| h.members()).map(|m| m.raw_pid() as u32).collect()
    }

    /// The session's holders, taken: dropping them ends their trees.
    pub(crate) fn take_holders(&self) -> Vec<Arc<Holder>> {
        std::mem::take(&mut self.lock().holders)
    }

    /// Where its processes are, to end them: the cgroup under `instance`,
    /// or the holders (which stay the session's until it has ended).
    pub(crate) fn place(&self, instance: Option<Arc<Cgroup>>) -> Place {
        match (&self.cgroup, instance) {
            (Some(cgroup), Some(parent)) => Place::Cgroup { parent, cgroup: Arc::clone(cgroup) },
            _ => Place::Holders { path: self.path.clone(), holders: self.holders() },
        }
    }
}

/// A session: a cgroup of its own under the supervisor's instance, and the
/// processes started in it.
///
/// # Ending
/// Dropping a `Session` — on return, `?`, panic, an aborted task or a future
/// dropped by `select!`/`timeout` — is the end of the session: if nothing in it
/// is alive the cgroup is removed at once; otherwise the session goes to the
/// supervisor's orphan pool (and its cgroup's `state` metadata becomes
/// `orphaned`) for the next sweep. `Drop` never blocks, never panics and needs
/// no runtime. [`close`](Self::close) ends a session gracefully right away.
///
/// # Examples
/// ```no_run
/// # async fn run(sup: procscope::Supervisor) -> procscope::Result<()> {
/// use procscope::{Command, Limits};
///
/// let limits = Limits { pids_max: Some(32), ..Limits::default() };
/// let session = sup.session_with_limits("job-7", &limits)?;
/// let out = session.output(Command::new("sh").args(["-c", "sleep 600 >/dev/null 2>&1 & echo started"])).await?;
/// assert_eq!(out.stdout, b"started\n");
/// // The sleep is still running in the session: close ends it.
/// let ended = session.close().await?;
/// assert_eq!(ended.signalled, 1);
/// # Ok(()) }
/// ```
///
/// # Errors
/// Spawning fails with a typed [`Error`] that names the failing step
/// ([`Error::Spawn`]), a session already ended ([`Error::CgroupRemoved`]), or a
/// program not found.
///
/// # Caveats
/// - A session id is unique within its supervisor while the session is
///   active or orphaned; reuse one only after its session has ended.
/// - A child can leave the session's cgroup only if it is unsealed
///   ([`Sealing::Off`](crate::Sealing::Off), or a gateway that cannot seal)
///   and privileged enough to write `cgroup.procs`.
/// - `close` runs its work in a task of its own: dropping its future half-way
///   does not stop the ending.
pub struct Session {
    shared: Arc<SessionShared>,
    sup: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("id", &self.shared.id).field("place", &self.shared.path).finish()
    }
}

impl Session {
    pub(crate) fn new(shared: Arc<SessionShared>, sup: Arc<Inner>) -> Session {
        Session { shared, sup }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The session's cgroup (none with
    /// [`Containment::Holders`](crate::Containment::Holders)).
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.shared.cgroup.as_deref()
    }

    /// Spawns `cmd` inside the session's cgroup and registers the child with the
    /// session before returning, so no cancellation can lose it.
    ///
    /// # Errors
    /// As [`Command::spawn_in`]; [`Error::CgroupRemoved`] once the session has
    /// been ended (by [`close`](Self::close) or a sweep of everything).
    pub fn spawn(&self, cmd: &mut Command) -> Result<ContainedChild> {
        self.spawn_with(cmd, &crate::command::SPAWN_STDIO)
    }

    /// Runs `cmd` in the session and waits for it, as tokio's
    /// `Command::status`: stdin, stdout and stderr are the gateway's unless
    /// set; pipes asked for ([`Stdio::piped`](crate::Stdio::piped)) are
    /// closed at once, so the child sees EOF or `EPIPE` on them.
    ///
    /// Only the command is waited for. What it leaves running stays in the
    /// session until the session ends.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(session: &procscope::Session) -> procscope::Result<()> {
    /// let status = session.status(procscope::Command::new("true").arg("--version")).await?;
    /// assert!(status.success());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn) and [`ContainedChild::wait`].
    pub async fn status(&self, cmd: &mut Command) -> Result<ExitStatus> {
        let mut child = self.spawn_with(cmd, &crate::command::SPAWN_STDIO)?;
        // Pipes nobody reads would block a child that writes to them (as
        // tokio, which closes them too).
        drop((child.stdout.take(), child.stderr.take()));
        child.wait().await
    }

    /// Runs `cmd` in the session and collects its output, as
    /// `std::process::Command::output` does: stdout and stderr are captured
    /// and stdin is `/dev/null`, unless set. (tokio's `output` captures
    /// stdout and stderr even when they were set otherwise, and inherits
    /// stdin.)
    ///
    /// Returns when the command has exited and both pipes are at their end:
    /// a daemon it started that keeps stdout open keeps this waiting until
    /// the daemon exits or the session is ended, as with tokio.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(session: &procscope::Session) -> procscope::Result<()> {
    /// let out = session.output(procscope::Command::new("uname").arg("-r")).await?;
    /// println!("kernel {}", String::from_utf8_lossy(&out.stdout).trim());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn) and [`ContainedChild::wait_with_output`].
    pub async fn output(&self, cmd: &mut Command) -> Result<Output> {
        self.spawn_with(cmd, &crate::command::OUTPUT_STDIO)?.wait_with_output().await
    }

    fn spawn_with(&self, cmd: &mut Command, defaults: &'static [crate::Stdio; 3]) -> Result<ContainedChild> {
        let _enter = self.shared.span.enter();
        let mut state = self.shared.lock();
        // Refusals before the spawn are `spawn` events too (`spawn_as` logs
        // the others).
        let refused = |e: Error| {
            crate::events::spawn(&self.shared.path, cmd.get_program(), Err(&e));
            e
        };
        if state.ended {
            return Err(refused(Error::CgroupRemoved { path: self.shared.path.clone() }));
        }
        // Holding the lock across the spawn: a concurrent sweep cannot mark the
        // session ended between the spawn and the registration.
        if cmd.wants_transient_user() && state.user.is_none() {
            // Refused before a user is taken for nothing.
            cmd.check_settings().map_err(refused)?;
            state.user = Some(Arc::new(TransientUser::allocate().map_err(refused)?));
        }
        let child = match &self.shared.cgroup {
            Some(cgroup) => cmd.spawn_as(cgroup, state.user.as_ref(), defaults)?,
            None => {
                let (child, holder) = cmd.spawn_held_as(&self.shared.path, state.user.as_ref(), defaults)?;
                state.holders.push(Arc::new(holder));
                state.holders.retain(|h| h.is_alive());
                child
            }
        };
        state.children.push(Arc::clone(child.cell()));
        state.children.retain(|c| Arc::strong_count(c) > 1 || c.is_alive());
        drop(state);
        self.sup.counters.processes_spawned.inc();
        Ok(child)
    }

    /// When the session was created.
    pub fn created(&self) -> SystemTime {
        self.shared.created
    }

    /// Usage of the session's cgroup. With
    /// [`Containment::Holders`](crate::Containment::Holders), only
    /// `pids_current`: the processes of its holders' trees now.
    pub fn stats(&self) -> Stats {
        match &self.shared.cgroup {
            Some(cgroup) => cgroup.stats(),
            None => {
                let pids = self.shared.held_pids().len() as u64;
                Stats { pids_current: Some(pids), ..Stats::default() }
            }
        }
    }

    /// The session cgroup's `cgroup.events`. With
    /// [`Containment::Holders`](crate::Containment::Holders), `populated`
    /// is whether a holder still runs (something of its tree does).
    pub fn events(&self) -> Result<Events> {
        match &self.shared.cgroup {
            Some(cgroup) => cgroup.events(),
            None => Ok(Events { populated: self.shared.holders_alive(), frozen: false }),
        }
    }

    /// Ends the session now: SIGTERM + SIGCONT to every process, up to the
    /// supervisor's grace period for them to exit, `cgroup.kill` for the rest,
    /// reaping, `rmdir`.
    ///
    /// The work runs in a task of its own: if this future is dropped half-way,
    /// the session is still ended. A session a sweep already took is left to it
    /// (an empty [`Termination`] comes back).
    pub async fn close(self) -> Result<Termination> {
        let grace = self.sup.config.grace;
        self.close_within(grace).await
    }

    /// [`close`](Self::close) with a grace period of its own instead of
    /// the supervisor's: for an ending that cannot wait as long (a
    /// shutdown with a deadline), or that should wait longer.
    pub async fn close_within(self, grace: Duration) -> Result<Termination> {
        if self.shared.end() {
            return Ok(Termination::default());
        }
        crate::ending::settle(&self.shared, &self.sup.counters, crate::ending::Ending::Closed);
        self.sup.forget_active(&self.shared);
        let (sup, shared) = (Arc::clone(&self.sup), Arc::clone(&self.shared));
        sup.closing.enter();
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let outcome = shared.place(sup.instance()).end(&shared.children(), grace).await;
            crate::events::session_end(shared.path(), "close", &outcome, Some(start.elapsed()));
            sup.finished(&shared, &outcome, false);
            sup.persist_counters().await;
            sup.closing.leave();
            outcome
        });
        task.await.unwrap_or_else(|e| {
            Err(Error::io("close session", self.shared.path(), std::io::Error::other(e.to_string())))
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.sup.release(&self.shared);
    }
}
