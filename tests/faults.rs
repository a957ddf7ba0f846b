//! Faults a hostile tree or an operator can cause: deep and wide cgroup
//! trees, fd exhaustion, a gateway pulled into its own session, pid
//! namespaces with equal pids, instances removed under a live supervisor,
//! failures that must change nothing, and the library and `exec` in one
//! process.
//!
//! The trees are built by unsealed children (`procscope-fixture nest`), with
//! the sessions' nesting caps lifted. Building a deep tree costs the kernel
//! time that grows with the square of the depth, so the trees of each way of
//! ending a session are 10,000 wide and 1,000 deep, and one test, run by
//! `scripts/test`, ends a tree 5,000 deep on a small stack. The VMs use a
//! tenth of the width and depth and a fifth of the deep tree
//! (`PROCSCOPE_TREE_WIDTH`, `PROCSCOPE_TREE_DEPTH`, `PROCSCOPE_DEEP_TREE`;
//! see `vm-tests/guest/nextest.sh`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio as StdStdio;
use std::time::Duration;

use common::*;
use procscope::{Cgroup, Command, ContainedChild, Limits, Sealing, Session, Stdio, Supervisor};
use serde_json::Value;

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");
/// Width of the hostile trees: 10,000, or `PROCSCOPE_TREE_WIDTH` (the VMs,
/// 10 to 20 times slower under TCG, use fewer; the walks are the same).
static WIDE: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| tree_size("PROCSCOPE_TREE_WIDTH", 10_000));
/// Depth of the hostile trees: 1,000, or `PROCSCOPE_TREE_DEPTH`.
static DEEP: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| tree_size("PROCSCOPE_TREE_DEPTH", 1_000));

fn tree_size(var: &str, default: usize) -> usize {
    std::env::var(var).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{var}={v}: not a number")))
}

/// Limits without nesting caps, so that a child can build the trees.
fn uncapped() -> Limits {
    Limits { max_depth: Some(u32::MAX), max_descendants: Some(u32::MAX), ..Limits::default() }
}

/// Spawns an unsealed child that builds a tree `depth` deep and `width` wide
/// in `session` and moves itself to its bottom.
async fn hostile_tree(session: &Session, depth: usize, width: usize) -> ContainedChild {
    let mut cmd = Command::new(FIXTURE);
    cmd.args(["nest", &depth.to_string(), &width.to_string(), "ready", "sleep", "3600"])
        .stdin(Stdio::Null)
        .stdout(Stdio::Piped)
        .sealing(Sealing::Off);
    let mut child = session.spawn(&mut cmd).unwrap();
    let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
    assert!(lines.iter().any(|l| l == "nest=ok"), "{lines:?}");
    child
}

/// The number of cgroups at `path` and below it (0 if it is gone).
fn count_cgroups(path: &Path) -> usize {
    let Ok(cg) = Cgroup::open(path) else { return 0 };
    let mut n = 0;
    cg.visit_tree(|_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    n
}

/// Every cgroup under `dir`, as paths relative to it, and their owners.
fn snapshot(dir: &Path) -> Vec<PathBuf> {
    let cg = Cgroup::open(dir).unwrap();
    let mut all = Vec::new();
    cg.visit_tree(|c| {
        all.push(c.path().strip_prefix(dir).unwrap().to_owned());
        Ok(())
    })
    .unwrap();
    all.sort();
    all
}

fn procscope(env: &TestEnv, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(PROCSCOPE);
    let (sub, rest) = args.split_first().unwrap();
    c.arg(sub).arg("--root").arg(env.path()).args(rest);
    c
}

/// Runs `procscope end --json ids` and returns its report.
fn end(env: &TestEnv, ids: &[&str]) -> Value {
    let mut args = vec!["end", "--json", "--grace", "200ms"];
    args.extend(ids);
    let out = procscope(env, &args).stdin(StdStdio::null()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A fixture gateway (`procscope-fixture gateway`) with orders on stdin.
struct FixtureGateway {
    process: Gateway,
    stdin: std::process::ChildStdin,
    out: BufReader<std::process::ChildStdout>,
    lines: Vec<String>,
}

impl FixtureGateway {
    /// Starts `prefix… procscope-fixture gateway ROOT sessions GUARDIAN`, its
    /// children running `child` (or daemonizing a helper), and reads up to
    /// `ready`.
    fn start(env: &TestEnv, prefix: &[&str], sessions: usize, guardian: bool, child: Option<&str>, tag: &str) -> Self {
        let argv: Vec<String> = prefix
            .iter()
            .map(|s| s.to_string())
            .chain([FIXTURE.into(), "gateway".into(), env.path().display().to_string()])
            .chain([sessions.to_string(), if guardian { "1" } else { "0" }.to_string()])
            .collect();
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("PSTAG", tag).stdin(StdStdio::piped()).stdout(StdStdio::piped());
        match child {
            Some(actions) => cmd.env("PROCSCOPE_FIXTURE_CHILD", actions),
            None => cmd.env_remove("PROCSCOPE_FIXTURE_CHILD"),
        };
        let mut process = Gateway(cmd.spawn().unwrap());
        let stdin = process.stdin.take().unwrap();
        let out = BufReader::new(process.stdout.take().unwrap());
        let mut gw = FixtureGateway { process, stdin, out, lines: Vec::new() };
        gw.read_until("ready");
        gw
    }

    fn read_until(&mut self, stop: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "gateway ended early: {:?} {got:?}", self.lines);
            let line = line.trim().to_owned();
            got.push(line.clone());
            self.lines.push(line.clone());
            if line == stop || line.starts_with(stop) {
                return got;
            }
        }
    }

    fn value(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.lines.iter().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_default().to_owned()
    }

    fn order(&mut self, order: &str, stop: &str) -> Vec<String> {
        writeln!(self.stdin, "{order}").unwrap();
        self.read_until(stop)
    }
}

/// Moves this process into `<root>/supervisor` (where a gateway in a
/// delegated root lives) for the life of the value, then back.
///
/// A capless child can pull a process into its cgroup only within one
/// `cpuset` domain (across two, the kernel asks for `CAP_SYS_NICE` over a
/// target with more capabilities). The VMs enable `cpuset` at the top, so
/// there the gateway must live under the test root, as it would in a
/// delegated unit, for the attack to be possible at all.
struct InSupervisorCgroup<'a> {
    env: &'a TestEnv,
    home: Cgroup,
}

