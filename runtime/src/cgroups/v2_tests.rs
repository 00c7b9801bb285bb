//! cgroup v2 tests. They need a unified-only host, so they run inside a qemu guest booted
//! with `cgroup_no_v1=all` by `guest_vm::v2_tests_in_qemu_guest` (VESSEL_IN_GUEST=1); on
//! other hosts they print SKIPPED.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources,
};

use super::test_util::*;
use super::*;

fn skip_reason() -> Option<String> {
    if std::env::var_os("VESSEL_IN_GUEST").is_none() {
        return Some("runs inside the cgroup v2 qemu guest (guest_vm test)".into());
    }
    match Layout::detect() {
        Ok(l) if l.mode() == Mode::Unified => None,
        Ok(l) => Some(format!("layout is {:?}, not unified", l.mode())),
        Err(e) => Some(e.to_string()),
    }
}

macro_rules! require_v2 {
    () => {
        if let Some(r) = skip_reason() {
            println!("SKIPPED: {r}");
            return;
        }
    };
}

fn read(dir: &Path, f: &str) -> String {
    fs::read(dir, f).unwrap().trim().to_string()
}

#[test]
fn v2_memory_oom_swap_and_events() {
    require_v2!();
    let m = manager("oom");
    assert_eq!(m.mode(), Mode::Unified);
    let r = res(|b| {
        b.memory(
            LinuxMemoryBuilder::default()
                .limit(32 * MIB)
                .swap(32 * MIB)
                .reservation(8 * MIB)
                .build()
                .unwrap(),
        )
    });
    m.set(&r).unwrap();
    let d = m.path_for("memory").unwrap();
    assert_eq!(read(d, "memory.max"), (32 * MIB).to_string());
    assert_eq!(read(d, "memory.low"), (8 * MIB).to_string());
    if d.join("memory.swap.max").exists() {
        assert_eq!(read(d, "memory.swap.max"), "0", "swap - limit");
    }
    let mut w = m.oom_events().unwrap();
    let mut sh = Sh::spawn(HOG);
    m.apply(sh.pid()).unwrap();
    sh.go();
    assert_eq!(sh.wait().signal(), Some(libc::SIGKILL));
    assert!(w.wait().unwrap().is_some_and(|n| n >= 1));
    let s = m.stats().unwrap();
    assert!(s.memory.oom_kill >= 1, "{s:?}");
    assert_eq!(s.memory.limit, Some(32 * MIB as u64));
    assert!(s.memory.peak.is_none_or(|p| p <= 32 * MIB as u64), "{s:?}");
    // Live update: a smaller limit is enforced on the next run.
    m.set(&res(|b| {
        b.memory(
            LinuxMemoryBuilder::default()
                .limit(16 * MIB)
                .swap(16 * MIB)
                .build()
                .unwrap(),
        )
    }))
    .unwrap();
    assert_eq!(read(d, "memory.max"), (16 * MIB).to_string());
    let mut sh = Sh::spawn(HOG);
    m.apply(sh.pid()).unwrap();
    sh.go();
    assert_eq!(sh.wait().signal(), Some(libc::SIGKILL));
    assert!(m.stats().unwrap().memory.oom_kill >= 2);
    m.destroy().unwrap();
    all_gone(&m);
}

#[test]
fn v2_pids_max_and_cgroup_kill() {
    require_v2!();
    let m = manager("pids");
    m.set(&res(|b| {
        b.pids(LinuxPidsBuilder::default().limit(3).build().unwrap())
    }))
    .unwrap();
    assert_eq!(read(m.path_for("pids").unwrap(), "pids.max"), "3");
    let mut sh = Sh::spawn("for i in 1 2 3 4 5; do sleep 300 >/dev/null 2>&1 & done; echo all");
    m.apply(sh.pid()).unwrap();
    sh.go();
    let _ = sh.wait();
    let err = sh.stderr();
    assert!(err.contains("fork"), "{err}");
    assert_eq!(m.stats().unwrap().pids.limit, Some(3));
    let left = m.pids().unwrap();
    assert!(!left.is_empty());
    m.destroy().unwrap();
    all_gone(&m);
}

