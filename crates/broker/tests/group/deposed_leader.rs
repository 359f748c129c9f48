//! A leader cut off from its group (its Raft port isolated) keeps the Leader role under openraft 0.9. It must
//! not act on that belief where the effect is irreversible: it must not answer PULL_OFFSET_MOVED (which
//! rewinds or jumps consumers) and must not take brokerId 0 back at the nameserver from the new leader.

use std::time::Duration;

use crate::common::{pull, send, Group, TOPIC};
use raftmq_raft::node::Role;
use raftmq_remoting::ResponseCode;

#[test]
fn a_deposed_leader_neither_moves_consumers_nor_takes_the_route_back() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let old = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(old).await;
        for i in 0..5 {
            send(&c, TOPIC, 0, format!("m{i}").as_bytes()).await.expect("send");
        }
        // Sanity: the confirmed leader does move a consumer that asks beyond the end (to the min offset, 0,
        // by RocketMQ's rule for a queue that still holds its first message).
        let (code, next, _) = pull(&c, TOPIC, 0, 100).await;
        assert_eq!((code, next), (ResponseCode::PULL_OFFSET_MOVED.0, 0), "a confirmed leader corrects a bad offset");

        g.brokers[old].node().set_isolated(true);
        let new = g.wait_leader(Some(old), Duration::from_secs(20)).await;
        let r = g.brokers[old].node().role().borrow().clone();
        assert!(r.role == Role::Leader && r.ready, "the premise: the cut-off node still believes it leads ({r:?})");
        g.brokers[new].register_now().await;

        // A pull beyond the old leader's range (the new leader may have more) must not move the consumer.
        let (code, next, remark) = pull(&c, TOPIC, 0, 100).await;
        assert_ne!(code, ResponseCode::PULL_OFFSET_MOVED.0, "deposed leader answered OFFSET_MOVED to {next}: {remark}");
        assert_eq!((code, next), (ResponseCode::PULL_RETRY_IMMEDIATELY.0, 100), "retry at the same offset: {remark}");

        // Its registration must not hand brokerId 0 back to it.
        let id = g.brokers[old].register_now().await;
        assert_ne!(id, 0, "a leader no quorum confirms registers as a slave");
        let route = g.namesrv.routes().route(TOPIC).expect("route");
        assert_eq!(route.broker_datas[0].master_addr(), Some(g.addr(new).as_str()), "brokerId 0 is the new leader");

        // Healed, it follows and everything works again.
        g.brokers[old].node().set_isolated(false);
        let c_new = g.client(new).await;
        send(&c_new, TOPIC, 0, b"after").await.expect("send at the new leader");
        let (code, next, _) = pull(&c_new, TOPIC, 0, 100).await;
        assert_eq!((code, next), (ResponseCode::PULL_OFFSET_MOVED.0, 0));
        g.shutdown().await;
    });
}
