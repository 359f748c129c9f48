//! The bounds on long-polled pulls (crates/broker/src/parked.rs), over the wire from a real `raftmq` binary:
//! a connection holds at most `pullParkedPerConnMax` parked pulls and the broker at most `pullParkedMax`; one
//! more is answered 2 SYSTEM_BUSY `[PARKED_PULLS]` at once instead of waiting; the connection keeps serving
//! its other requests (a send) while its pulls are parked; the parked pulls still get the message when it
//! arrives; and every place is freed when they are answered.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftmq_net::RemotingClient;
use raftmq_remoting::header::{pull_sys_flag, PullMessageRequestHeader};
use raftmq_remoting::{RemotingCommand, RequestCode};

/// A long-polled pull of queue 0 from `offset`, held by the broker up to 20 s: (code, remark, messages).
async fn long_poll_at(c: &RemotingClient, topic: &str, offset: i64) -> (i32, String, usize) {
    let h = PullMessageRequestHeader {
        consumer_group: "park_group".into(),
        topic: topic.into(),
        queue_id: 0,
        queue_offset: offset,
        max_msg_nums: 32,
        sys_flag: pull_sys_flag::SUSPEND,
        suspend_timeout_millis: 20_000,
        subscription: Some("*".into()),
        ..Default::default()
    };
    let r = c.invoke(RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h), Duration::from_secs(30)).await.expect("pull");
    let n = raftmq_remoting::message::StoredMessages::new(&r.body).count();
    (r.code, r.remark.clone().unwrap_or_default(), n)
}

async fn long_poll(c: &RemotingClient, topic: &str) -> (i32, String, usize) {
    long_poll_at(c, topic, 0).await
}

async fn parked(addr: &str) -> (u64, u64) {
    let s = node_status(addr).await.expect("status");
    (s["pullParked"]["parked"].as_u64().expect("parked"), s["pullParked"]["refused"].as_u64().expect("refused"))
}

async fn wait_parked(addr: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while parked(addr).await.0 != want {
        assert!(Instant::now() < deadline, "parked pulls never reached {want}: {:?}", parked(addr).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_pulls_are_bounded_per_connection_and_per_broker_and_still_get_their_message() {
    let cluster = Cluster::start_with(1, None, "pullParkedPerConnMax = 2\npullParkedMax = 3\n").await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let addr = cluster.node(leader).client_addr.clone();
    let topic = "ParkedPulls";
    create_one_queue_topic(&addr, topic).await;
    create_one_queue_topic(&addr, "ParkedPullsOther").await;
    let c1 = std::sync::Arc::new(client(&addr).await.expect("connect"));
    let c2 = std::sync::Arc::new(client(&addr).await.expect("connect"));
    let spawn_pull = |c: &std::sync::Arc<RemotingClient>| {
        let c = c.clone();
        tokio::spawn(async move { long_poll(&c, topic).await })
    };

    // Connection 1 parks two pulls, its bound; the third is answered at once.
    let (a, b) = (spawn_pull(&c1), spawn_pull(&c1));
    wait_parked(&addr, 2).await;
    let t = Instant::now();
    let (code, remark, n) = long_poll(&c1, topic).await;
    println!("third pull on one connection: {code} {remark:?} after {} ms", t.elapsed().as_millis());
    assert_eq!((code, n), (2, 0), "{remark}");
    assert!(remark.starts_with("[PARKED_PULLS]this connection already holds 2") && remark.contains("pullParkedPerConnMax 2"), "{remark}");
    assert!(t.elapsed() < Duration::from_secs(10), "answered at once, not after the 20 s hold");

    // The connection still serves its other requests while its pulls are parked.
    send(&c1, "ParkedPullsOther", 0, b"other").await.expect("a send on the connection whose pulls are parked");
    assert!(!a.is_finished() && !b.is_finished(), "a send to another topic does not answer the parked pulls");

    // Connection 2 parks one (3 in the broker, its bound); its next is refused by the broker's bound.
    let c = spawn_pull(&c2);
    wait_parked(&addr, 3).await;
    let (code, remark, _) = long_poll(&c2, topic).await;
    assert_eq!(code, 2, "{remark}");
    assert!(remark.starts_with("[PARKED_PULLS]the broker already holds 3") && remark.contains("pullParkedMax 3"), "{remark}");
    assert_eq!(parked(&addr).await, (3, 2), "two refusals counted, three pulls still parked");

    // A message wakes every parked pull, and each gets it.
    send(&c1, topic, 0, b"wake").await.expect("send");
    for (name, p) in [("a", a), ("b", b), ("c", c)] {
        let (code, remark, n) = p.await.expect("task");
        assert_eq!((code, n), (0, 1), "parked pull {name}: {remark}");
    }
    wait_parked(&addr, 0).await;
    // With the places free, connection 1 parks again.
    let again = {
        let c = c1.clone();
        tokio::spawn(async move { long_poll_at(&c, topic, 1).await })
    };
    wait_parked(&addr, 1).await;
    again.abort();
}
