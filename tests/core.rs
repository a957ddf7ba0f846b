//! Core containment on the real kernel: spawning into cgroups, the child's
//! privileges, pidfds, cgroup events, kill and removal.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use procscope::{ChildStage, Command, Error, KillMechanism, Limits, PidFd, Sealing, Signal, SpawnMechanism, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(args: &[&str]) -> Command {
    let mut c = Command::new(FIXTURE);
    c.args(args).stdin(Stdio::Null).stdout(Stdio::Piped);
    c
}

#[tokio::test]
async fn child_is_in_its_cgroup_from_its_first_instruction() {
    let env = TestEnv::new();
    within(30, async {
        for mechanism in [SpawnMechanism::Clone3IntoCgroup, SpawnMechanism::ForkJoinProcs] {
            for sealing in [Sealing::Off, Sealing::Required] {
                let cg = env.cgroup(&format!("{}-{}", mechanism.as_str(), sealing.as_str()));
                let mut cmd = fixture(&["self", "ready", "wait-eof"]);
                cmd.stdin(Stdio::Piped).spawn_mechanism(mechanism).sealing(sealing);
                let mut child = cmd.spawn_in(&cg).unwrap();
                assert_eq!(child.spawn_mechanism(), mechanism);
                assert_eq!(child.is_sealed(), sealing == Sealing::Required);
                let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
                // The child reads /proc/self/cgroup itself: unsealed, it never ran
                // anywhere else before exec (with clone3, nowhere else at all).
                // Sealed, its cgroup namespace is rooted where it was when it
                // sealed itself, its first step: it sees "/".
                let want = if sealing == Sealing::Off { cgroup_rel(&cg) } else { "/".to_owned() };
                assert_eq!(field(&lines, "cgroup"), want, "{mechanism:?} {sealing:?}");
                assert_eq!(cgroup_of(child.id()).as_deref(), Some(cgroup_rel(&cg).as_str()), "seen from outside");
                assert!(child.wait().await.unwrap().success());
                env.root.remove_child_tree(&cg).await.unwrap();
            }
        }
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn child_holds_no_capabilities_and_only_stdio() {
    let env = TestEnv::new();
    within(30, async {
        let cg = env.cgroup("privs");
        // An fd the gateway forgot to mark CLOEXEC: the child must not get it.
        let leaky = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap();
        let mut child = fixture(&["self"]).spawn_in(&cg).unwrap();
        let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
        drop(leaky);
        assert_eq!(field(&lines, "fds"), "0,1,2");
        assert_eq!(
            field(&lines, "caps"),
            "0000000000000000 0000000000000000 0000000000000000 0000000000000000 0000000000000000",
            "CapInh CapPrm CapEff CapBnd CapAmb"
        );
        assert_eq!(field(&lines, "nnp"), "1");
        assert!(child.wait().await.unwrap().success());
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn uid_and_gid_switch_drops_supplementary_groups() {
    let env = TestEnv::new();
    within(30, async {
        let cg = env.cgroup("uid");
        let mut child = fixture(&["self"]).uid(65534).gid(65534).spawn_in(&cg).unwrap();
        let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
        assert_eq!(field(&lines, "uid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4]);
        assert_eq!(field(&lines, "gid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4]);
        assert_eq!(field(&lines, "groups"), "");
        assert!(field(&lines, "caps").split(' ').all(|c| c == "0000000000000000"));
        assert!(child.wait().await.unwrap().success());
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

/// A setuid-root program run by the child gains nothing: no_new_privs and the
/// empty bounding set hold across exec.
#[tokio::test]
async fn setuid_root_binary_gains_nothing() {
    let env = TestEnv::new();
    within(30, async {
        // Under the target dir, not /tmp (which may be mounted nosuid).
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("procscope-suid-{}", nanos()));
        std::fs::create_dir(&dir).unwrap();
        let suid = dir.join("fixture-suid");
        std::fs::copy(FIXTURE, &suid).unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Control: without procscope, the same binary started as uid 65534 does
        // run with euid 0 — so the bit works here, and the test has teeth.
        let control = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&suid)
            .arg("self")
            .output()
            .expect("setpriv (util-linux) runs the control");
        let control = String::from_utf8_lossy(&control.stdout);
        let euid = control.lines().find_map(|l| l.strip_prefix("uid=")).and_then(|u| u.split_whitespace().nth(1));
        assert_eq!(euid, Some("0"), "the setuid bit must work in {}: {control}", dir.display());

        let cg = env.cgroup("suid");
        let mut cmd = Command::new(&suid);
        cmd.arg("self").stdin(Stdio::Null).stdout(Stdio::Piped).uid(65534).gid(65534);
        let mut child = cmd.spawn_in(&cg).unwrap();
        let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
        assert!(child.wait().await.unwrap().success());
        std::fs::remove_dir_all(&dir).unwrap();
        // Real, effective, saved and fs uid all stay 65534: the setuid bit was ignored.
        assert_eq!(field(&lines, "uid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4]);
        assert!(field(&lines, "caps").split(' ').all(|c| c == "0000000000000000"));
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

/// setsid'ed and double-forked descendants stay in the session cgroup and die
/// with it — with `cgroup.kill` and with the forced freeze/kill/thaw fallback.
#[tokio::test]
async fn daemons_and_grandchildren_stay_inside_and_die_with_the_cgroup() {
    let env = TestEnv::new();
    within(60, async {
        for mechanism in [KillMechanism::CgroupKill, KillMechanism::FreezeKillThaw] {
            let cg = env.cgroup(mechanism.as_str());
            let mut child = fixture(&["daemon", "hold-stdout", "spawn", "3", "ready", "sleep", "3600"])
                .setsid(true)
                .spawn_in(&cg)
                .unwrap();
            let lines = read_until(child.stdout.as_mut().unwrap(), "ready").await;
            assert_eq!(lines.last().map(String::as_str), Some("ready"), "{lines:?}");
            // fixture + setsid'ed daemon + stdout holder + 3 children.
            let procs = cg.procs().unwrap();
            assert_eq!(procs.len(), 6, "{procs:?}");
            for pid in &procs {
                assert_eq!(cgroup_of(*pid).as_deref(), Some(cgroup_rel(&cg).as_str()));
            }
            // The daemon has a session of its own, and is not our child.
            let sessions: std::collections::HashSet<i32> = procs
                .iter()
                .map(|&p| {
                    rustix::process::getsid(rustix::process::Pid::from_raw(p as i32)).unwrap().as_raw_nonzero().get()
                })
                .collect();
            assert!(sessions.len() >= 2, "the daemon should have its own session: {sessions:?}");

            // The fallback must really freeze first: watch for `frozen 1`.
            let frozen = {
                let watch = procscope::Cgroup::open(cg.path()).unwrap();
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    watch.wait_events(Some(deadline), |e| e.frozen || !e.populated).await.unwrap()
                        && !watch.events().unwrap().populated
                })
            };
            tokio::task::yield_now().await;
            // Before Linux 5.14 (5.10 in the VMs) there is no cgroup.kill: it
            // is refused as unsupported, nothing is killed, and the fallback
            // does the work.
            let mechanism = match cg.kill_with(mechanism).await {
                Ok(()) => mechanism,
                Err(procscope::Error::Unsupported { feature: "cgroup.kill", .. })
                    if mechanism == KillMechanism::CgroupKill && !cg.has_file("cgroup.kill") =>
                {
                    assert_eq!(cg.procs().unwrap().len(), 6, "a refused kill kills nothing");
                    cg.kill_with(KillMechanism::FreezeKillThaw).await.unwrap();
                    KillMechanism::FreezeKillThaw
                }
                Err(e) => panic!("{mechanism:?}: {e}"),
            };
            assert!(cg.wait_empty(Some(tokio::time::Instant::now() + Duration::from_secs(5))).await.unwrap());
            assert!(cg.procs().unwrap().is_empty());
            assert!(!cg.events().unwrap().frozen, "left frozen by {mechanism:?}");
            let saw = frozen.await.unwrap();
            if mechanism == KillMechanism::FreezeKillThaw {
                // The watcher returns on `frozen 1`, or on `populated 0` — which
                // it only reaches first if the cgroup was never frozen.
                assert!(!saw || !cg.is_populated().unwrap(), "FreezeKillThaw never froze the cgroup");
            }
            let status = child.wait().await.unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(libc::SIGKILL));
            env.root.remove_child_tree(&cg).await.unwrap();
        }
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn populated_transitions_are_observed_without_polling() {
    let env = TestEnv::new();
    within(30, async {
        let cg = env.cgroup("events");
        assert!(!cg.is_populated().unwrap());
        let watcher = {
            let cg = procscope::Cgroup::open(cg.path()).unwrap();
            tokio::spawn(async move {
                let up = cg.wait_events(None, |e| e.populated).await.unwrap();
                let down = cg.wait_empty(None).await.unwrap();
                (up, down)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut child = fixture(&["wait-eof"]).stdin(Stdio::Piped).spawn_in(&cg).unwrap();
        assert!(cg.is_populated().unwrap());
        // Nothing happens until the child exits.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!watcher.is_finished());
        drop(child.stdin.take());
        assert!(child.wait().await.unwrap().success());
        assert_eq!(watcher.await.unwrap(), (true, true));
        // A deadline that passes returns false.
        let mut sleeper = fixture(&["sleep", "3600"]).spawn_in(&cg).unwrap();
        let t = tokio::time::Instant::now();
        assert!(!cg.wait_empty(Some(t + Duration::from_millis(100))).await.unwrap());
        assert!(!cg.wait_events_blocking(Some(Duration::from_millis(50)), |e| !e.populated).unwrap());
        sleeper.kill().await.unwrap();
        assert!(cg.wait_events_blocking(Some(Duration::from_secs(5)), |e| !e.populated).unwrap());
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn a_removed_cgroup_fails_the_spawn_closed() {
    let env = TestEnv::new();
    within(30, async {
        let cg = env.cgroup("gone");
        env.root.remove_child(cg.name()).unwrap();
        for mechanism in [SpawnMechanism::Clone3IntoCgroup, SpawnMechanism::ForkJoinProcs] {
            let err = fixture(&["self"]).spawn_mechanism(mechanism).spawn_in(&cg).unwrap_err();
            assert!(matches!(err, Error::CgroupRemoved { .. }), "{mechanism:?}: {err}");
            assert!(err.to_string().contains("removed"), "{err}");
        }
        // The default (no forced mechanism) must not fall back to anything.
        let err = fixture(&["self"]).spawn_in(&cg).unwrap_err();
        assert!(matches!(err, Error::CgroupRemoved { .. }), "default mechanism: {err}");
        assert!(own_children().is_empty(), "a child was started anyway");
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn a_reaped_child_is_never_signalled() {
    let env = TestEnv::new();
    within(30, async {
        let cg = env.cgroup("reaped");
        let mut child = fixture(&["exit", "3"]).spawn_in(&cg).unwrap();
        let extra = PidFd::open(child.pidfd().pid()).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        // The pid may now be reused; the pidfd still refers to the dead process.
        let err = extra.send_signal(Signal::TERM).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        assert!(!extra.is_alive());
        // The handle knows it reaped the child and sends nothing.
        child.signal(Signal::TERM).unwrap();
        assert_eq!(child.try_wait().unwrap().and_then(|s| s.code()), Some(3));
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn spawn_failures_are_typed_with_the_childs_errno() {
    let env = TestEnv::new();
    within(30, async {
        let cg = env.cgroup("errors");
        let err = Command::new("procscope-no-such-program").spawn_in(&cg).unwrap_err();
        assert!(matches!(err, Error::ProgramNotFound { .. }), "{err}");
        assert!(err.to_string().contains("PATH"), "{err}");

        let err = Command::new(FIXTURE).current_dir("/nonexistent/dir").spawn_in(&cg).unwrap_err();
        match &err {
            Error::Spawn { stage, source, .. } => {
                assert_eq!(*stage, ChildStage::Chdir);
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other}"),
        }

        let dir = std::env::temp_dir().join(format!("procscope-noexec-{}", nanos()));
        std::fs::create_dir(&dir).unwrap();
        let junk = dir.join("junk");
        std::fs::write(&junk, b"\x7fELF garbage").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = Command::new(&junk).spawn_in(&cg).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        match &err {
            Error::Spawn { stage: ChildStage::Exec, source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOEXEC))
            }
            other => panic!("{other}"),
        }

        let err = Command::new(FIXTURE).arg("a\0b").spawn_in(&cg).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { what: "argument", .. }), "{err}");
        let err = Command::new("").spawn_in(&cg).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { what: "program", .. }), "{err}");

        assert!(!cg.is_populated().unwrap());
        assert!(own_children().is_empty(), "failed spawns must leave no child: {:?}", own_children());
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn pipes_carry_bytes_unchanged() {
    let env = TestEnv::new();
    within(60, async {
        let cg = env.cgroup("pipes");
        let mut child = fixture(&["echo"]).stdin(Stdio::Piped).spawn_in(&cg).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let payload: Vec<u8> = (0..4 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            stdin.write_all(&sent).await.unwrap();
            stdin.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        stdout.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == payload, "echoed {} bytes of {}", got.len(), payload.len());
        assert!(child.wait().await.unwrap().success());
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn a_dropped_child_is_reaped_not_left_a_zombie() {
    let env = TestEnv::new();
    within(30, async {
        let cg = env.cgroup("dropped");
        let child = fixture(&["sleep", "0.2"]).spawn_in(&cg).unwrap();
        let watch = PidFd::open(child.pidfd().pid()).unwrap();
        drop(child);
        watch.exited().await.unwrap();
        // `TestEnv::finish` waits for the reaper and fails on any zombie child.
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn limits_need_their_controller_and_say_which_file_lacks_it() {
    let env = TestEnv::new();
    within(30, async {
        let available = env.root.controllers().unwrap();
        let limits = Limits { memory_max: Some(64 << 20), ..Limits::default() };
        let result = env.root.enable_controllers(&limits.controllers());
        if available.iter().any(|c| c == "memory") {
            result.unwrap();
            let cg = env.cgroup("limited");
            cg.set_limits(&limits).unwrap();
            assert_eq!(cg.read("memory.max").unwrap().trim(), (64u64 << 20).to_string());
            env.root.remove_child_tree(&cg).await.unwrap();
        } else {
            // A hybrid host: memory belongs to cgroup v1.
            let err = result.unwrap_err();
            assert!(matches!(err, Error::ControllerUnavailable { controller: "memory", .. }), "{err}");
            assert!(err.to_string().contains("cgroup.controllers"), "{err}");
            assert!(env.root.subtree_control().unwrap().is_empty(), "nothing may be enabled on failure");
        }
        // Stats never fail; cpu.stat is there without any controller.
        let cg = env.cgroup("stats");
        let mut child = fixture(&["exit", "0"]).spawn_in(&cg).unwrap();
        child.wait().await.unwrap();
        assert!(cg.stats().cpu_usage.is_some());
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn cgroup_paths_never_escape_and_never_follow_symlinks() {
    let env = TestEnv::new();
    within(30, async {
        for bad in ["..", ".", "a/b", "", "x\0y"] {
            assert!(matches!(env.root.create_child(bad), Err(Error::InvalidName { .. })), "{bad:?}");
            assert!(matches!(env.root.open_child(bad), Err(Error::InvalidName { .. })), "{bad:?}");
        }
        // A kernel file is not a cgroup.
        assert!(matches!(env.root.open_child("cgroup.procs"), Err(Error::NotCgroup2 { .. })));
        // Not a cgroup2 filesystem at all.
        assert!(matches!(procscope::Cgroup::open("/tmp"), Err(Error::NotCgroup2 { .. })));
        assert!(env.root.children().unwrap().is_empty());
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn member_pidfds_are_verified_members() {
    let env = TestEnv::new();
    within(30, async {
        let cg = env.cgroup("members");
        let mut child = fixture(&["spawn", "2", "ready", "sleep", "3600"]).spawn_in(&cg).unwrap();
        read_until(child.stdout.as_mut().unwrap(), "ready").await;
        let members = cg.member_pidfds().unwrap();
        assert_eq!(members.len(), 3);
        assert!(members.iter().all(|m| m.is_alive()));
        assert!(members.iter().any(|m| m.pid() == child.id()));
        cg.kill().await.unwrap();
        for m in &members {
            m.exited().await.unwrap();
        }
        child.wait().await.unwrap();
        assert!(cg.member_pidfds().unwrap().is_empty());
        env.root.remove_child_tree(&cg).await.unwrap();
    })
    .await;
    env.finish().await;
}

/// The child's signal state: nothing blocked, nothing caught, and an ignored
/// signal of the parent reset — through `clone3` and through the `clone(2)`
/// fallback used where `clone3` is filtered (Docker's default seccomp profile).
#[tokio::test]
async fn signals_are_reset_in_the_child_on_both_clone_paths() {
    let env = TestEnv::new();
    within(30, async {
        // The parent ignores SIGTERM; tokio has handlers installed (SIGCHLD).
        procscope::refresh_ignored_signals();
        // SAFETY: SIG_IGN is not a handler: no code runs on the signal.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        // Ignored signals are read at the first spawn, by Supervisor::start and
        // on request; they were read before SIGTERM was ignored, so a child
        // spawned now keeps SIGTERM ignored, as std::process would leave it.
        let ignored_in_child = |lines: &[String]| -> u64 {
            u64::from_str_radix(field(lines, "sig").split(' ').nth(1).unwrap(), 16).unwrap()
        };
        {
            let cg = env.cgroup("sig-stale");
            let mut child = fixture(&["self"]).spawn_in(&cg).unwrap();
            let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
            let want = (1 << (libc::SIGPIPE - 1)) | (1 << (libc::SIGTERM - 1));
            assert_eq!(ignored_in_child(&lines), want, "ignored signals before the refresh");
            assert!(child.wait().await.unwrap().success());
            env.root.remove_child_tree(&cg).await.unwrap();
        }
        procscope::refresh_ignored_signals();
        for legacy in [false, true] {
            procscope::testing::force_legacy_clone(legacy);
            for mechanism in [None, Some(SpawnMechanism::ForkJoinProcs)] {
                let cg = env.cgroup(&format!("sig-{legacy}-{}", mechanism.is_some()));
                let mut cmd = fixture(&["self"]);
                if let Some(m) = mechanism {
                    cmd.spawn_mechanism(m);
                }
                let mut child = cmd.spawn_in(&cg).unwrap();
                let lines = read_until(child.stdout.as_mut().unwrap(), "").await;
                let sig: Vec<u64> =
                    field(&lines, "sig").split(' ').map(|h| u64::from_str_radix(h, 16).unwrap()).collect();
                assert_eq!(sig[0], 0, "blocked signals in the child (legacy {legacy})");
                // The fixture's own Rust runtime ignores SIGPIPE after exec; nothing else.
                assert_eq!(sig[1], 1 << (libc::SIGPIPE - 1), "ignored signals in the child (legacy {legacy})");
                // ... and catches SIGSEGV and SIGBUS (its stack-overflow guard).
                let rust_runtime = (1 << (libc::SIGSEGV - 1)) | (1 << (libc::SIGBUS - 1));
                assert_eq!(sig[2], rust_runtime, "caught signals in the child (legacy {legacy})");
                assert!(child.is_sealed(), "a root test process seals by default");
                assert_eq!(field(&lines, "cgroup"), "/", "sealed: its cgroup namespace is its session");
                assert_eq!(field(&lines, "fds"), "0,1,2");
                assert_eq!(field(&lines, "nnp"), "1");
                if legacy {
                    // clone(2) cannot place a child: the join path was used.
                    assert_eq!(child.spawn_mechanism(), SpawnMechanism::ForkJoinProcs);
                }
                assert!(child.wait().await.unwrap().success());
                env.root.remove_child_tree(&cg).await.unwrap();
            }
        }
        procscope::testing::force_legacy_clone(false);
    })
    .await;
    env.finish().await;
}
