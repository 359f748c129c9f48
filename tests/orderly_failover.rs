//! Multi-process test of orderly consumption across a failover (replicated queue locks, issue 16): a
//! nameserver and three `raftmq broker` processes on loopback (`tests/common`), the Rust client's orderly
//! push consumer.
//!
//! - `two_orderly_consumers_never_process_one_queue_at_once_across_a_leader_kill`: consumer A holds every
//!   queue of the topic while ordered sends (per key, by hash) run; the Raft leader is killed with SIGKILL;
//!   once a new leader is elected consumer B joins the group and the queues are split. Each consumer
//!   records (queue, start, end) of every message it processes (each takes 60 ms). No two consumers'
//!   intervals on one queue may overlap — with leader-local locks B was granted A's queues by the new
//!   leader at once, while A was still processing them — and every key's messages are processed in order.
//!   Right after the failover, LOCK_BATCH_MQ by another client of the group gets none of A's queues, from
//!   the new leader and through a follower (which forwards 41/42 to the leader); a client of another group
//!   gets them through a follower and releases them with UNLOCK_BATCH_MQ.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftmq_client::{
    ClientConfig, ConsumeContext, ConsumeFrom, ConsumeOrderlyStatus, Message, MessageExt, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions, SelectByHash,
};
use raftmq_remoting::body::{decode_json_body, encode_json_body, LockBatchRequestBody, LockBatchResponseBody, MessageQueue};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

/// What one consumer did with one message.
#[derive(Debug, Clone)]
struct Processed {
    consumer: &'static str,
    queue: i32,
    key: String,
    seq: u32,
    /// Start and end of the listener call, µs since the test's epoch.
    start: u128,
    end: u128,
}

type Log = Arc<Mutex<Vec<Processed>>>;

/// Time each message takes to process: long enough that a handover overlapping a message in progress is
/// seen, short enough for the test to finish in a minute.
const WORK: Duration = Duration::from_millis(60);

async fn start_consumer(namesrv: &str, name: &'static str, topic: &str, log: &Log, epoch: Instant) -> PushConsumer {
    let mut opts = PushConsumerOptions::new("cg_orderly_failover").subscribe(topic, "*").with_consume_from(ConsumeFrom::FirstOffset);
    // Rebalance often: the consumer that has to wait for a lease to be released retries sooner.
    opts.rebalance_interval = Duration::from_secs(2);
    let log = Arc::clone(log);
    let listener = move |msgs: Vec<MessageExt>, ctx: ConsumeContext| {
        let log = Arc::clone(&log);
        async move {
            for m in msgs {
                let start = epoch.elapsed().as_micros();
                tokio::time::sleep(WORK).await;
                let end = epoch.elapsed().as_micros();
                let key = m.keys().first().map(|k| k.to_string()).unwrap_or_default();
                let seq: u32 = m.property("seq").and_then(|s| s.parse().ok()).unwrap_or(u32::MAX);
                log.lock().unwrap().push(Processed { consumer: name, queue: ctx.queue.queue_id, key, seq, start, end });
            }
            ConsumeOrderlyStatus::Success
        }
    };
    PushConsumer::start_orderly(ClientConfig::new(namesrv).with_instance_name(name), opts, listener).await.expect("orderly consumer")
}

