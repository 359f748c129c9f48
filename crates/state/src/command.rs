//! The entry payload — what one commitlog record carries — and its versioned, deterministic log-body codec.
//!
//! Entries travel between nodes with serde (bincode) and are stored in the commitlog with the hand-written
//! codec below ([`Command::encode`]), so that each message's physical offset inside the log can be computed
//! from the record position alone, identically on every replica. Pure: no I/O; callers own the buffers.
//!
//! ```text
//! body := tag u8 | rest
//! tag 1 Produce (legacy):  parts
//! tag 2 CommitOffsets:     bincode(Vec<OffsetCommit>)
//! tag 3 UpsertTopic:       bincode(TopicConfig)
//! tag 4 ProduceAt:         time_ms i64 | ndeliveries u32 | { delivery } | parts
//! delivery := source u8 (0 level, 1 timer) | schedule_queue u32 | staged_offset u64 | due_ms i64 |
//!             ( 0 u8 | part u32 | index u32                                            copy to the real queue
//!             | 1 u8 | to_queue u32 | eligible_ms i64 | phys_offset u64 | size u32 )   move to a timer queue
//! tag 5 SetDelayLevels:    bincode(Vec<u64>)           (delay of each level in ms)
//! tag 6 ProduceAt with ops: time_ms i64 | ndeliveries u32 | { delivery } | nops u32 | { op } | parts
//! op := 0 u8 | part u32 | index u32 | key u128                                  de-duplication key
//!     | 1 u8 | part u32 | index u32 | real_queue u32 | immunity_ms i64 |
//!       str producer_group | str real_topic | str transaction_id                half message (prepare)
//!     | 2 u8 | half_phys u64 | part u32 | index u32                            commit (copy = part/index)
//!     | 3 u8 | half_phys u64                                                   rollback
//!     | 4 u8 | half_phys u64 | part u32 | index u32                            discard (parked copy)
//!     | 5 u8 | half_phys u64                                                   check-back round made
//!   str := len u16 | UTF-8 bytes
//! tag 7 SetDedupWindow:    bincode(DedupSettings)
//! tag 8 Retain:            index u64 | pos u64 | decided_ms i64 | reason u8 | last u8 | nqueues u32 |
//!                          { topic_len u16 | topic | queue_id u32 | first_offset u64 }   (the retention floor)
//! tag 9 ResetOffsets:      bincode(OffsetReset)        (group, topic, [(queue id, offset)]: offsets + markers)
//! tag 10 ClearResetMarkers: bincode(Vec<ResetMarker>)  (markers to end, each only while it holds its offset)
//! tag 11 Lock:             bincode(LockRequest)        (group, client, queues, stamp, lease ttl, locksMax)
//! tag 12 Unlock:           bincode(UnlockRequest)      (group, client, queues, stamp)
//! tag 13 UpsertSubscriptionGroup: bincode(SubscriptionGroupConfig)
//! tag 14 DeleteSubscriptionGroup: bincode(DeleteGroup)  (group, clean_offset)
//! tag 15 DeleteTopic:      bincode(String)             (the topic)
//! parts := nqueues u32 | { topic_len u16 | topic | queue_id u32 | nmsgs u32 | { tags_code i64 | len u32 | bytes } }
//! ```
//! Versioning: a tag never changes meaning. Tag 1 is what raftmq wrote before time entered the log; it is
//! still decoded (and applied without moving the replicated clock), never proposed by the broker. New
//! record kinds get new tags. A produce entry without ops is written as tag 4 (byte for byte what the
//! previous version wrote); one with ops as tag 6.

use bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};

use crate::error::PayloadError;
pub use crate::groups::{DeleteGroup, SubscriptionGroupConfig};
pub use crate::locks::{LockRequest, QueueKey, UnlockRequest};
pub use crate::offsets::{OffsetReset, ResetMarker};
use crate::retention::{retain_queue_bytes, Retain, RetainPoint, RETAIN_HEADER_BYTES};

/// One message of a produce batch: the RocketMQ-encoded message bytes, kept verbatim, plus the tag hash the
/// consume queue stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Hash of the message tag (RocketMQ's `tagsCode`), stored in the consume-queue unit. For a message
    /// staged in a schedule queue it is the due time in ms (as RocketMQ does).
    pub tags_code: i64,
    /// The message in RocketMQ's stored-message encoding.
    pub data: Bytes,
    /// Absolute commitlog offset of `data`; set when the entry is read back from the log, `None` on the
    /// proposing path and on the wire.
    #[serde(skip)]
    pub phys_offset: Option<u64>,
}

/// Messages for one topic-queue inside a produce batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAppend {
    /// Topic name.
    pub topic: String,
    /// Queue id within the topic.
    pub queue_id: u32,
    /// The messages, in order.
    pub messages: Vec<Message>,
}

/// A consumer group's committed offset for one topic-queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// Next offset the group will consume.
    pub offset: u64,
}

/// Replicated topic configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// Readable queues.
    pub read_queues: u32,
    /// Writable queues.
    pub write_queues: u32,
    /// RocketMQ permission bits (2 write, 4 read, 6 read-write).
    pub perm: u32,
}

/// Which staging queues a [`Delivery`] takes a message from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// A delay-level queue of the schedule topic (queue = level − 1).
    Level,
    /// A timer queue (queue k delays by `TIMER_TICK_MS << k`).
    Timer,
}

/// What a [`Delivery`] does with the staged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Its copy for the real queue is message `index` of queue part `part` of the entry.
    Copy {
        /// The queue part of the entry holding the copy.
        part: u32,
        /// The copy's index among that part's messages.
        index: u32,
    },
    /// It moves, by reference, to timer queue `to_queue`: a unit pointing at the same bytes, eligible at
    /// `eligible_ms` (a timer's next, shorter hop; no bytes are copied).
    Move {
        /// The timer queue it moves to.
        to_queue: u32,
        /// When it becomes eligible there (the unit's tag code).
        eligible_ms: i64,
        /// Commitlog offset of the staged message's bytes.
        phys_offset: u64,
        /// Their length.
        size: u32,
    },
}

