//! The two flush policies, observed through the IO thread's counters: with `Sync`, an append is
//! acknowledged only after a group flush and concurrent appends share flushes; with `Async`, appends are
//! acknowledged before any fdatasync and the interval flush follows.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{body, config, meta, open};
use raftmq_commitlog::{FlushPolicy, RecordBatch};
use tokio::sync::oneshot;

#[tokio::test]
async fn sync_acknowledges_after_a_flush_and_groups_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&config(dir.path(), 1 << 20, 1024));
    let stats = log.reader();
    let mut acks = Vec::new();
    for i in 0..64u64 {
        let mut batch = RecordBatch::new();
        batch.push(meta(i, 1), &body(i, 0, 100));
        let (tx, rx) = oneshot::channel();
        let flushes = log.reader();
        // The callback records how many group flushes had completed when it ran.
        let _written = log.submit_append(
            batch,
            Box::new(move |r| {
                let _ = tx.send((r.is_ok(), flushes.stats().flushes.load(Ordering::SeqCst)));
            }),
        );
        acks.push(rx);
    }
    for rx in acks {
        let (ok, flushes_at_ack) = rx.await.unwrap();
        assert!(ok);
        assert!(flushes_at_ack >= 1, "acknowledged before any fdatasync");
    }
    let s = stats.stats();
    assert_eq!(s.records.load(Ordering::SeqCst), 64);
    let flushes = s.flushes.load(Ordering::SeqCst);
    assert!(flushes < 32, "64 concurrent appends took {flushes} flushes: no group commit");
    log.close();
}

#[tokio::test]
async fn async_acknowledges_before_fsync_and_flushes_on_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1 << 20, 1024);
    cfg.flush = FlushPolicy::Async { interval: Duration::from_millis(1000) };
    let log = open(&cfg);
    // Let the first (immediate) interval tick pass with nothing to flush.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reader = log.reader();
    let before = reader.stats().flushes.load(Ordering::SeqCst);
    let mut batch = RecordBatch::new();
    batch.push(meta(0, 1), &body(0, 0, 100));
    log.append_durable(batch).await.unwrap();
    assert_eq!(reader.stats().flushes.load(Ordering::SeqCst), before, "async mode acknowledged after an fdatasync");
    assert!(reader.read(0).unwrap().is_some(), "acknowledged record is readable");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(reader.stats().flushes.load(Ordering::SeqCst) > before, "the interval flush did not run");
    // save_meta stays synchronous in async mode and is readable back.
    log.save_meta("vote", b"v".to_vec(), true).await.unwrap();
    assert_eq!(log.read_meta("vote").unwrap().as_deref(), Some(&b"v"[..]));
    log.close();
    let log = open(&cfg);
    assert!(log.reader().read(0).unwrap().is_some(), "close flushes everything");
    log.close();
}

#[tokio::test]
async fn a_detached_save_is_written_only_after_everything_queued_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1 << 20, 1024);
    // No interval flush within the test: only the save's own ordering can make the records durable.
    cfg.flush = FlushPolicy::Async { interval: Duration::from_secs(3600) };
    let log = open(&cfg);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reader = log.reader();
    for i in 0..16u64 {
        let mut batch = RecordBatch::new();
        batch.push(meta(i, 1), &body(i, 0, 100));
        log.append_durable(batch).await.unwrap();
    }
    assert!(reader.durable_index().is_none_or(|d| d < 15), "premise: the appends are not durable yet");
    // Returns at once; the IO thread syncs the 16 records, then writes the file.
    log.save_meta_detached("committed", b"15".to_vec()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.read_meta("committed").unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the detached save was never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(reader.durable_index(), Some(15), "the file was written before the records it follows were durable");
    assert_eq!(log.read_meta("committed").unwrap().as_deref(), Some(&b"15"[..]));
    log.close();
}
