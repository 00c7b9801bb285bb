//! Assembly of the final seccomp BPF program.
//!
//! seccompiler compiles one argument-matching rule into BPF (the fiddly part: 64-bit
//! comparisons split into two 32-bit halves), but its `SeccompFilter` has a single
//! match action for the whole filter, while an OCI profile gives every rule its own
//! action (and `SCMP_ACT_NOTIFY` has no seccompiler equivalent at all). So the
//! program skeleton is hand-written here and only the per-rule condition blocks come
//! from seccompiler:
//!
//! ```text
//!   ld  arch
//!   jeq AUDIT_ARCH_X86_64 -> native
//!   jeq AUDIT_ARCH_I386   -> ret <i386 action>
//!   ret <other-arch action>
//! native:
//!   ld  nr
//!   jge X32_SYSCALL_BIT   -> ret <x32 action>
//!   <binary search (jge) over intervals of syscall numbers with one outcome each>
//!     leaf: ret <action>                      (interval of syscalls with one action)
//!           ja chain_i                        (syscall with argument rules)
//! chain_i:
//!   <rule 1 conditions (seccompiler)> ret <rule 1 action>
//!   <rule 2 conditions (seccompiler)> ret <rule 2 action>
//!   ret <unconditional action of the syscall, or the default action>
//! ```
//!
//! Neighbouring syscalls with the same action share an interval, and the binary search
//! keeps the per-syscall cost logarithmic (about 2·log2(intervals) + 6 instructions)
//! instead of seccompiler's linear scan over every syscall.

use seccompiler::{sock_filter, BpfProgram, SeccompCondition, SeccompRule};

/// `BPF_LD | BPF_W | BPF_ABS`.
pub(super) const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JA`.
pub(super) const BPF_JMP_JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
pub(super) const BPF_JMP_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`.
pub(super) const BPF_JMP_JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K`.
pub(super) const BPF_RET_K: u16 = 0x06;

/// Offset of `nr` in `struct seccomp_data`.
const DATA_NR: u32 = 0;
/// Offset of `arch` in `struct seccomp_data`.
const DATA_ARCH: u32 = 4;

/// `AUDIT_ARCH_X86_64` from linux/audit.h.
pub(super) const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_I386` from linux/audit.h.
pub(super) const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`: x32 syscalls arrive with the x86_64 audit arch and this bit set.
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Maximum number of instructions the kernel accepts (`BPF_MAXINSNS`).
pub(super) const BPF_MAX_LEN: usize = 4096;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// One argument-matching rule of a syscall and its return value.
pub(super) struct CondRule {
    pub conditions: Vec<SeccompCondition>,
    pub ret: u32,
}

/// Everything the program needs to know about one syscall.
pub(super) struct SyscallEntry {
    pub nr: u32,
    /// Rules with argument conditions, first match wins.
    pub rules: Vec<CondRule>,
    /// Action when no argument rule matched (an unconditional rule, else the default).
    pub fallback: u32,
}

/// Return values for the parts of the filter that do not depend on syscall rules.
pub(super) struct Skeleton {
    pub default_ret: u32,
    pub i386_ret: u32,
    pub x32_ret: u32,
    pub other_arch_ret: u32,
}

/// Errors of the assembler; the caller wraps them with context.
#[derive(Debug)]
pub(super) enum AsmError {
    Rule(u32, seccompiler::BackendError),
    TooLarge(usize),
    BadJump(usize),
}

/// Builds the program. `entries` must be sorted by `nr` without duplicates.
pub(super) fn assemble(skel: &Skeleton, entries: &[SyscallEntry]) -> Result<BpfProgram, AsmError> {
    let mut prog: Vec<sock_filter> = Vec::with_capacity(64 + entries.len() * 4);

    // Architecture dispatch.
    prog.push(stmt(BPF_LD_W_ABS, DATA_ARCH));
    prog.push(jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 3, 0));
    prog.push(jump(BPF_JMP_JEQ_K, AUDIT_ARCH_I386, 0, 1));
    prog.push(stmt(BPF_RET_K, skel.i386_ret));
    prog.push(stmt(BPF_RET_K, skel.other_arch_ret));
    // Native ABI: load the syscall number, split off x32.
    prog.push(stmt(BPF_LD_W_ABS, DATA_NR));
    prog.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
    prog.push(stmt(BPF_RET_K, skel.x32_ret));

    // Search tree over intervals of syscall numbers with one outcome each.
    // `fixups` holds (instruction index, entry index) for the `ja` to each chain.
    let intervals = intervals(skel.default_ret, entries);
    let mut fixups: Vec<(usize, usize)> = Vec::new();
    emit_tree(&mut prog, &mut fixups, &intervals);

    // Chains for syscalls with argument rules.
    let mut chain_start = vec![usize::MAX; entries.len()];
    for (i, entry) in entries.iter().enumerate() {
        if entry.rules.is_empty() {
            continue;
        }
        chain_start[i] = prog.len();
        for rule in &entry.rules {
            let mut rule_bpf: BpfProgram = SeccompRule::new(rule.conditions.clone())
                .map_err(|e| AsmError::Rule(entry.nr, e))?
                .into();
            // seccompiler starts every rule with `ja 1; ja <past the rule's action + 1>`.
            // The second jump is unreachable, but its target lies one instruction past the
            // end of the rule's block plus our `ret`, which the kernel's checker refuses when
            // the block ends the program. Make it a harmless `ja 0`.
            if rule_bpf.len() >= 2
                && rule_bpf[0] == stmt(BPF_JMP_JA, 1)
                && rule_bpf[1].code == BPF_JMP_JA
            {
                rule_bpf[1].k = 0;
            }
            // seccompiler's rule block falls through into the instruction after it when all
            // conditions match, and jumps just past that instruction when one fails.
            prog.extend(rule_bpf);
            prog.push(stmt(BPF_RET_K, rule.ret));
        }
        prog.push(stmt(BPF_RET_K, entry.fallback));
        if prog.len() > BPF_MAX_LEN {
            return Err(AsmError::TooLarge(prog.len()));
        }
    }

    for (at, entry) in fixups {
        let target = chain_start[entry];
        // `ja` is relative to the next instruction; targets are always forward.
        let off = target - (at + 1);
        prog[at].k = u32::try_from(off).map_err(|_| AsmError::TooLarge(prog.len()))?;
    }

    if prog.len() > BPF_MAX_LEN {
        return Err(AsmError::TooLarge(prog.len()));
    }
    check_jumps(&prog)?;
    Ok(prog)
}

