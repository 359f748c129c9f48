//! raftmq's commitlog: segmented, CRC-checked files with a dense index, used directly as the Raft log of
//! a broker group (DLedger-style: the Raft log *is* the message commitlog).
//!
//! - **Segments** (`data/<20-digit byte offset>`) are fixed-size and preallocated; a record never spans two
//!   segments (the tail is padded). Record positions depend only on the sequence of records and the segment
//!   size, so replicas are byte-identical and a message's physical offset is the same on every node.
//! - **Dense index** (`index/<20-digit first raft index>`): 32-byte slots, Raft index → position, length,
//!   term, in O(1).
//! - **Reads** are zero-copy [`bytes::Bytes`] over a shared `mmap`, verified against the record CRC.
//! - **Writes** all go through one IO thread ([`io`]) with group commit; see [`FlushPolicy`] for durability.
//!   While it is idle in sync mode, it zero-fills the last segment a little ahead of the write position
//!   (see [`CommitLogConfig::prefill_ahead_bytes`]), so acknowledging fdatasyncs need not convert extents.
//! - **Recovery** ([`store`]) trusts the prefix named by a valid recovery [`checkpoint`] (durable data and
//!   index slots, written by the IO thread about once a second, on segment rolls and on close) after
//!   spot-checking it against the files, and verifies every record after it: it cuts a torn tail of the
//!   last segment, refuses to start on damage inside a sealed segment, and finishes an interrupted purge.
//!   Without a usable checkpoint it verifies every retained record. Reads verify each record's CRC either
//!   way. See [`RecoveryReport`]. A background scrub then re-verifies the trusted prefix at a bounded
//!   rate and logs (and counts in [`Stats`]) any damage it finds.
//!
//! The crate knows nothing of openraft: `raftmq-raft` maps entries to [`RecordMeta`] + body.

#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
mod fsutil;
pub mod io;
pub mod record;
mod scrub;
mod segment;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::oneshot;

pub use config::{CommitLogConfig, FlushPolicy};
pub use error::{CommitLogError, Result};
pub use fsutil::{create_dir_durable, disk_usage, DiskUsage};
pub use io::DurableCallback;
pub use record::{LogPoint, RecordKind, RecordMeta, HEADER_LEN};
pub use store::{PurgedMark, RecordLocation, RecoveryReport, Stats};

use io::{IoThread, Job};
use store::{read_slot, Store, View};

/// A batch of records encoded by the caller (off the IO thread) and handed to [`CommitLog::append`].
#[derive(Default)]
pub struct RecordBatch {
    buf: Vec<u8>,
    records: Vec<(RecordMeta, u32)>,
}

impl RecordBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record whose body is `body`.
    pub fn push(&mut self, meta: RecordMeta, body: &[u8]) {
        self.push_with(meta, |out| out.extend_from_slice(body));
    }

    /// Adds a record whose body `encode` appends to the buffer in place (no intermediate copy).
    pub fn push_with(&mut self, meta: RecordMeta, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = record::begin_record(&meta, &mut self.buf);
        encode(&mut self.buf);
        let len = record::finish_record(&mut self.buf, start);
        self.records.push((meta, len as u32));
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Encoded bytes.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
}

/// The positions of the log: what was purged, what is present, and where the next record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    /// The purge mark, if anything was ever purged.
    pub purged: Option<PurgedMark>,
    /// Lowest present index.
    pub first: Option<u64>,
    /// Last present record.
    pub last: Option<LogPoint>,
    /// Byte position of the next record.
    pub write_pos: u64,
}

/// A record read back from the log. `body` is a zero-copy view of the mapped segment.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Index, term, leader and kind.
    pub meta: RecordMeta,
    /// Absolute byte position of the record header.
    pub pos: u64,
    /// Record length including the header.
    pub len: u32,
    /// The body (after the header).
    pub body: Bytes,
}

struct Shared {
    view: Arc<RwLock<View>>,
    durable: Arc<store::DurableMark>,
    failure: io::FailureWatch,
    stats: Arc<Stats>,
    recovery: RecoveryReport,
    segment_bytes: u64,
    index_slots_per_file: u64,
}

/// Concurrent, cloneable read access to the log. Sees every record as soon as its append returned.
#[derive(Clone)]
pub struct CommitLogReader {
    shared: Arc<Shared>,
}

