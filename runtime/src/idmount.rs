//! Id-mapped mounts of a container, prepared by the runtime's parent before the clone.
//!
//! The kernel lets only a process with `CAP_SYS_ADMIN` over a filesystem's owning user
//! namespace (the host's, for ext4 or a host tmpfs) attach an id map to one of its mounts,
//! so the container's init — root of its own user namespace only — cannot do it. As in runc,
//! the runtime does it in the host's namespaces: for every id-mapped bind mount it clones the
//! source tree with `open_tree(OPEN_TREE_CLONE)` and sets `MOUNT_ATTR_IDMAP` on the detached
//! copy ([`crate::idmap::idmapped_tree`]); the init, cloned from the parent with the fds
//! open, then `move_mount`s the copy into place in its rootfs step. Because everything is
//! done before any process exists, a filesystem that refuses idmapping fails `create` with
//! nothing mounted (detached trees vanish with their fds).
//!
//! Which mapping (runc and crun semantics):
//! - a mount with its own `uidMappings`/`gidMappings` uses them: a user namespace carrying
//!   exactly those maps is made for it (ids on disk are read as `containerID`s and shown as
//!   the `hostID`s, as for a container's user namespace);
//! - a mount with only the `idmap`/`ridmap` option uses the container's
//!   `linux.uidMappings`/`gidMappings`, so files owned by id N on disk appear owned by
//!   container id N (e.g. a host directory owned by 0 appears owned by the container's
//!   root); without a container user namespace this is an error;
//! - `ridmap` also id-maps the submounts of an `rbind`; `idmap` only the top mount.
//!
//! The whole rootfs is id-mapped (with the container's mappings) when the annotation
//! [`ROOTFS_IDMAP_ANNOTATION`] is `"true"`: OCI has no field for it, and this lets an image
//! unpacked as uid 0 on disk be used by a container whose root is e.g. host uid 100000 with
//! no chown pass.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};

use crate::idmap::{self, IdmapError, UserNamespace};

/// Annotation asking for an id-mapped rootfs (value `"true"`).
pub const ROOTFS_IDMAP_ANNOTATION: &str = "run.oci.vessel.rootfs-idmap";

/// Errors of preparing id-mapped mounts.
#[derive(Debug, thiserror::Error)]
pub enum IdmountError {
    /// An id-mapped mount without a mapping to use.
    #[error(
        "{what}: the {option} option without mount-level uidMappings/gidMappings uses the \
         container's user namespace mappings, but the config has no new user namespace"
    )]
    NoUserNamespace {
        /// Which mount.
        what: String,
        /// The option.
        option: &'static str,
    },
    /// A mount's mappings are invalid.
    #[error("{what}: {source}")]
    Mapping {
        /// Which mount.
        what: String,
        /// The problem.
        #[source]
        source: IdmapError,
    },
    /// The kernel refused to make the id-mapped tree.
    #[error("{what}: {source}")]
    Tree {
        /// Which mount.
        what: String,
        /// The kernel's refusal.
        #[source]
        source: IdmapError,
    },
}

/// Detached id-mapped trees, made by the parent, attached by the init.
#[derive(Debug, Default)]
pub struct IdmappedTrees {
    /// The rootfs (replaces the bind of the rootfs onto itself).
    pub root: Option<OwnedFd>,
    /// Bind mounts, by their index in `mounts`.
    pub mounts: Vec<(usize, OwnedFd)>,
}

