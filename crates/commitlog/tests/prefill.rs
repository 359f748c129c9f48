//! The zero-fill ahead of the write position (`CommitLogConfig::prefill_ahead_bytes`): while the IO thread
//! is idle it writes fdatasynced zeros into the active segment ahead of the next record, never below the
//! write position and never past the segment end, and nothing when it is off. The log, its recovery and
//! records appended in between prefill chunks are unaffected.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use raftmq_commitlog::{CommitLog, CommitLogConfig, CommitLogError, RecordMeta};

const PAGE: u64 = 4096;
const CHUNK: u64 = 256 << 10;

fn prefilled(log: &CommitLog) -> u64 {
    log.reader().stats().prefilled_bytes.load(Ordering::SeqCst)
}

/// Waits until the prefill counter has not moved for a while (the IO thread is idle with nothing left to
/// fill) and returns it.
fn settle(log: &CommitLog) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = prefilled(log);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(300) {
        assert!(Instant::now() < deadline, "prefill never settled (at {last} bytes)");
        std::thread::sleep(Duration::from_millis(20));
        let now = prefilled(log);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

fn round_up(pos: u64) -> u64 {
    pos.div_ceil(PAGE) * PAGE
}

/// Where, at or after `from`, the filesystem reports written data in `path` (`None`: only holes or
/// unwritten extents follow).
fn seek_data(path: &Path, from: u64) -> Option<u64> {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    // SAFETY: lseek on a valid descriptor owned by `f`.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    (r >= 0).then_some(r as u64)
}

/// Whether this filesystem reports preallocated, never written blocks as holes (ext4, xfs do): only then can
/// the tests tell zeros the prefill wrote from the preallocation's.
fn unwritten_is_hole(dir: &Path) -> bool {
    let path = dir.join("probe");
    let f = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    // SAFETY: fallocate on a valid descriptor owned by `f`; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) };
    let hole = rc == 0 && seek_data(&path, 0).is_none();
    drop(f);
    fs::remove_file(&path).unwrap();
    hole
}

fn records(from: u64, n: u64, len: usize) -> Vec<(RecordMeta, Vec<u8>)> {
    (from..from + n).map(|i| (meta(i, 1), body(i, 3, body_len_for(len)))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_writes_zeros_ahead_up_to_the_segment_end_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let holes = unwritten_is_hole(dir.path());
    // Not a multiple of the page size, and smaller than the 8 MiB default target: the last chunk is clamped.
    let seg = 1_000_000u64;
    let cfg = config(dir.path(), seg, 64);
    assert_eq!(cfg.prefill_ahead_bytes, 8 << 20, "on by default");
    let log = open(&cfg);
    let recs = records(1, 10, 1000);
    append_batch(&log, &recs).await;
    let write_pos = log.reader().state().write_pos;
    assert_eq!(write_pos, 10_000);
    let filled = settle(&log);
    assert_eq!(filled, seg - round_up(write_pos), "zeros from the page after the write position to the segment end, no further");
    let path = segment_path(dir.path(), 0);
    assert_eq!(fs::metadata(&path).unwrap().len(), seg, "the segment file did not grow");
    assert_eq!(numbered(dir.path(), "data"), vec![0], "no segment was created ahead");
    if holes {
        assert_eq!(seek_data(&path, round_up(write_pos)), Some(round_up(write_pos)), "the prefilled range is written");
    }
    let bytes = fs::read(&path).unwrap();
    assert!(bytes[write_pos as usize..].iter().all(|&b| b == 0), "only zeros after the write position");
    for (m, b) in &recs {
        assert_record(&log, *m, b);
    }
    let before = observe(&log, cfg.index_slots_per_file);
    log.close();
    let (log, after) = assert_same_view_as_full_scan(&cfg);
    assert_eq!(before, after, "recovery over the prefilled zeros");

    // A reopened log does not know what was filled: it fills the same range again (counters restart).
    assert_eq!(settle(&log), filled, "after reopening");
    // The next segment starts unprefilled and is filled after the roll, from its first record on.
    let more = records(11, 1000, 1000);
    append_batch(&log, &more).await;
    let write_pos = log.reader().state().write_pos;
    assert!(write_pos > seg, "rolled: {write_pos}");
    let filled_next = settle(&log) - filled;
    assert_eq!(filled_next, seg - round_up(write_pos - seg), "the new segment, to its end");
    for (m, b) in recs.iter().chain(&more) {
        assert_record(&log, *m, b);
    }
    log.close();
    let (log, _) = assert_same_view_as_full_scan(&cfg);
    log.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_stays_within_its_target_and_is_off_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let holes = unwritten_is_hole(dir.path());
    let seg = 8u64 << 20;
    let mut cfg = config(dir.path(), seg, 64);
    cfg.prefill_ahead_bytes = 1 << 20;
    let log = open(&cfg);
    // Records end on a page boundary, so the target is exactly four chunks away.
    append_batch(&log, &records(1, 4, 1024)).await;
    let write_pos = log.reader().state().write_pos;
    assert_eq!(write_pos, PAGE);
    let filled = settle(&log);
    assert_eq!(filled, 4 * CHUNK, "prefilled {filled} bytes for a 1 MiB target");
    let path = segment_path(dir.path(), 0);
    if holes {
        let end = round_up(write_pos) + filled;
        assert_eq!(seek_data(&path, end), None, "nothing written beyond the prefilled range ({end})");
    }
    // Moving a whole chunk on refills; a smaller step does not.
    append_batch(&log, &records(5, 10, 1000)).await;
    assert_eq!(settle(&log), filled, "10 KB of appends wrote another chunk");
    append_batch(&log, &records(15, 300, 1000)).await;
    // 1 MiB ahead of 314,096 is 310,000 bytes past the filled range: one more whole chunk.
    assert_eq!(settle(&log), filled + CHUNK, "300 KB of appends moved the prefill on by whole chunks");
    log.close();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1 << 20, 64);
    cfg.prefill_ahead_bytes = 0;
    let log = open(&cfg);
    let recs = records(1, 10, 1000);
    append_batch(&log, &recs).await;
    let write_pos = log.reader().state().write_pos;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(prefilled(&log), 0, "prefill_ahead_bytes = 0 writes nothing ahead");
    if holes {
        assert_eq!(seek_data(&segment_path(dir.path(), 0), round_up(write_pos)), None, "nothing written after the last record's page");
    }
    log.close();
    let (log, _) = assert_same_view_as_full_scan(&cfg);
    log.close();
}

#[test]
fn prefill_ahead_bytes_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [1000, (1 << 30) + 4096] {
        let mut cfg = CommitLogConfig::new(dir.path());
        cfg.prefill_ahead_bytes = bad;
        assert!(matches!(open_err(&cfg), CommitLogError::InvalidConfig(_)), "prefill_ahead_bytes {bad} accepted");
    }
}

