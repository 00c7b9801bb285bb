//! User-namespace id maps and idmapped mounts.
//!
//! - [`validate`] checks OCI `uidMappings`/`gidMappings` (empty ranges, overflow, overlaps on
//!   either side) before anything is created.
//! - [`write_id_maps`] writes `/proc/<pid>/{uid_map,setgroups,gid_map}` for a child that has
//!   unshared its user namespace; the parent does this while the child waits.
//! - [`UserNamespace::with_mappings`] makes a user namespace that holds a mapping and nothing
//!   else, and keeps its fd: the kernel's idmapped mounts take such an fd.
//! - [`idmapped_bind`] clones a mount tree with `open_tree(OPEN_TREE_CLONE)`, attaches an id
//!   map with `mount_setattr(MOUNT_ATTR_IDMAP)` and moves it into place with `move_mount`.
//!
//! nix 0.31 has no wrappers for the new mount API (`open_tree`, `mount_setattr`,
//! `move_mount`), so the three syscalls are wrapped here, each in one small function.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::LinuxIdMapping;

/// Errors from id maps and idmapped mounts.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    /// A mapping range has size 0.
    #[error("{kind} mapping {index} has size 0")]
    EmptyRange {
        /// `uid` or `gid`.
        kind: &'static str,
        /// Position in the list.
        index: usize,
    },
    /// A mapping range wraps past the 32-bit id space.
    #[error("{kind} mapping {index} ({start}+{size}) overflows the 32-bit id space")]
    Overflow {
        /// `uid` or `gid`.
        kind: &'static str,
        /// Position in the list.
        index: usize,
        /// Start of the overflowing range.
        start: u32,
        /// Its size.
        size: u32,
    },
    /// Two ranges overlap on the container or on the host side.
    #[error("{kind} mappings {a} and {b} overlap on the {side} side")]
    Overlap {
        /// `uid` or `gid`.
        kind: &'static str,
        /// First range's position.
        a: usize,
        /// Second range's position.
        b: usize,
        /// `container` or `host`.
        side: &'static str,
    },
    /// The kernel allows at most 340 lines in a map.
    #[error("{kind} map has {n} ranges; the kernel accepts at most 340")]
    TooManyRanges {
        /// `uid` or `gid`.
        kind: &'static str,
        /// How many were given.
        n: usize,
    },
    /// An idmapped mount needs both a uid and a gid mapping.
    #[error("an idmapped mount needs both uidMappings and gidMappings")]
    MissingMappings,
    /// Writing a `/proc/<pid>/*_map` file failed.
    #[error("writing {path}: {source}")]
    WriteMap {
        /// The map file.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// A syscall failed.
    #[error("{call} {path}: {source}")]
    Sys {
        /// The syscall.
        call: &'static str,
        /// The path it was given.
        path: PathBuf,
        /// The errno.
        source: io::Error,
    },
    /// The filesystem does not support idmapped mounts.
    #[error("{path}: this filesystem does not support idmapped mounts")]
    Unsupported {
        /// The source of the mount.
        path: PathBuf,
    },
    /// A path contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    NulInPath(PathBuf),
}

fn kernel_line(m: &LinuxIdMapping) -> String {
    format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())
}

/// Check a list of mappings the way the kernel will, so a bad one is refused before any
/// process or mount exists. `kind` is `"uid"` or `"gid"` for the messages.
pub fn validate(kind: &'static str, maps: &[LinuxIdMapping]) -> Result<(), IdmapError> {
    if maps.len() > 340 {
        return Err(IdmapError::TooManyRanges {
            kind,
            n: maps.len(),
        });
    }
    let end = |start: u32, size: u32| u64::from(start) + u64::from(size);
    for (index, m) in maps.iter().enumerate() {
        if m.size() == 0 {
            return Err(IdmapError::EmptyRange { kind, index });
        }
        for start in [m.container_id(), m.host_id()] {
            if end(start, m.size()) > u64::from(u32::MAX) + 1 {
                return Err(IdmapError::Overflow {
                    kind,
                    index,
                    start,
                    size: m.size(),
                });
            }
        }
    }
    for (a, ma) in maps.iter().enumerate() {
        for (b, mb) in maps.iter().enumerate().skip(a + 1) {
            let overlaps = |x: u32, y: u32| {
                u64::from(x) < end(y, mb.size()) && u64::from(y) < end(x, ma.size())
            };
            if overlaps(ma.container_id(), mb.container_id()) {
                return Err(IdmapError::Overlap {
                    kind,
                    a,
                    b,
                    side: "container",
                });
            }
            if overlaps(ma.host_id(), mb.host_id()) {
                return Err(IdmapError::Overlap {
                    kind,
                    a,
                    b,
                    side: "host",
                });
            }
        }
    }
    Ok(())
}

