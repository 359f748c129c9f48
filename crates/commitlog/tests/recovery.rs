//! Recovery of the commitlog on open, and the on-disk effects of truncate, purge and segment rolls.
//!
//! Covers: a torn tail cut at every byte of the last record (zeroed or garbage), zero-filled and short
//! tails, corruption inside a sealed segment (startup refused, naming file and offset, nothing repaired),
//! truncate + reopen (truncated records never come back), purge + reopen, a crash in the middle of a purge
//! (finished on the next open), purge beyond the last entry followed by an append (with and without a
//! position hint), `rebase` of an emptied log, appends at or below the purge point, truncates of records
//! that had rolled to a new segment, durable metadata (the vote), segment rolls at
//! every boundary case, oversized records, index rebuild, and byte-identical data files for identical input.
//! Torn tails and sealed-segment damage are checked twice: with a recovery checkpoint behind the damaged
//! record (the state a crash leaves) and without any checkpoint (a full scan).
//!
//! Tiny segments (512 bytes) and index files (8 slots) make every boundary case reachable with a few records.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use raftmq_commitlog::record::{encode_record, PAD_MAGIC, RECORD_MAGIC};
use raftmq_commitlog::{CommitLog, CommitLogConfig, CommitLogError, LogPoint, RecordBatch, RecordMeta, HEADER_LEN};
use tempfile::TempDir;

const SEG: u64 = 512;
const PER: u64 = 8;

/// A record written by a test, with where it landed.
#[derive(Clone, Debug)]
struct Rec {
    meta: RecordMeta,
    body: Vec<u8>,
    pos: u64,
}

/// Writes records `1..=lens.len()` (record `i` is `lens[i-1]` bytes long, header included) one append at a
/// time, and returns them with their positions.
async fn write_records(log: &CommitLog, first: u64, lens: &[usize], term: impl Fn(u64) -> u64) -> Vec<Rec> {
    let mut out = Vec::new();
    for (k, &len) in lens.iter().enumerate() {
        let index = first + k as u64;
        let m = meta(index, term(index));
        let b = body(index, 0, body_len_for(len));
        let loc = append(log, m, &b).await;
        assert_eq!(loc.len as usize, len);
        out.push(Rec { meta: m, body: b, pos: loc.pos });
    }
    out
}

fn assert_all(log: &CommitLog, recs: &[Rec]) {
    for r in recs {
        let pos = assert_record(log, r.meta, &r.body);
        assert_eq!(pos, r.pos, "position of record {}", r.meta.index);
    }
}

fn tmp() -> TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// Torn tails
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Damage {
    Zero,
    Garbage,
}

/// What the recovery checkpoint names when a test damages the log.
#[derive(Clone, Copy, Debug)]
enum Ckpt {
    /// The record before the damaged one (as after a crash: the damaged record was never checkpointed).
    Behind,
    /// No checkpoint file: a full scan.
    Absent,
}

/// Writes records of the given lengths; the checkpoint file is then the one written when all but the last
/// record were present (`Behind`, nothing for a single record) or removed (`Absent`).
async fn write_with_checkpoint_behind_last(cfg: &CommitLogConfig, lens: &[usize], term: impl Fn(u64) -> u64, ckpt: Ckpt) -> Vec<Rec> {
    let log = open(cfg);
    let (head, tail) = lens.split_at(lens.len() - 1);
    let mut recs = write_records(&log, 1, head, &term).await;
    log.close();
    let saved = fs::read(checkpoint_path(&cfg.dir)).unwrap();
    assert_eq!(checkpoint_prefix(&cfg.dir).map(|p| p.last.index), recs.last().map(|r| r.meta.index), "checkpoint after close");
    let log = open(cfg);
    recs.extend(write_records(&log, lens.len() as u64, tail, &term).await);
    log.close();
    match ckpt {
        Ckpt::Behind => fs::write(checkpoint_path(&cfg.dir), saved).unwrap(),
        Ckpt::Absent => fs::remove_file(checkpoint_path(&cfg.dir)).unwrap(),
    }
    recs
}

/// Writes records of the given lengths, then for every byte `cut` of the last record and both kinds of
/// damage: copies the log, damages `[cut, end of record)`, reopens and checks that exactly the earlier
/// records remain, that the next index can be appended at the torn record's position (the cut bytes are
/// gone, not merely overwritten), and that the result survives another reopen.
async fn torn_tail_at_every_byte(lens: &[usize]) {
    torn_tail_at_every_byte_with(lens, Ckpt::Behind).await;
    torn_tail_at_every_byte_with(lens, Ckpt::Absent).await;
}

async fn torn_tail_at_every_byte_with(lens: &[usize], ckpt: Ckpt) {
    let base = tmp();
    let cfg = config(base.path(), SEG, PER);
    let recs = write_with_checkpoint_behind_last(&cfg, lens, |i| 1 + i / 4, ckpt).await;

    let (torn, kept) = recs.split_last().unwrap();
    let torn_len = *lens.last().unwrap() as u64;
    let seg_base = torn.pos - torn.pos % SEG;
    let off = torn.pos - seg_base;
    assert_eq!(numbered(base.path(), "data").last(), Some(&seg_base), "the torn record must be in the last segment");

    for cut in 0..torn_len {
        for damage in [Damage::Zero, Damage::Garbage] {
            let work = tmp();
            copy_dir(base.path(), work.path());
            edit_file(&segment_path(work.path(), seg_base), |b| {
                for k in (off + cut)..(off + torn_len) {
                    let k = k as usize;
                    b[k] = match damage {
                        Damage::Zero => 0,
                        // Never equal to the original byte.
                        Damage::Garbage => b[k] ^ ((k * 37 % 255) as u8 + 1),
                    };
                }
            });
            let cfg = config(work.path(), SEG, PER);
            let ctx = format!("cut at byte {cut} of {torn_len}, {damage:?}, checkpoint {ckpt:?}");

            let log = open(&cfg);
            let expect_ckpt = match ckpt {
                Ckpt::Behind => kept.last().map(|r| r.meta.point()),
                Ckpt::Absent => None,
            };
            assert_eq!(log.reader().recovery().checkpoint, expect_ckpt, "{ctx}: {:?}", log.reader().recovery());
            assert_eq!(log.reader().recovery().records_scanned, if expect_ckpt.is_some() { 0 } else { kept.len() as u64 }, "{ctx}");
            let st = log.reader().state();
            assert_eq!(st.last, kept.last().map(|r| r.meta.point()), "{ctx}: last");
            assert_eq!(st.first, kept.first().map(|r| r.meta.index), "{ctx}: first");
            assert_eq!(st.write_pos, torn.pos, "{ctx}: write position");
            assert_all(&log, kept);
            assert_absent(&log, torn.meta.index);

            // A shorter replacement: if the torn bytes were not cut, what follows it would not be zero.
            let new_body = body(torn.meta.index, 99, (body_len_for(torn_len as usize)) / 2 + 1);
            let loc = append(&log, torn.meta, &new_body).await;
            assert_eq!(loc.pos, torn.pos, "{ctx}: replacement position");
            let new_end = (off + loc.len as u64) as usize;
            let seg_bytes = fs::read(segment_path(work.path(), seg_base)).unwrap();
            assert!(seg_bytes[new_end..].iter().all(|&b| b == 0), "{ctx}: bytes after the replacement are not zero");
            log.close();

            let log = open(&cfg);
            assert_all(&log, kept);
            assert_record(&log, torn.meta, &new_body);
            assert_eq!(log.reader().state().last, Some(torn.meta.point()), "{ctx}: last after second reopen");
            assert_eq!(log.reader().state().write_pos, torn.pos + loc.len as u64, "{ctx}");
            log.close();
        }
    }
}

