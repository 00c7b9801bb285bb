//! Mounting the spec's `mounts[]` into the rootfs (before pivot_root).
//!
//! Targets are always resolved in-root (see `resolve`). Bind mounts use the
//! new mount API: `open_tree(OPEN_TREE_CLONE)` the source, set its
//! attributes with `mount_setattr` while it is still detached (so a
//! read-only bind is never visible writable and no MS_REMOUNT round-trip is
//! needed), then `move_mount` it onto the resolved target fd. Other
//! filesystems are mounted with mount(2) onto `/proc/self/fd/N` of the
//! resolved target, as runc does.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::symlinkat;
use oci_spec::runtime::Mount;

use super::copyup;
use super::error::RootfsError;
use super::idmap::PreparedMount;
use super::mountinfo::{self, host_cgroup_dir, same_set, v1_subsystems, MountEntry};
use super::options::{self, Kind, Parsed};
use super::resolve::{ensure_in_root, open_in_root, Want};
use super::sys::{self, MountAttr};

/// Shared state while mounting one container's entries.
pub(crate) struct Ctx<'a> {
    /// O_PATH fd of the (bind-mounted) rootfs.
    pub root: BorrowedFd<'a>,
    /// Host path of the rootfs (to skip host mounts under it).
    pub rootfs: &'a Path,
    /// The spec asks for a cgroup namespace.
    pub cgroupns: bool,
    /// Host mount table, read at most once and only when needed.
    pub mountinfo: Option<Vec<MountEntry>>,
    /// ID-mapped trees built by the parent (see `idmap`).
    pub premounted: Vec<PreparedMount>,
    /// Called before each `cgroup` mount: returns once the process is in the container's
    /// cgroup (and, with a cgroup namespace, has unshared it), which that mount shows.
    pub cgroup_gate: &'a dyn Fn() -> Result<(), RootfsError>,
}

impl Ctx<'_> {
    fn mountinfo(&mut self) -> Result<&[MountEntry], RootfsError> {
        if self.mountinfo.is_none() {
            let v = mountinfo::read()
                .map_err(|e| RootfsError::path("read", "/proc/self/mountinfo", io_errno(&e)))?;
            self.mountinfo = Some(v);
        }
        Ok(self.mountinfo.as_deref().unwrap_or(&[]))
    }
}

pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Error builder for one mount entry.
struct MountErr<'m> {
    m: &'m Mount,
    dest: &'m Path,
    fstype: &'m str,
}

impl MountErr<'_> {
    fn at(&self, op: &'static str) -> impl FnOnce(Errno) -> RootfsError + '_ {
        move |errno| RootfsError::Mount {
            destination: self.dest.to_path_buf(),
            fstype: self.fstype.to_string(),
            source_path: self.m.source().clone().unwrap_or_default(),
            op,
            errno,
        }
    }
}

/// Mount spec entry `index`.
pub(crate) fn mount_entry(ctx: &mut Ctx<'_>, index: usize, m: &Mount) -> Result<(), RootfsError> {
    let invalid = |reason: String| RootfsError::InvalidMount {
        index,
        destination: m.destination().clone(),
        reason,
    };
    let parsed = options::parse(m).map_err(invalid)?;
    let dest = options::clean_abs(m.destination())
        .ok_or_else(|| invalid("destination must be absolute and stay inside the rootfs".into()))?;
    match &parsed.kind {
        Kind::Bind { recursive } => {
            let e = MountErr {
                m,
                dest: &dest,
                fstype: "bind",
            };
            bind(ctx, index, m, &dest, &parsed, *recursive, &e)
        }
        Kind::Cgroup => {
            let e = MountErr {
                m,
                dest: &dest,
                fstype: "cgroup",
            };
            (ctx.cgroup_gate)()?;
            cgroup(ctx, &dest, &parsed, &e)
        }
        Kind::Fs(t) => {
            let e = MountErr {
                m,
                dest: &dest,
                fstype: t,
            };
            filesystem(ctx, m, &dest, &parsed, t, &e)
        }
    }
}

