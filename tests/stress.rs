//! Trying hardest to break it: randomized cancellation at every point of a
//! session's life, and orphan sweeps hammering beside active sessions.
//!
//! `PROCSCOPE_STRESS_SEED` replays a run (the seed is printed);
//! `PROCSCOPE_STRESS_ITERATIONS` (default 2000) and `PROCSCOPE_SIBLING_SECS`
//! (default 30) make runs longer.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use procscope::{Command, Containment, Stdio, Supervisor, SweepScope};
use tokio::io::AsyncReadExt;

/// splitmix64: small, seedable, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A supervisor under the test's root, or with holders.
async fn supervisor(env: &TestEnv, containment: Containment, grace: Duration) -> Supervisor {
    let builder = Supervisor::builder().grace(grace).containment(containment);
    let builder = if containment == Containment::Cgroups { builder.root(env.path()) } else { builder };
    let sup = builder.start().await.unwrap();
    assert_eq!(sup.containment(), containment);
    sup
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
}

/// The fixture servers, one per misbehaviour.
const KINDS: [(&str, &[&str]); 6] = [
    ("exits-on-eof", &["wait-eof"]),
    ("ignores-term", &["ignore-term", "sleep", "3600"]),
    ("setsid-double-fork", &["daemon", "sleep", "3600"]),
    ("grandchild-holds-stdout", &["hold-stdout", "sleep", "3600"]),
    ("sigstops-itself", &["stop", "sleep", "3600"]),
    ("spawns-20", &["spawn", "20", "sleep", "3600"]),
];

/// How a job ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Its future is dropped (a `select!` or `timeout` elsewhere) at a random point.
    Cancelled,
    /// Its task is aborted at a random point.
    Aborted,
    /// It panics after spawning.
    Panics,
    /// It returns an error after spawning.
    Errors,
    /// It runs into its own timeout.
    TimesOut,
    /// It closes its session itself while others sweep.
    Closes,
}

const ENDINGS: [Ending; 6] =
    [Ending::Cancelled, Ending::Aborted, Ending::Panics, Ending::Errors, Ending::TimesOut, Ending::Closes];