#[tokio::test]
async fn torn_tail_in_the_middle_of_the_last_segment() {
    // 100-byte records, 5 per segment: record 13 sits at offset 200 of segment 1024.
    torn_tail_at_every_byte(&[100; 13]).await;
}

#[tokio::test]
async fn torn_tail_at_the_start_of_the_last_segment() {
    // Record 11 is the first record of segment 1024; segment 512 ends with padding.
    torn_tail_at_every_byte(&[100; 11]).await;
}

#[tokio::test]
async fn torn_tail_of_a_record_that_fills_its_segment() {
    // Four 128-byte records fill a segment exactly; record 8 ends at the segment end.
    torn_tail_at_every_byte(&[128; 8]).await;
}

#[tokio::test]
async fn torn_tail_of_the_only_record() {
    torn_tail_at_every_byte(&[77]).await;
}

#[tokio::test]
async fn torn_tail_of_mixed_lengths_leaving_a_short_gap() {
    // 127 * 4 = 508: segment 0 ends with 4 zero bytes (no room for padding); record 6 is torn.
    torn_tail_at_every_byte(&[127, 127, 127, 127, 300, 41]).await;
}

#[tokio::test]
async fn garbage_after_the_last_record_is_cut() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let recs = write_records(&log, 1, &[100; 7], |_| 1).await;
    let end = log.reader().state().write_pos;
    log.close();
    // A partially written next record: a valid magic followed by junk.
    let (base, off) = (end - end % SEG, (end % SEG) as usize);
    edit_file(&segment_path(dir.path(), base), |b| {
        b[off..off + 4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        for (k, x) in b[off + 4..off + 60].iter_mut().enumerate() {
            *x = k as u8 | 0x80;
        }
    });
    let log = open(&cfg);
    assert_all(&log, &recs);
    assert_eq!(log.reader().state().write_pos, end);
    let seg = fs::read(segment_path(dir.path(), base)).unwrap();
    assert!(seg[off..].iter().all(|&b| b == 0), "garbage after the last record must be zeroed on open");
    let loc = append(&log, meta(8, 1), &body(8, 0, 10)).await;
    assert_eq!(loc.pos, end);
    log.close();
    let log = open(&cfg);
    assert_all(&log, &recs);
    assert_record(&log, meta(8, 1), &body(8, 0, 10));
    log.close();
}

// ---------------------------------------------------------------------------------------------------------
// Zero-filled and short tails
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn zero_filled_last_segment_after_a_padded_one() {
    // 11 records: the 11th opened segment 1024 after padding segment 512. Zeroing the whole of segment
    // 1024 is a crash after the roll created the file but before the record reached the disk.
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let recs = write_records(&log, 1, &[100; 11], |_| 1).await;
    log.close();
    assert_eq!(numbered(dir.path(), "data"), vec![0, 512, 1024]);
    edit_file(&segment_path(dir.path(), 1024), |b| b.fill(0));

    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!(st.last, Some(recs[9].meta.point()));
    assert_eq!(st.write_pos, 1024, "padding of segment 512 means the next record opens segment 1024");
    assert_all(&log, &recs[..10]);
    assert_absent(&log, 11);
    let loc = append(&log, recs[10].meta, &recs[10].body).await;
    assert_eq!(loc.pos, 1024);
    log.close();
    let log = open(&cfg);
    assert_all(&log, &recs);
    log.close();
}

#[tokio::test]
async fn short_last_segment_is_extended() {
    // A crash while the newest segment was being preallocated leaves it shorter than the segment size.
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let recs = write_records(&log, 1, &[100; 11], |_| 1).await;
    log.close();
    let last_seg = segment_path(dir.path(), 1024);
    fs::OpenOptions::new().write(true).open(&last_seg).unwrap().set_len(0).unwrap();

    let log = open(&cfg);
    assert_eq!(fs::metadata(&last_seg).unwrap().len(), SEG, "short last segment extended to the segment size");
    assert_eq!(log.reader().state().last, Some(recs[9].meta.point()));
    assert_all(&log, &recs[..10]);
    let loc = append(&log, recs[10].meta, &recs[10].body).await;
    assert_eq!(loc.pos, 1024);
    log.close();
    let log = open(&cfg);
    assert_all(&log, &recs);
    log.close();
}

#[tokio::test]
async fn short_sealed_segment_is_corruption() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    write_records(&log, 1, &[100; 11], |_| 1).await;
    log.close();
    let sealed = segment_path(dir.path(), 512);
    fs::OpenOptions::new().write(true).open(&sealed).unwrap().set_len(300).unwrap();
    match open_err(&cfg) {
        CommitLogError::Corrupt { file, .. } => assert_eq!(file, sealed),
        e => panic!("expected Corrupt, got {e}"),
    }
}

#[tokio::test]
async fn empty_log_and_zero_tail_reopen() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.purged, st.write_pos), (None, None, None, 0));
    log.close();
    let log = open(&cfg);
    assert_eq!(log.reader().state().last, None);
    let recs = write_records(&log, 1, &[90, 90], |_| 1).await;
    log.close();
    // Segment 0's tail after the two records is zero: nothing to cut, nothing lost.
    let log = open(&cfg);
    assert_all(&log, &recs);
    assert_eq!(log.reader().state().write_pos, 180);
    log.close();
}

#[tokio::test]
async fn lost_index_files_are_rebuilt_from_the_data() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let recs = write_records(&log, 1, &[100; 23], |i| i / 5 + 1).await;
    log.close();
    assert_eq!(numbered(dir.path(), "index"), vec![0, 8, 16]);
    // One index file gone, one zeroed, one filled with junk.
    fs::remove_file(index_path(dir.path(), 0)).unwrap();
    edit_file(&index_path(dir.path(), 8), |b| b.fill(0));
    edit_file(&index_path(dir.path(), 16), |b| b.fill(0xAB));
    let log = open(&cfg);
    assert_all(&log, &recs);
    let got = log.reader().read_range(0, 100, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|r| r.meta.index).collect::<Vec<_>>(), (1..=23).collect::<Vec<_>>());
    log.close();
}