impl IdmappedTrees {
    /// The prepared tree of mount `index`, if it is id-mapped.
    pub fn mount(&self, index: usize) -> Option<BorrowedFd<'_>> {
        self.mounts
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, fd)| fd.as_fd())
    }

    /// The prepared rootfs tree, if the rootfs is id-mapped.
    pub fn root(&self) -> Option<BorrowedFd<'_>> {
        self.root.as_ref().map(|fd| fd.as_fd())
    }

    /// Duplicates of the trees in the form [`crate::rootfs::prepare_with_root`] takes
    /// (the init holds the parent's copy by reference).
    pub fn for_rootfs(
        &self,
    ) -> Result<(Vec<crate::rootfs::PreparedMount>, Option<OwnedFd>), crate::rootfs::RootfsError>
    {
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| {
                crate::rootfs::RootfsError::path(
                    "duplicate an id-mapped tree",
                    "",
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)),
                )
            })
        };
        let mounts = self
            .mounts
            .iter()
            .map(|(index, fd)| {
                Ok(crate::rootfs::PreparedMount {
                    index: *index,
                    fd: dup(fd)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let root = self.root.as_ref().map(dup).transpose()?;
        Ok((mounts, root))
    }

    /// Whether nothing is id-mapped.
    pub fn is_empty(&self) -> bool {
        self.root.is_none() && self.mounts.is_empty()
    }
}

/// Whether the spec asks for an id-mapped rootfs.
pub fn rootfs_idmap_requested(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ROOTFS_IDMAP_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// What a mount asks for: `None` if not id-mapped, else (uses own mappings, option name,
/// recursive idmap, recursive clone).
fn requested(m: &Mount) -> Option<(bool, &'static str, bool, bool)> {
    let opts = m.options().clone().unwrap_or_default();
    let has = |o: &str| opts.iter().any(|x| x == o);
    let own = m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty());
    let ridmap = has("ridmap");
    let option = if ridmap {
        "ridmap"
    } else if has("idmap") {
        "idmap"
    } else if own {
        "uidMappings"
    } else {
        return None;
    };
    Some((own, option, ridmap, has("rbind")))
}

/// The container's own mappings, for mounts without mappings of their own.
struct ContainerMaps<'a> {
    new_user: bool,
    uid: &'a [LinuxIdMapping],
    gid: &'a [LinuxIdMapping],
}

impl ContainerMaps<'_> {
    /// The user namespace carrying the container's mappings, made on first use.
    fn userns<'n>(
        &self,
        slot: &'n mut Option<UserNamespace>,
        what: &str,
        option: &'static str,
    ) -> Result<BorrowedFd<'n>, IdmountError> {
        if slot.is_none() {
            if !self.new_user || self.uid.is_empty() || self.gid.is_empty() {
                return Err(IdmountError::NoUserNamespace {
                    what: what.to_string(),
                    option,
                });
            }
            let ns = UserNamespace::with_mappings(self.uid, self.gid).map_err(|source| {
                IdmountError::Mapping {
                    what: what.to_string(),
                    source,
                }
            })?;
            *slot = Some(ns);
        }
        match slot {
            Some(ns) => Ok(ns.fd()),
            None => Err(IdmountError::NoUserNamespace {
                what: what.to_string(),
                option,
            }),
        }
    }
}

/// Makes the detached id-mapped trees the spec asks for. Run in the parent after
/// `rootfs::validate` (which refuses id-map options on non-bind mounts and half-given
/// mappings) and before the clone. `bundle` resolves relative bind sources, `rootfs` is the
/// canonical rootfs path.
pub fn prepare(spec: &Spec, bundle: &Path, rootfs: &Path) -> Result<IdmappedTrees, IdmountError> {
    let (cuid, cgid) = crate::userns::spec_mappings(spec);
    let new_user = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.typ() == oci_spec::runtime::LinuxNamespaceType::User && n.path().is_none()
            })
        });
    // The container's mapping namespace is made at most once and shared.
    let mut container_ns: Option<UserNamespace> = None;
    let container = ContainerMaps {
        new_user,
        uid: &cuid,
        gid: &cgid,
    };
    let mut trees = IdmappedTrees::default();
    if rootfs_idmap_requested(spec) {
        let what = format!("rootfs (annotation {ROOTFS_IDMAP_ANNOTATION})");
        let ns = container.userns(&mut container_ns, &what, ROOTFS_IDMAP_ANNOTATION)?;
        let tree = idmap::idmapped_tree(rootfs, ns, true, true)
            .map_err(|source| IdmountError::Tree { what, source })?;
        trees.root = Some(tree);
    }
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let Some((own, option, idmap_rec, clone_rec)) = requested(m) else {
            continue;
        };
        let what = format!("mounts[{index}] (destination {:?})", m.destination());
        let source: PathBuf = bundle.join(m.source().clone().unwrap_or_default());
        let tree = if own {
            let uid = m.uid_mappings().clone().unwrap_or_default();
            let gid = m.gid_mappings().clone().unwrap_or_default();
            let ns = UserNamespace::with_mappings(&uid, &gid).map_err(|source| {
                IdmountError::Mapping {
                    what: what.clone(),
                    source,
                }
            })?;
            idmap::idmapped_tree(&source, ns.fd(), clone_rec, idmap_rec)
        } else {
            let ns = container.userns(&mut container_ns, &what, option)?;
            idmap::idmapped_tree(&source, ns, clone_rec, idmap_rec)
        };
        let tree = tree.map_err(|source| IdmountError::Tree { what, source })?;
        trees.mounts.push((index, tree));
    }
    Ok(trees)
}

