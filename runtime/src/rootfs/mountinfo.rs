//! A minimal `/proc/self/mountinfo` reader (the few fields this module needs).
//!
//! Hand-written: the `procfs` crate would pull in a large dependency tree
//! for a ten-line parser.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// Root of the mount within its filesystem.
    pub root: PathBuf,
    /// Mount point (in this process's view).
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Superblock options.
    pub super_options: String,
}

/// Undo the octal escapes (`\040` etc.) the kernel uses in mountinfo paths.
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parse mountinfo text.
pub(crate) fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (pre, post) = line.split_once(" - ")?;
    let mut pre = pre.split(' ');
    let root = pre.nth(3)?;
    let mount_point = pre.next()?;
    let mut post = post.split(' ');
    let fstype = post.next()?;
    let _source = post.next()?;
    let super_options = post.next().unwrap_or("");
    Some(MountEntry {
        root: unescape(root),
        mount_point: unescape(mount_point),
        fstype: fstype.to_string(),
        super_options: super_options.to_string(),
    })
}

/// Read and parse `/proc/self/mountinfo`.
pub(crate) fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&read_proc_file("/proc/self/mountinfo")?))
}

/// Read a procfs file in as few read(2) calls as possible (procfs reports a
/// size of 0, so `fs::read_to_string` would start with tiny probe reads).
pub(crate) fn read_proc_file(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = f.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The lines of `/proc/PID/cgroup`: (controllers or `name=x`, "" for cgroup2; path).
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            Some((ctrls.to_string(), PathBuf::from(path)))
        })
        .collect()
}

/// The controllers (and `name=`) of a v1 hierarchy from its super options.
pub(crate) fn v1_subsystems(super_options: &str) -> Vec<&str> {
    super_options
        .split(',')
        .filter(|o| {
            o.starts_with("name=")
                || !matches!(
                    *o,
                    "rw" | "ro"
                        | "xattr"
                        | "noprefix"
                        | "clone_children"
                        | "cpuset_v2_mode"
                        | "favordynmods"
                ) && !o.contains('=')
        })
        .collect()
}

/// Whether the subsystems `a` are exactly the comma-separated list `b` (any order).
pub(crate) fn same_set(a: &[&str], b: &str) -> bool {
    let b: Vec<&str> = b.split(',').collect();
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Host directory of cgroup `rel` (as listed in /proc/self/cgroup) within the
/// hierarchy mounted at `h`.
pub(crate) fn host_cgroup_dir(h: &MountEntry, rel: &Path) -> PathBuf {
    let rel = rel.strip_prefix(&h.root).unwrap_or(rel);
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    h.mount_point.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let t = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                 41 31 0:38 /a\\040b /mnt/with\\040space rw shared:5 - cgroup2 cgroup2 rw\n";
        let v = parse(t);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(v[0].fstype, "cgroup");
        assert_eq!(v[0].super_options, "rw,cpu");
        assert_eq!(v[1].root, PathBuf::from("/a b"));
        assert_eq!(v[1].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(v[1].fstype, "cgroup2");
    }
}
