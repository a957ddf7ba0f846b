//! `clone3` and the child's steps between clone and `execve`.
//!
//! # How a child is made
//!
//! The parent prepares everything the child needs — the resolved program path,
//! `argv`/`envp` arrays, the stdio fds, credentials — so that the child allocates
//! nothing. It then calls `clone3` with `CLONE_VFORK | CLONE_PIDFD |
//! CLONE_CLEAR_SIGHAND` and, where the architecture has the small assembly entry
//! below, `CLONE_VM`: the child runs on a stack of its own inside the parent's
//! address space until it calls `execve`, like `posix_spawn` does. No page table
//! is copied, so spawning from a gateway holding gigabytes costs the same as from a
//! small one. The calling thread is suspended until the child has called `execve`
//! or exited; other threads run on.
//!
//! With `CLONE_INTO_CGROUP` the child is born inside the session cgroup. Without
//! it (older kernels, or forced), the child's first step writes `0` into the
//! session's `cgroup.procs`, before it does anything else.
//!
//! A step that fails records which step and its errno in a page shared with the
//! parent (`MAP_SHARED`, so this works for a copied address space too) and exits
//! with 127. The parent reads the record when `clone3` returns, reaps the child
//! (or, for a child the kernel reaps, waits until it has) and reports a typed
//! error instead of a child that exits 127.
//!
//! With [`Lifetime::TiedToPidfd`] the child is also made with
//! `CLONE_PIDFD_AUTOKILL | CLONE_AUTOREAP` (Linux 7.1): the kernel SIGKILLs it
//! when the last reference to its pidfd closes, and reaps it itself when it
//! exits (no zombie, no `SIGCHLD`; `waitid` gives `ECHILD`, and the exit status
//! comes from `PIDFD_GET_INFO`).
//!
//! # Async-signal safety
//!
//! Code that runs in the child ([`child_entry`] and what it calls) uses raw
//! system calls only: `libc::syscall` and rustix's `linux_raw` functions, which
//! neither allocate nor take locks. It reads only memory that the parent prepared
//! and does not touch until `clone3` returns. It never returns: it ends in
//! `execve` or `_exit`.

use std::ffi::{CStr, c_char, c_long, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use rustix::process::{Pid, WaitId, WaitIdOptions};
use rustix::thread::{CapabilitySet, CapabilitySets};

const CLONE_VM: u64 = 0x100;
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_VFORK: u64 = 0x4000;
// libc's constants for these two are `c_int` on glibc and overflow.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
// Linux 7.1, from `include/uapi/linux/sched.h` as released (checked against
// Linux 7.2's, Debian's linux-libc-dev 7.2.13-1): CLONE_AUTOREAP (1 << 34),
// CLONE_NNP (1 << 35), CLONE_PIDFD_AUTOKILL (1 << 36). The patch series
// (v5, 2026-02) had the last two the other way round. CLONE_NNP is never set
// here: it would set `no_new_privs` in children that the caller did not ask
// to run with it (a setuid program would lose its privileges).
/// `CLONE_AUTOREAP`: the kernel reaps the child when it exits; `exit_signal`
/// must be 0.
const CLONE_AUTOREAP: u64 = 1 << 34;
/// `CLONE_PIDFD_AUTOKILL`: SIGKILL to the child when the last reference to
/// the pidfd `clone3` returned closes. Needs `CLONE_PIDFD | CLONE_AUTOREAP`,
/// and `CAP_SYS_ADMIN` (in the caller's user namespace) without `CLONE_NNP`.
const CLONE_PIDFD_AUTOKILL: u64 = 1 << 36;
/// `CLONE_ARGS_SIZE_VER0`: Linux 5.3, up to `tls`.
const CLONE_ARGS_SIZE_VER0: usize = 64;
/// `CLONE_ARGS_SIZE_VER2`: Linux 5.7, up to `cgroup`.
const CLONE_ARGS_SIZE_VER2: usize = 88;

/// Size of the child's stack mapping (one guard page at its bottom).
const CHILD_STACK_LEN: usize = 128 * 1024;

/// `struct clone_args` from `<linux/sched.h>`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The step of the child's preparation that failed, reported with its errno.
///
/// Steps run in this order; see [`Command`](crate::Command) for what each does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChildStage {
    /// Starting the command's holder, where cgroups cannot be written: a
    /// subreaper (`PR_SET_CHILD_SUBREAPER`) that the command is started
    /// from, which every orphan of the command's tree is re-parented to.
    Holder,
    /// Writing `0` into the session's `cgroup.procs` (the fork-and-join path).
    JoinCgroup,
    /// Sealing: joining the sealed mount namespace (or copying one) and
    /// taking a cgroup namespace of its own.
    SealNamespaces,
    /// Sealing: making every cgroup mount read-only in the child's view.
    SealMounts,
    /// Sealing: installing the seccomp filter that refuses `F_SETSIG` with
    /// SIGKILL or SIGSTOP, so that the child cannot have the kernel send
    /// either to the guardian through `F_SETOWN`.
    SealSignalFilter,
    /// Resetting signal dispositions and the signal mask.
    Signals,
    /// Placing stdin, stdout and stderr on fds 0, 1 and 2.
    Stdio,
    /// Closing every fd above 2 (`close_range`).
    CloseFds,
    /// `setsid`.
    Setsid,
    /// `setpgid`: joining or leading the process group asked for.
    ProcessGroup,
    /// Clearing the capability bounding set (`PR_CAPBSET_DROP`).
    BoundingSet,
    /// `setgroups(0, NULL)`.
    Groups,
    /// `setresgid`.
    Gid,
    /// `setresuid`.
    Uid,
    /// `chdir` to the working directory.
    Chdir,
    /// Emptying the effective, permitted and inheritable capability sets.
    Capabilities,
    /// Clearing the ambient capability set.
    AmbientCapabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Restoring the soft `RLIMIT_NOFILE` the gateway had before it raised it.
    Rlimit,
    /// `execve` of the program.
    Exec,
}

impl ChildStage {
    const ALL: [ChildStage; 20] = [
        ChildStage::JoinCgroup,
        ChildStage::SealNamespaces,
        ChildStage::SealMounts,
        ChildStage::SealSignalFilter,
        ChildStage::Signals,
        ChildStage::Stdio,
        ChildStage::CloseFds,
        ChildStage::Setsid,
        ChildStage::ProcessGroup,
        ChildStage::BoundingSet,
        ChildStage::Groups,
        ChildStage::Gid,
        ChildStage::Uid,
        ChildStage::Chdir,
        ChildStage::Capabilities,
        ChildStage::AmbientCapabilities,
        ChildStage::NoNewPrivs,
        ChildStage::Rlimit,
        ChildStage::Exec,
        // Last: the codes of the others stay as they were.
        ChildStage::Holder,
    ];

    fn code(self) -> u32 {
        Self::ALL.iter().position(|s| *s == self).map_or(0, |i| i as u32 + 1)
    }

