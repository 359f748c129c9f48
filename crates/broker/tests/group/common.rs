//! In-process harness for broker tests: a nameserver and a 3-node broker group on free loopback ports in
//! one tokio runtime, plus the raw remoting calls (send, pull, send-back) tests use to observe exactly
//! what a client sees. Raft faults come from `RaftNode::set_isolated`, which cuts one member's Raft port.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raftmq_broker::config::BrokerConfig;
use raftmq_broker::Broker;
use raftmq_namesrv::NameServer;
use raftmq_net::RemotingClient;
use raftmq_raft::node::Role;
use raftmq_remoting::header::{PullMessageRequestHeader, PullMessageResponseHeader, SendMessageRequestHeader, SendMessageResponseHeader};
use raftmq_remoting::message::{encode_properties, property};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const TOPIC: &str = "TopicTest";

#[path = "../support/ports.rs"]
mod ports;
pub use ports::free_port;

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub struct Group {
    /// Holds the data directories until the group is dropped.
    _dir: tempfile::TempDir,
    pub namesrv: NameServer,
    pub brokers: Vec<Arc<Broker>>,
}

impl Group {
    /// Starts a nameserver and three brokers (node 1 bootstraps); waits for a ready leader.
    pub async fn start() -> Group {
        Group::start_with("").await
    }

    /// [`Group::start`] with `extra` TOML lines in every node's configuration.
    pub async fn start_with(extra: &str) -> Group {
        let dir = tempfile::tempdir().expect("tempdir");
        let namesrv = NameServer::start("127.0.0.1:0").await.expect("namesrv");
        let brokers = start_brokers(&dir, &namesrv.local_addr().to_string(), extra).await;
        let g = Group { _dir: dir, namesrv, brokers };
        g.wait_leader(None, Duration::from_secs(20)).await;
        g
    }

    /// A group whose nameserver starts only now, at `ns`, after its `brokers` (started by [`start_brokers`]
    /// with that address and `dir`).
    pub async fn with_late_namesrv(dir: tempfile::TempDir, ns: &str, brokers: Vec<Arc<Broker>>) -> Group {
        let namesrv = NameServer::start(ns).await.expect("namesrv");
        Group { _dir: dir, namesrv, brokers }
    }

    /// The index of a ready leader other than `not`.
    pub async fn wait_leader(&self, not: Option<usize>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, b) in self.brokers.iter().enumerate() {
                let r = b.node().role().borrow().clone();
                if Some(i) != not && r.role == Role::Leader && r.ready {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no ready leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn addr(&self, i: usize) -> String {
        self.brokers[i].local_addr().to_string()
    }

    pub async fn client(&self, i: usize) -> RemotingClient {
        RemotingClient::connect(&self.addr(i), TIMEOUT, None).await.expect("connect")
    }

    pub async fn shutdown(self) {
        for b in &self.brokers {
            b.shutdown().await;
        }
    }
}

/// Starts three brokers (node 1 bootstraps) registering with the nameserver at `ns` (which need not be up
/// yet), data under `dir`, with `extra` TOML lines in every node's configuration.
pub async fn start_brokers(dir: &tempfile::TempDir, ns: &str, extra: &str) -> Vec<Arc<Broker>> {
    let peers: Vec<(u64, String, String)> =
        (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()))).collect();
    let mut brokers = Vec::new();
    for (id, _, _) in &peers {
        let mut toml = format!(
            "brokerName = \"broker-a\"\nnodeId = {id}\nnamesrvAddr = \"{ns}\"\nstorePathRootDir = \"{}\"\n\
             mappedFileSizeCommitLog = 8388608\ndiskMaxUsedSpaceRatio = 0.99\ncommitLogPrefillAheadBytes = 0\nbootstrap = {}\n",
            dir.path().join(format!("n{id}")).display(),
            *id == 1
        );
        toml.push_str(extra);
        for (pid, pc, pr) in &peers {
            toml.push_str(&format!("[[peers]]\nid = {pid}\nraftAddr = \"{pr}\"\nclientAddr = \"{pc}\"\n"));
        }
        let cfg = BrokerConfig::from_toml(&toml).expect("config");
        brokers.push(Arc::new(Broker::start(cfg).await.expect("start broker")));
    }
    brokers
}

/// A SEND_MESSAGE_V2 request with the given extra properties and sysFlag.
pub fn send_request(topic: &str, queue_id: i32, body: &[u8], props: &[(&str, &str)], sys_flag: i32) -> RemotingCommand {
    let mut s = String::new();
    let mut list = vec![(property::WAIT_STORE_MSG_OK, "true")];
    list.extend_from_slice(props);
    encode_properties(list, &mut s).expect("properties");
    let h = SendMessageRequestHeader {
        producer_group: "test_producer".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id,
        sys_flag,
        born_timestamp: now_ms(),
        properties: Some(s),
        ..Default::default()
    };
    let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(body.to_vec());
    h.write_ext_fields_v2(&mut cmd.ext_fields);
    cmd
}

