//! A peer that announces a large frame and sends only a few bytes does not make the server allocate the
//! announced size: a counting global allocator records the largest single allocation and the peak of live
//! bytes in the whole process while hostile connections sit on 127.0.0.1.
//!
//! Its own test binary: the allocator counts every thread of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingClient, RemotingServer, RequestHandler, ServerOptions};
use raftmq_remoting::frame::{RemotingCommand, READ_BUFFER_MIN};
use raftmq_remoting::{RequestCode, ResponseCode, FRAME_BYTES_MAX_DEFAULT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Counting;

static TRACKING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK_LIVE: AtomicIsize = AtomicIsize::new(0);
static MAX_SINGLE: AtomicUsize = AtomicUsize::new(0);

fn record(grow: isize, single: usize) {
    if TRACKING.load(Ordering::Relaxed) {
        let live = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
        PEAK_LIVE.fetch_max(live, Ordering::Relaxed);
        MAX_SINGLE.fetch_max(single, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; the bookkeeping only touches atomics.
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

struct Ok200;

impl RequestHandler for Ok200 {
    fn handle(&self, _conn: Conn, _req: RemotingCommand) -> HandlerFuture {
        Box::pin(async { Some(RemotingCommand::response(ResponseCode::SUCCESS, None).into()) })
    }
}

const HOSTILE: usize = 8;

#[tokio::test]
async fn announcing_16_mib_and_sending_10_bytes_does_not_allocate_16_mib() {
    let server = RemotingServer::bind("127.0.0.1:0", Arc::new(Ok200), ServerOptions::default()).await.expect("bind");
    let addr = server.local_addr().to_string();
    let timeout = Duration::from_secs(20);
    let client = RemotingClient::connect(&addr, timeout, None).await.expect("connect");
    let ping = RemotingCommand::request(RequestCode::HEART_BEAT, 0);
    client.invoke(ping.clone(), timeout).await.expect("warm-up request");

    TRACKING.store(true, Ordering::SeqCst);
    let mut hostile = Vec::new();
    for _ in 0..HOSTILE {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        // The largest frame the server accepts (16 MiB with its prefix), then 10 bytes of it.
        s.write_all(&((FRAME_BYTES_MAX_DEFAULT - 4) as i32).to_be_bytes()).await.expect("prefix");
        s.write_all(&[0u8; 10]).await.expect("10 bytes");
        hostile.push(s);
    }
    // Each connection's decoder sees its partial frame and grows its buffer by one read chunk (64 KiB);
    // wait until all of them have, then a little longer for anything else to happen.
    let end = tokio::time::Instant::now() + timeout;
    while PEAK_LIVE.load(Ordering::SeqCst) < (HOSTILE * READ_BUFFER_MIN) as isize {
        assert!(tokio::time::Instant::now() < end, "the server never read the hostile bytes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.invoke(ping, timeout).await.expect("the server still serves others");
    TRACKING.store(false, Ordering::SeqCst);

    let (max_single, peak_live) = (MAX_SINGLE.load(Ordering::SeqCst), PEAK_LIVE.load(Ordering::SeqCst));
    println!("{HOSTILE} connections announcing {FRAME_BYTES_MAX_DEFAULT} bytes: largest allocation {max_single} bytes, peak live {peak_live} bytes");
    assert!(max_single <= READ_BUFFER_MIN, "largest allocation {max_single} bytes");
    // One read chunk per connection plus the connections' own state (tasks, channels): far below 16 MiB.
    assert!(peak_live < (HOSTILE * 2 * READ_BUFFER_MIN + (1 << 20)) as isize, "peak live {peak_live} bytes");
    assert_eq!(server.stats().connections_open(), HOSTILE + 1, "hostile connections wait for their bytes");
    drop(hostile);
}
