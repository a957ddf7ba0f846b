//! `procscope exec` with holders: where no cgroup2 can be written (a default
//! container; tests/containers.rs and tests/docker.rs show `exec` choosing
//! it there), `exec` stays in front of its command, which a holder keeps
//! with everything it leaves. Here the mode is asked for on the host
//! (`--containment holders`), with a run directory of the test's own.
//! Processes are found by their `PSTAG`, as no cgroup holds them.

mod common;

use std::os::unix::fs::DirBuilderExt;
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
/// command still a copy of its `exec`), no daemon half-started and none
/// exiting.
async fn running(tag: &str, n: usize, execs: usize) -> Vec<i32> {
    let cmdline = |p: i32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default()).replace('\0', " ")
    };
    for _ in 0..1000 {
        let pids = tagged(tag);
        let lines: Vec<String> = pids.iter().map(|&p| cmdline(p)).collect();
        let fronts = lines.iter().filter(|l| l.starts_with(&format!("{BIN} exec"))).count();
        // Half-way: a daemon still being started, or a process exiting (a
        // zombie's command line reads empty, and so does one that is gone).
        let half = lines
            .iter()
            .any(|l| l.is_empty() || l.starts_with("setsid") || l.starts_with(&format!("{FIXTURE} daemon")));
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
        // The metrics count the same processes, as an instance of kind exec.
        let name = held[0]["name"].as_str().unwrap();
        let m = json(&output(procscope(&run, &t, &["metrics", "--json"])));
        let instance = m["instances"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap();
        assert_eq!(instance["kind"], "exec", "{m}");
        let a = instance["sessions"].as_array().unwrap().iter().find(|s| s["id"] == "a").unwrap();
        assert_eq!(a["processes"], 6, "{m}");
        assert_eq!(a["memory"]["source"], "rss", "{m}");
        let text = String::from_utf8(output(procscope(&run, &t, &["metrics"])).stdout).unwrap();
        let line = format!("procscope_session_processes{{procscope_instance=\"{name}\",session=\"a\"}} 6");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");

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
        let marker = run.0.with_extension("term");
        let script = daemonizing(&format!("trap 'echo term > {}; exit 0' TERM; sleep 3600 & wait", marker.display()));
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
        let said = std::fs::read_to_string(&marker).unwrap_or_default();
        let _ = std::fs::remove_file(&marker);
        assert_eq!(said, "term\n", "ended with SIGTERM first, not at once by SIGKILL");
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
        let never = run.0.with_extension("never");
        let out = output(held_exec(&run, &t, &["--memory-max", "64M"], &format!("touch {}", never.display())));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("limits need a cgroup") && err.contains("Containers"), "{err}");
        assert!(!never.exists(), "the command ran");
        let out = output(held_exec(&run, &t, &["--seal"], &format!("touch {}", never.display())));
        assert!(!never.exists(), "the command ran");
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

#[tokio::test]
async fn a_stop_stops_the_whole_job_and_a_continue_resumes_it() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("stop");
        // A job of its own, as a shell makes it: in a process group that
        // is not orphaned (the kernel ignores SIGTSTP in an orphaned one).
        let mut job = held_exec(&run, &t, &[], "sleep 3600 & wait");
        std::os::unix::process::CommandExt::process_group(&mut job, 0);
        let exec = Gateway(job.spawn().unwrap());
        // exec, sh, sleep.
        let pids = running(&t, 3, 1).await;
        let state = |p: i32| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next()))
                .flatten()
        };
        let shell = *pids.iter().find(|&&p| comm(p) == "sh").unwrap();
        let kill = |p: i32, s| rustix::process::kill_process(rustix::process::Pid::from_raw(p).unwrap(), s).unwrap();
        kill(exec.id() as i32, rustix::process::Signal::TSTP);
        let both = async {
            while state(exec.id() as i32) != Some('T') || state(shell) != Some('T') {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        within(5, both).await;
        kill(exec.id() as i32, rustix::process::Signal::CONT);
        let resumed = async {
            while state(exec.id() as i32) == Some('T') || state(shell) == Some('T') {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        within(5, resumed).await;
        kill(exec.id() as i32, rustix::process::Signal::TERM);
        assert_eq!(reap(exec, 10).await.signal(), Some(libc::SIGTERM));
        assert!(settle(&t, 5).await.is_empty());
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn an_end_while_the_exec_is_ending_waits_for_it_and_succeeds() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("late");
        // The command exits at once; its daemon ignores SIGTERM, so the
        // exec's ending lasts its whole grace of 2 s.
        let script = format!("setsid -f {FIXTURE} ignore-term sleep 3600 >/dev/null; sleep 0.2");
        let args =
            ["exec", "--containment", "holders", "--grace", "2s", "--session", "late", "--", "sh", "-c", &script];
        let exec = Gateway(procscope(&run, &t, &args).spawn().unwrap());
        // Until the exec is ending: its command (sh) is gone, and its daemon
        // runs, as its own program. (Before the command's program starts,
        // while its holder starts, the command is a copy of the exec, with
        // the exec's command line, which names ignore-term too: two tagged
        // processes as well.)
        let daemon_cmdline = format!("{FIXTURE}\0ignore-term\0");
        let ending = async {
            loop {
                let pids = tagged(&t);
                let busy = pids.iter().any(|&p| comm(p) == "sh" || comm(p) == "setsid");
                let daemon = pids.iter().any(|&p| {
                    std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(daemon_cmdline.as_bytes()))
                });
                if !busy && daemon && pids.len() == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        within(10, ending).await;
        let out = output(procscope(&run, &t, &["end", "--json", "--grace", "100ms", "late"]));
        let report = json(&out);
        assert_eq!(report["errors"].as_array().unwrap().len(), 0, "{report}");
        assert_eq!(report["sessions"], 1, "{report}");
        let status = reap(exec, 10).await;
        assert_eq!(status.code(), Some(0), "{status:?}: {report}");
        assert!(settle(&t, 5).await.is_empty());
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn an_exec_in_another_pid_namespace_is_not_stale_and_is_ended_by_force() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("pidns");
        let c = procscope(&run, &t, &[]);
        let mut args: Vec<String> = ["--pid", "--fork", "--mount-proc", BIN, "exec", "--containment", "holders"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--session", "nested", "--", "sleep", "3600"].map(String::from));
        let mut c2 = Command::new("unshare");
        // Its own owner there (it is the namespace's first process).
        c2.args(&args)
            .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove("PROCSCOPE_OWNER")
            .stdin(Stdio::null());
        let unshare = Gateway(c2.spawn().unwrap());
        // unshare's child (the exec), the holder's command: exec and sleep.
        let found = async {
            loop {
                // (An error until it has registered: no cgroup root here.)
                let out = output(procscope(&run, &t, &["ps", "--json"]));
                if out.status.success() {
                    let ps = json(&out);
                    if ps["held"][0]["sessions"][0]["id"] == "nested" {
                        return ps;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let ps = within(10, found).await;
        assert_eq!(ps["held"][0]["foreign_pid_namespace"], true, "{ps}");
        assert_eq!(ps["held"][0]["owner_alive"], true, "an owner of another namespace counts as alive: {ps}");
        assert_eq!(ps["held"][0]["sessions"][0]["state"], "active", "{ps}");
        // A sweep of stale sessions leaves it alone.
        let report = json(&output(procscope(&run, &t, &["sweep", "--json"])));
        assert_eq!(report["sessions"], 0, "{report}");
        assert_eq!(run.entries().len(), 1);
        // By force, it is ended through its socket.
        let report = json(&output(procscope(&run, &t, &["sweep", "--all", "--force", "--json"])));
        assert_eq!(report["leaks_prevented"], 1, "{report}");
        reap(unshare, 10).await;
        assert!(settle(&t, 5).await.is_empty());
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_gateway_that_is_not_root_runs_its_command_unregistered_where_it_cannot_register() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        // The run directory is root's, mode 0700.
        std::fs::DirBuilder::new().mode(0o700).create(&run.0).unwrap();
        let t = tag("nobody");
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", BIN, "exec", "--containment", "holders"])
            .args(["--", "sh", "-c", &daemonizing("echo ran")])
            .env("PROCSCOPE_RUN_DIR", &run.0)
            .env("PSTAG", &t)
            .current_dir("/")
            .stdin(Stdio::null());
        let out = output(c);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n", "{err}");
        assert!(err.contains("runs unregistered"), "said: {err}");
        assert_eq!(settle(&t, 5).await, Vec::<i32>::new(), "its daemon is ended all the same");
        run.finish();
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn end_leaves_the_same_session_id_of_another_owner_alone() {
    within(60, async {
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("other");
        // Another gateway (a shell that is no descendant of this process:
        // `setsid -f` leaves it to init) runs session `a` too.
        let line = format!("{BIN} exec --containment holders --session a -- sleep 3600");
        let mut other = Command::new("setsid");
        other.args(["-f", "sh", "-c", &line]).env("PROCSCOPE_RUN_DIR", &run.0).env("PSTAG", &t).stdin(Stdio::null());
        assert!(other.status().unwrap().success());
        // Its shell, exec and sleep.
        running(&t, 3, 1).await;
        let out = output(procscope(&run, &t, &["end", "--json", "a"]));
        assert_eq!(out.status.code(), Some(1), "not this process's session: {out:?}");
        assert_eq!(json_of(&out)["not_found"][0], "a", "{out:?}");
        assert_eq!(tagged(&t).len(), 3, "the other gateway's session runs on");
        let report = json(&output(procscope(&run, &t, &["sweep", "--all", "--force", "--json"])));
        assert_eq!(report["leaks_prevented"], 1, "{report}");
        assert!(settle(&t, 5).await.is_empty());
        run.finish();
        env.finish().await;
    })
    .await;
}

/// The JSON of an output, whatever its exit status.
fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[tokio::test]
async fn a_terminals_interrupt_reaches_the_command_once() {
    within(60, async {
        use std::io::{BufRead, Write};
        let env = TestEnv::new();
        let run = RunDir::new();
        let t = tag("tty");
        // util-linux's `script` runs the exec on a terminal of its own,
        // in its foreground process group; `^C` written to the terminal
        // makes its line discipline send SIGINT to that whole group.
        let line = format!(
            "{BIN} -vv --log-format json exec --containment holders -- sh -c 'trap \"echo int\" INT; echo ready; while :; do sleep 0.1; done'"
        );
        let mut script = Command::new("script");
        script
            .args(["-q", "-c", &line, "/dev/null"])
            .env("PROCSCOPE_RUN_DIR", &run.0)
            .env("PSTAG", &t)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut script = Gateway(script.spawn().unwrap());
        let mut input = script.stdin.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = script.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut seen = Vec::new();
        let wait_for = |what: &str, seen: &mut Vec<String>| {
            while !seen.iter().any(|l| l.ends_with(what)) {
                seen.push(rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("no {what}: {seen:?}")));
            }
        };
        wait_for("ready", &mut seen);
        input.write_all(b"\x03").unwrap();
        wait_for("int", &mut seen);
        // A second SIGINT, forwarded by exec, would come within this.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // `^\`: SIGQUIT ends the command, and with it the exec and
        // `script` (or the hangup does that comes when `script`'s input
        // ends: either is the terminal's, and not forwarded).
        input.write_all(b"\x1c").unwrap();
        drop(input);
        assert!(reap(script, 10).await.success());
        reader.join().unwrap();
        seen.extend(rx.try_iter());
        let ints = seen.iter().filter(|l| l.ends_with("int")).count();
        assert_eq!(ints, 1, "the command got SIGINT {ints} times: {seen:?}");
        // exec's own account (two SIGINTs close together can also merge in
        // the command): the terminal's SIGINT was not forwarded.
        let event = |sig: i32| {
            seen.iter().any(|l| {
                l.contains(r#""event":"exec.signal""#)
                    && l.contains(&format!(r#""signal":{sig},"#))
                    && l.contains(r#""from_terminal":true"#)
                    && l.contains(r#""forwarded":false"#)
            })
        };
        assert!(event(libc::SIGINT), "{seen:#?}");
        assert!(settle(&t, 5).await.is_empty());
        run.finish();
        env.finish().await;
    })
    .await;
}