    fn from_code(code: u32) -> Option<Self> {
        Self::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// What the step does, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            ChildStage::JoinCgroup => "joining the session cgroup (cgroup.procs)",
            ChildStage::SealNamespaces => {
                "sealing: entering the sealed mount namespace and a cgroup namespace of its own"
            }
            ChildStage::SealMounts => "sealing: making the cgroup mounts read-only",
            ChildStage::SealSignalFilter => {
                "sealing: installing the seccomp filter that refuses F_SETSIG SIGKILL and SIGSTOP"
            }
            ChildStage::Signals => "resetting signal dispositions",
            ChildStage::Stdio => "setting up stdin/stdout/stderr",
            ChildStage::CloseFds => "closing inherited file descriptors",
            ChildStage::Setsid => "setsid",
            ChildStage::ProcessGroup => "setting the process group (setpgid)",
            ChildStage::BoundingSet => "clearing the capability bounding set",
            ChildStage::Groups => "dropping supplementary groups",
            ChildStage::Gid => "switching gid",
            ChildStage::Uid => "switching uid",
            ChildStage::Chdir => "changing to the working directory",
            ChildStage::Capabilities => "dropping capabilities",
            ChildStage::AmbientCapabilities => "clearing ambient capabilities",
            ChildStage::NoNewPrivs => "setting no_new_privs",
            ChildStage::Rlimit => "restoring the soft RLIMIT_NOFILE",
            ChildStage::Exec => "execve",
            ChildStage::Holder => "starting the holder (a subreaper the command is started from)",
        }
    }
}

/// How the child gets into its cgroup.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Placement<'a> {
    /// `CLONE_INTO_CGROUP` with this `O_DIRECTORY` fd of a cgroup2 directory.
    IntoCgroup(BorrowedFd<'a>),
    /// The child writes `0` to this open `cgroup.procs` as its first step.
    JoinProcs(BorrowedFd<'a>),
    /// The child stays in the parent's cgroup (the guardian).
    Inherit,
}

/// Everything the child does between clone and `execve`, prepared by the parent.
pub(crate) struct ChildPlan<'a> {
    /// Absolute (or relative to the child's cwd) path of the program.
    pub program: &'a CStr,
    /// NULL-terminated.
    pub argv: &'a [*const c_char],
    /// NULL-terminated.
    pub envp: &'a [*const c_char],
    /// The fds that become the child's 0, 1 and 2 (may already be 0, 1, 2).
    pub stdio: [BorrowedFd<'a>; 3],
    pub cwd: Option<&'a CStr>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub setsid: bool,
    /// `setpgid(0, pgid)`, after `setsid` would have run.
    pub process_group: Option<i32>,
    /// Highest capability number (`/proc/sys/kernel/cap_last_cap`).
    pub last_cap: u32,
    /// Keep the capabilities and leave `no_new_privs` unset: only for the
    /// guardian, our own program, which drops them itself once it has taken
    /// an identity of its own.
    pub keep_caps: bool,
    /// Seal the child (see [`super::seal`]). `None`: unsealed.
    pub seal: Option<super::seal::ChildSeal<'a>>,
    /// The calling thread carries the sealing's seccomp filter, so the child
    /// inherits it and does not attach its own.
    pub signal_filter_inherited: bool,
}

/// What ends a child besides its own exit and the signals it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Nothing: it outlives its pidfd and the gateway. Reaped with `waitid`.
    Own,
    /// `CLONE_PIDFD_AUTOKILL | CLONE_AUTOREAP`: killed by the kernel when the
    /// last reference to its pidfd closes, reaped by the kernel. Where `clone3`
    /// cannot be used (the `clone(2)` path) the child is spawned as
    /// [`Lifetime::Own`]; a `clone3` that refuses the flags fails the spawn
    /// with the error, for the caller to spawn again without them.
    TiedToPidfd,
}

/// A child that has called `execve` (or died before).
pub(crate) struct Spawned {
    pub pidfd: OwnedFd,
    pub pid: Pid,
    /// Made with `CLONE_PIDFD_AUTOKILL | CLONE_AUTOREAP`: the kernel reaps it,
    /// and closing the last reference to `pidfd` kills it.
    pub autokill: bool,
    /// Started from a holder (see [`spawn_held`]), which reaps it and reports
    /// its exit on this pipe (the read end, non-blocking).
    pub held: Option<OwnedFd>,
}

#[derive(Debug)]
pub(crate) enum SpawnFailure {
    /// `clone3` itself failed: no child exists.
    Clone(io::Error),
    /// The child failed at `stage`; it has been reaped.
    Child { stage: ChildStage, errno: io::Error },
}

/// Written by a failing child; lives in the shared mapping.
#[repr(C)]
struct Report {
    stage: AtomicU32,
    errno: AtomicI32,
    /// The pid of a held command, written by its holder (see [`spawn_held`]).
    held_pid: AtomicI32,
    /// A held command's ends of its go pipe, written by its holder before
    /// the command's clone; `-1` for any other child (see [`spawn_held`]).
    go_read: AtomicI32,
    go_write: AtomicI32,
}

/// What the child reads: the plan, its placement and where to report.
struct ChildCtx<'a> {
    plan: &'a ChildPlan<'a>,
    join_procs: RawFd,
    report: *const Report,
    /// Signals to reset to the default action: bit `n - 1` for signal `n`.
    reset: SignalReset,
    /// An fd (close-on-exec, above 2) left open when the others above 2 are
    /// closed, for `execve` to close: a held command's end of the pipe its
    /// gateway waits on (see [`spawn_held`]); `-1` for any other child.
    keep: RawFd,
}

/// Which signal dispositions the child resets.
#[derive(Clone, Copy)]
enum SignalReset {
    /// After `CLONE_CLEAR_SIGHAND` only ignored signals remain to reset: these.
    Ignored(u64),
    /// Every signal that is not at its default (the `clone(2)` path, or when the
    /// ignored set could not be read).
    All,
}

/// The child's stack and the report page: one `MAP_SHARED` anonymous mapping with a
/// guard page at its bottom. Shared so that a child with a copied address space
/// (no `CLONE_VM`) can still report.
struct ChildMapping {
    base: *mut c_void,
    len: usize,
    guard: usize,
}

impl ChildMapping {
    fn new() -> io::Result<Self> {
        let guard = rustix::param::page_size();
        let len = CHILD_STACK_LEN;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses; no
        // existing memory is affected.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
            )
        }?;
        let mapping = ChildMapping { base, len, guard };
        // SAFETY: the first page of our own mapping becomes the guard page; nothing
        // refers to it.
        unsafe { rustix::mm::mprotect(base, guard, rustix::mm::MprotectFlags::empty()) }?;
        Ok(mapping)
    }

    /// The report sits in the top 64 bytes, above the stack.
    fn report(&self) -> *const Report {
        (self.base as usize + self.len - 64) as *const Report
    }

    /// Lowest usable stack address and the stack's size; the top is 16-aligned.
    fn stack(&self) -> (u64, u64) {
        let low = self.base as usize + self.guard;
        let top = self.base as usize + self.len - 64;
        (low as u64, (top - low) as u64)
    }
}

thread_local! {
    /// One child stack per thread, reused: with `CLONE_VFORK` this thread is
    /// suspended while its child runs on the stack, so no two children ever
    /// share it. Saves a mapping, a guard page and fresh page faults per spawn.
    static MAPPING: std::cell::RefCell<Option<ChildMapping>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's child mapping, its report cleared.
fn with_mapping<R>(f: impl FnOnce(&ChildMapping) -> R) -> io::Result<R> {
    MAPPING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(ChildMapping::new()?);
        }
        let mapping = slot.as_ref().expect("just set");
        // SAFETY: the report lies inside the mapping; no child uses it now (the
        // previous one exec'd or exited before its spawn returned).
        let report = unsafe { &*mapping.report() };
        report.stage.store(0, Ordering::SeqCst);
        report.errno.store(0, Ordering::SeqCst);
        report.held_pid.store(0, Ordering::SeqCst);
        report.go_read.store(-1, Ordering::SeqCst);
        report.go_write.store(-1, Ordering::SeqCst);
        Ok(f(mapping))
    })
}

