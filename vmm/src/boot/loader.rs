//! Loading the kernel (ELF or bzImage, via linux-loader) and the initrd into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile,
};

use crate::memory::layout;

/// Errors loading boot images.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The image could not be opened or read.
    #[error("reading {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage magic.
    #[error("{0} is not a kernel image: neither ELF (\\x7fELF) nor bzImage (HdrS at 0x202)")]
    UnknownFormat(PathBuf),
    /// The image is larger than guest memory.
    #[error("{path} ({size} bytes) does not fit in {mem_mib} MiB of guest memory")]
    TooBig {
        /// File.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Guest memory.
        mem_mib: u64,
    },
    /// linux-loader rejected the image (truncated, bad headers, outside guest memory...).
    #[error("loading {kind} kernel {path} (truncated or malformed image, or it does not fit in guest memory)")]
    Load {
        /// "ELF" or "bzImage".
        kind: &'static str,
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// No room for the initrd below the kernel's limit.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitrdTooBig {
        /// File.
        path: PathBuf,
        /// Size.
        size: u64,
        /// Highest usable address.
        limit: u64,
    },
    /// Copying the initrd failed.
    #[error("copying initrd {path} into guest memory")]
    InitrdCopy {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The format of a loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF, entered at `e_entry` in 64-bit mode.
    Elf,
    /// bzImage, entered at its 64-bit entry (load address + 0x200).
    BzImage,
}

/// Where a kernel landed and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Format.
    pub format: KernelFormat,
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte after the kernel.
    pub end: u64,
    /// The bzImage setup header, to copy into the zero page.
    pub setup_header: Option<setup_header>,
    /// PVH entry point, if the ELF carries a XEN_ELFNOTE_PHYS32_ENTRY note (see
    /// [`crate::config::BootProtocol`]).
    pub pvh_entry: Option<GuestAddress>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LoaderError + '_ {
    move |source| LoaderError::Io {
        path: path.into(),
        source,
    }
}

fn guest_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(GuestMemoryRegion::len).sum()
}

/// Load the kernel at `path`, detecting its format from its magic bytes.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let size = f.metadata().map_err(io_err(path))?.len();
    let mem_size = guest_size(mem);
    if size > mem_size {
        return Err(LoaderError::TooBig {
            path: path.into(),
            size,
            mem_mib: mem_size >> 20,
        });
    }
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut f, &mut head).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        let r = Elf::load(mem, None, &mut f, Some(GuestAddress(layout::KERNEL_START))).map_err(
            |source| LoaderError::Load {
                kind: "ELF",
                path: path.into(),
                source,
            },
        )?;
        let pvh_entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) => Some(a),
            _ => None,
        };
        Ok(LoadedKernel {
            format: KernelFormat::Elf,
            entry: r.kernel_load,
            end: r.kernel_end,
            setup_header: None,
            pvh_entry,
        })
    } else if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        let r = BzImage::load(
            mem,
            Some(GuestAddress(layout::KERNEL_START)),
            &mut f,
            Some(GuestAddress(layout::KERNEL_START)),
        )
        .map_err(|source| LoaderError::Load {
            kind: "bzImage",
            path: path.into(),
            source,
        })?;
        Ok(LoadedKernel {
            format: KernelFormat::BzImage,
            entry: r.kernel_load.unchecked_add(0x200),
            end: r.kernel_end,
            setup_header: r.setup_header,
            pvh_entry: None,
        })
    } else {
        Err(LoaderError::UnknownFormat(path.into()))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Load an initrd page-aligned as high as possible below `limit` (and the 32-bit MMIO hole),
/// above `kernel_end`. Returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(GuestAddress, u64), LoaderError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let size = f.metadata().map_err(io_err(path))?.len();
    let low_end = mem
        .iter()
        .map(|r| r.start_addr().raw_value() + GuestMemoryRegion::len(r))
        .filter(|e| *e <= layout::MMIO_GAP_START)
        .max()
        .unwrap_or(0);
    let top = low_end.min(limit.saturating_add(1));
    let too_big = || LoaderError::InitrdTooBig {
        path: path.into(),
        size,
        limit: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end {
        return Err(too_big());
    }
    let mut slice = mem
        .get_slice(GuestAddress(addr), size as usize)
        .map_err(|source| LoaderError::InitrdCopy {
            path: path.into(),
            source,
        })?;
    let mut done = 0usize;
    while done < size as usize {
        let mut sub =
            slice
                .subslice(done, size as usize - done)
                .map_err(|e| LoaderError::InitrdCopy {
                    path: path.into(),
                    source: e.into(),
                })?;
        match f.read_volatile(&mut sub) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) => {
                return Err(LoaderError::InitrdCopy {
                    path: path.into(),
                    source: e.into(),
                })
            }
        }
    }
    let _ = &mut slice;
    Ok((GuestAddress(addr), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        crate::memory::create_guest_memory(32).unwrap()
    }

    #[test]
    fn rejects_garbage_and_truncated_images() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"this is not a kernel").unwrap();
        let e = load_kernel(&mem(), &junk).unwrap_err();
        assert!(matches!(e, LoaderError::UnknownFormat(_)), "{e}");

        let elf = dir.path().join("elf");
        std::fs::File::create(&elf)
            .unwrap()
            .write_all(b"\x7fELF\x02\x01\x01")
            .unwrap();
        let e = load_kernel(&mem(), &elf).unwrap_err();
        assert!(matches!(e, LoaderError::Load { kind: "ELF", .. }), "{e}");

        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzp = dir.path().join("bz");
        std::fs::write(&bzp, &bz).unwrap();
        let e = load_kernel(&mem(), &bzp).unwrap_err();
        assert!(
            matches!(
                e,
                LoaderError::Load {
                    kind: "bzImage",
                    ..
                }
            ),
            "{e}"
        );

        let missing = dir.path().join("missing");
        assert!(matches!(
            load_kernel(&mem(), &missing).unwrap_err(),
            LoaderError::Io { .. }
        ));
    }

    #[test]
    fn rejects_image_larger_than_memory() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(64 << 20).unwrap();
        let e = load_kernel(&mem(), &big).unwrap_err();
        assert!(matches!(e, LoaderError::TooBig { .. }), "{e}");
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![0x5a; 10000]).unwrap();
        let m = mem();
        let (addr, size) = load_initrd(&m, &p, 0x200000, u64::MAX).unwrap();
        assert_eq!(size, 10000);
        assert_eq!(addr.raw_value() & 0xfff, 0);
        assert!(addr.raw_value() + size <= 32 << 20);
        let b: u8 = vm_memory::Bytes::read_obj(&m, GuestAddress(addr.raw_value() + 9999)).unwrap();
        assert_eq!(b, 0x5a);
        assert!(matches!(
            load_initrd(&m, &p, 32 << 20, u64::MAX),
            Err(LoaderError::InitrdTooBig { .. })
        ));
    }
}
