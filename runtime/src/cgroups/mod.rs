//! The cgroup manager: creates a container's cgroups (v1 hierarchies, the cgroup2 tree, or
//! both on hybrid hosts), applies `linux.resources`, freezes, kills, reports statistics and
//! OOM events, and removes exactly the directories it created.
//!
//! Each controller is driven in the hierarchy that carries it: v1 first where a v1
//! hierarchy has it, else the cgroup2 tree. On a unified host everything is v2; on this
//! project's hybrid CI host the v1 hierarchies carry everything except hugetlb, which lives
//! in the cgroup2 tree. The device allow-list is v1 `devices.*` where the v1 devices
//! controller exists, else an eBPF program attached to the v2 cgroup.
//!
//! Typical use by the container lifecycle:
//! `Manager::new(path, id)` → `set(resources)` (validates, creates, writes limits; nothing is
//! created if validation fails; device rules get runc's defaults appended, `set_exact` skips
//! that) → `apply(pid)` → … → `destroy()`. The manager is
//! `Serialize`/`Deserialize` so later commands can rebuild it from the container state; save
//! it after `set`/`apply`, since it records the directories those created.

pub mod devices;
mod fs;
mod join;
pub mod layout;
mod oom;
pub mod stats;
mod v1;
mod v2;
pub mod validate;
pub use join::SelfJoin;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use layout::{Layout, Mode};
/// The OCI types `set` takes, re-exported for callers that build them.
pub use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxResources};
pub use oom::OomWatcher;
pub use stats::{CpuStats, IoStats, MemoryStats, PidsStats, Stats};

/// Errors of the cgroup manager.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading a cgroup file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing a cgroup file failed.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// mkdir of a cgroup failed.
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// rmdir of a cgroup failed.
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A cgroup file held something unexpected.
    #[error("unexpected content {value:?} in {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was found.
        value: String,
    },
    /// No usable hierarchy.
    #[error("no cgroup hierarchy: {0}")]
    NoHierarchy(String),
    /// The OCI cgroupsPath or container id cannot be used.
    #[error("invalid cgroups path {path:?}: {reason}")]
    InvalidPath {
        /// The path given.
        path: String,
        /// Why.
        reason: String,
    },
    /// linux.resources holds a value that cannot be applied.
    #[error("invalid linux.resources: {0}")]
    Invalid(String),
    /// A requested controller is not available on this host.
    #[error("cgroup controller {controller} is not available: {reason}")]
    ControllerUnavailable {
        /// The controller (or interface).
        controller: String,
        /// Why / what to do.
        reason: String,
    },
    /// A bpf(2) command failed.
    #[error("{op} for the device filter of {path} failed: {source}{}", if log.is_empty() { String::new() } else { format!("\nverifier log:\n{log}") })]
    Bpf {
        /// The bpf command.
        op: &'static str,
        /// The cgroup.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// The verifier log, if any.
        log: String,
    },
    /// Freezing or thawing did not settle.
    #[error("cgroup {path} did not settle while freezing/thawing (state {state})")]
    FreezeTimeout {
        /// The cgroup.
        path: PathBuf,
        /// The last state seen.
        state: String,
    },
    /// Processes survived kill_all.
    #[error("{count} processes still in cgroup {path} after SIGKILL")]
    KillTimeout {
        /// The cgroup.
        path: PathBuf,
        /// How many remained.
        count: usize,
    },
    /// kill(2) failed.
    #[error("cannot signal pid {pid}: {source}")]
    Signal {
        /// The process.
        pid: i32,
        /// The error.
        source: nix::Error,
    },
    /// Setting up an event notification failed.
    #[error("cannot watch OOM events of {path}: {source}")]
    Event {
        /// The cgroup.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// cgroup version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// A v1 hierarchy with its own controllers.
    V1,
    /// The cgroup2 unified hierarchy.
    V2,
}

/// The container's cgroup in one hierarchy.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hierarchy {
    /// Version of this hierarchy.
    pub version: Version,
    /// v1: controllers bound to it; v2: controllers available to the cgroup.
    pub controllers: Vec<String>,
    /// The container's cgroup directory (absolute).
    pub dir: PathBuf,
    /// The existing directory `dir` is resolved against (own cgroup or hierarchy root).
    base: PathBuf,
    /// Directories this manager created, parents first.
    #[serde(default)]
    created: Mutex<Vec<PathBuf>>,
}

