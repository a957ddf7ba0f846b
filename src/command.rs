//! [`Command`]: what to run, and how it is spawned into a cgroup.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString, c_char};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::autokill::spawn_tied;
use crate::cgroup::{Cgroup, files};
use crate::child::ContainedChild;
use crate::error::{Error, Result};
use crate::identity::TransientUser;
use crate::pidfd::PidFd;
use crate::seal::Sealing;
use crate::sys::spawn::{self, ChildPlan, ChildStage, Lifetime, Placement, SpawnFailure};

/// How a child gets into its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpawnMechanism {
    /// `clone3(CLONE_INTO_CGROUP)` (Linux ≥ 5.7): born inside the cgroup.
    Clone3IntoCgroup,
    /// `clone3` without it; the child writes `0` to `cgroup.procs` before anything
    /// else. Slower: migrating a live process waits for an RCU grace period.
    ForkJoinProcs,
    /// No cgroup: the child is started from a holder of its own, a subreaper
    /// that keeps what it leaves (where cgroups cannot be written).
    Holder,
}

impl SpawnMechanism {
    /// The name used by `procscope doctor` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SpawnMechanism::Clone3IntoCgroup => "clone3_into_cgroup",
            SpawnMechanism::ForkJoinProcs => "fork_join_procs",
            SpawnMechanism::Holder => "holder",
        }
    }
}

/// The stdio of a spawn that did not set it: the parent's.
pub(crate) static SPAWN_STDIO: [Stdio; 3] = [Stdio::Inherit, Stdio::Inherit, Stdio::Inherit];
/// The stdio of [`Session::output`](crate::Session::output) that the command
/// did not set: nothing in, both outputs captured (as `std` does).
pub(crate) static OUTPUT_STDIO: [Stdio; 3] = [Stdio::Null, Stdio::Piped, Stdio::Piped];

/// Set once `clone3` has said it does not know `CLONE_INTO_CGROUP`.
static NO_CLONE_INTO_CGROUP: AtomicBool = AtomicBool::new(false);

/// Where a child's stdin, stdout or stderr comes from.
///
/// Built as with `std::process::Stdio` ([`piped`](Self::piped),
/// [`null`](Self::null), [`inherit`](Self::inherit)), or converted from
/// anything that owns an fd: a [`File`](std::fs::File), an [`OwnedFd`], a
/// `std::io::pipe` end, the pipe of a `std::process::Child`.
///
/// # Examples
/// ```
/// use procscope::{Command, Stdio};
///
/// let log = std::fs::File::create(std::env::temp_dir().join("server.log"))?;
/// let mut cmd = Command::new("my-mcp-server");
/// cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Caveats
/// A `std::process::Stdio` converts into nothing: std gives no way to take
/// its fd back out. Use these constructors, or pass the file or fd that the
/// std value would have been made from.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The parent's own fd 0, 1 or 2.
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// A new pipe; the parent's end becomes `ContainedChild::stdin`/`stdout`/`stderr`.
    Piped,
    /// This fd, as it is (the child gets a duplicate).
    Fd(OwnedFd),
}

impl Stdio {
    /// A new pipe ([`Stdio::Piped`]), as `std::process::Stdio::piped`.
    pub fn piped() -> Stdio {
        Stdio::Piped
    }

    /// `/dev/null` ([`Stdio::Null`]), as `std::process::Stdio::null`.
    pub fn null() -> Stdio {
        Stdio::Null
    }

    /// The parent's own fd ([`Stdio::Inherit`]), as `std::process::Stdio::inherit`.
    pub fn inherit() -> Stdio {
        Stdio::Inherit
    }
}

macro_rules! stdio_from_fd {
    ($($t:ty),* $(,)?) => {$(
        /// The child gets a duplicate of its fd ([`Stdio::Fd`]).
        impl From<$t> for Stdio {
            fn from(fd: $t) -> Stdio {
                Stdio::Fd(OwnedFd::from(fd))
            }
        }
    )*};
}

stdio_from_fd!(
    OwnedFd,
    std::fs::File,
    std::io::PipeReader,
    std::io::PipeWriter,
    std::os::unix::net::UnixStream,
    std::process::ChildStdin,
    std::process::ChildStdout,
    std::process::ChildStderr,
);

/// Environment changes relative to the parent's environment.
#[derive(Clone, Debug, Default)]
struct Env {
    clear: bool,
    vars: BTreeMap<OsString, Option<OsString>>,
}

