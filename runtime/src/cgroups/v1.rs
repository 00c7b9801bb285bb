//! Writing resources, freezing and reading statistics on v1 hierarchies.

use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory};

use super::fs::{self, keyed};
use super::stats::{CpuStats, IoStats, MemoryStats, PidsStats};
use super::CgroupError;

fn limit_str(v: i64) -> String {
    if v == -1 {
        "-1".into()
    } else {
        v.to_string()
    }
}

/// Ignores EOPNOTSUPP from interfaces newer kernels keep only as stubs (kmem limits).
fn tolerate_unsupported(r: Result<(), CgroupError>) -> Result<(), CgroupError> {
    match r {
        Err(CgroupError::Write { ref source, .. })
            if source.raw_os_error() == Some(libc::EOPNOTSUPP) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// memory.* from linux.resources.memory.
pub(crate) fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = m.limit().filter(|&v| v != 0);
    let swap = m.swap().filter(|&v| v != 0);
    let has_memsw = dir.join("memory.memsw.limit_in_bytes").exists();
    if swap.is_some() && !has_memsw {
        return Err(CgroupError::ControllerUnavailable {
            controller: "memory.memsw (swap accounting)".into(),
            reason: "the kernel has no swap accounting; drop linux.resources.memory.swap".into(),
        });
    }
    match (limit, swap) {
        (Some(l), Some(s)) => {
            // memsw must stay >= limit at every step: raise memsw first when growing.
            let cur = fs::read(dir, "memory.limit_in_bytes")?;
            let cur: u64 = cur.trim().parse().unwrap_or(u64::MAX);
            if s == -1 || (s as u64) > cur {
                fs::write(dir, "memory.memsw.limit_in_bytes", &limit_str(s))?;
                fs::write(dir, "memory.limit_in_bytes", &limit_str(l))?;
            } else {
                fs::write(dir, "memory.limit_in_bytes", &limit_str(l))?;
                fs::write(dir, "memory.memsw.limit_in_bytes", &limit_str(s))?;
            }
        }
        (Some(l), None) => {
            // An unlimited memory limit without a swap value means unlimited swap too (as
            // runc); a finite limit leaves an earlier swap limit alone, and the kernel refuses
            // a limit above it (memsw must stay >= limit).
            if l == -1 && has_memsw {
                fs::write(dir, "memory.memsw.limit_in_bytes", "-1")?;
            }
            let r = fs::write(dir, "memory.limit_in_bytes", &limit_str(l));
            if let Err(CgroupError::Write { ref source, .. }) = r {
                if source.raw_os_error() == Some(libc::EINVAL) && has_memsw {
                    return Err(CgroupError::Invalid(format!(
                        "memory limit {l} is above the current memory+swap limit; \
                         give linux.resources.memory.swap too"
                    )));
                }
            }
            r?;
        }
        (None, Some(s)) => fs::write(dir, "memory.memsw.limit_in_bytes", &limit_str(s))?,
        (None, None) => {}
    }
    if let Some(r) = m.reservation().filter(|&v| v != 0) {
        fs::write(dir, "memory.soft_limit_in_bytes", &limit_str(r))?;
    }
    if let Some(k) = m.kernel().filter(|&v| v != 0) {
        if dir.join("memory.kmem.limit_in_bytes").exists() {
            tolerate_unsupported(fs::write(dir, "memory.kmem.limit_in_bytes", &limit_str(k)))?;
        }
    }
    if let Some(k) = m.kernel_tcp().filter(|&v| v != 0) {
        if dir.join("memory.kmem.tcp.limit_in_bytes").exists() {
            fs::write(dir, "memory.kmem.tcp.limit_in_bytes", &limit_str(k))?;
        }
    }
    if let Some(s) = m.swappiness() {
        fs::write(dir, "memory.swappiness", &s.to_string())?;
    }
    if let Some(d) = m.disable_oom_killer() {
        fs::write(dir, "memory.oom_control", if d { "1" } else { "0" })?;
    }
    Ok(())
}

/// cpu.* (not cpuset) from linux.resources.cpu.
pub(crate) fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(s) = c.shares().filter(|&v| v != 0) {
        fs::write(dir, "cpu.shares", &s.to_string())?;
    }
    if let Some(p) = c.period().filter(|&v| v != 0) {
        fs::write(dir, "cpu.cfs_period_us", &p.to_string())?;
    }
    if let Some(q) = c.quota().filter(|&v| v != 0) {
        fs::write(dir, "cpu.cfs_quota_us", &q.to_string())?;
    }
    if let Some(b) = c.burst() {
        fs::write(dir, "cpu.cfs_burst_us", &b.to_string())?;
    }
    let rt_period = c.realtime_period().filter(|&v| v != 0);
    let rt_runtime = c.realtime_runtime().filter(|&v| v != 0);
    if rt_period.is_some() || rt_runtime.is_some() {
        // runtime <= period must hold at each step: try period first, else runtime first.
        let period = |d: &Path| match rt_period {
            Some(p) => fs::write(d, "cpu.rt_period_us", &p.to_string()),
            None => Ok(()),
        };
        let runtime = |d: &Path| match rt_runtime {
            Some(r) => fs::write(d, "cpu.rt_runtime_us", &r.to_string()),
            None => Ok(()),
        };
        if period(dir).and_then(|_| runtime(dir)).is_err() {
            runtime(dir)?;
            period(dir)?;
        }
    }
    if let Some(i) = c.idle() {
        fs::write(dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

/// blkio.* from linux.resources.blockIO.
pub(crate) fn set_blkio(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    // CFQ's blkio.weight is gone from current kernels; BFQ offers blkio.bfq.weight.
    let weight_file = ["blkio.weight", "blkio.bfq.weight"]
        .into_iter()
        .find(|f| dir.join(f).exists());
    let need_weight = b.weight().is_some_and(|w| w != 0)
        || b.weight_device().as_ref().is_some_and(|v| !v.is_empty());
    if need_weight && weight_file.is_none() {
        return Err(CgroupError::ControllerUnavailable {
            controller: "blkio weight".into(),
            reason: format!(
                "{} has neither blkio.weight nor blkio.bfq.weight (no CFQ/BFQ scheduler)",
                dir.display()
            ),
        });
    }
    if let (Some(w), Some(f)) = (b.weight().filter(|&w| w != 0), weight_file) {
        fs::write(dir, f, &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight().filter(|&w| w != 0) {
        if dir.join("blkio.leaf_weight").exists() {
            fs::write(dir, "blkio.leaf_weight", &w.to_string())?;
        }
    }
    if let Some(f) = weight_file {
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                fs::write(
                    dir,
                    &format!("{f}_device"),
                    &format!("{}:{} {w}", d.major(), d.minor()),
                )?;
            }
        }
    }
    for (file, list) in [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ] {
        for d in list.iter().flatten() {
            fs::write(
                dir,
                file,
                &format!("{}:{} {}", d.major(), d.minor(), d.rate()),
            )?;
        }
    }
    Ok(())
}

/// Freezes and waits until the whole group is FROZEN; after `timeout` thaws and fails.
pub(crate) fn freeze(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        fs::write(dir, "freezer.state", "FROZEN")?;
        let state = fs::read(dir, "freezer.state")?;
        if state.trim() == "FROZEN" {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let _ = fs::write(dir, "freezer.state", "THAWED");
            return Err(CgroupError::FreezeTimeout {
                path: dir.to_path_buf(),
                state: state.trim().to_string(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Thaws and waits for THAWED.
pub(crate) fn thaw(dir: &Path) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        fs::write(dir, "freezer.state", "THAWED")?;
        let state = fs::read(dir, "freezer.state")?;
        if state.trim() == "THAWED" {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(CgroupError::FreezeTimeout {
                path: dir.to_path_buf(),
                state: state.trim().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// freezer.state is FROZEN (a FREEZING group is not yet frozen).
pub(crate) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    Ok(fs::read(dir, "freezer.state")?.trim() == "FROZEN")
}

pub(crate) fn memory_stats(dir: &Path) -> Result<MemoryStats, CgroupError> {
    let oom = fs::read(dir, "memory.oom_control")?;
    let limit = fs::read_u64_opt(dir, "memory.limit_in_bytes")?;
    Ok(MemoryStats {
        usage: fs::read_u64_opt(dir, "memory.usage_in_bytes")?.unwrap_or(0),
        peak: fs::read_u64_opt(dir, "memory.max_usage_in_bytes")?,
        // The kernel reports "unlimited" as PAGE_COUNTER_MAX pages, far above any real RAM.
        limit: limit.filter(|&l| l < (1u64 << 62)),
        // With a memsw limit the kernel charges (and counts failures) there first.
        limit_hits: fs::read_u64_opt(dir, "memory.failcnt")?
            .unwrap_or(0)
            .max(fs::read_u64_opt(dir, "memory.memsw.failcnt")?.unwrap_or(0)),
        oom_kill: keyed(&oom, "oom_kill").unwrap_or(0),
        under_oom: keyed(&oom, "under_oom") == Some(1),
    })
}

/// cpu figures from the cpuacct hierarchy (usage) and the cpu hierarchy (throttling).
pub(crate) fn cpu_stats(
    cpu: Option<&Path>,
    cpuacct: Option<&Path>,
) -> Result<CpuStats, CgroupError> {
    let mut s = CpuStats::default();
    if let Some(dir) = cpuacct {
        s.usage_total_ns = fs::read_u64_opt(dir, "cpuacct.usage")?.unwrap_or(0);
        if let Some(t) = fs::read_opt(dir, "cpuacct.stat")? {
            // USER_HZ ticks
            // SAFETY: sysconf has no memory-safety preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            let tick_ns = if hz > 0 {
                1_000_000_000 / hz as u64
            } else {
                10_000_000
            };
            s.usage_user_ns = keyed(&t, "user").unwrap_or(0) * tick_ns;
            s.usage_system_ns = keyed(&t, "system").unwrap_or(0) * tick_ns;
        }
    }
    if let Some(dir) = cpu {
        if let Some(t) = fs::read_opt(dir, "cpu.stat")? {
            s.nr_periods = keyed(&t, "nr_periods").unwrap_or(0);
            s.nr_throttled = keyed(&t, "nr_throttled").unwrap_or(0);
            s.throttled_time_ns = keyed(&t, "throttled_time").unwrap_or(0);
        }
    }
    Ok(s)
}

pub(crate) fn pids_stats(dir: &Path) -> Result<PidsStats, CgroupError> {
    let max = fs::read(dir, "pids.max")?;
    Ok(PidsStats {
        current: fs::read_u64_opt(dir, "pids.current")?.unwrap_or(0),
        limit: fs::parse_limit(dir, "pids.max", &max)?,
    })
}

/// Sums `blkio.throttle.io_service_bytes_recursive` (or the non-recursive file).
pub(crate) fn io_stats(dir: &Path) -> Result<IoStats, CgroupError> {
    let mut s = IoStats::default();
    let text = match fs::read_opt(dir, "blkio.throttle.io_service_bytes_recursive")? {
        Some(t) => t,
        None => fs::read_opt(dir, "blkio.throttle.io_service_bytes")?.unwrap_or_default(),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 {
            let v: u64 = f[2].parse().unwrap_or(0);
            match f[1] {
                "Read" => s.read_bytes += v,
                "Write" => s.write_bytes += v,
                _ => {}
            }
        }
    }
    Ok(s)
}
