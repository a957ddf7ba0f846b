//! `procscope ps`: the instances and sessions under a root, once or
//! refreshed (`--watch`), laid out for the terminal's width (80 columns when
//! it cannot be told).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procscope::tree::{self, InstanceInfo, SessionInfo};
use procscope::{Cgroup, Owner};

use super::{fail, human_age};

/// Memory samples kept per session for the trend column.
const TREND: usize = 8;
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// What `--watch` remembers between refreshes, per session cgroup.
#[derive(Default)]
struct History {
    /// The last cpu.stat usage and when it was read.
    cpu: HashMap<PathBuf, (u64, Instant)>,
    /// The last memory samples, oldest first.
    memory: HashMap<PathBuf, Vec<u64>>,
}

pub async fn ps(root: Option<PathBuf>, json: bool, watch: Option<Duration>) -> i32 {
    // `--root` names a cgroup root: only its sessions. Without it, the
    // commands `exec` holds (where no cgroup2 can be written) too.
    let run = root.is_none().then(procscope::held::run_dir);
    let root = match super::locate_root_or_held(root) {
        Ok(r) => r,
        Err(e) => return fail("ps", &e),
    };
    let mut history = History::default();
    let mut stop = std::pin::pin!(super::terminated());
    let tty = std::io::stdout().is_terminal();
    loop {
        let instances = match root.as_ref().map(tree::list).transpose() {
            Ok(i) => i.unwrap_or_default(),
            Err(e) => return fail("ps", &e),
        };
        // The commands `exec` holds where no cgroup2 can be written.
        let held = run.as_deref().map(procscope::held::list).unwrap_or_default();
        let now = Instant::now();
        let all: Vec<InstanceInfo> = instances.iter().chain(&held).cloned().collect();
        let cpu = sample(&all, &mut history, now);
        let mut out = String::new();
        if json {
            let v = serde_json::json!({
                "root": root.as_ref().map(|r| r.path()),
                "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "instances": instances,
                "held": held,
                "cpu_percent": cpu.iter().map(|(p, c)| (p.display().to_string(), c)).collect::<HashMap<_, _>>(),
            });
            out.push_str(&format!("{v}\n"));
        } else {
            if watch.is_some() && tty {
                // Home and clear: the next table replaces this one.
                out.push_str("\x1b[H\x1b[2J");
            }
            let width = width();
            if let Some(root) = &root {
                out.push_str(&format!("root: {}\n", root.path().display()));
                render(&mut out, &instances, &cpu, &history, watch.is_some(), width);
            }
            if let Some(run) = &run
                && (!held.is_empty() || root.is_none())
            {
                out.push_str(&format!(
                    "held by exec (no cgroup; one holder per command): {}\n",
                    run.join("held").display()
                ));
                render(&mut out, &held, &cpu, &history, watch.is_some(), width);
            }
        }
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (`ps --watch | head`) ends the watch quietly.
        if stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            return 0;
        }
        drop(stdout);
        let Some(every) = watch else { return 0 };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stop => return 0,
        }
    }
}

/// Reads each session's cpu usage and memory; returns the cpu use since the
/// last sample, in percent of one CPU, for sessions sampled before.
fn sample(instances: &[InstanceInfo], history: &mut History, now: Instant) -> HashMap<PathBuf, f64> {
    let mut cpu = HashMap::new();
    let mut seen = Vec::new();
    for s in instances.iter().flat_map(|i| &i.sessions) {
        seen.push(s.path.clone());
        let samples = history.memory.entry(s.path.clone()).or_default();
        samples.push(s.memory_bytes);
        if samples.len() > TREND {
            samples.remove(0);
        }
        let Some(usage) = cpu_usec(&s.path) else { continue };
        if let Some((before, at)) = history.cpu.insert(s.path.clone(), (usage, now)) {
            let wall = now.duration_since(at).as_micros() as f64;
            if wall > 0.0 {
                cpu.insert(s.path.clone(), usage.saturating_sub(before) as f64 * 100.0 / wall);
            }
        }
    }
    // Sessions that ended are forgotten.
    history.cpu.retain(|p, _| seen.contains(p));
    history.memory.retain(|p, _| seen.contains(p));
    cpu
}