/// Many small appends with pauses, so that prefill chunks run between them, across segment rolls and a
/// truncate (which moves the write position back over prefilled zeros).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_interleaved_with_prefill_read_back_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 300_000u64;
    let mut cfg = config(dir.path(), seg, 64);
    cfg.prefill_ahead_bytes = 512 << 10;
    let log = open(&cfg);
    let mut expect: Vec<(RecordMeta, Vec<u8>)> = Vec::new();
    let mut next = 1u64;
    for round in 0..400u64 {
        if round == 250 {
            let from = next - 40;
            log.truncate(from).await.unwrap();
            expect.truncate((from - 1) as usize);
            next = from;
        }
        let len = HEADER + ((round * 7919) % 6000) as usize;
        let (m, b) = (meta(next, 1 + round / 100), body(next, round, len - HEADER));
        append(&log, m, &b).await;
        expect.push((m, b));
        next += 1;
        if round % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1 + round % 4)).await;
        }
    }
    assert!(log.reader().state().write_pos > 3 * seg, "crossed several segments");
    assert!(prefilled(&log) > 0, "the prefill never ran between appends");
    for (m, b) in &expect {
        assert_record(&log, *m, b);
    }
    settle(&log);
    let before = observe(&log, cfg.index_slots_per_file);
    assert_eq!(before.records.len(), expect.len());
    log.close();
    let (log, after) = assert_same_view_as_full_scan(&cfg);
    assert_eq!(before, after);
    for (m, b) in &expect {
        assert_record(&log, *m, b);
    }
    log.close();
}

const HEADER: usize = raftmq_commitlog::HEADER_LEN;
