//! Waiting for OOM events: v1 through an eventfd registered on memory.oom_control via
//! cgroup.event_control, v2 through inotify on memory.events.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{fs, CgroupError};

/// Blocks until OOM events happen in one cgroup. Also usable with poll(2) through `as_fd`.
#[derive(Debug)]
pub struct OomWatcher {
    dir: PathBuf,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    V1 { efd: EventFd, _control: File },
    V2 { inotify: OwnedFd, last: u64 },
}

fn ev_err(dir: &Path, source: io::Error) -> CgroupError {
    CgroupError::Event {
        path: dir.to_path_buf(),
        source,
    }
}

impl OomWatcher {
    pub(crate) fn v1(dir: &Path) -> Result<OomWatcher, CgroupError> {
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)
            .map_err(|e| ev_err(dir, io::Error::from(e)))?;
        let path = dir.join("memory.oom_control");
        let control = File::open(&path).map_err(|source| CgroupError::Read { path, source })?;
        let line = format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd());
        fs::write(dir, "cgroup.event_control", &line)?;
        Ok(OomWatcher {
            dir: dir.to_path_buf(),
            inner: Inner::V1 {
                efd,
                _control: control,
            },
        })
    }

    pub(crate) fn v2(dir: &Path) -> Result<OomWatcher, CgroupError> {
        // Hand-written: the workspace's nix build does not enable its inotify feature and two
        // libc calls are smaller than another feature flag shared by every crate.
        // SAFETY: inotify_init1 takes no pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(ev_err(dir, io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor returned above and owned by nobody else.
        let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = dir.join("memory.events");
        let c = CString::new(events.as_os_str().as_bytes())
            .map_err(|_| ev_err(dir, io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: c is a valid NUL-terminated path; the descriptor is open.
        let wd =
            unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(ev_err(dir, io::Error::last_os_error()));
        }
        let last = fs::keyed(&fs::read(dir, "memory.events")?, "oom_kill").unwrap_or(0);
        Ok(OomWatcher {
            dir: dir.to_path_buf(),
            inner: Inner::V2 { inotify, last },
        })
    }

    /// Blocks until at least one OOM event; returns how many happened since the last call,
    /// or `None` once the cgroup has been removed.
    /// On v1 the count is of OOM situations (the limit was hit and reclaim failed); on v2 it
    /// is of processes OOM-killed (memory.events oom_kill).
    pub fn wait(&mut self) -> Result<Option<u64>, CgroupError> {
        match &mut self.inner {
            Inner::V1 { efd, .. } => {
                let n = efd
                    .read()
                    .map_err(|e| ev_err(&self.dir, io::Error::from(e)))?;
                // The kernel also signals the eventfd when the cgroup goes away.
                if !self.dir.join("memory.oom_control").exists() {
                    return Ok(None);
                }
                Ok(Some(n))
            }
            Inner::V2 { inotify, last } => loop {
                // kernfs sends no inotify event when the cgroup is removed: wake up now and
                // then to notice that (the v1 eventfd is signalled on removal instead).
                let mut pfd = libc::pollfd {
                    fd: inotify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: pfd is one valid pollfd for the duration of the call.
                let r = unsafe { libc::poll(&mut pfd, 1, 500) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(ev_err(&self.dir, e));
                }
                if r == 0 {
                    if !self.dir.join("memory.events").exists() {
                        return Ok(None);
                    }
                    continue;
                }
                let mut buf = [0u8; 4096];
                // SAFETY: buf is a writable buffer of the given length; the fd is open.
                let n =
                    unsafe { libc::read(inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(ev_err(&self.dir, e));
                }
                // struct inotify_event: wd i32, mask u32, cookie u32, len u32, name[len]
                let mut off = 0usize;
                let mut gone = false;
                while off + 16 <= n as usize {
                    let mask = u32::from_ne_bytes([
                        buf[off + 4],
                        buf[off + 5],
                        buf[off + 6],
                        buf[off + 7],
                    ]);
                    let len = u32::from_ne_bytes([
                        buf[off + 12],
                        buf[off + 13],
                        buf[off + 14],
                        buf[off + 15],
                    ]);
                    if mask & libc::IN_IGNORED != 0 {
                        gone = true;
                    }
                    off += 16 + len as usize;
                }
                let text = match fs::read_opt(&self.dir, "memory.events")? {
                    Some(t) => t,
                    None => return Ok(None),
                };
                if gone {
                    return Ok(None);
                }
                let now = fs::keyed(&text, "oom_kill").unwrap_or(0);
                if now > *last {
                    let d = now - *last;
                    *last = now;
                    return Ok(Some(d));
                }
            },
        }
    }

    /// The descriptor that becomes readable when `wait` would not block.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::V1 { efd, .. } => efd.as_fd(),
            Inner::V2 { inotify, .. } => inotify.as_fd(),
        }
    }
}
