//! The recovery checkpoint: recovery that trusts it must show exactly the log a full scan shows, and every
//! way the checkpoint can be wrong must end in a full scan, never in a wrong log.
//!
//! Covers: a clean close (nothing re-read), a checkpoint behind the log (as after a crash: only the rest is
//! verified), damaged, zeroed, cut-short and missing checkpoint files, a torn newest slot (the older slot is
//! used), checkpoints crafted to be inconsistent with the files (position beyond the files, other term,
//! node, length, geometry, below the purge mark, index slot disagreeing), a torn tail after the
//! checkpoint, damage in a sealed segment after it (refused) and before it (found on read), damaged index
//! files, truncate below the checkpoint (the checkpoint moves back durably before anything is cut), and
//! purges at, below and beyond it. Every reopen is compared with a full scan of a copy without checkpoint.
//! The background scrub re-verifies the trusted prefix, reports damage in it, keeps to its rate and stops
//! on close.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use raftmq_commitlog::checkpoint::{Checkpoint, SlotState, VerifiedPrefix, RECORD_LEN, SLOT_BYTES};
use raftmq_commitlog::{CommitLog, CommitLogConfig, CommitLogError, LogPoint, RecordMeta};
use tempfile::TempDir;

const SEG: u64 = 512;
const PER: u64 = 8;

fn tmp() -> TempDir {
    tempfile::tempdir().unwrap()
}

/// Record lengths that cross every boundary case of 512-byte segments: padding, a segment filled exactly,
/// a tail too short for padding.
const LENS: [usize; 23] = [100, 100, 100, 100, 100, 128, 128, 128, 128, 127, 127, 127, 127, 90, 300, 41, 77, 200, 200, 60, 60, 60, 60];

async fn write(log: &CommitLog, first: u64, lens: &[usize], term: u64) -> Vec<(RecordMeta, Vec<u8>)> {
    let mut out = Vec::new();
    for (k, &len) in lens.iter().enumerate() {
        let m = meta(first + k as u64, term);
        let b = body(m.index, term, body_len_for(len));
        append(log, m, &b).await;
        out.push((m, b));
    }
    out
}

/// Writes `before` records, closes (the checkpoint then names the last of them) and keeps a copy of the
/// checkpoint file; reopens, writes `after` more records and closes. Returns the records and the saved
/// checkpoint file, whose restoration is the state a crash after those appends leaves.
async fn log_with_saved_checkpoint(cfg: &CommitLogConfig, before: &[usize], after: &[usize]) -> (Vec<(RecordMeta, Vec<u8>)>, Vec<u8>) {
    let log = open(cfg);
    let mut recs = write(&log, 1, before, 1).await;
    log.close();
    let saved = fs::read(checkpoint_path(&cfg.dir)).unwrap();
    let log = open(cfg);
    recs.extend(write(&log, before.len() as u64 + 1, after, 2).await);
    log.close();
    (recs, saved)
}

fn assert_records(log: &CommitLog, recs: &[(RecordMeta, Vec<u8>)]) {
    for (m, b) in recs {
        assert_record(log, *m, b);
    }
}

/// Waits for the background scrub to finish; returns (records verified, records damaged).
async fn scrub_result(log: &CommitLog) -> (u64, u64) {
    let stats = log.reader();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stats.stats().scrub_done.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "scrub did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (stats.stats().scrubbed.load(Ordering::Relaxed), stats.stats().scrub_errors.load(Ordering::Relaxed))
}

/// Overwrites the current checkpoint with `c` as a newer one (the other slot, a higher sequence number).
fn install_checkpoint(dir: &Path, f: impl FnOnce(&mut Checkpoint)) {
    let (slot, mut c) = checkpoint_slots(dir).newest().expect("a checkpoint to start from");
    f(&mut c);
    c.seq += 1;
    let other = (1 - slot) as u64 * SLOT_BYTES;
    edit_file(&checkpoint_path(dir), |b| b[other as usize..other as usize + RECORD_LEN].copy_from_slice(&c.encode()));
    assert_eq!(checkpoint_slots(dir).newest().map(|(_, n)| n), Some(c));
}

