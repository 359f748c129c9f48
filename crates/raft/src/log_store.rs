//! openraft's `RaftLogStorage` implemented by the commitlog itself: every Raft entry (blank, normal,
//! membership) is one commitlog record, so the message log and the Raft log are the same bytes.
//!
//! # Correctness
//! - `append` returns once the entries are readable; openraft's flush callback fires from the commitlog's
//!   IO thread only after fdatasync (sync flush) — never earlier.
//! - `truncate` is durable before it returns; `purge` persists the purge mark before unlinking anything.
//! - A purge that reaches past the last entry (a follower that installed a snapshot) restarts the log at
//!   the byte position the snapshot recorded for the next entry, so replicas stay byte-identical.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, StorageError, StorageIOError, Vote};
use raftmq_commitlog::{CommitLog, CommitLogReader, LogPoint, RecordBatch, RecordKind, RecordMeta, StoredRecord, HEADER_LEN};

use crate::types::{Command, Entry, LogId, NodeId, TypeConfig};

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";

/// Bytes of entries returned to one replication request at most (openraft only caps entry counts; the
/// AppendEntries timeout equals the heartbeat interval, so RPCs should stay small). A single entry above it is
/// still returned, alone; the transport gives its transfer a deadline that grows with its size.
pub const REPLICATION_BYTES_MAX: usize = 1 << 20;

/// What the log store and the state machine must tell each other.
///
/// - **Where the log continues** after a purge past its end: set by the state machine when it installs a
///   snapshot (or restores a checkpoint); the log store applies it at the next append.
/// - **How far the state machine is durable** (its newest persisted checkpoint or installed snapshot). A
///   purge waits until this reaches the purge index: openraft 0.9 runs `purge` right after queueing a
///   snapshot install, without waiting for it, and a crash between the two would otherwise leave a log
///   purged past anything the state machine can restore.
/// - **Whether the state at an index came from a snapshot** (installed now, or restored at start-up from
///   what an install persisted). Only such a state may lie beyond the end of the local log: a purge past
///   the last record is refused otherwise, because it would unlink every segment that the consume queues
///   point into (a log behind its own state machine is a durability bug or a lying disk, never routine).
#[derive(Debug, Clone)]
pub struct StoreLink {
    next_pos: Arc<Mutex<Option<(u64, u64)>>>,
    durable: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    snapshot_state: Arc<std::sync::atomic::AtomicU64>,
    guard_purges: bool,
}

impl Default for StoreLink {
    fn default() -> Self {
        StoreLink {
            next_pos: Arc::default(),
            durable: Arc::new(tokio::sync::watch::channel(None).0),
            snapshot_state: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            guard_purges: true,
        }
    }
}

/// How long a purge waits for the state machine to persist the purge index before failing.
pub const PURGE_DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl StoreLink {
    /// A link whose purges do not wait for state-machine durability: only for harnesses (openraft's
    /// storage Suite) that purge logs no state machine ever applied.
    pub fn unguarded() -> Self {
        StoreLink { guard_purges: false, ..Self::default() }
    }

    /// Records that the entry after `index` starts at byte `next_pos`.
    pub fn set_next_pos(&self, index: u64, next_pos: u64) {
        *self.next_pos.lock().unwrap_or_else(|p| p.into_inner()) = Some((index, next_pos));
    }

    fn next_pos(&self, index: u64) -> Option<u64> {
        match *self.next_pos.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((i, pos)) if i == index => Some(pos),
            _ => None,
        }
    }

    /// Records that the state machine's state at `index` is durable (monotonic).
    pub fn set_durable(&self, index: u64) {
        self.durable.send_if_modified(|d| {
            if d.is_none_or(|v| v < index) {
                *d = Some(index);
                true
            } else {
                false
            }
        });
    }

    /// The newest durable state-machine index.
    pub fn durable(&self) -> Option<u64> {
        *self.durable.borrow()
    }

    /// Records that the state machine's state at `index` came from a snapshot (see the type's doc).
    pub fn set_snapshot_state(&self, index: u64) {
        self.snapshot_state.store(index, std::sync::atomic::Ordering::Release);
    }

    fn is_snapshot_state(&self, index: u64) -> bool {
        !self.guard_purges || self.snapshot_state.load(std::sync::atomic::Ordering::Acquire) == index
    }

    async fn wait_durable(&self, index: u64) -> bool {
        if !self.guard_purges {
            return true;
        }
        let mut rx = self.durable.subscribe();
        tokio::time::timeout(PURGE_DURABLE_WAIT, rx.wait_for(|d| d.is_some_and(|v| v >= index))).await.is_ok_and(|r| r.is_ok())
    }
}

