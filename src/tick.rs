//! The tick helper: run a batch of jobs with bounded parallelism, wait for all of
//! them, then sweep the orphans — the one moment no job of the tick is mid-flight.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::ending::{Job, Unresolved};
use crate::supervisor::Supervisor;
use crate::sweep::SweepReport;

/// How one job of a tick ended. Serialized (serde) as
/// `{"outcome": "ok"}`, `{"outcome": "failed", "message": "…"}`,
/// `{"outcome": "panicked", "message": "…"}` or `{"outcome": "cancelled"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "message", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobOutcome {
    /// It returned `Ok`.
    Ok,
    /// It returned `Err`, with the error's message.
    Failed(String),
    /// It panicked, with the panic message.
    Panicked(String),
    /// Its task was cancelled (the runtime is shutting down).
    Cancelled,
}

/// What a tick did. Serialized (serde) with `elapsed` as `elapsed_secs`, in
/// seconds (a float).
#[derive(Clone, Debug, Default, serde::Serialize)]
#[non_exhaustive]
pub struct TickReport {
    /// One outcome per job, in the order the jobs were given.
    pub jobs: Vec<JobOutcome>,
    /// The sweep of orphans after all jobs ended.
    pub sweep: SweepReport,
    /// Time from the first job's start to the end of the sweep.
    #[serde(rename = "elapsed_secs", serialize_with = "crate::metrics::serialize_secs")]
    pub elapsed: Duration,
}

impl TickReport {
    /// Leaks the tick's sweep prevented: sessions let go with processes still
    /// running that the sweep ended ([`SweepReport::leaks_prevented`]).
    pub fn leaks_prevented(&self) -> usize {
        self.sweep.leaks_prevented
    }

    /// Jobs that returned `Ok`.
    pub fn ok(&self) -> usize {
        self.jobs.iter().filter(|j| **j == JobOutcome::Ok).count()
    }

    /// Jobs that returned an error, panicked or were cancelled.
    pub fn failed(&self) -> usize {
        self.jobs.len() - self.ok()
    }
}

impl fmt::Display for TickReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} job(s): {} ok, {} failed; {}", self.jobs.len(), self.ok(), self.failed(), self.sweep)
    }
}

impl Supervisor {
    /// Runs `jobs` as tasks, at most `parallelism` at a time (`None`: all at
    /// once), waits for every one of them, then sweeps the orphan pool.
    ///
    /// A job's error or panic is recorded in the report; it stops neither the
    /// other jobs nor the sweep. Jobs usually open a session each: whatever a
    /// job left alive — it failed, timed out or was cancelled inside — is in the
    /// orphan pool by the time it ends, and the sweep ends it.
    ///
    /// The sessions a job opens (in its own task: not in tasks it spawns) are
    /// counted by its outcome: one it let go with processes running is
    /// [finished](crate::Counters::sessions_finished) when the job returned
    /// `Ok` — its servers were still shutting down — and
    /// [abandoned](crate::Counters::sessions_abandoned) when it returned
    /// `Err`, panicked or was cancelled. Both are decided when the job's task
    /// ends, before the sweep. A session that outlives its job (moved out of
    /// it) is let go outside any job.
    pub async fn tick<I, F, T, E>(&self, jobs: I, parallelism: Option<usize>) -> TickReport
    where
        I: IntoIterator<Item = F>,
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let start = Instant::now();
        let limit = parallelism.map(|n| Arc::new(Semaphore::new(n.max(1))));
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    let _permit = match &limit {
                        Some(s) => Some(s.acquire().await.expect("semaphore is never closed")),
                        None => None,
                    };
                    // Resolved as failed if the job panics or its task is
                    // cancelled; by its result otherwise, once the result
                    // (a session in it too) is dropped.
                    let unresolved = Unresolved(Arc::new(Job::default()));
                    let result = unresolved.0.run(job).await.map(drop).map_err(|e| e.to_string());
                    unresolved.0.resolve(result.is_ok());
                    result
                })
            })
            .collect();
        let mut report = TickReport::default();
        for h in handles {
            report.jobs.push(match h.await {
                Ok(Ok(())) => JobOutcome::Ok,
                Ok(Err(e)) => JobOutcome::Failed(e),
                Err(e) if e.is_panic() => JobOutcome::Panicked(panic_message(e.into_panic())),
                Err(_) => JobOutcome::Cancelled,
            });
        }
        report.sweep = self.sweep_orphans().await;
        report.elapsed = start.elapsed();
        report
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}
