//! virtio devices on the virtio-mmio transport.

pub mod chain;
pub mod config;
pub mod metrics;
pub mod mmio;
pub mod net;

pub use config::{MacAddr, NetBackend, NetConfig};
pub use metrics::{NetMetrics, NetMetricsSnapshot};
pub use net::{VirtioError, VirtioMmioNet};
