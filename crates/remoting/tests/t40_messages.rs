//! Property tests of the stored-message layout, property blocks, offsetMsgId, UNIQ_KEY, tag hashes and
//! SEND_BATCH bodies.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use proptest::prelude::*;
use raftmq_remoting::message::*;
use raftmq_remoting::MessageError;

fn host() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

/// Property names and values without separators; names non-empty.
fn props() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[^\u{1}\u{2}]{1,12}", "[^\u{1}\u{2}]{0,20}", 0..6)
}

#[derive(Debug, Clone)]
struct Owned {
    topic: String,
    body: Vec<u8>,
    properties: String,
    fields: (i32, i32, i64, i64, i32, i64, SocketAddrV4, i64, SocketAddrV4, i32, i64),
}

impl Owned {
    fn view(&self) -> MessageToStore<'_> {
        let (
            queue_id,
            flag,
            queue_offset,
            physical_offset,
            sys,
            born_timestamp,
            born_host,
            store_timestamp,
            store_host,
            reconsume_times,
            pto,
        ) = self.fields;
        MessageToStore {
            topic: &self.topic,
            queue_id,
            flag,
            queue_offset,
            physical_offset,
            sys_flag: sys,
            born_timestamp,
            born_host,
            store_timestamp,
            store_host,
            reconsume_times,
            prepared_transaction_offset: pto,
            body: &self.body,
            properties: &self.properties,
        }
    }
}

prop_compose! {
    fn message()(
        topic in "[A-Za-z0-9%_-]{0,127}",
        body in prop::collection::vec(any::<u8>(), 0..512),
        props in props(),
        a in (any::<i32>(), any::<i32>(), any::<i64>(), any::<i64>()),
        sys in any::<i32>().prop_map(|f| f & !(sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6)),
        b in (any::<i64>(), host(), any::<i64>(), host(), any::<i32>(), any::<i64>()),
    ) -> Owned {
        Owned {
            topic,
            body,
            properties: properties_to_string(&props).unwrap(),
            fields: (a.0, a.1, a.2, a.3, sys, b.0, b.1, b.2, b.3, b.4, b.5),
        }
    }
}