/// A program to run inside a session cgroup, built as a
/// `tokio::process::Command` is (see "Coming from `tokio::process`" on the
/// crate's front page).
///
/// The child starts with only fds 0–2, no capabilities (bounding, effective,
/// permitted, inheritable and ambient sets all empty) and `no_new_privs`, in
/// this order of steps ([`ChildStage`](crate::ChildStage)): join the cgroup
/// (fallback only), seal itself (namespaces, read-only cgroup mounts), reset
/// signals, stdio, close other fds, `setsid` or `setpgid`, clear the bounding
/// set, groups/gid/uid, `chdir`, empty the capability sets, `no_new_privs`,
/// restore the soft fd limit, `execve`. These steps run between `clone` and
/// `execve` and are async-signal-safe; there is no `pre_exec` hook.
///
/// # Examples
/// ```no_run
/// # async fn run(session: &procscope::Session) -> procscope::Result<()> {
/// use procscope::{Command, Stdio};
///
/// let mut cmd = Command::new("uvx");
/// cmd.args(["mcp-server-time"])
///     .env("TZ", "UTC")
///     .current_dir("/tmp")
///     .stdin(Stdio::piped())
///     .stdout(Stdio::piped())
///     .stderr(std::fs::File::create("/tmp/time-server.log")?)
///     .transient_user(true); // a uid of its own, like DynamicUser=
/// cmd.check()?; // the program exists and can be sealed: before anything starts
/// let server = session.spawn(&mut cmd)?;
/// # drop(server); Ok(()) }
/// ```
///
/// # Errors
/// Spawns fail before anything starts for a program not found
/// ([`Error::ProgramNotFound`]), bad input ([`Error::InvalidInput`]: an empty
/// program, a NUL byte, conflicting settings) or sealing that is required
/// and impossible ([`Error::SealingUnavailable`]); a step of the child that
/// fails comes back as [`Error::Spawn`] with the step and the child's errno,
/// and that child has been reaped.
///
/// # Caveats
/// - The program is looked up in `PATH` by the parent, in the child's
///   environment if `PATH` is set there, as `std` does.
/// - By default the child runs sealed ([`sealing`](Self::sealing)): always
///   where the gateway holds `CAP_SYS_ADMIN` (or the spawn fails), and for a
///   gateway without it where unprivileged user namespaces are allowed. A
///   sealed child sees `/proc/self/cgroup` as `0::/` and cannot create
///   cgroups of its own.
/// - Where the gateway holds `CAP_SYS_ADMIN`, on Linux ≥ 7.1, the child
///   also dies with the last handle of it: when the whole gateway process is
///   gone, the kernel SIGKILLs it (`CLONE_PIDFD_AUTOKILL`; see
///   [`ContainedChild`]'s caveats and [`AutoKill`](crate::AutoKill)).
///
/// # Signals
/// The child starts with no signal blocked and every signal at its default
/// action. The kernel resets handled signals (`CLONE_CLEAR_SIGHAND`); the child
/// resets the signals the gateway ignores (`SIG_IGN`, which `execve` would
/// otherwise pass on: `SIGPIPE` in any Rust program, `SIGHUP` under `nohup`,
/// `SIGCHLD` in gateways that let the kernel reap). Which signals are ignored is
/// read at the first spawn, at every [`Supervisor::start`](crate::Supervisor::start)
/// and by [`refresh_ignored_signals`](crate::refresh_ignored_signals), not at
/// every spawn: a `/proc/self/status` read costs about a tenth of a spawn. A
/// signal ignored after the last read stays ignored in children, as
/// `std::process` and tokio leave every signal but `SIGPIPE`.
#[derive(Debug)]
pub struct Command {
    program: OsString,
    arg0: Option<OsString>,
    args: Vec<OsString>,
    env: Env,
    cwd: Option<PathBuf>,
    /// `None`: not set, so the verb's default ([`Stdio::Inherit`] for a
    /// spawn, pipes for [`Session::output`](crate::Session::output)).
    stdio: [Option<Stdio>; 3],
    setsid: bool,
    process_group: Option<i32>,
    kill_on_drop: bool,
    uid: Option<u32>,
    gid: Option<u32>,
    mechanism: Option<SpawnMechanism>,
    sealing: Sealing,
    transient_user: bool,
    /// For the guardian only: keep capabilities (it drops them itself).
    keep_caps: bool,
}

