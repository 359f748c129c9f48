//! Transactions and de-duplicated retries on real processes across a leader killed with SIGKILL: a half
//! message sent to the old leader is committed on the new one; another is decided by a check-back the new
//! leader sends (answered twice); a rolled-back one never shows; a send retried on the new leader gets the
//! original's result. Every replica, the killed one restarted included, ends with each committed message
//! exactly once and nothing else.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftmq_net::RemotingClient;
use raftmq_remoting::body::{encode_json_body, HeartbeatData, ProducerData};
use raftmq_remoting::header::{
    transaction_type, CheckTransactionStateRequestHeader, CommandHeader, EndTransactionRequestHeader, SendMessageRequestHeader,
    SendMessageResponseHeader,
};
use raftmq_remoting::message::{decode_offset_msg_id, encode_properties, property, sys_flag};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const TOPIC: &str = "TxnT";
const GROUP: &str = "PID_kill";

fn send_with(body: &str, props: &[(&str, &str)], flag: i32) -> RemotingCommand {
    let mut p = String::new();
    let mut list = vec![(property::WAIT_STORE_MSG_OK, "true")];
    list.extend_from_slice(props);
    encode_properties(list, &mut p).expect("properties");
    let h = SendMessageRequestHeader {
        producer_group: GROUP.into(),
        topic: TOPIC.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 1,
        queue_id: 0,
        sys_flag: flag,
        born_timestamp: now_ms(),
        properties: Some(p),
        ..Default::default()
    };
    let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(body.as_bytes().to_vec());
    h.write_ext_fields_v2(&mut cmd.ext_fields);
    cmd
}

/// Sends; the response header on SEND_OK.
async fn send_ok(c: &RemotingClient, cmd: RemotingCommand) -> SendMessageResponseHeader {
    let r = c.invoke(cmd, TIMEOUT).await.expect("send");
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "send refused: {:?}", r.remark);
    r.decode_header().expect("send response header")
}

/// (half-queue offset, half commitlog offset, transaction id) of a half send.
async fn half(c: &RemotingClient, body: &str) -> (i64, i64, String) {
    let uniq = format!("UNIQ-{body}");
    let h = send_ok(
        c,
        send_with(
            body,
            &[
                (property::TRANSACTION_PREPARED, "true"),
                (property::PRODUCER_GROUP, GROUP),
                (property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, &uniq),
            ],
            sys_flag::TRANSACTION_PREPARED_TYPE,
        ),
    )
    .await;
    let phys = decode_offset_msg_id(&h.msg_id).expect("offsetMsgId").commit_log_offset;
    (h.queue_offset, phys, h.transaction_id.expect("transactionId"))
}

fn end(half: &(i64, i64, String), how: i32, from_check: bool) -> RemotingCommand {
    let h = EndTransactionRequestHeader {
        topic: Some(TOPIC.into()),
        producer_group: GROUP.into(),
        tran_state_table_offset: half.0,
        commit_log_offset: half.1,
        commit_or_rollback: how,
        from_transaction_check: from_check,
        msg_id: half.2.clone(),
        transaction_id: Some(half.2.clone()),
    };
    RemotingCommand::request(RequestCode::END_TRANSACTION, 0).with_header(&h)
}

/// A producer connection to `addr` that heartbeats as [`GROUP`] and records the check-backs it receives.
async fn producer(addr: &str, id: &str) -> (RemotingClient, Arc<Mutex<Vec<CheckTransactionStateRequestHeader>>>) {
    let seen: Arc<Mutex<Vec<CheckTransactionStateRequestHeader>>> = Arc::default();
    let s = Arc::clone(&seen);
    let cb: raftmq_net::client::ServerRequestCallback = Arc::new(move |cmd: RemotingCommand| {
        if cmd.code == RequestCode::CHECK_TRANSACTION_STATE.0 {
            if let Ok(h) = CheckTransactionStateRequestHeader::from_ext_fields(&cmd.ext_fields) {
                s.lock().expect("lock").push(h);
            }
        }
    });
    let c = RemotingClient::connect(addr, TIMEOUT, Some(cb)).await.expect("connect");
    let hb =
        HeartbeatData { client_id: id.into(), producer_data_set: vec![ProducerData { group_name: GROUP.into() }], ..Default::default() };
    let r = c
        .invoke(RemotingCommand::request(RequestCode::HEART_BEAT, 0).with_body(encode_json_body(&hb).expect("heartbeat")), TIMEOUT)
        .await
        .expect("heartbeat");
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "{:?}", r.remark);
    (c, seen)
}

