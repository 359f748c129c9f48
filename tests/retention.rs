//! Retention on a real 3-node group (`raftmq broker` processes on loopback), with 1 MiB segments and a
//! 3-second `fileReservedTimeMs`, under load:
//!
//! - every replica applies the same purge points, while the load runs and until only the segment being
//!   written is left (same floor index, same retained bytes once idle) and
//!   deletes the segments below its compaction point (the first segment file is gone on every node);
//! - every queue's min offset moves to the same value on every node; every acknowledged message at or
//!   above it is still served, byte for byte;
//! - a consumer behind the floor gets 21 PULL_OFFSET_MOVED with nextBeginOffset = the new min offset, and
//!   the messages it never consumed are counted as lost to retention for its group (replicated);
//! - the same after kill -9 of every node and a restart (the floor is in the checkpoints and the log).

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::ResponseCode;

const TOPIC: &str = "TopicRetention";
const GROUP: &str = "slow-group";
const EXTRA: &str =
    "mappedFileSizeCommitLog = 1048576\nentryBytesMax = 262144\nmaxMessageSize = 131072\nfileReservedTimeMs = 3000\ndeleteWhen = \"*\"\n\
                     cleanResourceInterval = 300\n";

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("ret-{i:06}-").into_bytes();
    b.resize(1000, b'r');
    b
}

/// Sends `count` messages starting at number `from` over 4 connections; returns (offset, number) acked.
async fn load(addr: &str, from: usize, count: usize) -> Vec<(i64, usize)> {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let c = client(&addr).await.expect("leader reachable");
            let mut acked = Vec::new();
            for i in (from + w..from + count).step_by(4) {
                let off = send(&c, TOPIC, 0, &body(i)).await.unwrap_or_else(|e| panic!("send {i}: {e:?}"));
                acked.push((off, i));
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    all
}

async fn status(c: &Cluster, id: u64) -> serde_json::Value {
    node_status(&c.node(id).client_addr).await.unwrap_or_else(|| panic!("status of n{id}"))
}

async fn min_offset(addr: &str) -> i64 {
    use raftmq_remoting::header::{GetMinOffsetRequestHeader, OffsetResponseHeader};
    use raftmq_remoting::{RemotingCommand, RequestCode};
    let c = client(addr).await.expect("reachable");
    let h = GetMinOffsetRequestHeader { topic: TOPIC.into(), queue_id: 0 };
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_MIN_OFFSET, 0).with_header(&h), TIMEOUT).await.expect("min offset");
    r.decode_header::<OffsetResponseHeader>().expect("offset").offset
}

