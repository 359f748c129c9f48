//! Unbounded state from client input, against an in-process single-node broker: names are checked where a
//! topic or group is born, retry and dead-letter topics need a known group when auto-create is off, offsets
//! are replicated only for existing queues, and every table stops at its limit with a clear answer.

use std::time::Duration;

use raftmq_broker::config::BrokerConfig;
use raftmq_broker::Broker;
use raftmq_net::RemotingClient;
use raftmq_remoting::body::decode_json_body;
use raftmq_remoting::body::{
    encode_json_body, ConsumerData, HeartbeatData, LockBatchRequestBody, LockBatchResponseBody, MessageQueue, SubscriptionData,
};
use raftmq_remoting::header::{
    ConsumerSendMsgBackRequestHeader, CreateTopicRequestHeader, SendMessageRequestHeader, SendMessageResponseHeader,
    UpdateConsumerOffsetRequestHeader,
};
use raftmq_remoting::message::decode_offset_msg_id;
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const TIMEOUT: Duration = Duration::from_secs(10);

struct Node {
    broker: Broker,
    client: RemotingClient,
    _dir: tempfile::TempDir,
}

#[path = "support/ports.rs"]
mod ports;
use ports::free_port;

/// A bootstrapped single-node broker group, ready to accept writes, with `tweak` applied to its config.
async fn start(tweak: impl FnOnce(&mut BrokerConfig)) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "brokerName = \"broker-a\"\nnodeId = 1\nstorePathRootDir = \"{}\"\nmappedFileSizeCommitLog = 8388608\ndiskMaxUsedSpaceRatio = 0.99\nbootstrap = true\n\
         [[peers]]\nid = 1\nraftAddr = \"127.0.0.1:{}\"\nclientAddr = \"127.0.0.1:{}\"\n",
        dir.path().display(),
        free_port(),
        free_port()
    );
    let mut cfg = BrokerConfig::from_toml(&toml).expect("config");
    tweak(&mut cfg);
    let broker = Broker::start(cfg).await.expect("broker starts");
    let mut role = broker.node().role();
    tokio::time::timeout(TIMEOUT, role.wait_for(|r| r.ready)).await.expect("leader in time").expect("role watch");
    let client = RemotingClient::connect(&broker.local_addr().to_string(), TIMEOUT, None).await.expect("connect");
    Node { broker, client, _dir: dir }
}

impl Node {
    async fn call(&self, cmd: RemotingCommand) -> (i32, String) {
        let r = self.client.invoke(cmd, TIMEOUT).await.expect("answered");
        (r.code, r.remark.unwrap_or_default())
    }

    fn topics(&self) -> Vec<String> {
        self.broker.node().state().with_metadata(|m| m.state.topics.keys().cloned().collect())
    }

    fn offsets(&self) -> Vec<(String, String, u32, u64)> {
        self.broker.node().state().with_metadata(|m| {
            let mut v = Vec::new();
            for (g, ts) in &m.state.consumer_offsets {
                for (t, qs) in ts {
                    for (q, o) in qs {
                        v.push((g.clone(), t.clone(), *q, *o));
                    }
                }
            }
            v
        })
    }

