//! Helpers for the `vessel` end-to-end tests (tests/runtime_*.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;

/// The `vessel` binary, built on first use so `cargo test -p vessel` works from a clean
/// checkout (a facade dev-dependency cannot build a bin-only crate).
pub fn vessel_bin() -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let res = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "vessel-bins", "--bin", "vessel"])
            .current_dir(common::repo_root());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of vessel failed: {s}")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = res {
        panic!("{e}");
    }
    common::bin("vessel")
}

/// A test environment: a private `--root` and a private copy of the busybox bundle.
/// Dropping it force-deletes every container left under the root.
pub struct Env {
    pub root: tempfile::TempDir,
    pub bundle: tempfile::TempDir,
}

/// Sets up an [`Env`], or records a skip and returns `None` when the host cannot run it.
pub fn setup(test: &str) -> Option<Env> {
    if !nix::unistd::geteuid().is_root() {
        common::skip(test, "needs root");
        return None;
    }
    let src = common::fixtures().join("bundle");
    if !src.join("rootfs/bin/busybox").exists() {
        common::skip(test, "busybox bundle missing: run fixtures/busybox.sh");
        return None;
    }
    let root = tempfile::Builder::new()
        .prefix("vessel-root-")
        .tempdir()
        .unwrap();
    let bundle = tempfile::Builder::new()
        .prefix("vessel-bundle-")
        .tempdir()
        .unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(src.join("rootfs"))
        .arg(bundle.path())
        .status()
        .unwrap();
    assert!(st.success(), "copy rootfs");
    let env = Env { root, bundle };
    env.write_config(&base_config());
    Some(env)
}

/// The fixture's config, made runnable by this build: the fixture lists ambient
/// capabilities without inheritable ones, which the capability module (rightly) refuses.
pub fn base_config() -> Value {
    let data = std::fs::read(common::repo_root().join("fixtures/config.json")).unwrap();
    let mut v: Value = serde_json::from_slice(&data).unwrap();
    let amb = v["process"]["capabilities"]["ambient"].clone();
    v["process"]["capabilities"]["inheritable"] = amb;
    if !rootfs_module() {
        // Before the rootfs module is merged, mounts & co are refused by this build.
        let o = v.as_object_mut().unwrap();
        o.remove("mounts");
        let l = v["linux"].as_object_mut().unwrap();
        l.remove("maskedPaths");
        l.remove("readonlyPaths");
        v["root"] = json!({"path": "rootfs"});
    }
    v
}

/// Whether this build sets up mounts (the rootfs module is merged).
pub fn rootfs_module() -> bool {
    let out = Command::new(vessel_bin()).arg("features").output().unwrap();
    let f: Value = serde_json::from_slice(&out.stdout).unwrap();
    f["mountOptions"].as_array().is_some_and(|a| !a.is_empty())
}

impl Env {
    pub fn bundle_path(&self) -> &Path {
        self.bundle.path()
    }

    pub fn root_path(&self) -> &Path {
        self.root.path()
    }

    pub fn write_config(&self, v: &Value) {
        std::fs::write(
            self.bundle.path().join("config.json"),
            serde_json::to_vec_pretty(v).unwrap(),
        )
        .unwrap();
    }

    /// A config with `args` as the process.
    pub fn config_with_args(&self, args: &[&str]) -> Value {
        let mut v = base_config();
        v["process"]["args"] = json!(args);
        v
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(vessel_bin());
        c.arg("--root").arg(self.root.path()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `vessel --root R args…` and collects its output. Stdout and stderr go through
    /// files, not pipes: a detached container inherits them and would keep a pipe open.
    pub fn vessel(&self, args: &[&str]) -> Output {
        run_captured(&mut self.cmd(args))
    }

    /// As [`Env::vessel`] with `--bundle` for create/run.
    pub fn vessel_b(&self, sub: &str, extra: &[&str], id: &str) -> Output {
        let b = self.bundle.path().to_str().unwrap().to_string();
        let mut args = vec![sub, "--bundle", b.as_str()];
        args.extend_from_slice(extra);
        args.push(id);
        self.vessel(&args)
    }

    /// `vessel state id` parsed.
    pub fn state(&self, id: &str) -> Value {
        let out = self.vessel(&["state", id]);
        assert!(out.status.success(), "state {id}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits (bounded) until the container reaches `status`.
    pub fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.state(id);
            if st["status"] == status || Instant::now() > deadline {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The container's state directory.
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.root.path().join(id)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(self.root.path()) else {
            return;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self.cmd(&["delete", "--force", &id]).output();
            // If delete failed, at least do not leave the process behind.
            if let Ok(data) = std::fs::read(e.path().join("state.json")) {
                if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                    if let Some(pid) = v["pid"].as_i64().filter(|p| *p > 0) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether `/proc/<pid>` is gone (or a zombie).
pub fn process_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
    }
}

/// Waits (bounded) until `pid` is gone; returns whether it is.
pub fn wait_gone(pid: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !process_gone(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Host cgroup directories named like the container (none may survive delete).
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for h in rd.flatten() {
        find_named(&h.path(), id, 6, &mut out);
    }
    out
}

fn find_named(dir: &Path, name: &str, depth: u32, out: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name() == name {
                out.push(e.path());
            }
            find_named(&e.path(), name, depth - 1, out);
        }
    }
}

/// Runs `cmd` and collects its output. Stdout and stderr go through files, not pipes: a
/// detached container inherits them and would keep a pipe open.
pub fn run_captured(cmd: &mut Command) -> Output {
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let status = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .unwrap();
    let read = |f: &mut std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output {
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}
