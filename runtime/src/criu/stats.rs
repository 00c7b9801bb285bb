//! CRIU's statistics images (`stats-dump`, `stats-restore`).
//!
//! CRIU writes them into the images dir after each dump / restore. The RPC does not carry
//! them, and rust-criu has no generated type for `stats.proto`, so they are decoded here
//! with the protobuf crate's wire reader: the file is a CRIU image (two magics, then one
//! length-prefixed `stats_entry` message), and the few fields are plain varints.

use std::path::{Path, PathBuf};

use protobuf::rt::WireType;
use protobuf::CodedInputStream;

use super::error::CriuError;

/// File name of the dump statistics in the images dir.
pub const DUMP_STATS_FILE: &str = "stats-dump";
/// File name of the restore statistics in the images dir.
pub const RESTORE_STATS_FILE: &str = "stats-restore";

/// `IMG_SERVICE_MAGIC`: images that are not part of the checkpointed state.
const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// `STATS_MAGIC`.
const STATS_MAGIC: u32 = 0x5709_3306;

/// What a dump or pre-dump did (`dump_stats_entry`). Times are microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DumpStats {
    /// Time to freeze the tree.
    pub freezing_time_us: u32,
    /// Time the tree stayed frozen.
    pub frozen_time_us: u32,
    /// Time to collect memory.
    pub memdump_time_us: u32,
    /// Time to write memory to the images.
    pub memwrite_time_us: u32,
    /// Pages looked at.
    pub pages_scanned: u64,
    /// Pages not written because the parent (pre-dump) images already hold them.
    pub pages_skipped_parent: u64,
    /// Pages written into this dump's images.
    pub pages_written: u64,
    /// Pages left for lazy restore.
    pub pages_lazy: u64,
}

/// What a restore did (`restore_stats_entry`). Times are microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreStats {
    /// Pages compared with the parent for copy-on-write sharing.
    pub pages_compared: u64,
    /// Pages shared copy-on-write instead of restored.
    pub pages_skipped_cow: u64,
    /// Time to fork the tree.
    pub forking_time_us: u32,
    /// Time of the whole restore.
    pub restore_time_us: u32,
    /// Pages restored.
    pub pages_restored: u64,
}

/// Read `stats-dump` from an images dir.
pub fn read_dump_stats(images_dir: &Path) -> Result<DumpStats, CriuError> {
    let path = images_dir.join(DUMP_STATS_FILE);
    let entry = read_entry(&path)?;
    let body = nested(&path, &entry, 1)?.ok_or_else(|| bad(&path, "no dump entry"))?;
    let mut s = DumpStats::default();
    for (field, v) in varints(&path, &body)? {
        match field {
            1 => s.freezing_time_us = v as u32,
            2 => s.frozen_time_us = v as u32,
            3 => s.memdump_time_us = v as u32,
            4 => s.memwrite_time_us = v as u32,
            5 => s.pages_scanned = v,
            6 => s.pages_skipped_parent = v,
            7 => s.pages_written = v,
            9 => s.pages_lazy = v,
            _ => {}
        }
    }
    Ok(s)
}

/// Read `stats-restore` from an images dir.
pub fn read_restore_stats(images_dir: &Path) -> Result<RestoreStats, CriuError> {
    let path = images_dir.join(RESTORE_STATS_FILE);
    let entry = read_entry(&path)?;
    let body = nested(&path, &entry, 2)?.ok_or_else(|| bad(&path, "no restore entry"))?;
    let mut s = RestoreStats::default();
    for (field, v) in varints(&path, &body)? {
        match field {
            1 => s.pages_compared = v,
            2 => s.pages_skipped_cow = v,
            3 => s.forking_time_us = v as u32,
            4 => s.restore_time_us = v as u32,
            5 => s.pages_restored = v,
            _ => {}
        }
    }
    Ok(s)
}

fn bad(path: &Path, reason: impl Into<String>) -> CriuError {
    CriuError::Image {
        path: PathBuf::from(path),
        reason: reason.into(),
    }
}

/// The `stats_entry` message bytes of a stats image.
fn read_entry(path: &Path) -> Result<Vec<u8>, CriuError> {
    let data = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    parse_image(&data).map_err(|r| bad(path, r))
}

