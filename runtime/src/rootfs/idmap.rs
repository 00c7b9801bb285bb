//! ID-mapped bind mounts (`idmap` / `ridmap`, `uidMappings` / `gidMappings`).
//!
//! The kernel only lets a process privileged over the filesystem's user
//! namespace (for host filesystems: the initial one) attach an ID mapping to
//! a mount, and only while the mount is still detached. So, as runc 1.2
//! does, the runtime's parent builds these mounts with [`prepare_idmapped`]
//! before the container's init enters its user namespace, and hands the
//! detached mounts to [`super::prepare_with`] (fds survive fork).

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use oci_spec::runtime::{LinuxIdMapping, Spec};

use super::error::RootfsError;
use super::options::{self, Kind};
use super::sys::{self, MountAttr};

/// A detached, ID-mapped clone of a bind source, for `mounts[index]`.
#[derive(Debug)]
pub struct PreparedMount {
    /// Position of the mount in the spec's `mounts`.
    pub index: usize,
    /// The detached mount tree (from `open_tree(OPEN_TREE_CLONE)`).
    pub fd: OwnedFd,
}

/// Build the detached ID-mapped trees for every mount of `spec` that asks
/// for one. Call in the runtime's parent (initial user namespace), with the
/// bundle as the working directory, before forking the container's init.
/// Returns an empty list (and costs nothing) when no mount is ID-mapped.
pub fn prepare_idmapped(spec: &Spec) -> Result<Vec<PreparedMount>, RootfsError> {
    let mut out = Vec::new();
    for (index, m) in spec.mounts().as_deref().unwrap_or(&[]).iter().enumerate() {
        let parsed = options::parse(m).map_err(|reason| RootfsError::InvalidMount {
            index,
            destination: m.destination().clone(),
            reason,
        })?;
        let Some(recursive_map) = parsed.idmap else {
            continue;
        };
        let Kind::Bind { recursive } = parsed.kind else {
            continue;
        };
        let err = |op: &'static str| {
            move |errno| RootfsError::Mount {
                destination: m.destination().clone(),
                fstype: "bind".into(),
                source_path: m.source().clone().unwrap_or_default(),
                op,
                errno,
            }
        };
        let uids = m.uid_mappings().as_deref().unwrap_or(&[]);
        let gids = m.gid_mappings().as_deref().unwrap_or(&[]);
        let userns =
            userns_with(uids, gids).map_err(err("create user namespace for the ID mapping"))?;
        let source = m
            .source()
            .as_deref()
            .ok_or(Errno::EINVAL)
            .map_err(err("bind mount needs a source"))?;
        let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
        if recursive {
            flags |= libc::AT_RECURSIVE as u32;
        }
        let c = sys::path_cstring(source).map_err(err("source path"))?;
        let tree =
            sys::open_tree(nix::fcntl::AT_FDCWD, &c, flags).map_err(err("open_tree (source)"))?;
        let attr = MountAttr {
            set: libc::MOUNT_ATTR_IDMAP,
            ..Default::default()
        };
        sys::mount_setattr_userns(tree.as_fd(), attr, recursive_map, userns.as_fd())
            .map_err(err("mount_setattr (idmap)"))?;
        out.push(PreparedMount { index, fd: tree });
    }
    Ok(out)
}

/// A user namespace with the given mappings, held by an fd: the one
/// implementation in [`crate::idmap::UserNamespace`], errors as errno.
fn userns_with(uids: &[LinuxIdMapping], gids: &[LinuxIdMapping]) -> Result<OwnedFd, Errno> {
    use crate::idmap::{IdmapError, UserNamespace};
    UserNamespace::with_mappings(uids, gids)
        .map(UserNamespace::into_fd)
        .map_err(|e| match e {
            IdmapError::Sys { source, .. } | IdmapError::WriteMap { source, .. } => {
                Errno::from_raw(source.raw_os_error().unwrap_or(libc::EINVAL))
            }
            _ => Errno::EINVAL,
        })
}
