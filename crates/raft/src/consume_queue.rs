//! Consume queues: per topic-queue arrays of RocketMQ's 20-byte units (commitlog physical offset i64,
//! message size i32, tag hash i64; big-endian as in RocketMQ) that point into the commitlog instead of
//! copying message bodies.
//!
//! Files are `consumequeue/<topic>/<queueId>/<20-digit first byte offset>`, fixed-size. Every file's blocks
//! are allocated (`posix_fallocate`) before it is mapped, so a full disk fails the file's creation with
//! `ENOSPC` instead of raising SIGBUS on a later write through the mapping. They are mapped on use through
//! [`MappedFiles`], an LRU shared by all queues and bounded by `mapped_files_max`, and hold no descriptor.
//! Only the state-machine worker writes; any thread reads units below the published `max_offset`.
//! Durability comes from checkpoints (`state_machine.rs`): units are fdatasynced — and a new file, its
//! directory entry and any directory created for it are fsynced — before a checkpoint that covers them is
//! written, and re-apply after a restart rewrites identical units.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use memmap2::{MmapOptions, MmapRaw};
use tokio::sync::Notify;

use crate::error::StoreFailure;

pub use raftmq_state::{CqUnit, CQ_UNIT_LEN};

/// One consume-queue file on disk: its identity and whether units were written since its last flush. It
/// holds no descriptor and no mapping; those live in [`MappedFiles`] while the file is in use.
pub struct CqFile {
    /// Queue offset of the file's first unit.
    base: u64,
    path: PathBuf,
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
    fn new(base: u64, path: PathBuf, unsynced_dirs: Option<Vec<PathBuf>>) -> Arc<CqFile> {
        Arc::new(CqFile { base, path, dirty: AtomicBool::new(false), unsynced_dirs: Mutex::new(unsynced_dirs) })
    }

