//! The openraft state-machine adapter: applies committed entries to the replicated broker state and keeps
//! that state on disk.
//!
//! What an entry *does* lives in `raftmq-state` ([`BrokerState::apply`]); this file supplies its consume-
//! queue files (through [`raftmq_state::QueueStore`]) and Raft's own bookkeeping (last applied log id,
//! membership, log end position), and persists the whole as checkpoints and snapshots.
//!
//! # Persistence
//! At deterministic indexes (`index % checkpoint_every == 0`, the same on every replica) the state machine
//! takes a *checkpoint*: a copy of the small metadata. A dedicated flush thread msyncs the consume-queue
//! files and then atomically writes the checkpoint file, so a restart restores the newest checkpoint and
//! openraft re-applies only the tail after it.
//!
//! # Snapshots
//! Snapshots carry metadata only (no bodies, no consume-queue units), taken at the retention boundary
//! (a checkpoint index P). A node that installs one gets metadata@P and then the whole retained log P+1..
//! through normal replication, so it ends with the same consume queues and the same log bytes.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, StorageError, StorageIOError, StoredMembership};
use raftmq_commitlog::{CommitLogReader, RecordKind, HEADER_LEN};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::consume_queue::{topic_dir_name, ConsumeQueue, CqFile, MappedFiles};
use crate::error::{FailureCell, ReadError, StoreFailure};
use crate::log_store::StoreLink;
use crate::types::{Command, CommandResponse, Entry, LogId, Node, NodeId, TypeConfig};
pub use raftmq_state::QueueState;
use raftmq_state::{ApplyError, BrokerState, QueueStore};

const CHECKPOINT_FILE: &str = "checkpoint";
const SNAPSHOT_FILE: &str = "snapshot";

/// State-machine configuration.
#[derive(Debug, Clone)]
pub struct StateMachineConfig {
    /// Directory for consume queues, checkpoints and the current snapshot.
    pub dir: PathBuf,
    /// Units per consume-queue file (RocketMQ: 300,000).
    pub cq_units_per_file: u64,
    /// Checkpoint every this many log indexes. Must be the same on every replica.
    pub checkpoint_every: u64,
    /// In-memory checkpoints kept for building snapshots at a retention boundary (besides the one a pending
    /// snapshot needs, see [`evict_checkpoints`]). Each can hold a whole de-duplication window alive.
    pub checkpoints_kept: usize,
    /// Where the state machine records a storage failure (a consume-queue file that cannot be allocated,
    /// a failed msync or checkpoint write). After one, it applies nothing more and takes no checkpoint.
    pub failure: FailureCell,
    /// Consume-queue files mapped at once (LRU over all queues); local, need not match other replicas.
    pub mapped_files_max: usize,
}

impl StateMachineConfig {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateMachineConfig {
            dir: dir.into(),
            cq_units_per_file: 300_000,
            checkpoint_every: 1024,
            checkpoints_kept: 2,
            failure: FailureCell::default(),
            mapped_files_max: 4096,
        }
    }
}

/// The replicated metadata: everything a checkpoint or snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Membership as of `last_applied`.
    pub membership: StoredMembership<NodeId, Node>,
    /// Byte position right after the record of `last_applied`: where the next entry's record starts
    /// (before any segment roll), identical on every replica.
    pub log_end_pos: u64,
    /// The replicated broker state (topics, queues, offsets, clock, schedule).
    pub state: BrokerState,
}

/// First bytes of a versioned checkpoint or snapshot body. A legacy (version 1) body is the bincode of
/// [`MetadataV1`] and starts with the tag of an `Option` (0 or 1), never with 0xFF.
const STATE_MAGIC: [u8; 4] = [0xFF, b'R', b'M', b'S'];
/// The version this code writes: 6 = [`Metadata`] with [`BrokerState`] including the subscription groups;
/// 5 = without them ([`MetadataV5`]); 4 =
/// without them ([`MetadataV4`]); 3 = also without the retention floor and the offset-reset markers
/// ([`MetadataV3`]); 2 = also without pending transactions and the de-duplication window ([`MetadataV2`]).
const STATE_VERSION: u8 = 6;

// Each earlier layout is the one before it plus the fields its version added: bincode writes a nested struct
// as its fields in order, so `MetadataV4 { v3, retention, reset_markers }` reads exactly the bytes version 4
// wrote. Decoding converts outward, each version filling what it added (`From` below).

/// The version 5 layout: [`BrokerState`] before subscription groups.
#[derive(Deserialize)]
struct MetadataV5 {
    v4: MetadataV4,
    locks: raftmq_state::QueueLocks,
}

/// The version 4 layout: [`BrokerState`] before queue locks.
#[derive(Deserialize)]
struct MetadataV4 {
    v3: MetadataV3,
    retention: raftmq_state::Retention,
    reset_markers: raftmq_state::ResetMarkers,
}

/// The version 3 layout: [`BrokerState`] before retention and offset-reset markers.
#[derive(Deserialize)]
struct MetadataV3 {
    v2: MetadataV2,
    transactions: raftmq_state::Transactions,
    dedup: raftmq_state::DedupWindow,
}

/// The version 2 layout: [`BrokerState`] before transactions and de-duplication.
#[derive(Deserialize)]
struct MetadataV2 {
    v1: MetadataV1,
    clock: raftmq_state::Clock,
    schedule: raftmq_state::Schedule,
}

/// The metadata layout written before the replicated state had its own crate (checkpoints and snapshots
/// of data directories made by earlier versions).
#[derive(Deserialize)]
struct MetadataV1 {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, Node>,
    log_end_pos: u64,
    topics: BTreeMap<String, raftmq_state::TopicConfig>,
    queues: BTreeMap<String, BTreeMap<u32, QueueState>>,
    consumer_offsets: raftmq_state::ConsumerOffsets,
}

impl From<MetadataV1> for Metadata {
    fn from(v1: MetadataV1) -> Metadata {
        Metadata {
            last_applied: v1.last_applied,
            membership: v1.membership,
            log_end_pos: v1.log_end_pos,
            state: BrokerState { topics: v1.topics, queues: v1.queues, consumer_offsets: v1.consumer_offsets, ..BrokerState::default() },
        }
    }
}

