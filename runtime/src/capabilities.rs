//! Capability sets of the container process (`process.capabilities`).
//!
//! Unknown capability names are refused when the config is parsed: oci-spec's
//! `Capability` deserializer rejects them ("no variant for CAP_FOO"). Capabilities this
//! kernel does not know are left out silently, as runc does.
//!
//! Order in the init process when the user changes:
//! [`keep_caps_for_setuid`] → `process_attrs::set_user` → [`apply`] → [`clear_keep_caps`].
//! [`apply`] also works as root without a uid change.

use caps::{CapSet, Capability as Cap, CapsHashSet};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Errors of applying capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A capability is in a set that requires it to be permitted too.
    #[error("{set} capabilities {cap} are not in the permitted set")]
    NotPermitted {
        /// "effective".
        set: &'static str,
        /// The capability.
        cap: String,
    },
    /// The process lacks a capability it is asked to keep.
    #[error(
        "cannot keep {set} capability {cap}: the process does not have it in its permitted set"
    )]
    NotHeld {
        /// The set asked for.
        set: &'static str,
        /// The capability.
        cap: String,
    },
    /// Dropping from the bounding set failed.
    #[error("dropping {cap} from the bounding set (needs CAP_SETPCAP): {source}")]
    DropBounding {
        /// The capability.
        cap: String,
        /// caps' error.
        #[source]
        source: caps::errors::CapsError,
    },
    /// Setting one of the sets failed.
    #[error("setting the {set} capability set: {source}")]
    Set {
        /// The set.
        set: &'static str,
        /// caps' error.
        #[source]
        source: caps::errors::CapsError,
    },
    /// Raising an ambient capability failed.
    #[error("raising ambient capability {cap}: {source}")]
    Ambient {
        /// The capability.
        cap: String,
        /// caps' error.
        #[source]
        source: caps::errors::CapsError,
    },
    /// Reading the current sets failed.
    #[error("reading the {set} capability set: {source}")]
    Read {
        /// The set.
        set: &'static str,
        /// caps' error.
        #[source]
        source: caps::errors::CapsError,
    },
    /// `PR_SET_KEEPCAPS` failed.
    #[error("prctl(PR_SET_KEEPCAPS): {0}")]
    KeepCaps(#[source] caps::errors::CapsError),
}

/// Maps an OCI capability to the caps crate's (exhaustive match: a new oci-spec variant is
/// a compile error here rather than a silent drop).
pub fn to_caps(c: Capability) -> Cap {
    use Capability as C;
    match c {
        C::AuditControl => Cap::CAP_AUDIT_CONTROL,
        C::AuditRead => Cap::CAP_AUDIT_READ,
        C::AuditWrite => Cap::CAP_AUDIT_WRITE,
        C::BlockSuspend => Cap::CAP_BLOCK_SUSPEND,
        C::Bpf => Cap::CAP_BPF,
        C::CheckpointRestore => Cap::CAP_CHECKPOINT_RESTORE,
        C::Chown => Cap::CAP_CHOWN,
        C::DacOverride => Cap::CAP_DAC_OVERRIDE,
        C::DacReadSearch => Cap::CAP_DAC_READ_SEARCH,
        C::Fowner => Cap::CAP_FOWNER,
        C::Fsetid => Cap::CAP_FSETID,
        C::IpcLock => Cap::CAP_IPC_LOCK,
        C::IpcOwner => Cap::CAP_IPC_OWNER,
        C::Kill => Cap::CAP_KILL,
        C::Lease => Cap::CAP_LEASE,
        C::LinuxImmutable => Cap::CAP_LINUX_IMMUTABLE,
        C::MacAdmin => Cap::CAP_MAC_ADMIN,
        C::MacOverride => Cap::CAP_MAC_OVERRIDE,
        C::Mknod => Cap::CAP_MKNOD,
        C::NetAdmin => Cap::CAP_NET_ADMIN,
        C::NetBindService => Cap::CAP_NET_BIND_SERVICE,
        C::NetBroadcast => Cap::CAP_NET_BROADCAST,
        C::NetRaw => Cap::CAP_NET_RAW,
        C::Perfmon => Cap::CAP_PERFMON,
        C::Setgid => Cap::CAP_SETGID,
        C::Setfcap => Cap::CAP_SETFCAP,
        C::Setpcap => Cap::CAP_SETPCAP,
        C::Setuid => Cap::CAP_SETUID,
        C::SysAdmin => Cap::CAP_SYS_ADMIN,
        C::SysBoot => Cap::CAP_SYS_BOOT,
        C::SysChroot => Cap::CAP_SYS_CHROOT,
        C::SysModule => Cap::CAP_SYS_MODULE,
        C::SysNice => Cap::CAP_SYS_NICE,
        C::SysPacct => Cap::CAP_SYS_PACCT,
        C::SysPtrace => Cap::CAP_SYS_PTRACE,
        C::SysRawio => Cap::CAP_SYS_RAWIO,
        C::SysResource => Cap::CAP_SYS_RESOURCE,
        C::SysTime => Cap::CAP_SYS_TIME,
        C::SysTtyConfig => Cap::CAP_SYS_TTY_CONFIG,
        C::Syslog => Cap::CAP_SYSLOG,
        C::WakeAlarm => Cap::CAP_WAKE_ALARM,
    }
}

