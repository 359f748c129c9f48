//! A full rolling restart with `scripts/rolling-restart.sh` of the local cluster from `scripts/cluster.sh up`
//! (this build's debug binary, a temporary data directory, the script's fixed ports): a native producer sends
//! all the while, one message at a time and without retries, and sees **0 failed sends**; every acknowledged message is stored
//! exactly once; the longest stall between acknowledgements is reported. The old leader's log shows the
//! SIGTERM hand-off and the drain that forwarded the stale-route sends.
//!
//! Skipped, with the reason printed, when the local cluster's ports are taken (a developer's running cluster).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raftmq_client::{ClientConfig, Message, Producer, ProducerOptions};

const NAMESRV: &str = "127.0.0.1:9876";
/// The nameserver and broker-a ports of scripts/cluster.sh (client, Raft, metrics).
const PORTS: [u16; 11] = [9876, 9877, 10911, 10912, 10913, 10921, 10922, 10923, 10931, 10932, 10933];
const TOPIC: &str = "TopicRolling";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// Runs a script of the repository against the test's cluster; panics with its output on failure.
fn script(data: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .args(args)
        .current_dir(repo())
        .env("RAFTMQ_BIN", bin())
        .env("RAFTMQ_DATA_DIR", data)
        .output()
        .expect("run script");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?} failed ({}):\n{text}\n{}", out.status, logs(data));
    text
}

fn logs(data: &Path) -> String {
    let mut s = String::new();
    for n in ["n1", "n2", "n3"] {
        let text = std::fs::read_to_string(data.join(format!("logs/broker-a-{n}.log"))).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        s.push_str(&format!("--- broker-a-{n}.log (last 25 lines)\n"));
        for l in tail.into_iter().rev() {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// Stops the cluster when the test ends, passed or not.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args(["scripts/cluster.sh", "down"])
            .current_dir(repo())
            .env("RAFTMQ_BIN", bin())
            .env("RAFTMQ_DATA_DIR", &self.0)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_local_cluster_fails_no_send() {
    if let Some(p) = PORTS.iter().find(|p| std::net::TcpListener::bind(("127.0.0.1", **p)).is_err()) {
        eprintln!("SKIPPED: port {p} of the local cluster is in use (a running scripts/cluster.sh cluster?); stop it to run this test");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _down = Down(data.clone());
    script(&data, &["scripts/cluster.sh", "up"]);

    // No retries: like the clients that retry only on another broker group (the C++ client with one group), a
    // send to a node that stopped would fail. The hand-off and the drain must make that unnecessary.
    let mut opts = ProducerOptions::new("pg_rolling");
    opts.retries = 0;
    let producer = Producer::start(ClientConfig::new(NAMESRV).with_instance_name("rolling"), opts).await.expect("producer");
    producer.send(Message::new(TOPIC, "create")).await.expect("the first send creates the topic");

    let stop = Arc::new(AtomicBool::new(false));
    let sender = steady_sender(producer.clone(), TOPIC, "rolling", Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let data2 = data.clone();
    let out = tokio::task::spawn_blocking(move || script(&data2, &["scripts/rolling-restart.sh"])).await.expect("rolling restart");
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (acks, failures) = sender.await.expect("sender task");
    producer.shutdown().await;
    println!("{out}");

    let mut times: Vec<Instant> = acks.iter().map(|a| a.3).collect();
    times.sort();
    let stall = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let during = acks.iter().filter(|a| a.3 > started && a.3 < started + took).count();
    println!(
        "rolling restart in {took:?}: {} acknowledged sends ({during} during the restart), {} failed; longest stall between \
         acknowledgements {stall:?}",
        acks.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed sends during the rolling restart: {:?}\n{}", &failures[..failures.len().min(10)], logs(&data));
    assert!(during > 0, "no send was acknowledged during the rolling restart");
    assert!(out.contains("rolling restart of broker-a done"), "{out}");

    // The first leader handed leadership over on SIGTERM and forwarded stale-route sends while it drained.
    let first_leader = out.lines().find_map(|l| l.split("leader ").nth(1)).and_then(|r| r.split_whitespace().next()).expect("leader named");
    let log = std::fs::read_to_string(data.join(format!("logs/broker-a-{first_leader}.log"))).expect("leader log");
    assert!(log.contains("leaving: leadership handed over"), "{first_leader} did not hand over:\n{}", logs(&data));
    let report = log.lines().find(|l| l.contains("left the group's routes")).expect("the leave report");
    println!("old leader {first_leader}: {report}");

    // Every acknowledged message is stored, once.
    let leader_addr = {
        let out = Command::new(bin())
            .args(["admin", "--namesrv", NAMESRV, "leader"])
            .env("RAFTMQ_CLUSTER_SECRET_FILE", data.join("cluster-secret"))
            .output()
            .expect("admin leader");
        let n: u64 = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches('n').parse().expect("leader id");
        format!("127.0.0.1:{}", 10911 + 10 * (n - 1))
    };
    let c = client(&leader_addr).await.expect("connect to the leader");
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for q in 0..4 {
        for m in pull_all_messages(&c, TOPIC, q).await {
            *stored.entry(String::from_utf8_lossy(&m.body).into_owned()).or_insert(0) += 1;
        }
    }
    let missing: Vec<&str> = acks.iter().filter(|a| !stored.contains_key(&a.2)).map(|a| a.2.as_str()).collect();
    let twice: Vec<(&String, &usize)> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "{} acknowledged messages are not stored, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    assert!(twice.is_empty(), "messages stored more than once: {:?}", &twice[..twice.len().min(5)]);
    println!("all {} acknowledged messages stored once", acks.len());
}
