//! Test support: boots Debian's cloud kernel (fixtures/kernel.sh) under qemu with TCG (no
//! KVM) from a busybox initramfs (fixtures/initramfs.sh) that carries test binaries and
//! fixture trees, runs a shell snippet as /init and hands back its serial console.
//!
//! Used where a test needs a kernel other than the host's: the cgroup v2 tests
//! (src/cgroups/guest_vm.rs, a unified-only boot) and the CRIU memory-tracking tests
//! (tests/criu.rs, a kernel with CONFIG_MEM_SOFT_DIRTY), and the cgroup v2 half of
//! benches/cgroups.rs. Each includes this file with `#[path]`, so it is compiled into each
//! test or bench binary; it is never part of the library.
#![allow(dead_code)] // each includer uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set in the guest's environment for the test binaries /init runs.
pub const IN_GUEST_ENV: &str = "VESSEL_IN_GUEST";

/// Whether this process runs inside a guest booted by [`Guest::run`].
pub fn in_guest() -> bool {
    std::env::var_os(IN_GUEST_ENV).is_some()
}

/// The repository's fixtures/ (next to the including crate's manifest: the runtime crate's
/// tests sit one level below the workspace root, the facade crate's benches at it).
pub fn fixtures_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let here = manifest.join("fixtures");
    if here.join("initramfs.sh").exists() {
        here
    } else {
        manifest.join("../fixtures")
    }
}

/// The fixture cache (`VESSEL_FIXTURES` overrides fixtures/.cache).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VESSEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures_dir().join(".cache"))
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// The guest kernel, or why guests cannot be booted on this host.
pub fn kernel() -> Result<PathBuf, String> {
    let kernel = cache_dir().join("kernel/vmlinuz");
    if !kernel.exists() {
        return Err(format!(
            "{} missing (run fixtures/kernel.sh)",
            kernel.display()
        ));
    }
    for cmd in ["qemu-system-x86_64", "cpio", "gzip"] {
        if !on_path(cmd) {
            return Err(format!("{cmd} not installed (run fixtures/initramfs.sh)"));
        }
    }
    Ok(kernel)
}

/// Whether the guest kernel was built with `CONFIG_<option>=y`.
pub fn kernel_has(option: &str) -> bool {
    std::fs::read_to_string(cache_dir().join("kernel/config"))
        .is_ok_and(|c| c.lines().any(|l| l == format!("CONFIG_{option}=y")))
}

/// Mounts and devices every guest gets before its script runs.
const SETUP: &str = r#"mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
"#;

/// One guest boot: what goes into its initramfs, what /init runs, how qemu is set up.
pub struct Guest {
    script: String,
    specs: Vec<String>,
    modules: Vec<String>,
    memory: String,
    append: String,
    disk_mib: Option<u64>,
    timeout: Duration,
    echo: bool,
}

/// What the guest printed on its console.
pub struct GuestRun {
    pub lines: Vec<String>,
    /// The script's exit status, if the guest got to report it.
    pub exit: Option<i32>,
}

impl Guest {
    /// A guest whose /init runs `script` (sh, after [`SETUP`]) with stderr on the console;
    /// the script's exit status is the run's [`GuestRun::exit`].
    pub fn new(script: &str) -> Self {
        Guest {
            script: script.to_string(),
            specs: Vec::new(),
            modules: Vec::new(),
            memory: "512M".into(),
            append: String::new(),
            disk_mib: None,
            // Generous: a hung guest fails the test instead of hanging CI.
            timeout: Duration::from_secs(600),
            echo: true,
        }
    }

    /// Put executable `path` at /bin/`name`, with the shared libraries ldd lists for it.
    pub fn binary(mut self, path: &Path, name: &str) -> Self {
        self.specs.push(format!("{}={name}", path.display()));
        self
    }

    /// Copy a file or directory tree as it is (no library closure) to `dest` (absolute).
    pub fn copy(mut self, src: &Path, dest: &str) -> Self {
        self.specs.push(format!("--copy={}={dest}", src.display()));
        self
    }

    /// insmod this module of the guest kernel (a path under fixtures/.cache/kernel/modules)
    /// before the script runs; modules load in the order given.
    pub fn module(mut self, rel: &str) -> Self {
        let name = Path::new(rel)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let src = cache_dir().join("kernel/modules").join(rel);
        self = self.copy(&src, &format!("/lib/modules/{name}"));
        self.modules.push(name);
        self
    }

