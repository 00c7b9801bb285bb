//! User namespaces of containers: who writes the id maps, rootless mode, and cgroup
//! delegation to a container's root.
//!
//! - [`write_id_maps`]: the parent writes the maps of the init's new user namespace while
//!   the init waits for `Go` (it never runs unmapped). A caller that is root writes them
//!   itself; a non-root caller may only map itself (one line, with `setgroups` denied first,
//!   as the kernel requires), so any other mapping goes through the setuid helpers
//!   `newuidmap`/`newgidmap` (Debian package `uidmap`), which check `/etc/subuid` and
//!   `/etc/subgid`.
//! - [`is_rootless`]: the caller is not root of the initial user namespace (a plain user, or
//!   root of a container's user namespace when nesting); then the runtime needs a user
//!   namespace and skips cgroups it cannot write ([`cgroup_delegated`]).
//! - [`default_root`]: runc's state-directory rule for non-root callers
//!   (`$XDG_RUNTIME_DIR/vessel`).
//! - [`delegate_cgroup`]: a container with its own user namespace and a writable cgroup
//!   mount gets its cgroup directories chowned to its root, so a runtime inside it can
//!   create child cgroups (nesting, as LXD's `security.nesting`).

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use crate::cgroups::Manager;
use crate::idmap::{self, IdmapError};
use crate::IntegrationError;

