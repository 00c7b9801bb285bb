//! Parsing OCI mount entries (`type`, `options`) into mount flags, recursive
//! mount attributes, propagation changes and filesystem data.
//!
//! Shared by `validate` (in the parent, to reject bad input early with a
//! clear message) and `prepare` (in the container's init).

use std::path::Path;

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::sys::MountAttr;

/// What kind of mount an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `bind` / `rbind`: clone an existing host tree.
    Bind { recursive: bool },
    /// The `cgroup` type: the container's cgroup hierarchies (see `mounts::cgroup`).
    Cgroup,
    /// Any other filesystem type, mounted with mount(2).
    Fs(String),
}

/// A parsed mount entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub kind: Kind,
    /// Flags to pass to mount(2) (never contains MS_BIND / MS_REC).
    pub flags: MsFlags,
    /// Flags explicitly turned off (`rw`, `suid`, `dev`, ...).
    pub cleared: MsFlags,
    /// Propagation changes, applied in order after the mount
    /// (each is one of MS_SHARED/SLAVE/PRIVATE/UNBINDABLE, maybe | MS_REC).
    pub propagation: Vec<MsFlags>,
    /// Attributes applied recursively with mount_setattr (`rro`, `rnosuid`, ...).
    pub rec_attr: MountAttr,
    /// Filesystem-specific options, passed to the kernel as mount data.
    pub data: Vec<String>,
    /// runc's `tmpcopyup`: fill a new tmpfs with what it covers.
    pub tmpcopyup: bool,
}

impl Parsed {
    /// The mount(2) data string.
    pub(crate) fn data_string(&self) -> String {
        self.data.join(",")
    }

    /// Whether this is a read-only mount.
    pub(crate) fn readonly(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }

