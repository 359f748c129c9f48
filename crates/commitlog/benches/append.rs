//! Append throughput of the commitlog under `FlushPolicy::Sync`, next to the raw rate of the same disk.
//!
//! One run measures, in a temporary directory under `$RAFTMQ_BENCH_DIR` (default `/var/tmp`; not `/tmp`,
//! which may be tmpfs):
//! 1. the raw disk: sequential 1 MiB `pwrite` + `fdatasync` into a preallocated file (MB/s), and 4 KiB
//!    `pwrite` + `fdatasync` (fsyncs/s), both into fresh preallocated blocks like the store's segments, plus
//!    4 KiB overwrites of already written blocks for reference;
//! 2. the store: 128 B and 1 KiB records appended by 1, 16 and 64 concurrent tokio tasks, each submitting
//!    one record at a time (index allocated and submitted under a mutex) and awaiting its durability
//!    callback before the next. Reported: msgs/s, MB/s (whole records, header included), the ratio to the
//!    raw sequential MB/s, acknowledged appends per raw fsync, and append latency percentiles.
//!
//! Each store case opens its log, appends one record (a fresh log has no segment before that) and leaves
//! it idle for `$RAFTMQ_BENCH_IDLE_MS` (default 200) before the writers start, as a broker is idle between
//! requests at low load: the IO thread zero-fills the segment ahead of the write position while idle
//! (`CommitLogConfig::prefill_ahead_bytes`; `$RAFTMQ_BENCH_PREFILL_KB` overrides it, 0 turns it off).
//!
//! Each case runs `$RAFTMQ_BENCH_SECS` seconds (default 3). Run with
//! `cargo bench -p raftmq-commitlog --bench append`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_commitlog::{CommitLog, CommitLogConfig, FlushPolicy, RecordBatch, RecordKind, RecordMeta, HEADER_LEN};

const MIB: u64 = 1 << 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn preallocated(path: &Path, len: u64) -> File {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).expect("create bench file");
    // SAFETY: fallocate on a valid, owned descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        f.set_len(len).expect("set_len");
    }
    f.sync_all().expect("fsync");
    f
}

/// Writes `block`-sized chunks sequentially (wrapping inside a preallocated `file_len`), each followed by
/// fdatasync, for `dur`. With `prewritten`, the file is filled first, so every write overwrites written
/// blocks (no extent conversion); otherwise writes land in fresh preallocated blocks, as the store's do.
/// Returns (bytes, fsyncs, elapsed).
fn raw_write_sync(path: &Path, block: usize, file_len: u64, prewritten: bool, dur: Duration) -> (u64, u64, Duration) {
    let f = preallocated(path, file_len);
    let buf: Vec<u8> = (0..block).map(|i| (i * 31 % 251) as u8 | 1).collect();
    if prewritten {
        let chunk = vec![0x5Au8; MIB as usize];
        let mut at = 0;
        while at < file_len {
            f.write_all_at(&chunk[..(file_len - at).min(MIB) as usize], at).expect("prefill");
            at += MIB;
        }
        f.sync_all().expect("fsync");
    }
    let start = Instant::now();
    let (mut bytes, mut syncs, mut off) = (0u64, 0u64, 0u64);
    while start.elapsed() < dur {
        f.write_all_at(&buf, off).expect("pwrite");
        f.sync_data().expect("fdatasync");
        bytes += block as u64;
        syncs += 1;
        off += block as u64;
        if off + block as u64 > file_len {
            off = 0;
        }
    }
    let elapsed = start.elapsed();
    drop(f);
    let _ = std::fs::remove_file(path);
    (bytes, syncs, elapsed)
}

struct Outcome {
    msgs: u64,
    bytes: u64,
    elapsed: Duration,
    lat_us: Vec<u64>,
}