// ---------------------------------------------------------------------------------------------------------
// Corruption inside sealed segments
// ---------------------------------------------------------------------------------------------------------

/// 13 records of 100 bytes: segments 0 and 512 are sealed (5 records + 12 bytes of padding each), segment
/// 1024 holds records 11..=13. With `Ckpt::Behind` the checkpoint names record 1 (written at a close after
/// it), so every other record lies after the checkpoint and is verified on open.
async fn sealed_fixture(ckpt: Ckpt) -> (TempDir, Vec<Rec>) {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let mut recs = write_records(&log, 1, &[100], |_| 2).await;
    log.close();
    let saved = fs::read(checkpoint_path(dir.path())).unwrap();
    let log = open(&cfg);
    recs.extend(write_records(&log, 2, &[100; 12], |_| 2).await);
    log.close();
    match ckpt {
        Ckpt::Behind => fs::write(checkpoint_path(dir.path()), saved).unwrap(),
        Ckpt::Absent => fs::remove_file(checkpoint_path(dir.path())).unwrap(),
    }
    assert_eq!(numbered(dir.path(), "data"), vec![0, 512, 1024]);
    (dir, recs)
}

/// Damages a sealed segment with `f`, then checks that open fails with `Corrupt` naming that segment and
/// `offset`, and that the failed open changed no byte of any segment; with a checkpoint behind the damage
/// and without one.
async fn assert_corrupt_on_open(seg_base: u64, offset: u64, f: impl Fn(&mut Vec<u8>)) {
    for ckpt in [Ckpt::Behind, Ckpt::Absent] {
        assert_corrupt_on_open_with(ckpt, seg_base, offset, &f).await;
    }
}

async fn assert_corrupt_on_open_with(ckpt: Ckpt, seg_base: u64, offset: u64, f: impl Fn(&mut Vec<u8>)) {
    let (dir, _) = sealed_fixture(ckpt).await;
    if let Ckpt::Behind = ckpt {
        // Undamaged, this fixture recovers from the checkpoint and verifies records 2..=13.
        let copy = tmp();
        copy_dir(dir.path(), copy.path());
        let log = open(&config(copy.path(), SEG, PER));
        assert_eq!(log.reader().recovery().checkpoint.map(|c| c.index), Some(1));
        assert_eq!(log.reader().recovery().records_scanned, 12);
        log.close();
    }
    let path = segment_path(dir.path(), seg_base);
    edit_file(&path, f);
    let before = data_files(dir.path());
    let ckpt_before = fs::read(checkpoint_path(dir.path())).ok();
    match open_err(&config(dir.path(), SEG, PER)) {
        CommitLogError::Corrupt { file, offset: got, reason } => {
            assert_eq!(file, path, "Corrupt must name the damaged segment ({reason})");
            assert_eq!(got, offset, "Corrupt must give the damaged record's offset ({reason})");
            assert!(!reason.is_empty());
            let msg = CommitLogError::Corrupt { file, offset: got, reason }.to_string();
            assert!(msg.contains(&format!("{seg_base:020}")) && msg.contains(&offset.to_string()), "{msg}");
        }
        e => panic!("expected Corrupt, got {e}"),
    }
    assert_eq!(data_files(dir.path()), before, "a refused open must not repair (cut) anything");
    match ckpt {
        Ckpt::Behind => assert_eq!(fs::read(checkpoint_path(dir.path())).ok(), ckpt_before, "a refused open keeps the checkpoint"),
        Ckpt::Absent => assert_eq!(checkpoint_prefix(dir.path()), None, "a refused open writes no checkpoint"),
    }
}

#[tokio::test]
async fn flipped_body_byte_in_first_sealed_segment() {
    // Record 2 is at offset 100 of segment 0.
    assert_corrupt_on_open(0, 100, |b| b[100 + 70] ^= 0x01).await;
}

#[tokio::test]
async fn flipped_header_bytes_in_middle_sealed_segment() {
    // Record 8 is at offset 200 of segment 512: damage its magic, its length, its crc, its term.
    for at in [0usize, 5, 9, 21] {
        assert_corrupt_on_open(512, 200, |b| b[200 + at] ^= 0x40).await;
    }
}

#[tokio::test]
async fn last_record_of_a_sealed_segment() {
    // Record 5 is the last record of segment 0 (offset 400); its final byte is damaged.
    assert_corrupt_on_open(0, 400, |b| b[499] ^= 0xFF).await;
}

#[tokio::test]
async fn damaged_padding_of_a_sealed_segment() {
    // Padding of segment 0 starts at offset 500.
    assert_corrupt_on_open(0, 500, |b| b[500] ^= 0x10).await;
    assert_corrupt_on_open(0, 500, |b| b[505] ^= 0x10).await;
}

#[tokio::test]
async fn zeroed_record_inside_a_sealed_segment() {
    // A lost write in the middle of segment 512: record 9 (offset 300) reads as zeros.
    assert_corrupt_on_open(512, 300, |b| b[300..400].fill(0)).await;
}

#[tokio::test]
async fn valid_record_with_wrong_index_in_a_sealed_segment() {
    // A record that verifies (magic, length, crc) but breaks index continuity.
    assert_corrupt_on_open(0, 200, |b| {
        let mut rec = Vec::new();
        encode_record(&meta(30, 2), &body(3, 0, 60), &mut rec);
        assert_eq!(rec.len(), 100);
        b[200..300].copy_from_slice(&rec);
    })
    .await;
}

