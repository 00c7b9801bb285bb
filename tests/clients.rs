//! Real clients drive `vessel` in runc's place: podman (through conmon) and containerd (through
//! its runc v2 shim and `ctr`). Each test gets its own podman storage / containerd daemon under
//! a temporary directory and removes everything it made, even when it fails.
//!
//! `VESSEL_CLIENT_RUNTIME=/usr/sbin/runc` runs the same tests against runc, which is how the
//! harness itself is checked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn runtime() -> PathBuf {
    std::env::var_os("VESSEL_CLIENT_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::bin("vessel"))
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Mounts below `dir` in this process's mount namespace, deepest first.
fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().to_string();
    let mut v: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

/// A cgroup path for a client's containers below this process's own cgroup: the clients
/// would otherwise create theirs at the hierarchy roots (podman's `libpod_parent`,
/// containerd's `default`).
fn own_cgroup_child(name: &str) -> String {
    format!("{}/{name}", common::own_cgroup().trim_end_matches('/'))
}

/// State a runtime keeps for container `id` under the default root, as podman and ctr use it.
fn runtime_state_left(root: &Path, id: &str) -> bool {
    root.join(id).exists()
}

// ---------------------------------------------------------------- podman

struct Podman {
    dir: tempfile::TempDir,
    cgroup_parent: String,
    /// Directory put first in PATH: podman checks CRIU's version itself and vessel finds
    /// `criu` there, like runc.
    criu_dir: Option<PathBuf>,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("vessel-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
runtime = "vessel"
[engine.runtimes]
vessel = ["{rt}"]
"#,
                d = d.display(),
                rt = runtime().display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/runroot\"\ngraphroot = \"{d}/graphroot\"\n",
                d = d.display()
            ),
        )
        .unwrap();
        let p = Podman {
            dir,
            cgroup_parent: own_cgroup_child(&format!("vessel-podman-{}", std::process::id())),
            criu_dir: None,
        };
        let rootfs = common::fixtures().join("busybox/rootfs");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | podman import - localhost/busybox",
                rootfs.display()
            ))
            .envs(p.env())
            .output()
            .unwrap();
        assert!(out.status.success(), "podman import: {}", text(&out));
        p
    }

    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        let mut v = vec![
            ("CONTAINERS_CONF", self.dir.path().join("containers.conf")),
            (
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            ),
        ];
        if let Some(d) = &self.criu_dir {
            v.push(("PATH", path_with(d)));
        }
        v
    }

    /// What a [`COUNTER`] container printed so far (`podman logs`).
    fn counter_log(&self, name: &str) -> Vec<Count> {
        self.ok(&["logs", name]).lines().map(Count::parse).collect()
    }

    fn wait_log(&self, name: &str, what: &str, pred: impl Fn(&[Count]) -> bool) -> Vec<Count> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.counter_log(name);
            if pred(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {log:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, name])
            .trim()
            .to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut argv: Vec<&str> = args.to_vec();
        if args.first() == Some(&"run") {
            argv.insert(1, "--cgroup-parent");
            argv.insert(2, &self.cgroup_parent);
        }
        Command::new("podman")
            .args(&argv)
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "podman {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--force", "--all", "--time", "0"]);
        for m in mounts_below(self.dir.path()) {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        common::remove_cgroup_everywhere(&self.cgroup_parent);
    }
}

/// `$PATH` with `dir` first.
fn path_with(dir: &Path) -> PathBuf {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    PathBuf::from(std::env::join_paths(dirs).unwrap())
}

/// The fixture CRIU's directory (its executable is named `criu`), or a skip.
fn criu_dir(test: &str) -> Option<PathBuf> {
    match common::criu() {
        Ok(c) => Some(c.parent().unwrap().to_path_buf()),
        Err(e) => {
            common::skip(test, &format!("no working CRIU: {e}"));
            None
        }
    }
}

