//! Membership changes of a running group through `raftmq admin node …` (real processes on loopback): a fresh
//! node joins under load (learner, catch-up, promotion), a killed voter is replaced by another fresh node with
//! a new id, and the leader is removed (leadership moves first) — while a producer sends and records every
//! acknowledgement. Afterwards every acknowledged message is read back, at its acknowledged offset, from the
//! leader and from both new members. The new nodes' configs list only themselves: the other members' client
//! addresses (leader hints in refusals) come from the Raft membership, and theirs reach the old members the
//! same way. A second test runs two broker groups behind one nameserver: a topic created with `raftmq admin
//! topic create` is routed on both, plain sends reach both, and one order key's sends stay in one group.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::ResponseCode;

const TOPIC: &str = "MemberTopic";

/// An acknowledged send: queue, queue offset, body.
type Ack = (i32, i64, Vec<u8>);

fn raftmq(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftmq")).args(args).output().expect("run raftmq");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Runs `raftmq admin --namesrv NS args…` off the async runtime.
async fn admin(ns: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["admin".to_string(), "--namesrv".into(), ns.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || raftmq(&all.iter().map(String::as_str).collect::<Vec<_>>())).await.expect("admin task")
}

/// The `node list` rows as (node, role) pairs.
fn roles(list: &str) -> BTreeMap<String, String> {
    list.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(1)?.to_string(), f.get(4)?.to_string()))
        })
        .collect()
}

/// A producer that follows the leader over every node it knows, recording each acknowledged send.
fn producer(addrs: Arc<Mutex<Vec<String>>>, acked: Arc<Mutex<Vec<Ack>>>, stop: Arc<AtomicBool>, p: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut target = 0usize;
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let addr = {
                let a = addrs.lock().unwrap();
                a[target % a.len()].clone()
            };
            let Some(c) = client(&addr).await else {
                target += 1;
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                // A fresh body per attempt: an uncertain send is never retried with the same value.
                seq += 1;
                let body = format!("p{p}-{seq}").into_bytes();
                let q = (seq % 4) as i32;
                match send(&c, TOPIC, q, &body).await {
                    Ok(off) => acked.lock().unwrap().push((q, off, body)),
                    Err(_) => {
                        target += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        break;
                    }
                }
            }
        }
    })
}

