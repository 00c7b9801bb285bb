//! Tests that really build a rootfs: each one forks a child, which enters
//! fresh namespaces (never the test harness process itself), copies of the
//! busybox fixture rootfs are prepared there, and the child checks the
//! result from inside, reporting through a pipe and its exit status.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{major, minor};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A temp dir holding a private copy of the busybox rootfs.
struct Bundle {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
}

impl Bundle {
    fn new() -> Option<Bundle> {
        let src = fixtures().join(".cache/busybox/rootfs");
        if !src.join("bin/busybox").exists() {
            skip_test!("busybox fixture missing (run fixtures/busybox.sh)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("vessel-rootfs-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let _guard = FORK.lock().unwrap_or_else(|e| e.into_inner());
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(dir.path().join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success(), "cp -a rootfs failed");
        let rootfs = dir.path().join("rootfs").canonicalize().unwrap();
        Some(Bundle { dir, rootfs })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The fixture config.json as JSON, for tests to tweak.
fn fixture_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("config.json")).unwrap()).unwrap()
}

fn spec_of(v: &Value) -> Spec {
    serde_json::from_value(v.clone()).unwrap()
}

fn host_mounts_mentioning(p: &Path) -> Vec<String> {
    let needle = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Held while forking and while spawning `cp`, so no other test thread is
/// inside a std lock the child could later need.
static FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Longest a child may take before it is killed (a hang safety net, not a
/// timing assertion).
const CHILD_DEADLINE_MS: i32 = 120_000;

/// Run `f` in a forked child after `unshare(CLONE_NEWNS | flags)`.
/// `Err` carries the child's message (or how it died). Children must not
/// panic (another thread may hold the panic machinery's lock at fork time);
/// checks return `Err` instead.
fn in_child(flags: CloneFlags, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let guard = FORK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the child only runs the closure and then _exits; it never
    // returns into the test harness.
    let forked = unsafe { fork() }.unwrap();
    drop(guard);
    match forked {
        ForkResult::Child => {
            drop(rd);
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                unshare(CloneFlags::CLONE_NEWNS | flags).map_err(|e| format!("unshare: {e}"))?;
                f()
            }));
            let (code, msg) = match res {
                Ok(Ok(())) => (0, String::new()),
                Ok(Err(m)) => (1, m),
                Err(_) => (2, "child panicked".to_string()),
            };
            let _ = nix::unistd::write(&wr, msg.as_bytes());
            // SAFETY: _exit is always safe; it skips the harness' atexit state.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut pfd = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&rd),
                nix::poll::PollFlags::POLLIN,
            )];
            let ready = nix::poll::poll(
                &mut pfd,
                nix::poll::PollTimeout::try_from(CHILD_DEADLINE_MS).unwrap(),
            );
            if matches!(ready, Ok(0)) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            let mut msg = String::new();
            let mut file = std::fs::File::from(rd);
            let _ = file.read_to_string(&mut msg);
            match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, 0) => Ok(()),
                WaitStatus::Exited(_, c) => Err(format!("child exit {c}: {msg}")),
                other => Err(format!("child {other:?} (hung and killed?): {msg}")),
            }
        }
    }
}

/// Run `check` in a child that prepared `b` with `spec`; then make sure the
/// host mount table never mentions the bundle.
fn run(
    b: &Bundle,
    spec: &Spec,
    opts: Options,
    flags: CloneFlags,
    check: impl FnOnce() -> Result<(), String>,
) {
    let rootfs = b.rootfs.clone();
    let res = in_child(flags, || {
        std::env::set_current_dir(b.path()).map_err(|e| format!("chdir: {e}"))?;
        prepare(spec, &rootfs, &opts).map_err(|e| format!("prepare: {e}"))?;
        check()
    });
    let leaked = host_mounts_mentioning(b.path());
    assert!(leaked.is_empty(), "mounts leaked to the host: {leaked:?}");
    if let Err(e) = res {
        panic!("{e}");
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// (mount point, mount options, fstype, super options) from our mountinfo.
fn mounts() -> Result<Vec<(String, String, String, String)>, String> {
    Ok(std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read mountinfo: {e}"))?
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let p: Vec<&str> = post.split(' ').collect();
            Some((
                f[4].to_string(),
                f[5..].join(" "),
                p[0].to_string(),
                p.get(2).unwrap_or(&"").to_string(),
            ))
        })
        .collect())
}

fn mount_at(mp: &str) -> Result<(String, String, String, String), String> {
    mounts()?
        .into_iter()
        .rev()
        .find(|m| m.0 == mp)
        .ok_or_else(|| {
            format!(
                "nothing mounted at {mp}; mountinfo:\n{}",
                std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
            )
        })
}

fn has_opt(opts: &str, o: &str) -> bool {
    opts.split([',', ' ']).any(|x| x == o)
}

fn errno_of<T>(r: &std::io::Result<T>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

fn check_char_dev(path: &str, ma: u64, mi: u64) -> Result<(), String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    ensure!(
        md.file_type().is_char_device(),
        "{path} is not a char device"
    );
    ensure!(
        major(md.rdev()) == ma && minor(md.rdev()) == mi,
        "{path} is {}:{}, want {ma}:{mi}",
        major(md.rdev()),
        minor(md.rdev())
    );
    Ok(())
}

fn check_link(path: &str, target: &str) -> Result<(), String> {
    let t = std::fs::read_link(path).map_err(|e| format!("readlink {path}: {e}"))?;
    ensure!(t == Path::new(target), "{path} -> {t:?}, want {target}");
    Ok(())
}

fn read(p: &str) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("read {p}: {e}"))
}

/// Whether the host has `p` (checked before the fork, so tests adapt to
/// kernels without e.g. /proc/timer_list).
fn host_has(p: &str) -> bool {
    HOST_PATHS.with(|h| h.iter().any(|x| x == p))
}

