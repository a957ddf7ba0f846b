//! Real MCP: the official Rust SDK (rmcp) over contained children, against
//! servers nobody here wrote — `@modelcontextprotocol/server-everything` started
//! through `npx` (so the server is a grandchild behind npm's processes) and
//! `mcp-server-time` from PyPI — and a gateway written with the official Python
//! SDK using `procscope exec` and `procscope end`.
//!
//! `scripts/install-mcp-servers` installs the servers into `.deps/`; these tests
//! fail with that hint when they are missing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use procscope::{Command, Containment, JobOutcome, PidFd, Stdio, Supervisor};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");

fn deps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps")
}

fn require(path: &Path) -> PathBuf {
    assert!(path.exists(), "{} is missing: run scripts/install-mcp-servers (scripts/test does)", path.display());
    path.to_owned()
}

/// `npx --no-install mcp-server-everything` from the project-local install.
fn everything() -> Vec<String> {
    let prefix = deps().join("npm");
    require(&prefix.join("node_modules/.bin/mcp-server-everything"));
    vec![
        "npx".into(),
        "--prefix".into(),
        prefix.display().to_string(),
        "--no-install".into(),
        "mcp-server-everything".into(),
    ]
}

fn time_server() -> Vec<String> {
    vec![require(&deps().join("venv/bin/mcp-server-time")).display().to_string()]
}

fn command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]).stderr(Stdio::Null);
    c
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn supervisor(env: &TestEnv) -> Supervisor {
    Supervisor::builder().root(env.path()).grace(Duration::from_millis(1000)).start().await.unwrap()
}

