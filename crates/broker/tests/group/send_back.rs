//! CONSUMER_SEND_MSG_BACK names the message by a client-supplied commitlog offset. The broker must copy only
//! a committed message that starts exactly there: not bytes of a record the group has not committed (it may
//! be truncated), and not a message-shaped byte run inside another message's body.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::common::{send, send_back_request, Group, TIMEOUT, TOPIC};
use raftmq_commitlog::{RecordKind, HEADER_LEN};
use raftmq_raft::types::Command;
use raftmq_remoting::message::decode_offset_msg_id;
use raftmq_remoting::{encode_stored_message, MessageToStore, RemotingCommand, ResponseCode};

fn send_back(offset: i64) -> RemotingCommand {
    send_back_request(offset, None)
}

/// A stored message whose body is itself a complete stored message (what a client could craft).
fn forged() -> Vec<u8> {
    let host: SocketAddrV4 = "127.0.0.1:1".parse().unwrap();
    let m = MessageToStore {
        topic: "Forged",
        queue_id: 0,
        flag: 0,
        queue_offset: 0,
        physical_offset: 0,
        sys_flag: 0,
        born_timestamp: 1,
        born_host: host,
        store_timestamp: 1,
        store_host: host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        body: b"not a message of this broker",
        properties: "",
    };
    let mut out = Vec::new();
    encode_stored_message(&m, &mut out).unwrap();
    out
}

#[test]
fn send_back_copies_only_a_committed_message_at_its_start() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        let inner = forged();
        let (_, msg_id) = send(&c, TOPIC, 0, &inner).await.expect("send");
        let phys = decode_offset_msg_id(&msg_id).expect("offsetMsgId").commit_log_offset;

        // The message itself can be sent back.
        let r = c.invoke(send_back(phys), TIMEOUT).await.expect("send back");
        assert_eq!(r.code, ResponseCode::SUCCESS.0, "{:?}", r.remark);

        // The forged message inside its body cannot: it is not a message of the log.
        let log = g.brokers[leader].node().commitlog();
        let size = i32::from_be_bytes(log.read_at(phys as u64, 4).expect("size")[..].try_into().unwrap());
        let raw = log.read_at(phys as u64, size as usize).expect("bytes");
        let at = raw.windows(inner.len()).position(|w| w == inner.as_slice()).expect("body inside the message") as i64;
        let r = c.invoke(send_back(phys + at), TIMEOUT).await.expect("send back");
        assert_eq!(r.code, ResponseCode::SYSTEM_ERROR.0, "a byte run inside a body was copied as a message: {:?}", r.remark);
        for bad in [phys + 1, -1, i64::MAX] {
            let r = c.invoke(send_back(bad), TIMEOUT).await.expect("send back");
            assert_eq!(r.code, ResponseCode::SYSTEM_ERROR.0, "offset {bad}: {:?}", r.remark);
        }

        // An appended but uncommitted record: cut the leader off, let it append one more entry.
        let node = g.brokers[leader].node().clone();
        node.set_isolated(true);
        let applied = node.state().last_applied_index().expect("applied");
        let addr = g.addr(leader);
        tokio::spawn(async move {
            let c = raftmq_net::RemotingClient::connect(&addr, TIMEOUT, None).await.expect("connect");
            let _ = send(&c, TOPIC, 0, b"never committed").await;
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let uncommitted = loop {
            let last = node.commitlog().state().last.expect("records").index;
            if last > applied {
                let rec = node.commitlog().read(last).expect("read").expect("present");
                if rec.meta.kind == RecordKind::Normal {
                    if let Ok(cmd) = Command::decode(&rec.body, Some(rec.pos + HEADER_LEN as u64)) {
                        if let Some(q) = cmd.produced().first() {
                            break q.messages[0].phys_offset.expect("position");
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "the cut-off leader appended nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(node.state().last_applied_index() < node.commitlog().state().last.map(|l| l.index), "premise: not committed");
        let r = tokio::time::timeout(TIMEOUT, c.invoke(send_back(uncommitted as i64), TIMEOUT)).await;
        let code = r.ok().and_then(|r| r.ok()).map(|r| (r.code, r.remark));
        assert!(
            matches!(&code, Some((c, Some(remark))) if *c == ResponseCode::SYSTEM_ERROR.0 && remark.contains("look message by offset failed")),
            "an uncommitted record was read for send-back: {code:?}"
        );
        node.set_isolated(false);
        g.shutdown().await;
    });
}
