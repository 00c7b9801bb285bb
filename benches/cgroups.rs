//! Cost of the cgroup manager: creating a container's cgroups and writing a full
//! `linux.resources` set (device rules included: v1 allow/deny lines, or the v2 eBPF device
//! program), moving a process in, a live update, freeze and thaw, and destroy; then compiling,
//! loading and attaching the eBPF device program alone, and a getppid() loop as a yardstick.
//! Prints median / p10 / p90 in microseconds.
//!
//! This host's cgroup2 tree offers only hugetlb, so the v1 figures come from this host and
//! the v2 figures from inside a qemu guest (Debian's cloud kernel booted with
//! `cgroup_no_v1=all`, runtime/tests/support/qemu_guest.rs) that runs this very binary.
//! That guest runs under TCG (software emulation, no KVM): its absolute times are inflated.
//! To put them in proportion the same guest kernel is also booted with v1 hierarchies
//! mounted as on this host and the same measurement runs there; boots of the two layouts
//! alternate so that both see the same host load, and every place also times a getppid()
//! loop, what emulation does to one system call. The guest prints its raw samples on the
//! console (`BENCH|` lines); the host merges the boots of each layout and reports them.
//!
//! `cargo bench --bench cgroups` (host part as root; the guest part needs the kernel fixture,
//! fixtures/kernel.sh, and qemu + cpio, fixtures/initramfs.sh). Environment:
//! `VESSEL_BENCH_RUNS` (host runs, default 200), `VESSEL_BENCH_GUEST_RUNS` (runs per guest
//! layout, default 100), `VESSEL_BENCH_GUEST_ROUNDS` (boots per layout they are split over,
//! default 2), `VESSEL_BENCH_GUEST=0` (host only). About 40 s on 2 cores. Without root the
//! host part is skipped with a note; without the fixtures the guest part is, naming what is
//! missing. Cgroups are made below the benchmark's own cgroup and removed after each run.

#[path = "../runtime/tests/support/qemu_guest.rs"]
mod qemu_guest;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vessel::runtime::cgroups::{devices, Layout, LinuxResources, Manager, Version};

/// Prefix of the lines the guest prints for the host to pick up from its console:
/// `BENCH|H|<text>` a header line, `BENCH|S|<name>|<ns>,<ns>,...` the samples of one row.
const MARK: &str = "BENCH|";

/// What one place (the host, or one guest boot) measured: text lines and named sample
/// rows, in the order they are printed.
#[derive(Default)]
struct Figures {
    lines: Vec<Line>,
}

enum Line {
    Text(String),
    Row(String, Vec<Duration>),
}

impl Figures {
    /// A text line (once: boots of the same kind merge).
    fn header(&mut self, text: String) {
        if !self
            .lines
            .iter()
            .any(|l| matches!(l, Line::Text(t) if *t == text))
        {
            self.lines.push(Line::Text(text));
        }
    }

    /// Appends samples to the row `name` (made if new): boots of the same kind merge.
    fn add(&mut self, name: &str, samples: Vec<Duration>) {
        for l in &mut self.lines {
            if let Line::Row(n, v) = l {
                if n == name {
                    v.extend(samples);
                    return;
                }
            }
        }
        self.lines.push(Line::Row(name.to_string(), samples));
    }

    fn row(&self, name: &str) -> Option<&[Duration]> {
        self.lines.iter().find_map(|l| match l {
            Line::Row(n, v) if n == name => Some(v.as_slice()),
            _ => None,
        })
    }

    fn print(&self) {
        for l in &self.lines {
            match l {
                Line::Text(t) => println!("{t}"),
                Line::Row(name, v) => report(name, v.clone()),
            }
        }
    }

    /// The wire form the guest prints on its console.
    fn emit_marked(&self) {
        for l in &self.lines {
            match l {
                Line::Text(t) => println!("{MARK}H|{t}"),
                Line::Row(name, v) => {
                    let ns: Vec<String> = v.iter().map(|d| d.as_nanos().to_string()).collect();
                    println!("{MARK}S|{name}|{}", ns.join(","));
                }
            }
        }
    }

