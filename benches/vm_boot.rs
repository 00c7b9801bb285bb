//! Side-by-side microVM benchmark: `vessel-vm` vs `qemu-system-x86_64 -M microvm` booting the
//! same bare-metal test guest, both through its PVH entry (vessel's `--boot auto` picks it, as
//! qemu does).
//!
//! Run with `cargo bench --bench vm_boot` (as root, after `bash fixtures/guest.sh`,
//! `bash fixtures/qemu.sh` and `cargo build --release -p vessel-bins`). Environment:
//! `VESSEL_BENCH_RUNS` (default 20 boots per VMM), `VESSEL_BENCH_EXITS` (default 20000
//! accesses per exit-rate run).
//!
//! Reported per VMM, as median (p10..p90), and the ratio of vessel's median to qemu's:
//! * time from process start to the guest's first serial byte and to its `ready` line, and
//!   to process exit (guest `exit=0` through the debug-exit port);
//! * peak RSS of the VMM process (wait4), and — sampled while the guest spins — resident
//!   memory outside the guest-RAM mapping (VMM overhead beyond the guest memory it touched);
//! * exits per second for port I/O and MMIO reads ((N accesses) / (time(N) - time(0))).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_MIB: u64 = 128;

#[derive(Clone, Copy, PartialEq)]
enum Vmm {
    Vessel,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Vessel => "vessel-vm",
            Vmm::Qemu => "qemu microvm",
        }
    }
}

struct Env {
    vessel: PathBuf,
    qemu: Option<PathBuf>,
    guest: PathBuf,
}

fn command(env: &Env, vmm: Vmm, cmdline: &str) -> Command {
    match vmm {
        Vmm::Vessel => {
            let mut c = Command::new(&env.vessel);
            c.args(["run", "--kernel"])
                .arg(&env.guest)
                .args(["--cmdline", cmdline, "--memory", &format!("{GUEST_MIB}M")])
                .args(["--console", "stdio", "--timeout", "60"]);
            c
        }
        Vmm::Qemu => {
            let mut c = Command::new(env.qemu.as_ref().expect("qemu"));
            c.args([
                "-M",
                "microvm,x-option-roms=off,rtc=off",
                "-enable-kvm",
                "-cpu",
                common::QEMU_CPU,
            ])
            .args(["-m", &format!("{GUEST_MIB}M"), "-smp", "1"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-display",
                "none",
            ])
            .args(["-serial", "stdio", "-no-reboot"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
            .arg("-kernel")
            .arg(&env.guest)
            .args(["-append", cmdline]);
            c
        }
    }
}

struct Boot {
    first_byte: Duration,
    ready: Duration,
    exit: Duration,
    max_rss_kib: i64,
}

fn wait4(child: &Child) -> (std::process::ExitStatus, i64) {
    let mut status = 0;
    // SAFETY: rusage is plain old data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child; status and usage point to valid memory.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss)
}

/// Whether `st` is the guest's `exit=0` under `vmm` (qemu's debug-exit status is 2*code+1).
fn exited_ok(vmm: Vmm, st: std::process::ExitStatus) -> bool {
    match vmm {
        Vmm::Vessel => st.code() == Some(0),
        Vmm::Qemu => st.code() == Some(1),
    }
}

fn boot(env: &Env, vmm: Vmm) -> Result<Boot, String> {
    let start = Instant::now();
    let mut child = command(env, vmm, "exit=0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", vmm.name()))?;
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut first = None;
    let mut ready = None;
    let mut buf = [0u8; 256];
    loop {
        let n = out.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| start.elapsed());
        seen.extend_from_slice(&buf[..n]);
        if ready.is_none() && seen.windows(6).any(|w| w == b"ready\n" || w == b"ready\r") {
            ready = Some(start.elapsed());
        }
    }
    let (st, rss) = wait4(&child);
    let exit = start.elapsed();
    if !exited_ok(vmm, st) {
        return Err(format!(
            "{} exited with {st}: {}",
            vmm.name(),
            String::from_utf8_lossy(&seen)
        ));
    }
    Ok(Boot {
        first_byte: first.ok_or("no serial output")?,
        ready: ready.ok_or("no ready line")?,
        exit,
        max_rss_kib: rss,
    })
}

/// Resident KiB outside the guest-RAM mapping (the one anonymous mapping of exactly the guest
/// size), and inside it, from /proc/PID/smaps.
fn rss_split(pid: u32) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut guest, mut other) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let mut r = first.split('-');
            let a = u64::from_str_radix(r.next()?, 16).ok()?;
            let b = u64::from_str_radix(r.next()?, 16).ok()?;
            in_guest = b - a == GUEST_MIB << 20;
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            if in_guest {
                guest += kib;
            } else {
                other += kib;
            }
        }
    }
    Some((other, guest))
}

