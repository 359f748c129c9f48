//! Model-based property test of the commitlog.
//!
//! Random sequences of appends (1..5 records with bodies of 0..300 bytes, sometimes starting at or below the
//! purge point, sometimes sized to fill a segment exactly), truncates, purges (within the log or beyond its
//! end, with or without a position hint), rebases of an emptied log, and reopens (close + open) run against
//! the real log with tiny geometry (512-byte segments, 8 index slots per file) and against a `BTreeMap`
//! model. Reopens recover with the checkpoint the close wrote, with one saved earlier (what a crash after
//! it leaves), without a checkpoint, or with a damaged one; each is also compared with a full scan of a
//! copy without checkpoint, slot for slot. After every operation the reader's first/last/purge mark and
//! every present record (meta, body, contiguous positions) must match the model, and indexes outside the
//! model's range must read as absent.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use raftmq_commitlog::checkpoint::{RECORD_LEN, SLOT_BYTES};
use raftmq_commitlog::{CommitLog, CommitLogConfig, CommitLogError, LogPoint, RecordBatch, RecordKind, RecordMeta, HEADER_LEN};

const SEG: u64 = 512;

#[derive(Debug, Clone)]
enum Op {
    /// Append `sizes.len()` records with these body sizes; `below` > 0 starts that many indexes at or below
    /// the purge point when the log is empty after a purge (those must be skipped). `fill` resizes the record
    /// at that position of the batch (if it is written) so that it ends exactly at its segment's end, a case
    /// random sizes rarely hit.
    Append {
        sizes: Vec<usize>,
        below: u64,
        bump_term: bool,
        fill: Option<usize>,
    },
    /// Truncate from `last + 1 - back` (saturating); `back` may exceed the log's length.
    Truncate {
        back: u64,
    },
    /// Purge up to `first - 1 + fwd`; may lie beyond the last record. `hint` adds that many bytes to the
    /// write position as the next record's position when the purge goes beyond the end.
    Purge {
        fwd: u64,
        hint: Option<u64>,
    },
    /// Move the write position of an emptied, purged log by `delta` bytes (refused otherwise).
    Rebase {
        delta: i64,
    },
    /// Keep a copy of the checkpoint file as it is now.
    SaveCheckpoint,
    Reopen(Reopen),
}

#[derive(Debug, Clone, Copy)]
enum Reopen {
    /// With the checkpoint the close wrote.
    Clean,
    /// With the checkpoint file saved by the last `SaveCheckpoint`, as a crash after it would leave it
    /// (unless a truncate has cut records since: that rewrites the checkpoint durably first).
    Saved,
    /// Without a checkpoint file.
    Removed,
    /// With one byte of the checkpoint file (in either slot) flipped.
    Damaged(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            proptest::collection::vec(0usize..300, 1..5),
            prop_oneof![3 => Just(0u64), 1 => 1u64..4],
            any::<bool>(),
            prop_oneof![2 => Just(None), 1 => (0usize..4).prop_map(Some)],
        )
            .prop_map(|(sizes, below, bump, fill)| Op::Append { sizes, below, bump_term: bump, fill }),
        2 => (0u64..12).prop_map(|back| Op::Truncate { back }),
        2 => (0u64..16, proptest::option::of(0u64..1500)).prop_map(|(fwd, hint)| Op::Purge { fwd, hint }),
        1 => (-600i64..1500).prop_map(|delta| Op::Rebase { delta }),
        1 => Just(Op::SaveCheckpoint),
        2 => prop_oneof![
            Just(Reopen::Clean),
            Just(Reopen::Saved),
            Just(Reopen::Removed),
            (0usize..2 * RECORD_LEN).prop_map(Reopen::Damaged),
        ]
        .prop_map(Op::Reopen),
    ]
}

#[derive(Default, Debug)]
struct Model {
    /// Index → (meta, body, position): positions are computed by the model from the lengths alone.
    records: BTreeMap<u64, (RecordMeta, Vec<u8>, u64)>,
    purged: Option<LogPoint>,
    /// The position the next record goes to (when it fits in the current segment).
    write_pos: u64,
    /// Where the log starts when it holds no record: 0, or the purge mark's position.
    start_pos: u64,
    term: u64,
    salt: u64,
}

impl Model {
    fn last(&self) -> Option<LogPoint> {
        self.records.values().next_back().map(|(m, _, _)| m.point())
    }
    fn first(&self) -> Option<u64> {
        self.records.keys().next().copied()
    }
    fn next_index(&self) -> u64 {
        self.last().map(|l| l.index + 1).or(self.purged.map(|p| p.index + 1)).unwrap_or(1)
    }
}

