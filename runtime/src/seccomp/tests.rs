//! Seccomp tests: every filter is installed in a forked child, which reports what the
//! kernel did through its exit status.
//!
//! `testdata/allowlist-profile.json` is a profile written for this project in the shape of
//! Docker's default (default ERRNO, one large allow-list, personality/clone/socket argument
//! rules, names from other arches); it is not a copy of moby's file.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::*;
use crate::test_util::{errno, in_child};

/// Syscalls the child needs to finish after the filter is installed.
const BASE_ALLOW: &[&str] = &[
    "exit_group",
    "exit",
    "rt_sigreturn",
    "rt_sigprocmask",
    "write",
    "brk",
    "mmap",
    "munmap",
    "futex",
    "sigaltstack",
    "madvise",
];

fn profile(json: &str) -> LinuxSeccomp {
    parse_profile(json).unwrap()
}

fn no_new_privs() {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
}

/// Raw getppid: ignores its arguments, never fails, so any errno comes from the filter.
fn getppid_args(a0: u64, a1: u64) -> (i64, i32) {
    // SAFETY: getppid takes no arguments and touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_getppid, a0, a1) };
    (r, if r < 0 { errno() } else { 0 })
}

/// Installs `filter` in a child, runs `probe` there and returns the child's wait status.
fn run_filtered<F: FnOnce() -> i32>(filter: &Filter, probe: F) -> WaitStatus {
    in_child(|| {
        no_new_privs();
        match filter.install() {
            Ok(_) => probe(),
            Err(e) => {
                child_eprintln!("install: {e}");
                200
            }
        }
    })
}

fn exited(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child did not exit normally: {other:?}"),
    }
}

#[test]
fn syscall_table_is_sorted_and_matches_libc() {
    let t = syscall_table::X86_64;
    assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "table not sorted");
    for (name, nr) in t {
        assert_eq!(syscall_number(name), Some(*nr), "{name}");
    }
    let mut nrs: Vec<u32> = t.iter().map(|(_, nr)| *nr).collect();
    nrs.sort();
    nrs.dedup();
    assert_eq!(nrs.len(), t.len(), "duplicate syscall numbers");
    assert_eq!(syscall_number(""), None);
    assert_eq!(syscall_number("read "), None);
    let checks: &[(&str, libc::c_long)] = &[
        ("read", libc::SYS_read),
        ("getcwd", libc::SYS_getcwd),
        ("clone3", libc::SYS_clone3),
        ("personality", libc::SYS_personality),
        ("futex_waitv", libc::SYS_futex_waitv),
        ("fchmodat2", libc::SYS_fchmodat2),
        ("mseal", libc::SYS_mseal),
    ];
    for (name, nr) in checks {
        assert_eq!(syscall_number(name), Some(*nr as u32), "{name}");
    }
    assert_eq!(syscall_number("file_setattr"), Some(469));
    assert_eq!(syscall_number("arm_fadvise64_64"), None);
}

#[test]
fn errno_rule_with_default_allow() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getcwd","mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&f, || {
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for its length.
        let r = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
        if r != -1 {
            return 1;
        }
        errno()
    });
    assert_eq!(exited(st), 38);
}

#[test]
fn first_of_several_unconditional_rules_wins_like_libseccomp() {
    // runc and crun (libseccomp) keep the first unconditional rule for a syscall and ignore
    // later ones with another action; podman's profiles depend on it.
    for (first, second, want) in [(2, 13, 2), (13, 2, 13)] {
        let f = compile(&profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":{first}}},
                {{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":{second}}},
                {{"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS"}}]}}"#
        )))
        .unwrap();
        let st = run_filtered(&f, || getppid_args(0, 0).1);
        assert_eq!(exited(st), want);
    }
}

#[test]
fn errno_without_errno_ret_is_eperm() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO"}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&f, || getppid_args(0, 0).1);
    assert_eq!(exited(st), libc::EPERM);
}

#[test]
fn default_errno_with_allow_list() {
    let names = BASE_ALLOW
        .iter()
        .chain(&["getpid"])
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(",");
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":13,
            "syscalls":[{{"names":[{names}],"action":"SCMP_ACT_ALLOW"}}]}}"#
    );
    let f = compile(&profile(&json)).unwrap();
    let st = run_filtered(&f, || {
        // SAFETY: no arguments.
        if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
            return 1;
        }
        let (r, e) = getppid_args(0, 0);
        if r != -1 {
            return 2;
        }
        e
    });
    assert_eq!(exited(st), libc::EACCES);
}

