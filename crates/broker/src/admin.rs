//! The read-only admin requests RocketMQ's tools send to a broker (`mqadmin topicStatus`, `consumerProgress`,
//! `brokerStatus`, `topicList -c`, `consumerConnection`, `producerConnection` and the Dashboard's views of the
//! same): GET_TOPIC_STATS_INFO (202), GET_CONSUME_STATS (208), GET_BROKER_RUNTIME_INFO (28),
//! GET_ALL_TOPIC_CONFIG (21), GET_CONSUMER_CONNECTION_LIST (203) and GET_PRODUCER_CONNECTION_LIST (204).
//! Statistics answer from this member's applied state (any member answers; the leader's figures are the
//! newest), with bodies in the form Java's tools parse (fastjson's object-keyed maps,
//! `raftmq_remoting::body::encode_queue_map`). Connection lists answer from this member's client registry:
//! the clients whose heartbeats reached this member (RocketMQ clients heartbeat to every member of a group).

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_remoting::body::{
    encode_json_body, Connection, ConsumeStats, ConsumerConnection, KvTable, MessageModel as WireMessageModel, MessageQueue, OffsetWrapper,
    ProducerConnection, SubscriptionData, TopicOffset, TopicStatsTable,
};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::{
    ConsumerGroupHeader, GetConsumeStatsRequestHeader, GetProducerConnectionListRequestHeader, GetTopicStatsInfoRequestHeader,
};
use raftmq_remoting::ResponseCode;

use crate::broker::BrokerInner;
use crate::consumers::{ClientInfo, MessageModel, Subscription};
use crate::processor::{header, ok, reply, Reply};
use crate::topics::validate_group;

/// Most topics one GET_CONSUME_STATS answer covers when the request names none (every topic the group has
/// offsets on): the offset table allows a group offsets on every topic (`topicsMax`), and each queue is one
/// entry of the answer, which must fit a frame. A group beyond it is answered with its first
/// `CONSUME_STATS_TOPICS_MAX` topics by name, and the remark says so.
pub const CONSUME_STATS_TOPICS_MAX: usize = 1024;

impl BrokerInner {
    /// GET_TOPIC_STATS_INFO: each queue's min and max offset and the store time of its newest message.
    pub(crate) fn topic_stats(&self, req: &RemotingCommand) -> Reply {
        let h: GetTopicStatsInfoRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let Some(t) = self.store.topic(&h.topic) else {
            return reply(req, ResponseCode::TOPIC_NOT_EXIST, format!("topic[{}] not exist", h.topic));
        };
        let mut table = TopicStatsTable::default();
        for q in 0..t.read_queues.max(t.write_queues) {
            let (min, max) = (self.store.min_offset(&h.topic, q), self.store.max_offset(&h.topic, q));
            let last = if max > min { self.store.store_time_at(&h.topic, q, max - 1).unwrap_or(0) } else { 0 };
            table.offset_table.insert(
                self.queue_of(&h.topic, q),
                TopicOffset { last_update_timestamp: last, max_offset: max as i64, min_offset: min as i64 },
            );
        }
        self.encoded(req, table.encode())
    }

