//! vCPU threads: the KVM_RUN loop, exit dispatch to the buses, and the pause/stop protocol.
//!
//! Each vCPU runs on its own thread. Another thread asks it to pause or stop by changing the
//! shared [`Control`] phase and then *kicking* it: a real-time signal whose handler sets
//! `kvm_run.immediate_exit`, so KVM_RUN returns EINTR at once, whether the thread was inside
//! the guest or about to enter it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::Duration;

use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::Bus;
use crate::devices::debug_exit;

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset through the i8042 (Linux `reboot`, the test guest's
    /// normal end), or halted a vCPU.
    Shutdown,
    /// The guest wrote this status to the debug-exit port (0xf4).
    DebugExit(u32),
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN) or the guest requested a reset through
    /// KVM_SYSTEM_EVENT_RESET: the guest crashed.
    Reset,
    /// KVM could not run the guest (internal emulation error, failed entry, unexpected exit).
    Crash(String),
    /// The configured deadline passed.
    Timeout,
    /// [`VmHandle::stop`](crate::VmHandle::stop) was called.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Paused,
    Stopping,
}

#[derive(Debug)]
struct PhaseState {
    phase: Phase,
    /// vCPUs currently parked because of a pause.
    parked: usize,
    /// vCPU threads that have left their run loop.
    exited: usize,
}

/// State shared by the vCPU threads, the VMM thread and [`crate::VmHandle`]s.
#[derive(Debug)]
pub struct Control {
    exit: Mutex<Option<VmExit>>,
    /// Written when `exit` is first set; the VMM thread's event loop watches it.
    pub exit_evt: EventFd,
    state: Mutex<PhaseState>,
    cond: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
    vcpus: usize,
    /// Where each vCPU's RIP was when it left its run loop (diagnostics for timeouts/stops).
    last_rip: Mutex<Vec<Option<u64>>>,
}

/// Errors of the pause protocol.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Not every vCPU acknowledged the pause in time.
    #[error("only {parked} of {vcpus} vCPUs paused within {timeout:?}")]
    PauseTimeout {
        /// Parked so far.
        parked: usize,
        /// Total.
        vcpus: usize,
        /// How long we waited.
        timeout: Duration,
    },
    /// The VM is stopping or stopped.
    #[error("the VM is not running")]
    NotRunning,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// Control block for `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> std::io::Result<Self> {
        Ok(Self {
            exit: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            state: Mutex::new(PhaseState {
                phase: Phase::Running,
                parked: 0,
                exited: 0,
            }),
            cond: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            vcpus,
            last_rip: Mutex::new(vec![None; vcpus]),
        })
    }

    /// Record how the VM ended (the first report wins) and wake the VMM thread.
    pub fn finish(&self, why: VmExit) {
        let mut e = guard(&self.exit);
        if e.is_none() {
            *e = Some(why);
            // If this fails the eventfd counter is saturated, i.e. already signalled.
            let _ = self.exit_evt.write(1);
        }
    }

    /// How the VM ended, if it has.
    pub fn exit(&self) -> Option<VmExit> {
        guard(&self.exit).clone()
    }

    /// RIP of each vCPU when it stopped (None while running or if unknown).
    pub fn last_rips(&self) -> Vec<Option<u64>> {
        guard(&self.last_rip).clone()
    }

    pub(crate) fn add_thread(&self, t: libc::pthread_t) {
        guard(&self.threads).push(t);
    }

    fn kick_locked(threads: &[libc::pthread_t]) {
        for t in threads {
            // SAFETY: `t` belongs to a vCPU thread that has not been joined yet: threads are
            // removed from this list (under the same lock) before they are joined.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Make every vCPU leave KVM_RUN and look at the phase.
    fn kick_all(&self) {
        Self::kick_locked(&guard(&self.threads));
    }

    /// Stop all vCPUs; returns once they have been told (join their threads afterwards).
    pub fn stop_all(&self) {
        let threads = std::mem::take(&mut *guard(&self.threads));
        guard(&self.state).phase = Phase::Stopping;
        self.cond.notify_all();
        Self::kick_locked(&threads);
    }

    /// Pause every vCPU and wait until all are parked (or have exited).
    pub fn pause(&self, timeout: Duration) -> Result<(), ControlError> {
        {
            let mut s = guard(&self.state);
            match s.phase {
                Phase::Stopping => return Err(ControlError::NotRunning),
                Phase::Paused => return Ok(()),
                Phase::Running => s.phase = Phase::Paused,
            }
        }
        self.kick_all();
        let s = guard(&self.state);
        let (s, res) = self
            .cond
            .wait_timeout_while(s, timeout, |s| {
                s.phase == Phase::Paused && s.parked + s.exited < self.vcpus
            })
            .unwrap_or_else(|p| p.into_inner());
        if s.phase == Phase::Stopping {
            return Err(ControlError::NotRunning);
        }
        if res.timed_out() {
            return Err(ControlError::PauseTimeout {
                parked: s.parked,
                vcpus: self.vcpus,
                timeout,
            });
        }
        Ok(())
    }

    /// Let paused vCPUs run again.
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut s = guard(&self.state);
        match s.phase {
            Phase::Stopping => Err(ControlError::NotRunning),
            _ => {
                s.phase = Phase::Running;
                self.cond.notify_all();
                Ok(())
            }
        }
    }

    /// Called by a vCPU before each KVM_RUN: parks while paused; false when it must stop.
    fn wait_runnable(&self) -> bool {
        let mut s = guard(&self.state);
        if s.phase == Phase::Paused {
            s.parked += 1;
            self.cond.notify_all();
            while s.phase == Phase::Paused {
                s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.parked -= 1;
        }
        s.phase == Phase::Running
    }

    fn vcpu_exited(&self) {
        guard(&self.state).exited += 1;
        self.cond.notify_all();
    }
}

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: a thread-local read and a volatile byte store.
    let p = KVM_RUN_PTR.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer is the current thread's kvm_run mapping, published by
        // `run_vcpu` and cleared before that mapping is unmapped; the signal is delivered
        // to this thread, so nothing else runs on it concurrently.
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

static KICK_HANDLER: Once = Once::new();
static KICK_HANDLER_OK: AtomicBool = AtomicBool::new(false);

/// Install the kick signal handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    KICK_HANDLER.call_once(|| {
        let ok = vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick).is_ok();
        KICK_HANDLER_OK.store(ok, Ordering::SeqCst);
    });
    if KICK_HANDLER_OK.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "cannot install the vCPU kick signal handler",
        ))
    }
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Index (= APIC id).
    pub index: u8,
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Shared control block.
    pub control: Arc<Control>,
}

