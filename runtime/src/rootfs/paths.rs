//! maskedPaths, readonlyPaths and a read-only `/` (after pivot_root).
//!
//! All done with the new mount API on fds resolved in-root, so nothing here
//! depends on the container having /proc mounted.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, SFlag};

use super::error::RootfsError;
use super::resolve::open_in_root;
use super::sys::{self, MountAttr};

const RO: MountAttr = MountAttr {
    set: libc::MOUNT_ATTR_RDONLY,
    clr: 0,
    propagation: 0,
};

/// Open `path` in-root; `Ok(None)` if it does not exist.
fn open_existing(
    root: BorrowedFd<'_>,
    path: &str,
    op: &'static str,
) -> Result<Option<OwnedFd>, RootfsError> {
    match open_in_root(root, Path::new(path), OFlag::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(RootfsError::path(op, path, e)),
    }
}

/// Hide each existing path: `/dev/null` over files, one shared empty
/// read-only tmpfs over directories. Missing paths are skipped.
pub(crate) fn mask(root: BorrowedFd<'_>, paths: &[String]) -> Result<(), RootfsError> {
    // The first masked directory gets a fresh read-only tmpfs; later ones
    // get clones of that (attached) mount: one superblock for all of them.
    let mut empty_dir: Option<OwnedFd> = None;
    let mut null: Option<OwnedFd> = None;
    for path in paths {
        let Some(target) = open_existing(root, path, "resolve masked path")? else {
            continue;
        };
        let e = |op| move |errno| RootfsError::path(op, path.as_str(), errno);
        let st = fstat(target.as_fd()).map_err(e("stat masked path"))?;
        if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR {
            let m = match &empty_dir {
                Some(first) => sys::open_tree(
                    first.as_fd(),
                    c"",
                    libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32,
                )
                .map_err(e("clone masking tmpfs"))?,
                None => empty_tmpfs().map_err(e("create masking tmpfs"))?,
            };
            sys::move_mount_fd(m.as_fd(), target.as_fd()).map_err(e("mask directory"))?;
            if empty_dir.is_none() {
                empty_dir = Some(m);
            }
        } else {
            if null.is_none() {
                null = Some(
                    open_in_root(root, Path::new("/dev/null"), OFlag::empty())
                        .map_err(e("open /dev/null"))?,
                );
            }
            let Some(null_fd) = null.as_ref() else {
                continue;
            };
            let m = sys::open_tree(
                null_fd.as_fd(),
                c"",
                libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32,
            )
            .map_err(e("clone /dev/null"))?;
            sys::move_mount_fd(m.as_fd(), target.as_fd()).map_err(e("mask file"))?;
        }
    }
    Ok(())
}

/// A detached, read-only, empty tmpfs mount.
fn empty_tmpfs() -> Result<OwnedFd, Errno> {
    let fs = sys::fsopen(c"tmpfs")?;
    sys::fsconfig(fs.as_fd(), Some(c"mode"), Some(c"0555"))?;
    sys::fsconfig(fs.as_fd(), Some(c"ro"), None)?;
    sys::fsconfig(fs.as_fd(), None, None)?;
    sys::fsmount(
        fs.as_fd(),
        libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC,
    )
}

/// Make each existing path (and everything mounted below it) read-only,
/// keeping its other mount flags. Missing paths are skipped.
pub(crate) fn readonly(root: BorrowedFd<'_>, paths: &[String]) -> Result<(), RootfsError> {
    for path in paths {
        let Some(target) = open_existing(root, path, "resolve read-only path")? else {
            continue;
        };
        let e = |op| move |errno| RootfsError::path(op, path.as_str(), errno);
        let tree = sys::open_tree(
            target.as_fd(),
            c"",
            libc::OPEN_TREE_CLONE
                | libc::OPEN_TREE_CLOEXEC
                | libc::AT_EMPTY_PATH as u32
                | libc::AT_RECURSIVE as u32,
        )
        .map_err(e("bind read-only path"))?;
        sys::mount_setattr(tree.as_fd(), RO, true).map_err(e("make path read-only"))?;
        sys::move_mount_fd(tree.as_fd(), target.as_fd()).map_err(e("mount read-only path"))?;
    }
    Ok(())
}

/// Make the root mount read-only (only it, as runc; its other flags kept).
pub(crate) fn readonly_root(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    sys::mount_setattr(root, RO, false).map_err(|e| RootfsError::path("remount read-only", "/", e))
}
