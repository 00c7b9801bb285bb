//! Frames per second through the virtio-net device model and a real tap, each direction.
//!
//! A "guest" is simulated in this process: split rings laid out in a `GuestMemoryMmap`, the
//! MMIO registers driven like the Linux driver does, buffers recycled as soon as they are
//! used. The device runs under a real `EventManager`. The host side is an AF_PACKET socket on
//! the tap. Needs root (tap creation). Run with
//! `cargo bench -p vessel-vmm --bench virtio_net`; `VESSEL_BENCH_SECS` sets the duration per
//! case (default 2).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vessel_vmm::devices::virtio::{NetBackend, NetConfig, VirtioMmioNet};
use vessel_vmm::devices::BusDevice;
use vessel_vmm::net::netlink;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QSIZE: u16 = 256;
const RXQ: u64 = 0x10000;
const TXQ: u64 = 0x20000;
const BUF_BASE: u64 = 0x100_0000;
const BUF_STRIDE: u64 = 0x1_0000;
const HDR: usize = 12;

struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    fn new(base: u64) -> Self {
        Ring {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            used_seen: 0,
        }
    }
    fn set_desc(&self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16) {
        let at = self.desc + u64::from(i) * 16;
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(0u16, GuestAddress(at + 14)).unwrap();
    }
    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }
    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }
    /// Heads used since last call.
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<u16> {
        let idx = self.used_idx(mem);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            out.push(id as u16);
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

type Dev = Arc<Mutex<VirtioMmioNet>>;

fn w32(dev: &Dev, off: u64, v: u32) {
    dev.lock().unwrap().write(off, &v.to_le_bytes());
}

fn r32(dev: &Dev, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.lock().unwrap().read(off, &mut b);
    u32::from_le_bytes(b)
}

fn start_driver(dev: &Dev, rx: &Ring, tx: &Ring, extra: u64) {
    w32(dev, 0x70, 0);
    w32(dev, 0x70, 1);
    w32(dev, 0x70, 3);
    w32(dev, 0x14, 1);
    let hi = r32(dev, 0x10);
    w32(dev, 0x14, 0);
    let lo = r32(dev, 0x10);
    // VERSION_1 and EVENT_IDX, like a modern Linux guest without offloads.
    let want = (1u64 << 32) | (1 << 29) | extra;
    let acked = ((u64::from(hi) << 32) | u64::from(lo)) & want;
    w32(dev, 0x24, 1);
    w32(dev, 0x20, (acked >> 32) as u32);
    w32(dev, 0x24, 0);
    w32(dev, 0x20, acked as u32);
    w32(dev, 0x70, 0xb);
    for (i, r) in [rx, tx].iter().enumerate() {
        w32(dev, 0x30, i as u32);
        w32(dev, 0x38, u32::from(QSIZE));
        w32(dev, 0x80, r.desc as u32);
        w32(dev, 0x84, 0);
        w32(dev, 0x90, r.avail as u32);
        w32(dev, 0x94, 0);
        w32(dev, 0xa0, r.used as u32);
        w32(dev, 0xa4, 0);
        w32(dev, 0x44, 1);
    }
    w32(dev, 0x70, 0xf);
    assert_eq!(r32(dev, 0x70), 0xf, "device refused the driver");
}

fn packet_socket(ifindex: u32) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: pointer and length describe `sll`.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0);
    fd
}

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x5au8; len];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

struct Bench {
    dev: Dev,
    em: EventManager<Dev>,
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    sock: OwnedFd,
}

fn setup(name: &str, extra_features: u64) -> Bench {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let cfg = NetConfig {
        backend: NetBackend::Tap { name: name.into() },
        mac: None,
    };
    let dev = Arc::new(Mutex::new(
        VirtioMmioNet::new(&cfg, mem.clone(), irq).unwrap(),
    ));
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    netlink::set_link_up(name, true).unwrap();
    let sock = packet_socket(netlink::link_index(name).unwrap());
    let mut em = EventManager::<Dev>::new().unwrap();
    em.add_subscriber(dev.clone());
    let rx = Ring::new(RXQ);
    let tx = Ring::new(TXQ);
    start_driver(&dev, &rx, &tx, extra_features);
    em.run_with_timeout(0).unwrap();
    Bench {
        dev,
        em,
        mem,
        rx,
        tx,
        sock,
    }
}

