//! Operations on a live container's cgroup: pause/resume (freezer), live resource
//! update, statistics and the OOM/stats event stream.
//!
//! Status: `pause` persists `paused` in the state file (so `state` reports it until
//! `resume`); `resume` goes back to `running`, or to `created` when the init still waits
//! for `start` (as runc, which derives that from the exec fifo).
//!
//! Update: like runc, the resources in force are kept in the state directory
//! (`resources.json`, spec shape, without the runtime's default device rules) and an
//! update is merged into them field by field, so updating one value keeps the others and
//! a later update starts from the last one. The merged set is validated against the host
//! before anything is written; if the kernel still refuses a value halfway (say a memory
//! limit below what the container cannot give back), the previous set is written back.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::{Container, ContainerError, Result};
use crate::events::{Event, Stats};
use crate::integration::{self, Cgroup, IntegrationError};
use crate::state::{self, Status, EXEC_FIFO};

/// File in the state directory holding the resources in force after an update.
pub const RESOURCES_FILE: &str = "resources.json";

fn cg_err(e: crate::cgroups::CgroupError) -> ContainerError {
    ContainerError::Setup(IntegrationError::Cgroup(e))
}

/// Deep-merges `update` into `base`: objects key by key, everything else (numbers,
/// strings, lists such as device rules) replaced; `null` in `update` changes nothing.
fn merge_json(base: &mut serde_json::Value, update: &serde_json::Value) {
    match (base, update) {
        (serde_json::Value::Object(b), serde_json::Value::Object(u)) => {
            for (k, v) in u {
                if v.is_null() {
                    continue;
                }
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge_json(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, u) if !u.is_null() => *b = u.clone(),
        _ => {}
    }
}

/// `current` with every field set in `update` replaced: objects merged key by key,
/// numbers, strings and lists (device rules) replaced, absent fields kept.
pub fn merge_resources(
    current: &LinuxResources,
    update: &LinuxResources,
) -> Result<LinuxResources> {
    let bad = |e: serde_json::Error| ContainerError::Invalid(format!("resources: {e}"));
    let mut base = serde_json::to_value(current).map_err(bad)?;
    let upd = serde_json::to_value(update).map_err(bad)?;
    merge_json(&mut base, &upd);
    serde_json::from_value(base).map_err(bad)
}

impl Container {
    /// The container's cgroup manager.
    fn cgroup(&self) -> Result<Cgroup> {
        self.state
            .cgroup
            .as_ref()
            .and_then(integration::cgroup_from_json)
            .ok_or_else(|| {
                ContainerError::Invalid(format!("container {:?} has no cgroup", self.id()))
            })
    }

    /// Freezes every process of the container (cgroup freezer); the status becomes
    /// `paused`. Only a running or created container can be paused.
    pub fn pause(&mut self) -> Result<()> {
        let _lock = self.dir.lock()?;
        self.reload()?;
        match self.status() {
            Status::Running | Status::Created => {}
            _ => return Err(self.bad_status("pause")),
        }
        let cg = self.cgroup()?;
        cg.freeze().map_err(cg_err)?;
        self.state.oci.status = Status::Paused;
        if let Err(e) = self.dir.save(&self.state) {
            let _ = cg.thaw();
            return Err(e.into());
        }
        Ok(())
    }

    /// Thaws a paused container; it is `running` again (or `created` if it was paused
    /// before `start`).
    pub fn resume(&mut self) -> Result<()> {
        let _lock = self.dir.lock()?;
        self.reload()?;
        if self.status() != Status::Paused {
            return Err(self.bad_status("resume"));
        }
        let cg = self.cgroup()?;
        cg.thaw().map_err(cg_err)?;
        self.state.oci.status = if self.dir.path().join(EXEC_FIFO).exists() {
            Status::Created
        } else {
            Status::Running
        };
        self.dir.save(&self.state)?;
        Ok(())
    }

    /// The resources in force: the last update's, else the spec's `linux.resources`.
    pub fn resources(&self) -> Result<LinuxResources> {
        let path = self.dir.path().join(RESOURCES_FILE);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| ContainerError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(self
                .spec()?
                .linux()
                .as_ref()
                .and_then(|l| l.resources().clone())
                .unwrap_or_default()),
            Err(source) => Err(ContainerError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }

    /// What to write to the cgroup for `r`: device rules (if `r` has any) get the same
    /// default and `linux.devices` allow rules as at create.
    fn effective(&self, r: &LinuxResources, with_devices: bool) -> Result<LinuxResources> {
        let mut r = r.clone();
        if !with_devices || r.devices().is_none() {
            r.set_devices(None);
            return Ok(r);
        }
        let mut spec = self.spec()?;
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_resources(Some(r.clone()));
        spec.set_linux(Some(linux));
        Ok(integration::effective_resources(&spec).unwrap_or(r))
    }

    /// Applies `update` to the running (or created, or paused) container's cgroup at once,
    /// merged into the resources in force, and persists the result. Nothing is written
    /// when the merged set fails validation.
    pub fn update(&mut self, update: &LinuxResources) -> Result<()> {
        let _lock = self.dir.lock()?;
        self.reload()?;
        if self.status() == Status::Stopped {
            return Err(self.bad_status("update"));
        }
        let cg = self.cgroup()?;
        let current = self.resources()?;
        let merged = merge_resources(&current, update)?;
        // Device rules are rewritten only when the update carries some: rewriting them
        // starts from "deny all" on v1, which would briefly cut off a running container.
        let apply = self.effective(&merged, update.devices().is_some())?;
        cg.validate(&apply).map_err(cg_err)?;
        if let Err(e) = cg.set_exact(&apply) {
            // Best effort: put back what was in force.
            if let Ok(old) = self.effective(&current, false) {
                let _ = cg.set_exact(&old);
            }
            return Err(cg_err(e));
        }
        let data = serde_json::to_vec(&merged)
            .map_err(|e| ContainerError::Invalid(format!("serialize resources: {e}")))?;
        state::write_atomic(&self.dir.path().join(RESOURCES_FILE), &data, 0o600)?;
        Ok(())
    }

    /// Current resource usage of the container's cgroup, in runc's `events --stats`
    /// shape. Refused once the container has stopped (as runc).
    pub fn stats(&self) -> Result<Stats> {
        if self.status() == Status::Stopped {
            return Err(self.bad_status("get statistics of"));
        }
        Stats::collect(&self.cgroup()?).map_err(cg_err)
    }

    /// The event stream of a live container: an `oom` event whenever the kernel OOM-kills
    /// in its cgroup, and (with `interval`) a `stats` event every `interval`. The stream
    /// ends when the container stops.
    pub fn events(&self, interval: Option<Duration>) -> Result<Events> {
        if self.status() == Status::Stopped {
            return Err(self.bad_status("watch events of"));
        }
        if interval.is_some_and(|d| d.is_zero()) {
            return Err(ContainerError::Invalid(
                "events: the interval must be above zero".into(),
            ));
        }
        let cg = self.cgroup()?;
        let oom = cg.oom_events().ok();
        let pidfd = self.init_pidfd()?;
        let oom_kills = cg.stats().map(|s| s.memory.oom_kill).unwrap_or(0);
        Ok(Events {
            id: self.id().to_string(),
            cg,
            oom,
            pidfd,
            interval,
            next: interval.map(|d| Instant::now() + d),
            oom_kills,
            done: false,
        })
    }
}

/// Iterator over a container's events (see [`Container::events`]).
#[derive(Debug)]
pub struct Events {
    id: String,
    cg: Cgroup,
    oom: Option<crate::cgroups::OomWatcher>,
    pidfd: OwnedFd,
    interval: Option<Duration>,
    next: Option<Instant>,
    /// OOM kills reported so far (from the cgroup's counter).
    oom_kills: u64,
    done: bool,
}

impl Events {
    /// An `oom` event if the cgroup's OOM-kill counter moved since the last report.
    fn oom_from_counter(&mut self) -> Option<Event> {
        let now = self.cg.stats().ok()?.memory.oom_kill;
        if now > self.oom_kills {
            self.oom_kills = now;
            return Some(Event::oom(&self.id));
        }
        None
    }

    fn step(&mut self) -> Result<Option<Event>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            let timeout = match self.next {
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let (oom_ready, exited) = {
                let mut fds = vec![PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
                if let Some(w) = &self.oom {
                    fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(ContainerError::Sys("poll events", e)),
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (fds.get(1).is_some_and(ready), ready(&fds[0]))
            };
            if oom_ready {
                if let Some(w) = &mut self.oom {
                    match w.wait().map_err(cg_err)? {
                        Some(_) => {
                            // v1 signals OOM situations; report once the counter moved too
                            // (or at once if the kernel has no counter).
                            let counted = self.oom_from_counter();
                            return Ok(Some(counted.unwrap_or_else(|| Event::oom(&self.id))));
                        }
                        None => self.oom = None,
                    }
                }
            }
            if exited {
                self.done = true;
                // An OOM kill of the init can race its exit: report it from the counter.
                return Ok(self.oom_from_counter());
            }
            if let (Some(t), Some(d)) = (self.next, self.interval) {
                if Instant::now() >= t {
                    self.next = Some(t + d);
                    let s = Stats::collect(&self.cg).map_err(cg_err)?;
                    return Ok(Some(Event::stats(&self.id, s)));
                }
            }
        }
    }
}

impl Iterator for Events {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_other_fields() {
        let cur: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 100, "reservation": 50},
            "pids": {"limit": 10},
            "devices": [{"allow": false, "access": "rwm"}],
            "unified": {"a.b": "1"}
        }))
        .unwrap();
        let upd: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 200},
            "cpu": {"quota": 10000},
            "unified": {"c.d": "2"}
        }))
        .unwrap();
        let m = serde_json::to_value(merge_resources(&cur, &upd).unwrap()).unwrap();
        assert_eq!(m["memory"]["limit"], 200);
        assert_eq!(m["memory"]["reservation"], 50);
        assert_eq!(m["pids"]["limit"], 10);
        assert_eq!(m["cpu"]["quota"], 10000);
        assert_eq!(m["devices"][0]["allow"], false);
        assert_eq!(m["unified"]["a.b"], "1");
        assert_eq!(m["unified"]["c.d"], "2");
    }
}