/// One staged message taken out of its staging queue by a [`Produce`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Which staging queues.
    pub source: Source,
    /// The staging queue it sits in.
    pub schedule_queue: u32,
    /// Its offset there. Taken only if this is the queue's next undelivered offset.
    pub staged_offset: u64,
    /// Taken only if the entry's time has reached this: the due time for a copy, the time the staged unit
    /// became eligible for a move.
    pub due_ms: i64,
    /// Copy to the real queue, or move to a shorter timer queue.
    pub action: Action,
}

/// Encoded bytes of a copy [`Delivery`].
pub const DELIVERY_COPY_BYTES: usize = 30;
/// Encoded bytes of a move [`Delivery`] (the largest kind).
pub const DELIVERY_BYTES: usize = 46;

impl Delivery {
    /// Encoded bytes.
    pub fn encoded_len(&self) -> usize {
        match self.action {
            Action::Copy { .. } => DELIVERY_COPY_BYTES,
            Action::Move { .. } => DELIVERY_BYTES,
        }
    }
}

/// A half message's transaction, as the leader read it from the half send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HalfMessage {
    /// The producer group (`PGROUP`) that may end it and is asked in check-backs.
    pub producer_group: String,
    /// The topic a commit makes it visible in.
    pub real_topic: String,
    /// The queue a commit makes it visible in.
    pub real_queue: u32,
    /// The client's message id (`UNIQ_KEY`), which is the transaction id.
    pub transaction_id: String,
    /// The producer's `CHECK_IMMUNITY_TIME_IN_SECONDS`, in ms (0 when it set none): no check-back earlier.
    pub immunity_ms: i64,
}

/// How a pending transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// Committed: message `index` of part `part` is the message for the real queue.
    Commit {
        /// The queue part of the entry holding the committed message.
        part: u32,
        /// Its index among that part's messages.
        index: u32,
    },
    /// Rolled back: nothing becomes visible.
    Rollback,
    /// Never decided within the check-back budget: message `index` of part `part` is its parked copy
    /// (`TRANS_CHECK_MAX_TIME_TOPIC`).
    Discard {
        /// The queue part of the entry holding the parked copy.
        part: u32,
        /// Its index among that part's messages.
        index: u32,
    },
}

/// A record a produce entry carries besides its messages and deliveries: transactions and de-duplication
/// (tag 6). `part`/`index` name a message of the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Message `index` of part `part` carries the client message id whose digest is `key`: it is indexed
    /// only if `key` is not in the de-duplication window; otherwise the original position is reported.
    Dedup {
        /// The queue part.
        part: u32,
        /// The message's index in it.
        index: u32,
        /// Digest of (topic, client message id), computed by the leader.
        key: u128,
    },
    /// Message `index` of part `part` (in the half topic) is a half message: pending once indexed.
    Prepare {
        /// The queue part.
        part: u32,
        /// The message's index in it.
        index: u32,
        /// Its transaction.
        half: HalfMessage,
    },
    /// Ends the pending transaction whose half message is at commitlog offset `half_phys`; a no-op (and
    /// the copy is not indexed) when it is not pending.
    Resolve {
        /// Commitlog offset of the half message.
        half_phys: u64,
        /// Commit, rollback or discard.
        how: Resolution,
    },
    /// The leader made a check-back round for the pending transaction at `half_phys` (counted).
    Checked {
        /// Commitlog offset of the half message.
        half_phys: u64,
    },
}

/// Encoded bytes of a [`Op::Dedup`].
pub const OP_DEDUP_BYTES: usize = 25;

impl Op {
    /// Encoded bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Op::Dedup { .. } => OP_DEDUP_BYTES,
            Op::Prepare { half, .. } => 21 + 6 + half.producer_group.len() + half.real_topic.len() + half.transaction_id.len(),
            Op::Resolve { how: Resolution::Rollback, .. } | Op::Checked { .. } => 9,
            Op::Resolve { .. } => 17,
        }
    }

    /// The (part, index) of the entry's message this op names, if any.
    pub fn message(&self) -> Option<(u32, u32)> {
        match self {
            Op::Dedup { part, index, .. }
            | Op::Prepare { part, index, .. }
            | Op::Resolve { how: Resolution::Commit { part, index } | Resolution::Discard { part, index }, .. } => Some((*part, *index)),
            Op::Resolve { how: Resolution::Rollback, .. } | Op::Checked { .. } => None,
        }
    }

    /// The same op naming part `part + base` (when a batch of requests is merged into one entry).
    pub fn rebased(self, base: u32) -> Op {
        match self {
            Op::Dedup { part, index, key } => Op::Dedup { part: part + base, index, key },
            Op::Prepare { part, index, half } => Op::Prepare { part: part + base, index, half },
            Op::Resolve { half_phys, how: Resolution::Commit { part, index } } => {
                Op::Resolve { half_phys, how: Resolution::Commit { part: part + base, index } }
            }
            Op::Resolve { half_phys, how: Resolution::Discard { part, index } } => {
                Op::Resolve { half_phys, how: Resolution::Discard { part: part + base, index } }
            }
            other => other,
        }
    }
}

/// The de-duplication window's replicated settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DedupSettings {
    /// How long a client message id is remembered (ms); 0 turns de-duplication off.
    pub window_ms: i64,
    /// Most ids remembered; the oldest are forgotten first.
    pub keys_max: u64,
}

/// A produce entry stamped with the leader's store clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Produce {
    /// The leader's store clock when it proposed the entry (ms since the epoch, never below an earlier
    /// entry's): the replicated state's only source of time.
    pub time_ms: i64,
    /// The messages, by topic-queue.
    pub queues: Vec<QueueAppend>,
    /// Which messages deliver scheduled ones (their copies); the rest are plain.
    pub deliveries: Vec<Delivery>,
    /// Transaction and de-duplication records (empty: the entry is encoded as tag 4).
    pub ops: Vec<Op>,
}

