//! Typed header round trips through `extFields` and through whole frames: V1 and V2 send headers map to the
//! same struct, numeric JSON values from C++ clients parse, and every header's written form parses back.

use proptest::prelude::*;
use raftmq_remoting::header::*;
use raftmq_remoting::{CommandHeader, ExtFields, RemotingCommand, RequestCode};

fn opt<T: std::fmt::Debug + Clone + 'static>(s: impl Strategy<Value = T> + 'static) -> BoxedStrategy<Option<T>> {
    prop::option::of(s).boxed()
}

prop_compose! {
    fn send_header()(
        producer_group in ".{1,20}",
        topic in "[A-Za-z0-9%_-]{1,30}",
        default_topic in ".{0,10}",
        default_topic_queue_nums in any::<i32>(),
        queue_id in any::<i32>(),
        sys_flag in any::<i32>(),
        born_timestamp in any::<i64>(),
        flag in any::<i32>(),
        properties in opt(".{0,60}"),
        reconsume_times in opt(any::<i32>()),
        unit_mode in opt(any::<bool>()),
        batch in opt(any::<bool>()),
        max_reconsume_times in opt(any::<i32>()),
        broker_name in opt("[a-z-]{1,12}"),
    ) -> SendMessageRequestHeader {
        SendMessageRequestHeader {
            producer_group, topic, default_topic, default_topic_queue_nums, queue_id, sys_flag, born_timestamp, flag,
            properties, reconsume_times, unit_mode, batch, max_reconsume_times, broker_name,
        }
    }
}

fn round_trip<H: CommandHeader + PartialEq + std::fmt::Debug>(h: &H) -> Result<(), TestCaseError> {
    let ext = h.to_ext_fields();
    let back = H::from_ext_fields(&ext).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, h);
    // And through a whole JSON frame.
    let cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE, 1).with_header(h);
    let mut buf = bytes::BytesMut::from(&cmd.to_bytes().unwrap()[..]);
    let decoded = RemotingCommand::decode(&mut buf, 1 << 20).unwrap().unwrap();
    let back: H = decoded.decode_header().map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, h);
    Ok(())
}