/// What [`refresh_ignored_signals`] found: `IGNORED_UNREAD` before the first
/// read, `IGNORED_UNKNOWN` if `/proc/self/status` could not be read, otherwise
/// the `SigIgn` mask (bit `n - 1` for signal `n`; SIGKILL's bit is never set,
/// so the two markers cannot be a mask).
static IGNORED: AtomicU64 = AtomicU64::new(IGNORED_UNREAD);
const IGNORED_UNREAD: u64 = u64::MAX;
const IGNORED_UNKNOWN: u64 = u64::MAX - 1;

/// Reads the signals this process ignores (`SigIgn` of `/proc/self/status`;
/// `/proc/self/stat` is cheaper to read, but its `sigignore` field holds only
/// signals 1–31) for the children spawned from now on.
///
/// Not read at every spawn: formatting `/proc/self/status` costs about a tenth
/// of a spawn. Read at the first spawn, at every `Supervisor::start` and when a
/// caller asks (`procscope::refresh_ignored_signals`).
pub(crate) fn refresh_ignored_signals() {
    IGNORED.store(read_ignored_signals(), Ordering::Relaxed);
}

fn read_ignored_signals() -> u64 {
    let read = || -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let hex = text.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
        u64::from_str_radix(hex.trim(), 16).ok()
    };
    read().unwrap_or(IGNORED_UNKNOWN)
}

/// Which dispositions the child resets: the ignored signals as last read, or
/// every one that is not at its default if they could not be read.
fn signal_reset() -> SignalReset {
    if IGNORED.load(Ordering::Relaxed) == IGNORED_UNREAD {
        // The first spawn's read never overwrites a refresh that won the race.
        let _ = IGNORED.compare_exchange(IGNORED_UNREAD, read_ignored_signals(), Ordering::Relaxed, Ordering::Relaxed);
    }
    match IGNORED.load(Ordering::Relaxed) {
        IGNORED_UNKNOWN | IGNORED_UNREAD => SignalReset::All,
        mask => SignalReset::Ignored(mask),
    }
}

impl Drop for ChildMapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; the child has exec'd or exited (CLONE_VFORK)
        // so nothing runs on it any more.
        let _ = unsafe { rustix::mm::munmap(self.base, self.len) };
    }
}

/// Whether this architecture has the `CLONE_VM` entry below.
pub(crate) const SHARED_VM_SPAWN: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Set once `clone3` turned out to be unusable here: missing (ENOSYS: before
/// Linux 5.3, or filtered by a seccomp profile such as Docker's default), or
/// without `CLONE_CLEAR_SIGHAND` (EINVAL on 5.3 and 5.4).
static CLONE3_UNUSABLE: AtomicBool = AtomicBool::new(false);
/// Tests force the `clone(2)` path with this.
pub(crate) static FORCE_LEGACY_CLONE: AtomicBool = AtomicBool::new(false);

/// Whether spawns use `clone3` (not the `clone(2)` path) as far as is known.
pub(crate) fn clone3_in_use() -> bool {
    !FORCE_LEGACY_CLONE.load(Ordering::Relaxed) && !CLONE3_UNUSABLE.load(Ordering::Relaxed)
}

/// Starts a child as `plan` says, placed as `placement` says.
///
/// Returns once the child has called `execve`. A failure in the child is reported
/// as [`SpawnFailure::Child`] after the child has been reaped. Uses `clone3`, or
/// `clone(2)` where `clone3` cannot be used; `clone(2)` cannot place a child
/// into a cgroup, so [`Placement::IntoCgroup`] then fails with ENOSYS and the
/// caller falls back to [`Placement::JoinProcs`].
pub(crate) fn spawn(
    plan: &ChildPlan<'_>,
    placement: Placement<'_>,
    lifetime: Lifetime,
) -> Result<Spawned, SpawnFailure> {
    let legacy = FORCE_LEGACY_CLONE.load(Ordering::Relaxed) || CLONE3_UNUSABLE.load(Ordering::Relaxed);
    if !legacy {
        match spawn_clone3(plan, placement, lifetime) {
            // With the Linux 7.1 flags, a refusal says nothing yet about
            // clone3 itself: the caller tries again without them.
            Err(failure @ SpawnFailure::Clone(_)) if lifetime == Lifetime::TiedToPidfd => return Err(failure),
            Err(SpawnFailure::Clone(e)) if e.raw_os_error() == Some(libc::ENOSYS) => {
                CLONE3_UNUSABLE.store(true, Ordering::Relaxed);
            }
            // Without CLONE_INTO_CGROUP in the flags, EINVAL means a kernel that
            // does not know CLONE_CLEAR_SIGHAND.
            Err(SpawnFailure::Clone(e))
                if e.raw_os_error() == Some(libc::EINVAL) && !matches!(placement, Placement::IntoCgroup(_)) =>
            {
                CLONE3_UNUSABLE.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    if matches!(placement, Placement::IntoCgroup(_)) {
        return Err(SpawnFailure::Clone(io::Error::from_raw_os_error(libc::ENOSYS)));
    }
    spawn_legacy(plan, placement)
}

/// Makes the calling process the command of `plan` itself: joins the cgroup
/// whose `cgroup.procs` is `join`, seals itself, puts SIGPIPE back as it was
/// at start, drops its privileges and calls `execve`. Stdio and every fd without
/// `FD_CLOEXEC` are kept as they are: they belong to the command, as with a
/// shell's `exec`. Returns only on failure, with the step and errno; by then
/// the process may already be in the cgroup.
///
/// With `owner` (a pidfd), a process whose owner exited meanwhile stops after
/// joining, with `ESRCH`. Sealing through a user namespace needs a
/// single-threaded process; the other steps affect only the calling thread
/// until `execve` ends the others.
pub(crate) fn become_in_place(
    plan: &ChildPlan<'_>,
    join: BorrowedFd<'_>,
    owner: Option<BorrowedFd<'_>>,
) -> (ChildStage, io::Error) {
    let steps = || -> Step {
        // SAFETY: writing two bytes we own to an fd we hold.
        let r = unsafe { libc::syscall(libc::SYS_write, join.as_raw_fd(), b"0".as_ptr(), 1usize) };
        check(ChildStage::JoinCgroup, r)?;
        // An owner that died while we placed ourselves has had its instance
        // ended already: we must not start the command in it now.
        if let Some(owner) = owner {
            let mut fds = [rustix::event::PollFd::new(&owner, rustix::event::PollFlags::IN)];
            let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
            if rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0) {
                return Err((ChildStage::JoinCgroup, libc::ESRCH));
            }
        }
        if let Some(how) = plan.seal {
            super::seal::seal(how, plan.signal_filter_inherited)?;
        }
        // Signals stay as the caller set them, as with a shell's `exec`: the
        // one disposition Rust's runtime changed (SIGPIPE, ignored before
        // `main`) goes back to what it was when this process started.
        // Handlers need nothing: execve resets them.
        let sigpipe = if super::hook::sigpipe_was_ignored() { [1u64, 0, 0, 0] } else { [0u64; 4] };
        // SAFETY: a valid kernel `sigaction` buffer (SIG_IGN = 1, SIG_DFL = 0).
        let r = unsafe {
            libc::syscall(libc::SYS_rt_sigaction, libc::SIGPIPE, sigpipe.as_ptr(), ptr::null_mut::<u64>(), 8usize)
        };
        check(ChildStage::Signals, r)?;
        drop_privileges_and_exec(plan)
    };
    let (stage, errno) = match steps() {
        Err(e) => e,
        Ok(()) => (ChildStage::Exec, libc::EINVAL),
    };
    (stage, io::Error::from_raw_os_error(errno))
}

/// How a holder becomes its own program once the command has exec'd: the
/// program that links procscope again (`/proc/self/exe`), whose constructor
/// turns it into the holder (`crate::holder`). Prepared by the parent.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub(crate) struct HolderExec<'a> {
    pub exe: &'a CStr,
    /// NULL-terminated.
    pub argv: &'a [*const c_char],
    /// NULL-terminated.
    pub envp: &'a [*const c_char],
    /// The write end of the pipe the holder reports the command's exit on;
    /// it becomes the holder's fd [`HOLDER_STATUS_FD`].
    pub status: BorrowedFd<'a>,
    /// The read end of the pipe the gateway controls the holder with; it
    /// becomes the holder's fd [`HOLDER_CONTROL_FD`].
    pub control: BorrowedFd<'a>,
}

/// The holder's fd for its status pipe.
pub(crate) const HOLDER_STATUS_FD: RawFd = 3;
/// The holder's fd for its control pipe.
pub(crate) const HOLDER_CONTROL_FD: RawFd = 4;
/// The holder's fd for the write end of its command's go pipe.
pub(crate) const HOLDER_GO_FD: RawFd = 5;

/// A command started under a holder: the holder (our child) has become its
/// own program, the command (the holder's child) has called `execve`.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub(crate) struct HeldSpawn {
    /// The holder's pidfd.
    pub holder: OwnedFd,
    pub holder_pid: Pid,
    /// The command's pid. It stays valid (the holder does not reap the
    /// command) until the holder has been told to go on.
    pub pid: Pid,
}

thread_local! {
    /// The command's stack when it is started by a holder, which runs on
    /// [`MAPPING`]'s stack meanwhile.
    static HELD_MAPPING: std::cell::RefCell<Option<ChildMapping>> = const { std::cell::RefCell::new(None) };
}

/// What the holder reads between its clone and its `execve`.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
struct HolderCtx<'a> {
    /// The command's context (its report is the holder's too).
    child: ChildCtx<'a>,
    exec: &'a HolderExec<'a>,
    /// The command's stack: lowest address and size.
    stack: (u64, u64),
    /// Started with `clone(2)`: the holder starts the command the same way.
    legacy: bool,
}

