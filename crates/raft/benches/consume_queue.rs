//! Criterion micro-benchmarks of consume-queue lookups, the first step of every pull: one unit by offset and
//! a 32-unit read, at random offsets of a 1 Mi-unit queue in memory-mapped files.
//! `cargo bench -p raftmq-raft --bench consume_queue`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use raftmq_raft::consume_queue::{ConsumeQueue, CqUnit};

const UNITS: u64 = 1 << 20;

fn lookups(c: &mut Criterion) {
    let base = std::env::var("RAFTMQ_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    // 300k units per file, as RocketMQ, so reads cross file boundaries like production ones.
    let q = ConsumeQueue::open(dir.path().join("q"), 300_000, 0, 0).expect("open");
    for o in 0..UNITS {
        q.write(o, &CqUnit { phys_offset: o * 200, size: 200, tags_code: (o % 7) as i64 }).expect("write");
    }
    q.publish(UNITS);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift: cheap, deterministic offsets spread over the whole queue.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % (UNITS - 32)
    };
    let mut g = c.benchmark_group("consume_queue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get one unit", |b| b.iter(|| black_box(q.get(next()))));
    g.throughput(Throughput::Elements(32));
    g.bench_function("read 32 units", |b| b.iter(|| black_box(q.read(next(), 32))));
    g.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
