//! End-to-end lifecycle of `vessel`: create, state, start, kill, delete; run; list.
mod common;
mod runtime_support;

use runtime_support::*;

#[test]
fn run_returns_the_exit_status_and_cleans_up() {
    let Some(env) = setup("run_returns_the_exit_status_and_cleans_up") else {
        return;
    };
    let id = common::unique_id("run");
    env.write_config(&env.config_with_args(&["sh", "-c", "echo out-$$; exit 7"]));
    let out = env.vessel_b("run", &[], &id);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    // A new pid namespace: the shell is pid 1.
    assert_eq!(stdout(&out).trim(), "out-1");
    assert!(!env.state_dir(&id).exists(), "state left behind");
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(&id)
    );
}

#[test]
fn create_start_kill_delete() {
    let Some(env) = setup("create_start_kill_delete") else {
        return;
    };
    let id = common::unique_id("life");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let pid_file = env.root_path().join("../").join(format!("{id}.pid"));
    let pid_file = tempfile::NamedTempFile::new()
        .map(|f| f.path().to_path_buf())
        .unwrap_or(pid_file);
    let out = env.vessel_b("create", &["--pid-file", pid_file.to_str().unwrap()], &id);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let st = env.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["ociVersion"], "1.0.2");
    assert_eq!(
        st["bundle"],
        env.bundle_path().canonicalize().unwrap().to_str().unwrap()
    );
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    let _ = std::fs::remove_file(&pid_file);
    // The created init is set up but has not exec'd yet: noNewPrivileges already applies.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(!process_gone(pid));
    assert!(!cgroup_dirs(&id).is_empty(), "no cgroup for the container");

    let out = env.vessel(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"sleep\x001000\x00");

    let out = env.vessel(&["kill", &id, "KILL"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    assert_eq!(env.wait_status(&id, "stopped")["status"], "stopped");

    let out = env.vessel(&["delete", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(!env.state_dir(&id).exists());
    assert!(wait_gone(pid));
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(&id)
    );
    let out = env.vessel(&["state", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(env.bundle_path().to_str().unwrap()),
        "mount left"
    );
}

#[test]
fn detached_run_exec_ps_list() {
    let Some(env) = setup("detached_run_exec_ps_list") else {
        return;
    };
    let id = common::unique_id("det");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("run", &["--detach"], &id);
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "running");

    let out = env.vessel(&["list", "-q"]);
    assert_eq!(stdout(&out).trim(), id);
    let out = env.vessel(&["list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "running");
    let out = env.vessel(&["list"]);
    assert!(stdout(&out).starts_with("ID"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&id));

    // exec: env, cwd, user, hostname, exit status.
    let out = env.vessel(&[
        "exec",
        "-e",
        "FOO=bar",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; hostname; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "bar\n/tmp\n1000\n1000\nvessel\n");

    // A detached exec shows up in ps.
    let out = env.vessel(&["exec", "--detach", &id, "sleep", "999"]);
    assert!(out.status.success(), "exec -d: {}", stderr(&out));
    let out = env.vessel(&["ps", "--format", "json", &id]);
    let pids: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let init = env.state(&id)["pid"].as_i64().unwrap();
    assert!(pids.contains(&init));
    let out = env.vessel(&["ps", &id]);
    assert!(stdout(&out).contains("sleep 999"), "{}", stdout(&out));

    let out = env.vessel(&["kill", "--all", &id, "9"]);
    assert!(out.status.success(), "kill --all: {}", stderr(&out));
    env.wait_status(&id, "stopped");
    for p in &pids {
        assert!(wait_gone(*p), "pid {p} survived kill --all");
    }
    let out = env.vessel(&["delete", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(!env.state_dir(&id).exists());
}

#[test]
fn config_process_settings_apply_inside() {
    let Some(env) = setup("config_process_settings_apply_inside") else {
        return;
    };
    let id = common::unique_id("proc");
    let mut cfg = env.config_with_args(&[
        "sh",
        "-c",
        "hostname; cat /proc/sys/kernel/domainname; echo $FOO; pwd; id -u; id -g; id -G; \
         ulimit -n; cat /proc/self/oom_score_adj",
    ]);
    cfg["hostname"] = "box-test".into();
    cfg["domainname"] = "dom.test".into();
    cfg["process"]["oomScoreAdj"] = 123.into();
    cfg["process"]["env"] = serde_json::json!(["PATH=/bin:/usr/bin", "FOO=from-config"]);
    cfg["process"]["cwd"] = "/tmp".into();
    cfg["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1001, "additionalGids": [5]});
    cfg["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
    env.write_config(&cfg);
    let out = env.vessel_b("run", &[], &id);
    assert!(out.status.success(), "run: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "box-test\ndom.test\nfrom-config\n/tmp\n1000\n1001\n1001 5\n256\n123\n"
    );
}

#[test]
fn foreground_run_forwards_signals() {
    let Some(env) = setup("foreground_run_forwards_signals") else {
        return;
    };
    let id = common::unique_id("sig");
    env.write_config(&env.config_with_args(&[
        "sh",
        "-c",
        "trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done",
    ]));
    let mut child = env
        .cmd(&["run", "--bundle", env.bundle_path().to_str().unwrap(), &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(9));
    assert!(!env.state_dir(&id).exists());
}

#[test]
fn preserve_fds_passes_extra_fds() {
    use std::os::unix::process::CommandExt;
    let Some(env) = setup("preserve_fds_passes_extra_fds") else {
        return;
    };
    let id = common::unique_id("fds");
    env.write_config(&env.config_with_args(&["sh", "-c", "read l <&3; echo got:$l"]));
    let src = env.root_path().join("fd-input");
    std::fs::write(&src, "hello-fd\n").unwrap();
    let f = std::fs::File::open(&src).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut cmd = env.cmd(&[
        "run",
        "--preserve-fds",
        "1",
        "--bundle",
        env.bundle_path().to_str().unwrap(),
        &id,
    ]);
    // SAFETY: dup2 and fcntl are async-signal-safe; `raw` stays open in the parent until spawn ends.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it explicitly.
            if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "run: {}", stderr(&out));
    assert_eq!(stdout(&out), "got:hello-fd\n");
    // Without --preserve-fds the fd does not reach the container.
    let id2 = common::unique_id("fds");
    let mut cmd = env.cmd(&["run", "--bundle", env.bundle_path().to_str().unwrap(), &id2]);
    // SAFETY: as above.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it explicitly.
            if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(stdout(&out), "got:\n", "stderr: {}", stderr(&out));
}

#[test]
fn concurrent_commands_on_one_id_are_serialized() {
    let Some(env) = setup("concurrent_commands_on_one_id_are_serialized") else {
        return;
    };
    let id = common::unique_id("race");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let bundle = env.bundle_path().to_str().unwrap().to_string();
    // Four creates of one id at once: exactly one wins, the others are told it exists.
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| env.vessel(&["create", "--bundle", &bundle, &id])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "{:?}", outs.iter().map(stderr).collect::<Vec<_>>());
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert!(stderr(o).contains("already exists"), "{}", stderr(o));
    }
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    // Four start + force-delete pairs at once: one start wins or none (if a delete came
    // first); the deletes all succeed; failed starts fail cleanly.
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .flat_map(|_| {
                [
                    s.spawn(|| env.vessel(&["start", &id])),
                    s.spawn(|| env.vessel(&["delete", "--force", &id])),
                ]
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let starts = outs
        .iter()
        .step_by(2)
        .filter(|o| o.status.success())
        .count();
    let deletes = outs
        .iter()
        .skip(1)
        .step_by(2)
        .filter(|o| o.status.success())
        .count();
    assert!(starts <= 1, "{starts} starts succeeded");
    // One delete removes it; like runc, forced deletes of a gone container succeed too.
    assert_eq!(deletes, 4);
    for o in outs.iter().filter(|o| !o.status.success()) {
        let e = stderr(o);
        assert!(
            e.contains("does not exist") || e.contains("cannot start"),
            "unexpected failure: {e}"
        );
    }
    assert!(!env.state_dir(&id).exists());
    assert!(wait_gone(pid));
    assert!(cgroup_dirs(&id).is_empty());
}

#[test]
fn exec_with_a_process_file() {
    let Some(env) = setup("exec_with_a_process_file") else {
        return;
    };
    let id = common::unique_id("pfile");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("run", &["--detach"], &id);
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    let process = serde_json::json!({
        "args": ["sh", "-c", "echo $P; pwd; id -u; grep NoNewPrivs /proc/self/status"],
        "env": ["PATH=/bin", "P=from-file"],
        "cwd": "/etc",
        "user": {"uid": 65534, "gid": 65534},
        "noNewPrivileges": true
    });
    let pf = env.root_path().join("process.json");
    std::fs::write(&pf, process.to_string()).unwrap();
    let pid_file = env.root_path().join("exec.pid");
    let out = env.vessel(&[
        "exec",
        "--process",
        pf.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "from-file\n/etc\n65534\nNoNewPrivs:\t1\n");
    let pid: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid > 0);
    std::fs::remove_file(&pf).unwrap();
    std::fs::remove_file(&pid_file).unwrap();
}

#[test]
fn spec_writes_a_runnable_default_and_features_describe_the_build() {
    let Some(env) = setup("spec_writes_a_runnable_default_and_features_describe_the_build") else {
        return;
    };
    std::fs::remove_file(env.bundle_path().join("config.json")).unwrap();
    let b = env.bundle_path().to_str().unwrap();
    let out = env.vessel(&["spec", "--bundle", b]);
    assert!(out.status.success(), "spec: {}", stderr(&out));
    let out = env.vessel(&["spec", "--bundle", b]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    // The default (terminal: true, sh) runs in the foreground with the pty relayed.
    let path = env.bundle_path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["process"]["terminal"], true);
    v["process"]["args"] = serde_json::json!(["sh", "-c", "echo default-ok; exit 2"]);
    std::fs::write(&path, v.to_string()).unwrap();
    let id = common::unique_id("spec");
    let out = env.vessel_b("run", &[], &id);
    assert_eq!(out.status.code(), Some(2), "run: {}", stderr(&out));
    assert!(stdout(&out).contains("default-ok"), "{}", stdout(&out));

    let out = env.vessel(&["features"]);
    assert!(out.status.success());
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    let ns = f["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.iter().any(|n| n == "time") && ns.iter().any(|n| n == "user"));
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    assert!(f["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "createRuntime"));
    let out = env.vessel(&["--version"]);
    assert!(stdout(&out).starts_with("vessel "), "{}", stdout(&out));
}

#[test]
fn force_delete_of_a_frozen_container() {
    let Some(env) = setup("force_delete_of_a_frozen_container") else {
        return;
    };
    let id = common::unique_id("frozen");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("run", &["--detach"], &id);
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    // Freeze it through its v1 freezer cgroup, as `pause` would.
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let Some(path) = cg
        .lines()
        .find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_string()))
    else {
        common::skip(
            "force_delete_of_a_frozen_container",
            "no v1 freezer hierarchy",
        );
        return;
    };
    let state = format!("/sys/fs/cgroup/freezer{path}/freezer.state");
    std::fs::write(&state, "FROZEN").unwrap();
    let out = env.vessel(&["delete", "--force", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(wait_gone(pid));
    assert!(!env.state_dir(&id).exists());
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
}
