//! `procscope exec` under gateways nobody here wrote the client of: the
//! official TypeScript MCP SDK (`@modelcontextprotocol/sdk`,
//! `StdioClientTransport`) driving a tick of jobs (`tests/node/gateway.mjs`).
//!
//! Every server leaves a `setsid` helper behind. Each tick has jobs that end
//! normally, are cancelled mid-call, are abandoned with no teardown, and whose
//! server the gateway SIGKILLs. The gateways differ in how they end: with
//! `procscope end`, with SIGKILL of every process they started (as mcpo's
//! shutdown does), through a watchdog intermediary or `npx` / `uvx`
//! launchers, with `PROCSCOPE_OWNER`, SIGKILLed themselves mid-run, with
//! the SDK's own escalation under `exec`'s default grace. Every scenario
//! must leave 0 processes and 0 cgroups, while the gateway still runs and
//! after it exits.
//!
//! `scripts/install-mcp-servers` installs the SDK and uv into `.deps/`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use serde_json::{Value, json};

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");

fn sdk() -> PathBuf {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/npm/node_modules/@modelcontextprotocol/sdk");
    assert!(sdk.exists(), "{} is missing: run scripts/install-mcp-servers (scripts/test does)", sdk.display());
    sdk
}

/// A running Node gateway after its tick: its report, and stdin to let it exit.
struct NodeGateway {
    child: Gateway,
    report: Value,
}

impl NodeGateway {
    /// Runs `gateway.mjs` with `jobs` (id, kind, behavior) and `extra` config.
    fn tick(env: &TestEnv, tag: &str, jobs: Value, extra: Value) -> NodeGateway {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/gateway.mjs");
        let mut config = json!({
            "sdk": sdk(),
            "procscope": PROCSCOPE,
            "root": env.path(),
            "tag": tag,
            "server": [PROCSCOPE, "demo-server", "--tag", tag],
            "jobs": jobs,
            "watchdog": false,
            "owner_env": false,
            "shutdown": "end",
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        let mut child = Gateway(
            std::process::Command::new("node")
                .arg(script)
                .arg(config.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("node (scripts/install-mcp-servers installs it)"),
        );
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        NodeGateway { child, report }
    }

    /// SIGKILLs the gateway mid-run, and reaps it.
    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn job(&self, id: &str) -> &Value {
        self.report["results"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap()
    }

    /// Lets the gateway exit, and waits for it.
    fn exit(mut self) {
        writeln!(self.child.stdin.as_mut().unwrap(), "exit").unwrap();
        assert!(self.child.wait().unwrap().success());
    }

    /// Asserts that nothing of the run is left while the gateway still runs,
    /// lets it exit, and asserts the same again.
    async fn exit_leaving_nothing(self, env: &TestEnv, tag: &str) {
        nothing_left(env, tag, "the gateway still runs").await;
        self.exit();
        nothing_left(env, tag, "the gateway exited").await;
    }
}

/// Asserts that nothing of the run is left, processes or cgroups.
async fn nothing_left(env: &TestEnv, tag: &str, when: &str) {
    let left = settle(tag, 5).await;
    assert!(left.is_empty(), "{when}: processes left: {left:?}");
    wait_no_children(&env.root).await;
}

fn tick_jobs() -> Value {
    json!([
        {"id": "ok", "kind": "daemonizer", "behavior": "ok"},
        {"id": "cancel", "kind": "daemonizer", "behavior": "cancel"},
        {"id": "abandon", "kind": "daemonizer", "behavior": "abandon"},
        {"id": "kill", "kind": "daemonizer", "behavior": "kill"},
    ])
}

/// The TypeScript SDK's tick, ended with `procscope end`. The pid the SDK
/// holds is the server's own; the SIGKILLed server is seen killed by SIGKILL.
#[tokio::test]
async fn typescript_sdk_tick_with_end_leaves_nothing() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("ts-end-{}", nanos());
        let gw = NodeGateway::tick(&env, &tag, tick_jobs(), json!({}));
        for id in ["ok", "cancel", "abandon", "kill"] {
            let job = gw.job(id);
            assert_eq!(job["pid"], job["server_pid"], "{id}: the SDK holds the server's own pid: {job}");
        }
        assert_eq!(gw.job("ok")["exit"], json!({"code": 0, "signal": null}));
        assert_eq!(gw.job("kill")["exit"], json!({"code": null, "signal": "SIGKILL"}));
        assert_eq!(gw.report["end"]["status"], 0, "{}", gw.report);
        // The abandoned job was still running, and the jobs that ended long
        // before were gone. The cancelled job's leftovers may still have been
        // ending under the guardian when `end` ran (its server was SIGTERMed a
        // moment before): `end` finds it or does not, both are right.
        let not_found = &gw.report["end"]["report"]["not_found"];
        let found = |id: &str| !not_found.as_array().is_some_and(|a| a.iter().any(|x| x == id));
        assert!(found("abandon"), "the abandoned job was found and ended: {}", gw.report);
        assert!(!found("ok") && !found("kill"), "the finished jobs were gone: {}", gw.report);
        let sessions = gw.report["end"]["report"]["sessions"].as_u64().unwrap_or(0);
        assert!(sessions == 1 || (sessions == 2 && found("cancel")), "{}", gw.report);
        gw.exit_leaving_nothing(&env, &tag).await;
    })
    .await;
    env.finish().await;
}

/// A gateway whose shutdown SIGKILLs every process it started, as mcpo's
/// does: the helpers those servers left are ended all the same, and the
/// abandoned server too, while the gateway runs on.
#[tokio::test]
async fn a_gateway_that_sigkills_its_children_leaves_nothing() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("ts-kill-{}", nanos());
        let gw = NodeGateway::tick(&env, &tag, tick_jobs(), json!({"shutdown": "sigkill"}));
        gw.exit_leaving_nothing(&env, &tag).await;
    })
    .await;
    env.finish().await;
}

