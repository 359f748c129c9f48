//! The queue workload: producers send unique integer values to the queues of one topic (key = queue id),
//! consumers poll assigned queues with their own offsets (Jepsen's `assign` semantics) and commit consumer
//! offsets, and a final drain reads every queue to its end. Every operation goes into the history as an
//! invocation and a completion.
//!
//! Error mapping is what the checker's soundness rests on: `fail` only where raftmq guarantees nothing was
//! appended (the client refused it, the connection was refused, or the broker answered a pre-append refusal
//! such as "not the leader"); everything uncertain (timeouts, broken connections, SYSTEM_ERROR "outcome
//! unknown") is `info`. Producers use the client's retries (`producer_retries`; the client's default unless the
//! run says otherwise): the client keeps a message's `UNIQ_KEY` across its retries, and the broker's replicated
//! de-duplication window must answer a retry of a stored message with the original's result, so a duplicate the
//! checker finds is the system's, not the harness's. With `producer_retries = 0` every send is one attempt.
//!
//! Scheduled sends: with `scheduled_share` > 0, that share of the producers' operations is one message (never
//! a batch) carrying a delay the seeded generator picks ([`scheduled_delay`]): mostly the 5.x timer property
//! `TIMER_DELAY_MS` (1–20 s), otherwise a `DELAY` level 1–3 (1 s, 5 s, 10 s in the default table). The send
//! op's `extra` says so (`{"delay_ms":…,"via":"timer"|"level",…}`); the broker acknowledges such a send with
//! an offset in its staging queue, which is recorded as `extra.staged_offset`, never as the message's offset
//! (`[null, v]` in the ok value). At the end the producers stop first and the consumers keep polling until
//! every scheduled send is due (+ [`SCHEDULED_TAIL`]); the final drain then also waits, if an acknowledged
//! scheduled message is still missing, until it must have been delivered (see [`final_drain`]). One watcher per
//! queue tails it without pause, so deliveries are observed promptly ([`watcher`]).
//!
//! Transactional sends: with `txn_share` > 0, that share of the producers' operations is one transactional
//! message (a half send, then commit, rollback or a "crash"; see [`crate::transactions`]). The watchers run then
//! too (a half message made visible too early must be seen while it is early), the producers' connections of
//! the transactional group answer check-backs until the consumers stop, and the consumers keep polling until
//! [`crate::transactions::TXN_TAIL`] after the last half send.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use raftmq_client::{ClientConfig, ClientError, Message, MessageQueue, Producer, ProducerOptions, PullConsumer, PullStatus};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::transactions::{self, TxnClient};

/// Workload settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Nameserver address.
    pub namesrv: String,
    /// Topic.
    pub topic: String,
    /// Broker group holding the topic.
    pub broker_name: String,
    /// Queues (keys 0..queues).
    pub queues: u32,
    /// Producer workers.
    pub producers: usize,
    /// Consumer workers.
    pub consumers: usize,
    /// Target operations per second over all workers.
    pub rate: f64,
    /// Largest batch (1 = no batches).
    pub batch_max: usize,
    /// Seed of every random choice of the generator.
    pub seed: u64,
    /// Body bytes per message (the value in decimal, padded).
    pub body_bytes: usize,
    /// Share of producer operations that are scheduled sends (0 = none).
    pub scheduled_share: f64,
    /// Share of producer operations that are transactional sends (0 = none).
    pub txn_share: f64,
    /// The producers' `retries` (0: one attempt per send).
    pub producer_retries: u32,
    /// Every broker node's client address (transactional producers connect to all of them).
    pub brokers: Vec<String>,
}

/// Shortest and longest timer delay of a scheduled send (ms).
pub const SCHEDULED_TIMER_MS: (u64, u64) = (1_000, 20_000);
/// Delay levels the workload uses and their delays in RocketMQ's default table (`1s 5s 10s …`), which the
/// harness's brokers keep (it sets no `messageDelayLevel`).
pub const SCHEDULED_LEVELS_MS: [u64; 3] = [1_000, 5_000, 10_000];
/// Share of scheduled sends that use a delay level rather than `TIMER_DELAY_MS`.
pub const SCHEDULED_LEVEL_SHARE: f64 = 0.25;
/// A watcher's pause after an empty poll answered sooner than this.
const WATCHER_BACKOFF: Duration = Duration::from_millis(50);
/// How long the consumers keep polling after the last scheduled send is due, before the final drain.
pub const SCHEDULED_TAIL: Duration = Duration::from_secs(2);

/// How a scheduled send asks for its delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// `TIMER_DELAY_MS` = ms.
    Timer(u64),
    /// `DELAY` = level (1-based), of [`SCHEDULED_LEVELS_MS`].
    Level(u32),
}