impl From<MetadataV2> for Metadata {
    fn from(v2: MetadataV2) -> Metadata {
        let mut m = Metadata::from(v2.v1);
        m.state.clock = v2.clock;
        m.state.schedule = v2.schedule;
        m
    }
}

impl From<MetadataV3> for Metadata {
    fn from(v3: MetadataV3) -> Metadata {
        let mut m = Metadata::from(v3.v2);
        m.state.transactions = v3.transactions;
        m.state.dedup = v3.dedup;
        m
    }
}

impl From<MetadataV4> for Metadata {
    fn from(v4: MetadataV4) -> Metadata {
        let mut m = Metadata::from(v4.v3);
        m.state.retention = v4.retention;
        m.state.reset_markers = v4.reset_markers;
        m
    }
}

impl From<MetadataV5> for Metadata {
    fn from(v5: MetadataV5) -> Metadata {
        let mut m = Metadata::from(v5.v4);
        m.state.locks = v5.locks;
        m
    }
}

impl Metadata {
    /// The versioned encoding of checkpoints and snapshots.
    pub fn encode(&self) -> Result<Vec<u8>, bincode::Error> {
        // Sized exactly first: a checkpoint with a full de-duplication window is tens of MB, and growing
        // the buffer by doubling would hold up to twice that.
        let size = usize::try_from(bincode::serialized_size(self)?).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(STATE_MAGIC.len() + 1 + size);
        out.extend_from_slice(&STATE_MAGIC);
        out.push(STATE_VERSION);
        bincode::serialize_into(&mut out, self)?;
        Ok(out)
    }

    /// Decodes a checkpoint or snapshot body of this or an earlier version.
    pub fn decode(bytes: &[u8]) -> Result<Metadata, String> {
        if let Some(rest) = bytes.strip_prefix(&STATE_MAGIC[..]) {
            return match rest.split_first() {
                Some((&STATE_VERSION, body)) => bincode::deserialize(body).map_err(|e| e.to_string()),
                Some((5, body)) => {
                    bincode::deserialize::<MetadataV5>(body).map(Metadata::from).map_err(|e| format!("version 5 state: {e}"))
                }
                Some((4, body)) => {
                    bincode::deserialize::<MetadataV4>(body).map(Metadata::from).map_err(|e| format!("version 4 state: {e}"))
                }
                Some((3, body)) => {
                    bincode::deserialize::<MetadataV3>(body).map(Metadata::from).map_err(|e| format!("version 3 state: {e}"))
                }
                Some((2, body)) => {
                    bincode::deserialize::<MetadataV2>(body).map(Metadata::from).map_err(|e| format!("version 2 state: {e}"))
                }
                Some((v, _)) => Err(format!("state version {v} is newer than this raftmq understands ({STATE_VERSION})")),
                None => Err("state body truncated after its magic".into()),
            };
        }
        bincode::deserialize::<MetadataV1>(bytes).map(Metadata::from).map_err(|e| format!("legacy state: {e}"))
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

struct CurrentSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

enum FlushJob {
    Checkpoint {
        files: Vec<Arc<CqFile>>,
        meta: Arc<Metadata>,
        /// The checkpoint was derived from the local log through `meta.last_applied`: it may be written
        /// only once the log is durable that far. False for a state installed from a snapshot, which no
        /// local record backs.
        from_log: bool,
        done: Option<oneshot::Sender<Result<(), StoreFailure>>>,
    },
}

/// How long a checkpoint waits for the commitlog to become durable through its index before it is put
/// off to the next one (async flush: one flush interval at most, unless the log is failing).
const CHECKPOINT_LOG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// State shared between the state-machine worker, the snapshot builder and readers (the broker).
pub struct SmShared {
    cfg: StateMachineConfig,
    meta: RwLock<Metadata>,
    queues: RwLock<BTreeMap<(String, u32), Arc<ConsumeQueue>>>,
    maps: Arc<MappedFiles>,
    checkpoints: Mutex<VecDeque<Arc<Metadata>>>,
    current: Mutex<Option<CurrentSnapshot>>,
    boundary: AtomicU64,
    snapshot_seq: AtomicU64,
    log: CommitLogReader,
    link: StoreLink,
    flush_tx: Mutex<mpsc::Sender<FlushJob>>,
    /// Woken when a consume queue is created, for long polls on queues that did not exist yet.
    pub queue_created: tokio::sync::Notify,
}

/// The openraft state machine. Moved into openraft's worker; read through [`StateMachine::shared`].
pub struct StateMachine {
    shared: Arc<SmShared>,
    dirty: Vec<Arc<CqFile>>,
}

/// Builds snapshots at the retention boundary.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(e.to_string())).into()
}

/// Records `f`, a failure to restore the stored state at start-up, as the state machine's storage failure
/// (the node's start-up error then carries it) and turns it into openraft's error.
fn restore_failed(failure: &FailureCell, f: StoreFailure) -> StorageError<NodeId> {
    tracing::error!(error = %f, kind = ?f.kind, errno = ?f.errno, corrupt = f.is_corrupt(), "cannot restore the state machine");
    failure.set(f.clone());
    sm_err(ErrorVerb::Read, f)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "state over 4 GiB"))?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    header[4..].copy_from_slice(&len.to_le_bytes());
    {
        // Header and body written separately: no framed copy of a large state.
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&header)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

fn read_framed(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let b = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
    if b.len() < 8 {
        return Err(bad("shorter than its header"));
    }
    let crc = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    if b.len() != len + 8 || crc32fast::hash(&b[8..]) != crc {
        return Err(bad("length or crc mismatch"));
    }
    Ok(Some(b[8..].to_vec()))
}