impl Vcpu {
    /// The run loop; returns when the VM ends or the vCPU is told to stop.
    pub fn run(mut self) {
        KVM_RUN_PTR.with(|c| c.set(self.fd.get_kvm_run() as *mut kvm_run));
        while self.control.wait_runnable() {
            match self.step() {
                Ok(None) => {}
                Ok(Some(exit)) => {
                    self.control.finish(exit);
                    break;
                }
                Err(e) => {
                    self.control.finish(VmExit::Crash(e));
                    break;
                }
            }
        }
        KVM_RUN_PTR.with(|c| c.set(std::ptr::null_mut()));
        if let Ok(regs) = self.fd.get_regs() {
            if let Some(slot) = guard(&self.control.last_rip).get_mut(usize::from(self.index)) {
                *slot = Some(regs.rip);
            }
        }
        self.control.vcpu_exited();
    }

    /// One KVM_RUN and its exit; Some(exit) when the VM is over.
    fn step(&mut self) -> Result<Option<VmExit>, String> {
        let idx = self.index;
        let (pio, mmio) = (&self.pio, &self.mmio);
        let outcome = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                pio.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if (debug_exit::DEBUG_EXIT_PORT..debug_exit::DEBUG_EXIT_PORT + debug_exit::DEBUG_EXIT_LEN)
                    .contains(&port)
                {
                    Some(Ok(VmExit::DebugExit(debug_exit::decode(data))))
                } else {
                    pio.write(u64::from(port), data);
                    None
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some(Ok(VmExit::Shutdown)),
            Ok(VcpuExit::Shutdown) => Some(Ok(VmExit::Reset)),
            Ok(VcpuExit::SystemEvent(ty, _)) => Some(Ok(match ty {
                KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Shutdown,
                KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                KVM_SYSTEM_EVENT_CRASH => VmExit::Crash(format!("vCPU {idx}: guest reported a crash")),
                t => VmExit::Crash(format!("vCPU {idx}: unknown system event {t}")),
            })),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(Err(format!(
                "vCPU {idx}: KVM_EXIT_FAIL_ENTRY, hardware entry failure reason {reason:#x} on host cpu {cpu}"
            ))),
            Ok(VcpuExit::InternalError) => Some(Err(String::new())),
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => None,
            Ok(other) => Some(Err(format!("vCPU {idx}: unhandled exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(Err(format!("vCPU {idx}: KVM_RUN failed: {e}"))),
        };
        match outcome {
            None => Ok(None),
            Some(Ok(exit)) => Ok(Some(exit)),
            Some(Err(msg)) if msg.is_empty() => {
                // SAFETY: reading the `internal` arm of the exit union is valid right after a
                // KVM_EXIT_INTERNAL_ERROR exit.
                let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                Err(format!(
                    "vCPU {idx}: KVM_EXIT_INTERNAL_ERROR, suberror {sub} (1 = instruction emulation failed)"
                ))
            }
            Some(Err(msg)) => Err(msg),
        }
    }
}
