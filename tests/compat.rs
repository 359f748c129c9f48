//! Data-directory compatibility: stores written by earlier raftmq versions open with this version and keep
//! serving. One fixture per replicated-state format, each the store of a single-node group (8 MiB
//! segments) run by an earlier binary and killed with SIGKILL.
//!
//! # Version 1: `tests/fixtures/v1-store.tar.gz`
//!
//! Before time entered the log and the replicated state got versioned checkpoints. Made by the binary of
//! commit 830c354: a single-node group (8 MiB segments) that took 1100 sends of `message <n>` (tag `TagA`,
//! keys `k1 k2`) on topic `FixT` (4 queues, 275 each), 20 messages as batches of 5 on `FixU`, and a
//! `raftmq consume` of 300 messages by group `FixG` that committed offsets 96, 76, 64, 64; then killed. It
//! holds a legacy (version 1) state checkpoint at index 1024 and legacy (tag 1) produce entries after it.
//!
//! # Version 2: `tests/fixtures/v2-store.tar.gz`
//!
//! Checkpoints `FF 'R' 'M' 'S' 02` + bincode of the metadata with the `raftmq-state` broker state (topics,
//! queues, offsets, the stamped clock, the delay-level table, the level and timer cursors); among the log
//! entries, stamped produce entries (tag 4) and a delay-level table (tag 5). Made by the debug build of commit 94c03a2
//! (`CARGO_TARGET_DIR=... cargo build -p raftmq-cli`, binary `$B`) on 2026-12-07 between 01:44:26 and
//! 01:44:35 UTC: `$B namesrv --listen 127.0.0.1:29876`, `$B broker --config n1.toml` with
//! [`Cluster::prepare`]'s config for one node (`brokerName = "broker-a"`, `nodeId = 1`,
//! `mappedFileSizeCommitLog = 8388608`, `bootstrap = true`, one `[[peers]]`, the default
//! `messageDelayLevel`), then, with `RAFTMQ_NAMESRV_ADDR=127.0.0.1:29876` and in this order (a scheduled
//! message is one `raftmq produce` run each, `i` = 0, 1, 2):
//!
//! ```text
//! $B admin delay-levels "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"  # the default, now replicated
//! $B produce --topic FixT --count 700 --tag TagA --keys "k1 k2"   # queue n % 4 holds message <n>: 175 each
//! $B consume --topic FixT --group FixG --count 250                 # commits 64, 64, 64, 58
//! $B produce --topic FixS --delay-level 1 --body "level1 $i" --tag TagS
//! $B produce --topic FixS --delay 3s --body "timer3s $i" --tag TagS
//! $B admin schedule                         # polled until nothing was pending: these 6 are delivered
//! $B produce --topic FixS --delay-level 18 --body "level18 $i" --tag TagS
//! $B produce --topic FixS --delay 40d --body "timer40d $i" --tag TagS
//! $B produce --topic FixS --deliver-at 2027-01-15T01:44:31Z --body "at $i" --tag TagS
//! $B produce --topic FixU --count 400      # queue (n + 1) % 4 holds message <n>: 100 each; crosses 1024
//! $B produce --topic FixS --delay-level 18 --body "level18 3" --tag TagS
//! $B produce --topic FixS --delay 40d --body "timer40d 3" --tag TagS
//! $B consume --topic FixU --group FixG --count 100                 # commits 32, 32, 32, 4
//! kill -9 <broker>                                                 # applied index 1156
//! tar --sort=name --owner=0 --group=0 --numeric-owner -czf v2-store.tar.gz store
//! ```
//!
//! It holds a version-2 checkpoint at index 1024 (the level table; FixT; FixU up to 68, 69, 69, 68; FixG's
//! FixT offsets; the six delivered scheduled messages and their cursors; 3 level-18 messages and 6 timers
//! pending) and 132 entries after it (the rest of FixU, one more level-18 message and 40-day timer,
//! FixG's FixU offsets). At the kill 4 level-18 messages (due 2 h after their send) and 7 timers (due
//! 2027-01-15 and 01-16) were pending. Whether they still are depends on when the test runs (raftmq takes
//! no delay above 40 days), so it reads each one's due time from the staging topics and checks it against
//! the clock: pending before it, delivered once and not earlier after it, never delivered again when the
//! earlier binary had delivered it.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use raftmq_net::RemotingClient;
use raftmq_raft::state_machine::Metadata;
use raftmq_raft::types::{DEFAULT_DELAY_LEVELS, SCHEDULE_TOPIC, TIMER_LEVELS, TIMER_TOPIC};
use raftmq_remoting::message::property;

