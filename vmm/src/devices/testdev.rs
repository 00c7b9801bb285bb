//! A small device for testing exit dispatch, mapped on both buses (ports 0x510..0x520 and a
//! 4 KiB MMIO window at 0xd000_0000).
//!
//! Register layout (offsets within the device; little endian, any access size 1/2/4/8 at any
//! offset, bytes beyond a register read as zero):
//!
//! | offset | access | meaning |
//! |---|---|---|
//! | 0x00..0x08 | read | magic [`MAGIC`] |
//! | 0x08..0x10 | read/write | 8-byte scratch register |
//! | 0x10..0x14 | read | number of accesses so far (wrapping) |

use super::BusDevice;

/// First port.
pub const TESTDEV_PORT: u16 = 0x510;
/// Ports covered.
pub const TESTDEV_PORT_LEN: u16 = 0x10;
/// The magic value at offset 0 ("VESSELTD" as little-endian bytes).
pub const MAGIC: u64 = u64::from_le_bytes(*b"VESSELTD");

/// Register file of the test device.
#[derive(Debug, Default)]
pub struct TestDevice {
    scratch: [u8; 8],
    accesses: u32,
}

impl TestDevice {
    /// A fresh device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accesses seen so far.
    pub fn accesses(&self) -> u32 {
        self.accesses
    }

    fn byte(&self, off: u64) -> u8 {
        match off {
            0..=7 => MAGIC.to_le_bytes()[off as usize],
            8..=15 => self.scratch[off as usize - 8],
            16..=19 => self.accesses.to_le_bytes()[off as usize - 16],
            _ => 0,
        }
    }
}

impl BusDevice for TestDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.byte(offset.saturating_add(i as u64));
        }
        self.accesses = self.accesses.wrapping_add(1);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(o) = offset.checked_add(i as u64) {
                if (8..16).contains(&o) {
                    self.scratch[o as usize - 8] = *b;
                }
            }
        }
        self.accesses = self.accesses.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers() {
        let mut d = TestDevice::new();
        let mut b = [0u8; 8];
        d.read(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), MAGIC);
        let mut w = [0u8; 2];
        d.read(3, &mut w);
        assert_eq!(&w, b"SE");
        d.write(8, &0x1122_3344_5566_7788u64.to_le_bytes());
        d.write(9, &[0xaa]);
        d.read(8, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_aa88);
        let mut c = [0u8; 4];
        d.read(16, &mut c);
        assert_eq!(u32::from_le_bytes(c), 5);
        let mut far = [1u8; 4];
        d.read(0xffc, &mut far);
        assert_eq!(far, [0; 4]);
        d.write(u64::MAX, &[1, 2]);
    }
}
