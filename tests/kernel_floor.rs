//! Below the kernel floor: a kernel without `pidfd_open` (Linux < 5.3),
//! shown on any kernel by a seccomp filter that makes the system call fail
//! with `ENOSYS`. The library and `procscope doctor` refuse with a typed
//! error that names the kernel needed, and create nothing.
//!
//! The filter is installed in a thread of its own (seccomp filters are per
//! thread, and inherited by what that thread starts), so the rest of the
//! test process keeps `pidfd_open`.

mod common;

use common::*;
use procscope::{Error, Supervisor};
use serde_json::Value;

const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");

#[tokio::test]
async fn a_kernel_without_pidfd_open_is_refused_by_name_and_nothing_is_created() {
    let env = TestEnv::new();
    let root = env.path();
    let (library, doctor_json, doctor_text) = std::thread::spawn(move || {
        procscope::testing::deny_pidfd_open().expect("install the seccomp filter");
        assert_eq!(
            procscope::PidFd::this_process().unwrap_err().raw_os_error(),
            Some(libc::ENOSYS),
            "the filter is in force"
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let library = rt.block_on(Supervisor::builder().root(&root).start()).map(|_| ());
        // Processes started from this thread inherit the filter.
        let doctor = |extra: &[&str]| {
            let mut args = vec!["doctor", "--root", root.to_str().unwrap()];
            args.extend_from_slice(extra);
            std::process::Command::new(PROCSCOPE).args(&args).output().unwrap()
        };
        (library, doctor(&["--json"]), doctor(&[]))
    })
    .join()
    .unwrap();

    match library {
        Err(Error::Unsupported { feature: "pidfd_open", fix }) => {
            assert!(fix.contains("Linux 5.3"), "the fix names the kernel needed: {fix}")
        }
        other => panic!("Supervisor::start should refuse without pidfd_open: {other:?}"),
    }
    let e = procscope::check_kernel_floor();
    assert!(e.is_ok(), "this thread still has pidfd_open: {e:?}");

    assert_eq!(doctor_json.status.code(), Some(1), "{doctor_json:?}");
    let v: Value = serde_json::from_slice(&doctor_json.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["kernel_floor"]["ok"], false, "{v}");
    let problem = v["problems"][0]["problem"].as_str().unwrap();
    assert!(problem.contains("pidfd_open"), "{v}");
    assert!(v["problems"][0]["fix"].as_str().unwrap().contains("Linux 5.3"), "{v}");
    let text = String::from_utf8_lossy(&doctor_text.stdout);
    assert_eq!(doctor_text.status.code(), Some(1), "{text}");
    assert!(text.contains("PROBLEM: pidfd_open is not supported") && text.contains("Linux 5.3"), "{text}");

    // Nothing was created: no instance, no probe cgroup.
    assert!(env.root.children().unwrap().is_empty(), "{:?}", env.root.children());
    env.finish().await;
}
