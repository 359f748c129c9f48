//! `CommitLogReader::read_containing`: the record holding an arbitrary byte position (a physical offset that
//! came from a client), found through the dense index and CRC-verified — never bytes outside a present
//! record, never a record that failed verification.

mod common;

use common::{append, body, config, meta, open, segment_path};
use raftmq_commitlog::{LogPoint, HEADER_LEN};

#[tokio::test]
async fn finds_the_record_holding_any_position_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    // 4 KiB segments and records of 1000..1900 bytes: several segments, each ending in padding.
    let mut cfg = config(dir.path(), 4096, 8);
    cfg.prefill_ahead_bytes = 0;
    let log = open(&cfg);
    let mut locs = Vec::new();
    for i in 1..=12u64 {
        let b = body(i, 0, 1000 + (i as usize % 4) * 300 - HEADER_LEN);
        locs.push((i, append(&log, meta(i, 1), &b).await));
    }
    let r = log.reader();
    for (i, l) in &locs {
        for pos in [l.pos, l.pos + 1, l.pos + HEADER_LEN as u64, l.pos + u64::from(l.len) - 1] {
            let rec = r.read_containing(pos).unwrap().unwrap_or_else(|| panic!("no record holds {pos}"));
            assert_eq!((rec.meta.index, rec.pos), (*i, l.pos), "position {pos}");
        }
    }
    // Segment padding after a record, and everything past the last record, belong to no record.
    let (_, first) = locs[0];
    let padding = locs.windows(2).find(|w| w[1].1.pos != w[0].1.pos + u64::from(w[0].1.len)).expect("some segment is padded");
    assert!(r.read_containing(padding[0].1.pos + u64::from(padding[0].1.len)).unwrap().is_none(), "padding");
    let (_, last) = locs[locs.len() - 1];
    assert!(r.read_containing(last.pos + u64::from(last.len)).unwrap().is_none(), "write position");
    assert!(r.read_containing(u64::MAX).unwrap().is_none());

    // A damaged record is an error, not bytes.
    let (_, victim) = locs[1];
    let seg = victim.pos - victim.pos % 4096;
    let at = (victim.pos - seg) as usize + HEADER_LEN + 5;
    // In place: the segment is mapped, so it must not be truncated and rewritten.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(segment_path(&cfg.dir, seg)).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at as u64).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], at as u64).unwrap();
    }
    assert!(r.read_containing(victim.pos + HEADER_LEN as u64 + 5).is_err(), "a CRC failure is reported");

    // Purged records are gone.
    log.purge(LogPoint { index: 4, term: 1, node: common::NODE }, None).await.unwrap();
    assert!(r.read_containing(first.pos).unwrap().is_none(), "purged");
    assert_eq!(r.read_containing(locs[6].1.pos).unwrap().map(|rec| rec.meta.index), Some(7));
    log.close();
}
