//! Seccomp: translate an OCI `linux.seccomp` profile into a BPF filter and install it.
//!
//! [`compile`] runs in the runtime parent (it allocates and may fail with a clear error
//! before anything is cloned); [`Filter::install`] runs in the container's init process as
//! one of its last steps.
//!
//! # Semantics
//!
//! * **Native ABI only.** Rules are translated for x86_64. Syscalls that enter through a
//!   non-native ABI (i386 via `int 0x80`, x32) are never matched against rules:
//!   - if the profile lists that architecture (`SCMP_ARCH_X86`, `SCMP_ARCH_X32`) they get
//!     the profile's `defaultAction` — except when that action would let them through
//!     (`SCMP_ACT_ALLOW`/`SCMP_ACT_LOG`) while the profile has rules, in which case they
//!     fail with `ENOSYS`, so a deny-list can never be bypassed through the compat ABI;
//!   - if it does not list it they kill the process (libseccomp's "bad arch" action).
//!
//!   Consequence: 32-bit binaries do not run under an allow-list profile such as Docker's
//!   default (libseccomp would translate the rules for i386 too). Foreign architectures
//!   (`SCMP_ARCH_AARCH64`, …) are accepted and ignored: an x86_64 kernel never reports them.
//! * **Unknown syscall names** (not in the x86_64 table, e.g. `arm_fadvise64_64` or names
//!   newer than Linux 6.18) are skipped, as runc does with names libseccomp cannot resolve
//!   on this arch; [`Filter::skipped_syscalls`] lists them so the caller can log them.
//! * **Several rules for one syscall.** Rules with `args` are tried in profile order and the
//!   first whose conditions all match (conditions of one rule are ANDed) decides; if none
//!   matches, an unconditional rule (no `args`) for that syscall decides, else the default
//!   action. Two unconditional rules with different actions for one syscall are refused
//!   (libseccomp refuses them too). Rules whose action is the default action are skipped,
//!   as runc does (libseccomp refuses them), even where first-match order would give them
//!   a meaning.
//! * **Conditions of one rule are ANDed**, except when the rule compares the same argument
//!   more than once: then, as runc does, each comparison is a rule of its own (ORed).
//! * **Argument comparisons** are on the full 64-bit register, like libseccomp on 64-bit
//!   arches. For `SCMP_CMP_MASKED_EQ`, `value` is the mask and `valueTwo` the expected value
//!   (`arg & value == valueTwo`; a `valueTwo` with bits outside the mask never matches).
//! * **Actions.** `SCMP_ACT_ERRNO` returns `errnoRet` (default `EPERM`), `SCMP_ACT_TRACE`
//!   passes `errnoRet` (default 0) to the tracer (without a tracer the syscall fails with
//!   `ENOSYS`), `SCMP_ACT_KILL` is `SCMP_ACT_KILL_THREAD`. `errnoRet`/`defaultErrnoRet` on
//!   any other action is refused. `SCMP_ACT_NOTIFY` emits `SECCOMP_RET_USER_NOTIF` and the
//!   filter is installed with `SECCOMP_FILTER_FLAG_NEW_LISTENER`; [`Filter::install`] then
//!   returns the listener fd. It cannot be the default action.
//! * **Flags.** `SECCOMP_FILTER_FLAG_TSYNC`, `_LOG`, `_SPEC_ALLOW` and `_WAIT_KILLABLE_RECV`
//!   (the latter only with NOTIFY rules) are passed to seccomp(2); TSYNC together with a
//!   listener adds `SECCOMP_FILTER_FLAG_TSYNC_ESRCH` as the kernel requires. Unknown flag
//!   names are refused when the profile is parsed (see [`parse_profile`]).

mod program;
mod syscall_table;
#[cfg(test)]
mod tests;

use std::os::fd::{FromRawFd, OwnedFd};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{sock_filter, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};

use program::{CondRule, Skeleton, SyscallEntry};

