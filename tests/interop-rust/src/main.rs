//! Interop test with the unmodified crates.io client `rocketmq-client-rust` =1.0.0.
//!
//! Starts a real raftmq cluster (a nameserver and a 3-node Raft broker group) from the binary named by
//! `$RAFTMQ_BIN` on free loopback ports with its data in a fresh temp dir, sends `MESSAGES` messages (with tags
//! and keys) with the client's `DefaultMQProducer` to a topic that is auto-created on the first send, then
//! receives them with its `DefaultMQPushConsumer` (clustering, subscription "*") and checks bodies, tags and
//! keys. Every child process is killed by a Drop guard (and by a watchdog if the whole run hangs).
//!
//! Then a second push consumer group with `MessageSelector::by_sql("TAGS = 'TagA'")` must get exactly the
//! TagA messages: the broker evaluates the SQL92 selector on the TAGS property at pull time.
//!
//! Then transactions, with the client's `TransactionMQProducer` and a `TransactionListener` as an application
//! would use them, on a second topic with one queue (auto-created with the producer's `defaultTopicQueueNums`
//! of 1) read by a second push consumer: a transaction committed by `execute_local_transaction` is delivered
//! exactly once with its body, tags, keys and msgId; a rolled-back one is never delivered (checked once a
//! committed marker sent after it on the same queue has arrived, plus a margin); one left `Unknown` stays
//! invisible until the broker checks back (CHECK_TRANSACTION_STATE, 39), `check_local_transaction` commits it,
//! and it is then delivered exactly once. The brokers run with `transactionTimeOut` and
//! `transactionCheckInterval` of 2 s (RocketMQ: 6 s and 60 s) so that the check-back comes within the run.
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
    DefaultMQPushConsumer, LocalTransactionState, MQPushConsumer, MessageListenerConcurrently, MessageSelector, SendStatus,
    TransactionListener, TransactionMQProducer,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_model::common::message::MessageTrait;
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
/// The brokers' `transactionTimeOut`: a pending transaction is first checked back this long after its half
/// message (RocketMQ's default is 6 s).
const TXN_TIMEOUT_MS: u64 = 2000;
/// The brokers' `transactionCheckInterval`: later check-backs of a still-undecided transaction (default 60 s).
const TXN_CHECK_INTERVAL_MS: u64 = 2000;
/// How long the transactional messages that should arrive may take (the check-back included).
const TXN_DEADLINE: Duration = Duration::from_secs(30);
/// How long to keep listening once they have all arrived, for duplicates and for the rolled-back message: more
/// than one check interval plus the broker's 1 s check tick, so a check-back whose END was not taken, or a
/// second commit, would show.
const TXN_MARGIN: Duration = Duration::from_millis(TXN_CHECK_INTERVAL_MS + 2000);
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
                 mappedFileSizeCommitLog = 8388608\ndiskMaxUsedSpaceRatio = 0.99\nbootstrap = {}\n\
                 transactionTimeOut = {TXN_TIMEOUT_MS}\ntransactionCheckInterval = {TXN_CHECK_INTERVAL_MS}\n",
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
        exercise_transactions(&namesrv, client_runtime.clone(), report).await;
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
    let mut consumer = DefaultMQPushConsumer::builder(client_runtime.clone())
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
    exercise_sql(namesrv, client_runtime, &topic, &expected, run_id, report).await;
}

// --- SQL92 selector

