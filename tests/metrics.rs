//! Metrics: `procscope metrics` taken while sessions run passes `promtool
//! check metrics` and Python's `prometheus_client` parser, node_exporter's
//! textfile collector exports what `--textfile` writes, the counters match a
//! scripted tick and survive restarts in the root's totals, `--textfile`
//! writes atomically, the example serves them over loopback, and what a
//! guardian ends reaches the totals through its spool, which a sealed child
//! cannot forge and which stays bounded.
//!
//! promtool (Debian's `prometheus`), `prometheus-node-exporter` and
//! `prometheus_client` (in `.deps/venv`) come from
//! `scripts/install-metrics-tools`; a test fails, never skips, when one is
//! missing.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio as StdStdio};
use std::time::{Duration, Instant};

use common::*;
use procscope::{Command, JobOutcome, Session, Stdio, Supervisor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");
const INSTALL: &str = "scripts/install-metrics-tools installs it";

/// `name` on the PATH, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: {INSTALL}"))
}

/// The virtualenv's Python, with `prometheus_client` importable.
fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{} with prometheus_client is missing: {INSTALL}", python.display());
    python
}

async fn supervisor(env: &TestEnv) -> Supervisor {
    Supervisor::builder().root(env.path()).grace(Duration::from_millis(500)).start().await.unwrap()
}