    /// Merges what a guest printed with [`Figures::emit_marked`]; false if it printed none.
    fn merge_marked<'a>(&mut self, console: impl Iterator<Item = &'a String>) -> bool {
        let mut any = false;
        for line in console {
            let Some((_, rest)) = line.split_once(MARK) else {
                continue;
            };
            any = true;
            if let Some(h) = rest.strip_prefix("H|") {
                self.header(h.to_string());
            } else if let Some((name, ns)) = rest.strip_prefix("S|").and_then(|r| r.split_once('|'))
            {
                let v = ns
                    .split(',')
                    .filter_map(|n| n.parse().ok())
                    .map(Duration::from_nanos)
                    .collect();
                self.add(name, v);
            }
        }
        any
    }
}

fn full_set(blk: Option<&str>, v1_memory: bool) -> LinuxResources {
    let swappiness = if v1_memory {
        r#", "swappiness": 10"#
    } else {
        ""
    };
    let throttle = blk.map_or(String::new(), |d| {
        let (maj, min) = d.split_once(':').unwrap_or(("8", "0"));
        format!(
            r#","blockIO":{{"throttleReadBpsDevice":[{{"major":{maj},"minor":{min},"rate":10485760}}],
               "throttleWriteIOPSDevice":[{{"major":{maj},"minor":{min},"rate":1000}}]}}"#
        )
    });
    let json = format!(
        r#"{{
      "memory": {{"limit": 268435456, "swap": 268435456, "reservation": 134217728{swappiness}}},
      "cpu": {{"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}},
      "pids": {{"limit": 128}},
      "devices": [
        {{"allow": false, "access": "rwm"}},
        {{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}},
        {{"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"}},
        {{"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"}},
        {{"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"}},
        {{"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"}},
        {{"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"}},
        {{"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"}},
        {{"allow": true, "type": "c", "major": 136, "access": "rwm"}}
      ]{throttle}
    }}"#
    );
    serde_json::from_str(&json).expect("resource JSON")
}

