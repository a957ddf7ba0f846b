//! The tokio-shaped API: what a `tokio::process` user reaches for works the
//! same way on a contained child, and errors convert both ways.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use common::*;
use procscope::{ChildStage, Command, Error, PidFd, Session, Signal, Stdio, Supervisor};
use tokio::io::AsyncWriteExt;

async fn supervisor(env: &TestEnv) -> Supervisor {
    Supervisor::builder().root(env.path()).grace(Duration::from_millis(300)).start().await.unwrap()
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
}

async fn end(session: Session) {
    let t = session.close().await.unwrap();
    assert!(t.removed, "{t:?}");
}

#[tokio::test]
async fn output_and_status_have_tokios_defaults() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env).await;
        let s = sup.session("defaults").unwrap();

        // output(): both outputs captured, stdin /dev/null (cat ends at once).
        let out = s.output(&mut sh("echo out; echo err >&2; cat; exit 4")).await.unwrap();
        assert_eq!((out.status.code(), &out.stdout[..], &out.stderr[..]), (Some(4), &b"out\n"[..], &b"err\n"[..]));

        // What the command sets stays set: stdout to /dev/null, stdin from a file.
        let mut file = tempfile("input");
        file.write_all(b"from the file").unwrap();
        let input = std::fs::File::open(tempfile_path("input")).unwrap();
        let out = s.output(sh("cat; echo gone >&2").stdin(input).stdout(Stdio::null())).await.unwrap();
        assert_eq!((&out.stdout[..], &out.stderr[..]), (&b""[..], &b"gone\n"[..]));
        let out = s.output(Command::new("cat").arg(tempfile_path("input"))).await.unwrap();
        assert_eq!(out.stdout, b"from the file");
        std::fs::remove_file(tempfile_path("input")).unwrap();

        // status() closes pipes nobody would read: a child writing more than
        // a pipe holds gets EPIPE instead of blocking for ever.
        let big = s.status(sh("head -c 1000000 /dev/zero").stdout(Stdio::piped())).await.unwrap();
        assert!(!big.success(), "{big}");

        // status(): the exit code and a death by signal, as std reports them.
        assert_eq!(s.status(&mut sh("exit 7")).await.unwrap().code(), Some(7));
        let killed = s.status(&mut sh("kill -TERM $$")).await.unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed), Some(libc::SIGTERM));

        end(s).await;
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("procscope-tokio-api-{}-{name}", std::process::id()))
}

fn tempfile(name: &str) -> std::fs::File {
    std::fs::File::create(tempfile_path(name)).unwrap()
}

