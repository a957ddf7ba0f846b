//! `scripts/bench`: procscope against the alternatives, in one run.
//!
//! Every comparison is measured in this process, interleaved (A B A B …, the
//! order alternating) so that the noise of a busy machine hits both sides; the
//! ratios are the numbers to read. One function per metric group; the groups run
//! in a cgroup root of their own (`<cgroup2>/procscope-bench-<pid>`), removed at
//! the end, after counting what was left in it.
//!
//! `procscope-bench [--quick] [--out FILE] [--only GROUP,…]`; groups: spawn,
//! join, spawn_2gib, cycle, sweep_graceful, sweep_stubborn, sweep_all, killpg,
//! liveness, memory, exec, trees, holder.

mod support;

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use procscope::{Command, SpawnMechanism, Stdio, Supervisor, SweepScope};
use support::{Counting, Results, Samples, Target};
use tokio::io::AsyncReadExt;

#[global_allocator]
static GLOBAL: Counting = Counting;

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");
/// The test helper of the same profile, the example
/// `target/release/examples/procscope-fixture`: `scripts/bench` builds it
/// (`cargo bench` builds no example).
static FIXTURE: LazyLock<String> = LazyLock::new(|| {
    let path = Path::new(PROCSCOPE).with_file_name("examples").join("procscope-fixture");
    path.into_os_string().into_string().expect("a UTF-8 target directory")
});
/// Iterations thrown away before measuring (page cache, lazy statics, allocator).
const WARMUP: usize = 50;

struct Cfg {
    quick: bool,
    /// Our own cgroup root: `<cgroup2 mount>/procscope-bench-<pid>`.
    root: PathBuf,
}

impl Cfg {
    /// A count for quick or full mode.
    fn n(&self, quick: usize, full: usize) -> usize {
        if self.quick { quick } else { full }
    }
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench/results.json"));
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = PathBuf::from(args.next().expect("--out FILE")),
            "--only" => only = Some(args.next().expect("--only GROUP,…").split(',').map(str::to_owned).collect()),
            "--bench" => {} // passed by `cargo bench`
            other => {
                eprintln!(
                    "procscope-bench: unknown argument {other:?}; usage: [--quick] [--out FILE] [--only GROUP,…]"
                );
                return ExitCode::from(2);
            }
        }
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "procscope-bench: must run as root (it creates cgroups and signals processes); try: sudo scripts/bench"
        );
        return ExitCode::from(1);
    }
    if !Path::new(&*FIXTURE).exists() {
        eprintln!(
            "procscope-bench: the test helper {} is missing; build it with \
             `cargo build --release --example procscope-fixture` (scripts/bench does)",
            *FIXTURE
        );
        return ExitCode::from(1);
    }
    let mount = match procscope::cgroup::hierarchy::Hierarchy::discover() {
        Ok(h) => h.mount_point,
        Err(e) => {
            eprintln!("procscope-bench: {e}");
            return ExitCode::from(1);
        }
    };
    let root = mount.join(format!("procscope-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&root) {
        eprintln!("procscope-bench: cannot create {}: {e}", root.display());
        return ExitCode::from(1);
    }
    let cfg = Cfg { quick, root };
    let wants = |g: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == g));
    let started = Instant::now();
    let mode = if quick { "quick" } else { "full" };
    println!("procscope bench ({mode}) — root {}", cfg.root.display());

    // A current-thread runtime, as in the README's gateway: no idle worker threads
    // competing with the children for the two cores.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut r = Results::default();
    rt.block_on(async {
        macro_rules! group {
            ($name:literal, $f:ident) => {
                if wants($name) {
                    println!("== {}", $name);
                    let t = Instant::now();
                    if let Err(e) = $f(&cfg, &mut r).await {
                        eprintln!("group {} failed: {e:#}", $name);
                        r.failures.push(($name.to_owned(), format!("{e:#}")));
                    }
                    println!("   ({:.1} s)", t.elapsed().as_secs_f64());
                }
            };
        }
        group!("spawn", spawn_latency);
        group!("sealing", sealing_cost);
        group!("join", join_fallback);
        group!("spawn_2gib", spawn_2gib);
        group!("cycle", session_cycle);
        group!("sweep_graceful", sweep_graceful);
        group!("sweep_stubborn", sweep_stubborn);
        group!("sweep_all", sweep_all);
        group!("killpg", killpg_baseline);
        group!("liveness", liveness);
        group!("memory", memory);
        group!("exec", exec_as_the_command);
        group!("trees", hostile_trees);
        group!("holder", holder_cost);
        leftovers(&cfg, &mut r).await;
    });
    drop(rt);
    support::force_remove(&cfg.root);

    let wall = started.elapsed();
    println!("\n{}", r.table());
    println!("wall time: {:.1} s ({mode})", wall.as_secs_f64());
    let json = r.to_json(mode, wall);
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json") + "\n") {
        Ok(()) => println!("results: {}", out.display()),
        Err(e) => {
            eprintln!("procscope-bench: cannot write {}: {e}", out.display());
            return ExitCode::from(1);
        }
    }
    let misses = r.misses();
    if !misses.is_empty() {
        println!("targets missed: {}", misses.join(", "));
    }
    if r.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

// ---------------------------------------------------------------- commands

async fn supervisor(cfg: &Cfg, grace: Duration) -> anyhow::Result<Supervisor> {
    Ok(Supervisor::builder().root(&cfg.root).grace(grace).recover(false).start().await?)
}

/// procscope: `/bin/true` with stdio on /dev/null.
fn ps_true() -> Command {
    let mut c = Command::new("/bin/true");
    c.stdin(Stdio::Null).stdout(Stdio::Null).stderr(Stdio::Null);
    c
}

/// procscope: a server that exits on SIGTERM.
fn ps_sleep() -> Command {
    let mut c = Command::new("sleep");
    c.arg("3600").stdin(Stdio::Null).stdout(Stdio::Null).stderr(Stdio::Null);
    c
}

