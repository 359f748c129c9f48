//! Multi-process tests of SQL92 property filters (`MessageSelector.bySql`) against real `raftmq` processes
//! (nameserver and one broker node on loopback, `tests/common`):
//!
//! - `sql92_pulls_carry_only_matching_messages`: a PULL_MESSAGE with expressionType SQL92 returns exactly the
//!   messages a direct predicate selects, and its response bodies are exactly those messages' bytes (fewer
//!   than a `*` pull's); a pull that finds no match within `pullFilterScanMax` answers
//!   PULL_RETRY_IMMEDIATELY past the examined messages; a bad expression gets SUBSCRIPTION_PARSE_FAILED (23)
//!   with its byte position on pulls, heartbeats and CHECK_CLIENT_CONFIG; a heartbeat's SQL92 subscription
//!   filters pulls that carry none, and GET_CONSUMER_CONNECTION_LIST reports it as SQL92.
//! - `property_filter_off_refuses_sql92_as_rocketmq`: `enablePropertyFilter = false` answers SQL92 pulls and
//!   CHECK_CLIENT_CONFIG with RocketMQ's SYSTEM_ERROR remark; tag pulls still work.
//! - `native_consumers_and_the_cli_select_by_sql`: `raftmq produce --property`, `raftmq consume --sql`, and a
//!   push consumer with `MessageSelector::sql` get exactly the matching messages.
//! - `rare_messages_on_a_busy_queue_cost_only_their_own_bytes`: a consumer of 1 % of a busy queue pulls, per
//!   delivered message, the bytes of about one message with a tag filter and with a SQL92 filter, against
//!   the whole queue's bytes with `*` (figures printed; docs/benchmarks.md).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftmq_client::{ClientConfig, ConsumeConcurrentlyStatus, ConsumeFrom, MessageExt, MessageSelector, PushConsumer, PushConsumerOptions};
use raftmq_net::RemotingClient;
use raftmq_remoting::body::{
    decode_json_body, encode_json_body, CheckClientRequestBody, ConsumerConnection, ConsumerData, HeartbeatData, SubscriptionData,
};
use raftmq_remoting::header::{pull_sys_flag, ConsumerGroupHeader, PullMessageRequestHeader, PullMessageResponseHeader};
use raftmq_remoting::message::StoredMessages;
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One cluster at a time on small machines.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One pull's outcome: code, remark, nextBeginOffset, body bytes, and the (offset, body, stored size) of
/// each message.
struct Pull {
    code: i32,
    remark: String,
    next: i64,
    bytes: usize,
    msgs: Vec<(i64, String, usize)>,
}

/// A PULL_MESSAGE of `queue_id` from `offset`: with `sub` = (expression, type) it carries a subscription,
/// without it the broker uses the group's heartbeat subscription.
async fn pull(c: &RemotingClient, group: &str, topic: &str, offset: i64, sub: Option<(&str, &str)>) -> Pull {
    let h = PullMessageRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id: 0,
        queue_offset: offset,
        max_msg_nums: 32,
        sys_flag: if sub.is_some() { pull_sys_flag::SUBSCRIPTION } else { 0 },
        subscription: sub.map(|s| s.0.to_string()),
        expression_type: sub.map(|s| s.1.to_string()),
        ..Default::default()
    };
    let r = c.invoke(RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h), TIMEOUT).await.expect("pull");
    let next = r.decode_header::<PullMessageResponseHeader>().map(|h| h.next_begin_offset).unwrap_or(-1);
    let msgs = StoredMessages::new(&r.body)
        .map(|m| m.expect("stored message"))
        .map(|m| (m.queue_offset, String::from_utf8_lossy(m.body).into_owned(), m.store_size as usize))
        .collect();
    Pull { code: r.code, remark: r.remark.clone().unwrap_or_default(), next, bytes: r.body.len(), msgs }
}

/// Pulls the whole queue from 0 with `sub`; returns the messages, the body bytes and the number of pulls.
async fn pull_through(
    c: &RemotingClient,
    group: &str,
    topic: &str,
    end: i64,
    sub: Option<(&str, &str)>,
) -> (Vec<(i64, String, usize)>, usize, usize) {
    let (mut offset, mut msgs, mut bytes, mut pulls) = (0, Vec::new(), 0, 0);
    while offset < end {
        let p = pull(c, group, topic, offset, sub).await;
        assert!(
            p.code == ResponseCode::SUCCESS.0 || p.code == ResponseCode::PULL_RETRY_IMMEDIATELY.0,
            "pull at {offset}: {} {}",
            p.code,
            p.remark
        );
        assert!(p.next > offset, "nextBeginOffset {} does not advance past {offset}", p.next);
        offset = p.next;
        bytes += p.bytes;
        pulls += 1;
        msgs.extend(p.msgs);
    }
    (msgs, bytes, pulls)
}

