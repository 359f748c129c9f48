//! The read-only admin requests RocketMQ's tools send (crates/broker/src/admin.rs), over the wire from real
//! `raftmq` binaries: GET_TOPIC_STATS_INFO (202) reports each queue's min/max offset and newest store time,
//! GET_CONSUME_STATS (208) a group's committed offsets against the queues' max offsets (per topic or for
//! every topic the group has offsets on), GET_BROKER_RUNTIME_INFO (28) the Raft and commitlog figures and
//! GET_ALL_TOPIC_CONFIG (21) the topic table; unknown topics get 17 TOPIC_NOT_EXIST. The connection lists
//! (203, 204) name each live client of a group with its address, language and version.

mod common;

use common::*;
use raftmq_remoting::body::{
    decode_json_body, encode_json_body, ConsumeFromWhere, ConsumeType, ConsumerConnection, ConsumerData, HeartbeatData, KvTable,
    ProducerConnection, ProducerData, SubscriptionData, TopicConfigSerializeWrapper,
};
use raftmq_remoting::header::{
    ConsumerGroupHeader, GetConsumeStatsRequestHeader, GetProducerConnectionListRequestHeader, GetTopicStatsInfoRequestHeader,
};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

fn body_text(r: &RemotingCommand) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn queue_key(topic: &str, q: i32) -> String {
    format!(r#"{{"brokerName":"broker-a","queueId":{q},"topic":"{topic}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqadmin_statistics_follow_sends_and_commits() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_registered_leader(std::time::Duration::from_secs(30)).await;
    let c = client(&cluster.node(leader).client_addr).await.expect("connect to the leader");
    for i in 0..5 {
        send(&c, "TStats", 1, format!("m{i}").as_bytes()).await.expect("send");
    }
    assert_eq!(commit_offset(&c, "g_stats", "TStats", 1, 3).await, ResponseCode::SUCCESS.0);

    // 202: queue 1 holds offsets 0..5; the other queues are empty.
    let h = GetTopicStatsInfoRequestHeader { topic: "TStats".into() };
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_TOPIC_STATS_INFO, 0).with_header(&h), TIMEOUT).await.expect("202");
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let text = body_text(&r);
    let q1 = format!("{}:{{\"lastUpdateTimestamp\":", queue_key("TStats", 1));
    assert!(text.contains(&q1) && text.contains(r#","maxOffset":5,"minOffset":0}"#), "{text}");
    assert!(text.contains(&format!(r#"{}:{{"lastUpdateTimestamp":0,"maxOffset":0,"minOffset":0}}"#, queue_key("TStats", 0))), "{text}");
    let h = GetTopicStatsInfoRequestHeader { topic: "NoSuchTopic".into() };
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_TOPIC_STATS_INFO, 0).with_header(&h), TIMEOUT).await.expect("202");
    assert_eq!(r.code, ResponseCode::TOPIC_NOT_EXIST.0, "{:?}", r.remark);

    // 208: committed 3 of 5 on queue 1; with the topic named and without (every topic the group has offsets on).
    for topic in [Some("TStats".to_string()), None] {
        let h = GetConsumeStatsRequestHeader { consumer_group: "g_stats".into(), topic: topic.clone() };
        let r = c.invoke(RemotingCommand::request(RequestCode::GET_CONSUME_STATS, 0).with_header(&h), TIMEOUT).await.expect("208");
        assert_eq!(r.code, 0, "{:?}", r.remark);
        let text = body_text(&r);
        let q1 = format!(r#"{}:{{"brokerOffset":5,"consumerOffset":3,"lastTimestamp":"#, queue_key("TStats", 1));
        assert!(text.contains(&q1) && text.ends_with(r#","consumeTps":0.0}"#), "topic {topic:?}: {text}");
        assert!(!text.contains(&format!(r#"{}:{{"brokerOffset":5,"consumerOffset":3,"lastTimestamp":0}}"#, queue_key("TStats", 1))));
    }
    let h = GetConsumeStatsRequestHeader { consumer_group: "g_stats".into(), topic: Some("NoSuchTopic".into()) };
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_CONSUME_STATS, 0).with_header(&h), TIMEOUT).await.expect("208");
    assert_eq!(r.code, ResponseCode::TOPIC_NOT_EXIST.0);

    // 28 and 21.
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_BROKER_RUNTIME_INFO, 0), TIMEOUT).await.expect("28");
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let kv: KvTable = decode_json_body("runtime info", &r.body).expect("a KVTable");
    assert_eq!(kv.table["raftRole"], "Leader");
    assert!(kv.table["commitLogMaxOffset"].parse::<u64>().unwrap() > 0, "{kv:?}");
    assert!(kv.table["runtime"].starts_with("[ 0 days"), "{kv:?}");
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_ALL_TOPIC_CONFIG, 0), TIMEOUT).await.expect("21");
    let w: TopicConfigSerializeWrapper = decode_json_body("topic config", &r.body).expect("a TopicConfigSerializeWrapper");
    assert!(w.topic_config_table.contains_key("TStats"), "{:?}", w.topic_config_table.keys().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lists_name_each_live_client_of_a_group() {
    let cluster = Cluster::start(1).await;
    let addr = cluster.node(cluster.leader(std::time::Duration::from_secs(30)).await).client_addr.clone();
    let admin = client(&addr).await.expect("connect");
    let ask_consumers = |group: &str| {
        RemotingCommand::request(RequestCode::GET_CONSUMER_CONNECTION_LIST, 0)
            .with_header(&ConsumerGroupHeader { consumer_group: group.into() })
    };
    let ask_producers = |group: &str| {
        RemotingCommand::request(RequestCode::GET_PRODUCER_CONNECTION_LIST, 0)
            .with_header(&GetProducerConnectionListRequestHeader { producer_group: group.into() })
    };
    let r = admin.invoke(ask_consumers("cg_conn"), TIMEOUT).await.expect("203");
    assert_eq!((r.code, r.remark.as_deref()), (ResponseCode::CONSUMER_NOT_ONLINE.0, Some("the consumer group[cg_conn] not online")));
    let r = admin.invoke(ask_producers("pg_conn"), TIMEOUT).await.expect("204");
    assert_eq!((r.code, r.remark.as_deref()), (ResponseCode::SYSTEM_ERROR.0, Some("the producer group[pg_conn] not exist")));

    // One client heartbeats as a pull consumer of cg_conn (two topics) and a producer of pg_conn.
    let member = client(&addr).await.expect("connect");
    let sub =
        |topic: &str, expr: &str| SubscriptionData { topic: topic.into(), sub_string: expr.into(), sub_version: 7, ..Default::default() };
    let hb = HeartbeatData {
        client_id: "10.1.1.1@conn-test".into(),
        producer_data_set: vec![ProducerData { group_name: "pg_conn".into() }],
        consumer_data_set: vec![ConsumerData {
            group_name: "cg_conn".into(),
            consume_type: ConsumeType::ConsumeActively,
            consume_from_where: ConsumeFromWhere::ConsumeFromFirstOffset,
            subscription_data_set: vec![sub("TConnB", "TagA || TagB"), sub("TConnA", "*")],
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = member
        .invoke(RemotingCommand::request(RequestCode::HEART_BEAT, 0).with_body(encode_json_body(&hb).expect("heartbeat")), TIMEOUT)
        .await
        .expect("heartbeat");
    assert_eq!(r.code, 0, "{:?}", r.remark);

    let r = admin.invoke(ask_consumers("cg_conn"), TIMEOUT).await.expect("203");
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let text = body_text(&r);
    let cc: ConsumerConnection = decode_json_body("consumer connection", &r.body).expect("a ConsumerConnection");
    assert_eq!(cc.connection_set.len(), 1, "{text}");
    let conn = &cc.connection_set[0];
    assert_eq!(conn.client_id, "10.1.1.1@conn-test");
    assert!(conn.client_addr.starts_with("127.0.0.1:") && conn.client_addr != addr, "the client's own address: {text}");
    let sent = RemotingCommand::request(RequestCode::HEART_BEAT, 0);
    assert_eq!((conn.language.as_str(), conn.version), (sent.language.name(), i64::from(sent.version)), "as the heartbeat said: {text}");
    assert_eq!((cc.consume_type, cc.consume_from_where), (ConsumeType::ConsumeActively, ConsumeFromWhere::ConsumeFromFirstOffset));
    assert_eq!(cc.subscription_table.keys().collect::<Vec<_>>(), ["TConnA", "TConnB"]);
    let b = &cc.subscription_table["TConnB"];
    assert_eq!(
        (b.tags_set.clone(), b.code_set.clone(), b.sub_version),
        (vec!["TagA".to_string(), "TagB".into()], vec![2598919, 2598920], 7)
    );
    assert!(text.contains(r#""messageModel":"CLUSTERING""#) && text.contains(r#""consumeType":"CONSUME_ACTIVELY""#), "{text}");

    let r = admin.invoke(ask_producers("pg_conn"), TIMEOUT).await.expect("204");
    assert_eq!(r.code, 0, "{:?}", r.remark);
    let pc: ProducerConnection = decode_json_body("producer connection", &r.body).expect("a ProducerConnection");
    assert_eq!(pc.connection_set.iter().map(|c| c.client_id.as_str()).collect::<Vec<_>>(), ["10.1.1.1@conn-test"]);

    // The client's connection closes: it is no longer listed.
    drop(member);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = admin.invoke(ask_consumers("cg_conn"), TIMEOUT).await.expect("203");
        if r.code == ResponseCode::CONSUMER_NOT_ONLINE.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a closed client stays listed: {}", body_text(&r));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = admin.invoke(ask_producers("pg_conn"), TIMEOUT).await.expect("204");
    assert_eq!(r.code, ResponseCode::SYSTEM_ERROR.0, "{}", body_text(&r));
}