    /// Makes the units written since the last flush durable (fdatasync; the kernel writes back the pages
    /// dirtied through any mapping of the file, mapped now or not), and on the first flush of a file this
    /// process created, fsyncs the file and the directories that must hold it.
    ///
    /// # Errors
    /// The failed fdatasync or fsync. The file stays dirty, but the caller must treat the error as fatal: a
    /// failed writeback may have marked pages clean, so no later flush could vouch for them.
    pub fn flush(&self) -> Result<(), StoreFailure> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            match File::open(&self.path).and_then(|f| f.sync_data()) {
                Ok(()) => {}
                // Removed by retention or a snapshot install after it was queued: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.dirty.store(true, Ordering::Release);
                    return Err(StoreFailure::io("fdatasync consume queue", &self.path, &e));
                }
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

/// A mapping of one consume-queue file. Readers and the writer hold an `Arc` while they touch it, so the
/// cache may drop its reference (unmap) at any time without invalidating them.
struct CqMap {
    map: MmapRaw,
}

impl CqMap {
    /// Maps the file at `path`, creating it only when `create` is set (the writer): a reader racing a
    /// retention purge must not bring a deleted file back. Every block is allocated before the mapping
    /// (also for an existing file, which an older version may have left sparse); a file this call
    /// created and could not allocate (disk full) is removed again.
    fn open(path: &Path, units: u64, create: bool) -> Result<Arc<CqMap>, StoreFailure> {
        let reopen = || OpenOptions::new().read(true).write(true).open(path).map_err(|e| StoreFailure::io("open consume queue", path, &e));
        let (file, created) = match OpenOptions::new().read(true).write(true).create_new(create).open(path) {
            Ok(f) => (f, create),
            Err(e) if create && e.kind() == std::io::ErrorKind::AlreadyExists => (reopen()?, false),
            Err(e) => return Err(StoreFailure::io(if create { "create consume queue" } else { "open consume queue" }, path, &e)),
        };
        let len = units * CQ_UNIT_LEN as u64;
        if let Err(e) = allocate(&file, len) {
            if created {
                let _ = fs::remove_file(path);
            }
            return Err(StoreFailure::io("fallocate consume queue", path, &e));
        }
        // The descriptor is closed when `file` drops: a mapping does not need it.
        let map = MmapOptions::new().len(len as usize).map_raw(&file).map_err(|e| StoreFailure::io("mmap consume queue", path, &e))?;
        Ok(Arc::new(CqMap { map }))
    }
}

/// Counters of a [`MappedFiles`] cache.
#[derive(Debug, Default)]
pub struct MappedFilesStats {
    /// Files mapped (first use or after an eviction).
    pub maps: AtomicU64,
    /// Mappings the cache dropped to stay within its bound.
    pub evictions: AtomicU64,
}

struct Lru {
    tick: u64,
    /// (queue id, file base) → mapping and its last use.
    entries: HashMap<(u64, u64), (Arc<CqMap>, u64)>,
    /// Last use → key, oldest first.
    order: BTreeMap<u64, (u64, u64)>,
}

impl Lru {
    /// Advances the clock; returns the mapping of `key` marked as used now, if it is cached.
    fn touch(&mut self, key: (u64, u64)) -> Option<Arc<CqMap>> {
        self.tick += 1;
        let tick = self.tick;
        let (m, used) = self.entries.get_mut(&key)?;
        let (m, old) = (Arc::clone(m), std::mem::replace(used, tick));
        self.order.remove(&old);
        self.order.insert(tick, key);
        Some(m)
    }
}

/// The consume-queue files mapped at once, shared by every queue of a state machine and bounded by
/// `files_max` (broker config `mappedFilesMax`): the least recently mapped file is unmapped when another
/// one is needed. With 100 k queues a mapping per file would exceed Linux's default
/// `vm.max_map_count` (65 530) and fail; the cache keeps mappings to the files in use.
pub struct MappedFiles {
    files_max: usize,
    next_queue_id: AtomicU64,
    lru: Mutex<Lru>,
    /// Counters.
    pub stats: MappedFilesStats,
}

impl MappedFiles {
    /// An empty cache holding at most `files_max` (at least 1) mappings.
    pub fn new(files_max: usize) -> Arc<MappedFiles> {
        Arc::new(MappedFiles {
            files_max: files_max.max(1),
            next_queue_id: AtomicU64::new(0),
            lru: Mutex::new(Lru { tick: 0, entries: HashMap::new(), order: BTreeMap::new() }),
            stats: MappedFilesStats::default(),
        })
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mappings the cache holds now.
    pub fn len(&self) -> usize {
        self.lru().entries.len()
    }

    /// True when nothing is mapped by the cache.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mapping of `path`, mapping it (and creating the file when needed) on a miss.
    fn get(&self, key: (u64, u64), path: &Path, units: u64, create: bool) -> Result<Arc<CqMap>, StoreFailure> {
        if let Some(m) = self.lru().touch(key) {
            return Ok(m);
        }
        // Map outside the lock; a racing mapper of the same file loses and uses the first mapping.
        let fresh = CqMap::open(path, units, create)?;
        self.stats.maps.fetch_add(1, Ordering::Relaxed);
        let mut l = self.lru();
        if let Some(m) = l.touch(key) {
            return Ok(m);
        }
        while l.entries.len() >= self.files_max {
            let Some((_, victim)) = l.order.pop_first() else { break };
            l.entries.remove(&victim);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let tick = l.tick;
        l.entries.insert(key, (Arc::clone(&fresh), tick));
        l.order.insert(tick, key);
        Ok(fresh)
    }

    fn remove(&self, key: (u64, u64)) {
        let mut l = self.lru();
        if let Some((_, used)) = l.entries.remove(&key) {
            l.order.remove(&used);
        }
    }

    fn remove_queue(&self, queue: u64) {
        let mut l = self.lru();
        let doomed: Vec<((u64, u64), u64)> = l.entries.iter().filter(|(k, _)| k.0 == queue).map(|(k, (_, used))| (*k, *used)).collect();
        for (k, used) in doomed {
            l.entries.remove(&k);
            l.order.remove(&used);
        }
    }
}

/// The consume queue of one topic-queue.
pub struct ConsumeQueue {
    dir: PathBuf,
    units_per_file: u64,
    /// This queue's key in `maps`.
    id: u64,
    maps: Arc<MappedFiles>,
    /// Every file of the queue on disk, by base offset.
    files: RwLock<BTreeMap<u64, Arc<CqFile>>>,
    /// The mapping used last, without keeping it mapped: hits skip the shared cache's lock.
    last: Mutex<Option<(u64, Weak<CqMap>)>>,
    min_offset: AtomicU64,
    max_offset: AtomicU64,
    /// Woken whenever units are published: long-polling pulls wait on it.
    pub notify: Notify,
}

impl Drop for ConsumeQueue {
    fn drop(&mut self) {
        self.maps.remove_queue(self.id);
    }
}

impl ConsumeQueue {
    /// Opens the queue directory with a cache of its own (benchmarks and tests; the state machine shares
    /// one cache among all its queues, see [`ConsumeQueue::open_shared`]).
    pub fn open(dir: PathBuf, units_per_file: u64, min_offset: u64, max_offset: u64) -> Result<ConsumeQueue, StoreFailure> {
        Self::open_shared(dir, units_per_file, min_offset, max_offset, &MappedFiles::new(64))
    }

    /// Opens the queue directory; files are mapped through `maps` when used. Units in
    /// `[min_offset, max_offset)` are trusted (restored from a checkpoint); anything beyond is overwritten
    /// by re-apply. Existing files are allocated in full (an older version may have left them sparse).
    ///
    /// # Errors
    /// A directory that cannot be created or read, a file that cannot be allocated (`StorageFull`).
    pub fn open_shared(
        dir: PathBuf,
        units_per_file: u64,
        min_offset: u64,
        max_offset: u64,
        maps: &Arc<MappedFiles>,
    ) -> Result<ConsumeQueue, StoreFailure> {
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
            let path = ent.path();
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| allocate(&f, units_per_file * CQ_UNIT_LEN as u64))
                .map_err(|e| StoreFailure::io("fallocate consume queue", &path, &e))?;
            files.insert(base, CqFile::new(base, path, None));
        }
        Ok(ConsumeQueue {
            dir,
            units_per_file,
            id: maps.next_queue_id.fetch_add(1, Ordering::Relaxed),
            maps: Arc::clone(maps),
            files: RwLock::new(files),
            last: Mutex::new(None),
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

    fn base_of(&self, offset: u64) -> u64 {
        offset - offset % self.units_per_file
    }

    fn file_at(&self, base: u64) -> Option<Arc<CqFile>> {
        self.files.read().unwrap_or_else(|p| p.into_inner()).get(&base).cloned()
    }

    fn path_of(&self, base: u64) -> PathBuf {
        self.dir.join(format!("{:020}", base * CQ_UNIT_LEN as u64))
    }

    /// The mapping of the file starting at `base` (which must exist or be being created).
    fn map_of(&self, base: u64, path: &Path, create: bool) -> Result<Arc<CqMap>, StoreFailure> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = last.as_ref().filter(|(b, _)| *b == base).and_then(|(_, w)| w.upgrade()) {
            return Ok(m);
        }
        let m = self.maps.get((self.id, base), path, self.units_per_file, create)?;
        *last = Some((base, Arc::downgrade(&m)));
        Ok(m)
    }

    /// The mapping used last, if it is the file starting at `base` and still mapped: the pull path's hit,
    /// which needs neither the file table nor the shared cache.
    fn last_map(&self, base: u64) -> Option<Arc<CqMap>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().filter(|(b, _)| *b == base).and_then(|(_, w)| w.upgrade())
    }

    /// Writes the unit for `offset` (not yet visible to readers). Returns the file it went to, newly dirty.
    /// Only the state machine's apply path (and benchmarks) may write.
    ///
    /// # Errors
    /// A new file that cannot be created or allocated (`StorageFull` when the disk is full), or a file that
    /// cannot be mapped. Nothing is written then.
    pub fn write(&self, offset: u64, unit: &CqUnit) -> Result<Option<Arc<CqFile>>, StoreFailure> {
        let base = self.base_of(offset);
        let file = match self.file_at(base) {
            Some(f) => f,
            None => {
                let path = self.path_of(base);
                // Create (and allocate) the file before readers can learn of it.
                self.map_of(base, &path, true)?;
                // Its entry lives in the queue directory; that directory, the topic directory and
                // `consumequeue/` may be new too, so their parents are fsynced as well at the first flush:
                // `<queueId>` in `<topic>`, `<topic>` in `consumequeue`, `consumequeue` in the state directory.
                let dirs = self.dir.ancestors().take(4).filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf).collect();
                let f = CqFile::new(base, path, Some(dirs));
                self.files.write().unwrap_or_else(|p| p.into_inner()).insert(base, Arc::clone(&f));
                f
            }
        };
        let map = self.map_of(base, &file.path, true)?;
        let at = ((offset - file.base) as usize) * CQ_UNIT_LEN;
        let bytes = unit.encode();
        debug_assert!(at + CQ_UNIT_LEN <= map.map.len());
        // SAFETY: `at + 20` is inside the mapping (offset lies in this file's range), which `map` keeps alive.
        // Only the state-machine worker writes, and readers never read units at or above `max_offset`, which
        // is published after.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.map.as_mut_ptr().add(at), CQ_UNIT_LEN) };
        let newly_dirty = !file.dirty.swap(true, Ordering::AcqRel);
        Ok(newly_dirty.then_some(file))
    }

