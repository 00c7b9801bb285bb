//! macvtap links: creation on a lower link through rtnetlink, a guard that deletes the link on
//! drop, and opening the link's character device `/dev/tapN` as a [`Tap`].
//!
//! The character device number is read from `/sys/class/net/<link>/macvtap/tap<ifindex>/dev`.
//! Without udev, `/dev/tapN` may be missing, or (across network namespaces, where ifindexes
//! repeat) name another macvtap; so the node is used only if its device number matches, and
//! otherwise a private node is made with mknod in a fresh temporary directory, opened and
//! removed at once.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::netlink::{self, NetlinkError};
use super::tap::{validate_ifname, Tap, TapError};
use crate::devices::virtio::MacAddr;

/// Errors of macvtap links.
#[derive(Debug, thiserror::Error)]
pub enum MacvtapError {
    /// The link name is invalid.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// Creating or deleting the link failed.
    #[error("netlink request for macvtap {name:?} failed")]
    Netlink {
        /// The macvtap link name.
        name: String,
        /// The underlying error.
        #[source]
        source: NetlinkError,
    },
    /// `link` is not a macvtap link (no `macvtap/` in sysfs) or sysfs could not be read.
    #[error("cannot resolve the character device of macvtap {link:?} from {path}")]
    Sysfs {
        /// The link name.
        link: String,
        /// The sysfs path that failed.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Creating a private device node failed.
    #[error("cannot create a device node for macvtap {link:?} at {path}")]
    Mknod {
        /// The link name.
        link: String,
        /// The node path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Opening or configuring the character device failed.
    #[error("cannot open the character device of macvtap {link:?}")]
    Open {
        /// The link name.
        link: String,
        /// The underlying error.
        #[source]
        source: TapError,
    },
}

/// A macvtap link created by this process; deleted when dropped.
#[derive(Debug)]
pub struct MacvtapLink {
    name: String,
}

impl MacvtapLink {
    /// Create macvtap `name` in bridge mode on `lower`, with `mac` if given.
    pub fn create(name: &str, lower: &str, mac: Option<MacAddr>) -> Result<Self, MacvtapError> {
        validate_ifname(name).map_err(|_| MacvtapError::InvalidName(name.into()))?;
        netlink::create_macvtap(name, lower, mac.map(|m| m.0)).map_err(|source| {
            MacvtapError::Netlink {
                name: name.into(),
                source,
            }
        })?;
        Ok(MacvtapLink { name: name.into() })
    }

    /// The link name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Set the link up (netlink).
    pub fn set_up(&self) -> Result<(), MacvtapError> {
        netlink::set_link_up(&self.name, true).map_err(|source| MacvtapError::Netlink {
            name: self.name.clone(),
            source,
        })
    }

    /// Open the link's character device; see [`open`].
    pub fn open(&self) -> Result<Tap, MacvtapError> {
        open(&self.name)
    }
}

impl Drop for MacvtapLink {
    fn drop(&mut self) {
        // Nothing sensible to do on failure (the link may already be gone with its lower).
        let _ = netlink::delete_link(&self.name);
    }
}

fn sysfs_err(link: &str, path: &Path) -> impl FnOnce(io::Error) -> MacvtapError {
    let link = link.to_string();
    let path = path.display().to_string();
    move |source| MacvtapError::Sysfs { link, path, source }
}

/// The character device of macvtap `link`: its conventional path `/dev/tap<ifindex>` and its
/// device number, from sysfs.
pub fn chardev(link: &str) -> Result<(PathBuf, u64), MacvtapError> {
    validate_ifname(link).map_err(|_| MacvtapError::InvalidName(link.into()))?;
    let base = PathBuf::from(format!("/sys/class/net/{link}"));
    let ifindex_path = base.join("ifindex");
    let ifindex = fs::read_to_string(&ifindex_path).map_err(sysfs_err(link, &ifindex_path))?;
    let ifindex: u32 = ifindex.trim().parse().map_err(|_| {
        sysfs_err(link, &ifindex_path)(io::Error::new(
            io::ErrorKind::InvalidData,
            "ifindex is not a number",
        ))
    })?;
    let dev_path = base.join(format!("macvtap/tap{ifindex}/dev"));
    let dev = fs::read_to_string(&dev_path).map_err(sysfs_err(link, &dev_path))?;
    let parsed = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let (major, minor) = parsed.ok_or_else(|| {
        sysfs_err(link, &dev_path)(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad device number {dev:?}"),
        ))
    })?;
    Ok((
        PathBuf::from(format!("/dev/tap{ifindex}")),
        makedev(major, minor),
    ))
}

/// Open the character device of macvtap `link` as a [`Tap`] (non-blocking, 12-byte vnet
/// header), using `/dev/tapN` if it is the right device, else a private node.
pub fn open(link: &str) -> Result<Tap, MacvtapError> {
    let (dev_path, rdev) = chardev(link)?;
    let open_err = |source| MacvtapError::Open {
        link: link.into(),
        source,
    };
    let matches = fs::metadata(&dev_path)
        .map(|m| m.file_type().is_char_device() && m.rdev() == rdev)
        .unwrap_or(false);
    if matches {
        return Tap::from_chardev(&dev_path, link).map_err(open_err);
    }
    let dir = private_dir().map_err(|source| MacvtapError::Mknod {
        link: link.into(),
        path: std::env::temp_dir().display().to_string(),
        source,
    })?;
    let node = dir.path.join("tap");
    mknod(&node, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), rdev).map_err(|e| {
        MacvtapError::Mknod {
            link: link.into(),
            path: node.display().to_string(),
            source: io::Error::from_raw_os_error(e as i32),
        }
    })?;
    // `dir` (and the node in it) is removed when it goes out of scope; the fd stays valid.
    Tap::from_chardev(&node, link).map_err(open_err)
}

