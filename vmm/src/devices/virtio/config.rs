//! Configuration of virtio network devices, shared by `VmConfig` and the device model.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a virtio-net device sends and receives its frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum NetBackend {
    /// A tap interface, opened (or created) by name through `/dev/net/tun`.
    Tap {
        /// Interface name, e.g. `vtap0`.
        name: String,
    },
    /// An existing macvtap link; its character device `/dev/tapN` is opened.
    Macvtap {
        /// Name of the macvtap link, e.g. `mvtap0`.
        link: String,
    },
}

/// One virtio-net device of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The host side of the device.
    pub backend: NetBackend,
    /// Guest MAC address; when absent the device offers none and the guest picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

/// A 48-bit Ethernet address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Error parsing a [`MacAddr`].
#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes separated by ':'")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(|| MacParseError(s.into()))?;
            if part.len() != 2 {
                return Err(MacParseError(s.into()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.into()));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let m: MacAddr = "52:54:00:12:34:5f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0x12, 0x34, 0x5f]);
        assert_eq!(m.to_string(), "52:54:00:12:34:5f");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:5f:00",
            "5:54:00:12:34:5f",
            "zz:54:00:12:34:5f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn net_config_json() {
        let c: NetConfig = serde_json::from_str(
            r#"{"backend":{"macvtap":{"link":"mv0"}},"mac":"02:00:00:00:00:01"}"#,
        )
        .unwrap();
        assert_eq!(c.backend, NetBackend::Macvtap { link: "mv0".into() });
        assert!(
            serde_json::from_str::<NetConfig>(r#"{"backend":{"tap":{"name":"t"}},"bogus":1}"#)
                .is_err()
        );
    }
}
