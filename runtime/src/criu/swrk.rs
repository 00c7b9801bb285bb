//! One request to `criu swrk`: CRIU's RPC over a SOCK_SEQPACKET socket pair, with the
//! client side of CRIU's notifications.
//!
//! Hand-written instead of using `rust_criu::Criu` (whose generated message types this
//! uses) because that client cannot pre-dump or check, drops the restored pid, and makes
//! its socket and the caller's fds inheritable in the parent, where any process spawned
//! concurrently by another thread would inherit them too. Here every descriptor stays
//! close-on-exec in the caller and is made inheritable only in the forked criu child.

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use protobuf::Message;
use rust_criu::rust_criu_protobuf::rpc;

use super::error::CriuError;

/// A notification CRIU sends while it works (an "action script" event in criu(8)).
#[derive(Debug)]
pub struct Notification {
    /// Its name: "pre-dump", "post-dump", "pre-restore", "setup-namespaces",
    /// "post-setup-namespaces", "post-restore", "pre-resume", "post-resume",
    /// "network-lock", "network-unlock", "orphan-pts-master", ...
    pub script: String,
    /// The pid it concerns (e.g. the restored root at "setup-namespaces"), if any.
    pub pid: Option<i32>,
    /// A descriptor CRIU passed along (the pts master at "orphan-pts-master").
    pub fd: Option<OwnedFd>,
}

/// The caller's view of notifications: return `Err(reason)` to make CRIU abort.
pub type NotifyHandler<'a> = dyn FnMut(&mut Notification) -> Result<(), String> + 'a;

/// Largest RPC message accepted from CRIU (its answers are a few hundred bytes).
const MAX_MESSAGE: usize = 1 << 20;

/// What one request produced.
pub(crate) struct Answer {
    pub resp: rpc::Criu_resp,
}

/// A failed request, before the caller adds the log tail.
pub(crate) enum SwrkFailure {
    /// Could not start or talk to criu.
    Error(CriuError),
    /// criu answered with success = false.
    Refused {
        resp: Box<rpc::Criu_resp>,
        stderr: String,
    },
    /// criu went away without answering.
    NoAnswer { status: String, stderr: String },
}

impl From<CriuError> for SwrkFailure {
    fn from(e: CriuError) -> Self {
        SwrkFailure::Error(e)
    }
}

/// Kills and reaps criu if the request is abandoned half-way.
struct ChildGuard {
    child: Option<Child>,
    stderr: Option<JoinHandle<String>>,
}

impl ChildGuard {
    fn finish(mut self) -> (Option<ExitStatus>, String) {
        let status = self.child.take().and_then(|mut c| c.wait().ok());
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Send `req` to a fresh `criu swrk` and return its final answer, answering
/// notifications through `notify`. `pass_fds` are descriptors of the caller that criu
/// must see under the same numbers (images/work dirs, inherited fds).
pub(crate) fn request(
    criu: &Path,
    req: &rpc::Criu_req,
    pass_fds: &[RawFd],
    notify: &mut NotifyHandler<'_>,
) -> Result<Answer, SwrkFailure> {
    let (ours, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| CriuError::Socket(e.into()))?;

    let mut inherit: Vec<RawFd> = pass_fds.to_vec();
    inherit.push(theirs.as_raw_fd());
    let mut cmd = Command::new(criu);
    cmd.arg("swrk")
        .arg(theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2),
    // which is async-signal-safe; it touches no memory but the captured Vec, which was
    // allocated before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| CriuError::Spawn {
        path: criu.to_path_buf(),
        source,
    })?;
    drop(theirs);
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut pipe).take(64 * 1024).read_to_end(&mut buf);
            // Drain the rest so criu never blocks on a full pipe.
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            String::from_utf8_lossy(&buf).into_owned()
        })
    });
    let guard = ChildGuard {
        child: Some(child),
        stderr,
    };

    send(&ours, req)?;
    let req_type = req.type_();
    loop {
        let Some((resp, fd)) = recv(&ours)? else {
            let (status, stderr) = guard.finish();
            return Err(SwrkFailure::NoAnswer {
                status: status.map_or_else(|| "not reaped".into(), |s| s.to_string()),
                stderr,
            });
        };
        if resp.type_() == rpc::Criu_req_type::NOTIFY {
            let mut n = Notification {
                script: resp.notify.script().to_string(),
                pid: resp.notify.has_pid().then(|| resp.notify.pid()),
                fd,
            };
            let verdict = notify(&mut n);
            let mut ack = rpc::Criu_req::new();
            ack.set_type(rpc::Criu_req_type::NOTIFY);
            ack.set_notify_success(verdict.is_ok());
            send(&ours, &ack)?;
            if let Err(reason) = verdict {
                // CRIU aborts on a failed notification and answers with a failure; that
                // answer is less telling than the handler's reason.
                drop(ours);
                let _ = guard.finish();
                return Err(CriuError::Notify {
                    script: n.script,
                    reason,
                }
                .into());
            }
            continue;
        }
        drop(ours);
        let (_, stderr) = guard.finish();
        if !resp.success() {
            return Err(SwrkFailure::Refused {
                resp: Box::new(resp),
                stderr,
            });
        }
        if resp.type_() != req_type {
            return Err(CriuError::Protocol(format!(
                "asked {:?}, criu answered {:?}",
                req_type,
                resp.type_()
            ))
            .into());
        }
        return Ok(Answer { resp });
    }
}

fn send(sock: &OwnedFd, msg: &rpc::Criu_req) -> Result<(), CriuError> {
    let bytes = msg
        .write_to_bytes()
        .map_err(|e| CriuError::Protocol(e.to_string()))?;
    let n = socket::send(sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)
        .map_err(|e| CriuError::Socket(e.into()))?;
    if n != bytes.len() {
        return Err(CriuError::Protocol(format!(
            "short write to criu: {n} of {} bytes",
            bytes.len()
        )));
    }
    Ok(())
}

/// One message from criu with the descriptor it carried, or `None` at end of stream.
fn recv(sock: &OwnedFd) -> Result<Option<(rpc::Criu_resp, Option<OwnedFd>)>, CriuError> {
    // Size the datagram first: MSG_TRUNC makes recv report its full length.
    let len = socket::recv(
        sock.as_raw_fd(),
        &mut [],
        MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
    )
    .map_err(|e| CriuError::Socket(e.into()))?;
    if len == 0 {
        // Drain the zero-length datagram or EOF; either way criu is done talking.
        return Ok(None);
    }
    if len > MAX_MESSAGE {
        return Err(CriuError::Protocol(format!(
            "message of {len} bytes is too large"
        )));
    }
    let mut buf = vec![0u8; len];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| CriuError::Socket(e.into()))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(|e| CriuError::Socket(e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS just installed `fd` in our table; nothing else
                    // owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    if n != len {
        return Err(CriuError::Protocol(format!(
            "message shrank from {len} to {n} bytes"
        )));
    }
    let resp =
        rpc::Criu_resp::parse_from_bytes(&buf).map_err(|e| CriuError::Protocol(e.to_string()))?;
    Ok(Some((resp, fds.into_iter().next())))
}
