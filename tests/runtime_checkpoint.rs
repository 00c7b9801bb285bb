//! End-to-end checkpoint/restore of `vessel` containers with CRIU: `vessel checkpoint`,
//! `vessel restore`, snapshots (`checkpoint --snapshot`, `restore --from-snapshot`) and
//! live migration between two state roots (`vessel migrate`).
//!
//! Containers here get pipes as stdio (held by the test): CRIU cannot dump a descriptor
//! on a host file such as the test's temp files, and restore hands the restoring
//! process's pipes to the pipes the container had.
mod common;
mod runtime_support;

use std::cell::RefCell;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use runtime_support::*;

/// The static test helper (fixtures/ckpt-helper.sh), or why there is none.
fn helper() -> Result<PathBuf, String> {
    static H: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    H.get_or_init(|| common::fixture_script("ckpt-helper.sh"))
        .clone()
}

/// Result of one `vessel` command.
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} failed: {}\n{}",
            self.stderr,
            self.stdout
        );
        self
    }
}

/// A test environment for checkpoints: an [`Env`] (root + bundle), a host directory
/// bind-mounted at /data, and the pipes handed to containers as stdio.
struct Ck {
    env: Env,
    data: tempfile::TempDir,
    criu: PathBuf,
    held: RefCell<Vec<OwnedFd>>,
}