/// Fault injection for tests: while held, the flush notices of this log store's appends (openraft's
/// `LogFlushed` callbacks) are kept back, in order, and delivered when released — to openraft, this node's
/// fdatasync takes as long as the hold. The commitlog itself still syncs as usual. Never held in production
/// (only `RaftNode::set_local_flush_held` holds it); the notices held are one per append openraft issues
/// meanwhile, so a test holds it only around a few writes.
#[derive(Clone, Default)]
pub struct FlushHold {
    inner: Arc<Mutex<FlushHoldState>>,
}

type HeldNotice = (LogFlushed<TypeConfig>, Result<(), std::io::Error>);

#[derive(Default)]
struct FlushHoldState {
    held: bool,
    notices: Vec<HeldNotice>,
}

impl FlushHold {
    /// Holds (`true`) or releases (`false`, delivering every notice held, oldest first) the flush notices.
    pub fn set(&self, held: bool) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.held = held;
        if !held {
            // Delivered under the lock so that a notice arriving meanwhile cannot overtake these (delivery only
            // sends on channels).
            for (cb, r) in st.notices.drain(..) {
                cb.log_io_completed(r);
            }
        }
    }

    fn deliver(&self, cb: LogFlushed<TypeConfig>, r: Result<(), std::io::Error>) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if st.held {
            st.notices.push((cb, r));
        } else {
            cb.log_io_completed(r);
        }
    }
}

/// The Raft log store over a [`CommitLog`].
#[derive(Clone)]
pub struct LogStore {
    log: CommitLog,
    reader: LogReader,
    link: StoreLink,
    committed_saved_at: Option<std::time::Instant>,
    flush_hold: FlushHold,
}

/// `committed` is advisory (it only bounds the re-apply at start-up), and openraft saves it before every
/// apply batch: writing it at most this often keeps a file rename off most commits.
const COMMITTED_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Concurrent reader of the Raft log (one per replication stream).
#[derive(Clone)]
pub struct LogReader {
    reader: CommitLogReader,
}

fn log_id(meta: &RecordMeta) -> LogId {
    LogId::new(CommittedLeaderId::new(meta.term, meta.node), meta.index)
}

fn point(id: &LogId) -> LogPoint {
    LogPoint { index: id.index, term: id.leader_id.term, node: id.leader_id.node_id }
}

fn point_log_id(p: &LogPoint) -> LogId {
    LogId::new(CommittedLeaderId::new(p.term, p.node), p.index)
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Turns a stored record back into an entry. Normal entries decode zero-copy and learn their messages'
/// physical offsets from the record position.
pub fn decode_entry(r: &StoredRecord) -> Result<Entry, StorageError<NodeId>> {
    let id = log_id(&r.meta);
    let payload = match r.meta.kind {
        RecordKind::Blank => EntryPayload::Blank,
        RecordKind::Normal => {
            let body_pos = r.pos + HEADER_LEN as u64;
            EntryPayload::Normal(Command::decode(&r.body, Some(body_pos)).map_err(|e| io_err(ErrorSubject::Log(id), ErrorVerb::Read, e))?)
        }
        RecordKind::Membership => {
            EntryPayload::Membership(bincode::deserialize(&r.body).map_err(|e| io_err(ErrorSubject::Log(id), ErrorVerb::Read, e))?)
        }
    };
    Ok(Entry { log_id: id, payload })
}

fn encode_entry(e: &Entry, batch: &mut RecordBatch) -> Result<(), StorageError<NodeId>> {
    let kind = match &e.payload {
        EntryPayload::Blank => RecordKind::Blank,
        EntryPayload::Normal(_) => RecordKind::Normal,
        EntryPayload::Membership(_) => RecordKind::Membership,
    };
    let meta = RecordMeta { index: e.log_id.index, term: e.log_id.leader_id.term, node: e.log_id.leader_id.node_id, kind };
    let mut result = Ok(());
    batch.push_with(meta, |out| {
        result = match &e.payload {
            EntryPayload::Blank => Ok(()),
            EntryPayload::Normal(cmd) => cmd.encode(out).map_err(|err| io_err(ErrorSubject::Log(e.log_id), ErrorVerb::Write, err)),
            EntryPayload::Membership(m) => {
                bincode::serialize_into(&mut *out, m).map_err(|err| io_err(ErrorSubject::Log(e.log_id), ErrorVerb::Write, err))
            }
        }
    });
    result
}

impl LogStore {
    /// Wraps an opened commitlog. `hint` is shared with the state machine.
    pub fn new(log: CommitLog, link: StoreLink) -> Self {
        let reader = LogReader { reader: log.reader() };
        LogStore { log, reader, link, committed_saved_at: None, flush_hold: FlushHold::default() }
    }

    /// This store's flush-notice hold (fault injection for tests, see [`FlushHold`]).
    pub fn flush_hold(&self) -> FlushHold {
        self.flush_hold.clone()
    }

    /// The commitlog reader, for serving message bodies by physical offset.
    pub fn commitlog_reader(&self) -> CommitLogReader {
        self.reader.reader.clone()
    }
}

impl LogReader {
    fn read(&self, start: u64, end: u64, bytes_max: usize) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let records = self.reader.read_range(start, end, bytes_max).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        records.iter().map(decode_entry).collect()
    }
}