impl Delay {
    /// The delay in milliseconds.
    pub fn ms(self) -> u64 {
        match self {
            Delay::Timer(ms) => ms,
            Delay::Level(l) => SCHEDULED_LEVELS_MS[(l as usize).clamp(1, SCHEDULED_LEVELS_MS.len()) - 1],
        }
    }

    /// The send op's `extra`.
    pub fn extra(self) -> Value {
        match self {
            Delay::Timer(ms) => json!({"delay_ms": ms, "via": "timer"}),
            Delay::Level(l) => json!({"delay_ms": self.ms(), "via": "level", "level": l}),
        }
    }

    /// The message with the property that asks for this delay.
    pub fn apply(self, m: Message) -> Message {
        match self {
            Delay::Timer(ms) => m.with_property("TIMER_DELAY_MS", ms.to_string()),
            Delay::Level(l) => m.with_delay_level(l),
        }
    }
}

/// The generator's choice of delay for a scheduled send: a delay level 1–3 with probability
/// [`SCHEDULED_LEVEL_SHARE`], else a timer delay uniform in [`SCHEDULED_TIMER_MS`].
pub fn scheduled_delay(rng: &mut ChaCha8Rng) -> Delay {
    if rng.gen_bool(SCHEDULED_LEVEL_SHARE) {
        Delay::Level(rng.gen_range(1..=SCHEDULED_LEVELS_MS.len() as u32))
    } else {
        Delay::Timer(rng.gen_range(SCHEDULED_TIMER_MS.0..=SCHEDULED_TIMER_MS.1))
    }
}

/// Writes history ops as JSON Lines from one task, assigning `index` in write order and `time` from one
/// monotonic clock.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Value>,
    start: Instant,
}

impl Recorder {
    /// A recorder writing to `path`; returns it and the writer task (finishes when every clone is dropped).
    pub fn create(path: &Path) -> Result<(Recorder, tokio::task::JoinHandle<std::io::Result<u64>>)> {
        let file = std::fs::File::create(path)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            let mut index = 0u64;
            while let Some(mut op) = rx.blocking_recv() {
                op["index"] = json!(index);
                index += 1;
                serde_json::to_writer(&mut out, &op)?;
                out.write_all(b"\n")?;
                if rx.is_empty() {
                    out.flush()?;
                }
            }
            out.flush()?;
            Ok(index)
        });
        Ok((Recorder { tx, start: Instant::now() }, writer))
    }

    /// Nanoseconds since the recorder was made.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records one op (fields `process`, `type`, `f`, `value` and optional `error`, `extra`).
    pub fn record(&self, mut op: Value) {
        op["time"] = json!(self.now());
        let _ = self.tx.send(op);
    }

    /// Records a nemesis op.
    pub fn nemesis(&self, f: &str, value: Value) {
        self.record(json!({"process": "nemesis", "type": "info", "f": f, "value": value}));
    }
}

/// `fail` when nothing can have been stored, `info` otherwise (see the module docs).
pub fn classify(e: &ClientError) -> &'static str {
    match e {
        ClientError::InvalidMessage(_) | ClientError::State(_) | ClientError::NoRoute(_) | ClientError::NoQueue(_) => "fail",
        ClientError::Broker { .. } | ClientError::Connection { .. } if e.is_definite() => "fail",
        // `definite`: every counted attempt was refused for certain. `last` may be a "not the leader" answer
        // to a hop after an attempt whose outcome is unknown (hops are not attempts), so it says nothing alone.
        ClientError::RetriesExhausted { definite, last, .. } if *definite => classify(last),
        _ => "info",
    }
}

/// What the run learnt, for the final drain.
#[derive(Default)]
pub struct Progress {
    /// Per key: the highest acknowledged offset + 1.
    pub acked_end: Mutex<BTreeMap<u32, u64>>,
    /// Per key: the highest polled offset + 1.
    pub polled_end: Mutex<BTreeMap<u32, u64>>,
    /// Values returned by polls.
    pub seen: Mutex<HashSet<u64>>,
    /// Values of acknowledged scheduled sends.
    pub scheduled_acked: Mutex<BTreeSet<u64>>,
    /// The latest invocation time + delay of any scheduled send attempted (recorder ns).
    pub scheduled_due: AtomicU64,
    /// The latest completion time + delay of any acknowledged scheduled send (recorder ns).
    pub scheduled_acked_due: AtomicU64,
    /// Values of transactional sends whose commit was acknowledged.
    pub txn_committed: Mutex<BTreeSet<u64>>,
    /// When the latest of those commits was acknowledged (recorder ns).
    pub txn_committed_at: AtomicU64,
    /// When the latest half send was invoked (recorder ns).
    pub txn_half_at: AtomicU64,
}