fn ck_setup(test: &str) -> Option<Ck> {
    let env = setup(test)?;
    let criu = match common::criu() {
        Ok(c) => c,
        Err(e) => {
            common::skip(test, &format!("no working CRIU: {e}"));
            return None;
        }
    };
    let data = tempfile::Builder::new()
        .prefix("vessel-ckdata-")
        .tempdir()
        .unwrap();
    Some(Ck {
        env,
        data,
        criu,
        held: RefCell::new(Vec::new()),
    })
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

fn nonblocking_read(fd: OwnedFd) -> String {
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    let mut f = std::fs::File::from(fd);
    let mut v = Vec::new();
    let _ = f.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

impl Ck {
    /// Runs `vessel --root ROOT args…` with pipes as stdio; a detached container keeps
    /// the pipes (the test holds the other ends until it ends).
    fn vessel_in(&self, root: &Path, args: &[&str]) -> Out {
        let (in_r, in_w) = pipe();
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let status = Command::new(vessel_bin())
            .arg("--root")
            .arg(root)
            .args(args)
            .env("VESSEL_CRIU", &self.criu)
            .stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .status()
            .unwrap();
        self.held.borrow_mut().push(in_w);
        Out {
            status,
            stdout: nonblocking_read(out_r),
            stderr: nonblocking_read(err_r),
        }
    }

    fn vessel(&self, args: &[&str]) -> Out {
        self.vessel_in(self.env.root_path(), args)
    }

    fn bundle(&self) -> String {
        self.env.bundle_path().to_str().unwrap().to_string()
    }

    fn data(&self, name: &str) -> PathBuf {
        self.data.path().join(name)
    }

    /// A config running `args` with /data bound to the test's data dir.
    fn config(&self, args: &[&str]) -> Value {
        let mut v = self.env.config_with_args(args);
        v["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind",
            "source": self.data.path(), "options": ["rbind", "rw"]
        }));
        v
    }

    /// The counter config: a shell increments a variable and writes it to /data/count.
    fn counter_config(&self) -> Value {
        self.config(&[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /data/count.tmp; mv /data/count.tmp /data/count; sleep 0.1; done",
        ])
    }

    fn count(&self) -> Option<u64> {
        std::fs::read_to_string(self.data("count"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn wait_count(&self, pred: impl Fn(u64) -> bool, what: &str) -> u64 {
        wait_for(what, || self.count().filter(|c| pred(*c)))
    }

    fn state_in(&self, root: &Path, id: &str) -> Value {
        let o = self.vessel_in(root, &["state", id]);
        o.ok("state");
        serde_json::from_str(&o.stdout).unwrap()
    }

    fn pid_in(&self, root: &Path, id: &str) -> i64 {
        self.state_in(root, id)["pid"].as_i64().unwrap()
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Force-deletes every container of a second state root on drop.
struct RootGuard {
    root: tempfile::TempDir,
}

impl RootGuard {
    fn new() -> Self {
        RootGuard {
            root: tempfile::Builder::new()
                .prefix("vessel-rootB-")
                .tempdir()
                .unwrap(),
        }
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(self.root.path()) else {
            return;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = Command::new(vessel_bin())
                .arg("--root")
                .arg(self.root.path())
                .args(["delete", "--force", &id])
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(name: String) -> Result<Self, String> {
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("run ip: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(NetNs(name))
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ino(p: impl AsRef<Path>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

/// `delete --force`, then the init is gone and so are the state directory and cgroups.
fn delete_and_check_gone(ck: &Ck, id: &str, pid: i64) {
    ck.vessel(&["delete", "--force", id]).ok("delete");
    assert!(wait_gone(pid));
    assert!(!ck.env.state_dir(id).exists());
    assert!(
        cgroup_dirs(id).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(id)
    );
}

#[test]
fn checkpoint_stops_and_restore_continues_the_counter() {
    let Some(ck) = ck_setup("checkpoint_stops_and_restore_continues_the_counter") else {
        return;
    };
    let id = common::unique_id("ck");
    ck.env.write_config(&ck.counter_config());
    let b = ck.bundle();
    ck.vessel(&["run", "-d", "--bundle", &b, &id]).ok("run -d");
    ck.wait_count(|c| c >= 3, "the counter to reach 3");
    let pid = ck.pid_in(ck.env.root_path(), &id);
    let images = ck.env.bundle_path().join("images");
    let img = images.to_str().unwrap();
    ck.vessel(&["checkpoint", "--image-path", img, &id])
        .ok("checkpoint");
    // The container is stopped and deleted, like runc does.
    assert!(wait_gone(pid), "init {pid} still runs after checkpoint");
    let st = ck.vessel(&["state", &id]);
    assert!(
        !st.status.success(),
        "state after checkpoint: {}",
        st.stdout
    );
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(&id)
    );
    assert!(images.join("inventory.img").is_file());
    assert!(images.join("descriptors.json").is_file());
    let at_dump = ck.count().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ck.count(),
        Some(at_dump),
        "the counter moved while checkpointed"
    );

    ck.vessel(&["restore", "-d", "--image-path", img, "--bundle", &b, &id])
        .ok("restore -d");
    let st = ck.state_in(ck.env.root_path(), &id);
    assert_eq!(st["status"], "running");
    let new_pid = st["pid"].as_i64().unwrap();
    assert!(!process_gone(new_pid));
    // The next value written is at_dump + 1: the counter continues, not from zero.
    let next = ck.wait_count(|c| c != at_dump, "the restored counter to move");
    assert_eq!(next, at_dump + 1, "restored counter did not continue");
    ck.wait_count(|c| c >= at_dump + 3, "the restored counter to go on");
    // It is a full container again: exec, ps, cgroup, delete.
    let o = ck.vessel(&["exec", &id, "cat", "/data/count"]);
    o.ok("exec after restore");
    assert!(o.stdout.trim().parse::<u64>().unwrap() > at_dump);
    let cg = std::fs::read_to_string(format!("/proc/{new_pid}/cgroup")).unwrap();
    assert!(
        cg.contains(&id),
        "restored init is not in the container's cgroup: {cg}"
    );
    delete_and_check_gone(&ck, &id, new_pid);
}

#[test]
fn leave_running_keeps_the_original_and_restores_as_a_new_id() {
    let Some(ck) = ck_setup("leave_running_keeps_the_original_and_restores_as_a_new_id") else {
        return;
    };
    let id = common::unique_id("ckl");
    ck.env.write_config(&ck.counter_config());
    let b = ck.bundle();
    ck.vessel(&["run", "-d", "--bundle", &b, &id]).ok("run -d");
    ck.wait_count(|c| c >= 2, "the counter to start");
    let pid = ck.pid_in(ck.env.root_path(), &id);
    let images = ck.env.bundle_path().join("images");
    let img = images.to_str().unwrap();
    ck.vessel(&["checkpoint", "--leave-running", "--image-path", img, &id])
        .ok("checkpoint --leave-running");
    let at_dump = ck.count().unwrap();
    let st = ck.state_in(ck.env.root_path(), &id);
    assert_eq!(st["status"], "running");
    assert_eq!(
        st["pid"].as_i64(),
        Some(pid),
        "another init after --leave-running"
    );
    ck.wait_count(|c| c >= at_dump + 3, "the original to keep counting");
    // Stop the original; restore the image as another container.
    ck.vessel(&["delete", "--force", &id]).ok("delete original");
    let now = ck.count().unwrap();
    let id2 = common::unique_id("ckl2");
    ck.vessel(&["restore", "-d", "--image-path", img, "--bundle", &b, &id2])
        .ok("restore as a new id");
    assert_eq!(ck.state_in(ck.env.root_path(), &id2)["status"], "running");
    // The restored one counts from the dump's value (possibly one more, written right
    // after the dump), not from the original's later value nor from zero.
    let first = ck.wait_count(|c| c != now, "the restored counter to write");
    assert!(
        first > at_dump.saturating_sub(1) && first <= at_dump + 2,
        "restored counter wrote {first}, dump was at {at_dump}, original ended at {now}"
    );
}

#[test]
fn open_files_socket_pair_and_child_survive_restore() {
    let test = "open_files_socket_pair_and_child_survive_restore";
    let Some(ck) = ck_setup(test) else {
        return;
    };
    let helper = match helper() {
        Ok(h) => h,
        Err(e) => {
            common::skip(test, &format!("no test helper: {e}"));
            return;
        }
    };
    std::fs::copy(&helper, ck.data("ckpt-helper")).unwrap();
    let id = common::unique_id("ckf");
    ck.env
        .write_config(&ck.config(&["/data/ckpt-helper", "/data/status", "/data/log"]));
    let b = ck.bundle();
    ck.vessel(&["run", "-d", "--bundle", &b, &id]).ok("run -d");
    let status = || -> Option<(u64, u64, i64)> {
        let s = std::fs::read_to_string(ck.data("status")).ok()?;
        let mut it = s.split_whitespace().map(|x| x.parse::<i64>().ok());
        Some((it.next()?? as u64, it.next()?? as u64, it.next()??))
    };
    let (n0, _, child0) = wait_for("the helper to run", || status().filter(|s| s.0 >= 3));
    let pids_before = ck.vessel(&["ps", "--format", "json", &id]);
    pids_before.ok("ps");
    let before: Vec<i64> = serde_json::from_str(&pids_before.stdout).unwrap();
    assert_eq!(before.len(), 2, "helper and its child: {before:?}");
    assert!(n0 >= 3);
    let img = ck.env.bundle_path().join("images");
    let img = img.to_str().unwrap();
    ck.vessel(&["checkpoint", "--image-path", img, &id])
        .ok("checkpoint");
    let log_ino = ino(ck.data("log"));
    let (at_dump, _, _) = status().unwrap();
    ck.vessel(&["restore", "-d", "--image-path", img, "--bundle", &b, &id])
        .ok("restore");
    let (n, echo, child) = wait_for("the restored helper to go on", || {
        status().filter(|s| s.0 >= at_dump + 3)
    });
    assert_eq!(echo, n, "the socket pair does not echo after restore");
    assert_eq!(
        child, child0,
        "the child (same in-container pid) is not back"
    );
    let after = ck.vessel(&["ps", "--format", "json", &id]);
    let after: Vec<i64> = serde_json::from_str(&after.ok("ps").stdout).unwrap();
    assert_eq!(
        after.len(),
        2,
        "helper and its child after restore: {after:?}"
    );
    // The log file opened before the checkpoint is still the one written, and its
    // lines go on without a gap or a restart.
    assert_eq!(ino(ck.data("log")), log_ino);
    let log = std::fs::read_to_string(ck.data("log")).unwrap();
    let nums: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let expect: Vec<u64> = (1..=nums.len() as u64).collect();
    assert_eq!(
        nums, expect,
        "the log through the restored fd has gaps or repeats"
    );
}

#[test]
fn pre_dump_then_dump() {
    let test = "pre_dump_then_dump";
    let Some(ck) = ck_setup(test) else {
        return;
    };
    let id = common::unique_id("ckp");
    ck.env.write_config(&ck.counter_config());
    let b = ck.bundle();
    ck.vessel(&["run", "-d", "--bundle", &b, &id]).ok("run -d");
    ck.wait_count(|c| c >= 2, "the counter to start");
    let pre = ck.env.bundle_path().join("pre");
    let last = ck.env.bundle_path().join("last");
    let o = ck.vessel(&[
        "checkpoint",
        "--pre-dump",
        "--image-path",
        pre.to_str().unwrap(),
        &id,
    ]);
    if !o.status.success() && o.stderr.contains("CONFIG_MEM_SOFT_DIRTY") {
        // The refusal is clear and nothing was touched: the container still runs.
        assert_eq!(ck.state_in(ck.env.root_path(), &id)["status"], "running");
        common::skip(
            test,
            "this kernel lacks memory tracking (CONFIG_MEM_SOFT_DIRTY): pre-dumps cannot work",
        );
        return;
    }
    o.ok("pre-dump");
    assert_eq!(ck.state_in(ck.env.root_path(), &id)["status"], "running");
    ck.vessel(&[
        "checkpoint",
        "--parent-path",
        "../pre",
        "--image-path",
        last.to_str().unwrap(),
        &id,
    ])
    .ok("dump on top of the pre-dump");
    let at_dump = ck.count().unwrap();
    ck.vessel(&[
        "restore",
        "-d",
        "--image-path",
        last.to_str().unwrap(),
        "--bundle",
        &b,
        &id,
    ])
    .ok("restore");
    let next = ck.wait_count(|c| c != at_dump, "the restored counter");
    assert_eq!(next, at_dump + 1);
}

#[test]
fn migrate_between_two_roots_and_network_namespaces() {
    let test = "migrate_between_two_roots_and_network_namespaces";
    let Some(ck) = ck_setup(test) else {
        return;
    };
    let pid = std::process::id();
    let (na, nb) = match (
        NetNs::new(format!("vsl-a-{pid}")),
        NetNs::new(format!("vsl-b-{pid}")),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            common::skip(test, &format!("ip netns add: {e}"));
            return;
        }
    };
    let set_net = |v: &mut Value, path: &Path| {
        for ns in v["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = json!(path);
            }
        }
    };
    // Host A: the bundle joining netns A. Host B: a copy of the bundle joining netns B.
    let mut ca = ck.counter_config();
    set_net(&mut ca, &na.path());
    ck.env.write_config(&ca);
    let bundle_b = tempfile::Builder::new()
        .prefix("vessel-bundleB-")
        .tempdir()
        .unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(ck.env.bundle_path().join("rootfs"))
        .arg(bundle_b.path())
        .status()
        .unwrap();
    assert!(st.success());
    let mut cb = ck.counter_config();
    set_net(&mut cb, &nb.path());
    std::fs::write(
        bundle_b.path().join("config.json"),
        serde_json::to_vec_pretty(&cb).unwrap(),
    )
    .unwrap();
    let root_b = RootGuard::new();
    let id = common::unique_id("ckm");
    let b = ck.bundle();
    ck.vessel(&["run", "-d", "--bundle", &b, &id])
        .ok("run -d on A");
    let pid_a = ck.pid_in(ck.env.root_path(), &id);
    assert_eq!(ino(format!("/proc/{pid_a}/ns/net")), ino(na.path()));
    ck.wait_count(|c| c >= 3, "the counter on A");
    let o = ck.vessel(&[
        "migrate",
        "--to-root",
        root_b.root.path().to_str().unwrap(),
        "--bundle",
        bundle_b.path().to_str().unwrap(),
        &id,
    ]);
    o.ok("migrate");
    eprintln!("migration report:\n{}", o.stdout);
    assert!(o.stdout.contains("downtime:"), "{}", o.stdout);
    let at_dump = ck.count().unwrap();
    // Gone from A.
    assert!(wait_gone(pid_a));
    assert!(!ck.vessel(&["state", &id]).status.success(), "still on A");
    // Running on B, in B's network namespace, counting on.
    let st = ck.state_in(root_b.root.path(), &id);
    assert_eq!(st["status"], "running");
    let pid_b = st["pid"].as_i64().unwrap();
    assert!(!process_gone(pid_b));
    assert_eq!(ino(format!("/proc/{pid_b}/ns/net")), ino(nb.path()));
    let next = ck.wait_count(|c| c != at_dump, "the counter on B");
    assert_eq!(next, at_dump + 1, "the counter did not continue on B");
    ck.vessel_in(root_b.root.path(), &["delete", "--force", &id])
        .ok("delete on B");
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(&id)
    );
}

#[test]
fn snapshot_restores_as_a_new_container_with_its_files() {
    let Some(ck) = ck_setup("snapshot_restores_as_a_new_container_with_its_files") else {
        return;
    };
    let id = common::unique_id("cks");
    let mut cfg = ck.config(&[
        "sh",
        "-c",
        "echo made-inside > /marker; i=0; while true; do i=$((i+1)); echo $i > /data/count.tmp; mv /data/count.tmp /data/count; sleep 0.1; done",
    ]);
    cfg["root"]["readonly"] = json!(false);
    ck.env.write_config(&cfg);
    let b = ck.bundle();
    ck.vessel(&["run", "-d", "--bundle", &b, &id]).ok("run -d");
    ck.wait_count(|c| c >= 2, "the counter");
    let work = tempfile::Builder::new()
        .prefix("vessel-snap-")
        .tempdir()
        .unwrap();
    let snap = work.path().join("snap");
    ck.vessel(&["checkpoint", "--snapshot", snap.to_str().unwrap(), &id])
        .ok("snapshot");
    let at_dump = ck.count().unwrap();
    assert!(snap.join("images/inventory.img").is_file());
    assert_eq!(
        std::fs::read_to_string(snap.join("bundle/rootfs/marker")).unwrap(),
        "made-inside\n"
    );
    // A new container from the snapshot, in a new bundle; the original bundle may go.
    std::fs::remove_file(ck.env.bundle_path().join("rootfs/marker")).unwrap();
    let nb = work.path().join("new-bundle");
    let id2 = common::unique_id("cks2");
    ck.vessel(&[
        "restore",
        "-d",
        "--from-snapshot",
        snap.to_str().unwrap(),
        "--bundle",
        nb.to_str().unwrap(),
        &id2,
    ])
    .ok("restore from snapshot");
    let st = ck.state_in(ck.env.root_path(), &id2);
    assert_eq!(st["status"], "running");
    assert_eq!(st["rootfs"], json!(nb.join("rootfs")));
    let next = ck.wait_count(|c| c != at_dump, "the restored counter");
    assert_eq!(next, at_dump + 1);
    let o = ck.vessel(&["exec", &id2, "cat", "/marker"]);
    assert_eq!(o.ok("exec").stdout, "made-inside\n");
    // Restoring the same snapshot into an existing bundle dir is refused.
    let o = ck.vessel(&[
        "restore",
        "-d",
        "--from-snapshot",
        snap.to_str().unwrap(),
        "--bundle",
        nb.to_str().unwrap(),
        "other",
    ]);
    assert!(!o.status.success());
    assert!(o.stderr.contains("already exists"), "{}", o.stderr);
    assert!(!ck.env.state_dir("other").exists());
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let Some(ck) = ck_setup("bad_input_is_refused_and_leaves_nothing") else {
        return;
    };
    let b = ck.bundle();
    let img = ck.env.bundle_path().join("images");
    let img_s = img.to_str().unwrap();
    // Unknown id.
    let o = ck.vessel(&["checkpoint", "--image-path", img_s, "no-such-ck"]);
    assert!(!o.status.success());
    assert!(o.stderr.contains("does not exist"), "{}", o.stderr);
    // A created (not started) container cannot be checkpointed; it stays as it was.
    let id = common::unique_id("ckbad");
    ck.env.write_config(&ck.counter_config());
    ck.vessel(&["create", "--bundle", &b, &id]).ok("create");
    let o = ck.vessel(&["checkpoint", "--image-path", img_s, &id]);
    assert!(!o.status.success());
    assert!(o.stderr.contains("created"), "{}", o.stderr);
    assert_eq!(ck.state_in(ck.env.root_path(), &id)["status"], "created");
    ck.vessel(&["delete", "--force", &id]).ok("delete");
    // A stopped one neither.
    let id = common::unique_id("ckstop");
    ck.env.write_config(&ck.config(&["true"]));
    ck.vessel(&["run", "-d", "--bundle", &b, &id]).ok("run");
    ck.env.wait_status(&id, "stopped");
    let o = ck.vessel(&["checkpoint", "--image-path", img_s, &id]);
    assert!(!o.status.success());
    assert!(o.stderr.contains("stopped"), "{}", o.stderr);
    ck.vessel(&["delete", &id]).ok("delete");
    // Bad cgroup mode.
    let o = ck.vessel(&["checkpoint", "--manage-cgroups-mode", "weird", "x"]);
    assert!(!o.status.success());
    assert!(o.stderr.contains("weird"), "{}", o.stderr);

    // Restore from a missing image dir.
    ck.env.write_config(&ck.counter_config());
    let id = common::unique_id("ckr");
    let o = ck.vessel(&[
        "restore",
        "-d",
        "--image-path",
        "/nonexistent/img",
        "--bundle",
        &b,
        &id,
    ]);
    assert!(!o.status.success());
    assert!(o.stderr.contains("not a checkpoint"), "{}", o.stderr);
    assert!(!ck.env.state_dir(&id).exists());
    // From a corrupt one: garbage images.
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(img.join("inventory.img"), b"garbage, not an image").unwrap();
    std::fs::write(
        img.join("descriptors.json"),
        b"[\"pipe:[1]\",\"pipe:[2]\",\"pipe:[3]\"]",
    )
    .unwrap();
    let o = ck.vessel(&["restore", "-d", "--image-path", img_s, "--bundle", &b, &id]);
    assert!(!o.status.success(), "corrupt images restored: {}", o.stdout);
    assert!(o.stderr.contains("restore"), "{}", o.stderr);
    assert!(
        !ck.env.state_dir(&id).exists(),
        "state left after a failed restore"
    );
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(&id)
    );
    // A restore onto an existing id is refused before CRIU runs.
    let id3 = common::unique_id("ckdup");
    ck.vessel(&["run", "-d", "--bundle", &b, &id3]).ok("run");
    ck.wait_count(|c| c >= 1, "the counter");
    let good = ck.env.bundle_path().join("good");
    ck.vessel(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        good.to_str().unwrap(),
        &id3,
    ])
    .ok("checkpoint");
    let o = ck.vessel(&[
        "restore",
        "-d",
        "--image-path",
        good.to_str().unwrap(),
        "--bundle",
        &b,
        &id3,
    ]);
    assert!(!o.status.success());
    assert!(o.stderr.contains("already exists"), "{}", o.stderr);
    assert_eq!(ck.state_in(ck.env.root_path(), &id3)["status"], "running");
}

#[test]
fn checkpoint_help_exits_zero() {
    // podman probes `checkpoint --help`.
    let out = Command::new(vessel_bin())
        .args(["checkpoint", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--image-path",
        "--work-path",
        "--leave-running",
        "--tcp-established",
        "--ext-unix-sk",
        "--shell-job",
        "--file-locks",
        "--pre-dump",
        "--parent-path",
        "--manage-cgroups-mode",
        "--auto-dedup",
    ] {
        assert!(text.contains(flag), "checkpoint --help lacks {flag}");
    }
    let out = Command::new(vessel_bin())
        .args(["restore", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--bundle",
        "--detach",
        "--pid-file",
        "--console-socket",
        "--image-path",
        "--no-subreaper",
        "--tcp-close",
        "--lsm-profile",
    ] {
        assert!(text.contains(flag), "restore --help lacks {flag}");
    }
}

#[test]
fn foreground_restore_returns_the_exit_status() {
    let Some(ck) = ck_setup("foreground_restore_returns_the_exit_status") else {
        return;
    };
    let id = common::unique_id("ckfg");
    ck.env.write_config(&ck.config(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 25 ]; do i=$((i+1)); echo $i > /data/count.tmp; mv /data/count.tmp /data/count; sleep 0.1; done; exit 3",
    ]));
    let b = ck.bundle();
    ck.vessel(&["run", "-d", "--bundle", &b, &id]).ok("run -d");
    ck.wait_count(|c| c >= 2, "the counter");
    let img = ck.env.bundle_path().join("images");
    let img = img.to_str().unwrap();
    ck.vessel(&["checkpoint", "--image-path", img, &id])
        .ok("checkpoint");
    let at_dump = ck.count().unwrap();
    assert!(at_dump < 25);
    // Without --detach, restore waits like `run` and returns the container's status.
    let o = ck.vessel(&["restore", "--image-path", img, "--bundle", &b, &id]);
    assert_eq!(o.status.code(), Some(3), "stderr: {}", o.stderr);
    assert_eq!(
        ck.count(),
        Some(25),
        "the restored loop did not finish its count"
    );
    assert!(
        !ck.env.state_dir(&id).exists(),
        "state left after foreground restore"
    );
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(&id)
    );
}

/// A cgroup directory this test makes in a named (unmanaged) v1 hierarchy, removed on drop.
struct NamedCgroup(PathBuf);

impl Drop for NamedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A named v1 hierarchy of this process (`name=systemd`): its mount point and our cgroup.
fn named_hierarchy() -> Option<(PathBuf, String)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (name, path) = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, c, p) = (f.next()?, f.next()?, f.next()?);
        c.strip_prefix("name=")
            .map(|n| (n.to_string(), p.to_string()))
    })?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mnt = info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        (post.next()? == "cgroup" && post.nth(1)?.split(',').any(|o| o == format!("name={name}")))
            .then(|| pre.split(' ').nth(4).map(PathBuf::from))?
    })?;
    Some((mnt, path))
}