/// Errors of user-namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// Writing a map directly failed.
    #[error(transparent)]
    Idmap(#[from] IdmapError),
    /// A non-root caller asked for a mapping other than itself and no helper is installed.
    #[error(
        "{kind} mapping {map:?} maps more than the caller's own id, which needs {helper} \
         (Debian package uidmap) and ranges in /etc/sub{kind}; {helper} was not found"
    )]
    NoHelper {
        /// `uid` or `gid`.
        kind: &'static str,
        /// The helper looked for.
        helper: &'static str,
        /// The mapping, as the kernel would read it.
        map: String,
    },
    /// The helper refused the mapping.
    #[error("{helper} {args}: {reason}")]
    Helper {
        /// `newuidmap` or `newgidmap`.
        helper: &'static str,
        /// Its arguments.
        args: String,
        /// Its exit status and stderr.
        reason: String,
    },
    /// A non-root caller without a user namespace in the config.
    #[error(
        "running as uid {0} (rootless): the config needs a new user namespace mapping the \
         caller (see `vessel spec --rootless`)"
    )]
    NeedsUserNamespace(u32),
    /// No state directory can be chosen for a non-root caller.
    #[error(
        "running as uid {0}: XDG_RUNTIME_DIR is not set, so there is no default state \
         directory; pass --root"
    )]
    NoStateDir(u32),
    /// Joining the container's user namespace (rootless exec) failed.
    #[error("join the container's user namespace: {0}")]
    JoinUserns(#[source] std::io::Error),
    /// Chowning a cgroup directory to the container's root failed.
    #[error("delegate cgroup {path} to the container's root: {source}")]
    Chown {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, UsernsError>;

/// Where a helper binary lives, if installed.
fn find_helper(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Whether `maps` only maps `own` (one range of size 1 whose host id is the caller's),
/// the only mapping an unprivileged process may write itself.
fn is_self_map(maps: &[LinuxIdMapping], own: u32) -> bool {
    matches!(maps, [m] if m.size() == 1 && m.host_id() == own)
}

fn helper_args(pid: i32, maps: &[LinuxIdMapping]) -> Vec<String> {
    let mut args = vec![pid.to_string()];
    for m in maps {
        args.extend([
            m.container_id().to_string(),
            m.host_id().to_string(),
            m.size().to_string(),
        ]);
    }
    args
}

fn run_helper(
    helper: &'static str,
    kind: &'static str,
    pid: i32,
    maps: &[LinuxIdMapping],
) -> Result<()> {
    let path = find_helper(helper).ok_or_else(|| UsernsError::NoHelper {
        kind,
        helper,
        map: maps
            .iter()
            .map(|m| format!("{} {} {}", m.container_id(), m.host_id(), m.size()))
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let args = helper_args(pid, maps);
    let out = Command::new(&path)
        .args(&args)
        .output()
        .map_err(|e| UsernsError::Helper {
            helper,
            args: args.join(" "),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(UsernsError::Helper {
            helper,
            args: args.join(" "),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// The spec's `linux.uidMappings` and `linux.gidMappings`.
pub fn spec_mappings(spec: &Spec) -> (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>) {
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

/// Writes the id maps of `pid`'s new user namespace from the parent (see the module doc).
pub fn write_id_maps(pid: i32, uid: &[LinuxIdMapping], gid: &[LinuxIdMapping]) -> Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let pid_t = nix::unistd::Pid::from_raw(pid);
    if euid == 0 {
        // Root of our namespace (the host's, or a container's when nesting): the kernel
        // accepts any mapping within our own.
        return Ok(idmap::write_id_maps(pid_t, uid, gid)?);
    }
    // Unprivileged: self-maps are written directly (setgroups denied before gid_map),
    // anything else by the setuid helpers.
    if is_self_map(uid, euid) {
        idmap::write_id_maps(pid_t, uid, &[])?;
    } else {
        run_helper("newuidmap", "uid", pid, uid)?;
    }
    if is_self_map(gid, egid) {
        idmap::write_id_maps(pid_t, &[], gid)?;
    } else {
        run_helper("newgidmap", "gid", pid, gid)?;
    }
    Ok(())
}

/// The first range of `/etc/subuid`-style `text` for the user `name` or `uid`.
fn sub_range(text: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let mut it = l.trim().splitn(3, ':');
        let who = it.next()?;
        let start = it.next()?.parse().ok()?;
        let count: u32 = it.next()?.parse().ok()?;
        let me = Some(who) == name || who == uid.to_string();
        (me && count > 0).then_some((start, count))
    })
}

/// The mappings `vessel spec --rootless` writes for the caller: its uid/gid as the
/// container's root, plus, when `newuidmap`/`newgidmap` are installed and
/// `/etc/subuid`/`/etc/subgid` give the caller ranges, those ranges as ids 1.. (so the
/// container has more than one user); otherwise only the self-map, like `runc spec
/// --rootless`. Returned as (uidMappings, gidMappings) JSON arrays.
pub fn rootless_mappings() -> (serde_json::Value, serde_json::Value) {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let helpers = find_helper("newuidmap").is_some() && find_helper("newgidmap").is_some();
    let maps = |own: u32, file: &str| {
        let mut v = vec![serde_json::json!({"containerID": 0, "hostID": own, "size": 1})];
        let sub = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| sub_range(&t, name.as_deref(), uid));
        if let (true, Some((start, count))) = (helpers, sub) {
            v.push(serde_json::json!({"containerID": 1, "hostID": start, "size": count}));
        }
        serde_json::Value::Array(v)
    };
    (maps(uid, "/etc/subuid"), maps(gid, "/etc/subgid"))
}

/// Whether this process is not root of the initial user namespace: a plain user, or any
/// process inside a user namespace (e.g. a runtime nested in a container).
pub fn is_rootless() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return true;
    }
    in_user_namespace()
}

/// Whether this process lives in a user namespace other than the initial one (whose
/// `uid_map` is the identity over all 2^32-1 ids).
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => {
            let f: Vec<&str> = m.split_whitespace().collect();
            f != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// The default state root: `/run/vessel` for root; for other users
/// `$XDG_RUNTIME_DIR/vessel` (runc's rule when `--root` is not given).
pub fn default_root() -> Result<PathBuf> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return Ok(PathBuf::from(crate::state::DEFAULT_ROOT));
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => Ok(PathBuf::from(d).join("vessel")),
        None => Err(UsernsError::NoStateDir(euid.as_raw())),
    }
}

/// Refuses a config a non-root caller cannot run: it must create a user namespace.
pub fn check_rootless(spec: &Spec) -> Result<()> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return Ok(());
    }
    let new_user = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
        });
    if new_user {
        Ok(())
    } else {
        Err(UsernsError::NeedsUserNamespace(euid.as_raw()))
    }
}

/// Whether this process may create the cgroup directories `dirs`: the nearest existing
/// ancestor of each must be writable by us. Returns the first one that is not.
pub fn cgroup_delegated<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Option<PathBuf> {
    for dir in dirs {
        let mut cur = dir.to_path_buf();
        while !cur.exists() {
            if !cur.pop() {
                break;
            }
        }
        if nix::unistd::access(&cur, nix::unistd::AccessFlags::W_OK).is_err() {
            return Some(cur);
        }
    }
    None
}

/// The host uid and gid the container's root (id 0) maps to, if the spec maps it.
pub fn container_root(spec: &Spec) -> Option<(u32, u32)> {
    let (uid, gid) = spec_mappings(spec);
    let host = |maps: &[LinuxIdMapping]| {
        maps.iter()
            .find(|m| m.container_id() == 0)
            .map(|m| m.host_id())
    };
    Some((host(&uid)?, host(&gid)?))
}

/// Whether the spec asks for delegation of its cgroup: a new user namespace, a cgroup
/// namespace, and a `cgroup` mount that is not read-only.
pub fn wants_cgroup_delegation(spec: &Spec) -> bool {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let new = |t| ns.iter().any(|n| n.typ() == t && n.path().is_none());
    let rw_cgroup_mount = spec.mounts().iter().flatten().any(|m| {
        m.typ().as_deref() == Some("cgroup")
            && !m
                .options()
                .iter()
                .flatten()
                .any(|o| o == "ro" || o == "rro")
    });
    new(LinuxNamespaceType::User) && new(LinuxNamespaceType::Cgroup) && rw_cgroup_mount
}

/// Files of a delegated cgroup its new owner gets (systemd's delegation list, plus v1's
/// `tasks`): enough to create sub-cgroups and move processes, but not the cgroup's own limit
/// files, which stay root's so the container cannot raise its own limits.
const DELEGATED_FILES: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "tasks",
];

