//! The message index (RocketMQ's IndexFile idea): finds stored messages by `topic#key`, where the keys of a
//! message are its space-separated `KEYS` tokens and its `UNIQ_KEY` (the client msgId).
//!
//! Derived, node-local data: a thread ([`MessageIndex::start`]) tails the *applied* entries of the commitlog
//! (never the apply path itself: apply only publishes how far it got), asks a [`KeyExtractor`] supplied by
//! the broker for each message's topic, store time and keys (this crate does not know the message format),
//! and appends 24-byte units to index files. Nothing here is replicated or decides anything: a lost or
//! damaged index is rebuilt from the log.
//!
//! # Files
//! `<data dir>/index/<20-digit first log index>`, one per index segment:
//!
//! ```text
//! header (96 bytes): magic "RMQINDX1" | version u32 | slots u32 | units_max u32 | units u32 | sealed u8 | 3 pad |
//!                    first_index u64 | next_index u64 | begin_pos u64 | end_pos u64 | begin_ms i64 | end_ms i64 |
//!                    slots_crc u32 | units_crc u32 | header_crc u32 | 8 pad            (little endian)
//! slots  (4 × slots):     head unit of each hash slot, as unit number + 1 (0 = empty); written when sealed
//! units  (24 × units_max): key_hash u32 | prev u32 (unit number + 1 of the slot's previous head, 0 = none) |
//!                          phys_offset u64 | store_ms i64
//! ```
//!
//! `next_index` is the last indexed commitlog position: every applied entry below it is in this file or an
//! older one. `end_pos` is the byte position after the last indexed record, which [`MessageIndex::purge_below`]
//! compares with the log's first retained position. The active (unsealed) file keeps its slot table in memory;
//! its header is rewritten, after an fdatasync of the units it counts, about once a second
//! ([`PERSIST_INTERVAL`]) and at shutdown, so a crash loses at most the units after the last header, which are
//! re-indexed from `next_index`. A file fills at `units_max` units and is sealed (slot table and its CRC
//! written); `files_max` files are kept, the oldest dropped beyond that.
//!
//! # Correctness
//! A file whose header, slot table or (active file) units fail their CRC or structural checks is never used:
//! it and every newer file are deleted and indexing resumes from its first index (or the log's first present
//! one). Units of sealed files are checked as they are read (chains must point strictly backwards, within
//! the file); a damaged unit can hide hits, never produce a panic. Hits are only *candidates* (32-bit hashes
//! collide): callers read the message back from the log and match the key exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raftmq_commitlog::{CommitLogReader, RecordKind, HEADER_LEN as RECORD_HEADER_LEN};
use tracing::{error, info, warn};

use crate::types::Command;

/// Default hash slots per index file (RocketMQ `maxHashSlotNum`: 5 000 000): 4 MB of slot table.
pub const INDEX_SLOTS_MAX_DEFAULT: u32 = 1_000_000;
/// Default units per index file (RocketMQ `maxIndexNum`: 20 000 000): a full file is 96 MB.
pub const INDEX_UNITS_MAX_DEFAULT: u32 = 4_000_000;
/// Default number of index files kept (the oldest is deleted beyond it).
pub const INDEX_FILES_MAX_DEFAULT: usize = 64;
/// Largest accepted `slots_max`.
pub const INDEX_SLOTS_LIMIT: u32 = 1 << 26;
/// Largest accepted `units_max` (a file of about 1.5 GiB).
pub const INDEX_UNITS_LIMIT: u32 = 1 << 26;
/// Smallest accepted `units_max`.
pub const INDEX_UNITS_MIN: u32 = 16;
/// Largest accepted `files_max`.
pub const INDEX_FILES_LIMIT: usize = 4096;
/// Keys indexed per message at most (its `UNIQ_KEY` and `KEYS` tokens, duplicates counted once); further
/// tokens are not indexed.
pub const INDEX_KEYS_PER_MESSAGE_MAX: usize = 64;
/// Units one query examines at most, over all files: bounds the work of a query on a hot key.
pub const QUERY_UNITS_SCANNED_MAX: usize = 1 << 20;
/// How often the active file's header (the last indexed position) is made durable.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// Applied entries one pass of the indexing thread reads before it publishes its progress.
const ENTRIES_PER_PASS_MAX: u64 = 256;
/// How long the indexing thread sleeps when it has caught up (it is also woken by [`MessageIndex::wake`]).
const IDLE_WAIT: Duration = Duration::from_millis(20);

const HEADER_BYTES: usize = 96;
const UNIT_BYTES: usize = 24;
const MAGIC: [u8; 8] = *b"RMQINDX1";
const VERSION: u32 = 1;

/// What the index needs of one message: its stored topic, store time (ms) and keys (`UNIQ_KEY` and each
/// `KEYS` token; the index adds the topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedMessage {
    /// The topic the message is stored under (a retry, schedule or half-message topic included).
    pub topic: String,
    /// STORETIMESTAMP, ms.
    pub store_ms: i64,
    /// The keys to find it by.
    pub keys: Vec<String>,
}

/// Reads [`IndexedMessage`] from a message's stored bytes; `None` for bytes it cannot decode (not indexed).
pub type KeyExtractor = Arc<dyn Fn(&[u8]) -> Option<IndexedMessage> + Send + Sync>;

/// Index settings: local to a node, need not match other replicas.
#[derive(Clone)]
pub struct MessageIndexConfig {
    /// Hash slots per file.
    pub slots_max: u32,
    /// Units per file.
    pub units_max: u32,
    /// Files kept.
    pub files_max: usize,
    /// The message decoder.
    pub extractor: KeyExtractor,
}

impl std::fmt::Debug for MessageIndexConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageIndexConfig")
            .field("slots_max", &self.slots_max)
            .field("units_max", &self.units_max)
            .field("files_max", &self.files_max)
            .finish_non_exhaustive()
    }
}

