//! General, segment and control registers, FPU and LAPIC of a vCPU entering a 64-bit kernel
//! through the Linux boot protocol.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::CpuError;
use crate::boot::gdt::{segment_from_gdt, BOOT_GDT, PVH_GDT};
use crate::boot::BootError;
use crate::memory::layout;

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const X86_CR4_OSFXSR: u64 = 1 << 9;
const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Write `gdt` ([`BOOT_GDT`] or [`PVH_GDT`]) and an empty IDT into guest memory (once per
/// VM).
pub fn write_gdt_idt(mem: &GuestMemoryMmap, gdt: &[u64; 4]) -> Result<(), BootError> {
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::GDT_ADDR + i as u64 * 8))
            .map_err(|source| BootError::Write {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_ADDR))
        .map_err(|source| BootError::Write {
            what: "IDT",
            source,
        })
}

/// Point GDTR at `gdt` (written at [`layout::GDT_ADDR`]), IDTR at the empty IDT, and load
/// its code (1), data (2) and TSS (3) descriptors into the segment registers.
fn load_segments(sregs: &mut kvm_sregs, gdt: &[u64; 4]) {
    let data = segment_from_gdt(gdt[2], 2);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment_from_gdt(gdt[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
}

/// General registers: entry point, boot stack and RSI = zero page.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), CpuError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: layout::BOOT_STACK,
        rbp: layout::BOOT_STACK,
        rsi: layout::ZERO_PAGE,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| CpuError::Kvm("KVM_SET_REGS", e))
}

/// Segment and control registers for 64-bit mode with the identity page tables at `cr3`.
pub fn setup_sregs(vcpu: &VcpuFd, cr3: u64) -> Result<(), CpuError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| CpuError::Kvm("KVM_GET_SREGS", e))?;
    load_segments(&mut sregs, &BOOT_GDT);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(|e| CpuError::Kvm("KVM_SET_SREGS", e))
}

/// General registers for a PVH entry: EIP = the PVH entry, EBX = `hvm_start_info`.
pub fn setup_regs_pvh(vcpu: &VcpuFd, entry: u64, start_info: u64) -> Result<(), CpuError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: start_info,
        rsp: layout::BOOT_STACK,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| CpuError::Kvm("KVM_SET_REGS", e))
}

/// Segment and control registers for a PVH entry: 32-bit protected mode with flat segments
/// from [`PVH_GDT`], paging off, EFER clear.
pub fn setup_sregs_pvh(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| CpuError::Kvm("KVM_GET_SREGS", e))?;
    load_segments(&mut sregs, &PVH_GDT);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| CpuError::Kvm("KVM_SET_SREGS", e))
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| CpuError::Kvm("KVM_SET_FPU", e))
}

fn get_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let r = &l.regs[off..off + 4];
    u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8])
}

fn set_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LAPIC: LINT0 in ExtINT mode (the PIC), LINT1 delivering NMIs.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let mut l = vcpu
        .get_lapic()
        .map_err(|e| CpuError::Kvm("KVM_GET_LAPIC", e))?;
    let lvt0 = get_reg(&l, APIC_LVT0);
    set_reg(&mut l, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(&l, APIC_LVT1);
    set_reg(&mut l, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&l)
        .map_err(|e| CpuError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_bits() {
        assert_eq!(set_delivery_mode(0x10000, APIC_MODE_EXTINT), 0x10700);
        assert_eq!(set_delivery_mode(0x10700, APIC_MODE_NMI), 0x10400);
        let mut l = kvm_lapic_state::default();
        set_reg(&mut l, APIC_LVT1, 0xdead_beef);
        assert_eq!(get_reg(&l, APIC_LVT1), 0xdead_beef);
    }
}
