//! Administration over the remoting protocol: cluster and topic listings, topic creation on every broker
//! group's leader, per-queue consumer-group progress, server-side offset resets (INVOKE_BROKER_TO_RESET_OFFSET,
//! 222), raftmq's node status and membership changes, and finding messages by key, by message id
//! (`UNIQ_KEY`) and by offsetMsgId (QUERY_MESSAGE 12, VIEW_MESSAGE_BY_ID 33), subscription groups (200, 201,
//! 207), consume statistics (208) and topic deletion (215 on every broker group, then 216 on every nameserver).

use bytes::Bytes;
use raftmq_remoting::body::{
    decode_json_body, encode_json_body, ClusterInfo, ConsumeStats, ResetOffsetBody, SubscriptionGroupConfig, SubscriptionGroupWrapper,
    TopicRouteData,
};
use raftmq_remoting::codes::{
    RAFTMQ_ADD_NODE, RAFTMQ_MEMBERS, RAFTMQ_NODE_STATUS, RAFTMQ_PROMOTE_NODE, RAFTMQ_REMOVE_NODE, RAFTMQ_SET_DELAY_LEVELS,
    RAFTMQ_TRANSFER_LEADER,
};
use raftmq_remoting::header::{
    perm, CreateTopicRequestHeader, DeleteSubscriptionGroupRequestHeader, DeleteTopicRequestHeader, GetConsumeStatsRequestHeader,
    QueryMessageRequestHeader, ResetOffsetRequestHeader, ViewMessageRequestHeader, DEFAULT_TOPIC, UNIQUE_KEY_QUERY_FIELD,
};
use raftmq_remoting::message::{decode_offset_msg_id, StoredMessages};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};
use serde::Deserialize;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::instance::{check_success, ClientInstance};
use crate::message::{MessageExt, MessageQueue};
use crate::pull::{max_offset, query_consumer_offset, readable_queues};

/// A consumer group's position on one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProgress {
    /// The queue.
    pub queue: MessageQueue,
    /// The queue's next offset to be written.
    pub broker_offset: i64,
    /// The group's committed offset, `None` when it has none.
    pub consumer_offset: Option<i64>,
}

impl QueueProgress {
    /// Messages not yet consumed (`None` when the group has no offset).
    pub fn lag(&self) -> Option<i64> {
        self.consumer_offset.map(|o| (self.broker_offset - o).max(0))
    }
}

/// Most messages a key query asks each broker group for (brokers cap `maxNum` at 64, as RocketMQ's
/// `maxMsgsNumBatch`).
pub const QUERY_MESSAGES_MAX: i32 = 64;
/// `maxNum` of a message-id query (RocketMQ's `defaultQueryMaxNum`).
pub const QUERY_BY_ID_MAX: i32 = 32;
/// Bodies of queried messages are decompressed up to this size.
const QUERY_BODY_BYTES_MAX: usize = 16 << 20;

/// How a stored message is looked for.
enum Lookup<'a> {
    Key(&'a str),
    UniqKey(&'a str),
}

/// Decodes a QUERY_MESSAGE or VIEW_MESSAGE_BY_ID body from `broker_name`.
fn decode_found(body: &Bytes, broker_name: &str) -> Result<Vec<(MessageExt, String)>> {
    let mut out = Vec::new();
    for m in StoredMessages::new(body) {
        let m = m?;
        out.push((MessageExt::from_decoded(&m, body, broker_name, QUERY_BODY_BYTES_MAX)?, m.topic.to_string()));
    }
    Ok(out)
}

/// Where [`Admin::reset_offset`] moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The first message stored at or after this time (ms since the epoch); the end of a queue whose
    /// messages are all older.
    Time(i64),
    /// The oldest retained message (time 0).
    Earliest,
    /// The end of each queue: skip everything stored so far (timestamp −1).
    Latest,
}

impl ResetTo {
    /// The header's `timestamp`.
    pub fn timestamp(self) -> i64 {
        match self {
            ResetTo::Time(ms) => ms,
            ResetTo::Earliest => 0,
            ResetTo::Latest => -1,
        }
    }
}

/// The administration client.
pub struct Admin {
    client: ClientInstance,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TopicList {
    #[serde(default)]
    topic_list: Vec<String>,
}

impl Admin {
    /// An admin client on the shared instance for `config`.
    pub async fn start(config: ClientConfig) -> Result<Admin> {
        let client = ClientInstance::get_or_create(&config)?;
        client.acquire();
        Ok(Admin { client })
    }

