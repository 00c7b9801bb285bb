//! virtio-net behind a virtio-mmio transport, backed by a tap or macvtap fd.
//!
//! Threading model: the vCPU thread that takes an MMIO exit calls [`BusDevice`] methods; the
//! VMM's event loop calls [`MutEventSubscriber`] methods. Both go through the same
//! `Arc<Mutex<VirtioMmioNet>>`. Register writes never touch epoll: when the driver sets
//! DRIVER_OK (or resets the device) the device signals its control eventfd, and the event loop
//! thread then (de)registers the queue eventfds and the backend fd. All frame processing
//! happens on the event loop thread; nothing here spins or starts threads.
//!
//! Queue 0 is receive (backend -> guest), queue 1 transmit (guest -> backend).
//!
//! Per wake-up the device does as much as there is: transmit drains every published chain
//! (up to [`BUDGET`] before yielding to the event loop), writing each frame with one writev(2)
//! straight from guest memory; receive reads the backend until it would block or the guest's
//! buffers run out. The avail index is read once per batch and the used index published once
//! per batch ([`super::ring`]), then at most one interrupt is raised, only if the driver asked
//! for it (EVENT_IDX `used_event`, or no VRING_AVAIL_F_NO_INTERRUPT). With EVENT_IDX the driver
//! is asked to kick again (`avail_event`) only once the ring is drained.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chain::{self, Segment};
use super::metrics::{NetMetrics, NetMetricsSnapshot};
use super::mmio::{Action, MmioTransport, CONFIG_SPACE_OFFSET};
use super::ring::{self, Avail, UsedBatch};
use super::{MacAddr, NetBackend, NetConfig};
use crate::devices::BusDevice;
use crate::net::tap::{offload, Tap, TapError, VNET_HDR_LEN};
use crate::net::{macvtap, MacvtapError};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// QueueNumMax of both queues.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// Offset of QueueNotify in the register window (for KVM_IOEVENTFD).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Largest TX descriptor chain accepted: a 12-byte header plus a 64 KiB GSO frame with
/// Ethernet and VLAN headers.
pub const MAX_TX_CHAIN_LEN: u64 = 65562;
/// Size of the buffer a frame from the backend is read into.
const RX_FRAME_BUF_LEN: usize = VNET_HDR_LEN + 65536 + 256;
/// Minimum frame read from the backend: header plus an Ethernet header.
const MIN_RX_FRAME_LEN: usize = VNET_HDR_LEN + 14;
/// Consecutive read errors after which the backend is considered dead.
const MAX_READ_ERRORS: u32 = 64;
/// Frames handled per event before yielding to the event loop.
pub const BUDGET: usize = 128;

const TAG_CONTROL: u32 = 0;
const TAG_RX_QUEUE: u32 = 1;
const TAG_TX_QUEUE: u32 = 2;
const TAG_BACKEND: u32 = 3;

