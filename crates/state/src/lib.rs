//! What a committed entry does: the deterministic replicated state of a raftmq broker group.
//!
//! [`BrokerState::apply`] takes one committed [`Command`] and changes topics, queues, consumer offsets, the
//! replicated clock and the schedule, returning the response the proposer sees. It has no I/O of its own —
//! consume-queue units are written through the narrow [`QueueStore`] trait — and no clock: time enters only
//! as the stamp a leader put into a produce entry ([`clock`]). It iterates only ordered maps. Two replicas
//! that apply the same entries to the same state therefore end in the same state with the same responses,
//! which the property test at the end of this file checks, including across a checkpoint restore.
//!
//! One module per record kind: [`queues`] (produce), [`topics`], [`offsets`], [`clock`], [`schedule`]
//! (delay levels and deliveries). [`command`] is the versioned log-body codec. Not here: openraft,
//! checkpoint and snapshot files, consume-queue files (all in `raftmq-raft`), and deciding *when* to
//! deliver (the leader's broker, which proposes entries).

pub mod clock;
pub mod command;
pub mod error;
pub mod offsets;
pub mod queues;
pub mod schedule;
pub mod topics;
pub mod unit;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use clock::Clock;
pub use command::{
    produce_queue_len, Command, CommandResponse, Delivery, Message, MessagePosition, OffsetCommit, Produce, QueueAppend, QueueAppendResult,
    TopicConfig, DELIVERY_BYTES, PRODUCE_HEADER_BYTES, TOPIC_BYTES_MAX,
};
pub use error::PayloadError;
pub use offsets::ConsumerOffsets;
pub use queues::{ApplyError, QueueState, QueueStore};
pub use schedule::{Schedule, SCHEDULE_TOPIC, TIMER_TOPIC};
pub use unit::{CqUnit, CQ_UNIT_LEN};

/// Offsets `from..to` of a staging queue hold messages not delivered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undelivered {
    /// The staging topic ([`SCHEDULE_TOPIC`] or [`TIMER_TOPIC`]).
    pub topic: &'static str,
    /// Its queue.
    pub queue: u32,
    /// First undelivered offset.
    pub from: u64,
    /// End of the queue.
    pub to: u64,
    /// Units point into the log in increasing order (a delay level: its head is its oldest message); a
    /// timer line's moved units are not.
    pub in_log_order: bool,
}

/// The replicated broker state: everything a checkpoint or snapshot carries besides Raft's own bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerState {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicConfig>,
    /// Queue states by topic, then queue id.
    pub queues: BTreeMap<String, BTreeMap<u32, QueueState>>,
    /// Consumer offsets by group, topic, queue id.
    pub consumer_offsets: ConsumerOffsets,
    /// The replicated clock (newest stamped time).
    pub clock: Clock,
    /// Delay levels and delivery cursors.
    pub schedule: Schedule,
}

impl BrokerState {
    /// Applies one committed command. Produce entries must have been read back from the log (every
    /// message's `phys_offset` set).
    ///
    /// # Errors
    /// [`ApplyError`] when the queue store fails or a produce entry lacks physical offsets: the caller must
    /// stop applying. Requests the state refuses are responses, not errors.
    pub fn apply<S: QueueStore>(&mut self, cmd: &Command, store: &mut S) -> Result<CommandResponse, ApplyError<S::Error>> {
        let resp = match cmd {
            Command::Produce(parts) => {
                CommandResponse::Produced(queues::apply_produce(&self.topics, &mut self.queues, parts, &BTreeSet::new(), store)?)
            }
            Command::ProduceAt(p) => {
                self.clock.advance(p.time_ms);
                let topics = &self.topics;
                let indexable = |part: u32, index: u32| {
                    p.queues.get(part as usize).is_some_and(|qa| {
                        (index as usize) < qa.messages.len() && topics.get(&qa.topic).is_some_and(|t| qa.queue_id < t.write_queues)
                    })
                };
                let (skip, moves) = self.schedule.accept(
                    &p.deliveries,
                    self.clock.now_ms,
                    self.queues.get(SCHEDULE_TOPIC),
                    self.queues.get(TIMER_TOPIC),
                    indexable,
                );
                if !moves.is_empty() {
                    queues::apply_moves(&mut self.queues, TIMER_TOPIC, &moves, store)?;
                }
                CommandResponse::Produced(queues::apply_produce(&self.topics, &mut self.queues, &p.queues, &skip, store)?)
            }
            Command::CommitOffsets(commits) => {
                offsets::apply_commits(&mut self.consumer_offsets, commits);
                CommandResponse::Done
            }
            Command::UpsertTopic(t) => {
                topics::apply_upsert(&mut self.topics, &mut self.queues, t);
                CommandResponse::Done
            }
            Command::SetDelayLevels(levels) => match self.schedule.set_levels(levels) {
                Ok(()) => CommandResponse::Done,
                Err(why) => CommandResponse::Refused(why),
            },
        };
        #[cfg(debug_assertions)]
        self.check_invariants();
        Ok(resp)
    }

