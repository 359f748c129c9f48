//! Delay levels end to end in one process: a delayed send is staged, not readable in its real queue
//! before its due time, then delivered exactly once with its msgId, tags and properties (DELAY removed,
//! REAL_TOPIC/REAL_QID kept) — also when the leader that staged it is stopped before it is due. Levels
//! above the table clamp to the last; a malformed level and a delayed batch are refused with 13.

use std::time::{Duration, Instant};

use crate::common::{now_ms, pull_messages, send_back_request, send_cmd, send_request, wait_delay_levels, Group, Pulled, TIMEOUT, TOPIC};
use raftmq_net::RemotingClient;
use raftmq_remoting::message::property;
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

/// Level n waits n seconds (levels 1..=3).
const LEVELS: &str = "messageDelayLevel = \"1s 2s 3s\"\n";

/// Waits until the group's replicated level table is the test's (the first leader proposes it).
async fn wait_levels(g: &Group, leader: usize) {
    wait_delay_levels(g, leader, &[1000, 2000, 3000]).await
}

/// Polls the real queue until it holds `n` messages; returns them and when they were first all seen.
async fn wait_delivered(c: &RemotingClient, queue_id: i32, n: usize, within: Duration) -> (Vec<Pulled>, i64) {
    wait_in(c, TOPIC, queue_id, n, within).await
}

async fn wait_in(c: &RemotingClient, topic: &str, queue_id: i32, n: usize, within: Duration) -> (Vec<Pulled>, i64) {
    let deadline = Instant::now() + within;
    loop {
        let got = pull_messages(c, topic, queue_id).await;
        if got.len() >= n {
            return (got, now_ms());
        }
        assert!(Instant::now() < deadline, "{} of {n} delayed messages delivered", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_delayed_message_is_delivered_once_at_its_time_with_its_identity() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with(LEVELS).await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        wait_levels(&g, leader).await;
        let c = g.client(leader).await;
        let props = [
            (property::DELAY_TIME_LEVEL, "2"),
            (property::TAGS, "TagD"),
            (property::KEYS, "order-1"),
            (property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, "UNIQ-1"),
        ];
        let sent_at = now_ms();
        let (staged_offset, msg_id) = send_cmd(&c, send_request(TOPIC, 1, b"pay or cancel", &props, 0)).await.expect("delayed send");
        assert_eq!(staged_offset, 0, "the first message of level 2's schedule queue");
        assert!(!msg_id.is_empty());
        // Not readable in its real queue before it is due.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(pull_messages(&c, TOPIC, 1).await.is_empty(), "delivered before its 2 s delay");
        let (got, seen) = wait_delivered(&c, 1, 1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        let m = &got[0];
        assert_eq!((m.offset, m.body.as_slice()), (0, &b"pay or cancel"[..]));
        assert!(m.store_timestamp >= sent_at + 2000, "stamped {} ms after the send", m.store_timestamp - sent_at);
        assert!(seen - sent_at < 2000 + 1500, "delivered {} ms after the send", seen - sent_at);
        assert_eq!(m.properties.get(property::TAGS).map(String::as_str), Some("TagD"));
        assert_eq!(m.properties.get(property::KEYS).map(String::as_str), Some("order-1"));
        assert_eq!(m.properties.get(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).map(String::as_str), Some("UNIQ-1"));
        assert_eq!(m.properties.get(property::REAL_TOPIC).map(String::as_str), Some(TOPIC));
        assert_eq!(m.properties.get(property::REAL_QUEUE_ID).map(String::as_str), Some("1"));
        assert!(!m.properties.contains_key(property::DELAY_TIME_LEVEL), "{:?}", m.properties);
        // Exactly once, on every replica.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..3 {
            let ci = g.client(i).await;
            assert_eq!(pull_messages(&ci, TOPIC, 1).await.len(), 1, "node {i}");
        }
        // Level 99 clamps to the last level (3 s); a level that is no number is refused.
        let sent_at = now_ms();
        send_cmd(&c, send_request(TOPIC, 2, b"clamped", &[(property::DELAY_TIME_LEVEL, "99")], 0)).await.expect("clamped send");
        let (got, _) = wait_delivered(&c, 2, 1, Duration::from_secs(6)).await;
        assert!(got[0].store_timestamp >= sent_at + 3000, "level 99 waited {} ms", got[0].store_timestamp - sent_at);
        let (code, remark) =
            send_cmd(&c, send_request(TOPIC, 2, b"x", &[(property::DELAY_TIME_LEVEL, "soon")], 0)).await.expect_err("bad level");
        assert_eq!(code, ResponseCode::MESSAGE_ILLEGAL.0);
        assert!(remark.contains("DELAY") && remark.contains("soon"), "{remark}");
        g.shutdown().await;
    });
}

