//! Instance cgroups (`i-<pidns>-<pid>-<starttime>`) and their owners.
//!
//! An instance belongs to one supervisor process, named by its pid namespace
//! (the inode of `/proc/self/ns/pid`), pid *and* start time (field 22 of
//! `/proc/<pid>/stat`, clock ticks since boot): a recycled pid is never
//! mistaken for the owner, and two gateways in different pid namespaces (say,
//! both pid 1 in containers started in the same tick) never share an instance. The same facts are kept in procscope's xattrs
//! ([`Cgroup::meta`]: `trusted.procscope.*` on root-owned directories, which
//! children cannot forge), so any process can tell live instances from stale ones.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};

pub(crate) const XATTR_OWNER_PID: &str = "owner_pid";
pub(crate) const XATTR_OWNER_START: &str = "owner_start";
/// The owner's pid namespace (`pid:[4026531836]`): a pid means nothing outside it.
pub(crate) const XATTR_OWNER_PIDNS: &str = "owner_pidns";
pub(crate) const XATTR_CREATED: &str = "created";
pub(crate) const XATTR_SESSION: &str = "session";
pub(crate) const XATTR_STATE: &str = "state";

/// A process identified by pid and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

impl Owner {
    /// The calling process.
    pub fn this_process() -> Result<Owner> {
        let pid = rustix::process::getpid().as_raw_nonzero().get();
        let start = start_time(pid).ok_or_else(|| {
            Error::io("read", "/proc/self/stat", std::io::Error::other("no start time in /proc/self/stat"))
        })?;
        Ok(Owner { pid, start })
    }

    /// The process running now under `pid`, identified by its start time, so
    /// that a later check ([`is_alive`](Self::is_alive)) can tell it from a
    /// process that reuses the pid. `None` if no such process is visible.
    pub fn of(pid: i32) -> Option<Owner> {
        (pid > 0).then(|| start_time(pid)).flatten().map(|start| Owner { pid, start })
    }

    /// Whether this very process still runs (same pid, same start time).
    ///
    /// A zombie has exited: it is not alive, though its parent has not reaped
    /// it yet (a gateway SIGKILLed a moment ago, say).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        parse_start_time(&stat) == Some(self.start) && !matches!(stat_field_of(&stat, 3), Some("Z" | "X"))
    }

    /// The instance cgroup name, `i-<pidns>-<pid>-<start>`, with the calling
    /// process's pid namespace (an owner is always in the namespace of the
    /// process that names its instance: itself, or an ancestor it can see).
    pub fn instance_name(&self) -> String {
        format!("i-{}-{}-{}", pid_namespace_inode(), self.pid, self.start)
    }

    /// Parses `i-<pidns>-<pid>-<start>`, or `i-<pidns>-<pid>-<start>-<n>` (a
    /// further supervisor of the same process).
    pub fn from_instance_name(name: &str) -> Option<Owner> {
        parse_instance_name(name).map(|(_, owner)| owner)
    }

    /// The owner recorded on an instance cgroup: xattrs first, else its name.
    pub fn of_instance(cg: &Cgroup) -> Option<Owner> {
        let from_xattrs = || -> Option<Owner> {
            let pid = cg.meta(XATTR_OWNER_PID).ok()??.parse().ok()?;
            let start = cg.meta(XATTR_OWNER_START).ok()??.parse().ok()?;
            Some(Owner { pid, start })
        };
        from_xattrs().or_else(|| Owner::from_instance_name(cg.name()))
    }
}

/// Parses an instance name into its pid namespace inode and owner.
///
/// Names of earlier versions, `i-<pid>-<start>[-<n>]` without the namespace,
/// still parse (with namespace 0), so that their instances are recovered and
/// swept: a first number above the largest pid Linux allows (2²², while pid
/// namespace inodes start at 0xEFFFFFFC) is a namespace inode.
pub(crate) fn parse_instance_name(name: &str) -> Option<(u64, Owner)> {
    const PID_MAX_LIMIT: u64 = 1 << 22;
    let parts: Vec<u64> =
        name.strip_prefix("i-")?.split('-').map(|p| p.parse::<u64>().ok()).collect::<Option<Vec<_>>>()?;
    let (ns, rest) = match parts.first() {
        Some(&first) if first > PID_MAX_LIMIT => (first, &parts[1..]),
        Some(_) => (0, &parts[..]),
        None => return None,
    };
    let (pid, start) = match rest {
        [pid, start] => (*pid, *start),
        [pid, start, n] if *n >= 2 && *n <= u64::from(u32::MAX) => (*pid, *start),
        _ => return None,
    };
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    Some((ns, Owner { pid, start }))
}

/// The inode of the calling process's pid namespace (`pid:[<inode>]`), 0 if
/// `/proc/self/ns/pid` cannot be read. A process cannot change its own pid
/// namespace, so it is read once.
pub(crate) fn pid_namespace_inode() -> u64 {
    static INODE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INODE.get_or_init(|| {
        pid_namespace().and_then(|ns| ns.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()).unwrap_or(0)
    })
}

