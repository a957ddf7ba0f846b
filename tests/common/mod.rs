//! Shared test harness: a private cgroup root per test, and proof that the test
//! left nothing behind (cgroups, processes, zombies, fds).
#![allow(dead_code)]

pub mod container;
pub mod docker;

use std::path::PathBuf;
use std::time::Duration;

use procscope::Cgroup;
use procscope::cgroup::hierarchy::Hierarchy;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The test helper, a process that misbehaves on request: the example
/// `examples/procscope-fixture.rs`, built as
/// `target/<profile>/examples/procscope-fixture`. The path is derived at
/// compile time from the `procscope` binary's (`target/<profile>/procscope`),
/// not from where the test runs (a nextest archive is extracted elsewhere).
///
/// `cargo test` and `cargo nextest run` build it; with a target filter
/// (`cargo test --test core`, `cargo nextest run --test core`) cargo builds no
/// example: run `cargo build --example procscope-fixture` first.
/// [`TestEnv::new`] fails with that advice when it is missing.
pub const FIXTURE: &str = {
    const BIN: &[u8] = env!("CARGO_BIN_EXE_procscope").as_bytes();
    const EXAMPLE: &[u8] = b"examples/procscope-fixture";
    // The length of BIN's directory, its last '/' included (`cargo check`
    // gives a bare name).
    const DIR: usize = {
        let mut n = BIN.len();
        while n > 0 && BIN[n - 1] != b'/' {
            n -= 1;
        }
        n
    };
    // concat! takes literals only: the bytes are put together here.
    const PATH: [u8; DIR + EXAMPLE.len()] = {
        let mut path = [0; DIR + EXAMPLE.len()];
        let (dir, example) = path.split_at_mut(DIR);
        dir.copy_from_slice(BIN.split_at(DIR).0);
        example.copy_from_slice(EXAMPLE);
        path
    };
    match std::str::from_utf8(&PATH) {
        Ok(path) => path,
        Err(_) => panic!("CARGO_BIN_EXE_procscope is not UTF-8"),
    }
};

/// A test's own cgroup root under the cgroup2 mount, removed at the end.
pub struct TestEnv {
    pub root: Cgroup,
    mount: Cgroup,
    fds_before: Vec<String>,
    finished: bool,
}

impl TestEnv {
    /// Fails (never skips) when the host cannot run the tests.
    pub fn new() -> TestEnv {
        assert!(rustix::process::geteuid().is_root(), "these tests need root (they create cgroups)");
        assert!(
            std::path::Path::new(FIXTURE).exists(),
            "the test helper {FIXTURE} is missing: build it with `cargo build --example procscope-fixture` \
             (`cargo test` and `cargo nextest run` build it, but not with a target filter such as --test)"
        );
        let h = Hierarchy::discover().expect("a cgroup2 mount is needed for these tests");
        let mount = h.open_mount().expect("open the cgroup2 mount");
        let name = format!("procscope-test-{}-{}", std::process::id(), nanos());
        let root = mount.create_child(&name).expect("create the test root");
        // What procscope keeps open for the whole process: create it first.
        procscope::testing::init_process_state();
        TestEnv { root, mount, fds_before: open_fds(), finished: false }
    }

    pub fn path(&self) -> PathBuf {
        self.root.path().to_owned()
    }

    /// Creates a session-like cgroup under the test root.
    pub fn cgroup(&self, name: &str) -> Cgroup {
        self.root.create_child(name).expect("create a cgroup")
    }

