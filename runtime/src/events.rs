//! Container statistics and events in the JSON shape of runc's `events` command
//! (`types/events.go` in runc), so containerd, podman and other runc consumers can parse
//! `vessel events` output unchanged.
//!
//! The figures come from [`crate::cgroups::Manager::stats`] (one shape for cgroup v1 and
//! v2); what runc prints beyond them (per-CPU usage, `memory.stat`, swap and kernel memory,
//! per-device block I/O) is read from the container's cgroup directories by
//! [`Stats::collect`].
//!
//! Go's `omitempty` is mirrored: a zero number, an empty list or map is left out where runc
//! leaves it out; nested objects are always present (Go never omits a struct value).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cgroups::{self, Manager};

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One line of `vessel events` output: `{"type": ..., "id": ..., "data": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `"stats"` or `"oom"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The container id.
    pub id: String,
    /// The statistics of a `stats` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Stats>,
}

impl Event {
    /// A `stats` event.
    pub fn stats(id: &str, s: Stats) -> Event {
        Event {
            kind: "stats".into(),
            id: id.into(),
            data: Some(s),
        }
    }

    /// An `oom` event (an OOM kill happened in the container's cgroup).
    pub fn oom(id: &str) -> Event {
        Event {
            kind: "oom".into(),
            id: id.into(),
            data: None,
        }
    }
}

/// runc's `types.Stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// CPU usage and throttling.
    pub cpu: Cpu,
    /// Memory usage.
    pub memory: Memory,
    /// Process counts.
    pub pids: Pids,
    /// Block I/O.
    pub blkio: Blkio,
    /// Huge page usage per page size (e.g. `"2MB"`).
    pub hugetlb: BTreeMap<String, Hugetlb>,
}

/// runc's `types.Cpu`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Time used.
    pub usage: CpuUsage,
    /// CFS bandwidth throttling.
    pub throttling: Throttling,
}

/// runc's `types.CpuUsage` (nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// Total CPU time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total: u64,
    /// Total per CPU (v1 `cpuacct.usage_percpu`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    /// Kernel time.
    #[serde(default)]
    pub kernel: u64,
    /// User time.
    #[serde(default)]
    pub user: u64,
}

/// runc's `types.Throttling`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throttling {
    /// CFS periods elapsed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub periods: u64,
    /// Periods in which the group was throttled.
    #[serde(rename = "throttledPeriods", default, skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    /// Total time throttled, nanoseconds.
    #[serde(rename = "throttledTime", default, skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

/// runc's `types.MemoryEntry` (bytes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryEntry {
    /// The limit (runc prints the kernel's huge "unlimited" value as is).
    #[serde(default)]
    pub limit: u64,
    /// Current usage.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Peak usage.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Times the limit was hit.
    #[serde(default)]
    pub failcnt: u64,
}

/// runc's `types.Memory`, plus `oom_kill` (processes OOM-killed in the cgroup), which runc
/// does not print but which Go consumers ignore.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Page cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache: u64,
    /// Memory.
    pub usage: MemoryEntry,
    /// Memory + swap (v1 memsw) or swap (v2).
    pub swap: MemoryEntry,
    /// Kernel memory (v1 kmem).
    pub kernel: MemoryEntry,
    /// Kernel TCP buffers (v1 kmem.tcp).
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// `memory.stat` as is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
    /// OOM kills in this cgroup (vessel extension).
    #[serde(default)]
    pub oom_kill: u64,
}

/// runc's `types.Pids`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pids {
    /// Tasks in the cgroup.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub current: u64,
    /// pids.max (0 = unlimited, as runc).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: u64,
}

/// runc's `types.BlkioEntry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkioEntry {
    /// Device major.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub major: u64,
    /// Device minor.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub minor: u64,
    /// `Read`, `Write`, `Sync`, `Async`, `Discard`, `Total`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    /// The count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value: u64,
}

/// runc's `types.Blkio` (the recursive service figures vessel reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blkio {
    /// Bytes per device and operation.
    #[serde(
        rename = "ioServiceBytesRecursive",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// Operations per device and operation.
    #[serde(
        rename = "ioServicedRecursive",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