impl Progress {
    /// A half send was invoked at `now`.
    pub fn note_txn_half(&self, now: u64) {
        self.txn_half_at.fetch_max(now, Ordering::AcqRel);
    }

    /// The commit of transactional value `v` was acknowledged at `now`.
    pub fn note_txn_commit(&self, v: u64, now: u64) {
        self.txn_committed.lock().unwrap_or_else(|e| e.into_inner()).insert(v);
        self.txn_committed_at.fetch_max(now, Ordering::AcqRel);
    }
}

fn bump(map: &Mutex<BTreeMap<u32, u64>>, k: u32, end: u64) {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    let e = m.entry(k).or_insert(0);
    *e = (*e).max(end);
}

fn queue(cfg: &WorkloadConfig, k: u32) -> MessageQueue {
    MessageQueue { topic: cfg.topic.clone(), broker_name: cfg.broker_name.clone(), queue_id: k as i32 }
}

fn client_config(cfg: &WorkloadConfig, instance: String) -> ClientConfig {
    let mut c = ClientConfig::new(&cfg.namesrv).with_instance_name(instance);
    c.request_timeout = Duration::from_secs(3);
    c.connect_timeout = Duration::from_secs(2);
    c.poll_name_server_interval = Duration::from_secs(5);
    c
}

