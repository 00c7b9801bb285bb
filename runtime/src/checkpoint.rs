//! Checkpoint and restore of containers with CRIU (runc's `checkpoint` / `restore`).
//!
//! [`Container::checkpoint`] dumps the container's process tree with the [`crate::criu`]
//! client: the bind mounts of config.json are declared external (keyed by their
//! destination), a network namespace joined by path is external (`extRootNetNS`), the
//! container's freezer cgroup freezes the tree, and the init's stdio is recorded in
//! `descriptors.json` in the image directory (runc's format: one entry per fd 0..2, as
//! `readlink /proc/PID/fd/N` shows it). A running container is frozen by the runtime
//! before CRIU runs (CRIU's own freeze polls every 100 ms) and thawed after it.
//! Without `leave_running` (and unless it is a
//! pre-dump) the container is gone afterwards and is deleted like runc does, so the same
//! id can be restored.
//!
//! [`Container::restore`] recreates the container from the images and a bundle: the
//! state directory and the cgroup (created and configured by [`crate::cgroups::Manager`]
//! before CRIU runs, and given to CRIU as the cgroup root), CRIU rebuilds the mount
//! namespace on the bundle's rootfs (`--root`), with each external bind mount bound to
//! its source from the bundle's config, and recreates the pid/ipc/uts/net/mount
//! namespaces recorded in the images (a network namespace given by path in the bundle's
//! config is joined instead). Pipes the init had as stdio are replaced by the restoring
//! process's own stdio (`inherit_fd`), as runc does. The restored init is the caller's
//! child; its start time is saved so the status is detected like for a created one.
//! Any failure removes what was made (CRIU kills a half-restored tree itself).
//!
//! Without a cgroup namespace, the container's `cgroup` mount is made of binds of host
//! cgroup directories: they are external mounts too, bound at restore to the restored
//! container's cgroup (see `cgroup_mounts`).
//!
//! Open files on host paths outside the container (e.g. the host's `/dev/null` as
//! stdio) cannot be dumped: CRIU refuses them ("Can't lookup mount"). Give containers
//! pipes or a terminal as stdio to checkpoint them.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::container::{self, Container, ContainerError};
use crate::criu::{self, CgroupMode, Criu, CriuError, DumpOptions, ExternalMount, InheritFd};
use crate::integration::{self, Cgroup};
use crate::namespaces::NamespacePlan;
use crate::spec;
use crate::state::{self, ContainerState, State, StateDir, Status};

mod cgroup_mounts;

/// File in the image directory recording the init's stdio (runc's name and format).
pub const DESCRIPTORS_FILE: &str = "descriptors.json";
/// CRIU's inventory image: present in every complete checkpoint.
const INVENTORY: &str = "inventory.img";
/// Key of an external network namespace (runc's).
const EXT_NET_KEY: &str = "extRootNetNS";
/// Environment variable naming the CRIU binary when no path is given.
pub const CRIU_ENV: &str = "VESSEL_CRIU";

