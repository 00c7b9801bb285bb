//! Resolving container paths inside the rootfs without ever leaving it.
//!
//! Every lookup is an `openat2(2)` relative to an fd of the rootfs with
//! `RESOLVE_IN_ROOT`, so absolute symlinks and `..` are clamped at the rootfs
//! the way they would be for a process chrooted there. Missing mount points
//! are created component by component, following dangling symlinks the
//! same in-root way (as filepath-securejoin's MkdirAll does for runc).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, mknodat, Mode, SFlag};

/// Kind of mount point to create when the target is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    Dir,
    File,
}

/// Maximum symlinks followed while creating a path (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Lexically clean `path` as seen from inside a root: `..` at `/` stays at `/`.
/// Returns the normal components.
fn components_in_root(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn join(comps: &[OsString]) -> PathBuf {
    if comps.is_empty() {
        return PathBuf::from(".");
    }
    comps.iter().collect()
}

/// `openat2(root, path, O_PATH | extra, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`,
/// retrying the kernel's EAGAIN (a concurrent rename/mount during `..`
/// resolution).
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    extra: OFlag,
) -> Result<OwnedFd, Errno> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    open_how(
        root,
        rel,
        OFlag::O_PATH | extra,
        ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    )
}

fn open_how(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlag,
    resolve: ResolveFlag,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve);
    let mut tries = 0;
    loop {
        match openat2(dir, rel, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

/// Open the child `name` of `dir` that we just created, refusing symlinks.
fn open_created(dir: BorrowedFd<'_>, name: &OsStr, want: Want) -> Result<OwnedFd, Errno> {
    let mut flags = OFlag::O_PATH | OFlag::O_NOFOLLOW;
    if want == Want::Dir {
        flags |= OFlag::O_DIRECTORY;
    }
    open_how(
        dir,
        Path::new(name),
        flags,
        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
    )
}

/// Open `path` (container-absolute) inside `root` as an `O_PATH` fd, creating
/// it and any missing parents (directories; the last component as `want`).
/// Dangling symlinks on the way are followed in-root and their targets created.
///
/// Cost when the path exists: one openat2. When only the last component is
/// missing (the usual case): openat2 ×3 and one mkdirat/mknodat.
pub(crate) fn ensure_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    want: Want,
) -> Result<OwnedFd, Errno> {
    let mut comps = components_in_root(path);
    let mut links = 0;
    'restart: loop {
        match open_in_root(root, &join(&comps), OFlag::empty()) {
            Err(Errno::ENOENT) => {}
            r => return r,
        }
        // Deepest existing ancestor, searching upwards from the parent.
        let mut first_missing = comps.len().saturating_sub(1);
        let mut parent: Option<OwnedFd> = None;
        while first_missing > 0 {
            match open_in_root(root, &join(&comps[..first_missing]), OFlag::empty()) {
                Ok(fd) => {
                    parent = Some(fd);
                    break;
                }
                Err(Errno::ENOENT) => first_missing -= 1,
                Err(e) => return Err(e),
            }
        }
        // Create comps[first_missing..] one by one.
        let last = comps.len().saturating_sub(1);
        for j in first_missing..comps.len() {
            let dir = parent.as_ref().map(|f| f.as_fd()).unwrap_or(root);
            let name = Path::new(&comps[j]);
            let kind = if j == last { want } else { Want::Dir };
            let made = match kind {
                Want::Dir => mkdirat(dir, name, Mode::from_bits_truncate(0o755)),
                Want::File => mknodat(
                    dir,
                    name,
                    SFlag::S_IFREG,
                    Mode::from_bits_truncate(0o644),
                    0,
                ),
            };
            match made {
                Ok(()) => {}
                // It exists but did not resolve: a dangling symlink. Follow
                // it in-root: substitute its target and start over.
                Err(Errno::EEXIST) => match readlinkat(dir, name) {
                    Ok(target) => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(Errno::ELOOP);
                        }
                        let target = Path::new(&target);
                        let mut next = PathBuf::from("/");
                        if !target.is_absolute() {
                            next.push(join(&comps[..j]));
                        }
                        next.push(target);
                        for c in &comps[j + 1..] {
                            next.push(c);
                        }
                        comps = components_in_root(&next);
                        continue 'restart;
                    }
                    // Not a symlink: created concurrently; use it.
                    Err(Errno::EINVAL) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
            parent = Some(open_created(dir, &comps[j], kind)?);
        }
        return parent.ok_or(Errno::ENOENT);
    }
}
