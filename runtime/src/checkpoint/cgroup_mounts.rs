//! The `cgroup` mount of a container without a cgroup namespace, as CRIU external mounts.
//!
//! Without a cgroup namespace the `cgroup` mount (see [`crate::rootfs`]) is, on a v1 or
//! hybrid host, a tmpfs holding one bind mount per host hierarchy, each showing the
//! container's own directory of that hierarchy (`/sys/fs/cgroup/memory` in the container
//! is the host's `/sys/fs/cgroup/memory/<container cgroup>`); on a unified host it is one
//! bind of the container's cgroup2 directory. CRIU refuses to dump a bind of a subtree
//! whose root mount it does not see ("doesn't have a proper root mount"), so, as runc
//! does, every such mount is declared external at dump, keyed by its path in the
//! container, and at restore each key is bound to the *restored* container's directory
//! in the same hierarchy (created by the restore before CRIU runs). Hierarchies the
//! cgroup manager does not drive (`name=systemd`) show the restoring process's own
//! cgroup, as they showed the creating process's at create time.
//!
//! With a cgroup namespace the hierarchies are real cgroup mounts rooted at the
//! namespace's root, which CRIU dumps and restores itself; nothing is declared then.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::{io_err, CheckpointError, Result};
use crate::cgroups::Version;
use crate::criu::{self, ExternalMount};
use crate::integration::Cgroup;
use crate::rootfs::mountinfo::{self, MountEntry};

/// Destinations of the spec's `cgroup` mounts when they are binds of host directories
/// (the container has no cgroup namespace of its own).
fn bind_destinations(spec: &Spec) -> Vec<PathBuf> {
    let cgroupns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));
    if cgroupns {
        return Vec::new();
    }
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| m.typ().as_deref() == Some("cgroup"))
        .map(|m| m.destination().clone())
        .collect()
}

fn is_cgroup_fs(m: &MountEntry) -> bool {
    m.fstype == "cgroup" || m.fstype == "cgroup2"
}

/// The cgroup mounts of a container (its mount table `mounts`) at or below one of
/// `dests`: their paths in the container.
fn dump_keys(dests: &[PathBuf], mounts: &[MountEntry]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| is_cgroup_fs(m) && dests.iter().any(|d| m.mount_point.starts_with(d)))
        .map(|m| m.mount_point.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The external mounts a dump of the container whose init is `pid` needs for its
/// `cgroup` mounts: key and path are the mount's path in the container.
pub(super) fn for_dump(spec: &Spec, pid: i32) -> Result<Vec<ExternalMount>> {
    let dests = bind_destinations(spec);
    if dests.is_empty() {
        return Ok(Vec::new());
    }
    let path = format!("/proc/{pid}/mountinfo");
    let text = mountinfo::read_proc_file(&path).map_err(io_err("read", Path::new(&path)))?;
    Ok(dump_keys(&dests, &mountinfo::parse(&text))
        .into_iter()
        .map(|p| ExternalMount {
            key: p.to_string_lossy().into_owned(),
            path: p,
        })
        .collect())
}

/// What the restoring host looks like: its cgroup mounts, the restoring process's own
/// cgroups and the directories of the restored container's cgroup.
struct Host<'a> {
    mounts: &'a [MountEntry],
    own: &'a [(String, PathBuf)],
    /// (version, v1 controllers, directory) of each hierarchy of the new cgroup.
    cgroup: &'a [(Version, Vec<String>, PathBuf)],
}

impl Host<'_> {
    /// The host directory to bind at `rel` below the container's cgroup mount: `rel` is
    /// the hierarchy's directory name (`memory`, `cpu,cpuacct`, `systemd`), or empty for
    /// the cgroup2 bind of a unified host.
    fn source(&self, rel: &Path) -> Option<PathBuf> {
        if rel.as_os_str().is_empty() {
            let m = self.mounts.iter().find(|m| m.fstype == "cgroup2")?;
            if let Some((_, _, dir)) = self.cgroup.iter().find(|(v, _, _)| *v == Version::V2) {
                return Some(dir.clone());
            }
            let own = self.own.iter().find(|(c, _)| c.is_empty())?;
            return Some(mountinfo::host_cgroup_dir(m, &own.1));
        }
        let m = self
            .mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.mount_point.file_name() == Some(rel.as_os_str()))?;
        let subs = mountinfo::v1_subsystems(&m.super_options);
        let managed = self.cgroup.iter().find(|(v, ctrls, dir)| {
            *v == Version::V1
                && (dir.starts_with(&m.mount_point)
                    || (!ctrls.is_empty()
                        && ctrls.len() == subs.len()
                        && ctrls.iter().all(|c| subs.contains(&c.as_str()))))
        });
        if let Some((_, _, dir)) = managed {
            return Some(dir.clone());
        }
        let own = self
            .own
            .iter()
            .find(|(c, _)| mountinfo::same_set(&subs, c))
            .map_or_else(|| PathBuf::from("/"), |(_, p)| p.clone());
        Some(mountinfo::host_cgroup_dir(m, &own))
    }
}

/// For each external mount key of a checkpoint that lies at or below one of `dests`, the
/// host directory to bind there (keys this host has no hierarchy for are left out; the
/// restore then names them as missing).
fn restore_sources(dests: &[PathBuf], keys: &[String], host: &Host<'_>) -> Vec<ExternalMount> {
    let mut out = Vec::new();
    for key in keys {
        let p = Path::new(key);
        let Some(rel) = dests.iter().find_map(|d| p.strip_prefix(d).ok()) else {
            continue;
        };
        if rel.components().count() > 1 {
            continue;
        }
        if let Some(path) = host.source(rel) {
            out.push(ExternalMount {
                key: key.clone(),
                path,
            });
        }
    }
    out
}