fn first_block_device() -> Option<String> {
    let rd = std::fs::read_dir("/sys/block").ok()?;
    rd.flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !["loop", "zram", "ram", "dm-", "md"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .find_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .map(|s| s.trim().to_string())
}

/// The `q` quantile (0..=1) of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

fn report(name: &str, mut v: Vec<Duration>) {
    if v.is_empty() {
        return;
    }
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| quantile(&v, q);
    println!(
        "{name:<34} median {:>8.1} µs   p10 {:>8.1} µs   p90 {:>8.1} µs   (n={})",
        us(at(0.5)),
        us(at(0.1)),
        us(at(0.9)),
        v.len()
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = env_usize("VESSEL_BENCH_RUNS", 200);
    if qemu_guest::in_guest() {
        // We are the guest: measure against whatever layout its /init mounted.
        match measure(runs) {
            Ok(f) => f.emit_marked(),
            Err(e) => {
                println!("BENCH-ERROR: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    println!("== cgroup v1: this host (kernel {}) ==", uname_release());
    let host = if nix::unistd::geteuid().is_root() {
        measure(runs).unwrap_or_else(|e| {
            eprintln!("benchmark run failed: {e}");
            std::process::exit(1);
        })
    } else {
        println!("skipped: creating cgroups on the host needs root (run cargo bench as root)");
        let mut f = Figures::default();
        f.add(YARDSTICK, yardstick(runs));
        f
    };
    host.print();
    if std::env::var("VESSEL_BENCH_GUEST").is_ok_and(|v| v == "0") {
        println!("\n(cgroup v2 in a qemu guest: skipped, VESSEL_BENCH_GUEST=0)");
        return;
    }
    let guest_runs = env_usize("VESSEL_BENCH_GUEST_RUNS", 100);
    let rounds = env_usize("VESSEL_BENCH_GUEST_ROUNDS", 2).max(1);
    match guest_benches(guest_runs, rounds, &host) {
        Ok(()) => {}
        Err(GuestError::Missing(why)) => {
            println!(
                "\n== cgroup v2 in a qemu guest: skipped ==\n{why}\n(the guest part needs \
                 Debian's cloud kernel, fixtures/kernel.sh, and qemu + cpio, fixtures/initramfs.sh)"
            );
        }
        Err(GuestError::Failed(why)) => {
            eprintln!("guest benchmark failed: {why}");
            std::process::exit(1);
        }
    }
}

/// Everything measured in one place (host, or one guest boot).
fn measure(runs: usize) -> Result<Figures, String> {
    let mut f = Figures::default();
    bench_manager(runs, &mut f)?;
    bench_ebpf(runs, &mut f);
    f.add(YARDSTICK, yardstick(runs));
    Ok(f)
}

/// The yardstick row: 1000 getppid() calls, what a kernel entry and exit costs here, to
/// compare the guest's emulated CPU with the host's under the same load.
const YARDSTICK: &str = "getppid() x1000 (yardstick)";

fn yardstick(runs: usize) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..1000 {
                std::hint::black_box(nix::unistd::getppid());
            }
            t0.elapsed()
        })
        .collect()
}

/// The kernel release, for the section header.
fn uname_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Creates and fully configures a container's cgroups, moves a sleeping child in, updates
/// live, freezes and thaws, and destroys them, `runs` times.
fn bench_manager(runs: usize, f: &mut Figures) -> Result<(), String> {
    let blk = first_block_device();
    let v1_memory = Layout::detect()
        .map_err(|e| e.to_string())?
        .v1
        .iter()
        .any(|h| h.controllers.iter().any(|c| c == "memory"));
    let full = full_set(blk.as_deref(), v1_memory);
    let update: LinuxResources = serde_json::from_str(
        r#"{"memory":{"limit":134217728,"swap":134217728},"cpu":{"quota":20000,"period":100000},"pids":{"limit":64}}"#,
    )
    .expect("update JSON");
    let names = [
        "create + full resource set",
        "apply(pid) to every hierarchy",
        "live update (memory/cpu/pids)",
        "freeze (until frozen)",
        "thaw (until thawed)",
        "destroy (kill + rmdir)",
    ];
    let mut t: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); names.len()];
    let mut shape = String::new();
    for i in 0..runs {
        let path = PathBuf::from(format!("vessel-bench-{}-{i}", std::process::id()));
        let m = Manager::new(Some(&path), "bench").map_err(|e| format!("plan cgroups: {e}"))?;
        if shape.is_empty() {
            let v1 = m.hierarchies().iter().filter(|h| h.version == Version::V1);
            shape = match v1.count() {
                0 => format!("{:?} layout: cgroup2 only", m.mode()),
                n if m.hierarchies().len() > n => {
                    format!("{:?} layout: {n} v1 hierarchies + cgroup2", m.mode())
                }
                n => format!("{:?} layout: {n} v1 hierarchies", m.mode()),
            };
        }
        let mut child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn sleep: {e}"))?;
        let pid = child.id() as i32;
        let mut stamps = [Instant::now(); 7];
        let r = m
            .set(&full)
            .and_then(|_| {
                stamps[1] = Instant::now();
                m.apply(pid)
            })
            .and_then(|_| {
                stamps[2] = Instant::now();
                m.set(&update)
            })
            .and_then(|_| {
                stamps[3] = Instant::now();
                m.freeze()
            })
            .and_then(|_| {
                stamps[4] = Instant::now();
                m.thaw()
            })
            .map(|_| stamps[5] = Instant::now());
        let r = r.and(m.destroy());
        stamps[6] = Instant::now();
        let _ = child.kill();
        let _ = child.wait();
        if let Err(e) = r {
            let _ = m.destroy();
            return Err(e.to_string());
        }
        for (k, w) in stamps.windows(2).enumerate() {
            t[k].push(w[1] - w[0]);
        }
    }
    f.header(format!(
        "cgroup manager ({shape}, blkio throttle {}):",
        blk.as_deref().unwrap_or("skipped: no block device")
    ));
    for (name, v) in names.iter().zip(t) {
        f.add(name, v);
    }
    Ok(())
}

/// Compiling, loading and attaching the v2 device program for runc's default rule set on a
/// fresh cgroup of the cgroup2 tree, replacing the previous program each time.
fn bench_ebpf(runs: usize, f: &mut Figures) {
    let Some(u) = Layout::detect().ok().and_then(|l| l.unified) else {
        f.header("eBPF device filter: skipped (no cgroup2 mount)".into());
        return;
    };
    let dir = u
        .own_dir
        .join(format!("vessel-bench-bpf-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        f.header(format!("eBPF device filter: skipped ({e})"));
        return;
    }
    let mut spec = vec![serde_json::from_str(r#"{"allow":false,"access":"rwm"}"#).expect("rule")];
    spec.extend(devices::runtime_default_rules());
    let rules = devices::rules_from_oci(&devices::container_rules(&spec, &[])).expect("rules");
    let mut t = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let r = devices::apply_v2(&dir, &rules);
        t.push(t0.elapsed());
        if let Err(e) = r {
            f.header(format!("eBPF device filter: failed: {e}"));
            break;
        }
    }
    let _ = std::fs::remove_dir(&dir);
    f.header(format!(
        "eBPF device program: {} rules, {} instructions",
        rules.len(),
        devices::program::compile(&rules).len()
    ));
    f.add("eBPF program compile+load+attach", t);
}

enum GuestError {
    /// Something this host lacks (fixtures, packages): explained, not a failure.
    Missing(String),
    Failed(String),
}

/// Mounts v1 hierarchies as this host has them (cpu and cpuacct apart, hugetlb left on
/// cgroup2 at /sys/fs/cgroup/unified) in place of the unified tree the guest set up.
const V1_MOUNTS: &str = "umount /sys/fs/cgroup
mount -t tmpfs cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c || exit 1
done
mkdir /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || exit 1
";

/// Boots the guest `rounds` times in each layout (unified, then v1 as on this host,
/// alternating so that both see the same host load), `runs / rounds` runs per boot, and
/// prints the merged figures of each layout with the yardstick against the host's.
fn guest_benches(runs: usize, rounds: usize, host: &Figures) -> Result<(), GuestError> {
    let kernel = qemu_guest::kernel().map_err(GuestError::Missing)?;
    let version = std::fs::read_to_string(qemu_guest::cache_dir().join("kernel/version"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let exe = std::env::current_exe().map_err(|e| GuestError::Failed(e.to_string()))?;
    let per_boot = runs.div_ceil(rounds).max(1);
    let run_cmd = format!("VESSEL_BENCH_RUNS={per_boot} /bin/vessel-cgroups-bench");
    let layouts = [
        (
            "cgroup v2: qemu TCG guest, cgroup_no_v1=all",
            run_cmd.clone(),
            "cgroup_no_v1=all",
        ),
        (
            "cgroup v1 (hybrid, as this host): same qemu TCG guest, for proportion",
            format!("{V1_MOUNTS}{run_cmd}"),
            "",
        ),
    ];
    let started = Instant::now();
    let mut figures: Vec<Figures> = layouts.iter().map(|_| Figures::default()).collect();
    for _ in 0..rounds {
        for ((title, script, append), f) in layouts.iter().zip(&mut figures) {
            let run = qemu_guest::Guest::new(script)
                .binary(&exe, "vessel-cgroups-bench")
                .append(append)
                .nvme_disk(16)
                .quiet()
                .try_run(&kernel)
                .map_err(GuestError::Missing)?;
            if !f.merge_marked(run.lines.iter()) || run.exit != Some(0) {
                return Err(GuestError::Failed(format!(
                    "{title}: the guest exited with {:?}; its console:\n{}",
                    run.exit,
                    run.text()
                )));
            }
        }
    }
    println!(
        "\nThe guest figures below come from qemu TCG: software CPU emulation, no KVM, 1 vCPU, \
         Debian kernel {version}; {rounds} boots of each layout, alternating, {per_boot} runs \
         per boot ({:.0} s in all).\nThey are inflated by emulation: compare v2 with v1 in the \
         same guest, not with the host; the yardstick row shows what emulation does to a \
         system call.",
        started.elapsed().as_secs_f64()
    );
    for ((title, _, _), f) in layouts.iter().zip(&figures) {
        println!("\n== {title} ==");
        f.print();
    }
    // µs per call: the rows time 1000 calls.
    let per_call = |f: &Figures| {
        let mut v = f.row(YARDSTICK).filter(|v| !v.is_empty())?.to_vec();
        v.sort();
        Some(quantile(&v, 0.5).as_secs_f64() * 1e3)
    };
    if let (Some(h), Some(v2), Some(v1)) =
        (per_call(host), per_call(&figures[0]), per_call(&figures[1]))
    {
        println!(
            "\nyardstick (medians): a getppid() call costs {h:.3} µs on this host, {v2:.3} µs in \
             the v2 guest ({:.0}x), {v1:.3} µs in the v1 guest ({:.0}x)",
            v2 / h,
            v1 / h
        );
    }
    Ok(())
}
