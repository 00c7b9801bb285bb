//! Detects the host's cgroup layout from `/proc/self/cgroup` and `/proc/self/mountinfo`.
//!
//! The parsing functions take text so they can be unit-tested with fake inputs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// Which cgroup layout the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only the cgroup2 unified hierarchy.
    Unified,
    /// v1 controller hierarchies plus a cgroup2 tree.
    Hybrid,
    /// Only v1 hierarchies.
    Legacy,
}

/// One mounted hierarchy and the calling process's own cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedHierarchy {
    /// Controllers bound to it (empty for cgroup2; its controllers are read from cgroup.controllers).
    pub controllers: Vec<String>,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The process's own cgroup as an absolute directory below `mount_point`.
    pub own_dir: PathBuf,
}

/// The detected layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The cgroup2 hierarchy, if mounted.
    pub unified: Option<MountedHierarchy>,
    /// v1 hierarchies that carry at least one controller (named ones like name=systemd are skipped).
    pub v1: Vec<MountedHierarchy>,
}

impl Layout {
    /// Detects the layout of the calling process.
    pub fn detect() -> Result<Layout, CgroupError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| CgroupError::Read {
                path: PathBuf::from(p),
                source,
            })
        };
        Layout::parse(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)
    }

    /// Builds the layout from the text of `/proc/self/cgroup` and `/proc/self/mountinfo`.
    pub fn parse(proc_cgroup: &str, mountinfo: &str) -> Result<Layout, CgroupError> {
        let memberships = parse_proc_cgroup(proc_cgroup)?;
        let mounts = parse_mountinfo(mountinfo);
        let mut layout = Layout {
            unified: None,
            v1: Vec::new(),
        };
        for m in &memberships {
            if m.hierarchy_id == 0 {
                if let Some(mnt) = mounts.iter().find(|x| x.fstype == "cgroup2") {
                    layout.unified = Some(MountedHierarchy {
                        controllers: Vec::new(),
                        mount_point: mnt.mount_point.clone(),
                        own_dir: own_dir(mnt, &m.path),
                    });
                }
                continue;
            }
            if m.controllers.is_empty() || m.controllers.iter().all(|c| c.starts_with("name=")) {
                continue;
            }
            let found = mounts.iter().find(|x| {
                x.fstype == "cgroup"
                    && m.controllers
                        .iter()
                        .all(|c| x.super_opts.iter().any(|o| o == c))
            });
            if let Some(mnt) = found {
                layout.v1.push(MountedHierarchy {
                    controllers: m.controllers.clone(),
                    mount_point: mnt.mount_point.clone(),
                    own_dir: own_dir(mnt, &m.path),
                });
            }
        }
        if layout.unified.is_none() && layout.v1.is_empty() {
            return Err(CgroupError::NoHierarchy(
                "no mounted cgroup hierarchy matches /proc/self/cgroup".into(),
            ));
        }
        Ok(layout)
    }

    /// The layout mode.
    pub fn mode(&self) -> Mode {
        match (self.unified.is_some(), self.v1.is_empty()) {
            (true, true) => Mode::Unified,
            (true, false) => Mode::Hybrid,
            (false, _) => Mode::Legacy,
        }
    }
}

/// One line of `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    pub hierarchy_id: u32,
    pub controllers: Vec<String>,
    pub path: String,
}

pub(crate) fn parse_proc_cgroup(text: &str) -> Result<Vec<Membership>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            return Err(CgroupError::Parse {
                path: PathBuf::from("/proc/self/cgroup"),
                value: line.to_string(),
            });
        };
        let hierarchy_id = id.parse().map_err(|_| CgroupError::Parse {
            path: PathBuf::from("/proc/self/cgroup"),
            value: line.to_string(),
        })?;
        out.push(Membership {
            hierarchy_id,
            controllers: ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect(),
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// One cgroup-related line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_opts: Vec<String>,
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 || !r[0].starts_with("cgroup") {
            continue;
        }
        out.push(Mount {
            root: unescape(l[3]),
            mount_point: PathBuf::from(unescape(l[4])),
            fstype: r[0].to_string(),
            super_opts: r[2].split(',').map(String::from).collect(),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The process's cgroup directory: mount point + (cgroup path relative to the mount's root).
fn own_dir(m: &Mount, cgroup_path: &str) -> PathBuf {
    let path = Path::new(cgroup_path);
    let rel = path
        .strip_prefix(&m.root)
        .unwrap_or_else(|_| path.strip_prefix("/").unwrap_or(path));
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    // "/(deleted)" style suffixes or a root of "/" give the mount point itself.
    if rel.as_os_str().is_empty() {
        m.mount_point.clone()
    } else {
        m.mount_point.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CG: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n\
4:memory:/process_api/abc\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const HYBRID_MI: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host() {
        let l = Layout::parse(HYBRID_CG, HYBRID_MI).unwrap();
        assert_eq!(l.mode(), Mode::Hybrid);
        assert_eq!(l.v1.len(), 8, "named systemd hierarchy skipped");
        let mem = l.v1.iter().find(|h| h.controllers == ["memory"]).unwrap();
        assert_eq!(
            mem.own_dir,
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );
        let cpu = l.v1.iter().find(|h| h.controllers == ["cpu"]).unwrap();
        assert_eq!(cpu.own_dir, Path::new("/sys/fs/cgroup/cpu"));
        let u = l.unified.unwrap();
        assert_eq!(u.own_dir, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn unified_only_in_nested_namespace() {
        let cg = "0::/user.slice/session-1.scope\n";
        let mi = "25 1 0:22 /user.slice /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::parse(cg, mi).unwrap();
        assert_eq!(l.mode(), Mode::Unified);
        assert_eq!(
            l.unified.unwrap().own_dir,
            Path::new("/sys/fs/cgroup/session-1.scope")
        );
    }

    #[test]
    fn legacy_comounted_cpu_cpuacct() {
        let cg = "3:cpu,cpuacct:/a/b\n2:memory:/\n1:name=systemd:/x\n";
        let mi = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
";
        let l = Layout::parse(cg, mi).unwrap();
        assert_eq!(l.mode(), Mode::Legacy);
        assert_eq!(l.v1.len(), 2);
        assert_eq!(l.v1[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(l.v1[0].own_dir, Path::new("/sys/fs/cgroup/cpu,cpuacct/a/b"));
    }

    #[test]
    fn escaped_mount_point_and_garbage() {
        let mi = "41 31 0:38 / /sys/fs/cg\\040two rw - cgroup2 cgroup2 rw\n";
        let l = Layout::parse("0::/\n", mi).unwrap();
        assert_eq!(l.unified.unwrap().mount_point, Path::new("/sys/fs/cg two"));
        assert!(Layout::parse("garbage\n", mi).is_err());
        assert!(Layout::parse("0::/\n", "").is_err(), "nothing mounted");
    }
}
