//! The leader's own fsync overlapped with replication (docs/architecture.md "Leader fsync overlapped with
//! replication"; the patch in crates/vendor/openraft), on a 3-node group in one process over loopback TCP,
//! with the leader's flush notices held back (`RaftNode::set_local_flush_held`: to openraft, the leader's
//! fdatasync has not completed):
//!
//! - a write still commits once both followers have it durably — the leader's flush is not on the path;
//! - with one follower down, a write is neither committed nor acknowledged while the leader's flush is held,
//!   even after the remaining follower has acknowledged it durably: the leader counts itself toward the
//!   quorum only once its flush completes, and then the write commits.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{produce, runtime, small_node_cfg, start_group_with, wait_leader};
use raftmq_raft::node::{NodeConfig, RaftNode};

fn node_cfg(root: &Path, id: u64) -> NodeConfig {
    let mut c = small_node_cfg(root, id);
    // No stalled-leader hand-off: a held flush must not move leadership during the test.
    c.stall_handoff_ms = 0;
    c
}

/// Waits until `cond` holds, polling; panics with `what` after 10 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn last_log_index(n: &RaftNode) -> u64 {
    n.raft().metrics().borrow().last_log_index.unwrap_or(0)
}

/// openraft 0.9's metrics do not show the commit index; a member applies an entry right after it learns the
/// entry is committed (the leader at once, a follower from the leader's next AppendEntries).
fn applied_index(n: &RaftNode) -> u64 {
    n.raft().metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
}

/// What the leader's replication metrics say `follower` has matched.
fn matched_at_leader(leader: &RaftNode, follower: u64) -> u64 {
    let m = leader.raft().metrics().borrow().clone();
    m.replication.and_then(|r| r.get(&follower).cloned().flatten()).map(|l| l.index).unwrap_or(0)
}

#[test]
fn a_write_commits_on_the_followers_while_the_leaders_flush_is_held() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group_with(3, |id| node_cfg(dir.path(), id)).await;
        let leader = wait_leader(&nodes, None, Duration::from_secs(10)).await.expect("a leader");
        produce(&leader, 0).await.expect("a write before the hold");

        leader.set_local_flush_held(true);
        let before = last_log_index(&leader);
        // Unpatched openraft 0.9 waits for the leader's flush before replicating: this write would hang.
        let r = tokio::time::timeout(Duration::from_secs(10), produce(&leader, 1)).await;
        r.expect("the write committed while the leader's flush was held").expect("write");
        let index = last_log_index(&leader);
        assert!(index > before);
        assert!(applied_index(&leader) >= index);
        for f in nodes.iter().filter(|n| n.id() != leader.id()) {
            assert!(
                f.commitlog().durable_index().is_some_and(|d| d >= index),
                "follower {} acknowledged {index} before it was durable there",
                f.id()
            );
        }

        leader.set_local_flush_held(false);
        tokio::time::timeout(Duration::from_secs(10), produce(&leader, 2)).await.expect("write in time").expect("write after the hold");
        for n in &nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn with_a_follower_down_a_write_waits_for_the_leaders_flush() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group_with(3, |id| node_cfg(dir.path(), id)).await;
        let leader = wait_leader(&nodes, None, Duration::from_secs(10)).await.expect("a leader");
        produce(&leader, 0).await.expect("a write before the fault");
        let followers: Vec<Arc<RaftNode>> = nodes.iter().filter(|n| n.id() != leader.id()).cloned().collect();
        let (live, down) = (&followers[0], &followers[1]);
        down.shutdown().await;

        leader.set_local_flush_held(true);
        let before = last_log_index(&leader);
        let l = Arc::clone(&leader);
        let write = tokio::spawn(async move { produce(&l, 1).await });
        wait_until("the leader proposed the write", || last_log_index(&leader) > before).await;
        let index = last_log_index(&leader);
        // The live follower has the entry durably and the leader has its acknowledgement: the leader's own
        // flush is all the quorum lacks.
        wait_until("the live follower made the entry durable", || live.commitlog().durable_index().is_some_and(|d| d >= index)).await;
        wait_until("the leader heard the live follower's acknowledgement", || matched_at_leader(&leader, live.id()) >= index).await;
        // Heartbeats and further responses come and go meanwhile; nothing may commit the entry.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(applied_index(&leader) < index, "leader applied {} with only one durable copy of {index}", applied_index(&leader));
        assert!(applied_index(live) < index, "follower applied {} with only one durable copy of {index}", applied_index(live));
        assert!(!write.is_finished(), "the write was acknowledged with only one durable copy");

        leader.set_local_flush_held(false);
        let r = tokio::time::timeout(Duration::from_secs(10), write).await.expect("the write finished once the leader's flush completed");
        r.expect("join").expect("write");
        assert!(applied_index(&leader) >= index);
        wait_until("the live follower applied the entry", || applied_index(live) >= index).await;
        for n in &nodes {
            if n.id() != down.id() {
                n.shutdown().await;
            }
        }
    });
}
