//! virtio devices on the virtio-mmio transport.
//!
//! Wiring a [`VirtioMmioNet`](crate::devices::virtio::VirtioMmioNet) into a VMM:
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use vessel_vmm::devices::virtio::{NetBackend, NetConfig, VirtioMmioNet};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 128 << 20)]).unwrap();
//! let irq = EventFd::new(EFD_NONBLOCK).unwrap(); // register with KVM_IRQFD on the device's GSI
//! let cfg = NetConfig { backend: NetBackend::Tap { name: "vtap0".into() }, mac: None };
//! let net = Arc::new(Mutex::new(VirtioMmioNet::new(&cfg, mem, irq).unwrap()));
//! for (offset, queue, evt) in net.lock().unwrap().notify_events() {
//!     // KVM_IOEVENTFD: 4-byte write of `queue` at `base + offset` signals `evt`.
//!     let _ = (offset, queue, evt);
//! }
//! // The MMIO bus sends accesses in [base, base + MMIO_WINDOW_SIZE) to the BusDevice impl;
//! // the event loop owns a clone as a subscriber.
//! let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
//! em.add_subscriber(net.clone());
//! loop {
//!     em.run().unwrap();
//! }
//! ```

pub mod chain;
pub mod config;
pub mod metrics;
pub mod mmio;
pub mod net;
pub mod ring;

pub use config::{MacAddr, NetBackend, NetConfig};
pub use metrics::{NetMetrics, NetMetricsSnapshot};
pub use mmio::MMIO_WINDOW_SIZE;
pub use net::{VirtioError, VirtioMmioNet};