    /// GET_CONSUME_STATS: per queue of the named topic (or of every topic the group has offsets on), the
    /// queue's max offset, the group's committed offset and the store time of the last consumed message.
    pub(crate) fn consume_stats(&self, req: &RemotingCommand) -> Reply {
        let h: GetConsumeStatsRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        if let Err(why) = validate_group(&h.consumer_group) {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        let mut topics = match &h.topic {
            Some(t) if self.store.topic(t).is_none() => {
                return reply(req, ResponseCode::TOPIC_NOT_EXIST, format!("topic[{t}] not exist"));
            }
            Some(t) => vec![t.clone()],
            None => self.store.group_topics(&h.consumer_group),
        };
        let cut = cap_topics(&mut topics);
        let mut stats = ConsumeStats::default();
        for topic in &topics {
            let Some(t) = self.store.topic(topic) else { continue };
            for q in 0..t.read_queues {
                let committed = self.store.consumer_offset(&h.consumer_group, topic, q).unwrap_or(0);
                let last = if committed > 0 { self.store.store_time_at(topic, q, committed - 1).unwrap_or(0) } else { 0 };
                stats.offset_table.insert(
                    self.queue_of(topic, q),
                    OffsetWrapper {
                        broker_offset: self.store.max_offset(topic, q) as i64,
                        consumer_offset: committed as i64,
                        last_timestamp: last,
                    },
                );
            }
        }
        let mut r = self.encoded(req, stats.encode());
        if cut {
            if let Some(resp) = r.as_mut() {
                resp.cmd.remark = Some(format!(
                    "group {} has offsets on more than {CONSUME_STATS_TOPICS_MAX} topics; the first {CONSUME_STATS_TOPICS_MAX} by \
                     name are shown (ask per topic)",
                    h.consumer_group
                ));
            }
        }
        r
    }

    /// GET_ALL_TOPIC_CONFIG: the topic table, as registrations carry it.
    pub(crate) fn all_topic_config(&self, req: &RemotingCommand) -> Reply {
        let wrapper = crate::broker::topic_config_wrapper(self.store.topics());
        self.encoded(req, encode_json_body(&wrapper))
    }

    /// GET_BROKER_RUNTIME_INFO: figures this member knows, under RocketMQ's key names where one exists
    /// (`bootTimestamp`, `runtime`, `commitLogMinOffset`, `commitLogMaxOffset`, `commitLogDirCapacity`,
    /// `commitLogDiskRatio`, `brokerVersionDesc`, `earliestMessageTimeStamp`) and `raft*` keys for the Raft state.
    pub(crate) fn broker_runtime_info(&self, req: &RemotingCommand) -> Reply {
        let s = self.node.status();
        let log = self.node.state().commitlog().state();
        let floor = self.node.state().retention().floor.pos;
        let u = self.disk.usage();
        let up = self.activity.uptime();
        let boot_ms = raftmq_remoting::cluster_auth::unix_ms().saturating_sub(up.as_millis() as u64);
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let mut table: BTreeMap<String, String> = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            table.insert(k.to_string(), v);
        };
        put("brokerVersionDesc", format!("raftmq {}", env!("CARGO_PKG_VERSION")));
        put("bootTimestamp", boot_ms.to_string());
        put("runtime", runtime_text(up));
        put("commitLogMinOffset", floor.to_string());
        put("commitLogMaxOffset", log.write_pos.to_string());
        put("commitLogDirCapacity", format!("Total : {:.1} GiB, Free : {:.1} GiB.", gib(u.total), gib(u.available)));
        put("commitLogDiskRatio", format!("{:.4}", u.used_ratio()));
        let earliest = self.store.topics().iter().flat_map(|t| (0..t.read_queues).map(move |q| (t.name.clone(), q))).fold(
            None::<i64>,
            |acc, (t, q)| match self.store.earliest_store_time(&t, q) {
                Some(ts) => Some(acc.map_or(ts, |a| a.min(ts))),
                None => acc,
            },
        );
        put("earliestMessageTimeStamp", earliest.unwrap_or(0).to_string());
        put("raftRole", format!("{:?}", s.role));
        put("raftTerm", s.term.to_string());
        put("raftLastLogIndex", s.last_log_index.unwrap_or(0).to_string());
        put("raftCommitIndex", s.commit_index.unwrap_or(0).to_string());
        put("raftAppliedIndex", s.applied_index.unwrap_or(0).to_string());
        self.encoded(req, encode_json_body(&KvTable { table }))
    }

    fn queue_of(&self, topic: &str, queue_id: u32) -> MessageQueue {
        MessageQueue { topic: topic.to_string(), broker_name: self.cfg.broker_name.clone(), queue_id: queue_id as i32 }
    }

    /// GET_CONSUMER_CONNECTION_LIST: the group's live clients (id, address, language, version), its
    /// subscriptions and settings; 206 CONSUMER_NOT_ONLINE when no client of it is connected here.
    pub(crate) fn consumer_connections(&self, req: &RemotingCommand) -> Reply {
        let h: ConsumerGroupHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let Some(v) = self.clients.consumer_group_view(&h.consumer_group) else {
            return reply(req, ResponseCode::CONSUMER_NOT_ONLINE, format!("the consumer group[{}] not online", h.consumer_group));
        };
        let body = ConsumerConnection {
            connection_set: v.clients.into_iter().map(connection).collect(),
            subscription_table: v.subscriptions.into_iter().map(|(topic, s)| (topic.clone(), subscription_data(topic, &s))).collect(),
            consume_type: v.consume_type,
            message_model: match v.model {
                MessageModel::Broadcasting => WireMessageModel::Broadcasting,
                MessageModel::Clustering => WireMessageModel::Clustering,
            },
            consume_from_where: v.consume_from_where,
        };
        self.encoded(req, encode_json_body(&body))
    }

