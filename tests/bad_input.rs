//! Bad input against a real broker process: oversize and empty bodies, illegal and reserved topic names,
//! a bad queue id, an unknown request code, garbage and truncated frames. Each gets the right response
//! code (or a closed connection), the broker keeps serving other clients, and nothing is stored.

mod common;

use std::time::Duration;

use common::*;
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_answers_and_store_nothing() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    let addr = cluster.node(leader).client_addr.clone();
    let c = client(&addr).await.expect("leader");
    send(&c, "Good", 0, b"first").await.expect("good send");

    let expect = |r: Result<i64, (i32, String)>, code: ResponseCode, needle: &str| {
        let (got, remark) = r.expect_err("bad input was accepted");
        assert_eq!(got, code.0, "remark: {remark}");
        assert!(remark.contains(needle), "remark {remark:?} does not mention {needle:?}");
    };
    expect(send(&c, "Good", 0, &vec![b'x'; 4 * 1024 * 1024 + 1]).await, ResponseCode::MESSAGE_ILLEGAL, "maxMessageSize");
    expect(send(&c, "Good", 0, b"").await, ResponseCode::MESSAGE_ILLEGAL, "empty");
    expect(send(&c, "bad topic", 0, b"x").await, ResponseCode::SYSTEM_ERROR, "illegal character");
    expect(send(&c, &"t".repeat(128), 0, b"x").await, ResponseCode::SYSTEM_ERROR, "127");
    expect(send(&c, "SCHEDULE_TOPIC_XXXX", 0, b"x").await, ResponseCode::NO_PERMISSION, "forbidden");
    expect(send(&c, "Good", 99, b"x").await, ResponseCode::SYSTEM_ERROR, "queueId[99] is illegal");
    let unknown = c.invoke(RemotingCommand::request(RequestCode(9999), 0), TIMEOUT).await.expect("unknown code answered");
    assert_eq!(unknown.code, ResponseCode::REQUEST_CODE_NOT_SUPPORTED.0);
    assert!(unknown.remark.unwrap_or_default().contains("9999"));

    // Garbage: a frame whose header length exceeds the frame closes that connection.
    let mut raw = TcpStream::connect(&addr).await.expect("connect");
    raw.write_all(&[0, 0, 0, 12, 0, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4, 5, 6, 7, 8]).await.expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(TIMEOUT, raw.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0, "garbage did not close the connection");
    // A length prefix over the 16 MiB cap closes it too, without the broker allocating it.
    let mut raw = TcpStream::connect(&addr).await.expect("connect");
    raw.write_all(&[0x7F, 0xFF, 0xFF, 0xFF]).await.expect("write");
    let n = tokio::time::timeout(TIMEOUT, raw.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0);
    // A truncated frame followed by a hang-up.
    let mut raw = TcpStream::connect(&addr).await.expect("connect");
    raw.write_all(&[0, 0, 1, 0, 0, 0, 0, 20, b'{']).await.expect("write");
    drop(raw);

    // The broker still serves everyone, and none of the bad sends was stored.
    let other = client(&addr).await.expect("new client");
    assert_eq!(send(&other, "Good", 0, b"second").await, Ok(1));
    assert_eq!(max_offset(&other, "Good", 0).await, 2);
    let all = pull_all(&other, "Good", 0).await;
    assert_eq!(all, vec![(0, b"first".to_vec()), (1, b"second".to_vec())]);
    assert_eq!(route(&cluster.namesrv, "bad topic").await, Ok(None));
}
