//! Checkpoint and restore of process trees through CRIU's RPC interface (`criu swrk`).
//!
//! Each operation starts one `criu swrk` child, sends it one protobuf request over a
//! socket pair and reads its answer (answering CRIU's notifications on the way); CRIU's
//! command-line output is never parsed. Errors carry CRIU's message and the error lines
//! of its log ([`CriuError::Failed`]).
//!
//! ```no_run
//! use vessel_runtime::criu::{Criu, DumpOptions, RestoreOptions};
//! # fn main() -> Result<(), vessel_runtime::criu::CriuError> {
//! let criu = Criu::new("/usr/sbin/criu");
//! criu.check()?;
//! let dump = criu.dump(&DumpOptions::new(1234, "/var/lib/x/checkpoint"))?;
//! println!("{} pages written", dump.stats.map_or(0, |s| s.pages_written));
//! let restored = criu.restore(RestoreOptions::new("/var/lib/x/checkpoint"))?;
//! println!("restored as pid {}", restored.pid);
//! # Ok(()) }
//! ```
//!
//! # Incremental dumps
//! [`Criu::pre_dump`] copies memory while the tree keeps running and starts dirty-page
//! tracking; a following [`Criu::dump`] with [`DumpOptions::track_mem`] and
//! [`DumpOptions::parent_images`] pointing at the pre-dump then writes only pages
//! changed since ([`DumpStats::pages_skipped_parent`] counts the rest). Restore needs the
//! whole chain on disk. This is the basis of live migration: pre-dump(s) while the
//! container runs, copy, final short dump, copy the delta, restore on the target.
//! Pages can also go straight to the target: [`Criu::start_page_server`] there, and
//! [`DumpOptions::page_server`] on the source; the other images are then copied next to
//! the pages before the restore.
//! Incremental dumps need the kernel's soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`): ask
//! [`Criu::features`] (`mem_track`) first; without them a pre-dump fails with CRIU's
//! "Tracking memory is not available", and migration must fall back to a plain dump.
//!
//! # What the container integration passes
//! To checkpoint a container (runc's `checkpoint`), the runtime fills [`DumpOptions`]:
//! - `pid`: the container's init as seen from the host.
//! - `common.images_dir` (created by the runtime), `common.work_dir` for logs.
//! - `external_mounts`: every bind mount of config.json whose source is outside the
//!   rootfs, keyed by its destination (`ExternalMount { key: dest, path: dest }`), plus
//!   `/dev` style mounts the runtime recreates; `skip_mounts` for those it does not want.
//!   Masked/readonly paths mounted by the runtime are bind mounts too and need the same.
//! - `common.manage_cgroups`: `Some(CgroupMode::Soft)` (runc's default) to record the
//!   container's cgroups; `cgroup_dump_controllers`: the hierarchies the runtime manages
//!   (CRIU records the whole subtree below the tree's cgroup of each hierarchy, which for
//!   an unmanaged `name=systemd:/` is every workload's); `freeze_cgroup`: the container's
//!   freezer cgroup so CRIU freezes it atomically instead of ptrace-stopping every task
//!   (a group the caller froze already is left frozen).
//! - without a cgroup namespace, the binds of host cgroup directories that make up the
//!   container's `/sys/fs/cgroup` are `external_mounts` too, bound at restore to the
//!   restored container's cgroup directories.
//! - `common.external`: `net[INODE]:KEY` when the network namespace is external (a path
//!   in config.json) so it is not dumped; `common.ext_unix_sk`, `tcp_established`,
//!   `file_locks`, `shell_job` from the checkpoint command line; `leave_running` for
//!   `--leave-running`; `parent_images`/`track_mem` for `--parent-path`/pre-dump.
//! - `common.network_lock`: `Skip` when the container has no network namespace of its
//!   own (nothing to lock) or the caller locks it; the default (iptables) runs the
//!   host's `iptables-restore` inside the container's network namespace.
//! - `common.orphan_pts_master` when the container has a terminal (its pty master is
//!   the runtime's, outside the tree), for dump and restore alike.
//!
//! Every open file of the container must be reachable inside its mount namespace, or
//! be a pipe, socket or terminal: a descriptor on a host file (say the host's
//! `/dev/null` inherited at create time) makes the dump fail ("Can't lookup mount").
//!
//! To restore it (runc's `restore`), [`RestoreOptions`]:
//! - `root`: the bundle's rootfs directory; CRIU rebuilds the container's mount
//!   namespace on it (a plain directory works, as the tests show).
//! - `external_mounts`: the same keys, each bound to its host source.
//! - `inherit_fds`: new stdio for the container keyed by the pipes it had at dump
//!   (`pipe:[INODE]`, read from `/proc/PID/fd/N` and saved by the runtime at
//!   checkpoint time, as runc's descriptors.json), or `common.orphan_pts_master` when
//!   it had a terminal: the new master comes back in
//!   [`RestoredProcess::orphan_pts_master`] for the console socket.
//! - `common.manage_cgroups` and `cgroup_roots`: the container's (possibly new) cgroup
//!   path. With `Soft`, cgroups that exist are used as they are (the runtime may create
//!   them first); the tree is put back in the cgroups it was dumped from otherwise.
//! - `empty_net_ns` or `join_namespaces` (`net` → a prepared netns file) for networking;
//!   the `setup-namespaces` notification ([`Criu::restore_with`]) gives the restored
//!   init's pid before it runs, when the runtime can configure its network namespace.
//! - `rst_sibling` (default): the container init becomes the runtime's child, so the
//!   runtime can wait for it like a freshly started one.
//!
//! CRIU recreates the namespaces recorded in the images (the container's pid, mount,
//! uts, ipc, net namespaces are new ones, distinct from criu's own); a tree dumped with a
//! pid namespace of its own therefore restores into a new pid namespace with the same
//! in-namespace pids, which is what lets a container restore next to its original.

