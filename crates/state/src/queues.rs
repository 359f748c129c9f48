//! Produce entries: each message becomes a consume-queue unit at its queue's next offset, pointing at the
//! message bytes in the commitlog (bodies are never copied). The unit writes go through [`QueueStore`], so
//! this module holds no file and can be driven by an in-memory store in tests.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{MessagePosition, QueueAppend, QueueAppendResult, TopicConfig};
use crate::unit::CqUnit;

/// Per topic-queue state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Offset of the next message.
    pub next_offset: u64,
    /// First offset this replica serves. Raised by retention (the replicated floor, see [`crate::retention`])
    /// and, locally, by a snapshot install (nothing below the snapshot is held); never read by `apply`.
    pub min_offset: u64,
}

/// Where `apply` writes consume-queue units: the only I/O the replicated state does, behind this trait.
///
/// # Correctness
/// `write` must be idempotent for a given (topic, queue, offset, unit): a restart re-applies the entries
/// after the last checkpoint and writes the same units again. A unit written at offset `o` must be readable
/// once `publish` was called with a value above `o`, not before. An error is a storage failure: the caller
/// stops applying (the state may have advanced past the failed write and must not be checkpointed).
pub trait QueueStore {
    /// The storage failure.
    type Error;
    /// Writes `unit` at offset `at` of the topic-queue whose state before this entry was `queue` (the
    /// store opens or creates the queue on first use).
    fn write(&mut self, topic: &str, queue_id: u32, queue: QueueState, at: u64, unit: CqUnit) -> Result<(), Self::Error>;
    /// Makes the units below `next_offset` of the topic-queue readable.
    fn publish(&mut self, topic: &str, queue_id: u32, next_offset: u64);
}

/// What the rest of the state says about each message of a produce entry as it is indexed, in entry order.
pub(crate) trait Indexing {
    /// Before message `index` of part `part` is indexed: `None` indexes it; `Some(None)` leaves it out
    /// with no position (a refused delivery or commit copy); `Some(Some(p))` leaves it out and reports `p`
    /// (a duplicate's original).
    fn before(&mut self, part: u32, index: u32) -> Option<Option<MessagePosition>>;
    /// Message `index` of part `part` was indexed at `at`, `size` bytes long.
    fn indexed(&mut self, part: u32, index: u32, at: MessagePosition, size: u32);
}

/// Indexes every message (legacy entries and tests).
pub(crate) struct IndexAll;

impl Indexing for IndexAll {
    fn before(&mut self, _: u32, _: u32) -> Option<Option<MessagePosition>> {
        None
    }
    fn indexed(&mut self, _: u32, _: u32, _: MessagePosition, _: u32) {}
}

/// Leaves out the (part, index) in the set (refused deliveries), indexes the rest.
impl Indexing for &BTreeSet<(u32, u32)> {
    fn before(&mut self, part: u32, index: u32) -> Option<Option<MessagePosition>> {
        self.contains(&(part, index)).then_some(None)
    }
    fn indexed(&mut self, _: u32, _: u32, _: MessagePosition, _: u32) {}
}

/// Indexes the parts of a produce entry, asking `ix` about each message; `phys_offset` of every message
/// must be set (the entry was read back from the log).
pub(crate) fn apply_produce<S: QueueStore>(
    topics: &BTreeMap<String, TopicConfig>,
    queues: &mut BTreeMap<String, BTreeMap<u32, QueueState>>,
    parts: &[QueueAppend],
    ix: &mut impl Indexing,
    store: &mut S,
) -> Result<Vec<QueueAppendResult>, ApplyError<S::Error>> {
    let mut results = Vec::with_capacity(parts.len());
    for (pi, qa) in parts.iter().enumerate() {
        let Some(topic) = topics.get(&qa.topic) else {
            results.push(QueueAppendResult::Rejected(format!("topic {} does not exist", qa.topic)));
            continue;
        };
        if qa.queue_id >= topic.write_queues {
            results.push(QueueAppendResult::Rejected(format!(
                "queue {} out of range for {} ({} write queues)",
                qa.queue_id, qa.topic, topic.write_queues
            )));
            continue;
        }
        let st = queues.entry(qa.topic.clone()).or_default().entry(qa.queue_id).or_default();
        let before = *st;
        let mut positions = Vec::with_capacity(qa.messages.len());
        for (mi, m) in qa.messages.iter().enumerate() {
            let (part, index) = (pi as u32, mi as u32);
            match ix.before(part, index) {
                Some(Some(original)) => {
                    positions.push(original);
                    continue;
                }
                Some(None) => continue,
                None => {}
            }
            let phys_offset = m.phys_offset.ok_or(ApplyError::Unlogged)?;
            let size = u32::try_from(m.data.len()).map_err(|_| ApplyError::Unlogged)?;
            let unit = CqUnit { phys_offset, size, tags_code: m.tags_code };
            store.write(&qa.topic, qa.queue_id, before, st.next_offset, unit).map_err(ApplyError::Store)?;
            let at = MessagePosition { queue_id: qa.queue_id, queue_offset: st.next_offset, phys_offset, duplicate: false };
            positions.push(at);
            st.next_offset += 1;
            ix.indexed(part, index, at, size);
        }
        if st.next_offset != before.next_offset {
            store.publish(&qa.topic, qa.queue_id, st.next_offset);
        }
        results.push(QueueAppendResult::Stored(positions));
    }
    Ok(results)
}

/// Writes the units timer moves add, each at the end of its timer queue (which exists: `accept` checked).
pub(crate) fn apply_moves<S: QueueStore>(
    queues: &mut BTreeMap<String, BTreeMap<u32, QueueState>>,
    topic: &str,
    moves: &[crate::schedule::MoveTo],
    store: &mut S,
) -> Result<(), ApplyError<S::Error>> {
    let Some(qs) = queues.get_mut(topic) else { return Ok(()) };
    for m in moves {
        let Some(st) = qs.get_mut(&m.queue) else { continue };
        let before = *st;
        store.write(topic, m.queue, before, st.next_offset, m.unit).map_err(ApplyError::Store)?;
        st.next_offset += 1;
        store.publish(topic, m.queue, st.next_offset);
    }
    Ok(())
}

/// Why an entry could not be applied. Never caused by the entry's content as a client sent it: the state
/// answers bad requests with responses; these stop the state machine.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError<E> {
    /// The queue store failed (for example a full disk).
    #[error("consume-queue store: {0}")]
    Store(E),
    /// A produce entry without physical offsets: it was not read back from the log (a harness bug).
    #[error("produce entry applied without physical offsets (not read from the log)")]
    Unlogged,
}