impl MessageIndexConfig {
    /// Checks the limits.
    ///
    /// # Errors
    /// A message naming the limit broken.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=INDEX_SLOTS_LIMIT).contains(&self.slots_max) {
            return Err(format!("index slots_max {} must be 1..={INDEX_SLOTS_LIMIT}", self.slots_max));
        }
        if !(INDEX_UNITS_MIN..=INDEX_UNITS_LIMIT).contains(&self.units_max) {
            return Err(format!("index units_max {} must be {INDEX_UNITS_MIN}..={INDEX_UNITS_LIMIT}", self.units_max));
        }
        if !(1..=INDEX_FILES_LIMIT).contains(&self.files_max) {
            return Err(format!("index files_max {} must be 1..={INDEX_FILES_LIMIT}", self.files_max));
        }
        Ok(())
    }
}

/// Why the index cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// A file operation failed; indexing stopped (a restart rebuilds what is missing).
    #[error("message index {op} {path}: {message}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
}

fn io_err(op: &'static str, path: &Path, e: &std::io::Error) -> IndexError {
    IndexError::Io { op, path: path.to_path_buf(), message: e.to_string() }
}

/// The stable 32-bit hash of `topic#key` (FNV-1a; never changes, files depend on it).
pub fn key_hash(topic: &str, key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in topic.bytes().chain(std::iter::once(b'#')).chain(key.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The header of an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Hash slots.
    pub slots: u32,
    /// Unit capacity.
    pub units_max: u32,
    /// Units written (and covered by `units_crc`).
    pub units: u32,
    /// The slot table is written and the file takes no more units.
    pub sealed: bool,
    /// First commitlog index this file covers (its name).
    pub first_index: u64,
    /// Every applied entry below this index is indexed (here or in an older file).
    pub next_index: u64,
    /// Lowest physical offset indexed (`u64::MAX` when none).
    pub begin_pos: u64,
    /// Byte position after the last indexed record.
    pub end_pos: u64,
    /// Earliest store time indexed (`i64::MAX` when none).
    pub begin_ms: i64,
    /// Latest store time indexed (`i64::MIN` when none).
    pub end_ms: i64,
    /// CRC32 of the slot table (sealed files).
    pub slots_crc: u32,
    /// CRC32 of units `0..units`.
    pub units_crc: u32,
}

impl Header {
    /// An empty file's header.
    pub fn new(slots: u32, units_max: u32, first_index: u64) -> Header {
        Header {
            slots,
            units_max,
            units: 0,
            sealed: false,
            first_index,
            next_index: first_index,
            begin_pos: u64::MAX,
            end_pos: 0,
            begin_ms: i64::MAX,
            end_ms: i64::MIN,
            slots_crc: 0,
            units_crc: 0,
        }
    }

    /// The 96-byte encoding, CRC included.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.slots.to_le_bytes());
        b[16..20].copy_from_slice(&self.units_max.to_le_bytes());
        b[20..24].copy_from_slice(&self.units.to_le_bytes());
        b[24] = u8::from(self.sealed);
        b[28..36].copy_from_slice(&self.first_index.to_le_bytes());
        b[36..44].copy_from_slice(&self.next_index.to_le_bytes());
        b[44..52].copy_from_slice(&self.begin_pos.to_le_bytes());
        b[52..60].copy_from_slice(&self.end_pos.to_le_bytes());
        b[60..68].copy_from_slice(&self.begin_ms.to_le_bytes());
        b[68..76].copy_from_slice(&self.end_ms.to_le_bytes());
        b[76..80].copy_from_slice(&self.slots_crc.to_le_bytes());
        b[80..84].copy_from_slice(&self.units_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..84]);
        b[84..88].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    ///
    /// # Errors
    /// A reason: short, bad magic, version, CRC, or fields that contradict each other.
    pub fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER_BYTES {
            return Err(format!("header is {} bytes, expected {HEADER_BYTES}", b.len()));
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        if b[0..8] != MAGIC {
            return Err("bad magic".into());
        }
        if crc32fast::hash(&b[0..84]) != u32_at(84) {
            return Err("header crc mismatch".into());
        }
        if u32_at(8) != VERSION {
            return Err(format!("version {} is not {VERSION}", u32_at(8)));
        }
        let h = Header {
            slots: u32_at(12),
            units_max: u32_at(16),
            units: u32_at(20),
            sealed: match b[24] {
                0 => false,
                1 => true,
                x => return Err(format!("sealed flag {x}")),
            },
            first_index: u64_at(28),
            next_index: u64_at(36),
            begin_pos: u64_at(44),
            end_pos: u64_at(52),
            begin_ms: u64_at(60) as i64,
            end_ms: u64_at(68) as i64,
            slots_crc: u32_at(76),
            units_crc: u32_at(80),
        };
        if h.slots == 0 || h.slots > INDEX_SLOTS_LIMIT || h.units_max == 0 || h.units_max > INDEX_UNITS_LIMIT {
            return Err(format!("geometry {} slots, {} units out of range", h.slots, h.units_max));
        }
        if h.units > h.units_max || h.next_index < h.first_index {
            return Err(format!("{} units of {}, next index {} below first {}", h.units, h.units_max, h.next_index, h.first_index));
        }
        Ok(h)
    }

    fn units_at(&self) -> u64 {
        HEADER_BYTES as u64 + 4 * u64::from(self.slots)
    }

    fn unit_at(&self, n: u32) -> u64 {
        self.units_at() + UNIT_BYTES as u64 * u64::from(n)
    }

    fn overlaps(&self, begin_ms: i64, end_ms: i64) -> bool {
        self.units > 0 && self.begin_ms <= end_ms && self.end_ms >= begin_ms
    }
}

/// One index unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// [`key_hash`] of the key.
    pub hash: u32,
    /// The slot's previous head, as unit number + 1 (0 = none).
    pub prev: u32,
    /// Physical offset of the message.
    pub phys: u64,
    /// Its store time, ms.
    pub store_ms: i64,
}

impl Unit {
    /// The 24-byte encoding.
    pub fn encode(&self) -> [u8; UNIT_BYTES] {
        let mut b = [0u8; UNIT_BYTES];
        b[0..4].copy_from_slice(&self.hash.to_le_bytes());
        b[4..8].copy_from_slice(&self.prev.to_le_bytes());
        b[8..16].copy_from_slice(&self.phys.to_le_bytes());
        b[16..24].copy_from_slice(&self.store_ms.to_le_bytes());
        b
    }

