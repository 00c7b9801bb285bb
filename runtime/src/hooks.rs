//! OCI lifecycle hooks (`hooks.*`): run each hook with the container state on stdin.
//!
//! * `path` is executed with `args` (`args[0]` is `argv[0]`; without args `argv[0]` is the
//!   path). With `env` the hook gets exactly that environment; without it the hook inherits
//!   the runtime's environment (as runc does).
//! * The state JSON is written to the hook's stdin, which is then closed. A hook that does
//!   not read it is fine: the write fails with `EPIPE`, which relies on SIGPIPE being
//!   ignored, as the Rust runtime arranges in every Rust binary.
//! * `timeout` (seconds, > 0) kills the hook's whole process group with SIGKILL when it
//!   expires and fails with [`HookError::Timeout`].
//! * A non-zero exit or a death by signal fails with [`HookError::Failed`], naming the
//!   path, the status and the tail of the hook's stderr (and stdout).
//!
//! One thread does everything: a poll(2) loop over a pidfd of the hook, its stdout, stderr
//! and stdin. When the hook exits the pipes are drained without blocking, so a daemon the
//! hook left behind holding them open cannot hang the runtime.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use oci_spec::runtime::Hook;

/// How much of the hook's stderr/stdout is kept for the error message.
const TAIL_BYTES: usize = 2048;

