//! Counters of a virtio-net device, readable by the VMM from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! net_metrics {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Live counters, updated by the device with relaxed atomics.
        #[derive(Debug, Default)]
        pub struct NetMetrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`NetMetrics`] at one instant.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct NetMetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl NetMetrics {
            /// Read every counter.
            pub fn snapshot(&self) -> NetMetricsSnapshot {
                NetMetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

net_metrics! {
    /// Frames delivered to the guest.
    rx_frames,
    /// Bytes delivered to the guest (Ethernet frames, without the virtio-net header).
    rx_bytes,
    /// Frames from the backend dropped because they could not fit the guest's buffers or
    /// were malformed.
    rx_dropped,
    /// Frames sent by the guest to the backend.
    tx_frames,
    /// Bytes sent by the guest (Ethernet frames, without the virtio-net header).
    tx_bytes,
    /// Guest frames the backend refused (bad GSO header, link down...).
    tx_dropped,
    /// Descriptor chains rejected by validation, on either queue.
    invalid_descriptors,
    /// Read/write errors of the backend fd other than "would block".
    backend_errors,
    /// Interrupts injected into the guest.
    interrupts,
    /// Times the device entered DEVICE_NEEDS_RESET.
    needs_reset,
}

impl NetMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