/// Errors creating a virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The tap backend could not be opened.
    #[error("cannot open tap backend")]
    Tap(#[source] TapError),
    /// The macvtap backend could not be opened.
    #[error("cannot open macvtap backend")]
    Macvtap(#[source] MacvtapError),
    /// An eventfd could not be created.
    #[error("cannot create eventfd")]
    EventFd(#[source] io::Error),
}

/// Feature dependencies of virtio-net (virtio 1.2, 5.1.3.1).
const FEATURE_DEPENDENCIES: [(u32, u64); 8] = [
    (VIRTIO_NET_F_GUEST_TSO4, 1 << VIRTIO_NET_F_GUEST_CSUM),
    (VIRTIO_NET_F_GUEST_TSO6, 1 << VIRTIO_NET_F_GUEST_CSUM),
    (VIRTIO_NET_F_GUEST_UFO, 1 << VIRTIO_NET_F_GUEST_CSUM),
    (
        VIRTIO_NET_F_GUEST_ECN,
        (1 << VIRTIO_NET_F_GUEST_TSO4) | (1 << VIRTIO_NET_F_GUEST_TSO6),
    ),
    (VIRTIO_NET_F_HOST_TSO4, 1 << VIRTIO_NET_F_CSUM),
    (VIRTIO_NET_F_HOST_TSO6, 1 << VIRTIO_NET_F_CSUM),
    (VIRTIO_NET_F_HOST_UFO, 1 << VIRTIO_NET_F_CSUM),
    (
        VIRTIO_NET_F_HOST_ECN,
        (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6),
    ),
];

/// Outcome of trying to hand the pending backend frame to the guest.
enum Rx {
    Delivered,
    Dropped,
    NoBuffers,
    Broken,
}

/// A virtio-net device on the virtio-mmio transport. See the module documentation.
pub struct VirtioMmioNet {
    transport: MmioTransport,
    mem: GuestMemoryMmap,
    irq: EventFd,
    backend: Tap,
    mac: Option<MacAddr>,
    config: [u8; 10],
    queue_evts: [EventFd; 2],
    control_evt: EventFd,
    /// The live queues; empty unless `active`.
    queues: Vec<Queue>,
    active: bool,
    /// DEVICE_NEEDS_RESET: the driver broke the rules; nothing runs until reset.
    broken: bool,
    /// The queue eventfds and backend fd are in the event loop's epoll set.
    registered: bool,
    backend_interest: EventSet,
    backend_dead: bool,
    /// Consecutive backend read errors; past [`MAX_READ_ERRORS`] the backend is dropped
    /// from the event loop so a permanently failing fd cannot spin it.
    read_errors: u32,
    rx_blocked: bool,
    tx_blocked: bool,
    rx_frame: Vec<u8>,
    rx_frame_len: usize,
    tx_frame: Vec<u8>,
    segs: Vec<Segment>,
    rx_segs: Vec<Segment>,
    rx_chains: Vec<(u16, usize, usize)>,
    /// Receive chains known to be published beyond `next_avail` (the avail index is read
    /// again only when they are used up).
    rx_avail: u16,
    /// Used elements not yet published, per queue.
    used: [UsedBatch; 2],
    /// iovecs of the frame being transmitted (pointers into guest memory).
    tx_iov: IovecBuf,
    metrics: Arc<NetMetrics>,
}

/// Reused storage for the iovecs of one transmitted frame.
#[derive(Default)]
struct IovecBuf(Vec<libc::iovec>);

// SAFETY: the pointers are only written and passed to writev(2) within one `tx_loop` call,
// while the guest memory they point into is borrowed; nothing dereferences them later, so
// moving the (stale) buffer to another thread is harmless.
unsafe impl Send for IovecBuf {}

/// Write one frame from guest memory to `fd` with a single writev(2), without copying it.
/// `None` if a segment is not one contiguous host mapping (the caller copies instead).
fn writev_guest(
    fd: &impl AsRawFd,
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    iov: &mut IovecBuf,
) -> Option<io::Result<usize>> {
    iov.0.clear();
    for seg in segs {
        let slice = mem.get_slice(seg.addr, seg.len as usize).ok()?;
        iov.0.push(libc::iovec {
            iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
            iov_len: slice.len(),
        });
    }
    let n = if let [one] = iov.0[..] {
        // One buffer (header and frame together, as most drivers send small frames): write(2)
        // skips writev's iovec import.
        // SAFETY: `one` points into guest memory that `mem` keeps mapped for the duration of
        // the call, with the length get_slice checked; write only reads from it.
        unsafe { libc::write(fd.as_raw_fd(), one.iov_base, one.iov_len) }
    } else {
        let count = libc::c_int::try_from(iov.0.len()).ok()?;
        // SAFETY: every iovec points into guest memory that `mem` keeps mapped for the
        // duration of the call, with the length get_slice checked; writev only reads them.
        unsafe { libc::writev(fd.as_raw_fd(), iov.0.as_ptr(), count) }
    };
    Some(if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    })
}

fn bit(b: u32) -> u64 {
    1u64 << b
}

impl VirtioMmioNet {
    /// Open the backend named by `cfg` (a tap by name through `/dev/net/tun`, created if
    /// missing; or the character device of an existing macvtap link) and build the device.
    /// `irq` is signalled (typically an irqfd) whenever the device raises its interrupt.
    pub fn new(cfg: &NetConfig, mem: GuestMemoryMmap, irq: EventFd) -> Result<Self, VirtioError> {
        let backend = match &cfg.backend {
            NetBackend::Tap { name } => Tap::open(name).map_err(VirtioError::Tap)?,
            NetBackend::Macvtap { link } => macvtap::open(link).map_err(VirtioError::Macvtap)?,
        };
        Self::with_backend(backend, cfg.mac, mem, irq)
    }

    /// Build the device over an already opened backend (tap or macvtap fd with a 12-byte
    /// vnet header).
    pub fn with_backend(
        backend: Tap,
        mac: Option<MacAddr>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> Result<Self, VirtioError> {
        let supported = backend.probe_offload(
            offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN | offload::UFO,
        );
        let mut features = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_STATUS);
        if mac.is_some() {
            features |= bit(VIRTIO_NET_F_MAC);
        }
        if supported & offload::CSUM != 0 {
            features |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM);
            if supported & offload::TSO4 != 0 {
                features |= bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO4);
            }
            if supported & offload::TSO6 != 0 {
                features |= bit(VIRTIO_NET_F_GUEST_TSO6) | bit(VIRTIO_NET_F_HOST_TSO6);
            }
            if supported & offload::TSO_ECN != 0 {
                features |= bit(VIRTIO_NET_F_GUEST_ECN) | bit(VIRTIO_NET_F_HOST_ECN);
            }
            if supported & offload::UFO != 0 {
                features |= bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_HOST_UFO);
            }
        }
        let mut config = [0u8; 10];
        if let Some(m) = mac {
            config[0..6].copy_from_slice(&m.0);
        }
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd);
        Ok(VirtioMmioNet {
            transport: MmioTransport::new(
                VIRTIO_ID_NET,
                features,
                &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE],
            )
            .with_dependencies(&FEATURE_DEPENDENCIES),
            mem,
            irq,
            backend,
            mac,
            config,
            queue_evts: [evt()?, evt()?],
            control_evt: evt()?,
            queues: Vec::new(),
            active: false,
            broken: false,
            registered: false,
            backend_interest: EventSet::empty(),
            backend_dead: false,
            read_errors: 0,
            rx_blocked: false,
            tx_blocked: false,
            rx_frame: vec![0u8; RX_FRAME_BUF_LEN],
            rx_frame_len: 0,
            tx_frame: vec![0u8; MAX_TX_CHAIN_LEN as usize],
            segs: Vec::with_capacity(16),
            rx_segs: Vec::with_capacity(64),
            rx_chains: Vec::with_capacity(32),
            rx_avail: 0,
            used: [UsedBatch::default(); 2],
            tx_iov: IovecBuf(Vec::with_capacity(16)),
            metrics: Arc::new(NetMetrics::default()),
        })
    }

    /// `(QueueNotify offset, queue index, eventfd)` for each queue, to register with
    /// `KVM_IOEVENTFD` (4-byte write with datamatch). Without them, MMIO writes to
    /// QueueNotify still work (the device signals the same eventfds itself).
    pub fn notify_events(&self) -> Vec<(u64, u32, EventFd)> {
        self.queue_evts
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((QUEUE_NOTIFY_OFFSET, i as u32, e.try_clone().ok()?)))
            .collect()
    }

    /// The device's counters (shared; read them at any time).
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// A snapshot of the counters.
    pub fn metrics_snapshot(&self) -> NetMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Name of the backend interface.
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// The configured guest MAC, if any.
    pub fn mac(&self) -> Option<MacAddr> {
        self.mac
    }

    /// Features offered to the driver.
    pub fn avail_features(&self) -> u64 {
        self.transport.avail_features()
    }

    /// The device status register (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK,
    /// DEVICE_NEEDS_RESET, FAILED bits).
    pub fn status(&self) -> u32 {
        self.transport.status()
    }

    fn has(&self, b: u32) -> bool {
        self.transport.has_feature(b)
    }

    fn can_run(&self) -> bool {
        self.active && !self.broken
    }

    fn signal(&mut self, bits: u32) {
        self.transport.raise_interrupt(bits);
        if self.irq.write(1).is_err() {
            NetMetrics::add(&self.metrics.backend_errors, 1);
        }
        NetMetrics::add(&self.metrics.interrupts, 1);
    }

    fn enter_needs_reset(&mut self) {
        if self.broken {
            return;
        }
        self.broken = true;
        self.transport.set_needs_reset();
        NetMetrics::add(&self.metrics.needs_reset, 1);
        self.signal(VIRTIO_MMIO_INT_CONFIG);
        // Let the event loop drop its interest in the backend.
        let _ = self.control_evt.write(1);
    }

    /// Build the queues from the transport registers and start; invalid layouts put the
    /// device in NEEDS_RESET.
    fn activate(&mut self) {
        let event_idx = self.has(VIRTIO_RING_F_EVENT_IDX);
        let mut queues = Vec::with_capacity(2);
        let mut valid = true;
        for regs in self.transport.queues() {
            let Ok(mut q) = Queue::new(regs.max_size) else {
                valid = false;
                break;
            };
            let ok = u16::try_from(regs.size)
                .ok()
                .is_some_and(|s| q.try_set_size(s).is_ok())
                && q.try_set_desc_table_address(GuestAddress(regs.desc))
                    .is_ok()
                && q.try_set_avail_ring_address(GuestAddress(regs.avail))
                    .is_ok()
                && q.try_set_used_ring_address(GuestAddress(regs.used)).is_ok();
            q.set_ready(regs.ready);
            q.set_event_idx(event_idx);
            if !ok || !q.is_valid(&self.mem) {
                valid = false;
                break;
            }
            queues.push(q);
        }
        self.active = true;
        self.rx_blocked = false;
        self.tx_blocked = false;
        self.rx_frame_len = 0;
        self.rx_avail = 0;
        self.used = [UsedBatch::default(); 2];
        if !valid {
            self.enter_needs_reset();
            return;
        }
        let mut guest_offload = 0;
        if self.has(VIRTIO_NET_F_GUEST_CSUM) {
            guest_offload |= offload::CSUM;
            if self.has(VIRTIO_NET_F_GUEST_TSO4) {
                guest_offload |= offload::TSO4;
            }
            if self.has(VIRTIO_NET_F_GUEST_TSO6) {
                guest_offload |= offload::TSO6;
            }
            if self.has(VIRTIO_NET_F_GUEST_ECN) {
                guest_offload |= offload::TSO_ECN;
            }
            if self.has(VIRTIO_NET_F_GUEST_UFO) {
                guest_offload |= offload::UFO;
            }
        }
        if self.backend.set_offload(guest_offload).is_err() {
            // The backend then sends plain frames only, which every driver accepts.
            NetMetrics::add(&self.metrics.backend_errors, 1);
        }
        self.queues = queues;
        let _ = self.control_evt.write(1);
    }

    fn deactivate(&mut self) {
        self.active = false;
        self.broken = false;
        self.queues.clear();
        self.rx_frame_len = 0;
        self.rx_avail = 0;
        self.used = [UsedBatch::default(); 2];
        self.rx_blocked = false;
        self.tx_blocked = false;
        let _ = self.backend.set_offload(0);
        let _ = self.control_evt.write(1);
    }

    /// Register or unregister the queue eventfds and the backend with the event loop to
    /// match the device state, and update the backend interest set.
    fn reconcile(&mut self, ops: &mut EventOps) {
        if self.active && !self.registered {
            let ok = ops
                .add(Events::with_data(
                    &self.queue_evts[RX_QUEUE],
                    TAG_RX_QUEUE,
                    EventSet::IN,
                ))
                .is_ok()
                & ops
                    .add(Events::with_data(
                        &self.queue_evts[TX_QUEUE],
                        TAG_TX_QUEUE,
                        EventSet::IN,
                    ))
                    .is_ok()
                & ops
                    .add(Events::with_data(
                        &self.backend,
                        TAG_BACKEND,
                        EventSet::empty(),
                    ))
                    .is_ok();
            if !ok {
                NetMetrics::add(&self.metrics.backend_errors, 1);
            }
            self.backend_interest = EventSet::empty();
            self.backend_dead = false;
            self.read_errors = 0;
            self.registered = true;
        } else if !self.active && self.registered {
            for (e, tag) in [
                (&self.queue_evts[RX_QUEUE], TAG_RX_QUEUE),
                (&self.queue_evts[TX_QUEUE], TAG_TX_QUEUE),
            ] {
                let _ = ops.remove(Events::with_data(e, tag, EventSet::IN));
            }
            if !self.backend_dead {
                let _ = ops.remove(Events::with_data(
                    &self.backend,
                    TAG_BACKEND,
                    self.backend_interest,
                ));
            }
            self.registered = false;
        }
        self.update_backend_interest(ops);
    }

    fn update_backend_interest(&mut self, ops: &mut EventOps) {
        if !self.registered || self.backend_dead {
            return;
        }
        if self.read_errors >= MAX_READ_ERRORS {
            self.remove_backend(ops);
            return;
        }
        let mut want = EventSet::empty();
        if self.can_run() {
            if !self.rx_blocked {
                want |= EventSet::IN;
            }
            if self.tx_blocked {
                want |= EventSet::OUT;
            }
        }
        if want != self.backend_interest {
            if ops
                .modify(Events::with_data(&self.backend, TAG_BACKEND, want))
                .is_err()
            {
                NetMetrics::add(&self.metrics.backend_errors, 1);
            }
            self.backend_interest = want;
        }
    }

    /// Stop watching a failed backend until the next activation.
    fn remove_backend(&mut self, ops: &mut EventOps) {
        if !self.backend_dead {
            let _ = ops.remove(Events::with_data(
                &self.backend,
                TAG_BACKEND,
                self.backend_interest,
            ));
            self.backend_dead = true;
        }
    }

    /// Publish the queue's used elements (one used-index store for the batch), then
    /// interrupt if the driver asked for it (EVENT_IDX `used_event`, or no
    /// VRING_AVAIL_F_NO_INTERRUPT without it).
    fn signal_used(&mut self, queue: usize) {
        let Some(q) = self.queues.get(queue) else {
            return;
        };
        let used = &mut self.used[queue];
        let res = used
            .publish(q, &self.mem)
            .and_then(|()| used.needs_interrupt(q, &self.mem));
        match res {
            Ok(true) => self.signal(VIRTIO_MMIO_INT_VRING),
            Ok(false) => {}
            Err(_) => self.enter_needs_reset(),
        }
    }

    /// Move frames from the backend into the guest's receive buffers.
    fn process_rx(&mut self) {
        let mut used_any = false;
        let mut budget = BUDGET;
        while self.can_run() && !self.rx_blocked {
            if budget == 0 {
                // More may be pending: come back after other events had their turn.
                let _ = self.queue_evts[RX_QUEUE].write(1);
                break;
            }
            budget -= 1;
            if self.rx_frame_len == 0 {
                match self.backend.read(&mut self.rx_frame) {
                    Ok(n) if n < MIN_RX_FRAME_LEN => {
                        self.read_errors = 0;
                        NetMetrics::add(&self.metrics.rx_dropped, 1);
                        continue;
                    }
                    Ok(n) => {
                        self.read_errors = 0;
                        self.rx_frame_len = n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        NetMetrics::add(&self.metrics.backend_errors, 1);
                        self.read_errors = self.read_errors.saturating_add(1);
                        break;
                    }
                }
            }
            match self.deliver_rx_frame(&mut used_any) {
                Rx::Delivered => self.rx_frame_len = 0,
                Rx::Dropped => {
                    NetMetrics::add(&self.metrics.rx_dropped, 1);
                    self.rx_frame_len = 0;
                }
                Rx::NoBuffers => match self.arm_rx_notification() {
                    Ok(true) => continue,
                    Ok(false) => self.rx_blocked = true,
                    Err(()) => self.enter_needs_reset(),
                },
                Rx::Broken => self.enter_needs_reset(),
            }
        }
        if used_any && !self.broken {
            self.signal_used(RX_QUEUE);
        }
    }

    /// Ask the driver to notify when it adds receive buffers beyond those present now.
    /// Returns whether buffers were added meanwhile.
    fn arm_rx_notification(&mut self) -> Result<bool, ()> {
        let mem = &self.mem;
        let q = self.queues.get_mut(RX_QUEUE).ok_or(())?;
        // A partly used frame leaves `next_avail` behind chains the driver already
        // published; with EVENT_IDX the request must name the current end of the ring.
        let saved = q.next_avail();
        let end = q.avail_idx(mem, Ordering::Acquire).map_err(|_| ())?;
        q.set_next_avail(end.0);
        let res = q.enable_notification(mem).map_err(|_| ());
        q.set_next_avail(saved);
        res
    }

    /// Try to place the frame in `rx_frame` into the receive queue (its used elements are
    /// published by [`Self::signal_used`]).
    fn deliver_rx_frame(&mut self, used_any: &mut bool) -> Rx {
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let Self {
            queues,
            mem,
            rx_frame,
            rx_frame_len,
            segs,
            rx_segs,
            rx_chains,
            rx_avail,
            used,
            metrics,
            ..
        } = self;
        let used = &mut used[RX_QUEUE];
        let Some(q) = queues.get_mut(RX_QUEUE) else {
            return Rx::Broken;
        };
        let frame_len = *rx_frame_len;
        let qsize = q.size();
        let desc_table = GuestAddress(q.desc_table());
        let mut start = q.next_avail();
        let mut cap: u64 = 0;
        rx_chains.clear();
        rx_segs.clear();
        while cap < frame_len as u64 {
            if *rx_avail == 0 {
                // Read the avail index only when the chains known to be there are used up.
                match Avail::snapshot(q, mem) {
                    Ok(a) => *rx_avail = a.pending,
                    Err(_) => return Rx::Broken,
                }
                if *rx_avail == 0 {
                    // The chains taken for this frame are pending again.
                    q.set_next_avail(start);
                    *rx_avail = rx_chains.len() as u16;
                    return Rx::NoBuffers;
                }
            }
            let head = match ring::take_head(q, mem) {
                Ok(h) => h,
                Err(_) => return Rx::Broken,
            };
            *rx_avail -= 1;
            match chain::walk(
                mem,
                desc_table,
                qsize,
                head,
                true,
                u64::from(u32::MAX),
                segs,
            ) {
                Ok(total) => {
                    let first = rx_segs.len();
                    rx_segs.extend_from_slice(segs);
                    rx_chains.push((head, first, rx_segs.len()));
                    cap += total;
                }
                Err(_) => {
                    // Give back the bad chain, and (unfilled) the ones taken before it, so
                    // no chain is both pending and used; the frame waits for good buffers.
                    NetMetrics::add(&metrics.invalid_descriptors, 1);
                    for &(h, _, _) in rx_chains.iter() {
                        if used.push(q, mem, h, 0).is_err() {
                            return Rx::Broken;
                        }
                    }
                    if used.push(q, mem, head, 0).is_err() {
                        return Rx::Broken;
                    }
                    *used_any = true;
                    rx_chains.clear();
                    rx_segs.clear();
                    cap = 0;
                    start = q.next_avail();
                    continue;
                }
            }
            let all_taken = rx_chains.len() >= usize::from(qsize);
            if cap < frame_len as u64 && (!mrg || all_taken) {
                // It can never fit: drop the frame, leave the buffers to the next one.
                *rx_avail += rx_chains.len() as u16;
                q.set_next_avail(start);
                return Rx::Dropped;
            }
        }

        let num_buffers = rx_chains.len() as u16;
        rx_frame[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0usize;
        for &(head, first, last) in rx_chains.iter() {
            let mut written = 0u32;
            for seg in &rx_segs[first..last] {
                if off >= frame_len {
                    break;
                }
                let n = (seg.len as usize).min(frame_len - off);
                if mem.write_slice(&rx_frame[off..off + n], seg.addr).is_err() {
                    return Rx::Broken;
                }
                off += n;
                written += n as u32;
            }
            if used.push(q, mem, head, written).is_err() {
                return Rx::Broken;
            }
        }
        *used_any = true;
        NetMetrics::add(&metrics.rx_frames, 1);
        NetMetrics::add(&metrics.rx_bytes, (frame_len - VNET_HDR_LEN) as u64);
        Rx::Delivered
    }

    /// Send the guest's transmit chains to the backend.
    fn process_tx(&mut self) {
        if !self.can_run() || self.tx_blocked {
            return;
        }
        let mut used_any = false;
        let broken = self.tx_loop(&mut used_any);
        if broken {
            self.enter_needs_reset();
        } else if used_any {
            self.signal_used(TX_QUEUE);
        }
    }

    /// The transmit loop; returns true if the driver broke the queue. Reads the avail index
    /// once per batch and leaves the used elements for [`Self::signal_used`] to publish.
    fn tx_loop(&mut self, used_any: &mut bool) -> bool {
        let Self {
            queues,
            mem,
            backend,
            tx_frame,
            segs,
            metrics,
            tx_blocked,
            queue_evts,
            used,
            tx_iov,
            ..
        } = self;
        let used = &mut used[TX_QUEUE];
        let Some(q) = queues.get_mut(TX_QUEUE) else {
            return true;
        };
        let qsize = q.size();
        let desc_table = GuestAddress(q.desc_table());
        let mut budget = BUDGET;
        loop {
            if q.disable_notification(&*mem).is_err() {
                return true;
            }
            loop {
                let Ok(avail) = Avail::snapshot(q, mem) else {
                    return true;
                };
                if avail.pending == 0 {
                    break;
                }
                for _ in 0..avail.pending {
                    if budget == 0 {
                        let _ = queue_evts[TX_QUEUE].write(1);
                        return false;
                    }
                    budget -= 1;
                    let Ok(head) = ring::take_head(q, mem) else {
                        return true;
                    };
                    match chain::walk(mem, desc_table, qsize, head, false, MAX_TX_CHAIN_LEN, segs) {
                        Ok(total) if total >= VNET_HDR_LEN as u64 => {
                            let res = match writev_guest(backend, mem, segs, tx_iov) {
                                Some(r) => r,
                                None => {
                                    // Not one host mapping per segment: copy, then write.
                                    let mut off = 0usize;
                                    for seg in segs.iter() {
                                        let end = off + seg.len as usize;
                                        if mem
                                            .read_slice(&mut tx_frame[off..end], seg.addr)
                                            .is_err()
                                        {
                                            return true;
                                        }
                                        off = end;
                                    }
                                    backend.write(&tx_frame[..off])
                                }
                            };
                            match res {
                                Ok(_) => {
                                    NetMetrics::add(&metrics.tx_frames, 1);
                                    NetMetrics::add(&metrics.tx_bytes, total - VNET_HDR_LEN as u64);
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    // Retry this chain when the backend is writable again.
                                    q.set_next_avail(q.next_avail().wrapping_sub(1));
                                    *tx_blocked = true;
                                    return false;
                                }
                                Err(_) => NetMetrics::add(&metrics.tx_dropped, 1),
                            }
                        }
                        _ => NetMetrics::add(&metrics.invalid_descriptors, 1),
                    }
                    if used.push(q, mem, head, 0).is_err() {
                        return true;
                    }
                    *used_any = true;
                }
                // Let a polling driver reclaim this batch while the next one is read.
                if used.publish(q, mem).is_err() {
                    return true;
                }
            }
            match q.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => return false,
                Err(_) => return true,
            }
        }
    }
}

