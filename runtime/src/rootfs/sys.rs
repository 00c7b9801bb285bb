//! Thin safe wrappers over the mount syscalls nix 0.31 does not cover
//! (`open_tree`, `move_mount`, `mount_setattr`, `fsopen`, `fsconfig`,
//! `fsmount`) plus the fd-relative helpers the rest of the module shares.
//!
//! Hand-written because neither nix nor another well-kept crate wraps the
//! new mount API; each wrapper is one `libc::syscall` with an owned result.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `open_tree(2)`: clone (or just reference) the mount at `dirfd`/`path`.
pub(crate) fn open_tree(dirfd: BorrowedFd<'_>, path: &CStr, flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call;
    // the kernel does not retain any pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            flags as libc::c_uint,
        )
    };
    owned_fd(ret)
}

/// `move_mount(2)` from one fd (empty path) to another fd (empty path).
pub(crate) fn move_mount_fd(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: both path arguments are static empty C strings; fds are
    // borrowed and valid for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(ret).map(drop)
}

/// `move_mount(2)` from an fd (empty path) to `name` below directory `dir`
/// (a symlink in the last component is not followed).
pub(crate) fn move_mount_at(
    from: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> Result<(), Errno> {
    // SAFETY: `name` is a valid C string that outlives the call; the source
    // path is a static empty string; fds are borrowed and valid.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(ret).map(drop)
}

/// Attribute changes for [`mount_setattr`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MountAttr {
    pub set: u64,
    pub clr: u64,
    /// One of `MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE`, `MS_UNBINDABLE` or 0.
    pub propagation: u64,
}

impl MountAttr {
    pub(crate) fn is_empty(&self) -> bool {
        self.set == 0 && self.clr == 0 && self.propagation == 0
    }
}

/// `mount_setattr(2)` on the mount `fd` refers to (its root), optionally recursive.
/// (Id maps are attached by [`crate::idmap::idmapped_tree`], not here.)
pub(crate) fn mount_setattr(
    fd: BorrowedFd<'_>,
    attr: MountAttr,
    recursive: bool,
) -> Result<(), Errno> {
    let mut raw = libc::mount_attr {
        attr_set: attr.set,
        attr_clr: attr.clr,
        propagation: attr.propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `raw` is a properly initialised `mount_attr` that lives across
    // the call and its exact size is passed; the path is a static empty string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &mut raw as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(ret).map(drop)
}

/// `fsopen(2)`: start configuring a new superblock of `fstype`.
pub(crate) fn fsopen(fstype: &CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: `fstype` is a valid C string for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) };
    owned_fd(ret)
}

/// `fsconfig(2)` with a string key and optional string value
/// (`FSCONFIG_SET_FLAG` when `value` is `None`), or `FSCONFIG_CMD_CREATE`
/// when `key` is `None`.
pub(crate) fn fsconfig(
    fd: BorrowedFd<'_>,
    key: Option<&CStr>,
    value: Option<&CStr>,
) -> Result<(), Errno> {
    let (cmd, key_ptr, val_ptr) = match (key, value) {
        (None, _) => (
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null(),
            std::ptr::null(),
        ),
        (Some(k), None) => (libc::FSCONFIG_SET_FLAG, k.as_ptr(), std::ptr::null()),
        (Some(k), Some(v)) => (libc::FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr()),
    };
    // SAFETY: the key/value pointers are either null (allowed for these
    // commands) or point to C strings that outlive the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_fsconfig, fd.as_raw_fd(), cmd, key_ptr, val_ptr, 0) };
    Errno::result(ret).map(drop)
}

/// `fsmount(2)`: create a detached mount of a configured superblock.
pub(crate) fn fsmount(fd: BorrowedFd<'_>, attr_flags: u64) -> Result<OwnedFd, Errno> {
    // SAFETY: plain integer arguments.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fd.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            attr_flags as libc::c_uint,
        )
    };
    owned_fd(ret)
}

fn owned_fd(ret: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = Errno::result(ret)? as RawFd;
    // SAFETY: the syscall succeeded and returned a new file descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/proc/self/fd/N` for `fd`: the path runc mounts onto so that the target is
/// the very inode we resolved safely, not whatever a path names later.
pub(crate) fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A formatted decimal number never contains a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Convert a path to a C string, mapping interior NULs to `EINVAL`.
pub(crate) fn path_cstring(p: &std::path::Path) -> Result<CString, Errno> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}
