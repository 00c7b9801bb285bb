//! End-to-end tests of `vessel-vm` with the bare-metal test guest: serial console, port and
//! MMIO dispatch, SMP, exit statuses, crashes, timeouts and bad input.

mod common;
mod vm_common;

use vm_common::{guest, run_guest, vessel_vm};

#[test]
fn hello_prints_and_shuts_down() {
    let Some(g) = guest("hello_prints_and_shuts_down") else {
        return;
    };
    let r = run_guest(&g, "hello", &["--console", "stdio"]);
    assert_eq!(r.code(), 0);
    assert!(r.stdout.starts_with("vessel-guest: ready"), "{}", r.stdout);
    // The guest has a PVH entry note, which `--boot auto` (the default) prefers.
    assert!(
        r.stdout
            .contains("Hello from the vessel test guest (entered via PVH)"),
        "{}",
        r.stdout
    );
}

#[test]
fn boot_protocol_can_be_chosen() {
    let Some(g) = guest("boot_protocol_can_be_chosen") else {
        return;
    };
    let r = run_guest(&g, "hello", &["--boot", "linux"]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("(entered via the 64-bit Linux boot protocol)"),
        "{}",
        r.stdout
    );
    let r = run_guest(&g, "hello", &["--boot", "pvh"]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert!(r.stdout.contains("(entered via PVH)"), "{}", r.stdout);
    // Every vCPU through the PVH entry at once, and through the 64-bit one.
    for boot in ["pvh", "linux"] {
        let r = run_guest(
            &g,
            "smp",
            &["--cpus", "3", "--direct-ap-start", "--boot", boot],
        );
        assert_eq!(r.code(), 0, "{boot}: {}", r.stdout);
        assert!(r.stdout.contains("smp: 3 cpus up"), "{boot}: {}", r.stdout);
    }
    let r = run_guest(&g, "hello", &["--boot", "efi"]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr.contains("invalid boot protocol"), "{}", r.stderr);
}

#[test]
fn debug_exit_code_is_the_exit_status() {
    let Some(g) = guest("debug_exit_code_is_the_exit_status") else {
        return;
    };
    assert_eq!(run_guest(&g, "exit=7", &[]).code(), 7);
    assert_eq!(run_guest(&g, "exit=42", &["--memory", "64M"]).code(), 42);
    // A non-zero status never wraps to success.
    assert_eq!(run_guest(&g, "exit=256", &[]).code(), 255);
}

#[test]
fn port_io_of_each_size_reaches_the_test_device() {
    let Some(g) = guest("port_io_of_each_size_reaches_the_test_device") else {
        return;
    };
    let r = run_guest(&g, "pio", &[]);
    assert!(r.stdout.contains("pio: ok"), "{}", r.stdout);
    assert_eq!(r.code(), 0);
}

#[test]
fn mmio_of_each_size_reaches_the_test_device() {
    let Some(g) = guest("mmio_of_each_size_reaches_the_test_device") else {
        return;
    };
    let r = run_guest(&g, "mmio", &[]);
    assert!(r.stdout.contains("mmio: ok"), "{}", r.stdout);
    assert_eq!(r.code(), 0);
}

#[test]
fn every_vcpu_runs_with_its_own_apic_id() {
    let Some(g) = guest("every_vcpu_runs_with_its_own_apic_id") else {
        return;
    };
    for (n, ids) in [(1, "0"), (2, "0 1"), (4, "0 1 2 3")] {
        let cpus = n.to_string();
        let r = run_guest(&g, "smp", &["--cpus", &cpus, "--direct-ap-start"]);
        assert_eq!(r.code(), 0, "{n} cpus");
        assert!(
            r.stdout
                .contains(&format!("smp: {n} cpus up, apic ids: {ids}\r\n")),
            "{}",
            r.stdout
        );
    }
}

#[test]
fn triple_fault_is_a_crash() {
    let Some(g) = guest("triple_fault_is_a_crash") else {
        return;
    };
    let r = run_guest(&g, "crash", &[]);
    assert_eq!(r.code(), 125);
    assert!(r.stderr.contains("triple fault"), "{}", r.stderr);
}

#[test]
fn timeout_stops_a_spinning_guest() {
    let Some(g) = guest("timeout_stops_a_spinning_guest") else {
        return;
    };
    let r = run_guest(&g, "spin", &["--timeout", "1", "--cpus", "2"]);
    assert_eq!(r.code(), 124);
    assert!(r.stderr.contains("timeout"));
}

#[test]
fn unknown_test_word_reports_failure() {
    let Some(g) = guest("unknown_test_word_reports_failure") else {
        return;
    };
    let r = run_guest(&g, "nothing-here", &[]);
    assert_eq!(r.code(), 3);
    assert!(r
        .stdout
        .contains("no test on the command line: nothing-here"));
}

#[test]
fn console_goes_to_a_file_or_nowhere() {
    let Some(g) = guest("console_goes_to_a_file_or_nowhere") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let spec = format!("file:{}", log.display());
    let r = run_guest(&g, "hello", &["--console", &spec]);
    assert_eq!(r.code(), 0);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Hello from the vessel test guest"), "{text}");
    let r = run_guest(&g, "hello", &["--console", "none"]);
    assert_eq!(r.code(), 0);
    assert!(r.stdout.is_empty());
}

#[test]
fn console_input_reaches_the_guest() {
    let Some(g) = guest("console_input_reaches_the_guest") else {
        return;
    };
    let gs = g.to_str().unwrap();
    let r = vessel_vm(&["run", "--kernel", gs, "--cmdline", "echo"], b"hello vm\n");
    assert_eq!(r.code(), 0);
    assert!(r.stdout.contains("HELLO VM"), "{}", r.stdout);
    assert!(r.stdout.contains("echo: done"));
}

#[test]
fn json_config_and_flag_overrides() {
    let Some(g) = guest("json_config_and_flag_overrides") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vm.json");
    let json = serde_json::json!({
        "kernel": g, "cmdline": "exit=9", "vcpus": 2, "memory_mib": 64, "console": "stdio"
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let c = cfg.to_str().unwrap();
    assert_eq!(vessel_vm(&["run", "--config", c], b"").code(), 9);
    assert_eq!(
        vessel_vm(&["run", "--config", c, "--cmdline", "exit=5"], b"").code(),
        5
    );
    std::fs::write(&cfg, r#"{"kernel":"/k","bogus":1}"#).unwrap();
    let r = vessel_vm(&["run", "--config", c], b"");
    assert_eq!(r.code(), 1);
    assert!(r.stderr.contains("parsing VM config"), "{}", r.stderr);
}

#[test]
fn toml_config_boots_the_guest() {
    let Some(g) = guest("toml_config_boots_the_guest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "kernel = {:?}\ncmdline = \"exit=7\"\nvcpus = 2\nmemory_mib = 64\nconsole = \"stdio\"\n",
            g
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let r = vessel_vm(&["run", "--config", c], b"");
    assert_eq!(r.code(), 7, "{}", r.stderr);
    assert!(r.stdout.contains("vessel-guest: ready"), "{}", r.stdout);
    std::fs::write(&cfg, format!("kernel = {g:?}\nbogus = 1\n")).unwrap();
    let r = vessel_vm(&["run", "--config", c], b"");
    assert_eq!(r.code(), 1);
    assert!(r.stderr.contains("parsing VM config"), "{}", r.stderr);
    assert!(r.stderr.contains("bogus"), "{}", r.stderr);
}

#[test]
fn bad_kernel_images_are_rejected_clearly() {
    let Some(g) = guest("bad_kernel_images_are_rejected_clearly") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"definitely not a kernel").unwrap();
    let r = vessel_vm(&["run", "--kernel", junk.to_str().unwrap()], b"");
    assert_eq!(r.code(), 1);
    assert!(r.stderr.contains("is not a kernel image"), "{}", r.stderr);

    let truncated = dir.path().join("truncated");
    let elf = std::fs::read(&g).unwrap();
    std::fs::write(&truncated, &elf[..200]).unwrap();
    let r = vessel_vm(&["run", "--kernel", truncated.to_str().unwrap()], b"");
    assert_eq!(r.code(), 1);
    assert!(r.stderr.contains("loading ELF kernel"), "{}", r.stderr);

    let missing = dir.path().join("missing");
    let r = vessel_vm(&["run", "--kernel", missing.to_str().unwrap()], b"");
    assert_eq!(r.code(), 1);
    assert!(r.stderr.contains("No such file"), "{}", r.stderr);

    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let r = vessel_vm(
        &["run", "--kernel", big.to_str().unwrap(), "--memory", "4M"],
        b"",
    );
    assert_eq!(r.code(), 1);
    assert!(r.stderr.contains("does not fit in 4 MiB"), "{}", r.stderr);
}

#[test]
fn bad_sizes_are_rejected_and_leave_no_tap_behind() {
    let Some(g) = guest("bad_sizes_are_rejected_and_leave_no_tap_behind") else {
        return;
    };
    let gs = g.to_str().unwrap();
    let tap = vm_common::ifname("vbad");
    let net = format!("tap={tap}");
    for (args, msg) in [
        (vec!["--cpus", "0"], "invalid vCPU count 0"),
        (
            vec!["--cpus", "255"],
            "invalid vCPU count 255: must be between 1 and",
        ),
        (vec!["--memory", "0"], "at least 1 MiB"),
        (vec!["--memory", "100000G"], "exceeds the host"),
        (vec!["--memory", "12X"], "invalid memory size"),
        (vec!["--console", "tty"], "invalid console"),
        (vec!["--net", "bridge=br0"], "invalid --net"),
    ] {
        let mut a = vec!["run", "--kernel", gs, "--cmdline", "hello", "--net", &net];
        a.extend_from_slice(&args);
        let r = vessel_vm(&a, b"");
        assert_eq!(r.code(), 1, "{args:?}");
        assert!(r.stderr.contains(msg), "{args:?}: {}", r.stderr);
        assert!(
            !std::path::Path::new(&format!("/sys/class/net/{tap}")).exists(),
            "{args:?} left tap {tap} behind"
        );
    }
}

#[test]
fn help_shows_examples_and_exit_statuses() {
    let r = vessel_vm(&["run", "--help"], b"");
    assert_eq!(r.code(), 0);
    assert!(r.stdout.contains("Examples:"));
    assert!(r.stdout.contains("124"));
}

/// The benchmark's peer boots the same ELF through its PVH note (32-bit entry, the guest's
/// own page tables), which checks the guest's second entry path.
#[test]
fn qemu_microvm_boots_the_same_guest_via_pvh() {
    let test = "qemu_microvm_boots_the_same_guest_via_pvh";
    let Some(g) = guest(test) else { return };
    let qemu = std::path::Path::new("/usr/bin/qemu-system-x86_64");
    if !qemu.exists() {
        common::skip(test, "qemu-system-x86_64 missing: run fixtures/qemu.sh");
        return;
    }
    let out = std::process::Command::new(qemu)
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off",
            "-enable-kvm",
            "-cpu",
            common::QEMU_CPU,
        ])
        .args(["-m", "128M", "-nodefaults", "-no-user-config", "-nographic"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
        .arg(&g)
        .args(["-append", "exit=5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("vessel-guest: ready"), "{stdout}");
    // isa-debug-exit: status (code << 1) | 1.
    assert_eq!(out.status.code(), Some(11));
}
