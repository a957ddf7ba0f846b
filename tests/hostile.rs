//! Hostile children. A child running as uid 0 holds no capabilities, yet owns
//! every root-owned cgroup file. Each attack below is made by a fresh child in
//! an "attacker" session, through the library and through `procscope exec`.
//! Sealed (the default for a root gateway), every attempt must fail and the
//! whole tree must be as it was; the control run with sealing off shows the
//! same attacks working, so the tests have teeth.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use procscope::cgroup::hierarchy::Hierarchy;
use procscope::{Cgroup, Command, Root, Sealing, Session, Stdio, Supervisor, tree};

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");

/// procscope's metadata keys (`src/root.rs`, `src/instance.rs`,
/// `src/guardian.rs`, `src/totals.rs`), in both xattr namespaces.
const META_KEYS: &[&str] = &[
    "kind",
    "state",
    "session",
    "owner_pid",
    "owner_start",
    "owner_pidns",
    "created",
    "guardian",
    "role",
    "counters",
    "totals",
];
/// The keys a snapshot compares: the counters and totals change whenever
/// anything ends (a guardian's spool is folded in), attack or not.
const SNAPSHOT_KEYS: &[&str] =
    &["kind", "state", "session", "owner_pid", "owner_start", "owner_pidns", "created", "guardian", "role"];
/// Files whose content a snapshot records, where they exist.
const WATCHED_FILES: &[&str] =
    &["cgroup.max.descendants", "cgroup.max.depth", "cgroup.freeze", "cgroup.subtree_control", "cgroup.type"];

type Snapshot = BTreeMap<PathBuf, Vec<(String, Option<String>)>>;

/// Every directory under `dir`, with the watched files and procscope's xattrs
/// (both namespaces): what an attack could change. `procscope exec`'s
/// per-command cgroups (`p-…`) come and go with each command and are left out.
fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(cg) = Cgroup::open(&d) else { continue };
        let mut facts = Vec::new();
        for f in WATCHED_FILES {
            facts.push((f.to_string(), cg.read(f).ok()));
        }
        for ns in ["trusted", "user"] {
            for k in SNAPSHOT_KEYS {
                let name = format!("{ns}.procscope.{k}");
                facts.push((name.clone(), cg.xattr(&name).ok().flatten()));
            }
        }
        out.insert(d.clone(), facts);
        for name in cg.children().unwrap_or_default() {
            if !name.starts_with("p-") {
                stack.push(d.join(name));
            }
        }
    }
    out
}

/// The places an attacker aims at.
struct Targets {
    mount: PathBuf,
    root: PathBuf,
    instance: PathBuf,
    own: PathBuf,
    /// A cgroup the test made below the attacker's session, before the attacks.
    nested: PathBuf,
    /// A session of the same supervisor.
    other: PathBuf,
    /// A session of another supervisor (another instance).
    foreign: PathBuf,
    foreign_instance: PathBuf,
    /// A cgroup of the host next to the procscope root, outside procscope.
    host: PathBuf,
    /// A cgroup the test made in a cgroup v1 hierarchy, where one is mounted.
    v1: Option<PathBuf>,
    /// A process of another session, and one of another gateway's session,
    /// that the attacker tries to move.
    other_mover: u32,
    foreign_mover: u32,
    /// A `cgroup.subtree_control` line that changes the instance's
    /// controllers, and the line that changes them back.
    controllers: (String, String),
}

/// What an attack does when it works, and how the control undoes it.
enum Effect {
    /// Nothing the test looks at (the result is the proof).
    Unchecked,
    /// `file` now reads `value`; writing `undo` restores it.
    Writes { file: PathBuf, value: Option<String>, undo: String },
    /// A cgroup appeared; the control removes it.
    Made(PathBuf),
    /// Process `pid` moved to the cgroup `to`.
    Moved { pid: u32, to: PathBuf },
    /// The attacker froze a cgroup it runs in: the test finds it frozen and thaws it.
    FrozeItself(PathBuf),
    /// The attacker ended itself (`cgroup.kill` of its own session).
    KilledItself,
    /// Checked by the test at the end (a victim killed or frozen).
    Victim,
}

/// One attack: the fixture's arguments, a name for messages, and what it does
/// when it works.
struct Attack {
    name: String,
    args: Vec<String>,
    effect: Effect,
    /// The result unsealed: `ok`, unless the kernel refuses it anyway.
    unsealed: String,
}