    /// Decodes 24 bytes.
    pub fn decode(b: &[u8; UNIT_BYTES]) -> Unit {
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[8..16]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[16..24]);
        Unit {
            hash: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            prev: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            phys: u64::from_le_bytes(p),
            store_ms: i64::from_le_bytes(t),
        }
    }
}

fn file_name(first_index: u64) -> String {
    format!("{first_index:020}")
}

/// A sealed, read-only file.
struct Sealed {
    path: PathBuf,
    file: File,
    header: Header,
}

/// The file being filled.
struct Active {
    path: PathBuf,
    file: File,
    header: Header,
    /// Head unit + 1 per slot.
    heads: Vec<u32>,
    /// The header last made durable differs from `header`.
    dirty: bool,
}

impl Active {
    fn create(dir: &Path, slots: u32, units_max: u32, first_index: u64) -> Result<Active, IndexError> {
        let path = dir.join(file_name(first_index));
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(|e| io_err("create", &path, &e))?;
        let header = Header::new(slots, units_max, first_index);
        file.write_all_at(&header.encode(), 0).map_err(|e| io_err("write header", &path, &e))?;
        Ok(Active { path, file, header, heads: vec![0; slots as usize], dirty: true })
    }

    /// Makes the units durable, then the header that counts them.
    fn persist(&mut self) -> Result<(), IndexError> {
        if !self.dirty {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| io_err("fdatasync", &self.path, &e))?;
        self.file.write_all_at(&self.header.encode(), 0).map_err(|e| io_err("write header", &self.path, &e))?;
        self.file.sync_data().map_err(|e| io_err("fdatasync", &self.path, &e))?;
        self.dirty = false;
        Ok(())
    }

    /// Writes the slot table and the sealed header.
    fn seal(mut self) -> Result<Sealed, IndexError> {
        let mut table = Vec::with_capacity(self.heads.len() * 4);
        for h in &self.heads {
            table.extend_from_slice(&h.to_le_bytes());
        }
        self.file.write_all_at(&table, HEADER_BYTES as u64).map_err(|e| io_err("write slots", &self.path, &e))?;
        self.header.slots_crc = crc32fast::hash(&table);
        self.header.sealed = true;
        self.dirty = true;
        self.persist()?;
        Ok(Sealed { path: self.path, file: self.file, header: self.header })
    }
}

fn read_unit(file: &File, h: &Header, n: u32) -> Option<Unit> {
    if n >= h.units {
        return None;
    }
    let mut b = [0u8; UNIT_BYTES];
    file.read_exact_at(&mut b, h.unit_at(n)).ok()?;
    Some(Unit::decode(&b))
}

/// Loads a sealed file, checking its header and slot table.
fn load_sealed(path: &Path, file: File, header: Header) -> Result<Sealed, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    // An active file's slot table is written only when it is sealed, so one with no unit yet may end at its
    // header.
    if header.units > 0 && len < header.unit_at(header.units) {
        return Err(format!("{len} bytes, shorter than its {} units", header.units));
    }
    let mut table = vec![0u8; header.slots as usize * 4];
    file.read_exact_at(&mut table, HEADER_BYTES as u64).map_err(|e| e.to_string())?;
    if crc32fast::hash(&table) != header.slots_crc {
        return Err("slot table crc mismatch".into());
    }
    Ok(Sealed { path: path.to_path_buf(), file, header })
}

/// Loads the active file: checks its units' CRC, rebuilds the slot heads from them (checking every chain
/// link) and cuts off units written after the last durable header.
fn load_active(path: &Path, file: File, header: Header) -> Result<Active, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    // An active file's slot table is written only when it is sealed, so one with no unit yet may end at its
    // header.
    if header.units > 0 && len < header.unit_at(header.units) {
        return Err(format!("{len} bytes, shorter than its {} units", header.units));
    }
    let mut heads = vec![0u32; header.slots as usize];
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; UNIT_BYTES * 4096];
    let mut n = 0u32;
    while n < header.units {
        let take = (header.units - n).min(4096);
        let bytes = &mut buf[..take as usize * UNIT_BYTES];
        file.read_exact_at(bytes, header.unit_at(n)).map_err(|e| e.to_string())?;
        crc.update(bytes);
        for chunk in bytes.chunks_exact(UNIT_BYTES) {
            let mut a = [0u8; UNIT_BYTES];
            a.copy_from_slice(chunk);
            let u = Unit::decode(&a);
            let slot = (u.hash % header.slots) as usize;
            if u.prev != heads[slot] {
                return Err(format!("unit {n} links to {} instead of its slot's head {}", u.prev, heads[slot]));
            }
            n += 1;
            heads[slot] = n;
        }
    }
    if crc.finalize() != header.units_crc {
        return Err("units crc mismatch".into());
    }
    file.set_len(header.unit_at(header.units)).map_err(|e| e.to_string())?;
    Ok(Active { path: path.to_path_buf(), file, header, heads, dirty: false })
}

/// Counters, for node status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Index files (sealed and active).
    pub files: usize,
    /// Units in all files.
    pub units: u64,
    /// Next commitlog index to index (`None` before the first).
    pub next_index: Option<u64>,
    /// Units not written because one entry's keys exceeded a whole file, or a message had more than
    /// [`INDEX_KEYS_PER_MESSAGE_MAX`] keys.
    pub keys_dropped: u64,
    /// Files found damaged at open and rebuilt.
    pub rebuilt: u64,
    /// Files deleted by `files_max` or [`MessageIndex::purge_below`].
    pub deleted: u64,
}

struct Inner {
    sealed: Vec<Sealed>,
    active: Option<Active>,
    /// Set on the first file error: nothing more is indexed.
    failed: Option<IndexError>,
    keys_dropped: u64,
    rebuilt: u64,
    deleted: u64,
}

impl Inner {
    fn next_index(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.header.next_index).or_else(|| self.sealed.last().map(|s| s.header.next_index))
    }
}