/// The application payload of a Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Legacy produce entry (no stamped time), as written before tag 4 existed.
    Produce(Vec<QueueAppend>),
    /// Consumer-group offset commits.
    CommitOffsets(Vec<OffsetCommit>),
    /// Create or update a topic.
    UpsertTopic(TopicConfig),
    /// Messages (and deliveries of scheduled ones) stamped with the leader's clock.
    ProduceAt(Produce),
    /// Replace the delay-level table (ms per level; level n is element n − 1).
    SetDelayLevels(Vec<u64>),
    /// Replace the de-duplication window's settings.
    SetDedupWindow(DedupSettings),
    /// Move the retention floor: the log below this point is deleted ([`crate::retention`]).
    Retain(Retain),
    /// A server-side offset reset: a group's offsets of some queues of a topic, each with a reset marker.
    ResetOffsets(OffsetReset),
    /// End reset markers the group has taken (each only while it still holds the named offset).
    ClearResetMarkers(Vec<ResetMarker>),
    /// Lock or renew queues for an orderly consumer, stamped with the leader's clock ([`crate::locks`]).
    Lock(LockRequest),
    /// Release a client's own queue locks, stamped with the leader's clock.
    Unlock(UnlockRequest),
    /// Create or change a subscription group ([`crate::groups`]).
    UpsertSubscriptionGroup(SubscriptionGroupConfig),
    /// Delete a subscription group, optionally with its committed offsets.
    DeleteSubscriptionGroup(DeleteGroup),
    /// Delete a topic: its config, queue states, offsets, markers, floors and leases ([`crate::groups`]).
    DeleteTopic(String),
}

/// Where one produced message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePosition {
    /// Its queue: the part's, or for a duplicate the queue the original went to.
    pub queue_id: u32,
    /// Offset in its consume queue.
    pub queue_offset: u64,
    /// Absolute commitlog offset of the message bytes.
    pub phys_offset: u64,
    /// Not indexed: the message id was in the de-duplication window, and this is the original's position.
    pub duplicate: bool,
}

/// Outcome of one [`QueueAppend`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueAppendResult {
    /// Stored; one position per indexed or de-duplicated message, in order (a delivery or commit copy that
    /// was not indexed because its staged message or transaction was already taken has none).
    Stored(Vec<MessagePosition>),
    /// Not indexed (e.g. the topic or queue does not exist); the reason.
    Rejected(String),
}

/// What applying an entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResponse {
    /// Blank, membership and metadata entries.
    #[default]
    Done,
    /// Per queue of a produce batch, in order.
    Produced(Vec<QueueAppendResult>),
    /// A command the state refused as a whole (for example an invalid delay-level table); the reason.
    Refused(String),
    /// The queues a [`Command::Lock`] left held by its client (granted or renewed), in request order.
    Locked(Vec<QueueKey>),
}

const TAG_PRODUCE: u8 = 1;
const TAG_COMMIT_OFFSETS: u8 = 2;
const TAG_UPSERT_TOPIC: u8 = 3;
const TAG_PRODUCE_AT: u8 = 4;
const TAG_SET_DELAY_LEVELS: u8 = 5;
const TAG_PRODUCE_OPS: u8 = 6;
const TAG_SET_DEDUP_WINDOW: u8 = 7;
const TAG_RETAIN: u8 = 8;
const TAG_RESET_OFFSETS: u8 = 9;
const TAG_CLEAR_RESET_MARKERS: u8 = 10;
const TAG_LOCK: u8 = 11;
const TAG_UNLOCK: u8 = 12;
const TAG_UPSERT_SUBSCRIPTION_GROUP: u8 = 13;
const TAG_DELETE_SUBSCRIPTION_GROUP: u8 = 14;
const TAG_DELETE_TOPIC: u8 = 15;

/// Encoded bytes a produce entry with ops adds to [`PRODUCE_HEADER_BYTES`]: the op count.
pub const OPS_HEADER_BYTES: usize = 4;

/// Encoded bytes of a produce entry besides its queues and deliveries: tag, time, delivery count, queue
/// count.
pub const PRODUCE_HEADER_BYTES: usize = 17;

/// Longest topic name the codec accepts (RocketMQ's limit is 127 bytes; the codec allows u16).
pub const TOPIC_BYTES_MAX: usize = u16::MAX as usize;

impl QueueAppend {
    /// Bytes this queue's part takes in a produce entry's log body: topic length, topic, queue id, message
    /// count, then per message its tag hash, length and bytes.
    pub fn encoded_len(&self) -> usize {
        produce_queue_len(self.topic.len(), self.messages.iter().map(|m| m.data.len()))
    }
}

/// Bytes a queue part with a topic of `topic_len` bytes and messages of `message_lens` bytes takes in a
/// produce entry ([`QueueAppend::encoded_len`] without building one).
pub fn produce_queue_len(topic_len: usize, message_lens: impl IntoIterator<Item = usize>) -> usize {
    10 + topic_len + message_lens.into_iter().map(|len| 12 + len).sum::<usize>()
}

impl Produce {
    /// Exact encoded body size.
    pub fn encoded_len(&self) -> usize {
        let ops = if self.ops.is_empty() { 0 } else { OPS_HEADER_BYTES + self.ops.iter().map(Op::encoded_len).sum::<usize>() };
        PRODUCE_HEADER_BYTES
            + ops
            + self.deliveries.iter().map(Delivery::encoded_len).sum::<usize>()
            + self.queues.iter().map(QueueAppend::encoded_len).sum::<usize>()
    }
}

