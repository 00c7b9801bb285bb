//! The VMM thread's epoll loop (event-manager): VM end events, the deadline timer, console
//! input, and (through their own subscribers) virtio device backends. No busy loops: the
//! thread sleeps in epoll_wait until something happens.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::devices::serial::SerialDevice;
use crate::vcpu::{Control, VmExit};

/// Watches for the end of the VM: vCPU reports, the i8042 reset line, the deadline.
pub struct ExitWatcher {
    control: Arc<Control>,
    reset_evt: EventFd,
    timer: Option<TimerFd>,
}

impl ExitWatcher {
    /// A watcher; `timeout` arms a deadline timer.
    pub fn new(
        control: Arc<Control>,
        reset_evt: EventFd,
        timeout: Option<Duration>,
    ) -> std::io::Result<Self> {
        let timer = match timeout {
            Some(d) => {
                let mut t = TimerFd::new()?;
                // A zero duration would disarm the timer; make it fire at once instead.
                t.reset(d.max(Duration::from_nanos(1)), None)?;
                Some(t)
            }
            None => None,
        };
        Ok(Self {
            control,
            reset_evt,
            timer,
        })
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        // Registration only fails for invalid fds, which these are not; a failure would show
        // up as a VM that never ends, so report it as a crash.
        let mut ok = ops
            .add(Events::new(&self.control.exit_evt, EventSet::IN))
            .is_ok();
        ok &= ops.add(Events::new(&self.reset_evt, EventSet::IN)).is_ok();
        if let Some(t) = &self.timer {
            ok &= ops.add(Events::new(t, EventSet::IN)).is_ok();
        }
        if !ok {
            self.control.finish(VmExit::Crash(
                "cannot register VMM events with epoll".into(),
            ));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.control.exit_evt.as_raw_fd() {
            let _ = self.control.exit_evt.read();
        } else if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.control.finish(VmExit::Shutdown);
        } else if self.timer.as_ref().is_some_and(|t| t.as_raw_fd() == fd) {
            self.control.finish(VmExit::Timeout);
        }
    }
}

/// Forwards our stdin to the guest's serial port.
pub struct StdinForwarder {
    serial: Arc<Mutex<SerialDevice>>,
}

impl StdinForwarder {
    /// Forward to `serial`.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self { serial }
    }
}

impl MutEventSubscriber for StdinForwarder {
    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null: then there is simply no console input.
        let _ = ops.add(Events::new(&std::io::stdin(), EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) {
            // Unbuffered: a buffered reader would hide pending bytes from epoll.
            nix::unistd::read(std::io::stdin().as_fd(), &mut buf).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            let _ = ops.remove(events);
            return;
        }
        // Bytes beyond the UART FIFO are dropped, as a real UART without flow control would.
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(&buf[..n]);
    }
}