/// For one operator, which of the probe values match `op value` (bit i = probe i).
fn probe_operator(op: &str, value: u64, value_two: Option<u64>, probes: &[u64]) -> i32 {
    let two = value_two
        .map(|v| format!(",\"valueTwo\":{v}"))
        .unwrap_or_default();
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["getppid"],
            "action":"SCMP_ACT_ERRNO","errnoRet":77,
            "args":[{{"index":0,"value":{value}{two},"op":"{op}"}}]}}]}}"#
    );
    let f = compile(&profile(&json)).unwrap();
    let probes = probes.to_vec();
    exited(run_filtered(&f, move || {
        let mut mask = 0;
        for (i, p) in probes.iter().enumerate() {
            let (r, e) = getppid_args(*p, 0);
            if r == -1 && e == 77 {
                mask |= 1 << i;
            }
        }
        mask
    }))
}

#[test]
fn argument_operators() {
    let v = 6u64;
    let probes = [0, 5, 6, 7, 0x1_0000_0006, u64::MAX];
    let expect = |f: &dyn Fn(u64) -> bool| -> i32 {
        probes
            .iter()
            .enumerate()
            .filter(|(_, p)| f(**p))
            .map(|(i, _)| 1 << i)
            .sum()
    };
    assert_eq!(
        probe_operator("SCMP_CMP_NE", v, None, &probes),
        expect(&|p| p != v)
    );
    assert_eq!(
        probe_operator("SCMP_CMP_LT", v, None, &probes),
        expect(&|p| p < v)
    );
    assert_eq!(
        probe_operator("SCMP_CMP_LE", v, None, &probes),
        expect(&|p| p <= v)
    );
    assert_eq!(
        probe_operator("SCMP_CMP_EQ", v, None, &probes),
        expect(&|p| p == v)
    );
    assert_eq!(
        probe_operator("SCMP_CMP_GE", v, None, &probes),
        expect(&|p| p >= v)
    );
    assert_eq!(
        probe_operator("SCMP_CMP_GT", v, None, &probes),
        expect(&|p| p > v)
    );
    // MASKED_EQ: value is the mask, valueTwo the expected masked value.
    let mask = 0x1_0000_0004u64;
    let probes2 = [0, 4, 6, 0x1_0000_0004, 0x1_0000_0000, u64::MAX];
    let expect2: i32 = probes2
        .iter()
        .enumerate()
        .filter(|(_, p)| **p & mask == 4)
        .map(|(i, _)| 1 << i)
        .sum();
    assert_eq!(
        probe_operator("SCMP_CMP_MASKED_EQ", mask, Some(4), &probes2),
        expect2
    );
    assert_ne!(expect2, 0);
}

#[test]
fn personality_query_arg() {
    // Docker-style: personality allowed only for some values, e.g. the query 0xffffffff.
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":5,"syscalls":[
            {"names":["exit_group","exit","rt_sigreturn","write"],"action":"SCMP_ACT_ALLOW"},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&f, || {
        // SAFETY: personality with the query value changes nothing.
        let q = unsafe { libc::personality(0xffff_ffff) };
        if q < 0 {
            return 1;
        }
        // SAFETY: setting the current value back; the filter is expected to refuse it.
        let r = unsafe { libc::personality(q as libc::c_ulong) };
        if r != -1 {
            return 2;
        }
        errno()
    });
    assert_eq!(exited(st), 5);
}

#[test]
fn rules_with_the_default_action_are_skipped_like_runc() {
    // The ERRNO rule for arg 1 equals the default action: runc drops it, so the
    // unconditional ALLOW decides for arg 1 too.
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["exit_group","exit","rt_sigreturn","write"],"action":"SCMP_ACT_ALLOW"},
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO",
             "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]},
            {"names":["getppid"],"action":"SCMP_ACT_ALLOW"}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&f, || i32::from(getppid_args(1, 0).0 <= 0));
    assert_eq!(exited(st), 0);
}