thread_local! {
    static HOST_PATHS: Vec<String> = [
        "/proc/kcore",
        "/proc/timer_list",
        "/proc/keys",
        "/sys/firmware",
        "/proc/sysrq-trigger",
        "/proc/sys/kernel/hostname",
    ]
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .collect();
}

#[test]
fn fixture_spec_builds_a_working_root() {
    let Some(b) = Bundle::new() else { return };
    let spec = Spec::load(fixtures().join("config.json")).unwrap();
    validate(&spec, b.path()).unwrap();
    let host_bundle = b.path().to_path_buf();
    host_has("/proc/kcore");
    run(
        &b,
        &spec,
        Options::default(),
        CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWUTS,
        || {
            // `/` is the new root.
            ensure!(Path::new("/bin/busybox").exists(), "/bin/busybox missing");
            ensure!(!host_bundle.exists(), "host path {host_bundle:?} visible");
            ensure!(!Path::new("/work").exists(), "host /work visible");
            let root = mount_at("/")?;
            ensure!(has_opt(&root.1, "ro"), "/ not read-only: {root:?}");
            ensure!(
                errno_of(&std::fs::write("/newfile", b"x")) == Some(libc::EROFS),
                "/ writable"
            );
            ensure!(mount_at("/proc")?.2 == "proc", "/proc not proc");
            let dev = mount_at("/dev")?;
            ensure!(
                dev.2 == "tmpfs" && has_opt(&dev.1, "nosuid"),
                "/dev: {dev:?}"
            );
            ensure!(mount_at("/dev/pts")?.2 == "devpts", "/dev/pts not devpts");
            ensure!(
                mount_at("/dev/mqueue")?.2 == "mqueue",
                "/dev/mqueue not mqueue"
            );
            let shm = mount_at("/dev/shm")?;
            ensure!(
                has_opt(&shm.1, "noexec") && has_opt(&shm.1, "nodev"),
                "/dev/shm: {shm:?}"
            );
            std::fs::write("/dev/shm/x", b"ok")
                .map_err(|e| format!("/dev/shm not writable: {e}"))?;
            let sys = mount_at("/sys")?;
            ensure!(sys.2 == "sysfs" && has_opt(&sys.1, "ro"), "/sys: {sys:?}");
            ensure!(
                errno_of(&std::fs::create_dir("/sys/x")) == Some(libc::EROFS),
                "/sys writable"
            );
            // cgroup v1 layout (hybrid host): a read-only tmpfs with one
            // read-only hierarchy per controller showing our own cgroup.
            let cg = mount_at("/sys/fs/cgroup")?;
            ensure!(
                cg.2 == "tmpfs" && has_opt(&cg.1, "ro"),
                "/sys/fs/cgroup: {cg:?}"
            );
            let mem = mount_at("/sys/fs/cgroup/memory")?;
            ensure!(
                mem.2 == "cgroup" && has_opt(&mem.1, "ro"),
                "memory hierarchy: {mem:?}"
            );
            ensure!(
                Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists(),
                "memory controller files missing"
            );
            ensure!(
                String::from_utf8_lossy(&read("/sys/fs/cgroup/memory/cgroup.procs")?)
                    .lines()
                    .any(|l| l == std::process::id().to_string()),
                "our pid not in the mounted memory cgroup (pid namespace differs?)"
            );
            match std::fs::create_dir("/sys/fs/cgroup/memory/vessel-test") {
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
                Ok(()) => {
                    let _ = std::fs::remove_dir("/sys/fs/cgroup/memory/vessel-test");
                    return Err("cgroup hierarchy writable".into());
                }
                Err(e) => return Err(format!("mkdir in cgroup: {e}")),
            }
            ensure!(
                mount_at("/sys/fs/cgroup/systemd")?
                    .3
                    .contains("name=systemd"),
                "named hierarchy"
            );
            // Devices and links.
            for (p, ma, mi) in [
                ("/dev/null", 1, 3),
                ("/dev/zero", 1, 5),
                ("/dev/full", 1, 7),
                ("/dev/random", 1, 8),
                ("/dev/urandom", 1, 9),
                ("/dev/tty", 5, 0),
            ] {
                check_char_dev(p, ma, mi)?;
                let mode = std::fs::metadata(p)
                    .map_err(|e| e.to_string())?
                    .permissions()
                    .mode()
                    & 0o777;
                ensure!(mode == 0o666, "{p} mode {mode:o}");
            }
            std::fs::write("/dev/null", b"x").map_err(|e| format!("write /dev/null: {e}"))?;
            // Created with mknod on the /dev tmpfs, not bound from the host.
            let dev_fs = std::fs::metadata("/dev").map_err(|e| e.to_string())?.dev();
            let null_fs = std::fs::metadata("/dev/null")
                .map_err(|e| e.to_string())?
                .dev();
            ensure!(dev_fs == null_fs, "/dev/null not a node on /dev");
            check_link("/dev/ptmx", "pts/ptmx")?;
            check_link("/dev/fd", "/proc/self/fd")?;
            check_link("/dev/stdin", "/proc/self/fd/0")?;
            check_link("/dev/stdout", "/proc/self/fd/1")?;
            check_link("/dev/stderr", "/proc/self/fd/2")?;
            check_link("/dev/core", "/proc/kcore")?;
            ensure!(Path::new("/dev/fd/0").exists(), "/dev/fd does not resolve");
            // Masked paths.
            for p in ["/proc/kcore", "/proc/timer_list", "/proc/keys"] {
                if host_has(p) {
                    ensure!(read(p)?.is_empty(), "{p} readable");
                }
            }
            if host_has("/sys/firmware") {
                let n = std::fs::read_dir("/sys/firmware")
                    .map_err(|e| format!("/sys/firmware: {e}"))?
                    .count();
                ensure!(n == 0, "/sys/firmware not empty");
            }
            // Read-only paths.
            for p in ["/proc/sysrq-trigger", "/proc/sys/kernel/hostname"] {
                if !host_has(p) {
                    continue;
                }
                let r = std::fs::OpenOptions::new().write(true).open(p).map(drop);
                ensure!(
                    errno_of(&r) == Some(libc::EROFS),
                    "{p} not read-only: {r:?}"
                );
            }
            ensure!(
                mount_at("/proc/sys")?.1.contains("ro"),
                "/proc/sys not a ro mount"
            );
            Ok(())
        },
    );
}

