//! Vessel container library.

pub mod idmap;
