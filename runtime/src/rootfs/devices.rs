//! Device nodes and the standard /dev symlinks (before pivot_root).
//!
//! Nodes are created with mknod; where that is refused (a user namespace)
//! every remaining char/block device is bind-mounted from the host instead,
//! as runc does.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, makedev, mknodat, umask, Mode, SFlag};
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::error::RootfsError;
use super::resolve::{ensure_in_root, open_in_root, Want};
use super::sys;

/// A device to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dev {
    pub path: PathBuf,
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The devices every container gets (runc's list).
const DEFAULTS: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// The standard /dev symlinks (name in /dev, target).
const SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
];

/// Map an OCI device type to the node type (`None` for `a`, which is only
/// meaningful in cgroup rules).
pub(crate) fn node_kind(t: LinuxDeviceType) -> Option<SFlag> {
    match t {
        LinuxDeviceType::C | LinuxDeviceType::U => Some(SFlag::S_IFCHR),
        LinuxDeviceType::B => Some(SFlag::S_IFBLK),
        LinuxDeviceType::P => Some(SFlag::S_IFIFO),
        LinuxDeviceType::A => None,
    }
}

/// The default devices plus `linux.devices` (a spec entry replaces a default
/// with the same path). Entries are assumed validated.
pub(crate) fn device_list(spec_devices: &[LinuxDevice]) -> Vec<Dev> {
    let mut out: Vec<Dev> = DEFAULTS
        .iter()
        .filter(|(p, _, _)| !spec_devices.iter().any(|d| d.path() == Path::new(p)))
        .map(|&(p, major, minor)| Dev {
            path: PathBuf::from(p),
            kind: SFlag::S_IFCHR,
            major,
            minor,
            mode: 0o666,
            uid: None,
            gid: None,
        })
        .collect();
    out.extend(spec_devices.iter().filter_map(|d| {
        Some(Dev {
            path: d.path().clone(),
            kind: node_kind(d.typ())?,
            major: u64::try_from(d.major()).ok()?,
            minor: u64::try_from(d.minor()).ok()?,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid(),
            gid: d.gid(),
        })
    }));
    out
}

/// After pivot_root: stdio that is a `/dev/null` from outside the container (a runtime's
/// caller such as conmon hands the host's `/dev/null` to detached containers) is pointed
/// at the container's own `/dev/null`, as runc does. Nothing changes for the process, but
/// a descriptor on a file outside the container's mounts cannot be checkpointed (CRIU:
/// "Can't lookup mount"). Closed descriptors are left closed; without a `/dev/null` in
/// the container nothing is done.
pub(crate) fn reopen_dev_null() -> Result<(), RootfsError> {
    use std::os::fd::AsFd;
    let Ok(null) = nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
    else {
        return Ok(());
    };
    let Ok(null_st) = nix::sys::stat::fstat(&null) else {
        return Ok(());
    };
    let is_chr = |mode: u32| mode & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits();
    if !is_chr(null_st.st_mode) {
        return Ok(());
    }
    let same = |fd: BorrowedFd<'_>| {
        nix::sys::stat::fstat(fd).is_ok_and(|st| {
            is_chr(st.st_mode)
                && st.st_rdev == null_st.st_rdev
                && (st.st_dev, st.st_ino) != (null_st.st_dev, null_st.st_ino)
        })
    };
    fn e(n: &'static str) -> impl Fn(Errno) -> RootfsError {
        move |errno| RootfsError::path("point at the container's /dev/null:", n, errno)
    }
    if same(std::io::stdin().as_fd()) {
        nix::unistd::dup2_stdin(&null).map_err(e("stdin"))?;
    }
    if same(std::io::stdout().as_fd()) {
        nix::unistd::dup2_stdout(&null).map_err(e("stdout"))?;
    }
    if same(std::io::stderr().as_fd()) {
        nix::unistd::dup2_stderr(&null).map_err(e("stderr"))?;
    }
    Ok(())
}

