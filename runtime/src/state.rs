//! Per-container state directories under the runtime root.
//!
//! Layout: `<root>/<id>/` holds
//! - `state.json` — the persisted [`ContainerState`] (OCI state fields plus what later
//!   commands need), always replaced atomically (write a temp file, rename);
//! - `config.json` — the spec the container was created from (the bundle may change later);
//! - `exec.fifo` — the fifo the created init blocks on until `start` (removed by `start`).
//!
//! Concurrency: every command that reads-modifies-writes a container takes an exclusive
//! `flock` on the container directory itself ([`StateDir::lock`]). Creation is made atomic
//! by `mkdir` (a duplicate id fails with `EEXIST`). Deletion removes the directory while
//! holding the lock, so a waiter that gets the lock afterwards re-checks that the state
//! still exists ([`StateDir::lock`] does it).
//!
//! Liveness: a pid alone may be reused, so the init's start time (field 22 of
//! `/proc/<pid>/stat`) is saved at create; the container is `stopped` as soon as the pid
//! is gone, is a zombie, or belongs to a process with another start time.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// File name of the persisted state inside a container's directory.
pub const STATE_FILE: &str = "state.json";
/// File name of the copy of the container's spec.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the fifo the init waits on until `start`.
pub const EXEC_FIFO: &str = "exec.fifo";
/// Default runtime root (like runc's `/run/runc`).
pub const DEFAULT_ROOT: &str = "/run/vessel";

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The container id is empty or would escape the root.
    #[error("invalid container id {0:?}: use letters, digits, '_', '-', '.', '+' (not starting with '.')")]
    InvalidId(String),
    /// A container with this id already exists.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// No container with this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// I/O on a state file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `state.json` could not be parsed or serialized.
    #[error("state file {path}: {source}")]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, StateError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// OCI container status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The container is being created (only seen by hooks).
    Creating,
    /// Created, the init waits for `start`.
    Created,
    /// The user process runs.
    Running,
    /// The init process has exited.
    Stopped,
    /// Frozen by the cgroup freezer.
    Paused,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Paused => "paused",
        })
    }
}

/// The OCI runtime state (what `vessel state` prints and hooks read on stdin), with the
/// extra fields runc prints and containerd reads (`rootfs`, `created`, `owner`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// OCI version of the state format.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Current status.
    pub status: Status,
    /// Host pid of the container's init (0 once stopped).
    pub pid: i32,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Owner (runc prints "" for root-owned containers).
    pub owner: String,
    /// Annotations from the spec.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// Everything persisted about a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    /// The OCI state as of the last write (status/pid are refreshed on load).
    #[serde(flatten)]
    pub oci: State,
    /// Start time of the init (clock ticks since boot), to detect pid reuse.
    pub init_start_time: u64,
    /// Whether the container has its own pid namespace (kill --all / ps walk).
    pub own_pid_ns: bool,
    /// Set up with move+chroot instead of pivot_root (exec must chroot too).
    #[serde(default)]
    pub no_pivot: bool,
    /// Serialized cgroup manager, if the container has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<serde_json::Value>,
}

/// Checks a container id the way runc does: no path separators, not `.`/`..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

/// A container's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    id: String,
}

/// An exclusive lock on a container's state directory; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateDir {
    /// Creates `<root>/<id>` (and `root` if needed) and returns it locked. Fails with
    /// [`StateError::Exists`] if the id is taken.
    pub fn create(root: &Path, id: &str) -> Result<(StateDir, StateLock)> {
        validate_id(id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(io_err("create root", root))?;
        let dir = root.join(id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {
                let f = File::open(&dir).map_err(io_err("open", &dir))?;
                let lock = Flock::lock(f, FlockArg::LockExclusive)
                    .map_err(|(_, e)| io_err("flock", &dir)(io::Error::from(e)))?;
                Ok((
                    StateDir {
                        dir,
                        id: id.to_string(),
                    },
                    StateLock { _lock: lock },
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_string()))
            }
            Err(e) => Err(io_err("create", &dir)(e)),
        }
    }

    /// Opens an existing container's directory.
    pub fn open(root: &Path, id: &str) -> Result<StateDir> {
        validate_id(id)?;
        let dir = root.join(id);
        if !dir.join(STATE_FILE).exists() {
            return Err(StateError::NotFound(id.to_string()));
        }
        Ok(StateDir {
            dir,
            id: id.to_string(),
        })
    }

    /// Removes the directory of a create that died before saving its state (no
    /// `state.json`, nobody holding the lock). Returns whether there was one.
    pub fn remove_stale(root: &Path, id: &str) -> Result<bool> {
        validate_id(id)?;
        let dir = root.join(id);
        if dir.join(STATE_FILE).exists() {
            return Ok(false);
        }
        let f = match File::open(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("open", &dir)(e)),
        };
        // A create in progress holds the lock: not stale.
        let Ok(_lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else {
            return Ok(false);
        };
        if dir.join(STATE_FILE).exists() {
            return Ok(false);
        }
        fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        Ok(true)
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes the exclusive lock (blocking). Fails with [`StateError::NotFound`] if the
    /// container was deleted while waiting.
    pub fn lock(&self) -> Result<StateLock> {
        let f = File::open(&self.dir).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StateError::NotFound(self.id.clone())
            } else {
                io_err("open", &self.dir)(e)
            }
        })?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("flock", &self.dir)(io::Error::from(e)))?;
        // A deleter may have removed the directory while we waited.
        if !self.dir.join(STATE_FILE).exists() {
            return Err(StateError::NotFound(self.id.clone()));
        }
        Ok(StateLock { _lock: lock })
    }

    /// Reads the persisted state.
    pub fn load(&self) -> Result<ContainerState> {
        let path = self.dir.join(STATE_FILE);
        let data = fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StateError::NotFound(self.id.clone())
            } else {
                io_err("read", &path)(e)
            }
        })?;
        serde_json::from_slice(&data).map_err(|source| StateError::Json { path, source })
    }

    /// Persists the state atomically.
    pub fn save(&self, state: &ContainerState) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let data = serde_json::to_vec(state).map_err(|source| StateError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &data, 0o600)
    }

    /// Removes the whole directory.
    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &self.dir)(e)),
        }
    }
}

