//! The client against a server that closes idle connections (`conn_idle_ms_max`, 120 s by default like
//! RocketMQ's `serverChannelMaxIdleTimeSeconds`): a producer whose broker connection was closed for
//! idleness sends on a fresh connection without spending a retry. Real TCP on 127.0.0.1 with a shortened
//! idle limit; waits poll an observable condition against a generous deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_client::{ClientConfig, Message, Producer, ProducerOptions, SendStatus};
use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingServer, RequestHandler, Response, ServerOptions};
use raftmq_remoting::body::{encode_json_body, BrokerData, QueueData, TopicRouteData};
use raftmq_remoting::header::{SendMessageRequestHeader, SendMessageResponseHeader};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

/// Answers routes (as a nameserver naming `broker`) and sends (as a leader), recording connection ids.
struct Both {
    route: bytes::Bytes,
    conns: Arc<Mutex<BTreeSet<u64>>>,
}

impl RequestHandler for Both {
    fn handle(&self, conn: Conn, req: RemotingCommand) -> HandlerFuture {
        let reply = match RequestCode(req.code) {
            RequestCode::GET_ROUTEINFO_BY_TOPIC => RemotingCommand::response(ResponseCode::SUCCESS, None).with_body(self.route.clone()),
            RequestCode::SEND_MESSAGE_V2 | RequestCode::SEND_MESSAGE => {
                self.conns.lock().unwrap().insert(conn.id());
                let h = SendMessageRequestHeader::decode_for(req.request_code(), &req.ext_fields).expect("send header");
                let rh = SendMessageResponseHeader::new("0A0000010000000000000000".into(), h.queue_id, 1);
                RemotingCommand::response(ResponseCode::SUCCESS, None).with_header(&rh)
            }
            _ => RemotingCommand::response(ResponseCode::SUCCESS, None),
        };
        Box::pin(async move { Some(Response::from(reply.with_opaque(req.opaque))) })
    }
}

fn route(broker: &str) -> bytes::Bytes {
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
            broker_addrs: BTreeMap::from([(0, broker.to_string())]),
            ..Default::default()
        }],
        ..Default::default()
    };
    encode_json_body(&route).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_for_idleness_is_replaced_without_a_retry() {
    // The broker closes connections idle for 300 ms; the nameserver keeps the default.
    let conns = Arc::new(Mutex::new(BTreeSet::new()));
    let opts = ServerOptions { conn_idle_ms_max: 300, ..ServerOptions::default() };
    // Bind the broker first to learn its address, then serve the route naming it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let broker_addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    let handler = Both { route: route(&broker_addr), conns: Arc::clone(&conns) };
    let broker = RemotingServer::bind(&broker_addr, Arc::new(handler), opts).await.expect("bind broker");
    let ns_handler = Both { route: route(&broker_addr), conns: Arc::new(Mutex::new(BTreeSet::new())) };
    let ns = RemotingServer::bind("127.0.0.1:0", Arc::new(ns_handler), ServerOptions::default()).await.expect("bind ns");

    let mut o = ProducerOptions::new("pg-idle");
    o.retries = 0;
    let p = Producer::start(ClientConfig::new(&ns.local_addr().to_string()).with_instance_name("idle"), o).await.expect("start");
    let r = p.send(Message::new("T", "before")).await.expect("first send");
    assert_eq!(r.status, SendStatus::SendOk);

    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while broker.stats().connections_idle_closed_total() == 0 {
        assert!(tokio::time::Instant::now() < end, "the broker never closed the idle connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the client's reader the FIN (it marks the connection closed on end-of-stream).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = p.send(Message::new("T", "after")).await.expect("the send after the idle close, with no retry to spend");
    assert_eq!(r.status, SendStatus::SendOk);
    assert_eq!(conns.lock().unwrap().len(), 2, "the second send used a new connection");
    p.shutdown().await;
}
