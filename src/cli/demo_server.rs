//! A small MCP stdio server (newline-delimited JSON-RPC 2.0) that misbehaves
//! like real ones on request, with `--kind` one or more of (comma-separated):
//! `plain`; `daemonizer` starts a helper with `setsid --fork` that outlives
//! it; `linger` stays after stdin closes (until a signal ends it); `stubborn`
//! ignores SIGTERM and lingers. Tools: `echo`, `slow` and `pid` (the server's
//! own pid).

use std::io::{BufRead, Write};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// plain, daemonizer, linger or stubborn; several separated by commas
    #[arg(long, default_value = "plain")]
    kind: String,
    /// Do nothing until killed (a helper, or a probe)
    #[arg(long)]
    idle: bool,
    /// A tag that marks the processes of one demo run
    #[arg(long, default_value = "")]
    tag: String,
}

/// Sets SIGTERM to ignored, as a server that shrugs off a polite stop does.
fn ignore_sigterm() {
    // SAFETY: SIG_IGN is not a handler: no code of ours runs on the signal, so
    // no async-signal-safety question arises.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
}

pub fn run(a: ServerArgs) -> i32 {
    if a.idle {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let kinds: Vec<&str> = a.kind.split(',').collect();
    if let Some(other) = kinds.iter().find(|k| !["plain", "daemonizer", "linger", "stubborn"].contains(k)) {
        eprintln!("demo-server: unknown kind {other:?}");
        return 2;
    }
    if kinds.contains(&"stubborn") {
        ignore_sigterm();
    }
    if kinds.contains(&"daemonizer") {
        // Like a server that starts a background helper in a session of its
        // own: `setsid --fork` double-forks, so the helper is nobody's child.
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let _ = std::process::Command::new("setsid")
            .arg("--fork")
            .arg(exe)
            .args(["demo-server", "--idle", "--tag", &a.tag])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    for line in stdin.lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let Ok(req) = serde_json::from_str::<Value>(&line) else {
            let _ = writeln!(
                out,
                "{}",
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}})
            );
            continue;
        };
        let Some(id) = req.get("id").cloned() else { continue }; // a notification
        let method = req["method"].as_str().unwrap_or("");
        let reply = match method {
            "initialize" => Ok(json!({
                "protocolVersion": req["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "procscope-demo-server", "version": env!("CARGO_PKG_VERSION")},
            })),
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": [
                {"name": "echo", "description": "Returns its text", "inputSchema":
                    {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
                {"name": "slow", "description": "Sleeps for ms milliseconds", "inputSchema":
                    {"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]}},
                {"name": "pid", "description": "The server's own pid", "inputSchema":
                    {"type": "object", "properties": {}}},
            ]})),
            "tools/call" => {
                let args = &req["params"]["arguments"];
                match req["params"]["name"].as_str() {
                    Some("echo") => {
                        Ok(json!({"content": [{"type": "text", "text": args["text"].as_str().unwrap_or("")}]}))
                    }
                    Some("slow") => {
                        let ms = args["ms"].as_u64().unwrap_or(1000);
                        std::thread::sleep(Duration::from_millis(ms));
                        Ok(json!({"content": [{"type": "text", "text": format!("slept {ms} ms")}]}))
                    }
                    Some("pid") => Ok(json!({"content": [{"type": "text", "text": std::process::id().to_string()}]})),
                    _ => Err((-32602, "unknown tool")),
                }
            }
            _ => Err((-32601, "method not found")),
        };
        let msg = match reply {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, message)) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
        };
        if writeln!(out, "{msg}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    if kinds.contains(&"stubborn") || kinds.contains(&"linger") {
        // Stuck servers do not exit on EOF either.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    0
}
