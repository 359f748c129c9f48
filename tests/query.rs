//! Finding messages on real processes: messages sent with keys through the Rust client are found again by
//! key, by client msgId (`UNIQ_KEY`) and by offsetMsgId — through the client's `Admin` API and through
//! `raftmq admin message` — before and after every node of the group is killed with SIGKILL and restarted
//! (the index is rebuilt or caught up from its last durable position). Index files are kept small so the
//! messages span several sealed files. Also: any member answers (the index is node-local), and a query for
//! nothing gets 22 QUERY_NOT_FOUND, a view of a bad offset 1 SYSTEM_ERROR, each with its remark.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use raftmq_client::{Admin, ClientConfig, Message, Producer, ProducerOptions, SendResult};
use raftmq_remoting::header::{QueryMessageRequestHeader, ViewMessageRequestHeader, UNIQUE_KEY_QUERY_FIELD};
use raftmq_remoting::message::{decode_offset_msg_id, StoredMessages};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const TOPIC: &str = "QueryTopic";
const MESSAGES: usize = 60;
const KEYS: usize = 6;

/// `raftmq admin --namesrv … message <args>`: its stdout lines, or its stderr on failure.
fn cli_message(namesrv: &str, args: &[&str]) -> Result<Vec<String>, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(["admin", "--namesrv", namesrv, "message"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect())
}

fn query_cmd(key: &str, uniq: bool) -> RemotingCommand {
    let h = QueryMessageRequestHeader { topic: TOPIC.into(), key: key.into(), max_num: 64, begin_timestamp: 0, end_timestamp: i64::MAX };
    let cmd = RemotingCommand::request(RequestCode::QUERY_MESSAGE, 0).with_header(&h);
    if uniq {
        cmd.with_ext(UNIQUE_KEY_QUERY_FIELD, "true")
    } else {
        cmd
    }
}

