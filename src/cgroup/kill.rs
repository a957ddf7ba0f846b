//! Killing every process of a cgroup: `cgroup.kill`, or freeze → SIGKILL each
//! verified member → thaw.

use std::time::Duration;

use crate::signal::Signal;
use tokio::time::Instant;

use super::{Cgroup, files};
use crate::error::{Error, Result};

/// How a cgroup's processes are killed. Serialized (serde) as its
/// [`as_str`](Self::as_str) name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KillMechanism {
    /// Write `1` to `cgroup.kill` (Linux ≥ 5.14): recursive, atomic against forks.
    CgroupKill,
    /// Freeze the cgroup, SIGKILL every member through a verified pidfd, thaw;
    /// repeated until nothing is left (Linux ≥ 5.2).
    FreezeKillThaw,
    /// No cgroup ([`Containment::Holders`](crate::Containment::Holders)):
    /// the session's holders SIGKILL every process of their trees through
    /// verified pidfds, walking again until nothing is left.
    Holder,
}

impl KillMechanism {
    /// The name used by `procscope doctor` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            KillMechanism::CgroupKill => "cgroup_kill",
            KillMechanism::FreezeKillThaw => "freeze_kill_thaw",
            KillMechanism::Holder => "holder",
        }
    }
}

/// Rounds of the fallback before giving up.
const FALLBACK_ROUNDS: usize = 16;
/// How long to wait for `frozen 1` before killing anyway (a task in
/// uninterruptible sleep can delay freezing).
const FREEZE_WAIT: Duration = Duration::from_millis(500);
/// How long each round waits for the killed processes to go.
const ROUND_WAIT: Duration = Duration::from_millis(500);

impl Cgroup {
    /// SIGKILLs every process in this cgroup and below, with the best mechanism
    /// the kernel has. Processes die asynchronously: wait for
    /// [`wait_empty`](Self::wait_empty) after this.
    ///
    /// The calling process, its ancestors, and the processes a supervisor or
    /// guardian protects (the gateway, the guardian) are never killed: one
    /// found inside is moved back out first.
    ///
    /// # Errors
    /// [`Error::ContainsProtected`] if such a process is inside this cgroup
    /// and cannot be moved out.
    #[doc(alias = "cgroup.kill")]
    pub async fn kill(&self) -> Result<KillMechanism> {
        let mechanism = self.kill_mechanism();
        self.kill_with(mechanism).await?;
        Ok(mechanism)
    }

    /// The mechanism [`kill`](Self::kill) uses on this kernel.
    pub(crate) fn kill_mechanism(&self) -> KillMechanism {
        if self.has_file(files::KILL) { KillMechanism::CgroupKill } else { KillMechanism::FreezeKillThaw }
    }

    /// SIGKILLs every process in this cgroup and below with `mechanism` (to
    /// force the fallback in tests, or when `cgroup.kill` misbehaves).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for [`KillMechanism::CgroupKill`] on a kernel
    /// without `cgroup.kill` (before Linux 5.14): nothing is killed then.
    pub async fn kill_with(&self, mechanism: KillMechanism) -> Result<()> {
        if mechanism == KillMechanism::CgroupKill && !self.has_file(files::KILL) {
            return Err(Error::Unsupported {
                feature: "cgroup.kill",
                fix: "cgroup.kill needs Linux 5.14; KillMechanism::FreezeKillThaw works from Linux 5.2",
            });
        }
        // Never itself: the calling process, its ancestors, the gateway and
        // its guardian are moved out first, or the kill is refused.
        crate::protect::evacuate(self)?;
        match mechanism {
            KillMechanism::CgroupKill => self.write(files::KILL, "1"),
            KillMechanism::FreezeKillThaw => self.freeze_kill_thaw().await,
            KillMechanism::Holder => Err(Error::InvalidInput {
                what: "kill mechanism",
                value: "holder".into(),
                fix: "a cgroup is killed with cgroup_kill or freeze_kill_thaw; holders end sessions without a cgroup"
                    .into(),
            }),
        }
    }

    async fn freeze_kill_thaw(&self) -> Result<()> {
        if !self.has_file(files::FREEZE) {
            return Err(Error::Unsupported {
                feature: "cgroup.freeze",
                fix: "killing a cgroup needs Linux 5.14 (cgroup.kill) or 5.2 (cgroup.freeze)",
            });
        }
        for _ in 0..FALLBACK_ROUNDS {
            self.write(files::FREEZE, "1")?;
            let thaw = Thaw(self);
            // Wait until frozen, so that nothing forks between reading the members
            // and killing them.
            self.wait_events(Some(Instant::now() + FREEZE_WAIT), |e| e.frozen || !e.populated).await?;
            let protected = crate::protect::protected()?;
            let members: Vec<_> = self
                .member_pidfds_recursive()?
                .into_iter()
                .filter(|m| !crate::protect::is_protected(m.raw_pid(), &protected))
                .collect();
            if members.is_empty() {
                return Ok(());
            }
            for member in &members {
                // ESRCH: already gone.
                let sent = member.send_signal(Signal::KILL);
                crate::events::signal_process(self.path(), member.raw_pid(), Signal::KILL, &sent);
            }
            // Frozen tasks die on SIGKILL; thawing lets anything that raced us run
            // into the next round.
            drop(thaw);
            let deadline = Instant::now() + ROUND_WAIT;
            for member in &members {
                let _ = tokio::time::timeout_at(deadline, member.exited()).await;
            }
            if !self.is_populated()? {
                return Ok(());
            }
        }
        Err(Error::io(
            "kill cgroup",
            self.path(),
            std::io::Error::new(std::io::ErrorKind::TimedOut, "processes kept appearing"),
        ))
    }
}

/// Thaws on drop, so that every path out of the fallback — errors included —
/// leaves the cgroup thawed.
struct Thaw<'a>(&'a Cgroup);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.write(files::FREEZE, "0") {
            tracing::warn!(cgroup = %self.0.path().display(), error = %e, "thawing failed");
        }
    }
}
