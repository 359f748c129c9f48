//! `raftmq bench produce|consume|e2e|schedule|dedup`: load generation against any RocketMQ-protocol cluster with the Rust
//! client. Latency goes into HDR histograms (µs); with `--rate` the load is open-loop and every latency is
//! measured from the message's *intended* send time, so a stall shows up in the percentiles instead of
//! silently slowing the generator down (coordinated omission). A progress line is printed every second and
//! `--json FILE` writes the result.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use raftmq_client::{ClientConfig, Message, MessageQueue, Producer, ProducerOptions, PullConsumer, PullStatus};
use serde_json::json;
use tokio::sync::Semaphore;

/// Bench subcommands.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// Send as fast as the window allows (or at `--rate`) and measure acknowledgement latency.
    Produce(ProduceBench),
    /// Read a topic from the start as fast as possible.
    Consume(ConsumeBench),
    /// Produce at a fixed rate while consuming; measure produce-to-consume latency.
    E2e(ProduceBench),
    /// Plain sends, then the same number of timer sends due over a window (scheduling throughput next to
    /// plain sends in one run), the brokers' RSS with everything pending, then delivery lateness.
    Schedule(ScheduleBench),
    /// The cost of exactly-once produce in one run: phases of sends whose messages carry a client id
    /// (de-duplicated by the broker) alternate with phases of sends without one (not de-duplicated), on the
    /// same cluster and topic; reports both throughputs, their ratio, and the brokers' memory per
    /// remembered id.
    Dedup(DedupBench),
}

/// `bench dedup` options.
#[derive(Args, Clone)]
pub struct DedupBench {
    #[command(flatten)]
    pub produce: ProduceBench,
    /// Keyed/unkeyed phase pairs (each phase sends `--count` messages).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Broker process ids whose resident memory is reported before and after the keyed phases.
    #[arg(long = "broker-pid")]
    pub broker_pids: Vec<u32>,
}

/// `bench schedule` options.
#[derive(Args, Clone)]
pub struct ScheduleBench {
    #[command(flatten)]
    pub produce: ProduceBench,
    /// The first message is due this long after the scheduling phase ends (seconds).
    #[arg(long, default_value_t = 10)]
    pub lead: u64,
    /// Due times are spread evenly over this window (seconds).
    #[arg(long, default_value_t = 60)]
    pub window: u64,
    /// Broker process ids whose resident memory (VmRSS) is reported before and after scheduling.
    #[arg(long = "broker-pid")]
    pub broker_pids: Vec<u32>,
}

/// Options shared by every bench.
#[derive(Args, Clone)]
pub struct Common {
    /// Nameserver address.
    #[arg(long, env = "RAFTMQ_NAMESRV_ADDR", default_value = "127.0.0.1:9876")]
    pub namesrv: String,
    /// Topic (created with 4 queues on first send when missing).
    #[arg(long, default_value = "BenchTopic")]
    pub topic: String,
    /// Run this long (seconds), unless `--count` is reached first.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Stop after this many messages (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// `bench produce` / `bench e2e` options.
#[derive(Args, Clone)]
pub struct ProduceBench {
    #[command(flatten)]
    pub common: Common,
    /// Producers (each its own client instance and connection).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Sends in flight per producer (1 = send, wait, repeat).
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Turn the producer's auto-batching off: every send is its own request.
    #[arg(long)]
    pub no_auto_batch: bool,
    /// Message body bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages per request (> 1: batch sends).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Target messages per second over all producers (0 = as fast as the window allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Consumer group of `e2e`.
    #[arg(long, default_value = "bench_e2e")]
    pub group: String,
    /// After the run, count the messages the topic holds (the sum of its queues' next offsets; use a fresh
    /// topic) and report them beside the acknowledged ones: with no failure of unknown outcome the two must
    /// be equal — an acknowledged message missing, or a refused one stored, shows as a difference.
    #[arg(long)]
    pub verify_stored: bool,
}

/// `bench consume` options.
#[derive(Args, Clone)]
pub struct ConsumeBench {
    #[command(flatten)]
    pub common: Common,
    /// Pull consumers; the topic's queues are split between them.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Messages per pull.
    #[arg(long, default_value_t = 32)]
    pub pull_batch: i32,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant digits: constant, valid bounds, so construction cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "p50_us": h.value_at_quantile(0.50), "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999), "max_us": h.max(), "mean_us": h.mean().round() as u64,
    })
}

