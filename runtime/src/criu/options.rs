//! What a dump or restore is asked to do, and its translation into CRIU's RPC options.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use rust_criu::rust_criu_protobuf::rpc;

/// How CRIU treats cgroups (`--manage-cgroups=MODE`; see criu(8)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Don't dump or restore cgroups at all.
    Ignore,
    /// Restore only the cgroup properties, into existing cgroups.
    Props,
    /// Restore properties of cgroups CRIU creates; leave existing ones alone (CRIU's default).
    Soft,
    /// Restore all properties, creating cgroups as needed.
    Full,
    /// Like full, but fail if a cgroup already exists.
    Strict,
}

impl CgroupMode {
    fn to_rpc(self) -> rpc::Criu_cg_mode {
        match self {
            CgroupMode::Ignore => rpc::Criu_cg_mode::IGNORE,
            CgroupMode::Props => rpc::Criu_cg_mode::PROPS,
            CgroupMode::Soft => rpc::Criu_cg_mode::SOFT,
            CgroupMode::Full => rpc::Criu_cg_mode::FULL,
            CgroupMode::Strict => rpc::Criu_cg_mode::STRICT,
        }
    }
}

/// How CRIU keeps the network quiet while a task with sockets is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkLock {
    /// iptables rules (needs `iptables-restore`; CRIU's default).
    #[default]
    Iptables,
    /// An nftables table.
    Nftables,
    /// No lock: for trees without network namespaces or TCP connections, or when the
    /// caller locks the network itself.
    Skip,
}

impl NetworkLock {
    fn to_rpc(self) -> rpc::Criu_network_lock_method {
        match self {
            NetworkLock::Iptables => rpc::Criu_network_lock_method::IPTABLES,
            NetworkLock::Nftables => rpc::Criu_network_lock_method::NFTABLES,
            NetworkLock::Skip => rpc::Criu_network_lock_method::SKIP,
        }
    }
}

/// Options shared by dump, pre-dump and restore.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CommonOptions {
    /// Where the images are (dump: written; restore: read). Must exist.
    pub images_dir: PathBuf,
    /// Where CRIU writes its log (and other by-products); default: the images dir.
    pub work_dir: Option<PathBuf>,
    /// Log file name inside the work dir (no '/').
    pub log_file: String,
    /// CRIU log level 0..=4 (4 = debug, what runc uses).
    pub log_level: i32,
    /// `--tcp-established`: checkpoint/restore established TCP connections.
    pub tcp_established: bool,
    /// `--ext-unix-sk`: allow unix sockets connected to peers outside the tree.
    pub ext_unix_sk: bool,
    /// `--shell-job`: the tree shares a session/terminal with the caller.
    pub shell_job: bool,
    /// `--file-locks`: checkpoint/restore file locks.
    pub file_locks: bool,
    /// `--link-remap`: allow open-but-unlinked files to be linked back.
    pub link_remap: bool,
    /// `--manage-cgroups=MODE`; `None` leaves CRIU's default (soft).
    pub manage_cgroups: Option<CgroupMode>,
    /// Network locking method.
    pub network_lock: NetworkLock,
    /// `--external` specifications, verbatim (e.g. `mnt[/dst]:key`, `net[4026531993]:extnet`,
    /// `dev[maj/min]:key`). See also [`DumpOptions::external_mounts`] /
    /// [`RestoreOptions::external_mounts`], which build the `mnt[...]` ones.
    pub external: Vec<String>,
    /// Filesystems CRIU may treat as auto-mountable (`--enable-fs`).
    pub enable_fs: Vec<String>,
    /// Seconds CRIU may wait for the tree to freeze (`--timeout`); `None`: CRIU's default.
    pub timeout: Option<u32>,
    /// `--orphan-pts-master`: the tree's terminal is a pty whose master is outside the
    /// tree (a container's console, held by the runtime). At dump CRIU records the slave
    /// alone; at restore it makes a new pty pair and hands the master to the caller (in
    /// [`super::RestoredProcess::orphan_pts_master`]). Set it for both, as runc does.
    pub orphan_pts_master: bool,
}

impl CommonOptions {
    fn new(images_dir: PathBuf, log_file: &str) -> Self {
        CommonOptions {
            images_dir,
            work_dir: None,
            log_file: log_file.to_string(),
            log_level: 4,
            tcp_established: false,
            ext_unix_sk: false,
            shell_job: false,
            file_locks: false,
            link_remap: false,
            manage_cgroups: None,
            network_lock: NetworkLock::default(),
            external: Vec::new(),
            enable_fs: Vec::new(),
            timeout: None,
            orphan_pts_master: false,
        }
    }

