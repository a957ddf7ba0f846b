//! `procscope metrics`: the Prometheus text exposition format on stdout, or
//! written atomically into a directory for node_exporter's textfile
//! collector, once or every `--every`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use procscope::cgroup::limits::parse_duration;
use procscope::metrics::Metrics;
use procscope::{Error, Root};

use super::{FAILED, USAGE, fail, locate_root_or_held};

/// The file written in the `--textfile` directory (node_exporter reads the
/// `*.prom` files there).
pub const TEXTFILE: &str = "procscope.prom";

#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    /// The cgroup under which procscope keeps its tree [default: the caller's
    /// delegated cgroup, else <cgroup2 mount>/procscope]
    #[arg(long, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Write DIR/procscope.prom (through a temporary file and a rename, so a
    /// reader never sees half of it) instead of printing: for node_exporter's
    /// --collector.textfile.directory
    #[arg(long, value_name = "DIR")]
    textfile: Option<PathBuf>,
    /// With --textfile: write it again every DURATION (such as 15s or 1m)
    /// until SIGTERM or SIGINT
    #[arg(long, value_name = "DURATION", requires = "textfile", value_parser = parse_every)]
    every: Option<Duration>,
    /// Print the metrics as a JSON object instead
    #[arg(long, conflicts_with = "textfile")]
    json: bool,
}

fn parse_every(s: &str) -> Result<Duration, String> {
    match parse_duration("--every", s) {
        Ok(d) if d.is_zero() => Err(Error::InvalidInput {
            what: "--every",
            value: s.to_owned(),
            fix: "the period must be longer than 0, such as 15s".into(),
        }
        .to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(a: MetricsArgs) -> i32 {
    // Checked before anything is read or written.
    if let Some(dir) = &a.textfile
        && !dir.is_dir()
    {
        let e = Error::InvalidInput {
            what: "--textfile",
            value: dir.display().to_string(),
            fix: "no such directory; create it, or give the directory of node_exporter's \
                  --collector.textfile.directory"
                .into(),
        };
        return fail("metrics", &e);
    }
    // `--root` names a cgroup root: only its tree. Without it, the commands
    // `exec` holds (where no cgroup2 can be written) too.
    let run = a.root.is_none().then(procscope::held::run_dir);
    let root = match locate_root_or_held(a.root) {
        Ok(r) => r,
        Err(e) => return fail("metrics", &e),
    };
    let (root, run) = (root.as_ref(), run.as_deref());
    let Some(dir) = a.textfile else {
        let m = match gather(root, run) {
            Ok(m) => m,
            Err(e) => return fail("metrics", &e),
        };
        let text = if a.json {
            match serde_json::to_string(&m) {
                Ok(j) => j + "\n",
                Err(e) => {
                    eprintln!("procscope metrics: {e}");
                    return FAILED;
                }
            }
        } else {
            m.to_prometheus()
        };
        return crate::print_out("metrics", text.as_bytes());
    };
    let Some(every) = a.every else {
        return match write_round(root, run, &dir) {
            Ok(()) => 0,
            Err(code) => code,
        };
    };
    // Taken before the first write: a SIGTERM then ends the loop between
    // two writes, never one half-way.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("procscope metrics: cannot handle signals: {e}");
            return FAILED;
        }
    };
    let mut first = true;
    loop {
        match write_round(root, run, &dir) {
            Ok(()) => {}
            // A first round that fails is a setup problem: said at once.
            Err(code) if first => return code,
            // Later ones (the root's tree changing under the read, a full
            // disk) are said, and the next round tries again.
            Err(_) => {}
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    0
}

/// Gathers the metrics and writes them into `dir`; the exit code on failure
/// (the error said on stderr).
fn write_round(root: Option<&Root>, run: Option<&Path>, dir: &Path) -> Result<(), i32> {
    let m = gather(root, run).map_err(|e| fail("metrics", &e))?;
    write_textfile(dir, &m.to_prometheus()).map_err(|e| {
        eprintln!("procscope metrics: writing {}: {e}", dir.join(TEXTFILE).display());
        if e.kind() == std::io::ErrorKind::NotFound { USAGE } else { FAILED }
    })
}

/// The metrics of the cgroup tree under `root` (its guardians' spools
/// folded in first), with the commands held by `exec` under `run` as
/// instances of their own; only those where there is no root.
fn gather(root: Option<&Root>, run: Option<&Path>) -> Result<Metrics, Error> {
    let held = run.map(Metrics::gather_held);
    let Some(root) = root else {
        return Ok(held.unwrap_or_else(|| Metrics::gather_held(&procscope::held::run_dir())));
    };
    procscope::metrics::fold_guardian_spool(root);
    let mut m = Metrics::gather(root)?;
    m.instances.extend(held.into_iter().flat_map(|h| h.instances));
    Ok(m)
}

/// Writes `text` as `dir/procscope.prom` atomically: into a temporary file of
/// the same directory (whose name does not end in `.prom`, so node_exporter
/// skips it), `fsync`, then `rename` over the old file. A reader sees the
/// old file or the new one, whole; the temporary file is removed on failure.
pub fn write_textfile(dir: &Path, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{TEXTFILE}.{}.tmp", std::process::id()));
    // Left by an earlier run of this pid that was killed half-way.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        // Readable by node_exporter's user whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(TEXTFILE))?;
        // The rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
