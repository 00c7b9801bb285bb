//! Vessel container library.
pub mod rootfs;
