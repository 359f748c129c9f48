//! Subscription groups (RocketMQ's `SubscriptionGroupConfig` table) and topic deletion.
//!
//! Groups: `mqadmin updateSubGroup` / the Dashboard create or change a group's settings with
//! UPDATE_AND_CREATE_SUBSCRIPTIONGROUP (200), which the leader proposes as [`crate::Command::UpsertSubscriptionGroup`]
//! (log tag 13); DELETE_SUBSCRIPTIONGROUP (207) proposes [`crate::Command::DeleteSubscriptionGroup`] (tag 14), which
//! can also drop the group's committed offsets (and their reset markers). The table is bounded by
//! [`SUBSCRIPTION_GROUPS_MAX`]: an upsert of a new group beyond it is refused as a whole, with a remark that
//! names the limit. Only groups created this way are in the table; groups RocketMQ would auto-create on a
//! heartbeat are not (the broker lists those read-only, from offsets and heartbeats).
//!
//! Topic deletion ([`crate::Command::DeleteTopic`], tag 15, DELETE_TOPIC_IN_BROKER 215): the topic's config, its
//! queue states, every group's committed offsets and reset markers on it, its retention floors and lost
//! counts, and the queue leases of orderly consumers on it go. The messages stay in the commitlog until
//! retention deletes their segments; a topic created again under the same name starts at offset 0 (the
//! state-machine adapter deletes the consume-queue files when it applies the entry). System topics are the
//! broker's to refuse before proposing; apply refuses them too (see [`is_undeletable_topic`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::offsets::{ConsumerOffsets, ResetMarkers};
use crate::queues::QueueState;
use crate::retention::Retention;
use crate::{locks::QueueLocks, TopicConfig};

/// Most subscription groups the replicated table holds. An upsert of a new group beyond it is refused;
/// changing an existing group is always allowed.
pub const SUBSCRIPTION_GROUPS_MAX: usize = 16_384;

/// Longest group name the table accepts (RocketMQ's `CHARACTER_MAX_LENGTH`); the broker checks the
/// stricter rules (`validate_group`) before proposing.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// RocketMQ's `SubscriptionGroupConfig` (the fields its tools read and write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionGroupConfig {
    /// `groupName`.
    pub group_name: String,
    /// `consumeEnable`: false makes the broker refuse the group's pulls (NO_PERMISSION).
    pub consume_enable: bool,
    /// `consumeFromMinEnable`.
    pub consume_from_min_enable: bool,
    /// `consumeBroadcastEnable`.
    pub consume_broadcast_enable: bool,
    /// `retryQueueNums`.
    pub retry_queue_nums: i32,
    /// `retryMaxTimes`.
    pub retry_max_times: i32,
    /// `brokerId`.
    pub broker_id: i64,
    /// `whichBrokerWhenConsumeSlowly`.
    pub which_broker_when_consume_slowly: i64,
    /// `notifyConsumerIdsChangedEnable`.
    pub notify_consumer_ids_changed_enable: bool,
    /// `groupSysFlag`.
    pub group_sys_flag: i32,
    /// `consumeTimeoutMinute` (RocketMQ 5).
    pub consume_timeout_minute: i32,
}

impl SubscriptionGroupConfig {
    /// RocketMQ's defaults for a group named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        SubscriptionGroupConfig {
            group_name: name.into(),
            consume_enable: true,
            consume_from_min_enable: true,
            consume_broadcast_enable: true,
            retry_queue_nums: 1,
            retry_max_times: 16,
            broker_id: 0,
            which_broker_when_consume_slowly: 1,
            notify_consumer_ids_changed_enable: true,
            group_sys_flag: 0,
            consume_timeout_minute: 15,
        }
    }
}

/// Subscription groups by name.
pub type SubscriptionGroups = BTreeMap<String, SubscriptionGroupConfig>;

/// Log tag 14: delete a group, and with `clean_offset` its committed offsets and reset markers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteGroup {
    /// The group.
    pub group: String,
    /// Also drop the group's committed offsets (RocketMQ's `cleanOffset`).
    pub clean_offset: bool,
}

/// RocketMQ's `TopicValidator.SYSTEM_TOPIC_PREFIX`.
pub const SYSTEM_TOPIC_PREFIX: &str = "rmq_sys_";

/// The topics RocketMQ's `TopicValidator.isSystemTopic` names (its `SYSTEM_TOPIC_SET`), besides
/// [`SYSTEM_TOPIC_PREFIX`].
pub const SYSTEM_TOPICS: &[&str] = &[
    "TBW102",
    "SCHEDULE_TOPIC_XXXX",
    "BenchmarkTest",
    "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRACE_TOPIC",
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "TRANS_CHECK_MAX_TIME_TOPIC",
    "SELF_TEST_TOPIC",
    "OFFSET_MOVED_EVENT",
];

/// True for a topic deletion must refuse: RocketMQ's system topics (`TopicValidator.isSystemTopic`:
/// the set above and every `rmq_sys_` topic, which includes raftmq's timer topic). Retry (`%RETRY%`) and
/// dead-letter (`%DLQ%`) topics may be deleted, as in RocketMQ.
pub fn is_undeletable_topic(topic: &str) -> bool {
    SYSTEM_TOPICS.contains(&topic) || topic.starts_with(SYSTEM_TOPIC_PREFIX)
}

