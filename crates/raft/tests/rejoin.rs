//! A follower cut off from its group (its Raft port isolated with `RaftNode::set_isolated`) for several
//! election timeouts, then healed, while a writer keeps producing at the leader. openraft 0.9 has no
//! PreVote: without raftmq's pre-vote the cut-off node campaigns on every timeout, its term grows, and once
//! healed its higher term deposes the healthy leader (an election and a write outage). With it, the cut-off
//! node never bumps its term because no quorum answers its pre-vote, and the leader keeps its term.
//! Also: elections still happen when the leader really dies, and a leader transfer still works.
//!
//! The figures (term bumps, leader changes, longest gap between acknowledged writes) are printed.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{runtime, small_node_cfg, start_group_with, wait_leader};
use raftmq_raft::node::{NodeConfig, RaftNode, Role};

fn node_cfg(root: &Path, id: u64) -> NodeConfig {
    let mut c = small_node_cfg(root, id);
    c.segment_bytes = 256 * 1024;
    c.index_slots_per_file = 4096;
    c.checkpoint_every = 256;
    c.cq_units_per_file = 4096;
    c
}

async fn start_group(root: &Path) -> Vec<Arc<RaftNode>> {
    start_group_with(3, |id| node_cfg(root, id)).await
}

/// Whether a one-message produce at `node` succeeds within 2 s.
async fn produce(node: &RaftNode, i: u64) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(2), common::produce(node, i)).await, Ok(Ok(())))
}

/// What a writer producing at whichever node leads saw: acknowledged writes and the longest gap between two.
#[derive(Default)]
struct Writes {
    acked: u64,
    last_ack: Option<Instant>,
    longest_gap: Duration,
}

/// Writes one message after another at the current ready leader until `stop`.
fn spawn_writer(nodes: Vec<Arc<RaftNode>>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Writes>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0;
        while !stop.load(Ordering::Acquire) {
            let Some(leader) = wait_leader(&nodes, None, Duration::from_millis(100)).await else { continue };
            i += 1;
            if produce(&leader, i).await {
                let now = Instant::now();
                let mut w = seen.lock().unwrap();
                if let Some(prev) = w.last_ack {
                    w.longest_gap = w.longest_gap.max(now - prev);
                }
                w.last_ack = Some(now);
                w.acked += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    })
}

/// Every (leader, term) pair the given nodes report, sampled every 10 ms until `stop`.
fn spawn_term_watch(nodes: Vec<Arc<RaftNode>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(u64, u64)>> {
    tokio::spawn(async move {
        let mut seen: Vec<(u64, u64)> = Vec::new();
        while !stop.load(Ordering::Acquire) {
            for n in &nodes {
                let r = n.role().borrow().clone();
                if r.role == Role::Leader && !seen.contains(&(n.id(), r.term)) {
                    seen.push((n.id(), r.term));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
}

#[test]
fn a_partitioned_follower_rejoining_does_not_disturb_the_leader() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path()).await;
        let leader = wait_leader(&nodes, None, Duration::from_secs(5)).await.unwrap();
        let term0 = leader.role().borrow().term;
        let cut = nodes.iter().find(|n| n.id() != leader.id()).cloned().unwrap();
        let healthy: Vec<Arc<RaftNode>> = nodes.iter().filter(|n| n.id() != cut.id()).cloned().collect();
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(Mutex::new(Writes::default()));
        let writer = spawn_writer(healthy.clone(), Arc::clone(&stop), Arc::clone(&writes));
        let watch = spawn_term_watch(nodes.clone(), Arc::clone(&stop));
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Cut off for about eight election timeouts: plain Raft campaigns on each.
        let election_max = Duration::from_millis(cut.config().election_max_ms);
        cut.set_isolated(true);
        tokio::time::sleep(8 * election_max).await;
        let cut_term = cut.role().borrow().term;
        cut.set_isolated(false);
        let healed = Instant::now();
        // Rejoined: the cut-off node follows the leader again and catches up.
        let deadline = healed + Duration::from_secs(10);
        loop {
            let target = wait_leader(&nodes, None, Duration::from_secs(5)).await.expect("a leader after the heal");
            let r = cut.role().borrow().clone();
            if r.role == Role::Follower
                && r.leader == Some(target.id())
                && cut.state().last_applied_index() >= target.state().last_applied_index()
            {
                break;
            }
            assert!(Instant::now() < deadline, "the healed node never caught up: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rejoined = healed.elapsed();
        tokio::time::sleep(4 * election_max).await;
        stop.store(true, Ordering::Release);
        writer.await.unwrap();
        let leaders = watch.await.unwrap();
        let after = wait_leader(&nodes, None, Duration::from_secs(5)).await.unwrap();
        let term1 = after.role().borrow().term;
        let (acked, longest_gap) = {
            let w = writes.lock().unwrap();
            (w.acked, w.longest_gap)
        };
        println!(
            "rejoin: leader n{} term {term0} -> leader n{} term {term1}; cut-off node's term at the heal {cut_term}; \
             leaders seen {leaders:?}; rejoined after {rejoined:?}; {} writes acked, longest gap between acks {:?}",
            leader.id(),
            after.id(),
            acked,
            longest_gap
        );
        assert_eq!(cut_term, term0, "the cut-off node did not raise its term while no quorum answered its pre-vote");
        assert_eq!((after.id(), term1), (leader.id(), term0), "the healthy leader kept its leadership and term");
        assert_eq!(leaders, vec![(leader.id(), term0)], "no other leader in between");
        assert!(acked > 0, "the writer made progress");
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn a_dead_leader_is_replaced_and_a_transfer_still_works() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path()).await;
        let leader = wait_leader(&nodes, None, Duration::from_secs(5)).await.unwrap();
        let term0 = leader.role().borrow().term;
        assert!(produce(&leader, 0).await);

        // A transfer: the target's votes are granted although the voters heard the leader moments before.
        let target = nodes.iter().find(|n| n.id() != leader.id()).cloned().unwrap();
        leader.transfer_leader(target.id(), Duration::from_secs(10)).await.expect("transfer");
        let new = wait_leader(&nodes, None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(new.id(), target.id());
        assert!(new.role().borrow().term > term0);
        assert!(produce(&new, 1).await, "writes at the transfer's target");

        // The leader dies: the two survivors elect one of them.
        let t0 = Instant::now();
        new.shutdown().await;
        let survivors: Vec<Arc<RaftNode>> = nodes.iter().filter(|n| n.id() != new.id()).cloned().collect();
        let third = wait_leader(&survivors, None, Duration::from_secs(10)).await.expect("a leader after the crash");
        println!("leader n{} died; n{} leads after {:?}", new.id(), third.id(), t0.elapsed());
        assert!(produce(&third, 2).await, "writes at the survivors' leader");
        for n in survivors {
            n.shutdown().await;
        }
    });
}
