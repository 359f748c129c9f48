//! The server's connection limits over real TCP on 127.0.0.1: `connections_max` refuses the connection
//! past the cap while the others keep working; idle connections close and active ones (or ones with a
//! request in flight) do not; the per-connection request and byte caps and the server-wide byte cap stop
//! reading (nothing dropped) and resume as responses drain.
//!
//! Real time, not tokio's paused clock: pausing needs tokio's `test-util` feature, which would change the
//! feature set (and force a rebuild) of every crate in the workspace's test build. Waits poll an observable
//! condition against a generous deadline; nothing asserts how fast anything is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingClient, RemotingServer, RequestHandler, ServerOptions};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::{RequestCode, ResponseCode};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const DEADLINE: Duration = Duration::from_secs(20);
const TIMEOUT: Duration = Duration::from_secs(30);

/// Answers every request with its body length; when gated, each request but a HEART_BEAT first waits for
/// one permit of `gate` (the test releases them).
struct Handler {
    arrived: AtomicUsize,
    gate: Option<Semaphore>,
}

impl Handler {
    fn open() -> Arc<Handler> {
        Arc::new(Handler { arrived: AtomicUsize::new(0), gate: None })
    }
    fn gated() -> Arc<Handler> {
        Arc::new(Handler { arrived: AtomicUsize::new(0), gate: Some(Semaphore::new(0)) })
    }
    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
    fn release(&self, n: usize) {
        self.gate.as_ref().expect("gated").add_permits(n);
    }
}

struct Shared(Arc<Handler>);

impl RequestHandler for Shared {
    fn handle(&self, _conn: Conn, req: RemotingCommand) -> HandlerFuture {
        let h = Arc::clone(&self.0);
        Box::pin(async move {
            h.arrived.fetch_add(1, Ordering::SeqCst);
            if let (Some(gate), false) = (&h.gate, req.code == RequestCode::HEART_BEAT.0) {
                gate.acquire().await.expect("gate open").forget();
            }
            Some(RemotingCommand::response(ResponseCode::SUCCESS, Some(req.body.len().to_string())).into())
        })
    }
}

async fn serve(handler: &Arc<Handler>, opts: ServerOptions) -> RemotingServer {
    RemotingServer::bind("127.0.0.1:0", Arc::new(Shared(Arc::clone(handler))), opts).await.expect("bind")
}

async fn connect(server: &RemotingServer) -> RemotingClient {
    RemotingClient::connect(&server.local_addr().to_string(), TIMEOUT, None).await.expect("connect")
}

fn request(body_bytes: usize) -> RemotingCommand {
    RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(Bytes::from(vec![7u8; body_bytes]))
}

/// A HEART_BEAT: never held by the gate.
async fn ping(c: &RemotingClient) -> Result<(), String> {
    let r = c.invoke(RemotingCommand::request(RequestCode::HEART_BEAT, 0), TIMEOUT).await.map_err(|e| e.to_string())?;
    if r.code == ResponseCode::SUCCESS.0 {
        Ok(())
    } else {
        Err(format!("code {}", r.code))
    }
}

/// Polls `cond` until it holds; panics with `what` at the deadline.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// True once the server closed `s` (a read returns end-of-stream or a reset).
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(tokio::time::timeout(DEADLINE, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

fn small(frame_bytes_max: usize) -> ServerOptions {
    ServerOptions {
        frame_bytes_max,
        conn_inflight_bytes_max: frame_bytes_max,
        server_inflight_bytes_max: frame_bytes_max,
        ..ServerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_past_connections_max_is_closed_at_once_and_the_others_keep_working() {
    let h = Handler::open();
    let server = serve(&h, ServerOptions { connections_max: 3, ..ServerOptions::default() }).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = connect(&server).await;
        ping(&c).await.expect("one of the first three connections works");
        clients.push(c);
    }
    assert_eq!(server.stats().connections_open(), 3);

    // Two more in one burst: both closed by the server without a request being read.
    for _ in 0..2 {
        let mut extra = TcpStream::connect(server.local_addr()).await.expect("the kernel accepts");
        assert!(closed_by_server(&mut extra).await, "connection 4 must be closed at once");
    }
    assert_eq!(server.stats().connections_refused_total(), 2);
    for c in &clients {
        ping(c).await.expect("existing connections are unaffected");
    }

    // One ends: a new connection is served again.
    clients.pop().expect("three").close();
    let stats = Arc::clone(server.stats());
    wait_for("the closed connection to be counted out", || stats.connections_open() == 2).await;
    let c = connect(&server).await;
    ping(&c).await.expect("a connection under the cap works");
    assert_eq!(server.stats().connections_refused_total(), 2);
    assert_eq!(server.stats().connections_accepted_total(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let idle_ms = 1000;
    let h = Handler::gated();
    let server = serve(&h, ServerOptions { conn_idle_ms_max: idle_ms, ..ServerOptions::default() }).await;

    let mut idle = TcpStream::connect(server.local_addr()).await.expect("connect");
    let active = connect(&server).await;
    let holding = connect(&server).await;
    // A request held by the handler for three idle periods: in flight counts as activity.
    let held = {
        let holding = holding.clone();
        tokio::spawn(async move { holding.invoke(request(5), TIMEOUT).await })
    };
    let releaser = {
        let h = Arc::clone(&h);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3 * idle_ms)).await;
            h.release(1);
        })
    };
    // Another connection sends a frame every 100 ms for three idle periods.
    let pinger = {
        let active = active.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                ping(&active).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, String>(())
        })
    };
    assert!(closed_by_server(&mut idle).await, "the idle connection is closed");
    pinger.await.expect("joined").expect("every request of the active connection is answered");
    releaser.await.expect("joined");
    let r = held.await.expect("joined").expect("the held request is answered");
    assert_eq!(r.code, ResponseCode::SUCCESS.0);
    assert!(!active.is_closed() && !holding.is_closed());
    assert_eq!(server.stats().connections_idle_closed_total(), 1, "only the idle connection");

    // Once quiet, the others are closed too.
    let stats = Arc::clone(server.stats());
    wait_for("the quiet connections to be closed", || stats.connections_idle_closed_total() == 3).await;
    wait_for("the client to see it", || active.is_closed() && holding.is_closed()).await;
}

