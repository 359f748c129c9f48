//! The broker's message store: RocketMQ's `MessageStore` semantics over a Raft group member.
//!
//! Puts go through [`RaftNode::submit_produce`] (batched into Raft entries, acknowledged after quorum fsync
//! and apply). Each put is stamped with its STORETIMESTAMP under the store clock's lock, in the order it
//! enters the log, from a clock that never goes back — also not across leaders: a new leader starts above
//! the newest committed store timestamp. Store timestamps are therefore non-decreasing along the log and
//! along every queue, which SEARCH_OFFSET_BY_TIMESTAMP's binary search needs (RocketMQ likewise stamps
//! under its put lock). Gets read the local consume queue — which only ever holds committed entries, on leader and
//! followers alike — and slice message bytes zero-copy out of the mapped commitlog. Statuses and
//! `nextBeginOffset` rules follow RocketMQ's `DefaultMessageStore.getMessage`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use raftmq_raft::consume_queue::{ConsumeQueue, CqUnit};
use raftmq_raft::error::ReadError;
use raftmq_raft::node::{RaftNode, Role, WriteError};
use raftmq_raft::types::{Command, Message, MessagePosition, OffsetCommit, Op, Produce, QueueAppend, QueueAppendResult, TopicConfig};

use raftmq_remoting::message::{
    sys_flag, BORN_HOST_POSITION, MESSAGE_MAGIC_CODE_V1, PHYSICAL_OFFSET_POSITION as PHYSICAL_OFFSET_AT,
    QUEUE_OFFSET_POSITION as QUEUE_OFFSET_AT, SYS_FLAG_POSITION,
};

/// Why a get found no message (RocketMQ's `GetMessageStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    /// Messages returned.
    Found,
    /// Units were scanned but none matched the filter.
    NoMatchedMessage,
    /// The queue holds no message at all.
    NoMessageInQueue,
    /// The offset is below the queue's first retained offset.
    OffsetTooSmall,
    /// The offset equals the queue's max offset: nothing new yet.
    OffsetOverflowOne,
    /// The offset is beyond the max offset.
    OffsetOverflowBadly,
}

/// One message of a get: its queue offset and its bytes, already patched with the queue offset and
/// physical offset (stored with zeros, since both are assigned when the entry commits).
#[derive(Debug, Clone)]
pub struct GotMessage {
    /// Offset in the consume queue.
    pub queue_offset: u64,
    /// Commitlog offset.
    pub phys_offset: u64,
    /// Store timestamp (ms).
    pub store_timestamp: i64,
    /// The message bytes in three zero-copy parts: before the offsets, the 16 patched offset bytes, after.
    pub parts: [Bytes; 3],
}

impl GotMessage {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// True for an empty message (never produced by the store).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message as one contiguous buffer (copies).
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.len());
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        Bytes::from(v)
    }
}

/// A test on a stored message's bytes (a SQL92 selector over its properties), for [`MessageStore::get_filtered`].
pub type MessageFilter<'a> = dyn Fn(&[u8]) -> bool + Sync + 'a;

/// Result of a get.
#[derive(Debug, Clone)]
pub struct GetResult {
    /// Status.
    pub status: GetStatus,
    /// Where the consumer should continue.
    pub next_begin_offset: u64,
    /// Queue min offset.
    pub min_offset: u64,
    /// Queue max offset (next offset to be assigned).
    pub max_offset: u64,
    /// Messages found.
    pub messages: Vec<GotMessage>,
}

/// Put outcome: per message, where it landed (for a de-duplicated one: where the original landed).
pub type PutResult = Result<Vec<MessagePosition>, PutError>;

/// Why a put was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// Raft refused or lost the write.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The state machine rejected it (topic or queue missing at apply time).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Message store over one Raft group member. Clones share the store clock.
#[derive(Clone)]
pub struct MessageStore {
    node: Arc<RaftNode>,
    clock: Arc<tokio::sync::Mutex<StoreClock>>,
    /// A new leader's first stamp more than this past the last stamped time is logged as a warning.
    clock_jump_warn_ms: i64,
    clock_jumps: Arc<std::sync::atomic::AtomicU64>,
}

/// The leader's STORETIMESTAMP source: `max(wall clock, last stamp)`, floored once per term at the newest
/// store timestamp the group committed before this node led.
#[derive(Debug, Default)]
struct StoreClock {
    /// The term `last` was floored in; 0 = never.
    term: u64,
    last: i64,
}

