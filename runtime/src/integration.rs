//! The one place where the lifecycle calls into the sibling modules: [`crate::rootfs`]
//! (validate before the fork, prepare in the init), [`crate::seccomp`] (compile before
//! the fork, install in the init), [`crate::capabilities`], [`crate::rlimits`],
//! [`crate::process_attrs`], [`crate::hooks`] and [`crate::cgroups`]. Keeping the calls
//! here keeps the lifecycle readable and makes each module's contract with it explicit;
//! it also adds what belongs to the runtime rather than to a module, such as the default
//! device-cgroup rules appended after the spec's ([`effective_resources`]).

use std::path::Path;

use oci_spec::runtime::Spec;

/// Errors of the sibling modules, as seen by the lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    /// A feature whose module is not built in yet.
    #[error("unsupported: {0} (not built into this vessel yet)")]
    NotBuiltIn(&'static str),
    /// Seccomp profile or installation failed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// Capabilities could not be applied.
    #[error(transparent)]
    Caps(#[from] crate::capabilities::CapsError),
    /// A resource limit could not be applied.
    #[error(transparent)]
    Rlimit(#[from] crate::rlimits::RlimitError),
    /// A process attribute (user, oom score, scheduler, …) could not be applied.
    #[error(transparent)]
    ProcessAttr(#[from] crate::process_attrs::ProcessAttrError),
    /// A hook failed.
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    /// The root filesystem could not be validated or set up.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    /// The cgroup manager failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
}

type Result<T> = std::result::Result<T, IntegrationError>;

/// Options of the rootfs setup.
pub type RootfsOptions = crate::rootfs::Options;

/// Parent-side checks of the rootfs and mounts, before any fork.
pub fn rootfs_validate(spec: &Spec, bundle: &Path) -> Result<()> {
    Ok(crate::rootfs::validate(spec, bundle)?)
}

/// In the init, after the namespaces: mounts, devices, pivot_root, sysctl, masked and
/// read-only paths.
/// `idmapped` holds the id-mapped trees the parent prepared.
pub fn rootfs_prepare(
    spec: &Spec,
    rootfs: &Path,
    opts: RootfsOptions,
    idmapped: &crate::idmount::IdmappedTrees,
    cgroup_gate: &dyn Fn() -> std::result::Result<(), String>,
) -> Result<()> {
    let (premounted, root) = idmapped.for_rootfs()?;
    let gate = || cgroup_gate().map_err(crate::rootfs::RootfsError::CgroupWait);
    Ok(crate::rootfs::prepare_with_root(
        spec, rootfs, &opts, premounted, root, &gate,
    )?)
}

/// Compiled seccomp filter.
pub type SeccompFilter = crate::seccomp::Filter;

/// Parent-side: compiles `linux.seccomp` (so profile errors fail before any fork).
pub fn seccomp_compile(spec: &Spec) -> Result<Option<SeccompFilter>> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Ok(Some(crate::seccomp::compile(s)?)),
        None => Ok(None),
    }
}

/// In the init: installs the filter; returns the notify listener fd if any.
pub fn seccomp_install(f: &SeccompFilter) -> Result<Option<std::os::fd::OwnedFd>> {
    Ok(f.install()?)
}

/// Parent-side checks of the process attributes, so a bad config fails before anything
/// is created.
pub fn security_validate(process: &oci_spec::runtime::Process) -> Result<()> {
    if let Some(r) = process.rlimits() {
        crate::rlimits::validate(r)?;
    }
    Ok(())
}

/// In the init, as root: rlimits, oom score, io priority, scheduler, personality.
pub fn process_attrs_as_root(spec: &Spec, process: &oci_spec::runtime::Process) -> Result<()> {
    use crate::process_attrs as pa;
    if let Some(r) = process.rlimits() {
        crate::rlimits::apply(r)?;
    }
    pa::apply_oom_score_adj(process.oom_score_adj())?;
    pa::apply_io_priority(process.io_priority().as_ref())?;
    pa::apply_scheduler(process.scheduler().as_ref())?;
    pa::apply_personality(spec.linux().as_ref().and_then(|l| l.personality().as_ref()))?;
    Ok(())
}

/// In the init: keepcaps, user switch (groups, gid, uid, umask), capabilities.
pub fn user_and_caps(process: &oci_spec::runtime::Process) -> Result<()> {
    let caps = process.capabilities().as_ref();
    if caps.is_some() {
        crate::capabilities::keep_caps_for_setuid()?;
    }
    crate::process_attrs::set_user(process.user())?;
    if let Some(c) = caps {
        crate::capabilities::apply(c)?;
        crate::capabilities::clear_keep_caps()?;
    }
    Ok(())
}

/// Runs hooks of one kind with the state JSON on stdin; the first failure fails.
pub fn run_hooks(hooks: Option<&Vec<oci_spec::runtime::Hook>>, state: &str) -> Result<()> {
    match hooks {
        Some(h) if !h.is_empty() => Ok(crate::hooks::run(h, state)?),
        _ => Ok(()),
    }
}

/// Runs every hook of one kind (poststart, poststop) and returns the failures as text.
pub fn run_hooks_best_effort(
    hooks: Option<&Vec<oci_spec::runtime::Hook>>,
    state: &str,
) -> Vec<String> {
    match hooks {
        Some(h) if !h.is_empty() => crate::hooks::run_best_effort(h, state)
            .into_iter()
            .map(|e| e.to_string())
            .collect(),
        _ => Vec::new(),
    }
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

/// The resources applied to the cgroup: the spec's, with the device rules extended as runc
/// does ([`crate::cgroups::devices::container_rules`]: the spec's rules, an allow rule for
/// each `linux.devices` node, then the default devices and ptys), so a spec that starts
/// with "deny all" (the usual) can still open /dev/null or /dev/ptmx.
pub fn effective_resources(spec: &Spec) -> Option<oci_spec::runtime::LinuxResources> {
    let linux = spec.linux().as_ref()?;
    let mut r = linux.resources().clone()?;
    let rules = crate::cgroups::devices::container_rules(
        r.devices().as_deref().unwrap_or_default(),
        linux.devices().as_deref().unwrap_or_default(),
    );
    r.set_devices(Some(rules));
    Some(r)
}

/// Parent-side, after the clone: creates the cgroup, applies the resources, moves `pid`.
pub fn cgroup_apply(cg: &Cgroup, spec: &Spec, pid: i32) -> Result<()> {
    cgroup_set(cg, spec)?;
    Ok(cg.apply(pid)?)
}

/// Creates the container's cgroups and sets the spec's limits (nothing joins yet).
pub fn cgroup_set(cg: &Cgroup, spec: &Spec) -> Result<()> {
    if let Some(r) = effective_resources(spec) {
        cg.set_exact(&r)?;
    }
    Ok(())
}

/// Handles for the init to join its cgroups itself (see [`crate::cgroups::SelfJoin`]).
pub type CgroupSelfJoin = crate::cgroups::SelfJoin;

/// Opens the container's cgroups for the init to join itself.
pub fn cgroup_self_join(cg: &Cgroup) -> Result<CgroupSelfJoin> {
    Ok(cg.self_join()?)
}

/// Moves `pid` into the container's cgroup2 cgroup only (when `clone3` could not place it).
pub fn cgroup_join_v2(cg: &Cgroup, pid: i32) -> Result<()> {
    Ok(cg.apply_version(pid, crate::cgroups::Version::V2)?)
}

/// In the init: joins the v1 cgroups through the handles opened by the parent.
pub fn cgroup_join_current(sj: &CgroupSelfJoin) -> Result<()> {
    Ok(sj.join_current()?)
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
pub const SUPPORTED_HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Mount options this build understands (features document).
pub const SUPPORTED_MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "idmap",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "ridmap",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "unbindable",
];

/// The `linux.cgroup` part of the features document.
pub fn cgroup_features() -> serde_json::Value {
    serde_json::json!({"v1": true, "v2": true, "systemd": false, "systemdUser": false})
}

/// The `linux.seccomp` part of the features document.
pub fn seccomp_features() -> serde_json::Value {
    serde_json::json!({
        "enabled": true,
        "actions": [
            "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
            "SCMP_ACT_TRAP"
        ],
        "operators": [
            "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
            "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
        ],
        "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_device_rules_follow_the_specs() {
        let mut v = crate::spec::default_spec(false);
        v["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}
        ]);
        let spec: Spec = serde_json::from_value(v).unwrap();
        let r = effective_resources(&spec).unwrap();
        let rules: Vec<String> = r
            .devices()
            .clone()
            .unwrap()
            .iter()
            .map(|d| format!("{} {d}", d.allow()))
            .collect();
        // The spec's deny-all stays first; allows come after it.
        assert_eq!(rules[0], "false a *:* rwm");
        assert!(rules.contains(&"true c 1:3 rwm".to_string()), "{rules:?}");
        assert!(rules.contains(&"true c 136:* rwm".to_string()), "{rules:?}");
        assert!(
            rules.contains(&"true c 10:229 rwm".to_string()),
            "{rules:?}"
        );
        // Each default appears once (they used to be appended twice).
        assert_eq!(rules.iter().filter(|r| *r == "true c 1:3 rwm").count(), 1);
    }
}
