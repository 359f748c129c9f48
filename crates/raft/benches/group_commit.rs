//! Benchmark (not a test): commit throughput of a 3-node group on loopback with sync flush, for 128 B and
//! 1 KiB messages and several numbers of concurrent writers, next to the raw disk rate measured in the
//! same run (sequential 4 KiB write + fdatasync, and 1 MiB writes + fdatasync).
//!
//! `cargo bench -p raftmq-raft --bench group_commit`. Env: `RAFTMQ_BENCH_DIR` (default /var/tmp; avoid
//! tmpfs), `RAFTMQ_BENCH_SECS` per case (default 3), `RAFTMQ_BENCH_WRITERS` (default "1,16,64,256"),
//! `RAFTMQ_BENCH_INFLIGHT` (produce entries in flight; default "1", a list runs a fresh group for each).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_raft::node::{NodeConfig, RaftNode, Role};
use raftmq_raft::types::{Command, Message, QueueAppend, TopicConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// (4 KiB write+fdatasync per second, sequential MB/s with 1 MiB write+fdatasync).
fn raw_disk(dir: &Path) -> (f64, f64) {
    let path = dir.join("raw-disk-probe");
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).expect("probe file");
    let small = vec![0x5au8; 4096];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(2) {
        f.write_all(&small).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let fsyncs = n as f64 / t.elapsed().as_secs_f64();
    let big = vec![0xa5u8; 1 << 20];
    let t = Instant::now();
    let mut bytes = 0u64;
    while t.elapsed() < Duration::from_secs(2) {
        f.write_all(&big).expect("write");
        f.sync_data().expect("fdatasync");
        bytes += big.len() as u64;
    }
    let mbs = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    (fsyncs, mbs)
}

async fn group(root: &Path, inflight: usize) -> (Vec<Arc<RaftNode>>, Arc<RaftNode>) {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut c = NodeConfig::new(id, "127.0.0.1:0", root.join(format!("n{id}")));
        c.segment_bytes = 256 << 20;
        c.batch_inflight_max = inflight;
        nodes.push(Arc::new(RaftNode::start(c).await.expect("start")));
    }
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id(), n.raft_addr().to_string())).collect();
    nodes[0].initialize(members).await.expect("init");
    let leader = loop {
        if let Some(l) = nodes.iter().find(|n| {
            let r = n.role().borrow().clone();
            r.role == Role::Leader && r.ready
        }) {
            break Arc::clone(l);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    leader
        .write(Command::UpsertTopic(TopicConfig { name: "bench".into(), read_queues: 8, write_queues: 8, perm: 6 }))
        .await
        .expect("topic");
    (nodes, leader)
}

async fn run_case(leader: &Arc<RaftNode>, size: usize, writers: u64, secs: u64) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let data = Bytes::from(vec![b'm'; size]);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (leader, stop, count, data) = (Arc::clone(leader), Arc::clone(&stop), Arc::clone(&count), data.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let q = QueueAppend {
                    topic: "bench".into(),
                    queue_id: (w % 8) as u32,
                    messages: vec![Message { tags_code: 0, data: data.clone(), phys_offset: None }],
                };
                if leader.produce(vec![q]).await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let el = t.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed) as f64;
    (n / el, n * size as f64 / 1e6 / el)
}

fn main() {
    let base = std::env::var("RAFTMQ_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let secs = env_u64("RAFTMQ_BENCH_SECS", 3);
    let writers: Vec<u64> = std::env::var("RAFTMQ_BENCH_WRITERS")
        .unwrap_or_else(|_| "1,16,64,256".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let (fsyncs, disk_mbs) = raw_disk(dir.path());
    println!("raw disk: {fsyncs:.0} x (4 KiB write + fdatasync)/s, {disk_mbs:.1} MB/s sequential (1 MiB write + fdatasync)");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let inflights: Vec<usize> =
        std::env::var("RAFTMQ_BENCH_INFLIGHT").unwrap_or_else(|_| "1".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    for inflight in inflights {
        let root = dir.path().join(format!("inflight-{inflight}"));
        rt.block_on(async {
            let (nodes, leader) = group(&root, inflight).await;
            println!("-- batch_inflight_max = {inflight}");
            println!("{:>6} {:>8} {:>12} {:>10} {:>14} {:>12}", "size", "writers", "msgs/s", "MB/s", "msgs/entry", "MB/s / disk");
            for size in [128usize, 1024] {
                for &w in &writers {
                    let before = leader.commitlog().state().last.map(|l| l.index).unwrap_or(0);
                    let (rate, mbs) = run_case(&leader, size, w, secs).await;
                    let entries = leader.commitlog().state().last.map(|l| l.index).unwrap_or(0) - before;
                    let per_entry = rate * secs as f64 / entries.max(1) as f64;
                    println!("{size:>6} {w:>8} {rate:>12.0} {mbs:>10.2} {per_entry:>14.1} {:>12.3}", mbs / disk_mbs);
                }
            }
            println!("(msgs/entry: messages per Raft entry, i.e. per leader fdatasync)");
            for n in nodes {
                n.shutdown().await;
            }
        });
    }
}