fn parse_image(data: &[u8]) -> Result<Vec<u8>, String> {
    let word = |i: usize| -> Result<u32, String> {
        data.get(i..i + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("truncated at byte {i}"))
    };
    let (m0, m1) = (word(0)?, word(4)?);
    if m0 != IMG_SERVICE_MAGIC || m1 != STATS_MAGIC {
        return Err(format!(
            "not a CRIU stats image (magic {m0:#010x} {m1:#010x})"
        ));
    }
    let len = word(8)? as usize;
    data.get(12..12 + len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format!("entry of {len} bytes is truncated"))
}

/// The bytes of length-delimited field `field` of `msg`, if present.
fn nested(path: &Path, msg: &[u8], field: u32) -> Result<Option<Vec<u8>>, CriuError> {
    let mut is = CodedInputStream::from_bytes(msg);
    let mut found = None;
    while let Some(tag) = is
        .read_raw_tag_or_eof()
        .map_err(|e| bad(path, e.to_string()))?
    {
        if tag >> 3 == field && tag & 7 == WireType::LengthDelimited as u32 {
            found = Some(is.read_bytes().map_err(|e| bad(path, e.to_string()))?);
        } else {
            protobuf::rt::skip_field_for_tag(tag, &mut is).map_err(|e| bad(path, e.to_string()))?;
        }
    }
    Ok(found)
}

/// All varint fields of `msg` as (field number, value); other fields are skipped.
fn varints(path: &Path, msg: &[u8]) -> Result<Vec<(u32, u64)>, CriuError> {
    let mut is = CodedInputStream::from_bytes(msg);
    let mut out = Vec::new();
    while let Some(tag) = is
        .read_raw_tag_or_eof()
        .map_err(|e| bad(path, e.to_string()))?
    {
        if tag & 7 == WireType::Varint as u32 {
            out.push((
                tag >> 3,
                is.read_uint64().map_err(|e| bad(path, e.to_string()))?,
            ));
        } else {
            protobuf::rt::skip_field_for_tag(tag, &mut is).map_err(|e| bad(path, e.to_string()))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `stats-dump` written by criu 4.1.1 (a small shell loop).
    const DUMP: &[u8] = &[
        0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x23, 0x00, 0x00, 0x00, 0x0a, 0x21, 0x08,
        0xac, 0x01, 0x10, 0x82, 0xb5, 0x01, 0x18, 0x98, 0x06, 0x20, 0xa1, 0x01, 0x28, 0x68, 0x30,
        0x00, 0x38, 0x3c, 0x40, 0x00, 0x48, 0x00, 0x50, 0x0c, 0x58, 0x0c, 0x60, 0x00, 0x68, 0x00,
        0x70, 0x00,
    ];
    /// The matching `stats-restore`.
    const RESTORE: &[u8] = &[
        0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x0e, 0x00, 0x00, 0x00, 0x12, 0x0c, 0x08,
        0x00, 0x10, 0x00, 0x18, 0xf8, 0x02, 0x20, 0xab, 0x4b, 0x28, 0x3c,
    ];

    #[test]
    fn parses_stats_written_by_criu() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DUMP_STATS_FILE), DUMP).unwrap();
        std::fs::write(dir.path().join(RESTORE_STATS_FILE), RESTORE).unwrap();
        let d = read_dump_stats(dir.path()).unwrap();
        assert_eq!(d.pages_scanned, 0x68);
        assert_eq!(d.pages_written, 0x3c);
        assert_eq!(d.pages_skipped_parent, 0);
        assert_eq!(d.freezing_time_us, 0xac);
        let r = read_restore_stats(dir.path()).unwrap();
        assert_eq!(r.pages_restored, 0x3c);
        assert_eq!(r.forking_time_us, 0x178);
    }

    #[test]
    fn rejects_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DUMP_STATS_FILE), b"not an image").unwrap();
        let e = read_dump_stats(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a CRIU stats image"), "{e}");
        std::fs::write(dir.path().join(DUMP_STATS_FILE), &DUMP[..20]).unwrap();
        let e = read_dump_stats(dir.path()).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // A restore image has no dump entry.
        std::fs::write(dir.path().join(DUMP_STATS_FILE), RESTORE).unwrap();
        let e = read_dump_stats(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no dump entry"), "{e}");
        let e = read_restore_stats(dir.path()).unwrap_err().to_string();
        assert!(e.contains("stats-restore"), "{e}");
    }
}
