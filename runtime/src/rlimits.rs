//! Resource limits of the container process (`process.rlimits`).
//!
//! Uses setrlimit(2) on the calling process (the container init calls it before exec).
//! Raising a hard limit needs `CAP_SYS_RESOURCE`; `RLIMIT_NOFILE` cannot exceed
//! `fs.nr_open`. `u64::MAX` means `RLIM_INFINITY`.

use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

/// Errors of applying rlimits.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    /// The same resource appears twice.
    #[error("rlimit {0} is given more than once")]
    Duplicate(String),
    /// soft > hard.
    #[error("rlimit {name}: soft limit {soft} is above the hard limit {hard}")]
    SoftAboveHard {
        /// Resource name.
        name: String,
        /// Soft limit.
        soft: u64,
        /// Hard limit.
        hard: u64,
    },
    /// setrlimit(2) failed.
    #[error("setrlimit({name}, soft {soft}, hard {hard}){hint}: {source}")]
    Set {
        /// Resource name.
        name: String,
        /// Soft limit.
        soft: u64,
        /// Hard limit.
        hard: u64,
        /// A hint for well-known causes.
        hint: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The kernel resource number for an OCI rlimit type.
pub fn resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Checks the list without changing anything: no duplicate types, soft ≤ hard.
pub fn validate(limits: &[PosixRlimit]) -> Result<(), RlimitError> {
    let mut seen = Vec::with_capacity(limits.len());
    for l in limits {
        let name = l.typ().to_string();
        if seen.contains(&l.typ()) {
            return Err(RlimitError::Duplicate(name));
        }
        seen.push(l.typ());
        if l.soft() > l.hard() {
            return Err(RlimitError::SoftAboveHard {
                name,
                soft: l.soft(),
                hard: l.hard(),
            });
        }
    }
    Ok(())
}

/// Validates the whole list, then sets each limit on the calling process in order.
pub fn apply(limits: &[PosixRlimit]) -> Result<(), RlimitError> {
    validate(limits)?;
    for l in limits {
        let lim = libc::rlimit {
            rlim_cur: l.soft(),
            rlim_max: l.hard(),
        };
        // SAFETY: `lim` is a valid rlimit that lives for the call.
        let rc = unsafe { libc::setrlimit(resource(l.typ()), &lim) };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            let hint = match (l.typ(), source.raw_os_error()) {
                (PosixRlimitType::RlimitNofile, Some(libc::EPERM)) => {
                    " (raising the hard limit needs CAP_SYS_RESOURCE; NOFILE cannot exceed fs.nr_open)"
                }
                (_, Some(libc::EPERM)) => " (raising the hard limit needs CAP_SYS_RESOURCE)",
                _ => "",
            };
            return Err(RlimitError::Set {
                name: l.typ().to_string(),
                soft: l.soft(),
                hard: l.hard(),
                hint,
                source,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_child_ok;

    fn limits(json: &str) -> Vec<PosixRlimit> {
        serde_json::from_str(json).unwrap()
    }

    fn get(res: libc::__rlimit_resource_t) -> (u64, u64) {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `l` is valid for writes.
        assert_eq!(unsafe { libc::getrlimit(res, &mut l) }, 0);
        (l.rlim_cur, l.rlim_max)
    }

    #[test]
    fn apply_sets_limits() {
        let l = limits(
            r#"[{"type":"RLIMIT_NOFILE","soft":512,"hard":1024},
                {"type":"RLIMIT_CORE","soft":0,"hard":4096},
                {"type":"RLIMIT_MSGQUEUE","soft":8192,"hard":8192},
                {"type":"RLIMIT_RTTIME","soft":18446744073709551615,"hard":18446744073709551615}]"#,
        );
        assert_child_ok(|| {
            if let Err(e) = apply(&l) {
                child_eprintln!("{e}");
                return 1;
            }
            let ok = get(libc::RLIMIT_NOFILE) == (512, 1024)
                && get(libc::RLIMIT_CORE) == (0, 4096)
                && get(libc::RLIMIT_MSGQUEUE) == (8192, 8192)
                && get(libc::RLIMIT_RTTIME) == (libc::RLIM_INFINITY, libc::RLIM_INFINITY);
            i32::from(!ok) * 2
        });
    }

    #[test]
    fn raising_hard_limit_without_cap_sys_resource_names_the_resource() {
        assert_child_ok(|| {
            let (_, hard) = get(libc::RLIMIT_NOFILE);
            // Lower the hard limit, drop CAP_SYS_RESOURCE, then try to raise it again.
            if apply(&limits(&format!(
                r#"[{{"type":"RLIMIT_NOFILE","soft":64,"hard":{}}}]"#,
                hard.min(4096) / 2
            )))
            .is_err()
            {
                return 1;
            }
            for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
                if caps::drop(None, set, caps::Capability::CAP_SYS_RESOURCE).is_err() {
                    return 2;
                }
            }
            match apply(&limits(
                r#"[{"type":"RLIMIT_NOFILE","soft":64,"hard":4096}]"#,
            )) {
                Err(e @ RlimitError::Set { .. }) if e.to_string().contains("RLIMIT_NOFILE") => 0,
                other => {
                    child_eprintln!("{other:?}");
                    3
                }
            }
        });
    }

    #[test]
    fn bad_input() {
        let e = validate(&limits(
            r#"[{"type":"RLIMIT_NOFILE","soft":2048,"hard":1024}]"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("RLIMIT_NOFILE") && e.contains("2048"), "{e}");
        let e = validate(&limits(
            r#"[{"type":"RLIMIT_CORE","soft":1,"hard":1},{"type":"RLIMIT_CORE","soft":2,"hard":2}]"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("RLIMIT_CORE") && e.contains("more than once"),
            "{e}"
        );
        let e = serde_json::from_str::<Vec<PosixRlimit>>(
            r#"[{"type":"RLIMIT_WARP","soft":1,"hard":1}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("RLIMIT_WARP"), "{e}");
    }
}