pub(crate) fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn store_timestamp_at(msg: &[u8]) -> Option<usize> {
    let sysflag = i32::from_be_bytes(msg.get(SYS_FLAG_POSITION..SYS_FLAG_POSITION + 4)?.try_into().ok()?);
    let born_host_len = if sysflag & sys_flag::BORNHOST_V6 != 0 { 20 } else { 8 };
    let at = BORN_HOST_POSITION + born_host_len;
    (msg.len() >= at + 8).then_some(at)
}

/// Reads STORETIMESTAMP from a stored message (its position depends on the born-host address family).
pub fn store_timestamp_of(msg: &[u8]) -> Option<i64> {
    let at = store_timestamp_at(msg)?;
    Some(i64::from_be_bytes(msg[at..at + 8].try_into().ok()?))
}

/// `msg` with its STORETIMESTAMP set to `ts` (in place when `msg` is not shared). A message too short to
/// hold the field is returned unchanged (the encoder never makes one).
pub(crate) fn with_store_timestamp(msg: Bytes, ts: i64) -> Bytes {
    let Some(at) = store_timestamp_at(&msg) else { return msg };
    let mut m = msg.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    m[at..at + 8].copy_from_slice(&ts.to_be_bytes());
    m.freeze()
}

impl MessageStore {
    /// A store over `node`.
    pub fn new(node: Arc<RaftNode>, clock_jump_warn_ms: i64) -> Self {
        MessageStore { node, clock: Arc::default(), clock_jump_warn_ms, clock_jumps: Arc::default() }
    }

    /// The Raft member.
    pub fn node(&self) -> &Arc<RaftNode> {
        &self.node
    }

    /// Stores encoded messages into one topic-queue atomically (one Raft entry); all or nothing. Their
    /// STORETIMESTAMP is overwritten by the store clock (see the module docs).
    pub async fn put(&self, topic: &str, queue_id: u32, messages: Vec<(i64, Bytes)>) -> PutResult {
        self.put_part(topic, messages, Vec::new(), |_| (queue_id, None)).await
    }

    /// [`MessageStore::put`] with transaction or de-duplication ops naming its messages (part 0).
    pub async fn put_ops(&self, topic: &str, queue_id: u32, messages: Vec<(i64, Bytes)>, ops: Vec<Op>) -> PutResult {
        self.put_part(topic, messages, ops, |_| (queue_id, None)).await
    }

    /// [`MessageStore::put_ops`] of messages staged for delayed delivery: each unit's tag code is the due
    /// time, the store timestamp plus `delay_ms` (RocketMQ's layout of `SCHEDULE_TOPIC_XXXX`).
    pub async fn put_delayed(&self, topic: &str, queue_id: u32, messages: Vec<Bytes>, delay_ms: u64, ops: Vec<Op>) -> PutResult {
        let delay = i64::try_from(delay_ms).unwrap_or(i64::MAX);
        self.put_part(topic, messages.into_iter().map(|m| (0, m)).collect(), ops, |ts| (queue_id, Some(ts.saturating_add(delay)))).await
    }

    /// Stages timer messages due at `due_ms` (store-clock ms) in the timer line for the time left at the
    /// entry's stamp; each unit's tag code is when it becomes eligible there (see `raftmq_state::schedule`).
    /// The positions returned are in that line.
    pub async fn put_timer(&self, topic: &str, messages: Vec<Bytes>, due_ms: i64, ops: Vec<Op>) -> PutResult {
        self.put_part(topic, messages.into_iter().map(|m| (0, m)).collect(), ops, |ts| {
            let line = raftmq_raft::types::timer_level_for(due_ms - ts);
            (line, Some(ts.saturating_add(raftmq_raft::types::timer_level_delay_ms(line))))
        })
        .await
    }

    /// Proposes an entry of ops alone (a rollback, check-back rounds), stamped like every write.
    pub async fn put_ops_only(&self, ops: Vec<Op>) -> Result<(), PutError> {
        self.put_stamped(|_| Produce { ops, ..Produce::default() }).await.map(|_| ())
    }

