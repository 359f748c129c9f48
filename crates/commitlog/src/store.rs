//! The store's state and every operation that changes files: recovery on open, append, truncate, purge,
//! flush, checkpoint and the zero-fill ahead of the write position. It runs only on the IO thread (`io.rs`); readers see its results through [`View`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::checkpoint::{Checkpoint, CheckpointFile, SlotState, Slots, VerifiedPrefix};
use crate::config::CommitLogConfig;
use crate::error::{CommitLogError, Result};
use crate::fsutil;
use crate::record::{decode_at, encode_pad, Decoded, LogPoint, RecordMeta, HEADER_LEN, PAD_HEADER_LEN};
use crate::segment::{MappedFile, Slot, SLOT_LEN};

pub(crate) const PURGED_FILE: &str = "purged";

/// What `purge` persisted: the last purged log id and the byte position where the next retained record
/// starts (or would start). Recovery starts scanning there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgedMark {
    /// Last purged log id.
    pub point: LogPoint,
    /// Position of the first byte after the purged prefix.
    pub next_pos: u64,
}

impl PurgedMark {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        for v in [self.point.index, self.point.term, self.point.node, self.next_pos] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8], path: &std::path::Path) -> Result<Self> {
        if b.len() != 32 {
            return Err(CommitLogError::Corrupt { file: path.into(), offset: 0, reason: "purged mark is not 32 bytes".into() });
        }
        let v = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Ok(PurgedMark { point: LogPoint { index: v(0), term: v(1), node: v(2) }, next_pos: v(3) })
    }
}

/// Counters of the IO thread and the scrub, for benchmarks, operations and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Append jobs written.
    pub appends: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Group flushes that fdatasynced at least one segment (roll-time seals are not counted).
    pub flushes: AtomicU64,
    /// Recovery checkpoints written.
    pub checkpoints: AtomicU64,
    /// Records the background scrub verified.
    pub scrubbed: AtomicU64,
    /// Records the background scrub found damaged (each also logged with its file and offset).
    pub scrub_errors: AtomicU64,
    /// Set when the scrub has finished, or at open when there is nothing to scrub.
    pub scrub_done: AtomicBool,
    /// Zero bytes written (and fdatasynced) ahead of the write position while the IO thread was idle.
    pub prefilled_bytes: AtomicU64,
    /// Latency of each segment fdatasync of a group flush (the sync that acknowledgements wait for), in
    /// microseconds; its count is the number of those fdatasyncs.
    pub fsync_latency: raftmq_metrics::Histogram,
}

/// The newest index whose record, and every record before it, is durable on this node's disk
/// (fdatasynced, or recovered and fdatasynced at open). Set by the IO thread after each flush, lowered by
/// a truncate; read by the state machine, whose checkpoints must never cover a record the log could still
/// lose at a power cut.
#[derive(Debug, Default)]
pub(crate) struct DurableMark {
    index: Mutex<Option<u64>>,
    changed: Condvar,
}

impl DurableMark {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self) -> Option<u64> {
        *self.lock()
    }

    fn set(&self, index: Option<u64>) {
        let mut g = self.lock();
        if *g != index {
            *g = index;
            self.changed.notify_all();
        }
    }

    /// Waits until the mark reaches `index`, for at most `timeout`; returns whether it did.
    pub fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if g.is_some_and(|d| d >= index) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.changed.wait_timeout(g, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// How the last open recovered the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The last record of the checkpoint recovery trusted: it and everything before it were not re-read.
    /// `None` when every retained record was verified.
    pub checkpoint: Option<LogPoint>,
    /// Why a checkpoint found on disk was not used (then everything was verified).
    pub rejected: Option<String>,
    /// Byte position where verification started.
    pub scanned_from: u64,
    /// Records read and verified.
    pub records_scanned: u64,
}

/// The part of the log recovery takes from a checkpoint without reading it.
struct Trusted {
    first: u64,
    last: RecordMeta,
    end: u64,
}

/// What readers see. Published by the IO thread after each change, under a short write lock.
#[derive(Clone, Default)]
pub(crate) struct View {
    pub segments: BTreeMap<u64, Arc<MappedFile>>,
    pub index_files: BTreeMap<u64, Arc<MappedFile>>,
    /// Lowest present index, if any record is present.
    pub first: Option<u64>,
    /// Last present record (or, with an empty log, nothing: see `purged`).
    pub last: Option<LogPoint>,
    pub purged: Option<PurgedMark>,
    /// Where the next record will be written.
    pub write_pos: u64,
}

pub(crate) struct Store {
    pub cfg: CommitLogConfig,
    data_dir: PathBuf,
    index_dir: PathBuf,
    pub view: View,
    pub shared: Arc<RwLock<View>>,
    pub stats: Arc<Stats>,
    /// How far the log is durable; see [`DurableMark`].
    pub durable: Arc<DurableMark>,
    dirty: BTreeSet<u64>,
    /// Index files written since the last checkpoint (by first index): fdatasynced before the next one.
    dirty_index: BTreeSet<u64>,
    slot_buf: Vec<u8>,
    ckpt: CheckpointFile,
    /// A segment was created since the last checkpoint: write one at the next opportunity.
    checkpoint_due: bool,
    /// Bytes of the active segment from the write position (rounded up to a page) to here are written,
    /// fdatasynced zeros. Below the write position it means nothing, so a roll resets it implicitly.
    prefilled_upto: u64,
    /// A chunk of zeros for the prefill, allocated on first use.
    zeros: Vec<u8>,
    pub recovery: RecoveryReport,
}

