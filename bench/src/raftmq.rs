//! raftmq through its own client (`raftmq-client`): one fresh topic per size, created on the broker group's
//! leader with `--queues` queues; sync sends with `Producer::send`, pipelined sends with `Producer::send_async`
//! (one `Producer`, i.e. one client instance and connection, per logical producer); consume with a
//! `PullConsumer` reading every queue from offset 0 to its end, one pull in flight per queue. End-to-end
//! cases send with `Producer::send_async` to a fresh topic per rate while a `PullConsumer` keeps one
//! long-polling pull (`pull_blocking`) in flight per queue, the way a push consumer reads.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use raftmq_client::{Admin, ClientConfig, Message, MessageQueue, Producer, ProducerOptions, PullConsumer, PullStatus};

use crate::benchkit::{self, E2eTracker};
use crate::common::{self, Consumed, E2ePlan, Report, Workload, SIZES};

/// `bench-peers raftmq` options.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Nameserver address.
    #[arg(long, default_value = "127.0.0.1:9876")]
    pub namesrv: String,
    /// System label in the table (e.g. raftmq-sync, raftmq-async).
    #[arg(long, default_value = "raftmq-sync")]
    pub label: String,
    /// Whether the brokers fdatasync before acknowledging (flushDiskType SYNC_FLUSH, the default). Default:
    /// true, or false when the label contains "async".
    #[arg(long)]
    pub fsync_before_ack: Option<bool>,
    /// Queues of each benchmark topic.
    #[arg(long, default_value_t = 8)]
    pub queues: i32,
    /// Turn the producer's auto-batching off: every send is its own request.
    #[arg(long)]
    pub no_auto_batch: bool,
    /// Auto-batch requests in flight per lane (the client default when not given).
    #[arg(long)]
    pub auto_batch_in_flight: Option<usize>,
    /// Messages per pull when consuming: 1000, as the NATS consumer's batch and RabbitMQ's prefetch (the
    /// broker also caps a pull at 256 KiB and 1024 messages; RocketMQ's own default is 32).
    #[arg(long, default_value_t = 1000)]
    pub pull_batch: i32,
    #[command(flatten)]
    pub work: Workload,
}

fn config(namesrv: &str, name: String) -> ClientConfig {
    ClientConfig::new(namesrv).with_instance_name(name)
}

async fn start_producer(o: &Opts, name: &str, inflight: usize) -> Result<Producer> {
    let mut opts = ProducerOptions::new(format!("bench_{name}"));
    opts.compress_over = usize::MAX;
    opts.max_async_in_flight = inflight.max(1) * 2;
    opts.auto_batch = !o.no_auto_batch;
    if let Some(n) = o.auto_batch_in_flight {
        opts.auto_batch_in_flight_max = n;
    }
    // As generous as the peers' ack timeouts: a slow ack counts in the latency, not as an error.
    opts.send_timeout = Duration::from_secs(30);
    let instance = format!("bench-{}-{name}-{}", o.label, std::process::id());
    Producer::start(config(&o.namesrv, instance), opts).await.with_context(|| format!("starting producer {name}"))
}

