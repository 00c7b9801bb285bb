//! Minimal synchronous rtnetlink client: look up, create, configure and delete links and
//! addresses. Built on `netlink-packet-route` (message types) and `netlink-sys` (socket).
//!
//! Every request is sent with `NLM_F_ACK` and waits for the kernel's answer, so errors
//! (`EEXIST`, `ENODEV`, `EPERM`...) come back synchronously. The socket is created per call in
//! the network namespace of the calling thread.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVtap, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVtapMode,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::tap::validate_ifname;

/// Errors of rtnetlink requests.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A link name is not a valid interface name.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// The netlink socket could not be opened, bound or used.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel rejected the request.
    #[error("{request} rejected by the kernel")]
    Kernel {
        /// What was asked.
        request: String,
        /// The errno the kernel answered with.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("cannot decode netlink answer to {request}: {detail}")]
    Decode {
        /// What was asked.
        request: String,
        /// Decoder message.
        detail: String,
    },
    /// No link has this name.
    #[error("no link named {0:?}")]
    NoSuchLink(String),
}

impl NetlinkError {
    /// The errno the kernel answered with, if the kernel rejected the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Send one request and collect the messages of the answer until the ACK (or error).
fn request(
    what: &str,
    msg: RouteNetlinkMessage,
    extra_flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(NetlinkError::Socket)?;

    let decode_err = |detail: String| NetlinkError::Decode {
        request: what.to_string(),
        detail,
    };
    let mut answers = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(NetlinkError::Socket)?;
        let mut offset = 0;
        while offset < data.len() {
            let rest = &data[offset..];
            let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| decode_err(e.to_string()))?;
            let len = parsed.header.length as usize;
            if len == 0 {
                return Err(decode_err("zero-length message".into()));
            }
            match parsed.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(answers),
                        Some(_) => Err(NetlinkError::Kernel {
                            request: what.to_string(),
                            source: e.to_io(),
                        }),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                _ => {}
            }
            // Messages are 4-byte aligned within a datagram.
            offset += (len + 3) & !3;
        }
    }
}

/// The interface index of link `name` in the calling thread's network namespace.
pub fn link_index(name: &str) -> Result<u32, NetlinkError> {
    validate_ifname(name).map_err(|_| NetlinkError::InvalidName(name.into()))?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let what = format!("RTM_GETLINK {name}");
    let answers = request(&what, RouteNetlinkMessage::GetLink(msg), 0).map_err(|e| {
        if e.errno() == Some(libc::ENODEV) {
            NetlinkError::NoSuchLink(name.into())
        } else {
            e
        }
    })?;
    answers
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::NoSuchLink(name.into()))
}

/// Set link `name` administratively up or down.
pub fn set_link_up(name: &str, up: bool) -> Result<(), NetlinkError> {
    let index = link_index(name)?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.change_mask = LinkFlags::Up;
    if up {
        msg.header.flags = LinkFlags::Up;
    }
    let what = format!("RTM_NEWLINK {name} {}", if up { "up" } else { "down" });
    request(&what, RouteNetlinkMessage::NewLink(msg), 0).map(|_| ())
}

/// Add `addr/prefix_len` to link `name`.
pub fn add_address(name: &str, addr: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
    let index = link_index(name)?;
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = prefix_len;
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    let what = format!("RTM_NEWADDR {addr}/{prefix_len} on {name}");
    request(
        &what,
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(|_| ())
}

/// Create macvtap link `name` in bridge mode on top of link `lower`, optionally with `mac`.
pub fn create_macvtap(name: &str, lower: &str, mac: Option<[u8; 6]>) -> Result<(), NetlinkError> {
    validate_ifname(name).map_err(|_| NetlinkError::InvalidName(name.into()))?;
    let lower_index = link_index(lower)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Link(lower_index));
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::MacVtap),
        LinkInfo::Data(InfoData::MacVtap(vec![InfoMacVtap::Mode(
            MacVtapMode::Bridge,
        )])),
    ]));
    let what = format!("RTM_NEWLINK macvtap {name} on {lower}");
    request(
        &what,
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(|_| ())
}

/// Delete link `name`.
pub fn delete_link(name: &str) -> Result<(), NetlinkError> {
    let index = link_index(name)?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let what = format!("RTM_DELLINK {name}");
    request(&what, RouteNetlinkMessage::DelLink(msg), 0).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_index_one_and_missing_links_are_reported() {
        assert_eq!(link_index("lo").unwrap(), 1);
        let missing = crate::net::testutil::unique_ifname("nx");
        assert!(matches!(
            link_index(&missing),
            Err(NetlinkError::NoSuchLink(_))
        ));
        assert!(matches!(
            delete_link(&missing),
            Err(NetlinkError::NoSuchLink(_))
        ));
        assert!(matches!(
            link_index("bad/name"),
            Err(NetlinkError::InvalidName(_))
        ));
    }

    #[test]
    fn macvtap_on_missing_lower_fails_cleanly() {
        let name = crate::net::testutil::unique_ifname("mv");
        let lower = crate::net::testutil::unique_ifname("nx");
        assert!(create_macvtap(&name, &lower, None).is_err());
        assert!(link_index(&name).is_err());
    }
}
