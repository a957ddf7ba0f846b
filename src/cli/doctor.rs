//! `procscope doctor`: what this host supports, which mechanisms procscope will
//! use — verified by spawning and killing a probe — and how to fix what is
//! missing.

use std::path::PathBuf;
use std::time::Duration;

use procscope::cgroup::hierarchy::{Delegation, Features, Hierarchy};
use procscope::{
    AutoKill, Cgroup, Command, Containment, ExitStatusSource, KillMechanism, MembershipCheck, Root, RootKind,
    SpawnMechanism, Stdio, Supervisor,
};
use serde_json::json;

use super::FAILED;

const UNIT_SNIPPET: &str =
    "[Service]\nDelegate=yes\n# or run it with: systemd-run -p Delegate=yes --unit=gateway <command>";

/// How a gateway in a container gets a writable cgroup namespace.
const CONTAINER_FIX: &str = "cgroup2 is read-only here, as in a default container: give the container a cgroup \
namespace with cgroup2 writable (docker run --privileged; Kubernetes securityContext.privileged: true; \
systemd-nspawn), see the README's \"Containers\" section";

struct Problem {
    problem: String,
    fix: String,
    /// Containment degrades (non-zero exit), as opposed to a note.
    degrades: bool,
}

pub async fn run(root: Option<PathBuf>, json: bool) -> i32 {
    let mut problems: Vec<Problem> = Vec::new();
    let kernel = rustix::system::uname().release().to_string_lossy().into_owned();
    // Below the kernel floor nothing is probed (nor created).
    if let Err(e) = procscope::check_kernel_floor() {
        let fix = match &e {
            procscope::Error::Unsupported { fix, .. } => (*fix).to_owned(),
            _ => "see the error".to_owned(),
        };
        if json {
            println!(
                "{}",
                json!({
                    "kernel": kernel,
                    "kernel_floor": { "ok": false, "error": e.to_string() },
                    "problems": [{ "problem": e.to_string(), "fix": fix, "degrades": true }],
                    "ok": false,
                })
            );
        } else {
            println!("{:<18} {kernel}\n\nPROBLEM: {e}\n  fix: {fix}", "kernel");
        }
        return FAILED;
    }
    let hierarchy = Hierarchy::discover();
    let (mount, hybrid, own) = match &hierarchy {
        Ok(h) => (Some(h.mount_point.clone()), h.hybrid, Some(h.own_cgroup.clone())),
        Err(e) => {
            problems.push(Problem { problem: e.to_string(), fix: "mount cgroup2 (see above)".into(), degrades: true });
            (None, false, None)
        }
    };
    let explicit = root.is_some();
    // What a supervisor chooses here (a given root is always cgroups).
    let containment = if explicit { Containment::Cgroups } else { Containment::detect() };
    let root = match root {
        Some(p) => Root::open(p),
        // No root is used, even one left on the read-only mount.
        None if containment == Containment::Holders => {
            Err(procscope::Error::CgroupReadOnly { mount: mount.clone().unwrap_or_default() })
        }
        None => Root::locate(),
    };
    let root = match root {
        Ok(r) => Some(r),
        Err(e) => {
            // The default root may simply not exist yet: it is created on first use.
            let missing_default =
                !explicit && e.raw_os_error() == Some(libc::ENOENT) && rustix::process::geteuid().is_root();
            if containment == Containment::Holders {
                problems.push(Problem {
                    problem: format!(
                        "{}: sessions are contained with holders, a subreaper per command, with no limits, no \
                         sealing and no atomic cgroup.kill",
                        match &mount {
                            Some(m) => format!("the cgroup2 filesystem at {} is mounted read-only", m.display()),
                            None => "no cgroup2 filesystem is mounted".to_owned(),
                        }
                    ),
                    fix: CONTAINER_FIX.to_owned(),
                    degrades: true,
                });
            } else if !missing_default {
                // The fix that fits: a path that is no cgroup2 directory is
                // fixed by naming one; a root that is not writable, by root or
                // delegation (which a root caller already has).
                let fix = match &e {
                    procscope::Error::NotCgroup2 { .. } | procscope::Error::NoCgroup2 { .. } => match &mount {
                        Some(m) => format!(
                            "give --root a directory under the cgroup2 mount {}, or leave --root out",
                            m.display()
                        ),
                        None => "mount cgroup2 (see above)".to_owned(),
                    },
                    procscope::Error::ContainsSelf { .. } => {
                        "give --root a cgroup that does not hold this process".to_owned()
                    }
                    procscope::Error::CgroupReadOnly { .. } => CONTAINER_FIX.to_owned(),
                    _ if rustix::process::geteuid().is_root() => {
                        "check that the cgroup2 mount is writable here (not read-only, as in a container)".to_owned()
                    }
                    _ => format!("run as root, or in a unit with delegation:\n{UNIT_SNIPPET}"),
                };
                problems.push(Problem { problem: format!("no usable root: {e}"), fix, degrades: true });
            }
            None
        }
    };
    let probe_parent = match (&root, &mount) {
        (Some(r), _) => Cgroup::open(r.path()).ok(),
        (None, Some(m)) if !explicit && containment == Containment::Cgroups && rustix::process::geteuid().is_root() => {
            Cgroup::open(m).ok()
        }
        _ => None,
    };
    let (delegated, root_kind) = match &root {
        Some(r) => {
            let d = Delegation::of(r.cgroup()).map(|d| d.delegated()).unwrap_or(false);
            (r.kind() == RootKind::Delegated || d, r.kind().as_str())
        }
        None => (false, "none"),
    };
    let controllers = probe_parent.as_ref().and_then(|c| c.controllers().ok()).unwrap_or_default();
    let enabled = probe_parent.as_ref().and_then(|c| c.subtree_control().ok()).unwrap_or_default();
    for c in ["memory", "pids", "cpu"] {
        if probe_parent.is_some() && !controllers.iter().any(|x| x == c) {
            problems.push(Problem {
                problem: format!("the {c} controller is not available in cgroup2, so {c} limits cannot be set"),
                fix: if hybrid {
                    "this host is hybrid (controllers in cgroup v1): boot with systemd.unified_cgroup_hierarchy=1"
                        .into()
                } else {
                    "delegate it: Delegate=yes (or Delegate=memory pids cpu) in the unit".into()
                },
                degrades: false,
            });
        }
    }

    let mut holder_identity = None;
    let (spawn, kill, probed_auto_kill) = match &probe_parent {
        Some(parent) => probe(parent, &mut problems).await,
        None if containment == Containment::Holders => probe_holders(&mut problems, &mut holder_identity).await,
        None => ("none", "none", None),
    };
    // What the probe child got, or else what a spawn would ask for.
    let auto_kill = probed_auto_kill.unwrap_or_else(AutoKill::current);
    let features = probe_parent.as_ref().map(Features::detect);
    let membership = MembershipCheck::current();
    let exit_status = ExitStatusSource::current();
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_owned())))
        .unwrap_or_default();
    let systemd = std::path::Path::new("/run/systemd/system").exists();
    let unit = own
        .as_deref()
        .and_then(|o| o.split('/').rev().find(|c| c.ends_with(".service") || c.ends_with(".scope")).map(str::to_owned));

    let seal = procscope::seal_status();
    let (guardian_uid, own_identity) = match procscope::guardian_identity() {
        Some(uid) => (uid, true),
        None => (rustix::process::geteuid().as_raw(), false),
    };
    if let (Some((missing, fix)), true) = (&seal.missing, seal.refused_by_default) {
        problems.push(Problem {
            problem: format!(
                "children are refused ({missing} is missing): with CAP_SYS_ADMIN, procscope seals every \
                 child or starts none, unless sealing is turned off explicitly"
            ),
            fix: (*fix).into(),
            degrades: true,
        });
    } else if let Some((missing, fix)) = &seal.missing {
        problems.push(Problem {
            problem: format!(
                "children run unsealed ({missing} is missing): a child running as this user can leave its \
                 session, write cgroup files and forge procscope's state"
            ),
            fix: (*fix).into(),
            degrades: false,
        });
    } else if !seal.nsdelegate && mount.is_some() {
        problems.push(Problem {
            problem: "cgroup2 is mounted without nsdelegate: sealed children are kept in by their read-only \
                      view of the cgroup mounts alone"
                .into(),
            fix: "mount cgroup2 with nsdelegate (systemd does), so that a cgroup namespace is a delegation \
                  boundary as well"
                .into(),
            degrades: false,
        });
    }
    let transient_in_use = std::fs::read_dir(procscope::identity::LOCK_DIR)
        .map_or(0, |d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count());
    let state_xattrs = root.as_ref().map(|r| format!("{}*", r.cgroup().meta_prefix())).unwrap_or_default();
    let degraded = problems.iter().any(|p| p.degrades);
    if json {
        let v = json!({
            "kernel": kernel,
            "kernel_floor": { "ok": true },
            "containment": containment.as_str(),
            "holder_identity": holder_identity,
            "cgroup2_mount": mount,
            "hybrid": hybrid,
            "own_cgroup": own,
            "root": root.as_ref().map(|r| r.path().to_owned()),
            "root_kind": root_kind,
            "delegated": delegated,
            "controllers": { "available": controllers, "enabled": enabled },
            "spawn_mechanism": spawn,
            "kill_mechanism": kill,
            "membership_check": membership.as_str(),
            "exit_status": exit_status.as_str(),
            "auto_kill": auto_kill.as_str(),
            "features": features.as_ref().map(|f| json!({
                "pidfd": f.pidfd, "clone_into_cgroup": f.clone_into_cgroup,
                "cgroup_kill": f.cgroup_kill, "cgroup_freeze": f.cgroup_freeze,
            })),
            "capabilities": caps,
            "sealing": {
                "sealed_by_default": seal.sealed_by_default,
                "cgroup_namespace": seal.sealed_by_default,
                "read_only_mounts": seal.read_only_mounts,
                "read_only_by": seal.read_only_by,
                "nsdelegate": seal.nsdelegate,
                "user_namespace": seal.user_namespace,
                "state_xattrs": state_xattrs,
                "refused_by_default": seal.refused_by_default,
                "guardian_uid": guardian_uid,
                "guardian_identity": if own_identity { "own" } else { "gateway" },
            },
            "transient_users": {
                "first_uid": procscope::identity::TRANSIENT_UIDS.start,
                "last_uid": procscope::identity::TRANSIENT_UIDS.end - 1,
                "lock_dir": procscope::identity::LOCK_DIR,
                "lock_files": transient_in_use,
            },
            "systemd": { "running": systemd, "unit": unit },
            "problems": problems.iter().map(|p| json!({"problem": p.problem, "fix": p.fix, "degrades": p.degrades})).collect::<Vec<_>>(),
            "ok": !degraded,
        });
        println!("{v}");
    } else {
        let show = |k: &str, v: &str| println!("{k:<18} {v}");
        show("kernel", &kernel);
        show(
            "containment",
            match containment {
                Containment::Holders => "holders (no writable cgroup2: a subreaper per command; see below)",
                _ => "cgroups",
            },
        );
        if let Some(identity) = holder_identity {
            show(
                "holder identity",
                match identity {
                    "own" => "own (the guardian's uid, effective uid 0, CAP_KILL only): children cannot signal it",
                    _ => "the gateway's uid (the gateway is not root): a child of that uid can signal its holder",
                },
            );
        }
        show("cgroup2 mount", &mount.as_ref().map(|m| m.display().to_string()).unwrap_or("none".into()));
        show("hierarchy", if hybrid { "hybrid (cgroup v1 controllers beside cgroup2)" } else { "pure cgroup2" });
        show("own cgroup", own.as_deref().unwrap_or("?"));
        show("root", &root.as_ref().map(|r| format!("{} ({root_kind})", r.path().display())).unwrap_or("none".into()));
        show("delegated", if delegated { "yes" } else { "no" });
        show("controllers", &format!("available: {}; enabled: {}", or_none(&controllers), or_none(&enabled)));
        show("spawn mechanism", spawn);
        show("kill mechanism", kill);
        show(
            "membership check",
            &format!(
                "{} ({})",
                membership.as_str(),
                match membership {
                    MembershipCheck::PidfdInfo => "each pidfd's cgroup id from PIDFD_GET_INFO, Linux 6.13",
                    _ => "cgroup.procs read again after opening the pidfds; PIDFD_GET_INFO needs Linux 6.13",
                }
            ),
        );
        show(
            "exit status",
            &format!(
                "{} ({})",
                exit_status.as_str(),
                match exit_status {
                    ExitStatusSource::PidfdInfoExit => "of any process once reaped, PIDFD_INFO_EXIT, Linux 6.15",
                    _ => "of children only (waitid); PIDFD_INFO_EXIT needs Linux 6.15",
                }
            ),
        );
        show(
            "auto kill",
            &format!(
                "{} ({})",
                auto_kill.as_str(),
                match auto_kill {
                    AutoKill::Pidfd => {
                        "a direct child dies with the last handle of it, so with the whole gateway process, \
                         CLONE_PIDFD_AUTOKILL, Linux 7.1"
                    }
                    _ => {
                        "CLONE_PIDFD_AUTOKILL needs Linux 7.1 and CAP_SYS_ADMIN; the guardian and the sweeps \
                         end what a killed gateway leaves"
                    }
                }
            ),
        );
        show("capabilities", &format!("CapEff {caps}"));
        show(
            "sealing",
            &if seal.sealed_by_default {
                format!(
                    "on: {}cgroup namespace per child; read-only ({}): {}; nsdelegate: {}",
                    if seal.user_namespace { "user namespace (no CAP_SYS_ADMIN) and " } else { "" },
                    seal.read_only_by,
                    seal.read_only_mounts.join(" "),
                    if seal.nsdelegate { "yes" } else { "no" }
                )
            } else {
                if seal.refused_by_default { "REFUSED (see below)" } else { "OFF (see below)" }.into()
            },
        );
        show("state xattrs", if state_xattrs.is_empty() { "?" } else { &state_xattrs });
        show(
            "guardian identity",
            &if own_identity {
                format!(
                    "uid {guardian_uid} (real and saved; effective 0), no capability but CAP_KILL, all signals \
                     blocked"
                )
            } else {
                format!("the gateway's own uid {guardian_uid} (not root: no identity of its own), all signals blocked")
            },
        );
        show(
            "transient users",
            &format!(
                "uids {}..={} (--transient-user); {transient_in_use} lock file(s) in {}",
                procscope::identity::TRANSIENT_UIDS.start,
                procscope::identity::TRANSIENT_UIDS.end - 1,
                procscope::identity::LOCK_DIR
            ),
        );
        show(
            "systemd",
            &if systemd {
                format!("running{}", unit.map(|u| format!(", unit {u}")).unwrap_or_default())
            } else {
                "not running".into()
            },
        );
        if problems.is_empty() {
            println!("\nno problems: full containment");
        }
        for p in &problems {
            println!(
                "\n{}: {}\n  fix: {}",
                if p.degrades { "PROBLEM" } else { "note" },
                p.problem,
                p.fix.replace('\n', "\n       ")
            );
        }
    }
    if degraded { FAILED } else { 0 }
}

