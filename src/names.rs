//! Validation of session ids and cgroup directory names.

use crate::error::{Error, Result};

/// Prefixes of kernel interface files (`cgroup.procs`, `memory.max`, …). A name
/// starting with one of these followed by `.` is refused, so an id can never name
/// a kernel file, whatever prefix procscope puts in front of it.
const KERNEL_PREFIXES: &[&str] = &[
    "cgroup",
    "cpu",
    "cpuset",
    "io",
    "memory",
    "pids",
    "rdma",
    "hugetlb",
    "misc",
    "irq",
    "net_cls",
    "net_prio",
    "perf_event",
    "freezer",
    "devices",
    "blkio",
];

const ID_FIX: &str = "use 1–64 characters from A–Z, a–z, 0–9, '_', '.', '-', not starting with '.'";

/// Checks a session id: `[A-Za-z0-9_.-]`, 1–64 characters, no leading `.`, never
/// the name of a kernel interface file.
///
/// # Errors
/// [`Error::InvalidName`] naming what is wrong.
pub fn validate_session_id(id: &str) -> Result<()> {
    let bad = |reason| Error::InvalidName { kind: "session id", name: id.to_owned(), reason, fix: ID_FIX };
    if id.is_empty() {
        return Err(bad("it is empty"));
    }
    if id.len() > 64 {
        return Err(bad("it is longer than 64 characters"));
    }
    if id.starts_with('.') {
        return Err(bad("it starts with '.'"));
    }
    if id.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    if id.contains('/') {
        return Err(bad("it contains '/'"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(bad("it contains a character outside A–Z, a–z, 0–9, '_', '.', '-'"));
    }
    if let Some((prefix, _)) = id.split_once('.')
        && KERNEL_PREFIXES.contains(&prefix)
    {
        return Err(bad("it looks like a kernel interface file name"));
    }
    Ok(())
}

/// Checks one path component used beneath a cgroup dirfd: not empty, not `.` or
/// `..`, no `/` or NUL.
pub(crate) fn check_component(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it names the directory itself or its parent"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { kind: "cgroup name", name: name.to_owned(), reason, fix: "give a single path component" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        for ok in ["a", "job-42", "cron.daily_7", "A-Z_a-z.0-9", &"x".repeat(64), "memoryhog", "cgroupish"] {
            validate_session_id(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "/",
            "a\0b",
            &"x".repeat(65),
            "sp ace",
            "ünï",
            "cgroup.procs",
            "memory.max",
            "cgroup.kill",
            "pids.max",
            "tab\t",
            "semi;colon",
        ] {
            let e = validate_session_id(bad).unwrap_err().to_string();
            assert!(e.contains("session id") && e.contains("1–64"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn components() {
        assert!(check_component("s-x").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(check_component(bad).is_err(), "{bad:?}");
        }
    }
}