/// The calling process's pid namespace, as `/proc/self/ns/pid` names it.
pub(crate) fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid").ok().map(|p| p.to_string_lossy().into_owned())
}

/// Records the owner on a new instance cgroup.
pub(crate) fn mark_instance(cg: &Cgroup, owner: Owner) -> Result<()> {
    cg.set_meta(crate::root::XATTR_KIND, "instance")?;
    cg.set_meta(XATTR_OWNER_PID, &owner.pid.to_string())?;
    cg.set_meta(XATTR_OWNER_START, &owner.start.to_string())?;
    if let Some(ns) = pid_namespace() {
        cg.set_meta(XATTR_OWNER_PIDNS, &ns)?;
    }
    cg.set_meta(XATTR_CREATED, &now_secs().to_string())
}

/// Records a new session cgroup: procscope made it, its id, state `active`, when.
pub(crate) fn mark_session(cg: &Cgroup, id: &str) -> Result<()> {
    cg.set_meta(crate::root::XATTR_KIND, "session")?;
    cg.set_meta(XATTR_SESSION, id)?;
    cg.set_meta(XATTR_STATE, "active")?;
    cg.set_meta(XATTR_CREATED, &now_secs().to_string())
}

/// Whether the owner of instance `cg` is provably gone. An owner recorded in
/// another pid namespace cannot be checked from here: it counts as alive, so a
/// sweep on the host never ends a live gateway in a container.
pub(crate) fn owner_gone(cg: &Cgroup, owner: Owner) -> bool {
    same_pid_namespace(cg) && !owner.is_alive()
}

/// Whether instance `cg`'s owner is in the calling process's pid namespace
/// (as recorded; unrecorded counts as the same).
pub(crate) fn same_pid_namespace(cg: &Cgroup) -> bool {
    let recorded = cg.meta(XATTR_OWNER_PIDNS).ok().flatten();
    match (recorded, pid_namespace()) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => true,
    }
}

/// Field 22 of `/proc/<pid>/stat`, or `None` if there is no such process.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Parses the start time out of a `/proc/<pid>/stat` line. The command name in
/// parentheses may itself contain spaces and parentheses: fields are counted
/// after the last `)`.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    stat_field_of(stat, 22)?.parse().ok()
}

/// Field `n` of a `/proc/<pid>/stat` line, numbered as in proc(5) (3 is the
/// state, 4 the parent pid, 22 the start time), counted after the command
/// name's last `)`.
fn stat_field_of(stat: &str, n: usize) -> Option<&str> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(n.checked_sub(3)?)
}

/// Field `n` of `/proc/<pid>/stat` (see [`stat_field_of`]), or `None` if
/// there is no such process.
pub(crate) fn stat_field(pid: i32, n: usize) -> Option<String> {
    try_stat_field(pid, n).ok().flatten()
}

/// [`stat_field`], telling a process that is gone (`Ok(None)`) from a file
/// that could not be read (no fd left, say).
pub(crate) fn try_stat_field(pid: i32, n: usize) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => Ok(stat_field_of(&stat, n).map(str::to_owned)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Seconds since the epoch, for `created` xattrs.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The kind of a directory procscope made, from its `kind` metadata.
pub(crate) fn kind_of(cg: &Cgroup) -> Option<String> {
    cg.meta(crate::root::XATTR_KIND).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let o = Owner { pid: 4242, start: 987_654 };
        assert_eq!(Owner::from_instance_name(&o.instance_name()), Some(o));
        assert!(o.instance_name().starts_with(&format!("i-{}-", pid_namespace_inode())));
        assert_eq!(parse_instance_name("i-4026531836-7-9-2"), Some((4026531836, Owner { pid: 7, start: 9 })));
        // Names of earlier versions, without the namespace.
        assert_eq!(parse_instance_name("i-7-9"), Some((0, Owner { pid: 7, start: 9 })));
        assert_eq!(parse_instance_name("i-7-9-2"), Some((0, Owner { pid: 7, start: 9 })));
        let ns = "4026531836";
        for bad in [
            "i-".to_owned(),
            "i-1".to_owned(),
            format!("i-{ns}-1"),
            format!("i-{ns}-x-2"),
            format!("i-{ns}-0-5"),
            format!("i-{ns}--1-5"),
            format!("s-{ns}-1-2"),
            format!("i-{ns}-1-2-1"),
            format!("i-{ns}-1-2-x"),
            format!("i-{ns}-1-2-3-4"),
            "i-1-2-1".to_owned(),
            "i-1-2-3-4".to_owned(),
            String::new(),
        ] {
            let bad = bad.as_str();
            assert_eq!(Owner::from_instance_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn start_time_with_tricky_comm() {
        let stat = "77 (a) b (c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_start_time(stat), Some(123_456));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_alive() {
        let me = Owner::this_process().unwrap();
        assert!(me.is_alive());
        assert!(!Owner { start: me.start + 1, ..me }.is_alive());
    }
}
