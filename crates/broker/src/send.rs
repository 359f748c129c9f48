//! SEND_MESSAGE (10), SEND_MESSAGE_V2 (310), SEND_BATCH_MESSAGE (320) and CONSUMER_SEND_MSG_BACK (36).
//!
//! The leader validates the request, encodes each message in RocketMQ's stored layout (queue offset and
//! physical offset left zero: they are assigned when the Raft entry commits and patched in on reads) and
//! proposes all messages of one request as one entry, so a batch is stored all or nothing. The reply —
//! msgId (offsetMsgId), queueId, queueOffset — is sent only after a quorum has the entry on disk.

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
use crate::store::PutError;
use crate::topics::{
    dlq_topic, group_of_retry_or_dlq, retry_topic, validate_group, validate_topic, NOT_ALLOWED_SEND, PERM_WRITE, RETRY_PREFIX,
};
use raftmq_raft::node::WriteError;

/// Messages one SEND_BATCH_MESSAGE may carry.
const BATCH_MESSAGES_MAX: usize = 10_000;
/// RocketMQ's default `maxReconsumeTimes`.
const MAX_RECONSUME_TIMES_DEFAULT: i32 = 16;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        // Stored messages use IPv4 hosts (clients such as the C++ decoder read nothing else).
        SocketAddr::V6(a) => SocketAddrV4::new(a.ip().to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED), a.port()),
    }
}

struct Outgoing {
    tags_code: i64,
    data: Bytes,
}

impl BrokerInner {
    fn store_host(&self) -> SocketAddrV4 {
        self.cfg
            .me()
            .ok()
            .and_then(|p| p.client_addr.parse::<SocketAddr>().ok())
            .map(v4)
            .unwrap_or_else(|| SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0))
    }

    fn put_error_reply(&self, req: &RemotingCommand, e: PutError) -> Reply {
        match e {
            PutError::Write(WriteError::NotLeader { .. }) | PutError::Write(WriteError::Transferring { .. }) => self
                .check_leader(req)
                .err()
                .flatten()
                .or_else(|| reply(req, ResponseCode::SERVICE_NOT_AVAILABLE, "leadership moved; retry")),
            // The entry may or may not have committed: SYSTEM_ERROR is retried by producers, which may
            // then store the message twice (at-least-once), never lose an acknowledged one.
            PutError::Write(WriteError::Unknown(why)) => reply(req, ResponseCode::SYSTEM_ERROR, format!("store outcome unknown: {why}")),
            PutError::Rejected(why) => reply(req, ResponseCode::SYSTEM_ERROR, format!("store rejected the message: {why}")),
        }
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
        if let Err(r) = self.check_leader(req) {
            return r;
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
        let store_host = self.store_host();
        let born_host = v4(born);
        let store_ts = now_ms();
        let max = self.cfg.max_message_size;
        let encode = |body: &[u8], properties: &str, flag: i32| -> Result<Outgoing, Reply> {
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
                topic: &topic,
                queue_id: queue_id as i32,
                flag,
                queue_offset: 0,
                physical_offset: 0,
                sys_flag: h.sys_flag & !(sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6),
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
            Ok(Outgoing { tags_code: tags_code(get_property(properties, property::TAGS)), data: Bytes::from(out) })
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
            for m in batch {
                match encode(m.body, m.properties, m.flag) {
                    Ok(o) => messages.push(o),
                    Err(r) => return r,
                }
            }
        } else {
            match encode(&req.body, h.properties.as_deref().unwrap_or(""), h.flag) {
                Ok(o) => messages.push(o),
                Err(r) => return r,
            }
        }
        if self.cfg.unsafe_ack_before_quorum {
            return self.unsafe_ack_before_quorum(req, &topic, queue_id, store_host, messages);
        }
        let put = self.store.put(&topic, queue_id, messages.into_iter().map(|m| (m.tags_code, m.data)).collect()).await;
        match put {
            Ok(positions) => {
                let msg_id = positions
                    .iter()
                    .map(|(_, phys)| encode_offset_msg_id(SocketAddr::V4(store_host), *phys as i64))
                    .collect::<Vec<_>>()
                    .join(",");
                let first = positions.first().map(|(q, _)| *q as i64).unwrap_or(0);
                let rh = SendMessageResponseHeader::new(msg_id, queue_id as i32, first);
                Some(RemotingCommand::success_to(req).with_header(&rh).into())
            }
            Err(e) => self.put_error_reply(req, e),
        }
    }

    /// `unsafeAckBeforeQuorum` (chaos-checker tests only): proposes the write in the background and answers
    /// at once with the queue offset the message would get if nothing went wrong. Never enable in production.
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
            let mut next = self.unsafe_next_offsets.lock().unwrap_or_else(|e| e.into_inner());
            let e = next.entry((topic.to_string(), queue_id)).or_insert(0);
            *e = (*e).max(self.store.max_offset(topic, queue_id));
            let first = *e;
            *e += n;
            first
        };
        let store = self.store.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            let _ = store.put(&topic, queue_id, messages.into_iter().map(|m| (m.tags_code, m.data)).collect()).await;
        });
        let msg_id = encode_offset_msg_id(SocketAddr::V4(store_host), 0);
        let rh = SendMessageResponseHeader::new(msg_id, queue_id as i32, first as i64);
        Some(RemotingCommand::success_to(req).with_header(&rh).into())
    }

    /// CONSUMER_SEND_MSG_BACK: stores a failed message into the group's retry topic, or its dead-letter
    /// topic once it was retried `maxReconsumeTimes` times. Delivery is immediate; the delay-level schedule
    /// is not implemented yet.
    pub(crate) async fn send_back(&self, req: &RemotingCommand) -> Reply {
        let h = match ConsumerSendMsgBackRequestHeader::from_ext_fields(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("bad header: {e}")),
        };
        if let Err(why) = validate_group(&h.group) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        let Some(raw) = (h.offset >= 0).then(|| self.store.message_by_phys_offset(h.offset as u64)).flatten() else {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("look message by offset failed, {}", h.offset));
        };
        let orig = match decode_stored_message(&raw) {
            Ok(m) => m,
            Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("stored message at {} is unreadable: {e}", h.offset)),
        };
        let max = h.max_reconsume_times.unwrap_or(MAX_RECONSUME_TIMES_DEFAULT);
        let dead = orig.reconsume_times >= max || h.delay_level < 0;
        let topic = if dead { dlq_topic(&h.group) } else { retry_topic(&h.group) };
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
        let m = MessageToStore {
            topic: &topic,
            queue_id: 0,
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
        let tags = tags_code(get_property(&properties, property::TAGS));
        match self.store.put(&topic, 0, vec![(tags, Bytes::from(out))]).await {
            Ok(_) => Some(RemotingCommand::success_to(req).into()),
            Err(e) => self.put_error_reply(req, e),
        }
    }
}