/// Persists checkpoints in order.
///
/// A checkpoint derived from the log waits until the log is durable through its index: openraft 0.9
/// applies an entry once it is committed, which on a node with an async flush policy can be before the
/// local log fdatasynced it, and a checkpoint ahead of the log would, after a power cut, make openraft
/// purge the log up to it (see `LogStore::purge`). One that cannot wait is put off: its consume-queue files
/// are carried to the next checkpoint, and nothing is reported durable.
///
/// The first failure is recorded in `failure` and is final: a failed msync may have marked pages clean
/// that never reached the disk, so no later checkpoint could vouch for the units before it. Later jobs
/// fail with the same error; the state machine stops applying.
///
/// Checkpoints queued while one is written are coalesced: of consecutive checkpoints derived from the log
/// only the newest is written (the others' consume-queue files are flushed with it), since it makes every
/// older one redundant. Without that, a flush thread slower than apply (a checkpoint with a full
/// de-duplication window is tens of MB) let the queue — each job holding its own copy of the state — grow
/// without bound. Snapshot installs (`done`) are never skipped.
fn flush_thread(dir: PathBuf, rx: mpsc::Receiver<FlushJob>, link: StoreLink, failure: FailureCell, log: CommitLogReader) {
    let mut carried: Vec<Arc<CqFile>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let superseded = superseded_checkpoints(&jobs);
        for (i, job) in jobs.into_iter().enumerate() {
            flush_job(job, superseded[i], &dir, &link, &failure, &log, &mut carried);
        }
    }
}

/// Which of a run of queued jobs need not be written: a checkpoint from the log followed by a newer one
/// from the log.
fn superseded_checkpoints(jobs: &[FlushJob]) -> Vec<bool> {
    let plain = |j: &FlushJob| matches!(j, FlushJob::Checkpoint { from_log: true, done: None, .. });
    let last = jobs.iter().rposition(plain);
    jobs.iter().enumerate().map(|(i, j)| plain(j) && Some(i) != last).collect()
}

/// Writes one checkpoint (or, when `superseded`, only carries its consume-queue files to the next).
fn flush_job(
    job: FlushJob,
    superseded: bool,
    dir: &Path,
    link: &StoreLink,
    failure: &FailureCell,
    log: &CommitLogReader,
    carried: &mut Vec<Arc<CqFile>>,
) {
    let FlushJob::Checkpoint { mut files, meta, from_log, done } = job;
    if superseded {
        debug_assert!(done.is_none());
        carried.append(&mut files);
        return;
    }
    if !carried.is_empty() {
        carried.append(&mut files);
        files = std::mem::take(carried);
    }
    let behind = match meta.last_applied {
        Some(l) if from_log && failure.get().is_none() && !log.wait_durable(l.index, CHECKPOINT_LOG_WAIT) => Some(l.index),
        _ => None,
    };
    if let Some(index) = behind {
        tracing::warn!(index, durable = ?log.durable_index(), "checkpoint put off: the commitlog is not durable that far");
        debug_assert!(done.is_none(), "only snapshot installs wait for a checkpoint, and they are not from the log");
        *carried = files;
        return;
    }
    let r = failure.get().map_or_else(
        || {
            for f in &files {
                f.flush()?;
            }
            let path = dir.join(CHECKPOINT_FILE);
            let bytes = meta.encode().map_err(|e| StoreFailure::io("encode checkpoint", &path, &std::io::Error::other(e.to_string())))?;
            write_atomic(dir, CHECKPOINT_FILE, &bytes).map_err(|e| StoreFailure::io("write checkpoint", &path, &e))
        },
        Err,
    );
    match (&r, meta.last_applied) {
        (Err(e), _) => {
            if failure.set(e.clone()) {
                tracing::error!(error = %e, kind = ?e.kind, errno = ?e.errno, "checkpoint failed; the state machine stops");
            }
        }
        (Ok(()), Some(l)) => link.set_durable(l.index),
        (Ok(()), None) => {}
    }
    if let Some(done) = done {
        let _ = done.send(r);
    }
}

impl SmShared {
    fn queue_dir(&self, topic: &str, queue_id: u32) -> PathBuf {
        self.cfg.dir.join("consumequeue").join(topic_dir_name(topic)).join(queue_id.to_string())
    }

    fn open_queue(&self, topic: &str, queue_id: u32, st: QueueState) -> Result<Arc<ConsumeQueue>, StoreFailure> {
        let q = ConsumeQueue::open_shared(
            self.queue_dir(topic, queue_id),
            self.cfg.cq_units_per_file,
            st.min_offset,
            st.next_offset,
            &self.maps,
        )?;
        let q = Arc::new(q);
        write_lock(&self.queues).insert((topic.to_string(), queue_id), Arc::clone(&q));
        self.queue_created.notify_waiters();
        Ok(q)
    }

