//! The virtio-mmio (version 2, "modern") register window, independent of the device type.
//!
//! [`MmioTransport`] decodes guest accesses to the common registers and keeps the transport
//! state (feature negotiation, device status, per-queue configuration, interrupt status). What
//! the device model must do in response is returned as an [`Action`]. Device-specific
//! configuration space (offset 0x100 on) is left to the caller.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The transport version implemented (modern).
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported by Vessel devices ("VSSL").
pub const VENDOR_ID: u32 = 0x4c53_5356;
/// Size of the register window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// The driver-written configuration of one virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRegs {
    /// Largest size the device accepts (QueueNumMax).
    pub max_size: u16,
    /// Size written by the driver (QueueNum), unchecked.
    pub size: u32,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub avail: u64,
    /// Device (used) ring address.
    pub used: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// What the device model has to do after a register write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond the register update.
    None,
    /// The driver wrote 0 to Status: the device must return to its initial state. The
    /// transport has already reset itself.
    Reset,
    /// The driver set DRIVER_OK after a successful feature negotiation: start the device.
    Activate,
    /// The driver set FAILED: stop using the queues.
    Failed,
    /// The driver wrote the index of a queue to QueueNotify.
    Notify(u32),
}

/// Common virtio-mmio transport state.
#[derive(Debug)]
pub struct MmioTransport {
    device_id: u32,
    avail_features: u64,
    acked_features: u64,
    acked_beyond_64: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    /// `(feature bit, mask)`: acking the feature requires acking at least one bit of mask.
    dependencies: Vec<(u32, u64)>,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
}