/// `usage_usec` of the session's `cpu.stat`: its processes' and every
/// descendant cgroup's CPU time (present without the cpu controller).
fn cpu_usec(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path.join("cpu.stat"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// The width to fit: `COLUMNS`, else the terminal's own (80 if it cannot
/// be told); no limit when stdout is not a terminal (a pipe to `grep` gets
/// whole lines).
fn width() -> usize {
    if let Some(c) = std::env::var("COLUMNS").ok().and_then(|c| c.parse::<usize>().ok()).filter(|c| *c >= 40) {
        return c;
    }
    if !std::io::stdout().is_terminal() {
        return usize::MAX;
    }
    rustix::termios::tcgetwinsize(std::io::stdout()).ok().map(|w| w.ws_col as usize).filter(|c| *c >= 40).unwrap_or(80)
}

/// The guardian's pid, if the instance has one that still runs.
fn guardian_of(instance: &InstanceInfo) -> Option<i32> {
    let value = Cgroup::open(&instance.path).ok()?.meta("guardian").ok()??;
    let mut it = value.split_whitespace();
    let (pid, start) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    Owner { pid, start }.is_alive().then_some(pid)
}

fn render(
    out: &mut String,
    instances: &[InstanceInfo],
    cpu: &HashMap<PathBuf, f64>,
    history: &History,
    watching: bool,
    width: usize,
) {
    if instances.is_empty() {
        out.push_str("no procscope instances\n");
        return;
    }
    for i in instances {
        let owner = if i.owner_alive { "alive" } else { "gone: stale" };
        let guardian = match guardian_of(i) {
            Some(pid) => format!("guardian {pid}"),
            None if i.path.starts_with(procscope::held::run_dir()) => "held".into(),
            None => "no guardian".into(),
        };
        out.push_str(&fit(
            &format!("INSTANCE {}  owner {} {owner}  {guardian}  age {}", i.name, i.owner_pid, human_age(i.age_secs)),
            width,
        ));
        out.push('\n');
        if i.sessions.is_empty() {
            out.push_str("  (no sessions)\n");
            continue;
        }
        // Fixed columns take 55 characters (46 without the trend); the
        // command gets the rest.
        let trend = if watching { format!(" {:<8}", "TREND") } else { String::new() };
        let header = format!(
            "  {:<14} {:<8} {:>5} {:>7} {:>6}{trend} {:>6}  COMMAND",
            "SESSION", "STATE", "PROCS", "MEMORY", "CPU", "AGE"
        );
        out.push_str(&fit(&header, width));
        out.push('\n');
        for s in &i.sessions {
            out.push_str(&fit(&row(s, cpu, history, watching), width));
            out.push('\n');
        }
    }
    if instances.iter().flat_map(|i| &i.sessions).any(|s| s.memory_source == "rss") {
        let why = if instances.iter().any(|i| i.path.starts_with(procscope::held::run_dir())) {
            "held commands have no cgroup"
        } else {
            "this host's cgroup2 has no memory controller"
        };
        out.push_str(&fit(&format!("* resident set sizes: {why}"), width));
        out.push('\n');
    }
}

fn row(s: &SessionInfo, cpu: &HashMap<PathBuf, f64>, history: &History, watching: bool) -> String {
    let memory = format!("{}{}", short_bytes(s.memory_bytes), if s.memory_source == "rss" { "*" } else { "" });
    let cpu = match (cpu.get(&s.path), cpu_usec(&s.path)) {
        (Some(pct), _) => format!("{pct:.1}%"),
        // Before a second sample (and without --watch): CPU time so far.
        (None, Some(usec)) => short_secs(usec),
        (None, None) => "-".into(),
    };
    let trend = match watching {
        true => format!(" {:<8}", sparkline(history.memory.get(&s.path).map_or(&[][..], |v| &v[..]))),
        false => String::new(),
    };
    format!(
        "  {:<14} {:<8} {:>5} {:>7} {:>6}{} {:>6}  {}",
        clip(&s.id, 14),
        s.state.as_str(),
        s.processes,
        memory,
        cpu,
        trend,
        human_age(s.age_secs),
        short_command(s.command.as_deref().unwrap_or(""))
    )
}

/// The command with its program's file name instead of its path: the part
/// that tells servers apart comes first in a narrow column.
fn short_command(command: &str) -> String {
    match command.split_once(' ') {
        Some((program, args)) => format!("{} {args}", program.rsplit('/').next().unwrap_or(program)),
        None => command.rsplit('/').next().unwrap_or(command).to_owned(),
    }
}

/// Memory samples as bars scaled to the largest one.
fn sparkline(samples: &[u64]) -> String {
    let max = samples.iter().copied().max().unwrap_or(0);
    samples
        .iter()
        .map(|&v| if max == 0 { SPARKS[0] } else { SPARKS[((v as u128 * 7) / max as u128) as usize] })
        .collect()
}

/// `41.2M`-style sizes that fit 7 columns.
fn short_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b}B") } else { format!("{v:.1}{}", UNITS[u]) }
}

/// CPU time as `1.2s`, `3m04s`, `2h05m`.
fn short_secs(usec: u64) -> String {
    let s = usec / 1_000_000;
    if s < 60 { format!("{:.1}s", usec as f64 / 1e6) } else { human_age(Some(s)) }
}

/// The first `n` characters, with `…` when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { s.chars().take(n - 1).chain(['…']).collect() }
}

/// A line cut to the terminal's width, with `…` when cut.
fn fit(line: &str, width: usize) -> String {
    clip(line.trim_end(), width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fit_and_say_when_cut() {
        assert_eq!(fit("abc", 80), "abc");
        let cut = fit(&"x".repeat(100), 80);
        assert_eq!(cut.chars().count(), 80);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn commands_lead_with_the_programs_name() {
        assert_eq!(short_command("/usr/bin/node /srv/server.js --stdio"), "node /srv/server.js --stdio");
        assert_eq!(short_command("/usr/bin/sleep"), "sleep");
        assert_eq!(short_command("npx -y x"), "npx -y x");
    }

    #[test]
    fn sparklines_scale_to_the_largest_sample() {
        assert_eq!(sparkline(&[0, 50, 100]), "▁▄█");
        assert_eq!(sparkline(&[0, 0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn sizes_and_times_are_short() {
        assert_eq!(short_bytes(512), "512B");
        assert_eq!(short_bytes(41 * 1024 * 1024 + 200 * 1024), "41.2M");
        assert_eq!(short_secs(1_250_000), "1.2s");
        assert_eq!(short_secs(184_000_000), "3m04s");
    }
}