/// Verifies what the kernel's checker will verify about control flow: every jump lands
/// inside the program and the program ends in a `ret`. A failure is a bug in this module
/// (or a change in seccompiler's output), reported instead of an opaque EINVAL at install.
fn check_jumps(prog: &[sock_filter]) -> Result<(), AsmError> {
    const BPF_CLASS_MASK: u16 = 0x07;
    const BPF_JMP: u16 = 0x05;
    let len = prog.len();
    for (pc, insn) in prog.iter().enumerate() {
        if insn.code & BPF_CLASS_MASK != BPF_JMP {
            continue;
        }
        let targets = if insn.code == BPF_JMP_JA {
            vec![pc + 1 + insn.k as usize]
        } else {
            vec![pc + 1 + insn.jt as usize, pc + 1 + insn.jf as usize]
        };
        if targets.iter().any(|t| *t >= len) {
            return Err(AsmError::BadJump(pc));
        }
    }
    match prog.last() {
        Some(last) if last.code == BPF_RET_K => Ok(()),
        _ => Err(AsmError::BadJump(len)),
    }
}

/// What happens to the syscalls of one interval.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ret(u32),
    Chain(usize),
}

/// Splits the syscall numbers 0..X32_SYSCALL_BIT into maximal intervals with one outcome:
/// neighbouring syscalls that return the same action (an allow-list is mostly runs of
/// ALLOW) share one interval. Returns (first nr, outcome) sorted by nr.
fn intervals(default_ret: u32, entries: &[SyscallEntry]) -> Vec<(u32, Outcome)> {
    let mut out: Vec<(u32, Outcome)> = Vec::with_capacity(entries.len() * 2 + 1);
    let mut push = |start: u32, o: Outcome| match out.last() {
        Some((_, last)) if *last == o => {}
        _ => out.push((start, o)),
    };
    let mut next = 0u32;
    for (i, e) in entries.iter().enumerate() {
        if e.nr > next {
            push(next, Outcome::Ret(default_ret));
        }
        let o = if e.rules.is_empty() {
            Outcome::Ret(e.fallback)
        } else {
            Outcome::Chain(i)
        };
        push(e.nr, o);
        next = e.nr + 1;
    }
    push(next, Outcome::Ret(default_ret));
    out
}

/// Emits a binary search over `iv` (the accumulator holds the syscall number, which is
/// known to be >= iv[0].0). Every path ends in a `ret` or a `ja` to a chain, so subtrees
/// never fall through into each other.
fn emit_tree(prog: &mut Vec<sock_filter>, fixups: &mut Vec<(usize, usize)>, iv: &[(u32, Outcome)]) {
    if let [(_, outcome)] = iv {
        match *outcome {
            Outcome::Ret(ret) => prog.push(stmt(BPF_RET_K, ret)),
            Outcome::Chain(i) => {
                fixups.push((prog.len(), i));
                prog.push(stmt(BPF_JMP_JA, 0));
            }
        }
        return;
    }
    let mid = iv.len() / 2;
    let (left, right) = iv.split_at(mid);
    // nr >= first of right half: take the `ja` to the right subtree, else skip it.
    prog.push(jump(BPF_JMP_JGE_K, right[0].0, 0, 1));
    let ja_right = prog.len();
    prog.push(stmt(BPF_JMP_JA, 0));
    emit_tree(prog, fixups, left);
    // Forward distance fits easily: the program is capped at 4096 instructions.
    prog[ja_right].k = (prog.len() - ja_right - 1) as u32;
    emit_tree(prog, fixups, right);
}
