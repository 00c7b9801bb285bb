//! Foreground waiting with signal forwarding (`vessel run` / `vessel exec` without
//! `--detach`).
//!
//! The caller blocks the forwarded signals *before* creating the process
//! ([`block_signals`]): they queue instead of killing the runtime, and the container
//! process unblocks them before its `execve`. [`wait_forwarding`] then takes them one
//! by one with `sigwait`, forwards each to the process, and reaps it on `SIGCHLD`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

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

/// Like [`wait_forwarding`], while relaying the pty `master` to our stdio: stdin → master,
/// master → stdout. Our stdin is put in raw mode while relaying if it is a terminal, and
/// its size is copied to the pty at start and on every `SIGWINCH`. After the process
/// exits, what is left in the pty is drained to stdout.
pub fn wait_with_console(pid: i32, set: &SigSet, master: OwnedFd) -> Result<i32, WaitError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

    let sys = |what: &'static str| move |e: nix::Error| WaitError::Sys(what, e);
    let sfd = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC).map_err(sys("signalfd"))?;
    let stdin = std::io::stdin();
    let saved = if nix::unistd::isatty(&stdin).unwrap_or(false) {
        let t = tcgetattr(&stdin).map_err(sys("tcgetattr"))?;
        let mut raw = t.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(sys("tcsetattr"))?;
        copy_winsize(&stdin, &master);
        Some(t)
    } else {
        None
    };
    let res = relay(pid, &sfd, &master);
    if let Some(t) = saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
    }
    return res;

    fn relay(pid: i32, sfd: &SignalFd, master: &OwnedFd) -> Result<i32, WaitError> {
        let target = Pid::from_raw(pid);
        let stdin = std::io::stdin();
        let mut stdin_open = true;
        let mut master_open = true;
        let mut buf = [0u8; 8192];
        let mut exit = None;
        loop {
            if exit.is_none() {
                exit = reap(target)?;
            }
            if let Some(code) = exit {
                // Drain what the process wrote before exiting (without blocking).
                while master_open {
                    let mut p = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
                    // POLLHUP/EIO end the drain below.
                    if !matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0) {
                        break;
                    }
                    match nix::unistd::read(master, &mut buf) {
                        Ok(n) if n > 0 && write_all_stdout(&buf[..n]).is_ok() => {}
                        _ => master_open = false,
                    }
                }
                return Ok(code);
            }
            // A closed side is polled with no events (never ready), keeping indexes fixed.
            let on = |open: bool| {
                if open {
                    PollFlags::POLLIN
                } else {
                    PollFlags::empty()
                }
            };
            let mut fds = [
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(master.as_fd(), on(master_open)),
                PollFd::new(stdin.as_fd(), on(stdin_open)),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(WaitError::Sys("poll", e)),
                Ok(_) => {}
            }
            let ready = |i: usize, fds: &[PollFd]| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (sig_ready, master_ready, stdin_ready) = (
                ready(0, &fds),
                master_open && ready(1, &fds),
                stdin_open && ready(2, &fds),
            );
            if sig_ready {
                if let Ok(Some(si)) = sfd.read_signal() {
                    match Signal::try_from(si.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => {}
                        Ok(Signal::SIGWINCH) => copy_winsize(&std::io::stdin(), master),
                        Ok(s) => {
                            let _ = nix::sys::signal::kill(target, s);
                        }
                        Err(_) => {}
                    }
                }
            }
            if master_ready {
                match nix::unistd::read(master, &mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = write_all_stdout(&buf[..n]);
                    }
                    // EIO: every slave fd is closed (the process is exiting, or closed
                    // its stdio): stop relaying, keep forwarding signals until it exits.
                    _ => master_open = false,
                }
            }
            if stdin_ready {
                match nix::unistd::read(&stdin, &mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = write_all(master, &buf[..n]);
                    }
                    _ => stdin_open = false,
                }
            }
        }
    }
}

fn write_all(fd: &impl AsFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all_stdout(data: &[u8]) -> nix::Result<()> {
    write_all(&std::io::stdout(), data)
}

/// Copies the terminal size of `from` to `to` (best effort).
fn copy_winsize(from: &impl AsFd, to: &impl AsFd) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` into memory we own.
    if unsafe { libc::ioctl(from.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0 {
        // SAFETY: TIOCSWINSZ reads the `winsize` we just filled.
        unsafe { libc::ioctl(to.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// Reaps our exited children without blocking; the exit code if `target` is among them.
fn reap(target: Pid) -> Result<Option<i32>, WaitError> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(st) if st.pid() == Some(target) => {
                if let Some(c) = exit_code(st) {
                    return Ok(Some(c));
                }
            }
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(WaitError::Sys("waitpid", e)),
        }
    }
}
