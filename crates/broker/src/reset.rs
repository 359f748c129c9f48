//! Server-side consumer offset resets (RocketMQ 5's `useServerSideResetOffset`): INVOKE_BROKER_TO_RESET_OFFSET
//! (222) and what a reset does to pulls until the group has taken it.
//!
//! The leader decides: it computes each queue's new offset from its consume queues (by store time, −1 =
//! the max offset, or an explicit offset for one queue) after a read barrier, and proposes ONE
//! [`Command::ResetOffsets`] entry that sets the group's offsets and a reset marker per queue
//! (`raftmq_state::offsets`). Every replica applies it the same way; while a queue is marked, offset
//! commits for it are ignored by `apply` (stale commits from before the reset cannot undo it).
//!
//! A pull on a marked queue at another offset is answered 21 PULL_OFFSET_MOVED with nextBeginOffset = the
//! reset offset, by the quorum-confirmed leader only (like every answer that moves a consumer; other members
//! answer "retry" pointing at brokerId 0). A pull AT the reset offset is served normally — the consumer has
//! followed — after the leader has replicated [`Command::ClearResetMarkers`] for that marker (so the
//! consumer's next pull is not sent back); `apply` also ends a marker when the group commits exactly its
//! offset. Markers are replicated, so a new
//! leader keeps answering 21 until the group follows; a lost 21 answer is simply given again.
//!
//! Not here: pushing RESET_CONSUMER_CLIENT_OFFSET (220) to consumers — every client follows 21, so it is
//! not needed (docs/protocol.md).

use raftmq_net::Response;
use raftmq_raft::node::WriteError;
use raftmq_raft::types::{marker_count, Command, CommandResponse, OffsetReset, ResetMarker, RESET_MARKERS_MAX};
use raftmq_remoting::body::{MessageQueue, ResetOffsetBody};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::{PullMessageResponseHeader, ResetOffsetRequestHeader};
use raftmq_remoting::ResponseCode;
use tracing::{debug, info};

use crate::broker::BrokerInner;
use crate::processor::{header, ok, reply, Reply};
use crate::topics::validate_group;

/// What a pull on a queue must do because of a reset marker.
pub(crate) enum PullGate {
    /// Not marked, or the pull is at the reset offset: serve it.
    Serve,
    /// Answer with this (21 to the reset offset, or "retry at the leader").
    Answer(Reply),
}

fn pull_answer(req: &RemotingCommand, code: ResponseCode, next: u64, min: u64, max: u64, remark: String) -> Reply {
    let rh = PullMessageResponseHeader {
        suggest_which_broker_id: 0,
        next_begin_offset: next as i64,
        min_offset: min as i64,
        max_offset: max as i64,
        ..Default::default()
    };
    Some(Response { cmd: RemotingCommand::response_to(req, code, Some(remark)).with_header(&rh), body_parts: Vec::new() })
}

impl BrokerInner {
    /// The reset marker of a group's queue in this node's applied state.
    pub(crate) fn reset_marker(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.node.state().with_metadata(
            |m| {
                if m.state.reset_markers.is_empty() {
                    None
                } else {
                    m.state.reset_marker(group, topic, queue_id)
                }
            },
        )
    }

    /// Checks a pull of `group` on `topic`/`queue_id` at `offset` against the queue's reset marker.
    pub(crate) async fn pull_gate(&self, req: &RemotingCommand, group: &str, topic: &str, queue_id: u32, offset: u64) -> PullGate {
        let Some(reset) = self.reset_marker(group, topic, queue_id) else { return PullGate::Serve };
        let (min, max) = (self.store.min_offset(topic, queue_id), self.store.max_offset(topic, queue_id));
        if offset == reset {
            // The consumer follows the reset: the leader ends the marker before it answers, so that the
            // consumer's next pull (past the reset offset) is not judged on the marker again and sent back.
            // A clear that arrives after a newer reset ends nothing (apply compares the offset).
            if self.check_leader(req).is_ok() {
                let m = ResetMarker { group: group.into(), topic: topic.into(), queue_id, offset: reset };
                match self.node.write(Command::ClearResetMarkers(vec![m])).await {
                    Ok(_) => info!(group, topic, queue_id, offset = reset, "offset reset taken by the group: marker cleared"),
                    Err(e) => {
                        debug!(group, topic, queue_id, error = %e, "reset marker not cleared; the next pull at the reset offset asks again")
                    }
                }
            }
            return PullGate::Serve;
        }
        // Moving a consumer is for the quorum-confirmed leader only, judged on the state its read barrier
        // brought up to date (a deposed leader may hold a marker that was cleared since).
        if self.check_leader(req).is_ok() && self.node.read_barrier().await.is_ok() {
            return match self.reset_marker(group, topic, queue_id) {
                Some(reset) if reset != offset => PullGate::Answer(pull_answer(
                    req,
                    ResponseCode::PULL_OFFSET_MOVED,
                    reset,
                    min,
                    max,
                    format!("the offsets of group {group} were reset: continue {topic} queue {queue_id} at {reset}"),
                )),
                _ => PullGate::Serve,
            };
        }
        PullGate::Answer(pull_answer(
            req,
            ResponseCode::PULL_RETRY_IMMEDIATELY,
            offset,
            min,
            max,
            format!(
                "the offsets of group {group} on {topic} queue {queue_id} were reset, and node {} is not the quorum-confirmed leader; retry, at brokerId 0",
                self.cfg.node_id
            ),
        ))
    }

