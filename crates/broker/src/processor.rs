//! Request processors: RocketMQ remoting requests in, store and registry calls, responses out.
//!
//! Every failure is answered with the RocketMQ response code clients act on and a remark that says what
//! was wrong; nothing about one bad request affects other clients or stored data. Writes are applied only
//! by the group's ready Raft leader: other members forward them to it (forward.rs) and answer
//! SERVICE_NOT_AVAILABLE (14), with the leader's client address in the remark, only when they cannot.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftmq_net::{Conn, Response};
use raftmq_raft::node::{NodeError, Role, RoleState, WriteError};
use raftmq_raft::types::{Command, CommandResponse, LockRequest, OffsetCommit, QueueKey, TopicConfig, UnlockRequest};
use raftmq_remoting::body::{
    decode_json_body, encode_json_body, GetConsumerListByGroupResponseBody, HeartbeatData, LockBatchRequestBody, LockBatchResponseBody,
    MessageModel as WireMessageModel, MessageQueue,
};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::{
    pull_sys_flag, CommandHeader, ConsumerGroupHeader, CreateTopicRequestHeader, GetEarliestMsgStoretimeResponseHeader,
    GetMaxOffsetRequestHeader, OffsetResponseHeader, PullMessageRequestHeader, PullMessageResponseHeader, QueryConsumerOffsetRequestHeader,
    QueueRequestHeader, SearchOffsetRequestHeader, UnregisterClientRequestHeader, UpdateConsumerOffsetRequestHeader,
};
use raftmq_remoting::{RequestCode, ResponseCode};
use tracing::debug;

use crate::broker::BrokerInner;
use crate::consumers::{ClientInfo, ClientLink, ConsumerHeartbeat, MessageModel, Subscription};
use crate::forward::Forwarded;
use crate::store::GetStatus;
use crate::topics::{retry_topic, validate_group, validate_topic, PERM_READ, PERM_READ_WRITE};

/// raftmq-specific request: this node's Raft status as JSON (admin `status`).
pub use raftmq_remoting::codes::{
    RAFTMQ_ADD_NODE, RAFTMQ_MEMBERS, RAFTMQ_NODE_STATUS, RAFTMQ_PROMOTE_NODE, RAFTMQ_REMOVE_NODE, RAFTMQ_SET_DELAY_LEVELS,
    RAFTMQ_TRANSFER_LEADER,
};
/// Longest client id a heartbeat or lock request may carry (RocketMQ's are `ip@instance[@unit]`).
pub(crate) const CLIENT_ID_BYTES_MAX: usize = 1024;
/// Longest subscription expression a heartbeat may carry.
pub(crate) const SUBSCRIPTION_BYTES_MAX: usize = 16 * 1024;
/// Bytes of messages one pull returns at most (RocketMQ `maxTransferBytesOnMessageInMemory`).
const PULL_BYTES_MAX: usize = 256 * 1024;

pub(crate) type Reply = Option<Response>;

/// Extension field a follower adds to a request it forwards to the leader (its node id).
pub(crate) const FORWARDED_FIELD: &str = "raftmqForwardedBy";
/// Ext field of a 14 answered because this member is not the ready leader (its node id): nothing was applied.
pub(crate) const NOT_LEADER_FIELD: &str = "raftmqNotLeader";

pub(crate) fn reply(req: &RemotingCommand, code: ResponseCode, remark: impl Into<String>) -> Reply {
    Some(RemotingCommand::response_to(req, code, Some(remark.into())).into())
}

pub(crate) fn ok(req: &RemotingCommand) -> RemotingCommand {
    RemotingCommand::success_to(req)
}

pub(crate) fn header<H: CommandHeader>(req: &RemotingCommand) -> Result<H, Reply> {
    H::from_ext_fields(&req.ext_fields).map_err(|e| reply(req, ResponseCode::SYSTEM_ERROR, format!("bad request header: {e}")))
}

fn json_body<T: serde::de::DeserializeOwned>(req: &RemotingCommand, what: &'static str) -> Result<T, Reply> {
    decode_json_body(what, &req.body).map_err(|e| reply(req, ResponseCode::SYSTEM_ERROR, format!("bad {what} body: {e}")))
}

fn with_json<T: serde::Serialize>(req: &RemotingCommand, cmd: RemotingCommand, value: &T) -> Reply {
    match encode_json_body(value) {
        Ok(body) => Some(cmd.with_body(body).into()),
        Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
    }
}

/// True for the get outcomes that, answered by the leader, move a consumer to another offset.
fn moves_consumer(status: GetStatus, offset: u64) -> bool {
    match status {
        GetStatus::NoMessageInQueue => offset != 0,
        GetStatus::OffsetTooSmall | GetStatus::OffsetOverflowBadly => true,
        GetStatus::Found | GetStatus::NoMatchedMessage | GetStatus::OffsetOverflowOne => false,
    }
}

