//! The PVH boot protocol (Xen's `hvm_start_info`), for ELF kernels with a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note: the kernel starts in 32-bit protected mode with paging
//! off and EBX pointing to the start info, which carries the command line, the memory map,
//! the initrd as a module and the ACPI RSDP. Firecracker and Cloud Hypervisor prefer it for
//! vmlinux because it skips the 64-bit boot protocol's fixed page tables and zero page.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::bootparams::e820_map;
use crate::memory::layout;

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Memory map entries that fit between [`layout::PVH_MEMMAP`] and the zero page.
const MAX_MEMMAP_ENTRIES: usize = ((layout::ZERO_PAGE - layout::PVH_MEMMAP) as usize)
    / std::mem::size_of::<hvm_memmap_table_entry>();

/// Errors writing the PVH start info.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// More memory map entries than fit below the zero page.
    #[error("too many memory map entries for the PVH start info")]
    MemmapOverflow,
    /// linux-loader failed to write it.
    #[error("writing the PVH start info")]
    Write(#[source] linux_loader::configurator::Error),
}

/// Write `hvm_start_info` at [`layout::PVH_INFO`] with its module list and memory map; returns
/// its address (the kernel's EBX).
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
    acpi_rsdp: Option<u64>,
) -> Result<u64, PvhError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    if memmap.len() > MAX_MEMMAP_ENTRIES {
        return Err(PvhError::MemmapOverflow);
    }
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: cmdline_addr,
        rsdp_paddr: acpi_rsdp.unwrap_or(0),
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            layout::PVH_MODLIST
        } else {
            0
        },
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(layout::PVH_INFO));
    params.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(layout::PVH_MEMMAP));
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules::<hvm_modlist_entry>(&[module], GuestAddress(layout::PVH_MODLIST));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(PvhError::Write)?;
    Ok(layout::PVH_INFO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn start_info_carries_cmdline_memmap_initrd_and_rsdp() {
        let mem = crate::memory::create_guest_memory(64).unwrap();
        let at = write_start_info(
            &mem,
            layout::CMDLINE,
            Some((0x300_0000, 0x1234)),
            Some(layout::ACPI_RSDP),
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        // The test guest's contract: cmdline_paddr at offset 0x18.
        let cmdline: u64 = mem.read_obj(GuestAddress(at + 0x18)).unwrap();
        assert_eq!(cmdline, layout::CMDLINE);
        assert_eq!(info.rsdp_paddr, layout::ACPI_RSDP);
        assert_eq!(info.memmap_entries, 3);
        let ram: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (ram.addr, ram.size, ram.type_),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 0x1234));
    }

    #[test]
    fn without_initrd_there_is_no_module() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        let at = write_start_info(&mem, layout::CMDLINE, None, None).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(
            (info.nr_modules, info.modlist_paddr, info.rsdp_paddr),
            (0, 0, 0)
        );
    }
}
