//! The device allow-list: OCI `linux.resources.devices` rules, validated and normalized,
//! rendered as v1 `devices.allow`/`devices.deny` lines or compiled to a v2 eBPF program.

pub mod bpf;
pub mod program;

use std::fmt;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;

/// Device class a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevType {
    /// Both block and character devices.
    All,
    /// Block devices.
    Block,
    /// Character devices.
    Char,
}

/// Access bits of a rule.
pub const ACC_READ: u8 = 1;
/// Write access.
pub const ACC_WRITE: u8 = 2;
/// mknod access.
pub const ACC_MKNOD: u8 = 4;

/// A validated device rule; `None` major/minor means the wildcard `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// true = allow, false = deny.
    pub allow: bool,
    /// Device class.
    pub typ: DevType,
    /// Major number or wildcard.
    pub major: Option<u32>,
    /// Minor number or wildcard.
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: u8,
}

impl Rule {
    /// Validates one OCI rule. Absent type = `a`, absent or -1 major/minor = `*`,
    /// absent or empty access = `rwm` (as runc).
    pub fn from_oci(r: &LinuxDeviceCgroup) -> Result<Rule, CgroupError> {
        let typ = match r.typ() {
            None | Some(LinuxDeviceType::A) => DevType::All,
            Some(LinuxDeviceType::B) => DevType::Block,
            Some(LinuxDeviceType::C) => DevType::Char,
            Some(t) => {
                return Err(CgroupError::Invalid(format!(
                    "device rule type {:?} is not valid for the device cgroup (use a, b or c)",
                    t.as_str()
                )))
            }
        };
        let num = |what: &str, v: Option<i64>| -> Result<Option<u32>, CgroupError> {
            match v {
                None | Some(-1) => Ok(None),
                Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
                Some(n) => Err(CgroupError::Invalid(format!(
                    "device rule {what} number {n} is out of range"
                ))),
            }
        };
        let major = num("major", r.major())?;
        let minor = num("minor", r.minor())?;
        let mut access = 0u8;
        let acc = r.access().as_deref().unwrap_or("");
        for ch in acc.chars() {
            access |= match ch {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                other => {
                    return Err(CgroupError::Invalid(format!(
                        "device rule access {acc:?} has invalid character {other:?} (use r, w, m)"
                    )))
                }
            };
        }
        if access == 0 {
            access = ACC_READ | ACC_WRITE | ACC_MKNOD;
        }
        Ok(Rule {
            allow: r.allow(),
            typ,
            major,
            minor,
            access,
        })
    }

    /// Matches everything (`a *:* rwm`)?
    pub fn is_all(&self) -> bool {
        self.typ == DevType::All
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == ACC_READ | ACC_WRITE | ACC_MKNOD
    }
}

/// The device rules every container gets after its own, as runc and crun do: mknod of any
/// node, and the standard nodes (null, zero, full, random, urandom, tty, ptmx, pts/*).
pub fn runtime_default_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    [
        (C, None, None, "m"),
        (B, None, None, "m"),
        (C, Some(1), Some(3), "rwm"),
        (C, Some(1), Some(5), "rwm"),
        (C, Some(1), Some(7), "rwm"),
        (C, Some(1), Some(8), "rwm"),
        (C, Some(1), Some(9), "rwm"),
        (C, Some(5), Some(0), "rwm"),
        (C, Some(5), Some(2), "rwm"),
        (C, Some(136), None, "rwm"),
    ]
    .into_iter()
    .map(|(t, major, minor, access)| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(t));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_string()));
        r
    })
    .collect()
}

/// The effective rule list of a container, as runc builds it: the spec's
/// `linux.resources.devices`, then an allow rule for each node in `linux.devices`, then
/// [`runtime_default_rules`]. Later rules win, so the defaults cannot be denied.
pub fn container_rules(
    spec: &[LinuxDeviceCgroup],
    nodes: &[LinuxDevice],
) -> Vec<LinuxDeviceCgroup> {
    let mut out = spec.to_vec();
    for n in nodes {
        let t = match n.typ() {
            LinuxDeviceType::B => LinuxDeviceType::B,
            LinuxDeviceType::C | LinuxDeviceType::U => LinuxDeviceType::C,
            // FIFOs (and `a`) are not device-cgroup objects.
            _ => continue,
        };
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(t));
        r.set_major(Some(n.major()));
        r.set_minor(Some(n.minor()));
        r.set_access(Some("rwm".into()));
        out.push(r);
    }
    out.extend(runtime_default_rules());
    out
}

