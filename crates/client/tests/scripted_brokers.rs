//! The producer's retry and failover rules against scripted brokers: in-process remoting servers that
//! answer as a nameserver, a Raft leader, a follower with a leader hint, a node in an election, a node that
//! never answers, or one that refuses. Each test counts the requests every server received, so the rules
//! ("a hint is followed without using a retry", "an illegal message is not retried", "every retry carries
//! the same message id") are checked exactly, without a real cluster's timing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_client::{ClientConfig, ClientError, Message, Producer, ProducerOptions, SendStatus};
use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingServer, RequestHandler, Response, ServerOptions};
use raftmq_remoting::body::{encode_json_body, BrokerData, QueueData, TopicRouteData};
use raftmq_remoting::header::{SendMessageRequestHeader, SendMessageResponseHeader};
use raftmq_remoting::message::{get_property, property, sys_flag, BatchMessages};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

type Script = Arc<dyn Fn(&RemotingCommand, usize) -> Option<RemotingCommand> + Send + Sync>;

/// A server that answers with `script(request, n)` where `n` counts the send requests it got so far.
struct Scripted {
    script: Script,
    sends: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<RemotingCommand>>>,
    conns: Arc<Mutex<std::collections::BTreeSet<u64>>>,
}

impl RequestHandler for Scripted {
    fn handle(&self, conn: Conn, req: RemotingCommand) -> HandlerFuture {
        self.conns.lock().unwrap().insert(conn.id());
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
    _server: RemotingServer,
}

async fn serve(script: impl Fn(&RemotingCommand, usize) -> Option<RemotingCommand> + Send + Sync + 'static) -> Server {
    let sends = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let handler = Scripted { script: Arc::new(script), sends: Arc::clone(&sends), seen: Arc::clone(&seen), conns: Arc::clone(&conns) };
    let server = RemotingServer::bind("127.0.0.1:0", Arc::new(handler), ServerOptions::default()).await.expect("bind");
    Server { addr: server.local_addr().to_string(), sends, seen, conns, _server: server }
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
