//! Guardian mode at process start, for every program that links procscope.
//!
//! A supervisor (or `procscope exec`) starts its guardian by running
//! `/proc/self/exe` — the very program it is, the gateway's own binary for a
//! library user — with [`GUARDIAN_ENV`](crate::guardian::GUARDIAN_ENV) set.
//! This constructor, registered in `.init_array`, runs before `main` in every
//! such process: with the variable set it becomes the guardian and never
//! returns, so the gateway's `main` never runs twice; without it, it only
//! records that it ran. No separate binary and no call in `main` are needed.
//!
//! It runs while the process is still single-threaded, which [`detach`]
//! relies on.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the constructor: it is linked into this program and ran.
static RAN: AtomicBool = AtomicBool::new(false);

extern "C" fn at_start() {
    RAN.store(true, Ordering::Relaxed);
    if let Some(spec) = std::env::var_os(crate::guardian::GUARDIAN_ENV) {
        crate::guardian::main(&spec);
    }
}

// SAFETY: `.init_array` holds pointers to `extern "C" fn()` that the dynamic
// loader (or the static start code) calls before `main`; `at_start` is one,
// and it touches nothing that needs `main`'s runtime set-up.
#[used]
#[unsafe(link_section = ".init_array")]
static AT_START: extern "C" fn() = at_start;

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
