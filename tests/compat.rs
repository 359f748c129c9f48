//! Data-directory compatibility: a store written by an earlier raftmq (before time entered the log and the
//! replicated state got versioned checkpoints) opens with this version and keeps serving.
//!
//! `tests/fixtures/v1-store.tar.gz` was made by the binary of commit 830c354: a single-node group
//! (8 MiB segments) that took 1100 sends of `message <n>` (tag `TagA`, keys `k1 k2`) on topic `FixT`
//! (4 queues, 275 each), 20 messages as batches of 5 on `FixU`, and a `raftmq consume` of 300 messages by
//! group `FixG` that committed offsets 96, 76, 64, 64; then killed. It holds a legacy (version 1) state
//! checkpoint at index 1024 and legacy (tag 1) produce entries after it.

mod common;

use std::time::Duration;

use common::*;

async fn check_fixture_content(c: &raftmq_net::RemotingClient) {
    for q in 0..4 {
        assert_eq!(max_offset(c, "FixT", q).await, 275, "FixT queue {q}");
    }
    let total: i64 = futures_sum(c, "FixU").await;
    assert_eq!(total, 20, "FixU holds its 20 batched messages");
    let q0 = pull_all(c, "FixT", 0).await;
    assert_eq!(q0.len(), 275);
    for (i, (off, body)) in q0.iter().enumerate() {
        assert_eq!(*off, i as i64);
        assert!(body.starts_with(b"message "), "{:?}", String::from_utf8_lossy(body));
    }
    let committed: Vec<Option<i64>> = {
        let mut v = Vec::new();
        for q in 0..4 {
            v.push(query_offset(c, "FixG", "FixT", q).await);
        }
        v
    };
    assert_eq!(committed, vec![Some(96), Some(76), Some(64), Some(64)], "offsets committed by the earlier version");
}

async fn futures_sum(c: &raftmq_net::RemotingClient, topic: &str) -> i64 {
    let mut total = 0;
    for q in 0..4 {
        total += max_offset(c, topic, q).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_the_previous_version_opens_and_keeps_serving() {
    let mut cluster = Cluster::prepare(1, "");
    let store = cluster.store_dir(1);
    std::fs::create_dir_all(&store).expect("store dir");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/v1-store.tar.gz");
    let st = std::process::Command::new("tar").args(["xzf", fixture, "--strip-components=1", "-C"]).arg(&store).status().expect("run tar");
    assert!(st.success(), "extracting {fixture}");
    assert!(store.join("state/checkpoint").exists(), "the fixture holds a legacy checkpoint");
    cluster.start_node(1);
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&cluster.node(1).client_addr).await.expect("connect");
    check_fixture_content(&c).await;

    // New (stamped) entries go after the legacy ones, and a restart replays both kinds and the new
    // checkpoints (1100+ sends cross the next checkpoint index, 2048).
    for i in 0..1000 {
        let off = send(&c, "FixT", 1, format!("new {i}").as_bytes()).await.expect("send after upgrade");
        assert_eq!(off, 275 + i);
    }
    assert_eq!(commit_offset(&c, "FixG", "FixT", 1, 300).await, 0);
    drop(c);
    cluster.kill(1);
    cluster.start_node(1);
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&cluster.node(1).client_addr).await.expect("connect");
    assert_eq!(max_offset(&c, "FixT", 1).await, 1275);
    assert_eq!(query_offset(&c, "FixG", "FixT", 1).await, Some(300));
    let q1 = pull_all(&c, "FixT", 1).await;
    assert_eq!(q1.len(), 1275);
    assert_eq!(q1[275].1, b"new 0");
    assert_eq!(q1[1274].1, b"new 999");
    for q in [0, 2, 3] {
        assert_eq!(max_offset(&c, "FixT", q).await, 275);
    }
}