    /// Guest RAM as qemu's `-m` takes it (default 512M).
    pub fn memory(mut self, m: &str) -> Self {
        self.memory = m.into();
        self
    }

    /// Extra kernel command line.
    pub fn append(mut self, args: &str) -> Self {
        self.append = args.into();
        self
    }

    /// Do not echo the console as it arrives (the lines are still in [`GuestRun::lines`]).
    pub fn quiet(mut self) -> Self {
        self.echo = false;
        self
    }

    /// Attach a blank NVMe disk of this size (the driver is built into the cloud kernel).
    pub fn nvme_disk(mut self, mib: u64) -> Self {
        self.disk_mib = Some(mib);
        self
    }

    fn init(&self) -> String {
        let mut s = String::from("#!/bin/sh\n");
        s.push_str(SETUP);
        for m in &self.modules {
            s.push_str(&format!(
                "insmod /lib/modules/{m} || echo \"insmod {m} failed\"\n"
            ));
        }
        s.push_str("echo VESSEL-GUEST-START\n");
        // A subshell, so that `exit` in the script ends the script, not init.
        s.push_str(&format!("run() (\n{}\n)\n", self.script));
        s.push_str(&format!(
            "export {IN_GUEST_ENV}=1 RUST_BACKTRACE=1\nrun 2>&1\n"
        ));
        s.push_str("echo \"VESSEL-GUEST-EXIT=$?\"\npoweroff -f\n");
        s
    }

    /// Build the initramfs, boot the guest on `kernel` (from [`kernel()`]) and collect its
    /// console until the script reported its exit status (or the guest died, or timed out).
    /// Panics if the guest cannot be started (see [`Guest::try_run`]).
    pub fn run(&self, kernel: &Path) -> GuestRun {
        self.try_run(kernel).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Guest::run`], with Err(why) when the initramfs cannot be built or qemu not
    /// started (for callers that report instead of panicking, like the benches).
    pub fn try_run(&self, kernel: &Path) -> Result<GuestRun, String> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("vessel-guest-{}-", std::process::id()))
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let init = tmp.path().join("init");
        std::fs::write(&init, self.init()).map_err(|e| format!("{}: {e}", init.display()))?;
        let initrd = tmp.path().join("initrd.cpio.gz");
        let script = fixtures_dir().join("initramfs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&initrd)
            .arg(&init)
            .args(&self.specs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "initramfs.sh failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }

        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg", "-nographic", "-no-reboot", "-smp", "1"])
            .args(["-m", &self.memory])
            .args(["-monitor", "none", "-serial", "stdio"]);
        if let Some(mib) = self.disk_mib {
            let disk = tmp.path().join("disk.img");
            std::fs::File::create(&disk)
                .and_then(|f| f.set_len(mib << 20))
                .map_err(|e| format!("{}: {e}", disk.display()))?;
            qemu.arg("-drive")
                .arg(format!("file={},if=none,id=d0,format=raw", disk.display()))
                .args(["-device", "nvme,drive=d0,serial=vessel0"]);
        }
        let child = qemu
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 quiet {}", self.append))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let mut child = KillOnDrop(child);
        let out = child.0.stdout.take().ok_or("qemu's stdout is not piped")?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + self.timeout;
        let mut run = GuestRun {
            lines: Vec::new(),
            exit: None,
        };
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(l) => {
                    let l = l.trim_end_matches('\r').to_string();
                    if self.echo {
                        println!("guest| {l}");
                    }
                    if let Some(code) = l.strip_prefix("VESSEL-GUEST-EXIT=") {
                        run.exit = code.trim().parse::<i32>().ok();
                    }
                    run.lines.push(l);
                    if run.exit.is_some() {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(run)
    }
}

impl GuestRun {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Asserts that /init ran and the script exited 0 without any test skipping.
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.lines.iter().any(|l| l.contains("VESSEL-GUEST-START")),
            "guest never reached /init"
        );
        assert_eq!(self.exit, Some(0), "{what} failed in the guest");
        assert!(
            !self.lines.iter().any(|l| l.contains("SKIPPED")),
            "a test skipped inside the guest"
        );
    }

    /// How many tests libtest reports as passed (`test result: ok. N passed; ...`).
    pub fn passed(&self) -> u32 {
        let summary = self
            .lines
            .iter()
            .find(|l| l.starts_with("test result: ok."))
            .expect("no test summary from the guest");
        summary
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// Kills qemu if the test fails midway.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
