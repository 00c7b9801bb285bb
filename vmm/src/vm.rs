//! A built microVM and the handle to pause, resume or stop it while it runs.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::devices::testdev::TestDevice;
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::{self, Control, ControlError, Vcpu, VmExit};
use crate::VmError;

/// An event subscriber served by the VMM thread.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A microVM ready to run (see [`crate::VmBuilder`]).
pub struct Vm {
    pub(crate) _kvm: Kvm,
    pub(crate) _vm_fd: VmFd,
    pub(crate) _mem: GuestMemoryMmap,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) control: Arc<Control>,
    pub(crate) subscribers: Vec<Subscriber>,
    pub(crate) seccomp: bool,
    pub(crate) testdev: Arc<Mutex<TestDevice>>,
}

/// Pause, resume or stop a running [`Vm`] from another thread.
#[derive(Clone, Debug)]
pub struct VmHandle {
    control: Arc<Control>,
}

/// How long [`VmHandle::pause`] waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

impl VmHandle {
    /// Stop every vCPU outside the guest; returns when all are parked.
    pub fn pause(&self) -> Result<(), ControlError> {
        self.control.pause(PAUSE_TIMEOUT)
    }

    /// Let a paused VM continue.
    pub fn resume(&self) -> Result<(), ControlError> {
        self.control.resume()
    }

    /// RIP of each vCPU when it left its run loop (None while it runs): after a timeout this
    /// tells how far the guest got.
    pub fn last_rips(&self) -> Vec<Option<u64>> {
        self.control.last_rips()
    }

    /// End the VM; [`Vm::run`] returns [`VmExit::Stopped`].
    pub fn stop(&self) {
        self.control.finish(VmExit::Stopped);
    }
}

impl Vm {
    /// A handle for pausing/resuming/stopping this VM while [`Vm::run`] blocks.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            control: self.control.clone(),
        }
    }

    /// Accesses the test device (ports 0x510.., MMIO 0xd000_0000) has seen.
    pub fn test_device_accesses(&self) -> Arc<Mutex<TestDevice>> {
        self.testdev.clone()
    }

    /// Run the guest until it ends; one thread per vCPU plus the VMM thread.
    pub fn run(mut self) -> Result<VmExit, VmError> {
        vcpu::install_kick_handler().map_err(VmError::Signal)?;
        let (vcpu_bpf, vmm_bpf) = if self.seccomp {
            (
                Some(seccomp::compile(ThreadKind::Vcpu)?),
                Some(seccomp::compile(ThreadKind::Vmm)?),
            )
        } else {
            (None, None)
        };
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut spawn_err = None;
        for v in self.vcpus.drain(..) {
            let bpf = vcpu_bpf.clone();
            let control = self.control.clone();
            let r = std::thread::Builder::new()
                .name(format!("vcpu{}", v.index))
                .spawn(move || {
                    if let Some(bpf) = bpf {
                        if let Err(e) = seccomp::install(ThreadKind::Vcpu, &bpf) {
                            control.finish(VmExit::Crash(format!("{e}")));
                            return;
                        }
                    }
                    v.run();
                });
            match r {
                Ok(h) => {
                    self.control
                        .add_thread(std::os::unix::thread::JoinHandleExt::as_pthread_t(&h));
                    threads.push(h);
                }
                Err(e) => {
                    spawn_err = Some(e);
                    break;
                }
            }
        }
        let result = match spawn_err {
            Some(e) => Err(VmError::Spawn(e)),
            None => self.serve(vmm_bpf),
        };
        self.control.stop_all();
        for t in threads {
            let _ = t.join();
        }
        result?;
        Ok(self
            .control
            .exit()
            .unwrap_or_else(|| VmExit::Crash("VM ended without a reason".into())))
    }

    /// Run the event loop on the VMM thread until the VM ends.
    fn serve(&mut self, bpf: Option<seccompiler::BpfProgram>) -> Result<(), VmError> {
        let subscribers = std::mem::take(&mut self.subscribers);
        let control = self.control.clone();
        let vmm = std::thread::Builder::new()
            .name("vessel-vmm".into())
            .spawn(move || -> Result<(), VmError> {
                let mut em: EventManager<Subscriber> =
                    EventManager::new().map_err(VmError::EventLoop)?;
                for s in subscribers {
                    em.add_subscriber(s);
                }
                if let Some(bpf) = bpf {
                    seccomp::install(ThreadKind::Vmm, &bpf)?;
                }
                while control.exit().is_none() {
                    em.run().map_err(VmError::EventLoop)?;
                }
                Ok(())
            })
            .map_err(VmError::Spawn)?;
        match vmm.join() {
            Ok(r) => {
                if r.is_err() {
                    self.control
                        .finish(VmExit::Crash("the VMM event loop failed".into()));
                }
                r
            }
            Err(_) => {
                self.control
                    .finish(VmExit::Crash("the VMM thread panicked".into()));
                Err(VmError::VmmThreadPanicked)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConsoleConfig, VmBuilder, VmConfig};
    use std::path::PathBuf;
    use std::time::Instant;

    fn test_guest() -> Option<PathBuf> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/.cache/guest/vessel-test-guest");
        if !p.exists() {
            println!("SKIPPED: test guest missing (run fixtures/guest.sh)");
            return None;
        }
        if std::fs::File::open("/dev/kvm").is_err() {
            println!("SKIPPED: /dev/kvm unavailable");
            return None;
        }
        Some(p)
    }

    fn accesses(dev: &Arc<Mutex<TestDevice>>) -> u32 {
        dev.lock().unwrap().accesses()
    }

    /// Poll until `f` holds; false after 30 s (a hang, not a speed check).
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn pause_parks_every_vcpu_and_resume_continues() {
        let Some(g) = test_guest() else { return };
        let mut cfg = VmConfig::new(g);
        cfg.cmdline = "spin".into();
        cfg.console = ConsoleConfig::None;
        cfg.vcpus = 2;
        cfg.timeout_secs = Some(120.0);
        let vm = VmBuilder::new(cfg).build().unwrap();
        let handle = vm.handle();
        let dev = vm.test_device_accesses();
        let runner = std::thread::spawn(move || vm.run());
        assert!(
            eventually(|| accesses(&dev) > 0),
            "guest never touched the device"
        );
        handle.pause().unwrap();
        let paused_at = accesses(&dev);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(accesses(&dev), paused_at, "a vCPU ran while paused");
        handle.pause().unwrap(); // idempotent
        handle.resume().unwrap();
        assert!(
            eventually(|| accesses(&dev) > paused_at),
            "no progress after resume"
        );
        handle.stop();
        assert_eq!(runner.join().unwrap().unwrap(), VmExit::Stopped);
        assert!(matches!(handle.pause(), Err(ControlError::NotRunning)));
    }

    #[test]
    fn invalid_sizes_fail_before_touching_kvm() {
        let mut cfg = VmConfig::new("/nonexistent");
        cfg.vcpus = 0;
        assert!(matches!(
            VmBuilder::new(cfg.clone()).build(),
            Err(VmError::Vcpus { requested: 0, .. })
        ));
        cfg.vcpus = 1;
        cfg.memory_mib = 0;
        let e = VmBuilder::new(cfg).build().err().unwrap();
        assert!(
            matches!(e, VmError::Memory(_)) || matches!(e, VmError::OpenKvm(_)),
            "{e}"
        );
    }
}