fn config(namesrv: &str, name: String) -> ClientConfig {
    crate::client_config(namesrv).with_instance_name(name)
}

fn progress(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{elapsed:>4} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    pb
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn write_json(path: &Option<PathBuf>, value: &serde_json::Value) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Counters shared by the producer tasks.
#[derive(Default)]
struct SendStats {
    acked: AtomicU64,
    errors: AtomicU64,
    /// Of the errors, those whose message may have been stored (outcome unknown, e.g. a timeout).
    errors_unknown: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
    /// (time of the last acknowledgement, longest gap between two consecutive acknowledgements): with a
    /// steady `--rate`, the longest gap is how long sends stalled (e.g. across a leader failover).
    gaps: Mutex<(Option<Instant>, Duration)>,
}

impl SendStats {
    fn acked_now(&self) {
        let now = Instant::now();
        let mut g = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = g.0 {
            g.1 = g.1.max(now.saturating_duration_since(last));
        }
        g.0 = Some(now);
    }

    fn longest_gap(&self) -> Duration {
        self.gaps.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    fn record(&self, local: &Histogram<u64>) {
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        match h.as_mut() {
            Some(h) => {
                let _ = h.add(local);
            }
            None => *h = Some(local.clone()),
        }
    }
}

/// Runs the producer side; returns when the duration or count is reached.
/// Changes message `i` before it is sent (the schedule bench sets its delivery time).
type Decorate = Arc<dyn Fn(u64, Message) -> Message + Send + Sync>;

async fn produce_load(
    b: &ProduceBench,
    stop: Arc<AtomicBool>,
    stats: Arc<SendStats>,
    e2e_stamp: bool,
    decorate: Option<Decorate>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    if b.size < 8 && e2e_stamp {
        bail!("--size must be at least 8 for e2e (the body carries the send time)");
    }
    let per_producer_rate = if b.rate > 0.0 { b.rate / b.producers as f64 } else { 0.0 };
    let limit = if b.common.count > 0 { b.common.count } else { u64::MAX };
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..b.producers {
        let mut opts = ProducerOptions::new(format!("bench_producer_{p}"));
        opts.compress_over = usize::MAX;
        opts.max_async_in_flight = b.inflight.max(1) * 2;
        opts.auto_batch = !b.no_auto_batch;
        let producer = Producer::start(config(&b.common.namesrv, format!("bench-p{p}-{}", std::process::id())), opts).await?;
        let queues = producer.fetch_publish_queues(&b.common.topic).await?;
        let (b, stop, stats, issued, decorate) = (b.clone(), Arc::clone(&stop), Arc::clone(&stats), Arc::clone(&issued), decorate.clone());
        tasks.push(tokio::spawn(async move {
            let window = Arc::new(Semaphore::new(b.inflight.max(1)));
            let local = Arc::new(Mutex::new(histogram()));
            let start = Instant::now();
            let mut i: u64 = 0;
            let filler = vec![b'x'; b.size];
            while !stop.load(Ordering::Acquire) {
                let n = b.batch.max(1) as u64;
                let seq = issued.fetch_add(n, Ordering::Relaxed);
                if seq >= limit {
                    break;
                }
                // Open loop: the intended send time comes from the schedule, not from when a slot freed up.
                // Closed loop (no rate): a send starts when its slot frees, so that is when its clock starts.
                let scheduled = (per_producer_rate > 0.0).then(|| start + Duration::from_secs_f64(i as f64 / per_producer_rate));
                if let Some(at) = scheduled {
                    tokio::time::sleep_until(at.into()).await;
                }
                i += n;
                let Ok(permit) = Arc::clone(&window).acquire_owned().await else { break };
                let intended = scheduled.unwrap_or_else(Instant::now);
                let body = |k: u64| {
                    let mut v = filler.clone();
                    if e2e_stamp {
                        v[..8].copy_from_slice(&now_ns().to_be_bytes());
                    }
                    let m = Message::new(b.common.topic.clone(), v).with_wait_store_msg_ok(true);
                    match &decorate {
                        Some(d) => d(seq + k, m),
                        None => m,
                    }
                };
                let q: MessageQueue = queues[(i as usize) % queues.len()].clone();
                let (producer, stats, local) = (producer.clone(), Arc::clone(&stats), Arc::clone(&local));
                let msgs: Vec<Message> = (0..n).map(body).collect();
                tokio::spawn(async move {
                    let r = if n == 1 {
                        producer.send_to_queue(msgs.into_iter().next().unwrap_or_else(|| Message::new("", "")), q).await
                    } else {
                        producer.send_batch_to_queue(msgs, q).await
                    };
                    match r {
                        Ok(_) => {
                            stats.acked.fetch_add(n, Ordering::Relaxed);
                            stats.acked_now();
                            let us = intended.elapsed().as_micros().max(1) as u64;
                            let _ = local.lock().unwrap_or_else(|e| e.into_inner()).record(us);
                        }
                        Err(e) => {
                            stats.errors.fetch_add(n, Ordering::Relaxed);
                            if !e.is_definite() {
                                stats.errors_unknown.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                    }
                    drop(permit);
                });
            }
            // Wait for the window to drain, then merge this producer's histogram.
            let _ = window.acquire_many(b.inflight.max(1) as u32).await;
            stats.record(&local.lock().unwrap_or_else(|e| e.into_inner()));
            producer.shutdown().await;
        }));
    }
    Ok(tasks)
}

/// `raftmq bench produce`.
pub async fn produce(b: ProduceBench) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SendStats::default());
    let tasks = produce_load(&b, Arc::clone(&stop), Arc::clone(&stats), false, None).await?;
    let started = Instant::now();
    let pb = progress(b.common.quiet);
    let deadline = started + Duration::from_secs(b.common.duration);
    let mut last = (Instant::now(), 0u64);
    while Instant::now() < deadline && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last.0.elapsed() >= Duration::from_secs(1) {
            let acked = stats.acked.load(Ordering::Relaxed);
            let rate = (acked - last.1) as f64 / last.0.elapsed().as_secs_f64();
            pb.set_message(format!("acked {acked}  {rate:.0} msg/s  errors {}", stats.errors.load(Ordering::Relaxed)));
            last = (Instant::now(), acked);
        }
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let acked = stats.acked.load(Ordering::Relaxed);
    let h = stats.hist.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(histogram);
    let errors_unknown = stats.errors_unknown.load(Ordering::Relaxed);
    let mut result = json!({
        "mode": "produce", "topic": b.common.topic, "producers": b.producers, "inflight": b.inflight, "size": b.size, "auto_batch": !b.no_auto_batch,
        "batch": b.batch, "rate": b.rate, "elapsed_s": elapsed, "acked": acked, "errors": stats.errors.load(Ordering::Relaxed),
        "errors_unknown_outcome": errors_unknown,
        "msgs_per_s": acked as f64 / elapsed, "mb_per_s": acked as f64 * b.size as f64 / elapsed / 1e6,
        "latency": percentiles(&h), "longest_ack_gap_ms": stats.longest_gap().as_secs_f64() * 1000.0,
    });
    if b.verify_stored {
        let admin = raftmq_client::admin::Admin::start(config(&b.common.namesrv, format!("bench-verify-{}", std::process::id()))).await?;
        let progress = admin.group_progress("bench_verify_stored", &b.common.topic).await;
        admin.shutdown().await;
        let stored: i64 = progress?.iter().map(|q| q.broker_offset).sum();
        let missing = (acked as i64 - stored).max(0);
        let extra = (stored - acked as i64).max(0);
        println!(
            "verify: the topic holds {stored} messages, {acked} acknowledged: {missing} acknowledged missing, {extra} more stored \
             ({errors_unknown} sends failed with an unknown outcome and may account for those)"
        );
        result["stored"] = json!(stored);
        result["acked_missing"] = json!(missing);
        result["stored_unacknowledged"] = json!(extra);
    }
    println!(
        "produce: {acked} msgs in {elapsed:.1} s = {:.0} msg/s, {:.2} MB/s; latency p50 {} µs p99 {} µs p99.9 {} µs max {} µs; errors {}; longest gap between acks {:.0} ms",
        result["msgs_per_s"].as_f64().unwrap_or(0.0),
        result["mb_per_s"].as_f64().unwrap_or(0.0),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        result["errors"],
        stats.longest_gap().as_secs_f64() * 1000.0
    );
    write_json(&b.common.json, &result)
}

/// Reads `queues` from offset 0 until `limit` messages or the deadline; returns (messages, bytes).
async fn drain_queues(
    pc: &PullConsumer,
    queues: &[MessageQueue],
    pull_batch: i32,
    limit: &AtomicU64,
    deadline: Instant,
) -> Result<(u64, u64)> {
    let mut next: Vec<i64> = vec![0; queues.len()];
    let (mut msgs, mut bytes) = (0u64, 0u64);
    let mut idle_rounds = 0;
    while Instant::now() < deadline && limit.load(Ordering::Relaxed) > 0 {
        let mut progressed = false;
        for (i, q) in queues.iter().enumerate() {
            let r = pc.pull(q, "*", next[i], pull_batch).await?;
            if r.status == PullStatus::Found {
                progressed = true;
                bytes += r.messages.iter().map(|m| m.body.len() as u64).sum::<u64>();
                msgs += r.messages.len() as u64;
                if limit.fetch_sub(r.messages.len() as u64, Ordering::Relaxed) <= r.messages.len() as u64 {
                    limit.store(0, Ordering::Relaxed);
                }
            }
            next[i] = r.next_begin_offset;
        }
        // Every queue answered "nothing new" a few times in a row: the topic is read to its end.
        if !progressed {
            idle_rounds += 1;
            if idle_rounds > 3 {
                break;
            }
        } else {
            idle_rounds = 0;
        }
    }
    Ok((msgs, bytes))
}

/// `raftmq bench consume`: reads the topic from offset 0 with pull consumers.
pub async fn consume(b: ConsumeBench) -> Result<()> {
    let probe = PullConsumer::start(config(&b.common.namesrv, format!("bench-probe-{}", std::process::id())), "bench_consume").await?;
    let queues = probe.fetch_subscribe_queues(&b.common.topic).await?;
    probe.shutdown().await;
    let limit = Arc::new(AtomicU64::new(if b.common.count > 0 { b.common.count } else { u64::MAX }));
    let deadline = Instant::now() + Duration::from_secs(b.common.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..b.consumers.max(1) {
        let mine: Vec<MessageQueue> =
            queues.iter().enumerate().filter(|(i, _)| i % b.consumers.max(1) == c).map(|(_, q)| q.clone()).collect();
        let pc = PullConsumer::start(config(&b.common.namesrv, format!("bench-c{c}-{}", std::process::id())), "bench_consume").await?;
        let (limit, pull_batch) = (Arc::clone(&limit), b.pull_batch);
        tasks.push(tokio::spawn(async move {
            let r = drain_queues(&pc, &mine, pull_batch, &limit, deadline).await;
            pc.shutdown().await;
            r
        }));
    }
    let (mut msgs, mut bytes) = (0, 0);
    for t in tasks {
        let (m, by) = t.await??;
        msgs += m;
        bytes += by;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let result = json!({
        "mode": "consume", "topic": b.common.topic, "consumers": b.consumers, "elapsed_s": elapsed, "msgs": msgs,
        "msgs_per_s": msgs as f64 / elapsed, "mb_per_s": bytes as f64 / elapsed / 1e6,
    });
    println!("consume: {msgs} msgs in {elapsed:.2} s = {:.0} msg/s, {:.2} MB/s", msgs as f64 / elapsed, bytes as f64 / elapsed / 1e6);
    write_json(&b.common.json, &result)
}

/// `raftmq bench e2e`: produce (stamping the send time into the body) while a consumer reads the topic;
/// latency is receive time minus send time (same host, same clock).
pub async fn e2e(b: ProduceBench) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SendStats::default());
    // Consumer first, positioned at the current end of every queue.
    let pc = PullConsumer::start(config(&b.common.namesrv, format!("bench-e2e-c-{}", std::process::id())), b.group.clone()).await?;
    let warm =
        Producer::start(config(&b.common.namesrv, format!("bench-e2e-w-{}", std::process::id())), ProducerOptions::new("bench_e2e_warm"))
            .await?;
    warm.send(Message::new(b.common.topic.clone(), vec![0u8; 8])).await.context("creating the topic")?;
    warm.shutdown().await;
    let queues = pc.fetch_subscribe_queues(&b.common.topic).await?;
    let tasks = produce_load(&b, Arc::clone(&stop), Arc::clone(&stats), true, None).await?;
    let hist = Arc::new(Mutex::new(histogram()));
    let deadline = Instant::now() + Duration::from_secs(b.common.duration);
    let limit = AtomicU64::new(u64::MAX);
    let mut starts = Vec::new();
    for q in &queues {
        starts.push(pc.max_offset(q).await?);
    }
    let started = Instant::now();
    let consumer = {
        let (pc, queues, hist) = (pc, queues.clone(), Arc::clone(&hist));
        tokio::spawn(async move {
            // Skip what was there before the run, then read until the deadline.
            let mut next = starts;
            while Instant::now() < deadline && limit.load(Ordering::Relaxed) > 0 {
                for (i, q) in queues.iter().enumerate() {
                    if let Ok(r) = pc.pull_blocking(q, "*", next[i], 32, Duration::from_millis(100)).await {
                        let now = now_ns();
                        for m in &r.messages {
                            if let Some(stamp) = m.body.get(..8) {
                                let sent = u64::from_be_bytes(stamp.try_into().unwrap_or([0; 8]));
                                let _ = hist.lock().unwrap_or_else(|e| e.into_inner()).record((now.saturating_sub(sent) / 1000).max(1));
                            }
                        }
                        next[i] = r.next_begin_offset;
                    }
                }
            }
            pc.shutdown().await;
        })
    };
    tokio::time::sleep_until(deadline.into()).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    let _ = consumer.await;
    let elapsed = started.elapsed().as_secs_f64();
    let h = hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let result = json!({
        "mode": "e2e", "topic": b.common.topic, "producers": b.producers, "rate": b.rate, "size": b.size, "elapsed_s": elapsed,
        "acked": stats.acked.load(Ordering::Relaxed), "received": h.len(), "latency": percentiles(&h),
    });
    println!(
        "e2e: {} received; produce-to-consume latency p50 {} µs p99 {} µs p99.9 {} µs max {} µs",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    write_json(&b.common.json, &result)
}

/// Dispatches a bench subcommand.
pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Produce(b) => produce(b).await,
        BenchCmd::Consume(b) => consume(b).await,
        BenchCmd::E2e(b) => e2e(b).await,
        BenchCmd::Schedule(b) => schedule(b).await,
        BenchCmd::Dedup(b) => dedup(b).await,
    }
}

/// `raftmq bench dedup`.
pub async fn dedup(b: DedupBench) -> Result<()> {
    let n = b.produce.common.count;
    if n == 0 || b.rounds == 0 {
        bail!("--count (messages per phase) and --rounds must be at least 1");
    }
    let quiet = b.produce.common.quiet;
    // An empty client id: the broker does not de-duplicate the message (and the client keeps the id). A
    // padding property makes up the 32 characters of the id the keyed messages carry, so both phases send
    // and store the same bytes and only the de-duplication differs.
    let unkeyed: Decorate = Arc::new(|_, m: Message| m.with_property("UNIQ_KEY", "").with_property("_PAD", "x".repeat(26)));
    let rss = |pids: &[u32]| pids.iter().map(|p| (*p, rss_kib(*p))).collect::<Vec<_>>();
    let rss_start = rss(&b.broker_pids);
    let (mut keyed_rates, mut plain_rates, mut errors) = (Vec::new(), Vec::new(), 0u64);
    for round in 0..b.rounds {
        // Alternate which goes first so that drift (page cache, segment rolls) hits both alike.
        let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        for keyed in order {
            let decorate = if keyed { None } else { Some(Arc::clone(&unkeyed)) };
            let what = if keyed { "keyed" } else { "unkeyed" };
            let (acked, err, secs) = send_phase(&b.produce, decorate, quiet, what).await?;
            errors += err;
            let rate = acked as f64 / secs.max(1e-9);
            if !quiet {
                println!("round {round} {what}: {acked} in {secs:.2} s = {rate:.0} msg/s ({err} errors)");
            }
            if keyed {
                keyed_rates.push(rate)
            } else {
                plain_rates.push(rate)
            }
        }
    }
    let rss_end = rss(&b.broker_pids);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (k, p) = (mean(&keyed_rates), mean(&plain_rates));
    let cost = 1.0 - k / p.max(1e-9);
    let result = json!({
        "mode": "dedup", "count_per_phase": n, "rounds": b.rounds, "size": b.produce.size, "producers": b.produce.producers,
        "inflight": b.produce.inflight, "auto_batch": !b.produce.no_auto_batch, "errors": errors,
        "keyed_msgs_per_s": keyed_rates, "unkeyed_msgs_per_s": plain_rates,
        "keyed_mean": k, "unkeyed_mean": p, "cost": cost,
        "keyed_messages": n * b.rounds as u64,
        "rss_kib_start": rss_start, "rss_kib_end": rss_end,
    });
    println!(
        "dedup: keyed {k:.0} msg/s, unkeyed {p:.0} msg/s (means of {} phases each; cost {:.1}%); {errors} errors; \
         broker (pid, (VmRSS, RssAnon)) KiB start {rss_start:?} end {rss_end:?} after {} keyed messages",
        b.rounds,
        cost * 100.0,
        n * b.rounds as u64,
    );
    write_json(&b.produce.common.json, &result)
}

fn now_ms() -> i64 {
    (now_ns() / 1_000_000) as i64
}

/// (VmRSS, RssAnon) of a process in KiB (Linux `/proc`), if readable. RssAnon is the process's own memory;
/// the rest of VmRSS is mapped file pages (the commitlog and consume queues in the page cache).
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

/// Sends `count` messages (decorated), waits for every acknowledgement; returns (acked, errors, seconds).
async fn send_phase(b: &ProduceBench, decorate: Option<Decorate>, quiet: bool, what: &str) -> Result<(u64, u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SendStats::default());
    let started = Instant::now();
    let tasks = produce_load(b, Arc::clone(&stop), Arc::clone(&stats), false, decorate).await?;
    let pb = progress(quiet);
    let deadline = started + Duration::from_secs(b.common.duration);
    while Instant::now() < deadline && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pb.set_message(format!("{what}: acked {}", stats.acked.load(Ordering::Relaxed)));
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    pb.finish_and_clear();
    Ok((stats.acked.load(Ordering::Relaxed), stats.errors.load(Ordering::Relaxed), started.elapsed().as_secs_f64()))
}

