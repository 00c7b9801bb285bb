//! `clone(2)` with namespace flags, fork-style, and small process helpers.
//!
//! Hand-written rather than `nix::sched::clone`: that one needs a separate stack and a
//! callback, while a fork-style raw `clone` (no new stack) lets the child simply continue
//! with a copy of the parent's memory — no re-exec, nothing to marshal. The caller must
//! be single-threaded (the `vessel` CLI is), as with `fork(2)` in general: another thread
//! holding the allocator lock at clone time would deadlock the child.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sched::CloneFlags;

/// Result of [`clone`]: which side we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent; the child's host pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Clones the calling process like `fork(2)`, with `flags` (namespace flags) added.
/// The child gets `SIGCHLD` as exit signal, so the parent can `waitpid` it normally.
pub fn clone(flags: CloneFlags) -> nix::Result<Forked> {
    let f = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: raw clone without CLONE_VM and with a null stack behaves like fork(2): the
    // child runs on a copy-on-write copy of our stack. No pointers are passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            f,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            0usize,
        )
    };
    match r {
        -1 => Err(nix::Error::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as i32)),
    }
}

/// `struct clone_args` of `clone3(2)` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
/// Hand-written: the libc crate defines it for musl targets only.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// As [`clone`], but the child is born in the cgroup v2 directory `cgroup` (`clone3` with
/// `CLONE_INTO_CGROUP`): no migration afterwards, so no wait for the RCU grace period a
/// migration may need. `Err(ENOSYS | E2BIG | EINVAL)` from a kernel without it: the
/// caller falls back to [`clone`] and a `cgroup.procs` write.
pub fn clone_into_cgroup(flags: CloneFlags, cgroup: BorrowedFd<'_>) -> nix::Result<Forked> {
    let mut args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and with no stack behaves like fork(2), as in
    // `clone` above; `args` is a valid clone_args of the size passed, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        -1 => Err(nix::Error::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as i32)),
    }
}

/// Ends the child without running the parent's destructors or atexit handlers.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `pidfd_open(2)` (not in nix 0.31).
pub fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the kernel returned a new fd that we now own (pidfds are close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `pidfd_send_signal(2)`: signals exactly the process the pidfd refers to.
pub fn pidfd_send_signal(pidfd: RawFd, sig: i32) -> nix::Result<()> {
    // SAFETY: integer arguments; a null siginfo means "like kill(2)".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

/// Sets the parent-death signal of the calling process (0 clears it).
pub fn set_pdeathsig(sig: i32) -> nix::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes an integer signal number.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

/// Sets `no_new_privs` on the calling process.
pub fn set_no_new_privs() -> nix::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

/// Marks every fd from `first` on close-on-exec (`close_range(2)`), so only stdio and
/// preserved fds reach the user program.
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: integer arguments; CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

/// Joins a new anonymous session keyring named `name` (what runc does unless
/// `--no-new-keyring`), so containers do not share the caller's keys.
pub fn join_session_keyring(name: &str) -> nix::Result<()> {
    let c = std::ffi::CString::new(name).map_err(|_| nix::Error::EINVAL)?;
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING reads a NUL-terminated name we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING,
            c.as_ptr(),
        )
    };
    match r {
        // Keyrings may be unavailable (no CONFIG_KEYS) or restricted: runc ignores it.
        r if r < 0 && matches!(nix::Error::last(), nix::Error::ENOSYS) => Ok(()),
        r if r < 0 => Err(nix::Error::last()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_without_namespaces_is_a_fork() {
        match clone(CloneFlags::empty()).unwrap() {
            Forked::Child => exit_child(7),
            Forked::Parent(pid) => {
                let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
                assert_eq!(
                    st,
                    nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 7)
                );
            }
        }
    }
}
