//! Hierarchy discovery, delegation facts, kernel features and roots on this host.

mod common;

use common::*;
use procscope::cgroup::hierarchy::{Delegation, Features, Hierarchy};
use procscope::{Error, Root, RootKind};

#[tokio::test]
async fn discovers_this_hosts_hierarchy_and_features() {
    let env = TestEnv::new();
    let h = Hierarchy::discover().unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let expected = mountinfo.lines().find(|l| l.contains(" - cgroup2 ")).unwrap().split(' ').nth(4).unwrap();
    assert_eq!(h.mount_point.to_str().unwrap(), expected);
    assert_eq!(h.hybrid, mountinfo.contains(" - cgroup "));
    assert!(h.own_dir.is_some());

    let f = Features::detect(&env.root);
    assert!(f.pidfd);
    // cgroup.kill from 5.14 on; before, the freeze-and-kill fallback.
    let kill = procscope::testing::kernel_at_least(&f.kernel, 5, 14);
    assert_eq!(f.cgroup_kill, kill, "Linux {}: cgroup.kill came with 5.14", f.kernel);
    assert!(f.cgroup_freeze);
    assert!(f.clone_into_cgroup);

    let d = Delegation::of(&env.root).unwrap();
    assert!(d.writable(), "{d:?}");
    assert_eq!(d.euid, 0);
    assert!(!d.delegate_xattr, "nobody delegated the test root: {d:?}");
    assert!(!d.delegated(), "root owning a cgroup is not delegation: {d:?}");
    // systemd's mark makes it delegated.
    env.root.set_xattr("user.delegate", "1").unwrap();
    assert!(Delegation::of(&env.root).unwrap().delegated());
    env.finish().await;
}

#[tokio::test]
async fn explicit_roots_are_checked() {
    let env = TestEnv::new();
    let root = Root::open(env.path()).unwrap();
    assert_eq!(root.kind(), RootKind::Explicit);
    assert_eq!(root.path(), env.path());
    drop(root);

    let err = Root::open("/tmp").unwrap_err();
    assert!(matches!(err, Error::NotCgroup2 { .. }), "{err}");
    let err = Root::open(env.path().join("missing")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    // A root that holds this very process is refused.
    let h = Hierarchy::discover().unwrap();
    let own = h.own_dir.clone().unwrap();
    let err = Root::open(&own).unwrap_err();
    assert!(matches!(err, Error::ContainsSelf { .. }), "{err}");
    assert!(err.to_string().contains("contains this process"), "{err}");
    env.finish().await;
}

#[tokio::test]
async fn a_root_caller_without_delegation_uses_the_mount() {
    let env = TestEnv::new();
    let h = Hierarchy::discover().unwrap();
    let default = h.mount_point.join("procscope");
    let existed = default.exists();
    let root = Root::discover().unwrap();
    assert_eq!(root.kind(), RootKind::Owned);
    assert_eq!(root.path(), default);
    assert_eq!(root.cgroup().meta("kind").unwrap().as_deref(), Some("root"));
    // `locate` finds the same root without creating anything.
    assert_eq!(Root::locate().unwrap().path(), default);
    drop(root);
    if !existed {
        h.open_mount().unwrap().remove_child("procscope").unwrap();
    }
    env.finish().await;
}
