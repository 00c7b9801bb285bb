//! A tiny eBPF assembler and the `bpf(2)` calls needed for cgroup device programs.
//!
//! Hand-written on purpose: the Rust eBPF crates (aya, libbpf-rs, redbpf) load ELF objects
//! built by an LLVM/clang toolchain or wrap libbpf in C; a cgroup device filter needs about
//! a dozen instruction kinds and five `bpf(2)` commands, which is far smaller than either.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    pub regs: u8,
    /// Signed offset (jumps, memory).
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

/// eBPF registers used here.
pub type Reg = u8;

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const BPF_LDX: u8 = 0x01;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_ALU: u8 = 0x04;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (dst & 0xf) | (src << 4),
        off,
        imm,
    }
}

/// `dst = *(u32 *)(src + off)`
pub fn ldx_w(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
}
/// `dst = imm` (64-bit)
pub fn mov_imm(dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
}
/// `dst = src` (32-bit, zero-extends)
pub fn mov32_reg(dst: Reg, src: Reg) -> Insn {
    insn(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
}
/// `dst &= imm` (32-bit)
pub fn and32_imm(dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU | BPF_AND | BPF_K, dst, 0, 0, imm)
}
/// `dst >>= imm` (32-bit)
pub fn rsh32_imm(dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU | BPF_RSH | BPF_K, dst, 0, 0, imm)
}
/// `if (u32)dst != (u32)imm goto +off`
pub fn jne32_imm(dst: Reg, imm: u32, off: i16) -> Insn {
    insn(BPF_JMP32 | BPF_JNE | BPF_K, dst, 0, off, imm as i32)
}
/// `if (u32)dst != (u32)src goto +off`
pub fn jne32_reg(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(BPF_JMP32 | BPF_JNE | BPF_X, dst, src, off, 0)
}
/// `exit` (returns r0)
pub fn exit() -> Insn {
    insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
}

// bpf(2) commands, program and attach types, flags.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Several programs may be attached to one cgroup; all must allow.
pub const BPF_F_ALLOW_MULTI: u32 = 2;

/// The union bpf_attr is 120+ bytes in recent kernels; a zeroed buffer this big with the
/// command's fields at the front is what the kernel expects (it checks the tail is zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_ne_bytes(b)
    }
}

fn sys_bpf(cmd: libc::c_int, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, writable, 8-aligned 128-byte buffer laid out as union bpf_attr
    // for `cmd`; any pointers stored in it point to memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Loads a BPF_PROG_TYPE_CGROUP_DEVICE program; on failure the error carries the verifier log.
pub fn load_device_program(insns: &[Insn]) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut try_load = |with_log: bool| {
        let mut a = Attr::new();
        a.put_u32(0, BPF_PROG_TYPE_CGROUP_DEVICE);
        a.put_u32(4, insns.len() as u32);
        a.put_u64(8, insns.as_ptr() as u64);
        a.put_u64(16, license.as_ptr() as u64);
        if with_log {
            a.put_u32(24, 1); // log_level
            a.put_u32(28, log.len() as u32);
            a.put_u64(32, log.as_mut_ptr() as u64);
        }
        // prog_name at 48..64
        a.0[48..54].copy_from_slice(b"vessel");
        a.put_u32(68, BPF_CGROUP_DEVICE); // expected_attach_type
        sys_bpf(BPF_PROG_LOAD, &mut a)
    };
    match try_load(false) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let _ = try_load(true);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((e, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

/// Attaches `prog` to the cgroup directory fd with BPF_F_ALLOW_MULTI.
pub fn attach(cgroup: &impl AsRawFd, prog: &impl AsRawFd) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, cgroup.as_raw_fd() as u32);
    a.put_u32(4, prog.as_raw_fd() as u32);
    a.put_u32(8, BPF_CGROUP_DEVICE);
    a.put_u32(12, BPF_F_ALLOW_MULTI);
    sys_bpf(BPF_PROG_ATTACH, &mut a).map(|_| ())
}

/// Detaches `prog` from the cgroup.
pub fn detach(cgroup: &impl AsRawFd, prog: &impl AsRawFd) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, cgroup.as_raw_fd() as u32);
    a.put_u32(4, prog.as_raw_fd() as u32);
    a.put_u32(8, BPF_CGROUP_DEVICE);
    sys_bpf(BPF_PROG_DETACH, &mut a).map(|_| ())
}

/// Lists the ids of device programs attached directly to the cgroup.
pub fn query(cgroup: &impl AsRawFd) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut a = Attr::new();
    a.put_u32(0, cgroup.as_raw_fd() as u32);
    a.put_u32(4, BPF_CGROUP_DEVICE);
    a.put_u64(16, ids.as_mut_ptr() as u64);
    a.put_u32(24, ids.len() as u32);
    sys_bpf(BPF_PROG_QUERY, &mut a)?;
    let n = a.get_u32(24) as usize;
    ids.truncate(n.min(64));
    Ok(ids)
}

/// Opens a program by id.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, id);
    sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut a).map(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        // Checked against `llvm-objdump`-style encodings of the same instructions.
        let i = ldx_w(2, 1, 4);
        assert_eq!((i.code, i.regs, i.off), (0x61, 0x12, 4));
        let i = jne32_imm(4, 136, 3);
        assert_eq!((i.code, i.regs, i.off, i.imm), (0x56, 0x04, 3, 136));
        assert_eq!(exit().code, 0x95);
        assert_eq!(mov_imm(0, 1).code, 0xb7);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}