/// Servers started through a watchdog (`sh -c` that stays in between), with
/// no help from the gateway: `procscope end` run by the gateway still finds
/// the sessions (each `exec`'s owner is its watchdog, whose ancestry names
/// the gateway). Then the same with `PROCSCOPE_OWNER` set by the gateway:
/// every session is the gateway's, under one guardian.
#[tokio::test]
async fn servers_behind_a_watchdog_are_found_and_ended() {
    let env = TestEnv::new();
    within(60, async {
        for owner_env in [false, true] {
            let tag = format!("ts-watchdog-{owner_env}-{}", nanos());
            let gw = NodeGateway::tick(&env, &tag, tick_jobs(), json!({"watchdog": true, "owner_env": owner_env}));
            let report = &gw.report["end"];
            assert_eq!(report["status"], 0, "{report}");
            assert!(report["report"]["sessions"].as_u64().unwrap() >= 1, "end found the abandoned job: {report}");
            if owner_env {
                let instances = env.root.children().unwrap();
                assert!(instances.len() <= 1, "PROCSCOPE_OWNER: one instance, the gateway's: {instances:?}");
            }
            gw.exit_leaving_nothing(&env, &tag).await;
        }
    })
    .await;
    env.finish().await;
}

/// A launcher between the gateway and `procscope exec`, as a server started
/// by `npx <pkg>` or `uvx <pkg>` has: the argv prefix that runs the rest
/// through it, and the environment it needs. Local packages only, no
/// download: npx gets `tests/node/launcher` (`--package=DIR --offline`),
/// uvx a wheel of `tests/python/procscope_launcher.py` (`--from WHEEL
/// --offline`), each with a cache of its own under the test's temporary
/// directory, warmed by one run before the tick so that the jobs' launchers
/// do not install it concurrently. `scripts/install-mcp-servers` installs
/// uv into `.deps/venv`.
fn launcher(kind: &str) -> (Value, Value) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("launchers");
    std::fs::create_dir_all(&tmp).unwrap();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let (prefix, env): (Vec<String>, Value) = match kind {
        "npx" => {
            let pkg = manifest.join("tests/node/launcher");
            let env =
                json!({"HOME": home, "npm_config_cache": tmp.join("npm-cache"), "npm_config_update_notifier": "false"});
            let prefix = ["npx", "--yes", "--offline", &format!("--package={}", pkg.display()), "procscope-launcher"];
            (prefix.map(str::to_owned).to_vec(), env)
        }
        "uvx" => {
            let uvx = manifest.join(".deps/venv/bin/uvx");
            assert!(uvx.exists(), "{} is missing: run scripts/install-mcp-servers (scripts/test does)", uvx.display());
            let out = std::process::Command::new("python3")
                .arg(manifest.join("tests/python/launcher_wheel.py"))
                .arg(&tmp)
                .output()
                .expect("python3");
            assert!(out.status.success(), "building the launcher's wheel: {out:?}");
            let wheel = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            let env = json!({
                "HOME": home,
                "UV_CACHE_DIR": tmp.join("uv-cache"),
                "UV_PYTHON": manifest.join(".deps/venv/bin/python"),
                "UV_NO_PROGRESS": "1",
            });
            let prefix = [uvx.to_str().unwrap(), "--offline", "--from", &wheel, "procscope-launcher"];
            (prefix.map(str::to_owned).to_vec(), env)
        }
        other => panic!("no launcher {other}"),
    };
    let mut warm = std::process::Command::new(&prefix[0]);
    warm.args(&prefix[1..]).arg("true").env_clear().env("PATH", std::env::var("PATH").unwrap());
    for (k, v) in env.as_object().unwrap() {
        warm.env(k, v.as_str().map_or_else(|| v.to_string(), str::to_owned));
    }
    let out = warm.output().unwrap_or_else(|e| panic!("{kind}: {e}"));
    assert!(out.status.success(), "{kind} runs the local launcher offline: {out:?}");
    (json!(prefix), env)
}

