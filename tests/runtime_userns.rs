//! User namespaces, id maps, id-mapped mounts, rootless mode and nesting of `vessel`
//! containers, checked from inside the container and on the host's disk.
mod common;
mod runtime_support;

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use runtime_support::*;
use serde_json::{json, Value};

/// Host uid/gid the container's root maps to in these tests.
const BASE: u32 = 100000;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A config running `script` with `sh -c` in a new user namespace mapping 0.. to
/// BASE.. (65536 ids).
fn userns_config(env: &Env, script: &str) -> Value {
    // The container's root (host BASE) must be able to enter the bundle directory.
    chmod(env.bundle_path(), 0o755);
    let mut cfg = env.config_with_args(&["sh", "-c", script]);
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 65536}]);
    cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 65536}]);
    cfg
}

/// Adds a mount, creating its mount point in the image first: the container's root
/// (host BASE) may not create it in a directory owned by host root.
fn add_mount(cfg: &mut Value, m: Value) {
    cfg["mounts"].as_array_mut().unwrap().push(m);
}

fn mount_point(env: &Env, dst: &str, file: bool) {
    let p = env
        .bundle_path()
        .join("rootfs")
        .join(dst.trim_start_matches('/'));
    if file {
        std::fs::write(p, b"").unwrap();
    } else {
        std::fs::create_dir_all(p).unwrap();
    }
}

/// A host directory for bind mounts, inside the test's bundle dir (removed with it).
fn host_dir(env: &Env, name: &str, mode: u32) -> PathBuf {
    let d = env.bundle_path().join(name);
    std::fs::create_dir(&d).unwrap();
    chmod(&d, mode);
    d
}

fn run(env: &Env, id: &str) -> Output {
    env.vessel_b("run", &[], id)
}

