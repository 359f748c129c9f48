//! Data segments and index files: fixed-size, preallocated files written with `pwrite` on the IO thread
//! and read through a shared read-only `mmap` by any thread.
//!
//! Readers hold `Arc`s to these files, so a purge that unlinks a file never invalidates an in-flight read:
//! the mapping lives until the last `Arc` (and every `Bytes` sliced from it) is dropped.
//!
//! The descriptor is needed only for writes and syncs: the store releases it once a file is sealed and
//! synced ([`MappedFile::release_fd`]) and it is reopened if that file is ever written again (a truncate back
//! into it), so a long log holds two descriptors (active segment and index file), not one per file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

use crate::error::{CommitLogError, Result};
use crate::fsutil;
use crate::record::RecordKind;

/// A fixed-size file mapped for reading and written through its descriptor.
pub(crate) struct MappedFile {
    /// The number in the file name: a byte offset for data segments, a Raft index for index files.
    pub base: u64,
    pub path: PathBuf,
    /// Open while the file is being written; `None` once released (reopened on the next write or sync).
    file: Mutex<Option<File>>,
    map: Mmap,
}

impl MappedFile {
    /// Creates and preallocates a new file of `len` bytes and makes its existence durable.
    pub fn create(dir: &Path, base: u64, len: u64) -> Result<Arc<Self>> {
        let path = dir.join(fsutil::file_name(base));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| CommitLogError::io("create", &path, e))?;
        fsutil::preallocate(&file, &path, len)?;
        file.sync_all().map_err(|e| CommitLogError::io("fsync", &path, e))?;
        fsutil::fsync_dir(dir)?;
        Self::map(base, path, file, len)
    }

    /// Opens an existing file. A file shorter than `len` is extended when `extend_short` is set (a crash
    /// during preallocation of the newest file), and is corruption otherwise.
    pub fn open(path: PathBuf, base: u64, len: u64, extend_short: bool) -> Result<Arc<Self>> {
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| CommitLogError::io("open", &path, e))?;
        let actual = file.metadata().map_err(|e| CommitLogError::io("stat", &path, e))?.len();
        if actual != len {
            if actual < len && extend_short {
                fsutil::preallocate(&file, &path, len)?;
                file.sync_all().map_err(|e| CommitLogError::io("fsync", &path, e))?;
            } else {
                return Err(CommitLogError::Corrupt {
                    file: path,
                    offset: actual,
                    reason: format!("file is {actual} bytes, configured size is {len}"),
                });
            }
        }
        Self::map(base, path, file, len)
    }

    fn map(base: u64, path: PathBuf, file: File, len: u64) -> Result<Arc<Self>> {
        // SAFETY: the mapping is read-only. The store only rewrites bytes that no reader may hold (the
        // uncommitted tail after a truncate); committed bytes are immutable until their file is unlinked.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file) }.map_err(|e| CommitLogError::io("mmap", &path, e))?;
        Ok(Arc::new(MappedFile { base, path, file: Mutex::new(Some(file)), map }))
    }

    /// Runs `f` on the file's descriptor, reopening the file if its descriptor was released.
    fn with_file<R>(&self, f: impl FnOnce(&File) -> Result<R>) -> Result<R> {
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let file =
                OpenOptions::new().read(true).write(true).open(&self.path).map_err(|e| CommitLogError::io("reopen", &self.path, e))?;
            *g = Some(file);
        }
        match g.as_ref() {
            Some(file) => f(file),
            None => Err(CommitLogError::io("reopen", &self.path, io::Error::other("descriptor vanished"))),
        }
    }

    /// Closes the descriptor (the mapping stays). Only for a file whose writes were all synced: a sync
    /// through a later descriptor could miss a writeback error that happened before it was opened.
    pub fn release_fd(&self) {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Whether the descriptor is open.
    #[cfg(test)]
    pub fn has_fd(&self) -> bool {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        debug_assert!(offset + buf.len() as u64 <= self.len());
        self.with_file(|f| f.write_all_at(buf, offset).map_err(|e| CommitLogError::io("write", &self.path, e)))
    }

    pub fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.with_file(|f| fsutil::zero_range(f, &self.path, offset, len))
    }

    /// Whether everything from `offset` to the end reads as zeros. Only the ranges the filesystem reports
    /// as data (SEEK_DATA / SEEK_HOLE: written extents, or pages in the page cache) are read, so the
    /// unwritten rest of a preallocated segment costs nothing instead of a page fault per page. All ranges
    /// are asked for before any is read: reading pulls zero pages (and their readahead) into the page
    /// cache, which the filesystem would then report as data. Where it cannot say, everything is read.
    pub fn is_zero_from(&self, offset: u64) -> Result<bool> {
        self.with_file(|f| self.is_zero_from_fd(f.as_raw_fd(), offset))
    }

    fn is_zero_from_fd(&self, fd: std::os::unix::io::RawFd, offset: u64) -> Result<bool> {
        let end = self.len();
        let mut ranges = Vec::new();
        let mut at = offset;
        while at < end {
            // SAFETY: lseek on a valid, owned descriptor; the store only uses positional IO on it.
            let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ENXIO) => break,
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                        ranges.push((at, end));
                        break;
                    }
                    _ => return Err(CommitLogError::io("seek data", &self.path, err)),
                }
            }
            let data = (data as u64).max(at);
            if data >= end {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
            let hole = if hole < 0 { end } else { (hole as u64).clamp(data + 1, end) };
            ranges.push((data, hole));
            at = hole;
        }
        Ok(ranges.into_iter().all(|(from, to)| self.map[from as usize..to as usize].iter().all(|&b| b == 0)))
    }

    pub fn sync_data(&self) -> Result<()> {
        self.with_file(|f| f.sync_data().map_err(|e| CommitLogError::io("fdatasync", &self.path, e)))
    }

    /// A zero-copy `Bytes` over `[offset, offset + len)` that keeps the mapping alive.
    pub fn slice(self: &Arc<Self>, offset: u64, len: usize) -> Bytes {
        debug_assert!(offset as usize + len <= self.map.len());
        Bytes::from_owner(MappedSlice { file: Arc::clone(self), start: offset as usize, len })
    }
}

