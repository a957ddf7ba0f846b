//! Resource limits (`memory.max`, `memory.high`, `pids.max`, `cpu.max`), the
//! nesting caps every session carries (`cgroup.max.depth`,
//! `cgroup.max.descendants`), and usage statistics of a cgroup.

use std::fmt;
use std::time::Duration;

use super::Cgroup;
use crate::error::{Error, Result};

/// Limits for a session. All optional; a session without resource limits
/// enables no controller at all.
///
/// Every session also carries nesting caps, whether or not they are set here:
/// `cgroup.max.depth` ([`DEFAULT_MAX_DEPTH`] levels below the session unless
/// [`max_depth`](Self::max_depth) says otherwise) and `cgroup.max.descendants`
/// ([`DEFAULT_MAX_DESCENDANTS`]). They bound what a child that may write the
/// cgroup tree (one spawned with sealing off) can build inside its session;
/// a sealed child can neither create cgroups nor raise the caps, as the
/// cgroup filesystem is read-only for it. The caps hold for `procscope exec`
/// sessions too, which use one level (and one cgroup per command) of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes: above it the kernel OOM-kills inside the session.
    pub memory_max: Option<u64>,
    /// `memory.high` in bytes: above it the session is throttled and reclaimed.
    pub memory_high: Option<u64>,
    /// `pids.max`: the most processes and threads the session may hold.
    pub pids_max: Option<u64>,
    /// `cpu.max`: quota per period.
    pub cpu_max: Option<CpuMax>,
    /// `cgroup.max.depth`: how many levels of cgroups the session may hold
    /// below it (`None`: [`DEFAULT_MAX_DEPTH`]; `u32::MAX`: no cap).
    pub max_depth: Option<u32>,
    /// `cgroup.max.descendants`: how many cgroups the session may hold below
    /// it in all (`None`: [`DEFAULT_MAX_DESCENDANTS`]; `u32::MAX`: no cap).
    pub max_descendants: Option<u32>,
}

/// The `cgroup.max.depth` of a session unless [`Limits::max_depth`] sets it.
pub const DEFAULT_MAX_DEPTH: u32 = 16;
/// The `cgroup.max.descendants` of a session unless
/// [`Limits::max_descendants`] sets it.
pub const DEFAULT_MAX_DESCENDANTS: u32 = 1024;

/// A `cpu.max` value: `quota` microseconds of CPU per `period` microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMax {
    /// Microseconds of CPU time per period.
    pub quota_us: u64,
    /// The period in microseconds (default 100000).
    pub period_us: u64,
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.quota_us, self.period_us)
    }
}

impl Limits {
    /// Whether no limit is set (the nesting caps then have their defaults).
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The controllers these limits need, in the order the kernel lists them.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.cpu_max.is_some() {
            c.push("cpu");
        }
        if self.memory_max.is_some() || self.memory_high.is_some() {
            c.push("memory");
        }
        if self.pids_max.is_some() {
            c.push("pids");
        }
        c
    }

    /// Checks the values; the parsers already do, this is for limits built in code.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("memory.max", self.memory_max), ("memory.high", self.memory_high)] {
            if v == Some(0) {
                return Err(Error::InvalidLimit {
                    name,
                    value: "0".into(),
                    reason: "0 bytes would kill every process at once; give a size such as 512M".into(),
                });
            }
        }
        if self.pids_max == Some(0) {
            return Err(Error::InvalidLimit {
                name: "pids.max",
                value: "0".into(),
                reason: "a session needs at least 1 process".into(),
            });
        }
        if let Some(c) = self.cpu_max
            && (c.quota_us < 1000 || !(1000..=1_000_000).contains(&c.period_us))
        {
            return Err(Error::InvalidLimit {
                name: "cpu.max",
                value: c.to_string(),
                reason: "the quota must be at least 1000 µs and the period 1000–1000000 µs".into(),
            });
        }
        Ok(())
    }
}

impl Cgroup {
    /// Writes the nesting caps of a new session: `cgroup.max.depth` and
    /// `cgroup.max.descendants`, from `limits` or the defaults. `levels` more
    /// are allowed for the session's own use (`procscope exec` keeps each
    /// command in a cgroup of its own, one level down).
    pub(crate) fn set_nesting(&self, limits: &Limits, levels: u32) -> Result<()> {
        let cap =
            |v: u32, extra: u32| if v == u32::MAX { "max".to_owned() } else { v.saturating_add(extra).to_string() };
        let depth = limits.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
        let descendants = limits.max_descendants.unwrap_or(DEFAULT_MAX_DESCENDANTS);
        self.write("cgroup.max.depth", &cap(depth, levels))?;
        self.write("cgroup.max.descendants", &cap(descendants, 0))
    }

