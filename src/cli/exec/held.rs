//! `procscope exec` where no cgroup can be written: the command is held.
//!
//! A subreaper must be an ancestor of every process it keeps, so `exec`
//! cannot become the command here. It stays in front of it instead, as the
//! gateway of a session of one command contained with a holder
//! ([`procscope::Containment::Holders`]):
//!
//! ```text
//! gateway ── procscope exec ── holder (subreaper) ── command
//!                                                  └─ what it leaves (setsid helpers, daemons)
//! ```
//!
//! - Every signal the gateway can send it (all but SIGKILL, SIGSTOP and
//!   SIGCHLD) is forwarded to the command, through the command's pidfd.
//! - When the command exits, what it left gets SIGTERM, the grace, then
//!   SIGKILL; `exec` then exits as the command did: the same code, or killed
//!   by the same signal.
//! - When the owner dies, or `procscope end`/`sweep` asks through the
//!   registry ([`procscope::held`]), the session is ended the same way.
//! - When `exec` itself is SIGKILLed (a gateway's escalation), its holder
//!   sees its control pipe end and SIGKILLs the whole tree.
//!
//! What the gateway loses against a cgroup: the pid it holds is `exec`'s,
//! not the command's.

use std::time::Duration;

use procscope::held::{self, Registration};
use procscope::{Command, Containment, Error, Limits, Owner, PidFd, Signal, Supervisor};
use tokio::signal::unix::{SignalKind, signal};

use super::fail;

/// The signals forwarded to the command: every one a process can catch
/// that is not synchronous (SIGSEGV and the like) or SIGCHLD.
const FORWARDED: [Signal; 13] = [
    Signal::HUP,
    Signal::INT,
    Signal::QUIT,
    Signal::USR1,
    Signal::USR2,
    Signal::ALARM,
    Signal::TERM,
    Signal::CONT,
    Signal::TSTP,
    Signal::TTIN,
    Signal::TTOU,
    Signal::WINCH,
    Signal::POWER,
];

pub fn run(
    mut cmd: Command,
    owner: Owner,
    owner_fd: PidFd,
    id: String,
    limits: Limits,
    grace: Duration,
    seal: bool,
) -> i32 {
    if seal {
        eprintln!(
            "procscope exec: --seal needs a session cgroup to seal the command into, and the command would be \
             held here (no cgroup2 can be written); leave --seal out, or run where cgroup2 is writable \
             (README, \"Containers\")"
        );
        return super::WRAPPER_FAILED;
    }
    let _span = tracing::info_span!("exec", program = %cmd.get_program().to_string_lossy()).entered();
    super::super::run_async(async move {
        match held(&mut cmd, owner, owner_fd, &id, &limits, grace).await {
            Ok(status) => held::exit_as(status),
            Err(e) => fail(&e),
        }
    })
}

/// How the command's session came to an end.
enum Ending {
    /// The command exited.
    Exited(std::process::ExitStatus),
    /// `procscope end` or `sweep` asked, through the registry.
    Asked(held::EndRequest),
    /// The owner died.
    OwnerGone,
}

async fn held(
    cmd: &mut Command,
    owner: Owner,
    owner_fd: PidFd,
    id: &str,
    limits: &Limits,
    grace: Duration,
) -> Result<std::process::ExitStatus, Error> {
    let sup = Supervisor::builder().containment(Containment::Holders).grace(grace).start().await?;
    // Limits are refused here, and a required seal at the spawn, before the
    // registration is left behind.
    let session = sup.session_with_limits(id, limits)?;
    let registration = Registration::new(&held::run_dir(), owner, id, grace)?;
    // Installed before the command starts: a signal that comes meanwhile
    // waits for it.
    let (tx, mut signals) = tokio::sync::mpsc::unbounded_channel();
    for sig in FORWARDED {
        let mut stream = signal(SignalKind::from_raw(sig.as_raw())).map_err(|e| Error::Io {
            op: "install a signal handler",
            path: "/proc/self".into(),
            source: e,
        })?;
        let tx = tx.clone();
        tokio::spawn(async move { while stream.recv().await.is_some() && tx.send(sig).is_ok() {} });
    }
    drop(tx);
    let mut child = session.spawn(cmd)?;
    tracing::debug!(event = "exec.held", pid = child.id(), session = id, "the command runs, held");
    let ending = loop {
        tokio::select! {
            st = child.wait() => break Ending::Exited(st?),
            Some(sig) = signals.recv() => {
                let _ = child.signal(sig);
            }
            req = registration.next_request() => break Ending::Asked(req),
            _ = owner_fd.exited() => break Ending::OwnerGone,
        }
    };
    let grace = match &ending {
        Ending::Asked(req) => req.grace,
        _ => grace,
    };
    // What the command left (or the command too, when asked or orphaned).
    let closed = session.close_within(grace).await;
    let status = match &ending {
        Ending::Exited(st) => *st,
        _ => child.wait().await?,
    };
    if let Ending::Asked(req) = ending {
        match &closed {
            Ok(t) => req.reply(t).await,
            Err(e) => req.reply_error(&e.to_string()).await,
        }
    }
    let _ = sup.shutdown().await;
    drop(registration);
    closed?;
    Ok(status)
}
