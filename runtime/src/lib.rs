//! Vessel container library.

#[cfg(test)]
#[macro_use]
mod test_util;

pub mod capabilities;
pub mod cgroups;
pub mod criu;
pub mod hooks;
pub mod idmap;
pub mod process_attrs;
pub mod rlimits;
pub mod seccomp;