/// A one-node cluster whose store is the fixture `name` (from `tests/fixtures`), not started.
fn cluster_on_fixture(name: &str) -> Cluster {
    let cluster = Cluster::prepare(1, "");
    let store = cluster.store_dir(1);
    std::fs::create_dir_all(&store).expect("store dir");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name);
    let st = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .args(["--strip-components=1", "-C"])
        .arg(&store)
        .status()
        .expect("run tar");
    assert!(st.success(), "extracting {}", fixture.display());
    cluster
}

/// The body of node 1's state checkpoint: the file without its crc and length (the length checked).
fn checkpoint_body(cluster: &Cluster) -> Vec<u8> {
    let path = cluster.store_dir(1).join("state/checkpoint");
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() >= 8, "{}: shorter than its frame", path.display());
    let len = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")) as usize;
    assert_eq!(b.len(), len + 8, "{}: frame length", path.display());
    b[8..].to_vec()
}

/// Starts node 1 and connects to it once it is the registered leader.
async fn start(cluster: &mut Cluster) -> RemotingClient {
    cluster.start_node(1);
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    client(&cluster.node(1).client_addr).await.expect("connect")
}

/// SIGKILL and start again: the restart replays the log from the newest checkpoint.
async fn restart(cluster: &mut Cluster, c: RemotingClient) -> RemotingClient {
    drop(c);
    cluster.kill(1);
    start(cluster).await
}

async fn max_offsets(c: &RemotingClient, topic: &str) -> Vec<i64> {
    let mut v = Vec::new();
    for q in 0..4 {
        v.push(max_offset(c, topic, q).await);
    }
    v
}

async fn committed(c: &RemotingClient, group: &str, topic: &str) -> Vec<Option<i64>> {
    let mut v = Vec::new();
    for q in 0..4 {
        v.push(query_offset(c, group, topic, q).await);
    }
    v
}

