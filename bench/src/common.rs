//! What every system shares: the workload options, the three produce cases, the closed-loop producer driver
//! with HDR ack latencies, the consume result, the open-loop end-to-end driver, CPU per message, and the rows
//! written as JSON.
//!
//! Every produce case is closed-loop: each producer keeps up to `inflight` sends outstanding and issues the
//! next one as soon as an acknowledgement frees a slot (`inflight = 1` is "send, wait for the ack, repeat").
//! Latency is measured from the start of the send call to the acknowledgement. Producers stop issuing when the
//! duration is over and wait for what is still in flight; throughput is acknowledged messages divided by the
//! time until the last acknowledgement.
//!
//! CPU per message: at the start and the end of every case the user + system CPU time of the server processes
//! (`--server-pids`, read from `/proc/PID/stat`) and of this process (`getrusage`) is sampled; the differences
//! divided by the messages acknowledged (produce), read (consume) or received (e2e) are the row's
//! `server_cpu_us_per_msg` and `client_cpu_us_per_msg`.
//!
//! End-to-end cases (`--e2e-rates`): a consumer reads a fresh destination while `--e2e-producers` send to it
//! on a fixed schedule (open loop: message `seq` is due at `seq / rate` s after the start, whatever happened
//! to the earlier ones, up to `--e2e-inflight` sends outstanding per producer). Each body carries its sequence
//! number and due time; latency is receive time minus due time, so a stall of the generator or of the
//! system shows in it. After the last send the consumer reads on until every acknowledged message arrived
//! or `--idle-timeout` passes without a new one; acknowledged messages never received are `lost`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::benchkit::{self, CpuMeter, CpuUse, E2eTracker, SeqSet, E2E_HEADER};

/// Message sizes of the run: every system gets one destination (topic, stream, queue) per size, so that the
/// consume rows compare like with like.
pub const SIZES: [usize; 2] = [128, 1024];

/// A producer stops issuing sends after this many failures (the system is down; no point spinning).
const MAX_ERRORS_PER_PRODUCER: u64 = 1000;

/// Most end-to-end rates in one run (`--e2e-rates`).
pub const E2E_RATES_MAX: usize = 8;

/// Most sends outstanding per end-to-end producer (`--e2e-inflight`).
pub const E2E_INFLIGHT_MAX: usize = 100_000;

/// Most end-to-end producers (`--e2e-producers`).
pub const E2E_PRODUCERS_MAX: usize = 64;

/// One line of the result table and one object of the JSON list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// System label (`raftmq-sync`, `raftmq-async`, `nats`, `rabbitmq`, …).
    pub system: String,
    /// `sync`, `pipelined PxW` or `consume`.
    pub case: String,
    /// Message body bytes.
    pub size: usize,
    /// Messages per second (acknowledged, or read for `consume`).
    pub msgs_per_s: f64,
    /// Body megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Median send-to-ack latency (µs); `None` for `consume`.
    pub p50_us: Option<u64>,
    /// 99th percentile send-to-ack latency (µs); `None` for `consume`.
    pub p99_us: Option<u64>,
    /// Whether the system had the message fsynced (on a quorum) before acknowledging it.
    pub fsync_before_ack: bool,
    /// 99.9th percentile latency (µs); `None` for `consume`.
    #[serde(default)]
    pub p999_us: Option<u64>,
    /// User + system CPU of the server processes over the case per message (µs); `None` when no server
    /// process was given or one could not be read at both ends of the case.
    #[serde(default)]
    pub server_cpu_us_per_msg: Option<f64>,
    /// User + system CPU of the load generator over the case per message (µs).
    #[serde(default)]
    pub client_cpu_us_per_msg: Option<f64>,
    /// End-to-end cases only: the counts behind the row.
    #[serde(default)]
    pub e2e: Option<E2eCounts>,
}

/// The counts of an end-to-end row (its latencies are the row's p50/p99/p99.9, produce-to-consume).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct E2eCounts {
    /// Target send rate (messages per second).
    pub rate: u64,
    /// Messages the schedule called for (rate × duration).
    pub planned: u64,
    /// Messages sent (fewer than planned when the system could not keep up within twice the duration).
    pub sent: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Acknowledged messages never received.
    pub lost: u64,
    /// Receptions of a message already received.
    pub duplicates: u64,
    /// Received messages whose send failed or timed out (stored anyway).
    pub received_unacknowledged: u64,
    /// 99th percentile send-to-ack latency (µs), measured from the due time.
    pub send_p99_us: Option<u64>,
}

