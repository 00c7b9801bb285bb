//! Vessel microVM library: a minimal VMM on /dev/kvm built from rust-vmm crates.
//!
//! ```no_run
//! use vessel_vmm::{VmBuilder, VmConfig, VmExit};
//! let mut cfg = VmConfig::new("/path/to/vmlinux");
//! cfg.cmdline = "console=ttyS0".into();
//! let exit = VmBuilder::new(cfg).build()?.run()?;
//! assert_eq!(exit, VmExit::Shutdown);
//! # Ok::<(), vessel_vmm::VmError>(())
//! ```
#![warn(missing_docs)]

pub mod boot;
pub mod builder;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod event_loop;
pub mod memory;
pub mod net;
pub mod seccomp;
pub mod vcpu;
pub mod vm;

pub use builder::VmBuilder;
pub use config::{ApStart, ConsoleConfig, VmConfig};
pub use vcpu::VmExit;
pub use vm::{Vm, VmHandle};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// /dev/kvm could not be opened.
    #[error("opening /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// vCPU count out of range.
    #[error(
        "invalid vCPU count {requested}: must be between 1 and {max} (KVM's maximum on this host, at most 254)"
    )]
    Vcpus {
        /// Asked for.
        requested: usize,
        /// KVM's maximum (0 when not yet known).
        max: usize,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Loading or laying out boot data.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// vCPU setup.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// Device registration.
    #[error(transparent)]
    Bus(#[from] devices::bus::BusError),
    /// The kernel command line is invalid or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be written.
    #[error("writing the kernel command line")]
    CmdlineLoad(#[source] linux_loader::loader::Error),
    /// Opening the console output.
    #[error("opening the console output")]
    Console(#[source] std::io::Error),
    /// Creating an eventfd or timerfd.
    #[error("creating an eventfd/timerfd")]
    EventFd(#[source] std::io::Error),
    /// Too many network devices.
    #[error("{0} network devices requested; at most 8 are supported")]
    TooManyNetDevices(usize),
    /// A virtio-net device could not be created.
    #[error("network device {index}")]
    Net {
        /// Position in `VmConfig::net`.
        index: usize,
        /// Why.
        #[source]
        source: crate::devices::virtio::VirtioError,
    },
    /// Seccomp.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The kick signal handler.
    #[error("installing the vCPU kick signal handler")]
    Signal(#[source] std::io::Error),
    /// Spawning a thread.
    #[error("spawning a VM thread")]
    Spawn(#[source] std::io::Error),
    /// The event loop failed.
    #[error("VMM event loop")]
    EventLoop(#[source] event_manager::Error),
    /// The VMM thread panicked.
    #[error("the VMM thread panicked")]
    VmmThreadPanicked,
}
