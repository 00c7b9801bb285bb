//! Device-model tests: a real tap backend, guest memory laid out by hand, the MMIO registers
//! driven like the Linux virtio-mmio driver does, and a real `EventManager` running the device.

use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Address, Bytes};

use super::*;
use crate::net::netlink;
use crate::net::testutil::{test_frame, unique_ifname, PacketSocket};

const MEM_SIZE: usize = 32 << 20;
const RXQ_BASE: u64 = 0x10000;
const TXQ_BASE: u64 = 0x20000;
const RX_BUF_BASE: u64 = 0x100_0000;
const TX_BUF_BASE: u64 = 0x80_0000;

/// The driver's view of one split virtqueue in guest memory.
struct GuestQueue {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl GuestQueue {
    fn new(base: u64, size: u16) -> Self {
        GuestQueue {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(self.desc + u64::from(i) * 16);
        mem.write_obj(addr.to_le(), at).unwrap();
        mem.write_obj(len.to_le(), at.unchecked_add(8)).unwrap();
        mem.write_obj(flags.to_le(), at.unchecked_add(12)).unwrap();
        mem.write_obj(next.to_le(), at.unchecked_add(14)).unwrap();
    }

    /// Publish a head index in the available ring.
    fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Lay out a chain in consecutive descriptors and publish it; returns the head.
    fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, flags)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % self.size;
            let last = k + 1 == bufs.len();
            let next = (i + 1) % self.size;
            let f = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            self.write_desc(mem, i, addr, len, f, next);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.push_avail(mem, head);
        head
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).unwrap())
    }

    fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    /// `used_event` (EVENT_IDX): interrupt me once the used index passes this.
    fn set_used_event(&self, mem: &GuestMemoryMmap, v: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(v.to_le(), GuestAddress(at)).unwrap();
    }

    /// `avail_event` (EVENT_IDX), written by the device.
    fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        u16::from_le(mem.read_obj(GuestAddress(at)).unwrap())
    }
}

type Dev = Arc<Mutex<VirtioMmioNet>>;

struct Harness {
    dev: Dev,
    em: EventManager<Dev>,
    mem: GuestMemoryMmap,
    irq: EventFd,
    rxq: GuestQueue,
    txq: GuestQueue,
    peer: PacketSocket,
}

const BASE_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1;

impl Harness {
    /// A device over a fresh tap (up, IPv6 off to keep it quiet) watched by an AF_PACKET
    /// socket, registered with an event manager. The driver has not started yet.
    fn new() -> Self {
        let name = unique_ifname("vn");
        let cfg = NetConfig {
            backend: NetBackend::Tap { name: name.clone() },
            mac: Some(MacAddr([0x02, 0, 0, 0, 0x12, 0x34])),
        };
        Self::with_config(&cfg, || {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
            netlink::set_link_up(&name, true).unwrap();
            netlink::link_index(&name).unwrap()
        })
    }

    /// A device built from `cfg`; `host_side` prepares the host network once the backend is
    /// open and returns the interface index the AF_PACKET peer socket binds to.
    fn with_config(cfg: &NetConfig, host_side: impl FnOnce() -> u32) -> Self {
        Self::with_memory(cfg, &[(GuestAddress(0), MEM_SIZE)], host_side)
    }

    /// [`Harness::with_config`] over guest memory made of `ranges`.
    fn with_memory(
        cfg: &NetConfig,
        ranges: &[(GuestAddress, usize)],
        host_side: impl FnOnce() -> u32,
    ) -> Self {
        let mem = GuestMemoryMmap::from_ranges(ranges).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = VirtioMmioNet::new(cfg, mem.clone(), irq.try_clone().unwrap()).unwrap();
        let peer = PacketSocket::bind(host_side()).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Dev>::new().unwrap();
        em.add_subscriber(dev.clone());
        Harness {
            dev,
            em,
            mem,
            irq,
            rxq: GuestQueue::new(RXQ_BASE, 256),
            txq: GuestQueue::new(TXQ_BASE, 256),
            peer,
        }
    }

    fn w32(&self, off: u32, v: u32) {
        self.dev
            .lock()
            .unwrap()
            .write(u64::from(off), &v.to_le_bytes());
    }

    fn r32(&self, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.dev.lock().unwrap().read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }

    fn status(&self) -> u32 {
        self.r32(VIRTIO_MMIO_STATUS)
    }

    fn metrics(&self) -> NetMetricsSnapshot {
        self.dev.lock().unwrap().metrics_snapshot()
    }