#[tokio::test]
async fn term_going_back_in_a_sealed_segment() {
    assert_corrupt_on_open(0, 300, |b| {
        let mut rec = Vec::new();
        encode_record(&meta(4, 1), &body(4, 0, 60), &mut rec);
        b[300..400].copy_from_slice(&rec);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Truncate
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn truncate_then_shorter_appends_never_resurrect_old_records() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    // 190-byte records, 2 per segment: record i at segment (i-1)/2, offset 190 * ((i-1) % 2).
    let old = write_records(&log, 1, &[190; 12], |_| 1).await;
    assert_eq!(numbered(dir.path(), "data"), vec![0, 512, 1024, 1536, 2048, 2560]);

    log.truncate(8).await.unwrap();
    let st = log.reader().state();
    assert_eq!(st.last, Some(old[6].meta.point()));
    assert_eq!(st.write_pos, old[7].pos);
    for i in 8..=12 {
        assert_absent(&log, i);
    }
    // Durable when it returns: a copy taken now (without close) already shows the truncation.
    let snap = tmp();
    copy_dir(dir.path(), snap.path());
    assert_eq!(numbered(snap.path(), "data"), vec![0, 512, 1024, 1536]);
    {
        let copy = open(&config(snap.path(), SEG, PER));
        assert_eq!(copy.reader().state().last, Some(old[6].meta.point()));
        assert_absent(&copy, 8);
        copy.close();
    }

    // Shorter replacements from a new term: 60 bytes each.
    let new = write_records(&log, 8, &[60; 8], |_| 2).await;
    assert_eq!(new[0].pos, old[7].pos, "the first replacement goes where the truncated record was");
    log.close();

    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!(st.first, Some(1));
    assert_eq!(st.last, Some(new[7].meta.point()));
    assert_all(&log, &old[..7]);
    assert_all(&log, &new);
    assert_absent(&log, 16);
    log.close();

    // Truncate again, reopen at once: still nothing beyond the cut, from either generation.
    let log = open(&cfg);
    log.truncate(10).await.unwrap();
    log.close();
    let log = open(&cfg);
    assert_eq!(log.reader().state().last, Some(new[1].meta.point()));
    assert_eq!(log.reader().state().write_pos, new[2].pos);
    assert_all(&log, &old[..7]);
    assert_all(&log, &new[..2]);
    for i in 10..=16 {
        assert_absent(&log, i);
    }
    log.close();
}

/// Truncating a record that had rolled to a new segment: the log must end where the last retained record
/// ends, so the next (shorter) record goes back into the padded tail, exactly where a replica that never saw
/// the truncated records puts it. Otherwise physical offsets would differ between replicas.
#[tokio::test]
async fn truncate_of_a_rolled_record_rewinds_into_the_padded_tail() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let old = write_records(&log, 1, &[190; 7], |_| 1).await;
    // Record 3 did not fit behind record 2 (ends at 380): it opened segment 512, behind padding.
    assert_eq!(old[2].pos, 512);
    log.truncate(3).await.unwrap();
    let st = log.reader().state();
    assert_eq!(st.last, Some(old[1].meta.point()));
    assert_eq!(st.write_pos, 380);
    assert_eq!(numbered(dir.path(), "data"), vec![0], "segments holding only truncated records are gone");
    let seg0 = fs::read(segment_path(dir.path(), 0)).unwrap();
    assert!(seg0[380..].iter().all(|&b| b == 0), "the padding of segment 0 is removed");
    log.close();
    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!(st.last, Some(old[1].meta.point()));
    assert_eq!(st.write_pos, 380);
    for i in 3..=7 {
        assert_absent(&log, i);
    }
    let new = write_records(&log, 3, &[45, 45], |_| 3).await;
    assert_eq!((new[0].pos, new[1].pos), (380, 425));
    log.close();
    let log = open(&cfg);
    assert_all(&log, &old[..2]);
    assert_all(&log, &new);
    assert_absent(&log, 5);
    log.close();

    // A replica that only ever received records 1, 2 and the new 3, 4 has byte-identical data.
    let other = tmp();
    let log = open(&config(other.path(), SEG, PER));
    for r in old[..2].iter().chain(&new) {
        append(&log, r.meta, &r.body).await;
    }
    log.close();
    assert!(data_files(dir.path()) == data_files(other.path()), "data files differ from a replica without the truncated records");
}

/// A crash inside that truncate, after the later segment was unlinked but before the padding was cleared:
/// recovery drops padding that has no successor, so the next record still lands where other replicas put it.
#[tokio::test]
async fn crash_mid_truncate_leaves_no_replica_specific_position() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let old = write_records(&log, 1, &[190; 3], |_| 1).await;
    assert_eq!(old[2].pos, 512);
    log.close();
    // The crash point: segment 512 is gone, segment 0 still ends with padding after record 2.
    fs::remove_file(segment_path(dir.path(), 512)).unwrap();
    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!(st.last, Some(old[1].meta.point()));
    assert_eq!(st.write_pos, 380, "the orphan padding is dropped");
    let new = write_records(&log, 3, &[45], |_| 2).await;
    assert_eq!(new[0].pos, 380);
    log.close();
    let log = open(&cfg);
    assert_all(&log, &old[..2]);
    assert_all(&log, &new);
    log.close();
}

/// Same, when the rolled record was the first one after a purge beyond the end of the log.
#[tokio::test]
async fn truncate_of_a_rolled_first_record_rewinds_to_the_purge_point() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    // Hint 964 leaves 60 bytes in segment 512: record 11 (100 bytes) rolls to 1024.
    log.purge(LogPoint { index: 10, term: 2, node: NODE }, Some(964)).await.unwrap();
    let rolled = write_records(&log, 11, &[100, 100], |_| 2).await;
    assert_eq!(rolled[0].pos, 1024);
    log.truncate(11).await.unwrap();
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 964));
    log.close();
    let log = open(&cfg);
    assert_eq!(log.reader().state().write_pos, 964);
    let new = write_records(&log, 11, &[50], |_| 3).await;
    assert_eq!(new[0].pos, 964, "a record that fits the tail goes to the purge point");
    log.close();
    let log = open(&cfg);
    assert_all(&log, &new);
    assert_eq!(log.reader().state().first, Some(11));
    log.close();
}

#[tokio::test]
async fn truncate_everything_and_beyond() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let old = write_records(&log, 1, &[150; 9], |_| 1).await;
    // Beyond the last record: nothing happens.
    log.truncate(10).await.unwrap();
    log.truncate(1000).await.unwrap();
    assert_eq!(log.reader().state().last, Some(old[8].meta.point()));
    // From the first record: the log is empty and restarts at position 0.
    log.truncate(1).await.unwrap();
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 0));
    log.close();
    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 0));
    for i in 1..=9 {
        assert_absent(&log, i);
    }
    let new = write_records(&log, 1, &[41], |_| 2).await;
    assert_eq!(new[0].pos, 0);
    log.close();
    let log = open(&cfg);
    assert_all(&log, &new);
    assert_absent(&log, 2);
    log.close();
}

// ---------------------------------------------------------------------------------------------------------
// Purge
// ---------------------------------------------------------------------------------------------------------

/// 20 records of 100 bytes: segments 0, 512, 1024, 1536 with 5 records each; write position 2036.
async fn purge_fixture(cfg_dir: &Path) -> (CommitLog, Vec<Rec>) {
    let log = open(&config(cfg_dir, SEG, PER));
    let recs = write_records(&log, 1, &[100; 20], |i| i.div_ceil(3)).await;
    assert_eq!(log.reader().state().write_pos, 2036);
    (log, recs)
}

fn point(r: &Rec) -> LogPoint {
    r.meta.point()
}