    /// The directory the log file is in.
    pub fn log_dir(&self) -> &std::path::Path {
        self.work_dir.as_deref().unwrap_or(&self.images_dir)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.log_file.is_empty() || self.log_file.contains('/') {
            return Err(format!(
                "log file {:?} must be a plain file name (it is created in the work dir)",
                self.log_file
            ));
        }
        if !(0..=4).contains(&self.log_level) {
            return Err(format!("log level {} is not in 0..=4", self.log_level));
        }
        Ok(())
    }

    /// Fill the options every request shares. Directory fds are given by number: they are
    /// passed to `criu swrk` under the same numbers.
    pub(crate) fn fill(&self, o: &mut rpc::Criu_opts, images_fd: RawFd, work_fd: Option<RawFd>) {
        o.set_images_dir_fd(images_fd);
        if let Some(fd) = work_fd {
            o.set_work_dir_fd(fd);
        }
        o.set_log_file(self.log_file.clone());
        o.set_log_level(self.log_level);
        o.set_tcp_established(self.tcp_established);
        o.set_ext_unix_sk(self.ext_unix_sk);
        o.set_shell_job(self.shell_job);
        o.set_file_locks(self.file_locks);
        o.set_link_remap(self.link_remap);
        if let Some(mode) = self.manage_cgroups {
            o.set_manage_cgroups(mode != CgroupMode::Ignore);
            o.set_manage_cgroups_mode(mode.to_rpc());
        }
        o.set_network_lock(self.network_lock.to_rpc());
        o.external.extend(self.external.iter().cloned());
        o.enable_fs.extend(self.enable_fs.iter().cloned());
        if let Some(t) = self.timeout {
            o.set_timeout(t);
        }
        if self.orphan_pts_master {
            o.set_orphan_pts_master(true);
        }
        // Always ask for notifications: they are how CRIU hands over the orphan pts
        // master and how the caller learns the restored pid before the tree runs.
        o.set_notify_scripts(true);
    }
}

/// A bind mount whose source lives outside the checkpointed mount namespace.
///
/// At dump, the mount at `mountpoint` (as seen inside the tree's mount namespace) is
/// recorded under `key` instead of being dumped (`mnt[mountpoint]:key`); at restore,
/// `key` is bound to the host path `source` (`mnt[key]:source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMount {
    /// Name the mount is recorded under in the images.
    pub key: String,
    /// Dump: the mount point inside the tree. Restore: the host path to bind there.
    pub path: PathBuf,
}

/// What to checkpoint and how (`criu dump` / `criu pre-dump`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DumpOptions {
    /// Root of the process tree to checkpoint (for a container: its init).
    pub pid: i32,
    /// Options shared with restore (images dir, log, sockets, cgroups, ...).
    pub common: CommonOptions,
    /// `--leave-running`: keep the tree running after the dump.
    pub leave_running: bool,
    /// `--leave-stopped`: leave the tree stopped (e.g. for a migration that kills it later).
    pub leave_stopped: bool,
    /// `--track-mem`: start memory-change tracking (needed to base a later dump on this one).
    pub track_mem: bool,
    /// `--prev-images-dir`: the images of a previous pre-dump, for an incremental dump;
    /// relative to the images dir (e.g. `../pre1`) or absolute.
    pub parent_images: Option<PathBuf>,
    /// `--auto-dedup`: punch holes in parent images for pages this dump writes.
    pub auto_dedup: bool,
    /// `--tcp-skip-in-flight`: don't dump half-open connections.
    pub tcp_skip_in_flight: bool,
    /// `--freeze-cgroup`: freeze the tree with this (v1 freezer or v2) cgroup instead of
    /// ptrace-stopping each task; what runc does for containers.
    pub freeze_cgroup: Option<PathBuf>,
    /// Bind mounts to record as external rather than dump.
    pub external_mounts: Vec<ExternalMount>,
    /// `--cgroup-dump-controller`: the cgroup hierarchies to record, named as in
    /// `/proc/PID/cgroup` (`memory`, `cpu,cpuacct`, `""` for cgroup2); empty: all. CRIU
    /// records the whole subtree below the tree's cgroup in each hierarchy and recreates
    /// missing directories of it at restore, so a hierarchy where the tree sits at a
    /// shared cgroup (e.g. `name=systemd:/`) must be left out.
    pub cgroup_dump_controllers: Vec<String>,
    /// Mount points CRIU must skip (`--skip-mnt`).
    pub skip_mounts: Vec<PathBuf>,
    /// `--ghost-limit`: largest unlinked-but-open file CRIU copies into the images.
    pub ghost_limit: Option<u32>,
    /// `--page-server --address A --port P`: send memory pages to a page server (see
    /// [`super::Criu::start_page_server`]), typically on the migration target, instead
    /// of writing them into the images dir.
    pub page_server: Option<std::net::SocketAddr>,
}