impl Command {
    /// A command running `program` (looked up in `PATH` unless it contains `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            arg0: None,
            args: Vec::new(),
            env: Env::default(),
            cwd: None,
            stdio: [None, None, None],
            setsid: false,
            process_group: None,
            kill_on_drop: false,
            uid: None,
            gid: None,
            mechanism: None,
            sealing: Sealing::Auto,
            transient_user: false,
            keep_caps: false,
        }
    }

    /// Sets the child's `argv[0]` (by default the program as given).
    pub fn arg0(&mut self, arg0: impl AsRef<OsStr>) -> &mut Self {
        self.arg0 = Some(arg0.as_ref().to_owned());
        self
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env.vars.insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.vars.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Starts from an empty environment instead of the parent's.
    pub fn env_clear(&mut self) -> &mut Self {
        self.env.clear = true;
        self.env.vars.clear();
        self
    }

    /// The child's working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The child's stdin: [`Stdio`], or anything that converts into one (a
    /// `File`, an `OwnedFd`, …). Inherited unless set.
    pub fn stdin(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.stdio[0] = Some(s.into());
        self
    }

    /// The child's stdout, as [`stdin`](Self::stdin).
    pub fn stdout(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.stdio[1] = Some(s.into());
        self
    }

    /// The child's stderr, as [`stdin`](Self::stdin).
    pub fn stderr(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.stdio[2] = Some(s.into());
        self
    }

    /// Makes the child a session leader (`setsid`). It stays in its cgroup.
    /// Excludes [`process_group`](Self::process_group).
    pub fn setsid(&mut self, on: bool) -> &mut Self {
        self.setsid = on;
        self
    }

    /// Puts the child in process group `pgid` (`setpgid(0, pgid)`), as
    /// `std`'s `CommandExt::process_group` and tokio's `process_group`: `0`
    /// makes it the leader of a new group, so that a terminal's Ctrl-C (or a
    /// `kill(-pgid)`) does not reach it with the gateway's group. The child
    /// stays in its cgroup whatever its group; procscope never signals by
    /// group. Excludes [`setsid`](Self::setsid).
    pub fn process_group(&mut self, pgid: i32) -> &mut Self {
        self.process_group = Some(pgid);
        self
    }

    /// Sends SIGKILL to the child when its [`ContainedChild`] handle is
    /// dropped, as tokio's `kill_on_drop`. Off by default.
    ///
    /// The kill reaches the child only, as in tokio. Its descendants are ended
    /// with its session ([`Session::close`](crate::Session::close), or the
    /// session guard when the session is dropped), which is the stronger
    /// guarantee this crate is built on: prefer a session per job over
    /// `kill_on_drop`.
    ///
    /// Off, dropping the handle kills nothing while the gateway runs, on
    /// every kernel: procscope keeps a reference to the child. On Linux ≥ 7.1
    /// in a gateway with `CAP_SYS_ADMIN`, the child dies with the whole
    /// gateway process, whatever this says ([`ContainedChild::auto_kill`]).
    pub fn kill_on_drop(&mut self, on: bool) -> &mut Self {
        self.kill_on_drop = on;
        self
    }

    /// Runs the child as this uid (supplementary groups are dropped).
    pub fn uid(&mut self, uid: u32) -> &mut Self {
        self.uid = Some(uid);
        self
    }

    /// Runs the child with this gid (supplementary groups are dropped).
    pub fn gid(&mut self, gid: u32) -> &mut Self {
        self.gid = Some(gid);
        self
    }

    /// Runs the child as a transient user: a uid and gid of their own, taken
    /// from [`TRANSIENT_UIDS`](crate::identity::TRANSIENT_UIDS) and owning no
    /// file, like systemd's `DynamicUser=` (see [`identity`](crate::identity)).
    ///
    /// Through [`Session::spawn`](crate::Session::spawn), every such child of
    /// one session shares its session's user, which is released when the
    /// session ends; through [`spawn_in`](Self::spawn_in), the child gets one
    /// of its own, released when its handle is dropped. Two sessions with
    /// transient users cannot signal, ptrace or read `/proc` of each other, and
    /// cannot read `/etc/shadow` or write files owned by root. For servers that
    /// need no files of the gateway's user; supplementary groups are dropped.
    ///
    /// Needs `CAP_SETUID` and `CAP_SETGID`; cannot be combined with
    /// [`uid`](Self::uid) or [`gid`](Self::gid).
    pub fn transient_user(&mut self, on: bool) -> &mut Self {
        self.transient_user = on;
        self
    }

    /// Whether the child is sealed into its session. [`Sealing::Auto`] by
    /// default: a gateway with `CAP_SYS_ADMIN` always seals, and refuses the
    /// spawn with [`Error::SealingUnavailable`] where it cannot (no cgroup
    /// namespaces); a gateway without it seals through a user namespace of
    /// each child's own where unprivileged user namespaces are allowed, and
    /// otherwise runs the child unsealed with a warning.
    ///
    /// A sealed child starts in a cgroup namespace rooted at its session and
    /// sees every cgroup mount read-only: even as uid 0 it cannot leave its
    /// session, create cgroups, write cgroup files or forge procscope's state,
    /// nor pick SIGKILL or SIGSTOP as the signal `F_SETOWN` sends (a seccomp
    /// filter refuses `F_SETSIG` with those two). Its `/proc/self/cgroup`
    /// reads `0::/`. [`Sealing::Off`] gives that up.
    pub fn sealing(&mut self, sealing: Sealing) -> &mut Self {
        self.sealing = sealing;
        self
    }

    /// Forces a spawn mechanism instead of the best available one (for tests and
    /// `procscope doctor`).
    pub fn spawn_mechanism(&mut self, m: SpawnMechanism) -> &mut Self {
        self.mechanism = Some(m);
        self
    }

    /// The program as given.
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// The arguments as given (without the program).
    pub fn get_args(&self) -> impl Iterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    /// Spawns the command straight into `cgroup`.
    ///
    /// Pipes ([`Stdio::Piped`]) need a tokio runtime. A cgroup that has been
    /// removed fails the spawn ([`Error::CgroupRemoved`]): the child is never
    /// started in the caller's cgroup instead.
    ///
    /// # Errors
    /// [`Error::ProgramNotFound`], [`Error::InvalidInput`] (NUL bytes, empty
    /// program), [`Error::Spawn`] with the child's failing step and errno,
    /// [`Error::CgroupRemoved`], [`Error::Io`].
    pub fn spawn_in(&mut self, cgroup: &Cgroup) -> Result<ContainedChild> {
        self.spawn_as(cgroup, None, &SPAWN_STDIO)
    }

    /// Whether [`transient_user`](Self::transient_user) is on.
    pub(crate) fn wants_transient_user(&self) -> bool {
        self.transient_user
    }

    /// [`spawn_in`](Self::spawn_in), with the session's transient user (when
    /// the command wants one) instead of one of the child's own.
    pub(crate) fn spawn_as(
        &mut self,
        cgroup: &Cgroup,
        session_user: Option<&Arc<TransientUser>>,
        defaults: &'static [Stdio; 3],
    ) -> Result<ContainedChild> {
        let spawned = self.spawn_placed(cgroup, session_user, defaults);
        crate::events::spawn(cgroup.path(), &self.program, spawned.as_ref().map(ContainedChild::id));
        spawned
    }

    /// [`spawn_as`](Self::spawn_as), without its event.
    fn spawn_placed(
        &mut self,
        cgroup: &Cgroup,
        session_user: Option<&Arc<TransientUser>>,
        defaults: &'static [Stdio; 3],
    ) -> Result<ContainedChild> {
        let user = self.user_for(session_user)?;
        let wanted = self.mechanism.unwrap_or(if NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed) {
            SpawnMechanism::ForkJoinProcs
        } else {
            SpawnMechanism::Clone3IntoCgroup
        });
        let forced = self.mechanism.is_some();
        self.launch(self.sealing, user, defaults, |plan, program| match wanted {
            SpawnMechanism::Clone3IntoCgroup => match spawn_tied(plan, Placement::IntoCgroup(cgroup.as_fd())) {
                Ok(s) => Ok((s, SpawnMechanism::Clone3IntoCgroup)),
                // A removed cgroup: ENODEV per the kernel's docs, ENOENT seen on 6.18.
                // Fail closed: never fall back to a spawn in another cgroup.
                Err(SpawnFailure::Clone(e)) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) => {
                    Err(Error::CgroupRemoved { path: cgroup.path().to_owned() })
                }
                // Only a kernel (or seccomp filter) without CLONE_INTO_CGROUP falls
                // back. Any other failure is the cgroup's answer and must stand:
                // EAGAIN from pids.max in particular, which a migration through
                // cgroup.procs would get around.
                Err(SpawnFailure::Clone(e))
                    if !forced && matches!(e.raw_os_error(), Some(libc::E2BIG | libc::EINVAL | libc::ENOSYS)) =>
                {
                    NO_CLONE_INTO_CGROUP.store(true, Ordering::Relaxed);
                    tracing::warn!(error = %e, "clone3(CLONE_INTO_CGROUP) is not available; \
                        spawning with a join through cgroup.procs from now on (slower)");
                    Ok((spawn_joining(plan, cgroup, program)?, SpawnMechanism::ForkJoinProcs))
                }
                Err(failure) => Err(spawn_error(failure, program, cgroup)),
            },
            SpawnMechanism::ForkJoinProcs => Ok((spawn_joining(plan, cgroup, program)?, SpawnMechanism::ForkJoinProcs)),
            SpawnMechanism::Holder => Err(Error::InvalidInput {
                what: "spawn mechanism",
                value: "holder".into(),
                fix: "a holder is for where no cgroup can be written; a spawn into a cgroup uses \
                      clone3_into_cgroup or fork_join_procs"
                    .into(),
            }),
        })
    }

    /// The program this command runs, looked up in `PATH` (the child's, if
    /// set) as a spawn would, and checked to be an executable file.
    ///
    /// # Errors
    /// [`Error::ProgramNotFound`]; [`Error::Spawn`] at stage
    /// [`ChildStage::Exec`](crate::ChildStage::Exec) with `EACCES` for a file
    /// that is not executable; [`Error::InvalidInput`] for an empty program.
    pub fn resolve(&self) -> Result<PathBuf> {
        let prepared = self.prepare()?;
        let path = PathBuf::from(OsStr::from_bytes(prepared.program.as_bytes()));
        let executable = rustix::fs::stat(&path)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() && st.st_mode & 0o111 != 0);
        match executable {
            Ok(true) => Ok(path),
            Ok(false) => Err(Error::Spawn {
                program: self.program.to_string_lossy().into_owned(),
                stage: crate::ChildStage::Exec,
                source: std::io::Error::from_raw_os_error(libc::EACCES),
            }),
            Err(e) => Err(Error::Spawn {
                program: self.program.to_string_lossy().into_owned(),
                stage: crate::ChildStage::Exec,
                source: e.into(),
            }),
        }
    }

    /// Checks, before anything is placed, what a spawn or
    /// [`exec_in`](Self::exec_in) would otherwise find only later: the
    /// program resolves to an executable file ([`resolve`](Self::resolve))
    /// in a format the kernel runs (an ELF binary, or a `#!` script whose
    /// interpreter exists), sealing can be done if it is required, and the
    /// identity settings agree.
    ///
    /// # Errors
    /// As [`resolve`](Self::resolve); [`Error::NotExecutableFormat`];
    /// [`Error::InterpreterNotFound`];
    /// [`Error::SealingUnavailable`]; [`Error::InvalidInput`] for a fixed
    /// uid/gid with a transient user, or [`setsid`](Self::setsid) with a
    /// [`process_group`](Self::process_group).
    pub fn check(&self) -> Result<()> {
        let path = self.resolve()?;
        check_format(&self.program, &path)?;
        crate::seal::plan_in_place(self.sealing)?;
        self.check_settings()
    }

    /// A fixed uid/gid and a transient user exclude each other; so do
    /// `setsid` and a process group.
    pub(crate) fn check_settings(&self) -> Result<()> {
        if let (true, Some(pgid)) = (self.setsid, self.process_group) {
            return Err(Error::InvalidInput {
                what: "process group",
                value: format!("setsid and process_group({pgid})"),
                fix: "a session leader leads its own process group: give either setsid or a process group, \
                      not both"
                    .into(),
            });
        }
        if self.process_group.is_some_and(|g| g < 0) {
            return Err(Error::InvalidInput {
                what: "process group",
                value: format!("{}", self.process_group.unwrap_or_default()),
                fix: "a process group id is 0 (a new group) or the pid of a group's leader".into(),
            });
        }
        if self.transient_user && (self.uid.is_some() || self.gid.is_some()) {
            return Err(Error::InvalidInput {
                what: "identity",
                value: format!("uid {:?}, gid {:?} and a transient user", self.uid, self.gid),
                fix: "give either a fixed uid/gid or a transient user, not both".into(),
            });
        }
        Ok(())
    }

    /// Replaces the calling process with the command, inside `cgroup`: like
    /// `std`'s `CommandExt::exec`, the process moves itself into `cgroup`,
    /// seals itself ([`sealing`](Self::sealing)), drops every privilege as a
    /// spawned child does, and calls `execve`. Its pid, its stdio, its
    /// controlling terminal and every fd without `FD_CLOEXEC` become the
    /// command's; nothing stays behind in between. With a
    /// [`transient_user`](Self::transient_user), the running command itself
    /// keeps its uid taken. [`stdin`](Self::stdin) and the other stdio
    /// settings, [`setsid`](Self::setsid), [`process_group`](Self::process_group) and
    /// [`kill_on_drop`](Self::kill_on_drop) do not apply.
    ///
    /// With `owner`, the pidfd of the process whose session this is: if it
    /// has exited by the time this process is in `cgroup`, the command is not
    /// started ([`Error::Spawn`] at [`JoinCgroup`](crate::ChildStage::JoinCgroup)
    /// with `ESRCH`); its end has been, or is being, cleaned up.
    ///
    /// Returns only on failure; the process may already be in `cgroup` then.
    /// Sealing through a user namespace (a caller without `CAP_SYS_ADMIN`)
    /// needs a single-threaded process.
    pub fn exec_in(&mut self, cgroup: &Cgroup, owner: Option<&crate::PidFd>) -> Error {
        let run = || -> Result<Error> {
            let prepared = self.prepare()?;
            let seal = crate::seal::plan_in_place(self.sealing)?;
            let user = self.user_for(None)?;
            let join = cgroup
                .open_file(crate::cgroup::files::PROCS, rustix::fs::OFlags::WRONLY)
                .map_err(|e| Error::io("open", cgroup.path().join(crate::cgroup::files::PROCS), e))?;
            let (argv, envp) = (prepared.argv.pointers(), prepared.envp.pointers());
            let null = dev_null()?;
            let uid = user.as_ref().map(|u| u.uid()).or(self.uid);
            let gid = user.as_ref().map(|u| u.uid()).or(self.gid);
            // Held until execve (FD_CLOEXEC): see TransientUser::hand_over.
            let _allocation = user.map(|u| Arc::into_inner(u).expect("the only holder").hand_over()).transpose()?;
            let plan = ChildPlan {
                program: &prepared.program,
                argv: &argv,
                envp: &envp,
                stdio: [null, null, null],
                cwd: prepared.cwd.as_deref(),
                uid,
                gid,
                setsid: false,
                process_group: None,
                last_cap: last_cap(),
                keep_caps: false,
                seal: seal.as_ref().map(crate::seal::SealPlan::child),
                // This process becomes the command: it attaches the filter itself.
                signal_filter_inherited: false,
            };
            let (stage, source) = spawn::become_in_place(&plan, join.as_fd(), owner.map(|o| o.as_fd()));
            Ok(Error::Spawn { program: self.program.to_string_lossy().into_owned(), stage, source })
        };
        run().unwrap_or_else(|e| e)
    }

    /// Spawns the command from a holder of its own, where no cgroup can be
    /// written (see `crate::holder`): the child, whose status the holder
    /// reports, and the holder. Never sealed: sealing needs a cgroup to be
    /// rooted in, and [`Sealing::Required`] is refused.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn spawn_held(&mut self) -> Result<(ContainedChild, crate::holder::Holder)> {
        self.spawn_held_as(Path::new("holders"), None, &SPAWN_STDIO)
    }

    /// [`spawn_held`](Self::spawn_held) for a session of holders (`place`,
    /// for the event), with the session's transient user.
    pub(crate) fn spawn_held_as(
        &mut self,
        place: &Path,
        session_user: Option<&Arc<TransientUser>>,
        defaults: &'static [Stdio; 3],
    ) -> Result<(ContainedChild, crate::holder::Holder)> {
        let spawned = self.spawn_holding(session_user, defaults);
        crate::events::spawn(place, &self.program, spawned.as_ref().map(|(c, _)| c.id()));
        spawned
    }

    fn spawn_holding(
        &mut self,
        session_user: Option<&Arc<TransientUser>>,
        defaults: &'static [Stdio; 3],
    ) -> Result<(ContainedChild, crate::holder::Holder)> {
        use rustix::pipe::{PipeFlags, pipe_with};
        if self.sealing == Sealing::Required {
            return Err(Error::SealingUnavailable {
                missing: "a cgroup to seal the child into (the session is contained with holders)".into(),
                fix: "sealing needs cgroup containment: run where cgroup2 is writable (README, \"Containers\"), \
                      or leave Sealing::Required out",
            });
        }
        if let Some(m @ (SpawnMechanism::Clone3IntoCgroup | SpawnMechanism::ForkJoinProcs)) = self.mechanism {
            return Err(Error::NeedsCgroup {
                what: match m {
                    SpawnMechanism::Clone3IntoCgroup => "spawns with clone3_into_cgroup",
                    _ => "spawns with fork_join_procs",
                },
            });
        }
        // The holder is this program again, turned into the holder by the
        // constructor before its `main`; never for a program that gained
        // privileges at its execve (setuid, file capabilities), where the
        // constructor does not trust its environment.
        if crate::sys::hook::secure() {
            return Err(Error::io(
                "start the holder",
                "/proc/self/exe",
                std::io::Error::other("this program gained privileges at its execve (setuid or file capabilities)"),
            ));
        }
        if !crate::sys::hook::ran() {
            return Err(Error::io(
                "start the holder",
                "/proc/self/exe",
                std::io::Error::other("procscope's start-up hook did not run in this program"),
            ));
        }
        let pipe = |op| pipe_with(PipeFlags::CLOEXEC).map_err(|e| Error::io(op, Path::new("pipe"), e));
        let (status_read, status_write) = pipe("create the holder's status pipe")?;
        let (control_read, control_write) = pipe("create the holder's control pipe")?;
        rustix::fs::fcntl_setfl(&status_read, rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| Error::io("set O_NONBLOCK on", Path::new("pipe"), e))?;
        let exe = c"/proc/self/exe";
        let argv0 = CString::new(crate::holder::HOLDER_ARGV0).expect("no NUL");
        let env = CString::new(format!("{}=1", crate::holder::HOLDER_ENV)).expect("no NUL");
        let argv = [argv0.as_ptr(), std::ptr::null()];
        #[allow(unused_mut)]
        let mut envp = vec![env.as_ptr()];
        #[cfg(feature = "test-hooks")]
        let hooks = crate::holder::hook_env();
        #[cfg(feature = "test-hooks")]
        envp.extend(hooks.iter().map(|h| h.as_ptr()));
        envp.push(std::ptr::null());
        let mut holder = None;
        let mut status = Some(status_read);
        let child = self.launch(Sealing::Off, self.user_for(session_user)?, defaults, |plan, program| {
            let exec = spawn::HolderExec {
                exe,
                argv: &argv,
                envp: &envp,
                status: status_write.as_fd(),
                control: control_read.as_fd(),
            };
            let held = match spawn::spawn_held(plan, &exec) {
                Ok(held) => held,
                Err(spawn::HeldFailure { failure, holder }) => {
                    if let Some((pidfd, pid)) = holder {
                        // The holder runs its program and waits for its first
                        // message: the end of the control pipe ends it (with
                        // whatever it has), and the reaper reaps it.
                        drop(control_write);
                        crate::reaper::adopt(PidFd::from_owned(pidfd, pid), false);
                    }
                    return Err(match failure {
                        SpawnFailure::Clone(e) => Error::io("start the holder of", Path::new(program), e),
                        SpawnFailure::Child { stage, errno } => {
                            Error::Spawn { program: program.to_owned(), stage, source: errno }
                        }
                    });
                }
            };
            // The holder's ends are the holder's alone from now on: the
            // status pipe ends when the holder does, and a holder that died
            // leaves no reader of the control pipe.
            drop((status_write, control_read));
            let holder_pidfd = PidFd::from_owned(held.holder, held.holder_pid);
            // The holder reaps nothing until it is told the pid: the pid is
            // the command's until then.
            let pidfd = rustix::process::pidfd_open(held.pid, rustix::process::PidfdFlags::empty());
            let told = pidfd
                .as_ref()
                .ok()
                .map(|_| rustix::io::write(&control_write, &held.pid.as_raw_nonzero().get().to_le_bytes()));
            let dup = rustix::io::fcntl_dupfd_cloexec(&holder_pidfd, 3);
            let (pidfd, dup) = match (pidfd, told, dup) {
                (Ok(p), Some(Ok(4)), Ok(d)) => (p, d),
                (p, told, d) => {
                    // The holder SIGKILLs the command at the end of its
                    // control pipe; the reaper reaps the holder.
                    let e = p.err().or(told.and_then(Result::err)).or(d.err()).unwrap_or(Errno::IO);
                    drop(control_write);
                    crate::reaper::adopt(holder_pidfd, false);
                    return Err(Error::io("hand the command to its holder", Path::new(program), e));
                }
            };
            crate::reaper::adopt(holder_pidfd, false);
            holder = Some(crate::holder::Holder::new(
                held.holder_pid,
                PidFd::from_owned(dup, held.holder_pid),
                control_write,
            ));
            let spawned = spawn::Spawned { pidfd, pid: held.pid, autokill: false, held: status.take() };
            Ok((spawned, SpawnMechanism::Holder))
        })?;
        Ok((child, holder.expect("set by a spawn that succeeded")))
    }

    /// Spawns the command in the caller's own cgroup, unsealed and with the
    /// caller's capabilities: only for the guardian, which must outlive the
    /// cgroups it watches and drops its privileges itself (see `guardian`).
    pub(crate) fn spawn_guardian(&mut self) -> Result<ContainedChild> {
        self.keep_caps = true;
        self.launch(Sealing::Off, None, &SPAWN_STDIO, |plan, program| {
            // Never tied to its pidfd: the guardian must outlive this process.
            let spawned = spawn::spawn(plan, Placement::Inherit, Lifetime::Own).map_err(|f| match f {
                SpawnFailure::Clone(e) => Error::io("clone3", program, e),
                SpawnFailure::Child { stage, errno } => {
                    Error::Spawn { program: program.to_owned(), stage, source: errno }
                }
            })?;
            Ok((spawned, SpawnMechanism::ForkJoinProcs))
        })
    }

    /// Prepares everything the child needs (strings, pipes registered with
    /// tokio), lets `place` start it, and wraps the result.
    fn launch(
        &self,
        sealing: Sealing,
        user: Option<Arc<TransientUser>>,
        defaults: &'static [Stdio; 3],
        place: impl FnOnce(&ChildPlan<'_>, &str) -> Result<(spawn::Spawned, SpawnMechanism)>,
    ) -> Result<ContainedChild> {
        let prepared = self.prepare()?;
        let seal = crate::seal::plan(sealing)?;
        let stdio = [0, 1, 2].map(|i| self.stdio[i].as_ref().unwrap_or(&defaults[i]));
        let pipes = Pipes::new(stdio)?;
        let (argv, envp) = (prepared.argv.pointers(), prepared.envp.pointers());
        let plan = ChildPlan {
            program: &prepared.program,
            argv: &argv,
            envp: &envp,
            stdio: [pipes.child_fd(0), pipes.child_fd(1), pipes.child_fd(2)],
            cwd: prepared.cwd.as_deref(),
            uid: user.as_ref().map(|u| u.uid()).or(self.uid),
            gid: user.as_ref().map(|u| u.uid()).or(self.gid),
            setsid: self.setsid,
            process_group: self.process_group,
            last_cap: last_cap(),
            keep_caps: self.keep_caps,
            seal: seal.as_ref().map(crate::seal::SealPlan::child),
            signal_filter_inherited: seal.is_some() && crate::sys::seccomp::filter_spawning_thread(),
        };
        let (spawned, mechanism) = place(&plan, &self.program.to_string_lossy())?;
        Ok(ContainedChild::new(spawned, pipes.into_parent_ends(), mechanism, seal.is_some(), self.kill_on_drop, user))
    }

    /// The transient user the child runs as: the session's, or a new one.
    fn user_for(&self, session_user: Option<&Arc<TransientUser>>) -> Result<Option<Arc<TransientUser>>> {
        self.check_settings()?;
        if !self.transient_user {
            return Ok(None);
        }
        match session_user {
            Some(u) => Ok(Some(Arc::clone(u))),
            None => TransientUser::allocate().map(|u| Some(Arc::new(u))),
        }
    }

    /// Resolves the program and builds the C strings the child needs.
    fn prepare(&self) -> Result<Prepared> {
        if self.program.is_empty() {
            return Err(Error::InvalidInput {
                what: "program",
                value: String::new(),
                fix: "the command is empty; give the program to run".into(),
            });
        }
        let cstr = |what: &'static str, s: &OsStr| CString::new(s.as_bytes()).map_err(|_| nul_byte(what, s));
        let envp = self.environment()?;
        let path_var = envp.iter().find_map(|kv| kv.strip_prefix(b"PATH=").map(OsStr::from_bytes));
        let resolved = resolve_program(&self.program, path_var)?;
        let mut argv = CStrings::with_capacity(1 + self.args.len());
        for a in std::iter::once(self.arg0.as_ref().unwrap_or(&self.program)).chain(&self.args) {
            argv.push(&[a.as_bytes()]).map_err(|_| nul_byte("argument", a))?;
        }
        let cwd = self.cwd.as_deref().map(|d| cstr("working directory", d.as_os_str())).transpose()?;
        Ok(Prepared { program: cstr("program", resolved.as_os_str())?, argv, envp, cwd })
    }

    /// `KEY=VALUE` pairs for the child.
    ///
    /// The common case — the parent's environment, unchanged — is one pass into
    /// one buffer; changes go through a map.
    fn environment(&self) -> Result<CStrings> {
        let mut out = CStrings::with_capacity(64);
        if !self.env.clear && self.env.vars.is_empty() {
            for (k, v) in std::env::vars_os() {
                push_env(&mut out, &k, &v)?;
            }
            return Ok(out);
        }
        let mut vars: BTreeMap<OsString, OsString> =
            if self.env.clear { BTreeMap::new() } else { std::env::vars_os().collect() };
        for (k, v) in &self.env.vars {
            if k.is_empty() || k.as_bytes().contains(&b'=') {
                return Err(Error::InvalidInput {
                    what: "environment variable name",
                    value: k.to_string_lossy().into_owned(),
                    fix: "a name is not empty and contains no '='".into(),
                });
            }
            match v {
                Some(v) => vars.insert(k.clone(), v.clone()),
                None => vars.remove(k),
            };
        }
        for (k, v) in &vars {
            push_env(&mut out, k, v)?;
        }
        Ok(out)
    }
}

