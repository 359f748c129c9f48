//! A 3-node broker group over loopback TCP, in one process: replication and identical consume queues,
//! leader failover under load without losing acknowledged writes, follower restart and catch-up, a new
//! node seeded by snapshot + log that ends byte-identical, dead-node replacement, and leader transfer.
//!
//! "Killing" a node here is `shutdown` (openraft stopped, sockets closed); kill -9 of real processes is in
//! the broker's multi-process tests. Timings are printed, never asserted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_raft::consume_queue::CqUnit;
use raftmq_raft::node::{NodeConfig, RaftNode, Role, WriteError};
use raftmq_raft::types::{Command, Message, QueueAppend, QueueAppendResult, TopicConfig};

const TOPIC: &str = "TopicTest";
const QUEUES: u32 = 4;

fn node_cfg(root: &Path, id: u64, addr: &str) -> NodeConfig {
    let mut c = common::small_node_cfg(root, id);
    c.raft_addr = addr.to_string();
    c
}

async fn start(root: &Path, id: u64, addr: &str) -> Arc<RaftNode> {
    Arc::new(RaftNode::start(node_cfg(root, id, addr)).await.expect("start node"))
}

async fn start_group(root: &Path) -> Vec<Arc<RaftNode>> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(root, id, "127.0.0.1:0").await);
    }
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id(), n.raft_addr().to_string())).collect();
    nodes[0].initialize(members).await.expect("initialize");
    let leader = wait_leader(&nodes, Duration::from_secs(10)).await;
    leader
        .write(Command::UpsertTopic(TopicConfig { name: TOPIC.into(), read_queues: QUEUES, write_queues: QUEUES, perm: 6 }))
        .await
        .expect("create topic");
    nodes
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_leader(nodes: &[Arc<RaftNode>], timeout: Duration) -> Arc<RaftNode> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = nodes.iter().find(|n| {
            let r = n.role().borrow().clone();
            r.role == Role::Leader && r.ready
        }) {
            return Arc::clone(n);
        }
        assert!(Instant::now() < deadline, "no ready leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(i: u64) -> Bytes {
    Bytes::from(format!("message-{i:08}-{}", "x".repeat((i % 200) as usize)))
}

fn one(i: u64) -> Vec<QueueAppend> {
    vec![QueueAppend {
        topic: TOPIC.into(),
        queue_id: (i % QUEUES as u64) as u32,
        messages: vec![Message { tags_code: (i % 7) as i64, data: body(i), phys_offset: None }],
    }]
}

/// Produces message `i`; returns its queue offset.
async fn produce(node: &RaftNode, i: u64) -> Result<u64, WriteError> {
    let r = node.produce(one(i)).await?;
    match &r[0] {
        QueueAppendResult::Stored(p) => Ok(p[0].queue_offset),
        QueueAppendResult::Rejected(why) => panic!("rejected: {why}"),
    }
}

