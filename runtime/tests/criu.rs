//! CRIU client against the real CRIU (fixtures/criu.sh) and kernel.
//!
//! The process trees checkpointed here are forked from the test process (no exec): the
//! child closes every inherited descriptor, starts its own session and from then on makes
//! raw system calls only (it must not allocate: other test threads may hold the
//! allocator's locks at fork time). It counts in memory and writes the count into a
//! file every 100 ms.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use qemu_guest::Guest;
use vessel_runtime::criu::{
    external_mounts, tty_external_key, CgroupMode, Criu, CriuError, DumpOptions, DumpStats,
    ExternalMount, ExternalMountRecord, InheritFd, NetworkLock, RestoreOptions, RestoreStats,
};

#[path = "support/qemu_guest.rs"]
mod qemu_guest;

/// Record a skipped test (same convention as tests/common of the facade crate).
fn skip(test: &str, reason: &str) {
    use std::io::Write;
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("VESSEL_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// The fixture's criu, building it once if needed; Err(reason) if it cannot be had.
fn criu() -> Result<Criu, String> {
    static CRIU: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CRIU.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err("CRIU needs root (ptrace, namespaces)".into());
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cache = std::env::var_os("VESSEL_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("fixtures/.cache"));
        let wrapper = cache.join("criu/criu");
        if wrapper.exists() && cache.join("criu/check-ok").exists() {
            return Ok(wrapper);
        }
        let out = std::process::Command::new("bash")
            .arg(root.join("fixtures/criu.sh"))
            .output()
            .map_err(|e| format!("cannot run fixtures/criu.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "fixtures/criu.sh failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    })
    .clone()
    .map(Criu::new)
}

macro_rules! criu_or_skip {
    ($name:expr) => {
        match criu() {
            Ok(c) => c,
            Err(reason) => {
                skip($name, &reason);
                return;
            }
        }
    };
}

/// A scratch directory removed on drop.
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new() -> Self {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("vessel-criu-test-{}-", std::process::id()))
                .tempdir()
                .unwrap(),
        )
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// What the forked counter does besides counting.
#[derive(Clone, Copy, Default)]
struct Shape {
    /// MiB of anonymous memory it touches once at start.
    mem_mib: usize,
    /// Fork a child that gets each count over a unix socket pair and writes it to `echo`.
    with_child: bool,
    /// Also write each count to stdout, which is this descriptor (a pipe's write end).
    stdout: Option<RawFd>,
    /// Run the counter as init of a new pid namespace (under a helper that waits for it).
    pid_ns: bool,
    /// A pty master: the counter takes its slave as controlling terminal and stdio, and
    /// writes one 'x' to it per count.
    tty_master: Option<RawFd>,
    /// Give the counter a network namespace of its own (CRIU then locks its network).
    net_ns: bool,
    /// `MADV_NOHUGEPAGE` on the touched area, so soft-dirty tracks 4 KiB pages rather than
    /// whole 2 MiB transparent huge pages (the pre-dump figures then count what changed).
    no_huge_pages: bool,
}

/// A forked process tree (root = session leader); killed and reaped on drop.
struct Tree {
    root: i32,
    /// Whether `root` is (still) our child to reap.
    ours: bool,
    /// With `pid_ns`: our child that forked `root` into its new pid namespace.
    helper: Option<i32>,
    count: PathBuf,
    echo: PathBuf,
}

fn cstring(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Fork the counter. Every allocation happens before fork().
fn spawn_tree(dir: &Path, shape: Shape) -> Tree {
    let count = dir.join("count");
    let echo = dir.join("echo");
    let count_c = cstring(&count);
    let echo_c = cstring(&echo);
    let nsroot = dir.join("nsroot");
    let nsroot_c = cstring(&nsroot);
    let devnull = c"/dev/null";
    // SAFETY: fork() in a multi-threaded process; the child only makes raw system calls
    // (no allocation, no locks) and never returns (it ends in _exit or is killed).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: child side; raw syscalls on memory prepared before fork.
        unsafe { counter_child(&count_c, &echo_c, &nsroot_c, devnull, shape) }
    }
    let mut tree = Tree {
        root: pid,
        ours: true,
        helper: None,
        count,
        echo,
    };
    if shape.pid_ns {
        tree.helper = Some(pid);
        tree.ours = false;
        tree.root = wait_for("pid namespace init", || {
            let b = std::fs::read(&nsroot).ok()?;
            Some(i32::from_le_bytes(b.get(..4)?.try_into().ok()?))
        });
    }
    // Running once the first count is written (and echoed, with a child).
    tree.wait_count(|c| c >= 1, "first count");
    if shape.with_child {
        wait_for("first echo", || read_u64(&tree.echo).filter(|&c| c >= 1));
    }
    tree
}

/// The counter's body. Async-signal-safe calls only.
unsafe fn counter_child(
    count: &std::ffi::CStr,
    echo: &std::ffi::CStr,
    nsroot: &std::ffi::CStr,
    devnull: &std::ffi::CStr,
    shape: Shape,
) -> ! {
    // SAFETY: raw system calls (the whole body) on valid pointers prepared before fork;
    // the memory written through `p`/`mem` is the mapping made just above.
    unsafe {
        if let Some(w) = shape.stdout {
            libc::dup2(w, 1);
        }
        if let Some(m) = shape.tty_master {
            let slave = libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
            if slave < 0 {
                libc::_exit(7);
            }
            for fd in 0..3 {
                libc::dup2(slave, fd);
            }
        }
        libc::close_range(3, u32::MAX, 0);
        if shape.pid_ns {
            if libc::unshare(libc::CLONE_NEWPID) < 0 {
                libc::_exit(5);
            }
            let init = libc::fork();
            if init > 0 {
                let f = libc::open(
                    nsroot.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                    0o644,
                );
                libc::write(f, init.to_le_bytes().as_ptr().cast(), 4);
                libc::close(f);
                let mut status = 0;
                libc::waitpid(init, &mut status, 0);
                libc::_exit(0);
            }
        }
        if shape.net_ns && libc::unshare(libc::CLONE_NEWNET) < 0 {
            libc::_exit(8);
        }
        libc::setsid();
        if shape.tty_master.is_some() {
            libc::ioctl(0, libc::TIOCSCTTY, 0);
        } else {
            let null = libc::open(devnull.as_ptr(), libc::O_RDWR);
            for fd in 0..3 {
                if fd != 1 || shape.stdout.is_none() {
                    libc::dup2(null, fd);
                }
            }
            if null > 2 {
                libc::close(null);
            }
        }
        let out = libc::open(
            count.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        );
        if out < 0 {
            libc::_exit(2);
        }
        let len = shape.mem_mib << 20;
        let mem = if len > 0 {
            let m = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if m == libc::MAP_FAILED {
                libc::_exit(3);
            }
            if shape.no_huge_pages {
                libc::madvise(m, len, libc::MADV_NOHUGEPAGE);
            }
            let p = m as *mut u8;
            let mut off = 0;
            while off < len {
                *p.add(off) = (off >> 12) as u8 | 1;
                off += 4096;
            }
            p
        } else {
            std::ptr::null_mut()
        };
        let mut sock = -1;
        if shape.with_child {
            let mut sv = [0i32; 2];
            if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) < 0 {
                libc::_exit(4);
            }
            let child = libc::fork();
            if child == 0 {
                libc::close(sv[0]);
                let e = libc::open(
                    echo.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                    0o644,
                );
                let mut buf = [0u8; 8];
                loop {
                    let n = libc::read(sv[1], buf.as_mut_ptr().cast(), 8);
                    if n != 8 {
                        libc::_exit(0);
                    }
                    libc::pwrite(e, buf.as_ptr().cast(), 8, 0);
                }
            }
            libc::close(sv[1]);
            sock = sv[0];
        }
        let mut counter: u64 = 0;
        let tick = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        loop {
            counter += 1;
            let bytes = counter.to_le_bytes();
            libc::pwrite(out, bytes.as_ptr().cast(), 8, 0);
            if sock >= 0 {
                libc::write(sock, bytes.as_ptr().cast(), 8);
            }
            if shape.stdout.is_some() {
                libc::write(1, bytes.as_ptr().cast(), 8);
            }
            if shape.tty_master.is_some() {
                libc::write(1, c"x".as_ptr().cast(), 1);
            }
            if !mem.is_null() {
                // Dirty one page per tick: what an incremental dump must write again.
                *mem.add(((counter as usize) << 12) % len) = counter as u8;
            }
            libc::nanosleep(&tick, std::ptr::null_mut());
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    let b = std::fs::read(path).ok()?;
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// Poll `f` until it yields a value; panics after a minute (a hang, not a slow run).
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: it has state Z in /proc/PID/stat.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Session id of `pid`, if it exists.
fn session_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    // state ppid pgrp session
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Every live process of session `sid`.
fn session_members(sid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            if session_of(pid) == Some(sid) && alive(pid) {
                v.push(pid);
            }
        }
    }
    v
}

impl Tree {
    fn count(&self) -> u64 {
        read_u64(&self.count).unwrap_or(0)
    }

    fn wait_count(&self, pred: impl Fn(u64) -> bool, what: &str) -> u64 {
        wait_for(what, || read_u64(&self.count).filter(|c| pred(*c)))
    }

    /// After a dump killed the tree: reap the root and wait until every pid of the
    /// session is free again (so the restore can reuse them).
    fn reap_after_dump(&mut self, members: &[i32]) {
        if self.ours {
            let _ = waitpid(Pid::from_raw(self.root), None);
            self.ours = false;
        }
        for &pid in members {
            wait_for("dumped process to vanish", || {
                (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
            });
        }
    }

    /// The tree now lives on as a restored process.
    fn restored(&mut self, pid: i32, is_child: bool) {
        if self.helper.is_none() {
            assert_eq!(pid, self.root, "CRIU restores the root under its old pid");
        }
        self.root = pid;
        self.ours = is_child;
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for pid in session_members(self.root) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if self.ours {
            let _ = waitpid(Pid::from_raw(self.root), None);
        }
        if let Some(helper) = self.helper {
            let _ = kill(Pid::from_raw(helper), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(helper), None);
        }
    }
}

#[test]
fn criu_reports_version_and_check_passes() {
    let criu = criu_or_skip!("criu_reports_version_and_check_passes");
    let v = criu.version().unwrap();
    assert!(v.number() >= 40100, "criu {v} is older than 4.1");
    criu.check().unwrap();
}

#[test]
fn dump_kills_tree_and_restore_continues_counting() {
    let criu = criu_or_skip!("dump_kills_tree_and_restore_continues_counting");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let mut tree = spawn_tree(dir.path(), Shape::default());
    tree.wait_count(|c| c >= 10, "count 10");
    let members = session_members(tree.root);

    let out = criu.dump(&DumpOptions::new(tree.root, &images)).unwrap();
    let stats = out.stats.expect("criu writes stats-dump");
    assert!(stats.pages_written > 0, "{stats:?}");
    assert!(
        !alive(tree.root),
        "dump without leave_running kills the tree"
    );
    tree.reap_after_dump(&members);
    let at_dump = tree.count();
    assert!(at_dump >= 10);

    let restored = criu.restore(RestoreOptions::new(&images)).unwrap();
    tree.restored(restored.pid, restored.is_child);
    assert!(restored.is_child);
    assert!(restored.stats.is_some_and(|s| s.pages_restored > 0));
    // Continues from the count it had, not from 1.
    let next = tree.wait_count(|c| c != at_dump, "count after restore");
    assert!(next > at_dump, "restored tree wrote {next} after {at_dump}");
    let later = tree.wait_count(|c| c > next, "count going on");
    assert!(later > next);
}

#[test]
fn work_dir_holds_the_logs() {
    let criu = criu_or_skip!("work_dir_holds_the_logs");
    let dir = TempDir::new();
    let (images, work) = (dir.sub("images"), dir.sub("work"));
    let mut tree = spawn_tree(dir.path(), Shape::default());
    let members = session_members(tree.root);
    let mut opts = DumpOptions::new(tree.root, &images);
    opts.common.work_dir = Some(work.clone());
    criu.dump(&opts).unwrap();
    tree.reap_after_dump(&members);
    assert!(work.join("dump.log").exists());
    assert!(!images.join("dump.log").exists());

    let mut opts = RestoreOptions::new(&images);
    opts.common.work_dir = Some(work.clone());
    opts.common.log_file = "again.log".into();
    let restored = criu.restore(opts).unwrap();
    tree.restored(restored.pid, restored.is_child);
    assert!(work.join("again.log").exists());
}

#[test]
fn leave_running_keeps_the_original_running() {
    let criu = criu_or_skip!("leave_running_keeps_the_original_running");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let mut tree = spawn_tree(dir.path(), Shape::default());
    let before = tree.wait_count(|c| c >= 5, "count 5");

    let mut opts = DumpOptions::new(tree.root, &images);
    opts.leave_running = true;
    criu.dump(&opts).unwrap();
    assert!(alive(tree.root));
    let after = tree.count();
    tree.wait_count(|c| c > after, "original counting on after dump");

    // The images are complete: kill the original and bring the dump back.
    let members = session_members(tree.root);
    for &pid in &members {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    tree.reap_after_dump(&members);
    let last = tree.count();
    let restored = criu.restore(RestoreOptions::new(&images)).unwrap();
    tree.restored(restored.pid, restored.is_child);
    let next = tree.wait_count(|c| c != last, "count after restore");
    assert!(
        next > before,
        "restored tree wrote {next}, dumped at >= {before}"
    );
}

#[test]
fn open_files_socketpair_and_child_survive_restore() {
    let criu = criu_or_skip!("open_files_socketpair_and_child_survive_restore");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let shape = Shape {
        with_child: true,
        ..Shape::default()
    };
    let mut tree = spawn_tree(dir.path(), shape);
    tree.wait_count(|c| c >= 5, "count 5");
    let members = session_members(tree.root);
    assert_eq!(members.len(), 2, "root and its child: {members:?}");
    let child = *members.iter().find(|&&p| p != tree.root).unwrap();

    criu.dump(&DumpOptions::new(tree.root, &images)).unwrap();
    tree.reap_after_dump(&members);
    let at_dump = tree.count();
    let echo_at_dump = read_u64(&tree.echo).unwrap();

    let restored = criu.restore(RestoreOptions::new(&images)).unwrap();
    tree.restored(restored.pid, restored.is_child);
    let mut now = session_members(tree.root);
    now.sort();
    let mut was = members.clone();
    was.sort();
    assert_eq!(
        now, was,
        "the same tree (root and child, same pids) is back"
    );
    assert!(alive(child));
    // The counter file (kept open across the dump) keeps being written ...
    let next = tree.wait_count(|c| c > at_dump, "count after restore");
    // ... and the child keeps getting counts over the restored socket pair.
    let echoed = wait_for("echo after restore", || {
        read_u64(&tree.echo).filter(|&e| e > echo_at_dump.max(at_dump))
    });
    assert!(next > at_dump && echoed > at_dump);
}

/// MiB the pre-dump test's counter touches (small: under TCG in the guest every page counts).
const PRE_DUMP_MIB: usize = 8;
/// Marks the pre-dump test's figures line.
const FIGURES: &str = "VESSEL-CRIU-FIGURES";

#[test]
fn pre_dump_then_dump_writes_fewer_pages() {
    let criu = criu_or_skip!("pre_dump_then_dump_writes_fewer_pages");
    if !criu.features().unwrap().mem_track {
        // Without soft-dirty bits CRIU cannot tell which pages changed since a pre-dump.
        skip(
            "pre_dump_then_dump_writes_fewer_pages",
            "kernel lacks dirty-page tracking (CONFIG_MEM_SOFT_DIRTY)",
        );
        return;
    }
    let dir = TempDir::new();
    let (full, pre, last) = (dir.sub("full"), dir.sub("pre"), dir.sub("last"));
    let mut tree = spawn_tree(
        dir.path(),
        Shape {
            mem_mib: PRE_DUMP_MIB,
            ..Shape::default()
        },
    );

    // A full dump of the running tree, for comparison.
    let mut opts = DumpOptions::new(tree.root, &full);
    opts.leave_running = true;
    let full_stats = criu.dump(&opts).unwrap().stats.unwrap();
    let touched = PRE_DUMP_MIB as u64 * 256; // 4 KiB pages
    assert!(full_stats.pages_written >= touched, "{full_stats:?}");

    let pre_stats = criu
        .pre_dump(&DumpOptions::new(tree.root, &pre))
        .unwrap()
        .stats
        .unwrap();
    assert!(pre_stats.pages_written >= touched, "{pre_stats:?}");
    let at_pre_dump = tree.count();
    tree.wait_count(|n| n > at_pre_dump, "count after pre-dump");

    let members = session_members(tree.root);
    let mut opts = DumpOptions::new(tree.root, &last);
    opts.track_mem = true;
    opts.parent_images = Some("../pre".into());
    let last_stats = criu.dump(&opts).unwrap().stats.unwrap();
    assert!(
        last_stats.pages_written < full_stats.pages_written,
        "incremental {last_stats:?} vs full {full_stats:?}"
    );
    assert!(last_stats.pages_skipped_parent > 0, "{last_stats:?}");
    // Read by criu_tests_in_qemu_guest (the guest runs this with --nocapture).
    tree.reap_after_dump(&members);
    // The counter dirties one page per tick: the final dump writes those (at most the
    // whole area), plus the stack and data pages it touches anyway. Where the area is
    // backed by a transparent huge page, soft-dirty tracks the whole 2 MiB (512 pages).
    let at_dump = tree.count();
    println!(
        "{FIGURES} full_dump_pages={} pre_dump_pages={} final_dump_pages={} final_skipped_parent={} ticks_since_pre_dump={}",
        full_stats.pages_written,
        pre_stats.pages_written,
        last_stats.pages_written,
        last_stats.pages_skipped_parent,
        at_dump.saturating_sub(at_pre_dump),
    );

    // The chain restores.
    let restored = criu.restore(RestoreOptions::new(&last)).unwrap();
    tree.restored(restored.pid, restored.is_child);
    let next = tree.wait_count(|c| c != at_dump, "count after restore");
    assert!(next > at_dump);
}

/// The pid of `pid` in each pid namespace it is in, outermost first (NSpid).
fn ns_pids(pid: i32) -> Vec<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn restore_into_new_pid_namespace() {
    let criu = criu_or_skip!("restore_into_new_pid_namespace");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let mut tree = spawn_tree(
        dir.path(),
        Shape {
            pid_ns: true,
            ..Shape::default()
        },
    );
    let ours = ns_pids(std::process::id() as i32).len();
    let nspids = ns_pids(tree.root);
    assert_eq!(nspids.len(), ours + 1, "{nspids:?}");
    assert_eq!(nspids.last(), Some(&1));
    tree.wait_count(|c| c >= 5, "count 5");
    let members = session_members(tree.root);

    criu.dump(&DumpOptions::new(tree.root, &images)).unwrap();
    tree.reap_after_dump(&members);
    let at_dump = tree.count();

    let restored = criu.restore(RestoreOptions::new(&images)).unwrap();
    tree.restored(restored.pid, restored.is_child);
    let nspids = ns_pids(tree.root);
    assert_eq!(
        nspids.len(),
        ours + 1,
        "a new pid namespace again: {nspids:?}"
    );
    assert_eq!(nspids.last(), Some(&1), "init of it again");
    let next = tree.wait_count(|c| c != at_dump, "count after restore");
    assert!(next > at_dump, "restored tree wrote {next} after {at_dump}");
}

/// Block until `fd` has 8 bytes to read (a minute at most) and return them as a count.
fn read_count_from(fd: &std::os::fd::OwnedFd) -> u64 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(60_000u16)).unwrap();
    assert_eq!(n, 1, "nothing to read within a minute");
    let mut b = [0u8; 8];
    let got = nix::unistd::read(fd, &mut b).unwrap();
    assert_eq!(got, 8);
    u64::from_le_bytes(b)
}

fn net_ns_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
}

#[test]
fn network_namespace_is_locked_and_restored() {
    let criu = criu_or_skip!("network_namespace_is_locked_and_restored");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let mut tree = spawn_tree(
        dir.path(),
        Shape {
            pid_ns: true,
            net_ns: true,
            ..Shape::default()
        },
    );
    let host_net = net_ns_of(std::process::id() as i32);
    assert_ne!(net_ns_of(tree.root), host_net);
    let members = session_members(tree.root);
    let mut scripts = Vec::new();
    // Default lock method: iptables-restore inside the tree's network namespace.
    criu.dump_with(&DumpOptions::new(tree.root, &images), &mut |n| {
        scripts.push(n.script.clone());
        Ok(())
    })
    .unwrap();
    assert!(scripts.iter().any(|s| s == "network-lock"), "{scripts:?}");
    tree.reap_after_dump(&members);
    let at_dump = tree.count();

    let mut scripts = Vec::new();
    let restored = criu
        .restore_with(RestoreOptions::new(&images), &mut |n| {
            scripts.push(n.script.clone());
            Ok(())
        })
        .unwrap();
    tree.restored(restored.pid, restored.is_child);
    assert!(scripts.iter().any(|s| s == "network-unlock"), "{scripts:?}");
    assert_ne!(
        net_ns_of(tree.root),
        host_net,
        "a network namespace of its own again"
    );
    let next = tree.wait_count(|c| c != at_dump, "count after restore");
    assert!(next > at_dump);
}

#[test]
fn restored_tree_inherits_new_stdout() {
    let criu = criu_or_skip!("restored_tree_inherits_new_stdout");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let (old_r, old_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut tree = spawn_tree(
        dir.path(),
        Shape {
            stdout: Some(old_w.as_raw_fd()),
            ..Shape::default()
        },
    );
    drop(old_w);
    assert!(read_count_from(&old_r) >= 1);
    let key = std::fs::read_link(format!("/proc/{}/fd/1", tree.root))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(key.starts_with("pipe:["), "{key}");
    tree.wait_count(|c| c >= 5, "count 5");
    let members = session_members(tree.root);
    criu.dump(&DumpOptions::new(tree.root, &images)).unwrap();
    tree.reap_after_dump(&members);
    let at_dump = tree.count();
    drop(old_r);

    // The restored tree writes into a new pipe, as a restored container's stdout would.
    let (new_r, new_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut opts = RestoreOptions::new(&images);
    opts.inherit_fds.push(InheritFd { key, fd: new_w });
    let restored = criu.restore(opts).unwrap();
    tree.restored(restored.pid, restored.is_child);
    let first = read_count_from(&new_r);
    assert!(
        first > at_dump,
        "first count on the new stdout {first}, dumped at {at_dump}"
    );
}

/// Serializes the terminal tests: CRIU restores an orphan pty under its old index in
/// the host's devpts, so no other pty of this process may take that index meanwhile.
static PTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Wait (a minute at most) for an 'x' on a pty master.
fn read_x_from(fd: &std::os::fd::OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let start = Instant::now();
    loop {
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(1_000u16)).unwrap();
        if n == 1 {
            let mut b = [0u8; 64];
            let got = nix::unistd::read(fd, &mut b).unwrap();
            if b[..got].contains(&b'x') {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no output on the pty"
        );
    }
}

#[test]
fn terminal_tree_restores_with_orphan_pts_master() {
    let criu = criu_or_skip!("terminal_tree_restores_with_orphan_pts_master");
    let _pts = PTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new();
    let images = dir.sub("images");
    let master = nix::pty::posix_openpt(
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
    )
    .unwrap();
    nix::pty::unlockpt(&master).unwrap();
    let master: std::os::fd::OwnedFd = master.into();
    let mut tree = spawn_tree(
        dir.path(),
        Shape {
            tty_master: Some(master.as_raw_fd()),
            ..Shape::default()
        },
    );
    read_x_from(&master);
    let members = session_members(tree.root);
    // Its terminal's master is ours, outside the tree.
    let mut opts = DumpOptions::new(tree.root, &images);
    opts.common.orphan_pts_master = true;
    criu.dump(&opts).unwrap();
    tree.reap_after_dump(&members);
    let at_dump = tree.count();

    let mut opts = RestoreOptions::new(&images);
    opts.common.orphan_pts_master = true;
    // Holding the old master kept its index from other ptys of the host until now.
    drop(master);
    let restored = criu.restore(opts).unwrap();
    tree.restored(restored.pid, restored.is_child);
    let new_master = restored
        .orphan_pts_master
        .expect("CRIU hands over the new pts master");
    read_x_from(&new_master);
    let next = tree.wait_count(|c| c != at_dump, "count after restore");
    assert!(next > at_dump);
}

#[test]
fn terminal_tree_restores_onto_a_terminal_of_the_callers() {
    let criu = criu_or_skip!("terminal_tree_restores_onto_a_terminal_of_the_callers");
    let _pts = PTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new();
    let images = dir.sub("images");
    let open_pty = || {
        let m = nix::pty::posix_openpt(
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        )
        .unwrap();
        nix::pty::unlockpt(&m).unwrap();
        let slave = nix::pty::ptsname_r(&m).unwrap();
        (std::os::fd::OwnedFd::from(m), slave)
    };
    let (master, _) = open_pty();
    let mut tree = spawn_tree(
        dir.path(),
        Shape {
            tty_master: Some(master.as_raw_fd()),
            ..Shape::default()
        },
    );
    read_x_from(&master);
    let key = tty_external_key(Path::new(&format!("/proc/{}/fd/0", tree.root))).unwrap();
    assert!(key.starts_with("tty["), "{key}");
    let mut opts = DumpOptions::new(tree.root, &images);
    opts.common.external.push(key.clone());
    let members = session_members(tree.root);
    criu.dump(&opts).unwrap();
    tree.reap_after_dump(&members);
    drop(master);

    // Another terminal of ours takes the place of the one it had.
    let (master2, slave2) = open_pty();
    let slave2 = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(slave2)
        .unwrap();
    let mut opts = RestoreOptions::new(&images);
    opts.inherit_fds.push(InheritFd {
        key,
        fd: slave2.into(),
    });
    let restored = criu.restore(opts).unwrap();
    tree.restored(restored.pid, restored.is_child);
    assert!(restored.orphan_pts_master.is_none());
    read_x_from(&master2);
}

#[test]
fn terminal_tree_without_terminal_options_fails_clearly() {
    let criu = criu_or_skip!("terminal_tree_without_terminal_options_fails_clearly");
    let _pts = PTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new();
    let images = dir.sub("images");
    let master = nix::pty::posix_openpt(
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
    )
    .unwrap();
    nix::pty::unlockpt(&master).unwrap();
    let master: std::os::fd::OwnedFd = master.into();
    let tree = spawn_tree(
        dir.path(),
        Shape {
            tty_master: Some(master.as_raw_fd()),
            ..Shape::default()
        },
    );
    let err = criu
        .dump(&DumpOptions::new(tree.root, &images))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("criu dump failed: Error (criu/tty.c"),
        "CRIU's reason comes first: {msg}"
    );
    assert!(msg.contains("without correspond master peer"), "{msg}");
    assert!(alive(tree.root), "a failed dump leaves the tree running");
}

#[test]
fn restore_notifications_reach_the_handler() {
    let criu = criu_or_skip!("restore_notifications_reach_the_handler");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let mut tree = spawn_tree(dir.path(), Shape::default());
    let members = session_members(tree.root);
    let mut dumped = Vec::new();
    criu.dump_with(&DumpOptions::new(tree.root, &images), &mut |n| {
        dumped.push(n.script.clone());
        Ok(())
    })
    .unwrap();
    tree.reap_after_dump(&members);
    assert!(dumped.iter().any(|s| s == "post-dump"), "{dumped:?}");

    let mut seen = Vec::new();
    let restored = criu
        .restore_with(RestoreOptions::new(&images), &mut |n| {
            seen.push((n.script.clone(), n.pid));
            Ok(())
        })
        .unwrap();
    tree.restored(restored.pid, restored.is_child);
    let post = seen.iter().find(|(s, _)| s == "post-restore");
    assert!(post.is_some(), "{seen:?}");
    let c = tree.count();
    tree.wait_count(|n| n > c, "count after restore");
}

#[test]
fn refused_notification_aborts_restore_and_leaves_nothing() {
    let criu = criu_or_skip!("refused_notification_aborts_restore_and_leaves_nothing");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let mut tree = spawn_tree(dir.path(), Shape::default());
    let members = session_members(tree.root);
    criu.dump(&DumpOptions::new(tree.root, &images)).unwrap();
    tree.reap_after_dump(&members);

    let err = criu
        .restore_with(RestoreOptions::new(&images), &mut |n| {
            if n.script == "post-restore" {
                Err("network not ready".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CriuError::Notify { .. }), "{msg}");
    assert!(
        msg.contains("post-restore") && msg.contains("network not ready"),
        "{msg}"
    );
    let _ = waitpid(
        Pid::from_raw(tree.root),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
    wait_for("aborted tree to be gone", || {
        session_members(tree.root).is_empty().then_some(())
    });
    let _ = waitpid(Pid::from_raw(tree.root), None);
}

/// A container-like tree: busybox `sh` as init of new pid and mount namespaces, its
/// root pivoted into a copy of the busybox rootfs, with `data/` of the test dir
/// bind-mounted at `/data` (an external mount). Returns the tree and its rootfs.
fn spawn_container(dir: &Path, busybox: &Path) -> (Tree, PathBuf) {
    let rootfs = dir.join("rootfs");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(busybox)
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(st.success());
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(rootfs.join("data")).unwrap();
    let nsroot = dir.join("nsroot");
    let c = |p: &Path| cstring(p);
    let (rootfs_c, data_c, target_c, nsroot_c) =
        (c(&rootfs), c(&data), c(&rootfs.join("data")), c(&nsroot));
    let script = c"i=0; while :; do i=$((i+1)); echo $i > /data/count; sleep 0.1; done";
    let argv = [
        c"sh".as_ptr(),
        c"-c".as_ptr(),
        script.as_ptr(),
        std::ptr::null(),
    ];
    let envp = [c"PATH=/bin:/sbin:/usr/bin".as_ptr(), std::ptr::null()];
    // SAFETY: fork() in a multi-threaded process; the child only makes raw system calls
    // on memory prepared before the fork and ends in execve or _exit.
    let helper = unsafe { libc::fork() };
    assert!(helper >= 0);
    if helper == 0 {
        // SAFETY: raw system calls on the C strings and arrays prepared above.
        unsafe {
            libc::close_range(3, u32::MAX, 0);
            if libc::unshare(libc::CLONE_NEWPID) < 0 {
                libc::_exit(5);
            }
            let init = libc::fork();
            if init > 0 {
                let f = libc::open(
                    nsroot_c.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                    0o644,
                );
                libc::write(f, init.to_le_bytes().as_ptr().cast(), 4);
                libc::close(f);
                let mut status = 0;
                libc::waitpid(init, &mut status, 0);
                libc::_exit(0);
            }
            // pid 1 of the new pid namespace.
            libc::setsid();
            let none = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) < 0
                || libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) < 0
                || libc::mount(
                    rootfs_c.as_ptr(),
                    rootfs_c.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) < 0
                || libc::mount(
                    data_c.as_ptr(),
                    target_c.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) < 0
                || libc::chdir(rootfs_c.as_ptr()) < 0
                || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) < 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) < 0
                || libc::chdir(c"/".as_ptr()) < 0
            {
                libc::_exit(6);
            }
            // Stdio on a file inside the container (files of the host are out of reach).
            let log = libc::open(c"/data/log".as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o644);
            for fd in 0..3 {
                libc::dup2(log, fd);
            }
            libc::close_range(3, u32::MAX, 0);
            libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let mut tree = Tree {
        root: helper,
        ours: false,
        helper: Some(helper),
        count: data.join("count"),
        echo: data.join("echo"),
    };
    tree.root = wait_for("container init", || {
        let b = std::fs::read(&nsroot).ok()?;
        Some(i32::from_le_bytes(b.get(..4)?.try_into().ok()?))
    });
    // busybox writes the count as text.
    wait_for("first count", || {
        std::fs::read_to_string(&tree.count)
            .ok()
            .filter(|s| s.trim().parse::<u64>().is_ok())
    });
    (tree, rootfs)
}

fn text_count(tree: &Tree) -> Option<u64> {
    std::fs::read_to_string(&tree.count)
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn container_like_tree_restores_with_root_and_external_mount() {
    let name = "container_like_tree_restores_with_root_and_external_mount";
    let criu = criu_or_skip!(name);
    let busybox = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/.cache/busybox/rootfs");
    if !busybox.join("bin/busybox").exists() {
        skip(name, "busybox rootfs fixture missing (fixtures/busybox.sh)");
        return;
    }
    let dir = TempDir::new();
    let images = dir.sub("images");
    let (mut tree, rootfs) = spawn_container(dir.path(), &busybox);
    wait_for("count 5", || text_count(&tree).filter(|&c| c >= 5));
    let members = session_members(tree.root);

    let mut opts = DumpOptions::new(tree.root, &images);
    opts.external_mounts.push(ExternalMount {
        key: "data".into(),
        path: "/data".into(),
    });
    opts.common.network_lock = NetworkLock::Skip;
    criu.dump(&opts).unwrap();
    tree.reap_after_dump(&members);
    let at_dump = text_count(&tree).unwrap();

    // The checkpoint says which external mounts it needs ...
    let needed = external_mounts(&images).unwrap();
    assert_eq!(
        needed,
        vec![ExternalMountRecord {
            key: "data".into(),
            mountpoint: "/data".into()
        }]
    );
    // ... and a restore without a host path for one is refused, naming it.
    let mut opts = RestoreOptions::new(&images);
    opts.root = Some(rootfs.clone());
    let err = criu.restore(opts).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, CriuError::MissingExternalMount { key, mountpoint } if key == "data" && mountpoint == "/data"),
        "{msg}"
    );
    assert!(session_members(tree.root).is_empty());

    let mut opts = RestoreOptions::new(&images);
    opts.root = Some(rootfs.clone());
    opts.external_mounts.push(ExternalMount {
        key: "data".into(),
        path: dir.path().join("data"),
    });
    opts.common.network_lock = NetworkLock::Skip;
    let restored = criu.restore(opts).unwrap();
    tree.restored(restored.pid, restored.is_child);
    assert_eq!(ns_pids(tree.root).last(), Some(&1));
    // Its root is the rootfs (the test dir of the host is not in there), with /data a
    // mount of its own again.
    let root = PathBuf::from(format!("/proc/{}/root", tree.root));
    assert!(root.join("bin/busybox").exists());
    assert!(!root.join(dir.path().strip_prefix("/").unwrap()).exists());
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", tree.root)).unwrap();
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/data")),
        "{mountinfo}"
    );
    let next = wait_for("count after restore", || {
        text_count(&tree).filter(|&c| c != at_dump)
    });
    assert!(
        next > at_dump,
        "restored container wrote {next} after {at_dump}"
    );
}

/// A v1 cgroup this test created (below the test process's own), thawed and removed
/// on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    /// Create `name` in controller `ctrl` below our own cgroup there; None without v1 `ctrl`.
    fn new(ctrl: &str, name: &str) -> Option<Cgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == ctrl)
                .then(|| path.to_string())
        })?;
        let base = Path::new("/sys/fs/cgroup").join(ctrl);
        if !base.join("cgroup.procs").exists() {
            return None;
        }
        let path = base.join(rel.trim_start_matches('/')).join(name);
        std::fs::create_dir(&path).ok()?;
        Some(Cgroup(path))
    }

    fn add(&self, pid: i32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.0.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        for _ in 0..500 {
            for pid in self.procs() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("could not remove cgroup {}", self.0.display());
    }
}