/// Appends `KEY=VALUE`. An error names the variable but never shows its value:
/// environment values are where gateways pass their servers' secrets.
fn push_env(out: &mut CStrings, k: &OsStr, v: &OsStr) -> Result<()> {
    out.push(&[k.as_bytes(), b"=", v.as_bytes()]).map_err(|_| Error::InvalidInput {
        what: "environment variable",
        value: k.to_string_lossy().into_owned(),
        fix: "its name or value contains a NUL byte, which cannot be passed to a program (the value is not shown)"
            .into(),
    })
}

/// `s` (an argument, the program, a directory) contains a NUL byte.
fn nul_byte(what: &'static str, s: &OsStr) -> Error {
    Error::InvalidInput {
        what,
        value: s.to_string_lossy().into_owned(),
        fix: "it contains a NUL byte, which cannot be passed to a program".into(),
    }
}

/// A string for the child contains a NUL byte; the caller says which.
#[derive(Debug)]
struct NulByte;

/// NUL-terminated strings back to back in one buffer: `argv` or `envp` with
/// one allocation instead of one per string.
#[derive(Debug)]
struct CStrings {
    buf: Vec<u8>,
    /// Where each string starts in `buf`.
    starts: Vec<usize>,
}

impl CStrings {
    fn with_capacity(strings: usize) -> CStrings {
        CStrings { buf: Vec::with_capacity(strings * 32), starts: Vec::with_capacity(strings) }
    }

