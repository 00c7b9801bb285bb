//! Live migration of a container between two Vessel roots ("host A" → "host B").
//!
//! [`migrate`] follows CRIU's iterative scheme: while the container runs, pre-dumps copy
//! its memory (each one only the pages changed since the previous, thanks to the
//! kernel's soft-dirty tracking) and are transferred at once; then a final dump stops
//! it, writing only the last delta; the final images are transferred; the container is
//! restored on B. The downtime is final dump + transfer + restore. Without memory
//! tracking (a kernel without `CONFIG_MEM_SOFT_DIRTY`) there are no pre-dumps: one full
//! final dump, said so in [`MigrationReport::fallback`].
//!
//! "Transfer" copies the image directories (the two roots share this machine's
//! filesystem); with [`MigrationOptions::page_server`] the final dump streams its pages
//! to a CRIU page server writing straight into B's image directory instead, and only the
//! other images are copied.
//!
//! If the restore on B fails, the container is restored again on A from the same images
//! (its original bundle), and the error says whether that worked.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::checkpoint::{CheckpointError, CheckpointOptions, RestoreOptions};
use crate::container::Container;
use crate::criu::Criu;
use crate::state::Status;

/// Errors of a migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Checkpointing on A, or restoring on B before anything was stopped.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The restore on B failed; the container was restored on A again.
    #[error("restore on the target failed (the container runs on the source again): {0}")]
    RolledBack(#[source] CheckpointError),
    /// The restore on B failed and so did the restore on A: the container is stopped;
    /// its images are kept at `images`.
    #[error("restore on the target failed ({target}); restoring on the source failed too ({source}); images kept in {images}")]
    Lost {
        /// The target's error.
        target: Box<CheckpointError>,
        /// The source's error.
        #[source]
        source: Box<CheckpointError>,
        /// Where the final images are.
        images: PathBuf,
    },
    /// Staging directories.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How to migrate.
#[derive(Debug, Clone)]
pub struct MigrationOptions {
    /// The CRIU binary.
    pub criu: PathBuf,
    /// Id on the target (default: the same id).
    pub dst_id: Option<String>,
    /// Staging directory for the images (default: a new directory in the system temp
    /// dir); `src/` and `dst/` stand for A's and B's disks. Removed afterwards.
    pub work_dir: Option<PathBuf>,
    /// Most pre-dumps while the container runs (when memory tracking works).
    pub max_pre_dumps: u32,
    /// Stop pre-dumping once one writes at most this many pages.
    pub converged_pages: u64,
    /// Stream the final dump's pages to a CRIU page server on the target.
    pub page_server: bool,
    /// Checkpoint/restore established TCP connections.
    pub tcp_established: bool,
    /// Write the restored init's pid here.
    pub pid_file: Option<PathBuf>,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            criu: crate::checkpoint::default_criu(),
            dst_id: None,
            work_dir: None,
            max_pre_dumps: 3,
            converged_pages: 256,
            page_server: false,
            tcp_established: false,
            pid_file: None,
        }
    }
}

/// What a migration did and how long the container was down.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Whether the kernel tracks dirty memory (pre-dumps possible).
    pub mem_track: bool,
    /// Why there were no pre-dumps, if there were none.
    pub fallback: Option<String>,
    /// Pages written by each pre-dump.
    pub pre_dump_pages: Vec<u64>,
    /// Pages written by the final dump.
    pub final_pages: u64,
    /// Pages the final dump left to its parents.
    pub final_pages_skipped: u64,
    /// Bytes copied from A to B (all images).
    pub bytes_transferred: u64,
    /// Whether the final pages went through a page server.
    pub used_page_server: bool,
    /// Time of the final dump.
    pub final_dump: Duration,
    /// Time of the transfer after the final dump.
    pub transfer: Duration,
    /// Time of the restore on B.
    pub restore: Duration,
    /// The container was not running for this long (final dump + transfer + restore).
    pub downtime: Duration,
    /// Pid of the container's init on B.
    pub pid: i32,
    /// Its id on B.
    pub id: String,
}

