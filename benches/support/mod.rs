//! Helpers of the benchmark: statistics, the results table and JSON, a counting
//! allocator, and small `/proc` and cgroup readers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

// ---------------------------------------------------------------- statistics

/// Samples of one quantity, summarised by nearest-rank percentiles.
#[derive(Default, Clone)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn with_capacity(n: usize) -> Samples {
        Samples(Vec::with_capacity(n))
    }

    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    /// Microseconds.
    pub fn push_us(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e6);
    }

    /// Milliseconds.
    pub fn push_ms(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }

    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    /// Nearest-rank percentile, `p` in 0..=100.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> f64 {
        self.percentile(99.0)
    }
}

// ---------------------------------------------------------------- results

/// What a metric should be.
#[derive(Clone, Copy)]
pub enum Target {
    /// At most this.
    Max(f64),
    /// At least this.
    Min(f64),
    /// Exactly this (counts that must be 0).
    Eq(f64),
    /// Informational: no target.
    None,
}

impl Target {
    fn met(self, v: f64) -> Option<bool> {
        match self {
            Target::Max(t) => Some(v <= t),
            Target::Min(t) => Some(v >= t),
            Target::Eq(t) => Some((v - t).abs() < 1e-9),
            Target::None => None,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::Max(t) => format!("<= {}", fmt_num(t)),
            Target::Min(t) => format!(">= {}", fmt_num(t)),
            Target::Eq(t) => format!("= {}", fmt_num(t)),
            Target::None => String::new(),
        }
    }
}

pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Target,
    pub note: String,
}

/// The metrics of one run, in the order they were measured.
#[derive(Default)]
pub struct Results {
    pub metrics: Vec<Metric>,
    /// Groups that failed, with why.
    pub failures: Vec<(String, String)>,
}

impl Results {
    pub fn add(&mut self, name: &str, value: f64, unit: &'static str, target: Target) {
        self.add_note(name, value, unit, target, "");
    }

    pub fn add_note(&mut self, name: &str, value: f64, unit: &'static str, target: Target, note: &str) {
        let line = format!("  {name:<34} {:>12} {unit}", fmt_num(value));
        println!("{line}");
        self.metrics.retain(|m| m.name != name);
        self.metrics.push(Metric { name: name.to_owned(), value, unit, target, note: note.to_owned() });
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.name == name).map(|m| m.value)
    }

    /// The table: metric, value, unit, target, ok/MISS.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<34} {:>12}  {:<9} {:<12} {:<4}  note", "metric", "value", "unit", "target", "");
        let _ = writeln!(out, "{}", "-".repeat(100));
        for m in &self.metrics {
            let status = match m.target.met(m.value) {
                Some(true) => "ok",
                Some(false) => "MISS",
                None => "",
            };
            let _ = writeln!(
                out,
                "{:<34} {:>12}  {:<9} {:<12} {:<4}  {}",
                m.name,
                fmt_num(m.value),
                m.unit,
                m.target.describe(),
                status,
                m.note
            );
        }
        for (group, why) in &self.failures {
            let _ = writeln!(out, "FAILED group {group}: {why}");
        }
        out
    }

    pub fn misses(&self) -> Vec<&str> {
        self.metrics.iter().filter(|m| m.target.met(m.value) == Some(false)).map(|m| m.name.as_str()).collect()
    }

    /// `{ "<metric>": {"value", "unit", "target"?, "ok"?, "note"?}, ..., "machine": {...}, "date": "..." }`.
    pub fn to_json(&self, mode: &str, wall: Duration) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        for m in &self.metrics {
            let mut e = serde_json::Map::new();
            let value = serde_json::Number::from_f64((m.value * 1000.0).round() / 1000.0)
                .map_or(serde_json::Value::Null, serde_json::Value::Number);
            e.insert("value".into(), value);
            e.insert("unit".into(), m.unit.into());
            if let Some(ok) = m.target.met(m.value) {
                e.insert("target".into(), m.target.describe().into());
                e.insert("ok".into(), ok.into());
            }
            if !m.note.is_empty() {
                e.insert("note".into(), m.note.clone().into());
            }
            obj.insert(m.name.clone(), e.into());
        }
        obj.insert("machine".into(), machine());
        obj.insert("date".into(), utc_now().into());
        let failures: serde_json::Map<_, _> =
            self.failures.iter().map(|(g, w)| (g.clone(), w.clone().into())).collect();
        obj.insert(
            "run".into(),
            serde_json::json!({ "mode": mode, "wall_s": (wall.as_secs_f64() * 10.0).round() / 10.0, "failures": failures }),
        );
        obj.into()
    }
}

pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v == v.trunc() || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn machine() -> serde_json::Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = kib_field(&meminfo, "MemTotal:").unwrap_or(0);
    serde_json::json!({ "kernel": kernel, "cores": cores, "cpu": cpu, "mem_gib": mem_kib / (1024 * 1024) })
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (no date crate needed).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---------------------------------------------------------------- heap

/// The system allocator, counting the bytes currently allocated.
pub struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCATED.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

/// Heap bytes currently allocated by this process (through the global allocator).
pub fn heap_bytes() -> isize {
    ALLOCATED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------- /proc and cgroups

/// The parent pid of `pid` (field 4 of `/proc/<pid>/stat`).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// A `kB` field of a `/proc` file such as `VmRSS:` or `Pss:`.
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Our direct children, zombies included (`/proc/self/task/*/children`).
pub fn own_children() -> Vec<i32> {
    let mut kids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            kids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    kids
}

/// Processes in `dir` and every cgroup below it.
pub fn procs_recursive(dir: &Path) -> usize {
    let here = std::fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |s| s.lines().count());
    let below: usize = std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| procs_recursive(&e.path())).sum())
        .unwrap_or(0);
    here + below
}

/// Cgroups below `dir` (not counting `dir`).
pub fn cgroups_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.flatten() {
            if e.path().is_dir() {
                out.push(e.path().display().to_string());
                out.extend(cgroups_below(&e.path()));
            }
        }
    }
    out
}

/// Kills everything below `dir` (`cgroup.kill`), waits for it to empty, and
/// removes the tree deepest first. For the end of the run and after failures.
pub fn force_remove(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..500 {
        let ev = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if !ev.contains("populated 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut dirs = cgroups_below(dir);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for d in dirs {
        let _ = std::fs::remove_dir(&d);
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The state letter of `/proc/<pid>/stat`, read the way raw-pid gateways probe
/// (open, read, parse after the last `)`), into a stack buffer.
pub fn proc_state(path: &str) -> Option<u8> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 512];
    let n = f.read(&mut buf).ok()?;
    let close = buf[..n].iter().rposition(|b| *b == b')')?;
    buf.get(close + 2).copied()
}