/// A shell loop printing `UUID 1`, `UUID 2`, ... every 0.1 s, with a UUID drawn once when
/// it starts: a process that restarts instead of continuing prints another UUID.
const COUNTER: &str = "u=$(cat /proc/sys/kernel/random/uuid); i=0; \
    while true; do i=$((i+1)); echo $u $i; sleep 0.1; done";

/// One line of [`COUNTER`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Count {
    run: String,
    n: u64,
}

/// The counter log is one run (one UUID), every number once and in order: the restored
/// process went on from its memory (a restart would print a new UUID from 1).
fn assert_one_run(log: &[Count], at_dump: usize) {
    let run = &log[0].run;
    let expect: Vec<Count> = (1..=log.len() as u64)
        .map(|n| Count {
            run: run.clone(),
            n,
        })
        .collect();
    assert_eq!(
        log, expect,
        "counter after restore (checkpointed at {at_dump})"
    );
}

impl Count {
    fn parse(line: &str) -> Count {
        let (run, n) = line
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("counter line {line:?}"));
        Count {
            run: run.to_string(),
            n: n.parse()
                .unwrap_or_else(|_| panic!("counter line {line:?}")),
        }
    }
}

fn podman_ready(test: &str) -> bool {
    if !have("podman") || !have("conmon") {
        common::skip(
            test,
            "podman/conmon not installed (fixtures/host-packages.sh installs them)",
        );
        return false;
    }
    true
}

#[test]
fn podman_run_prints_the_containers_output() {
    if !podman_ready("podman_run_prints_the_containers_output") {
        return;
    }
    let p = Podman::new();
    let out = p.ok(&[
        "run",
        "--rm",
        "localhost/busybox",
        "sh",
        "-c",
        "echo hello from $(hostname); cat /proc/self/status | grep NoNewPrivs",
    ]);
    assert!(out.contains("hello from"), "{out}");
    // podman's default: no_new_privileges off.
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    let status = p.run(&["run", "--rm", "localhost/busybox", "sh", "-c", "exit 7"]);
    assert_eq!(status.status.code(), Some(7), "{}", text(&status));
    assert_eq!(p.ok(&["ps", "-aq"]).trim(), "");
}

#[test]
fn podman_detached_pause_exec_stop_rm_leave_nothing() {
    if !podman_ready("podman_detached_pause_exec_stop_rm_leave_nothing") {
        return;
    }
    let p = Podman::new();
    let name = common::unique_id("pm");
    let id = p
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "localhost/busybox",
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "container id: {id}");
    let state = p.ok(&["inspect", "--format", "{{.State.Status}}", &name]);
    assert_eq!(state.trim(), "running");
    p.ok(&["pause", &name]);
    let state = p.ok(&["inspect", "--format", "{{.State.Status}}", &name]);
    assert_eq!(state.trim(), "paused");
    p.ok(&["unpause", &name]);
    let state = p.ok(&["inspect", "--format", "{{.State.Status}}", &name]);
    assert_eq!(state.trim(), "running");
    let out = p.ok(&[
        "exec",
        &name,
        "sh",
        "-c",
        "echo exec-ok; cat /proc/1/cmdline",
    ]);
    assert!(out.starts_with("exec-ok"), "{out}");
    assert!(
        out.contains("sleep"),
        "pid 1 is the container's process: {out}"
    );
    let pid: i32 = p
        .ok(&["inspect", "--format", "{{.State.Pid}}", &name])
        .trim()
        .parse()
        .unwrap();
    p.ok(&["stop", "--time", "2", &name]);
    let state = p.ok(&["inspect", "--format", "{{.State.Status}}", &name]);
    assert_eq!(state.trim(), "exited");
    p.ok(&["rm", &name]);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "container process {pid} left running"
    );
    assert!(
        !runtime_state_left(Path::new("/run/vessel"), &id),
        "vessel state for {id} left in /run/vessel"
    );
}

/// `/proc/PID` is gone (or a zombie nobody reaps) within 30 s.
fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