/// Workload options shared by every system subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct Workload {
    /// Seconds each produce case runs.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Producers of the pipelined cases (each its own connection).
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Sends in flight per producer in the pipelined cases.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// Unmeasured sync sends per destination before the cases (connections, routes, leaders); they are
    /// consumed back with the rest.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Give up consuming a destination after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub consume_timeout: u64,
    /// Give up consuming when no message arrived for this many seconds (also the end-to-end drain).
    #[arg(long, default_value_t = 10)]
    pub idle_timeout: u64,
    /// Server process ids (comma-separated) whose CPU time per message is reported.
    #[arg(long, value_parser = parse_pid_list)]
    pub server_pids: Option<PidList>,
    /// End-to-end cases: target rates in messages per second, comma-separated (none by default).
    #[arg(long, value_delimiter = ',')]
    pub e2e_rates: Vec<u64>,
    /// Producers of the end-to-end cases (each its own connection; the rate is split between them).
    #[arg(long, default_value_t = 1)]
    pub e2e_producers: usize,
    /// Sends outstanding per end-to-end producer; a send due while all are taken goes out late (and its
    /// latency, measured from the due time, shows it).
    #[arg(long, default_value_t = 10_000)]
    pub e2e_inflight: usize,
    /// Body bytes of the end-to-end messages (at least 16: sequence number and due time).
    #[arg(long, default_value_t = 128)]
    pub e2e_size: usize,
    /// Write this system's rows as a JSON list to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl Workload {
    /// The produce cases in the order they run: sync 128 B, then pipelined 128 B and 1 KiB.
    pub fn cases(&self) -> Vec<Case> {
        let (p, w) = (self.producers.max(1), self.inflight.max(1));
        vec![
            Case { name: "sync".into(), producers: 1, inflight: 1, size: SIZES[0] },
            Case { name: format!("pipelined {p}x{w}"), producers: p, inflight: w, size: SIZES[0] },
            Case { name: format!("pipelined {p}x{w}"), producers: p, inflight: w, size: SIZES[1] },
        ]
    }

    /// Duration of one produce case.
    pub fn case_duration(&self) -> Duration {
        Duration::from_secs(self.duration.max(1))
    }

    /// The end-to-end cases, checked: every rate between 1 and `E2E_RATE_MAX`, at most `E2E_RATES_MAX` of
    /// them, at most `E2E_MESSAGES_MAX` messages each, and the other `--e2e-*` options in their bounds.
    pub fn e2e_cases(&self) -> Result<Vec<E2ePlan>> {
        if self.e2e_rates.len() > E2E_RATES_MAX {
            bail!("--e2e-rates: {} rates; at most {E2E_RATES_MAX}", self.e2e_rates.len());
        }
        if self.e2e_rates.is_empty() {
            return Ok(Vec::new());
        }
        if !(1..=E2E_PRODUCERS_MAX).contains(&self.e2e_producers) {
            bail!("--e2e-producers must be between 1 and {E2E_PRODUCERS_MAX}");
        }
        if !(1..=E2E_INFLIGHT_MAX).contains(&self.e2e_inflight) {
            bail!("--e2e-inflight must be between 1 and {E2E_INFLIGHT_MAX}");
        }
        if self.e2e_size < E2E_HEADER {
            bail!("--e2e-size must be at least {E2E_HEADER} (the body carries a sequence number and the due time)");
        }
        let secs = self.case_duration().as_secs();
        let mut plans = Vec::new();
        for &rate in &self.e2e_rates {
            if !(1..=benchkit::E2E_RATE_MAX).contains(&rate) {
                bail!("--e2e-rates: {rate} is not between 1 and {} messages per second", benchkit::E2E_RATE_MAX);
            }
            let messages = rate.saturating_mul(secs);
            if messages > benchkit::E2E_MESSAGES_MAX {
                bail!("--e2e-rates: {rate}/s for {secs} s is {messages} messages; at most {}", benchkit::E2E_MESSAGES_MAX);
            }
            plans.push(E2ePlan {
                name: format!("e2e {rate}/s"),
                rate,
                messages,
                size: self.e2e_size,
                producers: self.e2e_producers,
                inflight: self.e2e_inflight,
            });
        }
        Ok(plans)
    }

    /// The server process ids (`--server-pids`), or none.
    pub fn server_pids(&self) -> Vec<u32> {
        self.server_pids.as_ref().map(|p| p.0.clone()).unwrap_or_default()
    }

    /// Consume deadlines: (overall, without progress).
    pub fn consume_limits(&self) -> (Duration, Duration) {
        (Duration::from_secs(self.consume_timeout.max(1)), Duration::from_secs(self.idle_timeout.max(1)))
    }
}

