//! Vessel: isolate Linux workloads as OCI containers or as KVM microVMs.
//!
//! This facade crate re-exports the two libraries:
//! - [`runtime`] — the container library (`vessel-runtime`);
//! - [`vmm`] — the microVM library (`vessel-vmm`).

pub use vessel_runtime as runtime;
pub use vessel_vmm as vmm;
