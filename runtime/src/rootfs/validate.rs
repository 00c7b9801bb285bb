//! Checking the rootfs-related parts of a spec in the parent, before any
//! fork, so bad input fails fast with a message naming the entry.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::error::RootfsError;
use super::options::{self, Kind};
use super::sysctl;

/// Largest major / minor number the kernel's dev_t encoding allows.
const MAX_MAJOR: i64 = (1 << 12) - 1;
const MAX_MINOR: i64 = (1 << 20) - 1;

/// Validate root, mounts, devices, rootfsPropagation, maskedPaths,
/// readonlyPaths and sysctl of `spec` for the bundle at `bundle`.
///
/// Relative `root.path` and relative bind-mount sources are taken relative
/// to `bundle` (the runtime runs the container with the bundle as its
/// working directory, as runc does).
pub fn validate(spec: &Spec, bundle: &Path) -> Result<(), RootfsError> {
    validate_root(spec, bundle)?;
    validate_mounts(spec, bundle)?;
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    validate_devices(linux.devices().as_deref().unwrap_or(&[]))?;
    if let Some(p) = linux.rootfs_propagation() {
        if !p.is_empty() && options::propagation(p).is_none() {
            return Err(RootfsError::InvalidPropagation(p.clone()));
        }
    }
    validate_paths(
        "maskedPaths",
        linux.masked_paths().as_deref().unwrap_or(&[]),
    )?;
    validate_paths(
        "readonlyPaths",
        linux.readonly_paths().as_deref().unwrap_or(&[]),
    )?;
    sysctl::validate(spec)
}

/// The rootfs directory of `spec` for `bundle` (not canonicalised).
pub fn root_path(spec: &Spec, bundle: &Path) -> Result<PathBuf, RootfsError> {
    let root = spec.root().as_ref().ok_or(RootfsError::NoRoot)?;
    if root.path().as_os_str().is_empty() {
        return Err(RootfsError::RootPath {
            path: PathBuf::new(),
            reason: "is empty".into(),
        });
    }
    Ok(bundle.join(root.path()))
}

fn validate_root(spec: &Spec, bundle: &Path) -> Result<(), RootfsError> {
    let path = root_path(spec, bundle)?;
    match std::fs::metadata(&path) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(RootfsError::RootPath {
            path,
            reason: "is not a directory".into(),
        }),
        Err(e) => Err(RootfsError::RootPath {
            path,
            reason: format!("cannot be used: {e}"),
        }),
    }
}

/// Reason a container path is unacceptable, if it is.
fn bad_container_path(p: &Path) -> Option<&'static str> {
    if !p.is_absolute() {
        Some("must be an absolute path")
    } else if options::clean_abs(p).is_none() {
        Some("'..' escapes the container root")
    } else {
        None
    }
}

fn validate_mounts(spec: &Spec, bundle: &Path) -> Result<(), RootfsError> {
    let mut proc_filesystems = None;
    for (index, m) in spec.mounts().as_deref().unwrap_or(&[]).iter().enumerate() {
        let bad = |reason: String| RootfsError::InvalidMount {
            index,
            destination: m.destination().clone(),
            reason,
        };
        if let Some(r) = bad_container_path(m.destination()) {
            return Err(bad(format!("destination {r}")));
        }
        if options::clean_abs(m.destination()).as_deref() == Some(Path::new("/")) {
            return Err(bad("destination cannot be / (that is root.path)".into()));
        }
        let parsed = options::parse(m).map_err(bad)?;
        match &parsed.kind {
            Kind::Bind { .. } => {
                let Some(src) = m.source() else {
                    return Err(bad("bind mount without a source".into()));
                };
                if let Err(e) = std::fs::metadata(bundle.join(src)) {
                    return Err(bad(format!("bind source {src:?}: {e}")));
                }
            }
            Kind::Fs(t) => {
                if !options::known_fstype(t, &mut proc_filesystems) {
                    return Err(bad(format!(
                        "unknown filesystem type {t:?} (not in /proc/filesystems)"
                    )));
                }
            }
            Kind::Cgroup => {}
        }
        if let Some(dest) = options::clean_abs(m.destination()) {
            check_proc_destination(&dest, &parsed.kind).map_err(bad)?;
        }
    }
    Ok(())
}

/// Files below /proc a mount may cover (runc's list: what lxcfs-style
/// tools replace). Anything else below /proc could be used to defeat LSM
/// or masking (CVE-2019-16884), so it is refused.
const PROC_MOUNT_WHITELIST: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/crypto/fips_enabled",
];

fn check_proc_destination(dest: &Path, kind: &Kind) -> Result<(), String> {
    if dest == Path::new("/proc") {
        return match kind {
            Kind::Fs(t) if t == "proc" => Ok(()),
            _ => Err("only a proc filesystem may be mounted at /proc".into()),
        };
    }
    if dest.starts_with("/proc") && !PROC_MOUNT_WHITELIST.iter().any(|w| dest == Path::new(w)) {
        return Err(format!(
            "mounting over {dest:?} is not allowed (only {} below /proc)",
            PROC_MOUNT_WHITELIST.join(", ")
        ));
    }
    Ok(())
}

fn validate_devices(devices: &[oci_spec::runtime::LinuxDevice]) -> Result<(), RootfsError> {
    for (index, d) in devices.iter().enumerate() {
        let bad = |reason: String| RootfsError::InvalidDevice {
            index,
            path: d.path().clone(),
            reason,
        };
        if let Some(r) = bad_container_path(d.path()) {
            return Err(bad(format!("path {r}")));
        }
        if d.path().file_name().is_none() {
            return Err(bad("path has no file name".into()));
        }
        if devices[..index].iter().any(|o| o.path() == d.path()) {
            return Err(bad("duplicate device path".into()));
        }
        match d.typ() {
            LinuxDeviceType::A => {
                return Err(bad(
                    "type \"a\" is not a device node type (use c, b, u or p)".into(),
                ))
            }
            LinuxDeviceType::C | LinuxDeviceType::B | LinuxDeviceType::U => {
                if d.major() == 0 && d.minor() == 0 {
                    return Err(bad(format!(
                        "type {} needs major and minor numbers",
                        d.typ().as_str()
                    )));
                }
                if !(0..=MAX_MAJOR).contains(&d.major()) {
                    return Err(bad(format!(
                        "major {} out of range 0..={MAX_MAJOR}",
                        d.major()
                    )));
                }
                if !(0..=MAX_MINOR).contains(&d.minor()) {
                    return Err(bad(format!(
                        "minor {} out of range 0..={MAX_MINOR}",
                        d.minor()
                    )));
                }
            }
            LinuxDeviceType::P => {}
        }
        if let Some(mode) = d.file_mode() {
            if mode & !0o7777 != 0 {
                return Err(bad(format!(
                    "fileMode {mode:#o} has bits beyond the permission bits (0o7777)"
                )));
            }
        }
    }
    Ok(())
}

fn validate_paths(list: &'static str, paths: &[String]) -> Result<(), RootfsError> {
    for p in paths {
        if let Some(reason) = bad_container_path(Path::new(p)) {
            return Err(RootfsError::InvalidPath {
                list,
                path: p.clone(),
                reason: reason.into(),
            });
        }
    }
    Ok(())
}