/// A checked list of process ids (`--server-pids`).
#[derive(Clone, Debug)]
pub struct PidList(pub Vec<u32>);

fn parse_pid_list(s: &str) -> Result<PidList, String> {
    benchkit::parse_pids(s).map(PidList)
}

/// One end-to-end case.
#[derive(Debug, Clone)]
pub struct E2ePlan {
    /// Case name in the table (`e2e RATE/s`).
    pub name: String,
    /// Target messages per second over all producers.
    pub rate: u64,
    /// Messages to send (rate × duration).
    pub messages: u64,
    /// Body bytes.
    pub size: usize,
    /// Producers (connections).
    pub producers: usize,
    /// Sends outstanding per producer.
    pub inflight: usize,
}

/// One produce case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Case name in the table.
    pub name: String,
    /// Producers (connections).
    pub producers: usize,
    /// Sends in flight per producer.
    pub inflight: usize,
    /// Body bytes.
    pub size: usize,
}

/// The outcome of one produce case.
pub struct Produced {
    /// Acknowledged sends.
    pub acked: u64,
    /// Failed sends (timeouts, nacks, errors).
    pub errors: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// Send-to-ack latency (µs).
    pub hist: Histogram<u64>,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
}

/// The outcome of consuming one destination.
pub struct Consumed {
    /// Messages read.
    pub msgs: u64,
    /// Body bytes read.
    pub bytes: u64,
    /// From the first request to the last message.
    pub elapsed: Duration,
}

/// A latency histogram: 1 µs to 1 h at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    benchkit::latency_histogram()
}

