//! Confinement and bad input: procscope never writes outside its root, never
//! kills a cgroup holding the caller, and refuses malformed input with a typed
//! error that names the input and the fix — changing nothing.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use procscope::{Cgroup, Command, Error, Limits, Root, Supervisor};

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");

/// Mounts a tmpfs over `dir` for the guard's life.
struct Planted(std::path::PathBuf);

impl Planted {
    fn mount(dir: &Path) -> Planted {
        let ok = std::process::Command::new("mount").args(["-t", "tmpfs", "planted"]).arg(dir).status().unwrap();
        assert!(ok.success(), "mount tmpfs over {}", dir.display());
        Planted(dir.to_owned())
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn nothing_outside_cgroup2_is_ever_opened_as_a_cgroup() {
    let env = TestEnv::new();
    within(60, async {
        // The kernel refuses symlinks inside cgroupfs: nothing can be planted that way.
        let err = std::os::unix::fs::symlink("/tmp", env.path().join("link")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        // A root path that resolves outside cgroupfs is refused.
        let link = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("root-link-{}", nanos()));
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        assert!(matches!(Root::open(&link), Err(Error::NotCgroup2 { .. })));
        std::fs::remove_file(&link).unwrap();

        // A directory under the root with a tmpfs mounted over it (as a hostile
        // admin or container could): opened, listed, swept — never written to.
        let sup = Supervisor::builder().root(env.path()).grace(Duration::ZERO).start().await.unwrap();
        let bait = env.cgroup("bait");
        let guard = Planted::mount(bait.path());
        assert!(matches!(env.root.open_child("bait"), Err(Error::NotCgroup2 { .. })));
        assert!(matches!(Root::open(bait.path()), Err(Error::NotCgroup2 { .. })));
        let report = procscope::tree::sweep(
            &Root::open(env.path()).unwrap(),
            procscope::tree::Scope::Everything,
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
        // The tmpfs is untouched: no cgroup.kill, no files written into it.
        assert_eq!(std::fs::read_dir(bait.path()).unwrap().count(), 0, "something was written into the planted tmpfs");
        drop(guard);
        env.root.remove_child("bait").unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A cgroup that holds the caller — or any ancestor of the caller's cgroup —
/// is killed without the caller: it is moved back out first (to the cgroup
/// of its nearest ancestor outside), and lives on. A root holding the caller
/// is refused up front.
#[tokio::test]
async fn a_cgroup_holding_the_caller_is_killed_without_it() {
    let env = TestEnv::new();
    within(30, async {
        let me = rustix::process::getpid().as_raw_nonzero().get().to_string();
        let original = cgroup_of(std::process::id()).unwrap();
        let h = procscope::cgroup::hierarchy::Hierarchy::discover().unwrap();
        let home = Cgroup::open(h.mount_point.join(original.trim_start_matches('/'))).unwrap();
        let outer = env.cgroup("outer");
        let inner = outer.create_child("inner").unwrap();
        for target in [&inner, &outer, &env.root] {
            inner.write("cgroup.procs", &me).unwrap();
            let r = target.kill().await;
            let now = cgroup_of(std::process::id()).unwrap();
            // Move back before asserting, so a failure cannot strand the test.
            home.write("cgroup.procs", &me).unwrap();
            assert!(r.is_ok(), "{}: {r:?}", target.path().display());
            assert_eq!(now, original, "moved back out of {} before the kill", target.path().display());
        }
        inner.write("cgroup.procs", &me).unwrap();
        let refused = Root::open(env.path());
        home.write("cgroup.procs", &me).unwrap();
        assert!(matches!(refused, Err(Error::ContainsSelf { .. })), "{refused:?}");
        outer.remove_child("inner").unwrap();
        env.root.remove_child("outer").unwrap();
    })
    .await;
    env.finish().await;
}

/// Arguments, extra environment, and what the error message must contain.
type CliCase<'a> = (&'a [&'a str], Vec<(&'a str, &'a str)>, &'a [&'a str]);

fn cli(env: &TestEnv, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut c = std::process::Command::new(PROCSCOPE);
    let (sub, rest) = args.split_first().unwrap();
    c.arg(sub);
    if !rest.contains(&"--root") && *sub != "--help" {
        c.arg("--root").arg(env.path());
    }
    c.args(rest).envs(extra_env.iter().copied()).stdin(std::process::Stdio::null()).output().unwrap()
}

/// At least 30 malformed inputs across the library and the CLI: each refused
/// with a typed error / exit code 2, a message naming the input and the fix,
/// and nothing created.
#[tokio::test]
async fn bad_input_table() {
    let env = TestEnv::new();
    within(120, async {
        let fake = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mountinfo-{}", nanos()));
        std::fs::write(&fake, "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n").unwrap();
        let fake = fake.to_str().unwrap().to_owned();
        let sup = Supervisor::builder().root(env.path()).start().await.unwrap();
        let instance_children = |sup: &Supervisor| sup.instance().unwrap().children().unwrap().len();
        let mut cases = 0;

        // Library: (input, result, text the message must contain).
        let lib: Vec<(&str, Result<(), Error>, &[&str])> = vec![
            ("session id ''", sup.session("").map(drop), &["session id", "1–64"]),
            ("session id '..'", sup.session("..").map(drop), &["\"..\"", "1–64"]),
            ("session id with '/'", sup.session("a/b").map(drop), &["'/'"]),
            ("session id with NUL", sup.session("a\0b").map(drop), &["NUL"]),
            ("session id 'cgroup.procs'", sup.session("cgroup.procs").map(drop), &["kernel interface file"]),
            ("session id 'memory.max'", sup.session("memory.max").map(drop), &["memory.max"]),
            ("session id of 65 chars", sup.session(&"x".repeat(65)).map(drop), &["longer than 64"]),
            ("session id with a space", sup.session("a b").map(drop), &["character"]),
            (
                "pids.max 0",
                sup.session_with_limits("p", &Limits { pids_max: Some(0), ..Limits::default() }).map(drop),
                &["pids.max"],
            ),
            (
                "memory.max 0",
                sup.session_with_limits("m", &Limits { memory_max: Some(0), ..Limits::default() }).map(drop),
                &["memory.max", "512M"],
            ),
            (
                "memory.max '10QB'",
                procscope::cgroup::limits::parse_bytes("memory.max", "10QB").map(drop),
                &["10QB", "512M"],
            ),
            (
                "memory.max '-1'",
                procscope::cgroup::limits::parse_bytes("memory.max", "-1").map(drop),
                &["\"-1\"", "negative"],
            ),
            ("cpu.max 'lots'", procscope::cgroup::limits::parse_cpu_max("lots").map(drop), &["lots", "0.5"]),
            ("grace '-2s'", procscope::cgroup::limits::parse_duration("grace", "-2s").map(drop), &["-2s", "500ms"]),
            (
                "grace '3 fortnights'",
                procscope::cgroup::limits::parse_duration("grace", "3 fortnights").map(drop),
                &["fortnights", "2s"],
            ),
            (
                "argument with NUL",
                Command::new(FIXTURE).arg("a\0b").spawn_in(&sup.instance().unwrap()).map(drop),
                &["NUL"],
            ),
            (
                "environment value with NUL",
                Command::new(FIXTURE).env("PROCSCOPE_X", "a\0b").spawn_in(&sup.instance().unwrap()).map(drop),
                &["PROCSCOPE_X", "NUL"],
            ),
            ("empty program", Command::new("").spawn_in(&sup.instance().unwrap()).map(drop), &["empty"]),
            (
                "missing program",
                Command::new("no-such-program-x").spawn_in(&sup.instance().unwrap()).map(drop),
                &["no-such-program-x", "PATH"],
            ),
            ("root /tmp", Root::open("/tmp").map(drop), &["/tmp", "cgroup2"]),
            ("root that does not exist", Root::open("/sys/fs/cgroup/unified/nope-x").map(drop), &["nope-x"]),
        ];
        for (input, result, needles) in lib {
            let err = result.expect_err(input);
            let msg = err.to_string();
            for n in needles {
                assert!(msg.contains(n), "{input}: message lacks {n:?}: {msg}");
            }
            cases += 1;
        }
        assert_eq!(instance_children(&sup), 0, "the library created something on bad input");
        assert!(!sup.instance().unwrap().is_populated().unwrap());

        // CLI: exit code 2, the input and a fix in the message.
        let cli_cases: Vec<CliCase> = vec![
            (&["exec", "--session", "../etc", "--", "true"], vec![], &["../etc", "1–64"]),
            (&["exec", "--memory-max", "10QB", "--", "true"], vec![], &["10QB", "512M"]),
            (&["exec", "--memory-max", "-1", "--", "true"], vec![], &["-1", "negative"]),
            (&["exec", "--pids-max", "none", "--", "true"], vec![], &["none", "max"]),
            (&["exec", "--cpu-max", "200%%", "--", "true"], vec![], &["200%%"]),
            (&["exec", "--grace", "soon", "--", "true"], vec![], &["soon", "2s"]),
            (&["exec", "--", ""], vec![], &["empty"]),
            (&["exec", "--"], vec![], &["CMD"]),
            (&["end", "cgroup.kill"], vec![], &["cgroup.kill", "kernel interface"]),
            (&["end", "--grace", "1e9", "x"], vec![], &["1e9"]),
            (&["sweep", "--orphans", "--all"], vec![], &["--all"]),
            (&["ps", "--root", "/proc"], vec![], &["/proc", "cgroup2"]),
            (&["ps"], vec![("PROCSCOPE_MOUNTINFO", fake.as_str())], &["no cgroup2", "mount -t cgroup2"]),
            (&["sweep"], vec![("PROCSCOPE_MOUNTINFO", fake.as_str())], &["no cgroup2"]),
            (&["exec", "--", "true"], vec![("PROCSCOPE_MOUNTINFO", fake.as_str())], &["no cgroup2"]),
        ];
        for (args, extra, needles) in &cli_cases {
            let out = cli(&env, args, extra);
            let msg = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {msg}");
            for n in *needles {
                assert!(msg.contains(n), "{args:?}: message lacks {n:?}: {msg}");
            }
            cases += 1;
        }
        // An unwritable root: the CLI run as an unprivileged user.
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", PROCSCOPE, "exec", "--root"])
            .arg(env.path())
            .args(["--", "true"])
            .output()
            .unwrap();
        let msg = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{msg}");
        assert!(msg.contains("Delegate=yes") && msg.contains(env.path().to_str().unwrap()), "{msg}");
        cases += 1;

        assert_eq!(instance_children(&sup), 0);
        let left: Vec<String> =
            env.root.children().unwrap().into_iter().filter(|c| c != sup.instance().unwrap().name()).collect();
        assert!(left.is_empty(), "the CLI created something on bad input: {left:?}");
        assert!(cases >= 30, "only {cases} cases");
        eprintln!(
            "bad input: {cases} malformed inputs (library and CLI) refused with a typed error / exit 2; nothing created"
        );
        std::fs::remove_file(&fake).unwrap();
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}
