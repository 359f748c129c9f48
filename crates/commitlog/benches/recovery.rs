//! Time to open (recover) a large commitlog with and without the recovery checkpoint, page cache dropped.
//!
//! Fills a temporary directory under `$RAFTMQ_BENCH_DIR` (default `/var/tmp`) with
//! `$RAFTMQ_BENCH_RECOVERY_MB` MiB (default 2048) of 1 KiB records (default geometry: 1 GiB segments, 1 Mi
//! index slots per file; async flush while filling). The checkpoint file is copied aside when all but the
//! last `$RAFTMQ_BENCH_RECOVERY_LAG_MB` MiB (default 100, about a second of appends) are written. Then, for
//! `$RAFTMQ_BENCH_RUNS` rounds (default 1), `CommitLog::open` is timed after `sync` + `drop_caches` (needs
//! root; without it the page cache stays warm and the figures say so) in three states:
//!
//! 1. `checkpoint current`: the checkpoint a clean close wrote names the last record;
//! 2. `checkpoint behind`: the copy from before the last LAG MiB, as a kill -9 leaves it (the rest is read
//!    and verified);
//! 3. `no checkpoint`: the file removed, so every record is read and verified (recovery before checkpoints).
//!
//! Run with `cargo bench -p raftmq-commitlog --bench recovery`. The directory is removed at the end.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use raftmq_commitlog::checkpoint::CHECKPOINT_FILE;
use raftmq_commitlog::{CommitLog, CommitLogConfig, FlushPolicy, RecordBatch, RecordKind, RecordMeta, HEADER_LEN};

const RECORD: usize = 1024;
const BATCH: u64 = 256;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(dir: &Path, flush: FlushPolicy) -> CommitLogConfig {
    let mut cfg = CommitLogConfig::new(dir);
    cfg.flush = flush;
    cfg
}

/// Appends records `from..to` (1 KiB each) in batches without waiting for durability.
async fn fill(log: &CommitLog, from: u64, to: u64) {
    let body: Vec<u8> = (0..RECORD - HEADER_LEN).map(|i| (i % 251) as u8).collect();
    let mut index = from;
    while index < to {
        let mut batch = RecordBatch::new();
        let end = (index + BATCH).min(to);
        for i in index..end {
            batch.push(RecordMeta { index: i, term: 1, node: 1, kind: RecordKind::Normal }, &body);
        }
        log.append(batch, Box::new(|r| r.expect("durable"))).await.expect("append");
        index = end;
    }
}

/// `sync` and drop the page cache; false when that is not permitted.
fn drop_caches() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Opens the log and returns how long that took, with what recovery reports.
fn timed_open(dir: &Path) -> (Duration, String) {
    let cold = drop_caches();
    let t0 = Instant::now();
    let log = CommitLog::open(config(dir, FlushPolicy::Sync)).expect("open");
    let took = t0.elapsed();
    let r = log.reader();
    let rep = r.recovery();
    let st = r.state();
    let what = format!(
        "last {:?}, checkpoint {:?}, {} records verified{}",
        st.last.map(|l| l.index),
        rep.checkpoint.map(|c| c.index),
        rep.records_scanned,
        if cold { "" } else { " (page cache NOT dropped: not root)" }
    );
    log.close();
    (took, what)
}

fn main() {
    let base = std::env::var_os("RAFTMQ_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/var/tmp".into());
    let mb: u64 = env_or("RAFTMQ_BENCH_RECOVERY_MB", 2048);
    let lag_mb: u64 = env_or("RAFTMQ_BENCH_RECOVERY_LAG_MB", 100).min(mb);
    let runs: usize = env_or("RAFTMQ_BENCH_RUNS", 1);
    let tmp = tempfile::Builder::new().prefix("raftmq-bench-recovery-").tempdir_in(&base).expect("temp dir under RAFTMQ_BENCH_DIR");
    let dir = tmp.path().join("commitlog");
    let records = mb * (1 << 20) / RECORD as u64;
    let lag_records = lag_mb * (1 << 20) / RECORD as u64;
    println!("commitlog recovery benchmark: {} MiB of {RECORD} B records ({records} records), dir {}", mb, dir.display());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let filling = config(&dir, FlushPolicy::Async { interval: Duration::from_secs(1) });
    let t0 = Instant::now();
    let saved = rt.block_on(async {
        let log = CommitLog::open(filling.clone()).expect("open");
        fill(&log, 1, records - lag_records + 1).await;
        log.close();
        let saved = fs::read(dir.join(CHECKPOINT_FILE)).expect("checkpoint after close");
        let log = CommitLog::open(filling).expect("reopen");
        fill(&log, records - lag_records + 1, records + 1).await;
        log.close();
        saved
    });
    let filled = t0.elapsed();
    println!(
        "filled in {:.1} s ({:.0} MB/s, async flush)",
        filled.as_secs_f64(),
        (records * RECORD as u64) as f64 / 1e6 / filled.as_secs_f64()
    );
    let current = fs::read(dir.join(CHECKPOINT_FILE)).expect("checkpoint after close");
    println!();
    for run in 1..=runs {
        fs::write(dir.join(CHECKPOINT_FILE), &current).unwrap();
        let (t, what) = timed_open(&dir);
        println!("run {run}  checkpoint current        open {:>8.3} s   {what}", t.as_secs_f64());
        fs::write(dir.join(CHECKPOINT_FILE), &saved).unwrap();
        let (t, what) = timed_open(&dir);
        println!("run {run}  checkpoint behind {lag_mb:>4} MiB open {:>8.3} s   {what}", t.as_secs_f64());
        fs::remove_file(dir.join(CHECKPOINT_FILE)).unwrap();
        let (t, what) = timed_open(&dir);
        println!("run {run}  no checkpoint             open {:>8.3} s   {what}", t.as_secs_f64());
    }
}
