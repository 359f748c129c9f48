//! What every system shares: the workload options, the three produce cases, the closed-loop producer driver
//! with HDR ack latencies, the consume result, and the rows written as JSON.
//!
//! Every produce case is closed-loop: each producer keeps up to `inflight` sends outstanding and issues the
//! next one as soon as an acknowledgement frees a slot (`inflight = 1` is "send, wait for the ack, repeat").
//! Latency is measured from the start of the send call to the acknowledgement. Producers stop issuing when the
//! duration is over and wait for what is still in flight; throughput is acknowledged messages divided by the
//! time until the last acknowledgement.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Message sizes of the run: every system gets one destination (topic, stream, queue) per size, so that the
/// consume rows compare like with like.
pub const SIZES: [usize; 2] = [128, 1024];

/// A producer stops issuing sends after this many failures (the system is down; no point spinning).
const MAX_ERRORS_PER_PRODUCER: u64 = 1000;

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
    /// Give up consuming when no message arrived for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub idle_timeout: u64,
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

    /// Consume deadlines: (overall, without progress).
    pub fn consume_limits(&self) -> (Duration, Duration) {
        (Duration::from_secs(self.consume_timeout.max(1)), Duration::from_secs(self.idle_timeout.max(1)))
    }
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
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
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

/// Collects the rows of one system run and prints each as it is added.
pub struct Report {
    system: String,
    fsync_before_ack: bool,
    rows: Vec<Row>,
    /// Acknowledged messages (warm-up included) per size, to check the consume count against.
    produced: Vec<(usize, u64)>,
    failed: bool,
}

impl Report {
    /// A report for `system`.
    pub fn new(system: &str, fsync_before_ack: bool) -> Report {
        Report { system: system.to_string(), fsync_before_ack, rows: Vec::new(), produced: Vec::new(), failed: false }
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

    /// Adds the row of a produce case.
    pub fn produced(&mut self, case: &Case, p: &Produced) {
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
        if let Some(e) = &p.first_error {
            eprintln!("[{}]   first error: {e}", self.system);
        }
        if p.acked == 0 {
            self.failed = true;
        }
        self.rows.push(row);
    }

    /// Adds the row of consuming the `size` destination.
    pub fn consumed(&mut self, size: usize, c: &Consumed) {
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
        });
    }

    /// Writes the rows to `out` (if given); fails when a case acknowledged nothing or consume fell short.
    pub fn finish(self, out: Option<&Path>) -> Result<()> {
        if let Some(path) = out {
            std::fs::write(path, serde_json::to_vec_pretty(&self.rows)?).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("[{}] rows written to {}", self.system, path.display());
        }
        if self.failed {
            bail!("{}: a case acknowledged nothing or consume read fewer messages than were acknowledged", self.system);
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