/// Writes `data` to `path` atomically: a temp file in the same directory, then rename.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        // No fsync: the rename makes the update atomic for concurrent readers, which is
        // what matters for state under /run (tmpfs, gone at reboot anyway); an fsync
        // costs milliseconds per container start on disk-backed roots.
        fs::rename(&tmp, path).map_err(io_err("rename", path))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Lists the ids of all containers under `root` (none if `root` does not exist).
pub fn list_ids(root: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", root)(e)),
    };
    let mut ids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(STATE_FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) and state letter of
/// a live process; `None` if it does not exist.
pub fn proc_start_time(pid: i32) -> Option<(u64, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses `/proc/<pid>/stat`: the comm field may contain spaces and parentheses, so
/// split after the last `)`.
fn parse_stat(stat: &str) -> Option<(u64, char)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), start time is field 22 → 19th of the remaining ones.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// Whether the process `pid` still is the one started at `start_time` and has not exited.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_start_time(pid) {
        Some((st, state)) => st == start_time && state != 'Z' && state != 'X',
        None => false,
    }
}

/// Current UTC time as RFC 3339 with nanoseconds (what runc prints in `created`).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats a UNIX time as RFC 3339 UTC. Hand-written (days-to-civil, H. Hinnant's
/// algorithm) to avoid a date crate for one format.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> ContainerState {
        ContainerState {
            oci: State {
                oci_version: "1.2.0".into(),
                id: id.into(),
                status: Status::Created,
                pid: 42,
                bundle: "/b".into(),
                rootfs: "/b/rootfs".into(),
                created: now_rfc3339(),
                owner: String::new(),
                annotations: HashMap::from([("a".into(), "b".into())]),
            },
            init_start_time: 7,
            own_pid_ns: true,
            no_pivot: false,
            cgroup: None,
        }
    }

    #[test]
    fn ids_are_validated() {
        for bad in ["", ".", "..", "a/b", "../x", ".hidden", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["abc", "a-b_c.d+e", "0123"] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn create_save_load_remove() {
        let root = tempfile::tempdir().unwrap();
        let (dir, lock) = StateDir::create(root.path(), "c1").unwrap();
        drop(lock);
        assert!(matches!(
            StateDir::create(root.path(), "c1"),
            Err(StateError::Exists(_))
        ));
        let st = sample("c1");
        dir.save(&st).unwrap();
        let back = StateDir::open(root.path(), "c1").unwrap().load().unwrap();
        assert_eq!(back, st);
        // OCI field names on disk.
        let raw: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(raw["ociVersion"], "1.2.0");
        assert_eq!(raw["status"], "created");
        assert_eq!(list_ids(root.path()).unwrap(), vec!["c1".to_string()]);
        dir.remove().unwrap();
        assert!(matches!(
            StateDir::open(root.path(), "c1"),
            Err(StateError::NotFound(_))
        ));
        assert!(list_ids(root.path()).unwrap().is_empty());
        assert!(matches!(dir.lock(), Err(StateError::NotFound(_))));
    }

    #[test]
    fn stale_create_dirs_are_removed_unless_locked() {
        let root = tempfile::tempdir().unwrap();
        let (dir, lock) = StateDir::create(root.path(), "c3").unwrap();
        // Being created (locked): not stale.
        assert!(!StateDir::remove_stale(root.path(), "c3").unwrap());
        drop(lock);
        assert!(StateDir::remove_stale(root.path(), "c3").unwrap());
        assert!(!dir.path().exists());
        // A saved container is never stale.
        let (dir, _) = StateDir::create(root.path(), "c4").unwrap();
        dir.save(&sample("c4")).unwrap();
        assert!(!StateDir::remove_stale(root.path(), "c4").unwrap());
        assert!(!StateDir::remove_stale(root.path(), "nope").unwrap());
    }

    #[test]
    fn atomic_write_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn lock_is_exclusive() {
        let root = tempfile::tempdir().unwrap();
        let (dir, _) = StateDir::create(root.path(), "c2").unwrap();
        dir.save(&sample("c2")).unwrap();
        let held = dir.lock().unwrap();
        // A second flock on another open file description must not be granted.
        let f = File::open(dir.path()).unwrap();
        let again = Flock::lock(f, FlockArg::LockExclusiveNonblock);
        assert!(again.is_err(), "second exclusive lock was granted");
        drop(held);
        let f = File::open(dir.path()).unwrap();
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok());
    }

    #[test]
    fn stat_parsing_and_liveness() {
        let line = "123 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 999 20";
        assert_eq!(parse_stat(line), Some((999, 'S')));
        let me = std::process::id() as i32;
        let (st, _) = proc_start_time(me).unwrap();
        assert!(is_alive(me, st));
        assert!(!is_alive(me, st + 1));
        assert!(!is_alive(0, 0));
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
    }
}
