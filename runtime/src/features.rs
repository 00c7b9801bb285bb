//! `vessel features`: what this runtime implements, as the OCI features document.

use serde_json::{json, Value};

/// The OCI runtime features JSON of this build.
pub fn features() -> Value {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    let mut caps = caps;
    caps.sort();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": crate::integration::SUPPORTED_HOOKS,
        "mountOptions": crate::integration::SUPPORTED_MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": crate::integration::cgroup_features(),
            "seccomp": crate::integration::seccomp_features(),
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": true}}
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features": "vessel",
            "io.github.vessel.version": env!("CARGO_PKG_VERSION")
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn features_parse_as_oci() {
        let v = super::features();
        assert_eq!(v["ociVersionMax"], "1.2.0");
        assert!(v["linux"]["namespaces"].as_array().unwrap().len() == 8);
        assert!(v["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN"));
    }
}