/// Bytes zero-filled per step: an append that arrives meanwhile waits for at most one such write and
/// its fdatasync.
pub(crate) const PREFILL_CHUNK: u64 = 256 << 10;
const PAGE: u64 = 4096;

/// Where each appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLocation {
    /// Absolute byte position of the record header.
    pub pos: u64,
    /// Record length including the header.
    pub len: u32,
}

impl Store {
    /// Opens (creating if needed) and recovers the store in `cfg.dir`.
    pub fn open(cfg: CommitLogConfig) -> Result<Store> {
        cfg.validate()?;
        let data_dir = cfg.dir.join("data");
        let index_dir = cfg.dir.join("index");
        // Durably: a segment fsynced into a directory whose own entry is lost at a power failure is lost.
        fsutil::create_dir_durable(&cfg.dir)?;
        for d in [&data_dir, &index_dir] {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CommitLogError::io("create dir", d, e)),
            }
        }
        let purged_path = cfg.dir.join(PURGED_FILE);
        let purged = match fsutil::read_meta_file(&purged_path)? {
            Some(b) => Some(PurgedMark::decode(&b, &purged_path)?),
            None => None,
        };
        let (ckpt, slots) = CheckpointFile::open(&cfg.dir, cfg.segment_bytes, cfg.index_slots_per_file)?;
        // Makes the entries of `data`, `index` and `checkpoint` durable (they may be new, or left by a
        // process that died before this fsync).
        fsutil::fsync_dir(&cfg.dir)?;
        let mut store = Store {
            cfg,
            data_dir,
            index_dir,
            view: View { purged, ..View::default() },
            shared: Arc::new(RwLock::new(View::default())),
            stats: Arc::default(),
            durable: Arc::default(),
            dirty: BTreeSet::new(),
            dirty_index: BTreeSet::new(),
            slot_buf: Vec::new(),
            ckpt,
            checkpoint_due: false,
            prefilled_upto: 0,
            zeros: Vec::new(),
            recovery: RecoveryReport::default(),
        };
        store.recover(&slots)?;
        // What recovery accepted may exist only in the page cache of a killed process: make it durable now,
        // so that the durable mark can start at the last record.
        store.flush()?;
        store.release_sealed_fds();
        store.publish();
        Ok(store)
    }

    fn seg_bytes(&self) -> u64 {
        self.cfg.segment_bytes
    }

    fn seg_base(&self, pos: u64) -> u64 {
        pos - pos % self.seg_bytes()
    }

    /// Verifies the data segments from the checkpoint on (from the first retained byte without a usable
    /// checkpoint), cuts a torn tail, finishes an interrupted purge and rebuilds the dense index for the
    /// records it verified.
    fn recover(&mut self, slots: &Slots) -> Result<()> {
        let seg = self.seg_bytes();
        let files = fsutil::list_numbered(&self.data_dir)?;
        // Segments must be the configured size and follow each other without gaps.
        for w in files.windows(2) {
            if w[1].0 != w[0].0 + seg {
                return Err(CommitLogError::Corrupt {
                    file: w[1].1.clone(),
                    offset: 0,
                    reason: format!("segment does not follow {} (segment size {seg})", w[0].1.display()),
                });
            }
        }
        if let Some((base, path)) = files.first() {
            if base % seg != 0 {
                return Err(CommitLogError::Corrupt {
                    file: path.clone(),
                    offset: 0,
                    reason: format!("segment name is not a multiple of segment size {seg}"),
                });
            }
        }
        let start_pos = match self.view.purged {
            Some(p) => p.next_pos,
            None => files.first().map(|(b, _)| *b).unwrap_or(0),
        };
        // Finish an interrupted purge: drop segments wholly before the first retained byte.
        let keep_from = self.seg_base(start_pos);
        let mut removed = false;
        let mut kept = Vec::new();
        for (base, path) in files {
            if base < keep_from {
                info!(file = %path.display(), "removing segment below the purge point");
                fs::remove_file(&path).map_err(|e| CommitLogError::io("unlink", &path, e))?;
                removed = true;
            } else {
                kept.push((base, path));
            }
        }
        if removed {
            fsutil::fsync_dir(&self.data_dir)?;
        }
        let count = kept.len();
        for (i, (base, path)) in kept.into_iter().enumerate() {
            let f = MappedFile::open(path, base, seg, i + 1 == count)?;
            self.view.segments.insert(base, f);
        }
        self.view.write_pos = start_pos;

        // Scan forward from the first retained byte.
        let purged_index = self.view.purged.map(|p| p.point.index);
        // Map the existing index files before the scan rewrites their slots (creating them again would fail
        // with EEXIST), and remove those that hold only purged slots.
        let per = self.cfg.index_slots_per_file;
        for (first_idx, path) in fsutil::list_numbered(&self.index_dir)? {
            if purged_index.is_some_and(|p| first_idx + per <= p + 1) {
                fs::remove_file(&path).map_err(|e| CommitLogError::io("unlink", &path, e))?;
            } else {
                let f = MappedFile::open(path, first_idx, per * SLOT_LEN as u64, true)?;
                self.view.index_files.insert(first_idx, f);
            }
        }
        // Records before a usable checkpoint's position are durable, were written whole and have durable
        // index slots: they are taken as they are. Everything after it is verified as without a checkpoint.
        let mut report = RecoveryReport::default();
        let mut trusted = None;
        if let Some((slot, c)) = slots.newest() {
            if c.prefix.is_some() {
                match self.validate_checkpoint(&c, start_pos) {
                    Ok(t) => trusted = Some(t),
                    Err(reason) => {
                        warn!(dir = %self.cfg.dir.display(), slot, seq = c.seq, reason = %reason, "not using the recovery checkpoint; verifying every record");
                        report.rejected = Some(reason);
                    }
                }
            }
        }
        for (slot, s) in slots.slots.iter().enumerate() {
            if let SlotState::Damaged(reason) = s {
                warn!(dir = %self.cfg.dir.display(), slot, reason = %reason, "damaged recovery checkpoint slot ignored");
            }
        }
        let (scan_from, mut first, mut last) = match &trusted {
            Some(t) => (t.end, Some(t.first), Some(t.last)),
            None => (start_pos, None, None),
        };
        report.checkpoint = trusted.as_ref().map(|t| t.last.point());
        report.scanned_from = scan_from;
        self.view.write_pos = scan_from;
        let scan_base = self.seg_base(scan_from);
        let last_base = self.view.segments.keys().next_back().copied();
        let bases: Vec<u64> = self.view.segments.range(scan_base..).map(|(b, _)| *b).collect();
        let mut accepted_in_last = false;
        let mut pending_slots: Vec<(u64, Slot)> = Vec::new();
        'segments: for &base in &bases {
            let is_last = Some(base) == last_base;
            let file = Arc::clone(&self.view.segments[&base]);
            let bytes = file.bytes();
            let mut off = if base == scan_base { scan_from - base } else { 0 };
            while (off as usize) < bytes.len() {
                let rest = &bytes[off as usize..];
                if rest.len() < PAD_HEADER_LEN && rest.iter().all(|&b| b == 0) {
                    // Too short for padding: a sealed segment may end with a few zero bytes.
                    break;
                }
                let verdict = match decode_at(rest) {
                    Decoded::Pad { .. } if is_last => {
                        // Padding with no segment after it: a crash inside truncate (later segments already
                        // unlinked) or inside a roll. Nothing can follow it, so drop it: the next record must
                        // be placed from the end of the last one, as on every other replica.
                        warn!(file = %file.path.display(), offset = off, "removing padding without a successor segment");
                        file.zero(off, seg - off)?;
                        file.sync_data()?;
                        break 'segments;
                    }
                    Decoded::Pad { .. } => {
                        self.view.write_pos = base + seg;
                        continue 'segments;
                    }
                    Decoded::Empty => Err(None),
                    Decoded::Invalid(reason) => Err(Some(reason)),
                    Decoded::Record { meta, len } => {
                        let expect = last.map(|l| l.index + 1).or(purged_index.map(|p| p + 1));
                        if expect.is_some_and(|e| e != meta.index) {
                            Err(Some(format!("index {} does not follow {}", meta.index, expect.unwrap_or(0) - 1)))
                        } else if last.is_some_and(|l| meta.term < l.term) {
                            Err(Some(format!("term {} goes back from {}", meta.term, last.map(|l| l.term).unwrap_or(0))))
                        } else {
                            Ok((meta, len))
                        }
                    }
                };
                match verdict {
                    Ok((meta, len)) => {
                        report.records_scanned += 1;
                        accepted_in_last |= is_last;
                        first.get_or_insert(meta.index);
                        pending_slots.push((
                            meta.index,
                            Slot { pos: base + off, len: len as u32, kind: meta.kind, term: meta.term, node: meta.node },
                        ));
                        if pending_slots.len() >= 4096 {
                            self.write_slots(&pending_slots)?;
                            pending_slots.clear();
                        }
                        last = Some(meta);
                        off += len as u64;
                        self.view.write_pos = base + off;
                    }
                    Err(reason) if is_last => {
                        // Only bytes no one acknowledged can be here: acks wait for fdatasync. Cut them.
                        let cut = seg - off;
                        if let Some(r) = reason {
                            warn!(file = %file.path.display(), offset = off, reason = %r, bytes = cut, "cutting torn tail");
                        }
                        if !file.is_zero_from(off)? {
                            file.zero(off, cut)?;
                            file.sync_data()?;
                        }
                        break 'segments;
                    }
                    Err(reason) => {
                        let reason = reason.unwrap_or_else(|| "zeros before the end of a sealed segment".into());
                        return Err(CommitLogError::Corrupt { file: file.path.clone(), offset: off, reason });
                    }
                }
            }
            // A segment that ends exactly at its last record rolls to the next one.
            self.view.write_pos = base + seg;
        }
        self.write_slots(&pending_slots)?;
        self.view.first = first;
        self.view.last = last.map(|m| m.point());
        if let (Some(p), Some(f)) = (self.view.purged, first) {
            debug_assert_eq!(f, p.point.index + 1);
        }
        // Records accepted in the last segment may exist only in the page cache of a killed process: the
        // first checkpoint after start fdatasyncs them before naming them. (Sealed segments were
        // fdatasynced before their successor was created.)
        if let (true, Some(b)) = (accepted_in_last, last_base) {
            self.dirty.insert(b);
        }
        // A checkpoint that was not used may name bytes the scan has just cut or that are not the log: it
        // must never be read again, not even as the older slot.
        if report.rejected.is_some() {
            self.ckpt.write_both(None)?;
        }
        info!(
            dir = %self.cfg.dir.display(),
            first = ?self.view.first,
            last = ?self.view.last,
            write_pos = self.view.write_pos,
            checkpoint = ?report.checkpoint,
            scanned_from = report.scanned_from,
            records_scanned = report.records_scanned,
            "commitlog recovered"
        );
        self.recovery = report;
        Ok(())
    }

    /// Checks a checkpoint against the files: geometry, purge mark, segments present, and the index slots
    /// at both ends of the trusted range and of every index file in it pointing at records whose headers
    /// and CRCs match. Returns what recovery may take without reading, or why the checkpoint is unusable.
    fn validate_checkpoint(&self, c: &Checkpoint, start_pos: u64) -> std::result::Result<Trusted, String> {
        let seg = self.seg_bytes();
        let per = self.cfg.index_slots_per_file;
        let Some(p) = c.prefix else { return Err("the checkpoint names no record".into()) };
        if (c.segment_bytes, c.index_slots_per_file) != (seg, per) {
            return Err(format!(
                "written for segment_bytes {} and index_slots_per_file {}, configured {seg} and {per}",
                c.segment_bytes, c.index_slots_per_file
            ));
        }
        let len = p.last_len as u64;
        if len < HEADER_LEN as u64 || p.last_pos % seg + len > seg || p.last_pos.checked_add(len) != Some(p.verified_pos) {
            return Err(format!(
                "last record at {} of {} bytes does not end at verified_pos {} inside one segment",
                p.last_pos, p.last_len, p.verified_pos
            ));
        }
        if let Some(m) = self.view.purged {
            if p.last.index <= m.point.index || p.last_pos < m.next_pos {
                return Err(format!(
                    "names index {} at {}, not after the purge mark (index {}, position {})",
                    p.last.index, p.last_pos, m.point.index, m.next_pos
                ));
            }
        }
        if p.last_pos < start_pos {
            return Err(format!("names position {} before the first retained byte {start_pos}", p.last_pos));
        }
        // Segments are contiguous (checked above), so these two being present means all between are.
        for pos in [start_pos, p.last_pos] {
            let base = self.seg_base(pos);
            if !self.view.segments.contains_key(&base) {
                return Err(format!("segment {} holding position {pos} is missing", fsutil::file_name(base)));
            }
        }
        // The slot of `index` must point inside the trusted range at a record with the same identity.
        let check = |index: u64| -> std::result::Result<Slot, String> {
            let s = read_slot(&self.view, per, index).map_err(|e| e.to_string())?;
            let base = self.seg_base(s.pos);
            let off = s.pos - base;
            if s.pos < start_pos || s.pos > p.last_pos || off + s.len as u64 > seg {
                return Err(format!("index slot of {index} points at {}+{}, outside {start_pos}..={}", s.pos, s.len, p.last_pos));
            }
            let Some(file) = self.view.segments.get(&base) else {
                return Err(format!("segment {} for index {index} is missing", fsutil::file_name(base)));
            };
            match decode_at(&file.bytes()[off as usize..(off + s.len as u64) as usize]) {
                Decoded::Record { meta, len }
                    if meta == (RecordMeta { index, term: s.term, node: s.node, kind: s.kind }) && len == s.len as usize =>
                {
                    Ok(s)
                }
                other => Err(format!("index slot of {index} points at {} which holds {other:?}", s.pos)),
            }
        };
        let s = check(p.last.index)?;
        if (s.pos, s.len, s.term, s.node, s.kind) != (p.last_pos, p.last_len, p.last.term, p.last.node, p.last.kind) {
            return Err(format!("index slot of {} ({s:?}) disagrees with the checkpoint ({p:?})", p.last.index));
        }
        let first = match self.view.purged {
            Some(m) => m.point.index + 1,
            None => {
                let base = self.seg_base(start_pos);
                match decode_at(&self.view.segments[&base].bytes()[(start_pos - base) as usize..]) {
                    Decoded::Record { meta, .. } if meta.index <= p.last.index => meta.index,
                    other => return Err(format!("the first retained byte {start_pos} holds {other:?}")),
                }
            }
        };
        // Spot checks, two slots per index file: a lost, zeroed or foreign index file is noticed without
        // reading every slot. Positions must also increase from file to file.
        let mut prev_end = start_pos;
        let mut file_first = first - first % per;
        while file_first <= p.last.index {
            let lo = file_first.max(first);
            let hi = (file_first + per - 1).min(p.last.index);
            let a = check(lo)?;
            let b = if hi > lo { check(hi)? } else { a };
            if a.pos < prev_end || (hi > lo && b.pos < a.pos + a.len as u64) {
                return Err(format!("index slots of {lo} and {hi} are out of order"));
            }
            if lo == first && self.view.purged.is_none() && a.pos != start_pos {
                return Err(format!("index slot of the first record {first} points at {}, not at {start_pos}", a.pos));
            }
            prev_end = b.pos + b.len as u64;
            file_first += per;
        }
        Ok(Trusted { first, last: p.last, end: p.verified_pos })
    }

    /// Publishes the writer's view to readers.
    pub fn publish(&self) {
        let mut v = self.shared.write().unwrap_or_else(|p| p.into_inner());
        *v = self.view.clone();
    }

    fn publish_positions(&self) {
        let mut v = self.shared.write().unwrap_or_else(|p| p.into_inner());
        v.first = self.view.first;
        v.last = self.view.last;
        v.write_pos = self.view.write_pos;
        v.purged = self.view.purged;
    }

    fn segment_for_write(&mut self, base: u64) -> Result<Arc<MappedFile>> {
        if let Some(f) = self.view.segments.get(&base) {
            return Ok(Arc::clone(f));
        }
        // A record that exactly fills a segment moves on without `roll`: seal the previous segment here, so
        // it is never left with unsynced bytes behind a newer (durably created) segment.
        if let Some(prev) = base.checked_sub(self.seg_bytes()) {
            if self.dirty.remove(&prev) {
                if let Some(f) = self.view.segments.get(&prev) {
                    f.sync_data()?;
                }
            }
        }
        let f = MappedFile::create(&self.data_dir, base, self.seg_bytes())?;
        self.checkpoint_due = true;
        self.view.segments.insert(base, Arc::clone(&f));
        self.shared.write().unwrap_or_else(|p| p.into_inner()).segments.insert(base, Arc::clone(&f));
        self.release_sealed_fds();
        Ok(f)
    }

    /// Closes the descriptors of every file but the newest segment and index file, except files with
    /// unsynced writes: those keep theirs until synced (the next roll or open calls this again).
    fn release_sealed_fds(&self) {
        let newest = self.view.segments.keys().next_back().copied();
        for (base, f) in &self.view.segments {
            if Some(*base) != newest && !self.dirty.contains(base) {
                f.release_fd();
            }
        }
        let newest = self.view.index_files.keys().next_back().copied();
        for (first, f) in &self.view.index_files {
            if Some(*first) != newest && !self.dirty_index.contains(first) {
                f.release_fd();
            }
        }
    }

    fn index_file_for(&mut self, index: u64) -> Result<Arc<MappedFile>> {
        let per = self.cfg.index_slots_per_file;
        let first = index - index % per;
        if let Some(f) = self.view.index_files.get(&first) {
            return Ok(Arc::clone(f));
        }
        let f = MappedFile::create(&self.index_dir, first, per * SLOT_LEN as u64)?;
        self.view.index_files.insert(first, Arc::clone(&f));
        self.shared.write().unwrap_or_else(|p| p.into_inner()).index_files.insert(first, Arc::clone(&f));
        self.release_sealed_fds();
        Ok(f)
    }

    /// Writes dense-index slots for consecutive indexes. Index files are fdatasynced only before a
    /// checkpoint names their slots; recovery rebuilds every slot after the checkpoint.
    fn write_slots(&mut self, slots: &[(u64, Slot)]) -> Result<()> {
        let per = self.cfg.index_slots_per_file;
        let mut i = 0;
        while i < slots.len() {
            let first_index = slots[i].0;
            let file = self.index_file_for(first_index)?;
            let room = (file.base + per - first_index) as usize;
            let n = room.min(slots.len() - i);
            let mut buf = std::mem::take(&mut self.slot_buf);
            buf.clear();
            for (idx, s) in &slots[i..i + n] {
                debug_assert_eq!(*idx, first_index + (buf.len() / SLOT_LEN) as u64);
                s.encode(&mut buf);
            }
            let r = file.write_at((first_index - file.base) * SLOT_LEN as u64, &buf);
            self.slot_buf = buf;
            r?;
            self.dirty_index.insert(file.base);
            i += n;
        }
        Ok(())
    }

    /// Writes pre-encoded records. `records` gives each record's meta and length in `buf` order.
    /// Records at or below the purge point are skipped (openraft may re-send them); the rest must continue
    /// the log. Returns the location of every record written.
    pub fn append(&mut self, buf: &[u8], records: &[(RecordMeta, u32)]) -> Result<Vec<RecordLocation>> {
        let max = self.cfg.record_bytes_max();
        let mut skip = 0usize;
        let mut skip_bytes = 0usize;
        let purged = self.view.purged.map(|p| p.point.index);
        for (meta, len) in records {
            if *len as u64 > max {
                return Err(CommitLogError::RecordTooLarge { len: *len as u64, max });
            }
            if self.view.last.is_none() && purged.is_some_and(|p| meta.index <= p) {
                skip += 1;
                skip_bytes += *len as usize;
            }
        }
        let records = &records[skip..];
        let buf = &buf[skip_bytes..];
        let Some((first, _)) = records.first() else { return Ok(Vec::new()) };
        let expected = self.view.last.map(|l| l.index + 1).or(purged.map(|p| p + 1));
        if let Some(e) = expected {
            if first.index != e {
                return Err(CommitLogError::NonContiguous { expected: e, got: first.index });
            }
        }
        for w in records.windows(2) {
            if w[1].0.index != w[0].0.index + 1 {
                return Err(CommitLogError::NonContiguous { expected: w[0].0.index + 1, got: w[1].0.index });
            }
        }
        let seg = self.seg_bytes();
        let mut locations = Vec::with_capacity(records.len());
        let mut slots = Vec::with_capacity(records.len());
        // A run of records that land contiguously in one segment is written with one pwrite.
        let mut run_start_buf = 0usize;
        let mut run_start_pos = self.view.write_pos;
        let mut at = 0usize;
        for (meta, len) in records {
            let len64 = *len as u64;
            let in_seg = self.view.write_pos % seg;
            if in_seg + len64 > seg {
                self.write_run(run_start_pos, &buf[run_start_buf..at])?;
                self.roll()?;
                run_start_buf = at;
                run_start_pos = self.view.write_pos;
            } else if in_seg == 0 && at > run_start_buf {
                // The previous record filled its segment exactly: this one starts the next segment, so the
                // run so far must not be written past the end of the previous segment's file.
                self.write_run(run_start_pos, &buf[run_start_buf..at])?;
                run_start_buf = at;
                run_start_pos = self.view.write_pos;
            }
            let pos = self.view.write_pos;
            locations.push(RecordLocation { pos, len: *len });
            slots.push((meta.index, Slot { pos, len: *len, kind: meta.kind, term: meta.term, node: meta.node }));
            self.view.write_pos += len64;
            at += *len as usize;
        }
        self.write_run(run_start_pos, &buf[run_start_buf..at])?;
        self.write_slots(&slots)?;
        if self.view.first.is_none() {
            self.view.first = Some(first.index);
        }
        self.view.last = records.last().map(|(m, _)| m.point());
        self.publish_positions();
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(locations.len() as u64, Ordering::Relaxed);
        Ok(locations)
    }

    fn write_run(&mut self, pos: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let base = self.seg_base(pos);
        debug_assert!(pos - base + bytes.len() as u64 <= self.seg_bytes());
        let f = self.segment_for_write(base)?;
        f.write_at(pos - base, bytes)?;
        self.dirty.insert(base);
        Ok(())
    }

    /// Seals the current segment (padding, fdatasync) before the first byte goes to the next one, so a
    /// sealed segment is always complete on disk.
    fn roll(&mut self) -> Result<()> {
        let seg = self.seg_bytes();
        let pos = self.view.write_pos;
        let base = self.seg_base(pos);
        let remaining = seg - (pos - base);
        if remaining > 0 {
            let f = self.segment_for_write(base)?;
            if remaining >= PAD_HEADER_LEN as u64 {
                f.write_at(pos - base, &encode_pad(remaining as usize))?;
            }
            f.sync_data()?;
            self.dirty.remove(&base);
        }
        self.view.write_pos = base + seg;
        self.segment_for_write(base + seg)?;
        Ok(())
    }

    /// Unlinks the data segments `bases`, in the order given, then fsyncs the directory. Readers keep
    /// their mappings of unlinked files.
    fn unlink_segments(&mut self, bases: &[u64]) -> Result<()> {
        for base in bases {
            if let Some(f) = self.view.segments.remove(base) {
                fs::remove_file(&f.path).map_err(|e| CommitLogError::io("unlink", &f.path, e))?;
                self.dirty.remove(base);
            }
        }
        if !bases.is_empty() {
            fsutil::fsync_dir(&self.data_dir)?;
        }
        Ok(())
    }

    /// fdatasyncs every segment written since the last flush.
    pub fn flush(&mut self) -> Result<()> {
        let mut synced = false;
        while let Some(base) = self.dirty.pop_first() {
            if let Some(f) = self.view.segments.get(&base) {
                let started = std::time::Instant::now();
                f.sync_data()?;
                self.stats.fsync_latency.observe_duration(started.elapsed());
                synced = true;
            }
        }
        if synced {
            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        }
        // Sealed segments were fdatasynced at their roll: now every present record is durable.
        self.durable.set(self.view.last.map(|l| l.index).or(self.view.purged.map(|p| p.point.index)));
        Ok(())
    }

    /// The next range `[from, to)` of the active segment to zero-fill, if a whole chunk (or the rest of the
    /// segment) is missing from the target `write_pos + prefill_ahead_bytes`. Waiting for a whole chunk
    /// keeps small appends from each costing an extra write and fdatasync. Never below the write position
    /// (its page already holds record bytes), never past the segment end, never in a segment that does not
    /// exist yet (an append creates it, with the checkpoint bookkeeping that goes with that).
    pub fn prefill_next(&self) -> Option<(u64, u64)> {
        let ahead = self.cfg.prefill_ahead_bytes;
        if ahead == 0 {
            return None;
        }
        let pos = self.view.write_pos;
        let base = self.seg_base(pos);
        if !self.view.segments.contains_key(&base) {
            return None;
        }
        let seg_end = base + self.seg_bytes();
        // Pages are those of the file: a segment base need not be a multiple of the page size.
        let from = self.prefilled_upto.max(base + (pos - base).div_ceil(PAGE) * PAGE);
        let target = pos.saturating_add(ahead).min(seg_end);
        let chunk = PREFILL_CHUNK.min(ahead);
        if from >= target || (target - from < chunk && target < seg_end) {
            return None;
        }
        Some((from, target.min(from + chunk)))
    }

    /// Zero-fills the next chunk ahead of the write position and fdatasyncs it, so the appends that land
    /// there write into converted extents. Runs only on the idle IO thread, which also does every append:
    /// no record byte can be written concurrently. The segment is left out of the dirty set: the chunk's
    /// own fdatasync made it durable. Returns whether there was anything to do.
    pub fn prefill(&mut self) -> Result<bool> {
        let Some((from, to)) = self.prefill_next() else { return Ok(false) };
        let base = self.seg_base(self.view.write_pos);
        let Some(f) = self.view.segments.get(&base).cloned() else { return Ok(false) };
        if self.zeros.is_empty() {
            self.zeros = vec![0; PREFILL_CHUNK as usize];
        }
        f.write_at(from - base, &self.zeros[..(to - from) as usize])?;
        f.sync_data()?;
        self.prefilled_upto = to;
        self.stats.prefilled_bytes.fetch_add(to - from, Ordering::Relaxed);
        Ok(true)
    }

    /// True when the checkpoint does not name the last record.
    pub fn needs_checkpoint(&self) -> bool {
        self.view.last.is_some_and(|l| self.ckpt.prefix().is_none_or(|p| p.last.point() != l))
    }

    /// True when a segment was created since the last checkpoint (which then should not wait).
    pub fn checkpoint_due(&self) -> bool {
        self.checkpoint_due
    }

    /// Makes the log durable up to its last record and names that record in the checkpoint: fdatasync of
    /// the dirty segments, then of the index files written since the last checkpoint, then the checkpoint.
    /// Does nothing when the checkpoint already names the last record.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.checkpoint_due = false;
        let Some(last) = self.view.last else { return Ok(()) };
        if !self.needs_checkpoint() {
            return Ok(());
        }
        let s = self.slot(last.index)?;
        self.flush()?;
        while let Some(first) = self.dirty_index.pop_first() {
            if let Some(f) = self.view.index_files.get(&first) {
                f.sync_data()?;
            }
        }
        self.ckpt.write(Some(VerifiedPrefix {
            verified_pos: s.pos + s.len as u64,
            last_pos: s.pos,
            last_len: s.len,
            last: RecordMeta { index: last.index, term: s.term, node: s.node, kind: s.kind },
        }))?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn slot(&self, index: u64) -> Result<Slot> {
        read_slot(&self.view, self.cfg.index_slots_per_file, index)
    }

    /// Deletes `[from, ∞)` durably. Deleting beyond the last record is a no-op.
    pub fn truncate(&mut self, from: u64) -> Result<()> {
        let Some(last) = self.view.last else { return Ok(()) };
        if from > last.index {
            return Ok(());
        }
        let first = self.view.first.unwrap_or(from);
        let from = from.max(first);
        let old_end = self.view.write_pos;
        // The log now ends where the last retained record ends (or where it starts), not necessarily at the
        // first removed record: if that one had rolled to a new segment, the next record must go back into
        // the padded tail, so that positions depend only on the retained records (as on other replicas).
        let kept = if from == first { None } else { Some(self.slot(from - 1)?) };
        let cut = match (kept, self.view.purged) {
            (Some(s), _) => s.pos + s.len as u64,
            (None, Some(p)) => p.next_pos,
            (None, None) => self.slot(from)?.pos,
        };
        let last = kept.map(|s| LogPoint { index: from - 1, term: s.term, node: s.node });
        // Raft may truncate below the checkpoint (uncommitted entries). Before any byte changes, the
        // checkpoint moves back to the last kept record, which the old one already vouched for (or is
        // invalidated when nothing is kept), in both slots so that no slot names a removed record.
        if self.ckpt.prefix().is_some_and(|p| p.last.index >= from) {
            let prefix = kept.map(|s| VerifiedPrefix {
                verified_pos: cut,
                last_pos: s.pos,
                last_len: s.len,
                last: RecordMeta { index: from - 1, term: s.term, node: s.node, kind: s.kind },
            });
            self.ckpt.write_both(prefix)?;
        }
        // Nothing from `from` on is durable any more (it is about to stop being the log).
        if self.durable.get().is_some_and(|d| d >= from) {
            self.durable.set(from.checked_sub(1));
        }
        // Readers stop seeing the records before any byte changes.
        if last.is_none() {
            self.view.first = None;
        }
        self.view.last = last;
        self.view.write_pos = cut;
        self.publish_positions();
        // Newest segments first, so a crash never leaves a hole in front of surviving records.
        let cut_base = self.seg_base(cut);
        let later: Vec<u64> = self.view.segments.range(cut_base + 1..).map(|(b, _)| *b).rev().collect();
        self.unlink_segments(&later)?;
        if let Some(f) = self.view.segments.get(&cut_base).cloned() {
            let end = old_end.min(cut_base + self.seg_bytes()).max(cut);
            // Zero through the segment end when later segments existed, so their padding goes too.
            let end = if later.is_empty() { end } else { cut_base + self.seg_bytes() };
            f.zero(cut - cut_base, end - cut)?;
            f.sync_data()?;
            self.dirty.remove(&cut_base);
        }
        // The zeroing punched and re-allocated [cut, end): unwritten extents again, to be prefilled anew.
        self.prefilled_upto = cut;
        self.publish();
        Ok(())
    }

    /// Deletes `(-∞, upto.index]`: persists the purge mark first, then removes what lies wholly below it.
    /// `upto` may lie beyond the last record; then the log becomes empty and the next append must be
    /// `upto.index + 1`, written at `next_pos_hint` (the position the leader's log has for it) when given.
    pub fn purge(&mut self, upto: LogPoint, next_pos_hint: Option<u64>) -> Result<()> {
        if self.view.purged.is_some_and(|p| p.point.index >= upto.index) {
            return Ok(());
        }
        let everything = self.view.last.is_none_or(|l| upto.index >= l.index);
        let next_pos = if everything { next_pos_hint.unwrap_or(self.view.write_pos) } else { self.slot(upto.index + 1)?.pos };
        let mark = PurgedMark { point: upto, next_pos };
        // A checkpoint at or below the purge point would name bytes that stop being the log (recovery
        // would also ignore it, by the purge mark written next).
        if self.ckpt.prefix().is_some_and(|p| p.last.index <= upto.index) {
            self.ckpt.write_both(None)?;
        }
        let old_write_pos = self.view.write_pos;
        let rebase = everything && next_pos != old_write_pos;
        if rebase {
            // Every segment goes before the mark that moves the log elsewhere: a crash in between leaves an
            // empty log at the old position (purged again by openraft at start-up from the snapshot state),
            // never old segments that recovery would scan from the new position as if they were the log.
            let all: Vec<u64> = self.view.segments.keys().copied().collect();
            self.unlink_segments(&all)?;
        }
        fsutil::write_atomic(&self.cfg.dir, PURGED_FILE, &fsutil::encode_meta_file(&mark.encode()), true)?;
        self.view.purged = Some(mark);
        if everything {
            self.view.first = None;
            self.view.last = None;
        } else {
            self.view.first = Some(upto.index + 1);
        }
        if everything {
            // A snapshot covers everything through `upto`: nothing below it is the log's to lose any more.
            self.durable.set(Some(self.durable.get().map_or(upto.index, |d| d.max(upto.index))));
            self.view.write_pos = next_pos;
            // A rebase unlinks every segment: the new one starts unprefilled.
            self.prefilled_upto = next_pos;
        }
        self.publish_positions();
        let keep_from = self.seg_base(next_pos);
        let doomed: Vec<u64> = self.view.segments.keys().copied().filter(|b| rebase || *b < keep_from).collect();
        self.unlink_segments(&doomed)?;
        let per = self.cfg.index_slots_per_file;
        let doomed_idx: Vec<u64> = self.view.index_files.keys().copied().filter(|f| f + per <= upto.index + 1).collect();
        for first in &doomed_idx {
            if let Some(f) = self.view.index_files.remove(first) {
                fs::remove_file(&f.path).map_err(|e| CommitLogError::io("unlink", &f.path, e))?;
                self.dirty_index.remove(first);
            }
        }
        if rebase {
            // The log restarts at the leader's position; the bytes before it in this segment stay zero.
            self.segment_for_write(keep_from)?;
        }
        self.publish();
        Ok(())
    }
}