proptest! {
    #[test]
    fn stored_message_round_trip(m in message(), prefix in prop::collection::vec(any::<u8>(), 0..8)) {
        let msg = m.view();
        let mut out = prefix.clone();
        let n = encode_stored_message(&msg, &mut out).unwrap();
        prop_assert_eq!(n, stored_message_len(&msg));
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        let enc = &out[prefix.len()..];
        let d = decode_stored_message(enc).unwrap();
        d.verify_body_crc().unwrap();
        prop_assert_eq!(d.store_size as usize, n);
        prop_assert_eq!(d.magic, MESSAGE_MAGIC_CODE_V1);
        prop_assert_eq!(d.topic, msg.topic);
        prop_assert_eq!(d.body, msg.body);
        prop_assert_eq!(d.properties, msg.properties);
        prop_assert_eq!(d.queue_id, msg.queue_id);
        prop_assert_eq!(d.flag, msg.flag);
        prop_assert_eq!(d.queue_offset, msg.queue_offset);
        prop_assert_eq!(d.physical_offset, msg.physical_offset);
        prop_assert_eq!(d.sys_flag, msg.sys_flag);
        prop_assert_eq!(d.born_timestamp, msg.born_timestamp);
        prop_assert_eq!(d.born_host, SocketAddr::V4(msg.born_host));
        prop_assert_eq!(d.store_timestamp, msg.store_timestamp);
        prop_assert_eq!(d.store_host, SocketAddr::V4(msg.store_host));
        prop_assert_eq!(d.reconsume_times, msg.reconsume_times);
        prop_assert_eq!(d.prepared_transaction_offset, msg.prepared_transaction_offset);
        prop_assert_eq!(d.properties_map(), decode_properties(msg.properties));
        // Fixed positions hold what the broker patches.
        prop_assert_eq!(&enc[QUEUE_OFFSET_POSITION..QUEUE_OFFSET_POSITION + 8], &msg.queue_offset.to_be_bytes()[..]);
        prop_assert_eq!(&enc[PHYSICAL_OFFSET_POSITION..PHYSICAL_OFFSET_POSITION + 8], &msg.physical_offset.to_be_bytes()[..]);
        prop_assert_eq!(&enc[STORE_TIMESTAMP_POSITION..STORE_TIMESTAMP_POSITION + 8], &msg.store_timestamp.to_be_bytes()[..]);
    }

    #[test]
    fn patching_offsets_changes_only_them(m in message(), q in any::<i64>(), p in any::<i64>()) {
        let mut buf = Vec::new();
        encode_stored_message(&m.view(), &mut buf).unwrap();
        let mut patched = buf.clone();
        patch_offsets(&mut patched, q, p).unwrap();
        let d = decode_stored_message(&patched).unwrap();
        prop_assert_eq!((d.queue_offset, d.physical_offset), (q, p));
        let mut expected = m.clone();
        expected.fields.2 = q;
        expected.fields.3 = p;
        let mut re = Vec::new();
        encode_stored_message(&expected.view(), &mut re).unwrap();
        prop_assert_eq!(patched, re);
    }

    #[test]
    fn pull_body_of_many_messages(ms in prop::collection::vec(message(), 0..6)) {
        let mut buf = Vec::new();
        for m in &ms {
            encode_stored_message(&m.view(), &mut buf).unwrap();
        }
        let decoded: Vec<_> = StoredMessages::new(&buf).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(decoded.len(), ms.len());
        for (d, m) in decoded.iter().zip(&ms) {
            prop_assert_eq!(d.body, &m.body[..]);
            prop_assert_eq!(d.topic, &m.topic[..]);
        }
    }

    #[test]
    fn properties_round_trip(p in props()) {
        let s = properties_to_string(&p).unwrap();
        prop_assert_eq!(decode_properties(&s), p.clone());
        for (k, v) in &p {
            prop_assert_eq!(get_property(&s, k), Some(v.as_str()));
        }
    }

    #[test]
    fn offset_msg_id_round_trip(h in host(), offset in any::<i64>(), v6 in any::<[u8; 16]>(), use_v6 in any::<bool>()) {
        let store_host = if use_v6 { SocketAddr::new(std::net::Ipv6Addr::from(v6).into(), h.port()) } else { SocketAddr::V4(h) };
        let s = encode_offset_msg_id(store_host, offset);
        prop_assert_eq!(s.len(), if use_v6 { 56 } else { 32 });
        prop_assert!(s.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        let id = decode_offset_msg_id(&s).unwrap();
        prop_assert_eq!(id, OffsetMsgId { store_host, commit_log_offset: offset });
        prop_assert_eq!(decode_offset_msg_id(&s.to_ascii_lowercase()).unwrap(), id);
    }

    #[test]
    fn uniq_ids_are_unique_and_parse(ip in any::<[u8; 4]>(), pid in any::<u32>(), seed in any::<i32>(),
                                     start in 0i64..4_102_444_800_000, steps in prop::collection::vec(0i64..10_000_000, 1..50)) {
        let mut g = UniqIdGenerator::new(Ipv4Addr::from(ip), pid, seed);
        let mut seen = std::collections::BTreeSet::new();
        let mut now = start;
        for (i, step) in steps.iter().enumerate() {
            now += step;
            let id = g.next_id(now);
            let p = parse_uniq_id(&id).unwrap();
            prop_assert_eq!(p.ip, Ipv4Addr::from(ip));
            prop_assert_eq!(p.pid_low, pid as u16);
            prop_assert_eq!(p.seed, seed);
            prop_assert_eq!(p.counter as usize, i);
            // Milliseconds since the start of a month, under 31 days; like Java's (int) cast it wraps past
            // 2^31 ms (about day 25), so read it as unsigned.
            prop_assert!(i64::from(p.month_ms as u32) < 31 * 86_400_000);
            prop_assert!(seen.insert(id));
        }
    }

    #[test]
    fn tag_hash_is_java_string_hash(s in ".{0,40}") {
        // Reference: Java's definition, sum of c[i]·31^(n-1-i) over UTF-16 units, mod 2^32.
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut h: u32 = 0;
        for u in &units {
            h = h.wrapping_mul(31).wrapping_add(u32::from(*u));
        }
        prop_assert_eq!(java_string_hash(&s), h as i32);
    }

    #[test]
    fn batch_round_trip(items in prop::collection::vec((any::<i32>(), prop::collection::vec(any::<u8>(), 0..64), props()), 0..10)) {
        let owned: Vec<(i32, Vec<u8>, String)> = items.into_iter().map(|(f, b, p)| (f, b, properties_to_string(&p).unwrap())).collect();
        let msgs: Vec<BatchMessage<'_>> = owned.iter().map(|(f, b, p)| BatchMessage { flag: *f, body: b, properties: p }).collect();
        let mut body = Vec::new();
        for m in &msgs {
            encode_batch_message(m, &mut body).unwrap();
        }
        prop_assert_eq!(decode_batch(&body, 1000).unwrap(), msgs);
    }

    #[test]
    fn zlib_round_trip(body in prop::collection::vec(any::<u8>(), 0..2048), level in 0u32..10) {
        let z = compress_body_zlib(&body, level);
        let flag = sys_flag::COMPRESSED | sys_flag::COMPRESSION_ZLIB;
        let out = decompress_body(flag, &z, body.len()).unwrap();
        prop_assert_eq!(out.as_ref(), &body[..]);
    }
}

#[test]
fn java_batch_encoding_hand_built() {
    // Two messages as Java's MessageDecoder.encodeMessages writes them (MAGICCODE and BODYCRC are 0).
    let mut body = Vec::new();
    for (flag, b, p) in [(0i32, &b"m1"[..], "UNIQ_KEY\u{1}A\u{2}"), (3, b"msg2", "")] {
        let total = 20 + b.len() + 2 + p.len();
        body.extend_from_slice(&(total as i32).to_be_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(&flag.to_be_bytes());
        body.extend_from_slice(&(b.len() as i32).to_be_bytes());
        body.extend_from_slice(b);
        body.extend_from_slice(&(p.len() as i16).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    let msgs = decode_batch(&body, 16).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!((msgs[0].flag, msgs[0].body, get_property(msgs[0].properties, "UNIQ_KEY")), (0, &b"m1"[..], Some("A")));
    assert_eq!((msgs[1].flag, msgs[1].body, msgs[1].properties), (3, &b"msg2"[..], ""));
    // A TOTALSIZE that disagrees with the fields is rejected.
    let mut bad = body.clone();
    bad[3] += 1;
    assert!(matches!(decode_batch(&bad, 16), Err(MessageError::InvalidLength { .. })));
}