/// Errors of compiling or installing a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile JSON could not be parsed (unknown action, flag, arch or operator names…).
    #[error("invalid seccomp profile: {0}")]
    Parse(#[source] serde_json::Error),
    /// `errnoRet` given for an action that takes no errno.
    #[error("{rule}: errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action}")]
    ErrnoRetNotAllowed {
        /// Which rule (`defaultAction` or `syscalls[i] (names)`).
        rule: String,
        /// The rule's action.
        action: LinuxSeccompAction,
    },
    /// `errnoRet` does not fit the 16-bit data field of a seccomp return value.
    #[error("{rule}: errnoRet {value} is out of range (0..=65535)")]
    ErrnoRetOutOfRange {
        /// Which rule.
        rule: String,
        /// The value given.
        value: u32,
    },
    /// `SCMP_ACT_NOTIFY` as the default action.
    #[error("SCMP_ACT_NOTIFY cannot be the defaultAction (every syscall, including the ones the runtime needs to hand over the listener, would block)")]
    NotifyAsDefault,
    /// An argument index outside 0..=5.
    #[error("{rule}: argument index {index} is out of range (syscalls have arguments 0..=5)")]
    ArgIndex {
        /// Which rule.
        rule: String,
        /// The index given.
        index: usize,
    },
    /// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` without any `SCMP_ACT_NOTIFY` rule.
    #[error("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs at least one SCMP_ACT_NOTIFY rule")]
    WaitKillableWithoutNotify,
    /// seccompiler refused a rule.
    #[error("building the BPF for syscall number {nr}: {source}")]
    Rule {
        /// Syscall number of the rule.
        nr: u32,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The program exceeds the kernel's 4096 instruction limit.
    #[error("the seccomp filter needs {0} BPF instructions, more than the kernel's limit of 4096")]
    TooLarge(usize),
    /// The assembled program has a jump out of bounds (a bug, reported before install).
    #[error("internal error: the assembled seccomp program has an out-of-bounds jump at instruction {0}")]
    Internal(usize),
    /// seccomp(2) failed.
    #[error("seccomp(SECCOMP_SET_MODE_FILTER, flags {flags:#x}) failed{hint}: {source}")]
    Install {
        /// The flags passed.
        flags: u64,
        /// A hint for well-known causes.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `SECCOMP_FILTER_FLAG_TSYNC` could not synchronise a thread.
    #[error("seccomp TSYNC failed: thread {0} could not be synchronised to the new filter")]
    ThreadSync(i64),
}

/// A compiled seccomp filter, ready to [`install`](Filter::install).
#[derive(Debug, Clone)]
pub struct Filter {
    program: Vec<sock_filter>,
    flags: u64,
    notify: bool,
    skipped: Vec<String>,
}

/// Parses a `linux.seccomp` JSON object, mapping serde's error (which names the unknown
/// variant, e.g. an unknown action, flag, operator or arch) to [`SeccompError::Parse`].
pub fn parse_profile(json: &str) -> Result<LinuxSeccomp, SeccompError> {
    serde_json::from_str(json).map_err(SeccompError::Parse)
}

/// The x86_64 number of a syscall name, if this table knows it.
pub fn syscall_number(name: &str) -> Option<u32> {
    syscall_table::lookup(name)
}

/// Compiles an OCI seccomp profile to a BPF filter for x86_64 (see the module docs for
/// the exact semantics).
pub fn compile(spec: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    let default_action = spec.default_action();
    if default_action == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompError::NotifyAsDefault);
    }
    let default_ret = action_ret(default_action, spec.default_errno_ret(), || {
        "defaultAction".to_string()
    })?;

    let (mut x86_listed, mut x32_listed) = (false, false);
    for arch in spec.architectures().iter().flatten() {
        match arch {
            Arch::ScmpArchX86 => x86_listed = true,
            Arch::ScmpArchX32 => x32_listed = true,
            // Native, x86_64 and foreign arches: native is always filtered, the kernel of
            // this host never reports foreign ones.
            _ => {}
        }
    }

    let mut flags: u64 = 0;
    let mut wait_killable = false;
    for flag in spec.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                wait_killable = true;
                libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            }
        };
    }

    struct Pending {
        rules: Vec<CondRule>,
        uncond: Option<u32>,
    }
    // Indexed by syscall number (all x86_64 numbers are below 512).
    let mut per_nr: Vec<Option<Pending>> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut notify = false;

    for (i, sc) in spec.syscalls().iter().flatten().enumerate() {
        let rule_desc = || format!("syscalls[{i}] ({})", sc.names().join(","));
        let ret = action_ret(sc.action(), sc.errno_ret(), rule_desc)?;
        let conditions = sc
            .args()
            .iter()
            .flatten()
            .map(|arg| {
                let index = u8::try_from(arg.index())
                    .ok()
                    .filter(|i| *i <= 5)
                    .ok_or_else(|| SeccompError::ArgIndex {
                        rule: rule_desc(),
                        index: arg.index(),
                    })?;
                let (op, value) = match arg.op() {
                    LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
                    LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
                    LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
                    LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
                    LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
                    LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
                    LinuxSeccompOperator::ScmpCmpMaskedEq => (
                        SeccompCmpOp::MaskedEq(arg.value()),
                        arg.value_two().unwrap_or(0),
                    ),
                };
                SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                    .map_err(|source| SeccompError::Rule { nr: 0, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // libseccomp compares `arg & mask` with `valueTwo` as given, so a `valueTwo` with
        // bits outside the mask never matches; seccompiler would mask it first. Such a
        // rule can never apply: leave it out to keep libseccomp's meaning.
        let never_matches = sc.args().iter().flatten().any(|a| {
            a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq
                && a.value_two().unwrap_or(0) & !a.value() != 0
        });
        // runc skips rules whose action is the default action (libseccomp refuses them).
        if never_matches || ret == default_ret {
            continue;
        }
        // runc: when one rule compares the same argument more than once (which libseccomp
        // refuses within a rule), each comparison becomes a rule of its own (OR).
        let mut seen = [false; 6];
        let split_conditions = sc.args().iter().flatten().any(|a| {
            let dup = seen[a.index()];
            seen[a.index()] = true;
            dup
        });

        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                if !skipped.contains(name) {
                    skipped.push(name.clone());
                }
                continue;
            };
            let slot = nr as usize;
            if per_nr.len() <= slot {
                per_nr.resize_with(slot + 1, || None);
            }
            let entry = per_nr[slot].get_or_insert_with(|| Pending {
                rules: Vec::new(),
                uncond: None,
            });
            if conditions.is_empty() {
                // Several unconditional rules for one syscall: the first one wins and the
                // later ones are ignored, as with libseccomp (runc and crun behave so, and
                // podman's generated profiles rely on it, e.g. `setns` both allowed and,
                // without CAP_SYS_ADMIN, denied).
                entry.uncond.get_or_insert(ret);
            } else if split_conditions {
                for c in &conditions {
                    entry.rules.push(CondRule {
                        conditions: vec![c.clone()],
                        ret,
                    });
                }
            } else {
                entry.rules.push(CondRule {
                    conditions: conditions.clone(),
                    ret,
                });
            }
        }
    }

    let mut entries: Vec<SyscallEntry> = Vec::with_capacity(per_nr.len());
    for (nr, p) in per_nr.into_iter().enumerate() {
        let Some(mut p) = p else { continue };
        let nr = nr as u32;
        let fallback = p.uncond.unwrap_or(default_ret);
        // Trailing rules that give the fallback's result anyway are dead weight.
        while p.rules.last().is_some_and(|r| r.ret == fallback) {
            p.rules.pop();
        }
        if p.rules.is_empty() && fallback == default_ret {
            continue;
        }
        if fallback == libc::SECCOMP_RET_USER_NOTIF
            || p.rules
                .iter()
                .any(|r| r.ret == libc::SECCOMP_RET_USER_NOTIF)
        {
            notify = true;
        }
        entries.push(SyscallEntry {
            nr,
            rules: p.rules,
            fallback,
        });
    }

    if wait_killable && !notify {
        return Err(SeccompError::WaitKillableWithoutNotify);
    }
    if notify {
        flags |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        if flags & libc::SECCOMP_FILTER_FLAG_TSYNC != 0 {
            flags |= libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH;
        }
    }

    let permissive_default = matches!(
        default_action,
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
    );
    let compat_ret = if entries.is_empty() || !permissive_default {
        default_ret
    } else {
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
    };
    let skel = Skeleton {
        default_ret,
        i386_ret: if x86_listed {
            compat_ret
        } else {
            libc::SECCOMP_RET_KILL_PROCESS
        },
        x32_ret: if x32_listed {
            compat_ret
        } else {
            libc::SECCOMP_RET_KILL_PROCESS
        },
        other_arch_ret: libc::SECCOMP_RET_KILL_PROCESS,
    };

    let program = program::assemble(&skel, &entries).map_err(|e| match e {
        program::AsmError::Rule(nr, source) => SeccompError::Rule { nr, source },
        program::AsmError::TooLarge(n) => SeccompError::TooLarge(n),
        program::AsmError::BadJump(pc) => SeccompError::Internal(pc),
    })?;

    Ok(Filter {
        program,
        flags,
        notify,
        skipped,
    })
}

/// The seccomp return value for an OCI action.
fn action_ret(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    rule: impl Fn() -> String,
) -> Result<u32, SeccompError> {
    let data = |default: u32| -> Result<u32, SeccompError> {
        let v = errno_ret.unwrap_or(default);
        if v > libc::SECCOMP_RET_DATA {
            return Err(SeccompError::ErrnoRetOutOfRange {
                rule: rule(),
                value: v,
            });
        }
        Ok(v)
    };
    let takes_errno = matches!(
        action,
        LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
    );
    if errno_ret.is_some() && !takes_errno {
        return Err(SeccompError::ErrnoRetNotAllowed {
            rule: rule(),
            action,
        });
    }
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            libc::SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data(libc::EPERM as u32)?,
        LinuxSeccompAction::ScmpActTrace => libc::SECCOMP_RET_TRACE | data(0)?,
        LinuxSeccompAction::ScmpActNotify => libc::SECCOMP_RET_USER_NOTIF,
        LinuxSeccompAction::ScmpActLog => libc::SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
    })
}