/// The host directory behind the container's `/sys/fs/cgroup/memory` (the root of that
/// mount in /proc/PID/mountinfo): without a cgroup namespace it is a bind of a host cgroup.
fn memory_mount_root(pid: i32) -> String {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup/memory"))
        .and_then(|l| l.split(' ').nth(3))
        .unwrap_or_else(|| panic!("no /sys/fs/cgroup/memory in {pid}'s mounts:\n{info}"))
        .to_string()
}

/// The memory cgroup of `pid` (from /proc/PID/cgroup).
fn memory_cgroup(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap()
}

#[test]
fn podman_checkpoint_and_restore_continue_the_counter() {
    // No cgroup namespace (podman's default on a v1 host): the container's
    // /sys/fs/cgroup is binds of host cgroup directories, declared external.
    checkpoint_and_restore_continue("podman_checkpoint_and_restore_continue_the_counter", &[]);
}

#[test]
fn podman_checkpoint_and_restore_with_a_cgroup_namespace() {
    // Fresh cgroup mounts in the container's own cgroup namespace: CRIU's own business.
    checkpoint_and_restore_continue(
        "podman_checkpoint_and_restore_with_a_cgroup_namespace",
        &["--cgroupns=private"],
    );
}

fn checkpoint_and_restore_continue(test: &str, run_flags: &[&str]) {
    if !podman_ready(test) {
        return;
    }
    let Some(criu) = criu_dir(test) else { return };
    let mut p = Podman::new();
    p.criu_dir = Some(criu);
    let name = common::unique_id("pmck");
    let mut args = vec!["run", "-d", "--name", &name];
    args.extend(run_flags);
    args.extend(["localhost/busybox", "sh", "-c", COUNTER]);
    let id = p.ok(&args).trim().to_string();
    let pid0: i32 = p.inspect(&name, "{{.State.Pid}}").parse().unwrap();
    let cgroupns = std::fs::read_link(format!("/proc/{pid0}/ns/cgroup")).unwrap()
        != std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    assert_eq!(
        cgroupns,
        !run_flags.is_empty(),
        "cgroup namespace of {pid0}"
    );
    p.wait_log(&name, "the counter to reach 3", |l| l.len() >= 3);
    let pid: i32 = p.inspect(&name, "{{.State.Pid}}").parse().unwrap();
    // podman runs `vessel checkpoint --image-path ... --work-path ... ID`: the container
    // (no cgroup namespace: its /sys/fs/cgroup is binds of host cgroups, declared
    // external) is dumped, stopped and deleted.
    p.ok(&["container", "checkpoint", &name]);
    assert_eq!(p.inspect(&name, "{{.State.Status}}"), "exited");
    assert!(
        wait_gone(pid),
        "container process {pid} still runs after checkpoint"
    );
    assert!(!runtime_state_left(Path::new("/run/vessel"), &id));
    let at_dump = p.counter_log(&name).len();

    // `vessel restore --detach --image-path ... --bundle ... --pid-file ... ID`.
    p.ok(&["container", "restore", &name]);
    assert_eq!(p.inspect(&name, "{{.State.Status}}"), "running");
    let new_pid: i32 = p.inspect(&name, "{{.State.Pid}}").parse().unwrap();
    assert_ne!(new_pid, pid);
    let log = p.wait_log(&name, "the restored counter to go on", |l| {
        l.len() >= at_dump + 3
    });
    // One run, every number once and in order: the restored shell went on from its
    // memory (a restart would print a new UUID from 1).
    assert_one_run(&log, at_dump);
    // A full container again: exec joins it, and its cgroup mount is its own cgroup.
    let out = p.ok(&["exec", &name, "cat", "/proc/1/cmdline"]);
    assert!(
        out.starts_with("sh"),
        "pid 1 is the restored shell: {out:?}"
    );
    let cg = memory_cgroup(new_pid);
    assert!(cg.ends_with(&format!("libpod-{id}")), "{cg}");
    assert_eq!(memory_mount_root(new_pid), cg);
    let own_ns = std::fs::read_link(format!("/proc/{new_pid}/ns/cgroup")).unwrap()
        != std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    assert_eq!(own_ns, cgroupns, "cgroup namespace of the restored init");
    p.ok(&["rm", "--force", "--time", "0", &name]);
    assert!(wait_gone(new_pid));
    assert!(!runtime_state_left(Path::new("/run/vessel"), &id));
}