/// Servers started through `npx` and `uvx` launchers, with no help from the
/// gateway (no `PROCSCOPE_OWNER`): npx, the shell npm runs the bin through
/// and the launcher (or uv and the launcher) stand between the gateway and
/// `procscope exec`, and the innermost of them owns each session. The SDK
/// holds the launcher's pid, not the server's. `procscope end` run by the
/// gateway still finds the abandoned job's session through the lineage its
/// instance records, and ends it; 0 processes and 0 cgroups are left, while
/// the gateway runs and after.
#[tokio::test]
async fn servers_behind_npx_and_uvx_launchers_are_found_and_ended() {
    let env = TestEnv::new();
    within(120, async {
        for kind in ["npx", "uvx"] {
            let (prefix, server_env) = launcher(kind);
            let tag = format!("ts-{kind}-{}", nanos());
            let t = std::time::Instant::now();
            let gw = NodeGateway::tick(&env, &tag, tick_jobs(), json!({"launcher": prefix, "env": server_env}));
            for id in ["ok", "cancel", "abandon", "kill"] {
                let job = gw.job(id);
                assert_ne!(job["pid"], job["server_pid"], "{kind} {id}: the launcher stands in between: {job}");
            }
            assert_eq!(gw.job("ok")["exit"], json!({"code": 0, "signal": null}), "{kind}");
            // Owned by the launchers: the gateway has no instance of its own.
            let gateway = procscope::Owner::of(gw.report["gateway"].as_i64().unwrap() as i32).unwrap();
            let instances = gw.report["instances"].as_array().unwrap();
            assert!(!instances.is_empty(), "{kind}: {}", gw.report);
            assert!(
                !instances.iter().any(|i| i == gateway.instance_name().as_str()),
                "{kind}: no session is the gateway's own: {instances:?}"
            );
            let report = &gw.report["end"];
            assert_eq!(report["status"], 0, "{kind}: {report}");
            // The abandoned job's server was still running. The one whose
            // launcher was SIGKILLed saw EOF once the SDK closed its stdin on
            // the launcher's exit, and may be gone by now (its helper ended
            // by the guardian): `end` finds it or not, both are right.
            let not_found = report["report"]["not_found"].as_array().unwrap();
            assert!(!not_found.iter().any(|x| x == "abandon"), "{kind}: end found the abandoned job: {report}");
            assert!(not_found.iter().any(|x| x == "ok"), "{kind}: the finished job was gone: {report}");
            assert!(report["report"]["sessions"].as_u64().unwrap() >= 1, "{kind}: {report}");
            gw.exit_leaving_nothing(&env, &tag).await;
            eprintln!("{kind}: the tick and its end took {:?}", t.elapsed());
        }
    })
    .await;
    env.finish().await;
}

/// The SDK's own escalation (close stdin, 2 s, SIGTERM, 2 s, SIGKILL) against
/// a server that stays after EOF, and one that also ignores SIGTERM: the
/// client sees SIGTERM and SIGKILL themselves (not an exit code), and the
/// helpers both left are ended once each server is gone.
#[tokio::test]
async fn the_sdks_escalation_reaches_the_server_itself() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("ts-escalation-{}", nanos());
        let jobs = json!([
            {"id": "linger", "kind": "daemonizer,linger", "behavior": "close"},
            {"id": "stubborn", "kind": "daemonizer,stubborn", "behavior": "close"},
        ]);
        let gw = NodeGateway::tick(&env, &tag, jobs, json!({"shutdown": "none"}));
        let (linger, stubborn) = (gw.job("linger"), gw.job("stubborn"));
        assert_eq!(linger["exit"], json!({"code": null, "signal": "SIGTERM"}), "{linger}");
        assert_eq!(stubborn["exit"], json!({"code": null, "signal": "SIGKILL"}), "{stubborn}");
        assert!(stubborn["ms"].as_u64().unwrap() >= 3900, "SIGKILL came after 2 s + 2 s: {stubborn}");
        gw.exit_leaving_nothing(&env, &tag).await;
    })
    .await;
    env.finish().await;
}