/// A minimal spec: the fixture's process, our mounts, no masked paths.
fn minimal(mounts: Value) -> Value {
    let mut v = fixture_json();
    v["mounts"] = mounts;
    v["root"]["readonly"] = json!(false);
    v["linux"]["maskedPaths"] = json!([]);
    v["linux"]["readonlyPaths"] = json!([]);
    v
}

#[test]
fn symlinked_destinations_stay_inside_the_rootfs() {
    let Some(b) = Bundle::new() else { return };
    let pid = std::process::id();
    let outside = PathBuf::from(format!("/tmp/vessel-outside-{pid}"));
    let outside2 = PathBuf::from(format!("/tmp/vessel-outside2-{pid}"));
    let outside3 = PathBuf::from(format!("/tmp/vessel-outside3-{pid}"));
    let outside_file = PathBuf::from(format!("/tmp/vessel-outside-file-{pid}"));
    // Guard: remove the host paths whatever happens.
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    let _g = Cleanup(vec![
        outside.clone(),
        outside2.clone(),
        outside3.clone(),
        outside_file.clone(),
    ]);
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, b.rootfs.join("evil")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../../../..{}", outside2.display()),
        b.rootfs.join("evil2"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside3, b.rootfs.join("tmp/evil3")).unwrap();
    std::os::unix::fs::symlink(&outside_file, b.rootfs.join("etc/evilfile")).unwrap();
    let src = b.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("MARK"), b"inside").unwrap();
    let spec = spec_of(&minimal(json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/evil", "type": "bind", "source": src, "options": ["rbind"] },
        { "destination": "/evil2/sub", "type": "tmpfs", "source": "tmpfs" },
        { "destination": "/tmp/evil3/x/y", "type": "bind", "source": src, "options": ["bind", "ro"] },
        { "destination": "/etc/evilfile", "type": "bind", "source": src.join("MARK"), "options": ["bind"] }
    ])));
    validate(&spec, b.path()).unwrap();
    let (o1, o2, o3, of) = (
        outside.clone(),
        outside2.clone(),
        outside3.clone(),
        outside_file.clone(),
    );
    run(
        &b,
        &spec,
        Options::default(),
        CloneFlags::empty(),
        move || {
            // The mounts landed on the in-root targets of the symlinks.
            let inroot1 = o1.join("MARK");
            ensure!(
                read(&inroot1.to_string_lossy())? == b"inside",
                "bind via /evil not at {inroot1:?}"
            );
            ensure!(Path::new("/evil/MARK").exists(), "/evil/MARK missing");
            let m2 = o2.join("sub");
            ensure!(
                mount_at(&m2.to_string_lossy())?.2 == "tmpfs",
                "tmpfs not at in-root {m2:?}"
            );
            let m3 = o3.join("x/y");
            ensure!(
                Path::new(&m3).join("MARK").exists(),
                "nested bind not at in-root {m3:?}"
            );
            // A dangling file symlink: the mount point file is created in-root.
            ensure!(
                read(&of.to_string_lossy())? == b"inside",
                "file bind not at in-root {of:?}"
            );
            Ok(())
        },
    );
    // Nothing was created or mounted on the host side.
    assert!(host_mounts_mentioning(Path::new("/tmp/vessel-outside")).is_empty());
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "host {outside:?} was written to"
    );
    assert!(!outside2.exists(), "host {outside2:?} was created");
    assert!(!outside3.exists(), "host {outside3:?} was created");
    assert!(!outside_file.exists(), "host {outside_file:?} was created");
    assert!(
        b.rootfs.join(outside.strip_prefix("/").unwrap()).is_dir(),
        "in-root target not created"
    );
}