/// Chowns the container's cgroup directories `dirs` (which this runtime created) and their
/// delegation files (`cgroup.procs`, `cgroup.threads`, `cgroup.subtree_control`, `tasks`) to
/// `uid:gid`, so the container's root can manage its own
/// sub-cgroups.
pub fn delegate_cgroup<'a>(
    dirs: impl IntoIterator<Item = &'a Path>,
    uid: u32,
    gid: u32,
) -> Result<()> {
    let chown = |p: &Path| {
        nix::unistd::chown(p, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| {
            UsernsError::Chown {
                path: p.to_path_buf(),
                source: e.into(),
            }
        })
    };
    for dir in dirs {
        chown(dir)?;
        for f in DELEGATED_FILES {
            let p = dir.join(f);
            if p.exists() {
                chown(&p)?;
            }
        }
    }
    Ok(())
}

/// For `exec` by a non-root caller: joining the container's pid namespace needs
/// `CAP_SYS_ADMIN` in the caller's own user namespace too, which only the container's user
/// namespace gives it. So the caller joins that first (as runc's nsexec does) when `flags`
/// (the namespaces to join) include it. Returns whether it joined.
pub fn join_user_ns_before_pid_ns(
    pidfd: &std::os::fd::OwnedFd,
    flags: nix::sched::CloneFlags,
) -> Result<bool> {
    use std::os::fd::AsFd;
    let user = nix::sched::CloneFlags::CLONE_NEWUSER;
    if nix::unistd::geteuid().is_root() || !flags.contains(user) {
        return Ok(false);
    }
    nix::sched::setns(pidfd.as_fd(), user).map_err(|e| UsernsError::JoinUserns(e.into()))?;
    Ok(true)
}

/// The container's cgroup, or `None` with a warning when this runtime is rootless (see
/// [`is_rootless`]) and the cgroup cannot be made here (not delegated to us). A root
/// runtime on the host gets `planned` unchanged, errors included.
pub fn cgroup_or_skip(
    planned: std::result::Result<Option<Manager>, IntegrationError>,
    spec: &Spec,
    warnings: &mut Vec<String>,
) -> std::result::Result<Option<Manager>, IntegrationError> {
    if !is_rootless() {
        return planned;
    }
    let euid = nix::unistd::geteuid().as_raw();
    let why = match planned {
        Ok(None) => return Ok(None),
        Ok(Some(cg)) => match cgroup_delegated(cg.hierarchies().iter().map(|h| h.dir.as_path())) {
            None => return Ok(Some(cg)),
            Some(dir) => format!("{} is not writable", dir.display()),
        },
        Err(e) => e.to_string(),
    };
    let mut w = format!(
        "rootless (uid {euid}): cgroups are not delegated to this user ({why}): the container \
         runs without a cgroup of its own"
    );
    if spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .is_some()
    {
        w.push_str("; linux.resources are not applied");
    }
    warnings.push(w);
    Ok(None)
}

