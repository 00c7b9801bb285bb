//! Small helpers to read and write cgroup interface files with errors naming the file.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::CgroupError;

/// Writes `value` to `dir/file` in one `write(2)` (cgroup files parse one write at a time).
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let res = OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write(value.as_bytes()).map(|_| ()));
    res.map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

/// Reads `dir/file` as a string.
pub(crate) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
}

/// Reads `dir/file`, returning `None` when the file does not exist.
pub(crate) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// Parses a number or `max` (as `None`) from a one-value file.
pub(crate) fn parse_limit(dir: &Path, file: &str, text: &str) -> Result<Option<u64>, CgroupError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse::<u64>().map(Some).map_err(|_| CgroupError::Parse {
        path: dir.join(file),
        value: t.to_string(),
    })
}

/// Reads a one-number file; `None` if the file does not exist.
pub(crate) fn read_u64_opt(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    match read_opt(dir, file)? {
        None => Ok(None),
        Some(s) => {
            let t = s.trim();
            t.parse::<u64>().map(Some).map_err(|_| CgroupError::Parse {
                path: dir.join(file),
                value: t.to_string(),
            })
        }
    }
}

/// Looks a key up in a flat-keyed file (`key value` lines, e.g. cpu.stat, memory.events).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

/// Lists the pids in `dir/cgroup.procs`; an absent directory has none.
pub(crate) fn procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    match read_opt(dir, "cgroup.procs")? {
        None => Ok(Vec::new()),
        Some(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_lookup() {
        let t = "usage_usec 10\nnr_periods 3\nnr_throttled 2\n";
        assert_eq!(keyed(t, "nr_periods"), Some(3));
        assert_eq!(keyed(t, "nr_throttled"), Some(2));
        assert_eq!(keyed(t, "nr"), None);
    }
}
