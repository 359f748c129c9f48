//! `raftmq-jepsen`: chaos tests of a 3-node raftmq group in network namespaces.
//!
//! - `run`: set up, run the workload under faults, drain, check; prints the summary and, last,
//!   `VALID? YES|NO|UNKNOWN` (exit code 0, 1 or 2).
//! - `check HISTORY`: check a recorded `history.jsonl` again.
//! - `plot DIR`: redraw the plots of a results folder.
//! - `cleanup`: kill what a (crashed) harness started and remove its namespaces, bridge and rules.
//!
//! Needs root (namespaces, nftables, tc). `scripts/jepsen.sh` installs the Debian packages it uses.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use raftmq_client::ProducerOptions;
use raftmq_jepsen::checker::{check, CheckOptions, CheckResult};
use raftmq_jepsen::history::read_history;
use raftmq_jepsen::nemesis::Family;
use raftmq_jepsen::run::{run, RunConfig};
use raftmq_jepsen::{cluster, plot};

#[derive(Parser)]
#[command(name = "raftmq-jepsen", about = "Jepsen-style chaos testing of raftmq")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a test.
    Run(RunArgs),
    /// Check a history file.
    Check {
        /// `history.jsonl`.
        history: PathBuf,
        /// Also write the full result (as `results.json`) here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Redraw the plots of a results folder.
    Plot {
        /// The results folder (holds history.jsonl).
        dir: PathBuf,
    },
    /// Remove everything a harness started or created.
    Cleanup,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The `raftmq` binary.
    #[arg(long, env = "RAFTMQ_BIN")]
    bin: PathBuf,
    /// Nemesis families, comma-separated, `all` or `none`: partition, kill, pause, clock, loss, slow, transfer;
    /// also `restart` (a graceful rolling restart; not part of `all`).
    #[arg(long, default_value = "partition,kill,pause,clock")]
    nemesis: String,
    /// Seed of the fault schedule and the workload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of faults.
    #[arg(long, default_value_t = 300)]
    time_limit: u64,
    /// Mean seconds between faults.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Target operations per second (all workers).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Results folder root.
    #[arg(long, default_value = "jepsen/store")]
    store: PathBuf,
    /// Broker data root (must be a real disk, not tmpfs).
    #[arg(long, default_value = "/var/tmp/raftmq-jepsen-data")]
    data_root: PathBuf,
    /// Run name (default: the nemesis list).
    #[arg(long)]
    name: Option<String>,
    /// Short holds and windows for CI (faults held 2-6 s, 5 s recovery, 60 s drain limit).
    #[arg(long)]
    quick: bool,
    /// Extra TOML for every broker (e.g. an `unsafe…` test switch).
    #[arg(long, default_value = "")]
    broker_extra: String,
    /// Share of producer operations (0..=1) that are scheduled sends: one message with a delay of 1-20 s
    /// (mostly `TIMER_DELAY_MS`, a quarter `DELAY` levels 1-3), checked for loss, duplicates and early delivery.
    #[arg(long, default_value_t = 0.0)]
    scheduled_share: f64,
    /// Share of producer operations (0..=1) that are transactional: a half message, then a commit, a rollback
    /// or a "crash" (no END; check-backs answered commit, rollback, or never, so that the broker parks it).
    #[arg(long, default_value_t = 0.0)]
    txn_share: f64,
    /// The producers' retries: `default` (the client's, which keeps a message's UNIQ_KEY across retries so the
    /// broker de-duplicates them) or a number (`0`: one attempt per send).
    #[arg(long, default_value = "default")]
    producer_retries: String,
}

fn verdict_line(r: &CheckResult) -> ExitCode {
    println!("VALID? {}", r.validity.as_str());
    ExitCode::from(r.validity.exit_code() as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("RAFTMQ_JEPSEN_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            println!("VALID? UNKNOWN");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Cleanup => {
            let _lock = cluster::RunLock::acquire()?;
            cluster::cleanup();
            println!("cleaned up");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { history, json } => {
            let ops = read_history(&history).with_context(|| format!("reading {}", history.display()))?;
            let r = check(&ops, &CheckOptions::default());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{}", r.summary_table());
            Ok(verdict_line(&r))
        }
        Cmd::Plot { dir } => {
            let ops = read_history(dir.join("history.jsonl"))?;
            let r = check(&ops, &CheckOptions::default());
            plot::plot_all(&ops, &r, &dir)?;
            println!("plots written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(a) => {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                bail!("raftmq-jepsen run needs root (network namespaces, nftables, tc)");
            }
            let families = Family::parse_list(&a.nemesis)?;
            // Held until the run has torn its cluster down.
            let _lock = cluster::RunLock::acquire()?;
            if !(0.0..=1.0).contains(&a.scheduled_share) {
                bail!("--scheduled-share must be between 0 and 1, got {}", a.scheduled_share);
            }
            if !(0.0..=1.0).contains(&a.txn_share) || a.scheduled_share + a.txn_share > 1.0 {
                bail!("--txn-share must be between 0 and 1, and with --scheduled-share at most 1, got {}", a.txn_share);
            }
            let producer_retries = match a.producer_retries.as_str() {
                "default" => ProducerOptions::new("jepsen").retries,
                n => n.parse::<u32>().with_context(|| format!("--producer-retries must be `default` or a number, got {n:?}"))?,
            };
            let (hold, recovery, drain, warmup) = if a.quick {
                ((Duration::from_secs(2), Duration::from_secs(6)), Duration::from_secs(5), Duration::from_secs(60), Duration::from_secs(3))
            } else {
                (
                    (Duration::from_secs(5), Duration::from_secs(15)),
                    Duration::from_secs(15),
                    Duration::from_secs(60),
                    Duration::from_secs(10),
                )
            };
            let cfg = RunConfig {
                bin: a.bin.canonicalize().with_context(|| format!("raftmq binary {}", a.bin.display()))?,
                store: a.store,
                data_root: a.data_root,
                name: a.name.unwrap_or_else(|| a.nemesis.replace(',', "+")),
                seed: a.seed,
                families,
                time_limit: Duration::from_secs(a.time_limit),
                interval: Duration::from_secs(a.interval),
                hold,
                warmup,
                recovery,
                drain_limit: drain,
                rate: a.rate,
                queues: 4,
                producers: 4,
                consumers: 2,
                broker_extra: a.broker_extra,
                scheduled_share: a.scheduled_share,
                txn_share: a.txn_share,
                producer_retries,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let outcome = runtime.block_on(run(cfg))?;
            print!("{}", outcome.result.summary_table());
            println!("results in {}", outcome.dir.display());
            Ok(verdict_line(&outcome.result))
        }
    }
}
