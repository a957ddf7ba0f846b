//! Reaps children whose handles were all dropped while they still ran.
//!
//! One thread per process, started on first use, waits on the pidfds of such
//! children with `epoll` and reaps each one as it exits. It needs no tokio
//! runtime, and handing a child over never blocks, so `Drop` can use it.
//!
//! A child the kernel reaps itself (`CLONE_AUTOREAP`) is held instead: its
//! pidfd is the last reference that keeps it alive (`CLONE_PIDFD_AUTOKILL`),
//! and is closed once the child has exited.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use rustix::event::epoll;

use crate::pidfd::PidFd;

struct Reaper {
    epoll: OwnedFd,
    children: Mutex<HashMap<RawFd, Adopted>>,
}

/// A child handed over, and whether the kernel reaps it (then it is only held).
struct Adopted {
    pidfd: PidFd,
    autokill: bool,
}

impl Adopted {
    /// Whether it has exited; reaps it unless the kernel does.
    fn exited(&self) -> bool {
        self.pidfd.exited_now(self.autokill)
    }
}

fn reaper() -> Option<&'static Reaper> {
    static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();
    static STARTED: OnceLock<()> = OnceLock::new();
    let r: &'static Reaper = REAPER
        .get_or_init(|| match epoll::create(epoll::CreateFlags::CLOEXEC) {
            Ok(epoll) => Some(Reaper { epoll, children: Mutex::new(HashMap::new()) }),
            Err(e) => {
                tracing::error!(error = %e, "cannot create the reaper's epoll; dropped children may stay zombies");
                None
            }
        })
        .as_ref()?;
    STARTED.get_or_init(|| {
        if let Err(e) = std::thread::Builder::new().name("procscope-reaper".into()).spawn(move || run(r)) {
            tracing::error!(error = %e, "cannot start the reaper thread");
        }
    });
    Some(r)
}

/// Takes over a child that is still running and reaps it once it exits; with
/// `autokill` (a child the kernel reaps and kills with its last pidfd), holds
/// its pidfd until it exits.
pub(crate) fn adopt(pidfd: PidFd, autokill: bool) {
    let child = Adopted { pidfd, autokill };
    if child.exited() {
        return;
    }
    let Some(r) = reaper() else { return };
    let raw = child.pidfd.as_raw_fd();
    let mut children = r.children.lock().unwrap_or_else(|p| p.into_inner());
    let data = epoll::EventData::new_u64(raw as u64);
    if epoll::add(&r.epoll, child.pidfd.as_fd(), data, epoll::EventFlags::IN).is_ok() {
        children.insert(raw, child);
    }
}

/// How many dropped children are waiting to be reaped (for tests and counters).
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub(crate) fn pending() -> usize {
    reaper().map_or(0, |r| r.children.lock().unwrap_or_else(|p| p.into_inner()).len())
}

fn run(r: &Reaper) {
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        match epoll::wait(&r.epoll, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "reaper epoll_wait failed; stopping");
                return;
            }
        }
        let mut children = r.children.lock().unwrap_or_else(|p| p.into_inner());
        for ev in &events {
            let raw = ev.data.u64() as RawFd;
            if let Some(child) = children.remove(&raw) {
                let _ = epoll::delete(&r.epoll, child.pidfd.as_fd());
                if !child.exited() {
                    // Spurious: keep waiting.
                    let data = epoll::EventData::new_u64(raw as u64);
                    if epoll::add(&r.epoll, child.pidfd.as_fd(), data, epoll::EventFlags::IN).is_ok() {
                        children.insert(raw, child);
                    }
                }
            }
        }
    }
}
