//! CPUID for each vCPU: what KVM supports, with this VM's topology (APIC ids, leaves 0x1, 0x4,
//! 0xb, 0x1f) and a few features filtered out.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::Kvm;

use super::CpuError;

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// KVM's supported CPUID, fetched once per VM.
pub fn supported(kvm: &Kvm) -> Result<CpuId, CpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::SupportedCpuid)
}

/// Bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn topology_leaf(function: u32, apic_id: u32, cpus: u32) -> Vec<kvm_cpuid_entry2> {
    let e = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic_id,
        ..Default::default()
    };
    vec![
        // One thread per core.
        e(0, 0, 1, LEVEL_TYPE_SMT << 8),
        // All CPUs are cores of one package.
        e(1, bits_for(cpus), cpus, (LEVEL_TYPE_CORE << 8) | 1),
        // Terminator level.
        e(2, 0, 0, 2),
    ]
}

/// CPUID entries for the vCPU with APIC id `apic_id` in a VM of `cpus` vCPUs.
pub fn for_vcpu(base: &CpuId, apic_id: u8, cpus: u8) -> Result<CpuId, CpuError> {
    let (id, n) = (u32::from(apic_id), u32::from(cpus));
    let max_basic = base
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map(|e| e.eax)
        .unwrap_or(0);
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(base.as_slice().len() + 6);
    for entry in base.as_slice() {
        let mut e = *entry;
        match e.function {
            1 => {
                // APIC id, logical processor count, CLFLUSH line size (8 * 8 bytes).
                e.ebx = (id << 24) | ((n.max(1) & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                // We do not emulate the TSC deadline MSR path in userspace; KVM's LAPIC does,
                // so keep whatever KVM reports but never claim it when KVM does not.
                e.ecx &= !(!entry.ecx & LEAF1_ECX_TSC_DEADLINE);
                if n > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in bits 26..32; one thread shares each cache level
                // below L3, everyone shares L3.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { n.saturating_sub(1) } else { 0 };
                e.eax = (e.eax & 0x3ff) | (sharing << 14) | ((n.saturating_sub(1) & 0x3f) << 26);
            }
            6 => {
                // No energy/performance bias MSR.
                e.ecx &= !(1 << 3);
            }
            0xa => {
                // No architectural PMU: keeps guests away from perf MSRs we don't manage.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => continue,
            _ => {}
        }
        out.push(e);
    }
    out.extend(topology_leaf(0xb, id, n));
    if max_basic >= 0x1f {
        out.extend(topology_leaf(0x1f, id, n));
    }
    CpuId::from_entries(&out).map_err(|_| CpuError::Fam("CPUID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn topology_from_kvm() {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                println!("SKIPPED: /dev/kvm unavailable: {e}");
                return;
            }
        };
        let base = supported(&kvm).unwrap();
        let c = for_vcpu(&base, 2, 4).unwrap();
        let leaf = |f: u32, i: u32| {
            *c.as_slice()
                .iter()
                .find(|e| e.function == f && (e.index == i || f == 1))
                .unwrap()
        };
        assert_eq!(leaf(1, 0).ebx >> 24, 2);
        assert_eq!((leaf(1, 0).ebx >> 16) & 0xff, 4);
        assert_ne!(leaf(1, 0).ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(leaf(0xb, 0).edx, 2);
        assert_eq!(leaf(0xb, 1).ebx, 4);
        assert_eq!(leaf(0xb, 1).eax, 2);
        assert_eq!((leaf(0xb, 2).ecx >> 8) & 0xff, 0);
    }
}