impl CommitLogReader {
    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.shared.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The error that stopped the IO thread, if one did: after a failed write, allocation or fsync the
    /// log refuses every further write, and its owner should stop. IO errors keep their kind and errno.
    pub fn failure(&self) -> Option<Arc<CommitLogError>> {
        self.shared.failure.borrow().clone()
    }

    /// A watch of [`CommitLogReader::failure`].
    pub fn watch_failure(&self) -> tokio::sync::watch::Receiver<Option<Arc<CommitLogError>>> {
        self.shared.failure.subscribe()
    }

    /// The current positions of the log.
    pub fn state(&self) -> LogState {
        let v = self.view();
        LogState { purged: v.purged, first: v.first, last: v.last, write_pos: v.write_pos }
    }

    /// The newest index that is durable on this node's disk together with every record before it
    /// (fdatasynced by a flush, or found by recovery and fdatasynced at open); `None` before any record.
    /// Lowered by a truncate. With [`FlushPolicy::Sync`] every record is durable before its append's
    /// durability callback fires; with [`FlushPolicy::Async`] this trails the appends by up to the flush
    /// interval.
    pub fn durable_index(&self) -> Option<u64> {
        self.shared.durable.get()
    }

    /// Blocks until [`CommitLogReader::durable_index`] reaches `index`, for at most `timeout`; returns
    /// whether it did. For threads that must not persist anything derived from a record before the record
    /// itself is durable (state-machine checkpoints).
    pub fn wait_durable(&self, index: u64, timeout: std::time::Duration) -> bool {
        self.shared.durable.wait_for(index, timeout)
    }

    /// IO-thread counters (appends, records, group flushes).
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// How the open that created this log recovered it: from which checkpoint, and how much it verified.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// Segment size of this log.
    pub fn segment_bytes(&self) -> u64 {
        self.shared.segment_bytes
    }

    /// Reads and verifies the record at `index`; `Ok(None)` when it is not present.
    pub fn read(&self, index: u64) -> Result<Option<StoredRecord>> {
        let v = self.view();
        self.read_in(&v, index)
    }

    fn read_in(&self, v: &View, index: u64) -> Result<Option<StoredRecord>> {
        let (Some(first), Some(last)) = (v.first, v.last) else { return Ok(None) };
        if index < first || index > last.index {
            return Ok(None);
        }
        let slot = read_slot(v, self.shared.index_slots_per_file, index)?;
        let seg = self.shared.segment_bytes;
        let base = slot.pos - slot.pos % seg;
        let Some(file) = v.segments.get(&base) else {
            return Err(CommitLogError::Corrupt {
                file: base.to_string().into(),
                offset: 0,
                reason: format!("segment for index {index} is missing"),
            });
        };
        let off = slot.pos - base;
        let end = off + slot.len as u64;
        if end > seg {
            return Err(CommitLogError::Corrupt {
                file: file.path.clone(),
                offset: off,
                reason: format!("index slot for {index} runs past the segment end"),
            });
        }
        match record::decode_at(&file.bytes()[off as usize..end as usize]) {
            record::Decoded::Record { meta, len } if meta.index == index && len == slot.len as usize => {
                Ok(Some(StoredRecord { meta, pos: slot.pos, len: slot.len, body: file.slice(off + HEADER_LEN as u64, len - HEADER_LEN) }))
            }
            other => Err(CommitLogError::Corrupt {
                file: file.path.clone(),
                offset: off,
                reason: format!("record for index {index} failed verification on read: {other:?}"),
            }),
        }
    }