#[test]
fn bind_mount_flags_and_recursion() {
    let Some(b) = Bundle::new() else { return };
    let src = b.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("file"), b"data").unwrap();
    std::fs::write(b.path().join("single"), b"single").unwrap();
    let spec = spec_of(&minimal(json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/ro", "type": "bind", "source": "src", "options": ["rbind", "ro", "nosuid", "nodev", "noexec", "noatime"] },
        { "destination": "/rro", "type": "bind", "source": "src", "options": ["rbind", "rro"] },
        { "destination": "/rw", "type": "bind", "source": "src", "options": ["bind", "rw", "shared"] },
        { "destination": "/etc/single", "type": "bind", "source": "single", "options": ["bind", "ro", "unbindable"] },
        { "destination": "/run/t", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m", "mode=700", "rslave"] }
    ])));
    validate(&spec, b.path()).unwrap();
    let sub = src.join("sub");
    // A submount inside the source must exist before prepare: mount it in the
    // child first.
    let res = in_child(CloneFlags::empty(), || {
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("mount sub: {e}"))?;
        std::env::set_current_dir(b.path()).map_err(|e| format!("chdir: {e}"))?;
        prepare(&spec, &b.rootfs, &Options::default()).map_err(|e| format!("prepare: {e}"))?;
        let ro = mount_at("/ro")?;
        for o in ["ro", "nosuid", "nodev", "noexec", "noatime"] {
            ensure!(has_opt(&ro.1, o), "/ro lacks {o}: {ro:?}");
        }
        ensure!(
            errno_of(&std::fs::write("/ro/new", b"x")) == Some(libc::EROFS),
            "/ro writable"
        );
        ensure!(read("/ro/file")? == b"data", "/ro/file content");
        // rbind,ro: only the top is read-only; rro: the whole tree.
        ensure!(
            !has_opt(&mount_at("/ro/sub")?.1, "ro"),
            "/ro/sub should stay rw"
        );
        std::fs::write("/ro/sub/x", b"x").map_err(|e| format!("/ro/sub: {e}"))?;
        ensure!(has_opt(&mount_at("/rro/sub")?.1, "ro"), "/rro/sub not ro");
        ensure!(
            errno_of(&std::fs::write("/rro/sub/y", b"x")) == Some(libc::EROFS),
            "/rro/sub writable"
        );
        // bind (not rbind): no submount.
        ensure!(
            mounts()?.iter().all(|m| m.0 != "/rw/sub"),
            "bind copied a submount"
        );
        ensure!(mount_at("/rw")?.1.contains("shared:"), "/rw not shared");
        std::fs::write("/rw/new", b"x").map_err(|e| format!("/rw: {e}"))?;
        let single = mount_at("/etc/single")?;
        ensure!(
            has_opt(&single.1, "ro") && single.1.contains("unbindable"),
            "/etc/single: {single:?}"
        );
        ensure!(read("/etc/single")? == b"single", "file bind content");
        let t = mount_at("/run/t")?;
        ensure!(
            t.2 == "tmpfs" && has_opt(&t.1, "nosuid") && !t.1.contains("shared:"),
            "/run/t: {t:?}"
        );
        let mode = std::fs::metadata("/run/t")
            .map_err(|e| e.to_string())?
            .permissions()
            .mode()
            & 0o777;
        ensure!(mode == 0o700, "/run/t mode {mode:o}");
        Ok(())
    });
    assert!(host_mounts_mentioning(b.path()).is_empty());
    res.unwrap();
    assert!(!src.join("new").exists() || std::fs::remove_file(src.join("new")).is_ok());
}

#[test]
fn spec_devices_are_created_with_mode_and_owner() {
    let Some(b) = Bundle::new() else { return };
    // An image file where a device should go must be replaced.
    std::fs::write(b.rootfs.join("dev/zero"), b"not a device").unwrap();
    let mut v = minimal(json!([
        { "destination": "/proc", "type": "proc", "source": "proc" }
    ]));
    v["linux"]["devices"] = json!([
        { "path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 432, "uid": 1000, "gid": 1001 },
        { "path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 384 },
        { "path": "/dev/loopfake", "type": "b", "major": 7, "minor": 250, "fileMode": 416 },
        { "path": "/dev/myfifo", "type": "p", "fileMode": 420 }
    ]);
    let spec = spec_of(&v);
    validate(&spec, b.path()).unwrap();
    run(&b, &spec, Options::default(), CloneFlags::empty(), || {
        check_char_dev("/dev/net/tun", 10, 200)?;
        let md = std::fs::metadata("/dev/net/tun").map_err(|e| e.to_string())?;
        ensure!(md.mode() & 0o7777 == 0o660, "tun mode {:o}", md.mode());
        ensure!(
            md.uid() == 1000 && md.gid() == 1001,
            "tun owner {}:{}",
            md.uid(),
            md.gid()
        );
        // The spec entry replaces the default /dev/null (mode 0600).
        check_char_dev("/dev/null", 1, 3)?;
        let mode = std::fs::metadata("/dev/null")
            .map_err(|e| e.to_string())?
            .mode()
            & 0o7777;
        ensure!(mode == 0o600, "/dev/null mode {mode:o}");
        let md = std::fs::metadata("/dev/loopfake").map_err(|e| e.to_string())?;
        ensure!(
            md.file_type().is_block_device(),
            "loopfake not a block device"
        );
        ensure!(
            major(md.rdev()) == 7 && minor(md.rdev()) == 250,
            "loopfake numbers"
        );
        let md = std::fs::metadata("/dev/myfifo").map_err(|e| e.to_string())?;
        ensure!(
            md.file_type().is_fifo() && md.mode() & 0o7777 == 0o644,
            "fifo: {:o}",
            md.mode()
        );
        // The image's regular file was replaced by the device.
        check_char_dev("/dev/zero", 1, 5)?;
        Ok(())
    });
}

#[test]
fn no_pivot_moves_the_root_and_chroots() {
    let Some(b) = Bundle::new() else { return };
    let spec = Spec::load(fixtures().join("config.json")).unwrap();
    let host_bundle = b.path().to_path_buf();
    host_has("/proc/kcore");
    let opts = Options { no_pivot: true };
    run(&b, &spec, opts, CloneFlags::CLONE_NEWCGROUP, || {
        ensure!(Path::new("/bin/busybox").exists(), "/bin/busybox missing");
        ensure!(!host_bundle.exists(), "host path visible");
        ensure!(!Path::new("/work").exists(), "host /work visible");
        check_char_dev("/dev/null", 1, 3)?;
        ensure!(has_opt(&mount_at("/")?.1, "ro"), "/ not read-only");
        if host_has("/proc/timer_list") {
            ensure!(read("/proc/timer_list")?.is_empty(), "masking failed");
        }
        let procs = mounts()?
            .iter()
            .filter(|m| m.2 == "proc" && m.0 == "/proc")
            .count();
        ensure!(procs == 1, "{procs} procfs mounts at /proc");
        Ok(())
    });
}

/// Enter a user namespace mapping root to root (the child is single-threaded).
fn enter_userns() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare user: {e}"))?;
    std::fs::write("/proc/self/setgroups", "deny").map_err(|e| format!("setgroups: {e}"))?;
    std::fs::write("/proc/self/uid_map", "0 0 1").map_err(|e| format!("uid_map: {e}"))?;
    std::fs::write("/proc/self/gid_map", "0 0 1").map_err(|e| format!("gid_map: {e}"))?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mnt: {e}"))
}

#[test]
fn user_namespace_binds_devices_and_sysfs() {
    let Some(b) = Bundle::new() else { return };
    // No procfs: a user namespace may only mount it with its own pid namespace.
    let mut v = minimal(json!([
        { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"] },
        { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }
    ]));
    // mqueue falls back to binding the host's /dev/mqueue, if it has one.
    let host_mqueue = Path::new("/dev/mqueue").is_dir();
    if host_mqueue {
        v["mounts"].as_array_mut().unwrap().push(
            json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] }),
        );
    } else {
        println!("note: host has no /dev/mqueue; mqueue fallback not exercised");
    }
    v["linux"]["namespaces"] = json!([{ "type": "user" }, { "type": "mount" }]);
    let spec = spec_of(&v);
    validate(&spec, b.path()).unwrap();
    let rootfs = b.rootfs.clone();
    let res = in_child(CloneFlags::empty(), || {
        std::env::set_current_dir(b.path()).map_err(|e| format!("chdir: {e}"))?;
        enter_userns()?;
        prepare(&spec, &rootfs, &Options::default()).map_err(|e| format!("prepare: {e}"))?;
        // mknod is refused in a user namespace: the host's nodes are bound
        // (so they live on the host's devtmpfs, not on our /dev tmpfs).
        check_char_dev("/dev/null", 1, 3)?;
        let dev_fs = std::fs::metadata("/dev").map_err(|e| e.to_string())?.dev();
        let null_fs = std::fs::metadata("/dev/null")
            .map_err(|e| e.to_string())?
            .dev();
        ensure!(
            dev_fs != null_fs,
            "/dev/null was not bind-mounted from the host"
        );
        check_char_dev("/dev/urandom", 1, 9)?;
        std::fs::write("/dev/null", b"x").map_err(|e| format!("write /dev/null: {e}"))?;
        check_link("/dev/ptmx", "pts/ptmx")?;
        // sysfs could not be mounted fresh without a network namespace:
        // the host's is bound read-only instead.
        ensure!(Path::new("/sys/kernel").is_dir(), "/sys not populated");
        ensure!(
            errno_of(&std::fs::create_dir("/sys/x")) == Some(libc::EROFS),
            "/sys writable"
        );
        ensure!(Path::new("/bin/busybox").exists(), "not in the new root");
        if host_mqueue {
            let mq = std::fs::metadata("/dev/mqueue").map_err(|e| format!("/dev/mqueue: {e}"))?;
            ensure!(mq.dev() != dev_fs, "/dev/mqueue not mounted");
        }
        Ok(())
    });
    assert!(host_mounts_mentioning(b.path()).is_empty());
    res.unwrap();
}

