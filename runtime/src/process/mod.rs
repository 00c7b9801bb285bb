//! The container's processes: the init cloned by `create` and the processes `exec`
//! starts in a running container.
//!
//! Both are cloned straight from the calling process ([`clone::clone`]) and run
//! [`child::run`], which does every setup step in the child and then `execve`s the user
//! program — the big binary is never re-executed. The parent and the child talk over a
//! [`crate::sync::Channel`].

pub mod child;
pub mod clone;

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Errors of preparing a program for `execve`.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A string contained a NUL byte.
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    /// The program was not found in `PATH`.
    #[error("executable file {0:?} not found in $PATH")]
    NotFound(String),
    /// `execve` failed.
    #[error("exec {path}: {source}")]
    Exec {
        /// The resolved program path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
}

/// Converts strings to C strings for `execve`.
pub fn cstrings(items: &[String]) -> Result<Vec<CString>, ExecError> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| ExecError::Nul(s.clone())))
        .collect()
}

/// Resolves `prog` like `execvp` but with the *container's* `PATH` (from `env`), checking
/// in the current root (so call it after the rootfs is entered).
pub fn resolve(prog: &str, env: &[String]) -> Result<PathBuf, ExecError> {
    if prog.contains('/') {
        return Ok(PathBuf::from(prog));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(prog);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    Err(ExecError::NotFound(prog.to_string()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_uses_the_given_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(resolve("sh", &env).unwrap().ends_with("sh"));
        assert!(matches!(
            resolve("no-such-program-xyz", &env),
            Err(ExecError::NotFound(_))
        ));
        assert_eq!(resolve("./x", &env).unwrap(), PathBuf::from("./x"));
        assert!(cstrings(&["a\0b".into()]).is_err());
    }
}