/// Values are the decimal body prefix.
pub(crate) fn parse_value(body: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = body.iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Runs the workload until `stop` is set. Process ids: worker w starts as w and moves on by the number of
/// workers after each `info` or crash, as Jepsen's do. The producers stop first; the consumers keep polling
/// until every scheduled send attempted is due (its invocation time + delay) plus [`SCHEDULED_TAIL`], so
/// that the lateness of the last scheduled messages is observed by consumers rather than by the drain.
pub async fn run(cfg: WorkloadConfig, rec: Recorder, stop: Arc<AtomicBool>, progress: Arc<Progress>) {
    let counter = Arc::new(AtomicU64::new(1));
    let watchers = if cfg.scheduled_share > 0.0 || cfg.txn_share > 0.0 { cfg.queues as usize } else { 0 };
    let responders = usize::from(cfg.txn_share > 0.0);
    let workers = cfg.producers + cfg.consumers + watchers + responders;
    let txn = (cfg.txn_share > 0.0)
        .then(|| TxnClient::start(&cfg, rec.clone(), Arc::clone(&progress), cfg.producers + cfg.consumers + watchers, workers));
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for w in 0..cfg.producers {
        let (cfg, rec, stop, progress, counter, txn) =
            (cfg.clone(), rec.clone(), Arc::clone(&stop), Arc::clone(&progress), Arc::clone(&counter), txn.clone());
        producers.push(tokio::spawn(async move { producer(w, workers, cfg, rec, stop, progress, counter, txn).await }));
    }
    let mut consumers = Vec::new();
    for c in 0..cfg.consumers {
        let w = cfg.producers + c;
        let (cfg, rec, stop, progress) = (cfg.clone(), rec.clone(), Arc::clone(&stop_consumers), Arc::clone(&progress));
        consumers.push(tokio::spawn(async move { consumer(w, c, workers, cfg, rec, stop, progress).await }));
    }
    for i in 0..watchers {
        let w = cfg.producers + cfg.consumers + i;
        let (cfg, rec, stop, progress) = (cfg.clone(), rec.clone(), Arc::clone(&stop_consumers), Arc::clone(&progress));
        consumers.push(tokio::spawn(async move { watcher(w, i as u32, workers, cfg, rec, stop, progress).await }));
    }
    for h in producers {
        let _ = h.await;
    }
    let due = progress.scheduled_due.load(Ordering::Acquire);
    if due > 0 {
        let until = due + SCHEDULED_TAIL.as_nanos() as u64;
        let now = rec.now();
        if until > now {
            eprintln!("consumers keep polling {:.1}s until the last scheduled send is due", (until - now) as f64 / 1e9);
            tokio::time::sleep(Duration::from_nanos(until - now)).await;
        }
    }
    let half = progress.txn_half_at.load(Ordering::Acquire);
    if half > 0 {
        let until = half + transactions::TXN_TAIL.as_nanos() as u64;
        let now = rec.now();
        if until > now {
            eprintln!("consumers keep polling {:.1}s while the last transactions are checked back", (until - now) as f64 / 1e9);
            tokio::time::sleep(Duration::from_nanos(until - now)).await;
        }
    }
    stop_consumers.store(true, Ordering::Release);
    for h in consumers {
        let _ = h.await;
    }
    if let Some(t) = txn {
        t.shutdown().await;
    }
}

/// Starts a client, retrying every 500 ms until it starts or the run is stopped.
async fn start_until_stopped<T, F, Fut>(stop: &AtomicBool, mut start: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = raftmq_client::Result<T>>,
{
    loop {
        match start().await {
            Ok(c) => return Some(c),
            Err(_) if !stop.load(Ordering::Acquire) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(_) => return None,
        }
    }
}

/// Jepsen's client crash, about every 30 s per worker: an `info` op, after which the worker continues as a
/// new process. Returns true when it crashed.
fn maybe_crash(rng: &mut ChaCha8Rng, last_crash: &mut Instant, rec: &Recorder, process: &mut u64, workers: usize) -> bool {
    if last_crash.elapsed() <= Duration::from_secs(30) || !rng.gen_bool(0.05) {
        return false;
    }
    rec.record(json!({"process": *process, "type": "info", "f": "crash", "value": null}));
    *process += workers as u64;
    *last_crash = Instant::now();
    true
}

fn pace(rng: &mut ChaCha8Rng, cfg: &WorkloadConfig) -> Duration {
    let workers = (cfg.producers + cfg.consumers).max(1) as f64;
    let mean = workers / cfg.rate.max(1.0);
    Duration::from_secs_f64(rng.gen_range(0.0..2.0 * mean))
}

#[allow(clippy::too_many_arguments)]
async fn producer(
    w: usize,
    workers: usize,
    cfg: WorkloadConfig,
    rec: Recorder,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    counter: Arc<AtomicU64>,
    txn: Option<Arc<TxnClient>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ ((w as u64 + 1) * 0x9E37_79B9));
    let mut opts = ProducerOptions::new(format!("jepsen-p{w}"));
    opts.retries = cfg.producer_retries;
    opts.send_timeout = Duration::from_secs(5);
    let Some(producer) = start_until_stopped(&stop, || Producer::start(client_config(&cfg, format!("jepsen-p{w}")), opts.clone())).await
    else {
        return;
    };
    let mut process = w as u64;
    let mut last_crash = Instant::now();
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(pace(&mut rng, &cfg)).await;
        if maybe_crash(&mut rng, &mut last_crash, &rec, &mut process, workers) {
            continue;
        }
        let k = rng.gen_range(0..cfg.queues);
        // Like the scheduled draw below, skipped without transactional sends (older seeds replay).
        if let Some(t) = txn.as_ref().filter(|_| rng.gen_bool(cfg.txn_share.min(1.0))) {
            let v = counter.fetch_add(1, Ordering::Relaxed);
            transactions::transact(t, &mut rng, &cfg, &rec, &progress, &mut process, workers, w, k, v, opts.retries, opts.send_timeout)
                .await;
            continue;
        }
        // The draw is skipped without scheduled sends, so older seeds replay the same generator.
        let delay =
            if cfg.scheduled_share > 0.0 && rng.gen_bool(cfg.scheduled_share.min(1.0)) { Some(scheduled_delay(&mut rng)) } else { None };
        // A scheduled send is always one message: batches cannot carry a delay.
        let n = if delay.is_none() && cfg.batch_max > 1 && rng.gen_bool(0.25) { rng.gen_range(2..=cfg.batch_max) } else { 1 };
        let values: Vec<u64> = (0..n).map(|_| counter.fetch_add(1, Ordering::Relaxed)).collect();
        let invoke: Vec<Value> = values.iter().map(|v| json!(["send", k, v])).collect();
        match delay {
            Some(d) => {
                rec.record(json!({"process": process, "type": "invoke", "f": "send", "value": invoke, "extra": d.extra()}));
                let due = rec.now() + d.ms() * 1_000_000;
                progress.scheduled_due.fetch_max(due, Ordering::AcqRel);
            }
            None => rec.record(json!({"process": process, "type": "invoke", "f": "send", "value": invoke})),
        }
        let msgs: Vec<Message> = values
            .iter()
            .map(|v| {
                let mut body = v.to_string();
                body.push(' ');
                while body.len() < cfg.body_bytes {
                    body.push('.');
                }
                let m = Message::new(cfg.topic.clone(), body).with_property("jepsen_producer", w.to_string());
                match delay {
                    Some(d) => d.apply(m),
                    None => m,
                }
            })
            .collect();
        let result = if n == 1 {
            producer.send_to_queue(msgs.into_iter().next().unwrap_or_else(|| Message::new("", "")), queue(&cfg, k)).await
        } else {
            producer.send_batch_to_queue(msgs, queue(&cfg, k)).await
        };
        match (result, delay) {
            (Ok(r), Some(d)) => {
                // The acknowledged offset is in the broker's staging queue, not in queue k: kept aside.
                let mut extra = d.extra();
                extra["staged_offset"] = json!(r.queue_offset);
                let done: Vec<Value> = values.iter().map(|v| json!(["send", k, [null, v]])).collect();
                rec.record(json!({"process": process, "type": "ok", "f": "send", "value": done, "extra": extra}));
                progress.scheduled_acked.lock().unwrap_or_else(|e| e.into_inner()).extend(values.iter().copied());
                progress.scheduled_acked_due.fetch_max(rec.now() + d.ms() * 1_000_000, Ordering::AcqRel);
            }
            (Ok(r), None) => {
                let first = r.queue_offset.max(0) as u64;
                let done: Vec<Value> = values.iter().enumerate().map(|(i, v)| json!(["send", k, [first + i as u64, v]])).collect();
                bump(&progress.acked_end, k, first + n as u64);
                rec.record(json!({"process": process, "type": "ok", "f": "send", "value": done}));
            }
            (Err(e), delay) => {
                let kind = classify(&e);
                let mut op = json!({"process": process, "type": kind, "f": "send", "value": invoke, "error": e.to_string()});
                if let Some(d) = delay {
                    op["extra"] = d.extra();
                }
                rec.record(op);
                if kind == "info" {
                    process += workers as u64;
                }
            }
        }
    }
    producer.shutdown().await;
}

