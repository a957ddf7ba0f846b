//! The only module with `unsafe` code.
//!
//! - [`spawn`]: `clone3` and the child's steps between clone and `execve`, all of
//!   them async-signal-safe.
//! - [`seal`]: the child's sealing steps (cgroup and mount namespaces, read-only
//!   cgroup mounts), async-signal-safe as well.
//! - [`hook`]: the constructor that turns a re-executed program into the
//!   guardian before its `main`, and the guardian's `fork`.
//! - [`signal`]: signal dispositions, used by the guardian.
//! - [`fsuid`]: the guardian's filesystem uid, for writing into its spool.
//!
//! Everything else in the crate is `#![deny(unsafe_code)]` and goes through the
//! safe functions exported here.
#![allow(unsafe_code)]

pub(crate) mod async_fd;
pub(crate) mod fsuid;
pub(crate) mod hook;
pub(crate) mod seal;
pub(crate) mod signal;
pub(crate) mod spawn;
