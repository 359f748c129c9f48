//! Server-side offset resets (INVOKE_BROKER_TO_RESET_OFFSET, 222): the leader computes offsets by store
//! time and replicates them with a marker per queue; pulls elsewhere are answered PULL_OFFSET_MOVED to the
//! reset offset — also by a new leader after a failover between the reset and the pull — stale commits are
//! acknowledged and ignored, and the marker ends once the group pulls (or commits) at the reset offset.

use std::time::{Duration, Instant};

use crate::common::{now_ms, pull, send, Group, TIMEOUT, TOPIC};
use raftmq_net::RemotingClient;
use raftmq_remoting::body::ResetOffsetBody;
use raftmq_remoting::header::{
    OffsetResponseHeader, QueryConsumerOffsetRequestHeader, ResetOffsetRequestHeader, UpdateConsumerOffsetRequestHeader,
};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

/// The group `common::pull` pulls for.
const GROUP: &str = "test_consumer";

async fn reset(c: &RemotingClient, group: &str, topic: &str, timestamp: i64, queue: Option<(i32, i64)>) -> RemotingCommand {
    let h = ResetOffsetRequestHeader {
        group: group.into(),
        topic: topic.into(),
        timestamp,
        is_force: true,
        queue_id: queue.map(|q| q.0),
        offset: queue.map(|q| q.1),
    };
    c.invoke(RemotingCommand::request(RequestCode::INVOKE_BROKER_TO_RESET_OFFSET, 0).with_header(&h), TIMEOUT).await.expect("reset")
}

/// The new offsets a successful reset answered, by queue id.
fn reset_offsets(r: &RemotingCommand) -> Vec<(i32, i64)> {
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "{:?}", r.remark);
    ResetOffsetBody::decode(&r.body).expect("ResetOffsetBody").offset_table.into_iter().map(|(q, o)| (q.queue_id, o)).collect()
}

async fn commit(c: &RemotingClient, queue_id: i32, offset: i64) -> i32 {
    let h = UpdateConsumerOffsetRequestHeader { consumer_group: GROUP.into(), topic: TOPIC.into(), queue_id, commit_offset: offset };
    c.invoke(RemotingCommand::request(RequestCode::UPDATE_CONSUMER_OFFSET, 0).with_header(&h), TIMEOUT).await.expect("commit").code
}

async fn committed(c: &RemotingClient, queue_id: i32) -> i64 {
    let h = QueryConsumerOffsetRequestHeader {
        consumer_group: GROUP.into(),
        topic: TOPIC.into(),
        queue_id,
        set_zero_if_not_found: Some(false),
    };
    let r = c.invoke(RemotingCommand::request(RequestCode::QUERY_CONSUMER_OFFSET, 0).with_header(&h), TIMEOUT).await.expect("query");
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "{:?}", r.remark);
    r.decode_header::<OffsetResponseHeader>().expect("offset").offset
}