    /// Messages staged in schedule queue `q` and not delivered yet.
    pub fn scheduled_pending(&self, q: u32) -> u64 {
        let stored = self.queues.get(SCHEDULE_TOPIC).and_then(|qs| qs.get(&q)).map_or(0, |s| s.next_offset);
        stored.saturating_sub(self.schedule.cursor(q))
    }

    /// Every staging queue holding messages not delivered yet: what retention must keep.
    pub fn undelivered(&self) -> Vec<Undelivered> {
        let mut out = Vec::new();
        for (topic, cursors, in_log_order) in
            [(SCHEDULE_TOPIC, &self.schedule.cursors, true), (TIMER_TOPIC, &self.schedule.timer_cursors, false)]
        {
            for (q, st) in self.queues.get(topic).into_iter().flatten() {
                let from = cursors.get(q).copied().unwrap_or(0);
                if from < st.next_offset {
                    out.push(Undelivered { topic, queue: *q, from, to: st.next_offset, in_log_order });
                }
            }
        }
        out
    }

    /// Timer messages not delivered yet (each sits in exactly one timer queue).
    pub fn timers_pending(&self) -> u64 {
        self.queues
            .get(TIMER_TOPIC)
            .map(|qs| qs.iter().map(|(q, st)| st.next_offset.saturating_sub(self.schedule.timer_cursor(*q))).sum())
            .unwrap_or(0)
    }