/// What a query saw of the index's progress (QUERY_MESSAGE's response header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexProgress {
    /// Newest store time indexed (0 when nothing is).
    pub last_update_ms: i64,
    /// Byte position after the last indexed record.
    pub last_update_pos: u64,
}

/// One message's keys for [`MessageIndex::add_entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMessage {
    /// Physical offset of the message.
    pub phys: u64,
    /// Its topic, time and keys.
    pub msg: IndexedMessage,
}

/// The index of one node. Shared by the indexing thread and readers.
pub struct MessageIndex {
    dir: PathBuf,
    cfg: MessageIndexConfig,
    inner: Mutex<Inner>,
    progress: Condvar,
    stop: AtomicBool,
    waker: Mutex<Option<std::thread::Thread>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MessageIndex {
    /// Opens (or creates) the index in `dir`, verifying every file; damaged ones are deleted with every
    /// newer file, to be rebuilt from the log.
    ///
    /// # Errors
    /// The directory cannot be created or listed, or a damaged file cannot be deleted.
    pub fn open(dir: impl Into<PathBuf>, cfg: MessageIndexConfig) -> Result<MessageIndex, IndexError> {
        let dir = dir.into();
        cfg.validate().map_err(|m| IndexError::Io { op: "configure", path: dir.clone(), message: m })?;
        fs::create_dir_all(&dir).map_err(|e| io_err("create dir", &dir, &e))?;
        let mut names = BTreeMap::new();
        for ent in fs::read_dir(&dir).map_err(|e| io_err("list", &dir, &e))? {
            let ent = ent.map_err(|e| io_err("list", &dir, &e))?;
            let name = ent.file_name();
            match name.to_str().filter(|n| n.len() == 20).and_then(|n| n.parse::<u64>().ok()) {
                Some(first) => {
                    names.insert(first, ent.path());
                }
                None => warn!(file = %ent.path().display(), "not an index file; ignored"),
            }
        }
        let mut inner = Inner { sealed: Vec::new(), active: None, failed: None, keys_dropped: 0, rebuilt: 0, deleted: 0 };
        let count = names.len();
        let mut bad_from: Option<(u64, String)> = None;
        for (i, (first, path)) in names.iter().enumerate() {
            let last = i + 1 == count;
            let loaded = (|| {
                let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| e.to_string())?;
                let mut hb = [0u8; HEADER_BYTES];
                file.read_exact_at(&mut hb, 0).map_err(|e| e.to_string())?;
                let header = Header::decode(&hb)?;
                if header.first_index != *first {
                    return Err(format!("header says first index {}, the name {first}", header.first_index));
                }
                if let Some(prev) = inner.sealed.last() {
                    // A gap is allowed (entries skipped because the log no longer held them), an overlap is not.
                    if header.first_index < prev.header.next_index {
                        return Err(format!("starts at {first}, inside the previous file (which ends before {})", prev.header.next_index));
                    }
                }
                match (header.sealed, last) {
                    (true, _) => load_sealed(path, file, header).map(|s| inner.sealed.push(s)),
                    (false, true) => load_active(path, file, header).map(|a| inner.active = Some(a)),
                    (false, false) => Err("an unsealed file that is not the newest".into()),
                }
            })();
            if let Err(reason) = loaded {
                bad_from = Some((*first, reason));
                break;
            }
        }
        if let Some((first, reason)) = bad_from {
            warn!(file = %dir.join(file_name(first)).display(), reason, "message index file damaged; it and newer files are rebuilt from the log");
            for (_, path) in names.range(first..) {
                fs::remove_file(path).map_err(|e| io_err("remove", path, &e))?;
                inner.rebuilt += 1;
            }
        }
        let next = inner.next_index();
        info!(dir = %dir.display(), files = inner.sealed.len() + usize::from(inner.active.is_some()), next_index = ?next, "message index opened");
        Ok(MessageIndex {
            dir,
            cfg,
            inner: Mutex::new(inner),
            progress: Condvar::new(),
            stop: AtomicBool::new(false),
            waker: Mutex::new(None),
        })
    }

    /// The next commitlog index to index; `None` before anything was.
    pub fn next_index(&self) -> Option<u64> {
        lock(&self.inner).next_index()
    }

    /// Counters.
    pub fn stats(&self) -> IndexStats {
        let g = lock(&self.inner);
        IndexStats {
            files: g.sealed.len() + usize::from(g.active.is_some()),
            units: g.sealed.iter().map(|s| u64::from(s.header.units)).sum::<u64>()
                + g.active.as_ref().map_or(0, |a| u64::from(a.header.units)),
            next_index: g.next_index(),
            keys_dropped: g.keys_dropped,
            rebuilt: g.rebuilt,
            deleted: g.deleted,
        }
    }

    /// The error that stopped indexing, if one did.
    pub fn failure(&self) -> Option<IndexError> {
        lock(&self.inner).failed.clone()
    }

    /// Indexes the messages of the entry at `index`, whose record ends at byte `end_pos`. Entries must come in
    /// log order; one at or below what is indexed is ignored (a restart re-reading what the header already
    /// covers). Seals the active file first when the entry's keys would not fit it.
    ///
    /// # Errors
    /// A file write failed; the index stops taking entries.
    pub fn add_entry(&self, index: u64, end_pos: u64, messages: &[EntryMessage]) -> Result<(), IndexError> {
        let mut g = lock(&self.inner);
        if let Some(e) = &g.failed {
            return Err(e.clone());
        }
        let r = self.add_locked(&mut g, index, end_pos, messages);
        if let Err(e) = &r {
            error!(error = %e, "message index failed; queries are refused until a restart rebuilds it");
            g.failed = Some(e.clone());
        }
        r
    }

