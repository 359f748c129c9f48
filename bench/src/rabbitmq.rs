//! RabbitMQ quorum queues through `lapin` (AMQP 0.9.1): one fresh durable quorum queue per size
//! (`x-queue-type: quorum`, 3 replicas); every producer is its own connection (producer `i` to URI `i mod n`)
//! with one channel in confirm mode (`confirm_select`); a send is a persistent `basic_publish` plus waiting
//! for its publisher confirm (pipelined = up to `inflight` unconfirmed publishes per channel); consume with
//! `basic_consume`, manual acknowledgements (`multiple`, every `prefetch / 4` deliveries) and `basic_qos`
//! prefetch. End-to-end cases: a fresh quorum queue per rate, read while it is written by a `basic_consume`
//! consumer (prefetch `--prefetch`, `multiple` acks every prefetch / 4 deliveries).
//!
//! Durability at ack: a quorum queue confirms once a quorum of its replicas has written the message to the
//! Raft WAL and fsynced it, so `fsync_before_ack` defaults to true.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::benchkit::{self, E2eTracker};
use crate::common::{self, Consumed, E2ePlan, Report, Workload, SIZES};

/// How long a publish waits for its confirm before it counts as failed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// `bench-peers rabbitmq` options.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// AMQP URIs of the cluster's nodes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uris: Vec<String>,
    /// System label in the table.
    #[arg(long, default_value = "rabbitmq")]
    pub label: String,
    /// Whether the queue fsyncs before confirming (true for quorum queues).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub fsync_before_ack: bool,
    /// Replicas of each quorum queue (`x-quorum-initial-group-size`).
    #[arg(long, default_value_t = 3)]
    pub replicas: i32,
    /// Consumer prefetch (`basic_qos`).
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    #[command(flatten)]
    pub work: Workload,
}

/// One producer: its connection (kept open) and confirm-mode channel.
struct Prod {
    conn: Connection,
    ch: Channel,
}

async fn connect(o: &Opts, i: usize) -> Result<Connection> {
    let uri = &o.uris[i % o.uris.len().max(1)];
    let props = ConnectionProperties::default()
        .with_connection_name(format!("bench-{}-{i}", o.label).into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(uri, props).await.with_context(|| format!("connecting to {uri}"))
}

async fn producer(o: &Opts, i: usize) -> Result<Arc<Prod>> {
    let conn = connect(o, i).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await.context("confirm_select")?;
    Ok(Arc::new(Prod { conn, ch }))
}

async fn close(conn: &Connection) {
    if let Err(e) = conn.close(200, "bench done").await {
        eprintln!("  closing connection: {e}");
    }
}

async fn declare_quorum_queue(ch: &Channel, name: &str, replicas: i32) -> Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(replicas));
    ch.queue_declare(name, QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .with_context(|| format!("declaring quorum queue {name}"))?;
    Ok(())
}

async fn publish(ch: Channel, queue: String, body: Bytes) -> Result<()> {
    let props = BasicProperties::default().with_delivery_mode(2);
    let confirm = ch.basic_publish("", &queue, BasicPublishOptions::default(), &body, props).await.context("basic_publish")?;
    // As long as the other clients' ack timeouts: a slow confirm counts in the latency, a lost one as an error.
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| anyhow!("no publisher confirm within {} s", CONFIRM_TIMEOUT.as_secs()))?
        .context("publisher confirm")?;
    if !confirmation.is_ack() {
        bail!("publish not confirmed: {confirmation:?}");
    }
    Ok(())
}

async fn consume(o: &Opts, queue: &str) -> Result<Consumed> {
    let conn = connect(o, 0).await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(queue, QueueDeclareOptions { passive: true, durable: true, ..Default::default() }, FieldTable::default())
        .await
        .with_context(|| format!("passive declare of {queue}"))?;
    let expected = u64::from(q.message_count());
    ch.basic_qos(o.prefetch.max(1), BasicQosOptions::default()).await?;
    let ack_every = u64::from((o.prefetch / 4).max(1));
    let (limit, idle) = o.work.consume_limits();
    let start = Instant::now();
    let mut consumer = ch.basic_consume(queue, "bench", BasicConsumeOptions::default(), FieldTable::default()).await?;
    let (mut msgs, mut bytes) = (0u64, 0u64);
    while msgs < expected {
        if start.elapsed() > limit {
            eprintln!("  consume stopped after {msgs} of {expected} messages (timeout)");
            break;
        }
        let delivery = match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(d)) => d.map_err(|e| anyhow!("delivery: {e}"))?,
            Ok(None) => break,
            Err(_) => {
                eprintln!("  consume stopped after {msgs} of {expected} messages (idle)");
                break;
            }
        };
        msgs += 1;
        bytes += delivery.data.len() as u64;
        if msgs % ack_every == 0 || msgs == expected {
            delivery.ack(BasicAckOptions { multiple: true }).await.context("basic_ack")?;
        }
    }
    let elapsed = start.elapsed();
    ch.basic_cancel("bench", BasicCancelOptions::default()).await?;
    close(&conn).await;
    Ok(Consumed { msgs, bytes, elapsed })
}