impl Filter {
    /// Installs the filter on the calling thread (all threads with
    /// `SECCOMP_FILTER_FLAG_TSYNC`) with seccomp(2).
    ///
    /// Does **not** set `PR_SET_NO_NEW_PRIVS`: the caller decides. Without no_new_privs the
    /// kernel requires `CAP_SYS_ADMIN` in the caller's user namespace (otherwise `EACCES`),
    /// so a runtime that drops capabilities must either install before dropping them or set
    /// no_new_privs first. Every syscall made after this returns goes through the filter.
    ///
    /// Returns the user-notification listener fd when the profile has `SCMP_ACT_NOTIFY`
    /// rules, `None` otherwise.
    pub fn install(&self) -> Result<Option<OwnedFd>, SeccompError> {
        #[repr(C)]
        struct SockFprog {
            len: libc::c_ushort,
            filter: *const sock_filter,
        }
        let prog = SockFprog {
            // assemble() caps the length at 4096.
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr(),
        };
        // SAFETY: `prog` points to `self.program`, which outlives the call; the kernel
        // copies the program and does not keep the pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags as libc::c_ulong,
                &prog as *const SockFprog,
            )
        };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            let hint = match source.raw_os_error() {
                Some(libc::EACCES) => " (neither no_new_privs is set nor CAP_SYS_ADMIN held)",
                Some(libc::EINVAL) => " (a flag is not supported by this kernel?)",
                Some(libc::ESRCH) => " (TSYNC: another thread could not be synchronised)",
                Some(libc::EBUSY) => " (another filter already has a notification listener)",
                _ => "",
            };
            return Err(SeccompError::Install {
                flags: self.flags,
                hint,
                source,
            });
        }
        if self.notify {
            let fd = i32::try_from(rc).map_err(|_| SeccompError::ThreadSync(rc))?;
            // SAFETY: with SECCOMP_FILTER_FLAG_NEW_LISTENER a successful seccomp(2) returns a
            // new fd that nothing else owns.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        if rc > 0 {
            // TSYNC without TSYNC_ESRCH reports the offending thread id.
            return Err(SeccompError::ThreadSync(rc));
        }
        Ok(None)
    }

    /// The BPF program.
    pub fn program(&self) -> &[sock_filter] {
        &self.program
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the program is empty (never true for a compiled filter).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// The seccomp(2) flags [`install`](Filter::install) passes.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// Whether the filter has `SCMP_ACT_NOTIFY` rules (install returns a listener fd).
    pub fn has_notify(&self) -> bool {
        self.notify
    }

    /// Syscall names of the profile that are unknown on x86_64 and were skipped.
    pub fn skipped_syscalls(&self) -> &[String] {
        &self.skipped
    }
}