#[tokio::test]
async fn clean_close_then_reopen_reads_nothing_and_matches_a_full_scan() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let log = open(&cfg);
    assert_eq!(log.reader().recovery().checkpoint, None);
    let recs = write(&log, 1, &LENS, 3).await;
    let last = log.reader().read(23).unwrap().unwrap();
    log.close();
    let p = checkpoint_prefix(dir.path()).expect("close writes a checkpoint");
    assert_eq!(p, VerifiedPrefix { verified_pos: last.pos + last.len as u64, last_pos: last.pos, last_len: last.len, last: last.meta });

    let (log, seen) = assert_same_view_as_full_scan(&cfg);
    let rep = log.reader().recovery().clone();
    assert_eq!((rep.checkpoint, rep.records_scanned, rep.rejected), (Some(recs[22].0.point()), 0, None));
    assert_eq!(rep.scanned_from, p.verified_pos);
    assert_eq!(seen.records.len(), 23);
    assert_records(&log, &recs);
    assert_eq!(scrub_result(&log).await, (23, 0), "the scrub re-verifies what recovery trusted");
    // Appends continue where the full scan would have them continue.
    let more = write(&log, 24, &[100; 6], 4).await;
    log.close();
    let (log, _) = assert_same_view_as_full_scan(&cfg);
    assert_records(&log, &recs);
    assert_records(&log, &more);
    log.close();
}

#[tokio::test]
async fn checkpoint_behind_the_log_verifies_only_the_rest() {
    // Every split of LENS: the checkpoint ends at every kind of position (mid-segment, before padding, at a
    // segment end, before a tail too short for padding).
    for split in 1..LENS.len() {
        let dir = tmp();
        let cfg = config(dir.path(), SEG, PER);
        let (recs, saved) = log_with_saved_checkpoint(&cfg, &LENS[..split], &LENS[split..]).await;
        fs::write(checkpoint_path(dir.path()), &saved).unwrap();
        let (log, _) = assert_same_view_as_full_scan(&cfg);
        let rep = log.reader().recovery().clone();
        assert_eq!(rep.checkpoint, Some(recs[split - 1].0.point()), "split {split}: {rep:?}");
        assert_eq!(rep.records_scanned, (LENS.len() - split) as u64, "split {split}");
        assert_records(&log, &recs);
        log.close();
        // The next open has a current checkpoint again.
        assert_eq!(checkpoint_prefix(dir.path()).map(|p| p.last.index), Some(LENS.len() as u64), "split {split}");
    }
}

#[tokio::test]
async fn an_idle_log_brings_its_checkpoint_up_to_date_without_a_close() {
    let dir = tmp();
    let mut cfg = config(dir.path(), 1 << 20, 1024);
    cfg.checkpoint_interval = Duration::from_millis(50);
    let log = open(&cfg);
    write(&log, 1, &[100; 3], 1).await;
    let before = log.reader().stats().checkpoints.load(std::sync::atomic::Ordering::SeqCst);
    write(&log, 4, &[100; 3], 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Copy while the log is still open: what a kill -9 now would leave.
    let copy = tmp();
    copy_dir(dir.path(), copy.path());
    assert_eq!(checkpoint_prefix(copy.path()).map(|p| p.last.index), Some(6), "no checkpoint after an idle interval");
    assert!(log.reader().stats().checkpoints.load(std::sync::atomic::Ordering::SeqCst) > before);
    log.close();
}

#[tokio::test]
async fn damaged_or_missing_checkpoint_file_falls_back_to_a_full_scan() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 7] = [
        ("removed", |d| fs::remove_file(checkpoint_path(d)).unwrap()),
        ("zeroed", |d| edit_file(&checkpoint_path(d), |b| b.fill(0))),
        ("emptied", |d| fs::write(checkpoint_path(d), b"").unwrap()),
        ("cut inside slot 0", |d| edit_file(&checkpoint_path(d), |b| b.truncate(50))),
        ("a bit flipped in both slots", |d| {
            edit_file(&checkpoint_path(d), |b| {
                b[40] ^= 4;
                b[SLOT_BYTES as usize + 60] ^= 0x80;
            })
        }),
        ("garbage", |d| edit_file(&checkpoint_path(d), |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = (i * 7 + 3) as u8))),
        ("longer than its size", |d| edit_file(&checkpoint_path(d), |b| b.iter_mut().for_each(|x| *x = 0xEE))),
    ];
    for (what, damage) in cases {
        let dir = tmp();
        let cfg = config(dir.path(), SEG, PER);
        let (recs, _) = log_with_saved_checkpoint(&cfg, &LENS[..10], &LENS[10..]).await;
        damage(dir.path());
        let (log, _) = assert_same_view_as_full_scan(&cfg);
        let rep = log.reader().recovery().clone();
        assert_eq!((rep.checkpoint, rep.records_scanned, rep.scanned_from), (None, 23, 0), "{what}: {rep:?}");
        assert_eq!(scrub_result(&log).await, (0, 0), "{what}: nothing to scrub after a full scan");
        assert_records(&log, &recs);
        log.close();
        assert_eq!(fs::metadata(checkpoint_path(dir.path())).unwrap().len(), 8192, "{what}");
        assert_eq!(checkpoint_prefix(dir.path()).map(|p| p.last.index), Some(23), "{what}: a fresh checkpoint after the scan");
    }
}

