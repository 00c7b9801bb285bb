//! What the cloned child does, from the clone to the `execve` of the user program.
//!
//! Order (runc's, adapted to one clone; "P:" marks what the parent does meanwhile):
//! 1. parent-death signal SIGKILL, so a dying `vessel create` takes its half-made init
//!    along; wait for `Go` (P: uid/gid maps written);
//! 2. in a new user namespace become its root; join namespaces by path (user first),
//!    unshare the rest but the cgroup namespace, unshare the time namespace and write
//!    its offsets;
//! 3. if the spec has prestart/createRuntime hooks: pass the cgroup gate (below), then
//!    `NamespacesReady`, wait for `HooksDone` (P: runs them in the runtime namespace);
//! 4. hostname, domainname; createContainer hooks (after the gate); new session keyring;
//! 5. rootfs (mounts, devices, pivot_root, sysctl, masked/readonly paths); the gate is
//!    passed before the first `cgroup` mount;
//!
//! The cgroup gate: as host root, the init joins its cgroups itself (born in the v2 one by
//! `clone3`, moving itself into the v1 ones, see `cgroups::SelfJoin`; the parent set the
//! limits before the clone); otherwise the parent moves it. Either way it then waits for
//! `CgroupJoined` and unshares the cgroup namespace if asked, so that namespace's root is
//! the container's cgroup. When the parent moves the init, steps 1–5 up to the gate
//! overlap with that move, whose first migration waits for an RCU grace period (4–17 ms
//! here); every path passes the gate before `Ready`.
//! 6. terminal (pty from the container's devpts, slave on /dev/console, master sent
//!    over the console socket); cwd;
//! 7. as root: rlimits, oom score, io priority, scheduler, personality;
//!    `no_new_privs`; seccomp now if it needs CAP_SYS_ADMIN (no `noNewPrivileges`);
//! 8. keepcaps, setgroups/setgid/setuid/umask, capabilities; seccomp now otherwise (as
//!    late as possible, so the filter need not allow the setup syscalls); the notify
//!    listener fd goes to the parent;
//! 9. resolve the program in the container's `PATH` (so "not found" fails `create`),
//!    clear the parent-death signal, `Ready` (P: saves the state and returns);
//! 10. init only: block on `exec.fifo` until `start`, then startContainer hooks;
//! 11. mark fds ≥ 3+preserve close-on-exec, restore signal mask and SIGPIPE, `execve`.
//!
//! Any error is sent to the parent as `Error(message)` and the child `_exit`s.

use std::convert::Infallible;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Process, Spec};

use super::clone::{
    cloexec_from, exit_child, join_session_keyring, set_no_new_privs, set_pdeathsig,
};
use super::ExecError;
use crate::integration::{self, IntegrationError, RootfsOptions, SeccompFilter};
use crate::namespaces::{self, Join, NamespaceError, NamespacePlan};
use crate::state::{State, Status};
use crate::sync::{Channel, Msg, SyncError};
use crate::terminal::{self, TerminalError};

/// Errors inside the child; sent to the parent as text.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// Talking to the parent failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// Namespace setup failed.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// A sibling module (rootfs, security, hooks) failed.
    #[error(transparent)]
    Setup(#[from] IntegrationError),
    /// Terminal setup failed.
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    /// Preparing or doing the `execve` failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A syscall failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] nix::Error),
    /// Some other step failed.
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, ChildError>;

fn sys<T>(what: &'static str, r: nix::Result<T>) -> Result<T> {
    r.map_err(|e| ChildError::Sys(what, e))
}

/// What kind of child this is.
#[derive(Debug)]
pub enum Role<'a> {
    /// The container's init.
    Init {
        /// The namespace plan.
        plan: &'a NamespacePlan,
        /// Opened namespaces to join.
        joins: &'a [(Join, File)],
        /// The exec fifo, opened read-write (so reads block until `start` writes).
        fifo: OwnedFd,
        /// Whether to join a new session keyring.
        new_keyring: bool,
        /// Whether the parent runs prestart/createRuntime hooks (one more handshake).
        runtime_hooks: bool,
        /// Rootfs setup options.
        rootfs_opts: RootfsOptions,
        /// Id-mapped trees the parent prepared (see [`crate::idmount`]).
        idmapped: &'a crate::idmount::IdmappedTrees,
    },
    /// A process started in a running container.
    Exec {
        /// pidfd of the container's init (namespaces are joined through it).
        pidfd: &'a OwnedFd,
        /// Namespaces to join (those that differ from the caller's).
        ns_flags: CloneFlags,
        /// The init's root directory (`/proc/<pid>/root`, opened by the parent).
        root: &'a OwnedFd,
    },
}

