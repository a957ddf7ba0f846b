//! `procscope exec` with holders: where no cgroup2 can be written (a default
//! container; tests/containers.rs and tests/docker.rs show `exec` choosing
//! it there), `exec` stays in front of its command, which a holder keeps
//! with everything it leaves. Here the mode is asked for on the host
//! (`--containment holders`), with a run directory of the test's own.
//! Processes are found by their `PSTAG`, as no cgroup holds them.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{FIXTURE, Gateway, TestEnv, nanos, settle, tagged, within};

const BIN: &str = env!("CARGO_BIN_EXE_procscope");

/// A run directory of the test's own, checked empty and removed at the end.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> RunDir {
        let dir = std::env::temp_dir().join(format!("procscope-run-{}-{}", std::process::id(), nanos()));
        RunDir(dir)
    }

    /// The registered `exec`s' sockets, relative to the run directory.
    fn entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(&self.0).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// Asserts that no `exec` is registered and no directory of one is left.
    fn finish(self) {
        let entries = self.entries();
        let dirs: Vec<String> = std::fs::read_dir(self.0.join("held"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let _ = std::fs::remove_dir_all(&self.0);
        assert!(entries.is_empty(), "registrations left: {entries:?}");
        assert!(dirs.is_empty(), "instance directories left: {dirs:?}");
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tag(what: &str) -> String {
    format!("held-{what}-{}-{}", std::process::id(), nanos())
}

/// `procscope ARGS` with the test's run directory, owned by this process.
fn procscope(run: &RunDir, tag: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("PROCSCOPE_RUN_DIR", &run.0)
        .env("PROCSCOPE_OWNER", std::process::id().to_string())
        .env("PSTAG", tag)
        .stdin(Stdio::null());
    c
}

/// `procscope exec --containment holders [EXTRA] -- sh -c SCRIPT`.
fn held_exec(run: &RunDir, tag: &str, extra: &[&str], script: &str) -> Command {
    let mut args = vec!["exec", "--containment", "holders", "--grace", "300ms"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    procscope(run, tag, &args)
}

/// A script that leaves a `setsid --fork` daemon (its parent exits at
/// once: an orphan) and then does `rest`.
fn daemonizing(rest: &str) -> String {
    format!("{FIXTURE} daemon >/dev/null && {rest}")
}

fn output(mut c: Command) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// Waits (at most 10 s) until `n` tagged processes run, settled: `execs`
/// of them `procscope exec`s, none on its way to an `execve` (a holder or
/// command still a copy of its `exec`) and no daemon half-started.
async fn running(tag: &str, n: usize, execs: usize) -> Vec<i32> {
    let cmdline = |p: i32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default()).replace('\0', " ")
    };
    for _ in 0..1000 {
        let pids = tagged(tag);
        let lines: Vec<String> = pids.iter().map(|&p| cmdline(p)).collect();
        let fronts = lines.iter().filter(|l| l.starts_with(&format!("{BIN} exec"))).count();
        let half = lines.iter().any(|l| l.starts_with("setsid") || l.starts_with(&format!("{FIXTURE} daemon")));
        if pids.len() == n && fronts == execs && !half {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never {n} processes tagged {tag}: {:?}", tagged(tag).into_iter().map(cmdline).collect::<Vec<_>>());
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

/// Reaps a child within `secs`; panics (after killing it) if it runs on.
async fn reap(mut child: Gateway, secs: u64) -> std::process::ExitStatus {
    for _ in 0..secs * 100 {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("still running after {secs} s");
}

#[tokio::test]
async fn the_command_leaves_a_daemon_that_ends_with_it_and_the_control_leaks() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        // Control: the same command without procscope leaves its daemon.
        let t = tag("control");
        let mut c = Command::new("sh");
        c.args(["-c", &daemonizing("exit 3")]).env("PSTAG", &t);
        assert_eq!(c.status().unwrap().code(), Some(3));
        let left = running(&t, 1, 0).await;
        assert_ne!(parent_of(left[0]), Some(std::process::id() as i32), "the daemon is nobody's here");
        for p in left {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(p).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        assert!(settle(&t, 5).await.is_empty());

        // Held: the exit code is the command's, and the daemon is ended.
        let t = tag("held");
        let out = output(held_exec(&run, &t, &[], &daemonizing("echo out; echo err >&2; exit 3")));
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "the command's own stdout");
        assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"), "{out:?}");
        assert_eq!(settle(&t, 5).await, Vec::<i32>::new(), "the daemon outlived its exec");
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn while_it_runs_the_daemon_is_the_holders_and_signals_reach_the_command() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("signals");
        // The command traps TERM and exits 7; its daemon does not trap it.
        let script = daemonizing("trap 'exit 7' TERM; sleep 3600 & wait");
        let exec = Gateway(held_exec(&run, &t, &["--session", "sig"], &script).stdout(Stdio::null()).spawn().unwrap());
        // exec, sh, its sleep, the daemon (the holder's environment is its
        // own).
        let pids = running(&t, 4, 1).await;
        let daemon = pids.iter().copied().find(|&p| {
            comm(p).starts_with("procscope-fix") && parent_of(p).is_some_and(|pp| comm(pp) == "procscope-hold")
        });
        assert!(
            daemon.is_some(),
            "the daemon is re-parented to the holder: {:?}",
            pids.iter().map(|&p| (p, comm(p), parent_of(p).map(comm))).collect::<Vec<_>>()
        );
        assert_eq!(run.entries().len(), 1, "registered: {:?}", run.entries());
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(exec.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let st = reap(exec, 10).await;
        assert_eq!(st.code(), Some(7), "SIGTERM forwarded to the command, its exit code returned: {st:?}");
        assert!(settle(&t, 5).await.is_empty());

        // Killed by a signal: exec ends by the same signal.
        let t = tag("killed");
        let st = held_exec(&run, &t, &[], "kill -USR1 $$").status().unwrap();
        assert_eq!(st.signal(), Some(libc::SIGUSR1), "{st:?}");
        assert!(settle(&t, 5).await.is_empty());
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_sigkilled_exec_leaves_nothing_and_sweep_removes_its_registration() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("sigkill");
        let mut exec =
            Gateway(held_exec(&run, &t, &[], &daemonizing("sleep 3600")).stdout(Stdio::null()).spawn().unwrap());
        running(&t, 4, 1).await;
        exec.kill().unwrap();
        exec.wait().unwrap();
        // The holder saw its control pipe end: the whole tree is SIGKILLed.
        assert_eq!(settle(&t, 5).await, Vec::<i32>::new());
        assert_eq!(run.entries().len(), 1, "a SIGKILLed exec cannot remove its socket");
        let ps = json(&output(procscope(&run, &t, &["ps", "--json"])));
        assert_eq!(ps["held"][0]["sessions"][0]["state"], "stale", "{ps}");
        let out = output(procscope(&run, &t, &["sweep", "--json"]));
        let report = json(&out);
        assert_eq!(report["errors"].as_array().unwrap().len(), 0, "{report}");
        assert!(run.entries().is_empty(), "swept: {:?}", run.entries());
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn end_and_ps_find_held_sessions_by_owner_and_id() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("end");
        let busy = daemonizing("sleep 3600");
        let a1 = Gateway(held_exec(&run, &t, &["--session", "a"], &busy).stdout(Stdio::null()).spawn().unwrap());
        let a2 = Gateway(held_exec(&run, &t, &["--session", "a"], &busy).stdout(Stdio::null()).spawn().unwrap());
        let b = Gateway(held_exec(&run, &t, &["--session", "b"], "sleep 3600").spawn().unwrap());
        // 2 × (exec, sh, sleep, daemon) + (exec, sh, sleep).
        running(&t, 11, 3).await;

        let ps = json(&output(procscope(&run, &t, &["ps", "--json"])));
        let held = ps["held"].as_array().unwrap();
        assert_eq!(held.len(), 1, "one instance, this process's: {ps}");
        assert_eq!(held[0]["owner_pid"], std::process::id(), "{ps}");
        let sessions = held[0]["sessions"].as_array().unwrap();
        let procs = |id: &str| sessions.iter().find(|s| s["id"] == id).map(|s| s["processes"].as_u64().unwrap());
        assert_eq!(procs("a"), Some(6), "sh, sleep and the daemon of each command: {ps}");
        assert_eq!(procs("b"), Some(2), "{ps}");
        let text = output(procscope(&run, &t, &["ps"]));
        assert!(String::from_utf8_lossy(&text.stdout).contains("held by exec"), "{text:?}");

        // `end a` ends both commands of `a`, and nothing of `b`.
        let report = json(&output(procscope(&run, &t, &["end", "--json", "a"])));
        assert_eq!(report["sessions"], 1, "{report}");
        assert_eq!(report["leaks_prevented"], 2, "{report}");
        assert_eq!(report["not_found"].as_array().unwrap().len(), 0, "{report}");
        let (s1, s2) = (reap(a1, 10).await, reap(a2, 10).await);
        assert_eq!((s1.signal(), s2.signal()), (Some(libc::SIGTERM), Some(libc::SIGTERM)), "the commands' ends");
        assert_eq!(tagged(&t).len(), 3, "b's exec, sh and sleep run on: {:?}", tagged(&t));

        // An id of no session: exit 1, named; `--missing-ok` accepts it.
        let out = output(procscope(&run, &t, &["end", "nope"]));
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no session nope"), "{out:?}");
        assert!(output(procscope(&run, &t, &["end", "--missing-ok", "nope"])).status.success());

        // `sweep --all` spares a live owner's session, `--force` ends it.
        let out = output(procscope(&run, &t, &["sweep", "--all"]));
        assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"), "{out:?}");
        assert_eq!(tagged(&t).len(), 3);
        let report = json(&output(procscope(&run, &t, &["sweep", "--all", "--force", "--json"])));
        assert_eq!(report["leaks_prevented"], 1, "{report}");
        assert_eq!(reap(b, 10).await.signal(), Some(libc::SIGTERM));
        assert!(settle(&t, 5).await.is_empty());
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn the_owners_death_ends_the_held_session() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("owner");
        // A shell is the gateway: it starts the exec (its owner is its
        // parent, the shell) and waits; it is SIGKILLed.
        let script = daemonizing("sleep 3600");
        let line = format!(
            "{BIN} exec --containment holders --grace 300ms -- sh -c '{script}' >/dev/null & wait",
            script = script.replace('\'', "'\\''")
        );
        let mut gateway = Command::new("sh");
        gateway.args(["-c", &line]).env("PROCSCOPE_RUN_DIR", &run.0).env("PSTAG", &t).stdin(Stdio::null());
        let mut gateway = Gateway(gateway.spawn().unwrap());
        // The gateway shell, exec, sh, sleep, the daemon.
        running(&t, 5, 1).await;
        gateway.kill().unwrap();
        gateway.wait().unwrap();
        assert_eq!(settle(&t, 10).await, Vec::<i32>::new(), "the owner is gone: its session too");
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn limits_and_a_required_seal_are_refused_and_register_nothing() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("refused");
        let out = output(held_exec(&run, &t, &["--memory-max", "64M"], "touch /tmp/never"));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("limits need a cgroup") && err.contains("Containers"), "{err}");
        let out = output(held_exec(&run, &t, &["--seal"], "true"));
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--seal"), "{out:?}");
        assert!(run.entries().is_empty() && !Path::new(&run.0).join("held").exists(), "{:?}", run.entries());
        // Control: without them, the same command runs.
        assert!(held_exec(&run, &t, &[], "true").status().unwrap().success());
        assert!(settle(&t, 5).await.is_empty());
        run.finish();
        env.finish().await;
    })
    .await;
}
