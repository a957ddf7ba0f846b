//! Gateways inside containers, made with `unshare` as Docker and Kubernetes
//! make them (tests/common/container.rs): a private cgroup namespace and a
//! PID namespace with an init that reaps.
//!
//! - Where cgroup2 is writable in the container's namespace (a privileged
//!   container, systemd-nspawn) the full mode runs, sealing included, and
//!   the guardian ends what a SIGKILLed gateway leaves.
//! - Where it is read-only and `CAP_SYS_ADMIN` is gone (a default
//!   container), a library gateway contains its sessions with holders,
//!   chosen on its own, and `doctor` says so with how to get the full
//!   mode; `exec` holds its command (it stays in front of a holder), `end`
//!   finds it, and nothing is created in the cgroup tree.

mod common;

use common::container::{Container, Kind};
use common::{FIXTURE, TestEnv, field, settled_daemons, wait_gone_within, within};
use procscope::Cgroup;

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");

/// Whether doctor's `capabilities` (CapEff in hex) holds CAP_SYS_ADMIN.
fn has_sys_admin(doc: &serde_json::Value) -> bool {
    let caps = u64::from_str_radix(doc["capabilities"].as_str().unwrap(), 16).unwrap();
    const CAP_SYS_ADMIN: u32 = 21;
    caps & (1 << CAP_SYS_ADMIN) != 0
}

