//! Boots Debian's cloud kernel under qemu (TCG, no KVM) with `cgroup_no_v1=all` and runs the
//! v2 tests of this very test binary inside it, streaming the serial console.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("VESSEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures_dir().join(".cache"))
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo VESSEL-GUEST-START
VESSEL_IN_GUEST=1 RUST_BACKTRACE=1 /bin/vessel-cgroup-tests --test-threads=2 cgroups::v2_tests:: 2>&1
echo "VESSEL-GUEST-EXIT=$?"
poweroff -f
"#;

/// Kills qemu if the test fails midway.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn v2_tests_in_qemu_guest() {
    if std::env::var_os("VESSEL_IN_GUEST").is_some() {
        return; // we are the guest: the v2 tests themselves run instead
    }
    let kernel = cache_dir().join("kernel/vmlinuz");
    if !kernel.exists() {
        println!(
            "SKIPPED: {} missing (run fixtures/kernel.sh)",
            kernel.display()
        );
        return;
    }
    for cmd in ["qemu-system-x86_64", "cpio", "gzip"] {
        if !on_path(cmd) {
            println!("SKIPPED: {cmd} not installed (run fixtures/initramfs.sh)");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let init = tmp.path().join("init");
    std::fs::write(&init, INIT).unwrap();
    let initrd = tmp.path().join("initrd.cpio.gz");
    let exe = std::env::current_exe().unwrap();
    let st = Command::new("bash")
        .arg(fixtures_dir().join("initramfs.sh"))
        .arg(&initrd)
        .arg(&init)
        .arg(format!("{}=vessel-cgroup-tests", exe.display()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "initramfs.sh failed");

    // A small NVMe disk (the driver is built into the cloud kernel) for the io controller.
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-nographic",
            "-no-reboot",
            "-m",
            "512M",
            "-smp",
            "1",
        ])
        .args(["-monitor", "none", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!("file={},if=none,id=d0,format=raw", disk.display()))
        .args(["-device", "nvme,drive=d0,serial=vessel0"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 cgroup_no_v1=all panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // Generous bound so a hung guest fails the test instead of hanging CI.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut lines = Vec::new();
    let mut exit = None;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                let l = l.trim_end_matches('\r').to_string();
                println!("guest| {l}");
                if let Some(code) = l.strip_prefix("VESSEL-GUEST-EXIT=") {
                    exit = code.trim().parse::<i32>().ok();
                }
                lines.push(l);
                if exit.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let text = lines.join("\n");
    assert!(
        text.contains("VESSEL-GUEST-START"),
        "guest never reached /init"
    );
    assert_eq!(exit, Some(0), "v2 tests failed in the guest");
    assert!(
        !text.contains("SKIPPED"),
        "a v2 test skipped inside the guest"
    );
    let summary = lines
        .iter()
        .find(|l| l.starts_with("test result: ok."))
        .expect("no test summary from the guest");
    let passed: u32 = summary
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 11, "only {passed} v2 tests ran: {summary}");
}