    /// Makes units below `max` visible and wakes waiting pulls.
    pub fn publish(&self, max: u64) {
        self.max_offset.store(max, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Reads the unit at `offset`, if it lies in `[min_offset, max_offset)`. `None` as well when its file
    /// cannot be mapped (logged).
    pub fn get(&self, offset: u64) -> Option<CqUnit> {
        if offset < self.min_offset() || offset >= self.max_offset() {
            return None;
        }
        let base = self.base_of(offset);
        let map = match self.last_map(base) {
            Some(m) => m,
            None => {
                let file = self.file_at(base)?;
                match self.map_of(base, &file.path, false) {
                    Ok(m) => m,
                    // Purged by retention since the offset was checked.
                    Err(e) if e.kind == std::io::ErrorKind::NotFound => return None,
                    Err(e) => {
                        tracing::warn!(file = %file.path.display(), error = %e, "cannot map consume-queue file");
                        return None;
                    }
                }
            }
        };
        let at = ((offset - base) as usize) * CQ_UNIT_LEN;
        // SAFETY: inside the mapping, which `map` keeps alive; the unit was fully written before `max_offset`
        // was published.
        let b = unsafe { &*(map.map.as_ptr().add(at) as *const [u8; CQ_UNIT_LEN]) };
        Some(CqUnit::decode(b))
    }

    /// Reads up to `units_max` consecutive units starting at `from`.
    pub fn read(&self, from: u64, units_max: usize) -> Vec<CqUnit> {
        let end = self.max_offset().min(from.saturating_add(units_max as u64));
        (from.max(self.min_offset())..end).map_while(|o| self.get(o)).collect()
    }

    /// Raises the first served offset (retention) without touching files ([`Self::advance_min`] deletes).
    pub(crate) fn raise_min(&self, min: u64) {
        self.min_offset.fetch_max(min.min(self.max_offset()), Ordering::AcqRel);
    }

    /// Raises the first served offset (retention) and deletes files wholly below it.
    pub(crate) fn advance_min(&self, min: u64) -> Result<(), StoreFailure> {
        self.min_offset.fetch_max(min, Ordering::AcqRel);
        let min = self.min_offset();
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<u64> = files.keys().copied().filter(|b| b + self.units_per_file <= min).collect();
        for b in doomed {
            if let Some(f) = files.remove(&b) {
                self.maps.remove((self.id, b));
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
    fn mapped_files_stay_within_their_bound_across_queues() {
        let dir = tempfile::tempdir().unwrap();
        let maps = MappedFiles::new(3);
        // 4 queues × 3 files each (4 units per file): 12 files, at most 3 mapped at any time.
        let queues: Vec<ConsumeQueue> =
            (0..4).map(|i| ConsumeQueue::open_shared(dir.path().join(format!("q{i}")), 4, 0, 0, &maps).unwrap()).collect();
        for o in 0..12u64 {
            for (i, q) in queues.iter().enumerate() {
                q.write(o, &CqUnit { phys_offset: o, size: i as u32, tags_code: 0 }).unwrap();
                assert!(maps.len() <= 3, "{} files mapped", maps.len());
            }
        }
        for q in &queues {
            q.publish(12);
        }
        for o in (0..12u64).rev() {
            for (i, q) in queues.iter().enumerate() {
                assert_eq!(q.get(o), Some(CqUnit { phys_offset: o, size: i as u32, tags_code: 0 }), "queue {i} offset {o}");
                assert!(maps.len() <= 3);
            }
        }
        assert!(maps.stats.evictions.load(Ordering::Relaxed) > 12, "cold files were unmapped and mapped again");
        // A flush after its file was unmapped still makes the units durable, and they survive a reopen.
        let files: Vec<Arc<CqFile>> = queues[0].files.read().unwrap().values().cloned().collect();
        assert_eq!(files.len(), 3);
        for f in &files {
            f.flush().unwrap();
        }
        drop(queues);
        assert!(maps.is_empty(), "a dropped queue leaves nothing mapped");
        let q = ConsumeQueue::open_shared(dir.path().join("q0"), 4, 0, 12, &maps).unwrap();
        assert_eq!(q.get(5), Some(CqUnit { phys_offset: 5, size: 0, tags_code: 0 }));
        assert_eq!(maps.len(), 1, "opening maps nothing; a read maps one file");
    }

    #[test]
    fn a_reader_never_recreates_a_purged_file() {
        let dir = tempfile::tempdir().unwrap();
        let maps = MappedFiles::new(1);
        let a = ConsumeQueue::open_shared(dir.path().join("a"), 4, 0, 0, &maps).unwrap();
        let b = ConsumeQueue::open_shared(dir.path().join("b"), 4, 0, 0, &maps).unwrap();
        a.write(0, &CqUnit { phys_offset: 1, size: 2, tags_code: 3 }).unwrap();
        a.publish(1);
        b.write(0, &CqUnit { phys_offset: 4, size: 5, tags_code: 6 }).unwrap();
        // a's file is unmapped now; a purge deletes it between a reader's range check and its mapping.
        let path = a.files.read().unwrap()[&0].path.clone();
        fs::remove_file(&path).unwrap();
        *a.last.lock().unwrap() = None;
        assert_eq!(a.get(0), None);
        assert!(!path.exists(), "the reader brought a purged file back");
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
