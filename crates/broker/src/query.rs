//! Finding messages: QUERY_MESSAGE (12) by key or message id over the node's message index, and
//! VIEW_MESSAGE_BY_ID (33) by commitlog offset. Also the index's key extractor: what the index (in
//! `raftmq-raft`, which does not know the message format) indexes of each stored message.
//!
//! Any member answers, leader or not: the index and the commitlog reads are local, and only applied
//! (committed) messages are returned. Index hits are candidates (32-bit hashes collide): every message is
//! read back through the CRC-verified commitlog path and matched exactly — topic, key (a `KEYS` token or,
//! for a message-id query, `UNIQ_KEY`) and time range — and must be in its consume queue (a de-duplicated
//! retry's bytes are in the log but were never indexed, so they are not returned). Reads run on the
//! blocking pool, never on the tokio workers.

use std::time::Duration;

use bytes::Bytes;
use raftmq_raft::message_index::IndexedMessage;
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::{
    parse_bool, CommandHeader, QueryMessageRequestHeader, QueryMessageResponseHeader, ViewMessageRequestHeader, UNIQUE_KEY_QUERY_FIELD,
};
use raftmq_remoting::message::{decode_stored_message, patch_offsets, property, sys_flag, DecodedMessage, PROPERTIES_BYTES_MAX};
use raftmq_remoting::ResponseCode;

use crate::broker::BrokerInner;
use crate::processor::{reply, Reply};
use crate::store::MessageStore;
use crate::topics::validate_topic;

/// Messages one QUERY_MESSAGE returns at most (RocketMQ `maxMsgsNumBatch`): a larger `maxNum` is capped.
pub const QUERY_MESSAGES_MAX: usize = 64;
/// Index candidates one query reads back from the log at most (hash collisions and unindexed copies are
/// skipped among them).
pub const QUERY_CANDIDATES_MAX: usize = 1024;
/// Longest key a query may carry (a key lives in a message's properties, which are at most this long).
pub const QUERY_KEY_BYTES_MAX: usize = PROPERTIES_BYTES_MAX;
/// How long a query waits for the index to reach what this node had applied when the query arrived
/// (a message acknowledged just before is then found).
pub const QUERY_INDEX_WAIT: Duration = Duration::from_secs(1);

/// The index's view of a stored message: its topic, store time, `UNIQ_KEY` and `KEYS` tokens. Rolled-back
/// transactional records are not indexed (RocketMQ's rule; raftmq stores none, a rollback being a log op).
pub fn index_keys(data: &[u8]) -> Option<IndexedMessage> {
    let m = decode_stored_message(data).ok()?;
    if m.sys_flag & sys_flag::TRANSACTION_ROLLBACK_TYPE == sys_flag::TRANSACTION_ROLLBACK_TYPE {
        return None;
    }
    let mut keys: Vec<String> = m.uniq_key().filter(|k| !k.is_empty()).map(String::from).into_iter().collect();
    keys.extend(key_tokens(&m).map(String::from));
    if keys.is_empty() {
        return None;
    }
    Some(IndexedMessage { topic: m.topic.to_string(), store_ms: m.store_timestamp, keys })
}

fn key_tokens<'a>(m: &DecodedMessage<'a>) -> impl Iterator<Item = &'a str> {
    m.property(property::KEYS).unwrap_or("").split(' ').filter(|t| !t.is_empty())
}

/// True when `m` is what the query asked for.
fn matches(m: &DecodedMessage<'_>, h: &QueryMessageRequestHeader, uniq: bool) -> bool {
    m.topic == h.topic
        && (h.begin_timestamp..=h.end_timestamp).contains(&m.store_timestamp)
        && if uniq { m.uniq_key() == Some(h.key.as_str()) } else { key_tokens(m).any(|t| t == h.key) }
}

/// The stored message at `phys` as a consumer would get it — QUEUEOFFSET and PHYSICALOFFSET filled in —
/// if it is applied and (with `must_be_queued`) indexed in its consume queue. With the decoded message.
fn served_message(store: &MessageStore, phys: u64, must_be_queued: bool) -> Option<Bytes> {
    let data = match store.message_by_phys_offset(phys) {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(phys, error = %e, "message query: record unreadable");
            return None;
        }
    };
    let m = decode_stored_message(&data).ok()?;
    let queue_offset = u32::try_from(m.queue_id).ok().and_then(|qid| store.queue(m.topic, qid)).and_then(|q| {
        let at = q.first_offset_at_or_after(phys);
        q.get(at).filter(|u| u.phys_offset == phys).map(|_| at)
    });
    if must_be_queued && queue_offset.is_none() {
        return None;
    }
    let mut out = data.to_vec();
    patch_offsets(&mut out, queue_offset.map_or(m.queue_offset, |o| o as i64), phys as i64).ok()?;
    Some(Bytes::from(out))
}

fn parse_header<H: CommandHeader>(req: &RemotingCommand) -> Result<H, Reply> {
    H::from_ext_fields(&req.ext_fields).map_err(|e| reply(req, ResponseCode::SYSTEM_ERROR, format!("bad request header: {e}")))
}