/// Delegates the container's cgroup to its root when the spec asks for it
/// ([`wants_cgroup_delegation`]).
pub fn delegate_container_cgroup(cg: &Manager, spec: &Spec) -> Result<()> {
    if !wants_cgroup_delegation(spec) {
        return Ok(());
    }
    let Some((uid, gid)) = container_root(spec) else {
        return Ok(());
    };
    delegate_cgroup(cg.hierarchies().iter().map(|h| h.dir.as_path()), uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn maps(v: serde_json::Value) -> Vec<LinuxIdMapping> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn self_map_is_one_line_of_size_one() {
        assert!(is_self_map(
            &maps(json!([{"containerID": 0, "hostID": 1000, "size": 1}])),
            1000
        ));
        assert!(!is_self_map(
            &maps(json!([{"containerID": 0, "hostID": 1000, "size": 2}])),
            1000
        ));
        assert!(!is_self_map(
            &maps(json!([
                {"containerID": 0, "hostID": 1000, "size": 1},
                {"containerID": 1, "hostID": 100000, "size": 65536}
            ])),
            1000
        ));
    }

    #[test]
    fn helper_arguments_list_every_range() {
        let m = maps(json!([
            {"containerID": 0, "hostID": 1000, "size": 1},
            {"containerID": 1, "hostID": 100000, "size": 65536}
        ]));
        assert_eq!(
            helper_args(42, &m),
            ["42", "0", "1000", "1", "1", "100000", "65536"]
        );
    }

    #[test]
    fn delegation_needs_userns_cgroupns_and_a_writable_cgroup_mount() {
        let mut v = crate::spec::default_spec(false);
        let spec = |v: &serde_json::Value| -> Spec { serde_json::from_value(v.clone()).unwrap() };
        // Default: no user namespace, read-only cgroup mount.
        assert!(!wants_cgroup_delegation(&spec(&v)));
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        assert!(!wants_cgroup_delegation(&spec(&v)));
        for m in v["mounts"].as_array_mut().unwrap() {
            if m["type"] == "cgroup" {
                m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
            }
        }
        assert!(wants_cgroup_delegation(&spec(&v)));
    }

    #[test]
    fn delegation_hands_out_the_directory_and_procs_not_the_limits() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            skip_test!("needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        for f in ["cgroup.procs", "tasks", "memory.limit_in_bytes"] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        delegate_cgroup([d.path()], 123456, 654321).unwrap();
        let owner = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner(d.path()), (123456, 654321));
        assert_eq!(owner(&d.path().join("cgroup.procs")), (123456, 654321));
        assert_eq!(owner(&d.path().join("tasks")), (123456, 654321));
        assert_eq!(owner(&d.path().join("memory.limit_in_bytes")), (0, 0));
    }

    #[test]
    fn a_missing_helper_is_named_in_the_error() {
        let m = maps(json!([{"containerID": 0, "hostID": 100000, "size": 65536}]));
        let e = run_helper("vessel-no-such-idmap-helper", "uid", 1, &m).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, UsernsError::NoHelper { .. }), "{text}");
        assert!(
            text.contains("vessel-no-such-idmap-helper") && text.contains("0 100000 65536"),
            "{text}"
        );
    }

    #[test]
    fn subordinate_ranges_by_name_or_uid() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(sub_range(text, Some("alice"), 1000), Some((100000, 65536)));
        assert_eq!(sub_range(text, Some("carol"), 1001), Some((200000, 1000)));
        assert_eq!(sub_range(text, Some("bob"), 1002), None);
    }

    #[test]
    fn a_new_user_namespace_is_detected() {
        // SAFETY: the child only unshares, reads a proc file and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let before = in_user_namespace();
                let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
                let after = in_user_namespace() && is_rootless();
                let code = match (ok, before, after) {
                    (false, _, _) => 2,
                    (true, _, true) => 0,
                    _ => 1,
                };
                // SAFETY: leaves the child without running the harness's destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                match st {
                    nix::sys::wait::WaitStatus::Exited(_, 2) => {
                        skip_test!("cannot create a user namespace")
                    }
                    other => assert_eq!(other, nix::sys::wait::WaitStatus::Exited(child, 0)),
                }
            }
        }
    }
}
