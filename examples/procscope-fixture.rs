//! A small program that misbehaves on request: the test helper of procscope's
//! integration tests and benchmarks. An example target, so that `cargo install`
//! leaves it out; `cargo test` and `cargo nextest run` build it, and
//! `cargo build --example procscope-fixture` (with `--release` for the release
//! tests and the benchmarks) builds it alone, as
//! `target/<profile>/examples/procscope-fixture`.
//!
//! `procscope-fixture ACTION [ACTION …]` runs the actions in order:
//!
//! | action | what it does |
//! |---|---|
//! | `self` | prints `pid=`, `cgroup=`, `fds=`, `nofile=` (soft and hard `RLIMIT_NOFILE`), `caps=`, `nnp=`, `sig=` (blocked, ignored, caught), `sid=`, `uid=`, `gid=`, `groups=` lines |
//! | `tty` | prints `stat=PPID PGRP SESSION TTY_NR` (fields 4–7 of `/proc/self/stat`) and one `fd=N TARGET` line per open fd, as `ls -l /proc/self/fd` shows them |
//! | `ready` | prints `ready` |
//! | `ignore-term` | sets SIGTERM to ignored |
//! | `daemon` | starts a helper with `setsid --fork` (setsid + double fork), prints `daemon=PID` |
//! | `hold-stdout` | starts a child that keeps stdout open and sleeps, prints `holder=PID` |
//! | `spawn N` | starts N children that sleep |
//! | `stop` | SIGSTOPs itself |
//! | `sleep SECS` | sleeps |
//! | `wait-eof` | reads stdin until EOF |
//! | `echo` | copies stdin to stdout until EOF |
//! | `alloc MIB` | allocates and touches MIB mebibytes |
//! | `forkbomb` | forks children that fork, forever |
//! | `spin SECS` | keeps one CPU busy for SECS seconds |
//! | `record-signals FILE` | appends `SIGNAL FROM-PID` per signal received to FILE, forever |
//! | `try-spawn CGROUP SEALING` | through the library, spawns `true` into the cgroup directory CGROUP with sealing `auto`, `required` or `off`, and waits for it; prints `try-spawn SEALING=ok sealed=BOOL`, `=SealingUnavailable: MISSING` or `=error: …` |
//! | `nest DEPTH WIDTH` | (root, unsealed) makes WIDTH empty cgroups and a chain of DEPTH nested ones inside its own cgroup, moves itself to the bottom of the chain; prints `nest=ok` |
//! | `walk-recursive PATH KIB` | counts the cgroups at PATH and below with a recursive walk (one call per level, through the library's `Cgroup`) on a thread with a KIB KiB stack; prints `walk-recursive=N`, or aborts when the tree is too deep for the stack |
//! | `pull PID` | (root, unsealed) moves PID into its own cgroup; prints `pull PID=ok` or `=E<errno>` |
//! | `exit CODE` | exits with CODE |
//! | `try-write PATH VALUE` | writes VALUE to PATH; prints `try-write PATH=ok` or `=E<errno>` |
//! | `try-read PATH` | reads PATH; prints `try-read PATH=…` likewise |
//! | `try-open PATH` | opens PATH for reading, reads nothing (for `/proc/PID/mem`: the ptrace access check); prints `try-open PATH=…` |
//! | `try-mkdir PATH` | creates a directory; prints `try-mkdir PATH=…` likewise |
//! | `try-setxattr PATH NAME VALUE` | sets an xattr; prints `try-setxattr PATH NAME=…` |
//! | `try-rmxattr PATH NAME` | removes an xattr; prints `try-rmxattr PATH NAME=…` |
//! | `try-kill PID SIG` | `kill(PID, SIG)` with SIG one of KILL, STOP, TERM; prints `try-kill PID SIG=…` |
//! | `try-sigio PID SIG` | signals PID through a pipe's SIGIO: `F_SETOWN` PID (a negative PID is a process group), `F_SETSIG` SIG (a number; 0 keeps the default, SIGIO), `O_ASYNC`, then a write that makes the pipe readable; prints `try-sigio PID SIG=…` with the errno of the first step that failed |
//! | `gateway ROOT N GUARDIAN` | a gateway: a supervisor under ROOT (with a guardian if GUARDIAN is 1) with N sessions each running a child that daemonizes a helper (or, unsealed and without nesting caps, runs the actions in `PROCSCOPE_FIXTURE_CHILD` up to `ready`); prints `instance=`, `guardian=`, `child=PID` and `auto_kill=` (see `AutoKill::as_str`) per session's child, `refused=` per session it could not start, `sessions=N`, `ready`; then takes orders from stdin: `sweep` (orphans every session and sweeps, prints `report=` and `error=` lines), `shutdown` (prints `report=`, exits); at EOF it runs on |
//!
//! After the last action it exits 0.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use procscope::cgroup::hierarchy::Hierarchy;