/// A private temporary directory removed (with its content) on drop.
struct PrivateDir {
    path: PathBuf,
}

fn private_dir() -> io::Result<PrivateDir> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("vessel-macvtap-{}-{n}", std::process::id()));
        match fs::DirBuilder::new().mode_0700().create(&path) {
            Ok(()) => return Ok(PrivateDir { path }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary directory name",
    ))
}

trait DirBuilderExt2 {
    fn mode_0700(&mut self) -> &mut Self;
}

impl DirBuilderExt2 for fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tap::VNET_HDR_LEN;
    use crate::net::testutil::{in_new_netns, ip, test_frame, PacketSocket};

    /// Deletes a link (and a veth's peer with it) on drop.
    struct LinkGuard(String);

    impl Drop for LinkGuard {
        fn drop(&mut self) {
            let _ = netlink::delete_link(&self.0);
        }
    }

    #[test]
    fn in_the_host_namespace_dev_tap_n_is_used() {
        if crate::net::testutil::skip_without_macvtap("in_the_host_namespace_dev_tap_n_is_used") {
            return;
        }
        let lower = crate::net::testutil::unique_ifname("vl");
        let peer = crate::net::testutil::unique_ifname("vp");
        ip(&["link", "add", &lower, "type", "veth", "peer", "name", &peer]);
        let _veth = LinkGuard(lower.clone());
        let name = crate::net::testutil::unique_ifname("mv");
        let link = MacvtapLink::create(&name, &lower, None).unwrap();
        let (path, rdev) = chardev(&name).unwrap();
        let index = netlink::link_index(&name).unwrap();
        assert_eq!(path, PathBuf::from(format!("/dev/tap{index}")));
        // devtmpfs made the node: it must be the one chosen.
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), rdev);
        let tap = link.open().unwrap();
        assert_eq!(tap.name(), name);
        assert_eq!(tap.vnet_hdr_size().unwrap(), VNET_HDR_LEN as i32);
        drop(tap);
        drop(link);
        assert!(netlink::link_index(&name).is_err());
    }

    #[test]
    fn not_a_macvtap_is_a_clear_error() {
        assert!(matches!(open("lo"), Err(MacvtapError::Sysfs { .. })));
        assert!(matches!(open("a/b"), Err(MacvtapError::InvalidName(_))));
    }

    #[test]
    fn macvtap_on_veth_passes_frames_both_ways_and_is_deleted_on_drop() {
        if crate::net::testutil::skip_without_macvtap(
            "macvtap_on_veth_passes_frames_both_ways_and_is_deleted_on_drop",
        ) {
            return;
        }
        in_new_netns("mvt", |ns| {
            ip(&[
                "-n", ns, "link", "add", "vh0", "type", "veth", "peer", "name", "vp0",
            ]);
            ip(&["-n", ns, "link", "set", "vh0", "up"]);
            ip(&["-n", ns, "link", "set", "vp0", "up"]);
            let mac = MacAddr([0x02, 0, 0, 0x5e, 0x00, 0x42]);
            let link = MacvtapLink::create("mvt0", "vh0", Some(mac)).unwrap();
            link.set_up().unwrap();
            let tap = link.open().unwrap();
            let flags = tap.flags().unwrap();
            assert_eq!(flags & libc::IFF_VNET_HDR, libc::IFF_VNET_HDR);
            assert_eq!(tap.vnet_hdr_size().unwrap(), VNET_HDR_LEN as i32);
            let peer = PacketSocket::bind(netlink::link_index("vp0").unwrap()).unwrap();

            // macvtap fd -> out of vh0 -> seen on vp0. Source MAC must be the macvtap's.
            let mut frame = test_frame(0x31, 400);
            frame[6..12].copy_from_slice(&mac.0);
            let mut out = vec![0u8; VNET_HDR_LEN];
            out.extend_from_slice(&frame);
            assert_eq!(tap.write(&out).unwrap(), out.len());
            assert_eq!(peer.recv_matching(&frame[12..20]).unwrap(), frame);

            // vp0 -> vh0 -> macvtap (destination = macvtap MAC) -> fd.
            let mut frame2 = test_frame(0x32, 500);
            frame2[0..6].copy_from_slice(&mac.0);
            peer.send(&frame2).unwrap();
            let got = crate::net::testutil::tap_recv_matching(&tap, &frame2[12..20]).unwrap();
            assert_eq!(got, frame2);

            drop(tap);
            drop(link);
            assert!(matches!(
                netlink::link_index("mvt0"),
                Err(NetlinkError::NoSuchLink(_))
            ));
        });
    }
}