proptest! {
    #[test]
    fn send_header_v1_and_v2(h in send_header()) {
        round_trip(&h)?;
        let mut v2 = ExtFields::new();
        h.write_ext_fields_v2(&mut v2);
        prop_assert!(v2.keys().all(|k| k.len() == 1));
        for code in [RequestCode::SEND_MESSAGE_V2, RequestCode::SEND_BATCH_MESSAGE, RequestCode::SEND_REPLY_MESSAGE_V2] {
            prop_assert_eq!(&SendMessageRequestHeader::decode_for(code, &v2).unwrap(), &h);
        }
        prop_assert_eq!(&SendMessageRequestHeader::decode_for(RequestCode::SEND_MESSAGE, &h.to_ext_fields()).unwrap(), &h);
    }

    #[test]
    fn send_response(msg_id in "[0-9A-F]{32}", queue_id in any::<i32>(), queue_offset in any::<i64>(),
                     transaction_id in opt(".{1,10}"), trace_on in opt(any::<bool>())) {
        let mut h = SendMessageResponseHeader::new(msg_id, queue_id, queue_offset);
        h.transaction_id = transaction_id;
        h.trace_on = trace_on;
        round_trip(&h)?;
    }

    #[test]
    fn pull_headers(consumer_group in ".{1,10}", topic in ".{1,10}", queue_id in any::<i32>(), queue_offset in any::<i64>(),
                    max_msg_nums in any::<i32>(), sys_flag in 0i32..32, commit_offset in any::<i64>(),
                    suspend_timeout_millis in any::<i64>(), subscription in opt(".{0,10}"), sub_version in any::<i64>(),
                    expression_type in opt(prop_oneof![Just("TAG".to_string()), Just("SQL92".to_string())]),
                    max_msg_bytes in opt(any::<i32>()), offsets in any::<[i64; 4]>(), delta in opt(any::<i64>())) {
        let req = PullMessageRequestHeader {
            consumer_group, topic, queue_id, queue_offset, max_msg_nums, sys_flag, commit_offset, suspend_timeout_millis,
            subscription, sub_version, expression_type, max_msg_bytes, request_source: None, proxy_forward_client_id: None,
        };
        round_trip(&req)?;
        let resp = PullMessageResponseHeader {
            suggest_which_broker_id: offsets[0], next_begin_offset: offsets[1], min_offset: offsets[2], max_offset: offsets[3],
            offset_delta: delta, topic_sys_flag: None, group_sys_flag: Some(0), forbidden_type: None,
        };
        round_trip(&resp)?;
    }

    #[test]
    fn offset_headers(group in ".{1,10}", topic in ".{1,10}", queue_id in any::<i32>(), offset in any::<i64>(),
                      flag in opt(any::<bool>()), upper in any::<bool>()) {
        let (g, t) = (group.clone(), topic.clone());
        let q = QueryConsumerOffsetRequestHeader { consumer_group: g.clone(), topic: t.clone(), queue_id, set_zero_if_not_found: flag };
        round_trip(&q)?;
        round_trip(&UpdateConsumerOffsetRequestHeader { consumer_group: g, topic: t, queue_id, commit_offset: offset })?;
        round_trip(&OffsetResponseHeader { offset })?;
        round_trip(&GetMaxOffsetRequestHeader { topic: topic.clone(), queue_id, committed: flag })?;
        round_trip(&QueueRequestHeader { topic: topic.clone(), queue_id })?;
        let boundary_type = if upper { BoundaryType::Upper } else { BoundaryType::Lower };
        round_trip(&SearchOffsetRequestHeader { topic: topic.clone(), queue_id, timestamp: offset, boundary_type })?;
        round_trip(&GetEarliestMsgStoretimeResponseHeader { timestamp: offset })?;
        round_trip(&ConsumerGroupHeader { consumer_group: group })?;
        round_trip(&GetRouteInfoRequestHeader { topic, accept_standard_json_only: flag })?;
    }

    #[test]
    fn admin_and_registration_headers(name in "[a-z-]{1,10}", addr in "[0-9.:]{1,21}", id in any::<i64>(), n in any::<i32>(),
                                      b in any::<bool>(), o in opt(".{1,8}")) {
        round_trip(&RegisterBrokerRequestHeader {
            broker_name: name.clone(), broker_addr: addr.clone(), cluster_name: name.clone(), ha_server_addr: addr.clone(),
            broker_id: id, heartbeat_timeout_millis: Some(id), enable_acting_master: Some(b), compressed: b, body_crc32: n,
            raft_term: Some(id),
        })?;
        round_trip(&RegisterBrokerResponseHeader { ha_server_addr: o.clone(), master_addr: Some(addr.clone()) })?;
        let (broker_name, cluster_name) = (name.clone(), name.clone());
        round_trip(&UnregisterBrokerRequestHeader { broker_name, broker_addr: addr, cluster_name, broker_id: id })?;
        round_trip(&UnregisterClientRequestHeader { client_id: name.clone(), producer_group: o.clone(), consumer_group: None })?;
        round_trip(&ConsumerSendMsgBackRequestHeader {
            offset: id, group: name.clone(), delay_level: n, origin_msg_id: o.clone(), origin_topic: None, unit_mode: b,
            max_reconsume_times: Some(n),
        })?;
        round_trip(&EndTransactionRequestHeader {
            topic: o.clone(), producer_group: name.clone(), tran_state_table_offset: id, commit_log_offset: id,
            commit_or_rollback: transaction_type::COMMIT, from_transaction_check: b, msg_id: name.clone(), transaction_id: o.clone(),
        })?;
        round_trip(&CheckTransactionStateRequestHeader {
            topic: o.clone(), tran_state_table_offset: id, commit_log_offset: id, msg_id: None, transaction_id: o.clone(),
            offset_msg_id: o.clone(),
        })?;
        round_trip(&CreateTopicRequestHeader {
            topic: name.clone(), default_topic: DEFAULT_TOPIC.into(), read_queue_nums: n, write_queue_nums: n, perm: perm::READ_WRITE,
            topic_filter_type: "SINGLE_TAG".into(), topic_sys_flag: Some(0), order: b, attributes: o, force: Some(b),
        })?;
    }

    /// Missing required fields are named; optional ones are not required.
    #[test]
    fn removing_a_required_key_names_it(h in send_header(), which in 0usize..6) {
        let required = ["a", "b", "e", "f", "g", "h"];
        let mut v2 = ExtFields::new();
        h.write_ext_fields_v2(&mut v2);
        v2.remove(required[which]);
        match SendMessageRequestHeader::from_ext_fields_v2(&v2) {
            Err(raftmq_remoting::RemotingError::MissingField { key, .. }) => prop_assert_eq!(key, required[which]),
            other => prop_assert!(false, "expected MissingField, got {:?}", other),
        }
    }
}

#[test]
fn numeric_json_values_from_cpp_parse_into_typed_headers() {
    let header = br#"{"code":11,"language":"CPP","version":333,"opaque":9,"flag":0,"extFields":{"consumerGroup":"G","topic":"T","queueId":0,"queueOffset":12,"maxMsgNums":32,"sysFlag":6,"commitOffset":0,"suspendTimeoutMillis":15000,"subscription":"*","subVersion":1700000000000,"expressionType":"TAG"}}"#;
    let mut frame = Vec::new();
    frame.extend_from_slice(&((4 + header.len()) as i32).to_be_bytes());
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(header);
    let cmd = RemotingCommand::decode(&mut bytes::BytesMut::from(&frame[..]), 1 << 20).unwrap().unwrap();
    let h: PullMessageRequestHeader = cmd.decode_header().unwrap();
    assert_eq!(h.queue_offset, 12);
    assert_eq!(h.max_msg_nums, 32);
    assert_eq!(h.suspend_timeout_millis, 15_000);
    assert_eq!(h.carried_subscription(), Some("*"));
    assert_eq!(h.carried_commit_offset(), None);
    assert_eq!(h.sub_version, 1_700_000_000_000);
}

#[test]
fn neutral_defaults_for_fields_java_requires() {
    let ext: ExtFields = [("a", "P"), ("b", "T"), ("e", "0"), ("f", "0"), ("g", "1"), ("h", "0")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let h = SendMessageRequestHeader::from_ext_fields_v2(&ext).unwrap();
    assert_eq!(h.default_topic, DEFAULT_TOPIC);
    assert_eq!(h.default_topic_queue_nums, DEFAULT_TOPIC_QUEUE_NUMS);
    assert_eq!(h.properties, None);
}
