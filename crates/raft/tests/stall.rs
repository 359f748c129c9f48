//! A leader that cannot replicate, in one process over loopback TCP: its AppendEntries with entries are held
//! (`RaftNode::set_entries_stalled`) while its heartbeats still reach the followers, so none of them campaigns —
//! the gray failure of a throttled egress. With `stall_handoff_ms` the leader hands leadership to a follower and
//! writes flow again through the new leader; without it the group stays stuck behind the stalled leader.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{produce, runtime, small_node_cfg, start_group_with, wait_leader};
use raftmq_raft::node::{NodeConfig, RaftNode, Role};

const STALL_MS: u64 = 4_000;

/// While the leader's entry sends hang, openraft sends its heartbeats only between their timeouts, so a
/// follower may hear nothing for 250–560 ms (measured): with the default 250–500 ms election timeouts the
/// followers sometimes elect a new leader by themselves before any hand-off, which is not what these tests
/// are about. With timeouts well above those gaps they keep hearing the stalled leader and nobody campaigns
/// on their own.
fn node_cfg(root: &Path, id: u64, stall_handoff_ms: u64) -> NodeConfig {
    let mut c = small_node_cfg(root, id);
    (c.election_min_ms, c.election_max_ms) = (1_000, 2_000);
    c.transfer_interval_min_ms = 500;
    c.stall_handoff_ms = stall_handoff_ms;
    c
}

async fn start_group(root: &Path, stall_handoff_ms: u64) -> Vec<Arc<RaftNode>> {
    start_group_with(3, |id| node_cfg(root, id, stall_handoff_ms)).await
}

/// Stalls the leader's entry sends and starts a write on it; returns the stalled leader.
async fn stall_leader(nodes: &[Arc<RaftNode>]) -> Arc<RaftNode> {
    let leader = wait_leader(nodes, None, Duration::from_secs(10)).await.expect("a leader");
    produce(&leader, 0).await.expect("a write before the fault");
    leader.set_entries_stalled(true);
    let l = Arc::clone(&leader);
    // Waits with the entry; its outcome (unknown, or committed by the next leader) is not what is tested.
    tokio::spawn(async move { produce(&l, 1).await });
    leader
}

#[test]
fn a_leader_that_cannot_replicate_hands_leadership_to_a_follower() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path(), STALL_MS).await;
        let stalled = stall_leader(&nodes).await;
        let started = Instant::now();
        let next = wait_leader(&nodes, Some(stalled.id()), Duration::from_secs(20)).await.expect("a follower takes over");
        let took = started.elapsed();
        assert_ne!(next.id(), stalled.id());
        // Detection (the stall bound) plus the lease, the election and the first AppendEntries.
        assert!(took >= Duration::from_millis(STALL_MS), "handed off after {took:?}, before the stall bound");
        assert!(took < Duration::from_secs(16), "handed off only after {took:?}");
        // The old leader learns of the new one (it still receives) and steps down, unmuted.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stalled.role().borrow().role == Role::Leader {
            assert!(Instant::now() < deadline, "the stalled leader never stepped down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Writes flow through the new leader while the old one's entry sends are still stalled (it is a
        // follower now: it only answers).
        tokio::time::timeout(Duration::from_secs(10), produce(&next, 2)).await.expect("write in time").expect("write at the new leader");
        // Once its link heals, the old leader catches up as a follower.
        stalled.set_entries_stalled(false);
        let target = next.status().commit_index.expect("commit index");
        let deadline = Instant::now() + Duration::from_secs(10);
        while stalled.status().applied_index.unwrap_or(0) < target {
            assert!(Instant::now() < deadline, "the old leader never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Its lag behind the leader's commit is known and small once caught up.
        assert!(stalled.leader_commit_lag().is_some_and(|l| l <= 2), "lag {:?}", stalled.leader_commit_lag());
        for n in &nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn without_the_hand_off_the_stalled_leader_keeps_the_group() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path(), 0).await;
        let stalled = stall_leader(&nodes).await;
        // Well past the bound the other test hands off within: the followers keep hearing from the stalled
        // leader, so nobody campaigns, and nothing commits.
        let other = wait_leader(&nodes, Some(stalled.id()), Duration::from_millis(3 * STALL_MS / 2)).await;
        assert!(other.is_none(), "node {:?} took over without a hand-off", other.map(|n| n.id()));
        assert_eq!(stalled.role().borrow().role, Role::Leader);
        let r = tokio::time::timeout(Duration::from_millis(500), produce(&stalled, 3)).await;
        assert!(r.is_err(), "a write committed through a stalled leader: {r:?}");
        stalled.set_entries_stalled(false);
        for n in &nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn a_follower_knows_its_lag_behind_the_leaders_commit() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path(), 0).await;
        let leader = wait_leader(&nodes, None, Duration::from_secs(10)).await.expect("a leader");
        assert_eq!(leader.leader_commit_lag(), None, "the leader has no lag of its own");
        produce(&leader, 0).await.expect("write");
        let follower = nodes.iter().find(|n| n.id() != leader.id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while follower.leader_commit_lag() != Some(0) {
            assert!(Instant::now() < deadline, "follower lag {:?}", follower.leader_commit_lag());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Cut one follower off: the leader commits with the other, and once the cut-off one hears of the
        // leader's commit again it knows how far behind it is.
        follower.set_isolated(true);
        for i in 1..=20 {
            produce(&leader, i).await.expect("write with the other follower");
        }
        let commit = leader.status().commit_index.unwrap();
        // Its applied index has not moved, and it heard of none of these commits.
        assert!(follower.status().applied_index.unwrap_or(0) < commit);
        follower.set_isolated(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while follower.status().applied_index.unwrap_or(0) < commit {
            assert!(Instant::now() < deadline, "the follower never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(follower.leader_commit_lag().is_some_and(|l| l <= 1), "lag {:?}", follower.leader_commit_lag());
        for n in &nodes {
            n.shutdown().await;
        }
    });
}
