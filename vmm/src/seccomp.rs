//! Per-thread seccomp allow-lists, compiled with seccompiler and installed by each thread
//! before it runs guest code (vCPU threads) or serves devices (the VMM thread).
//!
//! Anything not on a list kills the process (SIGSYS): a compromised vCPU thread cannot open
//! files, create sockets or exec.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `KVM_RUN` ioctl request number, `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)`: virtio-net sets the tap's offloads when
/// the driver activates or resets the device (an MMIO write on a vCPU thread).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// `KVM_GET_REGS`, `_IOR(KVMIO, 0x81, struct kvm_regs)`: read-only, records where a stopped
/// vCPU was.
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules are malformed.
    #[error("building the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// Compiling to BPF failed.
    #[error("compiling the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
}

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and device emulation.
    Vcpu,
    /// The VMM thread: the epoll loop serving consoles, timers and virtio backends.
    Vmm,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "vCPU",
            Self::Vmm => "VMM",
        }
    }
}

/// Syscalls every thread needs: memory allocation, locks, signals, thread exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
];

/// Extra syscalls of the VMM thread.
const VMM_EXTRA: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_timerfd_settime,
    libc::SYS_fcntl,
];

/// A rule matching when argument `index` equals `value` (compared as 32 bits, as the kernel
/// truncates ioctl request numbers and fcntl commands to int).
fn arg_eq(name: &'static str, index: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| SeccompError::Build(name, e))?;
    SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(name, e))
}

fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let name = kind.name();
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in COMMON {
        m.insert(*s, vec![]);
    }
    match kind {
        ThreadKind::Vcpu => {
            m.insert(
                libc::SYS_ioctl,
                vec![
                    arg_eq(name, 1, KVM_RUN)?,
                    arg_eq(name, 1, KVM_GET_REGS)?,
                    arg_eq(name, 1, TUNSETOFFLOAD)?,
                ],
            );
            // std checks that an fd is open (F_GETFD) before closing it in debug builds.
            m.insert(
                libc::SYS_fcntl,
                vec![arg_eq(name, 1, libc::F_GETFD as u64)?],
            );
        }
        ThreadKind::Vmm => {
            for s in VMM_EXTRA {
                m.insert(*s, vec![]);
            }
            m.insert(libc::SYS_ioctl, vec![arg_eq(name, 1, TUNSETOFFLOAD)?]);
        }
    }
    Ok(m)
}

/// Compile the allow-list for `kind` (before spawning, so no allocation is needed after).
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let name = kind.name();
    let filter = SeccompFilter::new(
        rules(kind)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(name, e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(name, e))
}

/// Install a compiled filter on the calling thread.
pub fn install(kind: ThreadKind, bpf: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(bpf).map_err(|e| SeccompError::Install(kind.name(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fork; in the child install `kind`'s filter and run `f`; return the child's wait status.
    fn in_filtered_child(kind: ThreadKind, f: fn() -> i64) -> i32 {
        let bpf = compile(kind).unwrap();
        // SAFETY: the child only calls async-signal-safe functions (prctl/seccomp via
        // apply_filter on a prebuilt program, raw syscalls, _exit).
        match unsafe { libc::fork() } {
            0 => {
                if seccompiler::apply_filter(&bpf).is_err() {
                    // SAFETY: plain process exit.
                    unsafe { libc::_exit(100) };
                }
                let r = f();
                // SAFETY: raw exit_group, which the filter allows.
                unsafe { libc::syscall(libc::SYS_exit_group, if r >= 0 { 0 } else { 1 }) };
                unreachable!()
            }
            pid => {
                assert!(pid > 0);
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                status
            }
        }
    }

    #[test]
    fn vcpu_filter_kills_forbidden_syscalls() {
        // SAFETY: raw syscalls without pointers.
        let status = in_filtered_child(ThreadKind::Vcpu, || unsafe {
            libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        // ioctl other than KVM_RUN (here FIONREAD on stdin) is forbidden as well.
        // SAFETY: as above; the third argument is never dereferenced because the filter kills first.
        let status = in_filtered_child(ThreadKind::Vcpu, || unsafe {
            libc::syscall(libc::SYS_ioctl, 0, libc::FIONREAD, 0)
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
        // openat is forbidden on the VMM thread too.
        // SAFETY: as above.
        let status = in_filtered_child(ThreadKind::Vmm, || unsafe {
            libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/etc/passwd".as_ptr(), 0)
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
    }

    #[test]
    fn allowed_syscalls_pass() {
        // SAFETY: getpid/gettid take no arguments.
        let status = in_filtered_child(ThreadKind::Vcpu, || unsafe {
            libc::syscall(libc::SYS_getpid) + libc::syscall(libc::SYS_gettid)
        });
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
