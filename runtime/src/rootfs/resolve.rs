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
        // Find the first missing component.
        let mut parent: Option<OwnedFd> = None;
        for i in 0..comps.len() {
            match open_in_root(root, &join(&comps[..=i]), OFlag::empty()) {
                Ok(fd) => {
                    parent = Some(fd);
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let dir = parent.as_ref().map(|f| f.as_fd()).unwrap_or(root);
            // A dangling symlink: substitute its target and start over.
            match readlinkat(dir, Path::new(&comps[i])) {
                Ok(target) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Errno::ELOOP);
                    }
                    let target = Path::new(&target);
                    let mut next = PathBuf::from("/");
                    if !target.is_absolute() {
                        next.push(join(&comps[..i]));
                    }
                    next.push(target);
                    for c in &comps[i + 1..] {
                        next.push(c);
                    }
                    comps = components_in_root(&next);
                    continue 'restart;
                }
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            // Create comps[i..] one by one.
            let mut cur = parent;
            let last = comps.len() - 1;
            for (j, name) in comps.iter().enumerate().skip(i) {
                let dir = cur.as_ref().map(|f| f.as_fd()).unwrap_or(root);
                let kind = if j == last { want } else { Want::Dir };
                let name_path = Path::new(name);
                let made = match kind {
                    Want::Dir => mkdirat(dir, name_path, Mode::from_bits_truncate(0o755)),
                    Want::File => mknodat(
                        dir,
                        name_path,
                        SFlag::S_IFREG,
                        Mode::from_bits_truncate(0o644),
                        0,
                    ),
                };
                match made {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                cur = Some(open_created(dir, name, kind)?);
            }
            return cur.ok_or(Errno::ENOENT);
        }
        // Every prefix exists now (created concurrently): resolve again.
        links += 1;
        if links > MAX_LINKS {
            return Err(Errno::ELOOP);
        }
    }
}
