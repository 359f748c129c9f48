//! Small filesystem helpers the store needs and std lacks: directory fsync, preallocation, hole punching,
//! atomic replacement of small files, and 20-digit file names.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{CommitLogError, Result};

/// fsyncs a directory so that creations, renames and unlinks inside it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| CommitLogError::io("open dir", dir, e))?;
    f.sync_all().map_err(|e| CommitLogError::io("fsync dir", dir, e))
}

/// Creates `dir` and its missing ancestors so that each exists durably: a new directory's entry is durable
/// only once its parent is fsynced (an fsync of the directory itself, or of files in it, does not cover
/// it), and everything inside a directory whose entry is lost is lost with it at a power failure. The
/// parent of `dir` is fsynced even when `dir` exists, because a process that created it may have died
/// before doing so.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    let parent_of = |d: &Path| match d.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.is_dir() {
        missing.push(at);
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(CommitLogError::io("create dir", d, e)),
        }
        fsync_dir(&parent_of(d))?;
    }
    if missing.is_empty() {
        fsync_dir(&parent_of(dir))?;
    }
    Ok(())
}

/// Allocates `len` bytes of disk for `file` so later writes never need block allocation or size updates
/// (fdatasync then has no size metadata to flush). Falls back to `set_len` where fallocate is unsupported.
pub fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    // SAFETY: fallocate on a valid, owned descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(CommitLogError::io("fallocate", path, err));
        }
        file.set_len(len).map_err(|e| CommitLogError::io("set_len", path, e))?;
    }
    Ok(())
}

/// Makes `[offset, offset + len)` of `file` read as zeros. Punches a hole and re-allocates it (cheap even
/// for a whole gigabyte); writes zeros where the filesystem cannot punch.
pub fn zero_range(file: &File, path: &Path, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let fd = file.as_raw_fd();
    // SAFETY: fallocate on a valid, owned descriptor; no memory is passed.
    let punched =
        unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset as libc::off_t, len as libc::off_t) }
            == 0;
    if punched {
        // SAFETY: as above.
        let rc = unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, offset as libc::off_t, len as libc::off_t) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(CommitLogError::io("fallocate", path, err));
            }
        }
        return Ok(());
    }
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = ((end - at) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], at).map_err(|e| CommitLogError::io("zero", path, e))?;
        at += n as u64;
    }
    Ok(())
}

/// Replaces `dir/name` with `contents` atomically: write a temp file, fsync it, rename it into place, and
/// (when `durable`) fsync the directory. A crash leaves either the old or the new file. Without `durable`
/// the replacement may be lost at a power failure, but the temp file is still fsynced before the rename:
/// any later fsync of the directory (another file's durable save) makes the rename durable, and the name
/// must never point at contents that were not on disk (a torn file fails its CRC and stops startup).
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], durable: bool) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    {
        let mut f =
            OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(|e| CommitLogError::io("create", &tmp, e))?;
        f.write_all(contents).map_err(|e| CommitLogError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| CommitLogError::io("fsync", &tmp, e))?;
    }
    fs::rename(&tmp, &dst).map_err(|e| CommitLogError::io("rename", &dst, e))?;
    if durable {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// A small metadata file: `crc u32 | len u32 | payload`, so a half-written or damaged file is detected.
pub fn encode_meta_file(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads a metadata file written by [`write_atomic`] + [`encode_meta_file`]; `Ok(None)` if absent.
pub fn read_meta_file(path: &Path) -> Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CommitLogError::io("read", path, e)),
    };
    let corrupt = |reason: &str| CommitLogError::Corrupt { file: path.to_path_buf(), offset: 0, reason: reason.to_string() };
    if bytes.len() < 8 {
        return Err(corrupt("metadata file shorter than its header"));
    }
    let crc = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if bytes.len() != 8 + len {
        return Err(corrupt("metadata file length does not match its header"));
    }
    if crc32fast::hash(&bytes[8..]) != crc {
        return Err(corrupt("metadata file crc mismatch"));
    }
    Ok(Some(bytes[8..].to_vec()))
}

/// The 20-digit, zero-padded file name RocketMQ and DLedger use for segments.
pub fn file_name(n: u64) -> String {
    format!("{n:020}")
}

/// Lists `dir`'s files whose names are 20-digit numbers, sorted by that number. Other files are ignored.
pub fn list_numbered(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| CommitLogError::io("read dir", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| CommitLogError::io("read dir", dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = name.parse::<u64>() {
                out.push((n, ent.path()));
            }
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// Size and free space of the filesystem holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Total bytes.
    pub total: u64,
    /// Bytes available to an unprivileged writer.
    pub available: u64,
}

impl DiskUsage {
    /// Used fraction as RocketMQ computes it: (total − available) / total; 0 for an empty filesystem.
    pub fn used_ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.total.saturating_sub(self.available) as f64 / self.total as f64
        }
    }
}

/// `statvfs` of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> std::io::Result<DiskUsage> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points at writable memory of the right type.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    // The field types are u64 on 64-bit Linux (fsblkcnt_t, c_ulong).
    let frsize = st.f_frsize;
    Ok(DiskUsage { total: st.f_blocks.saturating_mul(frsize), available: st.f_bavail.saturating_mul(frsize) })
}
