//! `linux.sysctl`: validating keys and writing them under /proc/sys.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::unistd::{read, write};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::error::RootfsError;

/// The namespace a sysctl belongs to, if it is namespaced at all.
fn namespace_of(key: &str) -> Option<LinuxNamespaceType> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if key.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

/// Relative path under /proc/sys for `key` (`a.b.c` or `a/b/c`), refusing
/// anything that could leave /proc/sys.
pub(crate) fn key_path(key: &str) -> Result<PathBuf, String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    // runc semantics: dots separate levels; a key already using slashes is
    // taken as a path (interface names may contain dots then).
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    for comp in rel.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err("key has an empty, '.' or '..' component".into());
        }
        if comp.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
            return Err("key contains NUL or whitespace".into());
        }
    }
    Ok(PathBuf::from(rel))
}

/// Canonical dotted form, for the namespace check.
fn dotted(key: &str) -> String {
    key.replace('/', ".")
}

/// Validate `linux.sysctl` against the spec's namespaces.
pub(crate) fn validate(spec: &Spec) -> Result<(), RootfsError> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let Some(sysctl) = linux.sysctl() else {
        return Ok(());
    };
    let namespaces = linux.namespaces().as_deref().unwrap_or(&[]);
    for (key, value) in sysctl {
        let bad = |reason: String| RootfsError::InvalidSysctl {
            key: key.clone(),
            reason,
        };
        key_path(key).map_err(bad)?;
        if value.contains('\0') {
            return Err(bad("value contains NUL".into()));
        }
        match namespace_of(&dotted(key)) {
            None => {
                return Err(bad(
                    "not a namespaced sysctl (only IPC, net.* and UTS sysctls can be set per container)"
                        .into(),
                ))
            }
            Some(ns) => {
                // A namespace joined by path is still the container's own;
                // without an entry the host's would be changed.
                if !namespaces.iter().any(|n| n.typ() == ns) {
                    return Err(bad(format!(
                        "needs the container to have its own {ns:?} namespace"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whitespace-insensitive comparison (the kernel prints `kernel.sem` with tabs).
fn same_value(current: &str, wanted: &str) -> bool {
    current.split_whitespace().eq(wanted.split_whitespace())
}

/// Write each sysctl of the spec under /proc/sys.
///
/// Must run inside the container's namespaces with its /proc mounted.
/// Idempotent: if /proc/sys has already been made read-only (after
/// [`super::prepare`], which applies the sysctls itself before
/// `readonlyPaths`) a key that already holds the wanted value is accepted.
pub fn apply_sysctl(spec: &Spec) -> Result<(), RootfsError> {
    let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(());
    };
    if sysctl.is_empty() {
        return Ok(());
    }
    write_all(sysctl)
}

pub(crate) fn write_all(sysctl: &HashMap<String, String>) -> Result<(), RootfsError> {
    let proc_sys = nix::fcntl::open(
        "/proc/sys",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RootfsError::path("open", "/proc/sys", e))?;
    for (key, value) in sysctl {
        let err = |op| {
            move |errno| RootfsError::Sysctl {
                key: key.clone(),
                op,
                errno,
            }
        };
        let rel = key_path(key).map_err(|reason| RootfsError::InvalidSysctl {
            key: key.clone(),
            reason,
        })?;
        let how = |flags: OFlag| {
            OpenHow::new()
                .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_XDEV,
                )
        };
        match openat2(
            proc_sys.as_fd(),
            rel.as_path(),
            how(OFlag::O_WRONLY | OFlag::O_TRUNC),
        ) {
            Ok(fd) => {
                write(&fd, value.as_bytes()).map_err(err("write"))?;
            }
            Err(Errno::EROFS) => {
                let fd = openat2(proc_sys.as_fd(), rel.as_path(), how(OFlag::O_RDONLY))
                    .map_err(err("open"))?;
                let mut buf = [0u8; 4096];
                let n = read(&fd, &mut buf).map_err(err("read"))?;
                let current = String::from_utf8_lossy(&buf[..n]);
                if !same_value(&current, value) {
                    return Err(err("write (/proc/sys is read-only)")(Errno::EROFS));
                }
            }
            Err(e) => return Err(err("open")(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            key_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("net/ipv4/ip_forward")
        );
        assert_eq!(
            key_path("net/ipv4/conf/eth0.1/forwarding").unwrap(),
            PathBuf::from("net/ipv4/conf/eth0.1/forwarding")
        );
        for bad in [
            "",
            "net..ipv4",
            "net/../../etc",
            "/net/ipv4",
            "net.ipv4.",
            "a/./b",
            "a b",
        ] {
            assert!(key_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces() {
        assert_eq!(namespace_of("kernel.shmmax"), Some(LinuxNamespaceType::Ipc));
        assert_eq!(
            namespace_of("fs.mqueue.msg_max"),
            Some(LinuxNamespaceType::Ipc)
        );
        assert_eq!(
            namespace_of("net.ipv4.ip_forward"),
            Some(LinuxNamespaceType::Network)
        );
        assert_eq!(
            namespace_of("kernel.domainname"),
            Some(LinuxNamespaceType::Uts)
        );
        assert_eq!(namespace_of("kernel.core_pattern"), None);
        assert_eq!(namespace_of("vm.swappiness"), None);
        assert!(same_value(
            "32000\t1024000000\t500\t32000\n",
            "32000 1024000000 500 32000"
        ));
    }
}
