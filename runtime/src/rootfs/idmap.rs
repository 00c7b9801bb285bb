//! ID-mapped bind mounts (`idmap` / `ridmap`, `uidMappings` / `gidMappings`).
//!
//! The kernel only lets a process privileged over the filesystem's user
//! namespace (for host filesystems: the initial one) attach an ID mapping to
//! a mount, and only while the mount is still detached. So, as runc 1.2
//! does, the runtime's parent builds these mounts with [`prepare_idmapped`]
//! before the container's init enters its user namespace, and hands the
//! detached mounts to [`super::prepare_with`] (fds survive fork).

use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
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

fn map_text(maps: &[LinuxIdMapping]) -> String {
    let mut s = String::new();
    for m in maps {
        let _ = writeln!(s, "{} {} {}", m.container_id(), m.host_id(), m.size());
    }
    s
}

/// A user namespace with the given mappings, held by an fd. A short-lived
/// child creates it; only raw syscalls run in the child, so this is safe to
/// call from a multi-threaded process.
fn userns_with(uids: &[LinuxIdMapping], gids: &[LinuxIdMapping]) -> Result<OwnedFd, Errno> {
    let (uid_map, gid_map) = (map_text(uids), map_text(gids));
    let (ready_rd, ready_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (done_rd, done_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the child only calls async-signal-safe libc functions
    // (unshare, write, read, _exit) on fds it inherited, then exits.
    match unsafe { fork() }? {
        ForkResult::Child => {
            // SAFETY: plain syscalls on valid fds and a valid stack buffer.
            unsafe {
                // Drop our copy of the parent's write end, or the read below
                // could never see EOF.
                libc::close(done_wr.as_raw_fd());
                let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
                libc::write(ready_wr.as_raw_fd(), (&ok as *const u8).cast(), 1);
                let mut b = 0u8;
                libc::read(done_rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                libc::_exit(0)
            }
        }
        ForkResult::Parent { child } => {
            drop(ready_wr);
            drop(done_rd);
            let result = (|| {
                let mut ok = [0u8; 1];
                let n = nix::unistd::read(&ready_rd, &mut ok)?;
                if n != 1 || ok[0] != 1 {
                    return Err(Errno::EPERM);
                }
                let base = format!("/proc/{child}");
                // Without setgroups=deny a gid map needs CAP_SETGID over the
                // parent namespace, which the runtime has; keep setgroups.
                std::fs::write(format!("{base}/uid_map"), &uid_map)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
                std::fs::write(format!("{base}/gid_map"), &gid_map)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
                open(
                    format!("{base}/ns/user").as_str(),
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
            })();
            let _ = nix::unistd::write(&done_wr, &[1]);
            drop(done_wr);
            let _ = waitpid(child, None);
            result
        }
    }
}
