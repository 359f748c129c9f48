//! Helpers shared by the commitlog integration tests: tiny-geometry configs, records whose bodies are
//! derived from their index (so any damage is visible), directory copies and byte-level file surgery.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use raftmq_commitlog::{
    CommitLog, CommitLogConfig, CommitLogError, FlushPolicy, RecordBatch, RecordKind, RecordLocation, RecordMeta, HEADER_LEN,
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
