//! The i8042 keyboard controller, only for its CPU reset command (0xfe to port 0x64), which
//! is how Linux (`reboot=k`) and the test guest end a VM.

use vm_superio::I8042Device;

use super::{BusDevice, EventFdTrigger};

/// Port base (data port 0x60; command/status at base + 4).
pub const I8042_BASE: u64 = 0x60;
/// Ports covered.
pub const I8042_LEN: u64 = 5;

/// The i8042 on the port bus.
pub struct I8042 {
    dev: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// A controller that signals `reset` when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            dev: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.dev.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(v)) = (u8::try_from(offset), data.first()) {
            // Failing to signal the eventfd leaves nothing useful to do here.
            let _ = self.dev.write(off, *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut d = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        d.write(0, &[0xfe]);
        assert!(evt.read().is_err());
        d.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
