//! `raftmq bench produce|consume|e2e|schedule|dedup`: load generation against any RocketMQ-protocol cluster with the Rust
//! client. Latency goes into HDR histograms (µs); with `--rate` the load is open-loop and every latency is
//! measured from the message's *intended* send time, so a stall shows up in the percentiles instead of
//! silently slowing the generator down (coordinated omission). A progress line is printed every second and
//! `--json FILE` writes the result.
//!
//! CPU per message: `produce`, `consume` and `e2e` report the user + system CPU time the broker processes
//! (`--server-pids`, or the pid files of `scripts/cluster.sh` under `--data-dir` / `$RAFTMQ_DATA_DIR`, the
//! nameserver excluded) and the load generator itself used over the run, divided by the messages acknowledged
//! (produce), read (consume) or received (e2e), in µs ([`crate::benchkit`]). On a busy machine msgs/s varies
//! with the neighbours; CPU per message hardly does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use raftmq_client::{ClientConfig, Message, MessageQueue, Producer, ProducerOptions, PullConsumer, PullStatus};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::benchkit::{self, CpuMeter, CpuUse, E2eTracker, SeqSet, E2E_HEADER};

/// Bench subcommands.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// Send as fast as the window allows (or at `--rate`) and measure acknowledgement latency.
    Produce(ProduceBench),
    /// Read a topic from the start as fast as possible.
    Consume(ConsumeBench),
    /// Produce at a fixed rate while consuming; measure produce-to-consume latency, losses and duplicates.
    E2e(E2eBench),
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
    /// Broker process ids (comma-separated) whose CPU time per message is reported. Default: the running
    /// processes of the pid files in `--data-dir`.
    #[arg(long, value_parser = parse_pid_list)]
    pub server_pids: Option<PidList>,
    /// A `scripts/cluster.sh` data directory: without `--server-pids`, the brokers are the processes of its
    /// `pids/*.pid` files except `namesrv.pid` (the nameserver is not counted).
    #[arg(long, env = "RAFTMQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// A checked list of process ids (`--server-pids`).
#[derive(Clone, Debug)]
pub struct PidList(pub Vec<u32>);

fn parse_pid_list(s: &str) -> Result<PidList, String> {
    benchkit::parse_pids(s).map(PidList)
}

/// The broker processes to measure, and where they came from (for the output).
fn server_pids(c: &Common) -> (Vec<u32>, String) {
    if let Some(PidList(pids)) = &c.server_pids {
        return (pids.clone(), "--server-pids".into());
    }
    let Some(dir) = &c.data_dir else {
        return (Vec::new(), "none (give --server-pids or --data-dir)".into());
    };
    // Not fatal: `$RAFTMQ_DATA_DIR` may be set for another cluster than the one measured; the run goes on
    // with the client's CPU only, and says why.
    let found = match benchkit::broker_pids_in(dir) {
        Ok(found) if !found.is_empty() => found,
        Ok(_) => {
            eprintln!("warning: no running broker process in the pid files of {}/pids; server CPU not measured", dir.display());
            return (Vec::new(), format!("none (no running broker in {}/pids)", dir.display()));
        }
        Err(e) => {
            eprintln!("warning: reading broker pid files in {}/pids: {e}; server CPU not measured", dir.display());
            return (Vec::new(), format!("none ({}/pids unreadable)", dir.display()));
        }
    };
    let names: Vec<String> = found.iter().map(|(n, p)| format!("{n}={p}")).collect();
    (found.into_iter().map(|(_, p)| p).collect(), format!("{}/pids ({}; nameserver excluded)", dir.display(), names.join(" ")))
}

/// The `cpu` object of the JSON output.
fn cpu_json(u: &CpuUse, pids: &[u32], source: &str) -> serde_json::Value {
    json!({
        "server_pids": pids, "server_pids_from": source, "server_cpu_s": u.server_cpu_s,
        "server_us_per_msg": u.server_us_per_msg, "client_cpu_s": u.client_cpu_s, "client_us_per_msg": u.client_us_per_msg,
        "unreadable": u.unreadable.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>(),
    })
}

