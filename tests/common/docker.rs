//! A real Docker engine (Debian's `docker.io`: dockerd 20.10, containerd,
//! runc; `scripts/install-docker-engine`) of the test's own, and images built
//! from files on this machine (no registry is reached).
//!
//! The engine runs in a cgroup `engine` under the test's root, in a cgroup
//! namespace rooted there and a private mount namespace with cgroup2 mounted
//! at `/sys/fs/cgroup`, so that:
//! - it sees a pure cgroup-v2 host even where the host's layout is hybrid
//!   (cgroup v1 controllers at `/sys/fs/cgroup/*`, cgroup2 at
//!   `/sys/fs/cgroup/unified`): a dockerd that sees the hybrid layout runs
//!   its containers on cgroup v1, and they get no cgroup2 at all;
//! - every cgroup it makes (`docker/<id>` per container) is under the test's
//!   root, where the test's checks for leftovers look, and no controller is
//!   enabled above it (runc enables every controller it sees, from its root
//!   down);
//! - its mounts (overlay2) vanish with its mount namespace.
//!
//! It has no network of its own (`--bridge=none`, no iptables rules, IPv4
//! forwarding left alone): containers run with `--network=none`. Its state is
//! in directories of its own (data under `CARGO_TARGET_TMPDIR`, sockets under
//! `/run`), removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use procscope::Cgroup;

use super::{FIXTURE, TestEnv, nanos};

/// The `procscope` binary the image carries.
pub const PROCSCOPE: &str = env!("CARGO_BIN_EXE_procscope");

/// A running dockerd; stopped on drop, and everything it made removed.
pub struct Engine {
    /// The root of the engine's cgroup namespace, as the host sees it.
    pub cgroup: Cgroup,
    dockerd: Child,
    /// `--data-root`: images, containers' layers.
    data: PathBuf,
    /// `--exec-root`, the sockets and the pidfile (short: socket paths are at
    /// most 107 bytes).
    run: PathBuf,
    /// `unix://…/docker.sock`.
    pub host: String,
}

/// The script that starts dockerd: into the engine's cgroup, then into new
/// mount and cgroup namespaces, where cgroup2 is mounted on `/sys/fs/cgroup`
/// and dockerd moves into `daemon` (its containers go to `docker/<id>`).
const START: &str = r#"
set -e
echo $$ > "$1/cgroup.procs"
exec unshare --mount --cgroup --propagation private sh -c '
  set -e
  mount -t cgroup2 none /sys/fs/cgroup
  mkdir /sys/fs/cgroup/daemon
  echo $$ > /sys/fs/cgroup/daemon/cgroup.procs
  exec dockerd --data-root "$1" --exec-root "$2/exec" --pidfile "$2/dockerd.pid" \
    --host "unix://$2/docker.sock" \
    --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    --exec-opt native.cgroupdriver=cgroupfs --log-level=warn
' sh "$2" "$3"
"#;

impl Engine {
    /// Starts an engine in a cgroup `engine` under the test's root and waits
    /// (at most 60 s) until it answers.
    pub fn start(env: &TestEnv) -> Engine {
        for tool in ["dockerd", "containerd", "runc", "docker", "unshare"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{tool} is missing: run scripts/install-docker-engine (Debian's docker.io)"
            );
        }
        let cgroup = env.cgroup("engine");
        let tag = format!("{}-{}", std::process::id(), nanos());
        let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("docker-{tag}"));
        let run = PathBuf::from(format!("/run/procscope-docker-{tag}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let log = std::fs::File::create(run.join("dockerd.log")).unwrap();
        let dockerd = Command::new("sh")
            .args(["-c", START, "sh"])
            .arg(cgroup.path())
            .arg(&data)
            .arg(&run)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let host = format!("unix://{}/docker.sock", run.display());
        let engine = Engine { cgroup, dockerd, data, run, host };
        let started = Instant::now();
        loop {
            let out = engine.docker().args(["version", "--format", "{{.Server.Version}}"]).output().unwrap();
            if out.status.success() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "dockerd did not answer in 60 s: {}", engine.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    /// A `docker` client command talking to this engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(["--host", &self.host]).stdin(Stdio::null());
        cmd
    }

    /// dockerd's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("dockerd.log")).unwrap_or_default()
    }

    /// `docker run ARGS`, its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.docker().arg("run").args(args).output().unwrap()
    }

    /// Imports an image `name` whose root holds `busybox` (as `/bin/sh` and
    /// the rest, from Debian's busybox-static), `procscope`,
    /// `procscope-fixture` and util-linux's `setsid` (in `/usr/local/bin`)
    /// and the shared libraries
    /// they need (as `ldd` lists them, at the same paths).
    pub fn import_image(&self, name: &str) {
        let root = self.data.with_extension("rootfs");
        for dir in ["bin", "usr/local/bin", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("busybox (busybox-static) is needed");
        let list = Command::new("/usr/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines().filter(|a| *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        // util-linux's setsid (the fixture's daemons use `--fork`, which
        // busybox's lacks), ahead of busybox's in PATH.
        for bin in [PROCSCOPE, FIXTURE, "/usr/bin/setsid"] {
            let dest = root.join("usr/local/bin").join(Path::new(bin).file_name().unwrap());
            std::fs::copy(bin, dest).unwrap();
            for lib in libraries(bin) {
                let dest = root.join(lib.strip_prefix("/").unwrap());
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::copy(&lib, dest).unwrap();
            }
        }
        let out = Command::new("sh")
            .args([
                "-c",
                r#"tar -C "$1" -c . | docker --host "$2" import -c 'ENV PATH=/usr/local/bin:/bin' - "$3""#,
                "sh",
            ])
            .arg(&root)
            .arg(&self.host)
            .arg(name)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&root);
        assert!(out.status.success(), "docker import: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The cgroups under the engine's, as paths relative to it (sorted).
    pub fn tree(&self) -> Vec<PathBuf> {
        super::cgroup_dirs(self.cgroup.path())
    }
}

/// The shared libraries `bin` loads, as `ldd` lists them (the dynamic loader
/// included).
fn libraries(bin: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    libs
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containers, then containerd.
        let _ = Command::new("kill").args(["-TERM", &self.dockerd.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.dockerd.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.dockerd.kill();
        let _ = self.dockerd.wait();
        // Whatever is left (shims, containers): killed with the cgroup.
        if self.cgroup.is_populated().unwrap_or(false) {
            let _ = self.cgroup.write("cgroup.kill", "1");
        }
        for _ in 0..500 {
            if !self.cgroup.is_populated().unwrap_or(false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut dirs = self.tree();
        dirs.reverse();
        for d in dirs {
            let _ = std::fs::remove_dir(self.cgroup.path().join(d));
        }
        let _ = std::fs::remove_dir(self.cgroup.path());
        // The overlay mounts went with the mount namespace: plain files now.
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_dir_all(&self.run);
    }
}
