//! Interop test with the unmodified crates.io client `rocketmq-client-rust` =1.0.0.
//!
//! Starts a real raftmq cluster (a nameserver and a 3-node Raft broker group) from the binary named by
//! `$RAFTMQ_BIN` on free loopback ports with its data in a fresh temp dir, sends `MESSAGES` messages (with tags
//! and keys) with the client's `DefaultMQProducer` to a topic that is auto-created on the first send, then
//! receives them with its `DefaultMQPushConsumer` (clustering, subscription "*") and checks bodies, tags and
//! keys. Every child process is killed by a Drop guard (and by a watchdog if the whole run hangs).
//!
//! Output: one `ok - …` / `FAILED - …` line per check and a final `N passed, M failed` line; the exit code is
//! 0 only when every check passed. On failure the temp dir (with `namesrv.log`, `n1.log` … `n3.log`) is kept
//! and printed (`RAFTMQ_INTEROP_KEEP=1` keeps it on success too). `RAFTMQ_INTEROP_CLIENT_LOG=<tracing filter>`
//! (e.g. `debug`) turns on the client's own logs; the brokers inherit the environment, so `RAFTMQ_LOG=debug`
//! makes their log files verbose.
//! Run through `scripts/interop-rust.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rocketmq_client_rust::{
    ClientResult, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, DefaultMQProducer,
    DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently, SendStatus,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;
use rocketmq_runtime::RuntimeOwner;

/// Messages sent and expected back.
const MESSAGES: usize = 40;
/// Per-send timeout handed to the client, in milliseconds.
const SEND_TIMEOUT_MS: u64 = 3000;
/// How long the push consumer may take to deliver everything.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(60);
/// How long the cluster may take to elect and register a leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// Hard limit for the whole run; the watchdog kills the cluster and exits non-zero after it.
const WATCHDOG: Duration = Duration::from_secs(300);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free loopback port")
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Child processes shared between the cluster guard and the watchdog thread.
type Children = Arc<Mutex<Vec<(String, Child)>>>;

fn kill_all(children: &Children) {
    let mut list = children.lock().unwrap_or_else(|e| e.into_inner());
    for (_, child) in list.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    list.clear();
}

/// A running nameserver and 3-node broker group; dropping it kills every process it started.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    namesrv: String,
    children: Children,
}

