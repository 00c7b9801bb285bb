//! Helpers shared by the network and virtio-net unit tests: unique names, test frames, an
//! AF_PACKET socket bound to an interface, and running a closure inside a fresh network
//! namespace (with its own sysfs view) that is removed afterwards.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::tap::{Tap, VNET_HDR_LEN};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// An interface name unique in this machine: prefix + pid + counter (max 15 bytes).
pub fn unique_ifname(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}x{n:x}", std::process::id());
    assert!(name.len() < 16, "{name} too long");
    name
}

/// Experimental ethertype used by test frames (IEEE 802 local experimental 1).
pub const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A broadcast Ethernet frame of `len` bytes with the test ethertype; bytes 12..20
/// (ethertype, tag, pid, sequence) identify it uniquely.
pub fn test_frame(tag: u8, len: usize) -> Vec<u8> {
    assert!(len >= 20);
    let seq = COUNTER.fetch_add(1, Ordering::Relaxed) as u8;
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, tag]);
    f[12..14].copy_from_slice(&TEST_ETHERTYPE);
    f[14] = tag;
    f[15..19].copy_from_slice(&std::process::id().to_be_bytes());
    f[19] = seq;
    for (i, b) in f.iter_mut().enumerate().skip(20) {
        *b = (i as u8).wrapping_mul(7).wrapping_add(tag);
    }
    f
}

/// A raw AF_PACKET socket bound to one interface, receiving every protocol.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Bind to interface `ifindex`, with a 5 s receive timeout so a lost frame fails the test
    /// instead of hanging it.
    pub fn bind(ifindex: u32) -> io::Result<Self> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: the pointer/length describe `sll`, valid for the call.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: the pointer/length describe `tv`, valid for the call.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// A second socket on the same interface whose frames carry a `virtio_net_hdr` prefix
    /// (PACKET_VNET_HDR), to inject GSO frames.
    pub fn with_vnet_hdr(&self) -> io::Result<PacketSocket> {
        let mut sll: libc::sockaddr_ll = unsafe_zeroed_sll();
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: pointer/length describe `sll`, valid for the call.
        let ret = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                &mut sll as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = PacketSocket::bind(sll.sll_ifindex as u32)?;
        let one: libc::c_int = 1;
        // SAFETY: pointer/length describe `one`, valid for the call.
        let ret = unsafe {
            libc::setsockopt(
                s.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// Send one frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the pointer/length describe `frame`, valid for the call.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        assert_eq!(n as usize, frame.len());
        Ok(())
    }

    /// Receive frames until one whose bytes 12.. start with `id` (see [`test_frame`]).
    pub fn recv_matching(&self, id: &[u8]) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        loop {
            // SAFETY: the pointer/length describe `buf`, valid for the call.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let f = &buf[..n as usize];
            if f.len() >= 12 + id.len() && &f[12..12 + id.len()] == id {
                return Ok(f.to_vec());
            }
        }
    }
}

fn unsafe_zeroed_sll() -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Read frames from `tap` (waiting up to 5 s each) until one whose bytes 12.. start with `id`;
/// returns it without its vnet header.
pub fn tap_recv_matching(tap: &Tap, id: &[u8]) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 70000];
    loop {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 5000) };
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no frame on tap"));
        }
        match tap.read(&mut buf) {
            Ok(n) if n >= VNET_HDR_LEN => {
                let f = &buf[VNET_HDR_LEN..n];
                if f.len() >= 12 + id.len() && &f[12..12 + id.len()] == id {
                    return Ok(f.to_vec());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Run `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Create network namespace `<prefix><pid>x<n>` (`ip netns add`), run `f(name)` on a new
/// thread that has entered it (with a private mount namespace where /sys shows that network
/// namespace), then delete the namespace, even if `f` panicked (the panic is propagated).
pub fn in_new_netns<F: FnOnce(&str) + Send + 'static>(prefix: &str, f: F) {
    let name = unique_ifname(prefix);
    ip(&["netns", "add", &name]);
    let guard = NetnsGuard(name.clone());
    let ns_name = name.clone();
    let result = std::thread::spawn(move || {
        use nix::mount::{mount, MsFlags};
        use nix::sched::{setns, unshare, CloneFlags};
        let ns = std::fs::File::open(format!("/run/netns/{ns_name}")).expect("open netns");
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .expect("make / slave");
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount sysfs");
        f(&ns_name);
    })
    .join();
    drop(guard);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Record that `test` was skipped because of `reason`: printed as `SKIPPED`, and appended to
/// `$VESSEL_SKIP_LOG` (set by `.ci/test`) so the run's summary counts it.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("VESSEL_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// Why tap devices cannot be used on this host, if they cannot.
fn tap_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create taps".into());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        return Some(format!("/dev/net/tun unusable: {e}"));
    }
    None
}

/// Why macvtap links in a fresh network namespace cannot be used here, if they cannot.
fn macvtap_unavailable() -> Option<String> {
    if let Some(r) = tap_unavailable() {
        return Some(r);
    }
    let has_macvtap = || {
        std::fs::read_to_string("/proc/devices")
            .map(|d| d.lines().any(|l| l.ends_with(" macvtap")))
            .unwrap_or(false)
    };
    if !has_macvtap() {
        let _ = Command::new("modprobe").arg("macvtap").status();
        if !has_macvtap() {
            return Some("no macvtap driver in this kernel".into());
        }
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (ip) is not installed".into());
    }
    None
}

/// Skip (and return true) unless taps work here.
pub fn skip_without_tap(test: &str) -> bool {
    tap_unavailable().map(|r| skip(test, &r)).is_some()
}

/// Skip (and return true) unless macvtap links, veth pairs and netns work here.
pub fn skip_without_macvtap(test: &str) -> bool {
    macvtap_unavailable().map(|r| skip(test, &r)).is_some()
}
