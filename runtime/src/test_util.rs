//! Helpers for unit tests that must change process-wide state: they run the change in a
//! forked child so the test harness itself is never altered.

/// `eprintln!` for forked children: the harness's output capture does not survive fork,
/// so this writes straight to fd 2.
macro_rules! child_eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Marks the running test as skipped: prints `SKIPPED: reason` and appends
/// `<test>: <reason>` to `$VESSEL_SKIP_LOG` (set by `.ci/test`), so the run's closing line
/// counts it as skipped rather than passed. The caller returns right after.
macro_rules! skip_test {
    ($($arg:tt)*) => {
        $crate::test_util::record_skip(&format!($($arg)*))
    };
}

/// See [`skip_test!`].
pub(crate) fn record_skip(reason: &str) {
    use std::io::Write as _;
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    println!("SKIPPED: {reason}");
    if let Some(path) = std::env::var_os("VESSEL_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// Runs `f` in a forked child and waits for it. The child exits with `f`'s return value
/// (101 if it panicked). Returns the child's wait status.
pub(crate) fn in_child<F: FnOnce() -> i32>(f: F) -> WaitStatus {
    // SAFETY: the child only runs `f` and then `_exit`s; glibc's malloc is fork-safe, and the
    // test closures use no locks another harness thread could hold.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: _exit never returns and skips atexit handlers that belong to the harness.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
    }
}

/// Runs `f` in a child and asserts that it exited with status 0.
pub(crate) fn assert_child_ok<F: FnOnce() -> i32>(f: F) {
    match in_child(f) {
        WaitStatus::Exited(_, 0) => {}
        other => panic!("child failed: {other:?}"),
    }
}

/// The calling thread's errno after a failed libc call.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
