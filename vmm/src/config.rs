//! The description of a microVM: what to boot, how big it is, where its console goes.
//!
//! A [`VmConfig`] deserializes from JSON or TOML (the role a libvirt domain XML plays for
//! qemu); [`VmConfig::from_file`] picks TOML for a `.toml` file and JSON otherwise:
//!
//! ```json
//! { "kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0", "vcpus": 2, "memory_mib": 256,
//!   "console": "stdio", "net": [ { "backend": { "tap": { "name": "vtap0" } } } ] }
//! ```
//!
//! ```toml
//! kernel = "/boot/vmlinuz"
//! cmdline = "console=ttyS0"
//! vcpus = 2
//! memory_mib = 256
//! console = "stdio"
//!
//! [[net]]
//! backend = { tap = { name = "vtap0" } }
//! mac = "02:00:00:00:00:01"
//! ```
//!
//! Unknown keys are errors in both, naming the key.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::devices::virtio::NetConfig;

/// Errors in a VM description.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading VM config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or has unknown fields.
    #[error("parsing VM config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("parsing VM config {path} (TOML)")]
    ParseToml {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A memory size such as `256M` could not be parsed.
    #[error("invalid memory size {0:?}: expected a number with an optional K, M or G suffix (default MiB)")]
    MemorySize(String),
    /// A console specification could not be parsed.
    #[error("invalid console {0:?}: expected stdio, none or file:PATH")]
    Console(String),
    /// A boot protocol name could not be parsed.
    #[error("invalid boot protocol {0:?}: expected auto, linux or pvh")]
    Boot(String),
}

/// Where the guest's serial console (COM1) goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleConfig {
    /// Guest output to our stdout, our stdin to the guest.
    #[default]
    Stdio,
    /// Guest output appended to a file; no input.
    File(PathBuf),
    /// Output discarded; no input.
    None,
}

impl FromStr for ConsoleConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(Self::Stdio),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(ConfigError::Console(s.into())),
            },
        }
    }
}

/// How application processors (every vCPU but the first) start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApStart {
    /// APs wait for INIT/SIPI from the boot processor, as on real hardware (Linux).
    #[default]
    Sipi,
    /// Every vCPU starts in long mode at the kernel entry with the same boot registers, so a
    /// guest needs no real-mode trampoline; it tells the CPUs apart by their APIC ids.
    Direct,
}