    async fn create_topic(&self, topic: &str, queues: i32) -> (i32, String) {
        let h = CreateTopicRequestHeader {
            topic: topic.into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm: 6,
            ..Default::default()
        };
        self.call(RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 0).with_header(&h)).await
    }

    /// Sends one message; Ok(physical offset) or Err((code, remark)).
    async fn send(&self, topic: &str) -> Result<i64, (i32, String)> {
        let h = SendMessageRequestHeader {
            producer_group: "pg".into(),
            topic: topic.into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: 0,
            properties: Some(String::new()),
            ..Default::default()
        };
        let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(b"body".to_vec());
        h.write_ext_fields_v2(&mut cmd.ext_fields);
        let r = self.client.invoke(cmd, TIMEOUT).await.expect("answered");
        if r.code != ResponseCode::SUCCESS.0 {
            return Err((r.code, r.remark.unwrap_or_default()));
        }
        let rh: SendMessageResponseHeader = r.decode_header().expect("send header");
        Ok(decode_offset_msg_id(&rh.msg_id).expect("offset msg id").commit_log_offset)
    }

    async fn send_back(&self, group: &str, phys: i64) -> (i32, String) {
        let h = ConsumerSendMsgBackRequestHeader { offset: phys, group: group.into(), delay_level: 0, ..Default::default() };
        self.call(RemotingCommand::request(RequestCode::CONSUMER_SEND_MSG_BACK, 0).with_header(&h)).await
    }

    async fn heartbeat(&self, client_id: &str, group: &str, topics: &[&str]) -> (i32, String) {
        let hb = HeartbeatData {
            client_id: client_id.into(),
            consumer_data_set: vec![ConsumerData {
                group_name: group.into(),
                subscription_data_set: topics
                    .iter()
                    .map(|t| SubscriptionData { topic: (*t).into(), sub_string: "*".into(), ..Default::default() })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let body = encode_json_body(&hb).expect("heartbeat body");
        self.call(RemotingCommand::request(RequestCode::HEART_BEAT, 0).with_body(body)).await
    }

    async fn commit(&self, group: &str, topic: &str, queue_id: i32, offset: i64) -> (i32, String) {
        let h = UpdateConsumerOffsetRequestHeader { consumer_group: group.into(), topic: topic.into(), queue_id, commit_offset: offset };
        self.call(RemotingCommand::request(RequestCode::UPDATE_CONSUMER_OFFSET, 0).with_header(&h)).await
    }
}

fn expect(got: (i32, String), code: ResponseCode, needle: &str) {
    assert_eq!(got.0, code.0, "remark: {}", got.1);
    assert!(got.1.contains(needle), "remark {:?} does not mention {needle:?}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_dlq_topics_need_a_valid_known_group_when_auto_create_is_off() {
    let n = start(|c| c.auto_create_topic_enable = false).await;
    assert_eq!(n.create_topic("T", 1).await.0, ResponseCode::SUCCESS.0);
    let phys = n.send("T").await.expect("send to an existing topic");
    expect(n.send("Unknown").await.unwrap_err(), ResponseCode::TOPIC_NOT_EXIST, "not exist");

    // No consumer of "stranger" ever sent a heartbeat: neither send-back nor a direct send may create its topics.
    expect(n.send_back("stranger", phys).await, ResponseCode::SUBSCRIPTION_GROUP_NOT_EXIST, "[stranger] does not exist");
    expect(n.send("%RETRY%stranger").await.unwrap_err(), ResponseCode::SUBSCRIPTION_GROUP_NOT_EXIST, "autoCreateTopicEnable is off");
    expect(n.send("%DLQ%stranger").await.unwrap_err(), ResponseCode::SUBSCRIPTION_GROUP_NOT_EXIST, "stranger");
    // Names are checked before anything else, wherever a group shows up.
    expect(n.send_back(&"g".repeat(121), phys).await, ResponseCode::SYSTEM_ERROR, "longer than 120 bytes");
    expect(n.send_back("bad group", phys).await, ResponseCode::SYSTEM_ERROR, "illegal character ' '");
    expect(n.heartbeat("c1", "bad/group", &["T"]).await, ResponseCode::SYSTEM_ERROR, "illegal character '/'");
    expect(n.heartbeat("c1", "g", &["bad topic"]).await, ResponseCode::SYSTEM_ERROR, "subscription: the topic name");
    expect(n.heartbeat("", "g", &["T"]).await, ResponseCode::SYSTEM_ERROR, "clientID");
    assert_eq!(n.topics(), vec!["T".to_string()], "no refused request created a topic");

    // A heartbeat makes the group known: its retry topic is born, and send-back works.
    assert_eq!(n.heartbeat("c1", "g", &["T"]).await.0, ResponseCode::SUCCESS.0);
    assert!(n.topics().contains(&"%RETRY%g".to_string()));
    assert_eq!(n.send_back("g", phys).await.0, ResponseCode::SUCCESS.0);
    assert_eq!(n.send("%DLQ%g").await.map(|_| ()), Ok(()), "the known group's dead-letter topic may be born");
    n.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_for_missing_queues_are_refused_and_not_replicated() {
    let n = start(|c| c.offset_groups_max = 2).await;
    assert_eq!(n.create_topic("T", 2).await.0, ResponseCode::SUCCESS.0);
    expect(n.commit("g", "NoSuchTopic", 0, 5).await, ResponseCode::TOPIC_NOT_EXIST, "NoSuchTopic");
    expect(n.commit("g", "T", 2, 5).await, ResponseCode::SYSTEM_ERROR, "queueId[2] is illegal");
    expect(n.commit("g", "T", -1, 5).await, ResponseCode::SYSTEM_ERROR, "queueId[-1] is illegal");
    expect(n.commit("bad group", "T", 0, 5).await, ResponseCode::SYSTEM_ERROR, "illegal character");
    assert!(n.offsets().is_empty(), "nothing was replicated: {:?}", n.offsets());

    assert_eq!(n.commit("g1", "T", 1, 5).await.0, ResponseCode::SUCCESS.0);
    assert_eq!(n.commit("g2", "T", 0, 6).await.0, ResponseCode::SUCCESS.0);
    // At offsetGroupsMax: a third group is refused, the known ones still commit.
    expect(n.commit("g3", "T", 0, 7).await, ResponseCode::SYSTEM_ERROR, "offsetGroupsMax");
    assert_eq!(n.commit("g1", "T", 0, 8).await.0, ResponseCode::SUCCESS.0);
    let mut got = n.offsets();
    got.sort();
    assert_eq!(got, vec![("g1".into(), "T".into(), 0, 8), ("g1".into(), "T".into(), 1, 5), ("g2".into(), "T".into(), 0, 6)]);
    n.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_table_stops_at_topics_max_on_every_path() {
    // TBW102 (created by the new leader) + A + B = 3.
    let n = start(|c| c.topics_max = 3).await;
    tokio::time::timeout(TIMEOUT, async {
        while !n.topics().contains(&"TBW102".to_string()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("TBW102 created");
    assert!(n.send("A").await.is_ok(), "auto-created");
    assert_eq!(n.create_topic("B", 4).await.0, ResponseCode::SUCCESS.0);
    expect(n.send("C").await.unwrap_err(), ResponseCode::SYSTEM_ERROR, "already holds 3 topics (topicsMax 3)");
    expect(n.create_topic("D", 4).await, ResponseCode::SYSTEM_ERROR, "topicsMax");
    // A heartbeat is still accepted; its group's retry topic just is not born.
    assert_eq!(n.heartbeat("c1", "g", &["A"]).await.0, ResponseCode::SUCCESS.0);
    let phys = n.send("A").await.expect("existing topics still take messages");
    expect(n.send_back("g", phys).await, ResponseCode::SYSTEM_ERROR, "topicsMax");
    assert_eq!(n.create_topic("B", 8).await.0, ResponseCode::SUCCESS.0, "an existing topic can still be updated");
    let mut topics = n.topics();
    topics.sort();
    assert_eq!(topics, vec!["A", "B", "TBW102"]);
    n.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_existing_queues_of_this_broker_can_be_locked() {
    let n = start(|c| c.locks_max = 2).await;
    assert_eq!(n.create_topic("T", 4).await.0, ResponseCode::SUCCESS.0);
    let mq = |topic: &str, broker: &str, id: i32| MessageQueue { topic: topic.into(), broker_name: broker.into(), queue_id: id };
    let lock = |group: &str, mqs: Vec<MessageQueue>| {
        let b = LockBatchRequestBody { consumer_group: group.into(), client_id: "c1".into(), mq_set: mqs, ..Default::default() };
        RemotingCommand::request(RequestCode::LOCK_BATCH_MQ, 0).with_body(encode_json_body(&b).expect("body"))
    };
    let r = n
        .client
        .invoke(lock("g", vec![mq("T", "broker-a", 0), mq("T", "broker-a", 9), mq("Nope", "broker-a", 0), mq("T", "other", 1)]), TIMEOUT)
        .await
        .expect("answered");
    assert_eq!(r.code, ResponseCode::SUCCESS.0);
    let body: LockBatchResponseBody = decode_json_body("lock", &r.body).expect("lock body");
    assert_eq!(body.lock_ok_mq_set, vec![mq("T", "broker-a", 0)], "missing queues and other brokers' queues are not locked");
    let r = n.client.invoke(lock("g", vec![mq("T", "broker-a", 1), mq("T", "broker-a", 2)]), TIMEOUT).await.expect("answered");
    let body: LockBatchResponseBody = decode_json_body("lock", &r.body).expect("lock body");
    assert_eq!(body.lock_ok_mq_set, vec![mq("T", "broker-a", 1)], "locksMax 2 reached");
    let bad = n.call(lock("bad group", vec![mq("T", "broker-a", 3)])).await;
    expect(bad, ResponseCode::SYSTEM_ERROR, "illegal character");
    n.broker.shutdown().await;
}
