//! Walks of a cgroup tree that a hostile child may have made as deep or as
//! wide as it likes: iterative, never recursive, with a fixed number of open
//! directory fds (the current directory and, for a moment, its parent) and
//! memory bounded by the tree itself.
//!
//! A walk goes up through `..` of the directory it holds, never through a
//! path, so no path is ever longer than one component (a 10,000-deep tree has
//! paths far beyond `PATH_MAX`). cgroupfs lets a cgroup be renamed only within
//! its parent, so `..` always is the directory the walk came from. A directory
//! removed by someone else meanwhile is skipped, and a walk whose current
//! directory vanished reopens its way down again by name from the top.

use std::ffi::OsString;
use std::time::Duration;

use super::{Cgroup, vanished};
use crate::error::{Error, Result};

/// One directory on the way down: its name and the children not visited yet
/// (names as the kernel has them: a hostile child may use any bytes).
struct Frame {
    name: OsString,
    pending: Vec<OsString>,
    /// [`Teardown::removed`] when this directory's children were last listed
    /// again after `EBUSY`: the same count twice means no progress.
    relisted_at: Option<usize>,
}

impl Frame {
    fn new(name: OsString, pending: Vec<OsString>) -> Frame {
        Frame { name, pending, relisted_at: None }
    }
}

impl Cgroup {
    /// Opens this cgroup's parent directory through `..`.
    pub(crate) fn open_parent(&self) -> Result<Cgroup> {
        let path = self.path.parent().map(ToOwned::to_owned).unwrap_or_default();
        self.open_dir_at("..".as_ref(), path)
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Cgroup> {
        let dir = self.dir.try_clone().map_err(|e| Error::io("dup cgroup fd", &self.path, e))?;
        Ok(Cgroup { dir, path: self.path.clone() })
    }

    /// Calls `visit` for this cgroup and then for every cgroup below it, top
    /// down, iteratively.
    ///
    /// A sub-cgroup removed during the walk is skipped, also when `visit`
    /// fails on it because it vanished; this cgroup itself vanishing, or any
    /// other error, ends the walk with that error.
    pub fn visit_tree(&self, visit: impl FnMut(&Cgroup) -> Result<()>) -> Result<()> {
        self.walk(false, visit)
    }

    /// [`visit_tree`](Self::visit_tree) of the cgroups that hold processes:
    /// a sub-cgroup whose `cgroup.events` says `populated 0` is skipped with
    /// everything below it (one read, not a walk, per empty sub-cgroup).
    pub(crate) fn visit_populated(&self, visit: impl FnMut(&Cgroup) -> Result<()>) -> Result<()> {
        self.walk(true, visit)
    }

    fn walk(&self, populated_only: bool, mut visit: impl FnMut(&Cgroup) -> Result<()>) -> Result<()> {
        visit(self)?;
        let mut frames = vec![Frame::new(OsString::new(), self.child_names()?)];
        // The directory of the deepest frame; `None` for this cgroup.
        let mut cur: Option<Cgroup> = None;
        while let Some(frame) = frames.last_mut() {
            if let Some(name) = frame.pending.pop() {
                let here = cur.as_ref().unwrap_or(self);
                if populated_only {
                    match here.read_child_file(&name, super::files::EVENTS) {
                        Ok(text) if !super::Events::parse(&text).populated => continue,
                        Ok(_) => {}
                        Err(e) if vanished(&e) => continue,
                        Err(e) => return Err(e),
                    }
                }
                let child = match here.open_child_os(&name) {
                    Ok(child) => child,
                    Err(e) if vanished(&e) => continue,
                    Err(e) => return Err(e),
                };
                let pending = match visit(&child).and_then(|()| child.child_names()) {
                    Ok(pending) => pending,
                    Err(e) if vanished(&e) => continue,
                    Err(e) => return Err(e),
                };
                frames.push(Frame::new(name, pending));
                cur = Some(child);
                continue;
            }
            frames.pop();
            cur = match (frames.len(), cur) {
                (0 | 1, _) | (_, None) => None,
                (_, Some(c)) => match c.open_parent() {
                    Ok(parent) => Some(parent),
                    Err(e) if vanished(&e) => {
                        let (deepest, opened) = reopen(self, &frames[1..])?;
                        frames.truncate(1 + opened);
                        deepest
                    }
                    Err(e) => return Err(e),
                },
            };
        }
        Ok(())
    }
}

/// Opens the directories named by `frames` one below the other, from `top`
/// down, until one is gone. Returns the deepest one opened (`None` when the
/// first is gone) and how many were opened: the frames below are gone.
fn reopen(top: &Cgroup, frames: &[Frame]) -> Result<(Option<Cgroup>, usize)> {
    let mut cur: Option<Cgroup> = None;
    for (i, frame) in frames.iter().enumerate() {
        match cur.as_ref().unwrap_or(top).open_child_os(&frame.name) {
            Ok(c) => cur = Some(c),
            Err(e) if vanished(&e) => return Ok((cur, i)),
            Err(e) => return Err(e),
        }
    }
    Ok((cur, frames.len()))
}

/// What a [`Teardown`] step ended with.
pub(crate) enum Step {
    /// The whole tree is removed (or was removed by someone else).
    Done,
    /// The current directory is busy (processes still leaving it): wait for
    /// a change of its `cgroup.events`, then step again.
    Busy,
    /// A batch of directories was removed: let others run, then step again.
    Yield,
}

/// Directories removed between two [`Step::Yield`]s.
const BATCH: usize = 256;

/// The removal of a cgroup and everything below it, bottom up, iteratively.
pub(crate) struct Teardown<'a> {
    parent: &'a Cgroup,
    /// `frames[0]` is the top, the last one the directory held in `cur`.
    frames: Vec<Frame>,
    cur: Cgroup,
    /// Directories this teardown removed.
    pub removed: usize,
}