fn run_ok(env: &Env, id: &str) -> String {
    let out = run(env, id);
    assert!(
        out.status.success(),
        "run: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

fn fields(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

/// Lines of our mount table that mention `needle`.
fn mounts_mentioning(needle: &Path) -> Vec<String> {
    let n = needle.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&n))
        .map(String::from)
        .collect()
}

#[test]
fn several_ranges_are_mapped_as_written() {
    let Some(env) = setup("several_ranges_are_mapped_as_written") else {
        return;
    };
    let mut cfg = userns_config(
        &env,
        "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; echo --; id -u",
    );
    cfg["linux"]["uidMappings"] = json!([
        {"containerID": 0, "hostID": BASE, "size": 1000},
        {"containerID": 1000, "hostID": 300000, "size": 64536}
    ]);
    cfg["linux"]["gidMappings"] = json!([
        {"containerID": 0, "hostID": 400000, "size": 10},
        {"containerID": 10, "hostID": BASE + 10, "size": 65526}
    ]);
    env.write_config(&cfg);
    let out = run_ok(&env, &common::unique_id("maps"));
    let parts: Vec<&str> = out.split("--").collect();
    assert_eq!(
        fields(parts[0]),
        ["0", "100000", "1000", "1000", "300000", "64536"]
    );
    assert_eq!(
        fields(parts[1]),
        ["0", "400000", "10", "10", "100010", "65526"]
    );
    assert_eq!(parts[2].trim(), "0");
}

#[test]
fn container_root_cannot_read_a_host_root_only_file() {
    let Some(env) = setup("container_root_cannot_read_a_host_root_only_file") else {
        return;
    };
    let dir = host_dir(&env, "secret", 0o755);
    let file = dir.join("f");
    std::fs::write(&file, "host-secret").unwrap();
    chmod(&file, 0o600);
    mount_point(&env, "/secret", true);
    let mut cfg = userns_config(
        &env,
        "stat -c %u:%g /secret; cat /secret 2>/dev/null && echo READ || echo DENIED",
    );
    add_mount(
        &mut cfg,
        json!({"destination": "/secret", "type": "bind", "source": file, "options": ["bind", "ro"]}),
    );
    env.write_config(&cfg);
    let out = run_ok(&env, &common::unique_id("secret"));
    // Host root is unmapped: the overflow id, and no DAC override over it.
    assert_eq!(fields(&out), ["65534:65534", "DENIED"], "{out}");
}

#[test]
fn file_created_on_a_plain_bind_is_owned_by_the_mapped_host_uid() {
    let Some(env) = setup("file_created_on_a_plain_bind_is_owned_by_the_mapped_host_uid") else {
        return;
    };
    let dir = host_dir(&env, "plain", 0o777);
    mount_point(&env, "/data", false);
    let mut cfg = userns_config(&env, "touch /data/made && stat -c %u:%g /data/made");
    add_mount(
        &mut cfg,
        json!({"destination": "/data", "type": "bind", "source": dir, "options": ["bind"]}),
    );
    env.write_config(&cfg);
    let out = run_ok(&env, &common::unique_id("plain"));
    assert_eq!(out.trim(), "0:0");
    let md = std::fs::metadata(dir.join("made")).unwrap();
    assert_eq!((md.uid(), md.gid()), (BASE, BASE));
}

#[test]
fn idmapped_bind_shows_disk_owners_and_writes_unmapped_ones() {
    let Some(env) = setup("idmapped_bind_shows_disk_owners_and_writes_unmapped_ones") else {
        return;
    };
    // Owned by host root, readable by its owner only.
    let dir = host_dir(&env, "idm", 0o755);
    std::fs::write(dir.join("f"), "owned-by-0").unwrap();
    chmod(&dir.join("f"), 0o600);
    // A second tree whose files belong to uid/gid 1000 on disk, for mount-level mappings.
    let dir2 = host_dir(&env, "idm2", 0o755);
    std::fs::write(dir2.join("g"), "x").unwrap();
    chown(dir2.join("g"), Some(1000), Some(1000)).unwrap();
    mount_point(&env, "/idm", false);
    mount_point(&env, "/idm2", false);
    mount_point(&env, "/idmro", false);
    let mut cfg = userns_config(
        &env,
        "stat -c %u:%g /idm/f; cat /idm/f; echo; touch /idm/made; stat -c %u:%g /idm/made; \
         stat -c %u:%g /idm2/g; touch /idmro/x 2>/dev/null && echo RW || echo RO; \
         stat -c %u /idmro/f",
    );
    // Id-mapped and read-only: the mount's attributes apply on top of the id map.
    add_mount(
        &mut cfg,
        json!({"destination": "/idmro", "type": "bind", "source": dir, "options": ["bind", "idmap", "ro"]}),
    );
    // `idmap` alone: the container's own mapping (disk 0 = container 0).
    add_mount(
        &mut cfg,
        json!({"destination": "/idm", "type": "bind", "source": dir, "options": ["bind", "idmap"]}),
    );
    // Mount-level mappings: disk 1000 shown as host BASE+5 = container 5.
    add_mount(
        &mut cfg,
        json!({
            "destination": "/idm2", "type": "bind", "source": dir2, "options": ["bind"],
            "uidMappings": [{"containerID": 1000, "hostID": BASE + 5, "size": 1}],
            "gidMappings": [{"containerID": 1000, "hostID": BASE + 7, "size": 1}]
        }),
    );
    env.write_config(&cfg);
    let out = run_ok(&env, &common::unique_id("idm"));
    assert_eq!(
        fields(&out),
        ["0:0", "owned-by-0", "0:0", "5:7", "RO", "0"],
        "inside: {out}"
    );
    // Written by container root (host BASE) through the mount: owner 0 on disk.
    let md = std::fs::metadata(dir.join("made")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}

#[test]
fn idmapped_rootfs_shows_an_image_owned_by_0_as_container_root() {
    let Some(env) = setup("idmapped_rootfs_shows_an_image_owned_by_0_as_container_root") else {
        return;
    };
    let script =
        "stat -c %u:%g /; touch /by-root 2>/dev/null && stat -c %u /by-root || echo DENIED";
    let mut cfg = userns_config(&env, script);
    cfg["root"]["readonly"] = json!(false);
    // Without the annotation, the image's owner (host 0) is unmapped inside.
    env.write_config(&cfg);
    let out = run_ok(&env, &common::unique_id("rootfs"));
    assert_eq!(fields(&out), ["65534:65534", "DENIED"], "{out}");
    let rootfs = env.bundle_path().join("rootfs");
    assert!(!rootfs.join("by-root").exists());

    cfg["annotations"] = json!({"run.oci.vessel.rootfs-idmap": "true"});
    env.write_config(&cfg);
    let out = run_ok(&env, &common::unique_id("rootfs"));
    assert_eq!(fields(&out), ["0:0", "0"], "{out}");
    // On disk the image is still owned by 0, and so is the file container root made.
    assert_eq!(std::fs::metadata(&rootfs).unwrap().uid(), 0);
    let md = std::fs::metadata(rootfs.join("by-root")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}

/// Runs `create` with a bad config: it must fail naming `want`, leave no state directory
/// and no mount of the bundle behind.
fn refused(env: &Env, cfg: &Value, want: &str) {
    env.write_config(cfg);
    let id = common::unique_id("bad");
    let out = env.vessel_b("create", &[], &id);
    let err = stderr(&out);
    assert!(!out.status.success(), "create succeeded with {cfg}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
    assert!(!env.state_dir(&id).exists(), "state left behind");
    assert!(
        mounts_mentioning(env.bundle_path()).is_empty(),
        "mounts left behind: {:?}",
        mounts_mentioning(env.bundle_path())
    );
}

#[test]
fn bad_user_namespace_input_is_refused_cleanly() {
    let Some(env) = setup("bad_user_namespace_input_is_refused_cleanly") else {
        return;
    };
    let base = userns_config(&env, "true");

    let mut c = base.clone();
    c["linux"]["uidMappings"] = json!([
        {"containerID": 0, "hostID": BASE, "size": 10},
        {"containerID": 5, "hostID": 200000, "size": 10}
    ]);
    refused(&env, &c, "overlap on the container side");

    let mut c = base.clone();
    c["linux"]["gidMappings"] = json!([
        {"containerID": 0, "hostID": BASE, "size": 10},
        {"containerID": 20, "hostID": BASE + 5, "size": 10}
    ]);
    refused(&env, &c, "overlap on the host side");

    let mut c = env.config_with_args(&["true"]);
    c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 1}]);
    c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 1}]);
    refused(&env, &c, "need a new user namespace");

    let mut c = base.clone();
    add_mount(
        &mut c,
        json!({"destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"]}),
    );
    refused(&env, &c, "only supported for bind mounts");

    let dir = host_dir(&env, "noidmap", 0o755);
    let mut c = env.config_with_args(&["true"]);
    add_mount(
        &mut c,
        json!({"destination": "/d", "type": "bind", "source": dir, "options": ["bind", "idmap"]}),
    );
    refused(&env, &c, "no new user namespace");

    // procfs does not support idmapped mounts.
    let mut c = base.clone();
    add_mount(
        &mut c,
        json!({"destination": "/p", "type": "bind", "source": "/proc", "options": ["rbind", "idmap"]}),
    );
    refused(&env, &c, "does not support idmapped mounts");

    let mut c = base.clone();
    add_mount(
        &mut c,
        json!({
            "destination": "/d", "type": "bind", "source": dir, "options": ["bind"],
            "uidMappings": [{"containerID": 0, "hostID": BASE, "size": 1}]
        }),
    );
    refused(
        &env,
        &c,
        "uidMappings and gidMappings must be given together",
    );
}

