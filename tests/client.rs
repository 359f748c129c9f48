//! Multi-process tests of the Rust client (`raftmq-client`) against a real cluster: a nameserver and three
//! `raftmq broker` processes on loopback, started by `tests/common`.
//!
//! - `send_modes_batches_and_filters`: every send mode stores exactly what was sent (body, tags, keys, flag,
//!   user properties) where its result says; large bodies are compressed and arrive intact; oversized bodies
//!   are refused by the client, oversized batch members by the broker, storing nothing; tag subscriptions.
//! - `consumer_groups_rebalance_broadcast_retry_and_resume`: clustering consumers split the queues and take
//!   over from a consumer that leaves; broadcasting consumers each get everything; RECONSUME_LATER redelivers
//!   through the retry topic; a group resumes from its committed offsets.
//! - `ordered_messages_keep_per_key_order_across_a_leader_kill`: selector sends + an orderly consumer keep
//!   each key's order while the Raft leader is killed with SIGKILL and restarted, and the consumer, which holds
//!   its queues throughout, does not go back in them (re-deliveries stay within the duplicates send retries
//!   stored plus 5%).
//! - `steady_producer_loses_no_acknowledged_message_across_a_leader_kill`: every acknowledged send is stored
//!   at its acknowledged queue and offset; the longest gap between acknowledgements is reported.
//! - `reconsume_later_follows_the_retry_schedule_then_dead_letters`: the retry schedule with a scaled table.
//! - `transactions_commit_once_roll_back_never_and_unknown_is_resolved_by_check_back`: the transaction
//!   producer against the broker's half messages, END_TRANSACTION and check-back; `raftmq produce
//!   --transaction unknown` too.
//!
//! Each test starts its own cluster; the tests take turns (a process-wide lock) so that at most one cluster
//! runs at a time on small machines. `RUST_LOG=raftmq_client=debug` shows the client's logs; when a test
//! fails, the brokers' logs are copied to `$TMPDIR/raftmq-client-test-<test>-logs` before the cluster's
//! directory is removed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftmq_client::{
    ClientConfig, ClientError, ConcurrentListener, ConsumeConcurrentlyStatus, ConsumeContext, ConsumeFrom, ConsumeOrderlyStatus, Message,
    MessageExt, MessageModel, MessageQueue, MessageQueueSelector, Producer, ProducerOptions, PullConsumer, PullStatus, PushConsumer,
    PushConsumerOptions, SelectByHash, SendResult, SendStatus, TransactionListener, TransactionProducer, TransactionProducerOptions,
    TxnState,
};
use raftmq_remoting::message::sys_flag;

/// One cluster at a time: the tests kill leaders and measure stalls, which two clusters sharing two cores
/// would distort.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// RocketMQ's MESSAGE_ILLEGAL response code.
const MESSAGE_ILLEGAL: i32 = 13;

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
}

/// Copies the cluster's logs somewhere lasting when the test panics (the cluster's temp dir is removed on drop).
/// Declare it after the cluster so that it runs first.
struct LogKeeper {
    dir: PathBuf,
    test: &'static str,
}

impl LogKeeper {
    fn new(cluster: &Cluster, test: &'static str) -> LogKeeper {
        LogKeeper { dir: cluster.dir.path().to_path_buf(), test }
    }
}

impl Drop for LogKeeper {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let to = std::env::temp_dir().join(format!("raftmq-client-test-{}-logs", self.test));
        let _ = std::fs::create_dir_all(&to);
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log" || x == "toml") {
                    let _ = std::fs::copy(&p, to.join(e.file_name()));
                }
            }
        }
        eprintln!("cluster logs of {} copied to {}", self.test, to.display());
    }
}

fn cfg(cluster: &Cluster, instance: &str) -> ClientConfig {
    ClientConfig::new(&cluster.namesrv).with_instance_name(instance)
}

/// Polls `check` every 100 ms until it returns `Ok`; fails after `timeout` with its last `Err` (a description
/// of the state) and where the cluster's logs are.
async fn wait_for<T, F, Fut>(what: &str, logs: &Path, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let state = match check().await {
            Ok(v) => return v,
            Err(state) => state,
        };
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}: {state}; cluster logs in {}", logs.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `topic` with `queues` queues through `raftmq admin` and waits until the nameserver routes it.
async fn create_topic(cluster: &Cluster, topic: &str, queues: u32) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(["admin", "--namesrv", &cluster.namesrv, "topic", "create", topic, "--queues", &queues.to_string()])
        .output()
        .await
        .expect("run raftmq admin");
    assert!(out.status.success(), "topic create {topic} failed: {}", String::from_utf8_lossy(&out.stderr));
    wait_routed(cluster, topic).await;
}

