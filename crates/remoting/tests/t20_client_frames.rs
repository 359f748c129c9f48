//! Frames as real clients put them on the wire, built by hand from the reference (§1, §5.3, §9) rather than
//! with this crate's encoder: a Java SEND_MESSAGE_V2, the same request with a ROCKETMQ binary header, a C++
//! 2.x SEND_MESSAGE with numeric values and a trailing newline, and a C++ heartbeat with `extFields: null`.

use bytes::BytesMut;
use raftmq_remoting::body::{decode_json_body, HeartbeatData};
use raftmq_remoting::header::SendMessageRequestHeader;
use raftmq_remoting::message::{get_property, property};
use raftmq_remoting::{LanguageCode, RemotingCodec, RemotingCommand, RequestCode};
use tokio_util::codec::Decoder;

/// fastjson output of a Java 5.3.3 producer's `RemotingCommand` for `send(new Message("TopicTest", "TagA",
/// "Hello RocketMQ 0"))`: keys sorted, `remark` null and therefore omitted, every extFields value a string.
const JAVA_V2_HEADER: &[u8] = br#"{"code":310,"extFields":{"a":"ProducerGroupName","b":"TopicTest","c":"TBW102","d":"4","e":"1","f":"0","g":"1700000000000","h":"0","i":"UNIQ_KEY\u0001AC11000100002A9F0000000000000001\u0002WAIT\u0001true\u0002TAGS\u0001TagA\u0002","j":"0","k":"false","m":"false","n":"broker-a"},"flag":0,"language":"JAVA","opaque":2,"serializeTypeCurrentRPC":"JSON","version":479}"#;

const BODY: &[u8] = b"Hello RocketMQ 0";

fn java_v2_frame() -> Vec<u8> {
    // length = 4 + 362 + 16 = 382 = 0x17E; header word = JSON (0) << 24 | 362 (0x16A).
    let mut f = vec![0x00, 0x00, 0x01, 0x7E, 0x00, 0x00, 0x01, 0x6A];
    f.extend_from_slice(JAVA_V2_HEADER);
    f.extend_from_slice(BODY);
    f
}

fn assert_java_send(cmd: &RemotingCommand) {
    assert_eq!(cmd.request_code(), RequestCode::SEND_MESSAGE_V2);
    assert_eq!(cmd.opaque, 2);
    assert!(!cmd.is_response() && !cmd.is_oneway());
    assert_eq!(&cmd.body[..], BODY);
    let h = SendMessageRequestHeader::decode_for(cmd.request_code(), &cmd.ext_fields).unwrap();
    assert_eq!(h.producer_group, "ProducerGroupName");
    assert_eq!(h.topic, "TopicTest");
    assert_eq!(h.default_topic, "TBW102");
    assert_eq!(h.default_topic_queue_nums, 4);
    assert_eq!(h.queue_id, 1);
    assert_eq!(h.sys_flag, 0);
    assert_eq!(h.born_timestamp, 1_700_000_000_000);
    assert_eq!(h.flag, 0);
    assert_eq!(h.reconsume_times, Some(0));
    assert_eq!(h.unit_mode, Some(false));
    assert_eq!(h.batch, Some(false));
    assert_eq!(h.max_reconsume_times, None);
    assert_eq!(h.broker_name.as_deref(), Some("broker-a"));
    let props = h.properties.as_deref().unwrap();
    assert_eq!(get_property(props, property::TAGS), Some("TagA"));
    assert_eq!(get_property(props, property::WAIT_STORE_MSG_OK), Some("true"));
    assert_eq!(get_property(props, property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX), Some("AC11000100002A9F0000000000000001"));
}

#[test]
fn java_send_message_v2_frame() {
    let bytes = java_v2_frame();
    assert_eq!(bytes.len(), 4 + 382);
    assert_eq!(JAVA_V2_HEADER.len(), 362);
    let mut buf = BytesMut::from(&bytes[..]);
    let cmd = RemotingCodec::new().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(cmd.language, LanguageCode::Java);
    assert_eq!(cmd.version, 479);
    assert_eq!(cmd.remark, None);
    assert_java_send(&cmd);
}