#[test]
fn cgroups_are_kept_and_freezer_used() {
    let name = "cgroups_are_kept_and_freezer_used";
    let criu = criu_or_skip!(name);
    let id = format!("vessel-criu-{}-cg", std::process::id());
    let (Some(freezer), Some(pids)) = (Cgroup::new("freezer", &id), Cgroup::new("pids", &id))
    else {
        skip(
            name,
            "no cgroup v1 freezer and pids hierarchies to create cgroups in",
        );
        return;
    };
    let dir = TempDir::new();
    let images = dir.sub("images");
    let mut tree = spawn_tree(dir.path(), Shape::default());
    freezer.add(tree.root);
    pids.add(tree.root);
    tree.wait_count(|c| c >= 3, "count 3");
    let members = session_members(tree.root);

    let mut opts = DumpOptions::new(tree.root, &images);
    opts.common.manage_cgroups = Some(CgroupMode::Soft);
    opts.freeze_cgroup = Some(freezer.0.clone());
    criu.dump(&opts).unwrap();
    tree.reap_after_dump(&members);
    assert!(freezer.procs().is_empty() && pids.procs().is_empty());
    let at_dump = tree.count();

    let mut opts = RestoreOptions::new(&images);
    opts.common.manage_cgroups = Some(CgroupMode::Soft);
    let restored = criu.restore(opts).unwrap();
    tree.restored(restored.pid, restored.is_child);
    assert_eq!(
        freezer.procs(),
        vec![tree.root],
        "back in its freezer cgroup"
    );
    assert_eq!(pids.procs(), vec![tree.root], "back in its pids cgroup");
    let state = std::fs::read_to_string(freezer.0.join("freezer.state")).unwrap();
    assert_eq!(state.trim(), "THAWED");
    let next = tree.wait_count(|c| c != at_dump, "count after restore");
    assert!(next > at_dump);
}