/// `raftmq bench schedule`.
pub async fn schedule(b: ScheduleBench) -> Result<()> {
    let n = b.produce.common.count;
    if n == 0 {
        bail!("--count is required: the number of plain sends and of timer sends");
    }
    if b.produce.size < 8 || b.produce.batch > 1 {
        bail!("--size must be at least 8 (the body carries the due time) and --batch 1 (timers are not batched)");
    }
    let quiet = b.produce.common.quiet;
    // Phase 1: plain sends, the reference.
    let mut plain = b.produce.clone();
    plain.common.topic = format!("{}Plain", b.produce.common.topic);
    let (p_acked, p_err, p_secs) = send_phase(&plain, None, quiet, "plain").await?;
    let rss_before: Vec<(u32, Option<(u64, u64)>)> = b.broker_pids.iter().map(|p| (*p, rss_kib(*p))).collect();
    // Phase 2: the same number of timer sends. The send rate is not known in advance, so due times are
    // set from an estimate (the plain rate) and the lead absorbs the difference.
    let est_secs = p_secs.max(0.001) * 1.5;
    let first_due = now_ms() + (est_secs * 1000.0) as i64 + (b.lead * 1000) as i64;
    let window_ms = (b.window * 1000) as i64;
    let decorate: Decorate = Arc::new(move |i, m: Message| {
        let due = first_due + (i as i64 % n as i64) * window_ms / n as i64;
        let mut body = m.body.to_vec();
        body[..8].copy_from_slice(&due.to_be_bytes());
        let mut out = Message::new(m.topic.clone(), body).with_wait_store_msg_ok(true);
        out = out.with_delivery_time(UNIX_EPOCH + Duration::from_millis(due as u64));
        out
    });
    let (s_acked, s_err, s_secs) = send_phase(&b.produce, Some(decorate), quiet, "scheduling").await?;
    let scheduled_end = now_ms();
    let rss_after: Vec<(u32, Option<(u64, u64)>)> = b.broker_pids.iter().map(|p| (*p, rss_kib(*p))).collect();
    if scheduled_end > first_due {
        println!("warning: scheduling ended {} ms after the first due time; raise --lead", scheduled_end - first_due);
    }
    // Phase 3: consume the deliveries; lateness = arrival (consumer clock) and store stamp, each minus due.
    let pc =
        PullConsumer::start(config(&b.produce.common.namesrv, format!("bench-sched-c-{}", std::process::id())), "bench_schedule").await?;
    let queues = pc.fetch_subscribe_queues(&b.produce.common.topic).await?;
    let mut next = vec![0i64; queues.len()];
    let (mut arrival, mut stamped) = (histogram(), histogram());
    let mut early = 0u64;
    let deadline = Instant::now() + Duration::from_millis((first_due + window_ms - now_ms()).max(0) as u64) + Duration::from_secs(60);
    let pb = progress(quiet);
    while (arrival.len() < s_acked) && Instant::now() < deadline {
        for (i, q) in queues.iter().enumerate() {
            if let Ok(r) = pc.pull_blocking(q, "*", next[i], 32, Duration::from_millis(50)).await {
                let now = now_ms();
                for m in &r.messages {
                    let Some(due) = m.body.get(..8).and_then(|s| s.try_into().ok()).map(i64::from_be_bytes) else { continue };
                    if m.store_timestamp < due {
                        if early < 5 {
                            println!(
                                "early: store {} due {} TIMER_OUT_MS {:?} TIMER_DELIVER_MS {:?} queue {} offset {}",
                                m.store_timestamp,
                                due,
                                m.property("TIMER_OUT_MS"),
                                m.property("TIMER_DELIVER_MS"),
                                m.queue_id,
                                m.queue_offset
                            );
                        }
                        early += 1;
                    }
                    let _ = arrival.record(((now - due).max(0) as u64 * 1000).max(1));
                    let _ = stamped.record(((m.store_timestamp - due).max(0) as u64 * 1000).max(1));
                }
                next[i] = r.next_begin_offset;
            }
        }
        pb.set_message(format!("delivered {} of {s_acked}", arrival.len()));
    }
    pb.finish_and_clear();
    pc.shutdown().await;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let result = json!({
        "mode": "schedule", "count": n, "size": b.produce.size, "producers": b.produce.producers, "inflight": b.produce.inflight,
        "plain": { "acked": p_acked, "errors": p_err, "secs": p_secs, "msgs_per_s": p_acked as f64 / p_secs },
        "scheduled": { "acked": s_acked, "errors": s_err, "secs": s_secs, "msgs_per_s": s_acked as f64 / s_secs },
        "ratio": (s_acked as f64 / s_secs) / (p_acked as f64 / p_secs).max(1e-9),
        "rss_kib_before": rss_before, "rss_kib_after": rss_after,
        "delivered": arrival.len(), "early": early,
        "lateness_arrival_ms": { "p50": ms(&arrival, 0.5), "p99": ms(&arrival, 0.99), "max": arrival.max() as f64 / 1000.0 },
        "lateness_stamp_ms": { "p50": ms(&stamped, 0.5), "p99": ms(&stamped, 0.99), "max": stamped.max() as f64 / 1000.0 },
    });
    println!(
        "schedule: plain {p_acked} in {p_secs:.1} s = {:.0} msg/s; timers {s_acked} in {s_secs:.1} s = {:.0} msg/s (ratio {:.2}); \
         delivered {} of {s_acked}, early {early}; lateness at arrival p50 {:.1} ms p99 {:.1} ms max {:.1} ms, by store stamp p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
         broker (pid, (VmRSS, RssAnon)) KiB before {:?} after {:?}",
        p_acked as f64 / p_secs,
        s_acked as f64 / s_secs,
        result["ratio"].as_f64().unwrap_or(0.0),
        arrival.len(),
        ms(&arrival, 0.5),
        ms(&arrival, 0.99),
        arrival.max() as f64 / 1000.0,
        ms(&stamped, 0.5),
        ms(&stamped, 0.99),
        stamped.max() as f64 / 1000.0,
        rss_before,
        rss_after,
    );
    write_json(&b.produce.common.json, &result)
}