#[test]
fn several_args_in_one_rule_are_anded() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],
            "action":"SCMP_ACT_ERRNO","errnoRet":9,
            "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},
                    {"index":1,"value":2,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&f, || {
        let a = getppid_args(1, 2).1 == 9;
        let b = getppid_args(1, 3).1 == 9;
        let c = getppid_args(0, 2).1 == 9;
        i32::from(a) | i32::from(b) << 1 | i32::from(c) << 2
    });
    assert_eq!(exited(st), 1);
}

#[test]
fn same_argument_twice_in_one_rule_is_or_like_runc() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],
            "action":"SCMP_ACT_ERRNO","errnoRet":9,
            "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},
                    {"index":0,"value":2,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&f, || {
        let a = getppid_args(1, 0).1 == 9;
        let b = getppid_args(2, 0).1 == 9;
        let c = getppid_args(3, 0).1 == 9;
        i32::from(a) | i32::from(b) << 1 | i32::from(c) << 2
    });
    assert_eq!(exited(st), 3);
}

#[test]
fn several_rules_for_one_syscall_first_match_then_unconditional() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":33},
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":11,
             "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]},
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":22,
             "args":[{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]},
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":44,
             "args":[{"index":0,"value":1,"op":"SCMP_CMP_GE"}]},
            {"names":["getppid"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":100,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap();
    for (arg, want) in [(1u64, 11), (2, 22), (3, 44), (0, 33), (100, 44)] {
        let st = run_filtered(&f, move || {
            let (r, e) = getppid_args(arg, 0);
            if r >= 0 {
                0
            } else {
                e
            }
        });
        assert_eq!(exited(st), want, "getppid({arg})");
    }
}

#[test]
fn allow_rule_before_deny_rule_for_the_same_syscall() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"syscalls":[
            {"names":["exit_group","exit","rt_sigreturn","write"],"action":"SCMP_ACT_ALLOW"},
            {"names":["getppid"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":7,"op":"SCMP_CMP_EQ"}]},
            {"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS",
             "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&f, || {
        if getppid_args(7, 0).0 <= 0 {
            return 1;
        }
        if getppid_args(9, 0).1 != libc::EPERM {
            return 2;
        }
        getppid_args(8, 0);
        3
    });
    assert!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
        "{st:?}"
    );
}

fn single_action_filter(action: &str) -> Filter {
    compile(&profile(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {{"names":["getppid"],"action":"{action}"}}]}}"#
    )))
    .unwrap()
}

#[test]
fn kill_actions_kill_with_sigsys() {
    for action in [
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_KILL",
        "SCMP_ACT_TRAP",
    ] {
        let st = run_filtered(&single_action_filter(action), || {
            getppid_args(0, 0);
            0
        });
        assert!(
            matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{action}: {st:?}"
        );
    }
}

#[test]
fn log_allows_and_trace_without_tracer_is_enosys() {
    let st = run_filtered(&single_action_filter("SCMP_ACT_LOG"), || {
        i32::from(getppid_args(0, 0).0 <= 0)
    });
    assert_eq!(exited(st), 0);
    let st = run_filtered(&single_action_filter("SCMP_ACT_TRACE"), || {
        getppid_args(0, 0).1
    });
    assert_eq!(exited(st), libc::ENOSYS);
}

#[test]
fn install_without_nnp_needs_cap_sys_admin() {
    let f = single_action_filter("SCMP_ACT_KILL_PROCESS");
    // With CAP_SYS_ADMIN (this harness runs as root) it installs without no_new_privs.
    let st = in_child(|| {
        if !caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .unwrap_or(false)
        {
            return 99;
        }
        match f.install() {
            Ok(None) => 0,
            _ => 1,
        }
    });
    match exited(st) {
        99 => {
            println!("SKIPPED: test process lacks CAP_SYS_ADMIN");
            return;
        }
        code => assert_eq!(code, 0),
    }
    // Without it and without no_new_privs: EACCES with a hint.
    let st = in_child(|| {
        caps::drop(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .unwrap();
        match f.install() {
            Err(SeccompError::Install { source, .. })
                if source.raw_os_error() == Some(libc::EACCES) =>
            {
                0
            }
            Err(e) => {
                child_eprintln!("{e}");
                1
            }
            Ok(_) => 2,
        }
    });
    assert_eq!(exited(st), 0);
}

#[test]
fn tsync_filters_other_threads() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_TSYNC"],
            "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":61}]}"#,
    ))
    .unwrap();
    assert_eq!(f.flags(), libc::SECCOMP_FILTER_FLAG_TSYNC);
    let st = in_child(|| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            rx.recv().unwrap();
            getppid_args(0, 0).1
        });
        no_new_privs();
        if f.install().is_err() {
            return 1;
        }
        tx.send(()).unwrap();
        t.join().unwrap()
    });
    assert_eq!(exited(st), 61);
}