/// Write the uid and gid maps of `pid`, which has unshared its user namespace and waits.
///
/// `setgroups` is set to `deny` only when the caller is not root in its own namespace and maps
/// just itself, the one case in which the kernel requires it; otherwise it stays `allow` so the
/// container may call `setgroups(2)`.
pub fn write_id_maps(
    pid: Pid,
    uid_maps: &[LinuxIdMapping],
    gid_maps: &[LinuxIdMapping],
) -> Result<(), IdmapError> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let write = |name: &str, content: String| {
        let path = proc.join(name);
        fs::write(&path, content).map_err(|source| IdmapError::WriteMap { path, source })
    };
    if !uid_maps.is_empty() {
        write("uid_map", uid_maps.iter().map(kernel_line).collect())?;
    }
    if !gid_maps.is_empty() {
        if !nix::unistd::geteuid().is_root() {
            write("setgroups", "deny".into())?;
        }
        write("gid_map", gid_maps.iter().map(kernel_line).collect())?;
    }
    Ok(())
}

/// A user namespace that exists only to carry an id mapping, held open by its fd.
#[derive(Debug)]
pub struct UserNamespace {
    fd: OwnedFd,
}

impl UserNamespace {
    /// Create a user namespace with these mappings and return a handle to it.
    ///
    /// A short-lived child unshares a user namespace and waits on a pipe while this process
    /// writes its maps and opens `/proc/<child>/ns/user`; then the child exits. The namespace
    /// lives on as long as the returned fd.
    pub fn with_mappings(
        uid_maps: &[LinuxIdMapping],
        gid_maps: &[LinuxIdMapping],
    ) -> Result<Self, IdmapError> {
        validate("uid", uid_maps)?;
        validate("gid", gid_maps)?;
        if uid_maps.is_empty() || gid_maps.is_empty() {
            return Err(IdmapError::MissingMappings);
        }
        let sys = |call, source| IdmapError::Sys {
            call,
            path: PathBuf::from("/proc/self/ns/user"),
            source,
        };
        let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| sys("pipe", e.into()))?;
        let (done_r, done_w) = nix::unistd::pipe().map_err(|e| sys("pipe", e.into()))?;
        // SAFETY: the child only calls async-signal-safe functions (unshare, write, read,
        // _exit) before it exits, so forking a possibly multi-threaded process is sound.
        let fork = unsafe { nix::unistd::fork() }.map_err(|e| sys("fork", e.into()))?;
        match fork {
            ForkResult::Child => {
                drop(ready_r);
                drop(done_w);
                let ok = nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok();
                let _ = nix::unistd::write(&ready_w, &[u8::from(ok)]);
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(&done_r, &mut b);
                // SAFETY: _exit is async-signal-safe and never returns.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(ready_w);
                drop(done_r);
                let result = (|| {
                    let mut b = [0u8; 1];
                    let n =
                        nix::unistd::read(&ready_r, &mut b).map_err(|e| sys("read", e.into()))?;
                    if n != 1 || b[0] != 1 {
                        return Err(sys("unshare(CLONE_NEWUSER)", io::Error::last_os_error()));
                    }
                    write_id_maps(child, uid_maps, gid_maps)?;
                    let path = PathBuf::from(format!("/proc/{child}/ns/user"));
                    let file = fs::File::open(&path).map_err(|source| IdmapError::Sys {
                        call: "open",
                        path,
                        source,
                    })?;
                    Ok(UserNamespace { fd: file.into() })
                })();
                drop(done_w);
                let _ = waitpid(child, None);
                result
            }
        }
    }

    /// The namespace's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

