//! Transactional messages and de-duplicated retries end to end in one process.
//!
//! A half message is invisible until committed, and a commit makes it visible exactly once with its
//! identity (a second END, as clients send one from the local transaction and one answering a check, adds
//! nothing); a rollback hides it for good; bad ENDs get a code and remark and change nothing. An undecided
//! transaction is checked back over the producer's own connection, first after `transactionTimeOut`, and
//! parked after `transactionCheckMax` rounds; after the leader is stopped the new leader resumes the
//! checks and accepts the answer. A retried send is answered with the original's result, also when it
//! lands on a new leader.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{pull, pull_messages, send_cmd, send_request, Group, TIMEOUT, TOPIC};
use raftmq_net::RemotingClient;
use raftmq_remoting::body::{encode_json_body, HeartbeatData, ProducerData};
use raftmq_remoting::header::{
    transaction_type, CheckTransactionStateRequestHeader, CommandHeader, EndTransactionRequestHeader, SendMessageResponseHeader,
};
use raftmq_remoting::message::{decode_offset_msg_id, decode_properties, property, sys_flag, StoredMessages};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const GROUP: &str = "PID_txn";

/// What a half send was answered with.
#[derive(Debug, Clone)]
struct Half {
    queue_offset: i64,
    commit_log_offset: i64,
    transaction_id: String,
}

fn half_request(queue_id: i32, body: &[u8], uniq: &str, extra: &[(&str, &str)]) -> RemotingCommand {
    let mut props = vec![(property::TRANSACTION_PREPARED, "true"), (property::PRODUCER_GROUP, GROUP), (property::TAGS, "TagT")];
    props.push((property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, uniq));
    props.extend_from_slice(extra);
    send_request(TOPIC, queue_id, body, &props, sys_flag::TRANSACTION_PREPARED_TYPE)
}

async fn send_half(c: &RemotingClient, queue_id: i32, body: &[u8], uniq: &str) -> Half {
    let r = c.invoke(half_request(queue_id, body, uniq, &[]), TIMEOUT).await.expect("half send");
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "half send refused: {:?}", r.remark);
    let h: SendMessageResponseHeader = r.decode_header().expect("send response header");
    assert_eq!(h.queue_id, queue_id, "a half send answers with the requested real queue");
    let id = decode_offset_msg_id(&h.msg_id).expect("offsetMsgId");
    Half { queue_offset: h.queue_offset, commit_log_offset: id.commit_log_offset, transaction_id: h.transaction_id.unwrap_or_default() }
}

fn end_header(half: &Half, how: i32, from_check: bool) -> EndTransactionRequestHeader {
    EndTransactionRequestHeader {
        topic: Some(TOPIC.into()),
        producer_group: GROUP.into(),
        tran_state_table_offset: half.queue_offset,
        commit_log_offset: half.commit_log_offset,
        commit_or_rollback: how,
        from_transaction_check: from_check,
        msg_id: half.transaction_id.clone(),
        transaction_id: Some(half.transaction_id.clone()),
    }
}

/// Sends END_TRANSACTION as a request (not oneway) so that the answer can be asserted.
async fn end(c: &RemotingClient, h: &EndTransactionRequestHeader) -> (i32, String) {
    let r = c.invoke(RemotingCommand::request(RequestCode::END_TRANSACTION, 0).with_header(h), TIMEOUT).await.expect("37");
    (r.code, r.remark.unwrap_or_default())
}

async fn pending(g: &Group, i: usize) -> usize {
    g.brokers[i].node().state().with_metadata(|m| m.state.transactions.len())
}