/// Waits until every node reports the same floor (at least one purge) and has compacted below it, and the
/// nodes' logs are equally long; returns the floor index.
async fn wait_converged(c: &Cluster, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut s = Vec::new();
        for id in 1..=3 {
            s.push(status(c, id).await);
        }
        let floors: Vec<u64> = s.iter().map(|v| v["retention"]["floorIndex"].as_u64().unwrap_or(0)).collect();
        let retained: Vec<u64> = s.iter().map(|v| v["retention"]["retainedBytes"].as_u64().unwrap_or(0)).collect();
        let purged: Vec<u64> = s.iter().map(|v| v["purgedIndex"].as_u64().unwrap_or(0)).collect();
        let applied: Vec<u64> = s.iter().map(|v| v["appliedIndex"].as_u64().unwrap_or(0)).collect();
        if floors[0] > 0
            && floors.iter().all(|f| *f == floors[0])
            && retained.iter().all(|r| *r == retained[0])
            && applied.iter().all(|a| *a == applied[0])
            && purged.iter().all(|p| *p > 0)
        {
            return floors[0];
        }
        assert!(
            Instant::now() < deadline,
            "{what}: replicas did not converge: floors {floors:?} retained {retained:?} purged {purged:?} applied {applied:?}\n{}\n{}",
            s[0]["retention"],
            c.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_purges_the_same_prefix_on_every_replica_and_moves_consumers_behind_it() {
    let mut cluster = Cluster::start_with(3, None, EXTRA).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let addr = cluster.node(leader).client_addr.clone();
    let c = client(&addr).await.expect("leader reachable");
    // The slow group consumed the first message only.
    let first = load(&addr, 0, 4).await;
    assert_eq!(commit_offset(&c, GROUP, TOPIC, 0, 1).await, ResponseCode::SUCCESS.0);

    // 6 000 × 1 000 bytes ≈ 6 MiB, in two halves 4 s apart: the first half expires while the second is sent.
    let mut acked = first;
    acked.extend(load(&addr, 4, 3000).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    acked.extend(load(&addr, 3004, 3000).await);
    let mut floor = wait_converged(&cluster, "under load").await;
    // Idle: every segment but the one being written expires; wait until the floor stops moving.
    loop {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let f = wait_converged(&cluster, "idle").await;
        if f == floor {
            break;
        }
        floor = f;
    }

    // Same min offset everywhere, above 0, and every acked message at or above it served unchanged.
    let mins = [
        min_offset(&cluster.node(1).client_addr).await,
        min_offset(&cluster.node(2).client_addr).await,
        min_offset(&cluster.node(3).client_addr).await,
    ];
    assert!(mins[0] > 0 && mins.iter().all(|m| *m == mins[0]), "min offsets {mins:?} (floor index {floor})");
    let min = mins[0];
    let served: std::collections::BTreeMap<i64, Vec<u8>> = {
        let mut out = std::collections::BTreeMap::new();
        let mut at = min;
        loop {
            let (code, next, msgs) = pull(&c, TOPIC, 0, at).await;
            if code != ResponseCode::SUCCESS.0 || msgs.is_empty() {
                break;
            }
            out.extend(msgs);
            at = next;
        }
        out
    };
    let kept: Vec<&(i64, usize)> = acked.iter().filter(|(o, _)| *o >= min).collect();
    assert!(!kept.is_empty(), "retention kept nothing: min {min}, {} acked", acked.len());
    for (o, i) in &kept {
        assert_eq!(served.get(o), Some(&body(*i)), "acked message {i} at offset {o} (min {min})");
    }
    assert_eq!(served.len(), kept.len(), "served exactly the acked messages at or above the min offset");

    // The first segment file is gone on every node.
    for id in 1..=3 {
        let seg0 = cluster.store_dir(id).join("commitlog").join("data").join(format!("{:020}", 0));
        assert!(!seg0.exists(), "n{id} still has {}", seg0.display());
    }

    // A consumer behind the floor is moved to the min offset; its group is charged what it never consumed.
    let (code, next, msgs) = pull(&c, TOPIC, 0, 1).await;
    assert_eq!((code, next), (ResponseCode::PULL_OFFSET_MOVED.0, min), "pull below the floor");
    assert!(msgs.is_empty());
    for id in 1..=3 {
        let lost = status(&cluster, id).await["retention"]["lost"][GROUP][TOPIC].as_u64();
        assert_eq!(lost, Some(min as u64 - 1), "n{id}: messages {GROUP} lost to retention");
    }

    // kill -9 of every node: the floor, the min offset and the retained messages come back.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let c = client(&cluster.node(leader).client_addr).await.expect("leader reachable");
    assert!(wait_converged(&cluster, "after restart").await >= floor);
    for id in 1..=3 {
        assert!(min_offset(&cluster.node(id).client_addr).await >= min, "n{id} min offset after restart");
    }
    let (code, _, msgs) = pull(&c, TOPIC, 0, *served.keys().last().expect("kept")).await;
    assert_eq!(code, ResponseCode::SUCCESS.0, "the newest acked message after restart");
    assert_eq!(msgs.last().map(|m| m.1.clone()), served.values().last().cloned());
}
