//! The `procscope` command line: a drop-in wrapper for gateways in any language
//! (`exec`, `end`), and tools for operators (`ps`, `sweep`, `metrics`,
//! `doctor`, `demo`).

mod cli;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Logging: procscope logs to stderr through `tracing`: warnings by default, more
with -v (info: one event per spawn, signal step, cgroup.kill, session end,
sweep and recovery), -vv (debug), -vvv (trace), errors only with -q. RUST_LOG
(for example RUST_LOG=procscope::event=info) takes precedence when set.
--log-format json writes one JSON object per line instead of text.

Exit codes:
  0    success
  1    the operation failed (or `doctor` found that containment would degrade,
       or `end` found no session for an id, without --missing-ok)
  2    invalid arguments or input, or a root that cannot be used (no cgroup2,
       not delegated, a missing controller); nothing was changed
  exec: the command's own exit status; 128+N when it was killed by signal N;
       125 when procscope failed before the command ran, 126 when the command
       could not be executed, 127 when it was not found";

/// Keeps the child processes of long-running gateways contained in per-session
/// cgroups, known by pidfds, ended with cgroup.kill.
#[derive(Parser, Debug)]
#[command(name = "procscope", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// More log output on stderr: -v info, -vv debug, -vvv trace
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    quiet: bool,
    /// How log lines on stderr are written: text, or one JSON object per line
    /// (for journald or a log shipper)
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

/// The format of the log lines on stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line: timestamp, level, target, the event's
    /// fields (flattened) and its spans
    Json,
}

/// Pointer to the exit codes, for the subcommands' help.
const SEE_EXIT_CODES: &str = "Exit codes and logging: see procscope --help.";

/// `metrics`' notes and exit codes.
const METRICS_HELP: &str = "\
With --textfile DIR it writes DIR/procscope.prom through a temporary file and
a rename: node_exporter --collector.textfile.directory=DIR exports it. With
--every it keeps doing so until SIGTERM or SIGINT, then exits 0; a failing
first write exits at once, later failures are reported and retried. Exit codes
and logging: see procscope --help.";

/// `exec`'s own exit codes.
const EXEC_EXIT_CODES: &str = "\
Exit codes: the command's own exit status; 128+N when it was killed by signal
N; 125 when procscope failed before the command ran, 126 when the command could
not be executed, 127 when it was not found. Logging: see procscope --help.";