/// A TCP/IPv4 frame of `len` bytes and the virtio-net header that makes it a TSO frame
/// with 1448-byte segments.
fn tso_frame(len: usize) -> ([u8; HDR], Vec<u8>) {
    let mut f = frame(len);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14..34].copy_from_slice(&[
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        1,
        0x40,
        0,
        64,
        6,
        0,
        0,
        198,
        18,
        0,
        2,
        198,
        18,
        0,
        1,
    ]);
    f[34..54].copy_from_slice(&[
        0x9c, 0x40, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    let mut h = [0u8; HDR];
    h[0] = 1; // NEEDS_CSUM
    h[1] = 1; // GSO_TCPV4
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&1448u16.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    (h, f)
}

fn bench_tx(b: &mut Bench, len: usize, secs: f64) -> f64 {
    let (hdr, f) = if len > 1514 {
        tso_frame(len)
    } else {
        ([0u8; HDR], frame(len))
    };
    for i in 0..QSIZE {
        let at = BUF_BASE + u64::from(i) * BUF_STRIDE;
        b.mem.write_slice(&hdr, GuestAddress(at)).unwrap();
        b.mem
            .write_slice(&f, GuestAddress(at + HDR as u64))
            .unwrap();
        b.tx.set_desc(&b.mem, i, at, (HDR + len) as u32, 0);
        b.tx.publish(&b.mem, i);
    }
    w32(&b.dev, 0x50, 1);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        b.em.run_with_timeout(100).unwrap();
        for head in b.tx.take_used(&b.mem) {
            sent += 1;
            b.tx.publish(&b.mem, head);
        }
        w32(&b.dev, 0x50, 1);
    }
    sent as f64 / start.elapsed().as_secs_f64()
}

fn bench_rx(b: &mut Bench, len: usize, secs: f64) -> f64 {
    for i in 0..QSIZE {
        let at = BUF_BASE + u64::from(i) * BUF_STRIDE;
        b.rx.set_desc(&b.mem, i, at, 2048, 2);
        b.rx.publish(&b.mem, i);
    }
    w32(&b.dev, 0x50, 0);
    b.em.run_with_timeout(0).unwrap();
    let f = frame(len);
    let start = Instant::now();
    let mut received = 0u64;
    let batch = 64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..batch {
            // SAFETY: pointer and length describe `f`.
            unsafe { libc::send(b.sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        }
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(1);
        while got < batch && Instant::now() < deadline {
            b.em.run_with_timeout(10).unwrap();
            for head in b.rx.take_used(&b.mem) {
                got += 1;
                b.rx.publish(&b.mem, head);
            }
            w32(&b.dev, 0x50, 0);
        }
        received += got;
    }
    received as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: virtio_net bench needs root to create a tap");
        return;
    }
    let secs: f64 = std::env::var("VESSEL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    for len in [64usize, 1514] {
        let name = format!("vbt{}x{len}", std::process::id());
        let mut b = setup(&name, 0);
        let tx = bench_tx(&mut b, len, secs);
        let m = b.dev.lock().unwrap().metrics_snapshot();
        println!(
            "virtio-net TX {len:>5} B frames: {tx:>10.0} frames/s ({:.1} MB/s), drops {}",
            tx * len as f64 / 1e6,
            m.tx_dropped
        );
        drop(b);
        let name = format!("vbr{}x{len}", std::process::id());
        let mut b = setup(&name, 0);
        let rx = bench_rx(&mut b, len, secs);
        let m = b.dev.lock().unwrap().metrics_snapshot();
        println!(
            "virtio-net RX {len:>5} B frames: {rx:>10.0} frames/s ({:.1} MB/s), drops {}",
            rx * len as f64 / 1e6,
            m.rx_dropped
        );
    }
    // TSO: 64000-byte TCP frames (CSUM + HOST_TSO4), segmented later by the host if routed.
    let len = 64000;
    let name = format!("vbg{}", std::process::id());
    let mut b = setup(&name, (1 << 0) | (1 << 11));
    let tx = bench_tx(&mut b, len, secs);
    let m = b.dev.lock().unwrap().metrics_snapshot();
    println!(
        "virtio-net TX {len:>5} B TSO frames: {tx:>6.0} frames/s ({:.2} Gbit/s), dropped {}",
        tx * len as f64 * 8.0 / 1e9,
        m.tx_dropped
    );
}