impl std::fmt::Debug for VirtioMmioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioMmioNet")
            .field("backend", &self.backend.name())
            .field("mac", &self.mac)
            .field("status", &self.transport.status())
            .field("acked_features", &self.transport.acked_features())
            .field("active", &self.active)
            .field("needs_reset", &self.broken)
            .field("metrics", &self.metrics.snapshot())
            .finish()
    }
}

impl BusDevice for VirtioMmioNet {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            let base = offset - CONFIG_SPACE_OFFSET;
            for (i, b) in data.iter_mut().enumerate() {
                *b = base
                    .checked_add(i as u64)
                    .and_then(|o| usize::try_from(o).ok())
                    .and_then(|o| self.config.get(o).copied())
                    .unwrap_or(0);
            }
        } else {
            self.transport.read(offset, data);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            // The modern net config space is read-only.
            return;
        }
        match self.transport.write(offset, data) {
            Action::None => {}
            Action::Reset => self.deactivate(),
            Action::Failed => self.deactivate(),
            Action::Activate => self.activate(),
            Action::Notify(q) => {
                if let Some(e) = self.queue_evts.get(q as usize) {
                    let _ = e.write(1);
                }
            }
        }
    }
}

impl MutEventSubscriber for VirtioMmioNet {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::with_data(
                &self.control_evt,
                TAG_CONTROL,
                EventSet::IN,
            ))
            .is_err()
        {
            NetMetrics::add(&self.metrics.backend_errors, 1);
        }
        self.reconcile(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_CONTROL => {
                let _ = self.control_evt.read();
                self.reconcile(ops);
                self.process_rx();
                self.process_tx();
            }
            TAG_RX_QUEUE => {
                let _ = self.queue_evts[RX_QUEUE].read();
                // New receive buffers: the backend may be read again.
                self.rx_blocked = false;
                self.process_rx();
            }
            TAG_TX_QUEUE => {
                let _ = self.queue_evts[TX_QUEUE].read();
                self.process_tx();
            }
            TAG_BACKEND => {
                let set = events.event_set();
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    // A dead backend would report these forever: stop watching it.
                    NetMetrics::add(&self.metrics.backend_errors, 1);
                    self.remove_backend(ops);
                    return;
                }
                if set.contains(EventSet::OUT) {
                    self.tx_blocked = false;
                    self.process_tx();
                }
                if set.contains(EventSet::IN) {
                    self.process_rx();
                }
            }
            _ => {}
        }
        self.update_backend_interest(ops);
    }
}

#[cfg(test)]
mod tests;
