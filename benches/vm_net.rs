//! Side-by-side virtio-net throughput: `vessel-vm` vs `qemu-system-x86_64 -M microvm`, both
//! with a userspace virtio-net device over a tap (no vhost-net), booting the same bare-metal
//! test guest.
//!
//! Run with `cargo bench --bench vm_net` (as root, after `bash fixtures/guest.sh`,
//! `bash fixtures/qemu.sh` and `cargo build --release -p vessel-bins`); `-- --quick` runs one
//! short round of everything (a sanity check of the benchmark itself). Environment:
//! `VESSEL_BENCH_RUNS` (default 5 runs per VMM, direction and frame size),
//! `VESSEL_BENCH_FRAMES` (default 100000 frames per run), `VESSEL_BENCH_GUEST` (guest ELF,
//! default `fixtures/.cache/guest/vessel-test-guest`), `VESSEL_BENCH_ONLY` (comma-separated
//! direction and/or frame size, e.g. `tap->guest,64`: only those rounds),
//! `VESSEL_BENCH_VERBOSE` (print each run's guest report: kicks, time spent waiting).
//!
//! * guest→tap: the guest's `net-blast=N net-len=L` sends N frames of L bytes back to back
//!   (256 in flight, at most one queue notification per batch and only when the device asked
//!   for it: see fixtures/guest/src/kick.rs). The host polls the tap's `rx_packets` counter every millisecond:
//!   frames/s = frames counted between the first and the last change / time between them.
//!   The guest's own TSC figure (first submission to last completion) is shown alongside.
//! * tap→guest: the guest's `net-sink=N` keeps 256 receive buffers posted and counts test
//!   frames, reposting buffers NAPI-style (up to 64 per kick). The host writes N frames into the
//!   tap through an AF_PACKET socket (sendmmsg, up to 64 per call), keeping at
//!   most [`WINDOW`] frames not yet read by the VMM (the tap's `tx_packets` counts frames the
//!   VMM read) so the tap's 1000-frame queue never overflows; frames/s = frames the guest
//!   counted / guest TSC time from the first to the last (TSC rate calibrated on the host:
//!   KVM guests see the host TSC). Drops = N - counted.
//!
//! `VMM wake-ups/frame` is the VMM process's voluntary context switches (wait4 rusage, all
//! threads) per frame: about one per queue kick or event the VMM had to wake up for (a KVM
//! exit costs ~20–130 µs under nested kvm_pvm). `VMM CPU µs/frame` is the CPU time of the
//! VMM's threads other than the vCPU threads (device emulation, event loop and the tap
//! syscalls, from /proc/PID/task/*/schedstat) over the measured window, per frame: the
//! VMM's own cost, which unlike frames/s hardly depends on what else the host runs.
//!
//! Each line is the median (p10..p90) over the runs; the last lines give vessel/qemu ratios
//! against the target (vessel frames/s ≥ 1.5 × qemu's) and of the VMM CPU per frame.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const GUEST_MIB: u64 = 128;
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x07];
const GUEST_MAC_STR: &str = "02:00:00:00:00:07";
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x09];
const ETH_TEST: u16 = 0x88b5;
/// Frames the host may have written into the tap that the VMM has not read yet.
const WINDOW: u64 = 512;
const TARGET_RATIO: f64 = 1.5;

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

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    GuestToTap,
    TapToGuest,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::GuestToTap => "guest->tap",
            Dir::TapToGuest => "tap->guest",
        }
    }
}

struct Env {
    vessel: PathBuf,
    qemu: Option<PathBuf>,
    guest: PathBuf,
    tsc_hz: f64,
}

