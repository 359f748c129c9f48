//! Decoding never allocates beyond its cap: a counting global allocator records, per thread, the largest
//! single allocation and the peak of live bytes while a decoder runs on arbitrary input.
//!
//! - Frames: no single allocation exceeds `frame_bytes_max`, whatever the length prefix says; live bytes stay
//!   within a small multiple of the bytes actually received (header maps cost a constant factor per byte).
//! - Typed headers: allocations are bounded by the size of the `extFields` they read.
//! - Stored messages and batches decode in place: zero allocations.
//! - Inflating a compressed body never allocates past `body_bytes_max` (plus the inflater's fixed state).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use raftmq_remoting::header::{PullMessageRequestHeader, SendMessageRequestHeader};
use raftmq_remoting::message::{decode_batch, decode_stored_message, decompress_body, sys_flag, BatchMessages, StoredMessages};
use raftmq_remoting::{CommandHeader, RemotingCommand, RequestCode};

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK_LIVE: Cell<isize> = const { Cell::new(0) };
    static MAX_SINGLE: Cell<usize> = const { Cell::new(0) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn record(grow: isize, single: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LIVE.try_with(|l| {
                l.set(l.get() + grow);
                let _ = PEAK_LIVE.try_with(|p| p.set(p.get().max(l.get())));
            });
            if single > 0 {
                let _ = MAX_SINGLE.try_with(|m| m.set(m.get().max(single)));
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            }
        }
    });
}

// SAFETY: forwards to the system allocator; the bookkeeping touches only const-initialised thread-locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize, layout.size());
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as isize), 0);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize, layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size as isize - layout.size() as isize, new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug)]
struct Usage {
    max_single: usize,
    peak_live: isize,
    count: usize,
}

fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    LIVE.with(|l| l.set(0));
    PEAK_LIVE.with(|p| p.set(0));
    MAX_SINGLE.with(|m| m.set(0));
    COUNT.with(|c| c.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, Usage { max_single: MAX_SINGLE.with(Cell::get), peak_live: PEAK_LIVE.with(Cell::get), count: COUNT.with(Cell::get) })
}

const CAP: usize = 4096;
/// Live bytes per received byte that header maps may cost (a 1-byte key and value in a BTreeMap).
const AMPLIFICATION_MAX: isize = 64;

fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Anything.
        prop::collection::vec(any::<u8>(), 0..CAP * 2),
        // A length prefix anywhere around the cap, then noise.
        (0i32..(CAP as i32 * 4), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(len, rest)| {
            let mut v = len.to_be_bytes().to_vec();
            v.extend(rest);
            v
        }),
        // A full frame with a JSON header of many tiny ext fields: the worst case for live bytes.
        (1usize..400).prop_map(|n| {
            let ext: Vec<String> = (0..n).map(|i| format!("\"{i}\":{i}")).collect();
            let header = format!(r#"{{"code":10,"extFields":{{{}}}}}"#, ext.join(","));
            let mut b = BytesMut::new();
            b.put_i32(4 + header.len() as i32);
            b.put_u32(header.len() as u32);
            b.put_slice(header.as_bytes());
            b.to_vec()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frame_decoding_stays_under_the_cap(bytes in frame_bytes()) {
        // The buffer a connection would hold: exactly the received bytes.
        let mut buf = BytesMut::from(&bytes[..]);
        let received = bytes.len() as isize;
        let (_, usage) = measure(|| {
            let mut out = Vec::new();
            while let Ok(Some(cmd)) = RemotingCommand::decode(&mut buf, CAP) {
                out.push(cmd);
            }
            out
        });
        prop_assert!(usage.max_single <= CAP, "{usage:?}");
        prop_assert!(usage.peak_live <= CAP as isize + AMPLIFICATION_MAX * received, "{usage:?} for {received} bytes");
    }

    #[test]
    fn header_parsing_is_bounded_by_its_input(ext in prop::collection::btree_map("[a-zA-Z]{1,16}", ".{0,64}", 0..32)) {
        let input: usize = ext.iter().map(|(k, v)| k.len() + v.len()).sum();
        let (_, usage) = measure(|| {
            let a = SendMessageRequestHeader::decode_for(RequestCode::SEND_MESSAGE_V2, &ext).map(|h| h.to_ext_fields());
            let b = PullMessageRequestHeader::from_ext_fields(&ext);
            (a.is_ok(), b.is_ok())
        });
        // Each parsed field copies at most its value; errors quote at most a short prefix.
        prop_assert!(usage.max_single <= 256.max(2 * input), "{usage:?}");
    }

    #[test]
    fn stored_messages_and_batches_decode_without_allocating(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (_, usage) = measure(|| {
            let a = decode_stored_message(&bytes).is_ok();
            let b = StoredMessages::new(&bytes).take_while(Result::is_ok).count();
            let c = BatchMessages::new(&bytes).take_while(Result::is_ok).count();
            (a, b, c)
        });
        prop_assert_eq!(usage.count, 0, "{:?}", usage);
        // decode_batch allocates only its result list, bounded by messages_max.
        let (_, usage) = measure(|| decode_batch(&bytes, 4).map(|v| v.len()));
        prop_assert!(usage.max_single <= 4 * 64, "{usage:?}");
    }
}

#[test]
fn a_zlib_bomb_stops_at_the_body_cap() {
    let huge = vec![0u8; 8 << 20];
    let z = raftmq_remoting::message::compress_body_zlib(&huge, 9);
    assert!(z.len() < 64 * 1024);
    let body_bytes_max = 256 * 1024;
    let (r, usage) = measure(|| decompress_body(sys_flag::COMPRESSED | sys_flag::COMPRESSION_ZLIB, &z, body_bytes_max).map(|b| b.len()));
    assert!(r.is_err());
    // The output buffer never exceeds the cap; the inflater's own state is a fixed ~40 KiB.
    assert!(usage.max_single <= body_bytes_max, "{usage:?}");
    assert!(usage.peak_live <= body_bytes_max as isize + 128 * 1024, "{usage:?}");
}

#[test]
fn a_huge_length_prefix_allocates_nothing() {
    let mut buf = BytesMut::new();
    buf.put_i32(i32::MAX);
    buf.put_u32(0);
    let (r, usage) = measure(|| RemotingCommand::decode(&mut buf, raftmq_remoting::FRAME_BYTES_MAX_DEFAULT).map(|c| c.is_some()));
    assert!(r.is_err());
    assert_eq!(usage.count, 0, "{usage:?}");
    // Under the cap, a partial frame grows the buffer by one read chunk, not to the announced length.
    let mut buf = BytesMut::from(&1_000_000i32.to_be_bytes()[..]);
    let (r, usage) = measure(|| RemotingCommand::decode(&mut buf, raftmq_remoting::FRAME_BYTES_MAX_DEFAULT).map(|c| c.is_some()));
    assert!(!r.unwrap());
    assert_eq!((usage.count, usage.max_single), (1, raftmq_remoting::frame::READ_BUFFER_MIN), "{usage:?}");
}

#[test]
fn a_16_mib_announcement_with_10_bytes_costs_one_read_chunk() {
    let frame_bytes_max = raftmq_remoting::FRAME_BYTES_MAX_DEFAULT;
    let mut buf = BytesMut::new();
    buf.put_i32(frame_bytes_max as i32 - 4);
    buf.put_slice(&[0u8; 10]);
    let (r, usage) = measure(|| RemotingCommand::decode(&mut buf, frame_bytes_max).map(|c| c.is_some()));
    assert!(!r.unwrap(), "partial frame");
    assert!(usage.max_single <= raftmq_remoting::frame::READ_BUFFER_MIN, "{usage:?}");
    assert!(usage.peak_live <= raftmq_remoting::frame::READ_BUFFER_MIN as isize, "{usage:?}");
}

#[test]
fn worst_case_header_amplification() {
    let ext: Vec<String> = (0..raftmq_remoting::frame::EXT_FIELDS_MAX).map(|i| format!("\"{i}\":{i}")).collect();
    let header = format!(r#"{{"code":10,"extFields":{{{}}}}}"#, ext.join(","));
    let mut b = BytesMut::new();
    b.put_i32(4 + header.len() as i32);
    b.put_u32(header.len() as u32);
    b.put_slice(header.as_bytes());
    let received = b.len();
    let (cmd, usage) = measure(|| RemotingCommand::decode(&mut b, 1 << 20).map(|c| c.map(|c| c.ext_fields.len())));
    assert_eq!(cmd.unwrap(), Some(raftmq_remoting::frame::EXT_FIELDS_MAX));
    let ratio = usage.peak_live as f64 / received as f64;
    println!("{received} bytes received, peak live {} bytes ({ratio:.1}x), largest allocation {}", usage.peak_live, usage.max_single);
    assert!(usage.peak_live <= AMPLIFICATION_MAX * received as isize);
}
