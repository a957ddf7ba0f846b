//! The newer pidfd features and their fallbacks: each kernel takes the path
//! its release allows (the host and 7.2 the new one, 5.10 and 6.1 the
//! fallback), and both paths give the same answers. `CLONE_PIDFD_AUTOKILL`
//! (Linux 7.1) is taken by 7.2 alone; below it, the tests are the control.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use procscope::testing::{force_no_autokill, kernel_at_least};
use procscope::{AutoKill, ChildStage, Command, ExitStatusSource, MembershipCheck, PidFd};

fn release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}

#[tokio::test]
async fn membership_is_checked_through_pidfd_info_where_the_kernel_has_it() {
    let env = TestEnv::new();
    let cg = env.cgroup("members");
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    cg.write("cgroup.procs", &pid.to_string()).unwrap();
    let fd = PidFd::open(pid).unwrap();

    let newer = kernel_at_least(&release(), 6, 13);
    let check = MembershipCheck::current();
    if newer {
        assert_eq!(check, MembershipCheck::PidfdInfo, "Linux {}", release());
        // The kernel's answer agrees with /proc/PID/cgroup's.
        let id = fd.cgroup_id().unwrap();
        assert_eq!(id, cg.id().unwrap());
        assert_eq!(cgroup_of(pid).unwrap(), cgroup_rel(&cg));
        let own = PidFd::this_process().unwrap().cgroup_id().unwrap();
        assert_ne!(own, id, "this process is elsewhere");
    } else {
        assert_eq!(check, MembershipCheck::ProcsReread, "Linux {}", release());
        let e = fd.cgroup_id().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    }
    // Either way the member is found, and nobody else.
    let members = cg.member_pidfds().unwrap();
    assert_eq!(members.iter().map(PidFd::pid).collect::<Vec<_>>(), [pid]);
    // A process that left is no member any more.
    env.root.write("cgroup.procs", &pid.to_string()).unwrap();
    assert!(cg.member_pidfds().unwrap().is_empty());

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    drop((fd, members));
    let name = cg.name().to_owned();
    drop(cg);
    env.root.remove_child(&name).unwrap();
    env.finish().await;
}

