//! The external mounts a checkpoint needs, read from its `mountpoints-N.img` images.
//!
//! CRIU only says "No mapping for 66:(null) mountpoint" when a restore lacks the host
//! path of an external mount; reading the keys beforehand lets the restore name the
//! missing one (and lets the runtime learn what a checkpoint needs). rust-criu has no
//! type for `mnt.proto`, so the few fields are read with the protobuf wire reader.

use std::path::{Path, PathBuf};

use protobuf::rt::WireType;
use protobuf::CodedInputStream;

use super::error::CriuError;

/// `IMG_COMMON_MAGIC`: the first word of every image of the checkpointed state.
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;

/// An external mount recorded in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMountRecord {
    /// The key it was dumped under (`mnt[mountpoint]:key`).
    pub key: String,
    /// Where it is mounted in the tree's mount namespace.
    pub mountpoint: String,
}

/// Every external mount of the checkpoint in `images_dir` (empty when the tree had no
/// mount namespace of its own).
pub fn external_mounts(images_dir: &Path) -> Result<Vec<ExternalMountRecord>, CriuError> {
    let dir = std::fs::read_dir(images_dir).map_err(|source| CriuError::Dir {
        what: "images",
        path: images_dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("mountpoints-") && name.ends_with(".img") {
            let path = entry.path();
            let data = std::fs::read(&path).map_err(|e| bad(&path, e.to_string()))?;
            for e in entries(&data).map_err(|r| bad(&path, r))? {
                if let Some(rec) = external(e).map_err(|r| bad(&path, r))? {
                    out.push(rec);
                }
            }
        }
    }
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(out)
}

fn bad(path: &Path, reason: impl Into<String>) -> CriuError {
    CriuError::Image {
        path: PathBuf::from(path),
        reason: reason.into(),
    }
}

/// The length-prefixed entries of a common (state) image.
fn entries(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let word = |i: usize| -> Option<u32> {
        data.get(i..i + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    if word(0) != Some(IMG_COMMON_MAGIC) || word(4).is_none() {
        return Err("not a CRIU image (bad magic)".into());
    }
    let mut out = Vec::new();
    let mut at = 8;
    while at < data.len() {
        let len = word(at).ok_or_else(|| format!("truncated at byte {at}"))? as usize;
        let body = data
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| format!("entry of {len} bytes at byte {at} is truncated"))?;
        out.push(body);
        at += 4 + len;
    }
    Ok(out)
}

/// The key and mount point of an `mnt_entry`, if it is external.
fn external(entry: &[u8]) -> Result<Option<ExternalMountRecord>, String> {
    let mut is = CodedInputStream::from_bytes(entry);
    let (mut mountpoint, mut key, mut ext) = (String::new(), None, false);
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (7, w) if w == WireType::LengthDelimited as u32 => {
                mountpoint = is.read_string().map_err(|e| e.to_string())?;
            }
            (13, w) if w == WireType::Varint as u32 => {
                ext = is.read_bool().map_err(|e| e.to_string())?;
            }
            (18, w) if w == WireType::LengthDelimited as u32 => {
                key = Some(is.read_string().map_err(|e| e.to_string())?);
            }
            _ => protobuf::rt::skip_field_for_tag(tag, &mut is).map_err(|e| e.to_string())?,
        }
    }
    Ok(match key {
        Some(key) if ext || !key.is_empty() => Some(ExternalMountRecord { key, mountpoint }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image with one plain and one external mount entry.
    fn image() -> Vec<u8> {
        let mut img = Vec::new();
        img.extend(IMG_COMMON_MAGIC.to_le_bytes());
        img.extend(0x1234_5678u32.to_le_bytes());
        let mut plain = vec![0x08, 0x01, 0x3a, 0x01, b'/'];
        plain.extend([0x42, 0x00]);
        let mut ext = vec![0x3a, 0x05];
        ext.extend(b"/data");
        ext.extend([0x68, 0x01, 0x92, 0x01, 0x04]);
        ext.extend(b"data");
        for e in [plain, ext] {
            img.extend((e.len() as u32).to_le_bytes());
            img.extend(e);
        }
        img
    }

    #[test]
    fn finds_external_mounts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mountpoints-12.img"), image()).unwrap();
        std::fs::write(dir.path().join("pstree.img"), b"other").unwrap();
        let found = external_mounts(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![ExternalMountRecord {
                key: "data".into(),
                mountpoint: "/data".into()
            }]
        );
    }

    #[test]
    fn rejects_broken_images() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = image();
        img.truncate(img.len() - 2);
        std::fs::write(dir.path().join("mountpoints-1.img"), &img).unwrap();
        let e = external_mounts(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("truncated") && e.contains("mountpoints-1.img"),
            "{e}"
        );
        std::fs::write(dir.path().join("mountpoints-1.img"), b"garbage!").unwrap();
        let e = external_mounts(dir.path()).unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
        let e = external_mounts(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
    }
}
