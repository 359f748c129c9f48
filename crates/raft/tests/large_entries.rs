//! Large entries in a 3-node group over loopback TCP: an entry of the maximum size commits on every member
//! while the leader stays in place (openraft 0.9 times AppendEntries out after one heartbeat interval, so the
//! transport keeps a large transfer alive past that), also when the transfer outlasts the followers' election
//! timeout; a 4 MiB message replicates with the default limits; a write above the entry limit is refused
//! before anything is appended; and the batcher never builds an entry above the limit.
//!
//! Loopback moves 16 MiB in a few milliseconds, faster than any real link, so the large-entry test puts a
//! bandwidth-limited TCP proxy in front of every Raft port (members dial each other through the proxies).
//!
//! Timings are printed, never asserted; the deadlines below only bound a test that would otherwise hang.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_raft::node::{NodeConfig, RaftNode, Role, WriteError, ENTRY_BYTES_MAX_DEFAULT};
use raftmq_raft::types::{Command, Message, QueueAppend, QueueAppendResult, TopicConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const TOPIC: &str = "Big";

/// Entry limit of the large-entry test: large enough that its transfer over [`LINK_BYTES_PER_SEC`] outlasts
/// the 100 ms heartbeat (the AppendEntries timeout of openraft 0.9).
const ENTRY_BYTES: usize = 16 << 20;

/// A 1 Gbit/s link that is half busy.
const LINK_BYTES_PER_SEC: u64 = 64 << 20;

/// The most idle time a proxied link turns into credit.
const LINK_CREDIT: Duration = Duration::from_millis(10);

/// Raft timers (heartbeat, election min, election max) in ms.
type Timers = (u64, u64, u64);

/// The node defaults.
const TIMERS: Timers = (100, 300, 600);

fn node_cfg(root: &Path, id: u64, entry_bytes_max: usize, (heartbeat, election_min, election_max): Timers) -> NodeConfig {
    let mut c = NodeConfig::new(id, "127.0.0.1:0", root.join(format!("n{id}")));
    (c.heartbeat_ms, c.election_min_ms, c.election_max_ms) = (heartbeat, election_min, election_max);
    c.entry_bytes_max = entry_bytes_max;
    c.batch_bytes_max = c.batch_bytes_max.min(entry_bytes_max);
    c.segment_bytes = 64 << 20;
    c.prefill_ahead_bytes = 0;
    c.index_slots_per_file = 256;
    c.checkpoint_every = 16;
    c.cq_units_per_file = 128;
    c
}

/// Copies `from` to `to` at `bytes_per_sec`: each chunk leaves when the link has carried the ones before it.
/// Idle time earns at most [`LINK_CREDIT`] of credit, which absorbs the timer's millisecond granularity
/// without allowing bursts.
async fn copy_throttled(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, bytes_per_sec: u64) {
    let mut link_free_at = tokio::time::Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = tokio::time::Instant::now();
        link_free_at =
            link_free_at.max(now.checked_sub(LINK_CREDIT).unwrap_or(now)) + Duration::from_secs_f64(n as f64 / bytes_per_sec as f64);
        tokio::time::sleep_until(link_free_at).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// A proxy in front of `target` that forwards each direction of each connection at `bytes_per_sec`: a
/// network link of that bandwidth. Returns its address; the tasks live in `tasks`.
async fn throttled_proxy(target: String, bytes_per_sec: u64, tasks: &mut JoinSet<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr").to_string();
    tasks.spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((inbound, _)) = listener.accept().await {
            let target = target.clone();
            conns.spawn(async move {
                let Ok(outbound) = TcpStream::connect(&target).await else { return };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::join!(copy_throttled(ir, ow, bytes_per_sec), copy_throttled(or, iw, bytes_per_sec));
            });
        }
    });
    addr
}

