//! Shared set-up of the in-process group tests (transfer, rejoin, stall): small-file node configs, a 3-node
//! group bootstrapped from node 1 with topic `T` (one queue), the ready leader, one-message produces.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_raft::node::{NodeConfig, RaftNode, Role, WriteError};
use raftmq_raft::types::{Command, Message, QueueAppend, TopicConfig};

/// A node config with small files (64 KiB segments, 32 KiB entries), so that tests roll segments and
/// checkpoints quickly.
pub fn small_node_cfg(root: &Path, id: u64) -> NodeConfig {
    let mut c = NodeConfig::new(id, "127.0.0.1:0", root.join(format!("n{id}")));
    c.segment_bytes = 64 * 1024;
    c.entry_bytes_max = 32 * 1024;
    c.batch_bytes_max = 32 * 1024;
    c.index_slots_per_file = 256;
    c.checkpoint_every = 16;
    c.cq_units_per_file = 128;
    c
}

/// Starts nodes 1..=n with `cfg`, initialises the group from node 1 and creates topic `T` (one queue).
pub async fn start_group_with(n: u64, cfg: impl Fn(u64) -> NodeConfig) -> Vec<Arc<RaftNode>> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(Arc::new(RaftNode::start(cfg(id)).await.expect("start node")));
    }
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id(), n.raft_addr().to_string())).collect();
    nodes[0].initialize(members).await.expect("initialize");
    let leader = wait_leader(&nodes, None, Duration::from_secs(10)).await.expect("a leader");
    leader
        .write(Command::UpsertTopic(TopicConfig { name: "T".into(), read_queues: 1, write_queues: 1, perm: 6 }))
        .await
        .expect("create topic");
    nodes
}

/// The ready leader, other than `not` when given; `None` after `timeout`.
pub async fn wait_leader(nodes: &[Arc<RaftNode>], not: Option<u64>, timeout: Duration) -> Option<Arc<RaftNode>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = nodes.iter().find(|n| {
            let r = n.role().borrow().clone();
            r.role == Role::Leader && r.ready && Some(n.id()) != not
        }) {
            return Some(Arc::clone(n));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Produces message `m<i>` to `T` queue 0 at `node`.
pub async fn produce(node: &RaftNode, i: u64) -> Result<(), WriteError> {
    let msg = Message { tags_code: 0, data: Bytes::from(format!("m{i}")), phys_offset: None };
    node.produce(vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg] }]).await.map(|_| ())
}

/// A 4-worker runtime for the tests' `block_on`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}
