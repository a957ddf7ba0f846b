//! procscope as a `tokio::process` user writes it: `output()`, `status()`,
//! `wait_with_output()`, a `Stdio` from a `File`, and `?` in a function that
//! returns `io::Result`. Every command runs in a session, and the session's
//! end takes whatever the commands left running with it.
//!
//! ```text
//! sudo cargo run --example tokio_shaped            # a root procscope finds
//! sudo cargo run --example tokio_shaped -- DIR     # or a cgroup2 directory
//! ```
//!
//! Prints one line per step and ends with `ok`.

use std::io::{self, Write};

use procscope::{Command, Stdio, Supervisor};
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> io::Result<()> {
    let mut builder = Supervisor::builder();
    if let Some(root) = std::env::args_os().nth(1) {
        builder = builder.root(root);
    }
    // `?` turns procscope's errors into io::Error, as in tokio::process code.
    let supervisor = builder.start().await?;
    let session = supervisor.session("tokio-shaped")?;

    // output(): stdout and stderr captured, stdin /dev/null.
    let out = session.output(Command::new("uname").arg("-s")).await?;
    println!("output: status {}, stdout {:?}", out.status, String::from_utf8_lossy(&out.stdout).trim());
    assert!(out.status.success());

    // status(): the gateway's own stdio; here a failing command.
    let status = session.status(Command::new("sh").args(["-c", "exit 3"])).await?;
    println!("status: {status}");
    assert_eq!(status.code(), Some(3));

    // A File as stdin.
    let path = std::env::temp_dir().join(format!("procscope-tokio-shaped-{}", std::process::id()));
    std::fs::File::create(&path)?.write_all(b"one\ntwo\nthree\n")?;
    let input = std::fs::File::open(&path)?;
    std::fs::remove_file(&path)?;
    let out = session.output(Command::new("wc").arg("-l").stdin(input)).await?;
    println!("stdin from a file: wc -l says {}", String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");

    // spawn() + a piped stdin + wait_with_output().
    let mut child =
        session.spawn(Command::new("tr").args(["a-z", "A-Z"]).stdin(Stdio::piped()).stdout(Stdio::piped()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(b"contained\n").await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    println!("wait_with_output: {:?}", String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(out.stdout, b"CONTAINED\n");

    // A daemon the command leaves behind (a double fork) is in the session:
    // the session's end takes it.
    let out = session.output(Command::new("sh").args(["-c", "(sleep 600 >/dev/null 2>&1 &) ; echo started"])).await?;
    println!("left behind: {}", String::from_utf8_lossy(&out.stdout).trim());
    let ended = session.close().await?;
    println!("close: {} signalled, {} ended by SIGTERM, {} killed", ended.signalled, ended.terminated, ended.killed);
    assert!(ended.terminated + ended.killed >= 1, "the daemon was ended with the session");

    supervisor.shutdown().await?;
    println!("ok");
    Ok(())
}
