//! Validation of guest descriptor chains.
//!
//! `virtio_queue::DescriptorChain` silently ends iteration on a bad index, an exhausted
//! time-to-live (loops) or an unreadable descriptor, and follows indirect tables transparently,
//! so it cannot tell a well-formed chain from a truncated malicious one. The device therefore
//! walks the descriptor table itself, with every check it needs, and only then touches buffers.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// One validated guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (non-zero).
    pub len: u32,
}

/// Why a descriptor chain was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor index (head or `next`) is not below the queue size.
    #[error("descriptor index {0} out of range")]
    BadIndex(u16),
    /// More descriptors than the queue size: a loop or an over-long chain.
    #[error("descriptor chain longer than the queue (loop?)")]
    TooLong,
    /// The descriptor table entry itself is outside guest memory.
    #[error("descriptor table entry outside guest memory")]
    TableOutOfMemory,
    /// An indirect descriptor although VIRTIO_RING_F_INDIRECT_DESC is not offered.
    #[error("indirect descriptor not negotiated")]
    Indirect,
    /// A device-writable buffer where a device-readable one is required, or vice versa.
    #[error("descriptor has the wrong direction")]
    WrongDirection,
    /// A buffer that is not entirely inside guest memory.
    #[error("buffer at {0:#x} outside guest memory")]
    BufferOutOfMemory(u64),
    /// The chain holds more bytes than allowed (or overflows).
    #[error("descriptor chain too large")]
    TooLarge,
}

/// Walk the chain starting at `head` in the descriptor table at `desc_table` of a queue of
/// `queue_size` entries. Every descriptor must be device-writable if `writable`, else
/// device-readable; the total length must not exceed `max_total`. Zero-length descriptors are
/// skipped. Returns the total length; the buffers are appended to `segs` (cleared first).
pub fn walk(
    mem: &GuestMemoryMmap,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
    writable: bool,
    max_total: u64,
    segs: &mut Vec<Segment>,
) -> Result<u64, ChainError> {
    segs.clear();
    let perm = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut index = head;
    let mut total: u64 = 0;
    let mut count: u32 = 0;
    loop {
        if index >= queue_size {
            return Err(ChainError::BadIndex(index));
        }
        count += 1;
        if count > u32::from(queue_size) {
            return Err(ChainError::TooLong);
        }
        let entry = desc_table
            .checked_add(u64::from(index) * 16)
            .ok_or(ChainError::TableOutOfMemory)?;
        let desc: Descriptor = mem
            .read_obj(entry)
            .map_err(|_| ChainError::TableOutOfMemory)?;
        let flags = u32::from(desc.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(ChainError::Indirect);
        }
        if (flags & VRING_DESC_F_WRITE != 0) != writable {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len();
        if len > 0 {
            let addr = desc.addr();
            if addr.checked_add(u64::from(len)).is_none()
                || !mem.check_range(addr, len as usize, perm)
            {
                return Err(ChainError::BufferOutOfMemory(addr.raw_value()));
            }
            total += u64::from(len);
            if total > max_total {
                return Err(ChainError::TooLarge);
            }
            segs.push(Segment { addr, len });
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(total);
        }
        index = desc.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put(m: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u32, next: u16) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next));
        m.write_obj(d, GuestAddress(table + u64::from(i) * 16))
            .unwrap();
    }

    #[test]
    fn good_chain_and_each_defect() {
        let m = mem();
        let t = 0x1000;
        let mut segs = Vec::new();
        put(&m, t, 0, 0x8000, 100, VRING_DESC_F_NEXT, 3);
        put(&m, t, 3, 0x9000, 0, VRING_DESC_F_NEXT, 1);
        put(&m, t, 1, 0xa000, 50, 0, 0);
        assert_eq!(
            walk(&m, GuestAddress(t), 8, 0, false, 1000, &mut segs),
            Ok(150)
        );
        assert_eq!(segs.len(), 2);
        assert_eq!(
            walk(&m, GuestAddress(t), 8, 0, true, 1000, &mut segs),
            Err(ChainError::WrongDirection)
        );
        assert_eq!(
            walk(&m, GuestAddress(t), 8, 0, false, 149, &mut segs),
            Err(ChainError::TooLarge)
        );
        assert_eq!(
            walk(&m, GuestAddress(t), 8, 9, false, 1000, &mut segs),
            Err(ChainError::BadIndex(9))
        );
        // Loop 0 -> 3 -> 0.
        put(&m, t, 3, 0x9000, 10, VRING_DESC_F_NEXT, 0);
        assert_eq!(
            walk(&m, GuestAddress(t), 8, 0, false, u64::MAX, &mut segs),
            Err(ChainError::TooLong)
        );
        put(&m, t, 3, 0x9000, 10, VRING_DESC_F_NEXT, 12);
        assert_eq!(
            walk(&m, GuestAddress(t), 8, 0, false, u64::MAX, &mut segs),
            Err(ChainError::BadIndex(12))
        );
        put(&m, t, 3, 0xf_fff0, 0x20, 0, 0);
        assert_eq!(
            walk(&m, GuestAddress(t), 8, 0, false, u64::MAX, &mut segs),
            Err(ChainError::BufferOutOfMemory(0xf_fff0))
        );
        put(&m, t, 3, u64::MAX - 4, 0x20, 0, 0);
        assert!(matches!(
            walk(&m, GuestAddress(t), 8, 0, false, u64::MAX, &mut segs),
            Err(ChainError::BufferOutOfMemory(_))
        ));
        put(&m, t, 3, 0x9000, 0x20, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(
            walk(&m, GuestAddress(t), 8, 0, false, u64::MAX, &mut segs),
            Err(ChainError::Indirect)
        );
        assert_eq!(
            walk(&m, GuestAddress(0xf_fff8), 8, 0, false, u64::MAX, &mut segs),
            Err(ChainError::TableOutOfMemory)
        );
    }
}