    fn add_locked(&self, g: &mut Inner, index: u64, end_pos: u64, messages: &[EntryMessage]) -> Result<(), IndexError> {
        if g.next_index().is_some_and(|n| index < n) {
            return Ok(());
        }
        // Each message's distinct keys, at most INDEX_KEYS_PER_MESSAGE_MAX.
        let mut units: Vec<(u32, u64, i64)> = Vec::new();
        for m in messages {
            let mut seen = BTreeSet::new();
            for k in &m.msg.keys {
                if k.is_empty() || !seen.insert(k.as_str()) {
                    continue;
                }
                if seen.len() > INDEX_KEYS_PER_MESSAGE_MAX {
                    g.keys_dropped += 1;
                    continue;
                }
                units.push((key_hash(&m.msg.topic, k), m.phys, m.msg.store_ms));
            }
        }
        let full =
            g.active.as_ref().is_some_and(|a| a.header.units > 0 && a.header.units as usize + units.len() > a.header.units_max as usize);
        if full {
            if let Some(a) = g.active.take() {
                let sealed = a.seal()?;
                g.sealed.push(sealed);
            }
            while g.sealed.len() + 1 > self.cfg.files_max {
                let old = g.sealed.remove(0);
                warn!(file = %old.path.display(), files_max = self.cfg.files_max, "message index over its file limit: oldest file deleted, its keys are no longer found");
                fs::remove_file(&old.path).map_err(|e| io_err("remove", &old.path, &e))?;
                g.deleted += 1;
            }
        }
        if g.active.is_none() {
            g.active = Some(Active::create(&self.dir, self.cfg.slots_max, self.cfg.units_max, index)?);
        }
        let mut dropped = 0u64;
        let Some(a) = g.active.as_mut() else { return Ok(()) };
        let room = (a.header.units_max - a.header.units) as usize;
        if units.len() > room {
            dropped = (units.len() - room) as u64;
            warn!(index, keys = units.len(), room, "an entry has more keys than an index file holds; the rest are not indexed");
            units.truncate(room);
        }
        if !units.is_empty() {
            let mut buf = Vec::with_capacity(units.len() * UNIT_BYTES);
            let start = a.header.units;
            for (i, (hash, phys, ms)) in units.iter().enumerate() {
                let slot = (hash % a.header.slots) as usize;
                let u = Unit { hash: *hash, prev: a.heads[slot], phys: *phys, store_ms: *ms };
                buf.extend_from_slice(&u.encode());
                a.heads[slot] = start + i as u32 + 1;
                a.header.begin_pos = a.header.begin_pos.min(*phys);
                a.header.begin_ms = a.header.begin_ms.min(*ms);
                a.header.end_ms = a.header.end_ms.max(*ms);
            }
            a.file.write_all_at(&buf, a.header.unit_at(start)).map_err(|e| io_err("write units", &a.path, &e))?;
            let mut crc = crc32fast::Hasher::new_with_initial(a.header.units_crc);
            crc.update(&buf);
            a.header.units_crc = crc.finalize();
            a.header.units += units.len() as u32;
        }
        a.header.next_index = index + 1;
        a.header.end_pos = a.header.end_pos.max(end_pos);
        a.dirty = true;
        g.keys_dropped += dropped;
        Ok(())
    }

    /// Records that every entry below `index` is indexed although none of them was given (the log starts
    /// above what the index covers: it was purged, or the node was seeded by a snapshot).
    fn skip_to(&self, index: u64) {
        let mut g = lock(&self.inner);
        if let Some(a) = g.active.as_mut() {
            if a.header.next_index < index {
                a.header.next_index = index;
                a.dirty = true;
            }
        }
    }

    /// Makes the active file's header durable (with the units it counts).
    ///
    /// # Errors
    /// The fdatasync or header write failed.
    pub fn persist(&self) -> Result<(), IndexError> {
        let mut g = lock(&self.inner);
        let r = match g.active.as_mut() {
            Some(a) => a.persist(),
            None => Ok(()),
        };
        if let Err(e) = &r {
            g.failed.get_or_insert_with(|| e.clone());
        }
        r
    }

    /// Deletes sealed files all of whose records end at or below commitlog position `pos` (retention calls
    /// this after purging the log below `pos`). The active file is kept. Returns how many were deleted.
    ///
    /// # Errors
    /// A file could not be deleted (the others stay listed).
    pub fn purge_below(&self, pos: u64) -> Result<usize, IndexError> {
        let mut g = lock(&self.inner);
        let mut n = 0;
        while g.sealed.first().is_some_and(|s| s.header.end_pos <= pos) {
            let s = g.sealed.remove(0);
            fs::remove_file(&s.path).map_err(|e| io_err("remove", &s.path, &e))?;
            n += 1;
        }
        g.deleted += n as u64;
        if n > 0 {
            info!(files = n, below = pos, "message index files purged");
        }
        Ok(n)
    }

    /// Physical offsets of messages that may carry `key` in `topic` and were stored within
    /// `[begin_ms, end_ms]`, newest first, at most `candidates_max` of them, each once. Hash collisions are
    /// included: check each against the message. Examines at most [`QUERY_UNITS_SCANNED_MAX`] units.
    ///
    /// # Errors
    /// Indexing stopped on a file error.
    pub fn query(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        candidates_max: usize,
    ) -> Result<(Vec<u64>, IndexProgress), IndexError> {
        let g = lock(&self.inner);
        if let Some(e) = &g.failed {
            return Err(e.clone());
        }
        let hash = key_hash(topic, key);
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut scanned = 0usize;
        let mut visit = |file: &File, h: &Header, head: u32, out: &mut Vec<u64>, scanned: &mut usize| {
            // Chains point strictly backwards, so a walk ends within `units` steps even over damaged units.
            let mut at = head;
            while at > 0 && at <= h.units && out.len() < candidates_max && *scanned < QUERY_UNITS_SCANNED_MAX {
                *scanned += 1;
                let Some(u) = read_unit(file, h, at - 1) else { break };
                if u.hash == hash && u.store_ms >= begin_ms && u.store_ms <= end_ms && seen.insert(u.phys) {
                    out.push(u.phys);
                }
                if u.prev >= at {
                    warn!(unit = at - 1, prev = u.prev, "message index unit links forward; chain cut");
                    break;
                }
                at = u.prev;
            }
        };
        if let Some(a) = g.active.as_ref().filter(|a| a.header.overlaps(begin_ms, end_ms)) {
            let head = a.heads[(hash % a.header.slots) as usize];
            visit(&a.file, &a.header, head, &mut out, &mut scanned);
        }
        for s in g.sealed.iter().rev() {
            if out.len() >= candidates_max || scanned >= QUERY_UNITS_SCANNED_MAX {
                break;
            }
            if !s.header.overlaps(begin_ms, end_ms) {
                continue;
            }
            let mut hb = [0u8; 4];
            let slot_at = HEADER_BYTES as u64 + 4 * u64::from(hash % s.header.slots);
            if s.file.read_exact_at(&mut hb, slot_at).is_err() {
                continue;
            }
            visit(&s.file, &s.header, u32::from_le_bytes(hb), &mut out, &mut scanned);
        }
        let newest = g.active.as_ref().map(|a| a.header).filter(|h| h.units > 0).or_else(|| g.sealed.last().map(|s| s.header));
        let progress = IndexProgress {
            last_update_ms: newest.filter(|h| h.units > 0).map_or(0, |h| h.end_ms),
            last_update_pos: g.active.as_ref().map(|a| a.header.end_pos).or_else(|| g.sealed.last().map(|s| s.header.end_pos)).unwrap_or(0),
        };
        Ok((out, progress))
    }

