//! procscope in a real default Docker container (tests/common/docker.rs: a
//! private dockerd from Debian's docker.io, an image built from this build's
//! binaries): no `--privileged`, the default seccomp profile and
//! capabilities, cgroup2 read-only at `/sys/fs/cgroup` in a cgroup namespace
//! of the container's own. What `tests/containers.rs` builds with `unshare`,
//! made here by the engine itself.

mod common;

use common::docker::Engine;
use common::{TestEnv, within};

const IMAGE: &str = "procscope-test:local";
const CAP_SYS_ADMIN: u32 = 21;

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The value of `Key:` in `/proc/self/status` text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
        .trim()
}

#[tokio::test]
async fn a_default_docker_container_has_cgroup2_read_only_and_no_sys_admin_and_procscope_says_so() {
    within(300, async {
        let env = TestEnv::new();
        let engine = Engine::start(&env);
        engine.import_image(IMAGE);

        // What the container is: cgroup2 read-only at /sys/fs/cgroup, in a
        // cgroup namespace of its own; no CAP_SYS_ADMIN; seccomp filtering.
        let out = engine.run(&[
            "--rm",
            "--network=none",
            IMAGE,
            "sh",
            "-c",
            "cat /proc/self/mountinfo; echo ==; cat /proc/self/status; echo ==; cat /proc/self/cgroup",
        ]);
        assert!(out.status.success(), "docker run: {}\ndockerd: {}", text(&out), engine.log());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let [mountinfo, status, cgroup]: [&str; 3] = stdout.split("==\n").collect::<Vec<_>>().try_into().unwrap();
        let cg_mounts: Vec<&str> =
            mountinfo.lines().filter(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup")).collect();
        assert_eq!(cg_mounts.len(), 1, "one mount at /sys/fs/cgroup: {mountinfo}");
        let line = cg_mounts[0];
        let (fields, fs) = line.split_once(" - ").unwrap();
        assert!(fs.starts_with("cgroup2 "), "cgroup2 at /sys/fs/cgroup: {line}");
        let options: Vec<&str> = fields.split(' ').nth(5).unwrap().split(',').collect();
        assert!(options.contains(&"ro"), "mounted read-only: {line}");
        for key in ["CapEff", "CapBnd", "CapPrm"] {
            let caps = u64::from_str_radix(status_field(status, key), 16).unwrap();
            assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0, "{key} without CAP_SYS_ADMIN: {status}");
        }
        assert_eq!(status_field(status, "Seccomp"), "2", "the default seccomp profile (a filter): {status}");
        assert!(cgroup.lines().any(|l| l == "0::/"), "a cgroup namespace rooted at the container's cgroup: {cgroup}");

        // doctor, from this build: the read-only cgroup2 is the problem.
        let out = engine.run(&["--rm", "--network=none", IMAGE, "procscope", "doctor", "--json"]);
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&out)));
        assert_eq!(out.status.code(), Some(1), "doctor: {doc:#}");
        assert_eq!(doc["ok"], false, "{doc:#}");
        assert_eq!(doc["cgroup2_mount"], "/sys/fs/cgroup", "{doc:#}");
        assert_eq!(doc["own_cgroup"], "/", "{doc:#}");
        let caps = u64::from_str_radix(doc["capabilities"].as_str().unwrap(), 16).unwrap();
        assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0, "{doc:#}");
        let problems = doc["problems"].as_array().unwrap();
        assert!(
            problems.iter().any(|p| p["problem"].as_str().unwrap().contains("Read-only file system")),
            "doctor names the read-only cgroup2: {doc:#}"
        );

        // exec refuses with the fix (Error::CgroupReadOnly, exit 2).
        let out = engine.run(&["--rm", "--network=none", IMAGE, "procscope", "exec", "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("mounted read-only"), "{stderr}");
        assert!(stderr.contains("Containers"), "the README's section is named: {stderr}");

        // The fixture runs there too.
        let out = engine.run(&["--rm", "--network=none", IMAGE, "procscope-fixture", "self"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "cgroup=/"), "{}", text(&out));

        // Every container cgroup was under the engine's, and is gone with
        // its container (what stays: the engine's own and docker's parent).
        let tree = engine.tree();
        assert!(
            tree.iter().all(|p| p == std::path::Path::new("daemon") || p == std::path::Path::new("docker")),
            "cgroups left by the containers: {tree:?}"
        );

        drop(engine);
        env.finish().await;
    })
    .await;
}
