//! Resource limits of `vessel` containers on this host's cgroup hierarchies, for real:
//! OOM kills at the memory limit (and the streamed `oom` event), pids limit, CPU quota
//! throttling, device rules, pause/resume, live `update`, and bad input.
mod common;
mod runtime_support;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use runtime_support::*;
use serde_json::{json, Value};

const MIB: i64 = 1 << 20;

/// The container's directory in the v1 hierarchy mounted at /sys/fs/cgroup/<ctrl>.
fn v1_dir(id: &str, ctrl: &str) -> Option<PathBuf> {
    let prefix = PathBuf::from("/sys/fs/cgroup").join(ctrl);
    cgroup_dirs(id).into_iter().find(|d| d.starts_with(&prefix))
}

/// Whether the host has the v1 hierarchies these tests read; records a skip if not.
fn v1_host(test: &str, ctrls: &[&str]) -> bool {
    for c in ctrls {
        if !PathBuf::from("/sys/fs/cgroup")
            .join(c)
            .join("cgroup.procs")
            .exists()
        {
            common::skip(test, &format!("no v1 {c} hierarchy on this host"));
            return false;
        }
    }
    true
}

fn read_trim(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Polls `f` (bounded) until it returns true; returns the last result.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `vessel events --stats id`, checked and parsed.
fn stats(env: &Env, id: &str) -> Value {
    let out = env.vessel(&["events", "--stats", id]);
    assert!(out.status.success(), "events --stats: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "stats");
    assert_eq!(v["id"], id);
    v["data"].clone()
}

/// A config running `script` under `sh -c` with a writable rootfs and `resources`.
fn config(env: &Env, script: &str, resources: Value) -> Value {
    let mut cfg = env.config_with_args(&["sh", "-c", script]);
    cfg["root"]["readonly"] = json!(false);
    cfg["linux"]["resources"] = resources;
    cfg
}

/// A file the container wrote to its /tmp.
fn container_file(env: &Env, name: &str) -> Option<String> {
    std::fs::read_to_string(env.bundle_path().join("rootfs/tmp").join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

fn run_detached(env: &Env, id: &str) {
    let out = env.vessel_b("run", &["--detach"], id);
    assert!(out.status.success(), "run -d: {}", stderr(&out));
}

fn delete_and_check_clean(env: &Env, id: &str) {
    let out = env.vessel(&["delete", "--force", id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(!env.state_dir(id).exists(), "state left behind");
    assert!(
        cgroup_dirs(id).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(id)
    );
}

/// Kills and reaps a spawned `vessel events` on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn memory_hog_is_oom_killed_at_its_limit() {
    let t = "memory_hog_is_oom_killed_at_its_limit";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["memory"]) {
        return;
    }
    let id = common::unique_id("oom");
    // 8 MiB fit under the 32 MiB limit; a 64 MiB buffer does not.
    env.write_config(&config(
        &env,
        "dd if=/dev/zero of=/dev/null bs=8M count=1 2>/dev/null; echo $? > /tmp/rc-small; \
         dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo $? > /tmp/rc-big; \
         exec sleep 1000",
        json!({"memory": {"limit": 32 * MIB}}),
    ));
    run_detached(&env, &id);
    assert!(
        eventually(|| container_file(&env, "rc-big").is_some_and(|s| !s.is_empty())),
        "the hog never finished"
    );
    assert_eq!(container_file(&env, "rc-small").as_deref(), Some("0"));
    // 128 + SIGKILL.
    assert_eq!(container_file(&env, "rc-big").as_deref(), Some("137"));
    let mem = v1_dir(&id, "memory").expect("memory cgroup");
    assert_eq!(
        read_trim(mem.join("memory.limit_in_bytes")),
        (32 * MIB).to_string()
    );
    let s = stats(&env, &id);
    assert_eq!(s["memory"]["usage"]["limit"], 32 * MIB, "{s}");
    assert!(s["memory"]["oom_kill"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["memory"]["usage"]["failcnt"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(env.state(&id)["status"], "running");
    delete_and_check_clean(&env, &id);
}

#[test]
fn foreground_hog_exits_by_sigkill() {
    let t = "foreground_hog_exits_by_sigkill";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["memory"]) {
        return;
    }
    let id = common::unique_id("oomfg");
    let mut cfg =
        env.config_with_args(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    cfg["linux"]["resources"] = json!({"memory": {"limit": 32 * MIB}});
    env.write_config(&cfg);
    let out = env.vessel_b("run", &[], &id);
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    assert!(cgroup_dirs(&id).is_empty(), "cgroup left");
}

#[test]
fn oom_kill_is_streamed_as_an_event() {
    let t = "oom_kill_is_streamed_as_an_event";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["memory"]) {
        return;
    }
    let id = common::unique_id("oomev");
    let mut cfg =
        env.config_with_args(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    cfg["linux"]["resources"] = json!({"memory": {"limit": 32 * MIB}});
    env.write_config(&cfg);
    let out = env.vessel_b("create", &[], &id);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = env
        .cmd(&["events", "--interval", "100ms", &id])
        .stdout(log.reopen().unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut events = ChildGuard(child);
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(log.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    };
    // The first stats event shows the watcher is in place before the hog starts.
    assert!(eventually(|| !lines().is_empty()), "no stats event");
    let first = &lines()[0];
    assert_eq!(first["type"], "stats");
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["data"]["memory"]["usage"]["limit"], 32 * MIB);
    let out = env.vessel(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    // The stream ends by itself when the container stops.
    assert!(
        eventually(|| events.0.try_wait().unwrap().is_some()),
        "events did not exit after the container stopped"
    );
    assert!(events.0.wait().unwrap().success());
    let all = lines();
    assert!(
        all.iter().any(|e| *e == json!({"type": "oom", "id": id})),
        "no oom event in {all:?}"
    );
    assert_eq!(env.state(&id)["status"], "stopped");
    delete_and_check_clean(&env, &id);
}

#[test]
fn pids_limit_makes_fork_fail() {
    let t = "pids_limit_makes_fork_fail";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["pids"]) {
        return;
    }
    let id = common::unique_id("pids");
    env.write_config(&config(
        &env,
        "i=0; while [ $i -lt 30 ]; do sleep 1000 & i=$((i+1)); echo $i > /tmp/n; done",
        json!({"pids": {"limit": 10}}),
    ));
    let out = env.vessel_b("run", &[], &id);
    let err = stderr(&out);
    assert!(!out.status.success(), "all 30 forks succeeded");
    assert!(err.contains("can't fork"), "{err}");
    let n: u32 = container_file(&env, "n").unwrap().parse().unwrap();
    assert!(n < 10, "{n} sleeps started under pids.max 10");
    assert!(cgroup_dirs(&id).is_empty(), "cgroup left");
}

#[test]
fn cpu_quota_throttles_a_busy_loop() {
    let t = "cpu_quota_throttles_a_busy_loop";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["cpu"]) {
        return;
    }
    let id = common::unique_id("cpu");
    env.write_config(&config(
        &env,
        "while :; do :; done",
        json!({"cpu": {"quota": 10000, "period": 100000}}),
    ));
    run_detached(&env, &id);
    let cpu = v1_dir(&id, "cpu").expect("cpu cgroup");
    assert_eq!(read_trim(cpu.join("cpu.cfs_quota_us")), "10000");
    assert_eq!(read_trim(cpu.join("cpu.cfs_period_us")), "100000");
    let mut last = Value::Null;
    let throttled = eventually(|| {
        last = stats(&env, &id);
        // throttled_time is accounted when a throttled period ends: wait for both.
        let th = &last["cpu"]["throttling"];
        th["throttledPeriods"].as_u64().is_some_and(|n| n > 0)
            && th["throttledTime"].as_u64().is_some_and(|n| n > 0)
    });
    assert!(throttled, "never throttled: {last}");
    assert!(last["cpu"]["usage"]["total"].as_u64().unwrap() > 0);
    delete_and_check_clean(&env, &id);
}

#[test]
fn denied_device_cannot_be_opened_or_created() {
    let t = "denied_device_cannot_be_opened_or_created";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["devices"]) {
        return;
    }
    let id = common::unique_id("dev");
    // /dev/kmsg's numbers (1:11): not among the defaults every container gets, so the
    // deny after "allow all" stands for reading and writing. Like runc, every container
    // may mknod any device ("c *:* m" is a default rule), so a node can still be made but
    // not opened. One node is made on the host inside the rootfs copy.
    let node = env.bundle_path().join("rootfs/tmp/kmsg-node");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 11),
    )
    .unwrap();
    let mut cfg = config(
        &env,
        "dd if=/tmp/kmsg-node of=/dev/null bs=1 count=1 2>&1; \
         echo x 2>&1 > /tmp/kmsg-node; \
         mknod /dev/denied c 1 11 && echo denied-created; \
         dd if=/dev/denied of=/dev/null bs=1 count=1 2>&1; \
         mknod /dev/allowed c 1 5 && echo allowed-created; \
         dd if=/dev/allowed of=/dev/null bs=1 count=1 2>/dev/null && echo allowed-read",
        json!({"devices": [
            {"allow": true, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 11, "access": "rw"}
        ]}),
    );
    for set in ["bounding", "effective", "permitted"] {
        cfg["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_MKNOD"));
    }
    env.write_config(&cfg);
    let out = env.vessel_b("run", &[], &id);
    let o = stdout(&out);
    assert!(out.status.success(), "run: {} {o}", stderr(&out));
    let eperm = |path: &str| {
        o.lines()
            .filter(|l| l.contains(path) && l.contains("Operation not permitted"))
            .count()
    };
    // Read (dd) and write (shell redirection) of the host-made node.
    assert_eq!(eperm("/tmp/kmsg-node"), 2, "open of the denied node: {o}");
    assert!(o.contains("denied-created"), "{o}");
    assert_eq!(eperm("/dev/denied"), 1, "open of the node made inside: {o}");
    assert!(o.contains("allowed-created"), "control mknod failed: {o}");
    assert!(o.contains("allowed-read"), "control read failed: {o}");
    assert!(cgroup_dirs(&id).is_empty(), "cgroup left");
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let t = "pause_freezes_and_resume_thaws";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["freezer"]) {
        return;
    }
    let id = common::unique_id("pause");
    env.write_config(&config(
        &env,
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; done",
        json!({}),
    ));
    run_detached(&env, &id);
    let counter = || -> u64 {
        container_file(&env, "counter")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    assert!(eventually(|| counter() > 10), "the loop does not run");
    let freezer = v1_dir(&id, "freezer").expect("freezer cgroup");

    let out = env.vessel(&["pause", &id]);
    assert!(out.status.success(), "pause: {}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "paused");
    assert_eq!(read_trim(freezer.join("freezer.state")), "FROZEN");
    let frozen_at = counter();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(), frozen_at, "a frozen container made progress");
    // Not allowed while paused.
    let out = env.vessel(&["pause", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("paused"), "{}", stderr(&out));
    let out = env.vessel(&["exec", &id, "true"]);
    assert!(!out.status.success(), "exec into a paused container");

    let out = env.vessel(&["resume", &id]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "running");
    assert_eq!(read_trim(freezer.join("freezer.state")), "THAWED");
    assert!(
        eventually(|| counter() > frozen_at),
        "no progress after resume"
    );
    let out = env.vessel(&["resume", &id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot resume") && stderr(&out).contains("running"),
        "{}",
        stderr(&out)
    );
    delete_and_check_clean(&env, &id);
}

#[test]
fn force_delete_of_a_paused_container() {
    let t = "force_delete_of_a_paused_container";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["freezer"]) {
        return;
    }
    let id = common::unique_id("pdel");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    run_detached(&env, &id);
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let out = env.vessel(&["pause", &id]);
    assert!(out.status.success(), "pause: {}", stderr(&out));
    let out = env.vessel(&["delete", &id]);
    assert!(
        !out.status.success(),
        "delete without --force of a paused one"
    );
    assert!(stderr(&out).contains("paused"), "{}", stderr(&out));
    delete_and_check_clean(&env, &id);
    assert!(wait_gone(pid), "the init survived delete --force");
}

#[test]
fn update_memory_applies_live_and_persists() {
    let t = "update_memory_applies_live_and_persists";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["memory", "pids", "cpu"]) {
        return;
    }
    let id = common::unique_id("updmem");
    env.write_config(&config(
        &env,
        "exec sleep 1000",
        json!({"memory": {"limit": 256 * MIB}, "pids": {"limit": 100}}),
    ));
    run_detached(&env, &id);
    let mem = v1_dir(&id, "memory").expect("memory cgroup");
    let hog = [
        "exec",
        &id,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ];
    let out = env.vessel(&hog);
    assert_eq!(
        out.status.code(),
        Some(0),
        "hog under 256M: {}",
        stderr(&out)
    );

    let out = env.vessel(&["update", "--memory", "32m", "--cpu-quota", "50000", &id]);
    assert!(out.status.success(), "update: {}", stderr(&out));
    assert_eq!(
        read_trim(mem.join("memory.limit_in_bytes")),
        (32 * MIB).to_string()
    );
    let cpu = v1_dir(&id, "cpu").expect("cpu cgroup");
    assert_eq!(read_trim(cpu.join("cpu.cfs_quota_us")), "50000");
    let out = env.vessel(&hog);
    assert_eq!(
        out.status.code(),
        Some(137),
        "hog over 32M: {}",
        stderr(&out)
    );
    assert_eq!(env.state(&id)["status"], "running");

    // A later update of one field keeps the others in force.
    let out = env.vessel(&["update", "--pids-limit", "50", &id]);
    assert!(out.status.success(), "update: {}", stderr(&out));
    let pids = v1_dir(&id, "pids").expect("pids cgroup");
    assert_eq!(read_trim(pids.join("pids.max")), "50");
    assert_eq!(
        read_trim(mem.join("memory.limit_in_bytes")),
        (32 * MIB).to_string()
    );
    assert_eq!(read_trim(cpu.join("cpu.cfs_quota_us")), "50000");

    // -r with a LinuxResources JSON on stdin.
    let mut child = env
        .cmd(&["update", "-r", "-", &id])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(br#"{"memory":{"limit":134217728},"cpu":{"shares":512}}"#)
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "update -r -: {}", stderr(&out));
    assert_eq!(read_trim(mem.join("memory.limit_in_bytes")), "134217728");
    assert_eq!(read_trim(cpu.join("cpu.shares")), "512");
    assert_eq!(read_trim(pids.join("pids.max")), "50");
    let out = env.vessel(&hog);
    assert_eq!(
        out.status.code(),
        Some(0),
        "hog under 128M: {}",
        stderr(&out)
    );
    delete_and_check_clean(&env, &id);
}

#[test]
fn update_pids_limit_is_enforced() {
    let t = "update_pids_limit_is_enforced";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["pids"]) {
        return;
    }
    let id = common::unique_id("updpids");
    env.write_config(&config(&env, "exec sleep 1000", json!({})));
    run_detached(&env, &id);
    let spawn = [
        "exec",
        &id,
        "sh",
        "-c",
        "i=0; while [ $i -lt 8 ]; do sleep 1000 & i=$((i+1)); done; echo all-forked",
    ];
    // No limit: all forks succeed (their sleeps stay in the container).
    let out = env.vessel(&spawn);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "all-forked");

    let out = env.vessel(&["update", "--pids-limit", "12", &id]);
    assert!(out.status.success(), "update: {}", stderr(&out));
    let pids = v1_dir(&id, "pids").expect("pids cgroup");
    assert_eq!(read_trim(pids.join("pids.max")), "12");
    // 9 tasks now; 8 more cannot fit under 12.
    let out = env.vessel(&spawn);
    assert!(!out.status.success(), "forks beyond pids.max succeeded");
    assert!(stderr(&out).contains("can't fork"), "{}", stderr(&out));
    let current: u64 = read_trim(pids.join("pids.current")).parse().unwrap();
    assert!(current <= 12, "pids.current {current} above the limit");
    delete_and_check_clean(&env, &id);
}