    /// After a topic deletion was applied: forgets the topic's consume queues and deletes their files, so a
    /// topic created again under the same name starts with fresh, empty queues at offset 0. Readers holding
    /// a queue keep their mapping until they drop it. Crash-safe without a journal: a restart restores a
    /// checkpoint from before the deletion (the flush thread writes a checkpoint only after the apply that
    /// made it returned) and re-applies the deletion, which deletes the files again; units of the deleted
    /// topic a restored checkpoint still counts may read as missing until then.
    ///
    /// # Errors
    /// The directory could not be removed (the state machine stops; a restart re-applies).
    fn drop_topic_queues(&self, topic: &str) -> Result<(), StoreFailure> {
        write_lock(&self.queues).retain(|(t, _), _| t != topic);
        let dir = self.cfg.dir.join("consumequeue").join(topic_dir_name(topic));
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreFailure::io("remove consume queues of a deleted topic", &dir, &e)),
        }
        let parent = self.cfg.dir.join("consumequeue");
        fs::File::open(&parent).and_then(|d| d.sync_all()).map_err(|e| StoreFailure::io("fsync consume-queue dir", &parent, &e))?;
        info!(topic, "consume queues of the deleted topic removed");
        Ok(())
    }

    /// Records a storage failure (the first one wins) and turns it into openraft's error, which stops
    /// the Raft core.
    fn fail(&self, verb: ErrorVerb, f: StoreFailure) -> StorageError<NodeId> {
        if self.cfg.failure.set(f.clone()) {
            tracing::error!(error = %f, kind = ?f.kind, errno = ?f.errno, "state machine storage failed; it stops applying");
        }
        sm_err(verb, f)
    }

    /// The storage failure that stopped the state machine, if any.
    pub fn failure(&self) -> Option<StoreFailure> {
        self.cfg.failure.get()
    }

    /// The cache of mapped consume-queue files.
    pub fn mapped_files(&self) -> &Arc<MappedFiles> {
        &self.maps
    }

    /// The consume queue of a topic-queue, if it exists.
    pub fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        read_lock(&self.queues).get(&(topic.to_string(), queue_id)).cloned()
    }

    /// A copy of the current metadata (cheap enough for admin paths; hot paths use the accessors).
    pub fn metadata(&self) -> Metadata {
        read_lock(&self.meta).clone()
    }

    /// Reads metadata under the lock without copying it.
    pub fn with_metadata<R>(&self, f: impl FnOnce(&Metadata) -> R) -> R {
        f(&read_lock(&self.meta))
    }

    /// The committed offset of a consumer group on a queue.
    pub fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        read_lock(&self.meta).state.consumer_offsets.get(group)?.get(topic)?.get(&queue_id).copied()
    }

    /// The replicated retention floor and what groups lost to it.
    pub fn retention(&self) -> raftmq_state::Retention {
        read_lock(&self.meta).state.retention.clone()
    }

    /// Retention planning on the leader: every queue's first offset whose unit points at or after log position
    /// `pos`, where that is above the queue's current retention floor, in (topic, queue) order. Blocking
    /// (reads consume-queue files).
    pub fn queue_firsts_at(&self, pos: u64) -> Vec<(String, u32, u64)> {
        let queues: Vec<((String, u32), Arc<ConsumeQueue>)> =
            read_lock(&self.queues).iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        let mut out = Vec::new();
        for ((topic, qid), q) in queues {
            let first = q.first_offset_at_or_after(pos);
            if first > read_lock(&self.meta).state.retention.queue_floor(&topic, qid) {
                out.push((topic, qid, first));
            }
        }
        out
    }

    /// The replicated retention floor.
    pub fn retention_floor(&self) -> raftmq_state::RetainPoint {
        read_lock(&self.meta).state.retention.floor
    }

    /// Last applied log index.
    pub fn last_applied_index(&self) -> Option<u64> {
        read_lock(&self.meta).last_applied.map(|l| l.index)
    }

    /// The commitlog reader, for message bytes by physical offset.
    pub fn commitlog(&self) -> &CommitLogReader {
        &self.log
    }

    /// The message whose bytes start exactly at `phys_offset`, if it belongs to an applied — hence
    /// committed — produce entry. The whole record is read through the index and its CRC verified, and the
    /// entry decoded to find a message starting there: the offset may come from a client (a decoded
    /// msgId) and point anywhere, including into an appended but uncommitted record or inside a body.
    ///
    /// # Errors
    /// [`ReadError`] when the record holding the offset fails to read, verify or decode.
    pub fn applied_message_at(&self, phys_offset: u64) -> Result<Option<Bytes>, ReadError> {
        let Some(rec) = self.log.read_containing(phys_offset)? else { return Ok(None) };
        if rec.meta.kind != RecordKind::Normal || self.last_applied_index().is_none_or(|a| rec.meta.index > a) {
            return Ok(None);
        }
        let body_pos = rec.pos + HEADER_LEN as u64;
        let cmd = Command::decode(&rec.body, Some(body_pos)).map_err(|source| ReadError::Payload { index: rec.meta.index, source })?;
        Ok(cmd.produced().iter().flat_map(|q| &q.messages).find(|m| m.phys_offset == Some(phys_offset)).map(|m| m.data.clone()))
    }

    /// Sets the newest index a snapshot may be built at (the retention boundary). `u64::MAX` means "the
    /// current state".
    pub fn set_snapshot_boundary(&self, index: u64) {
        self.boundary.store(index, Ordering::Release);
    }

    /// The snapshot boundary while no snapshot at or above it exists yet: the checkpoint at it must stay.
    fn pending_boundary(&self) -> Option<u64> {
        let b = self.boundary.load(Ordering::Acquire);
        if b == u64::MAX {
            return None;
        }
        let built = lock(&self.current).as_ref().and_then(|c| c.meta.last_log_id).is_some_and(|l| l.index >= b);
        (!built).then_some(b)
    }

    /// The newest log index retention may purge through without taking a message the state still needs:
    /// one below the entry holding the oldest staged (delay-level or timer) message not yet delivered (its
    /// bytes are copied at delivery, and a node that joins from a snapshot must replay its staging).
    /// `None` = no pin. A 40-day timer therefore pins 40 days of log (see docs/operations.md).
    pub fn retention_pin_index(&self) -> Option<u64> {
        let (ranges, oldest_half) = {
            let m = read_lock(&self.meta);
            (m.state.undelivered(), m.state.oldest_pending_half())
        };
        // A range in log order needs only its head; a timer line's every pending unit is looked at
        // (compaction is rare; memory stays constant).
        let mut oldest: Option<u64> = oldest_half;
        for r in ranges {
            let Some(cq) = self.queue(r.topic, r.queue) else { continue };
            let mut at = r.from;
            let end = if r.in_log_order { r.from + 1 } else { r.to };
            while at < end {
                let units = cq.read(at, 4096.min((end - at) as usize));
                if units.is_empty() {
                    break;
                }
                at += units.len() as u64;
                oldest = units.iter().map(|u| u.phys_offset).chain(oldest).min();
            }
        }
        let oldest = oldest?;
        match self.log.read_containing(oldest) {
            Ok(Some(rec)) => Some(rec.meta.index.saturating_sub(1)),
            // Unreadable or gone: pin everything rather than purge blind.
            _ => Some(0),
        }
    }

    /// Checkpoint indexes currently held in memory, oldest first.
    pub fn checkpoint_indexes(&self) -> Vec<u64> {
        lock(&self.checkpoints).iter().filter_map(|c| c.last_applied.map(|l| l.index)).collect()
    }

    /// Retention: after the log was purged so that it starts at byte `first_pos`, raise every queue's
    /// min offset past units pointing below it and delete consume-queue files wholly below.
    pub fn advance_min_offsets(&self, first_pos: u64) -> Result<(), StoreFailure> {
        let queues: Vec<((String, u32), Arc<ConsumeQueue>)> =
            read_lock(&self.queues).iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        for ((topic, qid), q) in queues {
            let min = q.first_offset_at_or_after(first_pos);
            q.advance_min(min)?;
            if let Some(st) = write_lock(&self.meta).state.queues.get_mut(&topic).and_then(|m| m.get_mut(&qid)) {
                st.min_offset = st.min_offset.max(min);
            }
        }
        Ok(())
    }

    /// Byte position after the record of `index`, if the record is present. Entries applied by openraft
    /// are always present (apply reads them from the log); only test harnesses apply unlogged entries.
    fn end_pos_of(&self, index: u64) -> Result<Option<u64>, StorageError<NodeId>> {
        Ok(self.log.read(index).map_err(|e| sm_err(ErrorVerb::Read, e))?.map(|r| r.pos + r.len as u64))
    }

    /// The current metadata with `log_end_pos` brought up to `last_applied`.
    fn metadata_now(&self) -> Result<Metadata, StorageError<NodeId>> {
        let mut m = self.metadata();
        if let Some(l) = m.last_applied {
            if let Some(end) = self.end_pos_of(l.index)? {
                m.log_end_pos = end;
            }
        }
        Ok(m)
    }

    fn publish_snapshot(&self, meta: SnapshotMeta<NodeId, Node>, data: Vec<u8>) -> Result<(), StorageError<NodeId>> {
        let mut cur = lock(&self.current);
        // Monotonic: a stale build never replaces a newer (for example installed) snapshot.
        if cur.as_ref().is_some_and(|c| c.meta.last_log_id >= meta.last_log_id) {
            return Ok(());
        }
        let file = SnapshotFile { meta: meta.clone(), data: data.clone() };
        let bytes = bincode::serialize(&file).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        write_atomic(&self.cfg.dir, SNAPSHOT_FILE, &bytes).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        *cur = Some(CurrentSnapshot { meta, data });
        Ok(())
    }

    fn current_snapshot(&self) -> Option<Snapshot<TypeConfig>> {
        lock(&self.current).as_ref().map(|c| Snapshot { meta: c.meta.clone(), snapshot: Box::new(Cursor::new(c.data.clone())) })
    }
}

