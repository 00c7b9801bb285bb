//! virtio-net end to end: the test guest's driver (virtio-drivers) talks to vessel's
//! virtio-mmio device, whose frames must appear on the host tap / macvtap and back.

mod common;
mod vm_common;

use std::process::Command;

use vm_common::{guest, ifname, make_tap, test_frame, Netns, PacketSocket, Spawned};

const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x07];
const GUEST_MAC_STR: &str = "02:00:00:00:00:07";
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x09];
const ETH_TEST: u16 = 0x88b5;
const ETH_ECHO: u16 = 0x88b6;

fn tun_available(test: &str) -> bool {
    if std::fs::metadata("/dev/net/tun").is_err() {
        common::skip(test, "/dev/net/tun missing");
        return false;
    }
    true
}

#[test]
fn guest_frames_appear_on_the_tap() {
    let test = "guest_frames_appear_on_the_tap";
    let Some(g) = guest(test) else { return };
    if !tun_available(test) {
        return;
    }
    let name = ifname("vtx");
    let _tap = make_tap(&name);
    let sock = PacketSocket::bind(&name, ETH_TEST).unwrap();
    let net = format!("tap={name},mac={GUEST_MAC_STR}");
    let r = vm_common::run_guest(&g, "net-tx=8", &["--net", &net]);
    assert_eq!(r.code(), 0);
    assert!(r.stdout.contains("net-tx: sent 8 frames"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("mac {GUEST_MAC_STR}")),
        "{}",
        r.stdout
    );
    for seq in 0..8 {
        let f = sock.recv().expect("frame from the guest");
        assert_eq!(f, test_frame(GUEST_MAC, seq, ETH_TEST), "frame {seq}");
    }
}

#[test]
fn tap_frames_reach_the_guest_and_come_back() {
    let test = "tap_frames_reach_the_guest_and_come_back";
    let Some(g) = guest(test) else { return };
    if !tun_available(test) {
        return;
    }
    let name = ifname("vrx");
    let _tap = make_tap(&name);
    let sock = PacketSocket::bind(&name, ETH_ECHO).unwrap();
    let tx = PacketSocket::bind(&name, ETH_TEST).unwrap();
    let vm = Spawned::new(Command::new(common::bin("vessel-vm")).args([
        "run",
        "--kernel",
        g.to_str().unwrap(),
        "--cmdline",
        "net-echo=4",
        "--net",
        &format!("tap={name}"),
        "--timeout",
        "60",
    ]));
    assert!(
        vm.wait_for("net-echo: ready").is_some(),
        "guest never got ready"
    );
    for seq in 0..4 {
        tx.send(&test_frame(PEER_MAC, seq, ETH_TEST)).unwrap();
        let back = sock.recv().expect("echo from the guest");
        assert_eq!(back, test_frame(PEER_MAC, seq, ETH_ECHO), "echo {seq}");
    }
    assert!(vm.wait_for("net-echo: ok").is_some());
    let mut vm = vm;
    assert_eq!(vm.child.wait().unwrap().code(), Some(0));
}

