//! The store's state and every operation that changes files: recovery on open, append, truncate, purge
//! and flush. It runs only on the IO thread (`io.rs`); readers see its results through [`View`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use crate::config::CommitLogConfig;
use crate::error::{CommitLogError, Result};
use crate::fsutil;
use crate::record::{decode_at, encode_pad, Decoded, LogPoint, RecordMeta, PAD_HEADER_LEN};
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

/// Counters of the IO thread, for benchmarks and for tests of the flush policy.
#[derive(Debug, Default)]
pub struct Stats {
    /// Append jobs written.
    pub appends: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Group flushes that fdatasynced at least one segment (roll-time seals are not counted).
    pub flushes: AtomicU64,
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
    dirty: BTreeSet<u64>,
    slot_buf: Vec<u8>,
}

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
        for d in [&cfg.dir, &data_dir, &index_dir] {
            fs::create_dir_all(d).map_err(|e| CommitLogError::io("create dir", d, e))?;
        }
        let purged_path = cfg.dir.join(PURGED_FILE);
        let purged = match fsutil::read_meta_file(&purged_path)? {
            Some(b) => Some(PurgedMark::decode(&b, &purged_path)?),
            None => None,
        };
        let mut store = Store {
            cfg,
            data_dir,
            index_dir,
            view: View { purged, ..View::default() },
            shared: Arc::new(RwLock::new(View::default())),
            stats: Arc::default(),
            dirty: BTreeSet::new(),
            slot_buf: Vec::new(),
        };
        store.recover()?;
        store.publish();
        Ok(store)
    }

    fn seg_bytes(&self) -> u64 {
        self.cfg.segment_bytes
    }

    fn seg_base(&self, pos: u64) -> u64 {
        pos - pos % self.seg_bytes()
    }

    /// Scans and verifies the data segments, cuts a torn tail, finishes an interrupted purge and rebuilds
    /// the dense index for the retained records.
    fn recover(&mut self) -> Result<()> {
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
        let mut last: Option<RecordMeta> = None;
        let mut first: Option<u64> = None;
        let bases: Vec<u64> = self.view.segments.keys().copied().collect();
        let mut pending_slots: Vec<(u64, Slot)> = Vec::new();
        'segments: for (si, &base) in bases.iter().enumerate() {
            let is_last = si + 1 == bases.len();
            let file = Arc::clone(&self.view.segments[&base]);
            let bytes = file.bytes();
            let mut off = if base == keep_from { start_pos - base } else { 0 };
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
                        if bytes[off as usize..].iter().any(|&b| b != 0) {
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
        info!(dir = %self.cfg.dir.display(), first = ?self.view.first, last = ?self.view.last, write_pos = self.view.write_pos, "commitlog recovered");
        Ok(())
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
        self.view.segments.insert(base, Arc::clone(&f));
        self.shared.write().unwrap_or_else(|p| p.into_inner()).segments.insert(base, Arc::clone(&f));
        Ok(f)
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
        Ok(f)
    }

    /// Writes dense-index slots for consecutive indexes. Index files are not fsynced: recovery rebuilds
    /// them from the verified data segments.
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
                f.sync_data()?;
                synced = true;
            }
        }
        if synced {
            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        }
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
        let (last, cut) = if from == first {
            (
                None,
                match self.view.purged {
                    Some(p) => p.next_pos,
                    None => self.slot(from)?.pos,
                },
            )
        } else {
            let s = self.slot(from - 1)?;
            (Some(LogPoint { index: from - 1, term: s.term, node: s.node }), s.pos + s.len as u64)
        };
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
        fsutil::write_atomic(&self.cfg.dir, PURGED_FILE, &fsutil::encode_meta_file(&mark.encode()), true)?;
        self.view.purged = Some(mark);
        if everything {
            self.view.first = None;
            self.view.last = None;
        } else {
            self.view.first = Some(upto.index + 1);
        }
        let old_write_pos = self.view.write_pos;
        if everything {
            self.view.write_pos = next_pos;
        }
        self.publish_positions();
        let keep_from = self.seg_base(next_pos);
        let rebase = everything && next_pos != old_write_pos;
        let doomed: Vec<u64> = self.view.segments.keys().copied().filter(|b| rebase || *b < keep_from).collect();
        self.unlink_segments(&doomed)?;
        let per = self.cfg.index_slots_per_file;
        let doomed_idx: Vec<u64> = self.view.index_files.keys().copied().filter(|f| f + per <= upto.index + 1).collect();
        for first in &doomed_idx {
            if let Some(f) = self.view.index_files.remove(first) {
                fs::remove_file(&f.path).map_err(|e| CommitLogError::io("unlink", &f.path, e))?;
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
        fsutil::write_atomic(&self.cfg.dir, PURGED_FILE, &fsutil::encode_meta_file(&mark.encode()), true)?;
        self.view.purged = Some(mark);
        self.view.write_pos = next_pos;
        self.publish_positions();
        let doomed: Vec<u64> = self.view.segments.keys().copied().collect();
        self.unlink_segments(&doomed)?;
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