/// The file that ends a whole session with one write: `cgroup.kill` (Linux
/// 5.14). Before it (5.10 in the VMs) there is none, and the nearest single
/// write against another session is `cgroup.freeze`: the attacks use that
/// there, and the control sees the victim frozen instead of killed.
fn kill_file(t: &Targets) -> &'static str {
    if t.root.join("cgroup.kill").exists() { "cgroup.kill" } else { "cgroup.freeze" }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Every write an attacker tries on cgroups (moves, new cgroups, limits,
/// freezing, killing), each in a child of its own.
fn attacks(t: &Targets) -> Vec<Attack> {
    let write = |name: &str, dir: &Path, file: &str, value: &str, effect: Effect| Attack {
        name: name.to_owned(),
        args: vec!["try-write".into(), s(&dir.join(file)), value.into()],
        unsealed: match &effect {
            Effect::KilledItself => "killed".into(),
            _ if file == "cgroup.procs" => procs_write_unsealed(t, dir),
            _ => "ok".into(),
        },
        effect,
    };
    let limit = |name: &str, dir: &Path, file: &str, value: &str| {
        let old = std::fs::read_to_string(dir.join(file)).unwrap().trim().to_owned();
        let effect = Effect::Writes { file: dir.join(file), value: Some(value.into()), undo: old };
        write(name, dir, file, value, effect)
    };
    let mkdir = |name: &str, dir: PathBuf| Attack {
        name: name.into(),
        args: vec!["try-mkdir".into(), s(&dir)],
        effect: Effect::Made(dir),
        unsealed: "ok".into(),
    };
    let kill = kill_file(t);
    let mut v = vec![
        // Leaving the session, moving into other cgroups, moving others.
        write("leave the session for the mount's root", &t.mount, "cgroup.procs", "0", Effect::Unchecked),
        write("leave the session for the procscope root", &t.root, "cgroup.procs", "0", Effect::Unchecked),
        write("leave the session for a host cgroup", &t.host, "cgroup.procs", "0", Effect::Unchecked),
        write("move into a sub-cgroup of its own session", &t.nested, "cgroup.procs", "0", Effect::Unchecked),
        write("move into another session", &t.other, "cgroup.procs", "0", Effect::Unchecked),
        write("move into another gateway's session", &t.foreign, "cgroup.procs", "0", Effect::Unchecked),
        write(
            "move another session's process to the mount's root",
            &t.mount,
            "cgroup.procs",
            &t.other_mover.to_string(),
            Effect::Moved { pid: t.other_mover, to: t.mount.clone() },
        ),
        write(
            "pull another gateway's process into its own session",
            &t.own,
            "cgroup.procs",
            &t.foreign_mover.to_string(),
            Effect::Moved { pid: t.foreign_mover, to: t.own.clone() },
        ),
        // Creating cgroups. (The mount's root directory is mode 0555, which a
        // uid-0 child without CAP_DAC_OVERRIDE cannot write even unsealed: a
        // cgroup next to the root, in the host's cgroup, stands for it.)
        mkdir("create a cgroup in its own session", t.own.join("sub")),
        mkdir("create a cgroup in the root", t.root.join("evil")),
        mkdir("create a cgroup in a host cgroup", t.host.join("evil")),
        // Limits and controllers.
        limit("limit the root's descendants", &t.root, "cgroup.max.descendants", "0"),
        limit("limit the root's depth", &t.root, "cgroup.max.depth", "1"),
        limit("limit the instance's descendants", &t.instance, "cgroup.max.descendants", "0"),
        limit("lift its own session's limits", &t.own, "cgroup.max.depth", "5"),
        limit("limit a host cgroup's depth", &t.host, "cgroup.max.depth", "1"),
        write("change the instance's controllers", &t.instance, "cgroup.subtree_control", &t.controllers.0, {
            Effect::Writes {
                file: t.instance.join("cgroup.subtree_control"),
                value: None,
                undo: t.controllers.1.clone(),
            }
        }),
        // Freezing and killing.
        write("freeze the procscope root", &t.root, "cgroup.freeze", "1", Effect::FrozeItself(t.root.clone())),
        write("freeze its own session", &t.own, "cgroup.freeze", "1", Effect::FrozeItself(t.own.clone())),
        write("freeze another gateway's session", &t.foreign, "cgroup.freeze", "1", Effect::Victim),
        write("kill another session", &t.other, kill, "1", Effect::Victim),
        write("kill another gateway's session", &t.foreign, kill, "1", Effect::Victim),
    ];
    // A cgroup v1 hierarchy, on a hybrid host only (the VMs have none).
    if let Some(v1) = &t.v1 {
        v.push(write("move into a cgroup v1 hierarchy's cgroup", v1, "cgroup.procs", "0", Effect::Unchecked));
        v.push(limit("write a cgroup v1 file", v1, "notify_on_release", "1"));
    }
    // Last: once a session's cgroup.kill was written, Linux 6.18 kills every
    // child later cloned into it with CLONE_INTO_CGROUP (the clone compares
    // the parent's cgroup's kill count with the target's), so no library
    // attacker could follow in the control.
    v.push(write(
        "kill its own session",
        &t.own,
        kill,
        "1",
        if kill == "cgroup.kill" { Effect::KilledItself } else { Effect::FrozeItself(t.own.clone()) },
    ));
    v
}

/// Setting and removing every procscope xattr, in both namespaces, on the
/// attacker's own session, its instance, another session and another
/// gateway's instance: one child tries them all, in this order (each key set,
/// then removed).
fn xattr_attacks(t: &Targets) -> Vec<Attack> {
    let mut v = Vec::new();
    for (whose, dir) in [
        ("its own session", &t.own),
        ("its instance", &t.instance),
        ("another session", &t.other),
        ("another gateway's instance", &t.foreign_instance),
    ] {
        for ns in ["trusted", "user"] {
            for key in META_KEYS {
                let name = format!("{ns}.procscope.{key}");
                let value = match *key {
                    "state" => "orphaned",
                    "owner_pid" => "1",
                    _ => "forged",
                };
                // trusted.* needs CAP_SYS_ADMIN even unsealed (EPERM);
                // user.* only ownership.
                let unsealed = if ns == "trusted" { "E1" } else { "ok" };
                v.push(Attack {
                    name: format!("set {name} on {whose}"),
                    args: vec!["try-setxattr".into(), s(dir), name.clone(), value.into()],
                    effect: Effect::Unchecked,
                    unsealed: unsealed.into(),
                });
                v.push(Attack {
                    name: format!("remove {name} from {whose}"),
                    args: vec!["try-rmxattr".into(), s(dir), name],
                    effect: Effect::Unchecked,
                    unsealed: unsealed.into(),
                });
            }
        }
    }
    v
}

/// Where the attacker runs: a child of a library session, or a command that
/// `procscope exec` places in that session.
#[derive(Clone, Copy)]
enum Via<'a> {
    Library(&'a Session),
    Exec { root: &'a Path, session: &'a str },
}

/// What one attacker child reported.
struct Outcome {
    /// One per attack: `ok`, `E<errno>`, or `killed` when the child was killed
    /// before it could say.
    results: Vec<String>,
    /// The cgroups it froze (found frozen and thawed by the test).
    thawed: Vec<PathBuf>,
}

/// Runs `attacks` in order in one fresh attacker child. While it runs, any of
/// `freezable` (cgroups the attacker itself runs in) found frozen is thawed,
/// so that an attacker that froze itself can still report.
async fn run_attacks(via: Via<'_>, attacks: &[&Attack], sealing: Sealing, freezable: &[&Path]) -> Outcome {
    let args: Vec<String> = attacks.iter().flat_map(|a| a.args.iter().cloned()).collect();
    let thawed = RefCell::new(Vec::new());
    let thaw = async {
        loop {
            for dir in freezable {
                let cg = Cgroup::open(dir).unwrap();
                if cg.read("cgroup.freeze").is_ok_and(|v| v.trim() == "1") {
                    cg.write("cgroup.freeze", "0").unwrap();
                    thawed.borrow_mut().push(dir.to_path_buf());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let run = async {
        match via {
            Via::Library(session) => {
                let mut cmd = Command::new(FIXTURE);
                cmd.args(&args).stdin(Stdio::Null).stdout(Stdio::Piped).sealing(sealing);
                let mut child = session.spawn(&mut cmd).unwrap();
                assert_eq!(child.is_sealed(), sealing != Sealing::Off);
                let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
                (lines, child.wait().await.unwrap())
            }
            Via::Exec { root, session } => {
                let mut cmd = std::process::Command::new(PROCSCOPE);
                cmd.arg("exec").arg("--root").arg(root).args(["--session", session]);
                match sealing {
                    Sealing::Off => cmd.arg("--no-seal"),
                    Sealing::Required => cmd.arg("--seal"),
                    _ => &mut cmd,
                };
                cmd.arg("--").arg(FIXTURE).args(&args);
                cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped());
                let child = cmd.spawn().unwrap();
                let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                (text.lines().map(str::to_owned).collect(), out.status)
            }
        }
    };
    let (lines, status) = tokio::select! {
        r = run => r,
        _ = thaw => unreachable!(),
    };
    let mut results = results(&lines);
    let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL);
    assert!(
        results.len() == attacks.len() || killed,
        "{} results for {} attacks: {lines:?} {status:?}",
        results.len(),
        attacks.len()
    );
    results.resize(attacks.len(), "killed".into());
    Outcome { results, thawed: thawed.into_inner() }
}

/// Runs one attack in a fresh child of `session`; returns the fixture's result
/// (`ok` or `E<errno>`), or `killed` when the attack ended the attacker itself.
async fn run_attack(session: &Session, attack: &Attack, sealing: Sealing) -> String {
    run_attacks(Via::Library(session), &[attack], sealing, &[]).await.results.remove(0)
}

/// Starts a victim that sleeps, and returns it.
fn victim(session: &Session) -> procscope::ContainedChild {
    let mut cmd = Command::new(FIXTURE);
    cmd.args(["sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Null);
    session.spawn(&mut cmd).unwrap()
}

/// A cgroup the test makes outside procscope (next to the root under the
/// cgroup2 mount, or in a cgroup v1 hierarchy), removed on drop whatever
/// happened.
struct HostCgroup(PathBuf);

impl HostCgroup {
    fn new(parent: &Path) -> HostCgroup {
        let path = parent.join(format!("procscope-hostile-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir(&path).unwrap();
        HostCgroup(path)
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        let kill = self.0.join("cgroup.kill");
        for _ in 0..100 {
            if kill.exists() {
                let _ = std::fs::write(&kill, "1");
            }
            let _ = std::fs::remove_dir(self.0.join("evil"));
            match std::fs::remove_dir(&self.0) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => std::thread::sleep(Duration::from_millis(20)),
                _ => return,
            }
        }
    }
}

/// The first cgroup v1 hierarchy mounted here (a hybrid host), if any.
fn v1_hierarchy() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup"))
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
    })
}

/// A `cgroup.subtree_control` line that changes the instance's controllers:
/// enables one it is offered, else disables one it has, else disables one it
/// does not have (a write the kernel accepts that changes nothing: a hybrid
/// host may offer no controller below the mount). With the line that undoes it.
fn controllers_change(instance: &Path) -> (String, String) {
    let cg = Cgroup::open(instance).unwrap();
    let offered = cg.read("cgroup.controllers").unwrap();
    let enabled = cg.read("cgroup.subtree_control").unwrap();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    if let Some(c) = offered.split_whitespace().find(|c| !enabled.contains(c)) {
        return (format!("+{c}"), format!("-{c}"));
    }
    if let Some(c) = enabled.first() {
        return (format!("-{c}"), format!("+{c}"));
    }
    let known = std::fs::read_to_string("/proc/cgroups").unwrap();
    let first = known.lines().find(|l| !l.starts_with('#')).and_then(|l| l.split_whitespace().next()).unwrap();
    (format!("-{first}"), String::new())
}

/// What moving a process into `dir` gives unsealed: `ok`, or `E16` (EBUSY)
/// where `dir` (below the mount's root) has controllers enabled for its
/// children, which the kernel refuses to anyone ("no internal processes").
fn procs_write_unsealed(t: &Targets, dir: &Path) -> String {
    let busy = dir != t.mount
        && std::fs::read_to_string(dir.join("cgroup.subtree_control")).is_ok_and(|c| !c.trim().is_empty());
    if busy { "E16".into() } else { "ok".into() }
}

struct Scene {
    a: Supervisor,
    b: Supervisor,
    attacker: Session,
    other: Session,
    foreign: Session,
    targets: Targets,
    /// In `other` and `foreign`: the victims of the kills, and the processes
    /// an attacker tries to move.
    victims: Vec<procscope::ContainedChild>,
    _host: HostCgroup,
    _v1: Option<HostCgroup>,
}

impl Scene {
    /// Closes every session (each must be removed; what the test made below
    /// the attacker's session first) and shuts both supervisors down.
    async fn end(mut self) {
        let nested = self.attacker.cgroup().unwrap().open_child("nested").unwrap();
        self.attacker.cgroup().unwrap().remove_child_tree(&nested).await.unwrap();
        for session in [self.attacker, self.other, self.foreign] {
            let t = session.close().await.unwrap();
            assert!(t.removed, "{t:?}");
        }
        self.a.shutdown().await.unwrap();
        self.b.shutdown().await.unwrap();
        for v in &mut self.victims {
            v.wait().await.unwrap();
        }
    }

    /// The sessions listed under the root: id → (state, processes); asserts
    /// two instances.
    fn listed(&self) -> BTreeMap<String, (String, usize)> {
        let listed = tree::list(&Root::open(&self.targets.root).unwrap()).unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        listed
            .iter()
            .flat_map(|i| i.sessions.iter().map(|s| (s.id.clone(), (s.state.as_str().to_owned(), s.processes))))
            .collect()
    }

    /// What every check of a sealed run asserts afterwards: the tree as it
    /// was, nothing outside procscope changed, every victim alive where it
    /// was, every session listed as active with its processes.
    fn assert_untouched(&self, before: &Snapshot, host_before: &Snapshot, attacker_processes: usize) {
        assert_eq!(&snapshot(&self.targets.root), before, "the tree changed under a sealed attacker");
        assert_eq!(&snapshot(&self.targets.host), host_before, "the host cgroup changed under a sealed attacker");
        if let Some(v1) = &self.targets.v1 {
            assert_eq!(std::fs::read_to_string(v1.join("notify_on_release")).unwrap().trim(), "0");
            assert_eq!(std::fs::read_to_string(v1.join("cgroup.procs")).unwrap(), "", "a process moved into v1");
        }
        for v in &self.victims {
            assert!(v.pidfd().is_alive(), "a victim died");
        }
        for (pid, session) in [(self.targets.other_mover, &self.other), (self.targets.foreign_mover, &self.foreign)] {
            assert_eq!(cgroup_of(pid), Some(cgroup_rel(session.cgroup().unwrap())), "a victim was moved");
        }
        let sessions = self.listed();
        assert_eq!(sessions["attacker"], ("active".to_owned(), attacker_processes), "{sessions:?}");
        assert_eq!(sessions["other"], ("active".to_owned(), 2), "{sessions:?}");
        assert_eq!(sessions["foreign"], ("active".to_owned(), 2), "{sessions:?}");
    }
}

async fn scene(env: &TestEnv) -> Scene {
    let grace = Duration::from_millis(200);
    let a = Supervisor::builder().root(env.path()).grace(grace).start().await.unwrap();
    let b = Supervisor::builder().root(env.path()).grace(grace).recover(false).start().await.unwrap();
    let attacker = a.session("attacker").unwrap();
    let other = a.session("other").unwrap();
    let foreign = b.session("foreign").unwrap();
    attacker.cgroup().unwrap().create_child("nested").unwrap();
    let victims = vec![victim(&other), victim(&foreign), victim(&other), victim(&foreign)];
    let mount = Hierarchy::discover().unwrap().mount_point;
    let host = HostCgroup::new(&mount);
    let v1 = v1_hierarchy().map(|h| HostCgroup::new(&h));
    let targets = Targets {
        root: env.path(),
        instance: a.instance().unwrap().path().to_owned(),
        own: attacker.cgroup().unwrap().path().to_owned(),
        nested: attacker.cgroup().unwrap().path().join("nested"),
        other: other.cgroup().unwrap().path().to_owned(),
        foreign: foreign.cgroup().unwrap().path().to_owned(),
        foreign_instance: b.instance().unwrap().path().to_owned(),
        host: host.0.clone(),
        v1: v1.as_ref().map(|h| h.0.clone()),
        other_mover: victims[2].id(),
        foreign_mover: victims[3].id(),
        controllers: controllers_change(a.instance().unwrap().path()),
        mount,
    };
    Scene { a, b, attacker, other, foreign, targets, victims, _host: host, _v1: v1 }
}

/// Runs the whole table through `via`, sealed: every attempt must fail.
/// Through the library each cgroup attack runs in a child of its own, the
/// xattr attacks in one more. Through `exec` one command tries the whole
/// cgroup table and one more the xattrs: each command is a start of
/// `procscope` itself, half a second under TCG, which the VMs would pay 28
/// times per run. While every attempt fails the attacker stays where it
/// started, so each is made from the same place as from a child of its own;
/// one that works reads `ok` (the attempts after a kill of itself `killed`,
/// a freeze of itself is found and thawed) and fails the test as surely.
async fn assert_all_refused(via: Via<'_>, t: &Targets, sealing: Sealing) -> usize {
    let table = attacks(t);
    let freezable = [t.root.as_path(), t.own.as_path()];
    let batches: Vec<Vec<&Attack>> = match via {
        Via::Library(_) => table.iter().map(|a| vec![a]).collect(),
        Via::Exec { .. } => vec![table.iter().collect()],
    };
    for batch in &batches {
        let out = run_attacks(via, batch, sealing, &freezable).await;
        for (attack, result) in batch.iter().zip(&out.results) {
            assert!(result.starts_with('E'), "sealed, the attack '{}' ({:?}) got {result}", attack.name, attack.args);
        }
        let names: Vec<&str> = batch.iter().map(|a| a.name.as_str()).collect();
        assert!(out.thawed.is_empty(), "sealed, {names:?} froze {:?}", out.thawed);
    }
    let xattrs = xattr_attacks(t);
    let batch: Vec<&Attack> = xattrs.iter().collect();
    let out = run_attacks(via, &batch, sealing, &[]).await;
    for (attack, result) in xattrs.iter().zip(&out.results) {
        assert!(result.starts_with('E'), "sealed, '{}' got {result}", attack.name);
    }
    table.len() + xattrs.len()
}

/// Runs the whole table through `via`, unsealed: every attack must work, and
/// each is undone before the next (so that, through `exec`, the next command
/// can still be placed). Returns the number of attacks that worked.
async fn assert_all_work(via: Via<'_>, t: &Targets) -> usize {
    let mut worked = 0;
    // First, as the last cgroup attack kills the attacker's session: each
    // user.* key is set, then removed again, by the same child.
    let xattrs = xattr_attacks(t);
    let batch: Vec<&Attack> = xattrs.iter().collect();
    let out = run_attacks(via, &batch, Sealing::Off, &[]).await;
    for (attack, result) in xattrs.iter().zip(&out.results) {
        assert_eq!(result, &attack.unsealed, "unsealed, '{}'", attack.name);
        worked += usize::from(result == "ok");
    }
    let table = attacks(t);
    let freezable = [t.root.as_path(), t.own.as_path()];
    for attack in &table {
        let out = run_attacks(via, &[attack], Sealing::Off, &freezable).await;
        let result = &out.results[0];
        assert_eq!(result, &attack.unsealed, "unsealed, the attack '{}' ({:?})", attack.name, attack.args);
        if result.starts_with('E') {
            // Refused by the kernel to anyone (see `procs_write_unsealed`).
            continue;
        }
        match &attack.effect {
            Effect::Unchecked | Effect::Victim | Effect::KilledItself => {}
            Effect::Writes { file, value, undo } => {
                let now = std::fs::read_to_string(file).unwrap();
                if let Some(value) = value {
                    assert_eq!(now.trim(), value, "unsealed, '{}' changed {}", attack.name, file.display());
                }
                std::fs::write(file, undo).unwrap();
            }
            Effect::Made(dir) => {
                assert!(dir.is_dir(), "unsealed, '{}' made {}", attack.name, dir.display());
                std::fs::remove_dir(dir).unwrap();
            }
            Effect::Moved { pid, to } => {
                let rel = Path::new("/").join(to.strip_prefix(&t.mount).unwrap());
                assert_eq!(cgroup_of(*pid), Some(s(&rel)), "unsealed, '{}' moved {pid}", attack.name);
            }
            Effect::FrozeItself(dir) => {
                assert_eq!(
                    out.thawed,
                    std::slice::from_ref(dir),
                    "unsealed, '{}' froze {}",
                    attack.name,
                    dir.display()
                );
            }
        }
        worked += 1;
    }
    worked
}

/// After the control: the kills and the freeze of other sessions took.
/// `cgroup.kill` killed both kill victims, and the pulled process died with
/// the attacker's own session; before Linux 5.14 they are frozen instead,
/// and the sessions' close ends them.
async fn assert_victims_hit(s: &mut Scene) {
    if kill_file(&s.targets) == "cgroup.kill" {
        for i in [0, 1, 3] {
            let status = s.victims[i].wait().await.unwrap();
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "victim {i}");
        }
    } else {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for session in [&s.other, &s.foreign] {
            assert!(session.cgroup().unwrap().wait_events(Some(deadline), |e| e.frozen).await.unwrap(), "not frozen");
        }
    }
    // The one moved to the mount's root lives on there, out of its session.
    assert!(s.victims[2].pidfd().is_alive());
}

/// Sealed: every attack fails, nothing in the tree changes, every session is
/// still listed as it was and ends completely.
#[tokio::test]
async fn a_sealed_uid0_child_cannot_escape_tamper_or_forge() {
    let env = TestEnv::new();
    within(120, async {
        let s = scene(&env).await;
        let (before, host_before) = (snapshot(&env.path()), snapshot(&s.targets.host));
        let n = assert_all_refused(Via::Library(&s.attacker), &s.targets, Sealing::Auto).await;
        eprintln!("sealed (library): {n} attacks refused");
        s.assert_untouched(&before, &host_before, 0);
        assert!(!s.targets.host.join("evil").exists());
        s.end().await;
    })
    .await;
    env.finish().await;
}

/// The control: sealing off, the same children escape, move others, create
/// cgroups, write limits inside and outside procscope, freeze and kill, and
/// forge `user.*` xattrs. Only `trusted.*`, where procscope keeps its state on
/// a root-owned tree, stays out of reach (EPERM: it needs CAP_SYS_ADMIN).
#[tokio::test]
async fn control_unsealed_the_attacks_work() {
    let env = TestEnv::new();
    within(120, async {
        let mut s = scene(&env).await;
        let n = assert_all_work(Via::Library(&s.attacker), &s.targets).await;
        eprintln!("control (library): {n} attacks worked");
        assert_victims_hit(&mut s).await;
        s.end().await;
    })
    .await;
    env.finish().await;
}

/// Verified endings: a tracked child that left its cgroup (possible only
/// unsealed) and ignores SIGTERM is still ended by `close()`, through its
/// pidfd, and counted as killed — never reported as a success while alive.
#[tokio::test]
async fn close_kills_a_tracked_child_that_left_its_cgroup() {
    let env = TestEnv::new();
    within(30, async {
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let session = sup.session("leaver").unwrap();
        let mount = Hierarchy::discover().unwrap().mount_point;
        let procs = mount.join("cgroup.procs").to_string_lossy().into_owned();
        let mut cmd = Command::new(FIXTURE);
        cmd.args(["ignore-term", "try-write", &procs, "0", "ready", "sleep", "3600"])
            .stdin(Stdio::Null)
            .stdout(Stdio::Piped)
            .sealing(Sealing::Off);
        let mut child = session.spawn(&mut cmd).unwrap();
        let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
        assert!(lines.iter().any(|l| l.ends_with("cgroup.procs=ok")), "{lines:?}");
        assert_eq!(cgroup_of(child.id()).as_deref(), Some("/"), "the child left its session");
        let t = session.close().await.unwrap();
        assert_eq!(t.killed, 1, "{t:?}");
        assert_eq!(t.terminated, 0, "{t:?}");
        assert!(!child.pidfd().is_alive(), "close() returned while the child lived");
        let status = child.wait().await.unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Sealed children join one prepared mount namespace (not the gateway's), each
/// with a cgroup namespace of its own, in the gateway's working directory. A
/// cgroup hierarchy mounted while the gateway runs is read-only for children
/// sealed after it; the control, unsealed, creates a cgroup there.
#[tokio::test]
async fn a_hierarchy_mounted_later_is_sealed_for_later_children() {
    let env = TestEnv::new();
    let late = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("late-cgroup2-{}", nanos()));
    std::fs::create_dir_all(&late).unwrap();
    within(60, async {
        let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
        let session = sup.session("s").unwrap();
        let describe = |args: &[&str], sealing: Sealing| {
            let mut cmd = Command::new(FIXTURE);
            cmd.arg("self").args(args).stdin(Stdio::Null).stdout(Stdio::Piped).sealing(sealing);
            session.spawn(&mut cmd).unwrap()
        };
        let link = |p: &str| std::fs::read_link(p).unwrap().display().to_string();
        let (own_mnt, own_cgroupns) = (link("/proc/self/ns/mnt"), link("/proc/self/ns/cgroup"));
        let cwd = std::env::current_dir().unwrap().display().to_string();

        // Both alive at once, so that no namespace number is reused between them.
        let mut seen = Vec::new();
        let mut sleepers = [
            describe(&["ready", "sleep", "3600"], Sealing::Auto),
            describe(&["ready", "sleep", "3600"], Sealing::Auto),
        ];
        for child in &mut sleepers {
            let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
            assert_eq!(field(&lines, "cwd"), cwd, "a sealed child starts in the gateway's directory");
            seen.push((field(&lines, "mntns").to_owned(), field(&lines, "cgroupns").to_owned()));
        }
        assert_eq!(seen[0].0, seen[1].0, "sealed children share the prepared mount namespace");
        assert_ne!(seen[0].0, own_mnt, "… which is not the gateway's");
        assert_ne!(seen[0].1, seen[1].1, "each has a cgroup namespace of its own");
        assert!(seen.iter().all(|s| s.1 != own_cgroupns));
        for child in &mut sleepers {
            child.kill().await.unwrap();
        }

        let mounted = std::process::Command::new("mount").args(["-t", "cgroup2", "none"]).arg(&late).status().unwrap();
        assert!(mounted.success(), "mount -t cgroup2 at {}", late.display());
        // The same hierarchy seen through the late mount: the test root's
        // limit, written with the value it has ("max").
        let rel = env.path().strip_prefix(Hierarchy::discover().unwrap().mount_point).unwrap().to_owned();
        let limit = late.join(rel).join("cgroup.max.descendants").to_string_lossy().into_owned();
        let try_write = |sealing| {
            let mut child = describe(&["try-write", &limit, "max"], sealing);
            async move {
                let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
                child.wait().await.unwrap();
                (field(&lines, "mntns").to_owned(), lines.last().cloned().unwrap_or_default())
            }
        };
        let (mnt, result) = try_write(Sealing::Auto).await;
        let outcome = result.rsplit_once('=').map(|(_, r)| r.to_owned());
        assert_ne!(mnt, seen[0].0, "the mount table changed: a new prepared namespace");
        // Unmount before asserting, so that a failure does not leave the mount.
        let control = try_write(Sealing::Off).await.1;
        let unmounted = std::process::Command::new("umount").arg(&late).status().unwrap();
        assert!(unmounted.success());
        assert_eq!(outcome.as_deref(), Some("E30"), "sealed, a write through the late mount: {result}");
        assert!(control.ends_with("=ok"), "unsealed, the write through the late mount works: {control}");

        session.close().await.unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    let _ = std::fs::remove_dir(&late);
    env.finish().await;
}

/// The sessions under `root` as `procscope ps --json` lists them: id →
/// (state, processes).
fn ps_listed(root: &Path) -> BTreeMap<String, (String, usize)> {
    let out = std::process::Command::new(PROCSCOPE).args(["ps", "--json", "--root"]).arg(root).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let instances = v["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{v}");
    instances
        .iter()
        .flat_map(|i| i["sessions"].as_array().unwrap().iter())
        .map(|s| {
            let id = s["id"].as_str().unwrap().to_owned();
            (id, (s["state"].as_str().unwrap().to_owned(), s["processes"].as_u64().unwrap() as usize))
        })
        .collect()
}

/// Waits until the guardian has removed every command cgroup (`p-…`) that
/// `procscope exec` placed in `session`.
async fn wait_commands_gone(session: &Cgroup) {
    for _ in 0..500 {
        if session.children().unwrap().iter().all(|c| !c.starts_with("p-")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} still has {:?}", session.path().display(), session.children());
}

/// Through `procscope exec`, the whole table: each attack a command that
/// `exec` places in the attacker's session (the gateway's instance: the test
/// process owns both), sealed by default, again with `--seal`, and the
/// control with `--no-seal`. After the sealed runs every session is still
/// listed as it was (`procscope ps --json`); after all of them every session
/// ends completely.
#[tokio::test]
async fn exec_seals_by_default_and_no_seal_is_the_control() {
    let env = TestEnv::new();
    within(300, async {
        let mut s = scene(&env).await;
        let root = env.path();
        let via = Via::Exec { root: &root, session: "attacker" };
        assert_eq!(
            s.targets.instance.file_name().unwrap(),
            procscope::Owner::this_process().unwrap().instance_name().as_str()
        );
        // A first command starts the instance's guardian, which records itself.
        run_attacks(via, &[], Sealing::Auto, &[]).await;
        wait_commands_gone(s.attacker.cgroup().unwrap()).await;
        let (before, host_before) = (snapshot(&root), snapshot(&s.targets.host));
        let expected_ps = s.listed();
        for sealing in [Sealing::Auto, Sealing::Required] {
            let n = assert_all_refused(via, &s.targets, sealing).await;
            eprintln!("sealed (exec, {}): {n} attacks refused", sealing.as_str());
            wait_commands_gone(s.attacker.cgroup().unwrap()).await;
            s.assert_untouched(&before, &host_before, 0);
            assert_eq!(ps_listed(&root), expected_ps);
        }

        let n = assert_all_work(via, &s.targets).await;
        eprintln!("control (exec): {n} attacks worked");
        assert_victims_hit(&mut s).await;
        wait_commands_gone(s.attacker.cgroup().unwrap()).await;
        s.end().await;
    })
    .await;
    env.finish().await;
}

fn guardian_attack(name: &str, args: Vec<String>) -> Attack {
    Attack { name: name.into(), args, effect: Effect::Victim, unsealed: "ok".into() }
}

/// A guardian children cannot stop. A sealed uid-0 child can neither kill, stop
/// nor read the memory of the gateway's guardian; the same child kills a uid-0
/// process that lacks the guardian's identity (the control). After the
/// attempts the gateway is SIGKILLed, and the guardian still ends its sessions.
#[tokio::test]
async fn a_uid0_child_cannot_stop_the_guardian() {
    let env = TestEnv::new();
    within(60, async {
        let (mut gateway, lines) = Gateway::start(FIXTURE, &env.path(), 1, true);
        let guardian: i32 = field(&lines, "guardian").parse().unwrap();
        let guardian_fd = procscope::PidFd::open(guardian as u32).unwrap();
        let instance = Cgroup::open(field(&lines, "instance")).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{guardian}/status")).unwrap();
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        let uids: Vec<&str> = uids.split_whitespace().collect();
        assert_eq!(uids, ["2147483646", "0", "2147483646", "0"], "real, effective, saved, fs uid");

        let mut control = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let sup = Supervisor::builder().root(env.path()).recover(false).start().await.unwrap();
        let attacker = sup.session("attacker").unwrap();
        let g = guardian.to_string();
        let tries: Vec<Attack> = vec![
            guardian_attack("kill the guardian", vec!["try-kill".into(), g.clone(), "KILL".into()]),
            guardian_attack("stop the guardian", vec!["try-kill".into(), g.clone(), "STOP".into()]),
            guardian_attack("read the guardian's memory", vec!["try-read".into(), format!("/proc/{g}/environ")]),
        ];
        for attack in &tries {
            let result = run_attack(&attacker, attack, Sealing::Auto).await;
            assert!(result.starts_with('E'), "'{}' got {result}", attack.name);
        }
        let control_kill =
            guardian_attack("kill a uid-0 process", vec!["try-kill".into(), control.id().to_string(), "KILL".into()]);
        assert_eq!(run_attack(&attacker, &control_kill, Sealing::Auto).await, "ok", "the control kill works");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&control.wait().unwrap()), Some(libc::SIGKILL));
        assert!(guardian_fd.is_alive(), "the guardian survived the attempts");
        let state = std::fs::read_to_string(format!("/proc/{guardian}/stat")).unwrap();
        assert!(!state.contains(") T "), "the guardian is not stopped: {state}");

        // The guardian still does its job.
        gateway.kill().unwrap();
        gateway.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(5), guardian_fd.exited()).await.expect("guardian exits").unwrap();
        assert!(!instance.path().exists(), "the guardian removed the gateway's instance");
        attacker.close().await.unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Whether the process behind `fd` is still running a moment after a signal
/// may have been sent to it (a fatal one ends it within microseconds).
async fn survives(fd: &procscope::PidFd) -> bool {
    tokio::time::timeout(Duration::from_millis(200), fd.exited()).await.is_err()
}

/// A guardian children cannot stop through SIGIO either. `fcntl(F_SETOWN)`
/// lets any process whose effective uid is 0 have the kernel signal any
/// process when an fd becomes ready (fs/fcntl.c `sigio_perm`), and
/// `F_SETSIG` picks the signal. A sealed uid-0 child, spawned by the library
/// or by `procscope exec`, is refused `F_SETSIG` SIGKILL and SIGSTOP (EPERM),
/// whether it names the guardian or its process group; what it may still
/// send (SIGIO, SIGURG, SIGHUP, a real-time signal) the guardian blocks. The
/// control: an unsealed uid-0 child kills a plain uid-0 process with SIGKILL
/// and with SIGIO this way, and a sealed one SIGIOs it. After the attempts
/// the gateway is SIGKILLed, and the guardian still ends its instance.
#[tokio::test]
async fn a_uid0_child_cannot_signal_the_guardian_through_sigio() {
    let env = TestEnv::new();
    // The control's attacker comes from a thread made before this test spawns
    // a sealed child: a thread that has carries the sealing's filter, and so
    // does everything it starts afterwards, threads included (see
    // `Sealing::Off`).
    let (ask, asked) = std::sync::mpsc::channel::<(String, i32)>();
    let (tell, told) = std::sync::mpsc::channel::<String>();
    let unfiltered = std::thread::spawn(move || {
        for (target, sig) in asked {
            let out =
                std::process::Command::new(FIXTURE).args(["try-sigio", &target, &sig.to_string()]).output().unwrap();
            tell.send(String::from_utf8_lossy(&out.stdout).into_owned()).unwrap();
        }
    });
    within(60, async {
        let (mut gateway, lines) = Gateway::start(FIXTURE, &env.path(), 1, true);
        let guardian: i32 = field(&lines, "guardian").parse().unwrap();
        let guardian_fd = procscope::PidFd::open(guardian as u32).unwrap();
        let instance = Cgroup::open(field(&lines, "instance")).unwrap();
        let sup = Supervisor::builder().root(env.path()).recover(false).start().await.unwrap();
        let attacker = sup.session("attacker").unwrap();
        let sigio = |target: String, sig: i32| {
            guardian_attack("signal through SIGIO", vec!["try-sigio".into(), target, sig.to_string()])
        };
        let (g, group) = (guardian.to_string(), format!("-{guardian}"));
        let tries = [
            (g.clone(), libc::SIGKILL, "E1"),
            (g.clone(), libc::SIGSTOP, "E1"),
            (group.clone(), libc::SIGKILL, "E1"),
            (group, libc::SIGSTOP, "E1"),
            (g.clone(), 0, "ok"),
            (g.clone(), libc::SIGURG, "ok"),
            (g.clone(), libc::SIGHUP, "ok"),
            (g.clone(), libc::SIGTERM, "ok"),
            (g.clone(), libc::SIGTSTP, "ok"),
            // glibc's internal SIGCANCEL and SIGSETXID, which its own
            // sigprocmask never blocks.
            (g.clone(), 32, "ok"),
            (g.clone(), 33, "ok"),
            (g.clone(), libc::SIGRTMIN(), "ok"),
        ];
        for (target, sig, expected) in tries {
            let result = run_attack(&attacker, &sigio(target.clone(), sig), Sealing::Auto).await;
            assert!(survives(&guardian_fd).await, "the guardian survived signal {sig} through SIGIO ({result})");
            assert_eq!(result, expected, "sealed: SIGIO to {target} as signal {sig}");
            let state = std::fs::read_to_string(format!("/proc/{guardian}/stat")).unwrap();
            assert!(!state.contains(") T "), "the guardian is not stopped after signal {sig}: {state}");
        }
        // The same through `procscope exec`, which seals itself.
        let root = env.path().to_string_lossy().into_owned();
        for sig in ["9", "19"] {
            let out = std::process::Command::new(PROCSCOPE)
                .args(["exec", "--root", &root, "--session", "x", "--", FIXTURE, "try-sigio", &g, sig])
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.contains(&format!("try-sigio {g} {sig}=E1")), "sealed exec: {out}");
            assert!(survives(&guardian_fd).await, "the guardian survived the sealed exec's signal {sig}");
        }
        // The guardian of the exec's instance removes its session.
        wait_gone(&sup.instance().unwrap().path().join("s-x")).await;

        // The control: the attack is real. A uid-0 process started from a
        // thread that never spawned a sealed child (such a thread carries the
        // filter, and so does all it starts: see `Sealing::Off`) ends a plain
        // uid-0 process with SIGKILL or SIGIO through SIGIO; sealed, SIGIO
        // still does.
        for (sig, dies_of) in [(libc::SIGKILL, libc::SIGKILL), (0, libc::SIGIO)] {
            let mut plain = std::process::Command::new("sleep").arg("60").spawn().unwrap();
            ask.send((plain.id().to_string(), sig)).unwrap();
            let out = told.recv().unwrap();
            assert!(out.contains("=ok"), "unsealed: signal {sig} through SIGIO to a plain uid-0 process: {out}");
            let status = plain.wait().unwrap();
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(dies_of), "unsealed, {sig}");
        }
        let mut plain = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let result = run_attack(&attacker, &sigio(plain.id().to_string(), 0), Sealing::Auto).await;
        assert_eq!(result, "ok", "sealed: plain SIGIO through SIGIO to a plain uid-0 process");
        let status = plain.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGIO), "sealed, SIGIO");
        let mut plain = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let result = run_attack(&attacker, &sigio(plain.id().to_string(), libc::SIGKILL), Sealing::Auto).await;
        assert_eq!(result, "E1", "sealed: F_SETSIG SIGKILL is refused whoever the target");
        plain.kill().unwrap();
        plain.wait().unwrap();

        // The guardian still does its job.
        assert!(guardian_fd.is_alive(), "the guardian survived the attempts");
        gateway.kill().unwrap();
        gateway.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(5), guardian_fd.exited()).await.expect("guardian exits").unwrap();
        assert!(!instance.path().exists(), "the guardian removed the gateway's instance");
        attacker.close().await.unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    drop(ask);
    unfiltered.join().unwrap();
    env.finish().await;
}

/// Fail closed: a sealed child that cannot install its signal filter (here
/// `seccomp(2)` is denied to the spawning thread and what it starts) is not
/// started; the spawn fails with the step that failed. The control: unsealed,
/// the same thread starts the same command.
#[tokio::test]
async fn a_child_that_cannot_install_its_signal_filter_is_not_started() {
    let env = TestEnv::new();
    let cg = env.cgroup("filterless");
    let spawn = |sealing: Sealing| {
        let mut cmd = Command::new(FIXTURE);
        cmd.args(["exit", "0"]).stdin(Stdio::Null).stdout(Stdio::Null).stderr(Stdio::Null).sealing(sealing);
        cmd.spawn_in(&cg)
    };
    let (sealed, unsealed) = std::thread::scope(|s| {
        s.spawn(|| {
            procscope::testing::deny_seccomp().expect("install the seccomp filter");
            (spawn(Sealing::Auto), spawn(Sealing::Off))
        })
        .join()
        .unwrap()
    });
    match sealed {
        Err(procscope::Error::Spawn { stage: procscope::ChildStage::SealSignalFilter, source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSYS))
        }
        other => panic!("a sealed child without its filter must not start: {other:?}"),
    }
    let mut child = unsealed.expect("the control starts unsealed");
    assert!(within(10, child.wait()).await.unwrap().success());
    drop(child);
    wait_no_children(&cg).await;
    env.root.remove_child(cg.name()).unwrap();
    drop(cg);
    env.finish().await;
}

/// `procscope doctor` reports the protections in force here: sealing on (this
/// test runs as root), the cgroup mounts a sealed child sees read-only, and
/// the state kept in `trusted.*`.
#[tokio::test]
async fn doctor_reports_the_protections_in_force() {
    let env = TestEnv::new();
    let out =
        std::process::Command::new(PROCSCOPE).args(["doctor", "--json", "--root"]).arg(env.path()).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sealing = &v["sealing"];
    assert_eq!(sealing["sealed_by_default"], true, "{v}");
    let mount = Hierarchy::discover().unwrap().mount_point;
    let ro: Vec<&str> = sealing["read_only_mounts"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(ro.contains(&mount.to_str().unwrap()), "{ro:?}");
    assert_eq!(sealing["state_xattrs"], "trusted.procscope.*", "{v}");
    assert_eq!(sealing["guardian_uid"], 2147483646u32, "{v}");
    assert_eq!(sealing["guardian_identity"], "own", "{v}");
    let transient = &v["transient_users"];
    assert_eq!(transient["first_uid"], procscope::identity::TRANSIENT_UIDS.start, "{v}");
    assert_eq!(transient["last_uid"], procscope::identity::TRANSIENT_UIDS.end - 1, "{v}");
    assert_eq!(transient["lock_dir"], procscope::identity::LOCK_DIR, "{v}");
    env.finish().await;
}

/// Transient users keep sessions apart, pairwise: a child of either session can
/// neither signal the other's server, nor read its environment, nor pass the
/// ptrace access check on it (opening `/proc/PID/mem`), nor read
/// `/etc/shadow` or a root-only file, nor write a root-owned file. Inside one
/// session the children share their user. The control is the same pair of
/// sessions as uid 0, where every attempt works. Each user is released (its
/// lock file removed) when its session ends.
#[tokio::test]
async fn transient_users_keep_sessions_apart_pairwise() {
    let env = TestEnv::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("transient-{}", nanos()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (secret, owned) = (dir.join("secret"), dir.join("root-owned"));
    std::fs::write(&secret, "secret").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(&owned, "root's").unwrap();
    std::fs::set_permissions(&owned, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    within(60, async {
        let sup = Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let run = |session: &Session, transient: bool, args: Vec<String>| {
            let mut cmd = Command::new(FIXTURE);
            cmd.arg("self").args(args).stdin(Stdio::Null).stdout(Stdio::Piped).transient_user(transient);
            session.spawn(&mut cmd).unwrap()
        };
        let attacks = |victim: u32| {
            vec![
                "try-open".into(),
                format!("/proc/{victim}/mem"),
                "try-read".into(),
                format!("/proc/{victim}/environ"),
                "try-read".into(),
                "/etc/shadow".into(),
                "try-read".into(),
                secret.to_string_lossy().into_owned(),
                "try-write".into(),
                owned.to_string_lossy().into_owned(),
                "root's".into(),
                "try-kill".into(),
                victim.to_string(),
                "KILL".into(),
            ]
        };

        for transient in [true, false] {
            let (a, b) = (sup.session("a").unwrap(), sup.session("b").unwrap());
            let mut victims = Vec::new();
            let mut uids = Vec::new();
            for s in [&a, &b] {
                let mut v = run(s, transient, vec!["ready".into(), "sleep".into(), "3600".into()]);
                let lines = read_until(v.stdout.as_mut().unwrap(), "ready").await;
                let uid = real_id(&lines, "uid");
                assert_eq!(v.transient_uid(), transient.then_some(uid));
                uids.push(uid);
                victims.push(v);
            }
            if transient {
                assert_ne!(uids[0], uids[1], "two sessions, two users");
                for uid in &uids {
                    assert!(procscope::identity::TRANSIENT_UIDS.contains(uid), "{uid}");
                    assert!(Path::new(procscope::identity::LOCK_DIR).join(uid.to_string()).exists());
                }
                // Inside a session, children share the user.
                let mut same = run(&a, true, vec![]);
                let lines = read_until(same.stdout.as_mut().unwrap(), "").await;
                same.wait().await.unwrap();
                assert_eq!(real_id(&lines, "uid"), uids[0], "{lines:?}");
                assert!(field(&lines, "groups").is_empty(), "no supplementary groups: {lines:?}");
            } else {
                assert_eq!(uids, [0, 0]);
            }
            // Each attacks the other's victim.
            for (attacker, victim) in [(&a, victims[1].id()), (&b, victims[0].id())] {
                let mut child = run(attacker, transient, attacks(victim));
                let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
                child.wait().await.unwrap();
                let got = results(&lines);
                let expected: Vec<&str> =
                    if transient { vec!["E13", "E13", "E13", "E13", "E13", "E1"] } else { vec!["ok"; 6] };
                assert_eq!(got, expected, "transient={transient}: {lines:?}");
            }
            for v in &mut victims {
                if transient {
                    assert!(v.pidfd().is_alive(), "a victim of a transient attacker died");
                } else {
                    let status = v.wait().await.unwrap();
                    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
                }
            }
            for s in [a, b] {
                s.close().await.unwrap();
            }
            for v in &mut victims {
                v.wait().await.unwrap();
            }
            let held: Vec<u32> = victims.iter().filter_map(|v| v.transient_uid()).collect();
            drop(victims);
            for uid in held {
                assert!(
                    !Path::new(procscope::identity::LOCK_DIR).join(uid.to_string()).exists(),
                    "user {uid} released when its session ended"
                );
            }
        }
        sup.shutdown().await.unwrap();
    })
    .await;
    assert_eq!(std::fs::read_to_string(&owned).unwrap(), "root's");
    std::fs::remove_dir_all(&dir).unwrap();
    env.finish().await;
}

/// The results of the fixture's `try-…` lines, in order (`ok` or `E<errno>`).
fn results(lines: &[String]) -> Vec<String> {
    lines.iter().filter(|l| l.starts_with("try-")).map(|l| l.rsplit_once('=').unwrap().1.to_owned()).collect()
}

/// The real id of the fixture's `uid=` or `gid=` line (real, effective, saved, fs).
fn real_id(lines: &[String], key: &str) -> u32 {
    field(lines, key).split_whitespace().next().unwrap().parse().unwrap()
}

/// `exec --transient-user` runs the command as a user of the range and releases
/// it when the command ends; with `--uid` it is refused before anything starts.
#[tokio::test]
async fn exec_runs_as_a_transient_user_and_releases_it() {
    let env = TestEnv::new();
    let root = env.path().to_string_lossy().into_owned();
    let out = std::process::Command::new(PROCSCOPE)
        .args(["exec", "--root", &root, "--transient-user", "--", FIXTURE, "self"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let uid = real_id(&lines, "uid");
    assert!(procscope::identity::TRANSIENT_UIDS.contains(&uid), "{uid}");
    assert_eq!(real_id(&lines, "gid"), uid);
    assert!(!Path::new(procscope::identity::LOCK_DIR).join(uid.to_string()).exists(), "released");
    env.wait_root_empty().await;

    let before = snapshot(&env.path());
    let out = std::process::Command::new(PROCSCOPE)
        .args(["exec", "--root", &root, "--transient-user", "--uid", "1", "--gid", "1", "--", FIXTURE, "self"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--transient-user"));
    assert_eq!(snapshot(&env.path()), before);

    // The library refuses the same, with nothing started.
    let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
    let session = sup.session("s").unwrap();
    let err = session.spawn(Command::new(FIXTURE).transient_user(true).uid(1).gid(1)).unwrap_err();
    assert!(matches!(err, procscope::Error::InvalidInput { what: "identity", .. }), "{err}");
    assert!(!session.cgroup().unwrap().is_populated().unwrap());
    session.close().await.unwrap();
    sup.shutdown().await.unwrap();
    env.finish().await;
}

const NOBODY: u32 = 65534;

/// A subtree delegated to uid 65534 as systemd's `Delegate=yes` does it (the
/// directories and their `cgroup.procs`, `cgroup.threads` and
/// `cgroup.subtree_control` change owner): `gateway/` for the gateway's
/// process, `sessions/` for its procscope root.
struct Delegated {
    top: Cgroup,
    gateway: Cgroup,
    sessions: Cgroup,
}

fn delegated(env: &TestEnv) -> Delegated {
    let top = env.cgroup("delegated");
    let gateway = top.create_child("gateway").unwrap();
    let sessions = top.create_child("sessions").unwrap();
    for dir in [top.path(), gateway.path(), sessions.path()] {
        for name in ["", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
            std::os::unix::fs::chown(dir.join(name), Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    Delegated { top, gateway, sessions }
}

impl Delegated {
    /// Asserts the gateway left nothing in its root, and removes the subtree.
    fn remove(self, env: &TestEnv) {
        assert_eq!(self.sessions.children().unwrap(), Vec::<String>::new(), "exec removed what it made");
        // The gateway's cgroup held the guardian, which exits once its
        // instance is gone.
        let gone = self.gateway.wait_events_blocking(Some(Duration::from_secs(5)), |e| !e.populated).unwrap();
        assert!(gone, "the guardian did not exit with its instance");
        for name in ["sessions", "gateway"] {
            self.top.remove_child(name).unwrap();
        }
        env.root.remove_child("delegated").unwrap();
    }
}

/// A non-root gateway in a delegated subtree (no `CAP_SYS_ADMIN`) seals its
/// children too, through a user namespace of each child's own that maps its
/// uid onto itself. The sealed child, running as the gateway's user, cannot
/// move into the delegated top or the gateway's cgroup, create a cgroup or set
/// an xattr there, though its user owns them all; the control (`--no-seal`)
/// does each.
#[tokio::test]
async fn a_non_root_gateway_seals_through_a_user_namespace() {
    let env = TestEnv::new();
    within(60, async {
        let Delegated { top, gateway, sessions } = delegated(&env);
        let p = |cg: &Cgroup, name: &str| cg.path().join(name).to_string_lossy().into_owned();
        let attacks = [
            ("try-write", p(&top, "cgroup.procs"), Some("0")),
            ("try-write", p(&gateway, "cgroup.procs"), Some("0")),
            ("try-mkdir", p(&top, "evil"), None),
            ("try-setxattr", p(&top, ""), Some("user.procscope.kind")),
        ];
        let run = |extra: &'static [&'static str]| {
            let mut cmd = Command::new(PROCSCOPE);
            cmd.args(["exec", "--root"]).arg(sessions.path()).args(["--session", "s"]).args(extra);
            cmd.args(["--", FIXTURE, "self"]);
            for (action, path, value) in &attacks {
                cmd.arg(action).arg(path.trim_end_matches('/'));
                if let Some(v) = value {
                    cmd.arg(v);
                }
                if *action == "try-setxattr" {
                    cmd.arg("forged");
                }
            }
            // The gateway itself: uid 65534 in its delegated cgroup, unsealed.
            cmd.uid(NOBODY).gid(NOBODY).sealing(Sealing::Off).stdin(Stdio::Null).stdout(Stdio::Piped);
            let mut child = cmd.spawn_in(&gateway).unwrap();
            async move {
                let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
                let status = child.wait().await.unwrap();
                assert!(status.success(), "exec as uid {NOBODY}: {status:?} {lines:?}");
                lines
            }
        };

        let sealed = run(&[]).await;
        assert_eq!(field(&sealed, "cgroup"), "/", "sealed: its cgroup namespace is rooted at its session");
        assert_eq!(real_id(&sealed, "uid"), NOBODY, "its uid maps onto itself");
        assert_eq!(results(&sealed), ["E30"; 4], "sealed: every attempt meets a read-only mount: {sealed:?}");
        assert!(top.children().unwrap().iter().all(|c| c != "evil"));

        wait_no_children(&sessions).await;
        let control = run(&["--no-seal"]).await;
        assert_ne!(field(&control, "cgroup"), "/");
        assert_eq!(results(&control), ["ok"; 4], "unsealed, the gateway's user does each: {control:?}");
        // The control left the evil cgroup and an xattr; the exec's own
        // session moved out with it and ended. Undo what it made.
        top.remove_child("evil").unwrap();
        wait_no_children(&sessions).await;
        Delegated { top, gateway, sessions }.remove(&env);
    })
    .await;
    env.finish().await;
}

/// Where a gateway can seal neither way (no `CAP_SYS_ADMIN`, and user
/// namespaces capped at 0 in the namespace it runs in), `exec --seal` is
/// refused with exit 125 and a message that names what is missing, and
/// nothing is created; `doctor` says sealing is off and why; the default
/// (`Auto`) runs the command unsealed.
#[tokio::test]
async fn a_gateway_that_cannot_seal_is_refused_when_sealing_is_required() {
    let env = TestEnv::new();
    within(60, async {
        let d = delegated(&env);
        // The gateway runs as uid 65534 (uid 0 of a user namespace of its own,
        // which caps user namespaces at 0 and holds no capability) in its
        // delegated cgroup.
        let run = |args: Vec<String>| {
            let script = "echo 0 > /proc/sys/user/max_user_namespaces && \
                          exec setpriv --bounding-set=-all --inh-caps=-all \"$@\"";
            let mut cmd = Command::new("unshare");
            cmd.args(["--user", "--map-root-user", "sh", "-c", script, "sh", PROCSCOPE]).args(args);
            cmd.uid(NOBODY).gid(NOBODY).sealing(Sealing::Off).stdin(Stdio::Null).stdout(Stdio::Piped);
            cmd.stderr(Stdio::Piped);
            let mut child = cmd.spawn_in(&d.gateway).unwrap();
            async move {
                let mut err = String::new();
                tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut err).await.unwrap();
                let out = read_until(child.stdout.as_mut().unwrap(), "").await;
                (child.wait().await.unwrap().code(), out, err)
            }
        };
        let root = d.sessions.path().to_string_lossy().into_owned();
        let exec = |extra: &[&str]| {
            let mut a: Vec<String> = ["exec", "--root", &root, "--session", "s"].map(String::from).to_vec();
            a.extend(extra.iter().map(|s| s.to_string()));
            a.extend(["--", FIXTURE, "self"].map(String::from));
            a
        };

        let (code, out, err) = run(vec!["doctor".into(), "--json".into()]).await;
        assert!(matches!(code, Some(0 | 1)), "doctor: {code:?} {err}");
        let v: serde_json::Value = serde_json::from_str(&out.join("\n")).unwrap();
        assert_eq!(v["sealing"]["sealed_by_default"], false, "{v}");
        // Not root: its guardian would keep the gateway's uid (0 of this user
        // namespace), and doctor says so.
        assert_eq!(v["sealing"]["guardian_identity"], "gateway", "{v}");
        assert_eq!(v["sealing"]["guardian_uid"], 0, "{v}");
        let problems = v["problems"].to_string();
        assert!(problems.contains("unsealed") && problems.contains("max_user_namespaces"), "{problems}");

        let before = snapshot(&env.path());
        let (code, out, err) = run(exec(&["--seal"])).await;
        assert_eq!(code, Some(125), "{out:?} {err}");
        assert!(out.is_empty(), "nothing ran: {out:?}");
        for needle in ["cannot seal", "CAP_SYS_ADMIN", "max_user_namespaces", "--no-seal"] {
            assert!(err.contains(needle), "the message lacks {needle:?}: {err}");
        }
        assert_eq!(snapshot(&env.path()), before, "a refused exec changed the tree");

        let (code, out, err) = run(exec(&[])).await;
        assert_eq!(code, Some(0), "{err}");
        assert_ne!(field(&out, "cgroup"), "/", "Auto, unable to seal: unsealed");
        wait_no_children(&d.sessions).await;
        d.remove(&env);
    })
    .await;
    env.finish().await;
}

/// Fail closed, through the library: where a non-root gateway cannot seal
/// (no `CAP_SYS_ADMIN`, user namespaces capped at 0), a spawn with
/// `Sealing::Required` fails with `Error::SealingUnavailable`, naming what is
/// missing, and nothing is started or created. The control: `Sealing::Auto`
/// runs the same command there, unsealed.
#[tokio::test]
async fn the_library_refuses_a_required_seal_it_cannot_make() {
    let env = TestEnv::new();
    within(60, async {
        let d = delegated(&env);
        let target = d.sessions.path().to_string_lossy().into_owned();
        let run = |sealing: &str| {
            let script = "echo 0 > /proc/sys/user/max_user_namespaces && \
                          exec setpriv --bounding-set=-all --inh-caps=-all \"$@\"";
            let mut cmd = Command::new("unshare");
            cmd.args(["--user", "--map-root-user", "sh", "-c", script, "sh", FIXTURE, "try-spawn", &target, sealing]);
            cmd.uid(NOBODY).gid(NOBODY).sealing(Sealing::Off).stdin(Stdio::Null).stdout(Stdio::Piped);
            let mut child = cmd.spawn_in(&d.gateway).unwrap();
            async move {
                let out = read_until(child.stdout.as_mut().unwrap(), "").await;
                assert!(child.wait().await.unwrap().success(), "{out:?}");
                out.join("\n")
            }
        };
        let before = snapshot(&env.path());
        let out = run("required").await;
        assert!(out.contains("try-spawn required=SealingUnavailable: CAP_SYS_ADMIN"), "{out}");
        assert!(out.contains("max_user_namespaces"), "it names what is missing: {out}");
        assert_eq!(snapshot(&env.path()), before, "a refused spawn changed the tree");
        assert!(!d.sessions.is_populated().unwrap(), "nothing was started");

        let out = run("auto").await;
        assert!(out.contains("try-spawn auto=ok sealed=false"), "Auto, unable to seal: unsealed: {out}");
        wait_no_children(&d.gateway).await;
        d.remove(&env);
    })
    .await;
    env.finish().await;
}

/// Fail closed: a gateway with `CAP_SYS_ADMIN` on a kernel without cgroup
/// namespaces (forced here) never runs a child unsealed unless told to.
/// `Sealing::Auto`, like `Required`, fails with `Error::SealingUnavailable`
/// naming cgroup namespaces, and nothing is started; `procscope::seal_status`
/// says children are refused. The control: `Sealing::Off` starts the child.
#[tokio::test]
async fn a_privileged_gateway_that_cannot_seal_refuses_instead_of_running_unsealed() {
    let env = TestEnv::new();
    within(60, async {
        let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
        let session = sup.session("s").unwrap();
        let command = |sealing: Sealing| {
            let mut cmd = Command::new(FIXTURE);
            cmd.args(["exit", "0"]).stdin(Stdio::Null).stdout(Stdio::Null).sealing(sealing);
            cmd
        };
        procscope::testing::force_no_cgroup_namespace(true);
        for sealing in [Sealing::Auto, Sealing::Required] {
            match session.spawn(&mut command(sealing)) {
                Err(procscope::Error::SealingUnavailable { missing, .. }) => {
                    assert!(missing.contains("cgroup namespaces"), "{sealing:?}: {missing}")
                }
                other => panic!("{sealing:?} must refuse without cgroup namespaces: {:?}", other.map(|c| c.id())),
            }
            assert!(command(sealing).check().is_err(), "exec's check refuses too");
            assert!(!session.cgroup().unwrap().is_populated().unwrap(), "{sealing:?}: nothing was started");
            assert!(session.cgroup().unwrap().children().unwrap().is_empty(), "{sealing:?}: nothing was created");
        }
        let status = procscope::seal_status();
        assert!(!status.sealed_by_default && status.refused_by_default, "{status:?}");
        let mut child = session.spawn(&mut command(Sealing::Off)).expect("the control starts unsealed");
        assert!(!child.is_sealed());
        assert!(child.wait().await.unwrap().success());
        procscope::testing::force_no_cgroup_namespace(false);
        session.close().await.unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Starts `program` the way a guardian is started (`argv[0]`
/// `procscope-guardian`, the spec in `PROCSCOPE_GUARDIAN`, a pipe on fd 1),
/// optionally under `setpriv` as uid 65534, and returns what it printed.
fn as_guardian(program: &Path, spec: &str, as_nobody: bool, args: &[&str]) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = if as_nobody {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    if !as_nobody {
        cmd.arg0("procscope-guardian");
    }
    let out = cmd.args(args).env("PROCSCOPE_GUARDIAN", spec).stdin(std::process::Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The guardian's start-up hook trusts nothing it was not built to trust. A
/// spec naming a symlink, called after an instance, to a cgroup procscope did
/// not make is refused, and that cgroup's process lives on. A setuid copy of
/// a program that links procscope, run by an unprivileged user with the
/// variable set, never enters guardian mode (it runs its own `main`). A
/// program not started as `procscope-guardian` ignores the variable.
#[tokio::test]
async fn the_guardian_hook_cannot_be_turned_against_the_host() {
    let env = TestEnv::new();
    within(30, async {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hook-{}", nanos()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

        // A cgroup that is not an instance, with a process in it; a "gateway"
        // that will be dead when the guardian looks.
        let foreign = env.cgroup("foreign");
        let mut resident = Command::new(FIXTURE);
        resident.args(["sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Null);
        let mut resident = resident.spawn_in(&foreign).unwrap();
        let mut short = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let owner = procscope::Owner::of(short.id() as i32).unwrap();
        let link = dir.join(owner.instance_name());
        std::os::unix::fs::symlink(foreign.path(), &link).unwrap();
        let spec = format!("supervisor {} {} {}", owner.pid, owner.start, link.display());
        // (What exits is the process the guardian forks from; the report is
        // the guardian's.)
        let (_, out) = as_guardian(Path::new(FIXTURE), &spec, false, &[]);
        short.kill().unwrap();
        short.wait().unwrap();
        assert!(out.starts_with("error ") && out.contains("is not the instance"), "{out}");
        assert!(resident.pidfd().is_alive(), "the foreign cgroup's process was killed");

        // Setuid: the bit works (control), the hook stays out.
        let suid = dir.join("fixture-suid");
        std::fs::copy(FIXTURE, &suid).unwrap();
        std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
        let (code, out) = as_guardian(&suid, &spec, true, &["self"]);
        assert_eq!(code, Some(0), "{out}");
        let euid = out.lines().find_map(|l| l.strip_prefix("uid=")).and_then(|u| u.split_whitespace().nth(1));
        assert_eq!(euid, Some("0"), "the setuid bit works here: {out}");
        assert!(!out.contains("ready") && !out.contains("error"), "guardian mode in a setuid program: {out}");

        // Not started as procscope-guardian: the variable means nothing.
        let out = std::process::Command::new(FIXTURE).arg("self").env("PROCSCOPE_GUARDIAN", &spec).output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pid="), "{out:?}");

        resident.kill().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        env.root.remove_child_tree(&foreign).await.unwrap();
    })
    .await;
    env.finish().await;
}

/// Runs `procscope ARGS --root ROOT --json` and returns its JSON output.
fn cli_json(root: &Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(PROCSCOPE).args(args).arg("--root").arg(root).arg("--json").output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "procscope {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// State a child could write is never acted on: `user.procscope.*` forged
/// on a root-owned tree (what an unsealed uid-0 child can do) is ignored by
/// `ps`, `sweep`, `sweep --orphans`, `end` and a new supervisor's recovery,
/// and the live server runs on. The control: the same forgery in
/// `trusted.*` (which only CAP_SYS_ADMIN can write) is acted on, so the test
/// looks where procscope looks.
#[tokio::test]
async fn forged_user_xattrs_are_never_acted_on() {
    let env = TestEnv::new();
    within(60, async {
        let (mut gateway, lines) = Gateway::start(FIXTURE, &env.path(), 1, false);
        let instance = Cgroup::open(field(&lines, "instance")).unwrap();
        let members = settled_daemons(&instance, 1).await;
        let session = instance.path().join(&instance.children().unwrap()[0]);
        let set = |dir: &Path, key: &str, value: &str| {
            rustix::fs::setxattr(dir, key, value.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap()
        };
        // A pid that is surely dead: a child of ours, reaped.
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        dead.wait().unwrap();
        let dead = dead.id().to_string();
        set(&session, "user.procscope.state", "orphaned");
        set(&session, "user.procscope.session", "forged");
        set(&session, "user.procscope.kind", "garbage");
        set(instance.path(), "user.procscope.owner_pid", &dead);
        set(instance.path(), "user.procscope.owner_start", "1");
        set(instance.path(), "user.procscope.kind", "garbage");

        // After each step: the live server and its helper run on.
        let alive = |after: &str| {
            for m in &members {
                assert!(
                    m.is_alive(),
                    "after {after}: pid {} ({}) died",
                    m.pid(),
                    cgroup_of(m.pid()).unwrap_or_default()
                );
            }
        };
        alive("forging");
        let ps = cli_json(&env.path(), &["ps"]);
        let text = ps.to_string();
        assert!(text.contains("\"g0\"") && !text.contains("forged"), "ps reads the real session: {ps}");
        assert!(!text.contains("\"orphaned\"") && !text.contains("\"stale\""), "ps reads the real state: {ps}");
        for args in [&["sweep"][..], &["sweep", "--orphans"]] {
            let report = cli_json(&env.path(), args);
            assert_eq!(report["sessions"], 0, "{args:?} acted on forged state: {report}");
            alive(&format!("{args:?}"));
        }
        let end = std::process::Command::new(PROCSCOPE)
            .args(["end", "forged", "--owner", &gateway.id().to_string(), "--root"])
            .arg(env.path())
            .output()
            .unwrap();
        assert_eq!(end.status.code(), Some(1), "end finds no session by a forged id: {end:?}");
        alive("end");
        let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
        assert_eq!(sup.recovery().sessions, 0, "recovery acted on a forged owner: {}", sup.recovery());
        alive("recovery");
        sup.shutdown().await.unwrap();
        alive("shutdown");

        // The control: the same state where procscope keeps it.
        set(&session, "trusted.procscope.state", "orphaned");
        let report = cli_json(&env.path(), &["sweep", "--orphans"]);
        assert_eq!(report["sessions"], 1, "trusted.* is what counts: {report}");
        for m in &members {
            within(10, m.exited()).await.unwrap();
        }
        gateway.kill().unwrap();
        gateway.wait().unwrap();
        let root = Root::open(env.path()).unwrap();
        tree::sweep(&root, tree::Scope::Stale, Duration::from_millis(200)).await.unwrap();
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

/// Sealing leaves the rest of the filesystem as it was, mount propagation
/// included: a sealed child sees a mount made below a shared mount point
/// after it started (as with a host's automounts), while the cgroup mounts
/// stay read-only for it.
#[tokio::test]
async fn a_sealed_child_sees_mounts_made_after_it_started() {
    let env = TestEnv::new();
    let dir = std::env::temp_dir().join(format!("procscope-propagation-{}", nanos()));
    std::fs::create_dir(&dir).unwrap();
    let run = |args: &[&str]| {
        let st = std::process::Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(st.success(), "{args:?}");
    };
    let d = dir.to_str().unwrap();
    run(&["mount", "-t", "tmpfs", "procscope-shared", d]);
    run(&["mount", "--make-shared", d]);
    let unmount = scopeguard(|| {
        let _ = std::process::Command::new("umount").args(["-R", d]).status();
        let _ = std::fs::remove_dir(&dir);
    });
    within(60, async {
        let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
        let session = sup.session("sees").unwrap();
        let later = dir.join("later");
        let script = format!(
            "while [ ! -e {0}/mounted ]; do sleep 0.02; done; echo seen; \
             {{ echo 1 > /sys/fs/cgroup/cgroup.procs; }} 2>/dev/null && echo cgroup-writable || echo cgroup-read-only",
            later.display()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]).stdin(Stdio::Null).stdout(Stdio::Piped);
        let mut child = session.spawn(&mut cmd).unwrap();
        assert!(child.is_sealed());
        // The mount comes after the child started.
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::create_dir(&later).unwrap();
        run(&["mount", "-t", "tmpfs", "procscope-later", later.to_str().unwrap()]);
        std::fs::write(later.join("mounted"), "").unwrap();
        let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
        assert_eq!(lines, ["seen", "cgroup-read-only"], "what the sealed child saw");
        assert!(child.wait().await.unwrap().success());
        session.close().await.unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    drop(unmount);
    env.finish().await;
}

/// Runs `f` when dropped, also when the test panics.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}