/// Checks every way of finding the sent messages; `when` names the phase in failures.
async fn find_everything(cluster: &Cluster, admin: &Admin, sent: &[(SendResult, usize)], when: &str) {
    for k in 0..KEYS {
        let key = format!("order-{k}");
        let want: BTreeSet<String> = sent.iter().filter(|(_, i)| i % KEYS == k).map(|(r, _)| r.msg_id.clone()).collect();
        let found = admin.query_message_by_key(TOPIC, &key, 64, 0, i64::MAX).await.unwrap_or_else(|e| panic!("{when}: query {key}: {e}"));
        let got: BTreeSet<String> = found.iter().map(|m| m.msg_id.clone()).collect();
        assert_eq!(got, want, "{when}: messages with key {key}");
        for m in &found {
            assert!(m.keys().contains(&key.as_str()), "{when}: {m:?} lacks key {key}");
            assert_eq!(m.topic, TOPIC);
        }
    }
    // The shared key finds all of them, capped at 64 per group.
    let all = admin.query_message_by_key(TOPIC, "common", 64, 0, i64::MAX).await.expect("common key");
    assert_eq!(all.len(), MESSAGES, "{when}: key common");
    // A time window that ends before the first store time finds nothing.
    let first_stored = all.iter().map(|m| m.store_timestamp).min().expect("some");
    assert!(admin.query_message_by_key(TOPIC, "common", 64, 0, first_stored - 1).await.expect("window").is_empty(), "{when}");

    for (r, i) in sent.iter().step_by(7) {
        let by_id = admin.query_message_by_uniq_key(TOPIC, &r.msg_id).await.expect("by msgId");
        assert_eq!(by_id.len(), 1, "{when}: msgId {}", r.msg_id);
        let m = &by_id[0];
        assert_eq!((m.queue_id, m.queue_offset), (r.queue.queue_id, r.queue_offset), "{when}: where msgId {} is", r.msg_id);
        assert_eq!(&m.body[..], format!("body-{i}").as_bytes());
        assert_eq!(m.offset_msg_id, r.offset_msg_id);
        let viewed = admin.view_message(&r.offset_msg_id).await.expect("by offsetMsgId");
        assert_eq!((viewed.msg_id.as_str(), viewed.queue_offset), (r.msg_id.as_str(), r.queue_offset), "{when}: view {}", r.offset_msg_id);
        assert_eq!(&viewed.body[..], format!("body-{i}").as_bytes());

        // The CLI: one line per message, naming its ids.
        let lines = cli_message(&cluster.namesrv, &["--id", &r.msg_id, "--topic", TOPIC, "--body"]).expect("cli --id msgId");
        assert_eq!(lines.len(), 1, "{when}: {lines:?}");
        assert!(
            lines[0].contains(&format!("msgId={}", r.msg_id)) && lines[0].contains(&format!("offsetMsgId={}", r.offset_msg_id)),
            "{lines:?}"
        );
        assert!(lines[0].contains(&format!("queueOffset={}", r.queue_offset)) && lines[0].contains(&format!("body=body-{i}")), "{lines:?}");
        let lines = cli_message(&cluster.namesrv, &["--id", &r.offset_msg_id]).expect("cli --id offsetMsgId");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains(&format!("msgId={}", r.msg_id)) && lines[0].contains(&format!("topic={TOPIC}")), "{lines:?}");
        assert!(!lines[0].contains("body="), "no --body: {lines:?}");
    }
    let lines = cli_message(&cluster.namesrv, &["--key", "order-1", "--topic", TOPIC, "--since", "1h"]).expect("cli --key");
    assert_eq!(lines.len(), MESSAGES / KEYS, "{when}: {lines:?}");
    assert!(lines.iter().all(|l| l.contains("keys=order-1,common") && l.contains("storeTime=20")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_by_key_msg_id_and_offset_msg_id_across_a_full_restart() {
    // 64 units per file, 16 slots: 60 messages × 3 keys make three sealed files and an active one.
    let mut cluster = Cluster::prepare(3, "indexSlotsMax = 16\nindexUnitsMax = 64\nindexFilesMax = 100\n");
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let cfg = ClientConfig::new(&cluster.namesrv).with_instance_name("query-test");
    let producer = Producer::start(cfg.clone(), ProducerOptions::new("pg_query")).await.expect("producer");
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let m = Message::new(TOPIC, format!("body-{i}")).with_tags("TagQ").with_keys([format!("order-{}", i % KEYS), "common".to_string()]);
        sent.push((producer.send(m).await.unwrap_or_else(|e| panic!("send {i}: {e}")), i));
    }
    producer.shutdown().await;
    let admin = Admin::start(cfg.clone()).await.expect("admin");
    find_everything(&cluster, &admin, &sent, "before the restart").await;

    // Any member answers from its own index and log.
    let (r, _) = &sent[5];
    for n in &cluster.nodes {
        let c = client(&n.client_addr).await.expect("connect");
        let resp = c.invoke(query_cmd(&r.msg_id, true), TIMEOUT).await.expect("query");
        assert_eq!(resp.code, ResponseCode::SUCCESS.0, "node {}: {:?}", n.id, resp.remark);
        let found: Vec<_> = StoredMessages::new(&resp.body).map(|m| m.expect("stored message").uniq_key().map(String::from)).collect();
        assert_eq!(found, vec![Some(r.msg_id.clone())], "node {}", n.id);
        let h = resp.ext_fields.get("indexLastUpdatePhyoffset").and_then(|v| v.parse::<i64>().ok()).expect("indexLastUpdatePhyoffset");
        assert!(h > 0, "node {}", n.id);
    }

    // Not found: 22 with a remark that names the key; a bad offset: 1 with RocketMQ's remark.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let c = client(&cluster.node(leader).client_addr).await.expect("connect");
    let resp = c.invoke(query_cmd("no-such-key", false), TIMEOUT).await.expect("query");
    assert_eq!(resp.code, ResponseCode::QUERY_NOT_FOUND.0);
    let remark = resp.remark.unwrap_or_default();
    assert!(remark.starts_with("can not find message, maybe time range not correct") && remark.contains("\"no-such-key\""), "{remark}");
    let view = |offset: i64| {
        RemotingCommand::request(RequestCode::VIEW_MESSAGE_BY_ID, 0).with_header(&ViewMessageRequestHeader { topic: None, offset })
    };
    let resp = c.invoke(view(123_456_789), TIMEOUT).await.expect("view");
    assert_eq!((resp.code, resp.remark.as_deref()), (ResponseCode::SYSTEM_ERROR.0, Some("can not find message by the offset, 123456789")));
    // An offset inside a message (not its start) is no message either; its start is.
    let start = decode_offset_msg_id(&sent[0].0.offset_msg_id).expect("offsetMsgId").commit_log_offset;
    let resp = c.invoke(view(start + 1), TIMEOUT).await.expect("view");
    assert_eq!(
        (resp.code, resp.remark),
        (ResponseCode::SYSTEM_ERROR.0, Some(format!("can not find message by the offset, {}", start + 1)))
    );
    let resp = c.invoke(view(start), TIMEOUT).await.expect("view");
    assert_eq!(resp.code, ResponseCode::SUCCESS.0);
    let viewed: Vec<_> = StoredMessages::new(&resp.body).map(|m| m.expect("stored message").physical_offset).collect();
    assert_eq!(viewed, vec![start]);
    let err = cli_message(&cluster.namesrv, &["--key", "no-such-key", "--topic", TOPIC]).expect_err("nothing found");
    assert!(err.contains("no message found"), "{err}");
    let err = cli_message(&cluster.namesrv, &["--id", "not-an-id"]).expect_err("bad id");
    assert!(err.contains("needs --topic"), "{err}");

    // Every node killed with SIGKILL, then restarted: each rebuilds or catches up its index from the log.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    find_everything(&cluster, &admin, &sent, "after killing and restarting every node").await;

    // At the limit: 70 messages carry `common`, a query returns at most QUERY_MESSAGES_MAX (64) of them.
    let producer = Producer::start(cfg.clone(), ProducerOptions::new("pg_query")).await.expect("producer");
    for i in MESSAGES..MESSAGES + 10 {
        producer.send(Message::new(TOPIC, format!("body-{i}")).with_keys(["common"])).await.expect("send");
    }
    producer.shutdown().await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let c = client(&cluster.node(leader).client_addr).await.expect("connect");
    let mut cmd = query_cmd("common", false);
    cmd.ext_fields.insert("maxNum".into(), "1000".into());
    let resp = c.invoke(cmd, TIMEOUT).await.expect("query");
    assert_eq!(resp.code, ResponseCode::SUCCESS.0, "{:?}", resp.remark);
    assert_eq!(StoredMessages::new(&resp.body).count(), 64, "maxNum is capped at 64");
    // Bad input: a missing key, a maxNum below 1.
    let mut cmd = query_cmd("common", false);
    cmd.ext_fields.remove("key");
    let resp = c.invoke(cmd, TIMEOUT).await.expect("query");
    assert_eq!(resp.code, ResponseCode::SYSTEM_ERROR.0);
    assert!(resp.remark.unwrap_or_default().contains("key"), "the remark names the missing field");
    let mut cmd = query_cmd("common", false);
    cmd.ext_fields.insert("maxNum".into(), "0".into());
    let resp = c.invoke(cmd, TIMEOUT).await.expect("query");
    assert_eq!((resp.code, resp.remark.as_deref()), (ResponseCode::SYSTEM_ERROR.0, Some("maxNum 0 must be at least 1")));
    admin.shutdown().await;
}
