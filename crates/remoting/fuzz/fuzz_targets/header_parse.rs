//! Fuzz target: arbitrary bytes as a JSON header (wrapped in a valid frame) and as an `extFields` map, then
//! every typed header parser. Oracles: no panic; a header that parses writes `extFields` that parse back to
//! the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmq_remoting::header::*;
use raftmq_remoting::{CommandHeader, ExtFields, RemotingCommand, RequestCode};

fuzz_target!(|data: &[u8]| {
    // 1. The bytes as a JSON header.
    let mut frame = Vec::with_capacity(data.len() + 8);
    frame.extend_from_slice(&((4 + data.len()) as i32).to_be_bytes());
    frame.extend_from_slice(&((data.len() as u32) & 0xFF_FFFF).to_be_bytes());
    frame.extend_from_slice(data);
    if let Ok(cmd) = RemotingCommand::decode_frame(bytes::Bytes::from(frame).slice(4..)) {
        parse_all(&cmd.ext_fields);
    }
    // 2. The bytes as `key=value` lines, with keys drawn from what the headers read.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut ext = ExtFields::new();
    for line in text.split('\n') {
        if let Some((k, v)) = line.split_once('=') {
            ext.insert(k.to_owned(), v.to_owned());
        }
    }
    parse_all(&ext);
});

fn check<H: CommandHeader + PartialEq + std::fmt::Debug>(ext: &ExtFields) {
    if let Ok(h) = H::from_ext_fields(ext) {
        let back = H::from_ext_fields(&h.to_ext_fields()).expect("written header parses");
        assert_eq!(back, h);
    }
}

fn parse_all(ext: &ExtFields) {
    if let Ok(h) = SendMessageRequestHeader::decode_for(RequestCode::SEND_MESSAGE_V2, ext) {
        let mut v2 = ExtFields::new();
        h.write_ext_fields_v2(&mut v2);
        assert_eq!(SendMessageRequestHeader::from_ext_fields_v2(&v2).expect("written V2 header parses"), h);
        assert_eq!(SendMessageRequestHeader::from_ext_fields(&h.to_ext_fields()).expect("V1 form parses"), h);
    }
    check::<SendMessageRequestHeader>(ext);
    check::<SendMessageResponseHeader>(ext);
    check::<PullMessageRequestHeader>(ext);
    check::<PullMessageResponseHeader>(ext);
    check::<QueryConsumerOffsetRequestHeader>(ext);
    check::<UpdateConsumerOffsetRequestHeader>(ext);
    check::<OffsetResponseHeader>(ext);
    check::<GetMaxOffsetRequestHeader>(ext);
    check::<QueueRequestHeader>(ext);
    check::<SearchOffsetRequestHeader>(ext);
    check::<GetEarliestMsgStoretimeResponseHeader>(ext);
    check::<GetRouteInfoRequestHeader>(ext);
    check::<RegisterBrokerRequestHeader>(ext);
    check::<RegisterBrokerResponseHeader>(ext);
    check::<UnregisterBrokerRequestHeader>(ext);
    check::<ConsumerGroupHeader>(ext);
    check::<UnregisterClientRequestHeader>(ext);
    check::<ConsumerSendMsgBackRequestHeader>(ext);
    check::<EndTransactionRequestHeader>(ext);
    check::<CheckTransactionStateRequestHeader>(ext);
    check::<CreateTopicRequestHeader>(ext);
}