/// Everything the child needs; it lives in the parent's memory, copied by the clone.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The container spec.
    pub spec: &'a Spec,
    /// The process to run (the spec's, or the exec'd one).
    pub process: &'a Process,
    /// Absolute rootfs path.
    pub rootfs: &'a Path,
    /// State template for hooks (pid and status are filled in).
    pub state: &'a State,
    /// Channel to the parent.
    pub channel: &'a Channel,
    /// Console socket (connected) when the process has a terminal.
    pub console: Option<RawFd>,
    /// Compiled seccomp filter.
    pub seccomp: Option<&'a SeccompFilter>,
    /// Number of fds after stdio to pass to the program.
    pub preserve_fds: u32,
    /// Init or exec.
    pub role: Role<'a>,
    /// Handles to join the container's cgroups itself at the cgroup gate (else the parent
    /// moves the child and the gate only waits for its word).
    pub self_join: Option<&'a integration::CgroupSelfJoin>,
}

/// Runs the child's setup and execs; never returns.
pub fn run(setup: &Setup<'_>) -> ! {
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(setup)));
    let msg = match res {
        Ok(Ok(never)) => match never {},
        // The parent gave up on us (its own error is what the user sees): leave quietly.
        Ok(Err(ChildError::Sync(SyncError::Closed))) => exit_child(127),
        Ok(Err(e)) => error_chain(&e),
        Err(_) => "container process setup panicked".to_string(),
    };
    if setup.channel.send(&Msg::Error(msg.clone())).is_err() {
        // The parent is gone (after `Ready`): stderr is all we have.
        eprintln!("vessel: {msg}");
    }
    exit_child(127)
}

/// Formats an error and its sources as "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

fn hook_state(setup: &Setup<'_>, pid: i32, status: Status) -> String {
    let mut st = setup.state.clone();
    st.pid = pid;
    st.status = status;
    serde_json::to_string(&st).unwrap_or_default()
}

/// Passed once: joins the cgroups itself when it has the handles, waits for the parent's
/// `CgroupJoined`, then unshares the cgroup namespace if the spec asks for a new one (see
/// the module docs).
struct CgroupGate<'a> {
    channel: &'a Channel,
    self_join: Option<&'a integration::CgroupSelfJoin>,
    unshare_cgroupns: bool,
    passed: std::cell::Cell<bool>,
}

impl CgroupGate<'_> {
    fn pass(&self) -> Result<()> {
        if self.passed.get() {
            return Ok(());
        }
        if let Some(sj) = self.self_join {
            integration::cgroup_join_current(sj)?;
        }
        self.channel.expect(&Msg::CgroupJoined)?;
        if self.unshare_cgroupns {
            sys(
                "unshare cgroup namespace",
                nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP),
            )?;
        }
        self.passed.set(true);
        Ok(())
    }
}