/// The write position normalised the way recovery does: a segment tail too short for a padding header
/// (fewer than 8 bytes) can hold no record, so a position inside it is the same as the next segment's start.
/// (Before a reopen the log reports the raw position, after it the next segment's start.)
fn canonical(pos: u64) -> u64 {
    let rest = SEG - pos % SEG;
    if rest < 8 {
        pos + rest
    } else {
        pos
    }
}

fn check(log: &CommitLog, model: &Model, ctx: &str) -> Result<(), TestCaseError> {
    let reader = log.reader();
    let st = reader.state();
    prop_assert_eq!(st.first, model.first(), "{}: first", ctx);
    prop_assert_eq!(st.last, model.last(), "{}: last", ctx);
    prop_assert_eq!(st.purged.map(|p| p.point), model.purged, "{}: purge mark", ctx);
    prop_assert_eq!(canonical(st.write_pos), canonical(model.write_pos), "{}: write position", ctx);
    let mut prev_end: Option<u64> = None;
    for (i, (m, b, pos)) in &model.records {
        let r = reader.read(*i).map_err(|e| TestCaseError::fail(format!("{ctx}: read {i}: {e}")))?;
        let Some(r) = r else { return Err(TestCaseError::fail(format!("{ctx}: record {i} missing"))) };
        prop_assert_eq!(r.meta, *m, "{}: meta of {}", ctx, i);
        prop_assert_eq!(&r.body[..], &b[..], "{}: body of {}", ctx, i);
        prop_assert_eq!(r.len as usize, HEADER_LEN + b.len());
        prop_assert_eq!(r.pos, *pos, "{}: position of {}", ctx, i);
        // Consecutive records are adjacent unless the next one had to open a new segment.
        if let Some(end) = prev_end {
            let next_seg = end - end % SEG + SEG;
            prop_assert!(
                r.pos == end || (r.pos == next_seg && end % SEG + r.len as u64 > SEG),
                "{}: {} at {} after end {}",
                ctx,
                i,
                r.pos,
                end
            );
        }
        prev_end = Some(r.pos + r.len as u64);
    }
    if let Some(end) = prev_end {
        // Right behind the last record, also after a truncate removed a record that had rolled to a new
        // segment: positions depend only on the records present.
        prop_assert_eq!(canonical(end), canonical(model.write_pos), "{}: write position follows the last record", ctx);
    }
    let lo = model.first().unwrap_or(model.next_index());
    for i in lo.saturating_sub(3)..lo {
        prop_assert!(reader.read(i).map_err(|e| TestCaseError::fail(e.to_string()))?.is_none(), "{}: {} should be absent", ctx, i);
    }
    let hi = model.next_index();
    for i in hi..hi + 3 {
        prop_assert!(reader.read(i).map_err(|e| TestCaseError::fail(e.to_string()))?.is_none(), "{}: {} should be absent", ctx, i);
    }
    let range = reader.read_range(0, u64::MAX, usize::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(range.iter().map(|r| r.meta.index).collect::<Vec<_>>(), model.records.keys().copied().collect::<Vec<_>>());
    Ok(())
}

async fn run(cfg: CommitLogConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut log = open(&cfg);
    let mut model = Model { term: 1, ..Model::default() };
    let mut saved: Option<Vec<u8>> = None;
    check(&log, &model, "fresh")?;
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("step {step} {op:?}");
        match op {
            Op::Append { mut sizes, below, bump_term, fill } => {
                if bump_term {
                    model.term += 1;
                }
                let next = model.next_index();
                // Below the purge point only when the log is empty after a purge: openraft re-sending
                // entries a snapshot already covers.
                let skip = if model.last().is_none() && model.purged.is_some() { below.min(next) } else { 0 };
                let start = next - skip;
                if let Some(k) = fill.filter(|k| *k < sizes.len() && *k as u64 >= skip) {
                    // Where record k will start: simulate the written records before it.
                    let mut wp = model.write_pos;
                    for size in &sizes[skip as usize..k] {
                        let len = (HEADER_LEN + size) as u64;
                        wp = if wp % SEG + len > SEG { wp - wp % SEG + SEG } else { wp };
                        wp += len;
                    }
                    let room = (SEG - wp % SEG) as usize;
                    if room >= HEADER_LEN {
                        sizes[k] = room - HEADER_LEN;
                    }
                }
                let mut batch = RecordBatch::new();
                let mut expected = Vec::new();
                for (k, size) in sizes.iter().enumerate() {
                    let index = start + k as u64;
                    model.salt += 1;
                    let kind = if *size == 0 { RecordKind::Blank } else { RecordKind::Normal };
                    let m = RecordMeta { index, term: model.term, node: NODE, kind };
                    let b = body(index, model.salt, *size);
                    batch.push(m, &b);
                    if index >= next {
                        expected.push((m, b));
                    }
                }
                let locs = log.append_durable(batch).await.map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                prop_assert_eq!(locs.len(), expected.len(), "{}: records written", ctx);
                for (loc, (m, b)) in locs.iter().zip(expected) {
                    let len = (HEADER_LEN + b.len()) as u64;
                    prop_assert_eq!(loc.len as u64, len);
                    let expect_pos =
                        if model.write_pos % SEG + len > SEG { model.write_pos - model.write_pos % SEG + SEG } else { model.write_pos };
                    prop_assert_eq!(loc.pos, expect_pos, "{}: position of {}", ctx, m.index);
                    model.write_pos = expect_pos + len;
                    model.records.insert(m.index, (m, b, expect_pos));
                }
            }
            Op::Truncate { back } => {
                let from = model.next_index().saturating_sub(back);
                log.truncate(from).await.map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                let cut = model.records.split_off(&from);
                if !cut.is_empty() {
                    saved = None;
                    model.write_pos = match model.records.last_key_value() {
                        Some((_, (_, b, pos))) => pos + (HEADER_LEN + b.len()) as u64,
                        None => model.start_pos,
                    };
                }
                // A new leader overwrites what was truncated.
                model.term += 1;
            }
            Op::Purge { fwd, hint } => {
                let base = model.first().unwrap_or(model.next_index());
                let upto_index = (base + fwd).saturating_sub(1);
                let upto = match model.records.get(&upto_index) {
                    Some((m, _, _)) => m.point(),
                    None => LogPoint { index: upto_index, term: model.term, node: NODE },
                };
                let beyond = model.last().is_none_or(|l| upto_index >= l.index);
                // A hint is passed either way; the log only uses it when the purge empties it.
                let hint_pos = hint.map(|h| model.write_pos + h);
                log.purge(upto, hint_pos).await.map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                if model.purged.is_none_or(|p| upto_index > p.index) {
                    model.purged = Some(upto);
                    let keep: BTreeMap<_, _> = model.records.split_off(&(upto_index + 1));
                    model.records = keep;
                    if beyond {
                        model.write_pos = hint_pos.unwrap_or(model.write_pos);
                        model.start_pos = model.write_pos;
                    } else {
                        model.start_pos = model.records[&(upto_index + 1)].2;
                    }
                }
            }
            Op::Rebase { delta } => {
                let to = model.write_pos.saturating_add_signed(delta);
                let r = log.rebase(to).await;
                if model.last().is_none() && model.purged.is_some() {
                    r.map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                    model.write_pos = to;
                    model.start_pos = to;
                } else {
                    prop_assert!(matches!(r, Err(CommitLogError::InvalidState(_))), "{}: expected InvalidState, got {:?}", ctx, r);
                }
            }
            Op::SaveCheckpoint => saved = std::fs::read(checkpoint_path(&cfg.dir)).ok(),
            Op::Reopen(how) => {
                log.close();
                let path = checkpoint_path(&cfg.dir);
                match how {
                    Reopen::Clean => {}
                    Reopen::Saved => {
                        if let Some(b) = &saved {
                            std::fs::write(&path, b).unwrap();
                        }
                    }
                    Reopen::Removed => std::fs::remove_file(&path).unwrap(),
                    Reopen::Damaged(at) => {
                        let at = if at < RECORD_LEN { at } else { SLOT_BYTES as usize + at - RECORD_LEN };
                        edit_file(&path, |b| b[at] ^= 0x24);
                    }
                }
                log = assert_same_view_as_full_scan(&cfg).0;
            }
        }
        check(&log, &model, &ctx)?;
    }
    log.close();
    // Whatever the sequence, the final state survives one more reopen, which reads nothing.
    let (log, _) = assert_same_view_as_full_scan(&cfg);
    check(&log, &model, "final reopen")?;
    let rep = log.reader().recovery().clone();
    prop_assert_eq!(rep.checkpoint, model.last(), "final reopen: {:?}", rep);
    prop_assert_eq!(rep.records_scanned, 0, "final reopen: {:?}", rep);
    log.close();
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    // 64 cases by default (a few seconds); PROPTEST_CASES=n for a longer hunt.
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn commitlog_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), SEG, 8);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(cfg, ops))?;
    }
}
