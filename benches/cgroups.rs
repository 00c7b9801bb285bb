//! Cost of the cgroup manager on this host (v1 or hybrid hierarchies): creating a
//! container's cgroups and writing a full `linux.resources` set, moving a process in, a
//! live update, and destroy. Prints median / p10 / p90 in microseconds.
//!
//! Run as root with `cargo bench --bench cgroups` (`VESSEL_BENCH_RUNS`, default 200).
//! Cgroups are made below the benchmark's own cgroup and removed after each run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vessel::runtime::cgroups::{devices, Layout, LinuxResources, Manager};

fn full_set(blk: Option<&str>) -> LinuxResources {
    let throttle = blk.map_or(String::new(), |d| {
        let (maj, min) = d.split_once(':').unwrap_or(("8", "0"));
        format!(
            r#","blockIO":{{"throttleReadBpsDevice":[{{"major":{maj},"minor":{min},"rate":10485760}}],
               "throttleWriteIOPSDevice":[{{"major":{maj},"minor":{min},"rate":1000}}]}}"#
        )
    });
    let json = format!(
        r#"{{
      "memory": {{"limit": 268435456, "swap": 268435456, "reservation": 134217728, "swappiness": 10}},
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

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<34} median {:>8.1} µs   p10 {:>8.1} µs   p90 {:>8.1} µs   (n={})",
        us(at(0.5)),
        us(at(0.1)),
        us(at(0.9)),
        v.len()
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: the cgroups benchmark needs root");
        return;
    }
    let runs: usize = std::env::var("VESSEL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let blk = first_block_device();
    let full = full_set(blk.as_deref());
    let update: LinuxResources = serde_json::from_str(
        r#"{"memory":{"limit":134217728,"swap":134217728},"cpu":{"quota":20000,"period":100000},"pids":{"limit":64}}"#,
    )
    .expect("update JSON");
    let (mut t_set, mut t_apply, mut t_update, mut t_destroy) = (vec![], vec![], vec![], vec![]);
    let mut hierarchies = 0;
    for i in 0..runs {
        let path = PathBuf::from(format!("vessel-bench-{}-{i}", std::process::id()));
        let m = Manager::new(Some(&path), "bench").expect("plan cgroups");
        hierarchies = m.hierarchies().len();
        let mut child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let t0 = Instant::now();
        let r = m.set(&full);
        let t1 = Instant::now();
        let r2 = r.and_then(|_| m.apply(child.id() as i32));
        let t2 = Instant::now();
        let r3 = r2.and_then(|_| m.set(&update));
        let t3 = Instant::now();
        let r4 = m.destroy();
        let t4 = Instant::now();
        let _ = child.kill();
        let _ = child.wait();
        if let Err(e) = r3.and(r4) {
            let _ = m.destroy();
            eprintln!("benchmark run failed: {e}");
            std::process::exit(1);
        }
        t_set.push(t1 - t0);
        t_apply.push(t2 - t1);
        t_update.push(t3 - t2);
        t_destroy.push(t4 - t3);
    }
    println!(
        "cgroup manager on this host ({} hierarchies, blkio throttle {}):",
        hierarchies,
        blk.as_deref().unwrap_or("skipped: no block device")
    );
    report("create + full resource set", t_set);
    report("apply(pid) to every hierarchy", t_apply);
    report("live update (memory/cpu/pids)", t_update);
    report("destroy (kill + rmdir)", t_destroy);
    bench_ebpf(runs);
}

/// Compiling, loading and attaching the v2 device program for runc's default rule set on a
/// fresh cgroup of the cgroup2 tree, replacing the previous program each time.
fn bench_ebpf(runs: usize) {
    let Some(u) = Layout::detect().ok().and_then(|l| l.unified) else {
        println!("eBPF device filter: skipped (no cgroup2 mount)");
        return;
    };
    let dir = u
        .own_dir
        .join(format!("vessel-bench-bpf-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        println!("eBPF device filter: skipped ({e})");
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
            println!("eBPF device filter: failed: {e}");
            break;
        }
    }
    let _ = std::fs::remove_dir(&dir);
    println!(
        "eBPF device program: {} rules, {} instructions",
        rules.len(),
        devices::program::compile(&rules).len()
    );
    if !t.is_empty() {
        report("eBPF filter compile+load+replace", t);
    }
}