/// Reads the end-to-end queue until `stop`.
async fn e2e_reader(ch: Channel, queue: String, prefetch: u16, tracker: Arc<Mutex<E2eTracker>>, stop: Arc<AtomicBool>) -> Result<()> {
    ch.basic_qos(prefetch.max(1), BasicQosOptions::default()).await?;
    let mut consumer = ch.basic_consume(&queue, "bench_e2e", BasicConsumeOptions::default(), FieldTable::default()).await?;
    let ack_every = u64::from((prefetch / 4).max(1));
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let delivery = match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            Ok(Some(d)) => d.map_err(|e| anyhow!("delivery: {e}"))?,
            Ok(None) => break,
            Err(_) => continue,
        };
        tracker.lock().unwrap_or_else(|e| e.into_inner()).on_body(&delivery.data, benchkit::now_ns());
        n += 1;
        if n.is_multiple_of(ack_every) {
            delivery.ack(BasicAckOptions { multiple: true }).await.context("basic_ack")?;
        }
    }
    ch.basic_cancel("bench_e2e", BasicCancelOptions::default()).await?;
    Ok(())
}

/// One end-to-end case on a fresh quorum queue.
async fn e2e_case(o: &Opts, admin: &Prod, report: &mut Report, plan: &E2ePlan, queue: &str) -> Result<()> {
    declare_quorum_queue(&admin.ch, queue, o.replicas).await?;
    let conn = connect(o, 0).await?;
    let ch = conn.create_channel().await?;
    let tracker = Arc::new(Mutex::new(E2eTracker::new(plan.messages)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..plan.producers {
        producers.push(producer(o, p).await?);
    }
    let cpu = report.cpu_start();
    let reader = tokio::spawn(e2e_reader(ch, queue.to_string(), o.prefetch, Arc::clone(&tracker), Arc::clone(&stop)));
    let q = queue.to_string();
    let send = move |p: &Arc<Prod>, body: Bytes| publish(p.ch.clone(), q.clone(), body);
    let produced = common::e2e_produce(producers.clone(), plan, o.work.case_duration() * 2, send).await?;
    common::e2e_drain(&tracker, &produced, o.work.consume_limits().1, &stop).await;
    let read = reader.await.context("e2e reader panicked")?;
    report.e2e(plan, &produced, &tracker.lock().unwrap_or_else(|e| e.into_inner()), cpu);
    for p in &producers {
        close(&p.conn).await;
    }
    close(&conn).await;
    read?;
    if let Err(e) = admin.ch.queue_delete(queue, QueueDeleteOptions::default()).await {
        eprintln!("  deleting queue {queue}: {e}");
    }
    Ok(())
}

/// Runs the three cases, the consume and the end-to-end cases against a RabbitMQ cluster.
pub async fn run(o: Opts) -> Result<()> {
    if o.uris.is_empty() {
        bail!("no --uris");
    }
    let e2e = o.work.e2e_cases()?;
    let mut report = Report::new(&o.label, o.fsync_before_ack, o.work.server_pids());
    let id = common::run_id();
    let queues: Vec<String> = SIZES.iter().map(|s| format!("bench_{id}_{s}")).collect();

    let admin = producer(&o, 0).await?;
    for q in &queues {
        declare_quorum_queue(&admin.ch, q, o.replicas).await?;
    }
    eprintln!("[{}] quorum queues {} ({} replicas)", o.label, queues.join(", "), o.replicas);
    for (q, size) in queues.iter().zip(SIZES) {
        common::warm_up(o.work.warmup, size, |body| publish(admin.ch.clone(), q.clone(), body)).await?;
        report.warmed_up(size, o.work.warmup);
    }

    for case in o.work.cases() {
        let queue = queues[SIZES.iter().position(|s| *s == case.size).unwrap_or(0)].clone();
        let mut producers = Vec::new();
        for p in 0..case.producers {
            producers.push(producer(&o, p).await?);
        }
        let send = move |p: &Arc<Prod>, body: Bytes| publish(p.ch.clone(), queue.clone(), body);
        let cpu = report.cpu_start();
        let produced = common::produce(producers.clone(), case.inflight, case.size, o.work.case_duration(), send).await?;
        report.produced(&case, &produced, cpu);
        for p in &producers {
            close(&p.conn).await;
        }
    }

    for (q, size) in queues.iter().zip(SIZES) {
        let cpu = report.cpu_start();
        let c = consume(&o, q).await?;
        report.consumed(size, &c, cpu);
    }
    for q in &queues {
        if let Err(e) = admin.ch.queue_delete(q, QueueDeleteOptions::default()).await {
            eprintln!("  deleting queue {q}: {e}");
        }
    }
    for plan in &e2e {
        e2e_case(&o, &admin, &mut report, plan, &format!("bench_{id}_e2e{}", plan.rate)).await?;
    }
    close(&admin.conn).await;
    report.finish(o.work.out.as_deref())
}
