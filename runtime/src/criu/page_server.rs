//! `criu page-server`: the receiving end of a dump whose pages go over TCP (migration).
//!
//! Started as a child process of the caller rather than through the RPC: CRIU 4.1's
//! RPC page server daemonizes and answers with pid 0, leaving no handle to stop it,
//! while a child here is killed and reaped when the [`PageServer`] is dropped. Nothing
//! is parsed from its output: readiness comes through `--status-fd`, results through
//! its exit status and log.

use std::io::Read;
use std::net::{IpAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::error::CriuError;

/// Log file of the page server, in its images dir.
pub const PAGE_SERVER_LOG: &str = "page-server.log";

/// A running `criu page-server`, listening for one dump (or pre-dump chain) and exiting
/// when the dumping side disconnects. Killed and reaped on drop if still running.
#[derive(Debug)]
pub struct PageServer {
    child: Option<Child>,
    port: u16,
    images_dir: PathBuf,
}

impl PageServer {
    pub(crate) fn start(
        criu: &Path,
        images_dir: &Path,
        address: IpAddr,
        port: u16,
    ) -> Result<PageServer, CriuError> {
        if !images_dir.is_dir() {
            return Err(CriuError::Dir {
                what: "images",
                path: images_dir.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        // CRIU binds the port itself; with port 0 pick one the kernel says is free (a
        // later bind by someone else makes the start fail, with CRIU's reason).
        let port = if port == 0 {
            TcpListener::bind((address, 0))
                .and_then(|l| l.local_addr())
                .map_err(CriuError::Socket)?
                .port()
        } else {
            port
        };
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| CriuError::Socket(e.into()))?;
        let ready_fd = ready_w.as_raw_fd();
        let mut cmd = Command::new(criu);
        cmd.arg("page-server")
            .arg("--images-dir")
            .arg(images_dir)
            .arg("--address")
            .arg(address.to_string())
            .arg("--port")
            .arg(port.to_string())
            .arg("--status-fd")
            .arg(ready_fd.to_string())
            .arg("--log-file")
            .arg(PAGE_SERVER_LOG)
            .arg("-v4")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: runs in the forked child before exec and only calls fcntl(2), which is
        // async-signal-safe, on a descriptor number captured by value.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(ready_fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| CriuError::Spawn {
            path: criu.to_path_buf(),
            source,
        })?;
        drop(ready_w);
        let mut server = PageServer {
            child: Some(child),
            port,
            images_dir: images_dir.to_path_buf(),
        };
        // One byte once it listens; EOF if it died first.
        let mut byte = [0u8; 1];
        let ready = std::fs::File::from(ready_r).read(&mut byte).unwrap_or(0) == 1;
        if !ready {
            let status = server.reap();
            return Err(server.failure(status));
        }
        Ok(server)
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Wait for it to finish (after the dump disconnected); an error if it failed.
    pub fn wait(mut self) -> Result<(), CriuError> {
        let status = self.reap();
        if status.as_ref().is_some_and(|s| s.success()) {
            Ok(())
        } else {
            Err(self.failure(status))
        }
    }

    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take().and_then(|mut c| c.wait().ok())
    }

    fn failure(&self, status: Option<std::process::ExitStatus>) -> CriuError {
        let log = self.images_dir.join(PAGE_SERVER_LOG);
        match super::first_error(&log) {
            Some(errmsg) => CriuError::Failed {
                op: "page-server",
                errmsg: Some(errmsg),
                errno: None,
                log_tail: super::log_tail(&log),
                log: Some(log),
                stderr: String::new(),
            },
            None => CriuError::NoAnswer {
                op: "page-server",
                status: status.map_or_else(|| "not reaped".into(), |s| s.to_string()),
                stderr: String::new(),
                log_tail: super::log_tail(&log),
            },
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