/// The bodies in queue 0 of [`TOPIC`] on the member at `addr`, in offset order.
async fn bodies(addr: &str) -> Vec<String> {
    let Some(c) = client(addr).await else { return Vec::new() };
    pull_all(&c, TOPIC, 0).await.into_iter().map(|(_, b)| String::from_utf8_lossy(&b).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_retried_sends_are_exact_across_a_leader_kill() {
    let mut cluster = Cluster::prepare(3, "transactionTimeOut = 1500\ntransactionCheckInterval = 60000\ndefaultTopicQueueNums = 1\n");
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let old = cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&cluster.node(old).client_addr).await.expect("connect to the leader");
    // The de-duplication window is proposed by the first leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node_status(&cluster.node(old).client_addr).await.and_then(|s| s["transactions"]["dedupWindowMs"].as_i64()) != Some(120_000) {
        assert!(Instant::now() < deadline, "the de-duplication window was never set");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = send_ok(&c, send_with("paid", &[(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, "UNIQ-paid")], 0)).await;
    let a = half(&c, "committed-on-new-leader").await;
    let b = half(&c, "decided-by-check-back").await;
    let r = half(&c, "rolled-back").await;
    let resp = c.invoke(end(&r, transaction_type::ROLLBACK, false), TIMEOUT).await.expect("37");
    assert_eq!(resp.code, ResponseCode::SUCCESS.0, "{:?}", resp.remark);
    // Producers heartbeat every member; the followers' connections are where the new leader's checks go.
    let mut producers = Vec::new();
    for id in (1..=3).filter(|id| *id != old) {
        producers.push((id, producer(&cluster.node(id).client_addr, &format!("10.0.0.{id}@kill")).await));
    }

    cluster.kill(old);
    let new = cluster.leader(Duration::from_secs(30)).await;
    assert_ne!(new, old);
    let n = client(&cluster.node(new).client_addr).await.expect("connect to the new leader");
    let ok = |resp: RemotingCommand| assert_eq!(resp.code, ResponseCode::SUCCESS.0, "{:?}", resp.remark);
    // The half message the old leader stored is committed on the new one.
    ok(n.invoke(end(&a, transaction_type::COMMIT, false), TIMEOUT).await.expect("37"));
    // The retried send finds the original on the new leader: same msgId and offset, nothing stored.
    let retry = send_ok(&n, send_with("paid", &[(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, "UNIQ-paid")], 0)).await;
    assert_eq!((retry.msg_id.as_str(), retry.queue_offset), (first.msg_id.as_str(), first.queue_offset));
    // The new leader checks the undecided one back; the producer answers twice (oneway).
    let (p, checks) = &producers.iter().find(|(id, _)| *id == new).expect("a producer connected to the new leader").1;
    let deadline = Instant::now() + Duration::from_secs(20);
    let check = loop {
        if let Some(h) = checks.lock().expect("lock").iter().find(|h| h.commit_log_offset == b.1).cloned() {
            break h;
        }
        assert!(Instant::now() < deadline, "the new leader never checked back the undecided transaction\n{}", cluster.log_tails(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let answer = (check.tran_state_table_offset, check.commit_log_offset, b.2.clone());
    p.invoke_oneway(end(&answer, transaction_type::COMMIT, true)).await.expect("oneway 37");
    p.invoke_oneway(end(&answer, transaction_type::COMMIT, true)).await.expect("oneway 37");

    let want = vec!["paid".to_string(), "committed-on-new-leader".into(), "decided-by-check-back".into()];
    let settled = |got: &Vec<String>| {
        let mut g = got.clone();
        g.sort();
        let mut w = want.clone();
        w.sort();
        g == w
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !settled(&bodies(&cluster.node(new).client_addr).await) {
        assert!(Instant::now() < deadline, "new leader holds {:?}, want {want:?} once each", bodies(&cluster.node(new).client_addr).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = node_status(&cluster.node(new).client_addr).await.expect("status");
    assert_eq!(status["transactions"]["pending"], 0, "{status}");

    // The killed node comes back and catches up: the same messages, once each.
    cluster.start_node(old);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = bodies(&cluster.node(old).client_addr).await;
        if settled(&got) {
            break;
        }
        assert!(got.len() <= want.len(), "the restarted node holds {got:?}");
        assert!(Instant::now() < deadline, "the restarted node holds {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more arrives later (a late duplicate commit or re-delivered retry).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        let got = bodies(&cluster.node(id).client_addr).await;
        assert!(settled(&got), "node {id} holds {got:?}");
    }
}
