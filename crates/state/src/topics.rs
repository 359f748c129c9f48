//! Topic configuration entries: create or update a topic and make its queues exist.

use std::collections::BTreeMap;

use crate::command::TopicConfig;
use crate::queues::QueueState;

/// Applies an upsert: the topic's config is replaced and every queue up to max(read, write) exists.
/// Queues are never removed by shrinking a topic (their messages stay readable by offset).
pub(crate) fn apply_upsert(
    topics: &mut BTreeMap<String, TopicConfig>,
    queues: &mut BTreeMap<String, BTreeMap<u32, QueueState>>,
    t: &TopicConfig,
) {
    let qs = queues.entry(t.name.clone()).or_default();
    for q in 0..t.read_queues.max(t.write_queues) {
        qs.entry(q).or_default();
    }
    topics.insert(t.name.clone(), t.clone());
}
