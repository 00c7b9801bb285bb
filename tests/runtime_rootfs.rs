//! What the container sees of its filesystem and process settings, checked from inside;
//! and mount errors refused before anything is created.
mod common;
mod runtime_support;

use runtime_support::*;
use serde_json::json;

const INSIDE: &str = "grep NoNewPrivs /proc/self/status; \
    grep -c . /proc/self/uid_map; \
    grep -q ' /proc .* - proc ' /proc/self/mountinfo && echo proc-mounted; \
    grep ' /sys ' /proc/self/mountinfo | grep -q ' ro,' && echo sys-ro; \
    touch /x 2>/dev/null || echo root-ro; \
    echo data > /dev/null && echo devnull-ok; \
    [ -s /proc/kcore ] || echo kcore-masked; \
    echo 1 > /proc/sys/kernel/ostype 2>/dev/null || echo procsys-ro; \
    [ -e HOSTPATH ] || echo host-hidden; \
    pwd";

#[test]
fn container_view_from_inside() {
    let Some(env) = setup("container_view_from_inside") else {
        return;
    };
    if !rootfs_module() {
        common::skip("container_view_from_inside", "rootfs module not built in");
        return;
    }
    let id = common::unique_id("view");
    // The bundle's host path must not exist inside.
    let script = INSIDE.replace("HOSTPATH", env.bundle_path().to_str().unwrap());
    env.write_config(&env.config_with_args(&["sh", "-c", &script]));
    let out = env.vessel_b("run", &[], &id);
    assert!(out.status.success(), "run: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "NoNewPrivs:\t1\n1\nproc-mounted\nsys-ro\nroot-ro\ndevnull-ok\nkcore-masked\n\
         procsys-ro\nhost-hidden\n/\n"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(env.bundle_path().to_str().unwrap()),
        "mount leaked to host"
    );
}

#[test]
fn no_pivot_runs_with_chroot() {
    let Some(env) = setup("no_pivot_runs_with_chroot") else {
        return;
    };
    if !rootfs_module() {
        common::skip("no_pivot_runs_with_chroot", "rootfs module not built in");
        return;
    }
    let id = common::unique_id("nopivot");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("run", &["--detach", "--no-pivot"], &id);
    assert!(out.status.success(), "run: {}", stderr(&out));
    // exec lands in the container's root too (not the mount namespace's root).
    let out = env.vessel(&[
        "exec",
        &id,
        "sh",
        "-c",
        "[ -x /bin/busybox ] && ls /proc/1/exe >/dev/null && hostname",
    ]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "vessel\n");
    let out = env.vessel(&["delete", "--force", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(!env.state_dir(&id).exists());
}

#[test]
fn bad_mounts_are_refused_before_create() {
    let Some(env) = setup("bad_mounts_are_refused_before_create") else {
        return;
    };
    if !rootfs_module() {
        common::skip(
            "bad_mounts_are_refused_before_create",
            "rootfs module not built in",
        );
        return;
    }
    for (dest, needle) in [("relative/target", "relative/target"), ("", "destination")] {
        let id = common::unique_id("badmnt");
        let mut cfg = base_config();
        let mut mounts = cfg["mounts"].as_array().unwrap().clone();
        mounts.push(json!({"destination": dest, "type": "tmpfs", "source": "tmpfs"}));
        cfg["mounts"] = json!(mounts);
        env.write_config(&cfg);
        let out = env.vessel_b("create", &[], &id);
        assert_eq!(out.status.code(), Some(1), "{dest:?} accepted");
        assert!(stderr(&out).contains(needle), "{dest:?}: {}", stderr(&out));
        assert!(!env.state_dir(&id).exists());
        assert!(cgroup_dirs(&id).is_empty());
    }
}

#[test]
fn escaping_mount_target_stays_inside_the_rootfs() {
    let Some(env) = setup("escaping_mount_target_stays_inside_the_rootfs") else {
        return;
    };
    if !rootfs_module() {
        common::skip(
            "escaping_mount_target_stays_inside_the_rootfs",
            "rootfs module not built in",
        );
        return;
    }
    // A symlink in the rootfs pointing out of it, and a `..` path: both must resolve
    // inside the rootfs (or be refused), never mount over a host path.
    let host_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(host_dir.path(), env.bundle_path().join("rootfs/escape")).unwrap();
    let id = common::unique_id("esc");
    let mut cfg = env.config_with_args(&["sh", "-c", "echo inside > /escape/file; echo ok"]);
    cfg["root"]["readonly"] = json!(false);
    let mut mounts = cfg["mounts"].as_array().unwrap().clone();
    mounts.push(json!({"destination": "/escape", "type": "tmpfs", "source": "tmpfs"}));
    mounts.push(
        json!({"destination": "/../../../../tmp/dotdot", "type": "tmpfs", "source": "tmpfs"}),
    );
    cfg["mounts"] = json!(mounts);
    env.write_config(&cfg);
    let out = env.vessel_b("run", &[], &id);
    // Either refused or contained: never a mount or a file on the host directory.
    assert!(
        std::fs::read_dir(host_dir.path()).unwrap().next().is_none(),
        "wrote through the symlink to the host: {}",
        stdout(&out)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(host_dir.path().to_str().unwrap()));
    assert!(!mounts.contains("/tmp/dotdot"));
    assert!(!env.state_dir(&id).exists());
}