#[test]
fn log_and_spec_allow_flags_are_accepted_by_the_kernel() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":62}]}"#,
    ))
    .unwrap();
    assert_eq!(
        f.flags(),
        libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
    assert_eq!(exited(run_filtered(&f, || getppid_args(0, 0).1)), 62);
}

/// i386 syscall through `int 0x80`; returns the raw kernel return value.
fn int80_getpid() -> i64 {
    let ret: i64;
    // SAFETY: i386 getpid (20) takes no arguments and touches no memory; int 0x80 clobbers
    // only rax (and r8-r11 are preserved by the compat entry).
    unsafe {
        std::arch::asm!("int 0x80", inlateout("rax") 20i64 => ret, options(nostack));
    }
    ret
}

#[test]
fn non_native_abi_handling() {
    // Does this kernel run i386 syscalls at all?
    let st = in_child(|| i32::from(int80_getpid() <= 0));
    if !matches!(st, WaitStatus::Exited(_, 0)) {
        println!("SKIPPED: i386 syscall emulation is disabled on this kernel ({st:?})");
        return;
    }
    // Listed i386 with a deny-list profile: ENOSYS, never the permissive default.
    let listed = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&listed, || {
        let r = int80_getpid();
        if r == -(libc::ENOSYS as i64) {
            0
        } else {
            1
        }
    });
    assert_eq!(exited(st), 0);
    // Listed i386 with an allow-list profile: the default action (ERRNO 1).
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
            "syscalls":[{"names":["getpid","exit_group"],"action":"SCMP_ACT_ALLOW"}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&f, || i32::from(int80_getpid() != -(libc::EPERM as i64)));
    assert_eq!(exited(st), 0);
    // Not listed: the process is killed.
    let unlisted = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
    ))
    .unwrap();
    let st = run_filtered(&unlisted, || {
        int80_getpid();
        0
    });
    assert!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
        "{st:?}"
    );
}

