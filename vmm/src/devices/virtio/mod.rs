//! virtio devices on the virtio-mmio transport.

pub mod config;

pub use config::{MacAddr, NetBackend, NetConfig};
