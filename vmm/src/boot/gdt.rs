//! The boot GDT: flat 64-bit code and data segments plus a TSS descriptor.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE_SEL: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SEL: u16 = 0x10;
/// Selector of the TSS.
pub const TSS_SEL: u16 = 0x18;

/// Build a GDT entry from flags (access byte in bits 0..8, flags nibble in 12..16), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code (L=1), data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The GDT for a PVH entry (32-bit protected mode, paging off): null, 32-bit flat code,
/// flat data, a 0x67-byte TSS (the PVH ABI's register state).
pub const PVH_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// The `kvm_segment` a CPU would hold after loading selector `table_index * 8` of `entry`.
pub fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_decodes() {
        let s = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(s.selector, CODE_SEL);
        assert_eq!(
            (s.l, s.db, s.present, s.s, s.type_, s.g),
            (1, 0, 1, 1, 0xb, 1)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        let d = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((d.db, d.type_, d.l), (1, 3, 0));
        assert_eq!(segment_from_gdt(BOOT_GDT[3], 3).type_, 0xb);
    }

    #[test]
    fn pvh_segments_are_32_bit_flat() {
        let c = segment_from_gdt(PVH_GDT[1], 1);
        assert_eq!(
            (c.l, c.db, c.type_, c.g, c.limit),
            (0, 1, 0xb, 1, 0xffff_ffff)
        );
        let d = segment_from_gdt(PVH_GDT[2], 2);
        assert_eq!((d.db, d.type_, d.base), (1, 3, 0));
        let t = segment_from_gdt(PVH_GDT[3], 3);
        assert_eq!((t.type_, t.limit, t.g), (0xb, 0x67, 0));
    }

    #[test]
    fn entry_layout() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