#[test]
fn notify_listener_answers_with_an_errno() {
    use nix::sys::socket::{
        recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
        SockFlag, SockType,
    };
    use std::io::IoSlice;
    use std::os::fd::FromRawFd;

    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getppid"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    ))
    .unwrap();
    assert!(f.has_notify());
    assert_ne!(f.flags() & libc::SECCOMP_FILTER_FLAG_NEW_LISTENER, 0);

    let (parent_sock, child_sock) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();

    let handle = std::thread::spawn({
        let parent_sock: OwnedFd = parent_sock;
        move || -> Result<(), String> {
            let mut buf = [0u8; 1];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let msg = recvmsg::<()>(
                parent_sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .map_err(|e| format!("recvmsg: {e}"))?;
            let fd = msg
                .cmsgs()
                .map_err(|e| e.to_string())?
                .find_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                    _ => None,
                })
                .ok_or("no fd received")?;
            // SAFETY: the fd was just received through SCM_RIGHTS and is owned by nobody else.
            let listener = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
            let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: the ioctl fills `req`, which lives for the call.
            let rc = unsafe {
                libc::ioctl(
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    &mut req as *mut libc::seccomp_notif,
                )
            };
            if rc != 0 {
                return Err(format!("NOTIF_RECV: {}", std::io::Error::last_os_error()));
            }
            if req.data.nr != libc::SYS_getppid as i32 || req.data.args[0] != 4242 {
                return Err(format!(
                    "unexpected notification nr {} arg0 {}",
                    req.data.nr, req.data.args[0]
                ));
            }
            let mut resp = libc::seccomp_notif_resp {
                id: req.id,
                val: 0,
                error: -libc::EXDEV,
                flags: 0,
            };
            // SAFETY: the ioctl reads `resp`, which lives for the call.
            let rc = unsafe {
                libc::ioctl(
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_SEND,
                    &mut resp as *mut libc::seccomp_notif_resp,
                )
            };
            if rc != 0 {
                return Err(format!("NOTIF_SEND: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }
    });

    let st = in_child(|| {
        no_new_privs();
        let fd = match f.install() {
            Ok(Some(fd)) => fd,
            _ => return 1,
        };
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        if sendmsg::<()>(
            child_sock.as_raw_fd(),
            &[IoSlice::new(b"x")],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .is_err()
        {
            return 2;
        }
        drop(fd);
        getppid_args(4242, 0).1
    });
    // If the child never sent the listener, closing our end gives the thread EOF instead
    // of leaving it blocked in recvmsg.
    drop(child_sock);
    let answered = handle.join().unwrap();
    assert!(
        answered.is_ok(),
        "listener thread: {answered:?}, child: {st:?}"
    );
    assert_eq!(exited(st), libc::EXDEV);
}

#[test]
fn allowlist_profile_compiles_and_runs() {
    let spec = profile(include_str!("testdata/allowlist-profile.json"));
    let f = compile(&spec).unwrap();
    assert!(f.skipped_syscalls().iter().any(|n| n == "socketcall"));
    assert!(!f.skipped_syscalls().iter().any(|n| n == "read"));
    let st = run_filtered(&f, || {
        // Allowed.
        // SAFETY: no arguments.
        if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
            return 1;
        }
        // Argument rule: personality query allowed, other values denied.
        // SAFETY: query only.
        if unsafe { libc::personality(0xffff_ffff) } < 0 {
            return 2;
        }
        // SAFETY: denied by the filter before the kernel acts on it.
        if unsafe { libc::personality(0x0040_0000) } != -1 || errno() != libc::EPERM {
            return 3;
        }
        // clone3 answered with ENOSYS, so libc falls back to clone.
        // SAFETY: a null clone_args pointer is never dereferenced: the filter answers first.
        if unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) } != -1
            || errno() != libc::ENOSYS
        {
            return 4;
        }
        // Not in the allow-list: default ERRNO 1.
        // SAFETY: acct(NULL) would only turn accounting off; the filter refuses it first.
        if unsafe { libc::syscall(libc::SYS_acct, 0usize) } != -1 || errno() != libc::EPERM {
            return 5;
        }
        // clone: allowed without namespace flags (MASKED_EQ rule), denied with them.
        let flags = (libc::CLONE_NEWUTS | libc::SIGCHLD) as libc::c_ulong;
        // SAFETY: the filter refuses this clone before the kernel acts on it.
        let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
        if r != -1 || errno() != libc::EPERM {
            if r == 0 {
                // SAFETY: we are an unexpected child; leave at once.
                unsafe { libc::_exit(0) };
            }
            return 6;
        }
        // SAFETY: plain fork in a single-threaded child; the grandchild only _exits.
        match unsafe { libc::fork() } {
            // SAFETY: leave the grandchild at once.
            0 => unsafe { libc::_exit(7) },
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: `status` is writable.
                if unsafe { libc::waitpid(pid, &mut status, 0) } != pid
                    || !libc::WIFEXITED(status)
                    || libc::WEXITSTATUS(status) != 7
                {
                    return 8;
                }
            }
            _ => return 9,
        }
        0
    });
    assert_eq!(exited(st), 0);
}

#[test]
fn unknown_names_are_skipped_and_listed() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["no_such_syscall","getppid","arm_fadvise64_64"],"action":"SCMP_ACT_ERRNO"}]}"#,
    ))
    .unwrap();
    assert_eq!(
        f.skipped_syscalls(),
        &[
            "no_such_syscall".to_string(),
            "arm_fadvise64_64".to_string()
        ]
    );
}

