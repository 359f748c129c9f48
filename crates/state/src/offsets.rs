//! Consumer-group offset commits: the last commit for a (group, topic, queue) wins, in log order.
//! DLedger replicated none of this, which is why RocketMQ consumers re-consume after a failover.

use std::collections::BTreeMap;

use crate::command::OffsetCommit;

/// Consumer offsets by group, topic, queue id.
pub type ConsumerOffsets = BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>;

/// Applies offset commits in order.
pub(crate) fn apply_commits(offsets: &mut ConsumerOffsets, commits: &[OffsetCommit]) {
    for c in commits {
        offsets.entry(c.group.clone()).or_default().entry(c.topic.clone()).or_default().insert(c.queue_id, c.offset);
    }
}