#[test]
fn podman_checkpoint_export_restores_a_copy_in_its_own_cgroup() {
    let test = "podman_checkpoint_export_restores_a_copy_in_its_own_cgroup";
    if !podman_ready(test) {
        return;
    }
    let Some(criu) = criu_dir(test) else { return };
    let mut p = Podman::new();
    p.criu_dir = Some(criu);
    let name = common::unique_id("pmex");
    let id = p
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "localhost/busybox",
            "sh",
            "-c",
            COUNTER,
        ])
        .trim()
        .to_string();
    p.wait_log(&name, "the counter to reach 3", |l| l.len() >= 3);
    let pid: i32 = p.inspect(&name, "{{.State.Pid}}").parse().unwrap();
    let tar = p.dir.path().join("export.tar.gz");
    let tar_s = tar.to_str().unwrap();
    // podman passes `--leave-running` twice here (runc's parser takes that).
    p.ok(&[
        "container",
        "checkpoint",
        "--leave-running",
        "--export",
        tar_s,
        &name,
    ]);
    assert!(tar.is_file());
    assert_eq!(p.inspect(&name, "{{.State.Status}}"), "running");
    assert_eq!(p.inspect(&name, "{{.State.Pid}}"), pid.to_string());
    let at_dump = p.counter_log(&name).len() as u64;

    // A second container from the archive: a new id, so a new cgroup.
    let name2 = common::unique_id("pmim");
    let id2 = p
        .ok(&["container", "restore", "--import", tar_s, "--name", &name2])
        .trim()
        .to_string();
    assert_ne!(id2, id);
    assert_eq!(p.inspect(&name2, "{{.State.Status}}"), "running");
    let pid2: i32 = p.inspect(&name2, "{{.State.Pid}}").parse().unwrap();
    assert_ne!(pid2, pid);
    let log2 = p.wait_log(&name2, "the copy's counter to go on", |l| {
        l.last().is_some_and(|c| c.n >= at_dump + 3)
    });
    let log1 = p.counter_log(&name);
    // The copy is the same run as the original (same UUID), numbers only going up.
    assert!(
        log2.iter().all(|c| c.run == log1[0].run),
        "the copy restarted: {log2:?} (original {:?})",
        log1[0]
    );
    assert!(log2.windows(2).all(|w| w[1].n >= w[0].n), "{log2:?}");
    assert!(log1.last().unwrap().n > at_dump, "the original stopped");
    // Each container sees its own cgroup at /sys/fs/cgroup/memory.
    let cg1 = memory_cgroup(pid);
    let cg2 = memory_cgroup(pid2);
    assert!(cg2.ends_with(&format!("libpod-{id2}")), "{cg2}");
    assert_eq!(memory_mount_root(pid2), cg2);
    assert_eq!(memory_mount_root(pid), cg1);
    p.ok(&["rm", "--force", "--time", "0", &name, &name2]);
    assert!(wait_gone(pid) && wait_gone(pid2));
    assert!(!runtime_state_left(Path::new("/run/vessel"), &id2));
}