/// Queue `q` of `topic` holds `message <n>` at offset `o` for n = 4·o + (q − first) mod 4 — what
/// `raftmq produce` sends round robin from queue `first` — for offsets `0..count`.
async fn check_round_robin(c: &RemotingClient, topic: &str, first: i64, count: i64) {
    for q in 0..4 {
        let got = pull_all(c, topic, q).await;
        let got = &got[..got.len().min(count as usize)];
        assert_eq!(got.len() as i64, count, "{topic} queue {q}");
        for (o, (off, body)) in got.iter().enumerate() {
            let n = 4 * o as i64 + (i64::from(q) - first).rem_euclid(4);
            assert_eq!(*off, o as i64, "{topic} queue {q}");
            assert_eq!(String::from_utf8_lossy(body), format!("message {n}"), "{topic} queue {q} offset {o}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Version 1

async fn check_v1_content(c: &RemotingClient) {
    assert_eq!(max_offsets(c, "FixT").await, vec![275; 4], "FixT");
    assert_eq!(max_offsets(c, "FixU").await.iter().sum::<i64>(), 20, "FixU holds its 20 batched messages");
    let q0 = pull_all(c, "FixT", 0).await;
    assert_eq!(q0.len(), 275);
    for (i, (off, body)) in q0.iter().enumerate() {
        assert_eq!(*off, i as i64);
        assert!(body.starts_with(b"message "), "{:?}", String::from_utf8_lossy(body));
    }
    assert_eq!(
        committed(c, "FixG", "FixT").await,
        vec![Some(96), Some(76), Some(64), Some(64)],
        "offsets committed by the earlier version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_the_previous_version_opens_and_keeps_serving() {
    let mut cluster = cluster_on_fixture("v1-store.tar.gz");
    let body = checkpoint_body(&cluster);
    assert_ne!(body[0], 0xFF, "the fixture holds a legacy (unversioned) checkpoint");
    let meta = Metadata::decode(&body).expect("the legacy checkpoint decodes");
    assert_eq!(meta.last_applied.map(|l| l.index), Some(1024));
    let c = start(&mut cluster).await;
    check_v1_content(&c).await;

    // New (stamped) entries go after the legacy ones, and a restart replays both kinds and the new
    // checkpoints (1100+ sends cross the next checkpoint index, 2048).
    for i in 0..1000 {
        let off = send(&c, "FixT", 1, format!("new {i}").as_bytes()).await.expect("send after upgrade");
        assert_eq!(off, 275 + i);
    }
    assert_eq!(commit_offset(&c, "FixG", "FixT", 1, 300).await, 0);
    let c = restart(&mut cluster, c).await;
    assert_eq!(max_offset(&c, "FixT", 1).await, 1275);
    assert_eq!(query_offset(&c, "FixG", "FixT", 1).await, Some(300));
    let q1 = pull_all(&c, "FixT", 1).await;
    assert_eq!(q1.len(), 1275);
    assert_eq!(q1[275].1, b"new 0");
    assert_eq!(q1[1274].1, b"new 999");
    for q in [0, 2, 3] {
        assert_eq!(max_offset(&c, "FixT", q).await, 275);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Version 2

/// The fixture's scheduled messages (topic FixS, tag TagS): bodies `<prefix> <i>` for i in 0..count, how
/// they were staged, and the delay they asked for (0: `--deliver-at`).
const V2_SCHEDULED: [(&str, usize, Staged, i64); 5] = [
    ("level1", 3, Staged::Level, 1_000),
    ("timer3s", 3, Staged::Timer, 3_000),
    ("level18", 4, Staged::Level, 7_200_000),
    ("timer40d", 4, Staged::Timer, 40 * 86_400_000),
    ("at", 3, Staged::Timer, 0),
];
/// Those the fixture's broker had delivered before it was killed.
const V2_DELIVERED_BEFORE_KILL: [&str; 6] = ["level1 0", "level1 1", "level1 2", "timer3s 0", "timer3s 1", "timer3s 2"];
/// 2026-12-07T01:44:26Z and 01:44:35Z: the fixture's broker stamped everything it stored in between.
const V2_STARTED_MS: i64 = 1_796_607_866_000;
const V2_KILLED_MS: i64 = 1_796_607_875_000;
/// `--deliver-at 2027-01-15T01:44:31Z`.
const V2_DELIVER_AT_MS: i64 = 1_799_977_471_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Staged {
    Level,
    Timer,
}

/// Every message staged for later delivery, by body: how, and when it is due (a level's from its staged
/// store time plus the level's delay, a timer's from its `TIMER_OUT_MS`), read from the staging topics.
async fn staged(c: &RemotingClient) -> BTreeMap<String, (Staged, i64)> {
    let levels = raftmq_state::schedule::parse_delay_levels(DEFAULT_DELAY_LEVELS).expect("default levels");
    let mut out = BTreeMap::new();
    for (q, delay) in levels.iter().enumerate() {
        for m in pull_all_messages(c, SCHEDULE_TOPIC, q as i32).await {
            let due = m.store_timestamp + *delay as i64;
            out.insert(String::from_utf8_lossy(&m.body).into_owned(), (Staged::Level, due));
        }
    }
    for q in 0..TIMER_LEVELS {
        // A timer's hops add units for the same message to other lines: one entry per body.
        for m in pull_all_messages(c, TIMER_TOPIC, q as i32).await {
            let due = m.properties.get(property::TIMER_OUT_MS).and_then(|v| v.parse().ok()).expect("a staged timer has TIMER_OUT_MS");
            out.insert(String::from_utf8_lossy(&m.body).into_owned(), (Staged::Timer, due));
        }
    }
    out
}

/// Waits until FixS holds a copy of every staged message that is due and the node's schedule status
/// counts the others as pending. Asserts on the way that no message is delivered twice or before its due
/// time. Returns the copies by body.
async fn check_schedule(c: &RemotingClient, addr: &str, due: &BTreeMap<String, (Staged, i64)>) -> BTreeMap<String, Pulled> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = now_ms();
        let status = node_status(addr).await.expect("node status");
        let mut copies: BTreeMap<String, Vec<Pulled>> = BTreeMap::new();
        for q in 0..4 {
            for m in pull_all_messages(c, "FixS", q).await {
                copies.entry(String::from_utf8_lossy(&m.body).into_owned()).or_default().push(m);
            }
        }
        for (body, ms) in &copies {
            let (kind, at) = due.get(body).unwrap_or_else(|| panic!("FixS holds {body:?}, which was never staged"));
            assert_eq!(ms.len(), 1, "{body} delivered {} times: {ms:?}", ms.len());
            let m = &ms[0];
            assert!(m.store_timestamp >= *at, "{body} delivered {} ms before it was due", at - m.store_timestamp);
            assert_eq!(m.properties.get(property::TAGS).map(String::as_str), Some("TagS"), "{body}");
            match kind {
                Staged::Level => assert!(!m.properties.contains_key(property::DELAY_TIME_LEVEL), "{body}: {:?}", m.properties),
                Staged::Timer => assert_eq!(m.properties.get(property::TIMER_OUT_MS), Some(&at.to_string()), "{body}"),
            }
        }
        let sched = &status["schedule"];
        assert_eq!(sched["delayLevels"], DEFAULT_DELAY_LEVELS, "the replicated level table");
        let pending_levels: u64 = sched["pending"].as_array().expect("pending").iter().map(|p| p["pending"].as_u64().expect("count")).sum();
        let pending_timers = sched["timersPending"].as_u64().expect("timersPending");
        let undelivered = |k: Staged| due.iter().filter(|(b, (kind, _))| *kind == k && !copies.contains_key(*b)).count() as u64;
        let overdue: Vec<&String> = due.iter().filter(|(b, (_, at))| *at <= before && !copies.contains_key(*b)).map(|(b, _)| b).collect();
        if overdue.is_empty() && pending_levels == undelivered(Staged::Level) && pending_timers == undelivered(Staged::Timer) {
            return copies.into_iter().map(|(b, mut ms)| (b, ms.remove(0))).collect();
        }
        assert!(
            Instant::now() < deadline,
            "not delivered though due: {overdue:?}; status pending levels {pending_levels}, timers {pending_timers}; undelivered \
             levels {}, timers {}",
            undelivered(Staged::Level),
            undelivered(Staged::Timer)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`check_schedule`] on the fixture's store: the messages the earlier binary delivered were not delivered
/// again. Returns the bodies still pending.
async fn check_v2_schedule(c: &RemotingClient, addr: &str, due: &BTreeMap<String, (Staged, i64)>) -> Vec<String> {
    let copies = check_schedule(c, addr, due).await;
    for body in V2_DELIVERED_BEFORE_KILL {
        let at = copies.get(body).unwrap_or_else(|| panic!("{body} is no longer in FixS")).store_timestamp;
        assert!(at < V2_KILLED_MS, "{body} delivered again by this version (stamped {at})");
    }
    due.keys().filter(|b| !copies.contains_key(*b)).cloned().collect()
}

/// The plain messages and offsets the fixture holds, with `new_t1` sends appended to FixT queue 1 and
/// `new_t2` to queue 2 since.
async fn check_v2_content(c: &RemotingClient, new_t1: i64, new_t2: i64) {
    assert_eq!(max_offsets(c, "FixT").await, vec![175, 175 + new_t1, 175 + new_t2, 175], "FixT");
    assert_eq!(max_offsets(c, "FixU").await, vec![100; 4], "FixU");
    check_round_robin(c, "FixT", 0, 175).await;
    check_round_robin(c, "FixU", 1, 100).await;
    let fix_t = if new_t1 > 0 { Some(200) } else { Some(64) };
    assert_eq!(committed(c, "FixG", "FixT").await, vec![Some(64), fix_t, Some(64), Some(58)], "FixG's offsets on FixT");
    assert_eq!(committed(c, "FixG", "FixU").await, vec![Some(32), Some(32), Some(32), Some(4)], "FixG's offsets on FixU");
    for (q, n) in [(1, new_t1), (2, new_t2)] {
        let got = pull_all(c, "FixT", q).await;
        let new: Vec<String> = got[175..].iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
        assert_eq!(new, (0..n).map(|i| format!("new {q}-{i}")).collect::<Vec<_>>(), "new sends on FixT queue {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_store_with_scheduled_messages_opens_and_keeps_serving() {
    // The store's stamped clock never goes back: on a machine whose clock is behind it, new stamps would
    // stay at the fixture's time and nothing sent now would come due.
    assert!(now_ms() > V2_KILLED_MS, "this machine's clock ({} ms) is before the fixture was made ({V2_KILLED_MS} ms)", now_ms());
    let mut cluster = cluster_on_fixture("v2-store.tar.gz");

    // The checkpoint, with this version's decoder: what the earlier binary wrote at index 1024.
    let body = checkpoint_body(&cluster);
    assert_eq!(body[..5], [0xFF, b'R', b'M', b'S', 2], "the fixture holds a version-2 checkpoint");
    let meta = Metadata::decode(&body).expect("the version-2 checkpoint decodes");
    assert_eq!(meta.last_applied.map(|l| l.index), Some(1024));
    let st = &meta.state;
    assert!((V2_STARTED_MS..V2_KILLED_MS).contains(&st.clock.now_ms), "stamped clock {}", st.clock.now_ms);
    let levels = raftmq_state::schedule::parse_delay_levels(DEFAULT_DELAY_LEVELS).expect("default levels");
    assert_eq!(st.schedule.levels, levels, "the replicated level table");
    assert_eq!(st.schedule.cursors, BTreeMap::from([(0, 3)]), "level 1's three messages delivered");
    assert_eq!(st.schedule.timer_cursors, BTreeMap::from([(0, 5), (1, 3), (3, 3), (4, 3), (5, 3), (7, 3)]), "the 3 s timers' hops");
    let next = |topic: &str| -> BTreeMap<u32, u64> {
        st.queues[topic].iter().filter(|(_, q)| q.next_offset > 0).map(|(id, q)| (*id, q.next_offset)).collect()
    };
    assert_eq!(next("FixT"), BTreeMap::from([(0, 175), (1, 175), (2, 175), (3, 175)]));
    assert_eq!(next("FixU"), BTreeMap::from([(0, 68), (1, 69), (2, 69), (3, 68)]), "FixU up to the checkpoint");
    assert_eq!(next("FixS"), BTreeMap::from([(0, 3), (1, 2), (2, 1)]), "the six delivered copies");
    assert_eq!(next(SCHEDULE_TOPIC), BTreeMap::from([(0, 3), (17, 3)]));
    assert_eq!(next(TIMER_TOPIC), BTreeMap::from([(0, 5), (1, 3), (3, 3), (4, 3), (5, 3), (7, 3), (27, 6)]));
    assert_eq!(st.topics[SCHEDULE_TOPIC].write_queues, 18);
    assert_eq!(st.topics[TIMER_TOPIC].write_queues, TIMER_LEVELS);
    let fix_g = BTreeMap::from([("FixT".to_string(), BTreeMap::from([(0, 64), (1, 64), (2, 64), (3, 58)]))]);
    assert_eq!(st.consumer_offsets, BTreeMap::from([("FixG".to_string(), fix_g)]), "FixG's FixU offsets come after the checkpoint");

    // This version serves it: the checkpoint plus the stamped entries after it.
    let mut c = start(&mut cluster).await;
    let addr = cluster.node(1).client_addr.clone();
    let status = node_status(&addr).await.expect("status");
    assert!(status["clockMs"].as_i64().expect("clockMs") >= st.clock.now_ms, "the stamped clock does not go back: {status}");
    check_v2_content(&c, 0, 0).await;
    let due = staged(&c).await;
    assert_eq!(due.len(), V2_SCHEDULED.iter().map(|s| s.1).sum::<usize>(), "staged: {:?}", due.keys());
    for (prefix, count, kind, delay) in V2_SCHEDULED {
        for i in 0..count {
            let body = format!("{prefix} {i}");
            let (k, at) = due.get(&body).unwrap_or_else(|| panic!("{body} is not staged"));
            assert_eq!(*k, kind, "{body}");
            if delay == 0 {
                assert_eq!(*at, V2_DELIVER_AT_MS, "{body}");
            } else {
                assert!((V2_STARTED_MS + delay..V2_KILLED_MS + delay).contains(at), "{body} due at {at}");
            }
        }
    }
    // The earlier binary's deliveries are not repeated (the cursors came through), and what it had not
    // delivered waits for its time (a level-18 message for 2 h after the fixture was made, a timer until
    // 2027-01-15/16) or, past it, is delivered now, once.
    let pending = check_v2_schedule(&c, &addr, &due).await;
    eprintln!("pending when this test ran: {pending:?}");

    // New sends, plain and scheduled, go after the old entries.
    for i in 0..100 {
        let off = send(&c, "FixT", 1, format!("new 1-{i}").as_bytes()).await.expect("send after upgrade");
        assert_eq!(off, 175 + i);
    }
    assert_eq!(commit_offset(&c, "FixG", "FixT", 1, 200).await, 0);
    let staged_at =
        send_cmd(&c, send_request_with("FixS", 3, b"new level1", &[(property::DELAY_TIME_LEVEL, "1"), (property::TAGS, "TagS")]))
            .await
            .expect("delayed send");
    assert_eq!(staged_at, 3, "after the level's three staged messages");
    send_cmd(&c, send_request_with("FixS", 3, b"new timer", &[(property::TIMER_DELAY_MS, "1500"), (property::TAGS, "TagS")]))
        .await
        .expect("timed send");
    let due = staged(&c).await;
    let latest = due["new level1"].1.max(due["new timer"].1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while now_ms() <= latest {
        assert!(Instant::now() < deadline, "the new scheduled messages are due only at {latest}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending_now = check_v2_schedule(&c, &addr, &due).await;
    assert!(pending_now.iter().all(|b| pending.contains(b)), "{pending_now:?}");

    // A restart replays the old entries after the version-2 checkpoint and the new ones after them.
    c = restart(&mut cluster, c).await;
    check_v2_content(&c, 100, 0).await;
    assert_eq!(staged(&c).await, due, "the staged messages after the restart");
    check_v2_schedule(&c, &addr, &due).await;

    // Across the next checkpoint (index 2048): this version's checkpoint of the state that came from the
    // version-2 one, and a restart from it.
    for i in 0..800 {
        let off = send(&c, "FixT", 2, format!("new 2-{i}").as_bytes()).await.expect("send after upgrade");
        assert_eq!(off, 175 + i);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let meta = Metadata::decode(&checkpoint_body(&cluster)).expect("this version's checkpoint decodes");
        if meta.last_applied.is_some_and(|l| l.index >= 2048) {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint at 2048: {:?}", meta.last_applied);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c = restart(&mut cluster, c).await;
    check_v2_content(&c, 100, 800).await;
    assert_eq!(staged(&c).await, due, "the staged messages after the second restart");
    check_v2_schedule(&c, &addr, &due).await;
}