#[tokio::test]
async fn purge_then_reopen() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, recs) = purge_fixture(dir.path()).await;
    // Record 8 is at 712 (segment 512): segment 0 and index file 0 (indexes 0..8) go.
    log.purge(point(&recs[6]), None).await.unwrap();
    let check = |log: &CommitLog| {
        let st = log.reader().state();
        assert_eq!(st.first, Some(8));
        assert_eq!(st.last, Some(point(&recs[19])));
        let mark = st.purged.expect("purge mark");
        assert_eq!((mark.point, mark.next_pos), (point(&recs[6]), 712));
        for i in 0..=7 {
            assert_absent(log, i);
        }
        assert_all(log, &recs[7..]);
        assert_eq!(log.reader().read_range(0, 100, usize::MAX).unwrap().len(), 13);
        assert_eq!(log.reader().read_at(recs[5].pos, 10), None, "read_at below the purge point");
    };
    check(&log);
    // Durable when it returns: the mark is on disk and the files below are gone.
    let snap = tmp();
    copy_dir(dir.path(), snap.path());
    assert!(snap.path().join("purged").exists());
    assert_eq!(numbered(snap.path(), "data"), vec![512, 1024, 1536]);
    assert_eq!(numbered(snap.path(), "index"), vec![8, 16]);
    {
        let copy = open(&config(snap.path(), SEG, PER));
        check(&copy);
        copy.close();
    }
    // Purging at or below the mark again is a no-op.
    log.purge(point(&recs[1]), None).await.unwrap();
    log.purge(point(&recs[6]), None).await.unwrap();
    check(&log);
    log.close();

    let log = open(&cfg);
    check(&log);
    // Purge up to a segment boundary: record 11 is the first record of segment 1024.
    log.purge(point(&recs[9]), None).await.unwrap();
    log.close();
    let log = open(&cfg);
    assert_eq!(numbered(dir.path(), "data"), vec![1024, 1536]);
    assert_eq!(log.reader().state().first, Some(11));
    assert_eq!(log.reader().state().purged.unwrap().next_pos, 1024);
    assert_all(&log, &recs[10..]);
    assert_absent(&log, 10);
    let more = write_records(&log, 21, &[100; 3], |_| 7).await;
    assert_eq!(more[0].pos, 2048, "segment 1536 was full enough to roll");
    log.close();
    let log = open(&cfg);
    assert_all(&log, &recs[10..]);
    assert_all(&log, &more);
    log.close();
}

#[tokio::test]
async fn truncate_below_the_purge_point_empties_the_log() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, recs) = purge_fixture(dir.path()).await;
    log.purge(point(&recs[6]), None).await.unwrap();
    log.truncate(3).await.unwrap();
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 712));
    log.close();
    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 712));
    // The next record must follow the purge point.
    let mut batch = RecordBatch::new();
    batch.push(meta(9, 9), b"x");
    let err = log.append(batch, Box::new(|_| {})).await.unwrap_err();
    assert!(matches!(err, CommitLogError::NonContiguous { expected: 8, got: 9 }), "{err}");
    let loc = append(&log, meta(8, 9), b"eight").await;
    assert_eq!(loc.pos, 712);
    log.close();
    let log = open(&cfg);
    assert_record(&log, meta(8, 9), b"eight");
    assert_eq!(log.reader().state().first, Some(8));
    log.close();
}

#[tokio::test]
async fn crash_in_the_middle_of_a_purge_is_finished_on_open() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, recs) = purge_fixture(dir.path()).await;
    log.close();
    let before = tmp();
    copy_dir(dir.path(), before.path());

    // Record 13 is at 1224 (segment 1024): the purge removes segments 0 and 512 and index file 0.
    let log = open(&cfg);
    log.purge(point(&recs[11]), None).await.unwrap();
    log.close();
    assert_eq!(numbered(dir.path(), "data"), vec![1024, 1536]);

    // The crash: the purge mark is durable but the unlinks were lost. Put the deleted files back.
    let mut restored = 0;
    for sub in ["data", "index"] {
        for n in numbered(before.path(), sub) {
            let name = format!("{n:020}");
            let to = dir.path().join(sub).join(&name);
            if !to.exists() {
                fs::copy(before.path().join(sub).join(&name), &to).unwrap();
                restored += 1;
            }
        }
    }
    assert_eq!(restored, 3, "segments 0, 512 and index file 0 restored");
    assert_eq!(numbered(dir.path(), "data"), vec![0, 512, 1024, 1536]);

    let log = open(&cfg);
    assert_eq!(numbered(dir.path(), "data"), vec![1024, 1536], "segments below the purge point removed on open");
    assert!(!index_path(dir.path(), 0).exists(), "index file holding only purged slots removed on open");
    let st = log.reader().state();
    assert_eq!(st.first, Some(13));
    assert_eq!(st.last, Some(point(&recs[19])));
    assert_eq!(st.purged.map(|p| (p.point, p.next_pos)), Some((point(&recs[11]), 1224)));
    for i in 0..=12 {
        assert_absent(&log, i);
    }
    assert_all(&log, &recs[12..]);
    let more = write_records(&log, 21, &[100], |_| 8).await;
    log.close();
    let log = open(&cfg);
    assert_eq!(log.reader().state().first, Some(13));
    assert_all(&log, &recs[12..]);
    assert_all(&log, &more);
    log.close();
}

#[tokio::test]
async fn crash_in_the_middle_of_a_purge_beyond_the_last_entry() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, _) = purge_fixture(dir.path()).await;
    log.close();
    let before = tmp();
    copy_dir(dir.path(), before.path());
    let log = open(&cfg);
    log.purge(LogPoint { index: 30, term: 9, node: NODE }, None).await.unwrap();
    log.close();
    assert_eq!(numbered(dir.path(), "data"), vec![1536]);
    for n in [0u64, 512, 1024] {
        fs::copy(segment_path(before.path(), n), segment_path(dir.path(), n)).unwrap();
    }
    let log = open(&cfg);
    assert_eq!(numbered(dir.path(), "data"), vec![1536]);
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 2036));
    for i in 0..=31 {
        assert_absent(&log, i);
    }
    // 2036 leaves 12 bytes in segment 1536: the record rolls to 2048 behind padding.
    let loc = append(&log, meta(31, 9), b"after").await;
    assert_eq!(loc.pos, 2048);
    log.close();
    let log = open(&cfg);
    assert_eq!(log.reader().state().first, Some(31));
    assert_record(&log, meta(31, 9), b"after");
    log.close();
}

#[tokio::test]
async fn purge_beyond_the_last_entry_without_hint() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, _) = purge_fixture(dir.path()).await;
    let upto = LogPoint { index: 25, term: 9, node: NODE };
    log.purge(upto, None).await.unwrap();
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 2036));
    assert_eq!(st.purged.map(|p| (p.point, p.next_pos)), Some((upto, 2036)));
    assert_eq!(numbered(dir.path(), "data"), vec![1536]);
    for i in 0..=26 {
        assert_absent(&log, i);
    }

    // openraft may re-send entries at or below the purge point: they are skipped silently.
    let mut batch = RecordBatch::new();
    batch.push(meta(20, 9), b"twenty");
    assert_eq!(log.append_durable(batch).await.unwrap(), vec![]);
    assert_eq!(log.reader().state(), st, "an append wholly at or below the purge point changes nothing");
    let locs = append_batch(&log, &[(meta(24, 9), b"x".to_vec()), (meta(25, 9), b"y".to_vec()), (meta(26, 9), b"z26".to_vec())]).await;
    assert_eq!(locs.len(), 1, "only index 26 is written: {locs:?}");
    // 2036 leaves 12 bytes in segment 1536: the record rolls to 2048 behind padding.
    assert_eq!(locs[0].pos, 2048);
    assert_absent(&log, 25);
    assert_record(&log, meta(26, 9), b"z26");
    log.close();

    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!(st.first, Some(26));
    assert_eq!(st.last, Some(meta(26, 9).point()));
    assert_eq!(st.purged.map(|p| p.point), Some(upto));
    assert_eq!(assert_record(&log, meta(26, 9), b"z26"), 2048);
    let small = append(&log, meta(27, 9), b"27").await;
    assert_eq!(small.pos, 2048 + HEADER_LEN as u64 + 3);
    assert_absent(&log, 25);
    log.close();
}