impl DumpOptions {
    /// Checkpoint the tree rooted at `pid` into `images_dir` (which must exist), with the
    /// log in `images_dir/dump.log` and every other option at CRIU's default.
    pub fn new(pid: i32, images_dir: impl Into<PathBuf>) -> Self {
        DumpOptions {
            pid,
            common: CommonOptions::new(images_dir.into(), "dump.log"),
            leave_running: false,
            leave_stopped: false,
            track_mem: false,
            parent_images: None,
            auto_dedup: false,
            tcp_skip_in_flight: false,
            freeze_cgroup: None,
            external_mounts: Vec::new(),
            cgroup_dump_controllers: Vec::new(),
            skip_mounts: Vec::new(),
            ghost_limit: None,
            page_server: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.common.validate()?;
        if self.pid <= 0 {
            return Err(format!("pid {} is not a process id", self.pid));
        }
        if self.leave_running && self.leave_stopped {
            return Err("leave_running and leave_stopped exclude each other".into());
        }
        for m in &self.external_mounts {
            validate_key(&m.key)?;
        }
        Ok(())
    }

    pub(crate) fn to_rpc(&self, images_fd: RawFd, work_fd: Option<RawFd>) -> rpc::Criu_opts {
        let mut o = rpc::Criu_opts::new();
        self.common.fill(&mut o, images_fd, work_fd);
        o.set_pid(self.pid);
        o.set_leave_running(self.leave_running);
        if self.leave_stopped {
            o.set_leave_stopped(true);
        }
        o.set_track_mem(self.track_mem);
        if let Some(p) = &self.parent_images {
            o.set_parent_img(p.to_string_lossy().into_owned());
        }
        o.set_auto_dedup(self.auto_dedup);
        o.set_tcp_skip_in_flight(self.tcp_skip_in_flight);
        if let Some(cg) = &self.freeze_cgroup {
            o.set_freeze_cgroup(cg.to_string_lossy().into_owned());
        }
        for m in &self.external_mounts {
            o.external
                .push(format!("mnt[{}]:{}", m.path.to_string_lossy(), m.key));
        }
        o.cgroup_dump_controller
            .extend(self.cgroup_dump_controllers.iter().cloned());
        o.skip_mnt.extend(
            self.skip_mounts
                .iter()
                .map(|p| p.to_string_lossy().into_owned()),
        );
        if let Some(g) = self.ghost_limit {
            o.set_ghost_limit(g);
        }
        if let Some(addr) = &self.page_server {
            let mut ps = rpc::Criu_page_server_info::new();
            ps.set_address(addr.ip().to_string());
            ps.set_port(i32::from(addr.port()));
            o.ps = Some(ps).into();
        }
        o
    }
}

/// A file descriptor of the caller that the restored tree gets in place of the file
/// recorded under `key` (`--inherit-fd fd[N]:key`): e.g. new stdio pipes for a restored
/// container, keyed `pipe:[INODE]` after the pipes it had at dump time.
#[derive(Debug)]
pub struct InheritFd {
    /// The file as named in the images (`pipe:[123]`, `socket:[456]`, a path, ...).
    pub key: String,
    /// The caller's replacement; handed to criu under the same number.
    pub fd: OwnedFd,
}

/// A namespace the restored tree joins instead of getting a new one (`--join-ns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinNamespace {
    /// Namespace kind as CRIU names it: "net", "uts", "ipc", "pid", "mnt", "time", "user".
    pub kind: String,
    /// Its file, e.g. `/proc/PID/ns/net` or a bind-mounted nsfs file.
    pub path: PathBuf,
}