/// procscope: the fixture with `args`, stdio on /dev/null.
fn ps_fixture(args: &[&str]) -> Command {
    let mut c = Command::new(&*FIXTURE);
    c.args(args).stdin(Stdio::Null).stdout(Stdio::Null).stderr(Stdio::Null);
    c
}

/// tokio: `program args…` with stdio on /dev/null, as gateways spawn today.
fn tokio_cmd(program: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// The hand-rolled fork + join baseline: `std::process::Command` with a `pre_exec`
/// that writes `0` into `cgroup.procs` (std then forks instead of using
/// posix_spawn), plus the `pidfd_open` a caller needs to hold the child safely.
fn std_fork_join(procs: &std::fs::File) -> anyhow::Result<(std::process::Child, std::os::fd::OwnedFd)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = procs.as_raw_fd();
    let mut c = std::process::Command::new("/bin/true");
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: the closure only calls write(2), which is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    let child = c.spawn()?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32).context("pid")?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    Ok((child, pidfd))
}

/// Waits until the cgroups below `dir` hold `want` processes; returns the count.
async fn wait_for_procs(dir: &Path, want: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let n = support::procs_recursive(dir);
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- spawn

/// `spawn_p50_us`, `spawn_p99_us`, `tokio_spawn_p50_us`, `spawn_ratio_vs_tokio`:
/// `Session::spawn` of /bin/true (returns holding the pidfd, after execve) against
/// `tokio::process::Command::spawn`, interleaved; reaping outside the timing.
async fn spawn_latency(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let n = cfg.n(2000, 6000);
    let sup = supervisor(cfg, procscope::DEFAULT_GRACE).await?;
    let session = sup.session("spawn")?;
    let (ps, tk) = spawn_pairs(&session, n).await?;
    r.add("spawn_p50_us", ps.median(), "us", Target::None);
    r.add("spawn_p99_us", ps.p99(), "us", Target::None);
    r.add("tokio_spawn_p50_us", tk.median(), "us", Target::None);
    r.add("tokio_spawn_p99_us", tk.p99(), "us", Target::None);
    r.add_note(
        "spawn_ratio_vs_tokio",
        ps.median() / tk.median(),
        "x",
        Target::Max(1.25),
        &format!("p50/p50, {n} interleaved pairs; p99/p99 = {:.2}", ps.p99() / tk.p99()),
    );
    drop(session);
    sup.shutdown().await?;
    Ok(())
}

/// `spawn_unsealed_p50_us`, `sealing_cost_ratio`: what sealing adds to a spawn
/// (a cgroup and a mount namespace, the cgroup mounts read-only): sealed
/// (the default for a root gateway) against `Sealing::Off`, interleaved; and
/// the whole cycle to the child's exit (namespace teardown included).
async fn sealing_cost(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let n = cfg.n(1000, 3000);
    let sup = supervisor(cfg, procscope::DEFAULT_GRACE).await?;
    let session = sup.session("sealing")?;
    let (mut sealed, mut unsealed) = (Samples::with_capacity(n), Samples::with_capacity(n));
    let (mut sealed_cycle, mut unsealed_cycle) = (Samples::with_capacity(n), Samples::with_capacity(n));
    for i in 0..n + WARMUP {
        for step in 0..2 {
            let seal = (step == 0) == (i % 2 == 0);
            let mut cmd = ps_true();
            cmd.sealing(if seal { procscope::Sealing::Required } else { procscope::Sealing::Off });
            let t = Instant::now();
            let mut c = session.spawn(&mut cmd)?;
            let d = t.elapsed();
            ensure!(c.is_sealed() == seal, "sealing not as asked");
            ensure!(c.wait().await?.success(), "/bin/true failed");
            let cycle = t.elapsed();
            if i >= WARMUP {
                let (s, cy) =
                    if seal { (&mut sealed, &mut sealed_cycle) } else { (&mut unsealed, &mut unsealed_cycle) };
                s.push_us(d);
                cy.push_us(cycle);
            }
        }
    }
    r.add("spawn_sealed_p50_us", sealed.median(), "us", Target::None);
    r.add("spawn_unsealed_p50_us", unsealed.median(), "us", Target::None);
    r.add_note(
        "sealing_cost_ratio",
        sealed.median() / unsealed.median(),
        "x",
        Target::None,
        &format!(
            "sealed/unsealed spawn p50, {n} interleaved pairs; spawn to exit {:.0} vs {:.0} us",
            sealed_cycle.median(),
            unsealed_cycle.median()
        ),
    );
    drop(session);
    sup.shutdown().await?;
    Ok(())
}

/// `n` interleaved (procscope, tokio) spawns of /bin/true, after a warm-up. Each
/// spawn starts with no other child of ours running; the order alternates.
async fn spawn_pairs(session: &procscope::Session, n: usize) -> anyhow::Result<(Samples, Samples)> {
    let (mut ps, mut tk) = (Samples::with_capacity(n), Samples::with_capacity(n));
    for i in 0..n + WARMUP {
        let record = i >= WARMUP;
        for step in 0..2 {
            if (step == 0) == (i % 2 == 0) {
                let t = Instant::now();
                let mut c = session.spawn(&mut ps_true())?;
                let d = t.elapsed();
                ensure!(c.wait().await?.success(), "/bin/true failed (procscope)");
                if record {
                    ps.push_us(d);
                }
            } else {
                let t = Instant::now();
                let mut c = tokio_cmd("/bin/true", &[]).spawn()?;
                let d = t.elapsed();
                ensure!(c.wait().await?.success(), "/bin/true failed (tokio)");
                if record {
                    tk.push_us(d);
                }
            }
        }
    }
    Ok((ps, tk))
}

/// `fallback_join_p99_us`, `clone3_vs_join_p99_ratio`: the migration path
/// (`SpawnMechanism::ForkJoinProcs`) and a hand-rolled std fork + `cgroup.procs`
/// join, interleaved with the clone3 path.
async fn join_fallback(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let n = cfg.n(200, 1000);
    let sup = supervisor(cfg, procscope::DEFAULT_GRACE).await?;
    let session = sup.session("join")?;
    let procs = std::fs::OpenOptions::new().write(true).open(session.cgroup().unwrap().path().join("cgroup.procs"))?;
    let (mut clone3, mut join, mut std_join) = (Samples::default(), Samples::default(), Samples::default());
    for i in 0..n + WARMUP / 5 {
        let record = i >= WARMUP / 5;
        for step in 0..3 {
            match (step + i) % 3 {
                0 => {
                    let t = Instant::now();
                    let mut c = session.spawn(&mut ps_true())?;
                    let d = t.elapsed();
                    ensure!(c.spawn_mechanism() == SpawnMechanism::Clone3IntoCgroup);
                    c.wait().await?;
                    if record {
                        clone3.push_us(d);
                    }
                }
                1 => {
                    let t = Instant::now();
                    let mut c = session.spawn(ps_true().spawn_mechanism(SpawnMechanism::ForkJoinProcs))?;
                    let d = t.elapsed();
                    ensure!(c.spawn_mechanism() == SpawnMechanism::ForkJoinProcs);
                    c.wait().await?;
                    if record {
                        join.push_us(d);
                    }
                }
                _ => {
                    let t = Instant::now();
                    let (mut c, pidfd) = std_fork_join(&procs)?;
                    let d = t.elapsed();
                    drop(pidfd);
                    ensure!(c.wait()?.success(), "std fork+join child failed");
                    if record {
                        std_join.push_us(d);
                    }
                }
            }
        }
    }
    r.add("fallback_join_p50_us", join.median(), "us", Target::None);
    r.add("fallback_join_p99_us", join.p99(), "us", Target::None);
    r.add_note(
        "clone3_vs_join_p99_ratio",
        join.p99() / clone3.p99(),
        "x",
        Target::None,
        &format!(
            "clone3 p99 {:.0} us in the same loop ({n} triples); p50 ratio {:.2}",
            clone3.p99(),
            join.median() / clone3.median()
        ),
    );
    r.add("std_fork_join_p50_us", std_join.median(), "us", Target::None);
    r.add("std_fork_join_p99_us", std_join.p99(), "us", Target::None);
    drop(procs);
    drop(session);
    sup.shutdown().await?;
    Ok(())
}

/// A 2 GiB anonymous mapping, every page touched (4 KiB pages: no THP), unmapped on drop.
struct Ballast {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Ballast {
    fn new(len: usize) -> anyhow::Result<Ballast> {
        // SAFETY: a fresh private anonymous mapping; touched only through `ptr` below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        ensure!(ptr != libc::MAP_FAILED, "mmap 2 GiB: {}", std::io::Error::last_os_error());
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        for off in (0..len).step_by(4096) {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile(ptr.cast::<u8>().add(off), 1) };
        }
        Ok(Ballast { ptr, len })
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        // SAFETY: our mapping, no references into it remain.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// `spawn_ratio_vs_tokio_2gib`: the same interleaved spawns while the gateway
/// holds 2 GiB resident; and the std fork + join baseline, which copies page tables.
async fn spawn_2gib(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let (n, n_fork) = (cfg.n(600, 2000), cfg.n(20, 60));
    let sup = supervisor(cfg, procscope::DEFAULT_GRACE).await?;
    let session = sup.session("spawn-2gib")?;
    let t = Instant::now();
    let ballast = Ballast::new(2 << 30)?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss_mib = support::kib_field(&status, "VmRSS:").unwrap_or(0) / 1024;
    let pte_kib = support::kib_field(&status, "VmPTE:").unwrap_or(0);
    println!("   2 GiB touched in {:.1} s: VmRSS {rss_mib} MiB, page tables {pte_kib} KiB", t.elapsed().as_secs_f64());
    ensure!(rss_mib >= 2048, "only {rss_mib} MiB resident");
    let (ps, tk) = spawn_pairs(&session, n).await?;
    r.add("spawn_2gib_p50_us", ps.median(), "us", Target::None);
    r.add("tokio_spawn_2gib_p50_us", tk.median(), "us", Target::None);
    r.add_note(
        "spawn_ratio_vs_tokio_2gib",
        ps.median() / tk.median(),
        "x",
        Target::Max(1.5),
        &format!(
            "VmRSS {rss_mib} MiB, VmPTE {pte_kib} KiB; {n} pairs; procscope p50 vs without the 2 GiB: {}",
            r.get("spawn_p50_us").map_or("n/a".into(), |p| format!("{:.2}x", ps.median() / p))
        ),
    );
    // A fork copies the page tables: a handful of iterations shows it.
    let procs = std::fs::OpenOptions::new().write(true).open(session.cgroup().unwrap().path().join("cgroup.procs"))?;
    let (mut fork, mut ours) = (Samples::default(), Samples::default());
    for i in 0..n_fork {
        for step in 0..2 {
            if (step == 0) == (i % 2 == 0) {
                let t = Instant::now();
                let (mut c, pidfd) = std_fork_join(&procs)?;
                fork.push_us(t.elapsed());
                drop(pidfd);
                c.wait()?;
            } else {
                let t = Instant::now();
                let mut c = session.spawn(&mut ps_true())?;
                ours.push_us(t.elapsed());
                c.wait().await?;
            }
        }
    }
    drop(ballast);
    r.add_note(
        "std_fork_join_2gib_p50_us",
        fork.median(),
        "us",
        Target::None,
        &format!("{:.0}x procscope's {:.0} us in the same loop", fork.median() / ours.median(), ours.median()),
    );
    drop(procs);
    drop(session);
    sup.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------- sessions

/// `session_cycle_per_s`: create session → spawn /bin/true → wait → drop,
/// sequentially; interleaved with a plain tokio spawn + wait of /bin/true for
/// scale (the cost of the process itself).
async fn session_cycle(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let n = cfg.n(1000, 4000);
    let sup = supervisor(cfg, procscope::DEFAULT_GRACE).await?;
    let (mut ours, mut plain) = (Samples::with_capacity(n), Samples::with_capacity(n));
    for i in 0..n + WARMUP {
        let record = i >= WARMUP;
        for step in 0..2 {
            if (step == 0) == (i % 2 == 0) {
                let t = Instant::now();
                {
                    let session = sup.session(&format!("c{i}"))?;
                    let mut c = session.spawn(&mut ps_true())?;
                    c.wait().await?;
                }
                if record {
                    ours.push_us(t.elapsed());
                }
            } else {
                let t = Instant::now();
                tokio_cmd("/bin/true", &[]).spawn()?.wait().await?;
                if record {
                    plain.push_us(t.elapsed());
                }
            }
        }
    }
    // Rates from the median cycle (the mean follows the machine's load spikes).
    let orphaned = sup.counters().sessions_orphaned;
    r.add_note(
        "session_cycle_per_s",
        1e6 / ours.median(),
        "/s",
        Target::Min(1000.0),
        &format!(
            "p50 {:.0} us/cycle ({:.0}/s from the mean); {orphaned} of {} sessions not removable at drop",
            ours.median(),
            1e6 / ours.mean(),
            n + WARMUP
        ),
    );
    r.add_note(
        "tokio_spawn_wait_per_s",
        1e6 / plain.median(),
        "/s",
        Target::None,
        &format!(
            "p50 {:.0} us: the process alone, no session; procscope/tokio {:.2}",
            plain.median(),
            ours.median() / plain.median()
        ),
    );
    let swept = sup.sweep_orphans().await;
    ensure!(swept.errors.is_empty(), "{swept}");
    sup.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------- sweeps

/// Puts `count` sessions, each with one live `cmd` child, into the orphan pool.
fn orphan_sessions(sup: &Supervisor, tag: &str, count: usize, mut cmd: impl FnMut() -> Command) -> anyhow::Result<()> {
    for i in 0..count {
        let session = sup.session(&format!("{tag}-{i}"))?;
        session.spawn(&mut cmd())?;
    }
    ensure!(sup.orphaned_sessions().len() == count, "{} orphans, want {count}", sup.orphaned_sessions().len());
    Ok(())
}

/// The raw-pid repair gateways use today, on `pids` of our children: SIGTERM each,
/// a fixed 2 s sleep, SIGKILL whatever a `kill(pid, 0)` probe still finds, reap.
async fn raw_pid_sweep(children: &mut [tokio::process::Child]) -> anyhow::Result<Duration> {
    let pids: Vec<i32> = children.iter().filter_map(|c| c.id()).map(|p| p as i32).collect();
    let t = Instant::now();
    for &p in &pids {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for &p in &pids {
        // SAFETY: as above.
        if unsafe { libc::kill(p, 0) } == 0 {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    for c in children.iter_mut() {
        c.wait().await?;
    }
    Ok(t.elapsed())
}

/// `sweep_100_graceful_ms`, `baseline_sweep_100_graceful_ms`,
/// `sweep_speedup_vs_baseline`: 100 orphaned sessions of `sleep 3600`.
async fn sweep_graceful(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    const N: usize = 100;
    let (reps, base_reps) = (cfg.n(5, 11), cfg.n(1, 3));
    let sup = supervisor(cfg, Duration::from_secs(2)).await?;
    let (mut ours, mut base) = (Samples::default(), Samples::default());
    let mut killed = 0;
    for rep in 0..reps {
        orphan_sessions(&sup, &format!("g{rep}"), N, ps_sleep)?;
        let t = Instant::now();
        let report = sup.sweep_orphans().await;
        ours.push_ms(t.elapsed());
        ensure!(report.errors.is_empty() && report.removed == N, "{report}");
        killed += report.killed;
        if rep < base_reps {
            let mut kids = (0..N).map(|_| tokio_cmd("sleep", &["3600"]).spawn()).collect::<Result<Vec<_>, _>>()?;
            base.push_ms(raw_pid_sweep(&mut kids).await?);
        }
    }
    r.add_note(
        "sweep_100_graceful_ms",
        ours.median(),
        "ms",
        Target::Max(100.0),
        &format!("median of {reps}, p99 {:.0} ms; {killed} killed (want 0)", ours.p99()),
    );
    r.add_note("baseline_sweep_100_graceful_ms", base.median(), "ms", Target::None, &format!("median of {base_reps}"));
    r.add("sweep_speedup_vs_baseline", base.median() / ours.median(), "x", Target::Min(20.0));
    sup.shutdown().await?;
    Ok(())
}

/// `sweep_100_stubborn_overhead_ms`: 100 orphaned sessions whose servers ignore
/// SIGTERM; the sweep's time minus its 200 ms grace.
async fn sweep_stubborn(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    const N: usize = 100;
    const GRACE: Duration = Duration::from_millis(200);
    let reps = cfg.n(5, 11);
    let sup = supervisor(cfg, GRACE).await?;
    let mut over = Samples::default();
    for rep in 0..reps {
        for i in 0..N {
            let session = sup.session(&format!("t{rep}-{i}"))?;
            let mut cmd = ps_fixture(&["ignore-term", "ready", "sleep", "3600"]);
            cmd.stdout(Stdio::Piped);
            let mut child = session.spawn(&mut cmd)?;
            // SIGTERM is ignored once it says ready.
            let mut out = child.stdout.take().context("stdout")?;
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(10), out.read(&mut buf)).await??;
            ensure!(buf[..n].starts_with(b"ready"), "fixture said {:?}", String::from_utf8_lossy(&buf[..n]));
        }
        let t = Instant::now();
        let report = sup.sweep_orphans().await;
        let d = t.elapsed();
        ensure!(report.errors.is_empty() && report.removed == N && report.killed == N, "{report}");
        over.push_ms(d.saturating_sub(GRACE));
    }
    r.add_note(
        "sweep_100_stubborn_overhead_ms",
        over.median(),
        "ms",
        Target::Max(100.0),
        &format!("sweep minus 200 ms grace; median of {reps}, max {:.0} ms", over.percentile(100.0)),
    );
    sup.shutdown().await?;
    Ok(())
}

/// `sweep_1000x3_all_ms`, `leftover_processes`: N sessions × 3 processes (the
/// fixture, a `setsid --fork` daemon, one child), `sweep(All)` with grace 0.
async fn sweep_all(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let (n, reps) = (cfg.n(200, 1000), cfg.n(1, 3));
    let sup = supervisor(cfg, Duration::ZERO).await?;
    let instance = sup.instance().unwrap().path().to_owned();
    let (mut took, mut left_max, mut found) = (Samples::default(), 0, 0);
    for rep in 0..reps {
        let t = Instant::now();
        let mut keep = Vec::with_capacity(n);
        for i in 0..n {
            let session = sup.session(&format!("a{rep}-{i}"))?;
            let child = session.spawn(&mut ps_fixture(&["daemon", "spawn", "1", "sleep", "3600"]))?;
            keep.push((session, child));
        }
        found = wait_for_procs(&instance, 3 * n, Duration::from_secs(180)).await;
        let exact = keep.iter().filter(|(s, _)| s.cgroup().unwrap().procs().map_or(0, |p| p.len()) == 3).count();
        println!(
            "   {n} sessions, {found} processes ({exact} sessions with exactly 3) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        ensure!(found == 3 * n && exact == n, "{found} processes for {n} sessions, want 3 each");
        let t = Instant::now();
        let report = sup.sweep(SweepScope::All).await;
        took.push_ms(t.elapsed());
        left_max = left_max.max(support::procs_recursive(&instance));
        drop(keep);
        ensure!(report.errors.is_empty() && report.removed == n, "{report}");
    }
    r.add_note(
        "sweep_1000x3_all_ms",
        took.median(),
        "ms",
        Target::Max(2000.0),
        &format!("{n} sessions x 3 = {found} processes; median of {reps}, max {:.0} ms", took.percentile(100.0)),
    );
    r.add("sweep_1000x3_sessions", n as f64, "sessions", Target::None);
    r.add("leftover_processes", left_max as f64, "procs", Target::Eq(0.0));
    sup.shutdown().await?;
    Ok(())
}

/// The process-group baseline: per session the fixture as a process-group leader
/// (`setsid`) with a `setsid --fork` daemon and a child; `killpg(SIGKILL)` each
/// group; count what is still in the cgroups (the daemons escape the group).
async fn killpg_baseline(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let n = cfg.n(50, 100);
    let sup = supervisor(cfg, Duration::ZERO).await?;
    let mut keep = Vec::with_capacity(n);
    for i in 0..n {
        let session = sup.session(&format!("k{i}"))?;
        let child = session.spawn(ps_fixture(&["daemon", "spawn", "1", "sleep", "3600"]).setsid(true))?;
        keep.push((session, child));
    }
    let instance = sup.instance().unwrap().path().to_owned();
    let found = wait_for_procs(&instance, 3 * n, Duration::from_secs(60)).await;
    ensure!(found == 3 * n, "{found} processes for {n} sessions, want 3 each");
    let t = Instant::now();
    for (_, c) in &keep {
        // SAFETY: killpg(2) has no memory-safety preconditions.
        unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
    }
    for (_, c) in &mut keep {
        c.wait().await?;
    }
    let d = t.elapsed();
    let survivors = wait_for_procs(&instance, n, Duration::from_secs(2)).await;
    r.add_note(
        "killpg_survivors_per_session",
        survivors as f64 / n as f64,
        "procs",
        Target::None,
        &format!(
            "{survivors} of {found} processes survive killpg of {n} groups in {:.1} ms (procscope: 0)",
            d.as_secs_f64() * 1e3
        ),
    );
    let report = sup.sweep(SweepScope::All).await;
    drop(keep);
    let left = support::procs_recursive(&instance);
    ensure!(report.errors.is_empty() && left == 0, "{report}; {left} left");
    sup.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------- liveness

/// `liveness_probe_ns`: `PidFd::is_alive()` per child, against reading the state
/// from `/proc/<pid>/stat` (`proc_probe_ns`) and `kill(pid, 0)` (`kill0_probe_ns`).
async fn liveness(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let (n, rounds) = (cfg.n(100, 300), cfg.n(300, 1000));
    let sup = supervisor(cfg, procscope::DEFAULT_GRACE).await?;
    let session = sup.session("liveness")?;
    let kids = (0..n).map(|_| session.spawn(&mut ps_sleep())).collect::<Result<Vec<_>, _>>()?;
    let paths: Vec<String> = kids.iter().map(|c| format!("/proc/{}/stat", c.id())).collect();
    let pids: Vec<i32> = kids.iter().map(|c| c.id() as i32).collect();
    let (mut pidfd, mut proc, mut kill0) = (Samples::default(), Samples::default(), Samples::default());
    for round in 0..rounds {
        for step in 0..3 {
            let t = Instant::now();
            let alive = match (step + round) % 3 {
                0 => kids.iter().filter(|c| c.pidfd().is_alive()).count(),
                1 => {
                    paths.iter().filter(|p| matches!(support::proc_state(p), Some(s) if s != b'Z' && s != b'X')).count()
                }
                // SAFETY: kill(2) with signal 0 only checks.
                _ => pids.iter().filter(|&&p| unsafe { libc::kill(p, 0) } == 0).count(),
            };
            let per = t.elapsed().as_secs_f64() * 1e9 / n as f64;
            ensure!(black_box(alive) == n, "{alive} of {n} alive");
            match (step + round) % 3 {
                0 => pidfd.push(per),
                1 => proc.push(per),
                _ => kill0.push(per),
            }
        }
    }
    r.add_note("liveness_probe_ns", pidfd.median(), "ns", Target::None, &format!("{n} children x {rounds} rounds"));
    r.add_note(
        "proc_probe_ns",
        proc.median(),
        "ns",
        Target::None,
        &format!("{:.1}x the pidfd probe", proc.median() / pidfd.median()),
    );
    r.add_note(
        "kill0_probe_ns",
        kill0.median(),
        "ns",
        Target::None,
        "kill(pid, 0): cheap, but cannot tell a recycled pid",
    );
    drop(kids);
    session.close().await?;
    sup.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------- memory

/// `bytes_per_tracked_child`, `fds_per_session`, `exec_wrapper_rss_kib`,
/// `guardian_pss_kib`.
async fn memory(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let n = cfg.n(100, 300);
    let sup = supervisor(cfg, procscope::DEFAULT_GRACE).await?;

    // Heap per child a session tracks (handle kept, as a gateway does).
    let session = sup.session("heap")?;
    let mut cmd = ps_sleep();
    let mut kids = Vec::with_capacity(n + 1);
    kids.push(session.spawn(&mut cmd)?); // lazy statics, first allocations
    let before = support::heap_bytes();
    for _ in 0..n {
        kids.push(session.spawn(&mut cmd)?);
    }
    let per_child = (support::heap_bytes() - before) as f64 / n as f64;
    // The same for tokio children, for scale.
    let mut theirs = Vec::with_capacity(n + 1);
    theirs.push(tokio_cmd("sleep", &["3600"]).spawn()?);
    let before = support::heap_bytes();
    for _ in 0..n {
        theirs.push(tokio_cmd("sleep", &["3600"]).spawn()?);
    }
    let tokio_per_child = (support::heap_bytes() - before) as f64 / n as f64;
    r.add_note("bytes_per_tracked_child", per_child, "B", Target::None, &format!("heap growth over {n} children kept"));
    r.add("tokio_bytes_per_child", tokio_per_child, "B", Target::None);
    for c in &mut theirs {
        c.start_kill()?;
        c.wait().await?;
    }
    drop(kids);
    session.close().await?;

    // Fds per session with one child.
    let k = cfg.n(50, 200);
    let before = support::open_fds();
    let mut open = Vec::with_capacity(k);
    for i in 0..k {
        let s = sup.session(&format!("fd{i}"))?;
        let c = s.spawn(&mut ps_sleep())?;
        open.push((s, c));
    }
    let per_session = (support::open_fds() as f64 - before as f64) / k as f64;
    r.add_note("fds_per_session", per_session, "fds", Target::None, &format!("{k} sessions with one child each"));
    drop(open);
    let report = sup.sweep_orphans().await;
    ensure!(report.errors.is_empty() && report.removed == k, "{report}");
    sup.shutdown().await?;

    // The guardian's proportional set size.
    let mut guardian = Samples::default();
    for _ in 0..cfg.n(2, 3) {
        let sup = Supervisor::builder().root(&cfg.root).recover(false).guardian(true).start().await?;
        let pid = sup.guardian_pid().context("no guardian")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        guardian.push(
            support::kib_field(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?, "Pss:").unwrap_or(0)
                as f64,
        );
        sup.shutdown().await?;
    }
    r.add_note("guardian_pss_kib", guardian.median(), "KiB", Target::Max(2048.0), "bound from tests/lifecycle.rs");
    Ok(())
}

// ---------------------------------------------------------------- exec

/// Runs `argv` with piped stdio, sends MCP `initialize`, and returns how long
/// the reply took from the spawn; then closes stdin and waits for the exit.
fn initialize(argv: &[String]) -> anyhow::Result<Duration> {
    use std::io::Write;
    let t = Instant::now();
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let request = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    writeln!(child.stdin.as_mut().context("stdin")?, "{request}")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let took = t.elapsed();
    ensure!(line.contains("\"result\""), "no initialize result: {line:?}");
    drop(child.stdin.take());
    child.wait()?;
    Ok(took)
}

/// `exec_initialize_ratio`: spawn-to-`initialize` of a real MCP server
/// (`mcp-server-time` from PyPI) through `procscope exec` vs started
/// directly, median over interleaved pairs. `exec_procscope_procs_per_server`
/// and the guardian's PSS with 1 and with 100 servers running through `exec`.
async fn exec_as_the_command(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/venv/bin/mcp-server-time");
    ensure!(server.exists(), "{} is missing: run scripts/install-mcp-servers", server.display());
    let exec_root = cfg.root.join("exec");
    std::fs::create_dir(&exec_root)?;
    let direct = vec![server.display().to_string()];
    let mut through =
        vec![PROCSCOPE.to_string(), "exec".into(), "--root".into(), exec_root.display().to_string(), "--".into()];
    through.extend(direct.iter().cloned());
    let (mut d, mut e) = (Samples::default(), Samples::default());
    let pairs = cfg.n(10, 20);
    for i in 0..pairs {
        // Alternate which goes first, so that neither always runs warm.
        if i % 2 == 0 {
            d.push_us(initialize(&direct)?);
            e.push_us(initialize(&through)?);
        } else {
            e.push_us(initialize(&through)?);
            d.push_us(initialize(&direct)?);
        }
    }
    r.add_note(
        "exec_initialize_ratio",
        e.median() / d.median(),
        "x",
        Target::Max(1.05),
        &format!(
            "median of {pairs} pairs: {:.1} ms through exec, {:.1} ms direct",
            e.median() / 1000.0,
            d.median() / 1000.0
        ),
    );

    // Servers through exec: count procscope processes, and the guardian's PSS.
    let mut servers = Vec::new();
    let mut pss = Vec::new();
    for want in [1usize, 100] {
        while servers.len() < want {
            let mut w = std::process::Command::new(PROCSCOPE)
                .args(["exec", "--root"])
                .arg(&exec_root)
                .args(["--", FIXTURE.as_str(), "ready", "wait-eof"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(w.stdout.take().context("stdout")?).read_line(&mut line)?;
            ensure!(line.trim() == "ready", "exec: {line:?}");
            servers.push(w);
        }
        let procscope_procs = servers
            .iter()
            .filter(|w| {
                std::fs::read_to_string(format!("/proc/{}/comm", w.id())).is_ok_and(|c| c.trim() == "procscope")
            })
            .count();
        ensure!(procscope_procs == 0, "{procscope_procs} exec processes stayed");
        let instance = procscope::Cgroup::open(exec_root.join(procscope::Owner::this_process()?.instance_name()))?;
        let guardian = instance.meta("guardian")?.context("no guardian recorded")?;
        let pid = guardian.split(' ').next().unwrap_or("0");
        tokio::time::sleep(Duration::from_millis(100)).await;
        pss.push(
            support::kib_field(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?, "Pss:").unwrap_or(0)
                as f64,
        );
    }
    r.add_note(
        "exec_procscope_procs_per_server",
        0.0,
        "procs",
        Target::Eq(0.0),
        "the gateway's child is the server itself",
    );
    r.add_note("exec_guardian_pss_kib_1", pss[0], "KiB", Target::Max(2048.0), "one guardian per gateway");
    r.add_note("exec_guardian_pss_kib_100", pss[1], "KiB", Target::Max(2048.0), "the same guardian, 100 servers");
    for mut w in servers {
        drop(w.stdin.take());
        ensure!(w.wait()?.success(), "a server failed");
    }
    for _ in 0..500 {
        if support::cgroups_below(&exec_root).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = support::cgroups_below(&exec_root);
    ensure!(left.is_empty(), "exec left cgroups: {left:?}");
    std::fs::remove_dir(&exec_root)?;
    Ok(())
}

// ---------------------------------------------------------------- trees

/// `holder_spawn_p50_us`, `holder_spawn_ratio_vs_cgroup`,
/// `holder_end_ratio_vs_cgroup`, `holder_sweep_100_ratio_vs_cgroup`,
/// `holder_pss_kib`: sessions contained with holders
/// ([`procscope::Containment::Holders`], where no cgroup can be written)
/// against sessions that are cgroups, in the same run: a spawn (unsealed
/// both: a holder never seals), interleaved; the `close` of a session with
/// a command and the helper it daemonized; a sweep of 100 orphaned
/// sessions of `sleep`; and one holder's memory.
async fn holder_cost(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let n = cfg.n(300, 1000);
    let sup = supervisor(cfg, Duration::from_millis(200)).await?;
    let held_sup = Supervisor::builder()
        .containment(procscope::Containment::Holders)
        .grace(Duration::from_millis(200))
        .start()
        .await?;
    let (session, held_session) = (sup.session("holder")?, held_sup.session("holder")?);
    let (mut held, mut placed) = (Samples::with_capacity(n), Samples::with_capacity(n));
    let mut pss = Samples::with_capacity(n);
    for i in 0..n + WARMUP {
        for step in 0..2 {
            let mut cmd = ps_true();
            cmd.sealing(procscope::Sealing::Off);
            if (step == 0) == (i % 2 == 0) {
                let t = Instant::now();
                let mut c = held_session.spawn(&mut cmd)?;
                let d = t.elapsed();
                if i >= WARMUP && i % 10 == 0 {
                    let holder = support::parent_of(c.id()).unwrap_or(0);
                    let rollup = std::fs::read_to_string(format!("/proc/{holder}/smaps_rollup"));
                    if let Some(kib) = rollup.ok().and_then(|t| support::kib_field(&t, "Pss:")) {
                        pss.push(kib as f64);
                    }
                }
                ensure!(c.wait().await?.success(), "/bin/true failed (held)");
                if i >= WARMUP {
                    held.push_us(d);
                }
            } else {
                let t = Instant::now();
                let mut c = session.spawn(&mut cmd)?;
                let d = t.elapsed();
                ensure!(c.wait().await?.success(), "/bin/true failed (cgroup)");
                if i >= WARMUP {
                    placed.push_us(d);
                }
            }
        }
    }
    drop((session, held_session));
    r.add("holder_spawn_p50_us", held.median(), "us", Target::None);
    r.add_note(
        "holder_spawn_ratio_vs_cgroup",
        held.median() / placed.median(),
        "x",
        Target::None,
        &format!("held/cgroup spawn p50 ({:.0} vs {:.0} us), {n} interleaved pairs", held.median(), placed.median()),
    );
    r.add("holder_pss_kib", pss.median(), "KiB", Target::None);

    // Closing a session of two processes: a command and its daemon.
    let m = cfg.n(30, 100);
    let (mut held_end, mut cgroup_end) = (Samples::with_capacity(m), Samples::with_capacity(m));
    for i in 0..m {
        for step in 0..2 {
            let mut cmd = ps_fixture(&["daemon", "sleep", "3600"]);
            cmd.sealing(procscope::Sealing::Off).stdout(Stdio::Piped);
            let holders = (step == 0) == (i % 2 == 0);
            let s = if holders { held_sup.session(&format!("end-{i}"))? } else { sup.session(&format!("end-{i}"))? };
            let mut c = s.spawn(&mut cmd)?;
            // `setsid --fork` has returned: its short-lived parent is gone.
            let mut said = Vec::new();
            let mut out = c.stdout.take().context("stdout")?;
            while !String::from_utf8_lossy(&said).contains("daemon=started") {
                let mut buf = [0u8; 64];
                let got = out.read(&mut buf).await?;
                ensure!(got > 0, "the fixture exited before its daemon started");
                said.extend_from_slice(&buf[..got]);
            }
            wait_session_procs(&s, 2).await?;
            let t = Instant::now();
            let ended = s.close().await?;
            if holders { &mut held_end } else { &mut cgroup_end }.push_us(t.elapsed());
            ensure!(ended.signalled == 2, "close ended {} processes, not 2", ended.signalled);
        }
    }
    r.add_note(
        "holder_end_ratio_vs_cgroup",
        held_end.median() / cgroup_end.median(),
        "x",
        Target::None,
        &format!(
            "close of a session of a command and its daemon, holders against a cgroup, p50 ({:.1} vs {:.1} ms), \
             {m} pairs",
            held_end.median() / 1000.0,
            cgroup_end.median() / 1000.0
        ),
    );

    // Sweeping 100 orphaned sessions of `sleep`.
    const N: usize = 100;
    let reps = cfg.n(3, 7);
    let (mut held_sweep, mut cgroup_sweep) = (Samples::default(), Samples::default());
    for rep in 0..reps {
        for (which, samples) in [(&held_sup, &mut held_sweep), (&sup, &mut cgroup_sweep)] {
            orphan_sessions(which, &format!("o{rep}"), N, ps_sleep)?;
            let t = Instant::now();
            let report = which.sweep_orphans().await;
            samples.push_ms(t.elapsed());
            ensure!(report.errors.is_empty() && report.sessions == N && report.killed == 0, "{report}");
        }
    }
    r.add_note(
        "holder_sweep_100_ratio_vs_cgroup",
        held_sweep.median() / cgroup_sweep.median(),
        "x",
        Target::None,
        &format!(
            "a sweep of 100 orphaned sessions of sleep, holders against cgroups, p50 ({:.1} vs {:.1} ms), {reps} each",
            held_sweep.median(),
            cgroup_sweep.median()
        ),
    );
    sup.shutdown().await?;
    held_sup.shutdown().await?;
    Ok(())
}

/// Waits (at most 5 s) until the session holds `want` processes.
async fn wait_session_procs(s: &procscope::Session, want: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let now = match s.cgroup() {
            Some(cg) => cg.procs()?.len(),
            None => s.stats().pids_current.unwrap_or(0) as usize,
        };
        if now == want {
            return Ok(());
        }
        ensure!(start.elapsed() < Duration::from_secs(5), "the session never held {want} processes ({now})");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Builds `width` empty cgroups and a chain `depth` deep below `top`.
fn build_tree(top: &procscope::Cgroup, depth: usize, width: usize) -> anyhow::Result<()> {
    for i in 0..width {
        top.create_child(&format!("w{i}"))?;
    }
    let mut cur = top.create_child("d")?;
    for _ in 1..depth {
        cur = cur.create_child("d")?;
    }
    Ok(())
}

/// The baseline: the least a program must do to remove the same tree, one
/// `rmdir` per directory, bottom up, holding an fd per level.
fn rmdir_baseline(parent: &procscope::Cgroup, name: &str) -> anyhow::Result<usize> {
    let top = parent.open_child(name)?;
    let mut removed = 0;
    for child in top.children()? {
        if child.starts_with('w') {
            top.remove_child(&child)?;
            removed += 1;
        }
    }
    let mut chain = vec![top];
    while let Ok(next) = chain.last().expect("one").open_child("d") {
        chain.push(next);
    }
    while let Some(cg) = chain.pop() {
        match chain.last() {
            Some(up) => up.remove_child(cg.name())?,
            None => parent.remove_child(cg.name())?,
        }
        removed += 1;
    }
    Ok(removed)
}

/// Ending and removing a session whose child built a wide tree (10,000
/// cgroups) and a deep one, against the plain `rmdir` baseline of the same
/// tree. Deep trees cost the kernel time that grows with the square of the
/// depth (both sides pay it), so the deep tree is 3,000 levels (1,000 quick).
async fn hostile_trees(cfg: &Cfg, r: &mut Results) -> anyhow::Result<()> {
    let sup = supervisor(cfg, Duration::from_millis(200)).await?;
    let uncapped = procscope::Limits {
        max_depth: Some(u32::MAX),
        max_descendants: Some(u32::MAX),
        ..procscope::Limits::default()
    };
    let base = procscope::Cgroup::open(&cfg.root)?.create_child("baseline")?;
    for (shape, depth, width) in [("wide", 1, 10_000), ("deep", cfg.n(1_000, 3_000), 0)] {
        let session = sup.session_with_limits(shape, &uncapped)?;
        build_tree(session.cgroup().unwrap(), depth, width)?;
        let mut child = session.spawn(&mut ps_sleep())?;
        let t = Instant::now();
        let ended = session.close().await?;
        let ours = t.elapsed();
        child.wait().await?;
        let dirs = 1 + depth + width;
        ensure!(ended.cgroups_removed == dirs, "{shape}: removed {} of {dirs}", ended.cgroups_removed);
        let plain_top = base.create_child(shape)?;
        build_tree(&plain_top, depth, width)?;
        drop(plain_top);
        let t = Instant::now();
        let removed = rmdir_baseline(&base, shape)?;
        let plain = t.elapsed();
        ensure!(removed == dirs, "baseline {shape}: removed {removed} of {dirs}");
        let note = format!(
            "{dirs} directories ({depth} deep, {width} wide); plain rmdir {:.2} s; procscope/plain {:.2}",
            plain.as_secs_f64(),
            ours.as_secs_f64() / plain.as_secs_f64()
        );
        let target = if shape == "wide" { Target::Max(2.0) } else { Target::None };
        r.add_note(&format!("tree_{shape}_close_s"), ours.as_secs_f64(), "s", target, &note);
        r.add_note(
            &format!("tree_{shape}_vs_rmdir_ratio"),
            ours.as_secs_f64() / plain.as_secs_f64(),
            "x",
            Target::Max(2.0),
            "ending and removing the tree, against rmdir alone",
        );
    }
    procscope::Cgroup::open(&cfg.root)?.remove_child("baseline")?;
    sup.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------- cleanup

/// `leftover_processes_end`, `leftover_cgroups_end`: what the whole run left in
/// its root, and children of ours not reaped.
async fn leftovers(cfg: &Cfg, r: &mut Results) {
    for _ in 0..200 {
        if procscope::testing::reaper_pending() == 0 && support::own_children().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let procs = support::procs_recursive(&cfg.root);
    let kids = support::own_children();
    let cgroups = support::cgroups_below(&cfg.root);
    r.add_note(
        "leftover_processes_end",
        (procs + kids.len()) as f64,
        "procs",
        Target::Eq(0.0),
        &format!("{procs} in the bench root, {} unreaped children", kids.len()),
    );
    r.add_note("leftover_cgroups_end", cgroups.len() as f64, "cgroups", Target::Eq(0.0), &cgroups.join(" "));
}
