//! Frame codec tests: JSON and ROCKETMQ header round trips, lenient JSON input, partial frames, caps and
//! malformed prefixes. Property tests generate commands; unit tests pin the edge cases.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use raftmq_remoting::frame::SerializeType;
use raftmq_remoting::{ExtFields, LanguageCode, RemotingCodec, RemotingCommand, RemotingError, RequestCode, ResponseCode};
use tokio_util::codec::{Decoder, Encoder};

const CAP: usize = 1 << 20;

fn frame(type_byte: u8, header: &[u8], body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i32((4 + header.len() + body.len()) as i32);
    b.put_u32((u32::from(type_byte) << 24) | header.len() as u32);
    b.put_slice(header);
    b.put_slice(body);
    b
}

fn decode_one(bytes: &[u8]) -> Result<RemotingCommand, RemotingError> {
    let mut b = BytesMut::from(bytes);
    let cmd = RemotingCommand::decode(&mut b, CAP)?.expect("complete frame");
    assert!(b.is_empty(), "frame fully consumed");
    Ok(cmd)
}

fn json_header(bytes: &[u8]) -> serde_json::Value {
    let header_len = (u32::from_be_bytes(bytes[4..8].try_into().unwrap()) & 0xFF_FFFF) as usize;
    assert_eq!(bytes[4], 0, "serialize type byte must be JSON");
    serde_json::from_slice(&bytes[8..8 + header_len]).unwrap()
}

fn language() -> impl Strategy<Value = LanguageCode> {
    prop_oneof![
        Just(LanguageCode::Java),
        Just(LanguageCode::Cpp),
        Just(LanguageCode::Go),
        Just(LanguageCode::Rust),
        Just(LanguageCode::Python),
        Just(LanguageCode::OtherLanguage),
    ]
}

fn ext_fields() -> impl Strategy<Value = ExtFields> {
    prop::collection::btree_map("[a-zA-Z_]{1,12}", any::<String>(), 0..8)
}

