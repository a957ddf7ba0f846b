//! `procscope demo`: a gateway runs cron ticks of parallel jobs; each job opens a
//! session, starts the bundled MCP server and talks JSON-RPC to it (initialize,
//! tools/list, tools/call); some jobs are cancelled mid-call; one server kind
//! daemonizes a helper, another ignores SIGTERM. After each tick the orphans are
//! swept. The run ends with `processes left behind: N`.

use std::path::PathBuf;
use std::time::Duration;

use procscope::{Command, Stdio, Supervisor};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::{FAILED, USAGE};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The cgroup under which procscope keeps its tree [default: the caller's
    /// delegated cgroup, else <cgroup2 mount>/procscope]
    #[arg(long, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Jobs per tick, all run in parallel
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Number of cron ticks
    #[arg(long, default_value_t = 3)]
    ticks: usize,
    /// Share of jobs cancelled in the middle of a tool call (0 to 1)
    #[arg(long, default_value_t = 0.25)]
    cancel_ratio: f64,
    /// First run the same ticks with tokio::process and kill_on_drop, and show
    /// what that leaves behind
    #[arg(long)]
    compare_naive: bool,
    /// Grace between SIGTERM and cgroup.kill
    #[arg(long, allow_hyphen_values = true, default_value = "300ms", value_parser = |s: &str| procscope::cgroup::limits::parse_duration("grace", s).map_err(|e| e.to_string()))]
    grace: Duration,
}

const KINDS: [&str; 3] = ["plain", "daemonizer", "stubborn"];

/// Whether job `j` of tick `t` is cancelled: a fixed pseudo-random choice.
fn cancelled(t: usize, j: usize, ratio: f64) -> bool {
    // splitmix64 of (tick, job)
    let mut x = ((t as u64) << 32 | j as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    ((x % 10_000) as f64) < ratio * 10_000.0
}

pub async fn run(a: DemoArgs) -> i32 {
    if !(0.0..=1.0).contains(&a.cancel_ratio) {
        eprintln!("procscope demo: --cancel-ratio {} is not between 0 and 1", a.cancel_ratio);
        return USAGE;
    }
    if a.jobs == 0 || a.ticks == 0 {
        eprintln!("procscope demo: --jobs and --ticks must be at least 1");
        return USAGE;
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    println!(
        "procscope demo: {} tick(s) of {} parallel MCP jobs, {:.0}% cancelled mid-call; servers: {}",
        a.ticks,
        a.jobs,
        a.cancel_ratio * 100.0,
        KINDS.join(", ")
    );
    if a.compare_naive {
        naive(&a, &exe).await;
    }
    let mut builder = Supervisor::builder().grace(a.grace).guardian(true);
    if let Some(root) = &a.root {
        builder = builder.root(root);
    }
    let sup = match builder.start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("procscope demo: {e}");
            eprintln!("The demo needs root or a delegated cgroup: run it with sudo, or with");
            eprintln!("  systemd-run --user -p Delegate=yes --pty cargo run --release -- demo");
            return FAILED;
        }
    };
    let tag = format!("demo-{}", std::process::id());
    match sup.root() {
        Some(root) => println!(
            "\nwith procscope (root {}, guardian pid {})",
            root.path().display(),
            sup.guardian_pid().unwrap_or(0)
        ),
        None => println!("\nwith procscope (no writable cgroup2 here: contained with holders)"),
    }
    // done: jobs that returned normally (their sessions are `finished`);
    // cancelled: jobs cut off mid-call (their sessions are `abandoned`);
    // leaks: sessions in which the sweep still found a process running.
    println!(
        "{:>4}  {:>4}  {:>9}  {:>8}  {:>8}  {:>9}  {:>5}  {:>5}  {:>10}  {:>6}  {:>8}",
        "tick",
        "done",
        "cancelled",
        "sessions",
        "finished",
        "abandoned",
        "leaks",
        "swept",
        "terminated",
        "killed",
        "sweep ms"
    );
    for t in 0..a.ticks {
        let before = sup.counters();
        let jobs: Vec<_> = (0..a.jobs)
            .map(|j| {
                let sup = sup.clone();
                let exe = exe.clone();
                let tag = tag.clone();
                let cancel = cancelled(t, j, a.cancel_ratio);
                async move { contained_job(sup, exe, tag, t, j, cancel).await }
            })
            .collect();
        let report = sup.tick(jobs, None).await;
        let after = sup.counters();
        let cancelled_jobs =
            report.jobs.iter().filter(|o| matches!(o, procscope::JobOutcome::Failed(m) if m == "cancelled")).count();
        println!(
            "{:>4}  {:>4}  {:>9}  {:>8}  {:>8}  {:>9}  {:>5}  {:>5}  {:>10}  {:>6}  {:>8.1}",
            t + 1,
            report.ok(),
            cancelled_jobs,
            after.sessions_opened - before.sessions_opened,
            after.sessions_finished - before.sessions_finished,
            after.sessions_abandoned - before.sessions_abandoned,
            report.leaks_prevented(),
            report.sweep.sessions,
            report.sweep.terminated,
            report.sweep.killed,
            report.sweep.elapsed.as_secs_f64() * 1e3
        );
        for e in report.jobs.iter().filter_map(|o| match o {
            procscope::JobOutcome::Failed(m) if m != "cancelled" => Some(m.clone()),
            procscope::JobOutcome::Panicked(m) => Some(m.clone()),
            _ => None,
        }) {
            println!("      job error: {e}");
        }
    }
    let c = sup.counters();
    if let Err(e) = sup.shutdown().await {
        eprintln!("procscope demo: shutdown: {e}");
    }
    println!(
        "sessions opened {}: {} closed, {} of jobs that finished, {} abandoned by cancelled or failed jobs",
        c.sessions_opened, c.sessions_closed, c.sessions_finished, c.sessions_abandoned
    );
    println!(
        "leaks prevented {}: {} of finished jobs whose servers were still running, {} abandoned",
        c.leaks_prevented,
        c.leaks_prevented_finished,
        c.leaks_prevented - c.leaks_prevented_finished
    );
    println!(
        "processes spawned {}, ended by SIGTERM {}, killed {}",
        c.processes_spawned, c.processes_terminated, c.processes_killed
    );
    let left = tagged_processes(&tag);
    println!("processes left behind: {}", left.len());
    if left.is_empty() { 0 } else { FAILED }
}