    /// INVOKE_BROKER_TO_RESET_OFFSET (222).
    pub(crate) async fn reset_offset(&self, req: &RemotingCommand) -> Reply {
        let h: ResetOffsetRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Err(why) = validate_group(&h.group) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if h.timestamp < -1 {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!("timestamp {} is neither a time (ms ≥ 0) nor -1 (the max offset)", h.timestamp),
            );
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        // Offsets by time and the group's known offsets are read from the state a quorum confirms.
        if let Err(e) = self.node.read_barrier().await {
            return self
                .check_leader(req)
                .err()
                .flatten()
                .or_else(|| reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("cannot confirm leadership to reset offsets: {e}")));
        }
        let Some(t) = self.store.topic(&h.topic) else {
            return reply(
                req,
                ResponseCode::TOPIC_NOT_EXIST,
                format!("topic[{}] not exist, cannot reset the offsets of group {}", h.topic, h.group),
            );
        };
        let (groups, has_offsets) = self.store.offset_groups(&h.group);
        if !has_offsets && !self.clients.has_consumer_group(&h.group) {
            return reply(
                req,
                ResponseCode::SUBSCRIPTION_GROUP_NOT_EXIST,
                format!(
                    "consumer group {} has no offsets and no live consumer on broker group {}: nothing to reset",
                    h.group, self.cfg.broker_name
                ),
            );
        }
        if !has_offsets && groups >= self.cfg.offset_groups_max {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!("cannot store offsets of group {}: the broker holds offsets of {groups} groups (offsetGroupsMax)", h.group),
            );
        }
        let queues = t.read_queues.max(t.write_queues);
        let selected: Vec<u32> = match h.queue_id {
            None | Some(-1) => (0..queues).collect(),
            Some(q) if q >= 0 && (q as u32) < queues => vec![q as u32],
            Some(q) => {
                return reply(req, ResponseCode::SYSTEM_ERROR, format!("queueId[{q}] is illegal, topic:[{}] has {queues} queues", h.topic))
            }
        };
        let explicit = match (h.queue_id, h.offset) {
            (Some(q), Some(o)) if q >= 0 => {
                if o < 0 {
                    return reply(req, ResponseCode::SYSTEM_ERROR, format!("offset {o} is negative"));
                }
                Some(o as u64)
            }
            _ => None,
        };
        let mut offsets = Vec::with_capacity(selected.len());
        for q in selected {
            let (min, max) = (self.store.min_offset(&h.topic, q), self.store.max_offset(&h.topic, q));
            let target = match explicit {
                Some(o) => o.clamp(min, max),
                None if h.timestamp == -1 => max,
                None => self.store.offset_by_time(&h.topic, q, h.timestamp, false),
            };
            // Without force only offsets that go back move (RocketMQ's rule for isForce = false).
            if !h.is_force && self.store.consumer_offset(&h.group, &h.topic, q).is_some_and(|now| now <= target) {
                continue;
            }
            offsets.push((q, target));
        }
        let (held, new) = self.node.state().with_metadata(|m| {
            let held = marker_count(&m.state.reset_markers);
            (held, offsets.iter().filter(|(q, _)| m.state.reset_marker(&h.group, &h.topic, *q).is_none()).count())
        });
        if held + new > RESET_MARKERS_MAX {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!(
                    "offset reset refused: {held} queues still have a reset their group has not taken, and {new} more would exceed RESET_MARKERS_MAX ({RESET_MARKERS_MAX})"
                ),
            );
        }
        let body = ResetOffsetBody {
            offset_table: offsets
                .iter()
                .map(|(q, o)| {
                    (MessageQueue { topic: h.topic.clone(), broker_name: self.cfg.broker_name.clone(), queue_id: *q as i32 }, *o as i64)
                })
                .collect(),
        };
        if !offsets.is_empty() {
            let reset = OffsetReset { group: h.group.clone(), topic: h.topic.clone(), offsets: offsets.clone() };
            match self.node.write(Command::ResetOffsets(reset)).await {
                Ok(CommandResponse::Refused(why)) => return reply(req, ResponseCode::SYSTEM_ERROR, why),
                Ok(_) => {
                    info!(group = %h.group, topic = %h.topic, timestamp = h.timestamp, ?offsets, "consumer offsets reset");
                    self.resets_applied.notify_waiters();
                }
                Err(e @ (WriteError::NotLeader { .. } | WriteError::Transferring { .. } | WriteError::Stopped { .. })) => {
                    return self
                        .check_leader(req)
                        .err()
                        .flatten()
                        .or_else(|| reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("offset reset not accepted: {e}")))
                }
                Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("offset reset outcome unknown: {e}")),
            }
        }
        match body.encode() {
            Ok(b) => Some(ok(req).with_body(b).into()),
            Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
        }
    }
}
