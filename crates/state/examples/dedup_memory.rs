//! Memory and checkpoint cost of the replicated de-duplication window: inserts 1 M message-id keys through
//! `BrokerState::apply` (as the leader's produce entries carry them) and reports the heap bytes per key
//! (a counting global allocator), the bincode size a checkpoint writes, and what the checkpoint's in-memory
//! copy of the state costs (time and new heap bytes). Run:
//! `cargo run --release -p raftmq-state --example dedup_memory [keys]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use raftmq_state::queues::{QueueState, QueueStore};
use raftmq_state::{BrokerState, Command, CqUnit, DedupSettings, Message, Op, Produce, QueueAppend, TopicConfig};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Discards unit writes: only the state's own memory is measured.
struct NoQueues;
impl QueueStore for NoQueues {
    type Error = std::convert::Infallible;
    fn write(&mut self, _: &str, _: u32, _: QueueState, _: u64, _: CqUnit) -> Result<(), Self::Error> {
        Ok(())
    }
    fn publish(&mut self, _: &str, _: u32, _: u64) {}
}

fn main() {
    let keys: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let per_entry = 100u64;
    let mut s = BrokerState::default();
    let mut q = NoQueues;
    s.apply(&Command::UpsertTopic(TopicConfig { name: "T".into(), read_queues: 4, write_queues: 4, perm: 6 }), &mut q).expect("topic");
    s.apply(&Command::SetDedupWindow(DedupSettings { window_ms: 120_000, keys_max: keys }), &mut q).expect("settings");
    let body = Bytes::from_static(b"x");
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let (mut phys, mut k) = (0u64, 0u64);
    while k < keys {
        let n = per_entry.min(keys - k);
        let messages = (0..n)
            .map(|_| {
                phys += 200;
                Message { tags_code: 0, data: body.clone(), phys_offset: Some(phys) }
            })
            .collect();
        // Keys spread like XXH3 digests; entries 10 µs apart, all within the window.
        let ops = (0..n)
            .map(|i| Op::Dedup { part: 0, index: i as u32, key: u128::from(k + i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) })
            .collect();
        let p = Produce {
            time_ms: 1_000_000 + (k / 100) as i64,
            queues: vec![QueueAppend { topic: "T".into(), queue_id: (k % 4) as u32, messages }],
            deliveries: vec![],
            ops,
        };
        s.apply(&Command::ProduceAt(p), &mut q).expect("apply");
        k += n;
    }
    let apply_secs = started.elapsed().as_secs_f64();
    let heap = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(s.dedup.len(), keys, "every key is remembered");
    let encoded = bincode::serialized_size(&s).expect("size");
    let t = Instant::now();
    let before_copy = LIVE.load(Ordering::Relaxed);
    let copy = s.clone();
    let copy_us = t.elapsed().as_micros();
    let copy_heap = LIVE.load(Ordering::Relaxed) - before_copy;
    let t = Instant::now();
    let bytes = bincode::serialize(&copy).expect("encode");
    let encode_ms = t.elapsed().as_millis();
    println!(
        "dedup window: {keys} keys in {apply_secs:.2} s of apply ({:.0} keys/s); heap {heap} bytes = {:.1} bytes/key; \
         checkpoint body {encoded} bytes = {:.1} bytes/key, encoded in {encode_ms} ms; \
         the checkpoint's in-memory copy took {copy_us} µs and {copy_heap} new heap bytes",
        keys as f64 / apply_secs,
        heap as f64 / keys as f64,
        encoded as f64 / keys as f64,
    );
    assert_eq!(bytes.len() as u64, encoded);
}
