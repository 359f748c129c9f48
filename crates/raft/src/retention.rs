//! Retention planning: which whole commitlog segments the leader may propose to delete, and why.
//!
//! Pure reads of the local log and applied state, run by the leader (blocking: call it off the async
//! workers). The answer, with each queue's first offset at or after it, is proposed as `Retain` (tag 8),
//! so every replica deletes the same prefix; see `raftmq_state::retention` for what applying it does and
//! [`crate::RaftNode::compact`] for the files.
//!
//! Rules, RocketMQ's where it has them (`CleanCommitLogService`, DLedger's `CleanSpaceService`):
//! - whole segments only, oldest first, never the segment being written, stopping at the first one that
//!   may not go (no holes), at most `segments_per_pass_max` per decision;
//! - a segment is expired when its newest message is older than `reserved_ms`; the stamp of the first
//!   produce entry after the segment bounds that (stamps never decrease along the log);
//! - a segment also goes, whatever its age, while the retained log exceeds `bytes_max`, or when `force`
//!   (the disk is above the forced-clean ratio);
//! - never past the applied index, nor past the pin of pending scheduled and transactional messages
//!   ([`crate::state_machine::SmShared::retention_pin_index`]): those are kept, not re-appended (a delivery
//!   copies the staged bytes, and a node joining from a snapshot replays the staging entries), so one
//!   pending 40-day timer keeps 40 days of log; `raftmq admin status` shows the pin.

use raftmq_commitlog::CommitLogReader;
use raftmq_state::RetainPoint;

use crate::error::ReadError;

/// How many records after a segment boundary are searched for a stamped produce entry.
const STAMP_SEARCH_RECORDS_MAX: u64 = 4096;

/// What the leader's broker asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The leader's stamp now (ms).
    pub now_ms: i64,
    /// Age-based deletion: keep messages this long (ms); `None` = not now (outside `deleteWhen` hours).
    pub reserved_ms: Option<i64>,
    /// Size cap of the retained log (bytes); `None` = no cap.
    pub bytes_max: Option<u64>,
    /// Delete regardless of age (disk above the forced-clean ratio).
    pub force: bool,
    /// Most segments one decision deletes.
    pub segments_per_pass_max: u64,
}

/// Why a segment may go ([`RetainPoint::reason`]).
pub const REASON_AGE: u8 = 0;
/// The retained log is over its size cap.
pub const REASON_SIZE: u8 = 1;
/// The disk is above the forced-clean ratio.
pub const REASON_DISK: u8 = 2;

/// What [`plan`] found, for the proposal and for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan {
    /// The purge point to propose, if any segment may go.
    pub point: Option<RetainPoint>,
    /// With a point: each queue's first offset at or after it, where that moves the queue's floor
    /// (filled by [`crate::RaftNode::plan_retention`] from the leader's consume queues).
    pub queues: Vec<(String, u32, u64)>,
    /// Why the next segment may not go (shown by `raftmq admin status`).
    pub held_by: String,
}

/// Inputs [`plan`] reads from the applied state.
#[derive(Debug, Clone, Copy)]
pub struct PlanInputs {
    /// The current floor.
    pub floor: RetainPoint,
    /// Last applied index.
    pub applied: u64,
    /// Newest index retention may purge through (pending scheduled/transactional messages); `None` = none.
    pub pin: Option<u64>,
}

/// The stamp (ms) of a produce entry's log body (tags 4 and 6), else `None`.
pub fn stamp_of(body: &[u8]) -> Option<i64> {
    match body.first() {
        Some(4 | 6) => body.get(1..9).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
        _ => None,
    }
}

/// The first stamp at or after log index `from`, searching at most [`STAMP_SEARCH_RECORDS_MAX`] records
/// and never past `applied`.
fn stamp_at_or_after(log: &CommitLogReader, from: u64, applied: u64) -> Result<Option<i64>, ReadError> {
    let end = applied.saturating_add(1).min(from.saturating_add(STAMP_SEARCH_RECORDS_MAX));
    let mut at = from;
    while at < end {
        let recs = log.read_range(at, end, 1 << 20).map_err(ReadError::from)?;
        if recs.is_empty() {
            return Ok(None);
        }
        for r in &recs {
            if let Some(t) = stamp_of(&r.body) {
                return Ok(Some(t));
            }
        }
        at = recs.last().map_or(end, |r| r.meta.index + 1);
    }
    Ok(None)
}

/// Decides the next purge point.
pub fn plan(log: &CommitLogReader, inputs: PlanInputs, policy: &RetentionPolicy) -> Result<RetentionPlan, ReadError> {
    let seg = log.segment_bytes();
    let st = log.state();
    let held = |why: String| Ok(RetentionPlan { point: None, queues: Vec::new(), held_by: why });
    if seg == 0 {
        return held("no segments".into());
    }
    let start = st.purged.map_or(0, |p| p.next_pos).max(inputs.floor.pos);
    // The segment being written (or about to be: a write position on a boundary starts a new one).
    let active = st.write_pos / seg;
    let mut k = start / seg;
    let mut point: Option<RetainPoint> = None;
    let mut why = String::new();
    let mut passes = 0;
    while passes < policy.segments_per_pass_max {
        if k + 1 > active || (k + 1) * seg >= st.write_pos {
            why = format!("segment {k} is the one being written");
            break;
        }
        let boundary = (k + 1) * seg;
        let Some(rec) = log.read_containing(boundary).map_err(ReadError::from)? else {
            why = format!("no record at position {boundary}");
            break;
        };
        if rec.pos != boundary {
            why = format!("the record containing position {boundary} starts at {}", rec.pos);
            break;
        }
        let index = rec.meta.index;
        if index > inputs.applied {
            why = format!("segment {k} ends past the applied index {}", inputs.applied);
            break;
        }
        if let Some(pin) = inputs.pin {
            if index > pin.saturating_add(1) {
                why = format!("a pending scheduled or transactional message at index {} is in segment {k}", pin + 1);
                break;
            }
        }
        let retained = st.write_pos.saturating_sub(k * seg);
        let reason = if policy.force {
            REASON_DISK
        } else if policy.bytes_max.is_some_and(|m| retained > m) {
            REASON_SIZE
        } else if let Some(reserved) = policy.reserved_ms {
            match stamp_at_or_after(log, index, inputs.applied)? {
                Some(t) if t.saturating_add(reserved) <= policy.now_ms => REASON_AGE,
                Some(t) => {
                    why = format!("segment {k} holds messages up to {t} ms, younger than the reserved time");
                    break;
                }
                None => {
                    why = format!("no stamped entry after segment {k} yet");
                    break;
                }
            }
        } else {
            why = "outside deleteWhen hours, under the size cap and the disk ratios".into();
            break;
        };
        point = Some(RetainPoint { index, pos: boundary, decided_ms: policy.now_ms, reason });
        passes += 1;
        k += 1;
    }
    if point.is_some() && why.is_empty() {
        why = format!("at most {} segments per pass", policy.segments_per_pass_max);
    }
    Ok(RetentionPlan { point, queues: Vec::new(), held_by: why })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_produce_bodies_only() {
        let mut b = vec![4u8];
        b.extend_from_slice(&1234i64.to_le_bytes());
        assert_eq!(stamp_of(&b), Some(1234));
        b[0] = 6;
        assert_eq!(stamp_of(&b), Some(1234));
        b[0] = 2;
        assert_eq!(stamp_of(&b), None);
        assert_eq!(stamp_of(&[4, 1, 2]), None);
        assert_eq!(stamp_of(&[]), None);
    }
}