/// The printed CPU line.
fn cpu_line(u: &CpuUse, pids: &[u32], source: &str, per: &str) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let mut line = format!(
        "cpu per {per}: server {} µs ({} broker processes from {source}), client {} µs (this process)",
        f(u.server_us_per_msg),
        pids.len(),
        f(u.client_us_per_msg)
    );
    for (pid, e) in &u.unreadable {
        line.push_str(&format!("; pid {pid} unreadable: {e}"));
    }
    line
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
    /// With `--rate`: a send whose time comes while all `--inflight` slots of its producer are taken is not
    /// made (counted as shed) instead of made late — the load generator's own bounded queue, so that what is
    /// measured is the cluster, not a backlog in the generator.
    #[arg(long)]
    pub shed: bool,
}

/// `bench e2e` options.
#[derive(Args, Clone)]
pub struct E2eBench {
    #[command(flatten)]
    pub produce: ProduceBench,
    /// After the producers stop, keep reading until every acknowledged message arrived or none arrived for
    /// this many seconds.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout: u64,
    /// Messages per pull (one long-polling pull in flight per queue).
    #[arg(long, default_value_t = 256)]
    pub pull_batch: i32,
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
    /// Sends not made because the generator's window was full at their time (`--shed`).
    shed: AtomicU64,
    /// Failed sends by the error's first words (bounded: at most `ERROR_KINDS_MAX` kinds).
    error_kinds: Mutex<BTreeMap<String, u64>>,
    hist: Mutex<Option<Histogram<u64>>>,
    /// (time of the last acknowledgement, longest gap between two consecutive acknowledgements): with a
    /// steady `--rate`, the longest gap is how long sends stalled (e.g. across a leader failover).
    gaps: Mutex<(Option<Instant>, Duration)>,
}

/// Error kinds [`SendStats::count_error`] keeps apart; the rest are counted under "other".
const ERROR_KINDS_MAX: usize = 32;