#[test]
fn v2_cpu_max_weight_and_throttling() {
    require_v2!();
    let m = manager("cpu");
    let r = res(|b| {
        b.cpu(
            LinuxCpuBuilder::default()
                .quota(10_000i64)
                .period(100_000u64)
                .shares(1024u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
    });
    m.set(&r).unwrap();
    let d = m.path_for("cpu").unwrap();
    assert_eq!(read(d, "cpu.max"), "10000 100000");
    assert_eq!(read(d, "cpu.weight"), "100");
    let cs = m.path_for("cpuset").unwrap();
    assert_eq!(read(cs, "cpuset.cpus"), "0");
    assert_eq!(read(cs, "cpuset.mems"), "0");
    let mut sh = Sh::spawn("while :; do :; done");
    m.apply(sh.pid()).unwrap();
    sh.go();
    let s = eventually("throttling", || {
        let s = m.stats().unwrap();
        (s.cpu.nr_throttled >= 2).then_some(s)
    });
    assert!(
        s.cpu.throttled_time_ns > 0 && s.cpu.usage_total_ns > 0,
        "{s:?}"
    );
    let rt = res(|b| {
        b.cpu(
            LinuxCpuBuilder::default()
                .realtime_runtime(1000i64)
                .build()
                .unwrap(),
        )
    });
    let e = m.set(&rt).unwrap_err().to_string();
    assert!(e.contains("realtime"), "{e}");
    drop(sh);
    m.destroy().unwrap();
    all_gone(&m);
}

#[test]
fn v2_ebpf_devices_through_manager_with_live_replace() {
    require_v2!();
    let tmp = tempfile::tempdir().unwrap();
    let m = manager("dev");
    use LinuxDeviceType::*;
    let first = vec![
        dev(false, A, None, None, "rwm"),
        dev(true, C, None, None, "m"),
        dev(true, C, Some(1), Some(3), "rwm"),
        dev(true, C, Some(1), Some(5), "rwm"),
        dev(false, C, Some(1), Some(3), "rwm"),
    ];
    m.set_exact(&res(|b| b.devices(first))).unwrap();
    let t = tmp.path().display();
    let phase = format!(
        "if true < /dev/null; then echo null-ok; fi; \
         if head -c1 /dev/zero >/dev/zero; then echo zero-ok; fi; \
         if mknod {t}/n$P c 1 3; then echo mknod-null-ok; fi; \
         if mknod {t}/z$P c 1 5; then echo mknod-zero-ok; fi; echo END"
    );
    let mut sh = Sh::spawn(&format!("P=1; {phase}; read go2; P=2; {phase}"));
    m.apply(sh.pid()).unwrap();
    sh.go();
    // Last match wins: the later deny of 1:3 beats both `c 1:3 rwm` and `c *:* m`.
    assert_eq!(sh.until("END"), vec!["zero-ok", "mknod-zero-ok"]);
    let second = vec![
        dev(true, A, None, None, "rwm"),
        dev(false, C, Some(1), Some(5), "rwm"),
    ];
    m.set_exact(&res(|b| b.devices(second))).unwrap();
    let cg = std::fs::File::open(&m.v2().unwrap().dir).unwrap();
    assert_eq!(
        devices::bpf::query(&cg).unwrap().len(),
        1,
        "old program detached"
    );
    sh.go();
    assert_eq!(sh.until("END"), vec!["null-ok", "mknod-null-ok"]);
    let _ = sh.wait();
    let err = sh.stderr();
    assert_eq!(err.matches("Operation not permitted").count(), 4, "{err}");
    m.destroy().unwrap();
    all_gone(&m);
}

#[test]
fn v2_freeze_and_thaw() {
    require_v2!();
    let m = manager("freeze");
    m.set(&LinuxResources::default()).unwrap();
    let mut sh = Sh::spawn("while :; do :; done");
    m.apply(sh.pid()).unwrap();
    sh.go();
    eventually("child burning cpu", || {
        (proc_stat(sh.pid()).1 > 0).then_some(())
    });
    m.freeze().unwrap();
    assert!(m.is_frozen().unwrap());
    let d = &m.v2().unwrap().dir;
    assert_eq!(fs::keyed(&read(d, "cgroup.events"), "frozen"), Some(1));
    let (_, t1) = proc_stat(sh.pid());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(proc_stat(sh.pid()).1, t1, "frozen task consumed cpu");
    m.thaw().unwrap();
    assert!(!m.is_frozen().unwrap());
    eventually("thawed task runs", || {
        (proc_stat(sh.pid()).1 > t1).then_some(())
    });
    m.freeze().unwrap();
    m.destroy().unwrap();
    all_gone(&m);
    assert_eq!(sh.wait().signal(), Some(libc::SIGKILL));
}

#[test]
fn v2_unified_hugetlb_and_bad_keys() {
    require_v2!();
    let m = manager("unified");
    let r = res(|b| b.unified([("memory.high".to_string(), "50M".to_string())]));
    m.set(&r).unwrap();
    let d = m.v2().unwrap().dir.clone();
    assert_eq!(read(&d, "memory.high"), (50 * MIB).to_string());
    if Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        let h = LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(4 * MIB)
            .build()
            .unwrap();
        m.set(&res(|b| b.hugepage_limits(vec![h]))).unwrap();
        assert_eq!(read(&d, "hugetlb.2MB.max"), (4 * MIB).to_string());
    }
    for (k, want) in [
        ("nosuch.max", "nosuch"),
        ("memory.nosuchfile", "no such file"),
    ] {
        let e = m
            .set(&res(|b| b.unified([(k.to_string(), "1".to_string())])))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{k}: {e}");
    }
    m.destroy().unwrap();
    all_gone(&m);
    // A bad request on a fresh manager creates nothing.
    let m2 = manager("unified-bad");
    assert!(m2
        .set(&res(
            |b| b.unified([("nosuch.max".to_string(), "1".to_string())])
        ))
        .is_err());
    all_gone(&m2);
}

#[test]
fn v2_io_weight_max_and_stats() {
    require_v2!();
    let Ok(devno) = std::fs::read_to_string("/sys/block/nvme0n1/dev") else {
        println!("SKIPPED: the guest has no /dev/nvme0n1");
        return;
    };
    let devno = devno.trim().to_string();
    let (maj, min) = devno.split_once(':').unwrap();
    let m = manager("io");
    let r: LinuxResources = serde_json::from_str(&format!(
        r#"{{"blockIO":{{"weight":500,
            "throttleReadBpsDevice":[{{"major":{maj},"minor":{min},"rate":8388608}}],
            "throttleWriteIOPSDevice":[{{"major":{maj},"minor":{min},"rate":100}}]}}}}"#
    ))
    .unwrap();
    m.set(&r).unwrap();
    let d = m.path_for("blkio").unwrap();
    let max = read(d, "io.max");
    assert!(
        max.contains(&format!("{devno} rbps=8388608")) && max.contains("wiops=100"),
        "{max}"
    );
    if d.join("io.bfq.weight").exists() {
        assert!(read(d, "io.bfq.weight").contains("500"));
    } else {
        assert_eq!(
            read(d, "io.weight"),
            format!("default {}", validate::blkio_to_io_weight(500))
        );
    }
    let mut sh = Sh::spawn("head -c 2097152 /dev/nvme0n1 > /dev/null; echo END");
    m.apply(sh.pid()).unwrap();
    sh.go();
    assert!(sh.until("END").is_empty());
    let s = m.stats().unwrap();
    assert!(s.io.read_bytes >= 2 << 20, "{s:?}");
    m.destroy().unwrap();
    all_gone(&m);
}

