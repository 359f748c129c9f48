//! Criterion micro-benchmark of the append path without the disk's fsync: encode a batch of records
//! (headers, CRC), hand it to the IO thread, write it into the mapped segment and get the locations back.
//! Async flush with a long interval keeps fsync out of the measurement; `benches/append.rs` measures the
//! durable (fsync) path. `cargo bench -p raftmq-commitlog --bench store_append`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use raftmq_commitlog::{CommitLog, CommitLogConfig, FlushPolicy, RecordBatch, RecordKind, RecordMeta};

fn appends(c: &mut Criterion) {
    let base = std::env::var("RAFTMQ_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut cfg = CommitLogConfig::new(dir.path().join("log"));
    cfg.segment_bytes = 256 << 20;
    cfg.flush = FlushPolicy::Async { interval: Duration::from_secs(3600) };
    let log = CommitLog::open(cfg).expect("open");
    let mut index = 1u64;
    let mut g = c.benchmark_group("commitlog");
    for (records, size) in [(1usize, 128usize), (64, 128), (64, 1024)] {
        let body = vec![b'm'; size];
        g.throughput(Throughput::Elements(records as u64));
        g.bench_function(format!("append {records} x {size} B (no fsync)"), |b| {
            b.iter(|| {
                let mut batch = RecordBatch::new();
                for _ in 0..records {
                    batch.push(RecordMeta { index, term: 1, node: 1, kind: RecordKind::Normal }, &body);
                    index += 1;
                }
                black_box(rt.block_on(log.append(batch, Box::new(|_| {}))).expect("append"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
