//! Switching `/` to the rootfs: pivot_root, or MS_MOVE + chroot.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, chroot, fchdir, pivot_root};

use super::error::RootfsError;
use super::mountinfo::MountEntry;

/// runc's pivot_root(".", "."): the old root ends up stacked on the new one
/// and is detached right away, so no put_old directory is needed in the
/// rootfs (which may be read-only).
pub(crate) fn pivot(new_root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    let e = |op| move |errno| RootfsError::path(op, "/", errno);
    let old_root = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(e("open old root"))?;
    fchdir(new_root).map_err(e("chdir to rootfs"))?;
    pivot_root(".", ".").map_err(e("pivot_root"))?;
    // "." is the old root now; be explicit rather than rely on the kernel.
    fchdir(old_root.as_fd()).map_err(e("chdir to old root"))?;
    // Make sure the unmount below cannot propagate anywhere (runc uses
    // rslave for the same reason).
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(e("make old root rslave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(e("detach old root"))?;
    chdir("/").map_err(e("chdir /"))
}

/// No pivot_root (e.g. a ramfs root): hide the host's procfs/sysfs mounts
/// (the kernel's "mount too revealing" check looks at every mount in the
/// namespace), move the rootfs onto `/` and chroot into it.
pub(crate) fn move_root(
    new_root: BorrowedFd<'_>,
    rootfs: &Path,
    table: &[MountEntry],
) -> Result<(), RootfsError> {
    let mut handled: Vec<&Path> = Vec::new();
    for m in table {
        let mp = m.mount_point.as_path();
        if !(m.fstype == "proc" || m.fstype == "sysfs")
            || mp.starts_with(rootfs)
            || handled.iter().any(|h| mp.starts_with(h))
        {
            continue;
        }
        handled.push(mp);
        mount(
            None::<&str>,
            mp,
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|errno| RootfsError::path("make host mount rslave", mp, errno))?;
        match umount2(mp, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(Errno::EINVAL) | Err(Errno::EPERM) => {
                // Locked in a user namespace: cover it instead.
                mount(
                    Some("tmpfs"),
                    mp,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|errno| RootfsError::path("cover host mount", mp, errno))?;
            }
            Err(errno) => return Err(RootfsError::path("detach host mount", mp, errno)),
        }
    }
    let e = |op| move |errno| RootfsError::path(op, rootfs, errno);
    fchdir(new_root).map_err(e("chdir to rootfs"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(e("move rootfs to /"))?;
    chroot(".").map_err(e("chroot"))?;
    chdir("/").map_err(e("chdir /"))
}