/// A producer connection that records the CHECK_TRANSACTION_STATE requests it receives and heartbeats as
/// a member of [`GROUP`].
async fn producer(g: &Group, i: usize, id: &str) -> (RemotingClient, Arc<Mutex<Vec<RemotingCommand>>>) {
    let seen: Arc<Mutex<Vec<RemotingCommand>>> = Arc::default();
    let s = Arc::clone(&seen);
    let cb: raftmq_net::client::ServerRequestCallback = Arc::new(move |cmd: RemotingCommand| {
        if cmd.code == RequestCode::CHECK_TRANSACTION_STATE.0 {
            s.lock().unwrap().push(cmd);
        }
    });
    let c = RemotingClient::connect(&g.addr(i), TIMEOUT, Some(cb)).await.expect("connect");
    let hb =
        HeartbeatData { client_id: id.into(), producer_data_set: vec![ProducerData { group_name: GROUP.into() }], ..Default::default() };
    let r = c
        .invoke(RemotingCommand::request(RequestCode::HEART_BEAT, 0).with_body(encode_json_body(&hb).expect("heartbeat")), TIMEOUT)
        .await
        .expect("heartbeat");
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "{:?}", r.remark);
    (c, seen)
}

async fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_half_message_is_invisible_until_committed_and_a_second_commit_adds_nothing() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        crate::common::send(&c, TOPIC, 0, b"creates the topic").await.expect("plain send");
        let half = send_half(&c, 1, b"order-1 paid", "7F000001TXN000000000000000000001").await;
        assert_eq!(half.transaction_id, "7F000001TXN000000000000000000001");
        assert_eq!(pull_messages(&c, TOPIC, 1).await.len(), 0, "a half message is visible");
        assert_eq!(pending(&g, leader).await, 1);

        let (code, remark) = end(&c, &end_header(&half, transaction_type::COMMIT, false)).await;
        assert_eq!(code, ResponseCode::SUCCESS.0, "{remark}");
        let got = pull_messages(&c, TOPIC, 1).await;
        assert_eq!(got.len(), 1);
        let m = &got[0];
        assert_eq!((m.offset, m.body.as_slice()), (0, &b"order-1 paid"[..]));
        assert_eq!(sys_flag::transaction_value(m.sys_flag), sys_flag::TRANSACTION_COMMIT_TYPE);
        assert_eq!(m.prepared_offset, half.commit_log_offset, "PREPARED_TRANSACTION_OFFSET names the half message");
        for gone in [property::TRANSACTION_PREPARED, property::REAL_TOPIC, property::REAL_QUEUE_ID] {
            assert!(!m.properties.contains_key(gone), "{gone} left on the committed message: {:?}", m.properties);
        }
        assert_eq!(m.properties.get(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).map(String::as_str), Some(half.transaction_id.as_str()));
        assert_eq!(m.properties.get(property::PRODUCER_GROUP).map(String::as_str), Some(GROUP));
        assert_eq!(m.properties.get(property::TAGS).map(String::as_str), Some("TagT"));

        // The answer to a check-back arrives too: refused, and nothing is added.
        let (code, remark) = end(&c, &end_header(&half, transaction_type::COMMIT, true)).await;
        assert_eq!(code, ResponseCode::SYSTEM_ERROR.0, "{remark}");
        assert!(remark.contains("no transaction is pending"), "{remark}");
        assert_eq!(pull_messages(&c, TOPIC, 1).await.len(), 1, "committed twice");
        assert_eq!(pending(&g, leader).await, 0);

        // Sent oneway to a follower (as clients do after a failover): forwarded, and it commits.
        let half = send_half(&c, 2, b"order-2 paid", "7F000001TXN000000000000000000002").await;
        let follower = (leader + 1) % 3;
        let f = g.client(follower).await;
        let cmd =
            RemotingCommand::request(RequestCode::END_TRANSACTION, 0).with_header(&end_header(&half, transaction_type::COMMIT, false));
        f.invoke_oneway(cmd).await.expect("oneway 37");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pull_messages(&c, TOPIC, 2).await.len() != 1 {
            assert!(Instant::now() < deadline, "a oneway END sent to a follower did not commit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        g.shutdown().await;
    });
}

