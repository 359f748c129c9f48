//! Scheduled messages on real processes: delay levels and timers sent while the leader is killed with
//! SIGKILL and a follower restarts. Every acknowledged scheduled message is delivered into its queue exactly
//! once, on every member, never before its due time; a message whose send had no answer at most once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::header::{PullMessageRequestHeader, PullMessageResponseHeader, SendMessageRequestHeader, SendMessageResponseHeader};
use raftmq_remoting::message::{encode_properties, property, StoredMessages};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const TOPIC: &str = "Sched";

fn scheduled_send(body: &str, prop: (&str, &str)) -> RemotingCommand {
    let mut props = String::new();
    encode_properties([(property::WAIT_STORE_MSG_OK, "true"), prop], &mut props).expect("properties");
    let h = SendMessageRequestHeader {
        producer_group: "test_producer".into(),
        topic: TOPIC.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 0,
        born_timestamp: now_ms(),
        properties: Some(props),
        ..Default::default()
    };
    let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(body.as_bytes().to_vec());
    h.write_ext_fields_v2(&mut cmd.ext_fields);
    cmd
}

/// Every message of queue 0 of `TOPIC` on the member at `addr`: body → store timestamps (one per copy).
async fn delivered(addr: &str) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let Some(c) = client(addr).await else { return out };
    let mut offset = 0;
    loop {
        let h = PullMessageRequestHeader {
            consumer_group: "test_consumer".into(),
            topic: TOPIC.into(),
            queue_id: 0,
            queue_offset: offset,
            max_msg_nums: 32,
            subscription: Some("*".into()),
            ..Default::default()
        };
        let Ok(r) = c.invoke(RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h), TIMEOUT).await else { return out };
        if r.code != ResponseCode::SUCCESS.0 {
            return out;
        }
        let next = r.decode_header::<PullMessageResponseHeader>().expect("pull header").next_begin_offset;
        for m in StoredMessages::new(&r.body).map(|m| m.expect("stored message")) {
            out.entry(String::from_utf8_lossy(m.body).to_string()).or_default().push(m.store_timestamp);
        }
        offset = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_are_exact_across_a_leader_kill_and_a_follower_restart() {
    let mut cluster = Cluster::prepare(3, "messageDelayLevel = \"1s 2s 3s\"\n");
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = cluster.leader(Duration::from_secs(20)).await;
        let s = node_status(&cluster.node(l).client_addr).await.unwrap_or_default();
        if s["schedule"]["delayLevels"] == "1s 2s 3s" {
            break;
        }
        assert!(Instant::now() < deadline, "the configured delay levels never took effect: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // body → (earliest due by the harness clock, acknowledged?)
    let mut sent: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    let total = 80;
    let mut killed = None;
    for i in 0..total {
        if i == total / 3 {
            let l = cluster.leader(Duration::from_secs(20)).await;
            cluster.kill(l);
            killed = Some(l);
        }
        if i == 2 * total / 3 {
            // The killed leader comes back, and another follower restarts.
            let k = killed.expect("killed");
            cluster.start_node(k);
            let l = cluster.leader(Duration::from_secs(20)).await;
            let f = (1..=3).find(|id| *id != l && *id != k).expect("a follower");
            cluster.kill(f);
            cluster.start_node(f);
        }
        let body = format!("s{i}");
        let (delay_ms, prop_value, prop) = match i % 4 {
            0 => (1000, "1".to_string(), property::DELAY_TIME_LEVEL),
            1 => (3000, "3".to_string(), property::DELAY_TIME_LEVEL),
            2 => (1500 + 37 * i as i64, (1500 + 37 * i).to_string(), property::TIMER_DELAY_MS),
            _ => (2000, "2".to_string(), property::TIMER_DELAY_SEC),
        };
        let mut acked = false;
        let started = now_ms();
        let leader = cluster.leader(Duration::from_secs(20)).await;
        if let Some(c) = client(&cluster.node(leader).client_addr).await {
            if let Ok(r) = c.invoke(scheduled_send(&body, (prop, &prop_value)), TIMEOUT).await {
                if r.code == ResponseCode::SUCCESS.0 {
                    r.decode_header::<SendMessageResponseHeader>().expect("send header");
                    acked = true;
                }
            }
        }
        sent.insert(body, (started + delay_ms, acked));
    }
    let acked = sent.values().filter(|(_, a)| *a).count();
    assert!(acked >= total * 3 / 4, "only {acked} of {total} scheduled sends acknowledged");

    // Everything is due 3 s after the last send at the latest; allow for an election.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let mut views = Vec::new();
    for id in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            let got = delivered(&cluster.node(id).client_addr).await;
            let missing = sent.iter().filter(|(b, (_, a))| *a && !got.contains_key(*b)).count();
            if missing == 0 || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        views.push((id, got));
    }
    let mut lateness = Vec::new();
    for (id, got) in &views {
        for (body, (due, was_acked)) in &sent {
            let copies = got.get(body).map_or(0, Vec::len);
            if *was_acked {
                assert_eq!(copies, 1, "n{id}: acknowledged {body} delivered {copies} times (leader n{leader})");
            } else {
                assert!(copies <= 1, "n{id}: unacknowledged {body} delivered {copies} times");
            }
            if let Some(ts) = got.get(body).and_then(|v| v.first()) {
                // The harness clock is the brokers' (one machine); `due` was taken before the send.
                assert!(*ts >= *due, "n{id}: {body} stamped {} ms before it was due", due - ts);
                lateness.push(ts - due);
            }
        }
        assert!(got.keys().all(|b| sent.contains_key(b)), "n{id}: a message nobody sent");
    }
    lateness.sort_unstable();
    println!(
        "acked {acked}/{total}; stamp lateness vs. the harness's due time (ms): p50 {} p99 {} max {}",
        lateness[lateness.len() / 2],
        lateness[lateness.len() * 99 / 100],
        lateness[lateness.len() - 1]
    );
    assert_eq!(views[0].1, views[1].1, "n1 and n2 differ");
    assert_eq!(views[1].1, views[2].1, "n2 and n3 differ");
}
