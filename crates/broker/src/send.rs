//! SEND_MESSAGE (10), SEND_MESSAGE_V2 (310), SEND_BATCH_MESSAGE (320), CONSUMER_SEND_MSG_BACK (36) and
//! END_TRANSACTION (37).
//!
//! The leader validates the request, encodes each message in RocketMQ's stored layout (queue offset and
//! physical offset left zero: they are assigned when the Raft entry commits and patched in on reads) and
//! proposes all messages of one request as one entry, so a batch is stored all or nothing. The reply —
//! msgId (offsetMsgId), queueId, queueOffset — is sent only after a quorum has the entry on disk.
//!
//! A send with a delay level (`DELAY`) or a 5.x timer property, and every send-back retry, is staged for
//! scheduled delivery instead of stored in its topic (`schedule.rs`); batches cannot carry either. A
//! transactional half message (`TRAN_MSG`) is stored in the half topic and becomes visible only when
//! committed (`txn.rs`, which also handles END_TRANSACTION).
//!
//! Exactly-once produce: every message carrying a client id (`UNIQ_KEY`) is proposed with its
//! de-duplication key (a digest of the requested topic and the id). A retry whose key the replicated
//! window still holds is answered with the original's msgId, queue and offset — from the applied window
//! before proposing when every message of the request is known, or by `apply` when the retry raced the
//! original — and nothing is stored twice.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::{ConsumerSendMsgBackRequestHeader, SendMessageRequestHeader, SendMessageResponseHeader};
use raftmq_remoting::message::{
    decode_batch, decode_properties, encode_offset_msg_id, encode_stored_message, get_property, properties_to_string, property, sys_flag,
    tags_code, MessageToStore,
};
use raftmq_remoting::{decode_stored_message, CommandHeader, RequestCode, ResponseCode};

use crate::broker::BrokerInner;
use crate::processor::{reply, Reply};
use crate::schedule::{staged_properties, ScheduleProps, TimerDue};
use crate::store::PutError;
use crate::topics::{
    dlq_topic, group_of_retry_or_dlq, retry_topic, validate_group, validate_topic, NOT_ALLOWED_SEND, PERM_WRITE, RETRY_PREFIX,
};
use crate::txn::HalfPlan;
use raftmq_raft::node::{BusyKind, WriteError};
use raftmq_raft::types::{produce_queue_len, MessagePosition, Op, OPS_HEADER_BYTES, OP_DEDUP_BYTES, PRODUCE_HEADER_BYTES};
use raftmq_raft::types::{SCHEDULE_TOPIC, TIMER_TOPIC, TRANS_HALF_TOPIC};
use tracing::warn;

/// Messages one SEND_BATCH_MESSAGE may carry.
pub(crate) const BATCH_MESSAGES_MAX: usize = 10_000;
/// RocketMQ's default `maxReconsumeTimes`.
const MAX_RECONSUME_TIMES_DEFAULT: i32 = 16;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        // Stored messages use IPv4 hosts (clients such as the C++ decoder read nothing else).
        SocketAddr::V6(a) => SocketAddrV4::new(a.ip().to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED), a.port()),
    }
}

/// The de-duplication key of a message with client id `uniq_key` sent to `topic`: XXH3-128 of both,
/// separated by a byte no topic name holds. Part of the replicated state: never change it.
pub(crate) fn dedup_key(topic: &str, uniq_key: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(topic.as_bytes());
    h.update(&[0]);
    h.update(uniq_key.as_bytes());
    h.digest128()
}