async fn store_case(dir: PathBuf, segment_bytes: u64, record: usize, writers: usize, dur: Duration, idle: Duration) -> Outcome {
    let mut cfg = CommitLogConfig::new(&dir);
    cfg.segment_bytes = segment_bytes;
    cfg.flush = FlushPolicy::Sync;
    if let Some(kb) = std::env::var("RAFTMQ_BENCH_PREFILL_KB").ok().and_then(|v| v.parse::<u64>().ok()) {
        cfg.prefill_ahead_bytes = kb << 10;
    }
    let log = tokio::task::spawn_blocking(move || CommitLog::open(cfg)).await.unwrap().expect("open log");
    let body: Arc<Vec<u8>> = Arc::new((0..record - HEADER_LEN).map(|i| (i % 251) as u8).collect());
    let mut first = RecordBatch::new();
    first.push(RecordMeta { index: 1, term: 1, node: 1, kind: RecordKind::Normal }, &body);
    log.append_durable(first).await.expect("first append");
    tokio::time::sleep(idle).await;
    let next = Arc::new(Mutex::new(2u64));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (log, body, next) = (log.clone(), Arc::clone(&body), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let (written, durable) = {
                    let mut n = next.lock().unwrap();
                    let mut batch = RecordBatch::new();
                    batch.push(RecordMeta { index: *n, term: 1, node: 1, kind: RecordKind::Normal }, &body);
                    *n += 1;
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let written = log.submit_append(
                        batch,
                        Box::new(move |r| {
                            let _ = tx.send(r);
                        }),
                    );
                    (written, rx)
                };
                written.await.expect("IO thread alive").expect("append");
                durable.await.expect("IO thread alive").expect("durable");
                lat.push(t0.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    tokio::task::spawn_blocking(move || log.close()).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let msgs = lat_us.len() as u64;
    Outcome { msgs, bytes: msgs * record as u64, elapsed, lat_us }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let secs: f64 = env_or("RAFTMQ_BENCH_SECS", 3.0);
    let dur = Duration::from_secs_f64(secs);
    let idle = Duration::from_millis(env_or("RAFTMQ_BENCH_IDLE_MS", 200));
    let base: PathBuf = std::env::var_os("RAFTMQ_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let segment_mb: u64 = env_or("RAFTMQ_BENCH_SEGMENT_MB", 256);
    let tmp = tempfile::Builder::new().prefix("raftmq-bench-").tempdir_in(&base).expect("temp dir under RAFTMQ_BENCH_DIR");
    println!("commitlog append benchmark: dir {}, {secs} s per case, {segment_mb} MiB segments, FlushPolicy::Sync", tmp.path().display());
    println!();

    let (bytes, syncs, el) = raw_write_sync(&tmp.path().join("raw-seq"), MIB as usize, 2048 * MIB, false, dur);
    let raw_mbps = bytes as f64 / 1e6 / el.as_secs_f64();
    println!("raw disk  1 MiB pwrite+fdatasync, preallocated blocks: {raw_mbps:>9.1} MB/s ({syncs} writes in {:.2} s)", el.as_secs_f64());
    let (_, syncs4k, el4k) = raw_write_sync(&tmp.path().join("raw-4k"), 4096, 256 * MIB, false, dur);
    let raw_fsyncs = syncs4k as f64 / el4k.as_secs_f64();
    println!("raw disk  4 KiB pwrite+fdatasync, preallocated blocks: {raw_fsyncs:>9.0} fsyncs/s ({:.3} ms each)", 1e3 / raw_fsyncs);
    let (_, syncs_ow, el_ow) = raw_write_sync(&tmp.path().join("raw-4k-ow"), 4096, 16 * MIB, true, dur);
    let ow_fsyncs = syncs_ow as f64 / el_ow.as_secs_f64();
    println!("raw disk  4 KiB pwrite+fdatasync, overwriting blocks:  {ow_fsyncs:>9.0} fsyncs/s ({:.3} ms each)", 1e3 / ow_fsyncs);
    println!();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!(
        "{:>7} {:>7} {:>11} {:>9} {:>10} {:>11} {:>9} {:>9} {:>9}",
        "record", "writers", "msgs/s", "MB/s", "vs raw MB", "acks/fsync", "p50 us", "p99 us", "max us"
    );
    for record in [128usize, 1024] {
        for writers in [1usize, 16, 64] {
            let dir = tmp.path().join(format!("log-{record}-{writers}"));
            let mut o = rt.block_on(store_case(dir, segment_mb * MIB, record, writers, dur, idle));
            o.lat_us.sort_unstable();
            let s = o.elapsed.as_secs_f64();
            let msgs = o.msgs as f64 / s;
            let mbps = o.bytes as f64 / 1e6 / s;
            println!(
                "{:>7} {:>7} {:>11.0} {:>9.2} {:>9.2}% {:>11.2} {:>9} {:>9} {:>9}",
                format!("{record} B"),
                writers,
                msgs,
                mbps,
                100.0 * mbps / raw_mbps,
                msgs / raw_fsyncs,
                pct(&o.lat_us, 0.50),
                pct(&o.lat_us, 0.99),
                o.lat_us.last().copied().unwrap_or(0),
            );
        }
    }
    println!();
    println!("MB/s counts whole records (40-byte header + body). 'vs raw MB' = store MB/s / raw 1 MiB sequential MB/s;");
    println!("'acks/fsync' = store msgs/s / raw 4 KiB fsyncs/s into preallocated blocks (appends completed per");
    println!("fsync-equivalent; the store also writes into fresh preallocated segment blocks).");
}
