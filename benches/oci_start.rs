//! Side-by-side container start benchmark: `vessel` vs `crun` vs `runc` on the same busybox
//! bundle running `/bin/true`.
//!
//! Run with `cargo bench --bench oci_start` (as root, after `bash fixtures/all.sh` and
//! `cargo build --release -p vessel-bins`). Options via the environment:
//! `VESSEL_BENCH_RUNS` (default 50 per runtime and mode), `VESSEL_BENCH_COMPARE` (path of a
//! second vessel binary, reported as `vessel-b`, for A/B comparisons of two builds),
//! `VESSEL_BENCH_GAP_MS` (pause before each measured command, default 100: a cgroup v1
//! migration waits for an RCU grace period unless another one happened within about one
//! grace period before, so without the pause one runtime would warm the lock for the next;
//! with it, each starts cold, as a container start on a quiet host does).
//!
//! Two modes: `run` (one command, create+start+wait+delete) and `create+start+delete` as three
//! separate commands. Runtimes are alternated run by run so that drift of the machine hits all
//! of them alike. Reported: median, p10 and p90 wall time, peak RSS of the runtime process
//! (from `wait4`), and the ratio of each runtime's median to crun's.
//!
//! Debian's crun refuses this host's hybrid cgroup layout unless the cgroup2 mount at
//! /sys/fs/cgroup/unified is hidden, so the benchmark first moves itself into a private mount
//! namespace with a tmpfs over that path; all three runtimes then see the same host.
//! Every container gets an absolute `cgroupsPath` below the benchmark's own cgroup (runtimes
//! disagree on where a relative path goes: crun takes it from the hierarchy root), and the
//! benchmark removes that subtree at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Runtime {
    name: &'static str,
    bin: PathBuf,
}

struct Sample {
    wall: Duration,
    max_rss_kib: i64,
}

