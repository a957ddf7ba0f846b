//! An agent gateway built on procscope: cron-like ticks of parallel jobs, each
//! talking to an MCP stdio server through rmcp, some timing out or cancelled,
//! and a sweep after each tick.
//!
//! ```text
//! cargo run --release --features rmcp --example gateway -- gateway.json
//! ```
//!
//! The config (JSON):
//!
//! ```json
//! {
//!   "ticks": 3,                 // 0: run until SIGTERM/SIGINT
//!   "interval_ms": 1000,
//!   "parallelism": 4,           // null: unbounded
//!   "grace_ms": 2000,
//!   "guardian": true,
//!   "root": null,               // null: discover (delegated cgroup, or <cgroup2>/procscope)
//!   "servers": [{
//!     "name": "everything",
//!     "command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything"],
//!     "env": {}, "memory_max": "512M", "pids_max": 64, "cpu_max": null,
//!     "jobs": 4,
//!     "tool": "echo", "arguments": {"message": "hello"},
//!     "timeout_ms": 20000,
//!     "cancel_every": 0         // n > 0: every n-th job is cancelled mid-call
//!   }]
//! }
//! ```
//!
//! Each tick prints one line per job and the sweep report; a final line gives
//! the supervisor's counters.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use procscope::cgroup::limits::{parse_bytes, parse_cpu_max};
use procscope::{Command, JobOutcome, Limits, Stdio, Supervisor};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde::Deserialize;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "one")]
    ticks: u64,
    #[serde(default)]
    interval_ms: u64,
    #[serde(default)]
    parallelism: Option<usize>,
    #[serde(default = "two_seconds")]
    grace_ms: u64,
    #[serde(default)]
    guardian: bool,
    #[serde(default)]
    root: Option<String>,
    servers: Vec<Server>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Server {
    name: String,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    memory_max: Option<String>,
    #[serde(default)]
    pids_max: Option<u64>,
    #[serde(default)]
    cpu_max: Option<String>,
    #[serde(default = "one")]
    jobs: u64,
    tool: String,
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "twenty_seconds")]
    timeout_ms: u64,
    #[serde(default)]
    cancel_every: u64,
}

fn one() -> u64 {
    1
}
fn two_seconds() -> u64 {
    2000
}
fn twenty_seconds() -> u64 {
    20_000
}

impl Server {
    fn limits(&self) -> Result<Limits> {
        Ok(Limits {
            memory_max: self.memory_max.as_deref().map(|m| parse_bytes("memory_max", m)).transpose()?,
            pids_max: self.pids_max,
            cpu_max: self.cpu_max.as_deref().map(parse_cpu_max).transpose()?,
            ..Limits::default()
        })
    }
}

/// One job: a session, the server in it, initialize → tools/list → tools/call.
async fn job(sup: Supervisor, server: Server, id: String, cancel: bool) -> Result<String> {
    let session = sup.session_with_limits(&id, &server.limits()?)?;
    let mut cmd = Command::new(&server.command);
    cmd.args(&server.args).envs(&server.env).stderr(Stdio::Null);
    let transport = session.spawn_mcp(&mut cmd)?;
    let work = async {
        let client = ().serve(transport).await.context("initialize")?;
        let tools = client.list_all_tools().await.context("tools/list")?;
        if !tools.iter().any(|t| t.name == server.tool) {
            bail!("{} has no tool {:?}", server.name, server.tool);
        }
        let result = client
            .call_tool(CallToolRequestParams::new(server.tool.clone()).with_arguments(server.arguments.clone()))
            .await
            .context("tools/call")?;
        let text = serde_json::to_string(&result.content).unwrap_or_default();
        Ok::<_, anyhow::Error>(format!("{} tools, {}: {}", tools.len(), server.tool, truncate(&text, 60)))
    };
    // A cancelled job is cut off a moment after it started its call; a job that
    // runs over its timeout is cut off there. Either way the session is dropped
    // with its server alive, and the tick's sweep ends it.
    let limit = if cancel { Duration::from_millis(50) } else { Duration::from_millis(server.timeout_ms) };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) if cancel => bail!("cancelled"),
        Err(_) => bail!("timed out after {limit:?}"),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() > n { s.chars().take(n).collect::<String>() + "…" } else { s.to_owned() }
}

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args().nth(1).context("usage: gateway CONFIG.json")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let config: Config = serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
    let mut builder = Supervisor::builder().grace(Duration::from_millis(config.grace_ms)).guardian(config.guardian);
    if let Some(root) = &config.root {
        builder = builder.root(root);
    }
    let sup = builder.start().await?;
    match (sup.root(), sup.instance()) {
        (Some(root), Some(instance)) => println!(
            "gateway {}: root {}, instance {}, guardian {:?}; recovered: {}",
            std::process::id(),
            root.path().display(),
            instance.path().display(),
            sup.guardian_pid(),
            sup.recovery()
        ),
        // A default container: no cgroup2 can be written.
        _ => println!("gateway {}: contained with {}", std::process::id(), sup.containment().as_str()),
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = 0u64;
    loop {
        tick += 1;
        let mut names = Vec::new();
        let mut jobs = Vec::new();
        for server in &config.servers {
            for n in 0..server.jobs {
                let id = format!("{}-t{tick}-j{n}", server.name);
                let cancel = server.cancel_every > 0 && (n + 1) % server.cancel_every == 0;
                names.push(id.clone());
                jobs.push(job(sup.clone(), server.clone(), id, cancel));
            }
        }
        let run = sup.tick(jobs, config.parallelism);
        let report = tokio::select! {
            r = run => r,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        for (name, outcome) in names.iter().zip(&report.jobs) {
            match outcome {
                JobOutcome::Ok => println!("  {name}: ok"),
                JobOutcome::Failed(e) => println!("  {name}: {e}"),
                JobOutcome::Panicked(e) => println!("  {name}: panicked: {e}"),
                other => println!("  {name}: {other:?}"),
            }
        }
        println!("tick {tick}: {}", report);
        if config.ticks != 0 && tick >= config.ticks {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(config.interval_ms)) => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let counters = sup.counters();
    let report = sup.shutdown().await?;
    println!("shutdown: {report}");
    println!("counters: {counters:?}");
    Ok(())
}
