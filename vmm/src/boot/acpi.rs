//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT}.
//!
//! The DSDT describes each virtio-mmio window as a `LNRO0005` device with its memory range
//! and interrupt, which is how Linux finds virtio-mmio devices when it lacks
//! `VIRTIO_MMIO_CMDLINE_DEVICES` (Debian's kernels). The FADT declares a hardware-reduced
//! ACPI platform (no PM blocks, no SCI); the MADT lists one local APIC per vCPU and the IOAPIC.
//! Built with rust-vmm's `acpi_tables`.

use acpi_tables::aml::{self, Path};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::memory::layout;

const OEM_ID: [u8; 6] = *b"VESSEL";
const OEM_TABLE_ID: [u8; 8] = *b"VESSELVM";
/// IAPC boot flags: no VGA (bit 2), no MSI (bit 3).
const IAPC_NO_VGA_NO_MSI: u16 = (1 << 2) | (1 << 3);

/// A virtio-mmio device to describe: window base and GSI.
#[derive(Debug, Clone, Copy)]
pub struct MmioDevice {
    /// Base of the 4 KiB register window.
    pub base: u64,
    /// Its interrupt (GSI).
    pub gsi: u32,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT: one `LNRO0005` device per virtio-mmio window under `\_SB_`.
pub fn dsdt(devices: &[MmioDevice]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let hid = aml::Name::new(Path::new("_HID"), &"LNRO0005");
        let uid_val = i as u32;
        let uid = aml::Name::new(Path::new("_UID"), &uid_val);
        let mem = aml::Memory32Fixed::new(true, d.base as u32, layout::MMIO_WINDOW as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.gsi);
        let crs_t = aml::ResourceTemplate::new(vec![&mem, &irq]);
        let crs = aml::Name::new(Path::new("_CRS"), &crs_t);
        let name = format!("_SB_.V{i:03X}");
        let dev = aml::Device::new(Path::new(&name), vec![&hid, &uid, &crs]);
        dev.to_aml_bytes(&mut body);
    }
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, 1);
    sdt.append_slice(&body);
    bytes(&sdt)
}

/// Write all tables at [`layout::ACPI_RSDP`]; returns the RSDP address.
pub fn setup_acpi(
    mem: &GuestMemoryMmap,
    cpus: u8,
    devices: &[MmioDevice],
) -> Result<u64, BootError> {
    let rsdp_addr = layout::ACPI_RSDP;
    let mut next = rsdp_addr + 0x40;
    let mut place = |data: &[u8], what: &'static str| -> Result<u64, BootError> {
        let at = next;
        mem.write_slice(data, GuestAddress(at))
            .map_err(|source| BootError::Write { what, source })?;
        next = (at + data.len() as u64 + 7) & !7;
        Ok(at)
    };

    let dsdt_addr = place(&dsdt(devices), "ACPI DSDT")?;

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_NO_VGA_NO_MSI.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"VESSELVM").into();
    let fadt_addr = place(&bytes(&fadt.finalize()), "ACPI FADT")?;

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        1,
        LocalInterruptController::Address(layout::LAPIC as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, layout::IOAPIC as u32, 0));
    let madt_addr = place(&bytes(&madt), "ACPI MADT")?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(&bytes(&xsdt), "ACPI XSDT")?;

    mem.write_slice(
        &bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        GuestAddress(rsdp_addr),
    )
    .map_err(|source| BootError::Write {
        what: "ACPI RSDP",
        source,
    })?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn dsdt_describes_virtio_windows() {
        let d = dsdt(&[
            MmioDevice {
                base: 0xd000_1000,
                gsi: 5,
            },
            MmioDevice {
                base: 0xd000_2000,
                gsi: 6,
            },
        ]);
        assert_eq!(&d[..4], b"DSDT");
        assert_eq!(
            u32::from_le_bytes(d[4..8].try_into().unwrap()) as usize,
            d.len()
        );
        assert_eq!(sum(&d), 0);
        let hay = |needle: &[u8]| d.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(hay(b"LNRO0005"), 2);
        // Memory32Fixed descriptors (0x86) carry the window bases.
        assert_eq!(hay(&0xd000_1000u32.to_le_bytes()), 1);
        assert_eq!(hay(&0xd000_2000u32.to_le_bytes()), 1);
        assert_eq!(hay(b"V000"), 1);
        assert_eq!(hay(b"V001"), 1);
    }

    #[test]
    fn tables_chain_with_valid_checksums() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        let rsdp = setup_acpi(
            &mem,
            2,
            &[MmioDevice {
                base: 0xd000_1000,
                gsi: 5,
            }],
        )
        .unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let table = |addr: u64| {
            let mut h = [0u8; 8];
            mem.read_slice(&mut h, GuestAddress(addr)).unwrap();
            let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; len];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            assert_eq!(sum(&t), 0, "checksum of {:?}", &t[..4]);
            t
        };
        let x = table(xsdt);
        assert_eq!(&x[..4], b"XSDT");
        let entries: Vec<u64> = x[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<Vec<u8>> = entries.iter().map(|a| table(*a)[..4].to_vec()).collect();
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
        let fadt = table(entries[0]);
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(&table(x_dsdt)[..4], b"DSDT");
        let madt = table(entries[1]);
        // Header (44) + 2 local APICs (8 each) + IOAPIC (12).
        assert_eq!(madt.len(), 44 + 16 + 12);
        assert!(x_dsdt < layout::ACPI_RSDP + 0x1000);
    }
}