/// Which boot protocol enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH when the kernel is an ELF with a PVH entry note, the Linux 64-bit protocol
    /// otherwise.
    #[default]
    Auto,
    /// The Linux boot protocol: 64-bit mode, identity page tables, RSI = zero page.
    Linux,
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info` (an error for kernels
    /// without the note).
    Pvh,
}

impl FromStr for BootProtocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "linux" => Ok(Self::Linux),
            "pvh" => Ok(Self::Pvh),
            _ => Err(ConfigError::Boot(s.into())),
        }
    }
}

/// A whole microVM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel image: an ELF (vmlinux, or any ELF64 entered in long mode) or a bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs (1..=KVM's maximum).
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Serial console.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// virtio-net devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// How APs start.
    #[serde(default)]
    pub ap_start: ApStart,
    /// Boot protocol.
    #[serde(default)]
    pub boot: BootProtocol,
    /// Provide ACPI tables (MADT, and a DSDT describing the virtio-mmio devices).
    #[serde(default = "default_true")]
    pub acpi: bool,
    /// Stop the guest (and report [`crate::VmExit::Timeout`]) after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
}

fn default_true() -> bool {
    true
}

fn default_vcpus() -> u8 {
    1
}

fn default_memory() -> u64 {
    128
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            console: ConsoleConfig::default(),
            net: Vec::new(),
            ap_start: ApStart::default(),
            boot: BootProtocol::default(),
            acpi: true,
            timeout_secs: None,
        }
    }

    /// Load a config from a file: TOML if its name ends in `.toml`, JSON otherwise.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|source| ConfigError::ParseToml {
                path: path.into(),
                source,
            })
        } else {
            serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.into(),
                source,
            })
        }
    }

    /// The timeout as a duration, if any (negative or NaN values mean none).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_secs
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    }
}

/// Parse a memory size such as `256`, `256M`, `1G`, `65536K` into MiB.
pub fn parse_memory_mib(s: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::MemorySize(s.into());
    let t = s.trim();
    let (num, mul_kib) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64),
        Some((i, 'M' | 'm')) => (&t[..i], 1024),
        Some((i, 'G' | 'g')) => (&t[..i], 1024 * 1024),
        _ => (t, 1024),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    let kib = n.checked_mul(mul_kib).ok_or_else(err)?;
    if kib % 1024 != 0 {
        return Err(err());
    }
    Ok(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("256").unwrap(), 256);
        assert_eq!(parse_memory_mib("256M").unwrap(), 256);
        assert_eq!(parse_memory_mib("2G").unwrap(), 2048);
        assert_eq!(parse_memory_mib("65536K").unwrap(), 64);
        for bad in ["", "M", "12X", "-1", "100K", "99999999999999999999G"] {
            assert!(parse_memory_mib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn console_specs() {
        assert_eq!(
            "stdio".parse::<ConsoleConfig>().unwrap(),
            ConsoleConfig::Stdio
        );
        assert_eq!(
            "none".parse::<ConsoleConfig>().unwrap(),
            ConsoleConfig::None
        );
        assert_eq!(
            "file:/tmp/x".parse::<ConsoleConfig>().unwrap(),
            ConsoleConfig::File("/tmp/x".into())
        );
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert!("tty".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn boot_protocols() {
        assert_eq!("pvh".parse::<BootProtocol>().unwrap(), BootProtocol::Pvh);
        assert_eq!(
            "linux".parse::<BootProtocol>().unwrap(),
            BootProtocol::Linux
        );
        assert_eq!("auto".parse::<BootProtocol>().unwrap(), BootProtocol::Auto);
        assert!("efi".parse::<BootProtocol>().is_err());
        assert_eq!(VmConfig::new("/k").boot, BootProtocol::Auto);
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","cmdline":"console=ttyS0","console":{"file":"/tmp/c"},
                "net":[{"backend":{"tap":{"name":"t0"}}}]}"#,
        )
        .unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.console, ConsoleConfig::File("/tmp/c".into()));
        assert_eq!(c.net.len(), 1);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","cpus":2}"#).is_err());
    }

    #[test]
    fn toml_file_describes_the_same_vm_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("vm.json");
        std::fs::write(
            &json,
            r#"{"kernel":"/k","cmdline":"console=ttyS0","vcpus":2,"memory_mib":256,
                "console":{"file":"/tmp/c"},"ap_start":"direct","boot":"pvh","acpi":false,"timeout_secs":1.5,
                "net":[{"backend":{"tap":{"name":"t0"}},"mac":"02:00:00:00:00:01"},
                       {"backend":{"macvtap":{"link":"mv0"}}}]}"#,
        )
        .unwrap();
        let toml = dir.path().join("vm.toml");
        std::fs::write(
            &toml,
            r#"
kernel = "/k"
cmdline = "console=ttyS0"
vcpus = 2
memory_mib = 256
console = { file = "/tmp/c" }
ap_start = "direct"
boot = "pvh"
acpi = false
timeout_secs = 1.5

[[net]]
backend = { tap = { name = "t0" } }
mac = "02:00:00:00:00:01"

[[net]]
backend = { macvtap = { link = "mv0" } }
"#,
        )
        .unwrap();
        let a = VmConfig::from_file(&json).unwrap();
        let b = VmConfig::from_file(&toml).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.net.len(), 2);
        assert_eq!(b.timeout(), Some(Duration::from_millis(1500)));
        // Defaults apply the same way.
        std::fs::write(&toml, "kernel = \"/k\"\nconsole = \"none\"\n").unwrap();
        let c = VmConfig::from_file(&toml).unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.acpi), (1, 128, true));
        assert_eq!(c.console, ConsoleConfig::None);
    }

    #[test]
    fn toml_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("vm.toml");
        for (text, what) in [
            ("kernel = \"/k\"\ncpus = 2\n", "cpus"),
            ("kernel = \"/k\"\nvcpus = \"two\"\n", "vcpus"),
            (
                "kernel = \"/k\"\n[[net]]\nbackend = { tap = { nam = \"t\" } }\n",
                "nam",
            ),
            (
                "kernel = \"/k\"\n[[net]]\nbackend = { tap = { name = \"t\" } }\nmac = \"zz\"\n",
                "zz",
            ),
            ("kernel = /k\n", "kernel"),
            ("cmdline = \"x\"\n", "kernel"),
        ] {
            std::fs::write(&toml, text).unwrap();
            let e = VmConfig::from_file(&toml).unwrap_err();
            assert!(matches!(e, ConfigError::ParseToml { .. }), "{text}: {e:?}");
            assert!(e.to_string().contains("vm.toml"), "{e}");
            let why = std::error::Error::source(&e).unwrap().to_string();
            assert!(why.contains(what), "{text}: {why}");
        }
    }
}
