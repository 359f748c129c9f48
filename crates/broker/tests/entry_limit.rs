//! The entry limit at the broker: a send request whose messages would make a Raft entry above `entryBytesMax`
//! is answered MESSAGE_ILLEGAL (13) with a remark naming its size and the limit, before anything is proposed;
//! a request within the limit is stored. One in-process broker on a single-member Raft group.

use std::time::{Duration, Instant};

use raftmq_broker::config::BrokerConfig;
use raftmq_broker::Broker;
use raftmq_net::RemotingClient;
use raftmq_raft::node::Role;
use raftmq_remoting::header::{SendMessageRequestHeader, SendMessageResponseHeader};
use raftmq_remoting::message::{encode_batch_message, BatchMessage};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const TOPIC: &str = "Big";
const TIMEOUT: Duration = Duration::from_secs(20);

async fn start_broker(dir: &std::path::Path) -> Broker {
    let toml = format!(
        "brokerName = \"broker-a\"\nnodeId = 1\nstorePathRootDir = \"{}\"\nmappedFileSizeCommitLog = 16777216\ndiskMaxUsedSpaceRatio = 0.99\n\
         bootstrap = true\n[[peers]]\nid = 1\nraftAddr = \"127.0.0.1:0\"\nclientAddr = \"127.0.0.1:0\"\n",
        dir.display()
    );
    let cfg = BrokerConfig::from_toml(&toml).expect("config");
    let broker = Broker::start(cfg).await.expect("start broker");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = broker.node().role().borrow().clone();
        if r.role == Role::Leader && r.ready {
            return broker;
        }
        assert!(Instant::now() < deadline, "the single member never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A SEND_BATCH_MESSAGE of one message per entry of `bodies` to queue 0 of [`TOPIC`].
fn batch_request(bodies: &[Vec<u8>]) -> RemotingCommand {
    let mut body = Vec::new();
    for b in bodies {
        encode_batch_message(&BatchMessage { flag: 0, body: b, properties: "" }, &mut body).expect("batch record");
    }
    let h = SendMessageRequestHeader {
        producer_group: "p".into(),
        topic: TOPIC.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 1,
        queue_id: 0,
        batch: Some(true),
        ..Default::default()
    };
    let mut cmd = RemotingCommand::request(RequestCode::SEND_BATCH_MESSAGE, 0).with_body(body);
    h.write_ext_fields_v2(&mut cmd.ext_fields);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_above_the_entry_limit_is_refused_with_message_illegal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = start_broker(dir.path()).await;
    let c = RemotingClient::connect(&broker.local_addr().to_string(), TIMEOUT, None).await.expect("connect");
    let max = 6 << 20; // the default entryBytesMax

    // Two messages within maxMessageSize (4 MiB) each, 7 MiB together: one entry would exceed the limit.
    let over = vec![vec![b'a'; 3_500_000], vec![b'b'; 3_500_000]];
    let r = c.invoke(batch_request(&over), TIMEOUT).await.expect("answered");
    let remark = r.remark.clone().unwrap_or_default();
    assert_eq!(r.code, ResponseCode::MESSAGE_ILLEGAL.0, "remark: {remark}");
    assert!(remark.contains("entryBytesMax") && remark.contains(&max.to_string()), "the remark names the limit: {remark}");
    assert!(remark.contains("2 message(s) take 7000"), "the remark names the size: {remark}");

    // The same shape within the limit is stored, at queue offset 0: nothing of the refused batch was.
    let within = vec![vec![b'c'; 2_500_000], vec![b'd'; 2_500_000]];
    let r = c.invoke(batch_request(&within), TIMEOUT).await.expect("answered");
    assert_eq!(r.code, ResponseCode::SUCCESS.0, "remark: {:?}", r.remark);
    let h: SendMessageResponseHeader = r.decode_header().expect("send response header");
    assert_eq!(h.queue_offset, 0);
    let q = broker.node().state().queue(TOPIC, 0).expect("queue");
    assert_eq!(q.max_offset(), 2, "only the accepted batch is stored");
    broker.shutdown().await;
}