fn cstring(path: &Path) -> Result<CString, IdmapError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| IdmapError::NulInPath(path.into()))
}

/// `open_tree(2)`: a detached clone of the mount tree at `path` (recursive when asked).
fn open_tree_clone(path: &Path, recursive: bool) -> Result<OwnedFd, IdmapError> {
    let c = cstring(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: c is a valid NUL-terminated string that outlives the call; the syscall takes
    // (dirfd, path, flags) and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(IdmapError::Sys {
            call: "open_tree",
            path: path.into(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `mount_setattr(2)` with `MOUNT_ATTR_IDMAP` on the detached tree `tree`.
fn set_idmap(
    tree: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    recursive: bool,
    source: &Path,
) -> Result<(), IdmapError> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let empty = c"";
    // SAFETY: tree is an open mount fd, the path is the empty C string, attr points to a
    // properly initialised mount_attr whose size is passed alongside; nothing is retained.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => IdmapError::Unsupported {
                path: source.into(),
            },
            _ => IdmapError::Sys {
                call: "mount_setattr(MOUNT_ATTR_IDMAP)",
                path: source.into(),
                source: err,
            },
        });
    }
    Ok(())
}

/// `move_mount(2)`: attach the detached tree `tree` at `target`.
fn move_mount_to(tree: BorrowedFd<'_>, target: &Path) -> Result<(), IdmapError> {
    let c = cstring(target)?;
    let empty = c"";
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call; tree is
    // an open detached mount fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(IdmapError::Sys {
            call: "move_mount",
            path: target.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Bind-mount `source` at `target` (which must exist) through the id mapping of `userns`:
/// a file owned by host id `h` on disk appears as the id that `h` maps to inside `userns`,
/// and files created through the mount get the unmapped owner on disk.
///
/// This is what OCI mount-level `uidMappings`/`gidMappings` and the `idmap`/`ridmap` options
/// ask for (`recursive` for `ridmap` and `rbind`). The clone stays detached until the id map is
/// set, so on any error nothing is mounted.
pub fn idmapped_bind(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> Result<(), IdmapError> {
    let tree = open_tree_clone(source, recursive)?;
    {
        use std::os::fd::AsFd;
        set_idmap(tree.as_fd(), userns, recursive, source)?;
        move_mount_to(tree.as_fd(), target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use std::os::unix::fs::{chown, MetadataExt};

    fn map(c: u32, h: u32, s: u32) -> LinuxIdMapping {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(c)
            .host_id(h)
            .size(s)
            .build()
            .unwrap()
    }

    #[test]
    fn validate_refuses_bad_ranges() {
        assert!(validate("uid", &[map(0, 100000, 65536), map(65536, 1000, 1)]).is_ok());
        assert!(matches!(
            validate("uid", &[map(0, 1, 0)]),
            Err(IdmapError::EmptyRange { index: 0, .. })
        ));
        assert!(matches!(
            validate("gid", &[map(0, 100000, 10), map(5, 200000, 10)]),
            Err(IdmapError::Overlap {
                side: "container",
                ..
            })
        ));
        assert!(matches!(
            validate("gid", &[map(0, 100000, 10), map(20, 100009, 10)]),
            Err(IdmapError::Overlap { side: "host", .. })
        ));
        assert!(matches!(
            validate("uid", &[map(u32::MAX, 0, 2)]),
            Err(IdmapError::Overflow { .. })
        ));
        let many: Vec<_> = (0..341).map(|i| map(i, 100000 + i, 1)).collect();
        assert!(matches!(
            validate("uid", &many),
            Err(IdmapError::TooManyRanges { n: 341, .. })
        ));
    }

    #[test]
    fn user_namespace_carries_the_mapping() {
        let ns = UserNamespace::with_mappings(&[map(0, 100000, 65536)], &[map(0, 100000, 65536)])
            .unwrap();
        // The fd is a user namespace distinct from ours.
        let ours = fs::metadata("/proc/self/ns/user").unwrap().ino();
        let theirs = fs::metadata(format!("/proc/self/fd/{}", ns.fd().as_raw_fd()))
            .unwrap()
            .ino();
        assert_ne!(ours, theirs);
    }

    /// Runs `f` in a forked child with its own mount namespace; returns the child's status.
    fn in_mount_ns(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the test child runs only the closure, then _exits without unwinding into the
        // harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            ForkResult::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNS).unwrap();
                    mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .unwrap();
                    f()
                }))
                .unwrap_or(101);
                // SAFETY: leaves the child without running the harness's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                nix::sys::wait::WaitStatus::Exited(_, c) => c,
                other => panic!("child ended with {other:?}"),
            },
        }
    }

    fn idmapped_owner_round_trip(fstype: &str) -> i32 {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        let fstype = fstype.to_string();
        in_mount_ns(move || {
            if fstype == "tmpfs" {
                mount(
                    Some("tmpfs"),
                    &src,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .unwrap();
            }
            // On disk: a file owned by 100000 (container root in an image shifted by 100000).
            fs::write(src.join("f"), b"x").unwrap();
            chown(src.join("f"), Some(100000), Some(100000)).unwrap();
            // The directory too, or host root could not create files through the mount: an
            // inode whose owner is unmapped gives no one DAC override.
            chown(&src, Some(100000), Some(100000)).unwrap();
            // Mount-level map: on-disk 100000.. shown as 0.. (like runc's mount uidMappings,
            // where the user namespace maps container ids onto host ids).
            let ns =
                UserNamespace::with_mappings(&[map(100000, 0, 65536)], &[map(100000, 0, 65536)])
                    .unwrap();
            if let Err(e) = idmapped_bind(&src, &dst, ns.fd(), false) {
                eprintln!("idmapped_bind: {e}");
                return 2;
            }
            let seen = fs::metadata(dst.join("f")).unwrap();
            if seen.uid() != 0 || seen.gid() != 0 {
                eprintln!("through the idmapped mount: {}:{}", seen.uid(), seen.gid());
                return 3;
            }
            // Created through the mount by host root (id 0 → on disk 100000).
            fs::write(dst.join("new"), b"y").unwrap();
            let on_disk = fs::metadata(src.join("new")).unwrap();
            if on_disk.uid() != 100000 || on_disk.gid() != 100000 {
                eprintln!("on disk: {}:{}", on_disk.uid(), on_disk.gid());
                return 4;
            }
            umount2(&dst, MntFlags::MNT_DETACH).unwrap();
            0
        })
    }

    #[test]
    fn idmapped_bind_on_tmpfs_shifts_owners_both_ways() {
        assert_eq!(idmapped_owner_round_trip("tmpfs"), 0);
    }

    #[test]
    fn idmapped_bind_on_disk_filesystem_shifts_owners_both_ways() {
        // The temp dir lives on the root filesystem (ext4 on this host).
        assert_eq!(idmapped_owner_round_trip("disk"), 0);
    }

    #[test]
    fn idmapped_bind_refuses_procfs_and_leaves_nothing_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().to_path_buf();
        let code = in_mount_ns(move || {
            let ns =
                UserNamespace::with_mappings(&[map(0, 100000, 65536)], &[map(0, 100000, 65536)])
                    .unwrap();
            let before = fs::read_to_string("/proc/self/mountinfo").unwrap();
            let r = idmapped_bind(Path::new("/proc"), &dst, ns.fd(), false);
            let after = fs::read_to_string("/proc/self/mountinfo").unwrap();
            match r {
                Err(IdmapError::Unsupported { .. }) if before == after => 0,
                other => {
                    eprintln!("{other:?}");
                    1
                }
            }
        });
        assert_eq!(code, 0);
    }
}
