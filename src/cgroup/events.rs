//! `cgroup.events`: `populated` and `frozen`, read and waited for without polling
//! in a loop.
//!
//! The kernel raises a file-modified notification on `cgroup.events` whenever a
//! value in it changes; `poll(2)` reports it as `POLLPRI`. The async waits
//! register the fd with tokio for priority readiness; the blocking waits call
//! `poll` with `POLLPRI`. Each wake-up re-reads the file from offset 0.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;
use tokio::io::Interest;
use tokio::time::Instant;

use super::{Cgroup, files};
use crate::error::{Context, Error, Result};

/// The contents of `cgroup.events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// `populated 1`: a live process is in this cgroup or below.
    pub populated: bool,
    /// `frozen 1`: the cgroup is frozen (absent before Linux 5.2: false).
    pub frozen: bool,
}

impl Events {
    /// Parses `populated N` / `frozen N` lines; unknown lines are ignored.
    pub fn parse(text: &str) -> Events {
        let mut ev = Events::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next()) {
                (Some("populated"), Some(v)) => ev.populated = v == "1",
                (Some("frozen"), Some(v)) => ev.frozen = v == "1",
                _ => {}
            }
        }
        ev
    }
}

impl Cgroup {
    /// Reads `cgroup.events`.
    pub fn events(&self) -> Result<Events> {
        Ok(Events::parse(&self.read(files::EVENTS)?))
    }

    /// `populated` from `cgroup.events`: a live process is in this cgroup or below.
    /// Zombies do not count.
    pub fn is_populated(&self) -> Result<bool> {
        Ok(self.events()?.populated)
    }

    /// Waits until `cgroup.events` satisfies `done`, or until `deadline`.
    /// Returns whether it was satisfied. Cancel-safe.
    pub async fn wait_events(&self, deadline: Option<Instant>, mut done: impl FnMut(&Events) -> bool) -> Result<bool> {
        let path = self.path().join(files::EVENTS);
        let fd = self.open_file(files::EVENTS, OFlags::RDONLY).ctx("open", &path)?;
        // Register before the first read, so that no change between the read and
        // the registration is missed.
        let afd = crate::sys::async_fd::register(fd, Interest::PRIORITY).ctx("watch", &path)?;
        loop {
            if done(&read_events(afd.get_ref(), &path)?) {
                return Ok(true);
            }
            let ready = afd.ready(Interest::PRIORITY);
            let guard = match deadline {
                Some(d) => match tokio::time::timeout_at(d, ready).await {
                    Ok(g) => g,
                    Err(_) => return Ok(done(&read_events(afd.get_ref(), &path)?)),
                },
                None => ready.await,
            };
            guard.ctx("watch", &path)?.clear_ready();
        }
    }

    /// Waits until `populated 0` or `deadline`; returns whether the cgroup is empty.
    pub async fn wait_empty(&self, deadline: Option<Instant>) -> Result<bool> {
        self.wait_events(deadline, |e| !e.populated).await
    }

    /// Waits for the next change of `cgroup.events`, or until `deadline`.
    pub(crate) async fn wait_change(&self, deadline: Instant) -> Result<()> {
        let mut first = None;
        self.wait_events(Some(deadline), move |e| match first {
            None => {
                first = Some(*e);
                false
            }
            Some(f) => f != *e,
        })
        .await?;
        Ok(())
    }

    /// Blocking form of [`wait_events`](Self::wait_events) (`poll` with
    /// `POLLPRI`), for code without a runtime.
    pub fn wait_events_blocking(
        &self,
        timeout: Option<Duration>,
        mut done: impl FnMut(&Events) -> bool,
    ) -> Result<bool> {
        let path = self.path().join(files::EVENTS);
        let fd = self.open_file(files::EVENTS, OFlags::RDONLY).ctx("open", &path)?;
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if done(&read_events(&fd, &path)?) {
                return Ok(true);
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    Some(
                        rustix::time::Timespec::try_from(left)
                            .unwrap_or(rustix::time::Timespec { tv_sec: i64::MAX, tv_nsec: 0 }),
                    )
                }
                None => None,
            };
            let mut fds = [PollFd::new(&fd, PollFlags::PRI)];
            match rustix::event::poll(&mut fds, wait.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io("poll", &path, e)),
            }
        }
    }
}

fn read_events(fd: &OwnedFd, path: &std::path::Path) -> Result<Events> {
    let mut buf = [0u8; 256];
    let n = loop {
        match rustix::io::pread(fd.as_fd(), &mut buf, 0) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        }
    };
    Ok(Events::parse(&String::from_utf8_lossy(&buf[..n])))
}

#[cfg(test)]
mod tests {
    use super::Events;

    #[test]
    fn parses_events() {
        assert_eq!(Events::parse("populated 1\nfrozen 0\n"), Events { populated: true, frozen: false });
        assert_eq!(Events::parse("populated 0\nfrozen 1\n"), Events { populated: false, frozen: true });
        assert_eq!(Events::parse("populated 1\n"), Events { populated: true, frozen: false });
        assert_eq!(Events::parse("garbage\n\npopulated\nfrozen x y\n"), Events::default());
    }
}
