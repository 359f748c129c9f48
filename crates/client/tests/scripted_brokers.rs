//! The producer's retry and failover rules (and the pull's choice of member) against scripted brokers: in-process remoting servers that
//! answer as a nameserver, a Raft leader, a follower with a leader hint, a node in an election, a node that
//! never answers, or one that refuses. Each test counts the requests every server received, so the rules
//! ("a hint is followed without using a retry", "an illegal message is not retried", "every retry carries
//! the same message id") are checked exactly, without a real cluster's timing.
//!
//! The transaction producer's tests at the end also record oneway requests (END_TRANSACTION) and push
//! CHECK_TRANSACTION_STATE to the client over its own connection, as a broker's check-back does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_client::{
    ClientConfig, ClientError, Message, MessageExt, Producer, ProducerOptions, SendStatus, TransactionListener, TransactionProducer,
    TransactionProducerOptions, TxnState,
};
use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingServer, RequestHandler, Response, ServerOptions};
use raftmq_remoting::body::{decode_json_body, encode_json_body, BrokerData, HeartbeatData, QueueData, TopicRouteData};
use raftmq_remoting::header::{
    CommandHeader, EndTransactionRequestHeader, PullMessageResponseHeader, SendMessageRequestHeader, SendMessageResponseHeader,
};
use raftmq_remoting::message::{
    encode_offset_msg_id, encode_stored_message, get_property, property, sys_flag, BatchMessages, MessageToStore,
};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

type Script = Arc<dyn Fn(&RemotingCommand, usize) -> Option<RemotingCommand> + Send + Sync>;

/// A server that answers with `script(request, n)` where `n` counts the send requests it got so far.
/// Oneway requests are recorded and never answered.
struct Scripted {
    script: Script,
    sends: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<RemotingCommand>>>,
    conns: Arc<Mutex<std::collections::BTreeSet<u64>>>,
    requests: Arc<Mutex<Vec<RemotingCommand>>>,
    handles: Arc<Mutex<Vec<Conn>>>,
}

impl RequestHandler for Scripted {
    fn handle(&self, conn: Conn, req: RemotingCommand) -> HandlerFuture {
        if self.conns.lock().unwrap().insert(conn.id()) {
            self.handles.lock().unwrap().push(conn.clone());
        }
        self.requests.lock().unwrap().push(req.clone());
        if req.is_oneway() {
            return Box::pin(async { None });
        }
        let is_send = [RequestCode::SEND_MESSAGE_V2.0, RequestCode::SEND_BATCH_MESSAGE.0, RequestCode::SEND_MESSAGE.0].contains(&req.code);
        let n = if is_send { self.sends.fetch_add(1, Ordering::SeqCst) } else { 0 };
        if is_send {
            self.seen.lock().unwrap().push(req.clone());
        }
        let reply = (self.script)(&req, n);
        Box::pin(async move {
            match reply {
                Some(r) => Some(Response::from(r.with_opaque(req.opaque))),
                // Never answer: the client's deadline has to fire.
                None => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    None
                }
            }
        })
    }
}

struct Server {
    addr: String,
    sends: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<RemotingCommand>>>,
    conns: Arc<Mutex<std::collections::BTreeSet<u64>>>,
    /// Every request received, oneway ones included, in arrival order.
    requests: Arc<Mutex<Vec<RemotingCommand>>>,
    /// The client connections, for server-initiated requests.
    handles: Arc<Mutex<Vec<Conn>>>,
    _server: RemotingServer,
}

impl Server {
    /// The requests received so far with `code`.
    fn requests_with(&self, code: RequestCode) -> Vec<RemotingCommand> {
        self.requests.lock().unwrap().iter().filter(|r| r.code == code.0).cloned().collect()
    }

    /// Waits (up to 5 s) until at least `n` requests with `code` arrived and returns them.
    async fn wait_requests(&self, code: RequestCode, n: usize) -> Vec<RemotingCommand> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.requests_with(code);
            if got.len() >= n || Instant::now() > deadline {
                assert!(got.len() >= n, "{} requests with code {}, expected {n}", got.len(), code.0);
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `cmd` to the client on its most recent open connection.
    fn push(&self, cmd: RemotingCommand) {
        let handles = self.handles.lock().unwrap();
        let conn = handles.iter().rev().find(|c| !c.is_closed()).expect("a client connection");
        assert!(conn.send(Response::from(cmd)), "queued to the client");
    }
}

async fn serve(script: impl Fn(&RemotingCommand, usize) -> Option<RemotingCommand> + Send + Sync + 'static) -> Server {
    let sends = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let handles = Arc::new(Mutex::new(Vec::new()));
    let handler = Scripted {
        script: Arc::new(script),
        sends: Arc::clone(&sends),
        seen: Arc::clone(&seen),
        conns: Arc::clone(&conns),
        requests: Arc::clone(&requests),
        handles: Arc::clone(&handles),
    };
    let server = RemotingServer::bind("127.0.0.1:0", Arc::new(handler), ServerOptions::default()).await.expect("bind");
    Server { addr: server.local_addr().to_string(), sends, seen, conns, requests, handles, _server: server }
}

/// An address nothing listens on.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn ok(req: &RemotingCommand, offset: i64) -> Option<RemotingCommand> {
    let h: SendMessageRequestHeader = SendMessageRequestHeader::decode_for(req.request_code(), &req.ext_fields).expect("send header");
    let rh = SendMessageResponseHeader::new("0A0000010000000000000000".into(), h.queue_id, offset);
    Some(RemotingCommand::response(ResponseCode::SUCCESS, None).with_header(&rh))
}