/// Validation of mount-level mappings (parent side, before anything exists).
pub fn validate(spec: &Spec) -> Result<(), IdmountError> {
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let what = || format!("mounts[{index}] (destination {:?})", m.destination());
        let check = |kind, maps: &Option<Vec<LinuxIdMapping>>| {
            idmap::validate(kind, maps.as_deref().unwrap_or(&[])).map_err(|source| {
                IdmountError::Mapping {
                    what: what(),
                    source,
                }
            })
        };
        check("uid", m.uid_mappings())?;
        check("gid", m.gid_mappings())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_with(mounts: serde_json::Value, userns: bool) -> Spec {
        let mut v = crate::spec::default_spec(false);
        v["mounts"] = mounts;
        if userns {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user"}));
            v["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            v["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn options_select_mapping_and_recursion() {
        let m: Mount = serde_json::from_value(
            json!({"destination": "/a", "type": "bind", "source": "/tmp", "options": ["rbind", "ridmap"]}),
        )
        .unwrap();
        assert_eq!(requested(&m), Some((false, "ridmap", true, true)));
        let m: Mount = serde_json::from_value(json!({
            "destination": "/a", "type": "bind", "source": "/tmp", "options": ["bind"],
            "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]
        }))
        .unwrap();
        assert_eq!(requested(&m), Some((true, "uidMappings", false, false)));
        let m: Mount = serde_json::from_value(
            json!({"destination": "/a", "type": "bind", "source": "/tmp", "options": ["bind"]}),
        )
        .unwrap();
        assert_eq!(requested(&m), None);
    }

    #[test]
    fn idmap_option_without_user_namespace_is_refused() {
        let spec = spec_with(
            json!([{"destination": "/a", "type": "bind", "source": "/tmp", "options": ["bind", "idmap"]}]),
            false,
        );
        let e = prepare(&spec, Path::new("/"), Path::new("/")).unwrap_err();
        assert!(matches!(e, IdmountError::NoUserNamespace { .. }), "{e}");
        assert!(e.to_string().contains("mounts[0]"), "{e}");
    }

    #[test]
    fn overlapping_mount_mappings_are_refused() {
        let spec = spec_with(
            json!([{
                "destination": "/a", "type": "bind", "source": "/tmp", "options": ["bind"],
                "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10},
                                {"containerID": 5, "hostID": 2000, "size": 10}],
                "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}]
            }]),
            true,
        );
        let e = validate(&spec).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
    }

    #[test]
    fn procfs_source_is_refused_with_nothing_mounted() {
        if !nix::unistd::geteuid().is_root() {
            skip_test!("needs root");
            return;
        }
        let spec = spec_with(
            json!([{"destination": "/p", "type": "bind", "source": "/proc", "options": ["bind", "idmap"]}]),
            true,
        );
        let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let e = prepare(&spec, Path::new("/"), Path::new("/")).unwrap_err();
        let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            matches!(
                e,
                IdmountError::Tree {
                    source: IdmapError::Unsupported { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(before, after);
    }

    #[test]
    fn rootfs_annotation_makes_a_root_tree_and_needs_a_user_namespace() {
        if !nix::unistd::geteuid().is_root() {
            skip_test!("needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut v = crate::spec::default_spec(false);
        v["mounts"] = json!([]);
        v["annotations"] = json!({ROOTFS_IDMAP_ANNOTATION: "true"});
        let spec: Spec = serde_json::from_value(v.clone()).unwrap();
        let e = prepare(&spec, Path::new("/"), dir.path()).unwrap_err();
        assert!(matches!(e, IdmountError::NoUserNamespace { .. }), "{e}");
        let mut with_user = spec_with(json!([]), true);
        with_user.set_annotations(spec.annotations().clone());
        let t = prepare(&with_user, Path::new("/"), dir.path()).unwrap();
        assert!(t.root().is_some() && t.mounts.is_empty());
    }

    #[test]
    fn tmpdir_source_gets_a_detached_tree() {
        if !nix::unistd::geteuid().is_root() {
            skip_test!("needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_with(
            json!([{"destination": "/a", "type": "bind", "source": dir.path(), "options": ["bind", "idmap"]}]),
            true,
        );
        let t = prepare(&spec, Path::new("/"), Path::new("/")).unwrap();
        assert!(t.mount(0).is_some() && t.root().is_none());
    }
}