#[test]
fn scheduled_messages_survive_the_loss_of_the_leader_that_staged_them() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with(LEVELS).await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        wait_levels(&g, leader).await;
        let c = g.client(leader).await;
        let sent_at = now_ms();
        for i in 0..20 {
            let level = (i % 3 + 1).to_string();
            let body = format!("m{i}");
            send_cmd(&c, send_request(TOPIC, 3, body.as_bytes(), &[(property::DELAY_TIME_LEVEL, level.as_str())], 0)).await.expect("send");
        }
        // The staging leader stops before anything of level 2 or 3 is due.
        g.brokers[leader].shutdown().await;
        let next = g.wait_leader(Some(leader), Duration::from_secs(20)).await;
        let c = g.client(next).await;
        // Plain sends interleave with the deliveries in the same queue.
        for i in 0..10 {
            send_cmd(&c, send_request(TOPIC, 3, format!("plain{i}").as_bytes(), &[], 0)).await.expect("plain send");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let (got, _) = wait_delivered(&c, 3, 30, Duration::from_secs(15)).await;
        // Copies are stamped by the same store clock as sends, in log order: store times never decrease
        // along the queue, which SEARCH_OFFSET_BY_TIMESTAMP's binary search relies on.
        for w in got.windows(2) {
            assert!(
                w[0].store_timestamp <= w[1].store_timestamp,
                "store time goes back at offset {}: {:?}",
                w[1].offset,
                (w[0].store_timestamp, w[1].store_timestamp)
            );
        }
        let got: Vec<Pulled> = got.into_iter().filter(|m| !m.body.starts_with(b"plain")).collect();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let got_again: Vec<Pulled> = pull_messages(&c, TOPIC, 3).await.into_iter().filter(|m| !m.body.starts_with(b"plain")).collect();
        assert_eq!(
            got_again.len(),
            20,
            "a scheduled message was delivered twice: {:?}",
            got_again.iter().map(|m| String::from_utf8_lossy(&m.body).to_string()).collect::<Vec<_>>()
        );
        let mut bodies: Vec<String> = got.iter().map(|m| String::from_utf8_lossy(&m.body).to_string()).collect();
        bodies.sort();
        let mut want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        want.sort();
        assert_eq!(bodies, want);
        for m in &got {
            let i: i64 = String::from_utf8_lossy(&m.body)[1..].parse().unwrap();
            let delay = (i % 3 + 1) * 1000;
            assert!(
                m.store_timestamp >= sent_at + delay,
                "m{i} stamped {} ms after the sends, before its {delay} ms",
                m.store_timestamp - sent_at
            );
        }
        g.shutdown().await;
    });
}

#[test]
fn a_batch_with_a_delay_level_or_a_timer_is_refused() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        let mut body = Vec::new();
        for props in ["", "DELAY\u{1}2\u{2}"] {
            let m = raftmq_remoting::message::BatchMessage { flag: 0, body: b"b", properties: props };
            raftmq_remoting::message::encode_batch_message(&m, &mut body).expect("batch element");
        }
        let mut cmd = send_request(TOPIC, 0, &[], &[], 0);
        cmd.code = RequestCode::SEND_BATCH_MESSAGE.0;
        cmd.body = body.into();
        let (code, remark) = send_cmd(&c, cmd).await.expect_err("a delayed batch was accepted");
        assert_eq!(code, ResponseCode::MESSAGE_ILLEGAL.0);
        assert!(remark.contains("message 1") && remark.contains("DELAY"), "{remark}");
        // The same for a timer property (the native client's auto-batching once let these through as plain).
        let mut body = Vec::new();
        for props in ["", "", "TIMER_DELAY_MS\u{1}5000\u{2}"] {
            let m = raftmq_remoting::message::BatchMessage { flag: 0, body: b"b", properties: props };
            raftmq_remoting::message::encode_batch_message(&m, &mut body).expect("batch element");
        }
        let mut cmd = send_request(TOPIC, 0, &[], &[], 0);
        cmd.code = RequestCode::SEND_BATCH_MESSAGE.0;
        cmd.body = body.into();
        let (code, remark) = send_cmd(&c, cmd).await.expect_err("a timed batch was accepted");
        assert_eq!(code, ResponseCode::MESSAGE_ILLEGAL.0);
        assert!(remark.contains("message 2") && remark.contains("timer property"), "{remark}");
        g.shutdown().await;
    });
}

