//! The `procscope` binary, driven for real: exec's status and signals, parent
//! death, grandchildren, shared sessions and `end`, stdio pass-through, the
//! terminal and fds an exec'd server holds, bad input refused before
//! anything is placed, ps and sweep JSON, doctor, the demo, and bad
//! arguments.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");

fn procscope(env: &TestEnv, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(PROCSCOPE);
    let (sub, rest) = args.split_first().unwrap();
    c.arg(sub).arg("--root").arg(env.path()).args(rest);
    c
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    procscope(env, args).stdin(Stdio::null()).output().unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Starts `procscope exec` with a fixture command; returns once the fixture has
/// printed `ready`.
fn exec_ready(env: &TestEnv, opts: &[&str], fixture_args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut args = vec!["exec"];
    args.extend_from_slice(opts);
    args.push("--");
    args.push(FIXTURE);
    args.extend_from_slice(fixture_args);
    let mut child = procscope(env, &args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "exec ended before ready");
        if line.trim() == "ready" {
            break;
        }
    }
    (child, out)
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(child.id() as i32).unwrap(), sig).unwrap();
}

/// Sessions under the test root, from `ps --json`.
fn sessions(env: &TestEnv) -> Vec<Value> {
    let out = run(env, &["ps", "--json"]);
    assert!(out.status.success(), "{out:?}");
    json(&out)["instances"].as_array().unwrap().iter().flat_map(|i| i["sessions"].as_array().unwrap().clone()).collect()
}

