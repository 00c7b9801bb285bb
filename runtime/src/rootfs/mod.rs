//! The container's root filesystem: validating the spec's mounts/devices,
//! and (in the container's init, inside its new mount namespace) building
//! the rootfs and switching `/` to it.
//!
//! Order of [`prepare`], following runc:
//! 1. propagation of `/` (rootfsPropagation, default `rprivate`), so nothing
//!    below reaches the host;
//! 2. bind the rootfs onto itself (it must be a mount point for pivot_root);
//! 3. every spec mount, targets resolved inside the rootfs with
//!    `openat2(RESOLVE_IN_ROOT)` so symlinks cannot point a mount outside it;
//! 4. devices (defaults + `linux.devices`, mknod or host bind in a user
//!    namespace), /dev/ptmx and the /dev symlinks — unless /dev is a bind mount;
//! 5. pivot_root (or MS_MOVE + chroot with [`Options::no_pivot`]); stdio that is the
//!    host's `/dev/null` is reopened on the container's (checkpointable) one;
//! 6. `linux.sysctl` (before /proc/sys may become read-only);
//! 7. maskedPaths, readonlyPaths, read-only `/`, rootfsPropagation of `/`.
//!
//! Where this differs from runc, on purpose:
//! - bind mounts are cloned with `open_tree`, get their flags with
//!   `mount_setattr` while still detached and are then attached with
//!   `move_mount`: no window where a `ro` bind is writable, and flags not named
//!   in the options are inherited from the source instead of being reset
//!   by an MS_REMOUNT (so a `nosuid` source stays `nosuid`);
//! - readonlyPaths are made read-only recursively (submounts included);
//! - unknown mount options are an error, not silently passed as data, for
//!   the filesystems a container spec normally uses (proc, sysfs, tmpfs,
//!   devpts, mqueue, cgroup, cgroup2, bind); other filesystems get every
//!   non-generic option as data;
//! - id-mapped mounts (`idmap`, `ridmap`, `uidMappings`) are built by the
//!   runtime's parent with [`crate::idmount::prepare`] (the kernel only lets the
//!   initial user namespace idmap a host filesystem) and attached by
//!   [`prepare_with`];
//! - runc's `tmpcopyup` extension copies owner and mode, not timestamps.

mod copyup;
mod devices;
mod error;
mod idmap;
pub(crate) mod mountinfo;
mod mounts;
mod options;
mod paths;
mod pivot;
pub(crate) mod resolve;
mod sys;
mod sysctl;
mod validate;

#[cfg(test)]
mod tests;

use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

pub use error::RootfsError;
pub use idmap::PreparedMount;
pub use sysctl::apply_sysctl;
pub use validate::{root_path, validate};

/// Whether this process is in the same mount namespace as /proc's pid 1
/// (false if that cannot be determined, e.g. /proc/1 is not accessible).
fn shares_init_mount_ns() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata("/proc/self/ns/mnt"),
        std::fs::metadata("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// How to switch to the new root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Use MS_MOVE + chroot instead of pivot_root (runc's `--no-pivot`, for
    /// a rootfs on ramfs/initramfs where pivot_root is impossible).
    pub no_pivot: bool,
}

/// Build the container's root filesystem and make it `/`.
///
/// Call in the container's init after it entered its new mount namespace
/// (and user namespace, if any), before dropping privileges, with the
/// process's working directory still the bundle (relative bind sources are
/// resolved against it). `rootfs` must be the absolute canonical rootfs
/// path. On return the process's root and cwd are the new `/`.
///
/// `linux.sysctl` is applied here (after pivot_root, before readonlyPaths
/// can make /proc/sys read-only); calling [`apply_sysctl`] afterwards is
/// harmless but unnecessary.
pub fn prepare(spec: &Spec, rootfs: &Path, opts: &Options) -> Result<(), RootfsError> {
    prepare_with(spec, rootfs, opts, Vec::new())
}

/// [`prepare`] with the ID-mapped mounts the parent built with
/// [`crate::idmount::prepare`] (required when a mount uses `idmap`/`ridmap` or
/// `uidMappings`; each is attached in place of cloning its source).
pub fn prepare_with(
    spec: &Spec,
    rootfs: &Path,
    opts: &Options,
    premounted: Vec<PreparedMount>,
) -> Result<(), RootfsError> {
    prepare_with_root(spec, rootfs, opts, premounted, None, &|| Ok(()))
}