/// Spawn `cmd`, wait for it with wait4 and return wall time and peak RSS.
fn measure(cmd: &mut Command) -> Result<Sample, String> {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, status and usage point to valid memory.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let st = std::process::ExitStatus::from_raw(status);
    if !st.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        return Err(format!("{cmd:?} failed ({st}): {err}"));
    }
    Ok(Sample {
        wall,
        max_rss_kib: usage.ru_maxrss,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn hide_cgroup2() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    if Path::new("/sys/fs/cgroup/unified").exists() {
        mount(
            Some("tmpfs"),
            "/sys/fs/cgroup/unified",
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("hide /sys/fs/cgroup/unified: {e}"))?;
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let gap = Duration::from_millis(
        std::env::var("VESSEL_BENCH_GAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    let runs: usize = std::env::var("VESSEL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let fixtures = std::env::var_os("VESSEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("fixtures/.cache"));
    let src_bundle = fixtures.join("bundle");
    if !src_bundle.join("config.json").exists() {
        eprintln!(
            "no bundle at {}: run bash fixtures/all.sh",
            src_bundle.display()
        );
        std::process::exit(1);
    }
    if let Err(e) = hide_cgroup2() {
        eprintln!("cannot prepare a private mount namespace: {e}");
        std::process::exit(1);
    }

    let work = tempfile::tempdir().expect("tempdir");
    let bundle = work.path().join("bundle");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src_bundle)
        .arg(&bundle)
        .status()
        .expect("cp");
    assert!(st.success(), "copy bundle");
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read config"))
            .expect("parse config");
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    let cg_base = format!(
        "{}/vessel-oci-start-{}",
        common::own_cgroup().trim_end_matches('/'),
        std::process::id()
    );
    let bundles: Vec<PathBuf> = ["vessel", "crun", "runc"]
        .iter()
        .map(|name| {
            let b = work.path().join(format!("bundle-{name}"));
            std::fs::create_dir_all(&b).expect("bundle dir");
            let mut c = cfg.clone();
            // One shared rootfs, named by its absolute path (runc refuses a symlink).
            c["root"]["path"] = serde_json::json!(bundle.join("rootfs"));
            c["linux"]["cgroupsPath"] = serde_json::json!(format!("{cg_base}/{name}"));
            std::fs::write(b.join("config.json"), c.to_string()).expect("write config");
            b
        })
        .collect();

    let vessel = repo.join("target/release/vessel");
    let mut runtimes = Vec::new();
    if vessel.is_file() {
        runtimes.push(Runtime {
            name: "vessel",
            bin: vessel,
        });
    } else {
        eprintln!(
            "note: {} missing (cargo build --release -p vessel-bins)",
            vessel.display()
        );
    }
    // A/B of two vessel builds: VESSEL_BENCH_COMPARE=/path/to/another/vessel.
    if let Some(bin) = std::env::var_os("VESSEL_BENCH_COMPARE") {
        runtimes.push(Runtime {
            name: "vessel-b",
            bin: PathBuf::from(bin),
        });
    }
    for name in ["crun", "runc"] {
        match which(name) {
            Some(bin) => runtimes.push(Runtime { name, bin }),
            None => eprintln!("note: {name} not installed (apt-get install {name})"),
        }
    }

    println!(
        "oci_start: {runs} runs per runtime and mode, alternating; bundle {}",
        bundle.display()
    );
    println!(
        "{:<8} {:<22} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "runtime", "mode", "median", "p10", "p90", "peak RSS", "vs crun"
    );
    for mode in ["run", "create+start+delete"] {
        let mut samples: Vec<Vec<Sample>> = runtimes.iter().map(|_| Vec::new()).collect();
        for i in 0..runs {
            for (r, rt) in runtimes.iter().enumerate() {
                // Start cold: a cgroup migration right before (by the previous runtime)
                // would spare the next one the RCU grace period its own migration waits for.
                std::thread::sleep(gap);
                let root = work.path().join(format!("root-{}", rt.name));
                let id = format!("bench-{}-{i}", rt.name);
                let b = bundles[["vessel", "crun", "runc"]
                    .iter()
                    .position(|n| rt.name.starts_with(n))
                    .expect("known runtime")]
                .to_str()
                .expect("utf-8 path");
                let result = if mode == "run" {
                    measure(
                        Command::new(&rt.bin)
                            .arg("--root")
                            .arg(&root)
                            .args(["run", "--bundle", b, &id]),
                    )
                } else {
                    let start = Instant::now();
                    let mut rss = 0;
                    let mut res = Ok(());
                    for args in [
                        vec!["create", "--bundle", b, &id],
                        vec!["start", &id],
                        vec!["delete", "--force", &id],
                    ] {
                        match measure(Command::new(&rt.bin).arg("--root").arg(&root).args(args)) {
                            Ok(s) => rss = rss.max(s.max_rss_kib),
                            Err(e) => {
                                res = Err(e);
                                break;
                            }
                        }
                    }
                    res.map(|()| Sample {
                        wall: start.elapsed(),
                        max_rss_kib: rss,
                    })
                };
                match result {
                    Ok(s) => samples[r].push(s),
                    Err(e) => {
                        eprintln!("{} {mode} run {i}: {e}", rt.name);
                        let _ = Command::new(&rt.bin)
                            .arg("--root")
                            .arg(&root)
                            .args(["delete", "--force", &id])
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            }
        }
        let medians: Vec<Option<Duration>> = samples
            .iter()
            .map(|s| {
                let mut w: Vec<Duration> = s.iter().map(|x| x.wall).collect();
                w.sort();
                (!w.is_empty()).then(|| percentile(&w, 0.5))
            })
            .collect();
        let crun_median = runtimes
            .iter()
            .position(|r| r.name == "crun")
            .and_then(|i| medians[i]);
        for (r, rt) in runtimes.iter().enumerate() {
            let mut w: Vec<Duration> = samples[r].iter().map(|x| x.wall).collect();
            if w.is_empty() {
                println!("{:<8} {:<22} (all runs failed)", rt.name, mode);
                continue;
            }
            w.sort();
            let rss = samples[r].iter().map(|x| x.max_rss_kib).max().unwrap_or(0);
            let ratio = match (medians[r], crun_median) {
                (Some(m), Some(c)) => format!("{:.2}x", m.as_secs_f64() / c.as_secs_f64()),
                _ => "-".into(),
            };
            println!(
                "{:<8} {:<22} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>7}KiB {:>9}",
                rt.name,
                mode,
                percentile(&w, 0.5).as_secs_f64() * 1e3,
                percentile(&w, 0.1).as_secs_f64() * 1e3,
                percentile(&w, 0.9).as_secs_f64() * 1e3,
                rss,
                ratio
            );
        }
    }
    common::remove_cgroup_everywhere(&cg_base);
}
