//! The crate's error type: what failed, on which path, and how to fix it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::sys::spawn::ChildStage;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in procscope.
///
/// Each message names the operation and the path or input it was about, and
/// where a fix exists, says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call on a path failed.
    #[error("{op} {}: {source}{}", path.display(), io_fix(source, path))]
    Io {
        /// What was being done, e.g. `"create cgroup"`.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An I/O error that is not about a path: an operation on a child (wait,
    /// signal, a pipe), or an [`io::Error`] converted by `?` (`From`).
    #[error("{op}{}: {source}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Os {
        /// What was being done, e.g. `"wait for the child"`; `"i/o"` for a
        /// converted error.
        op: &'static str,
        /// The process it was done to, if it was about one.
        pid: Option<u32>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// No cgroup2 filesystem is mounted.
    #[error(
        "no cgroup2 filesystem is mounted (read {}); mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`, or boot with \
         systemd.unified_cgroup_hierarchy=1",
        mountinfo.display()
    )]
    NoCgroup2 {
        /// The mountinfo file that was read.
        mountinfo: PathBuf,
    },

    /// A path that should be a cgroup2 directory is not one.
    #[error(
        "{} is not a cgroup2 directory; choose a directory under the cgroup2 mount \
         (`procscope doctor` shows where it is)",
        path.display()
    )]
    NotCgroup2 {
        /// The offending path.
        path: PathBuf,
    },

    /// The cgroup cannot be managed by this process.
    #[error(
        "cannot manage cgroups under {}: {reason}. Run as root, or run the gateway in a \
         systemd unit with Delegate=yes (or `systemd-run -p Delegate=yes …`), or pass a \
         root you own with --root",
        path.display()
    )]
    NotDelegated {
        /// The cgroup that is not ours.
        path: PathBuf,
        /// Why it is not.
        reason: String,
    },

    /// The cgroup2 filesystem is mounted read-only, as in a default Docker
    /// container or Kubernetes pod: no session can be created.
    #[error(
        "the cgroup2 filesystem at {} is mounted read-only, as in a default Docker container or \
         Kubernetes pod, so no session can be created in it. Give the gateway a cgroup namespace with \
         cgroup2 writable: `docker run --privileged`, Kubernetes `securityContext.privileged: true`, or \
         systemd-nspawn (README, \"Containers\")",
        mount.display()
    )]
    CgroupReadOnly {
        /// The read-only cgroup2 mount point.
        mount: PathBuf,
    },

    /// The supervisor contains its sessions with holders (no cgroup2 can be
    /// written here: [`Containment::Holders`](crate::Containment::Holders)),
    /// and what was asked for needs a cgroup. Nothing was created.
    #[error(
        "{what} need a cgroup, and this supervisor contains its sessions with holders because no cgroup2 \
         can be written here; leave {what} out, or run the gateway where cgroup2 is writable: \
         `docker run --privileged`, Kubernetes `securityContext.privileged: true`, systemd-nspawn, or a \
         systemd service with `Delegate=yes` (README, \"Containers\")"
    )]
    NeedsCgroup {
        /// What needs one, e.g. `"limits"`.
        what: &'static str,
    },

    /// A session id, instance name or other name is not acceptable.
    #[error("invalid {kind} {name:?}: {reason}; {fix}")]
    InvalidName {
        /// What kind of name, e.g. `"session id"`.
        kind: &'static str,
        /// The name as given (lossy for non-UTF-8 input).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
        /// What a valid one looks like.
        fix: &'static str,
    },

    /// A session with this id is already active: in this supervisor, or made
    /// in its instance by a `procscope exec` of the same process.
    #[error(
        "session {id:?} is already active in this gateway (a session of this supervisor, or of a `procscope exec` \
         it started); end it first or choose another id"
    )]
    SessionExists {
        /// The duplicate id.
        id: String,
    },

    /// A limit or duration could not be parsed or is out of range.
    #[error("invalid {name} {value:?}: {reason}")]
    InvalidLimit {
        /// The limit's name, e.g. `"memory.max"`.
        name: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong and what is accepted.
        reason: String,
    },

    /// A limit needs a controller that the cgroup does not offer.
    #[error(
        "the {controller} controller is not available: {} does not list it. On a hybrid \
         host the controller belongs to cgroup v1: boot with \
         systemd.unified_cgroup_hierarchy=1; under systemd use Delegate=yes; or run \
         without this limit",
        path.display()
    )]
    ControllerUnavailable {
        /// The controller, e.g. `"memory"`.
        controller: &'static str,
        /// The `cgroup.controllers` file that lacks it.
        path: PathBuf,
    },

    /// The program to run was not found.
    #[error("program {program:?} not found: {searched}; give an absolute path or fix PATH")]
    ProgramNotFound {
        /// The program as given.
        program: String,
        /// Where it was looked for.
        searched: String,
    },

    /// The child failed before it could run the program.
    #[error("spawning {program:?} failed while {}: {source}", stage.describe())]
    Spawn {
        /// The program.
        program: String,
        /// The step of the child's preparation that failed.
        stage: ChildStage,
        /// The child's errno.
        #[source]
        source: io::Error,
    },

    /// The program is an executable file in a format the kernel does not run:
    /// neither an ELF binary nor a script starting with `#!` (and no
    /// binfmt_misc entry that could run it). Nothing was started.
    #[error(
        "cannot execute {program:?} ({}): {what}. The kernel runs ELF binaries and scripts whose first line \
         is `#!INTERPRETER`: add such a line, or run the file through its interpreter (`sh FILE`, \
         `python3 FILE`)",
        path.display()
    )]
    NotExecutableFormat {
        /// The program as given.
        program: String,
        /// The file it resolved to.
        path: PathBuf,
        /// What its first bytes are.
        what: String,
    },

    /// The program is a `#!` script whose interpreter does not exist.
    /// Nothing was started.
    #[error(
        "cannot execute {program:?} ({}): its `#!` line names the interpreter {}, which does not exist; \
         install it, or fix the line (`#!/usr/bin/env NAME` finds NAME on PATH)",
        path.display(),
        interpreter.display()
    )]
    InterpreterNotFound {
        /// The program as given.
        program: String,
        /// The file it resolved to.
        path: PathBuf,
        /// The interpreter its `#!` line names.
        interpreter: PathBuf,
    },

    /// The session cgroup no longer exists: spawning into it is refused.
    #[error(
        "cgroup {} has been removed, so nothing can be started in it (the session has \
         ended); open a new session",
        path.display()
    )]
    CgroupRemoved {
        /// The removed cgroup.
        path: PathBuf,
    },

    /// A kernel feature procscope needs is missing.
    #[error("{feature} is not supported by this kernel: {fix}")]
    Unsupported {
        /// The missing feature.
        feature: &'static str,
        /// What to do about it.
        fix: &'static str,
    },

    /// An argument is malformed (an empty command, a NUL byte, …).
    #[error("invalid {what} {value:?}: {fix}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong and what is accepted.
        fix: String,
    },

    /// A child must be sealed into its session, but this process cannot seal it.
    /// Nothing was started.
    #[error("cannot seal the child into its session: {missing} is missing; {fix}")]
    SealingUnavailable {
        /// What is missing.
        missing: String,
        /// How to get it.
        fix: &'static str,
    },

    /// A child should run as a transient user, but none can be given to it.
    /// Nothing was started.
    #[error("cannot run the child as a transient user: {missing} is missing; {fix}")]
    TransientUserUnavailable {
        /// What is missing.
        missing: String,
        /// How to get it.
        fix: &'static str,
    },

    /// The process named as the owner of a command's session cannot own it:
    /// it is gone, or it is not an ancestor of the command. Nothing was placed.
    #[error("cannot make {owner} (pid {pid}) the owner: {why}")]
    OwnerUnusable {
        /// Where the owner came from (`--owner`, `PROCSCOPE_OWNER=…`, `parent`).
        owner: String,
        /// Its pid.
        pid: i32,
        /// What is wrong.
        why: String,
    },

    /// `PROCSCOPE_OWNER` is set but is not a pid: nothing was placed.
    #[error(
        "PROCSCOPE_OWNER={value:?} is not a pid: {reason}. Set it to the pid of the gateway that owns \
         the sessions below it (`PROCSCOPE_OWNER=$$` in the shell that execs the gateway, or the gateway's \
         own pid in a server's env: `String(process.pid)`, `str(os.getpid())`), or unset it to make \
         the parent process the owner"
    )]
    OwnerMalformed {
        /// The variable's value as found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The operation would act on the calling process or one of its ancestors.
    #[error("refusing to {op} {}: it contains this process", path.display())]
    ContainsSelf {
        /// What was refused.
        op: &'static str,
        /// The cgroup.
        path: PathBuf,
    },

    /// A process that must never be killed (this process, one of its
    /// ancestors, the gateway or its guardian) is inside a cgroup about to be
    /// killed, and could not be moved out of it: the cgroup was not killed.
    #[error(
        "refusing to kill {}: it contains process {pid} (this process, an ancestor of it, the gateway or its \
         guardian), which a child must have moved there, and it could not be moved out ({why}); move it out \
         by writing its pid to another cgroup's cgroup.procs, then end the session again",
        path.display()
    )]
    ContainsProtected {
        /// The protected process.
        pid: i32,
        /// The cgroup.
        path: PathBuf,
        /// Why it could not be moved.
        why: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        Error::Io { op, path: path.into(), source: source.into() }
    }

    pub(crate) fn os(op: &'static str, pid: u32, source: impl Into<io::Error>) -> Self {
        Error::Os { op, pid: Some(pid), source: source.into() }
    }

    /// The raw OS error behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.io_error().and_then(io::Error::raw_os_error)
    }

    /// The [`io::Error`] behind this error, if there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io { source, .. } | Error::Os { source, .. } | Error::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The [`io::ErrorKind`] that fits this error, as used by the conversion
    /// into [`io::Error`].
    pub fn kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        // Every variant by name: a new one must choose its kind.
        match self {
            Error::Io { source, .. } | Error::Os { source, .. } | Error::Spawn { source, .. } => source.kind(),
            Error::ProgramNotFound { .. } | Error::InterpreterNotFound { .. } | Error::NoCgroup2 { .. } => K::NotFound,
            Error::NotDelegated { .. } | Error::ContainsSelf { .. } | Error::ContainsProtected { .. } => {
                K::PermissionDenied
            }
            Error::CgroupReadOnly { .. } => K::ReadOnlyFilesystem,
            Error::InvalidName { .. } | Error::InvalidLimit { .. } | Error::InvalidInput { .. } => K::InvalidInput,
            Error::NotCgroup2 { .. } => K::InvalidInput,
            Error::SessionExists { .. } => K::AlreadyExists,
            Error::ControllerUnavailable { .. }
            | Error::Unsupported { .. }
            | Error::SealingUnavailable { .. }
            | Error::TransientUserUnavailable { .. }
            | Error::NeedsCgroup { .. } => K::Unsupported,
            Error::CgroupRemoved { .. } => K::NotFound,
            Error::OwnerUnusable { .. } | Error::OwnerMalformed { .. } => K::InvalidInput,
            Error::NotExecutableFormat { .. } => K::InvalidData,
        }
    }
}

