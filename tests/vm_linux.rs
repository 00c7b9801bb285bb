//! Booting Debian's cloud kernel (boot-protocol test). On this host's nested kvm_pvm every
//! guest-kernel instruction goes through KVM's emulator, so Linux gets as far as its early
//! boot messages in tens of seconds and never reaches /init; the tests check what can be
//! checked: the zero page (or, through the PVH entry, the start info), e820 map, command
//! line and ACPI RSDP reach the kernel (its banner and "Command line" echo arrive on the
//! serial console), and a bzImage loads and runs.

mod common;
mod vm_common;

use std::process::Command;

use vm_common::Spawned;

fn kernel(test: &str, file: &str, fixture: &str) -> Option<std::path::PathBuf> {
    vm_common::guest(test)?; // checks /dev/kvm
    let p = common::fixtures().join("kernel").join(file);
    if !p.exists() {
        common::skip(
            test,
            &format!("{} missing: run fixtures/{fixture}", p.display()),
        );
        return None;
    }
    Some(p)
}

/// Boot Debian's vmlinux with `--boot BOOT` and check that the boot data reached it.
fn linux_elf_banner_and_boot_data(test: &str, boot: &str) {
    let Some(k) = kernel(test, "vmlinux", "vmlinux.sh") else {
        return;
    };
    let vm = Spawned::new(Command::new(common::bin("vessel-vm")).args([
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--boot",
        boot,
        "--cmdline",
        "console=ttyS0 earlyprintk=serial reboot=k panic=-1 vessel.test=1",
        "--memory",
        "256M",
        "--timeout",
        "600",
    ]));
    let banner = vm
        .wait_for("Linux version")
        .expect("no Linux banner on the serial console");
    assert!(banner.contains("cloud-amd64"), "{banner}");
    let cmdline = vm.wait_for("Command line:").expect("no command line echo");
    assert!(cmdline.contains("vessel.test=1"), "{cmdline}");
    // From the zero page's e820 table, or PVH's memory map (which Linux prints the same way).
    let e820 = vm
        .wait_for("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable")
        .is_some();
    assert!(e820, "the e820 map did not describe 256 MiB from 1 MiB");
    // The kernel finds vessel's ACPI tables through boot_params.acpi_rsdp_addr, or PVH's
    // rsdp_paddr.
    let rsdp = vm.wait_for("ACPI: RSDP").expect("no ACPI RSDP line");
    assert!(rsdp.contains("VESSEL"), "{rsdp}");
    assert!(vm.wait_for("ACPI: DSDT").is_some(), "DSDT not found");
    assert!(vm.wait_for("ACPI: APIC").is_some(), "MADT not found");
    // Dropping `vm` stops the VM (the kernel would not reach /init here anyway).
}

#[test]
fn linux_elf_prints_banner_and_boot_protocol_data() {
    linux_elf_banner_and_boot_data("linux_elf_prints_banner_and_boot_protocol_data", "linux");
}

#[test]
fn linux_elf_boots_through_its_pvh_entry() {
    // Debian's kernel has CONFIG_PVH: `--boot auto` would pick PVH too; say it explicitly.
    linux_elf_banner_and_boot_data("linux_elf_boots_through_its_pvh_entry", "pvh");
}

#[test]
fn bzimage_has_no_pvh_entry() {
    let test = "bzimage_has_no_pvh_entry";
    let Some(k) = kernel(test, "vmlinuz", "kernel.sh") else {
        return;
    };
    let r = vm_common::vessel_vm(
        &["run", "--kernel", k.to_str().unwrap(), "--boot", "pvh"],
        b"",
    );
    assert_eq!(r.code(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("has no PVH entry"), "{}", r.stderr);
}

#[test]
fn bzimage_loads_and_runs_until_the_timeout() {
    let test = "bzimage_loads_and_runs_until_the_timeout";
    let Some(k) = kernel(test, "vmlinuz", "kernel.sh") else {
        return;
    };
    let r = vm_common::vessel_vm(
        &[
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
            "--memory",
            "256M",
            "--timeout",
            "8",
        ],
        b"",
    );
    // Timeout (not a crash): the decompressor is still running, somewhere above the
    // 1 MiB load address.
    assert_eq!(r.code(), 124, "{}", r.stderr);
    let rip = r
        .stderr
        .split("vCPU0 at RIP 0x")
        .nth(1)
        .and_then(|s| {
            u64::from_str_radix(s.trim_end_matches(|c: char| !c.is_ascii_hexdigit()), 16).ok()
        })
        .expect("RIP in the timeout message");
    assert!(rip >= 0x10_0000, "RIP {rip:#x}");
}
