//! Writing resources, freezing and reading statistics on the cgroup2 hierarchy.

use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory};

use super::fs::{self, keyed};
use super::stats::{CpuStats, IoStats, MemoryStats, PidsStats};
use super::validate::{blkio_to_io_weight, shares_to_weight, swap_to_v2};
use super::CgroupError;

fn max_or(v: i64) -> String {
    if v == -1 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// memory.* from linux.resources.memory: limit→memory.max, reservation→memory.low,
/// swap→memory.swap.max = swap − limit, disableOOMKiller is refused (v2 has no such knob).
pub(crate) fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    let swap = swap_to_v2(m.swap(), m.limit())?;
    // Raising: swap first is harmless; memory.max and memory.swap.max are independent on v2.
    if let Some(s) = swap {
        if dir.join("memory.swap.max").exists() {
            fs::write(dir, "memory.swap.max", &max_or(s))?;
        } else if s != -1 {
            return Err(CgroupError::ControllerUnavailable {
                controller: "memory.swap.max".into(),
                reason: "the kernel has no swap accounting; drop linux.resources.memory.swap"
                    .into(),
            });
        }
    }
    if let Some(l) = m.limit().filter(|&v| v != 0) {
        fs::write(dir, "memory.max", &max_or(l))?;
    }
    if let Some(r) = m.reservation().filter(|&v| v != 0) {
        fs::write(dir, "memory.low", &max_or(r))?;
    }
    if m.disable_oom_killer() == Some(true) {
        return Err(CgroupError::Invalid(
            "memory disableOOMKiller is not supported on cgroup v2".into(),
        ));
    }
    if m.swappiness().is_some_and(|s| s != 60 && s != 0) {
        // v2 has no per-cgroup swappiness; runc ignores it, crun warns. Refuse loudly.
        return Err(CgroupError::Invalid(
            "memory swappiness is not supported on cgroup v2".into(),
        ));
    }
    Ok(())
}

/// cpu.* from linux.resources.cpu; realtime is refused (no v2 interface).
pub(crate) fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(s) = c.shares().filter(|&v| v != 0) {
        fs::write(dir, "cpu.weight", &shares_to_weight(s).to_string())?;
    }
    let quota = c.quota().filter(|&v| v != 0);
    let period = c.period().filter(|&v| v != 0);
    if quota.is_some() || period.is_some() {
        let q = match quota {
            Some(q) => max_or(q),
            None => fs::read(dir, "cpu.max")?
                .split_whitespace()
                .next()
                .unwrap_or("max")
                .to_string(),
        };
        let line = match period {
            Some(p) => format!("{q} {p}"),
            None => q,
        };
        fs::write(dir, "cpu.max", &line)?;
    }
    if let Some(b) = c.burst() {
        fs::write(dir, "cpu.max.burst", &b.to_string())?;
    }
    if let Some(i) = c.idle() {
        fs::write(dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

/// io.* from linux.resources.blockIO.
pub(crate) fn set_io(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    // io.bfq.weight takes the blkio range directly; io.weight needs the conversion.
    let bfq = dir.join("io.bfq.weight").exists();
    if let Some(w) = b.weight().filter(|&w| w != 0) {
        if bfq {
            fs::write(dir, "io.bfq.weight", &w.to_string())?;
        } else {
            fs::write(
                dir,
                "io.weight",
                &format!("default {}", blkio_to_io_weight(w)),
            )?;
        }
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            let (file, v) = if bfq {
                ("io.bfq.weight", u64::from(w))
            } else {
                ("io.weight", blkio_to_io_weight(w))
            };
            fs::write(dir, file, &format!("{}:{} {v}", d.major(), d.minor()))?;
        }
    }
    for (key, list) in [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ] {
        for d in list.iter().flatten() {
            let rate = if d.rate() == 0 {
                "max".to_string()
            } else {
                d.rate().to_string()
            };
            fs::write(
                dir,
                "io.max",
                &format!("{}:{} {key}={rate}", d.major(), d.minor()),
            )?;
        }
    }
    Ok(())
}

fn frozen(dir: &Path) -> Result<bool, CgroupError> {
    Ok(keyed(&fs::read(dir, "cgroup.events")?, "frozen") == Some(1))
}

/// Writes cgroup.freeze and waits until cgroup.events reports the state.
pub(crate) fn set_frozen(dir: &Path, freeze: bool, timeout: Duration) -> Result<(), CgroupError> {
    fs::write(dir, "cgroup.freeze", if freeze { "1" } else { "0" })?;
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    while frozen(dir)? != freeze {
        if start.elapsed() > timeout {
            if freeze {
                let _ = fs::write(dir, "cgroup.freeze", "0");
            }
            return Err(CgroupError::FreezeTimeout {
                path: dir.to_path_buf(),
                state: if freeze {
                    "freezing".into()
                } else {
                    "thawing".into()
                },
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    Ok(())
}

pub(crate) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    frozen(dir)
}

pub(crate) fn memory_stats(dir: &Path) -> Result<MemoryStats, CgroupError> {
    let events = fs::read_opt(dir, "memory.events")?.unwrap_or_default();
    let max = fs::read_opt(dir, "memory.max")?;
    Ok(MemoryStats {
        usage: fs::read_u64_opt(dir, "memory.current")?.unwrap_or(0),
        peak: fs::read_u64_opt(dir, "memory.peak")?,
        limit: match max {
            Some(t) => fs::parse_limit(dir, "memory.max", &t)?,
            None => None,
        },
        limit_hits: keyed(&events, "max").unwrap_or(0),
        oom_kill: keyed(&events, "oom_kill").unwrap_or(0),
        under_oom: false,
    })
}

pub(crate) fn cpu_stats(dir: &Path) -> Result<CpuStats, CgroupError> {
    let t = fs::read_opt(dir, "cpu.stat")?.unwrap_or_default();
    let us = |k: &str| keyed(&t, k).unwrap_or(0) * 1000;
    Ok(CpuStats {
        usage_total_ns: us("usage_usec"),
        usage_user_ns: us("user_usec"),
        usage_system_ns: us("system_usec"),
        nr_periods: keyed(&t, "nr_periods").unwrap_or(0),
        nr_throttled: keyed(&t, "nr_throttled").unwrap_or(0),
        throttled_time_ns: us("throttled_usec"),
    })
}

pub(crate) fn pids_stats(dir: &Path) -> Result<PidsStats, CgroupError> {
    let max = fs::read(dir, "pids.max")?;
    Ok(PidsStats {
        current: fs::read_u64_opt(dir, "pids.current")?.unwrap_or(0),
        limit: fs::parse_limit(dir, "pids.max", &max)?,
    })
}

/// Sums rbytes/wbytes over the devices in io.stat.
pub(crate) fn io_stats(dir: &Path) -> Result<IoStats, CgroupError> {
    let mut s = IoStats::default();
    for line in fs::read_opt(dir, "io.stat")?.unwrap_or_default().lines() {
        for kv in line.split_whitespace().skip(1) {
            if let Some((k, v)) = kv.split_once('=') {
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => s.read_bytes += v,
                    "wbytes" => s.write_bytes += v,
                    _ => {}
                }
            }
        }
    }
    Ok(s)
}