    /// Per-mount attributes for mount_setattr equivalent to `flags` and
    /// `cleared` (used for bind mounts: set what was asked, inherit the rest).
    pub(crate) fn bind_attr(&self) -> MountAttr {
        let mut a = MountAttr::default();
        let pairs = [
            (MsFlags::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
            (MsFlags::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
            (MsFlags::MS_NODEV, libc::MOUNT_ATTR_NODEV),
            (MsFlags::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
            (MsFlags::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
            (MS_NOSYMFOLLOW, libc::MOUNT_ATTR_NOSYMFOLLOW),
        ];
        for (ms, attr) in pairs {
            if self.flags.contains(ms) {
                a.set |= attr;
            } else if self.cleared.contains(ms) {
                a.clr |= attr;
            }
        }
        // Access-time mode: the last explicit choice wins; strictatime beats
        // relatime as in the kernel's mount(2) handling.
        let atime = if self.flags.contains(MsFlags::MS_NOATIME) {
            Some(libc::MOUNT_ATTR_NOATIME)
        } else if self.flags.contains(MsFlags::MS_STRICTATIME) {
            Some(libc::MOUNT_ATTR_STRICTATIME)
        } else if self.flags.contains(MsFlags::MS_RELATIME)
            || self
                .cleared
                .intersects(MsFlags::MS_NOATIME | MsFlags::MS_STRICTATIME)
        {
            Some(libc::MOUNT_ATTR_RELATIME)
        } else {
            None
        };
        if let Some(mode) = atime {
            a.clr |= libc::MOUNT_ATTR__ATIME;
            a.set |= mode;
        }
        a
    }
}

/// MS_NOSYMFOLLOW (Linux 5.10); nix 0.31 does not name it.
pub(crate) const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(256);

enum Opt {
    Set(MsFlags),
    Clear(MsFlags),
    Bind(bool),
    Prop(MsFlags),
    RecSet(u64),
    RecClear(u64),
    RecAtime(u64),
    Noop,
}

/// Generic (filesystem-independent) mount options, as runc and mount(8) know them.
fn generic(opt: &str) -> Option<Opt> {
    use MsFlags as F;
    use Opt::*;
    Some(match opt {
        "defaults" => Noop,
        "ro" => Set(F::MS_RDONLY),
        "rw" => Clear(F::MS_RDONLY),
        "nosuid" => Set(F::MS_NOSUID),
        "suid" => Clear(F::MS_NOSUID),
        "nodev" => Set(F::MS_NODEV),
        "dev" => Clear(F::MS_NODEV),
        "noexec" => Set(F::MS_NOEXEC),
        "exec" => Clear(F::MS_NOEXEC),
        "sync" => Set(F::MS_SYNCHRONOUS),
        "async" => Clear(F::MS_SYNCHRONOUS),
        "dirsync" => Set(F::MS_DIRSYNC),
        "remount" => Set(F::MS_REMOUNT),
        "mand" => Set(F::MS_MANDLOCK),
        "nomand" => Clear(F::MS_MANDLOCK),
        "atime" => Clear(F::MS_NOATIME),
        "noatime" => Set(F::MS_NOATIME),
        "diratime" => Clear(F::MS_NODIRATIME),
        "nodiratime" => Set(F::MS_NODIRATIME),
        "relatime" => Set(F::MS_RELATIME),
        "norelatime" => Clear(F::MS_RELATIME),
        "strictatime" => Set(F::MS_STRICTATIME),
        "nostrictatime" => Clear(F::MS_STRICTATIME),
        "lazytime" => Set(F::MS_LAZYTIME),
        "nolazytime" => Clear(F::MS_LAZYTIME),
        "iversion" => Set(F::MS_I_VERSION),
        "noiversion" => Clear(F::MS_I_VERSION),
        "silent" => Set(F::MS_SILENT),
        "loud" => Clear(F::MS_SILENT),
        "nosymfollow" => Set(MS_NOSYMFOLLOW),
        "symfollow" => Clear(MS_NOSYMFOLLOW),
        "bind" => Bind(false),
        "rbind" => Bind(true),
        "shared" => Prop(F::MS_SHARED),
        "rshared" => Prop(F::MS_SHARED | F::MS_REC),
        "slave" => Prop(F::MS_SLAVE),
        "rslave" => Prop(F::MS_SLAVE | F::MS_REC),
        "private" => Prop(F::MS_PRIVATE),
        "rprivate" => Prop(F::MS_PRIVATE | F::MS_REC),
        "unbindable" => Prop(F::MS_UNBINDABLE),
        "runbindable" => Prop(F::MS_UNBINDABLE | F::MS_REC),
        "rro" => RecSet(libc::MOUNT_ATTR_RDONLY),
        "rrw" => RecClear(libc::MOUNT_ATTR_RDONLY),
        "rnosuid" => RecSet(libc::MOUNT_ATTR_NOSUID),
        "rsuid" => RecClear(libc::MOUNT_ATTR_NOSUID),
        "rnodev" => RecSet(libc::MOUNT_ATTR_NODEV),
        "rdev" => RecClear(libc::MOUNT_ATTR_NODEV),
        "rnoexec" => RecSet(libc::MOUNT_ATTR_NOEXEC),
        "rexec" => RecClear(libc::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => RecSet(libc::MOUNT_ATTR_NODIRATIME),
        "rdiratime" => RecClear(libc::MOUNT_ATTR_NODIRATIME),
        "rnosymfollow" => RecSet(libc::MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => RecClear(libc::MOUNT_ATTR_NOSYMFOLLOW),
        "rnoatime" => RecAtime(libc::MOUNT_ATTR_NOATIME),
        "rstrictatime" => RecAtime(libc::MOUNT_ATTR_STRICTATIME),
        "rrelatime" | "ratime" | "rnorelatime" | "rnostrictatime" => {
            RecAtime(libc::MOUNT_ATTR_RELATIME)
        }
        _ => return None,
    })
}

/// Filesystem-specific options this module knows for the filesystems a
/// container spec usually mounts: (bare words, `key=` names).
fn fs_specific(fstype: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match fstype {
        "proc" => (&[], &["hidepid", "gid", "subset"]),
        "sysfs" | "mqueue" => (&[], &[]),
        "tmpfs" => (
            &[
                "inode32",
                "inode64",
                "noswap",
                "quota",
                "usrquota",
                "grpquota",
                "strict_encoding",
            ],
            &[
                "size",
                "nr_blocks",
                "nr_inodes",
                "mode",
                "uid",
                "gid",
                "mpol",
                "huge",
                "casefold",
                "usrquota_block_hardlimit",
                "usrquota_inode_hardlimit",
                "grpquota_block_hardlimit",
                "grpquota_inode_hardlimit",
            ],
        ),
        "devpts" => (&["newinstance"], &["uid", "gid", "mode", "ptmxmode", "max"]),
        "cgroup" => (
            &[
                "none",
                "all",
                "noprefix",
                "xattr",
                "clone_children",
                "cpuset_v2_mode",
                "favordynmods",
                "cpu",
                "cpuacct",
                "cpuset",
                "memory",
                "devices",
                "freezer",
                "net_cls",
                "net_prio",
                "blkio",
                "perf_event",
                "hugetlb",
                "pids",
                "rdma",
                "misc",
                "debug",
            ],
            &["name"],
        ),
        "cgroup2" => (
            &[
                "nsdelegate",
                "favordynmods",
                "memory_localevents",
                "memory_recursiveprot",
                "memory_hugetlb_accounting",
                "pids_localevents",
            ],
            &[],
        ),
        _ => return None,
    })
}

/// Security-module options every filesystem accepts.
const LSM_KEYS: &[&str] = &["context", "fscontext", "defcontext", "rootcontext"];

/// Filesystem types accepted without consulting /proc/filesystems.
const BUILTIN_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "ramfs",
    "overlay",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "hugetlbfs",
    "binfmt_misc",
    "configfs",
    "pstore",
    "efivarfs",
    "fusectl",
    "devtmpfs",
    "fuse",
];

/// Whether `fstype` names a filesystem this kernel can mount: a built-in name,
/// a `fuse.*` subtype, or anything listed in /proc/filesystems (read lazily,
/// only for unusual types; a type whose module is not loaded yet fails
/// later, at mount time, with the kernel's ENODEV).
pub(crate) fn known_fstype(fstype: &str, proc_filesystems: &mut Option<String>) -> bool {
    if BUILTIN_TYPES.contains(&fstype) || fstype.starts_with("fuse.") {
        return true;
    }
    let list = proc_filesystems
        .get_or_insert_with(|| std::fs::read_to_string("/proc/filesystems").unwrap_or_default());
    list.lines()
        .filter_map(|l| l.split('\t').nth(1))
        .any(|t| t == fstype)
}

/// Parse one spec mount. Errors are human-readable reasons; callers wrap
/// them with the mount's index and destination.
pub(crate) fn parse(m: &Mount) -> Result<Parsed, String> {
    let typ = m.typ().as_deref().unwrap_or("");
    let mut bind: Option<bool> = None;
    let mut flags = MsFlags::empty();
    let mut cleared = MsFlags::empty();
    let mut propagation = Vec::new();
    let mut rec_attr = MountAttr::default();
    let mut rest: Vec<&str> = Vec::new();
    let mut tmpcopyup = false;

    for opt in m.options().as_deref().unwrap_or(&[]) {
        let opt = opt.as_str();
        match generic(opt) {
            Some(Opt::Noop) => {}
            Some(Opt::Set(f)) => {
                flags.insert(f);
                cleared.remove(f);
            }
            Some(Opt::Clear(f)) => {
                flags.remove(f);
                cleared.insert(f);
            }
            Some(Opt::Bind(rec)) => bind = Some(bind.unwrap_or(false) || rec),
            Some(Opt::Prop(p)) => propagation.push(p),
            Some(Opt::RecSet(a)) => {
                rec_attr.set |= a;
                rec_attr.clr &= !a;
            }
            Some(Opt::RecClear(a)) => {
                rec_attr.clr |= a;
                rec_attr.set &= !a;
            }
            Some(Opt::RecAtime(mode)) => {
                rec_attr.set = (rec_attr.set & !libc::MOUNT_ATTR__ATIME) | mode;
                rec_attr.clr |= libc::MOUNT_ATTR__ATIME;
            }
            None => match opt {
                "idmap" | "ridmap" => {
                    return Err(format!(
                        "option {opt:?}: id-mapped mounts are not supported"
                    ))
                }
                "tmpcopyup" => tmpcopyup = true,
                "" => return Err("empty mount option".to_string()),
                _ => rest.push(opt),
            },
        }
    }
    if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        return Err("uidMappings/gidMappings (id-mapped mounts) are not supported".to_string());
    }

    let kind = if bind.is_some() || typ == "bind" {
        Kind::Bind {
            recursive: bind.unwrap_or(false),
        }
    } else {
        match typ {
            "" => return Err("no type and no bind/rbind option".to_string()),
            "none" => return Err("type \"none\" needs a bind or rbind option".to_string()),
            "cgroup" => Kind::Cgroup,
            t => Kind::Fs(t.to_string()),
        }
    };

    if tmpcopyup && kind != Kind::Fs("tmpfs".into()) {
        return Err("option \"tmpcopyup\" is only valid for tmpfs".to_string());
    }
    let mut data = Vec::new();
    match &kind {
        Kind::Bind { .. } => {
            if let Some(o) = rest.first() {
                return Err(format!(
                    "unknown option {o:?} (bind mounts take no filesystem options)"
                ));
            }
            if flags.contains(MsFlags::MS_REMOUNT) {
                return Err("option \"remount\" cannot be combined with bind".to_string());
            }
        }
        Kind::Cgroup | Kind::Fs(_) => {
            let fstype = match &kind {
                Kind::Fs(t) => t.as_str(),
                _ => "cgroup",
            };
            let known = fs_specific(fstype);
            for o in rest {
                let (key, has_value) = match o.split_once('=') {
                    Some((k, _)) => (k, true),
                    None => (o, false),
                };
                let ok = match known {
                    // Unknown filesystem: pass key=value data through, let the
                    // kernel judge it.
                    None => true,
                    Some((bare, keys)) => {
                        if has_value {
                            keys.contains(&key) || LSM_KEYS.contains(&key)
                        } else {
                            bare.contains(&key)
                        }
                    }
                };
                if !ok {
                    return Err(format!("unknown option {o:?} for type {fstype}"));
                }
                data.push(o.to_string());
            }
        }
    }

    Ok(Parsed {
        kind,
        flags,
        cleared,
        propagation,
        rec_attr,
        data,
        tmpcopyup,
    })
}

/// Lexically normalise an absolute container path: collapse `.` and `//`,
/// resolve `..`. Returns `None` if `..` would climb above `/` or the path is
/// not absolute.
pub(crate) fn clean_abs(path: &Path) -> Option<std::path::PathBuf> {
    use std::path::Component;
    if !path.is_absolute() {
        return None;
    }
    let mut out = std::path::PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Parse `rootfsPropagation` into mount(2) flags.
pub(crate) fn propagation(value: &str) -> Option<MsFlags> {
    match generic(value) {
        Some(Opt::Prop(p)) => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(json: &str) -> Mount {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn fixture_mounts_parse() {
        let p = parse(&mount(
            r#"{"destination":"/dev","type":"tmpfs","source":"tmpfs",
                "options":["nosuid","strictatime","mode=755","size=65536k"]}"#,
        ))
        .unwrap();
        assert_eq!(p.kind, Kind::Fs("tmpfs".into()));
        assert_eq!(p.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(p.data_string(), "mode=755,size=65536k");

        let p = parse(&mount(
            r#"{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup",
                "options":["nosuid","noexec","nodev","relatime","ro"]}"#,
        ))
        .unwrap();
        assert_eq!(p.kind, Kind::Cgroup);
        assert!(p.readonly());
    }

    #[test]
    fn bind_options() {
        let p = parse(&mount(
            r#"{"destination":"/x","type":"none","source":"/tmp",
                "options":["rbind","ro","nosuid","rshared","rnoexec","noatime"]}"#,
        ))
        .unwrap();
        assert_eq!(p.kind, Kind::Bind { recursive: true });
        assert_eq!(p.propagation, vec![MsFlags::MS_SHARED | MsFlags::MS_REC]);
        assert_eq!(p.rec_attr.set, libc::MOUNT_ATTR_NOEXEC);
        let a = p.bind_attr();
        assert_eq!(
            a.set,
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOATIME
        );
        assert_eq!(a.clr, libc::MOUNT_ATTR__ATIME);

        let p = parse(&mount(
            r#"{"destination":"/x","type":"bind","source":"/tmp"}"#,
        ))
        .unwrap();
        assert_eq!(p.kind, Kind::Bind { recursive: false });
        assert!(p.bind_attr().is_empty());
    }

    #[test]
    fn rejects_unknown_options() {
        let e = parse(&mount(
            r#"{"destination":"/x","source":"/tmp","options":["bind","rox"]}"#,
        ))
        .unwrap_err();
        assert!(e.contains("\"rox\""), "{e}");
        let e = parse(&mount(
            r#"{"destination":"/p","type":"proc","options":["nosuid","frobnicate"]}"#,
        ))
        .unwrap_err();
        assert!(e.contains("\"frobnicate\"") && e.contains("proc"), "{e}");
        let e = parse(&mount(
            r#"{"destination":"/t","type":"tmpfs","options":["sise=1m"]}"#,
        ))
        .unwrap_err();
        assert!(e.contains("sise=1m"), "{e}");
        assert!(parse(&mount(r#"{"destination":"/t"}"#)).is_err());
        assert!(parse(&mount(r#"{"destination":"/t","type":"none"}"#)).is_err());
        assert!(parse(&mount(
            r#"{"destination":"/t","type":"proc","options":["tmpcopyup"]}"#
        ))
        .is_err());
        assert!(
            parse(&mount(
                r#"{"destination":"/t","type":"tmpfs","options":["tmpcopyup"]}"#
            ))
            .unwrap()
            .tmpcopyup
        );
        // Unknown filesystems pass their data through.
        let p = parse(&mount(
            r#"{"destination":"/t","type":"ext4","source":"/dev/vdb","options":["ro","discard","errors=remount-ro"]}"#,
        ))
        .unwrap();
        assert_eq!(p.data_string(), "discard,errors=remount-ro");
    }

    #[test]
    fn clean_paths() {
        assert_eq!(
            clean_abs(Path::new("/a/./b//c/../d")).unwrap(),
            Path::new("/a/b/d")
        );
        assert_eq!(clean_abs(Path::new("/")).unwrap(), Path::new("/"));
        assert!(clean_abs(Path::new("/a/../../etc")).is_none());
        assert!(clean_abs(Path::new("relative")).is_none());
    }

    #[test]
    fn propagation_values() {
        assert_eq!(
            propagation("rslave"),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(propagation("private"), Some(MsFlags::MS_PRIVATE));
        assert_eq!(propagation("ro"), None);
        assert_eq!(propagation("bogus"), None);
    }
}