#[test]
fn java_send_message_v2_with_binary_header() {
    // The same request from a client started with -Drocketmq.serialize.type=ROCKETMQ.
    let props = "UNIQ_KEY\u{1}AC11000100002A9F0000000000000001\u{2}WAIT\u{1}true\u{2}TAGS\u{1}TagA\u{2}";
    let fields: &[(&str, &str)] = &[
        ("a", "ProducerGroupName"),
        ("b", "TopicTest"),
        ("c", "TBW102"),
        ("d", "4"),
        ("e", "1"),
        ("f", "0"),
        ("g", "1700000000000"),
        ("h", "0"),
        ("i", props),
        ("j", "0"),
        ("k", "false"),
        ("m", "false"),
        ("n", "broker-a"),
    ];
    let mut ext = Vec::new();
    for (k, v) in fields {
        ext.extend_from_slice(&(k.len() as i16).to_be_bytes());
        ext.extend_from_slice(k.as_bytes());
        ext.extend_from_slice(&(v.len() as i32).to_be_bytes());
        ext.extend_from_slice(v.as_bytes());
    }
    let mut header = Vec::new();
    header.extend_from_slice(&310i16.to_be_bytes()); // code
    header.push(0); // JAVA
    header.extend_from_slice(&479i16.to_be_bytes()); // version
    header.extend_from_slice(&2i32.to_be_bytes()); // opaque
    header.extend_from_slice(&0i32.to_be_bytes()); // flag
    header.extend_from_slice(&0i32.to_be_bytes()); // remark length (null)
    header.extend_from_slice(&(ext.len() as i32).to_be_bytes());
    header.extend_from_slice(&ext);
    let mut frame = Vec::new();
    frame.extend_from_slice(&((4 + header.len() + BODY.len()) as i32).to_be_bytes());
    frame.extend_from_slice(&((1u32 << 24) | header.len() as u32).to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(BODY);
    let mut buf = BytesMut::from(&frame[..]);
    let cmd = RemotingCodec::new().decode(&mut buf).unwrap().unwrap();
    assert_java_send(&cmd);

    // Both encodings give the same command apart from the serialisation.
    let mut json = RemotingCodec::new().decode(&mut BytesMut::from(&java_v2_frame()[..])).unwrap().unwrap();
    json.serialize_type = cmd.serialize_type;
    assert_eq!(json, cmd);

    // Our answer is JSON whatever the request used (interop rule 1).
    let resp = RemotingCommand::success_to(&cmd).with_ext("msgId", "X");
    assert_eq!(resp.to_bytes().unwrap()[4], 0);
}

#[test]
fn cpp_send_message_with_numbers_and_newline() {
    // jsoncpp FastWriter: sorted keys, numeric values, booleans as "0"/"1", empty ACL keys, trailing '\n'.
    let header = concat!(
        r#"{"code":10,"extFields":{"AccessKey":"","OnsChannel":"","Signature":"","batch":"0","bornTimestamp":"1700000000000","#,
        r#""defaultTopic":"TBW102","defaultTopicQueueNums":4,"flag":0,"producerGroup":"PID_T","properties":"TAGS\u0001TagA\u0002","#,
        r#""queueId":2,"reconsumeTimes":0,"sysFlag":0,"topic":"TopicT","unitMode":"0"},"flag":0,"language":"CPP","opaque":5,"#,
        r#""remark":"","version":63}"#,
        "\n"
    );
    let mut frame = Vec::new();
    frame.extend_from_slice(&((4 + header.len() + 5) as i32).to_be_bytes());
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(b"hello");
    let cmd = RemotingCodec::new().decode(&mut BytesMut::from(&frame[..])).unwrap().unwrap();
    assert_eq!(cmd.language, LanguageCode::Cpp);
    assert_eq!(cmd.remark.as_deref(), Some(""));
    let h = SendMessageRequestHeader::decode_for(cmd.request_code(), &cmd.ext_fields).unwrap();
    assert_eq!(h.topic, "TopicT");
    assert_eq!(h.queue_id, 2);
    assert_eq!(h.unit_mode, Some(false));
    assert_eq!(h.batch, Some(false));
    assert_eq!(h.default_topic_queue_nums, 4);
    assert_eq!(cmd.ext_fields["AccessKey"], "");
}

#[test]
fn cpp_heartbeat_with_null_ext_fields_and_ordinals() {
    let header = br#"{"code":34,"extFields":null,"flag":0,"language":"CPP","opaque":1,"remark":"","version":63}"#;
    let body = br#"{"clientID":"127.0.0.1@4242","consumerDataSet":[{"consumeFromWhere":0,"consumeType":1,"groupName":"CID_T","messageModel":1,"subscriptionDataSet":[{"classFilterMode":false,"codeSet":[],"subString":"*","subVersion":1700000000000,"tagsSet":[],"topic":"TopicT"}],"unitMode":false}],"producerDataSet":[]}"#;
    let mut frame = Vec::new();
    frame.extend_from_slice(&((4 + header.len() + body.len()) as i32).to_be_bytes());
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(header);
    frame.extend_from_slice(body);
    let cmd = RemotingCodec::new().decode(&mut BytesMut::from(&frame[..])).unwrap().unwrap();
    assert_eq!(cmd.request_code(), RequestCode::HEART_BEAT);
    assert!(cmd.ext_fields.is_empty());
    let hb: HeartbeatData = decode_json_body("HeartbeatData", &cmd.body).unwrap();
    assert_eq!(hb.client_id, "127.0.0.1@4242");
    assert_eq!(hb.consumer_data_set[0].subscription_data_set[0].topic, "TopicT");
}