#[test]
fn unmanaged_named_hierarchies_are_not_recorded_nor_recreated() {
    let test = "unmanaged_named_hierarchies_are_not_recorded_nor_recreated";
    let Some(ck) = ck_setup(test) else { return };
    let Some((mnt, own)) = named_hierarchy() else {
        common::skip(test, "no named cgroup v1 hierarchy (name=...) on this host");
        return;
    };
    // The container sits at our cgroup of the named hierarchy (the runtime does not manage
    // it), next to this unrelated cgroup.
    let other = NamedCgroup(
        mnt.join(own.trim_start_matches('/'))
            .join(common::unique_id("vessel-other")),
    );
    std::fs::create_dir(&other.0).unwrap();
    let id = common::unique_id("ckcg");
    ck.env.write_config(&ck.counter_config());
    let b = ck.bundle();
    ck.vessel(&["run", "-d", "--bundle", &b, &id]).ok("run -d");
    ck.wait_count(|c| c >= 2, "the counter to reach 2");
    let images = ck.env.bundle_path().join("images");
    let img = images.to_str().unwrap();
    ck.vessel(&["checkpoint", "--image-path", img, &id])
        .ok("checkpoint");
    // Gone by the time of the restore, which must neither need nor recreate it.
    std::fs::remove_dir(&other.0).unwrap();
    ck.vessel(&["restore", "-d", "--image-path", img, "--bundle", &b, &id])
        .ok("restore -d");
    assert!(
        !other.0.exists(),
        "the restore recreated an unrelated cgroup: {}",
        other.0.display()
    );
    let pid = ck.pid_in(ck.env.root_path(), &id);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg.contains(&id), "{cg}");
    delete_and_check_gone(&ck, &id, pid);
}

