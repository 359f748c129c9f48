//! Fuzz target: arbitrary bytes as a SEND_BATCH_MESSAGE body. Oracles: no panic; each decoded record
//! re-encodes to its input bytes (apart from MAGICCODE and BODYCRC, which clients write as 0 and the broker
//! ignores); `decode_batch` agrees with the iterator.

#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmq_remoting::message::*;

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    let mut ok = 0usize;
    for m in BatchMessages::new(data) {
        let Ok(m) = m else { break };
        let _ = decode_properties(m.properties);
        let mut out = Vec::new();
        let n = encode_batch_message(&m, &mut out).expect("a decoded record re-encodes");
        let mut expected = data[pos..pos + n].to_vec();
        expected[4..12].fill(0);
        assert_eq!(out, expected);
        pos += n;
        ok += 1;
    }
    match decode_batch(data, usize::MAX) {
        Ok(all) => assert_eq!(all.len(), ok),
        Err(_) => assert!(pos < data.len()),
    }
});