#[test]
fn retention_never_purges_a_message_that_is_still_scheduled() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with("messageDelayLevel = \"1s 1h\"\n").await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        wait_delay_levels(&g, leader, &[1000, 3_600_000]).await;
        let c = g.client(leader).await;
        let (_, msg_id) = send_cmd(&c, send_request(TOPIC, 0, b"in an hour", &[(property::DELAY_TIME_LEVEL, "2")], 0)).await.expect("send");
        let staged_at = raftmq_remoting::message::decode_offset_msg_id(&msg_id).expect("msgId").commit_log_offset as u64;
        // Enough entries after it for checkpoints (every 1024 indexes) well past its entry.
        for i in 0..2100 {
            send_cmd(&c, send_request(TOPIC, 1, format!("plain {i}").as_bytes(), &[], 0)).await.expect("plain send");
        }
        let node = g.brokers[leader].node().clone();
        let staged_index = node.commitlog().read_containing(staged_at).expect("read").expect("present").meta.index;
        let applied = node.state().last_applied_index().expect("applied");
        assert!(node.state().checkpoint_indexes().iter().any(|i| *i > staged_index), "premise: a checkpoint past the staged entry");
        let purged = node.compact(applied, Duration::from_secs(10)).await.expect("compact");
        assert!(purged.is_none_or(|p| p < staged_index), "purged through {purged:?}, past the staged message's entry {staged_index}");
        assert!(node.commitlog().read_at(staged_at, 4).is_some(), "the staged message's bytes are gone");
        g.shutdown().await;
    });
}

fn send_back(offset: i64, max: i32) -> RemotingCommand {
    send_back_request(offset, Some(max))
}

/// The retry schedule with a scaled table (level 3 = 1 s, level 4 = 2 s) and maxReconsumeTimes 2: the first
/// send-back waits level 3, the second level 4, the third goes to the DLQ at once. Send-backs go to a
/// follower, which forwards them to the leader (PyPI's client sends 36 to the message's store host).
#[test]
fn send_backs_follow_the_retry_schedule_then_the_dlq_also_through_a_follower() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with("messageDelayLevel = \"100ms 200ms 1s 2s\"\n").await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        wait_delay_levels(&g, leader, &[100, 200, 1000, 2000]).await;
        let c = g.client(leader).await;
        let follower = (leader + 1) % 3;
        let f = g.client(follower).await;
        let (_, msg_id) = send_cmd(&c, send_request(TOPIC, 0, b"fails", &[], 0)).await.expect("send");
        let phys = raftmq_remoting::message::decode_offset_msg_id(&msg_id).expect("msgId").commit_log_offset;
        let retry = "%RETRY%g";
        let mut from = phys;
        for (round, wait_ms) in [(1, 1000), (2, 2000)] {
            // The follower may not have applied the message yet: it answers from the leader anyway.
            let t0 = now_ms();
            let r = f.invoke(send_back(from, 2), TIMEOUT).await.expect("36");
            assert_eq!(r.code, ResponseCode::SUCCESS.0, "round {round}: {:?}", r.remark);
            tokio::time::sleep(Duration::from_millis(wait_ms as u64 / 2)).await;
            assert_eq!(pull_messages(&c, retry, 0).await.len(), round - 1, "round {round}: retried before its level's delay");
            let (got, _) = wait_in(&c, retry, 0, round, Duration::from_secs(6)).await;
            let m = &got[round - 1];
            assert_eq!(m.body, b"fails");
            assert_eq!(m.reconsume_times, round as i32);
            assert_eq!(m.properties.get(property::RETRY_TOPIC).map(String::as_str), Some(TOPIC));
            assert!(m.store_timestamp >= t0 + wait_ms, "round {round}: stamped {} ms after the send-back", m.store_timestamp - t0);
            from = m.phys;
        }
        // reconsumeTimes 2 = max: dead-lettered at once.
        let r = f.invoke(send_back(from, 2), TIMEOUT).await.expect("36");
        assert_eq!(r.code, ResponseCode::SUCCESS.0, "{:?}", r.remark);
        let (dlq, _) = wait_in(&c, "%DLQ%g", 0, 1, Duration::from_millis(900)).await;
        assert_eq!(dlq[0].body, b"fails");
        assert_eq!(pull_messages(&c, retry, 0).await.len(), 2, "no third retry");
        g.shutdown().await;
    });
}