/// A fixture that prints `ready` once it has started what `args` ask for,
/// then sleeps.
fn server(session: &Session, args: &[&str]) -> procscope::ContainedChild {
    let mut c = Command::new(FIXTURE);
    c.args(args).args(["ready", "sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Piped);
    session.spawn(&mut c).unwrap()
}

async fn wait_ready(child: &mut procscope::ContainedChild) {
    let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
    assert_eq!(lines.last().map(String::as_str), Some("ready"), "{lines:?}");
}

/// Runs `procscope ARGS` to its end.
async fn procscope(args: &[&str]) -> Output {
    tokio::process::Command::new(PROCSCOPE).args(args).stdin(StdStdio::null()).output().await.unwrap()
}

/// `procscope metrics --root ROOT [ARGS]`'s output, which must succeed.
async fn metrics_text(env: &TestEnv, args: &[&str]) -> String {
    let root = env.path().display().to_string();
    let out = procscope(&[&["metrics", "--root", &root], args].concat()).await;
    assert!(out.status.success(), "{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `program ARGS` with `input` on its stdin.
async fn run_with_input(program: &Path, args: &[&str], input: &str) -> Output {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(StdStdio::piped())
        .stdout(StdStdio::piped())
        .stderr(StdStdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// Every sample line as `name{labels}` → value; fails on a duplicate series.
fn series(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        assert!(out.insert(key.to_owned(), value).is_none(), "duplicate series: {line}");
    }
    out
}

/// `procscope_instance_<name>_total` and `procscope_<name>_total` for every
/// counter, with the keys of `Counters`' JSON.
const COUNTERS: [(&str, &str); 16] = [
    ("sessions_opened", "sessions_opened"),
    ("sessions_closed", "sessions_closed"),
    ("sessions_finished", "sessions_finished"),
    ("sessions_abandoned", "sessions_abandoned"),
    ("sessions_orphaned", "sessions_orphaned"),
    ("sessions_removed", "sessions_removed"),
    ("sessions_swept", "sessions_swept"),
    ("processes_spawned", "processes_spawned"),
    ("processes_terminated", "processes_terminated"),
    ("processes_killed", "processes_killed"),
    ("oom_kills", "oom_kills"),
    ("pids_max_hits", "pids_max_refusals"),
    ("sweeps", "sweeps"),
    ("leaks_prevented", "leaks_prevented"),
    ("leaks_prevented_finished", "leaks_prevented_finished"),
    ("errors", "errors"),
];

/// Sessions of one supervisor for the metrics to show: `busy` (3 processes),
/// `idle` (1) and `left` (let go with its process running: orphaned).
async fn running_sessions(sup: &Supervisor) -> Vec<(Session, procscope::ContainedChild)> {
    let mut held = Vec::new();
    for (id, args) in [("busy", &["spawn", "2"][..]), ("idle", &[][..])] {
        let s = sup.session(id).unwrap();
        let mut c = server(&s, args);
        wait_ready(&mut c).await;
        held.push((s, c));
    }
    let s = sup.session("left").unwrap();
    let mut c = server(&s, &[]);
    wait_ready(&mut c).await;
    drop((s, c));
    assert_eq!(sup.orphaned_sessions(), vec!["left".to_owned()]);
    held
}

/// `procscope metrics` taken while sessions run passes `promtool check
/// metrics` (no error, no lint problem), parses with Python's
/// `prometheus_client`, and says what runs.
#[tokio::test]
async fn metrics_of_running_sessions_pass_promtool_and_the_python_parser() {
    let (promtool, python) = (tool("promtool"), python());
    let env = TestEnv::new();
    within(60, async {
        let sup = supervisor(&env).await;
        let held = running_sessions(&sup).await;
        let text = metrics_text(&env, &[]).await;

        let checked = run_with_input(&promtool, &["check", "metrics"], &text).await;
        assert!(
            checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
            "promtool check metrics: {}\n{}{}\n{text}",
            checked.status,
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );

        let script = "import json, sys\n\
                      from prometheus_client.parser import text_string_to_metric_families\n\
                      out = {}\n\
                      for f in text_string_to_metric_families(sys.stdin.read()):\n\
                      \x20   out[f.name] = {'type': f.type, 'samples': [[s.name, s.labels, s.value] for s in f.samples]}\n\
                      print(json.dumps(out))\n";
        let parsed = run_with_input(&python, &["-c", script], &text).await;
        assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
        let families: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
        // The parser names counter families without `_total`.
        for (name, kind) in [
            ("procscope_root_info", "gauge"),
            ("procscope_sessions", "gauge"),
            ("procscope_instance_info", "gauge"),
            ("procscope_instance_owner_alive", "gauge"),
            ("procscope_session_info", "gauge"),
            ("procscope_session_processes", "gauge"),
            ("procscope_session_pids", "gauge"),
            ("procscope_session_memory_bytes", "gauge"),
            ("procscope_session_memory_peak_bytes", "gauge"),
            ("procscope_session_cpu_seconds", "counter"),
            ("procscope_instance_sessions_opened", "counter"),
            ("procscope_sessions_opened", "counter"),
            ("procscope_leaks_prevented", "counter"),
            ("procscope_errors", "counter"),
        ] {
            assert_eq!(families[name]["type"], kind, "{name}: {families}");
        }
        let value = |family: &str, want: &[(&str, &str)]| -> f64 {
            let samples = families[family]["samples"].as_array().unwrap_or_else(|| panic!("no {family}"));
            let hits: Vec<f64> = samples
                .iter()
                .filter(|s| want.iter().all(|(k, v)| s[1][*k] == *v))
                .map(|s| s[2].as_f64().unwrap())
                .collect();
            assert_eq!(hits.len(), 1, "{family} {want:?}: {samples:?}");
            hits[0]
        };
        let instance = sup.instance().unwrap().name().to_owned();
        let at = |session: &'static str| [("procscope_instance", instance.clone()), ("session", session.to_owned())];
        let busy = at("busy");
        let busy: Vec<(&str, &str)> = busy.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(value("procscope_session_processes", &busy), 3.0);
        assert_eq!(value("procscope_session_pids", &busy), 3.0);
        assert!(value("procscope_session_memory_bytes", &busy) > 0.0);
        assert_eq!(value("procscope_sessions", &[("state", "active")]), 2.0);
        assert_eq!(value("procscope_sessions", &[("state", "orphaned")]), 1.0);
        assert_eq!(value("procscope_session_info", &[("session", "left"), ("state", "orphaned")]), 1.0);
        assert_eq!(value("procscope_instance_info", &[("procscope_instance", &instance), ("kind", "supervisor")]), 1.0);
        let owner_pid = std::process::id().to_string();
        assert_eq!(value("procscope_instance_info", &[("owner_pid", &owner_pid)]), 1.0);
        // On this hybrid host (or any), the source of each reading is named.
        let sources: HashSet<&str> = families["procscope_session_memory_bytes"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[1]["source"].as_str().unwrap())
            .collect();
        let expected = if sup.instance().unwrap().has_file("memory.current") { "memory.current" } else { "rss" };
        assert_eq!(sources, HashSet::from([expected]), "{families}");
        // No series repeats.
        series(&text);

        drop(held);
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A free loopback port (taken by nobody the moment it is returned).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:`port`: the response's head and body.
async fn http_get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((head.to_owned(), body.to_owned()))
}

/// A directory of its own under the temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("procscope-{tag}-{}-{}", std::process::id(), nanos()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// node_exporter's textfile collector exports what `procscope metrics
/// --textfile` wrote: one scrape over loopback finds the procscope series,
/// and no textfile error.
#[tokio::test]
async fn node_exporter_exports_the_textfile() {
    let exporter = tool("prometheus-node-exporter");
    let env = TestEnv::new();
    let dir = temp_dir("textfile");
    within(60, async {
        let sup = supervisor(&env).await;
        let held = running_sessions(&sup).await;
        let root = env.path().display().to_string();
        let out = procscope(&["metrics", "--root", &root, "--textfile", dir.to_str().unwrap()]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(listing(&dir), vec!["procscope.prom"]);

        let mut scraped = None;
        for _ in 0..3 {
            let port = free_port();
            let mut node = tokio::process::Command::new(&exporter)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .args(["--collector.disable-defaults", "--collector.textfile"])
                .arg(format!("--collector.textfile.directory={}", dir.display()))
                .stdin(StdStdio::null())
                .stdout(StdStdio::null())
                .stderr(StdStdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while scraped.is_none() && Instant::now() < deadline && node.try_wait().unwrap().is_none() {
                match http_get(port, "/metrics").await {
                    Ok(r) => scraped = Some(r),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            let _ = node.start_kill();
            let _ = node.wait().await;
            if scraped.is_some() {
                break;
            }
        }
        let (head, body) = scraped.expect("node_exporter did not answer on a loopback port (tried 3)");
        assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
        let s = series(&body);
        assert_eq!(s.get("node_textfile_scrape_error"), Some(&0.0), "{body}");
        let instance = sup.instance().unwrap().name().to_owned();
        let key = format!("procscope_session_processes{{procscope_instance=\"{instance}\",session=\"busy\"}}");
        assert_eq!(s.get(&key), Some(&3.0), "{body}");
        assert_eq!(s.get("procscope_sessions{state=\"orphaned\"}"), Some(&1.0), "{body}");
        assert!(s.contains_key("procscope_sessions_opened_total"), "{body}");
        assert!(body.contains("# TYPE procscope_leaks_prevented_total counter"), "{body}");

        drop(held);
        sup.shutdown().await.unwrap();
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    env.finish().await;
}

/// The counters' JSON (`Counters` is `Serialize`) with these values, the
/// others 0.
fn counters_json(values: &[(&str, u64)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (key, _) in COUNTERS {
        let v = values.iter().find(|(k, _)| *k == key).map_or(0, |(_, v)| *v);
        m.insert(key.to_owned(), v.into());
    }
    serde_json::Value::Object(m)
}

/// Checks the counter series of `text`: the instance's (when given) and the
/// root's totals against `instance_values` and `totals`.
fn check_counter_series(text: &str, instance: Option<(&str, &serde_json::Value)>, totals: &serde_json::Value) {
    let s = series(text);
    for (key, name) in COUNTERS {
        let root = format!("procscope_{name}_total");
        assert_eq!(s.get(&root).copied(), totals[key].as_f64(), "{root}\n{text}");
        let per_instance: Vec<&String> =
            s.keys().filter(|k| k.starts_with(&format!("procscope_instance_{name}_total"))).collect();
        match instance {
            Some((instance, values)) => {
                let k = format!("procscope_instance_{name}_total{{procscope_instance=\"{instance}\"}}");
                assert_eq!(s.get(&k).copied(), values[key].as_f64(), "{k}\n{text}");
                assert_eq!(per_instance.len(), 1, "{per_instance:?}");
            }
            None => assert!(per_instance.is_empty(), "an instance that is gone keeps a series: {per_instance:?}"),
        }
    }
}

/// A tick with known numbers of jobs that close their session, finish with a
/// server running, finish with nothing running, time out (`Err`) and panic:
/// `Supervisor::metrics()` and `procscope metrics` show exactly those
/// counts, and after `shutdown()` the root's totals, read by a new process,
/// still do; a second supervisor on the same root adds to them. A sealed
/// child cannot forge the totals.
#[tokio::test]
async fn counters_match_a_scripted_tick_and_survive_restarts() {
    let env = TestEnv::new();
    within(90, async {
        let sup = supervisor(&env).await;
        let jobs = (0..7).map(|i| {
            let sup = sup.clone();
            async move {
                let s = sup.session(&format!("job-{i}")).map_err(|e| e.to_string())?;
                match i {
                    // Close their session.
                    0 | 1 => {
                        let mut c = server(&s, &[]);
                        wait_ready(&mut c).await;
                        s.close().await.map(drop).map_err(|e| e.to_string())
                    }
                    // Return `Ok` with their server still running.
                    2 | 3 => {
                        let mut c = server(&s, &[]);
                        wait_ready(&mut c).await;
                        Ok(())
                    }
                    // Returns once its server has exited: nothing to end.
                    4 => {
                        let mut c = Command::new(FIXTURE);
                        c.args(["exit", "0"]).stdin(Stdio::Null).stdout(Stdio::Null);
                        assert!(s.spawn(&mut c).unwrap().wait().await.unwrap().success());
                        Ok(())
                    }
                    // Times out with its server running.
                    5 => {
                        let mut c = server(&s, &[]);
                        wait_ready(&mut c).await;
                        tokio::time::timeout(Duration::from_millis(20), std::future::pending::<()>())
                            .await
                            .map_err(|_| "job 5 timed out".to_owned())
                    }
                    // Panics with its server running.
                    _ => {
                        let mut c = server(&s, &[]);
                        wait_ready(&mut c).await;
                        panic!("job 6 panicked")
                    }
                }
            }
        });
        let report = sup.tick(jobs, None).await;
        assert_eq!((report.ok(), report.failed()), (5, 2), "{report}");
        assert!(matches!(&report.jobs[5], JobOutcome::Failed(m) if m == "job 5 timed out"), "{report:?}");
        assert!(matches!(&report.jobs[6], JobOutcome::Panicked(m) if m == "job 6 panicked"), "{report:?}");
        // The tick report serializes, with its jobs' outcomes tagged.
        let r = serde_json::to_value(&report).unwrap();
        assert_eq!(r["jobs"][0], serde_json::json!({"outcome": "ok"}), "{r}");
        assert_eq!(r["jobs"][5], serde_json::json!({"outcome": "failed", "message": "job 5 timed out"}), "{r}");
        assert_eq!(r["sweep"]["leaks_prevented"], 4, "{r}");
        assert!(r["elapsed_secs"].as_f64().unwrap() > 0.0, "{r}");

        // Each of the 6 servers was one process, gone at SIGTERM: 2 closed,
        // 4 swept (jobs 2, 3, 5, 6), of which 2 of jobs that returned Ok.
        let tick = [
            ("sessions_opened", 7),
            ("sessions_closed", 2),
            ("sessions_finished", 3),
            ("sessions_abandoned", 2),
            ("sessions_orphaned", 4),
            ("sessions_removed", 7),
            ("sessions_swept", 4),
            ("processes_spawned", 7),
            ("processes_terminated", 6),
            ("sweeps", 1),
            ("leaks_prevented", 4),
            ("leaks_prevented_finished", 2),
        ];
        let expected = counters_json(&tick);
        assert_eq!(serde_json::to_value(sup.counters()).unwrap(), expected);
        let m = sup.metrics();
        assert_eq!(m.instances.len(), 1);
        assert_eq!(serde_json::to_value(m.instances[0].counters).unwrap(), expected);
        assert!(m.instances[0].sessions.is_empty(), "{m:?}");
        // A fresh root: its totals are this supervisor's counts.
        assert_eq!(serde_json::to_value(m.totals).unwrap(), expected);

        // From another process, as persisted by the tick's sweep.
        let instance = sup.instance().unwrap().name().to_owned();
        check_counter_series(&metrics_text(&env, &[]).await, Some((&instance, &expected)), &expected);
        let json: serde_json::Value = serde_json::from_str(&metrics_text(&env, &["--json"]).await).unwrap();
        assert_eq!(json["totals"], expected, "{json}");
        assert_eq!(json["instances"][0]["counters"], expected, "{json}");
        assert_eq!(json["instances"][0]["kind"], "supervisor", "{json}");

        // Shutdown's sweep is one more; the instance (and its series) goes,
        // its counts stay in the root's totals.
        sup.shutdown().await.unwrap();
        let mut after = tick.to_vec();
        after.retain(|(k, _)| *k != "sweeps");
        after.push(("sweeps", 2));
        let totals = counters_json(&after);
        check_counter_series(&metrics_text(&env, &[]).await, None, &totals);

        // A restart: a second supervisor adds to the totals. Its session's
        // child, sealed, tries to forge them and cannot.
        let sup = supervisor(&env).await;
        let root_path = env.path().display().to_string();
        let s = sup.session("forger").unwrap();
        let mut c = Command::new(FIXTURE);
        c.args(["try-setxattr", &root_path, "trusted.procscope.totals", "sessions_opened=999"]);
        let out = s.output(&mut c).await.unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(said.starts_with("try-setxattr ") && !said.contains("=ok"), "{said}");
        s.close().await.unwrap();
        let m = sup.metrics();
        assert_eq!((m.totals.sessions_opened, m.totals.sessions_closed), (8, 3), "{m:?}");
        sup.shutdown().await.unwrap();
        let mut restarted = after.clone();
        for (k, v) in &mut restarted {
            match *k {
                "sessions_opened" | "sessions_removed" | "processes_spawned" | "sweeps" | "sessions_closed" => *v += 1,
                _ => {}
            }
        }
        check_counter_series(&metrics_text(&env, &[]).await, None, &counters_json(&restarted));
    })
    .await;
    env.finish().await;
}

/// `--textfile DIR --every 10ms` rewrites the file while a reader reads it
/// thousands of times: every read is whole (ends with a line feed and with
/// the last family), the file is never missing once written, and no
/// temporary file is left once the writer stops at SIGTERM.
#[tokio::test]
async fn textfile_writes_are_atomic() {
    let env = TestEnv::new();
    let dir = temp_dir("atomic");
    within(90, async {
        let sup = supervisor(&env).await;
        let held = running_sessions(&sup).await;
        let root = env.path().display().to_string();
        let writer = tokio::process::Command::new(PROCSCOPE)
            .args(["metrics", "--root", &root, "--textfile", dir.to_str().unwrap(), "--every", "10ms"])
            .stdin(StdStdio::null())
            .stderr(StdStdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let file = dir.join("procscope.prom");
        let (mut reads, mut seen_first) = (0usize, false);
        let mut inodes = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (reads < 3000 || inodes.len() < 20) && Instant::now() < deadline {
            let mut f = match std::fs::File::open(&file) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !seen_first => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => panic!("after {reads} reads, {}: {e}", file.display()),
            };
            seen_first = true;
            let mut text = String::new();
            std::io::Read::read_to_string(&mut f, &mut text).unwrap();
            inodes.insert(f.metadata().unwrap().ino());
            assert!(text.starts_with("# HELP procscope_root_info "), "read {reads}: {text:?}");
            assert!(text.ends_with('\n'), "read {reads} is cut: {text:?}");
            let last = text.lines().last().unwrap();
            assert!(last.starts_with("procscope_errors_total "), "read {reads} is cut: {last:?}");
            reads += 1;
            if reads % 100 == 0 {
                // Let the writer run on a busy machine.
                tokio::task::yield_now().await;
            }
        }
        assert!(reads >= 3000 && inodes.len() >= 20, "{reads} reads of {} versions in 60 s", inodes.len());
        let pid = writer.id().unwrap() as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let out = writer.wait_with_output().await.unwrap();
        assert!(out.status.success(), "{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        assert_eq!(listing(&dir), vec!["procscope.prom"], "temporary files left");

        drop(held);
        sup.shutdown().await.unwrap();
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    env.finish().await;
}

/// Bad arguments are refused with a clear message and exit code 2, and
/// nothing is written: `--every` without a unit or of 0, `--every` without
/// `--textfile`, a `--textfile` directory that does not exist.
#[tokio::test]
async fn bad_arguments_are_refused_and_nothing_is_written() {
    let env = TestEnv::new();
    let dir = temp_dir("refused");
    let root = env.path().display().to_string();
    let d = dir.to_str().unwrap();
    let missing = dir.join("no-such-dir");
    let m = missing.to_str().unwrap();
    for (args, says) in [
        (vec!["--textfile", d, "--every", "10"], "a duration needs a unit: 10s for seconds"),
        (vec!["--textfile", d, "--every", "0s"], "longer than 0"),
        (vec!["--every", "1s"], "--textfile"),
        (vec!["--textfile", m], "no such directory"),
        (vec!["--textfile", d, "--json"], "cannot be used with"),
    ] {
        let out = procscope(&[&["metrics", "--root", &root][..], &args].concat()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(listing(&dir).is_empty(), "{args:?} wrote {:?}", listing(&dir));
        assert!(!missing.exists());
    }
    // A root that does not exist.
    let out = procscope(&["metrics", "--root", "/sys/fs/cgroup/no-such-procscope-root", "--textfile", d]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(listing(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
    env.finish().await;
}

/// The example `metrics_endpoint` serves `Supervisor::metrics()` on a
/// loopback `/metrics`: one scrape sees its sessions and guardian, in text
/// that promtool accepts; it shuts down cleanly at SIGTERM.
#[tokio::test]
async fn the_metrics_endpoint_example_serves_metrics() {
    let promtool = tool("promtool");
    let env = TestEnv::new();
    let example = Path::new(env!("CARGO_BIN_EXE_procscope")).with_file_name("examples").join("metrics_endpoint");
    assert!(example.exists(), "{} is missing: `cargo build --examples` builds it", example.display());
    within(60, async {
        let mut child = tokio::process::Command::new(&example)
            .arg(env.path())
            .stdin(StdStdio::null())
            .stdout(StdStdio::piped())
            .stderr(StdStdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line).await.unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|r| r.strip_suffix("/metrics"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));

        let (head, body) = http_get(port, "/metrics").await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        let s = series(&body);
        let instance = body
            .lines()
            .find_map(|l| l.strip_prefix("procscope_instance_owner_alive{procscope_instance=\""))
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no instance: {body}"))
            .to_owned();
        let at = |family: &str, session: &str, state: &str| {
            format!("{family}{{procscope_instance=\"{instance}\",session=\"{session}\",state=\"{state}\"}}")
        };
        assert_eq!(s.get(&at("procscope_session_info", "web-search", "active")), Some(&1.0), "{body}");
        assert_eq!(s.get(&at("procscope_session_info", "abandoned", "orphaned")), Some(&1.0), "{body}");
        let key = format!("procscope_session_processes{{procscope_instance=\"{instance}\",session=\"files\"}}");
        assert_eq!(s.get(&key), Some(&2.0), "{body}");
        let key = format!("procscope_instance_guardian_alive{{procscope_instance=\"{instance}\"}}");
        assert_eq!(s.get(&key), Some(&1.0), "{body}");
        let key = format!("procscope_instance_sessions_opened_total{{procscope_instance=\"{instance}\"}}");
        assert_eq!(s.get(&key), Some(&3.0), "{body}");
        let checked = run_with_input(&promtool, &["check", "metrics"], &body).await;
        assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
        let (head, _) = http_get(port, "/nope").await.unwrap();
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        assert_eq!(unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) }, 0);
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).await.unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        assert_eq!(rest.lines().last(), Some("ok"), "{rest}");
        // The abandoned session was a leak, prevented at shutdown.
        assert!(rest.contains("1 leak(s) prevented"), "{rest}");
    })
    .await;
    env.wait_root_empty().await;
    env.finish().await;
}

/// The root's total `procscope_<name>_total` in `text` (0 when left out).
fn total(text: &str, name: &str) -> f64 {
    series(text).get(&format!("procscope_{name}_total")).copied().unwrap_or(0.0)
}

/// `procscope metrics` until the root's `sessions_swept` total reaches
/// `swept` (what the guardian spooled may come a moment after its work is
/// seen), at most 10 s; the last output.
async fn metrics_once_swept(env: &TestEnv, swept: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(env, &[]).await;
        if total(&text, "sessions_swept") >= swept || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names in the root's spool.
fn spool_files(env: &TestEnv) -> Vec<String> {
    listing(&spool_of(&env.path()))
}

#[tokio::test]
async fn what_the_guardian_ends_after_an_exec_reaches_the_totals_through_its_spool() {
    let env = TestEnv::new();
    within(60, async {
        let root = env.path().display().to_string();
        // The command exits at once, leaving a daemon, a child holding its
        // stdout and two more children: the guardian ends the four and
        // removes the session.
        let out = procscope(&[
            "exec",
            "--root",
            &root,
            "--session",
            "leaver",
            "--",
            FIXTURE,
            "daemon",
            "hold-stdout",
            "spawn",
            "2",
            "exit",
            "0",
        ])
        .await;
        assert!(out.status.success(), "{out:?}");
        env.wait_root_empty().await;
        let spool = spool_of(&env.path());
        let meta = std::fs::symlink_metadata(&spool).unwrap();
        assert!(meta.is_dir(), "{meta:?}");
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (2_147_483_646, 2_147_483_646, 0o700));

        let text = metrics_once_swept(&env, 1.0).await;
        assert_eq!(total(&text, "sessions_opened"), 1.0, "{text}");
        assert_eq!(total(&text, "processes_spawned"), 1.0, "{text}");
        assert_eq!(total(&text, "sessions_swept"), 1.0, "{text}");
        assert_eq!(total(&text, "sessions_removed"), 1.0, "{text}");
        assert_eq!(total(&text, "leaks_prevented"), 1.0, "{text}");
        assert_eq!(total(&text, "sweeps"), 1.0, "{text}");
        assert_eq!(total(&text, "processes_terminated") + total(&text, "processes_killed"), 4.0, "{text}");
        assert_eq!(total(&text, "errors"), 0.0, "{text}");
        // Folded once: the spool is empty, and the next read adds nothing.
        assert_eq!(spool_files(&env), Vec::<String>::new());
        assert_eq!(series(&metrics_text(&env, &[]).await), series(&text));
    })
    .await;
    let spool = spool_of(&env.path());
    env.finish().await;
    assert!(!spool.exists(), "{} left", spool.display());
}

#[tokio::test]
async fn what_the_guardian_of_a_killed_gateway_ends_reaches_the_totals() {
    let env = TestEnv::new();
    within(60, async {
        let (mut gw, lines) = Gateway::start(FIXTURE, &env.path(), 2, true);
        let instance = PathBuf::from(field(&lines, "instance"));
        // The helpers daemonized first: on Linux 7.1 and later the kernel
        // kills the gateway's direct children with it (CLONE_PIDFD_AUTOKILL),
        // and the helpers are what the guardian finds.
        drop(settled_daemons(&procscope::Cgroup::open(&instance).unwrap(), 2).await);
        gw.kill().unwrap();
        gw.wait().unwrap();
        // The guardian kills both sessions (each a child and the helper it
        // daemonized) and removes the instance.
        wait_gone_within(&instance, 20).await;
        let text = metrics_once_swept(&env, 2.0).await;
        assert_eq!(total(&text, "sessions_swept"), 2.0, "{text}");
        assert_eq!(total(&text, "sessions_removed"), 2.0, "{text}");
        assert_eq!(total(&text, "leaks_prevented"), 2.0, "{text}");
        assert!(total(&text, "processes_killed") >= 2.0, "{text}");
        assert_eq!(total(&text, "sweeps"), 1.0, "{text}");
        assert_eq!(total(&text, "errors"), 0.0, "{text}");
        assert_eq!(spool_files(&env), Vec::<String>::new());
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn the_guardian_spool_cannot_be_forged() {
    let env = TestEnv::new();
    within(60, async {
        let root = env.path().display().to_string();
        let spool = spool_of(&env.path());
        // A sealed uid-0 command (the spool exists before it runs: its
        // guardian is started first) cannot write into the spool.
        let out = procscope(&[
            "exec",
            "--seal",
            "--root",
            &root,
            "--session",
            "forger",
            "--",
            "sh",
            "-c",
            "echo sessions_swept=1000 > \"$1/x\" || exit 7; echo wrote",
            "sh",
            &spool.display().to_string(),
        ])
        .await;
        assert_eq!(out.status.code(), Some(7), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("ermission denied"), "{out:?}");
        env.wait_root_empty().await;
        // What an unsealed root process could put there is not the
        // guardian's: ignored, left in place.
        std::fs::write(spool.join("planted"), "sessions_swept=1000,processes_killed=1000\n").unwrap();
        let text = metrics_once_swept(&env, 1.0).await;
        // Only the session the guardian removed.
        assert_eq!(total(&text, "sessions_swept"), 1.0, "{text}");
        assert_eq!(total(&text, "processes_killed"), 0.0, "{text}");
        assert_eq!(spool_files(&env), vec!["planted".to_owned()]);
    })
    .await;
    let spool = spool_of(&env.path());
    env.finish().await;
    assert!(!spool.exists(), "{} left", spool.display());
}

#[tokio::test]
async fn a_full_guardian_spool_drops_what_it_cannot_hold() {
    let env = TestEnv::new();
    let log = temp_dir("spool-log").join("guardian.log");
    within(60, async {
        let root = env.path().display().to_string();
        let exec = |session: &'static str, args: &'static [&'static str]| {
            let (root, log) = (root.clone(), log.clone());
            async move {
                let out = tokio::process::Command::new(PROCSCOPE)
                    .args(["exec", "--root", &root, "--session", session, "--", FIXTURE])
                    .args(args)
                    .env("PROCSCOPE_GUARDIAN_LOG", &log)
                    .stdin(StdStdio::null())
                    .output()
                    .await
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
            }
        };
        // The first command makes the spool; the guardian counts its session.
        exec("first", &["exit", "0"]).await;
        env.wait_root_empty().await;
        let text = metrics_once_swept(&env, 1.0).await;
        assert_eq!(total(&text, "sessions_swept"), 1.0, "{text}");
        // Filled up with files the guardian could have written (no counts).
        let spool = spool_of(&env.path());
        for i in 0..10_000 {
            let f = spool.join(format!("filler-{i}"));
            std::fs::write(&f, "").unwrap();
            std::os::unix::fs::chown(&f, Some(2_147_483_646), Some(2_147_483_646)).unwrap();
        }
        exec("second", &["daemon", "exit", "0"]).await;
        env.wait_root_empty().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("spool holds 10000 files already")
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let said = std::fs::read_to_string(&log).unwrap();
        assert!(said.contains("not counted: the spool holds 10000 files already"), "{said}");
        assert_eq!(spool_files(&env).len(), 10_000);
        // The fillers are folded (adding nothing) and deleted; the second
        // session was dropped.
        let text = metrics_text(&env, &[]).await;
        assert_eq!(total(&text, "sessions_swept"), 1.0, "{text}");
        assert_eq!(total(&text, "leaks_prevented"), 0.0, "{text}");
        assert_eq!(spool_files(&env), Vec::<String>::new());
    })
    .await;
    let _ = std::fs::remove_dir_all(log.parent().unwrap());
    env.finish().await;
}