#[test]
fn rshared_root_propagation_still_pivots() {
    let Some(b) = Bundle::new() else { return };
    let mut v = minimal(json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs" }
    ]));
    v["linux"]["rootfsPropagation"] = json!("rshared");
    let spec = spec_of(&v);
    validate(&spec, b.path()).unwrap();
    run(&b, &spec, Options::default(), CloneFlags::empty(), || {
        ensure!(Path::new("/bin/busybox").exists(), "not in the new root");
        let root = mount_at("/")?;
        ensure!(root.1.contains("shared:"), "/ not shared: {root:?}");
        ensure!(
            mount_at("/tmp")?.1.contains("shared:"),
            "/tmp not shared (rshared)"
        );
        Ok(())
    });
    let mut v = minimal(json!([{ "destination": "/proc", "type": "proc", "source": "proc" }]));
    v["linux"]["rootfsPropagation"] = json!("slave");
    let spec = spec_of(&v);
    run(&b, &spec, Options::default(), CloneFlags::empty(), || {
        ensure!(
            !mount_at("/")?.1.contains("shared:"),
            "/ shared with rootfsPropagation=slave"
        );
        Ok(())
    });
}

#[test]
fn sysctls_are_written_before_proc_sys_turns_read_only() {
    let Some(b) = Bundle::new() else { return };
    let mut v = fixture_json();
    v["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1", "kernel.shmmni": "4000" });
    let spec = spec_of(&v);
    validate(&spec, b.path()).unwrap();
    let spec2 = spec.clone();
    run(
        &b,
        &spec,
        Options::default(),
        CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWCGROUP,
        move || {
            ensure!(
                read("/proc/sys/net/ipv4/ip_forward")? == b"1\n",
                "ip_forward not set"
            );
            ensure!(
                read("/proc/sys/kernel/shmmni")? == b"4000\n",
                "shmmni not set"
            );
            // /proc/sys is read-only now; re-applying the same values is fine...
            apply_sysctl(&spec2).map_err(|e| format!("re-apply: {e}"))?;
            // ...a different value is refused with EROFS.
            let mut v = serde_json::to_value(&spec2).map_err(|e| e.to_string())?;
            v["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "0" });
            let other: Spec = serde_json::from_value(v).map_err(|e| e.to_string())?;
            match apply_sysctl(&other) {
                Err(RootfsError::Sysctl {
                    errno: nix::errno::Errno::EROFS,
                    ..
                }) => {}
                r => return Err(format!("expected EROFS, got {r:?}")),
            }
            Ok(())
        },
    );
}

