//! Tap devices opened through `/dev/net/tun` (and macvtap character devices, which speak
//! the same ioctls): frames in, frames out, each prefixed by a `virtio_net_hdr`.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::netlink::{self, NetlinkError};
use ioctls::{
    TUNGETIFF, TUNGETVNETHDRSZ, TUNSETIFF, TUNSETOFFLOAD, TUNSETPERSIST, TUNSETVNETHDRSZ,
};

/// ioctl request numbers of `<linux/if_tun.h>` (not exported by libc).
mod ioctls {
    #![allow(missing_docs)]
    use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

    const TUNTAP: u32 = b'T' as u32;
    ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, ::std::os::raw::c_int);
    ioctl_iow_nr!(TUNSETPERSIST, TUNTAP, 203, ::std::os::raw::c_int);
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, ::std::os::raw::c_uint);
    ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, ::std::os::raw::c_uint);
    ioctl_ior_nr!(TUNGETVNETHDRSZ, TUNTAP, 215, ::std::os::raw::c_int);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, ::std::os::raw::c_int);
}

/// Size of the virtio 1.0 `virtio_net_hdr_v1` that prefixes every frame on the fd.
pub const VNET_HDR_LEN: usize = 12;

/// Offload flags for [`Tap::set_offload`] (`TUN_F_*`): what the reader of the fd accepts.
pub mod offload {
    /// Partial checksums.
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    /// TCP segmentation offload over IPv4.
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    /// TCP segmentation offload over IPv6.
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    /// TSO with ECN.
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    /// UDP fragmentation offload.
    pub const UFO: u32 = libc::TUN_F_UFO;
}

/// Errors of tap devices.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or contains a NUL or '/'.
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no NUL, '/' or whitespace")]
    InvalidName(String),
    /// `/dev/net/tun` (or a macvtap character device) could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The device path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An ioctl on the tap fd failed.
    #[error("{op} on tap {name:?} failed")]
    Ioctl {
        /// The ioctl name.
        op: &'static str,
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A netlink request about the tap's link failed.
    #[error("netlink request for tap {name:?} failed")]
    Netlink {
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: NetlinkError,
    },
}

/// A safe wrapper over `struct ifreq` for the TUN ioctls that take one: a name and flags.
///
/// Hand-written because the only thing needed is a zeroed `ifreq` with a NUL-terminated name
/// and the `ifr_flags` member; a crate would add more than it saves.
#[derive(Clone, Copy)]
struct IfReq(libc::ifreq);

impl IfReq {
    /// A zeroed request carrying `name` (validated: 1..IFNAMSIZ-1 bytes, no NUL or '/').
    fn with_name(name: &str) -> Result<Self, TapError> {
        validate_ifname(name)?;
        // SAFETY: ifreq is a plain C struct/union for which all-zero bytes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(IfReq(req))
    }

    fn empty() -> Self {
        // SAFETY: ifreq is a plain C struct/union for which all-zero bytes is a valid value.
        IfReq(unsafe { std::mem::zeroed() })
    }

    fn set_flags(&mut self, flags: i32) -> &mut Self {
        // Writing a Copy union member is safe.
        self.0.ifr_ifru.ifru_flags = flags as libc::c_short;
        self
    }

    fn flags(&self) -> i32 {
        // SAFETY: every member of the union is plain integers; reading the c_short at offset 0
        // of an initialised (zeroed or kernel-filled) union is valid.
        i32::from(unsafe { self.0.ifr_ifru.ifru_flags }) & 0xffff
    }

    fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .0
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Check a Linux interface name: 1..=15 bytes, no NUL, '/', ':' or whitespace.
pub(crate) fn validate_ifname(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(TapError::InvalidName(name.to_string()))
    }
}