/// Sends one plain message; `Ok((queue offset, offsetMsgId))` on SEND_OK, `Err((code, remark))` otherwise.
pub async fn send(c: &RemotingClient, topic: &str, queue_id: i32, body: &[u8]) -> Result<(i64, String), (i32, String)> {
    send_cmd(c, send_request(topic, queue_id, body, &[], 0)).await
}

pub async fn send_cmd(c: &RemotingClient, cmd: RemotingCommand) -> Result<(i64, String), (i32, String)> {
    let r = c.invoke(cmd, TIMEOUT).await.map_err(|e| (-1, e.to_string()))?;
    if r.code != ResponseCode::SUCCESS.0 {
        return Err((r.code, r.remark.unwrap_or_default()));
    }
    let h: SendMessageResponseHeader = r.decode_header().map_err(|e| (-2, e.to_string()))?;
    Ok((h.queue_offset, h.msg_id))
}

/// Pulls from `offset` without long polling; returns (code, nextBeginOffset or -1, remark).
pub async fn pull(c: &RemotingClient, topic: &str, queue_id: i32, offset: i64) -> (i32, i64, String) {
    let h = PullMessageRequestHeader {
        consumer_group: "test_consumer".into(),
        topic: topic.into(),
        queue_id,
        queue_offset: offset,
        max_msg_nums: 32,
        subscription: Some("*".into()),
        ..Default::default()
    };
    let r = c.invoke(RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h), TIMEOUT).await.expect("pull");
    // Error answers (e.g. TOPIC_NOT_EXIST) carry no pull header: -1.
    let next = r.decode_header::<PullMessageResponseHeader>().map(|h| h.next_begin_offset).unwrap_or(-1);
    (r.code, next, r.remark.unwrap_or_default())
}

/// A message as a pull returned it.
#[derive(Debug)]
pub struct Pulled {
    pub offset: i64,
    pub phys: i64,
    pub reconsume_times: i32,
    pub body: Vec<u8>,
    pub store_timestamp: i64,
    pub sys_flag: i32,
    pub prepared_offset: i64,
    pub properties: std::collections::BTreeMap<String, String>,
}

/// The first 32 messages of a queue from offset 0 (none when the pull is not SUCCESS).
pub async fn pull_messages(c: &RemotingClient, topic: &str, queue_id: i32) -> Vec<Pulled> {
    let h = PullMessageRequestHeader {
        consumer_group: "test_consumer".into(),
        topic: topic.into(),
        queue_id,
        queue_offset: 0,
        max_msg_nums: 32,
        subscription: Some("*".into()),
        ..Default::default()
    };
    let r = c.invoke(RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h), TIMEOUT).await.expect("pull");
    if r.code != ResponseCode::SUCCESS.0 {
        return Vec::new();
    }
    raftmq_remoting::message::StoredMessages::new(&r.body)
        .map(|m| m.expect("stored message"))
        .map(|m| Pulled {
            offset: m.queue_offset,
            phys: m.physical_offset,
            reconsume_times: m.reconsume_times,
            body: m.body.to_vec(),
            store_timestamp: m.store_timestamp,
            sys_flag: m.sys_flag,
            prepared_offset: m.prepared_transaction_offset,
            properties: raftmq_remoting::message::decode_properties(m.properties),
        })
        .collect()
}

/// A CONSUMER_SEND_MSG_BACK of the message at commitlog `offset` for group `g` (delay level 0: the broker's
/// retry schedule), with the client's `maxReconsumeTimes` when given.
pub fn send_back_request(offset: i64, max_reconsume_times: Option<i32>) -> RemotingCommand {
    let h = raftmq_remoting::header::ConsumerSendMsgBackRequestHeader {
        offset,
        group: "g".into(),
        delay_level: 0,
        origin_msg_id: None,
        origin_topic: None,
        unit_mode: false,
        max_reconsume_times,
    };
    RemotingCommand::request(RequestCode::CONSUMER_SEND_MSG_BACK, 0).with_header(&h)
}

/// Waits until the group's replicated delay-level table is `want` (ms per level; the first leader proposes
/// its configured `messageDelayLevel`).
pub async fn wait_delay_levels(g: &Group, leader: usize, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.brokers[leader].node().state().with_metadata(|m| m.state.schedule.levels.clone()) != want {
        assert!(Instant::now() < deadline, "the configured delay levels {want:?} were not proposed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime")
}