#[test]
fn bad_profiles_are_refused_with_clear_errors() {
    let err = |json: &str| -> String {
        match parse_profile(json) {
            Err(e) => e.to_string(),
            Ok(spec) => match compile(&spec) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted: {json}"),
            },
        }
    };
    let e = err(r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#);
    assert!(e.contains("SCMP_ACT_BOGUS"), "{e}");
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],"action":"SCMP_ACT_NOPE"}]}"#,
    );
    assert!(e.contains("SCMP_ACT_NOPE"), "{e}");
    let e = err(r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_BOGUS"]}"#);
    assert!(e.contains("SECCOMP_FILTER_FLAG_BOGUS"), "{e}");
    let e = err(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_VAX"]}"#);
    assert!(e.contains("SCMP_ARCH_VAX"), "{e}");
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_SOMETIMES"}]}]}"#,
    );
    assert!(e.contains("SCMP_CMP_SOMETIMES"), "{e}");
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],
            "action":"SCMP_ACT_KILL_PROCESS","errnoRet":1}]}"#,
    );
    assert!(e.contains("errnoRet") && e.contains("getppid"), "{e}");
    let e = err(r#"{"defaultAction":"SCMP_ACT_ALLOW","defaultErrnoRet":1}"#);
    assert!(e.contains("defaultAction") && e.contains("errnoRet"), "{e}");
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],
            "action":"SCMP_ACT_ERRNO","errnoRet":70000}]}"#,
    );
    assert!(e.contains("70000"), "{e}");
    let e = err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
    assert!(e.contains("NOTIFY"), "{e}");
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],
            "action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    assert!(e.contains("index 6"), "{e}");
    let e = err(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
            "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_ERRNO"}]}"#,
    );
    assert!(e.contains("WAIT_KILLABLE_RECV"), "{e}");
}

#[test]
fn identical_unconditional_rules_and_rules_equal_to_default_are_fine() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO"},
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO"},
            {"names":["getpid"],"action":"SCMP_ACT_ALLOW"}]}"#,
    ))
    .unwrap();
    let single = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getppid"],"action":"SCMP_ACT_ERRNO"}]}"#,
    ))
    .unwrap();
    // The duplicate and the rule equal to the default add nothing.
    assert_eq!(f.program(), single.program());
}

#[test]
fn neighbouring_syscalls_with_one_action_share_an_interval() {
    // read(0), write(1), open(2), close(3): one interval, one `ret`.
    let four = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","write","open","close"],"action":"SCMP_ACT_ALLOW"}]}"#,
    ))
    .unwrap();
    let one = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
    ))
    .unwrap();
    assert_eq!(four.len(), one.len());
}

/// CPU time of the calling thread (robust against a loaded machine, unlike wall time).
fn thread_cpu_time() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(std::time::Duration::from)
        .unwrap()
}

/// Compile-time benchmark for the allow-list profile. Run with
/// `cargo test -p vessel-runtime --release -- --ignored --nocapture bench_compile`.
#[test]
#[ignore]
fn bench_compile_allowlist_profile() {
    let json = include_str!("testdata/allowlist-profile.json");
    let spec = profile(json);
    let f = compile(&spec).unwrap();
    let iters = 2000u32;
    let measure = |what: &str, run: &dyn Fn()| {
        let (wall, cpu) = (std::time::Instant::now(), thread_cpu_time());
        for _ in 0..iters {
            run();
        }
        let cpu = (thread_cpu_time() - cpu) / iters;
        let wall = wall.elapsed() / iters;
        println!(
            "seccomp {what}: {:.1} us CPU ({:.1} us wall) per profile",
            cpu.as_secs_f64() * 1e6,
            wall.as_secs_f64() * 1e6
        );
    };
    measure("compile", &|| {
        std::hint::black_box(compile(std::hint::black_box(&spec)).unwrap());
    });
    measure("parse+compile", &|| {
        std::hint::black_box(compile(&parse_profile(std::hint::black_box(json)).unwrap()).unwrap());
    });
    println!(
        "{} BPF instructions, {} syscall names in the profile",
        f.len(),
        spec.syscalls()
            .iter()
            .flatten()
            .map(|s| s.names().len())
            .sum::<usize>()
    );
}

