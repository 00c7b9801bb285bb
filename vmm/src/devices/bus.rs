//! Address buses (one for port I/O, one for MMIO) mapping ranges to [`BusDevice`]s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::BusDevice;

/// Errors registering devices.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range overlaps one already registered.
    #[error("device range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
    /// Zero-length range.
    #[error("device range at {0:#x} has zero length")]
    Empty(u64),
}

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Ranges of addresses, each served by one device.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `dev` for `[base, base + len)`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let overlaps = self
            .devices
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if overlaps {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, dev));
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Dispatch a read; false when no device claims `addr` (data is then left zeroed).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((off, dev)) => {
                lock(dev).read(off, data);
                true
            }
            None => {
                data.fill(0);
                false
            }
        }
    }

    /// Dispatch a write; false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((off, dev)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, recovering from a poisoned lock (a panicking device thread must not wedge
/// every other vCPU).
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u64);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill((offset + self.0) as u8);
        }
        fn write(&mut self, offset: u64, _data: &[u8]) {
            self.0 = offset;
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(0))), 0x100, 0x10)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(0x40))), 0x110, 0x10)
            .unwrap();
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x10f, 2).is_err());
        assert!(bus
            .insert(Arc::new(Mutex::new(Echo(0))), 0xf8, 0x9)
            .is_err());
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x50, 0).is_err());
        let mut b = [0u8; 2];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b, [5, 5]);
        assert!(bus.read(0x111, &mut b));
        assert_eq!(b, [0x41, 0x41]);
        assert!(!bus.read(0x120, &mut b));
        assert_eq!(b, [0, 0]);
        assert!(bus.write(0x10f, &[1]));
        assert!(bus.read(0x100, &mut b));
        assert_eq!(b, [0xf, 0xf]);
        assert!(!bus.write(0xff, &[1]));
    }
}
