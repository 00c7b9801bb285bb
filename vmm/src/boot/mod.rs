//! Everything needed to enter a kernel: loading it, and the x86_64 state the boot protocol
//! expects (GDT, identity page tables, zero page with the e820 map, MP table).

pub mod acpi;
pub mod bootparams;
pub mod gdt;
pub mod loader;
pub mod mptable;
pub mod paging;

/// Errors preparing guest memory for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Loading the kernel or initrd failed.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// Writing the zero page failed.
    #[error(transparent)]
    BootParams(#[from] bootparams::BootParamsError),
    /// Writing boot structures (GDT, page tables, MP table) to guest memory failed.
    #[error("writing {what} to guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}
