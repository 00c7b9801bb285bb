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

/// virtio devices.
pub mod virtio;
