//! NATS JetStream through `async-nats`: one fresh file-storage stream per size with `--replicas` replicas
//! (R3); sends are `jetstream.publish(...)` followed by awaiting the publish-ack future (pipelined = up to
//! `inflight` outstanding ack futures per producer); every producer is its own connection, producer `i`
//! preferring server `i mod n`; consume with a pull consumer fetching batches from the start of the stream.
//! End-to-end cases: a fresh stream per rate, read while it is written by a pull consumer's continuous
//! `messages()` stream (batches of `--batch`, the next pull requested before the current batch runs out).
//!
//! Durability at ack: the stream leader acknowledges once a quorum of replicas has the message in memory /
//! the OS page cache. The file store fsyncs every `sync_interval` (2 min by default; the option exists since
//! 2.10, Debian's 2.9.10 has only the lazy default), so `fsync_before_ack` defaults to false; pass
//! `--fsync-before-ack true` for a server configured with `sync_interval: always`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{AckKind, Context};
use bytes::Bytes;
use futures::StreamExt;

use crate::benchkit::{self, E2eTracker};
use crate::common::{self, Consumed, E2ePlan, Report, Workload, SIZES};

/// `bench-peers nats` options.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Server URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "nats://127.0.0.1:4222")]
    pub urls: Vec<String>,
    /// System label in the table.
    #[arg(long, default_value = "nats")]
    pub label: String,
    /// Whether the servers fsync before acknowledging (only with `sync_interval: always`, nats-server 2.10+).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub fsync_before_ack: bool,
    /// Stream replicas.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Messages per pull request when consuming.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Seconds to wait for the JetStream meta leader (stream creation is retried until then).
    #[arg(long, default_value_t = 60)]
    pub ready_timeout: u64,
    #[command(flatten)]
    pub work: Workload,
}

/// A connection to the cluster preferring server `i mod n`, and its JetStream context.
async fn connect(o: &Opts, i: usize, inflight: usize) -> Result<Context> {
    let n = o.urls.len().max(1);
    let mut urls = o.urls.clone();
    urls.rotate_left(i % n);
    let client = async_nats::ConnectOptions::new()
        .name(format!("bench-{}-{i}", o.label))
        .retain_servers_order()
        .connect(urls)
        .await
        .with_context(|| format!("connecting to {}", o.urls.join(",")))?;
    Ok(ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_ack_inflight(inflight.max(1) * 2)
        .backpressure_on_inflight(true)
        .build(client))
}