/// Sends `n` requests of `body_bytes` on `c` concurrently.
fn send_all(c: &RemotingClient, n: usize, body_bytes: usize) -> Vec<tokio::task::JoinHandle<Result<RemotingCommand, String>>> {
    (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.invoke(request(body_bytes), TIMEOUT).await.map_err(|e| e.to_string()) })
        })
        .collect()
}

async fn all_answered(calls: Vec<tokio::task::JoinHandle<Result<RemotingCommand, String>>>, body_bytes: usize) {
    for call in calls {
        let r = call.await.expect("joined").expect("answered, not dropped");
        assert_eq!((r.code, r.remark.as_deref()), (ResponseCode::SUCCESS.0, Some(body_bytes.to_string().as_str())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_byte_cap_stalls_reads_and_they_resume_as_responses_drain() {
    // 20 KiB bodies: three frames fit in 64 KiB, the fourth does not.
    let (cap, body) = (64 * 1024, 20 * 1024);
    let h = Handler::gated();
    let server = serve(&h, ServerOptions { server_inflight_bytes_max: 4 * cap, ..small(cap) }).await;
    let c = connect(&server).await;
    let calls = send_all(&c, 6, body);

    let stats = Arc::clone(server.stats());
    wait_for("three requests and a stalled read", || h.arrived() == 3 && stats.reads_stalled_total() == 1).await;
    let inflight = stats.inflight_bytes();
    assert!(inflight > 3 * body && inflight <= cap, "{inflight} bytes in flight");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.arrived(), 3, "the fourth frame is not read while the cap is full");

    // One response drains: exactly one more request fits.
    h.release(1);
    wait_for("the fourth request", || h.arrived() == 4 && stats.reads_stalled_total() == 2).await;
    h.release(5);
    all_answered(calls, body).await;
    assert_eq!(h.arrived(), 6);
    wait_for("the budget to be returned", || stats.inflight_bytes() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_count_cap_stalls_reads_and_they_resume_as_responses_drain() {
    let h = Handler::gated();
    let server = serve(&h, ServerOptions { conn_inflight_requests_max: 2, ..ServerOptions::default() }).await;
    let c = connect(&server).await;
    let calls = send_all(&c, 5, 10);
    let stats = Arc::clone(server.stats());
    wait_for("two requests and a stalled read", || h.arrived() == 2 && stats.reads_stalled_total() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.arrived(), 2, "the third request is not read while two are in flight");
    h.release(5);
    all_answered(calls, 10).await;
    assert_eq!(h.arrived(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_byte_cap_stalls_another_connection_until_bytes_drain() {
    let (cap, body) = (64 * 1024, 20 * 1024);
    let h = Handler::gated();
    let server = serve(&h, small(cap)).await;
    let (a, b) = (connect(&server).await, connect(&server).await);
    let from_a = send_all(&a, 3, body);
    let stats = Arc::clone(server.stats());
    wait_for("a's three requests", || h.arrived() == 3).await;
    let from_b = send_all(&b, 1, body);
    wait_for("b's read to stall on the server cap", || stats.reads_stalled_total() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.arrived(), 3, "b's request waits for the server's budget");
    h.release(1);
    wait_for("b's request once one of a's drained", || h.arrived() == 4).await;
    h.release(3);
    all_answered(from_a, body).await;
    all_answered(from_b, body).await;
}

#[tokio::test]
async fn options_that_could_deadlock_are_refused() {
    let h = Handler::open();
    for (opts, why) in [
        (ServerOptions { conn_inflight_bytes_max: 1 << 20, ..ServerOptions::default() }, "at least frame_bytes_max"),
        (ServerOptions { server_inflight_bytes_max: 32 << 20, ..ServerOptions::default() }, "at least conn_inflight_bytes_max"),
        (ServerOptions { connections_max: 0, ..ServerOptions::default() }, "connections_max must be positive"),
        (ServerOptions { conn_idle_ms_max: 0, ..ServerOptions::default() }, "conn_idle_ms_max must be positive"),
    ] {
        let err = RemotingServer::bind("127.0.0.1:0", Arc::new(Shared(Arc::clone(&h))), opts).await.err().expect("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(why), "{err}");
    }
    ServerOptions::default().validate().expect("defaults are valid");
}
