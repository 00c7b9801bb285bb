//! The container lifecycle: create, start, state, kill, exec, delete, list, processes.
//!
//! # Design
//!
//! `create` does all checks that can fail early in the calling process (spec parsing and
//! the refusal of unsupported features, rootfs validation, seccomp compilation, opening
//! namespace paths, connecting the console socket), then clones the init *directly from
//! the caller* with every `CLONE_NEW*` flag at once (the kernel creates the user
//! namespace first and makes it own the others; with a new pid namespace the init is
//! its pid 1). There is no re-exec of the runtime binary and no intermediate process:
//! one `clone`, the child's setup syscalls, one `execve`. The steps of the child are
//! listed in [`crate::process::child`]. Parent and init synchronise over a
//! `SOCK_SEQPACKET` socketpair: the parent writes the id maps and sets up the cgroup,
//! releases the init, runs the runtime-side hooks when asked, and waits for `Ready` (or
//! the init's error message).
//!
//! The created init then blocks reading `exec.fifo` in the state directory, which it
//! opened read-write (so the read blocks instead of returning EOF); `start` opens the
//! fifo write-only and non-blocking — which fails with `ENXIO` if the init is gone —
//! writes one byte and removes the fifo, and the init execs the user program; `start`
//! then waits for `POLLERR` on its write end (the init's close-on-exec read end is
//! gone: it exec'd) before running the poststart hooks.
//!
//! Every command that changes a container holds the state directory's `flock`. The
//! status is recomputed on every load: a container whose init pid is gone, a zombie, or
//! a process with another start time than the one saved at create is `stopped`.
//!
//! Any failure of `create` after the state directory exists kills the init, destroys
//! the cgroup and removes the state directory (a drop guard).

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::{Process, Spec};

use crate::integration::{self, Cgroup, IntegrationError, RootfsOptions};
use crate::namespaces::{self, NamespaceError, NamespacePlan};
use crate::process::child::{self, Role, Setup};
use crate::process::clone::{clone, clone_into_cgroup, pidfd_open, pidfd_send_signal, Forked};
use crate::spec::{self, SpecError};
use crate::state::{
    self, ContainerState, State, StateDir, StateError, Status, CONFIG_FILE, EXEC_FIFO,
};
use crate::sync::{self, Channel, Msg, SyncError};
use crate::terminal::{self, TerminalError};

mod ops;
pub use ops::{merge_resources, Events, RESOURCES_FILE};

/// Errors of the lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// State store error.
    #[error(transparent)]
    State(#[from] StateError),
    /// Bad or unsupported config.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Namespace error.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// User namespace, id map or rootless error.
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
    /// An id-mapped mount could not be prepared.
    #[error(transparent)]
    Idmount(#[from] crate::idmount::IdmountError),
    /// A sibling module (rootfs, security, cgroups, hooks) failed.
    #[error(transparent)]
    Setup(#[from] IntegrationError),
    /// Console socket error.
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    /// Parent ↔ init channel error.
    #[error("talking to the container process: {0}")]
    Sync(#[from] SyncError),
    /// The container process failed its setup.
    #[error("container process: {0}")]
    Init(String),
    /// The rootfs directory is missing.
    #[error("rootfs {path}: {source}")]
    Rootfs {
        /// The resolved path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle directory is unusable.
    #[error("bundle {path}: {source}")]
    Bundle {
        /// The bundle path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An operation not allowed in the container's current status.
    #[error("cannot {op} container {id:?}: it is {status}")]
    BadStatus {
        /// What was attempted.
        op: &'static str,
        /// The container.
        id: String,
        /// Its status.
        status: Status,
    },
    /// A request that makes no sense for this container.
    #[error("{0}")]
    Invalid(String),
    /// A syscall failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] nix::Error),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of the lifecycle.
pub type Result<T> = std::result::Result<T, ContainerError>;

fn sys<T>(what: &'static str, r: nix::Result<T>) -> Result<T> {
    r.map_err(|e| ContainerError::Sys(what, e))
}

/// Options of [`Container::create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Runtime root (state directories).
    pub root: PathBuf,
    /// Write the init's pid here.
    pub pid_file: Option<PathBuf>,
    /// Send the pty master here when `process.terminal` is set.
    pub console_socket: Option<PathBuf>,
    /// Use move+chroot instead of pivot_root (e.g. on a ramfs root).
    pub no_pivot: bool,
    /// Do not create a new session keyring.
    pub no_new_keyring: bool,
    /// Pass this many fds after stdio (3, 4, …) to the container process.
    pub preserve_fds: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            root: PathBuf::from(state::DEFAULT_ROOT),
            pid_file: None,
            console_socket: None,
            no_pivot: false,
            no_new_keyring: false,
            preserve_fds: 0,
        }
    }
}

/// Options of [`Container::exec`].
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Write the process's pid here.
    pub pid_file: Option<PathBuf>,
    /// Send the pty master here when the process has a terminal.
    pub console_socket: Option<PathBuf>,
    /// Pass this many fds after stdio to the process.
    pub preserve_fds: u32,
}

/// A container known to the runtime.
#[derive(Debug)]
pub struct Container {
    pub(crate) dir: StateDir,
    pub(crate) state: ContainerState,
    warnings: Vec<String>,
}

/// Cleans up a half-created container unless disarmed.
struct CreateGuard<'a> {
    dir: &'a StateDir,
    pid: Option<i32>,
    cgroup: Option<&'a Cgroup>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        if let Some(cg) = self.cgroup {
            let _ = integration::cgroup_destroy(cg);
        }
        let _ = self.dir.remove();
    }
}

