//! Vessel microVM library.