    /// Cheap structural checks run after every apply in debug builds.
    ///
    /// # Panics
    /// When a delivery cursor passed the end of its queue (an `apply` bug).
    pub fn check_invariants(&self) {
        for (topic, cursors) in [(SCHEDULE_TOPIC, &self.schedule.cursors), (TIMER_TOPIC, &self.schedule.timer_cursors)] {
            for (q, c) in cursors {
                let stored = self.queues.get(topic).and_then(|qs| qs.get(q)).map_or(0, |s| s.next_offset);
                assert!(*c <= stored, "{topic} queue {q}: cursor {c} past the {stored} staged messages");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// An in-memory queue store that also records the order of writes.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct MemQueues {
        units: BTreeMap<(String, u32), BTreeMap<u64, CqUnit>>,
        published: BTreeMap<(String, u32), u64>,
    }

    impl QueueStore for MemQueues {
        type Error = std::convert::Infallible;
        fn write(&mut self, topic: &str, queue_id: u32, _: QueueState, at: u64, unit: CqUnit) -> Result<(), Self::Error> {
            self.units.entry((topic.to_string(), queue_id)).or_default().insert(at, unit);
            Ok(())
        }
        fn publish(&mut self, topic: &str, queue_id: u32, next: u64) {
            self.published.insert((topic.to_string(), queue_id), next);
        }
    }

    /// A produce command as read back from a log: physical offsets assigned from `next_pos`.
    fn logged(mut cmd: Command, next_pos: &mut u64) -> Command {
        let parts = match &mut cmd {
            Command::Produce(p) => p,
            Command::ProduceAt(p) => &mut p.queues,
            _ => return cmd,
        };
        for m in parts.iter_mut().flat_map(|q| q.messages.iter_mut()) {
            m.phys_offset = Some(*next_pos);
            *next_pos += m.data.len() as u64 + 1;
        }
        cmd
    }

    fn msg(tags_code: i64, len: usize) -> Message {
        Message { tags_code, data: Bytes::from(vec![7u8; len]), phys_offset: None }
    }

    #[test]
    fn a_produce_to_a_missing_topic_or_queue_is_rejected_and_indexes_nothing() {
        let mut s = BrokerState::default();
        let mut q = MemQueues::default();
        let mut pos = 0;
        let part = |topic: &str, qid| QueueAppend { topic: topic.into(), queue_id: qid, messages: vec![msg(1, 3)] };
        s.apply(&Command::UpsertTopic(TopicConfig { name: "T".into(), read_queues: 2, write_queues: 2, perm: 6 }), &mut q).unwrap();
        let cmd = logged(
            Command::ProduceAt(Produce { time_ms: 5, queues: vec![part("X", 0), part("T", 2), part("T", 1)], deliveries: vec![] }),
            &mut pos,
        );
        let CommandResponse::Produced(r) = s.apply(&cmd, &mut q).unwrap() else { panic!() };
        assert!(matches!(&r[0], QueueAppendResult::Rejected(w) if w.contains("X does not exist")));
        assert!(matches!(&r[1], QueueAppendResult::Rejected(w) if w.contains("out of range")));
        assert_eq!(
            r[2],
            QueueAppendResult::Stored(vec![MessagePosition { queue_offset: 0, phys_offset: 8 }]),
            "the third message of the entry"
        );
        assert_eq!(q.units.len(), 1);
        assert_eq!(s.clock.now_ms, 5);
    }

    #[test]
    fn an_unlogged_produce_is_an_error_not_a_guess() {
        let mut s = BrokerState::default();
        let mut q = MemQueues::default();
        s.apply(&Command::UpsertTopic(TopicConfig { name: "T".into(), read_queues: 1, write_queues: 1, perm: 6 }), &mut q).unwrap();
        let cmd = Command::Produce(vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg(0, 1)] }]);
        assert!(matches!(s.apply(&cmd, &mut q), Err(ApplyError::Unlogged)));
    }

    #[test]
    fn time_never_goes_back_and_legacy_entries_do_not_move_it() {
        let mut s = BrokerState::default();
        let mut q = MemQueues::default();
        for (t, want) in [(100, 100), (50, 100), (200, 200)] {
            s.apply(&Command::ProduceAt(Produce { time_ms: t, ..Produce::default() }), &mut q).unwrap();
            assert_eq!(s.clock.now_ms, want);
        }
        s.apply(&Command::Produce(vec![]), &mut q).unwrap();
        assert_eq!(s.clock.now_ms, 200);
    }

    #[test]
    fn a_bad_level_table_is_refused_and_the_old_one_stays() {
        let mut s = BrokerState::default();
        let mut q = MemQueues::default();
        assert_eq!(s.apply(&Command::SetDelayLevels(vec![1000, 2000]), &mut q).unwrap(), CommandResponse::Done);
        let r = s.apply(&Command::SetDelayLevels(vec![]), &mut q).unwrap();
        assert!(matches!(r, CommandResponse::Refused(w) if w.contains("empty")));
        assert_eq!(s.schedule.delay_levels(), vec![1000, 2000]);
    }

    #[test]
    fn a_timer_hops_by_reference_and_is_copied_once_when_due() {
        let mut s = BrokerState::default();
        let mut q = MemQueues::default();
        let mut pos = 0;
        for (name, n) in [("T", 1), (TIMER_TOPIC, schedule::TIMER_LEVELS)] {
            s.apply(&Command::UpsertTopic(TopicConfig { name: name.into(), read_queues: n, write_queues: n, perm: 6 }), &mut q).unwrap();
        }
        // Staged at t=0 for T=100: queue 2 (64 ms), eligible at 64.
        let stage = QueueAppend { topic: TIMER_TOPIC.into(), queue_id: 2, messages: vec![msg(64, 10)] };
        s.apply(&logged(Command::ProduceAt(Produce { time_ms: 0, queues: vec![stage], deliveries: vec![] }), &mut pos), &mut q).unwrap();
        let staged = q.units[&(TIMER_TOPIC.to_string(), 2)][&0];
        assert_eq!(s.timers_pending(), 1);
        // At 64, 36 ms remain: move to queue 1 (32 ms), eligible at 96; same bytes.
        let hop = Delivery {
            source: command::Source::Timer,
            schedule_queue: 2,
            staged_offset: 0,
            due_ms: 64,
            action: command::Action::Move { to_queue: 1, eligible_ms: 96, phys_offset: staged.phys_offset, size: staged.size },
        };
        s.apply(&Command::ProduceAt(Produce { time_ms: 64, queues: vec![], deliveries: vec![hop, hop] }), &mut q).unwrap();
        assert_eq!(q.units[&(TIMER_TOPIC.to_string(), 1)][&0], CqUnit { tags_code: 96, ..staged });
        assert_eq!((s.timers_pending(), s.schedule.timer_cursor(2)), (1, 1), "moved once, still pending");
        // At 100 it is due: copied into T, no longer pending.
        let copy = Delivery {
            source: command::Source::Timer,
            schedule_queue: 1,
            staged_offset: 0,
            due_ms: 100,
            action: command::Action::Copy { part: 0, index: 0 },
        };
        let deliver = Produce {
            time_ms: 100,
            queues: vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg(0, 10)] }],
            deliveries: vec![copy],
        };
        s.apply(&logged(Command::ProduceAt(deliver.clone()), &mut pos), &mut q).unwrap();
        s.apply(&logged(Command::ProduceAt(deliver), &mut pos), &mut q).unwrap();
        assert_eq!(s.queues["T"][&0].next_offset, 1, "copied once");
        assert_eq!(s.timers_pending(), 0);
    }

    #[test]
    fn a_delivered_copy_is_indexed_once_into_its_real_queue() {
        let mut s = BrokerState::default();
        let mut q = MemQueues::default();
        let mut pos = 0;
        for (name, n) in [("T", 1), (SCHEDULE_TOPIC, 18)] {
            s.apply(&Command::UpsertTopic(TopicConfig { name: name.into(), read_queues: n, write_queues: n, perm: 6 }), &mut q).unwrap();
        }
        // Staged at t=1000 with level 3 (10 s): due 11000.
        let stage = QueueAppend { topic: SCHEDULE_TOPIC.into(), queue_id: 2, messages: vec![msg(11_000, 4)] };
        s.apply(&logged(Command::ProduceAt(Produce { time_ms: 1000, queues: vec![stage], deliveries: vec![] }), &mut pos), &mut q).unwrap();
        assert_eq!(s.scheduled_pending(2), 1);
        let deliver = |t| {
            Command::ProduceAt(Produce {
                time_ms: t,
                queues: vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg(0, 4)] }],
                deliveries: vec![Delivery {
                    source: command::Source::Level,
                    schedule_queue: 2,
                    staged_offset: 0,
                    due_ms: 11_000,
                    action: command::Action::Copy { part: 0, index: 0 },
                }],
            })
        };
        // Early: refused, nothing indexed into T.
        let r = s.apply(&logged(deliver(10_999), &mut pos), &mut q).unwrap();
        assert_eq!(r, CommandResponse::Produced(vec![QueueAppendResult::Stored(vec![])]));
        assert_eq!(s.queues["T"][&0].next_offset, 0);
        // Into a queue the topic does not have: refused, and the message stays pending (not lost).
        let mut wrong_queue = deliver(11_000);
        if let Command::ProduceAt(p) = &mut wrong_queue {
            p.queues[0].queue_id = 7;
        }
        s.apply(&logged(wrong_queue, &mut pos), &mut q).unwrap();
        assert_eq!(s.scheduled_pending(2), 1, "a copy that cannot be indexed does not take the message");
        // Due: indexed; a second proposal of the same delivery is not.
        s.apply(&logged(deliver(11_000), &mut pos), &mut q).unwrap();
        s.apply(&logged(deliver(12_000), &mut pos), &mut q).unwrap();
        assert_eq!(s.queues["T"][&0].next_offset, 1);
        assert_eq!(s.scheduled_pending(2), 0);
    }

    /// Random commands over a few topics, including stamped produces with deliveries of staged messages
    /// (valid, early, repeated, out of order) and level-table changes.
    fn arb_command() -> impl Strategy<Value = Command> {
        let topic =
            prop_oneof![Just("A".to_string()), Just("B".to_string()), Just(SCHEDULE_TOPIC.to_string()), Just(TIMER_TOPIC.to_string())];
        let part =
            (topic.clone(), 0u32..4, proptest::collection::vec((any::<i16>(), 0usize..8), 0..4)).prop_map(|(topic, queue_id, ms)| {
                QueueAppend { topic, queue_id, messages: ms.into_iter().map(|(t, l)| msg(t as i64, l)).collect() }
            });
        let delivery = (any::<bool>(), 0u32..3, 0u64..6, 0i64..3000, 0u32..3, 0u32..3, any::<bool>(), 0i64..3000).prop_map(
            |(timer, schedule_queue, staged_offset, due_ms, part, index, mv, eligible_ms)| Delivery {
                source: if timer { command::Source::Timer } else { command::Source::Level },
                schedule_queue,
                staged_offset,
                due_ms,
                action: if mv {
                    command::Action::Move { to_queue: part, eligible_ms, phys_offset: staged_offset * 7, size: index }
                } else {
                    command::Action::Copy { part, index }
                },
            },
        );
        prop_oneof![
            3 => (0i64..3000, proptest::collection::vec(part.clone(), 0..3), proptest::collection::vec(delivery, 0..3))
                .prop_map(|(time_ms, queues, deliveries)| Command::ProduceAt(Produce { time_ms, queues, deliveries })),
            1 => proptest::collection::vec(part, 0..2).prop_map(Command::Produce),
            1 => (topic.clone(), 1u32..4, 1u32..4).prop_map(|(name, r, w)| Command::UpsertTopic(TopicConfig { name, read_queues: r, write_queues: w, perm: 6 })),
            1 => ("[gh]", topic, 0u32..4, 0u64..10).prop_map(|(group, topic, queue_id, offset)| Command::CommitOffsets(vec![OffsetCommit { group, topic, queue_id, offset }])),
            1 => proptest::collection::vec(0u64..5000, 0..4).prop_map(Command::SetDelayLevels),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn two_replicas_agree_also_across_a_checkpoint_restore(cmds in proptest::collection::vec(arb_command(), 1..60), cut in 0usize..60) {
            let mut pos = 0;
            let logged: Vec<Command> = cmds.into_iter().map(|c| logged(c, &mut pos)).collect();
            let cut = cut.min(logged.len());
            let (mut a, mut qa) = (BrokerState::default(), MemQueues::default());
            let (mut b, mut qb) = (BrokerState::default(), MemQueues::default());
            let mut ra = Vec::new();
            let mut rb = Vec::new();
            for c in &logged {
                ra.push(a.apply(c, &mut qa).unwrap());
            }
            for c in &logged[..cut] {
                rb.push(b.apply(c, &mut qb).unwrap());
            }
            // Replica b restarts from a checkpoint of its state (units already on disk survive).
            let bytes = bincode::serialize(&b).unwrap();
            let mut b: BrokerState = bincode::deserialize(&bytes).unwrap();
            for c in &logged[cut..] {
                rb.push(b.apply(c, &mut qb).unwrap());
            }
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(qa, qb);
            a.check_invariants();
        }
    }
}