fn range_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let (start, end) = range_bounds(&range);
        self.read(start, end, usize::MAX)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError<NodeId>> {
        // Never empty for a non-empty present range: read_range returns at least one record.
        self.read(start, end, REPLICATION_BYTES_MAX)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let st = self.reader.reader.state();
        let last_purged_log_id = st.purged.map(|p| point_log_id(&p.point));
        let last_log_id = st.last.map(|p| point_log_id(&p)).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = bincode::serialize(vote).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.log.save_meta(VOTE_FILE, bytes, true).await.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        match self.log.read_meta(VOTE_FILE).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))? {
            Some(b) => Ok(Some(bincode::deserialize(&b).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))?)),
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<NodeId>> {
        // Advisory (no fsync, throttled): a stale value only shortens the re-apply at start-up.
        if self.committed_saved_at.is_some_and(|t| t.elapsed() < COMMITTED_SAVE_INTERVAL) {
            return Ok(());
        }
        // Never ahead of what this node's log holds durably: after a power cut openraft re-applies up to
        // `committed` from the local log, and an entry missing there would stop the node from starting.
        // Every entry up to `committed` was queued on the log's IO thread before this save (openraft commits
        // only entries this node appended), and the IO thread syncs everything queued before it writes the
        // file, so the file can only name durable entries (a failed log write fails the save, which writes
        // nothing). The save is not awaited: waiting for that sync here stalled openraft's core about every
        // `COMMITTED_SAVE_INTERVAL` — on the leader, whose own write of the newest entries overlaps their
        // replication and may still be syncing when a quorum of followers has committed them.
        if committed.is_none() {
            return Ok(());
        }
        self.committed_saved_at = Some(std::time::Instant::now());
        let bytes = bincode::serialize(&committed).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.log.save_meta_detached(COMMITTED_FILE, bytes).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<NodeId>> {
        // Advisory: a damaged or unreadable file (it is written without fsync, so a power cut may leave it
        // empty or torn), or one naming an entry this log does not hold, is treated as absent. openraft then
        // re-applies only from the state machine's checkpoint, and learns the commit index from the leader.
        let saved = match self.log.read_meta(COMMITTED_FILE) {
            Ok(Some(b)) => match bincode::deserialize::<Option<LogId>>(&b) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring undecodable committed file");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring damaged committed file");
                None
            }
        };
        let Some(c) = saved else { return Ok(None) };
        match self.reader.reader.read(c.index) {
            Ok(Some(r)) if log_id(&r.meta) == c => Ok(Some(c)),
            _ => {
                let st = self.reader.reader.state();
                tracing::warn!(committed = %c, last = ?st.last, "ignoring a committed index the local log does not hold");
                Ok(None)
            }
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = RecordBatch::new();
        let mut first_index = None;
        for e in entries {
            first_index.get_or_insert(e.log_id.index);
            encode_entry(&e, &mut batch)?;
        }
        // The first append after a snapshot install continues at the leader's byte position. openraft runs
        // the purge without waiting for the state machine's install, so the position is applied here: the
        // leader sends these entries only after the install was acknowledged, when the hint is set.
        let st = self.reader.reader.state();
        if let (None, Some(mark), Some(first)) = (st.last, st.purged, first_index) {
            if first == mark.point.index + 1 {
                if let Some(pos) = self.link.next_pos(mark.point.index).filter(|p| *p != st.write_pos) {
                    self.log.rebase(pos).await.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
                }
            }
        }
        self.log
            .append(batch, {
                let hold = self.flush_hold.clone();
                Box::new(move |r| hold.deliver(callback, r.map_err(|e| e.into_io())))
            })
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.log.truncate(log_id.index).await.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        if !self.link.wait_durable(log_id.index).await {
            let why = format!("state machine not durable at {} within {:?}", log_id.index, PURGE_DURABLE_WAIT);
            return Err(io_err(ErrorSubject::Logs, ErrorVerb::Delete, std::io::Error::other(why)));
        }
        let st = self.reader.reader.state();
        let end = st.last.map(|l| l.index).or(st.purged.map(|p| p.point.index));
        if end.is_none_or(|e| log_id.index > e) && !self.link.is_snapshot_state(log_id.index) {
            let why = format!(
                "refusing to purge through {} past the end of the log ({end:?}): the state machine is ahead of its log and \
                 did not come from a snapshot; this node's log lost entries its state machine had applied",
                log_id.index
            );
            tracing::error!(%why, "purge refused");
            return Err(io_err(ErrorSubject::Logs, ErrorVerb::Delete, std::io::Error::new(std::io::ErrorKind::InvalidData, why)));
        }
        let hint = self.link.next_pos(log_id.index);
        self.log.purge(point(&log_id), hint).await.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