/// Starts the command of `plan` under a holder, where no cgroup can be
/// written.
///
/// 1. This thread clones the holder (`CLONE_VM | CLONE_VFORK`: this thread
///    waits until the holder execs or exits).
/// 2. The holder makes itself a subreaper, makes the command's go pipe and
///    clones the command (`CLONE_VM`, on a stack of its own, without
///    `CLONE_VFORK`: both run on).
/// 3. The command closes the pipe's write end and waits on its read end,
///    before its first step.
/// 4. The holder calls `execve` of `holder.exe`, the write end on
///    [`HOLDER_GO_FD`]; this thread runs on, and waits until the command has
///    exec'd or exited (the end of a pipe that only the command then holds).
/// 5. The holder's program takes its identity where it has one, and only
///    then writes the byte the command waits for: the command's program never
///    runs while its holder is still of the gateway's uid. A holder that died
///    closes the pipe instead; the command then fails at
///    [`ChildStage::Holder`].
/// 6. The command goes through its usual steps to `execve`.
///
/// Every orphan of the command's tree is re-parented to the holder, which
/// keeps the tree together. A failure of the command's steps is reported as
/// for [`spawn`]; one of the holder's own steps as [`ChildStage::Holder`].
/// Where the holder already runs its program when the command fails, the
/// failure carries the holder: the caller closes the control pipe (the
/// holder then ends and reaps what it has) and reaps it.
///
/// Uses `clone3`, or `clone(2)` where `clone3` is refused with `ENOSYS` (a
/// container's default seccomp profile does that without `CAP_SYS_ADMIN`).
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub(crate) fn spawn_held(plan: &ChildPlan<'_>, holder: &HolderExec<'_>) -> Result<HeldSpawn, HeldFailure> {
    let inner = HELD_MAPPING.with(|cell| -> io::Result<(u64, u64)> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(ChildMapping::new()?);
        }
        Ok(slot.as_ref().expect("just set").stack())
    });
    let stack = inner.map_err(|e| HeldFailure::from(SpawnFailure::Clone(e)))?;
    let flat =
        |r: io::Result<Result<HeldSpawn, HeldFailure>>| r.map_err(|e| HeldFailure::from(SpawnFailure::Clone(e)))?;
    if clone3_in_use() {
        let reset = signal_reset();
        match flat(with_mapping(|mapping| held_with(plan, holder, mapping, stack, reset, false))) {
            Err(HeldFailure { failure: SpawnFailure::Clone(e), holder: None })
                if e.raw_os_error() == Some(libc::ENOSYS) => {}
            other => return other,
        }
    }
    flat(with_mapping(|mapping| held_with(plan, holder, mapping, stack, SignalReset::All, true)))
}

/// A held command that did not start (see [`spawn_held`]).
#[derive(Debug)]
pub(crate) struct HeldFailure {
    pub failure: SpawnFailure,
    /// The holder's pidfd and pid, where the holder runs its own program
    /// and waits on its control pipe: the caller ends and reaps it.
    pub holder: Option<(OwnedFd, Pid)>,
}

impl From<SpawnFailure> for HeldFailure {
    fn from(failure: SpawnFailure) -> Self {
        HeldFailure { failure, holder: None }
    }
}