/// Create `devs` in the rootfs, then the /dev symlinks and /dev/ptmx.
pub(crate) fn setup(root: BorrowedFd<'_>, devs: &[Dev]) -> Result<(), RootfsError> {
    // umask(0) once rather than a chmod per node; restored before returning.
    let old = umask(Mode::empty());
    let res = create_all(root, devs);
    umask(old);
    res?;
    links(root)
}

fn create_all(root: BorrowedFd<'_>, devs: &[Dev]) -> Result<(), RootfsError> {
    let mut bind_mode = false;
    // Most devices live in /dev: keep the last parent fd.
    let mut parent: Option<(PathBuf, OwnedFd)> = None;
    for d in devs {
        let err = |op: &'static str| {
            move |errno| RootfsError::Device {
                path: d.path.clone(),
                op,
                errno,
            }
        };
        let (Some(dir), Some(name)) = (d.path.parent(), d.path.file_name()) else {
            return Err(err("path has no file name")(Errno::EINVAL));
        };
        if parent.as_ref().map(|(p, _)| p.as_path()) != Some(dir) {
            let fd = ensure_in_root(root, dir, Want::Dir)
                .map_err(err("resolve/create parent directory"))?;
            parent = Some((dir.to_path_buf(), fd));
        }
        let Some((_, pfd)) = parent.as_ref() else {
            continue;
        };
        if !bind_mode || d.kind == SFlag::S_IFIFO {
            match mknod(pfd.as_fd(), name, d) {
                Ok(()) => continue,
                Err(Errno::EPERM) if d.kind != SFlag::S_IFIFO => bind_mode = true,
                Err(errno) => return Err(err("mknod")(errno)),
            }
        }
        bind_device(root, d).map_err(err("bind-mount host device"))?;
    }
    Ok(())
}

/// mknod `name` in `dir`, replacing anything else of that name, then chown.
fn mknod(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, d: &Dev) -> Result<(), Errno> {
    let dev = makedev(d.major, d.minor);
    let perm = Mode::from_bits_truncate(d.mode);
    let name = Path::new(name);
    match mknodat(dir, name, d.kind, perm, dev) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
            if kind == SFlag::S_IFDIR {
                return Err(Errno::EISDIR);
            }
            if kind == d.kind && st.st_rdev == dev && st.st_mode & 0o7777 == d.mode {
                // Already the right node (e.g. a bind-mounted /dev from an earlier step).
            } else {
                // An image's regular file or wrong node in place of a device.
                unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
                mknodat(dir, name, d.kind, perm, dev)?;
            }
        }
        Err(e) => return Err(e),
    }
    if d.uid.is_some() || d.gid.is_some() {
        fchownat(
            dir,
            name,
            d.uid.map(Uid::from_raw),
            d.gid.map(Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(())
}

/// Bind the host's node at the same path over an empty file in the rootfs.
fn bind_device(root: BorrowedFd<'_>, d: &Dev) -> Result<(), Errno> {
    let host = sys::path_cstring(&d.path)?;
    let tree = sys::open_tree(
        nix::fcntl::AT_FDCWD,
        &host,
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
    )?;
    let target = ensure_in_root(root, &d.path, Want::File)?;
    sys::move_mount_fd(tree.as_fd(), target.as_fd())
}

fn links(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    let dev = open_in_root(root, Path::new("/dev"), OFlag::O_DIRECTORY)
        .map_err(|e| RootfsError::path("open", "/dev", e))?;
    for (name, target) in SYMLINKS {
        match symlinkat(*target, dev.as_fd(), *name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(RootfsError::path(
                    "symlink",
                    Path::new("/dev").join(name),
                    e,
                ))
            }
        }
    }
    // /dev/ptmx must be the devpts instance's ptmx (runc's setupPtmx).
    match unlinkat(dev.as_fd(), "ptmx", UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(RootfsError::path("unlink", "/dev/ptmx", e)),
    }
    symlinkat("pts/ptmx", dev.as_fd(), "ptmx")
        .map_err(|e| RootfsError::path("symlink", "/dev/ptmx", e))
}
