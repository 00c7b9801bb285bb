//! Identity page tables for the first 4 GiB with 2 MiB pages.
//!
//! Every level has the U/S bit set so that a test guest may run CPL3 code on the same
//! mappings without building its own tables (Linux replaces them early anyway). The 32-bit MMIO
//! hole is mapped too, so guest accesses there reach the VMM as MMIO exits.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::memory::layout::PML4;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;

/// Address of the PDPT.
pub const PDPT: u64 = PML4 + 0x1000;
/// Address of the first of four page directories.
pub const PD0: u64 = PML4 + 0x2000;

/// Write PML4, PDPT and four page directories; returns the value for CR3.
pub fn setup_identity_paging(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    let w = |what, addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| BootError::Write { what, source })
    };
    let flags = PRESENT | WRITABLE | USER;
    w("PML4", PML4, PDPT | flags)?;
    for d in 0..4u64 {
        let pd = PD0 + d * 0x1000;
        w("PDPT", PDPT + d * 8, pd | flags)?;
        for i in 0..512u64 {
            let phys = (d << 30) | (i << 21);
            w("page directory", pd + i * 8, phys | flags | HUGE)?;
        }
    }
    Ok(PML4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_identity_with_user_bit() {
        let mem = crate::memory::create_guest_memory(2).unwrap();
        assert_eq!(setup_identity_paging(&mem).unwrap(), PML4);
        let pml4e: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4e, PDPT | 7);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPT + 24)).unwrap();
        assert_eq!(pdpte, (PD0 + 0x3000) | 7);
        // 0xd000_0000 lies in PD 3, entry 0x80.
        let pde: u64 = mem.read_obj(GuestAddress(PD0 + 0x3000 + 0x80 * 8)).unwrap();
        assert_eq!(pde, 0xd000_0000 | 0x87);
    }
}
