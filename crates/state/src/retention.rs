//! Retention: the replicated purge point below which the group has deleted its commitlog, and what that
//! cost each consumer group.
//!
//! The leader decides *when* to delete (age, size, disk use — `raftmq-broker`'s retention loop), computes
//! from its own consume queues each queue's first offset at or after the purge position, and proposes both
//! through the log ([`Retain`], tag 8). Applying it only uses what the entry says: each listed queue's first
//! served offset rises to the given value (never past its end), and every consumer group committed below
//! it is charged the messages it skipped. Replicas therefore agree even when one of them installed a
//! snapshot and holds fewer consume-queue units than the leader. A long list is split over several entries
//! for the same point; the floor itself moves with the `last` one (raising a queue's floor twice is
//! harmless, so a new leader may send the whole list again).
//!
//! Each replica then deletes its own files below the floor, which changes nothing replicated. Deleting a
//! message a pending scheduled or transactional message still needs is the proposer's to avoid (the
//! oldest pending half message and the staging queues pin the floor); apply checks only that the floor
//! moves forward.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::offsets::ConsumerOffsets;
use crate::queues::QueueState;

/// A purge point: everything below log index `index`, which starts at byte `pos`, is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainPoint {
    /// First log index kept.
    pub index: u64,
    /// Log position of that entry's record: the first byte kept (a segment boundary).
    pub pos: u64,
    /// The leader's stamp when it decided (ms; for display).
    pub decided_ms: i64,
    /// Why, for operators: 0 age (`fileReservedTime`), 1 size cap, 2 disk use above the forced-clean ratio.
    pub reason: u8,
}

/// One retention entry: the point, the new first offset of queues that had messages below it, and
/// whether this is the point's last entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retain {
    /// The purge point.
    pub point: RetainPoint,
    /// (topic, queue id, first offset kept), in (topic, queue) order.
    pub queues: Vec<(String, u32, u64)>,
    /// The floor moves to `point` when this entry is applied.
    pub last: bool,
}

/// Bytes of a tag-8 body's fixed part after the tag: point (25), `last` (1), queue count (4).
pub const RETAIN_HEADER_BYTES: usize = 30;

/// Encoded bytes of one queue of a [`Retain`]: topic length (2), topic, queue id (4), offset (8).
pub fn retain_queue_bytes(topic: &str) -> usize {
    14 + topic.len()
}

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

    /// Applies a retention entry. Refused (with the reason) when its point does not move the floor forward.
    pub(crate) fn apply(
        &mut self,
        r: &Retain,
        queues: &mut BTreeMap<String, BTreeMap<u32, QueueState>>,
        offsets: &ConsumerOffsets,
    ) -> Result<(), String> {
        let p = &r.point;
        if p.pos <= self.floor.pos || p.index <= self.floor.index {
            return Err(format!(
                "retention floor is already at index {} (position {}); {} (position {}) does not move it",
                self.floor.index, self.floor.pos, p.index, p.pos
            ));
        }
        for (topic, qid, first) in &r.queues {
            let Some(st) = queues.get_mut(topic).and_then(|q| q.get_mut(qid)) else { continue };
            let old = self.queue_floor(topic, *qid);
            let new = (*first).min(st.next_offset);
            if new <= old {
                continue;
            }
            self.queue_floor.entry(topic.clone()).or_default().insert(*qid, new);
            st.min_offset = st.min_offset.max(new);
            for (group, topics) in offsets {
                let Some(&committed) = topics.get(topic).and_then(|q| q.get(qid)) else { continue };
                let skipped = new.saturating_sub(committed.max(old));
                if skipped > 0 {
                    *self.lost.entry(group.clone()).or_default().entry(topic.clone()).or_default() += skipped;
                }
            }
        }
        if r.last {
            self.floor = *p;
            self.purges += 1;
        }
        Ok(())
    }
}
