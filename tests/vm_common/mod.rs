//! Helpers for the `vessel-vm` end-to-end tests: fixtures, running the binary, network
//! namespaces/links with cleanup guards, and raw packet sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::common;

/// The bare-metal test guest built by fixtures/guest.sh, or None after recording a skip.
pub fn guest(test: &str) -> Option<PathBuf> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        common::skip(test, "/dev/kvm cannot be opened");
        return None;
    }
    let p = common::fixtures().join("guest/vessel-test-guest");
    if !p.exists() {
        common::skip(test, "test guest missing: run fixtures/guest.sh");
        return None;
    }
    Some(p)
}

/// Output of one `vessel-vm` run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// `vessel-vm` with `args` and `stdin` as input; a 60 s --timeout guards against hangs
/// unless `args` set their own.
pub fn vessel_vm(args: &[&str], stdin: &[u8]) -> Run {
    let mut cmd = Command::new(common::bin("vessel-vm"));
    cmd.args(args);
    if args.first() == Some(&"run") && !args.contains(&"--timeout") {
        cmd.args(["--timeout", "60"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vessel-vm");
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().expect("wait vessel-vm");
    let run = Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    eprintln!(
        "vessel-vm {args:?} -> {:?}\nstdout:\n{}\nstderr:\n{}",
        run.status, run.stdout, run.stderr
    );
    run
}

/// Run the test guest with `cmdline` and extra arguments.
pub fn run_guest(guest: &std::path::Path, cmdline: &str, extra: &[&str]) -> Run {
    let g = guest.to_str().unwrap();
    let mut args = vec!["run", "--kernel", g, "--cmdline", cmdline];
    args.extend_from_slice(extra);
    vessel_vm(&args, b"")
}

/// A running `vessel-vm` whose stdout is read line by line.
pub struct Spawned {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Spawned {
    pub fn new(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("guest| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines: rx }
    }

    /// Wait for a line containing `needle`; None if stdout closes first (the process's own
    /// --timeout bounds the wait).
    pub fn wait_for(&self, needle: &str) -> Option<String> {
        self.lines.iter().find(|l| l.contains(needle))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `ip` with `args`, panicking on failure.
pub fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed: {st}");
}

/// A network interface deleted on drop.
pub struct Link(pub String);
impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// A network namespace deleted on drop (with everything in it).
pub struct Netns(pub String);
impl Netns {
    pub fn new(name: &str) -> Self {
        ip(&["netns", "add", name]);
        Netns(name.into())
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A persistent tap with IPv6 off (no router solicitations in the way), up.
pub fn make_tap(name: &str) -> Link {
    ip(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"]);
    let link = Link(name.into());
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    ip(&["link", "set", name, "up"]);
    link
}

/// Interface name unique to this test process (at most 15 bytes).
pub fn ifname(prefix: &str) -> String {
    let id = common::unique_id(prefix).replace('-', "");
    id.chars().take(15).collect()
}

/// A raw AF_PACKET socket bound to one interface and EtherType.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Bind to `ifname` for `ethertype`, in the network namespace of the calling thread.
    pub fn bind(ifname: &str, ethertype: u16) -> std::io::Result<Self> {
        let proto = ethertype.to_be() as i32;
        // SAFETY: plain socket(2).
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 20,
            tv_usec: 0,
        };
        // SAFETY: setting a receive timeout with a valid timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Self { fd, ifindex })
    }

    /// Bind inside the named network namespace (from a helper thread that enters it).
    pub fn bind_in_netns(netns: &str, ifname: &str, ethertype: u16) -> std::io::Result<Self> {
        let path = format!("/run/netns/{netns}");
        let ifname = ifname.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path)?;
            // SAFETY: setns on a netns fd affects only this helper thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            PacketSocket::bind(&ifname, ethertype)
        })
        .join()
        .expect("netns helper thread")
    }

    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: sending from a valid buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Next frame (the socket has a 20 s receive timeout).
    pub fn recv(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: receiving into a valid buffer.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }
}

/// Test frame number `seq` as the guest builds it (see fixtures/guest/src/net.rs).
pub fn test_frame(src: [u8; 6], seq: u32, ethertype: u16) -> Vec<u8> {
    let mut f = vec![0u8; 128];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f[14..24].copy_from_slice(b"vessel-net");
    f[24..28].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[28..].iter_mut().enumerate() {
        *b = (seq as usize * 7 + i) as u8;
    }
    f
}
