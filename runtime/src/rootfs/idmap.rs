//! ID-mapped bind mounts (`idmap` / `ridmap`, `uidMappings` / `gidMappings`).
//!
//! The kernel only lets a process privileged over the filesystem's user
//! namespace (for host filesystems: the initial one) attach an ID mapping to
//! a mount, and only while the mount is still detached. So, as runc 1.2
//! does, the runtime's parent builds these mounts ([`crate::idmount::prepare`])
//! before the container's init enters its user namespace, and hands the
//! detached mounts to [`super::prepare_with`] (fds survive fork).

use std::os::fd::OwnedFd;

/// A detached, ID-mapped clone of a bind source, for `mounts[index]`.
#[derive(Debug)]
pub struct PreparedMount {
    /// Position of the mount in the spec's `mounts`.
    pub index: usize,
    /// The detached mount tree (from `open_tree(OPEN_TREE_CLONE)`).
    pub fd: OwnedFd,
}
