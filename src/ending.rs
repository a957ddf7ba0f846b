//! How a session ended, for the [`Counters`](crate::Counters): closed by its
//! job, let go by a job that finished normally, or abandoned. And the tick
//! jobs, whose outcome decides it for the sessions they let go with processes
//! running.
//!
//! A session's ending is decided once and counted once:
//! - by `close()`: closed;
//! - by its guard, when nothing of it was alive (finished), or when it was
//!   dropped during a panic or outside a tick job with processes alive
//!   (abandoned);
//! - for a session a tick job let go with processes running, by the job's
//!   outcome, when the job's task ends (before the tick's sweep): finished
//!   for `Ok`, abandoned otherwise. A sweep that takes such a session before
//!   then decides it abandoned: the job let it go and had not returned. A
//!   session that outlives its job is let go outside any job: abandoned.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::session::SessionShared;
use crate::supervisor::{CounterCells, Inner};
use crate::sweep::Leak;

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Its job called `close()`.
    Closed,
    /// Dropped without `close`, its job having finished normally: nothing of
    /// it was alive, or its tick job returned `Ok` with its processes running.
    Finished,
    /// Dropped with processes alive in any other way.
    Abandoned,
}

const OPEN: u8 = 0;
/// In the orphan pool, waiting for its tick job's outcome.
const PENDING: u8 = 1;
const CLOSED: u8 = 2;
const FINISHED: u8 = 3;
const ABANDONED: u8 = 4;

impl Ending {
    fn code(self) -> u8 {
        match self {
            Ending::Closed => CLOSED,
            Ending::Finished => FINISHED,
            Ending::Abandoned => ABANDONED,
        }
    }

    fn from_code(code: u8) -> Option<Ending> {
        match code {
            CLOSED => Some(Ending::Closed),
            FINISHED => Some(Ending::Finished),
            ABANDONED => Some(Ending::Abandoned),
            _ => None,
        }
    }
}

/// A session's ending, once decided, and the tick job that opened it.
pub(crate) struct EndingCell {
    state: AtomicU8,
    job: Option<Arc<Job>>,
}

impl EndingCell {
    /// The cell of a session opened now: by the tick job this task runs, if any.
    pub(crate) fn new() -> EndingCell {
        EndingCell { state: AtomicU8::new(OPEN), job: JOB.try_with(Arc::clone).ok() }
    }

    /// Moves the state from one of `from` to `to`; whether it did.
    fn advance(&self, from: &[u8], to: u8) -> bool {
        self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| from.contains(&s).then_some(to)).is_ok()
    }
}

/// Decides `shared`'s ending as `ending` and counts it, unless it was decided
/// already.
pub(crate) fn settle(shared: &SessionShared, counters: &CounterCells, ending: Ending) {
    if shared.ending.advance(&[OPEN, PENDING], ending.code()) {
        counters.count_ending(ending);
    }
}

/// Decides the ending of a session its guard let go with processes running
/// (into the orphan pool): abandoned during a panic or outside a tick job
/// (also after its job ended); in a tick job, by the job's outcome once it
/// is known.
pub(crate) fn let_go(shared: &Arc<SessionShared>, inner: &Arc<Inner>) {
    let job = match &shared.ending.job {
        Some(job) if !std::thread::panicking() => job,
        _ => return settle(shared, &inner.counters, Ending::Abandoned),
    };
    let mut state = job.lock();
    if state.ended {
        drop(state);
        settle(shared, &inner.counters, Ending::Abandoned);
    } else if shared.ending.advance(&[OPEN], PENDING) {
        state.pending.push((Arc::downgrade(shared), Arc::downgrade(inner)));
    }
}

/// What ending an orphan that a sweep took prevents, if something in it is
/// still running. A session still waiting for its tick job's outcome is
/// decided abandoned here: the job let it go and has not returned.
pub(crate) fn leak_of_orphan(shared: &SessionShared, counters: &CounterCells) -> Leak {
    if shared.ending.advance(&[PENDING], ABANDONED) {
        counters.count_ending(Ending::Abandoned);
    }
    match Ending::from_code(shared.ending.state.load(Ordering::Acquire)) {
        Some(Ending::Finished) => Leak::OfFinishedJob,
        Some(Ending::Abandoned) => Leak::Abandoned,
        // Back in the pool after an ending that failed: closed by its job,
        // or taken while in use by a sweep of everything.
        Some(Ending::Closed) | None => Leak::No,
    }
}

tokio::task_local! {
    /// The tick job the current task runs.
    static JOB: Arc<Job>;
}

/// One job of a tick: whether its outcome is recorded (its task has ended),
/// and the sessions it let go with processes running before that.
#[derive(Default)]
pub(crate) struct Job {
    state: Mutex<JobState>,
}

#[derive(Default)]
struct JobState {
    /// Its outcome has been recorded.
    ended: bool,
    /// Sessions it let go with processes running, waiting for its outcome.
    pending: Vec<(Weak<SessionShared>, Weak<Inner>)>,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `fut` as this job: the sessions it opens are the job's.
    pub(crate) async fn run<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        JOB.scope(Arc::clone(self), fut).await
    }

    /// Records the job's outcome (the first one given counts): the sessions
    /// it let go with processes running end as finished for `Ok`, as
    /// abandoned otherwise.
    pub(crate) fn resolve(&self, ok: bool) {
        let ending = if ok { Ending::Finished } else { Ending::Abandoned };
        let mut state = self.lock();
        if std::mem::replace(&mut state.ended, true) {
            return;
        }
        for (shared, inner) in std::mem::take(&mut state.pending) {
            // A session that is gone was taken, and decided, by a sweep.
            if let (Some(shared), Some(inner)) = (shared.upgrade(), inner.upgrade()) {
                settle(&shared, &inner.counters, ending);
            }
        }
    }
}

/// Resolves its job as failed when dropped before [`Job::resolve`]: the job
/// panicked or its task was cancelled.
pub(crate) struct Unresolved(pub(crate) Arc<Job>);

impl Drop for Unresolved {
    fn drop(&mut self) {
        self.0.resolve(false);
    }
}
