//! Bad input to `vessel`: each case must fail with a clear message, a non-zero exit, and
//! leave nothing behind.
mod common;
mod runtime_support;

use runtime_support::*;
use serde_json::json;

/// Runs `create` on `cfg` (raw bytes), expects failure mentioning `needle`, and checks
/// nothing was left.
fn refused(env: &Env, cfg: &[u8], needle: &str) {
    std::fs::write(env.bundle_path().join("config.json"), cfg).unwrap();
    let id = common::unique_id("bad");
    let out = env.vessel_b("create", &[], &id);
    assert_eq!(out.status.code(), Some(1), "stdout {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert!(!env.state_dir(&id).exists(), "state left for {needle}");
    assert!(cgroup_dirs(&id).is_empty(), "cgroup left for {needle}");
}

#[test]
fn bad_configs_are_refused() {
    let Some(env) = setup("bad_configs_are_refused") else {
        return;
    };
    refused(&env, b"{\"ociVersion\": \"1.0.2\", ", "parse");
    let mut v = base_config();
    v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "bogus"}]);
    refused(&env, &serde_json::to_vec(&v).unwrap(), "bogus");
    let mut v = base_config();
    v["frobnicate"] = json!(true);
    refused(
        &env,
        &serde_json::to_vec(&v).unwrap(),
        "unknown key \"frobnicate\"",
    );
    let mut v = base_config();
    v["linux"]["intelRdt"] = json!({"closID": "x"});
    refused(
        &env,
        &serde_json::to_vec(&v).unwrap(),
        "unsupported: linux.intelRdt",
    );
    let mut v = base_config();
    v["root"]["path"] = json!("no-such-rootfs");
    refused(&env, &serde_json::to_vec(&v).unwrap(), "no-such-rootfs");
    let mut v = base_config();
    v["process"]["args"] = json!(["no-such-program"]);
    refused(
        &env,
        &serde_json::to_vec(&v).unwrap(),
        "\"no-such-program\" not found",
    );
    let mut v = base_config();
    v["process"]["terminal"] = json!(true);
    refused(&env, &serde_json::to_vec(&v).unwrap(), "console-socket");
    let mut v = base_config();
    v["linux"]["namespaces"] = json!([{"type": "network", "path": "/no/such/ns"}, {"type": "uts"}]);
    refused(&env, &serde_json::to_vec(&v).unwrap(), "/no/such/ns");
    let mut v = base_config();
    v["linux"]["resources"] = json!({"memory": {"limit": -5}});
    refused(&env, &serde_json::to_vec(&v).unwrap(), "memory");
    let mut v = base_config();
    v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
    refused(&env, &serde_json::to_vec(&v).unwrap(), "new user namespace");
    std::fs::remove_file(env.bundle_path().join("config.json")).unwrap();
    let id = common::unique_id("bad");
    let out = env.vessel_b("create", &[], &id);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config.json"), "{}", stderr(&out));
    assert!(!env.state_dir(&id).exists());
}

#[test]
fn invalid_ids_are_refused() {
    let Some(env) = setup("invalid_ids_are_refused") else {
        return;
    };
    for id in ["../escape", "a/b", ".hidden"] {
        let out = env.vessel_b("create", &[], id);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("invalid container id"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read_dir(env.root_path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn state_errors() {
    let Some(env) = setup("state_errors") else {
        return;
    };
    let id = common::unique_id("st");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    // Unknown container.
    for args in [
        vec!["state", "nope"],
        vec!["start", "nope"],
        vec!["kill", "nope", "KILL"],
        vec!["delete", "nope"],
        vec!["exec", "nope", "true"],
        vec!["ps", "nope"],
    ] {
        let out = env.vessel(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("\"nope\" does not exist"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Like runc, a forced delete of a missing container succeeds.
    let out = env.vessel(&["delete", "--force", "nope"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.vessel_b("run", &["--detach"], &id);
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    // Duplicate id: refused, the first container untouched.
    let out = env.vessel_b("create", &[], &id);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "running");
    // Start of a running container.
    let out = env.vessel(&["start", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot start"), "{}", stderr(&out));
    // Delete of a running container without --force.
    let out = env.vessel(&["delete", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("it is running"), "{}", stderr(&out));
    assert_eq!(env.state(&id)["status"], "running");
    // Bad signal.
    let out = env.vessel(&["kill", &id, "SIGNOPE"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown signal"), "{}", stderr(&out));
    // Exec of a missing program fails and leaves no process.
    let out = env.vessel(&["exec", &id, "no-such-program"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let pids: Vec<i64> =
        serde_json::from_slice(&env.vessel(&["ps", "--format", "json", &id]).stdout).unwrap();
    assert_eq!(pids.len(), 1, "{pids:?}");
    // Force delete works; stopped containers refuse start/kill/exec.
    let out = env.vessel(&["kill", &id, "KILL"]);
    assert!(out.status.success());
    env.wait_status(&id, "stopped");
    for args in [
        vec!["start", &id],
        vec!["kill", &id, "KILL"],
        vec!["exec", &id, "true"],
    ] {
        let out = env.vessel(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("stopped"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Like runc, `kill --all` of a stopped container succeeds (containerd's shim runs it
    // before a forced delete).
    let out = env.vessel(&["kill", "--all", &id, "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.vessel(&["delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!env.state_dir(&id).exists());
}

#[test]
fn systemd_cgroup_is_refused_clearly() {
    let Some(env) = setup("systemd_cgroup_is_refused_clearly") else {
        return;
    };
    let out = env.vessel(&["--systemd-cgroup", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("systemd"), "{}", stderr(&out));
}

#[test]
fn json_log_lines_for_errors() {
    let Some(env) = setup("json_log_lines_for_errors") else {
        return;
    };
    let log = env.root_path().join("vessel.log");
    let out = env.vessel(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("does not exist"));
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    std::fs::remove_file(&log).unwrap();
}

#[test]
fn delete_cleans_a_half_made_container() {
    let Some(env) = setup("delete_cleans_a_half_made_container") else {
        return;
    };
    // What a `vessel create` killed before saving its state leaves: a bare directory.
    let id = common::unique_id("half");
    std::fs::create_dir_all(env.state_dir(&id)).unwrap();
    let out = env.vessel_b("create", &[], &id);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = env.vessel(&["delete", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(!env.state_dir(&id).exists());
    env.write_config(&env.config_with_args(&["true"]));
    let out = env.vessel_b("run", &[], &id);
    assert!(out.status.success(), "run after cleanup: {}", stderr(&out));
}
