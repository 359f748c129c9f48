//! Topic deletion through a real 3-node group (in process): the `DeleteTopic` entry removes the topic, its
//! offsets and its consume-queue files on every member; a topic created again under the name starts at offset
//! 0; and the result is the same on a member restarted from its checkpoint and on a fresh member seeded by a
//! snapshot taken after the deletion.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{runtime, small_node_cfg, start_group_with, wait_leader};
use raftmq_raft::node::RaftNode;
use raftmq_raft::types::{Command, CommandResponse, Message, OffsetCommit, QueueAppend, QueueAppendResult, TopicConfig};

const D: &str = "DeleteMe";

fn topic(name: &str, queues: u32) -> Command {
    Command::UpsertTopic(TopicConfig { name: name.into(), read_queues: queues, write_queues: queues, perm: 6 })
}

/// Produces `body` to `topic` queue `queue_id`; returns its queue offset.
async fn produce(node: &RaftNode, topic: &str, queue_id: u32, body: &str) -> u64 {
    let msg = Message { tags_code: 0, data: Bytes::from(body.to_string()), phys_offset: None };
    let r = node.produce(vec![QueueAppend { topic: topic.into(), queue_id, messages: vec![msg] }]).await.expect("produce");
    match &r[0] {
        QueueAppendResult::Stored(p) => p[0].queue_offset,
        QueueAppendResult::Rejected(why) => panic!("rejected: {why}"),
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What every member must hold: D recreated with one message at offset 0 in queue 0, no offset of any group
/// on D, g's offset on T kept, and no consume-queue directory of the old D's queue 1.
fn check(node: &RaftNode, root: &std::path::Path) {
    let id = node.id();
    let m = node.state().metadata();
    assert_eq!(m.state.topics.get(D).map(|t| t.read_queues), Some(1), "node {id}: D was created again with 1 queue");
    assert_eq!(m.state.queues.get(D).map(|q| q.keys().copied().collect::<Vec<_>>()), Some(vec![0]), "node {id}");
    assert_eq!(m.state.queues[D][&0].next_offset, 1, "node {id}: the new D starts at 0");
    assert!(m.state.consumer_offsets.values().all(|t| !t.contains_key(D)), "node {id}: {:?}", m.state.consumer_offsets);
    assert_eq!(m.state.consumer_offsets.get("g").and_then(|t| t.get("T")).and_then(|q| q.get(&0)), Some(&1), "node {id}");
    assert!(node.state().queue(D, 1).is_none(), "node {id}: queue 1 of the deleted D is still open");
    let old_queue_dir = root.join(format!("n{id}")).join("state").join("consumequeue").join(D).join("1");
    assert!(!old_queue_dir.exists(), "node {id}: {} survived the deletion", old_queue_dir.display());
    let q = node.state().queue(D, 0).expect("queue 0 of the new D");
    if q.min_offset() == 0 {
        let u = q.get(0).expect("unit 0");
        assert_eq!(node.commitlog().read_at(u.phys_offset, u.size as usize).as_deref(), Some(&b"new"[..]), "node {id}");
    }
}

#[test]
fn a_deleted_topic_stays_deleted_across_a_restart_and_a_snapshot_install() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut nodes: Vec<Arc<RaftNode>> = start_group_with(3, |id| small_node_cfg(&root, id)).await;
        let leader = wait_leader(&nodes, None, Duration::from_secs(10)).await.expect("leader");
        leader.write(topic(D, 2)).await.expect("create D");
        for i in 0..6 {
            produce(&leader, D, i % 2, &format!("old{i}")).await;
        }
        produce(&leader, "T", 0, "t").await;
        let commits = vec![
            OffsetCommit { group: "g".into(), topic: D.into(), queue_id: 1, offset: 2 },
            OffsetCommit { group: "g".into(), topic: "T".into(), queue_id: 0, offset: 1 },
        ];
        leader.write(Command::CommitOffsets(commits)).await.expect("commit");
        assert_eq!(leader.write(Command::DeleteTopic(D.into())).await.expect("delete"), CommandResponse::Done);
        assert!(matches!(leader.write(Command::DeleteTopic("TBW102".into())).await.expect("refused"), CommandResponse::Refused(_)));
        leader.write(topic(D, 1)).await.expect("create D again");
        assert_eq!(produce(&leader, D, 0, "new").await, 0, "a topic created again starts at offset 0");
        let target = leader.state().last_applied_index();
        for n in &nodes {
            wait_until("replica applied", || n.state().last_applied_index() >= target).await;
            check(n, &root);
        }

        // Past a few checkpoints (every 16 entries), then restart a follower from its checkpoint.
        for i in 0..40 {
            produce(&leader, "T", 0, &format!("fill{i}")).await;
        }
        let fi = nodes.iter().position(|n| n.id() != leader.id()).unwrap();
        let follower = nodes.remove(fi);
        let (fid, addr) = (follower.id(), follower.raft_addr().to_string());
        follower.shutdown().await;
        drop(follower);
        // Same address (the members know it); the old listener may take a moment to close.
        let deadline = Instant::now() + Duration::from_secs(10);
        let restarted = loop {
            let mut cfg = small_node_cfg(&root, fid);
            cfg.raft_addr = addr.clone();
            match RaftNode::start(cfg).await {
                Ok(n) => break Arc::new(n),
                Err(e) if Instant::now() < deadline && e.to_string().contains("in use") => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("restart: {e}"),
            }
        };
        nodes.push(Arc::clone(&restarted));
        let target = leader.state().last_applied_index();
        wait_until("restarted member applied", || restarted.state().last_applied_index() >= target).await;
        check(&restarted, &root);

        // Compact every member past the deletion and seed a fresh member from the snapshot.
        let boundary = leader.state().last_applied_index().unwrap() - 2;
        for n in &nodes {
            n.compact(boundary, Duration::from_secs(10)).await.expect("compact").expect("a checkpoint below the boundary");
        }
        let gone = nodes.iter().position(|n| n.id() != leader.id()).unwrap();
        let dead = nodes.remove(gone);
        let dead_id = dead.id();
        dead.shutdown().await;
        drop(dead);
        let fresh = Arc::new(RaftNode::start(small_node_cfg(&root, 4)).await.expect("start n4"));
        leader.replace_voter(dead_id, 4, fresh.raft_addr().to_string(), Duration::from_secs(20)).await.expect("replace");
        nodes.push(Arc::clone(&fresh));
        produce(&leader, "T", 0, "after").await;
        let target = leader.state().last_applied_index();
        wait_until("fresh member applied", || fresh.state().last_applied_index() >= target).await;
        assert!(fresh.commitlog().state().purged.is_some(), "the fresh member was seeded by a snapshot");
        check(&fresh, &root);
        assert_eq!(fresh.state().metadata().state.topics, leader.state().metadata().state.topics);
        assert_eq!(fresh.state().metadata().state.consumer_offsets, leader.state().metadata().state.consumer_offsets);
        for n in nodes {
            n.shutdown().await;
        }
    });
}
