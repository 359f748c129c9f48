//! Subscription groups and topic deletion over the wire, on real `raftmq` binaries (3 nodes):
//! UPDATE_AND_CREATE_SUBSCRIPTIONGROUP (200) and DELETE_SUBSCRIPTIONGROUP (207) sent to a follower are forwarded
//! to the leader and replicated, so GET_ALL_SUBSCRIPTIONGROUP_CONFIG (201) shows them on every member; a group
//! with consumeEnable=false is refused its pulls; DELETE_TOPIC_IN_BROKER (215, via a follower) removes the
//! topic and its offsets on every member and, through the next registration, from the nameserver's routes;
//! DELETE_TOPIC_IN_NAMESRV (216) drops a route at once; system topics are refused; a topic created again starts
//! at offset 0; and all of it holds after a kill -9 and restart of a follower (log replay) and of every node
//! (checkpoint past the deletion). The CLI's `admin topic delete` and `admin group list|describe|create|delete`
//! run against the same cluster.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftmq_net::RemotingClient;
use raftmq_remoting::body::{
    decode_json_body, encode_json_body, ConsumeStats, SubscriptionGroupConfig, SubscriptionGroupWrapper, TopicConfigSerializeWrapper,
};
use raftmq_remoting::header::{
    DeleteSubscriptionGroupRequestHeader, DeleteTopicRequestHeader, GetConsumeStatsRequestHeader, GetTopicStatsInfoRequestHeader,
};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

fn raftmq(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftmq")).args(args).output().expect("run raftmq");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn invoke(c: &RemotingClient, cmd: RemotingCommand) -> RemotingCommand {
    c.invoke(cmd, TIMEOUT).await.expect("request")
}

async fn upsert_group(c: &RemotingClient, g: &SubscriptionGroupConfig) -> RemotingCommand {
    invoke(c, RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, 0).with_body(encode_json_body(g).unwrap())).await
}

async fn groups_at(addr: &str) -> Option<SubscriptionGroupWrapper> {
    let c = client(addr).await?;
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_ALL_SUBSCRIPTIONGROUP_CONFIG, 0), TIMEOUT).await.ok()?;
    (r.code == 0).then(|| decode_json_body("groups", &r.body).expect("a SubscriptionGroupWrapper"))
}

async fn topics_at(addr: &str) -> Option<Vec<String>> {
    let c = client(addr).await?;
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_ALL_TOPIC_CONFIG, 0), TIMEOUT).await.ok()?;
    let w: TopicConfigSerializeWrapper = decode_json_body("topics", &r.body).ok()?;
    Some(w.topic_config_table.into_keys().collect())
}

async fn topic_stats_code(addr: &str, topic: &str) -> Option<i32> {
    let c = client(addr).await?;
    let h = GetTopicStatsInfoRequestHeader { topic: topic.into() };
    c.invoke(RemotingCommand::request(RequestCode::GET_TOPIC_STATS_INFO, 0).with_header(&h), TIMEOUT).await.ok().map(|r| r.code)
}