fn refuse(code: ResponseCode, remark: &str) -> Option<RemotingCommand> {
    Some(RemotingCommand::response(code, Some(remark.to_string())))
}

fn not_leader(leader: Option<&str>) -> Option<RemotingCommand> {
    let remark = match leader {
        Some(a) => format!("broker broker-a node 2 is not the Raft leader; the leader is at {a}"),
        None => "broker broker-a node 2 is not the Raft leader and no leader is known (election in progress)".to_string(),
    };
    refuse(ResponseCode::SERVICE_NOT_AVAILABLE, &remark)
}

/// A nameserver whose route for every topic names `members` (brokerId → address) of broker-a, 4 queues.
async fn namesrv(members: Vec<(i64, String)>) -> Server {
    let route = TopicRouteData {
        queue_datas: vec![QueueData {
            broker_name: "broker-a".into(),
            read_queue_nums: 4,
            write_queue_nums: 4,
            perm: 6,
            topic_sys_flag: 0,
        }],
        broker_datas: vec![BrokerData {
            cluster: "c".into(),
            broker_name: "broker-a".into(),
            broker_addrs: members.into_iter().collect::<BTreeMap<_, _>>(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = encode_json_body(&route).unwrap();
    serve(move |req, _| match RequestCode(req.code) {
        RequestCode::GET_ROUTEINFO_BY_TOPIC => Some(RemotingCommand::response(ResponseCode::SUCCESS, None).with_body(body.clone())),
        _ => Some(RemotingCommand::response(ResponseCode::SUCCESS, None)),
    })
    .await
}

async fn producer(ns: &Server, name: &str, opts: impl FnOnce(&mut ProducerOptions)) -> Producer {
    let mut o = ProducerOptions::new(format!("pg-{name}"));
    opts(&mut o);
    Producer::start(ClientConfig::new(&ns.addr).with_instance_name(name), o).await.expect("start")
}

fn uniq_key(req: &RemotingCommand) -> String {
    let h = SendMessageRequestHeader::decode_for(req.request_code(), &req.ext_fields).unwrap();
    get_property(h.properties.as_deref().unwrap_or(""), property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).unwrap_or("").to_string()
}

#[tokio::test]
async fn a_leader_hint_is_followed_without_using_a_retry() {
    let leader = serve(|req, _| ok(req, 7)).await;
    let hint = leader.addr.clone();
    let follower = serve(move |_, _| not_leader(Some(&hint))).await;
    let ns = namesrv(vec![(0, follower.addr.clone()), (2, leader.addr.clone())]).await;
    // No retries at all: only a redirect can make this send succeed.
    let p = producer(&ns, "hint", |o| o.retries = 0).await;
    let r = p.send(Message::new("T", "x")).await.expect("send follows the hint");
    assert_eq!((r.status, r.queue_offset), (SendStatus::SendOk, 7));
    assert_eq!((follower.sends.load(Ordering::SeqCst), leader.sends.load(Ordering::SeqCst)), (1, 1));
    // The hint is remembered: the next send goes straight to the leader.
    p.send(Message::new("T", "y")).await.expect("second send");
    assert_eq!((follower.sends.load(Ordering::SeqCst), leader.sends.load(Ordering::SeqCst)), (1, 2));
    p.shutdown().await;
}

#[tokio::test]
async fn a_dead_leader_is_replaced_through_another_member_after_the_election() {
    let new_leader = serve(|req, _| ok(req, 1)).await;
    let hint = new_leader.addr.clone();
    // The surviving follower first knows no leader (election), then names the new one.
    let follower = serve(move |_, n| if n < 2 { not_leader(None) } else { not_leader(Some(&hint)) }).await;
    let ns = namesrv(vec![(0, dead_addr()), (1, follower.addr.clone()), (3, new_leader.addr.clone())]).await;
    let p = producer(&ns, "dead", |_| {}).await;
    let started = Instant::now();
    let r = p.send(Message::new("T", "x")).await.expect("send survives the failover");
    assert_eq!(r.status, SendStatus::SendOk);
    assert_eq!(follower.sends.load(Ordering::SeqCst), 3, "two election answers, then the hint");
    assert_eq!(new_leader.sends.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() < Duration::from_secs(3), "within the send budget");
    p.shutdown().await;
}

#[tokio::test]
async fn an_illegal_message_is_refused_once_with_the_brokers_code() {
    let leader = serve(|_, _| refuse(ResponseCode::MESSAGE_ILLEGAL, "the message body size 5 exceeds maxMessageSize 4")).await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = producer(&ns, "illegal", |_| {}).await;
    let e = p.send(Message::new("T", "12345")).await.expect_err("refused");
    assert_eq!(e.response_code(), Some(ResponseCode::MESSAGE_ILLEGAL.0));
    assert!(e.is_definite());
    assert!(e.to_string().contains("exceeds maxMessageSize"), "{e}");
    assert_eq!(leader.sends.load(Ordering::SeqCst), 1, "not retried");
    p.shutdown().await;
}

#[tokio::test]
async fn retryable_refusals_use_every_retry_and_every_retry_carries_the_same_id() {
    let leader = serve(|_, n| {
        if n < 2 {
            refuse(ResponseCode::SYSTEM_BUSY, "too many requests")
        } else {
            refuse(ResponseCode::SYSTEM_ERROR, "store outcome unknown: leadership changed")
        }
    })
    .await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = producer(&ns, "retryable", |o| o.retries = 2).await;
    let e = p.send(Message::new("T", "x")).await.expect_err("all attempts refused");
    match &e {
        // SYSTEM_ERROR may have stored the message, so the whole send is uncertain.
        ClientError::RetriesExhausted { attempts, definite, .. } => assert_eq!((*attempts, *definite), (3, false), "{e}"),
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(e.response_code(), Some(ResponseCode::SYSTEM_ERROR.0));
    let seen = leader.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let ids: Vec<String> = seen.iter().map(uniq_key).collect();
    assert!(!ids[0].is_empty() && ids.iter().all(|i| *i == ids[0]), "one message id for all attempts: {ids:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_silent_broker_costs_the_whole_budget_and_the_outcome_is_uncertain() {
    let silent = serve(|_, _| None).await;
    let ns = namesrv(vec![(0, silent.addr.clone())]).await;
    let p = producer(&ns, "silent", |o| o.send_timeout = Duration::from_millis(400)).await;
    let started = Instant::now();
    let e = p.send(Message::new("T", "x")).await.expect_err("times out");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(2), "bounded by the send timeout: {took:?}");
    assert!(!e.is_definite(), "a timeout may have stored the message: {e}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_timed_out_connection_is_replaced_by_a_fresh_one() {
    // The first request is never answered (as behind a partition); the next one must not queue behind it
    // on the same socket, where TCP retransmission backoff could hold it long after the network healed.
    let broker = serve(|req, n| if n == 0 { None } else { ok(req, 5) }).await;
    let ns = namesrv(vec![(0, broker.addr.clone())]).await;
    let p = producer(&ns, "fresh", |o| {
        o.send_timeout = Duration::from_millis(300);
        o.retries = 0;
    })
    .await;
    assert!(p.send(Message::new("T", "lost in the partition")).await.is_err());
    let r = p.send(Message::new("T", "after the heal")).await.expect("second send");
    assert_eq!(r.queue_offset, 5);
    assert_eq!(broker.conns.lock().unwrap().len(), 2, "the second send used a new connection");
    p.shutdown().await;
}

#[tokio::test]
async fn size_checks_and_compression_happen_before_sending() {
    let leader = serve(|req, _| ok(req, 0)).await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = producer(&ns, "size", |_| {}).await;
    let e = p.send(Message::new("T", vec![b'x'; 4 * 1024 * 1024 + 1])).await.expect_err("too large");
    assert!(matches!(e, ClientError::InvalidMessage(_)) && e.to_string().contains("4194305 bytes"), "{e}");
    assert!(matches!(p.send(Message::new("T", Vec::<u8>::new())).await, Err(ClientError::InvalidMessage(_))));
    assert!(matches!(p.send(Message::new("bad topic", "x")).await, Err(ClientError::InvalidMessage(_))));
    assert_eq!(leader.sends.load(Ordering::SeqCst), 0, "nothing invalid reached the broker");
    p.send(Message::new("T", vec![b'a'; 10_000])).await.expect("compressible body");
    p.send(Message::new("T", vec![b'a'; 4096])).await.expect("body at the threshold");
    let seen = leader.seen.lock().unwrap().clone();
    let flags: Vec<(i32, usize)> = seen
        .iter()
        .map(|r| (SendMessageRequestHeader::decode_for(r.request_code(), &r.ext_fields).unwrap().sys_flag, r.body.len()))
        .collect();
    assert_eq!(flags[0].0 & sys_flag::COMPRESSED, sys_flag::COMPRESSED, "over 4 KiB is compressed");
    assert!(flags[0].1 < 1000, "and much smaller: {}", flags[0].1);
    assert_eq!(flags[1], (0, 4096), "at 4 KiB it is sent as is");
    p.shutdown().await;
}

#[tokio::test]
async fn a_batch_is_one_request_with_an_id_per_message() {
    let leader = serve(|req, _| ok(req, 40)).await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = producer(&ns, "batch", |_| {}).await;
    let msgs = (0..3).map(|i| Message::new("T", format!("m{i}")).with_tags("B")).collect();
    let r = p.send_batch(msgs).await.expect("batch");
    let ids: Vec<&str> = r.msg_id.split(',').collect();
    assert_eq!(ids.len(), 3);
    let seen = leader.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].code, RequestCode::SEND_BATCH_MESSAGE.0);
    let inner: Vec<String> = BatchMessages::new(&seen[0].body)
        .map(|m| get_property(m.unwrap().properties, property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).unwrap().to_string())
        .collect();
    assert_eq!(inner, ids, "the result lists the ids the broker stored, in order");
    let mixed = vec![Message::new("T", "a"), Message::new("U", "b")];
    assert!(matches!(p.send_batch(mixed).await, Err(ClientError::InvalidMessage(_))), "one topic per batch");
    assert!(matches!(p.send_batch(vec![Message::new("T", "a").with_delay_level(3)]).await, Err(ClientError::InvalidMessage(_))));
    p.shutdown().await;
}

#[test]
fn the_blocking_facade_sends_without_a_runtime_and_refuses_inside_one() {
    // The scripted servers live on their own runtime thread; the test thread has no runtime.
    let servers = tokio::runtime::Runtime::new().unwrap();
    let (leader, ns) = servers.block_on(async {
        let leader = serve(|req, _| ok(req, 3)).await;
        let ns = namesrv(vec![(0, leader.addr.clone())]).await;
        (leader, ns)
    });
    let config = ClientConfig::new(&ns.addr).with_instance_name("blocking");
    let p = raftmq_client::blocking::Producer::start(config.clone(), ProducerOptions::new("pg-blocking")).expect("start");
    let r = p.send(Message::new("T", "x")).expect("blocking send");
    assert_eq!(r.queue_offset, 3);
    assert_eq!(leader.sends.load(Ordering::SeqCst), 1);
    // Inside an async runtime the facade answers with an error instead of deadlocking.
    let inside = servers.block_on(async { raftmq_client::blocking::Producer::start(config, ProducerOptions::new("pg-inside")).err() });
    assert!(matches!(inside, Some(ClientError::State(_))), "{inside:?}");
    p.shutdown();
}

/// Messages of a request in order: one for a single send, each batch record for a batch.
fn uniq_keys_of(req: &RemotingCommand) -> Vec<String> {
    if req.code == RequestCode::SEND_BATCH_MESSAGE.0 {
        BatchMessages::new(&req.body)
            .map(|m| get_property(m.expect("batch record").properties, property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).unwrap_or("").to_string())
            .collect()
    } else {
        vec![uniq_key(req)]
    }
}

/// Accepts every send; request `n` gets queue offset `100 n` and offset ids `ID<n>-<i>` for its messages.
fn accept_numbered(req: &RemotingCommand, n: usize) -> Option<RemotingCommand> {
    let h = SendMessageRequestHeader::decode_for(req.request_code(), &req.ext_fields).expect("send header");
    let count = uniq_keys_of(req).len();
    let ids: Vec<String> = (0..count).map(|i| format!("ID{n}-{i}")).collect();
    let rh = SendMessageResponseHeader::new(ids.join(","), h.queue_id, 100 * n as i64);
    Some(RemotingCommand::response(ResponseCode::SUCCESS, None).with_header(&rh))
}

#[tokio::test]
async fn sends_queued_behind_a_busy_slot_travel_as_one_batch_and_each_gets_its_own_result() {
    let leader = serve(accept_numbered).await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = producer(&ns, "auto-batch", |o| o.auto_batch_in_flight_max = 1).await;
    p.send(Message::new("T", "warm")).await.expect("warm-up");
    let futures: Vec<_> = (0..50).map(|i| p.send_async(Message::new("T", format!("m{i}")).with_tags("A"))).collect();
    let mut results = Vec::new();
    for f in futures {
        results.push(f.await.expect("send"));
    }
    let seen = leader.seen.lock().unwrap().clone();
    // Where the broker saw each message: request number and position inside it.
    let mut placed = std::collections::HashMap::new();
    for (n, req) in seen.iter().enumerate() {
        for (i, key) in uniq_keys_of(req).into_iter().enumerate() {
            assert!(placed.insert(key, (n, i)).is_none(), "a message was sent twice");
        }
    }
    assert_eq!(placed.len(), 51, "every message reached the broker exactly once");
    assert!(seen.len() < 20, "50 concurrent sends with one slot took {} requests", seen.len());
    assert!(seen.iter().any(|r| r.code == RequestCode::SEND_BATCH_MESSAGE.0), "nothing was batched");
    for r in &results {
        let (n, i) = placed[&r.msg_id];
        assert_eq!(r.offset_msg_id, format!("ID{n}-{i}"), "{r:?}");
        assert_eq!(r.queue_offset, 100 * n as i64 + i as i64, "{r:?}");
    }
    // Batches keep submission order.
    let order: Vec<usize> = results.iter().map(|r| placed[&r.msg_id].0 * 1000 + placed[&r.msg_id].1).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_refused_batch_is_resent_one_by_one_so_only_the_offending_message_fails() {
    let leader = serve(|req, n| {
        if req.code == RequestCode::SEND_BATCH_MESSAGE.0 || &req.body[..] == b"bad" {
            refuse(ResponseCode::MESSAGE_ILLEGAL, "the message is illegal")
        } else {
            accept_numbered(req, n)
        }
    })
    .await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = producer(&ns, "auto-batch-refused", |o| o.auto_batch_in_flight_max = 1).await;
    let bodies: Vec<&str> = vec!["a", "b", "bad", "c", "d"];
    let futures: Vec<_> = bodies.iter().map(|b| p.send_async(Message::new("T", *b))).collect();
    let mut outcomes = Vec::new();
    for f in futures {
        outcomes.push(f.await.map_err(|e| e.response_code()));
    }
    let failed: Vec<&str> = bodies.iter().zip(&outcomes).filter(|(_, o)| o.is_err()).map(|(b, _)| *b).collect();
    assert_eq!(failed, vec!["bad"], "{outcomes:?}");
    assert_eq!(outcomes[2], Err(Some(ResponseCode::MESSAGE_ILLEGAL.0)));
    assert!(leader.seen.lock().unwrap().iter().any(|r| r.code == RequestCode::SEND_BATCH_MESSAGE.0), "the test never batched");
    p.shutdown().await;
}

#[tokio::test]
async fn callbacks_get_every_outcome_and_a_panicking_one_does_not_stall_the_lane() {
    let leader = serve(accept_numbered).await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = producer(&ns, "callbacks", |o| {
        o.auto_batch_in_flight_max = 1;
        o.max_async_in_flight = 40;
    })
    .await;
    p.send(Message::new("T", "warm")).await.expect("warm-up");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..40 {
        let tx = tx.clone();
        p.send_with_callback(Message::new("T", format!("m{i}")), move |r| {
            let _ = tx.send((i, r.map(|s| s.queue_offset)));
            // Outcomes are delivered on the task sending the lane's requests: this must not end it.
            assert!(i % 7 != 3, "a callback that panics");
        });
    }
    // Past max_async_in_flight: refused, and the callback still hears of it (never inside the call).
    let refused = p.send_async(Message::new("T", "over"));
    drop(tx);
    let mut got = Vec::new();
    while let Some(x) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("every callback in time") {
        got.push(x);
    }
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(got.len(), 40, "every callback ran once");
    assert!(got.iter().all(|(_, r)| r.is_ok()), "{got:?}");
    let offsets: std::collections::BTreeSet<i64> = got.iter().map(|(_, r)| *r.as_ref().unwrap()).collect();
    assert_eq!(offsets.len(), 40, "each send its own queue offset");
    let err = refused.await.expect_err("the 41st async send is over the bound");
    assert!(err.to_string().contains("40 async sends already in flight"), "{err}");
    // The lane still works after the panics.
    p.send_async(Message::new("T", "after")).await.expect("a send after panicking callbacks");
    assert!(leader.seen.lock().unwrap().iter().any(|r| r.code == RequestCode::SEND_BATCH_MESSAGE.0), "nothing was batched");
    p.shutdown().await;
}

#[tokio::test]
async fn with_auto_batch_off_every_send_is_its_own_request() {
    let leader = serve(accept_numbered).await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = producer(&ns, "no-auto-batch", |o| {
        o.auto_batch = false;
        o.auto_batch_in_flight_max = 1;
    })
    .await;
    let futures: Vec<_> = (0..20).map(|i| p.send_async(Message::new("T", format!("m{i}")))).collect();
    for f in futures {
        f.await.expect("send");
    }
    let seen = leader.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|r| r.code == RequestCode::SEND_MESSAGE_V2.0));
    p.shutdown().await;
}

// ---- transactions ------------------------------------------------------------------------------------

/// Where the scripted brokers say half messages are stored: request `n` at commitlog offset
/// `HALF_PHYS_BASE + n`, half-queue offset `HALF_QUEUE_BASE + n`.
const HALF_PHYS_BASE: i64 = 1_000_000;
const HALF_QUEUE_BASE: i64 = 50;

/// Takes half messages (and anything else) as a raftmq leader does: SEND_OK, the half record's offsetMsgId,
/// the half-queue offset and `transactionId` = the message's UNIQ_KEY.
fn accept_half(req: &RemotingCommand, n: usize) -> Option<RemotingCommand> {
    if ![RequestCode::SEND_MESSAGE_V2.0, RequestCode::SEND_MESSAGE.0].contains(&req.code) {
        return Some(RemotingCommand::response(ResponseCode::SUCCESS, None));
    }
    let h = SendMessageRequestHeader::decode_for(req.request_code(), &req.ext_fields).expect("send header");
    let offset_msg_id = encode_offset_msg_id("127.0.0.1:10911".parse().unwrap(), HALF_PHYS_BASE + n as i64);
    let mut rh = SendMessageResponseHeader::new(offset_msg_id, h.queue_id, HALF_QUEUE_BASE + n as i64);
    rh.transaction_id = Some(uniq_key(req));
    Some(RemotingCommand::response(ResponseCode::SUCCESS, None).with_header(&rh))
}

/// Records what it is asked. `execute_local` returns its argument (panics on `None`); `check_local`
/// returns `check_answer` (panics on `None`).
struct Recording {
    executed: Mutex<Vec<Message>>,
    checked: Mutex<Vec<MessageExt>>,
    check_answer: Mutex<Option<TxnState>>,
}

impl Recording {
    fn new(check_answer: TxnState) -> Recording {
        Recording { executed: Mutex::default(), checked: Mutex::default(), check_answer: Mutex::new(Some(check_answer)) }
    }
}

impl TransactionListener for Recording {
    type Arg = Option<TxnState>;

    fn execute_local(&self, msg: &Message, arg: &Option<TxnState>) -> TxnState {
        self.executed.lock().unwrap().push(msg.clone());
        arg.expect("the local transaction failed")
    }

    fn check_local(&self, msg: &MessageExt) -> TxnState {
        self.checked.lock().unwrap().push(msg.clone());
        let answer = *self.check_answer.lock().unwrap();
        answer.expect("the check failed")
    }
}

async fn txn_producer(ns: &Server, name: &str, listener: Recording) -> TransactionProducer<Recording> {
    let opts = TransactionProducerOptions::new(format!("pg-{name}"));
    TransactionProducer::start(ClientConfig::new(&ns.addr).with_instance_name(name), opts, listener).await.expect("start")
}

fn end_header(req: &RemotingCommand) -> EndTransactionRequestHeader {
    assert!(req.is_oneway(), "END_TRANSACTION is oneway");
    EndTransactionRequestHeader::from_ext_fields(&req.ext_fields).expect("END_TRANSACTION header")
}

#[tokio::test]
async fn a_transaction_is_a_half_message_then_a_oneway_end_with_the_local_outcome() {
    let leader = serve(accept_half).await;
    let hint = leader.addr.clone();
    // The route names a follower first: END must go where the half message was stored, the leader.
    let follower = serve(move |_, _| not_leader(Some(&hint))).await;
    let ns = namesrv(vec![(0, follower.addr.clone()), (2, leader.addr.clone())]).await;
    let p = txn_producer(&ns, "txn-end", Recording::new(TxnState::Commit)).await;
    let cases = [
        (Some(TxnState::Commit), 8, TxnState::Commit),
        (Some(TxnState::Rollback), 12, TxnState::Rollback),
        (Some(TxnState::Unknown), 0, TxnState::Unknown),
        (None, 0, TxnState::Unknown),
    ];
    for (i, (arg, code, state)) in cases.into_iter().enumerate() {
        let msg = Message::new("T", format!("m{i}")).with_tags("A");
        let r = p.send_in_transaction(msg, &arg).await.expect("half message stored");
        let half = leader.seen.lock().unwrap()[i].clone();
        assert_eq!(half.code, RequestCode::SEND_MESSAGE_V2.0, "a single send, never a batch");
        let h = SendMessageRequestHeader::decode_for(half.request_code(), &half.ext_fields).unwrap();
        assert_eq!(h.sys_flag & sys_flag::TRANSACTION_PREPARED_TYPE, sys_flag::TRANSACTION_PREPARED_TYPE);
        let props = h.properties.clone().unwrap_or_default();
        assert_eq!(get_property(&props, property::TRANSACTION_PREPARED), Some("true"));
        assert_eq!(get_property(&props, property::PRODUCER_GROUP), Some("pg-txn-end"));
        let uniq = uniq_key(&half);
        assert_eq!((r.send.msg_id.as_str(), r.transaction_id.as_str()), (uniq.as_str(), uniq.as_str()));
        assert_eq!(r.send.queue_offset, HALF_QUEUE_BASE + i as i64);
        assert_eq!((r.local_state, r.end_sent), (state, true));
        // The local transaction saw the message as sent, with its id.
        let executed = p.listener().executed.lock().unwrap()[i].clone();
        assert_eq!(executed.msg_id(), Some(uniq.as_str()));
        assert_eq!(executed.property(property::TRANSACTION_ID), Some(uniq.as_str()));
        let ends = leader.wait_requests(RequestCode::END_TRANSACTION, i + 1).await;
        assert_eq!(ends.len(), i + 1, "one END per transaction");
        let e = end_header(&ends[i]);
        assert_eq!(e.producer_group, "pg-txn-end");
        assert_eq!(e.tran_state_table_offset, HALF_QUEUE_BASE + i as i64, "the half-queue offset");
        assert_eq!(e.commit_log_offset, HALF_PHYS_BASE + i as i64, "decoded from the offsetMsgId");
        assert_eq!(e.commit_or_rollback, code);
        assert!(!e.from_transaction_check);
        assert_eq!((e.msg_id.as_str(), e.transaction_id.as_deref()), (uniq.as_str(), Some(uniq.as_str())));
        if arg.is_none() {
            assert!(ends[i].remark.as_deref().unwrap_or("").contains("panicked"), "{:?}", ends[i].remark);
        }
    }
    assert!(follower.requests_with(RequestCode::END_TRANSACTION).is_empty(), "END went to the broker that took the half message");
    p.shutdown().await;
}

#[tokio::test]
async fn a_refused_or_scheduled_half_message_never_runs_the_local_transaction() {
    let leader = serve(|req, _| {
        if req.code == RequestCode::SEND_MESSAGE_V2.0 {
            refuse(ResponseCode::NO_PERMISSION, "the broker[127.0.0.1] sending transaction message is forbidden")
        } else {
            Some(RemotingCommand::response(ResponseCode::SUCCESS, None))
        }
    })
    .await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = txn_producer(&ns, "txn-refused", Recording::new(TxnState::Commit)).await;
    let e = p.send_in_transaction(Message::new("T", "x"), &Some(TxnState::Commit)).await.expect_err("refused");
    assert_eq!(e.response_code(), Some(ResponseCode::NO_PERMISSION.0), "{e}");
    let sends_after_refusal = leader.sends.load(Ordering::SeqCst);
    let at = std::time::SystemTime::now() + Duration::from_secs(60);
    for m in [
        Message::new("T", "x").with_delay_level(3),
        Message::new("T", "x").with_delay(Duration::from_secs(5)),
        Message::new("T", "x").with_delivery_time(at),
        Message::new("T", "x").with_property("TIMER_DELAY_SEC", "5"),
    ] {
        let e = p.send_in_transaction(m, &Some(TxnState::Commit)).await.expect_err("scheduled");
        assert!(matches!(e, ClientError::InvalidMessage(_)) && e.to_string().contains("cannot be scheduled"), "{e}");
    }
    assert_eq!(leader.sends.load(Ordering::SeqCst), sends_after_refusal, "no scheduled half message left the client");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.listener().executed.lock().unwrap().is_empty(), "the local transaction never ran");
    assert!(leader.requests_with(RequestCode::END_TRANSACTION).is_empty(), "nothing to end");
    p.shutdown().await;
}

/// A CHECK_TRANSACTION_STATE request as a broker sends it: oneway, the header's offsets, the half message
/// (already back on its real topic and queue) as the body.
fn check_request(fields: &[(&str, &str)], body: Vec<u8>) -> RemotingCommand {
    let mut cmd = RemotingCommand::request(RequestCode::CHECK_TRANSACTION_STATE, 0).with_body(body).mark_oneway();
    for (k, v) in fields {
        cmd.ext_fields.insert(k.to_string(), v.to_string());
    }
    cmd
}

fn stored_half(properties: &str) -> Vec<u8> {
    let host: std::net::SocketAddrV4 = "127.0.0.1:10911".parse().unwrap();
    let mut out = Vec::new();
    encode_stored_message(
        &MessageToStore {
            topic: "T",
            queue_id: 3,
            flag: 0,
            queue_offset: 777,
            physical_offset: 4242,
            sys_flag: 0,
            born_timestamp: 1,
            born_host: host,
            store_timestamp: 2,
            store_host: host,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: b"the order",
            properties,
        },
        &mut out,
    )
    .unwrap();
    out
}

#[tokio::test]
async fn a_check_back_is_answered_with_the_check_local_state_and_the_checks_offsets() {
    let leader = serve(accept_half).await;
    let ns = namesrv(vec![(0, leader.addr.clone())]).await;
    let p = txn_producer(&ns, "txn-check", Recording::new(TxnState::Rollback)).await;
    let r = p.send_in_transaction(Message::new("T", "the order").with_keys(["k1"]), &Some(TxnState::Unknown)).await.expect("half");
    assert_eq!(leader.wait_requests(RequestCode::END_TRANSACTION, 1).await.len(), 1);
    // The half send made the broker known; the group's heartbeat follows at once, not 30 s later.
    let hb = leader.wait_requests(RequestCode::HEART_BEAT, 1).await;
    let hb: HeartbeatData = decode_json_body("HeartbeatData", &hb[0].body).expect("heartbeat body");
    assert!(hb.producer_data_set.iter().any(|d| d.group_name == "pg-txn-check"), "{hb:?}");

    let uniq = r.transaction_id.clone();
    let props = format!("PGROUP\u{1}pg-txn-check\u{2}UNIQ_KEY\u{1}{uniq}\u{2}TRAN_MSG\u{1}true\u{2}KEYS\u{1}k1\u{2}");
    let offsets = [("tranStateTableOffset", "777"), ("commitLogOffset", "4242")];
    // Malformed or foreign checks are ignored: no answer, no harm.
    leader.push(check_request(&[("commitLogOffset", "4242"), ("msgId", &uniq)], stored_half(&props)));
    leader.push(check_request(&offsets, b"\x00\x00\x00\x20 not a stored message".to_vec()));
    leader.push(check_request(&offsets, stored_half("UNIQ_KEY\u{1}X\u{2}")));
    leader.push(check_request(&offsets, stored_half("PGROUP\u{1}another-group\u{2}UNIQ_KEY\u{1}X\u{2}")));
    // The real one.
    let fields = [
        ("tranStateTableOffset", "777"),
        ("commitLogOffset", "4242"),
        ("msgId", uniq.as_str()),
        ("transactionId", uniq.as_str()),
        ("offsetMsgId", "7F00000100002A9F0000000000001092"),
    ];
    leader.push(check_request(&fields, stored_half(&props)));
    let ends = leader.wait_requests(RequestCode::END_TRANSACTION, 2).await;
    let e = end_header(&ends[1]);
    assert!(e.from_transaction_check);
    assert_eq!((e.tran_state_table_offset, e.commit_log_offset), (777, 4242), "copied from the check");
    assert_eq!(e.commit_or_rollback, 12, "check_local said rollback");
    assert_eq!((e.msg_id.as_str(), e.transaction_id.as_deref()), (uniq.as_str(), Some(uniq.as_str())));
    assert_eq!(e.producer_group, "pg-txn-check");
    let checked = p.listener().checked.lock().unwrap().clone();
    assert_eq!(checked.len(), 1, "only the well-formed check of this group reached the listener");
    assert_eq!((checked[0].topic.as_str(), checked[0].queue_id, checked[0].msg_id.as_str()), ("T", 3, uniq.as_str()));
    assert_eq!((checked[0].keys(), &checked[0].body[..]), (vec!["k1"], &b"the order"[..]));

    // A panicking check answers unknown, and the producer carries on.
    *p.listener().check_answer.lock().unwrap() = None;
    leader.push(check_request(&fields, stored_half(&props)));
    let ends = leader.wait_requests(RequestCode::END_TRANSACTION, 3).await;
    let e = end_header(&ends[2]);
    assert_eq!((e.commit_or_rollback, e.from_transaction_check), (0, true));
    assert!(ends[2].remark.as_deref().unwrap_or("").contains("the check failed"), "{:?}", ends[2].remark);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(leader.requests_with(RequestCode::END_TRANSACTION).len(), 3, "nothing answered the malformed checks");
    let counts = p.check_counts();
    assert_eq!((counts.received, counts.answered, counts.dropped), (2, 2, 0), "{counts:?}");
    p.send_in_transaction(Message::new("T", "next"), &Some(TxnState::Commit)).await.expect("still sending");
    p.shutdown().await;
}

/// A pull answer: `code` with `next_begin_offset` and `suggest_which_broker_id`, and `body` (stored messages).
fn pull_answer(code: ResponseCode, next: i64, suggest: i64, remark: &str, body: Vec<u8>) -> Option<RemotingCommand> {
    let rh = PullMessageResponseHeader {
        suggest_which_broker_id: suggest,
        next_begin_offset: next,
        min_offset: 0,
        max_offset: 9,
        ..Default::default()
    };
    Some(RemotingCommand::response(code, Some(remark.to_string())).with_header(&rh).with_body(body))
}

fn pulled_offset(req: &RemotingCommand) -> i64 {
    req.ext_fields.get("queueOffset").and_then(|v| v.parse().ok()).expect("queueOffset")
}

#[tokio::test]
async fn a_pull_a_lagging_member_sends_on_is_asked_of_the_next_member() {
    // The up-to-date member has the message at the polled offset.
    let fresh = serve(|req, _| match RequestCode(req.code) {
        RequestCode::PULL_MESSAGE => {
            let o = pulled_offset(req);
            pull_answer(ResponseCode::SUCCESS, o + 1, 0, "", stored_half(""))
        }
        _ => Some(RemotingCommand::response(ResponseCode::SUCCESS, None)),
    })
    .await;
    let hint = fresh.addr.clone();
    // The member the route names first is far behind the leader's commit: "retry at brokerId 0", same offset.
    let lagging = serve(move |req, _| match RequestCode(req.code) {
        RequestCode::PULL_MESSAGE => pull_answer(
            ResponseCode::PULL_RETRY_IMMEDIATELY,
            pulled_offset(req),
            0,
            &format!("node 1 has 900 committed log entries still to apply (followerReadLagMaxEntries 64); retry at brokerId 0, the leader is at {hint}"),
            Vec::new(),
        ),
        _ => Some(RemotingCommand::response(ResponseCode::SUCCESS, None)),
    })
    .await;
    let ns = namesrv(vec![(0, lagging.addr.clone()), (2, fresh.addr.clone())]).await;
    let pc = raftmq_client::PullConsumer::start(ClientConfig::new(&ns.addr).with_instance_name("lagging"), "g").await.expect("start");
    let q = raftmq_client::MessageQueue { topic: "T".into(), broker_name: "broker-a".into(), queue_id: 3 };
    let r = pc.pull(&q, "*", 5, 32).await.expect("pull");
    assert_eq!(r.status, raftmq_client::PullStatus::Found, "served by the next member");
    assert_eq!((r.messages.len(), r.next_begin_offset), (1, 6));
    assert_eq!(lagging.requests_with(RequestCode::PULL_MESSAGE).len(), 1);
    assert_eq!(fresh.requests_with(RequestCode::PULL_MESSAGE).len(), 1);
    // The leader the remark named is asked first from now on.
    pc.pull(&q, "*", 6, 32).await.expect("second pull");
    assert_eq!(lagging.requests_with(RequestCode::PULL_MESSAGE).len(), 1, "the lagging member is not asked again");
    assert_eq!(fresh.requests_with(RequestCode::PULL_MESSAGE).len(), 2);
    pc.shutdown().await;
}

#[tokio::test]
async fn only_a_retry_at_the_same_offset_sends_a_pull_on() {
    // A leader whose answer skips unmatched messages (PULL_RETRY_IMMEDIATELY with a later offset) is the answer,
    // as is a retry at the same offset that suggests another member than brokerId 0.
    for (next_delta, suggest, asked_next) in [(4, 0, 0), (0, 2, 0), (0, 0, 1)] {
        let other = serve(|req, _| match RequestCode(req.code) {
            RequestCode::PULL_MESSAGE => pull_answer(ResponseCode::PULL_NOT_FOUND, pulled_offset(req), 0, "no new message", Vec::new()),
            _ => Some(RemotingCommand::response(ResponseCode::SUCCESS, None)),
        })
        .await;
        let first = serve(move |req, _| match RequestCode(req.code) {
            RequestCode::PULL_MESSAGE => {
                pull_answer(ResponseCode::PULL_RETRY_IMMEDIATELY, pulled_offset(req) + next_delta, suggest, "retry", Vec::new())
            }
            _ => Some(RemotingCommand::response(ResponseCode::SUCCESS, None)),
        })
        .await;
        let ns = namesrv(vec![(0, first.addr.clone()), (2, other.addr.clone())]).await;
        let pc =
            raftmq_client::PullConsumer::start(ClientConfig::new(&ns.addr).with_instance_name(format!("same-{next_delta}-{suggest}")), "g")
                .await
                .expect("start");
        let q = raftmq_client::MessageQueue { topic: "T".into(), broker_name: "broker-a".into(), queue_id: 3 };
        let r = pc.pull(&q, "*", 5, 32).await.expect("pull");
        assert_eq!(other.requests_with(RequestCode::PULL_MESSAGE).len(), asked_next, "next {next_delta}, suggest {suggest}");
        let expect = if asked_next == 1 {
            // Nobody better: the other member's own answer.
            raftmq_client::PullStatus::NoNewMsg
        } else {
            raftmq_client::PullStatus::NoMatchedMsg
        };
        assert_eq!(r.status, expect);
        pc.shutdown().await;
    }
}