impl std::fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "migrated as {:?}, pid {}", self.id, self.pid)?;
        match &self.fallback {
            Some(why) => writeln!(f, "pre-dumps: none ({why})")?,
            None => writeln!(f, "pre-dumps: {:?} pages", self.pre_dump_pages)?,
        }
        writeln!(
            f,
            "final dump: {} pages written, {} from parents{}",
            self.final_pages,
            self.final_pages_skipped,
            if self.used_page_server {
                " (via page server)"
            } else {
                ""
            }
        )?;
        writeln!(f, "transferred: {} bytes", self.bytes_transferred)?;
        write!(
            f,
            "downtime: {:.1} ms (final dump {:.1} ms, transfer {:.1} ms, restore {:.1} ms)",
            ms(self.downtime),
            ms(self.final_dump),
            ms(self.transfer),
            ms(self.restore)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MigrationError + 'a {
    move |source| MigrationError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the files of image directory `src` into the new directory `dst` (images are
/// flat); returns the bytes copied.
fn copy_images(src: &Path, dst: &Path) -> Result<u64, MigrationError> {
    fs::create_dir_all(dst).map_err(io("create", dst))?;
    let mut bytes = 0;
    for e in fs::read_dir(src).map_err(io("read", src))? {
        let e = e.map_err(io("read", src))?;
        let ty = e.file_type().map_err(io("stat", src))?;
        let to = dst.join(e.file_name());
        if ty.is_symlink() {
            // CRIU's "parent" link to the previous pre-dump (relative: ../preN).
            let target = fs::read_link(e.path()).map_err(io("readlink", &e.path()))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io("symlink", &to))?;
        } else if ty.is_file() {
            bytes += fs::copy(e.path(), &to).map_err(io("copy", &e.path()))?;
        }
    }
    Ok(bytes)
}

/// Removes the staging directory on drop.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Migrates container `id` from the Vessel root `src_root` to `dst_root`, restoring it
/// there from the bundle `dst_bundle` (its config names B's resources, e.g. B's network
/// namespace; its rootfs holds the container's files). On success the container runs on
/// B (the caller's child) and is gone from A.
pub fn migrate(
    src_root: &Path,
    id: &str,
    dst_root: &Path,
    dst_bundle: &Path,
    opts: &MigrationOptions,
) -> Result<MigrationReport, MigrationError> {
    let c = Container::load(src_root, id).map_err(CheckpointError::from)?;
    if c.status() != Status::Running {
        return Err(CheckpointError::NotRunning {
            id: id.to_string(),
            status: c.status(),
        }
        .into());
    }
    let src_bundle = c.state().bundle;
    let dst_id = opts.dst_id.clone().unwrap_or_else(|| id.to_string());
    crate::state::validate_id(&dst_id)
        .map_err(|e| CheckpointError::from(crate::container::ContainerError::from(e)))?;
    if dst_root.join(&dst_id).exists() {
        return Err(CheckpointError::Invalid(format!(
            "container {dst_id:?} already exists on the target"
        ))
        .into());
    }
    let criu = Criu::new(&opts.criu);
    let mem_track = criu.features().map_err(CheckpointError::from)?.mem_track;
    let work = match &opts.work_dir {
        Some(w) => w.clone(),
        None => std::env::temp_dir().join(format!("vessel-migrate-{id}-{}", std::process::id())),
    };
    fs::create_dir_all(&work).map_err(io("create", &work))?;
    let _staging = Staging(work.clone());
    let (src, dst) = (work.join("src"), work.join("dst"));
    fs::create_dir_all(&src).map_err(io("create", &src))?;
    fs::create_dir_all(&dst).map_err(io("create", &dst))?;

    let mut report = MigrationReport {
        mem_track,
        id: dst_id.clone(),
        ..Default::default()
    };
    let base = |image: PathBuf| {
        let mut o = CheckpointOptions::new(image);
        o.criu = opts.criu.clone();
        o.tcp_established = opts.tcp_established;
        o
    };
    let mut parent: Option<String> = None;
    if mem_track {
        for i in 0..opts.max_pre_dumps {
            let name = format!("pre{i}");
            let mut o = base(src.join(&name));
            o.pre_dump = true;
            o.parent_path = parent.as_ref().map(|p| PathBuf::from(format!("../{p}")));
            let r = Container::load(src_root, id)
                .map_err(CheckpointError::from)?
                .checkpoint(&o)?;
            report.pre_dump_pages.push(r.pages_written);
            report.bytes_transferred += copy_images(&src.join(&name), &dst.join(&name))?;
            parent = Some(name);
            if r.pages_written <= opts.converged_pages {
                break;
            }
        }
    } else {
        report.fallback = Some(
            "this kernel lacks memory tracking (CONFIG_MEM_SOFT_DIRTY): one final dump of all memory"
                .into(),
        );
    }

    // Downtime starts: the final dump stops the container.
    let mut o = base(src.join("final"));
    o.parent_path = parent.as_ref().map(|p| PathBuf::from(format!("../{p}")));
    let dst_final = dst.join("final");
    let server = if opts.page_server {
        fs::create_dir_all(&dst_final).map_err(io("create", &dst_final))?;
        let s = criu
            .start_page_server(&dst_final, std::net::Ipv4Addr::LOCALHOST.into(), 0)
            .map_err(CheckpointError::from)?;
        o.page_server = Some(std::net::SocketAddr::from(([127, 0, 0, 1], s.port())));
        report.used_page_server = true;
        Some(s)
    } else {
        None
    };
    let down = Instant::now();
    let r = Container::load(src_root, id)
        .map_err(CheckpointError::from)?
        .checkpoint(&o)?;
    report.final_dump = down.elapsed();
    report.final_pages = r.pages_written;
    report.final_pages_skipped = r.pages_skipped_parent;
    let t = Instant::now();
    if let Some(s) = server {
        s.wait().map_err(CheckpointError::from)?;
    }
    report.bytes_transferred += copy_images(&src.join("final"), &dst_final)?;
    report.transfer = t.elapsed();

    let t = Instant::now();
    let mut ro = RestoreOptions::new(&dst_final);
    ro.criu = opts.criu.clone();
    ro.tcp_established = opts.tcp_established;
    ro.pid_file = opts.pid_file.clone();
    match Container::restore(dst_root, &dst_id, dst_bundle, &ro) {
        Ok(c) => {
            report.restore = t.elapsed();
            report.downtime = down.elapsed();
            report.pid = c.pid();
            Ok(report)
        }
        Err(target) => {
            let mut back = RestoreOptions::new(src.join("final"));
            back.criu = opts.criu.clone();
            back.tcp_established = opts.tcp_established;
            match Container::restore(src_root, id, &src_bundle, &back) {
                Ok(_) => Err(MigrationError::RolledBack(target)),
                Err(source) => {
                    // Keep the images: they are all that is left of the container.
                    let keep = src_root.join(format!(".{id}-migration-images"));
                    let _ = fs::rename(src.join("final"), &keep);
                    Err(MigrationError::Lost {
                        target: Box::new(target),
                        source: Box::new(source),
                        images: keep,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_images_keeps_parent_links_and_counts_bytes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src/final");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("pages-1.img"), [7u8; 4096]).unwrap();
        fs::write(src.join("inventory.img"), b"inv").unwrap();
        std::os::unix::fs::symlink("../pre0", src.join("parent")).unwrap();
        let dst = d.path().join("dst/final");
        assert_eq!(copy_images(&src, &dst).unwrap(), 4099);
        assert_eq!(fs::read(dst.join("pages-1.img")).unwrap(), vec![7u8; 4096]);
        assert_eq!(
            fs::read_link(dst.join("parent")).unwrap(),
            PathBuf::from("../pre0")
        );
    }

    #[test]
    fn report_names_the_fallback_and_the_downtime() {
        let r = MigrationReport {
            fallback: Some("no soft-dirty".into()),
            downtime: Duration::from_millis(120),
            final_dump: Duration::from_millis(70),
            restore: Duration::from_millis(50),
            id: "c".into(),
            pid: 42,
            ..Default::default()
        };
        let s = r.to_string();
        assert!(s.contains("pre-dumps: none (no soft-dirty)"), "{s}");
        assert!(s.contains("downtime: 120.0 ms"), "{s}");
    }
}