    /// Waits (bounded) until the root has no child cgroups — for processes such
    /// as `procscope exec` wrappers that remove theirs as they exit — and
    /// asserts it.
    pub async fn wait_root_empty(&self) {
        for _ in 0..200 {
            if self.root.children().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(self.root.children().unwrap().is_empty(), "{:?}", self.root.children());
    }

    /// [`wait_root_empty`](Self::wait_root_empty), except for the cgroup
    /// `keep`.
    pub async fn wait_root_empty_but(&self, keep: &str) {
        let others = || -> Vec<String> { self.root.children().unwrap().into_iter().filter(|n| n != keep).collect() };
        for _ in 0..200 {
            if others().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(others().is_empty(), "{:?}", others());
    }

    /// Asserts that the test cleaned up after itself, then removes the root.
    pub async fn finish(mut self) {
        self.finished = true;
        // Children dropped while running are reaped by the reaper thread.
        for _ in 0..200 {
            if procscope::testing::reaper_pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pending = procscope::testing::reaper_pending();
        let populated = self.root.is_populated().unwrap();
        let left = self.root.children().unwrap();
        let kids = own_children();
        let fds = open_fds();
        // Clean up before asserting, so a failure leaves nothing either.
        cleanup(&self.mount, &self.root);
        assert!(!self.root.path().exists(), "test root still exists");
        assert_eq!(pending, 0, "children still waiting to be reaped");
        assert!(!populated, "processes left in the test's cgroups");
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
        assert!(kids.is_empty(), "child processes (or zombies) left behind: {kids:?}");
        assert_eq!(fds, self.fds_before, "fds leaked (before vs after)");
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if !self.finished {
            cleanup(&self.mount, &self.root);
        }
    }
}

/// Every directory below the cgroup `dir`, as paths relative to it (sorted).
///
/// `dir` must exist. A directory below it that is removed while the walk
/// runs (a guardian ending an instance) is left out, with what was below it:
/// it was listed, but it is gone by the time it is read.
pub fn cgroup_dirs(dir: &std::path::Path) -> Vec<PathBuf> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<PathBuf>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != base => return,
            Err(e) => panic!("list the cgroup {}: {e}", dir.display()),
        };
        if dir != base {
            out.push(dir.strip_prefix(base).unwrap().to_owned());
        }
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), base, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The guardian's spool of the root `root` (procscope's `spool` module):
/// `/run/procscope/guardian-spool/<inode of the root's directory>`.
pub fn spool_of(root: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(root).expect("stat the root").ino();
    std::path::Path::new("/run/procscope/guardian-spool").join(ino.to_string())
}

