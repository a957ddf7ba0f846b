//! Session lifecycle on the real kernel: the guard on every exit path, the orphan
//! pool, sweeps, the tick helper, recovery and the guardian.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use procscope::{Command, Error, JobOutcome, Limits, Session, Stdio, Supervisor, SweepScope};

async fn supervisor(env: &TestEnv, grace: Duration) -> Supervisor {
    Supervisor::builder().root(env.path()).grace(grace).start().await.unwrap()
}

fn fixture(args: &[&str]) -> Command {
    let mut c = Command::new(FIXTURE);
    c.args(args).stdin(Stdio::Null).stdout(Stdio::Null);
    c
}

/// Starts a child in the session that lives until killed, with a daemonized
/// grandchild beside it.
fn start_server(session: &Session) -> procscope::ContainedChild {
    let mut c = Command::new(FIXTURE);
    c.args(["daemon", "hold-stdout", "ready", "sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Piped);
    session.spawn(&mut c).unwrap()
}

async fn wait_ready(child: &mut procscope::ContainedChild) {
    let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
    assert_eq!(lines.last().map(String::as_str), Some("ready"), "{lines:?}");
}

fn state_of(session_cgroup: &std::path::Path) -> Option<String> {
    procscope::Cgroup::open(session_cgroup).ok()?.meta("state").ok()?
}

/// The guard removes a session whose processes are all gone at once, and hands
/// one whose own child has exited but whose daemonized grandchild lives on to
/// the orphan pool (rmdir refuses it), where the sweep ends it.
#[tokio::test]
async fn the_guard_removes_empty_sessions_and_orphans_busy_ones() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env, Duration::from_millis(500)).await;

        let empty = sup.session("empty").unwrap();
        assert!(empty.spawn(&mut fixture(&["exit", "0"])).unwrap().wait().await.unwrap().success());
        let empty_dir = empty.cgroup().unwrap().path().to_owned();
        drop(empty);
        assert!(!empty_dir.exists(), "an empty session is removed by its guard");
        let c = sup.counters();
        assert_eq!((c.sessions_removed, c.sessions_orphaned), (1, 0), "{c:?}");
        assert_eq!((c.sessions_finished, c.sessions_abandoned), (1, 0), "{c:?}");

        let busy = sup.session("busy").unwrap();
        // The child starts a setsid'ed daemon and exits.
        assert!(busy.spawn(&mut fixture(&["daemon"])).unwrap().wait().await.unwrap().success());
        assert_eq!(busy.cgroup().unwrap().procs().unwrap().len(), 1, "the daemon lives in the session");
        let busy_dir = busy.cgroup().unwrap().path().to_owned();
        drop(busy);
        assert!(busy_dir.exists(), "a session with a live process is not removed");
        assert_eq!(state_of(&busy_dir).as_deref(), Some("orphaned"));
        let c = sup.counters();
        assert_eq!((c.sessions_removed, c.sessions_orphaned), (1, 1), "{c:?}");
        assert_eq!((c.sessions_finished, c.sessions_abandoned), (1, 1), "{c:?}");

        let report = sup.sweep_orphans().await;
        assert!(report.errors.is_empty(), "{report}");
        assert_eq!((report.sessions, report.removed), (1, 1), "{report}");
        assert_eq!(report.leaks_prevented, 1, "the daemon was still running: {report}");
        assert!(!busy_dir.exists());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Every way a job can end leaves its session in the orphan pool, marked
/// `orphaned`, and the next sweep ends it.
#[tokio::test]
async fn every_exit_path_orphans_the_session() {
    let env = TestEnv::new();
    within(60, async {
        let sup = supervisor(&env, Duration::from_millis(500)).await;

        // 1. Clean return with the server still running.
        let clean = {
            let s = sup.session("clean").unwrap();
            let mut c = start_server(&s);
            wait_ready(&mut c).await;
            s.cgroup().unwrap().path().to_owned()
        };
        // 2. An error returned with `?`.
        async fn failing(sup: &Supervisor) -> Result<(), Error> {
            let s = sup.session("error")?;
            let mut c = start_server(&s);
            wait_ready(&mut c).await;
            sup.session("")?; // invalid id: returns Err, dropping `s`
            Ok(())
        }
        assert!(failing(&sup).await.is_err());
        // 3. A panic in a task.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s2 = sup.clone();
        let panicked = tokio::spawn(async move {
            let s = s2.session("panic").unwrap();
            let mut c = start_server(&s);
            wait_ready(&mut c).await;
            tx.send(()).unwrap();
            panic!("job panicked");
        });
        rx.await.unwrap();
        assert!(panicked.await.unwrap_err().is_panic());
        // 4. A task aborted while it awaits.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s3 = sup.clone();
        let aborted = tokio::spawn(async move {
            let s = s3.session("abort").unwrap();
            let mut c = start_server(&s);
            wait_ready(&mut c).await;
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        rx.await.unwrap();
        aborted.abort();
        assert!(aborted.await.unwrap_err().is_cancelled());
        // 5. A future dropped by `select!` (as `timeout` does) once its server is up.
        let s4 = sup.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = async move {
            let s = s4.session("timeout").unwrap();
            let mut c = start_server(&s);
            wait_ready(&mut c).await;
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = job => unreachable!(),
            r = rx => r.unwrap(),
        }

        let mut orphans = sup.orphaned_sessions();
        orphans.sort();
        assert_eq!(orphans, ["abort", "clean", "error", "panic", "timeout"]);
        assert!(sup.active_sessions().is_empty());
        assert_eq!(state_of(&clean).as_deref(), Some("orphaned"));
        assert_eq!(sup.instance().unwrap().children().unwrap().len(), 5);

        let report = sup.sweep_orphans().await;
        assert_eq!(report.sessions, 5, "{report}");
        assert_eq!(report.removed, 5, "{report}");
        assert!(report.errors.is_empty(), "{report:?}");
        // Each session held the fixture, its stdout holder and a setsid'ed daemon.
        assert_eq!(report.terminated + report.killed, 15, "{report}");
        assert!(sup.instance().unwrap().children().unwrap().is_empty());
        assert!(!clean.exists());
        assert_eq!((report.leaks_prevented, report.leaks_prevented_finished), (5, 0), "{report}");
        let c = sup.counters();
        assert_eq!((c.sessions_opened, c.sessions_orphaned, c.sessions_swept), (5, 5, 5));
        // Outside a tick, even the clean return counts as abandoned: at the
        // drop, it cannot be told from the others.
        assert_eq!((c.sessions_closed, c.sessions_finished, c.sessions_abandoned), (0, 0, 5), "{c:?}");
        assert_eq!((c.leaks_prevented, c.leaks_prevented_finished), (5, 0), "{c:?}");
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn a_session_with_nothing_alive_is_removed_at_once() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env, Duration::from_secs(2)).await;
        let path = {
            let s = sup.session("quick").unwrap();
            let mut c = s.spawn(&mut fixture(&["exit", "0"])).unwrap();
            assert!(c.wait().await.unwrap().success());
            s.cgroup().unwrap().path().to_owned()
        };
        assert!(!path.exists(), "the cgroup should be gone at drop");
        assert!(sup.orphaned_sessions().is_empty());
        // An exited child nobody waited for is not "alive" either, and is reaped.
        let path = {
            let s = sup.session("unwaited").unwrap();
            let c = s.spawn(&mut fixture(&["exit", "0"])).unwrap();
            let watch = procscope::PidFd::open(c.pidfd().pid()).unwrap();
            drop(c);
            watch.exited().await.unwrap();
            s.cgroup().unwrap().path().to_owned()
        };
        assert!(!path.exists());
        assert_eq!(sup.counters().sessions_removed, 2);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn ids_and_limits_are_checked_before_anything_is_created() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env, Duration::ZERO).await;
        for bad in ["", "..", ".x", "a/b", "cgroup.procs", "memory.max", "x\0y", &"a".repeat(65), "sp ace"] {
            let err = sup.session(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err}");
        }
        let s = sup.session("dup").unwrap();
        let err = sup.session("dup").unwrap_err();
        assert!(matches!(err, Error::SessionExists { .. }), "{err}");
        let bad_limits = Limits { pids_max: Some(0), ..Limits::default() };
        assert!(matches!(sup.session_with_limits("zero", &bad_limits), Err(Error::InvalidLimit { .. })));
        let available = env.root.controllers().unwrap();
        if !available.iter().any(|c| c == "memory") {
            let err = sup
                .session_with_limits("mem", &Limits { memory_max: Some(64 << 20), ..Limits::default() })
                .unwrap_err();
            assert!(matches!(err, Error::ControllerUnavailable { controller: "memory", .. }), "{err}");
            assert!(sup.instance().unwrap().subtree_control().unwrap().is_empty());
            assert!(env.root.subtree_control().unwrap().is_empty());
        }
        // Only the one valid session exists.
        assert_eq!(sup.instance().unwrap().children().unwrap(), ["s-dup"]);
        assert_eq!(sup.counters().sessions_opened, 1);
        drop(s);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// An orphan sweep never touches an active session: 16 siblings record every
/// signal they receive while the sweep ends an orphan beside them.
#[tokio::test]
async fn orphan_sweeps_leave_sixteen_active_siblings_untouched() {
    let env = TestEnv::new();
    within(60, async {
        let sup = supervisor(&env, Duration::from_millis(300)).await;
        let dir = std::env::temp_dir().join(format!("procscope-signals-{}", nanos()));
        std::fs::create_dir(&dir).unwrap();
        let mut siblings = Vec::new();
        for i in 0..16 {
            let s = sup.session(&format!("sibling-{i}")).unwrap();
            let log = dir.join(format!("{i}.log"));
            let mut c = Command::new(FIXTURE);
            c.args(["record-signals", log.to_str().unwrap()]).stdin(Stdio::Null).stdout(Stdio::Piped);
            let mut child = s.spawn(&mut c).unwrap();
            read_until(child.stdout.as_mut().unwrap(), "recording").await;
            siblings.push((s, child, log));
        }
        for round in 0..5 {
            {
                let s = sup.session(&format!("orphan-{round}")).unwrap();
                let mut c = start_server(&s);
                wait_ready(&mut c).await;
            }
            let report = sup.sweep(SweepScope::Orphans).await;
            assert_eq!((report.sessions, report.removed), (1, 1), "{report}");
        }
        for (s, child, log) in &siblings {
            assert!(child.pidfd().is_alive(), "sibling {} died", s.id());
            let got = std::fs::read_to_string(log).unwrap_or_default();
            assert!(got.is_empty(), "sibling {} received signals: {got}", s.id());
        }
        assert_eq!(sup.active_sessions().len(), 16);
        let report = sup.shutdown().await.unwrap();
        // record-signals blocks SIGTERM: every sibling had to be killed.
        assert_eq!((report.sessions, report.killed), (16, 16), "{report}");
        for (_, mut child, _) in siblings {
            assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await;
    env.finish().await;
}

/// Servers that exit on SIGTERM are swept as soon as they are gone — no fixed
/// sleep; servers that ignore it are killed at the deadline.
#[tokio::test]
async fn sweeps_return_when_servers_exit_and_kill_at_the_deadline() {
    let env = TestEnv::new();
    within(90, async {
        // Long enough that a sweep that waited for the deadline is told from
        // one that returned when the servers were gone, however busy the
        // machine (a second, measured against 2 s, was not).
        let grace = Duration::from_secs(30);
        let sup = supervisor(&env, grace).await;
        for i in 0..8 {
            let s = sup.session(&format!("polite-{i}")).unwrap();
            let mut c = start_server(&s);
            wait_ready(&mut c).await;
        }
        let report = sup.sweep_orphans().await;
        assert_eq!((report.sessions, report.removed, report.killed), (8, 8, 0), "{report}");
        assert_eq!(report.terminated, 24, "{report}");
        assert!(report.elapsed < grace, "a polite sweep waited for its {grace:?} grace: {:?}", report.elapsed);
        sup.shutdown().await.unwrap();

        let grace = Duration::from_millis(400);
        let sup = supervisor(&env, grace).await;
        for i in 0..4 {
            let s = sup.session(&format!("stubborn-{i}")).unwrap();
            let mut c = Command::new(FIXTURE);
            c.args(["ignore-term", "ready", "sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Piped);
            let mut child = s.spawn(&mut c).unwrap();
            wait_ready(&mut child).await;
        }
        let report = sup.sweep_orphans().await;
        assert_eq!((report.sessions, report.removed, report.killed, report.terminated), (4, 4, 4, 0), "{report}");
        assert!(report.elapsed >= grace, "killed before the deadline: {:?}", report.elapsed);
        assert_eq!(sup.counters().processes_killed, 4);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A stopped server gets SIGCONT after SIGTERM, and a grandchild holding the
/// server's stdout pipe does not keep anything alive.
#[tokio::test]
async fn stopped_servers_and_stdout_holders_are_ended() {
    let env = TestEnv::new();
    within(60, async {
        let sup = supervisor(&env, Duration::from_secs(2)).await;
        let holder_pid;
        {
            let s = sup.session("stopped").unwrap();
            let mut c = Command::new(FIXTURE);
            c.args(["hold-stdout", "ready", "stop", "sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Piped);
            let mut child = s.spawn(&mut c).unwrap();
            let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
            holder_pid = field(&lines, "holder").parse::<i32>().unwrap();
            // Wait until it has stopped itself.
            let stat = format!("/proc/{}/stat", child.id());
            for _ in 0..500 {
                if std::fs::read_to_string(&stat).unwrap().split(' ').nth(2) == Some("T") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(std::fs::read_to_string(&stat).unwrap().split(' ').nth(2), Some("T"));
        }
        let holder = procscope::PidFd::open(holder_pid as u32).unwrap();
        let report = sup.sweep_orphans().await;
        assert_eq!((report.sessions, report.removed, report.killed), (1, 1, 0), "{report}");
        assert_eq!(report.terminated, 2, "{report}");
        assert!(!holder.is_alive());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn close_ends_a_session_now_and_spawning_after_an_end_is_refused() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env, Duration::from_secs(2)).await;
        let s = sup.session("closing").unwrap();
        let mut c = start_server(&s);
        wait_ready(&mut c).await;
        let path = s.cgroup().unwrap().path().to_owned();
        let t = s.close().await.unwrap();
        assert!(t.removed && t.terminated == 3 && t.killed == 0, "{t:?}");
        assert!(!path.exists());
        assert!(c.try_wait().unwrap().is_some(), "the child was reaped");

        // A sweep of everything ends active sessions; their handles then refuse
        // to spawn instead of starting anything outside a cgroup.
        let s = sup.session("active").unwrap();
        let report = sup.sweep(SweepScope::All).await;
        assert_eq!(report.removed, 1, "{report}");
        let err = s.spawn(&mut fixture(&["exit", "0"])).unwrap_err();
        assert!(matches!(err, Error::CgroupRemoved { .. }), "{err}");
        drop(s);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn tick_runs_jobs_in_bounded_parallel_and_sweeps_after_all() {
    let env = TestEnv::new();
    within(60, async {
        let sup = supervisor(&env, Duration::from_millis(500)).await;
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..12).map(|i| {
            let sup = sup.clone();
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let s = sup.session(&format!("job-{i}")).map_err(|e| e.to_string())?;
                let mut c = start_server(&s);
                wait_ready(&mut c).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                match i % 4 {
                    0 => Err(format!("job {i} failed")),
                    1 => panic!("job {i} panicked"),
                    2 => {
                        // A job that ends its server itself.
                        s.close().await.map_err(|e| e.to_string())?;
                        Ok(())
                    }
                    _ => Ok(()), // returns with its server running
                }
            }
        });
        let report = sup.tick(jobs, Some(3)).await;
        assert_eq!(report.jobs.len(), 12);
        assert_eq!(peak.load(Ordering::SeqCst), 3, "parallelism was not bounded to 3");
        assert_eq!(report.ok(), 6, "{report}");
        assert!(matches!(&report.jobs[0], JobOutcome::Failed(m) if m == "job 0 failed"));
        assert!(matches!(&report.jobs[1], JobOutcome::Panicked(m) if m == "job 1 panicked"));
        // Failed, panicked and returned-with-server jobs left 9 sessions behind.
        assert_eq!((report.sweep.sessions, report.sweep.removed), (9, 9), "{report}");
        assert!(sup.instance().unwrap().children().unwrap().is_empty());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// The sessions of a tick's jobs are counted by how they ended: closed by
/// their job; finished when the job returned `Ok` (its server still running,
/// or nothing left); abandoned when the job timed out or panicked, or dropped
/// the session during a panic it caught. The tick's sweep ends what the
/// finished and abandoned ones left running: a leak prevented each.
#[tokio::test]
async fn a_tick_counts_how_each_session_ended_and_the_leaks_prevented() {
    let env = TestEnv::new();
    within(60, async {
        let sup = supervisor(&env, Duration::from_millis(500)).await;
        let jobs = (0..8).map(|i| {
            let sup = sup.clone();
            async move {
                let open = || sup.session(&format!("job-{i}")).map_err(|e| e.to_string());
                match i {
                    // Closes its session, then returns.
                    0 | 1 => {
                        let s = open()?;
                        let mut c = start_server(&s);
                        wait_ready(&mut c).await;
                        s.close().await.map(drop).map_err(|e| e.to_string())
                    }
                    // Returns with its server still running.
                    2 | 3 => {
                        let s = open()?;
                        let mut c = start_server(&s);
                        wait_ready(&mut c).await;
                        Ok(())
                    }
                    // Returns once its server has exited: nothing to clean.
                    4 => {
                        let s = open()?;
                        let status = s.spawn(&mut fixture(&["exit", "0"])).unwrap().wait().await.unwrap();
                        assert!(status.success());
                        Ok(())
                    }
                    // Times out with its server running.
                    5 => {
                        let s = open()?;
                        let mut c = start_server(&s);
                        wait_ready(&mut c).await;
                        let never = std::future::pending::<()>();
                        tokio::time::timeout(Duration::from_millis(20), never)
                            .await
                            .map_err(|_| "job 5 timed out".into())
                    }
                    // Panics with its server running.
                    6 => {
                        let s = open()?;
                        let mut c = start_server(&s);
                        wait_ready(&mut c).await;
                        panic!("job 6 panicked")
                    }
                    // Drops a session with a live server during a panic it
                    // catches, then returns `Ok`.
                    _ => {
                        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let s = open().unwrap();
                            let _server = s.spawn(&mut fixture(&["sleep", "3600"])).unwrap();
                            panic!("job 7 panicked inside")
                        }));
                        assert!(caught.is_err());
                        Ok(())
                    }
                }
            }
        });
        let report = sup.tick(jobs, None).await;
        let c = sup.counters();
        assert_eq!((report.ok(), report.failed()), (6, 2), "{report}");
        assert!(matches!(&report.jobs[5], JobOutcome::Failed(m) if m == "job 5 timed out"), "{report:?}");
        assert!(matches!(&report.jobs[6], JobOutcome::Panicked(m) if m == "job 6 panicked"), "{report:?}");
        assert_eq!(
            (c.sessions_opened, c.sessions_closed, c.sessions_finished, c.sessions_abandoned),
            (8, 2, 3, 3),
            "{c:?}"
        );
        assert_eq!((c.sessions_orphaned, c.sessions_swept), (5, 5), "{c:?}");
        assert_eq!((c.leaks_prevented, c.leaks_prevented_finished), (5, 2), "{c:?}");
        // Jobs 2, 3, 5, 6 and 7 left their servers running.
        assert!(report.sweep.errors.is_empty(), "{report:?}");
        assert_eq!((report.sweep.sessions, report.sweep.removed), (5, 5), "{report}");
        assert_eq!((report.leaks_prevented(), report.sweep.leaks_prevented_finished), (5, 2), "{report}");
        // Three processes per started server, one for job 7's.
        assert_eq!(report.sweep.terminated + report.sweep.killed, 13, "{report}");
        assert!(report.to_string().contains("5 leak(s) prevented (2 of finished jobs)"), "{report}");
        assert!(sup.instance().unwrap().children().unwrap().is_empty());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Outside a tick, a session is closed when its job closes it, finished when
/// nothing of it is alive at the drop, and abandoned when it is dropped with
/// a process alive (the guard cannot tell a plain return from a
/// cancellation) or during a panic. A sweep that still finds a process
/// running in one prevents a leak; one whose processes had all exited is no
/// leak.
#[tokio::test]
async fn sessions_outside_a_tick_are_counted_by_how_they_ended() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env, Duration::from_millis(500)).await;
        let s = sup.session("closed").unwrap();
        let mut c = start_server(&s);
        wait_ready(&mut c).await;
        s.close().await.unwrap();
        drop(c);
        {
            let s = sup.session("empty").unwrap();
            assert!(s.spawn(&mut fixture(&["exit", "0"])).unwrap().wait().await.unwrap().success());
        }
        let c = sup.counters();
        assert_eq!((c.sessions_closed, c.sessions_finished, c.sessions_abandoned), (1, 1, 0), "{c:?}");
        assert_eq!(c.sessions_orphaned, 0, "{c:?}");

        {
            let s = sup.session("alive").unwrap();
            let mut c = start_server(&s);
            wait_ready(&mut c).await;
        }
        let s2 = sup.clone();
        let panicked = tokio::spawn(async move {
            let s = s2.session("panic").unwrap();
            let mut c = start_server(&s);
            wait_ready(&mut c).await;
            panic!("the job panicked");
        });
        assert!(panicked.await.unwrap_err().is_panic());
        // Alive at the drop, gone before the sweep.
        let watch = {
            let s = sup.session("exited").unwrap();
            let c = s.spawn(&mut fixture(&["sleep", "3600"])).unwrap();
            procscope::PidFd::open(c.pidfd().pid()).unwrap()
        };
        let c = sup.counters();
        assert_eq!((c.sessions_finished, c.sessions_abandoned, c.sessions_orphaned), (1, 3, 3), "{c:?}");
        assert_eq!(c.leaks_prevented, 0, "{c:?}");
        watch.send_signal(procscope::Signal::KILL).unwrap();
        watch.exited().await.unwrap();

        let report = sup.sweep_orphans().await;
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!((report.sessions, report.removed), (3, 3), "{report}");
        assert_eq!((report.leaks_prevented, report.leaks_prevented_finished), (2, 0), "{report}");
        assert!(report.to_string().contains("2 leak(s) prevented (0 of finished jobs)"), "{report}");
        let c = sup.counters();
        assert_eq!(
            (c.sessions_opened, c.sessions_closed, c.sessions_finished, c.sessions_abandoned, c.sessions_swept),
            (5, 1, 1, 3, 3),
            "{c:?}"
        );
        assert_eq!((c.leaks_prevented, c.leaks_prevented_finished), (2, 0), "{c:?}");
        assert!(sup.instance().unwrap().children().unwrap().is_empty());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A session a tick job let go with its server running waits for the job's
/// outcome; a sweep from elsewhere that takes it before the job returned
/// decides it abandoned (the job had not returned), though the job then
/// returns `Ok`.
#[tokio::test]
async fn a_session_swept_before_its_tick_job_returned_is_abandoned() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env, Duration::from_millis(500)).await;
        let (let_go_tx, let_go_rx) = tokio::sync::oneshot::channel();
        let (swept_tx, swept_rx) = tokio::sync::oneshot::channel();
        let job = {
            let sup = sup.clone();
            async move {
                {
                    let s = sup.session("early").map_err(|e| e.to_string())?;
                    let mut c = start_server(&s);
                    wait_ready(&mut c).await;
                }
                let_go_tx.send(()).unwrap();
                swept_rx.await.map_err(|e| e.to_string())
            }
        };
        let sweeper = {
            let sup = sup.clone();
            tokio::spawn(async move {
                let_go_rx.await.unwrap();
                let c = sup.counters();
                assert_eq!((c.sessions_orphaned, c.sessions_finished, c.sessions_abandoned), (1, 0, 0), "{c:?}");
                let report = sup.sweep_orphans().await;
                swept_tx.send(()).unwrap();
                report
            })
        };
        let report = sup.tick([job], None).await;
        let early = sweeper.await.unwrap();
        assert_eq!(report.jobs, [JobOutcome::Ok]);
        assert_eq!((early.sessions, early.leaks_prevented, early.leaks_prevented_finished), (1, 1, 0), "{early}");
        assert_eq!((report.sweep.sessions, report.leaks_prevented()), (0, 0), "{report}");
        let c = sup.counters();
        assert_eq!((c.sessions_finished, c.sessions_abandoned), (0, 1), "{c:?}");
        assert_eq!((c.leaks_prevented, c.leaks_prevented_finished), (1, 0), "{c:?}");
        assert!(sup.instance().unwrap().children().unwrap().is_empty());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Sessions dropped while sweeps run concurrently, and tasks aborted at random
/// points (including right after a spawn): everything ends up swept, once.
#[tokio::test]
async fn concurrent_drops_sweeps_and_aborts_leak_nothing() {
    let env = TestEnv::new();
    within(120, async {
        let sup = supervisor(&env, Duration::from_millis(200)).await;
        let mut tasks = Vec::new();
        for i in 0..60u64 {
            let s = sup.clone();
            tasks.push(tokio::spawn(async move {
                let session = s.session(&format!("race-{i}")).unwrap();
                let child = session.spawn(&mut fixture(&["daemon", "sleep", "3600"])).unwrap();
                tokio::time::sleep(Duration::from_micros(i * 137 % 5000)).await;
                drop(child);
                std::future::pending::<()>().await;
            }));
        }
        let sweepers: Vec<_> = (0..4)
            .map(|_| {
                let s = sup.clone();
                tokio::spawn(async move {
                    let mut total = procscope::SweepReport::default();
                    for _ in 0..20 {
                        total.merge(s.sweep_orphans().await);
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    total
                })
            })
            .collect();
        for (i, t) in tasks.iter().enumerate() {
            tokio::time::sleep(Duration::from_micros((i as u64 * 311) % 3000)).await;
            t.abort();
        }
        let mut swept = procscope::SweepReport::default();
        for s in sweepers {
            swept.merge(s.await.unwrap());
        }
        // abort() only asks: a task is dropped (and its session released) when it
        // is next scheduled.
        for t in tasks {
            assert!(t.await.unwrap_err().is_cancelled());
        }
        swept.merge(sup.sweep_orphans().await);
        assert!(swept.errors.is_empty(), "{:?}", swept.errors);
        // A task aborted before its first poll opened no session; every session
        // that was opened was orphaned and swept exactly once.
        let opened = sup.counters().sessions_opened as usize;
        assert!(opened >= 50, "only {opened} of 60 tasks got to open a session");
        assert_eq!(swept.sessions, opened, "each session swept exactly once: {swept}");
        assert_eq!(swept.removed, opened, "{swept}");
        assert_eq!(sup.counters().sessions_orphaned as usize, opened);
        assert!(sup.instance().unwrap().children().unwrap().is_empty());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

fn smaps_kib(pid: i32, key: &str) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn spawn_gateway(env: &TestEnv, sessions: usize, guardian: bool) -> (Gateway, Vec<String>) {
    Gateway::start(FIXTURE, &env.path(), sessions, guardian)
}

/// SIGKILL of the gateway: its guardian ends every process of its sessions
/// within a second and removes its cgroups; then the guardian is gone too.
#[tokio::test]
async fn the_guardian_cleans_up_after_a_sigkilled_gateway_within_a_second() {
    let env = TestEnv::new();
    within(60, async {
        let (mut gateway, lines) = spawn_gateway(&env, 3, true);
        let instance = procscope::Cgroup::open(field(&lines, "instance")).unwrap();
        let guardian_pid: i32 = field(&lines, "guardian").parse().unwrap();
        assert!(guardian_pid > 0);
        let guardian = procscope::PidFd::open(guardian_pid as u32).unwrap();
        // The guardian allocates next to nothing itself (the whole PSS of the
        // release build is checked by `guardian_pss_release_build`).
        let pss_kib = smaps_kib(guardian_pid, "Pss:");
        let anon_kib = smaps_kib(guardian_pid, "Pss_Anon:");
        assert!(anon_kib <= 512, "guardian anonymous PSS {anon_kib} KiB");
        // 3 servers and their daemons (which fork on their own schedule).
        let members = settled_daemons(&instance, 3).await;
        assert_eq!(members.len(), 6);

        let t = tokio::time::Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(gateway.id() as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        for m in &members {
            tokio::time::timeout(Duration::from_secs(1), m.exited())
                .await
                .expect("a session process outlived 1 s")
                .unwrap();
        }
        let elapsed = t.elapsed();
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        assert_eq!(gateway.wait().unwrap().signal(), Some(libc::SIGKILL));
        tokio::time::timeout(Duration::from_secs(5), guardian.exited()).await.expect("guardian still running").unwrap();
        assert!(env.root.children().unwrap().is_empty(), "the guardian removes the instance");
        eprintln!("all session processes gone {elapsed:?} after SIGKILL; guardian PSS {pss_kib} KiB");
    })
    .await;
    env.finish().await;
}

/// A gateway SIGKILLed without a guardian leaves its instance; the next
/// supervisor's recovery removes it, but never a live foreign instance or a
/// cgroup procscope did not make.
#[tokio::test]
async fn recovery_reaps_a_crashed_instance_and_spares_live_and_foreign_ones() {
    let env = TestEnv::new();
    within(60, async {
        let (mut crashed, crashed_lines) = spawn_gateway(&env, 2, false);
        let crashed_instance = std::path::PathBuf::from(field(&crashed_lines, "instance"));
        let (mut alive, alive_lines) = spawn_gateway(&env, 1, false);
        let alive_instance = std::path::PathBuf::from(field(&alive_lines, "instance"));
        // Named like an instance, but not made by procscope: never touched.
        let foreign = env.cgroup("i-1-1");
        let crashed_members = procscope::Cgroup::open(&crashed_instance).unwrap().member_pidfds_recursive().unwrap();
        let kill = |c: &std::process::Child| {
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.id() as i32).unwrap(),
                rustix::process::Signal::KILL,
            )
            .unwrap()
        };
        kill(&crashed);
        crashed.wait().unwrap();
        assert!(crashed_instance.exists(), "without a guardian the instance stays");

        let sup = supervisor(&env, Duration::from_millis(300)).await;
        let r = sup.recovery();
        assert_eq!(r.sessions, 2, "{r}");
        assert_eq!(r.removed, 3, "2 sessions and the instance: {r}");
        assert_eq!(r.leaks_prevented, 2, "both sessions still ran their servers: {r}");
        assert!(r.errors.is_empty(), "{r:?}");
        assert!(!crashed_instance.exists());
        assert!(crashed_members.iter().all(|m| !m.is_alive()));
        assert!(alive_instance.exists(), "a live instance was touched");
        assert!(procscope::Cgroup::open(&alive_instance).unwrap().is_populated().unwrap());
        assert!(foreign.path().exists());
        sup.shutdown().await.unwrap();

        kill(&alive);
        alive.wait().unwrap();
        let root = procscope::Root::open(env.path()).unwrap();
        let r = procscope::recover(&root, None, Duration::ZERO).await.unwrap();
        assert_eq!((r.sessions, r.removed), (1, 2), "{r}");
        env.root.remove_child(foreign.name()).unwrap();
    })
    .await;
    env.finish().await;
}

/// The guardian of the shipped (release) build uses at most 2 MiB of its own
/// memory (PSS). `scripts/test` runs this with `PROCSCOPE_RELEASE_BIN` set.
#[tokio::test]
#[ignore = "needs the release build: scripts/test runs it with PROCSCOPE_RELEASE_BIN"]
async fn guardian_pss_release_build() {
    let bin = std::env::var("PROCSCOPE_RELEASE_BIN").expect("set PROCSCOPE_RELEASE_BIN to target/release/procscope");
    // The gateway is the release build of the fixture; its guardian is the
    // same program run again.
    let gateway_bin = std::path::Path::new(&bin).with_file_name("examples").join("procscope-fixture");
    assert!(
        gateway_bin.exists(),
        "{} is missing: build it with `cargo build --release --example procscope-fixture`",
        gateway_bin.display()
    );
    let env = TestEnv::new();
    within(30, async {
        let (mut gateway, lines) = Gateway::start(gateway_bin.to_str().unwrap(), &env.path(), 1, true);
        let guardian_pid: i32 = field(&lines, "guardian").parse().unwrap();
        let guardian = procscope::PidFd::open(guardian_pid as u32).unwrap();
        let pss_kib = smaps_kib(guardian_pid, "Pss:");
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(gateway.id() as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        gateway.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(5), guardian.exited()).await.expect("guardian still running").unwrap();
        assert!(pss_kib <= 2048, "release guardian PSS {pss_kib} KiB");
        eprintln!("release guardian PSS: {pss_kib} KiB");
        drop(guardian);
    })
    .await;
    env.finish().await;
}

/// close() futures dropped half-way, racing a sweep of everything and session
/// drops: every session is ended exactly once and nothing is left.
#[tokio::test]
async fn cancelled_closes_race_sweeps_of_everything() {
    let env = TestEnv::new();
    within(60, async {
        let sup = supervisor(&env, Duration::from_millis(200)).await;
        let mut sessions = Vec::new();
        for i in 0..40 {
            let s = sup.session(&format!("c-{i}")).unwrap();
            s.spawn(&mut fixture(&["daemon", "sleep", "3600"])).unwrap();
            sessions.push(s);
        }
        let mut closes = Vec::new();
        for (i, s) in sessions.into_iter().enumerate() {
            match i % 3 {
                // A close whose future is dropped at once: it must still finish.
                0 => drop(tokio::time::timeout(Duration::from_micros(1), s.close()).await),
                // A close awaited while the sweep runs.
                1 => closes.push(tokio::spawn(s.close())),
                // Dropped: orphaned or taken by the sweep.
                _ => drop(s),
            }
        }
        let swept = sup.sweep(SweepScope::All).await;
        for c in closes {
            c.await.unwrap().unwrap();
        }
        let report = sup.shutdown().await.unwrap();
        assert!(swept.errors.is_empty() && report.errors.is_empty(), "{swept:?} {report:?}");
        assert!(env.root.children().unwrap().is_empty(), "{:?}", env.root.children());
        assert!(!env.root.is_populated().unwrap());
    })
    .await;
    env.finish().await;
}

/// Once shutdown has begun, no session can be created; a session created just
/// before is swept by it.
#[tokio::test]
async fn shutdown_refuses_new_sessions_and_ends_the_last_ones() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env, Duration::ZERO).await;
        let other = sup.clone();
        let s = sup.session("last").unwrap();
        s.spawn(&mut fixture(&["sleep", "3600"])).unwrap();
        let report = sup.shutdown().await.unwrap();
        assert_eq!(report.sessions, 1, "{report}");
        let err = other.session("late").unwrap_err();
        assert!(err.to_string().contains("shut down"), "{err}");
        drop(s);
        assert!(env.root.children().unwrap().is_empty());
    })
    .await;
    env.finish().await;
}

/// Shutdown leaves nothing in the instance, even processes no session of the
/// supervisor knows (a session lost between its guard and the final sweep, or
/// a cgroup someone made below the instance): they are killed with it.
#[tokio::test]
async fn shutdown_kills_what_the_final_sweep_did_not_reach() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env, Duration::from_millis(200)).await;
        let stray = sup.instance().unwrap().create_child("stray").unwrap();
        let mut child = fixture(&["sleep", "3600"]).spawn_in(&stray).unwrap();
        let report = sup.shutdown().await.unwrap();
        assert_eq!(report.sessions, 0, "the stray cgroup is no session: {report}");
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        assert!(env.root.children().unwrap().is_empty(), "{:?}", env.root.children());
    })
    .await;
    env.finish().await;
}

/// A supervisor's shutdown removes its instance, and its guardian sees that
/// and exits at once (it is not killed: shutdown would wait 2 s first).
#[tokio::test]
async fn the_guardian_exits_with_its_instance_at_shutdown() {
    let env = TestEnv::new();
    within(30, async {
        let sup = Supervisor::builder().root(env.path()).guardian(true).start().await.unwrap();
        let pid = sup.guardian_pid().expect("a guardian");
        let guardian = procscope::PidFd::open(pid as u32).unwrap();
        let session = sup.session("s").unwrap();
        drop(session);
        let t = std::time::Instant::now();
        sup.shutdown().await.unwrap();
        let took = t.elapsed();
        assert!(!guardian.is_alive(), "the guardian outlived its instance");
        assert!(took < Duration::from_millis(1500), "shutdown waited for the guardian: {took:?}");
        eprintln!("shutdown with a guardian took {took:?}");
    })
    .await;
    env.finish().await;
}

/// The structured events a library user's subscriber receives: the fields of
/// each, as text, in the order they came.
#[derive(Clone, Default)]
struct Events(Arc<std::sync::Mutex<Vec<std::collections::BTreeMap<String, String>>>>);

impl Events {
    fn of(&self, action: &str, session: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|e| e["action"] == action && e.get("session").map(String::as_str) == Some(session))
            .cloned()
            .collect()
    }
}

struct FieldText<'a>(&'a mut std::collections::BTreeMap<String, String>);

impl tracing::field::Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// A minimal subscriber (no `tracing-subscriber` needed): the events of
/// `procscope::event` at INFO and above, in `Events`.
impl tracing::Subscriber for Events {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.is_span() || (meta.target() == "procscope::event" && *meta.level() <= tracing::Level::INFO)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = std::collections::BTreeMap::new();
        event.record(&mut FieldText(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A gateway's own subscriber gets one event per spawn and per session end,
/// whichever way the session ends (close, its guard, a sweep), with the
/// session, instance, pid, cgroup and result; the guard's hand-over to the
/// orphan pool; the sweep's SIGTERM step and the sweep itself.
#[tokio::test]
async fn a_gateways_subscriber_gets_an_event_per_spawn_and_session_end() {
    let env = TestEnv::new();
    let events = Events::default();
    // The test's runtime has one thread: every task's events reach it.
    let _default = tracing::subscriber::set_default(events.clone());
    within(30, async {
        let sup = supervisor(&env, Duration::from_millis(500)).await;
        let instance = sup.instance().unwrap().name().to_owned();

        let closed = sup.session("closed").unwrap();
        let mut child = closed.spawn(fixture(&["ready", "sleep", "3600"]).stdout(Stdio::Piped)).unwrap();
        wait_ready(&mut child).await;
        let pid = child.id();
        let dir = closed.cgroup().unwrap().path().display().to_string();
        closed.close().await.unwrap();
        let spawn = events.of("spawn", "closed");
        assert_eq!(spawn.len(), 1, "{spawn:?}");
        assert_eq!(spawn[0]["pid"], pid.to_string(), "{spawn:?}");
        assert_eq!((spawn[0]["instance"].as_str(), spawn[0]["cgroup"].as_str()), (instance.as_str(), dir.as_str()));
        assert_eq!((spawn[0]["program"].as_str(), spawn[0]["result"].as_str()), (FIXTURE, "ok"), "{spawn:?}");
        let end = events.of("session.end", "closed");
        assert_eq!(end.len(), 1, "{end:?}");
        assert_eq!((end[0]["by"].as_str(), end[0]["processes"].as_str()), ("close", "1"), "{end:?}");
        assert_eq!((end[0]["terminated"].as_str(), end[0]["result"].as_str()), ("1", "ok"), "{end:?}");

        let finished = sup.session("finished").unwrap();
        assert!(finished.spawn(&mut fixture(&["exit", "0"])).unwrap().wait().await.unwrap().success());
        drop(finished);
        let end = events.of("session.end", "finished");
        assert_eq!((end.len(), end[0]["by"].as_str(), end[0]["result"].as_str()), (1, "guard", "ok"), "{end:?}");

        let left = sup.session("left").unwrap();
        let _server = left.spawn(&mut fixture(&["sleep", "3600"])).unwrap();
        drop(left);
        assert_eq!(events.of("session.orphan", "left").len(), 1);
        assert!(events.of("session.end", "left").is_empty(), "not ended yet");
        let report = sup.sweep_orphans().await;
        assert_eq!(report.sessions, 1, "{report}");
        let term = events.of("signal", "left");
        assert_eq!(term.len(), 1, "{term:?}");
        assert_eq!((term[0]["signal"].as_str(), term[0]["processes"].as_str()), ("SIGTERM", "1"), "{term:?}");
        let end = events.of("session.end", "left");
        assert_eq!((end.len(), end[0]["by"].as_str(), end[0]["result"].as_str()), (1, "sweep", "ok"), "{end:?}");
        {
            let all = events.0.lock().unwrap();
            let sweep: Vec<_> = all.iter().filter(|e| e["action"] == "sweep").collect();
            assert_eq!(sweep.len(), 1, "{all:?}");
            assert_eq!((sweep[0]["scope"].as_str(), sweep[0]["sessions"].as_str()), ("orphans", "1"), "{sweep:?}");
            assert_eq!(sweep[0]["instance"], instance, "{sweep:?}");
        }
        // Refused after the end: a spawn event with the error, and no pid.
        let late = sup.session("late").unwrap();
        let shared = late.cgroup().unwrap().path().to_owned();
        sup.sweep(SweepScope::All).await;
        assert!(late.spawn(&mut fixture(&["exit", "0"])).is_err());
        let refused = events.of("spawn", "late");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(!refused[0].contains_key("pid") && refused[0]["result"] != "ok", "{refused:?}");
        assert!(!shared.exists());
        drop(late);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A supervisor that is asked for a guardian and cannot start one fails to
/// start, with the reason, and leaves no instance behind. The control: the
/// same thread starts a supervisor without a guardian.
#[tokio::test]
async fn start_fails_when_the_guardian_cannot_start() {
    let env = TestEnv::new();
    let path = env.path();
    let (failed, control) = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            procscope::testing::deny_clone().expect("install the seccomp filters");
            let failed = rt.block_on(Supervisor::builder().root(&path).recover(false).guardian(true).start()).err();
            let listed = env.root.children().unwrap();
            let control = rt.block_on(async {
                let sup = Supervisor::builder().root(&path).recover(false).start().await?;
                let made = env.root.children()?.len();
                sup.shutdown().await?;
                Ok::<_, procscope::Error>(made)
            });
            (failed.map(|e| (e.to_string(), listed)), control)
        })
        .join()
        .unwrap()
    });
    let (error, listed) = failed.expect("start() must fail without its guardian");
    assert!(error.contains("guardian"), "the error names the guardian: {error}");
    assert!(listed.is_empty(), "no instance is left: {listed:?}");
    assert_eq!(control.expect("the control starts without a guardian"), 1, "the control made its instance");
    env.wait_root_empty().await;
    env.finish().await;
}
