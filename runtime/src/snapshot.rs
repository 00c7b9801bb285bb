//! Stateful snapshots: a checkpoint plus a copy of the container's rootfs and config,
//! restorable later as a new container (new id, new bundle made from the snapshot).
//!
//! Layout of a snapshot directory: `images/` (CRIU images, as [`Container::checkpoint`]
//! writes them) and `bundle/` (`config.json` with `root.path = "rootfs"` and bind-mount
//! sources made absolute, and `rootfs/`, a copy of the container's rootfs directory).
//!
//! The rootfs is copied right after the dump. With `leave_running` the container runs
//! again by then, so files it changes in that window may be newer in the copy than in
//! the memory image; without it (the default) the copy is exact.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::checkpoint::{self, CheckpointError, CheckpointOptions, RestoreOptions};
use crate::container::{Container, ContainerError};

/// Images subdirectory of a snapshot.
pub const IMAGES_DIR: &str = "images";
/// Bundle subdirectory of a snapshot.
pub const BUNDLE_DIR: &str = "bundle";

type Result<T> = std::result::Result<T, CheckpointError>;

/// Copies a directory tree with `cp -a` (owners, modes, times, links, device nodes,
/// xattrs preserved; reflinks where the filesystem has them). Hand-writing all of that
/// correctly is more code than the one call is worth.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let out = Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(src)
        .arg(dst)
        .output()
        .map_err(|source| CheckpointError::Io {
            op: "run cp -a for",
            path: src.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(CheckpointError::Invalid(format!(
            "copy {} to {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Removes `dir` on drop unless disarmed.
struct RemoveOnFail {
    dir: PathBuf,
    armed: bool,
}

impl Drop for RemoveOnFail {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Creates `dir`, refusing an existing one.
fn create_new_dir(dir: &Path, what: &str) -> Result<RemoveOnFail> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(RemoveOnFail {
            dir: dir.to_path_buf(),
            armed: true,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(CheckpointError::Invalid(
            format!("{what} {} already exists", dir.display()),
        )),
        Err(source) => Err(CheckpointError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Snapshots container `id` of `root` into the new directory `dir`: checkpoint (with
/// `opts`, whose image path is replaced by `dir/images`) and a copy of its rootfs and
/// config in `dir/bundle`. Nothing is left in `dir` on failure.
pub fn snapshot(root: &Path, id: &str, dir: &Path, opts: &CheckpointOptions) -> Result<()> {
    if opts.pre_dump {
        return Err(CheckpointError::Invalid(
            "a snapshot cannot be a pre-dump".into(),
        ));
    }
    let mut c = Container::load(root, id)?;
    let mut spec = c.spec()?;
    let st = c.state();
    let guard = create_new_dir(dir, "snapshot directory")?;
    let images = dir.join(IMAGES_DIR);
    let bundle = dir.join(BUNDLE_DIR);
    let mut o = opts.clone();
    o.image_path = images;
    c.checkpoint(&o)?;
    fs::create_dir(&bundle).map_err(|source| CheckpointError::Io {
        op: "create",
        path: bundle.clone(),
        source,
    })?;
    copy_tree(&st.rootfs, &bundle.join("rootfs"))?;
    // The copy stands alone: rootfs inside the bundle, bind sources absolute.
    if let Some(r) = spec.root().clone() {
        let mut r = r;
        r.set_path(PathBuf::from("rootfs"));
        spec.set_root(Some(r));
    }
    if let Some(mounts) = spec.mounts().clone() {
        let mounts = mounts
            .into_iter()
            .map(|mut m| {
                if let Some(src) = m.source().clone() {
                    let bind = m.typ().as_deref() == Some("bind")
                        || m.options()
                            .iter()
                            .flatten()
                            .any(|o| o == "bind" || o == "rbind");
                    if bind && src.is_relative() {
                        m.set_source(Some(st.bundle.join(src)));
                    }
                }
                m
            })
            .collect();
        spec.set_mounts(Some(mounts));
    }
    let json = serde_json::to_vec_pretty(&spec)
        .map_err(|e| CheckpointError::Invalid(format!("serialize config: {e}")))?;
    crate::state::write_atomic(&bundle.join(crate::state::CONFIG_FILE), &json, 0o644)
        .map_err(ContainerError::from)?;
    let mut guard = guard;
    guard.armed = false;
    Ok(())
}

/// Restores the snapshot in `dir` as container `id` of `root`, with a new bundle at
/// `bundle` (must not exist; made from the snapshot's). `opts.image_path` is replaced by
/// the snapshot's images. On failure the new bundle is removed again.
pub fn restore_snapshot(
    dir: &Path,
    root: &Path,
    id: &str,
    bundle: &Path,
    opts: &RestoreOptions,
) -> Result<Container> {
    let images = dir.join(IMAGES_DIR);
    checkpoint::check_images(&images)?;
    let src = dir.join(BUNDLE_DIR);
    if !src.join(crate::state::CONFIG_FILE).is_file() {
        return Err(CheckpointError::NotACheckpoint {
            path: dir.to_path_buf(),
            reason: format!(
                "no {BUNDLE_DIR}/{} (not a snapshot)",
                crate::state::CONFIG_FILE
            ),
        });
    }
    crate::state::validate_id(id).map_err(ContainerError::from)?;
    let mut guard = create_new_dir(bundle, "bundle")?;
    for entry in fs::read_dir(&src).map_err(|source| CheckpointError::Io {
        op: "read",
        path: src.clone(),
        source,
    })? {
        let entry = entry.map_err(|source| CheckpointError::Io {
            op: "read",
            path: src.clone(),
            source,
        })?;
        copy_tree(&entry.path(), &bundle.join(entry.file_name()))?;
    }
    let mut o = opts.clone();
    o.image_path = images;
    let c = Container::restore(root, id, bundle, &o)?;
    guard.armed = false;
    Ok(c)
}