/// Kills everything in `cg` and below the plain way, without moving any
/// process out first (as an attacker or a careless tool would): `cgroup.kill`
/// where the kernel has it (Linux 5.14), else SIGKILL to each member through
/// a verified pidfd, until none is left (at most a second).
pub fn raw_kill(cg: &Cgroup) {
    if cg.has_file("cgroup.kill") {
        cg.write("cgroup.kill", "1").unwrap();
        return;
    }
    for _ in 0..100 {
        let members = cg.member_pidfds_recursive().unwrap_or_default();
        if members.is_empty() {
            return;
        }
        for m in &members {
            let _ = m.send_signal(procscope::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills everything under `root` and removes it, synchronously (also on panic);
/// with it the guardians' spool of the root, if one was made.
fn cleanup(mount: &Cgroup, root: &Cgroup) {
    let spool = root.path().exists().then(|| spool_of(root.path()));
    if root.has_file("cgroup.kill") {
        let _ = root.write("cgroup.kill", "1");
    } else {
        raw_kill(root);
    }
    let _ = root.wait_events_blocking(Some(Duration::from_secs(5)), |e| !e.populated);
    remove_tree(mount, root);
    if let Some(spool) = spool {
        let _ = std::fs::remove_dir_all(spool);
    }
    // Reap whatever we still own, without blocking on strangers.
    while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {}
}

/// Removes `cg` and everything below it, however deep (the library's own
/// iterative teardown), trying again while it is busy.
fn remove_tree(parent: &Cgroup, cg: &Cgroup) {
    for _ in 0..20 {
        match parent.remove_child_tree_blocking(cg) {
            Ok(_) => return,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// The fds open in this process, as `N -> target` lines (targets of sockets and
/// anon inodes included), so a leak says what leaked. The sealing's mount-table
/// watch and prepared namespace are replaced whenever the host's mount table
/// changes (another test may mount something): those two are listed by kind,
/// without their number, so that only a change in their count is a leak (and
/// the listing's own fd is left out).
pub fn open_fds() -> Vec<String> {
    let listing = format!("/proc/{}/fd", std::process::id());
    let fds = open_fds_numbered().into_iter().filter(|l| !l.ends_with(&format!(" -> {listing}")));
    let (mut kept, mut sealing): (Vec<String>, Vec<String>) = fds.into_iter().partition(|l| {
        let target = l.split_once(" -> ").map_or("", |(_, t)| t);
        !(target.starts_with("mnt:[") || target.ends_with("/mountinfo"))
    });
    for l in &mut sealing {
        *l = if l.contains("mnt:[") { "sealed mount namespace".into() } else { "mount-table watch".into() };
    }
    sealing.sort();
    kept.extend(sealing);
    kept
}

fn open_fds_numbered() -> Vec<String> {
    let mut fds: Vec<(i32, String)> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let n: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    fds.into_iter().map(|(n, t)| format!("{n} -> {t}")).collect()
}

/// Processes whose parent is this process: `(pid, state, comm)`.
pub fn own_children() -> Vec<(i32, char, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let comm = stat[stat.find('(').unwrap_or(0) + 1..close].to_owned();
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        let state = rest[0].chars().next().unwrap_or('?');
        let ppid: i32 = rest[1].parse().unwrap_or(0);
        // Threads of our own process are not children.
        if ppid == me && pid != me {
            out.push((pid, state, comm));
        }
    }
    out
}

/// The cgroup path of `pid` as `/proc/<pid>/cgroup` names it.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// `/proc/<pid>/cgroup`'s path for a cgroup directory under the mount.
pub fn cgroup_rel(cg: &Cgroup) -> String {
    let h = Hierarchy::discover().unwrap();
    let rel = cg.path().strip_prefix(&h.mount_point).unwrap();
    format!("/{}", rel.display())
}

/// Reads lines from a child's stdout until `stop` matches (inclusive) or EOF.
pub async fn read_until(out: &mut procscope::ChildStdout, stop: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut reader = BufReader::new(out);
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await.expect("read child stdout");
        if n == 0 {
            return lines;
        }
        let line = line.trim_end().to_owned();
        let done = line == stop;
        lines.push(line);
        if done {
            return lines;
        }
    }
}

pub fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {lines:?}"))
}

/// Waits (at most 5 s) until `cg` has no child cgroups: the guardian of
/// `procscope exec` commands removes theirs once they have exited.
pub async fn wait_no_children(cg: &Cgroup) {
    for _ in 0..500 {
        if cg.children().map_or(true, |c| c.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} still has {:?}", cg.path().display(), cg.children());
}

/// Waits (at most 5 s) until `path` is gone.
pub async fn wait_gone(path: &std::path::Path) {
    wait_gone_within(path, 5).await;
}

/// Waits (at most `secs`) until `path` is gone.
pub async fn wait_gone_within(path: &std::path::Path, secs: u64) {
    for _ in 0..secs * 100 {
        if !path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tree =
        std::process::Command::new("find").arg(path).arg("-maxdepth").arg("2").arg("-type").arg("d").output().unwrap();
    let ps = std::process::Command::new("ps").args(["-eo", "pid,ppid,stat,args"]).output().unwrap();
    panic!(
        "{} is still there:\n{}\n{}",
        path.display(),
        String::from_utf8_lossy(&tree.stdout),
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains("guardian") || l.contains("fixture"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Waits (at most 20 s) until each of the `sessions` sessions under the
/// fixture gateway's `instance` holds exactly its settled pair: the child
/// (`... daemon sleep 3600`) and the helper it daemonized, exec'd as
/// `... sleep 3600`, with `setsid`'s short-lived parent gone. A bare count
/// is not enough: mid-`setsid --fork`, a session briefly holds three
/// processes while another holds one. Returns the pidfds of all 2N.
pub async fn settled_daemons(instance: &Cgroup, sessions: usize) -> Vec<procscope::PidFd> {
    let cmdline = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let settled = |session: &Cgroup| {
        let procs = session.procs().unwrap_or_default();
        let cmds: Vec<Vec<u8>> = procs.iter().map(|&p| cmdline(p)).collect();
        let argv0 = |c: &[u8]| c.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        let child: Vec<&Vec<u8>> = cmds.iter().filter(|c| c.ends_with(b"\0daemon\0sleep\x003600\0")).collect();
        // The helper once exec'd: the fixture's own program, not `setsid`
        // (whose command line ends the same way while it forks).
        let helper = cmds.iter().filter(|c| {
            child.first().is_some_and(|ch| argv0(ch) == argv0(c))
                && !c.windows(7).any(|w| w == b"\0daemon")
                && c.ends_with(b"\0sleep\x003600\0")
        });
        procs.len() == 2 && child.len() == 1 && helper.count() == 1
    };
    let mut last = Vec::new();
    for _ in 0..2000 {
        let names = instance.children().unwrap_or_default();
        let all = names.len() == sessions
            && names.iter().all(|n| Cgroup::open(instance.path().join(n)).is_ok_and(|s| settled(&s)));
        if all {
            return instance.member_pidfds_recursive().unwrap();
        }
        last = names
            .iter()
            .filter_map(|n| Cgroup::open(instance.path().join(n)).ok())
            .map(|s| {
                let cmds: Vec<String> = s
                    .procs()
                    .unwrap_or_default()
                    .iter()
                    .map(|&p| String::from_utf8_lossy(&cmdline(p)).replace('\0', " "))
                    .collect();
                format!("{}: {cmds:?}", s.path().display())
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the sessions never settled at a child and a helper each: {last:#?}");
}

/// Runs `fut` with a timeout, so that no async test can hang.
pub async fn within<F: std::future::Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut).await.expect("test timed out")
}

/// A gateway process started by a test; SIGKILLed and reaped on drop, so a
/// failing test does not leave it (or, through its guardian, its sessions)
/// running.
pub struct Gateway(pub std::process::Child);

impl std::ops::Deref for Gateway {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Gateway {
    /// Starts `program`'s `gateway` action (a supervisor under `root` with
    /// `sessions` sessions, each running a child that daemonizes a helper;
    /// with a guardian if asked) and reads its report up to `ready`:
    /// `instance=`, `guardian=` and the sessions' lines.
    pub fn start(program: &str, root: &std::path::Path, sessions: usize, guardian: bool) -> (Gateway, Vec<String>) {
        let mut child = std::process::Command::new(program)
            .arg("gateway")
            .arg(root)
            .args([sessions.to_string().as_str(), if guardian { "1" } else { "0" }])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = read_until_ready(&mut child);
        // Let the daemons finish forking before anyone counts or kills.
        std::thread::sleep(Duration::from_millis(100));
        (Gateway(child), lines)
    }
}

/// Reads a started process's stdout (piped) line by line up to `ready`,
/// which ends the list; fails if it exits first.
pub fn read_until_ready(child: &mut std::process::Child) -> Vec<String> {
    use std::io::BufRead;
    let mut lines: Vec<String> = Vec::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout piped"));
    while lines.last().map(String::as_str) != Some("ready") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "exited before `ready`: {lines:?}");
        lines.push(line.trim().to_owned());
    }
    lines
}

/// Live processes whose environment carries `PSTAG=<tag>`.
pub fn tagged(tag: &str) -> Vec<i32> {
    let needle = format!("PSTAG={tag}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
                .unwrap_or(true);
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            !zombie && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        })
        .collect()
}

/// Waits (bounded) until no process carries the tag; returns what is left.
pub async fn settle(tag: &str, secs: u64) -> Vec<i32> {
    for _ in 0..secs * 20 {
        if tagged(tag).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tagged(tag)
}
