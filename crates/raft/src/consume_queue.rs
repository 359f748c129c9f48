//! Consume queues: per topic-queue arrays of RocketMQ's 20-byte units (commitlog physical offset i64,
//! message size i32, tag hash i64; big-endian as in RocketMQ) that point into the commitlog instead of
//! copying message bodies.
//!
//! Files are `consumequeue/<topic>/<queueId>/<20-digit first byte offset>`, fixed-size and mapped. Every
//! file's blocks are allocated (`posix_fallocate`) before it is mapped, so a full disk fails the file's
//! creation with `ENOSPC` instead of raising SIGBUS on a later write through the mapping. Only the
//! state-machine worker writes; any thread reads units below the published `max_offset`.
//! Durability comes from checkpoints (`state_machine.rs`): units are msynced — and a new file, its
//! directory entry and any directory created for it are fsynced — before a checkpoint that covers them is
//! written, and re-apply after a restart rewrites identical units.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use memmap2::{MmapOptions, MmapRaw};
use tokio::sync::Notify;

use crate::error::StoreFailure;

/// Bytes of one consume-queue unit (RocketMQ's `CQ_STORE_UNIT_SIZE`).
pub const CQ_UNIT_LEN: usize = 20;

/// One consume-queue unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqUnit {
    /// Absolute commitlog offset of the message bytes.
    pub phys_offset: u64,
    /// Message size in bytes.
    pub size: u32,
    /// Tag hash.
    pub tags_code: i64,
}

impl CqUnit {
    fn encode(&self) -> [u8; CQ_UNIT_LEN] {
        let mut b = [0u8; CQ_UNIT_LEN];
        b[..8].copy_from_slice(&self.phys_offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> CqUnit {
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[..8]);
        let mut s = [0u8; 4];
        s.copy_from_slice(&b[8..12]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[12..20]);
        CqUnit { phys_offset: u64::from_be_bytes(p), size: u32::from_be_bytes(s), tags_code: i64::from_be_bytes(t) }
    }
}

/// One mapped consume-queue file.
pub struct CqFile {
    /// Queue offset of the file's first unit.
    base: u64,
    path: PathBuf,
    map: MmapRaw,
    dirty: AtomicBool,
    /// Set while the file was created by this process and not yet fsynced: the file (its allocation) and
    /// these directories must be made durable before a checkpoint may cover its units.
    unsynced_dirs: Mutex<Option<Vec<PathBuf>>>,
}

/// Allocates every block of `[0, len)` of `file`. `posix_fallocate` falls back to writing zeros where the
/// filesystem has no `fallocate`, so no hole is left for a write through the mapping to fault on.
fn allocate(file: &fs::File, len: u64) -> std::io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: posix_fallocate on a valid, owned descriptor; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        // posix_fallocate returns the error number instead of setting errno.
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// fsyncs a file or directory, so its data and the entries created in it are durable. One that no longer
/// exists needs nothing: retention or a snapshot install removed it after it was queued for a flush.
fn fsync_path(path: &Path, op: &str) -> Result<(), StoreFailure> {
    match fs::File::open(path).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreFailure::io(op, path, &e)),
    }
}

impl CqFile {
    /// Opens the file of the units from `base`, creating and allocating it if it is missing. A file that
    /// cannot be allocated (disk full) is removed again when this call created it.
    fn open(dir: &Path, base: u64, units: u64) -> Result<Arc<CqFile>, StoreFailure> {
        let path = dir.join(format!("{:020}", base * CQ_UNIT_LEN as u64));
        let (file, created) = match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let f =
                    OpenOptions::new().read(true).write(true).open(&path).map_err(|e| StoreFailure::io("open consume queue", &path, &e))?;
                (f, false)
            }
            Err(e) => return Err(StoreFailure::io("create consume queue", &path, &e)),
        };
        let len = units * CQ_UNIT_LEN as u64;
        // Also for an existing file: one written by an older version may be sparse; allocating an
        // allocated range costs nothing.
        if let Err(e) = allocate(&file, len) {
            if created {
                let _ = fs::remove_file(&path);
            }
            return Err(StoreFailure::io("fallocate consume queue", &path, &e));
        }
        let map = MmapOptions::new().len(len as usize).map_raw(&file).map_err(|e| StoreFailure::io("mmap consume queue", &path, &e))?;
        // The file's entry lives in `dir`; `dir`, the topic directory and `consumequeue/` may be new too
        // (created with the queue), so their parents are fsynced as well: `<queueId>` in `<topic>`,
        // `<topic>` in `consumequeue`, `consumequeue` in the state directory. Once per new file.
        let unsynced_dirs = created.then(|| dir.ancestors().take(4).filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf).collect());
        Ok(Arc::new(CqFile { base, path, map, dirty: AtomicBool::new(false), unsynced_dirs: Mutex::new(unsynced_dirs) }))
    }

    /// Makes the units written so far durable: msyncs the file if units were written since the last
    /// flush, and on the first flush of a file this process created, fsyncs the file and the directories
    /// that must hold it.
    ///
    /// # Errors
    /// The failed msync or fsync. The file stays dirty, but the caller must treat the error as fatal: a
    /// failed writeback may have marked pages clean, so no later flush could vouch for them.
    pub fn flush(&self) -> Result<(), StoreFailure> {
        // Cleared before the msync: a unit written meanwhile marks the file dirty again and is flushed
        // with the next checkpoint. Restored on failure so the file never looks clean when it is not.
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.map.flush() {
                self.dirty.store(true, Ordering::Release);
                return Err(StoreFailure::io("msync consume queue", &self.path, &e));
            }
        }
        let mut unsynced = self.unsynced_dirs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dirs) = unsynced.as_ref() {
            fsync_path(&self.path, "fsync consume queue")?;
            for d in dirs {
                fsync_path(d, "fsync consume-queue dir")?;
            }
            *unsynced = None;
        }
        Ok(())
    }
}