impl Command {
    /// Encoded body size: exact for produce entries (the entry limit and byte-bounded batching use it), within
    /// a few bytes for the others.
    pub fn encoded_len(&self) -> usize {
        match self {
            Command::Produce(qs) => 5 + qs.iter().map(QueueAppend::encoded_len).sum::<usize>(),
            Command::ProduceAt(p) => p.encoded_len(),
            Command::CommitOffsets(v) => 1 + v.iter().map(|c| 32 + c.group.len() + c.topic.len()).sum::<usize>(),
            Command::UpsertTopic(t) => 1 + 24 + t.name.len(),
            Command::SetDelayLevels(v) => 9 + 8 * v.len(),
            Command::SetDedupWindow(_) => 17,
            Command::Retain(r) => 1 + RETAIN_HEADER_BYTES + r.queues.iter().map(|(t, _, _)| retain_queue_bytes(t)).sum::<usize>(),
            Command::ResetOffsets(r) => 1 + 24 + r.group.len() + r.topic.len() + 12 * r.offsets.len(),
            Command::ClearResetMarkers(v) => 9 + v.iter().map(|m| 28 + m.group.len() + m.topic.len()).sum::<usize>(),
            Command::Lock(r) => 1 + 48 + r.group.len() + r.client_id.len() + lock_queues_len(&r.queues),
            Command::Unlock(r) => 1 + 32 + r.group.len() + r.client_id.len() + lock_queues_len(&r.queues),
            Command::UpsertSubscriptionGroup(g) => 1 + 8 + g.group_name.len() + 40,
            Command::DeleteSubscriptionGroup(d) => 1 + 8 + d.group.len() + 1,
            Command::DeleteTopic(t) => 1 + 8 + t.len(),
        }
    }

