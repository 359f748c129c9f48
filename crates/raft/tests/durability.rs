//! The promises between the log store and the state machine that a power cut would test (issue 11, item 1),
//! checked directly on a one-node group in this process:
//!
//! - a state-machine checkpoint never covers a record the local commitlog has not made durable (with an
//!   async flush policy, openraft applies committed entries before the local fdatasync);
//! - a log that ends before its state machine's checkpoint (lost records) makes the node refuse to start
//!   instead of purging every segment the consume queues point into;
//! - a damaged, or too new, advisory `committed` file is ignored, not fatal.
//!
//! The same promises under real simulated power cuts (every write not made durable dropped) are checked by
//! the power-loss tests, which need FUSE.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_commitlog::{CommitLog, CommitLogConfig, FlushPolicy};
use raftmq_raft::node::{NodeConfig, RaftNode, Role};
use raftmq_raft::state_machine::Metadata;
use raftmq_raft::types::{Command, LogId, Message, QueueAppend, TopicConfig};

const TOPIC: &str = "DurableTopic";

fn cfg(root: &Path, flush: FlushPolicy) -> NodeConfig {
    let mut c = NodeConfig::new(1, "127.0.0.1:0", root.join("n1"));
    c.segment_bytes = 64 * 1024;
    c.index_slots_per_file = 256;
    c.checkpoint_every = 4;
    c.cq_units_per_file = 128;
    // Entries must fit the small segments (NodeConfig::validate).
    c.entry_bytes_max = 32 * 1024;
    c.batch_bytes_max = 32 * 1024;
    c.flush = flush;
    c
}

async fn start_single(c: NodeConfig, init: bool) -> RaftNode {
    let n = RaftNode::start(c).await.expect("start");
    if init {
        n.initialize(BTreeMap::from([(n.id(), n.raft_addr().to_string())])).await.expect("initialize");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = n.role().borrow().clone();
        if r.role == Role::Leader && r.ready {
            break;
        }
        assert!(Instant::now() < deadline, "single node never became a ready leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if init {
        n.write(Command::UpsertTopic(TopicConfig { name: TOPIC.into(), read_queues: 2, write_queues: 2, perm: 6 })).await.expect("topic");
    }
    n
}

async fn produce(n: &RaftNode, count: u64) {
    for i in 0..count {
        let q = QueueAppend {
            topic: TOPIC.into(),
            queue_id: (i % 2) as u32,
            messages: vec![Message { tags_code: 0, data: Bytes::from(format!("m-{i}")), phys_offset: None }],
        };
        n.produce(vec![q]).await.expect("produce");
    }
}

/// The state machine's persisted checkpoint, decoded the way `StateMachine::open` reads it.
fn checkpoint_on_disk(root: &Path) -> Option<Metadata> {
    let b = std::fs::read(root.join("n1/state/checkpoint")).ok()?;
    assert!(b.len() >= 8, "checkpoint file shorter than its header");
    Some(Metadata::decode(&b[8..]).expect("checkpoint decodes"))
}

fn applied_index(m: &Metadata) -> u64 {
    m.last_applied.map(|l| l.index).unwrap_or(0)
}

/// Async flush with an interval longer than the test: the log never becomes durable past what open and
/// initialisation flushed, so no checkpoint may name a later index — although the state machine applies
/// every entry and reaches several checkpoint indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_never_covers_records_the_log_has_not_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_single(cfg(dir.path(), FlushPolicy::Async { interval: Duration::from_secs(3600) }), true).await;
    produce(&n, 40).await;
    let applied = n.state().last_applied_index().expect("applied");
    assert!(applied >= 20, "applied {applied}");
    // Give the flush thread time to persist whatever it is going to (it would do so within milliseconds).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let durable = n.commitlog().durable_index();
    if let Some(cp) = checkpoint_on_disk(dir.path()) {
        assert!(
            durable.is_some_and(|d| applied_index(&cp) <= d),
            "checkpoint at {} but the log is durable only through {durable:?} (applied {applied})",
            applied_index(&cp)
        );
    }
    n.shutdown().await;
}