/// The consume queue of one topic-queue.
pub struct ConsumeQueue {
    dir: PathBuf,
    units_per_file: u64,
    files: RwLock<BTreeMap<u64, Arc<CqFile>>>,
    min_offset: AtomicU64,
    max_offset: AtomicU64,
    /// Woken whenever units are published: long-polling pulls wait on it.
    pub notify: Notify,
}

impl ConsumeQueue {
    /// Opens the queue directory. Units in `[min_offset, max_offset)` are trusted (restored from a
    /// checkpoint); anything beyond is overwritten by re-apply. (Public for benchmarks; the state machine
    /// owns its queues.)
    ///
    /// # Errors
    /// A directory that cannot be created or read, a file that cannot be opened or allocated.
    pub fn open(dir: PathBuf, units_per_file: u64, min_offset: u64, max_offset: u64) -> Result<ConsumeQueue, StoreFailure> {
        fs::create_dir_all(&dir).map_err(|e| StoreFailure::io("create consume-queue dir", &dir, &e))?;
        let mut files = BTreeMap::new();
        let read_err = |e: std::io::Error| StoreFailure::io("read consume-queue dir", &dir, &e);
        for ent in fs::read_dir(&dir).map_err(read_err)? {
            let ent = ent.map_err(read_err)?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(byte_base) = name.parse::<u64>() else { continue };
            let base = byte_base / CQ_UNIT_LEN as u64;
            if base + units_per_file <= min_offset {
                // Wholly below the retained range: left over from a purge.
                fs::remove_file(ent.path()).map_err(|e| StoreFailure::io("remove consume queue", ent.path(), &e))?;
                continue;
            }
            files.insert(base, CqFile::open(&dir, base, units_per_file)?);
        }
        Ok(ConsumeQueue {
            dir,
            units_per_file,
            files: RwLock::new(files),
            min_offset: AtomicU64::new(min_offset),
            max_offset: AtomicU64::new(max_offset),
            notify: Notify::new(),
        })
    }