#[test]
fn a_rollback_hides_it_for_good_and_bad_input_changes_nothing() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        crate::common::send(&c, TOPIC, 0, b"creates the topic").await.expect("plain send");

        // Half sends the broker cannot take: a clear 13 and remark; nothing is stored.
        let refused = [
            (half_request(1, b"x", "U1", &[(property::DELAY_TIME_LEVEL, "3")]), "cannot also be delayed"),
            (half_request(1, b"x", "U2", &[(property::TIMER_DELAY_SEC, "10")]), "cannot also be delayed"),
            (send_request(TOPIC, 1, b"x", &[(property::TRANSACTION_PREPARED, "true")], 4), "PGROUP"),
        ];
        for (cmd, why) in refused {
            let (code, remark) = send_cmd(&c, cmd).await.expect_err("accepted");
            assert_eq!(code, ResponseCode::MESSAGE_ILLEGAL.0, "{remark}");
            assert!(remark.contains(why), "{remark}");
        }
        assert_eq!(pending(&g, leader).await, 0);

        let half = send_half(&c, 1, b"order-3", "7F000001TXN000000000000000000003").await;
        let mut wrong_group = end_header(&half, transaction_type::COMMIT, false);
        wrong_group.producer_group = "PID_other".into();
        let mut wrong_offset = end_header(&half, transaction_type::COMMIT, false);
        wrong_offset.tran_state_table_offset += 1;
        let mut unknown_half = end_header(&half, transaction_type::COMMIT, false);
        unknown_half.commit_log_offset += 1;
        let bad_kind = end_header(&half, 5, false);
        for (h, why) in [
            (&wrong_group, "producer group wrong"),
            (&wrong_offset, "state table offset wrong"),
            (&unknown_half, "no transaction is pending"),
            (&bad_kind, "commitOrRollback 5"),
        ] {
            let (code, remark) = end(&c, h).await;
            assert_eq!(code, ResponseCode::SYSTEM_ERROR.0, "{remark}");
            assert!(remark.contains(why), "{remark}");
        }
        // A header without its required fields.
        let r = c.invoke(RemotingCommand::request(RequestCode::END_TRANSACTION, 0), TIMEOUT).await.expect("37");
        assert_eq!(r.code, ResponseCode::SYSTEM_ERROR.0);
        assert!(r.remark.unwrap_or_default().contains("bad END_TRANSACTION header"));
        // Unknown (0): stays pending.
        let (code, _) = end(&c, &end_header(&half, transaction_type::NOT_TYPE, false)).await;
        assert_eq!(code, ResponseCode::SUCCESS.0);
        assert_eq!((pending(&g, leader).await, pull_messages(&c, TOPIC, 1).await.len()), (1, 0), "bad ENDs changed something");

        let (code, remark) = end(&c, &end_header(&half, transaction_type::ROLLBACK, false)).await;
        assert_eq!(code, ResponseCode::SUCCESS.0, "{remark}");
        let (code, remark) = end(&c, &end_header(&half, transaction_type::COMMIT, false)).await;
        assert_eq!(code, ResponseCode::SYSTEM_ERROR.0, "a commit after the rollback: {remark}");
        assert_eq!(pull_messages(&c, TOPIC, 1).await.len(), 0, "a rolled-back message became visible");
        assert_eq!(pending(&g, leader).await, 0);
        g.shutdown().await;
    });
}

const CHECKS: &str = "transactionTimeOut = 300\ntransactionCheckInterval = 400\ntransactionCheckMax = 2\n";