struct ConsumerState {
    assigned: BTreeSet<u32>,
    next: BTreeMap<u32, u64>,
    committed: BTreeMap<u32, u64>,
}

async fn consumer(w: usize, c: usize, workers: usize, cfg: WorkloadConfig, rec: Recorder, stop: Arc<AtomicBool>, progress: Arc<Progress>) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ ((w as u64 + 101) * 0x85EB_CA6B));
    let group = format!("jepsen-c{c}");
    let Some(pc) = start_until_stopped(&stop, || PullConsumer::start(client_config(&cfg, format!("jepsen-c{c}")), group.clone())).await
    else {
        return;
    };
    let mut process = w as u64;
    let all: Vec<u32> = (0..cfg.queues).collect();
    let mut st = ConsumerState { assigned: BTreeSet::new(), next: BTreeMap::new(), committed: BTreeMap::new() };
    assign(&pc, &cfg, &rec, &mut process, workers, &group, &mut st, all.clone(), "committed").await;
    let mut last_commit = Instant::now();
    let mut last_crash = Instant::now();
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(pace(&mut rng, &cfg)).await;
        if maybe_crash(&mut rng, &mut last_crash, &rec, &mut process, workers) {
            assign(&pc, &cfg, &rec, &mut process, workers, &group, &mut st, all.clone(), "committed").await;
            continue;
        }
        if rng.gen_range(0..64) == 0 || st.assigned.is_empty() {
            let mut keys: Vec<u32> = all.iter().copied().filter(|_| rng.gen_bool(0.6)).collect();
            if keys.is_empty() {
                keys.push(rng.gen_range(0..cfg.queues));
            }
            let seek = ["keep", "committed", "beginning"][rng.gen_range(0..3)];
            assign(&pc, &cfg, &rec, &mut process, workers, &group, &mut st, keys, seek).await;
            continue;
        }
        if last_commit.elapsed() > Duration::from_secs(1) {
            commit(&pc, &cfg, &rec, &mut process, workers, &group, &mut st).await;
            last_commit = Instant::now();
            continue;
        }
        let keys: Vec<u32> = st.assigned.iter().copied().collect();
        let k = keys[rng.gen_range(0..keys.len())];
        poll(&pc, &cfg, &rec, &mut process, workers, &mut st, k, &progress).await;
    }
    pc.shutdown().await;
}

/// With scheduled sends, one watcher per queue follows it from the beginning with back-to-back long polls
/// (no pacing, seeks or commits), so that a delivered scheduled message is observed within a poll's latency
/// of becoming readable: the checker's lateness figures and `scheduled-early` use the first observation by
/// any poll, and the paced consumers, which re-read whole queues after `seek beginning`, often lag by
/// seconds.
async fn watcher(w: usize, k: u32, workers: usize, cfg: WorkloadConfig, rec: Recorder, stop: Arc<AtomicBool>, progress: Arc<Progress>) {
    let group = format!("jepsen-w{k}");
    let Some(pc) = start_until_stopped(&stop, || PullConsumer::start(client_config(&cfg, format!("jepsen-w{k}")), group.clone())).await
    else {
        return;
    };
    let mut process = w as u64;
    let mut st = ConsumerState { assigned: BTreeSet::new(), next: BTreeMap::new(), committed: BTreeMap::new() };
    assign(&pc, &cfg, &rec, &mut process, workers, &group, &mut st, vec![k], "beginning").await;
    while !stop.load(Ordering::Acquire) {
        let asked = Instant::now();
        match poll(&pc, &cfg, &rec, &mut process, workers, &mut st, k, &progress).await {
            None => tokio::time::sleep(Duration::from_millis(200)).await,
            // A member behind the watcher's offset answers "retry" at once instead of holding the long poll
            // (PULL_RETRY_IMMEDIATELY, e.g. a follower cut off by a partition): back off rather than spin. A
            // quick-net run without this made 1 100 such polls in one second.
            Some(p) if p.messages == 0 && asked.elapsed() < WATCHER_BACKOFF => tokio::time::sleep(WATCHER_BACKOFF).await,
            Some(_) => {}
        }
    }
    pc.shutdown().await;
}