impl<'a> InSupervisorCgroup<'a> {
    fn enter(env: &'a TestEnv) -> Self {
        let original = cgroup_of(std::process::id()).unwrap();
        let h = procscope::cgroup::hierarchy::Hierarchy::discover().unwrap();
        let home = Cgroup::open(h.mount_point.join(original.trim_start_matches('/'))).unwrap();
        let sup = env.cgroup("supervisor");
        sup.write("cgroup.procs", &std::process::id().to_string()).unwrap();
        InSupervisorCgroup { env, home }
    }
}

impl Drop for InSupervisorCgroup<'_> {
    /// Back home; the cgroup goes once the guardians started from it (which
    /// live in it) have exited with their instances.
    fn drop(&mut self) {
        let _ = self.home.write("cgroup.procs", &std::process::id().to_string());
        for _ in 0..500 {
            match self.env.root.remove_child("supervisor") {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(10)),
                _ => return,
            }
        }
    }
}

/// The stack of [`on_a_small_stack`]: 512 KiB.
const SMALL_STACK_KIB: usize = 512;

/// Runs `test` on a thread with a stack of [`SMALL_STACK_KIB`], which a
/// recursive walk of a tree 600 to 700 deep overflows in a debug build (the
/// control of `close_ends_a_very_deep_tree_on_a_small_stack`).
fn on_a_small_stack(test: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(SMALL_STACK_KIB << 10).spawn(test).unwrap().join().unwrap();
}

/// A child builds a tree 5,000 deep and 10,000 wide and moves itself to its
/// bottom; `close()` on a 512 KiB stack ends it, removes every directory and
/// counts each one. The control: a recursive walk of the same tree on a
/// stack of the same size overflows it, and its process aborts.
///
/// mkdir at depth d does kernel work proportional to d (the cgroup's BPF
/// programs are inherited from every ancestor), and so does rmdir: the tree
/// costs the kernel time that grows with the square of the depth, and more
/// than that on some machines past 8,000 levels (10,000 took 6 to 14
/// minutes on a 2-core VM, most of it in rmdir). So `scripts/test` runs it
/// once, on its own, and the VMs, 10 to 20 times slower, set
/// `PROCSCOPE_DEEP_TREE` to a smaller depth, still past the control's.
#[test]
#[ignore = "builds a 5,000-deep tree, most of a minute of kernel time: scripts/test runs it"]
fn close_ends_a_very_deep_tree_on_a_small_stack() {
    let depth: usize = std::env::var("PROCSCOPE_DEEP_TREE").map_or(5_000, |v| v.parse().expect("a depth"));
    on_a_small_stack(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let env = TestEnv::new();
            within(1800, async {
                let sup =
                    Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
                let session = sup.session_with_limits("deep", &uncapped()).unwrap();
                let path = session.cgroup().unwrap().path().to_owned();
                let mut child = hostile_tree(&session, depth, *WIDE).await;
                let control = std::process::Command::new(FIXTURE)
                    .args(["walk-recursive", path.to_str().unwrap(), &SMALL_STACK_KIB.to_string()])
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&control.stderr);
                assert_eq!(
                    std::os::unix::process::ExitStatusExt::signal(&control.status),
                    Some(libc::SIGABRT),
                    "control: a recursive walk of the tree on the same stack should overflow it: {control:?}"
                );
                assert!(stderr.contains("has overflowed its stack"), "control: {stderr}");
                let t = std::time::Instant::now();
                let ended = session.close().await.unwrap();
                eprintln!("ended and removed {} cgroups in {:?}", ended.cgroups_removed, t.elapsed());
                assert_eq!(ended.cgroups_removed, 1 + depth + *WIDE, "{ended:?}");
                assert!(!path.exists());
                child.wait().await.unwrap();
                sup.shutdown().await.unwrap();
            })
            .await;
            env.finish().await;
        });
    });
}

