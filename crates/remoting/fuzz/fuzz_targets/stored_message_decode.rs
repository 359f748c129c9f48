//! Fuzz target: arbitrary bytes as stored messages (a PULL body). Oracles: no panic; a decoded V1/IPv4
//! message re-encodes to exactly its input bytes (apart from BODYCRC, which the encoder computes); inflating
//! a body never returns more than the cap.

#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmq_remoting::message::*;

const BODY_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for m in StoredMessages::new(data) {
        let Ok(m) = m else { break };
        let input = &rest[..m.store_size as usize];
        rest = &rest[m.store_size as usize..];
        let _ = m.verify_body_crc();
        let _ = m.properties_map();
        let id = m.offset_msg_id();
        assert_eq!(decode_offset_msg_id(&id.to_string()).expect("own id parses"), id);
        if let Ok(body) = m.uncompressed_body(BODY_BYTES_MAX) {
            assert!(body.len() <= BODY_BYTES_MAX);
        }
        re_encode(&m, input);
    }
});

fn re_encode(m: &DecodedMessage<'_>, input: &[u8]) {
    let (std::net::SocketAddr::V4(born_host), std::net::SocketAddr::V4(store_host)) = (m.born_host, m.store_host) else { return };
    if m.magic != MESSAGE_MAGIC_CODE_V1 || m.sys_flag & (sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6) != 0 {
        return;
    }
    let msg = MessageToStore {
        topic: m.topic,
        queue_id: m.queue_id,
        flag: m.flag,
        queue_offset: m.queue_offset,
        physical_offset: m.physical_offset,
        sys_flag: m.sys_flag,
        born_timestamp: m.born_timestamp,
        born_host,
        store_timestamp: m.store_timestamp,
        store_host,
        reconsume_times: m.reconsume_times,
        prepared_transaction_offset: m.prepared_transaction_offset,
        body: m.body,
        properties: m.properties,
    };
    let mut out = Vec::new();
    encode_stored_message(&msg, &mut out).expect("a decoded V1 message re-encodes");
    let mut expected = input.to_vec();
    expected[BODY_CRC_POSITION..BODY_CRC_POSITION + 4].copy_from_slice(&out[BODY_CRC_POSITION..BODY_CRC_POSITION + 4]);
    assert_eq!(out, expected);
}