/// `?` on an [`io::Result`] in a function that returns this crate's
/// [`Result`]: the error becomes [`Error::Os`] with `op` `"i/o"`, unless it
/// is a procscope error that went through `io::Error` before (then it is
/// that error again).
impl From<io::Error> for Error {
    fn from(source: io::Error) -> Self {
        if source.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let kind = source.kind();
            match source.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(e)) => return *e,
                // Checked just above; kept whole should it ever differ.
                Some(Err(inner)) => return Error::Os { op: "i/o", pid: None, source: io::Error::new(kind, inner) },
                None => unreachable!("an io::Error with an inner error has one"),
            }
        }
        Error::Os { op: "i/o", pid: None, source }
    }
}

/// `?` on this crate's [`Result`] in a function that returns
/// [`io::Result`] (as `tokio::process` code does). An `io::Error` that came
/// in through `?` goes back out as it was. Any other error keeps its
/// message and source chain, with [`Error::kind`] as the kind; it is inside
/// (`get_ref()` and `downcast_ref::<procscope::Error>()`), so its
/// [`raw_os_error`](Error::raw_os_error) is there rather than on the
/// `io::Error`.
impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Os { op: "i/o", pid: None, source } => source,
            e => io::Error::new(e.kind(), e),
        }
    }
}

/// Adds operation and path to `io` and `rustix` results.
pub(crate) trait Context<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T, E: Into<io::Error>> Context<T> for std::result::Result<T, E> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

/// A hint for common errnos, appended to [`Error::Io`] messages.
fn io_fix(e: &io::Error, path: &Path) -> impl fmt::Display {
    match e.raw_os_error() {
        Some(libc::EROFS) => {
            " (the cgroup filesystem is mounted read-only here, as in a default container: see \
             the README's \"Containers\" section; `procscope doctor` checks this)"
        }
        Some(libc::EACCES | libc::EPERM) => {
            " (procscope needs root or a delegated cgroup: run as root, or in a systemd unit \
             with Delegate=yes; `procscope doctor` checks this)"
        }
        Some(libc::ENODEV) => " (the cgroup has been removed)",
        Some(libc::EBUSY) if path.ends_with("cgroup.subtree_control") => {
            " (a cgroup with processes cannot enable controllers for its children: move the \
             processes into a leaf cgroup first)"
        }
        Some(libc::EBUSY) => " (the cgroup still has processes or child cgroups)",
        Some(libc::ENOTSUP) if path.ends_with("cgroup.kill") => " (cgroup.kill needs Linux 5.14)",
        _ => "",
    }
}