mod error;
mod mounts;
mod options;
mod page_server;
mod stats;
mod swrk;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rust_criu::rust_criu_protobuf::rpc;

pub use error::CriuError;
pub use mounts::{external_mounts, ExternalMountRecord};
pub use options::{
    tty_external_key, CgroupMode, CommonOptions, DumpOptions, ExternalMount, InheritFd,
    JoinNamespace, NetworkLock, RestoreOptions,
};
pub use page_server::PageServer;
pub use stats::{
    read_dump_stats, read_restore_stats, DumpStats, RestoreStats, DUMP_STATS_FILE,
    RESTORE_STATS_FILE,
};
pub use swrk::{Notification, NotifyHandler};

use swrk::SwrkFailure;

/// The version CRIU reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Version {
    /// Major number (4 in 4.1.1).
    pub major: u32,
    /// Minor number (1 in 4.1.1).
    pub minor: u32,
    /// Sublevel (the last 1 in 4.1.1), 0 when absent.
    pub sublevel: u32,
    /// Git id of a development build.
    pub gitid: Option<String>,
    /// Release name, if any.
    pub name: Option<String>,
}

impl Version {
    /// Comparable number: major * 10000 + minor * 100 + sublevel (as runc computes it).
    pub fn number(&self) -> u32 {
        self.major * 10000 + self.minor * 100 + self.sublevel
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.sublevel != 0 {
            write!(f, ".{}", self.sublevel)?;
        }
        Ok(())
    }
}

/// Optional CRIU features this kernel and CRIU build support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// Dirty-page tracking (the kernel's soft-dirty bits, `CONFIG_MEM_SOFT_DIRTY`):
    /// needed by [`Criu::pre_dump`] and [`DumpOptions::track_mem`].
    pub mem_track: bool,
    /// Lazy restore through userfaultfd.
    pub lazy_pages: bool,
    /// Pidfd store (pid reuse detection across pre-dumps).
    pub pidfd_store: bool,
}

/// What a dump or pre-dump did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DumpOutcome {
    /// CRIU's statistics (`stats-dump` in the images dir), when it wrote them.
    pub stats: Option<DumpStats>,
}

/// The root of a restored tree.
#[derive(Debug)]
#[non_exhaustive]
pub struct RestoredProcess {
    /// Its pid (in the caller's pid namespace).
    pub pid: i32,
    /// Whether it is the caller's child (restored with `rst_sibling`), so the caller
    /// must `waitpid()` it.
    pub is_child: bool,
    /// The master side of its terminal, with `orphan_pts_master`.
    pub orphan_pts_master: Option<OwnedFd>,
    /// CRIU's statistics (`stats-restore`), when it wrote them.
    pub stats: Option<RestoreStats>,
}

/// A CRIU executable, driven over RPC.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
}