#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
fn held_with(
    plan: &ChildPlan<'_>,
    holder: &HolderExec<'_>,
    mapping: &ChildMapping,
    stack: (u64, u64),
    reset: SignalReset,
    legacy: bool,
) -> Result<HeldSpawn, HeldFailure> {
    // Its write end is copied to the holder and from it to the command
    // (close-on-exec in both, and kept by the command when it closes its
    // other fds): once this thread has closed its own, its end means the
    // command has exec'd or exited, and no longer runs on the stack and
    // context of this frame. Above 2, where the command's stdio goes.
    let pipe_failed = |e: rustix::io::Errno| HeldFailure::from(SpawnFailure::Clone(e.into()));
    let (started, mut started_write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(pipe_failed)?;
    if started_write.as_raw_fd() < 3 {
        started_write = rustix::io::fcntl_dupfd_cloexec(&started_write, 3).map_err(pipe_failed)?;
    }
    let ctx = HolderCtx {
        child: ChildCtx { plan, join_procs: -1, report: mapping.report(), reset, keep: started_write.as_raw_fd() },
        exec: holder,
        stack,
        legacy,
    };
    let ctx_ptr = ptr::addr_of!(ctx) as *mut c_void;
    let (low, size) = mapping.stack();
    let (ret, pidfd): (c_long, RawFd) = if legacy {
        // SAFETY: the holder runs on the mapping's stack, which it owns until
        // it execs or exits (CLONE_VFORK suspends this thread until then);
        // `ctx` lives in this frame, alive for the same reason, and for the
        // command until `started` ends, below.
        unsafe { clone_legacy(holder_legacy_entry, (low + size) as *mut c_void, ctx_ptr) }
    } else {
        let mut pidfd: RawFd = -1;
        let args = CloneArgs {
            flags: CLONE_PIDFD | CLONE_VFORK | CLONE_CLEAR_SIGHAND | CLONE_VM,
            pidfd: ptr::addr_of_mut!(pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: low,
            stack_size: size,
            ..CloneArgs::default()
        };
        // SAFETY: `args` is a valid clone_args with a stack inside our
        // mapping; the holder runs `holder_entry`, which reads only `ctx`
        // (alive: this thread is suspended until the holder execs or exits,
        // and then waits for the command below) and never returns.
        (unsafe { clone3_vm(&args, CLONE_ARGS_SIZE_VER0, ctx_ptr, holder_entry) }, pidfd)
    };
    drop(started_write);
    if ret < 0 {
        return Err(SpawnFailure::Clone(io::Error::from_raw_os_error(-ret as i32)).into());
    }
    // Until the command has exec'd or exited it runs in this process's
    // memory, on the second mapping, with this thread's thread-local errno:
    // nothing here touches errno (rustix's calls return their errors).
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(&started, &mut byte) {
            Ok(0) => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            // Not expected of a pipe; the holder's end is then the wait.
            Err(_) => break,
        }
    }
    // SAFETY: on success the kernel stored a new pidfd that nothing else owns.
    let holder_fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let holder_pid = Pid::from_raw(ret as i32).expect("clone returned a positive pid");
    // SAFETY: the report lies inside `mapping`, alive for this call.
    let report = unsafe { &*mapping.report() };
    let execd = report.held_pid.load(Ordering::SeqCst) != 0;
    if let Some(stage) = ChildStage::from_code(report.stage.load(Ordering::SeqCst)) {
        let errno = io::Error::from_raw_os_error(report.errno.load(Ordering::SeqCst));
        let failure = SpawnFailure::Child { stage, errno };
        if execd {
            return Err(HeldFailure { failure, holder: Some((holder_fd, holder_pid)) });
        }
        reap_blocking(&holder_fd);
        return Err(failure.into());
    }
    let Some(pid) = Pid::from_raw(report.held_pid.load(Ordering::SeqCst)) else {
        // Only SIGKILL ends the holder between its clone and its execve (it
        // blocks every other signal): reaped, and reported.
        reap_blocking(&holder_fd);
        return Err(SpawnFailure::Clone(io::Error::other("the holder was killed before it named its command")).into());
    };
    Ok(HeldSpawn { holder: holder_fd, holder_pid, pid })
}

/// The holder's side of `clone(2)`: glibc calls it on the new stack.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
extern "C" fn holder_legacy_entry(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `HolderCtx` passed to clone, alive as explained there.
    unsafe { holder_entry(arg) }
}

/// The `clone3` path.
fn spawn_clone3(plan: &ChildPlan<'_>, placement: Placement<'_>, lifetime: Lifetime) -> Result<Spawned, SpawnFailure> {
    let reset = signal_reset();
    with_mapping(|mapping| clone3_with(plan, placement, lifetime, mapping, reset)).map_err(SpawnFailure::Clone)?
}

fn clone3_with(
    plan: &ChildPlan<'_>,
    placement: Placement<'_>,
    lifetime: Lifetime,
    mapping: &ChildMapping,
    reset: SignalReset,
) -> Result<Spawned, SpawnFailure> {
    let report = mapping.report();
    let ctx = ChildCtx {
        plan,
        join_procs: match placement {
            Placement::JoinProcs(fd) => fd.as_raw_fd(),
            _ => -1,
        },
        report,
        reset,
        keep: -1,
    };
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_VFORK | CLONE_CLEAR_SIGHAND,
        pidfd: ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    let autokill = lifetime == Lifetime::TiedToPidfd;
    if autokill {
        // No exit signal: the kernel reaps the child, nobody waits for it.
        args.flags |= CLONE_AUTOREAP | CLONE_PIDFD_AUTOKILL;
        args.exit_signal = 0;
    }
    let mut size = CLONE_ARGS_SIZE_VER0;
    if let Placement::IntoCgroup(fd) = placement {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
        size = CLONE_ARGS_SIZE_VER2;
    }
    let ctx_ptr = ptr::addr_of!(ctx) as *mut c_void;
    let ret: c_long = if SHARED_VM_SPAWN {
        let (stack, stack_size) = mapping.stack();
        args.flags |= CLONE_VM;
        args.stack = stack;
        args.stack_size = stack_size;
        // SAFETY: `args` is a valid clone_args of `size` bytes; the child runs
        // `child_entry` on its own stack inside the mapping, reads only `ctx`
        // (alive: this thread is suspended until the child execs or exits) and
        // never returns.
        unsafe { clone3_vm(&args, size, ctx_ptr, child_entry) }
    } else {
        // SAFETY: as for fork(2): the child has a copy of the address space and
        // calls only `child_entry`, which is async-signal-safe and never returns.
        let r = unsafe { libc::syscall(libc::SYS_clone3, ptr::addr_of!(args), size) };
        if r == 0 {
            // SAFETY: we are the child; `ctx_ptr` points into our copy of the frame.
            unsafe { child_entry(ctx_ptr) }
        }
        if r < 0 { -(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL) as c_long) } else { r }
    };
    finish(ret, pidfd, mapping, autokill)
}

/// The `clone(2)` path (glibc's wrapper, which runs `fn(arg)` on the given stack
/// in the child): `CLONE_VM | CLONE_VFORK | CLONE_PIDFD` (Linux 5.2). Without
/// `CLONE_CLEAR_SIGHAND` the child would inherit the parent's handlers, so all
/// signals are blocked around the clone; the child resets every handler to the
/// default before it unblocks them (see `reset_signals`).
fn spawn_legacy(plan: &ChildPlan<'_>, placement: Placement<'_>) -> Result<Spawned, SpawnFailure> {
    with_mapping(|mapping| legacy_with(plan, placement, mapping)).map_err(SpawnFailure::Clone)?
}

fn legacy_with(
    plan: &ChildPlan<'_>,
    placement: Placement<'_>,
    mapping: &ChildMapping,
) -> Result<Spawned, SpawnFailure> {
    let ctx = ChildCtx {
        plan,
        join_procs: match placement {
            Placement::JoinProcs(fd) => fd.as_raw_fd(),
            _ => -1,
        },
        report: mapping.report(),
        reset: SignalReset::All,
        keep: -1,
    };
    let (low, size) = mapping.stack();
    // SAFETY: the child runs on the mapping's stack, which it owns until it
    // execs or exits (CLONE_VFORK suspends this thread until then); `ctx`
    // lives in this frame, which stays alive for the same reason;
    // `legacy_entry` never returns into the parent's frames.
    let (ret, pidfd) =
        unsafe { clone_legacy(legacy_entry, (low + size) as *mut c_void, ptr::addr_of!(ctx) as *mut c_void) };
    finish(ret, pidfd, mapping, false)
}

/// `clone(2)` with `CLONE_VM | CLONE_VFORK | CLONE_PIDFD`, every signal
/// blocked around it (no handler of ours may run in the child, which has
/// a copy of them): `entry(arg)` on the stack whose top is `top`. Returns
/// the child's pid or `-errno`, and its pidfd.
///
/// # Safety
/// `top` must be the 16-aligned top of a stack the child may use until it
/// execs or exits, and `arg` valid for `entry` until then.
unsafe fn clone_legacy(
    entry: extern "C" fn(*mut c_void) -> libc::c_int,
    top: *mut c_void,
    arg: *mut c_void,
) -> (c_long, RawFd) {
    let mut pidfd: libc::c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: sigset_t is plain data; all zeros is a valid (empty) set.
    let mut old = unsafe { std::mem::zeroed::<libc::sigset_t>() };
    // SAFETY: as above.
    let mut all = unsafe { std::mem::zeroed::<libc::sigset_t>() };
    // SAFETY: initialises and applies signal sets owned by this frame.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: as the caller promises; the pidfd goes into our local.
    let r = unsafe { libc::clone(entry, top, flags, arg, ptr::addr_of_mut!(pidfd)) };
    let err = io::Error::last_os_error();
    // SAFETY: restores this thread's previous mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    (if r < 0 { -(err.raw_os_error().unwrap_or(libc::EINVAL) as c_long) } else { r as c_long }, pidfd)
}