impl StateMachine {
    /// Opens the state machine in `cfg.dir`, restoring the newest checkpoint and the current snapshot.
    /// `log` reads the commitlog; `link` tells the log store where to continue after a purge past its end
    /// and how far this state is durable.
    pub fn open(cfg: StateMachineConfig, log: CommitLogReader, link: StoreLink) -> Result<StateMachine, StorageError<NodeId>> {
        if cfg.checkpoint_every == 0 || cfg.cq_units_per_file == 0 {
            return Err(sm_err(ErrorVerb::Read, "checkpoint_every and cq_units_per_file must be positive"));
        }
        // Durably: a `state/` directory whose entry a power cut takes back takes the checkpoint, the
        // installed snapshot and every consume queue with it.
        raftmq_commitlog::create_dir_durable(&cfg.dir).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        // A checkpoint or snapshot that cannot be read back is recorded as the node's storage failure, so the
        // start-up error says which file and whether it is damaged (a checksum mismatch, a format that does
        // not decode) or the disk refused the read.
        let (ckpt_path, snap_path) = (cfg.dir.join(CHECKPOINT_FILE), cfg.dir.join(SNAPSHOT_FILE));
        let meta: Metadata =
            match read_framed(&ckpt_path).map_err(|e| restore_failed(&cfg.failure, StoreFailure::io("read checkpoint", &ckpt_path, &e)))? {
                Some(b) => Metadata::decode(&b)
                    .map_err(|e| restore_failed(&cfg.failure, StoreFailure::corrupt("decode checkpoint", &ckpt_path, e)))?,
                None => Metadata::default(),
            };
        let current =
            match read_framed(&snap_path).map_err(|e| restore_failed(&cfg.failure, StoreFailure::io("read snapshot", &snap_path, &e)))? {
                Some(b) => {
                    let f: SnapshotFile = bincode::deserialize(&b)
                        .map_err(|e| restore_failed(&cfg.failure, StoreFailure::corrupt("decode snapshot", &snap_path, e.to_string())))?;
                    Some(CurrentSnapshot { meta: f.meta, data: f.data })
                }
                None => None,
            };
        if let Some(l) = meta.last_applied {
            link.set_next_pos(l.index, meta.log_end_pos);
            link.set_durable(l.index);
            // Restored a state that an installed snapshot wrote (and the log may not reach yet): the one
            // case where openraft's start-up purge past the end of the log is right.
            if current.as_ref().is_some_and(|c| c.meta.last_log_id == meta.last_applied) {
                link.set_snapshot_state(l.index);
            }
        }
        let (tx, rx) = mpsc::channel();
        let dir = cfg.dir.clone();
        let flushed = link.clone();
        let failure = cfg.failure.clone();
        let flush_log = log.clone();
        std::thread::Builder::new()
            .name("sm-flush".into())
            .spawn(move || flush_thread(dir, rx, flushed, failure, flush_log))
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let maps = MappedFiles::new(cfg.mapped_files_max);
        let shared = Arc::new(SmShared {
            cfg,
            maps,
            meta: RwLock::new(Metadata::default()),
            queues: RwLock::new(BTreeMap::new()),
            checkpoints: Mutex::new(VecDeque::new()),
            current: Mutex::new(current),
            boundary: AtomicU64::new(u64::MAX),
            snapshot_seq: AtomicU64::new(0),
            log,
            link,
            flush_tx: Mutex::new(tx),
            queue_created: tokio::sync::Notify::new(),
        });
        for (topic, qs) in &meta.state.queues {
            for (qid, st) in qs {
                shared.open_queue(topic, *qid, *st).map_err(|e| shared.fail(ErrorVerb::Read, e))?;
            }
        }
        if meta.last_applied.is_some() {
            lock(&shared.checkpoints).push_back(Arc::new(meta.clone()));
        }
        info!(applied = ?meta.last_applied, queues = meta.state.queues.values().map(|q| q.len()).sum::<usize>(), "state machine restored");
        *write_lock(&shared.meta) = meta;
        Ok(StateMachine { shared, dirty: Vec::new() })
    }