fn le32(data: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = data.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn set_half(reg: &mut u64, high: bool, v: u32) {
    if high {
        *reg = (*reg & 0xffff_ffff) | (u64::from(v) << 32);
    } else {
        *reg = (*reg & !0xffff_ffff) | u64::from(v);
    }
}

impl MmioTransport {
    /// A transport for device type `device_id` offering `avail_features`, with one queue per
    /// entry of `queue_max_sizes`.
    pub fn new(device_id: u32, avail_features: u64, queue_max_sizes: &[u16]) -> Self {
        MmioTransport {
            device_id,
            avail_features,
            acked_features: 0,
            acked_beyond_64: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues: queue_max_sizes.iter().map(|&m| QueueRegs::new(m)).collect(),
            dependencies: Vec::new(),
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
        }
    }

    /// Declare feature dependencies: for each `(bit, mask)`, a driver that acks `bit` must
    /// also ack at least one feature of `mask`, or FEATURES_OK is refused.
    pub fn with_dependencies(mut self, deps: &[(u32, u64)]) -> Self {
        self.dependencies = deps.to_vec();
        self
    }

    fn dependencies_met(&self) -> bool {
        self.dependencies.iter().all(|&(b, mask)| {
            b >= 64 || self.acked_features & (1u64 << b) == 0 || self.acked_features & mask != 0
        })
    }

    /// Return every register to its power-on value.
    pub fn reset(&mut self) {
        self.acked_features = 0;
        self.acked_beyond_64 = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        self.status = 0;
        self.interrupt_status = 0;
    }

    /// Features offered by the device.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Features acknowledged by the driver (meaningful once FEATURES_OK is set).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether feature bit `bit` was negotiated.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.acked_features & (1u64 << bit) != 0
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver has set DRIVER_OK (and the device has not been reset since).
    pub fn driver_ok(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    /// Set DEVICE_NEEDS_RESET in the status register.
    pub fn set_needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    }

    /// The per-queue configuration written by the driver.
    pub fn queues(&self) -> &[QueueRegs] {
        &self.queues
    }

    /// OR `bits` (`VIRTIO_MMIO_INT_*`) into InterruptStatus.
    pub fn raise_interrupt(&mut self, bits: u32) {
        self.interrupt_status |= bits;
    }

    /// The InterruptStatus register.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Read a common register (`offset` < 0x100). Non-32-bit accesses read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 || offset % 4 != 0 || offset >= CONFIG_SPACE_OFFSET {
            return;
        }
        let q = self.queues.get(self.queue_sel as usize);
        let v: u32 = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_id,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size)),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // SHM regions: none. Reading a length of all ones means "no such region".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Write a common register (`offset` < 0x100). Non-32-bit accesses are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let Some(v) = le32(data) else {
            return Action::None;
        };
        if offset % 4 != 0 || offset >= CONFIG_SPACE_OFFSET {
            return Action::None;
        }
        let features_writable = self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
        let queue_writable = !self.driver_ok() && self.status & VIRTIO_CONFIG_S_FAILED == 0;
        let sel = self.queue_sel as usize;
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES if features_writable => {
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    // Feature bits beyond 63 are never offered: acking one is remembered so
                    // that FEATURES_OK is refused.
                    _ => self.acked_beyond_64 |= v != 0,
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NOTIFY => return Action::Notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => return self.write_status(v),
            reg if queue_writable => {
                let Some(q) = self.queues.get_mut(sel) else {
                    return Action::None;
                };
                match reg {
                    VIRTIO_MMIO_QUEUE_READY => q.ready = v == 1,
                    // The queue layout is frozen while the queue is enabled.
                    _ if q.ready => {}
                    VIRTIO_MMIO_QUEUE_NUM => q.size = v,
                    VIRTIO_MMIO_QUEUE_DESC_LOW => set_half(&mut q.desc, false, v),
                    VIRTIO_MMIO_QUEUE_DESC_HIGH => set_half(&mut q.desc, true, v),
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW => set_half(&mut q.avail, false, v),
                    VIRTIO_MMIO_QUEUE_AVAIL_HIGH => set_half(&mut q.avail, true, v),
                    VIRTIO_MMIO_QUEUE_USED_LOW => set_half(&mut q.used, false, v),
                    VIRTIO_MMIO_QUEUE_USED_HIGH => set_half(&mut q.used, true, v),
                    _ => {}
                }
            }
            _ => {}
        }
        Action::None
    }

    fn write_status(&mut self, v: u32) -> Action {
        if v == 0 {
            self.reset();
            return Action::Reset;
        }
        let old = self.status;
        // The driver may only add bits (spec 2.1.2); anything else is ignored.
        if v & old != old {
            return Action::None;
        }
        let new = v & !old;
        let mut status = v;
        if new & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status = status;
            return Action::Failed;
        }
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let ok = old & VIRTIO_CONFIG_S_DRIVER != 0
                && !self.acked_beyond_64
                && self.acked_features & !self.avail_features == 0
                && self.acked_features & (1u64 << VIRTIO_F_VERSION_1) != 0
                && self.dependencies_met();
            if !ok {
                status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                status &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else {
                self.status = status;
                return Action::Activate;
            }
        }
        self.status = status;
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;

    fn rd(t: &MmioTransport, off: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u32, v: u32) -> Action {
        t.write(u64::from(off), &v.to_le_bytes())
    }

    const FEATS: u64 = (1 << VIRTIO_F_VERSION_1) | 0b101;

    #[test]
    fn identification_registers() {
        let t = MmioTransport::new(1, FEATS, &[256, 256]);
        assert_eq!(rd(&t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&t, VIRTIO_MMIO_DEVICE_ID), 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        // Narrow or misaligned accesses read zero and never panic.
        let mut b = [0xffu8; 2];
        t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        t.read(2, &mut b);
        assert_eq!(b, [0; 4]);
        let mut b = [0xffu8; 8];
        t.read(0, &mut b);
        assert_eq!(b, [0; 8]);
    }

    #[test]
    fn features_are_selected_by_word_and_unoffered_acks_refuse_features_ok() {
        let mut t = MmioTransport::new(1, FEATS, &[256]);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&t, VIRTIO_MMIO_DEVICE_FEATURES), 0b101);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&t, VIRTIO_MMIO_DEVICE_FEATURES), 0);

        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        wr(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(&mut t, VIRTIO_MMIO_STATUS, s);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0b111); // bit 1 not offered
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(rd(&t, VIRTIO_MMIO_STATUS), s, "FEATURES_OK must be refused");
        // DRIVER_OK without FEATURES_OK does not activate.
        assert_eq!(
            wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK),
            Action::None
        );

        // Without VERSION_1 the modern device refuses too.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0b101);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
        wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(rd(&t, VIRTIO_MMIO_STATUS), s);

        // A selector past the 64 offered bits cannot sneak a bit in.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 5);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(rd(&t, VIRTIO_MMIO_STATUS), s);

        // Reset clears it all; then a valid negotiation goes through.
        assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, 0), Action::Reset);
        assert_eq!(t.acked_features(), 0);
        wr(&mut t, VIRTIO_MMIO_STATUS, s);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(rd(&t, VIRTIO_MMIO_STATUS), s | VIRTIO_CONFIG_S_FEATURES_OK);
        // Features are frozen after FEATURES_OK.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0b100);
        assert_eq!(t.acked_features(), 1 << 32);
        assert_eq!(
            wr(
                &mut t,
                VIRTIO_MMIO_STATUS,
                s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK
            ),
            Action::Activate
        );
        // Clearing bits is ignored.
        wr(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert!(t.driver_ok());
    }

    #[test]
    fn feature_dependencies_are_enforced() {
        let mut t = MmioTransport::new(1, FEATS, &[256]).with_dependencies(&[(2, 0b1)]);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        wr(&mut t, VIRTIO_MMIO_STATUS, s);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0b100);
        wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(
            rd(&t, VIRTIO_MMIO_STATUS),
            s,
            "bit 2 without bit 0 accepted"
        );
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0b101);
        wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(rd(&t, VIRTIO_MMIO_STATUS), s | VIRTIO_CONFIG_S_FEATURES_OK);
    }

    #[test]
    fn queue_registers_select_and_freeze_when_ready() {
        let mut t = MmioTransport::new(1, FEATS, &[256, 128]);
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 128);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 64);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_READY), 1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 32);
        let q = t.queues()[1];
        assert_eq!(
            (q.size, q.desc, q.avail, q.used),
            (64, 0x1_0000_1000, 0x2000, 0x3000)
        );
        // A selector past the last queue reads as absent and writes go nowhere.
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 9);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        assert_eq!(wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1), Action::Notify(1));
        t.raise_interrupt(3);
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(t.queues()[1], QueueRegs::new(128));
        assert_eq!(rd(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn every_offset_and_size_is_safe() {
        let mut t = MmioTransport::new(1, FEATS, &[256, 256]);
        for off in 0..0x110u64 {
            for len in [1usize, 2, 3, 4, 8] {
                let mut b = vec![0u8; len];
                t.read(off, &mut b);
                let _ = t.write(off, &[0xff; 8][..len]);
            }
        }
    }
}
