//! Batched access to a split virtqueue's rings.
//!
//! `virtio_queue::Queue` re-reads the driver's avail index for every chain it pops and
//! publishes the used index after every used element. With a driver polling the rings from
//! another CPU (Linux's NAPI/busy-poll, or the test guest), every one of those accesses moves a
//! cache line between the CPUs, several times per frame. The device here reads the avail index
//! once per batch ([`Avail::snapshot`]), takes the heads up to it, writes the used elements
//! ([`UsedBatch::push`]) and publishes the used index once ([`UsedBatch::publish`]), the way
//! Linux's vhost does. Hand-written because virtio-queue has no batch API; the `Queue` still
//! owns the configuration and the `next_avail`/`next_used` positions.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// The driver broke the ring protocol (or put a ring outside guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A ring field is not in guest memory.
    #[error("virtqueue ring outside guest memory")]
    Memory,
    /// The driver published more chains than the queue holds.
    #[error("avail index {avail} is {pending} entries past the device's position")]
    Overrun {
        /// The driver's avail index.
        avail: u16,
        /// Entries it claims are pending (more than the queue size).
        pending: u16,
    },
    /// A head index not below the queue size.
    #[error("descriptor head {0} out of range")]
    BadHead(u16),
}

/// The chains the driver had published when [`Avail::snapshot`] read its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avail {
    /// The avail index read.
    pub end: u16,
    /// Chains between the device's `next_avail` and `end`.
    pub pending: u16,
}

impl Avail {
    /// Read the avail index once (acquire: the ring entries and descriptors the driver wrote
    /// before it are visible afterwards). Fails if more than a queue's worth is pending.
    pub fn snapshot(q: &Queue, mem: &GuestMemoryMmap) -> Result<Avail, RingError> {
        let end = q
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|_| RingError::Memory)?;
        let pending = (end - Wrapping(q.next_avail())).0;
        if pending > q.size() {
            return Err(RingError::Overrun {
                avail: end.0,
                pending,
            });
        }
        Ok(Avail {
            end: end.0,
            pending,
        })
    }
}

/// Take the head at `next_avail` (the caller checked via [`Avail`] that one is pending) and
/// advance `next_avail`.
pub fn take_head(q: &mut Queue, mem: &GuestMemoryMmap) -> Result<u16, RingError> {
    let size = q.size();
    let slot = u64::from(q.next_avail() % size.max(1));
    let addr = GuestAddress(q.avail_ring())
        .checked_add(4 + 2 * slot)
        .ok_or(RingError::Memory)?;
    let head: u16 = mem
        .read_obj::<u16>(addr)
        .map(u16::from_le)
        .map_err(|_| RingError::Memory)?;
    if head >= size {
        return Err(RingError::BadHead(head));
    }
    q.set_next_avail(q.next_avail().wrapping_add(1));
    Ok(head)
}

/// Used elements written but not yet published, and the used index at the last interrupt
/// decision (Linux's `num_added` bookkeeping, kept here because the elements bypass
/// `Queue::add_used`).
#[derive(Debug, Default, Clone, Copy)]
pub struct UsedBatch {
    unpublished: u16,
    /// `next_used` when [`UsedBatch::needs_interrupt`] last ran.
    checked: u16,
}

impl UsedBatch {
    /// Forget everything (queue (re)activated: `next_used` is 0).
    pub fn reset(&mut self) {
        *self = UsedBatch::default();
    }

    /// Elements written since the last publish.
    pub fn unpublished(&self) -> u16 {
        self.unpublished
    }

