//! Namespaces, id mappings, time offsets and hooks of `vessel` containers, checked from
//! inside and from the host.
mod common;
mod runtime_support;

use std::os::unix::fs::MetadataExt;

use runtime_support::*;
use serde_json::json;

fn ns_ino(pid: &str, ns: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .ino()
}

#[test]
fn new_and_joined_namespaces() {
    let Some(env) = setup("new_and_joined_namespaces") else {
        return;
    };
    let a = common::unique_id("nsa");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("create", &[], &a);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let pa = env.state(&a)["pid"].as_i64().unwrap().to_string();
    for ns in ["pid", "net", "ipc", "uts", "mnt", "cgroup"] {
        assert_ne!(ns_ino(&pa, ns), ns_ino("self", ns), "{ns} not new");
    }
    for ns in ["user", "time"] {
        assert_eq!(ns_ino(&pa, ns), ns_ino("self", ns), "{ns} should be shared");
    }
    // A second container joins a's network and ipc namespaces by path.
    let b = common::unique_id("nsb");
    let mut cfg = env.config_with_args(&["sleep", "1000"]);
    cfg["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "mount"}, {"type": "uts"},
        {"type": "network", "path": format!("/proc/{pa}/ns/net")},
        {"type": "ipc", "path": format!("/proc/{pa}/ns/ipc")},
    ]);
    env.write_config(&cfg);
    let out = env.vessel_b("create", &[], &b);
    assert!(out.status.success(), "create b: {}", stderr(&out));
    let pb = env.state(&b)["pid"].as_i64().unwrap().to_string();
    assert_eq!(ns_ino(&pb, "net"), ns_ino(&pa, "net"));
    assert_eq!(ns_ino(&pb, "ipc"), ns_ino(&pa, "ipc"));
    assert_ne!(ns_ino(&pb, "uts"), ns_ino(&pa, "uts"));
    assert_ne!(ns_ino(&pb, "pid"), ns_ino(&pa, "pid"));
    for id in [&b, &a] {
        let out = env.vessel(&["delete", id]);
        assert!(out.status.success(), "delete {id}: {}", stderr(&out));
        assert!(!env.state_dir(id).exists());
    }
}

#[test]
fn joined_pid_namespace() {
    let Some(env) = setup("joined_pid_namespace") else {
        return;
    };
    let a = common::unique_id("pida");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("run", &["--detach"], &a);
    assert!(out.status.success(), "run a: {}", stderr(&out));
    let pa = env.state(&a)["pid"].as_i64().unwrap().to_string();
    let b = common::unique_id("pidb");
    let mut cfg = env.config_with_args(&["sh", "-c", "echo $$"]);
    cfg["linux"]["namespaces"] = json!([
        {"type": "mount"}, {"type": "uts"},
        {"type": "pid", "path": format!("/proc/{pa}/ns/pid")},
    ]);
    env.write_config(&cfg);
    let out = env.vessel_b("run", &[], &b);
    assert!(out.status.success(), "run b: {}", stderr(&out));
    // Not pid 1: a's sleep is.
    let pid: i64 = stdout(&out).trim().parse().unwrap();
    assert!(pid > 1, "{pid}");
}

