//! runc's `tmpcopyup` mount option: a new tmpfs starts with a copy of the
//! directory it covers (podman uses it for tmpfs volumes).
//!
//! Everything is fd-relative with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, so a
//! symlink in the image is copied as a symlink and never followed.
//! Ownership and permission bits are kept; timestamps and xattrs are not.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, mkdirat, mknodat, FchmodatFlags, Mode, SFlag,
};
use nix::unistd::{fchown, fchownat, symlinkat, Gid, Uid};

/// Deepest directory nesting copied (a guard against pathological trees).
const MAX_DEPTH: usize = 128;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Reopen an `O_PATH` directory fd as a readable one.
pub(crate) fn reopen_dir(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    openat(fd, ".", DIR_FLAGS, Mode::empty())
}

/// Copy the contents of directory `src` into the (empty) directory `dst`,
/// and give `dst` the owner and mode of `src`.
pub(crate) fn copy_dir(src: OwnedFd, dst: OwnedFd) -> Result<(), Errno> {
    let st = fstat(src.as_fd())?;
    copy_contents(src, dst.as_fd(), 0)?;
    fchown(
        dst.as_fd(),
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )?;
    fchmod(dst.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))
}

fn copy_contents(src: OwnedFd, dst: BorrowedFd<'_>, depth: usize) -> Result<(), Errno> {
    if depth > MAX_DEPTH {
        return Err(Errno::ELOOP);
    }
    // One fd for the *at calls, one consumed by the directory stream.
    let src_at = src
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let mut dir = Dir::from_fd(src)?;
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let st = fstatat(src_at.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
        let (uid, gid) = (
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        );
        match kind {
            SFlag::S_IFDIR => {
                mkdirat(dst, name, Mode::from_bits_truncate(0o700))?;
                let child_src = openat(src_at.as_fd(), name, DIR_FLAGS, Mode::empty())?;
                let child_dst = openat(dst, name, DIR_FLAGS, Mode::empty())?;
                copy_contents(child_src, child_dst.as_fd(), depth + 1)?;
                fchown(child_dst.as_fd(), uid, gid)?;
                fchmod(child_dst.as_fd(), perm)?;
            }
            SFlag::S_IFREG => {
                let from = openat(
                    src_at.as_fd(),
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let to = openat(
                    dst,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                let mut from = std::fs::File::from(from);
                let mut to = std::fs::File::from(to);
                // std uses copy_file_range / sendfile underneath.
                std::io::copy(&mut from, &mut to)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
                // chown before chmod: chown clears set-id bits.
                fchown(to.as_fd(), uid, gid)?;
                fchmod(to.as_fd(), perm)?;
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(src_at.as_fd(), name)?;
                symlinkat(target.as_os_str(), dst, name)?;
                fchownat(dst, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            }
            _ => {
                mknodat(dst, name, kind, perm, st.st_rdev)?;
                fchownat(dst, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                // The node was just created by us (not a symlink): umask-proof mode.
                fchmodat(dst, name, perm, FchmodatFlags::FollowSymlink)?;
            }
        }
    }
    Ok(())
}