fn command(env: &Env, vmm: Vmm, cmdline: &str, tap: &str) -> Command {
    match vmm {
        Vmm::Vessel => {
            let mut c = Command::new(&env.vessel);
            c.args(["run", "--kernel"])
                .arg(&env.guest)
                .args(["--cmdline", cmdline, "--memory", &format!("{GUEST_MIB}M")])
                .args(["--net", &format!("tap={tap},mac={GUEST_MAC_STR}")])
                .args(["--console", "stdio", "--timeout", "120"]);
            c
        }
        Vmm::Qemu => {
            let mut c = Command::new(env.qemu.as_ref().expect("qemu"));
            c.args([
                "-M",
                "microvm,x-option-roms=off,rtc=off,acpi=off",
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
            // Names the vCPU threads "CPU n/KVM", so VMM CPU time can leave them out.
            .args(["-name", "vnb,debug-threads=on"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"),
                "-device",
                &format!("virtio-net-device,netdev=n0,mac={GUEST_MAC_STR}"),
            ])
            .arg("-kernel")
            .arg(&env.guest)
            .args(["-append", cmdline]);
            c
        }
    }
}

/// Whether `code` is the guest's `exit=0` under `vmm` (qemu's debug-exit status is 2*code+1).
fn exited_ok(vmm: Vmm, code: Option<i32>) -> bool {
    match vmm {
        Vmm::Vessel => code == Some(0),
        Vmm::Qemu => code == Some(1),
    }
}

/// A tap device, deleted on drop.
struct Tap(String);

impl Tap {
    fn new(name: &str) -> Result<Self, String> {
        ip(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"])?;
        let tap = Tap(name.to_string());
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }

    /// One of the tap's counters, kept open: each reading is a single pread(2) instead of a
    /// path lookup, open, read and close (which cost the tap→guest sender, on the cores it
    /// shares with the VMM under test, nearly as much as sending the frames: perf).
    fn open_counter(&self, which: &str) -> Result<Counter, String> {
        let path = format!("/sys/class/net/{}/statistics/{which}", self.0);
        std::fs::File::open(&path)
            .map(Counter)
            .map_err(|e| format!("{path}: {e}"))
    }
}

/// A sysfs counter file held open (see [`Tap::open_counter`]).
struct Counter(std::fs::File);

impl Counter {
    fn get(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 32];
        let n = self.0.read_at(&mut buf, 0).unwrap_or(0);
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A send-only AF_PACKET socket on one interface.
struct PacketTx {
    fd: OwnedFd,
}

impl PacketTx {
    fn bind(ifname: &str) -> Result<Self, String> {
        // SAFETY: plain socket(2); protocol 0 receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
        // SAFETY: valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(format!("no interface {ifname}"));
        }
        // SAFETY: sockaddr_ll is plain old data.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex;
        // SAFETY: sa is a valid sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(format!("bind: {}", std::io::Error::last_os_error()));
        }
        Ok(PacketTx { fd })
    }

    /// Send `frames` with as few sendmmsg(2) calls as the socket allows; returns how many
    /// went out (fewer when the device queue is full: ENOBUFS).
    fn send_batch(&self, frames: &mut [Vec<u8>]) -> std::io::Result<usize> {
        let mut iov: Vec<libc::iovec> = frames
            .iter_mut()
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: f.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain old data.
        let mut msgs: Vec<libc::mmsghdr> = (0..iov.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < msgs.len() {
            // SAFETY: msgs[sent..] are valid mmsghdrs whose iovecs point into `frames`.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[sent..].as_mut_ptr(),
                    (msgs.len() - sent) as u32,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if sent > 0 || e.raw_os_error() == Some(libc::ENOBUFS) {
                    return Ok(sent);
                }
                return Err(e);
            }
            if n == 0 {
                break;
            }
            sent += n as usize;
        }
        Ok(sent)
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: sending from a valid buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A test frame as the guest's `net.rs` defines it (`vessel-net` + sequence), or with the
/// `vessel-end` payload that stops `net-sink`.
fn frame(len: usize, seq: u32, end: bool) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&GUEST_MAC);
    f[6..12].copy_from_slice(&HOST_MAC);
    f[12..14].copy_from_slice(&ETH_TEST.to_be_bytes());
    f[14..24].copy_from_slice(if end { b"vessel-end" } else { b"vessel-net" });
    f[24..28].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[28..].iter_mut().enumerate() {
        *b = (seq as usize * 7 + i) as u8;
    }
    f
}

/// A running VMM: its serial output line by line, killed on drop.
struct Vm {
    child: Child,
    lines: Receiver<String>,
    seen: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Vm {
    fn spawn(env: &Env, vmm: Vmm, cmdline: &str, tap: &str) -> Result<Self, String> {
        let mut child = command(env, vmm, cmdline, tap)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", vmm.name()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut err = child.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Vm {
            child,
            lines,
            seen: String::new(),
            stderr,
        })
    }

    /// The first serial line containing `what`, waiting up to `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push_str(&line);
            self.seen.push('\n');
            if line.contains(what) {
                return Some(line);
            }
        }
    }

    /// CPU time (ns) the VMM process has used so far outside its vCPU threads (vessel names
    /// them `vcpuN`, qemu `CPU N/KVM`): the device emulation, event loop and I/O cost.
    fn vmm_cpu_ns(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                !(comm.starts_with("vcpu") || comm.starts_with("CPU "))
            })
            .filter_map(|t| {
                std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Wait for the VMM to exit; returns its voluntary context switches (all threads: each
    /// is a sleep in epoll/poll/KVM_RUN, i.e. roughly one wake-up per queue kick or
    /// interrupt-driven event).
    fn finish(mut self, vmm: Vmm) -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (code, nvcsw) = loop {
            let mut status = 0;
            // SAFETY: rusage is plain old data that wait4 fills in.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: the pid is our own child; status and usage point to valid memory.
            let r = unsafe {
                libc::wait4(
                    self.child.id() as i32,
                    &mut status,
                    libc::WNOHANG,
                    &mut usage,
                )
            };
            if r > 0 {
                let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
                break (code, usage.ru_nvcsw as u64);
            }
            if r < 0 || Instant::now() > deadline {
                return Err(format!("{} did not exit", vmm.name()));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if exited_ok(vmm, code) {
            return Ok(nvcsw);
        }
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push_str(&l);
            self.seen.push('\n');
        }
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        Err(format!(
            "{} exited with {code:?}: {}{}",
            vmm.name(),
            self.seen,
            stderr.join().unwrap_or_default()
        ))
    }

    fn error(&mut self, vmm: Vmm, what: &str) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push_str(&l);
            self.seen.push('\n');
        }
        format!("{}: {what}; serial: {}", vmm.name(), self.seen)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `word` in `line` (`... sent 5 frames of 64 bytes in 123 tsc`).
fn number_after(line: &str, word: &str) -> Option<u64> {
    let mut it = line.split_whitespace();
    it.find(|w| *w == word)?;
    it.next()?.parse().ok()
}

/// One measurement: frames/s as the benchmark defines it per direction, the guest's TSC view,
/// and frames lost.
struct Sample {
    fps: f64,
    guest_fps: f64,
    drops: u64,
    /// VMM context switches (wake-ups) per frame.
    wakeups: f64,
    /// VMM CPU time outside vCPU threads per frame, in µs (see [`Vm::vmm_cpu_ns`]).
    cpu_us: f64,
    /// The guest's result line.
    report: String,
}

fn guest_to_tap(env: &Env, vmm: Vmm, tap: &Tap, n: u64, len: usize) -> Result<Sample, String> {
    let rx_packets = tap.open_counter("rx_packets")?;
    let before = rx_packets.get();
    let mut vm = Vm::spawn(env, vmm, &format!("net-blast={n} net-len={len}"), &tap.0)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first: Option<(Instant, u64)> = None;
    let mut last = None;
    let (mut cpu0, mut cpu1) = (0, 0);
    loop {
        let c = rx_packets.get() - before;
        let now = Instant::now();
        if c > 0 {
            if first.is_none() {
                first = Some((now, c));
                cpu0 = vm.vmm_cpu_ns();
            }
            if last.map(|(_, l)| c > l).unwrap_or(true) {
                last = Some((now, c));
                // Read while the VMM still runs (it exits right after the guest reports).
                cpu1 = vm.vmm_cpu_ns();
            }
        }
        if c >= n {
            break;
        }
        if now > deadline || vm.child.try_wait().ok().flatten().is_some() {
            // The VMM ended (or hung): take what the counter shows, drops are reported.
            std::thread::sleep(Duration::from_millis(20));
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let line = vm
        .wait_for("net-blast: sent", Duration::from_secs(30))
        .ok_or_else(|| vm.error(vmm, "no net-blast result"))?;
    let cpu = cpu1.saturating_sub(cpu0);
    let nvcsw = vm.finish(vmm)?;
    let counted = rx_packets.get() - before;
    let ((t0, c0), (t1, c1)) = (first.ok_or("no frame on the tap")?, last.ok_or("no frame")?);
    let secs = (t1 - t0).as_secs_f64();
    if c1 <= c0 || secs <= 0.0 {
        return Err(format!(
            "{}: too few frames for a rate (use more)",
            vmm.name()
        ));
    }
    let ticks = number_after(&line, "in").ok_or("no tsc figure")?;
    Ok(Sample {
        fps: (c1 - c0) as f64 / secs,
        guest_fps: n as f64 / (ticks as f64 / env.tsc_hz),
        drops: n.saturating_sub(counted),
        wakeups: nvcsw as f64 / n as f64,
        cpu_us: cpu as f64 / 1e3 / (c1 - c0 + 1) as f64,
        report: line,
    })
}

fn tap_to_guest(env: &Env, vmm: Vmm, tap: &Tap, n: u64, len: usize) -> Result<Sample, String> {
    let sock = PacketTx::bind(&tap.0)?;
    let mut vm = Vm::spawn(env, vmm, &format!("net-sink={n}"), &tap.0)?;
    if vm
        .wait_for("net-sink: ready", Duration::from_secs(60))
        .is_none()
    {
        return Err(vm.error(vmm, "guest never got ready"));
    }
    // Batches of up to 64 frames per sendmmsg(2), so the sender is not the bottleneck.
    let mut batch: Vec<Vec<u8>> = (0..64).map(|s| frame(len, s, false)).collect();
    let tx_packets = tap.open_counter("tx_packets")?;
    let read0 = tx_packets.get();
    let cpu0 = vm.vmm_cpu_ns();
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent < n {
        let read = tx_packets.get() - read0;
        let room = (read + WINDOW).saturating_sub(sent).min(n - sent);
        if room == 0 {
            if Instant::now() > deadline {
                return Err(vm.error(vmm, "the VMM stopped reading the tap"));
            }
            std::thread::yield_now();
            continue;
        }
        let k = room.min(batch.len() as u64) as usize;
        for (i, f) in batch[..k].iter_mut().enumerate() {
            let seq = (sent + i as u64) as u32;
            f[24..28].copy_from_slice(&seq.to_be_bytes());
        }
        match sock.send_batch(&mut batch[..k]) {
            Ok(m) => sent += m as u64,
            Err(e) => return Err(format!("send: {e}")),
        }
    }
    // End markers until the guest reports (it stops by itself once all N arrived).
    let end = frame(len, 0, true);
    let mut cpu1 = vm.vmm_cpu_ns();
    let line = loop {
        if let Some(l) = vm.wait_for("net-sink: received", Duration::from_millis(20)) {
            break l;
        }
        cpu1 = vm.vmm_cpu_ns();
        if Instant::now() > deadline {
            return Err(vm.error(vmm, "no net-sink result"));
        }
        let _ = sock.send(&end);
    };
    let nvcsw = vm.finish(vmm)?;
    let count = number_after(&line, "received").ok_or("no count")?;
    let ticks = number_after(&line, "in").ok_or("no tsc figure")?;
    if count < 2 || ticks == 0 {
        return Err(format!("{}: guest counted {count} frames", vmm.name()));
    }
    let fps = (count - 1) as f64 / (ticks as f64 / env.tsc_hz);
    Ok(Sample {
        fps,
        guest_fps: fps,
        drops: n.saturating_sub(count),
        wakeups: nvcsw as f64 / n as f64,
        cpu_us: cpu1.saturating_sub(cpu0) as f64 / 1e3 / count as f64,
        report: line,
    })
}

/// The TSC rate, against the monotonic clock over 200 ms.
fn tsc_hz() -> f64 {
    // SAFETY: rdtsc has no side effects.
    let (t0, c0) = (Instant::now(), unsafe { core::arch::x86_64::_rdtsc() });
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: as above.
    let (t1, c1) = (Instant::now(), unsafe { core::arch::x86_64::_rdtsc() });
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// (median, p10, p90).
type Stat = (f64, f64, f64);

fn median(v: &mut [f64]) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.1), at(0.9))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("VESSEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("fixtures/.cache"));
    let guest = std::env::var_os("VESSEL_BENCH_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("guest/vessel-test-guest"));
    let vessel = ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("vessel-vm"))
        .find(|p| p.exists());
    let (Some(vessel), true) = (vessel, guest.exists()) else {
        eprintln!("SKIPPED vm_net: build vessel-vm and run fixtures/guest.sh first");
        return;
    };
    if std::fs::metadata("/dev/net/tun").is_err() || std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED vm_net: /dev/net/tun or /dev/kvm missing");
        return;
    }
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
        tsc_hz: tsc_hz(),
    };
    let var = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (runs, n) = if quick {
        (1, 2000)
    } else {
        (
            var("VESSEL_BENCH_RUNS", 5) as usize,
            var("VESSEL_BENCH_FRAMES", 100_000),
        )
    };
    let vmms: Vec<Vmm> = if env.qemu.is_some() {
        vec![Vmm::Vessel, Vmm::Qemu]
    } else {
        vec![Vmm::Vessel]
    };
    println!(
        "vm_net: {} vs {}, guest {}, {runs} runs x {n} frames, TSC {:.0} MHz",
        env.vessel.display(),
        env.qemu
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or("-".into()),
        env.guest.display(),
        env.tsc_hz / 1e6
    );
    let tap = match Tap::new(&format!("vnb{}", std::process::id())) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED vm_net: cannot create a tap: {e}");
            return;
        }
    };

    let mut failed = false;
    let mut ratios = Vec::new();
    // `VESSEL_BENCH_ONLY=tap->guest` (or a frame size, `64`) runs the matching rounds only.
    let only = std::env::var("VESSEL_BENCH_ONLY").unwrap_or_default();
    let verbose = std::env::var_os("VESSEL_BENCH_VERBOSE").is_some();
    for dir in [Dir::GuestToTap, Dir::TapToGuest] {
        for len in [64usize, 1514] {
            if !only
                .split(',')
                .all(|w| w.is_empty() || w == dir.name() || w == len.to_string())
            {
                continue;
            }
            let mut samples: Vec<Vec<Sample>> = vmms.iter().map(|_| Vec::new()).collect();
            for run in 0..runs {
                // Alternate which VMM goes first, so a load change on the host does not
                // always hit the same one.
                let mut order: Vec<(usize, &Vmm)> = vmms.iter().enumerate().collect();
                if run % 2 == 1 {
                    order.reverse();
                }
                for (i, vmm) in order {
                    let r = match dir {
                        Dir::GuestToTap => guest_to_tap(&env, *vmm, &tap, n, len),
                        Dir::TapToGuest => tap_to_guest(&env, *vmm, &tap, n, len),
                    };
                    match r {
                        Ok(s) => {
                            if verbose {
                                eprintln!("{} {len} B {}: {}", dir.name(), vmm.name(), s.report);
                            }
                            samples[i].push(s)
                        }
                        Err(e) => {
                            failed = true;
                            eprintln!("{} {len} B: {e}", dir.name());
                        }
                    }
                }
            }
            let mut medians = Vec::new();
            for (i, vmm) in vmms.iter().enumerate() {
                let s = &samples[i];
                if s.is_empty() {
                    continue;
                }
                let fps = median(&mut s.iter().map(|s| s.fps).collect::<Vec<_>>());
                let gfps = median(&mut s.iter().map(|s| s.guest_fps).collect::<Vec<_>>());
                let drops: u64 = s.iter().map(|s| s.drops).sum();
                let wake = median(&mut s.iter().map(|s| s.wakeups).collect::<Vec<_>>());
                let cpu = median(&mut s.iter().map(|s| s.cpu_us).collect::<Vec<_>>());
                println!(
                    "{} {len:4} B  {:13} {:9.0} frames/s ({:.0}..{:.0})  {:6.3} Gbit/s  guest TSC view {:9.0} frames/s  VMM wake-ups/frame {:.2}  VMM CPU {:.2} µs/frame ({:.2}..{:.2})  drops {drops}/{}",
                    dir.name(),
                    vmm.name(),
                    fps.0,
                    fps.1,
                    fps.2,
                    fps.0 * len as f64 * 8.0 / 1e9,
                    gfps.0,
                    wake.0,
                    cpu.0,
                    cpu.1,
                    cpu.2,
                    n * s.len() as u64
                );
                medians.push((*vmm, fps.0, cpu.0));
            }
            if let [(Vmm::Vessel, v, vc), (Vmm::Qemu, q, qc)] = medians[..] {
                ratios.push((dir, len, v / q, qc / vc));
            }
        }
    }
    for (dir, len, r, c) in &ratios {
        println!(
            "ratio vessel/qemu {} {len:4} B: {r:.2}x frames/s (target >= {TARGET_RATIO}x: {}); qemu needs {c:.2}x vessel's VMM CPU per frame",
            dir.name(),
            if *r >= TARGET_RATIO { "met" } else { "NOT met" }
        );
    }
    drop(tap);
    if quick {
        if failed {
            eprintln!("vm_net --quick: some runs failed");
            std::process::exit(1);
        }
        println!("vm_net --quick: ok");
    }
}