#[derive(Args, Debug, Clone)]
struct RootArg {
    /// The cgroup under which procscope keeps its tree [default: the caller's
    /// delegated cgroup, else <cgroup2 mount>/procscope]
    #[arg(long, value_name = "PATH")]
    root: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run CMD in a session cgroup; put it in front of an MCP server's command.
    #[command(after_help = EXEC_EXIT_CODES)]
    Exec(cli::exec::ExecArgs),
    /// End the named sessions now: SIGTERM, grace, cgroup.kill, rmdir.
    #[command(after_help = SEE_EXIT_CODES)]
    End {
        #[command(flatten)]
        root: RootArg,
        /// How long processes get between SIGTERM and cgroup.kill
        #[arg(long, allow_hyphen_values = true, default_value = "2s", value_parser = parse_grace)]
        grace: Duration,
        /// The process whose sessions these are [default: $PROCSCOPE_OWNER, else
        /// the parent process]. Sessions that `exec`s started below it through
        /// intermediaries (a watchdog, `sh -c`, `npx`) are found too
        #[arg(long, value_name = "PID")]
        owner: Option<i32>,
        /// Exit 0 even when an id matches no session
        #[arg(long)]
        missing_ok: bool,
        /// Print a JSON object instead of text
        #[arg(long)]
        json: bool,
        /// Session ids
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// List instances and sessions under the root.
    #[command(after_help = SEE_EXIT_CODES)]
    Ps {
        #[command(flatten)]
        root: RootArg,
        /// Print JSON instead of a table (with --watch, one object per line)
        #[arg(long)]
        json: bool,
        /// Refresh every DURATION (e.g. 2s) until interrupted, with each
        /// session's CPU use since the last refresh and its memory trend
        #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
        watch: Option<Duration>,
    },
    /// Remove stale instances and sessions (owner gone); more with --orphans, --all, --all --force.
    #[command(after_help = SEE_EXIT_CODES)]
    Sweep {
        #[command(flatten)]
        root: RootArg,
        /// Also sessions marked orphaned by live owners
        #[arg(long)]
        orphans: bool,
        /// Every procscope instance and session; those of live owners only
        /// with --force (without it they are listed as skipped)
        #[arg(long, conflicts_with = "orphans")]
        all: bool,
        /// With --all: end live owners' instances too (their gateways lose
        /// their sessions)
        #[arg(long, requires = "all")]
        force: bool,
        /// How long processes get between SIGTERM and cgroup.kill
        #[arg(long, allow_hyphen_values = true, default_value = "2s", value_parser = parse_grace)]
        grace: Duration,
        /// Print a JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print metrics in the Prometheus text format, or write them for
    /// node_exporter's textfile collector (--textfile DIR [--every 15s]).
    #[command(after_help = METRICS_HELP)]
    Metrics(cli::metrics::MetricsArgs),
    /// Check what this host supports and which mechanisms procscope will use.
    #[command(after_help = SEE_EXIT_CODES)]
    Doctor {
        #[command(flatten)]
        root: RootArg,
        /// Print a JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Run a gateway with cron ticks of parallel MCP jobs, some cancelled, and
    /// show that nothing is left behind.
    #[command(after_help = SEE_EXIT_CODES)]
    Demo(cli::demo::DemoArgs),
    /// Print a shell completion script: `source <(procscope completions bash)`.
    #[command(after_help = SEE_EXIT_CODES)]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `procscope man | man -l -`.
    #[command(after_help = SEE_EXIT_CODES)]
    Man,
    /// A small MCP stdio server that misbehaves on request (used by the demo).
    #[command(hide = true)]
    DemoServer(cli::demo_server::ServerArgs),
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    procscope::cgroup::limits::parse_duration("grace", s).map_err(|e| e.to_string())
}

/// A refresh interval: a duration with a unit, more than zero.
fn parse_interval(s: &str) -> Result<Duration, String> {
    match procscope::cgroup::limits::parse_duration("interval", s).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("an interval of 0 would never pause; give one such as 2s or 500ms".into()),
        d => Ok(d),
    }
}

/// Logs to stderr: RUST_LOG when set, else the level -v / -q ask for
/// (warnings by default); as text or as JSON lines.
fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() && verbose == 0 && !quiet => EnvFilter::new(spec),
        _ => EnvFilter::new(level),
    };
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).try_init(),
        // tracing-subscriber's JSON layout, with the event's fields at the
        // top level rather than under "fields"; "span" and "spans" carry the
        // fields of the spans it is in (the session id).
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).try_init(),
    };
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is fine.
fn print_out(what: &str, bytes: &[u8]) -> i32 {
    use std::io::Write;
    match std::io::stdout().write_all(bytes).and_then(|()| std::io::stdout().flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("procscope {what}: {e}");
            1
        }
    }
}

fn main() {
    let cli = Cli::parse();
    // The hidden demo server speaks JSON-RPC on stdio: it logs nothing.
    if !matches!(cli.command, Cmd::DemoServer(_)) {
        init_logging(cli.verbose, cli.quiet, cli.log_format);
    }
    let code = match cli.command {
        Cmd::Exec(a) => cli::exec::run(a),
        Cmd::End { root, grace, owner, missing_ok, json, ids } => {
            cli::run_async(cli::admin::end(root.root, grace, owner, missing_ok, json, ids))
        }
        Cmd::Ps { root, json, watch } => cli::run_async(cli::ps::ps(root.root, json, watch)),
        Cmd::Sweep { root, orphans, all, force, grace, json } => {
            cli::run_async(cli::admin::sweep(root.root, orphans, all, force, grace, json))
        }
        Cmd::Metrics(a) => cli::run_async(cli::metrics::run(a)),
        Cmd::Doctor { root, json } => cli::run_async(cli::doctor::run(root.root, json)),
        Cmd::Demo(a) => cli::run_async(cli::demo::run(a)),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "procscope", &mut script);
            print_out("completions", &script)
        }
        Cmd::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => print_out("man", &page),
                Err(e) => {
                    eprintln!("procscope man: {e}");
                    1
                }
            }
        }
        Cmd::DemoServer(a) => cli::demo_server::run(a),
    };
    std::process::exit(code)
}