/// Prints `LABEL=ok` or `LABEL=E<errno>` for one attempted action.
fn attempt(label: &str, r: Result<(), i32>) {
    match r {
        Ok(()) => say(&format!("{label}=ok")),
        Err(e) => say(&format!("{label}=E{e}")),
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// This process's own cgroup directory, opened.
fn own_cgroup() -> Result<procscope::Cgroup, String> {
    let h = Hierarchy::discover().map_err(|e| e.to_string())?;
    let dir = h.own_dir.ok_or("no cgroup2 directory")?;
    procscope::Cgroup::open(dir).map_err(|e| e.to_string())
}

/// `nest DEPTH WIDTH`: the deep and wide trees of a hostile child.
fn nest(depth: usize, width: usize) -> Result<(), String> {
    let own = own_cgroup()?;
    for i in 0..width {
        own.create_child(&format!("w{i}")).map_err(|e| e.to_string())?;
    }
    let mut cur = own;
    for _ in 0..depth {
        cur = cur.create_child("d").map_err(|e| e.to_string())?;
    }
    cur.write("cgroup.procs", "0").map_err(|e| e.to_string())
}

/// `walk-recursive PATH KIB`: the recursive walk that a deep tree defeats,
/// on a stack of KIB KiB (the control of the iterative walks' deep-tree
/// test). Rust aborts the process when the thread overflows its stack.
fn walk_recursive(path: &str, kib: usize) -> Result<usize, String> {
    fn count(cg: &procscope::Cgroup) -> Result<usize, String> {
        let mut n = 1;
        for name in cg.children().map_err(|e| e.to_string())? {
            n += count(&cg.open_child(&name).map_err(|e| e.to_string())?)?;
        }
        Ok(n)
    }
    let top = procscope::Cgroup::open(path).map_err(|e| e.to_string())?;
    let walk = std::thread::Builder::new().stack_size(kib << 10).spawn(move || count(&top));
    walk.map_err(|e| e.to_string())?.join().map_err(|_| "the walk panicked".to_owned())?
}

/// `try-sigio PID SIG`: makes the kernel send SIG (0: SIGIO) to PID when a
/// pipe becomes readable. `fcntl(F_SETOWN)` records the caller's uids, and
/// the signal is allowed if its effective uid is 0 (fs/fcntl.c
/// `sigio_perm`), whatever the target's uids and capabilities.
fn sigio(pid: i32, sig: i32) -> Result<(), i32> {
    /// `F_SETSIG` (`<linux/fcntl.h>`), which the libc crate does not export.
    const F_SETSIG: libc::c_int = 10;
    let last = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut fds = [0; 2];
    // SAFETY: a valid array of two fds for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(last());
    }
    let (r, w) = (fds[0], fds[1]);
    let result = (|| {
        // SAFETY: fcntl on a pipe fd this process owns, integer arguments only.
        if unsafe { libc::fcntl(r, libc::F_SETOWN, pid) } < 0 {
            return Err(last());
        }
        // SAFETY: as above.
        if sig != 0 && unsafe { libc::fcntl(r, F_SETSIG, sig) } < 0 {
            return Err(last());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(r, libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK) } < 0 {
            return Err(last());
        }
        // SAFETY: writes one byte from a valid buffer to our own pipe.
        if unsafe { libc::write(w, b"x".as_ptr().cast(), 1) } < 0 {
            return Err(last());
        }
        Ok(())
    })();
    // SAFETY: closing the two fds made above.
    unsafe {
        libc::close(r);
        libc::close(w);
    }
    result
}

/// `try-spawn CGROUP SEALING`: what the library says to a spawn of `true`.
fn try_spawn(path: &str, sealing: procscope::Sealing) -> String {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| fail(&e.to_string()));
    rt.block_on(async {
        let cg = match procscope::Cgroup::open(path) {
            Ok(cg) => cg,
            Err(e) => return format!("error: {e}"),
        };
        let mut cmd = procscope::Command::new("true");
        cmd.stdin(procscope::Stdio::Null).stdout(procscope::Stdio::Null).sealing(sealing);
        match cmd.spawn_in(&cg) {
            Ok(mut child) => {
                let sealed = child.is_sealed();
                match child.wait().await {
                    Ok(_) => format!("ok sealed={sealed}"),
                    Err(e) => format!("error: {e}"),
                }
            }
            Err(procscope::Error::SealingUnavailable { missing, .. }) => format!("SealingUnavailable: {missing}"),
            Err(e) => format!("error: {e}"),
        }
    })
}