/// A classic-BPF interpreter for the instructions the compiler emits, used to check the
/// whole decision table of a program against the reference semantics below, for far more
/// inputs than forked children could try. (The kernel runs the same programs in the tests
/// above.)
fn eval(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let i = &prog[pc];
        pc += 1;
        let cond = |c: bool| if c { i.jt as usize } else { i.jf as usize };
        match i.code {
            0x20 => {
                let k = i.k as usize;
                acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
            }
            0x54 => acc &= i.k,
            0x05 => pc += i.k as usize,
            0x15 => pc += cond(acc == i.k),
            0x25 => pc += cond(acc > i.k),
            0x35 => pc += cond(acc >= i.k),
            0x06 => return i.k,
            other => panic!("unexpected BPF opcode {other:#x} at {}", pc - 1),
        }
    }
}

/// The documented semantics, written independently of the compiler.
fn reference(spec: &LinuxSeccomp, nr: u32, args: [u64; 6]) -> u32 {
    let default = action_ret(spec.default_action(), spec.default_errno_ret(), String::new).unwrap();
    let mut uncond = None;
    for sc in spec.syscalls().iter().flatten() {
        if !sc.names().iter().any(|n| syscall_number(n) == Some(nr)) {
            continue;
        }
        let ret = action_ret(sc.action(), sc.errno_ret(), String::new).unwrap();
        if ret == default {
            continue;
        }
        let conds = sc.args().clone().unwrap_or_default();
        if conds.is_empty() {
            uncond.get_or_insert(ret);
            continue;
        }
        let mut indexes: Vec<usize> = conds.iter().map(|c| c.index()).collect();
        indexes.sort();
        indexes.dedup();
        let or = indexes.len() < conds.len();
        let test = |c: &oci_spec::runtime::LinuxSeccompArg| {
            let a = args[c.index()];
            match c.op() {
                LinuxSeccompOperator::ScmpCmpNe => a != c.value(),
                LinuxSeccompOperator::ScmpCmpLt => a < c.value(),
                LinuxSeccompOperator::ScmpCmpLe => a <= c.value(),
                LinuxSeccompOperator::ScmpCmpEq => a == c.value(),
                LinuxSeccompOperator::ScmpCmpGe => a >= c.value(),
                LinuxSeccompOperator::ScmpCmpGt => a > c.value(),
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    a & c.value() == c.value_two().unwrap_or(0)
                }
            }
        };
        let matched = if or {
            conds.iter().any(test)
        } else {
            conds.iter().all(test)
        };
        if matched {
            return ret;
        }
    }
    uncond.unwrap_or(default)
}

