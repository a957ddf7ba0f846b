//! The newer pidfd features and their fallbacks: each kernel takes the path
//! its release allows (the host and 7.2 the new one, 5.10 and 6.1 the
//! fallback), and both paths give the same answers.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::*;
use procscope::testing::kernel_at_least;
use procscope::{ExitStatusSource, MembershipCheck, PidFd};

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