impl Criu {
    /// Use the `criu` at `path` (nothing is run yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Criu { path: path.into() }
    }

    /// The executable this client runs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// CRIU's version.
    pub fn version(&self) -> Result<Version, CriuError> {
        let mut req = rpc::Criu_req::new();
        req.set_type(rpc::Criu_req_type::VERSION);
        let answer = swrk::request(&self.path, &req, &[], &mut |_| Ok(()))
            .map_err(|f| failure("version", f, None))?;
        let v = &answer.resp.version;
        if !answer.resp.version.is_some() {
            return Err(CriuError::Protocol(
                "version answer without a version".into(),
            ));
        }
        let num = |n: i32| u32::try_from(n).unwrap_or(0);
        Ok(Version {
            major: num(v.major_number()),
            minor: num(v.minor_number()),
            sublevel: num(v.sublevel()),
            gitid: v.has_gitid().then(|| v.gitid().to_string()),
            name: v.has_name().then(|| v.name().to_string()),
        })
    }

    /// Which optional features work here (CRIU's FEATURE_CHECK request).
    pub fn features(&self) -> Result<Features, CriuError> {
        let mut req = rpc::Criu_req::new();
        req.set_type(rpc::Criu_req_type::FEATURE_CHECK);
        let mut ask = rpc::Criu_features::new();
        ask.set_mem_track(true);
        ask.set_lazy_pages(true);
        ask.set_pidfd_store(true);
        req.features = Some(ask).into();
        let answer = swrk::request(&self.path, &req, &[], &mut |_| Ok(()))
            .map_err(|f| failure("feature check", f, None))?;
        let f = &answer.resp.features;
        Ok(Features {
            mem_track: f.mem_track(),
            lazy_pages: f.lazy_pages(),
            pidfd_store: f.pidfd_store(),
        })
    }

    /// `criu check`: whether this kernel supports what CRIU needs. The error names what is
    /// missing (from CRIU's log).
    pub fn check(&self) -> Result<(), CriuError> {
        let work = ScratchDir::new()?;
        let work_dir = File::open(work.path()).map_err(|source| CriuError::Dir {
            what: "work",
            path: work.path().to_path_buf(),
            source,
        })?;
        let mut opts = rpc::Criu_opts::new();
        opts.set_images_dir_fd(work_dir.as_raw_fd());
        opts.set_work_dir_fd(work_dir.as_raw_fd());
        opts.set_log_file("check.log".into());
        opts.set_log_level(2);
        let mut req = rpc::Criu_req::new();
        req.set_type(rpc::Criu_req_type::CHECK);
        req.opts = Some(opts).into();
        let log = work.path().join("check.log");
        swrk::request(&self.path, &req, &[work_dir.as_raw_fd()], &mut |_| Ok(()))
            .map_err(|f| failure("check", f, Some(&log)))?;
        Ok(())
    }

    /// Checkpoint a process tree; see [`DumpOptions`]. Unless `leave_running`, the tree
    /// is gone afterwards (its processes are killed; the caller still reaps its children).
    pub fn dump(&self, opts: &DumpOptions) -> Result<DumpOutcome, CriuError> {
        self.dump_with(opts, &mut |_| Ok(()))
    }

    /// [`Criu::dump`], with a handler for CRIU's notifications ("pre-dump",
    /// "network-lock", "post-dump", ...).
    pub fn dump_with(
        &self,
        opts: &DumpOptions,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CriuError> {
        self.dump_request(rpc::Criu_req_type::DUMP, "dump", opts, notify)
    }

    /// Start a page server that writes the pages it receives into `images_dir`, on
    /// `address`:`port` (port 0: a free port); see [`PageServer`].
    pub fn start_page_server(
        &self,
        images_dir: &Path,
        address: std::net::IpAddr,
        port: u16,
    ) -> Result<PageServer, CriuError> {
        PageServer::start(&self.path, images_dir, address, port)
    }

    /// Copy the tree's memory while it keeps running and start tracking which pages it
    /// changes (`criu pre-dump --track-mem`), as the parent of a later [`Criu::dump`].
    pub fn pre_dump(&self, opts: &DumpOptions) -> Result<DumpOutcome, CriuError> {
        let mut opts = opts.clone();
        opts.track_mem = true;
        opts.leave_running = false;
        opts.leave_stopped = false;
        self.dump_request(rpc::Criu_req_type::PRE_DUMP, "pre-dump", &opts, &mut |_| {
            Ok(())
        })
    }

    fn dump_request(
        &self,
        kind: rpc::Criu_req_type,
        op: &'static str,
        opts: &DumpOptions,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CriuError> {
        opts.validate().map_err(CriuError::InvalidOption)?;
        // A missing pid gets a clear error instead of CRIU's log.
        if let Err(nix::errno::Errno::ESRCH) =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(opts.pid), None)
        {
            return Err(CriuError::NoSuchProcess { pid: opts.pid });
        }
        let dirs = Dirs::open(&opts.common)?;
        if let Some(parent) = &opts.parent_images {
            let p = opts.common.images_dir.join(parent);
            if !p.is_dir() {
                return Err(CriuError::Dir {
                    what: "parent images",
                    path: p,
                    source: std::io::Error::from_raw_os_error(libc::ENOENT),
                });
            }
        }
        // Stale stats from an earlier run must not be mistaken for this one's.
        let stats_path = opts.common.images_dir.join(DUMP_STATS_FILE);
        let _ = std::fs::remove_file(&stats_path);
        let mut req = rpc::Criu_req::new();
        req.set_type(kind);
        req.opts = Some(opts.to_rpc(dirs.images_fd(), dirs.work_fd())).into();
        let log = opts.common.log_dir().join(&opts.common.log_file);
        swrk::request(&self.path, &req, &dirs.raw(), notify)
            .map_err(|f| failure(op, f, Some(&log)))?;
        // The dump happened (the tree may be gone already): unreadable statistics must
        // not turn it into an error, they are just absent.
        let stats = read_dump_stats(&opts.common.images_dir).ok();
        Ok(DumpOutcome { stats })
    }

    /// Restore a checkpointed tree; see [`RestoreOptions`]. On failure CRIU kills
    /// whatever it had restored, so nothing of the tree is left running.
    pub fn restore(&self, opts: RestoreOptions) -> Result<RestoredProcess, CriuError> {
        self.restore_with(opts, &mut |_| Ok(()))
    }

    /// [`Criu::restore`], with a handler for CRIU's notifications: "setup-namespaces"
    /// (the restored root's pid, its namespaces exist, nothing runs yet),
    /// "post-restore", "pre-resume", "post-resume", ...
    pub fn restore_with(
        &self,
        opts: RestoreOptions,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<RestoredProcess, CriuError> {
        opts.validate().map_err(CriuError::InvalidOption)?;
        let dirs = Dirs::open(&opts.common)?;
        let images_dir = opts.common.images_dir.clone();
        check_external_mounts(&opts)?;
        let _ = std::fs::remove_file(images_dir.join(RESTORE_STATS_FILE));
        let mut req = rpc::Criu_req::new();
        req.set_type(rpc::Criu_req_type::RESTORE);
        req.opts = Some(opts.to_rpc(dirs.images_fd(), dirs.work_fd())).into();
        let mut pass = dirs.raw();
        pass.extend(opts.passed_fds());
        let log = opts.common.log_dir().join(&opts.common.log_file);
        let mut pts_master = None;
        let answer = swrk::request(&self.path, &req, &pass, &mut |n| {
            if n.script == "orphan-pts-master" {
                pts_master = n.fd.take();
            }
            notify(n)
        })
        .map_err(|f| failure("restore", f, Some(&log)))?;
        drop(opts);
        if !answer.resp.restore.is_some() {
            return Err(CriuError::Protocol("restore answer without a pid".into()));
        }
        let pid = answer.resp.restore.pid();
        // As for dumps: the tree runs; statistics are a bonus.
        let stats = read_restore_stats(&images_dir).ok();
        Ok(RestoredProcess {
            pid,
            is_child: req.opts.rst_sibling(),
            orphan_pts_master: pts_master,
            stats,
        })
    }
}

/// Every external mount of the checkpoint must get a host path, or CRIU fails without
/// naming it. Unreadable images are left for CRIU to report.
fn check_external_mounts(opts: &RestoreOptions) -> Result<(), CriuError> {
    let Ok(needed) = external_mounts(&opts.common.images_dir) else {
        return Ok(());
    };
    for rec in needed {
        let prefix = format!("mnt[{}]:", rec.key);
        let given = opts.external_mounts.iter().any(|m| m.key == rec.key)
            || opts.common.external.iter().any(|e| e.starts_with(&prefix));
        if !given {
            return Err(CriuError::MissingExternalMount {
                key: rec.key,
                mountpoint: rec.mountpoint,
            });
        }
    }
    Ok(())
}

/// The images and work directories, opened for criu.
struct Dirs {
    images: File,
    work: Option<File>,
}

impl Dirs {
    fn open(c: &CommonOptions) -> Result<Self, CriuError> {
        let open = |what: &'static str, path: &Path| -> Result<File, CriuError> {
            let f = File::open(path).map_err(|source| CriuError::Dir {
                what,
                path: path.to_path_buf(),
                source,
            })?;
            let is_dir = f.metadata().map(|m| m.is_dir()).unwrap_or(false);
            if !is_dir {
                return Err(CriuError::Dir {
                    what,
                    path: path.to_path_buf(),
                    source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
                });
            }
            Ok(f)
        };
        Ok(Dirs {
            images: open("images", &c.images_dir)?,
            work: c.work_dir.as_deref().map(|w| open("work", w)).transpose()?,
        })
    }

    fn images_fd(&self) -> RawFd {
        self.images.as_raw_fd()
    }

    fn work_fd(&self) -> Option<RawFd> {
        self.work.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn raw(&self) -> Vec<RawFd> {
        let mut v = vec![self.images_fd()];
        v.extend(self.work_fd());
        v
    }
}

/// Turn a failed request into the error the caller sees, with the log's tail.
fn failure(op: &'static str, f: SwrkFailure, log: Option<&Path>) -> CriuError {
    let log_tail = log.map(log_tail).unwrap_or_default();
    match f {
        SwrkFailure::Error(e) => e,
        SwrkFailure::NoAnswer { status, stderr } => CriuError::NoAnswer {
            op,
            status,
            stderr,
            log_tail,
        },
        SwrkFailure::Refused { resp, stderr } => CriuError::Failed {
            op,
            errmsg: resp
                .has_cr_errmsg()
                .then(|| resp.cr_errmsg().trim().to_string())
                .filter(|m| !m.is_empty() && !is_noise(m))
                .or_else(|| log.and_then(first_error)),
            errno: resp.has_cr_errno().then(|| resp.cr_errno()),
            log: log.filter(|p| p.exists()).map(Path::to_path_buf),
            log_tail,
            stderr,
        },
    }
}

/// How many log lines an error quotes.
const TAIL_LINES: usize = 12;

/// The error lines of a CRIU log (the last [`TAIL_LINES`] of them), or its last lines
/// when it has none.
fn log_tail(path: &Path) -> String {
    let Ok(text) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&text);
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") && !is_noise(l))
        .collect();
    let lines: Vec<&str> = if errors.is_empty() {
        text.lines().collect()
    } else {
        errors
    };
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n")
}