/// Errors of running a hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook's configuration is invalid.
    #[error("hook {path}: {reason}")]
    Invalid {
        /// The hook path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The hook could not be started.
    #[error("hook {path}: cannot start: {source}")]
    Spawn {
        /// The hook path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for or talking to the hook failed.
    #[error("hook {path}: {what}: {source}")]
    Io {
        /// The hook path.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The hook ran past its timeout and was killed.
    #[error("hook {path} timed out after {timeout}s and was killed{}", tail_suffix(.stderr, .stdout))]
    Timeout {
        /// The hook path.
        path: PathBuf,
        /// The timeout in seconds.
        timeout: i64,
        /// Tail of its stderr.
        stderr: String,
        /// Tail of its stdout.
        stdout: String,
    },
    /// The hook exited non-zero or was killed by a signal.
    #[error("hook {path} failed: {status}{}", tail_suffix(.stderr, .stdout))]
    Failed {
        /// The hook path.
        path: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// Tail of its stderr.
        stderr: String,
        /// Tail of its stdout.
        stdout: String,
    },
}

fn tail_suffix(stderr: &str, stdout: &str) -> String {
    let mut s = String::new();
    if !stderr.trim().is_empty() {
        s.push_str(&format!("; stderr: {}", stderr.trim_end()));
    }
    if !stdout.trim().is_empty() {
        s.push_str(&format!("; stdout: {}", stdout.trim_end()));
    }
    s
}

impl HookError {
    /// The exit status for [`HookError::Failed`].
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            HookError::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Runs the hooks in order and stops at the first failure (for prestart, createRuntime,
/// createContainer and startContainer hooks, whose failure fails the operation).
pub fn run(hooks: &[Hook], state_json: &str) -> Result<(), HookError> {
    hooks.iter().try_for_each(|h| run_one(h, state_json))
}

/// Runs every hook in order even if some fail, and returns the failures (for poststart and
/// poststop hooks, whose failure the spec says to log only).
pub fn run_best_effort(hooks: &[Hook], state_json: &str) -> Vec<HookError> {
    hooks
        .iter()
        .filter_map(|h| run_one(h, state_json).err())
        .collect()
}

/// Keeps the last `TAIL_BYTES` of a stream.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        if self.0.len() > TAIL_BYTES {
            let cut = self.0.len() - TAIL_BYTES;
            self.0.drain(..cut);
        }
    }

    fn into_string(self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// Reads what is available from a non-blocking pipe. Returns false at EOF or on error.
fn pump<R: Read>(r: &mut R, tail: &mut Tail) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn set_nonblocking<F: AsFd>(f: &F) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(f.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(f.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created by the kernel for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Builds the command for a hook after validating it.
fn command(hook: &Hook) -> Result<Command, HookError> {
    let path = hook.path();
    let invalid = |reason: String| HookError::Invalid {
        path: path.clone(),
        reason,
    };
    if !path.is_absolute() {
        return Err(invalid("path must be absolute".into()));
    }
    if let Some(t) = hook.timeout() {
        if t <= 0 {
            return Err(invalid(format!(
                "timeout must be greater than zero, got {t}"
            )));
        }
    }
    let mut cmd = Command::new(path);
    if let Some((argv0, rest)) = hook.args().as_deref().and_then(|a| a.split_first()) {
        cmd.arg0(argv0).args(rest);
    }
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for kv in env {
            let (k, v) = kv
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| invalid(format!("env entry {kv:?} is not KEY=VALUE")))?;
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    Ok(cmd)
}

/// Runs one hook (see the module docs).
pub fn run_one(hook: &Hook, state_json: &str) -> Result<(), HookError> {
    let path = hook.path().clone();
    let mut cmd = command(hook)?;
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        path: path.clone(),
        source,
    })?;
    let io_err = |what: &'static str| {
        let path = path.clone();
        move |source: std::io::Error| HookError::Io { path, what, source }
    };

    // From here on the child must not be left running if something fails.
    let result = (|| {
        let pidfd = pidfd_open(child.id()).map_err(io_err("pidfd_open"))?;
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        for fd in [
            stdin.as_ref().map(|f| f.as_fd()),
            stdout.as_ref().map(|f| f.as_fd()),
            stderr.as_ref().map(|f| f.as_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(&fd).map_err(|e| io_err("fcntl")(e.into()))?;
        }
        // A timeout too large to represent is no timeout.
        let deadline = hook
            .timeout()
            .and_then(|t| Instant::now().checked_add(Duration::from_secs(t as u64)));
        let input = state_json.as_bytes();
        let mut written = 0usize;
        let (mut out, mut err) = (Tail::default(), Tail::default());
        if input.is_empty() {
            stdin = None;
        }

        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so we never spin on a sub-millisecond remainder.
                    let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128);
                    PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
                }
            };
            let (ready_pid, ready_in, ready_out, ready_err) = {
                let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                let mut slot = [None; 3];
                if let Some(f) = &stdin {
                    slot[0] = Some(fds.len());
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
                }
                if let Some(f) = &stdout {
                    slot[1] = Some(fds.len());
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                }
                if let Some(f) = &stderr {
                    slot[2] = Some(fds.len());
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(io_err("poll")(e.into())),
                }
                let ready = |i: Option<usize>| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (
                    ready(Some(0)),
                    ready(slot[0]),
                    ready(slot[1]),
                    ready(slot[2]),
                )
            };

            if ready_in {
                if let Some(f) = stdin.as_mut() {
                    match f.write(&input[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // EPIPE: the hook does not read its stdin, which is its right.
                        Err(_) => written = input.len(),
                    }
                    if written >= input.len() {
                        stdin = None;
                    }
                }
            }
            if ready_out && stdout.as_mut().is_some_and(|f| !pump(f, &mut out)) {
                stdout = None;
            }
            if ready_err && stderr.as_mut().is_some_and(|f| !pump(f, &mut err)) {
                stderr = None;
            }
            if ready_pid {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // SAFETY: kill takes integers; the hook leads its own process group, so
                // -pid reaches it and anything it started.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                if let Some(f) = stdout.as_mut() {
                    pump(f, &mut out);
                }
                if let Some(f) = stderr.as_mut() {
                    pump(f, &mut err);
                }
                return Err(HookError::Timeout {
                    path: path.clone(),
                    timeout: hook.timeout().unwrap_or(0),
                    stderr: err.into_string(),
                    stdout: out.into_string(),
                });
            }
        }
        drop(stdin);
        // The hook has exited: take what is already in the pipes, without waiting for
        // writers it may have left behind.
        if let Some(f) = stdout.as_mut() {
            pump(f, &mut out);
        }
        if let Some(f) = stderr.as_mut() {
            pump(f, &mut err);
        }
        let status = child.wait().map_err(io_err("wait"))?;
        if status.success() {
            return Ok(());
        }
        Err(HookError::Failed {
            path: path.clone(),
            status,
            stderr: err.into_string(),
            stdout: out.into_string(),
        })
    })();

    if result.is_err() && child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// True if the hook was killed by `signal` (for callers that log).