/// Clone `source` (a host path, relative ones against the cwd = bundle) as
/// a detached tree.
fn clone_tree(source: &Path, recursive: bool) -> Result<OwnedFd, Errno> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    let c = sys::path_cstring(source)?;
    sys::open_tree(nix::fcntl::AT_FDCWD, &c, flags)
}

fn is_dir(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let st = fstat(fd)?;
    Ok(SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR)
}

/// Apply per-mount and recursive attributes and propagation to the mount
/// `fd` is the root of.
fn apply_attrs(
    fd: BorrowedFd<'_>,
    p: &Parsed,
    per_mount: MountAttr,
    e: &MountErr<'_>,
) -> Result<(), RootfsError> {
    if !p.rec_attr.is_empty() {
        sys::mount_setattr(fd, p.rec_attr, true)
            .map_err(e.at("mount_setattr (recursive options)"))?;
    }
    if !per_mount.is_empty() {
        sys::mount_setattr(fd, per_mount, false).map_err(e.at("mount_setattr"))?;
    }
    Ok(())
}

fn apply_propagation(fd: BorrowedFd<'_>, p: &Parsed, e: &MountErr<'_>) -> Result<(), RootfsError> {
    for prop in &p.propagation {
        let attr = MountAttr {
            propagation: (*prop & !MsFlags::MS_REC).bits(),
            ..Default::default()
        };
        sys::mount_setattr(fd, attr, prop.contains(MsFlags::MS_REC))
            .map_err(e.at("set propagation"))?;
    }
    Ok(())
}

fn bind(
    ctx: &mut Ctx<'_>,
    index: usize,
    m: &Mount,
    dest: &Path,
    p: &Parsed,
    recursive: bool,
    e: &MountErr<'_>,
) -> Result<(), RootfsError> {
    let source = m
        .source()
        .as_deref()
        .ok_or(Errno::EINVAL)
        .map_err(e.at("bind mount needs a source"))?;
    let tree = if p.idmap.is_some() {
        let pos = ctx
            .premounted
            .iter()
            .position(|pm| pm.index == index)
            .ok_or(Errno::EINVAL)
            .map_err(e.at("ID-mapped mount not prepared by the parent (idmount::prepare)"))?;
        ctx.premounted.swap_remove(pos).fd
    } else {
        clone_tree(source, recursive).map_err(e.at("open_tree (source)"))?
    };
    let want = if is_dir(tree.as_fd()).map_err(e.at("stat source"))? {
        Want::Dir
    } else {
        Want::File
    };
    let target =
        ensure_in_root(ctx.root, dest, want).map_err(e.at("resolve/create mount point"))?;
    apply_attrs(tree.as_fd(), p, p.bind_attr(), e)?;
    sys::move_mount_fd(tree.as_fd(), target.as_fd()).map_err(e.at("move_mount"))?;
    apply_propagation(tree.as_fd(), p, e)
}