/// Waits until every member's applied state holds `want` as the marker of queue `q`.
async fn wait_marker(g: &Group, q: u32, want: Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<Option<u64>> =
            g.brokers.iter().map(|b| b.node().state().with_metadata(|m| m.state.reset_marker(GROUP, TOPIC, q))).collect();
        if got.iter().all(|m| *m == want) {
            return;
        }
        assert!(Instant::now() < deadline, "markers of queue {q}: {got:?}, want {want:?} everywhere");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_reset_moves_consumers_to_the_time_across_a_failover_and_ignores_stale_commits() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        let mut mid = 0;
        for i in 0..10 {
            if i == 5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                mid = now_ms();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            send(&c, TOPIC, 0, format!("m{i}").as_bytes()).await.expect("send");
        }
        // The consumer has read everything.
        assert_eq!(commit(&c, 0, 10).await, ResponseCode::SUCCESS.0);

        // Bad requests: an unknown group, an unknown topic, a bad queue, a member that is not the leader.
        let r = reset(&c, "nobody", TOPIC, mid, None).await;
        assert_eq!(r.code, ResponseCode::SUBSCRIPTION_GROUP_NOT_EXIST.0, "{:?}", r.remark);
        assert!(r.remark.as_deref().unwrap_or("").contains("consumer group nobody has no offsets"), "{:?}", r.remark);
        let r = reset(&c, GROUP, "NoSuchTopic", mid, None).await;
        assert_eq!(r.code, ResponseCode::TOPIC_NOT_EXIST.0, "{:?}", r.remark);
        let r = reset(&c, GROUP, TOPIC, mid, Some((9, 0))).await;
        assert!(r.code == ResponseCode::SYSTEM_ERROR.0 && r.remark.as_deref().unwrap_or("").contains("queueId[9] is illegal"), "{r:?}");
        // A follower forwards 222 to the leader; one already forwarded (one hop) it refuses, naming the leader.
        let follower = (leader + 1) % 3;
        let h = ResetOffsetRequestHeader {
            group: GROUP.into(),
            topic: TOPIC.into(),
            timestamp: mid,
            is_force: true,
            queue_id: None,
            offset: None,
        };
        let mut marked = RemotingCommand::request(RequestCode::INVOKE_BROKER_TO_RESET_OFFSET, 0).with_header(&h);
        marked.ext_fields.insert("raftmqForwardedBy".into(), "9".into());
        let r = g.client(follower).await.invoke(marked, TIMEOUT).await.expect("reset");
        assert_eq!(r.code, ResponseCode::SERVICE_NOT_AVAILABLE.0);
        assert!(r.remark.as_deref().unwrap_or("").contains(&format!("the leader is at {}", g.addr(leader))), "{:?}", r.remark);

        // Reset every queue to `mid`: queue 0 to its sixth message, the empty queues to 0.
        let moved = reset_offsets(&reset(&c, GROUP, TOPIC, mid, None).await);
        assert_eq!(moved, vec![(0, 5), (1, 0), (2, 0), (3, 0)]);
        wait_marker(&g, 0, Some(5)).await;
        assert_eq!(committed(&c, 0).await, 5);
        // The running consumer's stale commit is acknowledged and ignored.
        assert_eq!(commit(&c, 0, 10).await, ResponseCode::SUCCESS.0);
        assert_eq!(committed(&c, 0).await, 5, "a commit from before the reset does not undo it");

        // Failover between the reset and the consumer's next pull.
        let target = g.brokers[(leader + 1) % 3].node().status().id;
        g.brokers[leader].node().transfer_leader(target, Duration::from_secs(10)).await.expect("transfer");
        let new = g.wait_leader(Some(leader), Duration::from_secs(20)).await;
        let cn = g.client(new).await;
        let (code, next, remark) = pull(&cn, TOPIC, 0, 10).await;
        assert_eq!((code, next), (ResponseCode::PULL_OFFSET_MOVED.0, 5), "the new leader moves the consumer: {remark}");
        // Asked again (the answer was lost): the same answer.
        let (code, next, _) = pull(&cn, TOPIC, 0, 10).await;
        assert_eq!((code, next), (ResponseCode::PULL_OFFSET_MOVED.0, 5));
        // A member that is not the leader never moves the consumer.
        let (code, next, remark) = pull(&g.client(leader).await, TOPIC, 0, 10).await;
        assert_eq!((code, next), (ResponseCode::PULL_RETRY_IMMEDIATELY.0, 10), "{remark}");
        assert_eq!(committed(&cn, 0).await, 5);

        // The consumer follows: its pull at the reset offset is served and the marker ends everywhere.
        let (code, next, remark) = pull(&cn, TOPIC, 0, 5).await;
        assert_eq!((code, next), (ResponseCode::SUCCESS.0, 10), "{remark}");
        wait_marker(&g, 0, None).await;
        assert_eq!(commit(&cn, 0, 7).await, ResponseCode::SUCCESS.0);
        assert_eq!(committed(&cn, 0).await, 7, "commits count again once the group took the reset");
        let (code, _, _) = pull(&cn, TOPIC, 0, 7).await;
        assert_eq!(code, ResponseCode::SUCCESS.0);

        // One queue to an explicit offset; a commit of exactly that offset also ends the marker.
        assert_eq!(reset_offsets(&reset(&cn, GROUP, TOPIC, 0, Some((0, 2))).await), vec![(0, 2)]);
        wait_marker(&g, 0, Some(2)).await;
        assert_eq!(commit(&cn, 0, 2).await, ResponseCode::SUCCESS.0);
        wait_marker(&g, 0, None).await;
        assert_eq!(commit(&cn, 0, 3).await, ResponseCode::SUCCESS.0);
        assert_eq!(committed(&cn, 0).await, 3);
        // To the latest: −1 is each queue's max offset.
        let moved = reset_offsets(&reset(&cn, GROUP, TOPIC, -1, None).await);
        assert_eq!(moved, vec![(0, 10), (1, 0), (2, 0), (3, 0)]);
        let (code, next, _) = pull(&cn, TOPIC, 0, 3).await;
        assert_eq!((code, next), (ResponseCode::PULL_OFFSET_MOVED.0, 10));
        g.shutdown().await;
    });
}