#[allow(clippy::too_many_arguments)]
async fn assign(
    pc: &PullConsumer,
    cfg: &WorkloadConfig,
    rec: &Recorder,
    process: &mut u64,
    workers: usize,
    group: &str,
    st: &mut ConsumerState,
    keys: Vec<u32>,
    seek: &str,
) {
    let value = json!({"keys": keys, "seek": seek, "group": group});
    rec.record(json!({"process": *process, "type": "invoke", "f": "assign", "value": value}));
    let mut committed = Vec::new();
    let mut next = BTreeMap::new();
    for k in &keys {
        let start = match seek {
            "beginning" => 0,
            "keep" => st.next.get(k).copied().unwrap_or(0),
            _ => match pc.fetch_consume_offset(&queue(cfg, *k)).await {
                Ok(Some(o)) => {
                    committed.push(json!([k, o]));
                    o.max(0) as u64
                }
                Ok(None) => 0,
                Err(e) => {
                    rec.record(json!({"process": *process, "type": "info", "f": "assign", "value": value, "error": e.to_string()}));
                    *process += workers as u64;
                    return;
                }
            },
        };
        next.insert(*k, start);
    }
    st.assigned = keys.iter().copied().collect();
    st.next.extend(next);
    rec.record(json!({"process": *process, "type": "ok", "f": "assign", "value": value, "extra": {"committed": committed}}));
}

async fn commit(
    pc: &PullConsumer,
    cfg: &WorkloadConfig,
    rec: &Recorder,
    process: &mut u64,
    workers: usize,
    group: &str,
    st: &mut ConsumerState,
) {
    // Commits only move forward per key: each group has this one committer.
    let offsets: Vec<(u32, u64)> = st
        .assigned
        .iter()
        .filter_map(|k| st.next.get(k).map(|o| (*k, *o)))
        .filter(|(k, o)| *o > st.committed.get(k).copied().unwrap_or(0))
        .collect();
    if offsets.is_empty() {
        return;
    }
    let value = json!({"group": group, "offsets": offsets.iter().map(|(k, o)| json!([k, o])).collect::<Vec<_>>()});
    rec.record(json!({"process": *process, "type": "invoke", "f": "commit", "value": value}));
    for (i, (k, o)) in offsets.iter().enumerate() {
        if let Err(e) = pc.update_consume_offset(&queue(cfg, *k), *o as i64).await {
            // Earlier keys of this op are committed, this one maybe: the op as a whole is uncertain.
            let kind = if i == 0 { classify(&e) } else { "info" };
            rec.record(json!({"process": *process, "type": kind, "f": "commit", "value": value, "error": e.to_string()}));
            if kind == "info" {
                *process += workers as u64;
            }
            for (k2, o2) in &offsets[..i] {
                st.committed.insert(*k2, *o2);
            }
            return;
        }
    }
    for (k, o) in offsets {
        st.committed.insert(k, o);
    }
    rec.record(json!({"process": *process, "type": "ok", "f": "commit", "value": value}));
}

#[allow(clippy::too_many_arguments)]
async fn poll(
    pc: &PullConsumer,
    cfg: &WorkloadConfig,
    rec: &Recorder,
    process: &mut u64,
    workers: usize,
    st: &mut ConsumerState,
    k: u32,
    progress: &Progress,
) -> Option<Polled> {
    rec.record(json!({"process": *process, "type": "invoke", "f": "poll", "value": [["poll"]]}));
    let offset = st.next.get(&k).copied().unwrap_or(0);
    match pc.pull_blocking(&queue(cfg, k), "*", offset as i64, 32, Duration::from_millis(500)).await {
        Ok(r) => {
            let mut reads = Vec::new();
            for m in &r.messages {
                match parse_value(&m.body) {
                    Some(v) => reads.push(json!([m.queue_offset, v])),
                    // Not a workload value: record it as value 0 so the checker reports a phantom read.
                    None => reads.push(json!([m.queue_offset, 0])),
                }
            }
            if let Some(last) = r.messages.last() {
                bump(&progress.polled_end, k, last.queue_offset as u64 + 1);
            }
            {
                let mut seen = progress.seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.extend(r.messages.iter().filter_map(|m| parse_value(&m.body)));
            }
            let next = if r.status == PullStatus::OffsetIllegal || !r.messages.is_empty() || r.status == PullStatus::NoMatchedMsg {
                r.next_begin_offset.max(0) as u64
            } else {
                offset
            };
            st.next.insert(k, next);
            rec.record(json!({
                "process": *process, "type": "ok", "f": "poll",
                "value": [["poll", [[k, reads]]]],
                "extra": {"next": [[k, next]], "max": [[k, r.max_offset]], "status": format!("{:?}", r.status)}
            }));
            Some(Polled { messages: r.messages.len(), next, max: r.max_offset.max(0) as u64 })
        }
        Err(e) => {
            rec.record(json!({"process": *process, "type": "info", "f": "poll", "value": [["poll"]], "error": e.to_string()}));
            *process += workers as u64;
            None
        }
    }
}