#[test]
fn kernel_mount_errors_name_the_mount() {
    let Some(b) = Bundle::new() else { return };
    let spec = spec_of(&minimal(json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/bad", "type": "tmpfs", "source": "tmpfs", "options": ["size=lots"] }
    ])));
    validate(&spec, b.path()).unwrap();
    let rootfs = b.rootfs.clone();
    let res = in_child(CloneFlags::empty(), || {
        std::env::set_current_dir(b.path()).map_err(|e| format!("chdir: {e}"))?;
        match prepare(&spec, &rootfs, &Options::default()) {
            Err(e @ RootfsError::Mount { .. }) => {
                let msg = e.to_string();
                ensure!(
                    msg.contains("/bad") && msg.contains("tmpfs") && msg.contains("EINVAL"),
                    "message: {msg}"
                );
                Ok(())
            }
            r => Err(format!("expected a mount error, got {r:?}")),
        }
    });
    assert!(host_mounts_mentioning(b.path()).is_empty());
    res.unwrap();
}

#[track_caller]
fn msg(r: Result<(), RootfsError>) -> String {
    r.unwrap_err().to_string()
}

/// validate() of the fixture spec with one JSON change.
fn validate_with(b: &Bundle, change: impl FnOnce(&mut Value)) -> Result<(), RootfsError> {
    let mut v = fixture_json();
    change(&mut v);
    validate(&spec_of(&v), b.path())
}

#[test]
fn validate_rejects_each_bad_input() {
    let Some(b) = Bundle::new() else { return };
    validate_with(&b, |_| {}).unwrap();

    // Root.
    let e = msg(validate_with(&b, |v| v["root"]["path"] = json!("nope")));
    assert!(e.contains("nope"), "{e}");
    std::fs::write(b.path().join("file"), b"").unwrap();
    let e = msg(validate_with(&b, |v| v["root"]["path"] = json!("file")));
    assert!(e.contains("not a directory"), "{e}");
    let e = msg(validate_with(&b, |v| {
        v.as_object_mut().unwrap().remove("root");
    }));
    assert!(e.contains("root"), "{e}");
    // Mount destinations.
    let e = msg(validate_with(&b, |v| {
        v["mounts"][0]["destination"] = json!("proc")
    }));
    assert!(e.contains("mounts[0]") && e.contains("absolute"), "{e}");
    let e = msg(validate_with(&b, |v| {
        v["mounts"][1]["destination"] = json!("/dev/../../etc")
    }));
    assert!(e.contains("mounts[1]") && e.contains(".."), "{e}");
    validate_with(&b, |v| v["mounts"][1]["destination"] = json!("/dev/../dev")).unwrap();
    // Mount options and types.
    let e = msg(validate_with(&b, |v| {
        v["mounts"][1]["options"][0] = json!("nosiud")
    }));
    assert!(e.contains("mounts[1]") && e.contains("\"nosiud\""), "{e}");
    let e = msg(validate_with(&b, |v| {
        v["mounts"][0]["type"] = json!("procfs-typo")
    }));
    assert!(e.contains("procfs-typo"), "{e}");
    let e = msg(validate_with(
        &b,
        |v| {
            v["mounts"][0] =
                json!({ "destination": "/x", "source": "/tmp", "options": ["rbind", "size=1"] })
        },
    ));
    assert!(e.contains("size=1"), "{e}");
    let e = msg(validate_with(
        &b,
        |v| {
            v["mounts"][0] =
                json!({ "destination": "/x", "source": "/nonexistent-src", "options": ["rbind"] })
        },
    ));
    assert!(e.contains("nonexistent-src"), "{e}");
    let e = msg(validate_with(&b, |v| {
        v["mounts"][0] = json!({ "destination": "/x", "source": "x" })
    }));
    assert!(e.contains("no type"), "{e}");
    // Mounts over /proc internals.
    let e = msg(validate_with(
        &b,
        |v| {
            v["mounts"][0] =
                json!({ "destination": "/proc/self/attr", "type": "tmpfs", "source": "tmpfs" })
        },
    ));
    assert!(e.contains("/proc/self/attr"), "{e}");
    let e = msg(validate_with(
        &b,
        |v| v["mounts"][0] = json!({ "destination": "/proc", "type": "tmpfs", "source": "tmpfs" }),
    ));
    assert!(e.contains("/proc"), "{e}");
    validate_with(
        &b,
        |v| {
            v["mounts"][6] =
                json!({ "destination": "/proc/meminfo", "type": "bind", "source": "/proc/meminfo" })
        },
    )
    .unwrap();
    // Filesystem data is passed through for filesystems we do not know.
    validate_with(&b, |v| {
        v["mounts"][0] = json!({ "destination": "/x", "type": "ext4", "source": "/dev/vdb", "options": ["ro", "discard"] })
    })
    .unwrap();
    // Devices.
    let dev = |d: Value| move |v: &mut Value| v["linux"]["devices"] = json!([d]);
    let e = msg(validate_with(
        &b,
        dev(json!({ "path": "/dev/x", "type": "c" })),
    ));
    assert!(e.contains("/dev/x") && e.contains("major"), "{e}");
    let e = msg(validate_with(
        &b,
        dev(json!({ "path": "/dev/x", "type": "a", "major": 1, "minor": 1 })),
    ));
    assert!(e.contains("type"), "{e}");
    let e = msg(validate_with(
        &b,
        dev(json!({ "path": "dev/x", "type": "c", "major": 1, "minor": 1 })),
    ));
    assert!(e.contains("absolute"), "{e}");
    let e = msg(validate_with(
        &b,
        dev(json!({ "path": "/dev/x", "type": "b", "major": 5000, "minor": 1 })),
    ));
    assert!(e.contains("major 5000"), "{e}");
    let e = msg(validate_with(
        &b,
        dev(json!({ "path": "/dev/x", "type": "c", "major": 1, "minor": 1, "fileMode": 8630 })),
    ));
    assert!(e.contains("fileMode"), "{e}");
    validate_with(&b, dev(json!({ "path": "/dev/fifo", "type": "p" }))).unwrap();
    // An unknown device type does not even parse as a Spec.
    let mut v = fixture_json();
    v["linux"]["devices"] = json!([{ "path": "/dev/x", "type": "q", "major": 1, "minor": 1 }]);
    assert!(serde_json::from_value::<Spec>(v).is_err());
    // Propagation.
    let e = msg(validate_with(&b, |v| {
        v["linux"]["rootfsPropagation"] = json!("rshard")
    }));
    assert!(e.contains("rshard"), "{e}");
    validate_with(&b, |v| v["linux"]["rootfsPropagation"] = json!("rslave")).unwrap();
    // Masked / read-only paths.
    let e = msg(validate_with(&b, |v| {
        v["linux"]["maskedPaths"][0] = json!("proc/kcore")
    }));
    assert!(e.contains("maskedPaths") && e.contains("proc/kcore"), "{e}");
    let e = msg(validate_with(&b, |v| {
        v["linux"]["readonlyPaths"][0] = json!("/../proc")
    }));
    assert!(e.contains("readonlyPaths"), "{e}");
    // Sysctls.
    let e = msg(validate_with(&b, |v| {
        v["linux"]["sysctl"] = json!({ "kernel.core_pattern": "x" })
    }));
    assert!(
        e.contains("kernel.core_pattern") && e.contains("namespaced"),
        "{e}"
    );
    let e = msg(validate_with(&b, |v| {
        v["linux"]["sysctl"] = json!({ "net/../../kernel/x": "1" })
    }));
    assert!(e.contains(".."), "{e}");
    let e = msg(validate_with(&b, |v| {
        v["linux"]["namespaces"] = json!([{ "type": "mount" }, { "type": "network" }]);
        v["linux"]["sysctl"] = json!({ "kernel.hostname": "x" })
    }));
    assert!(e.contains("Uts"), "{e}");
    validate_with(&b, |v| {
        v["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1" })
    })
    .unwrap();
}

