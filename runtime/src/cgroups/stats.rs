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

impl Stats {
    /// The `data` object of runc's `events --stats` output (the fields Vessel measures;
    /// limits that are unlimited are reported as 0 like runc's "max" handling of pids).
    pub fn to_runc_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpu": {
                "usage": {
                    "total": self.cpu.usage_total_ns,
                    "kernel": self.cpu.usage_system_ns,
                    "user": self.cpu.usage_user_ns,
                },
                "throttling": {
                    "periods": self.cpu.nr_periods,
                    "throttledPeriods": self.cpu.nr_throttled,
                    "throttledTime": self.cpu.throttled_time_ns,
                },
            },
            "memory": {
                "usage": {
                    "usage": self.memory.usage,
                    "max": self.memory.peak.unwrap_or(0),
                    "limit": self.memory.limit.unwrap_or(u64::MAX),
                    "failcnt": self.memory.limit_hits,
                },
                "oom_kill": self.memory.oom_kill,
            },
            "pids": {
                "current": self.pids.current,
                "limit": self.pids.limit.unwrap_or(0),
            },
            "blkio": {
                "ioServiceBytesRecursive": [
                    {"op": "Read", "value": self.io.read_bytes},
                    {"op": "Write", "value": self.io.write_bytes},
                ],
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_shape() {
        let mut s = Stats::default();
        s.cpu.nr_throttled = 3;
        s.pids.limit = Some(10);
        let v = s.to_runc_json();
        assert_eq!(v["cpu"]["throttling"]["throttledPeriods"], 3);
        assert_eq!(v["pids"]["limit"], 10);
        assert_eq!(v["memory"]["usage"]["limit"], u64::MAX);
    }
}