impl Cluster {
    fn start(bin: &Path, children: Children) -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("raftmq-interop-rust-{}-{}", std::process::id(), now_ms()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let namesrv = format!("127.0.0.1:{}", free_port());
        let cluster = Cluster { bin: bin.to_path_buf(), dir: dir.clone(), namesrv: namesrv.clone(), children };
        cluster.spawn("namesrv", &["namesrv", "--listen", &namesrv, "--log-file", &cluster.path("namesrv.log")])?;
        let peers: Vec<(u32, String, String)> =
            (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()))).collect();
        for (id, _, _) in &peers {
            let mut toml = format!(
                "brokerName = \"broker-a\"\nnodeId = {id}\nnamesrvAddr = \"{namesrv}\"\nstorePathRootDir = \"{}\"\n\
                 mappedFileSizeCommitLog = 8388608\nbootstrap = {}\n",
                cluster.path(&format!("n{id}")),
                *id == 1
            );
            for (pid, client, raft) in &peers {
                toml.push_str(&format!("[[peers]]\nid = {pid}\nraftAddr = \"{raft}\"\nclientAddr = \"{client}\"\n"));
            }
            let config = cluster.path(&format!("n{id}.toml"));
            std::fs::write(&config, toml).map_err(|e| format!("write {config}: {e}"))?;
            cluster.spawn(&format!("n{id}"), &["broker", "--config", &config, "--log-file", &cluster.path(&format!("n{id}.log"))])?;
        }
        Ok(cluster)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn spawn(&self, name: &str, args: &[&str]) -> Result<(), String> {
        let child = Command::new(&self.bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {} {name}: {e}", self.bin.display()))?;
        self.children.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), child));
        Ok(())
    }

    /// Waits until `raftmq admin leader` names a leader (it asks the nameserver, so the leader is registered).
    fn wait_leader(&self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(dead) = self.exited_child() {
                return Err(format!("{dead} exited early"));
            }
            match self.admin_leader(Duration::from_secs(5)) {
                Ok(leader) if leader.starts_with('n') => return Ok(leader),
                Ok(other) => last = other,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("no leader within {timeout:?} (last admin output: {})", last.trim()))
    }

    /// One `raftmq admin --namesrv ADDR leader` call, killed if it takes longer than `limit`.
    fn admin_leader(&self, limit: Duration) -> Result<String, String> {
        let mut child = Command::new(&self.bin)
            .args(["admin", "--namesrv", &self.namesrv, "leader"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn admin: {e}"))?;
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("admin leader did not answer within {limit:?}"));
                }
                Err(e) => return Err(format!("wait admin: {e}")),
            }
        }
        let out = child.wait_with_output().map_err(|e| format!("admin output: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("admin leader: {} {stdout} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn exited_child(&self) -> Option<String> {
        let mut list = self.children.lock().unwrap_or_else(|e| e.into_inner());
        list.iter_mut().find_map(|(name, c)| match c.try_wait() {
            Ok(Some(status)) => Some(format!("{name} ({status})")),
            _ => None,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        kill_all(&self.children);
    }
}

/// One sent message: body → (tags, keys).
type Expected = BTreeMap<String, (String, String)>;

/// What the push consumer saw: body → (tags, keys, delivery count), plus how many deliveries came back
/// through the group's %RETRY% topic (reconsumeTimes > 0; the client sends a message back with
/// CONSUMER_SEND_MSG_BACK when its own blocking pool rejects a consume task).
#[derive(Default)]
struct Received {
    by_body: BTreeMap<String, (Option<String>, Option<String>, usize)>,
    redelivered: usize,
}

struct Listener {
    received: Arc<Mutex<Received>>,
}

impl MessageListenerConcurrently for Listener {
    fn consume_message(&self, msgs: &[&MessageExt], _context: &ConsumeConcurrentlyContext) -> ClientResult<ConsumeConcurrentlyStatus> {
        let mut r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        for m in msgs {
            let body = m.body().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let inner = m.message_inner();
            let tags = inner.tags().map(str::to_string);
            let keys = inner.keys().map(|k| k.join(" "));
            let entry = r.by_body.entry(body).or_insert((tags.clone(), keys.clone(), 0));
            entry.0 = tags;
            entry.1 = keys;
            entry.2 += 1;
            if m.reconsume_times() > 0 {
                r.redelivered += 1;
            }
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// Collects check outcomes and prints one line per check.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, outcome: Result<String, String>) -> bool {
        match outcome {
            Ok(detail) => {
                self.passed += 1;
                println!("ok - {name}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") });
                true
            }
            Err(why) => {
                self.failed += 1;
                println!("FAILED - {name}: {why}");
                false
            }
        }
    }
}

fn main() {
    let bin = match std::env::var("RAFTMQ_BIN") {
        Ok(b) if Path::new(&b).is_absolute() && Path::new(&b).is_file() => PathBuf::from(b),
        other => {
            eprintln!("RAFTMQ_BIN must be the absolute path of the raftmq binary (got {other:?})");
            println!("0 passed, 1 failed");
            std::process::exit(2);
        }
    };
    let children: Children = Arc::default();
    {
        let children = children.clone();
        std::thread::spawn(move || {
            std::thread::sleep(WATCHDOG);
            println!("FAILED - watchdog: the run did not finish within {WATCHDOG:?}; killing the cluster");
            kill_all(&children);
            println!("0 passed, 1 failed");
            std::process::exit(3);
        });
    }

    let mut report = Report::default();
    let dir = run(&bin, children, &mut report);
    let keep = std::env::var_os("RAFTMQ_INTEROP_KEEP").is_some_and(|v| !v.is_empty());
    if report.failed == 0 && !keep {
        if let Some(dir) = &dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    } else if let Some(dir) = &dir {
        println!("cluster logs and data kept in {}", dir.display());
    }
    println!("{} passed, {} failed", report.passed, report.failed);
    std::process::exit(if report.failed == 0 { 0 } else { 1 });
}

/// Runs every check; returns the cluster's temp dir (the cluster itself is killed before returning).
fn run(bin: &Path, children: Children, report: &mut Report) -> Option<PathBuf> {
    let cluster = match Cluster::start(bin, children) {
        Ok(c) => c,
        Err(e) => {
            report.check("start nameserver and 3 brokers", Err(e));
            return None;
        }
    };
    let dir = cluster.dir.clone();
    println!("# cluster in {} (namesrv {})", dir.display(), cluster.namesrv);
    if !report.check("cluster elects and registers a leader", cluster.wait_leader(LEADER_DEADLINE).map(|l| format!("leader {l}"))) {
        return Some(dir);
    }

    let client_log = std::env::var("RAFTMQ_INTEROP_CLIENT_LOG").ok().filter(|f| !f.is_empty());
    let telemetry = match client_log {
        Some(filter) => {
            let mut cfg = rocketmq_observability::TelemetryBootstrapConfig::default();
            cfg.logging.enabled = true;
            cfg.logging.filter = filter;
            cfg.logging.console.enabled = true;
            rocketmq_observability::install_global(&cfg).unwrap_or_else(|e| {
                eprintln!("client logging not installed: {e}");
                TelemetryRuntimeGuard::noop()
            })
        }
        None => TelemetryRuntimeGuard::noop(),
    };
    let owner = match RuntimeOwner::new() {
        Ok(o) => o,
        Err(e) => {
            report.check("create client runtime", Err(format!("RuntimeOwner::new: {e}")));
            return Some(dir);
        }
    };
    let client_runtime = match ClientRuntime::try_new(
        owner.root_context().component("raftmq-interop"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    ) {
        Ok(rt) => rt,
        Err(e) => {
            report.check("create client runtime", Err(format!("ClientRuntime::try_new: {e}")));
            return Some(dir);
        }
    };

    let namesrv = cluster.namesrv.clone();
    let client_report = owner.block_on(async {
        exercise(&namesrv, client_runtime.clone(), report).await;
        tokio::time::timeout(Duration::from_secs(20), client_runtime.shutdown()).await
    });
    match client_report {
        Ok(r) if r.is_healthy() => {}
        Ok(r) => eprintln!("# note: client runtime shutdown report not healthy: {}", r.to_json()),
        Err(_) => eprintln!("# note: client runtime shutdown did not finish within 20s"),
    }
    drop(cluster);
    // The runtime's own shutdown is not a protocol check; report it only as a note.
    match owner.shutdown_runtime_blocking_with_timeout(Duration::from_secs(10)) {
        Ok(r) if !r.is_healthy() => eprintln!("# note: runtime shutdown report not healthy: {}", r.to_json()),
        Err(e) => eprintln!("# note: runtime shutdown: {e}"),
        Ok(_) => {}
    }
    let _ = telemetry.shutdown();
    Some(dir)
}

/// The producer and push-consumer checks, on the client's runtime.
async fn exercise(namesrv: &str, client_runtime: Arc<ClientRuntime>, report: &mut Report) {
    let run_id = now_ms() % 1_000_000_000;
    let topic = format!("RustInteropTopic{run_id}");
    let mut expected: Expected = BTreeMap::new();

    // --- producer
    let mut producer = DefaultMQProducer::builder(client_runtime.clone())
        .producer_group(format!("PID_rust_interop_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .build();
    let started = tokio::time::timeout(Duration::from_secs(30), producer.start()).await;
    let started = match started {
        Ok(Ok(())) => Ok(String::new()),
        Ok(Err(e)) => Err(format!("start: {e}")),
        Err(_) => Err("start did not finish within 30s".into()),
    };
    if report.check("producer starts", started) {
        let mut errors = Vec::new();
        let mut queues = BTreeSet::new();
        for i in 0..MESSAGES {
            let body = format!("rust-interop-{run_id}-{i}");
            let tags = if i % 2 == 0 { "TagA" } else { "TagB" }.to_string();
            let keys = format!("key-{i}");
            let msg = Message::builder()
                .topic(topic.as_str())
                .tags(tags.as_str())
                .key(keys.as_str())
                .body_slice(body.as_bytes())
                .build_unchecked();
            let sent =
                tokio::time::timeout(Duration::from_millis(SEND_TIMEOUT_MS * 4), producer.send_with_timeout(msg, SEND_TIMEOUT_MS)).await;
            match sent {
                Ok(Ok(Some(r))) if r.send_status == SendStatus::SendOk => {
                    if let Some(q) = &r.message_queue {
                        queues.insert(format!("{}:{}", q.broker_name(), q.queue_id()));
                    }
                    expected.insert(body, (tags, keys));
                }
                Ok(Ok(Some(r))) => errors.push(format!("#{i}: status {:?}", r.send_status)),
                Ok(Ok(None)) => errors.push(format!("#{i}: no SendResult")),
                Ok(Err(e)) => errors.push(format!("#{i}: {e}")),
                Err(_) => errors.push(format!("#{i}: send did not return within {}ms", SEND_TIMEOUT_MS * 4)),
            }
        }
        let outcome = if errors.is_empty() {
            Ok(format!("{MESSAGES} × SEND_OK to {topic} over queues {queues:?}"))
        } else {
            Err(format!("{} of {MESSAGES} sends failed; first: {}", errors.len(), errors[..errors.len().min(3)].join("; ")))
        };
        report.check(&format!("send {MESSAGES} messages (topic auto-created on first send)"), outcome);
    }
    if tokio::time::timeout(Duration::from_secs(15), producer.shutdown()).await.is_err() {
        eprintln!("# note: producer shutdown did not finish within 15s");
    }
    if expected.is_empty() {
        report.check("push consumer receives", Err("nothing was sent successfully, so nothing to receive".into()));
        return;
    }

    // --- push consumer
    let received = Arc::new(Mutex::new(Received::default()));
    let mut consumer = DefaultMQPushConsumer::builder(client_runtime)
        .consumer_group(format!("CID_rust_interop_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .build();
    let started = async {
        consumer.subscribe(topic.as_str(), "*").await?;
        consumer.register_message_listener_concurrently(Listener { received: received.clone() });
        consumer.start().await
    };
    let started = match tokio::time::timeout(Duration::from_secs(30), started).await {
        Ok(Ok(())) => Ok(String::new()),
        Ok(Err(e)) => Err(format!("subscribe/start: {e}")),
        Err(_) => Err("subscribe/start did not finish within 30s".into()),
    };
    if report.check("push consumer starts (clustering, subscribe \"*\")", started) {
        let begin = Instant::now();
        let deadline = begin + RECEIVE_DEADLINE;
        loop {
            let have = {
                let r = received.lock().unwrap_or_else(|e| e.into_inner());
                expected.keys().filter(|b| r.by_body.contains_key(*b)).count()
            };
            if have == expected.len() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let elapsed = begin.elapsed();
        let r = received.lock().unwrap_or_else(|e| e.into_inner());
        let missing: Vec<&String> = expected.keys().filter(|b| !r.by_body.contains_key(*b)).collect();
        let outcome = if missing.is_empty() {
            let deliveries: usize = r.by_body.values().map(|v| v.2).sum();
            Ok(format!(
                "{} messages in {:.1}s ({deliveries} deliveries, {} redelivered via %RETRY%)",
                expected.len(),
                elapsed.as_secs_f64(),
                r.redelivered
            ))
        } else {
            Err(format!(
                "{} of {} never delivered within {RECEIVE_DEADLINE:?} (received {} distinct bodies); e.g. {:?}",
                missing.len(),
                expected.len(),
                r.by_body.len(),
                &missing[..missing.len().min(3)]
            ))
        };
        report.check(&format!("push consumer receives all {} messages", expected.len()), outcome);

        let mut mismatches = Vec::new();
        for (body, (tags, keys)) in &expected {
            if let Some((got_tags, got_keys, _)) = r.by_body.get(body) {
                if got_tags.as_deref() != Some(tags.as_str()) || got_keys.as_deref() != Some(keys.as_str()) {
                    mismatches.push(format!("{body}: got tags {got_tags:?} keys {got_keys:?}, sent {tags:?} {keys:?}"));
                }
            }
        }
        let unexpected: Vec<&String> = r.by_body.keys().filter(|b| !expected.contains_key(*b)).collect();
        let outcome = if mismatches.is_empty() && unexpected.is_empty() {
            Ok("bodies, tags and keys match".into())
        } else if !mismatches.is_empty() {
            Err(format!("{} mismatches; first: {}", mismatches.len(), mismatches[..mismatches.len().min(3)].join("; ")))
        } else {
            Err(format!("{} unexpected bodies, e.g. {:?}", unexpected.len(), &unexpected[..unexpected.len().min(3)]))
        };
        report.check("delivered bodies, tags and keys match what was sent", outcome);
    }
    if tokio::time::timeout(Duration::from_secs(15), consumer.shutdown()).await.is_err() {
        eprintln!("# note: consumer shutdown did not finish within 15s");
    }
}
