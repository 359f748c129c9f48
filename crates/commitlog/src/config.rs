//! Commitlog configuration: where it lives, segment and index geometry, and the flush policy.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{CommitLogError, Result};
use crate::record::HEADER_LEN;

/// When appended records become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Default. An append's durability callback fires only after fdatasync; concurrent requests share one
    /// fsync (group commit).
    Sync,
    /// Weaker, opt-in: callbacks fire once the bytes are in the page cache and the IO thread fdatasyncs every
    /// `interval`. Acknowledged records can be lost if a majority of replicas loses power together.
    Async {
        /// Time between background flushes.
        interval: Duration,
    },
}

/// Configuration of one commitlog directory.
#[derive(Debug, Clone)]
pub struct CommitLogConfig {
    /// Root directory; `data/`, `index/`, `checkpoint`, `vote`, `purged` and `committed` live below it.
    pub dir: PathBuf,
    /// Bytes per data segment (default 1 GiB). Must be identical on every replica of a group, because record
    /// positions (and so message physical offsets) depend on it.
    pub segment_bytes: u64,
    /// Dense-index slots per index file (32 bytes each; default 1 Mi slots = 32 MiB).
    pub index_slots_per_file: u64,
    /// Durability policy.
    pub flush: FlushPolicy,
    /// Most time between two recovery checkpoints while records are being appended (default 1 s); a
    /// segment roll and a clean close also write one. Recovery verifies only what was written after the
    /// last checkpoint, so this bounds the work of a restart after a crash.
    pub checkpoint_interval: Duration,
    /// Rate at which a background thread re-verifies, after a start that trusted a checkpoint, the records
    /// recovery did not read (default 32 MiB/s; 0: never). It logs and counts failures; reads verify every
    /// record regardless.
    pub scrub_bytes_per_sec: u64,
    /// How far ahead of the write position the IO thread zero-fills the active segment while it is idle
    /// (default 8 MiB; 0: never; a multiple of 4 KiB, at most 1 GiB; only with [`FlushPolicy::Sync`]).
    /// Segments are preallocated, so a first write into a block leaves an unwritten extent to convert,
    /// which every acknowledging fdatasync would otherwise also commit to the filesystem journal.
    pub prefill_ahead_bytes: u64,
}

/// Largest accepted `prefill_ahead_bytes`.
const PREFILL_AHEAD_MAX: u64 = 1 << 30;

impl CommitLogConfig {
    /// Defaults for `dir`: 1 GiB segments, 1 Mi index slots per file, sync flush, a checkpoint every second,
    /// scrub at 32 MiB/s, zero-fill 8 MiB ahead.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CommitLogConfig {
            dir: dir.into(),
            segment_bytes: 1 << 30,
            index_slots_per_file: 1 << 20,
            flush: FlushPolicy::Sync,
            checkpoint_interval: Duration::from_secs(1),
            scrub_bytes_per_sec: 32 << 20,
            prefill_ahead_bytes: 8 << 20,
        }
    }

    /// Checks cross-field rules.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes < 2 * HEADER_LEN as u64 || self.segment_bytes > (1 << 40) {
            return Err(CommitLogError::InvalidConfig(format!(
                "segment_bytes {} must be within {}..=2^40",
                self.segment_bytes,
                2 * HEADER_LEN
            )));
        }
        if self.index_slots_per_file < 1 || self.index_slots_per_file > (1 << 26) {
            return Err(CommitLogError::InvalidConfig(format!(
                "index_slots_per_file {} must be within 1..=2^26",
                self.index_slots_per_file
            )));
        }
        if let FlushPolicy::Async { interval } = self.flush {
            if interval.is_zero() {
                return Err(CommitLogError::InvalidConfig("async flush interval must be positive".into()));
            }
        }
        if self.checkpoint_interval.is_zero() {
            return Err(CommitLogError::InvalidConfig("checkpoint interval must be positive".into()));
        }
        // Page-sized steps keep every zero-fill chunk page aligned.
        if !self.prefill_ahead_bytes.is_multiple_of(4096) || self.prefill_ahead_bytes > PREFILL_AHEAD_MAX {
            return Err(CommitLogError::InvalidConfig(format!(
                "prefill_ahead_bytes {} must be a multiple of 4096 within 0..=2^30",
                self.prefill_ahead_bytes
            )));
        }
        Ok(())
    }

    /// The largest record (header included) a segment can hold.
    pub fn record_bytes_max(&self) -> u64 {
        self.segment_bytes.min(u32::MAX as u64)
    }
}
