//! Foreground waiting with signal forwarding (`vessel run` / `vessel exec` without
//! `--detach`).
//!
//! The caller blocks the forwarded signals *before* creating the process
//! ([`block_signals`]): they queue instead of killing the runtime, and the container
//! process unblocks them before its `execve`. [`wait_forwarding`] then takes them one
//! by one with `sigwait`, forwards each to the process, and reaps it on `SIGCHLD`.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Errors of waiting.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// A syscall failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] nix::Error),
}

/// Signals a foreground runtime forwards to its container process.
pub fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in Signal::iterator() {
        if !matches!(
            s,
            Signal::SIGKILL
                | Signal::SIGSTOP
                | Signal::SIGSEGV
                | Signal::SIGBUS
                | Signal::SIGILL
                | Signal::SIGFPE
                | Signal::SIGTRAP
                | Signal::SIGABRT
                | Signal::SIGSYS
        ) {
            set.add(s);
        }
    }
    set
}

/// Blocks the forwarded signals (and SIGCHLD) in the calling thread.
pub fn block_signals() -> Result<SigSet, WaitError> {
    let set = forwarded();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| WaitError::Sys("sigprocmask", e))?;
    Ok(set)
}

/// Exit code of a wait status, shell style (128 + signal when killed).
pub fn exit_code(st: WaitStatus) -> Option<i32> {
    match st {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// Forwards signals in `set` to `pid` until it exits; returns its exit code. Other
/// children of ours that exit meanwhile are reaped too.
pub fn wait_forwarding(pid: i32, set: &SigSet) -> Result<i32, WaitError> {
    let target = Pid::from_raw(pid);
    loop {
        // Reap first: the child may have exited before we started waiting.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(st) => {
                    if st.pid() == Some(target) {
                        if let Some(code) = exit_code(st) {
                            return Ok(code);
                        }
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECHILD) => {
                    return Err(WaitError::Sys(
                        "wait for the container process",
                        nix::Error::ECHILD,
                    ))
                }
                Err(e) => return Err(WaitError::Sys("waitpid", e)),
            }
        }
        let sig = set.wait().map_err(|e| WaitError::Sys("sigwait", e))?;
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(target, sig);
        }
    }
}
