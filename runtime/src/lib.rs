//! Vessel container library: runs OCI bundles like runc/crun.
//!
//! The lifecycle lives in [`container`] ([`Container::create`], [`Container::start`],
//! [`Container::kill`], [`Container::exec`], [`Container::delete`], [`Container::list`]);
//! its design (one clone from the caller, no re-exec, exec.fifo, flock'ed state) is
//! described there. [`spec`] reads config.json strictly and writes the default one,
//! [`state`] is the state store, [`namespaces`] the namespace plan, [`process`] the
//! child side, [`terminal`] the console, [`wait`] foreground waiting.

#[cfg(test)]
#[macro_use]
mod test_util;

pub mod capabilities;
pub mod cgroups;
pub mod checkpoint;
pub mod container;
pub mod criu;
pub mod events;
pub mod features;
pub mod hooks;
pub mod idmap;
pub mod idmount;
mod integration;
pub mod migration;
pub mod namespaces;
pub mod process;
pub mod process_attrs;
pub mod rlimits;
pub mod rootfs;
pub mod seccomp;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod sync;
pub mod terminal;
pub mod userns;
pub mod wait;

pub use container::{Container, ContainerError, CreateOptions, ExecOptions};
pub use integration::{IntegrationError, RootfsOptions};
pub use state::{State, Status};