/// `exec` becomes the command: the pid the gateway holds is the command's, its
/// status and its death by signal reach the gateway untranslated, its parent
/// is the gateway, and no procscope process stays. A command that cannot run
/// keeps 127/126 and nothing is placed.
#[tokio::test]
async fn exec_is_the_command_itself() {
    let env = TestEnv::new();
    {
        let out = run(&env, &["exec", "--", FIXTURE, "exit", "3"]);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        env.wait_root_empty().await;

        for sig in [rustix::process::Signal::TERM, rustix::process::Signal::INT, rustix::process::Signal::HUP] {
            let (mut child, mut out) = exec_ready(&env, &[], &["self", "ready", "sleep", "3600"]);
            let _ = &mut out;
            signal(&child, sig);
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(sig.as_raw()), "{sig:?}: {status:?}");
        }
        // The gateway's own escalation reaches the command: a command that
        // ignores SIGTERM dies by the gateway's SIGKILL, seen as SIGKILL.
        let (mut child, _out) = exec_ready(&env, &[], &["ignore-term", "ready", "sleep", "3600"]);
        signal(&child, rustix::process::Signal::TERM);
        std::thread::sleep(Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "SIGTERM is the command's to ignore");
        signal(&child, rustix::process::Signal::KILL);
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        env.wait_root_empty().await;

        // The pid, the parent, and no procscope process in between.
        let mut child = procscope(&env, &["exec", "--", FIXTURE, "self", "ready", "wait-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        while lines.last().map(String::as_str) != Some("ready") {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0);
            lines.push(line.trim().to_owned());
        }
        assert_eq!(field(&lines, "pid"), child.id().to_string(), "the pid the gateway holds is the command's");
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        let ppid: u32 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(ppid, std::process::id(), "its parent is the gateway");
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
        assert_eq!(comm.trim(), "procscope-fixtu", "no procscope wrapper in between");
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        env.wait_root_empty().await;

        // Not found / not executable: refused before anything is placed.
        let out = run(&env, &["exec", "--", "procscope-no-such-program"]);
        assert_eq!(out.status.code(), Some(127), "{out:?}");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let plain = dir.join(format!("not-executable-{}", nanos()));
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let out = run(&env, &["exec", "--", plain.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(126), "{out:?}");
        assert!(env.root.children().unwrap().is_empty(), "{:?}", env.root.children());
        std::fs::remove_file(&plain).unwrap();
        // Executable but in no format the kernel runs: see
        // exec_refuses_a_file_the_kernel_cannot_run_before_placing.
    }
    env.finish().await;
}

/// A gateway on a terminal (`tests/python/tty_gateway.py`: `pty.fork()`,
/// so it leads a session whose controlling terminal is the pty) `exec`s a
/// program that reports its `/proc/self/stat` fields and every fd it holds.
/// The server's controlling terminal, session and process group are the
/// gateway's, its parent is the gateway, and it holds exactly the fds the
/// gateway gave it (the terminal as stdin and stderr, the gateway's pipe as
/// stdout) — nothing of procscope's (no pidfd, no cgroup directory, no pipe
/// to the guardian, no namespace). The control: a gateway that hands over one
/// more fd without `FD_CLOEXEC` sees it listed, so a leaked fd would be seen.
#[tokio::test]
async fn an_execd_server_has_the_gateways_terminal_and_only_its_fds() {
    let env = TestEnv::new();
    within(30, async {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tty_gateway.py");
        for extra_fd in [false, true] {
            let config = serde_json::json!({
                "procscope": PROCSCOPE, "root": env.path(), "fixture": FIXTURE, "extra_fd": extra_fd,
            });
            let t = Instant::now();
            let out = std::process::Command::new("python3")
                .arg(&script)
                .arg(config.to_string())
                .stdin(Stdio::null())
                .output()
                .expect("python3");
            assert!(out.status.success(), "{out:?}");
            let r = json(&out);
            assert_eq!(r["status"], 0, "{r}");
            assert_eq!(r["terminal"], "", "nothing on the terminal, no warning: {r}");
            let gw = &r["gateway"];
            let lines: Vec<String> =
                r["server"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().into()).collect();
            let stat: Vec<i64> = field(&lines, "stat").split(' ').map(|f| f.parse().unwrap()).collect();
            let [ppid, pgrp, sid, tty_nr] = stat[..] else { panic!("{lines:?}") };
            assert_ne!(gw["tty_nr"], 0, "the gateway has a controlling terminal: {r}");
            assert_eq!(tty_nr, gw["tty_nr"].as_i64().unwrap(), "the server's terminal is the gateway's: {r}");
            assert_eq!(sid, gw["sid"].as_i64().unwrap(), "the gateway's session: {r}");
            assert_eq!(sid, gw["pid"].as_i64().unwrap(), "which the gateway leads: {r}");
            assert_eq!(pgrp, gw["pgrp"].as_i64().unwrap(), "the gateway's process group: {r}");
            assert_eq!(ppid, gw["pid"].as_i64().unwrap(), "its parent is the gateway: {r}");
            let held: std::collections::BTreeMap<String, String> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("fd="))
                .map(|l| l.split_once(' ').map(|(n, t)| (n.to_owned(), t.to_owned())).unwrap())
                .collect();
            let given: std::collections::BTreeMap<String, String> = serde_json::from_value(r["given"].clone()).unwrap();
            assert_eq!(held, given, "the server holds exactly what the gateway gave it: {r}");
            assert!(given["0"].starts_with("/dev/pts/"), "{r}");
            if extra_fd {
                assert_eq!(given.len(), 4, "the control: the extra fd is seen: {r}");
            } else {
                assert_eq!(held.keys().collect::<Vec<_>>(), ["0", "1", "2"], "{r}");
            }
            eprintln!("extra fd {extra_fd}: {held:?} in {:?}", t.elapsed());
        }
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

/// Every directory under `cg`, as paths relative to it, sorted. One
/// removed during the walk (a guardian cleaning up) is not in the tree.
fn tree_snapshot(cg: &procscope::Cgroup) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![cg.path().to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path().strip_prefix(cg.path()).unwrap().display().to_string());
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A file with the execute bit in no format the kernel runs (neither ELF
/// nor `#!`, or a `#!` line without an interpreter; binfmt_misc is not in
/// use on the test hosts) is refused with 126, a script whose interpreter
/// does not exist with 127 (as shells and `execve` have it), before
/// anything is placed, the message naming the file and what is wrong with
/// it: the tree is the same before and after, also when the `exec` would
/// have joined a session that exists. With binfmt_misc in use (a stand-in
/// in a mount namespace of the test's own) the kernel decides: placed, then
/// 126 from `execve`, and the guardian removes it. The control: a `#!`
/// script of the same mode runs.
#[tokio::test]
async fn exec_refuses_a_file_the_kernel_cannot_run_before_placing() {
    let env = TestEnv::new();
    within(30, async {
        let (mut held, _out) = exec_ready(&env, &["--session", "held"], &["ready", "sleep", "3600"]);
        let before = tree_snapshot(&env.root);
        assert_eq!(before.len(), 3, "an instance, the session, its command: {before:?}");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let file = dir.join(format!("no-format-{}", nanos()));
        let fix = "add such a line";
        let cases: [(&[u8], i32, &str, &str); 5] = [
            (b"no format at all", 126, "it starts with the bytes 6e 6f 20 66 (\"no f\"), neither an ELF header", fix),
            (b"", 126, "it is empty", fix),
            (b"\x7fEL", 126, "neither an ELF header (7f 45 4c 46) nor `#!`", fix),
            (b"#! \necho hi\n", 126, "its `#!` line names no interpreter", fix),
            (
                b"#!/nonexistent/interpreter -x\necho hi\n",
                127,
                "names the interpreter /nonexistent/interpreter, which does not exist",
                "install it, or fix the line",
            ),
        ];
        for (content, code, needle, fix) in cases {
            std::fs::write(&file, content).unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let t = Instant::now();
            let out = run(&env, &["exec", "--session", "held", "--", file.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{content:?}: {err}");
            assert!(err.contains(&file.display().to_string()), "the message names the file: {err}");
            assert!(err.contains(needle), "{content:?}: the message lacks {needle:?}: {err}");
            assert!(err.contains(fix), "the message says how to fix it: {err}");
            assert_eq!(tree_snapshot(&env.root), before, "{content:?}: nothing was placed");
            eprintln!("{:?} refused in {:?}", String::from_utf8_lossy(content), t.elapsed());
        }
        // With binfmt_misc in use, the format is the kernel's to judge: in a
        // mount namespace of its own, where a stand-in for binfmt_misc says
        // "enabled" and lists an entry, the same file is placed, `execve`
        // refuses it (126 all the same), and the guardian removes what was
        // placed.
        std::fs::write(&file, b"no format at all").unwrap();
        let script = "mount -t tmpfs binfmt-standin /proc/sys/fs/binfmt_misc && \
                      echo enabled > /proc/sys/fs/binfmt_misc/status && \
                      touch /proc/sys/fs/binfmt_misc/an-entry && \
                      exec \"$0\" -v exec --root \"$1\" -- \"$2\"";
        let out = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", script, PROCSCOPE])
            .arg(env.path())
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .expect("unshare (util-linux)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(126), "{err}");
        assert!(err.contains("action=\"exec.place\""), "placed, the kernel deciding: {err}");
        assert!(err.contains("Exec format error"), "refused by execve: {err}");
        for _ in 0..500 {
            if tree_snapshot(&env.root) == before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tree_snapshot(&env.root), before, "the guardian removed what was placed");
        // The control: a script with `#!` runs.
        std::fs::write(&file, "#!/bin/sh\nexit 7\n").unwrap();
        let out = run(&env, &["exec", "--session", "held", "--", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(7), "the script ran: {out:?}");
        std::fs::remove_file(&file).unwrap();
        signal(&held, rustix::process::Signal::TERM);
        assert_eq!(held.wait().unwrap().signal(), Some(libc::SIGTERM));
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn exec_ends_the_command_when_its_parent_dies() {
    let env = TestEnv::new();
    {
        // A parent shell that starts the wrapper, prints its pid, and waits.
        let script =
            format!("{PROCSCOPE} exec --root {} -- {FIXTURE} self ready sleep 3600 & wait", env.path().display());
        let mut parent = std::process::Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(parent.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0);
            let done = line.trim() == "ready";
            lines.push(line.trim().to_owned());
            if done {
                break;
            }
        }
        let cmd_pid: i32 = field(&lines, "pid").parse().unwrap();
        let cmd = procscope::PidFd::open(cmd_pid as u32).unwrap();
        signal(&parent, rustix::process::Signal::KILL);
        parent.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(5), cmd.exited())
            .await
            .expect("the command outlived its gateway")
            .unwrap();
        // The wrapper removes what it made once the command is gone.
        env.wait_root_empty().await;
    }
    env.finish().await;
}

/// Verified endings by the guardian: a command run with `--no-seal` moves
/// itself out of its cgroup (into one the test made) and ignores SIGTERM.
/// When its gateway is SIGKILLed, the guardian's `cgroup.kill` of the
/// instance misses it; the guardian kills it through the pidfd of the main
/// process it holds, and checks that it died. The command had left its
/// cgroup before the kill (its `/proc/PID/cgroup`, read then).
#[tokio::test]
async fn the_guardian_kills_a_command_that_left_its_cgroup_when_the_gateway_dies() {
    let env = TestEnv::new();
    {
        let outside = env.cgroup("outside");
        let procs = outside.path().join("cgroup.procs");
        let script = format!(
            "{PROCSCOPE} exec --root {} --no-seal -- {FIXTURE} ignore-term try-write {} 0 self ready sleep 3600 & wait",
            env.path().display(),
            procs.display()
        );
        let mut parent = std::process::Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(parent.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "{lines:?}");
            let done = line.trim() == "ready";
            lines.push(line.trim().to_owned());
            if done {
                break;
            }
        }
        assert!(lines.iter().any(|l| l.ends_with("cgroup.procs=ok")), "it moved itself out: {lines:?}");
        let cmd_pid: u32 = field(&lines, "pid").parse().unwrap();
        let cmd = procscope::PidFd::open(cmd_pid).unwrap();
        let outside_rel = cgroup_rel(&outside);
        assert_eq!(cgroup_of(cmd_pid).as_deref(), Some(outside_rel.as_str()), "it left its cgroup before the kill");
        signal(&parent, rustix::process::Signal::KILL);
        parent.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(10), cmd.exited())
            .await
            .expect("the guardian killed the command that left its cgroup")
            .unwrap();
        env.wait_root_empty_but("outside").await;
        wait_no_children(&outside).await;
        env.root.remove_child("outside").unwrap();
    }
    env.finish().await;
}

#[tokio::test]
async fn exec_ends_grandchildren_the_command_left_behind() {
    let env = TestEnv::new();
    {
        // The command exits at once; a daemon, a child holding its stdout and
        // two more children stay. The guardian ends them (SIGTERM) once the
        // command has exited, and removes the cgroups: `output()` sees EOF
        // only when the stdout holder is gone. A grace of 10 s tells SIGTERM
        // from SIGKILL after the grace, whatever the start-ups cost (seconds
        // on a loaded VM under TCG).
        let t = Instant::now();
        let out = run(
            &env,
            &[
                "exec",
                "--session",
                "leaver",
                "--grace",
                "10s",
                "--",
                FIXTURE,
                "daemon",
                "hold-stdout",
                "spawn",
                "2",
                "exit",
                "0",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        env.wait_root_empty().await;
        assert!(!env.root.is_populated().unwrap(), "a daemon or child survived");
        assert!(t.elapsed() < Duration::from_secs(10), "ended by SIGTERM, before the grace ran out: {:?}", t.elapsed());
    }
    env.finish().await;
}

#[tokio::test]
async fn two_execs_share_a_session_and_end_ends_both() {
    let env = TestEnv::new();
    {
        let (mut a, _oa) = exec_ready(&env, &["--session", "job-1"], &["ready", "sleep", "3600"]);
        let (mut b, _ob) = exec_ready(&env, &["--session", "job-1"], &["daemon", "ready", "sleep", "3600"]);
        let (mut other, _oo) = exec_ready(&env, &["--session", "job-2"], &["ready", "sleep", "3600"]);
        let s = sessions(&env);
        let job1: Vec<_> = s.iter().filter(|s| s["id"] == "job-1").collect();
        assert_eq!(job1.len(), 1, "{s:?}");
        assert_eq!(job1[0]["processes"], 3, "both commands and the daemon: {s:?}");
        assert_eq!(job1[0]["state"], "active");

        // An id that matches nothing makes `end` fail, after it ended the rest.
        let out = run(&env, &["end", "--json", "job-1", "job-9"]);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("job-9"), "{out:?}");
        let v = json(&out);
        assert_eq!(v["sessions"], 1, "{v}");
        assert_eq!(v["terminated"], 3, "{v}");
        assert_eq!(v["not_found"], serde_json::json!(["job-9"]));
        assert_eq!(a.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert_eq!(b.wait().unwrap().signal(), Some(libc::SIGTERM));
        // --missing-ok: the old behaviour, for scripts.
        let out = run(&env, &["end", "--missing-ok", "job-9"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        // The other session was not touched.
        let s = sessions(&env);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0]["id"], "job-2");
        assert!(other.try_wait().unwrap().is_none());
        signal(&other, rustix::process::Signal::TERM);
        other.wait().unwrap();
        env.wait_root_empty().await;
    }
    env.finish().await;
}

#[tokio::test]
async fn exec_passes_stdio_through_unchanged() {
    let env = TestEnv::new();
    {
        let mut child = procscope(&env, &["exec", "--", FIXTURE, "echo"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // A large JSON-RPC exchange: 20000 requests with varied payloads.
        let mut payload = Vec::new();
        for i in 0..20_000u32 {
            let text: String = (0..(i % 300)).map(|k| char::from(b'a' + ((i + k) % 26) as u8)).collect();
            writeln!(payload, r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}\u00e9"}}}}}}"#).unwrap();
        }
        let mut stdin = child.stdin.take().unwrap();
        let sent = payload.clone();
        let writer = std::thread::spawn(move || {
            stdin.write_all(&sent).unwrap();
        });
        let mut stdout = child.stdout.take().unwrap();
        let mut got = vec![0u8; 64 * 1024];
        let n = stdout.read(&mut got).unwrap();
        got.truncate(n);
        stdout.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == payload, "{} of {} bytes came back, or they differ", got.len(), payload.len());
        assert!(child.wait().unwrap().success());
        eprintln!("exec: {} bytes passed through", payload.len());
        env.wait_root_empty().await;
    }
    env.finish().await;
}

/// `ps` and `sweep` against a tree with an active, an orphaned and a stale
/// session; each sweep scope removes exactly its share.
#[tokio::test]
async fn ps_and_sweep_report_and_end_by_scope() {
    let env = TestEnv::new();
    {
        // Active: a wrapper whose owner (this test) runs.
        let (mut active, _o) = exec_ready(&env, &["--session", "live"], &["ready", "sleep", "3600"]);
        // Orphaned: a session of a live owner marked orphaned (as a supervisor's guard does).
        let (mut orphan, _o2) = exec_ready(&env, &["--session", "left"], &["ignore-term", "ready", "sleep", "3600"]);
        let me = procscope::Owner::this_process().unwrap();
        let left = procscope::Cgroup::open(env.path().join(me.instance_name()).join("s-left")).unwrap();
        left.set_meta("state", "orphaned").unwrap();
        // Stale: a gateway SIGKILLed without a guardian.
        let mut gw = Gateway(
            std::process::Command::new(FIXTURE)
                .args(["gateway", env.path().to_str().unwrap(), "1", "0"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut gw_out = BufReader::new(gw.stdout.take().unwrap());
        let mut line = String::new();
        let mut instance = String::new();
        while gw_out.read_line(&mut line).unwrap() > 0 && line.trim() != "ready" {
            if let Some(i) = line.trim().strip_prefix("instance=") {
                instance = i.to_owned();
            }
            line.clear();
        }
        // Its helper daemonized first: on Linux 7.1 and later the kernel
        // kills the gateway's direct children with it (CLONE_PIDFD_AUTOKILL),
        // and the helper is what still runs.
        drop(settled_daemons(&procscope::Cgroup::open(&instance).unwrap(), 1).await);
        signal(&gw, rustix::process::Signal::KILL);
        gw.wait().unwrap();

        let mut states: Vec<(String, String)> = sessions(&env)
            .iter()
            .map(|s| (s["id"].as_str().unwrap().into(), s["state"].as_str().unwrap().into()))
            .collect();
        states.sort();
        assert_eq!(
            states,
            [("g0".into(), "stale".into()), ("left".into(), "orphaned".into()), ("live".into(), "active".into())]
        );
        let ps = run(&env, &["ps"]);
        let table = String::from_utf8_lossy(&ps.stdout);
        assert!(
            table.contains("INSTANCE") && table.contains("stale") && table.contains("procscope-fixture"),
            "{table}"
        );

        let v = json(&run(&env, &["sweep", "--json", "--grace", "100ms"]));
        assert_eq!((v["sessions"].as_u64(), v["removed"].as_u64()), (Some(1), Some(2)), "stale only: {v}");
        assert_eq!(v["leaks_prevented"].as_u64(), Some(1), "the dead gateway's server still ran: {v}");
        let v = json(&run(&env, &["sweep", "--orphans", "--json", "--grace", "100ms"]));
        assert_eq!((v["sessions"].as_u64(), v["killed"].as_u64()), (Some(1), Some(1)), "the orphan: {v}");
        assert_eq!(v["leaks_prevented"].as_u64(), Some(1), "{v}");
        assert_eq!(orphan.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(sessions(&env).len(), 1);
        // --all spares a live owner's instance, and says so; --force ends it.
        let out = run(&env, &["sweep", "--all", "--json", "--grace", "100ms"]);
        let v = json(&out);
        assert_eq!(v["sessions"].as_u64(), Some(0), "{v}");
        assert_eq!(v["skipped_live"][0]["owner_pid"], std::process::id(), "{v}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--force"), "{out:?}");
        assert!(active.try_wait().unwrap().is_none(), "the live owner's command still runs");
        let out = run(&env, &["sweep", "--all", "--force", "--json", "--grace", "100ms"]);
        let v = json(&out);
        assert_eq!(v["sessions"].as_u64(), Some(1), "{v}");
        assert_eq!(v["leaks_prevented"].as_u64(), Some(0), "an active session is no leak: {v}");
        assert_eq!(active.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert!(sessions(&env).is_empty());
        // --all leaves alone what procscope did not make.
        let foreign = env.cgroup("not-ours");
        let v = json(&run(&env, &["sweep", "--all", "--force", "--json"]));
        assert_eq!(v["sessions"].as_u64(), Some(0), "{v}");
        assert!(foreign.path().exists());
        env.root.remove_child("not-ours").unwrap();
        env.wait_root_empty().await;
    }
    env.finish().await;
}

/// `ps --watch` refreshes until interrupted, shows each session's CPU use
/// since the last refresh and its memory trend, and fits 80 columns, however
/// long the names. Its JSON form is one object per refresh; bad intervals
/// are refused with a hint.
#[tokio::test]
async fn ps_watches_cpu_and_memory_in_80_columns() {
    let env = TestEnv::new();
    {
        let long_id = "a-session-id-much-longer-than-its-column";
        let (mut busy, _o) = exec_ready(&env, &["--session", long_id], &["ready", "spin", "60"]);
        let watch = |extra: &[&str]| {
            let mut args = vec!["ps", "--watch", "300ms"];
            args.extend_from_slice(extra);
            let child = procscope(&env, &args).env("COLUMNS", "80").stdout(Stdio::piped()).spawn().unwrap();
            // Three refreshes take 600 ms; a loaded VM may take seconds to start the binary.
            std::thread::sleep(Duration::from_millis(3000));
            signal(&child, rustix::process::Signal::TERM);
            child.wait_with_output().unwrap()
        };

        let out = watch(&[]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let refreshes = text.matches("root: ").count();
        assert!(refreshes >= 3, "{refreshes} refreshes in 3 s at 300 ms:\n{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{} columns: {line:?}", line.chars().count());
        }
        let rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("a-session-id")).collect();
        assert_eq!(rows.len(), refreshes, "{text}");
        assert!(rows.iter().all(|r| r.contains('…')), "the long id is cut, visibly: {rows:?}");
        // From the second refresh on: CPU since the last one (the fixture
        // spins a whole CPU) and a memory trend.
        let pct: f64 = rows[2]
            .split_whitespace()
            .find_map(|w| w.strip_suffix('%'))
            .unwrap_or_else(|| panic!("no CPU % in {:?}", rows[2]))
            .parse()
            .unwrap();
        assert!(pct > 20.0, "a spinning session uses CPU: {pct}% in {:?}", rows[2]);
        assert!(rows[2].chars().filter(|c| ('▁'..='█').contains(c)).count() >= 2, "{:?}", rows[2]);

        let out = watch(&["--json"]);
        assert!(out.status.success(), "{out:?}");
        let lines: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.len() >= 3, "{lines:?}");
        assert_eq!(lines[0]["instances"][0]["sessions"][0]["id"], long_id);
        assert!(
            lines[2]["cpu_percent"].as_object().unwrap().values().any(|p| p.as_f64().unwrap() > 20.0),
            "{}",
            lines[2]
        );

        for (bad, hint) in [("0", "never pause"), ("2", "unit")] {
            let out = run(&env, &["ps", "--watch", bad]);
            assert_eq!(out.status.code(), Some(2), "{out:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains(hint), "{out:?}");
        }

        signal(&busy, rustix::process::Signal::TERM);
        assert_eq!(busy.wait().unwrap().signal(), Some(libc::SIGTERM));
        env.wait_root_empty().await;
    }
    env.finish().await;
}

#[tokio::test]
async fn doctor_reports_this_host() {
    let env = TestEnv::new();
    {
        let out = run(&env, &["doctor", "--json"]);
        let v = json(&out);
        for key in [
            "kernel",
            "cgroup2_mount",
            "hybrid",
            "root",
            "delegated",
            "controllers",
            "spawn_mechanism",
            "kill_mechanism",
            "problems",
        ] {
            assert!(v.get(key).is_some(), "doctor JSON lacks {key}: {v}");
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(v["hybrid"], mountinfo.contains(" - cgroup "));
        assert_eq!(v["spawn_mechanism"], "clone3_into_cgroup", "{v}");
        // Each kernel's mechanisms: the fallbacks below the release that
        // brought the feature (5.10 in the VMs), the new paths from it on.
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        let at_least = |major, minor| procscope::testing::kernel_at_least(&release, major, minor);
        let kill = if at_least(5, 14) { "cgroup_kill" } else { "freeze_kill_thaw" };
        assert_eq!(v["kill_mechanism"], kill, "Linux {release}: {v}");
        let membership = if at_least(6, 13) { "pidfd_get_info" } else { "cgroup_procs_reread" };
        assert_eq!(v["membership_check"], membership, "Linux {release}: {v}");
        let exit_status = if at_least(6, 15) { "pidfd_info_exit" } else { "children_only" };
        assert_eq!(v["exit_status"], exit_status, "Linux {release}: {v}");
        // The tests run as root: CAP_SYS_ADMIN.
        let auto_kill = if at_least(7, 1) { "pidfd_autokill" } else { "off" };
        assert_eq!(v["auto_kill"], auto_kill, "Linux {release}: {v}");
        // Sealing's read-only view: mount_setattr from 5.12, a remount per mount before.
        let read_only_by = if at_least(5, 12) { "mount_setattr" } else { "remount" };
        assert_eq!(v["sealing"]["read_only_by"], read_only_by, "Linux {release}: {v}");
        assert_eq!(v["root"], env.path().to_str().unwrap());
        // The kill fallback is a note, not a degradation.
        assert_eq!(out.status.code(), Some(0), "no degradation on this host: {v}");
        let text = run(&env, &["doctor"]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("spawn mechanism") && text.contains("clone3_into_cgroup"), "{text}");
        for (line, value) in [
            ("kill mechanism", kill),
            ("membership check", membership),
            ("exit status", exit_status),
            ("auto kill", auto_kill),
        ] {
            assert!(text.lines().any(|l| l.starts_with(line) && l.contains(value)), "{line}: {value}?\n{text}");
        }
        assert!(env.root.children().unwrap().is_empty(), "the probe cgroup was removed");
    }
    env.finish().await;
}

#[tokio::test]
async fn the_demo_leaves_nothing_behind() {
    let env = TestEnv::new();
    {
        let out = run(&env, &["demo", "--ticks", "2", "--jobs", "6", "--cancel-ratio", "0.5", "--compare-naive"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.lines().any(|l| l == "processes left behind: 0"), "{text}");
        let naive: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("without procscope: processes left behind: "))
            .and_then(|r| r.split(' ').next()?.parse().ok())
            .unwrap();
        assert!(naive > 0, "the naive run should leak the daemonized helpers: {text}");
    }
    env.finish().await;
}

/// Every line of `stderr` parsed as a JSON object (`--log-format json`).
fn json_lines(stderr: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(v.is_object(), "{line}");
            for key in ["timestamp", "level", "target", "message"] {
                assert!(v[key].is_string(), "{key} missing: {line}");
            }
            v
        })
        .collect()
}

/// Whether a text log line is a structured event at INFO (`LEVEL
/// [spans: ]procscope::event: message fields`).
fn is_event_line(line: &str) -> bool {
    line.contains(" INFO ") && line.contains(" procscope::event: ")
}

/// The structured events with this `action`. `cgroup.kill` stands for the
/// kill whichever way it went: before Linux 5.14 it is `kill.fallback`.
fn events<'a>(lines: &'a [Value], action: &str) -> Vec<&'a Value> {
    let kill = action == "cgroup.kill";
    lines
        .iter()
        .filter(|v| {
            v["target"] == "procscope::event" && (v["action"] == action || (kill && v["action"] == "kill.fallback"))
        })
        .collect()
}

/// The one event with this `action` about `session`.
fn event_of<'a>(lines: &'a [Value], action: &str, session: &str) -> &'a Value {
    let found: Vec<_> = events(lines, action).into_iter().filter(|v| v["session"] == session).collect();
    assert_eq!(found.len(), 1, "one {action} event of session {session}: {lines:#?}");
    found[0]
}

/// The fields every structured event carries: `action`, a `cgroup` under
/// the test root, `result` "ok", at INFO.
fn assert_event_fields(env: &TestEnv, v: &Value) {
    assert_eq!(v["level"], "INFO", "{v}");
    assert!(v["action"].is_string(), "{v}");
    let cgroup = v["cgroup"].as_str().unwrap_or_else(|| panic!("no cgroup: {v}"));
    assert!(std::path::Path::new(cgroup).starts_with(env.path()), "cgroup {cgroup} is not under the test root: {v}");
    assert_eq!(v["result"], "ok", "{v}");
    if let Some(instance) = v.get("instance") {
        let instance = instance.as_str().unwrap();
        assert!(instance.starts_with("i-") && cgroup.contains(&format!("/{instance}")), "{v}");
    }
    if let Some(session) = v.get("session") {
        assert!(cgroup.contains(&format!("/s-{}", session.as_str().unwrap())), "{v}");
    }
    if let Some(pid) = v.get("pid") {
        assert!(pid.as_u64().is_some_and(|p| p > 0), "the pid is a number: {v}");
    }
}

/// A gateway (the fixture, one session, no guardian) SIGKILLed and reaped
/// once its child has daemonized its helper: its instance is stale, and
/// the helper still runs (on Linux 7.1 and later the kernel kills the
/// gateway's direct children with it, CLONE_PIDFD_AUTOKILL). Returns the
/// instance's path and the gateway's pid.
async fn stale_gateway(env: &TestEnv) -> (String, u32) {
    let mut gw = Gateway(
        std::process::Command::new(FIXTURE)
            .args(["gateway", env.path().to_str().unwrap(), "1", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(gw.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the gateway ended before ready: {lines:?}");
        let done = line.trim() == "ready";
        lines.push(line.trim().to_owned());
        if done {
            break;
        }
    }
    drop(settled_daemons(&procscope::Cgroup::open(field(&lines, "instance")).unwrap(), 1).await);
    let pid = gw.id();
    signal(&gw, rustix::process::Signal::KILL);
    gw.wait().unwrap();
    (field(&lines, "instance").to_owned(), pid)
}

/// `--log-format json -v`: `exec` logs its placing and the guardian's start;
/// `sweep --all --force` logs the recovery of a dead gateway's instance, the
/// SIGTERM step and `cgroup.kill` of each session, each session's end and
/// the sweep, one JSON object per line with the named fields.
#[tokio::test]
async fn exec_and_sweep_log_json_events() {
    let env = TestEnv::new();
    within(60, async {
        let me = procscope::Owner::this_process().unwrap();
        let args = ["exec", "-v", "--log-format", "json", "--session", "s", "--"];
        let mut command = procscope(&env, &args)
            .args([FIXTURE, "ignore-term", "ready", "sleep", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(command.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != "ready" {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "exec ended before ready");
        }
        let (stale, gw_pid) = stale_gateway(&env).await;

        let out = run(&env, &["sweep", "-v", "--log-format", "json", "--all", "--force", "--grace", "100ms"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(command.wait().unwrap().signal(), Some(libc::SIGKILL), "ignores SIGTERM: killed");
        let mut exec_err = Vec::new();
        command.stderr.take().unwrap().read_to_end(&mut exec_err).unwrap();

        // exec: its placing, and the guardian of its instance.
        let lines = json_lines(&exec_err);
        let place = event_of(&lines, "exec.place", "s");
        assert_event_fields(&env, place);
        assert_eq!(place["pid"], command.id(), "the pid placed is the command's: {place}");
        assert_eq!(place["owner"], std::process::id(), "{place}");
        assert_eq!(place["instance"], me.instance_name(), "{place}");
        let leaf = format!("/s-s/p-{}-", command.id());
        assert!(place["cgroup"].as_str().unwrap().contains(&leaf), "{place}");
        assert_eq!(place["spans"][0]["name"], "exec", "{place}");
        assert_eq!(place["spans"][0]["program"], FIXTURE, "{place}");
        let guardian = events(&lines, "guardian.start");
        assert_eq!(guardian.len(), 1, "{lines:#?}");
        assert_event_fields(&env, guardian[0]);
        assert_eq!(guardian[0]["role"], "exec", "{}", guardian[0]);
        assert_eq!(guardian[0]["instance"], me.instance_name());

        // sweep: every line JSON; the events with their fields.
        let lines = json_lines(&out.stderr);
        for v in lines.iter().filter(|v| v["target"] == "procscope::event") {
            assert_event_fields(&env, v);
        }
        let stale_name = stale.rsplit('/').next().unwrap();
        let recovery = events(&lines, "recovery");
        assert_eq!(recovery.len(), 1, "{lines:#?}");
        let recovery = recovery[0];
        assert_eq!(recovery["instance"], stale_name, "{recovery}");
        assert_eq!(recovery["cgroup"], stale.as_str(), "{recovery}");
        assert_eq!(recovery["owner"], gw_pid, "{recovery}");
        assert_eq!((recovery["sessions"].as_u64(), recovery["leaks_prevented"].as_u64()), (Some(1), Some(1)));
        // The dead gateway's session: SIGTERM was enough.
        let end = event_of(&lines, "session.end", "g0");
        assert_eq!((end["instance"].as_str(), end["by"].as_str()), (Some(stale_name), Some("sweep")), "{end}");
        assert!(end["processes"].as_u64().is_some_and(|n| n >= 1) && end["killed"] == 0, "{end}");
        assert!(end["elapsed_ms"].is_u64(), "{end}");
        let term = event_of(&lines, "signal", "g0");
        assert_eq!(term["signal"], "SIGTERM", "{term}");
        assert_eq!(term["processes"], end["processes"], "{term}");
        // The live owner's session: SIGTERM ignored, cgroup.kill.
        let term = event_of(&lines, "signal", "s");
        assert_eq!((term["signal"].as_str(), term["processes"].as_u64()), (Some("SIGTERM"), Some(1)), "{term}");
        assert_eq!(term["instance"], me.instance_name());
        let kill = event_of(&lines, "cgroup.kill", "s");
        assert_eq!(kill["processes"], 1, "{kill}");
        let end = event_of(&lines, "session.end", "s");
        assert_eq!((end["processes"].as_u64(), end["killed"].as_u64()), (Some(1), Some(1)), "{end}");
        assert!(
            lines.iter().position(|v| v == term) < lines.iter().position(|v| v == kill)
                && lines.iter().position(|v| v == kill) < lines.iter().position(|v| v == end),
            "SIGTERM, then cgroup.kill, then the end: {lines:#?}"
        );
        // The sweep across the root, last.
        let sweep = events(&lines, "sweep");
        assert_eq!(sweep.len(), 1, "{lines:#?}");
        let sweep = sweep[0];
        assert_eq!(sweep["scope"], "all", "{sweep}");
        assert_eq!(sweep["cgroup"], env.path().to_str().unwrap(), "{sweep}");
        assert!(sweep.get("instance").is_none() && sweep.get("session").is_none(), "{sweep}");
        assert_eq!((sweep["sessions"].as_u64(), sweep["killed"].as_u64()), (Some(2), Some(1)), "{sweep}");
        assert_eq!(lines.last(), Some(sweep), "{lines:#?}");
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

/// The demo (a real supervisor) with `--log-format json -v`: a `spawn`
/// event per server with its pid, program and session (also in its span),
/// each session let go or ended, SIGTERM steps, `cgroup.kill` of the server
/// that ignores SIGTERM, and the tick's sweep of the orphans.
#[tokio::test]
async fn the_demo_logs_json_events() {
    let env = TestEnv::new();
    let out =
        run(&env, &["demo", "-v", "--log-format", "json", "--ticks", "1", "--jobs", "3", "--cancel-ratio", "0.5"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("processes left behind: 0"), "{out:?}");
    let lines = json_lines(&out.stderr);
    for v in lines.iter().filter(|v| v["target"] == "procscope::event") {
        assert_event_fields(&env, v);
    }
    let guardian = events(&lines, "guardian.start");
    assert_eq!(guardian.len(), 1, "{lines:#?}");
    let instance = guardian[0]["instance"].as_str().unwrap();
    assert_eq!(guardian[0]["role"], "supervisor");
    let spawns = events(&lines, "spawn");
    assert_eq!(spawns.len(), 3, "{lines:#?}");
    for j in 0..spawns.len() {
        let session = format!("t0-j{j}");
        let spawn = event_of(&lines, "spawn", &session);
        assert_eq!(spawn["instance"], instance, "{spawn}");
        assert!(spawn["pid"].is_u64(), "{spawn}");
        assert!(spawn["program"].as_str().is_some_and(|p| p.ends_with("procscope")), "{spawn}");
        assert_eq!(spawn["cgroup"], format!("{}/{instance}/s-{session}", env.path().display()), "{spawn}");
        assert_eq!(spawn["span"]["name"], "session", "{spawn}");
        assert_eq!(spawn["span"]["id"], session.as_str(), "the session span: {spawn}");
        // Each session let go (or removed by its guard), then ended.
        let let_go = events(&lines, "session.orphan").into_iter().chain(events(&lines, "session.end"));
        assert!(let_go.filter(|v| v["session"] == session.as_str()).count() >= 1, "{session}: {lines:#?}");
    }
    // j2 runs the server that ignores SIGTERM and stays after EOF: the
    // tick's sweep kills it.
    let kill = event_of(&lines, "cgroup.kill", "t0-j2");
    assert_eq!(kill["processes"], 1, "{kill}");
    assert_eq!(kill["span"]["name"], "sweep", "{kill}");
    let end = event_of(&lines, "session.end", "t0-j2");
    assert_eq!((end["by"].as_str(), end["killed"].as_u64()), (Some("sweep"), Some(1)), "{end}");
    assert!(events(&lines, "signal").iter().any(|v| v["signal"] == "SIGTERM"), "{lines:#?}");
    let sweeps = events(&lines, "sweep");
    assert_eq!(sweeps.len(), 1, "the tick's sweep (shutdown's found nothing: DEBUG): {lines:#?}");
    assert_eq!((sweeps[0]["scope"].as_str(), sweeps[0]["instance"].as_str()), (Some("orphans"), Some(instance)));
    assert!(sweeps[0]["sessions"].as_u64().is_some_and(|n| n >= 1), "{}", sweeps[0]);
    env.finish().await;
}

/// The events in text with `-v`; nothing without it (warnings only, in
/// either format); `RUST_LOG=procscope::event=info` selects exactly them.
#[tokio::test]
async fn events_show_with_v_in_text_and_only_then() {
    let env = TestEnv::new();
    within(60, async {
        let out = run(&env, &["exec", "-v", "--session", "t", "--", "true"]);
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in [r#"action="exec.place""#, r#"action="guardian.start""#, r#"session="t""#] {
            assert!(err.lines().any(|l| is_event_line(l) && l.contains(needle)), "{needle}: {err}");
        }
        env.wait_root_empty().await;
        for format in ["text", "json"] {
            let out = run(&env, &["exec", "--log-format", format, "--session", "t", "--", "true"]);
            assert!(out.status.success(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{format}: nothing logged by default");
            env.wait_root_empty().await;
        }

        // A sweep with work to do: silent without -v, in either format.
        stale_gateway(&env).await;
        let out = run(&env, &["sweep", "--log-format", "json", "--json", "--grace", "100ms"]);
        assert_eq!(json(&out)["sessions"], 1, "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "nothing logged by default");
        // -v, text.
        stale_gateway(&env).await;
        let out = run(&env, &["sweep", "-v", "--grace", "100ms"]);
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for action in ["signal", "session.end", "recovery", "sweep"] {
            let needle = format!(r#"action="{action}""#);
            assert!(
                err.lines().any(|l| is_event_line(l) && l.contains(&needle) && l.contains("result=ok")),
                "{action}: {err}"
            );
        }
        // RUST_LOG: the events and nothing else.
        stale_gateway(&env).await;
        let out = procscope(&env, &["sweep", "--log-format", "json", "--grace", "100ms"])
            .env("RUST_LOG", "procscope::event=info")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let lines = json_lines(&out.stderr);
        assert!(lines.iter().all(|v| v["target"] == "procscope::event"), "{lines:#?}");
        assert_eq!(events(&lines, "recovery").len(), 1, "{lines:#?}");
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn bad_arguments_exit_2_with_a_clear_message_and_change_nothing() {
    let env = TestEnv::new();
    {
        let cases: &[(&[&str], &str)] = &[
            (&["exec"], "CMD"),
            (&["exec", "--"], "CMD"),
            (&["exec", "--", ""], "empty"),
            (&["exec", "--session", "../x", "--", "true"], "session id"),
            (&["exec", "--session", "cgroup.procs", "--", "true"], "session id"),
            (&["exec", "--memory-max", "10QB", "--", "true"], "memory.max"),
            (&["exec", "--memory-max", "-1", "--", "true"], "memory.max"),
            (&["exec", "--pids-max", "0", "--", "true"], "pids.max"),
            (&["exec", "--cpu-max", "lots", "--", "true"], "cpu.max"),
            (&["exec", "--grace", "-1s", "--", "true"], "grace"),
            (&["exec", "--uid", "5", "--", "true"], "--gid"),
            (&["end"], "ID"),
            (&["end", "bad/id"], "session id"),
            (&["end", "--grace", "soon", "x"], "grace"),
            (&["sweep", "--all", "--orphans"], "cannot be used with"),
            (&["sweep", "--grace", "10 fortnights"], "grace"),
            (&["demo", "--cancel-ratio", "2"], "cancel-ratio"),
            (&["demo", "--jobs", "0"], "at least 1"),
            (&["ps", "--nope"], "--nope"),
        ];
        for (args, needle) in cases {
            let out = run(&env, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(needle), "{args:?}: message lacks {needle:?}: {err}");
            assert!(env.root.children().unwrap().is_empty(), "{args:?} created something");
        }
        // Roots that are not cgroup2, or missing.
        for root in ["/tmp", "/nonexistent/cgroup"] {
            for sub in [&["ps"][..], &["sweep"], &["doctor"], &["end", "x"], &["exec", "--", "true"]] {
                let out = std::process::Command::new(PROCSCOPE)
                    .arg(sub[0])
                    .args(["--root", root])
                    .args(&sub[1..])
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                let code = out.status.code();
                if sub[0] == "doctor" {
                    assert_eq!(code, Some(1), "doctor --root {root}: containment degrades: {err}");
                } else {
                    assert_eq!(code, Some(2), "{sub:?} --root {root}: {err}");
                    assert!(err.contains(root), "{sub:?}: {err}");
                }
            }
        }
    }
    env.finish().await;
}

/// The shipped (release) `exec` keeps no process of its own per command: the
/// command is the gateway's child. The instance's guardian (one process, not
/// one per command) stays within 2 MiB PSS with 3 commands running.
/// `scripts/test` builds the release binary and runs this with
/// `PROCSCOPE_RELEASE_BIN` set.
#[tokio::test]
#[ignore = "needs the release build: scripts/test runs it with PROCSCOPE_RELEASE_BIN"]
async fn exec_guardian_pss_release_build() {
    let bin = std::env::var("PROCSCOPE_RELEASE_BIN").expect("set PROCSCOPE_RELEASE_BIN to target/release/procscope");
    let env = TestEnv::new();
    {
        let mut children = Vec::new();
        for _ in 0..3 {
            let mut child = std::process::Command::new(&bin)
                .args(["exec", "--root", env.path().to_str().unwrap(), "--", FIXTURE, "ready", "wait-eof"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready");
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
            assert_eq!(comm.trim(), "procscope-fixtu", "the gateway's child is the command itself");
            children.push(child);
        }
        let me = procscope::Owner::this_process().unwrap();
        let instance = procscope::Cgroup::open(env.path().join(me.instance_name())).unwrap();
        let guardian = instance.meta("guardian").unwrap().expect("the instance records its guardian");
        let pid: i32 = guardian.split(' ').next().unwrap().parse().unwrap();
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        let pss_kib: u64 = smaps
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let guardians = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("cmdline")).is_ok_and(|c| c.starts_with("procscope-guardian"))
            })
            .filter(|e| {
                std::fs::read_to_string(e.path().join("environ"))
                    .is_ok_and(|c| c.contains(env.path().to_str().unwrap()))
            })
            .count();
        for mut child in children {
            drop(child.stdin.take());
            assert!(child.wait().unwrap().success());
        }
        env.wait_root_empty().await;
        assert_eq!(guardians, 1, "one guardian for the gateway's three commands");
        assert!(pss_kib <= 2048, "release exec guardian PSS {pss_kib} KiB");
        eprintln!("release exec: 0 procscope processes per command; guardian PSS {pss_kib} KiB for 3 commands");
    }
    env.finish().await;
}

/// The guardian of an `exec` instance, once gone, is started again by the
/// next `exec` of the same gateway, and the new one ends what the old one
/// watched too: after both commands exit, nothing is left.
#[tokio::test]
async fn the_next_exec_starts_a_dead_guardian_again() {
    let env = TestEnv::new();
    within(60, async {
        let start = || {
            let mut child = std::process::Command::new(PROCSCOPE)
                .args(["exec", "--root", env.path().to_str().unwrap(), "--", FIXTURE, "ready", "wait-eof"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready");
            child
        };
        let me = procscope::Owner::this_process().unwrap();
        let guardian = |instance: &procscope::Cgroup| -> u32 {
            let g = instance.meta("guardian").unwrap().expect("the instance records its guardian");
            g.split(' ').next().unwrap().parse().unwrap()
        };
        let mut first = start();
        let instance = procscope::Cgroup::open(env.path().join(me.instance_name())).unwrap();
        let old = guardian(&instance);
        let old_fd = procscope::PidFd::open(old).unwrap();
        old_fd.send_signal(procscope::Signal::KILL).unwrap();
        within(5, old_fd.exited()).await.unwrap();

        let mut second = start();
        let new = guardian(&instance);
        assert_ne!(new, old, "a new guardian");
        let new_fd = procscope::PidFd::open(new).unwrap();
        assert!(new_fd.is_alive(), "the new guardian runs");
        for child in [&mut first, &mut second] {
            drop(child.stdin.take());
            assert!(child.wait().unwrap().success());
        }
        // Both commands' cgroups and the instance go: the new guardian
        // watches the first command too.
        env.wait_root_empty().await;
        within(5, new_fd.exited()).await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Owners. `PROCSCOPE_OWNER` makes the gateway the owner through an
/// intermediary (`sh -c`); an owner that is not an ancestor, or is gone, and
/// a `PROCSCOPE_OWNER` that is not a pid (empty, a word, 0, negative, too
/// large) are refused with 125 before anything is placed, each saying what
/// is wrong and how to fix it. `end` refuses a malformed one too (2), rather
/// than ending its parent's sessions.
#[tokio::test]
async fn owners_must_be_ancestors() {
    let env = TestEnv::new();
    {
        let mut stranger = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id().to_string();
        dead.wait().unwrap();
        let stranger_pid = stranger.id().to_string();
        let malformed = "is not a pid";
        let cases: [(&[&str], Option<&str>, i32, &str); 11] = [
            (&[], Some(stranger_pid.as_str()), 125, "not an ancestor"),
            (&[], Some(dead_pid.as_str()), 125, "no such process"),
            (&[], Some("gateway"), 125, "PROCSCOPE_OWNER=\"gateway\" is not a pid: it is not a decimal number"),
            (&[], Some(""), 125, "PROCSCOPE_OWNER=\"\" is not a pid: it is empty"),
            (&[], Some("0"), 125, "a pid is a number from 1 to 2147483647"),
            (&[], Some("-3"), 125, malformed),
            (&[], Some("4294967297"), 125, malformed),
            (&[], Some("12 34"), 125, malformed),
            // The variable is checked under --owner too: it would mislead the
            // other commands below the gateway.
            (&["--owner", "1"], Some("x"), 125, malformed),
            (&["--owner", stranger_pid.as_str()], None, 125, "not an ancestor"),
            (&["--owner", "999999999"], None, 125, "999999999"),
        ];
        for (opts, var, code, needle) in cases {
            let mut args = vec!["exec"];
            args.extend_from_slice(opts);
            args.extend_from_slice(&["--", "true"]);
            let mut cmd = procscope(&env, &args);
            if let Some(v) = var {
                cmd.env("PROCSCOPE_OWNER", v);
            }
            let out = cmd.stdin(Stdio::null()).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{opts:?} {var:?}: {err}");
            assert!(err.contains(needle), "{opts:?} {var:?}: message lacks {needle:?}: {err}");
            if needle.contains(malformed) || needle.contains("a pid is") {
                assert!(err.contains("unset it"), "the message says how to fix it: {err}");
            }
            assert!(env.root.children().unwrap().is_empty(), "{opts:?} {var:?} placed something");
        }
        // `end` with a malformed variable: refused, nothing ended (a session
        // of this process, made below, is still there).
        let (mut held, _out) = exec_ready(&env, &["--session", "kept"], &["ready", "sleep", "3600"]);
        let before = sessions(&env).len();
        let out = procscope(&env, &["end", "kept"]).env("PROCSCOPE_OWNER", "gateway").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(malformed), "{err}");
        assert_eq!(sessions(&env).len(), before, "end with a malformed owner ended nothing");
        assert!(held.try_wait().unwrap().is_none(), "the session's command still runs");
        assert!(run(&env, &["end", "kept"]).status.success());
        assert_eq!(held.wait().unwrap().signal(), Some(libc::SIGTERM));
        env.wait_root_empty().await;
        stranger.kill().unwrap();
        stranger.wait().unwrap();

        // Through `sh -c`, PROCSCOPE_OWNER makes this process the owner.
        let script =
            format!("{PROCSCOPE} exec --root {} --session w -- {FIXTURE} ready sleep 3600; true", env.path().display());
        let mut sh = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("PROCSCOPE_OWNER", std::process::id().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(sh.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let me = procscope::Owner::this_process().unwrap();
        assert_eq!(env.root.children().unwrap(), [me.instance_name()], "the session is this process's");
        let out = run(&env, &["end", "w"]);
        assert!(out.status.success(), "{out:?}");
        assert!(sh.wait().unwrap().success());
        env.wait_root_empty().await;
    }
    env.finish().await;
}

/// The library and `exec` in one process: an `exec` started by a process
/// whose supervisor already has an instance lands in that instance; the
/// supervisor's `session()` with the same id is then `SessionExists`, with
/// nothing changed, and the other ids work as before.
#[tokio::test]
async fn a_session_id_taken_by_an_exec_of_this_process_is_session_exists() {
    let env = TestEnv::new();
    within(30, async {
        let sup = procscope::Supervisor::builder().root(env.path()).start().await.unwrap();
        let (mut command, _out) = exec_ready(&env, &["--session", "shared"], &["ready", "sleep", "3600"]);
        let me = procscope::Owner::this_process().unwrap();
        assert_eq!(sup.instance().unwrap().name(), me.instance_name(), "the exec joined the supervisor's instance");
        let before = sup.instance().unwrap().children().unwrap();
        let err = sup.session("shared").unwrap_err();
        assert!(matches!(&err, procscope::Error::SessionExists { id } if id == "shared"), "{err}");
        assert_eq!(sup.instance().unwrap().children().unwrap(), before, "nothing changed");
        let other = sup.session("other").unwrap();
        other.close().await.unwrap();
        signal(&command, rustix::process::Signal::TERM);
        assert_eq!(command.wait().unwrap().signal(), Some(libc::SIGTERM));
        wait_gone(&sup.instance().unwrap().path().join("s-shared")).await;
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// The CLI explains itself: logs on stderr with -v / -q / RUST_LOG, the exit
/// codes once (in the top-level help), durations with a unit, and a man page.
#[tokio::test]
async fn the_cli_logs_and_explains_itself() {
    let env = TestEnv::new();
    within(60, async {
        // Quiet by default: a successful exec of `true` writes nothing.
        let out = run(&env, &["exec", "--", "true"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "nothing logged by default");
        // -vv and RUST_LOG show the placing.
        for (args, rust_log) in [(&["-vv", "exec"][..], None), (&["exec"][..], Some("procscope=debug"))] {
            let mut c = std::process::Command::new(PROCSCOPE);
            c.args(args).arg("--root").arg(env.path()).args(["--", "true"]).stdin(Stdio::null());
            if let Some(spec) = rust_log {
                c.env("RUST_LOG", spec);
            }
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{out:?}");
            assert!(err.contains("INFO") && err.contains(r#"action="exec.place""#), "{args:?} {rust_log:?}: {err}");
        }
        // -q: errors only, and errors still show.
        let out = run(&env, &["end", "-q", "no-such-session"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no session no-such-session"), "{out:?}");
        // The exit codes once: in the top-level help, pointed to elsewhere.
        let top = std::process::Command::new(PROCSCOPE).arg("--help").output().unwrap();
        let top = String::from_utf8_lossy(&top.stdout);
        assert_eq!(top.matches("Exit codes:").count(), 1, "{top}");
        for sub in ["end", "ps", "sweep", "doctor", "demo"] {
            let help = std::process::Command::new(PROCSCOPE).args([sub, "--help"]).output().unwrap();
            let help = String::from_utf8_lossy(&help.stdout);
            assert!(!help.contains("the operation failed") && help.contains("see procscope --help"), "{sub}: {help}");
        }
        // Durations need a unit.
        let out = run(&env, &["end", "--grace", "2", "x"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs a unit: 2s"), "{out:?}");
        // A fix that fits: root asked to use a directory that is no cgroup.
        let out = std::process::Command::new(PROCSCOPE).args(["doctor", "--root", "/etc"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("give --root a directory under the cgroup2 mount"), "{text}");
        assert!(!text.contains("run as root"), "root is told to run as root: {text}");
        // The man page.
        let man = std::process::Command::new(PROCSCOPE).arg("man").output().unwrap();
        assert!(man.status.success());
        let man = String::from_utf8_lossy(&man.stdout);
        assert!(man.starts_with(".ie") || man.contains(".TH procscope"), "{man}");
        assert!(man.contains("completions"), "the man page lists the subcommands");
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

/// `procscope completions bash` and `… zsh` load in those shells and
/// register the completion of `procscope`.
#[test]
fn completions_load_in_bash_and_zsh() {
    for (shell, check) in [
        ("bash", "complete -p procscope"),
        // compinit with only its own directory in fpath and an empty
        // `_compdir` (which keeps compaudit from adding the completion
        // directories back): it reads none of the 1,300 completion
        // functions of the system, and `compdef` works as after a full
        // compinit. Reading them all took compinit 18 to 45 s under TCG.
        (
            "zsh",
            "fpath=(${^fpath}/compinit(N:h)) _compdir= && autoload -Uz compinit && compinit -u -D \
             && source \"$1\" && print -r -- $_comps[procscope]",
        ),
    ] {
        // A file, not `<(…)`: some systems (the VMs) have no /dev/fd.
        let script =
            std::env::temp_dir().join(format!("procscope-completions-{}-{}.{shell}", std::process::id(), nanos()));
        let out = std::process::Command::new(PROCSCOPE).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::write(&script, &out.stdout).unwrap();
        let load = if shell == "bash" { format!("source \"$1\" && {check}") } else { check.to_owned() };
        let out = std::process::Command::new(shell)
            .args(["-c", &load, shell])
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{shell} is needed for this test ({e}); scripts/test installs it"));
        std::fs::remove_file(&script).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(text.contains("_procscope"), "{shell} registered the completion: {text}");
    }
}
