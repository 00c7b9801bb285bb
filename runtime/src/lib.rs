//! Vessel container library.

pub mod cgroups;
pub mod idmap;
