//! Joining the container's cgroups without waiting for an RCU grace period.
//!
//! Writing a pid to `cgroup.procs` takes the kernel's `cgroup_threadgroup_rwsem` for
//! writing, and after a quiet spell that first waits for an RCU grace period (its
//! `rcu_sync` is idle). Measured on this host: 4–17 ms for the first `cgroup.procs` write
//! of a container start, ~0.05 ms for the next ones — the largest single cost of a start
//! (crun and runc pay it). Two ways in need no write lock, so no grace period:
//!
//! - cgroup v2: the init is *born* in its cgroup, `clone3(CLONE_INTO_CGROUP)` with an fd of
//!   the directory ([`SelfJoin::v2_dir`]); `fork` takes the lock for reading only;
//! - cgroup v1: a task moving *itself* (`echo 0 > tasks`) skips the lock, since `current`
//!   can neither exit nor exec meanwhile (the kernel's `cgroup_procs_write_start`). The
//!   init is single-threaded, so moving its one thread moves the process
//!   ([`SelfJoin::join_current`]); measured: ~0.1–1 ms for all hierarchies, cold.
//!
//! The files are opened by the parent before the clone (the child may have pivoted away
//! from the host's /sys by the time it joins). Used when the caller is host root; other
//! callers (e.g. a caller in a user namespace) take the parent-side
//! [`Manager::apply`](super::Manager::apply) path.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::{CgroupError, Manager, Version};

/// Open handles to the container's cgroups for the init to join itself.
#[derive(Debug)]
pub struct SelfJoin {
    /// `tasks` of each v1 hierarchy, opened for writing.
    v1_tasks: Vec<(PathBuf, File)>,
    /// The v2 cgroup directory, for `CLONE_INTO_CGROUP`.
    v2: Option<(PathBuf, OwnedFd)>,
}

impl SelfJoin {
    /// Opens the handles of `m`'s cgroups (which must exist).
    pub(super) fn open(m: &Manager) -> Result<SelfJoin, CgroupError> {
        let mut v1_tasks = Vec::new();
        let mut v2 = None;
        for h in &m.hierarchies {
            match h.version {
                Version::V1 => {
                    let path = h.dir.join("tasks");
                    let f = OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(&path)
                        .map_err(|source| CgroupError::Write {
                            path: path.clone(),
                            value: "0".into(),
                            source,
                        })?;
                    v1_tasks.push((path, f));
                }
                Version::V2 => {
                    let f = OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                        .open(&h.dir)
                        .map_err(|source| CgroupError::Read {
                            path: h.dir.clone(),
                            source,
                        })?;
                    v2 = Some((h.dir.clone(), OwnedFd::from(f)));
                }
            }
        }
        Ok(SelfJoin { v1_tasks, v2 })
    }

    /// The v2 cgroup directory to clone the init into, if there is a v2 hierarchy.
    pub fn v2_dir(&self) -> Option<BorrowedFd<'_>> {
        self.v2.as_ref().map(|(_, fd)| fd.as_fd())
    }

    /// Moves the calling (single-threaded) process into every v1 cgroup. Called by the
    /// container's init in its setup.
    pub fn join_current(&self) -> Result<(), CgroupError> {
        for (path, f) in &self.v1_tasks {
            (&*f).write_all(b"0").map_err(|source| CgroupError::Write {
                path: path.clone(),
                value: "0".into(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;
    use crate::cgroups::kernel_tests::skip_reason;
    use crate::cgroups::test_util::manager;

    /// A child that joins through `tasks` before it execs shows up in every v1 cgroup.
    #[test]
    fn child_joins_itself_through_tasks() {
        if let Some(r) = skip_reason() {
            skip_test!("{r}");
            return;
        }
        let m = manager("selfjoin");
        m.create().unwrap();
        let sj = m.self_join().unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: the closure only writes to already open fds (no allocation on success).
        unsafe {
            cmd.pre_exec(move || {
                sj.join_current()
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EIO))
            });
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        for h in m.hierarchies().iter().filter(|h| h.version == Version::V1) {
            let rel = h.dir.strip_prefix(&h.base).unwrap();
            let want = rel.to_string_lossy().into_owned();
            assert!(
                cgroup.lines().any(|l| l.ends_with(&want)),
                "{} not joined: {cgroup}",
                h.dir.display()
            );
        }
    }

    /// `clone3(CLONE_INTO_CGROUP)` puts the child straight into the v2 cgroup.
    #[test]
    fn child_is_born_in_the_v2_cgroup() {
        if let Some(r) = skip_reason() {
            skip_test!("{r}");
            return;
        }
        let m = manager("cloneinto");
        m.create().unwrap();
        let sj = m.self_join().unwrap();
        let Some(dir) = sj.v2_dir() else {
            skip_test!("no cgroup2 hierarchy in use on this host");
            return;
        };
        use crate::process::clone::{clone_into_cgroup, Forked};
        match clone_into_cgroup(nix::sched::CloneFlags::empty(), dir).unwrap() {
            Forked::Child => {
                // SAFETY: the test child only waits to be killed.
                unsafe {
                    libc::pause();
                    libc::_exit(0)
                }
            }
            Forked::Parent(pid) => {
                let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                let h = m
                    .hierarchies()
                    .iter()
                    .find(|h| h.version == Version::V2)
                    .unwrap();
                let rel = h.dir.strip_prefix(&h.base).unwrap().to_string_lossy();
                let line = cgroup.lines().find(|l| l.starts_with("0::")).unwrap();
                assert!(line.ends_with(rel.as_ref()), "{line} vs {rel}");
            }
        }
    }
}