impl Store {
    /// Moves the write position of an empty, purged log to `next_pos` (rewriting the purge mark first).
    /// A follower that installed a snapshot continues at the leader's byte position this way.
    pub fn rebase(&mut self, next_pos: u64) -> Result<()> {
        let Some(mark) = self.view.purged else {
            return Err(CommitLogError::InvalidState("rebase of a log that was never purged".into()));
        };
        if self.view.last.is_some() {
            return Err(CommitLogError::InvalidState("rebase of a log that holds records".into()));
        }
        if self.view.write_pos == next_pos {
            return Ok(());
        }
        let mark = PurgedMark { point: mark.point, next_pos };
        // An empty log has no checkpoint (truncate and purge invalidated it); keep it that way.
        if self.ckpt.prefix().is_some() {
            self.ckpt.write_both(None)?;
        }
        // The old segments go before the new mark is written: a crash in between leaves an empty log at the
        // old position (rebased again at the next append), never old segments that recovery would scan
        // from the new position as if they were the log.
        let doomed: Vec<u64> = self.view.segments.keys().copied().collect();
        self.unlink_segments(&doomed)?;
        fsutil::write_atomic(&self.cfg.dir, PURGED_FILE, &fsutil::encode_meta_file(&mark.encode()), true)?;
        self.view.purged = Some(mark);
        self.view.write_pos = next_pos;
        self.prefilled_upto = next_pos;
        self.publish_positions();
        self.segment_for_write(self.seg_base(next_pos))?;
        self.publish();
        Ok(())
    }
}

/// Reads the dense-index slot of `index` from a view.
pub(crate) fn read_slot(view: &View, per: u64, index: u64) -> Result<Slot> {
    let first = index - index % per;
    let Some(f) = view.index_files.get(&first) else {
        return Err(CommitLogError::Corrupt {
            file: PathBuf::from(fsutil::file_name(first)),
            offset: 0,
            reason: format!("index file for {index} is missing"),
        });
    };
    let at = ((index - first) as usize) * SLOT_LEN;
    Slot::decode(&f.bytes()[at..at + SLOT_LEN]).ok_or_else(|| CommitLogError::Corrupt {
        file: f.path.clone(),
        offset: at as u64,
        reason: format!("empty or damaged index slot for {index}"),
    })
}