    /// Reads and verifies the present record whose bytes contain the absolute position `pos`, found by a
    /// binary search of the dense index (record positions grow with the index). `Ok(None)` when no present
    /// record contains `pos`: purged, beyond the last record, or in a segment's tail padding. For positions
    /// that come from outside (a client's msgId), where [`CommitLogReader::read_at`] would trust anything.
    pub fn read_containing(&self, pos: u64) -> Result<Option<StoredRecord>> {
        let v = self.view();
        let (Some(first), Some(last)) = (v.first, v.last) else { return Ok(None) };
        let per = self.shared.index_slots_per_file;
        // The first index whose record starts after `pos`; the one before it is the candidate.
        let (mut lo, mut hi) = (first, last.index + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if read_slot(&v, per, mid)?.pos <= pos {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == first {
            return Ok(None);
        }
        let index = lo - 1;
        let slot = read_slot(&v, per, index)?;
        if pos >= slot.pos + u64::from(slot.len) {
            return Ok(None);
        }
        self.read_in(&v, index)
    }

    /// Reads present records in `[start, end)`, in order, stopping once `bytes_max` is reached (always at
    /// least one record when any is present).
    pub fn read_range(&self, start: u64, end: u64, bytes_max: usize) -> Result<Vec<StoredRecord>> {
        let v = self.view();
        let (Some(first), Some(last)) = (v.first, v.last) else { return Ok(Vec::new()) };
        let start = start.max(first);
        let end = end.min(last.index + 1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut i = start;
        while i < end {
            let Some(r) = self.read_in(&v, i)? else { break };
            bytes += r.len as usize;
            out.push(r);
            if bytes >= bytes_max {
                break;
            }
            i += 1;
        }
        Ok(out)
    }

    /// Zero-copy bytes at an absolute log position, for serving message bodies by physical offset.
    /// `None` if that range is not inside a retained segment. No CRC check and no commit check: the range
    /// may lie in a record that is not committed (and may be truncated) or span records. Only for ranges
    /// taken from consume-queue units, which point inside applied records verified when they were applied;
    /// a position from anywhere else goes through [`CommitLogReader::read_containing`].
    pub fn read_at(&self, pos: u64, len: usize) -> Option<Bytes> {
        let v = self.view();
        let seg = self.shared.segment_bytes;
        let base = pos - pos % seg;
        let off = pos - base;
        if off + len as u64 > seg || pos + len as u64 > v.write_pos {
            return None;
        }
        if v.purged.is_some_and(|p| pos < p.next_pos) {
            return None;
        }
        v.segments.get(&base).map(|f| f.slice(off, len))
    }
}

/// The threads of one open log, shared by its handles.
struct Threads {
    io: Mutex<Option<JoinHandle<()>>>,
    scrub: Mutex<Option<JoinHandle<()>>>,
    stop_scrub: Arc<AtomicBool>,
}

impl Drop for Threads {
    /// The last handle is gone without `close`: the IO thread ends once it has drained its queue, and the
    /// scrub is told to stop.
    fn drop(&mut self) {
        self.stop_scrub.store(true, Ordering::Relaxed);
    }
}

/// Handle to a commitlog. Cloneable; every clone submits jobs to the same IO thread, in call order.
#[derive(Clone)]
pub struct CommitLog {
    tx: mpsc::Sender<Job>,
    reader: CommitLogReader,
    threads: Arc<Threads>,
    dir: std::path::PathBuf,
}

impl CommitLog {
    /// Opens (creating if needed) and recovers the log, then starts its IO thread. Blocking: call it at
    /// start-up or from `spawn_blocking`.
    ///
    /// # Errors
    /// [`CommitLogError::Corrupt`] when a sealed segment or metadata file fails verification, naming the
    /// file and offset; IO errors as they come.
    pub fn open(cfg: CommitLogConfig) -> Result<CommitLog> {
        let dir = cfg.dir.clone();
        let scrub_rate = cfg.scrub_bytes_per_sec;
        let store = Store::open(cfg)?;
        let failure: io::FailureWatch = Arc::new(tokio::sync::watch::channel(None).0);
        let shared = Arc::new(Shared {
            view: Arc::clone(&store.shared),
            durable: Arc::clone(&store.durable),
            failure: Arc::clone(&failure),
            stats: Arc::clone(&store.stats),
            recovery: store.recovery.clone(),
            segment_bytes: store.cfg.segment_bytes,
            index_slots_per_file: store.cfg.index_slots_per_file,
        });
        let trusted = store.recovery.checkpoint;
        let (tx, rx) = mpsc::channel();
        let io = IoThread::new(store, failure);
        let io = std::thread::Builder::new()
            .name("commitlog-io".into())
            .spawn(move || io.run(rx))
            .map_err(|e| CommitLogError::io("spawn IO thread", &dir, e))?;
        let reader = CommitLogReader { shared };
        let threads = Arc::new(Threads { io: Mutex::new(Some(io)), scrub: Mutex::new(None), stop_scrub: Arc::default() });
        let log = CommitLog { tx, reader, threads, dir };
        match trusted {
            Some(upto) if scrub_rate > 0 => {
                let scrub = scrub::spawn(log.reader(), upto.index, scrub_rate, Arc::clone(&log.threads.stop_scrub))
                    .map_err(|e| CommitLogError::io("spawn scrub thread", &log.dir, e))?;
                *log.threads.scrub.lock().unwrap_or_else(|p| p.into_inner()) = Some(scrub);
            }
            _ => log.reader.shared.stats.scrub_done.store(true, Ordering::Release),
        }
        Ok(log)
    }

    /// A reader sharing this log.
    pub fn reader(&self) -> CommitLogReader {
        self.reader.clone()
    }

    /// The log's root directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn send(&self, job: Job) -> Result<()> {
        self.tx.send(job).map_err(|_| CommitLogError::Closed)
    }

    /// Queues `batch` for writing and returns at once. The first receiver resolves when the records are
    /// written and readable; `durable` is called when they are durable under the flush policy.
    pub fn submit_append(&self, batch: RecordBatch, durable: DurableCallback) -> oneshot::Receiver<Result<Vec<RecordLocation>>> {
        let (written, rx) = oneshot::channel();
        let job = Job::Append { buf: batch.buf, records: batch.records, written, durable };
        if let Err(mpsc::SendError(Job::Append { written, durable, .. })) = self.tx.send(job) {
            durable(Err(CommitLogError::Closed));
            let _ = written.send(Err(CommitLogError::Closed));
        }
        rx
    }

    /// Writes `batch`; returns once the records are readable. `durable` fires when they are durable.
    pub async fn append(&self, batch: RecordBatch, durable: DurableCallback) -> Result<Vec<RecordLocation>> {
        self.submit_append(batch, durable).await.map_err(|_| CommitLogError::Closed)?
    }

    /// Writes `batch` and waits until it is durable.
    pub async fn append_durable(&self, batch: RecordBatch) -> Result<Vec<RecordLocation>> {
        let (tx, rx) = oneshot::channel();
        let locs = self
            .append(
                batch,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .await?;
        rx.await.map_err(|_| CommitLogError::Closed)??;
        Ok(locs)
    }

    /// Waits until everything submitted before is durable.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Flush {
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        })?;
        rx.await.map_err(|_| CommitLogError::Closed)?
    }