/// runc's `types.Hugetlb`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hugetlb {
    /// Usage in bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Peak usage in bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Times the limit was hit.
    #[serde(default)]
    pub failcnt: u64,
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `key value` lines as a map (memory.stat, v2 cpu.stat, …).
fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// v1 `blkio.throttle.io_service*` lines: `MAJ:MIN Op value` (and a final `Total value`).
fn blkio_entries(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [dev, op, value] = f.as_slice() else {
                return None;
            };
            let (ma, mi) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: ma.parse().ok()?,
                minor: mi.parse().ok()?,
                op: (*op).to_string(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// v2 `io.stat` lines: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..`.
fn io_stat_entries(text: &str) -> (Vec<BlkioEntry>, Vec<BlkioEntry>) {
    let (mut bytes, mut ios) = (Vec::new(), Vec::new());
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let Some((ma, mi)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (ma.parse(), mi.parse()) else {
            continue;
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse() else { continue };
            let (list, op) = match k {
                "rbytes" => (&mut bytes, "Read"),
                "wbytes" => (&mut bytes, "Write"),
                "rios" => (&mut ios, "Read"),
                "wios" => (&mut ios, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value,
            });
        }
    }
    (bytes, ios)
}

impl Stats {
    /// The container's statistics: the manager's figures plus runc's extra detail.
    pub fn collect(cg: &Manager) -> Result<Stats, cgroups::CgroupError> {
        let base = cg.stats()?;
        let mut s = Stats::from_base(&base);
        let v1 = |c: &str| {
            cg.hierarchies()
                .iter()
                .find(|h| h.version == cgroups::Version::V1 && h.controllers.iter().any(|x| x == c))
                .map(|h| h.dir.as_path())
                .filter(|d| d.exists())
        };
        if let Some(dir) = cg.path_for("memory").filter(|d| d.exists()) {
            if let Ok(t) = std::fs::read_to_string(dir.join("memory.stat")) {
                s.memory.raw = flat_keyed(&t);
                s.memory.cache = s
                    .memory
                    .raw
                    .get("cache")
                    .or_else(|| s.memory.raw.get("file"))
                    .copied()
                    .unwrap_or(0);
            }
            if v1("memory").is_some() {
                for (entry, prefix) in [
                    (&mut s.memory.swap, "memory.memsw."),
                    (&mut s.memory.kernel, "memory.kmem."),
                    (&mut s.memory.kernel_tcp, "memory.kmem.tcp."),
                ] {
                    entry.usage = read_u64(dir, &format!("{prefix}usage_in_bytes"));
                    entry.max = read_u64(dir, &format!("{prefix}max_usage_in_bytes"));
                    entry.limit = read_u64(dir, &format!("{prefix}limit_in_bytes"));
                    entry.failcnt = read_u64(dir, &format!("{prefix}failcnt"));
                }
            } else {
                s.memory.swap.usage = read_u64(dir, "memory.swap.current");
                s.memory.swap.limit = std::fs::read_to_string(dir.join("memory.swap.max"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(u64::MAX);
            }
        }
        if let Some(dir) = v1("cpuacct") {
            if let Ok(t) = std::fs::read_to_string(dir.join("cpuacct.usage_percpu")) {
                s.cpu.usage.percpu = t
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
            }
        }
        if let Some(dir) = cg.path_for("blkio").filter(|d| d.exists()) {
            if v1("blkio").is_some() {
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                s.blkio.io_service_bytes_recursive =
                    blkio_entries(&read("blkio.throttle.io_service_bytes_recursive"));
                s.blkio.io_serviced_recursive =
                    blkio_entries(&read("blkio.throttle.io_serviced_recursive"));
            } else if let Ok(t) = std::fs::read_to_string(dir.join("io.stat")) {
                let (b, i) = io_stat_entries(&t);
                s.blkio.io_service_bytes_recursive = b;
                s.blkio.io_serviced_recursive = i;
            }
        }
        if let Some(dir) = cg.path_for("hugetlb").filter(|d| d.exists()) {
            s.hugetlb = hugetlb(dir, v1("hugetlb").is_some());
        }
        Ok(s)
    }

    /// The figures [`Manager::stats`] measures, in runc's shape.
    pub fn from_base(b: &cgroups::Stats) -> Stats {
        let mut s = Stats::default();
        s.cpu.usage.total = b.cpu.usage_total_ns;
        s.cpu.usage.kernel = b.cpu.usage_system_ns;
        s.cpu.usage.user = b.cpu.usage_user_ns;
        s.cpu.throttling = Throttling {
            periods: b.cpu.nr_periods,
            throttled_periods: b.cpu.nr_throttled,
            throttled_time: b.cpu.throttled_time_ns,
        };
        s.memory.usage = MemoryEntry {
            // runc reports the kernel's "unlimited" as the raw huge number; so do we.
            limit: b.memory.limit.unwrap_or(u64::MAX),
            usage: b.memory.usage,
            max: b.memory.peak.unwrap_or(0),
            failcnt: b.memory.limit_hits,
        };
        s.memory.oom_kill = b.memory.oom_kill;
        s.pids = Pids {
            current: b.pids.current,
            limit: b.pids.limit.unwrap_or(0),
        };
        for (op, value) in [("Read", b.io.read_bytes), ("Write", b.io.write_bytes)] {
            if value > 0 {
                s.blkio.io_service_bytes_recursive.push(BlkioEntry {
                    op: op.into(),
                    value,
                    ..BlkioEntry::default()
                });
            }
        }
        s
    }
}

/// Huge page figures per size from `hugetlb.<size>.*` files.
fn hugetlb(dir: &Path, v1: bool) -> BTreeMap<String, Hugetlb> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(size) = name
            .strip_prefix("hugetlb.")
            .and_then(|r| r.strip_suffix(if v1 { ".usage_in_bytes" } else { ".current" }))
        else {
            continue;
        };
        if size.contains('.') {
            continue; // .rsvd variants
        }
        let h = if v1 {
            Hugetlb {
                usage: read_u64(dir, &name),
                max: read_u64(dir, &format!("hugetlb.{size}.max_usage_in_bytes")),
                failcnt: read_u64(dir, &format!("hugetlb.{size}.failcnt")),
            }
        } else {
            let events = std::fs::read_to_string(dir.join(format!("hugetlb.{size}.events")))
                .map(|t| flat_keyed(&t))
                .unwrap_or_default();
            Hugetlb {
                usage: read_u64(dir, &name),
                max: 0,
                failcnt: events.get("max").copied().unwrap_or(0),
            }
        };
        out.insert(size.to_string(), h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_field_names_and_omitempty() {
        let mut b = cgroups::Stats::default();
        b.cpu.nr_throttled = 3;
        b.cpu.nr_periods = 5;
        b.pids.current = 2;
        b.memory.limit = Some(1 << 20);
        let ev = Event::stats("c1", Stats::from_base(&b));
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "stats");
        assert_eq!(v["id"], "c1");
        let d = &v["data"];
        assert_eq!(d["cpu"]["throttling"]["throttledPeriods"], 3);
        assert_eq!(d["cpu"]["throttling"]["periods"], 5);
        // omitempty: zero throttled time is left out, as runc does.
        assert!(d["cpu"]["throttling"].get("throttledTime").is_none());
        // kernel/user have no omitempty in runc.
        assert_eq!(d["cpu"]["usage"]["kernel"], 0);
        assert_eq!(d["memory"]["usage"]["limit"], 1 << 20);
        assert_eq!(d["memory"]["usage"]["failcnt"], 0);
        assert!(d["memory"].get("kernelTCP").is_some());
        assert_eq!(d["pids"]["current"], 2);
        assert!(d["pids"].get("limit").is_none());
        assert!(d["hugetlb"].as_object().unwrap().is_empty());
        let oom = serde_json::to_value(Event::oom("c1")).unwrap();
        assert_eq!(oom, serde_json::json!({"type": "oom", "id": "c1"}));
    }

    #[test]
    fn parses_kernel_formats() {
        let e = blkio_entries("8:0 Read 4096\n8:0 Write 512\n8:0 Total 4608\nTotal 4608\n");
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].major, e[0].minor, e[0].op.as_str()), (8, 0, "Read"));
        let (b, i) = io_stat_entries("259:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0\n");
        assert_eq!(b.iter().map(|x| x.value).sum::<u64>(), 30);
        assert_eq!(i.len(), 2);
        let m = flat_keyed("cache 10\nrss 20\n");
        assert_eq!(m["rss"], 20);
    }
}
