//! The container's terminal: pty master over --console-socket, for the init and exec.
mod common;
mod runtime_support;

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use runtime_support::*;
use serde_json::json;

/// Receives one fd sent with SCM_RIGHTS.
fn recv_fd(listener: &UnixListener) -> OwnedFd {
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed this fd for us.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd received");
}

/// Reads the pty master until the slave side is gone (EIO).
fn read_all(master: OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("read pty: {e}"),
        }
    }
    String::from_utf8_lossy(&out).replace("\r\n", "\n")
}

#[test]
fn console_socket_gets_the_pty_master() {
    let Some(env) = setup("console_socket_gets_the_pty_master") else {
        return;
    };
    let id = common::unique_id("tty");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut cfg = env.config_with_args(&[
        "sh",
        "-c",
        "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo TTY-YES; tty; stty size; \
         [ -c /dev/console ] || mount | grep -q ' /dev/console ' && echo CONSOLE-OK",
    ]);
    cfg["process"]["terminal"] = json!(true);
    cfg["process"]["consoleSize"] = json!({"height": 40, "width": 100});
    env.write_config(&cfg);
    let out = env.vessel_b("create", &["--console-socket", sock.to_str().unwrap()], &id);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let master = recv_fd(&listener);
    let out = env.vessel(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    let text = read_all(master);
    assert!(text.contains("TTY-YES"), "{text:?}");
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("40 100"), "{text:?}");
    assert!(text.contains("CONSOLE-OK"), "{text:?}");
    env.wait_status(&id, "stopped");
    let out = env.vessel(&["delete", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
}

#[test]
fn exec_with_tty() {
    let Some(env) = setup("exec_with_tty") else {
        return;
    };
    let id = common::unique_id("etty");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("run", &["--detach"], &id);
    assert!(out.status.success(), "run: {}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let out = env.vessel(&[
        "exec",
        "--tty",
        "--detach",
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "[ -t 0 ] && echo EXEC-TTY; tty",
    ]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    let text = read_all(recv_fd(&listener));
    assert!(text.contains("EXEC-TTY"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");
    // Without a console socket, a tty exec is refused.
    let out = env.vessel(&["exec", "--tty", "--detach", &id, "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("console-socket"), "{}", stderr(&out));
}

#[test]
fn foreground_run_and_exec_relay_the_pty() {
    let Some(env) = setup("foreground_run_and_exec_relay_the_pty") else {
        return;
    };
    let id = common::unique_id("fgtty");
    let mut cfg = env.config_with_args(&[
        "sh",
        "-c",
        "[ -t 0 ] && [ -t 1 ] && echo RUN-TTY; tty; exit 4",
    ]);
    cfg["process"]["terminal"] = json!(true);
    env.write_config(&cfg);
    // No --console-socket: vessel relays the pty to its own stdout.
    let out = env.vessel_b("run", &[], &id);
    assert_eq!(out.status.code(), Some(4), "run: {}", stderr(&out));
    let text = stdout(&out).replace("\r\n", "\n");
    assert_eq!(text, "RUN-TTY\n/dev/pts/0\n");
    assert!(!env.state_dir(&id).exists());
    let leftovers: Vec<_> = std::fs::read_dir(env.root_path())
        .unwrap()
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "left in root: {leftovers:?}");

    let id = common::unique_id("fgtty");
    env.write_config(&env.config_with_args(&["sleep", "1000"]));
    let out = env.vessel_b("run", &["--detach"], &id);
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    let out = env.vessel(&[
        "exec",
        "-t",
        &id,
        "sh",
        "-c",
        "[ -t 0 ] && echo EXEC-TTY; exit 6",
    ]);
    assert_eq!(out.status.code(), Some(6), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out).replace("\r\n", "\n"), "EXEC-TTY\n");
}