/// True when a member with `lag` committed log entries still to apply ([`raftmq_raft::node::RaftNode::leader_commit_lag`];
/// `None` on the leader or before it heard a leader's commit index) is too far behind to keep a consumer that it
/// has nothing for: more than `max` (`followerReadLagMaxEntries`; 0 = never).
pub(crate) fn lags_for_reads(lag: Option<u64>, max: u64) -> bool {
    max > 0 && lag.is_some_and(|l| l > max)
}

/// The connection of a client, as the consumer registry sees it.
/// A client's connection, with where it connects from and the language and version its heartbeat named.
pub(crate) struct ConnLink(pub Conn, pub ClientInfo);

impl ClientLink for ConnLink {
    fn notify_consumer_ids_changed(&self, group: &str) {
        let h = ConsumerGroupHeader { consumer_group: group.to_string() };
        let cmd = RemotingCommand::request(RequestCode::NOTIFY_CONSUMER_IDS_CHANGED, 0).with_header(&h).mark_oneway();
        if !self.0.send(cmd.into()) {
            debug!(peer = %self.0.peer(), group, "could not queue NOTIFY_CONSUMER_IDS_CHANGED");
        }
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn send_oneway(&self, cmd: RemotingCommand) -> bool {
        self.0.send(cmd.mark_oneway().into())
    }

    fn info(&self) -> ClientInfo {
        self.1.clone()
    }
}

impl BrokerInner {
    /// Ok when this node may accept writes; otherwise the reply naming the leader.
    pub(crate) fn check_leader(&self, req: &RemotingCommand) -> Result<(), Reply> {
        let role = self.node.role().borrow().clone();
        if role.role == Role::Leader && role.ready && self.node.transferring_to().is_none() {
            return Ok(());
        }
        Err(self.refusal(&role, req))
    }

    /// The 14 SERVICE_NOT_AVAILABLE of a member that is not the ready leader in `role`, naming the leader's
    /// client address when one is known. Marked with ext field [`NOT_LEADER_FIELD`]: the request was certainly
    /// not applied, so a forwarding member may route it again.
    pub(crate) fn refusal(&self, role: &RoleState, req: &RemotingCommand) -> Reply {
        let leader = role.leader.and_then(|id| self.client_addr_of(id));
        let remark = match (role.role, leader) {
            (Role::Leader, _) if self.node.transferring_to().is_some() => format!(
                "broker {} node {} is handing leadership to node {}; retry shortly",
                self.cfg.broker_name,
                self.cfg.node_id,
                self.node.transferring_to().unwrap_or_default()
            ),
            (Role::Leader, _) => {
                format!("broker {} is the new Raft leader and still applying earlier entries; retry shortly", self.cfg.broker_name)
            }
            (_, Some(addr)) => {
                format!("broker {} node {} is not the Raft leader; the leader is at {addr}", self.cfg.broker_name, self.cfg.node_id)
            }
            (_, None) => format!(
                "broker {} node {} is not the Raft leader and no leader is known (election in progress)",
                self.cfg.broker_name, self.cfg.node_id
            ),
        };
        let mut r = RemotingCommand::response_to(req, ResponseCode::SERVICE_NOT_AVAILABLE, Some(remark));
        r.ext_fields.insert(NOT_LEADER_FIELD.into(), self.cfg.node_id.to_string());
        Some(r.into())
    }

    /// Relays a request this follower cannot serve to the leader and answers with the leader's response
    /// (one hop: a request that was already forwarded gets `not_leader`, this node's own refusal). Used for
    /// CONSUMER_SEND_MSG_BACK, which the C++ clients (PyPI `rocketmq`) send to the message's store host —
    /// any replica — and whose failure makes them drop the message, and for END_TRANSACTION. Within the
    /// forwarding bounds (`forwardInflightMax`, `forwardInflightBytesMax`, `forwardTimeoutMs`; see forward.rs).
    pub(crate) async fn forward_to_leader(&self, req: &RemotingCommand, not_leader: Reply) -> Reply {
        if req.ext_fields.contains_key(FORWARDED_FIELD) {
            return not_leader;
        }
        let leader = self.node.role().borrow().leader.and_then(|id| self.client_addr_of(id));
        let Some(addr) = leader.filter(|a| Some(a.as_str()) != self.cfg.me().ok().map(|p| p.client_addr.as_str())) else {
            return not_leader;
        };
        self.forward_to(req, &addr, not_leader, self.cfg.forward_timeout()).await
    }

    /// Relays `req` to the member whose client port is `addr` (normally the leader) on the kept leader
    /// connection, marked as forwarded, and answers with its response (waiting up to `timeout`); `unreachable`
    /// when it cannot be reached or a forwarding bound is reached.
    pub(crate) async fn forward_to(&self, req: &RemotingCommand, addr: &str, unreachable: Reply, timeout: Duration) -> Reply {
        match self.forward_once(req, req.clone(), addr, unreachable, timeout).await {
            Forwarded::Answer(r) | Forwarded::NotSent(r) | Forwarded::Lost(r) => r,
        }
    }