/// Validates a rule list.
pub fn rules_from_oci(list: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, CgroupError> {
    list.iter().map(Rule::from_oci).collect()
}

/// The v1 line (`c 1:3 rwm`); with type `a` the kernel ignores the numbers, so it is written `a`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.typ {
            DevType::All if self.is_all() => return f.write_str("a"),
            DevType::All => 'a',
            DevType::Block => 'b',
            DevType::Char => 'c',
        };
        let n = |v: Option<u32>| v.map_or("*".to_string(), |x| x.to_string());
        let mut acc = String::new();
        for (bit, ch) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(ch);
            }
        }
        write!(f, "{t} {}:{} {acc}", n(self.major), n(self.minor))
    }
}

/// The writes that make a v1 devices cgroup enforce `rules` with last-match-wins semantics:
/// deny everything, then replay the rules in order (`devices.allow` / `devices.deny`).
///
/// The v1 kernel keeps a default plus an exception list and removes exceptions only on an
/// exact type/major/minor match, so a rule that would override *part* of an earlier
/// exception (e.g. deny `c 1:3` after allowing `c *:* m`) cannot be expressed; such lists are
/// refused with an error naming both rules rather than enforced differently than on v2.
pub fn v1_lines(rules: &[Rule]) -> Result<Vec<(&'static str, String)>, CgroupError> {
    let mut out = vec![("devices.deny", "a".to_string())];
    let mut default_allow = false;
    let mut exceptions: Vec<Rule> = Vec::new();
    for (i, orig) in rules.iter().enumerate() {
        let file = if orig.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        if orig.is_all() {
            out.push((file, "a".to_string()));
            default_allow = orig.allow;
            exceptions.clear();
            continue;
        }
        // v1 reads type `a` as "everything" whatever the numbers: split it into b and c.
        let parts: Vec<Rule> = match orig.typ {
            DevType::All => [DevType::Block, DevType::Char]
                .into_iter()
                .map(|typ| Rule { typ, ..*orig })
                .collect(),
            _ => vec![*orig],
        };
        for r in parts {
            if r.allow == default_allow {
                // Removes (bits of) an exception: only exact matches can be removed.
                let key = (r.typ, r.major, r.minor);
                if let Some(e) = exceptions
                    .iter()
                    .find(|e| (e.typ, e.major, e.minor) != key && overlaps(e, &r))
                {
                    return Err(CgroupError::Invalid(format!(
                        "device rule #{i} ({} {orig}) overrides part of the earlier rule                          ({} {e}), which the v1 devices controller cannot express;                          reorder the rules or use cgroup v2",
                        if orig.allow { "allow" } else { "deny" },
                        if e.allow { "allow" } else { "deny" },
                    )));
                }
                for e in exceptions
                    .iter_mut()
                    .filter(|e| (e.typ, e.major, e.minor) == key)
                {
                    e.access &= !r.access;
                }
                exceptions.retain(|e| e.access != 0);
            } else {
                exceptions.push(r);
            }
            out.push((file, r.to_string()));
        }
    }
    Ok(out)
}

fn overlaps(a: &Rule, b: &Rule) -> bool {
    let num = |x: Option<u32>, y: Option<u32>| x.is_none() || y.is_none() || x == y;
    a.typ == b.typ && num(a.major, b.major) && num(a.minor, b.minor) && a.access & b.access != 0
}

/// Applies rules to a v1 devices cgroup (see [`v1_lines`]).
pub(crate) fn apply_v1(dir: &std::path::Path, rules: &[Rule]) -> Result<(), CgroupError> {
    for (file, line) in v1_lines(rules)? {
        super::fs::write(dir, file, &line)?;
    }
    Ok(())
}

