//! Fuzz target: arbitrary bytes through the frame codec, fed in two chunks as a socket would deliver them.
//! Oracles: no panic; a decoded command re-encodes and decodes to the same command (responses come back
//! with a JSON header); the buffer never grows past the cap.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raftmq_remoting::{RemotingCodec, RemotingCommand, SerializeType};
use tokio_util::codec::Decoder;

const CAP: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let at = usize::from(split).min(data.len());
    let mut codec = RemotingCodec::with_frame_bytes_max(CAP);
    let mut buf = BytesMut::from(&data[..at]);
    let mut fed_rest = false;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(cmd)) => check_round_trip(&cmd),
            Ok(None) if !fed_rest => {
                assert!(buf.capacity() <= CAP.max(data.len()), "buffer grew past the cap");
                buf.extend_from_slice(&data[at..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
});

fn check_round_trip(cmd: &RemotingCommand) {
    let mut out = BytesMut::new();
    // Re-encoding may grow the header (JSON escapes), so use a roomy cap; some commands cannot be written
    // in their own serialisation (a JSON-decoded code wider than i16 cannot go into a binary header).
    if cmd.encode(&mut out, 1 << 24).is_err() {
        return;
    }
    let again = RemotingCommand::decode(&mut out, 1 << 24).expect("re-encoded frame decodes").expect("whole frame");
    let mut expected = cmd.clone();
    expected.serialize_type = if cmd.is_response() { SerializeType::Json } else { cmd.serialize_type };
    assert_eq!(again, expected);
}