/// The fixture's gateway in `ctr` (`gateway discover 2 1`: the root it
/// finds, two sessions whose children daemonize a helper with `setsid
/// --fork`, a guardian asked for), and its report up to `ready`.
fn start_gateway(ctr: &Container) -> (std::process::Child, Vec<String>) {
    let mut gw = ctr
        .command(FIXTURE)
        .args(["gateway", "discover", "2", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::read_until_ready(&mut gw);
    (gw, lines)
}

fn doctor_json(ctr: &Container) -> (i32, serde_json::Value) {
    let out = ctr.command(PROCSCOPE).args(["doctor", "--json"]).output().unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

/// Runs a shell command line inside the container (so that `procscope exec`
/// has a parent inside the PID namespace, as under a gateway there).
fn sh(ctr: &Container, line: &str) -> std::process::Output {
    ctr.command("sh").args(["-c", line]).output().unwrap()
}

#[tokio::test]
async fn a_privileged_container_gets_the_full_mode_with_sealing_and_the_guardian() {
    within(120, async {
        let env = TestEnv::new();
        let ctr = Container::start(&env, "ctr", Kind::Privileged);

        // doctor sees the container's own cgroup namespace and every
        // mechanism of the full mode.
        let (code, doc) = doctor_json(&ctr);
        assert_eq!(code, 0, "doctor in a privileged container: {doc:#}");
        assert_eq!(doc["ok"], true, "{doc:#}");
        assert!(has_sys_admin(&doc), "{doc:#}");
        assert_eq!(doc["cgroup2_mount"], "/sys/fs/cgroup", "{doc:#}");
        assert_eq!(doc["own_cgroup"], "/", "the container's cgroup namespace is rooted at its cgroup: {doc:#}");
        assert_ne!(doc["spawn_mechanism"], "none", "{doc:#}");
        assert_ne!(doc["kill_mechanism"], "none", "{doc:#}");
        assert_eq!(doc["sealing"]["cgroup_namespace"], true, "{doc:#}");
        assert_eq!(doc["sealing"]["sealed_by_default"], true, "{doc:#}");
        assert!(ctr.tree().is_empty(), "doctor left cgroups: {:?}", ctr.tree());

        // Sealed by default: a child of `exec` cannot write its way out of
        // its session. The control, unsealed, can: the write is a real
        // escape in this container.
        let escape =
            format!("{PROCSCOPE} exec --session seal -- {FIXTURE} try-write /sys/fs/cgroup/cgroup.procs 0 self");
        let out = sh(&ctr, &escape);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("try-write /sys/fs/cgroup/cgroup.procs=E"), "sealed: the write must fail: {text}");
        assert!(text.lines().any(|l| l == "cgroup=/"), "sealed: its session is its cgroup root: {text}");
        let control = sh(&ctr, &escape.replace("exec --session seal", "exec --session unsealed --no-seal"));
        let text = String::from_utf8_lossy(&control.stdout);
        assert!(
            text.contains("try-write /sys/fs/cgroup/cgroup.procs=ok"),
            "control: unsealed, the same write moves it out: {text}"
        );

        // `exec` whose parent is outside the container's PID namespace (a
        // container's PID 1, or `docker exec`): the command is its own
        // owner. Its `setsid` helper outlives it, and the guardian ends the
        // helper once the command has exited.
        let out = ctr
            .command(PROCSCOPE)
            .args(["exec", "--session", "entry", "--", FIXTURE, "daemon", "self"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("daemon=started"), "{text}");
        assert!(text.lines().any(|l| l == "cgroup=/"), "placed and sealed in a session: {text}");

        // The commands' guardians remove their instances and exit.
        assert_eq!(ctr.settle(5).await, Vec::<u32>::new(), "processes left after the exec commands");
        assert_eq!(ctr.tree(), vec![std::path::PathBuf::from("procscope")], "left by the exec commands");

        // A gateway (not the container's PID 1: an init reaps, as with
        // `docker run --init`) with a guardian; each session's child
        // daemonizes a helper with `setsid --fork`.
        let (mut gw, lines) = start_gateway(&ctr);
        assert_eq!(field(&lines, "sessions"), "2", "{lines:?}");
        let inside = field(&lines, "instance");
        assert!(inside.starts_with("/sys/fs/cgroup/procscope/i-"), "the root a gateway finds in a container: {inside}");
        let instance = Cgroup::open(ctr.host_path(inside)).unwrap();
        let members = settled_daemons(&instance, 2).await;
        assert_eq!(members.len(), 4);

        // The gateway is SIGKILLed: its guardian, re-parented to the
        // container's init, ends both sessions and removes the instance.
        let gateway = ctr.inner_pid(&gw);
        assert!(std::fs::read(format!("/proc/{gateway}/cmdline")).unwrap().ends_with(b"gateway\0discover\x002\x001\0"));
        rustix::process::kill_process(rustix::process::Pid::from_raw(gateway).unwrap(), rustix::process::Signal::KILL)
            .unwrap();
        let _ = gw.wait();
        wait_gone_within(instance.path(), 3).await;
        let alive: Vec<u32> = members.iter().filter(|m| m.is_alive()).map(|m| m.pid()).collect();
        assert!(alive.is_empty(), "sessions' processes survived: {alive:?}");
        assert_eq!(ctr.settle(5).await, Vec::<u32>::new(), "processes left in the container");
        drop((members, instance));
        let tree = ctr.tree();
        assert_eq!(tree, vec![std::path::PathBuf::from("procscope")], "only the root is left: {tree:?}");
        drop(ctr);
        env.finish().await;
    })
    .await;
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn a_default_container_contains_with_holders_and_exec_holds_its_command() {
    within(60, async {
        let env = TestEnv::new();
        let ctr = Container::start(&env, "ctr", Kind::Default);
        let before = ctr.tree();
        assert!(before.is_empty());

        // doctor: the mode with holders, probed for real, and the way to
        // the full mode; a degraded mode, so it fails.
        let (code, doc) = doctor_json(&ctr);
        assert_ne!(code, 0, "doctor must fail in a default container: {doc:#}");
        assert_eq!(doc["ok"], false, "{doc:#}");
        assert_eq!(doc["containment"], "holders", "{doc:#}");
        assert_eq!(doc["spawn_mechanism"], "holder", "{doc:#}");
        assert_eq!(doc["kill_mechanism"], "holder", "{doc:#}");
        assert_eq!(doc["holder_identity"], "own", "a root gateway's holders take the guardian's uid: {doc:#}");
        assert!(!has_sys_admin(&doc), "a default container has no CAP_SYS_ADMIN: {doc:#}");
        let problems = doc["problems"].as_array().unwrap();
        let ro = problems
            .iter()
            .find(|p| p["problem"].as_str().unwrap().contains("mounted read-only"))
            .unwrap_or_else(|| panic!("no read-only problem: {doc:#}"));
        assert!(ro["problem"].as_str().unwrap().contains("contained with holders"), "{ro:#}");
        assert!(ro["fix"].as_str().unwrap().contains("docker run --privileged"), "{ro:#}");
        assert_eq!(ro["degrades"], true);

        // A library gateway with the defaults (and a guardian asked for,
        // which holders make needless) chooses holders on its own. Each
        // session's child daemonizes a helper with `setsid --fork`.
        let (mut gw, lines) = start_gateway(&ctr);
        assert_eq!(field(&lines, "containment"), "holders", "{lines:?}");
        assert_eq!(field(&lines, "instance"), "none", "{lines:?}");
        assert_eq!(field(&lines, "guardian"), "0", "{lines:?}");
        assert_eq!(field(&lines, "sessions"), "2", "{lines:?}");
        let gateway = ctr.inner_pid(&gw);
        // The helpers' parents exited: they are the holders' now, not the
        // container's init's.
        let helpers = || -> Vec<u32> {
            ctr.processes().into_iter().filter(|&p| cmdline(p) == format!("{FIXTURE} sleep 3600 ")).collect()
        };
        let mut settled = false;
        for _ in 0..500 {
            let h = helpers();
            if h.len() == 2
                && h.iter().all(|&p| parent_of(p).is_some_and(|pp| cmdline(pp).starts_with("procscope-holder")))
            {
                settled = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let seen: Vec<(u32, Option<u32>, String)> =
            ctr.processes().into_iter().map(|p| (p, parent_of(p), cmdline(p))).collect();
        assert!(settled, "the escapees must be their holders': {seen:#?}");
        let holders =
            seen.iter().filter(|(_, parent, c)| c.starts_with("procscope-holder") && *parent == Some(gateway as u32));
        assert_eq!(holders.count(), 2, "a holder per command, children of the gateway: {seen:#?}");
        assert_eq!(ctr.tree(), before, "holders write no cgroup");

        // The gateway is SIGKILLed: each holder sees its control pipe end
        // and kills its tree. Nothing is left in the container.
        assert!(std::fs::read(format!("/proc/{gateway}/cmdline")).unwrap().ends_with(b"gateway\0discover\x002\x001\0"));
        rustix::process::kill_process(rustix::process::Pid::from_raw(gateway).unwrap(), rustix::process::Signal::KILL)
            .unwrap();
        let _ = gw.wait();
        assert_eq!(ctr.settle(5).await, Vec::<u32>::new(), "processes left in the container");

        // `exec` holds its command: it stays in front of it, and what the
        // command leaves is ended when it exits; the exit code is the
        // command's.
        let out =
            sh(&ctr, &format!("{PROCSCOPE} exec --session j -- sh -c '{FIXTURE} daemon >/dev/null; echo ran; exit 4'"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n", "{err}");
        assert!(err.contains("contained with a holder"), "the mode is said: {err}");
        assert_eq!(ctr.settle(5).await, Vec::<u32>::new(), "the command's daemon outlived it");

        // `end` from the same gateway (a shell) ends a held session, found
        // through the registry in /run/procscope once `ps` lists it with
        // its command `sleep` (the shell has exec'd it, its daemon started:
        // nothing half-way left to count).
        let line = format!(
            "{PROCSCOPE} exec --session k -- sh -c '{FIXTURE} daemon >/dev/null; exec sleep 3600' 2>/dev/null & \
             until {PROCSCOPE} ps --json | grep -q '\"command\":\"sleep 3600\",\"id\":\"k\"'; do sleep 0.05; done; \
             {PROCSCOPE} end --json k; wait"
        );
        let out = sh(&ctr, &line);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(report["sessions"], 1, "{report}");
        assert_eq!(report["leaks_prevented"], 1, "{report}");
        assert_eq!(report["terminated"], 2, "the command and its daemon: {report}");
        assert_eq!(ctr.settle(5).await, Vec::<u32>::new());

        // Cgroups asked for (or a root on the read-only mount): refused
        // before anything is placed, with how to get the full mode.
        for how in ["--containment cgroups", "--root /sys/fs/cgroup"] {
            let out = sh(&ctr, &format!("{PROCSCOPE} exec {how} --session j -- {FIXTURE} ready"));
            let err = String::from_utf8_lossy(&out.stderr);
            // Exit 2, as for a root that is not delegated: the environment,
            // not the command, is what must change.
            assert_eq!(out.status.code(), Some(2), "{how}: {err}");
            assert!(err.contains("mounted read-only") && err.contains("docker run --privileged"), "{err}");
            assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"), "the command must not run");
        }

        assert_eq!(ctr.tree(), before, "nothing may be created");
        assert_eq!(ctr.settle(5).await, Vec::<u32>::new());
        drop(ctr);
        env.finish().await;
    })
    .await;
}