    /// Negotiate `wanted` ∩ offered; returns the negotiated set.
    fn negotiate(&self, wanted: u64) -> u64 {
        self.w32(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(self.r32(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(self.r32(VIRTIO_MMIO_VERSION), 2);
        assert_eq!(self.r32(VIRTIO_MMIO_DEVICE_ID), 1);
        self.w32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        self.w32(VIRTIO_MMIO_STATUS, s);
        self.w32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let mut offered = u64::from(self.r32(VIRTIO_MMIO_DEVICE_FEATURES)) << 32;
        self.w32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        offered |= u64::from(self.r32(VIRTIO_MMIO_DEVICE_FEATURES));
        let acked = offered & wanted;
        self.w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.w32(VIRTIO_MMIO_DRIVER_FEATURES, (acked >> 32) as u32);
        self.w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.w32(VIRTIO_MMIO_DRIVER_FEATURES, acked as u32);
        self.w32(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_ne!(self.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        acked
    }

    fn setup_queue(&self, index: u32, q: &GuestQueue, size: u32) {
        self.w32(VIRTIO_MMIO_QUEUE_SEL, index);
        assert_eq!(self.r32(VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(self.r32(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        self.w32(VIRTIO_MMIO_QUEUE_NUM, size);
        self.w32(VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc as u32);
        self.w32(VIRTIO_MMIO_QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        self.w32(VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail as u32);
        self.w32(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (q.avail >> 32) as u32);
        self.w32(VIRTIO_MMIO_QUEUE_USED_LOW, q.used as u32);
        self.w32(VIRTIO_MMIO_QUEUE_USED_HIGH, (q.used >> 32) as u32);
        self.w32(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    fn driver_ok(&mut self) {
        let s = self.status();
        self.w32(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        // Let the event loop register the queues and the backend.
        self.em.run_with_timeout(0).unwrap();
    }

    /// The Linux driver's sequence with both queues at 256 entries.
    fn start(&mut self, wanted: u64) -> u64 {
        let acked = self.negotiate(wanted);
        self.setup_queue(0, &self.rxq, u32::from(self.rxq.size));
        self.setup_queue(1, &self.txq, u32::from(self.txq.size));
        self.driver_ok();
        assert_eq!(self.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        acked
    }

    fn kick(&self, queue: u32) {
        self.w32(VIRTIO_MMIO_QUEUE_NOTIFY, queue);
    }

    /// Run the event loop until `cond` holds (bounded, so a bug fails instead of hanging).
    fn run_until(&mut self, cond: impl Fn(&Self) -> bool) -> bool {
        for _ in 0..100 {
            if cond(self) {
                return true;
            }
            self.em.run_with_timeout(50).unwrap();
        }
        cond(self)
    }

    /// Drain what is immediately pending in the event loop.
    fn settle(&mut self) {
        for _ in 0..5 {
            self.em.run_with_timeout(10).unwrap();
        }
    }

    /// Put `hdr + frame` in guest memory at `at` and transmit it as a two-descriptor chain.
    fn tx(&mut self, at: u64, frame: &[u8]) -> u16 {
        let hdr = [0u8; VNET_HDR_LEN];
        self.mem.write_slice(&hdr, GuestAddress(at)).unwrap();
        self.mem
            .write_slice(frame, GuestAddress(at + 0x100))
            .unwrap();
        let head = self.txq.add_chain(
            &self.mem,
            &[
                (at, VNET_HDR_LEN as u32, 0),
                (at + 0x100, frame.len() as u32, 0),
            ],
        );
        self.kick(1);
        let published = self.txq.avail_idx;
        assert!(self.run_until(|h| h.txq.used_idx(&h.mem) == published));
        head
    }

    fn irq_count(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    /// Post `n` receive chains of one `len`-byte writable buffer each.
    fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let i = u64::from(self.rxq.next_desc);
            let addr = RX_BUF_BASE + i * 0x1_0000;
            self.rxq
                .add_chain(&self.mem, &[(addr, len, VRING_DESC_F_WRITE as u16)]);
        }
        self.kick(0);
    }

    /// Collect the frame of the used RX entries starting at `from` (merging `num_buffers`
    /// entries); returns (header, frame, entries consumed).
    fn read_rx(&self, from: u16) -> (Vec<u8>, Vec<u8>, u16) {
        let mut data = Vec::new();
        let (id, len) = self.rxq.used_elem(&self.mem, from);
        let mut buf = vec![0u8; len as usize];
        let addr = RX_BUF_BASE + u64::from(id) * 0x1_0000;
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        data.extend_from_slice(&buf);
        assert!(data.len() >= VNET_HDR_LEN, "used length {len} below header");
        let num = u16::from_le_bytes([data[10], data[11]]);
        for k in 1..num {
            let (id, len) = self.rxq.used_elem(&self.mem, from + k);
            let mut buf = vec![0u8; len as usize];
            let addr = RX_BUF_BASE + u64::from(id) * 0x1_0000;
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            data.extend_from_slice(&buf);
        }
        let hdr = data[..VNET_HDR_LEN].to_vec();
        (hdr, data[VNET_HDR_LEN..].to_vec(), num)
    }

    /// Wait for the RX frame identified by `id` (skipping anything else) and return it with
    /// its header and the number of buffers it took.
    fn wait_rx(&mut self, id: &[u8], from: &mut u16) -> (Vec<u8>, Vec<u8>, u16) {
        loop {
            let start = *from;
            assert!(
                self.run_until(|h| h.rxq.used_idx(&h.mem) != start),
                "no frame reached the guest"
            );
            let (hdr, frame, n) = self.read_rx(*from);
            *from = from.wrapping_add(n);
            if frame.len() >= 12 + id.len() && &frame[12..12 + id.len()] == id {
                return (hdr, frame, n);
            }
        }
    }
}

#[test]
fn config_space_and_features() {
    if crate::net::testutil::skip_without_tap("config_space_and_features") {
        return;
    }
    let h = Harness::new();
    let mut mac = [0u8; 6];
    h.dev.lock().unwrap().read(0x100, &mut mac);
    assert_eq!(mac, [0x02, 0, 0, 0, 0x12, 0x34]);
    let mut st = [0u8; 2];
    h.dev.lock().unwrap().read(0x106, &mut st);
    assert_eq!(u16::from_le_bytes(st), VIRTIO_NET_S_LINK_UP as u16);
    let mut pairs = [0u8; 2];
    h.dev.lock().unwrap().read(0x108, &mut pairs);
    assert_eq!(u16::from_le_bytes(pairs), 1);
    let mut far = [0xffu8; 8];
    h.dev.lock().unwrap().read(0xff8, &mut far);
    assert_eq!(far, [0; 8]);
    h.dev.lock().unwrap().read(u64::MAX - 2, &mut far);
    assert_eq!(far, [0; 8]);
    let f = h.dev.lock().unwrap().avail_features();
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4,
    ] {
        assert_ne!(f & bit(b), 0, "feature {b} not offered");
    }
    assert_eq!(f & bit(VIRTIO_RING_F_INDIRECT_DESC), 0);
}

#[test]
fn tx_frame_reaches_the_tap_and_interrupts() {
    if crate::net::testutil::skip_without_tap("tx_frame_reaches_the_tap_and_interrupts") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    let frame = test_frame(0x41, 600);
    let head = h.tx(TX_BUF_BASE, &frame);
    assert_eq!(h.peer.recv_matching(&frame[12..20]).unwrap(), frame);
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 1));
    assert_eq!(h.txq.used_elem(&h.mem, 0), (u32::from(head), 0));
    assert!(h.irq_count() >= 1);
    assert_eq!(
        h.r32(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING,
        1
    );
    h.w32(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(h.r32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    let m = h.metrics();
    assert_eq!(
        (m.tx_frames, m.tx_bytes, m.invalid_descriptors),
        (1, 600, 0)
    );
}

#[test]
fn notify_events_are_the_queue_eventfds() {
    if crate::net::testutil::skip_without_tap("notify_events_are_the_queue_eventfds") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    let evts = h.dev.lock().unwrap().notify_events();
    assert_eq!(evts.len(), 2);
    assert_eq!((evts[0].0, evts[0].1), (0x50, 0));
    assert_eq!((evts[1].0, evts[1].1), (0x50, 1));
    // What KVM would do on a matching guest write: signal the eventfd directly.
    let frame = test_frame(0x42, 100);
    h.mem
        .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(TX_BUF_BASE))
        .unwrap();
    h.mem
        .write_slice(&frame, GuestAddress(TX_BUF_BASE + 12))
        .unwrap();
    h.txq.add_chain(&h.mem, &[(TX_BUF_BASE, 12 + 100, 0)]);
    evts[1].2.write(1).unwrap();
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 1));
    assert_eq!(h.peer.recv_matching(&frame[12..20]).unwrap(), frame);
}

#[test]
fn rx_frame_lands_in_guest_buffers_with_header() {
    if crate::net::testutil::skip_without_tap("rx_frame_lands_in_guest_buffers_with_header") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.post_rx(8, 2048);
    h.settle();
    let frame = test_frame(0x51, 700);
    h.peer.send(&frame).unwrap();
    let mut from = 0;
    let (hdr, got, n) = h.wait_rx(&frame[12..20], &mut from);
    assert_eq!(got, frame);
    assert_eq!(n, 1);
    assert_eq!(&hdr[10..12], &1u16.to_le_bytes(), "num_buffers must be 1");
    assert_eq!(hdr[0], 0, "no checksum offload negotiated");
    let (_, len) = h.rxq.used_elem(&h.mem, from - 1);
    assert_eq!(len as usize, VNET_HDR_LEN + frame.len());
    assert!(h.irq_count() >= 1);
    assert_ne!(
        h.r32(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING,
        0
    );
    let m = h.metrics();
    assert!(m.rx_frames >= 1 && m.rx_bytes >= 700);
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    if crate::net::testutil::skip_without_tap("rx_waits_for_buffers_then_delivers") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    let frame = test_frame(0x52, 300);
    h.peer.send(&frame).unwrap();
    h.settle();
    assert_eq!(h.rxq.used_idx(&h.mem), 0);
    assert_eq!(h.metrics().rx_dropped, 0, "no buffers is not a drop");
    h.post_rx(4, 2048);
    let mut from = 0;
    let (_, got, _) = h.wait_rx(&frame[12..20], &mut from);
    assert_eq!(got, frame);
}

#[test]
fn mrg_rxbuf_splits_a_frame_over_several_chains() {
    if crate::net::testutil::skip_without_tap("mrg_rxbuf_splits_a_frame_over_several_chains") {
        return;
    }
    let mut h = Harness::new();
    let acked = h.start(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
    assert_ne!(acked & bit(VIRTIO_NET_F_MRG_RXBUF), 0);
    h.post_rx(32, 256);
    h.settle();
    let frame = test_frame(0x53, 1000);
    h.peer.send(&frame).unwrap();
    let mut from = 0;
    let (_, got, n) = h.wait_rx(&frame[12..20], &mut from);
    assert_eq!(got, frame);
    assert_eq!(n as usize, (VNET_HDR_LEN + 1000).div_ceil(256));
    let lens: Vec<u32> = (from - n..from)
        .map(|i| h.rxq.used_elem(&h.mem, i).1)
        .collect();
    assert_eq!(lens, vec![256, 256, 256, 244]);
}

#[test]
fn mrg_rxbuf_waits_for_enough_buffers() {
    if crate::net::testutil::skip_without_tap("mrg_rxbuf_waits_for_enough_buffers") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_EVENT_IDX));
    h.post_rx(2, 256);
    h.settle();
    let frame = test_frame(0x54, 1000);
    h.peer.send(&frame).unwrap();
    h.settle();
    // 2 x 256 bytes cannot hold it; nothing is consumed, nothing dropped.
    assert_eq!(h.rxq.used_idx(&h.mem), 0);
    // The device asked to be kicked once the driver publishes past what it saw.
    assert_eq!(h.rxq.avail_event(&h.mem), 2);
    h.post_rx(4, 256);
    let mut from = 0;
    let (_, got, n) = h.wait_rx(&frame[12..20], &mut from);
    assert_eq!((got, n), (frame, 4));
    assert_eq!(h.metrics().rx_dropped, 0);
}

#[test]
fn rx_frame_too_big_for_the_buffer_is_dropped_and_counted() {
    if crate::net::testutil::skip_without_tap(
        "rx_frame_too_big_for_the_buffer_is_dropped_and_counted",
    ) {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.post_rx(1, 200);
    h.settle();
    let big = test_frame(0x55, 800);
    h.peer.send(&big).unwrap();
    assert!(h.run_until(|h| h.metrics().rx_dropped >= 1));
    assert_eq!(h.rxq.used_idx(&h.mem), 0, "no truncated frame");
    // The buffer stays available for a frame that fits.
    let small = test_frame(0x56, 100);
    h.peer.send(&small).unwrap();
    let mut from = 0;
    let (_, got, _) = h.wait_rx(&small[12..20], &mut from);
    assert_eq!(got, small);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    if crate::net::testutil::skip_without_tap("event_idx_suppresses_interrupts_until_used_event") {
        return;
    }
    let mut h = Harness::new();
    let acked = h.start(BASE_FEATURES | bit(VIRTIO_RING_F_EVENT_IDX));
    assert_ne!(acked & bit(VIRTIO_RING_F_EVENT_IDX), 0);
    h.irq_count();
    // Interrupt only after the third used entry (used_event = 2).
    h.txq.set_used_event(&h.mem, 2);
    for k in 0..2u64 {
        let f = test_frame(0x60, 80);
        h.tx(TX_BUF_BASE + k * 0x1000, &f);
        h.peer.recv_matching(&f[12..20]).unwrap();
        let k = k as u16;
        assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == k + 1));
    }
    assert_eq!(h.irq_count(), 0, "interrupt before used_event was passed");
    let f = test_frame(0x61, 80);
    h.tx(TX_BUF_BASE + 0x5000, &f);
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 3));
    assert_eq!(h.irq_count(), 1);
    // The device publishes how far it has consumed the available ring.
    assert_eq!(h.txq.avail_event(&h.mem), 3);
}

#[test]
fn no_interrupt_flag_is_honoured_without_event_idx() {
    if crate::net::testutil::skip_without_tap("no_interrupt_flag_is_honoured_without_event_idx") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.irq_count();
    h.mem
        .write_obj(1u16.to_le(), GuestAddress(h.txq.avail))
        .unwrap();
    let f = test_frame(0x62, 80);
    h.tx(TX_BUF_BASE, &f);
    assert_eq!(
        h.irq_count(),
        0,
        "interrupt despite VRING_AVAIL_F_NO_INTERRUPT"
    );
    h.mem
        .write_obj(0u16.to_le(), GuestAddress(h.txq.avail))
        .unwrap();
    let f = test_frame(0x63, 80);
    h.tx(TX_BUF_BASE + 0x1000, &f);
    assert_eq!(h.irq_count(), 1);
}

#[test]
fn reset_returns_to_initial_state_and_device_restarts() {
    if crate::net::testutil::skip_without_tap("reset_returns_to_initial_state_and_device_restarts")
    {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
    let f = test_frame(0x70, 64);
    h.tx(TX_BUF_BASE, &f);
    h.peer.recv_matching(&f[12..20]).unwrap();
    h.w32(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(h.status(), 0);
    assert_eq!(h.r32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    for q in 0..2 {
        h.w32(VIRTIO_MMIO_QUEUE_SEL, q);
        assert_eq!(h.r32(VIRTIO_MMIO_QUEUE_READY), 0);
    }
    h.settle();
    // Kicks after reset do nothing.
    h.kick(1);
    h.settle();
    // A fresh driver instance with fresh rings works.
    h.txq = GuestQueue::new(TXQ_BASE + 0x4000, 256);
    h.rxq = GuestQueue::new(RXQ_BASE + 0x4000, 256);
    h.start(BASE_FEATURES);
    let f = test_frame(0x71, 64);
    h.tx(TX_BUF_BASE, &f);
    assert_eq!(h.peer.recv_matching(&f[12..20]).unwrap(), f);
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 1));
}

#[test]
fn mmio_fuzz_never_panics() {
    if crate::net::testutil::skip_without_tap("mmio_fuzz_never_panics") {
        return;
    }
    let h = Harness::new();
    let mut x: u64 = 0x1234_5678_9abc_def0;
    for _ in 0..20000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = if x & 1 == 0 { x % 0x200 } else { x >> 8 };
        let len = [1usize, 2, 4, 8, 3, 0][(x >> 3) as usize % 6];
        let mut buf = vec![0u8; len];
        let mut d = h.dev.lock().unwrap();
        if x & 2 == 0 {
            d.read(off, &mut buf);
        } else {
            buf.iter_mut().for_each(|b| *b = (x >> 16) as u8);
            d.write(off, &buf);
        }
    }
}

// ----- malicious drivers -----

/// Transmit one good frame and check it goes out: the device still works.
fn assert_tx_works(h: &mut Harness, at: u64) {
    let f = test_frame(0x7f, 90);
    h.tx(at, &f);
    assert_eq!(h.peer.recv_matching(&f[12..20]).unwrap(), f);
}

fn assert_invalid_tx_dropped(h: &mut Harness, expect_used: u16) {
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == expect_used));
    let m = h.metrics();
    assert_eq!(m.invalid_descriptors, 1);
    assert_eq!(m.tx_frames, 0);
    assert_eq!(h.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    let (_, len) = h.txq.used_elem(&h.mem, expect_used - 1);
    assert_eq!(len, 0);
}

#[test]
fn tx_buffer_outside_guest_memory() {
    if crate::net::testutil::skip_without_tap("tx_buffer_outside_guest_memory") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.txq.add_chain(&h.mem, &[(MEM_SIZE as u64 - 8, 64, 0)]);
    h.kick(1);
    assert_invalid_tx_dropped(&mut h, 1);
    h.txq.add_chain(&h.mem, &[(u64::MAX - 16, 64, 0)]);
    h.kick(1);
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 2));
    assert_eq!(h.metrics().invalid_descriptors, 2);
    assert_tx_works(&mut h, TX_BUF_BASE);
}

#[test]
fn tx_descriptor_loop() {
    if crate::net::testutil::skip_without_tap("tx_descriptor_loop") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    let next = VRING_DESC_F_NEXT as u16;
    h.txq.write_desc(&h.mem, 0, TX_BUF_BASE, 64, next, 1);
    h.txq.write_desc(&h.mem, 1, TX_BUF_BASE, 64, next, 0);
    h.txq.push_avail(&h.mem, 0);
    h.txq.next_desc = 2;
    h.kick(1);
    assert_invalid_tx_dropped(&mut h, 1);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x1000);
}

#[test]
fn tx_chain_longer_than_queue() {
    if crate::net::testutil::skip_without_tap("tx_chain_longer_than_queue") {
        return;
    }
    let mut h = Harness::new();
    h.txq = GuestQueue::new(TXQ_BASE, 8);
    h.negotiate(BASE_FEATURES);
    h.setup_queue(0, &h.rxq, 256);
    h.setup_queue(1, &h.txq, 8);
    h.driver_ok();
    // All 8 descriptors chained in a ring: the walk must stop after 8.
    for i in 0..8u16 {
        h.txq.write_desc(
            &h.mem,
            i,
            TX_BUF_BASE,
            16,
            VRING_DESC_F_NEXT as u16,
            (i + 1) % 8,
        );
    }
    h.txq.push_avail(&h.mem, 3);
    h.kick(1);
    assert_invalid_tx_dropped(&mut h, 1);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x1000);
}

#[test]
fn tx_chain_too_large() {
    if crate::net::testutil::skip_without_tap("tx_chain_too_large") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.txq
        .add_chain(&h.mem, &[(TX_BUF_BASE, 40000, 0), (TX_BUF_BASE, 40000, 0)]);
    h.kick(1);
    assert_invalid_tx_dropped(&mut h, 1);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x10000);
}

#[test]
fn tx_lengths_that_overflow() {
    if crate::net::testutil::skip_without_tap("tx_lengths_that_overflow") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.txq.add_chain(
        &h.mem,
        &[(TX_BUF_BASE, u32::MAX, 0), (TX_BUF_BASE, u32::MAX, 0)],
    );
    h.kick(1);
    assert_invalid_tx_dropped(&mut h, 1);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x10000);
}

