//! Decoding arbitrary or corrupted bytes never panics: frames (JSON and binary headers), typed headers,
//! JSON bodies, stored messages, batches, compressed bodies and id strings. Each decoder returns a value or
//! an error; the tests only require that it returns.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use raftmq_remoting::body::*;
use raftmq_remoting::header::*;
use raftmq_remoting::message::*;
use raftmq_remoting::{CommandHeader, ExtFields, RemotingCodec, RemotingCommand, RequestCode};
use tokio_util::codec::Decoder;

const CAP: usize = 64 * 1024;

fn drain(bytes: &[u8]) {
    let mut codec = RemotingCodec::with_frame_bytes_max(CAP);
    let mut buf = BytesMut::from(bytes);
    // Every Ok(Some) consumes at least 8 bytes, so this ends.
    while let Ok(Some(cmd)) = codec.decode(&mut buf) {
        parse_all_headers(&cmd.ext_fields);
        parse_all_bodies(&cmd.body);
    }
}

fn wrap(type_byte: u8, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i32((4 + header.len() + body.len()) as i32);
    b.put_u32((u32::from(type_byte) << 24) | (header.len() as u32 & 0xFF_FFFF));
    b.put_slice(header);
    b.put_slice(body);
    b.to_vec()
}

fn parse_all_headers(ext: &ExtFields) {
    for code in [RequestCode::SEND_MESSAGE, RequestCode::SEND_MESSAGE_V2] {
        let _ = SendMessageRequestHeader::decode_for(code, ext);
    }
    let _ = SendMessageResponseHeader::from_ext_fields(ext);
    let _ = PullMessageRequestHeader::from_ext_fields(ext).map(|h| (h.carried_subscription().map(str::len), h.carried_commit_offset()));
    let _ = PullMessageResponseHeader::from_ext_fields(ext);
    let _ = QueryConsumerOffsetRequestHeader::from_ext_fields(ext);
    let _ = UpdateConsumerOffsetRequestHeader::from_ext_fields(ext);
    let _ = OffsetResponseHeader::from_ext_fields(ext);
    let _ = GetMaxOffsetRequestHeader::from_ext_fields(ext);
    let _ = QueueRequestHeader::from_ext_fields(ext);
    let _ = SearchOffsetRequestHeader::from_ext_fields(ext);
    let _ = GetEarliestMsgStoretimeResponseHeader::from_ext_fields(ext);
    let _ = GetRouteInfoRequestHeader::from_ext_fields(ext);
    let _ = RegisterBrokerRequestHeader::from_ext_fields(ext);
    let _ = RegisterBrokerResponseHeader::from_ext_fields(ext);
    let _ = UnregisterBrokerRequestHeader::from_ext_fields(ext);
    let _ = ConsumerGroupHeader::from_ext_fields(ext);
    let _ = UnregisterClientRequestHeader::from_ext_fields(ext);
    let _ = ConsumerSendMsgBackRequestHeader::from_ext_fields(ext);
    let _ = EndTransactionRequestHeader::from_ext_fields(ext);
    let _ = CheckTransactionStateRequestHeader::from_ext_fields(ext);
    let _ = CreateTopicRequestHeader::from_ext_fields(ext);
}