/// Resolves `root.path` against the bundle.
pub(crate) fn rootfs_path(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| ContainerError::Invalid("config has no root".into()))?;
    let p = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let canon = fs::canonicalize(&p).map_err(|source| ContainerError::Rootfs {
        path: p.clone(),
        source,
    })?;
    if !canon.is_dir() {
        return Err(ContainerError::Rootfs {
            path: p,
            source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    Ok(canon)
}

fn has_hooks(h: Option<&Vec<oci_spec::runtime::Hook>>) -> bool {
    h.is_some_and(|h| !h.is_empty())
}

impl Container {
    /// Creates container `id` from the OCI bundle at `bundle`: on success the init runs
    /// in all its namespaces with the rootfs set up, waiting for [`Container::start`].
    pub fn create(id: &str, bundle: &Path, opts: &CreateOptions) -> Result<Container> {
        state::validate_id(id)?;
        let bundle = fs::canonicalize(bundle).map_err(|source| ContainerError::Bundle {
            path: bundle.to_path_buf(),
            source,
        })?;
        let spec = spec::load(&bundle)?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| ContainerError::Invalid("config has no process".into()))?;
        let rootfs = rootfs_path(&spec, &bundle)?;
        crate::userns::check_rootless(&spec)?;
        crate::idmount::validate(&spec)?;
        integration::rootfs_validate(&spec, &bundle)?;
        integration::security_validate(&process)?;
        let seccomp = integration::seccomp_compile(&spec)?;
        let plan = NamespacePlan::from_spec(&spec)?;
        namespaces::validate_id_maps(&spec)?;
        if plan.new_user && !plan.joins.is_empty() {
            return Err(NamespaceError::Unsupported(
                "joining namespaces by path together with a new user namespace".into(),
            )
            .into());
        }
        let terminal = process.terminal() == Some(true);
        if terminal && opts.console_socket.is_none() {
            return Err(ContainerError::Invalid(
                "process.terminal is set: a --console-socket is required".into(),
            ));
        }
        let mut warnings = Vec::new();
        let cgroup = crate::userns::cgroup_or_skip(
            integration::cgroup_new(&spec, id),
            &spec,
            &mut warnings,
        )?;
        let idmapped = crate::idmount::prepare(&spec, &bundle, &rootfs)?;
        let joins = plan.open_joins()?;
        let pid_ns = plan
            .pid_join
            .as_ref()
            .map(|p| namespaces::open_ns(oci_spec::runtime::LinuxNamespaceType::Pid, p))
            .transpose()?;
        let console = match (&opts.console_socket, terminal) {
            (Some(p), true) => Some(terminal::connect(p)?),
            _ => None,
        };

        let (dir, _lock) = StateDir::create(&opts.root, id)?;
        let mut guard = CreateGuard {
            dir: &dir,
            pid: None,
            cgroup: cgroup.as_ref(),
            armed: true,
        };
        let fifo_path = dir.path().join(EXEC_FIFO);
        sys(
            "mkfifo exec.fifo",
            nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o600)),
        )?;
        let fifo = sys(
            "open exec.fifo",
            nix::fcntl::open(&fifo_path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()),
        )?;
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| ContainerError::Invalid(format!("serialize config: {e}")))?;
        state::write_atomic(&dir.path().join(CONFIG_FILE), &spec_json, 0o600)?;

        let template = State {
            oci_version: spec.version().clone(),
            id: id.to_string(),
            status: Status::Creating,
            pid: 0,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: state::now_rfc3339(),
            owner: String::new(),
            annotations: spec.annotations().clone().unwrap_or_default(),
        };
        let hooks = spec.hooks().as_ref();
        let runtime_hooks = has_hooks(hooks.and_then(|h| h.prestart().as_ref()))
            || has_hooks(hooks.and_then(|h| h.create_runtime().as_ref()));
        let (parent_ch, child_ch) = sync::pair()?;

        // As host root (and without a new user namespace, whose root could not write the
        // host's cgroup files) the init joins its cgroups itself, born in the v2 one and
        // moving itself into the v1 ones, which spares the RCU grace period a
        // `cgroup.procs` write by us waits for (see `cgroups::SelfJoin`). The limits are
        // set before it exists.
        let self_join = match &cgroup {
            Some(cg) if nix::unistd::geteuid().is_root() && !plan.new_user => {
                integration::cgroup_set(cg, &spec)?;
                crate::userns::delegate_container_cgroup(cg, &spec)?;
                Some(integration::cgroup_self_join(cg)?)
            }
            _ => None,
        };
        let saved_pid_ns = enter_pid_ns_for_children(pid_ns.as_ref())?;
        let (forked, born_in_v2) = clone_child(plan.clone_flags, self_join.as_ref());
        if forked != Ok(Forked::Child) {
            restore_pid_ns_for_children(saved_pid_ns)?;
        }
        let pid = match sys("clone container init", forked)? {
            Forked::Child => {
                drop(parent_ch);
                child::run(&Setup {
                    spec: &spec,
                    process: &process,
                    rootfs: &rootfs,
                    state: &template,
                    channel: &child_ch,
                    console: console.as_ref().map(|c| c.as_raw_fd()),
                    seccomp: seccomp.as_ref(),
                    preserve_fds: opts.preserve_fds,
                    role: Role::Init {
                        plan: &plan,
                        joins: &joins,
                        fifo,
                        new_keyring: !opts.no_new_keyring,
                        runtime_hooks,
                        rootfs_opts: RootfsOptions {
                            no_pivot: opts.no_pivot,
                        },
                        idmapped: &idmapped,
                    },
                    self_join: self_join.as_ref(),
                })
            }
            Forked::Parent(pid) => pid,
        };
        guard.pid = Some(pid);
        drop(child_ch);
        drop(fifo);
        drop(console);
        drop(joins);
        drop(idmapped);

        if plan.new_user {
            namespaces::write_id_maps(pid, &spec)?;
        }
        // Unless it joined itself, the init sets up its namespaces and most of its rootfs
        // while we put it into its cgroup (see `process::child`).
        send_to_init(&parent_ch, &Msg::Go(pid))?;
        if let Some(cg) = &cgroup {
            let joined = match &self_join {
                Some(sj) => finish_self_join(cg, sj, born_in_v2, pid),
                None => integration::cgroup_apply(cg, &spec, pid)
                    .map_err(ContainerError::from)
                    .and_then(|()| Ok(crate::userns::delegate_container_cgroup(cg, &spec)?)),
            };
            if let Err(e) = joined {
                // The init may have failed meanwhile (then the join failed because it is
                // gone): its own message says more.
                return Err(init_error_or(&parent_ch, pid, e));
            }
        }
        send_to_init(&parent_ch, &Msg::CgroupJoined)?;
        let mut creating = template.clone();
        creating.pid = pid;
        if runtime_hooks {
            expect_from_child(&parent_ch, Msg::NamespacesReady)?;
            let st = serde_json::to_string(&creating).unwrap_or_default();
            integration::run_hooks(hooks.and_then(|h| h.prestart().as_ref()), &st)?;
            integration::run_hooks(hooks.and_then(|h| h.create_runtime().as_ref()), &st)?;
            parent_ch.send(&Msg::HooksDone)?;
        }
        wait_ready(&parent_ch, &spec, &creating)?;

        let (start_time, _) = state::proc_start_time(pid).ok_or_else(|| {
            ContainerError::Init("the container process exited right after its setup".into())
        })?;
        let mut oci = creating;
        oci.status = Status::Created;
        let cstate = ContainerState {
            oci,
            init_start_time: start_time,
            own_pid_ns: plan.new_pid,
            no_pivot: opts.no_pivot,
            cgroup: cgroup.as_ref().and_then(integration::cgroup_to_json),
        };
        dir.save(&cstate)?;
        if let Some(pf) = &opts.pid_file {
            write_pid_file(pf, pid)?;
        }
        guard.armed = false;
        drop(guard);
        Ok(Container {
            dir: dir.clone(),
            state: cstate,
            warnings,
        })
    }

    /// Loads container `id` from `root`, with its status refreshed.
    pub fn load(root: &Path, id: &str) -> Result<Container> {
        let dir = StateDir::open(root, id)?;
        let state = dir.load()?;
        let mut c = Container {
            dir,
            state,
            warnings: Vec::new(),
        };
        c.refresh();
        Ok(c)
    }

    /// Removes what a `create` killed before it saved its state left behind (the state
    /// directory without `state.json`); `Ok(false)` if there is no such leftover.
    pub fn remove_stale(root: &Path, id: &str) -> Result<bool> {
        Ok(StateDir::remove_stale(root, id)?)
    }

    /// All containers under `root`, with refreshed status.
    pub fn list(root: &Path) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        for id in state::list_ids(root)? {
            match Container::load(root, &id) {
                Ok(c) => out.push(c),
                // Deleted meanwhile.
                Err(ContainerError::State(StateError::NotFound(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn refresh(&mut self) {
        let alive = state::is_alive(self.state.oci.pid, self.state.init_start_time);
        if !alive {
            self.state.oci.status = Status::Stopped;
        } else if self.state.oci.status == Status::Created
            && !self.dir.path().join(EXEC_FIFO).exists()
        {
            // Started: `start` removes the fifo and leaves state.json as it was.
            self.state.oci.status = Status::Running;
        }
    }

    /// Re-reads the state under the lock, with its status refreshed.
    pub(crate) fn reload(&mut self) -> Result<()> {
        self.state = self.dir.load()?;
        self.refresh();
        Ok(())
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.state.oci.id
    }

    /// The init's host pid.
    pub fn pid(&self) -> i32 {
        self.state.oci.pid
    }

    /// Current status.
    pub fn status(&self) -> Status {
        self.state.oci.status
    }

    /// The OCI state (with runc's extra fields); pid is 0 once stopped.
    pub fn state(&self) -> State {
        let mut s = self.state.oci.clone();
        if s.status == Status::Stopped {
            s.pid = 0;
        }
        s
    }

    /// Warnings from steps whose failure must not fail the operation (poststart and
    /// poststop hooks).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Releases the created init so it execs the user program; runs poststart hooks.
    pub fn start(&mut self) -> Result<()> {
        let _lock = self.dir.lock()?;
        self.reload()?;
        if self.status() != Status::Created {
            return Err(self.bad_status("start"));
        }
        let fifo_path = self.dir.path().join(EXEC_FIFO);
        let fd = match nix::fcntl::open(
            &fifo_path,
            OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENXIO) | Err(nix::Error::ENOENT) => {
                return Err(ContainerError::Init(
                    "the container process is not waiting for start (it exited)".into(),
                ))
            }
            Err(e) => return Err(ContainerError::Sys("open exec.fifo", e)),
        };
        sys("write exec.fifo", nix::unistd::write(&fd, &[0]))?;
        let _ = fs::remove_file(&fifo_path);
        // state.json is not rewritten: a created container without its fifo is running
        // (see `refresh`; runc tells them apart the same way). Saving here cost a rename
        // over the old file, which ext4 follows with a flush of the new one (up to ~5 ms
        // under load on this host, where /run is ext4).
        self.state.oci.status = Status::Running;
        // The init's close-on-exec read end is the fifo's only reader: POLLERR on our
        // write end means it has exec'd the user program (or died), so poststart hooks
        // really run after the program started, as the spec says.
        wait_no_readers(&fd);
        drop(fd);
        let spec = self.spec()?;
        let st = serde_json::to_string(&self.state.oci).unwrap_or_default();
        for e in integration::run_hooks_best_effort(
            spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()),
            &st,
        ) {
            self.warnings.push(format!("poststart hook: {e}"));
        }
        Ok(())
    }

    /// The spec the container was created from.
    pub fn spec(&self) -> Result<Spec> {
        let path = self.dir.path().join(CONFIG_FILE);
        let data = fs::read(&path).map_err(|source| ContainerError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        Ok(spec::parse(&data)?)
    }

    fn bad_status(&self, op: &'static str) -> ContainerError {
        ContainerError::BadStatus {
            op,
            id: self.id().to_string(),
            status: self.status(),
        }
    }

    /// A pidfd of the init, checked to still be our process.
    fn init_pidfd(&self) -> Result<OwnedFd> {
        let pid = self.pid();
        let fd = pidfd_open(pid).map_err(|_| self.bad_status_stopped())?;
        // The pidfd pins the process: re-check identity after opening it.
        if !state::is_alive(pid, self.state.init_start_time) {
            return Err(self.bad_status_stopped());
        }
        Ok(fd)
    }

    fn bad_status_stopped(&self) -> ContainerError {
        ContainerError::BadStatus {
            op: "signal",
            id: self.id().to_string(),
            status: Status::Stopped,
        }
    }

    /// Sends `signal` to the init, or with `all` to every process of the container.
    pub fn kill(&mut self, signal: Signal, all: bool) -> Result<()> {
        let _lock = self.dir.lock()?;
        self.reload()?;
        if self.status() == Status::Stopped {
            if all {
                // As runc: `kill --all` of a stopped container succeeds, signalling what
                // is left in its cgroup (processes that outlived an init without a pid
                // namespace). containerd's shim runs it before every forced delete.
                let cg = self
                    .state
                    .cgroup
                    .as_ref()
                    .and_then(integration::cgroup_from_json);
                for p in cg
                    .and_then(|cg| integration::cgroup_pids(&cg).ok())
                    .unwrap_or_default()
                {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p), signal);
                }
                return Ok(());
            }
            return Err(ContainerError::BadStatus {
                op: "signal",
                id: self.id().to_string(),
                status: Status::Stopped,
            });
        }
        if all {
            for p in self.processes()? {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), signal);
            }
            return Ok(());
        }
        let fd = self.init_pidfd()?;
        sys("kill", pidfd_send_signal(fd.as_raw_fd(), signal as i32))
    }

    /// Host pids of the container's processes: from the cgroup when there is one, else
    /// every process in the container's pid namespace (or, sharing the host's, the init
    /// and its descendants).
    pub fn processes(&self) -> Result<Vec<i32>> {
        if self.status() == Status::Stopped {
            return Ok(Vec::new());
        }
        if let Some(cg) = self
            .state
            .cgroup
            .as_ref()
            .and_then(integration::cgroup_from_json)
        {
            return Ok(integration::cgroup_pids(&cg)?);
        }
        let init = self.pid();
        let procs = proc_table();
        let mut out = Vec::new();
        if self.state.own_pid_ns {
            let ns = fs::metadata(format!("/proc/{init}/ns/pid")).map(|m| m.ino());
            if let Ok(ns) = ns {
                for (p, _) in &procs {
                    if fs::metadata(format!("/proc/{p}/ns/pid")).is_ok_and(|m| m.ino() == ns) {
                        out.push(*p);
                    }
                }
            }
        } else {
            out.push(init);
            let mut i = 0;
            while i < out.len() {
                let parent = out[i];
                out.extend(
                    procs
                        .iter()
                        .filter(|(_, pp)| *pp == parent)
                        .map(|(p, _)| *p),
                );
                i += 1;
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Deletes the container: refuses a running one unless `force` (which kills it);
    /// a created one is killed; runs poststop hooks, removes the cgroup and the state.
    pub fn delete(mut self, force: bool) -> Result<Vec<String>> {
        let _lock = self.dir.lock()?;
        self.reload()?;
        match self.status() {
            Status::Stopped => {}
            Status::Created | Status::Creating => self.kill_and_wait()?,
            Status::Running | Status::Paused if force => self.kill_and_wait()?,
            Status::Running | Status::Paused => return Err(self.bad_status("delete")),
        }
        let st = {
            let mut s = self.state.oci.clone();
            s.status = Status::Stopped;
            serde_json::to_string(&s).unwrap_or_default()
        };
        if let Ok(spec) = self.spec() {
            for e in integration::run_hooks_best_effort(
                spec.hooks().as_ref().and_then(|h| h.poststop().as_ref()),
                &st,
            ) {
                self.warnings.push(format!("poststop hook: {e}"));
            }
        }
        if let Some(cg) = self
            .state
            .cgroup
            .as_ref()
            .and_then(integration::cgroup_from_json)
        {
            integration::cgroup_destroy(&cg)?;
        }
        self.dir.remove()?;
        Ok(self.warnings)
    }

    /// SIGKILLs every process of the container and waits until the init is gone.
    fn kill_and_wait(&mut self) -> Result<()> {
        let pids = self.processes()?;
        let pidfd = self.init_pidfd().ok();
        if let Some(fd) = &pidfd {
            let _ = pidfd_send_signal(fd.as_raw_fd(), libc::SIGKILL);
        }
        for p in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        // Frozen processes only die once thawed (paused, or frozen by someone else).
        if let Some(cg) = self
            .state
            .cgroup
            .as_ref()
            .and_then(integration::cgroup_from_json)
        {
            if cg.is_frozen().unwrap_or(false) {
                let _ = cg.thaw();
            }
        }
        if let Some(fd) = pidfd {
            wait_pidfd_exit(&fd, Duration::from_secs(10));
        }
        self.state.oci.status = Status::Stopped;
        Ok(())
    }

    /// Starts `process` inside the running container (joining its namespaces) and returns
    /// its host pid once it is about to exec. The caller is its parent and may wait for it.
    pub fn exec(&self, process: &Process, opts: &ExecOptions) -> Result<i32> {
        match self.status() {
            Status::Running | Status::Created => {}
            _ => return Err(self.bad_status("exec in")),
        }
        if process.args().as_ref().map_or(true, |a| a.is_empty()) {
            return Err(ContainerError::Invalid("exec: no command given".into()));
        }
        if !process.cwd().is_absolute() {
            return Err(ContainerError::Invalid(format!(
                "exec: cwd {:?} must be absolute",
                process.cwd()
            )));
        }
        let spec = self.spec()?;
        integration::security_validate(process)?;
        let seccomp = integration::seccomp_compile(&spec)?;
        let terminal = process.terminal() == Some(true);
        let console = match (&opts.console_socket, terminal) {
            (Some(p), true) => Some(terminal::connect(p)?),
            (None, true) => {
                return Err(ContainerError::Invalid(
                    "exec with a terminal needs a --console-socket".into(),
                ))
            }
            _ => None,
        };
        let pidfd = self.init_pidfd()?;
        let init = self.pid();
        let mut ns_flags = CloneFlags::empty();
        for (name, flag) in [
            ("user", CloneFlags::CLONE_NEWUSER),
            ("mnt", CloneFlags::CLONE_NEWNS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
        ] {
            if ns_differs(init, name) {
                ns_flags |= flag;
            }
        }
        let pid_ns = if ns_differs(init, "pid") {
            Some(sys(
                "open the container's pid namespace",
                File::open(format!("/proc/{init}/ns/pid"))
                    .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            )?)
        } else {
            None
        };
        let joined_user =
            pid_ns.is_some() && crate::userns::join_user_ns_before_pid_ns(&pidfd, ns_flags)?;
        if joined_user {
            // We are in the container's user namespace now; the child inherits it.
            ns_flags.remove(CloneFlags::CLONE_NEWUSER);
        }
        let root = sys(
            "open the container's root",
            nix::fcntl::open(
                format!("/proc/{init}/root").as_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
        )?;
        let (parent_ch, child_ch) = sync::pair()?;
        let saved = enter_pid_ns_for_children(pid_ns.as_ref())?;
        // From the container's user namespace we may not go back to our pid namespace
        // (owned by the host's); this process forks nothing else, so it stays.
        let saved = saved.filter(|_| !joined_user);
        // As in `create`, host root joins the cgroup from the child (not from inside the
        // container's user namespace, where our cgroup writes could be refused).
        let cgroup = self
            .state
            .cgroup
            .as_ref()
            .and_then(integration::cgroup_from_json);
        let self_join = match &cgroup {
            Some(cg) if nix::unistd::geteuid().is_root() && !joined_user => {
                Some(integration::cgroup_self_join(cg)?)
            }
            _ => None,
        };
        let (forked, born_in_v2) = clone_child(CloneFlags::empty(), self_join.as_ref());
        if forked != Ok(Forked::Child) {
            restore_pid_ns_for_children(saved)?;
        }
        let pid = match sys("clone exec process", forked)? {
            Forked::Child => {
                drop(parent_ch);
                child::run(&Setup {
                    spec: &spec,
                    process,
                    rootfs: &self.state.oci.rootfs,
                    state: &self.state.oci,
                    channel: &child_ch,
                    console: console.as_ref().map(|c| c.as_raw_fd()),
                    seccomp: seccomp.as_ref(),
                    preserve_fds: opts.preserve_fds,
                    role: Role::Exec {
                        pidfd: &pidfd,
                        ns_flags,
                        root: &root,
                    },
                    self_join: self_join.as_ref(),
                })
            }
            Forked::Parent(pid) => pid,
        };
        drop(child_ch);
        drop(console);
        let reap = |e: ContainerError| {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            e
        };
        let run = || -> Result<()> {
            match (&cgroup, &self_join) {
                (Some(cg), Some(sj)) => finish_self_join(cg, sj, born_in_v2, pid)?,
                (Some(cg), None) => integration::cgroup_join(cg, pid)?,
                (None, _) => {}
            }
            send_to_init(&parent_ch, &Msg::Go(pid))?;
            send_to_init(&parent_ch, &Msg::CgroupJoined)?;
            wait_ready(&parent_ch, &spec, &self.state.oci)?;
            if let Some(pf) = &opts.pid_file {
                write_pid_file(pf, pid)?;
            }
            Ok(())
        };
        run().map_err(reap)?;
        Ok(pid)
    }
}

/// Whether `/proc/<pid>/ns/<name>` is another namespace than ours.
fn ns_differs(pid: i32, name: &str) -> bool {
    let theirs = fs::metadata(format!("/proc/{pid}/ns/{name}"));
    let ours = fs::metadata(format!("/proc/self/ns/{name}"));
    match (theirs, ours) {
        (Ok(t), Ok(o)) => t.ino() != o.ino() || t.dev() != o.dev(),
        _ => false,
    }
}

/// Enters `ns` for our future children; returns our previous one to restore.
fn enter_pid_ns_for_children(ns: Option<&File>) -> Result<Option<File>> {
    let Some(ns) = ns else { return Ok(None) };
    let saved =
        File::open("/proc/self/ns/pid_for_children").map_err(|source| ContainerError::Io {
            op: "open",
            path: "/proc/self/ns/pid_for_children".into(),
            source,
        })?;
    sys(
        "join the pid namespace",
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWPID),
    )?;
    Ok(Some(saved))
}

fn restore_pid_ns_for_children(saved: Option<File>) -> Result<()> {
    if let Some(s) = saved {
        sys(
            "restore our pid namespace",
            nix::sched::setns(s.as_fd(), CloneFlags::CLONE_NEWPID),
        )?;
    }
    Ok(())
}

fn expect_from_child(ch: &Channel, want: Msg) -> Result<()> {
    match ch.recv() {
        Ok((m, _)) if m == want => Ok(()),
        Ok((Msg::Error(e), _)) => Err(ContainerError::Init(e)),
        Ok((m, _)) => Err(SyncError::Unexpected(format!("{m:?}")).into()),
        Err(SyncError::Closed) => Err(ContainerError::Init(
            "exited during setup without a message".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Clones the init or an exec'd process, straight into the cgroup2 cgroup of `sj` when
/// it has one (`clone3`), else or on a kernel without `CLONE_INTO_CGROUP` with a plain
/// clone. Also returns whether the child was born in that cgroup.
fn clone_child(
    flags: CloneFlags,
    sj: Option<&integration::CgroupSelfJoin>,
) -> (nix::Result<Forked>, bool) {
    match sj.and_then(|s| s.v2_dir()) {
        Some(dir) => match clone_into_cgroup(flags, dir) {
            Err(nix::Error::ENOSYS | nix::Error::E2BIG | nix::Error::EINVAL) => {
                (clone(flags), false)
            }
            r => {
                let born = r.is_ok();
                (r, born)
            }
        },
        None => (clone(flags), false),
    }
}

/// The parent's part of a self-join: the cgroup2 move when the clone could not do it.
fn finish_self_join(
    cg: &Cgroup,
    sj: &integration::CgroupSelfJoin,
    born_in_v2: bool,
    pid: i32,
) -> Result<()> {
    if sj.v2_dir().is_some() && !born_in_v2 {
        integration::cgroup_join_v2(cg, pid)?;
    }
    Ok(())
}

/// Sends `msg` to a child that may already have failed: its error message, queued before it
/// exited, is then the error to report rather than the broken pipe.
fn send_to_init(ch: &Channel, msg: &Msg) -> Result<()> {
    match ch.send(msg) {
        Ok(()) => Ok(()),
        Err(e) => match ch.recv() {
            Ok((Msg::Error(m), _)) => Err(ContainerError::Init(m)),
            _ => Err(e.into()),
        },
    }
}

/// `e`, or the error the child `pid` reported if it has already exited (its message is
/// queued on `ch`; an exited child is left to be reaped by the caller's cleanup).
fn init_error_or(ch: &Channel, pid: i32, e: ContainerError) -> ContainerError {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
        Ok(WaitStatus::StillAlive) | Err(_) => e,
        Ok(_) => match ch.recv() {
            Ok((Msg::Error(m), _)) => ContainerError::Init(m),
            _ => e,
        },
    }
}

/// Waits for `Ready`, forwarding a seccomp listener fd on the way.
fn wait_ready(ch: &Channel, spec: &Spec, state: &State) -> Result<()> {
    loop {
        match ch.recv() {
            Ok((Msg::Ready, _)) => return Ok(()),
            Ok((Msg::SeccompListener, Some(fd))) => send_seccomp_listener(spec, state, fd)?,
            Ok((Msg::Error(e), _)) => return Err(ContainerError::Init(e)),
            Ok((m, _)) => return Err(SyncError::Unexpected(format!("{m:?}")).into()),
            Err(SyncError::Closed) => {
                return Err(ContainerError::Init(
                    "exited during setup without a message".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends the seccomp notify fd to `linux.seccomp.listenerPath` with the container state
/// (the OCI "container process state") as payload.
fn send_seccomp_listener(spec: &Spec, state: &State, fd: OwnedFd) -> Result<()> {
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .and_then(|s| s.listener_path().clone())
    else {
        return Ok(());
    };
    let sock =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| ContainerError::Io {
            op: "connect seccomp listener",
            path: path.clone(),
            source,
        })?;
    let payload = serde_json::json!({
        "ociVersion": state.oci_version,
        "fds": ["seccompFd"],
        "pid": state.pid,
        "metadata": spec.linux().as_ref().and_then(|l| l.seccomp().as_ref())
            .and_then(|s| s.listener_metadata().clone()).unwrap_or_default(),
        "state": state,
    });
    sync::send_fd_raw(
        sock.as_raw_fd(),
        payload.to_string().as_bytes(),
        Some(fd.as_raw_fd()),
    )?;
    Ok(())
}

pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    Ok(state::write_atomic(
        path,
        pid.to_string().as_bytes(),
        0o644,
    )?)
}

/// (pid, ppid) of every process.
fn proc_table() -> Vec<(i32, i32)> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid = rest.split_ascii_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect()
}

/// Blocks until a fifo's write end reports that no reader is left.
fn wait_no_readers(fd: &OwnedFd) {
    loop {
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::empty(),
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Ok(_) | Err(_) => return,
        }
    }
}

/// Polls a pidfd until the process exits (or `limit` passes).
fn wait_pidfd_exit(fd: &OwnedFd, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return,
            Ok(_) => return,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return,
        }
    }
}