/// How to restore, and into what (`criu restore`).
#[derive(Debug)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Options shared with dump (images dir, log, sockets, cgroups, ...).
    pub common: CommonOptions,
    /// `--root`: the root (rootfs) the tree's mount namespace is rebuilt under.
    pub root: Option<PathBuf>,
    /// Restore the root task as a child of the caller (CRIU's `rst_sibling`), so the
    /// caller can `waitpid()` it; otherwise it is a child of `criu swrk`, which exits, so
    /// it is reparented to the nearest subreaper. Default: true.
    pub rst_sibling: bool,
    /// `--restore-detached` semantics are implied by the RPC; this asks CRIU to leave
    /// the tree stopped (`--leave-stopped`) instead of resuming it.
    pub leave_stopped: bool,
    /// Descriptors the tree inherits in place of recorded files.
    pub inherit_fds: Vec<InheritFd>,
    /// Host paths for the external bind mounts recorded at dump.
    pub external_mounts: Vec<ExternalMount>,
    /// Namespaces to join instead of creating.
    pub join_namespaces: Vec<JoinNamespace>,
    /// Restore into an empty new network namespace instead of the dumped one's
    /// configuration (CRIU's `empty_ns` with CLONE_NEWNET): the caller sets it up.
    pub empty_net_ns: bool,
    /// Cgroup roots to move the tree to (`--cgroup-root [ctrl:]/path`): controller
    /// (`None` = all) and path.
    pub cgroup_roots: Vec<(Option<String>, PathBuf)>,
    /// `--lsm-profile`, e.g. `apparmor:NAME` or `selinux:LABEL`.
    pub lsm_profile: Option<String>,
    /// `--tcp-close`: restore TCP connections closed.
    pub tcp_close: bool,
}

impl RestoreOptions {
    /// Restore the images in `images_dir`, with the log in `images_dir/restore.log`, the
    /// root task a child of the caller, and every other option at CRIU's default.
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            common: CommonOptions::new(images_dir.into(), "restore.log"),
            root: None,
            rst_sibling: true,
            leave_stopped: false,
            inherit_fds: Vec::new(),
            external_mounts: Vec::new(),
            join_namespaces: Vec::new(),
            empty_net_ns: false,
            cgroup_roots: Vec::new(),
            lsm_profile: None,
            tcp_close: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.common.validate()?;
        for m in &self.external_mounts {
            validate_key(&m.key)?;
        }
        for f in &self.inherit_fds {
            if f.key.is_empty() {
                return Err("inherit fd with an empty key".into());
            }
        }
        Ok(())
    }

    /// The descriptors criu must inherit, besides its socket and directories.
    pub(crate) fn passed_fds(&self) -> Vec<RawFd> {
        self.inherit_fds.iter().map(|f| f.fd.as_raw_fd()).collect()
    }

    pub(crate) fn to_rpc(&self, images_fd: RawFd, work_fd: Option<RawFd>) -> rpc::Criu_opts {
        let mut o = rpc::Criu_opts::new();
        self.common.fill(&mut o, images_fd, work_fd);
        if let Some(root) = &self.root {
            o.set_root(root.to_string_lossy().into_owned());
        }
        o.set_rst_sibling(self.rst_sibling);
        if self.leave_stopped {
            o.set_leave_stopped(true);
        }
        for f in &self.inherit_fds {
            let mut i = rpc::Inherit_fd::new();
            i.set_key(f.key.clone());
            i.set_fd(f.fd.as_raw_fd());
            o.inherit_fd.push(i);
        }
        for m in &self.external_mounts {
            o.external
                .push(format!("mnt[{}]:{}", m.key, m.path.to_string_lossy()));
        }
        for j in &self.join_namespaces {
            let mut n = rpc::Join_namespace::new();
            n.set_ns(j.kind.clone());
            n.set_ns_file(j.path.to_string_lossy().into_owned());
            o.join_ns.push(n);
        }
        if self.empty_net_ns {
            o.set_empty_ns(libc::CLONE_NEWNET as u32);
        }
        for (ctrl, path) in &self.cgroup_roots {
            let mut c = rpc::Cgroup_root::new();
            if let Some(ctrl) = ctrl {
                c.set_ctrl(ctrl.clone());
            }
            c.set_path(path.to_string_lossy().into_owned());
            o.cg_root.push(c);
        }
        if let Some(p) = &self.lsm_profile {
            o.set_lsm_profile(p.clone());
        }
        o.set_tcp_close(self.tcp_close);
        o
    }
}

