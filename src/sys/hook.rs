//! Guardian mode at process start, for every program that links procscope.
//!
//! A supervisor (or `procscope exec`) starts its guardian by running
//! `/proc/self/exe` — the very program it is, the gateway's own binary for a
//! library user — as `procscope-guardian` with
//! [`GUARDIAN_ENV`](crate::guardian::GUARDIAN_ENV) set and a pipe on fd 1.
//! This constructor, registered in `.init_array`, runs before `main` in every
//! such process: then it becomes the guardian and never returns, so the
//! gateway's `main` never runs twice. A setuid or file-capability program
//! (`AT_SECURE`) never does, whatever its environment. Otherwise it records
//! that it ran, and how SIGPIPE was set at start. No separate binary and no
//! call in `main` are needed.
//!
//! It runs while the process is still single-threaded, which [`detach`]
//! relies on.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the constructor: it is linked into this program and ran.
static RAN: AtomicBool = AtomicBool::new(false);

/// Whether SIGPIPE was ignored when the process started, before Rust's
/// runtime set it to ignored (see [`sigpipe_was_ignored`]).
static SIGPIPE_IGNORED: AtomicBool = AtomicBool::new(false);

/// The `argv[0]` a guardian is started with; the constructor acts on nothing
/// else.
pub(crate) const GUARDIAN_ARGV0: &str = "procscope-guardian";

extern "C" fn at_start(argc: libc::c_int, argv: *const *const libc::c_char, _envp: *const *const libc::c_char) {
    RAN.store(true, Ordering::Relaxed);
    // SAFETY: all-zero is a valid `struct sigaction` (SIG_DFL, empty mask).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying a disposition into a valid struct.
    if unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) } == 0 {
        SIGPIPE_IGNORED.store(old.sa_sigaction == libc::SIG_IGN, Ordering::Relaxed);
    }
    if argc < 1 || argv.is_null() {
        return;
    }
    // SAFETY: the start code passes argc valid, NUL-terminated strings.
    let argv0 = unsafe { std::ffi::CStr::from_ptr(*argv) };
    // A holder: the variable set, and fds 3 and 4 pipes (checked by the
    // holder itself, which exits if they are not). A program that gained
    // privileges at its execve never becomes one, and never runs its
    // `main` under a holder's name either.
    if argv0.to_bytes() == crate::holder::HOLDER_ARGV0.as_bytes()
        && std::env::var_os(crate::holder::HOLDER_ENV).is_some_and(|v| v == "1")
    {
        if secure() {
            // SAFETY: _exit ends the process without running anything of ours.
            unsafe { libc::_exit(127) }
        }
        crate::holder::main();
    }
    // Guardian mode needs all of: argv[0] "procscope-guardian", the variable,
    // fd 1 a pipe (the ready report), and no privilege gained at execve (a
    // setuid or file-capability program never trusts its environment).
    if secure() {
        return;
    }
    if argv0.to_bytes() != GUARDIAN_ARGV0.as_bytes() {
        return;
    }
    let fd1_is_pipe = rustix::fs::fstat(rustix::stdio::stdout())
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo);
    if !fd1_is_pipe {
        return;
    }
    if let Some(spec) = std::env::var_os(crate::guardian::GUARDIAN_ENV) {
        crate::guardian::main(&spec);
    }
}

/// Whether this program gained privileges at its execve (`AT_SECURE`: setuid,
/// setgid or file capabilities).
pub(crate) fn secure() -> bool {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Whether SIGPIPE was ignored when this process started (before Rust's
/// runtime ignored it). False if the constructor did not run.
pub(crate) fn sigpipe_was_ignored() -> bool {
    SIGPIPE_IGNORED.load(Ordering::Relaxed)
}

/// The type of an `.init_array` entry as glibc calls it: (argc, argv, envp).
type InitFn = extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char);

// SAFETY: `.init_array` holds pointers to functions that glibc's start code
// calls before `main` with (argc, argv, envp); `at_start` has that signature
// and touches nothing that needs `main`'s runtime set-up.
#[used]
#[unsafe(link_section = ".init_array")]
static AT_START: InitFn = at_start;

/// Whether the constructor ran in this process, i.e. whether a re-execution of
/// this program can become a guardian. Referring to the constructor here keeps
/// it in every program that starts guardians.
pub(crate) fn ran() -> bool {
    std::hint::black_box(&AT_START);
    RAN.load(Ordering::Relaxed)
}

/// Leaves the process that started us: `fork`, the parent exits at once, the
/// child goes on in a session of its own, a child of the nearest subreaper
/// (init, or systemd's service manager) instead of the gateway or a server.
///
/// Only for a single-threaded process (the guardian, before it starts any
/// thread): the child continues with normal Rust code after `fork`.
pub(crate) fn detach() -> std::io::Result<()> {
    // SAFETY: the calling process has one thread, so the child inherits no
    // lock held by another thread; the parent calls only `_exit`.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        // SAFETY: `_exit` ends the intermediate process without running any
        // handler; the child carries on.
        0 => rustix::process::setsid().map(drop).map_err(std::io::Error::from),
        _ => unsafe { libc::_exit(0) },
    }
}
