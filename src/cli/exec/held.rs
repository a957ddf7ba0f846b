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
//! - Every named signal sent to it that can be caught (but SIGCHLD and
//!   SIGPIPE) is forwarded to the command, through the command's pidfd;
//!   not a terminal's (`^C`), which reached the command in the same
//!   process group already. At a stop signal `exec` stops itself too.
//! - When the command exits, what it left gets SIGTERM, the grace, then
//!   SIGKILL; `exec` then exits as the command did: the same code, or killed
//!   by the same signal.
//! - When the owner dies, or `procscope end`/`sweep` asks through the
//!   registry ([`procscope::held`]), the session is ended the same way.
//! - When `exec` itself is SIGKILLed (a gateway's escalation), its holder
//!   sees its control pipe end and SIGKILLs the whole tree.
//!
//! What the gateway loses against a cgroup: the pid it holds is `exec`'s,
//! not the command's, and an exit by a signal has no core-dump flag.

use std::time::Duration;

use procscope::held::{self, Registration};
use procscope::{Command, Containment, Error, Limits, Owner, PidFd, Signal, Supervisor};

use super::fail;

/// The signals forwarded to the command: every named one a process can
/// catch but SIGCHLD, and SIGPIPE (which this process ignores, and could
/// raise itself). Real-time signals are not forwarded (procscope's
/// [`Signal`] has none): they end `exec`, and its holder then kills the
/// tree.
fn forwarded() -> Vec<i32> {
    (1..32)
        .filter_map(Signal::from_raw)
        .filter(|s| ![Signal::KILL, Signal::STOP, Signal::CHILD, Signal::PIPE].contains(s))
        .map(Signal::as_raw)
        .collect()
}

/// Job control: the signals that stop a job.
const STOPS: [Signal; 3] = [Signal::TSTP, Signal::TTIN, Signal::TTOU];

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
    // First, before any thread starts: from here on these signals wait to
    // be forwarded instead of acting on this process.
    let signals = match held::Signals::block(&forwarded()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let _span = tracing::info_span!("exec", program = %cmd.get_program().to_string_lossy()).entered();
    super::super::run_async(async move {
        match held(&mut cmd, owner, owner_fd, &id, &limits, grace, signals).await {
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
    signals: held::Signals,
) -> Result<std::process::ExitStatus, Error> {
    let signals = signals.reader()?;
    let sup = Supervisor::builder().containment(Containment::Holders).grace(grace).start().await?;
    // Limits are refused here, before anything is registered.
    let session = sup.session_with_limits(id, limits)?;
    // Registered where the run directory can be written; elsewhere (a
    // gateway that is not root, say) the command runs all the same, and
    // only `end`, `ps` and `sweep` cannot find it.
    let mut registration = match Registration::new(&held::run_dir(), owner, id, grace) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(
                event = "exec.unregistered",
                error = %e,
                "the command runs unregistered: `procscope end`, `ps` and `sweep` will not find it"
            );
            None
        }
    };
    let mut requests = registration.as_mut().map(Registration::serve);
    let mut child = session.spawn(cmd)?;
    tracing::debug!(event = "exec.held", pid = child.id(), session = id, "the command runs, held");
    let ending = loop {
        tokio::select! {
            st = child.wait() => break Ending::Exited(st?),
            got = signals.recv() => {
                let got = got?;
                // A terminal's signal went to the whole foreground group,
                // the command included: not twice.
                let forward = !got.from_terminal;
                tracing::debug!(
                    event = "exec.signal",
                    signal = got.signal,
                    from_terminal = got.from_terminal,
                    forwarded = forward,
                    "a signal for the command"
                );
                if forward && let Some(sig) = Signal::from_raw(got.signal) {
                    let _ = child.signal(sig);
                }
                // A stopped job stops as a whole, so that its shell sees it.
                if Signal::from_raw(got.signal).is_some_and(|s| STOPS.contains(&s)) {
                    held::stop_self(got.signal);
                }
            }
            Some(req) = async { match requests.as_mut() { Some(r) => r.recv().await, None => None } } => {
                break Ending::Asked(req);
            }
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
    // Requests that came meanwhile are answered too: the session has ended.
    let late = requests.map(held::Requests::stop).unwrap_or_default();
    let nothing = procscope::Termination::default();
    let asked = match ending {
        Ending::Asked(req) => Some(req),
        _ => None,
    };
    for (i, req) in asked.into_iter().chain(late).enumerate() {
        match &closed {
            // What was ended is told once.
            Ok(t) => req.reply(if i == 0 { t } else { &nothing }).await,
            Err(e) => req.reply_error(&e.to_string()).await,
        }
    }
    let _ = sup.shutdown().await;
    drop(registration);
    // The command ran: its status is what `exec` ends with, even if what
    // it left could not be ended (the holder kills that as `exec` exits).
    if let Err(e) = closed {
        eprintln!("procscope exec: ending what the command left: {e}");
    }
    Ok(status)
}