#[test]
fn feature_check_answers() {
    let criu = criu_or_skip!("feature_check_answers");
    let f = criu.features().unwrap();
    // What the kernel says: soft-dirty bits exist only with CONFIG_MEM_SOFT_DIRTY, in
    // which case /proc/PID/pagemap entries carry bit 55 for freshly written pages.
    let soft_dirty = soft_dirty_works();
    assert_eq!(f.mem_track, soft_dirty, "{f:?}");
    if qemu_guest::in_guest() {
        // The guest kernel is built with CONFIG_MEM_SOFT_DIRTY (checked before booting it).
        assert!(f.mem_track, "{f:?}");
    }
}

/// Whether a page this process just wrote shows the soft-dirty bit (55) in pagemap.
fn soft_dirty_works() -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let page = vec![1u8; 8192];
    let addr = page.as_ptr() as u64;
    let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
    f.seek(SeekFrom::Start((addr / 4096) * 8)).unwrap();
    let mut e = [0u8; 8];
    f.read_exact(&mut e).unwrap();
    let entry = u64::from_le_bytes(e);
    assert!(entry & (1 << 63) != 0, "page present");
    entry & (1 << 55) != 0
}

/// A pre-dump where the kernel cannot track memory fails with CRIU's reason.
#[test]
fn pre_dump_without_mem_tracking_says_why() {
    let criu = criu_or_skip!("pre_dump_without_mem_tracking_says_why");
    if criu.features().unwrap().mem_track {
        skip(
            "pre_dump_without_mem_tracking_says_why",
            "this kernel tracks memory (pre_dump_then_dump_writes_fewer_pages covers it)",
        );
        return;
    }
    let dir = TempDir::new();
    let images = dir.sub("images");
    let tree = spawn_tree(dir.path(), Shape::default());
    let err = criu
        .pre_dump(&DumpOptions::new(tree.root, &images))
        .unwrap_err();
    assert!(
        err.to_string().contains("Tracking memory is not available"),
        "{err}"
    );
    assert!(
        alive(tree.root),
        "a failed pre-dump leaves the tree running"
    );
    let c = tree.count();
    tree.wait_count(|n| n > c, "counting on after the failed pre-dump");
}