/// Errors of checkpoint and restore.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A lifecycle step failed (loading the container, its state, its config).
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// CRIU failed.
    #[error(transparent)]
    Criu(#[from] CriuError),
    /// The container is not in a state that can be checkpointed.
    #[error("cannot checkpoint container {id:?}: it is {status} (only running containers can be checkpointed)")]
    NotRunning {
        /// The container.
        id: String,
        /// Its status.
        status: Status,
    },
    /// The image directory is not a (complete) checkpoint.
    #[error("{path} is not a checkpoint image directory: {reason}")]
    NotACheckpoint {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Incremental dumps need the kernel's memory tracking.
    #[error("{what} needs memory tracking, which this kernel lacks (CONFIG_MEM_SOFT_DIRTY); use a plain checkpoint")]
    NoMemTrack {
        /// What needed it.
        what: &'static str,
    },
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CheckpointError>;

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The CRIU binary: `$VESSEL_CRIU`, else `criu` from `PATH`.
pub fn default_criu() -> PathBuf {
    if let Some(p) = std::env::var_os(CRIU_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("criu"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("criu"))
}

/// Parses runc's `--manage-cgroups-mode` values.
pub fn parse_cgroup_mode(s: &str) -> Result<CgroupMode> {
    match s {
        "soft" => Ok(CgroupMode::Soft),
        "full" => Ok(CgroupMode::Full),
        "strict" => Ok(CgroupMode::Strict),
        "ignore" => Ok(CgroupMode::Ignore),
        "props" => Ok(CgroupMode::Props),
        _ => Err(CheckpointError::Invalid(format!(
            "invalid manage-cgroups-mode {s:?}: use soft, full, strict or ignore"
        ))),
    }
}

/// Options of [`Container::checkpoint`] (runc's `checkpoint` flags).
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// The CRIU binary.
    pub criu: PathBuf,
    /// Where the images go (created if missing).
    pub image_path: PathBuf,
    /// Where CRIU's log goes (default: the image path).
    pub work_path: Option<PathBuf>,
    /// Keep the container running after the checkpoint.
    pub leave_running: bool,
    /// Checkpoint established TCP connections.
    pub tcp_established: bool,
    /// Allow external unix sockets.
    pub ext_unix_sk: bool,
    /// The container shares the caller's session/terminal.
    pub shell_job: bool,
    /// Checkpoint file locks.
    pub file_locks: bool,
    /// Only dump memory and keep running (the parent of a later checkpoint).
    pub pre_dump: bool,
    /// Images of a previous pre-dump (relative to the image path, or absolute).
    pub parent_path: Option<PathBuf>,
    /// CRIU's cgroup handling; `None` = soft (runc's default).
    pub manage_cgroups_mode: Option<CgroupMode>,
    /// Send memory pages to this CRIU page server instead of the image path (live
    /// migration; see [`crate::migration`]).
    pub page_server: Option<std::net::SocketAddr>,
    /// Punch holes in the parent images for pages this dump writes (`--auto-dedup`).
    pub auto_dedup: bool,
}

impl CheckpointOptions {
    /// Checkpoint into `image_path` with runc's defaults and [`default_criu`].
    pub fn new(image_path: impl Into<PathBuf>) -> Self {
        CheckpointOptions {
            criu: default_criu(),
            image_path: image_path.into(),
            work_path: None,
            leave_running: false,
            tcp_established: false,
            ext_unix_sk: false,
            shell_job: false,
            file_locks: false,
            pre_dump: false,
            parent_path: None,
            manage_cgroups_mode: None,
            page_server: None,
            auto_dedup: false,
        }
    }
}

/// Options of [`Container::restore`] (runc's `restore` flags; `--detach` is the caller's
/// business: the restored init is its child).
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The CRIU binary.
    pub criu: PathBuf,
    /// The checkpoint's images.
    pub image_path: PathBuf,
    /// Where CRIU's log goes (default: the image path).
    pub work_path: Option<PathBuf>,
    /// Write the restored init's pid here.
    pub pid_file: Option<PathBuf>,
    /// Send the new pty master here when the container has a terminal.
    pub console_socket: Option<PathBuf>,
    /// Restore established TCP connections.
    pub tcp_established: bool,
    /// Allow external unix sockets.
    pub ext_unix_sk: bool,
    /// The container shares the caller's session/terminal.
    pub shell_job: bool,
    /// Restore file locks.
    pub file_locks: bool,
    /// CRIU's cgroup handling; `None` = soft.
    pub manage_cgroups_mode: Option<CgroupMode>,
    /// Restore established TCP connections closed (`--tcp-close`).
    pub tcp_close: bool,
    /// LSM profile of the restored tree (`--lsm-profile`, e.g. `apparmor:NAME`).
    pub lsm_profile: Option<String>,
}

impl RestoreOptions {
    /// Restore from `image_path` with runc's defaults and [`default_criu`].
    pub fn new(image_path: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            criu: default_criu(),
            image_path: image_path.into(),
            work_path: None,
            pid_file: None,
            console_socket: None,
            tcp_established: false,
            ext_unix_sk: false,
            shell_job: false,
            file_locks: false,
            manage_cgroups_mode: None,
            tcp_close: false,
            lsm_profile: None,
        }
    }
}

