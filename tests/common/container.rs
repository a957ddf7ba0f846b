//! Container-like environments made with `unshare`, as Docker and Kubernetes
//! make them: a cgroup namespace rooted at a cgroup of the container's own,
//! a mount namespace with cgroup2 mounted at `/sys/fs/cgroup`, a PID
//! namespace whose init reaps orphans (as `docker run --init` does), and,
//! for a default container, cgroup2 read-only and no `CAP_SYS_ADMIN`.

use std::path::PathBuf;
use std::time::Duration;

use procscope::Cgroup;

use super::TestEnv;

/// What the container may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// As `docker run --privileged` or systemd-nspawn: cgroup2 read-write in
    /// the container's cgroup namespace, every capability.
    Privileged,
    /// As a default `docker run` or Kubernetes pod: cgroup2 read-only, no
    /// `CAP_SYS_ADMIN` (in the bounding set or anywhere else).
    Default,
}

/// A running container; on drop its init is SIGKILLed, which ends every
/// process in its PID namespace, and its cgroups are removed.
pub struct Container {
    /// The container's cgroup, as the host sees it: the root of its cgroup
    /// namespace.
    pub cgroup: Cgroup,
    kind: Kind,
    /// `unshare`, on the host.
    unshare: std::process::Child,
    /// The container's init (PID 1 inside), as the host sees it.
    pub init: i32,
}

/// The init: PID 1 of the container, reaping every orphan.
const INIT: &str = "import os, sys, time\nprint('up', flush=True)\nwhile True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(0.05)\n";

impl Container {
    /// Starts a container of `kind` in a cgroup `name` under the test's root.
    pub fn start(env: &TestEnv, name: &str, kind: Kind) -> Container {
        use std::io::BufRead;
        let cgroup = env.cgroup(name);
        let ro = if kind == Kind::Default { "ro" } else { "rw" };
        // Into the container's cgroup first: the cgroup namespace is rooted
        // where `unshare` is when it makes it.
        let script = format!(
            "echo $$ > {procs} && exec unshare --cgroup --mount --pid --fork --mount-proc --propagation private -- \
             sh -c 'mount -t tmpfs none /sys/fs/cgroup && mount -t cgroup2 -o {ro} none /sys/fs/cgroup && \
             exec python3 -c \"$0\"' \"$INIT\"",
            procs = cgroup.path().join("cgroup.procs").display()
        );
        let mut unshare = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("INIT", INIT)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start unshare (util-linux) for a container");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(unshare.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "up", "the container's init did not start (unshare, mount and python3 are needed)");
        let init = children_of(unshare.id() as i32);
        assert_eq!(init.len(), 1, "unshare --fork has one child, the container's init: {init:?}");
        Container { cgroup, kind, unshare, init: init[0] }
    }

    /// A command that runs `program` inside the container: in its cgroup and
    /// its namespaces, without `CAP_SYS_ADMIN` in a default container. Its
    /// parent inside is outside the PID namespace (PID 0 there), as for
    /// `docker exec`.
    pub fn command(&self, program: &str) -> std::process::Command {
        let drop = if self.kind == Kind::Default { "--bounding-set -sys_admin --inh-caps -sys_admin" } else { "" };
        let script = format!(
            "echo $$ > {procs} && exec nsenter -t {init} --pid --mount --cgroup -- setpriv {drop} -- \"$@\"",
            procs = self.cgroup.path().join("cgroup.procs").display(),
            init = self.init,
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &script, "sh", program]);
        cmd
    }

    /// The host's path of `inside`, a path under the container's
    /// `/sys/fs/cgroup`.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        let rel = inside.strip_prefix("/sys/fs/cgroup").expect("a path under /sys/fs/cgroup");
        self.cgroup.path().join(rel.trim_start_matches('/'))
    }

    /// The host pid of the process `nsenter` (started by [`command`]) runs
    /// inside.
    pub fn inner_pid(&self, nsenter: &std::process::Child) -> i32 {
        for _ in 0..500 {
            if let [pid] = children_of(nsenter.id() as i32)[..] {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nsenter {} started no process inside", nsenter.id());
    }

    /// Every cgroup directory under the container's cgroup, as paths
    /// relative to it (sorted).
    pub fn tree(&self) -> Vec<PathBuf> {
        super::cgroup_dirs(self.cgroup.path())
    }

    /// The processes in the container's cgroup tree, but its init.
    pub fn processes(&self) -> Vec<u32> {
        let mut all = Vec::new();
        let mut dirs = vec![self.cgroup.path().to_owned()];
        dirs.extend(self.tree().into_iter().map(|r| self.cgroup.path().join(r)));
        for d in dirs {
            let text = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            all.extend(text.lines().filter_map(|l| l.parse::<u32>().ok()));
        }
        all.retain(|&p| p as i32 != self.init && p != self.unshare.id());
        all
    }
}

impl Container {
    /// Waits (at most `secs`) until no process but the init is left in the
    /// container (guardians of `exec` commands exit once they have removed
    /// their instances); returns what is left.
    pub async fn settle(&self, secs: u64) -> Vec<u32> {
        for _ in 0..secs * 100 {
            if self.processes().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.processes()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // The init's death ends the PID namespace: the kernel kills the rest.
        let _ = std::process::Command::new("kill").args(["-KILL", &self.init.to_string()]).status();
        let _ = self.unshare.wait();
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
    }
}

/// The children of `pid` (every thread's), from `/proc`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            kids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    kids
}