impl Hierarchy {
    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
    fn created(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        self.created.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A container's cgroups across all hierarchies it uses.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manager {
    mode: Mode,
    hierarchies: Vec<Hierarchy>,
    /// Parents shared by containers on the default path (`<own>/vessel`), removed when empty.
    #[serde(default)]
    shared_parents: Vec<PathBuf>,
    /// Every hierarchy's cgroup exists (made by this manager's [`Manager::create`]).
    #[serde(skip)]
    created_all: std::sync::atomic::AtomicBool,
}

/// Controllers whose v2 tree copy is used by `set`/`stats` when it is the only one.
const V2_CONTROLLERS: &[&str] = &[
    "cpu", "cpuset", "memory", "pids", "io", "hugetlb", "rdma", "misc",
];

fn normalize(p: &Path) -> Result<PathBuf, CgroupError> {
    let bad = |reason: &str| CgroupError::InvalidPath {
        path: p.display().to_string(),
        reason: reason.into(),
    };
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(bad("\"..\" is not allowed")),
            Component::Prefix(_) => return Err(bad("not a Unix path")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("it names the hierarchy root itself"));
    }
    Ok(out)
}

fn read_list(dir: &Path, file: &str) -> Vec<String> {
    fs::read_opt(dir, file)
        .ok()
        .flatten()
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

impl Manager {
    /// Plans the container's cgroups on this host (creates nothing).
    ///
    /// `cgroups_path` is OCI `linux.cgroupsPath`: absolute = below each hierarchy's root;
    /// relative, or `None` (= `vessel/<container_id>`) = below the caller's own cgroup.
    pub fn new(cgroups_path: Option<&Path>, container_id: &str) -> Result<Manager, CgroupError> {
        Manager::with_layout(&Layout::detect()?, cgroups_path, container_id)
    }

    /// As [`Manager::new`] with a given layout.
    pub fn with_layout(
        layout: &Layout,
        cgroups_path: Option<&Path>,
        container_id: &str,
    ) -> Result<Manager, CgroupError> {
        let (rel, absolute) = match cgroups_path {
            Some(p) => (normalize(p)?, p.is_absolute()),
            None => {
                if container_id.is_empty()
                    || container_id.contains('/')
                    || container_id == "."
                    || container_id == ".."
                {
                    return Err(CgroupError::InvalidPath {
                        path: format!("vessel/{container_id}"),
                        reason: "the container id is not a single path component".into(),
                    });
                }
                (Path::new("vessel").join(container_id), false)
            }
        };
        let mode = layout.mode();
        let mut hierarchies = Vec::new();
        let mut shared_parents = Vec::new();
        let mut v1_ctrls = BTreeSet::new();
        let mut plan = |m: &layout::MountedHierarchy| {
            let base = if absolute {
                m.mount_point.clone()
            } else {
                m.own_dir.clone()
            };
            if cgroups_path.is_none() {
                shared_parents.push(base.join("vessel"));
            }
            (base.join(&rel), base)
        };
        for m in &layout.v1 {
            let (dir, base) = plan(m);
            v1_ctrls.extend(m.controllers.iter().cloned());
            hierarchies.push(Hierarchy {
                version: Version::V1,
                controllers: m.controllers.clone(),
                dir,
                base,
                created: Mutex::new(Vec::new()),
            });
        }
        if let Some(u) = &layout.unified {
            let (dir, base) = plan(u);
            // What the base can hand down (enable_v2 enables it along the whole path).
            let avail = read_list(&base, "cgroup.controllers");
            let useful = mode == Mode::Unified || avail.iter().any(|c| !v1_ctrls.contains(c));
            if useful {
                hierarchies.push(Hierarchy {
                    version: Version::V2,
                    controllers: avail,
                    dir,
                    base,
                    created: Mutex::new(Vec::new()),
                });
            } else {
                shared_parents.pop();
            }
        }
        if hierarchies.is_empty() {
            return Err(CgroupError::NoHierarchy(
                "no hierarchy carries a controller".into(),
            ));
        }
        Ok(Manager {
            created_all: Default::default(),
            mode,
            hierarchies,
            shared_parents,
        })
    }

    /// The host layout this manager was planned for.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The hierarchies used, with the container's directory in each.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// The directory of the hierarchy that drives `controller` (v1 name, or v2 name).
    pub fn path_for(&self, controller: &str) -> Option<&Path> {
        self.owner(controller).map(|h| h.dir.as_path())
    }

    fn owner(&self, c: &str) -> Option<&Hierarchy> {
        let v1 = self
            .hierarchies
            .iter()
            .find(|h| h.version == Version::V1 && h.has(c));
        v1.or_else(|| {
            let v2name = match c {
                "blkio" => "io",
                "cpuacct" => "cpu",
                other => other,
            };
            self.hierarchies
                .iter()
                .find(|h| h.version == Version::V2 && h.has(v2name))
        })
    }

    fn v2(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.version == Version::V2)
    }

    /// Where freezing happens: the v1 freezer, else the v2 cgroup (cgroup.freeze is core).
    fn freezer(&self) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.version == Version::V1 && h.has("freezer"))
            .or_else(|| self.v2())
    }

    /// The hierarchy whose cgroup.procs is authoritative for `pids` (`None` only for a
    /// manager deserialized from a state without hierarchies).
    fn primary(&self) -> Option<&Hierarchy> {
        self.freezer()
            .or_else(|| self.owner("pids"))
            .or_else(|| self.hierarchies.first())
    }

    fn need(&self, controller: &str, what: &str) -> Result<&Hierarchy, CgroupError> {
        self.owner(controller)
            .ok_or_else(|| CgroupError::ControllerUnavailable {
                controller: controller.into(),
                reason: format!("{what} was requested but no hierarchy on this host carries it"),
            })
    }

    /// Checks what [`Manager::set`] would apply (`r` plus the runtime's default device
    /// rules) against the rules and this host without creating or writing anything.
    pub fn validate(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        match r.devices() {
            Some(list) => {
                let mut eff = r.clone();
                eff.set_devices(Some(devices::container_rules(list, &[])));
                self.validate_exact(&eff)
            }
            None => self.validate_exact(r),
        }
    }

    /// Checks `r` exactly as given (see [`Manager::set_exact`]).
    pub fn validate_exact(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        validate::check(r)?;
        if let Some(m) = r.memory() {
            let any = m.limit().is_some_and(|v| v != 0)
                || m.reservation().is_some_and(|v| v != 0)
                || m.swap().is_some_and(|v| v != 0)
                || m.kernel().is_some_and(|v| v != 0)
                || m.kernel_tcp().is_some_and(|v| v != 0)
                || m.swappiness().is_some()
                || m.disable_oom_killer().is_some();
            if any {
                let h = self.need("memory", "a memory limit")?;
                if h.version == Version::V2 {
                    validate::swap_to_v2(m.swap(), m.limit())?;
                }
            }
        }
        if let Some(c) = r.cpu() {
            let any = c.shares().is_some_and(|v| v != 0)
                || c.quota().is_some_and(|v| v != 0)
                || c.period().is_some_and(|v| v != 0)
                || c.burst().is_some()
                || c.idle().is_some();
            let rt = c.realtime_runtime().is_some_and(|v| v != 0)
                || c.realtime_period().is_some_and(|v| v != 0);
            if any || rt {
                let h = self.need("cpu", "a cpu limit")?;
                if rt && h.version == Version::V2 {
                    return Err(CgroupError::Invalid(
                        "cpu realtimeRuntime/realtimePeriod cannot be applied on cgroup v2 \
                         (the kernel has no realtime group scheduling interface there)"
                            .into(),
                    ));
                }
            }
            let online = |file: &str, default: &str| -> Result<BTreeSet<u32>, CgroupError> {
                let text = fs::read_opt(Path::new("/"), file)?.unwrap_or_else(|| default.into());
                validate::parse_cpu_list(file, &text)
            };
            if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.trim().is_empty()) {
                self.need("cpuset", "cpuset cpus")?;
                let want = validate::parse_cpu_list("cpuset cpus", cpus)?;
                let have = online("sys/devices/system/cpu/online", "0")?;
                if let Some(bad) = want.difference(&have).next() {
                    return Err(CgroupError::Invalid(format!(
                        "cpuset cpus {cpus:?}: cpu {bad} is not online on this host"
                    )));
                }
            }
            if let Some(mems) = c.mems().as_deref().filter(|s| !s.trim().is_empty()) {
                self.need("cpuset", "cpuset mems")?;
                let want = validate::parse_cpu_list("cpuset mems", mems)?;
                let have = online("sys/devices/system/node/online", "0")?;
                if let Some(bad) = want.difference(&have).next() {
                    return Err(CgroupError::Invalid(format!(
                        "cpuset mems {mems:?}: memory node {bad} is not online on this host"
                    )));
                }
            }
        }
        if r.pids().is_some_and(|p| p.limit() != 0) {
            self.need("pids", "a pids limit")?;
        }
        if let Some(b) = r.block_io() {
            let any = b.weight().is_some()
                || b.leaf_weight().is_some()
                || [
                    b.weight_device().as_ref().map(|v| v.len()),
                    b.throttle_read_bps_device().as_ref().map(|v| v.len()),
                    b.throttle_write_bps_device().as_ref().map(|v| v.len()),
                    b.throttle_read_iops_device().as_ref().map(|v| v.len()),
                    b.throttle_write_iops_device().as_ref().map(|v| v.len()),
                ]
                .iter()
                .any(|n| n.unwrap_or(0) > 0);
            if any {
                self.need("blkio", "a block I/O limit")?;
            }
        }
        for h in r.hugepage_limits().iter().flatten() {
            self.need("hugetlb", "a hugepage limit")?;
            let size = h.page_size();
            let (num, unit) = size.split_at(size.len() - 2);
            let kb = num.parse::<u64>().unwrap_or(0)
                * match unit {
                    "GB" => 1024 * 1024,
                    "MB" => 1024,
                    _ => 1,
                };
            let sys = format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB");
            if !Path::new(&sys).exists() {
                return Err(CgroupError::Invalid(format!(
                    "hugepage size {size} is not supported by this kernel ({sys} is missing)"
                )));
            }
        }
        if let Some(list) = r.devices() {
            if self
                .hierarchies
                .iter()
                .any(|h| h.version == Version::V1 && h.has("devices"))
            {
                devices::v1_lines(&devices::rules_from_oci(list)?)?;
            }
        }
        if r.devices().is_some()
            && !self
                .hierarchies
                .iter()
                .any(|h| h.version == Version::V2 || h.has("devices"))
        {
            return Err(CgroupError::ControllerUnavailable {
                controller: "devices".into(),
                reason: "neither a v1 devices hierarchy nor cgroup2 is mounted".into(),
            });
        }
        if let Some(n) = r.network() {
            if n.class_id().is_some() {
                self.need("net_cls", "network classID")?;
            }
            if n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
                self.need("net_prio", "network priorities")?;
            }
        }
        if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(CgroupError::ControllerUnavailable {
                controller: "rdma".into(),
                reason: "rdma limits are not supported by vessel".into(),
            });
        }
        if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
            let Some(h) = self.v2() else {
                return Err(CgroupError::ControllerUnavailable {
                    controller: "cgroup2".into(),
                    reason: "linux.resources.unified needs the cgroup2 hierarchy".into(),
                });
            };
            for k in u.keys() {
                let c = validate::unified_controller(k)?;
                if c != "cgroup" && !h.has(c) {
                    return Err(CgroupError::Invalid(format!(
                        "unified key {k:?}: controller {c:?} is not available in {} \
                         (available: {})",
                        h.dir.display(),
                        h.controllers.join(" ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// mkdir -p the cgroup in every hierarchy, recording the levels created here. Rolls
    /// back what this call created on failure.
    fn create(&self) -> Result<(), CgroupError> {
        use std::sync::atomic::Ordering;
        if self.created_all.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut made: Vec<(usize, PathBuf)> = Vec::new();
        let res = self
            .hierarchies
            .iter()
            .enumerate()
            .try_for_each(|(i, h)| self.create_one(i, h, &mut made));
        if res.is_err() {
            for (i, d) in made.iter().rev() {
                if std::fs::remove_dir(d).is_ok() {
                    self.hierarchies[*i].created().retain(|x| x != d);
                }
            }
        } else {
            self.created_all.store(true, Ordering::Relaxed);
        }
        res
    }

    fn create_one(
        &self,
        i: usize,
        h: &Hierarchy,
        made: &mut Vec<(usize, PathBuf)>,
    ) -> Result<(), CgroupError> {
        // Another container's `destroy` may remove an empty shared level (e.g. `vessel/`)
        // between our seeing it and our `mkdir` below it (ENOENT): walk again, making it
        // anew (and recording it as ours), a bounded number of times.
        let mut attempt = 0;
        loop {
            match self.create_levels(i, h, made) {
                Err(CgroupError::Create { source, .. })
                    if source.kind() == ErrorKind::NotFound && attempt < 8 =>
                {
                    attempt += 1
                }
                r => return r,
            }
        }
    }

    fn create_levels(
        &self,
        i: usize,
        h: &Hierarchy,
        made: &mut Vec<(usize, PathBuf)>,
    ) -> Result<(), CgroupError> {
        let rel = h.dir.strip_prefix(&h.base).unwrap_or(Path::new(""));
        let mut cur = h.base.clone();
        for c in rel.components() {
            let parent = cur.clone();
            cur.push(c);
            let created = match std::fs::create_dir(&cur) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
                Err(source) => return Err(CgroupError::Create { path: cur, source }),
            };
            if created {
                h.created().push(cur.clone());
                made.push((i, cur.clone()));
            }
            if h.version == Version::V1 && h.has("cpuset") {
                // A new cpuset is empty and refuses tasks until it has cpus and mems. Fill
                // every empty level, not only the ones made here: a concurrent create may
                // have made a shared level (e.g. `vessel/`) and not filled it yet.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    if fs::read(&cur, f)?.trim().is_empty() {
                        let v = fs::read(&parent, f)?;
                        if !v.trim().is_empty() {
                            fs::write(&cur, f, v.trim())?;
                        }
                    }
                }
            }
            if created {
                // A parent with processes (other than the root) cannot delegate domain
                // controllers; enabling only the threaded ones would turn its subtree
                // threaded, so leave it alone (set() reports what it needs).
                // (The root has no cgroup.type and is exempt.)
                let busy = h.version == Version::V2
                    && !fs::procs(&parent)?.is_empty()
                    && fs::read_opt(&parent, "cgroup.type")?.is_some_and(|t| t.trim() == "domain");
                if h.version == Version::V2 && self.mode == Mode::Unified && !busy {
                    // Best effort, as runc: make every controller the parent offers
                    // available to the new child (fails if the parent holds processes).
                    let avail = read_list(&parent, "cgroup.controllers");
                    let on = read_list(&parent, "cgroup.subtree_control");
                    for c in avail.iter().filter(|c| !on.contains(c)) {
                        if V2_CONTROLLERS.contains(&c.as_str()) {
                            let _ = fs::write(&parent, "cgroup.subtree_control", &format!("+{c}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Enables `ctrls` in cgroup.subtree_control from the base down to the leaf's parent.
    fn enable_v2(&self, h: &Hierarchy, ctrls: &BTreeSet<&str>) -> Result<(), CgroupError> {
        if ctrls.is_empty() {
            return Ok(());
        }
        let rel = h.dir.strip_prefix(&h.base).unwrap_or(Path::new(""));
        let mut cur = h.base.clone();
        for c in rel.components() {
            let on = read_list(&cur, "cgroup.subtree_control");
            for ctrl in ctrls.iter().filter(|x| !on.iter().any(|o| o == *x)) {
                match fs::write(&cur, "cgroup.subtree_control", &format!("+{ctrl}")) {
                    Err(CgroupError::Write { ref source, .. })
                        if matches!(
                            source.raw_os_error(),
                            Some(libc::EBUSY) | Some(libc::EOPNOTSUPP)
                        ) =>
                    {
                        return Err(CgroupError::ControllerUnavailable {
                            controller: (*ctrl).to_string(),
                            reason: format!(
                                "cannot enable it below {}: that cgroup holds processes (or is \
                                 in a threaded subtree) and cgroup v2 delegates domain \
                                 controllers only from cgroups without processes; use an \
                                 absolute cgroupsPath or run vessel from a cgroup of its own",
                                cur.display()
                            ),
                        })
                    }
                    other => other?,
                }
            }
            cur.push(c);
        }
        Ok(())
    }

    /// Creates the cgroups (if needed) and opens them for a child to join itself without
    /// a `cgroup.procs` write by the parent (see [`SelfJoin`]).
    pub fn self_join(&self) -> Result<SelfJoin, CgroupError> {
        self.create()?;
        SelfJoin::open(self)
    }

    /// Moves `pid` into the cgroups of one `version` only (after a [`SelfJoin`] did the
    /// others, or a `clone3` into the v2 cgroup was refused).
    pub fn apply_version(&self, pid: i32, version: Version) -> Result<(), CgroupError> {
        self.create()?;
        for h in self.hierarchies.iter().filter(|h| h.version == version) {
            fs::write(&h.dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Creates the cgroups (if needed) and moves `pid` into them. Only `pid` is moved.
    pub fn apply(&self, pid: i32) -> Result<(), CgroupError> {
        self.create()?;
        for h in &self.hierarchies {
            fs::write(&h.dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Validates and applies `r` (initial setup or live update) as runc does: when `r` has
    /// device rules, [`devices::runtime_default_rules`] are appended (null, zero, tty, pts…).
    /// Nothing is created when validation fails.
    pub fn set(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        self.set_with_devices(r, &[])
    }

    /// As [`Manager::set`], also allowing the device nodes of `linux.devices`
    /// (see [`devices::container_rules`]).
    pub fn set_with_devices(
        &self,
        r: &LinuxResources,
        nodes: &[LinuxDevice],
    ) -> Result<(), CgroupError> {
        match r.devices() {
            Some(list) => {
                let mut eff = r.clone();
                eff.set_devices(Some(devices::container_rules(list, nodes)));
                self.set_exact(&eff)
            }
            None => self.set_exact(r),
        }
    }

    /// Validates and applies `r` exactly as given: the device rules are not extended.
    pub fn set_exact(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        self.validate_exact(r)?;
        self.create()?;
        // Controllers needed from the v2 tree.
        let mut v2_need: BTreeSet<&str> = BTreeSet::new();
        let on_v2 = |c: &str| self.owner(c).is_some_and(|h| h.version == Version::V2);
        if r.memory().is_some() && on_v2("memory") {
            v2_need.insert("memory");
        }
        if let Some(c) = r.cpu() {
            if on_v2("cpu")
                && (c.shares().is_some()
                    || c.quota().is_some()
                    || c.period().is_some()
                    || c.burst().is_some()
                    || c.idle().is_some())
            {
                v2_need.insert("cpu");
            }
            if on_v2("cpuset") && (c.cpus().is_some() || c.mems().is_some()) {
                v2_need.insert("cpuset");
            }
        }
        if r.pids().is_some() && on_v2("pids") {
            v2_need.insert("pids");
        }
        if r.block_io().is_some() && on_v2("blkio") {
            v2_need.insert("io");
        }
        if r.hugepage_limits().as_ref().is_some_and(|v| !v.is_empty()) && on_v2("hugetlb") {
            v2_need.insert("hugetlb");
        }
        for k in r.unified().iter().flatten().map(|(k, _)| k) {
            if let Ok(c) = validate::unified_controller(k) {
                if c != "cgroup" {
                    v2_need.insert(c);
                }
            }
        }
        if let Some(h) = self.v2() {
            self.enable_v2(h, &v2_need)?;
        }

        if let Some(m) = r.memory() {
            if let Some(h) = self.owner("memory") {
                match h.version {
                    Version::V1 => v1::set_memory(&h.dir, m)?,
                    Version::V2 => v2::set_memory(&h.dir, m)?,
                }
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(h) = self.owner("cpu") {
                match h.version {
                    Version::V1 => v1::set_cpu(&h.dir, c)?,
                    Version::V2 => v2::set_cpu(&h.dir, c)?,
                }
            }
            if let Some(h) = self.owner("cpuset") {
                if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.trim().is_empty()) {
                    fs::write(&h.dir, "cpuset.cpus", cpus)?;
                }
                if let Some(mems) = c.mems().as_deref().filter(|s| !s.trim().is_empty()) {
                    fs::write(&h.dir, "cpuset.mems", mems)?;
                }
            }
        }
        if let Some(p) = r.pids() {
            if p.limit() != 0 {
                if let Some(h) = self.owner("pids") {
                    let v = if p.limit() < 0 {
                        "max".to_string()
                    } else {
                        p.limit().to_string()
                    };
                    fs::write(&h.dir, "pids.max", &v)?;
                }
            }
        }
        if let Some(b) = r.block_io() {
            if let Some(h) = self.owner("blkio") {
                match h.version {
                    Version::V1 => v1::set_blkio(&h.dir, b)?,
                    Version::V2 => v2::set_io(&h.dir, b)?,
                }
            }
        }
        for l in r.hugepage_limits().iter().flatten() {
            if let Some(h) = self.owner("hugetlb") {
                let size = l.page_size();
                match h.version {
                    Version::V1 => fs::write(
                        &h.dir,
                        &format!("hugetlb.{size}.limit_in_bytes"),
                        &l.limit().to_string(),
                    )?,
                    Version::V2 => {
                        let v = if l.limit() < 0 {
                            "max".to_string()
                        } else {
                            l.limit().to_string()
                        };
                        fs::write(&h.dir, &format!("hugetlb.{size}.max"), &v)?
                    }
                }
            }
        }
        if let Some(list) = r.devices() {
            let rules = devices::rules_from_oci(list)?;
            match self
                .hierarchies
                .iter()
                .find(|h| h.version == Version::V1 && h.has("devices"))
            {
                Some(h) => devices::apply_v1(&h.dir, &rules)?,
                None => {
                    if let Some(h) = self.v2() {
                        devices::apply_v2(&h.dir, &rules)?;
                    }
                }
            }
        }
        if let Some(n) = r.network() {
            if let (Some(id), Some(h)) = (n.class_id(), self.owner("net_cls")) {
                fs::write(&h.dir, "net_cls.classid", &id.to_string())?;
            }
            if let Some(h) = self.owner("net_prio") {
                for p in n.priorities().iter().flatten() {
                    fs::write(
                        &h.dir,
                        "net_prio.ifpriomap",
                        &format!("{} {}", p.name(), p.priority()),
                    )?;
                }
            }
        }
        if let (Some(u), Some(h)) = (r.unified(), self.v2()) {
            let mut keys: Vec<_> = u.iter().collect();
            keys.sort();
            for (k, v) in keys {
                if !h.dir.join(k).exists() {
                    return Err(CgroupError::Invalid(format!(
                        "unified key {k:?}: {} has no such file",
                        h.dir.display()
                    )));
                }
                fs::write(&h.dir, k, v)?;
            }
        }
        Ok(())
    }

    /// Freezes every process of the container and waits (up to 10 s) until the freeze
    /// settled; if it does not, thaws again and fails.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.freeze_within(Duration::from_secs(10))
    }

    fn freeze_within(&self, timeout: Duration) -> Result<(), CgroupError> {
        match self.freezer() {
            Some(h) if h.version == Version::V1 => v1::freeze(&h.dir, timeout),
            Some(h) => v2::set_frozen(&h.dir, true, timeout),
            None => Err(CgroupError::ControllerUnavailable {
                controller: "freezer".into(),
                reason: "no v1 freezer hierarchy and no cgroup2".into(),
            }),
        }
    }

    /// Thaws the container and waits until it runs again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self.freezer() {
            Some(h) if h.version == Version::V1 => v1::thaw(&h.dir),
            Some(h) => v2::set_frozen(&h.dir, false, Duration::from_secs(10)),
            None => Err(CgroupError::ControllerUnavailable {
                controller: "freezer".into(),
                reason: "no v1 freezer hierarchy and no cgroup2".into(),
            }),
        }
    }

    /// Whether the container is frozen (a freeze still in progress is not).
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self.freezer() {
            Some(h) if !h.dir.exists() => Ok(false),
            Some(h) if h.version == Version::V1 => v1::is_frozen(&h.dir),
            Some(h) => v2::is_frozen(&h.dir),
            None => Ok(false),
        }
    }

    /// Pids in the container's cgroup and its descendants.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut out = Vec::new();
        if let Some(h) = self.primary() {
            collect_pids(&h.dir, &mut out)?;
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Sends `signal` to every process. For SIGKILL it uses cgroup.kill where the kernel has
    /// it, else freezes, signals each pid and thaws, repeating until the cgroup is empty.
    pub fn kill_all(&self, signal: Signal) -> Result<(), CgroupError> {
        let Some(prim) = self.primary().filter(|h| h.dir.exists()) else {
            return Ok(());
        };
        if signal == Signal::SIGKILL
            && prim.version == Version::V2
            && prim.dir.join("cgroup.kill").exists()
        {
            fs::write(&prim.dir, "cgroup.kill", "1")?;
            return self.wait_empty();
        }
        let start = Instant::now();
        let mut pause = Duration::from_micros(500);
        // Freezing keeps a forking container from outrunning the kill loop; a task stuck
        // where it cannot freeze (e.g. stalled under OOM with the OOM killer disabled) is
        // signalled unfrozen instead, after a short try.
        let mut try_freeze = signal == Signal::SIGKILL;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            let frozen = try_freeze && self.freeze_within(Duration::from_millis(500)).is_ok();
            try_freeze &= frozen;
            for p in &pids {
                match kill(Pid::from_raw(*p), signal) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(source) => {
                        if frozen {
                            let _ = self.thaw();
                        }
                        return Err(CgroupError::Signal { pid: *p, source });
                    }
                }
            }
            if frozen {
                self.thaw()?;
            }
            if signal != Signal::SIGKILL {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(CgroupError::KillTimeout {
                    path: prim.dir.clone(),
                    count: pids.len(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn wait_empty(&self) -> Result<(), CgroupError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(500);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(CgroupError::KillTimeout {
                    path: self.primary().map(|h| h.dir.clone()).unwrap_or_default(),
                    count: pids.len(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Current usage figures.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        let live = |h: &&Hierarchy| h.dir.exists();
        if let Some(h) = self.owner("memory").filter(live) {
            s.memory = match h.version {
                Version::V1 => v1::memory_stats(&h.dir)?,
                Version::V2 => v2::memory_stats(&h.dir)?,
            };
        }
        let v1dir = |c: &str| {
            self.hierarchies
                .iter()
                .find(|h| h.version == Version::V1 && h.has(c) && h.dir.exists())
                .map(|h| h.dir.as_path())
        };
        let (cpu, cpuacct) = (v1dir("cpu"), v1dir("cpuacct"));
        if cpu.is_some() || cpuacct.is_some() {
            s.cpu = v1::cpu_stats(cpu, cpuacct)?;
        } else if let Some(h) = self.v2().filter(live) {
            s.cpu = v2::cpu_stats(&h.dir)?;
        }
        if let Some(h) = self.owner("pids").filter(live) {
            s.pids = match h.version {
                Version::V1 => v1::pids_stats(&h.dir)?,
                Version::V2 => v2::pids_stats(&h.dir)?,
            };
        }
        if let Some(h) = self.owner("blkio").filter(live) {
            s.io = match h.version {
                Version::V1 => v1::io_stats(&h.dir)?,
                Version::V2 => v2::io_stats(&h.dir)?,
            };
        }
        Ok(s)
    }

    /// A watcher that blocks until the container hits OOM (see [`OomWatcher::wait`]).
    pub fn oom_events(&self) -> Result<OomWatcher, CgroupError> {
        let h = self.need("memory", "OOM notification")?;
        match h.version {
            Version::V1 => OomWatcher::v1(&h.dir),
            Version::V2 => OomWatcher::v2(&h.dir),
        }
    }

    /// Thaws, kills what is left, and removes exactly the directories this manager created
    /// (leaf first, plus any cgroups the container made below its own). Idempotent.
    /// A cgroup that existed before (joined, not created) is left alone, processes and all.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        self.created_all
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // Processes are only killed in a cgroup this manager created: a pre-existing cgroup
        // that the container merely joined may hold processes that are not ours.
        let own_leaf = self
            .primary()
            .is_some_and(|p| p.dir.exists() && p.created().last() == Some(&p.dir));
        if own_leaf {
            if let Some(h) = self.freezer().filter(|h| h.dir.exists()) {
                if self.is_frozen().unwrap_or(false) || h.version == Version::V1 {
                    let _ = self.thaw();
                }
            }
            self.kill_all(Signal::SIGKILL)?;
        }
        let mut first_err = None;
        for h in &self.hierarchies {
            let mut created = h.created();
            let owns_leaf = created.last() == Some(&h.dir);
            if owns_leaf {
                if let Err(e) = remove_descendants(&h.dir) {
                    first_err.get_or_insert(e);
                    continue;
                }
            }
            while let Some(d) = created.last().cloned() {
                // Only the leaf is worth waiting for: a busy parent holds someone else's cgroup.
                match rmdir_retry(&d, d == h.dir) {
                    Ok(()) => {
                        created.pop();
                    }
                    // A shared parent still holding another container's cgroup: leave it.
                    Err(CgroupError::Remove { ref source, .. })
                        if d != h.dir
                            && matches!(
                                source.raw_os_error(),
                                Some(libc::EBUSY) | Some(libc::ENOTEMPTY)
                            ) =>
                    {
                        created.pop();
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        for p in &self.shared_parents {
            // Only succeeds when empty; another container may still use it.
            let _ = std::fs::remove_dir(p);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    out.extend(fs::procs(dir)?);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&e.path(), out)?;
        }
    }
    Ok(())
}

fn remove_descendants(dir: &Path) -> Result<(), CgroupError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_descendants(&e.path())?;
            rmdir_retry(&e.path(), true)?;
        }
    }
    Ok(())
}

/// rmdir, retrying EBUSY for a while: exiting tasks leave the cgroup asynchronously.
fn rmdir_retry(d: &Path, retry: bool) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(500);
    loop {
        match std::fs::remove_dir(d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e)
                if retry
                    && e.raw_os_error() == Some(libc::EBUSY)
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: d.to_path_buf(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod guest_vm;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod v2_tests;

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn legacy() -> Layout {
        Layout::parse(
            "3:cpu,cpuacct:/\n2:memory:/own/x\n1:name=systemd:/\n",
            "30 25 0:26 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             31 25 0:27 / /cg/memory rw - cgroup cgroup rw,memory\n",
        )
        .unwrap()
    }

    #[test]
    fn paths_are_planned_per_hierarchy() {
        let l = legacy();
        let m = Manager::with_layout(&l, None, "c1").unwrap();
        let dirs: Vec<_> = m.hierarchies().iter().map(|h| h.dir.clone()).collect();
        assert_eq!(
            dirs,
            [
                PathBuf::from("/cg/cpu,cpuacct/vessel/c1"),
                PathBuf::from("/cg/memory/own/x/vessel/c1")
            ]
        );
        let m = Manager::with_layout(&l, Some(Path::new("/abs/p")), "c1").unwrap();
        assert_eq!(m.hierarchies()[1].dir, Path::new("/cg/memory/abs/p"));
        let m = Manager::with_layout(&l, Some(Path::new("rel/p")), "c1").unwrap();
        assert_eq!(m.hierarchies()[1].dir, Path::new("/cg/memory/own/x/rel/p"));
        assert_eq!(
            m.path_for("cpuacct"),
            Some(Path::new("/cg/cpu,cpuacct/rel/p"))
        );
        assert_eq!(m.path_for("pids"), None);
        assert_eq!(m.mode(), Mode::Legacy);
    }

    #[test]
    fn bad_paths_and_ids() {
        let l = legacy();
        for p in ["../x", "a/../../b", "/", ""] {
            assert!(
                Manager::with_layout(&l, Some(Path::new(p)), "c").is_err(),
                "{p:?}"
            );
        }
        for id in ["", ".", "..", "a/b"] {
            assert!(Manager::with_layout(&l, None, id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn state_json_round_trip() {
        let m = Manager::with_layout(&legacy(), None, "c1").unwrap();
        m.hierarchies[0]
            .created()
            .push(PathBuf::from("/cg/cpu,cpuacct/vessel"));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["mode"], "legacy");
        assert_eq!(v["hierarchies"][0]["version"], "v1");
        let back: Manager = serde_json::from_value(v).unwrap();
        assert_eq!(
            *back.hierarchies[0].created(),
            vec![PathBuf::from("/cg/cpu,cpuacct/vessel")]
        );
        assert_eq!(back.shared_parents, m.shared_parents);
    }

    #[test]
    fn missing_controllers_are_named() {
        let m = Manager::with_layout(&legacy(), None, "c1").unwrap();
        let r: LinuxResources = serde_json::from_str(r#"{"pids":{"limit":5}}"#).unwrap();
        let e = m.validate(&r).unwrap_err().to_string();
        assert!(e.contains("pids"), "{e}");
        let r: LinuxResources =
            serde_json::from_str(r#"{"unified":{"memory.high":"1M"}}"#).unwrap();
        assert!(m.validate(&r).unwrap_err().to_string().contains("cgroup2"));
        let r: LinuxResources =
            serde_json::from_str(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":1}]}"#).unwrap();
        assert!(m.validate(&r).unwrap_err().to_string().contains("hugetlb"));
    }
}