/// Creates `topic` with `queues` queues and waits until the nameserver routes all of them.
async fn create_topic(admin: &Admin, topic: &str, queues: i32) -> Result<()> {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.create_topic(topic, queues).await {
            Ok(_) => break,
            Err(e) if Instant::now() < give_up => {
                eprintln!("  creating {topic}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("creating topic {topic}")),
        }
    }
    loop {
        let route = admin.topic_route(topic).await?;
        if route.is_some_and(|r| r.queue_datas.iter().map(|q| q.write_queue_nums).sum::<i32>() >= queues) {
            return Ok(());
        }
        if Instant::now() > give_up {
            bail!("topic {topic} was created but the nameserver does not route its {queues} queues after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads one queue from offset 0 to `end`; returns (messages, bytes).
async fn drain_queue(pc: &PullConsumer, q: &MessageQueue, end: i64, batch: i32, deadline: Instant, idle: Duration) -> Result<(u64, u64)> {
    let (mut offset, mut msgs, mut bytes) = (0i64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    while offset < end {
        if Instant::now() > deadline || last_progress.elapsed() > idle {
            eprintln!("  queue {}: stopped at offset {offset} of {end} (timeout)", q.queue_id);
            break;
        }
        let r = pc.pull(q, "*", offset, batch).await.with_context(|| format!("pulling queue {} at {offset}", q.queue_id))?;
        match r.status {
            PullStatus::Found => {
                msgs += r.messages.len() as u64;
                bytes += r.messages.iter().map(|m| m.body.len() as u64).sum::<u64>();
                last_progress = Instant::now();
            }
            // A follower that has not applied the tail yet: ask again shortly.
            PullStatus::NoNewMsg => tokio::time::sleep(Duration::from_millis(5)).await,
            PullStatus::NoMatchedMsg | PullStatus::OffsetIllegal => {}
        }
        offset = offset.max(r.next_begin_offset);
    }
    Ok((msgs, bytes))
}

async fn consume(o: &Opts, topic: &str) -> Result<Consumed> {
    let pc = PullConsumer::start(config(&o.namesrv, format!("bench-{}-consumer-{}", o.label, std::process::id())), "bench_consume")
        .await
        .context("starting the pull consumer")?;
    let pc = Arc::new(pc);
    let queues = pc.fetch_subscribe_queues(topic).await?;
    let mut ends = Vec::new();
    for q in &queues {
        ends.push(pc.max_offset(q).await.with_context(|| format!("max offset of queue {}", q.queue_id))?);
    }
    let (limit, idle) = o.work.consume_limits();
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::new();
    for (q, end) in queues.into_iter().zip(ends) {
        let (pc, batch) = (Arc::clone(&pc), o.pull_batch);
        tasks.push(tokio::spawn(async move { drain_queue(&pc, &q, end, batch, deadline, idle).await }));
    }
    let (mut msgs, mut bytes) = (0, 0);
    for t in tasks {
        let (m, b) = t.await.context("consumer task panicked")??;
        msgs += m;
        bytes += b;
    }
    let elapsed = start.elapsed();
    pc.shutdown().await;
    Ok(Consumed { msgs, bytes, elapsed })
}

/// One end-to-end case on a fresh topic.
async fn e2e_case(o: &Opts, report: &mut Report, plan: &E2ePlan, topic: &str) -> Result<()> {
    let admin = Admin::start(config(&o.namesrv, format!("bench-{}-e2e-admin-{}", o.label, std::process::id()))).await?;
    create_topic(&admin, topic, o.queues).await?;
    admin.shutdown().await;
    let pc = Arc::new(
        PullConsumer::start(config(&o.namesrv, format!("bench-{}-e2e-consumer-{}", o.label, std::process::id())), "bench_e2e")
            .await
            .context("starting the e2e consumer")?,
    );
    let queues = pc.fetch_subscribe_queues(topic).await?;
    let tracker = Arc::new(Mutex::new(E2eTracker::new(plan.messages)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..plan.producers {
        producers.push(start_producer(o, &format!("e{p}"), plan.inflight).await?);
    }
    let cpu = report.cpu_start();
    let readers: Vec<_> = queues
        .into_iter()
        .map(|q| tokio::spawn(benchkit::e2e_reader(Arc::clone(&pc), q, 0, o.pull_batch, Arc::clone(&tracker), Arc::clone(&stop))))
        .collect();
    let t = topic.to_string();
    let send = move |p: &Producer, body: Bytes| {
        let (p, msg) = (p.clone(), Message::new(t.clone(), body));
        async move { p.send_async(msg).await.map(|_| ()).map_err(anyhow::Error::from) }
    };
    let produced = common::e2e_produce(producers.clone(), plan, o.work.case_duration() * 2, send).await?;
    common::e2e_drain(&tracker, &produced, o.work.consume_limits().1, &stop).await;
    let mut failures = 0;
    for r in readers {
        failures += r.await.context("e2e reader panicked")?;
    }
    report.e2e(plan, &produced, &tracker.lock().unwrap_or_else(|e| e.into_inner()), cpu);
    if failures > 0 {
        eprintln!("[{}]   {failures} failed pulls (retried)", o.label);
    }
    for p in producers {
        p.shutdown().await;
    }
    if let Ok(pc) = Arc::try_unwrap(pc) {
        pc.shutdown().await;
    }
    Ok(())
}

/// Runs the three cases, the consume and the end-to-end cases against a raftmq cluster.
pub async fn run(o: Opts) -> Result<()> {
    let e2e = o.work.e2e_cases()?;
    let fsync = o.fsync_before_ack.unwrap_or(!o.label.contains("async"));
    let mut report = Report::new(&o.label, fsync, o.work.server_pids());
    let id = common::run_id();
    let label: String = o.label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let topics: Vec<String> = SIZES.iter().map(|s| format!("bench_{label}_{id}_{s}")).collect();

    let admin = Admin::start(config(&o.namesrv, format!("bench-{}-admin-{}", o.label, std::process::id()))).await?;
    for t in &topics {
        create_topic(&admin, t, o.queues).await?;
    }
    admin.shutdown().await;
    eprintln!("[{}] topics {} ({} queues each)", o.label, topics.join(", "), o.queues);

    let warm = start_producer(&o, "warmup", 1).await?;
    for (t, size) in topics.iter().zip(SIZES) {
        common::warm_up(o.work.warmup, size, |body| {
            let (warm, t) = (warm.clone(), t.clone());
            async move { warm.send(Message::new(t, body)).await.map(|_| ()).map_err(Into::into) }
        })
        .await?;
        report.warmed_up(size, o.work.warmup);
    }
    warm.shutdown().await;

    for case in o.work.cases() {
        let topic = topics[SIZES.iter().position(|s| *s == case.size).unwrap_or(0)].clone();
        let mut producers = Vec::new();
        for p in 0..case.producers {
            producers.push(start_producer(&o, &format!("p{p}"), case.inflight).await?);
        }
        let sync = case.inflight == 1;
        let send = move |p: &Producer, body: Bytes| {
            let msg = Message::new(topic.clone(), body);
            let p = p.clone();
            async move {
                let r = if sync { p.send(msg).await } else { p.send_async(msg).await };
                r.map(|_| ()).map_err(anyhow::Error::from)
            }
        };
        let cpu = report.cpu_start();
        let produced = common::produce(producers.clone(), case.inflight, case.size, o.work.case_duration(), send).await?;
        report.produced(&case, &produced, cpu);
        for p in producers {
            p.shutdown().await;
        }
    }

    for (t, size) in topics.iter().zip(SIZES) {
        let cpu = report.cpu_start();
        let c = consume(&o, t).await?;
        report.consumed(size, &c, cpu);
    }
    for plan in &e2e {
        e2e_case(&o, &mut report, plan, &format!("bench_{label}_{id}_e2e{}", plan.rate)).await?;
    }
    report.finish(o.work.out.as_deref())
}
