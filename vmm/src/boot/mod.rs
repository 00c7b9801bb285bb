//! Everything needed to enter a kernel: loading it, and the x86_64 state the boot protocol
//! expects (GDT, identity page tables, zero page with the e820 map or PVH start info, MP
//! table).

pub mod acpi;
pub mod bootparams;
pub mod gdt;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod pvh;

/// Errors preparing guest memory for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Loading the kernel or initrd failed.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// Writing the zero page failed.
    #[error(transparent)]
    BootParams(#[from] bootparams::BootParamsError),
    /// Writing the PVH start info failed.
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    /// PVH boot was asked for but the kernel has no PVH entry note.
    #[error("{0} has no PVH entry (no XEN_ELFNOTE_PHYS32_ENTRY note; bzImages never do): boot it with the Linux protocol")]
    NoPvhEntry(std::path::PathBuf),
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