impl BrokerInner {
    /// QUERY_MESSAGE (12).
    pub(crate) async fn query_message(&self, req: &RemotingCommand) -> Reply {
        let h: QueryMessageRequestHeader = match parse_header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Err(why) = validate_topic(&h.topic) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if h.key.is_empty() || h.key.len() > QUERY_KEY_BYTES_MAX {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("the query key must be 1..={QUERY_KEY_BYTES_MAX} bytes"));
        }
        if h.max_num < 1 {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("maxNum {} must be at least 1", h.max_num));
        }
        let uniq = req.ext_fields.get(UNIQUE_KEY_QUERY_FIELD).and_then(|v| parse_bool(v)).unwrap_or(false);
        let max = (h.max_num as usize).min(QUERY_MESSAGES_MAX);
        let Some(index) = self.node.message_index().cloned() else {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!(
                    "node {} of broker {} keeps no message index (messageIndexEnable = false, or it failed to open)",
                    self.cfg.node_id, self.cfg.broker_name
                ),
            );
        };
        let store = self.store.clone();
        let applied = self.node.state().last_applied_index();
        let h2 = h.clone();
        let found = tokio::task::spawn_blocking(move || {
            if let Some(a) = applied {
                index.wait_indexed(a + 1, QUERY_INDEX_WAIT);
            }
            let (candidates, progress) = index.query(&h2.topic, &h2.key, h2.begin_timestamp, h2.end_timestamp, QUERY_CANDIDATES_MAX)?;
            let mut out = Vec::new();
            for phys in candidates {
                if out.len() >= max {
                    break;
                }
                let Some(data) = served_message(&store, phys, true) else { continue };
                if decode_stored_message(&data).is_ok_and(|m| matches(&m, &h2, uniq)) {
                    out.push(data);
                }
            }
            Ok::<_, raftmq_raft::message_index::IndexError>((out, progress))
        })
        .await;
        let (messages, progress) = match found {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("message index unavailable on this node: {e}")),
            Err(e) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("message query failed: {e}")),
        };
        if messages.is_empty() {
            let what = if uniq { "message id" } else { "key" };
            return reply(
                req,
                ResponseCode::QUERY_NOT_FOUND,
                format!(
                    "can not find message, maybe time range not correct: no message of topic {} with {what} {:?} stored in [{}, {}] \
                     (node {} indexed up to commitlog position {})",
                    h.topic, h.key, h.begin_timestamp, h.end_timestamp, self.cfg.node_id, progress.last_update_pos
                ),
            );
        }
        let rh = QueryMessageResponseHeader {
            index_last_update_timestamp: progress.last_update_ms,
            index_last_update_phyoffset: progress.last_update_pos as i64,
        };
        let mut body = Vec::with_capacity(messages.iter().map(Bytes::len).sum());
        for m in &messages {
            body.extend_from_slice(m);
        }
        Some(RemotingCommand::success_to(req).with_header(&rh).with_body(Bytes::from(body)).into())
    }

    /// VIEW_MESSAGE_BY_ID (33).
    pub(crate) async fn view_message_by_id(&self, req: &RemotingCommand) -> Reply {
        let h: ViewMessageRequestHeader = match parse_header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let not_found =
            |why: &str| reply(req, ResponseCode::SYSTEM_ERROR, format!("can not find message by the offset, {}{why}", h.offset));
        let Ok(phys) = u64::try_from(h.offset) else { return not_found(": a commitlog offset is never negative") };
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || served_message(&store, phys, false)).await {
            Ok(Some(data)) => Some(RemotingCommand::success_to(req).with_body(data).into()),
            Ok(None) => not_found(""),
            Err(e) => not_found(&format!(": {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_remoting::message::{encode_stored_message, MessageToStore};

    fn stored(topic: &str, props: &str, sys_flag: i32, ts: i64) -> Vec<u8> {
        let host = "127.0.0.1:10911".parse().unwrap();
        let m = MessageToStore {
            topic,
            queue_id: 1,
            flag: 0,
            queue_offset: 0,
            physical_offset: 0,
            sys_flag,
            born_timestamp: 1,
            born_host: host,
            store_timestamp: ts,
            store_host: host,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: b"b",
            properties: props,
        };
        let mut out = Vec::new();
        encode_stored_message(&m, &mut out).unwrap();
        out
    }

    #[test]
    fn index_keys_are_uniq_key_and_keys_tokens() {
        let props = "KEYS\u{1}a  b\u{2}UNIQ_KEY\u{1}ID1\u{2}TAGS\u{1}t\u{2}";
        let k = index_keys(&stored("T", props, 0, 77)).unwrap();
        assert_eq!(k, IndexedMessage { topic: "T".into(), store_ms: 77, keys: vec!["ID1".into(), "a".into(), "b".into()] });
        assert_eq!(index_keys(&stored("T", "TAGS\u{1}t\u{2}", 0, 1)), None, "nothing to index");
        assert_eq!(index_keys(&stored("T", props, sys_flag::TRANSACTION_ROLLBACK_TYPE, 1)), None, "rollback");
        assert_eq!(index_keys(b"garbage"), None);
    }

    #[test]
    fn matching_is_exact_on_topic_key_and_time() {
        let data = stored("T", "KEYS\u{1}order-1 order-2\u{2}UNIQ_KEY\u{1}ID1\u{2}", 0, 100);
        let m = decode_stored_message(&data).unwrap();
        let q = |topic: &str, key: &str, b: i64, e: i64| QueryMessageRequestHeader {
            topic: topic.into(),
            key: key.into(),
            max_num: 1,
            begin_timestamp: b,
            end_timestamp: e,
        };
        assert!(matches(&m, &q("T", "order-2", 0, 100), false));
        assert!(!matches(&m, &q("T", "order", 0, 100), false), "a prefix is not a token");
        assert!(!matches(&m, &q("U", "order-2", 0, 100), false), "other topic");
        assert!(!matches(&m, &q("T", "order-2", 101, 200), false), "outside the time range");
        assert!(matches(&m, &q("T", "ID1", 0, 100), true));
        assert!(!matches(&m, &q("T", "ID1", 0, 100), false), "a msgId is not a KEYS token");
        assert!(!matches(&m, &q("T", "order-1", 0, 100), true), "a KEYS token is not the msgId");
    }
}
