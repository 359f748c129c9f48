//! Helpers shared by the commitlog integration tests: tiny-geometry configs, records whose bodies are
//! derived from their index (so any damage is visible), directory copies, byte-level file surgery, the
//! recovery checkpoint on disk, and the comparison of a checkpointed recovery with a full scan.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use raftmq_commitlog::{
    checkpoint, CommitLog, CommitLogConfig, CommitLogError, FlushPolicy, LogState, RecordBatch, RecordKind, RecordLocation, RecordMeta,
    HEADER_LEN,
};

/// Node id every test record carries.
pub const NODE: u64 = 7;

/// A sync-flush config with the given segment size and index slots per file.
pub fn config(dir: &Path, segment_bytes: u64, slots_per_file: u64) -> CommitLogConfig {
    let mut cfg = CommitLogConfig::new(dir);
    cfg.segment_bytes = segment_bytes;
    cfg.index_slots_per_file = slots_per_file;
    cfg.flush = FlushPolicy::Sync;
    cfg
}

/// Opens the log, panicking with the error if that fails.
pub fn open(cfg: &CommitLogConfig) -> CommitLog {
    match CommitLog::open(cfg.clone()) {
        Ok(log) => log,
        Err(e) => panic!("open {}: {e}", cfg.dir.display()),
    }
}

/// Opens the log expecting failure; returns the error.
pub fn open_err(cfg: &CommitLogConfig) -> CommitLogError {
    match CommitLog::open(cfg.clone()) {
        Ok(log) => {
            let state = log.reader().state();
            log.close();
            panic!("open {} succeeded ({state:?}) but was expected to fail", cfg.dir.display())
        }
        Err(e) => e,
    }
}

/// Meta of a normal record.
pub fn meta(index: u64, term: u64) -> RecordMeta {
    RecordMeta { index, term, node: NODE, kind: RecordKind::Normal }
}

/// A body of `len` bytes derived from `index` and `salt`; every byte is non-zero, so zeroing any byte of it
/// changes the record.
pub fn body(index: u64, salt: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|j| ((index.wrapping_mul(131) ^ salt.wrapping_mul(17)).wrapping_add(j * 7) % 255 + 1) as u8).collect()
}

/// Body length that makes a record exactly `record_len` bytes long.
pub fn body_len_for(record_len: usize) -> usize {
    record_len - HEADER_LEN
}

/// Appends one record durably and returns where it landed.
pub async fn append(log: &CommitLog, m: RecordMeta, b: &[u8]) -> RecordLocation {
    let mut batch = RecordBatch::new();
    batch.push(m, b);
    let locs = match log.append_durable(batch).await {
        Ok(l) => l,
        Err(e) => panic!("append {m:?}: {e}"),
    };
    assert_eq!(locs.len(), 1, "append of index {} returned {locs:?}", m.index);
    locs[0]
}

/// Appends several records as one durable batch.
pub async fn append_batch(log: &CommitLog, recs: &[(RecordMeta, Vec<u8>)]) -> Vec<RecordLocation> {
    let mut batch = RecordBatch::new();
    for (m, b) in recs {
        batch.push(*m, b);
    }
    match log.append_durable(batch).await {
        Ok(l) => l,
        Err(e) => panic!("append batch of {} records: {e}", recs.len()),
    }
}

/// Asserts the record at `index` is present with this meta and body; returns its position.
pub fn assert_record(log: &CommitLog, m: RecordMeta, b: &[u8]) -> u64 {
    let r = match log.reader().read(m.index) {
        Ok(Some(r)) => r,
        Ok(None) => panic!("record {} is missing (state {:?})", m.index, log.reader().state()),
        Err(e) => panic!("reading record {}: {e}", m.index),
    };
    assert_eq!(r.meta, m, "meta of record {}", m.index);
    assert_eq!(&r.body[..], b, "body of record {}", m.index);
    assert_eq!(r.len as usize, HEADER_LEN + b.len(), "length of record {}", m.index);
    r.pos
}

/// Asserts `index` is not present.
pub fn assert_absent(log: &CommitLog, index: u64) {
    match log.reader().read(index) {
        Ok(None) => {}
        other => panic!("record {index} should be absent, got {other:?}"),
    }
}