/// Starts and initializes a group. With `link_bytes_per_sec`, members reach each other only through proxies
/// of that bandwidth.
async fn start_group(
    root: &Path,
    entry_bytes_max: usize,
    timers: Timers,
    link_bytes_per_sec: Option<u64>,
    proxies: &mut JoinSet<()>,
) -> Vec<Arc<RaftNode>> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Arc::new(RaftNode::start(node_cfg(root, id, entry_bytes_max, timers)).await.expect("start node")));
    }
    let mut members: BTreeMap<u64, String> = BTreeMap::new();
    for n in &nodes {
        let addr = match link_bytes_per_sec {
            Some(bw) => throttled_proxy(n.raft_addr().to_string(), bw, proxies).await,
            None => n.raft_addr().to_string(),
        };
        members.insert(n.id(), addr);
    }
    nodes[0].initialize(members).await.expect("initialize");
    let leader = wait_leader(&nodes, Duration::from_secs(10)).await;
    leader
        .write(Command::UpsertTopic(TopicConfig { name: TOPIC.into(), read_queues: 1, write_queues: 1, perm: 6 }))
        .await
        .expect("create topic");
    nodes
}

async fn wait_leader(nodes: &[Arc<RaftNode>], timeout: Duration) -> Arc<RaftNode> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = nodes.iter().find(|n| {
            let r = n.role().borrow().clone();
            r.role == Role::Leader && r.ready
        }) {
            return Arc::clone(n);
        }
        assert!(Instant::now() < deadline, "no ready leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The produce entry `RaftNode::produce` proposes for `queues` (stamped, no deliveries).
fn stamped(queues: Vec<QueueAppend>) -> Command {
    Command::ProduceAt(raftmq_raft::types::Produce { time_ms: 0, queues, deliveries: Vec::new(), ops: Vec::new() })
}

/// One message whose produce entry has exactly `entry_bytes` encoded bytes.
fn entry_of(entry_bytes: usize) -> Vec<QueueAppend> {
    let overhead = stamped(vec![QueueAppend {
        topic: TOPIC.into(),
        queue_id: 0,
        messages: vec![Message { tags_code: 0, data: Bytes::new(), phys_offset: None }],
    }])
    .encoded_len();
    let data = Bytes::from((0..entry_bytes - overhead).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let q = vec![QueueAppend { topic: TOPIC.into(), queue_id: 0, messages: vec![Message { tags_code: 0, data, phys_offset: None }] }];
    assert_eq!(stamped(q.clone()).encoded_len(), entry_bytes);
    q
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime")
}

/// Waits until every member applied what the leader applied, and checks that each holds `data` at the
/// position the leader acknowledged.
async fn assert_replicated(nodes: &[Arc<RaftNode>], leader: &RaftNode, queue_offset: u64, phys_offset: u64, data: &Bytes) {
    let target = leader.state().last_applied_index();
    for n in nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        while n.state().last_applied_index() < target {
            assert!(Instant::now() < deadline, "node {} did not apply the entry", n.id());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let u = n.state().queue(TOPIC, 0).expect("queue").get(queue_offset).expect("unit");
        assert_eq!(u.phys_offset, phys_offset);
        assert_eq!(&n.commitlog().read_at(u.phys_offset, u.size as usize).expect("bytes"), data, "node {}", n.id());
    }
}

/// Produces `queues` at `leader` within a minute; returns (queue offset, physical offset) of its first message.
async fn produce_one(leader: &RaftNode, queues: Vec<QueueAppend>) -> (u64, u64) {
    let bytes = stamped(queues.clone()).encoded_len();
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(60), leader.produce(queues)).await;
    println!("{bytes}-byte entry: {:?} after {:?}", r.as_ref().map(|r| r.as_ref().map(|_| "stored")), t0.elapsed());
    let r = r.expect("the entry did not commit within 60 s").expect("produce");
    let QueueAppendResult::Stored(p) = &r[0] else { panic!("rejected: {r:?}") };
    (p[0].queue_offset, p[0].phys_offset)
}

/// Produces one entry of [`ENTRY_BYTES`] over proxied links and checks that it commits on every member while
/// the leader keeps its term.
async fn max_size_entry_commits_over(link_bytes_per_sec: u64, timers: Timers) {
    let dir = tempfile::tempdir().unwrap();
    let mut proxies = JoinSet::new();
    let nodes = start_group(dir.path(), ENTRY_BYTES, timers, Some(link_bytes_per_sec), &mut proxies).await;
    let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
    let term = leader.role().borrow().term;
    let queues = entry_of(ENTRY_BYTES);
    let data = queues[0].messages[0].data.clone();
    let (queue_offset, phys_offset) = produce_one(&leader, queues).await;
    assert_eq!(queue_offset, 0);
    assert_replicated(&nodes, &leader, queue_offset, phys_offset, &data).await;
    let after = leader.role().borrow().clone();
    println!("term before {term}, after {}", after.term);
    assert_eq!((after.role, after.term), (Role::Leader, term), "leadership moved while the entry replicated");
    for n in nodes {
        n.shutdown().await;
    }
}

#[test]
fn max_size_entry_commits_on_every_member_over_a_real_link() {
    runtime().block_on(max_size_entry_commits_over(LINK_BYTES_PER_SEC, TIMERS));
}

/// With 50 ms heartbeats and 150–300 ms elections, a follower that hears nothing campaigns after 450–600 ms
/// (leader lease + election timeout); 16 MiB at 32 MiB/s takes longer than that, but stays well within the
/// transfer's deadline (50 ms + 2 s). Only the keep-alives sent with openraft's re-sent requests hold the
/// followers.
#[test]
fn a_transfer_longer_than_the_election_timeout_keeps_the_leader() {
    runtime().block_on(max_size_entry_commits_over(32 << 20, (50, 150, 300)));
}

#[test]
fn a_four_mib_message_replicates_with_the_default_limits() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes = start_group(dir.path(), ENTRY_BYTES_MAX_DEFAULT, TIMERS, None, &mut JoinSet::new()).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        let data = Bytes::from(vec![b'm'; 4 << 20]);
        let queues = vec![QueueAppend {
            topic: TOPIC.into(),
            queue_id: 0,
            messages: vec![Message { tags_code: 0, data: data.clone(), phys_offset: None }],
        }];
        let (queue_offset, phys_offset) = produce_one(&leader, queues).await;
        assert_replicated(&nodes, &leader, queue_offset, phys_offset, &data).await;
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn writes_over_the_entry_limit_are_refused_before_anything_is_appended() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let max = 1 << 20;
        let nodes = start_group(dir.path(), max, TIMERS, None, &mut JoinSet::new()).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        let last = leader.status().last_log_index;
        let r = leader.produce(entry_of(max + 1)).await;
        assert_eq!(r, Err(WriteError::EntryTooLarge { bytes: max + 1, max }));
        let huge = TopicConfig { name: "t".repeat(max), read_queues: 1, write_queues: 1, perm: 6 };
        assert!(matches!(leader.write(Command::UpsertTopic(huge)).await, Err(WriteError::EntryTooLarge { max: m, .. }) if m == max));
        assert_eq!(leader.status().last_log_index, last, "nothing was appended");
        // At the limit it is accepted, and the group carries on.
        let queues = entry_of(max);
        let data = queues[0].messages[0].data.clone();
        let (queue_offset, phys_offset) = produce_one(&leader, queues).await;
        assert_replicated(&nodes, &leader, queue_offset, phys_offset, &data).await;
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn concurrent_produces_never_make_an_entry_over_the_limit() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let max = 1 << 20;
        let nodes = start_group(dir.path(), max, TIMERS, None, &mut JoinSet::new()).await;
        let leader = wait_leader(&nodes, Duration::from_secs(5)).await;
        let first_new = leader.status().last_log_index.unwrap_or(0) + 1;
        // Each request is 40% of the limit: the old batcher admitted a third one past it.
        let mut tasks = Vec::new();
        for i in 0..24u8 {
            let n = Arc::clone(&leader);
            let data = Bytes::from(vec![i; (max * 2 / 5) - 64]);
            let q =
                vec![QueueAppend { topic: TOPIC.into(), queue_id: 0, messages: vec![Message { tags_code: 0, data, phys_offset: None }] }];
            tasks.push(tokio::spawn(async move { n.produce(q).await }));
        }
        for t in tasks {
            let r = t.await.expect("join").expect("produce");
            assert!(matches!(r[0], QueueAppendResult::Stored(_)), "{r:?}");
        }
        let log = leader.commitlog();
        let last = log.state().last.expect("records").index;
        let sizes: Vec<usize> = (first_new..=last).map(|i| log.read(i).expect("read").expect("present").body.len()).collect();
        println!("entry body sizes: {sizes:?}");
        assert!(sizes.iter().all(|s| *s <= max), "an entry exceeds the {max}-byte limit: {sizes:?}");
        assert!(sizes.iter().any(|s| *s > max / 2), "no entry held two requests: batching did not happen");
        for n in nodes {
            n.shutdown().await;
        }
    });
}
