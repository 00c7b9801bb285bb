//! Helpers shared by the kernel tests (v1 host) and the v2 guest tests.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources,
    LinuxResourcesBuilder,
};

use super::*;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub(crate) fn unique(name: &str) -> String {
    format!(
        "vessel-test-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Destroys the manager on drop.
pub(crate) struct Guard(pub(crate) Manager);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.0.destroy() {
            eprintln!("cleanup of test cgroup failed: {e}");
        }
    }
}

impl std::ops::Deref for Guard {
    type Target = Manager;
    fn deref(&self) -> &Manager {
        &self.0
    }
}

pub(crate) fn manager(name: &str) -> Guard {
    let rel = PathBuf::from(unique(name));
    Guard(Manager::new(Some(&rel), "unused").unwrap())
}

pub(crate) fn all_gone(m: &Manager) {
    for h in m.hierarchies() {
        assert!(!h.dir.exists(), "{} left behind", h.dir.display());
    }
}

/// A `/bin/sh -c "read go; SCRIPT"` child that waits for `go()` so it can be put into the
/// cgroup first. Killed and reaped on drop.
pub(crate) struct Sh {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Sh {
    pub(crate) fn spawn(script: &str) -> Sh {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("read go; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Sh { child, out }
    }
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Sends one line on stdin (each `read` in the script consumes one).
    pub(crate) fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
    pub(crate) fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        s.trim_end().to_string()
    }
    /// Reads stdout lines up to (excluding) `marker`.
    pub(crate) fn until(&mut self, marker: &str) -> Vec<String> {
        let mut v = Vec::new();
        loop {
            let l = self.line();
            if l == marker {
                return v;
            }
            assert!(
                !l.is_empty() || v.len() < 1000,
                "no {marker} in output: {v:?}"
            );
            v.push(l);
        }
    }
    pub(crate) fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    pub(crate) fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
    pub(crate) fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
        }
        s
    }
}

impl Drop for Sh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn res(
    f: impl FnOnce(LinuxResourcesBuilder) -> LinuxResourcesBuilder,
) -> LinuxResources {
    f(LinuxResourcesBuilder::default()).build().unwrap()
}

pub(crate) fn dev(
    allow: bool,
    t: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    acc: &str,
) -> LinuxDeviceCgroup {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .typ(t)
        .access(acc);
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build().unwrap()
}

/// Polls `f` until it returns Some, for at most 30 s (a correctness bound, not a timing check).
pub(crate) fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn proc_stat(pid: i32) -> (char, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after comm: state(0) ... utime(11) stime(12)
    let state = f[0].chars().next().unwrap();
    (
        state,
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap(),
    )
}

pub(crate) const MIB: i64 = 1024 * 1024;
pub(crate) const HOG: &str = "a=xxxxxxxxxxxxxxxx; while :; do a=\"$a$a\"; done";