/// Runs the actions given as arguments, in order.
fn main() {
    let mut it = std::env::args().skip(1);
    let out = std::io::stdout();
    while let Some(action) = it.next() {
        let mut arg = || it.next().unwrap_or_else(|| fail(&format!("{action} needs an argument")));
        match action.as_str() {
            "self" => print_self(),
            "tty" => print_tty(),
            "ready" => say("ready"),
            "ignore-term" => signal::ignore(libc::SIGTERM).unwrap_or_else(|e| fail(&e.to_string())),
            // N commands (`daemon sleep 3600`) each from a holder of its
            // own; prints `holder=PID` and `child=PID` for each, then
            // `ready`, and keeps them until killed.
            "held-daemons" => {
                let n: usize = arg().parse().unwrap_or_else(|_| fail("held-daemons N"));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| fail(&e.to_string()));
                let _enter = rt.enter();
                let mut keep = Vec::new();
                for _ in 0..n {
                    let mut cmd = procscope::Command::new(self_exe());
                    cmd.args(["daemon", "sleep", "3600"]).stdin(procscope::Stdio::Null).stdout(procscope::Stdio::Null);
                    let (child, holder) =
                        procscope::testing::spawn_held(&mut cmd).unwrap_or_else(|e| fail(&e.to_string()));
                    say(&format!("holder={}", holder.pid()));
                    say(&format!("child={}", child.id()));
                    keep.push((child, holder));
                }
                say("ready");
                std::thread::sleep(Duration::from_secs(3600));
            }
            // Ignores SIGCHLD (as some gateways do), runs `sh -c CMD` from a
            // holder and prints `status=CODE` or `signal=N`.
            "held-status" => {
                let line = arg();
                signal::ignore(libc::SIGCHLD).unwrap_or_else(|e| fail(&e.to_string()));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| fail(&e.to_string()));
                rt.block_on(async {
                    use std::os::unix::process::ExitStatusExt;
                    let mut cmd = procscope::Command::new("sh");
                    cmd.args(["-c", &line]);
                    let (mut child, holder) =
                        procscope::testing::spawn_held(&mut cmd).unwrap_or_else(|e| fail(&e.to_string()));
                    let status = child.wait().await.unwrap_or_else(|e| fail(&e.to_string()));
                    match (status.code(), status.signal()) {
                        (Some(c), _) => say(&format!("status={c}")),
                        (_, Some(s)) => say(&format!("signal={s}")),
                        _ => say("status=?"),
                    }
                    holder.wait_gone().await.unwrap_or_else(|e| fail(&e.to_string()));
                    say("holder=gone");
                });
            }
            "daemon" => {
                let child = std::process::Command::new("setsid")
                    .arg("--fork")
                    .arg(self_exe())
                    .args(["sleep", "3600"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                match child {
                    Ok(s) if s.success() => say("daemon=started"),
                    other => fail(&format!("setsid --fork: {other:?}")),
                }
            }
            "hold-stdout" => {
                let child = std::process::Command::new(self_exe())
                    .args(["sleep", "3600"])
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| fail(&e.to_string()));
                say(&format!("holder={}", child.id()));
                std::mem::forget(child);
            }
            "spawn" => {
                let n: usize = arg().parse().unwrap_or_else(|_| fail("spawn N"));
                for _ in 0..n {
                    let child = std::process::Command::new(self_exe())
                        .args(["sleep", "3600"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| fail(&e.to_string()));
                    std::mem::forget(child);
                }
                say(&format!("spawned={n}"));
            }
            "stop" => {
                let _ = out.lock().flush();
                let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
            }
            "sleep" => {
                std::thread::sleep(Duration::from_secs_f64(arg().parse().unwrap_or_else(|_| fail("sleep SECS"))))
            }
            "wait-eof" => {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            }
            "echo" => {
                let mut buf = vec![0u8; 64 * 1024];
                let mut input = std::io::stdin().lock();
                let mut output = out.lock();
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if output.write_all(&buf[..n]).and_then(|_| output.flush()).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            "alloc" => {
                let mib: usize = arg().parse().unwrap_or_else(|_| fail("alloc MIB"));
                // One mebibyte at a time, each filled by `vec!`'s memset: a
                // fill byte by byte, as the fixture is built for the tests
                // (unoptimized), took 11 ms a mebibyte here and several
                // seconds per OOM kill under TCG.
                for _ in 0..mib {
                    std::mem::forget(vec![1u8; 1 << 20]);
                }
                say(&format!("allocated={mib}"));
            }
            "forkbomb" => loop {
                let spawned = std::process::Command::new(self_exe())
                    .arg("forkbomb")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                match spawned {
                    Ok(c) => std::mem::forget(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            },
            "record-signals" => record_signals(&arg()),
            "spin" => {
                let secs: f64 = arg().parse().unwrap_or_else(|_| fail("spin SECS"));
                let end = std::time::Instant::now() + Duration::from_secs_f64(secs);
                let mut x = 0u64;
                while std::time::Instant::now() < end {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "gateway" => {
                let (root, n, guardian) = (arg(), arg(), arg());
                gateway(&root, n.parse().unwrap_or_else(|_| fail("gateway N")), guardian == "1")
            }
            "try-write" => {
                let (path, value) = (arg(), arg());
                let r =
                    std::fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| f.write_all(value.as_bytes()));
                attempt(&format!("try-write {path}"), r.map_err(errno));
            }
            "try-read" => {
                let path = arg();
                attempt(&format!("try-read {path}"), std::fs::read(&path).map(drop).map_err(errno));
            }
            "try-open" => {
                let path = arg();
                attempt(&format!("try-open {path}"), std::fs::File::open(&path).map(drop).map_err(errno));
            }
            "try-mkdir" => {
                let path = arg();
                attempt(&format!("try-mkdir {path}"), std::fs::create_dir(&path).map_err(errno));
            }
            "try-setxattr" => {
                let (path, name, value) = (arg(), arg(), arg());
                let r = rustix::fs::lsetxattr(&path, &name, value.as_bytes(), rustix::fs::XattrFlags::empty());
                attempt(&format!("try-setxattr {path} {name}"), r.map_err(|e| e.raw_os_error()));
            }
            "try-rmxattr" => {
                let (path, name) = (arg(), arg());
                let r = rustix::fs::lremovexattr(&path, &name);
                attempt(&format!("try-rmxattr {path} {name}"), r.map_err(|e| e.raw_os_error()));
            }
            "try-kill" => {
                let (pid, sig) = (arg(), arg());
                let p = pid.parse().ok().and_then(rustix::process::Pid::from_raw);
                let p = p.unwrap_or_else(|| fail("try-kill PID KILL|STOP|TERM"));
                let signal = match sig.as_str() {
                    "KILL" => rustix::process::Signal::KILL,
                    "STOP" => rustix::process::Signal::STOP,
                    "TERM" => rustix::process::Signal::TERM,
                    _ => fail("try-kill PID KILL|STOP|TERM"),
                };
                let r = rustix::process::kill_process(p, signal);
                attempt(&format!("try-kill {pid} {sig}"), r.map_err(|e| e.raw_os_error()));
            }
            "try-sigio" => {
                let (pid, sig) = (arg(), arg());
                let p: i32 = pid.parse().unwrap_or_else(|_| fail("try-sigio PID SIG"));
                let s: i32 = sig.parse().unwrap_or_else(|_| fail("try-sigio PID SIG"));
                attempt(&format!("try-sigio {pid} {sig}"), sigio(p, s));
            }
            "try-spawn" => {
                let (path, sealing) = (arg(), arg());
                let sealing = match sealing.as_str() {
                    "auto" => procscope::Sealing::Auto,
                    "required" => procscope::Sealing::Required,
                    "off" => procscope::Sealing::Off,
                    _ => fail("try-spawn CGROUP auto|required|off"),
                };
                say(&format!("try-spawn {}={}", sealing.as_str(), try_spawn(&path, sealing)));
            }
            "nest" => {
                let (depth, width) = (arg(), arg());
                let n = |s: &str| s.parse::<usize>().unwrap_or_else(|_| fail("nest DEPTH WIDTH"));
                nest(n(&depth), n(&width)).unwrap_or_else(|e| fail(&format!("nest: {e}")));
                say("nest=ok");
            }
            "walk-recursive" => {
                let (path, kib) = (arg(), arg());
                let kib = kib.parse().unwrap_or_else(|_| fail("walk-recursive PATH KIB"));
                let n = walk_recursive(&path, kib).unwrap_or_else(|e| fail(&format!("walk-recursive: {e}")));
                say(&format!("walk-recursive={n}"));
            }
            "pull" => {
                let pid = arg();
                let cg = own_cgroup().unwrap_or_else(|e| fail(&format!("pull: {e}")));
                let r = cg.write("cgroup.procs", &pid).map_err(|e| {
                    eprintln!("pull {pid}: {e}");
                    e.raw_os_error().unwrap_or(0)
                });
                attempt(&format!("pull {pid}"), r);
            }
            "exit" => std::process::exit(arg().parse().unwrap_or_else(|_| fail("exit CODE"))),
            other => fail(&format!("unknown action {other:?}")),
        }
    }
    std::process::exit(0)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(msg: &str) -> ! {
    eprintln!("procscope-fixture: {msg}");
    std::process::exit(99)
}

fn self_exe() -> std::path::PathBuf {
    std::env::current_exe().unwrap_or_else(|e| fail(&e.to_string()))
}

/// Its terminal, session and parent, and every fd it holds with its target.
fn print_tty() {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    say(&format!("stat={}", fields.get(1..5).map(|f| f.join(" ")).unwrap_or_default()));
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    fds.sort_unstable();
    // The listing's own fd is closed by now: its link no longer reads.
    for fd in fds {
        if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            say(&format!("fd={fd} {}", target.display()));
        }
    }
}

fn print_self() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field =
        |k: &str| status.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_owned())).unwrap_or_default();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let unified = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("").to_owned();
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    fds.sort_unstable();
    // The read_dir above held one fd of its own, closed by now: keep what is still open.
    let open: Vec<String> = fds
        .iter()
        .filter(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok())
        .map(|f| f.to_string())
        .collect();
    say(&format!("pid={}", std::process::id()));
    say(&format!("cgroup={unified}"));
    say(&format!("fds={}", open.join(",")));
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let n = |v: Option<u64>| v.map_or("unlimited".to_owned(), |v| v.to_string());
    say(&format!("nofile={} {}", n(nofile.current), n(nofile.maximum)));
    say(&format!(
        "caps={} {} {} {} {}",
        field("CapInh:"),
        field("CapPrm:"),
        field("CapEff:"),
        field("CapBnd:"),
        field("CapAmb:")
    ));
    say(&format!("nnp={}", field("NoNewPrivs:")));
    say(&format!("sig={} {} {}", field("SigBlk:"), field("SigIgn:"), field("SigCgt:")));
    // Field 6 of /proc/self/stat (getsid would assert on session 0).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let sid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(3)).unwrap_or("0");
    say(&format!("sid={sid}"));
    say(&format!("uid={}", field("Uid:")));
    say(&format!("gid={}", field("Gid:")));
    say(&format!("groups={}", field("Groups:")));
    let link = |p: &str| std::fs::read_link(p).map(|l| l.display().to_string()).unwrap_or_default();
    say(&format!("cwd={}", link("/proc/self/cwd")));
    say(&format!("mntns={}", link("/proc/self/ns/mnt")));
    say(&format!("cgroupns={}", link("/proc/self/ns/cgroup")));
}

fn record_signals(path: &str) -> ! {
    let sigs: Vec<i32> = (1..32)
        .filter(|s| {
            ![libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE].contains(s)
        })
        .collect();
    signal::block(&sigs).unwrap_or_else(|e| fail(&e.to_string()));
    say("recording");
    loop {
        let (sig, from) = signal::wait_blocked(&sigs).unwrap_or_else(|e| fail(&e.to_string()));
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap_or_else(|e| fail(&e.to_string()));
        let _ = writeln!(f, "{sig} {from}");
    }
}

fn gateway(root: &str, sessions: usize, guardian: bool) -> ! {
    use tokio::io::AsyncBufReadExt;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| fail(&e.to_string()));
    rt.block_on(async {
        // `discover`: the root a gateway finds on its own (`Root::discover`),
        // or holders where no cgroup2 can be written; `holders`: holders.
        let mut builder = procscope::Supervisor::builder().grace(Duration::from_millis(500));
        match root {
            "discover" => {}
            "holders" => builder = builder.containment(procscope::Containment::Holders),
            _ => builder = builder.root(root),
        }
        if guardian {
            builder = builder.guardian(true);
        }
        let sup = builder.start().await.unwrap_or_else(|e| fail(&e.to_string()));
        say(&format!("containment={}", sup.containment().as_str()));
        match sup.instance() {
            Some(instance) => say(&format!("instance={}", instance.path().display())),
            None => say("instance=none"),
        }
        say(&format!("guardian={}", sup.guardian_pid().unwrap_or(0)));
        // The children's actions: a helper daemonized, or (unsealed, waited
        // for until they print `ready`) the ones given.
        let actions = std::env::var("PROCSCOPE_FIXTURE_CHILD").ok();
        let mut keep = Vec::new();
        for i in 0..sessions {
            let started = async {
                // Children given actions may build cgroup trees: no nesting caps.
                let limits = match &actions {
                    _ if sup.containment() == procscope::Containment::Holders => procscope::Limits::default(),
                    None => procscope::Limits::default(),
                    Some(_) => procscope::Limits {
                        max_depth: Some(u32::MAX),
                        max_descendants: Some(u32::MAX),
                        ..procscope::Limits::default()
                    },
                };
                let session = sup.session_with_limits(&format!("g{i}"), &limits)?;
                let mut cmd = procscope::Command::new(self_exe());
                cmd.stdin(procscope::Stdio::Null);
                match &actions {
                    None => cmd.args(["daemon", "sleep", "3600"]).stdout(procscope::Stdio::Null),
                    Some(a) => {
                        cmd.args(a.split_whitespace()).stdout(procscope::Stdio::Piped).sealing(procscope::Sealing::Off)
                    }
                };
                let mut child = session.spawn(&mut cmd)?;
                say(&format!("child={}", child.id()));
                say(&format!("auto_kill={}", child.auto_kill().as_str()));
                let out = child.stdout.take().map(|o| tokio::io::BufReader::new(o).lines());
                let out = match out {
                    Some(mut lines) => {
                        while let Ok(Some(line)) = lines.next_line().await {
                            if line == "ready" {
                                break;
                            }
                        }
                        Some(lines)
                    }
                    None => None,
                };
                Ok::<_, procscope::Error>((session, child, out))
            };
            match started.await {
                Ok(kept) => keep.push(kept),
                Err(e) => say(&format!("refused={e}")),
            }
        }
        say(&format!("sessions={}", keep.len()));
        say("ready");
        // Orders on stdin: `sweep` (every session orphaned, then swept) or
        // `shutdown`; at EOF the gateway just runs on.
        let next_order = || {
            tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                (std::io::stdin().read_line(&mut line).unwrap_or(0) > 0).then_some(line)
            })
        };
        while let Ok(Some(order)) = next_order().await {
            match order.trim() {
                "sweep" => {
                    keep.clear();
                    let report = sup.sweep_orphans().await;
                    say(&format!("report={report}"));
                    for e in &report.errors {
                        say(&format!("error={}: {}", e.session, e.error));
                    }
                }
                "shutdown" => {
                    keep.clear();
                    match sup.shutdown().await {
                        Ok(report) => say(&format!("report={report}")),
                        Err(e) => say(&format!("shutdown failed: {e}")),
                    }
                    std::process::exit(0);
                }
                other => say(&format!("unknown order {other:?}")),
            }
        }
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}