fn or_none(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(" ") }
}

/// The real uid of a process, from `/proc/<pid>/status`.
fn real_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The parent of a process, from `/proc/<pid>/stat`.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Where no cgroup can be written: a supervisor with holders starts a child
/// in a session and closes it; the child must have been held and ended.
/// Sets `identity` to what the probe's holder took: `"own"` (the guardian's
/// uid) or `"gateway"`.
async fn probe_holders(
    problems: &mut Vec<Problem>,
    identity: &mut Option<&'static str>,
) -> (&'static str, &'static str, Option<AutoKill>) {
    fn failed(problems: &mut Vec<Problem>, what: String) -> (&'static str, &'static str, Option<AutoKill>) {
        problems.push(Problem {
            problem: format!("containment with holders does not work here: {what}"),
            fix: "see the error; a holder is this program run again from /proc/self/exe".into(),
            degrades: true,
        });
        ("none", "none", None)
    }
    let sup = match Supervisor::builder().containment(Containment::Holders).start().await {
        Ok(s) => s,
        Err(e) => return failed(problems, e.to_string()),
    };
    let session = match sup.session(&format!("doctor-{}", std::process::id())) {
        Ok(s) => s,
        Err(e) => return failed(problems, e.to_string()),
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut cmd = Command::new(&exe);
    cmd.args(["demo-server", "--idle"]).stdin(Stdio::Null).stdout(Stdio::Null).stderr(Stdio::Null);
    let child = match session.spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => return failed(problems, format!("the probe could not start: {e}")),
    };
    let auto_kill = child.auto_kill();
    // The holder takes its identity once it runs its own program: looked
    // at (for up to 2 s) where it is expected.
    let expected = procscope::guardian_identity();
    let mut uid = None;
    for _ in 0..200 {
        uid = parent_pid(child.id()).and_then(real_uid);
        if expected.is_none() || uid == expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    *identity = Some(if uid.is_some() && uid == expected { "own" } else { "gateway" });
    if expected.is_some() && uid != expected {
        problems.push(Problem {
            problem: format!(
                "the probe's holder did not take the guardian's identity (its uid is {}): a child can signal \
                 its holder",
                uid.map_or("unknown".into(), |u| u.to_string())
            ),
            fix: "a holder needs CAP_SETUID and CAP_KILL (a root gateway has them unless they were dropped)".into(),
            degrades: false,
        });
    }
    let held = session.stats().pids_current.unwrap_or(0);
    let ended = session.close().await;
    let _ = sup.shutdown().await;
    match ended {
        Ok(t) if held >= 1 && t.signalled >= 1 => ("holder", "holder", Some(auto_kill)),
        Ok(t) => failed(problems, format!("the probe's holder held {held} process(es) and {} were ended", t.signalled)),
        Err(e) => failed(problems, format!("ending the probe failed: {e}")),
    }
}

/// Spawns a probe into a temporary cgroup with the best mechanism, then kills it
/// with the best mechanism, and reports what worked (and whether the probe
/// was tied to its pidfd).
async fn probe(parent: &Cgroup, problems: &mut Vec<Problem>) -> (&'static str, &'static str, Option<AutoKill>) {
    let name = format!("doctor-{}", std::process::id());
    let cg = match parent.create_child(&name) {
        Ok(c) => c,
        Err(e) => {
            let fix = if e.raw_os_error() == Some(libc::EROFS) {
                CONTAINER_FIX.to_owned()
            } else {
                format!("run as root or with a delegated cgroup:\n{UNIT_SNIPPET}")
            };
            problems.push(Problem {
                problem: format!("cannot create a cgroup under {}: {e}", parent.path().display()),
                fix,
                degrades: true,
            });
            return ("none", "none", None);
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut spawned = None;
    for m in [SpawnMechanism::Clone3IntoCgroup, SpawnMechanism::ForkJoinProcs] {
        let mut cmd = Command::new(&exe);
        cmd.args(["demo-server", "--idle"])
            .stdin(Stdio::Null)
            .stdout(Stdio::Null)
            .stderr(Stdio::Null)
            .spawn_mechanism(m);
        match cmd.spawn_in(&cg) {
            Ok(child) if cg.procs().is_ok_and(|p| p.len() == 1) => {
                spawned = Some((m, child));
                break;
            }
            Ok(mut child) => {
                let _ = child.kill().await;
            }
            Err(e) => {
                if m == SpawnMechanism::Clone3IntoCgroup {
                    problems.push(Problem {
                        problem: format!("clone3(CLONE_INTO_CGROUP) failed: {e}"),
                        fix: "Linux 5.7 or later spawns straight into cgroups; the fallback migrates each child".into(),
                        degrades: true,
                    });
                }
            }
        }
    }
    let Some((mechanism, mut child)) = spawned else {
        let _ = parent.remove_child(&name);
        problems.push(Problem {
            problem: "no spawn mechanism works".into(),
            fix: "see the errors above".into(),
            degrades: true,
        });
        return ("none", "none", None);
    };
    let auto_kill = child.auto_kill();
    let kill = match cg.kill().await {
        Ok(k) => {
            // Seconds only where the CPUs are taken; a probe that lives on
            // is a kernel's failure, not a slow one's.
            let gone =
                cg.wait_empty(Some(tokio::time::Instant::now() + Duration::from_secs(10))).await.unwrap_or(false);
            if !gone {
                problems.push(Problem {
                    problem: "the probe survived the kill".into(),
                    fix: "report this kernel".into(),
                    degrades: true,
                });
            }
            if k == KillMechanism::FreezeKillThaw {
                // A complete mechanism (frozen members cannot fork while they
                // are killed; repeated until none is left): a note.
                problems.push(Problem {
                    problem: "cgroup.kill is missing (Linux < 5.14): using freeze, kill each, thaw".into(),
                    fix: "Linux 5.14 or later kills a whole cgroup atomically".into(),
                    degrades: false,
                });
            }
            k.as_str()
        }
        Err(e) => {
            problems.push(Problem {
                problem: format!("killing the probe failed: {e}"),
                fix: "run as root".into(),
                degrades: true,
            });
            let _ = child.start_kill();
            "none"
        }
    };
    let _ = child.wait().await;
    let _ = parent.remove_child_tree(&cg).await;
    (mechanism.as_str(), kill, Some(auto_kill))
}