    /// Appends the deterministic log-body encoding to `out`.
    ///
    /// # Errors
    /// [`PayloadError::TooLong`] when a count, length or topic does not fit its field.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), PayloadError> {
        match self {
            Command::Produce(queues) => {
                out.put_u8(TAG_PRODUCE);
                encode_parts(queues, out)?;
            }
            Command::ProduceAt(p) => {
                out.put_u8(if p.ops.is_empty() { TAG_PRODUCE_AT } else { TAG_PRODUCE_OPS });
                out.put_i64_le(p.time_ms);
                out.put_u32_le(len_u32(p.deliveries.len())?);
                for d in &p.deliveries {
                    out.put_u8(match d.source {
                        Source::Level => 0,
                        Source::Timer => 1,
                    });
                    out.put_u32_le(d.schedule_queue);
                    out.put_u64_le(d.staged_offset);
                    out.put_i64_le(d.due_ms);
                    match d.action {
                        Action::Copy { part, index } => {
                            out.put_u8(0);
                            out.put_u32_le(part);
                            out.put_u32_le(index);
                        }
                        Action::Move { to_queue, eligible_ms, phys_offset, size } => {
                            out.put_u8(1);
                            out.put_u32_le(to_queue);
                            out.put_i64_le(eligible_ms);
                            out.put_u64_le(phys_offset);
                            out.put_u32_le(size);
                        }
                    }
                }
                if !p.ops.is_empty() {
                    out.put_u32_le(len_u32(p.ops.len())?);
                    for op in &p.ops {
                        encode_op(op, out)?;
                    }
                }
                encode_parts(&p.queues, out)?;
            }
            Command::CommitOffsets(v) => {
                out.put_u8(TAG_COMMIT_OFFSETS);
                bincode::serialize_into(&mut *out, v).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::UpsertTopic(t) => {
                out.put_u8(TAG_UPSERT_TOPIC);
                bincode::serialize_into(&mut *out, t).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::SetDelayLevels(v) => {
                out.put_u8(TAG_SET_DELAY_LEVELS);
                bincode::serialize_into(&mut *out, v).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::SetDedupWindow(d) => {
                out.put_u8(TAG_SET_DEDUP_WINDOW);
                bincode::serialize_into(&mut *out, d).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::Retain(r) => {
                out.put_u8(TAG_RETAIN);
                out.put_u64_le(r.point.index);
                out.put_u64_le(r.point.pos);
                out.put_i64_le(r.point.decided_ms);
                out.put_u8(r.point.reason);
                out.put_u8(u8::from(r.last));
                out.put_u32_le(len_u32(r.queues.len())?);
                for (topic, qid, first) in &r.queues {
                    out.put_u16_le(u16::try_from(topic.len()).map_err(|_| PayloadError::TooLong("topic"))?);
                    out.put_slice(topic.as_bytes());
                    out.put_u32_le(*qid);
                    out.put_u64_le(*first);
                }
            }
            Command::ResetOffsets(r) => {
                out.put_u8(TAG_RESET_OFFSETS);
                bincode::serialize_into(&mut *out, r).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::ClearResetMarkers(v) => {
                out.put_u8(TAG_CLEAR_RESET_MARKERS);
                bincode::serialize_into(&mut *out, v).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::Lock(r) => {
                out.put_u8(TAG_LOCK);
                bincode::serialize_into(&mut *out, r).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::Unlock(r) => {
                out.put_u8(TAG_UNLOCK);
                bincode::serialize_into(&mut *out, r).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::UpsertSubscriptionGroup(g) => {
                out.put_u8(TAG_UPSERT_SUBSCRIPTION_GROUP);
                bincode::serialize_into(&mut *out, g).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::DeleteSubscriptionGroup(d) => {
                out.put_u8(TAG_DELETE_SUBSCRIPTION_GROUP);
                bincode::serialize_into(&mut *out, d).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
            Command::DeleteTopic(t) => {
                out.put_u8(TAG_DELETE_TOPIC);
                bincode::serialize_into(&mut *out, t).map_err(|e| PayloadError::Bincode(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Decodes a log body. Message bytes are zero-copy slices of `body`; when `body_pos` (the absolute log
    /// position of `body[0]`) is given, each message's `phys_offset` is filled in.
    ///
    /// # Errors
    /// [`PayloadError`] for a body that is truncated, has trailing bytes, an unknown tag or a bad part.
    pub fn decode(body: &Bytes, body_pos: Option<u64>) -> Result<Command, PayloadError> {
        let mut b = &body[..];
        need(&b, 1)?;
        match b.get_u8() {
            TAG_PRODUCE => {
                let queues = decode_parts(body, &mut b, body_pos)?;
                Ok(Command::Produce(queues))
            }
            tag @ (TAG_PRODUCE_AT | TAG_PRODUCE_OPS) => {
                need(&b, 12)?;
                let time_ms = b.get_i64_le();
                let n = b.get_u32_le() as usize;
                need(&b, n.saturating_mul(DELIVERY_COPY_BYTES))?;
                let mut deliveries = Vec::with_capacity(n);
                for _ in 0..n {
                    need(&b, DELIVERY_COPY_BYTES)?;
                    let source = match b.get_u8() {
                        0 => Source::Level,
                        1 => Source::Timer,
                        other => return Err(PayloadError::UnknownTag(other)),
                    };
                    let (schedule_queue, staged_offset, due_ms) = (b.get_u32_le(), b.get_u64_le(), b.get_i64_le());
                    let action = match b.get_u8() {
                        0 => Action::Copy { part: b.get_u32_le(), index: b.get_u32_le() },
                        1 => {
                            need(&b, DELIVERY_BYTES - DELIVERY_COPY_BYTES + 8)?;
                            Action::Move {
                                to_queue: b.get_u32_le(),
                                eligible_ms: b.get_i64_le(),
                                phys_offset: b.get_u64_le(),
                                size: b.get_u32_le(),
                            }
                        }
                        other => return Err(PayloadError::UnknownTag(other)),
                    };
                    deliveries.push(Delivery { source, schedule_queue, staged_offset, due_ms, action });
                }
                let mut ops = Vec::new();
                if tag == TAG_PRODUCE_OPS {
                    need(&b, 4)?;
                    let n = b.get_u32_le() as usize;
                    // Each op takes at least 9 bytes: bound the allocation by what the body can hold.
                    need(&b, n.saturating_mul(9))?;
                    ops.reserve(n);
                    for _ in 0..n {
                        ops.push(decode_op(&mut b)?);
                    }
                }
                let queues = decode_parts(body, &mut b, body_pos)?;
                Ok(Command::ProduceAt(Produce { time_ms, queues, deliveries, ops }))
            }
            TAG_COMMIT_OFFSETS => Ok(Command::CommitOffsets(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            TAG_UPSERT_TOPIC => Ok(Command::UpsertTopic(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            TAG_SET_DELAY_LEVELS => Ok(Command::SetDelayLevels(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            TAG_SET_DEDUP_WINDOW => Ok(Command::SetDedupWindow(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            TAG_RETAIN => {
                need(&b, RETAIN_HEADER_BYTES)?;
                let point = RetainPoint { index: b.get_u64_le(), pos: b.get_u64_le(), decided_ms: b.get_i64_le(), reason: b.get_u8() };
                let last = b.get_u8() != 0;
                let n = b.get_u32_le() as usize;
                // Each queue takes at least 14 bytes: a count the body cannot hold is refused before allocating.
                if n > b.remaining() / 14 {
                    return Err(PayloadError::Truncated);
                }
                let mut queues = Vec::with_capacity(n);
                for _ in 0..n {
                    need(&b, 2)?;
                    let tlen = b.get_u16_le() as usize;
                    need(&b, tlen + 12)?;
                    let topic = std::str::from_utf8(&b[..tlen]).map_err(|_| PayloadError::BadTopic)?.to_string();
                    b.advance(tlen);
                    queues.push((topic, b.get_u32_le(), b.get_u64_le()));
                }
                if b.has_remaining() {
                    return Err(PayloadError::Trailing(b.remaining()));
                }
                Ok(Command::Retain(Retain { point, queues, last }))
            }
            TAG_RESET_OFFSETS => Ok(Command::ResetOffsets(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            TAG_CLEAR_RESET_MARKERS => {
                Ok(Command::ClearResetMarkers(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?))
            }
            TAG_LOCK => Ok(Command::Lock(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            TAG_UNLOCK => Ok(Command::Unlock(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            TAG_UPSERT_SUBSCRIPTION_GROUP => {
                Ok(Command::UpsertSubscriptionGroup(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?))
            }
            TAG_DELETE_SUBSCRIPTION_GROUP => {
                Ok(Command::DeleteSubscriptionGroup(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?))
            }
            TAG_DELETE_TOPIC => Ok(Command::DeleteTopic(bincode::deserialize(b).map_err(|e| PayloadError::Bincode(e.to_string()))?)),
            other => Err(PayloadError::UnknownTag(other)),
        }
    }

    /// The produced messages of a produce entry (either version), else an empty slice.
    pub fn produced(&self) -> &[QueueAppend] {
        match self {
            Command::Produce(q) => q,
            Command::ProduceAt(p) => &p.queues,
            _ => &[],
        }
    }
}

/// Bytes a list of queues takes in a lock or unlock entry (bincode: a length, then per queue two strings
/// with their lengths and the queue id).
fn lock_queues_len(queues: &[QueueKey]) -> usize {
    8 + queues.iter().map(|q| 20 + q.topic.len() + q.broker_name.len()).sum::<usize>()
}

fn encode_op(op: &Op, out: &mut Vec<u8>) -> Result<(), PayloadError> {
    match op {
        Op::Dedup { part, index, key } => {
            out.put_u8(0);
            out.put_u32_le(*part);
            out.put_u32_le(*index);
            out.put_u128_le(*key);
        }
        Op::Prepare { part, index, half } => {
            out.put_u8(1);
            out.put_u32_le(*part);
            out.put_u32_le(*index);
            out.put_u32_le(half.real_queue);
            out.put_i64_le(half.immunity_ms);
            for s in [&half.producer_group, &half.real_topic, &half.transaction_id] {
                let len = u16::try_from(s.len()).map_err(|_| PayloadError::TooLong("transaction field"))?;
                out.put_u16_le(len);
                out.put_slice(s.as_bytes());
            }
        }
        Op::Resolve { half_phys, how } => {
            let (kind, copy) = match how {
                Resolution::Commit { part, index } => (2, Some((part, index))),
                Resolution::Rollback => (3, None),
                Resolution::Discard { part, index } => (4, Some((part, index))),
            };
            out.put_u8(kind);
            out.put_u64_le(*half_phys);
            if let Some((part, index)) = copy {
                out.put_u32_le(*part);
                out.put_u32_le(*index);
            }
        }
        Op::Checked { half_phys } => {
            out.put_u8(5);
            out.put_u64_le(*half_phys);
        }
    }
    Ok(())
}

fn decode_op(b: &mut &[u8]) -> Result<Op, PayloadError> {
    need(b, 9)?;
    let kind = b.get_u8();
    Ok(match kind {
        0 => {
            need(b, OP_DEDUP_BYTES - 1)?;
            Op::Dedup { part: b.get_u32_le(), index: b.get_u32_le(), key: b.get_u128_le() }
        }
        1 => {
            need(b, 20)?;
            let (part, index, real_queue, immunity_ms) = (b.get_u32_le(), b.get_u32_le(), b.get_u32_le(), b.get_i64_le());
            let mut text = || -> Result<String, PayloadError> {
                need(b, 2)?;
                let len = b.get_u16_le() as usize;
                need(b, len)?;
                let s = std::str::from_utf8(&b[..len]).map_err(|_| PayloadError::BadTopic)?.to_string();
                b.advance(len);
                Ok(s)
            };
            let (producer_group, real_topic, transaction_id) = (text()?, text()?, text()?);
            Op::Prepare { part, index, half: HalfMessage { producer_group, real_topic, real_queue, transaction_id, immunity_ms } }
        }
        2 | 4 => {
            need(b, 16)?;
            let (half_phys, part, index) = (b.get_u64_le(), b.get_u32_le(), b.get_u32_le());
            let how = if kind == 2 { Resolution::Commit { part, index } } else { Resolution::Discard { part, index } };
            Op::Resolve { half_phys, how }
        }
        3 => Op::Resolve { half_phys: b.get_u64_le(), how: Resolution::Rollback },
        5 => Op::Checked { half_phys: b.get_u64_le() },
        other => return Err(PayloadError::UnknownTag(other)),
    })
}

fn need(b: &&[u8], n: usize) -> Result<(), PayloadError> {
    if b.remaining() < n {
        Err(PayloadError::Truncated)
    } else {
        Ok(())
    }
}

fn encode_parts(queues: &[QueueAppend], out: &mut Vec<u8>) -> Result<(), PayloadError> {
    out.put_u32_le(len_u32(queues.len())?);
    for q in queues {
        if q.topic.len() > TOPIC_BYTES_MAX {
            return Err(PayloadError::TooLong("topic"));
        }
        out.put_u16_le(q.topic.len() as u16);
        out.put_slice(q.topic.as_bytes());
        out.put_u32_le(q.queue_id);
        out.put_u32_le(len_u32(q.messages.len())?);
        for m in &q.messages {
            out.put_i64_le(m.tags_code);
            out.put_u32_le(len_u32(m.data.len())?);
            out.put_slice(&m.data);
        }
    }
    Ok(())
}

/// Decodes the queue parts that end a produce body; `b` is the unread rest of `body`.
fn decode_parts(body: &Bytes, b: &mut &[u8], body_pos: Option<u64>) -> Result<Vec<QueueAppend>, PayloadError> {
    need(b, 4)?;
    let nq = b.get_u32_le() as usize;
    // Each queue needs at least 10 bytes: bound the allocation by what the body can hold.
    let mut queues = Vec::with_capacity(nq.min(b.remaining() / 10));
    for _ in 0..nq {
        need(b, 2)?;
        let tl = b.get_u16_le() as usize;
        need(b, tl + 8)?;
        let topic = std::str::from_utf8(&b[..tl]).map_err(|_| PayloadError::BadTopic)?.to_string();
        b.advance(tl);
        let queue_id = b.get_u32_le();
        let nm = b.get_u32_le() as usize;
        let mut messages = Vec::with_capacity(nm.min(b.remaining() / 12));
        for _ in 0..nm {
            need(b, 12)?;
            let tags_code = b.get_i64_le();
            let len = b.get_u32_le() as usize;
            need(b, len)?;
            let at = body.len() - b.remaining();
            messages.push(Message { tags_code, data: body.slice(at..at + len), phys_offset: body_pos.map(|p| p + at as u64) });
            b.advance(len);
        }
        queues.push(QueueAppend { topic, queue_id, messages });
    }
    if b.has_remaining() {
        return Err(PayloadError::Trailing(b.remaining()));
    }
    Ok(queues)
}

fn len_u32(n: usize) -> Result<u32, PayloadError> {
    u32::try_from(n).map_err(|_| PayloadError::TooLong("count or length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part(bodies: &[&[u8]]) -> QueueAppend {
        QueueAppend {
            topic: "T".into(),
            queue_id: 3,
            messages: bodies.iter().map(|b| Message { tags_code: 7, data: Bytes::copy_from_slice(b), phys_offset: None }).collect(),
        }
    }

    #[test]
    fn a_retain_entry_round_trips_and_refuses_trailing_or_missing_bytes() {
        let point = RetainPoint { index: 0x0102, pos: 0x0304 << 20, decided_ms: -5, reason: 2 };
        let r = Retain { point, queues: vec![("T".into(), 3, 77), ("%RETRY%g".into(), 0, 5)], last: true };
        let mut out = Vec::new();
        Command::Retain(r.clone()).encode(&mut out).unwrap();
        assert_eq!(out.len(), Command::Retain(r.clone()).encoded_len());
        assert_eq!(out[0], 8);
        assert_eq!(&out[1..9], &0x0102u64.to_le_bytes());
        assert_eq!(Command::decode(&Bytes::from(out.clone()), None).unwrap(), Command::Retain(r));
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(Command::decode(&Bytes::from(longer), None), Err(PayloadError::Trailing(1)));
        out.truncate(out.len() - 1);
        assert_eq!(Command::decode(&Bytes::from(out.clone()), None), Err(PayloadError::Truncated));
        // A queue count the body cannot hold is refused without allocating for it.
        out.truncate(1 + RETAIN_HEADER_BYTES);
        out[27..31].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Command::decode(&Bytes::from(out), None), Err(PayloadError::Truncated));
    }

    #[test]
    fn legacy_produce_round_trips_with_physical_offsets() {
        let cmd = Command::Produce(vec![part(&[b"aaaa", b"bb"])]);
        let mut out = vec![0xEE; 5]; // pretend the body starts 5 bytes into a buffer
        cmd.encode(&mut out).unwrap();
        let body = Bytes::from(out).slice(5..);
        let Command::Produce(qs) = Command::decode(&body, Some(1000)).unwrap() else { panic!() };
        let m = &qs[0].messages;
        assert_eq!(&m[0].data[..], b"aaaa");
        assert_eq!(&m[1].data[..], b"bb");
        // tag 1 + nq 4 + tlen 2 + "T" 1 + qid 4 + nm 4 + tags 8 + len 4 = 28
        assert_eq!(m[0].phys_offset, Some(1028));
        assert_eq!(m[1].phys_offset, Some(1028 + 4 + 12));
        assert_eq!(&body[(m[1].phys_offset.unwrap() - 1000) as usize..][..2], b"bb");
    }

    /// The bytes of a tag-1 entry as the previous version wrote them (hand-assembled from its codec), so the
    /// legacy decoder is pinned to the layout on disk, not to this crate's encoder.
    #[test]
    fn decodes_a_legacy_entry_written_by_the_previous_version() {
        let mut body = vec![1u8];
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(b"Tq");
        body.extend_from_slice(&5u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&(-9i64).to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"xyz");
        let cmd = Command::decode(&Bytes::from(body), Some(100)).unwrap();
        let Command::Produce(qs) = cmd else { panic!("{cmd:?}") };
        assert_eq!((qs[0].topic.as_str(), qs[0].queue_id, qs[0].messages[0].tags_code), ("Tq", 5, -9));
        assert_eq!(qs[0].messages[0].phys_offset, Some(100 + 29));
    }

    #[test]
    fn stamped_produce_round_trips_and_its_length_is_exact() {
        let cmd = Command::ProduceAt(Produce {
            time_ms: 1_700_000_000_123,
            queues: vec![part(&[b"hello"]), part(&[])],
            deliveries: vec![
                Delivery {
                    source: Source::Level,
                    schedule_queue: 2,
                    staged_offset: 9,
                    due_ms: 5,
                    action: Action::Copy { part: 0, index: 0 },
                },
                Delivery {
                    source: Source::Timer,
                    schedule_queue: 7,
                    staged_offset: 1,
                    due_ms: -5,
                    action: Action::Move { to_queue: 3, eligible_ms: 99, phys_offset: 1 << 40, size: 77 },
                },
            ],
            ops: vec![],
        });
        let mut out = Vec::new();
        cmd.encode(&mut out).unwrap();
        assert_eq!(out.len(), cmd.encoded_len());
        let back = Command::decode(&Bytes::from(out), Some(0)).unwrap();
        let Command::ProduceAt(p) = &back else { panic!() };
        // tag 1 + time 8 + nd 4 + copy 30 + move 46 + nq 4 + tlen 2 + "T" 1 + qid 4 + nm 4 + tags 8 + len 4 = 116
        assert_eq!(p.queues[0].messages[0].phys_offset, Some(116));
        let mut expect = cmd.clone();
        if let Command::ProduceAt(p) = &mut expect {
            p.queues[0].messages[0].phys_offset = Some(116);
        }
        assert_eq!(back, expect);
    }

    #[test]
    fn metadata_commands_round_trip() {
        for cmd in [
            Command::UpsertTopic(TopicConfig { name: "x".into(), read_queues: 4, write_queues: 4, perm: 6 }),
            Command::CommitOffsets(vec![OffsetCommit { group: "g".into(), topic: "t".into(), queue_id: 1, offset: 9 }]),
            Command::SetDelayLevels(vec![1000, 5000]),
            Command::ResetOffsets(OffsetReset { group: "g".into(), topic: "t".into(), offsets: vec![(0, 5), (3, 0)] }),
            Command::ClearResetMarkers(vec![ResetMarker { group: "g".into(), topic: "t".into(), queue_id: 3, offset: 0 }]),
            Command::Lock(LockRequest {
                group: "g".into(),
                client_id: "10.0.0.1@1".into(),
                queues: vec![QueueKey { topic: "t".into(), broker_name: "broker-a".into(), queue_id: 2 }],
                stamp_ms: 1_700_000_000_000,
                ttl_ms: 60_000,
                locks_max: 100_000,
            }),
            Command::Unlock(UnlockRequest { group: "g".into(), client_id: "c".into(), queues: vec![], stamp_ms: -1 }),
            Command::UpsertSubscriptionGroup(SubscriptionGroupConfig { retry_max_times: -1, ..SubscriptionGroupConfig::new("grp") }),
            Command::DeleteSubscriptionGroup(DeleteGroup { group: "grp".into(), clean_offset: true }),
            Command::DeleteTopic("T".into()),
        ] {
            let mut out = Vec::new();
            cmd.encode(&mut out).unwrap();
            assert!(out.len() <= cmd.encoded_len() + 16);
            assert!(out.len() + 16 >= cmd.encoded_len(), "{cmd:?}: {} vs {}", out.len(), cmd.encoded_len());
            assert_eq!(Command::decode(&Bytes::from(out), None).unwrap(), cmd);
        }
    }

    fn all_ops() -> Vec<Op> {
        vec![
            Op::Dedup { part: 0, index: 0, key: u128::MAX - 5 },
            Op::Prepare {
                part: 1,
                index: 0,
                half: HalfMessage {
                    producer_group: "PG".into(),
                    real_topic: "Real".into(),
                    real_queue: 3,
                    transaction_id: "7F0000010000".into(),
                    immunity_ms: 60_000,
                },
            },
            Op::Resolve { half_phys: 1 << 33, how: Resolution::Commit { part: 0, index: 0 } },
            Op::Resolve { half_phys: 9, how: Resolution::Rollback },
            Op::Resolve { half_phys: 10, how: Resolution::Discard { part: 1, index: 0 } },
            Op::Checked { half_phys: 11 },
        ]
    }

    #[test]
    fn ops_round_trip_as_tag_6_and_an_entry_without_ops_stays_tag_4() {
        let mut p = Produce { time_ms: 77, queues: vec![part(&[b"abc"]), part(&[b"de"])], deliveries: vec![], ops: all_ops() };
        let cmd = Command::ProduceAt(p.clone());
        let mut out = Vec::new();
        cmd.encode(&mut out).unwrap();
        assert_eq!(out[0], TAG_PRODUCE_OPS);
        assert_eq!(out.len(), cmd.encoded_len());
        assert_eq!(Command::decode(&Bytes::from(out), None).unwrap(), cmd);
        p.ops.clear();
        let mut out = Vec::new();
        Command::ProduceAt(p).encode(&mut out).unwrap();
        assert_eq!(out[0], TAG_PRODUCE_AT, "no ops: the previous version's layout");
        let set = Command::SetDedupWindow(DedupSettings { window_ms: 120_000, keys_max: 1 << 20 });
        let mut out = Vec::new();
        set.encode(&mut out).unwrap();
        assert_eq!(Command::decode(&Bytes::from(out), None).unwrap(), set);
    }

    /// The new record kinds take new tags; the bytes of each are pinned (bincode: strings as a u64 length
    /// and bytes, bools as one byte), so a later version still reads what this one wrote.
    #[test]
    fn group_and_topic_deletion_entries_have_their_own_tags_and_pinned_bytes() {
        let mut out = Vec::new();
        Command::DeleteTopic("Tq".into()).encode(&mut out).unwrap();
        assert_eq!(out, [15, 2, 0, 0, 0, 0, 0, 0, 0, b'T', b'q']);
        let mut out = Vec::new();
        Command::DeleteSubscriptionGroup(DeleteGroup { group: "g".into(), clean_offset: true }).encode(&mut out).unwrap();
        assert_eq!(out, [14, 1, 0, 0, 0, 0, 0, 0, 0, b'g', 1]);
        let g = SubscriptionGroupConfig::new("g");
        let mut out = Vec::new();
        Command::UpsertSubscriptionGroup(g.clone()).encode(&mut out).unwrap();
        assert_eq!(out[0], 13);
        assert_eq!(out.len(), 1 + 8 + 1 + 3 + 2 * 4 + 2 * 8 + 1 + 4 + 4, "name, 3 bools, 2 i32, 2 i64, bool, 2 i32");
        assert_eq!(Command::decode(&Bytes::from(out.clone()), None).unwrap(), Command::UpsertSubscriptionGroup(g));
        // Cut anywhere, it is an error, never a panic or a silent read.
        for cut in 1..out.len() {
            assert!(Command::decode(&Bytes::copy_from_slice(&out[..cut]), None).is_err(), "cut at {cut}");
        }
        // A tag this version does not know stays an error (an older binary reading a newer log).
        assert_eq!(Command::decode(&Bytes::from_static(&[16, 0]), None), Err(PayloadError::UnknownTag(16)));
    }

    #[test]
    fn a_truncated_or_unknown_op_is_an_error() {
        let cmd = Command::ProduceAt(Produce { time_ms: 1, queues: vec![], deliveries: vec![], ops: all_ops() });
        let mut out = Vec::new();
        cmd.encode(&mut out).unwrap();
        for cut in 1..out.len() {
            assert!(Command::decode(&Bytes::copy_from_slice(&out[..cut]), None).is_err(), "cut at {cut}");
        }
        // The first op's kind byte sits after tag, time, delivery count and op count.
        out[17] = 99;
        assert_eq!(Command::decode(&Bytes::from(out), None), Err(PayloadError::UnknownTag(99)));
    }

    #[test]
    fn a_delivery_count_beyond_the_body_is_truncation_not_an_allocation() {
        let mut body = vec![TAG_PRODUCE_AT];
        body.extend_from_slice(&0i64.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Command::decode(&Bytes::from(body), None), Err(PayloadError::Truncated));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Command::decode(&Bytes::from(bytes), Some(0));
        }

        #[test]
        fn produce_round_trips(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..10),
            time_ms in any::<i64>(),
            nd in 0usize..4,
        ) {
            let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
            let deliveries = (0..nd)
                .map(|i| Delivery {
                    source: if i % 2 == 0 { Source::Level } else { Source::Timer },
                    schedule_queue: i as u32,
                    staged_offset: 1,
                    due_ms: -1,
                    action: if i % 2 == 0 { Action::Copy { part: 0, index: 0 } } else { Action::Move { to_queue: 1, eligible_ms: 2, phys_offset: 3, size: 4 } },
                })
                .collect();
            let cmd = Command::ProduceAt(Produce { time_ms, queues: vec![part(&refs)], deliveries, ops: vec![] });
            let mut out = Vec::new();
            cmd.encode(&mut out).unwrap();
            prop_assert_eq!(out.len(), cmd.encoded_len());
            prop_assert_eq!(Command::decode(&Bytes::from(out), None).unwrap(), cmd);
        }
    }
}