/// [`prepare_with`], and with `idmapped_root` (a detached id-mapped clone of the rootfs made
/// by the parent, see [`crate::idmount`]) attached in place of the bind of the rootfs onto
/// itself. `cgroup_gate` runs before each `cgroup` mount (which shows the caller's own
/// cgroup): the container's init uses it to wait until the runtime has put it into its
/// cgroup, so everything before that mount overlaps with the cgroup join.
pub fn prepare_with_root(
    spec: &Spec,
    rootfs: &Path,
    opts: &Options,
    premounted: Vec<PreparedMount>,
    idmapped_root: Option<std::os::fd::OwnedFd>,
    cgroup_gate: &dyn Fn() -> Result<(), RootfsError>,
) -> Result<(), RootfsError> {
    if !rootfs.is_absolute() {
        return Err(RootfsError::RootPath {
            path: rootfs.to_path_buf(),
            reason: "prepare() needs the absolute canonical rootfs path".into(),
        });
    }
    // Everything below rearranges the mount table: refuse to touch the
    // host's (pid 1's) mount namespace.
    if shares_init_mount_ns() {
        return Err(RootfsError::path(
            "prepare() must run in a new mount namespace; refusing to modify",
            "/proc/1/ns/mnt",
            nix::errno::Errno::EPERM,
        ));
    }
    let linux = spec.linux().as_ref();
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some(p) if !p.is_empty() => Some(
            options::propagation(p)
                .ok_or_else(|| RootfsError::InvalidPropagation(p.to_string()))?,
        ),
        _ => None,
    };
    let cgroupns = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));

    // 1. Propagation of the whole tree in this (new) mount namespace.
    let initial = propagation.unwrap_or(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    mount(None::<&str>, "/", None::<&str>, initial, None::<&str>)
        .map_err(|e| RootfsError::path("set propagation of", "/", e))?;
    let mut table = None;
    if !initial.contains(MsFlags::MS_REC) || initial.contains(MsFlags::MS_SHARED) {
        // Some mounts may still be shared: the rootfs' parent mount and `/`
        // must not be, or the bind below would propagate to the host and
        // pivot_root would fail.
        let t = mountinfo::read()
            .map_err(|e| RootfsError::path("read", "/proc/self/mountinfo", mounts::io_errno(&e)))?;
        if let Some(parent) = t
            .iter()
            .filter(|m| rootfs.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.as_os_str().len())
        {
            mount(
                None::<&str>,
                &parent.mount_point,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| RootfsError::path("make private", &parent.mount_point, e))?;
        }
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| RootfsError::path("make private", "/", e))?;
        table = Some(t);
    }

    // 2. The rootfs becomes a mount point of its own (id-mapped if asked).
    if let Some(tree) = idmapped_root {
        let target = open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RootfsError::path("open rootfs", rootfs, e))?;
        sys::move_mount_fd(tree.as_fd(), target.as_fd())
            .map_err(|e| RootfsError::path("attach the id-mapped rootfs", rootfs, e))?;
    } else {
        mount(
            Some(rootfs),
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| RootfsError::path("bind rootfs onto itself", rootfs, e))?;
    }
    let root = open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RootfsError::path("open rootfs", rootfs, e))?;

    // 3. Spec mounts.
    let spec_mounts = spec.mounts().as_deref().unwrap_or(&[]);
    let mut ctx = mounts::Ctx {
        root: root.as_fd(),
        rootfs,
        cgroupns,
        mountinfo: table,
        premounted,
        cgroup_gate,
    };
    for (i, m) in spec_mounts.iter().enumerate() {
        mounts::mount_entry(&mut ctx, i, m)?;
    }

    // 4. Devices, unless /dev comes from the host.
    let dev_is_bind = spec_mounts.iter().any(|m| {
        options::clean_abs(m.destination()).as_deref() == Some(Path::new("/dev"))
            && matches!(
                options::parse(m).map(|p| p.kind),
                Ok(options::Kind::Bind { .. })
            )
    });
    if !dev_is_bind {
        let spec_devices = linux.and_then(|l| l.devices().as_deref()).unwrap_or(&[]);
        devices::setup(root.as_fd(), &devices::device_list(spec_devices))?;
    }

    // 5. Switch root.
    if opts.no_pivot {
        let t = match ctx.mountinfo.take() {
            Some(t) => t,
            None => mountinfo::read().map_err(|e| {
                RootfsError::path("read", "/proc/self/mountinfo", mounts::io_errno(&e))
            })?,
        };
        pivot::move_root(root.as_fd(), rootfs, &t)?;
    } else {
        pivot::pivot(root.as_fd())?;
    }
    drop(root);
    if !dev_is_bind {
        devices::reopen_dev_null()?;
    }
    let root = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RootfsError::path("open new root", "/", e))?;

    // 6. Sysctls.
    if let Some(sysctl) = linux
        .and_then(|l| l.sysctl().as_ref())
        .filter(|s| !s.is_empty())
    {
        sysctl::write_all(sysctl)?;
    }

    // 7. Masked and read-only paths, read-only root, final propagation.
    if let Some(l) = linux {
        paths::mask(root.as_fd(), l.masked_paths().as_deref().unwrap_or(&[]))?;
        paths::readonly(root.as_fd(), l.readonly_paths().as_deref().unwrap_or(&[]))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        paths::readonly_root(root.as_fd())?;
    }
    if let Some(p) = propagation {
        mount(None::<&str>, "/", None::<&str>, p, None::<&str>)
            .map_err(|e| RootfsError::path("set rootfsPropagation of", "/", e))?;
    }
    Ok(())
}
