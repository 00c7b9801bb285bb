//! The one place where the lifecycle calls into the sibling modules (rootfs, security,
//! cgroups, hooks). Until a module is merged, its entry point here refuses any spec that
//! asks for what it would do ("unsupported: ... not built in yet"), so nothing is ever
//! silently ignored; merging the module replaces the body with the real call.

use std::path::Path;

use oci_spec::runtime::Spec;

/// Errors of the sibling modules, as seen by the lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    /// A feature whose module is not built in yet.
    #[error("unsupported: {0} (not built into this vessel yet)")]
    NotBuiltIn(&'static str),
    /// The cgroup manager failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    /// A syscall of the minimal root setup failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] nix::Error),
}

type Result<T> = std::result::Result<T, IntegrationError>;

/// Options of the rootfs setup.
#[derive(Debug, Clone, Copy, Default)]
pub struct RootfsOptions {
    /// Use move+chroot instead of pivot_root.
    pub no_pivot: bool,
}

/// Parent-side checks of the rootfs, before any fork.
pub fn rootfs_validate(spec: &Spec, _bundle: &Path) -> Result<()> {
    let has_mounts = spec.mounts().as_ref().is_some_and(|m| !m.is_empty());
    let linux = spec.linux().as_ref();
    let has = |b: bool| b;
    if has_mounts
        || linux.is_some_and(|l| {
            has(l.devices().as_ref().is_some_and(|d| !d.is_empty()))
                || l.masked_paths().as_ref().is_some_and(|d| !d.is_empty())
                || l.readonly_paths().as_ref().is_some_and(|d| !d.is_empty())
                || l.sysctl().as_ref().is_some_and(|d| !d.is_empty())
                || l.rootfs_propagation().is_some()
        })
        || spec
            .root()
            .as_ref()
            .is_some_and(|r| r.readonly() == Some(true))
    {
        return Err(IntegrationError::NotBuiltIn(
            "mounts, devices, masked/readonly paths, sysctl, readonly root",
        ));
    }
    Ok(())
}

/// In the init, after the namespaces: sets up the root filesystem and enters it.
pub fn rootfs_prepare(_spec: &Spec, rootfs: &Path, _opts: RootfsOptions) -> Result<()> {
    // Minimal root change until the rootfs module is merged (validate refused
    // everything else): chroot into the bundle's rootfs.
    nix::unistd::chroot(rootfs).map_err(|e| IntegrationError::Sys("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| IntegrationError::Sys("chdir /", e))
}

/// In the init, after the rootfs: `linux.sysctl`.
pub fn rootfs_sysctl(_spec: &Spec) -> Result<()> {
    Ok(())
}

/// Compiled seccomp filter (none until the security module is merged).
#[derive(Debug)]
pub struct SeccompFilter;

/// Parent-side: compiles `linux.seccomp`.
pub fn seccomp_compile(spec: &Spec) -> Result<Option<SeccompFilter>> {
    if spec.linux().as_ref().is_some_and(|l| l.seccomp().is_some()) {
        return Err(IntegrationError::NotBuiltIn("linux.seccomp"));
    }
    Ok(None)
}

/// In the init: installs the filter; returns the notify listener fd if any.
pub fn seccomp_install(_f: &SeccompFilter) -> Result<Option<std::os::fd::OwnedFd>> {
    Ok(None)
}

/// Parent-side checks of the process attributes handled by the security module, so a
/// config asking for them fails before anything is created.
pub fn security_validate(process: &oci_spec::runtime::Process) -> Result<()> {
    if process.capabilities().is_some() {
        return Err(IntegrationError::NotBuiltIn("process.capabilities"));
    }
    if process.rlimits().as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(IntegrationError::NotBuiltIn("process.rlimits"));
    }
    if process.oom_score_adj().is_some()
        || process.io_priority().is_some()
        || process.scheduler().is_some()
    {
        return Err(IntegrationError::NotBuiltIn(
            "process.oomScoreAdj/ioPriority/scheduler",
        ));
    }
    let u = process.user();
    if u.uid() != 0
        || u.gid() != 0
        || u.umask().is_some()
        || u.additional_gids().as_ref().is_some_and(|g| !g.is_empty())
    {
        return Err(IntegrationError::NotBuiltIn("process.user other than root"));
    }
    Ok(())
}

/// In the init, as root: rlimits, oom score, io priority, scheduler, personality.
pub fn process_attrs_as_root(spec: &Spec, _process: &oci_spec::runtime::Process) -> Result<()> {
    if spec
        .linux()
        .as_ref()
        .is_some_and(|l| l.personality().is_some())
    {
        return Err(IntegrationError::NotBuiltIn("linux.personality"));
    }
    Ok(())
}

/// In the init: keepcaps, user switch, capabilities.
pub fn user_and_caps(_process: &oci_spec::runtime::Process) -> Result<()> {
    Ok(())
}

/// Runs hooks of one kind with the state JSON on stdin.
pub fn run_hooks(hooks: Option<&Vec<oci_spec::runtime::Hook>>, _state: &str) -> Result<()> {
    if hooks.is_some_and(|h| !h.is_empty()) {
        return Err(IntegrationError::NotBuiltIn("hooks"));
    }
    Ok(())
}

/// The per-container cgroup manager.
pub type Cgroup = crate::cgroups::Manager;

/// Parent-side: plans the container's cgroup and validates `linux.resources` against
/// this host (creates nothing).
pub fn cgroup_new(spec: &Spec, id: &str) -> Result<Option<Cgroup>> {
    let l = spec.linux().as_ref();
    let path = l.and_then(|l| l.cgroups_path().as_deref());
    let m = crate::cgroups::Manager::new(path, id)?;
    if let Some(r) = l.and_then(|l| l.resources().as_ref()) {
        m.validate(r)?;
    }
    Ok(Some(m))
}

/// Parent-side, after the clone: creates the cgroup, applies the resources, moves `pid`.
pub fn cgroup_apply(cg: &Cgroup, spec: &Spec, pid: i32) -> Result<()> {
    if let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        cg.set(r)?;
    }
    Ok(cg.apply(pid)?)
}

/// Exec-side: moves `pid` into the container's existing cgroup.
pub fn cgroup_join(cg: &Cgroup, pid: i32) -> Result<()> {
    Ok(cg.apply(pid)?)
}

/// Removes the cgroup (killing stragglers).
pub fn cgroup_destroy(cg: &Cgroup) -> Result<()> {
    Ok(cg.destroy()?)
}

/// Serializes the cgroup manager for the state file.
pub fn cgroup_to_json(cg: &Cgroup) -> Option<serde_json::Value> {
    serde_json::to_value(cg).ok()
}

/// Rebuilds the cgroup manager from the state file.
pub fn cgroup_from_json(v: &serde_json::Value) -> Option<Cgroup> {
    serde_json::from_value(v.clone()).ok()
}

/// Pids in the container's cgroup.
pub fn cgroup_pids(cg: &Cgroup) -> Result<Vec<i32>> {
    Ok(cg.pids()?)
}

/// Hooks this build runs (features document).
pub const SUPPORTED_HOOKS: &[&str] = &[];

/// Mount options this build understands (features document).
pub const SUPPORTED_MOUNT_OPTIONS: &[&str] = &[];

/// The `linux.cgroup` part of the features document.
pub fn cgroup_features() -> serde_json::Value {
    serde_json::json!({"v1": true, "v2": true, "systemd": false, "systemdUser": false})
}

/// The `linux.seccomp` part of the features document.
pub fn seccomp_features() -> serde_json::Value {
    serde_json::json!({"enabled": false})
}