#[test]
fn user_namespace_maps_ids() {
    let Some(env) = setup("user_namespace_maps_ids") else {
        return;
    };
    let id = common::unique_id("user");
    let mut cfg = env.config_with_args(&["sh", "-c", "id -u; sleep 1000"]);
    let mut ns = cfg["linux"]["namespaces"].as_array().unwrap().clone();
    ns.push(json!({"type": "user"}));
    cfg["linux"]["namespaces"] = json!(ns);
    cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    env.write_config(&cfg);
    let out = env.vessel_b("create", &[], &id);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let pid = env.state(&id)["pid"].as_i64().unwrap().to_string();
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!(fields, ["0", "200000", "65536"]);
    let gid_map = std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap();
    assert_eq!(
        gid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"]
    );
    assert_ne!(ns_ino(&pid, "user"), ns_ino("self", "user"));
    // Root in the container is uid 200000 on the host.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("200000"),
        "{uid_line}"
    );
    let out = env.vessel(&["exec", &id, "id", "-u"]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "0\n");
    let out = env.vessel(&["delete", "--force", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
}

#[test]
fn time_namespace_offsets() {
    let Some(env) = setup("time_namespace_offsets") else {
        return;
    };
    if !std::path::Path::new("/proc/self/ns/time").exists() {
        common::skip("time_namespace_offsets", "kernel without time namespaces");
        return;
    }
    let id = common::unique_id("time");
    let mut cfg = env.config_with_args(&["sleep", "1000"]);
    let mut ns = cfg["linux"]["namespaces"].as_array().unwrap().clone();
    ns.push(json!({"type": "time"}));
    cfg["linux"]["namespaces"] = json!(ns);
    cfg["linux"]["timeOffsets"] = json!({"monotonic": {"secs": 86400, "nanosecs": 0},
                                         "boottime": {"secs": 172800, "nanosecs": 5}});
    env.write_config(&cfg);
    let out = env.vessel_b("run", &["--detach"], &id);
    assert!(out.status.success(), "run: {}", stderr(&out));
    let pid = env.state(&id)["pid"].as_i64().unwrap().to_string();
    assert_ne!(ns_ino(&pid, "time"), ns_ino("self", "time"));
    let offs = std::fs::read_to_string(format!("/proc/{pid}/timens_offsets")).unwrap();
    assert!(
        offs.contains("monotonic") && offs.contains("86400"),
        "{offs}"
    );
    assert!(
        offs.contains("boottime") && offs.contains("172800"),
        "{offs}"
    );
    let out = env.vessel(&["delete", "--force", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
}

#[test]
fn hooks_run_at_their_points_with_the_state() {
    let Some(env) = setup("hooks_run_at_their_points_with_the_state") else {
        return;
    };
    let id = common::unique_id("hooks");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {d}/{name}.json")]});
    let mut cfg = env.config_with_args(&["sleep", "1000"]);
    // The startContainer hook writes into the container's /tmp.
    cfg["root"]["readonly"] = json!(false);
    cfg["hooks"] = json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "createContainer": [hook("createContainer")],
        // Runs inside the container's root: /tmp there is the bundle's rootfs/tmp.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/startContainer.json"]}],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")],
    });
    env.write_config(&cfg);
    let out = env.vessel_b("create", &[], &id);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"))).unwrap()
    };
    for name in ["prestart", "createRuntime", "createContainer"] {
        let v = read(dir.path().join(format!("{name}.json")));
        assert_eq!(v["id"], id.as_str(), "{name}");
        assert_eq!(v["status"], "creating", "{name}");
        assert_eq!(v["pid"], pid, "{name}");
    }
    assert!(!dir.path().join("poststart.json").exists());
    let out = env.vessel(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    let v = read(dir.path().join("poststart.json"));
    assert_eq!(v["status"], "running");
    let start = env.bundle_path().join("rootfs/tmp/startContainer.json");
    let v = read(start);
    assert_eq!(v["id"], id.as_str());
    assert!(!dir.path().join("poststop.json").exists());
    let out = env.vessel(&["delete", "--force", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    let v = read(dir.path().join("poststop.json"));
    assert_eq!(v["status"], "stopped");
}

#[test]
fn failing_create_hook_fails_create_and_cleans_up() {
    let Some(env) = setup("failing_create_hook_fails_create_and_cleans_up") else {
        return;
    };
    let id = common::unique_id("hookfail");
    let mut cfg = env.config_with_args(&["sleep", "1000"]);
    cfg["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]});
    env.write_config(&cfg);
    let out = env.vessel_b("create", &[], &id);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("hook"), "{}", stderr(&out));
    assert!(!env.state_dir(&id).exists());
    assert!(cgroup_dirs(&id).is_empty());
}

#[test]
fn cgroup_namespace_is_rooted_at_the_containers_cgroup() {
    let Some(env) = setup("cgroup_namespace_is_rooted_at_the_containers_cgroup") else {
        return;
    };
    let id = common::unique_id("cgns");
    let mut cfg = env.config_with_args(&[
        "sh",
        "-c",
        "cat /proc/self/cgroup; echo limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)",
    ]);
    cfg["linux"]["resources"]["memory"] = json!({"limit": 64 * 1024 * 1024});
    env.write_config(&cfg);
    let out = env.vessel_b("run", &[], &id);
    assert!(out.status.success(), "run: {}", stderr(&out));
    let text = stdout(&out);
    // Every hierarchy the container is in shows it at the namespace's root, so the host's
    // cgroup paths stay hidden, and the cgroup mount is the container's own cgroup.
    for line in text.lines().filter(|l| !l.starts_with("limit=")) {
        let path = line.splitn(3, ':').nth(2).unwrap_or("?");
        if line.contains("name=systemd") {
            continue; // not managed by vessel: the caller's own
        }
        assert_eq!(path, "/", "cgroup line {line:?} in\n{text}");
    }
    assert!(text.contains("limit=67108864"), "{text}");
}
