//! Which namespaces a container gets, and how.
//!
//! [`NamespacePlan::from_spec`] splits `linux.namespaces` into
//! - namespaces created by the `clone(2)` of the init ([`NamespacePlan::clone_flags`]):
//!   all new ones, so the kernel creates the user namespace first and makes it the
//!   owner of the others;
//! - namespaces joined by `path` ([`NamespacePlan::joins`]), entered by the init with
//!   `setns(2)`, user namespace first. A pid namespace joined by path is entered by the
//!   *parent* before the clone (`setns` on a pid namespace only affects children, so the
//!   init is born in it without another fork);
//! - the time namespace, which `clone(2)` cannot create (its flag collides with the
//!   exit-signal byte): the init `unshare`s it and writes `timens_offsets`; its
//!   `execve` of the user program then moves it into that namespace.
//!
//! When the user namespace is joined by path, the other new namespaces must be owned by
//! it, so they are `unshare`d by the init after the `setns` instead of being cloned.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// Opening a namespace path failed.
    #[error("open namespace {kind} at {path}: {source}")]
    Open {
        /// Namespace type.
        kind: String,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `setns` failed.
    #[error("join namespace {kind} at {path}: {source}")]
    Join {
        /// Namespace type.
        kind: String,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// `unshare` failed.
    #[error("unshare {0:?}: {1}")]
    Unshare(CloneFlags, #[source] nix::Error),
    /// Writing an id map or time offsets failed.
    #[error("write {path}: {source}")]
    Write {
        /// The proc file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bad id mappings, or writing them failed.
    #[error(transparent)]
    Idmap(#[from] crate::idmap::IdmapError),
    /// A combination this runtime does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

type Result<T> = std::result::Result<T, NamespaceError>;

/// The clone flag of a namespace type.
pub fn clone_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// A namespace to join by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// Its type.
    pub kind: LinuxNamespaceType,
    /// The nsfs path (e.g. `/proc/<pid>/ns/net`).
    pub path: PathBuf,
}

/// How the init gets its namespaces (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    /// Flags for the init's `clone`.
    pub clone_flags: CloneFlags,
    /// Flags the init `unshare`s after joining (new namespaces owned by a joined userns).
    pub unshare_flags: CloneFlags,
    /// Namespaces the init joins, user first. Excludes pid (see `pid_join`).
    pub joins: Vec<Join>,
    /// A pid namespace the parent enters before cloning.
    pub pid_join: Option<PathBuf>,
    /// A new user namespace: the parent writes its id maps.
    pub new_user: bool,
    /// A new pid namespace: the init is its pid 1.
    pub new_pid: bool,
    /// A new time namespace (unshared by the init).
    pub new_time: bool,
}

impl NamespacePlan {
    /// Builds the plan from the spec.
    pub fn from_spec(spec: &Spec) -> Result<NamespacePlan> {
        let mut plan = NamespacePlan {
            clone_flags: CloneFlags::empty(),
            unshare_flags: CloneFlags::empty(),
            joins: Vec::new(),
            pid_join: None,
            new_user: false,
            new_pid: false,
            new_time: false,
        };
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        let user_joined = namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_some());
        let mut user_join = None;
        for ns in &namespaces {
            let kind = ns.typ();
            match (ns.path(), kind) {
                (Some(p), LinuxNamespaceType::Pid) => plan.pid_join = Some(p.clone()),
                (Some(p), LinuxNamespaceType::User) => {
                    user_join = Some(Join {
                        kind,
                        path: p.clone(),
                    })
                }
                (Some(p), _) => plan.joins.push(Join {
                    kind,
                    path: p.clone(),
                }),
                (None, LinuxNamespaceType::Time) => plan.new_time = true,
                (None, LinuxNamespaceType::Pid) if user_joined => {
                    return Err(NamespaceError::Unsupported(
                        "a new pid namespace inside a user namespace joined by path".into(),
                    ))
                }
                (None, _) if user_joined => plan.unshare_flags |= clone_flag(kind),
                (None, _) => plan.clone_flags |= clone_flag(kind),
            }
            if ns.path().is_none() {
                match kind {
                    LinuxNamespaceType::User => plan.new_user = true,
                    LinuxNamespaceType::Pid => plan.new_pid = true,
                    _ => {}
                }
            }
        }
        if let Some(u) = user_join {
            plan.joins.insert(0, u);
        }
        Ok(plan)
    }

    /// Opens every namespace to join (in the parent, so a bad path fails before the
    /// clone). The init then `setns`es them with [`enter`].
    pub fn open_joins(&self) -> Result<Vec<(Join, File)>> {
        self.joins
            .iter()
            .map(|j| Ok((j.clone(), open_ns(j.kind, &j.path)?)))
            .collect()
    }
}

/// Opens a namespace file.
pub fn open_ns(kind: LinuxNamespaceType, path: &Path) -> Result<File> {
    File::open(path).map_err(|source| NamespaceError::Open {
        kind: kind.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Joins the opened namespaces in order (user first), then unshares `unshare_flags`.
pub fn enter(joins: &[(Join, File)], unshare_flags: CloneFlags) -> Result<()> {
    for (j, f) in joins {
        nix::sched::setns(f.as_fd(), clone_flag(j.kind)).map_err(|source| {
            NamespaceError::Join {
                kind: j.kind.to_string(),
                path: j.path.clone(),
                source,
            }
        })?;
    }
    if !unshare_flags.is_empty() {
        nix::sched::unshare(unshare_flags)
            .map_err(|e| NamespaceError::Unshare(unshare_flags, e))?;
    }
    Ok(())
}

/// The spec's uid and gid mappings.
fn id_maps(spec: &Spec) -> (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>) {
    let linux = spec.linux().as_ref();
    (
        linux
            .and_then(|l| l.uid_mappings().clone())
            .unwrap_or_default(),
        linux
            .and_then(|l| l.gid_mappings().clone())
            .unwrap_or_default(),
    )
}

/// Checks the id mappings as the kernel will (parent side, before the clone).
pub fn validate_id_maps(spec: &Spec) -> Result<()> {
    let (uid, gid) = id_maps(spec);
    crate::idmap::validate("uid", &uid)?;
    crate::idmap::validate("gid", &gid)?;
    Ok(())
}

/// Writes the uid and gid maps of the child `pid`'s new user namespace (from the parent).
pub fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    let (uid, gid) = id_maps(spec);
    crate::idmap::write_id_maps(nix::unistd::Pid::from_raw(pid), &uid, &gid)?;
    Ok(())
}

/// Writes `linux.timeOffsets` for the time namespace the caller just unshared.
pub fn write_time_offsets(spec: &Spec) -> Result<()> {
    let Some(offsets) = spec.linux().as_ref().and_then(|l| l.time_offsets().clone()) else {
        return Ok(());
    };
    let mut text = String::new();
    for (clock, off) in offsets {
        text.push_str(&format!(
            "{clock} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    if text.is_empty() {
        return Ok(());
    }
    write_proc("/proc/self/timens_offsets", &text)
}

/// One `write(2)` of the whole text, as proc map files require.
fn write_proc(path: &str, text: &str) -> Result<()> {
    let err = |source| NamespaceError::Write {
        path: PathBuf::from(path),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(ns: serde_json::Value) -> Spec {
        let mut v = crate::spec::default_spec(false);
        v["linux"]["namespaces"] = ns;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn new_namespaces_are_cloned() {
        let p = NamespacePlan::from_spec(&spec(json!([
            {"type": "pid"}, {"type": "network"}, {"type": "mount"}, {"type": "time"}
        ])))
        .unwrap();
        assert_eq!(
            p.clone_flags,
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS
        );
        assert!(p.new_pid && p.new_time && !p.new_user);
        assert!(p.joins.is_empty() && p.pid_join.is_none());
    }

    #[test]
    fn joined_user_namespace_goes_first_and_owns_new_ones() {
        let p = NamespacePlan::from_spec(&spec(json!([
            {"type": "network", "path": "/proc/1/ns/net"},
            {"type": "mount"},
            {"type": "user", "path": "/proc/1/ns/user"},
        ])))
        .unwrap();
        assert_eq!(p.joins[0].kind, LinuxNamespaceType::User);
        assert_eq!(p.joins[1].kind, LinuxNamespaceType::Network);
        assert_eq!(p.unshare_flags, CloneFlags::CLONE_NEWNS);
        assert!(p.clone_flags.is_empty());
        let e = NamespacePlan::from_spec(&spec(json!([
            {"type": "pid"}, {"type": "user", "path": "/proc/1/ns/user"}
        ])))
        .unwrap_err();
        assert!(e.to_string().starts_with("unsupported"));
    }

    #[test]
    fn pid_join_is_for_the_parent() {
        let p = NamespacePlan::from_spec(&spec(json!([
            {"type": "pid", "path": "/proc/1/ns/pid"}, {"type": "mount"}
        ])))
        .unwrap();
        assert_eq!(p.pid_join.as_deref(), Some(Path::new("/proc/1/ns/pid")));
        assert!(!p.new_pid);
    }

    #[test]
    fn overlapping_id_maps_are_refused() {
        let mut v = crate::spec::default_spec(false);
        v["linux"]["namespaces"] = json!([{"type": "user"}, {"type": "mount"}]);
        v["linux"]["uidMappings"] = json!([
            {"containerID": 0, "hostID": 100000, "size": 100},
            {"containerID": 50, "hostID": 300000, "size": 100}
        ]);
        v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 100}]);
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert!(validate_id_maps(&spec).is_err());
    }
}
