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

/// `procscope exec` of a command that leaves a daemon, then what is left.
const EXEC_SCRIPT: &str = r#"
procscope exec -- sh -c 'procscope-fixture daemon > /dev/null; echo ran; exit 5'
echo rc=$?
ps -o pid,ppid,args
"#;

/// Run by `sh` in the container: the control first (the fixture's daemon
/// without procscope; its processes once the helper is the init's); then the
/// gateway in the background, its report
/// up to `ready`; the processes (`pid ppid args`) once the daemons'
/// helpers are their holders'; then the processes once nothing of the
/// SIGKILLed gateway runs (at most 5 s).
const GATEWAY_SCRIPT: &str = r#"
procscope-fixture daemon > /dev/null
i=0
until ps -o pid,ppid,args | awk '$2 == 1 && $3 == "/usr/local/bin/procscope-fixture" && $4 == "sleep" { f = 1 } END { exit !f }'
do i=$((i+1)); [ $i -gt 1000 ] && break; sleep 0.01; done
ps -o pid,ppid,args
kill -9 $(ps -o pid,ppid,args | awk '$2 == 1 && $3 == "/usr/local/bin/procscope-fixture" && $4 == "sleep" { print $1 }')
i=0
while ps -o ppid,args | grep -q '^ *1 /usr/local/bin/procscope-fixture sleep'; do i=$((i+1)); [ $i -gt 500 ] && break; sleep 0.01; done
echo ==
procscope-fixture gateway discover 2 1 > /tmp/gateway.out &
gw=$!
i=0
until grep -qx ready /tmp/gateway.out; do i=$((i+1)); [ $i -gt 1000 ] && break; sleep 0.01; done
cat /tmp/gateway.out
echo ==
settled() {
    ps -o pid,ppid,args | awk '
        $3 == "procscope-holder" || $4 == "procscope-holder" { holder[$1] = 1 }
        $3 == "/usr/local/bin/procscope-fixture" && $4 == "sleep" { helper[$1] = $2 }
        END { n = 0; for (h in helper) if (helper[h] in holder) n++; exit !(n == 2) }'
}
i=0
until settled; do i=$((i+1)); [ $i -gt 1000 ] && break; sleep 0.01; done
ps -o pid,ppid,args
echo ==
kill -9 $gw
i=0
while ps -o args | grep -v '^sh \|docker-init' | grep -q procscope; do i=$((i+1)); [ $i -gt 500 ] && break; sleep 0.01; done
ps -o pid,ppid,args
"#;

#[tokio::test]
async fn a_default_docker_container_is_contained_with_holders_and_exec_holds_its_command() {
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

        // doctor, from this build: the read-only cgroup2 is the problem, and
        // containment with holders works there (probed for real: under
        // Docker's seccomp profile `clone3` fails with ENOSYS, and the
        // holders are cloned with `clone(2)`).
        let out = engine.run(&["--rm", "--network=none", IMAGE, "procscope", "doctor", "--json"]);
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&out)));
        assert_eq!(out.status.code(), Some(1), "doctor: {doc:#}");
        assert_eq!(doc["ok"], false, "{doc:#}");
        assert_eq!(doc["cgroup2_mount"], "/sys/fs/cgroup", "{doc:#}");
        assert_eq!(doc["own_cgroup"], "/", "{doc:#}");
        assert_eq!(doc["containment"], "holders", "{doc:#}");
        assert_eq!((&doc["spawn_mechanism"], &doc["kill_mechanism"]), (&"holder".into(), &"holder".into()), "{doc:#}");
        assert_eq!(doc["holder_identity"], "own", "the holders take the guardian's uid there too: {doc:#}");
        let caps = u64::from_str_radix(doc["capabilities"].as_str().unwrap(), 16).unwrap();
        assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0, "{doc:#}");
        let problems = doc["problems"].as_array().unwrap();
        assert!(
            problems.iter().any(|p| {
                let p = p["problem"].as_str().unwrap();
                p.contains("mounted read-only") && p.contains("contained with holders")
            }),
            "doctor names the read-only cgroup2 and the mode: {doc:#}"
        );

        // The example gateway (the fixture's, with the defaults and a
        // guardian asked for) under `--init`, as the README advises: two
        // sessions whose children daemonize helpers with `setsid --fork`.
        // The helpers must be their holders', not the init's; once the
        // gateway is SIGKILLed, nothing of it may be left.
        let out = engine.run(&["--rm", "--init", "--network=none", IMAGE, "sh", "-c", GATEWAY_SCRIPT]);
        let report = text(&out);
        assert!(out.status.success(), "{report}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let [control, gateway, before, after]: [&str; 4] =
            stdout.split("==\n").collect::<Vec<_>>().try_into().unwrap_or_else(|_| panic!("{report}"));
        assert!(gateway.lines().any(|l| l == "containment=holders"), "{report}");
        assert!(gateway.lines().any(|l| l == "sessions=2"), "{report}");
        let rows = |text: &str| -> Vec<(u32, u32, String)> {
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let pid = f.next()?.parse().ok()?;
                    let ppid = f.next()?.parse().ok()?;
                    Some((pid, ppid, f.collect::<Vec<_>>().join(" ")))
                })
                .collect()
        };
        // The control: without procscope, the daemon's helper goes to the
        // container's init.
        let control = rows(control);
        assert!(
            control.iter().any(|r| r.1 == 1 && r.2 == "/usr/local/bin/procscope-fixture sleep 3600"),
            "without procscope the escapee is the init's: {control:#?}"
        );
        let before = rows(before);
        // busybox's ps shows a holder as `{procscope-hold} procscope-holder`:
        // its command name (15 bytes at most) differs from its argv[0].
        let holders: Vec<u32> = before.iter().filter(|r| r.2.ends_with("procscope-holder")).map(|r| r.0).collect();
        let helpers: Vec<&(u32, u32, String)> =
            before.iter().filter(|r| r.2 == "/usr/local/bin/procscope-fixture sleep 3600").collect();
        assert_eq!(holders.len(), 2, "a holder per command: {before:#?}");
        assert_eq!(helpers.len(), 2, "{before:#?}");
        assert!(helpers.iter().all(|h| holders.contains(&h.1)), "the escapees are the holders': {before:#?}");
        let after = rows(after);
        assert!(
            after.iter().all(|r| !r.2.contains("procscope") || r.2.starts_with("sh ") || r.2.contains("docker-init")),
            "left in the container after the gateway's SIGKILL: {after:#?}\n{report}"
        );

        // exec holds its command there: the command's exit code comes back,
        // and its daemon is ended with it (the same check in the same
        // container, whatever is left is listed).
        let out = engine.run(&["--rm", "--init", "--network=none", IMAGE, "sh", "-c", EXEC_SCRIPT]);
        let report = text(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.lines().any(|l| l == "rc=5"), "the command's exit code: {report}");
        assert!(stdout.lines().any(|l| l == "ran"), "{report}");
        assert!(!stdout.contains("procscope-fixture sleep"), "the daemon outlived its exec: {report}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("contained with a holder"), "{report}");
        // Cgroups asked for: refused with the fix (Error::CgroupReadOnly,
        // exit 2).
        let out = engine.run(&[
            "--rm",
            "--network=none",
            IMAGE,
            "procscope",
            "exec",
            "--containment",
            "cgroups",
            "--",
            "true",
        ]);
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
