//! Guest physical memory: the layout of the address space and the RAM backing it.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Fixed guest-physical addresses used while booting (all below 1 MiB).
pub mod layout {
    /// Boot GDT.
    pub const GDT_ADDR: u64 = 0x500;
    /// Boot IDT (empty).
    pub const IDT_ADDR: u64 = 0x520;
    /// PVH `hvm_start_info`, then its module list (the initrd) and memory map.
    pub const PVH_INFO: u64 = 0x6000;
    /// PVH module list (one entry: the initrd).
    pub const PVH_MODLIST: u64 = 0x6040;
    /// PVH memory map (up to 160 entries, below the zero page).
    pub const PVH_MEMMAP: u64 = 0x6080;
    /// The Linux zero page (`struct boot_params`).
    pub const ZERO_PAGE: u64 = 0x7000;
    /// Top of the boot stack (grows down).
    pub const BOOT_STACK: u64 = 0x8ff0;
    /// PML4 of the identity page tables; PDPT and page directories follow.
    pub const PML4: u64 = 0x9000;
    /// Kernel command line.
    pub const CMDLINE: u64 = 0x20000;
    /// Largest command line we accept (bytes, including the NUL).
    pub const CMDLINE_MAX: usize = 4096;
    /// MP floating pointer and table (in the EBDA).
    pub const EBDA: u64 = 0x9fc00;
    /// End of conventional memory.
    pub const LOW_RAM_END: u64 = 0xa0000;
    /// ACPI tables (RSDP must sit in 0xe0000..0xfffff).
    pub const ACPI_RSDP: u64 = 0xe0000;
    /// Where the kernel of a bzImage is loaded.
    pub const KERNEL_START: u64 = 0x10_0000;
    /// Start of the 32-bit MMIO hole; RAM above it continues at 4 GiB.
    pub const MMIO_GAP_START: u64 = 0xc000_0000;
    /// End of the 32-bit MMIO hole.
    pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
    /// First MMIO device window: the test device, then one 4 KiB window per virtio device.
    pub const MMIO_DEVICES: u64 = 0xd000_0000;
    /// Size of one MMIO device window.
    pub const MMIO_WINDOW: u64 = 0x1000;
    /// KVM's TSS (three pages) lives here, inside the hole.
    pub const KVM_TSS: u64 = 0xfffb_d000;
    /// IOAPIC.
    pub const IOAPIC: u64 = 0xfec0_0000;
    /// Local APIC.
    pub const LAPIC: u64 = 0xfee0_0000;
}

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Zero bytes of RAM.
    #[error("guest memory size must be at least 1 MiB, got 0")]
    Zero,
    /// More RAM than the host has.
    #[error("guest memory of {requested_mib} MiB exceeds the host's {host_mib} MiB")]
    TooLarge {
        /// Asked for.
        requested_mib: u64,
        /// Host total.
        host_mib: u64,
    },
    /// The mmap failed.
    #[error("mapping {mib} MiB of guest memory")]
    Mmap {
        /// Size.
        mib: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges (start, size) of a guest with `mib` MiB: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(mib: u64) -> Vec<(GuestAddress, usize)> {
    let size = mib << 20;
    if size <= layout::MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), layout::MMIO_GAP_START as usize),
            (
                GuestAddress(layout::MMIO_GAP_END),
                (size - layout::MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// Total RAM of this host in MiB, from `/proc/meminfo` (None if unreadable).
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Check `mib` and map anonymous guest RAM for it (pages are touched only when the guest uses them).
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if mib == 0 {
        return Err(MemoryError::Zero);
    }
    if let Some(host_mib) = host_memory_mib() {
        if mib > host_mib {
            return Err(MemoryError::TooLarge {
                requested_mib: mib,
                host_mib,
            });
        }
    }
    GuestMemoryMmap::from_ranges(&ram_ranges(mib))
        .map_err(|source| MemoryError::Mmap { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn ranges_split_around_the_hole() {
        assert_eq!(ram_ranges(128), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4096);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), 0xc000_0000));
        assert_eq!(r[1], (GuestAddress(0x1_0000_0000), 0x4000_0000));
    }

    #[test]
    fn rejects_zero_and_huge() {
        assert!(matches!(create_guest_memory(0), Err(MemoryError::Zero)));
        assert!(matches!(
            create_guest_memory(u64::MAX >> 21),
            Err(MemoryError::TooLarge { .. })
        ));
        let m = create_guest_memory(16).unwrap();
        assert_eq!(m.num_regions(), 1);
    }
}
