//! Vessel container library.
pub mod cgroups;
