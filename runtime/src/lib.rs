//! Vessel container library.

pub mod criu;