/// Applies an upsert: replaces an existing group's config, or adds a new one while there is room.
pub(crate) fn apply_upsert(groups: &mut SubscriptionGroups, g: &SubscriptionGroupConfig) -> Result<(), String> {
    if g.group_name.is_empty() || g.group_name.len() > GROUP_NAME_BYTES_MAX {
        return Err(format!("subscription group name must be 1..={GROUP_NAME_BYTES_MAX} bytes ({} bytes)", g.group_name.len()));
    }
    if !groups.contains_key(&g.group_name) && groups.len() >= SUBSCRIPTION_GROUPS_MAX {
        return Err(format!(
            "cannot create subscription group {}: the broker holds {} groups (SUBSCRIPTION_GROUPS_MAX {SUBSCRIPTION_GROUPS_MAX})",
            g.group_name,
            groups.len()
        ));
    }
    groups.insert(g.group_name.clone(), g.clone());
    Ok(())
}

/// Applies a group deletion: the config goes (if any), and with `clean_offset` the group's offsets and
/// reset markers. Deleting a group that does not exist changes nothing else and is not an error (tools
/// retry, and delete on every broker group).
pub(crate) fn apply_delete_group(
    groups: &mut SubscriptionGroups,
    offsets: &mut ConsumerOffsets,
    markers: &mut ResetMarkers,
    d: &DeleteGroup,
) {
    groups.remove(&d.group);
    if d.clean_offset {
        offsets.remove(&d.group);
        markers.remove(&d.group);
    }
}

/// What a topic deletion touches.
pub(crate) struct TopicTables<'a> {
    pub topics: &'a mut BTreeMap<String, TopicConfig>,
    pub queues: &'a mut BTreeMap<String, BTreeMap<u32, QueueState>>,
    pub offsets: &'a mut ConsumerOffsets,
    pub markers: &'a mut ResetMarkers,
    pub retention: &'a mut Retention,
    pub locks: &'a mut QueueLocks,
}

/// Applies a topic deletion (see the module docs). A system topic is refused; a topic that does not exist
/// (already deleted) is a no-op, so a repeated delete is harmless.
pub(crate) fn apply_delete_topic(t: TopicTables<'_>, topic: &str) -> Result<(), String> {
    if is_undeletable_topic(topic) {
        return Err(format!("The topic[{topic}] is conflict with system topic."));
    }
    t.topics.remove(topic);
    t.queues.remove(topic);
    drop_topic(t.offsets, topic);
    drop_topic(t.markers, topic);
    t.retention.queue_floor.remove(topic);
    for per_topic in t.retention.lost.values_mut() {
        per_topic.remove(topic);
    }
    t.retention.lost.retain(|_, per_topic| !per_topic.is_empty());
    t.locks.drop_topic(topic);
    Ok(())
}

/// Removes `topic` from a group → topic → queue table, and groups left empty.
fn drop_topic(table: &mut BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>, topic: &str) {
    for topics in table.values_mut() {
        topics.remove(topic);
    }
    table.retain(|_, topics| !topics.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_topics_are_undeletable_and_retry_and_dead_letter_topics_are_not() {
        for t in ["TBW102", "SCHEDULE_TOPIC_XXXX", "RMQ_SYS_TRANS_HALF_TOPIC", "RMQ_SYS_TRANS_OP_HALF_TOPIC", "rmq_sys_wheel_timer"] {
            assert!(is_undeletable_topic(t), "{t}");
        }
        assert!(is_undeletable_topic(crate::TIMER_TOPIC));
        assert!(is_undeletable_topic(crate::SCHEDULE_TOPIC));
        assert!(is_undeletable_topic(crate::TRANS_HALF_TOPIC));
        for t in ["T", "%RETRY%g", "%DLQ%g", "RMQ_SYS_X", "tbw102"] {
            assert!(!is_undeletable_topic(t), "{t}");
        }
    }

    #[test]
    fn the_group_table_is_bounded_and_changing_a_group_needs_no_room() {
        let mut groups = SubscriptionGroups::new();
        for i in 0..SUBSCRIPTION_GROUPS_MAX {
            apply_upsert(&mut groups, &SubscriptionGroupConfig::new(format!("g{i}"))).expect("below the limit");
        }
        assert_eq!(groups.len(), SUBSCRIPTION_GROUPS_MAX, "exactly at the limit");
        let e = apply_upsert(&mut groups, &SubscriptionGroupConfig::new("one-more")).unwrap_err();
        assert!(e.contains("SUBSCRIPTION_GROUPS_MAX 16384") && e.contains("one-more"), "{e}");
        assert!(!groups.contains_key("one-more"));
        let mut changed = SubscriptionGroupConfig::new("g7");
        changed.consume_enable = false;
        apply_upsert(&mut groups, &changed).expect("an existing group changes at the limit");
        assert!(!groups["g7"].consume_enable);
        assert!(apply_upsert(&mut groups, &SubscriptionGroupConfig::new("")).unwrap_err().contains("1..=255"));
    }
}