    /// Releases the instance.
    pub async fn shutdown(self) {
        self.client.release();
    }

    /// Broker groups and their members, from the nameserver.
    pub async fn cluster_info(&self) -> Result<ClusterInfo> {
        let resp = self.client.invoke_namesrv(RemotingCommand::request(RequestCode::GET_BROKER_CLUSTER_INFO, 0)).await?;
        let resp = check_success("nameserver", resp)?;
        Ok(decode_json_body("ClusterInfo", &resp.body)?)
    }

    /// Every topic the nameserver knows.
    pub async fn topic_list(&self) -> Result<Vec<String>> {
        let resp = self.client.invoke_namesrv(RemotingCommand::request(RequestCode::GET_ALL_TOPIC_LIST_FROM_NAMESERVER, 0)).await?;
        let resp = check_success("nameserver", resp)?;
        let list: TopicList = decode_json_body("TopicList", &resp.body)?;
        Ok(list.topic_list)
    }

    /// A topic's route; `None` when no broker serves it.
    pub async fn topic_route(&self, topic: &str) -> Result<Option<TopicRouteData>> {
        self.client.update_route(topic).await
    }

    /// Creates (or updates) `topic` with `queues` read and write queues on every broker group; returns the
    /// groups it was created on. Goes to each group's leader; fails on the first group that refuses.
    pub async fn create_topic(&self, topic: &str, queues: i32) -> Result<Vec<String>> {
        crate::producer::validate_topic(topic)?;
        let info = self.cluster_info().await?;
        if info.broker_addr_table.is_empty() {
            return Err(ClientError::State("no broker group is registered with the nameserver".into()));
        }
        // Leader lookups use the cached routes; the template topic's route names every group.
        self.client.update_route(DEFAULT_TOPIC).await?;
        let mut done = Vec::new();
        for (name, b) in &info.broker_addr_table {
            let h = CreateTopicRequestHeader {
                topic: topic.to_string(),
                default_topic: DEFAULT_TOPIC.into(),
                read_queue_nums: queues,
                write_queue_nums: queues,
                perm: perm::READ_WRITE,
                topic_filter_type: "SINGLE_TAG".into(),
                ..Default::default()
            };
            let cmd = RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 0).with_header(&h);
            let resp = match self.client.leader_addr(name) {
                Some(_) => self.client.invoke_on_leader(name, cmd, self.client.config().request_timeout).await?,
                None => {
                    let addr = b.master_addr().ok_or_else(|| ClientError::State(format!("broker group {name} has no leader")))?;
                    self.client.invoke(addr, cmd, self.client.config().request_timeout).await?
                }
            };
            check_success(name, resp)?;
            done.push(name.clone());
        }
        Ok(done)
    }