    /// Stores `messages` as one queue part of one entry, with `ops` naming them as part 0. `place`
    /// decides, from the entry's stamp, the queue and, when `Some`, the tag code of every unit (staging: a
    /// due or eligibility time).
    async fn put_part(
        &self,
        topic: &str,
        messages: Vec<(i64, Bytes)>,
        ops: Vec<Op>,
        place: impl FnOnce(i64) -> (u32, Option<i64>),
    ) -> PutResult {
        let mut results = self
            .put_stamped(|ts| {
                let (queue_id, tags) = place(ts);
                let q = QueueAppend {
                    topic: topic.to_string(),
                    queue_id,
                    messages: messages
                        .into_iter()
                        .map(|(tags_code, data)| Message {
                            tags_code: tags.unwrap_or(tags_code),
                            data: with_store_timestamp(data, ts),
                            phys_offset: None,
                        })
                        .collect(),
                };
                Produce { queues: vec![q], ops, ..Produce::default() }
            })
            .await?;
        match results.pop() {
            Some(QueueAppendResult::Stored(p)) => Ok(p),
            Some(QueueAppendResult::Rejected(why)) => Err(PutError::Rejected(why)),
            None => Err(PutError::Rejected("empty result".into())),
        }
    }

    /// Proposes what `build` makes from the store clock's next stamp (ms; its `time_ms` is ignored): queue
    /// parts whose messages carry that STORETIMESTAMP, deliveries of scheduled messages among them, and
    /// transaction and de-duplication ops. The entry carries the stamp
    /// as the replicated state's time. Stamped and submitted under the clock's lock, so log order is stamp
    /// order.
    pub async fn put_stamped(&self, build: impl FnOnce(i64) -> Produce) -> Result<Vec<QueueAppendResult>, PutError> {
        let ticket = {
            let mut clock = self.clock.lock().await;
            let ts = self.next_stamp(&mut clock);
            let p = build(ts);
            // Submitted under the lock: log order is stamp order.
            self.node.submit_produce_at(ts, p.queues, p.deliveries, p.ops).await?
        };
        Ok(ticket.await?)
    }

    /// Proposes the command `build` makes from the store clock's next stamp as its own entry (queue locks)
    /// and waits until it is applied. Unlike [`MessageStore::put_stamped`] the entry is submitted after the
    /// clock's lock is released (a lock entry does not hold up produce batching): it may land in the log
    /// after a produce entry stamped later, which is harmless because apply never moves the replicated
    /// clock back and decides at the clock, not at the entry's own stamp.
    pub async fn write_stamped(&self, build: impl FnOnce(i64) -> Command) -> Result<raftmq_raft::types::CommandResponse, WriteError> {
        let ts = {
            let mut clock = self.clock.lock().await;
            self.next_stamp(&mut clock)
        };
        self.node.write(build(ts)).await
    }

