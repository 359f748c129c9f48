//! One test run from start to verdict: set up the namespaces and the cluster, wait for health, create the
//! topic, run the workload under the nemesis schedule, heal, let it recover, drain every queue, check the
//! history, write the results folder and tear everything down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use raftmq_client::{Admin, ClientConfig, Message, Producer, ProducerOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tokio::sync::Mutex;

use crate::checker::{check, CheckOptions, CheckResult, SCHEDULE_LATE_MARGIN_MS};
use crate::cluster::{self, namesrv_addr, Cluster, ClusterSpec};
use crate::history::read_history;
use crate::nemesis::{self, Family, ScheduleConfig};
use crate::workload::{self, Progress, Recorder, WorkloadConfig};
use crate::{clock, net, plot, transactions};

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `raftmq` binary.
    pub bin: PathBuf,
    /// Results go to `<store>/<name>-<seed>-<unix time>/`.
    pub store: PathBuf,
    /// Broker data root (a real disk).
    pub data_root: PathBuf,
    /// Run name (e.g. the nemesis families).
    pub name: String,
    /// Seed of the schedule and the generator.
    pub seed: u64,
    /// Fault families.
    pub families: Vec<Family>,
    /// Length of the fault phase.
    pub time_limit: Duration,
    /// Mean wait between faults.
    pub interval: Duration,
    /// Fault hold range.
    pub hold: (Duration, Duration),
    /// Fault-free time at the start.
    pub warmup: Duration,
    /// Fault-free time after the heal, before the drain.
    pub recovery: Duration,
    /// Longest the final drain may take.
    pub drain_limit: Duration,
    /// Target ops/s.
    pub rate: f64,
    /// Queues of the test topic.
    pub queues: u32,
    /// Producer and consumer workers.
    pub producers: usize,
    /// Consumer workers.
    pub consumers: usize,
    /// Extra broker TOML (unsafe test switches).
    pub broker_extra: String,
    /// Share of producer operations that are scheduled sends.
    pub scheduled_share: f64,
    /// Share of producer operations that are transactional sends.
    pub txn_share: f64,
    /// The producers' retries (0: one attempt per send).
    pub producer_retries: u32,
}

/// The outcome: the results directory and the check result.
pub struct RunOutcome {
    /// Where everything was written.
    pub dir: PathBuf,
    /// The checker's verdict and report.
    pub result: CheckResult,
}