async fn contained_job(
    sup: Supervisor,
    exe: PathBuf,
    tag: String,
    t: usize,
    j: usize,
    cancel: bool,
) -> Result<(), String> {
    let session = sup.session(&format!("t{t}-j{j}")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&exe);
    cmd.args(["demo-server", "--kind", KINDS[j % KINDS.len()], "--tag", &tag])
        .stdin(Stdio::Piped)
        .stdout(Stdio::Piped)
        .stderr(Stdio::Null);
    let mut server = session.spawn(&mut cmd).map_err(|e| e.to_string())?;
    let (stdin, stdout) = (server.stdin.take().expect("piped"), server.stdout.take().expect("piped"));
    // A job that returns — done or cancelled — just drops its session, as a
    // gateway whose teardown did not run would: the guard takes over.
    mcp_job(stdin, stdout, cancel).await
}

/// initialize → tools/list → tools/call; a cancelled job calls a slow tool and
/// is cut off by its timeout in the middle of the call.
async fn mcp_job(stdin: impl AsyncWrite + Unpin, stdout: impl AsyncRead + Unpin, cancel: bool) -> Result<(), String> {
    let mut rpc = Rpc { w: stdin, r: BufReader::new(stdout), id: 0 };
    rpc.call("initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "procscope-demo", "version": "1"}})).await?;
    rpc.notify("notifications/initialized").await?;
    let tools = rpc.call("tools/list", json!({})).await?;
    if tools["tools"].as_array().is_none_or(|t| t.is_empty()) {
        return Err("no tools".into());
    }
    if cancel {
        let call = rpc.call("tools/call", json!({"name": "slow", "arguments": {"ms": 60_000}}));
        return match tokio::time::timeout(Duration::from_millis(150), call).await {
            Ok(r) => r.map(drop),
            Err(_) => Err("cancelled".into()),
        };
    }
    let r = rpc.call("tools/call", json!({"name": "echo", "arguments": {"text": "hello"}})).await?;
    if r["content"][0]["text"] != "hello" {
        return Err(format!("unexpected reply {r}"));
    }
    Ok(())
}

struct Rpc<W, R> {
    w: W,
    r: BufReader<R>,
    id: u64,
}

impl<W: AsyncWrite + Unpin, R: AsyncRead + Unpin> Rpc<W, R> {
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.id += 1;
        let msg = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params});
        self.send(&msg).await?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                return Err(format!("{method}: the server closed its stdout"));
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("{method}: bad JSON: {e}"))?;
            if v["id"] == self.id {
                return match v.get("result") {
                    Some(r) => Ok(r.clone()),
                    None => Err(format!("{method}: {}", v["error"])),
                };
            }
        }
    }

    async fn notify(&mut self, method: &str) -> Result<(), String> {
        self.send(&json!({"jsonrpc": "2.0", "method": method})).await
    }

    async fn send(&mut self, msg: &Value) -> Result<(), String> {
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.w.write_all(&bytes).await.map_err(|e| e.to_string())?;
        self.w.flush().await.map_err(|e| e.to_string())
    }
}

/// The same ticks with plain `tokio::process` and `kill_on_drop(true)`: the
/// direct child gets SIGKILL on drop, nothing else does.
async fn naive(a: &DemoArgs, exe: &std::path::Path) {
    let tag = format!("naive-{}", std::process::id());
    println!("\nwithout procscope (tokio::process + kill_on_drop)");
    for t in 0..a.ticks {
        let jobs: Vec<_> = (0..a.jobs)
            .map(|j| {
                let exe = exe.to_path_buf();
                let tag = tag.clone();
                let cancel = cancelled(t, j, a.cancel_ratio);
                tokio::spawn(async move {
                    let mut child = tokio::process::Command::new(&exe)
                        .args(["demo-server", "--kind", KINDS[j % KINDS.len()], "--tag", &tag])
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .map_err(|e| e.to_string())?;
                    let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
                    mcp_job(stdin, stdout, cancel).await
                })
            })
            .collect();
        for j in jobs {
            let _ = j.await;
        }
        // Give tokio's orphan reaping and the daemons a moment to settle.
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!("  tick {}: processes of this run still alive: {}", t + 1, tagged_processes(&tag).len());
    }
    let left = tagged_processes(&tag);
    println!("without procscope: processes left behind: {} (the demo now kills them itself)", left.len());
    for pid in left {
        if let Ok(fd) = procscope::PidFd::open(pid as u32)
            && cmdline(pid).is_some_and(|c| c.contains(&tag))
        {
            let _ = fd.send_signal(procscope::Signal::KILL);
        }
    }
}

fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Live processes whose command line carries `tag` (zombies excluded).
fn tagged_processes(tag: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')))
                .unwrap_or(true);
            !zombie && cmdline(*pid).is_some_and(|c| c.split(' ').any(|w| w == tag))
        })
        .collect()
}
