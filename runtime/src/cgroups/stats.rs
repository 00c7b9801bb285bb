//! Resource usage statistics, one shape for both cgroup versions.

use serde::{Deserialize, Serialize};

/// Usage of one container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Memory controller figures.
    pub memory: MemoryStats,
    /// CPU time and throttling.
    pub cpu: CpuStats,
    /// Process counts.
    pub pids: PidsStats,
    /// Block I/O.
    pub io: IoStats,
}

/// Memory figures in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Current usage.
    pub usage: u64,
    /// Peak usage (v1 max_usage_in_bytes, v2 memory.peak), if the kernel reports it.
    pub peak: Option<u64>,
    /// Limit; `None` = unlimited.
    pub limit: Option<u64>,
    /// Times the limit was hit (v1 failcnt, v2 memory.events `max`).
    pub limit_hits: u64,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kill: u64,
    /// Whether v1 reports the cgroup as under OOM right now (always false on v2).
    pub under_oom: bool,
}

/// CPU figures in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Total CPU time.
    pub usage_total_ns: u64,
    /// User CPU time.
    pub usage_user_ns: u64,
    /// System CPU time.
    pub usage_system_ns: u64,
    /// CFS periods elapsed.
    pub nr_periods: u64,
    /// Periods in which the group was throttled.
    pub nr_throttled: u64,
    /// Total time throttled.
    pub throttled_time_ns: u64,
}

/// Process counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// Tasks now in the cgroup.
    pub current: u64,
    /// pids.max; `None` = unlimited.
    pub limit: Option<u64>,
}

/// Block I/O totals over all devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStats {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
}