/// An open tap (or macvtap) file descriptor.
///
/// Frames read and written carry a 12-byte `virtio_net_hdr_v1` prefix once
/// [`Tap::set_vnet_hdr_size`] has been called with [`VNET_HDR_LEN`] (done by [`Tap::open`] and
/// [`Tap::create`]). The fd is non-blocking: reads return `WouldBlock` when no frame is queued.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to the tap interface `name`, creating it if it does not exist (an existing
    /// persistent tap keeps its persistence). Flags: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let mut req = IfReq::with_name(name)?;
        req.set_flags(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Open {
                path: "/dev/net/tun".into(),
                source,
            })?;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req.0` is one, live for the
        // duration of the call, and the fd is a tun fd we own.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF() as _, &mut req.0) };
        if ret < 0 {
            return Err(TapError::Ioctl {
                op: "TUNSETIFF",
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // The kernel may have expanded a template like "vtap%d".
        let tap = Tap {
            file,
            name: req.name(),
        };
        tap.set_vnet_hdr_size(VNET_HDR_LEN as i32)?;
        Ok(tap)
    }

    /// Create (or attach to) tap `name` and turn persistence off, so that the interface
    /// disappears when this (last) fd is closed.
    pub fn create(name: &str) -> Result<Self, TapError> {
        let tap = Self::open(name)?;
        tap.set_persist(false)?;
        Ok(tap)
    }

    /// Wrap an already opened tap-like character device (e.g. `/dev/tapN` of a macvtap).
    /// `name` is the interface name used in messages and netlink helpers. Sets the fd
    /// non-blocking and the vnet header size to [`VNET_HDR_LEN`], and makes sure the fd
    /// carries `IFF_VNET_HDR`.
    pub fn from_chardev(path: &Path, name: &str) -> Result<Self, TapError> {
        validate_ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| TapError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let mut req = IfReq::empty();
        req.set_flags(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        // SAFETY: TUNSETIFF on a macvtap fd reads the flags of a `struct ifreq` (the name is
        // ignored); `req.0` is valid for the call.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETIFF() as _, &mut req.0) };
        if ret < 0 {
            return Err(tap.ioctl_err("TUNSETIFF"));
        }
        tap.set_vnet_hdr_size(VNET_HDR_LEN as i32)?;
        Ok(tap)
    }

    fn ioctl_err(&self, op: &'static str) -> TapError {
        TapError::Ioctl {
            op,
            name: self.name.clone(),
            source: io::Error::last_os_error(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface flags the fd was attached with (`IFF_TAP`, `IFF_NO_PI`, `IFF_VNET_HDR`...).
    pub fn flags(&self) -> Result<i32, TapError> {
        let mut req = IfReq::empty();
        // SAFETY: TUNGETIFF fills a `struct ifreq`; `req.0` is valid for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNGETIFF() as _, &mut req.0) };
        if ret < 0 {
            return Err(self.ioctl_err("TUNGETIFF"));
        }
        Ok(req.flags())
    }

    /// Keep (`true`) or drop (`false`) the interface when the last fd closes.
    pub fn set_persist(&self, persist: bool) -> Result<(), TapError> {
        // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETPERSIST() as _,
                libc::c_ulong::from(persist),
            )
        };
        if ret < 0 {
            return Err(self.ioctl_err("TUNSETPERSIST"));
        }
        Ok(())
    }

    /// Set the size of the vnet header that prefixes frames (10 legacy, 12 for virtio 1.0).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), TapError> {
        let size: libc::c_int = size;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, valid for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETVNETHDRSZ() as _, &size) };
        if ret < 0 {
            return Err(self.ioctl_err("TUNSETVNETHDRSZ"));
        }
        Ok(())
    }

    /// The vnet header size currently in effect.
    pub fn vnet_hdr_size(&self) -> Result<i32, TapError> {
        let mut size: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one c_int through the pointer, valid for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNGETVNETHDRSZ() as _, &mut size) };
        if ret < 0 {
            return Err(self.ioctl_err("TUNGETVNETHDRSZ"));
        }
        Ok(size)
    }

    /// Tell the kernel which offloads the reader of this fd handles (`offload::*` bits).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD() as _,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(self.ioctl_err("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// Find which of `wanted` offload bits the backend accepts: tries the full set, then
    /// without UFO, then checksum only. Leaves the offloads off.
    pub fn probe_offload(&self, wanted: u32) -> u32 {
        let candidates = [wanted, wanted & !offload::UFO, wanted & offload::CSUM, 0];
        let mut supported = 0;
        for c in candidates {
            if self.set_offload(c).is_ok() {
                supported = c;
                break;
            }
        }
        let _ = self.set_offload(0);
        supported
    }

    /// Switch `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), TapError> {
        let fd = self.file.as_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| self.errno_err("F_GETFL", e))?;
        let mut flags = nix::fcntl::OFlag::from_bits_retain(flags);
        flags.set(nix::fcntl::OFlag::O_NONBLOCK, nonblocking);
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| self.errno_err("F_SETFL", e))?;
        Ok(())
    }

    fn errno_err(&self, op: &'static str, e: nix::errno::Errno) -> TapError {
        TapError::Ioctl {
            op,
            name: self.name.clone(),
            source: io::Error::from_raw_os_error(e as i32),
        }
    }

    /// Read one frame (vnet header included) into `buf`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write one frame (vnet header included).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Read one frame scattered over `bufs`.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }

    /// Write one frame gathered from `bufs`.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }

    /// Set the link administratively up (netlink).
    pub fn set_up(&self) -> Result<(), TapError> {
        netlink::set_link_up(&self.name, true).map_err(|source| TapError::Netlink {
            name: self.name.clone(),
            source,
        })
    }

    /// Add an IP address with prefix length to the link (netlink).
    pub fn add_address(&self, addr: IpAddr, prefix_len: u8) -> Result<(), TapError> {
        netlink::add_address(&self.name, addr, prefix_len).map_err(|source| TapError::Netlink {
            name: self.name.clone(),
            source,
        })
    }

    /// The link's interface index (netlink).
    pub fn ifindex(&self) -> Result<u32, TapError> {
        netlink::link_index(&self.name).map_err(|source| TapError::Netlink {
            name: self.name.clone(),
            source,
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::{unique_ifname, PacketSocket};

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "0123456789abcdef", "a/b", "a b", "a\0b", ".."] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn create_sets_flags_and_vanishes_on_drop() {
        if crate::net::testutil::skip_without_tap("create_sets_flags_and_vanishes_on_drop") {
            return;
        }
        let name = unique_ifname("vt");
        let tap = Tap::create(&name).unwrap();
        assert_eq!(tap.name(), name);
        let flags = tap.flags().unwrap();
        assert_eq!(flags & libc::IFF_TAP, libc::IFF_TAP);
        assert_eq!(flags & libc::IFF_NO_PI, libc::IFF_NO_PI);
        assert_eq!(flags & libc::IFF_VNET_HDR, libc::IFF_VNET_HDR);
        assert_eq!(tap.vnet_hdr_size().unwrap(), VNET_HDR_LEN as i32);
        let sys = std::path::PathBuf::from(format!("/sys/class/net/{name}"));
        assert!(sys.exists());
        assert!(tap.ifindex().unwrap() > 0);
        // Every offload this kernel accepts can be switched on and off again.
        let supported = tap.probe_offload(
            offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN | offload::UFO,
        );
        assert_ne!(supported & offload::CSUM, 0);
        tap.set_offload(supported).unwrap();
        tap.set_offload(0).unwrap();
        drop(tap);
        assert!(!sys.exists(), "tap {name} survived its fd");
    }

    #[test]
    fn read_on_empty_tap_would_block() {
        if crate::net::testutil::skip_without_tap("read_on_empty_tap_would_block") {
            return;
        }
        let tap = Tap::create(&unique_ifname("vt")).unwrap();
        let mut buf = [0u8; 2048];
        let err = tap.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn frames_cross_the_tap_both_ways() {
        if crate::net::testutil::skip_without_tap("frames_cross_the_tap_both_ways") {
            return;
        }
        let name = unique_ifname("vt");
        let tap = Tap::create(&name).unwrap();
        tap.set_up().unwrap();
        tap.add_address("198.18.7.1".parse().unwrap(), 24).unwrap();
        let ifindex = tap.ifindex().unwrap();
        let sock = PacketSocket::bind(ifindex).unwrap();

        // tap fd -> host stack (seen by AF_PACKET on the interface).
        let frame = crate::net::testutil::test_frame(0x11, 200);
        let mut out = vec![0u8; VNET_HDR_LEN];
        out.extend_from_slice(&frame);
        assert_eq!(tap.write(&out).unwrap(), out.len());
        let got = sock.recv_matching(&frame[12..20]).unwrap();
        assert_eq!(got, frame);

        // host stack -> tap fd.
        let frame2 = crate::net::testutil::test_frame(0x22, 300);
        sock.send(&frame2).unwrap();
        let got = crate::net::testutil::tap_recv_matching(&tap, &frame2[12..20]).unwrap();
        assert_eq!(got, frame2);

        // writev gathers header and frame; readv scatters them.
        let frame3 = crate::net::testutil::test_frame(0x23, 120);
        let hdr = [0u8; VNET_HDR_LEN];
        let n = tap
            .writev(&[IoSlice::new(&hdr), IoSlice::new(&frame3)])
            .unwrap();
        assert_eq!(n, VNET_HDR_LEN + frame3.len());
        assert_eq!(sock.recv_matching(&frame3[12..20]).unwrap(), frame3);
        let frame4 = crate::net::testutil::test_frame(0x24, 90);
        sock.send(&frame4).unwrap();
        tap.set_nonblocking(false).unwrap();
        tap.set_nonblocking(true).unwrap();
        let mut hdr_in = [0xffu8; VNET_HDR_LEN];
        let mut body = vec![0u8; 2048];
        loop {
            let mut pfd = libc::pollfd {
                fd: tap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1, "frame4 lost");
            let n = match tap.readv(&mut [IoSliceMut::new(&mut hdr_in), IoSliceMut::new(&mut body)])
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            if n - VNET_HDR_LEN == frame4.len() && body[..frame4.len()] == frame4[..] {
                break;
            }
        }
        assert_eq!(
            hdr_in[..10],
            [0u8; 10],
            "no offload requested: plain header"
        );
    }
}
