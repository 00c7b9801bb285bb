//! Per-vCPU x86_64 state: CPUID, MSRs, registers, FPU and LAPIC.

pub mod cpuid;
pub mod msr;
pub mod regs;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM vCPU ioctl failed.
    #[error("{0} on vCPU")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// Building a CPUID/MSR list failed.
    #[error("building the {0} list for KVM")]
    Fam(&'static str),
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    Msrs {
        /// Accepted.
        set: usize,
        /// Given.
        wanted: usize,
    },
    /// Writing the GDT/IDT failed.
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
}
