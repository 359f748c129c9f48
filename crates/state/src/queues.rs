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
    /// First offset this replica serves. Local: raised by this replica's retention and by a snapshot
    /// install; never read by `apply`.
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

/// Indexes the parts of a produce entry. `skip` holds the (part, index) of messages not to index (refused
/// deliveries); `phys_offset` of every message must be set (the entry was read back from the log).
pub(crate) fn apply_produce<S: QueueStore>(
    topics: &BTreeMap<String, TopicConfig>,
    queues: &mut BTreeMap<String, BTreeMap<u32, QueueState>>,
    parts: &[QueueAppend],
    skip: &BTreeSet<(u32, u32)>,
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
            if skip.contains(&(pi as u32, mi as u32)) {
                continue;
            }
            let phys_offset = m.phys_offset.ok_or(ApplyError::Unlogged)?;
            let size = u32::try_from(m.data.len()).map_err(|_| ApplyError::Unlogged)?;
            let unit = CqUnit { phys_offset, size, tags_code: m.tags_code };
            store.write(&qa.topic, qa.queue_id, before, st.next_offset, unit).map_err(ApplyError::Store)?;
            positions.push(MessagePosition { queue_offset: st.next_offset, phys_offset });
            st.next_offset += 1;
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
