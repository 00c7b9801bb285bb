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

/// The per-container cgroup (none until the cgroups module is merged).
#[derive(Debug)]
pub struct Cgroup;

/// Parent-side: where the cgroup goes.
pub fn cgroup_new(spec: &Spec, _id: &str) -> Result<Option<Cgroup>> {
    let l = spec.linux().as_ref();
    if l.is_some_and(|l| l.cgroups_path().is_some()) {
        return Err(IntegrationError::NotBuiltIn("linux.cgroupsPath"));
    }
    if l.and_then(|l| l.resources().as_ref()).is_some_and(|r| {
        r.memory().is_some()
            || r.cpu().is_some()
            || r.pids().is_some()
            || r.block_io().is_some()
            || r.hugepage_limits().is_some()
            || r.network().is_some()
            || r.rdma().is_some()
            || r.unified().is_some()
            || r.devices().as_ref().is_some_and(|d| !d.is_empty())
    }) {
        return Err(IntegrationError::NotBuiltIn("linux.resources"));
    }
    Ok(None)
}

/// Parent-side, after the clone: puts `pid` in the cgroup and applies the resources.
pub fn cgroup_apply(_cg: &Cgroup, _spec: &Spec, _pid: i32) -> Result<()> {
    Ok(())
}

/// Removes the cgroup (killing stragglers).
pub fn cgroup_destroy(_cg: &Cgroup) -> Result<()> {
    Ok(())
}

/// Serializes the cgroup manager for the state file.
pub fn cgroup_to_json(_cg: &Cgroup) -> Option<serde_json::Value> {
    None
}

/// Rebuilds the cgroup manager from the state file.
pub fn cgroup_from_json(_v: &serde_json::Value) -> Option<Cgroup> {
    None
}

/// Pids in the container's cgroup, if it has one.
pub fn cgroup_pids(_cg: &Cgroup) -> Result<Vec<i32>> {
    Ok(Vec::new())
}

/// Hooks this build runs (features document).
pub const SUPPORTED_HOOKS: &[&str] = &[];

/// Mount options this build understands (features document).
pub const SUPPORTED_MOUNT_OPTIONS: &[&str] = &[];

/// The `linux.cgroup` part of the features document.
pub fn cgroup_features() -> serde_json::Value {
    serde_json::json!({"v1": false, "v2": false, "systemd": false, "systemdUser": false})
}

/// The `linux.seccomp` part of the features document.
pub fn seccomp_features() -> serde_json::Value {
    serde_json::json!({"enabled": false})
}