#[test]
fn dump_streams_pages_to_a_page_server() {
    let criu = criu_or_skip!("dump_streams_pages_to_a_page_server");
    let dir = TempDir::new();
    let (source, target) = (dir.sub("source"), dir.sub("target"));
    let mut tree = spawn_tree(
        dir.path(),
        Shape {
            mem_mib: 4,
            ..Shape::default()
        },
    );
    let server = criu
        .start_page_server(&target, "127.0.0.1".parse().unwrap(), 0)
        .unwrap();
    assert!(server.port() != 0 && server.pid().is_some());

    let members = session_members(tree.root);
    let mut opts = DumpOptions::new(tree.root, &source);
    opts.page_server = Some(std::net::SocketAddr::from(([127, 0, 0, 1], server.port())));
    let stats = criu.dump(&opts).unwrap().stats.unwrap();
    assert!(stats.pages_written >= 1024, "{stats:?}");
    tree.reap_after_dump(&members);
    server.wait().unwrap();

    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let is_pages = |n: &String| n.starts_with("pages-");
    assert!(!names(&source).iter().any(is_pages), "{:?}", names(&source));
    assert!(names(&target).iter().any(is_pages), "{:?}", names(&target));

    // On the "target": the source's images next to the pages, then restore.
    for n in names(&source) {
        std::fs::copy(source.join(&n), target.join(&n)).unwrap();
    }
    let at_dump = tree.count();
    let restored = criu.restore(RestoreOptions::new(&target)).unwrap();
    tree.restored(restored.pid, restored.is_child);
    let next = tree.wait_count(|c| c != at_dump, "count after restore");
    assert!(next > at_dump);
}