    async fn call(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Job) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| CommitLogError::Closed)?
    }

    /// Deletes records `[from, ∞)`; durable when it returns.
    pub async fn truncate(&self, from: u64) -> Result<()> {
        self.call(|done| Job::Truncate { from, done }).await
    }

    /// Deletes records `(-∞, upto.index]`, persisting the purge mark before any file is removed. When
    /// `upto` lies at or beyond the last record, the next record is written at `next_pos_hint` if given
    /// (a node seeded by a snapshot continues at the leader's byte position), else where the log ended.
    pub async fn purge(&self, upto: LogPoint, next_pos_hint: Option<u64>) -> Result<()> {
        self.call(|done| Job::Purge { upto, next_pos_hint, done }).await
    }

    /// Moves the write position of an empty, purged log to `next_pos`: the byte position the group's
    /// other replicas have for the next record. Fails if the log holds records or was never purged.
    pub async fn rebase(&self, next_pos: u64) -> Result<()> {
        self.call(|done| Job::Rebase { next_pos, done }).await
    }

    /// Atomically replaces the small metadata file `name` (temp file, fsync, rename, fsync dir when
    /// `durable`), ordered after every job submitted before it. Without `durable` a power failure may
    /// bring back the old file (or none), never a torn one.
    pub async fn save_meta(&self, name: &'static str, payload: Vec<u8>, durable: bool) -> Result<()> {
        self.call(|done| Job::SaveMeta { name, payload, durable, done }).await
    }

    /// Like [`CommitLog::save_meta`] (not durable) without waiting for it: the IO thread writes the file in
    /// its turn — after syncing every record queued before it — and logs a failure. For advisory files whose
    /// writer must not stall on that sync. Fails only when the IO thread is gone.
    pub fn save_meta_detached(&self, name: &'static str, payload: Vec<u8>) -> Result<()> {
        let (done, _) = oneshot::channel();
        self.send(Job::SaveMeta { name, payload, durable: false, done })
    }

    /// Reads a metadata file saved with [`CommitLog::save_meta`]; `Ok(None)` if it was never saved.
    pub fn read_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        fsutil::read_meta_file(&self.dir.join(name))
    }

    /// Stops the scrub, and the IO thread after it has flushed everything and written a checkpoint, once
    /// every clone is closed or dropped.
    pub fn close(self) {
        let threads = Arc::clone(&self.threads);
        drop(self);
        if Arc::strong_count(&threads) == 1 {
            threads.stop_scrub.store(true, Ordering::Relaxed);
            for slot in [&threads.scrub, &threads.io] {
                if let Some(h) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = h.join();
                }
            }
        }
    }
}
