//! Compiles device rules into a BPF_PROG_TYPE_CGROUP_DEVICE program.
//!
//! Semantics as runc's and crun's generators: the rules are checked from the last to the
//! first and the first match decides, i.e. the last matching rule wins; no match = deny.

use super::bpf::{self, Insn};
use super::{DevType, Rule, ACC_MKNOD, ACC_READ, ACC_WRITE};

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
// access_type = (access << 16) | type; type: BLOCK=1, CHAR=2; access: MKNOD=1, READ=2, WRITE=4.
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;

fn kernel_access(acc: u8) -> i32 {
    let mut k = 0;
    if acc & ACC_MKNOD != 0 {
        k |= 1;
    }
    if acc & ACC_READ != 0 {
        k |= 2;
    }
    if acc & ACC_WRITE != 0 {
        k |= 4;
    }
    k
}

/// Builds the program for `rules`.
pub fn compile(rules: &[Rule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor
    let mut p = vec![
        bpf::ldx_w(2, 1, 0),
        bpf::and32_imm(2, 0xffff),
        bpf::ldx_w(3, 1, 0),
        bpf::rsh32_imm(3, 16),
        bpf::ldx_w(4, 1, 4),
        bpf::ldx_w(5, 1, 8),
    ];
    for r in rules.iter().rev() {
        // Each block: checks that jump to the end of the block on mismatch, then the verdict.
        let mut checks: Vec<Insn> = Vec::new();
        match r.typ {
            DevType::All => {}
            DevType::Block => checks.push(bpf::jne32_imm(2, DEV_BLOCK, 0)),
            DevType::Char => checks.push(bpf::jne32_imm(2, DEV_CHAR, 0)),
        }
        if r.access != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // match iff (access & rule_access) == access
            checks.push(bpf::mov32_reg(1, 3));
            checks.push(bpf::and32_imm(1, kernel_access(r.access)));
            checks.push(bpf::jne32_reg(1, 3, 0));
        }
        if let Some(m) = r.major {
            checks.push(bpf::jne32_imm(4, m, 0));
        }
        if let Some(m) = r.minor {
            checks.push(bpf::jne32_imm(5, m, 0));
        }
        let n = checks.len();
        if n == 0 {
            // Matches everything: the verifier rejects the unreachable code after it.
            p.push(bpf::mov_imm(0, i32::from(r.allow)));
            p.push(bpf::exit());
            return p;
        }
        for (i, c) in checks.iter_mut().enumerate() {
            if c.code & 0x07 == 0x06 {
                // skip the remaining checks and the 2-instruction verdict
                c.off = (n - i - 1 + 2) as i16;
            }
        }
        p.extend(checks);
        p.push(bpf::mov_imm(0, i32::from(r.allow)));
        p.push(bpf::exit());
    }
    p.push(bpf::mov_imm(0, 0));
    p.push(bpf::exit());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for exactly the instructions `compile` emits, to check the jump
    /// arithmetic and rule order without the kernel (the kernel test is in the cgroup tests).
    fn run(p: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | typ, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (d, s) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                0x61 => r[d] = u64::from(ctx[i.off as usize / 4]),
                0x54 => r[d] = (r[d] as u32 & i.imm as u32) as u64,
                0x74 => r[d] = ((r[d] as u32) >> i.imm) as u64,
                0xbc => r[d] = r[s] as u32 as u64,
                0xb7 => r[d] = i.imm as i64 as u64,
                0x56 => {
                    if r[d] as u32 != i.imm as u32 {
                        pc += i.off as usize
                    }
                }
                0x5e => {
                    if r[d] as u32 != r[s] as u32 {
                        pc += i.off as usize
                    }
                }
                0x95 => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn rule(allow: bool, typ: DevType, major: Option<u32>, minor: Option<u32>, access: u8) -> Rule {
        Rule {
            allow,
            typ,
            major,
            minor,
            access,
        }
    }

    #[test]
    fn last_match_wins_default_deny() {
        let rwm = ACC_READ | ACC_WRITE | ACC_MKNOD;
        let rules = [
            rule(false, DevType::All, None, None, rwm),
            rule(true, DevType::Char, Some(1), Some(3), rwm),
            rule(true, DevType::Char, Some(5), None, rwm),
            rule(true, DevType::Char, None, None, ACC_MKNOD),
            rule(true, DevType::Block, None, None, ACC_MKNOD),
            rule(false, DevType::Char, Some(5), Some(1), ACC_WRITE),
        ];
        let p = compile(&rules);
        let (read, write, mknod) = (2, 4, 1);
        assert_eq!(run(&p, DEV_CHAR, read | write, 1, 3), 1, "c 1:3 rw");
        assert_eq!(run(&p, DEV_BLOCK, read, 1, 3), 0, "b 1:3 denied");
        assert_eq!(run(&p, DEV_CHAR, read, 1, 5), 0, "c 1:5 denied");
        assert_eq!(run(&p, DEV_CHAR, read, 5, 0), 1, "c 5:* allowed");
        assert_eq!(
            run(&p, DEV_CHAR, write, 5, 1),
            0,
            "later deny of w on 5:1 wins"
        );
        assert_eq!(run(&p, DEV_CHAR, read, 5, 1), 1, "r on 5:1 still allowed");
        assert_eq!(run(&p, DEV_CHAR, mknod, 42, 7), 1, "c *:* m");
        assert_eq!(run(&p, DEV_BLOCK, mknod, 8, 0), 1, "b *:* m");
        assert_eq!(run(&p, DEV_BLOCK, read, 8, 0), 0, "b 8:0 r denied");
        assert_eq!(
            run(&compile(&[]), DEV_CHAR, read, 1, 3),
            0,
            "empty = deny all"
        );
        let allow_all = compile(&[rule(true, DevType::All, None, None, rwm)]);
        assert_eq!(run(&allow_all, DEV_BLOCK, write, 8, 0), 1);
        assert_eq!(allow_all.len(), 8, "nothing after an unconditional verdict");
        let deny_after = compile(&[
            rule(true, DevType::Char, Some(1), Some(3), rwm),
            rule(false, DevType::All, None, None, rwm),
        ]);
        assert_eq!(
            run(&deny_after, DEV_CHAR, read, 1, 3),
            0,
            "later deny-all wins"
        );
    }
}