#[tokio::test]
async fn stdio_converts_from_files_pipes_and_fds() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env).await;
        let s = sup.session("stdio").unwrap();

        // A File as stdout.
        let out = tempfile("stdout");
        assert!(s.status(sh("echo to-a-file").stdout(out)).await.unwrap().success());
        assert_eq!(std::fs::read(tempfile_path("stdout")).unwrap(), b"to-a-file\n");
        std::fs::remove_file(tempfile_path("stdout")).unwrap();

        // std::io::pipe ends as stdin and stdout.
        let (mut from_child, to_us) = std::io::pipe().unwrap();
        let (to_child, mut into_child) = std::io::pipe().unwrap();
        let mut child = s.spawn(Command::new("tr").args(["a-z", "A-Z"]).stdin(to_child).stdout(to_us)).unwrap();
        into_child.write_all(b"piped\n").unwrap();
        drop(into_child);
        assert!(child.wait().await.unwrap().success());
        let mut got = String::new();
        from_child.read_to_string(&mut got).unwrap();
        assert_eq!(got, "PIPED\n", "our copies of the child's ends are closed: EOF came");

        // One contained child's stdout as another's stdin (`a | b`).
        let mut producer = s.spawn(sh("echo one; echo two").stdout(Stdio::piped())).unwrap();
        let pipe = Stdio::try_from(producer.stdout.take().unwrap()).unwrap();
        let out = s.output(Command::new("wc").arg("-l").stdin(pipe)).await.unwrap();
        assert!(producer.wait().await.unwrap().success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

        // An OwnedFd, and a std::process::Child's stdout (a pipeline).
        let fd: OwnedFd = tempfile("fd").into();
        assert!(s.status(sh("echo via-fd").stdout(fd)).await.unwrap().success());
        assert_eq!(std::fs::read(tempfile_path("fd")).unwrap(), b"via-fd\n");
        std::fs::remove_file(tempfile_path("fd")).unwrap();
        let mut producer =
            std::process::Command::new("echo").arg("from std").stdout(std::process::Stdio::piped()).spawn().unwrap();
        let out = s.output(Command::new("cat").stdin(producer.stdout.take().unwrap())).await.unwrap();
        assert!(producer.wait().unwrap().success());
        assert_eq!(out.stdout, b"from std\n");

        end(s).await;
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn wait_with_output_signal_and_kill_behave_as_in_tokio() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env).await;
        let s = sup.session("child").unwrap();

        let mut child = s
            .spawn(sh("cat; echo done >&2").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()))
            .unwrap();
        child.stdin.as_mut().unwrap().write_all(b"echoed").await.unwrap();
        // wait_with_output closes stdin itself, so cat ends.
        let out = child.wait_with_output().await.unwrap();
        assert_eq!((out.status.code(), &out.stdout[..], &out.stderr[..]), (Some(0), &b"echoed"[..], &b"done\n"[..]));

        let mut child = s.spawn(Command::new("sleep").arg("60")).unwrap();
        child.signal(Signal::from_raw(libc::SIGUSR1).unwrap()).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGUSR1));
        // Reaped: signalling again is a no-op, never a signal to a reused pid.
        child.signal(Signal::KILL).unwrap();

        let mut child = s.spawn(Command::new("sleep").arg("60")).unwrap();
        let status = child.kill().await.unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert_eq!(child.try_wait().unwrap(), Some(status), "the status stays");

        end(s).await;
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn kill_on_drop_kills_the_child_when_asked_and_only_then() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env).await;
        let s = sup.session("drop").unwrap();

        let asked = s.spawn(Command::new("sleep").arg("60").kill_on_drop(true)).unwrap();
        let not_asked = s.spawn(Command::new("sleep").arg("60")).unwrap();
        let (watch_asked, watch_not) = (PidFd::open(asked.id()).unwrap(), PidFd::open(not_asked.id()).unwrap());
        drop(asked);
        drop(not_asked);
        tokio::time::timeout(Duration::from_secs(10), watch_asked.exited()).await.expect("killed on drop").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(watch_not.is_alive(), "a dropped handle without kill_on_drop leaves the child to its session");

        let t = s.close().await.unwrap();
        assert_eq!((t.signalled, t.removed), (1, true), "{t:?}");
        assert!(!watch_not.is_alive());
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn process_group_is_the_childs_and_excludes_setsid() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env).await;
        let s = sup.session("pgroup").unwrap();

        let mut child = s.spawn(Command::new("sleep").arg("60").process_group(0)).unwrap();
        let pgid = rustix::process::getpgid(rustix::process::Pid::from_raw(child.id() as i32)).unwrap();
        assert_eq!(pgid.as_raw_nonzero().get() as u32, child.id(), "a group of its own");
        assert_ne!(pgid, rustix::process::getpgrp(), "not the test's group");
        child.kill().await.unwrap();

        // Both at once: refused before anything starts.
        let before = s.cgroup().unwrap().procs().unwrap();
        let err = s.spawn(Command::new("sleep").arg("60").process_group(0).setsid(true)).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { what: "process group", .. }), "{err}");
        assert!(err.to_string().contains("either setsid or a process group"), "{err}");
        let err = s.spawn(Command::new("sleep").arg("60").process_group(-3)).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { what: "process group", .. }), "{err}");
        assert_eq!(s.cgroup().unwrap().procs().unwrap(), before, "nothing was started");

        // A group that does not exist: the child's setpgid fails, typed.
        let err = s.spawn(Command::new("sleep").arg("60").process_group(i32::MAX)).unwrap_err();
        assert!(matches!(err, Error::Spawn { stage: ChildStage::ProcessGroup, .. }), "{err}");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        assert_eq!(s.cgroup().unwrap().procs().unwrap(), before, "the failed child is gone");

        end(s).await;
        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// `?` works in both directions: procscope errors in an `io::Result`
/// function (tokio::process style), io errors in a `procscope::Result` one.
#[tokio::test]
async fn errors_convert_both_ways() {
    let env = TestEnv::new();
    within(30, async {
        let sup = supervisor(&env).await;

        async fn tokio_style(sup: &Supervisor) -> std::io::Result<std::process::ExitStatus> {
            let s = sup.session("io")?;
            let status = s.status(&mut Command::new("procscope-no-such-program")).await?;
            Ok(status)
        }
        let err = tokio_style(&sup).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("procscope-no-such-program"), "{err}");
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>()).expect("the procscope error inside");
        assert!(matches!(inner, Error::ProgramNotFound { .. }), "{inner}");

        async fn procscope_style(sup: &Supervisor) -> procscope::Result<Vec<u8>> {
            let s = sup.session("crate")?;
            let out = s.output(&mut Command::new("true")).await?;
            let read = std::fs::read("/nonexistent/file")?;
            Ok([out.stdout, read].concat())
        }
        let err = procscope_style(&sup).await.unwrap_err();
        assert!(matches!(err, Error::Os { op: "i/o", pid: None, .. }), "{err}");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);

        // Round trips give back what went in.
        let io_back = std::io::Error::from(err);
        assert_eq!(io_back.raw_os_error(), Some(libc::ENOENT), "an io::Error comes back out as it was");
        let typed = Error::from(std::io::Error::from(Error::SessionExists { id: "x".into() }));
        assert!(matches!(typed, Error::SessionExists { .. }), "a procscope error comes back typed: {typed}");

        sup.shutdown().await.unwrap();
    })
    .await;
    env.finish().await;
}

/// `examples/tokio_shaped.rs`, the example for tokio users, runs to its end
/// against a test root and leaves nothing behind.
#[tokio::test]
async fn the_tokio_example_runs() {
    let env = TestEnv::new();
    let example = std::path::Path::new(env!("CARGO_BIN_EXE_procscope")).with_file_name("examples").join("tokio_shaped");
    assert!(example.exists(), "{} is missing: `cargo build --examples` builds it", example.display());
    let out = within(60, tokio::process::Command::new(&example).arg(env.path()).output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("wait_with_output: \"CONTAINED\""), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("ok"), "{stdout}");
    env.wait_root_empty().await;
    env.finish().await;
}
