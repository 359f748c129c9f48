//! The Raft group's type configuration. The entry payload — [`Command`] and its versioned log-body codec —
//! lives in `raftmq-state`, with what applying it does; it is re-exported here for the crates above.

use std::io::Cursor;

pub use raftmq_state::command::*;
pub use raftmq_state::dedup::{Seen, DEDUP_KEYS_MAX, DEDUP_WINDOW_MS_MAX};
pub use raftmq_state::groups::{is_undeletable_topic, SubscriptionGroups, GROUP_NAME_BYTES_MAX, SUBSCRIPTION_GROUPS_MAX};
pub use raftmq_state::offsets::{marker_count, RESET_MARKERS_MAX};
pub use raftmq_state::retention::{retain_queue_bytes, Retain, RetainPoint};
pub use raftmq_state::schedule::{
    format_delay_levels, parse_delay_levels, timer_level_delay_ms, timer_level_for, DEFAULT_DELAY_LEVELS, SCHEDULE_TOPIC, TIMER_LEVELS,
    TIMER_TICK_MS, TIMER_TOPIC,
};
pub use raftmq_state::txn::{PendingTxn, TRANS_CHECK_MAX_TIME_TOPIC, TRANS_HALF_TOPIC};

openraft::declare_raft_types!(
    /// openraft type configuration of a raftmq broker group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

/// Node id of a group member. Never reused for a wiped node.
pub type NodeId = u64;
/// The running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader node, index).
pub type LogId = openraft::LogId<NodeId>;
/// Address book entry of a member (its Raft TCP address).
pub type Node = openraft::BasicNode;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Bytes of `cmd` inside an entry on the Raft wire (bincode), which the transport frames.
    fn wire_len(cmd: &Command) -> usize {
        let entry = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(u64::MAX, u64::MAX), u64::MAX),
            payload: openraft::EntryPayload::Normal(cmd.clone()),
        };
        bincode::serialized_size(&entry).unwrap() as usize
    }

    #[test]
    fn an_entry_takes_at_most_twice_its_log_size_on_the_wire() {
        // The shapes that expand most: empty messages, one-message queues with one-byte topics, empty queues.
        let msg = |len: usize| Message { tags_code: -1, data: Bytes::from(vec![1u8; len]), phys_offset: None };
        let at = |queues| Command::ProduceAt(Produce { time_ms: i64::MAX, queues, deliveries: vec![], ops: vec![] });
        let shapes = [
            at(vec![QueueAppend { topic: "t".into(), queue_id: 1, messages: (0..1000).map(|_| msg(0)).collect() }]),
            at((0..1000).map(|_| QueueAppend { topic: "t".into(), queue_id: 1, messages: vec![msg(0)] }).collect()),
            at((0..1000).map(|_| QueueAppend { topic: String::new(), queue_id: 1, messages: vec![] }).collect()),
            at(vec![]),
            at(vec![QueueAppend { topic: "T".repeat(127), queue_id: 1, messages: vec![msg(1 << 20)] }]),
            Command::ProduceAt(Produce {
                time_ms: 1,
                queues: vec![QueueAppend { topic: "t".into(), queue_id: 1, messages: (0..1000).map(|_| msg(0)).collect() }],
                deliveries: (0..1000)
                    .map(|i| Delivery {
                        source: Source::Level,
                        schedule_queue: 1,
                        staged_offset: i,
                        due_ms: 1,
                        action: Action::Copy { part: 0, index: i as u32 },
                    })
                    .collect(),
                ops: vec![],
            }),
            // The op shapes whose wire form is largest against their log form: many tiny ones.
            Command::ProduceAt(Produce {
                time_ms: 1,
                queues: vec![QueueAppend { topic: "t".into(), queue_id: 1, messages: (0..1000).map(|_| msg(0)).collect() }],
                deliveries: vec![],
                ops: (0..1000u32)
                    .flat_map(|i| {
                        [
                            Op::Dedup { part: 0, index: i, key: u128::from(i) },
                            Op::Checked { half_phys: u64::from(i) },
                            Op::Resolve { half_phys: 1, how: Resolution::Rollback },
                            Op::Prepare {
                                part: 0,
                                index: i,
                                half: HalfMessage {
                                    producer_group: String::new(),
                                    real_topic: String::new(),
                                    real_queue: 0,
                                    transaction_id: String::new(),
                                    immunity_ms: 0,
                                },
                            },
                        ]
                    })
                    .collect(),
            }),
            Command::ProduceAt(Produce {
                time_ms: 1,
                queues: vec![],
                deliveries: (0..1000)
                    .map(|i| Delivery {
                        source: Source::Timer,
                        schedule_queue: 1,
                        staged_offset: i,
                        due_ms: 1,
                        action: Action::Move { to_queue: 0, eligible_ms: 2, phys_offset: 3, size: 4 },
                    })
                    .collect(),
                ops: vec![],
            }),
        ];
        for cmd in &shapes {
            let (log, wire) = (cmd.encoded_len(), wire_len(cmd));
            assert!(wire <= 2 * log + 64, "{log} log bytes take {wire} on the wire");
        }
    }
}