fn set_of(s: &Option<Capabilities>, supported: &CapsHashSet) -> CapsHashSet {
    s.iter()
        .flatten()
        .map(|c| to_caps(*c))
        .filter(|c| supported.contains(c))
        .collect()
}

/// The capabilities of `a` that are not in `b`, sorted and comma-separated, if any.
fn missing(a: &CapsHashSet, b: &CapsHashSet) -> Option<String> {
    let mut v: Vec<String> = a.difference(b).map(|c| c.to_string()).collect();
    v.sort();
    (!v.is_empty()).then(|| v.join(", "))
}

/// Applies the five capability sets to the calling thread: drops the bounding set first,
/// then sets inheritable, effective and permitted, then replaces the ambient set. A set that
/// is absent from the config is empty (as in runc). Ambient capabilities that are not both
/// permitted and inheritable cannot be raised and are left out, as runc does (see
/// [`unraisable_ambient`] to log them).
///
/// Needs `CAP_SETPCAP` in the permitted set when the bounding set shrinks. Works after a
/// switch to a non-root uid if [`keep_caps_for_setuid`] was called before it (the kernel
/// then keeps the permitted set and this function raises what it needs from it).
pub fn apply(spec: &LinuxCapabilities) -> Result<(), CapsError> {
    let supported = caps::runtime::thread_all_supported();
    let bounding = set_of(spec.bounding(), &supported);
    let effective = set_of(spec.effective(), &supported);
    let permitted = set_of(spec.permitted(), &supported);
    let inheritable = set_of(spec.inheritable(), &supported);
    let ambient = set_of(spec.ambient(), &supported);

    if let Some(cap) = missing(&effective, &permitted) {
        return Err(CapsError::NotPermitted {
            set: "effective",
            cap,
        });
    }
    // The kernel only raises ambient capabilities that are permitted and inheritable;
    // like runc, the others are left out rather than failing (runc's own `runc spec`
    // template lists ambient capabilities without an inheritable set).
    let ambient: CapsHashSet = ambient
        .intersection(&permitted)
        .filter(|c| inheritable.contains(c))
        .copied()
        .collect();

    let read = |set: CapSet, name: &'static str| {
        caps::read(None, set).map_err(|source| CapsError::Read { set: name, source })
    };
    let current_permitted = read(CapSet::Permitted, "permitted")?;
    if let Some(cap) = missing(&permitted, &current_permitted) {
        return Err(CapsError::NotHeld {
            set: "permitted",
            cap,
        });
    }

    // Everything we hold becomes effective for the duration of the changes (CAP_SETPCAP
    // for the bounding set, after a setuid the effective set is empty).
    caps::set(None, CapSet::Effective, &current_permitted).map_err(|source| CapsError::Set {
        set: "effective",
        source,
    })?;

    let current_bounding = read(CapSet::Bounding, "bounding")?;
    let mut drops: Vec<Cap> = current_bounding.difference(&bounding).copied().collect();
    drops.sort_by_key(|c| c.index());
    for c in drops {
        caps::drop(None, CapSet::Bounding, c).map_err(|source| CapsError::DropBounding {
            cap: c.to_string(),
            source,
        })?;
    }

    let set = |set: CapSet, name: &'static str, value: &CapsHashSet| {
        caps::set(None, set, value).map_err(|source| CapsError::Set { set: name, source })
    };
    set(CapSet::Inheritable, "inheritable", &inheritable)?;
    set(CapSet::Effective, "effective", &effective)?;
    set(CapSet::Permitted, "permitted", &permitted)?;

    caps::clear(None, CapSet::Ambient).map_err(|source| CapsError::Set {
        set: "ambient",
        source,
    })?;
    let mut amb: Vec<Cap> = ambient.into_iter().collect();
    amb.sort_by_key(|c| c.index());
    for c in amb {
        caps::raise(None, CapSet::Ambient, c).map_err(|source| CapsError::Ambient {
            cap: c.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// The ambient capabilities of `spec` that [`apply`] leaves out because they are not both
/// permitted and inheritable (for a warning).
pub fn unraisable_ambient(spec: &LinuxCapabilities) -> Vec<String> {
    let all = caps::all();
    let ambient = set_of(spec.ambient(), &all);
    let permitted = set_of(spec.permitted(), &all);
    let inheritable = set_of(spec.inheritable(), &all);
    let mut v: Vec<String> = ambient
        .iter()
        .filter(|c| !permitted.contains(c) || !inheritable.contains(c))
        .map(|c| c.to_string())
        .collect();
    v.sort();
    v
}

/// Sets `PR_SET_KEEPCAPS` so the permitted set survives the switch from uid 0 to the
/// container user. Call [`clear_keep_caps`] once the capabilities are applied.
pub fn keep_caps_for_setuid() -> Result<(), CapsError> {
    caps::securebits::set_keepcaps(true).map_err(CapsError::KeepCaps)
}

/// Clears `PR_SET_KEEPCAPS` again (it is also cleared by the kernel on execve).
pub fn clear_keep_caps() -> Result<(), CapsError> {
    caps::securebits::set_keepcaps(false).map_err(CapsError::KeepCaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_child_ok, in_child};

    fn caps_json(json: &str) -> LinuxCapabilities {
        serde_json::from_str(json).unwrap()
    }

    /// The hex masks of /proc/self/status for CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    fn status_masks() -> [u64; 5] {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let get = |key: &str| -> u64 {
            let line = status
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("{key} missing"));
            u64::from_str_radix(line[key.len()..].trim(), 16).unwrap()
        };
        [
            get("CapInh:"),
            get("CapPrm:"),
            get("CapEff:"),
            get("CapBnd:"),
            get("CapAmb:"),
        ]
    }

    fn mask(cs: &[Cap]) -> u64 {
        cs.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b)
    }

    const SPEC: &str = r#"{
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETPCAP"],
        "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
        "inheritable": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
        "ambient": ["CAP_NET_BIND_SERVICE"]
    }"#;

    fn expected() -> [u64; 5] {
        [
            mask(&[Cap::CAP_NET_BIND_SERVICE, Cap::CAP_CHOWN]),
            mask(&[Cap::CAP_KILL, Cap::CAP_NET_BIND_SERVICE, Cap::CAP_CHOWN]),
            mask(&[Cap::CAP_KILL, Cap::CAP_NET_BIND_SERVICE]),
            mask(&[
                Cap::CAP_CHOWN,
                Cap::CAP_KILL,
                Cap::CAP_NET_BIND_SERVICE,
                Cap::CAP_SETPCAP,
            ]),
            mask(&[Cap::CAP_NET_BIND_SERVICE]),
        ]
    }

    fn skip_unless_root_caps() -> bool {
        let prm = caps::read(None, CapSet::Permitted).unwrap();
        if !prm.contains(&Cap::CAP_SETPCAP) || !prm.contains(&Cap::CAP_SETUID) {
            println!("SKIPPED: needs CAP_SETPCAP and CAP_SETUID");
            return true;
        }
        false
    }

    #[test]
    fn apply_sets_all_five_sets() {
        if skip_unless_root_caps() {
            return;
        }
        let spec = caps_json(SPEC);
        assert_child_ok(|| {
            if let Err(e) = apply(&spec) {
                child_eprintln!("apply: {e}");
                return 1;
            }
            let got = status_masks();
            if got != expected() {
                child_eprintln!("got {got:x?}, want {:x?}", expected());
                return 2;
            }
            0
        });
    }

    #[test]
    fn apply_after_setuid_with_keep_caps() {
        if skip_unless_root_caps() {
            return;
        }
        let spec = caps_json(SPEC);
        assert_child_ok(|| {
            if keep_caps_for_setuid().is_err() {
                return 1;
            }
            let nobody = nix::unistd::Uid::from_raw(65534);
            if nix::unistd::setresuid(nobody, nobody, nobody).is_err() {
                return 2;
            }
            if let Err(e) = apply(&spec) {
                child_eprintln!("apply: {e}");
                return 3;
            }
            if clear_keep_caps().is_err() || caps::securebits::has_keepcaps().unwrap_or(true) {
                return 4;
            }
            let got = status_masks();
            if got != expected() || nix::unistd::getuid().as_raw() != 65534 {
                child_eprintln!("got {got:x?}, want {:x?}", expected());
                return 5;
            }
            0
        });
    }

    #[test]
    fn setuid_without_keep_caps_loses_them() {
        if skip_unless_root_caps() {
            return;
        }
        let spec = caps_json(SPEC);
        let st = in_child(|| {
            let nobody = nix::unistd::Uid::from_raw(65534);
            if nix::unistd::setresuid(nobody, nobody, nobody).is_err() {
                return 2;
            }
            match apply(&spec) {
                Err(CapsError::NotHeld { .. }) => 0,
                Err(e) => {
                    child_eprintln!("{e}");
                    3
                }
                Ok(()) => 4,
            }
        });
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
            "{st:?}"
        );
    }

    #[test]
    fn missing_sets_are_empty() {
        if skip_unless_root_caps() {
            return;
        }
        let spec = caps_json(r#"{"bounding":["CAP_KILL"]}"#);
        assert_child_ok(|| {
            if apply(&spec).is_err() {
                return 1;
            }
            if status_masks() != [0, 0, 0, mask(&[Cap::CAP_KILL]), 0] {
                return 2;
            }
            0
        });
    }

    #[test]
    fn ambient_without_inheritable_is_left_out_like_runc() {
        if skip_unless_root_caps() {
            return;
        }
        // The shape of `runc spec`'s template (and of fixtures/config.json).
        let names = r#"["CAP_AUDIT_WRITE","CAP_KILL","CAP_NET_BIND_SERVICE"]"#;
        let spec = caps_json(&format!(
            r#"{{"bounding":{names},"effective":{names},"permitted":{names},"ambient":{names}}}"#
        ));
        assert_eq!(
            unraisable_ambient(&spec),
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
        let m = mask(&[
            Cap::CAP_AUDIT_WRITE,
            Cap::CAP_KILL,
            Cap::CAP_NET_BIND_SERVICE,
        ]);
        assert_child_ok(|| {
            if let Err(e) = apply(&spec) {
                child_eprintln!("{e}");
                return 1;
            }
            let got = status_masks();
            if got != [0, m, m, m, 0] {
                child_eprintln!("{got:x?}");
                return 2;
            }
            0
        });
        assert!(unraisable_ambient(&caps_json(SPEC)).is_empty());
    }

    #[test]
    fn bad_specs() {
        let e = serde_json::from_str::<LinuxCapabilities>(r#"{"bounding":["CAP_FLY"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CAP_FLY"), "{e}");
        // Validation errors come before any change, but run in a child all the same.
        let cases = [
            (
                r#"{"effective":["CAP_KILL"],"permitted":[]}"#,
                ["CAP_KILL", "effective"],
            ),
            (
                r#"{"effective":["CAP_KILL","CAP_CHOWN"],"permitted":["CAP_KILL"]}"#,
                ["CAP_CHOWN", "permitted"],
            ),
        ];
        for (json, words) in cases {
            let spec = caps_json(json);
            assert_child_ok(|| match apply(&spec) {
                Err(e) if words.iter().all(|w| e.to_string().contains(w)) => 0,
                other => {
                    child_eprintln!("{other:?}");
                    1
                }
            });
        }
    }
}