#[tokio::test]
async fn torn_newest_slot_falls_back_to_the_older_one() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    // Every record in segment 0, so no roll writes a checkpoint in between: the close after record 3
    // writes one slot, the close after record 6 the other.
    let log = open(&cfg);
    let recs = write(&log, 1, &[80; 3], 1).await;
    log.close();
    let log = open(&cfg);
    let more = write(&log, 4, &[80; 3], 1).await;
    log.close();
    let slots = checkpoint_slots(dir.path());
    let (newest, c) = slots.newest().unwrap();
    assert_eq!(c.prefix.map(|p| p.last.index), Some(6));
    assert!(matches!(&slots.slots[1 - newest], SlotState::Valid(o) if o.prefix.map(|p| p.last.index) == Some(3)), "{slots:?}");
    // A crash while the newest slot was written.
    let at = newest * SLOT_BYTES as usize;
    edit_file(&checkpoint_path(dir.path()), |b| b[at + 30..at + RECORD_LEN].fill(0x5A));
    let (log, _) = assert_same_view_as_full_scan(&cfg);
    let rep = log.reader().recovery().clone();
    assert_eq!((rep.checkpoint, rep.records_scanned), (Some(recs[2].0.point()), 3), "{rep:?}");
    assert_records(&log, &recs);
    assert_records(&log, &more);
    log.close();
}

