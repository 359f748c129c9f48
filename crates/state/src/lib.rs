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
//! (delay levels and deliveries), [`txn`] (pending transactions), [`dedup`] (the window of recent message
//! ids), [`retention`] (the purge floor), [`locks`] (orderly consumers' queue leases), [`groups`] (subscription groups and topic deletion); [`offsets`] also holds the markers of server-side offset resets. [`command`] is the versioned log-body codec. Not here: openraft,
//! checkpoint and snapshot files, consume-queue files (all in `raftmq-raft`), and deciding *when* to
//! deliver (the leader's broker, which proposes entries).

pub mod clock;
pub mod command;
pub mod dedup;
pub mod error;
pub mod groups;
pub mod locks;
pub mod offsets;
pub mod queues;
pub mod retention;
pub mod schedule;
pub mod topics;
pub mod txn;
pub mod unit;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use clock::Clock;
pub use command::{
    produce_queue_len, Command, CommandResponse, DedupSettings, Delivery, HalfMessage, Message, MessagePosition, OffsetCommit, OffsetReset,
    Op, Produce, QueueAppend, QueueAppendResult, ResetMarker, Resolution, TopicConfig, DELIVERY_BYTES, OPS_HEADER_BYTES, OP_DEDUP_BYTES,
    PRODUCE_HEADER_BYTES, TOPIC_BYTES_MAX,
};
pub use dedup::{DedupWindow, Seen};
pub use error::PayloadError;
pub use groups::{is_undeletable_topic, DeleteGroup, SubscriptionGroupConfig, SubscriptionGroups, SUBSCRIPTION_GROUPS_MAX};
pub use locks::{Lease, LockRequest, QueueKey, QueueLocks, UnlockRequest};
pub use offsets::{ConsumerOffsets, ResetMarkers, RESET_MARKERS_MAX};
pub use queues::{ApplyError, QueueState, QueueStore};
pub use retention::{Retain, RetainPoint, Retention};
pub use schedule::{Schedule, SCHEDULE_TOPIC, TIMER_TOPIC};
pub use txn::{PendingTxn, Transactions, TRANS_CHECK_MAX_TIME_TOPIC, TRANS_HALF_TOPIC};
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
    /// Pending transactions (half messages not yet committed, rolled back or parked).
    pub transactions: Transactions,
    /// Recent client message ids.
    pub dedup: DedupWindow,
    /// The retention floor and the messages groups lost to it.
    pub retention: Retention,
    /// Offset resets the group has not taken yet, by group, topic, queue id (see [`offsets`]).
    pub reset_markers: ResetMarkers,
    /// Orderly consumers' queue leases (see [`locks`]).
    pub locks: QueueLocks,
    /// Subscription groups created by admin requests (see [`groups`]); last, so that checkpoint version 5
    /// is this layout without it.
    pub subscription_groups: SubscriptionGroups,
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
                CommandResponse::Produced(queues::apply_produce(&self.topics, &mut self.queues, parts, &mut queues::IndexAll, store)?)
            }
            Command::ProduceAt(p) => {
                self.clock.advance(p.time_ms);
                self.dedup.expire(self.clock.now_ms);
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
                let results = if p.ops.is_empty() {
                    queues::apply_produce(&self.topics, &mut self.queues, &p.queues, &mut &skip, store)?
                } else {
                    let mut ix = EntryOps::new(&p.ops, &skip, self.clock.now_ms, &mut self.transactions, &mut self.dedup);
                    queues::apply_produce(&self.topics, &mut self.queues, &p.queues, &mut ix, store)?
                };
                CommandResponse::Produced(results)
            }
            Command::CommitOffsets(commits) => {
                offsets::apply_commits(&mut self.consumer_offsets, &mut self.reset_markers, &self.topics, commits);
                CommandResponse::Done
            }
            Command::ResetOffsets(reset) => {
                match offsets::apply_reset(&mut self.consumer_offsets, &mut self.reset_markers, &self.topics, reset) {
                    Ok(()) => CommandResponse::Done,
                    Err(why) => CommandResponse::Refused(why),
                }
            }
            Command::ClearResetMarkers(ends) => {
                offsets::apply_clear(&mut self.reset_markers, ends);
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
            Command::SetDedupWindow(settings) => match self.dedup.set(*settings) {
                Ok(()) => CommandResponse::Done,
                Err(why) => CommandResponse::Refused(why),
            },
            Command::Retain(r) => match self.retention.apply(r, &mut self.queues, &self.consumer_offsets) {
                Ok(()) => CommandResponse::Done,
                Err(why) => CommandResponse::Refused(why),
            },
            Command::Lock(r) => {
                self.clock.advance(r.stamp_ms);
                CommandResponse::Locked(self.locks.lock(r, self.clock.now_ms))
            }
            Command::Unlock(r) => {
                self.clock.advance(r.stamp_ms);
                self.locks.unlock(r, self.clock.now_ms);
                CommandResponse::Done
            }
            Command::UpsertSubscriptionGroup(g) => match groups::apply_upsert(&mut self.subscription_groups, g) {
                Ok(()) => CommandResponse::Done,
                Err(why) => CommandResponse::Refused(why),
            },
            Command::DeleteSubscriptionGroup(d) => {
                groups::apply_delete_group(&mut self.subscription_groups, &mut self.consumer_offsets, &mut self.reset_markers, d);
                CommandResponse::Done
            }
            Command::DeleteTopic(topic) => {
                let tables = groups::TopicTables {
                    topics: &mut self.topics,
                    queues: &mut self.queues,
                    offsets: &mut self.consumer_offsets,
                    markers: &mut self.reset_markers,
                    retention: &mut self.retention,
                    locks: &mut self.locks,
                };
                match groups::apply_delete_topic(tables, topic) {
                    Ok(()) => CommandResponse::Done,
                    Err(why) => CommandResponse::Refused(why),
                }
            }
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

    /// The oldest commitlog offset replicated state still needs besides the staging queues: the oldest
    /// pending half message (retention keeps the log from there).
    pub fn oldest_pending_half(&self) -> Option<u64> {
        self.transactions.oldest_phys()
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
        self.dedup.check_invariants();
        self.locks.check_invariants();
        offsets::check_invariants(&self.consumer_offsets, &self.reset_markers);
    }

    /// The reset marker of a group's queue: the offset a server-side reset set, while the group has not
    /// taken it yet.
    pub fn reset_marker(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        offsets::marker(&self.reset_markers, group, topic, queue_id)
    }
}

