//! Helpers shared by the end-to-end tests in `tests/`.
//!
//! Conventions (see docs/testing.md): tests run for real as root; each cleans up what it
//! creates even on failure (use guards with `Drop`); a test that needs something this host
//! lacks calls [`skip`] and returns, which records the skip so `.ci/test` can count it.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Root of the repository (the facade crate's manifest dir).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// qemu's `-cpu` for the microvm peer of the VM tests and benchmarks: the host's CPU without
/// IA32_ARCH_CAPABILITIES, whose write (MSR 0x10a) some kvm_pvm hosts refuse, which makes
/// qemu abort; the test guest does not need it.
pub const QEMU_CPU: &str = "host,-arch-capabilities";

/// The fixture cache (`fixtures/.cache`, or `$VESSEL_FIXTURES`).
pub fn fixtures() -> PathBuf {
    std::env::var_os("VESSEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("fixtures/.cache"))
}

/// Path of a binary built from `bins/` (same profile as the test).
pub fn bin(name: &str) -> PathBuf {
    let mut exe = std::env::current_exe().expect("current_exe");
    exe.pop(); // deps/
    if exe.ends_with("deps") {
        exe.pop();
    }
    exe.join(name)
}

/// A container id unique to this test process and call.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Record that `test` was skipped because of `reason`: printed, and appended to
/// `$VESSEL_SKIP_LOG` (set by `.ci/test`) so the run's summary counts it.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("VESSEL_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// This process's cgroup in the memory hierarchy. On this kind of host every other
/// hierarchy's own cgroup is "/", so a path below this one is below ours everywhere.
pub fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| "/".into())
}

/// Removes the cgroup `rel` and everything below it from every hierarchy, deepest first.
pub fn remove_cgroup_everywhere(rel: &str) {
    // A process that is still dying keeps its cgroup busy (EBUSY), and a client's own
    // clean-up process (podman's `container cleanup`, started by conmon) may still be at work
    // in it: retry for a while until the tree is gone from every hierarchy.
    for _ in 0..100 {
        if !remove_cgroup_tree_once(rel) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
}

/// One pass of [`remove_cgroup_everywhere`]; true if something is left.
fn remove_cgroup_tree_once(rel: &str) -> bool {
    let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") else {
        return false;
    };
    let mut left = false;
    for h in hs.flatten() {
        let top = h.path().join(rel.trim_start_matches('/'));
        let mut dirs = Vec::new();
        let mut stack = vec![top.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
                dirs.push(d);
            }
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        left |= top.exists();
    }
    left
}

/// Runs `fixtures/NAME` (an idempotent fixture script printing a file's path) and
/// returns that file, or why there is none.
pub fn fixture_script(name: &str) -> Result<PathBuf, String> {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("fixtures").join(name))
        .output()
        .map_err(|e| format!("run fixtures/{name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fixtures/{name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("fixtures/{name} printed no file: {p:?}"))
    }
}

/// The fixture's CRIU (fixtures/criu.sh: 4.1.1, as bookworm's 3.17 fails on this
/// kernel), or why there is none.
pub fn criu() -> Result<PathBuf, String> {
    static CRIU: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    CRIU.get_or_init(|| fixture_script("criu.sh")).clone()
}