/// Produces `ids` concurrently on `node`; returns (id, queue offset) pairs.
async fn produce_all(node: &Arc<RaftNode>, ids: std::ops::Range<u64>) -> Vec<(u64, u64)> {
    let mut tasks = Vec::new();
    for i in ids {
        let n = Arc::clone(node);
        tasks.push(tokio::spawn(async move { (i, produce(&n, i).await.expect("produce")) }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

fn units(node: &RaftNode, qid: u32) -> Vec<CqUnit> {
    let Some(q) = node.state().queue(TOPIC, qid) else { return Vec::new() };
    q.read(q.min_offset(), usize::MAX)
}

async fn wait_applied(nodes: &[Arc<RaftNode>], leader: &RaftNode) {
    let target = leader.state().last_applied_index();
    for n in nodes {
        wait_until("replica applied", Duration::from_secs(20), || n.state().last_applied_index() >= target).await;
    }
}

/// Every acknowledged message is in the node's consume queue at its acknowledged offset, with its bytes.
fn assert_acked_present(node: &RaftNode, acked: &[(u64, u64)]) {
    for (i, off) in acked {
        let qid = (i % QUEUES as u64) as u32;
        let q = node.state().queue(TOPIC, qid).expect("queue exists");
        let u = q.get(*off).unwrap_or_else(|| panic!("node {}: message {i} missing at {qid}/{off}", node.id()));
        let bytes = node.commitlog().read_at(u.phys_offset, u.size as usize).expect("bytes readable");
        assert_eq!(bytes, body(*i), "node {}: wrong bytes at {qid}/{off}", node.id());
        assert_eq!(u.tags_code, (i % 7) as i64);
    }
}

/// Log records present on both nodes are identical: same position, length and body.
fn assert_logs_identical(a: &RaftNode, b: &RaftNode) {
    let (sa, sb) = (a.commitlog().state(), b.commitlog().state());
    let first = sa.first.max(sb.first).expect("records present");
    let last = sa.last.expect("a has records").index.min(sb.last.expect("b has records").index);
    assert!(first <= last);
    for i in first..=last {
        let ra = a.commitlog().read(i).expect("read a").expect("present on a");
        let rb = b.commitlog().read(i).expect("read b").expect("present on b");
        assert_eq!((ra.pos, ra.len, ra.meta), (rb.pos, rb.len, rb.meta), "record {i} differs between {} and {}", a.id(), b.id());
        assert_eq!(ra.body, rb.body, "record {i} body differs");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime")
}

#[test]
fn writes_replicate_and_consume_queues_match() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path()).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        let acked = produce_all(&leader, 0..400).await;
        // Queue offsets are dense and unique per queue.
        for qid in 0..QUEUES {
            let mut offs: Vec<u64> = acked.iter().filter(|(i, _)| i % QUEUES as u64 == qid as u64).map(|(_, o)| *o).collect();
            offs.sort_unstable();
            assert_eq!(offs, (0..offs.len() as u64).collect::<Vec<_>>(), "queue {qid} offsets");
        }
        wait_applied(&nodes, &leader).await;
        for n in &nodes {
            assert_acked_present(n, &acked);
            for qid in 0..QUEUES {
                assert_eq!(units(n, qid), units(&leader, qid), "queue {qid} differs on node {}", n.id());
            }
            assert_logs_identical(n, &leader);
        }
        // Far fewer entries than messages: concurrent produces were coalesced.
        let entries = leader.commitlog().state().last.unwrap().index;
        println!("400 messages in {entries} log entries");
        assert!(entries < 400, "no batching happened ({entries} entries)");
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn leader_kill_under_load_keeps_every_acknowledged_write() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path()).await;
        let alive: Arc<Mutex<Vec<Arc<RaftNode>>>> = Arc::new(Mutex::new(nodes.clone()));
        let acked: Arc<Mutex<Vec<(u64, u64, Instant)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for p in 0..8u64 {
            let (alive, acked, stop) = (Arc::clone(&alive), Arc::clone(&acked), Arc::clone(&stop));
            producers.push(tokio::spawn(async move {
                let mut i = p * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let leader = alive.lock().unwrap().iter().find(|n| n.role().borrow().role == Role::Leader).cloned();
                    let Some(leader) = leader else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    // Every attempt uses a fresh id: an uncertain write is never retried with the same value.
                    i += 1;
                    if let Ok(off) = produce(&leader, i).await {
                        acked.lock().unwrap().push((i, off, Instant::now()));
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let old = wait_leader(&nodes, Duration::from_secs(5)).await;
        alive.lock().unwrap().retain(|n| n.id() != old.id());
        let killed_at = Instant::now();
        old.shutdown().await;
        let survivors: Vec<Arc<RaftNode>> = alive.lock().unwrap().clone();
        let new_leader = wait_leader(&survivors, Duration::from_secs(15)).await;
        assert_ne!(new_leader.id(), old.id());
        wait_until("an ack after the kill", Duration::from_secs(15), || acked.lock().unwrap().iter().any(|(_, _, t)| *t > killed_at)).await;
        let first_ack = acked.lock().unwrap().iter().filter(|(_, _, t)| *t > killed_at).map(|(_, _, t)| *t).min().unwrap();
        println!("failover: first acknowledged send {:?} after the leader was stopped", first_ack - killed_at);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            p.await.unwrap();
        }
        let acked: Vec<(u64, u64)> = acked.lock().unwrap().iter().map(|(i, o, _)| (*i, *o)).collect();
        println!("{} acknowledged writes", acked.len());
        wait_applied(&survivors, &new_leader).await;
        for n in &survivors {
            assert_acked_present(n, &acked);
            for qid in 0..QUEUES {
                assert_eq!(units(n, qid), units(&new_leader, qid));
            }
        }
        assert_logs_identical(&survivors[0], &survivors[1]);
        for n in survivors {
            n.shutdown().await;
        }
    });
}

#[test]
fn restarted_follower_catches_up() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = start_group(dir.path()).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        let mut acked = produce_all(&leader, 0..100).await;
        let fi = nodes.iter().position(|n| n.id() != leader.id()).unwrap();
        let follower = nodes.remove(fi);
        let (fid, faddr) = (follower.id(), follower.raft_addr().to_string());
        wait_applied(&[Arc::clone(&follower)], &leader).await;
        follower.shutdown().await;
        drop(follower);
        acked.extend(produce_all(&leader, 100..300).await);
        let restarted = start(dir.path(), fid, &faddr).await;
        nodes.push(Arc::clone(&restarted));
        wait_applied(&nodes, &leader).await;
        assert_acked_present(&restarted, &acked);
        for qid in 0..QUEUES {
            assert_eq!(units(&restarted, qid), units(&leader, qid));
        }
        assert_logs_identical(&restarted, &leader);
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn new_node_replaces_dead_one_via_snapshot_and_log_and_ends_identical() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = start_group(dir.path()).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        // In small concurrent groups, so the log gets many entries (and checkpoints) to compact.
        let mut acked = Vec::new();
        for chunk in 0..30u64 {
            acked.extend(produce_all(&leader, chunk * 10..chunk * 10 + 10).await);
        }
        wait_applied(&nodes, &leader).await;
        // Compact every member at the same boundary, then write more so the retained window has both.
        let boundary = leader.state().last_applied_index().unwrap() - 5;
        let mut purged = BTreeSet::new();
        for n in &nodes {
            purged.insert(n.compact(boundary, Duration::from_secs(10)).await.expect("compact").expect("a checkpoint below the boundary"));
        }
        assert_eq!(purged.len(), 1, "checkpoints sit at the same indexes on every member");
        assert!(*purged.first().unwrap() >= 16, "compaction reached past the first checkpoints");
        acked.extend(produce_all(&leader, 300..400).await);
        let di = nodes.iter().position(|n| n.id() != leader.id()).unwrap();
        let dead = nodes.remove(di);
        let dead_id = dead.id();
        dead.shutdown().await;
        drop(dead);
        let fresh = start(dir.path(), 4, "127.0.0.1:0").await;
        leader.replace_voter(dead_id, 4, fresh.raft_addr().to_string(), Duration::from_secs(20)).await.expect("replace");
        nodes.push(Arc::clone(&fresh));
        acked.extend(produce_all(&leader, 400..450).await);
        wait_applied(&nodes, &leader).await;
        let st = fresh.commitlog().state();
        assert_eq!(st.purged.map(|p| p.point.index), purged.first().copied(), "the new node was seeded by the boundary snapshot");
        assert_logs_identical(&fresh, &leader);
        // The retained bytes are identical too, from the first retained position to the end.
        let from = st.purged.unwrap().next_pos;
        let to = st.write_pos;
        assert_eq!(to, leader.commitlog().state().write_pos);
        let seg = fresh.commitlog().segment_bytes();
        let mut pos = from;
        while pos < to {
            let len = (seg - pos % seg).min(to - pos) as usize;
            assert_eq!(fresh.commitlog().read_at(pos, len), leader.commitlog().read_at(pos, len), "bytes at {pos} differ");
            pos += len as u64;
        }
        // Queues: the new node serves from the snapshot's offsets on, identically to the leader.
        let acked_after: Vec<(u64, u64)> = acked.iter().filter(|(i, _)| *i >= 300).copied().collect();
        assert_acked_present(&fresh, &acked_after);
        for qid in 0..QUEUES {
            let f = units(&fresh, qid);
            let l = units(&leader, qid);
            assert!(!f.is_empty());
            assert_eq!(&l[l.len() - f.len()..], &f[..], "queue {qid} tail differs");
        }
        let voters = leader.status().voters;
        assert_eq!(voters, [1u64, 2, 3, 4].into_iter().filter(|v| *v != dead_id).collect());
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn learner_catches_up_and_is_promoted() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = start_group(dir.path()).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        let mut acked = produce_all(&leader, 0..200).await;
        let learner = start(dir.path(), 4, "127.0.0.1:0").await;
        leader.add_learner(4, learner.raft_addr().to_string()).await.expect("add learner");
        leader.wait_caught_up(4, Duration::from_secs(20)).await.expect("catch up");
        assert_eq!(learner.role().borrow().role, Role::Learner);
        assert_eq!(leader.status().voters, [1u64, 2, 3].into());
        leader.promote(4).await.expect("promote");
        assert_eq!(leader.status().voters, [1u64, 2, 3, 4].into());
        wait_until("learner becomes a follower", Duration::from_secs(10), || learner.role().borrow().role == Role::Follower).await;
        nodes.push(Arc::clone(&learner));
        acked.extend(produce_all(&leader, 200..250).await);
        wait_applied(&nodes, &leader).await;
        assert_acked_present(&learner, &acked);
        assert_logs_identical(&learner, &leader);
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn transfer_leader_moves_leadership() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path()).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        produce_all(&leader, 0..50).await;
        let target = nodes.iter().find(|n| n.id() != leader.id()).unwrap();
        let t0 = Instant::now();
        leader.transfer_leader(target.id(), Duration::from_secs(10)).await.expect("transfer");
        println!("leader transfer {} -> {} took {:?}", leader.id(), target.id(), t0.elapsed());
        let new_leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        assert_eq!(new_leader.id(), target.id());
        // Writes work at the new leader and the old one refuses them.
        produce(&new_leader, 1_000).await.expect("write at new leader");
        assert!(matches!(produce(&leader, 1_001).await, Err(WriteError::NotLeader { .. })));
        for n in nodes {
            n.shutdown().await;
        }
    });
}