/// The `--external` key of the terminal at `path` (e.g. `/proc/PID/fd/0`):
/// `tty[RDEV:DEV]` in hex, as CRIU names ttys. A tree whose terminal master lives outside
/// it can be dumped with this key in [`CommonOptions::external`] and restored with an
/// [`InheritFd`] of another terminal under the same key: the alternative to
/// [`CommonOptions::orphan_pts_master`] that keeps using a terminal of the caller's.
pub fn tty_external_key(path: &std::path::Path) -> Result<String, super::CriuError> {
    let st = nix::sys::stat::stat(path).map_err(|e| {
        super::CriuError::InvalidOption(format!("terminal {}: {e}", path.display()))
    })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err(super::CriuError::InvalidOption(format!(
            "{} is not a terminal (not a character device)",
            path.display()
        )));
    }
    Ok(format!("tty[{:x}:{:x}]", st.st_rdev, st.st_dev))
}

fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains([':', '[', ']']) {
        return Err(format!(
            "external mount key {key:?} must be non-empty without ':', '[' or ']'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_options_translate_to_rpc() {
        let mut d = DumpOptions::new(42, "/img");
        d.leave_running = true;
        d.track_mem = true;
        d.parent_images = Some("../pre".into());
        d.common.manage_cgroups = Some(CgroupMode::Soft);
        d.common.network_lock = NetworkLock::Skip;
        d.external_mounts.push(ExternalMount {
            key: "data".into(),
            path: "/mnt/data".into(),
        });
        d.validate().unwrap();
        let o = d.to_rpc(7, None);
        assert_eq!(o.pid(), 42);
        assert_eq!(o.images_dir_fd(), 7);
        assert!(o.leave_running() && o.track_mem() && o.manage_cgroups());
        assert_eq!(o.parent_img(), "../pre");
        assert_eq!(o.manage_cgroups_mode(), rpc::Criu_cg_mode::SOFT);
        assert_eq!(o.network_lock(), rpc::Criu_network_lock_method::SKIP);
        assert_eq!(o.external, vec!["mnt[/mnt/data]:data".to_string()]);
        assert!(o.cgroup_dump_controller.is_empty());
        assert_eq!(o.log_file(), "dump.log");
        assert!(!o.has_work_dir_fd());
        assert!(o.ps.is_none());
        d.cgroup_dump_controllers = vec!["memory".into(), "".into()];
        assert_eq!(d.to_rpc(7, None).cgroup_dump_controller, ["memory", ""]);
        d.page_server = Some(std::net::SocketAddr::from(([10, 0, 0, 2], 2700)));
        let o = d.to_rpc(7, Some(8));
        assert_eq!((o.ps.address(), o.ps.port()), ("10.0.0.2", 2700));
        assert_eq!(o.work_dir_fd(), 8);
    }

    #[test]
    fn restore_options_translate_to_rpc() {
        let mut r = RestoreOptions::new("/img");
        r.root = Some("/rootfs".into());
        r.external_mounts.push(ExternalMount {
            key: "data".into(),
            path: "/srv/data".into(),
        });
        r.empty_net_ns = true;
        r.cgroup_roots.push((None, "/vessel/c1".into()));
        r.validate().unwrap();
        let o = r.to_rpc(5, Some(6));
        assert_eq!(o.root(), "/rootfs");
        assert!(o.rst_sibling());
        assert_eq!(o.work_dir_fd(), 6);
        assert_eq!(o.external, vec!["mnt[data]:/srv/data".to_string()]);
        assert_eq!(o.empty_ns(), libc::CLONE_NEWNET as u32);
        assert_eq!(o.cg_root[0].path(), "/vessel/c1");
        assert!(!o.cg_root[0].has_ctrl());
    }

    #[test]
    fn bad_options_are_rejected() {
        assert!(DumpOptions::new(0, "/img").validate().is_err());
        let mut d = DumpOptions::new(1, "/img");
        d.common.log_file = "a/b.log".into();
        assert!(d.validate().unwrap_err().contains("a/b.log"));
        let mut d = DumpOptions::new(1, "/img");
        d.leave_running = true;
        d.leave_stopped = true;
        assert!(d.validate().is_err());
        let mut r = RestoreOptions::new("/img");
        r.external_mounts.push(ExternalMount {
            key: "a:b".into(),
            path: "/x".into(),
        });
        assert!(r.validate().unwrap_err().contains("a:b"));
    }
}