async fn wait_routed(cluster: &Cluster, topic: &str) {
    wait_for(&format!("a route of {topic}"), cluster.dir.path(), Duration::from_secs(15), || async {
        match route(&cluster.namesrv, topic).await {
            Ok(Some(r)) if !r.queue_datas.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Every message of `queue` from offset 0 up to its max offset at call time, read with the pull consumer. Never
/// moves backwards (a lagging member may answer OFFSET_MOVED with a smaller offset) and keeps one message per offset.
async fn read_queue(pc: &PullConsumer, queue: &MessageQueue, logs: &Path) -> Vec<MessageExt> {
    let end = pc.max_offset(queue).await.expect("max offset");
    let mut out = BTreeMap::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while offset < end {
        match pc.pull(queue, "*", offset, 32).await {
            Ok(r) if r.status == PullStatus::Found || r.next_begin_offset > offset => {
                out.extend(r.messages.into_iter().map(|m| (m.queue_offset, m)));
                offset = offset.max(r.next_begin_offset);
            }
            Ok(r) => {
                eprintln!("pull {queue:?} at {offset}: {:?}, next {}", r.status, r.next_begin_offset);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                eprintln!("pull {queue:?} at {offset} failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(Instant::now() < deadline, "reading {queue:?} stalled at {offset} of {end}; cluster logs in {}", logs.display());
    }
    out.into_values().collect()
}

/// Every message of every queue of `topic`.
async fn read_topic(pc: &PullConsumer, topic: &str, logs: &Path) -> Vec<MessageExt> {
    let queues = pc.fetch_subscribe_queues(topic).await.expect("subscribe queues");
    let mut out = Vec::new();
    for q in &queues {
        out.extend(read_queue(pc, q, logs).await);
    }
    out
}

async fn max_offsets(pc: &PullConsumer, topic: &str) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for q in pc.fetch_subscribe_queues(topic).await.expect("subscribe queues") {
        out.insert(q.queue_id, pc.max_offset(&q).await.expect("max offset"));
    }
    out
}

type Deliveries = Arc<Mutex<Vec<MessageExt>>>;

/// A concurrent listener that records every delivery and acknowledges it.
fn recorder(log: &Deliveries) -> impl ConcurrentListener {
    let log = Arc::clone(log);
    move |msgs: Vec<MessageExt>, _ctx: ConsumeContext| {
        log.lock().unwrap().extend(msgs);
        std::future::ready(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

fn ids_of(log: &Deliveries) -> BTreeSet<String> {
    log.lock().unwrap().iter().map(|m| m.msg_id.clone()).collect()
}

/// Sends `n` messages to `topic` (round-robin), returning their message ids.
async fn produce(producer: &Producer, topic: &str, prefix: &str, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let r = producer.send(Message::new(topic, format!("{prefix}-{i}"))).await.unwrap_or_else(|e| panic!("send {prefix}-{i}: {e}"));
        assert_eq!(r.status, SendStatus::SendOk);
        ids.insert(r.msg_id);
    }
    ids
}

fn main_queues(c: &PushConsumer, topic: &str) -> BTreeSet<MessageQueue> {
    c.assigned_queues().into_iter().filter(|q| q.topic == topic).collect()
}

// ---- 1 ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_modes_batches_and_filters() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let cluster = Cluster::start(3).await;
    let _keeper = LogKeeper::new(&cluster, "send_modes");
    let logs = cluster.dir.path();
    let producer = Producer::start(cfg(&cluster, "producer"), ProducerOptions::new("pg_send")).await.expect("producer");
    let reader = PullConsumer::start(cfg(&cluster, "reader"), "cg_reader").await.expect("pull consumer");

    // -- Every send mode stores exactly what was sent, where the result says.
    const T: &str = "T_send_modes";
    let msg = |mode: &str, flag: i32| {
        Message::new(T, format!("body-{mode}"))
            .with_tags(format!("tag-{mode}"))
            .with_keys([format!("k1-{mode}"), format!("k2-{mode}")])
            .with_flag(flag)
            .with_property("mode", mode)
            .with_property("user-prop", format!("v-{mode}"))
    };
    // (mode, flag, result); oneway sends have none.
    let mut sent: Vec<(String, i32, Option<SendResult>)> = Vec::new();
    let r = producer.send(msg("sync", 1)).await.expect("sync send");
    sent.push(("sync".into(), 1, Some(r)));
    let r = producer.send_async(msg("async", 2)).await.expect("async send");
    sent.push(("async".into(), 2, Some(r)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer.send_with_callback(msg("callback", 3), move |r| {
        let _ = tx.send(r);
    });
    let r = tokio::time::timeout(Duration::from_secs(10), rx).await.expect("callback called").expect("callback dropped");
    let r = r.expect("callback send");
    sent.push(("callback".into(), 3, Some(r)));
    producer.send_oneway(msg("oneway", 4)).await.expect("oneway send");
    sent.push(("oneway".into(), 4, None));
    let queues = producer.fetch_publish_queues(T).await.expect("publish queues");
    assert_eq!(queues.len(), 4, "{queues:?}");
    let r = producer.send_to_queue(msg("to_queue", 5), queues[2].clone()).await.expect("send to queue");
    assert_eq!(r.queue, queues[2], "send_to_queue went elsewhere");
    sent.push(("to_queue".into(), 5, Some(r)));
    let selected = msg("selector", 6);
    let want = queues[<SelectByHash as MessageQueueSelector<str>>::select(&SelectByHash, &queues, &selected, "order-42")].clone();
    let r = producer.send_with_selector(selected, &SelectByHash, "order-42").await.expect("selector send");
    assert_eq!(r.queue, want, "the selector's queue was not used");
    sent.push(("selector".into(), 6, Some(r)));
    let batch = producer.send_batch((0..3).map(|i| msg(&format!("batch{i}"), 10 + i)).collect()).await.expect("batch send");
    let batch_ids: Vec<String> = batch.msg_id.split(',').map(String::from).collect();
    assert_eq!(batch_ids.len(), 3, "batch result ids: {}", batch.msg_id);
    for (i, id) in batch_ids.iter().enumerate() {
        let r = SendResult { msg_id: id.clone(), queue_offset: batch.queue_offset + i as i64, ..batch.clone() };
        sent.push((format!("batch{i}"), 10 + i as i32, Some(r)));
    }
    // A compressible body over the 4 KiB compression threshold.
    let big_body: Vec<u8> = (0..100_000usize).map(|i| b"raftmq compresses this body; "[i % 29]).collect();
    let big = producer.send(Message::new(T, big_body.clone()).with_tags("big")).await.expect("large send");

    let expected = sent.len() + 1;
    let stored = wait_for("every sent message to be readable", logs, Duration::from_secs(15), || async {
        let all = read_topic(&reader, T, logs).await;
        if all.len() >= expected {
            Ok(all)
        } else {
            Err(format!("{} of {expected} messages stored", all.len()))
        }
    })
    .await;
    assert_eq!(stored.len(), expected, "more messages stored than sent: {:?}", stored.iter().map(|m| &m.body).collect::<Vec<_>>());
    for (mode, flag, result) in &sent {
        let body = format!("body-{mode}");
        let m = stored.iter().find(|m| m.body == body.as_bytes()).unwrap_or_else(|| panic!("{mode}: message not stored"));
        assert_eq!(m.topic, T);
        assert_eq!(m.tags(), Some(format!("tag-{mode}").as_str()), "{mode}: tags");
        assert_eq!(m.keys(), vec![format!("k1-{mode}"), format!("k2-{mode}")], "{mode}: keys");
        assert_eq!(m.flag, *flag, "{mode}: flag");
        assert_eq!(m.property("mode"), Some(mode.as_str()), "{mode}: property");
        assert_eq!(m.property("user-prop"), Some(format!("v-{mode}").as_str()), "{mode}: property");
        if let Some(r) = result {
            assert_eq!(r.status, SendStatus::SendOk, "{mode}");
            assert_eq!(m.msg_id, r.msg_id, "{mode}: message id");
            assert_eq!((m.queue_id, m.queue_offset), (r.queue.queue_id, r.queue_offset), "{mode}: stored elsewhere than acknowledged");
        }
    }
    // The batch is contiguous in one queue, in order.
    for (i, id) in batch_ids.iter().enumerate() {
        let m = stored.iter().find(|m| &m.msg_id == id).expect("batch message");
        assert_eq!((m.queue_id, m.queue_offset), (batch.queue.queue_id, batch.queue_offset + i as i64), "batch message {i} not in place");
    }
    let m = stored.iter().find(|m| m.msg_id == big.msg_id).expect("large message stored");
    assert_eq!(m.body.len(), big_body.len());
    assert!(m.body == big_body, "large body corrupted");
    assert!(m.sys_flag & sys_flag::COMPRESSED != 0, "large body was not compressed (sysFlag {:#x})", m.sys_flag);
    assert!((m.store_size as usize) < big_body.len() / 4, "stored size {} of a compressible {} byte body", m.store_size, big_body.len());

    // -- A body over 4 MiB is refused by the client before sending.
    let before = max_offsets(&reader, T).await;
    let err = producer.send(Message::new(T, vec![b'x'; (4 << 20) + 1])).await.expect_err("a 4 MiB + 1 body must be refused");
    assert!(matches!(err, ClientError::InvalidMessage(_)), "expected InvalidMessage, got {err:?}");
    // -- A batch whose member is over the broker's 4 MiB limit stores none of its messages.
    let mut opts = ProducerOptions::new("pg_big_batch");
    opts.max_message_size = 8 << 20;
    let lenient = Producer::start(cfg(&cluster, "producer"), opts).await.expect("second producer");
    let oversized = vec![Message::new(T, "before-big"), Message::new(T, vec![b'y'; (4 << 20) + 1]), Message::new(T, "after-big")];
    let err = lenient.send_batch(oversized).await.expect_err("the broker must refuse the batch");
    assert_eq!(err.response_code(), Some(MESSAGE_ILLEGAL), "expected the broker's MESSAGE_ILLEGAL, got {err:?}");
    assert!(err.is_definite(), "a refusal is definite: {err:?}");
    // A following send lands right after the messages stored before: nothing of the refused batch is there.
    let marker = producer.send(Message::new(T, "marker")).await.expect("send after refused batch");
    let after = max_offsets(&reader, T).await;
    let mut want = before.clone();
    *want.get_mut(&marker.queue.queue_id).expect("queue") += 1;
    assert_eq!(after, want, "queue max offsets changed by refused sends (before {before:?})");
    assert_eq!(marker.queue_offset, before[&marker.queue.queue_id]);
    let all = read_topic(&reader, T, logs).await;
    assert!(!all.iter().any(|m| m.body == "before-big" || m.body == "after-big"), "a message of the refused batch was stored");
    lenient.shutdown().await;

    // -- Tag filtering: a consumer of "A || B" gets the A and B messages, never C.
    const TT: &str = "T_tags";
    producer.send(Message::new(TT, "create").with_tags("C")).await.expect("create tag topic");
    wait_routed(&cluster, TT).await;
    let tag_queues = producer.fetch_publish_queues(TT).await.expect("tag topic queues");
    let mut wanted = BTreeSet::new();
    for round in 0..5 {
        for q in &tag_queues {
            for tag in ["C", "A", "B"] {
                let m = Message::new(TT, format!("{tag}-{round}-{}", q.queue_id)).with_tags(tag);
                let r = producer.send_to_queue(m, q.clone()).await.expect("tagged send");
                if tag != "C" {
                    wanted.insert(r.msg_id);
                }
            }
        }
    }
    let got: Deliveries = Arc::default();
    let opts = PushConsumerOptions::new("cg_tags").subscribe(TT, "A || B").with_consume_from(ConsumeFrom::FirstOffset);
    let consumer = PushConsumer::start_concurrently(cfg(&cluster, "tags"), opts, recorder(&got)).await.expect("tag consumer");
    wait_for("every A and B message", logs, Duration::from_secs(20), || async {
        let ids = ids_of(&got);
        if ids.is_superset(&wanted) {
            Ok(())
        } else {
            Err(format!("{} of {} received", ids.intersection(&wanted).count(), wanted.len()))
        }
    })
    .await;
    // Once the group's offsets reach the end of every queue, every C message was seen and skipped.
    let offsets = PullConsumer::start(cfg(&cluster, "reader"), "cg_tags").await.expect("offset reader");
    let ends = max_offsets(&reader, TT).await;
    wait_for("the tag consumer's offsets to reach the queue ends", logs, Duration::from_secs(20), || async {
        consumer.persist_offsets().await;
        let mut committed = BTreeMap::new();
        for q in &tag_queues {
            committed.insert(q.queue_id, offsets.fetch_consume_offset(q).await.ok().flatten().unwrap_or(-1));
        }
        if committed == ends {
            Ok(())
        } else {
            Err(format!("committed {committed:?}, ends {ends:?}"))
        }
    })
    .await;
    consumer.shutdown().await;
    let got = got.lock().unwrap().clone();
    let bad: Vec<String> = got.iter().filter(|m| !matches!(m.tags(), Some("A" | "B"))).map(|m| format!("{:?}", m.tags())).collect();
    assert!(bad.is_empty(), "the consumer of \"A || B\" received tags {bad:?}");
    assert_eq!(got.iter().map(|m| m.msg_id.clone()).collect::<BTreeSet<_>>(), wanted);
    offsets.shutdown().await;
    reader.shutdown().await;
    producer.shutdown().await;
}

// ---- 2 ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_groups_rebalance_broadcast_retry_and_resume() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let cluster = Cluster::start(3).await;
    let _keeper = LogKeeper::new(&cluster, "consumer_groups");
    let logs = cluster.dir.path();
    let producer = Producer::start(cfg(&cluster, "producer"), ProducerOptions::new("pg_groups")).await.expect("producer");

    // -- Clustering: two consumers split the queues without overlap; every message is consumed.
    const TC: &str = "T_clustering";
    create_topic(&cluster, TC, 4).await;
    let all_queues: BTreeSet<MessageQueue> = producer.fetch_publish_queues(TC).await.expect("queues").into_iter().collect();
    assert_eq!(all_queues.len(), 4);
    let (log1, log2): (Deliveries, Deliveries) = Default::default();
    let opts = PushConsumerOptions::new("cg_split").subscribe(TC, "*").with_consume_from(ConsumeFrom::FirstOffset);
    let c1 = PushConsumer::start_concurrently(cfg(&cluster, "c1"), opts.clone(), recorder(&log1)).await.expect("c1");
    let c2 = PushConsumer::start_concurrently(cfg(&cluster, "c2"), opts, recorder(&log2)).await.expect("c2");
    let (q1, q2) = wait_for("the two consumers to split the queues", logs, Duration::from_secs(20), || async {
        let (a, b) = (main_queues(&c1, TC), main_queues(&c2, TC));
        let retry_overlap = c1.assigned_queues().iter().any(|q| q.topic != TC && c2.assigned_queues().contains(q));
        let union: BTreeSet<MessageQueue> = a.union(&b).cloned().collect();
        if a.is_disjoint(&b) && !a.is_empty() && !b.is_empty() && union == all_queues && !retry_overlap {
            Ok((a, b))
        } else {
            Err(format!("c1 {:?}, c2 {:?}", c1.assigned_queues(), c2.assigned_queues()))
        }
    })
    .await;
    let sent = produce(&producer, TC, "split", 200).await;
    wait_for("every message consumed by the group", logs, Duration::from_secs(20), || async {
        let got: BTreeSet<String> = ids_of(&log1).union(&ids_of(&log2)).cloned().collect();
        if got.is_superset(&sent) {
            Ok(())
        } else {
            Err(format!("{} of {} consumed", got.intersection(&sent).count(), sent.len()))
        }
    })
    .await;
    for (name, log, mine) in [("c1", &log1, &q1), ("c2", &log2, &q2)] {
        let log = log.lock().unwrap();
        assert!(!log.is_empty(), "{name} consumed nothing");
        let foreign: Vec<i32> = log.iter().filter(|m| !mine.iter().any(|q| q.queue_id == m.queue_id)).map(|m| m.queue_id).collect();
        assert!(foreign.is_empty(), "{name} (queues {mine:?}) consumed messages of queues {foreign:?} at steady state");
    }
    // -- One leaves: the other takes over every queue and gets what is produced afterwards.
    c2.shutdown().await;
    wait_for("c1 to take over every queue", logs, Duration::from_secs(20), || async {
        let a = main_queues(&c1, TC);
        if a == all_queues {
            Ok(())
        } else {
            Err(format!("c1 holds {a:?}"))
        }
    })
    .await;
    let later = produce(&producer, TC, "after-leave", 100).await;
    wait_for("c1 to consume what was produced after c2 left", logs, Duration::from_secs(20), || async {
        let got = ids_of(&log1);
        if got.is_superset(&later) {
            Ok(())
        } else {
            Err(format!("{} of {} consumed", got.intersection(&later).count(), later.len()))
        }
    })
    .await;
    assert!(ids_of(&log2).is_disjoint(&later), "c2 consumed after its shutdown");
    c1.shutdown().await;

    // -- Broadcasting: every consumer gets every message.
    const TB: &str = "T_broadcast";
    create_topic(&cluster, TB, 4).await;
    let offsets_dir = tempfile::tempdir().expect("tempdir");
    let mut opts = PushConsumerOptions::new("cg_broadcast")
        .subscribe(TB, "*")
        .with_model(MessageModel::Broadcasting)
        .with_consume_from(ConsumeFrom::FirstOffset);
    opts.broadcast_offset_dir = Some(offsets_dir.path().to_path_buf());
    let (logb1, logb2): (Deliveries, Deliveries) = Default::default();
    let b1 = PushConsumer::start_concurrently(cfg(&cluster, "b1"), opts.clone(), recorder(&logb1)).await.expect("b1");
    let b2 = PushConsumer::start_concurrently(cfg(&cluster, "b2"), opts, recorder(&logb2)).await.expect("b2");
    let sent = produce(&producer, TB, "broadcast", 100).await;
    wait_for("both broadcasting consumers to get every message", logs, Duration::from_secs(20), || async {
        let (g1, g2) = (ids_of(&logb1), ids_of(&logb2));
        if g1.is_superset(&sent) && g2.is_superset(&sent) {
            Ok(())
        } else {
            Err(format!("b1 {} and b2 {} of {}", g1.intersection(&sent).count(), g2.intersection(&sent).count(), sent.len()))
        }
    })
    .await;
    assert_eq!(main_queues(&b1, TB).len(), 4, "a broadcasting consumer reads every queue");
    assert_eq!(main_queues(&b2, TB).len(), 4, "a broadcasting consumer reads every queue");
    b1.shutdown().await;
    b2.shutdown().await;
    assert!(offsets_dir.path().read_dir().map(|mut d| d.next().is_some()).unwrap_or(false), "no broadcasting offsets were written");

    // -- RECONSUME_LATER: the message comes back through the retry topic.
    const TR: &str = "T_retry";
    create_topic(&cluster, TR, 4).await;
    type Seen = Arc<Mutex<HashMap<String, Vec<MessageExt>>>>;
    let seen: Seen = Arc::default();
    let listener = {
        let seen = Arc::clone(&seen);
        move |msgs: Vec<MessageExt>, _ctx: ConsumeContext| {
            let mut first = false;
            let mut seen = seen.lock().unwrap();
            for m in msgs {
                let e = seen.entry(m.msg_id.clone()).or_default();
                first |= e.is_empty();
                e.push(m);
            }
            std::future::ready(if first { ConsumeConcurrentlyStatus::ReconsumeLater } else { ConsumeConcurrentlyStatus::ConsumeSuccess })
        }
    };
    let opts = PushConsumerOptions::new("cg_retry").subscribe(TR, "*").with_consume_from(ConsumeFrom::FirstOffset);
    let retrying = PushConsumer::start_concurrently(cfg(&cluster, "r1"), opts, listener).await.expect("retry consumer");
    let sent = produce(&producer, TR, "retry", 10).await;
    let t0 = Instant::now();
    wait_for("every message to be redelivered after RECONSUME_LATER", logs, Duration::from_secs(40), || async {
        let seen = seen.lock().unwrap();
        let redelivered = sent.iter().filter(|id| seen.get(*id).is_some_and(|d| d.len() >= 2)).count();
        if redelivered == sent.len() {
            Ok(())
        } else {
            Err(format!("{redelivered} of {} redelivered; consumer holds {:?}", sent.len(), retrying.assigned_queues()))
        }
    })
    .await;
    eprintln!("RECONSUME_LATER redelivery of all messages took {:?}", t0.elapsed());
    {
        let seen = seen.lock().unwrap();
        for id in &sent {
            let d = &seen[id];
            assert_eq!(d[0].reconsume_times, 0, "first delivery of {id}");
            let again = &d[1];
            assert!(again.reconsume_times >= 1, "redelivery of {id} has reconsume_times {}", again.reconsume_times);
            assert_eq!(again.topic, TR, "redelivery of {id} names topic {}", again.topic);
            assert_eq!(again.body, d[0].body, "redelivery of {id} changed the body");
        }
    }
    retrying.shutdown().await;

    // -- Offsets: a restarted group resumes where it stopped.
    const TO: &str = "T_resume";
    create_topic(&cluster, TO, 4).await;
    let opts = PushConsumerOptions::new("cg_resume").subscribe(TO, "*").with_consume_from(ConsumeFrom::FirstOffset);
    let first_log: Deliveries = Arc::default();
    let first = PushConsumer::start_concurrently(cfg(&cluster, "s1"), opts.clone(), recorder(&first_log)).await.expect("s1");
    let old = produce(&producer, TO, "old", 60).await;
    wait_for("the first consumer to consume the first messages", logs, Duration::from_secs(20), || async {
        let got = ids_of(&first_log);
        if got.is_superset(&old) {
            Ok(())
        } else {
            Err(format!("{} of {}", got.intersection(&old).count(), old.len()))
        }
    })
    .await;
    first.shutdown().await;
    let new = produce(&producer, TO, "new", 40).await;
    let second_log: Deliveries = Arc::default();
    let second = PushConsumer::start_concurrently(cfg(&cluster, "s2"), opts, recorder(&second_log)).await.expect("s2");
    wait_for("the restarted group to consume the new messages", logs, Duration::from_secs(20), || async {
        let got = ids_of(&second_log);
        if got.is_superset(&new) {
            Ok(())
        } else {
            Err(format!("{} of {}", got.intersection(&new).count(), new.len()))
        }
    })
    .await;
    second.shutdown().await;
    let again = ids_of(&second_log).intersection(&old).count();
    eprintln!("resumed group redelivered {again} of {} already consumed messages", old.len());
    assert!(again <= 4, "the resumed group consumed {again} of the {} messages consumed before its restart", old.len());
    assert!(ids_of(&first_log).is_disjoint(&new), "the first consumer got messages after its shutdown");
    producer.shutdown().await;
}

// ---- 3 ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_messages_keep_per_key_order_across_a_leader_kill() {
    const T: &str = "T_ordered";
    const KEYS: usize = 8;
    const N: u32 = 150;
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut cluster = Cluster::start(3).await;
    let _keeper = LogKeeper::new(&cluster, "ordered");
    let logs = cluster.dir.path().to_path_buf();
    create_topic(&cluster, T, 4).await;

    // key -> sequence numbers in delivery order.
    let delivered: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
    let listener = {
        let delivered = Arc::clone(&delivered);
        move |msgs: Vec<MessageExt>, _ctx: ConsumeContext| {
            let mut d = delivered.lock().unwrap();
            for m in msgs {
                let key = m.keys().first().map(|k| k.to_string()).unwrap_or_default();
                let seq: u32 = m.property("seq").and_then(|s| s.parse().ok()).expect("seq property");
                d.entry(key).or_default().push(seq);
            }
            std::future::ready(ConsumeOrderlyStatus::Success)
        }
    };
    let opts = PushConsumerOptions::new("cg_ordered").subscribe(T, "*").with_consume_from(ConsumeFrom::FirstOffset);
    let consumer = PushConsumer::start_orderly(cfg(&cluster, "orderly"), opts, listener).await.expect("orderly consumer");
    let producer = Producer::start(cfg(&cluster, "producer"), ProducerOptions::new("pg_ordered")).await.expect("producer");

    let acked = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for k in 0..KEYS {
        let (producer, acked, failed) = (producer.clone(), Arc::clone(&acked), Arc::clone(&failed));
        senders.push(tokio::spawn(async move {
            let key = format!("key-{k}");
            let mut queues = BTreeSet::new();
            for seq in 0..N {
                let deadline = Instant::now() + Duration::from_secs(30);
                let msg = Message::new(T, format!("{key}:{seq}")).with_keys([key.as_str()]).with_property("seq", seq.to_string());
                // The same message again until one attempt is acknowledged: order is kept, duplicates are possible.
                loop {
                    match producer.send_with_selector(msg.clone(), &SelectByHash, key.as_str()).await {
                        Ok(r) => {
                            queues.insert(r.queue.queue_id);
                            break;
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            assert!(Instant::now() < deadline, "{key}: send of {seq} kept failing: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (key, queues)
        }));
    }
    let total = KEYS * N as usize;
    let progress = |share: usize| {
        let acked = Arc::clone(&acked);
        let logs = logs.clone();
        async move {
            wait_for(&format!("{share}/3 of the ordered sends"), &logs, Duration::from_secs(40), || async {
                let n = acked.load(Ordering::Relaxed);
                if n * 3 >= total * share {
                    Ok(())
                } else {
                    Err(format!("{n} of {total} acknowledged"))
                }
            })
            .await
        }
    };
    progress(1).await;
    let old = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    cluster.kill(old);
    eprintln!("killed leader node {old} after {} of {total} ordered sends", acked.load(Ordering::Relaxed));
    let new = cluster.leader(Duration::from_secs(20)).await;
    assert_ne!(new, old);
    progress(2).await;
    cluster.start_node(old);
    eprintln!("restarted node {old} after {} of {total} ordered sends", acked.load(Ordering::Relaxed));
    for s in senders {
        let (key, queues) = s.await.expect("sender task");
        assert_eq!(queues.len(), 1, "{key} was sent to queues {queues:?}; one key must stay on one queue");
    }
    eprintln!("ordered sends: {total} acknowledged, {} failed attempts retried", failed.load(Ordering::Relaxed));

    wait_for("every key's sequence to be consumed", &logs, Duration::from_secs(40), || async {
        let d = delivered.lock().unwrap();
        let distinct = |k: usize| d.get(&format!("key-{k}")).map_or(0, |s| s.iter().collect::<HashSet<_>>().len());
        let complete = (0..KEYS).filter(|k| distinct(*k) == N as usize).count();
        if complete == KEYS {
            Ok(())
        } else {
            let counts: Vec<usize> = d.values().map(|s| s.iter().collect::<HashSet<_>>().len()).collect();
            Err(format!("{complete} of {KEYS} keys complete; distinct per key {counts:?}; queues {:?}", consumer.assigned_queues()))
        }
    })
    .await;
    consumer.shutdown().await;
    producer.shutdown().await;
    let delivered = delivered.lock().unwrap().clone();
    let mut duplicates = 0;
    for (key, seqs) in &delivered {
        let mut next = 0u32;
        for (i, &s) in seqs.iter().enumerate() {
            if s == next {
                next += 1;
            } else {
                assert!(s < next, "{key}: {s} delivered at position {i} before {next}; deliveries {seqs:?}");
                duplicates += 1;
            }
        }
        assert_eq!(next, N, "{key}: deliveries {seqs:?}");
    }
    // Re-deliveries beyond the duplicates the producer's retries stored mean the consumer went back in a queue
    // it never lost: at-least-once permits that, but a consumer holding its queues throughout has no reason to.
    let reader = PullConsumer::start(cfg(&cluster, "reader"), "cg_ordered_reader").await.expect("pull consumer");
    let stored = read_topic(&reader, T, &logs).await;
    reader.shutdown().await;
    let stored_duplicates = stored.len() - stored.iter().map(|m| &m.body).collect::<HashSet<_>>().len();
    eprintln!("ordered: every key in order; {duplicates} re-deliveries, {stored_duplicates} duplicates stored by send retries");
    assert!(
        duplicates <= stored_duplicates + total / 20,
        "the orderly consumer re-delivered {duplicates} messages of {total} ({stored_duplicates} stored twice) although it kept its \
         queues: it rewound (look for \"pull offset illegal; correcting\" with RUST_LOG=raftmq_client=warn)"
    );
}

// ---- 4 ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_producer_loses_no_acknowledged_message_across_a_leader_kill() {
    const T: &str = "T_steady";
    const RUN: Duration = Duration::from_secs(12);
    const KILL_AFTER: Duration = Duration::from_secs(4);
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut cluster = Cluster::start(3).await;
    let _keeper = LogKeeper::new(&cluster, "steady");
    let logs = cluster.dir.path().to_path_buf();
    let producer = Producer::start(cfg(&cluster, "producer"), ProducerOptions::new("pg_steady")).await.expect("producer");
    producer.send(Message::new(T, "create")).await.expect("create topic");
    wait_routed(&cluster, T).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sender = steady_sender(producer.clone(), T, "steady", Arc::clone(&stop));
    let started = Instant::now();
    tokio::time::sleep(KILL_AFTER).await;
    let old = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    cluster.kill(old);
    let killed_at = Instant::now();
    let new = cluster.leader(Duration::from_secs(20)).await;
    assert_ne!(new, old);
    eprintln!("killed leader {old} at {:?}; node {new} leads after {:?}", killed_at - started, killed_at.elapsed());
    tokio::time::sleep(RUN.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let (acks, failures) = sender.await.expect("sender task");
    producer.shutdown().await;

    let mut times: Vec<Instant> = acks.iter().map(|a| a.3).collect();
    times.sort();
    let (stall, stall_end) = times.windows(2).map(|w| (w[1] - w[0], w[1])).max().unwrap_or((Duration::ZERO, started));
    let after_kill = acks.iter().filter(|a| a.3 > killed_at).count();
    let report = format!(
        "longest send stall: {stall:?} (ending {:?} after the kill); {} acknowledged sends, {after_kill} after the kill, {} failed",
        stall_end.saturating_duration_since(killed_at),
        acks.len(),
        failures.len()
    );
    eprintln!("{report}");
    for f in failures.iter().take(5) {
        eprintln!("  failed send: {f}");
    }
    if let Some(path) = std::env::var_os("RAFTMQ_STALL_OUT") {
        std::fs::write(&path, format!("{}\n{report}\n", stall.as_millis())).expect("write RAFTMQ_STALL_OUT");
    }
    assert!(after_kill >= 20, "the producer did not recover after the leader kill: {report}");

    // Every acknowledged message is stored at its acknowledged queue and offset.
    cluster.start_node(old);
    cluster.leader(Duration::from_secs(20)).await;
    cluster.wait_registered_leader(Duration::from_secs(20)).await;
    let reader = PullConsumer::start(cfg(&cluster, "reader"), "cg_steady_reader").await.expect("pull consumer");
    let mut stored: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for m in read_topic(&reader, T, &logs).await {
        stored.insert((m.queue_id, m.queue_offset), String::from_utf8_lossy(&m.body).into_owned());
    }
    let mut missing = Vec::new();
    for (q, off, body, _) in &acks {
        if stored.get(&(*q, *off)) != Some(body) {
            missing.push(format!("{body} acknowledged at {q}/{off}, stored there: {:?}", stored.get(&(*q, *off))));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages missing or moved: {:?}",
        missing.len(),
        acks.len(),
        &missing[..missing.len().min(10)]
    );
    reader.shutdown().await;
}

/// The retry schedule end to end with the native push consumer and a scaled delay table (levels 3, 4, 5 =
/// 1 s, 2 s, 3 s): a listener that always answers RECONSUME_LATER sees its message come back after ≈1 s,
/// ≈2 s and ≈3 s (level 3 + reconsumeTimes, never sooner), and with `max_reconsume_times` = 3 the fourth
/// RECONSUME_LATER puts it into `%DLQ%<group>` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconsume_later_follows_the_retry_schedule_then_dead_letters() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut cluster = Cluster::prepare(3, "messageDelayLevel = \"100ms 200ms 1s 2s 3s\"\n");
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let _keeper = LogKeeper::new(&cluster, "retry_schedule");
    let logs = cluster.dir.path().to_path_buf();
    wait_for("the scaled delay table", &logs, Duration::from_secs(20), || async {
        let l = cluster.leader(Duration::from_secs(20)).await;
        let s = node_status(&cluster.node(l).client_addr).await.unwrap_or_default();
        if s["schedule"]["delayLevels"] == "100ms 200ms 1s 2s 3s" {
            Ok(())
        } else {
            Err(s["schedule"].to_string())
        }
    })
    .await;
    const T: &str = "T_retry_schedule";
    create_topic(&cluster, T, 1).await;
    let producer = Producer::start(cfg(&cluster, "producer"), ProducerOptions::new("pg_retry_schedule")).await.expect("producer");
    let deliveries: Arc<Mutex<Vec<(Instant, i32)>>> = Arc::default();
    let listener = {
        let deliveries = Arc::clone(&deliveries);
        move |msgs: Vec<MessageExt>, _ctx: ConsumeContext| {
            let mut d = deliveries.lock().unwrap();
            for m in msgs {
                d.push((Instant::now(), m.reconsume_times));
            }
            std::future::ready(ConsumeConcurrentlyStatus::ReconsumeLater)
        }
    };
    let mut opts = PushConsumerOptions::new("cg_retry_schedule").subscribe(T, "*").with_consume_from(ConsumeFrom::FirstOffset);
    opts.max_reconsume_times = Some(3);
    let consumer = PushConsumer::start_concurrently(cfg(&cluster, "rs"), opts, listener).await.expect("consumer");
    producer.send(Message::new(T, "fails every time")).await.expect("send");
    let got = wait_for("four deliveries", &logs, Duration::from_secs(40), || async {
        let d = deliveries.lock().unwrap();
        if d.len() >= 4 {
            Ok(d.clone())
        } else {
            Err(format!("{} deliveries so far", d.len()))
        }
    })
    .await;
    for (i, want_ms) in [(1, 1000u128), (2, 2000), (3, 3000)] {
        let gap = got[i].0.duration_since(got[i - 1].0).as_millis();
        assert!(gap >= want_ms - 50, "retry {i} came {gap} ms after the previous delivery, before level {}'s {want_ms} ms", 2 + i);
        assert!(gap < want_ms + 5000, "retry {i} came {gap} ms after the previous delivery");
        assert_eq!(got[i].1, i as i32, "reconsume_times of retry {i}");
    }
    // The fourth RECONSUME_LATER dead-letters it; nothing more is delivered.
    let pc = PullConsumer::start(cfg(&cluster, "dlq-reader"), "dlq_reader").await.expect("pull consumer");
    let dlq = wait_for("the message in the DLQ", &logs, Duration::from_secs(20), || async {
        let queues = pc.fetch_subscribe_queues("%DLQ%cg_retry_schedule").await.map_err(|e| e.to_string())?;
        let mut all = Vec::new();
        for q in &queues {
            all.extend(read_queue(&pc, q, &logs).await);
        }
        if all.is_empty() {
            Err("empty".into())
        } else {
            Ok(all)
        }
    })
    .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(&dlq[0].body[..], b"fails every time");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(deliveries.lock().unwrap().len(), 4, "delivered again after the DLQ");
    consumer.shutdown().await;
    pc.shutdown().await;
    producer.shutdown().await;
}

// ---- transactions ----------------------------------------------------------------------------------------

/// The application side of `transactions_commit_once_roll_back_never_and_unknown_is_resolved_by_check_back`,
/// with durable state as `check_local` needs it: `execute_local` records and returns its argument;
/// `check_local` answers commit for a transaction recorded as unknown (the write happened, the sender could
/// not tell in time), the recorded outcome for the others, and rollback for one never recorded.
#[derive(Default)]
struct TxnLedger {
    outcomes: Mutex<HashMap<String, TxnState>>,
    checked: Mutex<Vec<String>>,
}

impl TransactionListener for TxnLedger {
    type Arg = TxnState;

    fn execute_local(&self, msg: &Message, state: &TxnState) -> TxnState {
        self.outcomes.lock().unwrap().insert(msg.msg_id().unwrap_or_default().to_string(), *state);
        *state
    }

    fn check_local(&self, msg: &MessageExt) -> TxnState {
        self.checked.lock().unwrap().push(msg.msg_id.clone());
        match self.outcomes.lock().unwrap().get(&msg.msg_id) {
            Some(TxnState::Unknown) => TxnState::Commit,
            Some(s) => *s,
            None => TxnState::Rollback,
        }
    }
}

/// Transactions end to end against a real broker group with a short `transactionTimeOut` and
/// `transactionCheckInterval` (1 s each): a committed transaction's message is visible exactly once, a
/// rolled-back one never, and an unknown one is committed by the broker's check-back (`check_local`), once.
/// Then `raftmq produce --transaction unknown` does the same from the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_commit_once_roll_back_never_and_unknown_is_resolved_by_check_back() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut cluster = Cluster::prepare(3, "transactionTimeOut = 1000\ntransactionCheckInterval = 1000\ntransactionCheckMax = 15\n");
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let _keeper = LogKeeper::new(&cluster, "transactions");
    let logs = cluster.dir.path().to_path_buf();
    const T: &str = "T_transactions";
    create_topic(&cluster, T, 2).await;
    let opts = TransactionProducerOptions::new("pg_transactions");
    let producer = TransactionProducer::start(cfg(&cluster, "txn-producer"), opts, TxnLedger::default()).await.expect("producer");
    let mut ids = BTreeMap::new();
    for (name, state) in [("commit", TxnState::Commit), ("rollback", TxnState::Rollback), ("unknown", TxnState::Unknown)] {
        let msg = Message::new(T, name).with_tags("txn").with_keys([name]);
        let r = producer.send_in_transaction(msg, &state).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((r.send.status, r.local_state, r.end_sent), (SendStatus::SendOk, state, true), "{name}: {r}");
        assert_eq!(r.transaction_id, r.send.msg_id, "{name}");
        ids.insert(name, r.transaction_id);
    }
    let pc = PullConsumer::start(cfg(&cluster, "txn-reader"), "txn_reader").await.expect("pull consumer");
    let visible = |msgs: &[MessageExt]| -> BTreeMap<String, usize> {
        let mut by_body = BTreeMap::new();
        for m in msgs {
            *by_body.entry(String::from_utf8_lossy(&m.body).into_owned()).or_default() += 1;
        }
        by_body
    };
    let msgs = wait_for("the committed and the checked-back messages", &logs, Duration::from_secs(60), || async {
        let msgs = read_topic(&pc, T, &logs).await;
        let v = visible(&msgs);
        if v.contains_key("commit") && v.contains_key("unknown") {
            Ok(msgs)
        } else {
            Err(format!("visible so far: {v:?}; checks: {:?}", producer.listener().checked.lock().unwrap()))
        }
    })
    .await;
    for m in &msgs {
        let name = String::from_utf8_lossy(&m.body).into_owned();
        assert_eq!(Some(&m.msg_id), ids.get(name.as_str()), "{name} keeps its message id");
        assert_eq!((m.tags(), m.keys()), (Some("txn"), vec![name.as_str()]), "{name}");
        // Delivered as an ordinary message of its topic: no half-message marks left but the commit bits.
        assert_eq!(m.property("TRAN_MSG"), None, "{name}");
        assert_eq!(sys_flag::transaction_value(m.sys_flag), sys_flag::TRANSACTION_COMMIT_TYPE, "{name}");
    }
    assert!(producer.listener().checked.lock().unwrap().contains(&ids["unknown"]), "the unknown one was checked back");
    // Several check passes later: each committed message is still there once, the rolled-back one never
    // appeared, and no transaction is checked any more (none is pending).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let checks = producer.listener().checked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let v = visible(&read_topic(&pc, T, &logs).await);
    assert_eq!(v, BTreeMap::from([("commit".to_string(), 1), ("unknown".to_string(), 1)]), "visible after the check passes");
    let checked = producer.listener().checked.lock().unwrap().clone();
    assert_eq!(checked.len(), checks, "checked again after every transaction ended: {checked:?}");
    let counts = producer.check_counts();
    assert_eq!((counts.answered, counts.dropped), (checked.len() as u64, 0), "{counts:?}");
    producer.shutdown().await;

    // The CLI: --transaction unknown waits for the check-back and commits.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(["produce", "--namesrv", &cluster.namesrv, "--topic", T, "--body", "from the cli", "--transaction", "unknown"])
        .args(["--group", "pg_transactions_cli", "--check-timeout-secs", "60"])
        .output()
        .await
        .expect("run raftmq produce");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("raftmq produce --transaction unknown:\n{stdout}");
    assert!(out.status.success(), "raftmq produce --transaction unknown: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("local=unknown") && stdout.contains("answered commit"), "{stdout}");
    let v = wait_for("the CLI's transaction", &logs, Duration::from_secs(20), || async {
        let v = visible(&read_topic(&pc, T, &logs).await);
        if v.contains_key("from the cli") {
            Ok(v)
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;
    assert_eq!(v["from the cli"], 1);
    pc.shutdown().await;
}

// ---- 7 ---------------------------------------------------------------------------------------------------

/// How many times each body was delivered.
fn deliveries_by_body(log: &Deliveries) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for m in log.lock().unwrap().iter() {
        *n.entry(String::from_utf8_lossy(&m.body).into_owned()).or_insert(0) += 1;
    }
    n
}

/// `raftmq admin group reset --to-time` against a RUNNING push consumer that has consumed everything: it
/// re-receives exactly the messages stored from that time on, without a restart (the broker answers its next
/// pull with PULL_OFFSET_MOVED to the reset offset, and its stale commits are ignored). `group show` and the
/// older `group G --topic T` print the group's progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_push_consumer_follows_a_reset_by_time() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let cluster = Cluster::start(3).await;
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let _keeper = LogKeeper::new(&cluster, "reset");
    let logs = cluster.dir.path().to_path_buf();
    const T: &str = "T_reset";
    create_topic(&cluster, T, 2).await;
    let producer = Producer::start(cfg(&cluster, "producer"), ProducerOptions::new("pg_reset")).await.expect("producer");
    let log: Deliveries = Arc::default();
    let opts = PushConsumerOptions::new("cg_reset").subscribe(T, "*").with_consume_from(ConsumeFrom::FirstOffset);
    let consumer = PushConsumer::start_concurrently(cfg(&cluster, "reset"), opts, recorder(&log)).await.expect("consumer");
    produce(&producer, T, "old", 20).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    produce(&producer, T, "new", 20).await;
    let all = |prefix: &'static str, times: usize| {
        let log = Arc::clone(&log);
        move || {
            let n = deliveries_by_body(&log);
            let short: Vec<String> = (0..20).map(|i| format!("{prefix}-{i}")).filter(|b| n.get(b).copied().unwrap_or(0) < times).collect();
            std::future::ready(if short.is_empty() { Ok(()) } else { Err(format!("delivered fewer than {times} times: {short:?}")) })
        }
    };
    wait_for("everything consumed once", &logs, Duration::from_secs(30), all("old", 1)).await;
    wait_for("everything consumed once", &logs, Duration::from_secs(30), all("new", 1)).await;
    consumer.persist_offsets().await;
    let ns = cluster.namesrv.as_str();
    let show = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftmq")).args(args).output().expect("run raftmq");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    for args in [
        &["admin", "--namesrv", ns, "group", "show", "cg_reset", "--topic", T][..],
        &["admin", "--namesrv", ns, "group", "cg_reset", "--topic", T],
    ] {
        let (ok, out) = show(args);
        let committed: Vec<i64> = out.lines().skip(1).filter_map(|l| l.split_whitespace().nth(3)?.parse().ok()).collect();
        assert!(ok && committed.iter().sum::<i64>() == 40, "{args:?}: every message consumed and committed: {out}");
    }
    let (ok, out) =
        show(&["admin", "--namesrv", ns, "group", "reset", "--group", "cg_reset", "--topic", T, "--to-time", &before.to_string()]);
    assert!(ok, "{out}");
    // Per queue old -> new: 20 + 20 round-robin over 2 queues, so each queue goes back from 20 to 10.
    let moves: Vec<(String, String)> = out
        .lines()
        .filter(|l| l.contains("->"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[2].to_string(), w[4].to_string())
        })
        .collect();
    assert_eq!(moves, vec![("20".to_string(), "10".to_string()); 2], "{out}");
    wait_for("the new messages again, without a restart", &logs, Duration::from_secs(30), all("new", 2)).await;
    // Nothing from before the reset time comes again, and nothing new comes a third time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = deliveries_by_body(&log);
    assert!(n.iter().filter(|(b, _)| b.starts_with("old")).all(|(_, c)| *c == 1), "{n:?}");
    assert!(n.iter().filter(|(b, _)| b.starts_with("new")).all(|(_, c)| *c == 2), "{n:?}");
    // The consumer's progress after the rewind is committed again (commits count once the group followed).
    consumer.persist_offsets().await;
    wait_for("the offsets committed at the end again", &logs, Duration::from_secs(20), || async {
        let (_, out) = show(&["admin", "--namesrv", ns, "group", "show", "cg_reset", "--topic", T]);
        let committed: Vec<i64> = out.lines().skip(1).filter_map(|l| l.split_whitespace().nth(3)?.parse().ok()).collect();
        if committed == [20, 20] {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
    // Bad input is refused with the broker's reason.
    let (ok, out) = show(&["admin", "--namesrv", ns, "group", "reset", "--group", "nobody", "--topic", T, "--to-latest"]);
    assert!(!ok && out.contains("no offsets and no live consumer"), "{out}");
    let (ok, out) = show(&["admin", "--namesrv", ns, "group", "reset", "--group", "cg_reset", "--topic", T, "--to-time", "yesterday"]);
    assert!(!ok && out.contains("RFC 3339"), "{out}");
    consumer.shutdown().await;
    producer.shutdown().await;
}