fn check_against_reference(spec: &LinuxSeccomp) {
    let f = compile(spec).unwrap();
    let interesting = [
        0u64,
        1,
        2,
        5,
        6,
        7,
        8,
        16,
        17,
        40,
        0x20000,
        0x20008,
        0x7E02_0000,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0006,
        u64::MAX,
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Syscalls with argument rules get many more samples than the rest.
    let with_args: Vec<u32> = spec
        .syscalls()
        .iter()
        .flatten()
        .filter(|sc| sc.args().as_ref().is_some_and(|a| !a.is_empty()))
        .flat_map(|sc| sc.names().iter().filter_map(|n| syscall_number(n)))
        .collect();
    for nr in 0..520u32 {
        let samples = if with_args.contains(&nr) { 4000 } else { 8 };
        for _ in 0..samples {
            let mut args = [0u64; 6];
            for a in args.iter_mut() {
                *a = interesting[(rand() % interesting.len() as u64) as usize];
            }
            assert_eq!(
                eval(f.program(), program::AUDIT_ARCH_X86_64, nr, args),
                reference(spec, nr, args),
                "nr {nr} args {args:x?}"
            );
        }
    }
    // x32 numbers and foreign arches never reach the rules.
    let x32 = eval(f.program(), program::AUDIT_ARCH_X86_64, 0x4000_0000, [0; 6]);
    let i386 = eval(f.program(), program::AUDIT_ARCH_I386, 20, [0; 6]);
    let arm = eval(f.program(), 0xc000_00b7, 20, [0; 6]);
    assert_eq!(arm, libc::SECCOMP_RET_KILL_PROCESS);
    for ret in [x32, i386] {
        assert_ne!(ret, libc::SECCOMP_RET_ALLOW);
    }
}

#[test]
fn allowlist_profile_matches_reference_semantics() {
    check_against_reference(&profile(include_str!("testdata/allowlist-profile.json")));
}

#[test]
fn overlapping_argument_rules_match_reference_semantics() {
    check_against_reference(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getppid","read","mmap"],"action":"SCMP_ACT_ERRNO","errnoRet":3},
            {"names":["getppid","write"],"action":"SCMP_ACT_ERRNO","errnoRet":4,
             "args":[{"index":0,"value":6,"op":"SCMP_CMP_GT"},{"index":1,"value":40,"op":"SCMP_CMP_LE"}]},
            {"names":["getppid","mmap"],"action":"SCMP_ACT_KILL_PROCESS",
             "args":[{"index":2,"value":4294967295,"op":"SCMP_CMP_NE"}]},
            {"names":["read","write","mmap"],"action":"SCMP_ACT_LOG",
             "args":[{"index":3,"value":2114060288,"valueTwo":131072,"op":"SCMP_CMP_MASKED_EQ"}]},
            {"names":["write","close"],"action":"SCMP_ACT_TRAP",
             "args":[{"index":5,"value":8,"op":"SCMP_CMP_LT"},{"index":4,"value":1,"op":"SCMP_CMP_GE"}]},
            {"names":["close"],"action":"SCMP_ACT_ALLOW"},
            {"names":["open","openat","stat"],"action":"SCMP_ACT_TRACE","errnoRet":9},
            {"names":["openat","close"],"action":"SCMP_ACT_ERRNO","errnoRet":12,
             "args":[{"index":0,"value":255,"valueTwo":256,"op":"SCMP_CMP_MASKED_EQ"}]},
            {"names":["stat","close"],"action":"SCMP_ACT_ERRNO","errnoRet":14,
             "args":[{"index":1,"value":7,"op":"SCMP_CMP_EQ"},{"index":1,"value":40,"op":"SCMP_CMP_EQ"}]},
            {"names":["openat"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
             "args":[{"index":0,"value":15,"valueTwo":7,"op":"SCMP_CMP_MASKED_EQ"},
                     {"index":1,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
    ));
}

#[test]
fn notify_with_tsync_and_wait_killable_flags_installs() {
    let f = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "flags":["SECCOMP_FILTER_FLAG_TSYNC","SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
            "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    ))
    .unwrap();
    assert_eq!(
        f.flags(),
        libc::SECCOMP_FILTER_FLAG_TSYNC
            | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            | libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
            | libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH
    );
    let st = run_filtered(&f, || match f.install() {
        // A second listener on the same thread is refused: the first install worked.
        Err(SeccompError::Install { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
            0
        }
        other => {
            child_eprintln!("second install: {other:?}");
            1
        }
    });
    assert_eq!(exited(st), 0);
}

#[test]
fn too_large_profile_is_refused() {
    let rules: Vec<String> = (0..200)
        .map(|i| {
            let args: Vec<String> = (0..6)
                .map(|a| format!(r#"{{"index":{a},"value":{},"op":"SCMP_CMP_GE"}}"#, i + a))
                .collect();
            format!(
                r#"{{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":{},"args":[{}]}}"#,
                i + 1,
                args.join(",")
            )
        })
        .collect();
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{}]}}"#,
        rules.join(",")
    );
    let e = compile(&profile(&json)).unwrap_err();
    assert!(matches!(e, SeccompError::TooLarge(n) if n > 4096), "{e}");
    assert!(e.to_string().contains("4096"), "{e}");
}

/// Per-syscall cost of the allow-list filter (getppid is allowed by it). Run with
/// `cargo test -p vessel-runtime --release -- --ignored --nocapture bench_filter`.
#[test]
#[ignore]
fn bench_filter_overhead() {
    let f = compile(&profile(include_str!("testdata/allowlist-profile.json"))).unwrap();
    let st = in_child(|| {
        let calls = 1_000_000u32;
        let per_call = || {
            let t = thread_cpu_time();
            for _ in 0..calls {
                // SAFETY: no arguments.
                std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
            }
            (thread_cpu_time() - t).as_nanos() as f64 / f64::from(calls)
        };
        let bare = per_call();
        no_new_privs();
        if f.install().is_err() {
            return 1;
        }
        let filtered = per_call();
        child_eprintln!(
            "getppid: {bare:.0} ns without a filter, {filtered:.0} ns with the allow-list filter ({} insns)",
            f.len()
        );
        0
    });
    assert_eq!(exited(st), 0);
}