    /// Write the used element for `head` (with `len` bytes written by the device) at
    /// `next_used`, without publishing it.
    pub fn push(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), RingError> {
        let size = q.size();
        if head >= size {
            return Err(RingError::BadHead(head));
        }
        let slot = u64::from(q.next_used() % size);
        let addr = GuestAddress(q.used_ring())
            .checked_add(4 + 8 * slot)
            .ok_or(RingError::Memory)?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr)
            .map_err(|_| RingError::Memory)?;
        q.set_next_used(q.next_used().wrapping_add(1));
        self.unpublished = self.unpublished.wrapping_add(1);
        Ok(())
    }

    /// Publish every pushed element with one store of the used index (release: the elements
    /// and the buffers they describe are visible before it).
    pub fn publish(&mut self, q: &Queue, mem: &GuestMemoryMmap) -> Result<(), RingError> {
        if self.unpublished == 0 {
            return Ok(());
        }
        let addr = GuestAddress(q.used_ring())
            .checked_add(2)
            .ok_or(RingError::Memory)?;
        mem.store(u16::to_le(q.next_used()), addr, Ordering::Release)
            .map_err(|_| RingError::Memory)?;
        self.unpublished = 0;
        Ok(())
    }

    /// Whether the driver wants an interrupt for the elements published since the last call:
    /// with EVENT_IDX, whether the used index passed `used_event`; otherwise unless the driver
    /// set VRING_AVAIL_F_NO_INTERRUPT.
    pub fn needs_interrupt(&mut self, q: &Queue, mem: &GuestMemoryMmap) -> Result<bool, RingError> {
        let new = q.next_used();
        let old = std::mem::replace(&mut self.checked, new);
        if new == old {
            return Ok(false);
        }
        // The used index store must be visible before the driver's suppression field is read
        // (it does the mirror image: writes used_event, then reads the used index).
        fence(Ordering::SeqCst);
        let avail = GuestAddress(q.avail_ring());
        if q.event_idx_enabled() {
            let addr = avail
                .checked_add(4 + 2 * u64::from(q.size()))
                .ok_or(RingError::Memory)?;
            let event = u16::from_le(mem.read_obj(addr).map_err(|_| RingError::Memory)?);
            Ok(need_event(event, new, old))
        } else {
            let flags = u16::from_le(mem.read_obj(avail).map_err(|_| RingError::Memory)?);
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
        }
    }
}