/// A body of `size` pseudo-random (incompressible) bytes.
pub fn payload(size: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ size as u64;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Seconds since the epoch: part of every destination name, so that each run starts on fresh ones.
pub fn run_id() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs one closed-loop produce case: one task per handle, each keeping up to `inflight` sends outstanding
/// until `duration` is over. `send` starts one send of the given body and resolves on its acknowledgement.
pub async fn produce<P, F, Fut>(handles: Vec<P>, inflight: usize, size: usize, duration: Duration, send: F) -> Result<Produced>
where
    P: Send + 'static,
    F: Fn(&P, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let body = payload(size);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for handle in handles {
        let (send, body) = (send.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut acked, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            let mut pending = FuturesUnordered::new();
            loop {
                while pending.len() < inflight.max(1) && errors < MAX_ERRORS_PER_PRODUCER && Instant::now() < deadline {
                    let t0 = Instant::now();
                    let fut = send(&handle, body.clone());
                    pending.push(async move { (t0, fut.await) });
                }
                match pending.next().await {
                    None => break,
                    Some((t0, Ok(()))) => {
                        acked += 1;
                        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                    }
                    Some((_, Err(e))) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (acked, errors, first_error, hist, Instant::now())
        }));
    }
    let mut out = Produced { acked: 0, errors: 0, elapsed: Duration::ZERO, hist: histogram(), first_error: None };
    for t in tasks {
        let (acked, errors, first_error, hist, finished) = t.await.context("producer task panicked")?;
        out.acked += acked;
        out.errors += errors;
        out.elapsed = out.elapsed.max(finished - start);
        if out.first_error.is_none() {
            out.first_error = first_error;
        }
        out.hist.add(&hist).context("merging histograms")?;
    }
    Ok(out)
}

/// Sends `count` messages one at a time through `send`, retrying each failure for up to 30 s (leaders may
/// still be settling right after the destination was created). Not measured.
pub async fn warm_up<F, Fut>(count: usize, size: usize, send: F) -> Result<()>
where
    F: Fn(Bytes) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let body = payload(size);
    for _ in 0..count {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            match send(body.clone()).await {
                Ok(()) => break,
                Err(e) if Instant::now() < give_up => {
                    eprintln!("  warm-up send failed ({e:#}); retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("warm-up send")),
            }
        }
    }
    Ok(())
}

/// The producer side of an end-to-end case.
pub struct E2eProduced {
    /// When the schedule started (message 0 was due).
    pub start: Instant,
    /// Messages sent.
    pub sent: u64,
    /// Sequence numbers acknowledged.
    pub acked: Arc<Mutex<SeqSet>>,
    /// Failed sends.
    pub errors: u64,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
    /// Due-time-to-ack latency (µs).
    pub send_hist: Histogram<u64>,
}

/// Runs the producers of an end-to-end case: handle `p` of `n` sends sequence numbers `p, p + n, …` below
/// `plan.messages`, message `seq` due `seq / rate` s after the start, keeping at most `plan.inflight` sends
/// outstanding; issuing stops at `give_up` after the start (a system far behind its schedule). `send` starts
/// one send and resolves on its acknowledgement.
pub async fn e2e_produce<P, F, Fut>(handles: Vec<P>, plan: &E2ePlan, give_up: Duration, send: F) -> Result<E2eProduced>
where
    P: Send + 'static,
    F: Fn(&P, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let filler = payload(plan.size.max(E2E_HEADER));
    let acked = Arc::new(Mutex::new(SeqSet::new(plan.messages)));
    let (start, start_ns) = (Instant::now(), benchkit::now_ns());
    let (rate, messages, inflight, n) = (plan.rate.max(1), plan.messages, plan.inflight.max(1), handles.len().max(1) as u64);
    let due = move |seq: u64| Duration::from_nanos((u128::from(seq) * 1_000_000_000 / u128::from(rate)) as u64);
    let give_up_at = start + give_up;
    let mut tasks = Vec::new();
    for (p, handle) in handles.into_iter().enumerate() {
        let (send, filler, acked) = (send.clone(), filler.clone(), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut sent, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            let mut seq = p as u64;
            let mut pending = FuturesUnordered::new();
            loop {
                let now = Instant::now();
                while seq < messages && pending.len() < inflight && start + due(seq) <= now && now < give_up_at {
                    let mut body = filler.to_vec();
                    benchkit::e2e_stamp(&mut body, seq, start_ns + due(seq).as_nanos() as u64);
                    let fut = send(&handle, Bytes::from(body));
                    let (s, at) = (seq, start + due(seq));
                    pending.push(async move { (s, at, fut.await) });
                    sent += 1;
                    seq += n;
                }
                let issuing = seq < messages && Instant::now() < give_up_at && errors < MAX_ERRORS_PER_PRODUCER;
                if !issuing && pending.is_empty() {
                    break;
                }
                let next_due = (issuing && pending.len() < inflight).then(|| (start + due(seq)).min(give_up_at));
                tokio::select! {
                    Some((s, at, r)) = pending.next(), if !pending.is_empty() => match r {
                        Ok(()) => {
                            acked.lock().unwrap_or_else(|e| e.into_inner()).insert(s);
                            hist.saturating_record((at.elapsed().as_micros() as u64).max(1));
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    },
                    _ = tokio::time::sleep_until(next_due.unwrap_or(give_up_at).into()), if next_due.is_some() => {}
                    else => break,
                }
            }
            (sent, errors, first_error, hist)
        }));
    }
    let mut out = E2eProduced { start, sent: 0, acked, errors: 0, first_error: None, send_hist: histogram() };
    for t in tasks {
        let (sent, errors, first_error, hist) = t.await.context("e2e producer task panicked")?;
        out.sent += sent;
        out.errors += errors;
        if out.first_error.is_none() {
            out.first_error = first_error;
        }
        out.send_hist.add(&hist).context("merging histograms")?;
    }
    Ok(out)
}

/// Waits until every acknowledged message of an end-to-end case was received, or none arrived for `idle`,
/// then tells the consumer to stop.
pub async fn e2e_drain(tracker: &Mutex<E2eTracker>, produced: &E2eProduced, idle: Duration, stop: &AtomicBool) {
    let since = Instant::now();
    loop {
        let (missing, last_new) = {
            let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            (produced.acked.lock().unwrap_or_else(|e| e.into_inner()).missing_from(&t.received), t.last_new)
        };
        if missing == 0 || last_new.map_or(since, |l| l.max(since)).elapsed() > idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Release);
}