    /// raftmq only: the Raft status of the node at `addr` (JSON: nodeId, role, ready, term, leader,
    /// lastLogIndex, commitIndex, appliedIndex …).
    pub async fn node_status(&self, addr: &str) -> Result<serde_json::Value> {
        let resp = self
            .client
            .invoke(addr, RemotingCommand::request(RequestCode(RAFTMQ_NODE_STATUS), 0), self.client.config().request_timeout)
            .await?;
        let resp = check_success(addr, resp)?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Protocol(format!("node status from {addr}: {e}")))
    }

    /// raftmq only: asks the leader at `leader_addr` to hand leadership to member `target` and waits until it
    /// has (up to about 10 s).
    pub async fn transfer_leader(&self, leader_addr: &str, target: u64) -> Result<()> {
        let cmd = RemotingCommand::request(RequestCode(RAFTMQ_TRANSFER_LEADER), 0).with_ext("target", target.to_string());
        let resp = self.client.invoke(leader_addr, cmd, std::time::Duration::from_secs(15)).await?;
        check_success(leader_addr, resp).map(|_| ())
    }

    /// raftmq only: the group's members as the node at `addr` sees them (JSON: leader, lastLogIndex, and per
    /// member nodeId, raftAddr, clientAddr, role `voter`/`learner`, matched and lag — those two on the leader
    /// only).
    pub async fn members(&self, addr: &str) -> Result<serde_json::Value> {
        let cmd = RemotingCommand::request(RequestCode(RAFTMQ_MEMBERS), 0);
        let resp = check_success(addr, self.client.invoke(addr, cmd, self.client.config().request_timeout).await?)?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Protocol(format!("members from {addr}: {e}")))
    }

    /// raftmq only: asks the leader at `leader_addr` to add the fresh node answering at client address
    /// `node_addr` as a learner. Returns its nodeId, raftAddr and clientAddr (JSON).
    pub async fn add_node(&self, leader_addr: &str, node_addr: &str) -> Result<serde_json::Value> {
        let cmd = RemotingCommand::request(RequestCode(RAFTMQ_ADD_NODE), 0).with_ext("addr", node_addr);
        let resp = check_success(leader_addr, self.client.invoke(leader_addr, cmd, std::time::Duration::from_secs(15)).await?)?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Protocol(format!("add node answer from {leader_addr}: {e}")))
    }

    /// raftmq only: asks the leader at `leader_addr` to make learner `node` a voter, or, with `replaces`, to
    /// swap it for that voter. Fails with code 2 (SYSTEM_BUSY) while the learner has not caught up.
    pub async fn promote_node(&self, leader_addr: &str, node: u64, replaces: Option<u64>) -> Result<()> {
        let mut cmd = RemotingCommand::request(RequestCode(RAFTMQ_PROMOTE_NODE), 0).with_ext("node", node.to_string());
        if let Some(dead) = replaces {
            cmd = cmd.with_ext("replaces", dead.to_string());
        }
        let resp = self.client.invoke(leader_addr, cmd, std::time::Duration::from_secs(30)).await?;
        check_success(leader_addr, resp).map(|_| ())
    }

    /// raftmq only: asks the leader at `leader_addr` to remove member `node` (`force` skips the safe-size and
    /// quorum checks). Removing the leader moves leadership first.
    pub async fn remove_node(&self, leader_addr: &str, node: u64, force: bool) -> Result<()> {
        let cmd = RemotingCommand::request(RequestCode(RAFTMQ_REMOVE_NODE), 0)
            .with_ext("node", node.to_string())
            .with_ext("force", force.to_string());
        let resp = self.client.invoke(leader_addr, cmd, std::time::Duration::from_secs(40)).await?;
        check_success(leader_addr, resp).map(|_| ())
    }

    /// raftmq only: replaces the delay-level table of the group whose leader is at `leader_addr`
    /// (`levels` in RocketMQ `messageDelayLevel` syntax).
    pub async fn set_delay_levels(&self, leader_addr: &str, levels: &str) -> Result<()> {
        let cmd = RemotingCommand::request(RequestCode(RAFTMQ_SET_DELAY_LEVELS), 0).with_ext("levels", levels);
        let resp = self.client.invoke(leader_addr, cmd, self.client.config().request_timeout).await?;
        check_success(leader_addr, resp).map(|_| ())
    }

    /// Messages of `topic` whose `KEYS` carry `key` (one space-separated token), stored in
    /// `[begin_ms, end_ms]`: up to `max_num` (capped at [`QUERY_MESSAGES_MAX`]) from each broker group of the
    /// topic's route, any member answering. Matched exactly again here (brokers that do not filter, like
    /// RocketMQ's, return hash collisions). Sorted by store time.
    ///
    /// # Errors
    /// [`ClientError::NoRoute`] for an unknown topic; a group's error when no group answered.
    pub async fn query_message_by_key(&self, topic: &str, key: &str, max_num: i32, begin_ms: i64, end_ms: i64) -> Result<Vec<MessageExt>> {
        self.query(topic, Lookup::Key(key), max_num.clamp(1, QUERY_MESSAGES_MAX), begin_ms, end_ms).await
    }

    /// Messages of `topic` whose client message id (`UNIQ_KEY`, the `msgId` a producer's send result
    /// carries) is `msg_id`, from every broker group of the route. Usually one; a message sent again with the
    /// same id outside the de-duplication window, or a retry copy, can make more.
    ///
    /// # Errors
    /// As [`Admin::query_message_by_key`].
    pub async fn query_message_by_uniq_key(&self, topic: &str, msg_id: &str) -> Result<Vec<MessageExt>> {
        self.query(topic, Lookup::UniqKey(msg_id), QUERY_BY_ID_MAX, 0, i64::MAX).await
    }

    async fn query(&self, topic: &str, lookup: Lookup<'_>, max_num: i32, begin_ms: i64, end_ms: i64) -> Result<Vec<MessageExt>> {
        let route = self.client.update_route(topic).await?.ok_or_else(|| ClientError::NoRoute(topic.to_string()))?;
        let key = match lookup {
            Lookup::Key(k) | Lookup::UniqKey(k) => k,
        };
        let h = QueryMessageRequestHeader {
            topic: topic.to_string(),
            key: key.to_string(),
            max_num,
            begin_timestamp: begin_ms,
            end_timestamp: end_ms,
        };
        let mut found = Vec::new();
        let mut answered = false;
        let mut last_err = None;
        let groups: std::collections::BTreeSet<&str> = route.broker_datas.iter().map(|b| b.broker_name.as_str()).collect();
        for name in groups {
            let mut cmd = RemotingCommand::request(RequestCode::QUERY_MESSAGE, 0).with_header(&h);
            if matches!(lookup, Lookup::UniqKey(_)) {
                cmd = cmd.with_ext(UNIQUE_KEY_QUERY_FIELD, "true");
            }
            let resp = match self.client.invoke_on_any_member(name, cmd, self.client.config().request_timeout).await {
                Ok(r) => r,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            if resp.code == ResponseCode::QUERY_NOT_FOUND.0 {
                answered = true;
                continue;
            }
            let resp = match check_success(name, resp) {
                Ok(r) => r,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            answered = true;
            for (m, stored_topic) in decode_found(&resp.body, name)? {
                let hit = stored_topic == topic
                    && (begin_ms..=end_ms).contains(&m.store_timestamp)
                    && match lookup {
                        Lookup::Key(k) => m.keys().contains(&k),
                        Lookup::UniqKey(id) => m.property(raftmq_remoting::message::property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX) == Some(id),
                    };
                if hit {
                    found.push(m);
                }
            }
        }
        match (answered, last_err) {
            (false, Some(e)) => Err(e),
            _ => {
                found.sort_by_key(|m| (m.store_timestamp, m.commit_log_offset));
                Ok(found)
            }
        }
    }

    /// The message an offsetMsgId names (store host + commitlog offset), asked of that host first and, when
    /// it does not answer, of the other members of its broker group (their logs are byte-identical).
    ///
    /// # Errors
    /// [`ClientError::InvalidMessage`] for a malformed id; the broker's answer (1 SYSTEM_ERROR `can not find
    /// message by the offset, …`) when no message starts there.
    pub async fn view_message(&self, offset_msg_id: &str) -> Result<MessageExt> {
        let id = decode_offset_msg_id(offset_msg_id).map_err(|e| ClientError::InvalidMessage(e.to_string()))?;
        let host = id.store_host.to_string();
        let info = self.cluster_info().await?;
        let group = info.broker_addr_table.iter().find(|(_, b)| b.broker_addrs.values().any(|a| *a == host));
        let name = group.map(|(n, _)| n.clone()).unwrap_or_else(|| host.clone());
        let mut addrs = vec![host.clone()];
        if let Some((_, b)) = group {
            addrs.extend(b.broker_addrs.values().filter(|a| **a != host).cloned());
        }
        let h = ViewMessageRequestHeader { topic: None, offset: id.commit_log_offset };
        let mut last = None;
        for addr in addrs {
            let cmd = RemotingCommand::request(RequestCode::VIEW_MESSAGE_BY_ID, 0).with_header(&h);
            match self.client.invoke(&addr, cmd, self.client.config().request_timeout).await {
                Ok(resp) => {
                    let resp = check_success(&addr, resp)?;
                    return decode_found(&resp.body, &name)?
                        .into_iter()
                        .next()
                        .map(|(m, _)| m)
                        .ok_or_else(|| ClientError::Protocol(format!("{addr} answered VIEW_MESSAGE_BY_ID with no message")));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::NoRoute(host)))
    }

    /// Resets `group`'s offsets on every queue of `topic`, on every broker group serving it, the RocketMQ 5
    /// server-side way (INVOKE_BROKER_TO_RESET_OFFSET, 222): each group's leader computes the offsets and
    /// replicates them with a marker, and running consumers are moved there by their next pull
    /// (PULL_OFFSET_MOVED); stale commits from before the reset are ignored. With `force` false only
    /// offsets that go back move. Returns the new offset of each queue that moved.
    ///
    /// # Errors
    /// [`ClientError::NoRoute`] for a topic without a route; [`ClientError::Broker`] with the broker's code
    /// and remark when a group refuses (17 unknown topic, 26 unknown consumer group, 1 a limit).
    pub async fn reset_offset(&self, group: &str, topic: &str, to: ResetTo, force: bool) -> Result<Vec<(MessageQueue, i64)>> {
        let route = self.client.update_route(topic).await?.ok_or_else(|| ClientError::NoRoute(topic.to_string()))?;
        let mut brokers: Vec<String> = route.queue_datas.iter().map(|q| q.broker_name.clone()).collect();
        brokers.sort();
        brokers.dedup();
        let mut out = Vec::new();
        for broker in brokers {
            let h = ResetOffsetRequestHeader {
                group: group.to_string(),
                topic: topic.to_string(),
                timestamp: to.timestamp(),
                is_force: force,
                queue_id: Some(-1),
                offset: None,
            };
            let cmd = RemotingCommand::request(RequestCode::INVOKE_BROKER_TO_RESET_OFFSET, 0).with_header(&h);
            let resp = check_success(&broker, self.client.invoke_on_leader(&broker, cmd, self.client.config().request_timeout).await?)?;
            out.extend(ResetOffsetBody::decode(&resp.body)?.offset_table);
        }
        out.sort();
        Ok(out)
    }

    /// Broker groups in `cluster` (every registered group when `None`), with the nameserver's view of each;
    /// the template topic's route is refreshed so that leader lookups know every group.
    async fn broker_groups(&self, cluster: Option<&str>) -> Result<Vec<(String, raftmq_remoting::body::BrokerData)>> {
        let info = self.cluster_info().await?;
        let groups: Vec<_> = info
            .broker_addr_table
            .into_iter()
            .filter(|(name, _)| cluster.is_none_or(|c| info.cluster_addr_table.get(c).is_some_and(|names| names.contains(name))))
            .collect();
        if groups.is_empty() {
            return Err(ClientError::State(match cluster {
                Some(c) => format!("no broker group of cluster {c} is registered with the nameserver"),
                None => "no broker group is registered with the nameserver".into(),
            }));
        }
        self.client.update_route(DEFAULT_TOPIC).await?;
        Ok(groups)
    }

    /// Sends a write to the leader of group `name` (its registered master when the route cache has none).
    async fn on_leader(&self, name: &str, b: &raftmq_remoting::body::BrokerData, cmd: RemotingCommand) -> Result<RemotingCommand> {
        let resp = match self.client.leader_addr(name) {
            Some(_) => self.client.invoke_on_leader(name, cmd, self.client.config().request_timeout).await?,
            None => {
                let addr = b.master_addr().ok_or_else(|| ClientError::State(format!("broker group {name} has no leader")))?;
                self.client.invoke(addr, cmd, self.client.config().request_timeout).await?
            }
        };
        check_success(name, resp)
    }

    /// Deletes `topic` from every broker group (of `cluster`, if given) through each leader
    /// (DELETE_TOPIC_IN_BROKER), then from every configured nameserver (DELETE_TOPIC_IN_NAMESRV). Returns the
    /// broker groups and the nameservers it was deleted from. Stops at the first broker group that refuses
    /// (nothing is sent to the nameservers then); a nameserver that cannot be reached is reported after
    /// the others were tried (the brokers' next registrations drop the topic there too).
    pub async fn delete_topic(&self, topic: &str, cluster: Option<&str>) -> Result<(Vec<String>, Vec<String>)> {
        crate::producer::validate_topic(topic)?;
        let mut groups = Vec::new();
        for (name, b) in self.broker_groups(cluster).await? {
            let h = DeleteTopicRequestHeader { topic: topic.to_string(), cluster_name: None };
            self.on_leader(&name, &b, RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_BROKER, 0).with_header(&h)).await?;
            groups.push(name);
        }
        let h = DeleteTopicRequestHeader { topic: topic.to_string(), cluster_name: cluster.map(String::from) };
        let (mut namesrvs, mut failed) = (Vec::new(), Vec::new());
        for addr in self.client.config().namesrv_addrs.clone() {
            let cmd = RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_NAMESRV, 0).with_header(&h);
            match self.client.invoke(&addr, cmd, self.client.config().request_timeout).await.and_then(|r| check_success(&addr, r)) {
                Ok(_) => namesrvs.push(addr),
                Err(e) => failed.push(format!("{addr}: {e}")),
            }
        }
        if !failed.is_empty() {
            return Err(ClientError::State(format!(
                "topic {topic} deleted on broker groups {groups:?} and nameservers {namesrvs:?}, but not on {}",
                failed.join("; ")
            )));
        }
        Ok((groups, namesrvs))
    }

    /// Creates or replaces a subscription group's config on every broker group (of `cluster`, if given);
    /// returns the groups it was stored on.
    pub async fn create_subscription_group(&self, config: &SubscriptionGroupConfig, cluster: Option<&str>) -> Result<Vec<String>> {
        let body = encode_json_body(config)?;
        let mut done = Vec::new();
        for (name, b) in self.broker_groups(cluster).await? {
            let cmd = RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, 0).with_body(body.clone());
            self.on_leader(&name, &b, cmd).await?;
            done.push(name);
        }
        Ok(done)
    }

    /// Deletes a subscription group (with `clean_offset`, also its committed offsets) on every broker group
    /// (of `cluster`, if given); returns the groups it was deleted on.
    pub async fn delete_subscription_group(&self, group: &str, clean_offset: bool, cluster: Option<&str>) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for (name, b) in self.broker_groups(cluster).await? {
            let h = DeleteSubscriptionGroupRequestHeader { group_name: group.to_string(), clean_offset };
            self.on_leader(&name, &b, RemotingCommand::request(RequestCode::DELETE_SUBSCRIPTIONGROUP, 0).with_header(&h)).await?;
            done.push(name);
        }
        Ok(done)
    }

    /// The subscription groups of broker group `name` (GET_ALL_SUBSCRIPTIONGROUP_CONFIG), from any member.
    pub async fn subscription_groups(&self, name: &str) -> Result<SubscriptionGroupWrapper> {
        let cmd = RemotingCommand::request(RequestCode::GET_ALL_SUBSCRIPTIONGROUP_CONFIG, 0);
        let resp = check_success(name, self.client.invoke_on_any_member(name, cmd, self.client.config().request_timeout).await?)?;
        Ok(decode_json_body("SubscriptionGroupWrapper", &resp.body)?)
    }

    /// The subscription groups of the member at `addr` (GET_ALL_SUBSCRIPTIONGROUP_CONFIG).
    pub async fn subscription_groups_at(&self, addr: &str) -> Result<SubscriptionGroupWrapper> {
        let cmd = RemotingCommand::request(RequestCode::GET_ALL_SUBSCRIPTIONGROUP_CONFIG, 0);
        let resp = self.client.invoke_ok(addr, cmd, self.client.config().request_timeout).await?;
        Ok(decode_json_body("SubscriptionGroupWrapper", &resp.body)?)
    }

    /// Every registered broker group's subscription groups, by broker group.
    pub async fn all_subscription_groups(&self) -> Result<Vec<(String, SubscriptionGroupWrapper)>> {
        let mut out = Vec::new();
        for (name, _) in self.broker_groups(None).await? {
            let w = self.subscription_groups(&name).await?;
            out.push((name, w));
        }
        Ok(out)
    }

    /// GET_CONSUME_STATS of `group` on broker group `name` (every topic the group has offsets on when
    /// `topic` is `None`), from any member.
    pub async fn consume_stats(&self, name: &str, group: &str, topic: Option<&str>) -> Result<ConsumeStats> {
        let h = GetConsumeStatsRequestHeader { consumer_group: group.to_string(), topic: topic.map(String::from) };
        let cmd = RemotingCommand::request(RequestCode::GET_CONSUME_STATS, 0).with_header(&h);
        let resp = check_success(name, self.client.invoke_on_any_member(name, cmd, self.client.config().request_timeout).await?)?;
        Ok(ConsumeStats::decode(&resp.body)?)
    }

    /// `group`'s committed offset and the broker's end offset of every queue of `topic`.
    pub async fn group_progress(&self, group: &str, topic: &str) -> Result<Vec<QueueProgress>> {
        let route = self.client.update_route(topic).await?.ok_or_else(|| ClientError::NoRoute(topic.to_string()))?;
        let mut out = Vec::new();
        for queue in readable_queues(topic, &route) {
            let broker_offset = max_offset(&self.client, &queue).await?;
            let consumer_offset = query_consumer_offset(&self.client, group, &queue).await?;
            out.push(QueueProgress { queue, broker_offset, consumer_offset });
        }
        Ok(out)
    }
}
