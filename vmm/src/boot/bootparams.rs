//! The Linux zero page (`struct boot_params`): setup header, command line pointer, initrd and
//! the e820 memory map.

use linux_loader::bootparam::{boot_params, setup_header};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::memory::layout;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Errors writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// More e820 entries than the zero page holds.
    #[error("too many e820 entries")]
    E820Overflow,
    /// linux-loader failed to write it.
    #[error("writing the zero page")]
    Write(#[source] linux_loader::configurator::Error),
}

/// Inputs for the zero page.
#[derive(Debug, Clone, Copy)]
pub struct ZeroPage {
    /// The bzImage setup header, if the kernel is a bzImage.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Command line length without the NUL.
    pub cmdline_len: u32,
    /// Initrd (address, size).
    pub initrd: Option<(u64, u64)>,
    /// Address of the ACPI RSDP, if there are ACPI tables.
    pub acpi_rsdp: Option<u64>,
}

/// Build the e820 map for `mem`: low RAM, the EBDA/BIOS hole as reserved, RAM from 1 MiB.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, layout::EBDA, E820_RAM),
        (layout::EBDA, 0x10_0000 - layout::EBDA, E820_RESERVED),
    ];
    for r in mem.iter() {
        let start = r.start_addr().0.max(layout::KERNEL_START);
        let end = r.start_addr().0 + r.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Write the zero page at [`layout::ZERO_PAGE`].
pub fn write_zero_page(mem: &GuestMemoryMmap, zp: &ZeroPage) -> Result<(), BootParamsError> {
    let mut params = boot_params::default();
    if let Some(h) = zp.setup_header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = zp.cmdline_addr as u32;
    params.hdr.cmdline_size = zp.cmdline_len;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    if let Some((addr, size)) = zp.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if let Some(rsdp) = zp.acpi_rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    let map = e820_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::E820Overflow);
    }
    for (i, (addr, size, ty)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *ty;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE)),
        mem,
    )
    .map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn zero_page_has_cmdline_and_e820() {
        let mem = crate::memory::create_guest_memory(64).unwrap();
        write_zero_page(
            &mem,
            &ZeroPage {
                setup_header: None,
                cmdline_addr: layout::CMDLINE,
                cmdline_len: 5,
                initrd: Some((0x300_0000, 0x1000)),
                acpi_rsdp: Some(layout::ACPI_RSDP),
            },
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.acpi_rsdp_addr }, layout::ACPI_RSDP);
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.e820_table[2].addr }, 0x10_0000);
        assert_eq!({ p.e820_table[2].size }, (64 << 20) - 0x10_0000);
        // The test guest's contract: cmd_line_ptr at offset 0x228.
        let ptr: u32 = mem
            .read_obj(GuestAddress(layout::ZERO_PAGE + 0x228))
            .unwrap();
        assert_eq!(ptr as u64, layout::CMDLINE);
    }
}
