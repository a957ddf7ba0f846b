//! The `procscope` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Keeps the child processes of long-running gateways contained.
#[derive(Parser, Debug)]
#[command(name = "procscope", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs a gateway tick with parallel jobs, some cancelled, and shows that nothing is left behind.
    Demo,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(procscope::guardian::GUARDIAN_ARG) {
        // Before anything else: the guardian stays small.
        procscope::guardian::main(&args[2..]);
    }
    let cli = Cli::parse();
    match cli.command {
        Cmd::Demo => {
            println!("procscope demo: will run cron ticks of parallel MCP jobs in per-session cgroups,");
            println!("cancel some of them mid-call, sweep the orphans and report `processes left behind: 0`.");
            println!("(the full demo arrives with the CLI; this build checks the host instead)");
            let h = procscope::cgroup::hierarchy::Hierarchy::discover()?;
            println!("cgroup2 mount: {} (hybrid: {})", h.mount_point.display(), h.hybrid);
        }
    }
    Ok(())
}