/// A transactional half message: RocketMQ decides by the `TRAN_MSG` property (Java's `Boolean.parseBoolean`);
/// the client also sets the PREPARED transaction bits in the header's sysFlag.
pub(crate) fn is_half_message(sys_flag: i32, properties: &str) -> bool {
    sys_flag::transaction_value(sys_flag) == sys_flag::TRANSACTION_PREPARED_TYPE
        || get_property(properties, property::TRANSACTION_PREPARED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The response code and remark for a put that was not stored, or whose outcome is unknown. Two codes,
/// two meanings: SYSTEM_ERROR only when the entry may have committed; SERVICE_NOT_AVAILABLE when it
/// certainly was not stored.
fn put_error_code(e: PutError) -> (ResponseCode, String) {
    match e {
        // Refused before it was proposed (the request checks normally answer first).
        PutError::Write(e @ WriteError::EntryTooLarge { .. }) => {
            (ResponseCode::MESSAGE_ILLEGAL, format!("the request is too large for one Raft entry (entryBytesMax): {e}"))
        }
        // The entry may or may not have committed: SYSTEM_ERROR is retried by producers, which may then
        // store the message twice (at-least-once), never lose an acknowledged one.
        PutError::Write(WriteError::Unknown { why, failure }) => {
            let cause = failure.map(|f| format!(" (storage failed: {f})")).unwrap_or_default();
            (ResponseCode::SYSTEM_ERROR, format!("store outcome unknown: {why}{cause}"))
        }
        // Definitely not stored: SERVICE_NOT_AVAILABLE (as RocketMQ answers for a full disk or a stopped
        // store), which producers retry on another broker without any risk of a duplicate.
        PutError::Write(e @ (WriteError::Stopped { .. } | WriteError::NotLeader { .. } | WriteError::Transferring { .. })) => {
            (ResponseCode::SERVICE_NOT_AVAILABLE, e.to_string())
        }
        // Flow control, refused unproposed: RocketMQ's broker fast-failure answers, which producers retry
        // (after a pause, or on another broker group).
        PutError::Write(WriteError::Busy { kind: BusyKind::Overload, queued, queued_bytes, .. }) => (
            ResponseCode::SYSTEM_BUSY,
            format!(
                "[OVERLOAD]system busy, start flow control for a while (not stored: {queued} requests, {queued_bytes} bytes wait \
                 for the Raft log; sendQueueMax/sendQueueBytesMax)"
            ),
        ),
        PutError::Write(WriteError::Busy { kind: BusyKind::Expired, queued, waited_ms, .. }) => (
            ResponseCode::SYSTEM_BUSY,
            format!(
                "[TIMEOUT_CLEAN_QUEUE]broker busy, start flow control for a while, period in queue: {waited_ms}ms, size of queue: \
                 {queued} (not stored; waitTimeMillsInSendQueue)"
            ),
        ),
        PutError::Rejected(why) => (ResponseCode::SERVICE_NOT_AVAILABLE, format!("not stored: the store rejected the message: {why}")),
    }
}

struct Outgoing {
    tags_code: i64,
    data: Bytes,
    /// De-duplication key (the message carried a client id and de-duplication is on).
    key: Option<u128>,
}

impl BrokerInner {
    fn timer_max_delay_ms(&self) -> i64 {
        i64::try_from(self.cfg.timer_max_delay_sec.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    pub(crate) fn store_host(&self) -> SocketAddrV4 {
        self.cfg
            .me()
            .ok()
            .and_then(|p| p.client_addr.parse::<SocketAddr>().ok())
            .map(v4)
            .unwrap_or_else(|| SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0))
    }

    pub(crate) fn put_error_reply(&self, req: &RemotingCommand, e: PutError) -> Reply {
        match e {
            PutError::Write(WriteError::NotLeader { .. }) | PutError::Write(WriteError::Transferring { .. }) => {
                self.check_leader(req).err().flatten().or_else(|| self.not_leader_reply(req))
            }
            e => {
                let (code, remark) = put_error_code(e);
                reply(req, code, remark)
            }
        }
    }

    /// MESSAGE_ILLEGAL when `message_lens` (stored-layout sizes) for `topic` make a Raft entry above
    /// `entryBytesMax`: the messages of one request are one entry, stored all or nothing.
    pub(crate) fn check_entry_size(
        &self,
        req: &RemotingCommand,
        topic: &str,
        message_lens: impl ExactSizeIterator<Item = usize>,
        ops_bytes: usize,
    ) -> Result<(), Reply> {
        let count = message_lens.len();
        let ops = if ops_bytes > 0 { OPS_HEADER_BYTES + ops_bytes } else { 0 };
        let bytes = PRODUCE_HEADER_BYTES + ops + produce_queue_len(topic.len(), message_lens);
        let max = self.cfg.entry_bytes_max;
        if bytes > max {
            return Err(reply(
                req,
                ResponseCode::MESSAGE_ILLEGAL,
                format!("the request's {count} message(s) take {bytes} bytes as one stored entry, above entryBytesMax {max}"),
            ));
        }
        Ok(())
    }

    /// Handles codes 10, 310 and 320.
    pub(crate) async fn send(&self, born: SocketAddr, req: &RemotingCommand) -> Reply {
        let code = req.request_code();
        let h = match SendMessageRequestHeader::decode_for(code, &req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("bad send header: {e}")),
        };
        if let Err(why) = validate_topic(&h.topic) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if NOT_ALLOWED_SEND.contains(&h.topic.as_str()) {
            return reply(req, ResponseCode::NO_PERMISSION, format!("Sending message to topic[{}] is forbidden.", h.topic));
        }
        let half = is_half_message(h.sys_flag, h.properties.as_deref().unwrap_or(""));
        if half && code == RequestCode::SEND_BATCH_MESSAGE {
            return reply(req, ResponseCode::MESSAGE_ILLEGAL, "transactional (half) messages cannot be sent in a batch");
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        if let Some(remark) = self.disk.refusal(crate::config::ratio(self.cfg.disk_max_used_space_ratio)) {
            return reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, remark);
        }
        let mut topic = h.topic.clone();
        let reconsume_times = h.reconsume_times.unwrap_or(0);
        // A retried message that ran out of attempts goes to the group's dead-letter topic instead.
        if let Some(group) = topic.strip_prefix(RETRY_PREFIX) {
            let max = h.max_reconsume_times.unwrap_or(MAX_RECONSUME_TIMES_DEFAULT);
            if reconsume_times > max {
                topic = dlq_topic(group);
            }
        }
        let config = match self.store.topic(&topic) {
            Some(t) => t,
            None => {
                // Retry and dead-letter topics are born for a group that may own them; other topics only
                // with auto-create on. Either way the name and `topicsMax` are checked in `ensure_topic`.
                let allowed = match group_of_retry_or_dlq(&topic) {
                    Some(group) => self.check_group_may_own_topics(group),
                    None if self.cfg.auto_create_topic_enable => Ok(()),
                    None => Err((ResponseCode::TOPIC_NOT_EXIST, format!("topic[{topic}] not exist, apply first please!"))),
                };
                if let Err((code, why)) = allowed {
                    return reply(req, code, why);
                }
                let queues = if topic.starts_with('%') {
                    1
                } else {
                    (h.default_topic_queue_nums.max(1) as u32).min(self.cfg.default_topic_queue_nums.max(1))
                };
                match self.ensure_topic(&topic, queues).await {
                    Ok(t) => t,
                    Err((code, why)) => return reply(req, code, why),
                }
            }
        };
        if config.perm & PERM_WRITE == 0 {
            return reply(req, ResponseCode::NO_PERMISSION, format!("the topic[{topic}] sending message is forbidden"));
        }
        let queue_id = if topic != h.topic || h.queue_id < 0 {
            // Redirected or unspecified: spread over the queues.
            (now_ms() as u32) % config.write_queues.max(1)
        } else if h.queue_id as u32 >= config.write_queues {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!("request queueId[{}] is illegal, topic:[{topic}] topicConfig.writeQueueNums:[{}]", h.queue_id, config.write_queues),
            );
        } else {
            h.queue_id as u32
        };
        // A delay level stages the message in the schedule topic (see schedule.rs); without one, 5.x timer
        // properties stage it in the timer lines (due in the future) or change nothing (due now or in the
        // tolerated past). Batches can carry neither.
        let single_props = h.properties.as_deref().unwrap_or("");
        let (staging, timer) = if code == RequestCode::SEND_BATCH_MESSAGE {
            (None, None)
        } else {
            let sched = ScheduleProps::of(single_props);
            let staging = match sched.delay_level() {
                Ok(None) => None,
                Ok(Some(level)) => self.staging(level),
                Err(why) => return reply(req, ResponseCode::MESSAGE_ILLEGAL, why),
            };
            let timer = if staging.is_some() {
                None
            } else {
                let receipt = || crate::store::wall_ms().max(self.store.replicated_now_ms());
                match sched.timer_due(receipt, self.timer_max_delay_ms(), self.cfg.timer_past_tolerance_ms as i64) {
                    Ok(Some(TimerDue::At(due))) => Some(due),
                    Ok(_) => None,
                    Err(why) => return reply(req, ResponseCode::MESSAGE_ILLEGAL, why),
                }
            };
            (staging, timer)
        };
        let staged_props;
        let mut half_plan: Option<HalfPlan> = None;
        if half {
            match self.plan_half(single_props, &topic, queue_id, staging.is_some() || timer.is_some()).await {
                Ok(p) => half_plan = Some(p),
                Err((code, why)) => return reply(req, code, why),
            }
        }
        let (store_topic, store_queue, properties_of_single) = match (staging, timer) {
            _ if half_plan.is_some() => {
                let plan = half_plan.as_ref().map(|p| p.properties.as_str()).unwrap_or_default();
                (TRANS_HALF_TOPIC.to_string(), 0, plan)
            }
            (None, Some(due)) => {
                let pending = self.timers_pending();
                if pending >= self.cfg.timer_messages_max {
                    return reply(
                        req,
                        ResponseCode::SERVICE_NOT_AVAILABLE,
                        format!(
                            "not stored: {pending} timer messages are pending, the limit (timerMessagesMax {})",
                            self.cfg.timer_messages_max
                        ),
                    );
                }
                if let Err((code, why)) = self.ensure_timer_topic().await {
                    return reply(req, code, why);
                }
                staged_props = match staged_properties(single_props, &topic, queue_id, (property::TIMER_OUT_MS, due.to_string())) {
                    Ok(p) => p,
                    Err(why) => return reply(req, ResponseCode::MESSAGE_ILLEGAL, why),
                };
                (TIMER_TOPIC.to_string(), 0, staged_props.as_str())
            }
            _ => match staging {
                Some(s) => {
                    if let Err((code, why)) = self.ensure_schedule_topic().await {
                        return reply(req, code, why);
                    }
                    staged_props =
                        match staged_properties(single_props, &topic, queue_id, (property::DELAY_TIME_LEVEL, s.level.to_string())) {
                            Ok(p) => p,
                            Err(why) => return reply(req, ResponseCode::MESSAGE_ILLEGAL, why),
                        };
                    (SCHEDULE_TOPIC.to_string(), s.queue_id(), staged_props.as_str())
                }
                None => (topic.clone(), queue_id, single_props),
            },
        };
        let store_host = self.store_host();
        let born_host = v4(born);
        let store_ts = now_ms();
        let max = self.cfg.max_message_size;
        // A half message is stored with no transaction bits (RocketMQ resets them to NOT_TYPE); the commit
        // sets COMMIT_TYPE on the copy.
        let stored_sys_flag = {
            let f = h.sys_flag & !(sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6);
            if half {
                sys_flag::with_transaction_value(f, sys_flag::TRANSACTION_NOT_TYPE)
            } else {
                f
            }
        };
        let dedup_on = self.cfg.dedup_window_ms > 0;
        let encode = |body: &[u8], properties: &str, flag: i32, uniq_key: Option<&str>| -> Result<Outgoing, Reply> {
            if body.is_empty() {
                return Err(reply(req, ResponseCode::MESSAGE_ILLEGAL, "the message body is empty"));
            }
            if body.len() > max {
                return Err(reply(
                    req,
                    ResponseCode::MESSAGE_ILLEGAL,
                    format!("the message body size {} exceeds maxMessageSize {max}", body.len()),
                ));
            }
            let m = MessageToStore {
                topic: &store_topic,
                queue_id: store_queue as i32,
                flag,
                queue_offset: 0,
                physical_offset: 0,
                sys_flag: stored_sys_flag,
                born_timestamp: h.born_timestamp,
                born_host,
                store_timestamp: store_ts,
                store_host,
                reconsume_times,
                prepared_transaction_offset: 0,
                body,
                properties,
            };
            let mut out = Vec::new();
            encode_stored_message(&m, &mut out).map_err(|e| reply(req, ResponseCode::MESSAGE_ILLEGAL, e.to_string()))?;
            let key = uniq_key.filter(|k| dedup_on && !k.is_empty()).map(|k| dedup_key(&h.topic, k));
            Ok(Outgoing { tags_code: tags_code(get_property(properties, property::TAGS)), data: Bytes::from(out), key })
        };
        let mut messages = Vec::new();
        if code == RequestCode::SEND_BATCH_MESSAGE {
            let batch = match decode_batch(&req.body, BATCH_MESSAGES_MAX) {
                Ok(b) => b,
                Err(e) => return reply(req, ResponseCode::MESSAGE_ILLEGAL, format!("bad batch body: {e}")),
            };
            if batch.is_empty() {
                return reply(req, ResponseCode::MESSAGE_ILLEGAL, "the batch holds no message");
            }
            if batch.iter().any(|m| is_half_message(0, m.properties)) {
                return reply(req, ResponseCode::MESSAGE_ILLEGAL, "transactional (half) messages cannot be sent in a batch");
            }
            let scheduled = |m: &raftmq_remoting::message::BatchMessage<'_>| {
                let p = ScheduleProps::of(m.properties);
                (!matches!(p.delay_level(), Ok(None)), p.has_timer())
            };
            if let Some(i) = batch.iter().position(|m| scheduled(m).0) {
                return reply(
                    req,
                    ResponseCode::MESSAGE_ILLEGAL,
                    format!(
                        "message {i} of the batch has a DELAY property: delay levels are not supported for batch sends (as in RocketMQ)"
                    ),
                );
            }
            if let Some(i) = batch.iter().position(|m| scheduled(m).1) {
                return reply(
                    req,
                    ResponseCode::MESSAGE_ILLEGAL,
                    format!(
                        "message {i} of the batch has a timer property (TIMER_DELIVER_MS, TIMER_DELAY_SEC or TIMER_DELAY_MS): \
                         timers are not supported for batch sends"
                    ),
                );
            }
            for m in batch {
                match encode(m.body, m.properties, m.flag, get_property(m.properties, property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX)) {
                    Ok(o) => messages.push(o),
                    Err(r) => return r,
                }
            }
        } else {
            match encode(&req.body, properties_of_single, h.flag, get_property(single_props, property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX)) {
                Ok(o) => messages.push(o),
                Err(r) => return r,
            }
        }
        let keys: Vec<(u32, u128)> = messages.iter().enumerate().filter_map(|(i, m)| m.key.map(|k| (i as u32, k))).collect();
        let half_op_bytes = half_plan.as_ref().map_or(0, |p| p.op().encoded_len());
        if let Err(r) =
            self.check_entry_size(req, &store_topic, messages.iter().map(|m| m.data.len()), keys.len() * OP_DEDUP_BYTES + half_op_bytes)
        {
            return r;
        }
        // A request all of whose messages the window remembers is a retry: answer with the originals.
        if !keys.is_empty() && keys.len() == messages.len() {
            if let Some(seen) = self.store.dedup_all_seen(keys.iter().map(|(_, k)| *k)) {
                self.duplicates_answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return self.send_result(req, &seen, store_host, &store_topic, &topic, queue_id, half_plan.as_ref());
            }
        }
        #[cfg(feature = "unsafe-ack-before-quorum")]
        if self.cfg.unsafe_ack_before_quorum && staging.is_none() && timer.is_none() && !half {
            return self.unsafe_ack_before_quorum(req, &topic, queue_id, store_host, messages);
        }
        let mut ops: Vec<Op> = keys.iter().map(|(index, key)| Op::Dedup { part: 0, index: *index, key: *key }).collect();
        if let Some(p) = &half_plan {
            ops.push(p.op());
        }
        let (stored_messages, stored_bytes) = (messages.len(), messages.iter().map(|m| m.data.len() as u64).sum::<u64>());
        let put = match (staging, timer) {
            _ if half_plan.is_some() => {
                self.store.put_ops(&store_topic, store_queue, messages.into_iter().map(|m| (m.tags_code, m.data)).collect(), ops).await
            }
            (Some(s), _) => {
                self.store.put_delayed(&store_topic, store_queue, messages.into_iter().map(|m| m.data).collect(), s.delay_ms, ops).await
            }
            (None, Some(due)) => self.store.put_timer(&store_topic, messages.into_iter().map(|m| m.data).collect(), due, ops).await,
            (None, None) => {
                self.store.put_ops(&store_topic, store_queue, messages.into_iter().map(|m| (m.tags_code, m.data)).collect(), ops).await
            }
        };
        match put {
            Ok(positions) => {
                if let Some(m) = &self.metrics {
                    m.stored(&topic, stored_messages, stored_bytes);
                }
                if positions.iter().any(|p| p.duplicate) {
                    self.duplicates_answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // UNSAFE, chaos-checker tests only (`unsafeTxnVisibleAtHalf`): the half message is made visible
                // in its real queue at once, before any commit.
                #[cfg(feature = "unsafe-ack-before-quorum")]
                if self.cfg.unsafe_txn_visible_at_half && half_plan.is_some() {
                    if let Some(p) = positions.first().filter(|p| !p.duplicate) {
                        self.unsafe_txn_visible_at_half(p.phys_offset).await;
                    }
                }
                self.send_result(req, &positions, store_host, &store_topic, &topic, queue_id, half_plan.as_ref())
            }
            Err(e) => self.put_error_reply(req, e),
        }
    }

    /// The SendResult for stored (or de-duplicated) `positions`: msgIds from their commitlog offsets; the
    /// queue a plain message landed in (a duplicate's: the original's), or for a staged or half message the
    /// requested real queue with the staging-queue offset, as RocketMQ answers; a half message's
    /// `transactionId`.
    #[allow(clippy::too_many_arguments)]
    fn send_result(
        &self,
        req: &RemotingCommand,
        positions: &[MessagePosition],
        store_host: SocketAddrV4,
        store_topic: &str,
        topic: &str,
        queue_id: u32,
        half: Option<&HalfPlan>,
    ) -> Reply {
        // A duplicate's msgId is the original's, which names the broker that stored it (maybe a former
        // leader): read its STOREHOST back (a rare path; the bytes are mapped).
        let host_of = |p: &MessagePosition| {
            if !p.duplicate {
                return SocketAddr::V4(store_host);
            }
            match self.store.message_by_phys_offset(p.phys_offset) {
                Ok(Some(raw)) => decode_stored_message(&raw).map(|m| m.store_host).unwrap_or(SocketAddr::V4(store_host)),
                _ => SocketAddr::V4(store_host),
            }
        };
        let msg_id = positions.iter().map(|p| encode_offset_msg_id(host_of(p), p.phys_offset as i64)).collect::<Vec<_>>().join(",");
        let first = positions.first();
        let queue = if store_topic == topic { first.map_or(queue_id, |p| p.queue_id) } else { queue_id };
        let mut rh = SendMessageResponseHeader::new(msg_id, queue as i32, first.map_or(0, |p| p.queue_offset as i64));
        rh.transaction_id = half.map(|p| p.transaction_id.clone());
        Some(RemotingCommand::success_to(req).with_header(&rh).into())
    }

    /// `unsafeAckBeforeQuorum` (chaos-checker tests only): answers at once with the queue offset the message
    /// would get if nothing went wrong and holds the write in memory for [`UNSAFE_ACK_HOLD`] before proposing
    /// it (in arrival order, by [`unsafe_ack_drain_loop`]). Whatever a killed or deposed leader still holds is
    /// lost although acknowledged, so every leader kill loses the last second of sends: the checker's proof
    /// does not depend on a kill landing in the few milliseconds a proposal is in flight. Compiled only with
    /// the `unsafe-ack-before-quorum` feature.
    #[cfg(feature = "unsafe-ack-before-quorum")]
    fn unsafe_ack_before_quorum(
        &self,
        req: &RemotingCommand,
        topic: &str,
        queue_id: u32,
        store_host: SocketAddrV4,
        messages: Vec<Outgoing>,
    ) -> Reply {
        let n = messages.len() as u64;
        let first = {
            let mut acks = self.unsafe_acks.lock().unwrap_or_else(|e| e.into_inner());
            if acks.pending.len() >= UNSAFE_ACK_PENDING_MAX {
                return reply(req, ResponseCode::SYSTEM_BUSY, format!("unsafeAckBeforeQuorum: {UNSAFE_ACK_PENDING_MAX} writes held"));
            }
            let max = self.store.max_offset(topic, queue_id);
            let e = acks.next.entry((topic.to_string(), queue_id)).or_insert(0);
            *e = (*e).max(max);
            let first = *e;
            *e += n;
            let due = std::time::Instant::now() + UNSAFE_ACK_HOLD;
            acks.pending.push_back((due, topic.to_string(), queue_id, messages.into_iter().map(|m| (m.tags_code, m.data)).collect()));
            first
        };
        let msg_id = encode_offset_msg_id(SocketAddr::V4(store_host), 0);
        let rh = SendMessageResponseHeader::new(msg_id, queue_id as i32, first as i64);
        Some(RemotingCommand::success_to(req).with_header(&rh).into())
    }

    /// CONSUMER_SEND_MSG_BACK: stores a failed message for the group's retry topic after the retry
    /// schedule's delay (level 3 + reconsumeTimes: 10 s, 30 s, 1 min … 2 h with the default table), or into
    /// its dead-letter topic at once when it was retried `maxReconsumeTimes` times. A follower forwards the
    /// request to the leader.
    pub(crate) async fn send_back(&self, req: &RemotingCommand) -> Reply {
        let h = match ConsumerSendMsgBackRequestHeader::from_ext_fields(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("bad header: {e}")),
        };
        if let Err(why) = validate_group(&h.group) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if let Err(r) = self.check_leader(req) {
            return self.forward_to_leader(req, r).await;
        }
        let found = match u64::try_from(h.offset) {
            Ok(offset) => self.store.message_by_phys_offset(offset),
            Err(_) => Ok(None),
        };
        let raw = match found {
            Ok(Some(raw)) => raw,
            // RocketMQ's answer; here it also covers an offset that is not a committed message's start.
            Ok(None) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("look message by offset failed, {}", h.offset)),
            Err(e) => {
                warn!(offset = h.offset, error = %e, "send-back: stored record unreadable");
                return reply(req, ResponseCode::SYSTEM_ERROR, format!("stored record holding offset {} is unreadable: {e}", h.offset));
            }
        };
        let orig = match decode_stored_message(&raw) {
            Ok(m) => m,
            Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("stored message at {} is unreadable: {e}", h.offset)),
        };
        let max = h.max_reconsume_times.unwrap_or(MAX_RECONSUME_TIMES_DEFAULT);
        let dead = orig.reconsume_times >= max || h.delay_level < 0;
        let topic = if dead { dlq_topic(&h.group) } else { retry_topic(&h.group) };
        // RocketMQ's retry schedule: level 3 + reconsumeTimes unless the consumer asked for one.
        let staging = if dead {
            None
        } else {
            let level = if h.delay_level > 0 { h.delay_level } else { 3i32.saturating_add(orig.reconsume_times.max(0)) };
            self.staging(level)
        };
        if self.store.topic(&topic).is_none() {
            if let Err((code, why)) = self.check_group_may_own_topics(&h.group) {
                return reply(req, code, why);
            }
            if let Err((code, why)) = self.ensure_topic(&topic, 1).await {
                return reply(req, code, why);
            }
        }
        let mut props = decode_properties(orig.properties);
        props.entry(property::RETRY_TOPIC.to_string()).or_insert_with(|| orig.topic.to_string());
        let origin_id =
            h.origin_msg_id.clone().or_else(|| orig.uniq_key().map(String::from)).unwrap_or_else(|| orig.offset_msg_id().to_string());
        props.entry(property::ORIGIN_MESSAGE_ID.to_string()).or_insert(origin_id);
        props.insert(property::RECONSUME_TIME.to_string(), (orig.reconsume_times + 1).to_string());
        props.insert(property::MAX_RECONSUME_TIMES.to_string(), max.to_string());
        let properties = match properties_to_string(&props) {
            Ok(p) => p,
            Err(e) => return reply(req, ResponseCode::MESSAGE_ILLEGAL, e.to_string()),
        };
        let (store_topic, store_queue, properties) = match staging {
            Some(s) => {
                if let Err((code, why)) = self.ensure_schedule_topic().await {
                    return reply(req, code, why);
                }
                match staged_properties(&properties, &topic, 0, (property::DELAY_TIME_LEVEL, s.level.to_string())) {
                    Ok(p) => (SCHEDULE_TOPIC.to_string(), s.queue_id(), p),
                    Err(why) => return reply(req, ResponseCode::MESSAGE_ILLEGAL, why),
                }
            }
            None => (topic.clone(), 0, properties),
        };
        let m = MessageToStore {
            topic: &store_topic,
            queue_id: store_queue as i32,
            flag: orig.flag,
            queue_offset: 0,
            physical_offset: 0,
            sys_flag: orig.sys_flag & !(sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6),
            born_timestamp: orig.born_timestamp,
            born_host: v4(orig.born_host),
            store_timestamp: now_ms(),
            store_host: self.store_host(),
            reconsume_times: orig.reconsume_times + 1,
            prepared_transaction_offset: 0,
            body: orig.body,
            properties: &properties,
        };
        let mut out = Vec::new();
        if let Err(e) = encode_stored_message(&m, &mut out) {
            return reply(req, ResponseCode::MESSAGE_ILLEGAL, e.to_string());
        }
        if let Err(r) = self.check_entry_size(req, &store_topic, std::iter::once(out.len()), 0) {
            return r;
        }
        let tags = tags_code(get_property(&properties, property::TAGS));
        let put = match staging {
            Some(s) => self.store.put_delayed(&store_topic, store_queue, vec![Bytes::from(out)], s.delay_ms, Vec::new()).await,
            None => self.store.put(&store_topic, store_queue, vec![(tags, Bytes::from(out))]).await,
        };
        match put {
            Ok(_) => Some(RemotingCommand::success_to(req).into()),
            Err(e) => self.put_error_reply(req, e),
        }
    }
}