    /// Shared state for readers.
    pub fn shared(&self) -> Arc<SmShared> {
        Arc::clone(&self.shared)
    }

    /// Keeps `snapshot` for snapshot building and queues it for persisting: one copy of the metadata
    /// serves both.
    fn checkpoint(&mut self, snapshot: Arc<Metadata>) {
        let pin = self.shared.pending_boundary();
        {
            let mut cps = lock(&self.shared.checkpoints);
            cps.push_back(Arc::clone(&snapshot));
            evict_checkpoints(&mut cps, self.shared.cfg.checkpoints_kept, pin);
        }
        let job = FlushJob::Checkpoint { files: std::mem::take(&mut self.dirty), meta: snapshot, from_log: true, done: None };
        let _ = lock(&self.shared.flush_tx).send(job);
    }

    /// Persists a checkpoint of the current state and waits for it (used after installing a snapshot).
    async fn checkpoint_now(&mut self) -> Result<(), StorageError<NodeId>> {
        let meta = self.shared.metadata_now()?;
        let (tx, rx) = oneshot::channel();
        let job = FlushJob::Checkpoint { files: std::mem::take(&mut self.dirty), meta: Arc::new(meta), from_log: false, done: Some(tx) };
        lock(&self.shared.flush_tx).send(job).map_err(|_| sm_err(ErrorVerb::Write, "flush thread stopped"))?;
        rx.await.map_err(|_| sm_err(ErrorVerb::Write, "flush thread stopped"))?.map_err(|e| self.shared.fail(ErrorVerb::Write, e))
    }
}

/// Drops the oldest in-memory checkpoints beyond the newest `kept`, except the one a snapshot still has to
/// be built from: the newest at or below `pin` (the boundary [`Node::compact`](crate::Node) chose, while no
/// snapshot at it exists yet). Every copy keeps alive the de-duplication buckets it held when taken, which the
/// live window may have dropped since, so each kept copy can cost up to a whole window (`dedupKeysMax` ids):
/// the bound is in copies, not in log entries.
fn evict_checkpoints(cps: &mut VecDeque<Arc<Metadata>>, kept: usize, pin: Option<u64>) {
    let kept = kept.max(1);
    if cps.len() <= kept {
        return;
    }
    let index = |c: &Metadata| c.last_applied.map_or(0, |l| l.index);
    // Position (among those beyond the newest `kept`) of the checkpoint a pending snapshot needs.
    let old = cps.len() - kept;
    let pinned = pin.and_then(|p| (0..cps.len()).rev().find(|&i| index(&cps[i]) <= p)).filter(|&i| i < old);
    let mut i = 0;
    cps.retain(|_| {
        let keep = i >= old || Some(i) == pinned;
        i += 1;
        keep
    });
}

/// The consume-queue files as `apply` sees them: opens a queue on first use and collects the files written
/// since the last checkpoint (they are msynced before it). Remembers the last queue written, so a run of
/// messages for one queue costs no lookup per message.
struct CqWriter<'a> {
    shared: &'a SmShared,
    dirty: &'a mut Vec<Arc<CqFile>>,
    last: Option<(String, u32, Arc<ConsumeQueue>)>,
}

impl CqWriter<'_> {
    fn queue(&mut self, topic: &str, queue_id: u32, st: QueueState) -> Result<Arc<ConsumeQueue>, StoreFailure> {
        if let Some((t, id, q)) = &self.last {
            if *id == queue_id && t == topic {
                return Ok(Arc::clone(q));
            }
        }
        let q = match self.shared.queue(topic, queue_id) {
            Some(q) => q,
            None => self.shared.open_queue(topic, queue_id, st)?,
        };
        self.last = Some((topic.to_string(), queue_id, Arc::clone(&q)));
        Ok(q)
    }
}