    /// Appends the concatenation of `parts`; fails, adding nothing, if any
    /// contains a NUL byte.
    fn push(&mut self, parts: &[&[u8]]) -> std::result::Result<(), NulByte> {
        if parts.iter().any(|p| p.contains(&0)) {
            return Err(NulByte);
        }
        self.starts.push(self.buf.len());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.buf.push(0);
        Ok(())
    }

    /// The strings, without their NULs.
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let ends = self.starts.iter().skip(1).copied().chain(std::iter::once(self.buf.len()));
        self.starts.iter().zip(ends).map(|(&s, e)| &self.buf[s..e - 1])
    }

    /// A NULL-terminated array of pointers to the strings, valid while `self` is
    /// not changed.
    fn pointers(&self) -> Vec<*const c_char> {
        let base = self.buf.as_ptr();
        let mut out = Vec::with_capacity(self.starts.len() + 1);
        // `wrapping_add` stays inside `buf`: every start is below its length.
        out.extend(self.starts.iter().map(|&s| base.wrapping_add(s).cast::<c_char>()));
        out.push(std::ptr::null());
        out
    }
}

/// The fallback: open `cgroup.procs` for the child to write to, then spawn.
fn spawn_joining(plan: &ChildPlan<'_>, cgroup: &Cgroup, program: &str) -> Result<spawn::Spawned> {
    let procs = cgroup.open_file(files::PROCS, OFlags::WRONLY).map_err(|e| match e {
        rustix::io::Errno::NOENT | rustix::io::Errno::NODEV => Error::CgroupRemoved { path: cgroup.path().to_owned() },
        e => Error::io("open", cgroup.path().join(files::PROCS), e),
    })?;
    spawn_tied(plan, Placement::JoinProcs(procs.as_fd())).map_err(|f| spawn_error(f, program, cgroup))
}