/// Retries `check` (every 100 ms) until it holds or `within` passes; the last failure is the panic message.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What every member must show once the deletion of TDel (and the recreation of TRe by one send) applied.
async fn deleted_everywhere(cluster: &Cluster, within: Duration) {
    for n in &cluster.nodes {
        let addr = n.client_addr.clone();
        eventually(within, &format!("node {} after the deletion", n.id), || {
            let addr = addr.clone();
            async move {
                let topics = topics_at(&addr).await.ok_or("21 unanswered")?;
                if topics.iter().any(|t| t == "TDel") {
                    return Err(format!("TDel still listed: {topics:?}"));
                }
                if !topics.iter().any(|t| t == "TKeep") {
                    return Err(format!("TKeep gone: {topics:?}"));
                }
                match topic_stats_code(&addr, "TDel").await {
                    Some(code) if code == ResponseCode::TOPIC_NOT_EXIST.0 => {}
                    other => return Err(format!("202 of TDel answered {other:?}")),
                }
                // g_del's offsets as this member holds them (208 answers from the local state; 14 reads only
                // the leader): TKeep's stay, TDel's and TRe's went with the topics.
                let c = client(&addr).await.ok_or("connect")?;
                let h = GetConsumeStatsRequestHeader { consumer_group: "g_del".into(), topic: None };
                let r = c
                    .invoke(RemotingCommand::request(RequestCode::GET_CONSUME_STATS, 0).with_header(&h), TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                let stats = ConsumeStats::decode(&r.body).map_err(|e| e.to_string())?;
                let offsets: Vec<(String, i32, i64)> = stats
                    .offset_table
                    .iter()
                    .filter(|(_, o)| o.consumer_offset > 0)
                    .map(|(q, o)| (q.topic.clone(), q.queue_id, o.consumer_offset))
                    .collect();
                if offsets != vec![("TKeep".to_string(), 0, 2)] {
                    return Err(format!("g_del's offsets: {offsets:?}"));
                }
                // TRe was deleted with g_del's offset 4 on it, then created again by one send: it starts at 0.
                if max_offset(&c, "TRe", 0).await != 1 {
                    return Err(format!("TRe queue 0 ends at {}", max_offset(&c, "TRe", 0).await));
                }
                let got = pull_all(&c, "TRe", 0).await;
                if got != vec![(0, b"reborn".to_vec())] {
                    return Err(format!("TRe queue 0 holds {got:?}"));
                }
                Ok(())
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_topic_deletion_are_replicated_and_survive_restarts() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let lc = client(&cluster.node(leader).client_addr).await.expect("connect to the leader");
    let fc = client(&cluster.node(follower).client_addr).await.expect("connect to a follower");

    // --- Subscription groups: created on a follower (forwarded), listed on every member.
    send(&lc, "TKeep", 0, b"k0").await.expect("send");
    let disabled = SubscriptionGroupConfig { consume_enable: false, retry_max_times: 3, ..SubscriptionGroupConfig::new("test_consumer") };
    let r = upsert_group(&fc, &disabled).await;
    assert_eq!(r.code, 0, "200 on a follower: {:?}", r.remark);
    for n in &cluster.nodes {
        let addr = n.client_addr.clone();
        let want = disabled.clone();
        eventually(Duration::from_secs(10), "201 lists the group", || {
            let (addr, want) = (addr.clone(), want.clone());
            async move {
                let w = groups_at(&addr).await.ok_or("201 unanswered")?;
                match w.subscription_group_table.get("test_consumer") {
                    Some(g) if *g == want => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }
    // consumeEnable=false: the group's pulls are refused; enabled again, they are served.
    let (code, _, _) = pull(&lc, "TKeep", 0, 0).await;
    assert_eq!(code, ResponseCode::NO_PERMISSION.0);
    let r = upsert_group(&fc, &SubscriptionGroupConfig::new("test_consumer")).await;
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let (code, _, msgs) = pull(&lc, "TKeep", 0, 0).await;
    assert_eq!((code, msgs.len()), (0, 1));
    // A bad body and a bad name are refused with a remark.
    let r = invoke(&fc, RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, 0).with_body(&b"{"[..])).await;
    assert_eq!(r.code, ResponseCode::SYSTEM_ERROR.0);
    assert!(r.remark.unwrap_or_default().contains("bad subscription group body"));
    let r = upsert_group(&fc, &SubscriptionGroupConfig::new("a b")).await;
    assert!(r.code == ResponseCode::SYSTEM_ERROR.0 && r.remark.clone().unwrap_or_default().contains("illegal character"), "{r:?}");
    // A group known only from its offsets is listed as implicit.
    assert_eq!(commit_offset(&lc, "g_del", "TKeep", 0, 2).await, 0);
    let w = groups_at(&cluster.node(leader).client_addr).await.expect("201");
    assert!(w.subscription_group_table.get("g_del").is_some_and(|g| g.raftmq_implicit), "{w:?}");
    assert!(w.data_version.counter > 0 && w.data_version.timestamp > 0, "{:?}", w.data_version);
    // Deleted on a follower (forwarded), gone on every member.
    let h = DeleteSubscriptionGroupRequestHeader { group_name: "test_consumer".into(), clean_offset: true };
    let r = invoke(&fc, RemotingCommand::request(RequestCode::DELETE_SUBSCRIPTIONGROUP, 0).with_header(&h)).await;
    assert_eq!(r.code, 0, "207: {:?}", r.remark);
    for n in &cluster.nodes {
        let addr = n.client_addr.clone();
        eventually(Duration::from_secs(10), "the deleted group is not configured", || {
            let addr = addr.clone();
            async move {
                let w = groups_at(&addr).await.ok_or("201 unanswered")?;
                match w.subscription_group_table.get("test_consumer") {
                    Some(g) if !g.raftmq_implicit => Err(format!("still configured: {g:?}")),
                    _ => Ok(()),
                }
            }
        })
        .await;
    }

    // --- Topic deletion.
    for i in 0..5 {
        send(&lc, "TDel", 1, format!("d{i}").as_bytes()).await.expect("send TDel");
        send(&lc, "TRe", 0, format!("r{i}").as_bytes()).await.expect("send TRe");
    }
    assert_eq!(commit_offset(&lc, "g_del", "TDel", 1, 3).await, 0);
    assert_eq!(commit_offset(&lc, "g_del", "TRe", 0, 4).await, 0);
    assert!(route(&cluster.namesrv, "TDel").await.expect("route").is_some());
    // System topics are refused, with RocketMQ's code and remark.
    for t in ["SCHEDULE_TOPIC_XXXX", "TBW102", "RMQ_SYS_TRANS_HALF_TOPIC", "rmq_sys_wheel_timer"] {
        let h = DeleteTopicRequestHeader { topic: t.into(), cluster_name: None };
        let r = invoke(&fc, RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_BROKER, 0).with_header(&h)).await;
        assert_eq!(r.code, ResponseCode::SYSTEM_ERROR.0, "{t}");
        assert_eq!(r.remark.as_deref(), Some(format!("The topic[{t}] is conflict with system topic.").as_str()));
    }
    for t in ["TDel", "TRe"] {
        let h = DeleteTopicRequestHeader { topic: t.into(), cluster_name: None };
        let r = invoke(&fc, RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_BROKER, 0).with_header(&h)).await;
        assert_eq!(r.code, 0, "215 of {t} on a follower: {:?}", r.remark);
    }
    // The leader registers at once without the topic: the nameserver drops its route.
    eventually(Duration::from_secs(10), "the route of TDel goes with the next registration", || async {
        match route(&cluster.namesrv, "TDel").await? {
            None => Ok(()),
            Some(r) => Err(format!("{r:?}")),
        }
    })
    .await;
    // A send to the deleted topic is a send to a new topic (auto-created): it starts at offset 0.
    assert_eq!(send(&lc, "TRe", 0, b"reborn").await.expect("send to the deleted topic"), 0);
    assert_eq!(query_offset(&lc, "g_del", "TRe", 0).await, None, "the old offset 4 went with the topic");
    deleted_everywhere(&cluster, Duration::from_secs(10)).await;
    // Deleting again is a no-op success.
    let h = DeleteTopicRequestHeader { topic: "TDel".into(), cluster_name: None };
    assert_eq!(invoke(&lc, RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_BROKER, 0).with_header(&h)).await.code, 0);
    // 216 drops a route on the nameserver at once (the leader, which still lists TKeep, brings it back with its
    // next registration: wait out the one the deletion above triggered, so that none lands between the two
    // requests; the periodic one comes every 30 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ns = client(&cluster.namesrv).await.expect("connect to the nameserver");
    let h = DeleteTopicRequestHeader { topic: "TKeep".into(), cluster_name: Some("NoSuchCluster".into()) };
    assert_eq!(invoke(&ns, RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_NAMESRV, 0).with_header(&h)).await.code, 0);
    assert!(route(&cluster.namesrv, "TKeep").await.expect("route").is_some(), "another cluster's deletion keeps the route");
    let h = DeleteTopicRequestHeader { topic: "TKeep".into(), cluster_name: None };
    assert_eq!(invoke(&ns, RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_NAMESRV, 0).with_header(&h)).await.code, 0);
    assert!(route(&cluster.namesrv, "TKeep").await.expect("route").is_none());

    // --- The CLI.
    let nsa = cluster.namesrv.clone();
    let (ok, out) = raftmq(&["admin", "--namesrv", &nsa, "group", "create", "--group", "cli_group", "--retry-max-times", "5"]);
    assert!(ok && out.contains("stored subscription group cli_group on broker-a"), "{out}");
    let (ok, out) = raftmq(&["admin", "--namesrv", &nsa, "group", "list"]);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.contains("cli_group")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.split_whitespace().collect::<Vec<_>>()[2..5] == ["true", "5", "false"], "{line}");
    assert!(out.lines().any(|l| l.contains("g_del") && l.contains("true")), "g_del is implicit: {out}");
    let (ok, out) = raftmq(&["admin", "--namesrv", &nsa, "group", "describe", "--group", "g_del"]);
    assert!(ok, "{out}");
    assert!(out.contains("\"raftmqImplicit\":true"), "{out}");
    // Queue 0 of TKeep: broker max 1, the group's offset 2 (committed beyond the end), no lag.
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["broker-a", "TKeep", "0", "1", "2", "0"]), "{out}");
    assert!(!out.contains("TDel"), "{out}");
    let (ok, out) = raftmq(&["admin", "--namesrv", &nsa, "group", "delete", "--group", "cli_group", "--clean-offset"]);
    assert!(ok && out.contains("deleted subscription group cli_group on broker-a with its offsets"), "{out}");
    send(&lc, "TCli", 0, b"c").await.expect("send TCli");
    let (ok, out) = raftmq(&["admin", "--namesrv", &nsa, "topic", "delete", "--topic", "TCli"]);
    assert!(ok && out.contains("deleted TCli on broker-a") && out.contains(&format!("nameserver {nsa}")), "{out}");
    assert!(route(&cluster.namesrv, "TCli").await.expect("route").is_none());
    let (ok, out) = raftmq(&["admin", "--namesrv", &nsa, "topic", "delete", "--topic", "SCHEDULE_TOPIC_XXXX"]);
    assert!(!ok && out.contains("conflict with system topic"), "{out}");

    // A configured group the restarts below must keep.
    let kept = SubscriptionGroupConfig { consume_enable: false, retry_max_times: 7, ..SubscriptionGroupConfig::new("kept_group") };
    assert_eq!(upsert_group(&fc, &kept).await.code, 0);

    // --- kill -9 a follower and restart it: it replays the log (no checkpoint covers the deletion yet).
    cluster.kill(follower);
    cluster.start_node(follower);
    deleted_everywhere(&cluster, Duration::from_secs(30)).await;

    // --- Enough entries for a checkpoint past the deletion (every 1024 indexes), then kill -9 every node.
    for i in 0..1100 {
        send(&lc, "TFill", 0, format!("f{i}").as_bytes()).await.expect("send TFill");
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    deleted_everywhere(&cluster, Duration::from_secs(30)).await;
    for n in &cluster.nodes {
        let w = groups_at(&n.client_addr).await.expect("201 after the restart");
        assert!(!w.subscription_group_table.contains_key("cli_group"), "node {}: the deleted group came back", n.id);
        let kept = w.subscription_group_table.get("kept_group");
        assert!(kept.is_some_and(|g| !g.raftmq_implicit && !g.consume_enable && g.retry_max_times == 7), "node {}: {kept:?}", n.id);
    }
}

/// With a cluster secret the nameserver takes DELETE_TOPIC_IN_NAMESRV only signed with it; `raftmq admin
/// topic delete` signs it with the file RAFTMQ_CLUSTER_SECRET_FILE names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_secret_only_a_signed_216_deletes_a_route() {
    use std::os::unix::fs::PermissionsExt;
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("cluster-secret");
    std::fs::write(&secret, "admin-groups-cluster-secret-0123456789\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cluster = Cluster::prepare(1, &format!("clusterSecretFile = \"{}\"\n", secret.display()));
    cluster.start_node(1);
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&cluster.node(1).client_addr).await.expect("connect");
    send(&c, "TSecret", 0, b"s").await.expect("send");
    eventually(Duration::from_secs(10), "TSecret routed", || async {
        route(&cluster.namesrv, "TSecret").await?.map(|_| ()).ok_or_else(|| "no route yet".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Unsigned: refused, the route stays.
    let ns = client(&cluster.namesrv).await.expect("connect to the nameserver");
    let h = DeleteTopicRequestHeader { topic: "TSecret".into(), cluster_name: None };
    let r = invoke(&ns, RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_NAMESRV, 0).with_header(&h)).await;
    assert_eq!(r.code, ResponseCode::NO_PERMISSION.0);
    assert!(r.remark.unwrap_or_default().starts_with("topic deletion refused"));
    assert!(route(&cluster.namesrv, "TSecret").await.expect("route").is_some());
    // The CLI without the secret file: 215 succeeds (a broker without ACL takes it), 216 is refused and said so.
    let cli = |with_secret: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_raftmq"));
        cmd.args(["admin", "--namesrv", &cluster.namesrv, "topic", "delete", "--topic", "TSecret"])
            .env_remove("RAFTMQ_CLUSTER_SECRET_FILE");
        if with_secret {
            cmd.env("RAFTMQ_CLUSTER_SECRET_FILE", &secret);
        }
        let out = cmd.output().expect("run raftmq");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (ok, out) = cli(false);
    assert!(!ok && out.contains("deleted on broker groups [\"broker-a\"]") && out.contains("topic deletion refused"), "{out}");
    let (ok, out) = cli(true);
    assert!(ok && out.contains("deleted the route of TSecret on nameserver"), "{out}");
    assert!(route(&cluster.namesrv, "TSecret").await.expect("route").is_none());
}