fn overhead(env: &Env, vmm: Vmm) -> Option<(u64, u64)> {
    let mut child = command(env, vmm, "spin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let mut b = [0u8; 64];
    let _ = out.read(&mut b); // first output: the guest is running
    std::thread::sleep(Duration::from_millis(300));
    let split = rss_split(child.id());
    let _ = child.kill();
    let _ = child.wait();
    split
}

fn run_exits(env: &Env, vmm: Vmm, cmdline: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let child = command(env, vmm, cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let (st, _) = wait4(&child);
    if !exited_ok(vmm, st) {
        return Err(format!("{} {cmdline}: {st}", vmm.name()));
    }
    Ok(start.elapsed())
}

/// (median, p10, p90).
type Stat = (f64, f64, f64);

fn median(v: &mut [f64]) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.1), at(0.9))
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("VESSEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("fixtures/.cache"));
    let guest = cache.join("guest/vessel-test-guest");
    let vessel = ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("vessel-vm"))
        .find(|p| p.exists());
    let (Some(vessel), true) = (vessel, guest.exists()) else {
        eprintln!("SKIPPED vm_boot: build vessel-vm and run fixtures/guest.sh first");
        return;
    };
    let qemu = [
        "/usr/bin/qemu-system-x86_64",
        "/usr/local/bin/qemu-system-x86_64",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| Path::new(p).exists());
    if qemu.is_none() {
        eprintln!("note: qemu-system-x86_64 missing (bash fixtures/qemu.sh); vessel only");
    }
    let env = Env {
        vessel,
        qemu,
        guest,
    };
    let runs: usize = std::env::var("VESSEL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let exits: u64 = std::env::var("VESSEL_BENCH_EXITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let vmms: Vec<Vmm> = if env.qemu.is_some() {
        vec![Vmm::Vessel, Vmm::Qemu]
    } else {
        vec![Vmm::Vessel]
    };
    println!(
        "vm_boot: {} ({}), guest {}, {runs} boots each",
        env.vessel.display(),
        vmms.len(),
        env.guest.display()
    );

    let mut results: Vec<(Vmm, [Stat; 4])> = Vec::new();
    let mut samples: Vec<Vec<Boot>> = vmms.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, vmm) in vmms.iter().enumerate() {
            match boot(&env, *vmm) {
                Ok(b) => samples[i].push(b),
                Err(e) => eprintln!("{}: {e}", vmm.name()),
            }
        }
    }
    for (i, vmm) in vmms.iter().enumerate() {
        let s = &samples[i];
        if s.is_empty() {
            continue;
        }
        let ms = |f: &dyn Fn(&Boot) -> Duration| -> Vec<f64> {
            s.iter().map(|b| f(b).as_secs_f64() * 1e3).collect()
        };
        let first = median(&mut ms(&|b| b.first_byte));
        let ready = median(&mut ms(&|b| b.ready));
        let exit = median(&mut ms(&|b| b.exit));
        let rss = median(
            &mut s
                .iter()
                .map(|b| b.max_rss_kib as f64 / 1024.0)
                .collect::<Vec<_>>(),
        );
        println!(
            "{:13} first byte {:7.2} ms ({:.2}..{:.2})  ready {:7.2} ms  exit {:7.2} ms  peak RSS {:6.1} MiB",
            vmm.name(), first.0, first.1, first.2, ready.0, exit.0, rss.0
        );
        results.push((*vmm, [first, ready, exit, rss]));
    }
    if results.len() == 2 {
        let (v, q) = (&results[0].1, &results[1].1);
        println!(
            "ratio vessel/qemu: first byte {:.3}x  ready {:.3}x  exit {:.3}x  peak RSS {:.3}x",
            v[0].0 / q[0].0,
            v[1].0 / q[1].0,
            v[2].0 / q[2].0,
            v[3].0 / q[3].0
        );
    }

    for vmm in &vmms {
        if let Some((other, guest)) = overhead(&env, *vmm) {
            println!(
                "{:13} resident while running: {:6.2} MiB outside guest RAM, {:6.2} MiB of guest RAM touched",
                vmm.name(), other as f64 / 1024.0, guest as f64 / 1024.0
            );
        }
    }

    for vmm in &vmms {
        let mut rates = Vec::new();
        for kind in ["pio-loop", "mmio-loop"] {
            let base: Vec<f64> = (0..3)
                .filter_map(|_| run_exits(&env, *vmm, &format!("{kind}=0")).ok())
                .map(|d| d.as_secs_f64())
                .collect();
            let full: Vec<f64> = (0..3)
                .filter_map(|_| run_exits(&env, *vmm, &format!("{kind}={exits}")).ok())
                .map(|d| d.as_secs_f64())
                .collect();
            if base.is_empty() || full.is_empty() {
                println!("{:13} {kind}: failed", vmm.name());
                continue;
            }
            let b = median(&mut base.clone()).0;
            let f = median(&mut full.clone()).0;
            let rate = exits as f64 / (f - b).max(1e-9);
            println!(
                "{:13} {kind:9}: {:8.0} exits/s ({:.1} us per exit)",
                vmm.name(),
                rate,
                1e6 / rate
            );
            rates.push(rate);
        }
    }
}