/// How the ops of one produce entry act on its messages as they are indexed (see [`txn`] and [`dedup`]).
/// Rollbacks and check rounds act when the entry starts; de-duplication, half messages and commit or
/// discard copies act message by message, in entry order, so a key sent twice within one entry is
/// indexed once.
struct EntryOps<'a> {
    skip: &'a BTreeSet<(u32, u32)>,
    now_ms: i64,
    txns: &'a mut Transactions,
    dedup: &'a mut DedupWindow,
    keys: BTreeMap<(u32, u32), u128>,
    prepares: BTreeMap<(u32, u32), &'a HalfMessage>,
    /// Commit and discard copies: (part, index) → the half message they resolve.
    copies: BTreeMap<(u32, u32), u64>,
}

impl<'a> EntryOps<'a> {
    fn new(ops: &'a [Op], skip: &'a BTreeSet<(u32, u32)>, now_ms: i64, txns: &'a mut Transactions, dedup: &'a mut DedupWindow) -> Self {
        let mut e = EntryOps { skip, now_ms, txns, dedup, keys: BTreeMap::new(), prepares: BTreeMap::new(), copies: BTreeMap::new() };
        for op in ops {
            match op {
                Op::Dedup { part, index, key } => {
                    e.keys.insert((*part, *index), *key);
                }
                Op::Prepare { part, index, half } => {
                    e.prepares.insert((*part, *index), half);
                }
                Op::Resolve { half_phys, how: Resolution::Commit { part, index } | Resolution::Discard { part, index } } => {
                    e.copies.insert((*part, *index), *half_phys);
                }
                Op::Resolve { half_phys, how: Resolution::Rollback } => {
                    e.txns.remove(*half_phys);
                }
                Op::Checked { half_phys } => e.txns.checked(*half_phys, now_ms),
            }
        }
        e
    }
}