impl<'a> Teardown<'a> {
    /// Starts the removal of `top`, a child of `parent`.
    pub fn new(parent: &'a Cgroup, top: &Cgroup) -> Result<Teardown<'a>> {
        let pending = match top.child_names() {
            Ok(p) => p,
            Err(e) if vanished(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        let name = top.path().file_name().map(ToOwned::to_owned).unwrap_or_default();
        Ok(Teardown { parent, frames: vec![Frame::new(name, pending)], cur: top.try_clone()?, removed: 0 })
    }

    /// The directory to wait on after [`Step::Busy`].
    pub fn current(&self) -> &Cgroup {
        &self.cur
    }

    /// Removes directories until the tree is gone, one is busy, or a batch
    /// is done.
    pub fn step(&mut self) -> Result<Step> {
        let mut batch = 0;
        loop {
            let Some(frame) = self.frames.last_mut() else { return Ok(Step::Done) };
            if let Some(name) = frame.pending.pop() {
                // An empty leaf goes at once, without being opened: one
                // syscall per directory of a wide tree. `EBUSY`: it has
                // children or processes, so it is walked.
                match self.cur.remove_child_os(&name) {
                    Ok(()) => {
                        self.removed += 1;
                        batch += 1;
                        if batch == BATCH {
                            return Ok(Step::Yield);
                        }
                        continue;
                    }
                    Err(e) if vanished(&e) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => return Err(e),
                }
                match self.cur.open_child_os(&name) {
                    Ok(child) => {
                        let pending = match child.child_names() {
                            Ok(p) => p,
                            Err(e) if vanished(&e) => continue,
                            Err(e) => return Err(e),
                        };
                        self.frames.push(Frame::new(name, pending));
                        self.cur = child;
                    }
                    Err(e) if vanished(&e) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            let depth = self.frames.len();
            let parent = if depth == 1 {
                None
            } else {
                match self.cur.open_parent() {
                    Ok(p) => Some(p),
                    Err(e) if vanished(&e) => {
                        self.restart()?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            let name = &self.frames[depth - 1].name;
            match parent.as_ref().unwrap_or(self.parent).remove_child_os(name) {
                Ok(()) => self.removed += 1,
                Err(e) if vanished(&e) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Children made meanwhile are removed first; otherwise
                    // processes are still on their way out. Children that
                    // came back without anything removed since the last
                    // listing are busy too (or cannot be removed at all):
                    // waited for, within the caller's deadline.
                    let frame = &mut self.frames[depth - 1];
                    let pending = self.cur.child_names().unwrap_or_default();
                    if pending.is_empty() || frame.relisted_at == Some(self.removed) {
                        frame.relisted_at = None;
                        return Ok(Step::Busy);
                    }
                    frame.relisted_at = Some(self.removed);
                    frame.pending = pending;
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.frames.pop();
            match parent {
                Some(p) => self.cur = p,
                None => return Ok(Step::Done),
            }
            batch += 1;
            if batch == BATCH {
                return Ok(Step::Yield);
            }
        }
    }

    /// The current directory vanished under us: reopen the way down by name.
    fn restart(&mut self) -> Result<()> {
        match self.parent.open_child_os(&self.frames[0].name) {
            Ok(top) => {
                let (deepest, opened) = reopen(&top, &self.frames[1..])?;
                self.frames.truncate(1 + opened);
                self.cur = deepest.unwrap_or(top);
                Ok(())
            }
            Err(e) if vanished(&e) => {
                self.frames.clear();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Cgroup {
    /// Removes the child cgroup `child` (opened from this one) and everything
    /// below it, bottom up, waiting for each directory to become empty.
    /// Returns how many directories were removed.
    ///
    /// Retries `rmdir` on `EBUSY`, each time after the next `cgroup.events`
    /// change or a short bounded wait (a cgroup can stay busy briefly after
    /// `populated 0`), and gives up when nothing could be removed for about
    /// two seconds. Another process removing part of the tree at the same
    /// time is fine: what is already gone counts as removed, by whoever
    /// removed it.
    pub async fn remove_child_tree(&self, child: &Cgroup) -> Result<usize> {
        let mut teardown = Teardown::new(self, child)?;
        let mut patience = Patience::new();
        loop {
            match teardown.step()? {
                Step::Done => return Ok(teardown.removed),
                Step::Yield => tokio::task::yield_now().await,
                Step::Busy => {
                    let wait = patience.wait(teardown.removed).ok_or_else(|| busy(teardown.current()))?;
                    // Gone meanwhile (removed by another process): the
                    // next step finds that out.
                    match teardown.current().wait_change(tokio::time::Instant::now() + wait).await {
                        Err(e) if !vanished(&e) => return Err(e),
                        _ => {}
                    }
                }
            }
        }
    }

    /// [`remove_child_tree`](Self::remove_child_tree), blocking the thread
    /// (for the guardian, which runs no runtime).
    pub fn remove_child_tree_blocking(&self, child: &Cgroup) -> Result<usize> {
        let mut teardown = Teardown::new(self, child)?;
        let mut patience = Patience::new();
        loop {
            match teardown.step()? {
                Step::Done => return Ok(teardown.removed),
                Step::Yield => {}
                Step::Busy => {
                    let wait = patience.wait(teardown.removed).ok_or_else(|| busy(teardown.current()))?;
                    let _ = teardown.current().wait_events_blocking(Some(wait), |_| false);
                }
            }
        }
    }
}

/// How long a teardown waits on a busy directory: backing off from 1 ms to
/// 100 ms, and giving up after two seconds without anything removed.
struct Patience {
    backoff: Duration,
    deadline: std::time::Instant,
    removed: usize,
}

impl Patience {
    const LIMIT: Duration = Duration::from_secs(2);

    fn new() -> Patience {
        Patience { backoff: Duration::from_millis(1), deadline: std::time::Instant::now() + Self::LIMIT, removed: 0 }
    }

    /// The next wait, after `removed` directories in all; `None` once two
    /// seconds passed without progress.
    fn wait(&mut self, removed: usize) -> Option<Duration> {
        let now = std::time::Instant::now();
        if removed > self.removed {
            *self = Patience { removed, ..Patience::new() };
        }
        let left = self.deadline.checked_duration_since(now).filter(|d| !d.is_zero())?;
        let wait = self.backoff.min(left);
        self.backoff = (self.backoff * 2).min(Duration::from_millis(100));
        Some(wait)
    }
}

fn busy(cg: &Cgroup) -> Error {
    Error::io("remove cgroup", cg.path(), rustix::io::Errno::BUSY)
}