/// The external mounts a restore of the checkpoint in `images` needs for the bundle's
/// `cgroup` mounts, bound to the directories of `cgroup` (the restored container's).
pub(super) fn for_restore(
    spec: &Spec,
    images: &Path,
    cgroup: Option<&Cgroup>,
) -> Result<Vec<ExternalMount>> {
    let dests = bind_destinations(spec);
    if dests.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = criu::external_mounts(images)
        .map_err(CheckpointError::from)?
        .into_iter()
        .map(|r| r.key)
        .collect();
    let read = |p: &'static str| mountinfo::read_proc_file(p).map_err(io_err("read", Path::new(p)));
    let mounts: Vec<MountEntry> = mountinfo::parse(&read("/proc/self/mountinfo")?)
        .into_iter()
        .filter(is_cgroup_fs)
        .collect();
    let own = mountinfo::parse_proc_cgroup(&read("/proc/self/cgroup")?);
    let dirs: Vec<(Version, Vec<String>, PathBuf)> = cgroup
        .map(|cg| {
            cg.hierarchies()
                .iter()
                .map(|h| (h.version, h.controllers.clone(), h.dir.clone()))
                .collect()
        })
        .unwrap_or_default();
    let host = Host {
        mounts: &mounts,
        own: &own,
        cgroup: &dirs,
    };
    Ok(restore_sources(&dests, &keys, &host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}
            ],
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    /// A podman container's mounts on a hybrid host (its /proc/PID/mountinfo).
    const CONTAINER: &str = "\
70 45 254:0 /x / rw - ext4 /dev/vda rw
80 73 0:45 / /sys/fs/cgroup ro - tmpfs tmpfs rw,mode=755
81 80 0:29 /a/libpod-1 /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct
84 80 0:32 /a/libpod-1 /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory
89 80 0:37 / /sys/fs/cgroup/systemd ro - cgroup cgroup rw,name=systemd
90 70 0:38 / /data rw - cgroup cgroup rw,pids
";

    /// The restoring host's cgroup mounts.
    const HOST: &str = "\
30 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";

    #[test]
    fn only_bind_style_cgroup_mounts_are_external() {
        assert_eq!(
            bind_destinations(&spec(serde_json::json!([{"type": "mount"}]))),
            vec![PathBuf::from("/sys/fs/cgroup")]
        );
        // With a cgroup namespace CRIU dumps the real cgroup mounts itself.
        assert!(bind_destinations(&spec(serde_json::json!([{"type": "cgroup"}]))).is_empty());
        let keys = dump_keys(
            &[PathBuf::from("/sys/fs/cgroup")],
            &mountinfo::parse(CONTAINER),
        );
        assert_eq!(
            keys,
            ["cpu,cpuacct", "memory", "systemd"]
                .map(|n| Path::new("/sys/fs/cgroup").join(n))
                .to_vec()
        );
    }

    #[test]
    fn restore_binds_the_new_cgroup_and_own_cgroup_for_unmanaged_hierarchies() {
        let mounts = mountinfo::parse(HOST);
        let own = mountinfo::parse_proc_cgroup(
            "12:name=systemd:/user.slice\n4:memory:/me\n2:cpu,cpuacct:/me\n0::/me\n",
        );
        let cgroup = vec![
            (
                Version::V1,
                vec!["cpu".to_string(), "cpuacct".to_string()],
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/new"),
            ),
            (
                Version::V1,
                vec!["memory".to_string()],
                PathBuf::from("/sys/fs/cgroup/memory/new"),
            ),
        ];
        let host = Host {
            mounts: &mounts,
            own: &own,
            cgroup: &cgroup,
        };
        let keys: Vec<String> = [
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/blkio",
            "/etc/hosts",
        ]
        .map(String::from)
        .to_vec();
        let got = restore_sources(&[PathBuf::from("/sys/fs/cgroup")], &keys, &host);
        let pairs: Vec<(&str, &Path)> = got.iter().map(|m| (m.key.as_str(), &*m.path)).collect();
        assert_eq!(
            pairs,
            vec![
                (
                    "/sys/fs/cgroup/cpu,cpuacct",
                    Path::new("/sys/fs/cgroup/cpu,cpuacct/new")
                ),
                (
                    "/sys/fs/cgroup/memory",
                    Path::new("/sys/fs/cgroup/memory/new")
                ),
                (
                    "/sys/fs/cgroup/systemd",
                    Path::new("/sys/fs/cgroup/systemd/user.slice")
                ),
            ],
            "blkio has no hierarchy here and /etc/hosts is no cgroup mount"
        );
        // A unified host's single bind: the new cgroup2 directory, else the own one.
        let v2 = vec![(
            Version::V2,
            vec![],
            PathBuf::from("/sys/fs/cgroup/unified/new"),
        )];
        let host2 = Host {
            cgroup: &v2,
            ..host
        };
        assert_eq!(
            host2.source(Path::new("")),
            Some(PathBuf::from("/sys/fs/cgroup/unified/new"))
        );
        assert_eq!(
            host.source(Path::new("")),
            Some(PathBuf::from("/sys/fs/cgroup/unified/me"))
        );
    }
}