    /// Waits until every entry below `index` is indexed, for at most `timeout`; true if it is.
    pub fn wait_indexed(&self, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.inner);
        loop {
            if g.next_index().is_some_and(|n| n >= index) || g.failed.is_some() {
                return g.failed.is_none();
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.progress.wait_timeout(g, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wakes the indexing thread (after an apply).
    pub fn wake(&self) {
        if let Some(t) = lock(&self.waker).as_ref() {
            t.unpark();
        }
    }

    /// Starts the indexing thread over `log`; `applied` reports the last applied commitlog index.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(
        self: &Arc<Self>,
        log: CommitLogReader,
        applied: impl Fn() -> Option<u64> + Send + 'static,
    ) -> Result<JoinHandle<()>, IndexError> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("msg-index".into())
            .spawn(move || {
                *lock(&me.waker) = Some(std::thread::current());
                me.run(&log, &applied);
            })
            .map_err(|e| io_err("spawn thread", &self.dir, &e))
    }

    /// Asks the indexing thread to persist and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    fn run(&self, log: &CommitLogReader, applied: &dyn Fn() -> Option<u64>) {
        let mut persisted = Instant::now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                if let Err(e) = self.persist() {
                    warn!(error = %e, "message index: final persist failed");
                }
                return;
            }
            if self.failure().is_some() {
                std::thread::park_timeout(Duration::from_secs(1));
                continue;
            }
            let worked = match self.pass(log, applied) {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "message index pass failed");
                    false
                }
            };
            if persisted.elapsed() >= PERSIST_INTERVAL {
                let _ = self.persist();
                persisted = Instant::now();
            }
            if !worked {
                std::thread::park_timeout(IDLE_WAIT);
            }
        }
    }

    /// Indexes up to [`ENTRIES_PER_PASS_MAX`] applied entries; true if it indexed any.
    fn pass(&self, log: &CommitLogReader, applied: &dyn Fn() -> Option<u64>) -> Result<bool, IndexError> {
        let Some(applied) = applied() else { return Ok(false) };
        let state = log.state();
        let Some(first) = state.first else { return Ok(false) };
        let mut next = self.next_index().unwrap_or(first);
        if next < first {
            self.skip_to(first);
            next = first;
        }
        if next > applied {
            return Ok(false);
        }
        let end = applied.min(next + ENTRIES_PER_PASS_MAX - 1);
        for index in next..=end {
            let rec = match log.read(index) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    // Purged while we read: continue from the new first index next pass.
                    return Ok(index > next);
                }
                Err(e) => {
                    warn!(index, error = %e, "message index: entry unreadable; not indexed");
                    self.add_entry(index, 0, &[])?;
                    continue;
                }
            };
            let end_pos = rec.pos + u64::from(rec.len);
            let mut messages = Vec::new();
            if rec.meta.kind == RecordKind::Normal {
                match Command::decode(&rec.body, Some(rec.pos + RECORD_HEADER_LEN as u64)) {
                    Ok(cmd) => {
                        for q in cmd.produced() {
                            for m in &q.messages {
                                let (Some(phys), Some(msg)) = (m.phys_offset, (self.cfg.extractor)(&m.data)) else { continue };
                                messages.push(EntryMessage { phys, msg });
                            }
                        }
                    }
                    Err(e) => warn!(index, error = %e, "message index: entry does not decode; not indexed"),
                }
            }
            self.add_entry(index, end_pos, &messages)?;
        }
        self.progress.notify_all();
        Ok(true)
    }
}