    /// First offset still served.
    pub fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire)
    }

    /// Offset the next message will get (RocketMQ's max offset).
    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    fn file_for(&self, offset: u64) -> Option<Arc<CqFile>> {
        let base = offset - offset % self.units_per_file;
        self.files.read().unwrap_or_else(|p| p.into_inner()).get(&base).cloned()
    }

    /// Writes the unit for `offset` (not yet visible to readers). Returns the file it went to, newly dirty.
    /// Only the state machine's apply path (and benchmarks) may write.
    ///
    /// # Errors
    /// A new file that cannot be created or allocated (`StorageFull` when the disk is full). Nothing is
    /// written then.
    pub fn write(&self, offset: u64, unit: &CqUnit) -> Result<Option<Arc<CqFile>>, StoreFailure> {
        let file = match self.file_for(offset) {
            Some(f) => f,
            None => {
                let base = offset - offset % self.units_per_file;
                let f = CqFile::open(&self.dir, base, self.units_per_file)?;
                self.files.write().unwrap_or_else(|p| p.into_inner()).insert(base, Arc::clone(&f));
                f
            }
        };
        let at = ((offset - file.base) as usize) * CQ_UNIT_LEN;
        let bytes = unit.encode();
        // SAFETY: `at + 20` is inside the mapping (offset lies in this file's range). Only the state-machine
        // worker writes, and readers never read units at or above `max_offset`, which is published after.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), file.map.as_mut_ptr().add(at), CQ_UNIT_LEN) };
        let newly_dirty = !file.dirty.swap(true, Ordering::AcqRel);
        Ok(newly_dirty.then_some(file))
    }

    /// Makes units below `max` visible and wakes waiting pulls.
    pub fn publish(&self, max: u64) {
        self.max_offset.store(max, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Reads the unit at `offset`, if it lies in `[min_offset, max_offset)`.
    pub fn get(&self, offset: u64) -> Option<CqUnit> {
        if offset < self.min_offset() || offset >= self.max_offset() {
            return None;
        }
        let file = self.file_for(offset)?;
        let at = ((offset - file.base) as usize) * CQ_UNIT_LEN;
        // SAFETY: inside the mapping; the unit was fully written before `max_offset` was published.
        let b = unsafe { std::slice::from_raw_parts(file.map.as_ptr().add(at), CQ_UNIT_LEN) };
        Some(CqUnit::decode(b))
    }

    /// Reads up to `units_max` consecutive units starting at `from`.
    pub fn read(&self, from: u64, units_max: usize) -> Vec<CqUnit> {
        let end = self.max_offset().min(from.saturating_add(units_max as u64));
        (from.max(self.min_offset())..end).map_while(|o| self.get(o)).collect()
    }

    /// Raises the first served offset (retention) and deletes files wholly below it.
    pub(crate) fn advance_min(&self, min: u64) -> Result<(), StoreFailure> {
        self.min_offset.fetch_max(min, Ordering::AcqRel);
        let min = self.min_offset();
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<u64> = files.keys().copied().filter(|b| b + self.units_per_file <= min).collect();
        for b in doomed {
            if let Some(f) = files.remove(&b) {
                fs::remove_file(&f.path).map_err(|e| StoreFailure::io("remove consume queue", &f.path, &e))?;
            }
        }
        Ok(())
    }

    /// Binary-searches the first offset whose unit points at or after `pos` (units grow with the log).
    pub fn first_offset_at_or_after(&self, pos: u64) -> u64 {
        let (mut lo, mut hi) = (self.min_offset(), self.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(u) if u.phys_offset < pos => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }
}

/// Directory name for a topic: the name itself when it is a plain file name, else `~` + hex, so no topic
/// can escape the consume-queue directory.
pub fn topic_dir_name(topic: &str) -> String {
    let plain = !topic.is_empty()
        && topic != "."
        && topic != ".."
        && !topic.starts_with('~')
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"%|_-.".contains(&b));
    if plain {
        topic.to_string()
    } else {
        let mut s = String::from("~");
        for b in topic.bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_across_files_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path().join("q"), 4, 0, 0).unwrap();
        for i in 0..10u64 {
            q.write(i, &CqUnit { phys_offset: i * 100, size: 10 + i as u32, tags_code: -(i as i64) }).unwrap();
        }
        assert_eq!(q.get(3), None, "unpublished units are invisible");
        q.publish(10);
        assert_eq!(q.get(9), Some(CqUnit { phys_offset: 900, size: 19, tags_code: -9 }));
        assert_eq!(q.read(2, 3).len(), 3);
        assert_eq!(q.first_offset_at_or_after(450), 5);
        q.advance_min(8).unwrap();
        assert_eq!(q.get(7), None);
        drop(q);
        let q = ConsumeQueue::open(dir.path().join("q"), 4, 8, 10).unwrap();
        assert_eq!(q.get(8), Some(CqUnit { phys_offset: 800, size: 18, tags_code: -8 }));
        assert_eq!(fs::read_dir(dir.path().join("q")).unwrap().count(), 1, "files below min offset are removed");
    }

    #[test]
    fn a_new_file_removed_before_its_first_flush_flushes_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path().join("cq").join("T").join("0"), 4, 0, 0).unwrap();
        let f = q.write(0, &CqUnit { phys_offset: 0, size: 1, tags_code: 0 }).unwrap().expect("newly dirty");
        q.publish(1);
        // Retention removes the file while its checkpoint job is still queued.
        q.advance_min(4).unwrap();
        assert!(!f.path.exists());
        f.flush().expect("nothing left to make durable");
        let g = q.write(4, &CqUnit { phys_offset: 9, size: 1, tags_code: 0 }).unwrap().expect("a new file");
        g.flush().expect("flush: msync, fsync of the file and its directories");
        assert!(g.unsynced_dirs.lock().unwrap().is_none(), "fsynced once");
    }

    #[test]
    fn topic_dirs_cannot_escape() {
        assert_eq!(topic_dir_name("TopicA"), "TopicA");
        assert_eq!(topic_dir_name("%RETRY%g"), "%RETRY%g");
        assert_eq!(topic_dir_name(".."), "~2e2e");
        assert_eq!(topic_dir_name("a/b"), "~612f62");
    }
}
