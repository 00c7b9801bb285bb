//! `vessel checkpoint`, `vessel restore`, `vessel snapshot`: argument parsing over
//! [`vessel_runtime::checkpoint`] (runc's flags and defaults).

use std::path::{Path, PathBuf};

use vessel_runtime::checkpoint::{self, CheckpointOptions, RestoreOptions};
use vessel_runtime::container::Container;
use vessel_runtime::wait;

use super::CliResult;

/// Flags shared by checkpoint and restore.
#[derive(clap::Args, Debug)]
pub struct CommonArgs {
    /// Path for saving criu image files.
    #[arg(long, default_value = "./checkpoint")]
    image_path: PathBuf,
    /// Path for saving work files and logs.
    #[arg(long)]
    work_path: Option<PathBuf>,
    /// Allow open tcp connections.
    #[arg(long)]
    tcp_established: bool,
    /// Allow external unix sockets.
    #[arg(long)]
    ext_unix_sk: bool,
    /// Allow shell jobs.
    #[arg(long)]
    shell_job: bool,
    /// Handle file locks, for safety.
    #[arg(long)]
    file_locks: bool,
    /// Cgroups mode: soft (default), full, strict or ignore.
    #[arg(long)]
    manage_cgroups_mode: Option<String>,
    /// The criu binary (default: $VESSEL_CRIU, else criu from PATH).
    #[arg(long)]
    criu: Option<PathBuf>,
}

/// `vessel checkpoint` flags.
#[derive(clap::Args, Debug)]
pub struct CheckpointArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Leave the process running after checkpointing.
    #[arg(long)]
    leave_running: bool,
    /// Dump the container's memory only, leave it running (base of a later checkpoint).
    #[arg(long)]
    pre_dump: bool,
    /// Path for the previous criu image files of a pre-dump.
    #[arg(long)]
    parent_path: Option<PathBuf>,
    /// Punch holes in the parent images for pages this checkpoint writes.
    #[arg(long)]
    auto_dedup: bool,
    /// Also save the container's rootfs and config next to the images (a stateful
    /// snapshot restorable with `restore --from-snapshot DIR`): DIR/images, DIR/bundle.
    #[arg(long, value_name = "DIR")]
    snapshot: Option<PathBuf>,
    /// Container id.
    id: String,
}

/// `vessel restore` flags.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Path to the bundle directory.
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Detach from the container's process.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Write the restored process's pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (containerd's shim passes it): vessel never makes
    /// the restoring process a subreaper, the restored init is its plain child.
    #[arg(long)]
    no_subreaper: bool,
    /// Restore established TCP connections closed.
    #[arg(long)]
    tcp_close: bool,
    /// LSM profile of the restored process (TYPE:NAME, e.g. apparmor:NAME).
    #[arg(long)]
    lsm_profile: Option<String>,
    /// Restore from a snapshot made with `checkpoint --snapshot DIR`: its rootfs and config
    /// are copied to --bundle (which must not exist yet) and its images are used.
    #[arg(long, value_name = "DIR")]
    from_snapshot: Option<PathBuf>,
    /// Container id.
    id: String,
}

fn mode(
    c: &CommonArgs,
) -> Result<Option<vessel_runtime::criu::CgroupMode>, checkpoint::CheckpointError> {
    c.manage_cgroups_mode
        .as_deref()
        .map(checkpoint::parse_cgroup_mode)
        .transpose()
}

/// `vessel checkpoint`.
pub fn checkpoint(root: &Path, a: &CheckpointArgs) -> CliResult {
    let mut o = CheckpointOptions::new(&a.common.image_path);
    if let Some(c) = &a.common.criu {
        o.criu = c.clone();
    }
    o.work_path = a.common.work_path.clone();
    o.tcp_established = a.common.tcp_established;
    o.ext_unix_sk = a.common.ext_unix_sk;
    o.shell_job = a.common.shell_job;
    o.file_locks = a.common.file_locks;
    o.manage_cgroups_mode = mode(&a.common)?;
    o.leave_running = a.leave_running;
    o.pre_dump = a.pre_dump;
    o.parent_path = a.parent_path.clone();
    o.auto_dedup = a.auto_dedup;
    if let Some(dir) = &a.snapshot {
        vessel_runtime::snapshot::snapshot(root, &a.id, dir, &o)?;
        return Ok(0);
    }
    Container::load(root, &a.id)?.checkpoint(&o)?;
    Ok(0)
}

/// `vessel restore`: without --detach, waits for the container like `run`.
pub fn restore(root: &Path, a: &RestoreArgs) -> CliResult {
    let mut o = RestoreOptions::new(&a.common.image_path);
    if let Some(c) = &a.common.criu {
        o.criu = c.clone();
    }
    o.work_path = a.common.work_path.clone();
    o.tcp_established = a.common.tcp_established;
    o.ext_unix_sk = a.common.ext_unix_sk;
    o.shell_job = a.common.shell_job;
    o.file_locks = a.common.file_locks;
    o.manage_cgroups_mode = mode(&a.common)?;
    o.pid_file = a.pid_file.clone();
    o.console_socket = a.console_socket.clone();
    o.tcp_close = a.tcp_close;
    o.lsm_profile = a.lsm_profile.clone();
    let sigs = if a.detach {
        None
    } else {
        Some(wait::block_signals()?)
    };
    let c = match &a.from_snapshot {
        Some(dir) => vessel_runtime::snapshot::restore_snapshot(dir, root, &a.id, &a.bundle, &o)?,
        None => Container::restore(root, &a.id, &a.bundle, &o)?,
    };
    let Some(sigs) = sigs else { return Ok(0) };
    let code = wait::wait_forwarding(c.pid(), &sigs)?;
    let _ = Container::load(root, &a.id).map(|c| c.delete(true));
    Ok(u8::try_from(code).unwrap_or(255))
}

/// `vessel migrate` flags.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The target's state root ("host B").
    #[arg(long)]
    to_root: PathBuf,
    /// The bundle to restore from on the target (its config names the target's resources).
    #[arg(long, short = 'b')]
    bundle: PathBuf,
    /// Id on the target (default: the same).
    #[arg(long)]
    to_id: Option<String>,
    /// Stream the final dump's pages through a CRIU page server on the target.
    #[arg(long)]
    page_server: bool,
    /// Staging directory for the images (removed afterwards).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Most pre-dumps while the container runs (when the kernel tracks memory).
    #[arg(long, default_value_t = 3)]
    max_pre_dumps: u32,
    /// Allow open tcp connections.
    #[arg(long)]
    tcp_established: bool,
    /// Write the restored process's pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// The criu binary (default: $VESSEL_CRIU, else criu from PATH).
    #[arg(long)]
    criu: Option<PathBuf>,
    /// Container id on the source (--root).
    id: String,
}

/// `vessel migrate`: prints the migration report.
pub fn migrate(root: &Path, a: &MigrateArgs) -> CliResult {
    let mut o = vessel_runtime::migration::MigrationOptions::default();
    if let Some(c) = &a.criu {
        o.criu = c.clone();
    }
    o.dst_id = a.to_id.clone();
    o.work_dir = a.work_dir.clone();
    o.max_pre_dumps = a.max_pre_dumps;
    o.page_server = a.page_server;
    o.tcp_established = a.tcp_established;
    o.pid_file = a.pid_file.clone();
    let r = vessel_runtime::migration::migrate(root, &a.id, &a.to_root, &a.bundle, &o)?;
    println!("{r}");
    Ok(0)
}