async fn health_gate(namesrv: &str, topic: &str, queues: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = String::from("no attempt");
    while Instant::now() < deadline {
        let cfg = ClientConfig::new(namesrv).with_instance_name(format!("jepsen-setup-{}", std::process::id()));
        let attempt = async {
            let admin = Admin::start(cfg.clone()).await?;
            let created = admin.create_topic(topic, queues as i32).await;
            admin.shutdown().await;
            created?;
            let mut opts = ProducerOptions::new("jepsen-canary");
            opts.send_timeout = Duration::from_secs(2);
            let p = Producer::start(cfg, opts).await?;
            let r = p.send(Message::new("jepsen-canary", "canary")).await;
            p.shutdown().await;
            r.map(|_| ())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => last_err = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("cluster not healthy within {timeout:?}: {last_err}")
}

/// Runs one test.
pub async fn run(cfg: RunConfig) -> Result<RunOutcome> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir = cfg.store.join(format!("{}-{}-{stamp}", cfg.name, cfg.seed));
    std::fs::create_dir_all(&dir)?;
    let data_dir = cfg.data_root.join(format!("{}-{stamp}", cfg.name));
    let faketime_lib = if cfg.families.contains(&Family::Clock) {
        Some(clock::find_libfaketime().context("the clock nemesis needs libfaketime (Debian package faketime)")?)
    } else {
        None
    };
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&json!({
            "name": cfg.name, "seed": cfg.seed, "families": cfg.families.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "time_limit_s": cfg.time_limit.as_secs_f64(), "interval_s": cfg.interval.as_secs_f64(), "rate": cfg.rate,
            "queues": cfg.queues, "producers": cfg.producers, "consumers": cfg.consumers, "broker_extra": cfg.broker_extra,
            "scheduled_share": cfg.scheduled_share, "txn_share": cfg.txn_share, "producer_retries": cfg.producer_retries,
            "bin": cfg.bin,
        }))?,
    )?;
    cluster::cleanup();
    cluster::setup_network(3).context("network setup (needs root, iproute2 and nftables)")?;
    let netem = net::netem_available(1);
    // Transactions: check-backs and parking must happen within the run.
    let mut broker_extra = cfg.broker_extra.clone();
    if cfg.txn_share > 0.0 {
        broker_extra.push('\n');
        broker_extra.push_str(&transactions::broker_settings(&cfg.broker_extra));
    }
    let spec = ClusterSpec { nodes: 3, bin: cfg.bin.clone(), log_dir: dir.clone(), data_dir: data_dir.clone(), faketime_lib, broker_extra };
    let result = run_in_cluster(&cfg, &dir, spec, netem).await;
    cluster::cleanup();
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn run_in_cluster(cfg: &RunConfig, dir: &Path, spec: ClusterSpec, netem: bool) -> Result<RunOutcome> {
    let cluster = Arc::new(Mutex::new(Cluster::start(spec)?));
    let topic = "jt";
    health_gate(&namesrv_addr(), topic, cfg.queues, Duration::from_secs(60)).await?;
    let history_path = dir.join("history.jsonl");
    let (rec, writer) = Recorder::create(&history_path)?;
    let wcfg = WorkloadConfig {
        namesrv: namesrv_addr(),
        topic: topic.into(),
        broker_name: "broker-a".into(),
        queues: cfg.queues,
        producers: cfg.producers,
        consumers: cfg.consumers,
        rate: cfg.rate,
        batch_max: 3,
        seed: cfg.seed,
        body_bytes: 100,
        scheduled_share: cfg.scheduled_share,
        txn_share: cfg.txn_share,
        producer_retries: cfg.producer_retries,
        brokers: (1..=3).map(cluster::client_addr).collect(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let workload = tokio::spawn(workload::run(wcfg.clone(), rec.clone(), Arc::clone(&stop), Arc::clone(&progress)));
    let scfg = ScheduleConfig {
        families: cfg.families.clone(),
        interval: cfg.interval,
        hold: cfg.hold,
        warmup: cfg.warmup,
        time_limit: cfg.time_limit,
        netem,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    eprintln!("faults for {:?}: {}", cfg.time_limit, cfg.families.iter().map(|f| f.name()).collect::<Vec<_>>().join(","));
    let skew = nemesis::run(scfg, &mut rng, Arc::clone(&cluster), rec.clone()).await;
    eprintln!("healed; recovery window {:?}", cfg.recovery);
    tokio::time::sleep(cfg.recovery).await;
    stop.store(true, Ordering::Release);
    let _ = workload.await;
    eprintln!("final drain (up to {:?})", cfg.drain_limit);
    // How long past its due time an acknowledged scheduled message may take to appear: the clock offsets the
    // nemesis applied either way plus the checker's margin (the checker derives the same bound from the history).
    let scheduled_late = Duration::from_millis(skew.ahead() + skew.behind() + SCHEDULE_LATE_MARGIN_MS);
    if cfg.scheduled_share > 0.0 {
        eprintln!(
            "clock offsets applied: +{}ms / -{}ms{}",
            skew.ahead_ms,
            skew.behind_ms,
            if skew.unknown { " (unknown: a clock fault failed)" } else { "" }
        );
    }
    let drained = workload::final_drain(wcfg, rec.clone(), progress, cfg.drain_limit, 1_000_000, scheduled_late).await;
    eprintln!("final drain {}", if drained { "complete" } else { "INCOMPLETE" });
    drop(rec);
    writer.await.context("history writer")?.context("history writer")?;
    cluster.lock().await.stop_all();
    let ops = read_history(&history_path).context("reading the history back")?;
    let result = check(&ops, &CheckOptions::default());
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&result)?)?;
    std::fs::write(dir.join("summary.txt"), result.summary_table())?;
    if let Err(e) = plot::plot_all(&ops, &result, dir) {
        eprintln!("plots failed: {e:#}");
    }
    Ok(RunOutcome { dir: dir.to_path_buf(), result })
}
