//! Consumer-group offsets and server-side offset resets.
//!
//! Commits: the last commit for a (group, topic, queue) wins, in log order. DLedger replicated none of
//! this, which is why RocketMQ consumers re-consume after a failover.
//!
//! Resets (RocketMQ 5's server-side reset, `INVOKE_BROKER_TO_RESET_OFFSET`): one [`OffsetReset`] entry,
//! decided by the leader from its consume queues, sets the group's offsets of the named queues **and** a
//! reset marker per queue. While a queue is marked, commits for it are ignored — a running consumer keeps
//! committing the position it had before the reset, and those stale commits must not undo it — except a
//! commit of exactly the marked offset, which shows the group has taken the reset and ends the marker. The
//! leader also ends markers with [`ResetMarker`] entries once a consumer pulls at the reset offset; such an
//! entry only ends a marker that still holds its offset, so a late one never ends a newer reset. Markers are
//! replicated state: a new leader keeps answering pulls with PULL_OFFSET_MOVED until they end.
//!
//! Invariant (checked in debug builds): a marked queue's committed offset is its marker's offset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{OffsetCommit, TopicConfig};

/// Consumer offsets by group, topic, queue id.
pub type ConsumerOffsets = BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>;

/// Reset markers by group, topic, queue id: the offset the reset set, until the group has taken it.
pub type ResetMarkers = BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>;

/// Most reset markers the replicated state holds at once (over all groups, topics and queues). A reset that
/// would make more is refused as a whole; markers end as soon as each queue's consumer pulls at its reset
/// offset, so only queues nobody consumes keep theirs.
pub const RESET_MARKERS_MAX: usize = 65_536;

/// A server-side reset of one group's offsets on queues of one topic (log tag 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetReset {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// (queue id, new offset), as the leader computed them; each queue at most once.
    pub offsets: Vec<(u32, u64)>,
}

/// Names a reset marker to end (log tag 10): ended only if the queue is still marked with `offset`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResetMarker {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// The reset offset the marker holds.
    pub offset: u64,
}

/// The marker of one queue, if any.
pub fn marker(markers: &ResetMarkers, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
    markers.get(group)?.get(topic)?.get(&queue_id).copied()
}

/// Markers held, over all groups and topics.
pub fn marker_count(markers: &ResetMarkers) -> usize {
    markers.values().flat_map(|t| t.values()).map(BTreeMap::len).sum()
}

fn remove_marker(markers: &mut ResetMarkers, group: &str, topic: &str, queue_id: u32) {
    let Some(topics) = markers.get_mut(group) else { return };
    if let Some(queues) = topics.get_mut(topic) {
        queues.remove(&queue_id);
        if queues.is_empty() {
            topics.remove(topic);
        }
    }
    if topics.is_empty() {
        markers.remove(group);
    }
}

/// Applies offset commits in order; a commit for a marked queue is ignored, and one of exactly the marked
/// offset ends the marker. A commit for a topic that does not exist is ignored: the leader proposes commits
/// only for existing topics, so that happens only when a topic deletion was applied between the proposal and
/// this entry — the group's offset on the deleted topic must not come back (and apply to a topic created again
/// under the same name). Before topics could be deleted no committed commit named a missing topic, so older
/// logs apply as before.
pub(crate) fn apply_commits(
    offsets: &mut ConsumerOffsets,
    markers: &mut ResetMarkers,
    topics: &BTreeMap<String, TopicConfig>,
    commits: &[OffsetCommit],
) {
    for c in commits {
        if !topics.contains_key(&c.topic) {
            continue;
        }
        if let Some(reset) = marker(markers, &c.group, &c.topic, c.queue_id) {
            if c.offset == reset {
                remove_marker(markers, &c.group, &c.topic, c.queue_id);
            }
            continue;
        }
        offsets.entry(c.group.clone()).or_default().entry(c.topic.clone()).or_default().insert(c.queue_id, c.offset);
    }
}

/// Applies a reset: every named queue gets its offset and a marker. Refused as a whole (nothing changes)
/// when the topic or a queue does not exist, a queue is named twice, or the markers would exceed
/// [`RESET_MARKERS_MAX`].
pub(crate) fn apply_reset(
    offsets: &mut ConsumerOffsets,
    markers: &mut ResetMarkers,
    topics: &BTreeMap<String, TopicConfig>,
    reset: &OffsetReset,
) -> Result<(), String> {
    let Some(t) = topics.get(&reset.topic) else {
        return Err(format!("offset reset of group {}: topic {} does not exist", reset.group, reset.topic));
    };
    let queues = t.read_queues.max(t.write_queues);
    let mut seen = std::collections::BTreeSet::new();
    for (q, _) in &reset.offsets {
        if *q >= queues {
            return Err(format!(
                "offset reset of group {}: queue {q} of topic {} does not exist ({queues} queues)",
                reset.group, reset.topic
            ));
        }
        if !seen.insert(*q) {
            return Err(format!("offset reset of group {}: queue {q} of topic {} is named twice", reset.group, reset.topic));
        }
    }
    let held = marker_count(markers);
    let new = reset.offsets.iter().filter(|(q, _)| marker(markers, &reset.group, &reset.topic, *q).is_none()).count();
    if held + new > RESET_MARKERS_MAX {
        return Err(format!(
            "offset reset of group {} refused: {held} reset markers are held and {new} more would exceed the limit (RESET_MARKERS_MAX {RESET_MARKERS_MAX})",
            reset.group
        ));
    }
    for (q, o) in &reset.offsets {
        offsets.entry(reset.group.clone()).or_default().entry(reset.topic.clone()).or_default().insert(*q, *o);
        markers.entry(reset.group.clone()).or_default().entry(reset.topic.clone()).or_default().insert(*q, *o);
    }
    Ok(())
}

/// Ends the named markers that still hold their offsets (a marker of a newer reset stays).
pub(crate) fn apply_clear(markers: &mut ResetMarkers, ends: &[ResetMarker]) {
    for m in ends {
        if marker(markers, &m.group, &m.topic, m.queue_id) == Some(m.offset) {
            remove_marker(markers, &m.group, &m.topic, m.queue_id);
        }
    }
}

/// Debug check: at most [`RESET_MARKERS_MAX`] markers, and each marked queue's offset is its marker's.
///
/// # Panics
/// When either does not hold (an `apply` bug).
pub(crate) fn check_invariants(offsets: &ConsumerOffsets, markers: &ResetMarkers) {
    assert!(marker_count(markers) <= RESET_MARKERS_MAX, "{} reset markers", marker_count(markers));
    for (g, topics) in markers {
        for (t, queues) in topics {
            assert!(!queues.is_empty(), "empty marker map of {g}/{t}");
            for (q, o) in queues {
                let committed = offsets.get(g).and_then(|ts| ts.get(t)).and_then(|qs| qs.get(q));
                assert_eq!(committed, Some(o), "{g}/{t}/{q}: marked at {o} but the committed offset is {committed:?}");
            }
        }
    }
}