/// With a short async interval the log becomes durable in the background, and checkpoints follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_follow_the_async_flush() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_single(cfg(dir.path(), FlushPolicy::Async { interval: Duration::from_millis(20) }), true).await;
    produce(&n, 40).await;
    let applied = n.state().last_applied_index().expect("applied");
    let target = applied - applied % 4;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cp = checkpoint_on_disk(dir.path()).map(|m| applied_index(&m)).unwrap_or(0);
        let durable = n.commitlog().durable_index().unwrap_or(0);
        assert!(cp <= durable, "checkpoint {cp} ahead of durable log {durable}");
        if cp >= target {
            break;
        }
        assert!(Instant::now() < deadline, "checkpoint stuck at {cp}, wanted {target} (durable {durable})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.shutdown().await;
}

/// A log that lost records its state machine had checkpointed (simulated here by truncating it while the
/// node is down): the node must not start by purging every segment, which would leave consume queues
/// pointing at deleted bytes; it refuses with a reason naming the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_behind_its_state_machine_refuses_to_start_instead_of_purging() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), FlushPolicy::Sync);
    let n = start_single(c.clone(), true).await;
    produce(&n, 40).await;
    let applied = n.state().last_applied_index().expect("applied");
    let deadline = Instant::now() + Duration::from_secs(10);
    while checkpoint_on_disk(dir.path()).map(|m| applied_index(&m)).unwrap_or(0) < 20 {
        assert!(Instant::now() < deadline, "no checkpoint at or past 20");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.shutdown().await;
    drop(n);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cp = applied_index(&checkpoint_on_disk(dir.path()).expect("checkpoint"));
    assert!(cp >= 20 && cp <= applied);

    // Lose the log's tail from index 10 on.
    let mut lc = CommitLogConfig::new(dir.path().join("n1/commitlog"));
    lc.segment_bytes = c.segment_bytes;
    lc.index_slots_per_file = c.index_slots_per_file;
    let log = tokio::task::spawn_blocking(move || CommitLog::open(lc)).await.unwrap().expect("open log");
    log.truncate(10).await.expect("truncate");
    let segments_before = std::fs::read_dir(dir.path().join("n1/commitlog/data")).unwrap().count();
    tokio::task::spawn_blocking(move || log.close()).await.unwrap();

    let r = RaftNode::start(c).await;
    let err = match r {
        Ok(n) => {
            let segments = std::fs::read_dir(dir.path().join("n1/commitlog/data")).unwrap().count();
            let st = n.commitlog().state();
            n.shutdown().await;
            panic!("node started over a log behind its state machine: log now {st:?}, {segments} segments (had {segments_before})");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("refusing to purge"), "unexpected start error: {err}");
    assert_eq!(std::fs::read_dir(dir.path().join("n1/commitlog/data")).unwrap().count(), segments_before, "segments were removed");
}

/// `committed` is advisory and written without fsync: a torn or empty file, or one naming an entry the
/// log does not hold, must not stop the node from starting, and nothing applied is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_too_new_committed_file_is_ignored() {
    for damage in ["garbage", "too-new"] {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), FlushPolicy::Sync);
        let n = start_single(c.clone(), true).await;
        produce(&n, 12).await;
        let applied = n.state().last_applied_index().expect("applied");
        n.shutdown().await;
        drop(n);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let path = dir.path().join("n1/commitlog/committed");
        match damage {
            "garbage" => std::fs::write(&path, b"\x01\x02torn").unwrap(),
            _ => {
                let mut lc = CommitLogConfig::new(dir.path().join("n1/commitlog"));
                lc.segment_bytes = c.segment_bytes;
                lc.index_slots_per_file = c.index_slots_per_file;
                let log = tokio::task::spawn_blocking(move || CommitLog::open(lc)).await.unwrap().expect("open log");
                let far: Option<LogId> = Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), applied + 1000));
                log.save_meta("committed", bincode::serialize(&far).unwrap(), true).await.unwrap();
                tokio::task::spawn_blocking(move || log.close()).await.unwrap();
            }
        }
        let n = start_single(c, false).await;
        let q0 = n.state().queue(TOPIC, 0).expect("queue 0");
        assert_eq!(q0.max_offset(), 6, "{damage}: messages lost");
        n.shutdown().await;
    }
}