#[test]
fn v2_runtime_default_devices() {
    require_v2!();
    let deny_all: LinuxResources =
        serde_json::from_str(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).unwrap();
    let m = manager("defaults");
    m.set(&deny_all).unwrap();
    let mut sh = Sh::spawn(
        "if true < /dev/null; then echo null-ok; fi; \
         if head -c1 /dev/urandom >/dev/null; then echo urandom-ok; fi; \
         if true < /dev/kmsg; then echo kmsg-ok; fi; echo END",
    );
    m.apply(sh.pid()).unwrap();
    sh.go();
    assert_eq!(sh.until("END"), vec!["null-ok", "urandom-ok"]);
    drop(sh);
    m.destroy().unwrap();
    all_gone(&m);
}

#[test]
fn v2_joined_cgroup_is_left_alone() {
    require_v2!();
    let outer = manager("joined");
    let mut sh = Sh::spawn("sleep 300");
    outer.apply(sh.pid()).unwrap();
    let rel = std::path::PathBuf::from(outer.hierarchies()[0].dir.file_name().unwrap());
    let inner = Manager::new(Some(&rel), "x").unwrap();
    inner.apply(sh.pid()).unwrap();
    inner.destroy().unwrap();
    assert!(outer.hierarchies()[0].dir.exists());
    assert!(sh.child_alive());
    outer.destroy().unwrap();
    all_gone(&outer);
    assert_eq!(sh.wait().signal(), Some(libc::SIGKILL));
}

/// v2's no-internal-processes rule: a parent holding a process cannot delegate controllers;
/// the error says so and nothing is left behind.
#[test]
fn v2_busy_parent_gives_clear_error() {
    require_v2!();
    let parent = manager("busy");
    let mut sh = Sh::spawn("sleep 300");
    parent.apply(sh.pid()).unwrap();
    let pdir = parent.hierarchies()[0].dir.clone();
    let abs = Path::new("/").join(pdir.file_name().unwrap()).join("child");
    let m = Manager::new(Some(&abs), "x").unwrap();
    // memory is a domain controller (threaded ones such as pids are exempt from the rule).
    let r = res(|b| {
        b.memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .build()
                .unwrap(),
        )
    });
    let e = m.set(&r).unwrap_err().to_string();
    assert!(e.contains("holds processes"), "{e}");
    m.destroy().unwrap();
    all_gone(&m);
    assert!(sh.child_alive());
    parent.destroy().unwrap();
    all_gone(&parent);
}

#[test]
fn v2_oom_watcher_ends_when_cgroup_is_removed() {
    require_v2!();
    let m = manager("oomgone");
    m.set(&res(|b| {
        b.memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .build()
                .unwrap(),
        )
    }))
    .unwrap();
    let mut w = m.oom_events().unwrap();
    m.destroy().unwrap();
    assert_eq!(w.wait().unwrap(), None);
    all_gone(&m);
}
