//! Holders: a command started from a subreaper of its own, so that its tree
//! stays together where no cgroup can be written (the `holder` module).
//! Nothing here uses a cgroup; `TestEnv` is for its leak checks.

mod common;

use std::time::Duration;

use common::{FIXTURE, TestEnv, within};
use procscope::{Command, PidFd, SpawnMechanism, Stdio};

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

/// The command line of `pid` once it starts with `prefix` (at most 5 s): a
/// vfork parent goes on once the child's `execve` has released the old
/// memory, and for a moment the child's command line may still be read from
/// that memory (the parent's, on 5.10) or be empty.
async fn wait_cmdline(pid: u32, prefix: &str) -> String {
    let mut c = String::new();
    for _ in 0..500 {
        c = cmdline(pid);
        if c.starts_with(prefix) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} never showed a command line starting with {prefix:?}: {c:?}");
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (at most 10 s) until `members()` is the fixture child
/// (`daemon sleep 3600`) and the helper it daemonized, settled: `setsid`'s
/// short-lived parent gone, and the helper re-parented to `holder` (a walk
/// may list the tree while that parent exits; seen on 5.10 under TCG).
/// Returns the helper's pid.
async fn settled(members: impl Fn() -> Vec<PidFd>, child: u32, holder: u32) -> u32 {
    let mut last = Vec::new();
    for _ in 0..1000 {
        let m = members();
        last = m.iter().map(|p| (p.pid(), cmdline(p.pid()))).collect::<Vec<_>>();
        let helper: Vec<u32> = m
            .iter()
            .map(PidFd::pid)
            .filter(|&p| p != child && cmdline(p).starts_with(FIXTURE) && !cmdline(p).contains("daemon"))
            .collect();
        if m.len() == 2
            && m.iter().any(|p| p.pid() == child)
            && helper.len() == 1
            && parent_of(helper[0]) == Some(holder)
        {
            return helper[0];
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the held tree never settled at the child and its helper: {last:?}");
}

#[tokio::test]
async fn a_held_commands_escapee_stays_below_its_holder_and_ending_the_holder_leaves_nothing() {
    within(60, async {
        let env = TestEnv::new();
        let mut cmd = Command::new(FIXTURE);
        cmd.args(["daemon", "sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Null);
        let (mut child, holder) = procscope::testing::spawn_held(&mut cmd).unwrap();
        assert_eq!(child.spawn_mechanism(), SpawnMechanism::Holder);
        assert!(!child.is_sealed());
        // The pid the gateway holds is the command's own, a child of the holder.
        // (A vfork parent goes on once the child's exec has released the
        // old memory, before its command line is in place.)
        let command = wait_cmdline(child.id(), FIXTURE).await;
        assert!(command.contains("daemon sleep 3600"), "{command}");
        assert_eq!(parent_of(child.id()), Some(holder.pid()));
        let holder_command = wait_cmdline(holder.pid(), "procscope-holder").await;
        assert!(holder_command.starts_with("procscope-holder"), "{holder_command}");

        // `setsid --fork` left a helper in a session of its own, whose parent
        // exited: re-parented to the holder, not to init.
        let helper = settled(|| holder.members(), child.id(), holder.pid()).await;
        assert_eq!(parent_of(helper), Some(holder.pid()), "the escapee is the holder's");
        assert_ne!(std::fs::read_link(format!("/proc/{helper}/ns/pid")).ok(), None, "the helper is a live process");
        let members = holder.members();
        assert_eq!(child.try_wait().unwrap(), None);

        let signalled = holder.end(Duration::from_secs(2)).await.unwrap();
        assert_eq!(signalled, 2, "SIGTERM to the command and its escapee");
        assert!(members.iter().all(|m| !m.is_alive()), "a member survived the end");
        let status = child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
        drop((members, child));
        env.finish().await;
    })
    .await;
}

/// The control: the same command started without a holder leaves its
/// helper outside anything the gateway knows (re-parented to init or the
/// nearest subreaper above the gateway).
#[tokio::test]
async fn control_without_a_holder_the_escapee_leaves_the_gateways_tree() {
    within(60, async {
        let env = TestEnv::new();
        let tag = format!("holders-control-{}", common::nanos());
        let mut child = std::process::Command::new(FIXTURE)
            .args(["daemon", "sleep", "3600"])
            .env("PSTAG", &tag)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut helper = None;
        for _ in 0..1000 {
            let pids = common::tagged(&tag);
            helper = pids
                .into_iter()
                .map(|p| p as u32)
                .find(|&p| p != child.id() && !cmdline(p).contains("daemon") && cmdline(p).starts_with(FIXTURE));
            if helper.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let helper = helper.expect("the helper started");
        let parent = parent_of(helper).unwrap();
        assert_ne!(parent, child.id());
        assert_ne!(parent, std::process::id(), "escaped: neither the command's nor the gateway's");
        let (pidfd, own) = (PidFd::open(helper).unwrap(), PidFd::open(child.id()).unwrap());
        pidfd.send_signal(procscope::Signal::KILL).unwrap();
        own.send_signal(procscope::Signal::KILL).unwrap();
        child.wait().unwrap();
        assert!(common::settle(&tag, 5).await.is_empty());
        drop((pidfd, own));
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_held_commands_status_and_pid_are_its_own() {
    within(60, async {
        use std::os::unix::process::ExitStatusExt;
        let env = TestEnv::new();
        let (mut child, holder) = procscope::testing::spawn_held(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(3));
        holder.wait_gone().await.unwrap();
        assert!(!holder.is_alive(), "a holder with an empty tree exits");
        drop((child, holder));

        let (mut child, holder) =
            procscope::testing::spawn_held(Command::new("sh").args(["-c", "kill -SEGV $$"])).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}");
        holder.wait_gone().await.unwrap();
        drop((child, holder));

        let mut cmd = Command::new(FIXTURE);
        cmd.args(["self", "ready", "sleep", "3600"]).stdout(Stdio::Piped);
        let (mut child, holder) = procscope::testing::spawn_held(&mut cmd).unwrap();
        let mut out = child.stdout.take().unwrap();
        let lines = common::read_until(&mut out, "ready").await;
        assert_eq!(common::field(&lines, "pid"), child.id().to_string(), "the command's own pid");
        child.signal(procscope::Signal::TERM).unwrap();
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGTERM));
        holder.wait_gone().await.unwrap();
        drop((out, child, holder));
        env.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_command_that_cannot_start_leaves_no_holder() {
    within(60, async {
        let env = TestEnv::new();
        let dir = std::env::temp_dir().join(format!("procscope-holders-{}", common::nanos()));
        std::fs::create_dir(&dir).unwrap();
        let bad = dir.join("not-a-program");
        std::fs::write(&bad, b"\x00\x01 no format").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = procscope::testing::spawn_held(&mut Command::new(&bad)).unwrap_err();
        match &err {
            procscope::Error::Spawn { stage, source, .. } => {
                assert_eq!(*stage, procscope::ChildStage::Exec, "{err}");
                assert_eq!(source.raw_os_error(), Some(libc::ENOEXEC), "{err}");
            }
            e => panic!("{e}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
        env.finish().await;
    })
    .await;
}

/// A gateway SIGKILLed: each holder sees its control pipe end and SIGKILLs
/// its tree, escapees included.
#[tokio::test]
async fn the_holders_end_their_trees_when_the_gateway_dies() {
    within(60, async {
        let env = TestEnv::new();
        let tag = format!("holders-gateway-{}", common::nanos());
        let mut gw = std::process::Command::new(FIXTURE)
            .args(["held-daemons", "3"])
            .env("PSTAG", &tag)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = common::read_until_ready(&mut gw);
        let holders: Vec<u32> =
            lines.iter().filter_map(|l| l.strip_prefix("holder=")).map(|p| p.parse().unwrap()).collect();
        let children: Vec<u32> =
            lines.iter().filter_map(|l| l.strip_prefix("child=")).map(|p| p.parse().unwrap()).collect();
        assert_eq!(holders.len(), 3);
        let mut members = Vec::new();
        for (h, c) in holders.iter().zip(&children) {
            let holder = PidFd::open(*h).unwrap();
            let hp = rustix::process::Pid::from_raw(*h as i32).unwrap();
            settled(|| procscope_members(hp), *c, *h).await;
            members.extend(procscope_members(hp));
            members.push(holder);
        }
        assert_eq!(members.len(), 9, "three holders, each with a command and its escapee");
        gw.kill().unwrap();
        gw.wait().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while members.iter().any(PidFd::is_alive) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let alive: Vec<String> = members.iter().filter(|m| m.is_alive()).map(|m| cmdline(m.pid())).collect();
        assert!(alive.is_empty(), "survived the gateway: {alive:?}");
        assert!(common::settle(&tag, 5).await.is_empty());
        drop(members);
        env.finish().await;
    })
    .await;
}

/// The tree below `holder` as the test reads it: every live descendant.
fn procscope_members(holder: rustix::process::Pid) -> Vec<PidFd> {
    let mut out = Vec::new();
    let mut queue = vec![holder.as_raw_nonzero().get() as u32];
    while let Some(p) = queue.pop() {
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for kid in text.split_whitespace().filter_map(|k| k.parse::<u32>().ok()) {
                if let Ok(fd) = PidFd::open(kid) {
                    queue.push(kid);
                    out.push(fd);
                }
            }
        }
    }
    out
}

/// A gateway that ignores SIGCHLD (its children are reaped by the kernel
/// then): the holder puts SIGCHLD back to its default, or it would never
/// learn the command's status and the wait would hang.
#[tokio::test]
async fn a_gateway_that_ignores_sigchld_still_gets_the_status() {
    within(60, async {
        let env = TestEnv::new();
        let out = tokio::process::Command::new(FIXTURE)
            .args(["held-status", "sleep 0.2; exit 3"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text.lines().collect::<Vec<_>>(), ["status=3", "holder=gone"], "{text}");
        env.finish().await;
    })
    .await;
}

/// Where `clone3` is refused with ENOSYS (a container's default seccomp
/// profile without CAP_SYS_ADMIN), the holder and its command are started
/// with `clone(2)`: the escapee is still the holder's, and the status the
/// command's.
#[tokio::test]
async fn a_held_command_starts_through_clone_where_clone3_is_refused() {
    within(60, async {
        let env = TestEnv::new();
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread of its own: the filter stays with it.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let result = rt.block_on(async {
                procscope::testing::deny_clone3().map_err(|e| format!("deny clone3: {e}"))?;
                let mut cmd = Command::new(FIXTURE);
                cmd.args(["daemon", "sleep", "3600"]).stdin(Stdio::Null).stdout(Stdio::Null);
                let (mut child, holder) = procscope::testing::spawn_held(&mut cmd).map_err(|e| e.to_string())?;
                let helper = settled(|| holder.members(), child.id(), holder.pid()).await;
                let parent = (parent_of(helper), holder.pid());
                let signalled = holder.end(Duration::from_secs(2)).await.map_err(|e| e.to_string())?;
                use std::os::unix::process::ExitStatusExt;
                let status = child.wait().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((parent, signalled, status.signal()))
            });
            let _ = tx.send(result);
        })
        .join()
        .unwrap();
        let (parent, signalled, signal) = rx.recv().unwrap().unwrap();
        assert_eq!(parent.0, Some(parent.1), "the escapee is the holder's");
        assert_eq!(signalled, 2);
        assert_eq!(signal, Some(libc::SIGTERM));
        env.finish().await;
    })
    .await;
}
