//! `vessel pause`, `resume`, `update` and `events`: argument parsing and output only; the
//! work is done by `vessel_runtime::Container`.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};
use vessel_runtime::container::Container;
use vessel_runtime::events::Event;

type CliResult = Result<u8, Box<dyn std::error::Error>>;

/// `vessel update` flags (runc's names and units).
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// JSON file with the new linux.resources ("-" = stdin); no other flag may be given.
    #[arg(long, short = 'r')]
    pub resources: Option<String>,
    /// Memory limit in bytes (suffixes k, m, g, t; -1 = unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory + swap limit in bytes (suffixes allowed; -1 = unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Memory soft limit in bytes (suffixes allowed).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Kernel memory limit in bytes (suffixes allowed; ignored by kernels without it).
    #[arg(long, allow_hyphen_values = true)]
    pub kernel_memory: Option<String>,
    /// Kernel TCP buffer limit in bytes (suffixes allowed).
    #[arg(long, allow_hyphen_values = true)]
    pub kernel_memory_tcp: Option<String>,
    /// CPU CFS quota in microseconds per period (-1 = unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU shares (relative weight).
    #[arg(long, alias = "cpu-share")]
    pub cpu_shares: Option<u64>,
    /// Realtime period in microseconds.
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// Realtime runtime in microseconds.
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs allowed (e.g. 0-3,5).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of tasks (-1 = unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block I/O weight (10-1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Container id.
    pub id: String,
}

/// `vessel events` flags.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Print the container's statistics once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between stats events (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s")]
    pub interval: String,
    /// Container id.
    pub id: String,
}

/// Parses a byte count as runc (docker's RAMInBytes): `1024`, `512k`, `64m`, `1.5g`,
/// `2GiB`; binary multiples; `-1` = unlimited.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let err =
        || format!("invalid size {s:?}: expected bytes with an optional k/m/g/t/p suffix, or -1");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(err()),
    };
    if num.is_empty() {
        return Err(err());
    }
    let n: f64 = num.parse().map_err(|_| err())?;
    let v = n * mult;
    if !v.is_finite() || v >= i64::MAX as f64 {
        return Err(format!("invalid size {s:?}: too large"));
    }
    Ok(v as i64)
}

/// Parses `5s`, `500ms`, `1m`, `2h`, `100us` or a plain number of seconds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid interval {s:?}: expected e.g. 5s or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid interval {s:?}: unknown unit {unit:?}")),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|e| format!("interval {s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("invalid interval {s:?}: must be above zero"));
    }
    Ok(d)
}

/// The resources an update asks for: the `-r` JSON, or the flags.
pub fn update_resources(a: &UpdateArgs) -> Result<LinuxResources, String> {
    let flags = a.memory.is_some()
        || a.memory_swap.is_some()
        || a.memory_reservation.is_some()
        || a.kernel_memory.is_some()
        || a.kernel_memory_tcp.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpu_shares.is_some()
        || a.cpu_rt_period.is_some()
        || a.cpu_rt_runtime.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
        || a.pids_limit.is_some()
        || a.blkio_weight.is_some();
    if let Some(src) = &a.resources {
        if flags {
            return Err("--resources cannot be combined with other update flags".into());
        }
        let mut data = Vec::new();
        if src == "-" {
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| format!("read resources from stdin: {e}"))?;
        } else {
            data = std::fs::read(src).map_err(|e| format!("read resources {src}: {e}"))?;
        }
        return serde_json::from_slice(&data).map_err(|e| {
            format!("parse resources {src}: {e} (expected an OCI linux.resources object)")
        });
    }
    let mut mem = Map::new();
    for (key, flag, v) in [
        ("limit", "--memory", &a.memory),
        ("swap", "--memory-swap", &a.memory_swap),
        ("reservation", "--memory-reservation", &a.memory_reservation),
        ("kernel", "--kernel-memory", &a.kernel_memory),
        ("kernelTCP", "--kernel-memory-tcp", &a.kernel_memory_tcp),
    ] {
        if let Some(v) = v {
            let n = parse_bytes(v).map_err(|e| format!("{flag}: {e}"))?;
            mem.insert(key.into(), json!(n));
        }
    }
    let mut cpu = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            cpu.insert(k.into(), v);
        }
    };
    put("quota", a.cpu_quota.map(|v| json!(v)));
    put("period", a.cpu_period.map(|v| json!(v)));
    put("shares", a.cpu_shares.map(|v| json!(v)));
    put("realtimePeriod", a.cpu_rt_period.map(|v| json!(v)));
    put("realtimeRuntime", a.cpu_rt_runtime.map(|v| json!(v)));
    put("cpus", a.cpuset_cpus.clone().map(Value::from));
    put("mems", a.cpuset_mems.clone().map(Value::from));
    let mut r = Map::new();
    if !mem.is_empty() {
        r.insert("memory".into(), Value::Object(mem));
    }
    if !cpu.is_empty() {
        r.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(p) = a.pids_limit {
        r.insert("pids".into(), json!({ "limit": p }));
    }
    if let Some(w) = a.blkio_weight {
        r.insert("blockIO".into(), json!({ "weight": w }));
    }
    serde_json::from_value(Value::Object(r)).map_err(|e| format!("update flags: {e}"))
}

/// `vessel pause <id>`.
pub fn pause(root: &Path, id: &str) -> CliResult {
    Container::load(root, id)?.pause()?;
    Ok(0)
}

/// `vessel resume <id>`.
pub fn resume(root: &Path, id: &str) -> CliResult {
    Container::load(root, id)?.resume()?;
    Ok(0)
}

/// `vessel update [flags] <id>`.
pub fn update(root: &Path, a: &UpdateArgs) -> CliResult {
    let r = update_resources(a)?;
    Container::load(root, &a.id)?.update(&r)?;
    Ok(0)
}

/// `vessel events [--stats] [--interval D] <id>`: one JSON object per line.
pub fn events(root: &Path, a: &EventsArgs) -> CliResult {
    let c = Container::load(root, &a.id)?;
    let out = std::io::stdout();
    if a.stats {
        let ev = Event::stats(c.id(), c.stats()?);
        writeln!(out.lock(), "{}", serde_json::to_string(&ev)?)?;
        return Ok(0);
    }
    let interval = parse_interval(&a.interval)?;
    for ev in c.events(Some(interval))? {
        let mut o = out.lock();
        writeln!(o, "{}", serde_json::to_string(&ev?)?)?;
        o.flush()?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_runc() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert_eq!(parse_bytes("-1"), Ok(-1));
        assert!(parse_bytes("-5").is_err());
        assert!(parse_bytes("12x").is_err());
        assert!(parse_bytes("m").is_err());
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5 parsecs").is_err());
    }
}