    /// Writes the limits that are set. The controllers must be enabled in the
    /// parent's `cgroup.subtree_control`.
    pub fn set_limits(&self, limits: &Limits) -> Result<()> {
        limits.validate()?;
        if let Some(v) = limits.memory_max {
            self.write("memory.max", &v.to_string())?;
        }
        if let Some(v) = limits.memory_high {
            self.write("memory.high", &v.to_string())?;
        }
        if let Some(v) = limits.pids_max {
            self.write("pids.max", &v.to_string())?;
        }
        if let Some(v) = limits.cpu_max {
            self.write("cpu.max", &v.to_string())?;
        }
        Ok(())
    }

    /// `oom_kill` of `memory.events`: processes of this cgroup killed by an OOM
    /// killer (0 without the memory controller).
    pub fn oom_kills(&self) -> u64 {
        self.read("memory.events").map_or(0, |s| MemoryEvents::parse(&s).oom_kill)
    }

    /// `max` of `pids.events`: forks refused by `pids.max` (0 without the pids
    /// controller).
    pub fn pids_max_hits(&self) -> u64 {
        self.read("pids.events")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// Reads usage statistics; a value whose controller is off is `None`.
    pub fn stats(&self) -> Stats {
        let num = |f: &str| self.read(f).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let cpu_usage = self.read("cpu.stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_micros)
        });
        let memory_events = self.read("memory.events").ok().map(|s| MemoryEvents::parse(&s));
        Stats {
            memory_current: num("memory.current"),
            memory_peak: num("memory.peak"),
            pids_current: num("pids.current"),
            cpu_usage,
            memory_events,
        }
    }
}

/// Usage of a cgroup. Serialized (serde) with `cpu_usage` as
/// `cpu_usage_secs`, in seconds (a float), and a value that is `None` as
/// `null`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// `memory.current` in bytes.
    pub memory_current: Option<u64>,
    /// `memory.peak` in bytes (Linux ≥ 5.19).
    pub memory_peak: Option<u64>,
    /// `pids.current`.
    pub pids_current: Option<u64>,
    /// `usage_usec` of `cpu.stat` (present without the cpu controller).
    #[serde(rename = "cpu_usage_secs", serialize_with = "crate::metrics::serialize_opt_secs")]
    pub cpu_usage: Option<Duration>,
    /// `memory.events`: how often limits were hit.
    pub memory_events: Option<MemoryEvents>,
}

/// Counters of `memory.events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryEvents {
    /// Times usage went over `memory.high`.
    pub high: u64,
    /// Times usage hit `memory.max`.
    pub max: u64,
    /// Times the OOM killer was invoked.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
}

impl MemoryEvents {
    /// Parses `memory.events`.
    pub fn parse(text: &str) -> MemoryEvents {
        let mut e = MemoryEvents::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse().ok())) else { continue };
            match k {
                "high" => e.high = v,
                "max" => e.max = v,
                "oom" => e.oom = v,
                "oom_kill" => e.oom_kill = v,
                _ => {}
            }
        }
        e
    }
}

/// Parses a size: a whole number of bytes with an optional binary suffix `K`,
/// `M`, `G`, `T` (also `KiB`, `MB`, … — all powers of 1024), or `max`
/// (`u64::MAX`).
pub fn parse_bytes(name: &'static str, s: &str) -> Result<u64> {
    let bad = |reason: &str| Error::InvalidLimit {
        name,
        value: s.to_owned(),
        reason: format!("{reason}; give a number of bytes with an optional K, M, G or T suffix, e.g. 512M"),
    };
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(u64::MAX);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad(if t.starts_with('-') { "negative sizes are meaningless" } else { "no number" }));
    }
    let n: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad("unknown suffix")),
    };
    let v = n.checked_mul(1u64 << shift).ok_or_else(|| bad("size too large"))?;
    if v == 0 {
        return Err(bad("0 bytes would kill every process at once"));
    }
    Ok(v)
}

/// Parses a process count for `pids.max` (`max` allowed).
pub fn parse_count(name: &'static str, s: &str) -> Result<u64> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(u64::MAX);
    }
    match t.parse::<u64>() {
        Ok(0) => Err(Error::InvalidLimit { name, value: s.to_owned(), reason: "must be at least 1".into() }),
        Ok(n) => Ok(n),
        Err(_) => Err(Error::InvalidLimit {
            name,
            value: s.to_owned(),
            reason: "give a whole number of processes such as 64, or max".into(),
        }),
    }
}

/// Parses a nesting cap (`cgroup.max.depth`, `cgroup.max.descendants`): a
/// whole number, 0 included (no cgroups below the session at all), or `max`
/// (`u32::MAX`: no cap).
pub fn parse_nesting(name: &'static str, s: &str) -> Result<u32> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(u32::MAX);
    }
    t.parse::<u32>().map_err(|_| Error::InvalidLimit {
        name,
        value: s.to_owned(),
        reason: "give a whole number of cgroups such as 16, 0 for none, or max".into(),
    })
}

