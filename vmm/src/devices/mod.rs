//! Emulated devices and the bus interface the vCPU exit handler dispatches to.

/// A device that answers guest port I/O or MMIO accesses.
///
/// The vCPU thread that took the exit calls these with the offset relative to the base at
/// which the device was registered, and an access of 1, 2, 4 or 8 bytes. Implementations
/// must never panic on any offset or size a guest can produce: unknown reads return zeros,
/// unknown writes are ignored.
pub trait BusDevice: Send {
    /// Fill `data` with the value of the register at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Write `data` to the register at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub mod bus;
pub mod debug_exit;
pub mod i8042;
pub mod serial;
pub mod testdev;
/// virtio devices.
pub mod virtio;

/// A [`vm_superio::Trigger`] that signals an [`EventFd`](vmm_sys_util::eventfd::EventFd):
/// used for the serial IRQ (registered as a KVM irqfd) and the i8042 reset line.
#[derive(Debug)]
pub struct EventFdTrigger(pub vmm_sys_util::eventfd::EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