    fn readable_queue(&self, req: &RemotingCommand, topic: &str, queue_id: i32) -> Result<u32, Reply> {
        let Some(t) = self.store.topic(topic) else {
            return Err(reply(req, ResponseCode::TOPIC_NOT_EXIST, format!("topic[{topic}] not exist, apply first please!")));
        };
        if t.perm & PERM_READ == 0 {
            return Err(reply(req, ResponseCode::NO_PERMISSION, format!("the topic[{topic}] pulling message is forbidden")));
        }
        if queue_id < 0 || queue_id as u32 >= t.read_queues.max(t.write_queues) {
            return Err(reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!("queueId[{queue_id}] is illegal, topic:[{topic}] topicConfig.readQueueNums:[{}]", t.read_queues),
            ));
        }
        Ok(queue_id as u32)
    }

    /// Ok (the queue id) when `group` may commit an offset on `topic`/`queue_id`: a valid group name, an
    /// existing topic and queue, and room in the offset table (`offsetGroupsMax`) for a group new to it.
    /// Per group, offsets exist only for existing queues, so the table is bounded by
    /// `offsetGroupsMax` × the queues of at most `topicsMax` topics.
    fn check_offset_commit(&self, group: &str, topic: &str, queue_id: i32) -> Result<u32, (ResponseCode, String)> {
        validate_group(group).map_err(|why| (ResponseCode::SYSTEM_ERROR, why))?;
        let Some(t) = self.store.topic(topic) else {
            return Err((ResponseCode::TOPIC_NOT_EXIST, format!("topic[{topic}] not exist, apply first please!")));
        };
        let queues = t.read_queues.max(t.write_queues);
        if queue_id < 0 || queue_id as u32 >= queues {
            return Err((ResponseCode::SYSTEM_ERROR, format!("queueId[{queue_id}] is illegal, topic:[{topic}] has {queues} queues")));
        }
        let (groups, known) = self.store.offset_groups(group);
        if !known && groups >= self.cfg.offset_groups_max {
            return Err((
                ResponseCode::SYSTEM_ERROR,
                format!("cannot store offsets of group {group}: the broker holds offsets of {groups} groups (offsetGroupsMax)"),
            ));
        }
        Ok(queue_id as u32)
    }

