//! Leader transfer under the cluster secret, in one process over loopback TCP: a group whose Raft port is
//! authenticated elects and replicates; transfers run one at a time and at least the configured interval
//! apart; an abandoned transfer restores the leader; and elections paused by a transfer resume by a
//! deadline even when the leader that paused them dies.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_raft::handshake::RaftAuth;
use raftmq_raft::network::{control_call, ControlRequest};
use raftmq_raft::node::{NodeConfig, NodeError, RaftNode, Role, WriteError};
use raftmq_raft::types::{Command, Message, QueueAppend, TopicConfig};
use raftmq_remoting::cluster_auth::ClusterSecrets;

const SECRET: &str = "transfer-test-cluster-secret-0123";
const INTERVAL_MS: u64 = 1500;

fn secrets() -> ClusterSecrets {
    ClusterSecrets::parse(SECRET).unwrap()
}

fn node_cfg(root: &Path, id: u64) -> NodeConfig {
    let mut c = NodeConfig::new(id, "127.0.0.1:0", root.join(format!("n{id}")));
    c.segment_bytes = 64 * 1024;
    c.entry_bytes_max = 32 * 1024;
    c.batch_bytes_max = 32 * 1024;
    c.index_slots_per_file = 256;
    c.checkpoint_every = 16;
    c.cq_units_per_file = 128;
    c.cluster_secrets = Some(secrets());
    c.transfer_interval_min_ms = INTERVAL_MS;
    c
}

async fn start_group(root: &Path, n: u64) -> Vec<Arc<RaftNode>> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(Arc::new(RaftNode::start(node_cfg(root, id)).await.expect("start node")));
    }
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id(), n.raft_addr().to_string())).collect();
    nodes[0].initialize(members).await.expect("initialize");
    let leader = wait_leader(&nodes, Duration::from_secs(10)).await.expect("a leader");
    leader
        .write(Command::UpsertTopic(TopicConfig { name: "T".into(), read_queues: 1, write_queues: 1, perm: 6 }))
        .await
        .expect("create topic");
    nodes
}

async fn wait_leader(nodes: &[Arc<RaftNode>], timeout: Duration) -> Option<Arc<RaftNode>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = nodes.iter().find(|n| {
            let r = n.role().borrow().clone();
            r.role == Role::Leader && r.ready
        }) {
            return Some(Arc::clone(n));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn produce(node: &RaftNode, i: u64) -> Result<(), WriteError> {
    let msg = Message { tags_code: 0, data: Bytes::from(format!("m{i}")), phys_offset: None };
    node.produce(vec![QueueAppend { topic: "T".into(), queue_id: 0, messages: vec![msg] }]).await.map(|_| ())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

#[test]
fn transfers_are_serialised_and_spaced_on_an_authenticated_group() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path(), 3).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await.unwrap();
        produce(&leader, 0).await.expect("writes replicate over authenticated connections");
        let others: Vec<u64> = nodes.iter().map(|n| n.id()).filter(|id| *id != leader.id()).collect();

        // Two transfers at once: one runs, the other is refused at once, naming the one in progress.
        let t0 = Instant::now();
        let (a, b) = tokio::join!(
            leader.transfer_leader(others[0], Duration::from_secs(10)),
            leader.transfer_leader(others[1], Duration::from_secs(10))
        );
        println!("concurrent transfers: {a:?} / {b:?} after {:?}", t0.elapsed());
        let (refused, winner) = match (a, b) {
            (Ok(()), Err(e)) => (e, others[0]),
            (Err(e), Ok(())) => (e, others[1]),
            other => panic!("exactly one transfer must run: {other:?}"),
        };
        assert!(matches!(&refused, NodeError::Busy(m) if m.contains("leader transfer to node") && m.contains("in progress")), "{refused}");
        let new_leader = wait_leader(&nodes, Duration::from_secs(5)).await.unwrap();
        assert_eq!(new_leader.id(), winner);
        produce(&new_leader, 1).await.expect("writes at the new leader");

        // The new leader was the target just now: a transfer out of it waits for the interval.
        let back = new_leader.transfer_leader(leader.id(), Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(&back, NodeError::Busy(m) if m.contains("leaderTransferIntervalMinMs")), "{back}");
        tokio::time::sleep(Duration::from_millis(INTERVAL_MS)).await;
        let t1 = Instant::now();
        new_leader.transfer_leader(leader.id(), Duration::from_secs(10)).await.expect("transfer after the interval");
        println!("transfer after the interval took {:?}", t1.elapsed());
        assert_eq!(wait_leader(&nodes, Duration::from_secs(5)).await.unwrap().id(), leader.id());
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn an_abandoned_transfer_restores_the_leader() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path(), 3).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await.unwrap();
        let target_node = nodes.iter().find(|n| n.id() != leader.id()).unwrap();
        let target = target_node.id();
        // A target cut off from Raft traffic misses the next entry, so the transfer stays fenced waiting for it
        // to hold the whole log (the transfer itself is otherwise over in tens of milliseconds).
        target_node.set_isolated(true);
        produce(&leader, 0).await.expect("a write the target misses");
        let l = Arc::clone(&leader);
        let task = tokio::spawn(async move { l.transfer_leader(target, Duration::from_secs(10)).await });
        // While the transfer waits: writes are fenced.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(produce(&leader, 0).await, Err(WriteError::Transferring { .. })));
        task.abort();
        let _ = task.await;
        target_node.set_isolated(false);
        // The guard lifted the fence and switched heartbeats back on: the leader keeps leading and writing.
        produce(&leader, 1).await.expect("write after the abandoned transfer");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(wait_leader(&nodes, Duration::from_secs(1)).await.unwrap().id(), leader.id(), "no election happened");
        // The slot is free again (after the interval).
        tokio::time::sleep(Duration::from_millis(INTERVAL_MS)).await;
        leader.transfer_leader(target, Duration::from_secs(10)).await.expect("a later transfer runs");
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn elections_paused_by_a_leader_that_dies_resume_by_the_deadline() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path(), 3).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await.unwrap();
        let survivors: Vec<Arc<RaftNode>> = nodes.iter().filter(|n| n.id() != leader.id()).cloned().collect();
        let auth = RaftAuth::new(secrets(), leader.id());
        let t = Duration::from_secs(2);

        // The defect, shown with the old procedure: elections switched off without a deadline on the other
        // voters, then the leader dies. Nobody ever campaigns.
        for n in &survivors {
            control_call(n.raft_addr(), ControlRequest::SetElect(false), t, Some(&auth)).await.expect("pause");
        }
        leader.shutdown().await;
        assert!(wait_leader(&survivors, Duration::from_secs(3)).await.is_none(), "without a deadline no one campaigns");

        // A transfer now pauses with a deadline (what a leader dying after the pause leaves behind).
        let pause = leader.election_pause();
        let paused_at = Instant::now();
        for n in &survivors {
            control_call(n.raft_addr(), ControlRequest::PauseElect { ms: pause.as_millis() as u64 }, t, Some(&auth)).await.expect("pause");
        }
        let bound = pause + Duration::from_millis(3 * leader.config().election_max_ms) + Duration::from_secs(2);
        let new_leader = wait_leader(&survivors, bound).await.expect("a leader once the pause expired");
        println!("election pause {pause:?}; new leader n{} {:?} after the pause began", new_leader.id(), paused_at.elapsed());
        assert!(paused_at.elapsed() >= pause.saturating_sub(Duration::from_millis(50)), "elections stayed paused for the pause");
        produce(&new_leader, 1).await.expect("the survivors accept writes");
        for n in survivors {
            n.shutdown().await;
        }
    });
}