fn spawn_error(failure: SpawnFailure, program: &str, cgroup: &Cgroup) -> Error {
    match failure {
        SpawnFailure::Clone(e) => Error::io("clone3 into", cgroup.path(), e),
        SpawnFailure::Child { stage: ChildStage::JoinCgroup, errno }
            if matches!(errno.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) =>
        {
            Error::CgroupRemoved { path: cgroup.path().to_owned() }
        }
        SpawnFailure::Child { stage, errno } => Error::Spawn { program: program.to_owned(), stage, source: errno },
    }
}

struct Prepared {
    program: CString,
    argv: CStrings,
    envp: CStrings,
    cwd: Option<CString>,
}

/// `/dev/null`, opened once (read-write, close-on-exec) and lent to every child
/// whose stdio is [`Stdio::Null`].
pub(crate) fn dev_null() -> Result<BorrowedFd<'static>> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_fd());
    }
    let fd = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, rustix::fs::Mode::empty())
        .map_err(|e| Error::io("open", "/dev/null", e))?;
    Ok(NULL.get_or_init(|| fd).as_fd())
}

/// `/proc/sys/kernel/cap_last_cap`, read once.
fn last_cap() -> u32 {
    static LAST: OnceLock<u32> = OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
    })
}

/// Whether the kernel can run the file at `path`: an ELF binary, or a `#!`
/// script whose interpreter exists, which is what `execve` runs without
/// binfmt_misc. Found before anything is placed, rather than as `ENOEXEC`
/// or `ENOENT` from `execve` once the process is in its session.
///
/// With binfmt_misc mounted, enabled and holding any entry, any other format
/// may be runnable too (a registered interpreter, say qemu or a JAR
/// launcher): the decision is then the kernel's, at `execve`. A file this
/// process may execute but not read is left to the kernel as well, and so is
/// what the interpreter itself is.
fn check_format(program: &OsStr, path: &Path) -> Result<()> {
    const ELF: &[u8] = b"\x7fELF";
    // The kernel reads this much of a script for its `#!` line
    // (BINPRM_BUF_SIZE).
    const HEAD: usize = 256;
    let Ok(file) = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY, rustix::fs::Mode::empty())
    else {
        return Ok(());
    };
    let mut head = [0u8; HEAD];
    let mut len = 0;
    while len < head.len() {
        match rustix::io::read(&file, &mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return Ok(()),
        }
    }
    let head = &head[..len];
    let not_runnable = |what: String| Error::NotExecutableFormat {
        program: program.to_string_lossy().into_owned(),
        path: path.to_owned(),
        what,
    };
    // binfmt_misc's entries are tried before the kernel's own script and
    // ELF handlers, and may claim any bytes: with one registered, the kernel
    // decides at `execve` (an ELF header is runnable either way).
    if head.starts_with(ELF) || binfmt_misc_in_use() {
        return Ok(());
    }
    if let Some(after) = head.strip_prefix(b"#!") {
        let newline = after.iter().position(|&b| b == b'\n');
        let line = &after[..newline.unwrap_or(after.len())];
        let start = line.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(line.len());
        let rest = &line[start..];
        let interpreter = rest.split(|&b| matches!(b, b' ' | b'\t' | 0)).next().unwrap_or_default();
        // A name that may run on past what the kernel reads is the kernel's
        // to judge.
        let whole = interpreter.len() < rest.len() || newline.is_some() || head.len() < HEAD;
        if interpreter.is_empty() && whole {
            return Err(not_runnable("its `#!` line names no interpreter".to_owned()));
        }
        let interpreter = Path::new(OsStr::from_bytes(interpreter));
        if whole && let Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) = rustix::fs::stat(interpreter) {
            return Err(Error::InterpreterNotFound {
                program: program.to_string_lossy().into_owned(),
                path: path.to_owned(),
                interpreter: interpreter.to_owned(),
            });
        }
        return Ok(());
    }
    let shown = &head[..head.len().min(4)];
    Err(not_runnable(if head.is_empty() {
        "it is empty".to_owned()
    } else {
        let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "it starts with the bytes {} ({:?}), neither an ELF header (7f 45 4c 46) nor `#!`",
            hex.join(" "),
            String::from_utf8_lossy(shown)
        )
    }))
}