#[test]
fn an_undecided_transaction_is_checked_back_on_the_producers_connection_then_parked() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with(CHECKS).await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let (p, checks) = producer(&g, leader, "10.0.0.1@checked").await;
        crate::common::send(&p, TOPIC, 0, b"creates the topic").await.expect("plain send");
        let sent = Instant::now();
        let half = send_half(&p, 3, b"never decided", "7F000001TXN000000000000000000004").await;
        let first = wait_for("the first check-back", Duration::from_secs(10), || checks.lock().unwrap().first().cloned()).await;
        assert!(
            sent.elapsed() >= Duration::from_millis(300),
            "checked {:?} after the half send, before transactionTimeOut",
            sent.elapsed()
        );
        let h = CheckTransactionStateRequestHeader::from_ext_fields(&first.ext_fields).expect("39 header");
        assert_eq!((h.tran_state_table_offset, h.commit_log_offset), (half.queue_offset, half.commit_log_offset));
        assert_eq!(h.transaction_id.as_deref(), Some(half.transaction_id.as_str()));
        let body: Vec<_> = StoredMessages::new(&first.body).map(|m| m.expect("39 body")).collect();
        assert_eq!((body.len(), body[0].topic, body[0].queue_id, body[0].body), (1, TOPIC, 3, &b"never decided"[..]));
        assert_eq!(decode_properties(body[0].properties).get(property::PRODUCER_GROUP).map(String::as_str), Some(GROUP));

        // Nobody answers: after transactionCheckMax (2) rounds it is parked, never visible.
        let deadline = Instant::now() + Duration::from_secs(15);
        while pending(&g, leader).await > 0 {
            assert!(Instant::now() < deadline, "an undecided transaction was never parked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(checks.lock().unwrap().len(), 2, "transactionCheckMax 2 check-backs");
        let parked = pull_messages(&p, raftmq_raft::types::TRANS_CHECK_MAX_TIME_TOPIC, 0).await;
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].body, b"never decided");
        assert_eq!(parked[0].properties.get(property::REAL_TOPIC).map(String::as_str), Some(TOPIC));
        assert_eq!(pull_messages(&p, TOPIC, 3).await.len(), 0);
        g.shutdown().await;
    });
}

#[test]
fn a_new_leader_resumes_check_backs_and_commits_the_answer_once() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with("transactionTimeOut = 1500\ntransactionCheckInterval = 60000\n").await;
        let old = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(old).await;
        crate::common::send(&c, TOPIC, 0, b"creates the topic").await.expect("plain send");
        let half = send_half(&c, 1, b"decided by check-back", "7F000001TXN000000000000000000005").await;
        // Producers heartbeat every broker of the group: connect one to each follower.
        let mut conns = Vec::new();
        for i in (0..3).filter(|i| *i != old) {
            conns.push((i, producer(&g, i, &format!("10.0.0.{i}@p")).await));
        }
        g.brokers[old].shutdown().await;
        let new = g.wait_leader(Some(old), Duration::from_secs(20)).await;
        let (p, checks) = &conns.iter().find(|(i, _)| *i == new).expect("a producer on the new leader").1;
        let check = wait_for("a check-back from the new leader", Duration::from_secs(15), || checks.lock().unwrap().first().cloned()).await;
        let h = CheckTransactionStateRequestHeader::from_ext_fields(&check.ext_fields).expect("39 header");
        assert_eq!(h.commit_log_offset, half.commit_log_offset, "the new leader checks the same half message");
        // The producer answers twice (a duplicated oneway): committed once.
        let answer = Half { queue_offset: h.tran_state_table_offset, ..half.clone() };
        let cmd =
            RemotingCommand::request(RequestCode::END_TRANSACTION, 0).with_header(&end_header(&answer, transaction_type::COMMIT, true));
        p.invoke_oneway(cmd.clone()).await.expect("37");
        p.invoke_oneway(cmd).await.expect("37");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = pull_messages(p, TOPIC, 1).await;
            if !got.is_empty() {
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].body, b"decided by check-back");
                break;
            }
            assert!(Instant::now() < deadline, "the check-back answer was not committed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pull_messages(p, TOPIC, 1).await.len(), 1, "the duplicated answer committed twice");
        assert_eq!(pending(&g, new).await, 0);
        g.shutdown().await;
    });
}

