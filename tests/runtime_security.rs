//! Security settings seen from inside the container: seccomp, capabilities, the seccomp
//! notify listener hand-off.
mod common;
mod runtime_support;

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use runtime_support::*;
use serde_json::json;

#[test]
fn seccomp_errno_rule_applies_inside() {
    let Some(env) = setup("seccomp_errno_rule_applies_inside") else {
        return;
    };
    let id = common::unique_id("sec");
    let mut cfg = env.config_with_args(&[
        "sh",
        "-c",
        "mkdir /dev/shm/d 2>/dev/null && echo mkdir-ok || echo mkdir-denied; \
         grep Seccomp: /proc/self/status",
    ]);
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    env.write_config(&cfg);
    let out = env.vessel_b("run", &[], &id);
    assert!(out.status.success(), "run: {}", stderr(&out));
    assert_eq!(stdout(&out), "mkdir-denied\nSeccomp:\t2\n");
    // A bad profile fails create before anything exists.
    cfg["linux"]["seccomp"]["syscalls"][0]["names"] = json!(["no_such_syscall_xyz"]);
    cfg["linux"]["seccomp"]["defaultAction"] = json!("SCMP_ACT_BOGUS");
    env.write_config(&cfg);
    let id = common::unique_id("sec");
    let out = env.vessel_b("create", &[], &id);
    assert_eq!(out.status.code(), Some(1));
    assert!(!env.state_dir(&id).exists());
}

#[test]
fn capabilities_are_limited_inside() {
    let Some(env) = setup("capabilities_are_limited_inside") else {
        return;
    };
    let id = common::unique_id("caps");
    env.write_config(&env.config_with_args(&[
        "sh",
        "-c",
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status",
    ]));
    let out = env.vessel_b("run", &[], &id);
    assert!(out.status.success(), "run: {}", stderr(&out));
    // CAP_AUDIT_WRITE(29) | CAP_KILL(5) | CAP_NET_BIND_SERVICE(10), as the fixture says.
    assert_eq!(
        stdout(&out),
        "CapEff:\t0000000020000420\nCapBnd:\t0000000020000420\n"
    );
}

#[test]
fn seccomp_notify_listener_gets_the_fd_and_state() {
    let Some(env) = setup("seccomp_notify_listener_gets_the_fd_and_state") else {
        return;
    };
    let id = common::unique_id("notify");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("listener.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut cfg = env.config_with_args(&["sleep", "1000"]);
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock.to_str().unwrap(),
        "listenerMetadata": "meta-42",
        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_NOTIFY"}]
    });
    env.write_config(&cfg);
    let out = env.vessel_b("create", &[], &id);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let (conn, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 16384];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut got_fd = false;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            got_fd = !fds.is_empty();
            for f in fds {
                // SAFETY: the kernel installed these fds for us; close them.
                unsafe { libc::close(f) };
            }
        }
    }
    let n = msg.bytes;
    let payload: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert!(got_fd, "no listener fd");
    assert_eq!(payload["metadata"], "meta-42");
    assert_eq!(payload["state"]["id"], id.as_str());
    assert_eq!(payload["fds"][0], "seccompFd");
    let out = env.vessel(&["delete", "--force", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
}
