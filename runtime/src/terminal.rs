//! The container's terminal.
//!
//! With `process.terminal`, the init (or exec'd process) opens a pty *inside* the
//! container — the `/dev/ptmx` of the container's own devpts instance — makes the slave
//! its controlling terminal and stdio, bind-mounts it onto `/dev/console` (init only),
//! and hands the master to the caller over the `--console-socket` unix socket with
//! `SCM_RIGHTS`, like runc (the message data is the master's name, which containerd
//! ignores).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::pty::{posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;

/// Errors of the terminal setup.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// Connecting to `--console-socket` failed.
    #[error("connect to console socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A pty syscall failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] nix::Error),
    /// Sending the master fd failed.
    #[error("send pty master over the console socket: {0}")]
    Send(#[source] crate::sync::SyncError),
}

type Result<T> = std::result::Result<T, TerminalError>;

/// Connects to the caller's console socket (in the parent, before the clone, so a bad
/// path fails early and the init needs no access to the host filesystem).
pub fn connect(path: &Path) -> Result<OwnedFd> {
    let s = UnixStream::connect(path).map_err(|source| TerminalError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(OwnedFd::from(s))
}

/// Terminal size, if the spec gives one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// In the container: creates the pty, makes the slave the controlling terminal and
/// stdio of the calling process, optionally bind-mounts it on `/dev/console`, and
/// sends the master over `socket`. Must run after the rootfs is set up.
pub fn setup(socket: RawFd, bind_console: bool, size: Option<Size>) -> Result<()> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| TerminalError::Sys("open /dev/ptmx", e))?;
    unlockpt(&master).map_err(|e| TerminalError::Sys("unlockpt", e))?;
    let name = ptsname_r(&master).map_err(|e| TerminalError::Sys("ptsname", e))?;
    if let Some(sz) = size {
        let ws = libc::winsize {
            ws_row: sz.rows,
            ws_col: sz.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a `winsize` we own from a valid pointer.
        let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(TerminalError::Sys("TIOCSWINSZ", nix::Error::last()));
        }
    }
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| TerminalError::Sys("open pty slave", e))?;
    if bind_console {
        // The mount point must exist; a regular file is enough for a bind mount.
        let _ = open(
            "/dev/console",
            OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        );
        mount(
            Some(name.as_str()),
            "/dev/console",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| TerminalError::Sys("bind pty slave on /dev/console", e))?;
    }
    crate::sync::send_fd_raw(socket, name.as_bytes(), Some(master.as_raw_fd()))
        .map_err(TerminalError::Send)?;
    drop(master);
    make_controlling(slave)
}

/// New session, `slave` as controlling terminal and as fds 0, 1, 2.
fn make_controlling(slave: OwnedFd) -> Result<()> {
    nix::unistd::setsid().map_err(|e| TerminalError::Sys("setsid", e))?;
    // SAFETY: TIOCSCTTY takes an int argument; `slave` is a valid open tty fd.
    let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if r < 0 {
        return Err(TerminalError::Sys("TIOCSCTTY", nix::Error::last()));
    }
    nix::unistd::dup2_stdin(slave.as_fd()).map_err(|e| TerminalError::Sys("dup2", e))?;
    nix::unistd::dup2_stdout(slave.as_fd()).map_err(|e| TerminalError::Sys("dup2", e))?;
    nix::unistd::dup2_stderr(slave.as_fd()).map_err(|e| TerminalError::Sys("dup2", e))?;
    Ok(())
}

/// A private console socket for a foreground `run`/`exec` that has a terminal but no
/// `--console-socket`: the runtime itself receives the pty master and relays it to its own
/// stdio ([`crate::wait::wait_with_console`]).
#[derive(Debug)]
pub struct ConsoleReceiver {
    listener: std::os::unix::net::UnixListener,
    dir: PathBuf,
}

impl ConsoleReceiver {
    /// Listens on a fresh socket in a private (0700) directory under `parent`.
    pub fn new(parent: &Path) -> Result<ConsoleReceiver> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TerminalError::Connect { path, source }
        };
        std::fs::create_dir_all(parent).map_err(err(parent))?;
        let mut dir = None;
        for n in 0..100u32 {
            let d = parent.join(format!(".console-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&d) {
                Ok(()) => {
                    dir = Some(d);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err(&d)(e)),
            }
        }
        let dir =
            dir.ok_or_else(|| err(parent)(std::io::Error::from_raw_os_error(libc::EEXIST)))?;
        let path = dir.join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(err(&path))?;
        Ok(ConsoleReceiver { listener, dir })
    }

    /// The socket path to pass as `console_socket`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// Accepts the container's connection and takes the pty master from it.
    pub fn receive(&self) -> Result<OwnedFd> {
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|source| TerminalError::Connect {
                path: self.path(),
                source,
            })?;
        let mut buf = [0u8; 1024];
        let (_, fd) =
            crate::sync::recv_fd_raw(conn.as_raw_fd(), &mut buf).map_err(TerminalError::Send)?;
        fd.ok_or(TerminalError::Sys(
            "receive pty master",
            nix::Error::EBADMSG,
        ))
    }
}

impl Drop for ConsoleReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