/// 5.x timer properties: an arbitrary delay or delivery time, delivered once, not before its time, after
/// hopping down the timer lines; checked at the edges (40 days accepted, one second more refused, the past
/// beyond the tolerance refused, malformed values refused); and across the loss of the staging leader.
#[test]
fn timer_messages_are_delivered_once_at_their_time_also_across_a_leader_loss() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        let illegal = |props: Vec<(&'static str, String)>| {
            let c = &c;
            async move {
                let p: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let (code, remark) = send_cmd(c, send_request(TOPIC, 0, b"x", &p, 0)).await.expect_err("accepted");
                assert_eq!(code, ResponseCode::MESSAGE_ILLEGAL.0, "{remark}");
                remark
            }
        };
        let forty_days = 40 * 24 * 3600;
        let r = illegal(vec![(property::TIMER_DELAY_SEC, (forty_days + 1).to_string())]).await;
        assert!(r.contains("TIMER_DELAY_SEC") && r.contains("max delay"), "{r}");
        let r = illegal(vec![(property::TIMER_DELIVER_MS, (now_ms() - 600_000).to_string())]).await;
        assert!(r.contains("TIMER_DELIVER_MS") && r.contains("in the past"), "{r}");
        let r = illegal(vec![(property::TIMER_DELAY_MS, "soon".to_string())]).await;
        assert!(r.contains("TIMER_DELAY_MS") && r.contains("not a number"), "{r}");
        let r = illegal(vec![(property::TIMER_DELAY_MS, "-5".to_string())]).await;
        assert!(r.contains("negative"), "{r}");
        // 40 days exactly is taken, and waits in the 2^27-tick line.
        send_cmd(&c, send_request(TOPIC, 0, b"in forty days", &[(property::TIMER_DELAY_SEC, &forty_days.to_string())], 0))
            .await
            .expect("a 40-day timer");
        let pending = g.brokers[leader].node().state().with_metadata(|m| m.state.timers_pending());
        assert_eq!(pending, 1);
        // A delivery time in the tolerated past is delivered at once.
        send_cmd(&c, send_request(TOPIC, 1, b"late", &[(property::TIMER_DELIVER_MS, &(now_ms() - 5_000).to_string())], 0))
            .await
            .expect("past within tolerance");
        assert_eq!(pull_messages(&c, TOPIC, 1).await.len(), 1);

        // Three timers: relative ms, relative s, absolute.
        let sent = now_ms();
        let due = [sent + 1500, sent + 2000, sent + 2600];
        let cases: [(&str, String); 3] = [
            (property::TIMER_DELAY_MS, "1500".into()),
            (property::TIMER_DELAY_SEC, "2".into()),
            (property::TIMER_DELIVER_MS, due[2].to_string()),
        ];
        // The window each send was received in: a relative delay counts from the broker's receipt, which a
        // loaded machine can put well after `sent`.
        let mut windows = [(0i64, 0i64); 3];
        for (i, (k, v)) in cases.iter().enumerate() {
            let before = now_ms();
            send_cmd(&c, send_request(TOPIC, 2, format!("t{i}").as_bytes(), &[(k, v.as_str())], 0)).await.expect("timer send");
            windows[i] = (before - sent, now_ms() - sent);
        }
        // The staging leader stops before any is due; the next one delivers all three, once each.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pull_messages(&c, TOPIC, 2).await.is_empty(), "a timer was delivered early");
        g.brokers[leader].shutdown().await;
        let next = g.wait_leader(Some(leader), Duration::from_secs(20)).await;
        let c = g.client(next).await;
        let (got, _) = wait_in(&c, TOPIC, 2, 3, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(pull_messages(&c, TOPIC, 2).await.len(), 3, "a timer was delivered twice");
        for m in &got {
            let i: usize = String::from_utf8_lossy(&m.body)[1..].parse().unwrap();
            let out: i64 = m.properties.get(property::TIMER_OUT_MS).expect("TIMER_OUT_MS kept").parse().unwrap();
            // Absolute (t2): the asked time. Relative: the delay after a moment within the send's window.
            let (lo, hi) = if i == 2 { (due[i], due[i]) } else { (due[i] + windows[i].0, due[i] + windows[i].1) };
            assert!(out >= lo - 50 && out <= hi + 50, "t{i}: TIMER_OUT_MS {out}, asked {} (received within [{lo}, {hi}])", due[i]);
            assert!(m.store_timestamp >= out, "t{i} stamped {} ms before its due time", out - m.store_timestamp);
            assert!(!m.properties.contains_key(property::REAL_TOPIC), "{:?}", m.properties);
        }
        assert_eq!(g.brokers[next].node().state().with_metadata(|m| m.state.timers_pending()), 1, "the 40-day timer still waits");
        g.shutdown().await;
    });
}