impl Drop for MessageIndex {
    fn drop(&mut self) {
        let g = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = g.active.as_mut() {
            if g.failed.is_none() {
                let _ = a.persist();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(slots: u32, units: u32, files: usize) -> MessageIndexConfig {
        MessageIndexConfig { slots_max: slots, units_max: units, files_max: files, extractor: Arc::new(|_| None) }
    }

    fn msg(phys: u64, topic: &str, ms: i64, keys: &[&str]) -> EntryMessage {
        EntryMessage { phys, msg: IndexedMessage { topic: topic.into(), store_ms: ms, keys: keys.iter().map(|k| k.to_string()).collect() } }
    }

    fn find(ix: &MessageIndex, topic: &str, key: &str) -> Vec<u64> {
        ix.query(topic, key, i64::MIN, i64::MAX, 1000).unwrap().0
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let mut h = Header::new(7, 100, 42);
        h.units = 3;
        h.next_index = 50;
        h.end_pos = 999;
        h.begin_ms = 5;
        h.end_ms = 9;
        h.units_crc = 0xdead_beef;
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        for at in [0usize, 12, 20, 36, 84] {
            let mut bad = b;
            bad[at] ^= 1;
            assert!(Header::decode(&bad).is_err(), "flipped byte {at} went unnoticed");
        }
        assert!(Header::decode(&b[..50]).is_err());
    }

    #[test]
    fn crc_continues_across_appends() {
        let (a, b) = (b"first part".as_slice(), b"second".as_slice());
        let mut h = crc32fast::Hasher::new_with_initial(crc32fast::hash(a));
        h.update(b);
        assert_eq!(h.finalize(), crc32fast::hash(&[a, b].concat()));
    }

    #[test]
    fn finds_by_key_and_topic_newest_first_with_time_filter() {
        let dir = tempfile::tempdir().unwrap();
        let ix = MessageIndex::open(dir.path(), cfg(16, 1000, 4)).unwrap();
        ix.add_entry(1, 100, &[msg(10, "T", 1000, &["a", "b"]), msg(20, "U", 1000, &["a"])]).unwrap();
        ix.add_entry(2, 200, &[msg(110, "T", 2000, &["a", "a", ""])]).unwrap();
        assert_eq!(find(&ix, "T", "a"), vec![110, 10]);
        assert_eq!(find(&ix, "T", "b"), vec![10]);
        assert_eq!(find(&ix, "U", "a"), vec![20]);
        assert!(find(&ix, "T", "c").is_empty());
        assert_eq!(ix.query("T", "a", 1500, 2500, 10).unwrap().0, vec![110]);
        assert_eq!(ix.query("T", "a", 0, 3000, 1).unwrap().0, vec![110], "candidates_max");
        let (_, p) = ix.query("T", "a", 0, 1, 10).unwrap();
        assert_eq!(p, IndexProgress { last_update_ms: 2000, last_update_pos: 200 });
        // A repeated entry (restart re-reading) changes nothing.
        ix.add_entry(2, 200, &[msg(110, "T", 2000, &["a"])]).unwrap();
        assert_eq!(find(&ix, "T", "a"), vec![110, 10]);
    }

    #[test]
    fn slot_collisions_keep_every_chain() {
        // One slot: every key collides at the slot level; chains must still separate them by hash.
        let dir = tempfile::tempdir().unwrap();
        let ix = MessageIndex::open(dir.path(), cfg(1, 1000, 4)).unwrap();
        for i in 0..50u64 {
            ix.add_entry(i + 1, (i + 1) * 100, &[msg(i * 100, "T", 1, &[&format!("k{}", i % 5)])]).unwrap();
        }
        for k in 0..5u64 {
            let want: Vec<u64> = (0..50u64).rev().filter(|i| i % 5 == k).map(|i| i * 100).collect();
            assert_eq!(find(&ix, "T", &format!("k{k}")), want);
        }
    }

    #[test]
    fn files_seal_at_units_max_and_files_max_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let ix = MessageIndex::open(dir.path(), cfg(8, 16, 3)).unwrap();
        // 10 entries of 4 keys: 4 per file, so files of entries 1-4, 5-8, 9-10; then more.
        for i in 1..=20u64 {
            ix.add_entry(i, i * 100, &[msg(i * 100, "T", i as i64, &["x", &format!("a{i}"), &format!("b{i}"), &format!("c{i}")])]).unwrap();
        }
        let s = ix.stats();
        assert_eq!(s.files, 3, "{s:?}");
        assert_eq!(s.deleted, 2);
        assert_eq!(s.next_index, Some(21));
        // Entries 1-8 were in the deleted files.
        assert_eq!(find(&ix, "T", "x"), (9..=20u64).rev().map(|i| i * 100).collect::<Vec<_>>());
        assert!(find(&ix, "T", "a1").is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn an_entry_larger_than_a_file_is_indexed_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ix = MessageIndex::open(dir.path(), cfg(8, 16, 3)).unwrap();
        let msgs: Vec<EntryMessage> = (0..20u64).map(|i| msg(i, "T", 1, &[&format!("k{i}")])).collect();
        ix.add_entry(1, 100, &msgs).unwrap();
        let s = ix.stats();
        assert_eq!((s.units, s.keys_dropped), (16, 4));
        // Keys per message are bounded too.
        let many: Vec<String> = (0..INDEX_KEYS_PER_MESSAGE_MAX + 3).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let ix2 = MessageIndex::open(dir.path().join("b"), cfg(8, 1000, 3)).unwrap();
        ix2.add_entry(1, 10, &[msg(5, "T", 1, &refs)]).unwrap();
        assert_eq!(ix2.stats().units, INDEX_KEYS_PER_MESSAGE_MAX as u64);
        assert_eq!(ix2.stats().keys_dropped, 3);
        assert_eq!(find(&ix2, "T", &many[INDEX_KEYS_PER_MESSAGE_MAX - 1]), vec![5]);
        assert!(find(&ix2, "T", &many[INDEX_KEYS_PER_MESSAGE_MAX]).is_empty());
    }

    #[test]
    fn reopen_restores_sealed_and_active_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ix = MessageIndex::open(dir.path(), cfg(8, 16, 10)).unwrap();
            for i in 1..=10u64 {
                ix.add_entry(i, i * 100, &[msg(i * 100, "T", i as i64, &["x", "y", "z"])]).unwrap();
            }
            ix.persist().unwrap();
        }
        let ix = MessageIndex::open(dir.path(), cfg(8, 16, 10)).unwrap();
        assert_eq!(ix.stats().rebuilt, 0);
        assert_eq!(ix.next_index(), Some(11));
        assert_eq!(find(&ix, "T", "y"), (1..=10u64).rev().map(|i| i * 100).collect::<Vec<_>>());
        ix.add_entry(11, 1100, &[msg(1100, "T", 11, &["y"])]).unwrap();
        assert_eq!(find(&ix, "T", "y")[0], 1100);
    }

    #[test]
    fn units_after_the_last_header_are_cut_and_reindexed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ix = MessageIndex::open(dir.path(), cfg(8, 100, 10)).unwrap();
            ix.add_entry(1, 100, &[msg(1, "T", 1, &["k"])]).unwrap();
            ix.persist().unwrap();
            ix.add_entry(2, 200, &[msg(2, "T", 1, &["k"])]).unwrap();
            // A crash: the header is not rewritten.
            let mut g = lock(&ix.inner);
            g.failed = Some(IndexError::Io { op: "test", path: PathBuf::new(), message: "crash".into() });
        }
        let ix = MessageIndex::open(dir.path(), cfg(8, 100, 10)).unwrap();
        assert_eq!(ix.next_index(), Some(2));
        assert_eq!(find(&ix, "T", "k"), vec![1]);
        ix.add_entry(2, 200, &[msg(2, "T", 1, &["k"])]).unwrap();
        assert_eq!(find(&ix, "T", "k"), vec![2, 1]);
    }

    fn damage(path: &Path, at: u64) {
        let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, at).unwrap();
    }

    #[test]
    fn damaged_files_are_deleted_with_newer_ones_and_rebuilt_from_their_first_index() {
        for (which, at) in [(0usize, 30u64), (0, HEADER_BYTES as u64 + 3), (1, 5), (2, HEADER_BYTES as u64 + 32 + 2)] {
            let dir = tempfile::tempdir().unwrap();
            {
                let ix = MessageIndex::open(dir.path(), cfg(8, 16, 10)).unwrap();
                for i in 1..=10u64 {
                    ix.add_entry(i, i * 100, &[msg(i * 100, "T", i as i64, &["x", "y", "z", "w"])]).unwrap();
                }
                ix.persist().unwrap();
            }
            let mut files: Vec<PathBuf> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            assert_eq!(files.len(), 3);
            damage(&files[which], at);
            let ix = MessageIndex::open(dir.path(), cfg(8, 16, 10)).unwrap();
            let first_of_bad = [1u64, 5, 9][which];
            assert_eq!(ix.next_index(), if which == 0 { None } else { Some(first_of_bad) }, "damaged file {which} at {at}");
            assert_eq!(ix.stats().rebuilt, (3 - which) as u64);
            // Rebuilding from the first index of the damaged file restores every hit.
            for i in first_of_bad..=10u64 {
                ix.add_entry(i, i * 100, &[msg(i * 100, "T", i as i64, &["x", "y", "z", "w"])]).unwrap();
            }
            assert_eq!(find(&ix, "T", "x"), (1..=10u64).rev().map(|i| i * 100).collect::<Vec<_>>());
        }
    }

    #[test]
    fn purge_below_deletes_sealed_files_that_end_there() {
        let dir = tempfile::tempdir().unwrap();
        let ix = MessageIndex::open(dir.path(), cfg(8, 16, 10)).unwrap();
        for i in 1..=10u64 {
            ix.add_entry(i, i * 100, &[msg(i * 100 - 50, "T", i as i64, &["x", "y", "z", "w"])]).unwrap();
        }
        // Files: entries 1-4 (end 400), 5-8 (end 800), 9-10 (active).
        assert_eq!(ix.purge_below(399).unwrap(), 0);
        assert_eq!(ix.purge_below(400).unwrap(), 1);
        assert_eq!(ix.purge_below(u64::MAX).unwrap(), 1, "the active file stays");
        assert_eq!(find(&ix, "T", "x"), vec![950, 850]);
    }

    #[test]
    fn limits_are_validated() {
        assert!(cfg(0, 100, 1).validate().is_err());
        assert!(cfg(INDEX_SLOTS_LIMIT + 1, 100, 1).validate().is_err());
        assert!(cfg(1, INDEX_UNITS_MIN - 1, 1).validate().is_err());
        assert!(cfg(1, INDEX_UNITS_LIMIT + 1, 1).validate().is_err());
        assert!(cfg(1, 100, 0).validate().is_err());
        assert!(cfg(1, 100, INDEX_FILES_LIMIT + 1).validate().is_err());
        assert!(cfg(INDEX_SLOTS_LIMIT, INDEX_UNITS_LIMIT, INDEX_FILES_LIMIT).validate().is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn unit_and_header_codecs_round_trip(hash: u32, prev: u32, phys: u64, ms: i64, slots in 1u32..1000, units in 0u32..100, extra in 0u32..100,
                                             first: u32, more: u32, sealed: bool) {
            let u = Unit { hash, prev, phys, store_ms: ms };
            prop_assert_eq!(Unit::decode(&u.encode()), u);
            let mut h = Header::new(slots, units + extra + 1, u64::from(first));
            h.units = units;
            h.sealed = sealed;
            h.next_index = u64::from(first) + u64::from(more);
            h.begin_ms = ms;
            h.end_pos = phys;
            prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        }

        /// Any query returns exactly the offsets added under that key (newest first), across sealing, file
        /// limits aside, and the same after a reopen.
        #[test]
        fn queries_match_a_model(entries in proptest::collection::vec(proptest::collection::vec((0u8..6, 0u8..3), 0..5), 1..40),
                                 slots in 1u32..5) {
            let dir = tempfile::tempdir().unwrap();
            let mut model: BTreeMap<(u8, u8), Vec<u64>> = BTreeMap::new();
            {
                let ix = MessageIndex::open(dir.path(), cfg(slots, 16, 1000)).unwrap();
                let mut phys = 0u64;
                for (i, e) in entries.iter().enumerate() {
                    let msgs: Vec<EntryMessage> = e.iter().map(|(k, t)| {
                        phys += 10;
                        model.entry((*k, *t)).or_default().push(phys);
                        msg(phys, &format!("t{t}"), i as i64, &[&format!("k{k}")])
                    }).collect();
                    ix.add_entry(i as u64 + 1, phys + 1, &msgs).unwrap();
                }
                for ((k, t), want) in &model {
                    let mut want = want.clone();
                    want.reverse();
                    prop_assert_eq!(&find(&ix, &format!("t{t}"), &format!("k{k}")), &want);
                }
                ix.persist().unwrap();
            }
            let ix = MessageIndex::open(dir.path(), cfg(slots, 16, 1000)).unwrap();
            prop_assert_eq!(ix.next_index(), Some(entries.len() as u64 + 1));
            for ((k, t), want) in &model {
                let mut want = want.clone();
                want.reverse();
                prop_assert_eq!(&find(&ix, &format!("t{t}"), &format!("k{k}")), &want);
            }
        }
    }
}