pub fn killed_by(status: &ExitStatus, signal: i32) -> bool {
    status.signal() == Some(signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: serde_json::Value) -> Hook {
        serde_json::from_value(json).unwrap()
    }

    const STATE: &str =
        r#"{"ociVersion":"1.2.0","id":"c1","status":"creating","pid":1,"bundle":"/b"}"#;

    #[test]
    fn state_on_stdin_args_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            // With `sh -c`, $0 is the first argument after the script; argv[0] itself
            // is visible in /proc/$$/cmdline.
            "args": ["my-hook", "-c", "cat > \"$0\"; echo \"$1 $FOO ${HOME:-nohome}\" >> \"$0\"; head -c 8 /proc/$$/cmdline | tr '\\0' '|' >> \"$0\"", out, "two"],
            "env": ["FOO=bar=baz"],
        }));
        run(&[h], STATE).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(got, format!("{STATE}two bar=baz nohome\nmy-hook|"));
    }

    #[test]
    fn without_env_the_environment_is_inherited() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["/bin/sh", "-c", "echo \"${PATH:+has-path}\" > \"$0\"", out],
        }));
        run(&[h], STATE).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "has-path\n");
    }

    #[test]
    fn timeout_kills_the_hook_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", "echo started >&2; sleep 600 & echo $! > \"$0\"; wait", pidfile],
            "timeout": 2,
        }));
        let e = run(&[h], STATE).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, HookError::Timeout { timeout: 2, .. }), "{msg}");
        assert!(
            msg.contains("/bin/sh") && msg.contains("timed out after 2s"),
            "{msg}"
        );
        // On a machine so loaded that the shell did not get to start its background sleep
        // within the timeout there is nothing more to check.
        let pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
        let Ok(pid) = pid.trim().parse::<i32>() else {
            println!("note: the hook did not start its child before the timeout");
            return;
        };
        assert!(msg.contains("started"), "stderr tail missing: {msg}");
        // The background sleep was in the hook's process group and got SIGKILL too. It is
        // reparented to init (or a subreaper); it counts as gone once it is a zombie.
        let gone = (0..500).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        });
        assert!(gone, "background sleep {pid} survived the hook's timeout");
    }

    #[test]
    fn failing_hook_reports_status_and_stderr() {
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", "echo 'something broke' >&2; exit 3"],
        }));
        let e = run(&[h], STATE).unwrap_err();
        assert_eq!(e.status().and_then(|s| s.code()), Some(3));
        let msg = e.to_string();
        assert!(
            msg.contains("/bin/sh") && msg.contains("3") && msg.contains("something broke"),
            "{msg}"
        );
    }

    #[test]
    fn killed_hook_reports_the_signal() {
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", "kill -TERM $$"],
        }));
        let e = run(&[h], STATE).unwrap_err();
        assert!(killed_by(&e.status().unwrap(), libc::SIGTERM), "{e}");
    }

    #[test]
    fn run_stops_at_first_failure_best_effort_runs_all() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let fail = hook(serde_json::json!({"path": "/bin/false"}));
        let touch = hook(serde_json::json!({"path": "/usr/bin/touch", "args": ["touch", marker]}));
        let hooks = [fail.clone(), touch.clone(), fail];
        assert!(run(&hooks, STATE).is_err());
        assert!(!marker.exists());
        let errors = run_best_effort(&hooks, STATE);
        assert_eq!(errors.len(), 2);
        assert!(marker.exists());
    }

    #[test]
    fn hook_that_ignores_stdin_and_leaves_a_daemon_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The daemon keeps stdout open; the hook itself exits at once.
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", "sleep 30 & echo $! > \"$0\"", pidfile],
        }));
        let big_state = "x".repeat(1 << 20);
        run(&[h], &big_state).unwrap();
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: signalling the sleep this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    #[test]
    fn huge_timeout_is_no_timeout() {
        let h = hook(serde_json::json!({"path": "/bin/true", "timeout": i64::MAX}));
        run_one(&h, STATE).unwrap();
    }

    #[test]
    fn bad_hooks() {
        let e = run_one(&hook(serde_json::json!({"path": "bin/true"})), STATE).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = run_one(
            &hook(serde_json::json!({"path": "/bin/true", "timeout": 0})),
            STATE,
        )
        .unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
        let e = run_one(
            &hook(serde_json::json!({"path": "/bin/true", "env": ["NOEQUALS"]})),
            STATE,
        )
        .unwrap_err();
        assert!(e.to_string().contains("NOEQUALS"), "{e}");
        let e = run_one(
            &hook(serde_json::json!({"path": "/nonexistent/hook"})),
            STATE,
        )
        .unwrap_err();
        assert!(
            matches!(e, HookError::Spawn { .. }) && e.to_string().contains("/nonexistent/hook"),
            "{e}"
        );
    }
}