/// Parses `cpu.max`: `"QUOTA PERIOD"` in microseconds as the kernel writes it,
/// `"QUOTA"` (period 100000), a share of one CPU like `0.5`, or a percentage
/// of one CPU like `50%`.
pub fn parse_cpu_max(s: &str) -> Result<CpuMax> {
    let bad = || Error::InvalidLimit {
        name: "cpu.max",
        value: s.to_owned(),
        reason: "give a share of one CPU (0.5, 50%, 2 for two CPUs) or \"QUOTA PERIOD\" in µs \
                 (\"50000 100000\")"
            .into(),
    };
    let t = s.trim();
    let period = 100_000u64;
    let cpu = if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p.trim().parse().map_err(|_| bad())?;
        CpuMax { quota_us: (v / 100.0 * period as f64).round() as u64, period_us: period }
    } else if let Some((q, p)) = t.split_once(char::is_whitespace) {
        CpuMax { quota_us: q.trim().parse().map_err(|_| bad())?, period_us: p.trim().parse().map_err(|_| bad())? }
    } else if t.contains('.') || t.parse::<u64>().is_ok_and(|v| v <= 64) {
        let v: f64 = t.parse().map_err(|_| bad())?;
        if !v.is_finite() || v <= 0.0 {
            return Err(bad());
        }
        CpuMax { quota_us: (v * period as f64).round() as u64, period_us: period }
    } else {
        CpuMax { quota_us: t.parse().map_err(|_| bad())?, period_us: period }
    };
    let limits = Limits { cpu_max: Some(cpu), ..Limits::default() };
    limits.validate()?;
    Ok(cpu)
}

/// Parses a duration: `2s`, `500ms`, `1.5s`, `2m`, `100us`, or `0`. Any
/// other number needs a unit (is `2` seconds or milliseconds?).
pub fn parse_duration(name: &'static str, s: &str) -> Result<Duration> {
    let bad = |reason: &str| Error::InvalidLimit {
        name,
        value: s.to_owned(),
        reason: format!("{reason}; give a duration such as 2s, 500ms or 0"),
    };
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad(if t.starts_with('-') { "negative durations are meaningless" } else { "no number" }));
    }
    let v: f64 = num.parse().map_err(|_| bad("not a number"))?;
    let secs = match unit.trim() {
        // A bare number is ambiguous (seconds? milliseconds?), except 0.
        "" if v == 0.0 => 0.0,
        "" => {
            return Err(Error::InvalidLimit {
                name,
                value: s.to_owned(),
                reason: format!("a duration needs a unit: {num}s for seconds, {num}ms for milliseconds"),
            });
        }
        "s" | "sec" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(bad("unknown unit")),
    };
    if !secs.is_finite() || secs > 7.0 * 86400.0 {
        return Err(bad("longer than a week"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("m", "512").unwrap(), 512);
        assert_eq!(parse_bytes("m", "512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("m", "2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("m", "1 k").unwrap(), 1024);
        assert_eq!(parse_bytes("m", "max").unwrap(), u64::MAX);
        for bad in ["-1", "10QB", "", "M", "0", "99999999999999999999", "1.5G", "20000000T"] {
            let e = parse_bytes("memory.max", bad).unwrap_err().to_string();
            assert!(e.contains("memory.max") && e.contains("512M"), "{bad}: {e}");
        }
    }

    #[test]
    fn counts_cpu_durations() {
        assert_eq!(parse_count("pids.max", "64").unwrap(), 64);
        assert!(parse_count("pids.max", "0").is_err());
        assert!(parse_count("pids.max", "-3").is_err());
        assert_eq!(parse_cpu_max("0.5").unwrap(), CpuMax { quota_us: 50_000, period_us: 100_000 });
        assert_eq!(parse_cpu_max("50%").unwrap(), CpuMax { quota_us: 50_000, period_us: 100_000 });
        assert_eq!(parse_cpu_max("2").unwrap(), CpuMax { quota_us: 200_000, period_us: 100_000 });
        assert_eq!(parse_cpu_max("20000 50000").unwrap(), CpuMax { quota_us: 20_000, period_us: 50_000 });
        assert_eq!(parse_cpu_max("150000").unwrap(), CpuMax { quota_us: 150_000, period_us: 100_000 });
        for bad in ["", "abc", "-1", "0", "0.001", "1 2 3", "NaN", "inf"] {
            assert!(parse_cpu_max(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("grace", "2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("grace", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("grace", "0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("grace", "1.5s").unwrap(), Duration::from_millis(1500));
        let unitless = parse_duration("grace", "2").unwrap_err().to_string();
        assert!(unitless.contains("needs a unit: 2s") && unitless.contains("2ms"), "{unitless}");
        for bad in ["", "-1s", "2 fortnights", "1e9", "9999h", "s"] {
            assert!(parse_duration("grace", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn controllers_for_limits() {
        assert!(Limits::default().controllers().is_empty());
        let l = Limits { memory_high: Some(1), pids_max: Some(3), ..Limits::default() };
        assert_eq!(l.controllers(), ["memory", "pids"]);
    }

    #[test]
    fn memory_events() {
        let e = MemoryEvents::parse("low 0\nhigh 2\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(e, MemoryEvents { high: 2, max: 5, oom: 1, oom_kill: 1 });
    }
}
