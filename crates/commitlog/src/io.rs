//! The IO thread: the only place that writes, truncates, purges or fsyncs files.
//!
//! It blocks for the first job, then drains whatever else is queued. Appends are written in arrival order
//! and their durability callbacks are collected; one fdatasync per dirty segment then completes all of
//! them (group commit). Any other job first flushes and completes the appends queued ahead of it, so file
//! operations keep the order in which they were submitted. Keeping this off the tokio workers means an
//! fsync stall never blocks the async runtime.
//!
//! Recovery checkpoints are written here too, right after a group flush has completed its callbacks (so
//! they never delay an acknowledgement that was ready): at most every `checkpoint_interval` while records
//! arrive, at once after a segment roll, after an idle interval for the last records, and on close. One
//! costs an fdatasync of the index pages written since the previous one plus one of a 4 KiB slot.
//!
//! When it is idle in sync mode (a batch was flushed and no job is queued), it zero-fills the active
//! segment ahead of the write position, one fdatasynced chunk at a time, looking for a job between chunks:
//! appends then write into blocks whose extents are already converted, so their fdatasync commits less
//! to the filesystem journal, and an append waits for at most one chunk.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::config::FlushPolicy;
use crate::error::{CommitLogError, Result};
use crate::fsutil;
use crate::record::{LogPoint, RecordMeta};
use crate::store::{RecordLocation, Store};

/// Called once the records of an append are durable (or with the error that prevented it).
pub type DurableCallback = Box<dyn FnOnce(Result<()>) + Send>;

pub(crate) enum Job {
    Append {
        buf: Vec<u8>,
        records: Vec<(RecordMeta, u32)>,
        written: oneshot::Sender<Result<Vec<RecordLocation>>>,
        durable: DurableCallback,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<()>>,
    },
    Purge {
        upto: LogPoint,
        next_pos_hint: Option<u64>,
        done: oneshot::Sender<Result<()>>,
    },
    Rebase {
        next_pos: u64,
        done: oneshot::Sender<Result<()>>,
    },
    SaveMeta {
        name: &'static str,
        payload: Vec<u8>,
        durable: bool,
        done: oneshot::Sender<Result<()>>,
    },
    Flush {
        done: DurableCallback,
    },
}

/// Jobs drained per batch at most: bounds the work between two fsyncs.
const BATCH_JOBS_MAX: usize = 4096;

/// The error that poisoned the IO thread, published for the log's owner (which must stop the node).
pub(crate) type FailureWatch = std::sync::Arc<tokio::sync::watch::Sender<Option<std::sync::Arc<CommitLogError>>>>;

pub(crate) struct IoThread {
    store: Store,
    pending: Vec<DurableCallback>,
    /// Set after a failed write or fsync: the page cache state is unknown, so nothing more is acknowledged.
    poisoned: Option<String>,
    /// Where the first poisoning error is published (kind, errno and file kept).
    failure: FailureWatch,
    /// Earliest time of the next checkpoint that is not forced by a roll or a close.
    next_checkpoint: Instant,
}

impl IoThread {
    pub fn new(store: Store, failure: FailureWatch) -> Self {
        // A checkpoint that recovery left behind the last record is brought up to date at once; a current
        // one waits a whole interval.
        let next_checkpoint = if store.needs_checkpoint() { Instant::now() } else { Instant::now() + store.cfg.checkpoint_interval };
        IoThread { store, pending: Vec::new(), poisoned: None, failure, next_checkpoint }
    }

    /// When the loop must wake up without a job: for an async flush, or for a checkpoint that is waiting
    /// for its interval (in sync mode; async mode checkpoints after its interval flushes).
    fn deadline(&self, next_flush: Instant) -> Option<Instant> {
        match self.store.cfg.flush {
            FlushPolicy::Async { .. } => Some(next_flush),
            FlushPolicy::Sync if self.poisoned.is_none() && self.store.needs_checkpoint() => {
                Some(if self.store.checkpoint_due() { Instant::now() } else { self.next_checkpoint })
            }
            FlushPolicy::Sync => None,
        }
    }

    /// Whether an idle moment should go to zero-filling. Only in sync mode: there every acknowledgement
    /// waits for an fdatasync, which the zero-fill makes cheaper. In async mode no acknowledgement waits
    /// for one and the interval flush already spreads the extent conversion over many appends, so the
    /// zeros would only add disk writes.
    fn prefill_wanted(&self) -> bool {
        matches!(self.store.cfg.flush, FlushPolicy::Sync) && self.poisoned.is_none() && self.store.prefill_next().is_some()
    }

    /// One idle step: a checkpoint first if one is due (so the zero-fill never delays it by more than a
    /// chunk), then one chunk of zeros.
    fn idle_step(&mut self) {
        self.maybe_checkpoint(false);
        if self.poisoned.is_some() {
            return;
        }
        if let Err(e) = self.store.prefill() {
            self.poison(&e);
        }
    }