/// Whether binfmt_misc is mounted, enabled and has an entry registered: its
/// directory then holds more than `register` and `status`.
fn binfmt_misc_in_use() -> bool {
    const DIR: &str = "/proc/sys/fs/binfmt_misc";
    let enabled = std::fs::read_to_string(format!("{DIR}/status")).is_ok_and(|s| s.trim() == "enabled");
    enabled
        && std::fs::read_dir(DIR)
            .is_ok_and(|d| d.flatten().any(|e| !matches!(e.file_name().to_str(), Some("register" | "status"))))
}

/// Finds `program` in `path` (or the default search path) unless it contains a
/// `/`, in which case it is used as it is.
fn resolve_program(program: &OsStr, path: Option<&OsStr>) -> Result<PathBuf> {
    // Relative paths are taken relative to the caller's working directory, not
    // the child's (it may chdir first): made absolute here.
    let absolute = |p: PathBuf| if p.is_absolute() { p } else { std::env::current_dir().unwrap_or_default().join(p) };
    if program.as_bytes().contains(&b'/') {
        return Ok(absolute(PathBuf::from(program)));
    }
    let search = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in search.as_bytes().split(|b| *b == b':') {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) };
        let candidate = dir.join(program);
        let is_exec_file = rustix::fs::stat(&candidate)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() && st.st_mode & 0o111 != 0)
            .unwrap_or(false);
        if is_exec_file {
            return Ok(absolute(candidate));
        }
    }
    Err(Error::ProgramNotFound {
        program: program.to_string_lossy().into_owned(),
        searched: format!("searched PATH={}", search.to_string_lossy()),
    })
}

