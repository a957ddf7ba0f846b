//! Limits on a pure cgroup2 hierarchy (memory, pids, cpu), and PID reuse. The
//! limit tests need controllers this hybrid host's cgroup2 does not have: they
//! are ignored here and `vm-tests/run` runs them in VMs booted with a pure
//! cgroup2 hierarchy (`--run-ignored all`), which `scripts/test` calls. The PID
//! reuse test runs everywhere.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;
use procscope::{Command, Limits, Stdio, Supervisor, SweepScope};

const VM_ONLY: &str = "needs the memory, pids and cpu controllers in cgroup2: runs in vm-tests";

async fn supervisor(env: &TestEnv) -> Supervisor {
    let available = env.root.controllers().unwrap();
    for c in ["memory", "pids", "cpu"] {
        assert!(available.iter().any(|a| a == c), "{c} controller missing in {}: {available:?}", env.path().display());
    }
    Supervisor::builder().root(env.path()).grace(Duration::from_millis(300)).start().await.unwrap()
}

fn fixture(args: &[&str]) -> Command {
    let mut c = Command::new(FIXTURE);
    c.args(args).stdin(Stdio::Null).stdout(Stdio::Null);
    c
}

/// A server that allocates past its `memory.max` is OOM-killed inside its
/// session; the gateway and a sibling session live on; the report says so.
#[tokio::test]
#[ignore = "needs the memory, pids and cpu controllers in cgroup2: runs in vm-tests"]
async fn memory_max_oom_kills_inside_the_session_only() {
    let _ = VM_ONLY;
    let env = TestEnv::new();
    within(120, async {
        let sup = supervisor(&env).await;
        let sibling = sup.session("sibling").unwrap();
        let mut calm = sibling.spawn(&mut fixture(&["sleep", "3600"])).unwrap();
        let limits = Limits { memory_max: Some(32 << 20), ..Limits::default() };
        let hog = sup.session_with_limits("hog", &limits).unwrap();
        assert_eq!(hog.cgroup().unwrap().read("memory.max").unwrap().trim(), (32u64 << 20).to_string());
        let mut eater = hog.spawn(&mut fixture(&["alloc", "256", "sleep", "3600"])).unwrap();
        let status = eater.wait().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "the OOM killer ends it: {status:?}");
        let events = hog.stats().memory_events.unwrap();
        assert!(events.oom_kill >= 1, "{events:?}");
        assert!(calm.try_wait().unwrap().is_none(), "the sibling was hit");
        // Ending the session reports the kill...
        let t = hog.close().await.unwrap();
        assert!(t.oom_kills >= 1, "{t:?}");
        // ...and so does a sweep, for a session it ends.
        let hog2 = sup.session_with_limits("hog2", &limits).unwrap();
        let mut eater = hog2.spawn(&mut fixture(&["spawn", "1", "alloc", "256", "sleep", "3600"])).unwrap();
        assert_eq!(eater.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        drop(hog2); // the spawned child still runs: an orphan
        let report = sup.sweep(SweepScope::Orphans).await;
        let hit = report.limits_hit.iter().find(|h| h.session == "hog2").expect("the report names the OOM kill");
        assert!(hit.oom_kills >= 1, "{report}");
        assert!(report.to_string().contains("OOM kill"), "{report}");
        assert!(sup.counters().oom_kills >= 2, "{:?}", sup.counters());
        // ...and so does the guard of a session dropped with nothing alive,
        // once.
        let before = sup.counters().oom_kills;
        let hog3 = sup.session_with_limits("hog3", &limits).unwrap();
        let mut eater = hog3.spawn(&mut fixture(&["alloc", "256", "sleep", "3600"])).unwrap();
        assert_eq!(eater.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        let kills = hog3.cgroup().unwrap().oom_kills();
        assert!(kills >= 1);
        let dir = hog3.cgroup().unwrap().path().to_owned();
        drop(hog3);
        assert!(!dir.exists(), "the guard removes an empty session at once");
        assert_eq!(sup.counters().oom_kills, before + kills, "{:?}", sup.counters());
        // A session the guard cannot remove (a daemon lives on) is counted by the
        // sweep that ends it, not by the guard as well.
        let before = sup.counters().oom_kills;
        let hog4 = sup.session_with_limits("hog4", &limits).unwrap();
        assert!(hog4.spawn(&mut fixture(&["daemon"])).unwrap().wait().await.unwrap().success());
        let mut eater = hog4.spawn(&mut fixture(&["alloc", "256", "sleep", "3600"])).unwrap();
        assert_eq!(eater.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        let kills = hog4.cgroup().unwrap().oom_kills();
        assert!(kills >= 1);
        drop(hog4);
        assert_eq!(sup.counters().oom_kills, before, "the guard counted a session it could not remove");
        let report = sup.sweep_orphans().await;
        assert!(report.errors.is_empty(), "{report}");
        assert_eq!(sup.counters().oom_kills, before + kills, "{:?}", sup.counters());
        drop(sibling);
        let _ = sup.sweep(SweepScope::All).await;
        assert!(calm.wait().await.is_ok());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A fork bomb stops at its session's `pids.max`; spawning into the full session
/// fails (never bypassing the limit through a cgroup.procs migration); siblings
/// can still spawn; a sweep removes it all.
#[tokio::test]
#[ignore = "needs the memory, pids and cpu controllers in cgroup2: runs in vm-tests"]
async fn pids_max_stops_a_fork_bomb() {
    let env = TestEnv::new();
    within(120, async {
        let sup = supervisor(&env).await;
        let limits = Limits { pids_max: Some(16), ..Limits::default() };
        let bomb = sup.session_with_limits("bomb", &limits).unwrap();
        bomb.spawn(&mut fixture(&["forkbomb"])).unwrap();
        let cg = bomb.cgroup();
        for _ in 0..2000 {
            if cg.unwrap().pids_max_hits() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(cg.unwrap().pids_max_hits() > 0, "the bomb never reached pids.max");
        let current: u64 = cg.unwrap().read("pids.current").unwrap().trim().parse().unwrap();
        assert!(current <= 16, "pids.current {current}");
        // Spawning into the full session fails with the limit's EAGAIN.
        let mut refused = 0;
        for _ in 0..20 {
            match bomb.spawn(&mut fixture(&["sleep", "3600"])) {
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}");
                    refused += 1;
                }
                Ok(c) => {
                    // The bomb lost a process a moment ago; still inside the limit.
                    assert!(cg.unwrap().procs().unwrap().iter().any(|&p| p == c.id()));
                    let _ = c.start_kill();
                }
            }
        }
        assert!(refused > 0, "no spawn was refused by pids.max");
        let current: u64 = cg.unwrap().read("pids.current").unwrap().trim().parse().unwrap();
        assert!(current <= 16, "a spawn got around pids.max: {current}");
        let sibling = sup.session("sibling").unwrap();
        let mut ok = sibling.spawn(&mut fixture(&["exit", "0"])).unwrap();
        assert!(ok.wait().await.unwrap().success());
        drop(bomb);
        drop(sibling);
        let report = sup.sweep_orphans().await;
        assert!(report.errors.is_empty(), "{report:?}");
        assert!(report.limits_hit.iter().any(|h| h.session == "bomb" && h.pids_max_hits > 0), "{report}");
        assert!(!sup.instance().unwrap().is_populated().unwrap());
        // The guard of a session dropped with nothing alive counts its refusals.
        let before = sup.counters().pids_max_hits;
        let one = sup.session_with_limits("one", &Limits { pids_max: Some(1), ..Limits::default() }).unwrap();
        let status = one.spawn(&mut fixture(&["spawn", "1", "exit", "0"])).unwrap().wait().await.unwrap();
        assert!(!status.success(), "a second process in a session of pids.max 1");
        let refused = one.cgroup().unwrap().pids_max_hits();
        assert!(refused >= 1);
        drop(one);
        assert_eq!(sup.counters().pids_max_hits, before + refused, "{:?}", sup.counters());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// `cpu.max` is applied and visible in `cpu.stat`.
#[tokio::test]
#[ignore = "needs the memory, pids and cpu controllers in cgroup2: runs in vm-tests"]
async fn cpu_max_throttles_and_shows_in_cpu_stat() {
    let env = TestEnv::new();
    within(60, async {
        let sup = supervisor(&env).await;
        let limits =
            Limits { cpu_max: Some(procscope::CpuMax { quota_us: 10_000, period_us: 100_000 }), ..Limits::default() };
        let s = sup.session_with_limits("cpu", &limits).unwrap();
        assert_eq!(s.cgroup().unwrap().read("cpu.max").unwrap().trim(), "10000 100000");
        let mut spinner = s.spawn(&mut fixture(&["spin", "1.5"])).unwrap();
        assert!(spinner.wait().await.unwrap().success());
        let stat = s.cgroup().unwrap().read("cpu.stat").unwrap();
        let field = |k: &str| -> u64 {
            stat.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        };
        assert!(field("nr_throttled ") > 0, "{stat}");
        assert!(field("throttled_usec ") > 0, "{stat}");
        drop(s);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Sessions without limits enable no controller anywhere.
#[tokio::test]
#[ignore = "needs the memory, pids and cpu controllers in cgroup2: runs in vm-tests"]
async fn sessions_without_limits_enable_no_controllers() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env).await;
        let sessions: Vec<_> = (0..3).map(|i| sup.session(&format!("plain-{i}")).unwrap()).collect();
        assert!(env.root.subtree_control().unwrap().is_empty(), "{:?}", env.root.subtree_control());
        assert!(sup.instance().unwrap().subtree_control().unwrap().is_empty());
        for s in &sessions {
            assert!(
                !s.cgroup().unwrap().has_file("memory.max"),
                "a controller is on in {}",
                s.cgroup().unwrap().path().display()
            );
        }
        // With a limit, only what it needs.
        let limited = sup.session_with_limits("limited", &Limits { pids_max: Some(8), ..Limits::default() }).unwrap();
        assert_eq!(sup.instance().unwrap().subtree_control().unwrap(), ["pids"]);
        drop(limited);
        drop(sessions);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A process of an orphaned session exits and its pid is given to a stranger
/// (`ns_last_pid`); a procscope sweep never signals the stranger. The raw-pid
/// approach of today's gateways (SIGTERM by pid) does hit it: the test has teeth.
#[tokio::test]
async fn a_recycled_pid_is_never_signalled_by_a_sweep() {
    let env = TestEnv::new();
    within(120, async {
        // Orphaned helpers are reparented to us, so we can reap them ourselves.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(300)).start().await.unwrap();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pidreuse-{}", nanos()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut reused = None;
        for attempt in 0..20 {
            // An orphaned session whose daemonized helper (not our child) we know by pid.
            let s = sup.session(&format!("reuse-{attempt}")).unwrap();
            let mut c = Command::new(FIXTURE);
            c.args(["daemon", "ready", "sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Piped);
            let mut server = s.spawn(&mut c).unwrap();
            read_until(server.stdout.as_mut().unwrap(), "ready").await;
            let helper = s
                .cgroup()
                .unwrap()
                .procs()
                .unwrap()
                .into_iter()
                .find(|&p| p != server.id())
                .expect("the daemonized helper");
            let tracked: Vec<i32> = vec![server.id() as i32, helper as i32];
            drop(server);
            drop(s);
            // The helper exits; we reap it (we are its subreaper): its pid is free.
            let fd = procscope::PidFd::open(helper).unwrap();
            fd.send_signal(procscope::Signal::KILL).unwrap();
            fd.exited().await.unwrap();
            let _ = rustix::process::waitpid(
                rustix::process::Pid::from_raw(helper as i32),
                rustix::process::WaitOptions::empty(),
            );
            // The next pid handed out is the helper's: a stranger gets it.
            let log = dir.join(format!("stranger-{attempt}.log"));
            std::fs::write("/proc/sys/kernel/ns_last_pid", (tracked[1] - 1).to_string()).unwrap();
            let mut stranger = std::process::Command::new(FIXTURE)
                .args(["record-signals", log.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stranger.stdout.as_mut().unwrap()), &mut line)
                .unwrap();
            if stranger.id() as i32 == tracked[1] {
                reused = Some((stranger, log, tracked));
                break;
            }
            // Another process took the pid first: try again.
            stranger.kill().unwrap();
            stranger.wait().unwrap();
        }
        let (mut stranger, log, tracked) = reused.expect("could not recycle a pid in 20 attempts");
        let report = sup.sweep_orphans().await;
        assert!(report.errors.is_empty(), "{report:?}");
        assert!(report.sessions >= 1, "{report}");
        assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "", "procscope signalled the stranger");
        assert!(stranger.try_wait().unwrap().is_none(), "the stranger died");

        // Today's raw-pid sweep: SIGTERM every tracked pid.
        for pid in &tracked {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(*pid).unwrap(),
                rustix::process::Signal::TERM,
            );
        }
        let mut got = String::new();
        for _ in 0..200 {
            got = std::fs::read_to_string(&log).unwrap_or_default();
            if got.contains('\n') {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(got.starts_with(&format!("{} ", libc::SIGTERM)), "the raw-pid sweep should hit the stranger: {got:?}");
        eprintln!(
            "raw-pid sweep signalled the stranger holding recycled pid {}: {got:?}; procscope did not",
            tracked[1]
        );
        stranger.kill().unwrap();
        stranger.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A real MCP server (server-everything behind npx) killed by its session's
/// memory limit: the end of the session reports the OOM kill.
#[tokio::test]
#[ignore = "needs the memory, pids and cpu controllers in cgroup2: runs in vm-tests"]
async fn an_mcp_server_killed_by_its_memory_limit_is_reported() {
    let env = TestEnv::new();
    within(120, async {
        let sup = supervisor(&env).await;
        let prefix = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/npm");
        assert!(prefix.join("node_modules/.bin/mcp-server-everything").exists(), "run scripts/install-mcp-servers");
        let limits = Limits { memory_max: Some(512 << 20), ..Limits::default() };
        let s = sup.session_with_limits("everything", &limits).unwrap();
        let mut c = Command::new("npx");
        c.arg("--prefix").arg(&prefix).args(["--no-install", "mcp-server-everything"]);
        c.stdin(Stdio::Piped).stdout(Stdio::Null).stderr(Stdio::Null);
        let _npx = s.spawn(&mut c).unwrap();
        // Let the server grow past what the lower limit below allows.
        let current = || s.stats().memory_current.unwrap_or(0);
        for _ in 0..900 {
            if current() > 40 << 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(current() > 40 << 20, "the server never grew: {} bytes", current());
        // The limit drops below its use: the kernel OOM-kills inside the session.
        // (1 MiB: below its anonymous memory alone, so reclaiming page cache cannot save it.)
        s.cgroup().unwrap().set_limits(&Limits { memory_max: Some(1 << 20), ..Limits::default() }).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while s.stats().memory_events.map_or(0, |e| e.oom_kill) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t = s.close().await.unwrap();
        assert!(t.oom_kills >= 1, "{t:?}");
        eprintln!("server-everything over its memory.max: {} OOM kill(s) reported", t.oom_kills);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}