#[test]
fn timer_sends_past_timer_messages_max_are_refused_as_not_stored() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with("timerMessagesMax = 2\n").await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        for i in 0..2 {
            send_cmd(&c, send_request(TOPIC, 0, format!("t{i}").as_bytes(), &[(property::TIMER_DELAY_SEC, "60")], 0))
                .await
                .expect("under the limit");
        }
        let (code, remark) =
            send_cmd(&c, send_request(TOPIC, 0, b"t2", &[(property::TIMER_DELAY_SEC, "60")], 0)).await.expect_err("over the limit");
        assert_eq!(code, ResponseCode::SERVICE_NOT_AVAILABLE.0, "{remark}");
        assert!(remark.contains("timerMessagesMax 2"), "{remark}");
        // Other sends go on.
        send_cmd(&c, send_request(TOPIC, 0, b"plain", &[], 0)).await.expect("plain send");
        send_cmd(&c, send_request(TOPIC, 0, b"level", &[(property::DELAY_TIME_LEVEL, "1")], 0)).await.expect("delay level");
        g.shutdown().await;
    });
}

/// A new leader whose first stamp is more than `clockJumpWarnMs` past the last stamped time counts it
/// (`clockJumps` in node status) — here with a 1 ms threshold and a 300 ms pause instead of a wrong clock.
#[test]
fn a_new_leaders_clock_jump_is_counted() {
    crate::common::runtime().block_on(async {
        let g = Group::start_with("clockJumpWarnMs = 1\n").await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        send_cmd(&c, send_request(TOPIC, 0, b"stamp", &[], 0)).await.expect("send");
        tokio::time::sleep(Duration::from_millis(300)).await;
        g.brokers[leader].shutdown().await;
        let next = g.wait_leader(Some(leader), Duration::from_secs(20)).await;
        let c = g.client(next).await;
        send_cmd(&c, send_request(TOPIC, 0, b"after", &[], 0)).await.expect("send on the new leader");
        let status = c.invoke(RemotingCommand::request(RequestCode(raftmq_broker::RAFTMQ_NODE_STATUS), 0), TIMEOUT).await.expect("status");
        let s: serde_json::Value = serde_json::from_slice(&status.body).expect("json");
        assert_eq!(s["clockJumps"], 1, "{s}");
        assert!(s["clockMs"].as_i64().unwrap_or(0) > 0, "{s}");
        g.shutdown().await;
    });
}
