//! Transactional half messages are refused with a clear code and remark instead of being stored as normal
//! messages (which would deliver them at once and make a rollback impossible); END_TRANSACTION gets a clear
//! answer. Delay levels are accepted and, until scheduling exists, delivered at once (docs/protocol.md).

use std::time::Duration;

use crate::common::{pull, send_cmd, send_request, Group, TIMEOUT, TOPIC};
use raftmq_remoting::header::{transaction_type, EndTransactionRequestHeader};
use raftmq_remoting::message::{property, sys_flag};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

#[test]
fn half_messages_are_refused_and_end_transaction_is_answered() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let c = g.client(leader).await;
        crate::common::send(&c, TOPIC, 0, b"creates the topic").await.expect("plain send");
        let tran = [(property::TRANSACTION_PREPARED, "true"), (property::PRODUCER_GROUP, "tx_group")];
        // What the Java producer sends: the property and the PREPARED bits; either alone is enough.
        for (props, flag) in
            [(&tran[..], sys_flag::TRANSACTION_PREPARED_TYPE), (&tran[..], 0), (&[][..], sys_flag::TRANSACTION_PREPARED_TYPE)]
        {
            let (code, remark) = send_cmd(&c, send_request(TOPIC, 1, b"half", props, flag)).await.expect_err("a half message was accepted");
            assert_eq!(code, ResponseCode::NO_PERMISSION.0, "{remark}");
            assert!(remark.contains("transaction message is forbidden"), "{remark}");
        }
        // Nothing reached the queue.
        let (code, _, remark) = pull(&c, TOPIC, 1, 0).await;
        assert_eq!(code, ResponseCode::PULL_NOT_FOUND.0, "a refused half message is readable: {remark}");

        let h = EndTransactionRequestHeader {
            topic: Some(TOPIC.into()),
            producer_group: "tx_group".into(),
            tran_state_table_offset: 0,
            commit_log_offset: 1234,
            commit_or_rollback: transaction_type::COMMIT,
            from_transaction_check: false,
            msg_id: "ABCD".into(),
            transaction_id: None,
        };
        let r = c.invoke(RemotingCommand::request(RequestCode::END_TRANSACTION, 0).with_header(&h), TIMEOUT).await.expect("37");
        assert_eq!(r.code, ResponseCode::REQUEST_CODE_NOT_SUPPORTED.0);
        let remark = r.remark.unwrap_or_default();
        assert!(remark.contains("transactional messages are not supported") && remark.contains("1234"), "{remark}");

        g.shutdown().await;
    });
}