/// The same escalation with `exec`'s default grace (no `--grace`): the
/// grace starts only once the server's main process is gone, so the SDK's
/// SIGKILL after 4 s is never raced, and the client sees SIGTERM and SIGKILL.
/// The stubborn server's helper ignores SIGTERM too (inherited): it is
/// ended by `cgroup.kill` about 2 s after its server died, not sooner, which
/// shows the default at work. 0 processes and 0 cgroups are left.
#[tokio::test]
async fn the_default_grace_does_not_race_the_sdks_escalation() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("ts-default-grace-{}", nanos());
        let jobs = json!([
            {"id": "linger", "kind": "daemonizer,linger", "behavior": "close"},
            {"id": "stubborn", "kind": "daemonizer,stubborn", "behavior": "close"},
        ]);
        let t = std::time::Instant::now();
        let gw = NodeGateway::tick(&env, &tag, jobs, json!({"shutdown": "none", "grace": null}));
        let reported = std::time::Instant::now();
        let (linger, stubborn) = (gw.job("linger"), gw.job("stubborn"));
        assert_eq!(linger["exit"], json!({"code": null, "signal": "SIGTERM"}), "{linger}");
        assert_eq!(stubborn["exit"], json!({"code": null, "signal": "SIGKILL"}), "{stubborn}");
        assert!(stubborn["ms"].as_u64().unwrap() >= 3900, "SIGKILL came after 2 s + 2 s: {stubborn}");
        // What is left now is the stubborn server's helper, in its grace.
        let left = tagged(&tag);
        assert_eq!(left.len(), 1, "the stubborn server's helper, still in its grace: {left:?}");
        let gone = settle(&tag, 5).await;
        assert!(gone.is_empty(), "the helper was ended: {gone:?}");
        let grace = reported.elapsed();
        assert!(grace >= std::time::Duration::from_millis(1500), "ended {grace:?} after its server: the 2 s grace");
        eprintln!("helper ended {grace:?} after the report ({:?} in all)", t.elapsed());
        gw.exit_leaving_nothing(&env, &tag).await;
    })
    .await;
    env.finish().await;
}