struct MappedSlice {
    file: Arc<MappedFile>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        &self.file.map[self.start..self.start + self.len]
    }
}

/// Bytes of one dense-index slot.
pub const SLOT_LEN: usize = 32;
const SLOT_TAG: u32 = 0x4944_5800;

/// One dense-index slot: where a Raft index lives in the data segments, with its log id.
///
/// Layout (little-endian): `pos u64 | len u32 | tag u32 ("IDX" << 8 | kind) | term u64 | node u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Absolute byte position of the record in the log (segment base + offset in segment).
    pub pos: u64,
    /// Record length including the header.
    pub len: u32,
    /// Record kind.
    pub kind: RecordKind,
    /// Term of the record.
    pub term: u64,
    /// Leader node id of the record.
    pub node: u64,
}

impl Slot {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pos.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(SLOT_TAG | self.kind as u32).to_le_bytes());
        out.extend_from_slice(&self.term.to_le_bytes());
        out.extend_from_slice(&self.node.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<Slot> {
        let tag = u32::from_le_bytes(b[12..16].try_into().ok()?);
        if tag & 0xFFFF_FF00 != SLOT_TAG {
            return None;
        }
        Some(Slot {
            pos: u64::from_le_bytes(b[0..8].try_into().ok()?),
            len: u32::from_le_bytes(b[8..12].try_into().ok()?),
            kind: RecordKind::from_u8((tag & 0xFF) as u8)?,
            term: u64::from_le_bytes(b[16..24].try_into().ok()?),
            node: u64::from_le_bytes(b[24..32].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_from_sees_every_non_zero_byte() {
        let dir = tempfile::tempdir().unwrap();
        let f = MappedFile::create(dir.path(), 0, 1 << 20).unwrap();
        assert!(f.is_zero_from(0).unwrap(), "a fresh preallocated file");
        // Zeros written early on (a written extent) and one byte far behind them, only in the page cache.
        f.write_at(100, &[0u8; 5000]).unwrap();
        f.write_at(700_000, &[0, 0, 5]).unwrap();
        for (from, zero) in [(0, false), (100, false), (700_002, false), (700_003, true), (1 << 20, true)] {
            assert_eq!(f.is_zero_from(from).unwrap(), zero, "from {from}, in the page cache");
        }
        f.sync_data().unwrap();
        assert!(!f.is_zero_from(6000).unwrap(), "written back");
        f.zero(700_000, 3).unwrap();
        assert!(f.is_zero_from(0).unwrap(), "after zeroing");
        f.write_at((1 << 20) - 1, &[9]).unwrap();
        assert!(!f.is_zero_from(0).unwrap(), "the last byte");
        // A released descriptor is reopened by the next write, and the mapping never went away.
        f.sync_data().unwrap();
        f.release_fd();
        assert!(!f.has_fd());
        assert_eq!(f.bytes()[(1 << 20) - 1], 9);
        f.write_at(0, &[7]).unwrap();
        assert!(f.has_fd());
        assert_eq!(f.bytes()[0], 7);
    }
}