/// A sweep of the orphan pool ends a session with a deep and wide tree and
/// reports every directory it removed.
#[tokio::test]
async fn a_sweep_ends_a_deep_and_wide_tree_and_counts_every_directory() {
    let env = TestEnv::new();
    within(120, async {
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let session = sup.session_with_limits("deep", &uncapped()).unwrap();
        let child = hostile_tree(&session, *DEEP, *WIDE).await;
        drop(child);
        drop(session);
        let report = sup.sweep_orphans().await;
        assert!(report.errors.is_empty(), "{report}");
        assert_eq!(report.removed, 1 + *DEEP + *WIDE, "{report}");
        assert_eq!(sup.instance().unwrap().children().unwrap(), Vec::<String>::new());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// `shutdown()` ends a live session with a deep and wide tree; the report
/// counts its directories and the instance.
#[tokio::test]
async fn shutdown_ends_a_deep_and_wide_tree() {
    let env = TestEnv::new();
    within(120, async {
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let session = sup.session_with_limits("deep", &uncapped()).unwrap();
        let mut child = hostile_tree(&session, *DEEP, *WIDE).await;
        let report = sup.shutdown().await.unwrap();
        assert!(report.errors.is_empty(), "{report}");
        assert_eq!(report.removed, 1 + *DEEP + *WIDE + 1, "the session's tree and the instance: {report}");
        child.wait().await.unwrap();
        drop(session);
    })
    .await;
    env.finish().await;
}

/// `procscope end` ends an `exec` session whose command built a deep and
/// wide tree under its own cgroup, and counts every directory.
#[tokio::test]
async fn end_ends_a_deep_and_wide_tree() {
    let env = TestEnv::new();
    within(120, async {
        let (depth, width) = (DEEP.to_string(), WIDE.to_string());
        let mut exec = procscope(
            &env,
            &["exec", "--no-seal", "--max-depth", "max", "--max-descendants", "max", "--session", "deep", "--"],
        )
        .args([FIXTURE, "nest", &depth, &width, "ready", "sleep", "3600"])
        .stdin(StdStdio::null())
        .stdout(StdStdio::piped())
        .spawn()
        .unwrap();
        let mut out = BufReader::new(exec.stdout.take().unwrap());
        let mut lines = String::new();
        while !lines.contains("ready") {
            assert!(out.read_line(&mut lines).unwrap() > 0, "{lines}");
        }
        let report = end(&env, &["deep"]);
        assert_eq!(report["errors"], serde_json::json!([]), "{report}");
        // The session, the command's own cgroup, and the tree below it: what
        // the command's guardian (which ends the tree too, once the command
        // is gone) did not remove first.
        let removed = report["removed"].as_u64().unwrap() as usize;
        assert!((1..=1 + 1 + *DEEP + *WIDE).contains(&removed), "{report}");
        assert!(exec.wait().unwrap().code().is_none(), "the command was killed");
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

/// A gateway SIGKILLed with a deep and wide tree in a session: the next
/// supervisor's recovery ends it and counts every directory; with a
/// guardian, the guardian does it alone.
#[tokio::test]
async fn recovery_and_the_guardian_end_a_deep_and_wide_tree() {
    let env = TestEnv::new();
    within(180, async {
        let tag = format!("faults-deep-{}", nanos());
        let nest = format!("nest {} {} ready sleep 3600", *DEEP, *WIDE);
        // Recovery.
        let mut gw = FixtureGateway::start(&env, &[], 1, false, Some(&nest), &tag);
        let instance = PathBuf::from(gw.value("instance"));
        assert_eq!(count_cgroups(&instance), 1 + 1 + *DEEP + *WIDE);
        gw.process.kill().unwrap();
        gw.process.wait().unwrap();
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let recovery = sup.recovery();
        assert!(recovery.errors.is_empty(), "{recovery}");
        assert_eq!(recovery.removed, 1 + *DEEP + *WIDE + 1, "the session's tree and the instance: {recovery}");
        assert!(!instance.exists());
        sup.shutdown().await.unwrap();
        assert_eq!(settle(&tag, 5).await, Vec::<i32>::new());
        // The guardian.
        let mut gw = FixtureGateway::start(&env, &[], 1, true, Some(&nest), &tag);
        let instance = PathBuf::from(gw.value("instance"));
        gw.process.kill().unwrap();
        gw.process.wait().unwrap();
        // The guardian takes up to a minute for what is left (11,000
        // directories take seconds under TCG).
        wait_gone_within(&instance, 60).await;
        assert_eq!(settle(&tag, 5).await, Vec::<i32>::new());
    })
    .await;
    env.finish().await;
}

/// Sub-cgroups whose names are not UTF-8 (cgroupfs takes any bytes but
/// `/`): made here as an unsealed child could, then ended and removed by
/// `close()` with everything else, each counted.
#[tokio::test]
async fn cgroups_named_in_any_bytes_are_ended_and_removed() {
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new();
    within(30, async {
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let session = sup.session("bytes").unwrap();
        let names = [&b"\xff"[..], b"a\xfe\xfdb", b"\xef\xbf\xbd"];
        for name in names {
            let name = std::ffi::OsStr::from_bytes(name);
            rustix::fs::mkdirat(session.cgroup().unwrap(), name, rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        }
        let deepest = session.cgroup().unwrap().path().join(std::ffi::OsStr::from_bytes(b"\xff"));
        let inner = Cgroup::open(&deepest).unwrap();
        rustix::fs::mkdirat(&inner, std::ffi::OsStr::from_bytes(b"\x80"), rustix::fs::Mode::from_raw_mode(0o755))
            .unwrap();
        let mut cmd = Command::new(FIXTURE);
        cmd.args(["sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Null);
        let mut child = session.spawn(&mut cmd).unwrap();
        drop(inner);
        let t = session.close().await.unwrap();
        assert_eq!(t.cgroups_removed, 1 + names.len() + 1, "{t:?}");
        child.wait().await.unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Every session carries nesting caps: 16 levels and 1,024 cgroups unless
/// its limits say otherwise. An unsealed child cannot build past them; a
/// sealed one cannot raise them (the cgroup filesystem is read-only to it).
#[tokio::test]
async fn sessions_cap_the_trees_children_can_build() {
    let env = TestEnv::new();
    within(60, async {
        let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
        let session = sup.session("capped").unwrap();
        let cg = session.cgroup();
        assert_eq!(cg.unwrap().read("cgroup.max.depth").unwrap().trim(), "16");
        assert_eq!(cg.unwrap().read("cgroup.max.descendants").unwrap().trim(), "1024");
        for (depth, width) in [(17, 0), (0, 1025)] {
            let mut cmd = Command::new(FIXTURE);
            cmd.args(["nest", &depth.to_string(), &width.to_string()])
                .stdin(Stdio::Null)
                .stdout(Stdio::Null)
                .stderr(Stdio::Null)
                .sealing(Sealing::Off);
            let status = session.spawn(&mut cmd).unwrap().wait().await.unwrap();
            assert!(!status.success(), "nest {depth} {width} got past the caps");
            let built = count_cgroups(cg.unwrap().path()) - 1;
            assert_eq!(built, if depth > 0 { 16 } else { 1024 }, "built up to the cap, not beyond");
            // What it built is removed again, for the next round.
            for name in cg.unwrap().children().unwrap() {
                let child = cg.unwrap().open_child(&name).unwrap();
                cg.unwrap().remove_child_tree(&child).await.unwrap();
            }
        }
        // Sealed, the caps cannot be raised.
        let depth_file = cg.unwrap().path().join("cgroup.max.depth").display().to_string();
        let mut cmd = Command::new(FIXTURE);
        cmd.args(["try-write", &depth_file, "max"]).stdin(Stdio::Null).stdout(Stdio::Piped);
        let mut child = session.spawn(&mut cmd).unwrap();
        let lines = read_until(child.stdout.as_mut().unwrap(), "never").await;
        child.wait().await.unwrap();
        assert_eq!(lines, [format!("try-write {depth_file}=E30")], "EROFS");
        assert_eq!(cg.unwrap().read("cgroup.max.depth").unwrap().trim(), "16");
        // Set in the limits.
        let set = sup
            .session_with_limits("set", &Limits { max_depth: Some(2), max_descendants: Some(5), ..Limits::default() })
            .unwrap();
        assert_eq!(set.cgroup().unwrap().read("cgroup.max.depth").unwrap().trim(), "2");
        assert_eq!(set.cgroup().unwrap().read("cgroup.max.descendants").unwrap().trim(), "5");
        set.close().await.unwrap();
        session.close().await.unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A gateway with `RLIMIT_NOFILE` 64 (soft and hard) opens 100 sessions: it
/// runs what its fds allow, refuses the rest with a clean error, and a sweep
/// then ends every session it ran, with no error.
#[tokio::test]
async fn a_gateway_out_of_fds_ends_every_session() {
    let env = TestEnv::new();
    within(120, async {
        let tag = format!("faults-nofile-{}", nanos());
        let mut gw = FixtureGateway::start(&env, &["prlimit", "--nofile=64:64", "--"], 100, false, None, &tag);
        let ran: usize = gw.value("sessions").parse().unwrap();
        let refused: Vec<&String> = gw.lines.iter().filter(|l| l.starts_with("refused=")).collect();
        assert!(ran > 0 && ran < 100, "{:?}", gw.lines);
        assert_eq!(ran + refused.len(), 100, "{:?}", gw.lines);
        assert!(refused.iter().all(|r| r.contains("Too many open files")), "{refused:?}");
        assert!(tagged(&tag).len() > ran, "the gateway and each child at least");
        let got = gw.order("sweep", "report=");
        let report = got.last().unwrap();
        assert!(report.contains(&format!("swept {ran} session(s)")) && report.contains(" 0 error(s)"), "{got:?}");
        assert_eq!(settle(&tag, 5).await, [gw.process.id() as i32], "only the gateway is left");
        gw.order("shutdown", "report=");
        assert!(gw.process.wait().unwrap().success());
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

/// Supervisors and `exec` raise their soft `RLIMIT_NOFILE` to the hard
/// limit; the commands get the original soft limit back.
#[tokio::test]
async fn the_soft_fd_limit_is_raised_and_children_get_theirs_back() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("faults-soft-{}", nanos());
        let gw = FixtureGateway::start(
            &env,
            &["prlimit", "--nofile=64:4096", "--"],
            1,
            false,
            Some("ready sleep 3600"),
            &tag,
        );
        let limits = |pid: i32| -> String {
            let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
            line.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(limits(gw.process.id() as i32), "4096 4096", "the gateway raised its soft limit");
        let session = Cgroup::open(PathBuf::from(gw.value("instance")).join("s-g0")).unwrap();
        let child = session.procs().unwrap()[0] as i32;
        assert_eq!(limits(child), "64 4096", "its child got the soft limit back");
        drop(gw);
        // exec: the command itself.
        let out = std::process::Command::new("prlimit")
            .args(["--nofile=64:4096", "--", PROCSCOPE, "exec", "--root"])
            .arg(env.path())
            .args(["--", FIXTURE, "self"])
            .stdin(StdStdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l == "nofile=64 4096"), "{text}");
        // The dead gateway's instance, for the next test.
        let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
        sup.shutdown().await.unwrap();
        env.wait_root_empty().await;
        assert_eq!(settle(&tag, 5).await, Vec::<i32>::new());
    })
    .await;
    env.finish().await;
}

/// A child (unsealed, uid 0) pulls its gateway into its own session. The
/// control shows the attack working: the gateway is in the session, and a
/// plain `cgroup.kill` of a cgroup holding a process kills it. Then
/// `close()` ends the session: the child is ended, the gateway is moved
/// back out first and lives on.
#[tokio::test]
async fn a_gateway_pulled_into_its_session_lives_on() {
    let env = TestEnv::new();
    within(30, async {
        // Control: a plain cgroup.kill (before 5.14: SIGKILL to each member)
        // reaches whatever is inside.
        let victim_cg = env.cgroup("victim");
        let mut victim = std::process::Command::new("sleep").arg("3600").spawn().unwrap();
        victim_cg.write("cgroup.procs", &victim.id().to_string()).unwrap();
        raw_kill(&victim_cg);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&victim.wait().unwrap()), Some(libc::SIGKILL));
        env.root.remove_child("victim").unwrap();

        let me = std::process::id();
        let moved = InSupervisorCgroup::enter(&env);
        let home = cgroup_of(me).unwrap();
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let session = sup.session("pull").unwrap();
        let mut cmd = Command::new(FIXTURE);
        cmd.args(["pull", &me.to_string(), "ready", "sleep", "3600"])
            .stdin(Stdio::Null)
            .stdout(Stdio::Piped)
            .sealing(Sealing::Off);
        let mut child = session.spawn(&mut cmd).unwrap();
        let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
        assert_eq!(lines[0], format!("pull {me}=ok"));
        assert_eq!(
            cgroup_of(me).as_deref(),
            Some(cgroup_rel(session.cgroup().unwrap()).as_str()),
            "the gateway was pulled in"
        );
        let t = session.close().await.unwrap();
        // Back where it was when the supervisor started (or, in a process
        // that ran other tests first, where it was before those).
        let now = cgroup_of(me).unwrap();
        assert!(now == home || !now.starts_with(&cgroup_rel(&env.root)), "the gateway left the session: {now}");
        assert_eq!(t.signalled, 1, "only the child was signalled: {t:?}");
        assert!(!child.pidfd().is_alive());
        child.wait().await.unwrap();
        sup.shutdown().await.unwrap();
        drop(moved);
    })
    .await;
    env.finish().await;
}

/// The guardian: an `exec` command pulls its gateway (a shell) into its own
/// cgroup and exits. The guardian ends what it left behind and removes the
/// cgroup, after moving the gateway back out; the control kills the same
/// cgroup with a plain `cgroup.kill`, and the gateway dies with it.
#[tokio::test]
async fn the_guardian_never_kills_the_gateway() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("faults-guardian-{}", nanos());
        let root = env.path().display().to_string();
        let moved = InSupervisorCgroup::enter(&env);
        let gateway = |then: &str| {
            // The gateway waits until the guardian has removed the session
            // (at most 10 s): it must live through that to say "alive".
            let script = format!(
                "{PROCSCOPE} exec --root {root} --no-seal --grace 200ms --session pull -- {FIXTURE} pull $$ daemon {then}; \
                 echo placed; n=0; while ls -d {root}/i-*/s-pull >/dev/null 2>&1 && [ $n -lt 200 ]; do \
                 sleep 0.05; n=$((n+1)); done; echo alive"
            );
            std::process::Command::new("sh")
                .args(["-c", &script])
                .env("PSTAG", &tag)
                .stdin(StdStdio::null())
                .stdout(StdStdio::piped())
                .spawn()
                .unwrap()
        };
        // Control: the command stays, the gateway is killed with its cgroup.
        let mut sh = gateway("ready sleep 3600");
        let mut out = BufReader::new(sh.stdout.take().unwrap());
        let mut text = String::new();
        while !text.contains("ready") {
            assert!(out.read_line(&mut text).unwrap() > 0, "{text}");
        }
        let cgroup = cgroup_of(sh.id()).unwrap();
        assert!(cgroup.contains("/s-pull/p-"), "pulled in: {cgroup}");
        let h = procscope::cgroup::hierarchy::Hierarchy::discover().unwrap();
        let leaf = Cgroup::open(h.mount_point.join(cgroup.trim_start_matches('/'))).unwrap();
        raw_kill(&leaf);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&sh.wait().unwrap()), Some(libc::SIGKILL));
        drop(leaf);
        env.wait_root_empty_but("supervisor").await;
        assert_eq!(settle(&tag, 5).await, Vec::<i32>::new());
        // The guardian ends the leftovers, never the gateway.
        let out = gateway("exit 0").wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?} {text}", out.status);
        assert!(text.contains("alive"), "{text}");
        drop(moved);
        env.wait_root_empty().await;
        assert_eq!(settle(&tag, 5).await, Vec::<i32>::new(), "the daemonized helper was ended");
    })
    .await;
    env.finish().await;
}

/// `procscope end` run by a gateway that a command pulled into its session
/// (so `end` itself starts inside it): both are moved out, the session is
/// ended, both live on.
#[tokio::test]
async fn end_run_from_inside_the_session_ends_it_and_lives() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("faults-end-{}", nanos());
        let root = env.path().display().to_string();
        let moved = InSupervisorCgroup::enter(&env);
        let script = format!(
            "{PROCSCOPE} exec --root {root} --no-seal --session pe -- {FIXTURE} pull $$ sleep 3600 & \
             n=0; while ! grep -q s-pe /proc/$$/cgroup && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done; \
             echo inside=$(grep ^0:: /proc/$$/cgroup); \
             {PROCSCOPE} end --root {root} --grace 200ms pe >/dev/null; echo end=$?; \
             echo after=$(grep ^0:: /proc/$$/cgroup); wait; echo alive"
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("PSTAG", &tag)
            .stdin(StdStdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?} {text}", out.status);
        let inside = text.lines().find(|l| l.starts_with("inside=")).unwrap_or_default();
        assert!(inside.starts_with("inside=0::") && inside.contains("/s-pe/"), "pulled in: {text}");
        assert!(text.contains("end=0\n"), "{text}");
        let after = text.lines().find(|l| l.starts_with("after=")).unwrap();
        assert!(!after.contains("s-pe"), "{text}");
        assert!(text.contains("alive"), "{text}");
        drop(moved);
        env.wait_root_empty().await;
        assert_eq!(settle(&tag, 5).await, Vec::<i32>::new());
    })
    .await;
    env.finish().await;
}

/// Two gateways, each pid 1 of its own pid namespace, started together: their
/// instances have different names (the namespace is in the name), and one's
/// `procscope end job` leaves the other's job alone.
#[tokio::test]
async fn gateways_in_different_pid_namespaces_never_share_an_instance() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("faults-pidns-{}", nanos());
        let root = env.path().display().to_string();
        let gateway = |then: &str| {
            // Placed once the command's own cgroup shows in /proc.
            let script = format!(
                "{PROCSCOPE} exec --root {root} --session job -- {FIXTURE} ready sleep 3600 & \
                 n=0; while ! grep -q s-job /proc/$!/cgroup && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done; {then}"
            );
            std::process::Command::new("unshare")
                .args(["--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", &script])
                .env("PSTAG", &tag)
                .stdin(StdStdio::null())
                .stdout(StdStdio::piped())
                .spawn()
                .unwrap()
        };
        let mut a = Gateway(gateway("echo up; wait"));
        let mut b = gateway(&format!("echo up; {PROCSCOPE} end --root {root} --json job; sleep 0.5"));
        let mut a_out = BufReader::new(a.stdout.take().unwrap());
        let mut line = String::new();
        a_out.read_line(&mut line).unwrap();
        let mut b_out = String::new();
        std::io::Read::read_to_string(&mut b.stdout.take().unwrap(), &mut b_out).unwrap();
        assert!(b.wait().unwrap().success(), "{b_out}");
        // B's instance goes with its job (its guardian removes it); A's stays.
        let with_job = || -> Vec<String> {
            let names = env.root.children().unwrap();
            names.into_iter().filter(|n| env.path().join(n).join("s-job").exists()).collect()
        };
        let names = with_job();
        assert_eq!(names.len(), 1, "only A's job is left: {names:?}; B said {b_out}");
        let ours = procscope::Owner::this_process().unwrap().instance_name();
        let ns_of = |n: &str| n.split('-').nth(1).unwrap().to_owned();
        assert_ne!(ns_of(&names[0]), ns_of(&ours), "A's instance is named in A's namespace");
        assert_eq!(names[0].split('-').nth(2), Some("1"), "A is pid 1 in its namespace: {names:?}");
        let report: Value = serde_json::from_str(b_out.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
        assert_eq!(report["sessions"], 1, "B ended its own job only: {report}");
        let a_job = env.path().join(&names[0]).join("s-job");
        assert!(a_job.exists() && count_cgroups(&a_job) == 2, "A's job still runs");
        // A's namespace dies with its pid 1 (`--kill-child`), its guardian
        // too; its instance is swept from here.
        a.kill().unwrap();
        a.wait().unwrap();
        let out = procscope(&env, &["sweep", "--all", "--force", "--grace", "200ms"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        env.wait_root_empty().await;
        assert_eq!(settle(&tag, 5).await, Vec::<i32>::new());
    })
    .await;
    env.finish().await;
}

/// An operator removes a live supervisor's instance (`sweep --all --force`):
/// the next `session()` makes it again, with a new guardian, and works.
#[tokio::test]
async fn a_supervisor_makes_its_removed_instance_again() {
    let env = TestEnv::new();
    within(60, async {
        let sup = Supervisor::builder()
            .root(env.path())
            .guardian(true)
            .grace(Duration::from_millis(200))
            .start()
            .await
            .unwrap();
        let first_guardian = sup.guardian_pid().unwrap();
        let instance = sup.instance().unwrap().path().to_owned();
        let session = sup.session("before").unwrap();
        let out = procscope(&env, &["sweep", "--all", "--force", "--grace", "200ms"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!instance.exists());
        drop(session);
        let after = sup.session("after").unwrap();
        assert!(instance.exists(), "made again");
        assert_eq!(after.cgroup().unwrap().path(), instance.join("s-after"));
        let mut cmd = Command::new(FIXTURE);
        cmd.args(["exit", "0"]).stdin(Stdio::Null).stdout(Stdio::Null);
        assert!(after.spawn(&mut cmd).unwrap().wait().await.unwrap().success());
        let guardian = sup.guardian_pid().unwrap();
        assert_ne!(guardian, first_guardian, "a new guardian guards the new instance");
        let guardian = procscope::PidFd::open(guardian as u32).unwrap();
        after.close().await.unwrap();
        sup.shutdown().await.unwrap();
        assert!(!guardian.is_alive(), "the new guardian exited");
    })
    .await;
    env.finish().await;
}

/// The library and `exec` in one process: `shutdown()` ends the `exec`
/// commands' sessions too and reports them with its own.
#[tokio::test]
async fn shutdown_reports_the_exec_commands_of_its_process() {
    let env = TestEnv::new();
    within(60, async {
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let own = sup.session("own").unwrap();
        let mut cmd = Command::new(FIXTURE);
        cmd.args(["sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Null);
        let mut child = own.spawn(&mut cmd).unwrap();
        let mut exec = procscope(&env, &["exec", "--session", "by-exec", "--"])
            .args([FIXTURE, "ready", "sleep", "3600"])
            .stdin(StdStdio::null())
            .stdout(StdStdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(exec.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let report = sup.shutdown().await.unwrap();
        assert_eq!(report.sessions, 2, "{report}");
        assert_eq!(report.terminated, 2, "{report}");
        assert!(report.errors.is_empty(), "{report}");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&exec.wait().unwrap()), Some(libc::SIGTERM));
        child.wait().await.unwrap();
        drop(own);
    })
    .await;
    env.finish().await;
}

/// Calls that fail leave the tree as they found it: `exec` failing at each
/// step of placing itself (including after it made its instance), and the
/// library's `start()` and `session()` under caps that refuse them.
#[tokio::test]
async fn failures_change_nothing() {
    let env = TestEnv::new();
    within(60, async {
        let run = |args: &[&str]| procscope(&env, args).stdin(StdStdio::null()).output().unwrap();
        let mut sleeper = Gateway(std::process::Command::new("sleep").arg("60").spawn().unwrap());
        let stranger = sleeper.id().to_string();
        type Case<'a> = (&'a str, Vec<&'a str>, Option<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            ("no such program", vec!["exec", "--", "/nonexistent/program"], None),
            ("bad session id", vec!["exec", "--session", "a/b", "--", "true"], None),
            ("owner not an ancestor", vec!["exec", "--owner", &stranger, "--", "true"], None),
            ("no room for the session", vec!["exec", "--session", "x", "--", "true"], Some(("cgroup.max.depth", "1"))),
            ("no room for the command", vec!["exec", "--session", "x", "--", "true"], Some(("cgroup.max.depth", "2"))),
            ("no cgroup at all", vec!["exec", "--session", "x", "--", "true"], Some(("cgroup.max.descendants", "0"))),
            ("one cgroup only", vec!["exec", "--session", "x", "--", "true"], Some(("cgroup.max.descendants", "1"))),
            ("unknown session", vec!["end", "nope"], None),
        ];
        for (what, args, cap) in cases {
            if let Some((file, value)) = cap {
                env.root.write(file, value).unwrap();
            }
            let before = snapshot(&env.path());
            let out = run(&args);
            let after = snapshot(&env.path());
            if let Some((file, _)) = cap {
                env.root.write(file, "max").unwrap();
            }
            assert!(!out.status.success(), "{what}: {out:?}");
            assert!(!out.stderr.is_empty(), "{what}: says why");
            assert_eq!(after, before, "{what}: the tree changed ({})", String::from_utf8_lossy(&out.stderr));
        }
        // The library.
        env.root.write("cgroup.max.descendants", "0").unwrap();
        let refused = Supervisor::builder().root(env.path()).start().await;
        env.root.write("cgroup.max.descendants", "max").unwrap();
        assert!(refused.is_err());
        assert_eq!(snapshot(&env.path()), [PathBuf::new()], "start() made nothing");
        let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
        env.root.write("cgroup.max.depth", "1").unwrap();
        let before = snapshot(&env.path());
        let refused = sup.session("deep");
        let after = snapshot(&env.path());
        env.root.write("cgroup.max.depth", "max").unwrap();
        assert!(refused.is_err());
        assert_eq!(after, before, "session() made nothing");
        sup.shutdown().await.unwrap();
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    })
    .await;
    env.finish().await;
}

/// A gateway SIGKILLed a moment ago and not reaped yet by its parent is a
/// zombie: it has exited, so its instance is stale and a sweep ends what it
/// left, instead of sparing it as the instance of a live gateway.
#[tokio::test]
async fn a_zombie_gateway_is_gone() {
    let env = TestEnv::new();
    {
        let (mut gateway, lines) = Gateway::start(FIXTURE, &env.path(), 1, false);
        // The helper daemonized first: on Linux 7.1 and later the kernel
        // kills the gateway's direct child with it (CLONE_PIDFD_AUTOKILL).
        drop(settled_daemons(&Cgroup::open(field(&lines, "instance")).unwrap(), 1).await);
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(gateway.id() as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        // Not waited for: a zombie, as long as this test does not reap it.
        let pidfd = procscope::PidFd::open(gateway.id()).unwrap();
        within(10, pidfd.exited()).await.unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", gateway.id())).unwrap();
        assert!(stat.contains(") Z "), "the control: it is a zombie: {stat}");

        let root = procscope::Root::open(env.path()).unwrap();
        let listed = procscope::tree::list(&root).unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(!listed[0].owner_alive, "a zombie owner is gone: {lines:?}");
        let report =
            procscope::tree::sweep(&root, procscope::tree::Scope::Stale, Duration::from_millis(200)).await.unwrap();
        assert_eq!((report.sessions, report.leaks_prevented), (1, 1), "{report}");
        gateway.wait().unwrap();
        env.wait_root_empty().await;
    }
    env.finish().await;
}