/// Sends 41 (or 42 with `unlock`) for queues 0..4 of `topic` to the broker at `addr`; the queue ids it
/// answered as locked (none for an unlock).
async fn lock_call(addr: &str, unlock: bool, group: &str, client_id: &str, topic: &str) -> Vec<i32> {
    let mq_set = (0..4).map(|q| MessageQueue { topic: topic.into(), broker_name: "broker-a".into(), queue_id: q }).collect();
    let b = LockBatchRequestBody { consumer_group: group.into(), client_id: client_id.into(), mq_set, ..Default::default() };
    let code = if unlock { RequestCode::UNLOCK_BATCH_MQ } else { RequestCode::LOCK_BATCH_MQ };
    let c = client(addr).await.expect("connect");
    let r = c.invoke(RemotingCommand::request(code, 0).with_body(encode_json_body(&b).expect("body")), Duration::from_secs(10)).await;
    let r = r.expect("answered");
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "{code:?} at {addr}: {:?}", r.remark);
    if unlock {
        return Vec::new();
    }
    let body: LockBatchResponseBody = decode_json_body("lock", &r.body).expect("lock body");
    let mut ids: Vec<i32> = body.lock_ok_mq_set.iter().map(|q| q.queue_id).collect();
    ids.sort_unstable();
    ids
}