/// Purges beyond the last entry with a position hint, appends `upto + 1` and checks it lands exactly at the
/// hint, before and after reopening.
async fn purge_beyond_with_hint(hint: u64) {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, _) = purge_fixture(dir.path()).await;
    let upto = LogPoint { index: 25, term: 9, node: NODE };
    log.purge(upto, Some(hint)).await.unwrap();
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, hint));
    assert_eq!(st.purged.map(|p| (p.point, p.next_pos)), Some((upto, hint)));
    let hint_base = hint - hint % SEG;
    assert_eq!(numbered(dir.path(), "data"), vec![hint_base], "only the hint's segment remains, fresh");
    assert!(data_files(dir.path())[0].1.iter().all(|&b| b == 0), "the hint's segment holds no old bytes");
    log.close();

    // Reopen between the purge and the first append: the hint is kept.
    let log = open(&cfg);
    assert_eq!(log.reader().state().write_pos, hint);
    let b26 = body(26, 0, 60);
    let loc = append(&log, meta(26, 9), &b26).await;
    assert_eq!(loc.pos, hint, "record 26 must be written at the hint");
    assert_eq!(log.reader().read(26).unwrap().unwrap().pos, hint);
    assert_eq!(log.reader().read_at(hint + HEADER_LEN as u64, b26.len()).as_deref(), Some(&b26[..]));
    log.close();

    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!((st.first, st.last.map(|l| l.index)), (Some(26), Some(26)));
    assert_eq!(assert_record(&log, meta(26, 9), &b26), hint);
    let b27 = body(27, 0, 30);
    let loc = append(&log, meta(27, 9), &b27).await;
    assert_eq!(loc.pos, hint + 100);
    log.close();
    let log = open(&cfg);
    assert_eq!(assert_record(&log, meta(26, 9), &b26), hint);
    assert_eq!(assert_record(&log, meta(27, 9), &b27), hint + 100);
    assert_absent(&log, 25);
    log.close();
}

#[tokio::test]
async fn purge_beyond_the_last_entry_with_hint_in_a_later_segment() {
    purge_beyond_with_hint(7777).await;
}

#[tokio::test]
async fn purge_beyond_the_last_entry_with_hint_at_a_segment_start() {
    purge_beyond_with_hint(8192).await;
}

#[tokio::test]
async fn purge_beyond_the_last_entry_with_hint_in_the_current_segment() {
    // Write position is 2036 (segment 1536); the hint lies further on in the same segment.
    purge_beyond_with_hint(2100).await;
}

#[tokio::test]
async fn purge_of_an_empty_log_with_hint() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    log.purge(LogPoint { index: 100, term: 4, node: NODE }, Some(5000)).await.unwrap();
    log.close();
    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 5000));
    assert_eq!(numbered(dir.path(), "data"), vec![4608]);
    let skipped = append_batch(&log, &[(meta(99, 4), b"99".to_vec()), (meta(100, 4), b"100".to_vec())]).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(append(&log, meta(101, 4), b"101").await.pos, 5000);
    log.close();
    let log = open(&cfg);
    assert_eq!(log.reader().state().first, Some(101));
    assert_eq!(assert_record(&log, meta(101, 4), b"101"), 5000);
    assert_absent(&log, 100);
    log.close();
}

/// `rebase`: an emptied, purged log continues at another replica's byte position.
#[tokio::test]
async fn rebase_of_an_emptied_log_moves_the_next_record() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, _) = purge_fixture(dir.path()).await;
    let upto = LogPoint { index: 25, term: 9, node: NODE };
    log.purge(upto, None).await.unwrap();
    assert_eq!(log.reader().state().write_pos, 2036);
    log.rebase(2036).await.unwrap();
    assert_eq!(numbered(dir.path(), "data"), vec![1536], "rebase to the current position changes nothing");
    log.rebase(7777).await.unwrap();
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 7777));
    assert_eq!(st.purged.map(|p| (p.point, p.next_pos)), Some((upto, 7777)));
    assert_eq!(numbered(dir.path(), "data"), vec![7680]);
    log.close();
    let log = open(&cfg);
    assert_eq!(log.reader().state().write_pos, 7777, "the rebased position is durable");
    let b = body(26, 0, 60);
    assert_eq!(append(&log, meta(26, 9), &b).await.pos, 7777);
    log.close();
    let log = open(&cfg);
    assert_eq!(assert_record(&log, meta(26, 9), &b), 7777);
    assert_eq!(log.reader().state().first, Some(26));
    log.close();
}

#[tokio::test]
async fn rebase_is_refused_unless_the_log_is_empty_and_purged() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let err = log.rebase(4096).await.unwrap_err();
    assert!(matches!(err, CommitLogError::InvalidState(_)), "never purged: {err}");
    let recs = write_records(&log, 1, &[100; 8], |_| 1).await;
    log.purge(point(&recs[2]), None).await.unwrap();
    let before = log.reader().state();
    let err = log.rebase(4096).await.unwrap_err();
    assert!(matches!(err, CommitLogError::InvalidState(_)), "holds records: {err}");
    assert_eq!(log.reader().state(), before);
    // A refused rebase does not poison the log.
    let more = write_records(&log, 9, &[100], |_| 1).await;
    log.close();
    let log = open(&cfg);
    assert_all(&log, &recs[3..]);
    assert_all(&log, &more);
    log.close();
}

#[tokio::test]
async fn crash_in_the_middle_of_a_rebase_is_finished_on_open() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, _) = purge_fixture(dir.path()).await;
    log.purge(LogPoint { index: 25, term: 9, node: NODE }, None).await.unwrap();
    log.close();
    let before = tmp();
    copy_dir(dir.path(), before.path());
    let log = open(&cfg);
    log.rebase(5000).await.unwrap();
    log.close();
    assert_eq!(numbered(dir.path(), "data"), vec![4608]);
    // The crash: the new mark is durable, the unlink of segment 1536 was lost, and the new segment not yet
    // created (rebase unlinks and fsyncs the directory before it creates the new segment).
    fs::copy(segment_path(before.path(), 1536), segment_path(dir.path(), 1536)).unwrap();
    fs::remove_file(segment_path(dir.path(), 4608)).unwrap();
    let log = open(&cfg);
    assert_eq!(numbered(dir.path(), "data"), Vec::<u64>::new(), "the old segment is removed on open");
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 5000));
    assert_eq!(append(&log, meta(26, 9), b"x").await.pos, 5000);
    log.close();
    let log = open(&cfg);
    assert_eq!(numbered(dir.path(), "data"), vec![4608]);
    assert_eq!(assert_record(&log, meta(26, 9), b"x"), 5000);
    log.close();
}