/// `vring_need_event`: whether moving an index from `old` to `new` passed `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn setup(size: u16, event_idx: bool) -> (GuestMemoryMmap, Queue) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut q = Queue::new(256).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        assert!(q.is_valid(&mem));
        (mem, q)
    }

    fn publish_avail(mem: &GuestMemoryMmap, size: u16, heads: &[u16], from: u16) -> u16 {
        let mut idx = from;
        for h in heads {
            let slot = u64::from(idx % size);
            mem.write_obj(h.to_le(), GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
            idx = idx.wrapping_add(1);
        }
        mem.write_obj(idx.to_le(), GuestAddress(AVAIL + 2)).unwrap();
        idx
    }

    fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    #[test]
    fn need_event_matches_the_spec_across_wraparound() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 10, 0));
        assert!(!need_event(10, 10, 0));
        assert!(need_event(65535, 2, 65530));
        assert!(!need_event(3, 2, 65530));
        assert!(!need_event(0, 0, 0));
    }

    #[test]
    fn snapshot_takes_heads_in_order_and_refuses_overrun() {
        let (mem, mut q) = setup(8, true);
        let end = publish_avail(&mem, 8, &[3, 1, 7], 0);
        let a = Avail::snapshot(&q, &mem).unwrap();
        assert_eq!(a, Avail { end: 3, pending: 3 });
        let heads: Vec<u16> = (0..a.pending)
            .map(|_| take_head(&mut q, &mem).unwrap())
            .collect();
        assert_eq!(heads, [3, 1, 7]);
        assert_eq!(q.next_avail(), end);
        // A driver claiming more than the queue holds is refused.
        mem.write_obj(12u16.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
        assert_eq!(
            Avail::snapshot(&q, &mem),
            Err(RingError::Overrun {
                avail: 12,
                pending: 9
            })
        );
    }

    #[test]
    fn out_of_range_head_is_refused() {
        let (mem, mut q) = setup(8, true);
        publish_avail(&mem, 8, &[8], 0);
        assert_eq!(Avail::snapshot(&q, &mem).unwrap().pending, 1);
        assert_eq!(take_head(&mut q, &mem), Err(RingError::BadHead(8)));
        assert_eq!(q.next_avail(), 0);
        let mut used = UsedBatch::default();
        assert_eq!(used.push(&mut q, &mem, 9, 0), Err(RingError::BadHead(9)));
        assert_eq!(used.unpublished(), 0);
    }

    #[test]
    fn used_elements_are_published_once_per_batch() {
        let (mem, mut q) = setup(4, true);
        let mut used = UsedBatch::default();
        for (i, h) in [2u16, 0, 3].iter().enumerate() {
            used.push(&mut q, &mem, *h, 100 + i as u32).unwrap();
            // Nothing is visible to the driver before the publish.
            assert_eq!(used_idx(&mem), 0);
        }
        used.publish(&q, &mem).unwrap();
        assert_eq!(used_idx(&mem), 3);
        let elem = |i: u64| -> (u32, u32) {
            (
                mem.read_obj(GuestAddress(USED + 4 + 8 * i)).unwrap(),
                mem.read_obj(GuestAddress(USED + 8 + 8 * i)).unwrap(),
            )
        };
        assert_eq!([elem(0), elem(1), elem(2)], [(2, 100), (0, 101), (3, 102)]);
        // Wrapping the ring reuses slot 0 after slot 3.
        used.push(&mut q, &mem, 1, 7).unwrap();
        used.push(&mut q, &mem, 1, 8).unwrap();
        used.publish(&q, &mem).unwrap();
        assert_eq!(used_idx(&mem), 5);
        assert_eq!(elem(0), (1, 8));
    }

    #[test]
    fn interrupts_follow_used_event_per_batch() {
        let (mem, mut q) = setup(8, true);
        let mut used = UsedBatch::default();
        let set_used_event = |v: u16| {
            mem.write_obj(v.to_le(), GuestAddress(AVAIL + 4 + 2 * 8))
                .unwrap()
        };
        set_used_event(2);
        used.push(&mut q, &mem, 0, 0).unwrap();
        used.push(&mut q, &mem, 1, 0).unwrap();
        used.publish(&q, &mem).unwrap();
        // used 0 -> 2 does not pass used_event 2 (it fires when element 2 is used).
        assert!(!used.needs_interrupt(&q, &mem).unwrap());
        used.push(&mut q, &mem, 2, 0).unwrap();
        used.push(&mut q, &mem, 3, 0).unwrap();
        used.publish(&q, &mem).unwrap();
        assert!(used.needs_interrupt(&q, &mem).unwrap());
        // Nothing new: no interrupt.
        assert!(!used.needs_interrupt(&q, &mem).unwrap());
    }

    #[test]
    fn no_interrupt_flag_without_event_idx() {
        let (mem, mut q) = setup(8, false);
        let mut used = UsedBatch::default();
        mem.write_obj(
            (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le(),
            GuestAddress(AVAIL),
        )
        .unwrap();
        used.push(&mut q, &mem, 0, 0).unwrap();
        used.publish(&q, &mem).unwrap();
        assert!(!used.needs_interrupt(&q, &mem).unwrap());
        mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
        used.push(&mut q, &mem, 1, 0).unwrap();
        used.publish(&q, &mem).unwrap();
        assert!(used.needs_interrupt(&q, &mem).unwrap());
    }

    #[test]
    fn rings_outside_memory_are_errors_not_panics() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let mut q = Queue::new(256).unwrap();
        q.set_size(8);
        q.set_avail_ring_address(Some(0x8000), Some(0));
        q.set_used_ring_address(Some(0x9000), Some(0));
        assert_eq!(Avail::snapshot(&q, &mem), Err(RingError::Memory));
        assert_eq!(take_head(&mut q, &mem), Err(RingError::Memory));
        let mut used = UsedBatch::default();
        assert_eq!(used.push(&mut q, &mem, 0, 0), Err(RingError::Memory));
        assert_eq!(q.next_used(), 0);
    }
}
