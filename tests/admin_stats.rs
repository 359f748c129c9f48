//! The read-only admin requests RocketMQ's tools send (crates/broker/src/admin.rs), over the wire from real
//! `raftmq` binaries: GET_TOPIC_STATS_INFO (202) reports each queue's min/max offset and newest store time,
//! GET_CONSUME_STATS (208) a group's committed offsets against the queues' max offsets (per topic or for
//! every topic the group has offsets on), GET_BROKER_RUNTIME_INFO (28) the Raft and commitlog figures and
//! GET_ALL_TOPIC_CONFIG (21) the topic table; unknown topics get 17 TOPIC_NOT_EXIST.

mod common;

use common::*;
use raftmq_remoting::body::{decode_json_body, KvTable, TopicConfigSerializeWrapper};
use raftmq_remoting::header::{GetConsumeStatsRequestHeader, GetTopicStatsInfoRequestHeader};
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