#[test]
fn macvtap_over_veth_in_a_netns() {
    let test = "macvtap_over_veth_in_a_netns";
    let Some(g) = guest(test) else { return };
    let ns = Netns::new(&common::unique_id("vessel-vmnet"));
    let n = ns.0.as_str();
    vm_common::ip(&[
        "-n", n, "link", "add", "va", "type", "veth", "peer", "name", "vb",
    ]);
    if Command::new("ip")
        .args([
            "-n", n, "link", "add", "link", "va", "name", "mvt", "type", "macvtap", "mode",
            "bridge",
        ])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        common::skip(
            test,
            "cannot create a macvtap link (kernel module missing?)",
        );
        return;
    }
    for l in ["va", "vb", "mvt"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{l}/disable_ipv6"), "1");
        vm_common::ip(&["-n", n, "link", "set", l, "up"]);
    }
    let frames = PacketSocket::bind_in_netns(n, "vb", ETH_TEST).unwrap();
    let echoes = PacketSocket::bind_in_netns(n, "vb", ETH_ECHO).unwrap();

    let mac_arg = format!("macvtap=mvt,mac={GUEST_MAC_STR}");
    let gs = g.to_str().unwrap();
    let r = vm_common::vessel_vm(
        &[
            "run",
            "--kernel",
            gs,
            "--cmdline",
            "net-tx=3",
            "--net",
            &mac_arg,
        ],
        b"",
    );
    // vessel-vm must run inside the namespace to see the macvtap; the run above (outside)
    // must fail cleanly, naming the link.
    assert_eq!(r.code(), 1);
    assert!(r.stderr.contains("mvt"), "{}", r.stderr);

    // Guest -> host: the guest's frames leave through the macvtap's lower veth end.
    let out = Command::new("ip")
        .args(["netns", "exec", n])
        .arg(common::bin("vessel-vm"))
        .args([
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--cmdline",
            "net-tx=3",
        ])
        .args([
            "--net",
            &format!("macvtap=mvt,mac={GUEST_MAC_STR}"),
            "--timeout",
            "60",
        ])
        .output()
        .unwrap();
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    for seq in 0..3 {
        let f = frames.recv().expect("guest frame on the veth peer");
        assert_eq!(f, test_frame(GUEST_MAC, seq, ETH_TEST));
    }

    // Host -> guest -> host through the macvtap.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", n])
        .arg(common::bin("vessel-vm"))
        .args([
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--cmdline",
            "net-echo=2",
        ])
        .args([
            "--net",
            &format!("macvtap=mvt,mac={GUEST_MAC_STR}"),
            "--timeout",
            "60",
        ]);
    let vm = Spawned::new(&mut cmd);
    assert!(vm.wait_for("net-echo: ready").is_some());
    for seq in 0..2 {
        frames_send(&frames, seq);
        let back = echoes.recv().expect("echo through the macvtap");
        assert_eq!(back, test_frame(PEER_MAC, seq, ETH_ECHO));
    }
    let mut vm = vm;
    assert_eq!(vm.child.wait().unwrap().code(), Some(0));
}

fn frames_send(sock: &PacketSocket, seq: u32) {
    sock.send(&test_frame(PEER_MAC, seq, ETH_TEST)).unwrap();
}

/// `vessel-vm` with every capability dropped (bounding set, inheritable, ambient; uid 0 but
/// no privileges after exec), through setpriv(1).
fn without_capabilities(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(common::bin("vessel-vm"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_vmm_needs_no_capability() {
    let test = "the_vmm_needs_no_capability";
    let Some(g) = guest(test) else { return };
    if !tun_available(test) {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        common::skip(test, "setpriv (util-linux) missing");
        return;
    }
    let g = g.to_str().unwrap();
    // The tap exists already (an operator's or a libvirt-style setup's job); the VMM only
    // opens /dev/kvm and /dev/net/tun and attaches to it.
    let name = ifname("vcap");
    let _tap = make_tap(&name);
    let sock = PacketSocket::bind(&name, ETH_TEST).unwrap();
    let net = format!("tap={name},mac={GUEST_MAC_STR}");
    let out = without_capabilities(&["run", "--kernel", g, "--cmdline", "net-tx=3", "--net", &net]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("net-tx: sent 3 frames"), "{stdout}");
    for seq in 0..3 {
        assert_eq!(
            sock.recv().expect("frame"),
            test_frame(GUEST_MAC, seq, ETH_TEST)
        );
    }
    // Creating a tap is what needs CAP_NET_ADMIN: refused clearly, nothing left behind.
    let missing = ifname("vcapm");
    let out = without_capabilities(&[
        "run",
        "--kernel",
        g,
        "--cmdline",
        "net-tx=1",
        "--net",
        &format!("tap={missing}"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{missing}")).exists(),
        "{missing} left behind"
    );
}