    pub fn run(mut self, rx: Receiver<Job>) {
        let policy = self.store.cfg.flush;
        let mut next_flush = Instant::now();
        loop {
            let first = if self.prefill_wanted() {
                // Nothing is pending here (sync mode flushed the last batch): a queued job goes first, as
                // it would have from a blocking receive.
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => {
                        self.idle_step();
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match self.deadline(next_flush) {
                    None => match rx.recv() {
                        Ok(j) => j,
                        Err(_) => break,
                    },
                    Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => {
                            self.async_tick(&mut next_flush);
                            self.maybe_checkpoint(false);
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                }
            };
            self.handle(first);
            for _ in 1..BATCH_JOBS_MAX {
                match rx.try_recv() {
                    Ok(j) => self.handle(j),
                    Err(_) => break,
                }
            }
            match policy {
                FlushPolicy::Sync => {
                    self.flush_pending();
                    self.maybe_checkpoint(false);
                }
                // Checked here too, not only on a receive timeout: under a steady stream of jobs the
                // timeout never fires.
                FlushPolicy::Async { .. } => {
                    if self.async_tick(&mut next_flush) {
                        self.maybe_checkpoint(false);
                    }
                }
            }
        }
        self.flush_pending();
        self.maybe_checkpoint(true);
    }

    /// In async mode, flushes once the interval is over; returns whether it did.
    fn async_tick(&mut self, next_flush: &mut Instant) -> bool {
        let FlushPolicy::Async { interval } = self.store.cfg.flush else { return false };
        if Instant::now() < *next_flush {
            return false;
        }
        self.flush_pending();
        *next_flush = Instant::now() + interval;
        true
    }

    /// Writes a checkpoint naming the last record when one is due (`force`: on close). Runs only where
    /// nothing is waiting for a flush, so it never holds back an acknowledgement.
    fn maybe_checkpoint(&mut self, force: bool) {
        if self.poisoned.is_some() || !self.store.needs_checkpoint() {
            return;
        }
        let now = Instant::now();
        if !force && !self.store.checkpoint_due() && now < self.next_checkpoint {
            return;
        }
        match self.store.checkpoint() {
            Ok(()) => {
                self.next_checkpoint = now + self.store.cfg.checkpoint_interval;
                debug!(took = ?now.elapsed(), "recovery checkpoint written");
            }
            // Index pages whose writeback failed may be marked clean: no later checkpoint could be trusted
            // to cover them, so the store stops like after any failed fsync.
            Err(e) => self.poison(&e),
        }
    }

    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(CommitLogError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: &CommitLogError) {
        error!(error = %e, "commitlog IO failed; refusing further writes");
        if self.poisoned.is_none() {
            self.poisoned = Some(e.to_string());
            // Published before any callback learns of the failure, so whoever sees a failed append can
            // find its cause here.
            self.failure.send_replace(Some(std::sync::Arc::new(e.duplicate())));
        }
    }

    /// fdatasyncs dirty segments and completes every collected callback with the outcome.
    fn flush_pending(&mut self) {
        let r = self.check().and_then(|_| self.store.flush());
        if let Err(e) = &r {
            self.poison(e);
        }
        for cb in self.pending.drain(..) {
            cb(match &r {
                Ok(()) => Ok(()),
                Err(e) => Err(CommitLogError::Poisoned(e.to_string())),
            });
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Append { buf, records, written, durable } => {
                let r = self.check().and_then(|_| self.store.append(&buf, &records));
                match r {
                    Ok(locs) => {
                        let _ = written.send(Ok(locs));
                        match self.store.cfg.flush {
                            FlushPolicy::Sync => self.pending.push(durable),
                            FlushPolicy::Async { .. } => durable(Ok(())),
                        }
                    }
                    Err(e) => {
                        // A failed pwrite may have left partial bytes: nothing after it can be trusted.
                        if matches!(e, CommitLogError::Io { .. }) {
                            self.poison(&e);
                        }
                        durable(Err(CommitLogError::Poisoned(e.to_string())));
                        let _ = written.send(Err(e));
                    }
                }
            }
            Job::Flush { done } => match self.store.cfg.flush {
                FlushPolicy::Sync => self.pending.push(done),
                FlushPolicy::Async { .. } => {
                    self.flush_pending();
                    done(self.check());
                }
            },
            Job::Truncate { from, done } => {
                self.flush_pending();
                let r = self.check().and_then(|_| self.store.truncate(from));
                if let Err(e) = &r {
                    self.poison(e);
                }
                let _ = done.send(r);
            }
            Job::Purge { upto, next_pos_hint, done } => {
                self.flush_pending();
                let r = self.check().and_then(|_| self.store.purge(upto, next_pos_hint));
                if let Err(e) = &r {
                    self.poison(e);
                }
                let _ = done.send(r);
            }
            Job::Rebase { next_pos, done } => {
                self.flush_pending();
                let r = self.check().and_then(|_| self.store.rebase(next_pos));
                if let Err(e @ CommitLogError::Io { .. }) = &r {
                    self.poison(e);
                }
                let _ = done.send(r);
            }
            Job::SaveMeta { name, payload, durable, done } => {
                self.flush_pending();
                let r = self
                    .check()
                    .and_then(|_| fsutil::write_atomic(&self.store.cfg.dir, name, &fsutil::encode_meta_file(&payload), durable));
                // Nobody waits for a detached save (`CommitLog::save_meta_detached`): its failure is logged here.
                if let Err(Err(e)) = done.send(r) {
                    error!(file = name, error = %e, "saving a metadata file failed");
                }
            }
        }
    }
}
