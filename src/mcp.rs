//! An [rmcp](https://docs.rs/rmcp) client transport over a contained child
//! (Cargo feature `rmcp`).
//!
//! ```no_run
//! # async fn demo(sup: procscope::Supervisor) -> anyhow::Result<()> {
//! use rmcp::ServiceExt;
//!
//! let session = sup.session("job-42")?;
//! let transport = session.spawn_mcp(procscope::Command::new("npx").args(["-y", "@modelcontextprotocol/server-everything"]))?;
//! let client = ().serve(transport).await?;        // the one line that changes
//! let tools = client.list_all_tools().await?;
//! println!("{} tools", tools.len());
//! # Ok(()) }
//! ```
//!
//! # How this differs from rmcp's `TokioChildProcess`
//!
//! | | `TokioChildProcess` | [`ContainedTransport`] |
//! |---|---|---|
//! | on drop | spawns a task that kills the direct child (needs a live tokio runtime at that moment) | kills nothing behind the session's back: the session guard decides — orphan the session or remove it |
//! | grandchildren (`npx` → `node`, daemonized helpers) | not reached | in the session cgroup, ended by the next sweep with `cgroup.kill` |
//! | the child's identity | a pid | a pidfd |
//! | the child's privileges | the gateway's | no capabilities, fds 0–2 only, `no_new_privs` |
//!
//! Ending an MCP session cleanly is ending the procscope session:
//! `session.close().await`, or let it drop and sweep.

use std::future::Future;
use std::io;

use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;

use crate::child::{ChildStdin, ChildStdout, ContainedChild};
use crate::command::{Command, Stdio};
use crate::error::{Error, Result};
use crate::session::Session;

/// An rmcp client transport speaking newline-delimited JSON-RPC over a
/// contained child's stdin and stdout.
pub struct ContainedTransport {
    inner: AsyncRwTransport<RoleClient, ChildStdout, ChildStdin>,
    child: ContainedChild,
}

impl ContainedTransport {
    /// Wraps a child spawned with piped stdin and stdout.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if stdin or stdout was not piped (or already taken).
    pub fn new(mut child: ContainedChild) -> Result<ContainedTransport> {
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::InvalidInput {
                what: "child",
                value: child.id().to_string(),
                fix: "spawn it with Stdio::Piped for stdin and stdout".into(),
            });
        };
        Ok(ContainedTransport { inner: AsyncRwTransport::new_client(stdout, stdin), child })
    }

    /// The server process.
    pub fn child(&self) -> &ContainedChild {
        &self.child
    }
}

impl Transport<RoleClient> for ContainedTransport {
    type Error = io::Error;

    fn send(&mut self, item: TxJsonRpcMessage<RoleClient>) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.inner.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.inner.receive()
    }

    /// Closes the pipes. The server usually exits on EOF; if it does not, its
    /// session's end takes care of it.
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.inner.close()
    }
}

impl Session {
    /// Spawns an MCP stdio server in this session and returns it as an rmcp
    /// client transport (stdin and stdout piped; stderr as `cmd` says).
    pub fn spawn_mcp(&self, cmd: &mut Command) -> Result<ContainedTransport> {
        cmd.stdin(Stdio::Piped).stdout(Stdio::Piped);
        ContainedTransport::new(self.spawn(cmd)?)
    }
}