/// Waits until a freshly started node answers its status request.
async fn wait_answering(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node_status(addr).await.is_none() {
        assert!(Instant::now() < deadline, "the node at {addr} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the node at `addr` has applied at least `want[q]` messages of every queue, then checks every
/// acknowledged message is there at its offset.
async fn assert_has_every_ack(id: u64, addr: &str, acked: &[Ack]) {
    let c = client(addr).await.unwrap_or_else(|| panic!("n{id} unreachable"));
    let mut want: BTreeMap<i32, i64> = BTreeMap::new();
    for (q, off, _) in acked {
        let w = want.entry(*q).or_default();
        *w = (*w).max(off + 1);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (q, w) in &want {
        while max_offset(&c, TOPIC, *q).await < *w {
            assert!(Instant::now() < deadline, "n{id} did not apply queue {q} up to {w}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut queues: BTreeMap<i32, BTreeMap<i64, Vec<u8>>> = BTreeMap::new();
    for q in want.keys() {
        queues.insert(*q, pull_all(&c, TOPIC, *q).await.into_iter().collect());
    }
    for (q, off, body) in acked {
        assert_eq!(queues[q].get(off), Some(body), "n{id}: acknowledged message missing or moved at {q}/{off}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_under_load_replace_a_killed_node_and_remove_the_leader_lose_no_acknowledged_message() {
    let mut cluster = Cluster::start(3).await;
    let ns = cluster.namesrv.clone();
    let leader = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    let lc = client(&cluster.node(leader).client_addr).await.expect("leader");
    send(&lc, TOPIC, 0, b"first").await.expect("auto-create the topic");

    let addrs: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(cluster.nodes.iter().map(|n| n.client_addr.clone()).collect()));
    let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..3).map(|p| producer(Arc::clone(&addrs), Arc::clone(&acked), Arc::clone(&stop), p)).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // A node that already holds Raft state (a member) is refused, with the reason.
    let (ok, out) = admin(&ns, &["node", "add", "--addr", &cluster.node(2).client_addr]).await;
    assert!(!ok && out.contains("already holds Raft state"), "{out}");

    // Add n4 under load: learner, progress lines, then a voter.
    let n4 = cluster.start_fresh_node();
    wait_answering(&cluster.node(n4).client_addr).await;
    let (ok, out) = admin(&ns, &["node", "add", "--addr", &cluster.node(n4).client_addr, "--timeout-secs", "60"]).await;
    assert!(ok, "{out}\n{}", cluster.log_tails(30));
    assert!(out.contains(&format!("n{n4} (")) && out.contains("is a learner"), "{out}");
    assert!(out.contains(&format!("n{n4} catching up: matched")), "progress is printed: {out}");
    assert!(out.contains(&format!("n{n4} is a voter of broker-a")), "{out}");
    addrs.lock().unwrap().push(cluster.node(n4).client_addr.clone());
    let (ok, list) = admin(&ns, &["node", "list"]).await;
    assert!(ok, "{list}");
    let r = roles(&list);
    assert_eq!(r.len(), 4, "{list}");
    assert!(list.contains(&cluster.node(n4).client_addr), "the list shows the new node's client address: {list}");
    // Adding it again is refused: ids are never reused.
    let (ok, out) = admin(&ns, &["node", "add", "--addr", &cluster.node(n4).client_addr]).await;
    assert!(!ok && out.contains("already holds Raft state"), "{out}");

    // Kill a follower of the original three and replace it by n5 under load.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let dead = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(dead);
    let n5 = cluster.start_fresh_node();
    wait_answering(&cluster.node(n5).client_addr).await;
    let (ok, out) =
        admin(&ns, &["node", "replace", &format!("n{dead}"), "--addr", &cluster.node(n5).client_addr, "--timeout-secs", "60"]).await;
    assert!(ok, "{out}\n{}", cluster.log_tails(30));
    assert!(out.contains(&format!("n{n5} replaced n{dead} in broker-a")), "{out}");
    addrs.lock().unwrap().push(cluster.node(n5).client_addr.clone());
    let (ok, list) = admin(&ns, &["node", "list"]).await;
    let r = roles(&list);
    assert!(ok && r.len() == 4 && !r.contains_key(&format!("n{dead}")) && r.contains_key(&format!("n{n5}")), "{list}");

    // Remove the leader: leadership moves to another voter first, then it leaves.
    let old_leader = cluster.leader(Duration::from_secs(10)).await;
    let (ok, out) = admin(&ns, &["node", "remove", &format!("n{old_leader}")]).await;
    assert!(ok && out.contains(&format!("n{old_leader} removed from broker-a")), "{out}\n{}", cluster.log_tails(30));
    // A removed node is stopped (docs/operations.md): it no longer hears from a leader.
    cluster.kill(old_leader);
    let (ok, list) = admin(&ns, &["node", "list"]).await;
    let r = roles(&list);
    assert!(ok && r.len() == 3 && !r.contains_key(&format!("n{old_leader}")), "{list}");
    assert_eq!(r.values().filter(|v| *v == "leader").count(), 1, "{list}");
    // Three voters left: removing one more needs --force.
    let next = r.iter().find(|(_, role)| *role != "leader").map(|(n, _)| n.clone()).expect("a follower");
    let (ok, out) = admin(&ns, &["node", "remove", &next]).await;
    assert!(!ok && out.contains("below the safe size of 3"), "{out}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.expect("producer");
    }
    let acked: Vec<Ack> = std::mem::take(&mut *acked.lock().unwrap());
    println!("{} acknowledged sends", acked.len());
    assert!(acked.len() > 100, "the producer kept sending through the changes: {}", acked.len());

    // Every acknowledged message, at its offset, on the leader and on both new members.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    assert!(leader != old_leader && leader != dead);
    for id in [leader, n4, n5] {
        assert_has_every_ack(id, &cluster.node(id).client_addr.clone(), &acked).await;
    }

    // Every follower knows the leader's client address — the new nodes know only themselves from their config,
    // the old ones never had n4 or n5 in theirs: it forwards sends there, and names it in its refusal of a
    // send that was already forwarded (one hop).
    let leader_addr = cluster.node(leader).client_addr.clone();
    let followers: Vec<u64> = [1, 2, 3, n4, n5].into_iter().filter(|id| ![leader, dead, old_leader].contains(id)).collect();
    for id in followers {
        let c = client(&cluster.node(id).client_addr).await.expect("follower");
        send(&c, TOPIC, 0, b"to a follower").await.unwrap_or_else(|e| panic!("n{id} forwards a send to the leader: {e:?}"));
        let mut marked = send_request(TOPIC, 0, b"already forwarded", None);
        marked.ext_fields.insert("raftmqForwardedBy".into(), "9".into());
        let (code, remark) = send_cmd(&c, marked).await.expect_err("a forwarded send is not forwarded again");
        assert_eq!(code, ResponseCode::SERVICE_NOT_AVAILABLE.0);
        assert!(remark.contains(&format!("the leader is at {leader_addr}")), "n{id}: {remark}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_groups_share_a_topic_and_producers_reach_both() {
    let mut cluster = Cluster::start(3).await;
    cluster.add_group("broker-b", 11, 3).await;
    let ns = cluster.namesrv.clone();
    // broker-b's leader registers on election; wait until the nameserver lists both groups.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = admin(&ns, &["status"]).await;
        if ok && out.contains("broker-a") && out.contains("broker-b") && out.matches("Leader").count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both groups never registered a leader: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out) = admin(&ns, &["topic", "create", "Spread", "--queues", "2"]).await;
    assert!(ok && out.contains("on broker-a") && out.contains("on broker-b"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let route = loop {
        if let Ok(Some(r)) = route(&ns, "Spread").await {
            if r.broker_datas.len() == 2 && r.queue_datas.len() == 2 {
                break r;
            }
        }
        assert!(Instant::now() < deadline, "the route never listed both groups");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut names: Vec<&str> = route.broker_datas.iter().map(|b| b.broker_name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["broker-a", "broker-b"]);

    let ns2 = ns.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || raftmq(&["produce", "--namesrv", &ns2, "--topic", "Spread", "--count", "8"]))
        .await
        .expect("produce");
    assert!(ok, "{out}");
    for group in ["broker-a", "broker-b"] {
        assert_eq!(out.lines().filter(|l| l.starts_with(&format!("SEND_OK {group}"))).count(), 4, "round-robin over 4 queues: {out}");
    }
    let ns2 = ns.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        raftmq(&["produce", "--namesrv", &ns2, "--topic", "Spread", "--count", "6", "--order-key", "order-7"])
    })
    .await
    .expect("produce ordered");
    assert!(ok, "{out}");
    let groups: std::collections::BTreeSet<&str> =
        out.lines().filter(|l| l.starts_with("SEND_OK")).filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(groups.len(), 1, "one key's messages stay in one group: {out}");
}