#[test]
fn tx_write_only_descriptor() {
    if crate::net::testutil::skip_without_tap("tx_write_only_descriptor") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.txq.add_chain(
        &h.mem,
        &[
            (TX_BUF_BASE, 12, 0),
            (TX_BUF_BASE + 0x100, 64, VRING_DESC_F_WRITE as u16),
        ],
    );
    h.kick(1);
    assert_invalid_tx_dropped(&mut h, 1);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x1000);
}

#[test]
fn tx_indirect_descriptor_not_negotiated() {
    if crate::net::testutil::skip_without_tap("tx_indirect_descriptor_not_negotiated") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.txq
        .add_chain(&h.mem, &[(TX_BUF_BASE, 32, VRING_DESC_F_INDIRECT as u16)]);
    h.kick(1);
    assert_invalid_tx_dropped(&mut h, 1);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x1000);
}

#[test]
fn tx_chain_shorter_than_header() {
    if crate::net::testutil::skip_without_tap("tx_chain_shorter_than_header") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.txq.add_chain(&h.mem, &[(TX_BUF_BASE, 4, 0)]);
    h.kick(1);
    assert_invalid_tx_dropped(&mut h, 1);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x1000);
}

#[test]
fn rx_read_only_descriptor_is_returned_unused() {
    if crate::net::testutil::skip_without_tap("rx_read_only_descriptor_is_returned_unused") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    // First chain read-only (invalid for RX), then a good one.
    let bad = h.rxq.add_chain(&h.mem, &[(RX_BUF_BASE, 2048, 0)]);
    h.post_rx(1, 2048);
    h.settle();
    let f = test_frame(0x57, 200);
    h.peer.send(&f).unwrap();
    assert!(h.run_until(|h| h.rxq.used_idx(&h.mem) >= 2));
    assert_eq!(h.rxq.used_elem(&h.mem, 0), (u32::from(bad), 0));
    let mut from = 1;
    let (_, got, _) = h.read_rx(from);
    from += 1;
    if got != f {
        let (_, got, _) = h.wait_rx(&f[12..20], &mut from);
        assert_eq!(got, f);
    }
    assert_eq!(h.metrics().invalid_descriptors, 1);
    assert_eq!(h.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

fn assert_needs_reset(h: &mut Harness) {
    let s = h.status();
    assert_ne!(s & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "status {s:#x}");
    assert_ne!(
        h.r32(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
    assert!(h.irq_count() >= 1);
    assert_eq!(h.metrics().needs_reset, 1);
    // Nothing is processed until reset, and a kick does not hang or panic.
    h.kick(0);
    h.kick(1);
    h.settle();
}

/// After NEEDS_RESET, a reset and a clean start bring the device back.
fn assert_recovers(h: &mut Harness) {
    h.txq = GuestQueue::new(TXQ_BASE + 0x8000, 256);
    h.rxq = GuestQueue::new(RXQ_BASE + 0x8000, 256);
    h.start(BASE_FEATURES);
    assert_tx_works(h, TX_BUF_BASE + 0x2_0000);
}

fn start_with_tx_layout(h: &mut Harness, size: u32, desc: u64, avail: u64, used: u64) {
    h.negotiate(BASE_FEATURES);
    h.setup_queue(0, &h.rxq, 256);
    let mut q = GuestQueue::new(TXQ_BASE, 256);
    q.desc = desc;
    q.avail = avail;
    q.used = used;
    h.setup_queue(1, &q, size);
    h.driver_ok();
}

#[test]
fn queue_size_not_power_of_two() {
    if crate::net::testutil::skip_without_tap("queue_size_not_power_of_two") {
        return;
    }
    let mut h = Harness::new();
    start_with_tx_layout(&mut h, 100, TXQ_BASE, TXQ_BASE + 0x1000, TXQ_BASE + 0x2000);
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn queue_size_larger_than_max() {
    if crate::net::testutil::skip_without_tap("queue_size_larger_than_max") {
        return;
    }
    let mut h = Harness::new();
    start_with_tx_layout(&mut h, 512, TXQ_BASE, TXQ_BASE + 0x1000, TXQ_BASE + 0x2000);
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn queue_size_zero() {
    if crate::net::testutil::skip_without_tap("queue_size_zero") {
        return;
    }
    let mut h = Harness::new();
    start_with_tx_layout(&mut h, 0, TXQ_BASE, TXQ_BASE + 0x1000, TXQ_BASE + 0x2000);
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn ring_outside_guest_memory() {
    if crate::net::testutil::skip_without_tap("ring_outside_guest_memory") {
        return;
    }
    let mut h = Harness::new();
    let end = MEM_SIZE as u64;
    start_with_tx_layout(&mut h, 256, TXQ_BASE, TXQ_BASE + 0x1000, end - 0x100);
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn ring_address_overflows() {
    if crate::net::testutil::skip_without_tap("ring_address_overflows") {
        return;
    }
    let mut h = Harness::new();
    start_with_tx_layout(&mut h, 256, !0xfu64, TXQ_BASE + 0x1000, TXQ_BASE + 0x2000);
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn ring_misaligned() {
    if crate::net::testutil::skip_without_tap("ring_misaligned") {
        return;
    }
    let mut h = Harness::new();
    start_with_tx_layout(
        &mut h,
        256,
        TXQ_BASE + 8,
        TXQ_BASE + 0x1000,
        TXQ_BASE + 0x2000,
    );
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn queue_not_ready_at_driver_ok() {
    if crate::net::testutil::skip_without_tap("queue_not_ready_at_driver_ok") {
        return;
    }
    let mut h = Harness::new();
    h.negotiate(BASE_FEATURES);
    h.setup_queue(0, &h.rxq, 256);
    h.driver_ok();
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn avail_index_jumps_past_queue_size() {
    if crate::net::testutil::skip_without_tap("avail_index_jumps_past_queue_size") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.mem
        .write_obj(300u16.to_le(), GuestAddress(h.txq.avail + 2))
        .unwrap();
    h.kick(1);
    h.settle();
    assert_needs_reset(&mut h);
    assert_eq!(h.txq.used_idx(&h.mem), 0);
    assert_recovers(&mut h);
}

#[test]
fn avail_head_index_out_of_range() {
    if crate::net::testutil::skip_without_tap("avail_head_index_out_of_range") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.txq.push_avail(&h.mem, 4000);
    h.kick(1);
    h.settle();
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn rx_avail_head_index_out_of_range() {
    if crate::net::testutil::skip_without_tap("rx_avail_head_index_out_of_range") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.rxq.push_avail(&h.mem, 999);
    h.kick(0);
    let f = test_frame(0x58, 100);
    h.peer.send(&f).unwrap();
    assert!(h.run_until(|h| h.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0));
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn inconsistent_offloads_are_refused() {
    if crate::net::testutil::skip_without_tap("inconsistent_offloads_are_refused") {
        return;
    }
    let h = Harness::new();
    h.w32(VIRTIO_MMIO_STATUS, 0);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    h.w32(VIRTIO_MMIO_STATUS, s);
    h.w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    h.w32(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    h.w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    // GUEST_TSO4 without GUEST_CSUM.
    h.w32(VIRTIO_MMIO_DRIVER_FEATURES, 1 << VIRTIO_NET_F_GUEST_TSO4);
    h.w32(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    assert_eq!(h.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    h.w32(
        VIRTIO_MMIO_DRIVER_FEATURES,
        (1 << VIRTIO_NET_F_GUEST_TSO4) | (1 << VIRTIO_NET_F_GUEST_CSUM),
    );
    h.w32(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    assert_ne!(h.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
}

#[test]
fn features_not_offered_are_refused() {
    if crate::net::testutil::skip_without_tap("features_not_offered_are_refused") {
        return;
    }
    let h = Harness::new();
    h.w32(VIRTIO_MMIO_STATUS, 0);
    h.w32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    h.w32(VIRTIO_MMIO_STATUS, s);
    h.w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    h.w32(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    h.w32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    h.w32(
        VIRTIO_MMIO_DRIVER_FEATURES,
        1 << VIRTIO_RING_F_INDIRECT_DESC,
    );
    h.w32(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    assert_eq!(h.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
}

// ----- offloads -----

/// An Ethernet + IPv4 + TCP frame with `payload` bytes of data; bytes 12..20 are unique.
fn tcp_frame(payload: usize) -> Vec<u8> {
    let id = test_frame(0, 20);
    let total = 20 + 20 + payload;
    let mut f = vec![0u8; 14 + total];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0x12, 0x34]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x56, 0x78]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&[id[17] ^ id[18], id[19]]);
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[198, 18, 9, 2]);
    ip[16..20].copy_from_slice(&[198, 18, 9, 1]);
    let mut sum: u32 = 0;
    for c in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// virtio_net_hdr for a TCPv4 GSO frame with a partial checksum.
fn gso_hdr(gso_size: u16) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    h[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    h
}

const TSO_FEATURES: u64 = BASE_FEATURES
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO4);

#[test]
fn guest_tso_receives_unsegmented_gso_frames() {
    if crate::net::testutil::skip_without_tap("guest_tso_receives_unsegmented_gso_frames") {
        return;
    }
    let mut h = Harness::new();
    let acked = h.start(TSO_FEATURES);
    assert_eq!(acked, TSO_FEATURES);
    h.post_rx(8, 8192);
    h.settle();
    // Inject a 3000-byte-payload GSO frame into the tap's transmit path with a vnet header.
    let frame = tcp_frame(3000);
    let vnet_sock = h.peer.with_vnet_hdr().unwrap();
    let mut pkt = gso_hdr(1000)[..10].to_vec();
    pkt.extend_from_slice(&frame);
    vnet_sock.send(&pkt).unwrap();
    let mut from = 0;
    let (hdr, got, _) = h.wait_rx(&frame[12..20], &mut from);
    assert_eq!(got.len(), frame.len(), "GSO frame must arrive whole");
    assert_eq!(got[54..], frame[54..]);
    assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4 as u8);
    assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1000);
    assert_ne!(hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0);
}

#[test]
fn without_guest_tso_the_backend_segments() {
    if crate::net::testutil::skip_without_tap("without_guest_tso_the_backend_segments") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    h.post_rx(16, 2048);
    h.settle();
    let frame = tcp_frame(3000);
    let vnet_sock = h.peer.with_vnet_hdr().unwrap();
    let mut pkt = gso_hdr(1000)[..10].to_vec();
    pkt.extend_from_slice(&frame);
    vnet_sock.send(&pkt).unwrap();
    // Three segments of 1000 bytes, each a complete frame with a plain header.
    let mut from = 0;
    let mut data = Vec::new();
    for _ in 0..3 {
        let (hdr, got, _) = h.wait_rx(&frame[12..14], &mut from);
        assert_eq!(hdr[1], 0, "no GSO without GUEST_TSO4");
        assert_eq!(got.len(), 54 + 1000);
        data.extend_from_slice(&got[54..]);
    }
    assert_eq!(data, frame[54..]);
}

#[test]
fn host_tso_sends_gso_frames_to_the_backend() {
    if crate::net::testutil::skip_without_tap("host_tso_sends_gso_frames_to_the_backend") {
        return;
    }
    let mut h = Harness::new();
    h.start(TSO_FEATURES);
    let frame = tcp_frame(3000);
    h.mem
        .write_slice(&gso_hdr(1000), GuestAddress(TX_BUF_BASE))
        .unwrap();
    h.mem
        .write_slice(&frame, GuestAddress(TX_BUF_BASE + 0x100))
        .unwrap();
    h.txq.add_chain(
        &h.mem,
        &[
            (TX_BUF_BASE, 12, 0),
            (TX_BUF_BASE + 0x100, frame.len() as u32, 0),
        ],
    );
    h.kick(1);
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 1));
    let m = h.metrics();
    assert_eq!((m.tx_frames, m.tx_dropped), (1, 0));
    // The host sees the whole GSO frame on the tap.
    let got = h.peer.recv_matching(&frame[12..20]).unwrap();
    assert_eq!(got.len(), frame.len());
}

#[test]
fn device_is_send() {
    fn is_send<T: Send>() {}
    is_send::<VirtioMmioNet>();
}

// ----- macvtap backend -----

#[test]
fn macvtap_backend_carries_frames_both_ways() {
    if crate::net::testutil::skip_without_macvtap("macvtap_backend_carries_frames_both_ways") {
        return;
    }
    crate::net::testutil::in_new_netns("vmv", |ns| {
        use crate::net::testutil::ip;
        ip(&[
            "-n", ns, "link", "add", "vh0", "type", "veth", "peer", "name", "vp0",
        ]);
        for l in ["vh0", "vp0"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{l}/disable_ipv6"), "1");
            ip(&["-n", ns, "link", "set", l, "up"]);
        }
        let mac = MacAddr([0x02, 0, 0, 0x5e, 0, 0x77]);
        let link = crate::net::MacvtapLink::create("mvt0", "vh0", Some(mac)).unwrap();
        let cfg = NetConfig {
            backend: NetBackend::Macvtap {
                link: "mvt0".into(),
            },
            mac: Some(mac),
        };
        let mut h = Harness::with_config(&cfg, || {
            link.set_up().unwrap();
            netlink::link_index("vp0").unwrap()
        });
        h.start(TSO_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_EVENT_IDX));

        let mut f = test_frame(0x90, 300);
        f[6..12].copy_from_slice(&mac.0);
        h.tx(TX_BUF_BASE, &f);
        assert_eq!(h.peer.recv_matching(&f[12..20]).unwrap(), f);

        h.post_rx(16, 2048);
        h.settle();
        let mut f2 = test_frame(0x91, 1200);
        f2[0..6].copy_from_slice(&mac.0);
        h.peer.send(&f2).unwrap();
        let mut from = 0;
        let (_, got, _) = h.wait_rx(&f2[12..20], &mut from);
        assert_eq!(got, f2);
        drop(h);
        drop(link);
    });
}

// ----- volume and configuration -----

#[test]
fn full_tx_ring_is_drained_across_budgets() {
    if crate::net::testutil::skip_without_tap("full_tx_ring_is_drained_across_budgets") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES | bit(VIRTIO_RING_F_EVENT_IDX));
    let f = test_frame(0xa0, 60);
    for i in 0..256u64 {
        let at = TX_BUF_BASE + i * 0x100;
        h.mem.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
        h.mem.write_slice(&f, GuestAddress(at + 12)).unwrap();
        h.txq.add_chain(&h.mem, &[(at, 72, 0)]);
    }
    h.kick(1);
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 256));
    assert_eq!(h.metrics().tx_frames, 256);
}

#[test]
fn rx_indices_wrap_around_the_ring() {
    if crate::net::testutil::skip_without_tap("rx_indices_wrap_around_the_ring") {
        return;
    }
    let mut h = Harness::new();
    h.rxq = GuestQueue::new(RXQ_BASE, 16);
    h.negotiate(BASE_FEATURES | bit(VIRTIO_RING_F_EVENT_IDX));
    h.setup_queue(0, &h.rxq, 16);
    h.setup_queue(1, &h.txq, 256);
    h.driver_ok();
    h.post_rx(16, 2048);
    h.settle();
    let mut from: u16 = 0;
    // 5 rounds of 10 frames through a 16-entry ring, recycling buffers like a driver.
    for round in 0..5u8 {
        let frames: Vec<Vec<u8>> = (0..10).map(|_| test_frame(0xb0 + round, 100)).collect();
        for f in &frames {
            h.peer.send(f).unwrap();
        }
        for f in &frames {
            let (_, got, _) = h.wait_rx(&f[12..20], &mut from);
            assert_eq!(&got, f);
        }
        // Give back every buffer used so far (same addresses: one per descriptor).
        let used = h.rxq.used_idx(&h.mem);
        let mut recycled = h.rxq.avail_idx.wrapping_sub(16);
        while recycled != used {
            let (id, _) = h.rxq.used_elem(&h.mem, recycled);
            h.rxq.push_avail(&h.mem, id as u16);
            recycled = recycled.wrapping_add(1);
        }
        h.kick(0);
    }
    assert!(h.rxq.used_idx(&h.mem) >= 50);
    assert_eq!(h.metrics().rx_dropped, 0);
}

#[test]
fn no_mac_configured_means_no_mac_feature() {
    if crate::net::testutil::skip_without_tap("no_mac_configured_means_no_mac_feature") {
        return;
    }
    let name = unique_ifname("vn");
    let cfg = NetConfig {
        backend: NetBackend::Tap { name: name.clone() },
        mac: None,
    };
    let h = Harness::with_config(&cfg, || {
        netlink::set_link_up(&name, true).unwrap();
        netlink::link_index(&name).unwrap()
    });
    let f = h.dev.lock().unwrap().avail_features();
    assert_eq!(f & bit(VIRTIO_NET_F_MAC), 0);
    let mut mac = [0xffu8; 6];
    h.dev.lock().unwrap().read(0x100, &mut mac);
    assert_eq!(mac, [0; 6]);
}

#[test]
fn missing_backend_is_a_clear_error() {
    if crate::net::testutil::skip_without_tap("missing_backend_is_a_clear_error") {
        return;
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let cfg = NetConfig {
        backend: NetBackend::Macvtap {
            link: unique_ifname("nx"),
        },
        mac: None,
    };
    let err = VirtioMmioNet::new(&cfg, mem.clone(), EventFd::new(EFD_NONBLOCK).unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, VirtioError::Macvtap(_)), "{err}");
    let cfg = NetConfig {
        backend: NetBackend::Tap {
            name: "bad/name".into(),
        },
        mac: None,
    };
    let err = VirtioMmioNet::new(&cfg, mem, EventFd::new(EFD_NONBLOCK).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(err, VirtioError::Tap(TapError::InvalidName(_))),
        "{err}"
    );
}

// ----- randomized hostile rings -----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl Harness {
    /// Run the event loop until nothing is immediately pending (bounded).
    fn pump(&mut self) {
        for _ in 0..64 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
    }
}

fn random_desc(h: &Harness, q: &GuestQueue, rng: &mut Rng, i: u16) {
    let addr = match rng.below(4) {
        0 => rng.next(),
        1 => MEM_SIZE as u64 - rng.below(0x2000),
        _ => TX_BUF_BASE + rng.below(0x10000),
    };
    let len = match rng.below(4) {
        0 => rng.next() as u32,
        1 => 70000 + rng.below(10000) as u32,
        _ => rng.below(2048) as u32,
    };
    let flags = rng.below(8) as u16;
    let next = if rng.below(4) == 0 {
        rng.next() as u16
    } else {
        rng.below(u64::from(q.size)) as u16
    };
    q.write_desc(&h.mem, i, addr, len, flags, next);
}

#[test]
fn random_hostile_rings_never_panic_or_hang() {
    if crate::net::testutil::skip_without_tap("random_hostile_rings_never_panic_or_hang") {
        return;
    }
    let mut h = Harness::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut resets = 0;
    for round in 0..150u32 {
        // A fresh driver instance on small queues.
        h.txq = GuestQueue::new(TXQ_BASE, 16);
        h.rxq = GuestQueue::new(RXQ_BASE, 16);
        let features = BASE_FEATURES
            | if round % 2 == 0 {
                bit(VIRTIO_NET_F_MRG_RXBUF)
            } else {
                0
            }
            | if round % 3 == 0 {
                bit(VIRTIO_RING_F_EVENT_IDX)
            } else {
                0
            };
        h.negotiate(features);
        h.setup_queue(0, &h.rxq, 16);
        h.setup_queue(1, &h.txq, 16);
        h.driver_ok();
        for q in [&h.txq, &h.rxq] {
            for i in 0..16 {
                random_desc(&h, q, &mut rng, i);
            }
        }
        for _ in 0..rng.below(24) {
            let head = if rng.below(8) == 0 {
                rng.next() as u16
            } else {
                rng.below(16) as u16
            };
            if rng.below(2) == 0 {
                h.txq.push_avail(&h.mem, head);
            } else {
                h.rxq.push_avail(&h.mem, head);
            }
        }
        if rng.below(10) == 0 {
            // Wild available index.
            h.mem
                .write_obj(rng.next() as u16, GuestAddress(h.txq.avail + 2))
                .unwrap();
        }
        h.peer
            .send(&test_frame(0xc0, 60 + rng.below(1400) as usize))
            .unwrap();
        h.kick(1);
        h.kick(0);
        h.pump();
        let status = h.status();
        if status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            resets += 1;
        } else {
            // Whatever was returned names a real descriptor and a sane length.
            for q in [&h.txq, &h.rxq] {
                let used = q.used_idx(&h.mem);
                let avail: u16 = h.mem.read_obj(GuestAddress(q.avail + 2)).unwrap();
                assert!(used <= avail, "used {used} > avail {avail}");
                for k in 0..used.min(16) {
                    let (id, len) = q.used_elem(&h.mem, k);
                    assert!(id < 16, "used id {id}");
                    assert!(len as usize <= RX_FRAME_BUF_LEN, "used len {len}");
                }
            }
        }
        // Clean the rings for the next round.
        h.w32(VIRTIO_MMIO_STATUS, 0);
        h.pump();
        for base in [TXQ_BASE, RXQ_BASE] {
            h.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(base))
                .unwrap();
        }
    }
    // The rounds above must have hit both outcomes.
    let m = h.metrics();
    println!("hostile rounds: {resets} needed reset; {m:?}");
    assert!(resets > 0 && resets < 150, "resets {resets}");
    assert!(m.invalid_descriptors > 0);
    // And the device still works for a well-behaved driver.
    h.txq = GuestQueue::new(TXQ_BASE, 256);
    h.rxq = GuestQueue::new(RXQ_BASE, 256);
    h.start(BASE_FEATURES);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x3_0000);
}

#[test]
fn failed_status_stops_the_device() {
    if crate::net::testutil::skip_without_tap("failed_status_stops_the_device") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    let s = h.status();
    h.w32(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FAILED);
    assert_ne!(h.status() & VIRTIO_CONFIG_S_FAILED, 0);
    h.settle();
    h.txq.add_chain(&h.mem, &[(TX_BUF_BASE, 100, 0)]);
    h.kick(1);
    h.settle();
    assert_eq!(
        h.txq.used_idx(&h.mem),
        0,
        "a failed device must not touch the rings"
    );
    assert_eq!(h.metrics().tx_frames, 0);
    // Reset brings it back.
    assert_recovers(&mut h);
}

#[test]
fn rx_interrupts_follow_used_event() {
    if crate::net::testutil::skip_without_tap("rx_interrupts_follow_used_event") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES | bit(VIRTIO_RING_F_EVENT_IDX));
    h.post_rx(8, 2048);
    h.settle();
    h.irq_count();
    // No interrupt wanted before the second used entry.
    h.rxq.set_used_event(&h.mem, 1);
    let f1 = test_frame(0xd0, 100);
    h.peer.send(&f1).unwrap();
    let mut from = 0;
    h.wait_rx(&f1[12..20], &mut from);
    assert_eq!(h.irq_count(), 0, "interrupt before used_event was passed");
    let f2 = test_frame(0xd1, 100);
    h.peer.send(&f2).unwrap();
    h.wait_rx(&f2[12..20], &mut from);
    assert_eq!(h.irq_count(), 1);
}

// ----- batches: many chains per kick, malicious chains among them -----

/// Put `hdr + frame` at `at` without publishing it.
fn stage_tx(h: &Harness, at: u64, frame: &[u8]) {
    h.mem
        .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(at))
        .unwrap();
    h.mem
        .write_slice(frame, GuestAddress(at + VNET_HDR_LEN as u64))
        .unwrap();
}

#[test]
fn tx_batch_with_malicious_chains_in_the_middle() {
    if crate::net::testutil::skip_without_tap("tx_batch_with_malicious_chains_in_the_middle") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    let good: Vec<Vec<u8>> = (0..3).map(|i| test_frame(0x60 + i, 120)).collect();
    let len = (VNET_HDR_LEN + 120) as u32;
    let mut heads = Vec::new();
    stage_tx(&h, TX_BUF_BASE, &good[0]);
    heads.push(h.txq.add_chain(&h.mem, &[(TX_BUF_BASE, len, 0)]));
    // Outside guest memory.
    heads.push(h.txq.add_chain(&h.mem, &[(MEM_SIZE as u64 - 8, 64, 0)]));
    stage_tx(&h, TX_BUF_BASE + 0x1000, &good[1]);
    heads.push(h.txq.add_chain(&h.mem, &[(TX_BUF_BASE + 0x1000, len, 0)]));
    // Device-writable (wrong direction for TX).
    heads.push(h.txq.add_chain(
        &h.mem,
        &[(TX_BUF_BASE + 0x2000, 64, VRING_DESC_F_WRITE as u16)],
    ));
    // Shorter than the virtio-net header.
    heads.push(h.txq.add_chain(&h.mem, &[(TX_BUF_BASE + 0x3000, 4, 0)]));
    stage_tx(&h, TX_BUF_BASE + 0x4000, &good[2]);
    heads.push(h.txq.add_chain(&h.mem, &[(TX_BUF_BASE + 0x4000, len, 0)]));
    // One kick for the whole batch.
    h.kick(1);
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 6));
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(h.txq.used_elem(&h.mem, i as u16), (u32::from(*head), 0));
    }
    for f in &good {
        assert_eq!(h.peer.recv_matching(&f[12..20]).unwrap(), *f);
    }
    let m = h.metrics();
    assert_eq!((m.tx_frames, m.invalid_descriptors), (3, 3));
    assert_eq!(h.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert!(h.irq_count() >= 1);
    assert_tx_works(&mut h, TX_BUF_BASE + 0x8000);
}

#[test]
fn tx_batch_bad_head_after_good_frames_needs_reset() {
    if crate::net::testutil::skip_without_tap("tx_batch_bad_head_after_good_frames_needs_reset") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    let f = test_frame(0x66, 100);
    stage_tx(&h, TX_BUF_BASE, &f);
    h.txq
        .add_chain(&h.mem, &[(TX_BUF_BASE, (VNET_HDR_LEN + 100) as u32, 0)]);
    h.txq.push_avail(&h.mem, 256);
    h.kick(1);
    assert!(h.run_until(|h| h.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0));
    // The frame before the bad head went out; nothing after it is processed.
    assert_eq!(h.peer.recv_matching(&f[12..20]).unwrap(), f);
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn tx_batch_avail_index_beyond_the_ring_in_a_later_batch() {
    if crate::net::testutil::skip_without_tap(
        "tx_batch_avail_index_beyond_the_ring_in_a_later_batch",
    ) {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    assert_tx_works(&mut h, TX_BUF_BASE);
    // The driver claims 300 new chains in a 256-entry ring.
    let bogus = h.txq.avail_idx.wrapping_add(300);
    h.mem
        .write_obj(bogus.to_le(), GuestAddress(h.txq.avail + 2))
        .unwrap();
    h.kick(1);
    assert!(h.run_until(|h| h.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0));
    assert_needs_reset(&mut h);
    assert_recovers(&mut h);
}

#[test]
fn rx_batch_fills_many_chains_around_a_malicious_one() {
    if crate::net::testutil::skip_without_tap("rx_batch_fills_many_chains_around_a_malicious_one") {
        return;
    }
    let mut h = Harness::new();
    h.start(BASE_FEATURES);
    // Frames wait in the tap before any buffer exists, so one pass takes them all.
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|i| test_frame(0x70 + i, 200 + 50 * i as usize))
        .collect();
    for f in &frames {
        h.peer.send(f).unwrap();
    }
    h.settle();
    assert_eq!(h.rxq.used_idx(&h.mem), 0);
    // good, read-only (invalid for RX), outside memory, good x3 — one kick.
    let i = u64::from(h.rxq.next_desc);
    let w = VRING_DESC_F_WRITE as u16;
    h.rxq
        .add_chain(&h.mem, &[(RX_BUF_BASE + i * 0x1_0000, 2048, w)]);
    let bad1 = h.rxq.add_chain(&h.mem, &[(RX_BUF_BASE, 2048, 0)]);
    let bad2 = h.rxq.add_chain(&h.mem, &[(MEM_SIZE as u64 - 16, 2048, w)]);
    for _ in 0..3 {
        let i = u64::from(h.rxq.next_desc);
        h.rxq
            .add_chain(&h.mem, &[(RX_BUF_BASE + i * 0x1_0000, 2048, w)]);
    }
    h.kick(0);
    assert!(h.run_until(|h| h.rxq.used_idx(&h.mem) >= 6));
    let mut got = Vec::new();
    let mut bad_seen = Vec::new();
    for k in 0..6u16 {
        let (id, len) = h.rxq.used_elem(&h.mem, k);
        if id == u32::from(bad1) || id == u32::from(bad2) {
            assert_eq!(len, 0, "an invalid chain was written to");
            bad_seen.push(id);
            continue;
        }
        let (_, frame, n) = h.read_rx(k);
        assert_eq!(n, 1);
        got.push(frame);
    }
    assert_eq!(bad_seen.len(), 2);
    // Every test frame arrived, in order (the tap may carry other traffic in between).
    let ours: Vec<&Vec<u8>> = got.iter().filter(|g| frames.contains(g)).collect();
    assert_eq!(ours, frames.iter().collect::<Vec<_>>());
    assert_eq!(h.metrics().invalid_descriptors, 2);
    assert_eq!(h.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn rx_batch_runs_out_of_buffers_midway_and_resumes() {
    if crate::net::testutil::skip_without_tap("rx_batch_runs_out_of_buffers_midway_and_resumes") {
        return;
    }
    let mut h = Harness::new();
    h.start(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| test_frame(0x78 + i, 300)).collect();
    h.post_rx(2, 2048);
    h.settle();
    for f in &frames {
        h.peer.send(f).unwrap();
    }
    assert!(h.run_until(|h| h.rxq.used_idx(&h.mem) == 2));
    h.settle();
    assert_eq!(h.rxq.used_idx(&h.mem), 2, "used more chains than posted");
    // The device asked to be told about the next buffer, then takes the rest.
    assert_eq!(h.rxq.avail_event(&h.mem), 2);
    h.post_rx(8, 2048);
    let mut from = 0;
    let mut got = Vec::new();
    while got.len() < frames.len() {
        let start = from;
        assert!(h.run_until(|h| h.rxq.used_idx(&h.mem) != start));
        let (_, frame, n) = h.read_rx(from);
        from = from.wrapping_add(n);
        if frames.contains(&frame) {
            got.push(frame);
        }
    }
    assert_eq!(got, frames);
    assert_eq!(h.metrics().rx_dropped, 0);
}

/// A started device whose guest memory is two adjacent regions (two host mappings); returns
/// it and the guest address where the second region starts.
fn two_region_harness() -> (Harness, u64) {
    let name = unique_ifname("vn");
    let cfg = NetConfig {
        backend: NetBackend::Tap { name: name.clone() },
        mac: None,
    };
    let half = MEM_SIZE / 2;
    let ranges = [(GuestAddress(0), half), (GuestAddress(half as u64), half)];
    let mut h = Harness::with_memory(&cfg, &ranges, || {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        netlink::set_link_up(&name, true).unwrap();
        netlink::link_index(&name).unwrap()
    });
    h.start(BASE_FEATURES);
    (h, half as u64)
}

#[test]
fn tx_buffer_spanning_two_memory_regions_is_copied_not_dropped() {
    if crate::net::testutil::skip_without_tap(
        "tx_buffer_spanning_two_memory_regions_is_copied_not_dropped",
    ) {
        return;
    }
    // Two adjacent regions (two host mappings): a buffer across the boundary cannot be
    // written straight from guest memory with one iovec, so the device copies it first.
    let (mut h, boundary) = two_region_harness();
    let f = test_frame(0x6a, 400);
    let at = boundary - 100;
    stage_tx(&h, at, &f);
    h.txq
        .add_chain(&h.mem, &[(at, (VNET_HDR_LEN + f.len()) as u32, 0)]);
    h.kick(1);
    assert!(h.run_until(|h| h.txq.used_idx(&h.mem) == 1));
    assert_eq!(h.peer.recv_matching(&f[12..20]).unwrap(), f);
    let m = h.metrics();
    assert_eq!((m.tx_frames, m.invalid_descriptors), (1, 0));
}

#[test]
fn rx_buffer_spanning_two_memory_regions_is_filled_through_a_copy() {
    if crate::net::testutil::skip_without_tap(
        "rx_buffer_spanning_two_memory_regions_is_filled_through_a_copy",
    ) {
        return;
    }
    // The device reads each frame into its own buffer, then copies it into the guest's: here
    // in two pieces, one per host mapping.
    let (mut h, boundary) = two_region_harness();
    let at = boundary - 100;
    h.rxq
        .add_chain(&h.mem, &[(at, 2048, VRING_DESC_F_WRITE as u16)]);
    h.kick(0);
    h.settle();
    let f = test_frame(0x6b, 400);
    h.peer.send(&f).unwrap();
    assert!(h.run_until(|h| h.rxq.used_idx(&h.mem) == 1));
    let (_, len) = h.rxq.used_elem(&h.mem, 0);
    assert_eq!(len as usize, VNET_HDR_LEN + f.len());
    let mut buf = vec![0u8; len as usize];
    h.mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
    assert_eq!(&buf[10..12], &1u16.to_le_bytes(), "num_buffers");
    assert_eq!(&buf[VNET_HDR_LEN..], &f[..]);
}

#[test]
fn rx_header_split_over_descriptors_gets_num_buffers() {
    if crate::net::testutil::skip_without_tap("rx_header_split_over_descriptors_gets_num_buffers") {
        return;
    }
    // The frame is read straight into the chain; num_buffers (header bytes 10..12) then lies
    // in the second descriptor of the chain.
    let mut h = Harness::new();
    h.start(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
    let (a, b) = (RX_BUF_BASE, RX_BUF_BASE + 0x1_0000);
    h.rxq.add_chain(
        &h.mem,
        &[
            (a, 11, VRING_DESC_F_WRITE as u16),
            (b, 2048, VRING_DESC_F_WRITE as u16),
        ],
    );
    h.kick(0);
    h.settle();
    let f = test_frame(0x6c, 300);
    h.peer.send(&f).unwrap();
    assert!(h.run_until(|h| h.rxq.used_idx(&h.mem) == 1));
    let (_, len) = h.rxq.used_elem(&h.mem, 0);
    assert_eq!(len as usize, VNET_HDR_LEN + f.len());
    let mut first = [0u8; 11];
    h.mem.read_slice(&mut first, GuestAddress(a)).unwrap();
    let mut rest = vec![0u8; len as usize - 11];
    h.mem.read_slice(&mut rest, GuestAddress(b)).unwrap();
    assert_eq!(
        [first[10], rest[0]],
        1u16.to_le_bytes(),
        "num_buffers across descriptors"
    );
    assert_eq!(&rest[1..], &f[..]);
}

/// CPU time of the receive path per frame (backend read + placing it in the guest's
/// buffers), measured on this thread alone, so unlike the side-by-side benchmark it does not
/// depend on what else the host schedules: `cargo test --release -p vessel-vmm --lib
/// rx_cost_per_frame -- --ignored --nocapture`. A measurement for comparing variants of the
/// receive path (it showed that reading straight into guest buffers with readv(2) costs
/// 16-25 % more per frame on this kernel than read(2) plus a copy); it only checks that
/// every frame arrived.
#[test]
#[ignore]
fn rx_cost_per_frame() {
    if crate::net::testutil::skip_without_tap("rx_cost_per_frame") {
        return;
    }
    fn thread_cpu_ns() -> u64 {
        // SAFETY: timespec is plain old data that clock_gettime fills in.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid clock id and pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    for len in [64usize, 1514] {
        let mut h = Harness::new();
        h.start(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
        let (rounds, per_round) = (300u64, 200u64);
        let frame = test_frame(0x70, len - 14);
        let mut cpu = 0u64;
        let mut done = 0u64;
        for _ in 0..rounds {
            h.post_rx(per_round as usize, 2048);
            for _ in 0..per_round {
                h.peer.send(&frame).unwrap();
            }
            let mut dev = h.dev.lock().unwrap();
            dev.rx_blocked = false;
            let target = done + per_round;
            let t0 = thread_cpu_ns();
            let mut spins = 0;
            while dev.metrics_snapshot().rx_frames < target && spins < 100_000 {
                dev.process_rx();
                spins += 1;
            }
            cpu += thread_cpu_ns() - t0;
            done = dev.metrics_snapshot().rx_frames;
            drop(dev);
            h.settle();
        }
        assert_eq!(done, rounds * per_round, "frames lost");
        println!(
            "rx {len:4} B: {:.3} µs CPU per frame over {done} frames",
            cpu as f64 / 1e3 / done as f64
        );
    }
}