fn filesystem(
    ctx: &mut Ctx<'_>,
    m: &Mount,
    dest: &Path,
    p: &Parsed,
    fstype: &str,
    e: &MountErr<'_>,
) -> Result<(), RootfsError> {
    let target =
        ensure_in_root(ctx.root, dest, Want::Dir).map_err(e.at("resolve/create mount point"))?;
    let source: PathBuf = m.source().clone().unwrap_or_else(|| PathBuf::from(fstype));
    let data = p.data_string();
    let data = (!data.is_empty()).then_some(data.as_str());
    // tmpcopyup: keep a handle on the directory about to be covered.
    let covered = match p.tmpcopyup {
        true => {
            Some(copyup::reopen_dir(target.as_fd()).map_err(e.at("open directory for tmpcopyup"))?)
        }
        false => None,
    };
    // With tmpcopyup the tmpfs is filled first and made read-only after.
    let flags = match covered {
        Some(_) => p.flags - MsFlags::MS_RDONLY,
        None => p.flags,
    };
    let res = mount(
        Some(source.as_path()),
        sys::proc_fd_path(target.as_fd()).as_c_str(),
        Some(fstype),
        flags,
        data,
    );
    match res {
        Ok(()) => {}
        // In a user namespace that does not own the network (sysfs) or IPC
        // (mqueue) namespace the kernel refuses a new instance; bind the
        // host's instead (as runc does).
        Err(Errno::EPERM) if fstype == "sysfs" || fstype == "mqueue" => {
            let host = if fstype == "sysfs" {
                "/sys"
            } else {
                "/dev/mqueue"
            };
            let tree = clone_tree(Path::new(host), true)
                .map_err(e.at("open_tree host instance (EPERM fallback)"))?;
            let attr = MountAttr {
                propagation: 0,
                ..p.bind_attr()
            };
            if !attr.is_empty() {
                sys::mount_setattr(tree.as_fd(), attr, true)
                    .map_err(e.at("mount_setattr (EPERM fallback)"))?;
            }
            sys::move_mount_fd(tree.as_fd(), target.as_fd())
                .map_err(e.at("move_mount (EPERM fallback)"))?;
        }
        Err(errno) => return Err(e.at("mount")(errno)),
    }
    if let Some(covered) = covered {
        let top =
            open_in_root(ctx.root, dest, OFlag::O_DIRECTORY).map_err(e.at("reopen new tmpfs"))?;
        let top_dir =
            copyup::reopen_dir(top.as_fd()).map_err(e.at("open new tmpfs for tmpcopyup"))?;
        copyup::copy_dir(covered, top_dir).map_err(e.at("tmpcopyup"))?;
        if p.readonly() {
            let ro = MountAttr {
                set: libc::MOUNT_ATTR_RDONLY,
                ..Default::default()
            };
            sys::mount_setattr(top.as_fd(), ro, false)
                .map_err(e.at("make read-only after tmpcopyup"))?;
        }
    }
    if p.rec_attr.is_empty() && p.propagation.is_empty() {
        return Ok(());
    }
    // The target fd names the covered directory; reopen to get the new mount.
    let top = open_in_root(ctx.root, dest, OFlag::O_DIRECTORY).map_err(e.at("reopen mount"))?;
    apply_attrs(top.as_fd(), p, MountAttr::default(), e)?;
    apply_propagation(top.as_fd(), p, e)
}