impl QueueStore for CqWriter<'_> {
    type Error = StoreFailure;

    fn write(&mut self, topic: &str, queue_id: u32, queue: QueueState, at: u64, unit: raftmq_state::CqUnit) -> Result<(), StoreFailure> {
        let q = self.queue(topic, queue_id, queue)?;
        if let Some(f) = q.write(at, &unit)? {
            self.dirty.push(f);
        }
        Ok(())
    }

    fn publish(&mut self, topic: &str, queue_id: u32, next_offset: u64) {
        // Always the queue just written (a part publishes after its writes), so never a lookup.
        match &self.last {
            Some((t, id, q)) if *id == queue_id && t == topic => q.publish(next_offset),
            _ => {
                if let Some(q) = self.shared.queue(topic, queue_id) {
                    q.publish(next_offset);
                }
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let boundary = self.shared.boundary.load(Ordering::Acquire);
        let chosen = if boundary == u64::MAX {
            Some(Arc::new(self.shared.metadata_now()?))
        } else {
            let cps = lock(&self.shared.checkpoints);
            cps.iter().rev().find(|c| c.last_applied.is_some_and(|l| l.index <= boundary)).cloned()
        };
        let Some(state) = chosen else {
            // Nothing old enough: offer the current snapshot again (openraft ignores one that is not newer).
            if let Some(s) = self.shared.current_snapshot() {
                return Ok(s);
            }
            return Err(sm_err(ErrorVerb::Read, format!("no checkpoint at or below snapshot boundary {boundary}")));
        };
        let data = state.encode().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::AcqRel);
        let idx = state.last_applied.map(|l| l.index.to_string()).unwrap_or_else(|| "none".into());
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("{idx}-{seq}"),
        };
        self.shared.publish_snapshot(meta.clone(), data.clone())?;
        debug!(snapshot = %meta.snapshot_id, "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let m = read_lock(&self.shared.meta);
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let shared = Arc::clone(&self.shared);
        // After a storage failure nothing more is applied: openraft stops, and a restart re-applies.
        if let Some(f) = shared.failure() {
            return Err(sm_err(ErrorVerb::Write, f));
        }
        let every = shared.cfg.checkpoint_every;
        let mut out = Vec::new();
        let mut meta = write_lock(&shared.meta);
        for entry in entries {
            let resp = match &entry.payload {
                EntryPayload::Blank => CommandResponse::Done,
                EntryPayload::Membership(m) => {
                    meta.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    CommandResponse::Done
                }
                EntryPayload::Normal(cmd) => {
                    let mut queues = CqWriter { shared: &shared, dirty: &mut self.dirty, last: None };
                    let resp = meta.state.apply(cmd, &mut queues).map_err(|e| match e {
                        ApplyError::Store(f) => shared.fail(ErrorVerb::Write, f),
                        e @ ApplyError::Unlogged => sm_err(ErrorVerb::Write, e),
                    })?;
                    if let (Command::DeleteTopic(topic), CommandResponse::Done) = (cmd, &resp) {
                        shared.drop_topic_queues(topic).map_err(|f| shared.fail(ErrorVerb::Write, f))?;
                    }
                    if let (Command::Retain(r), CommandResponse::Done) = (cmd, &resp) {
                        // Readers stop serving below the floor now; the files go when this replica compacts.
                        for (topic, qid, _) in &r.queues {
                            if let Some(q) = shared.queue(topic, *qid) {
                                q.raise_min(meta.state.retention.queue_floor(topic, *qid));
                            }
                        }
                    }
                    resp
                }
            };
            meta.last_applied = Some(entry.log_id);
            if entry.log_id.index % every == 0 {
                if let Some(end) = shared.end_pos_of(entry.log_id.index)? {
                    meta.log_end_pos = end;
                }
                let mut copy = meta.clone();
                // The copy is only serialized: compacting its newest de-duplication bucket unshares the live
                // one, whose next insert would otherwise copy it (once per checkpoint kept).
                copy.state.dedup.compact_newest();
                self.checkpoint(Arc::new(copy));
            }
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: Arc::clone(&self.shared) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let mut state = Metadata::decode(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        if state.last_applied != meta.last_log_id {
            return Err(sm_err(ErrorVerb::Read, "snapshot data and meta disagree on the last log id"));
        }
        // This replica holds nothing below the snapshot: every queue starts at its next offset.
        for qs in state.state.queues.values_mut() {
            for st in qs.values_mut() {
                st.min_offset = st.next_offset;
            }
        }
        let shared = Arc::clone(&self.shared);
        let cq_root = shared.cfg.dir.join("consumequeue");
        self.dirty.clear();
        write_lock(&shared.queues).clear();
        let _ = tokio::task::spawn_blocking(move || fs::remove_dir_all(cq_root)).await;
        for (topic, qs) in &state.state.queues {
            for (qid, st) in qs {
                shared.open_queue(topic, *qid, *st).map_err(|e| shared.fail(ErrorVerb::Write, e))?;
            }
        }
        if let Some(l) = state.last_applied {
            shared.link.set_next_pos(l.index, state.log_end_pos);
            shared.link.set_snapshot_state(l.index);
        }
        {
            let mut cps = lock(&shared.checkpoints);
            cps.clear();
            cps.push_back(Arc::new(state.clone()));
        }
        *write_lock(&shared.meta) = state;
        // The snapshot file first, then the checkpoint (which reports the state durable and so lets the log
        // store purge): a restart that finds the checkpoint at the snapshot's index knows its state came
        // from the snapshot, which is what allows openraft's start-up purge past the end of the log.
        shared.publish_snapshot(meta.clone(), data)?;
        self.checkpoint_now().await?;
        info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.shared.current_snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_state::{Command as StateCommand, CqUnit, OffsetReset, TopicConfig};

    struct NoQueues;

    impl QueueStore for NoQueues {
        type Error = std::convert::Infallible;
        fn write(&mut self, _: &str, _: u32, _: QueueState, _: u64, _: CqUnit) -> Result<(), Self::Error> {
            Ok(())
        }
        fn publish(&mut self, _: &str, _: u32, _: u64) {}
    }

    #[test]
    fn only_a_log_checkpoint_followed_by_a_newer_one_is_superseded() {
        let job = |from_log: bool, install: bool| FlushJob::Checkpoint {
            files: Vec::new(),
            meta: Arc::new(Metadata::default()),
            from_log,
            done: install.then(|| oneshot::channel().0),
        };
        // log, log, install, log, log: the last log checkpoint and the install are written.
        let jobs = [job(true, false), job(true, false), job(false, true), job(true, false), job(true, false)];
        assert_eq!(superseded_checkpoints(&jobs), [true, true, false, true, false]);
        assert_eq!(superseded_checkpoints(&[job(true, false)]), [false], "a lone checkpoint is written");
        assert_eq!(superseded_checkpoints(&[job(true, false), job(false, true)]), [false, false], "nothing newer from the log");
    }

    fn kept_after(indexes: &[u64], kept: usize, pin: Option<u64>) -> Vec<u64> {
        let mut cps: VecDeque<Arc<Metadata>> = indexes
            .iter()
            .map(|&i| {
                Arc::new(Metadata {
                    last_applied: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i)),
                    ..Metadata::default()
                })
            })
            .collect();
        evict_checkpoints(&mut cps, kept, pin);
        cps.iter().map(|c| c.last_applied.map_or(0, |l| l.index)).collect()
    }

    #[test]
    fn eviction_keeps_the_newest_and_the_checkpoint_a_pending_snapshot_needs() {
        let all = [1024, 2048, 3072, 4096, 5120];
        assert_eq!(kept_after(&all, 2, None), [4096, 5120], "only the newest two");
        assert_eq!(kept_after(&all, 0, None), [5120], "at least one is kept");
        assert_eq!(kept_after(&all, 9, None), all, "fewer than the bound: nothing goes");
        assert_eq!(kept_after(&all, 2, Some(2048)), [2048, 4096, 5120], "the boundary's checkpoint stays");
        assert_eq!(kept_after(&all, 2, Some(3000)), [2048, 4096, 5120], "the newest at or below the boundary");
        assert_eq!(kept_after(&all, 2, Some(4096)), [4096, 5120], "a pinned checkpoint among the newest costs nothing more");
        assert_eq!(kept_after(&all, 2, Some(100)), [4096, 5120], "none old enough: nothing extra is kept");
        // Pushed one at a time, as apply does: the pinned copy survives any number of newer ones.
        let mut cps = VecDeque::new();
        for i in 1..=40u64 {
            cps.push_back(Arc::new(Metadata {
                last_applied: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i * 1024)),
                ..Metadata::default()
            }));
            evict_checkpoints(&mut cps, 2, Some(3 * 1024));
            assert!(cps.len() <= 3, "bounded: {} copies", cps.len());
        }
        let idx: Vec<u64> = cps.iter().map(|c| c.last_applied.map_or(0, |l| l.index)).collect();
        assert_eq!(idx, [3 * 1024, 39 * 1024, 40 * 1024]);
    }

    fn with_reset() -> Metadata {
        let mut meta = Metadata { log_end_pos: 4096, ..Metadata::default() };
        let t = TopicConfig { name: "T".into(), read_queues: 4, write_queues: 4, perm: 6 };
        meta.state.apply(&StateCommand::UpsertTopic(t), &mut NoQueues).expect("topic");
        let reset = OffsetReset { group: "g".into(), topic: "T".into(), offsets: vec![(0, 3), (2, 9)] };
        meta.state.apply(&StateCommand::ResetOffsets(reset), &mut NoQueues).expect("reset");
        meta
    }

    fn lock_key(queue_id: u32) -> raftmq_state::QueueKey {
        raftmq_state::QueueKey { topic: "T".into(), broker_name: "broker-a".into(), queue_id }
    }

    /// Reset markers and a queue lock held by c1 (granted at replicated time 1000, lease until 61 000).
    fn with_reset_and_lock() -> Metadata {
        let mut meta = with_reset();
        let lock = raftmq_state::LockRequest {
            group: "g".into(),
            client_id: "c1".into(),
            queues: vec![lock_key(1)],
            stamp_ms: 1000,
            ttl_ms: 60_000,
            locks_max: 10,
        };
        meta.state.apply(&StateCommand::Lock(lock), &mut NoQueues).expect("lock");
        meta
    }

    #[test]
    fn markers_and_locks_round_trip_through_a_version_6_checkpoint() {
        let mut meta = with_reset_and_lock();
        let g = raftmq_state::SubscriptionGroupConfig::new("grp");
        meta.state.apply(&StateCommand::UpsertSubscriptionGroup(g.clone()), &mut NoQueues).expect("group");
        let bytes = meta.encode().expect("encodes");
        assert_eq!(bytes[..5], [0xFF, b'R', b'M', b'S', 6]);
        let back = Metadata::decode(&bytes).expect("decodes");
        assert_eq!(back, meta);
        assert_eq!((back.state.reset_marker("g", "T", 0), back.state.reset_marker("g", "T", 2)), (Some(3), Some(9)));
        assert_eq!(back.state.locks.holder_at("g", &lock_key(1), 60_999), Some("c1"), "the lease continues after a restore");
        assert_eq!(back.state.locks.holder_at("g", &lock_key(1), 61_000), None);
        assert_eq!(back.state.subscription_groups.get("grp"), Some(&g));
    }

    /// A version-5 body is this version's without its last field (the group table, empty: an 8-byte length
    /// of 0). It decodes with no groups and everything else kept (locks included).
    #[test]
    fn a_version_5_checkpoint_decodes_without_subscription_groups() {
        let meta = with_reset_and_lock();
        let v6 = meta.encode().expect("encodes");
        let mut v5 = v6[..v6.len() - 8].to_vec();
        v5[4] = 5;
        let back = Metadata::decode(&v5).expect("a version-5 body decodes");
        assert_eq!(back, meta);
        assert_eq!(back.state.locks.holder_at("g", &lock_key(1), 60_999), Some("c1"));
        let mut cut = v5.clone();
        cut[4] = 6;
        assert!(Metadata::decode(&cut).is_err(), "version 6 with the field cut off is truncated, not silently read");
    }

    /// A version-4 body is this version's without its last field (the lock table, empty: two maps, each an
    /// 8-byte length of 0). It decodes with no locks and everything else kept.
    #[test]
    fn a_version_4_checkpoint_decodes_without_locks() {
        let mut meta = with_reset_and_lock();
        meta.state.locks = raftmq_state::QueueLocks::default();
        let v6 = meta.encode().expect("encodes");
        let mut v4 = v6[..v6.len() - 8 - 16].to_vec();
        v4[4] = 4;
        let back = Metadata::decode(&v4).expect("a version-4 body decodes");
        assert_eq!(back, meta);
        assert_eq!(back.state.reset_marker("g", "T", 2), Some(9));
        // Version 5 with the field cut off is truncated, not silently read.
        let mut cut = v4.clone();
        cut[4] = 6;
        assert!(Metadata::decode(&cut).is_err());
    }

    /// A version-3 body is version 4's without its last field (the markers map, empty: an 8-byte length of
    /// 0). It decodes with no markers and everything else kept.
    #[test]
    fn a_version_3_checkpoint_decodes_without_markers() {
        let mut meta = with_reset();
        meta.state.reset_markers.clear();
        let v6 = meta.encode().expect("encodes");
        let mut v3 = v6[..v6.len() - 8 - 16 - 8].to_vec();
        v3[4] = 3;
        let back = Metadata::decode(&v3).expect("a version-3 body decodes");
        assert_eq!(back, meta);
        assert_eq!(back.state.consumer_offsets["g"]["T"][&2], 9);
        let mut newer = v6;
        newer[4] = 7;
        assert!(Metadata::decode(&newer).unwrap_err().contains("newer"));
    }
}