#[tokio::test]
async fn checkpoints_inconsistent_with_the_files_are_rejected() {
    type Craft = fn(&mut Checkpoint);
    let cases: [(&str, Craft); 12] = [
        ("position beyond the files", |c| {
            let p = c.prefix.as_mut().unwrap();
            p.last_pos += 50 * SEG;
            p.verified_pos += 50 * SEG;
        }),
        ("position in a segment holding other records", |c| {
            let p = c.prefix.as_mut().unwrap();
            p.last_pos = p.last_pos - p.last_pos % SEG + 2 * SEG;
            p.verified_pos = p.last_pos + p.last_len as u64;
        }),
        ("other term", |c| c.prefix.as_mut().unwrap().last.term += 1),
        ("other node", |c| c.prefix.as_mut().unwrap().last.node += 1),
        ("index beyond the last record", |c| c.prefix.as_mut().unwrap().last.index += 30),
        ("index of a later record", |c| c.prefix.as_mut().unwrap().last.index += 3),
        ("index of an earlier record", |c| c.prefix.as_mut().unwrap().last.index -= 1),
        ("other length", |c| {
            let p = c.prefix.as_mut().unwrap();
            p.last_len -= 10;
            p.verified_pos -= 10;
        }),
        ("verified_pos not at the end of the record", |c| c.prefix.as_mut().unwrap().verified_pos += 1),
        ("record spanning segments", |c| {
            let p = c.prefix.as_mut().unwrap();
            p.last_len += SEG as u32;
            p.verified_pos += SEG;
        }),
        ("other segment size", |c| c.segment_bytes = 2 * SEG),
        ("other index geometry", |c| c.index_slots_per_file = 2 * PER),
    ];
    for (what, craft) in cases {
        let dir = tmp();
        let cfg = config(dir.path(), SEG, PER);
        let (recs, saved) = log_with_saved_checkpoint(&cfg, &LENS[..12], &LENS[12..]).await;
        fs::write(checkpoint_path(dir.path()), &saved).unwrap();
        install_checkpoint(dir.path(), craft);
        let (log, _) = assert_same_view_as_full_scan(&cfg);
        let rep = log.reader().recovery().clone();
        assert_eq!((rep.checkpoint, rep.records_scanned), (None, 23), "{what}: {rep:?}");
        assert!(rep.rejected.is_some(), "{what}: the rejection is reported");
        assert_records(&log, &recs);
        log.close();
        // The rejected checkpoint is gone from both slots: only invalidations and the fresh one remain.
        let slots = checkpoint_slots(dir.path());
        for s in &slots.slots {
            match s {
                SlotState::Valid(c) => assert!(c.prefix.is_none_or(|p| p.last == recs[22].0), "{what}: {slots:?}"),
                other => panic!("{what}: slot {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn torn_tail_after_the_checkpoint_is_cut() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (recs, saved) = log_with_saved_checkpoint(&cfg, &[100; 11], &[100; 3]).await;
    fs::write(checkpoint_path(dir.path()), &saved).unwrap();
    // Record 14 (offset 300 of segment 1024) half written.
    let pos14 = 1024 + 300;
    edit_file(&segment_path(dir.path(), 1024), |b| b[300 + 50..400].fill(0));
    let (log, _) = assert_same_view_as_full_scan(&cfg);
    let rep = log.reader().recovery().clone();
    assert_eq!((rep.checkpoint, rep.records_scanned), (Some(recs[10].0.point()), 2), "{rep:?}");
    let st = log.reader().state();
    assert_eq!((st.last, st.write_pos), (Some(recs[12].0.point()), pos14));
    assert_absent(&log, 14);
    assert!(fs::read(segment_path(dir.path(), 1024)).unwrap()[300..].iter().all(|&b| b == 0), "torn bytes zeroed");
    assert_records(&log, &recs[..13]);
    log.close();
}

#[tokio::test]
async fn damage_in_a_sealed_segment_after_the_checkpoint_refuses_start() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    // Checkpoint at record 3 (offset 200..300 of segment 0); record 4 at 300 is damaged.
    let (_, saved) = log_with_saved_checkpoint(&cfg, &[100; 3], &[100; 10]).await;
    fs::write(checkpoint_path(dir.path()), &saved).unwrap();
    edit_file(&segment_path(dir.path(), 0), |b| b[300 + 60] ^= 0x20);
    let before = data_files(dir.path());
    match open_err(&cfg) {
        CommitLogError::Corrupt { file, offset, .. } => assert_eq!((file, offset), (segment_path(dir.path(), 0), 300)),
        e => panic!("expected Corrupt, got {e}"),
    }
    assert_eq!(data_files(dir.path()), before, "nothing cut");
    assert_eq!(fs::read(checkpoint_path(dir.path())).unwrap(), saved, "checkpoint untouched by a refused open");
}

/// The trade for a fast start: damage inside the prefix a checkpoint vouches for (disk corruption after
/// the data was durable) is not looked for on open. Reads still verify every record and report it.
#[tokio::test]
async fn damage_before_the_checkpoint_is_reported_by_the_read() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (recs, _) = log_with_saved_checkpoint(&cfg, &[100; 13], &[]).await;
    // Record 3 (offset 200 of segment 0) and the index slot of record 10 are damaged.
    edit_file(&segment_path(dir.path(), 0), |b| b[200 + 70] ^= 0x01);
    edit_file(&index_path(dir.path(), 8), |b| b[2 * 32] ^= 0x10);
    let log = open(&cfg);
    assert_eq!(log.reader().recovery().checkpoint, Some(recs[12].0.point()));
    for (index, offset) in [(3u64, 200u64), (10, 0)] {
        match log.reader().read(index) {
            Err(CommitLogError::Corrupt { offset: got, .. }) if index == 3 => assert_eq!(got, offset),
            Err(CommitLogError::Corrupt { .. }) => {}
            other => panic!("read of damaged record {index}: {other:?}"),
        }
    }
    assert_records(&log, &recs[..2]);
    assert_records(&log, &recs[3..9]);
    assert_records(&log, &recs[10..]);
    // The scrub finds both, and checks the rest.
    assert_eq!(scrub_result(&log).await, (11, 2));
    log.close();
}

#[tokio::test]
async fn scrub_keeps_to_its_rate_and_stops_on_close() {
    let dir = tmp();
    let mut cfg = config(dir.path(), SEG, PER);
    let (recs, _) = log_with_saved_checkpoint(&cfg, &[100; 20], &[]).await;
    // 20 records of 100 bytes at 500 bytes/s would take 4 s.
    cfg.scrub_bytes_per_sec = 500;
    let log = open(&cfg);
    let reader = log.reader();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let scrubbed = reader.stats().scrubbed.load(Ordering::Relaxed);
    assert!((1..=5).contains(&scrubbed), "{scrubbed} records scrubbed in 0.6 s at 500 B/s");
    assert!(!reader.stats().scrub_done.load(Ordering::Acquire));
    assert_records(&log, &recs);
    let t0 = Instant::now();
    log.close();
    assert!(t0.elapsed() < Duration::from_millis(500), "close waited {:?} for the scrub", t0.elapsed());
    assert!(reader.stats().scrub_done.load(Ordering::Acquire));
    assert!(reader.stats().scrubbed.load(Ordering::Relaxed) < 20);
    // Disabled: no scrub at all.
    cfg.scrub_bytes_per_sec = 0;
    let log = open(&cfg);
    assert!(log.reader().recovery().checkpoint.is_some());
    assert_eq!(scrub_result(&log).await, (0, 0));
    log.close();
}

#[tokio::test]
async fn damaged_index_files_in_the_trusted_range_fall_back_to_a_full_scan() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 4] = [
        ("middle file removed", |d| fs::remove_file(index_path(d, 8)).unwrap()),
        ("middle file zeroed", |d| edit_file(&index_path(d, 8), |b| b.fill(0))),
        ("middle file junk", |d| edit_file(&index_path(d, 8), |b| b.fill(0xAB))),
        ("last file cut short", |d| edit_file(&index_path(d, 16), |b| b.truncate(3 * 32))),
    ];
    for (what, damage) in cases {
        let dir = tmp();
        let cfg = config(dir.path(), SEG, PER);
        let (recs, _) = log_with_saved_checkpoint(&cfg, &LENS, &[]).await;
        damage(dir.path());
        let (log, _) = assert_same_view_as_full_scan(&cfg);
        let rep = log.reader().recovery().clone();
        assert_eq!((rep.checkpoint, rep.records_scanned), (None, 23), "{what}: {rep:?}");
        assert_records(&log, &recs);
        log.close();
    }
}