/// Collects the rows of one system run and prints each as it is added.
pub struct Report {
    system: String,
    fsync_before_ack: bool,
    server_pids: Vec<u32>,
    rows: Vec<Row>,
    /// Acknowledged messages (warm-up included) per size, to check the consume count against.
    produced: Vec<(usize, u64)>,
    failed: bool,
}

impl Report {
    /// A report for `system`.
    pub fn new(system: &str, fsync_before_ack: bool, server_pids: Vec<u32>) -> Report {
        if server_pids.is_empty() {
            eprintln!("[{system}] no --server-pids: server CPU per message is not measured");
        }
        Report { system: system.to_string(), fsync_before_ack, server_pids, rows: Vec::new(), produced: Vec::new(), failed: false }
    }

    /// Samples the CPU times at the start of a case.
    pub fn cpu_start(&self) -> CpuMeter {
        CpuMeter::start(&self.server_pids)
    }

    fn cpu_note(&self, u: &CpuUse) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let mut s = format!(
            "CPU per message: server {} µs ({} processes), client {} µs",
            f(u.server_us_per_msg),
            self.server_pids.len(),
            f(u.client_us_per_msg)
        );
        for (pid, e) in &u.unreadable {
            s.push_str(&format!("; pid {pid} unreadable {e}"));
        }
        s
    }

    fn add_produced(&mut self, size: usize, n: u64) {
        match self.produced.iter_mut().find(|(s, _)| *s == size) {
            Some((_, c)) => *c += n,
            None => self.produced.push((size, n)),
        }
    }

    /// Counts `n` unmeasured (warm-up) messages of `size`.
    pub fn warmed_up(&mut self, size: usize, n: usize) {
        self.add_produced(size, n as u64);
    }

    /// Adds the row of a produce case; `cpu` was started right before it.
    pub fn produced(&mut self, case: &Case, p: &Produced, cpu: CpuMeter) {
        let cpu = cpu.finish(p.acked);
        self.add_produced(case.size, p.acked);
        let secs = p.elapsed.as_secs_f64().max(1e-9);
        let row = Row {
            system: self.system.clone(),
            case: case.name.clone(),
            size: case.size,
            msgs_per_s: p.acked as f64 / secs,
            mb_per_s: p.acked as f64 * case.size as f64 / secs / 1e6,
            p50_us: (p.acked > 0).then(|| p.hist.value_at_quantile(0.50)),
            p99_us: (p.acked > 0).then(|| p.hist.value_at_quantile(0.99)),
            fsync_before_ack: self.fsync_before_ack,
            p999_us: (p.acked > 0).then(|| p.hist.value_at_quantile(0.999)),
            server_cpu_us_per_msg: cpu.server_us_per_msg,
            client_cpu_us_per_msg: cpu.client_us_per_msg,
            e2e: None,
        };
        eprintln!(
            "[{}] {} {} B: {} acked in {:.2} s = {:.0} msg/s, {:.2} MB/s; ack latency p50 {} µs, p99 {} µs, max {} µs; {} errors",
            self.system,
            case.name,
            case.size,
            p.acked,
            secs,
            row.msgs_per_s,
            row.mb_per_s,
            p.hist.value_at_quantile(0.5),
            p.hist.value_at_quantile(0.99),
            p.hist.max(),
            p.errors
        );
        eprintln!("[{}]   {}", self.system, self.cpu_note(&cpu));
        if let Some(e) = &p.first_error {
            eprintln!("[{}]   first error: {e}", self.system);
        }
        if p.acked == 0 {
            self.failed = true;
        }
        self.rows.push(row);
    }

    /// Adds the row of consuming the `size` destination; `cpu` was started right before it.
    pub fn consumed(&mut self, size: usize, c: &Consumed, cpu: CpuMeter) {
        let cpu = cpu.finish(c.msgs);
        let secs = c.elapsed.as_secs_f64().max(1e-9);
        let expected = self.produced.iter().find(|(s, _)| *s == size).map_or(0, |(_, n)| *n);
        eprintln!(
            "[{}] consume {size} B: {} msgs ({} acked by the producers) in {:.2} s = {:.0} msg/s, {:.2} MB/s",
            self.system,
            c.msgs,
            expected,
            secs,
            c.msgs as f64 / secs,
            c.bytes as f64 / secs / 1e6
        );
        eprintln!("[{}]   {}", self.system, self.cpu_note(&cpu));
        if c.msgs < expected {
            eprintln!("[{}]   WARNING: read {} messages fewer than were acknowledged", self.system, expected - c.msgs);
            self.failed = true;
        }
        self.rows.push(Row {
            system: self.system.clone(),
            case: "consume".into(),
            size,
            msgs_per_s: c.msgs as f64 / secs,
            mb_per_s: c.bytes as f64 / secs / 1e6,
            p50_us: None,
            p99_us: None,
            fsync_before_ack: self.fsync_before_ack,
            p999_us: None,
            server_cpu_us_per_msg: cpu.server_us_per_msg,
            client_cpu_us_per_msg: cpu.client_us_per_msg,
            e2e: None,
        });
    }

    /// Adds the row of an end-to-end case; `cpu` was started before its consumer and producers.
    pub fn e2e(&mut self, plan: &E2ePlan, p: &E2eProduced, tracker: &E2eTracker, cpu: CpuMeter) {
        let received = tracker.received.len();
        let cpu = cpu.finish(received);
        let acked_set = p.acked.lock().unwrap_or_else(|e| e.into_inner());
        let (acked, lost, unacked) =
            (acked_set.len(), acked_set.missing_from(&tracker.received), tracker.received.missing_from(&acked_set));
        let secs = tracker.last_new.map_or(0.0, |l| l.saturating_duration_since(p.start).as_secs_f64()).max(1e-9);
        let h = &tracker.hist;
        let some = |q: f64| (received > 0).then(|| h.value_at_quantile(q));
        let counts = E2eCounts {
            rate: plan.rate,
            planned: plan.messages,
            sent: p.sent,
            acked,
            received,
            lost,
            duplicates: tracker.duplicates,
            received_unacknowledged: unacked,
            send_p99_us: (acked > 0).then(|| p.send_hist.value_at_quantile(0.99)),
        };
        eprintln!(
            "[{}] {} {} B: {} of {} sent, {acked} acked, {received} received in {secs:.2} s = {:.0} msg/s; produce-to-consume p50 {} µs, \
             p99 {} µs, p99.9 {} µs, max {} µs; send-to-ack p99 {} µs; lost {lost}, duplicates {}, received unacknowledged {unacked}, \
             foreign {}; {} send errors",
            self.system,
            plan.name,
            plan.size,
            p.sent,
            plan.messages,
            received as f64 / secs,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            p.send_hist.value_at_quantile(0.99),
            tracker.duplicates,
            tracker.foreign,
            p.errors
        );
        eprintln!("[{}]   {}", self.system, self.cpu_note(&cpu));
        if let Some(e) = &p.first_error {
            eprintln!("[{}]   first error: {e}", self.system);
        }
        if received == 0 || lost > 0 {
            eprintln!("[{}]   WARNING: {lost} acknowledged messages were never received ({received} received)", self.system);
            self.failed = true;
        }
        self.rows.push(Row {
            system: self.system.clone(),
            case: plan.name.clone(),
            size: plan.size,
            msgs_per_s: received as f64 / secs,
            mb_per_s: received as f64 * plan.size as f64 / secs / 1e6,
            p50_us: some(0.5),
            p99_us: some(0.99),
            fsync_before_ack: self.fsync_before_ack,
            p999_us: some(0.999),
            server_cpu_us_per_msg: cpu.server_us_per_msg,
            client_cpu_us_per_msg: cpu.client_us_per_msg,
            e2e: Some(counts),
        });
    }

    /// Writes the rows to `out` (if given); fails when a case acknowledged nothing or consume fell short.
    pub fn finish(self, out: Option<&Path>) -> Result<()> {
        if let Some(path) = out {
            std::fs::write(path, serde_json::to_vec_pretty(&self.rows)?).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("[{}] rows written to {}", self.system, path.display());
        }
        if self.failed {
            bail!(
                "{}: a case acknowledged nothing, consume read fewer messages than were acknowledged, or an end-to-end case lost \
                 acknowledged messages",
                self.system
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_size_and_is_not_constant() {
        let p = payload(1024);
        assert_eq!(p.len(), 1024);
        assert!(p.iter().any(|b| *b != p[0]));
    }

    #[tokio::test]
    async fn e2e_produce_follows_the_schedule_and_numbers_every_message() {
        let plan = E2ePlan { name: "e2e 2000/s".into(), rate: 2000, messages: 400, size: 32, producers: 2, inflight: 50 };
        let seen = Arc::new(Mutex::new(E2eTracker::new(plan.messages)));
        let s = Arc::clone(&seen);
        let p = e2e_produce(vec![(), ()], &plan, Duration::from_secs(10), move |_: &(), body: Bytes| {
            s.lock().unwrap().on_body(&body, benchkit::now_ns());
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(())
            }
        })
        .await
        .unwrap();
        // 400 messages at 2000/s: the last one is due at 0.1995 s, so the schedule cannot end before it.
        assert!(p.start.elapsed() >= Duration::from_millis(199));
        assert_eq!(p.sent, 400);
        assert_eq!(p.acked.lock().unwrap().len(), 400);
        {
            let t = seen.lock().unwrap();
            assert_eq!((t.received.len(), t.duplicates, t.foreign), (400, 0, 0));
        }
        assert_eq!(p.send_hist.len(), 400);
        // Everything acknowledged was received: the drain ends at once and stops the consumer.
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        e2e_drain(&seen, &p, Duration::from_secs(30), &stop).await;
        assert!(stop.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(30));
        // One acknowledged message never arrives: the drain ends after the idle time, and it is lost.
        let partial = Mutex::new(E2eTracker::new(plan.messages));
        for seq in 1..400u64 {
            let mut body = vec![0u8; 16];
            benchkit::e2e_stamp(&mut body, seq, benchkit::now_ns());
            partial.lock().unwrap().on_body(&body, benchkit::now_ns());
        }
        let stop = AtomicBool::new(false);
        e2e_drain(&partial, &p, Duration::from_millis(100), &stop).await;
        assert!(stop.load(Ordering::Acquire));
        assert_eq!(p.acked.lock().unwrap().missing_from(&partial.lock().unwrap().received), 1);
    }

    #[test]
    fn e2e_options_are_bounded() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            w: Workload,
        }
        let parse = |args: &[&str]| T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.w);
        let w = parse(&["--e2e-rates", "1000,10000", "--duration", "3"]).unwrap();
        let plans = w.e2e_cases().unwrap();
        assert_eq!(plans.iter().map(|p| (p.name.as_str(), p.messages)).collect::<Vec<_>>(), [("e2e 1000/s", 3000), ("e2e 10000/s", 30000)]);
        assert!(parse(&[]).unwrap().e2e_cases().unwrap().is_empty());
        assert!(parse(&["--e2e-rates", "0"]).unwrap().e2e_cases().is_err());
        assert!(parse(&["--e2e-rates", "2000000"]).unwrap().e2e_cases().is_err());
        assert!(parse(&["--e2e-rates", "1000000", "--duration", "51"]).unwrap().e2e_cases().is_err());
        assert!(parse(&["--e2e-rates", "1,2,3,4,5,6,7,8,9"]).unwrap().e2e_cases().is_err());
        assert!(parse(&["--e2e-rates", "1000", "--e2e-size", "15"]).unwrap().e2e_cases().is_err());
        assert!(parse(&["--e2e-rates", "1000", "--e2e-inflight", "0"]).unwrap().e2e_cases().is_err());
        assert!(parse(&["--server-pids", "1,x"]).is_err());
        assert_eq!(parse(&["--server-pids", "1,2"]).unwrap().server_pids(), [1, 2]);
    }

    #[tokio::test]
    async fn produce_keeps_the_window_and_counts_acks() {
        let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, m) = (in_flight.clone(), max_seen.clone());
        let p = produce(vec![(), ()], 8, 16, Duration::from_millis(200), move |_: &(), _b| {
            let (f, m) = (f.clone(), m.clone());
            async move {
                let now = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                m.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                f.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
        assert!(p.acked > 16, "acked {}", p.acked);
        assert_eq!(p.errors, 0);
        assert!(max_seen.load(std::sync::atomic::Ordering::SeqCst) <= 16);
        assert_eq!(p.hist.len(), p.acked);
    }
}