#[tokio::test]
async fn rmcp_talks_to_real_servers_in_their_sessions() {
    let env = TestEnv::new();
    within(120, async {
        let sup = supervisor(&env).await;
        // server-everything behind npx: npx (node) → sh → node server.
        let session = sup.session("everything").unwrap();
        let client = ().serve(session.spawn_mcp(&mut command(&everything())).unwrap()).await.unwrap();
        let tools = client.list_all_tools().await.unwrap();
        assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
        let r = client
            .call_tool(CallToolRequestParams::new("get-sum").with_arguments(args(json!({"a": 20, "b": 22}))))
            .await
            .unwrap();
        assert!(serde_json::to_string(&r.content).unwrap().contains("42"), "{r:?}");
        let members = session.cgroup().unwrap().member_pidfds_recursive().unwrap();
        assert!(members.len() >= 2, "npx and the server should both be in the session: {}", members.len());

        let time = sup.session("time").unwrap();
        let tc = ().serve(time.spawn_mcp(&mut command(&time_server())).unwrap()).await.unwrap();
        let r = tc
            .call_tool(CallToolRequestParams::new("get_current_time").with_arguments(args(json!({"timezone": "UTC"}))))
            .await
            .unwrap();
        assert!(serde_json::to_string(&r.content).unwrap().contains("UTC"), "{r:?}");

        // Dropping the rmcp service kills nothing behind the session's back (the
        // server may exit on its own when its stdin closes)...
        drop(client);
        drop(tc);
        // ...ending the session does, with the whole tree.
        let t = session.close().await.unwrap();
        assert!(t.removed, "{t:?}");
        assert!(members.iter().all(|m| !m.is_alive()));
        time.close().await.unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A job cancelled in the middle of a long-running tool call: after the tick's
/// sweep, no process of that server's tree remains.
#[tokio::test]
async fn a_job_cancelled_mid_call_leaves_nothing_after_the_sweep() {
    let env = TestEnv::new();
    within(120, async {
        let sup = supervisor(&env).await;
        let seen: Arc<Mutex<Vec<PidFd>>> = Arc::default();
        let job = {
            let (sup, seen) = (sup.clone(), seen.clone());
            async move {
                let session = sup.session("long").map_err(|e| e.to_string())?;
                let client = ().serve(session.spawn_mcp(&mut command(&everything())).unwrap()).await.unwrap();
                let call = client.call_tool(
                    CallToolRequestParams::new("trigger-long-running-operation")
                        .with_arguments(args(json!({"duration": 60, "steps": 60}))),
                );
                tokio::select! {
                    r = call => Err(format!("the long call returned: {r:?}")),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        *seen.lock().unwrap() = session.cgroup().unwrap().member_pidfds_recursive().unwrap();
                        Err::<(), String>("cancelled".into())
                    }
                }
            }
        };
        let report = sup.tick([job], None).await;
        assert_eq!(report.jobs, [JobOutcome::Failed("cancelled".into())]);
        assert_eq!((report.sweep.sessions, report.sweep.removed), (1, 1), "{report}");
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert!(seen.len() >= 2, "the server tree: {}", seen.len());
        assert!(seen.iter().all(|p| !p.is_alive()), "a process of the server tree survived the sweep");
        drop(seen);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Eight jobs on the same server kind in parallel; half are cancelled mid-call,
/// the other half complete unaffected.
#[tokio::test]
async fn eight_parallel_jobs_half_cancelled_the_rest_unaffected() {
    eight_parallel_jobs(Containment::Cgroups).await;
}

/// The same where no cgroup is written ([`Containment::Holders`]): each
/// server, npx and its children included, below a holder of its own.
#[tokio::test]
async fn eight_parallel_jobs_with_holders_half_cancelled_the_rest_unaffected() {
    eight_parallel_jobs(Containment::Holders).await;
}

/// The tick's sweep ends the servers of every job, cancelled or not:
/// nothing carrying the jobs' tag is left once it has returned.
async fn eight_parallel_jobs(containment: Containment) {
    let env = TestEnv::new();
    let tag = format!("mcp-{}-{}-{}", containment.as_str(), std::process::id(), nanos());
    within(180, async {
        let builder = Supervisor::builder().grace(Duration::from_millis(1000)).containment(containment);
        let builder = if containment == Containment::Cgroups { builder.root(env.path()) } else { builder };
        let sup = builder.start().await.unwrap();
        let trees: Arc<Mutex<Vec<u64>>> = Arc::default();
        let jobs = (0..8).map(|i| {
            let (sup, tag, trees) = (sup.clone(), tag.clone(), trees.clone());
            async move {
                let session = sup.session(&format!("p{i}")).map_err(|e| e.to_string())?;
                let mut cmd = command(&everything());
                cmd.env("PSTAG", &tag);
                let transport = session.spawn_mcp(&mut cmd).map_err(|e| e.to_string())?;
                let client = ().serve(transport).await.map_err(|e| e.to_string())?;
                let processes = match session.cgroup() {
                    Some(cg) => cg.member_pidfds_recursive().map_err(|e| e.to_string())?.len() as u64,
                    None => session.stats().pids_current.unwrap_or(0),
                };
                trees.lock().unwrap().push(processes);
                if i % 2 == 0 {
                    let call = client.call_tool(
                        CallToolRequestParams::new("trigger-long-running-operation")
                            .with_arguments(args(json!({"duration": 60, "steps": 60}))),
                    );
                    return match tokio::time::timeout(Duration::from_secs(1), call).await {
                        Ok(r) => Err(format!("the long call returned: {r:?}")),
                        Err(_) => Err("cancelled".into()),
                    };
                }
                let r = client
                    .call_tool(CallToolRequestParams::new("get-sum").with_arguments(args(json!({"a": i, "b": 100}))))
                    .await
                    .map_err(|e| e.to_string())?;
                let text = serde_json::to_string(&r.content).unwrap();
                if text.contains(&(i + 100).to_string()) { Ok(()) } else { Err(format!("job {i}: {text}")) }
            }
        });
        let report = sup.tick(jobs, None).await;
        for (i, outcome) in report.jobs.iter().enumerate() {
            let expected = if i % 2 == 0 { JobOutcome::Failed("cancelled".into()) } else { JobOutcome::Ok };
            assert_eq!(*outcome, expected, "job {i}");
        }
        let trees = trees.lock().unwrap().clone();
        assert!(trees.len() == 8 && trees.iter().all(|&n| n >= 2), "npx and the server in each tree: {trees:?}");
        assert_eq!(report.sweep.sessions, 8, "{report}");
        assert!(report.sweep.errors.is_empty(), "{report}");
        if let Some(instance) = sup.instance() {
            assert_eq!(report.sweep.removed, 8, "{report}");
            assert!(!instance.is_populated().unwrap());
        }
        assert_eq!(tagged(&tag), Vec::<i32>::new(), "processes of the servers left after the sweep");
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

fn python_tick(env: &TestEnv, mode: &str, tag: &str) -> (Gateway, Value) {
    let python = require(&deps().join("venv/bin/python"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/gateway.py");
    let daemonizer = vec![PROCSCOPE.to_string(), "demo-server".into(), "--kind".into(), "daemonizer".into()];
    let config = json!({
        "mode": mode,
        "procscope": PROCSCOPE,
        "root": env.path(),
        "tag": tag,
        "servers": {"everything": everything(), "time": time_server(), "daemonizer": daemonizer},
        "quick_tool": {
            "everything": ["echo", {"message": "hi"}],
            "time": ["get_current_time", {"timezone": "UTC"}],
            "daemonizer": ["echo", {"text": "hi"}],
        },
        "slow_tool": {
            "everything": ["trigger-long-running-operation", {"duration": 120, "steps": 120}],
            "daemonizer": ["slow", {"ms": 120000}],
        },
        "cancel_after_s": 2.0,
        "join_s": 20.0,
        "jobs": [
            {"id": "e-ok", "server": "everything", "behavior": "ok"},
            {"id": "e-cancel", "server": "everything", "behavior": "cancel"},
            {"id": "e-abandon", "server": "everything", "behavior": "abandon"},
            {"id": "t-ok", "server": "time", "behavior": "ok"},
            {"id": "d-ok", "server": "daemonizer", "behavior": "ok"},
            {"id": "d-abandon", "server": "daemonizer", "behavior": "abandon"},
            {"id": "d-kill", "server": "daemonizer", "behavior": "kill"},
        ],
        "hold": true,
    });
    // The SDK hands the servers the gateway's stderr: a file, not a pipe, or a
    // leaked server would keep the pipe open and this call waiting.
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}.stderr"));
    let mut child = Gateway(
        std::process::Command::new(python)
            .arg(script)
            .arg(config.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}\n{stderr}"));
    (child, v)
}

/// Lets a held Python gateway exit.
fn release(mut gw: Gateway) {
    use std::io::Write;
    writeln!(gw.stdin.as_mut().unwrap(), "exit").unwrap();
    assert!(gw.wait().unwrap().success());
}

fn expect_outcomes(v: &Value) {
    let r = &v["results"];
    for (id, outcome) in [
        ("e-ok", "ok"),
        ("t-ok", "ok"),
        ("d-ok", "ok"),
        ("e-cancel", "cancelled"),
        ("e-abandon", "abandoned"),
        ("d-abandon", "abandoned"),
        ("d-kill", "killed"),
    ] {
        assert_eq!(r[id]["outcome"], outcome, "{id}: {v}");
    }
}

/// The exec drop-in, proven: a Python gateway's tick with cancelled,
/// abandoned and SIGKILLed jobs, then `procscope end`: nothing of any server
/// tree is left, while the gateway runs and after it exits,
/// the setsid'ed helper included.
#[tokio::test]
async fn python_gateway_with_exec_and_end_leaves_nothing() {
    let env = TestEnv::new();
    within(180, async {
        let tag = format!("ps-{}", nanos());
        let (gw, v) = python_tick(&env, "procscope", &tag);
        expect_outcomes(&v);
        let end = &v["end"];
        assert_eq!(end["status"], 0, "{end}");
        // The abandoned jobs' sessions were still live; the other commands'
        // had ended when they exited.
        assert!(end["report"]["sessions"].as_u64().unwrap() >= 2, "the live sessions were ended: {end}");
        // While the gateway runs, and after it exits: nothing carries the tag.
        let left = settle(&tag, 5).await;
        assert!(left.is_empty(), "processes left behind while the gateway runs: {left:?}");
        wait_no_children(&env.root).await;
        release(gw);
        let left = settle(&tag, 5).await;
        assert!(left.is_empty(), "processes left behind after the gateway exited: {left:?}");
        wait_no_children(&env.root).await;
        eprintln!("with procscope exec/end: 0 processes left; end: {}", end["report"]);
    })
    .await;
    env.finish().await;
}

/// The same tick without procscope, to show the bug it fixes: the abandoned jobs'
/// servers and the daemonized helper are left running. (The test cleans up.)
#[tokio::test]
async fn python_gateway_without_procscope_leaks() {
    let env = TestEnv::new();
    within(180, async {
        let tag = format!("naive-{}", nanos());
        let (gw, v) = python_tick(&env, "naive", &tag);
        expect_outcomes(&v);
        release(gw);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let left = tagged(&tag);
        eprintln!("without procscope: {} processes left behind (pids {left:?}); cleaning up", left.len());
        for pid in &left {
            if let Ok(fd) = PidFd::open(*pid as u32) {
                let _ = fd.send_signal(procscope::Signal::KILL);
            }
        }
        assert!(settle(&tag, 5).await.is_empty(), "cleanup failed");
        assert!(left.len() >= 3, "the abandoned servers and the daemon should have leaked: {left:?}");
    })
    .await;
    env.finish().await;
}