#[tokio::test]
async fn truncate_below_the_checkpoint_moves_it_back_first() {
    let dir = tmp();
    let cfg = config(dir.path(), SEG, PER);
    let (recs, _) = log_with_saved_checkpoint(&cfg, &LENS, &[]).await;
    let log = open(&cfg);
    assert_eq!(checkpoint_prefix(dir.path()).map(|p| p.last.index), Some(23));
    log.truncate(24).await.unwrap();
    assert_eq!(checkpoint_prefix(dir.path()).map(|p| p.last.index), Some(23), "a truncate above it leaves it");
    log.truncate(12).await.unwrap();
    // Durable when truncate returns, in both slots: no slot names a removed record.
    let r11 = log.reader().read(11).unwrap().unwrap();
    let expect = VerifiedPrefix { verified_pos: r11.pos + r11.len as u64, last_pos: r11.pos, last_len: r11.len, last: r11.meta };
    for s in checkpoint_slots(dir.path()).slots {
        assert!(matches!(s, SlotState::Valid(c) if c.prefix == Some(expect)), "{s:?}");
    }
    // A crash right after the truncate.
    let crashed = tmp();
    copy_dir(dir.path(), crashed.path());
    let crashed_cfg = config(crashed.path(), SEG, PER);
    let (copy, _) = assert_same_view_as_full_scan(&crashed_cfg);
    let rep = copy.reader().recovery().clone();
    assert_eq!((rep.checkpoint, rep.records_scanned), (Some(recs[10].0.point()), 0), "{rep:?}");
    assert_eq!(copy.reader().state().last, Some(recs[10].0.point()));
    assert_absent(&copy, 12);
    copy.close();

    // The new leader's entries replace the truncated ones.
    let new = write(&log, 12, &[150; 9], 5).await;
    log.close();
    let (log, _) = assert_same_view_as_full_scan(&cfg);
    assert_eq!(log.reader().recovery().checkpoint, Some(new[8].0.point()));
    assert_records(&log, &recs[..11]);
    assert_records(&log, &new);
    assert_absent(&log, 21);

    // Truncating everything invalidates it.
    log.truncate(1).await.unwrap();
    for s in checkpoint_slots(dir.path()).slots {
        assert!(matches!(s, SlotState::Valid(Checkpoint { prefix: None, .. })), "{s:?}");
    }
    log.close();
    let log = open(&cfg);
    let st = log.reader().state();
    assert_eq!((st.first, st.last, st.write_pos), (None, None, 0));
    assert_eq!(log.reader().recovery().checkpoint, None);
    log.close();
}