    /// GET_PRODUCER_CONNECTION_LIST: the group's live clients; 1 SYSTEM_ERROR when none is connected here
    /// (RocketMQ's answer).
    pub(crate) fn producer_connections(&self, req: &RemotingCommand) -> Reply {
        let h: GetProducerConnectionListRequestHeader = match header(req) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let clients = self.clients.producer_group_view(&h.producer_group);
        if clients.is_empty() {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("the producer group[{}] not exist", h.producer_group));
        }
        self.encoded(req, encode_json_body(&ProducerConnection { connection_set: clients.into_iter().map(connection).collect() }))
    }

    fn encoded(&self, req: &RemotingCommand, body: raftmq_remoting::Result<bytes::Bytes>) -> Reply {
        match body {
            Ok(b) => Some(ok(req).with_body(b).into()),
            Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, format!("could not encode the answer: {e}")),
        }
    }
}

/// A registry client as RocketMQ's `Connection`.
fn connection((client_id, info): (String, ClientInfo)) -> Connection {
    Connection { client_id, client_addr: info.addr, language: info.language, version: i64::from(info.version) }
}

/// A parsed subscription as RocketMQ's `SubscriptionData` (what `FilterAPI.build` makes of the expression;
/// SQL92 subscriptions have no tags).
fn subscription_data(topic: String, s: &Subscription) -> SubscriptionData {
    let tags: Vec<String> = match s.codes {
        None => Vec::new(),
        Some(_) => s.expression.split("||").map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
    };
    let expression_type =
        if s.is_sql() { raftmq_remoting::body::EXPRESSION_TYPE_SQL92 } else { raftmq_remoting::body::EXPRESSION_TYPE_TAG };
    SubscriptionData {
        class_filter_mode: false,
        code_set: tags.iter().map(|t| raftmq_remoting::message::java_string_hash(t)).collect(),
        tags_set: tags,
        sub_string: s.expression.clone(),
        sub_version: s.version,
        expression_type: expression_type.to_string(),
        topic,
    }
}

/// Keeps the first [`CONSUME_STATS_TOPICS_MAX`] topics (they come sorted by name); true when some were cut.
fn cap_topics(topics: &mut Vec<String>) -> bool {
    let cut = topics.len() > CONSUME_STATS_TOPICS_MAX;
    topics.truncate(CONSUME_STATS_TOPICS_MAX);
    cut
}

/// RocketMQ's `runtime` text: `[ D days, H hours, M minutes, S seconds ]`.
fn runtime_text(up: Duration) -> String {
    let s = up.as_secs();
    format!("[ {} days, {} hours, {} minutes, {} seconds ]", s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_stats_cover_at_most_the_topic_limit() {
        let mut at: Vec<String> = (0..CONSUME_STATS_TOPICS_MAX).map(|i| format!("T{i:05}")).collect();
        assert!(!cap_topics(&mut at));
        assert_eq!(at.len(), CONSUME_STATS_TOPICS_MAX);
        let mut over: Vec<String> = (0..=CONSUME_STATS_TOPICS_MAX).map(|i| format!("T{i:05}")).collect();
        assert!(cap_topics(&mut over));
        assert_eq!((over.len(), over.last().map(String::as_str)), (CONSUME_STATS_TOPICS_MAX, Some("T01023")));
    }

    #[test]
    fn runtime_reads_as_rocketmq_writes_it() {
        assert_eq!(runtime_text(Duration::from_secs(90_061)), "[ 1 days, 1 hours, 1 minutes, 1 seconds ]");
        assert_eq!(runtime_text(Duration::ZERO), "[ 0 days, 0 hours, 0 minutes, 0 seconds ]");
    }
}
