//! Host-side network backends for virtio-net: tap and macvtap character devices, and the
//! small rtnetlink helpers needed to create, configure and delete links.

pub mod macvtap;
pub mod netlink;
pub mod tap;

pub use macvtap::{MacvtapError, MacvtapLink};
pub use netlink::NetlinkError;
pub use tap::{Tap, TapError};

#[cfg(test)]
pub(crate) mod testutil;