/// Applies rules to a v2 cgroup: compiles and loads the program, attaches it with
/// BPF_F_ALLOW_MULTI, then detaches the programs that were attached before, so the cgroup
/// is never without a filter during an update.
pub fn apply_v2(dir: &std::path::Path, rules: &[Rule]) -> Result<(), CgroupError> {
    use std::os::fd::AsRawFd;
    let bpf_err = |op: &'static str, source: std::io::Error, log: String| CgroupError::Bpf {
        op,
        path: dir.to_path_buf(),
        source,
        log,
    };
    let cg = std::fs::File::open(dir).map_err(|source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let insns = program::compile(rules);
    let prog =
        bpf::load_device_program(&insns).map_err(|(e, log)| bpf_err("BPF_PROG_LOAD", e, log))?;
    let old = bpf::query(&cg).map_err(|e| bpf_err("BPF_PROG_QUERY", e, String::new()))?;
    bpf::attach(&cg, &prog).map_err(|e| bpf_err("BPF_PROG_ATTACH", e, String::new()))?;
    for id in old {
        let fd = bpf::prog_fd_by_id(id)
            .map_err(|e| bpf_err("BPF_PROG_GET_FD_BY_ID", e, String::new()))?;
        if fd.as_raw_fd() >= 0 {
            bpf::detach(&cg, &fd).map_err(|e| bpf_err("BPF_PROG_DETACH", e, String::new()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn oci(
        allow: bool,
        t: LinuxDeviceType,
        maj: Option<i64>,
        min: Option<i64>,
        acc: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(t)
            .access(acc);
        if let Some(m) = maj {
            b = b.major(m);
        }
        if let Some(m) = min {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    #[test]
    fn lxc_sample_set_lines() {
        use LinuxDeviceType::*;
        let set = [
            (oci(true, C, Some(1), Some(3), "rwm"), "c 1:3 rwm"),
            (oci(true, C, Some(5), None, "rwm"), "c 5:* rwm"),
            (oci(true, C, None, None, "m"), "c *:* m"),
            (oci(true, B, None, None, "m"), "b *:* m"),
            (oci(true, C, Some(136), None, "rwm"), "c 136:* rwm"),
            (oci(false, A, None, None, "rwm"), "a"),
            (oci(true, C, Some(10), Some(200), "rw"), "c 10:200 rw"),
        ];
        for (r, want) in set {
            assert_eq!(Rule::from_oci(&r).unwrap().to_string(), want);
        }
    }

    #[test]
    fn bad_rules() {
        use LinuxDeviceType::*;
        let e = Rule::from_oci(&oci(true, P, None, None, "rwm")).unwrap_err();
        assert!(e.to_string().contains("\"p\""), "{e}");
        let e = Rule::from_oci(&oci(true, C, Some(-5), None, "rwm")).unwrap_err();
        assert!(e.to_string().contains("major"), "{e}");
        let e = Rule::from_oci(&oci(true, C, None, None, "rwx")).unwrap_err();
        assert!(e.to_string().contains("'x'"), "{e}");
        // absent access = rwm, -1 = wildcard
        let r = Rule::from_oci(&oci(true, A, Some(-1), Some(-1), "")).unwrap();
        assert!(r.is_all());
    }

    #[test]
    fn v1_emulation() {
        use LinuxDeviceType::*;
        let rules = |v: &[LinuxDeviceCgroup]| rules_from_oci(v).unwrap();
        let lines = v1_lines(&rules(&[
            oci(false, A, None, None, "rwm"),
            oci(true, C, Some(1), Some(3), "rwm"),
            oci(true, A, Some(7), None, "r"),
            oci(false, C, Some(1), Some(3), "w"),
        ]))
        .unwrap();
        let text: Vec<String> = lines.iter().map(|(f, l)| format!("{f} {l}")).collect();
        assert_eq!(
            text,
            [
                "devices.deny a",
                "devices.deny a",
                "devices.allow c 1:3 rwm",
                "devices.allow b 7:* r",
                "devices.allow c 7:* r",
                "devices.deny c 1:3 w",
            ]
        );
        let e = v1_lines(&rules(&[
            oci(true, C, None, None, "m"),
            oci(false, C, Some(1), Some(3), "rwm"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("c *:* m"), "{e}");
        // Allow-all then deny specific devices is fine (deny list).
        assert!(v1_lines(&rules(&[
            oci(true, A, None, None, "rwm"),
            oci(false, C, Some(1), Some(3), "rwm"),
        ]))
        .is_ok());
    }

    #[test]
    fn container_rules_append_nodes_and_defaults() {
        let spec = vec![oci(false, LinuxDeviceType::A, None, None, "rwm")];
        let node: LinuxDevice =
            serde_json::from_str(r#"{"path":"/dev/fuse","type":"c","major":10,"minor":229}"#)
                .unwrap();
        let fifo: LinuxDevice =
            serde_json::from_str(r#"{"path":"/dev/f","type":"p","major":0,"minor":0}"#).unwrap();
        let all = container_rules(&spec, &[node, fifo]);
        let lines: Vec<String> = rules_from_oci(&all)
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(lines[0], "a");
        assert_eq!(lines[1], "c 10:229 rwm");
        assert_eq!(lines.len(), 2 + runtime_default_rules().len());
        assert!(lines.contains(&"c 136:* rwm".to_string()));
        assert!(v1_lines(&rules_from_oci(&all).unwrap()).is_ok());
    }

    #[test]
    fn bad_type_rejected_from_json() {
        let e = serde_json::from_str::<LinuxDeviceCgroup>(r#"{"allow":true,"type":"x"}"#);
        assert!(e.is_err());
    }
}