#[test]
fn podman_checkpoint_and_restore_a_container_with_a_terminal() {
    let test = "podman_checkpoint_and_restore_a_container_with_a_terminal";
    if !podman_ready(test) {
        return;
    }
    let Some(criu) = criu_dir(test) else { return };
    let mut p = Podman::new();
    p.criu_dir = Some(criu);
    let name = common::unique_id("pmtty");
    // -t: conmon holds the pty master (process.terminal, --console-socket).
    p.ok(&[
        "run",
        "-dt",
        "--name",
        &name,
        "localhost/busybox",
        "sh",
        "-c",
        COUNTER,
    ]);
    p.wait_log(&name, "the counter to reach 3", |l| l.len() >= 3);
    let pid: i32 = p.inspect(&name, "{{.State.Pid}}").parse().unwrap();
    // The pty's master is outside the container: CRIU records the slave alone
    // (orphan-pts-master, as runc) ...
    p.ok(&["container", "checkpoint", &name]);
    assert!(wait_gone(pid));
    let at_dump = p.counter_log(&name).len();
    // ... and the restore makes a new pty whose master goes to conmon's new console
    // socket (`restore --console-socket`).
    p.ok(&["container", "restore", &name]);
    let new_pid: i32 = p.inspect(&name, "{{.State.Pid}}").parse().unwrap();
    let log = p.wait_log(&name, "the restored counter to go on", |l| {
        l.len() >= at_dump + 3
    });
    assert_one_run(&log, at_dump);
    let tty = std::fs::read_link(format!("/proc/{new_pid}/fd/1")).unwrap();
    assert!(
        tty.starts_with("/dev/pts/"),
        "stdout of the restored init: {tty:?}"
    );
    p.ok(&["rm", "--force", "--time", "0", &name]);
    assert!(wait_gone(new_pid));
}

// ---------------------------------------------------------------- containerd

struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    cgroup_parent: String,
}

impl Containerd {
    fn start() -> Containerd {
        Containerd::start_with(None)
    }

