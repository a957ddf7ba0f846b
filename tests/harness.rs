//! The harness's own leak checks have teeth, in whichever runner runs them
//! (`cargo nextest`: a process per test; `cargo test`: the tests of a binary
//! one after another in one process): each of these tests leaks one kind of
//! thing on purpose, and `TestEnv::finish` must fail it. And the harness's
//! view of a cgroup tree holds while the tree changes under it.

mod common;

use std::time::Duration;

use common::*;
use procscope::{Command, Stdio};

#[tokio::test]
#[should_panic(expected = "child processes (or zombies) left behind")]
async fn a_zombie_fails_the_test() {
    let env = TestEnv::new();
    // Exits at once and is never waited for: a zombie of this process. The
    // check lists it, then reaps it before it fails the test.
    let child = std::process::Command::new("true").spawn().unwrap();
    let pidfd = procscope::PidFd::open(child.id()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), pidfd.exited()).await.unwrap().unwrap();
    drop(pidfd);
    std::mem::forget(child);
    env.finish().await;
}

#[tokio::test]
#[should_panic(expected = "fds leaked")]
async fn a_leaked_fd_fails_the_test() {
    let env = TestEnv::new();
    // Stays open for the rest of the process: harmless, and no later test's
    // baseline counts it (each takes its own).
    std::mem::forget(std::fs::File::open("/dev/null").unwrap());
    env.finish().await;
}

#[tokio::test]
#[should_panic(expected = "cgroups left behind")]
async fn a_leftover_cgroup_fails_the_test() {
    let env = TestEnv::new();
    env.cgroup("forgotten");
    env.finish().await;
}

#[tokio::test]
#[should_panic(expected = "processes left in the test's cgroups")]
async fn a_process_left_in_a_cgroup_fails_the_test() {
    let env = TestEnv::new();
    let cg = env.cgroup("busy");
    let child = Command::new("sleep").arg("600").stdin(Stdio::null()).spawn_in(&cg).unwrap();
    // Neither killed nor waited for, nor handed to the reaper: the check must
    // see it, and its cleanup kills and reaps it before failing the test.
    std::mem::forget(child);
    env.finish().await;
}

/// A guardian removes an instance while a test lists the tree (a container's
/// `settle`, say): the walk leaves out what went, and never fails the test.
/// The control walks the same churning tree the strict way, reading each
/// listed directory with `unwrap`, and must be seen to hit the race.
#[tokio::test]
async fn a_cgroup_removed_while_the_tree_is_walked_is_left_out() {
    let env = TestEnv::new();
    let top = env.cgroup("walked");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (top, stop) = (top.path().to_owned(), stop.clone());
        std::thread::spawn(move || {
            let chain = [top.join("i"), top.join("i/s"), top.join("i/s/c")];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for d in &chain {
                    std::fs::create_dir(d).unwrap();
                }
                for d in chain.iter().rev() {
                    std::fs::remove_dir(d).unwrap();
                }
            }
        })
    };
    fn strict(dir: &std::path::Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                strict(&e.path())?;
            }
        }
        Ok(())
    }
    let whole = ["i", "i/s", "i/s/c"].map(std::path::PathBuf::from);
    let (mut walks, mut raced) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (raced < 3 || walks < 2000) && std::time::Instant::now() < deadline {
        // The harness's walk: only ever a prefix of the chain, in order.
        let seen = cgroup_dirs(top.path());
        assert!(whole.starts_with(&seen), "not a part of the chain: {seen:?}");
        walks += 1;
        // The control.
        if strict(top.path()).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            raced += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    env.root.remove_child(top.name()).unwrap();
    drop(top);
    assert!(raced >= 3, "control: the strict walk never met a removed directory in {walks} walks");
    env.finish().await;
}
