//! Vessel container library.
