//! A nameserver that comes up after the group elected its leader (the leader's registrations so far all
//! failed): the leader must be published as brokerId 0 within seconds, by the retry of a registration no
//! nameserver accepted — not only by the next 30 s period (the multi-process tests wait 30 s for a
//! registered leader, which a start-up on a loaded machine could miss by a hair).

use std::time::{Duration, Instant};

use crate::common::{free_port, start_brokers, Group};
use raftmq_broker::broker::REGISTER_INTERVAL;
use raftmq_raft::node::Role;

#[test]
fn a_late_nameserver_learns_the_leader_long_before_the_registration_period() {
    crate::common::runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = format!("127.0.0.1:{}", free_port());
        let brokers = start_brokers(&dir, &ns, "").await;
        // The premise: a ready leader whose registrations (at start-up and on each role change) all failed.
        let deadline = Instant::now() + Duration::from_secs(20);
        let leader = loop {
            if let Some(i) = brokers.iter().position(|b| {
                let r = b.node().role().borrow().clone();
                r.role == Role::Leader && r.ready
            }) {
                break i;
            }
            assert!(Instant::now() < deadline, "no ready leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let g = Group::with_late_namesrv(dir, &ns, brokers).await;
        let started = Instant::now();
        let bound = Duration::from_secs(8);
        assert!(bound < REGISTER_INTERVAL / 2, "the bound separates a retry from the period");
        let master = loop {
            let route = g.namesrv.routes().route("TBW102");
            if let Some(addr) = route.as_ref().and_then(|r| r.broker_datas.first()).and_then(|b| b.master_addr().map(String::from)) {
                break addr;
            }
            assert!(started.elapsed() < bound, "no master registered {:?} after the nameserver came up", started.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("master registered {:?} after the nameserver came up", started.elapsed());
        assert_eq!(master, g.addr(leader));
        g.shutdown().await;
    });
}