    /// A daemon whose shims find `criu` in `criu_dir` (first in their PATH).
    fn start_with(criu_dir: Option<&Path>) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("vessel-ctd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  address = ""
"#,
                d = d.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        // The daemon's temporary files (a restore's `ctrd-checkpoint*` image dir, which it
        // leaves behind) go below the test's directory.
        std::fs::create_dir(d.join("tmp")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.env("TMPDIR", d.join("tmp"));
        if let Some(c) = criu_dir {
            cmd.env("PATH", path_with(c));
        }
        let daemon = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            dir,
            daemon,
            cgroup_parent: own_cgroup_child(&format!("vessel-ctr-{}", std::process::id())),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.dir.path().join("c.sock").exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let rootfs = c.dir.path().join("rootfs");
        let st = Command::new("cp")
            .arg("-a")
            .arg(common::fixtures().join("busybox/rootfs"))
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(st.success());
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(o.status.success(), "ctr {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// Imports the busybox rootfs as image `localhost/busybox:latest` (an OCI archive
    /// made here: one uncompressed layer, its config and manifest).
    fn import_busybox(&self) {
        let d = self.dir.path().join("oci");
        let blobs = d.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let layer = d.join("layer.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(self.dir.path().join("rootfs"))
            .arg("-cf")
            .arg(&layer)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let add = |data: &[u8]| -> (String, usize) {
            let tmp = d.join("blob.tmp");
            std::fs::write(&tmp, data).unwrap();
            let out = Command::new("sha256sum").arg(&tmp).output().unwrap();
            let sum = String::from_utf8_lossy(&out.stdout)
                .split(' ')
                .next()
                .unwrap()
                .to_string();
            std::fs::rename(&tmp, blobs.join(&sum)).unwrap();
            (format!("sha256:{sum}"), data.len())
        };
        let (layer_digest, layer_size) = add(&std::fs::read(&layer).unwrap());
        std::fs::remove_file(&layer).unwrap();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
        });
        let (config_digest, config_size) = add(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}]
        });
        let (manifest_digest, manifest_size) = add(manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": "localhost/busybox:latest",
                                "org.opencontainers.image.ref.name": "latest"}
            }]
        });
        std::fs::write(d.join("index.json"), index.to_string()).unwrap();
        std::fs::write(d.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let archive = self.dir.path().join("busybox-oci.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&d)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"])
            .status()
            .unwrap();
        assert!(st.success());
        self.ok(&["images", "import", archive.to_str().unwrap()]);
        let images = self.ok(&["images", "ls", "-q"]);
        assert!(
            images.lines().any(|l| l == "localhost/busybox:latest"),
            "{images}"
        );
    }

    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ls = self.ok(&["task", "ls"]);
            if ls
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
            {
                return;
            }
            assert!(Instant::now() < deadline, "task {id} not {status}: {ls}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runtime-root")
    }

    /// `ctr run` arguments that put vessel in runc's place; `flags` go before the positional
    /// rootfs path (`--rootfs` makes the first positional argument a rootfs directory).
    fn run_args(&self, id: &str, flags: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into()];
        v.extend(flags.iter().map(|f| f.to_string()));
        v.extend(["--cgroup".into(), format!("{}/{id}", self.cgroup_parent)]);
        v.extend([
            "--runc-binary".into(),
            runtime().to_string_lossy().into(),
            "--runc-root".into(),
            self.runc_root().to_string_lossy().into(),
            "--env".into(),
            "PATH=/bin:/sbin:/usr/bin:/usr/sbin".into(),
            "--rootfs".into(),
            self.dir.path().join("rootfs").to_string_lossy().into(),
        ]);
        v
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(list) = String::from_utf8(self.ctr(&["task", "ls", "-q"]).stdout) {
            for id in list.lines() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["task", "rm", "-f", id]);
            }
        }
        if let Ok(list) = String::from_utf8(self.ctr(&["containers", "ls", "-q"]).stdout) {
            for id in list.lines() {
                let _ = self.ctr(&["containers", "rm", id]);
            }
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        common::remove_cgroup_everywhere(&self.cgroup_parent);
        for m in mounts_below(self.dir.path()) {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn containerd_ready(test: &str) -> bool {
    if !have("containerd") || !have("ctr") || !have("containerd-shim-runc-v2") {
        common::skip(
            test,
            "containerd not installed (fixtures/host-packages.sh installs it)",
        );
        return false;
    }
    true
}

#[test]
fn ctr_run_through_the_shim_returns_output_and_status() {
    if !containerd_ready("ctr_run_through_the_shim_returns_output_and_status") {
        return;
    }
    let c = Containerd::start();
    let id = common::unique_id("ctr");
    let mut args = c.run_args(&id, &["--rm"]);
    args.extend([id.clone(), "/bin/sh".into(), "-c".into()]);
    args.push("echo hello-from-ctr; exit 3".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = c.ctr(&argv);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello-from-ctr"),
        "{}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(c.ok(&["containers", "ls", "-q"]).trim(), "");
    assert!(!runtime_state_left(&c.runc_root(), &id));
}

#[test]
fn ctr_detached_exec_ps_pause_kill_rm() {
    if !containerd_ready("ctr_detached_exec_ps_pause_kill_rm") {
        return;
    }
    let c = Containerd::start();
    let id = common::unique_id("ctr");
    let mut args = c.run_args(&id, &["-d"]);
    args.extend([id.clone(), "/bin/sleep".into(), "1000".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ok(&argv);
    let out = c.ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/sh",
        "-c",
        "echo exec-ok; cat /proc/1/cmdline",
    ]);
    assert!(out.starts_with("exec-ok"), "{out}");
    assert!(out.contains("sleep"), "{out}");
    let ps = c.ok(&["task", "ps", &id]);
    assert!(
        ps.lines().count() >= 2,
        "task ps lists the container's process: {ps}"
    );
    c.ok(&["task", "pause", &id]);
    let ls = c.ok(&["task", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&id) && l.contains("PAUSED")),
        "{ls}"
    );
    c.ok(&["task", "resume", &id]);
    let ls = c.ok(&["task", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING")),
        "{ls}"
    );
    c.ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ls = c.ok(&["task", "ls"]);
        if ls
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "task did not stop: {ls}");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.ok(&["task", "rm", &id]);
    c.ok(&["containers", "rm", &id]);
    assert!(!runtime_state_left(&c.runc_root(), &id));
}

/// [`COUNTER`] writing its line to /count instead (atomically, by rename).
const COUNTER_FILE: &str = "u=$(cat /proc/sys/kernel/random/uuid); i=0; \
    while true; do i=$((i+1)); echo $u $i > /count.tmp; mv /count.tmp /count; sleep 0.1; done";

#[test]
fn ctr_checkpoint_and_live_restore_continue_the_counter() {
    let test = "ctr_checkpoint_and_live_restore_continue_the_counter";
    if !containerd_ready(test) {
        return;
    }
    let Some(criu) = criu_dir(test) else { return };
    let c = Containerd::start_with(Some(&criu));
    c.import_busybox();
    let id = common::unique_id("ctck");
    let cgroup = format!("{}/{id}", c.cgroup_parent);
    let rt = runtime();
    let root = c.runc_root();
    let run = |id: &str| {
        c.ok(&[
            "run",
            "-d",
            "--cgroup",
            &cgroup,
            "--runc-binary",
            rt.to_str().unwrap(),
            "--runc-root",
            root.to_str().unwrap(),
            "localhost/busybox:latest",
            id,
            "sh",
            "-c",
            COUNTER_FILE,
        ]);
    };
    run(&id);
    let first = wait_count(&c, &id, |n| n >= 3);

    // The shim: `pause`, `checkpoint --image-path DIR --work-path DIR --leave-running`,
    // `resume`; the task goes on.
    let images = c.dir.path().join("task-images");
    c.ok(&[
        "task",
        "checkpoint",
        "--image-path",
        images.to_str().unwrap(),
        "--work-path",
        c.dir.path().join("task-work").to_str().unwrap(),
        &id,
    ]);
    assert!(images.join("inventory.img").is_file());
    assert!(images.join("descriptors.json").is_file());
    c.wait_status(&id, "RUNNING");
    let after = wait_count(&c, &id, |n| n > first.n + 2);
    assert_eq!(after.run, first.run);

    // A checkpoint in containerd's content store, the task killed and removed, then
    // restored from it (`vessel restore --detach ... -no-subreaper --bundle B ID`).
    let reference = format!("localhost/checkpoint/{id}:1");
    c.ok(&["containers", "checkpoint", "--task", &id, &reference]);
    let before = wait_count(&c, &id, |_| true);
    c.ok(&["task", "kill", "-s", "SIGKILL", &id]);
    c.wait_status(&id, "STOPPED");
    c.ok(&["task", "rm", &id]);
    c.ok(&["containers", "rm", &id]);
    assert!(!runtime_state_left(&root.join("default"), &id));
    c.ok(&["containers", "restore", "--live", &id, &reference]);
    c.wait_status(&id, "RUNNING");
    let restored = wait_count(&c, &id, |n| n > before.n + 2);
    // Same run (the UUID drawn at start), still counting: it went on from its memory.
    assert_eq!(
        restored.run, first.run,
        "the task restarted instead of continuing"
    );
    let ps = c.ok(&["task", "ps", &id]);
    assert!(ps.lines().count() >= 2, "{ps}");
    c.ok(&["task", "kill", "-s", "SIGKILL", &id]);
    c.wait_status(&id, "STOPPED");
    c.ok(&["task", "rm", &id]);
    c.ok(&["containers", "rm", &id]);
    assert!(!runtime_state_left(&root.join("default"), &id));
}

/// The first [`COUNTER_FILE`] line of task `id` whose number satisfies `pred`.
fn wait_count(c: &Containerd, id: &str, pred: impl Fn(u64) -> bool) -> Count {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &common::unique_id("w"),
            id,
            "cat",
            "/count",
        ]);
        if o.status.success() {
            let count = Count::parse(&String::from_utf8_lossy(&o.stdout));
            if pred(count.n) {
                return count;
            }
        }
        assert!(Instant::now() < deadline, "counter of {id}: {}", text(&o));
        std::thread::sleep(Duration::from_millis(50));
    }
}