// ---------------------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn vote_meta_survives_reopen() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    assert_eq!(log.read_meta("vote").unwrap(), None);
    log.save_meta("vote", b"term=3 voted_for=1".to_vec(), true).await.unwrap();
    log.save_meta("vote", b"term=4 voted_for=2 committed".to_vec(), true).await.unwrap();
    log.save_meta("committed", b"17".to_vec(), false).await.unwrap();
    assert_eq!(log.read_meta("vote").unwrap().as_deref(), Some(&b"term=4 voted_for=2 committed"[..]));
    log.close();

    // A crash during a later save leaves a half-written temp file behind: ignored.
    fs::write(dir.path().join("vote.tmp"), b"\x01\x02garbage").unwrap();
    let log = open(&cfg);
    assert_eq!(log.read_meta("vote").unwrap().as_deref(), Some(&b"term=4 voted_for=2 committed"[..]));
    assert_eq!(log.read_meta("committed").unwrap().as_deref(), Some(&b"17"[..]));
    log.save_meta("vote", Vec::new(), true).await.unwrap();
    log.close();
    let log = open(&cfg);
    assert_eq!(log.read_meta("vote").unwrap(), Some(Vec::new()), "an empty payload is not 'never saved'");
    log.close();

    // A damaged vote file is reported, not taken as absent.
    edit_file(&dir.path().join("vote"), |b| b[0] ^= 1);
    edit_file(&dir.path().join("committed"), |b| b[9] ^= 1);
    let log = open(&cfg);
    for name in ["vote", "committed"] {
        match log.read_meta(name) {
            Err(CommitLogError::Corrupt { file, .. }) => assert_eq!(file, dir.path().join(name)),
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
    }
    log.close();
}

#[tokio::test]
async fn damaged_purge_mark_refuses_open() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, recs) = purge_fixture(dir.path()).await;
    log.purge(point(&recs[3]), None).await.unwrap();
    log.close();
    edit_file(&dir.path().join("purged"), |b| b[12] ^= 0x08);
    match open_err(&cfg) {
        CommitLogError::Corrupt { file, .. } => assert_eq!(file, dir.path().join("purged")),
        e => panic!("expected Corrupt, got {e}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Segment rolls
// ---------------------------------------------------------------------------------------------------------

/// Fills segment 0 with `n` records of `len` bytes, reopens, writes two more (the first cannot fit),
/// reopens, and checks positions, the bytes at the end of segment 0, and that every record reads back.
async fn roll_case(n: usize, len: usize, check_tail: impl Fn(&[u8])) {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    assert!((n + 1) * len > 512 && n * len <= 512);
    let first = write_records(&log, 1, &vec![len; n], |_| 1).await;
    assert_eq!(first.iter().map(|r| r.pos).collect::<Vec<_>>(), (0..n).map(|k| (k * len) as u64).collect::<Vec<_>>());
    log.close();
    let log = open(&cfg);
    assert_all(&log, &first);
    let tail = 512 - (n * len) as u64;
    let expect_wp = if tail < 8 { 512 } else { (n * len) as u64 };
    assert_eq!(log.reader().state().write_pos, expect_wp);
    let second = write_records(&log, n as u64 + 1, &[len, len], |_| 1).await;
    assert_eq!(second[0].pos, 512, "the record that does not fit opens segment 512");
    assert_eq!(second[1].pos, 512 + len as u64);
    assert_eq!(numbered(dir.path(), "data"), vec![0, 512]);
    let names: Vec<String> =
        fs::read_dir(dir.path().join("data")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit())), "{names:?}");
    log.close();
    let seg0 = fs::read(segment_path(dir.path(), 0)).unwrap();
    assert_eq!(seg0.len(), 512, "segments are preallocated to their full size");
    assert_eq!(fs::metadata(segment_path(dir.path(), 512)).unwrap().len(), 512);
    check_tail(&seg0[n * len..]);
    let log = open(&cfg);
    assert_all(&log, &first);
    assert_all(&log, &second);
    assert_eq!(log.reader().state().write_pos, 512 + 2 * len as u64);
    log.close();
}

#[tokio::test]
async fn roll_after_records_that_exactly_fill_a_segment() {
    roll_case(4, 128, |tail| assert!(tail.is_empty())).await;
}

#[tokio::test]
async fn roll_leaving_fewer_than_eight_bytes() {
    // 4 * 127 = 508 leaves 4 bytes: too short for a padding header.
    roll_case(4, 127, |tail| {
        assert_eq!(tail.len(), 4);
        assert!(tail.iter().all(|&b| b == 0), "a tail too short for padding stays zero: {tail:?}");
    })
    .await;
}

#[tokio::test]
async fn roll_leaving_exactly_eight_bytes_writes_padding() {
    roll_case(4, 126, |tail| {
        assert_eq!(tail.len(), 8);
        assert_eq!(&tail[..4], &PAD_MAGIC.to_le_bytes());
        assert_eq!(&tail[4..8], &8u32.to_le_bytes());
    })
    .await;
}

#[tokio::test]
async fn roll_leaving_more_than_eight_bytes_writes_padding() {
    roll_case(5, 100, |tail| {
        assert_eq!(tail.len(), 12);
        assert_eq!(&tail[..4], &PAD_MAGIC.to_le_bytes());
        assert_eq!(&tail[4..8], &12u32.to_le_bytes());
        assert!(tail[8..].iter().all(|&b| b == 0));
    })
    .await;
}

/// One batch whose records fill segment 0 exactly and continue in segment 512: every record must land in
/// its own segment's file (none written past the end of segment 0), and the segments stay full-sized.
#[tokio::test]
async fn batch_running_across_an_exactly_filled_segment() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let recs: Vec<(RecordMeta, Vec<u8>)> = (1..=9u64).map(|i| (meta(i, 1), body(i, 3, 128 - HEADER_LEN))).collect();
    let locs = append_batch(&log, &recs).await;
    assert_eq!(locs.iter().map(|l| l.pos).collect::<Vec<_>>(), (0..9).map(|k| k * 128).collect::<Vec<_>>());
    for (m, b) in &recs {
        assert_record(&log, *m, b);
    }
    assert_eq!(numbered(dir.path(), "data"), vec![0, 512, 1024]);
    for (base, bytes) in data_files(dir.path()) {
        assert_eq!(bytes.len(), 512, "segment {base} must keep the segment size");
    }
    log.close();
    let log = open(&cfg);
    for (m, b) in &recs {
        assert_record(&log, *m, b);
    }
    assert_eq!(log.reader().state().write_pos, 9 * 128);
    log.close();
}

