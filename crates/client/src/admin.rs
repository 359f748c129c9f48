//! Administration over the remoting protocol: cluster and topic listings, topic creation on every broker
//! group's leader, per-queue consumer-group progress, and raftmq's node status and membership changes.

use raftmq_remoting::body::{decode_json_body, ClusterInfo, TopicRouteData};
use raftmq_remoting::codes::{
    RAFTMQ_ADD_NODE, RAFTMQ_MEMBERS, RAFTMQ_NODE_STATUS, RAFTMQ_PROMOTE_NODE, RAFTMQ_REMOVE_NODE, RAFTMQ_SET_DELAY_LEVELS,
    RAFTMQ_TRANSFER_LEADER,
};
use raftmq_remoting::header::{perm, CreateTopicRequestHeader, DEFAULT_TOPIC};
use raftmq_remoting::{RemotingCommand, RequestCode};
use serde::Deserialize;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::instance::{check_success, ClientInstance};
use crate::message::MessageQueue;
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