/// Copies a directory tree.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for ent in fs::read_dir(src).unwrap() {
        let ent = ent.unwrap();
        let to = dst.join(ent.file_name());
        if ent.file_type().unwrap().is_dir() {
            copy_dir(&ent.path(), &to);
        } else {
            fs::copy(ent.path(), &to).unwrap();
        }
    }
}

/// The 20-digit numbered files of `dir/sub` (`data` or `index`), sorted by number.
pub fn numbered(dir: &Path, sub: &str) -> Vec<u64> {
    let mut out: Vec<u64> = fs::read_dir(dir.join(sub))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            (name.len() == 20).then(|| name.parse().ok()).flatten()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Path of the data segment starting at `base`.
pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join("data").join(format!("{base:020}"))
}

/// Path of the index file starting at raft index `first`.
pub fn index_path(dir: &Path, first: u64) -> PathBuf {
    dir.join("index").join(format!("{first:020}"))
}

/// Applies `f` to the bytes of `path` and writes them back.
pub fn edit_file(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = fs::read(path).unwrap();
    f(&mut b);
    fs::write(path, &b).unwrap();
}

/// Every data segment of `dir` as (base, bytes).
pub fn data_files(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    numbered(dir, "data").into_iter().map(|b| (b, fs::read(segment_path(dir, b)).unwrap())).collect()
}

/// Path of the recovery checkpoint file.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(checkpoint::CHECKPOINT_FILE)
}

/// The two slots of the checkpoint file as they are on disk.
pub fn checkpoint_slots(dir: &Path) -> checkpoint::Slots {
    checkpoint::Slots::decode(&fs::read(checkpoint_path(dir)).unwrap_or_default())
}

/// What the current checkpoint on disk vouches for (`None`: no file, no valid slot, or an invalidation).
pub fn checkpoint_prefix(dir: &Path) -> Option<checkpoint::VerifiedPrefix> {
    checkpoint_slots(dir).newest().and_then(|(_, c)| c.prefix)
}

/// Everything a reader can observe of a log, for comparing two recoveries of the same files.
#[derive(Debug, PartialEq, Eq)]
pub struct Observed {
    pub state: LogState,
    /// Every present record: meta, position, length, body.
    pub records: Vec<(RecordMeta, u64, u32, Vec<u8>)>,
    /// The raw dense-index slots of every present record.
    pub slots: Vec<Vec<u8>>,
}

/// Reads every present record and its index slot.
pub fn observe(log: &CommitLog, slots_per_file: u64) -> Observed {
    let r = log.reader();
    let state = r.state();
    let mut records = Vec::new();
    let mut slots = Vec::new();
    if let (Some(first), Some(last)) = (state.first, state.last) {
        for i in first..=last.index {
            let rec = match r.read(i) {
                Ok(Some(rec)) => rec,
                other => panic!("record {i} of {first}..={}: {other:?}", last.index),
            };
            records.push((rec.meta, rec.pos, rec.len, rec.body.to_vec()));
            let file_first = i - i % slots_per_file;
            let bytes = fs::read(index_path(log.dir(), file_first)).unwrap();
            let at = ((i - file_first) * 32) as usize;
            slots.push(bytes[at..at + 32].to_vec());
        }
        let range = r.read_range(0, u64::MAX, usize::MAX).unwrap();
        assert_eq!(range.len(), records.len(), "read_range sees every present record");
        assert!(r.read(last.index + 1).unwrap().is_none(), "a record after the last");
    }
    Observed { state, records, slots }
}

/// Opens `cfg` (recovering with whatever checkpoint it has) and a copy of its directory without the
/// checkpoint (a full scan), and asserts both show exactly the same log. Returns the first log, open, and
/// what it observed.
pub fn assert_same_view_as_full_scan(cfg: &CommitLogConfig) -> (CommitLog, Observed) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&cfg.dir, copy.path());
    let _ = fs::remove_file(checkpoint_path(copy.path()));
    let log = open(cfg);
    let with = observe(&log, cfg.index_slots_per_file);
    let mut full_cfg = cfg.clone();
    full_cfg.dir = copy.path().to_path_buf();
    let full = open(&full_cfg);
    assert_eq!(full.reader().recovery().checkpoint, None, "the copy without a checkpoint scans everything");
    let without = observe(&full, cfg.index_slots_per_file);
    full.close();
    assert_eq!(with, without, "recovery with the checkpoint ({:?}) differs from a full scan", log.reader().recovery());
    (log, with)
}