/// Sends `n` messages to queue 0 of `topic`, message `i` with the properties `props(i)`.
async fn fill(c: &RemotingClient, topic: &str, n: i64, body: impl Fn(i64) -> String, props: impl Fn(i64) -> Vec<(String, String)>) {
    for i in 0..n {
        let p = props(i);
        let pairs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let off = send_cmd(c, send_request_with(topic, 0, body(i).as_bytes(), &pairs)).await.expect("send");
        assert_eq!(off, i);
    }
}

fn props(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

async fn heartbeat(c: &RemotingClient, group: &str, topic: &str, expression: &str, expression_type: &str) -> (i32, String) {
    let hb = HeartbeatData {
        client_id: format!("127.0.0.1@{group}"),
        consumer_data_set: vec![ConsumerData {
            group_name: group.into(),
            subscription_data_set: vec![SubscriptionData {
                topic: topic.into(),
                sub_string: expression.into(),
                sub_version: 1,
                expression_type: expression_type.into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let req = RemotingCommand::request(RequestCode::HEART_BEAT, 0).with_body(encode_json_body(&hb).unwrap());
    let r = c.invoke(req, TIMEOUT).await.expect("heartbeat");
    (r.code, r.remark.unwrap_or_default())
}

async fn check_client(c: &RemotingClient, topic: &str, expression: &str, expression_type: &str) -> (i32, String) {
    let body = CheckClientRequestBody {
        client_id: "127.0.0.1@check".into(),
        group: "g_check".into(),
        subscription_data: Some(SubscriptionData {
            topic: topic.into(),
            sub_string: expression.into(),
            expression_type: expression_type.into(),
            ..Default::default()
        }),
    };
    let req = RemotingCommand::request(RequestCode::CHECK_CLIENT_CONFIG, 0).with_body(encode_json_body(&body).unwrap());
    let r = c.invoke(req, TIMEOUT).await.expect("check client config");
    (r.code, r.remark.unwrap_or_default())
}

async fn leader_client(cluster: &Cluster) -> RemotingClient {
    let leader = cluster.leader(Duration::from_secs(30)).await;
    client(&cluster.node(leader).client_addr).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql92_pulls_carry_only_matching_messages() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(1, None, "pullFilterScanMax = 64\n").await;
    let c = leader_client(&cluster).await;
    const T: &str = "SQL_T";
    const N: i64 = 200;
    let tag = |i: i64| if i % 2 == 0 { "a" } else { "b" };
    let region = |i: i64| if i % 3 == 0 { "east" } else { "west" };
    fill(
        &c,
        T,
        N,
        |i| format!("m{i}"),
        |i| {
            let mut p = props(&[("TAGS", tag(i).to_string()), ("region", region(i).to_string())]);
            if i % 10 != 0 {
                p.push(("n".into(), i.to_string()));
            }
            p
        },
    )
    .await;

    // The broker's selection is exactly a direct predicate's, and only those messages' bytes travel.
    let sql = "n >= 100 AND TAGS IN ('a') AND region = 'east' OR n IS NULL AND region <> 'east'";
    let want: Vec<i64> = (0..N)
        .filter(|i| {
            let n = (i % 10 != 0).then_some(*i);
            (n.is_some_and(|n| n >= 100) && tag(*i) == "a" && region(*i) == "east") || (n.is_none() && region(*i) != "east")
        })
        .collect();
    let (all, all_bytes, _) = pull_through(&c, "g_all", T, N, Some(("*", "TAG"))).await;
    assert_eq!(all.len() as i64, N);
    let (got, got_bytes, pulls) = pull_through(&c, "g_sql", T, N, Some((sql, "SQL92"))).await;
    let offsets: Vec<i64> = got.iter().map(|m| m.0).collect();
    assert_eq!(offsets, want, "the SQL92 selection");
    assert!(got.iter().all(|(o, body, _)| *body == format!("m{o}")));
    // The filtered pulls carried exactly the matching messages' bytes (sizes from the `*` pull) and nothing else.
    assert_eq!(all.iter().map(|m| m.2).sum::<usize>(), all_bytes);
    let want_bytes: usize = all.iter().filter(|m| want.contains(&m.0)).map(|m| m.2).sum();
    assert_eq!(got_bytes, want_bytes, "bytes of the SQL92 pulls");
    println!("SQL92 pulls: {} of {N} messages in {pulls} pulls, {got_bytes} body bytes (all messages: {all_bytes})", want.len());

    // No match among the first pullFilterScanMax (64) messages examined: PULL_RETRY_IMMEDIATELY past them.
    let p = pull(&c, "g_none", T, 0, Some(("n > 100000", "SQL92"))).await;
    assert_eq!((p.code, p.next, p.bytes), (ResponseCode::PULL_RETRY_IMMEDIATELY.0, 64, 0), "{}", p.remark);
    let p = pull(&c, "g_none", T, 190, Some(("n > 100000", "SQL92"))).await;
    assert_eq!((p.code, p.next), (ResponseCode::PULL_RETRY_IMMEDIATELY.0, N), "the queue's end comes first");

    // A bad expression: 23 with the byte position, on pulls, CHECK_CLIENT_CONFIG and heartbeats.
    let p = pull(&c, "g_bad", T, 0, Some(("n > 5 AND", "SQL92"))).await;
    assert_eq!(p.code, ResponseCode::SUBSCRIPTION_PARSE_FAILED.0, "{}", p.remark);
    assert!(p.remark.contains("at byte 9"), "{}", p.remark);
    let (code, remark) = check_client(&c, T, "n >> 5", "SQL92").await;
    assert_eq!(code, ResponseCode::SUBSCRIPTION_PARSE_FAILED.0, "{remark}");
    assert!(remark.contains("at byte 3"), "{remark}");
    assert_eq!(check_client(&c, T, "n > 5", "SQL92").await.0, ResponseCode::SUCCESS.0);
    assert_eq!(check_client(&c, T, "a || b", "TAG").await.0, ResponseCode::SUCCESS.0);
    let (code, remark) = heartbeat(&c, "g_hb_bad", T, "region = 'east", "SQL92").await;
    assert_eq!(code, ResponseCode::SUBSCRIPTION_PARSE_FAILED.0, "{remark}");
    assert!(remark.contains("g_hb_bad") && remark.contains(T) && remark.contains("at byte 9"), "{remark}");
    let p = pull(&c, "g_hb_bad", T, 0, None).await;
    assert_eq!(p.code, ResponseCode::SUBSCRIPTION_PARSE_FAILED.0, "a pull relying on the refused subscription: {}", p.remark);

    // A heartbeat's SQL92 subscription filters pulls that carry no subscription.
    assert_eq!(heartbeat(&c, "g_hb", T, "region = 'east' AND n < 30", "SQL92").await.0, ResponseCode::SUCCESS.0);
    let (got, _, _) = pull_through(&c, "g_hb", T, N, None).await;
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), vec![3, 6, 9, 12, 15, 18, 21, 24, 27]);
    // GET_CONSUMER_CONNECTION_LIST reports it as SQL92, without tags.
    let ask = RemotingCommand::request(RequestCode::GET_CONSUMER_CONNECTION_LIST, 0)
        .with_header(&ConsumerGroupHeader { consumer_group: "g_hb".into() });
    let r = c.invoke(ask, TIMEOUT).await.expect("203");
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "{:?}", r.remark);
    let conn: ConsumerConnection = decode_json_body("ConsumerConnection", &r.body).expect("body");
    let sub = &conn.subscription_table[T];
    assert_eq!((sub.expression_type.as_str(), sub.sub_string.as_str()), ("SQL92", "region = 'east' AND n < 30"));
    assert!(sub.tags_set.is_empty() && sub.code_set.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_filter_off_refuses_sql92_as_rocketmq() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(1, None, "enablePropertyFilter = false\n").await;
    let c = leader_client(&cluster).await;
    const T: &str = "SQL_OFF";
    fill(&c, T, 4, |i| format!("m{i}"), |i| props(&[("TAGS", if i < 2 { "a" } else { "b" }.to_string())])).await;
    let refusal = "The broker does not support consumer to filter message by SQL92";
    let p = pull(&c, "g", T, 0, Some(("TAGS = 'a'", "SQL92"))).await;
    assert_eq!((p.code, p.remark.as_str()), (ResponseCode::SYSTEM_ERROR.0, refusal));
    assert_eq!(check_client(&c, T, "TAGS = 'a'", "SQL92").await, (ResponseCode::SYSTEM_ERROR.0, refusal.to_string()));
    let (got, _, _) = pull_through(&c, "g", T, 4, Some(("a", "TAG"))).await;
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), vec![0, 1], "tag filters work as before");
}

/// Runs the `raftmq` binary; returns (success, stdout).
async fn raftmq(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(bin()).args(args).output().await.expect("run raftmq");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_consumers_and_the_cli_select_by_sql() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1).await;
    const T: &str = "SQL_CLI";
    let ns = cluster.namesrv.as_str();
    let (ok, out) = raftmq(&[
        "produce",
        "--namesrv",
        ns,
        "--topic",
        T,
        "--count",
        "20",
        "--tag",
        "x",
        "--property",
        "n={i}",
        "--property",
        "kind=k{i}",
    ])
    .await;
    assert!(ok, "{out}");
    // `n >= 15` selects messages 15..=19 wherever they went.
    let (ok, out) =
        raftmq(&["consume", "--namesrv", ns, "--topic", T, "--group", "cli_sql", "--sql", "n >= 15 AND TAGS = 'x'", "--count", "5"]).await;
    assert!(ok, "{out}");
    let mut bodies: Vec<String> = out.lines().filter_map(|l| l.split("body=").nth(1)).map(String::from).collect();
    bodies.sort();
    assert_eq!(bodies, (15..20).map(|i| format!("message {i}")).collect::<Vec<_>>(), "{out}");
    // A bad expression is refused by the client with its position, before anything is sent.
    let (ok, out) =
        raftmq(&["consume", "--namesrv", ns, "--topic", T, "--group", "cli_bad", "--sql", "n >= ", "--timeout-secs", "2"]).await;
    assert!(!ok && out.contains("at byte 5"), "{out}");

    // A push consumer with a SQL92 selector gets exactly kind IN ('k3', 'k7') OR n BETWEEN 10 AND 11.
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&got);
    let opts = PushConsumerOptions::new("push_sql")
        .subscribe(T, MessageSelector::sql("kind IN ('k3', 'k7') OR n BETWEEN 10 AND 11"))
        .with_consume_from(ConsumeFrom::FirstOffset);
    let listener = move |msgs: Vec<MessageExt>, _ctx| {
        let sink = Arc::clone(&sink);
        async move {
            sink.lock().unwrap().extend(msgs.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
            ConsumeConcurrentlyStatus::ConsumeSuccess
        }
    };
    let consumer =
        PushConsumer::start_concurrently(ClientConfig::new(ns).with_instance_name("push_sql"), opts, listener).await.expect("push");
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give stray deliveries a moment to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    consumer.shutdown().await;
    let mut got = got.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec!["message 10", "message 11", "message 3", "message 7"]);
    // The push consumer's heartbeat registered the selector as SQL92.
    let err = PushConsumer::start_concurrently(
        ClientConfig::new(ns).with_instance_name("push_bad"),
        PushConsumerOptions::new("push_bad").subscribe(T, MessageSelector::sql("n IN (1)")),
        |_: Vec<MessageExt>, _| async { ConsumeConcurrentlyStatus::ConsumeSuccess },
    )
    .await
    .err()
    .expect("a bad selector is refused at start");
    assert!(err.to_string().contains("string literal"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rare_messages_on_a_busy_queue_cost_only_their_own_bytes() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1).await;
    let c = leader_client(&cluster).await;
    const T: &str = "BUSY";
    const N: i64 = 1000;
    let rare = |i: i64| i % 100 == 37;
    let body = |i: i64| format!("{i:06}{}", "x".repeat(1018));
    fill(&c, T, N, body, |i| {
        props(&[
            ("TAGS", if rare(i) { "rare" } else { "common" }.to_string()),
            ("kind", if rare(i) { "rare" } else { "common" }.to_string()),
        ])
    })
    .await;
    let delivered = (0..N).filter(|i| rare(*i)).count();

    let mut rows = Vec::new();
    for (name, sub) in [
        ("everything (`*`), client keeps the rare ones", ("*", "TAG")),
        ("tag filter `rare`", ("rare", "TAG")),
        ("SQL92 `kind = 'rare'`", ("kind = 'rare'", "SQL92")),
    ] {
        let (msgs, bytes, pulls) = pull_through(&c, "g_busy", T, N, Some(sub)).await;
        let kept = msgs.iter().filter(|(o, _, _)| rare(*o)).count();
        assert_eq!(kept, delivered, "{name}");
        println!(
            "rare consumer, {name}: {delivered} delivered of {N}; {pulls} pulls, {} messages and {bytes} body bytes pulled = {} bytes per delivered message",
            msgs.len(),
            bytes / delivered
        );
        rows.push((name, bytes, pulls, msgs));
    }
    assert_eq!(rows[0].3.len() as i64, N, "`*` pulls the whole queue");
    let rare_bytes: usize = rows[0].3.iter().filter(|m| rare(m.0)).map(|m| m.2).sum();
    for (name, bytes, _, msgs) in &rows[1..] {
        assert_eq!(msgs.len(), delivered, "{name}: only the rare messages travel");
        assert_eq!(*bytes, rare_bytes, "{name}: the rare messages' own bytes");
    }
}