/// Checkpoints that lag (written only on close, never by the interval or a roll within the test), so that a
/// purge can pass them.
fn lagging_config(dir: &Path) -> CommitLogConfig {
    let mut cfg = config(dir, 64 * 1024, PER);
    cfg.checkpoint_interval = Duration::from_secs(3600);
    cfg
}

#[tokio::test]
async fn purge_then_reopen_keeps_or_drops_the_checkpoint() {
    let dir = tmp();
    let cfg = lagging_config(dir.path());
    let log = open(&cfg);
    let a = write(&log, 1, &[100; 10], 1).await;
    log.close();
    let saved = fs::read(checkpoint_path(dir.path())).unwrap();
    let log = open(&cfg);
    let b = write(&log, 11, &[100; 10], 1).await;
    assert_eq!(checkpoint_prefix(dir.path()).map(|p| p.last.index), Some(10), "the checkpoint lags");

    // Below the checkpoint: it stays and is used.
    log.purge(a[3].0.point(), None).await.unwrap();
    assert_eq!(checkpoint_prefix(dir.path()).map(|p| p.last.index), Some(10));
    let crashed = tmp();
    copy_dir(dir.path(), crashed.path());
    let (copy, seen) = assert_same_view_as_full_scan(&lagging_config(crashed.path()));
    assert_eq!(copy.reader().recovery().checkpoint, Some(a[9].0.point()));
    assert_eq!(copy.reader().recovery().records_scanned, 10);
    assert_eq!(seen.state.first, Some(5));
    copy.close();

    // Beyond it: it is invalidated before the purge mark is written.
    log.purge(b[4].0.point(), None).await.unwrap();
    assert_eq!(checkpoint_prefix(dir.path()), None);
    let crashed = tmp();
    copy_dir(dir.path(), crashed.path());
    let (copy, seen) = assert_same_view_as_full_scan(&lagging_config(crashed.path()));
    assert_eq!(copy.reader().recovery().checkpoint, None);
    assert_eq!(seen.state.first, Some(16));
    copy.close();
    // Even the old checkpoint file put back is ignored: it lies at or below the purge mark.
    fs::write(checkpoint_path(crashed.path()), &saved).unwrap();
    let (copy, _) = assert_same_view_as_full_scan(&lagging_config(crashed.path()));
    let rep = copy.reader().recovery().clone();
    assert_eq!(rep.checkpoint, None);
    assert!(rep.rejected.as_deref().is_some_and(|r| r.contains("purge mark")), "{rep:?}");
    copy.close();

    log.close();
    let (log, _) = assert_same_view_as_full_scan(&cfg);
    assert_eq!(log.reader().recovery().checkpoint, Some(b[9].0.point()));
    assert_records(&log, &b[5..]);

    // Everything, with a position hint: the log restarts elsewhere, with a new checkpoint once it has records.
    log.purge(LogPoint { index: 30, term: 1, node: NODE }, Some(200_000)).await.unwrap();
    assert_eq!(checkpoint_prefix(dir.path()), None);
    let c = write(&log, 31, &[100; 4], 2).await;
    log.close();
    let (log, seen) = assert_same_view_as_full_scan(&cfg);
    assert_eq!(log.reader().recovery().checkpoint, Some(c[3].0.point()));
    assert_eq!(seen.records[0].1, 200_000);
    assert_records(&log, &c);
    log.close();
}
