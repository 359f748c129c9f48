//! Retention: the replicated purge point below which the group has deleted its commitlog, and what that
//! cost each consumer group.
//!
//! The leader decides *when* to delete (age, size, disk use — `raftmq-broker`'s retention loop) and proposes
//! [`RetainPoint`] through the log (tag 8). Applying it is the same on every replica: each queue's first
//! served offset becomes the first unit at or after the purge position (found through
//! [`QueueStore::first_at_or_after`], whose answer depends only on consume-queue units, which are derived
//! from the log), and every consumer group committed below that offset is charged the messages it skipped.
//! Each replica then deletes its own files below the floor when it can (its newest checkpoint at or below
//! the floor), which changes nothing replicated. Deleting a message a pending scheduled or transactional
//! message still needs is the proposer's to avoid ([`crate::BrokerState::oldest_pending_half`] and the
//! staging queues pin the floor); apply checks only that the floor moves forward.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::offsets::ConsumerOffsets;
use crate::queues::{ApplyError, QueueState, QueueStore};

/// A purge point: everything below log index `index`, which starts at byte `pos`, is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainPoint {
    /// First log index kept.
    pub index: u64,
    /// Log position of that entry's record: the first byte kept (a segment boundary).
    pub pos: u64,
    /// The leader's stamp when it decided (ms; for display: "purged at").
    pub decided_ms: i64,
    /// Why, for operators: 0 age (`fileReservedTime`), 1 size cap, 2 disk use above the forced-clean ratio.
    pub reason: u8,
}

/// Bytes of a tag-8 body after the tag.
pub const RETAIN_BYTES: usize = 25;

/// The retention floor and its consequences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The newest purge point applied (default: nothing purged).
    pub floor: RetainPoint,
    /// Number of purge points applied.
    pub purges: u64,
    /// First offset each queue serves because of retention (queues never purged are absent).
    pub queue_floor: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Messages each consumer group (then topic) had not consumed when retention deleted them.
    pub lost: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Retention {
    /// First offset of `topic`:`queue` that retention left (0 when never purged).
    pub fn queue_floor(&self, topic: &str, queue: u32) -> u64 {
        self.queue_floor.get(topic).and_then(|q| q.get(&queue)).copied().unwrap_or(0)
    }

    /// Messages `group` lost to retention on `topic`.
    pub fn lost(&self, group: &str, topic: &str) -> u64 {
        self.lost.get(group).and_then(|t| t.get(topic)).copied().unwrap_or(0)
    }

    /// Applies a purge point. Refused (with the reason) when it does not move the floor forward.
    pub(crate) fn apply<S: QueueStore>(
        &mut self,
        p: &RetainPoint,
        queues: &mut BTreeMap<String, BTreeMap<u32, QueueState>>,
        offsets: &ConsumerOffsets,
        store: &mut S,
    ) -> Result<Result<(), String>, ApplyError<S::Error>> {
        if p.pos <= self.floor.pos || p.index <= self.floor.index {
            return Ok(Err(format!(
                "retention floor is already at index {} (position {}); {} (position {}) does not move it",
                self.floor.index, self.floor.pos, p.index, p.pos
            )));
        }
        for (topic, qs) in queues.iter_mut() {
            for (&qid, st) in qs.iter_mut() {
                let old = self.queue_floor(topic, qid);
                let Some(first) = store.first_at_or_after(topic, qid, *st, p.pos).map_err(ApplyError::Store)? else { continue };
                let new = first.min(st.next_offset);
                if new <= old {
                    continue;
                }
                self.queue_floor.entry(topic.clone()).or_default().insert(qid, new);
                st.min_offset = st.min_offset.max(new);
                for (group, topics) in offsets {
                    let Some(&committed) = topics.get(topic).and_then(|q| q.get(&qid)) else { continue };
                    let skipped = new.saturating_sub(committed.max(old));
                    if skipped > 0 {
                        *self.lost.entry(group.clone()).or_default().entry(topic.clone()).or_default() += skipped;
                    }
                }
            }
        }
        self.floor = *p;
        self.purges += 1;
        Ok(Ok(()))
    }
}
