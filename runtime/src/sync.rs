//! The parent ↔ init synchronisation channel, and file-descriptor passing.
//!
//! A `SOCK_SEQPACKET` socketpair keeps message boundaries, so each message is one
//! `sendmsg`: a tag byte and a small payload, optionally with one fd (`SCM_RIGHTS`).
//! Hand-rolled rather than serde: a handful of fixed messages on a hot path.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// Errors on the channel.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A socket call failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] nix::Error),
    /// The other side closed the channel (e.g. the init died).
    #[error("the other side closed the channel")]
    Closed,
    /// A message that does not belong to the protocol.
    #[error("protocol error: unexpected message {0:?}")]
    Unexpected(String),
}

type Result<T> = std::result::Result<T, SyncError>;

/// Messages of the create protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Parent → init: id maps are written; carries the init's host pid. The init starts
    /// its setup while the parent puts it into its cgroup.
    Go(i32),
    /// Parent → init: the init is in its cgroup and the limits are set (the init waits for
    /// this before its first step that depends on it: cgroup namespace, cgroup mount,
    /// container hooks, exec).
    CgroupJoined,
    /// Init → parent: namespaces are final (createRuntime/prestart hooks may run).
    NamespacesReady,
    /// Parent → init: the runtime-side hooks ran.
    HooksDone,
    /// Init → parent: the seccomp notify listener fd is attached.
    SeccompListener,
    /// Init → parent: set up, waiting for `start` (or about to exec, for exec).
    Ready,
    /// Init → parent: setup failed with this message; the init exits.
    Error(String),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Go(pid) => {
                let mut v = vec![b'G'];
                v.extend_from_slice(&pid.to_le_bytes());
                v
            }
            Msg::CgroupJoined => vec![b'C'],
            Msg::NamespacesReady => vec![b'N'],
            Msg::HooksDone => vec![b'H'],
            Msg::SeccompListener => vec![b'S'],
            Msg::Ready => vec![b'R'],
            Msg::Error(e) => {
                let mut v = vec![b'E'];
                v.extend_from_slice(e.as_bytes());
                v
            }
        }
    }

    fn decode(b: &[u8]) -> Result<Msg> {
        let bad = || SyncError::Unexpected(String::from_utf8_lossy(b).into_owned());
        match b.first() {
            Some(b'G') => {
                let raw: [u8; 4] = b
                    .get(1..5)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(bad)?;
                Ok(Msg::Go(i32::from_le_bytes(raw)))
            }
            Some(b'C') => Ok(Msg::CgroupJoined),
            Some(b'N') => Ok(Msg::NamespacesReady),
            Some(b'H') => Ok(Msg::HooksDone),
            Some(b'S') => Ok(Msg::SeccompListener),
            Some(b'R') => Ok(Msg::Ready),
            Some(b'E') => Ok(Msg::Error(String::from_utf8_lossy(&b[1..]).into_owned())),
            _ => Err(bad()),
        }
    }
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel(OwnedFd);

/// Creates a connected pair (close-on-exec).
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SyncError::Sys("socketpair", e))?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    /// Sends a message.
    pub fn send(&self, msg: &Msg) -> Result<()> {
        send_fd_raw(self.0.as_raw_fd(), &msg.encode(), None)
    }

    /// Sends a message with an fd attached.
    pub fn send_with_fd(&self, msg: &Msg, fd: RawFd) -> Result<()> {
        send_fd_raw(self.0.as_raw_fd(), &msg.encode(), Some(fd))
    }

    /// Receives a message and the fd attached to it, if any.
    pub fn recv(&self) -> Result<(Msg, Option<OwnedFd>)> {
        let mut buf = [0u8; 4096];
        let (n, fd) = recv_fd_raw(self.0.as_raw_fd(), &mut buf)?;
        if n == 0 {
            return Err(SyncError::Closed);
        }
        Ok((Msg::decode(&buf[..n])?, fd))
    }

    /// Receives a message that must be `want`.
    pub fn expect(&self, want: &Msg) -> Result<()> {
        match self.recv()?.0 {
            m if &m == want => Ok(()),
            m => Err(SyncError::Unexpected(format!("{m:?}"))),
        }
    }
}

/// Sends `data` (non-empty) with an optional fd over a unix socket.
pub fn send_fd_raw(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> Result<()> {
    let iov = [IoSlice::new(data)];
    let fds;
    let cmsgs: Vec<ControlMessage> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    loop {
        match sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EPIPE) | Err(nix::Error::ECONNRESET) => return Err(SyncError::Closed),
            Err(e) => return Err(SyncError::Sys("sendmsg", e)),
        }
    }
}

/// Receives into `buf` and at most one fd; returns the byte count (0 = closed).
pub fn recv_fd_raw(sock: RawFd, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let r = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC);
        let msg = match r {
            Ok(m) => m,
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::ECONNRESET) => return Ok((0, None)),
            Err(e) => return Err(SyncError::Sys("recvmsg", e)),
        };
        let mut fd = None;
        for c in msg.cmsgs().map_err(|e| SyncError::Sys("recvmsg", e))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: the kernel just installed `f` in our table for us; nobody
                    // else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        return Ok((msg.bytes, fd));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_round_trip() {
        let (a, b) = pair().unwrap();
        for m in [
            Msg::Go(12345),
            Msg::CgroupJoined,
            Msg::NamespacesReady,
            Msg::HooksDone,
            Msg::Ready,
            Msg::Error("boom: no such file".into()),
        ] {
            a.send(&m).unwrap();
            let (got, fd) = b.recv().unwrap();
            assert_eq!(got, m);
            assert!(fd.is_none());
        }
        drop(a);
        assert!(matches!(b.recv(), Err(SyncError::Closed)));
    }

    #[test]
    fn fd_passing() {
        let (a, b) = pair().unwrap();
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        a.send_with_fd(&Msg::SeccompListener, f.as_fd().as_raw_fd())
            .unwrap();
        let (m, fd) = b.recv().unwrap();
        assert_eq!(m, Msg::SeccompListener);
        assert!(fd.is_some());
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(Msg::decode(b"Zzz").is_err());
        assert!(Msg::decode(b"G\x01").is_err());
    }
}