async fn wait_for(what: &str, logs: &Path, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let state = match check() {
            Ok(()) => return,
            Err(s) => s,
        };
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}: {state}; logs in {}", logs.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_orderly_consumers_never_process_one_queue_at_once_across_a_leader_kill() {
    const T: &str = "T_orderly_failover";
    const KEYS: usize = 8;
    const N: u32 = 50;
    let mut cluster = Cluster::start(3).await;
    let logs = cluster.dir.path().to_path_buf();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(["admin", "--namesrv", &cluster.namesrv, "topic", "create", T, "--queues", "4"])
        .output()
        .await
        .expect("run raftmq admin");
    assert!(out.status.success(), "topic create failed: {}", String::from_utf8_lossy(&out.stderr));
    let namesrv = cluster.namesrv.clone();
    for _ in 0..150 {
        if matches!(route(&namesrv, T).await, Ok(Some(r)) if !r.queue_datas.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let epoch = Instant::now();
    let log: Log = Arc::default();
    let a = start_consumer(&namesrv, "A", T, &log, epoch).await;
    let producer = Producer::start(ClientConfig::new(&namesrv).with_instance_name("producer"), ProducerOptions::new("pg_orderly_failover"))
        .await
        .expect("producer");
    let acked = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for k in 0..KEYS {
        let (producer, acked) = (producer.clone(), Arc::clone(&acked));
        senders.push(tokio::spawn(async move {
            let key = format!("key-{k}");
            for seq in 0..N {
                let deadline = Instant::now() + Duration::from_secs(30);
                let msg = Message::new(T, format!("{key}:{seq}")).with_keys([key.as_str()]).with_property("seq", seq.to_string());
                // Again until acknowledged: order is kept, duplicates are possible.
                while let Err(e) = producer.send_with_selector(msg.clone(), &SelectByHash, key.as_str()).await {
                    assert!(Instant::now() < deadline, "{key}: send of {seq} kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let total = KEYS * N as usize;
    // A holds all four queues and works through a backlog when the leader dies.
    wait_for("a third of the sends and A consuming", &logs, Duration::from_secs(40), || {
        let (n, consumed) = (acked.load(Ordering::Relaxed), log.lock().unwrap().len());
        if n * 3 >= total && consumed >= 8 {
            Ok(())
        } else {
            Err(format!("{n} of {total} acknowledged, {consumed} processed"))
        }
    })
    .await;
    let old = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    cluster.kill(old);
    let new = cluster.leader(Duration::from_secs(20)).await;
    assert_ne!(new, old);
    // The new leader knows A's leases at once: another client of the group gets none of A's queues, asked
    // directly or through the follower (forwarded), while a client of another group gets them all.
    let follower = (1..=3).find(|id| *id != old && *id != new).expect("a follower");
    let (leader_addr, follower_addr) = (cluster.node(new).client_addr.clone(), cluster.node(follower).client_addr.clone());
    assert_eq!(lock_call(&leader_addr, false, "cg_orderly_failover", "intruder", T).await, Vec::<i32>::new(), "A's leases survive");
    assert_eq!(lock_call(&follower_addr, false, "cg_orderly_failover", "intruder", T).await, Vec::<i32>::new(), "also via a follower");
    assert_eq!(lock_call(&follower_addr, false, "cg_other", "other", T).await, vec![0, 1, 2, 3], "other groups are independent");
    lock_call(&follower_addr, true, "cg_other", "other", T).await;
    let t0 = Instant::now();
    assert_eq!(lock_call(&leader_addr, false, "cg_other", "second", T).await, vec![0, 1, 2, 3], "released by the unlock");
    eprintln!("a lock of 4 queues on the new leader (one Raft entry) answered in {:?}", t0.elapsed());
    lock_call(&leader_addr, true, "cg_other", "second", T).await;
    eprintln!("killed leader node {old}; node {new} leads; starting consumer B");
    let joined_us = epoch.elapsed().as_micros();
    let b = start_consumer(&namesrv, "B", T, &log, epoch).await;
    for s in senders {
        s.await.expect("sender task");
    }
    wait_for("every key's messages to be processed, B taking some queues", &logs, Duration::from_secs(90), || {
        let l = log.lock().unwrap();
        let mut seen: BTreeMap<&str, std::collections::BTreeSet<u32>> = BTreeMap::new();
        for p in l.iter() {
            seen.entry(p.key.as_str()).or_default().insert(p.seq);
        }
        let complete = seen.values().filter(|s| s.len() == N as usize).count();
        let by_b = l.iter().filter(|p| p.consumer == "B").count();
        if complete == KEYS && by_b > 0 {
            Ok(())
        } else {
            Err(format!("{complete} of {KEYS} keys complete, {by_b} processed by B"))
        }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    producer.shutdown().await;
    cluster.start_node(old);

    let log = log.lock().unwrap().clone();
    // No two consumers' processing intervals of the same queue overlap.
    let mut by_queue: BTreeMap<i32, Vec<&Processed>> = BTreeMap::new();
    for p in &log {
        by_queue.entry(p.queue).or_default().push(p);
    }
    let mut handovers = 0;
    for (queue, ps) in &mut by_queue {
        ps.sort_by_key(|p| p.start);
        for w in ps.windows(2) {
            if w[0].consumer != w[1].consumer {
                handovers += 1;
                assert!(
                    w[1].start >= w[0].end,
                    "queue {queue}: {} started {}:{} at {} µs while {} was processing {}:{} ({}..{} µs); B joined at {joined_us} µs",
                    w[1].consumer,
                    w[1].key,
                    w[1].seq,
                    w[1].start,
                    w[0].consumer,
                    w[0].key,
                    w[0].seq,
                    w[0].start,
                    w[0].end
                );
            }
            // Also within one consumer an orderly queue is processed one message at a time.
            assert!(w[1].start >= w[0].end || w[0].consumer != w[1].consumer, "queue {queue}: {:?} overlaps {:?}", w[0], w[1]);
        }
    }
    assert!(handovers > 0, "no queue moved from A to B: the test saw no handover");
    // Per key: a message is processed only after every earlier message of its key (re-deliveries of already
    // processed ones are allowed).
    let mut by_key: BTreeMap<&str, Vec<&Processed>> = BTreeMap::new();
    for p in &log {
        by_key.entry(p.key.as_str()).or_default().push(p);
    }
    for (key, ps) in &mut by_key {
        ps.sort_by_key(|p| p.start);
        let mut next = 0;
        for p in ps.iter() {
            assert!(
                p.seq <= next,
                "{key}: {} processed {} before {next} (sequence {:?})",
                p.consumer,
                p.seq,
                ps.iter().map(|p| p.seq).collect::<Vec<_>>()
            );
            if p.seq == next {
                next += 1;
            }
        }
        assert_eq!(next, N, "{key}");
    }
    let by_b = log.iter().filter(|p| p.consumer == "B").count();
    eprintln!(
        "processed {} messages ({} by B, {} duplicates), {handovers} handovers between consumers",
        log.len(),
        by_b,
        log.len() - total
    );
}
