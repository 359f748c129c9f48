//! Descriptors of a long log: sealed segments and full index files keep their mapping but give back their
//! descriptor, so a log of many segments holds a constant number of descriptors (EMFILE otherwise), and a
//! truncate back into a sealed segment reopens it.

mod common;

use std::path::Path;

use common::*;

/// Descriptors of this process that point into `dir`'s `data/` or `index/`.
fn fds_into(dir: &Path) -> usize {
    let data = dir.join("data");
    let index = dir.join("index");
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(&data) || p.starts_with(&index))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_files_hold_no_descriptor_and_reopen_when_written_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().canonicalize().expect("canonical");
    // 4 KiB segments and 8 slots per index file: 200 records of 1 KiB make about 50 segments and 25 index files.
    let cfg = config(&dir, 4096, 8);
    let log = open(&cfg);
    let recs: Vec<_> = (1..=200).map(|i| (meta(i, 1), body(i, 0, 1000))).collect();
    for (m, b) in &recs {
        append(&log, *m, b).await;
    }
    let segments = std::fs::read_dir(dir.join("data")).expect("data").count();
    assert!(segments >= 50, "{segments} segments");
    let fds = fds_into(&dir);
    assert!(fds <= 3, "{fds} descriptors for {segments} segments");
    for (m, b) in &recs {
        assert_record(&log, *m, b);
    }
    log.close();

    let log = open(&cfg);
    let fds = fds_into(&dir);
    assert!(fds <= 3, "{fds} descriptors after a reopen");
    // Truncate back into an early, sealed segment and write again: its descriptor is reopened.
    log.truncate(20).await.expect("truncate");
    let again: Vec<_> = (20..=30).map(|i| (meta(i, 2), body(i, 1, 1000))).collect();
    for (m, b) in &again {
        append(&log, *m, b).await;
    }
    for (m, b) in recs.iter().take(19).chain(&again) {
        assert_record(&log, *m, b);
    }
    assert!(fds_into(&dir) <= 3);
    log.close();
    let log = open(&cfg);
    for (m, b) in recs.iter().take(19).chain(&again) {
        assert_record(&log, *m, b);
    }
    log.close();
}
