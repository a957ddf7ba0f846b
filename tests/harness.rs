//! The harness's own leak checks have teeth, in whichever runner runs them
//! (`cargo nextest`: a process per test; `cargo test`: the tests of a binary
//! one after another in one process): each of these tests leaks one kind of
//! thing on purpose, and `TestEnv::finish` must fail it.

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