#[test]
fn page_server_on_a_busy_port_is_a_clear_error() {
    let criu = criu_or_skip!("page_server_on_a_busy_port_is_a_clear_error");
    let dir = TempDir::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let err = criu
        .start_page_server(dir.path(), "127.0.0.1".parse().unwrap(), port)
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("page-server"), "{msg}");
    assert!(
        msg.contains("Address already in use") || msg.contains("bind"),
        "{msg}"
    );
}

#[test]
fn dump_of_missing_pid_is_a_clear_error() {
    let criu = criu_or_skip!("dump_of_missing_pid_is_a_clear_error");
    let dir = TempDir::new();
    let images = dir.sub("images");
    // pid_max is at most 2^22: this pid cannot exist.
    let pid = (1 << 22) + 17;
    let err = criu.dump(&DumpOptions::new(pid, &images)).unwrap_err();
    assert!(matches!(err, CriuError::NoSuchProcess { pid: p } if p == pid));
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), 0);
}

#[test]
fn restore_from_missing_dir_is_a_clear_error() {
    let criu = criu_or_skip!("restore_from_missing_dir_is_a_clear_error");
    let dir = TempDir::new();
    let missing = dir.path().join("no-such-images");
    let err = criu.restore(RestoreOptions::new(&missing)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, CriuError::Dir { what: "images", .. }),
        "{msg}"
    );
    assert!(msg.contains("no-such-images"), "{msg}");
    assert!(!missing.exists());
}

