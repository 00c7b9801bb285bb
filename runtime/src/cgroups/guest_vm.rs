//! Boots Debian's cloud kernel under qemu (TCG, no KVM) with `cgroup_no_v1=all` and runs the
//! v2 tests of this very test binary inside it, streaming the serial console.

#[path = "../../tests/support/qemu_guest.rs"]
mod qemu_guest;

use qemu_guest::Guest;

#[test]
fn v2_tests_in_qemu_guest() {
    if qemu_guest::in_guest() {
        return; // we are the guest: the v2 tests themselves run instead
    }
    let kernel = match qemu_guest::kernel() {
        Ok(k) => k,
        Err(reason) => {
            skip_test!("{reason}");
            return;
        }
    };
    let exe = std::env::current_exe().unwrap();
    let run = Guest::new("/bin/vessel-cgroup-tests --test-threads=2 cgroups::v2_tests::")
        .binary(&exe, "vessel-cgroup-tests")
        .append("cgroup_no_v1=all")
        // A small NVMe disk for the io controller.
        .nvme_disk(16)
        .run(&kernel);
    run.assert_ok("v2 tests");
    let passed = run.passed();
    assert!(passed >= 11, "only {passed} v2 tests ran");
}