/// A console socket (`--console-socket`): every pty master sent to it is read by a
/// thread into its own buffer.
struct Console {
    _dir: tempfile::TempDir,
    path: PathBuf,
    outputs: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::Mutex<String>>>>>,
}

impl Console {
    fn new() -> Console {
        use std::io::IoSliceMut;
        use std::os::fd::{AsRawFd, FromRawFd, RawFd};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let outputs: Arc<Mutex<Vec<Arc<Mutex<String>>>>> = Arc::default();
        let list = outputs.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut buf = [0u8; 256];
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!([RawFd; 1]);
                let Ok(msg) = nix::sys::socket::recvmsg::<()>(
                    conn.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    nix::sys::socket::MsgFlags::empty(),
                ) else {
                    return;
                };
                let Some(fd) = msg.cmsgs().unwrap().find_map(|c| match c {
                    nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                    _ => None,
                }) else {
                    continue;
                };
                // SAFETY: the kernel installed this descriptor for us.
                let mut master = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                let out = Arc::new(Mutex::new(String::new()));
                list.lock().unwrap().push(out.clone());
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n @ 1..) = master.read(&mut b) {
                        out.lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&b[..n]));
                    }
                });
            }
        });
        Console {
            _dir: dir,
            path,
            outputs,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Waits for the `n`th master (from 1) to show a line the predicate accepts.
    fn wait_line(&self, n: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(what, || {
            let outs = self.outputs.lock().unwrap();
            let text = outs.get(n - 1)?.lock().unwrap().clone();
            text.lines()
                .map(str::trim)
                .find(|l| pred(l))
                .map(str::to_string)
        })
    }
}

