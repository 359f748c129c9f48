//! Multi-process tests of a real cluster (a nameserver and three `raftmq broker` processes on loopback):
//! produce/consume through the nameserver, kill -9 of the leader under load (every acknowledged message
//! is then consumable at exactly the offset it was acknowledged with), a killed node restarting and
//! catching up, consumer offsets surviving failover, and a node with damaged data exiting with
//! `EXIT_STORE_CORRUPT` (65, which the systemd unit does not restart) rather than `EXIT_STORE_FAILED` (74).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::ResponseCode;

const TOPIC: &str = "TopicTest";

/// An acknowledged send: queue, queue offset, body, when the ack arrived.
type Ack = (i32, i64, Vec<u8>, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_and_consume_through_the_nameserver() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    let c = client(&cluster.node(leader).client_addr).await.expect("leader reachable");
    for i in 0..40 {
        let off = send(&c, TOPIC, i % 4, format!("m{i}").as_bytes()).await.expect("send");
        assert_eq!(off, (i / 4) as i64, "queue offsets are dense per queue");
    }
    // The auto-created topic is routed by the nameserver after the leader re-registers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let route = loop {
        if let Ok(Some(r)) = route(&cluster.namesrv, TOPIC).await {
            break r;
        }
        assert!(Instant::now() < deadline, "topic never routed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(route.queue_datas[0].write_queue_nums, 4);
    assert_eq!(route.broker_datas[0].master_addr(), Some(cluster.node(leader).client_addr.as_str()));
    assert_eq!(route.broker_datas[0].broker_addrs.len(), 3, "followers are published with their node ids");
    // Every member serves the committed messages.
    for n in &cluster.nodes {
        let c = client(&n.client_addr).await.expect("node reachable");
        // Every queue, not only queue 0: a follower may have applied m36 (queue 0) but not yet m39 (queue 3).
        let deadline = Instant::now() + Duration::from_secs(10);
        for q in 0..4 {
            while max_offset(&c, TOPIC, q).await < 10 {
                assert!(Instant::now() < deadline, "node {} did not apply queue {q}", n.id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for q in 0..4 {
            let got = pull_all(&c, TOPIC, q).await;
            let want: Vec<(i64, Vec<u8>)> =
                (0..40).filter(|i| i % 4 == q).map(|i| ((i / 4) as i64, format!("m{i}").into_bytes())).collect();
            assert_eq!(got, want, "node {} queue {q}", n.id);
        }
    }
    cli_produce_consume_and_admin(&cluster);
}

fn raftmq(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftmq")).args(args).output().expect("run raftmq");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The `raftmq produce|consume|admin` subcommands (built on raftmq-client) against the same cluster.
fn cli_produce_consume_and_admin(cluster: &Cluster) {
    let ns = cluster.namesrv.as_str();
    let (ok, out) = raftmq(&["admin", "--namesrv", ns, "topic", "create", "CliTopic", "--queues", "2"]);
    assert!(ok && out.contains("created CliTopic with 2 queues on broker-a"), "{out}");
    let (ok, out) = raftmq(&["produce", "--namesrv", ns, "--topic", "CliTopic", "--count", "6", "--tag", "A", "--keys", "k1 k2"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("SEND_OK broker-a")).count(), 6, "{out}");
    let (ok, out) = raftmq(&["produce", "--namesrv", ns, "--topic", "CliTopic", "--count", "4", "--tag", "B", "--batch", "2"]);
    assert!(ok && out.lines().filter(|l| l.starts_with("SEND_OK")).count() == 2, "two batches of two: {out}");
    let (ok, out) = raftmq(&["consume", "--namesrv", ns, "--topic", "CliTopic", "--group", "cli", "--count", "6", "--expression", "A"]);
    assert!(ok && out.contains("consumed 6 message(s)"), "{out}");
    assert!(out.contains("tags=A keys=k1 k2 body=message 0"), "{out}");
    assert!(!out.contains("tags=B"), "the tag expression filters: {out}");
    let (ok, out) = raftmq(&["admin", "--namesrv", ns, "group", "cli", "--topic", "CliTopic"]);
    assert!(ok, "{out}");
    let (table, lost): (Vec<&str>, Vec<&str>) = out.lines().skip(1).partition(|l| !l.contains("lost to retention"));
    let committed: Vec<&str> = table.iter().map(|l| l.split_whitespace().nth(3).unwrap_or("")).collect();
    assert_eq!(committed.len(), 2, "{out}");
    assert_eq!(lost, ["broker-a: 0 messages of CliTopic lost to retention before cli consumed them"], "{out}");
    assert!(committed.iter().all(|c| c.parse::<i64>().is_ok_and(|o| o >= 1)), "every queue has a committed offset: {out}");
    let (ok, out) = raftmq(&["consume", "--namesrv", ns, "--topic", "CliTopic", "--group", "cli-b", "--count", "4", "--expression", "B"]);
    assert!(ok && out.contains("consumed 4 message(s)") && !out.contains("tags=A"), "{out}");
    let (ok, out) = raftmq(&["admin", "--namesrv", ns, "leader"]);
    assert!(ok && out.trim().starts_with('n'), "{out}");
    let old: u64 = out.trim()[1..].parse().expect("leader id");
    let target = if old == 1 { 2 } else { 1 };
    let (ok, out) = raftmq(&["admin", "--namesrv", ns, "transfer-leader", "--to", &format!("n{target}")]);
    assert!(ok && out.trim() == format!("n{target}"), "{out}");
    let (ok, out) = raftmq(&["admin", "--namesrv", ns, "transfer-leader", "--to", "n9"]);
    assert!(!ok && out.contains("not a member"), "an unknown target is refused with a reason: {out}");
    // `raftmq bench`: a counted produce run, then a consume run that reads exactly those messages back.
    let json = cluster.dir.path().join("bench.json");
    let args =
        ["bench", "produce", "--namesrv", ns, "--topic", "BenchT", "--producers", "2", "--inflight", "4", "--count", "300", "--quiet"];
    let (ok, out) = raftmq(&[&args[..], &["--json", json.to_str().unwrap_or_default()]].concat());
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("bench json")).expect("json");
    assert_eq!((r["acked"].as_u64(), r["errors"].as_u64()), (Some(300), Some(0)), "{r}");
    assert!(r["latency"]["p99_us"].as_u64().unwrap_or(0) >= r["latency"]["p50_us"].as_u64().unwrap_or(u64::MAX), "{r}");
    let (ok, out) = raftmq(&["bench", "consume", "--namesrv", ns, "--topic", "BenchT", "--duration", "20", "--quiet"]);
    assert!(ok && out.contains("consume: 300 msgs"), "{out}");
    // CPU per message: the brokers' (given by pid) and the generator's own, both positive for 300 messages.
    let pids: Vec<String> = cluster.pids().iter().map(u32::to_string).collect();
    let args = ["bench", "produce", "--namesrv", ns, "--topic", "BenchCpu", "--inflight", "4", "--count", "300", "--quiet"];
    let (ok, out) = raftmq(&[&args[..], &["--server-pids", &pids.join(","), "--json", json.to_str().unwrap_or_default()]].concat());
    assert!(ok && out.contains("cpu per acknowledged message: server "), "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("bench json")).expect("json");
    assert_eq!(r["cpu"]["server_pids"].as_array().map(Vec::len), Some(3), "{r}");
    assert!(r["cpu"]["server_us_per_msg"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    assert!(r["cpu"]["client_us_per_msg"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    // End to end at a fixed rate: every acknowledged message received once, with latencies.
    let args = ["bench", "e2e", "--namesrv", ns, "--topic", "BenchE2e", "--rate", "200", "--duration", "2", "--inflight", "16", "--quiet"];
    let (ok, out) = raftmq(&[&args[..], &["--json", json.to_str().unwrap_or_default()]].concat());
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("bench json")).expect("json");
    assert_eq!((r["acked"].as_u64(), r["received"].as_u64()), (Some(400), Some(400)), "{r}");
    assert_eq!((r["lost"].as_u64(), r["duplicates"].as_u64(), r["foreign"].as_u64()), (Some(0), Some(0), Some(0)), "{r}");
    assert!(r["latency"]["p50_us"].as_u64().is_some_and(|v| v > 0), "{r}");
    let (ok, out) = raftmq(&["bench", "e2e", "--namesrv", ns, "--topic", "BenchE2e", "--duration", "2"]);
    assert!(!ok && out.contains("e2e needs --rate"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill9_under_load_loses_no_acknowledged_message_and_the_node_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.client_addr.clone()).collect();
    let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (addrs, acked, stop) = (addrs.clone(), Arc::clone(&acked), Arc::clone(&stop));
        producers.push(tokio::spawn(async move {
            let mut target = 0usize;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Some(c) = client(&addrs[target % addrs.len()]).await else {
                    target += 1;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    // A fresh body per attempt: an uncertain send is never retried with the same value.
                    seq += 1;
                    let body = format!("p{p}-{seq}").into_bytes();
                    let q = (seq % 4) as i32;
                    match send(&c, TOPIC, q, &body).await {
                        Ok(off) => acked.lock().unwrap().push((q, off, body, Instant::now())),
                        Err(_) => {
                            target += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            break;
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    cluster.kill(old);
    let new = cluster.leader(Duration::from_secs(15)).await;
    assert_ne!(new, old);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let acked: Vec<Ack> = std::mem::take(&mut *acked.lock().unwrap());
    let after = acked.iter().filter(|a| a.3 > killed_at).count();
    let mut times: Vec<Instant> = acked.iter().map(|a| a.3).collect();
    times.sort();
    let stall = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    println!("{} acknowledged sends, {after} after the kill; longest gap between acks {stall:?}", acked.len());
    assert!(after > 0, "no send was acknowledged after the failover");

    let (new_addr, old_addr) = (cluster.node(new).client_addr.clone(), cluster.node(old).client_addr.clone());
    let check_node = |id: u64, addr: String| {
        let acked = &acked;
        async move {
            let c = client(&addr).await.expect("node reachable");
            let mut queues: BTreeMap<i32, BTreeMap<i64, Vec<u8>>> = BTreeMap::new();
            for q in 0..4 {
                queues.insert(q, pull_all(&c, TOPIC, q).await.into_iter().collect());
            }
            for (q, off, body, _) in acked {
                assert_eq!(queues[q].get(off), Some(body), "node {id}: acknowledged message missing or moved at {q}/{off}");
            }
            queues
        }
    };
    let on_leader = check_node(new, new_addr).await;

    // The killed node restarts from its own disk and catches up to identical queues.
    cluster.start_node(old);
    let c = loop {
        if let Some(c) = client(&cluster.node(old).client_addr).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for q in 0..4 {
        let want = on_leader[&q].len() as i64;
        while max_offset(&c, TOPIC, q).await < want {
            assert!(Instant::now() < deadline, "restarted node did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let on_restarted = check_node(old, old_addr).await;
    assert_eq!(on_restarted, on_leader, "restarted node's queues differ from the leader's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_offsets_survive_failover() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    let c = client(&cluster.node(leader).client_addr).await.expect("leader");
    for i in 0..20 {
        send(&c, TOPIC, i % 2, b"x").await.expect("send");
    }
    assert_eq!(commit_offset(&c, "g1", TOPIC, 0, 7).await, ResponseCode::SUCCESS.0);
    assert_eq!(commit_offset(&c, "g1", TOPIC, 1, 9).await, ResponseCode::SUCCESS.0);
    assert_eq!(query_offset(&c, "g1", TOPIC, 0).await, Some(7));
    cluster.kill(leader);
    let new = cluster.leader(Duration::from_secs(15)).await;
    let c = client(&cluster.node(new).client_addr).await.expect("new leader");
    assert_eq!(query_offset(&c, "g1", TOPIC, 0).await, Some(7), "committed offset rewound after failover");
    assert_eq!(query_offset(&c, "g1", TOPIC, 1).await, Some(9));
    assert_eq!(query_offset(&c, "other", TOPIC, 0).await, None, "unknown group has no offset");
    // A follower forwards offset commits to the leader (a consumer with a stale route still commits).
    let follower = cluster.nodes.iter().find(|n| n.id != new && n.id != leader).expect("a follower").id;
    let f = client(&cluster.node(follower).client_addr).await.expect("follower");
    let code = commit_offset(&f, "g1", TOPIC, 0, 8).await;
    assert_eq!(code, ResponseCode::SUCCESS.0, "a follower forwards the commit to the leader");
    assert_eq!(query_offset(&c, "g1", TOPIC, 0).await, Some(8), "the forwarded commit reached the leader");
    // ... and does not answer committed-offset queries either: its copy may be stale, and a consumer resuming
    // from a stale offset would move backwards (found by the chaos checker's committed-offset-regression).
    assert_eq!(query_offset(&f, "g1", TOPIC, 0).await, None, "a follower must not serve committed offsets");
    let (code, _, _) = pull(&f, TOPIC, 0, 0).await;
    assert_eq!(code, ResponseCode::SUCCESS.0, "followers serve committed messages");
}

/// Flips every bit of the byte at `offset` of `path`; returns the byte it held.
fn flip_byte(path: &Path, offset: u64) -> u8 {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open for corruption");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    f.write_all_at(&[!b[0]], offset).expect("write byte");
    f.sync_all().expect("fsync");
    b[0]
}

/// Node 1 exited by itself with `EXIT_STORE_CORRUPT`, and its last error line names `path` and says the
/// data is corrupt.
fn assert_corrupt_exit(cluster: &mut Cluster, path: &Path, what: &str) {
    let st = cluster
        .wait_exit(1, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{what}: the broker did not exit\n{}", cluster.log_tails(30)));
    assert_eq!(st.signal(), None, "{what}: killed by a signal ({st:?})\n{}", cluster.log_tails(30));
    assert_eq!(st.code(), Some(raftmq_broker::EXIT_STORE_CORRUPT), "{what}: exit status\n{}", cluster.log_tails(30));
    let log = std::fs::read_to_string(cluster.dir.path().join("n1.log")).expect("broker log");
    let line = log.lines().rev().find(|l| l.contains("store failed, exiting")).unwrap_or_else(|| panic!("{what}: no exit line\n{log}"));
    assert!(line.contains("corrupt=true") && line.contains("exit_code=65"), "{what}: {line}");
    assert!(line.contains(&format!("path={}", path.display())), "{what}: names the file {}: {line}", path.display());
    let stderr = std::fs::read_to_string(cluster.dir.path().join("n1.stderr")).unwrap_or_default();
    assert!(stderr.contains("exiting with status 65"), "{what}: stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_damaged_data_exits_with_the_do_not_restart_status() {
    let mut cluster = Cluster::start(1).await;
    let c = client(&cluster.node(1).client_addr).await.expect("broker reachable");
    // 1200 entries of 8 KiB: the first 8 MiB segment is sealed, and the state machine has checkpointed
    // (every 1024 entries).
    let body = |i: usize| {
        let mut b = format!("damaged-{i:05}-").into_bytes();
        b.resize(8 << 10, b'z');
        b
    };
    let mut acked = Vec::new();
    for i in 0..1200 {
        acked.push((send(&c, TOPIC, 0, &body(i)).await.expect("send"), i));
    }
    let store = cluster.store_dir(1);
    let (segment0, segment1) = (store.join(format!("commitlog/data/{:020}", 0)), store.join(format!("commitlog/data/{:020}", 8u64 << 20)));
    let checkpoint = store.join("state/checkpoint");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !checkpoint.exists() {
        assert!(Instant::now() < deadline, "the state machine never wrote a checkpoint\n{}", cluster.log_tails(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(segment1.exists(), "the first segment is sealed");
    cluster.kill(1);

    // 1. A flipped byte inside a sealed segment. Without the commitlog's checkpoint, recovery verifies the
    //    whole log and finds it: CRC mismatch, exit 65.
    let at = 4 << 20;
    let original = flip_byte(&segment0, at);
    std::fs::remove_file(store.join("commitlog/checkpoint")).expect("remove the commitlog checkpoint");
    cluster.start_node(1);
    assert_corrupt_exit(&mut cluster, &segment0, "sealed segment");

    // The same store with the byte put back starts and serves every acknowledged message: the status was
    // about the damage, not about anything the failed start did.
    let f = std::fs::OpenOptions::new().write(true).open(&segment0).expect("open segment");
    f.write_all_at(&[original], at).expect("restore byte");
    f.sync_all().expect("fsync");
    cluster.start_node(1);
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&cluster.node(1).client_addr).await.expect("broker reachable after repair");
    let got = pull_all(&c, TOPIC, 0).await;
    assert_eq!(got.len(), acked.len(), "every acknowledged message is served");
    for ((off, i), (got_off, got_body)) in acked.iter().zip(&got) {
        assert!(off == got_off && *got_body == body(*i), "message {i} at offset {off}");
    }
    cluster.kill(1);

    // 2. A flipped byte in the state machine's checkpoint: its frame's CRC fails, exit 65.
    let len = std::fs::metadata(&checkpoint).expect("checkpoint").len();
    flip_byte(&checkpoint, len / 2);
    cluster.start_node(1);
    assert_corrupt_exit(&mut cluster, &checkpoint, "state checkpoint");
}