#[tokio::test]
async fn record_larger_than_a_segment_is_rejected() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let recs = write_records(&log, 1, &[100], |_| 1).await;
    let before = log.reader().state();

    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut batch = RecordBatch::new();
    batch.push(meta(2, 1), &body(2, 0, 512 - HEADER_LEN + 1));
    let err = log
        .append(
            batch,
            Box::new(move |r| {
                let _ = tx.send(r.is_err());
            }),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommitLogError::RecordTooLarge { len: 513, max: 512 }), "{err}");
    assert!(rx.await.unwrap(), "the durability callback of a rejected append reports an error");

    // A batch with one oversized record is rejected as a whole.
    let mut batch = RecordBatch::new();
    batch.push(meta(2, 1), b"fits");
    batch.push(meta(3, 1), &vec![1u8; 4096]);
    let err = log.append_durable(batch).await.unwrap_err();
    assert!(matches!(err, CommitLogError::RecordTooLarge { len, max: 512 } if len == 4096 + HEADER_LEN as u64), "{err}");
    assert_eq!(log.reader().state(), before, "nothing of a rejected batch is written");
    assert_absent(&log, 2);

    // The log is still usable; a record of exactly one segment fits, at a segment start.
    let big = body(2, 0, 512 - HEADER_LEN);
    let loc = append(&log, meta(2, 1), &big).await;
    assert_eq!((loc.pos, loc.len), (512, 512));
    let loc = append(&log, meta(3, 1), b"three").await;
    assert_eq!(loc.pos, 1024);
    log.close();
    let log = open(&cfg);
    assert_all(&log, &recs);
    assert_record(&log, meta(2, 1), &big);
    assert_record(&log, meta(3, 1), b"three");
    log.close();
}

// ---------------------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn identical_input_gives_byte_identical_data_files() {
    let recs: Vec<(RecordMeta, Vec<u8>)> =
        (1..=80u64).map(|i| (meta(i, 1 + i / 9), body(i, 5, ((i * 37) % 250) as usize + if i % 11 == 0 { 220 } else { 0 }))).collect();

    // A: one big batch.
    let a = tmp();
    let log = open(&config(a.path(), SEG, PER));
    append_batch(&log, &recs).await;
    log.close();

    // B: one record per append.
    let b = tmp();
    let log = open(&config(b.path(), SEG, PER));
    for (m, body) in &recs {
        append(&log, *m, body).await;
    }
    log.close();

    // C: uneven batches with reopens in between, written without waiting for durability in between.
    let c = tmp();
    let cfg_c = config(c.path(), SEG, PER);
    let mut log = open(&cfg_c);
    let mut at = 0usize;
    for (k, n) in [1usize, 7, 2, 13, 5, 3, 30, 19].into_iter().enumerate() {
        let mut batch = RecordBatch::new();
        for (m, body) in &recs[at..at + n] {
            batch.push(*m, body);
        }
        log.append(batch, Box::new(|_| {})).await.unwrap();
        at += n;
        if k % 3 == 2 {
            log.close();
            log = open(&cfg_c);
        }
    }
    assert_eq!(at, recs.len());
    log.flush().await.unwrap();
    log.close();

    let (fa, fb, fc) = (data_files(a.path()), data_files(b.path()), data_files(c.path()));
    assert!(fa.len() > 5, "the records span several segments");
    assert_eq!(fa.iter().map(|f| f.0).collect::<Vec<_>>(), fb.iter().map(|f| f.0).collect::<Vec<_>>());
    assert!(fa == fb, "one batch vs one record per append: data files differ");
    assert!(fa == fc, "uneven batches with reopens: data files differ");
    let log = open(&config(c.path(), SEG, PER));
    for (m, body) in &recs {
        assert_record(&log, *m, body);
    }
    log.close();
}

/// Zero-copy reads hold the mapping: a body read before a purge stays valid and unchanged after the purge
/// unlinked its segment, while new reads of purged indexes see nothing.
#[tokio::test]
async fn zero_copy_read_survives_a_purge_of_its_segment() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    let recs = write_records(&log, 1, &[190; 6], |_| 1).await;
    let held = log.reader().read(1).unwrap().expect("record 1 present");
    let held_at = log.reader().read_at(recs[0].pos + 40, 10).expect("bytes at position");
    assert_eq!(held.body, recs[0].body);
    let mark = recs[3].meta.point();
    log.purge(mark, None).await.unwrap();
    assert!(!numbered(dir.path(), "data").contains(&0), "segment 0 was unlinked");
    assert_absent(&log, 1);
    assert!(log.reader().read_at(recs[0].pos + 40, 10).is_none(), "purged bytes are not served");
    assert_eq!(held.body, recs[0].body, "a body read before the purge still reads the same bytes");
    assert_eq!(&held_at[..], &recs[0].body[..10]);
    log.close();
}

/// A purge past the last record that moves the log backwards (a follower whose log ran past the leader's
/// position for the snapshot's next entry) can be cut short between writing the purge mark and unlinking
/// the old segments. With the mark written first, the old segments left after the new position were scanned
/// from there on the next open, which found no record that follows the mark inside a sealed segment and
/// refused to start. The segments now go first, so an interrupted purge leaves the old log (or an empty
/// one) under the old mark, and the purge openraft repeats at start-up completes it.
///
/// The interruption is made real: the first segment is immutable (`chattr +i`), so its unlink fails and
/// the purge stops there with an error, as a crash would. Needs root and a filesystem with `chattr`.
#[tokio::test]
async fn a_purge_that_moves_the_log_can_be_interrupted_and_repeated() {
    let upto = LogPoint { index: 40, term: 9, node: NODE };
    let hint = 700; // inside segment 512, before the old segments 1024 and 1536
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (log, _) = purge_fixture(dir.path()).await;
    let first = dir.path().join("data").join(format!("{:020}", 0));
    let chattr = |flag: &str| std::process::Command::new("chattr").arg(flag).arg(&first).status().is_ok_and(|s| s.success());
    if !chattr("+i") {
        eprintln!("skipped: chattr +i is not available here (needs root and a filesystem that supports it)");
        log.close();
        return;
    }
    let r = log.purge(upto, Some(hint)).await;
    assert!(chattr("-i"), "chattr -i");
    assert!(r.is_err(), "the unlink of an immutable segment fails the purge");
    log.close();

    let log = match CommitLog::open(cfg.clone()) {
        Ok(l) => l,
        Err(e) => panic!("an interrupted purge left a log that does not open: {e}"),
    };
    log.purge(upto, Some(hint)).await.expect("the repeated purge");
    let b41 = body(41, 0, 60);
    let loc = append(&log, meta(41, 9), &b41).await;
    assert_eq!(loc.pos, hint, "the repeated purge moved the log to the hint");
    log.close();
    let log = open(&cfg);
    assert_eq!(assert_record(&log, meta(41, 9), &b41), hint);
    assert_eq!(log.reader().state().first, Some(41));
    log.close();
}