fn parse_all_bodies(body: &[u8]) {
    let _ = decode_json_body::<HeartbeatData>("HeartbeatData", body);
    let _ = decode_json_body::<LockBatchRequestBody>("LockBatchRequestBody", body);
    let _ = decode_json_body::<LockBatchResponseBody>("LockBatchResponseBody", body);
    let _ = decode_json_body::<GetConsumerListByGroupResponseBody>("GetConsumerListByGroupResponseBody", body);
    let _ = decode_json_body::<TopicRouteData>("TopicRouteData", body);
    let _ = decode_json_body::<ClusterInfo>("ClusterInfo", body);
    let _ = decode_json_body::<RegisterBrokerBody>("RegisterBrokerBody", body);
    let _ = decode_json_body::<KvTable>("KvTable", body);
    let _ = quote_bare_keys(body);
    let _ = decode_stored_message(body).map(|m| (m.verify_body_crc(), m.properties_map(), m.offset_msg_id().to_string()));
    for m in StoredMessages::new(body) {
        let _ = m.map(|m| m.uncompressed_body(CAP).map(|b| b.len()));
    }
    for m in BatchMessages::new(body) {
        let _ = m.map(|m| decode_properties(m.properties));
    }
    let _ = decode_batch(body, 1000);
    for flag in [sys_flag::COMPRESSED, sys_flag::COMPRESSED | sys_flag::COMPRESSION_ZLIB, sys_flag::COMPRESSED | sys_flag::COMPRESSION_ZSTD]
    {
        let _ = decompress_body(flag, body, CAP);
    }
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = decode_offset_msg_id(s);
        let _ = parse_uniq_id(s);
        let _ = decode_properties(s);
    }
}

/// Keys that headers read, so random maps hit the parsers' value paths.
fn ext_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a",
            "b",
            "c",
            "d",
            "e",
            "f",
            "g",
            "h",
            "i",
            "j",
            "k",
            "l",
            "m",
            "n",
            "topic",
            "queueId",
            "queueOffset",
            "consumerGroup",
            "maxMsgNums",
            "sysFlag",
            "commitOffset",
            "subVersion",
            "offset",
            "timestamp",
            "boundaryType",
            "producerGroup",
            "bornTimestamp",
            "flag",
            "brokerId",
            "brokerName",
            "brokerAddr",
            "clusterName",
            "haServerAddr",
            "group",
            "delayLevel",
            "msgId",
            "clientID",
            "tranStateTableOffset",
            "commitLogOffset",
            "commitOrRollback",
            "readQueueNums",
            "writeQueueNums",
            "perm",
            "queueOffset",
            "suggestWhichBrokerId",
            "nextBeginOffset",
            "minOffset",
            "maxOffset",
            "setZeroIfNotFound",
            "unitMode",
            "compressed",
        ])
        .prop_map(str::to_owned),
        ".{0,8}",
    ]
}

fn ext_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<i32>().prop_map(|v| format!(" {v} ")),
        Just("true".to_owned()),
        Just("0".to_owned()),
        Just(String::new()),
        Just("9223372036854775808".to_owned()),
        ".{0,16}",
    ]
}

/// Up to `n` single-byte overwrites at random positions.
fn flips(n: usize) -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..n)
}

fn bytes(n: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..n)
}

/// A valid stored message to corrupt.
fn stored(body: &[u8], topic: &str, properties: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_stored_message(
        &MessageToStore {
            topic,
            queue_id: 1,
            flag: 0,
            queue_offset: 2,
            physical_offset: 3,
            sys_flag: sys_flag::COMPRESSED,
            born_timestamp: 4,
            born_host: "1.2.3.4:5".parse().unwrap(),
            store_timestamp: 6,
            store_host: "7.8.9.10:11".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body,
            properties,
        },
        &mut out,
    )
    .unwrap();
    out
}

/// Bytes that change JSON structure, for mutating a valid body.
const JSON_BYTES: &[u8] = b"{}[]\":,0a\\ \xFF";