impl SendStats {
    /// Counts `n` failed sends under the first words of `e` (numbers and addresses vary; the words do not).
    fn count_error(&self, e: &raftmq_client::ClientError, n: u64) {
        let text = e.to_string();
        // Digits (counts, addresses, offsets) replaced so that one kind stays one key.
        let kind: String = text.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).take(160).collect();
        let mut k = self.error_kinds.lock().unwrap_or_else(|p| p.into_inner());
        let len = k.len();
        let key = if k.contains_key(&kind) || len < ERROR_KINDS_MAX { kind } else { "other".to_string() };
        *k.entry(key).or_insert(0) += n;
    }

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
    e2e_acked: Option<Arc<Mutex<SeqSet>>>,
    decorate: Option<Decorate>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let e2e_stamp = e2e_acked.is_some();
    if b.size < E2E_HEADER && e2e_stamp {
        bail!("--size must be at least {E2E_HEADER} for e2e (the body carries a sequence number and the send time)");
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
        let (b, stop, stats, issued, decorate, e2e_acked) =
            (b.clone(), Arc::clone(&stop), Arc::clone(&stats), Arc::clone(&issued), decorate.clone(), e2e_acked.clone());
        tasks.push(tokio::spawn(async move {
            let window = Arc::new(Semaphore::new(b.inflight.max(1)));
            let local = Arc::new(Mutex::new(histogram()));
            let start = Instant::now();
            let start_ns = benchkit::now_ns();
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
                let permit = if b.shed && scheduled.is_some() {
                    match Arc::clone(&window).try_acquire_owned() {
                        Ok(p) => p,
                        Err(tokio::sync::TryAcquireError::NoPermits) => {
                            // Shed this send and every one that falls due before a slot frees (without a
                            // timer per shed send: the generator's CPU is the cluster's on a small machine).
                            let Ok(slot) = Arc::clone(&window).acquire_owned().await else { break };
                            drop(slot);
                            let due = (start.elapsed().as_secs_f64() * per_producer_rate) as u64;
                            let skipped = due.saturating_sub(i);
                            i += skipped;
                            issued.fetch_add(skipped, Ordering::Relaxed);
                            stats.shed.fetch_add(n + skipped, Ordering::Relaxed);
                            continue;
                        }
                        Err(tokio::sync::TryAcquireError::Closed) => break,
                    }
                } else {
                    let Ok(p) = Arc::clone(&window).acquire_owned().await else { break };
                    p
                };
                let intended = scheduled.unwrap_or_else(Instant::now);
                let body = |k: u64| {
                    let mut v = filler.clone();
                    if e2e_stamp {
                        // The intended send time: a send the generator made late is measured from when it was due.
                        let due_ns = start_ns + intended.saturating_duration_since(start).as_nanos() as u64;
                        benchkit::e2e_stamp(&mut v, seq + k, due_ns);
                    }
                    let m = Message::new(b.common.topic.clone(), v).with_wait_store_msg_ok(true);
                    match &decorate {
                        Some(d) => d(seq + k, m),
                        None => m,
                    }
                };
                let q: MessageQueue = queues[(i as usize) % queues.len()].clone();
                let (stats, local, e2e_acked) = (Arc::clone(&stats), Arc::clone(&local), e2e_acked.clone());
                let msgs: Vec<Message> = (0..n).map(body).collect();
                let done = move |r: raftmq_client::Result<raftmq_client::SendResult>| {
                    match r {
                        Ok(_) => {
                            if let Some(set) = &e2e_acked {
                                let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
                                for k in 0..n {
                                    set.insert(seq + k);
                                }
                            }
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
                            stats.count_error(&e, n);
                        }
                    }
                    drop(permit);
                };
                if n == 1 {
                    // No task per send: the outcome comes back on the task sending its lane's request.
                    let m = msgs.into_iter().next().unwrap_or_else(|| Message::new("", ""));
                    producer.send_to_queue_with_callback(m, q, done);
                } else {
                    let producer = producer.clone();
                    tokio::spawn(async move { done(producer.send_batch_to_queue(msgs, q).await) });
                }
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
    let (pids, pids_from) = server_pids(&b.common);
    let meter = CpuMeter::start(&pids);
    let tasks = produce_load(&b, Arc::clone(&stop), Arc::clone(&stats), None, None).await?;
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
    let cpu = meter.finish(acked);
    let h = stats.hist.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(histogram);
    let errors_unknown = stats.errors_unknown.load(Ordering::Relaxed);
    let mut result = json!({
        "mode": "produce", "topic": b.common.topic, "producers": b.producers, "inflight": b.inflight, "size": b.size, "auto_batch": !b.no_auto_batch,
        "batch": b.batch, "rate": b.rate, "elapsed_s": elapsed, "acked": acked, "errors": stats.errors.load(Ordering::Relaxed),
        "errors_unknown_outcome": errors_unknown, "shed": stats.shed.load(Ordering::Relaxed),
        "error_kinds": stats.error_kinds.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "msgs_per_s": acked as f64 / elapsed, "mb_per_s": acked as f64 * b.size as f64 / elapsed / 1e6,
        "latency": percentiles(&h), "longest_ack_gap_ms": stats.longest_gap().as_secs_f64() * 1000.0,
        "cpu": cpu_json(&cpu, &pids, &pids_from),
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
    println!("{}", cpu_line(&cpu, &pids, &pids_from, "acknowledged message"));
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
    let (pids, pids_from) = server_pids(&b.common);
    let meter = CpuMeter::start(&pids);
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
    let cpu = meter.finish(msgs);
    let result = json!({
        "mode": "consume", "topic": b.common.topic, "consumers": b.consumers, "elapsed_s": elapsed, "msgs": msgs,
        "msgs_per_s": msgs as f64 / elapsed, "mb_per_s": bytes as f64 / elapsed / 1e6,
        "cpu": cpu_json(&cpu, &pids, &pids_from),
    });
    println!("consume: {msgs} msgs in {elapsed:.2} s = {:.0} msg/s, {:.2} MB/s", msgs as f64 / elapsed, bytes as f64 / elapsed / 1e6);
    println!("{}", cpu_line(&cpu, &pids, &pids_from, "message read"));
    write_json(&b.common.json, &result)
}

/// `raftmq bench e2e`: produce at `--rate` (open loop) while one long-polling pull per queue reads the topic;
/// every body carries a sequence number and its intended send time, and the consumer records receive time
/// minus that (same host, same clock), so that a stall of the generator counts too. After the producers
/// stop, the consumer keeps reading until every acknowledged message arrived or `--drain-timeout` passed
/// without a new one. Reports latency percentiles, msgs/s received, acknowledged messages never received
/// (lost), duplicates, and CPU per received message.
pub async fn e2e(e: E2eBench) -> Result<()> {
    let mut b = e.produce;
    if b.rate.is_nan() || b.rate < 1.0 || b.rate > benchkit::E2E_RATE_MAX as f64 {
        bail!("e2e needs --rate between 1 and {} messages per second (it is an open-loop measurement)", benchkit::E2E_RATE_MAX);
    }
    if b.size < E2E_HEADER {
        bail!("--size must be at least {E2E_HEADER} for e2e (the body carries a sequence number and the send time)");
    }
    if b.common.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    if e.pull_batch < 1 || e.pull_batch > 1024 {
        bail!("--pull-batch must be between 1 and 1024 (the broker caps a pull at 1024 messages)");
    }
    let planned = (b.rate * b.common.duration as f64).ceil() as u64;
    let messages = if b.common.count > 0 { b.common.count.min(planned) } else { planned };
    if messages > benchkit::E2E_MESSAGES_MAX {
        bail!("--rate × --duration is {messages} messages; at most {} per e2e run", benchkit::E2E_MESSAGES_MAX);
    }
    b.common.count = messages;
    let (pids, pids_from) = server_pids(&b.common);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SendStats::default());
    // Consumer first, positioned at the current end of every queue (the topic is created by one message).
    let pc = PullConsumer::start(config(&b.common.namesrv, format!("bench-e2e-c-{}", std::process::id())), b.group.clone()).await?;
    let warm =
        Producer::start(config(&b.common.namesrv, format!("bench-e2e-w-{}", std::process::id())), ProducerOptions::new("bench_e2e_warm"))
            .await?;
    warm.send(Message::new(b.common.topic.clone(), vec![0u8; 8])).await.context("creating the topic")?;
    warm.shutdown().await;
    let pc = Arc::new(pc);
    // The broker registers an auto-created topic with the nameserver shortly after its first message.
    let give_up = Instant::now() + Duration::from_secs(30);
    let queues = loop {
        match pc.fetch_subscribe_queues(&b.common.topic).await {
            Ok(q) if !q.is_empty() => break q,
            Ok(_) | Err(_) if Instant::now() < give_up => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(_) => bail!("topic {} has no queues in its route after 30 s", b.common.topic),
            Err(e) => return Err(e).with_context(|| format!("no route for topic {} after 30 s", b.common.topic)),
        }
    };
    let mut starts = Vec::new();
    for q in &queues {
        starts.push(pc.max_offset(q).await?);
    }
    let tracker = Arc::new(Mutex::new(E2eTracker::new(messages)));
    let acked_seqs = Arc::new(Mutex::new(SeqSet::new(messages)));
    let consumer_stop = Arc::new(AtomicBool::new(false));
    let meter = CpuMeter::start(&pids);
    let started = Instant::now();
    let mut readers = Vec::new();
    for (q, start) in queues.into_iter().zip(starts) {
        let (pc, tracker, consumer_stop, batch) = (Arc::clone(&pc), Arc::clone(&tracker), Arc::clone(&consumer_stop), e.pull_batch);
        readers.push(tokio::spawn(benchkit::e2e_reader(pc, q, start, batch, tracker, consumer_stop)));
    }
    let tasks = produce_load(&b, Arc::clone(&stop), Arc::clone(&stats), Some(Arc::clone(&acked_seqs)), None).await?;
    let pb = progress(b.common.quiet);
    // The producers stop by themselves after `messages` sends; the deadline only bounds a cluster that
    // cannot keep up (twice the planned duration).
    let deadline = started + Duration::from_secs(b.common.duration.saturating_mul(2));
    while Instant::now() < deadline && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let received = tracker.lock().unwrap_or_else(|e| e.into_inner()).received.len();
        pb.set_message(format!("acked {}  received {received}", stats.acked.load(Ordering::Relaxed)));
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    let produced_at = Instant::now();
    // Drain: until every acknowledged message arrived, or no new one for --drain-timeout.
    let idle = Duration::from_secs(e.drain_timeout);
    loop {
        let (missing, last_new) = {
            let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            let acked = acked_seqs.lock().unwrap_or_else(|e| e.into_inner());
            (acked.missing_from(&t.received), t.last_new)
        };
        if missing == 0 || last_new.unwrap_or(produced_at).max(produced_at).elapsed() > idle {
            break;
        }
        pb.set_message(format!("draining: {missing} acknowledged messages not received yet"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer_stop.store(true, Ordering::Release);
    let mut pull_failures = 0;
    for r in readers {
        pull_failures += r.await.unwrap_or(0);
    }
    pb.finish_and_clear();
    if let Ok(pc) = Arc::try_unwrap(pc) {
        pc.shutdown().await;
    }
    let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
    let acked_set = acked_seqs.lock().unwrap_or_else(|e| e.into_inner());
    let received = t.received.len();
    let cpu = meter.finish(received);
    let lost = acked_set.missing_from(&t.received);
    let received_unacked = t.received.missing_from(&acked_set);
    let secs = t.last_new.map_or(0.0, |l| l.saturating_duration_since(started).as_secs_f64()).max(1e-9);
    let h = &t.hist;
    let send_h = stats.hist.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(histogram);
    let acked = stats.acked.load(Ordering::Relaxed);
    let result = json!({
        "mode": "e2e", "topic": b.common.topic, "producers": b.producers, "inflight": b.inflight, "rate": b.rate, "size": b.size,
        "planned": messages, "acked": acked, "errors": stats.errors.load(Ordering::Relaxed), "received": received,
        "lost": lost, "received_unacknowledged": received_unacked, "duplicates": t.duplicates, "foreign": t.foreign,
        "pull_failures": pull_failures, "elapsed_s": secs, "msgs_per_s": received as f64 / secs,
        "latency": percentiles(h), "send_latency": percentiles(&send_h),
        "cpu": cpu_json(&cpu, &pids, &pids_from),
    });
    println!(
        "e2e: rate {} msg/s, {acked} of {messages} acked, {received} received in {secs:.1} s = {:.0} msg/s; lost {lost} (acked, never \
         received), duplicates {}, received unacknowledged {received_unacked}; produce-to-consume latency p50 {} µs p99 {} µs \
         p99.9 {} µs max {} µs; send-to-ack p99 {} µs",
        b.rate,
        received as f64 / secs,
        t.duplicates,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        send_h.value_at_quantile(0.99),
    );
    println!("{}", cpu_line(&cpu, &pids, &pids_from, "received message"));
    write_json(&b.common.json, &result)
}

/// Dispatches a bench subcommand.
pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Produce(b) => produce(b).await,
        BenchCmd::Consume(b) => consume(b).await,
        BenchCmd::E2e(e) => e2e(e).await,
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
    (benchkit::now_ns() / 1_000_000) as i64
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
    let tasks = produce_load(b, Arc::clone(&stop), Arc::clone(&stats), None, decorate).await?;
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
