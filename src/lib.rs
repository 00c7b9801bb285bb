//! Vessel: isolate Linux workloads as OCI containers or as KVM microVMs.
//!
//! This facade crate re-exports the two libraries:
//! - [`runtime`] — the container library (`vessel-runtime`);
//! - [`vmm`] — the microVM library (`vessel-vmm`).
//!
//! # A container from an OCI bundle
//!
//! ```no_run
//! use std::path::Path;
//! use nix::sys::signal::Signal;
//! use vessel::runtime::{Container, CreateOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = CreateOptions { root: "/run/vessel".into(), ..Default::default() };
//! // Namespaces, cgroup, rootfs and seccomp are set up; the init waits for `start`.
//! let mut c = Container::create("demo", Path::new("/path/to/bundle"), &opts)?;
//! println!("init pid {} is {:?}", c.pid(), c.state().status);
//! c.start()?;
//! c.kill(Signal::SIGTERM, false)?;
//! Container::load(&opts.root, "demo")?.delete(true)?;
//! # Ok(())
//! # }
//! ```
//!
//! # A microVM
//!
//! ```no_run
//! use vessel::vmm::{VmBuilder, VmConfig, VmExit};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cfg = VmConfig::new("fixtures/.cache/guest/vessel-test-guest");
//! cfg.cmdline = "hello".into();
//! cfg.memory_mib = 32;
//! let exit = VmBuilder::new(cfg).build()?.run()?;
//! assert!(matches!(exit, VmExit::Shutdown));
//! # Ok(())
//! # }
//! ```

pub use vessel_runtime as runtime;
pub use vessel_vmm as vmm;