#[test]
fn terminal_container_checkpoint_and_restore_with_a_new_pty() {
    let test = "terminal_container_checkpoint_and_restore_with_a_new_pty";
    let Some(ck) = ck_setup(test) else { return };
    let console = Console::new();
    let id = common::unique_id("cktty");
    let mut cfg = ck.config(&[
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /data/count.tmp; mv /data/count.tmp /data/count; \
         echo tick $i; sleep 0.1; done",
    ]);
    cfg["process"]["terminal"] = json!(true);
    ck.env.write_config(&cfg);
    let b = ck.bundle();
    ck.vessel(&[
        "run",
        "-d",
        "--console-socket",
        console.path(),
        "--bundle",
        &b,
        &id,
    ])
    .ok("run -d with a terminal");
    console.wait_line(1, "output on the first pty", |l| l.starts_with("tick "));
    ck.wait_count(|c| c >= 3, "the counter to reach 3");
    let pid = ck.pid_in(ck.env.root_path(), &id);
    let images = ck.env.bundle_path().join("images");
    let img = images.to_str().unwrap();
    // The pty master is the console socket holder's, outside the container: CRIU records
    // the slave alone (orphan-pts-master, as runc does).
    ck.vessel(&["checkpoint", "--image-path", img, &id])
        .ok("checkpoint");
    assert!(wait_gone(pid));
    let at_dump = ck.count().unwrap();
    // Without a console socket the restore has nowhere to send the new master.
    let o = ck.vessel(&["restore", "-d", "--image-path", img, "--bundle", &b, &id]);
    assert!(!o.status.success());
    assert!(o.stderr.contains("console-socket"), "{}", o.stderr);
    assert!(!ck.env.state_dir(&id).exists());
    // A new pty: its master goes to the console socket, the container's stdio is its slave.
    ck.vessel(&[
        "restore",
        "-d",
        "--console-socket",
        console.path(),
        "--image-path",
        img,
        "--bundle",
        &b,
        &id,
    ])
    .ok("restore -d with a console socket");
    let line = console.wait_line(2, "output on the new pty", |l| {
        l.strip_prefix("tick ")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > at_dump)
    });
    assert!(line.starts_with("tick "), "{line}");
    let next = ck.wait_count(|c| c != at_dump, "the restored counter to move");
    assert_eq!(next, at_dump + 1, "restored counter did not continue");
    let new_pid = ck.pid_in(ck.env.root_path(), &id);
    let tty = std::fs::read_link(format!("/proc/{new_pid}/fd/0")).unwrap();
    assert_eq!(tty, Path::new("/dev/pts/0"));
    delete_and_check_gone(&ck, &id, new_pid);
}