/// A route as a Java nameserver writes it for an old client (unquoted numeric keys).
const ROUTE: &[u8] = concat!(
    r#"{"orderTopicConf":null,"queueDatas":[{"brokerName":"b","readQueueNums":4,"writeQueueNums":4,"perm":6,"topicSysFlag":0}],"#,
    r#""brokerDatas":[{"cluster":"c","brokerName":"b","brokerAddrs":{0:"h:1"},"zoneName":null,"enableActingMaster":false}],"#,
    r#""filterServerTable":{},"topicQueueMappingByBroker":null}"#
)
.as_bytes();

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_as_frames(input in bytes(2048)) {
        drain(&input);
    }

    #[test]
    fn arbitrary_headers_in_valid_frames(header in bytes(512), body in bytes(64), t in 0u8..3) {
        drain(&wrap(t, &header, &body));
        let _ = RemotingCommand::decode_frame(bytes::Bytes::from(wrap(t, &header, &body)).slice(4..));
    }

    #[test]
    fn json_like_headers(entries in prop::collection::vec((ext_key(), prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| if v.is_finite() { v.to_string() } else { "1e999".into() }),
        Just("true".to_owned()), Just("null".to_owned()), Just("{\"x\":[1,{}]}".to_owned()), Just("[[[]]]".to_owned()),
        ".{0,10}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ]), 0..12), code in prop_oneof![any::<i64>().prop_map(|c| c.to_string()), Just("\"10\"".to_owned()), Just("null".to_owned())]) {
        let ext: Vec<String> = entries.iter().map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v)).collect();
        let header = format!(r#"{{"code":{code},"opaque":1,"extFields":{{{}}}}}"#, ext.join(","));
        drain(&wrap(0, header.as_bytes(), b""));
    }

    #[test]
    fn mutated_valid_frames(flips in flips(8), cut in any::<prop::sample::Index>(), binary in any::<bool>()) {
        let cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 3)
            .with_serialize_type(if binary { raftmq_remoting::SerializeType::RocketMq } else { raftmq_remoting::SerializeType::Json })
            .with_ext("a", "P").with_ext("b", "T").with_ext("e", "1").with_ext("i", "TAGS\u{1}x\u{2}")
            .with_remark("remark")
            .with_body(&b"body"[..]);
        let mut bytes = cmd.to_bytes().unwrap().to_vec();
        for (i, v) in flips {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        let end = cut.index(bytes.len() + 1);
        drain(&bytes[..end]);
    }

    #[test]
    fn arbitrary_ext_fields_into_headers(ext in prop::collection::btree_map(ext_key(), ext_value(), 0..24)) {
        parse_all_headers(&ext);
    }

    #[test]
    fn arbitrary_bytes_as_bodies_and_messages(input in bytes(1024)) {
        parse_all_bodies(&input);
    }

    #[test]
    fn mutated_stored_messages(body in bytes(64), flips in flips(6), cut in any::<prop::sample::Index>(), zlib in any::<bool>()) {
        let body = if zlib { compress_body_zlib(&body, 5) } else { body };
        let mut bytes = stored(&body, "Topic", "TAGS\u{1}a\u{2}KEYS\u{1}k\u{2}");
        bytes.extend(stored(b"second", "T2", ""));
        for (i, v) in flips {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        let end = cut.index(bytes.len() + 1);
        parse_all_bodies(&bytes[..end]);
        parse_all_bodies(&bytes);
    }

    #[test]
    fn mutated_batches(flips in flips(6), cut in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        for (f, b, p) in [(0, &b"one"[..], "A\u{1}1\u{2}"), (1, b"", ""), (2, b"three", "B\u{1}\u{2}")] {
            encode_batch_message(&BatchMessage { flag: f, body: b, properties: p }, &mut bytes).unwrap();
        }
        for (i, v) in flips {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        let end = cut.index(bytes.len() + 1);
        parse_all_bodies(&bytes[..end]);
    }

    #[test]
    fn json_body_mutations(flips in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(JSON_BYTES)), 1..6)) {
        let mut bytes = ROUTE.to_vec();
        for (i, v) in flips {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        parse_all_bodies(&bytes);
    }
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let header = format!(r#"{{"code":1,"extFields":{{"x":{deep}}},"y":{deep}}}"#);
    drain(&wrap(0, header.as_bytes(), deep.as_bytes()));
    let objects = format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    parse_all_bodies(objects.as_bytes());
    let bare = format!("{}{}", "{1:".repeat(50_000), "}".repeat(50_000));
    parse_all_bodies(bare.as_bytes());
}