fn body(setup: &Setup<'_>) -> Result<Infallible> {
    sys("set parent-death signal", set_pdeathsig(libc::SIGKILL))?;
    let host_pid = match setup.channel.recv()?.0 {
        Msg::Go(pid) => pid,
        m => return Err(SyncError::Unexpected(format!("{m:?}")).into()),
    };
    let cgroupns = match &setup.role {
        Role::Init { plan, .. } => plan.unshare_flags.contains(CloneFlags::CLONE_NEWCGROUP),
        Role::Exec { .. } => false,
    };
    let gate = CgroupGate {
        channel: setup.channel,
        self_join: setup.self_join,
        unshare_cgroupns: cgroupns,
        passed: std::cell::Cell::new(false),
    };
    let spec = setup.spec;
    let process = setup.process;
    match &setup.role {
        Role::Init {
            plan,
            joins,
            new_keyring,
            runtime_hooks,
            rootfs_opts,
            idmapped,
            ..
        } => {
            if plan.new_user {
                sys(
                    "setresgid 0 in the user namespace",
                    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)),
                )?;
                sys(
                    "setresuid 0 in the user namespace",
                    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)),
                )?;
            }
            namespaces::enter(joins, plan.unshare_flags - CloneFlags::CLONE_NEWCGROUP)?;
            // The init leads a session of its own, as runc's does (the terminal setup
            // makes one itself): CRIU dumps only trees whose session is inside them.
            if process.terminal() != Some(true) {
                sys("setsid", nix::unistd::setsid().map(drop))?;
            }
            if plan.new_time {
                sys(
                    "unshare time namespace",
                    nix::sched::unshare(namespaces::clone_flag(
                        oci_spec::runtime::LinuxNamespaceType::Time,
                    )),
                )?;
                namespaces::write_time_offsets(spec)?;
            }
            if *runtime_hooks {
                gate.pass()?;
                setup.channel.send(&Msg::NamespacesReady)?;
                setup.channel.expect(&Msg::HooksDone)?;
            }
            if let Some(h) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
                sys("sethostname", nix::unistd::sethostname(h))?;
            }
            if let Some(d) = spec.domainname().as_ref().filter(|h| !h.is_empty()) {
                set_domainname(d)?;
            }
            let hooks = spec.hooks().as_ref();
            let create_container = hooks.and_then(|h| h.create_container().as_ref());
            if create_container.is_some_and(|v| !v.is_empty()) {
                gate.pass()?;
            }
            integration::run_hooks(
                create_container,
                &hook_state(setup, host_pid, Status::Creating),
            )?;
            if *new_keyring {
                sys(
                    "join session keyring",
                    join_session_keyring(&format!("_ses.{}", setup.state.id)),
                )?;
            }
            // Relative bind-mount sources are relative to the bundle.
            sys(
                "chdir to the bundle",
                nix::unistd::chdir(&setup.state.bundle),
            )?;
            let cgroup_gate = || gate.pass().map_err(|e| error_chain(&e));
            integration::rootfs_prepare(spec, setup.rootfs, *rootfs_opts, idmapped, &cgroup_gate)?;
            gate.pass()?;
        }
        Role::Exec {
            pidfd,
            ns_flags,
            root,
        } => {
            gate.pass()?;
            if !ns_flags.is_empty() {
                sys(
                    "setns into the container",
                    nix::sched::setns(pidfd.as_fd(), *ns_flags),
                )?;
            }
            // Entering a mount namespace puts us at its root, which is not the
            // container's root when it was set up with chroot: take the init's root.
            sys(
                "fchdir to the container root",
                nix::unistd::fchdir(root.as_fd()),
            )?;
            sys("chroot into the container root", nix::unistd::chroot("."))?;
            sys("chdir /", nix::unistd::chdir("/"))?;
        }
    }
    if process.terminal() == Some(true) {
        let sock = setup
            .console
            .ok_or_else(|| ChildError::Other("process.terminal needs a console socket".into()))?;
        let size = process.console_size().as_ref().map(|b| terminal::Size {
            rows: b.height() as u16,
            cols: b.width() as u16,
        });
        terminal::setup(sock, matches!(setup.role, Role::Init { .. }), size)?;
    }
    let cwd = process.cwd();
    let early_cwd = nix::unistd::chdir(cwd);
    integration::process_attrs_as_root(spec, process)?;
    let nnp = process.no_new_privileges() == Some(true);
    if nnp {
        sys("set no_new_privs", set_no_new_privs())?;
    }
    let mut listener = None;
    if let (Some(f), false) = (setup.seccomp, nnp) {
        listener = integration::seccomp_install(f)?;
    }
    integration::user_and_caps(process)?;
    if early_cwd.is_err() {
        // Maybe only the user may enter it (root squashing on NFS, …): retry as the user.
        sys("chdir to process.cwd", nix::unistd::chdir(cwd))?;
    }
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let prog = super::resolve(args.first().map(String::as_str).unwrap_or(""), &env)?;
    let c_prog = super::cstrings(&[prog.to_string_lossy().into_owned()])?;
    let c_args = super::cstrings(&args)?;
    let c_env = super::cstrings(&env)?;
    if let (Some(f), true) = (setup.seccomp, nnp) {
        listener = integration::seccomp_install(f)?;
    }
    if let Some(fd) = listener {
        setup
            .channel
            .send_with_fd(&Msg::SeccompListener, fd.as_raw_fd())?;
    }
    sys("clear parent-death signal", set_pdeathsig(0))?;
    setup.channel.send(&Msg::Ready)?;
    if let Role::Init { fifo, .. } = &setup.role {
        wait_for_start(fifo)?;
        let hooks = spec.hooks().as_ref();
        integration::run_hooks(
            hooks.and_then(|h| h.start_container().as_ref()),
            &hook_state(setup, host_pid, Status::Created),
        )?;
    }
    sys("close-on-exec fds", cloexec_from(3 + setup.preserve_fds))?;
    restore_signals()?;
    let e = nix::unistd::execve(&c_prog[0], &c_args, &c_env).unwrap_err();
    Err(ExecError::Exec {
        path: prog,
        source: e,
    }
    .into())
}

/// Blocks until `start` writes to the exec fifo.
fn wait_for_start(fifo: &OwnedFd) -> Result<()> {
    let mut f = File::from(
        fifo.try_clone()
            .map_err(|e| ChildError::Other(format!("dup exec fifo: {e}")))?,
    );
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ChildError::Other(format!("read exec fifo: {e}"))),
        }
    }
}

/// Unblocks all signals and resets SIGPIPE (Rust's runtime ignores it, and ignored
/// dispositions survive `execve`).
fn restore_signals() -> Result<()> {
    sys(
        "sigprocmask",
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None),
    )?;
    // SAFETY: installing the default disposition runs no handler code.
    sys("reset SIGPIPE", unsafe {
        nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl)
    })?;
    Ok(())
}

/// `setdomainname(2)` (not in nix).
fn set_domainname(name: &str) -> Result<()> {
    // SAFETY: the kernel reads `len` bytes from a buffer we own.
    let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if r < 0 {
        return Err(ChildError::Sys("setdomainname", nix::Error::last()));
    }
    Ok(())
}
