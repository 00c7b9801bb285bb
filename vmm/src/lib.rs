//! Vessel microVM library: a minimal VMM on /dev/kvm built from rust-vmm crates.
#![warn(missing_docs)]

pub mod devices;
pub mod net;