/// A gateway SIGKILLed mid-run, its servers behind a watchdog (`sh -c`,
/// which outlives it): with `PROCSCOPE_OWNER`, the gateway's guardian ends
/// every server — one mid-call, one that stays after EOF — their helpers
/// and watchdogs, and every cgroup, within 3 s. Without the variable each
/// watchdog owns its server: idle servers exit at EOF, each guardian ends
/// its server's helper, and the watchdogs exit and their instances go,
/// within 3 s as well. (A server stuck in a call, without the variable,
/// lives as long as its watchdog waits for it: the variable is what ties
/// it to the gateway.) The control for "gone": everything ran, with one
/// instance per owner, right before the SIGKILL.
#[tokio::test]
async fn an_sdk_gateway_sigkilled_behind_a_watchdog_leaves_nothing() {
    let env = TestEnv::new();
    within(60, async {
        for owner_env in [true, false] {
            let tag = format!("ts-gateway-killed-{owner_env}-{}", nanos());
            let jobs = if owner_env {
                json!([
                    {"id": "busy", "kind": "daemonizer", "behavior": "abandon"},
                    {"id": "linger", "kind": "daemonizer,linger", "behavior": "idle"},
                    {"id": "idle", "kind": "daemonizer", "behavior": "idle"},
                ])
            } else {
                json!([
                    {"id": "idle1", "kind": "daemonizer", "behavior": "idle"},
                    {"id": "idle2", "kind": "daemonizer", "behavior": "idle"},
                ])
            };
            let n = jobs.as_array().unwrap().len();
            let gw = NodeGateway::tick(
                &env,
                &tag,
                jobs,
                json!({"watchdog": true, "owner_env": owner_env, "shutdown": "none"}),
            );
            // Each job: its watchdog, its server and the server's helper.
            let mut running = Vec::new();
            for _ in 0..500 {
                running = tagged(&tag);
                if running.len() == 3 * n {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(running.len(), 3 * n, "{owner_env}: watchdog, server and helper per job: {running:?}");
            let instances = env.root.children().unwrap();
            assert_eq!(instances.len(), if owner_env { 1 } else { n }, "{owner_env}: one per owner: {instances:?}");
            let t = std::time::Instant::now();
            gw.sigkill();
            let left = settle(&tag, 3).await;
            assert!(left.is_empty(), "{owner_env}: processes left 3 s after the gateway's SIGKILL: {left:?}");
            for _ in 0..300 {
                if env.root.children().unwrap().is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let took = t.elapsed();
            assert!(env.root.children().unwrap().is_empty(), "{owner_env}: cgroups left: {:?}", env.root.children());
            assert!(took < std::time::Duration::from_secs(3), "{owner_env}: took {took:?}");
            eprintln!("PROCSCOPE_OWNER {owner_env}: {} processes gone {took:?} after the gateway's SIGKILL", 3 * n);
        }
    })
    .await;
    env.finish().await;
}

/// The control: the same tick with the servers started as they are, no
/// `procscope exec`. Ending every process it started does not help the
/// gateway: the helpers the servers left run on.
#[tokio::test]
async fn control_without_exec_the_helpers_leak() {
    let env = TestEnv::new();
    within(60, async {
        let tag = format!("ts-control-{}", nanos());
        let gw = NodeGateway::tick(&env, &tag, tick_jobs(), json!({"exec": false, "shutdown": "sigkill"}));
        let left = settle(&tag, 1).await;
        gw.exit();
        let after = settle(&tag, 1).await;
        for pid in &after {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(*pid).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        assert!(settle(&tag, 5).await.is_empty(), "the control cleaned up after itself");
        assert!(left.len() >= 4, "every server's helper leaked while the gateway ran: {left:?}");
        assert!(after.len() >= 4, "and after it exited: {after:?}");
        eprintln!("without exec: {} processes left while the gateway ran, {} after it exited", left.len(), after.len());
    })
    .await;
    env.finish().await;
}

/// `tests/crates/lib-gateway`, built as the program of its own crate: its
/// up-to-date binary, built with cargo when missing or older than its sources
/// or procscope's.
fn lib_gateway() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crate_dir = manifest.join("tests/crates/lib-gateway");
    let target = manifest.join("target/lib-gateway");
    let bin = target.join("debug/lib-gateway");
    let newest = |dir: &Path| -> std::time::SystemTime {
        let mut newest = std::time::UNIX_EPOCH;
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else if let Ok(t) = m.modified() {
                    newest = newest.max(t);
                }
            }
        }
        newest
    };
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let sources = newest(&manifest.join("src")).max(newest(&crate_dir.join("src")));
    if built.is_none_or(|b| b < sources) {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--offline", "--quiet", "--manifest-path"])
            .arg(crate_dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo");
        assert!(status.success(), "building tests/crates/lib-gateway failed");
    }
    bin
}

/// A gateway from a crate of its own that depends on procscope by path, with
/// `.guardian(true)` and nothing else: SIGKILLed, its sessions (servers and
/// their `setsid` helpers) are gone within a second, and its guardian too.
#[tokio::test]
async fn a_library_gateway_from_its_own_crate_is_guarded() {
    let bin = lib_gateway();
    let env = TestEnv::new();
    within(60, async {
        let mut gw = Gateway(std::process::Command::new(&bin).arg(env.path()).stdout(Stdio::piped()).spawn().unwrap());
        let mut out = BufReader::new(gw.stdout.take().unwrap());
        let mut lines = Vec::new();
        while lines.last().map(String::as_str) != Some("ready") {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "the gateway exited early: {lines:?}");
            lines.push(line.trim().to_owned());
        }
        let guardian: i32 = field(&lines, "guardian").parse().unwrap();
        let guardian = procscope::PidFd::open(guardian as u32).unwrap();
        let instance = procscope::Cgroup::open(field(&lines, "instance")).unwrap();
        // Three servers and three helpers (which take a moment to start).
        for _ in 0..500 {
            if instance.member_pidfds_recursive().unwrap().len() == 6 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(instance.member_pidfds_recursive().unwrap().len(), 6);
        let t = std::time::Instant::now();
        gw.kill().unwrap();
        gw.wait().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), guardian.exited())
            .await
            .expect("the guardian did its work within a second")
            .unwrap();
        let took = t.elapsed();
        assert!(!instance.path().exists(), "the instance is removed");
        eprintln!("a library gateway's sessions gone {took:?} after its SIGKILL");
    })
    .await;
    env.finish().await;
}