/// One job: a session with a fixture server, ended as `ending` says after
/// `delay_us`. With `delay_us == 0` the end comes right after the spawn
/// returned (the spawn itself registers the child before it returns).
async fn job(
    sup: Supervisor,
    tag: Arc<str>,
    id: String,
    kind: usize,
    ending: Ending,
    delay_us: u64,
) -> Result<(), String> {
    let session = sup.session(&id).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(FIXTURE);
    cmd.args(KINDS[kind].1).env("PSTAG", &*tag).stdin(Stdio::Piped).stdout(Stdio::Piped).stderr(Stdio::Null);
    let mut child = session.spawn(&mut cmd).map_err(|e| e.to_string())?;
    if delay_us > 0 {
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
    }
    match ending {
        Ending::Panics => panic!("job {id} panics"),
        Ending::Errors => Err(format!("job {id} fails")),
        Ending::TimesOut => {
            let mut out = child.stdout.take().unwrap();
            let mut buf = [0u8; 16];
            let _ = tokio::time::timeout(Duration::from_micros(delay_us + 1), out.read(&mut buf)).await;
            Err("timed out".into())
        }
        Ending::Closes => {
            drop(child.stdin.take());
            session.close().await.map(drop).map_err(|e| e.to_string())
        }
        Ending::Cancelled | Ending::Aborted => {
            // Wait on the server forever: only cancellation ends this.
            let _ = child.wait().await;
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_cancellation_leaks_nothing() {
    randomized_cancellation(Containment::Cgroups).await;
}

/// The same, where no cgroup is written: each command from a holder of its
/// own (a default container's mode). Nothing may be left either, counted by
/// the processes' tag, as no cgroup holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_cancellation_with_holders_leaks_nothing() {
    randomized_cancellation(Containment::Holders).await;
}

async fn randomized_cancellation(containment: Containment) {
    let env = TestEnv::new();
    let tag: Arc<str> = format!("stress-{}-{}", std::process::id(), nanos()).into();
    let threads_before = threads();
    let seed = env_u64("PROCSCOPE_STRESS_SEED", nanos() as u64);
    let iterations = env_u64("PROCSCOPE_STRESS_ITERATIONS", 2000);
    eprintln!(
        "stress ({}): seed {seed} (replay with PROCSCOPE_STRESS_SEED={seed}), {iterations} iterations",
        containment.as_str()
    );
    // The jobs' own panics are expected: keep them out of the log.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or("");
        if !(msg.starts_with("job ") && msg.ends_with(" panics")) {
            default_hook(info);
        }
    }));
    within(900, async {
        let sup = supervisor(&env, containment, Duration::from_millis(50)).await;
        let mut rng = Rng(seed);
        // A sweeper that runs all along: sessions end during sweeps.
        let stop = Arc::new(tokio::sync::Notify::new());
        let sweeps = Arc::new(AtomicUsize::new(0));
        let sweeper = {
            let (sup, stop, sweeps) = (sup.clone(), stop.clone(), sweeps.clone());
            tokio::spawn(async move {
                let mut swept = procscope::SweepReport::default();
                loop {
                    tokio::select! {
                        _ = stop.notified() => return swept,
                        _ = tokio::time::sleep(Duration::from_millis(3)) => {}
                    }
                    swept.merge(sup.sweep(SweepScope::Orphans).await);
                    sweeps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let mut tally = [0usize; 6];
        let mut kinds = [0usize; 6];
        let batch = 24;
        let mut done = 0;
        while done < iterations {
            let n = batch.min(iterations - done);
            let mut handles = Vec::new();
            for i in 0..n {
                let id = format!("j{}", done + i);
                let kind = rng.below(KINDS.len() as u64) as usize;
                let ending = ENDINGS[rng.below(ENDINGS.len() as u64) as usize];
                let delay = if rng.below(4) == 0 { 0 } else { rng.below(20_000) };
                let cancel_at = Duration::from_micros(rng.below(30_000));
                tally[ENDINGS
                    .iter()
                    .position(|e| std::mem::discriminant(e) == std::mem::discriminant(&ending))
                    .unwrap()] += 1;
                kinds[kind] += 1;
                let fut = job(sup.clone(), tag.clone(), id, kind, ending, delay);
                handles.push(match ending {
                    Ending::Cancelled => tokio::spawn(async move {
                        let _ = tokio::time::timeout(cancel_at, fut).await;
                    }),
                    Ending::Aborted => {
                        let h = tokio::spawn(async move {
                            let _ = fut.await;
                        });
                        let abort = h.abort_handle();
                        tokio::spawn(async move {
                            tokio::time::sleep(cancel_at).await;
                            abort.abort();
                        });
                        h
                    }
                    _ => tokio::spawn(async move {
                        let _ = fut.await;
                    }),
                });
            }
            for h in handles {
                let _ = h.await; // panics and cancellations are the point
            }
            done += n;
        }
        stop.notify_one();
        let mut swept = sweeper.await.unwrap();
        swept.merge(sup.sweep(SweepScope::Orphans).await);
        let counters = sup.counters();
        let last = sup.shutdown().await.unwrap();
        assert!(swept.errors.is_empty() && last.errors.is_empty(), "{:?} {:?}", swept.errors, last.errors);
        if containment == Containment::Cgroups {
            assert!(!env.root.is_populated().unwrap(), "processes left");
            assert!(env.root.children().unwrap().is_empty(), "cgroups left: {:?}", env.root.children());
        }
        // Counted by their tag too (with holders, the only way): once
        // shutdown has returned, nothing may run, not even for a moment.
        assert_eq!(tagged(&tag), Vec::<i32>::new(), "processes of the jobs left running");
        // Every session ended one way, counted once. No job runs in a tick:
        // every session let go with processes alive was abandoned.
        let c = counters;
        assert_eq!(c.sessions_closed as usize, tally[5], "{c:?}");
        assert_eq!(c.sessions_opened, c.sessions_closed + c.sessions_finished + c.sessions_abandoned, "{c:?}");
        assert_eq!(c.sessions_orphaned, c.sessions_abandoned, "{c:?}");
        assert!(c.leaks_prevented <= c.sessions_abandoned && c.leaks_prevented_finished == 0, "{c:?}");
        eprintln!(
            "stress ({}): {iterations} iterations (endings cancelled/aborted/panics/errors/timeouts/closes = {tally:?}; \
             servers {:?} = {kinds:?}); {} sweeps ran alongside; sessions {} closed, {} finished, {} abandoned, \
             {} swept, {} leaks prevented; {} processes terminated, {} killed; leaks found: 0",
            containment.as_str(),
            KINDS.map(|k| k.0),
            sweeps.load(Ordering::Relaxed),
            counters.sessions_closed,
            counters.sessions_finished,
            counters.sessions_abandoned,
            counters.sessions_swept,
            counters.leaks_prevented,
            counters.processes_terminated,
            counters.processes_killed,
        );
    })
    .await;
    env.finish().await;
    // The runtime's workers are the same; no thread of ours is left.
    assert_eq!(threads(), threads_before, "threads leaked");
}

/// 32 active sessions keep spawning while orphan sweeps run every few
/// milliseconds: not one signal reaches an active session's processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sibling_sessions_under_load_receive_no_signal() {
    sibling_sessions(Containment::Cgroups, env_u64("PROCSCOPE_SIBLING_SECS", 30)).await;
}

/// The same with holders, for a third of the time: every signal of a sweep
/// goes through a pidfd verified against the ended session's holders'
/// trees, so none reaches a sibling's processes (which the same holders
/// code starts and reaps all along).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sibling_sessions_with_holders_under_load_receive_no_signal() {
    sibling_sessions(Containment::Holders, (env_u64("PROCSCOPE_SIBLING_SECS", 30) / 3).max(3)).await;
}

async fn sibling_sessions(containment: Containment, secs: u64) {
    let env = TestEnv::new();
    within(secs + 120, async {
        let sup = supervisor(&env, containment, Duration::from_millis(20)).await;
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("siblings-{}", nanos()));
        std::fs::create_dir_all(&dir).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let spawned = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for i in 0..32 {
            let (sup, dir, spawned) = (sup.clone(), dir.clone(), spawned.clone());
            workers.push(tokio::spawn(async move {
                let s = sup.session(&format!("active-{i}")).unwrap();
                let log = dir.join(format!("{i}.log"));
                let mut c = Command::new(FIXTURE);
                c.args(["record-signals", log.to_str().unwrap()]).stdin(Stdio::Null).stdout(Stdio::Piped);
                let mut recorder = s.spawn(&mut c).unwrap();
                read_until(recorder.stdout.as_mut().unwrap(), "recording").await;
                // Keep spawning short-lived children; each must exit on its own.
                while tokio::time::Instant::now() < deadline {
                    let mut c = Command::new(FIXTURE);
                    c.args(["sleep", "0.02"]).stdin(Stdio::Null).stdout(Stdio::Null);
                    let mut child = s.spawn(&mut c).unwrap();
                    let status = child.wait().await.unwrap();
                    assert!(status.success(), "a child of an active session was ended: {status:?}");
                    spawned.fetch_add(1, Ordering::Relaxed);
                }
                (s, recorder, log)
            }));
        }
        // Orphans to sweep...
        let maker = {
            let sup = sup.clone();
            tokio::spawn(async move {
                let mut orphans = 0usize;
                while tokio::time::Instant::now() < deadline {
                    if let Ok(s) = sup.session(&format!("orphan-{orphans}")) {
                        let _ = s.spawn(&mut fixture_sleep());
                        orphans += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                orphans
            })
        };
        // ...and an orphan sweep every 2 ms.
        let sweeper = {
            let sup = sup.clone();
            tokio::spawn(async move {
                let mut sweeps = 0usize;
                while tokio::time::Instant::now() < deadline {
                    let _ = sup.sweep(SweepScope::Orphans).await;
                    sweeps += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                sweeps
            })
        };
        let (orphans, sweeps) = (maker.await.unwrap(), sweeper.await.unwrap());
        let mut hit = Vec::new();
        let mut recorders = Vec::new();
        for w in workers {
            let (s, recorder, log) = w.await.unwrap();
            let got = std::fs::read_to_string(&log).unwrap_or_default();
            if !got.is_empty() || !recorder.pidfd().is_alive() {
                hit.push((s.id().to_owned(), got));
            }
            recorders.push((s, recorder));
        }
        assert!(hit.is_empty(), "active sessions were signalled: {hit:?}");
        let report = sup.shutdown().await.unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
        drop(recorders);
        std::fs::remove_dir_all(&dir).unwrap();
        eprintln!(
            "siblings ({}): 32 active sessions, {} children spawned and exited on their own, {sweeps} orphan \
             sweeps over {orphans} orphans in {secs} s; signals received by active sessions: 0",
            containment.as_str(),
            spawned.load(Ordering::Relaxed)
        );
    })
    .await;
    env.finish().await;
}

fn fixture_sleep() -> Command {
    let mut c = Command::new(FIXTURE);
    c.args(["sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Null);
    c
}