    /// The store clock's next stamp: the wall clock, never below the last stamp; a new ready leader first
    /// floors it at the newest committed time.
    fn next_stamp(&self, clock: &mut StoreClock) -> i64 {
        {
            let (term, ready_leader) = {
                let rx = self.node.role();
                let r = rx.borrow();
                (r.term, r.role == Role::Leader && r.ready)
            };
            if term != clock.term && ready_leader {
                // Ready: every entry of earlier terms that will ever commit is applied, so the replicated
                // clock (and, for entries older than it, the newest queue tails) hold the newest committed
                // store timestamp.
                let replicated = self.replicated_now_ms();
                let floor = replicated.max(self.newest_store_timestamp());
                let wall = wall_ms();
                if replicated > 0 && wall - replicated > self.clock_jump_warn_ms {
                    self.clock_jumps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        term,
                        last_stamp_ms = replicated,
                        wall_ms = wall,
                        jump_ms = wall - replicated,
                        warn_ms = self.clock_jump_warn_ms,
                        "this new leader's clock is far ahead of the last stamped time: scheduled messages due in between \
                         are delivered now (a clock that is wrong delivers them early)"
                    );
                }
                clock.last = clock.last.max(floor);
                clock.term = term;
            }
            let ts = wall_ms().max(clock.last);
            clock.last = ts;
            ts
        }
    }

    /// Where the first sends with de-duplication keys `keys` landed, when the window remembers every one
    /// of them (one lock; stops at the first unknown key, the common case of a new message).
    pub fn dedup_all_seen(&self, keys: impl Iterator<Item = u128>) -> Option<Vec<MessagePosition>> {
        self.node.state().with_metadata(|m| keys.map(|k| m.state.dedup.get(k).map(|s| s.position())).collect())
    }

    /// The replicated clock: the newest time stamped into an applied entry (ms; 0 before the first).
    pub fn replicated_now_ms(&self) -> i64 {
        self.node.state().with_metadata(|m| m.state.clock.now_ms)
    }

    /// New leaders whose first stamp jumped more than `clockJumpWarnMs` past the last stamped time.
    pub fn clock_jumps(&self) -> u64 {
        self.clock_jumps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The largest store timestamp among the last messages of all queues: O(queues), once per term.
    fn newest_store_timestamp(&self) -> i64 {
        let mut newest = 0;
        for t in self.topics() {
            for qid in 0..t.read_queues.max(t.write_queues) {
                let Some(q) = self.queue(&t.name, qid) else { continue };
                let max = q.max_offset();
                if max == 0 || max <= q.min_offset() {
                    continue;
                }
                let ts = q
                    .get(max - 1)
                    .and_then(|u| self.node.commitlog().read_at(u.phys_offset, u.size as usize))
                    .and_then(|d| store_timestamp_of(&d));
                newest = newest.max(ts.unwrap_or(0));
            }
        }
        newest
    }

    /// Creates or updates a topic through the log.
    pub async fn upsert_topic(&self, topic: TopicConfig) -> Result<(), WriteError> {
        self.node.write(Command::UpsertTopic(topic)).await.map(|_| ())
    }

    /// Commits consumer offsets through the log.
    pub async fn commit_offsets(&self, commits: Vec<OffsetCommit>) -> Result<(), WriteError> {
        self.node.write(Command::CommitOffsets(commits)).await.map(|_| ())
    }

    /// The replicated configuration of a topic.
    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.node.state().with_metadata(|m| m.state.topics.get(name).cloned())
    }

    /// Number of topics.
    pub fn topic_count(&self) -> usize {
        self.node.state().with_metadata(|m| m.state.topics.len())
    }

    /// Number of consumer groups with committed offsets, and whether `group` is one of them.
    pub fn offset_groups(&self, group: &str) -> (usize, bool) {
        self.node.state().with_metadata(|m| (m.state.consumer_offsets.len(), m.state.consumer_offsets.contains_key(group)))
    }

    /// Number of subscription groups with a config, and whether `group` is one of them.
    pub fn subscription_group_room(&self, group: &str) -> (usize, bool) {
        self.node.state().with_metadata(|m| (m.state.subscription_groups.len(), m.state.subscription_groups.contains_key(group)))
    }

    /// All topics.
    pub fn topics(&self) -> Vec<TopicConfig> {
        self.node.state().with_metadata(|m| m.state.topics.values().cloned().collect())
    }

    /// A consume queue, if it exists.
    pub fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.node.state().queue(topic, queue_id)
    }

    /// Max offset (next to be assigned) of a queue; 0 if it has none yet.
    pub fn max_offset(&self, topic: &str, queue_id: u32) -> u64 {
        self.queue(topic, queue_id).map(|q| q.max_offset()).unwrap_or(0)
    }

    /// Min offset of a queue; 0 if it has none yet.
    pub fn min_offset(&self, topic: &str, queue_id: u32) -> u64 {
        self.queue(topic, queue_id).map(|q| q.min_offset()).unwrap_or(0)
    }

    /// A group's committed offset on a queue.
    pub fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.node.state().consumer_offset(group, topic, queue_id)
    }

    fn message_at(&self, unit: &CqUnit, queue_offset: u64) -> Option<GotMessage> {
        let data = self.node.commitlog().read_at(unit.phys_offset, unit.size as usize)?;
        Self::got_message(unit, queue_offset, data)
    }

    fn got_message(unit: &CqUnit, queue_offset: u64, data: Bytes) -> Option<GotMessage> {
        if data.len() < PHYSICAL_OFFSET_AT + 8 {
            return None;
        }
        let mut patched = Vec::with_capacity(16);
        patched.extend_from_slice(&(queue_offset as i64).to_be_bytes());
        patched.extend_from_slice(&(unit.phys_offset as i64).to_be_bytes());
        let store_timestamp = store_timestamp_of(&data).unwrap_or(0);
        Some(GotMessage {
            queue_offset,
            phys_offset: unit.phys_offset,
            store_timestamp,
            parts: [data.slice(..QUEUE_OFFSET_AT), Bytes::from(patched), data.slice(PHYSICAL_OFFSET_AT + 8..)],
        })
    }

    /// Reads up to `max_nums` messages (and about `max_bytes`) from `offset`, keeping those `filter`
    /// accepts by tag hash. Never blocks.
    pub fn get(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_nums: usize,
        max_bytes: usize,
        filter: impl Fn(i64) -> bool,
    ) -> GetResult {
        self.get_filtered(topic, queue_id, offset, max_nums, max_bytes, filter, None)
    }

    /// [`MessageStore::get`] with a second filter on the stored message bytes (a SQL92 selector over its
    /// properties) for the units the tag-hash filter passes, reading and testing at most `scan_max` of them:
    /// the pull then ends with `nextBeginOffset` past the last unit examined, matched or not.
    #[allow(clippy::too_many_arguments)]
    pub fn get_filtered(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_nums: usize,
        max_bytes: usize,
        filter: impl Fn(i64) -> bool,
        by_message: Option<(&MessageFilter<'_>, usize)>,
    ) -> GetResult {
        let Some(q) = self.queue(topic, queue_id) else {
            return GetResult {
                status: GetStatus::NoMessageInQueue,
                next_begin_offset: 0,
                min_offset: 0,
                max_offset: 0,
                messages: Vec::new(),
            };
        };
        let (min, max) = (q.min_offset(), q.max_offset());
        let result = |status, next| GetResult { status, next_begin_offset: next, min_offset: min, max_offset: max, messages: Vec::new() };
        if max == 0 {
            return result(GetStatus::NoMessageInQueue, 0);
        }
        if offset < min {
            return result(GetStatus::OffsetTooSmall, min);
        }
        if offset == max {
            return result(GetStatus::OffsetOverflowOne, offset);
        }
        if offset > max {
            return result(GetStatus::OffsetOverflowBadly, if min == 0 { min } else { max });
        }
        let max_nums = max_nums.clamp(1, 1024);
        // Scan a bounded window so a selective filter cannot make one pull read the whole queue; units are
        // read one at a time, so an unfiltered pull touches only the units it returns.
        let scan_end = offset.saturating_add((max_nums * 16).max(256) as u64).min(max);
        let mut messages = Vec::with_capacity(max_nums.min((scan_end - offset) as usize));
        let mut bytes = 0usize;
        let mut next = offset;
        let mut examined = 0usize;
        for o in offset..scan_end {
            if messages.len() >= max_nums || (bytes >= max_bytes && !messages.is_empty()) {
                break;
            }
            if by_message.is_some_and(|(_, scan_max)| examined >= scan_max) {
                break;
            }
            let Some(unit) = q.get(o) else { break };
            next = o + 1;
            if !filter(unit.tags_code) {
                continue;
            }
            let got = match by_message {
                None => self.message_at(&unit, o),
                Some((matches, _)) => {
                    examined += 1;
                    match self.node.commitlog().read_at(unit.phys_offset, unit.size as usize) {
                        Some(data) if !matches(&data) => continue,
                        Some(data) => Self::got_message(&unit, o, data),
                        None => None,
                    }
                }
            };
            match got {
                Some(m) => {
                    bytes += m.len();
                    messages.push(m);
                }
                // Purged underneath us: the consumer must move on.
                None => return result(GetStatus::OffsetTooSmall, q.min_offset().max(next)),
            }
        }
        let status = if messages.is_empty() { GetStatus::NoMatchedMessage } else { GetStatus::Found };
        GetResult { status, next_begin_offset: next, min_offset: min, max_offset: q.max_offset(), messages }
    }

    /// Waits until `topic`/`queue_id` has messages at or beyond `offset`, or `timeout` passes.
    pub async fn wait_for_message(&self, topic: &str, queue_id: u32, offset: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let shared = Arc::clone(self.node.state());
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match self.queue(topic, queue_id) {
                Some(q) => {
                    let notified = q.notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if q.max_offset() > offset {
                        return;
                    }
                    let _ = tokio::time::timeout(deadline - now, notified).await;
                }
                None => {
                    let created = shared.queue_created.notified();
                    tokio::pin!(created);
                    created.as_mut().enable();
                    if self.queue(topic, queue_id).is_some() {
                        continue;
                    }
                    let _ = tokio::time::timeout(deadline - now, created).await;
                }
            }
        }
    }

    /// The first offset whose message was stored at or after `timestamp_ms` (`upper` = false) or the last
    /// at or before it (`upper` = true); RocketMQ's SEARCH_OFFSET_BY_TIMESTAMP.
    pub fn offset_by_time(&self, topic: &str, queue_id: u32, timestamp_ms: i64, upper: bool) -> u64 {
        let Some(q) = self.queue(topic, queue_id) else { return 0 };
        let ts = |o: u64| {
            q.get(o).and_then(|u| self.node.commitlog().read_at(u.phys_offset, u.size as usize)).and_then(|d| store_timestamp_of(&d))
        };
        let (min, max) = (q.min_offset(), q.max_offset());
        if min >= max {
            return min;
        }
        // Binary search over store timestamps, which grow with the log (one leader clock per term).
        let (mut lo, mut hi) = (min, max);
        if upper {
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match ts(mid) {
                    Some(t) if t <= timestamp_ms => lo = mid + 1,
                    _ => hi = mid,
                }
            }
            lo.saturating_sub(1).max(min)
        } else {
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match ts(mid) {
                    Some(t) if t < timestamp_ms => lo = mid + 1,
                    _ => hi = mid,
                }
            }
            lo
        }
    }

    /// Store timestamp of the message at `offset` of a queue, if it is retained.
    pub fn store_time_at(&self, topic: &str, queue_id: u32, offset: u64) -> Option<i64> {
        let q = self.queue(topic, queue_id)?;
        let u = q.get(offset)?;
        store_timestamp_of(&self.node.commitlog().read_at(u.phys_offset, u.size as usize)?)
    }

    /// The topics `group` has committed offsets on, by name.
    pub fn group_topics(&self, group: &str) -> Vec<String> {
        self.node.state().with_metadata(|m| m.state.consumer_offsets.get(group).map(|t| t.keys().cloned().collect()).unwrap_or_default())
    }

    /// Store timestamp of the first retained message of a queue.
    pub fn earliest_store_time(&self, topic: &str, queue_id: u32) -> Option<i64> {
        let q = self.queue(topic, queue_id)?;
        let u = q.get(q.min_offset())?;
        store_timestamp_of(&self.node.commitlog().read_at(u.phys_offset, u.size as usize)?)
    }

    /// The stored message starting at a commitlog offset (CONSUMER_SEND_MSG_BACK, VIEW_MESSAGE_BY_ID), only
    /// if it is committed: the offset comes from a client, so the whole record holding it is read through
    /// the index, CRC-verified and decoded, and the offset must be the start of one of its messages.
    ///
    /// # Errors
    /// [`ReadError`] when that record fails to read, verify or decode.
    pub fn message_by_phys_offset(&self, phys_offset: u64) -> Result<Option<Bytes>, ReadError> {
        let Some(data) = self.node.state().applied_message_at(phys_offset)? else { return Ok(None) };
        let size = data.get(..4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes);
        let magic = data.get(4..8).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes);
        if magic != Some(MESSAGE_MAGIC_CODE_V1) || size != i32::try_from(data.len()).ok() || data.len() < PHYSICAL_OFFSET_AT + 8 {
            return Ok(None);
        }
        Ok(Some(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_timestamp_is_read_from_an_encoded_message() {
        use raftmq_remoting::message::{encode_stored_message, MessageToStore};
        let host = "127.0.0.1:10911".parse().unwrap();
        let m = MessageToStore {
            topic: "T",
            queue_id: 1,
            flag: 0,
            queue_offset: 0,
            physical_offset: 0,
            sys_flag: 0,
            born_timestamp: 42,
            born_host: host,
            store_timestamp: 1_700_000_000_123,
            store_host: host,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: b"body",
            properties: "",
        };
        let mut out = Vec::new();
        encode_stored_message(&m, &mut out).unwrap();
        assert_eq!(store_timestamp_of(&out), Some(1_700_000_000_123));
        // With an IPv6 born host the field moves 12 bytes further.
        let mut v6 = vec![0u8; 100];
        v6[SYS_FLAG_POSITION..SYS_FLAG_POSITION + 4].copy_from_slice(&sys_flag::BORNHOST_V6.to_be_bytes());
        v6[68..76].copy_from_slice(&99i64.to_be_bytes());
        assert_eq!(store_timestamp_of(&v6), Some(99));
        assert_eq!(store_timestamp_of(&out[..10]), None);
    }
}