#[tokio::test]
async fn exit_status_of_a_process_that_is_not_our_child() {
    let env = TestEnv::new();
    // A shell starts a grandchild that exits 7 after a moment, prints its
    // pid and reaps it: the grandchild's parent is the shell, not us.
    let mut shell = std::process::Command::new("sh")
        .args(["-c", "sh -c 'sleep 0.5; exit 7' & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();
    let fd = PidFd::open(grandchild).unwrap();
    // Not our child: only its own parent (the shell) can reap it.

    let newer = kernel_at_least(&release(), 6, 15);
    if newer {
        assert_eq!(ExitStatusSource::current(), ExitStatusSource::PidfdInfoExit, "Linux {}", release());
        assert_eq!(fd.exit_status().unwrap(), None, "still running");
    } else {
        assert_eq!(ExitStatusSource::current(), ExitStatusSource::ChildrenOnly, "Linux {}", release());
        assert_eq!(fd.exit_status().unwrap_err().kind(), std::io::ErrorKind::Unsupported);
    }
    // The shell reaps it, then exits itself.
    assert!(shell.wait().unwrap().success());
    within(10, fd.exited()).await.unwrap();
    if newer {
        let status = fd.exit_status().unwrap().expect("reaped by its parent: the status is kept");
        assert_eq!(status.code(), Some(7), "{status:?}");
        assert_eq!(status.signal(), None);
    }
    drop(fd);
    env.finish().await;
}

#[tokio::test]
async fn the_guardian_logs_how_an_execd_server_ended_where_the_kernel_tells() {
    let env = TestEnv::new();
    let log = std::env::temp_dir().join(format!("procscope-guardian-{}-{}.log", std::process::id(), nanos()));
    // This test is the gateway: it starts the server through exec and reaps
    // it; the guardian is not its parent.
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_procscope"))
        .args(["exec", "--root", env.path().to_str().unwrap(), "--session", "s", "--", "sh", "-c", "exit 3"])
        .env("PROCSCOPE_GUARDIAN_LOG", &log)
        .spawn()
        .unwrap();
    let pid = server.id();
    assert_eq!(server.wait().unwrap().code(), Some(3));
    env.wait_root_empty().await;
    let want = format!("main {pid} exit status: 3");
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(" ended") && (text.contains(&want) || !kernel_at_least(&release(), 6, 15)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _ = std::fs::remove_file(&log);
    assert!(text.contains(" ended"), "{text}");
    if kernel_at_least(&release(), 6, 15) {
        assert!(text.contains(&want), "PIDFD_INFO_EXIT: {want:?} in\n{text}");
    } else {
        assert!(!text.contains("exit status"), "no exit status before 6.15:\n{text}");
    }
    env.finish().await;
}

/// Removes the test's cgroup `name` once its last process is gone (`rmdir`
/// may say EBUSY for a moment after that).
async fn remove_soon(env: &TestEnv, name: &str) {
    for _ in 0..200 {
        match env.root.remove_child(name) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => tokio::time::sleep(Duration::from_millis(10)).await,
            r => return r.unwrap(),
        }
    }
    panic!("{name} stays busy");
}

/// Whether this kernel ties children to their pidfds (the tests run as root,
/// so with `CAP_SYS_ADMIN`).
fn autokills() -> bool {
    kernel_at_least(&release(), 7, 1)
}

/// A gateway SIGKILLed with no guardian closes every fd it held: on Linux ≥
/// 7.1 the kernel kills its direct child within a second, with no sweep
/// (`CLONE_PIDFD_AUTOKILL`). The helper the child daemonized is no direct
/// child and stays for the sweep. Below 7.1, the control: the child runs
/// on until the sweep ends it.
#[tokio::test]
async fn a_gateway_killed_without_a_guardian_takes_its_direct_child_along_where_the_kernel_autokills() {
    let env = TestEnv::new();
    within(60, async {
        let (mut gateway, lines) = Gateway::start(FIXTURE, &env.path(), 1, false);
        assert_eq!(field(&lines, "guardian"), "0", "no guardian: {lines:?}");
        let want = if autokills() { AutoKill::Pidfd } else { AutoKill::Off };
        assert_eq!(field(&lines, "auto_kill"), want.as_str(), "Linux {}: {lines:?}", release());
        // Not our child: watched through a pidfd of our own, which does not
        // keep it alive.
        let child = PidFd::open(field(&lines, "child").parse().unwrap()).unwrap();
        let instance = procscope::Cgroup::open(field(&lines, "instance")).unwrap();
        let session = procscope::Cgroup::open(instance.path().join("s-g0")).unwrap();
        // The child has daemonized its helper: the two of them, nothing else.
        let pair = settled_daemons(&instance, 1).await;
        assert!(pair.iter().any(|p| p.pid() == child.pid()), "the child is one of {pair:?}");
        drop(pair);

        rustix::process::kill_process(
            rustix::process::Pid::from_raw(gateway.id() as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        gateway.wait().unwrap();
        if autokills() {
            tokio::time::timeout(Duration::from_secs(1), child.exited())
                .await
                .expect("the kernel kills the direct child within a second")
                .unwrap();
            // The kernel reaped it too; its status says how it ended.
            let mut status = None;
            for _ in 0..100 {
                status = child.exit_status().unwrap();
                if status.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL), "{status:?}");
            let left = session.procs().unwrap();
            assert!(left.len() == 1 && !left.contains(&child.pid()), "only the helper is left: {left:?}");
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(child.is_alive(), "the control: nothing in the kernel ends it");
            assert_eq!(session.procs().unwrap().len(), 2);
        }
        // The sweep ends what is left, either way.
        let root = procscope::Root::open(env.path()).unwrap();
        let report =
            procscope::tree::sweep(&root, procscope::tree::Scope::Stale, Duration::from_millis(200)).await.unwrap();
        assert_eq!((report.sessions, report.leaks_prevented), (1, 1), "{report}");
        assert!(report.errors.is_empty(), "{report}");
        within(5, child.exited()).await.unwrap();
        env.wait_root_empty().await;
    })
    .await;
    env.finish().await;
}

/// The exit statuses of children the kernel reaps (read with
/// `PIDFD_INFO_EXIT`) are those `waitid` gives: exit codes, deaths by a
/// signal, core dumps; through `wait` and `try_wait` alike. Below 7.1 both
/// runs take the `waitid` path.
#[tokio::test]
async fn exit_statuses_are_the_same_whether_the_kernel_or_waitid_reaps() {
    let env = TestEnv::new();
    let cg = env.cgroup("statuses");
    // A directory for the core dump, if the kernel writes one there.
    let dir = std::env::temp_dir().join(format!("procscope-statuses-{}-{}", std::process::id(), nanos()));
    std::fs::create_dir(&dir).unwrap();
    within(60, async {
        let scripts = [
            "exit 0",
            "exit 3",
            "exit 255",
            "kill -TERM $$",
            "kill -KILL $$",
            "trap '' TERM; kill -TERM $$; exit 4",
            "ulimit -c 0; kill -QUIT $$",
            "ulimit -c unlimited; kill -SEGV $$",
        ];
        for script in scripts {
            let mut seen = Vec::new();
            for (forced_off, by_try_wait) in [(false, false), (false, true), (true, false), (true, true)] {
                force_no_autokill(forced_off);
                let mut child = Command::new("sh")
                    .args(["-c", script])
                    .current_dir(&dir)
                    .stdin(procscope::Stdio::Null)
                    .spawn_in(&cg)
                    .unwrap();
                let want = if autokills() && !forced_off { AutoKill::Pidfd } else { AutoKill::Off };
                assert_eq!(child.auto_kill(), want, "Linux {}", release());
                let status = if by_try_wait {
                    let mut status = None;
                    for _ in 0..1000 {
                        status = child.try_wait().unwrap();
                        if status.is_some() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    status.expect("try_wait gives the status once the child is gone")
                } else {
                    child.wait().await.unwrap()
                };
                assert_eq!(child.try_wait().unwrap(), Some(status), "kept");
                seen.push((want, by_try_wait, status));
            }
            force_no_autokill(false);
            let first = seen[0].2;
            assert!(seen.iter().all(|s| s.2 == first), "{script}: {seen:?}");
            match script {
                "exit 3" => assert_eq!(first.code(), Some(3)),
                "exit 255" => assert_eq!(first.code(), Some(255)),
                "kill -TERM $$" => assert_eq!((first.signal(), first.core_dumped()), (Some(libc::SIGTERM), false)),
                "kill -KILL $$" => assert_eq!(first.signal(), Some(libc::SIGKILL)),
                "trap '' TERM; kill -TERM $$; exit 4" => assert_eq!(first.code(), Some(4)),
                "ulimit -c 0; kill -QUIT $$" => {
                    assert_eq!((first.signal(), first.core_dumped()), (Some(libc::SIGQUIT), false))
                }
                // Whether a core is dumped depends on the host's core_pattern;
                // the bit is the same either way (compared above).
                "ulimit -c unlimited; kill -SEGV $$" => assert_eq!(first.signal(), Some(libc::SIGSEGV)),
                _ => assert!(first.success()),
            }
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    drop(cg);
    remove_soon(&env, "statuses").await;
    env.finish().await;
}

/// A child that fails before `execve` is reported with the failing step and
/// its errno, whether the kernel reaps it (and `waitid` could not) or
/// procscope does; the spawn returns, and nothing is left.
#[tokio::test]
async fn a_failed_spawn_is_typed_whether_the_kernel_or_waitid_reaps() {
    let env = TestEnv::new();
    let cg = env.cgroup("failed");
    within(30, async {
        for forced_off in [false, true] {
            force_no_autokill(forced_off);
            let err = Command::new("true")
                .current_dir("/nonexistent/procscope-test")
                .stdin(procscope::Stdio::Null)
                .spawn_in(&cg)
                .unwrap_err();
            match &err {
                procscope::Error::Spawn { stage, source, .. } => {
                    assert_eq!((*stage, source.raw_os_error()), (ChildStage::Chdir, Some(libc::ENOENT)), "{err}")
                }
                other => panic!("not a typed spawn failure: {other}"),
            }
            assert!(cg.procs().unwrap().is_empty(), "the failed child is gone");
        }
        force_no_autokill(false);
    })
    .await;
    drop(cg);
    remove_soon(&env, "failed").await;
    env.finish().await;
}

/// Dropping the handle of a running child does not kill it, also where it
/// dies with the last reference to its pidfd: procscope holds one (the
/// reaper) until it exits. Likewise for a session let go with a child
/// running: the orphan pool holds it until the sweep.
#[tokio::test]
async fn a_dropped_handle_or_session_leaves_a_child_tied_to_its_pidfd_running() {
    let env = TestEnv::new();
    let cg = env.cgroup("dropped");
    within(60, async {
        let child = Command::new("sleep").arg("60").stdin(procscope::Stdio::Null).spawn_in(&cg).unwrap();
        let want = if autokills() { AutoKill::Pidfd } else { AutoKill::Off };
        assert_eq!(child.auto_kill(), want, "Linux {}", release());
        let watch = PidFd::open(child.id()).unwrap();
        drop(child);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(watch.is_alive(), "a dropped handle kills nothing");
        assert_eq!(procscope::testing::reaper_pending(), 1, "held by the reaper");
        watch.send_signal(procscope::Signal::KILL).unwrap();
        within(5, watch.exited()).await.unwrap();
        drop((watch, cg));
        remove_soon(&env, "dropped").await;

        let sup =
            procscope::Supervisor::builder().root(env.path()).grace(Duration::from_millis(200)).start().await.unwrap();
        let session = sup.session("left").unwrap();
        let child = session.spawn(Command::new("sleep").arg("60").stdin(procscope::Stdio::Null)).unwrap();
        assert_eq!(child.auto_kill(), want);
        let watch = PidFd::open(child.id()).unwrap();
        drop((child, session));
        assert_eq!(sup.orphaned_sessions(), ["left"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(watch.is_alive(), "the orphan pool holds it until the sweep");
        let report = sup.sweep_orphans().await;
        assert_eq!((report.sessions, report.leaks_prevented), (1, 1), "{report}");
        assert!(!watch.is_alive());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.wait_root_empty().await;
    env.finish().await;
}

/// `procscope doctor --json` names the mechanism its probe child got, as
/// the kernel allows it: `pidfd_autokill` from Linux 7.1 (as root), `off`
/// below.
#[tokio::test]
async fn doctor_reports_auto_kill_as_the_kernel_allows() {
    let env = TestEnv::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procscope"))
        .args(["doctor", "--json", "--root"])
        .arg(env.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = if autokills() { AutoKill::Pidfd } else { AutoKill::Off };
    assert_eq!(v["auto_kill"], want.as_str(), "Linux {}: {v}", release());
    assert_eq!(AutoKill::current(), want, "what a spawn here asks for");
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_procscope"))
        .args(["doctor", "--root"])
        .arg(env.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().any(|l| l.starts_with("auto kill") && l.contains(want.as_str())), "{text}");
    env.finish().await;
}