/// `unsafeAckBeforeQuorum` only: how long an acknowledged write waits in memory before it is proposed.
#[cfg(feature = "unsafe-ack-before-quorum")]
pub(crate) const UNSAFE_ACK_HOLD: std::time::Duration = std::time::Duration::from_secs(1);
/// `unsafeAckBeforeQuorum` only: acknowledged writes held at most; sends past it get SYSTEM_BUSY.
#[cfg(feature = "unsafe-ack-before-quorum")]
pub(crate) const UNSAFE_ACK_PENDING_MAX: usize = 65_536;

/// `unsafeAckBeforeQuorum` only: the next queue offset handed out per (topic, queue) and the acknowledged
/// writes not yet proposed, oldest first (due time, topic, queue, messages).
#[cfg(feature = "unsafe-ack-before-quorum")]
#[derive(Default)]
pub(crate) struct UnsafeAcks {
    next: std::collections::HashMap<(String, u32), u64>,
    #[allow(clippy::type_complexity)]
    pending: std::collections::VecDeque<(std::time::Instant, String, u32, Vec<(i64, Bytes)>)>,
}

/// `unsafeAckBeforeQuorum` only: proposes held writes once due, one at a time and in arrival order, so a
/// healthy leader stores each at the offset it acknowledged. A failed proposal is dropped (the loss the
/// checker must report).
#[cfg(feature = "unsafe-ack-before-quorum")]
pub(crate) async fn unsafe_ack_drain_loop(inner: std::sync::Arc<BrokerInner>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        tick.tick().await;
        loop {
            // Due writes for the same queue that follow each other go as one proposal (up to 256 KiB).
            let next = {
                let mut acks = inner.unsafe_acks.lock().unwrap_or_else(|e| e.into_inner());
                let now = std::time::Instant::now();
                match acks.pending.pop_front() {
                    Some((due, topic, queue_id, mut messages)) if due <= now => {
                        let mut bytes: usize = messages.iter().map(|m| m.1.len()).sum();
                        while let Some((d, t, q, m)) = acks.pending.front() {
                            let more: usize = m.iter().map(|m| m.1.len()).sum();
                            if *d > now || *t != topic || *q != queue_id || bytes + more > 256 * 1024 {
                                break;
                            }
                            bytes += more;
                            if let Some((.., m)) = acks.pending.pop_front() {
                                messages.extend(m);
                            }
                        }
                        Some((topic, queue_id, messages))
                    }
                    Some(not_due) => {
                        acks.pending.push_front(not_due);
                        None
                    }
                    None => None,
                }
            };
            let Some((topic, queue_id, messages)) = next else { break };
            if let Err(e) = inner.store.put(&topic, queue_id, messages).await {
                warn!(topic, queue_id, error = %e, "unsafeAckBeforeQuorum: an acknowledged write was not stored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_raft::error::StoreFailure;

    fn disk_full() -> StoreFailure {
        StoreFailure::io(
            "fallocate consume queue",
            "/data/state/consumequeue/T/0/00000000000000000000",
            &std::io::Error::from_raw_os_error(28),
        )
    }

    #[test]
    fn not_stored_and_outcome_unknown_get_different_codes() {
        let (code, remark) = put_error_code(PutError::Rejected("topic T does not exist".into()));
        assert_eq!(code, ResponseCode::SERVICE_NOT_AVAILABLE, "a rejection is certainly not stored: {remark}");
        assert!(remark.contains("topic T does not exist"), "{remark}");
        let (code, remark) = put_error_code(PutError::Write(WriteError::Stopped { failure: Some(disk_full()) }));
        assert_eq!(code, ResponseCode::SERVICE_NOT_AVAILABLE);
        assert!(remark.starts_with("not stored") && remark.contains("os error 28") && remark.contains("consumequeue"), "{remark}");
        let (code, remark) =
            put_error_code(PutError::Write(WriteError::Unknown { why: "raft dropped the write".into(), failure: Some(disk_full()) }));
        assert_eq!(code, ResponseCode::SYSTEM_ERROR, "only an unknown outcome is SYSTEM_ERROR");
        assert!(remark.starts_with("store outcome unknown") && remark.contains("No space left on device"), "{remark}");
    }
}