#[test]
fn a_retried_send_gets_the_original_result_and_stores_nothing_also_on_a_new_leader() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let old = g.wait_leader(None, Duration::from_secs(20)).await;
        wait_for("the de-duplication window", Duration::from_secs(10), || {
            (g.brokers[old].node().state().with_metadata(|m| m.state.dedup.settings().window_ms) > 0).then_some(())
        })
        .await;
        let c = g.client(old).await;
        crate::common::send(&c, TOPIC, 0, b"creates the topic").await.expect("plain send");
        let keyed =
            |queue: i32, uniq: &str| send_request(TOPIC, queue, b"pay 10 EUR", &[(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, uniq)], 0);
        let first = c.invoke(keyed(1, "UNIQ-A"), TIMEOUT).await.expect("send");
        let first: SendMessageResponseHeader = first.decode_header().expect("header");
        // The retry picks the next queue, as clients do: answered with the original's queue and offset.
        let retry = c.invoke(keyed(2, "UNIQ-A"), TIMEOUT).await.expect("retry");
        assert_eq!(retry.code, ResponseCode::SUCCESS.0);
        let retry: SendMessageResponseHeader = retry.decode_header().expect("header");
        assert_eq!((retry.msg_id.as_str(), retry.queue_id, retry.queue_offset), (first.msg_id.as_str(), 1, first.queue_offset));
        assert_eq!(pull(&c, TOPIC, 2, 0).await.0, ResponseCode::PULL_NOT_FOUND.0, "the retry was stored");
        // Another id is a new message.
        let other = c.invoke(keyed(1, "UNIQ-B"), TIMEOUT).await.expect("send");
        assert_eq!(other.decode_header::<SendMessageResponseHeader>().expect("header").queue_offset, first.queue_offset + 1);

        // The leader goes away; the retry lands on the new one and still finds the original.
        g.brokers[old].shutdown().await;
        let new = g.wait_leader(Some(old), Duration::from_secs(20)).await;
        let n = g.client(new).await;
        let again = n.invoke(keyed(3, "UNIQ-A"), TIMEOUT).await.expect("retry");
        assert_eq!(again.code, ResponseCode::SUCCESS.0, "{:?}", again.remark);
        let again: SendMessageResponseHeader = again.decode_header().expect("header");
        assert_eq!((again.msg_id.as_str(), again.queue_id, again.queue_offset), (first.msg_id.as_str(), 1, first.queue_offset));
        assert_eq!(pull(&n, TOPIC, 3, 0).await.0, ResponseCode::PULL_NOT_FOUND.0);
        let answered = g.brokers[new].node().state().with_metadata(|m| m.state.dedup.len());
        assert!(answered >= 2, "{answered} keys in the window");
        g.shutdown().await;
    });
}

#[test]
fn half_sends_past_transaction_pending_max_are_refused_as_not_stored() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with("transactionPendingMax = 2\n").await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        crate::common::send(&c, TOPIC, 0, b"creates the topic").await.expect("plain send");
        let a = send_half(&c, 0, b"a", "UNIQ-PENDING-A").await;
        send_half(&c, 0, b"b", "UNIQ-PENDING-B").await;
        let (code, remark) = send_cmd(&c, half_request(0, b"c", "UNIQ-PENDING-C", &[])).await.expect_err("a third pending transaction");
        assert_eq!(code, ResponseCode::SERVICE_NOT_AVAILABLE.0, "{remark}");
        assert!(remark.contains("transactionPendingMax 2") && remark.starts_with("not stored"), "{remark}");
        // Plain sends go on; ending one transaction makes room.
        crate::common::send(&c, TOPIC, 0, b"plain").await.expect("plain send at the limit");
        let (code, remark) = end(&c, &end_header(&a, transaction_type::ROLLBACK, false)).await;
        assert_eq!(code, ResponseCode::SUCCESS.0, "{remark}");
        send_half(&c, 0, b"c", "UNIQ-PENDING-C").await;
        assert_eq!(pending(&g, leader).await, 2);
        g.shutdown().await;
    });
}
