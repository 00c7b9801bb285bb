//! Errors of the rootfs module.

use std::path::PathBuf;

use nix::errno::Errno;

/// Everything that can go wrong validating or building a container's root
/// filesystem. Every variant names the offending entry (mount destination,
/// path, device, sysctl key) and, for kernel failures, the operation and errno.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// Waiting for the runtime to put the process into its cgroup failed (the `cgroup`
    /// mount shows the process's own cgroup, so it waits for that).
    #[error("waiting for the container's cgroup: {0}")]
    CgroupWait(String),
    /// The spec has no `root` section.
    #[error("spec has no root (root.path is required)")]
    NoRoot,
    /// `root.path` is unusable.
    #[error("root.path {path:?}: {reason}")]
    RootPath {
        /// The path as resolved against the bundle.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A `mounts[]` entry is invalid.
    #[error("mounts[{index}] (destination {destination:?}): {reason}")]
    InvalidMount {
        /// Position in `mounts`.
        index: usize,
        /// The destination as written in the spec.
        destination: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A `linux.devices[]` entry is invalid.
    #[error("linux.devices[{index}] ({path:?}): {reason}")]
    InvalidDevice {
        /// Position in `linux.devices`.
        index: usize,
        /// The device path as written in the spec.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// `linux.rootfsPropagation` is not a propagation mode.
    #[error(
        "linux.rootfsPropagation {0:?}: expected one of shared, slave, private, unbindable, \
         rshared, rslave, rprivate, runbindable"
    )]
    InvalidPropagation(String),
    /// A `linux.maskedPaths` / `linux.readonlyPaths` entry is invalid.
    #[error("linux.{list} entry {path:?}: {reason}")]
    InvalidPath {
        /// `maskedPaths` or `readonlyPaths`.
        list: &'static str,
        /// The path as written in the spec.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A `linux.sysctl` key or value is invalid.
    #[error("linux.sysctl {key:?}: {reason}")]
    InvalidSysctl {
        /// The sysctl key.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A spec mount failed in the kernel.
    #[error("mount {destination:?} (type {fstype}, source {source_path:?}): {op}: {errno}")]
    Mount {
        /// Destination inside the container.
        destination: PathBuf,
        /// Filesystem type (or `bind`).
        fstype: String,
        /// Mount source as written in the spec.
        source_path: PathBuf,
        /// The step that failed.
        op: &'static str,
        /// Kernel error.
        #[source]
        errno: Errno,
    },
    /// Creating a device node (or its bind-mount fallback) failed.
    #[error("device {path:?}: {op}: {errno}")]
    Device {
        /// Device path inside the container.
        path: PathBuf,
        /// The step that failed.
        op: &'static str,
        /// Kernel error.
        #[source]
        errno: Errno,
    },
    /// A filesystem operation on a path failed (rootfs setup, pivot_root,
    /// masked/readonly paths, mount points).
    #[error("{op} {path:?}: {errno}")]
    Path {
        /// The step that failed.
        op: &'static str,
        /// The path concerned (inside the container where applicable).
        path: PathBuf,
        /// Kernel error.
        #[source]
        errno: Errno,
    },
    /// Writing a sysctl failed.
    #[error("sysctl {key:?}: {op}: {errno}")]
    Sysctl {
        /// The sysctl key.
        key: String,
        /// The step that failed.
        op: &'static str,
        /// Kernel error.
        #[source]
        errno: Errno,
    },
}

impl RootfsError {
    pub(crate) fn path(op: &'static str, path: impl Into<PathBuf>, errno: Errno) -> Self {
        RootfsError::Path {
            op,
            path: path.into(),
            errno,
        }
    }
}