/// A user created for the test, deleted on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn create(name: &str) -> Option<TestUser> {
        let st = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", name])
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, name]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        Some(TestUser {
            name: name.to_string(),
            uid: id("-u"),
            gid: id("-g"),
        })
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// The fixture config turned rootless the way `vessel spec --rootless` does it.
fn rootless_config(base: &Value, uid: u32, gid: u32) -> Value {
    let mut cfg = base.clone();
    let ns: Vec<Value> = cfg["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "network")
        .cloned()
        .chain([json!({"type": "user"})])
        .collect();
    cfg["linux"]["namespaces"] = json!(ns);
    cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
    cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
    cfg["linux"].as_object_mut().unwrap().remove("resources");
    let mounts: Vec<Value> = cfg["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] != "cgroup")
        .map(|m| {
            let mut m = m.clone();
            if m["destination"] == "/sys" {
                m = json!({"destination": "/sys", "type": "none", "source": "/sys",
                           "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
            }
            if let Some(o) = m["options"].as_array_mut() {
                o.retain(|x| {
                    !x.as_str()
                        .is_some_and(|s| s.starts_with("gid=") || s.starts_with("uid="))
                });
            }
            m
        })
        .collect();
    cfg["mounts"] = json!(mounts);
    cfg
}

/// An unprivileged user with a private copy of the bundle it owns and a private
/// `XDG_RUNTIME_DIR`; everything goes away on drop (containers first, then the user).
struct Rootless {
    user: TestUser,
    home: tempfile::TempDir,
    ids: std::cell::RefCell<Vec<String>>,
}

impl Rootless {
    fn setup(test: &str, env: &Env) -> Option<Rootless> {
        if Command::new("setpriv").arg("--version").output().is_err() {
            common::skip(test, "setpriv (util-linux) missing");
            return None;
        }
        let name = common::unique_id("vsl");
        let Some(user) = TestUser::create(&name) else {
            common::skip(test, "useradd failed (package passwd)");
            return None;
        };
        let home = tempfile::Builder::new()
            .prefix("vessel-rootless-")
            .tempdir()
            .unwrap();
        chmod(home.path(), 0o755);
        let r = Rootless {
            user,
            home,
            ids: Default::default(),
        };
        std::fs::create_dir(r.bundle()).unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(env.bundle_path().join("rootfs"))
            .arg(r.bundle())
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::create_dir(r.xdg()).unwrap();
        chmod(&r.xdg(), 0o700);
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", r.user.uid, r.user.gid))
            .arg(r.bundle())
            .arg(r.xdg())
            .status()
            .unwrap();
        assert!(st.success());
        Some(r)
    }

    fn bundle(&self) -> PathBuf {
        self.home.path().join("bundle")
    }

    fn xdg(&self) -> PathBuf {
        self.home.path().join("xdg")
    }

    fn write_config(&self, cfg: &Value) {
        let p = self.bundle().join("config.json");
        std::fs::write(&p, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
        chown(&p, Some(self.user.uid), Some(self.user.gid)).unwrap();
    }

    /// Runs `vessel args…` as the user.
    fn vessel(&self, args: &[&str]) -> Output {
        if args.first().is_some_and(|a| *a == "run" || *a == "create") {
            self.ids.borrow_mut().push(args[args.len() - 1].to_string());
        }
        run_captured(
            Command::new("setpriv")
                .arg(format!("--reuid={}", self.user.uid))
                .arg(format!("--regid={}", self.user.gid))
                .arg("--clear-groups")
                .arg(vessel_bin())
                .args(args)
                .env("XDG_RUNTIME_DIR", self.xdg())
                .current_dir(self.bundle())
                .stdin(Stdio::null()),
        )
    }
}

impl Drop for Rootless {
    fn drop(&mut self) {
        let ids = self.ids.borrow().clone();
        for id in ids {
            let _ = self.vessel(&["delete", "--force", &id]);
        }
    }
}

#[test]
fn rootless_lifecycle_as_an_unprivileged_user() {
    let test = "rootless_lifecycle_as_an_unprivileged_user";
    let Some(env) = setup(test) else {
        return;
    };
    let Some(r) = Rootless::setup(test, &env) else {
        return;
    };
    let (uid, gid) = (r.user.uid, r.user.gid);
    let mut cfg = rootless_config(&base_config(), uid, gid);
    cfg["process"]["args"] = json!(["sleep", "1000"]);
    // A network namespace of its own (owned by the user namespace): only `lo` in it.
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "network"}));
    // With its own network namespace the container may mount a sysfs of its own (instead
    // of the host's, bound read-only), which shows only the container's devices.
    for m in cfg["mounts"].as_array_mut().unwrap() {
        if m["destination"] == "/sys" {
            *m = json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                        "options": ["nosuid", "noexec", "nodev", "ro"]});
        }
    }
    r.write_config(&cfg);
    let xdg = r.xdg();
    let id = common::unique_id("rootless");
    let b = r.bundle();
    let b = b.to_str().unwrap();
    let out = r.vessel(&["run", "--detach", "--bundle", b, &id]);
    assert!(out.status.success(), "run: {}", stderr(&out));
    assert!(
        stderr(&out).contains("cgroups are not delegated"),
        "no cgroup warning: {}",
        stderr(&out)
    );
    // State lives under $XDG_RUNTIME_DIR/vessel.
    assert!(xdg.join("vessel").join(&id).join("state.json").exists());
    let out = r.vessel(&["state", &id]);
    assert!(out.status.success(), "state: {}", stderr(&out));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["status"], "running", "{st}");
    let pid = st["pid"].as_i64().unwrap();
    // The init runs as the user on the host.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(uid.to_string().as_str())
    );

    let out = r.vessel(&[
        "exec",
        &id,
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map /proc/self/setgroups; ls /sys/class/net; \
         [ -c /dev/null ] && echo x > /dev/null && stat -c %t:%T /dev/null",
    ]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    // A self-map, written directly, with setgroups denied as the kernel requires; no host
    // network devices; /dev/null (bound from the host: no mknod in a user namespace) works.
    assert_eq!(
        fields(&stdout(&out)),
        ["0", "0", &uid.to_string(), "1", "deny", "lo", "1:3"]
    );

    let out = r.vessel(&["kill", &id, "KILL"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    assert!(wait_gone(pid), "init {pid} still alive after kill");
    let out = r.vessel(&["delete", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(!xdg.join("vessel").join(&id).exists());
}

#[test]
fn rootless_spec_maps_subordinate_ids_through_newuidmap() {
    let test = "rootless_spec_maps_subordinate_ids_through_newuidmap";
    let Some(env) = setup(test) else {
        return;
    };
    if !Path::new("/usr/bin/newuidmap").exists() {
        common::skip(test, "newuidmap missing (Debian package uidmap)");
        return;
    }
    let Some(r) = Rootless::setup(test, &env) else {
        return;
    };
    let sub = |file: &str| -> Option<(String, String)> {
        let t = std::fs::read_to_string(file).ok()?;
        let l = t
            .lines()
            .find(|l| l.starts_with(&format!("{}:", r.user.name)))?;
        let f: Vec<&str> = l.split(':').collect();
        Some((f[1].to_string(), f[2].to_string()))
    };
    let (Some((us, uc)), Some((gs, gc))) = (sub("/etc/subuid"), sub("/etc/subgid")) else {
        common::skip(test, "useradd gave the user no /etc/subuid range");
        return;
    };
    // `vessel spec --rootless` as the user, run as written but for the process.
    let out = r.vessel(&["spec", "--rootless"]);
    assert!(out.status.success(), "spec: {}", stderr(&out));
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(r.bundle().join("config.json")).unwrap()).unwrap();
    std::fs::remove_file(r.bundle().join("config.json")).unwrap();
    cfg["process"]["terminal"] = json!(false);
    // CAP_CHOWN so container root can hand a file to container uid 1000.
    for set in ["bounding", "effective", "permitted"] {
        cfg["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_CHOWN"));
    }
    cfg["process"]["args"] = json!([
        "sh",
        "-c",
        "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; echo --; \
         touch /dev/shm/x && chown 1000:1000 /dev/shm/x && stat -c %u:%g /dev/shm/x"
    ]);
    r.write_config(&cfg);
    let id = common::unique_id("rlspec");
    let out = r.vessel(&["run", &id]);
    assert!(out.status.success(), "run: {}", stderr(&out));
    let text = stdout(&out);
    let parts: Vec<&str> = text.split("--").collect();
    let (uid, gid) = (r.user.uid.to_string(), r.user.gid.to_string());
    assert_eq!(fields(parts[0]), ["0", &uid, "1", "1", &us, &uc], "{text}");
    assert_eq!(fields(parts[1]), ["0", &gid, "1", "1", &gs, &gc], "{text}");
    // Container uid 1000 exists: it is subordinate id start+999 on the host.
    assert_eq!(parts[2].trim(), "1000:1000", "{text}");
}

#[test]
fn rootless_without_user_namespace_is_refused() {
    let test = "rootless_without_user_namespace_is_refused";
    let Some(env) = setup(test) else {
        return;
    };
    // `nobody` exists on every Debian system; the check fails before anything is made.
    let xdg = tempfile::tempdir().unwrap();
    chmod(xdg.path(), 0o777);
    chmod(env.bundle_path(), 0o755);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(vessel_bin())
        .args(["create", "--bundle"])
        .arg(env.bundle_path())
        .arg(common::unique_id("nouserns"))
        .env("XDG_RUNTIME_DIR", xdg.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs a new user namespace"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read_dir(xdg.path().join("vessel"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
    // Without XDG_RUNTIME_DIR and --root, a non-root user gets a clear error.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(vessel_bin())
        .arg("list")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("XDG_RUNTIME_DIR"), "{}", stderr(&out));
}

#[test]
fn nested_vessel_runs_a_container_inside_a_container() {
    let test = "nested_vessel_runs_a_container_inside_a_container";
    let Some(env) = setup(test) else {
        return;
    };
    let rootfs = env.bundle_path().join("rootfs");
    // Mount points for the host's libraries (the binary is dynamically linked), the
    // vessel binary and the inner bundle; created on the private copy of the image.
    for d in ["usr/lib", "usr/lib64", "vessel", "inner"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("vessel/vessel"), b"").unwrap();
    for (l, t) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        if !rootfs.join(l).exists() {
            std::os::unix::fs::symlink(t, rootfs.join(l)).unwrap();
        }
    }
    // The inner bundle: another copy of the busybox image, whose container prints its
    // hostname. No device cgroup rules: only host root may write them (v1 devices).
    let inner = env.bundle_path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    chmod(&inner, 0o755);
    let st = Command::new("cp")
        .arg("-a")
        .arg(common::fixtures().join("bundle/rootfs"))
        .arg(&inner)
        .status()
        .unwrap();
    assert!(st.success());
    let mut icfg = base_config();
    icfg["process"]["args"] = json!(["sh", "-c", "hostname; grep :pids: /proc/self/cgroup"]);
    // No cgroup namespace: the inner container sees where the inner runtime put it.
    let ns: Vec<Value> = icfg["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "cgroup")
        .cloned()
        .collect();
    icfg["linux"]["namespaces"] = json!(ns);
    icfg["hostname"] = json!("inner-vessel");
    icfg["linux"].as_object_mut().unwrap().remove("resources");
    std::fs::write(
        inner.join("config.json"),
        serde_json::to_vec_pretty(&icfg).unwrap(),
    )
    .unwrap();

    let vessel = vessel_bin();
    let mut cfg = userns_config(
        &env,
        "/vessel/vessel --root /run/vessel run --bundle /inner inner-1",
    );
    cfg["hostname"] = json!("outer-vessel");
    // Root of the outer container needs its capabilities (in its user namespace) to create
    // the inner one.
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_ADMIN",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_ADMIN",
        "CAP_SYS_RESOURCE",
        "CAP_MKNOD",
        "CAP_AUDIT_WRITE",
        "CAP_SETFCAP"
    ]);
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        cfg["process"]["capabilities"][set] = caps.clone();
    }
    // The inner runtime mounts its own proc and sysfs: the kernel allows that only where
    // they are fully visible, so the outer container masks nothing.
    cfg["linux"]["maskedPaths"] = json!([]);
    cfg["linux"]["readonlyPaths"] = json!([]);
    cfg["linux"].as_object_mut().unwrap().remove("resources");
    let mounts: Vec<Value> = cfg["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m["type"] == "cgroup" {
                // Writable: the runtime delegates the container's cgroup to its root.
                m["options"] = json!(["nosuid", "noexec", "nodev", "relatime", "rw"]);
            }
            m
        })
        .collect();
    cfg["mounts"] = json!(mounts);
    for (dst, src) in [
        ("/usr/lib", PathBuf::from("/usr/lib")),
        ("/usr/lib64", PathBuf::from("/usr/lib64")),
        ("/vessel/vessel", vessel.clone()),
        ("/inner", inner.clone()),
    ] {
        add_mount(
            &mut cfg,
            json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]}),
        );
    }
    add_mount(
        &mut cfg,
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]}),
    );
    env.write_config(&cfg);
    let out = env.vessel_b("run", &[], &common::unique_id("outer"));
    assert!(
        out.status.success(),
        "outer run: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    // The inner runtime could make its container's cgroup below the outer container's,
    // which was delegated to the outer root: no "not delegated" warning, and the inner
    // container sits in vessel/inner-1 relative to the outer cgroup namespace.
    assert!(
        !stderr(&out).contains("not delegated"),
        "inner runtime skipped cgroups: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], "inner-vessel");
    assert!(lines[1].ends_with(":pids:/vessel/inner-1"), "{text}");
}