/// The `cgroup` mount type: on a host with v1 hierarchies, a tmpfs holding one
/// mount per hierarchy showing the container's own cgroup (a fresh cgroup
/// mount inside a cgroup namespace, else a bind of the host directory); on
/// a unified host, cgroup2 (fresh in a cgroup namespace, else a bind).
fn cgroup(ctx: &mut Ctx<'_>, dest: &Path, p: &Parsed, e: &MountErr<'_>) -> Result<(), RootfsError> {
    let rootfs = ctx.rootfs.to_path_buf();
    let cgroupns = ctx.cgroupns;
    let root = ctx.root;
    let table: Vec<MountEntry> = ctx
        .mountinfo()?
        .iter()
        .filter(|m| {
            (m.fstype == "cgroup" || m.fstype == "cgroup2") && !m.mount_point.starts_with(&rootfs)
        })
        .cloned()
        .collect();
    let own = mountinfo::read_proc_file("/proc/self/cgroup")
        .map(|t| mountinfo::parse_proc_cgroup(&t))
        .map_err(|e| io_errno(&e))
        .map_err(e.at("read /proc/self/cgroup"))?;
    let target =
        ensure_in_root(root, dest, Want::Dir).map_err(e.at("resolve/create mount point"))?;
    let v1: Vec<&MountEntry> = table.iter().filter(|m| m.fstype == "cgroup").collect();
    let per_mount = p.flags
        & (MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_RELATIME
            | MsFlags::MS_NOATIME
            | MsFlags::MS_STRICTATIME
            | MsFlags::MS_NODIRATIME);

    if v1.is_empty() {
        // Unified host.
        let unified = own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.clone());
        if cgroupns {
            mount(
                Some("cgroup2"),
                sys::proc_fd_path(target.as_fd()).as_c_str(),
                Some("cgroup2"),
                p.flags,
                None::<&str>,
            )
            .map_err(e.at("mount cgroup2"))?;
        } else {
            let host = table
                .iter()
                .find(|m| m.fstype == "cgroup2")
                .ok_or(Errno::ENOENT)
                .map_err(e.at("find host cgroup2 mount"))?;
            let rel = unified.unwrap_or_else(|| PathBuf::from("/"));
            let src = host_cgroup_dir(host, &rel);
            let tree = clone_tree(&src, false).map_err(e.at("open_tree host cgroup2"))?;
            apply_attrs(tree.as_fd(), p, p.bind_attr(), e)?;
            sys::move_mount_fd(tree.as_fd(), target.as_fd()).map_err(e.at("move_mount cgroup2"))?;
        }
        return Ok(());
    }

    // v1 / hybrid: tmpfs, then one entry per hierarchy.
    mount(
        Some("tmpfs"),
        sys::proc_fd_path(target.as_fd()).as_c_str(),
        Some("tmpfs"),
        per_mount,
        Some("mode=755"),
    )
    .map_err(e.at("mount cgroup tmpfs"))?;
    let tmp = open_in_root(root, dest, OFlag::O_DIRECTORY).map_err(e.at("reopen cgroup tmpfs"))?;
    let mut done: Vec<&std::ffi::OsStr> = Vec::new();
    for h in v1 {
        let Some(name) = h.mount_point.file_name() else {
            continue;
        };
        if done.contains(&name) {
            continue;
        }
        done.push(name);
        let subs = v1_subsystems(&h.super_options);
        // A fresh directory in our own new tmpfs: no symlink can be in the
        // way, so address it by path below the tmpfs fd.
        mkdirat(tmp.as_fd(), name, Mode::from_bits_truncate(0o755))
            .map_err(e.at("mkdir cgroup hierarchy dir"))?;
        let mut sub_path = sys::proc_fd_path(tmp.as_fd()).into_bytes();
        sub_path.push(b'/');
        sub_path.extend_from_slice(name.as_bytes());
        let sub_path = std::ffi::CString::new(sub_path)
            .map_err(|_| Errno::EINVAL)
            .map_err(e.at("cgroup path"))?;
        if cgroupns {
            let data = subs.join(",");
            mount(
                Some("cgroup"),
                sub_path.as_c_str(),
                Some("cgroup"),
                p.flags,
                Some(data.as_str()),
            )
            .map_err(e.at("mount cgroup hierarchy"))?;
        } else {
            let rel = own
                .iter()
                .find(|(c, _)| same_set(&subs, c))
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| PathBuf::from("/"));
            let src = host_cgroup_dir(h, &rel);
            let tree = clone_tree(&src, false).map_err(e.at("open_tree host cgroup"))?;
            let mut attr = p.bind_attr();
            attr.set |= libc::MOUNT_ATTR_RDONLY * u64::from(p.readonly());
            sys::mount_setattr(tree.as_fd(), attr, false)
                .map_err(e.at("mount_setattr host cgroup"))?;
            let name_c = std::ffi::CString::new(name.as_bytes())
                .map_err(|_| Errno::EINVAL)
                .map_err(e.at("cgroup path"))?;
            sys::move_mount_at(tree.as_fd(), tmp.as_fd(), &name_c)
                .map_err(e.at("move_mount host cgroup"))?;
        }
        // Co-mounted controllers ("cpu,cpuacct") get one symlink per controller.
        if let Some(n) = name.to_str().filter(|n| n.contains(',')) {
            for part in n.split(',') {
                match symlinkat(n, tmp.as_fd(), part) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(e.at("symlink co-mounted controller")(errno)),
                }
            }
        }
    }
    if p.readonly() {
        let attr = MountAttr {
            set: libc::MOUNT_ATTR_RDONLY,
            ..Default::default()
        };
        sys::mount_setattr(tmp.as_fd(), attr, false)
            .map_err(e.at("remount cgroup tmpfs read-only"))?;
    }
    Ok(())
}