/// The child side of `clone(2)`: glibc calls it on the new stack.
extern "C" fn legacy_entry(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildCtx` passed to clone, alive as explained there.
    unsafe { child_entry(arg) }
}

/// The parent's side after either clone: adopt the pidfd, read the child's
/// report, reap a child that failed (or, with `autokill`, wait until the
/// kernel has).
fn finish(ret: c_long, pidfd: RawFd, mapping: &ChildMapping, autokill: bool) -> Result<Spawned, SpawnFailure> {
    if ret < 0 {
        return Err(SpawnFailure::Clone(io::Error::from_raw_os_error(-ret as i32)));
    }
    // SAFETY: on success the kernel stored a new pidfd (O_CLOEXEC) that nothing
    // else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = Pid::from_raw(ret as i32).expect("clone returned a positive pid");
    // SAFETY: the report lies inside `mapping`, which the caller keeps alive.
    let report = unsafe { &*mapping.report() };
    let stage = report.stage.load(Ordering::SeqCst);
    if let Some(stage) = ChildStage::from_code(stage) {
        let errno = io::Error::from_raw_os_error(report.errno.load(Ordering::SeqCst));
        if autokill {
            wait_released(&pidfd);
        } else {
            reap_blocking(&pidfd);
        }
        return Err(SpawnFailure::Child { stage, errno });
    }
    Ok(Spawned { pidfd, pid, autokill, held: None })
}

/// Reaps a child that is known to be exiting.
fn reap_blocking(pidfd: &OwnedFd) {
    use std::os::fd::AsFd;
    loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// Waits until a child the kernel reaps (`CLONE_AUTOREAP`) and that is known
/// to be exiting has been reaped: its pidfd polls `POLLHUP` (asked for no
/// event, `poll` waits for that alone). `waitid` would fail at once with
/// `ECHILD`. Bounded, although the child has called `_exit` already: no
/// zombie can be left either way, and a spawn must not hang.
fn wait_released(pidfd: &OwnedFd) {
    use rustix::event::{PollFd, PollFlags, poll};
    let timeout = rustix::time::Timespec { tv_sec: 5, tv_nsec: 0 };
    loop {
        let mut fds = [PollFd::new(pidfd, PollFlags::empty())];
        match poll(&mut fds, Some(&timeout)) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// `clone3` with `CLONE_VM`: the child starts on the stack in `args` and calls
/// `entry(arg)`. Returns the child's pid or `-errno` in the parent.
///
/// # Safety
/// `args` must describe a valid stack for the child, and `arg` must stay valid
/// until the child has exec'd or exited (`CLONE_VFORK` guarantees this);
/// `entry` never returns.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vm(
    args: &CloneArgs,
    size: usize,
    arg: *mut c_void,
    entry: unsafe extern "C" fn(*mut c_void) -> !,
) -> c_long {
    let ret: c_long;
    // SAFETY: the syscall instruction clobbers rcx and r11. In the child (rax ==
    // 0) the kernel has switched rsp to the top of the new, 16-aligned stack; we
    // clear rbp (end of frame chain) and call the entry, which never returns.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") size,
            in("r12") arg,
            in("r13") entry as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86_64 version.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3_vm(
    args: &CloneArgs,
    size: usize,
    arg: *mut c_void,
    entry: unsafe extern "C" fn(*mut c_void) -> !,
) -> c_long {
    let ret: c_long;
    // SAFETY: `svc 0` returns in x0. In the child (x0 == 0) sp is the top of the
    // new 16-aligned stack; we call the entry with `arg`, and it never returns.
    unsafe {
        core::arch::asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x0, x20",
            "blr x21",
            "brk #0x1",
            "2:",
            inlateout("x0") args as *const CloneArgs => ret,
            in("x1") size,
            in("x8") libc::SYS_clone3,
            in("x20") arg,
            in("x21") entry as usize,
            options(nostack),
        );
    }
    ret
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn clone3_vm(_: &CloneArgs, _: usize, _: *mut c_void, _: unsafe extern "C" fn(*mut c_void) -> !) -> c_long {
    -(libc::ENOSYS as c_long)
}

// ---------------------------------------------------------------------------
// Child side: async-signal-safe from here to the end of the file.
// ---------------------------------------------------------------------------

/// The child's entry point. Async-signal-safe; never returns.
///
/// # Safety
/// `arg` points to a live `ChildCtx`.
unsafe extern "C" fn child_entry(arg: *mut c_void) -> ! {
    // SAFETY: the parent keeps the context alive (CLONE_VFORK) or we hold a copy.
    let ctx = unsafe { &*(arg as *const ChildCtx<'_>) };
    let (stage, errno) = match child_steps(ctx) {
        Err(failure) => failure,
        Ok(()) => (ChildStage::Exec, libc::EINVAL),
    };
    // SAFETY: the report lies in the shared mapping, which outlives the child's
    // use of it (the parent unmaps it only after we exec'd or exited).
    let report = unsafe { &*ctx.report };
    report.errno.store(errno, Ordering::SeqCst);
    report.stage.store(stage.code(), Ordering::SeqCst);
    // SAFETY: _exit is async-signal-safe and ends this process only.
    unsafe { libc::_exit(127) }
}

/// The holder's entry point (see [`spawn_held`]). Async-signal-safe; never
/// returns.
///
/// # Safety
/// `arg` points to a live `HolderCtx`.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
unsafe extern "C" fn holder_entry(arg: *mut c_void) -> ! {
    // SAFETY: the parent keeps the context alive (CLONE_VFORK).
    let h = unsafe { &*(arg as *const HolderCtx<'_>) };
    // SAFETY: the report lies in the shared mapping, as for `child_entry`.
    let report = unsafe { &*h.child.report };
    let fail = |stage: ChildStage, errno: i32| -> ! {
        report.errno.store(errno, Ordering::SeqCst);
        report.stage.store(stage.code(), Ordering::SeqCst);
        // SAFETY: _exit is async-signal-safe and ends this process only.
        unsafe { libc::_exit(127) }
    };
    // Only SIGKILL may end the holder from here on: a signal sent to the
    // gateway's process group must not leave the command without it. The
    // command sets its own mask. SIGCHLD back to its default action: with
    // SIGCHLD ignored (a gateway may ignore it), the kernel would reap the
    // command itself, and the holder would never learn its status.
    let all: u64 = !0;
    let dfl = [0u64; 4];
    // SAFETY: a valid 8-byte kernel signal set and a valid kernel sigaction
    // (all zeros: SIG_DFL, no flags); no handler of ours is involved.
    unsafe {
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, ptr::addr_of!(all), ptr::null_mut::<u64>(), 8usize);
        libc::syscall(libc::SYS_rt_sigaction, libc::SIGCHLD, dfl.as_ptr(), ptr::null_mut::<u64>(), 8usize);
    }
    // SAFETY: prctl(2) with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_prctl, libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if let Err((stage, errno)) = check(ChildStage::Holder, r) {
        fail(stage, errno);
    }
    // The command's go pipe (see `spawn_held`): the command waits on its
    // read end until the holder's program writes a byte.
    let mut go = [-1 as libc::c_int; 2];
    // SAFETY: pipe2(2) into a valid two-int array.
    let r = unsafe { libc::syscall(libc::SYS_pipe2, go.as_mut_ptr(), libc::O_CLOEXEC) };
    if let Err((stage, errno)) = check(ChildStage::Holder, r) {
        fail(stage, errno);
    }
    report.go_read.store(go[0], Ordering::SeqCst);
    report.go_write.store(go[1], Ordering::SeqCst);
    let child_ctx = ptr::addr_of!(h.child) as *mut c_void;
    // Without CLONE_VFORK: the holder runs on while the command waits for
    // it. The command's stack (the second mapping) and `h.child` stay alive
    // until it has exec'd or exited: the gateway's thread waits for that.
    let pid = if h.legacy {
        let top = (h.stack.0 + h.stack.1) as *mut c_void;
        let flags = libc::CLONE_VM | libc::SIGCHLD;
        // SAFETY: the command runs `legacy_entry` on its own stack (the
        // second mapping) and reads only `h.child`, alive as said above.
        // Every signal is blocked here; the command resets them all.
        let r = unsafe { libc::clone(legacy_entry, top, flags, child_ctx) };
        if r < 0 {
            // SAFETY: errno of this thread, as in `check`.
            -(unsafe { *libc::__errno_location() } as c_long)
        } else {
            r as c_long
        }
    } else {
        let args = CloneArgs {
            flags: CLONE_CLEAR_SIGHAND | CLONE_VM,
            exit_signal: libc::SIGCHLD as u64,
            stack: h.stack.0,
            stack_size: h.stack.1,
            ..CloneArgs::default()
        };
        // SAFETY: as above, with `child_entry` on the second mapping.
        unsafe { clone3_vm(&args, CLONE_ARGS_SIZE_VER0, child_ctx, child_entry) }
    };
    if pid < 0 {
        fail(ChildStage::Holder, -pid as i32);
    }
    // From here on the command runs too, in the same memory and with the
    // same thread-local errno: the calls below are ones that do not fail
    // in practice, and the command writes errno only when one of its own
    // fails.
    // SAFETY: closes this process's copy of the read end (the command has
    // its own).
    unsafe { libc::syscall(libc::SYS_close, go[0]) };
    let reap = || {
        let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: waits for our own child into a valid siginfo buffer.
        unsafe { libc::syscall(libc::SYS_waitid, libc::P_PID, pid, info.as_mut_ptr(), libc::WEXITED, 0) };
    };
    let kill_and_fail = |stage: ChildStage, errno: i32| -> ! {
        // SAFETY: SIGKILL to our own child, which we then reap.
        unsafe { libc::syscall(libc::SYS_kill, pid, libc::SIGKILL) };
        reap();
        fail(stage, errno)
    };
    // The holder's fds: its status and control pipe ends and the go pipe's
    // write end on 3, 4 and 5, without FD_CLOEXEC. Moved above 9 first, so
    // that placing one cannot clobber another.
    let e = h.exec;
    let mut moved = [0 as c_long; 3];
    for (slot, fd) in moved.iter_mut().zip([e.status.as_raw_fd(), e.control.as_raw_fd(), go[1]]) {
        // SAFETY: on fds of this process's own table (no CLONE_FILES: a copy
        // of the gateway's).
        *slot = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD, 10) };
        if let Err((stage, errno)) = check(ChildStage::Holder, *slot) {
            kill_and_fail(stage, errno);
        }
    }
    for (fd, target) in moved.into_iter().zip([HOLDER_STATUS_FD, HOLDER_CONTROL_FD, HOLDER_GO_FD]) {
        // SAFETY: as above.
        let r = unsafe { libc::syscall(libc::SYS_dup3, fd, target, 0) };
        if let Err((stage, errno)) = check(ChildStage::Holder, r) {
            kill_and_fail(stage, errno);
        }
    }
    report.held_pid.store(pid as i32, Ordering::SeqCst);
    // SAFETY: execve with NULL-terminated arrays the parent prepared.
    let r = unsafe { libc::syscall(libc::SYS_execve, e.exe.as_ptr(), e.argv.as_ptr(), e.envp.as_ptr()) };
    let errno = match check(ChildStage::Holder, r) {
        Err((_, errno)) => errno,
        Ok(()) => libc::EINVAL,
    };
    report.held_pid.store(0, Ordering::SeqCst);
    kill_and_fail(ChildStage::Holder, errno)
}

type Step = Result<(), (ChildStage, i32)>;

/// A raw syscall's result as `Result`. Async-signal-safe.
fn check(stage: ChildStage, ret: c_long) -> Step {
    if ret < 0 {
        // SAFETY: reading errno of the current thread (in a CLONE_VM child, the
        // TLS of the suspended parent thread, which no one else reads meanwhile).
        Err((stage, unsafe { *libc::__errno_location() }))
    } else {
        Ok(())
    }
}

fn errno_of(stage: ChildStage, e: rustix::io::Errno) -> (ChildStage, i32) {
    (stage, e.raw_os_error())
}

/// The child's steps in order. Returns only on failure (or if `execve` returns).
fn child_steps(ctx: &ChildCtx<'_>) -> Step {
    let plan = ctx.plan;
    wait_for_holder(ctx)?;
    // SAFETY (all syscalls below): raw system calls on fds and memory owned by
    // this child or prepared by the parent; no allocation, no locks.
    if ctx.join_procs >= 0 {
        let r = unsafe { libc::syscall(libc::SYS_write, ctx.join_procs, b"0".as_ptr(), 1usize) };
        check(ChildStage::JoinCgroup, r)?;
    }

    // Sealing first, while the child still holds CAP_SYS_ADMIN, and after it is
    // in its cgroup: the cgroup namespace is rooted where the child is now.
    if let Some(how) = plan.seal {
        super::seal::seal(how, plan.signal_filter_inherited)?;
    }

    reset_signals(ctx.reset);

    // Stdio: first move any source that sits on 0..2 but not on its own slot out
    // of the way, so that placing one does not clobber another.
    let mut src = [0 as RawFd; 3];
    for (i, fd) in plan.stdio.iter().enumerate() {
        src[i] = fd.as_raw_fd();
    }
    for (i, fd) in src.iter_mut().enumerate() {
        if *fd < 3 && *fd != i as RawFd {
            let r = unsafe { libc::syscall(libc::SYS_fcntl, *fd, libc::F_DUPFD, 3) };
            check(ChildStage::Stdio, r)?;
            *fd = r as RawFd;
        }
    }
    for (i, fd) in src.iter().enumerate() {
        let r = if *fd == i as RawFd {
            unsafe { libc::syscall(libc::SYS_fcntl, *fd, libc::F_SETFD, 0) }
        } else {
            unsafe { libc::syscall(libc::SYS_dup3, *fd, i as RawFd, 0) }
        };
        check(ChildStage::Stdio, r)?;
    }

    close_fds_above_stdio(ctx.keep)?;

    if plan.setsid {
        let r = unsafe { libc::syscall(libc::SYS_setsid) };
        check(ChildStage::Setsid, r)?;
    }

    if let Some(pgid) = plan.process_group {
        // SAFETY: setpgid(2) is async-signal-safe and takes no pointers.
        let r = unsafe { libc::syscall(libc::SYS_setpgid, 0, pgid) };
        check(ChildStage::ProcessGroup, r)?;
    }

    drop_privileges_and_exec(plan)
}

/// A held command's first step: the go pipe's write end closed, one byte
/// read from its read end, which its holder writes once its program has
/// taken its identity (see [`spawn_held`]); the end of the pipe, if the
/// holder died first, fails the command at [`ChildStage::Holder`]. Nothing
/// for any other child.
fn wait_for_holder(ctx: &ChildCtx<'_>) -> Step {
    // SAFETY: the report lies in the shared mapping, as in `child_entry`.
    let report = unsafe { &*ctx.report };
    let go = report.go_read.load(Ordering::SeqCst);
    if go < 0 {
        return Ok(());
    }
    // SAFETY (the calls below): on this child's own copies of the go pipe's
    // fds, into a one-byte buffer on this stack.
    unsafe { libc::syscall(libc::SYS_close, report.go_write.load(Ordering::SeqCst)) };
    let mut byte = 0u8;
    loop {
        let r = unsafe { libc::syscall(libc::SYS_read, go, ptr::addr_of_mut!(byte), 1usize) };
        match r {
            1 => break,
            0 => return Err((ChildStage::Holder, libc::EPIPE)),
            _ => match check(ChildStage::Holder, r) {
                Err((_, libc::EINTR)) => continue,
                Err(failure) => return Err(failure),
                Ok(()) => return Err((ChildStage::Holder, libc::EIO)),
            },
        }
    }
    unsafe { libc::syscall(libc::SYS_close, go) };
    Ok(())
}

/// The last steps, the same for a child and for a process that becomes the
/// command itself: the bounding set, groups, gid, uid, `chdir`, the
/// capability sets, `no_new_privs`, `execve`. Returns only on failure.
fn drop_privileges_and_exec(plan: &ChildPlan<'_>) -> Step {
    // The bounding set needs CAP_SETPCAP. Without it (a gateway that holds no
    // capabilities) the first drop fails with EPERM, and the empty permitted set
    // plus no_new_privs below still keep execve from granting anything. The
    // guardian (`keep_caps`) keeps its capabilities and drops them itself.
    if !plan.keep_caps {
        for cap in 0..=plan.last_cap.min(63) {
            match rustix::thread::remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << cap)) {
                Ok(()) => {}
                Err(rustix::io::Errno::INVAL) => break,
                Err(rustix::io::Errno::PERM) if cap == 0 => break,
                Err(e) => return Err(errno_of(ChildStage::BoundingSet, e)),
            }
        }
    }

    if plan.uid.is_some() || plan.gid.is_some() {
        rustix::thread::set_thread_groups(&[]).map_err(|e| errno_of(ChildStage::Groups, e))?;
    }
    if let Some(gid) = plan.gid {
        let gid = rustix::process::Gid::from_raw(gid);
        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(|e| errno_of(ChildStage::Gid, e))?;
    }
    if let Some(uid) = plan.uid {
        let uid = rustix::process::Uid::from_raw(uid);
        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(|e| errno_of(ChildStage::Uid, e))?;
    }
    if let Some(cwd) = plan.cwd {
        let r = unsafe { libc::syscall(libc::SYS_chdir, cwd.as_ptr()) };
        check(ChildStage::Chdir, r)?;
    }

    if !plan.keep_caps {
        let empty = CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        };
        // Emptying permitted and inheritable also empties the ambient set: the
        // kernel keeps ambient ⊆ permitted ∩ inheritable (cap_capset), so no
        // PR_CAP_AMBIENT_CLEAR_ALL is needed.
        rustix::thread::set_capabilities(None, empty).map_err(|e| errno_of(ChildStage::Capabilities, e))?;
        rustix::thread::set_no_new_privs(true).map_err(|e| errno_of(ChildStage::NoNewPrivs, e))?;
    }

    restore_nofile()?;
    let r = unsafe { libc::syscall(libc::SYS_execve, plan.program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    check(ChildStage::Exec, r)
}

/// The soft `RLIMIT_NOFILE` this process had before [`raise_nofile`] raised
/// it; `u64::MAX` while it has not.
static NOFILE_SOFT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, once per process (as Go
/// does since 1.19): a supervisor of many sessions needs fds, and children get
/// the original soft limit back before `execve` (many programs still use
/// `select(2)`, which breaks above 1024).
pub(crate) fn raise_nofile() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
            && soft < hard
            && setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }).is_ok()
        {
            NOFILE_SOFT.store(soft, Ordering::SeqCst);
        }
    });
}

/// In the child before `execve`: the soft `RLIMIT_NOFILE` back to what the
/// parent had before it raised it. Async-signal-safe: an atomic load and two
/// raw `prlimit64` calls.
fn restore_nofile() -> Step {
    let soft = NOFILE_SOFT.load(Ordering::SeqCst);
    if soft == u64::MAX {
        return Ok(());
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    check(ChildStage::Rlimit, read_nofile(&mut limit))?;
    let new = libc::rlimit { rlim_cur: soft.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: sets this process's limit from a valid pointer.
    let r = unsafe {
        libc::syscall(libc::SYS_prlimit64, 0, libc::RLIMIT_NOFILE, ptr::addr_of!(new), ptr::null_mut::<libc::rlimit>())
    };
    check(ChildStage::Rlimit, r)
}

/// Every handled or ignored signal back to its default action, then an empty
/// signal mask — in that order, so that no handler of the parent can run in the
/// child. With `clone3`, `CLONE_CLEAR_SIGHAND` already reset handled ones; with
/// `clone(2)` the parent blocked every signal around the clone. Ignored ones
/// (Rust sets SIGPIPE to ignored) survive both clone and exec unless reset here.
fn reset_signals(which: SignalReset) {
    // Big enough for `struct sigaction` of the kernel on x86_64 and aarch64; the
    // handler is the first field, and all zeros is SIG_DFL with no flags.
    let mut old = [0u64; 4];
    let dfl = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        if let SignalReset::Ignored(mask) = which {
            if mask & (1 << (sig - 1)) != 0 {
                // SAFETY: a valid pointer to a buffer of the kernel's sigaction size.
                unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), ptr::null_mut::<u64>(), 8usize) };
            }
            continue;
        }
        // SAFETY: valid pointers to buffers of the kernel's sigaction size.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, ptr::null::<u64>(), old.as_mut_ptr(), 8usize) };
        if r == 0 && old[0] != 0 {
            // SAFETY: as above.
            unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), ptr::null_mut::<u64>(), 8usize) };
        }
    }
    let empty: u64 = 0;
    // SAFETY: a valid 8-byte signal set.
    unsafe {
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, ptr::addr_of!(empty), ptr::null_mut::<u64>(), 8usize)
    };
}

/// `close_range(3, ~0, 0)`, around `keep` if it is above 2; on kernels
/// before 5.9, close fds one by one up to the soft `RLIMIT_NOFILE`.
fn close_fds_above_stdio(keep: RawFd) -> Step {
    let ranges = if keep >= 3 { [(3, keep - 1), (keep + 1, RawFd::MAX)] } else { [(3, RawFd::MAX), (0, -1)] };
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: closes fds of this child only.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) };
        if r == 0 {
            continue;
        }
        // SAFETY: reading errno of this thread, as in `check`.
        let errno = unsafe { *libc::__errno_location() };
        if errno != libc::ENOSYS {
            return Err((ChildStage::CloseFds, errno));
        }
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let r = read_nofile(&mut limit);
        let max = if r == 0 { limit.rlim_cur.min(1 << 20) as RawFd } else { 65536 };
        for fd in (3..max).filter(|&fd| fd != keep) {
            // SAFETY: closing fds of this child; EBADF for unused numbers is harmless.
            unsafe { libc::syscall(libc::SYS_close, fd) };
        }
        return Ok(());
    }
    Ok(())
}

/// `prlimit64(0, RLIMIT_NOFILE, NULL, limit)`: this process's fd limits, as
/// a raw syscall (async-signal-safe). Returns the syscall's result.
fn read_nofile(limit: &mut libc::rlimit) -> c_long {
    // SAFETY: reads this process's limit into a valid out-pointer.
    unsafe {
        libc::syscall(libc::SYS_prlimit64, 0, libc::RLIMIT_NOFILE, ptr::null::<libc::rlimit>(), ptr::from_mut(limit))
    }
}
