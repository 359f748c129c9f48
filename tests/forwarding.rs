//! Follower forwarding and the election wait, on real `raftmq` binaries on loopback: a client holding a stale
//! route (a raw remoting client that never refreshes routes) keeps sending to the member that was the leader
//! while leadership moves, and every send and offset commit succeeds, each message stored exactly once; the
//! forwarding bounds answer 14 naming the leader; a write sent to a follower right after the leader is killed
//! waits for the election and succeeds, and without a quorum gets 14 once `leaderWaitMs` has passed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::message::property;
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

fn send_with_id(topic: &str, body: &[u8], id: &str) -> RemotingCommand {
    send_request_with(topic, 0, body, &[(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, id)])
}

async fn forwarding_status(addr: &str) -> serde_json::Value {
    node_status(addr).await.expect("node status")["forwarding"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_route_to_the_old_leader_keeps_working_through_a_leader_transfer() {
    let cluster = Cluster::start(3).await;
    let old = cluster.leader(Duration::from_secs(30)).await;
    let old_addr = cluster.node(old).client_addr.clone();
    let target = if old == 1 { 2 } else { 1 };
    let topic = "FwdTransfer";
    create_one_queue_topic(&old_addr, topic).await;

    const N: usize = 300;
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (addr, sent) = (old_addr.clone(), Arc::clone(&sent));
        tokio::spawn(async move {
            // One connection to the old leader's address for the whole run, as a client with a stale route has.
            let c = client(&addr).await.expect("connect to the old leader");
            let mut failures = Vec::new();
            let mut slowest = Duration::ZERO;
            for i in 0..N {
                let t = Instant::now();
                if let Err(e) = send_cmd(&c, send_with_id(topic, format!("m{i}").as_bytes(), &format!("FWD{i:06}"))).await {
                    failures.push(format!("send {i}: {e:?}"));
                }
                if i % 20 == 19 {
                    let code = commit_offset(&c, "fwd_group", topic, 0, i as i64).await;
                    if code != ResponseCode::SUCCESS.0 {
                        failures.push(format!("offset commit {i}: code {code}"));
                    }
                }
                slowest = slowest.max(t.elapsed());
                sent.store(i + 1, Ordering::Release);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (failures, slowest)
        })
    };
    while sent.load(Ordering::Acquire) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut transfer = RemotingCommand::request(RequestCode(RAFTMQ_TRANSFER_LEADER), 0);
    transfer.ext_fields.insert("target".into(), target.to_string());
    let c = client(&old_addr).await.expect("connect");
    let t = Instant::now();
    let r = c.invoke(transfer, Duration::from_secs(15)).await.expect("transfer");
    assert_eq!(r.code, 0, "transfer: {:?}\n{}", r.remark, cluster.log_tails(60));
    let at = sent.load(Ordering::Acquire);
    println!("leader transfer n{old} -> n{target} took {} ms, during sends {at}..", t.elapsed().as_millis());
    assert!(at < N - 50, "the transfer ended before the last 50 sends ({at} of {N} sent): the test would not show forwarding");
    let (failures, slowest) = sender.await.expect("sender");
    println!("slowest send or commit through the transfer: {} ms", slowest.as_millis());
    assert!(failures.is_empty(), "every send and commit to the old leader succeeds: {failures:?}\n{}", cluster.log_tails(30));

    let new_leader = cluster.leader(Duration::from_secs(10)).await;
    assert_eq!(new_leader, target);
    let new_addr = cluster.node(target).client_addr.clone();
    let ids = stored_ids(&new_addr, topic).await;
    assert_eq!(ids.len(), N, "every message stored");
    assert!(ids.iter().all(|(id, n)| *n == 1 && id.starts_with("FWD")), "every message stored exactly once: {ids:?}");
    let c = client(&new_addr).await.expect("connect");
    assert_eq!(query_offset(&c, "fwd_group", topic, 0).await, Some(N as i64 - 1), "the last commit reached the leader");
    let f = forwarding_status(&old_addr).await;
    println!("old leader's forwarding counters: {f}");
    assert!(f["forwarded"].as_u64().unwrap_or(0) >= 50, "the old leader forwarded the later writes: {f}");
    // `raftmq admin status` shows the same counter.
    let out = std::process::Command::new(bin()).args(["admin", "--namesrv", &cluster.namesrv, "status"]).output().expect("run raftmq");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let table = out.split("forwarded").nth(1).unwrap_or_else(|| panic!("no forwarding table: {out}"));
    let row = table.lines().find(|l| l.split_whitespace().nth(1) == Some(&format!("n{old}"))).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(row.split_whitespace().nth(2), Some(f["forwarded"].to_string().as_str()), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_is_bounded_and_the_excess_gets_14_naming_the_leader() {
    let cluster = Cluster::start_with(3, None, "forwardInflightMax = 1\nforwardInflightBytesMax = 1048576\n").await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let leader_addr = cluster.node(leader).client_addr.clone();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let follower_addr = cluster.node(follower).client_addr.clone();
    let topic = "FwdBound";
    create_one_queue_topic(&leader_addr, topic).await;

    // 16 clients send 256 KiB each to the follower at once: one is forwarded at a time.
    let gate = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (addr, gate) = (follower_addr.clone(), Arc::clone(&gate));
        tasks.push(tokio::spawn(async move {
            let c = client(&addr).await.expect("connect");
            gate.wait().await;
            send_cmd(&c, send_with_id(topic, &vec![b'x'; 256 * 1024], &format!("BOUND{i:03}"))).await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err((14, remark)) => {
                assert!(remark.contains(&leader_addr) && remark.contains("forwardInflightMax 1"), "{remark}");
                refused += 1;
            }
            Err(e) => panic!("unexpected answer {e:?}"),
        }
    }
    println!("forwardInflightMax = 1, 16 concurrent sends: {ok} forwarded, {refused} refused with 14");
    assert!(ok >= 1 && refused >= 1, "{ok} forwarded, {refused} refused");
    let f = forwarding_status(&follower_addr).await;
    assert_eq!(f["refused"].as_u64(), Some(refused), "{f}");
    assert_eq!(f["inflight"].as_u64(), Some(0), "every slot released: {f}");

    // The byte bound: a request above forwardInflightBytesMax is never forwarded, one below it is.
    let c = client(&follower_addr).await.expect("connect");
    let e = send_cmd(&c, send_with_id(topic, &vec![b'y'; 1024 * 1024], "BIG")).await.expect_err("over the byte cap");
    assert!(e.0 == 14 && e.1.contains("forwardInflightBytesMax 1048576") && e.1.contains(&leader_addr), "{e:?}");
    send_cmd(&c, send_with_id(topic, &vec![b'y'; 1000 * 1024], "BELOW")).await.expect("below the byte cap");
    // A refused request was not stored; the forwarded ones were, once each.
    let ids = stored_ids(&leader_addr, topic).await;
    assert_eq!(ids.len(), ok + 1, "{ids:?}");
    assert!(ids.values().all(|n| *n == 1) && ids.contains_key("BELOW") && !ids.contains_key("BIG"), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_to_a_follower_waits_out_the_election() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let topic = "FwdElection";
    create_one_queue_topic(&cluster.node(leader).client_addr, topic).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let f_addr = cluster.node(followers[0]).client_addr.clone();
    let c = client(&f_addr).await.expect("connect");
    send_cmd(&c, send_with_id(topic, b"before", "E0")).await.expect("forwarded while the leader lives");

    cluster.kill(leader);
    let t = Instant::now();
    let r = send_cmd(&c, send_with_id(topic, b"during", "E1")).await;
    let waited = t.elapsed();
    println!("send to follower n{} right after kill -9 of leader n{leader}: {r:?} after {} ms", followers[0], waited.as_millis());
    assert!(r.is_ok(), "the send waits for the new leader: {r:?}\n{}", cluster.log_tails(30));
    assert!(waited < Duration::from_millis(3500), "within leaderWaitMs (3000) and the forward: {waited:?}");
    let f = forwarding_status(&f_addr).await;
    assert!(f["leaderWaits"].as_u64().unwrap_or(0) >= 1, "the send waited: {f}");

    // No quorum: the survivor waits leaderWaitMs for a leader, then answers 14.
    let new_leader = cluster.leader(Duration::from_secs(10)).await;
    // Whether the send met the kept connection to the killed leader still open (then its answer was lost and
    // it was routed again under its UNIQ_KEY) or already closed, it is stored once.
    let ids = stored_ids(&cluster.node(new_leader).client_addr, topic).await;
    assert_eq!(ids.get("E1"), Some(&1), "{ids:?} (resent: {})", f["resent"]);
    assert_eq!(ids.get("E0"), Some(&1), "{ids:?}");
    let survivor = followers.iter().copied().find(|id| *id != new_leader).expect("survivor");
    cluster.kill(new_leader);
    let c = client(&cluster.node(survivor).client_addr).await.expect("connect");
    let t = Instant::now();
    let r = send_cmd(&c, send_with_id(topic, b"no quorum", "E2")).await;
    let waited = t.elapsed();
    println!("send without a quorum: {r:?} after {} ms", waited.as_millis());
    let (code, remark) = r.expect_err("no leader can be elected");
    assert_eq!(code, 14, "{remark}");
    assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_millis(4500), "waited leaderWaitMs: {waited:?}");
    let f = forwarding_status(&cluster.node(survivor).client_addr).await;
    assert!(f["leaderWaitsExpired"].as_u64().unwrap_or(0) >= 1, "{f}");
}

/// A leader that stops answering (SIGSTOP) with forwarded sends on its socket: the forwarded sends time out
/// (`forwardTimeoutMs`) with their outcome unknown. One carrying UNIQ_KEY is routed again to the next leader
/// and succeeds; one without it reports the unknown outcome (code 1). When the old leader resumes and reads
/// the stale copies, the replicated window keeps the message stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_whose_forwarded_answer_is_lost_is_routed_again_and_stored_once() {
    let cluster = Cluster::start_with(3, None, "forwardTimeoutMs = 1000\nleaderWaitMs = 8000\n").await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let topic = "FwdLost";
    create_one_queue_topic(&cluster.node(leader).client_addr, topic).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let f_addr = cluster.node(follower).client_addr.clone();
    let c = client(&f_addr).await.expect("connect");
    send_cmd(&c, send_with_id(topic, b"before", "L0")).await.expect("forwarded while the leader answers");

    cluster.signal(leader, "STOP");
    let t = Instant::now();
    let (with_id, without_id) =
        tokio::join!(send_cmd(&c, send_with_id(topic, b"with id", "L1")), send_cmd(&c, send_request(topic, 0, b"without id", None)));
    println!("with UNIQ_KEY: {with_id:?}, without: {without_id:?}, after {} ms", t.elapsed().as_millis());
    let f = forwarding_status(&f_addr).await;
    cluster.signal(leader, "CONT");
    assert!(with_id.is_ok(), "routed again to the next leader: {with_id:?}\n{f}\n{}", cluster.log_tails(20));
    let (code, remark) = without_id.expect_err("no client id: the outcome stays unknown");
    assert!(code == 1 && remark.contains("outcome is unknown"), "{code} {remark}");
    assert!(f["unanswered"].as_u64().unwrap_or(0) >= 2 && f["resent"].as_u64().unwrap_or(0) >= 1, "{f}");

    // The old leader resumes, reads the copies queued on its socket and steps down; the group settles.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.leader(Duration::from_secs(10)).await;
    for id in 1..=3 {
        let ids = stored_ids(&cluster.node(id).client_addr, topic).await;
        assert_eq!(ids.get("L1"), Some(&1), "n{id}: {ids:?}");
        assert_eq!(ids.get("L0"), Some(&1), "n{id}: {ids:?}");
    }
}

const RAFTMQ_TRANSFER_LEADER: i32 = raftmq_remoting::codes::RAFTMQ_TRANSFER_LEADER;