/// Not a check: prints how long prepare() takes for the fixture spec
/// (`cargo test -p vessel-runtime prepare_cost -- --ignored --nocapture`).
#[test]
#[ignore]
fn prepare_cost() {
    let Some(b) = Bundle::new() else { return };
    let spec = Spec::load(fixtures().join("config.json")).unwrap();
    let mut samples: Vec<u128> = (0..30)
        .map(|_| {
            // The child reports the duration as its "error" message.
            let r = in_child(CloneFlags::CLONE_NEWCGROUP, || {
                std::env::set_current_dir(b.path()).map_err(|e| e.to_string())?;
                let t = std::time::Instant::now();
                prepare(&spec, &b.rootfs, &Options::default()).map_err(|e| e.to_string())?;
                Err(format!("{}", t.elapsed().as_micros()))
            });
            let msg = r.unwrap_err();
            msg.rsplit(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    samples.sort();
    println!(
        "prepare(fixture spec) in the child: min {} µs, median {} µs, max {} µs",
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}

#[test]
fn cgroup_without_namespace_binds_own_cgroups() {
    let Some(b) = Bundle::new() else { return };
    let mut v = fixture_json();
    v["linux"]["namespaces"] = json!([{ "type": "mount" }]);
    // An explicit cgroup2 mount is an ordinary filesystem mount.
    v["mounts"].as_array_mut().unwrap().push(
        json!({ "destination": "/run/cg2", "type": "cgroup2", "source": "cgroup2", "options": ["nosuid", "nodev", "noexec", "ro"] }),
    );
    v["linux"]["maskedPaths"] = json!([]);
    v["linux"]["readonlyPaths"] = json!([]);
    let spec = spec_of(&v);
    validate(&spec, b.path()).unwrap();
    // Our memory cgroup as the host sees it.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mem_path = own.lines().find_map(|l| {
        l.strip_suffix("")
            .and_then(|l| l.split_once(":memory:"))
            .map(|(_, p)| p.to_string())
    });
    let Some(mem_path) = mem_path else {
        skip_test!("no v1 memory hierarchy");
        return;
    };
    run(
        &b,
        &spec,
        Options::default(),
        CloneFlags::empty(),
        move || {
            let info =
                std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
            let line = info
                .lines()
                .rev()
                .find(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup/memory"))
                .ok_or("no /sys/fs/cgroup/memory mount")?;
            ensure!(
                line.split(' ').nth(3) == Some(mem_path.as_str()),
                "memory mount root: {line} (want {mem_path})"
            );
            ensure!(
                has_opt(&mount_at("/sys/fs/cgroup/memory")?.1, "ro"),
                "memory hierarchy not ro"
            );
            ensure!(
                String::from_utf8_lossy(&read("/sys/fs/cgroup/memory/cgroup.procs")?)
                    .lines()
                    .any(|l| l == std::process::id().to_string()),
                "our pid not in the bound memory cgroup"
            );
            match std::fs::create_dir("/sys/fs/cgroup/memory/vessel-test") {
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(()),
                Ok(()) => {
                    let _ = std::fs::remove_dir("/sys/fs/cgroup/memory/vessel-test");
                    Err("cgroup hierarchy writable".into())
                }
                Err(e) => Err(format!("mkdir in cgroup: {e}")),
            }
        },
    );
}

#[test]
fn refuses_the_host_mount_namespace() {
    // The test process shares pid 1's mount namespace (unless the whole
    // suite runs in a container): prepare's guard must see that...
    let host_ns =
        std::fs::read_link("/proc/self/ns/mnt").ok() == std::fs::read_link("/proc/1/ns/mnt").ok();
    if !host_ns {
        skip_test!("test process is not in pid 1's mount namespace");
        return;
    }
    assert!(shares_init_mount_ns());
    // ...and a child with its own mount namespace passes it.
    in_child(CloneFlags::empty(), || {
        ensure!(
            !shares_init_mount_ns(),
            "new mount namespace not recognised"
        );
        Ok(())
    })
    .unwrap();
    // prepare() is not called with a valid rootfs here: if the guard were
    // broken it would rearrange the host's mounts. A relative rootfs is
    // refused before anything is touched.
    assert!(matches!(
        prepare(&Spec::default(), Path::new("relative"), &Options::default()),
        Err(RootfsError::RootPath { .. })
    ));
}

#[test]
fn tmpcopyup_fills_the_tmpfs_with_what_it_covers() {
    let Some(b) = Bundle::new() else { return };
    let etc = b.rootfs.join("etc");
    std::fs::create_dir(etc.join("sub")).unwrap();
    std::fs::set_permissions(etc.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(etc.join("sub/secret"), b"s3").unwrap();
    std::fs::set_permissions(
        etc.join("sub/secret"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(etc.join("sub/secret"), Some(1000), Some(1001)).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", etc.join("link")).unwrap();
    let spec = spec_of(&minimal(json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "nosuid"] },
        { "destination": "/usr", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "ro"] }
    ])));
    validate(&spec, b.path()).unwrap();
    run(&b, &spec, Options::default(), CloneFlags::empty(), || {
        ensure!(mount_at("/etc")?.2 == "tmpfs", "/etc not a tmpfs");
        ensure!(
            read("/etc/passwd")?.starts_with(b"root:"),
            "/etc/passwd not copied"
        );
        let md = std::fs::metadata("/etc/sub").map_err(|e| e.to_string())?;
        ensure!(
            md.is_dir() && md.mode() & 0o7777 == 0o750,
            "/etc/sub mode {:o}",
            md.mode()
        );
        let md = std::fs::metadata("/etc/sub/secret").map_err(|e| e.to_string())?;
        ensure!(
            md.mode() & 0o7777 == 0o640 && md.uid() == 1000 && md.gid() == 1001,
            "secret: {:o} {}:{}",
            md.mode(),
            md.uid(),
            md.gid()
        );
        ensure!(read("/etc/sub/secret")? == b"s3", "secret content");
        check_link("/etc/link", "/nonexistent/target")?;
        let root_mode = std::fs::metadata("/etc").map_err(|e| e.to_string())?.mode() & 0o7777;
        ensure!(root_mode == 0o755, "/etc mode {root_mode:o}");
        // Writes go to the tmpfs only.
        std::fs::write("/etc/new", b"x").map_err(|e| format!("write /etc/new: {e}"))?;
        // The read-only one was filled before turning read-only.
        ensure!(has_opt(&mount_at("/usr")?.1, "ro"), "/usr not read-only");
        ensure!(Path::new("/usr/bin").is_dir(), "/usr/bin not copied");
        ensure!(
            errno_of(&std::fs::write("/usr/x", b"x")) == Some(libc::EROFS),
            "/usr writable"
        );
        Ok(())
    });
    assert!(
        !etc.join("new").exists(),
        "tmpcopyup wrote through to the image"
    );
}

#[test]
fn idmapped_bind_mounts_shift_ownership() {
    let Some(b) = Bundle::new() else { return };
    let src = b.path().join("idsrc");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("root-owned"), b"r").unwrap();
    std::fs::write(src.join("user-owned"), b"u").unwrap();
    std::os::unix::fs::chown(src.join("user-owned"), Some(1000), Some(1000)).unwrap();
    let maps = json!([{ "containerID": 0, "hostID": 2000, "size": 1001 }]);
    let spec = spec_of(&minimal(json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/idm", "type": "bind", "source": "idsrc", "options": ["rbind", "idmap"],
          "uidMappings": maps, "gidMappings": maps }
    ])));
    validate(&spec, b.path()).unwrap();
    let rootfs = b.rootfs.clone();
    let res = in_child(CloneFlags::empty(), || {
        std::env::set_current_dir(b.path()).map_err(|e| format!("chdir: {e}"))?;
        // Without the parent's detached mounts the spec cannot be honoured.
        match prepare(&spec, &rootfs, &Options::default()) {
            Err(RootfsError::Mount { op, .. }) if op.contains("idmount::prepare") => {}
            r => return Err(format!("expected a missing-idmap error, got {r:?}")),
        }
        Ok(())
    });
    res.unwrap();
    let res = in_child(CloneFlags::empty(), || {
        std::env::set_current_dir(b.path()).map_err(|e| format!("chdir: {e}"))?;
        let trees = crate::idmount::prepare(&spec, b.path(), &rootfs)
            .map_err(|e| format!("idmount::prepare: {e}"))?;
        let (pre, _) = trees.for_rootfs().map_err(|e| format!("for_rootfs: {e}"))?;
        ensure!(pre.len() == 1 && pre[0].index == 1, "prepared: {pre:?}");
        prepare_with(&spec, &rootfs, &Options::default(), pre)
            .map_err(|e| format!("prepare: {e}"))?;
        let r = std::fs::metadata("/idm/root-owned").map_err(|e| e.to_string())?;
        ensure!(
            r.uid() == 2000 && r.gid() == 2000,
            "root-owned shows as {}:{}",
            r.uid(),
            r.gid()
        );
        let u = std::fs::metadata("/idm/user-owned").map_err(|e| e.to_string())?;
        ensure!(
            u.uid() == 3000 && u.gid() == 3000,
            "user-owned shows as {}:{}",
            u.uid(),
            u.gid()
        );
        ensure!(
            mount_at("/idm")?.1.contains("idmapped"),
            "mount not idmapped"
        );
        Ok(())
    });
    assert!(host_mounts_mentioning(b.path()).is_empty());
    res.unwrap();
    // The files themselves are untouched.
    assert_eq!(
        std::fs::metadata(src.join("user-owned")).unwrap().uid(),
        1000
    );
}
