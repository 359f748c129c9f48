//! Flow control on the leader's send queue (crates/raft/src/node.rs, "Flow control"), over the wire from
//! real `raftmq` binaries: a send past `sendQueueMax` is answered 2 SYSTEM_BUSY `[OVERLOAD]` at once, a send
//! that waited longer than `waitTimeMillsInSendQueue` for the Raft log is answered 2 SYSTEM_BUSY
//! `[TIMEOUT_CLEAN_QUEUE]` unproposed, neither is stored, and the group serves sends again once the queue
//! drains. The queue is made to fill by stopping both followers (SIGSTOP): the leader's entry in flight
//! cannot commit, so what arrives behind it waits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::message::property;
use raftmq_remoting::RemotingCommand;

fn send_with_id(topic: &str, id: &str) -> RemotingCommand {
    send_request_with(topic, 0, id.as_bytes(), &[(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, id)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_send_queue_answers_system_busy_at_once_and_a_stale_send_is_refused_unproposed() {
    let cluster = Cluster::start_with(3, None, "sendQueueMax = 2\nwaitTimeMillsInSendQueue = 300\n").await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let addr = cluster.node(leader).client_addr.clone();
    let topic = "FlowControl";
    create_one_queue_topic(&addr, topic).await;
    let c = client(&addr).await.expect("connect");
    send_cmd(&c, send_with_id(topic, "F0")).await.expect("a send while the queue is empty");

    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for f in &followers {
        cluster.signal(*f, "STOP");
        cluster.wait_stopped(*f, Duration::from_secs(5));
    }
    // A is proposed and cannot commit; B and C wait behind it, filling the queue (sendQueueMax 2).
    let spawn_send = |id: &'static str| {
        let addr = addr.clone();
        tokio::spawn(async move {
            let c = client(&addr).await.expect("connect");
            send_cmd(&c, send_with_id(topic, id)).await
        })
    };
    let a = spawn_send("A");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (b, cc) = (spawn_send("B"), spawn_send("C"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = node_status(&addr).await.expect("status");
    assert_eq!(status["sendQueue"]["requests"].as_u64(), Some(2), "B and C wait: {}", status["sendQueue"]);

    // D finds the queue full: refused at once, while A, B and C still wait.
    let t = Instant::now();
    let (code, remark) = send_cmd(&c, send_with_id(topic, "D")).await.expect_err("the queue is full");
    println!("D: {code} {remark:?} after {} ms", t.elapsed().as_millis());
    assert_eq!(code, 2, "{remark}");
    assert!(remark.starts_with("[OVERLOAD]system busy, start flow control for a while") && remark.contains("sendQueueMax"), "{remark}");
    assert!(!a.is_finished() && !b.is_finished() && !cc.is_finished(), "D was answered before the queue moved");

    // B and C have waited more than 300 ms when the followers come back: the batcher refuses them unproposed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for f in &followers {
        cluster.signal(*f, "CONT");
    }
    let a = a.await.expect("task");
    assert!(a.is_ok(), "the entry in flight commits: {a:?}");
    for (id, r) in [("B", b.await.expect("task")), ("C", cc.await.expect("task"))] {
        let (code, remark) = r.expect_err("waited too long");
        println!("{id}: {code} {remark:?}");
        assert_eq!(code, 2, "{remark}");
        assert!(remark.starts_with("[TIMEOUT_CLEAN_QUEUE]broker busy, start flow control for a while, period in queue: "), "{remark}");
    }
    send_cmd(&c, send_with_id(topic, "E")).await.expect("the drained queue takes sends again");

    let status = node_status(&addr).await.expect("status");
    let q = &status["sendQueue"];
    assert_eq!((q["requests"].as_u64(), q["refusedOverload"].as_u64(), q["refusedExpired"].as_u64()), (Some(0), Some(1), Some(2)), "{q}");
    // Refused means not stored, on every member (a follower may still be applying E: wait for it).
    for id in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ids = stored_ids(&cluster.node(id).client_addr, topic).await;
            if ids.contains_key("E") || Instant::now() > deadline {
                assert_eq!(ids.keys().map(String::as_str).collect::<Vec<_>>(), ["A", "E", "F0"], "n{id}: {ids:?}");
                assert!(ids.values().all(|n| *n == 1), "n{id}: {ids:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