#[test]
fn host_dev_null_stdin_is_reopened_in_the_container_and_checkpointable() {
    let test = "host_dev_null_stdin_is_reopened_in_the_container_and_checkpointable";
    let Some(ck) = ck_setup(test) else { return };
    let id = common::unique_id("cknull");
    ck.env.write_config(&ck.counter_config());
    let b = ck.bundle();
    // As conmon starts detached containers: stdin is the host's /dev/null.
    let (out_r, out_w) = pipe();
    let status = Command::new(vessel_bin())
        .arg("--root")
        .arg(ck.env.root_path())
        .args(["run", "-d", "--bundle", &b, &id])
        .env("VESSEL_CRIU", &ck.criu)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w.try_clone().unwrap()))
        .stderr(Stdio::from(out_w))
        .status()
        .unwrap();
    assert!(status.success(), "run -d: {}", nonblocking_read(out_r));
    ck.wait_count(|c| c >= 2, "the counter to reach 2");
    let pid = ck.pid_in(ck.env.root_path(), &id);
    // Still a /dev/null, but the container's own (its /dev), not the host's.
    use std::os::unix::fs::MetadataExt;
    let fd0 = std::fs::metadata(format!("/proc/{pid}/fd/0")).unwrap();
    let host = std::fs::metadata("/dev/null").unwrap();
    assert_eq!(fd0.rdev(), host.rdev());
    assert_ne!((fd0.dev(), fd0.ino()), (host.dev(), host.ino()));
    // So CRIU finds its mount (a host file would fail: "Can't lookup mount").
    let images = ck.env.bundle_path().join("images");
    let img = images.to_str().unwrap();
    ck.vessel(&["checkpoint", "--image-path", img, &id])
        .ok("checkpoint");
    assert!(wait_gone(pid));
    let at_dump = ck.count().unwrap();
    ck.vessel(&["restore", "-d", "--image-path", img, "--bundle", &b, &id])
        .ok("restore -d");
    let next = ck.wait_count(|c| c != at_dump, "the restored counter to move");
    assert_eq!(next, at_dump + 1);
    let new_pid = ck.pid_in(ck.env.root_path(), &id);
    assert_eq!(
        std::fs::read_link(format!("/proc/{new_pid}/fd/0")).unwrap(),
        Path::new("/dev/null")
    );
    ck.vessel(&["delete", "--force", &id]).ok("delete");
    assert!(wait_gone(new_pid));
}