/// CRIU reports some harmless conditions as errors; they are left out of messages.
/// (Raising RLIMIT_NOFILE for itself needs CAP_SYS_RESOURCE, which sandboxes often drop;
/// CRIU goes on with the limit it has.)
fn is_noise(line: &str) -> bool {
    line.contains("Can't setup RLIMIT_NOFILE for self")
}

/// The first relevant error line of a CRIU log, without its time and pid prefix.
fn first_error(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    let line = text
        .lines()
        .find(|l| l.contains("Error (") && !is_noise(l))?;
    line.find("Error (").map(|i| line[i..].trim().to_string())
}

/// A private scratch directory (for `check`'s log), removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self, CriuError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vessel-criu-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).map_err(|source| CriuError::Dir {
            what: "work",
            path: path.clone(),
            source,
        })?;
        Ok(ScratchDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_prefers_error_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(
            &p,
            "(0.1) info\nError (a.c:1): first\n(0.2) more\nError (b.c:2): second\n",
        )
        .unwrap();
        assert_eq!(log_tail(&p), "Error (a.c:1): first\nError (b.c:2): second");
        assert_eq!(first_error(&p).as_deref(), Some("Error (a.c:1): first"));
        std::fs::write(&p, "a\nb\n").unwrap();
        assert_eq!(log_tail(&p), "a\nb");
        assert_eq!(first_error(&p), None);
        std::fs::write(
            &p,
            "(0.1) Error (util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: x\n(0.2)   77: Error (tty.c:4): real\n",
        )
        .unwrap();
        assert_eq!(first_error(&p).as_deref(), Some("Error (tty.c:4): real"));
        assert_eq!(log_tail(&p), "(0.2)   77: Error (tty.c:4): real");
        assert_eq!(log_tail(&dir.path().join("missing")), "");
    }

    #[test]
    fn version_number_and_display() {
        let v = Version {
            major: 4,
            minor: 1,
            sublevel: 1,
            gitid: None,
            name: None,
        };
        assert_eq!(v.number(), 40101);
        assert_eq!(v.to_string(), "4.1.1");
    }
}