#[test]
fn restore_from_corrupt_images_fails_and_leaves_nothing() {
    let criu = criu_or_skip!("restore_from_corrupt_images_fails_and_leaves_nothing");
    let dir = TempDir::new();
    let images = dir.sub("images");
    let mut tree = spawn_tree(dir.path(), Shape::default());
    tree.wait_count(|c| c >= 3, "count 3");
    let members = session_members(tree.root);
    criu.dump(&DumpOptions::new(tree.root, &images)).unwrap();
    tree.reap_after_dump(&members);

    // Truncate the root's core image: CRIU forks the task, then cannot read its state.
    let core = images.join(format!("core-{}.img", tree.root));
    std::fs::write(&core, b"\x01\x02\x03").unwrap();
    let err = criu.restore(RestoreOptions::new(&images)).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(err, CriuError::Failed { op: "restore", .. }),
        "{msg}"
    );
    assert!(msg.contains("restore.log"), "{msg}");
    assert!(
        msg.contains("Error"),
        "the log's error lines are quoted: {msg}"
    );
    // Nothing half-restored is left: reap a possible zombie child, then look.
    let _ = waitpid(
        Pid::from_raw(tree.root),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
    assert!(
        session_members(tree.root).is_empty(),
        "{:?}",
        session_members(tree.root)
    );

    // Garbage instead of an image directory's inventory fails early, just as clearly.
    std::fs::write(images.join("inventory.img"), b"garbage").unwrap();
    let err = criu.restore(RestoreOptions::new(&images)).unwrap_err();
    assert!(matches!(err, CriuError::Failed { .. }), "{err}");
    assert!(session_members(tree.root).is_empty());
}