/// What a checkpoint did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckpointReport {
    /// Pages CRIU wrote.
    pub pages_written: u64,
    /// Pages skipped because a parent (pre-dump) has them.
    pub pages_skipped_parent: u64,
    /// Whether the container was deleted (a checkpoint that stopped it).
    pub deleted: bool,
}

/// Bind mounts of `spec`: (destination, source resolved against `bundle`).
fn bind_mounts(spec: &Spec, bundle: &Path) -> Vec<(PathBuf, PathBuf)> {
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| {
            m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind")
        })
        .map(|m| {
            let src = m.source().clone().unwrap_or_default();
            let src = if src.is_absolute() {
                src
            } else {
                bundle.join(src)
            };
            (m.destination().clone(), src)
        })
        .collect()
}

/// The network namespace path of `spec`, when it joins one.
fn net_ns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Whether `spec` has a network namespace of its own (new, not joined).
fn has_new_net_ns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        })
}

fn has_terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

fn mkdir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(io_err("create", path))
}

/// What fds 0..2 of `pid` are (`readlink /proc/PID/fd/N`; "" when closed).
fn stdio_of(pid: i32) -> Vec<String> {
    (0..3)
        .map(|n| {
            fs::read_link(format!("/proc/{pid}/fd/{n}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// The cgroup hierarchies of `pid` CRIU records: all but the named (`name=...`) ones,
/// which the runtime does not manage. The container sits in its caller's cgroup there
/// (`name=systemd:/` here), and CRIU would record that cgroup's whole subtree (every
/// other workload's cgroups) and recreate whatever of it is gone at restore. Left out,
/// the restored tree stays in the restoring process's cgroup of those hierarchies, as a
/// created container does. Empty (CRIU's default: all) when /proc/PID/cgroup is
/// unreadable.
fn dump_controllers(pid: i32) -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    controllers_to_dump(&text)
}

fn controllers_to_dump(proc_cgroup: &str) -> Vec<String> {
    let all: Vec<&str> = proc_cgroup
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .collect();
    if all.iter().all(|c| !c.starts_with("name=")) {
        return Vec::new();
    }
    all.into_iter()
        .filter(|c| !c.starts_with("name="))
        .map(str::to_string)
        .collect()
}

/// Checks that `dir` holds a checkpoint.
pub fn check_images(dir: &Path) -> Result<()> {
    let meta = fs::metadata(dir).map_err(|e| CheckpointError::NotACheckpoint {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(CheckpointError::NotACheckpoint {
            path: dir.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    if !dir.join(INVENTORY).is_file() {
        return Err(CheckpointError::NotACheckpoint {
            path: dir.to_path_buf(),
            reason: format!("no {INVENTORY} (not written by a completed checkpoint)"),
        });
    }
    Ok(())
}

impl Container {
    /// Checkpoints the running container into `opts.image_path` (runc's `checkpoint`).
    /// Unless `leave_running` or `pre_dump`, the container is stopped and deleted
    /// afterwards (its id is free for a restore).
    pub fn checkpoint(&mut self, opts: &CheckpointOptions) -> Result<CheckpointReport> {
        let lock = self.dir.lock().map_err(ContainerError::from)?;
        self.reload()?;
        match self.state.oci.status {
            Status::Running | Status::Paused => {}
            status => {
                return Err(CheckpointError::NotRunning {
                    id: self.id().to_string(),
                    status,
                })
            }
        }
        let spec = self.spec()?;
        let criu = Criu::new(&opts.criu);
        if opts.pre_dump || opts.parent_path.is_some() {
            let f = criu.features()?;
            if !f.mem_track {
                return Err(CheckpointError::NoMemTrack {
                    what: if opts.pre_dump {
                        "a pre-dump"
                    } else {
                        "a checkpoint with a parent"
                    },
                });
            }
        }
        mkdir_all(&opts.image_path)?;
        if let Some(w) = &opts.work_path {
            mkdir_all(w)?;
        }
        let pid = self.pid();
        let mut d = DumpOptions::new(pid, &opts.image_path);
        d.common.work_dir = opts.work_path.clone();
        d.common.tcp_established = opts.tcp_established;
        d.common.ext_unix_sk = opts.ext_unix_sk;
        d.common.shell_job = opts.shell_job;
        d.common.file_locks = opts.file_locks;
        d.common.manage_cgroups = Some(opts.manage_cgroups_mode.unwrap_or(CgroupMode::Soft));
        d.common.orphan_pts_master = has_terminal(&spec);
        d.common.network_lock = if has_new_net_ns(&spec) {
            criu::NetworkLock::Iptables
        } else {
            criu::NetworkLock::Skip
        };
        if let Some(p) = net_ns_path(&spec) {
            let ino = fs::metadata(&p).map_err(io_err("stat network namespace", &p))?;
            d.common
                .external
                .push(format!("net[{}]:{EXT_NET_KEY}", ino.ino()));
        }
        d.leave_running = opts.leave_running || opts.pre_dump;
        d.parent_images = opts.parent_path.clone();
        d.track_mem = opts.parent_path.is_some();
        d.page_server = opts.page_server;
        d.auto_dedup = opts.auto_dedup;
        d.external_mounts = bind_mounts(&spec, &self.state.oci.bundle)
            .into_iter()
            .map(|(dest, _)| ExternalMount {
                key: dest.to_string_lossy().into_owned(),
                path: dest,
            })
            .collect();
        d.external_mounts
            .extend(cgroup_mounts::for_dump(&spec, pid)?);
        d.cgroup_dump_controllers = dump_controllers(pid);
        let cgroup = self
            .state
            .cgroup
            .as_ref()
            .and_then(integration::cgroup_from_json);
        d.freeze_cgroup = cgroup
            .as_ref()
            .and_then(|c| c.path_for("freezer"))
            .map(Path::to_path_buf);
        let descriptors = serde_json::to_vec(&stdio_of(pid))
            .map_err(|e| CheckpointError::Invalid(format!("descriptors: {e}")))?;
        state::write_atomic(&opts.image_path.join(DESCRIPTORS_FILE), &descriptors, 0o600)
            .map_err(ContainerError::from)?;
        // A running container is frozen here rather than by CRIU, which polls the freezer
        // every 100 ms (so a freeze costs it at least that much); it then finds the group
        // frozen and leaves it so. Only where the image's freezer.state (FROZEN, the
        // state CRIU found) is not restored: soft mode skips the properties of the
        // cgroups the restore creates first, ignore records none.
        let prefreeze = !opts.pre_dump
            && self.state.oci.status == Status::Running
            && matches!(
                d.common.manage_cgroups,
                Some(CgroupMode::Soft | CgroupMode::Ignore)
            );
        let frozen = match (&cgroup, &d.freeze_cgroup) {
            (Some(cg), Some(_)) if prefreeze => cg.freeze().is_ok().then_some(cg),
            _ => None,
        };
        let out = if opts.pre_dump {
            criu.pre_dump(&d)
        } else {
            criu.dump(&d)
        };
        // Running again (leave-running, or a failed dump), or dying: a SIGKILLed task of
        // a frozen v1 group only dies once thawed.
        if let Some(cg) = frozen {
            let _ = cg.thaw();
        }
        let out = out?;
        let mut report = CheckpointReport {
            pages_written: out.stats.as_ref().map_or(0, |s| s.pages_written),
            pages_skipped_parent: out.stats.as_ref().map_or(0, |s| s.pages_skipped_parent),
            deleted: false,
        };
        drop(lock);
        if !d.leave_running {
            // The tree is gone (CRIU killed it): remove the container like runc does.
            let root = self
                .dir
                .path()
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf();
            Container::load(&root, self.id())?.delete(true)?;
            self.state.oci.status = Status::Stopped;
            report.deleted = true;
        }
        Ok(report)
    }

    /// Restores container `id` under `root` from `opts.image_path`, with the bundle at
    /// `bundle` (its config.json and rootfs; the rootfs holds what the container's
    /// files were at checkpoint time). The restored init runs and is the caller's child.
    pub fn restore(
        root: &Path,
        id: &str,
        bundle: &Path,
        opts: &RestoreOptions,
    ) -> Result<Container> {
        state::validate_id(id).map_err(ContainerError::from)?;
        check_images(&opts.image_path)?;
        let bundle = fs::canonicalize(bundle).map_err(|source| ContainerError::Bundle {
            path: bundle.to_path_buf(),
            source,
        })?;
        let spec = spec::load(&bundle).map_err(ContainerError::from)?;
        let rootfs = container::rootfs_path(&spec, &bundle)?;
        let plan = NamespacePlan::from_spec(&spec).map_err(ContainerError::from)?;
        let terminal = has_terminal(&spec);
        let console = match (&opts.console_socket, terminal) {
            (Some(p), true) => Some(crate::terminal::connect(p).map_err(ContainerError::from)?),
            (None, true) => {
                return Err(CheckpointError::Invalid(
                    "process.terminal is set: a --console-socket is required".into(),
                ))
            }
            _ => None,
        };
        let descriptors: Vec<String> = match fs::read(opts.image_path.join(DESCRIPTORS_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| CheckpointError::NotACheckpoint {
                path: opts.image_path.clone(),
                reason: format!("{DESCRIPTORS_FILE}: {e}"),
            })?,
            Err(_) => Vec::new(),
        };
        let netns = net_ns_path(&spec)
            .map(|p| fs::File::open(&p).map_err(io_err("open network namespace", &p)))
            .transpose()?;
        let cgroup = integration::cgroup_new(&spec, id).map_err(ContainerError::from)?;
        make_mountpoints(&spec, &bundle, &rootfs)?;

        let (dir, _lock) = StateDir::create(root, id).map_err(ContainerError::from)?;
        let mut guard = RestoreGuard {
            dir: &dir,
            cgroup: None,
            pid: None,
            armed: true,
        };
        fs::write(dir.path().join(state::CONFIG_FILE), {
            serde_json::to_vec(&spec)
                .map_err(|e| CheckpointError::Invalid(format!("serialize config: {e}")))?
        })
        .map_err(io_err("write", dir.path()))?;
        if let Some(cg) = &cgroup {
            guard.cgroup = Some(cg);
            cg.set(&integration::effective_resources(&spec).unwrap_or_default())
                .map_err(|e| ContainerError::from(crate::integration::IntegrationError::from(e)))?;
        }

        let mut r = criu::RestoreOptions::new(&opts.image_path);
        r.common.work_dir = opts.work_path.clone();
        if let Some(w) = &opts.work_path {
            mkdir_all(w)?;
        }
        r.common.tcp_established = opts.tcp_established;
        r.common.ext_unix_sk = opts.ext_unix_sk;
        r.common.shell_job = opts.shell_job;
        r.common.file_locks = opts.file_locks;
        r.common.manage_cgroups = Some(opts.manage_cgroups_mode.unwrap_or(CgroupMode::Soft));
        r.common.orphan_pts_master = terminal;
        r.common.network_lock = if has_new_net_ns(&spec) {
            criu::NetworkLock::Iptables
        } else {
            criu::NetworkLock::Skip
        };
        r.root = Some(rootfs.clone());
        r.tcp_close = opts.tcp_close;
        r.lsm_profile = opts.lsm_profile.clone();
        r.external_mounts = bind_mounts(&spec, &bundle)
            .into_iter()
            .map(|(dest, src)| ExternalMount {
                key: dest.to_string_lossy().into_owned(),
                path: src,
            })
            .collect();
        r.external_mounts.extend(cgroup_mounts::for_restore(
            &spec,
            &opts.image_path,
            cgroup.as_ref(),
        )?);
        for (n, what) in descriptors.iter().enumerate().take(3) {
            if what.starts_with("pipe:") {
                let fd = dup(n as i32)?;
                r.inherit_fds.push(InheritFd {
                    key: what.clone(),
                    fd,
                });
            }
        }
        if let Some(ns) = &netns {
            r.inherit_fds.push(InheritFd {
                key: EXT_NET_KEY.into(),
                fd: dup(ns.as_raw_fd())?,
            });
        }
        if let Some(cg) = &cgroup {
            r.cgroup_roots = cgroup_roots(cg);
        }
        let criu = Criu::new(&opts.criu);
        let cg_ref = cgroup.as_ref();
        let restored = criu.restore_with(r, &mut |n| {
            if n.script == "setup-namespaces" {
                if let (Some(cg), Some(pid)) = (cg_ref, n.pid) {
                    cg.apply(pid).map_err(|e| format!("cgroup: {e}"))?;
                }
            }
            Ok(())
        })?;
        let pid = restored.pid;
        guard.pid = Some(pid);
        if let (Some(master), Some(sock)) = (&restored.orphan_pts_master, &console) {
            crate::sync::send_fd_raw(sock.as_raw_fd(), b"/dev/ptmx", Some(master.as_raw_fd()))
                .map_err(ContainerError::from)?;
        }
        let (start_time, _) = state::proc_start_time(pid).ok_or_else(|| {
            ContainerError::Init("the restored container process exited at once".into())
        })?;
        let cstate = ContainerState {
            oci: State {
                oci_version: spec.version().clone(),
                id: id.to_string(),
                status: Status::Running,
                pid,
                bundle: bundle.clone(),
                rootfs,
                created: state::now_rfc3339(),
                owner: String::new(),
                annotations: spec.annotations().clone().unwrap_or_default(),
            },
            init_start_time: start_time,
            own_pid_ns: plan.new_pid,
            no_pivot: false,
            cgroup: cgroup.as_ref().and_then(integration::cgroup_to_json),
        };
        dir.save(&cstate).map_err(ContainerError::from)?;
        if let Some(pf) = &opts.pid_file {
            container::write_pid_file(pf, pid)?;
        }
        guard.armed = false;
        drop(guard);
        Ok(Container::load(root, id)?)
    }
}

/// Creates the mount points of the spec's mounts in `rootfs` (resolved inside it), as
/// the container's setup did: CRIU mounts onto them but does not create them, and a
/// rootfs copied elsewhere (a snapshot, a migration target) may lack them. Bind mounts
/// of files get a file, everything else a directory.
fn make_mountpoints(spec: &Spec, bundle: &Path, rootfs: &Path) -> Result<()> {
    use crate::rootfs::resolve::{ensure_in_root, Want};
    use std::os::fd::AsFd;
    let root = fs::File::open(rootfs).map_err(io_err("open rootfs", rootfs))?;
    let binds = bind_mounts(spec, bundle);
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        let want = match binds.iter().find(|(d, _)| d == dest) {
            Some((_, src)) if fs::metadata(src).is_ok_and(|m| !m.is_dir()) => Want::File,
            _ => Want::Dir,
        };
        ensure_in_root(root.as_fd(), dest, want).map_err(|e| CheckpointError::Io {
            op: "create mount point",
            path: rootfs.join(dest.strip_prefix("/").unwrap_or(dest)),
            source: std::io::Error::from(e),
        })?;
    }
    Ok(())
}

/// CRIU's `--cgroup-root` for each hierarchy of `cg` (v1 by controller list, cgroup2 as the
/// default root): the controller list and the
/// container's cgroup as a path inside the hierarchy (what /proc/PID/cgroup shows; the
/// hierarchies are assumed mounted at their root, as on this host).
fn cgroup_roots(cg: &Cgroup) -> Vec<(Option<String>, PathBuf)> {
    let Ok(layout) = crate::cgroups::Layout::detect() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for h in cg.hierarchies() {
        if h.version != crate::cgroups::Version::V1 {
            // The cgroup2 tree has no controller name for CRIU: it gets the default root
            // (one without a controller), which the v1 entries below override. Without it
            // CRIU puts the restored tree back into the *dumped* container's v2 cgroup,
            // which then outlives both containers.
            if let Some(u) = &layout.unified {
                if let Ok(rel) = h.dir.strip_prefix(&u.mount_point) {
                    out.push((None, Path::new("/").join(rel)));
                }
            }
            continue;
        }
        let Some(m) = layout.v1.iter().find(|m| m.controllers == h.controllers) else {
            continue;
        };
        if let Ok(rel) = h.dir.strip_prefix(&m.mount_point) {
            out.push((Some(h.controllers.join(",")), Path::new("/").join(rel)));
        }
    }
    // v1 hierarchies the manager does not drive (e.g. name=systemd) keep the caller's own
    // cgroup, so the default root above does not apply to them.
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrls.is_empty() || out.iter().any(|(c, _)| c.as_deref() == Some(ctrls)) {
            continue;
        }
        out.push((Some(ctrls.to_string()), PathBuf::from(path)));
    }
    out
}

fn dup(fd: i32) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor; nothing is borrowed.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(CheckpointError::Io {
            op: "dup",
            path: PathBuf::from(format!("fd {fd}")),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `n` is a fresh descriptor we own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// Undoes a failed restore: kills the restored init, removes the cgroup and the state.
struct RestoreGuard<'a> {
    dir: &'a StateDir,
    cgroup: Option<&'a Cgroup>,
    pid: Option<i32>,
    armed: bool,
}

impl Drop for RestoreGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(p, None);
        }
        if let Some(cg) = self.cgroup {
            let _ = integration::cgroup_destroy(cg);
        }
        let _ = self.dir.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_modes_parse_like_runc() {
        assert_eq!(parse_cgroup_mode("soft").unwrap(), CgroupMode::Soft);
        assert_eq!(parse_cgroup_mode("full").unwrap(), CgroupMode::Full);
        assert_eq!(parse_cgroup_mode("strict").unwrap(), CgroupMode::Strict);
        assert_eq!(parse_cgroup_mode("ignore").unwrap(), CgroupMode::Ignore);
        let e = parse_cgroup_mode("bogus").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("soft"), "{e}");
    }

    #[test]
    fn named_cgroup_hierarchies_are_not_dumped() {
        let hybrid = "9:name=systemd:/\n4:memory:/a/c\n2:cpu,cpuacct:/a/c\n0::/a/c\n";
        assert_eq!(controllers_to_dump(hybrid), ["memory", "cpu,cpuacct", ""]);
        // Nothing to leave out: CRIU's default (all).
        assert!(controllers_to_dump("4:memory:/a/c\n0::/a/c\n").is_empty());
        assert!(controllers_to_dump("").is_empty());
    }

    #[test]
    fn missing_or_incomplete_images_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = check_images(&d.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a checkpoint"), "{e}");
        let e = check_images(d.path()).unwrap_err().to_string();
        assert!(e.contains("inventory.img"), "{e}");
        fs::write(d.path().join(INVENTORY), b"x").unwrap();
        check_images(d.path()).unwrap();
    }

    #[test]
    fn bind_mounts_resolve_relative_sources() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]},
                {"destination": "/abs", "source": "/srv/x", "options": ["bind", "ro"]}
            ]
        }))
        .unwrap();
        let b = bind_mounts(&spec, Path::new("/b"));
        assert_eq!(
            b,
            vec![
                (PathBuf::from("/data"), PathBuf::from("/b/data")),
                (PathBuf::from("/abs"), PathBuf::from("/srv/x"))
            ]
        );
    }
}