#[test]
fn bad_updates_are_refused_and_change_nothing() {
    let t = "bad_updates_are_refused_and_change_nothing";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["memory", "pids", "cpu"]) {
        return;
    }
    let id = common::unique_id("badupd");
    env.write_config(&config(
        &env,
        "exec sleep 1000",
        json!({"memory": {"limit": 64 * MIB}, "pids": {"limit": 20}}),
    ));
    run_detached(&env, &id);
    let mem = v1_dir(&id, "memory").expect("memory cgroup");
    let pids = v1_dir(&id, "pids").expect("pids cgroup");
    let cpu = v1_dir(&id, "cpu").expect("cpu cgroup");
    let snapshot = || {
        (
            read_trim(mem.join("memory.limit_in_bytes")),
            read_trim(pids.join("pids.max")),
            read_trim(cpu.join("cpu.cfs_quota_us")),
            read_trim(cpu.join("cpu.shares")),
        )
    };
    let before = snapshot();
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut with_json = |j: &str| {
        n += 1;
        let file = dir.path().join(format!("r{n}.json"));
        std::fs::write(&file, j).unwrap();
        vec![
            "update".to_string(),
            "-r".into(),
            file.to_str().unwrap().into(),
            id.clone(),
        ]
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["update".into(), "--memory".into(), "-5".into(), id.clone()],
            "--memory",
        ),
        (
            vec![
                "update".into(),
                "--memory".into(),
                "12parsecs".into(),
                id.clone(),
            ],
            "invalid size",
        ),
        (with_json(r#"{"memory":{"limit":-5}}"#), "negative"),
        (
            with_json(r#"{"memory":{"limit":67108864,"swap":1048576}}"#),
            "swap",
        ),
        (
            vec![
                "update".into(),
                "--cpu-quota".into(),
                "500".into(),
                id.clone(),
            ],
            "cpu quota 500",
        ),
        (
            vec![
                "update".into(),
                "--cpu-period".into(),
                "5".into(),
                id.clone(),
            ],
            "cpu period 5",
        ),
        (
            vec![
                "update".into(),
                "--cpuset-cpus".into(),
                "4095".into(),
                id.clone(),
            ],
            "not online",
        ),
        (
            vec![
                "update".into(),
                "--pids-limit".into(),
                "-7".into(),
                id.clone(),
            ],
            "pids",
        ),
        (with_json(r#"{"unified":{"nosuch.max":"1"}}"#), "nosuch"),
        (
            with_json(
                r#"{"devices":[{"allow":false,"type":"x","major":1,"minor":3,"access":"rwm"}]}"#,
            ),
            "unknown variant `x`",
        ),
        (with_json("{not json"), "parse resources"),
        (
            vec![
                "update".into(),
                "-r".into(),
                "/nonexistent/resources.json".into(),
                id.clone(),
            ],
            "/nonexistent/resources.json",
        ),
        (
            vec![
                "update".into(),
                "-r".into(),
                "-".into(),
                "--memory".into(),
                "1m".into(),
                id.clone(),
            ],
            "cannot be combined",
        ),
    ];
    for (args, want) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.vessel(&a);
        assert!(!out.status.success(), "{a:?} succeeded");
        assert!(
            stderr(&out).contains(want),
            "{a:?}: expected {want:?} in {:?}",
            stderr(&out)
        );
        assert_eq!(snapshot(), before, "{a:?} changed the cgroup");
    }
    assert!(
        !env.state_dir(&id).join("resources.json").exists(),
        "a refused update was persisted"
    );
    assert_eq!(env.state(&id)["status"], "running");

    // Unknown containers: clear error, nothing created under the root.
    for sub in [
        vec!["update", "--memory", "1m", "nosuch-ctr"],
        vec!["pause", "nosuch-ctr"],
        vec!["resume", "nosuch-ctr"],
        vec!["events", "--stats", "nosuch-ctr"],
    ] {
        let out = env.vessel(&sub);
        assert!(!out.status.success(), "{sub:?} succeeded");
        assert!(
            stderr(&out).contains("\"nosuch-ctr\" does not exist"),
            "{sub:?}: {}",
            stderr(&out)
        );
    }
    assert!(!env.state_dir("nosuch-ctr").exists());
    delete_and_check_clean(&env, &id);
}

#[test]
fn stopped_container_refuses_pause_update_and_stats() {
    let t = "stopped_container_refuses_pause_update_and_stats";
    let Some(env) = setup(t) else { return };
    let id = common::unique_id("stopped");
    env.write_config(&env.config_with_args(&["true"]));
    run_detached(&env, &id);
    assert_eq!(env.wait_status(&id, "stopped")["status"], "stopped");
    for sub in [
        vec!["pause", id.as_str()],
        vec!["resume", id.as_str()],
        vec!["update", "--memory", "64m", id.as_str()],
        vec!["events", "--stats", id.as_str()],
        vec!["events", id.as_str()],
    ] {
        let out = env.vessel(&sub);
        assert!(!out.status.success(), "{sub:?} succeeded");
        assert!(
            stderr(&out).contains("stopped"),
            "{sub:?}: {}",
            stderr(&out)
        );
    }
    delete_and_check_clean(&env, &id);
}

#[test]
fn paused_before_start_resumes_to_created() {
    let t = "paused_before_start_resumes_to_created";
    let Some(env) = setup(t) else { return };
    if !v1_host(t, &["freezer"]) {
        return;
    }
    let id = common::unique_id("pcreated");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("create", &[], &id);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let out = env.vessel(&["pause", &id]);
    assert!(out.status.success(), "pause: {}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "paused");
    let out = env.vessel(&["start", &id]);
    assert!(!out.status.success(), "start of a paused container");
    let out = env.vessel(&["resume", &id]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "created");
    let out = env.vessel(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "running");
    delete_and_check_clean(&env, &id);
}

/// The init and an exec'd process sit in the container's cgroup in every hierarchy the
/// container has (they join it themselves: born in the v2 cgroup, moving themselves into
/// the v1 ones), and `ps` lists both.
#[test]
fn init_and_exec_process_are_in_every_container_cgroup() {
    let Some(env) = setup("init_and_exec_process_are_in_every_container_cgroup") else {
        return;
    };
    let id = common::unique_id("place");
    env.write_config(&config(&env, "sleep 60", json!({"pids": {"limit": 64}})));
    run_detached(&env, &id);
    let init = env.state(&id)["pid"].as_i64().unwrap();
    let out = env.vessel(&["exec", "--detach", &id, "sleep", "61"]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    let ps = env.vessel(&["ps", "--format", "json", &id]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids.len(), 2, "ps: {pids:?}");
    assert!(pids.contains(&init));
    let dirs = cgroup_dirs(&id);
    assert!(!dirs.is_empty());
    for pid in pids {
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for d in &dirs {
            // /sys/fs/cgroup/<mount>/<path>: the line of that hierarchy ends with <path>.
            let rel: PathBuf = d.components().skip(5).collect();
            let rel = format!("/{}", rel.display());
            assert!(
                own.lines().any(|l| l.ends_with(&format!(":{rel}"))),
                "pid {pid} is not in {}: {own}",
                d.display()
            );
        }
    }
    delete_and_check_clean(&env, &id);
}