impl queues::Indexing for EntryOps<'_> {
    fn before(&mut self, part: u32, index: u32) -> Option<Option<MessagePosition>> {
        let at = (part, index);
        if self.skip.contains(&at) {
            return Some(None);
        }
        if let Some(half) = self.copies.get(&at) {
            if !self.txns.contains(*half) {
                return Some(None);
            }
        }
        let key = self.keys.get(&at)?;
        self.dedup.get(*key).map(|seen| Some(seen.position()))
    }

    fn indexed(&mut self, part: u32, index: u32, at: MessagePosition, size: u32) {
        let key = (part, index);
        if let Some(k) = self.keys.get(&key) {
            self.dedup.insert(self.now_ms, *k, Seen { queue_id: at.queue_id, queue_offset: at.queue_offset, phys_offset: at.phys_offset });
        }
        if let Some(half) = self.prepares.get(&key) {
            let txn = PendingTxn {
                half: (*half).clone(),
                half_queue_offset: at.queue_offset,
                size,
                stamped_ms: self.now_ms,
                checks: 0,
                last_check_ms: 0,
            };
            self.txns.prepare(at.phys_offset, txn);
        }
        if let Some(half) = self.copies.get(&key) {
            self.txns.remove(*half);
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
            Command::ProduceAt(Produce {
                time_ms: 5,
                queues: vec![part("X", 0), part("T", 2), part("T", 1)],
                deliveries: vec![],
                ops: vec![],
            }),
            &mut pos,
        );
        let CommandResponse::Produced(r) = s.apply(&cmd, &mut q).unwrap() else { panic!() };
        assert!(matches!(&r[0], QueueAppendResult::Rejected(w) if w.contains("X does not exist")));
        assert!(matches!(&r[1], QueueAppendResult::Rejected(w) if w.contains("out of range")));
        assert_eq!(
            r[2],
            QueueAppendResult::Stored(vec![MessagePosition { queue_id: 1, queue_offset: 0, phys_offset: 8, duplicate: false }]),
            "the third message of the entry"
        );
        assert_eq!(q.units.len(), 1);
        assert_eq!(s.clock.now_ms, 5);
    }

    #[test]
    fn retention_moves_min_offsets_to_the_floor_and_charges_groups_behind_it() {
        let mut s = BrokerState::default();
        let mut q = MemQueues::default();
        let mut pos = 0;
        s.apply(&Command::UpsertTopic(TopicConfig { name: "T".into(), read_queues: 2, write_queues: 2, perm: 6 }), &mut q).unwrap();
        for _ in 0..10 {
            let p = Produce {
                time_ms: 1,
                queues: vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg(0, 10)] }],
                ..Produce::default()
            };
            s.apply(&logged(Command::ProduceAt(p), &mut pos), &mut q).unwrap();
        }
        let commit = |group: &str, offset| {
            Command::CommitOffsets(vec![OffsetCommit { group: group.into(), topic: "T".into(), queue_id: 0, offset }])
        };
        s.apply(&commit("behind", 2), &mut q).unwrap();
        s.apply(&commit("ahead", 8), &mut q).unwrap();
        let retain = |index, pos, first: u64, last| {
            Command::Retain(Retain {
                point: RetainPoint { index, pos, decided_ms: 5, reason: 0 },
                queues: vec![("T".into(), 0, first), ("Gone".into(), 0, 3)],
                last,
            })
        };
        // The leader found offset 5 first at or after position 50; a queue of a topic that does not exist is
        // skipped.
        assert_eq!(s.apply(&retain(6, 50, 5, false), &mut q).unwrap(), CommandResponse::Done);
        assert_eq!(s.queues["T"][&0].min_offset, 5);
        assert_eq!(s.retention.floor, RetainPoint::default(), "the floor moves with the last entry only");
        assert_eq!(s.apply(&retain(6, 50, 5, true), &mut q).unwrap(), CommandResponse::Done, "the same list again is harmless");
        assert_eq!(s.retention.floor.index, 6);
        assert_eq!(s.retention.queue_floor("T", 0), 5);
        assert_eq!(s.retention.queue_floor("T", 1), 0, "a queue not listed is untouched");
        assert_eq!(s.retention.lost("behind", "T"), 3, "offsets 2, 3 and 4 were never consumed");
        assert_eq!(s.retention.lost("ahead", "T"), 0);
        // A floor that does not move forward is refused and changes nothing.
        let before = s.clone();
        assert!(
            matches!(s.apply(&retain(6, 50, 9, true), &mut q).unwrap(), CommandResponse::Refused(w) if w.contains("already at index 6"))
        );
        assert!(matches!(s.apply(&retain(9, 40, 9, true), &mut q).unwrap(), CommandResponse::Refused(_)));
        assert_eq!(s, before);
        // The next purge charges only what lies between the old and the new floor.
        assert_eq!(s.apply(&retain(9, 80, 8, true), &mut q).unwrap(), CommandResponse::Done);
        assert_eq!(s.retention.queue_floor("T", 0), 8);
        assert_eq!(s.retention.lost("behind", "T"), 6, "3 more: offsets 5, 6, 7");
        assert_eq!(s.retention.lost("ahead", "T"), 0);
        // Never past the end of the queue.
        assert_eq!(s.apply(&retain(20, 1000, 99, true), &mut q).unwrap(), CommandResponse::Done);
        assert_eq!(s.queues["T"][&0].min_offset, 10);
        assert_eq!(s.retention.lost("ahead", "T"), 2);
        assert_eq!(s.retention.purges, 3);
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
        s.apply(
            &logged(Command::ProduceAt(Produce { time_ms: 0, queues: vec![stage], deliveries: vec![], ops: vec![] }), &mut pos),
            &mut q,
        )
        .unwrap();
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
        s.apply(&Command::ProduceAt(Produce { time_ms: 64, queues: vec![], deliveries: vec![hop, hop], ops: vec![] }), &mut q).unwrap();
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
            ops: vec![],
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
        s.apply(
            &logged(Command::ProduceAt(Produce { time_ms: 1000, queues: vec![stage], deliveries: vec![], ops: vec![] }), &mut pos),
            &mut q,
        )
        .unwrap();
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
                ops: vec![],
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

    fn topic(s: &mut BrokerState, q: &mut MemQueues, name: &str, n: u32) {
        s.apply(&Command::UpsertTopic(TopicConfig { name: name.into(), read_queues: n, write_queues: n, perm: 6 }), q).unwrap();
    }

    fn half(real_topic: &str) -> HalfMessage {
        HalfMessage {
            producer_group: "PG".into(),
            real_topic: real_topic.into(),
            real_queue: 0,
            transaction_id: "TX".into(),
            immunity_ms: 0,
        }
    }

    /// Stores a half message at time `t`; returns its commitlog offset.
    fn prepare(s: &mut BrokerState, q: &mut MemQueues, pos: &mut u64, t: i64) -> u64 {
        let p = Produce {
            time_ms: t,
            queues: vec![QueueAppend { topic: TRANS_HALF_TOPIC.into(), queue_id: 0, messages: vec![msg(0, 5)] }],
            deliveries: vec![],
            ops: vec![Op::Prepare { part: 0, index: 0, half: half("T") }],
        };
        let CommandResponse::Produced(r) = s.apply(&logged(Command::ProduceAt(p), pos), q).unwrap() else { panic!() };
        let QueueAppendResult::Stored(at) = &r[0] else { panic!("{r:?}") };
        at[0].phys_offset
    }

    /// Ends the transaction at `half_phys` at time `t` (a commit carries its copy for T queue 0).
    fn resolve(s: &mut BrokerState, q: &mut MemQueues, pos: &mut u64, t: i64, half_phys: u64, how: Resolution) -> CommandResponse {
        let queues = match how {
            Resolution::Rollback => vec![],
            _ => vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg(0, 5)] }],
        };
        let p = Produce { time_ms: t, queues, deliveries: vec![], ops: vec![Op::Resolve { half_phys, how }] };
        s.apply(&logged(Command::ProduceAt(p), pos), q).unwrap()
    }

    #[test]
    fn a_half_message_is_pending_until_committed_once_and_never_visible_before() {
        let (mut s, mut q, mut pos) = (BrokerState::default(), MemQueues::default(), 0);
        topic(&mut s, &mut q, "T", 1);
        topic(&mut s, &mut q, TRANS_HALF_TOPIC, 1);
        let h = prepare(&mut s, &mut q, &mut pos, 100);
        let t = s.transactions.get(h).unwrap();
        assert_eq!((t.half_queue_offset, t.stamped_ms, t.checks, t.size), (0, 100, 0, 5));
        assert_eq!(s.queues.get("T").map_or(0, |qs| qs[&0].next_offset), 0, "a half message is not in its real queue");
        let commit = Resolution::Commit { part: 0, index: 0 };
        let r = resolve(&mut s, &mut q, &mut pos, 200, h, commit);
        assert!(matches!(&r, CommandResponse::Produced(v) if matches!(&v[0], QueueAppendResult::Stored(p) if p.len() == 1)), "{r:?}");
        assert!(s.transactions.is_empty());
        // The producer's END and its answer to a check both arrive: the second commit indexes nothing.
        let r = resolve(&mut s, &mut q, &mut pos, 300, h, commit);
        assert_eq!(r, CommandResponse::Produced(vec![QueueAppendResult::Stored(vec![])]));
        assert_eq!(s.queues["T"][&0].next_offset, 1, "committed exactly once");
    }

    #[test]
    fn a_rollback_discards_and_a_later_commit_is_a_no_op() {
        let (mut s, mut q, mut pos) = (BrokerState::default(), MemQueues::default(), 0);
        topic(&mut s, &mut q, "T", 1);
        topic(&mut s, &mut q, TRANS_HALF_TOPIC, 1);
        let h = prepare(&mut s, &mut q, &mut pos, 100);
        resolve(&mut s, &mut q, &mut pos, 200, h, Resolution::Rollback);
        assert!(s.transactions.is_empty());
        resolve(&mut s, &mut q, &mut pos, 300, h, Resolution::Commit { part: 0, index: 0 });
        assert_eq!(s.queues["T"][&0].next_offset, 0, "a rolled-back transaction never becomes visible");
        // A rollback and a commit in one entry: the rollback wins, whatever the op order.
        let h = prepare(&mut s, &mut q, &mut pos, 400);
        let p = Produce {
            time_ms: 500,
            queues: vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg(0, 5)] }],
            deliveries: vec![],
            ops: vec![
                Op::Resolve { half_phys: h, how: Resolution::Commit { part: 0, index: 0 } },
                Op::Resolve { half_phys: h, how: Resolution::Rollback },
            ],
        };
        s.apply(&logged(Command::ProduceAt(p), &mut pos), &mut q).unwrap();
        assert_eq!(s.queues["T"][&0].next_offset, 0);
        assert!(s.transactions.is_empty());
    }

    #[test]
    fn check_rounds_are_counted_and_a_commit_whose_topic_is_gone_keeps_it_pending() {
        let (mut s, mut q, mut pos) = (BrokerState::default(), MemQueues::default(), 0);
        topic(&mut s, &mut q, TRANS_HALF_TOPIC, 1);
        let h = prepare(&mut s, &mut q, &mut pos, 100);
        for t in [6_100, 66_100] {
            s.apply(&Command::ProduceAt(Produce { time_ms: t, ops: vec![Op::Checked { half_phys: h }], ..Produce::default() }), &mut q)
                .unwrap();
        }
        let p = s.transactions.get(h).unwrap();
        assert_eq!((p.checks, p.last_check_ms), (2, 66_100));
        // T does not exist: the copy is refused and the transaction is not lost.
        let r = resolve(&mut s, &mut q, &mut pos, 70_000, h, Resolution::Commit { part: 0, index: 0 });
        assert!(matches!(&r, CommandResponse::Produced(v) if matches!(&v[0], QueueAppendResult::Rejected(_))), "{r:?}");
        assert!(s.transactions.contains(h));
        // Parked after the last check: the copy goes to the parking topic, the transaction ends.
        topic(&mut s, &mut q, TRANS_CHECK_MAX_TIME_TOPIC, 1);
        let p = Produce {
            time_ms: 80_000,
            queues: vec![QueueAppend { topic: TRANS_CHECK_MAX_TIME_TOPIC.into(), queue_id: 0, messages: vec![msg(0, 5)] }],
            deliveries: vec![],
            ops: vec![Op::Resolve { half_phys: h, how: Resolution::Discard { part: 0, index: 0 } }],
        };
        s.apply(&logged(Command::ProduceAt(p), &mut pos), &mut q).unwrap();
        assert!(s.transactions.is_empty());
        assert_eq!(s.queues[TRANS_CHECK_MAX_TIME_TOPIC][&0].next_offset, 1);
        assert_eq!(s.oldest_pending_half(), None);
    }

    /// A send of one message to queue `queue` of T at `t` with de-duplication key `key`.
    fn keyed(t: i64, queue: u32, keys: &[u128]) -> Command {
        Command::ProduceAt(Produce {
            time_ms: t,
            queues: vec![QueueAppend { topic: "T".into(), queue_id: queue, messages: keys.iter().map(|_| msg(0, 3)).collect() }],
            deliveries: vec![],
            ops: keys.iter().enumerate().map(|(i, k)| Op::Dedup { part: 0, index: i as u32, key: *k }).collect(),
        })
    }

    #[test]
    fn a_retried_send_is_answered_with_the_original_position_and_stores_nothing() {
        let (mut s, mut q, mut pos) = (BrokerState::default(), MemQueues::default(), 0);
        topic(&mut s, &mut q, "T", 4);
        s.apply(&Command::SetDedupWindow(DedupSettings { window_ms: 120_000, keys_max: 1000 }), &mut q).unwrap();
        let first = s.apply(&logged(keyed(1_000, 2, &[42]), &mut pos), &mut q).unwrap();
        let CommandResponse::Produced(r) = &first else { panic!() };
        let QueueAppendResult::Stored(orig) = &r[0] else { panic!() };
        // The retry went to another queue (clients pick the next one): the original's queue is reported.
        let CommandResponse::Produced(r) = s.apply(&logged(keyed(50_000, 3, &[42]), &mut pos), &mut q).unwrap() else { panic!() };
        assert_eq!(r[0], QueueAppendResult::Stored(vec![MessagePosition { duplicate: true, ..orig[0] }]));
        assert_eq!(orig[0].queue_id, 2);
        assert_eq!(s.queues["T"].get(&3).map_or(0, |st| st.next_offset), 0, "nothing stored for the retry");
        // The same key twice in one entry (original and retry batched together): indexed once.
        let CommandResponse::Produced(r) = s.apply(&logged(keyed(60_000, 0, &[7, 7]), &mut pos), &mut q).unwrap() else { panic!() };
        let QueueAppendResult::Stored(p) = &r[0] else { panic!() };
        assert_eq!((p.len(), p[1].duplicate, p[1].queue_offset), (2, true, p[0].queue_offset));
        assert_eq!(s.queues["T"][&0].next_offset, 1);
        // After the window the id is forgotten and a send with it is stored again.
        s.apply(&logged(keyed(1_000 + 120_000 + 7_500 + 1, 2, &[42]), &mut pos), &mut q).unwrap();
        assert_eq!(s.queues["T"][&2].next_offset, 2);
    }

    #[test]
    fn a_retried_half_message_is_pending_once() {
        let (mut s, mut q, mut pos) = (BrokerState::default(), MemQueues::default(), 0);
        topic(&mut s, &mut q, TRANS_HALF_TOPIC, 1);
        s.apply(&Command::SetDedupWindow(DedupSettings { window_ms: 120_000, keys_max: 1000 }), &mut q).unwrap();
        for t in [100, 200] {
            let p = Produce {
                time_ms: t,
                queues: vec![QueueAppend { topic: TRANS_HALF_TOPIC.into(), queue_id: 0, messages: vec![msg(0, 5)] }],
                deliveries: vec![],
                ops: vec![Op::Dedup { part: 0, index: 0, key: 9 }, Op::Prepare { part: 0, index: 0, half: half("T") }],
            };
            s.apply(&logged(Command::ProduceAt(p), &mut pos), &mut q).unwrap();
        }
        assert_eq!(s.transactions.len(), 1);
        assert_eq!(s.queues[TRANS_HALF_TOPIC][&0].next_offset, 1);
    }

    fn commit(s: &mut BrokerState, q: &mut MemQueues, queue_id: u32, offset: u64) {
        let c = OffsetCommit { group: "g".into(), topic: "T".into(), queue_id, offset };
        assert_eq!(s.apply(&Command::CommitOffsets(vec![c]), q).unwrap(), CommandResponse::Done);
    }

    fn committed(s: &BrokerState, queue_id: u32) -> Option<u64> {
        s.consumer_offsets.get("g").and_then(|t| t.get("T")).and_then(|qs| qs.get(&queue_id)).copied()
    }

    fn reset(offsets: &[(u32, u64)]) -> Command {
        Command::ResetOffsets(OffsetReset { group: "g".into(), topic: "T".into(), offsets: offsets.to_vec() })
    }

    #[test]
    fn a_reset_sets_offsets_and_markers_and_stale_commits_are_ignored_while_marked() {
        let (mut s, mut q) = (BrokerState::default(), MemQueues::default());
        topic(&mut s, &mut q, "T", 2);
        commit(&mut s, &mut q, 0, 100);
        commit(&mut s, &mut q, 1, 80);
        assert_eq!(s.apply(&reset(&[(0, 40)]), &mut q).unwrap(), CommandResponse::Done);
        assert_eq!((committed(&s, 0), s.reset_marker("g", "T", 0)), (Some(40), Some(40)));
        assert_eq!(s.reset_marker("g", "T", 1), None, "queue 1 was not named");
        // The running consumer still commits the position it had before the reset: ignored.
        commit(&mut s, &mut q, 0, 100);
        commit(&mut s, &mut q, 0, 41);
        assert_eq!((committed(&s, 0), s.reset_marker("g", "T", 0)), (Some(40), Some(40)));
        // Queue 1 is not marked: its commits apply.
        commit(&mut s, &mut q, 1, 90);
        assert_eq!(committed(&s, 1), Some(90));
        // A commit of exactly the reset offset shows the group took it: the marker ends, commits apply again.
        commit(&mut s, &mut q, 0, 40);
        assert_eq!(s.reset_marker("g", "T", 0), None);
        commit(&mut s, &mut q, 0, 45);
        assert_eq!(committed(&s, 0), Some(45));
        assert!(s.reset_markers.is_empty(), "no empty maps are left behind");
    }

    #[test]
    fn a_clear_ends_only_a_marker_that_still_holds_its_offset() {
        let (mut s, mut q) = (BrokerState::default(), MemQueues::default());
        topic(&mut s, &mut q, "T", 2);
        s.apply(&reset(&[(0, 10), (1, 20)]), &mut q).unwrap();
        // A second reset of queue 0 before the group took the first.
        s.apply(&reset(&[(0, 5)]), &mut q).unwrap();
        let end = |queue_id, offset| ResetMarker { group: "g".into(), topic: "T".into(), queue_id, offset };
        // The leader's clear for the first reset arrives late: the newer marker stays.
        s.apply(&Command::ClearResetMarkers(vec![end(0, 10), end(1, 20)]), &mut q).unwrap();
        assert_eq!((s.reset_marker("g", "T", 0), s.reset_marker("g", "T", 1)), (Some(5), None));
        assert_eq!(committed(&s, 0), Some(5));
        s.apply(&Command::ClearResetMarkers(vec![end(0, 5)]), &mut q).unwrap();
        assert!(s.reset_markers.is_empty());
        // Clearing again, or a marker that never existed, changes nothing.
        let before = s.clone();
        s.apply(&Command::ClearResetMarkers(vec![end(0, 5), end(7, 1)]), &mut q).unwrap();
        assert_eq!(s, before);
    }

    #[test]
    fn a_reset_of_a_missing_topic_or_queue_or_a_repeated_queue_is_refused_whole() {
        let (mut s, mut q) = (BrokerState::default(), MemQueues::default());
        let r = s.apply(&reset(&[(0, 1)]), &mut q).unwrap();
        assert!(matches!(&r, CommandResponse::Refused(w) if w.contains("topic T does not exist")), "{r:?}");
        topic(&mut s, &mut q, "T", 2);
        for (offsets, why) in [(vec![(0, 1), (2, 1)], "queue 2 of topic T does not exist"), (vec![(1, 1), (1, 2)], "named twice")] {
            let r = s.apply(&reset(&offsets), &mut q).unwrap();
            assert!(matches!(&r, CommandResponse::Refused(w) if w.contains(why)), "{r:?}");
        }
        assert!(s.reset_markers.is_empty() && s.consumer_offsets.is_empty(), "nothing of a refused reset applies");
    }

    #[test]
    fn markers_are_bounded_by_reset_markers_max() {
        let (mut s, mut q) = (BrokerState::default(), MemQueues::default());
        let queues = 1024u32;
        let topics = (RESET_MARKERS_MAX as u32).div_ceil(queues);
        for t in 0..topics {
            let name = format!("T{t}");
            topic(&mut s, &mut q, &name, queues);
            let offsets = (0..queues).map(|i| (i, 1)).collect();
            let r = s.apply(&Command::ResetOffsets(OffsetReset { group: "g".into(), topic: name, offsets }), &mut q).unwrap();
            assert_eq!(r, CommandResponse::Done);
        }
        assert_eq!(offsets::marker_count(&s.reset_markers), RESET_MARKERS_MAX, "exactly at the limit");
        // Re-resetting marked queues adds no marker: allowed at the limit.
        let r =
            s.apply(&Command::ResetOffsets(OffsetReset { group: "g".into(), topic: "T0".into(), offsets: vec![(3, 0)] }), &mut q).unwrap();
        assert_eq!(r, CommandResponse::Done);
        // One marker more is refused, and names the limit.
        topic(&mut s, &mut q, "U", 1);
        let r =
            s.apply(&Command::ResetOffsets(OffsetReset { group: "g".into(), topic: "U".into(), offsets: vec![(0, 0)] }), &mut q).unwrap();
        assert!(matches!(&r, CommandResponse::Refused(w) if w.contains("RESET_MARKERS_MAX")), "{r:?}");
        assert_eq!(s.reset_marker("g", "U", 0), None);
        // Once a group takes a reset, there is room again.
        let c = OffsetCommit { group: "g".into(), topic: "T0".into(), queue_id: 0, offset: 1 };
        s.apply(&Command::CommitOffsets(vec![c]), &mut q).unwrap();
        let r =
            s.apply(&Command::ResetOffsets(OffsetReset { group: "g".into(), topic: "U".into(), offsets: vec![(0, 0)] }), &mut q).unwrap();
        assert_eq!(r, CommandResponse::Done);
    }

    #[test]
    fn markers_survive_a_checkpoint_round_trip() {
        let (mut s, mut q) = (BrokerState::default(), MemQueues::default());
        topic(&mut s, &mut q, "T", 2);
        s.apply(&reset(&[(1, 7)]), &mut q).unwrap();
        let mut back: BrokerState = bincode::deserialize(&bincode::serialize(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        commit(&mut back, &mut q, 1, 100);
        assert_eq!(committed(&back, 1), Some(7), "the restored replica still ignores stale commits");
    }

    /// Topic A with messages, offsets of two groups on A and B, a reset marker and a lease on A.
    fn with_a_consumed_topic() -> (BrokerState, MemQueues) {
        let (mut s, mut q) = (BrokerState::default(), MemQueues::default());
        topic(&mut s, &mut q, "A", 2);
        topic(&mut s, &mut q, "B", 1);
        let mut pos = 0;
        let produce = Command::ProduceAt(Produce {
            time_ms: 10,
            queues: vec![QueueAppend { topic: "A".into(), queue_id: 1, messages: vec![msg(1, 3), msg(2, 3)] }],
            ..Produce::default()
        });
        s.apply(&logged(produce, &mut pos), &mut q).unwrap();
        let c = |group: &str, topic: &str, offset| OffsetCommit { group: group.into(), topic: topic.into(), queue_id: 0, offset };
        s.apply(&Command::CommitOffsets(vec![c("g", "A", 1), c("g", "B", 4), c("h", "A", 2)]), &mut q).unwrap();
        s.apply(&Command::ResetOffsets(OffsetReset { group: "h".into(), topic: "A".into(), offsets: vec![(1, 0)] }), &mut q).unwrap();
        s.apply(&lock_cmd("g", "c1", &[0], 10, 100), &mut q).unwrap();
        (s, q)
    }

    #[test]
    fn deleting_a_topic_removes_its_config_queues_offsets_markers_and_leases_and_a_new_one_starts_at_zero() {
        let (mut s, mut q) = with_a_consumed_topic();
        assert_eq!(s.queues["A"][&1].next_offset, 2);
        assert_eq!(s.locks.len(), 1);
        assert_eq!(s.apply(&Command::DeleteTopic("A".into()), &mut q).unwrap(), CommandResponse::Done);
        assert!(!s.topics.contains_key("A") && !s.queues.contains_key("A"));
        assert_eq!(s.consumer_offsets.get("g").map(|t| t.keys().cloned().collect::<Vec<_>>()), Some(vec!["B".to_string()]));
        assert!(!s.consumer_offsets.contains_key("h"), "a group left with no offsets is gone");
        assert!(s.reset_markers.is_empty() && s.locks.is_empty());
        // A send to it now is refused like one to a topic never created.
        let mut pos = 100;
        let send = |s: &mut BrokerState, q: &mut MemQueues, pos: &mut u64| {
            let p = Command::ProduceAt(Produce {
                time_ms: 20,
                queues: vec![QueueAppend { topic: "A".into(), queue_id: 1, messages: vec![msg(3, 3)] }],
                ..Produce::default()
            });
            s.apply(&logged(p, pos), q).unwrap()
        };
        let r = send(&mut s, &mut q, &mut pos);
        assert!(
            matches!(&r, CommandResponse::Produced(v) if matches!(&v[0], QueueAppendResult::Rejected(w) if w.contains("does not exist")))
        );
        // A commit the leader proposed before the deletion and that is applied after it does not bring the
        // group's offset back.
        let late = OffsetCommit { group: "g".into(), topic: "A".into(), queue_id: 1, offset: 2 };
        s.apply(&Command::CommitOffsets(vec![late]), &mut q).unwrap();
        assert!(s.consumer_offsets.get("g").is_some_and(|t| !t.contains_key("A")));
        // Deleting it again changes nothing.
        let before = s.clone();
        assert_eq!(s.apply(&Command::DeleteTopic("A".into()), &mut q).unwrap(), CommandResponse::Done);
        assert_eq!(s, before);
        // Created again under the same name, its queues start at offset 0.
        topic(&mut s, &mut q, "A", 2);
        let CommandResponse::Produced(v) = send(&mut s, &mut q, &mut pos) else { panic!() };
        let QueueAppendResult::Stored(at) = &v[0] else { panic!("{v:?}") };
        assert_eq!(at[0].queue_offset, 0);
    }

    #[test]
    fn system_topics_are_not_deleted() {
        let (mut s, mut q) = (BrokerState::default(), MemQueues::default());
        for t in [SCHEDULE_TOPIC, TIMER_TOPIC, TRANS_HALF_TOPIC, "TBW102"] {
            topic(&mut s, &mut q, t, 1);
            let before = s.clone();
            let r = s.apply(&Command::DeleteTopic(t.into()), &mut q).unwrap();
            assert_eq!(r, CommandResponse::Refused(format!("The topic[{t}] is conflict with system topic.")));
            assert_eq!(s, before);
        }
    }

    #[test]
    fn groups_are_created_changed_and_deleted_with_or_without_their_offsets() {
        let (mut s, mut q) = with_a_consumed_topic();
        let mut g = SubscriptionGroupConfig::new("g");
        assert_eq!(s.apply(&Command::UpsertSubscriptionGroup(g.clone()), &mut q).unwrap(), CommandResponse::Done);
        g.consume_enable = false;
        s.apply(&Command::UpsertSubscriptionGroup(g.clone()), &mut q).unwrap();
        assert_eq!(s.subscription_groups.get("g"), Some(&g));
        let del = |group: &str, clean_offset| Command::DeleteSubscriptionGroup(DeleteGroup { group: group.into(), clean_offset });
        s.apply(&del("g", false), &mut q).unwrap();
        assert!(s.subscription_groups.is_empty());
        assert!(s.consumer_offsets.contains_key("g"), "without cleanOffset the offsets stay");
        // cleanOffset drops the offsets and reset markers of a group, also one that has no config.
        s.apply(&del("h", true), &mut q).unwrap();
        assert!(!s.consumer_offsets.contains_key("h") && s.reset_markers.is_empty());
        assert!(s.consumer_offsets.contains_key("g"));
        // Survives a checkpoint round trip.
        s.apply(&Command::UpsertSubscriptionGroup(g.clone()), &mut q).unwrap();
        let back: BrokerState = bincode::deserialize(&bincode::serialize(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    fn lock_key(queue_id: u32) -> QueueKey {
        QueueKey { topic: "A".into(), broker_name: "broker-a".into(), queue_id }
    }

    fn lock_cmd(group: &str, client: &str, ids: &[u32], stamp_ms: i64, locks_max: u64) -> Command {
        let queues = ids.iter().map(|i| lock_key(*i)).collect();
        Command::Lock(LockRequest { group: group.into(), client_id: client.into(), queues, stamp_ms, ttl_ms: 60_000, locks_max })
    }

    fn locked(r: CommandResponse) -> Vec<u32> {
        let CommandResponse::Locked(v) = r else { panic!("{r:?}") };
        v.into_iter().map(|k| k.queue_id).collect()
    }

    #[test]
    fn locks_are_decided_by_the_replicated_clock_and_survive_a_checkpoint() {
        let (mut s, mut q) = (BrokerState::default(), MemQueues::default());
        assert_eq!(locked(s.apply(&lock_cmd("g", "c1", &[0, 1], 10_000, 100), &mut q).unwrap()), vec![0, 1]);
        assert_eq!(s.clock.now_ms, 10_000, "a lock entry moves the replicated clock");
        // A produce entry moves time forward: c1's lease (until 70 000) is still live at 69 999.
        s.apply(&Command::ProduceAt(Produce { time_ms: 69_999, ..Produce::default() }), &mut q).unwrap();
        // A new leader whose wall clock is behind stamps an older time: the clock does not go back, and the
        // decision is made at the replicated time.
        assert!(locked(s.apply(&lock_cmd("g", "c2", &[0], 5_000, 100), &mut q).unwrap()).is_empty());
        assert_eq!(s.clock.now_ms, 69_999);
        // Restored from a checkpoint (a restarted node or a new leader), the table and its leases are the same.
        let mut back: BrokerState = bincode::deserialize(&bincode::serialize(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.locks.holder_at("g", &lock_key(1), back.clock.now_ms), Some("c1"));
        assert!(locked(back.apply(&lock_cmd("g", "c2", &[1], 69_999, 100), &mut q).unwrap()).is_empty(), "c1 keeps its lease");
        assert_eq!(locked(back.apply(&lock_cmd("g", "c2", &[1], 70_000, 100), &mut q).unwrap()), vec![1], "and loses it by the log's time");
        // Unlock ends only the caller's own leases.
        let unlock = |client: &str| {
            Command::Unlock(UnlockRequest { group: "g".into(), client_id: client.into(), queues: vec![lock_key(1)], stamp_ms: 70_001 })
        };
        assert_eq!(back.apply(&unlock("c1"), &mut q).unwrap(), CommandResponse::Done);
        assert_eq!(back.locks.holder_at("g", &lock_key(1), 70_001), Some("c2"));
        back.apply(&unlock("c2"), &mut q).unwrap();
        assert!(back.locks.is_empty(), "q0's lease expired at 70 000 and was dropped; q1 was unlocked");
    }

    /// Random commands over a few topics, including stamped produces with deliveries of staged messages
    /// (valid, early, repeated, out of order) and level-table changes.
    fn arb_command() -> impl Strategy<Value = Command> {
        let topic = prop_oneof![
            Just("A".to_string()),
            Just("B".to_string()),
            Just(SCHEDULE_TOPIC.to_string()),
            Just(TIMER_TOPIC.to_string()),
            Just(TRANS_HALF_TOPIC.to_string())
        ];
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
        // Ops naming messages and half offsets that may or may not exist (offsets are small in these logs).
        let op = (0u8..6, 0u32..3, 0u32..3, 0u64..4, 0u64..80).prop_map(|(kind, part, index, key, half_phys)| match kind {
            0 | 1 => Op::Dedup { part, index, key: u128::from(key) },
            2 => Op::Prepare { part, index, half: half(["A", "B"][index as usize % 2]) },
            3 => Op::Resolve { half_phys, how: Resolution::Commit { part, index } },
            4 => Op::Resolve { half_phys, how: if part == 0 { Resolution::Rollback } else { Resolution::Discard { part, index } } },
            _ => Op::Checked { half_phys },
        });
        prop_oneof![
            3 => (0i64..3000, proptest::collection::vec(part.clone(), 0..3), proptest::collection::vec(delivery, 0..3))
                .prop_map(|(time_ms, queues, deliveries)| Command::ProduceAt(Produce { time_ms, queues, deliveries, ops: vec![] })),
            2 => (0i64..3000, proptest::collection::vec(part.clone(), 0..3), proptest::collection::vec(op, 0..4))
                .prop_map(|(time_ms, queues, ops)| Command::ProduceAt(Produce { time_ms, queues, deliveries: vec![], ops })),
            1 => (0i64..2000, 1u64..6).prop_map(|(window_ms, keys_max)| Command::SetDedupWindow(DedupSettings { window_ms, keys_max })),
            1 => proptest::collection::vec(part, 0..2).prop_map(Command::Produce),
            1 => (topic.clone(), 1u32..4, 1u32..4).prop_map(|(name, r, w)| Command::UpsertTopic(TopicConfig { name, read_queues: r, write_queues: w, perm: 6 })),
            1 => ("[gh]", topic.clone(), 0u32..4, 0u64..10).prop_map(|(group, topic, queue_id, offset)| Command::CommitOffsets(vec![OffsetCommit { group, topic, queue_id, offset }])),
            1 => proptest::collection::vec(0u64..5000, 0..4).prop_map(Command::SetDelayLevels),
            1 => (1u64..40, 0u64..400, proptest::collection::vec(("[AB]", 0u32..4, 0u64..10), 0..3), any::<bool>())
                .prop_map(|(index, pos, queues, last)| Command::Retain(Retain { point: RetainPoint { index, pos, decided_ms: 0, reason: 0 }, queues, last })),
            1 => ("[gh]", prop_oneof![Just("A".to_string()), Just("B".to_string())], proptest::collection::vec((0u32..4, 0u64..10), 0..3))
                .prop_map(|(group, topic, offsets)| Command::ResetOffsets(OffsetReset { group, topic, offsets })),
            1 => ("[gh]", prop_oneof![Just("A".to_string()), Just("B".to_string())], 0u32..4, 0u64..10)
                .prop_map(|(group, topic, queue_id, offset)| Command::ClearResetMarkers(vec![ResetMarker { group, topic, queue_id, offset }])),
            // Locks and unlocks by a few clients of two groups at stamps around the produce entries' (expiry,
            // renewal, a full table at a small locksMax, stamps below the clock).
            2 => ("[gh]", "c[12]", proptest::collection::vec(0u32..4, 0..4), 0i64..3000, 1i64..1500, 0u64..5)
                .prop_map(|(group, client_id, ids, stamp_ms, ttl_ms, locks_max)| Command::Lock(LockRequest {
                    group, client_id, queues: ids.into_iter().map(lock_key).collect(), stamp_ms, ttl_ms, locks_max })),
            1 => ("[gh]", "c[12]", proptest::collection::vec(0u32..4, 0..3), 0i64..3000)
                .prop_map(|(group, client_id, ids, stamp_ms)| Command::Unlock(UnlockRequest {
                    group, client_id, queues: ids.into_iter().map(lock_key).collect(), stamp_ms })),
            // Topic deletion (system topics are refused), recreation by a later upsert, and groups.
            1 => topic.clone().prop_map(Command::DeleteTopic),
            1 => ("[gh]", any::<bool>()).prop_map(|(group, consume_enable)| Command::UpsertSubscriptionGroup(
                SubscriptionGroupConfig { consume_enable, ..SubscriptionGroupConfig::new(group) })),
            1 => ("[gh]", any::<bool>()).prop_map(|(group, clean_offset)| Command::DeleteSubscriptionGroup(DeleteGroup { group, clean_offset })),
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