/// Creates the stream, retrying while the JetStream cluster has no meta leader yet.
async fn create_stream(js: &Context, name: &str, subject: &str, replicas: usize, timeout: Duration) -> Result<()> {
    let give_up = Instant::now() + timeout;
    loop {
        let config = stream::Config {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(stream) => {
                let cluster = stream.cached_info().cluster.clone().unwrap_or_default();
                let leader = cluster.leader.unwrap_or_default();
                let followers: Vec<String> = cluster.replicas.into_iter().map(|p| p.name).collect();
                eprintln!("  stream {name}: leader {leader:?}, followers {followers:?}");
                if replicas > 1 && followers.len() + 1 != replicas {
                    bail!("stream {name} has {} replicas instead of {replicas}", followers.len() + 1);
                }
                return Ok(());
            }
            Err(e) if Instant::now() < give_up => {
                eprintln!("  creating stream {name}: {e}; retrying (JetStream cluster not ready?)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow!("creating stream {name}: {e}")),
        }
    }
}

async fn publish(js: Context, subject: String, body: Bytes) -> Result<()> {
    let ack = js.publish(subject, body).await.map_err(|e| anyhow!("publish: {e}"))?;
    ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
    Ok(())
}

/// A durable pull consumer reading `stream` from its start; `true` when it had to use `AckPolicy::All`.
async fn pull_consumer(stream: &mut stream::Stream, name: &str, batch: usize) -> Result<(PullConsumer, bool)> {
    // Read-only bench: no acks (as raftmq's pull consumer, which commits nothing). Servers that insist on
    // acks for pull consumers get AckAll, acknowledged once per batch.
    match stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
    {
        Ok(c) => Ok((c, false)),
        Err(e) => {
            eprintln!("  pull consumer with AckPolicy::None refused ({e}); using AckPolicy::All");
            let c = stream
                .create_consumer(pull::Config {
                    durable_name: Some(format!("{name}_ackall")),
                    ack_policy: AckPolicy::All,
                    deliver_policy: DeliverPolicy::All,
                    max_ack_pending: (batch as i64) * 4,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("creating the pull consumer: {e}"))?;
            Ok((c, true))
        }
    }
}

async fn consume(o: &Opts, js: &Context, stream_name: &str) -> Result<Consumed> {
    let mut stream = js.get_stream(stream_name).await.map_err(|e| anyhow!("stream {stream_name}: {e}"))?;
    let expected = stream.info().await.map_err(|e| anyhow!("stream info: {e}"))?.state.messages;
    let (consumer, ack_all) = pull_consumer(&mut stream, "bench", o.batch).await?;
    let (limit, idle) = o.work.consume_limits();
    let start = Instant::now();
    let mut messages =
        consumer.stream().max_messages_per_batch(o.batch.max(1)).messages().await.map_err(|e| anyhow!("starting the pull stream: {e}"))?;
    let (mut msgs, mut bytes) = (0u64, 0u64);
    while msgs < expected {
        if start.elapsed() > limit {
            eprintln!("  consume stopped after {msgs} of {expected} messages (timeout)");
            break;
        }
        let next = match tokio::time::timeout(idle, messages.next()).await {
            Ok(Some(m)) => m.map_err(|e| anyhow!("pull: {e}"))?,
            Ok(None) => break,
            Err(_) => {
                eprintln!("  consume stopped after {msgs} of {expected} messages (idle)");
                break;
            }
        };
        msgs += 1;
        bytes += next.payload.len() as u64;
        if ack_all && (msgs % (o.batch.max(1) as u64) == 0 || msgs == expected) {
            next.ack_with(AckKind::Ack).await.map_err(|e| anyhow!("ack: {e}"))?;
        }
    }
    let elapsed = start.elapsed();
    drop(messages);
    if msgs > expected {
        bail!("read {msgs} messages from a stream holding {expected}");
    }
    Ok(Consumed { msgs, bytes, elapsed })
}

/// Reads the end-to-end stream until `stop`.
async fn e2e_reader(
    consumer: PullConsumer,
    ack_all: bool,
    batch: usize,
    tracker: Arc<Mutex<E2eTracker>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut messages =
        consumer.stream().max_messages_per_batch(batch.max(1)).messages().await.map_err(|e| anyhow!("starting the pull stream: {e}"))?;
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let m = match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
            Ok(Some(m)) => m.map_err(|e| anyhow!("pull: {e}"))?,
            Ok(None) => break,
            Err(_) => continue,
        };
        tracker.lock().unwrap_or_else(|e| e.into_inner()).on_body(&m.payload, benchkit::now_ns());
        n += 1;
        if ack_all && n.is_multiple_of(batch.max(1) as u64) {
            m.ack_with(AckKind::Ack).await.map_err(|e| anyhow!("ack: {e}"))?;
        }
    }
    Ok(())
}

/// One end-to-end case on a fresh stream.
async fn e2e_case(o: &Opts, admin: &Context, report: &mut Report, plan: &E2ePlan, name: &str, subject: &str) -> Result<()> {
    create_stream(admin, name, subject, o.replicas, Duration::from_secs(o.ready_timeout)).await?;
    let mut stream = admin.get_stream(name).await.map_err(|e| anyhow!("stream {name}: {e}"))?;
    let (consumer, ack_all) = pull_consumer(&mut stream, "bench_e2e", o.batch).await?;
    let tracker = Arc::new(Mutex::new(E2eTracker::new(plan.messages)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..plan.producers {
        producers.push(connect(o, p, plan.inflight).await?);
    }
    let cpu = report.cpu_start();
    let reader = tokio::spawn(e2e_reader(consumer, ack_all, o.batch, Arc::clone(&tracker), Arc::clone(&stop)));
    let subject = subject.to_string();
    let send = move |js: &Context, body: Bytes| publish(js.clone(), subject.clone(), body);
    let produced = common::e2e_produce(producers, plan, o.work.case_duration() * 2, send).await?;
    common::e2e_drain(&tracker, &produced, o.work.consume_limits().1, &stop).await;
    let read = reader.await.context("e2e reader panicked")?;
    report.e2e(plan, &produced, &tracker.lock().unwrap_or_else(|e| e.into_inner()), cpu);
    read?;
    if let Err(e) = admin.delete_stream(name).await {
        eprintln!("  deleting stream {name}: {e}");
    }
    Ok(())
}

/// Runs the three cases, the consume and the end-to-end cases against a NATS JetStream cluster.
pub async fn run(o: Opts) -> Result<()> {
    let e2e = o.work.e2e_cases()?;
    let mut report = Report::new(&o.label, o.fsync_before_ack, o.work.server_pids());
    let id = common::run_id();
    let names: Vec<(String, String)> = SIZES.iter().map(|s| (format!("BENCH_{id}_{s}"), format!("bench.{id}.{s}"))).collect();

    let admin = connect(&o, 0, 1).await?;
    for (name, subject) in &names {
        create_stream(&admin, name, subject, o.replicas, Duration::from_secs(o.ready_timeout)).await?;
    }
    eprintln!(
        "[{}] streams {} (R{}, file storage)",
        o.label,
        names.iter().map(|n| n.0.as_str()).collect::<Vec<_>>().join(", "),
        o.replicas
    );

    for ((_, subject), size) in names.iter().zip(SIZES) {
        common::warm_up(o.work.warmup, size, |body| publish(admin.clone(), subject.clone(), body)).await?;
        report.warmed_up(size, o.work.warmup);
    }

    for case in o.work.cases() {
        let subject = names[SIZES.iter().position(|s| *s == case.size).unwrap_or(0)].1.clone();
        let mut producers = Vec::new();
        for p in 0..case.producers {
            producers.push(connect(&o, p, case.inflight).await?);
        }
        let send = move |js: &Context, body: Bytes| publish(js.clone(), subject.clone(), body);
        let cpu = report.cpu_start();
        let produced = common::produce(producers, case.inflight, case.size, o.work.case_duration(), send).await?;
        report.produced(&case, &produced, cpu);
    }

    for ((name, _), size) in names.iter().zip(SIZES) {
        let cpu = report.cpu_start();
        let c = consume(&o, &admin, name).await?;
        report.consumed(size, &c, cpu);
    }
    for (name, _) in &names {
        if let Err(e) = admin.delete_stream(name).await {
            eprintln!("  deleting stream {name}: {e}");
        }
    }
    for plan in &e2e {
        e2e_case(&o, &admin, &mut report, plan, &format!("BENCH_{id}_E2E{}", plan.rate), &format!("bench.{id}.e2e{}", plan.rate)).await?;
    }
    report.finish(o.work.out.as_deref())
}