/// Signal dispositions and synchronous waits, through libc: procscope keeps its
/// own to itself.
mod signal {
    use std::io;
    use std::mem::MaybeUninit;

    /// Sets `sig` to be ignored (`SIG_IGN`).
    pub fn ignore(sig: i32) -> io::Result<()> {
        // SAFETY: SIG_IGN is not a handler: no code of ours runs on the signal,
        // so no async-signal-safety question arises.
        let prev = unsafe { libc::signal(sig, libc::SIG_IGN) };
        if prev == libc::SIG_ERR { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Blocks every signal in `sigs` for the calling thread, so that they stay
    /// pending until [`wait_blocked`] takes them.
    pub fn block(sigs: &[i32]) -> io::Result<()> {
        let set = sigset(sigs)?;
        // SAFETY: a valid, initialised signal set; the old mask is not requested.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 { Err(io::Error::from_raw_os_error(r)) } else { Ok(()) }
    }

    /// Waits until one of `sigs` (blocked with [`block`]) is pending and takes
    /// it. Returns the signal number and the pid of the sender.
    pub fn wait_blocked(sigs: &[i32]) -> io::Result<(i32, i32)> {
        let set = sigset(sigs)?;
        loop {
            let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
            // SAFETY: a valid set and a writable siginfo buffer.
            let r = unsafe { libc::sigwaitinfo(&set, info.as_mut_ptr()) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: sigwaitinfo filled `info`; si_pid is valid for signals sent
            // by kill(2) and pidfd_send_signal(2), and 0 for others.
            let pid = unsafe { info.assume_init_ref().si_pid() };
            return Ok((r, pid));
        }
    }

    fn sigset(sigs: &[i32]) -> io::Result<libc::sigset_t> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset only writes into it.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for &sig in sigs {
                if libc::sigaddset(set.as_mut_ptr(), sig) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(set.assume_init())
        }
    }
}
