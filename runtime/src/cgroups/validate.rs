//! Checks `linux.resources` before anything is created or written.
//!
//! These are the static checks (values, ranges, formats); the manager adds the checks that
//! depend on the host (controllers present, cpus online).

use std::collections::BTreeSet;

use oci_spec::runtime::LinuxResources;

use super::{devices, CgroupError};

fn bad(msg: String) -> CgroupError {
    CgroupError::Invalid(msg)
}

/// Parses a cpuset list such as `0-3,5` into its members.
pub fn parse_cpu_list(what: &str, s: &str) -> Result<BTreeSet<u32>, CgroupError> {
    let mut out = BTreeSet::new();
    let s = s.trim();
    if s.is_empty() {
        return Ok(out);
    }
    for part in s.split(',') {
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| bad(format!("{what} {s:?}: {t:?} is not a number")))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 65536 {
                    return Err(bad(format!("{what} {s:?}: bad range {part:?}")));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(num(part)?);
            }
        }
    }
    Ok(out)
}

/// Static validation of every field the manager knows how to apply.
pub fn check(r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(m) = r.memory() {
        let lim = |name: &str, v: Option<i64>| match v {
            Some(n) if n < -1 => Err(bad(format!(
                "memory {name} {n} is negative (use -1 for unlimited)"
            ))),
            _ => Ok(()),
        };
        lim("limit", m.limit())?;
        lim("reservation", m.reservation())?;
        lim("swap", m.swap())?;
        lim("kernel", m.kernel())?;
        lim("kernelTCP", m.kernel_tcp())?;
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if l > 0 && s > 0 && s < l {
                return Err(bad(format!(
                    "memory swap {s} is below the memory limit {l} (swap is memory+swap)"
                )));
            }
        }
        if let Some(sw) = m.swappiness() {
            if sw > 100 {
                return Err(bad(format!("memory swappiness {sw} is above 100")));
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(p) = c.period() {
            if p == 0 && c.quota().is_some_and(|q| q > 0) {
                return Err(bad("cpu quota given with a period of 0".into()));
            }
            if p != 0 && !(1000..=1_000_000).contains(&p) {
                return Err(bad(format!(
                    "cpu period {p} is outside 1000..=1000000 microseconds"
                )));
            }
        }
        if let Some(q) = c.quota() {
            if q < -1 || (0 < q && q < 1000) {
                return Err(bad(format!(
                    "cpu quota {q} must be -1 (unlimited) or at least 1000 microseconds"
                )));
            }
        }
        if let Some(sh) = c.shares() {
            if sh != 0 && !(2..=262_144).contains(&sh) {
                return Err(bad(format!("cpu shares {sh} is outside 2..=262144")));
            }
        }
        if let Some(i) = c.idle() {
            if i != 0 && i != 1 {
                return Err(bad(format!("cpu idle {i} must be 0 or 1")));
            }
        }
        if let Some(rt) = c.realtime_runtime() {
            if rt < -1 {
                return Err(bad(format!("cpu realtimeRuntime {rt} is negative")));
            }
            if let Some(rp) = c.realtime_period() {
                if rp > 0 && rt > 0 && rt as u64 > rp {
                    return Err(bad(format!(
                        "cpu realtimeRuntime {rt} exceeds realtimePeriod {rp}"
                    )));
                }
            }
        }
        if let Some(cpus) = c.cpus() {
            parse_cpu_list("cpuset cpus", cpus)?;
        }
        if let Some(mems) = c.mems() {
            parse_cpu_list("cpuset mems", mems)?;
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() < -1 {
            return Err(bad(format!(
                "pids limit {} is negative (use -1 for unlimited)",
                p.limit()
            )));
        }
    }
    if let Some(b) = r.block_io() {
        let w = |name: &str, v: Option<u16>| match v {
            Some(x) if x != 0 && !(10..=1000).contains(&x) => {
                Err(bad(format!("blkio {name} {x} is outside 10..=1000")))
            }
            _ => Ok(()),
        };
        w("weight", b.weight())?;
        w("leafWeight", b.leaf_weight())?;
        for d in b.weight_device().iter().flatten() {
            w("weightDevice weight", d.weight())?;
            w("weightDevice leafWeight", d.leaf_weight())?;
            dev_num(d.major(), d.minor())?;
        }
        for list in [
            b.throttle_read_bps_device(),
            b.throttle_write_bps_device(),
            b.throttle_read_iops_device(),
            b.throttle_write_iops_device(),
        ] {
            for d in list.iter().flatten() {
                dev_num(d.major(), d.minor())?;
            }
        }
    }
    for h in r.hugepage_limits().iter().flatten() {
        let size = h.page_size();
        let ok = size.len() > 2
            && (size.ends_with("KB") || size.ends_with("MB") || size.ends_with("GB"))
            && size[..size.len() - 2].chars().all(|c| c.is_ascii_digit());
        if !ok {
            return Err(bad(format!(
                "hugepage size {size:?} is not of the form <n>KB, <n>MB or <n>GB"
            )));
        }
        if h.limit() < -1 {
            return Err(bad(format!(
                "hugepage limit {} for {size} is negative",
                h.limit()
            )));
        }
    }
    if let Some(d) = r.devices() {
        devices::rules_from_oci(d)?;
    }
    for (k, v) in r.unified().iter().flatten() {
        unified_controller(k)?;
        if v.contains('\n') && v.trim_end().contains('\n') {
            return Err(bad(format!("unified {k}: value has several lines")));
        }
    }
    Ok(())
}

fn dev_num(major: i64, minor: i64) -> Result<(), CgroupError> {
    if major < 0 || minor < 0 {
        return Err(bad(format!(
            "block device {major}:{minor} has a negative number"
        )));
    }
    Ok(())
}

/// The controller of a `unified` key (`memory.high` → `memory`); rejects names that are not
/// plain interface file names.
pub fn unified_controller(key: &str) -> Result<&str, CgroupError> {
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-');
    match key.split_once('.') {
        Some((c, rest)) if valid && !c.is_empty() && !rest.is_empty() => Ok(c),
        _ => Err(bad(format!(
            "unified key {key:?} is not a cgroup interface file name (<controller>.<file>)"
        ))),
    }
}

/// Converts cpu shares (v1, 2..=262144, default 1024) to cpu.weight (v2, 1..=10000,
/// default 100) with the log-quadratic mapping crun ≥ 1.23 and runc's cgroups library use
/// (it maps 2→1, 1024→100, 262144→10000; the older linear formula mapped 1024 to 39).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

/// Converts blkio weight (10..=1000) to io.weight (1..=10000) as runc does.
pub fn blkio_to_io_weight(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

/// memory.swap.max from OCI swap (memory+swap) and limit, as runc's conversion:
/// `None` = leave unset, `Some(-1)` = max.
pub fn swap_to_v2(swap: Option<i64>, limit: Option<i64>) -> Result<Option<i64>, CgroupError> {
    let (swap, limit) = (swap.unwrap_or(0), limit.unwrap_or(0));
    if limit == -1 && swap == 0 {
        return Ok(Some(-1));
    }
    if swap == -1 {
        return Ok(Some(-1));
    }
    if swap == 0 {
        return Ok(None);
    }
    if limit == 0 || limit == -1 {
        return Err(bad(
            "memory swap limit given without a memory limit (cgroup v2 needs both)".into(),
        ));
    }
    if swap < limit {
        return Err(bad(format!(
            "memory swap {swap} is below the memory limit {limit}"
        )));
    }
    Ok(Some(swap - limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    #[test]
    fn weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 0);
        assert!(shares_to_weight(512) < 100 && shares_to_weight(2048) > 100);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        assert_eq!(blkio_to_io_weight(500), 1 + 490 * 9999 / 990);
    }

    #[test]
    fn swap_conversion() {
        assert_eq!(swap_to_v2(Some(200), Some(100)).unwrap(), Some(100));
        assert_eq!(swap_to_v2(Some(-1), Some(100)).unwrap(), Some(-1));
        assert_eq!(swap_to_v2(None, Some(-1)).unwrap(), Some(-1));
        assert_eq!(swap_to_v2(None, Some(100)).unwrap(), None);
        assert!(swap_to_v2(Some(50), Some(100)).is_err());
        assert!(swap_to_v2(Some(50), None).is_err());
    }

    #[test]
    fn cpu_lists() {
        let s = parse_cpu_list("cpus", "0-2,5").unwrap();
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("cpus", "3-1").is_err());
        assert!(parse_cpu_list("cpus", "a").is_err());
    }

    #[test]
    fn rejects_bad_values() {
        let mem = |l: i64, s: i64| {
            LinuxResourcesBuilder::default()
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(l)
                        .swap(s)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        };
        assert!(check(&mem(-5, -1))
            .unwrap_err()
            .to_string()
            .contains("limit -5"));
        assert!(check(&mem(100, 50))
            .unwrap_err()
            .to_string()
            .contains("below"));
        assert!(check(&mem(-1, -1)).is_ok());
        let cpu = |q: i64, p: u64| {
            LinuxResourcesBuilder::default()
                .cpu(
                    LinuxCpuBuilder::default()
                        .quota(q)
                        .period(p)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        };
        assert!(check(&cpu(10000, 0))
            .unwrap_err()
            .to_string()
            .contains("period of 0"));
        assert!(check(&cpu(10, 100000)).is_err());
        assert!(check(&cpu(50000, 100000)).is_ok());
        let shares = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().shares(1u64).build().unwrap())
            .build()
            .unwrap();
        assert!(check(&shares).unwrap_err().to_string().contains("shares"));
        let pids = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(-7).build().unwrap())
            .build()
            .unwrap();
        assert!(check(&pids).is_err());
        assert!(unified_controller("memory.high").is_ok());
        assert!(unified_controller("../etc").is_err());
        assert!(unified_controller("memory").is_err());
    }
}