prop_compose! {
    fn command(binary: bool)(
        code in if binary { (i16::MIN as i32..=i16::MAX as i32).boxed() } else { any::<i32>().boxed() },
        language in language(),
        version in if binary { (0i32..=i16::MAX as i32).boxed() } else { any::<i32>().boxed() },
        opaque in any::<i32>(),
        oneway in any::<bool>(),
        // The binary form writes an absent and an empty remark the same way (length 0).
        remark in prop::option::of(if binary { ".{1,40}".boxed() } else { ".{0,40}".boxed() }),
        ext_fields in ext_fields(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) -> RemotingCommand {
        let mut cmd = RemotingCommand::request(RequestCode(code), opaque)
            .with_serialize_type(if binary { SerializeType::RocketMq } else { SerializeType::Json })
            .with_body(body);
        cmd.language = language;
        cmd.version = version;
        cmd.remark = remark;
        cmd.ext_fields = ext_fields;
        if oneway {
            cmd = cmd.mark_oneway();
        }
        cmd
    }
}

proptest! {
    #[test]
    fn json_request_round_trip(cmd in command(false)) {
        let bytes = cmd.to_bytes().unwrap();
        prop_assert_eq!(bytes[4], 0);
        let back = decode_one(&bytes).unwrap();
        prop_assert_eq!(back, cmd);
    }

    #[test]
    fn binary_request_round_trip(cmd in command(true)) {
        let bytes = cmd.to_bytes().unwrap();
        prop_assert_eq!(bytes[4], 1);
        let back = decode_one(&bytes).unwrap();
        prop_assert_eq!(back, cmd);
    }

    #[test]
    fn responses_are_always_json_with_string_values(cmd in command(true), code in any::<i32>()) {
        let resp = RemotingCommand::response_to(&cmd, ResponseCode(code), cmd.remark.clone())
            .with_serialize_type(SerializeType::RocketMq);
        let mut resp = resp;
        resp.ext_fields = cmd.ext_fields.clone();
        let bytes = resp.to_bytes().unwrap();
        let header = json_header(&bytes);
        prop_assert_eq!(header["opaque"].as_i64(), Some(i64::from(cmd.opaque)));
        prop_assert_eq!(header["flag"].as_i64(), Some(1));
        prop_assert_eq!(header["serializeTypeCurrentRPC"].as_str(), Some("JSON"));
        prop_assert_eq!(header["language"].as_str(), Some("JAVA"));
        if let Some(ext) = header.get("extFields") {
            prop_assert!(ext.as_object().unwrap().values().all(|v| v.is_string()));
        }
        let back = decode_one(&bytes).unwrap();
        prop_assert!(back.is_response());
        prop_assert_eq!(back.ext_fields, cmd.ext_fields);
    }

    #[test]
    fn every_split_point_decodes_the_same(cmd in command(false), split in any::<prop::sample::Index>()) {
        let bytes = cmd.to_bytes().unwrap();
        let at = split.index(bytes.len() + 1);
        let mut codec = RemotingCodec::with_frame_bytes_max(CAP);
        let mut buf = BytesMut::from(&bytes[..at]);
        let first = codec.decode(&mut buf).unwrap();
        if at < bytes.len() {
            prop_assert!(first.is_none());
            buf.extend_from_slice(&bytes[at..]);
            let second = codec.decode(&mut buf).unwrap();
            prop_assert_eq!(second.as_ref(), Some(&cmd));
        } else {
            prop_assert_eq!(first.as_ref(), Some(&cmd));
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn lenient_scalar_ext_values(n in any::<i64>(), b in any::<bool>(), f in -1.0e6f64..1.0e6) {
        let header = format!(
            r#"{{"code":11,"language":"CPP","version":333,"opaque":1,"flag":0,"extFields":{{"n":{n},"b":{b},"z":null,"s":"x","f":{f}}}}}"#
        );
        let cmd = decode_one(&frame(0, header.as_bytes(), b"")).unwrap();
        prop_assert_eq!(cmd.ext_fields["n"].clone(), n.to_string());
        prop_assert_eq!(cmd.ext_fields["b"].clone(), b.to_string());
        prop_assert!(!cmd.ext_fields.contains_key("z"));
        prop_assert_eq!(cmd.ext_fields["f"].parse::<f64>().unwrap(), f);
    }
}

#[test]
fn lenient_header_variants() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        // extFields null (C++ heartbeat) or absent.
        (r#"{"code":34,"language":"CPP","version":63,"opaque":1,"flag":0,"remark":null,"extFields":null}"#, &[]),
        (r#"{"code":34,"language":"CPP","version":63,"opaque":1,"flag":0}"#, &[]),
        // jsoncpp FastWriter ends with a newline; unknown fields are ignored.
        (
            r#"{"code":14,"extFields":{"queueId":0,"topic":"T"},"flag":0,"language":"CPP","opaque":3,"remark":"","version":333,"x":[1,{"y":2}]}"#,
            &[("queueId", "0"), ("topic", "T")],
        ),
        // Booleans, big numbers, nested values kept as JSON text, repeated key: last wins.
        (
            r#"{"code":10,"extFields":{"k":false,"g":1700000000000,"o":{"a":[1,2]},"t":"a","t":"b"}}"#,
            &[("k", "false"), ("g", "1700000000000"), ("o", r#"{"a":[1,2]}"#), ("t", "b")],
        ),
        // A later null removes an earlier value.
        (r#"{"code":10,"extFields":{"k":"v","k":null}}"#, &[]),
    ];
    for (json, expected) in cases {
        let mut with_newline = json.to_string();
        with_newline.push('\n');
        let cmd = decode_one(&frame(0, with_newline.as_bytes(), b"body")).unwrap_or_else(|e| panic!("{json}: {e}"));
        let expected: ExtFields = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(cmd.ext_fields, expected, "{json}");
        assert_eq!(&cmd.body[..], b"body");
    }
    // Numbers as strings at the top level, an opaque above i32::MAX (unsigned clients), unknown language.
    let cmd = decode_one(&frame(0, br#"{"code":"105","opaque":4294967295,"flag":"2","language":"NODE","version":null}"#, b"")).unwrap();
    assert_eq!(cmd.request_code(), RequestCode::GET_ROUTEINFO_BY_TOPIC);
    assert_eq!(cmd.opaque, -1);
    assert!(cmd.is_oneway() && !cmd.is_response());
    assert_eq!(cmd.language, LanguageCode::Other("NODE".into()));
    assert_eq!(cmd.version, 0);
    assert_eq!(cmd.remark, None);
}

#[test]
fn malformed_json_headers_are_errors() {
    for header in [
        &b"not json"[..],
        br#"{"language":"JAVA"}"#,
        br#"{"code":1.5}"#,
        br#"{"code":99999999999}"#,
        br#"{"code":1,"extFields":[1,2]}"#,
        br#"{"code":1,"extFields":{"a":"\ud800"}}"#,
        b"",
    ] {
        let err = decode_one(&frame(0, header, b"")).unwrap_err();
        assert!(matches!(err, RemotingError::HeaderJson { .. } | RemotingError::MissingField { .. }), "{err}");
    }
}

#[test]
fn oversize_and_bad_prefixes_fail_before_allocating() {
    let mut codec = RemotingCodec::with_frame_bytes_max(1024);
    let mut buf = BytesMut::with_capacity(16);
    buf.put_i32(1021); // 4 + 1021 = 1025 > 1024
    let cap_before = buf.capacity();
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, RemotingError::FrameTooLarge { frame_bytes: 1025, frame_bytes_max: 1024 }), "{err}");
    assert_eq!(buf.capacity(), cap_before);
    assert_eq!(buf.len(), 4, "nothing consumed");

    for length in [i32::MIN, -1, 0, 3] {
        let mut buf = BytesMut::new();
        buf.put_i32(length);
        assert!(matches!(codec.decode(&mut buf), Err(RemotingError::FrameLengthInvalid { .. })));
    }
    // A default-capped codec refuses a 2 GiB claim.
    let mut buf = BytesMut::new();
    buf.put_i32(i32::MAX);
    assert!(matches!(RemotingCodec::new().decode(&mut buf), Err(RemotingError::FrameTooLarge { .. })));

    // Exactly at the cap is accepted, and the buffer grows to the cap, not past it.
    let mut buf = BytesMut::with_capacity(8);
    buf.put_i32(1020);
    buf.put_u32(2);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(buf.capacity(), 1024);
}

#[test]
fn a_partial_small_frame_grows_the_buffer_to_a_full_read_chunk() {
    // Later buffers inherit the allocation's size; a one-frame buffer would cost a read syscall per frame.
    let mut codec = RemotingCodec::new();
    let mut buf = BytesMut::with_capacity(8);
    buf.put_i32(100);
    buf.put_u32(2);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() >= raftmq_remoting::frame::READ_BUFFER_MIN, "capacity {}", buf.capacity());
    assert_eq!(buf.len(), 8, "nothing consumed");
}

#[test]
fn a_large_frame_grows_the_buffer_with_the_bytes_that_arrive() {
    // The buffer holds at most twice what arrived (at least one read chunk), whatever the prefix announces,
    // and the frame still decodes whole when its last byte arrives.
    let read_chunk = raftmq_remoting::frame::READ_BUFFER_MIN;
    let body = vec![0xA5u8; 3 << 20];
    let cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 9).with_body(body.clone());
    let wire = cmd.to_bytes().unwrap();
    let mut codec = RemotingCodec::new();
    let mut buf = BytesMut::new();
    let (mut fed, mut grows, mut last_capacity) = (0usize, 0usize, 0usize);
    let mut decoded = None;
    while decoded.is_none() {
        // Like a socket read: fill the free space (at least one byte), never past what was sent.
        let room = (buf.capacity() - buf.len()).max(1);
        let n = room.min(wire.len() - fed);
        buf.put_slice(&wire[fed..fed + n]);
        fed += n;
        decoded = codec.decode(&mut buf).unwrap();
        if decoded.is_none() {
            assert!(buf.capacity() <= read_chunk.max(2 * buf.len()), "capacity {} holding {} bytes", buf.capacity(), buf.len());
            if buf.capacity() != last_capacity {
                grows += 1;
                last_capacity = buf.capacity();
            }
        }
    }
    assert_eq!(fed, wire.len());
    assert_eq!(decoded.unwrap().body, body);
    // Doubling: about log2(3 MiB / 64 KiB) + 1 buffers, not one per read.
    assert!(grows <= 8, "{grows} buffers");
}

#[test]
fn partial_prefix_and_header_word() {
    let mut codec = RemotingCodec::new();
    for n in 0..4 {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 8][..n]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }
}

#[test]
fn header_length_and_type_errors() {
    // Header length larger than the frame.
    let mut b = BytesMut::new();
    b.put_i32(8);
    b.put_u32(5);
    b.put_u32(0);
    assert!(matches!(decode_one(&b), Err(RemotingError::HeaderLengthInvalid { header_len: 5, frame_len: 8 })));
    // Unknown serialize type.
    let f = frame(2, b"{}", b"");
    assert!(matches!(decode_one(&f), Err(RemotingError::UnknownSerializeType { serialize_type: 2 })));
    // After a header error the frame is consumed, so the next frame still decodes.
    let mut two = frame(2, b"{}", b"");
    two.extend_from_slice(&RemotingCommand::request(RequestCode::HEART_BEAT, 9).to_bytes().unwrap());
    let mut codec = RemotingCodec::new();
    assert!(codec.decode(&mut two).is_err());
    assert_eq!(codec.decode(&mut two).unwrap().unwrap().opaque, 9);
}

#[test]
fn binary_header_truncations_are_errors() {
    let cmd = RemotingCommand::request(RequestCode::PULL_MESSAGE, 5)
        .with_serialize_type(SerializeType::RocketMq)
        .with_remark("r")
        .with_ext("topic", "T")
        .with_ext("queueId", "1");
    let header = cmd.encode_header().unwrap();
    for cut in 0..header.len() {
        let f = frame(1, &header[..cut], b"");
        assert!(decode_one(&f).is_err(), "cut at {cut}");
    }
    // Negative lengths.
    let mut h = header.clone();
    h[13..17].copy_from_slice(&(-1i32).to_be_bytes()); // remark length
    assert!(matches!(decode_one(&frame(1, &h, b"")), Err(RemotingError::HeaderLengthNegative { .. })));
    // Invalid UTF-8 in a key.
    let mut h = header.clone();
    let key_pos = header.windows(5).position(|w| w == b"queue").unwrap();
    h[key_pos] = 0xFF;
    assert!(matches!(decode_one(&frame(1, &h, b"")), Err(RemotingError::InvalidUtf8 { .. })));
}

#[test]
fn binary_header_hand_built() {
    // code 14, CPP, version 333, opaque 7, flag 0, no remark, extFields {topic: T}.
    let mut h = Vec::new();
    h.extend_from_slice(&14i16.to_be_bytes());
    h.push(1);
    h.extend_from_slice(&333i16.to_be_bytes());
    h.extend_from_slice(&7i32.to_be_bytes());
    h.extend_from_slice(&0i32.to_be_bytes());
    h.extend_from_slice(&0i32.to_be_bytes());
    let entry = [&5i16.to_be_bytes()[..], b"topic", &1i32.to_be_bytes(), b"T"].concat();
    h.extend_from_slice(&(entry.len() as i32).to_be_bytes());
    h.extend_from_slice(&entry);
    let cmd = decode_one(&frame(1, &h, b"xy")).unwrap();
    assert_eq!(cmd.code, 14);
    assert_eq!(cmd.language, LanguageCode::Cpp);
    assert_eq!(cmd.version, 333);
    assert_eq!(cmd.opaque, 7);
    assert_eq!(cmd.remark, None);
    assert_eq!(cmd.ext_fields["topic"], "T");
    assert_eq!(&cmd.body[..], b"xy");
    assert_eq!(cmd.serialize_type, SerializeType::RocketMq);
    // Our encoder produces the same bytes.
    let mut again = cmd.clone();
    again.body = Bytes::new();
    assert_eq!(again.encode_header().unwrap(), h);
}

#[test]
fn encode_errors() {
    let big = RemotingCommand::request(RequestCode::SEND_MESSAGE, 1).with_body(vec![0u8; 2048]);
    let mut dst = BytesMut::new();
    assert!(matches!(RemotingCodec::with_frame_bytes_max(1024).encode(&big, &mut dst), Err(RemotingError::FrameTooLarge { .. })));
    assert!(dst.is_empty());
    let wide = RemotingCommand::request(RequestCode::POP_MESSAGE, 1).with_serialize_type(SerializeType::RocketMq);
    assert!(matches!(wide.encode_header(), Err(RemotingError::Unencodable { field: "code", .. })));
    // The same command in JSON is fine.
    assert!(wide.with_serialize_type(SerializeType::Json).to_bytes().is_ok());
}

#[test]
fn response_helpers() {
    let req = RemotingCommand::oneway(RequestCode::UPDATE_CONSUMER_OFFSET, 77);
    assert!(req.is_oneway());
    let ok = RemotingCommand::success_to(&req);
    assert!(ok.is_response() && !ok.is_oneway());
    assert_eq!((ok.opaque, ok.response_code()), (77, ResponseCode::SUCCESS));
    let unknown = RemotingCommand::request(RequestCode(4242), 3);
    let ns = RemotingCommand::not_supported_to(&unknown);
    assert_eq!(ns.response_code(), ResponseCode::REQUEST_CODE_NOT_SUPPORTED);
    assert_eq!(ns.opaque, 3);
    assert!(ns.remark.as_deref().unwrap().contains("4242"));
    let bytes = ns.to_bytes().unwrap();
    let header = json_header(&bytes);
    assert_eq!(header["code"], 3);
    assert!(header.get("extFields").is_none(), "empty extFields are omitted");
    // Response JSON carries the fields every client reads.
    for key in ["code", "language", "version", "opaque", "flag", "remark", "serializeTypeCurrentRPC"] {
        assert!(header.get(key).is_some(), "{key}");
    }
}

#[test]
fn codec_decode_eof_with_leftover_is_an_error() {
    let mut codec = RemotingCodec::new();
    let bytes = RemotingCommand::request(RequestCode::HEART_BEAT, 1).to_bytes().unwrap();
    let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
    assert!(codec.decode_eof(&mut buf).is_err());
}

#[test]
fn ext_fields_count_is_capped() {
    use raftmq_remoting::frame::EXT_FIELDS_MAX;
    let json = |n: usize| {
        let ext: Vec<String> = (0..n).map(|i| format!("\"k{i}\":\"v\"")).collect();
        format!(r#"{{"code":10,"extFields":{{{}}}}}"#, ext.join(","))
    };
    assert_eq!(decode_one(&frame(0, json(EXT_FIELDS_MAX).as_bytes(), b"")).unwrap().ext_fields.len(), EXT_FIELDS_MAX);
    assert!(matches!(decode_one(&frame(0, json(EXT_FIELDS_MAX + 1).as_bytes(), b"")), Err(RemotingError::HeaderJson { .. })));
    let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE, 1).with_serialize_type(SerializeType::RocketMq);
    for i in 0..EXT_FIELDS_MAX {
        cmd.ext_fields.insert(format!("k{i}"), "v".into());
    }
    assert_eq!(decode_one(&cmd.to_bytes().unwrap()).unwrap(), cmd);
    cmd.ext_fields.insert("one-more".into(), "v".into());
    assert!(matches!(decode_one(&cmd.to_bytes().unwrap()), Err(RemotingError::TooManyExtFields { .. })));
}