#[test]
fn missing_criu_binary_is_a_clear_error() {
    let dir = TempDir::new();
    let criu = Criu::new(dir.path().join("no-criu"));
    let err = criu.version().unwrap_err();
    assert!(matches!(err, CriuError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("no-criu"), "{err}");
}

/// What [`timed_dump_and_restore`] measured.
struct DumpRestore {
    dump: Duration,
    dump_stats: DumpStats,
    restore: Duration,
    restore_stats: RestoreStats,
}

/// Dump `tree` with `opts` (which must not leave it running), reap it, restore it from
/// `opts`' image directory and adopt the restored tree; times both calls.
fn timed_dump_and_restore(criu: &Criu, tree: &mut Tree, opts: &DumpOptions) -> DumpRestore {
    let members = session_members(tree.root);
    let t = Instant::now();
    let dump_stats = criu.dump(opts).unwrap().stats.unwrap();
    let dump = t.elapsed();
    tree.reap_after_dump(&members);
    let t = Instant::now();
    let restored = criu
        .restore(RestoreOptions::new(&opts.common.images_dir))
        .unwrap();
    let restore = t.elapsed();
    tree.restored(restored.pid, restored.is_child);
    DumpRestore {
        dump,
        dump_stats,
        restore,
        restore_stats: restored.stats.unwrap(),
    }
}

/// Dump and restore times for 16 and 256 MiB of touched memory. Figures, not assertions:
/// `cargo test -p vessel-runtime --test criu -- --ignored --nocapture criu_timings`.
#[test]
#[ignore]
fn criu_timings() {
    let criu = criu_or_skip!("criu_timings");
    for mib in [16usize, 256] {
        let dir = TempDir::new();
        let images = dir.sub("images");
        let mut tree = spawn_tree(
            dir.path(),
            Shape {
                mem_mib: mib,
                ..Shape::default()
            },
        );
        let opts = DumpOptions::new(tree.root, &images);
        let DumpRestore {
            dump,
            dump_stats: stats,
            restore,
            restore_stats: rs,
        } = timed_dump_and_restore(&criu, &mut tree, &opts);
        println!(
            "criu {mib:>3} MiB: dump {:>7.1} ms ({} pages written, frozen {:.1} ms), restore {:>7.1} ms ({} pages, criu restore_time {:.1} ms)",
            dump.as_secs_f64() * 1e3,
            stats.pages_written,
            f64::from(stats.frozen_time_us) / 1e3,
            restore.as_secs_f64() * 1e3,
            rs.pages_restored,
            f64::from(rs.restore_time_us) / 1e3,
        );
    }
}

/// The tests `criu_tests_in_qemu_guest` runs inside the guest: the memory-tracking ones
/// (this host's kernel lacks CONFIG_MEM_SOFT_DIRTY) and plain dump/restore paths as a
/// baseline for the guest's CRIU setup. Every CRIU call costs seconds under TCG, so the
/// list is short: `criu check` runs in the guest's script anyway (and fails the run), the
/// pre-dump test also covers `leave_running`; tests needing iptables, a v1 freezer or a
/// terminal stay on the host.
const GUEST_TESTS: &[&str] = &[
    "feature_check_answers",
    "dump_kills_tree_and_restore_continues_counting",
    "open_files_socketpair_and_child_survive_restore",
    "pre_dump_then_dump_writes_fewer_pages",
    "dump_streams_pages_to_a_page_server",
];

/// Kernel modules CRIU needs that the cloud kernel builds as modules, in load order:
/// sock_diag for unix/inet/netlink/packet sockets, and what its start-up feature probe
/// (kerndat) tries: tun, veth and nf_tables (libnftables must be able to talk to it).
const GUEST_MODULES: &[&str] = &[
    "kernel/drivers/net/tun.ko",
    "kernel/drivers/net/veth.ko",
    "kernel/net/netfilter/nfnetlink.ko",
    "kernel/lib/libcrc32c.ko",
    "kernel/net/netfilter/nf_tables.ko",
    "kernel/net/unix/unix_diag.ko",
    "kernel/net/ipv4/inet_diag.ko",
    "kernel/net/ipv4/tcp_diag.ko",
    "kernel/net/ipv4/udp_diag.ko",
    "kernel/net/ipv4/raw_diag.ko",
    "kernel/net/netlink/netlink_diag.ko",
    "kernel/net/packet/af_packet_diag.ko",
];

/// A qemu guest on Debian's cloud kernel (which tracks dirty pages) holding the fixture's
/// CRIU, its modules and this test binary as `/bin/vessel-criu-tests`; `tests` is the shell
/// line that runs the tests inside (after `criu check`). Returns the guest and its kernel,
/// or why it cannot be had.
fn criu_guest(tests: &str) -> Result<(Guest, PathBuf), String> {
    let kernel = qemu_guest::kernel()?;
    if !qemu_guest::kernel_has("MEM_SOFT_DIRTY") || !qemu_guest::kernel_has("CHECKPOINT_RESTORE") {
        return Err("guest kernel lacks CONFIG_MEM_SOFT_DIRTY or CONFIG_CHECKPOINT_RESTORE".into());
    }
    // The host's fixture run builds (and checks) the CRIU tree the guest gets.
    let wrapper = criu()?.path().to_path_buf();
    let dir = wrapper.parent().ok_or("criu wrapper has no directory")?;
    let root = dir.join("root");
    let script = format!(
        "/fixtures/criu/criu check || exit 1\n\
         echo guest > /fixtures/criu/check-ok # what fixtures/criu.sh stamps after a check\n\
         export VESSEL_FIXTURES=/fixtures\n\
         {tests}"
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut guest = Guest::new(&script)
        .binary(&exe, "vessel-criu-tests")
        .copy(&wrapper, "/fixtures/criu/criu")
        .memory("768M")
        .append("cgroup_no_v1=all");
    // criu runs under its own loader from these; the rest of the tree (docs) stays out.
    for sub in ["usr/sbin", "usr/lib", "usr/lib64"] {
        guest = guest.copy(&root.join(sub), &format!("/fixtures/criu/root/{sub}"));
    }
    for m in GUEST_MODULES {
        guest = guest.module(m);
    }
    Ok((guest, kernel))
}

/// Marks a line of [`predump_downtime_rounds`]' figures.
const DOWNTIME: &str = "VESSEL-PREDUMP-DOWNTIME";

/// Migration downtime (final dump + restore) after 0, 1 and 2 pre-dump rounds, for 16 and
/// 64 MiB of touched memory that the process keeps dirtying (one page per 100 ms). Needs
/// soft-dirty tracking, so it runs in the guest: see [`criu_predump_downtime_in_qemu_guest`].
/// Figures, not assertions (beyond "the chain restores").
#[test]
#[ignore]
fn predump_downtime_rounds() {
    let criu = criu_or_skip!("predump_downtime_rounds");
    if !criu.features().unwrap().mem_track {
        return skip(
            "predump_downtime_rounds",
            "kernel lacks dirty-page tracking (CONFIG_MEM_SOFT_DIRTY)",
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for mib in [16usize, 64] {
        for rounds in 0..=2usize {
            let dir = TempDir::new();
            let mut tree = spawn_tree(
                dir.path(),
                Shape {
                    mem_mib: mib,
                    no_huge_pages: true,
                    ..Shape::default()
                },
            );
            let mut parent: Option<PathBuf> = None;
            for r in 0..rounds {
                let name = format!("pre{r}");
                let mut opts = DumpOptions::new(tree.root, dir.sub(&name));
                opts.track_mem = true;
                opts.parent_images = parent.take();
                criu.pre_dump(&opts).unwrap();
                parent = Some(format!("../{name}").into());
                // The tree runs (and dirties pages) between rounds, as during a transfer.
                let at = tree.count();
                tree.wait_count(|n| n > at, "count after pre-dump");
            }
            let mut opts = DumpOptions::new(tree.root, dir.sub("final"));
            opts.track_mem = rounds > 0;
            opts.parent_images = parent;
            let DumpRestore {
                dump,
                dump_stats: stats,
                restore,
                ..
            } = timed_dump_and_restore(&criu, &mut tree, &opts);
            let at_restore = tree.count();
            tree.wait_count(|c| c != at_restore, "count after restore");
            println!(
                "{DOWNTIME} mib={mib} predumps={rounds} downtime_ms={:.0} dump_ms={:.0} restore_ms={:.0} frozen_ms={:.0} final_pages={} skipped_parent={}",
                ms(dump + restore),
                ms(dump),
                ms(restore),
                f64::from(stats.frozen_time_us) / 1e3,
                stats.pages_written,
                stats.pages_skipped_parent,
            );
        }
    }
}

/// Runs [`predump_downtime_rounds`] in the qemu guest and prints its figures. Under TCG
/// every CRIU call has a fixed cost of seconds (its start-up probes), so compare the rows
/// with each other, not with the host's. Takes a few minutes:
/// `cargo test -p vessel-runtime --test criu -- --ignored --nocapture --exact criu_predump_downtime_in_qemu_guest`.
#[test]
#[ignore]
fn criu_predump_downtime_in_qemu_guest() {
    const NAME: &str = "criu_predump_downtime_in_qemu_guest";
    if qemu_guest::in_guest() {
        return;
    }
    let script = "/bin/vessel-criu-tests --exact --ignored --test-threads=1 --nocapture predump_downtime_rounds";
    let (guest, kernel) = match criu_guest(script) {
        Ok(g) => g,
        Err(reason) => return skip(NAME, &reason),
    };
    let run = guest.run(&kernel);
    run.assert_ok("pre-dump downtime rounds");
    let rows: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|l| l.split_once(DOWNTIME).map(|(_, f)| f.trim()))
        .collect();
    assert_eq!(rows.len(), 6, "one row per size and round count");
    for r in rows {
        println!("pre-dump downtime in the guest: {r}");
    }
}

/// Boots Debian's cloud kernel (which tracks dirty pages) in qemu with the fixture's CRIU
/// and this test binary, and runs [`GUEST_TESTS`] there; passes only if all of them passed
/// in the guest. Prints the incremental-dump figures the guest measured.
#[test]
fn criu_tests_in_qemu_guest() {
    const NAME: &str = "criu_tests_in_qemu_guest";
    if qemu_guest::in_guest() {
        return; // we are the guest: GUEST_TESTS run instead
    }
    let script = format!(
        "/bin/vessel-criu-tests --exact --test-threads=1 --nocapture {}",
        GUEST_TESTS.join(" ")
    );
    let (guest, kernel) = match criu_guest(&script) {
        Ok(g) => g,
        Err(reason) => return skip(NAME, &reason),
    };
    let run = guest.run(&kernel);
    run.assert_ok("CRIU tests");
    assert_eq!(
        run.passed() as usize,
        GUEST_TESTS.len(),
        "every guest test ran"
    );
    let figures = run
        .lines
        .iter()
        .find_map(|l| l.split_once(FIGURES).map(|(_, f)| f.trim().to_string()))
        .expect("the guest's pre-dump test printed its figures");
    let value = |key: &str| -> u64 {
        figures
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing in {figures}"))
    };
    let (full, last) = (value("full_dump_pages"), value("final_dump_pages"));
    println!("CRIU in the guest: {figures}");
    assert!(last < full, "{figures}");
}