/// What an ok poll returned, in short.
#[derive(Debug, Clone, Copy)]
struct Polled {
    messages: usize,
    next: u64,
    max: u64,
}

/// Jepsen's final polls: a fresh client and process per drain worker assigns every queue from offset 0 and
/// polls until each queue's polled end reaches the highest acknowledged and the highest polled offset and
/// the broker's own end. Records a `final-drain` op: `ok` when complete, `info` when it gave up.
///
/// Scheduled sends: if some acknowledged scheduled value has not been read by the drain once it reached
/// those ends, it keeps polling every queue in rounds until it has, or until a round starts after the
/// *horizon* — the latest acknowledged scheduled send's completion + delay (but not before the drain
/// started) + `scheduled_late` — by which every acknowledged scheduled message must have been delivered
/// (the checker's `scheduled-lost` uses the same bound, see `checker::scheduled`). The time limit is
/// extended to the horizon + 30 s for that. Values of transactional sends whose commit was acknowledged are
/// waited for the same way, up to the latest such acknowledgement (but not before the drain started) +
/// [`crate::checker::TXN_LATE_MARGIN_MS`] (the checker's `txn-committed-lost` horizon).
pub async fn final_drain(
    cfg: WorkloadConfig,
    rec: Recorder,
    progress: Arc<Progress>,
    time_limit: Duration,
    process: u64,
    scheduled_late: Duration,
) -> bool {
    rec.record(json!({"process": process, "type": "invoke", "f": "final-drain", "value": null}));
    // The drain's own polls run as other processes, so the final-drain op pairs up on `process`.
    let mut proc_id = process + 1;
    let workers = 1;
    let pc = match PullConsumer::start(client_config(&cfg, format!("jepsen-drain-{process}")), "jepsen-drain").await {
        Ok(p) => p,
        Err(e) => {
            rec.record(json!({"process": process, "type": "info", "f": "final-drain", "value": null, "error": e.to_string()}));
            return false;
        }
    };
    let all: Vec<u32> = (0..cfg.queues).collect();
    let mut st = ConsumerState { assigned: BTreeSet::new(), next: BTreeMap::new(), committed: BTreeMap::new() };
    let started = Instant::now();
    let mut deadline = started + time_limit;
    let mut targets: BTreeMap<u32, u64> = BTreeMap::new();
    let drained = Progress::default();
    while st.assigned.len() < all.len() && Instant::now() < deadline {
        assign(&pc, &cfg, &rec, &mut proc_id, workers, "jepsen-drain", &mut st, all.clone(), "beginning").await;
    }
    for k in &all {
        let acked = progress.acked_end.lock().unwrap_or_else(|e| e.into_inner()).get(k).copied().unwrap_or(0);
        let polled = progress.polled_end.lock().unwrap_or_else(|e| e.into_inner()).get(k).copied().unwrap_or(0);
        targets.insert(*k, acked.max(polled));
    }
    // The broker's end counts too: values sent with an unknown outcome may be there.
    for k in &all {
        while Instant::now() < deadline {
            match pc.max_offset(&queue(&cfg, *k)).await {
                Ok(max) => {
                    let t = targets.entry(*k).or_insert(0);
                    *t = (*t).max(max.max(0) as u64);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let mut done = false;
    while Instant::now() < deadline {
        let pending: Vec<u32> = all.iter().copied().filter(|k| st.next.get(k).copied().unwrap_or(0) < targets[k]).collect();
        if pending.is_empty() {
            done = true;
            break;
        }
        for k in pending {
            if poll(&pc, &cfg, &rec, &mut proc_id, workers, &mut st, k, &drained).await.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let acked: Vec<u64> = progress.scheduled_acked.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
    let committed: Vec<u64> = progress.txn_committed.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
    let unread = |drained: &Progress, values: &[u64]| -> usize {
        let seen = drained.seen.lock().unwrap_or_else(|e| e.into_inner());
        values.iter().filter(|v| !seen.contains(v)).count()
    };
    let missing_scheduled = |drained: &Progress| unread(drained, &acked) + unread(drained, &committed);
    if done && missing_scheduled(&drained) > 0 {
        // Transactional values with an acknowledged commit are in their queue already; a member that lags
        // has them within the checker's margin (`txn-committed-lost`).
        let now = rec.now();
        let mut horizon = now;
        if unread(&drained, &acked) > 0 {
            horizon = horizon.max(progress.scheduled_acked_due.load(Ordering::Acquire).max(now) + scheduled_late.as_nanos() as u64);
        }
        if unread(&drained, &committed) > 0 {
            let txn_late = Duration::from_millis(crate::checker::TXN_LATE_MARGIN_MS).as_nanos() as u64;
            horizon = horizon.max(progress.txn_committed_at.load(Ordering::Acquire).max(now) + txn_late);
        }
        let wait = Duration::from_nanos(horizon.saturating_sub(rec.now()));
        deadline = deadline.max(Instant::now() + wait + Duration::from_secs(30));
        eprintln!(
            "final drain: {} acknowledged scheduled or committed transactional messages not read yet; polling every queue for up to {:.1}s",
            missing_scheduled(&drained),
            wait.as_secs_f64()
        );
        // Rounds over every queue; a round ends a queue when a poll returns nothing new or reaches the
        // broker's end. Complete once everything is read, or after a whole round that began past the horizon.
        done = false;
        'rounds: while Instant::now() < deadline {
            let round_start = rec.now();
            for &k in &all {
                loop {
                    if Instant::now() >= deadline {
                        break 'rounds;
                    }
                    match poll(&pc, &cfg, &rec, &mut proc_id, workers, &mut st, k, &drained).await {
                        Some(p) if p.messages == 0 || p.next >= p.max => break,
                        Some(_) => {}
                        None => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                let t = targets.entry(k).or_insert(0);
                *t = (*t).max(st.next.get(&k).copied().unwrap_or(0));
            }
            if missing_scheduled(&drained) == 0 || round_start >= horizon {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    pc.shutdown().await;
    if done {
        rec.record(json!({"process": process, "type": "ok", "f": "final-drain", "value": {"ends": targets}}));
    } else {
        let missing: BTreeMap<u32, (u64, u64)> = all
            .iter()
            .filter(|k| st.next.get(k).copied().unwrap_or(0) < targets[k])
            .map(|k| (*k, (st.next.get(k).copied().unwrap_or(0), targets[k])))
            .collect();
        let unread = missing_scheduled(&drained);
        let error = format!(
            "gave up after {:?}; (polled, target) per key: {missing:?}; acknowledged scheduled or committed transactional messages not read: {unread}",
            deadline.saturating_duration_since(started)
        );
        rec.record(json!({"process": process, "type": "info", "f": "final-drain", "value": {"ends": targets}, "error": error}));
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_client::ClientError;

    fn broker(code: i32) -> ClientError {
        ClientError::Broker { addr: "b".into(), code, remark: String::new() }
    }

    fn exhausted(attempts: u32, definite: bool, last: ClientError) -> ClientError {
        ClientError::RetriesExhausted { attempts, elapsed: Duration::ZERO, definite, last: Box::new(last) }
    }

    #[test]
    fn only_certain_refusals_are_fail() {
        assert_eq!(classify(&broker(14)), "fail", "not the leader: refused before proposing");
        assert_eq!(classify(&broker(13)), "fail");
        assert_eq!(classify(&broker(1)), "info", "SYSTEM_ERROR may be 'store outcome unknown'");
        assert_eq!(classify(&ClientError::Timeout { addr: "b".into(), timeout: Duration::from_secs(1) }), "info");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&ClientError::Connection { addr: "b".into(), source: refused.into() }), "fail");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify(&ClientError::Connection { addr: "b".into(), source: reset.into() }), "info");
        assert_eq!(classify(&ClientError::InvalidMessage("x".into())), "fail");
        assert_eq!(classify(&exhausted(1, true, broker(14))), "fail", "one attempt, refused");
        // One attempt whose outcome is unknown, then (not counted) hops answered "not the leader" until the
        // budget ran out: the attempt may have stored it.
        assert_eq!(classify(&exhausted(1, false, broker(14))), "info");
        assert_eq!(classify(&exhausted(1, false, ClientError::Timeout { addr: "b".into(), timeout: Duration::from_secs(1) })), "info");
        assert_eq!(classify(&exhausted(2, false, broker(14))), "info", "an earlier attempt may have stored it");
        assert_eq!(classify(&exhausted(3, true, broker(14))), "fail");
    }

    #[test]
    fn values_are_the_decimal_body_prefix() {
        assert_eq!(parse_value(b"1234 ....."), Some(1234));
        assert_eq!(parse_value(b"canary"), None);
    }
}