/// The fds the child gets, and the parent's ends of pipes.
struct Pipes<'a> {
    /// Per slot: an fd we own for the child (pipe end, /dev/null) or borrowed.
    child: [ChildFd<'a>; 3],
    /// Our ends, already registered with tokio: nothing can fail after the clone.
    parent: crate::child::ParentPipes,
}

enum ChildFd<'a> {
    Owned(OwnedFd),
    Borrowed(BorrowedFd<'a>),
}

impl<'a> Pipes<'a> {
    fn new(stdio: [&'a Stdio; 3]) -> Result<Pipes<'a>> {
        let mut child: [Option<ChildFd<'a>>; 3] = [None, None, None];
        let mut parent: [Option<OwnedFd>; 3] = [None, None, None];
        for (i, s) in stdio.iter().enumerate() {
            child[i] = Some(match s {
                Stdio::Inherit => ChildFd::Borrowed(match i {
                    0 => rustix::stdio::stdin(),
                    1 => rustix::stdio::stdout(),
                    _ => rustix::stdio::stderr(),
                }),
                Stdio::Null => ChildFd::Borrowed(dev_null()?),
                Stdio::Piped => {
                    if tokio::runtime::Handle::try_current().is_err() {
                        return Err(Error::InvalidInput {
                            what: "stdio",
                            value: "Stdio::Piped".into(),
                            fix: "pipes are tokio pipes: spawn from inside a tokio runtime, or use \
                                  Stdio::Fd with a pipe of your own"
                                .into(),
                        });
                    }
                    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                        .map_err(|e| Error::io("pipe", "stdio", e))?;
                    let (mine, theirs) = if i == 0 { (w, r) } else { (r, w) };
                    parent[i] = Some(mine);
                    ChildFd::Owned(theirs)
                }
                Stdio::Fd(fd) => ChildFd::Borrowed(fd.as_fd()),
            });
        }
        let [a, b, c] = child;
        let [stdin, stdout, stderr] = parent;
        let parent = crate::child::ParentPipes::new(stdin, stdout, stderr)?;
        Ok(Pipes { child: [a.expect("set"), b.expect("set"), c.expect("set")], parent })
    }

    fn child_fd(&self, i: usize) -> BorrowedFd<'_> {
        match &self.child[i] {
            ChildFd::Owned(fd) => fd.as_fd(),
            ChildFd::Borrowed(fd) => *fd,
        }
    }

    /// Closes the child's ends (dropped here) and hands over ours.
    fn into_parent_ends(self) -> crate::child::ParentPipes {
        self.parent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(c: &CStrings) -> Vec<String> {
        c.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()
    }

    #[test]
    fn cstrings_point_at_nul_terminated_copies() {
        let mut c = CStrings::with_capacity(1);
        c.push(&[b"a"]).unwrap();
        c.push(&[]).unwrap();
        c.push(&[b"KEY", b"=", b"value with spaces"]).unwrap();
        assert_eq!(strings(&c), ["a", "", "KEY=value with spaces"]);
        let ptrs = c.pointers();
        assert_eq!(ptrs.len(), 4);
        assert!(ptrs[3].is_null());
        for (p, want) in ptrs.iter().zip(["a", "", "KEY=value with spaces"]) {
            let at = (*p as usize) - (c.buf.as_ptr() as usize);
            let s = std::ffi::CStr::from_bytes_until_nul(&c.buf[at..]).unwrap();
            assert_eq!(s.to_str().unwrap(), want);
        }
        assert!(c.push(&[b"K", b"=", b"a\0b"]).is_err());
        assert_eq!(c.iter().count(), 3, "a rejected string is not added");
    }

    #[test]
    fn environment_applies_changes_to_the_parents() {
        let parent: Vec<String> =
            std::env::vars_os().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).collect();
        let unchanged = Command::new("x").environment().unwrap();
        assert_eq!(strings(&unchanged), parent);

        let mut cmd = Command::new("x");
        cmd.env("PROCSCOPE_TEST_A", "1").env_remove("PATH");
        let changed = strings(&cmd.environment().unwrap());
        assert!(changed.contains(&"PROCSCOPE_TEST_A=1".to_owned()));
        assert!(!changed.iter().any(|kv| kv.starts_with("PATH=")));
        assert_eq!(changed.len(), parent.len() + 1 - usize::from(std::env::var_os("PATH").is_some()));

        let mut cmd = Command::new("x");
        cmd.env("B", "2").env_clear().env("A", "1");
        assert_eq!(strings(&cmd.environment().unwrap()), ["A=1"]);

        let err = Command::new("x").env("K", "s3cr3t\0").environment().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"K\"") && msg.contains("NUL"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "the value is not shown: {msg}");
        let err = Command::new("x").env("K\0", "s3cr3t").environment().unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "the value is not shown: {err}");
        for bad in ["", "A=B"] {
            let err = Command::new("x").env(bad, "1").environment().unwrap_err();
            assert!(err.to_string().contains("'='"), "{err}");
        }
    }
}
