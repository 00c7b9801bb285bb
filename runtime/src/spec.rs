//! Reading a bundle's `config.json` strictly, and the default spec of `vessel spec`.
//!
//! oci-spec ignores keys it does not know, and happily parses platform sections this
//! runtime does not implement. A runtime that silently drops part of a config runs
//! something other than what was asked for, so [`load`] first walks the raw JSON and
//! refuses unknown keys and unsupported features by name, then deserializes with oci-spec
//! (which rejects unknown enum values such as a namespace type).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde_json::{json, Map, Value};

/// Errors of reading a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Malformed JSON or a value oci-spec rejects.
    #[error("parse {path}: {source}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A key this runtime does not know.
    #[error("unknown key {0:?} in config.json")]
    UnknownKey(String),
    /// A feature this runtime does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A semantically invalid config.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// Writing the default spec failed.
    #[error("write {path}: {source}")]
    Write {
        /// The config path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `vessel spec` would overwrite an existing file.
    #[error("file {0} exists: remove it first")]
    Exists(PathBuf),
}

type Result<T> = std::result::Result<T, SpecError>;

const TOP_KEYS: &[&str] = &[
    "ociVersion",
    "root",
    "mounts",
    "process",
    "hostname",
    "domainname",
    "hooks",
    "annotations",
    "linux",
];
const OTHER_PLATFORMS: &[&str] = &["solaris", "windows", "vm", "zos"];
const PROCESS_KEYS: &[&str] = &[
    "terminal",
    "consoleSize",
    "user",
    "args",
    "env",
    "cwd",
    "capabilities",
    "rlimits",
    "noNewPrivileges",
    "apparmorProfile",
    "oomScoreAdj",
    "selinuxLabel",
    "ioPriority",
    "scheduler",
    "execCPUAffinity",
    "commandLine",
];
const LINUX_KEYS: &[&str] = &[
    "namespaces",
    "uidMappings",
    "gidMappings",
    "timeOffsets",
    "devices",
    "cgroupsPath",
    "resources",
    "unified",
    "rootfsPropagation",
    "seccomp",
    "sysctl",
    "maskedPaths",
    "readonlyPaths",
    "mountLabel",
    "intelRdt",
    "personality",
    "memoryPolicy",
    "netDevices",
];
const ROOT_KEYS: &[&str] = &["path", "readonly"];
const USER_KEYS: &[&str] = &["uid", "gid", "umask", "additionalGids", "username"];
const HOOK_KINDS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Reads and checks `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&data).map_err(|e| match e {
        SpecError::Parse { source, .. } => SpecError::Parse { path, source },
        other => other,
    })
}

/// Parses and checks a config from bytes (see [`load`]).
pub fn parse(data: &[u8]) -> Result<Spec> {
    let parse_err = |source| SpecError::Parse {
        path: PathBuf::from("config.json"),
        source,
    };
    let raw: Value = serde_json::from_slice(data).map_err(parse_err)?;
    check_raw(&raw)?;
    let spec: Spec = serde_json::from_value(raw).map_err(parse_err)?;
    check_spec(&spec)?;
    Ok(spec)
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| SpecError::Invalid(format!("{what} must be an object")))
}

fn known_keys(obj: &Map<String, Value>, prefix: &str, known: &[&str]) -> Result<()> {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            return Err(SpecError::UnknownKey(format!("{prefix}{k}")));
        }
    }
    Ok(())
}

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// Refuses unknown keys and unsupported features on the raw JSON.
fn check_raw(raw: &Value) -> Result<()> {
    let top = object(raw, "config")?;
    for k in top.keys() {
        if OTHER_PLATFORMS.contains(&k.as_str()) {
            return Err(SpecError::Unsupported(format!(
                "platform section {k:?} (this runtime implements linux only)"
            )));
        }
    }
    known_keys(top, "", TOP_KEYS)?;
    if let Some(root) = top.get("root") {
        known_keys(object(root, "root")?, "root.", ROOT_KEYS)?;
    }
    if let Some(p) = top.get("process") {
        check_process_raw(p)?;
    }
    if let Some(h) = top.get("hooks") {
        known_keys(object(h, "hooks")?, "hooks.", HOOK_KINDS)?;
    }
    check_linux_raw(top)
}

/// Refuses unknown keys and unsupported features of a process object.
fn check_process_raw(p: &Value) -> Result<()> {
    {
        let p = object(p, "process")?;
        known_keys(p, "process.", PROCESS_KEYS)?;
        for (key, what) in [
            (
                "apparmorProfile",
                "AppArmor profiles (AppArmor is not enabled on this host)",
            ),
            (
                "selinuxLabel",
                "SELinux labels (SELinux is not enabled on this host)",
            ),
            ("commandLine", "process.commandLine (Windows only)"),
            ("execCPUAffinity", "process.execCPUAffinity"),
        ] {
            if non_empty(p.get(key)) {
                return Err(SpecError::Unsupported(what.into()));
            }
        }
        if let Some(u) = p.get("user") {
            known_keys(object(u, "process.user")?, "process.user.", USER_KEYS)?;
        }
    }
    Ok(())
}

fn check_linux_raw(top: &Map<String, Value>) -> Result<()> {
    if let Some(l) = top.get("linux") {
        let l = object(l, "linux")?;
        known_keys(l, "linux.", LINUX_KEYS)?;
        for (key, what) in [
            ("intelRdt", "linux.intelRdt (Intel RDT)"),
            (
                "mountLabel",
                "linux.mountLabel (SELinux is not enabled on this host)",
            ),
            ("memoryPolicy", "linux.memoryPolicy"),
            ("netDevices", "linux.netDevices"),
            (
                "unified",
                "linux.unified at this level (it belongs in linux.resources)",
            ),
        ] {
            if non_empty(l.get(key)) {
                return Err(SpecError::Unsupported(what.into()));
            }
        }
    }
    Ok(())
}

/// Parses a process object (`vessel exec --process FILE`) as strictly as a config's
/// `process`: unknown keys and unsupported features are refused; args must be non-empty
/// and cwd absolute.
pub fn parse_process(data: &[u8]) -> Result<oci_spec::runtime::Process> {
    let parse_err = |source| SpecError::Parse {
        path: PathBuf::from("process.json"),
        source,
    };
    let raw: Value = serde_json::from_slice(data).map_err(parse_err)?;
    check_process_raw(&raw)?;
    let p: oci_spec::runtime::Process = serde_json::from_value(raw).map_err(parse_err)?;
    if p.args().as_ref().map_or(true, |a| a.is_empty()) {
        return Err(SpecError::Invalid("process.args must not be empty".into()));
    }
    if !p.cwd().is_absolute() {
        return Err(SpecError::Invalid(format!(
            "process.cwd {:?} must be an absolute path",
            p.cwd()
        )));
    }
    Ok(p)
}

/// Semantic checks after oci-spec parsed the config.
fn check_spec(spec: &Spec) -> Result<()> {
    if !spec.version().starts_with("1.") {
        return Err(SpecError::Unsupported(format!(
            "ociVersion {:?} (this runtime implements 1.x)",
            spec.version()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::Invalid("process is required".into()))?;
    if process.args().as_ref().map_or(true, |a| a.is_empty()) {
        return Err(SpecError::Invalid("process.args must not be empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::Invalid(format!(
            "process.cwd {:?} must be an absolute path",
            process.cwd()
        )));
    }
    if spec.root().is_none() {
        return Err(SpecError::Invalid("root is required".into()));
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let mut seen = Vec::new();
    for ns in &namespaces {
        if seen.contains(&ns.typ()) {
            return Err(SpecError::Invalid(format!(
                "namespace {} listed twice",
                ns.typ()
            )));
        }
        seen.push(ns.typ());
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(SpecError::Invalid(format!(
                    "namespace {} path {p:?} must be absolute",
                    ns.typ()
                )));
            }
        }
    }
    let has = |t| namespaces.iter().any(|n| n.typ() == t);
    let new_user = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if maps && !new_user {
        return Err(SpecError::Invalid(
            "linux.uidMappings/gidMappings need a new user namespace".into(),
        ));
    }
    if new_user && !maps {
        return Err(SpecError::Invalid(
            "a new user namespace needs linux.uidMappings and linux.gidMappings".into(),
        ));
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(SpecError::Invalid(
            "hostname needs a new uts namespace".into(),
        ));
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(SpecError::Invalid(
            "domainname needs a new uts namespace".into(),
        ));
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
        let new_time = namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Time && n.path().is_none());
        if !new_time {
            return Err(SpecError::Invalid(
                "linux.timeOffsets need a new time namespace".into(),
            ));
        }
        for k in linux.time_offsets().iter().flat_map(|m| m.keys()) {
            if k != "monotonic" && k != "boottime" {
                return Err(SpecError::Invalid(format!(
                    "linux.timeOffsets: unknown clock {k:?} (monotonic or boottime)"
                )));
            }
        }
    }
    Ok(())
}

/// The default `config.json` written by `vessel spec` (runc's defaults: `sh` on a
/// terminal, the usual mounts, masked and read-only paths). `rootless` adds a user
/// namespace mapping the caller's uid/gid to root, bind-mounts `/sys` and drops the
/// network namespace and the cgroup mount, like `runc spec --rootless`.
pub fn default_spec(rootless: bool) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut spec = json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "vessel",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    });
    if rootless {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let linux = &mut spec["linux"];
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        linux["namespaces"] = json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "cgroup"}, {"type": "user"}
        ]);
        if let Some(obj) = linux.as_object_mut() {
            obj.remove("resources");
        }
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            mounts.retain(|m| m["type"] != "cgroup" && m["destination"] != "/sys");
            for m in mounts.iter_mut() {
                if m["type"] == "devpts" {
                    if let Some(opts) = m["options"].as_array_mut() {
                        opts.retain(|o| o != "gid=5");
                    }
                }
            }
            mounts.push(json!({
                "destination": "/sys", "type": "none", "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]
            }));
        }
    }
    spec
}

/// Writes the default spec to `<bundle>/config.json`; refuses to overwrite.
pub fn write_default(bundle: &Path, rootless: bool) -> Result<PathBuf> {
    let path = bundle.join("config.json");
    let data =
        serde_json::to_vec_pretty(&default_spec(rootless)).map_err(|source| SpecError::Parse {
            path: path.clone(),
            source,
        })?;
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(SpecError::Exists(path))
        }
        Err(source) => return Err(SpecError::Write { path, source }),
    };
    std::io::Write::write_all(&mut f, &data).map_err(|source| SpecError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        default_spec(false)
    }

    fn err(v: &Value) -> String {
        parse(&serde_json::to_vec(v).unwrap())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn default_specs_parse() {
        parse(&serde_json::to_vec(&default_spec(false)).unwrap()).unwrap();
        parse(&serde_json::to_vec(&default_spec(true)).unwrap()).unwrap();
    }

    #[test]
    fn malformed_json_is_refused() {
        let e = parse(b"{\"ociVersion\": ").unwrap_err();
        assert!(matches!(e, SpecError::Parse { .. }), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let mut v = base();
        v["bogus"] = json!(1);
        assert!(err(&v).contains("unknown key \"bogus\""));
        let mut v = base();
        v["linux"]["frobnicate"] = json!(true);
        assert!(err(&v).contains("linux.frobnicate"));
        let mut v = base();
        v["process"]["user"]["shell"] = json!("x");
        assert!(err(&v).contains("process.user.shell"));
    }

    #[test]
    fn unsupported_features_are_refused() {
        let mut v = base();
        v["linux"]["intelRdt"] = json!({"closID": "x"});
        assert!(err(&v).starts_with("unsupported: linux.intelRdt"));
        let mut v = base();
        v["windows"] = json!({});
        assert!(err(&v).starts_with("unsupported: platform section"));
        let mut v = base();
        v["process"]["apparmorProfile"] = json!("p");
        assert!(err(&v).contains("AppArmor"));
        // Empty values are not a request for the feature.
        let mut v = base();
        v["process"]["apparmorProfile"] = json!("");
        parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[test]
    fn process_files_are_strict() {
        let ok = br#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#;
        parse_process(ok).unwrap();
        let e = parse_process(
            br#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "bogus": 1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("process.bogus"), "{e}");
        let e = parse_process(br#"{"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("args"), "{e}");
        let e = parse_process(br#"{"args": ["sh"], "cwd": "rel", "user": {"uid": 0, "gid": 0}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("cwd"), "{e}");
    }

    #[test]
    fn unknown_namespace_type_is_refused() {
        let mut v = base();
        v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "bogus"}]);
        let e = err(&v);
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn semantic_errors() {
        let mut v = base();
        v["process"]["args"] = json!([]);
        assert!(err(&v).contains("process.args"));
        let mut v = base();
        v["process"]["cwd"] = json!("rel");
        assert!(err(&v).contains("process.cwd"));
        let mut v = base();
        v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "pid"}]);
        assert!(err(&v).contains("twice"));
        let mut v = base();
        v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
        assert!(err(&v).contains("new user namespace"));
        let mut v = base();
        v["linux"]["namespaces"] = json!([{"type": "mount"}]);
        assert!(err(&v).contains("hostname needs"));
        let mut v = base();
        v["ociVersion"] = json!("2.0.0");
        assert!(err(&v).contains("ociVersion"));
    }
}
