//! Errors of the CRIU client.

use std::path::PathBuf;

/// What went wrong talking to CRIU, or what CRIU reported.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// An option is out of range or inconsistent; nothing was started.
    #[error("invalid CRIU option: {0}")]
    InvalidOption(String),

    /// The process to dump does not exist (checked before CRIU is started).
    #[error("no process with pid {pid} to checkpoint")]
    NoSuchProcess {
        /// The pid that was asked for.
        pid: i32,
    },

    /// A directory CRIU needs (images, work dir) cannot be opened.
    #[error("CRIU {what} directory {}: {source}", path.display())]
    Dir {
        /// "images", "work" or "parent images".
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why it cannot be opened.
        source: std::io::Error,
    },

    /// `criu swrk` could not be started.
    #[error("cannot start criu at {}: {source}", path.display())]
    Spawn {
        /// The criu executable.
        path: PathBuf,
        /// Why it could not be started.
        source: std::io::Error,
    },

    /// Talking to `criu swrk` over its socket failed.
    #[error("CRIU RPC socket: {0}")]
    Socket(#[source] std::io::Error),

    /// CRIU sent something that is not a valid RPC message.
    #[error("bad CRIU RPC message: {0}")]
    Protocol(String),

    /// CRIU exited (or closed its socket) without answering the request.
    #[error("criu {op} exited without an answer ({status}){}", tail_suffix(.stderr, .log_tail))]
    NoAnswer {
        /// The request ("dump", "restore", ...).
        op: &'static str,
        /// How criu exited.
        status: String,
        /// What criu wrote to its standard error.
        stderr: String,
        /// The last lines of its log file, when there is one.
        log_tail: String,
    },

    /// CRIU answered that the request failed.
    #[error("criu {op} failed{}{}{}", errmsg_suffix(.errmsg, .errno), log_suffix(.log), tail_suffix(.stderr, .log_tail))]
    Failed {
        /// The request ("dump", "restore", ...).
        op: &'static str,
        /// CRIU's own message (`cr_errmsg`), or else the first relevant error line of
        /// its log.
        errmsg: Option<String>,
        /// CRIU's errno (`cr_errno`), if it gave one.
        errno: Option<i32>,
        /// Its log file (in the work dir), when there is one.
        log: Option<PathBuf>,
        /// The error lines (or else the last lines) of that log.
        log_tail: String,
        /// What criu wrote to its standard error.
        stderr: String,
    },

    /// The caller's notification handler refused a CRIU notification; CRIU was told to abort.
    #[error("CRIU notification {script:?} refused: {reason}")]
    Notify {
        /// The notification ("setup-namespaces", "post-restore", ...).
        script: String,
        /// What the handler said.
        reason: String,
    },

    /// The checkpoint has an external mount the restore gives no host path for.
    #[error("the checkpoint has external mount {key:?} (at {mountpoint} in the tree) but the restore names no host path for it")]
    MissingExternalMount {
        /// Its key.
        key: String,
        /// Where it is mounted in the restored tree.
        mountpoint: String,
    },

    /// A CRIU image (stats-dump, mountpoints-N.img, ...) cannot be read or parsed.
    #[error("CRIU image {}: {reason}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn errmsg_suffix(errmsg: &Option<String>, errno: &Option<i32>) -> String {
    let mut s = String::new();
    if let Some(m) = errmsg.as_deref().filter(|m| !m.is_empty()) {
        s.push_str(": ");
        s.push_str(m.trim_end());
    }
    if let Some(e) = errno.filter(|e| *e != 0) {
        s.push_str(&format!(" ({})", std::io::Error::from_raw_os_error(e)));
    }
    s
}

fn log_suffix(log: &Option<PathBuf>) -> String {
    match log {
        Some(p) => format!("; log {}", p.display()),
        None => String::new(),
    }
}

fn tail_suffix(stderr: &str, log_tail: &str) -> String {
    let mut s = String::new();
    if !log_tail.trim().is_empty() {
        s.push_str(":\n");
        s.push_str(log_tail.trim_end());
    }
    if !stderr.trim().is_empty() {
        s.push_str("\nstderr: ");
        s.push_str(stderr.trim_end());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_error_names_op_message_log_and_tail() {
        let e = CriuError::Failed {
            op: "restore",
            errmsg: Some("Can't open pstree".into()),
            errno: Some(libc::ENOENT),
            log: Some(PathBuf::from("/img/restore.log")),
            log_tail: "Error (criu/pstree.c:1): bad\n".into(),
            stderr: String::new(),
        };
        let s = e.to_string();
        assert!(
            s.starts_with("criu restore failed: Can't open pstree"),
            "{s}"
        );
        assert!(s.contains("No such file"), "{s}");
        assert!(s.contains("/img/restore.log"), "{s}");
        assert!(s.ends_with("Error (criu/pstree.c:1): bad"), "{s}");
    }
}