/// A second push consumer group subscribes to the same topic with `MessageSelector::by_sql("TAGS = 'TagA'")`
/// (heartbeat subscription with expressionType SQL92; the client sends CHECK_CLIENT_CONFIG first): it must
/// receive every TagA message and no TagB message, the broker having filtered on the TAGS property.
async fn exercise_sql(namesrv: &str, client_runtime: Arc<ClientRuntime>, topic: &str, expected: &Expected, run_id: u128, report: &mut Report) {
    let wanted: BTreeSet<&String> = expected.iter().filter(|(_, (tags, _))| tags == "TagA").map(|(b, _)| b).collect();
    let received = Arc::new(Mutex::new(Received::default()));
    let mut consumer = DefaultMQPushConsumer::builder(client_runtime)
        .consumer_group(format!("CID_rust_interop_sql_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .build();
    let started = async {
        consumer.subscribe_with_selector(topic, Some(MessageSelector::by_sql("TAGS = 'TagA'"))).await?;
        consumer.register_message_listener_concurrently(Listener { received: received.clone() });
        consumer.start().await
    };
    let started = match tokio::time::timeout(Duration::from_secs(30), started).await {
        Ok(Ok(())) => Ok(String::new()),
        Ok(Err(e)) => Err(format!("subscribe/start: {e}")),
        Err(_) => Err("subscribe/start did not finish within 30s".into()),
    };
    if report.check("push consumer starts with MessageSelector::by_sql(\"TAGS = 'TagA'\")", started) {
        let deadline = Instant::now() + RECEIVE_DEADLINE;
        loop {
            let have = received.lock().unwrap_or_else(|e| e.into_inner()).by_body.keys().filter(|b| wanted.contains(b)).count();
            if have == wanted.len() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A little longer, so that a TagB message the broker let through would show.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = received.lock().unwrap_or_else(|e| e.into_inner());
        let got: BTreeSet<&String> = r.by_body.keys().collect();
        let outcome = if got == wanted {
            Ok(format!("{} TagA messages, none of the {} TagB", wanted.len(), expected.len() - wanted.len()))
        } else {
            let missing = wanted.difference(&got).count();
            let extra: Vec<&&String> = got.difference(&wanted).collect();
            Err(format!("{missing} TagA messages missing; {} unexpected, e.g. {:?}", extra.len(), &extra[..extra.len().min(3)]))
        };
        report.check("SQL92 consumer receives exactly the TagA messages", outcome);
    }
    if tokio::time::timeout(Duration::from_secs(15), consumer.shutdown()).await.is_err() {
        eprintln!("# note: SQL92 consumer shutdown did not finish within 15s");
    }
}

// --- transactions

/// The transactions sent, told apart by their bodies (`rust-txn-<run>-<case>`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum TxnCase {
    /// `execute_local_transaction` commits.
    Commit,
    /// `execute_local_transaction` rolls back.
    Rollback,
    /// `execute_local_transaction` answers `Unknown`; the check-back (`check_local_transaction`) commits.
    Unknown,
    /// Committed after the rollback, on the same queue: once it has arrived, the rollback would have too.
    Marker,
}

impl TxnCase {
    fn name(self) -> &'static str {
        match self {
            TxnCase::Commit => "commit",
            TxnCase::Rollback => "rollback",
            TxnCase::Unknown => "unknown",
            TxnCase::Marker => "marker",
        }
    }

    fn of_body(body: &str) -> Option<TxnCase> {
        [TxnCase::Commit, TxnCase::Rollback, TxnCase::Unknown, TxnCase::Marker]
            .into_iter()
            .find(|c| body.starts_with("rust-txn-") && body.ends_with(&format!("-{}", c.name())))
    }

    /// What the local transaction reports right after the half message.
    fn execute(self) -> LocalTransactionState {
        match self {
            TxnCase::Commit | TxnCase::Marker => LocalTransactionState::CommitMessage,
            TxnCase::Rollback => LocalTransactionState::RollbackMessage,
            TxnCase::Unknown => LocalTransactionState::Unknown,
        }
    }

    /// What a check-back is answered (only `Unknown` should ever be checked back).
    fn check(self) -> LocalTransactionState {
        match self {
            TxnCase::Unknown => LocalTransactionState::CommitMessage,
            other => other.execute(),
        }
    }
}

/// One CHECK_TRANSACTION_STATE as the listener saw it.
struct TxnCheck {
    body: String,
    at: Instant,
    topic: String,
    tags: Option<String>,
    keys: Option<String>,
    transaction_id: Option<String>,
    check_times: Option<String>,
}

/// What the transaction listener was asked: executions per body and every check-back.
#[derive(Default)]
struct TxnLog {
    executed: BTreeMap<String, usize>,
    checks: Vec<TxnCheck>,
}

struct TxnListener {
    log: Arc<Mutex<TxnLog>>,
}

impl TransactionListener for TxnListener {
    fn execute_local_transaction(&self, msg: &dyn MessageTrait, _arg: Option<&(dyn std::any::Any + Send + Sync)>) -> LocalTransactionState {
        let body = msg.get_body().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        let state = TxnCase::of_body(&body).map_or(LocalTransactionState::Unknown, TxnCase::execute);
        *self.log.lock().unwrap_or_else(|e| e.into_inner()).executed.entry(body).or_insert(0) += 1;
        state
    }

    fn check_local_transaction(&self, msg: &MessageExt) -> LocalTransactionState {
        let body = msg.body().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let state = TxnCase::of_body(&body).map_or(LocalTransactionState::Unknown, TxnCase::check);
        let inner = msg.message_inner();
        let check = TxnCheck {
            at: Instant::now(),
            topic: msg.topic().to_string(),
            tags: inner.tags().map(str::to_string),
            keys: inner.keys().map(|k| k.join(" ")),
            transaction_id: MessageTrait::transaction_id(msg).map(|t| t.to_string()),
            check_times: msg.properties().get("TRANSACTION_CHECK_TIMES").map(|v| v.to_string()),
            body,
        };
        self.log.lock().unwrap_or_else(|e| e.into_inner()).checks.push(check);
        state
    }
}

/// A transaction the producer sent: what was sent and what the client reported.
struct SentTxn {
    body: String,
    tags: String,
    keys: String,
    at: Instant,
    /// The client's message id (`UNIQ_KEY`), which the consumer sees as the property `UNIQ_KEY`.
    msg_id: String,
    transaction_id: Option<String>,
    queue: String,
}

/// One delivery of a transactional message: tags, keys, `UNIQ_KEY`, count, first arrival.
struct TxnSeen {
    tags: Option<String>,
    keys: Option<String>,
    uniq_key: Option<String>,
    count: usize,
    first_at: Instant,
}

struct TxnConsumerListener {
    seen: Arc<Mutex<BTreeMap<String, TxnSeen>>>,
}

impl MessageListenerConcurrently for TxnConsumerListener {
    fn consume_message(&self, msgs: &[&MessageExt], _context: &ConsumeConcurrentlyContext) -> ClientResult<ConsumeConcurrentlyStatus> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for m in msgs {
            let body = m.body().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let inner = m.message_inner();
            let entry = seen.entry(body).or_insert(TxnSeen { tags: None, keys: None, uniq_key: None, count: 0, first_at: Instant::now() });
            entry.tags = inner.tags().map(str::to_string);
            entry.keys = inner.keys().map(|k| k.join(" "));
            entry.uniq_key = m.properties().get("UNIQ_KEY").map(|v| v.to_string());
            entry.count += 1;
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// Sends one transaction with `send_message_in_transaction` (the listener decides it from the body).
async fn send_txn(producer: &TransactionMQProducer, topic: &str, run_id: u128, case: TxnCase) -> Result<SentTxn, String> {
    let body = format!("rust-txn-{run_id}-{}", case.name());
    let tags = format!("Txn{}", case.name());
    let keys = format!("txn-key-{}", case.name());
    let msg = Message::builder().topic(topic).tags(tags.as_str()).key(keys.as_str()).body_slice(body.as_bytes()).build_unchecked();
    let at = Instant::now();
    let limit = Duration::from_millis(SEND_TIMEOUT_MS * 4);
    let r = match tokio::time::timeout(limit, producer.send_message_in_transaction(msg, None::<()>)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("{}: {e}", case.name())),
        Err(_) => return Err(format!("{}: send_message_in_transaction did not return within {limit:?}", case.name())),
    };
    let Some(sr) = r.send_result else {
        return Err(format!("{}: no SendResult", case.name()));
    };
    if sr.send_status != SendStatus::SendOk {
        return Err(format!("{}: half message status {:?}", case.name(), sr.send_status));
    }
    if r.local_transaction_state != Some(case.execute()) {
        return Err(format!(
            "{}: local transaction state {:?}, the listener answered {:?}",
            case.name(),
            r.local_transaction_state,
            case.execute()
        ));
    }
    Ok(SentTxn {
        body,
        tags,
        keys,
        at,
        msg_id: sr.msg_id.map(|m| m.to_string()).unwrap_or_default(),
        transaction_id: sr.transaction_id,
        queue: sr.message_queue.map(|q| format!("{}:{}", q.broker_name(), q.queue_id())).unwrap_or_default(),
    })
}

/// Waits until every body in `bodies` has been delivered, or `deadline`.
async fn wait_delivered(seen: &Mutex<BTreeMap<String, TxnSeen>>, bodies: &[&str], deadline: Instant) {
    loop {
        let all = {
            let s = seen.lock().unwrap_or_else(|e| e.into_inner());
            bodies.iter().all(|b| s.contains_key(*b))
        };
        if all || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A committed transaction was delivered exactly once, intact; `Ok` describes it.
fn delivered_once(seen: &BTreeMap<String, TxnSeen>, sent: &SentTxn) -> Result<String, String> {
    let Some(s) = seen.get(&sent.body) else {
        return Err(format!("{} was never delivered", sent.body));
    };
    if s.count != 1 {
        return Err(format!("{} was delivered {} times", sent.body, s.count));
    }
    if s.tags.as_deref() != Some(sent.tags.as_str()) || s.keys.as_deref() != Some(sent.keys.as_str()) {
        return Err(format!("{}: got tags {:?} keys {:?}, sent {:?} {:?}", sent.body, s.tags, s.keys, sent.tags, sent.keys));
    }
    if s.uniq_key.as_deref() != Some(sent.msg_id.as_str()) {
        return Err(format!("{}: delivered with UNIQ_KEY {:?}, the producer's msgId was {:?}", sent.body, s.uniq_key, sent.msg_id));
    }
    Ok(format!("delivered once {:.1}s after the send, body/tags/keys/msgId intact", (s.first_at - sent.at).as_secs_f64()))
}

/// The transaction checks: commit, rollback, and unknown resolved by the broker's check-back.
async fn exercise_transactions(namesrv: &str, client_runtime: Arc<ClientRuntime>, report: &mut Report) {
    let run_id = now_ms() % 1_000_000_000;
    let topic = format!("RustInteropTxn{run_id}");
    let log = Arc::new(Mutex::new(TxnLog::default()));
    let mut producer = TransactionMQProducer::builder(client_runtime.clone())
        .producer_group(format!("PID_rust_interop_txn_{run_id}"))
        .name_server_addr(namesrv.to_string())
        // The topic is auto-created by the first half message with one queue, so that the marker lands behind
        // the rolled-back transaction on the same queue.
        .default_topic_queue_nums(1)
        .transaction_listener(TxnListener { log: log.clone() })
        .build();
    let started = match tokio::time::timeout(Duration::from_secs(30), producer.start()).await {
        Ok(Ok(())) => Ok(String::new()),
        Ok(Err(e)) => Err(format!("start: {e}")),
        Err(_) => Err("start did not finish within 30s".into()),
    };
    if !report.check("transaction producer starts (TransactionMQProducer + TransactionListener)", started) {
        return;
    }

    // The committed transaction first (it creates the topic), then a consumer that is live before the rest.
    let mut errors = Vec::new();
    let mut sent: BTreeMap<TxnCase, SentTxn> = BTreeMap::new();
    match send_txn(&producer, &topic, run_id, TxnCase::Commit).await {
        Ok(s) => {
            sent.insert(TxnCase::Commit, s);
        }
        Err(e) => errors.push(e),
    }
    let seen: Arc<Mutex<BTreeMap<String, TxnSeen>>> = Arc::default();
    let mut consumer = DefaultMQPushConsumer::builder(client_runtime)
        .consumer_group(format!("CID_rust_interop_txn_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .build();
    let started = async {
        consumer.subscribe(topic.as_str(), "*").await?;
        consumer.register_message_listener_concurrently(TxnConsumerListener { seen: seen.clone() });
        consumer.start().await
    };
    let started = match tokio::time::timeout(Duration::from_secs(30), started).await {
        Ok(Ok(())) => Ok(String::new()),
        Ok(Err(e)) => Err(format!("subscribe/start: {e}")),
        Err(_) => Err("subscribe/start did not finish within 30s".into()),
    };
    let consuming = report.check(&format!("push consumer starts on the transactional topic {topic}"), started);
    if consuming {
        if let Some(c) = sent.get(&TxnCase::Commit) {
            wait_delivered(&seen, &[c.body.as_str()], Instant::now() + TXN_DEADLINE).await;
        }
    }
    for case in [TxnCase::Unknown, TxnCase::Rollback, TxnCase::Marker] {
        match send_txn(&producer, &topic, run_id, case).await {
            Ok(s) => {
                sent.insert(case, s);
            }
            Err(e) => errors.push(e),
        }
    }
    let executed = log.lock().unwrap_or_else(|e| e.into_inner()).executed.clone();
    for s in sent.values() {
        if executed.get(&s.body) != Some(&1) {
            errors.push(format!("{}: execute_local_transaction ran {} times", s.body, executed.get(&s.body).unwrap_or(&0)));
        }
    }
    let queues: BTreeSet<&str> = sent.values().map(|s| s.queue.as_str()).collect();
    let outcome = if errors.is_empty() {
        Ok(format!(
            "4 half messages SEND_OK to queue(s) {queues:?}, execute_local_transaction ran once each and its state came back \
             (commit, unknown, rollback, commit)"
        ))
    } else {
        Err(errors.join("; "))
    };
    report.check("send_message_in_transaction ×4 (half message, local transaction, END_TRANSACTION)", outcome);
    if !consuming || sent.is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(15), consumer.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(15), producer.shutdown()).await;
        return;
    }

    let awaited: Vec<&str> =
        [TxnCase::Commit, TxnCase::Unknown, TxnCase::Marker].iter().filter_map(|c| sent.get(c)).map(|s| s.body.as_str()).collect();
    wait_delivered(&seen, &awaited, Instant::now() + TXN_DEADLINE).await;
    tokio::time::sleep(TXN_MARGIN).await;
    let outcomes = {
        let seen_now = seen.lock().unwrap_or_else(|e| e.into_inner());
        let log_now = log.lock().unwrap_or_else(|e| e.into_inner());
        judge_transactions(&topic, &sent, &seen_now, &log_now)
    };
    for (name, outcome) in outcomes {
        report.check(name, outcome);
    }

    if tokio::time::timeout(Duration::from_secs(15), consumer.shutdown()).await.is_err() {
        eprintln!("# note: transactional consumer shutdown did not finish within 15s");
    }
    if tokio::time::timeout(Duration::from_secs(15), producer.shutdown()).await.is_err() {
        eprintln!("# note: transaction producer shutdown did not finish within 15s");
    }
}

/// The three transaction checks, judged from what was sent, delivered and checked back.
fn judge_transactions(
    topic: &str,
    sent: &BTreeMap<TxnCase, SentTxn>,
    seen_now: &BTreeMap<String, TxnSeen>,
    log_now: &TxnLog,
) -> Vec<(&'static str, Result<String, String>)> {
    let checks_of = |body: &str| log_now.checks.iter().filter(|c| c.body == body).collect::<Vec<_>>();
    let mut outcomes = Vec::new();

    // 1. commit
    let outcome = match sent.get(&TxnCase::Commit) {
        None => Err("not sent".into()),
        Some(s) => delivered_once(seen_now, s).and_then(|d| match checks_of(&s.body).len() {
            0 => Ok(format!("{d}; never checked back")),
            n => Err(format!("{d}, but it was checked back {n} times although its END_TRANSACTION (commit) was sent")),
        }),
    };
    outcomes.push(("commit: execute_local_transaction commits → delivered exactly once", outcome));

    // 2. rollback
    let outcome = match (sent.get(&TxnCase::Rollback), sent.get(&TxnCase::Marker)) {
        (Some(rb), Some(marker)) => {
            let expected: BTreeSet<&str> = sent.iter().filter(|(c, _)| **c != TxnCase::Rollback).map(|(_, s)| s.body.as_str()).collect();
            let unexpected: Vec<&String> = seen_now.keys().filter(|b| !expected.contains(b.as_str())).collect();
            if let Some(s) = seen_now.get(&rb.body) {
                Err(format!("the rolled-back {} was delivered {} times", rb.body, s.count))
            } else if !unexpected.is_empty() {
                Err(format!("unexpected deliveries on {topic}: {unexpected:?}"))
            } else if let Err(e) = delivered_once(seen_now, marker) {
                Err(format!("the marker committed after the rollback: {e}"))
            } else if !checks_of(&rb.body).is_empty() {
                Err(format!(
                    "never delivered, but checked back {} times although its END_TRANSACTION (rollback) was sent",
                    checks_of(&rb.body).len()
                ))
            } else {
                let marker_at = seen_now.get(&marker.body).map(|s| s.first_at).unwrap_or_else(Instant::now);
                Ok(format!(
                    "not delivered, though the marker committed after it on the same queue arrived {:.1}s before the end of the \
                     wait; never checked back",
                    marker_at.elapsed().as_secs_f64()
                ))
            }
        }
        _ => Err("the rollback or the marker was not sent".into()),
    };
    outcomes.push(("rollback: execute_local_transaction rolls back → never delivered", outcome));

    // 3. unknown, resolved by the check-back
    let outcome = match sent.get(&TxnCase::Unknown) {
        None => Err("not sent".into()),
        Some(s) => {
            let checks = checks_of(&s.body);
            match checks.first() {
                None => Err(format!(
                    "no CHECK_TRANSACTION_STATE reached check_local_transaction within {:.0}s (delivered: {})",
                    s.at.elapsed().as_secs_f64(),
                    seen_now.contains_key(&s.body)
                )),
                Some(c) => {
                    let after_ms = (c.at - s.at).as_millis();
                    let first_seen = seen_now.get(&s.body).map(|d| d.first_at);
                    if checks.len() != 1 {
                        Err(format!("checked back {} times; the first answer (commit) should have ended it", checks.len()))
                    } else if after_ms + 100 < u128::from(TXN_TIMEOUT_MS) {
                        Err(format!("checked back {after_ms} ms after the send, before transactionTimeOut {TXN_TIMEOUT_MS} ms"))
                    } else if c.topic != topic || c.tags.as_deref() != Some(s.tags.as_str()) || c.keys.as_deref() != Some(s.keys.as_str()) {
                        Err(format!(
                            "the check-back's message: topic {:?} tags {:?} keys {:?}; sent {topic:?} {:?} {:?}",
                            c.topic, c.tags, c.keys, s.tags, s.keys
                        ))
                    } else if c.transaction_id.is_none() || c.transaction_id != s.transaction_id {
                        Err(format!("the check-back's transaction id {:?}, the send's {:?}", c.transaction_id, s.transaction_id))
                    } else if first_seen.is_some_and(|t| t < c.at) {
                        Err("delivered before the check-back decided it (a half message must be invisible)".into())
                    } else {
                        delivered_once(seen_now, s).map(|d| {
                            format!(
                                "checked back once {:.1}s after the send (TRANSACTION_CHECK_TIMES {}; real topic, body, tags, keys, \
                                 transaction id intact), invisible until then; {d}",
                                after_ms as f64 / 1000.0,
                                c.check_times.as_deref().unwrap_or("-")
                            )
                        })
                    }
                }
            }
        }
    };
    outcomes.push(("unknown: execute_local_transaction → Unknown, check-back commits → delivered exactly once", outcome));
    outcomes
}