    pub(crate) async fn pull(&self, conn: &Conn, req: &RemotingCommand) -> Reply {
        let h: PullMessageRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let qid = match self.readable_queue(req, &h.topic, h.queue_id) {
            Ok(q) => q,
            Err(r) => return r,
        };
        if let Some(r) = self.consume_disabled(req, &h.consumer_group) {
            return r;
        }
        if h.queue_offset < 0 {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("queueOffset {} is negative", h.queue_offset));
        }
        // The subscription carried by the pull, else the one remembered from heartbeats (some clients send
        // none), else everything; clients filter again by tag string.
        let sub = match h.carried_subscription() {
            Some(expr) => Subscription::parse_typed(expr, h.expression_type.as_deref(), h.sub_version),
            None => self.clients.subscription(&h.consumer_group, &h.topic).unwrap_or_else(|| Subscription::parse("*", 0)),
        };
        // A SQL92 selector is tested on each candidate's stored properties; unmatched messages stay here.
        let selector = match crate::sql_filter::pull_selector(&sub, self.cfg.enable_property_filter) {
            Ok(s) => s,
            Err((code, why)) => return reply(req, code, why),
        };
        let by_message = |data: &[u8]| selector.as_deref().is_none_or(|s| crate::sql_filter::message_matches(s, data));
        let by_message: Option<(&crate::store::MessageFilter<'_>, usize)> =
            selector.is_some().then_some((&by_message as &crate::store::MessageFilter<'_>, self.cfg.pull_filter_scan_max));
        if let Some(off) = h.carried_commit_offset().filter(|o| *o >= 0) {
            // A piggybacked commit is best effort: one the offset table cannot take is dropped silently.
            if self.check_leader(req).is_ok() && self.check_offset_commit(&h.consumer_group, &h.topic, h.queue_id).is_ok() {
                self.offsets.commit_detached(OffsetCommit {
                    group: h.consumer_group.clone(),
                    topic: h.topic.clone(),
                    queue_id: qid,
                    offset: off as u64,
                });
            }
        }
        let offset = h.queue_offset as u64;
        // A queue whose offsets were reset moves its consumer to the reset offset first.
        if let crate::reset::PullGate::Answer(r) = self.pull_gate(req, &h.consumer_group, &h.topic, qid, offset).await {
            return r;
        }
        let max_nums = h.max_msg_nums.clamp(1, 1024) as usize;
        let max_bytes = h.max_msg_bytes.filter(|b| *b > 0).map(|b| b as usize).unwrap_or(PULL_BYTES_MAX);
        let mut result = self.store.get_filtered(&h.topic, qid, offset, max_nums, max_bytes, |c| sub.matches(c), by_message);
        let may_wait = h.sys_flag & pull_sys_flag::SUSPEND != 0 && h.suspend_timeout_millis > 0;
        let nothing_yet =
            matches!(result.status, GetStatus::OffsetOverflowOne) || (result.status == GetStatus::NoMessageInQueue && offset == 0);
        // A member far behind the leader's commit has nothing for this consumer that the leader may well have:
        // holding the pull (or answering "no new message") would leave the consumer as far behind as this member.
        // Send it to the leader at once, at the same offset.
        if nothing_yet {
            if let Some(lag) = self.node.leader_commit_lag().filter(|l| lags_for_reads(Some(*l), self.cfg.follower_read_lag_max_entries)) {
                let leader = self.node.role().borrow().leader.and_then(|id| self.client_addr_of(id));
                let rh = PullMessageResponseHeader {
                    suggest_which_broker_id: 0,
                    next_begin_offset: offset as i64,
                    min_offset: result.min_offset as i64,
                    max_offset: result.max_offset as i64,
                    ..Default::default()
                };
                let remark = format!(
                    "node {} has {lag} committed log entries still to apply (followerReadLagMaxEntries {}); retry at brokerId 0{}",
                    self.cfg.node_id,
                    self.cfg.follower_read_lag_max_entries,
                    leader.map(|a| format!(", the leader is at {a}")).unwrap_or_default()
                );
                let cmd = RemotingCommand::response_to(req, ResponseCode::PULL_RETRY_IMMEDIATELY, Some(remark)).with_header(&rh);
                return Some(Response { cmd, body_parts: Vec::new() });
            }
        }
        if may_wait && nothing_yet {
            // Waiting is bounded per connection and per broker: past a bound the pull is answered at once
            // (2 SYSTEM_BUSY; clients pull again later), never parked.
            let _parking = match self.parked_pulls.park(conn.id()) {
                Ok(p) => p,
                Err(refused) => return reply(req, ResponseCode::SYSTEM_BUSY, refused.remark()),
            };
            let hold = Duration::from_millis(h.suspend_timeout_millis as u64).min(self.cfg.long_polling_max());
            // A reset while the pull waits answers it at once (the consumer would otherwise learn of it only
            // when the long poll ends).
            tokio::select! {
                _ = self.store.wait_for_message(&h.topic, qid, offset, hold) => {}
                _ = self.resets_applied.notified() => {
                    if let crate::reset::PullGate::Answer(r) = self.pull_gate(req, &h.consumer_group, &h.topic, qid, offset).await {
                        return r;
                    }
                }
            }
            result = self.store.get_filtered(&h.topic, qid, offset, max_nums, max_bytes, |c| sub.matches(c), by_message);
        }
        // PULL_OFFSET_MOVED makes the client jump to nextBeginOffset and commit it: irreversible. Only a leader
        // whose leadership a quorum confirms right now may say so (openraft 0.9 keeps a deposed leader in the
        // Leader role), and it judges the offset on the state the read barrier brought up to date.
        let mut confirmed = false;
        if moves_consumer(result.status, offset) && self.check_leader(req).is_ok() && self.node.read_barrier().await.is_ok() {
            confirmed = true;
            result = self.store.get_filtered(&h.topic, qid, offset, max_nums, max_bytes, |c| sub.matches(c), by_message);
        }
        let mut next_begin_offset = result.next_begin_offset as i64;
        let mut unconfirmed = false;
        let code = match result.status {
            GetStatus::Found => ResponseCode::SUCCESS,
            GetStatus::NoMatchedMessage => ResponseCode::PULL_RETRY_IMMEDIATELY,
            GetStatus::OffsetOverflowOne => ResponseCode::PULL_NOT_FOUND,
            GetStatus::NoMessageInQueue if offset == 0 => ResponseCode::PULL_NOT_FOUND,
            GetStatus::NoMessageInQueue | GetStatus::OffsetTooSmall | GetStatus::OffsetOverflowBadly => {
                if confirmed {
                    ResponseCode::PULL_OFFSET_MOVED
                } else {
                    // A member that is not the confirmed leader may simply be behind (restarted, catching up) or
                    // deposed without knowing it: its view must never move a consumer. Like a RocketMQ slave
                    // without offsetCheckInSlave, answer "retry" at the same offset and point the client at the
                    // leader (brokerId 0).
                    next_begin_offset = offset as i64;
                    unconfirmed = true;
                    ResponseCode::PULL_RETRY_IMMEDIATELY
                }
            }
        };
        let rh = PullMessageResponseHeader {
            suggest_which_broker_id: 0,
            next_begin_offset,
            min_offset: result.min_offset as i64,
            max_offset: result.max_offset as i64,
            ..Default::default()
        };
        let remark = match code {
            ResponseCode::SUCCESS => None,
            ResponseCode::PULL_OFFSET_MOVED => Some(format!("offset {offset} is outside [{}, {}]", result.min_offset, result.max_offset)),
            _ if unconfirmed => Some(format!(
                "offset {offset} is outside [{}, {}] on node {}, which is not the quorum-confirmed leader; retry, at brokerId 0",
                result.min_offset, result.max_offset, self.cfg.node_id
            )),
            _ => Some("no new message".to_string()),
        };
        let cmd = RemotingCommand::response_to(req, code, remark).with_header(&rh);
        if let Some(m) = &self.metrics {
            m.pulled(&h.topic, result.messages.len(), result.messages.iter().flat_map(|m| &m.parts).map(|p| p.len() as u64).sum());
        }
        let body_parts: Vec<Bytes> = result.messages.into_iter().flat_map(|m| m.parts).collect();
        Some(Response { cmd, body_parts })
    }

    pub(crate) async fn query_consumer_offset(&self, req: &RemotingCommand) -> Reply {
        let h: QueryConsumerOffsetRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if h.queue_id < 0 {
            return reply(req, ResponseCode::SYSTEM_ERROR, "queueId is negative");
        }
        let qid = h.queue_id as u32;
        // Committed offsets must be read linearizably: a follower or a deposed leader (minority side of a
        // partition) may hold an older value, and a consumer resuming from it would move backwards — the
        // chaos checker's committed-offset-regression. Only the ready leader answers, after a read barrier.
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        if let Err(e) = self.node.read_barrier().await {
            return self.check_leader(req).err().flatten().or_else(|| {
                reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("cannot confirm leadership for a consistent read: {e}"))
            });
        }
        if let Some(o) = self.store.consumer_offset(&h.consumer_group, &h.topic, qid) {
            return Some(ok(req).with_header(&OffsetResponseHeader { offset: o as i64 }).into());
        }
        // RocketMQ's rule for a group without an offset: start at 0 while the queue still holds offset 0,
        // so a new group does not skip what was produced before it first connected.
        if h.set_zero_if_not_found != Some(false) && self.store.min_offset(&h.topic, qid) == 0 {
            return Some(ok(req).with_header(&OffsetResponseHeader { offset: 0 }).into());
        }
        reply(req, ResponseCode::QUERY_NOT_FOUND, "Not found, V3_0_6_SNAPSHOT maybe this group consumer boot first")
    }

    pub(crate) async fn update_consumer_offset(&self, req: &RemotingCommand) -> Reply {
        let h: UpdateConsumerOffsetRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        if h.commit_offset < 0 {
            return reply(req, ResponseCode::SYSTEM_ERROR, "commitOffset must not be negative");
        }
        // Only offsets of existing queues are replicated: anything else would grow the replicated offset
        // table from client input alone.
        let queue_id = match self.check_offset_commit(&h.consumer_group, &h.topic, h.queue_id) {
            Ok(q) => q,
            Err((code, why)) => return reply(req, code, why),
        };
        let c = OffsetCommit { group: h.consumer_group, topic: h.topic, queue_id, offset: h.commit_offset as u64 };
        match self.offsets.commit(c).await {
            Ok(()) => Some(ok(req).into()),
            // Refused before it was proposed: certainly not applied, and the client may follow the hint.
            Err(e @ (WriteError::NotLeader { .. } | WriteError::Transferring { .. } | WriteError::Stopped { .. })) => self
                .check_leader(req)
                .err()
                .flatten()
                .or_else(|| reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("offset commit not accepted: {e}"))),
            // Proposed, outcome unknown: SYSTEM_ERROR, which clients must not read as "not applied".
            Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, format!("offset commit outcome unknown: {e}")),
        }
    }

    pub(crate) fn max_offset(&self, req: &RemotingCommand) -> Reply {
        match header::<GetMaxOffsetRequestHeader>(req) {
            Ok(h) => Some(
                ok(req)
                    .with_header(&OffsetResponseHeader { offset: self.store.max_offset(&h.topic, h.queue_id.max(0) as u32) as i64 })
                    .into(),
            ),
            Err(r) => r,
        }
    }

    pub(crate) fn min_offset(&self, req: &RemotingCommand) -> Reply {
        match header::<QueueRequestHeader>(req) {
            Ok(h) => Some(
                ok(req)
                    .with_header(&OffsetResponseHeader { offset: self.store.min_offset(&h.topic, h.queue_id.max(0) as u32) as i64 })
                    .into(),
            ),
            Err(r) => r,
        }
    }

    pub(crate) fn search_offset(&self, req: &RemotingCommand) -> Reply {
        match header::<SearchOffsetRequestHeader>(req) {
            Ok(h) => {
                let upper = matches!(h.boundary_type, raftmq_remoting::header::BoundaryType::Upper);
                let o = self.store.offset_by_time(&h.topic, h.queue_id.max(0) as u32, h.timestamp, upper);
                Some(ok(req).with_header(&OffsetResponseHeader { offset: o as i64 }).into())
            }
            Err(r) => r,
        }
    }

    pub(crate) fn earliest_store_time(&self, req: &RemotingCommand) -> Reply {
        match header::<QueueRequestHeader>(req) {
            Ok(h) => match self.store.earliest_store_time(&h.topic, h.queue_id.max(0) as u32) {
                Some(ts) => Some(ok(req).with_header(&GetEarliestMsgStoretimeResponseHeader { timestamp: ts }).into()),
                None => reply(req, ResponseCode::SYSTEM_ERROR, format!("no message in {}:{}", h.topic, h.queue_id)),
            },
            Err(r) => r,
        }
    }

    pub(crate) async fn heartbeat(&self, conn: &Conn, req: &RemotingCommand) -> Reply {
        let hb: HeartbeatData = match json_body(req, "HeartbeatData") {
            Ok(b) => b,
            Err(r) => return r,
        };
        // Names are checked before anything of the heartbeat is recorded.
        if hb.client_id.is_empty() || hb.client_id.len() > CLIENT_ID_BYTES_MAX {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("clientID must be 1..={CLIENT_ID_BYTES_MAX} bytes"));
        }
        for group in hb.producer_data_set.iter().map(|p| &p.group_name).chain(hb.consumer_data_set.iter().map(|c| &c.group_name)) {
            if let Err(why) = validate_group(group) {
                return reply(req, ResponseCode::SYSTEM_ERROR, why);
            }
        }
        for s in hb.consumer_data_set.iter().flat_map(|c| &c.subscription_data_set) {
            if let Err(why) = validate_topic(&s.topic) {
                return reply(req, ResponseCode::SYSTEM_ERROR, format!("subscription: {why}"));
            }
            if s.sub_string.len() > SUBSCRIPTION_BYTES_MAX {
                return reply(
                    req,
                    ResponseCode::SYSTEM_ERROR,
                    format!("the subscription expression of topic {} is longer than {SUBSCRIPTION_BYTES_MAX} bytes", s.topic),
                );
            }
        }
        let mut refused = Vec::new();
        let mut unparsable = Vec::new();
        let info = ClientInfo { addr: conn.peer().to_string(), language: req.language.name().to_string(), version: req.version };
        let link: Arc<dyn ClientLink> = Arc::new(ConnLink(conn.clone(), info));
        for p in &hb.producer_data_set {
            if let Err(why) = self.clients.producer_heartbeat(&hb.client_id, &p.group_name, Arc::clone(&link)) {
                refused.push(why);
            }
        }
        for c in &hb.consumer_data_set {
            let model = match c.message_model {
                WireMessageModel::Broadcasting => MessageModel::Broadcasting,
                _ => MessageModel::Clustering,
            };
            let subscriptions: Vec<(String, Subscription)> = c
                .subscription_data_set
                .iter()
                .map(|s| (s.topic.clone(), Subscription::parse_typed(&s.sub_string, Some(s.expression_type.as_str()), s.sub_version)))
                .collect();
            // A SQL92 expression that does not compile is kept as refused (pulls relying on it get 23 with
            // the reason) and the heartbeat is answered 23 after everything else of it was recorded.
            for (topic, sub) in &subscriptions {
                if let Some(Err(why)) = &sub.sql {
                    unparsable.push(format!("group {} topic {topic}: {}", c.group_name, why.0));
                }
            }
            let recorded = self.clients.consumer_heartbeat(
                &hb.client_id,
                Arc::clone(&link),
                ConsumerHeartbeat {
                    group: c.group_name.clone(),
                    model,
                    subscriptions,
                    consume_type: c.consume_type.clone(),
                    consume_from_where: c.consume_from_where.clone(),
                },
            );
            if let Err(why) = recorded {
                refused.push(why);
                continue;
            }
            // Like RocketMQ, a consumer group gets its retry topic when it first shows up (the group is now
            // known, and its name was checked above).
            if model == MessageModel::Clustering && self.check_leader(req).is_ok() {
                if let Err((_, why)) = self.ensure_topic(&retry_topic(&c.group_name), 1).await {
                    debug!(group = %c.group_name, why, "retry topic not created");
                }
            }
        }
        if !refused.is_empty() {
            return reply(req, ResponseCode::SYSTEM_ERROR, refused.join("; "));
        }
        if !unparsable.is_empty() {
            return reply(req, ResponseCode::SUBSCRIPTION_PARSE_FAILED, unparsable.join("; "));
        }
        Some(ok(req).into())
    }

    pub(crate) fn unregister_client(&self, req: &RemotingCommand) -> Reply {
        let h: UnregisterClientRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Some(g) = h.consumer_group.as_deref().filter(|g| !g.is_empty()) {
            self.clients.unregister_consumer(g, &h.client_id);
        }
        if let Some(g) = h.producer_group.as_deref().filter(|g| !g.is_empty()) {
            self.clients.unregister_producer(g, &h.client_id);
        }
        Some(ok(req).into())
    }

    pub(crate) fn consumer_list(&self, req: &RemotingCommand) -> Reply {
        let h: ConsumerGroupHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let ids = self.clients.consumer_ids(&h.consumer_group);
        if ids.is_empty() {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("no consumer for this group, {}", h.consumer_group));
        }
        with_json(req, ok(req), &GetConsumerListByGroupResponseBody { consumer_id_list: ids })
    }

    fn queue_keys(mqs: &[MessageQueue]) -> Vec<QueueKey> {
        mqs.iter()
            .filter(|m| m.queue_id >= 0)
            .map(|m| QueueKey { topic: m.topic.clone(), broker_name: m.broker_name.clone(), queue_id: m.queue_id as u32 })
            .collect()
    }

    /// The queues of `mqs` that exist on this broker group: only those can be locked.
    fn existing_queue_keys(&self, mqs: &[MessageQueue]) -> Vec<QueueKey> {
        let mut keys = Self::queue_keys(mqs);
        keys.retain(|k| {
            k.broker_name == self.cfg.broker_name
                && self.store.topic(&k.topic).is_some_and(|t| k.queue_id < t.read_queues.max(t.write_queues))
        });
        keys
    }

    /// LOCK_BATCH_MQ (41): one replicated lock entry stamped with the store clock; the queues the state
    /// left held by the client are the answer. A follower forwards the request to the leader (its own
    /// answer would not be replicated); without a reachable leader it answers 14 naming the leader.
    pub(crate) async fn lock_batch(&self, req: &RemotingCommand) -> Reply {
        let b: LockBatchRequestBody = match json_body(req, "LockBatchRequestBody") {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Err(why) = validate_group(&b.consumer_group) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if b.client_id.is_empty() || b.client_id.len() > CLIENT_ID_BYTES_MAX {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("clientId must be 1..={CLIENT_ID_BYTES_MAX} bytes"));
        }
        if let Err(not_leader) = self.check_leader(req) {
            return self.forward_to_leader(req, not_leader).await;
        }
        let queues = self.existing_queue_keys(&b.mq_set);
        if queues.is_empty() {
            return with_json(req, ok(req), &LockBatchResponseBody { lock_ok_mq_set: Vec::new() });
        }
        let (ttl_ms, locks_max) = (self.cfg.lock_ttl_ms as i64, self.cfg.locks_max as u64);
        let (group, client_id) = (b.consumer_group, b.client_id);
        let result =
            self.store.write_stamped(|stamp_ms| Command::Lock(LockRequest { group, client_id, queues, stamp_ms, ttl_ms, locks_max })).await;
        match result {
            Ok(CommandResponse::Locked(locked)) => {
                let set = locked
                    .into_iter()
                    .map(|k| MessageQueue { topic: k.topic, broker_name: k.broker_name, queue_id: k.queue_id as i32 })
                    .collect();
                with_json(req, ok(req), &LockBatchResponseBody { lock_ok_mq_set: set })
            }
            Ok(other) => reply(req, ResponseCode::SYSTEM_ERROR, format!("queue lock not applied: {other:?}")),
            Err(e) => self.lock_write_error(req, "queue lock", e),
        }
    }

    /// UNLOCK_BATCH_MQ (42): one replicated unlock entry; only the client's own locks end. Forwarded by a
    /// follower like 41.
    pub(crate) async fn unlock_batch(&self, req: &RemotingCommand) -> Reply {
        let b: LockBatchRequestBody = match json_body(req, "UnlockBatchRequestBody") {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Err(not_leader) = self.check_leader(req) {
            return self.forward_to_leader(req, not_leader).await;
        }
        let queues = Self::queue_keys(&b.mq_set);
        if queues.is_empty() {
            return Some(ok(req).into());
        }
        let (group, client_id) = (b.consumer_group, b.client_id);
        match self.store.write_stamped(|stamp_ms| Command::Unlock(UnlockRequest { group, client_id, queues, stamp_ms })).await {
            Ok(_) => Some(ok(req).into()),
            Err(e) => self.lock_write_error(req, "queue unlock", e),
        }
    }

    /// The answer to a lock or unlock entry that did not apply: 14 naming the leader when this node lost
    /// leadership, else 1 with the reason (the client treats both as "not locked" and retries).
    fn lock_write_error(&self, req: &RemotingCommand, what: &str, e: WriteError) -> Reply {
        match e {
            e @ (WriteError::NotLeader { .. } | WriteError::Transferring { .. } | WriteError::Stopped { .. }) => self
                .check_leader(req)
                .err()
                .flatten()
                .or_else(|| reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("{what} not accepted: {e}"))),
            e @ WriteError::EntryTooLarge { .. } => {
                reply(req, ResponseCode::SYSTEM_ERROR, format!("{what} refused (name fewer queues): {e}"))
            }
            e => reply(req, ResponseCode::SYSTEM_ERROR, format!("{what} outcome unknown: {e}")),
        }
    }

    pub(crate) async fn create_topic(&self, req: &RemotingCommand) -> Reply {
        let h: CreateTopicRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Err(why) = validate_topic(&h.topic) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if h.read_queue_nums <= 0 || h.write_queue_nums <= 0 || h.read_queue_nums > 1024 || h.write_queue_nums > 1024 {
            return reply(req, ResponseCode::SYSTEM_ERROR, "readQueueNums and writeQueueNums must be within 1..=1024");
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        if self.store.topic(&h.topic).is_none() {
            if let Err((code, why)) = self.check_topic_room(&h.topic) {
                return reply(req, code, why);
            }
        }
        let t = TopicConfig {
            name: h.topic,
            read_queues: h.read_queue_nums as u32,
            write_queues: h.write_queue_nums as u32,
            perm: if h.perm > 0 { h.perm as u32 } else { PERM_READ_WRITE },
        };
        match self.store.upsert_topic(t).await {
            Ok(()) => {
                self.registration_now();
                Some(ok(req).into())
            }
            Err(e) => reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, format!("topic change not replicated: {e}")),
        }
    }

    /// RAFTMQ_TRANSFER_LEADER: hands leadership to the member named by ext field `target`.
    pub(crate) async fn transfer_leader(&self, req: &RemotingCommand) -> Reply {
        let Some(target) = req.ext_fields.get("target").and_then(|t| t.trim().trim_start_matches('n').parse::<u64>().ok()) else {
            return reply(req, ResponseCode::SYSTEM_ERROR, "ext field `target` must name a member id (e.g. 2 or n2)");
        };
        if !self.node.members().members.iter().any(|m| m.id == target && m.voter) {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!("node {target} is not a member (a voter) of broker group {}", self.cfg.broker_name),
            );
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        let result = self.node.transfer_leader(target, Duration::from_secs(10)).await;
        // A registration during the transfer saw writes fenced and went out as a slave; a transfer that
        // failed leaves the role unchanged, so no role change would correct the route before the next tick.
        self.registration_now();
        match result {
            Ok(()) => Some(ok(req).into()),
            Err(e @ NodeError::Busy(_)) => reply(req, ResponseCode::SYSTEM_BUSY, format!("leader transfer to node {target} refused: {e}")),
            Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, format!("leader transfer to node {target} failed: {e}")),
        }
    }

    /// Replaces the replicated delay-level table. Messages already staged keep the due time they were
    /// stamped with; the table decides the delay of later sends and send-backs.
    pub(crate) async fn set_delay_levels(&self, req: &RemotingCommand) -> Reply {
        let Some(text) = req.ext_fields.get("levels") else {
            return reply(req, ResponseCode::SYSTEM_ERROR, "ext field `levels` must hold the table, e.g. \"1s 5s 10s 30s 1m\"");
        };
        let levels = match raftmq_raft::types::parse_delay_levels(text) {
            Ok(l) => l,
            Err(why) => return reply(req, ResponseCode::SYSTEM_ERROR, why),
        };
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        match self.node.write(raftmq_raft::types::Command::SetDelayLevels(levels)).await {
            Ok(raftmq_raft::types::CommandResponse::Refused(why)) => reply(req, ResponseCode::SYSTEM_ERROR, why),
            Ok(_) => match self.ensure_schedule_topic().await {
                Ok(()) => Some(ok(req).into()),
                Err((code, why)) => reply(req, code, why),
            },
            Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, format!("the table was not stored: {e}")),
        }
    }

    /// The retention floor, the disk and where retention stopped, for `raftmq admin status`.
    fn retention_status(&self) -> serde_json::Value {
        let r = self.node.state().retention();
        let u = self.disk.usage();
        let log = self.node.state().commitlog().state();
        serde_json::json!({
            "floorIndex": r.floor.index,
            "floorPos": r.floor.pos,
            "decidedMs": r.floor.decided_ms,
            "purges": r.purges,
            "retainedBytes": log.write_pos.saturating_sub(r.floor.pos),
            "heldBy": self.disk.held_by.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "diskTotal": u.total,
            "diskUsed": u.used(),
            "diskAvailable": u.available,
            "diskUsedRatio": u.used_ratio(),
            "diskFull": self.disk.is_full(),
            "lost": r.lost,
        })
    }

    pub(crate) fn node_status(&self, req: &RemotingCommand) -> Reply {
        let s = self.node.status();
        let value = serde_json::json!({
            "brokerName": self.cfg.broker_name,
            "nodeId": s.id,
            "clientAddr": self.cfg.me().map(|p| p.client_addr.clone()).unwrap_or_default(),
            "raftAddr": self.node.raft_addr(),
            "role": format!("{:?}", s.role),
            "ready": self.node.role().borrow().ready,
            "term": s.term,
            "leader": s.leader,
            "lastLogIndex": s.last_log_index,
            "commitIndex": s.commit_index,
            "appliedIndex": s.applied_index,
            "purgedIndex": s.purged_index,
            "voters": s.voters,
            "clockMs": self.store.replicated_now_ms(),
            "clockJumps": self.store.clock_jumps(),
            "locksHeld": self.node.state().with_metadata(|m| m.state.locks.len()),
            "schedule": self.schedule_status(),
            "transactions": self.transaction_status(),
            "retention": self.retention_status(),
            "forwarding": self.forwarding.status(),
            "sendQueue": self.node.send_queue().status(),
            "pullParked": {
                "parked": self.parked_pulls.parked(),
                "refused": self.parked_pulls.refused(),
                "perConnMax": self.cfg.pull_parked_per_conn_max,
                "max": self.cfg.pull_parked_max,
            },
        });
        with_json(req, ok(req), &value)
    }
}

#[cfg(test)]
mod tests {
    use super::lags_for_reads;

    #[test]
    fn only_a_member_beyond_the_bound_sends_consumers_away() {
        assert!(!lags_for_reads(Some(64), 64), "at the bound: still serves");
        assert!(lags_for_reads(Some(65), 64), "beyond it: redirects");
        assert!(!lags_for_reads(None, 64), "the leader, or no leader commit heard yet");
        assert!(!lags_for_reads(Some(u64::MAX), 0), "0 switches it off");
        assert!(lags_for_reads(Some(2), 1), "the smallest bound");
        assert!(!lags_for_reads(Some(1 << 32), 1 << 32), "at the largest bound");
    }
}
