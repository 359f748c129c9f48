//! Process-crash test: no acknowledged record is ever lost or damaged when the writer is killed.
//!
//! The parent test re-runs this test binary as a child (`child_writer`, an ignored test that does nothing
//! unless `RAFTMQ_CRASH_CHILD_DIR` is set). The child opens the log with `FlushPolicy::Sync` and appends from
//! several concurrent tokio tasks (indexes allocated and submitted under a mutex, durability awaited outside
//! it), printing `ack <index>` once an append's durability callback has fired. The parent reads those lines,
//! SIGKILLs the child at a random moment, reopens the log and checks that every record acknowledged so far
//! (in this and all earlier rounds on the same directory) is present, intact (body and meta derived from the
//! index) and that indexes are contiguous from 1. Rounds alternate between three directories with different
//! segment sizes, so kills land during segment rolls as well as inside segments, and each round starts by
//! recovering the previous round's crash. Every fourth round kills the child early (0-40 ms after spawn),
//! possibly while it is still recovering. The child writes recovery checkpoints on every segment roll and,
//! in every other round, every millisecond, so kills also land while checkpoints are written; the parent
//! checks that recovery after a kill used a checkpoint naming a record of the log, and that a reopen after a
//! clean close re-reads nothing.
//!
//! A kill keeps the page cache, so those rounds cannot see a missing fsync. The power-cut variants run the
//! same child on a `raftmq_powerfail` FUSE mount and cut the power after the kill: every write not yet
//! fdatasynced and every directory entry whose directory was not fsynced is lost, as after a real power
//! failure, and the log must still open with every acknowledged record. They skip (printing why) where
//! FUSE cannot be mounted.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::config;
use raftmq_commitlog::{CommitLog, RecordBatch, RecordKind, RecordMeta, RecoveryReport};
use raftmq_powerfail::PowerFailFs;
use rand::Rng;

const DIR_ENV: &str = "RAFTMQ_CRASH_CHILD_DIR";
const SEG_ENV: &str = "RAFTMQ_CRASH_CHILD_SEG";
/// The highest index acknowledged in earlier rounds: the child refuses to start if its log lacks it, so a
/// recovery that dropped it cannot go unnoticed by re-creating the (index-derived) record.
const ACKED_ENV: &str = "RAFTMQ_CRASH_CHILD_ACKED";
const CKPT_MS_ENV: &str = "RAFTMQ_CRASH_CHILD_CHECKPOINT_MS";
const WRITERS: usize = 8;
const SLOTS_PER_INDEX_FILE: u64 = 64;

fn crash_meta(index: u64) -> RecordMeta {
    RecordMeta { index, term: 1 + index / 200, node: index % 5, kind: if index % 17 == 5 { RecordKind::Blank } else { RecordKind::Normal } }
}

fn crash_body(index: u64) -> Vec<u8> {
    if index % 17 == 5 {
        return Vec::new();
    }
    let len = (index.wrapping_mul(7919) % 400) as usize + 1;
    (0..len).map(|j| (index as usize).wrapping_mul(31).wrapping_add(j * 13) as u8 ^ 0x5C).collect()
}

/// The child: appends until killed. Does nothing in a normal test run.
#[test]
#[ignore = "child process of kill_during_appends_loses_no_acknowledged_record"]
fn child_writer() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let seg: u64 = std::env::var(SEG_ENV).expect("segment size").parse().expect("segment size");
    let ckpt_ms: u64 = std::env::var(CKPT_MS_ENV).expect("checkpoint interval").parse().expect("checkpoint interval");
    let mut cfg = config(Path::new(&dir), seg, SLOTS_PER_INDEX_FILE);
    cfg.checkpoint_interval = Duration::from_millis(ckpt_ms);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let log = match CommitLog::open(cfg) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("child: open failed: {e}");
                std::process::exit(2);
            }
        };
        let last = log.reader().state().last.map_or(0, |l| l.index);
        let acked: u64 = std::env::var(ACKED_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        if last < acked {
            eprintln!("child: recovered log ends at {last}, but {acked} was acknowledged");
            std::process::exit(2);
        }
        let next = Arc::new(Mutex::new(last + 1));
        for _ in 0..WRITERS {
            let log = log.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let (index, written, durable) = {
                        let mut n = next.lock().unwrap();
                        let index = *n;
                        *n += 1;
                        let mut batch = RecordBatch::new();
                        batch.push(crash_meta(index), &crash_body(index));
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let written = log.submit_append(
                            batch,
                            Box::new(move |r| {
                                let _ = tx.send(r);
                            }),
                        );
                        (index, written, rx)
                    };
                    let outcome = match written.await {
                        Ok(Ok(_)) => durable.await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = outcome {
                        eprintln!("child: append {index} failed: {e}");
                        std::process::exit(2);
                    }
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "ack {index}").and_then(|_| out.flush()).is_err() {
                        std::process::exit(0);
                    }
                }
            });
        }
        // The parent kills us long before this; don't outlive a parent that died.
        tokio::time::sleep(Duration::from_secs(30)).await;
        std::process::exit(1);
    });
}

/// Reopens the log in `dir` and checks records `1..=last` are all present and intact, `last >= acked`.
/// Returns the last index, the write position, and whether recovery after the kill used a checkpoint.
fn verify(dir: &Path, seg: u64, acked: u64, ctx: &str) -> (u64, u64, bool) {
    let (first, report) = verify_once(dir, seg, acked, ctx);
    if let Some(c) = report.checkpoint {
        assert!(c.index <= first.0 && c == crash_meta(c.index).point(), "{ctx}: checkpoint {c:?} is not a record of the log");
    }
    // Recovery is idempotent: a second open (nothing appended in between) finds the same log, and after the
    // clean close of the first one it trusts a checkpoint naming the last record and re-reads nothing.
    let (again, second) = verify_once(dir, seg, acked, &format!("{ctx}, second reopen"));
    assert_eq!(first, again, "{ctx}: a second reopen changed the log");
    if first.0 > 0 {
        assert_eq!((second.checkpoint, second.records_scanned), (Some(crash_meta(first.0).point()), 0), "{ctx}: {second:?}");
    }
    (first.0, first.1, report.checkpoint.is_some())
}

fn verify_once(dir: &Path, seg: u64, acked: u64, ctx: &str) -> ((u64, u64), RecoveryReport) {
    let log = match CommitLog::open(config(dir, seg, SLOTS_PER_INDEX_FILE)) {
        Ok(l) => l,
        Err(e) => panic!("{ctx}: reopen after the kill failed: {e}"),
    };
    let reader = log.reader();
    let report = reader.recovery().clone();
    let st = reader.state();
    let last = st.last.map_or(0, |l| l.index);
    assert!(last >= acked, "{ctx}: record {acked} was acknowledged but the log ends at {last}");
    if last > 0 {
        assert_eq!(st.first, Some(1), "{ctx}: first index");
        assert_eq!(st.last, Some(crash_meta(last).point()), "{ctx}: last record");
    }
    let mut expected_pos: Option<u64> = None;
    for i in 1..=last {
        let r = match reader.read(i) {
            Ok(Some(r)) => r,
            Ok(None) => panic!("{ctx}: record {i} missing (last {last}, acked {acked})"),
            Err(e) => panic!("{ctx}: record {i}: {e}"),
        };
        assert_eq!(r.meta, crash_meta(i), "{ctx}: meta of record {i}");
        assert!(r.body[..] == crash_body(i)[..], "{ctx}: body of record {i} damaged");
        // Contiguous positions: right behind the previous record unless it rolled to the next segment.
        if let Some(p) = expected_pos {
            assert!(r.pos == p || (r.pos % seg == 0 && r.pos > p && r.pos - p < seg), "{ctx}: record {i} at {} after {p}", r.pos);
        }
        expected_pos = Some(r.pos + r.len as u64);
    }
    assert!(reader.read(last + 1).unwrap().is_none(), "{ctx}: record after the last");
    log.close();
    ((last, st.write_pos), report)
}

/// Runs one child writer on `dir` until it is SIGKILLed: early (0-40 ms after spawn) when `early_kill`,
/// else a random 0-120 ms after its first acknowledgement. Returns the indexes it acknowledged.
fn run_child_until_killed(dir: &Path, seg: u64, acked: u64, round: usize, early_kill: bool, stderr_path: &Path) -> Vec<u64> {
    let exe = std::env::current_exe().expect("test binary path");
    let mut rng = rand::thread_rng();
    let mut child = Command::new(&exe)
        .args(["child_writer", "--exact", "--nocapture", "--ignored", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(SEG_ENV, seg.to_string())
        .env(ACKED_ENV, acked.to_string())
        .env(CKPT_MS_ENV, if round.is_multiple_of(2) { "1" } else { "1000" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(File::create(stderr_path).unwrap()))
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.strip_prefix("ack ") {
                let _ = tx.send(i.trim().parse().expect("ack line"));
            }
        }
    });
    let child_err = || std::fs::read_to_string(stderr_path).unwrap_or_default();
    let mut acks = Vec::new();
    if early_kill {
        // Dies early: during start-up, recovery of the previous crash, or the first appends.
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..40_000)));
    } else {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(i) => acks.push(i),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("round {round}: child acknowledged nothing; stderr:\n{}", child_err());
            }
        }
        // Let it run a random while after the first acknowledgement.
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..120_000)));
    }
    child.kill().expect("SIGKILL child");
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "round {round}: child did not die by SIGKILL ({status}); stderr:\n{}", child_err());
    acks.extend(rx.try_iter());
    assert!(acks.iter().all(|&a| a > acked), "round {round}: acknowledged an index that an earlier round already wrote");
    acks
}

#[test]
fn kill_during_appends_loses_no_acknowledged_record() {
    let root = tempfile::tempdir().unwrap();
    // 1 KiB segments roll every few records, 4 KiB every ten or so, 64 KiB rarely.
    let segs = [1024u64, 4096, 64 * 1024];
    let mut acked_max: HashMap<u64, u64> = HashMap::new();
    let started = Instant::now();
    let rounds = 24;
    let mut total_acks = 0usize;
    let mut early_kills = 0usize;
    let mut rounds_from_checkpoint = 0usize;
    for round in 0..rounds {
        let seg = segs[round % segs.len()];
        let dir = root.path().join(format!("seg-{seg}"));
        let stderr_path = root.path().join(format!("child-{round}.stderr"));
        let early_kill = round % 4 == 3;
        let prev = acked_max.get(&seg).copied().unwrap_or(0);
        let acks = run_child_until_killed(&dir, seg, prev, round, early_kill, &stderr_path);
        total_acks += acks.len();
        let max = acks.iter().copied().max().unwrap_or(prev);
        early_kills += usize::from(early_kill);
        let ctx = format!("round {round} (segment {seg} B, {} acks this round, max ack {max})", acks.len());
        let (last, _, used_checkpoint) = verify(&dir, seg, max.max(prev), &ctx);
        rounds_from_checkpoint += usize::from(used_checkpoint);
        acked_max.insert(seg, max.max(prev));
        // Unacknowledged records may or may not have survived; whatever survived is intact (checked above).
        assert!(last >= max);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{rounds} crash rounds ({early_kills} killed early, {rounds_from_checkpoint} recovered from a checkpoint), \
         {total_acks} acknowledged appends, {elapsed:?}"
    );
    assert!(rounds_from_checkpoint >= rounds / 2, "only {rounds_from_checkpoint} of {rounds} recoveries after a kill used a checkpoint");
    assert!(total_acks >= rounds - early_kills, "every round that waited for it acknowledged at least one record");
}

/// The power-cut variant: the log lives on a `raftmq_powerfail` mount, and after the SIGKILL the power is
/// cut, so every write the child did not make durable (file pages before their fdatasync, directory
/// entries before their directory's fsync) is lost, unlike after a plain kill, where the page cache keeps
/// it. A fresh mount over the same backing directory then must open the log with every acknowledged record
/// intact. Each round's verification (which recovers the log, possibly cutting a torn tail and writing a
/// checkpoint) runs on the new mount and ends with a clean unmount. Skips, saying why, where FUSE is
/// unavailable.
#[test]
fn power_cut_after_kill_loses_no_acknowledged_record() {
    if let Err(why) = raftmq_powerfail::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (backing, mnt) = (root.path().join("backing"), root.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let segs = [1024u64, 4096, 64 * 1024];
    let mut acked_max: HashMap<u64, u64> = HashMap::new();
    let started = Instant::now();
    let rounds = 24;
    let (mut total_acks, mut early_kills, mut rounds_from_checkpoint) = (0usize, 0usize, 0usize);
    let (mut files_rolled_back, mut bytes_restored, mut dir_ops_undone) = (0usize, 0u64, 0usize);
    for round in 0..rounds {
        let seg = segs[round % segs.len()];
        let layer = PowerFailFs::mount(&backing, &mnt).unwrap_or_else(|e| panic!("round {round}: mount: {e}"));
        let dir = mnt.join(format!("seg-{seg}"));
        let stderr_path = root.path().join(format!("child-{round}.stderr"));
        let early_kill = round % 4 == 3;
        let prev = acked_max.get(&seg).copied().unwrap_or(0);
        let acks = run_child_until_killed(&dir, seg, prev, round, early_kill, &stderr_path);
        let report = layer.cut_power().unwrap_or_else(|e| panic!("round {round}: cut: {e}"));
        assert!(report.failed.is_empty(), "round {round}: the cut could not take everything back: {report:?}");
        files_rolled_back += report.files_rolled_back;
        bytes_restored += report.bytes_restored;
        dir_ops_undone += report.dir_ops_undone;
        total_acks += acks.len();
        early_kills += usize::from(early_kill);
        let max = acks.iter().copied().max().unwrap_or(prev);
        let ctx = format!("round {round} after a power cut (segment {seg} B, {} acks this round, max ack {max}, {report:?})", acks.len());
        let layer = PowerFailFs::mount(&backing, &mnt).unwrap_or_else(|e| panic!("round {round}: remount: {e}"));
        let (last, _, used_checkpoint) = verify(&dir, seg, max.max(prev), &ctx);
        layer.unmount().unwrap_or_else(|e| panic!("round {round}: unmount: {e}"));
        rounds_from_checkpoint += usize::from(used_checkpoint);
        acked_max.insert(seg, max.max(prev));
        assert!(last >= max);
    }
    eprintln!(
        "{rounds} power-cut rounds ({early_kills} killed early, {rounds_from_checkpoint} recovered from a checkpoint), \
         {total_acks} acknowledged appends; the cuts rolled back {files_rolled_back} files ({bytes_restored} bytes) \
         and {dir_ops_undone} directory operations; {:?}",
        started.elapsed()
    );
    assert!(total_acks >= rounds - early_kills, "every round that waited for it acknowledged at least one record");
    assert!(files_rolled_back > 0, "no cut took anything back: the layer was not in the write path");
}

/// Deterministic case of the power-cut test: a log opened where its directory and two ancestors do not
/// exist yet, one durable append, a clean close, then a power cut. The record must survive, so opening
/// must have made every directory it created durable (the segment's own directory fsync does not cover the
/// directories above it).
#[test]
fn power_cut_after_the_first_durable_append_keeps_the_new_log() {
    if let Err(why) = raftmq_powerfail::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (backing, mnt) = (root.path().join("backing"), root.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let dir = mnt.join("a/b/log");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let layer = PowerFailFs::mount(&backing, &mnt).unwrap();
    let log = CommitLog::open(config(&dir, 4096, SLOTS_PER_INDEX_FILE)).unwrap();
    let mut batch = RecordBatch::new();
    batch.push(crash_meta(1), &crash_body(1));
    rt.block_on(log.append_durable(batch)).unwrap();
    log.close();
    let report = layer.cut_power().unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    let layer = PowerFailFs::mount(&backing, &mnt).unwrap();
    let (last, _, _) = verify(&dir, 4096, 1, &format!("after the cut ({report:?})"));
    assert_eq!(last, 1);
    layer.unmount().unwrap();
}

/// A metadata file saved without durability (`committed`) may come back old or missing after a power
/// failure, but never torn: a later durable save in the same directory (the vote) fsyncs the directory,
/// which makes the rename durable, so the renamed file's contents must already be on disk by then, or
/// the node finds a file that fails its CRC and cannot start.
#[test]
fn power_cut_never_leaves_a_torn_advisory_meta_file() {
    if let Err(why) = raftmq_powerfail::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (backing, mnt) = (root.path().join("backing"), root.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let dir = mnt.join("log");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let layer = PowerFailFs::mount(&backing, &mnt).unwrap();
    let log = CommitLog::open(config(&dir, 4096, SLOTS_PER_INDEX_FILE)).unwrap();
    rt.block_on(async {
        log.save_meta("committed", b"commit 1".to_vec(), false).await.unwrap();
        log.save_meta("vote", b"vote 1".to_vec(), true).await.unwrap();
        log.save_meta("committed", b"commit 2".to_vec(), false).await.unwrap();
    });
    log.close();
    let report = layer.cut_power().unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    let layer = PowerFailFs::mount(&backing, &mnt).unwrap();
    let log = CommitLog::open(config(&dir, 4096, SLOTS_PER_INDEX_FILE)).unwrap();
    assert_eq!(log.read_meta("vote").unwrap().as_deref(), Some(&b"vote 1"[..]));
    match log.read_meta("committed") {
        Ok(Some(v)) => assert!(v == b"commit 1" || v == b"commit 2", "{v:?}"),
        other => panic!("committed after the cut ({report:?}): {other:?}"),
    }
    log.close();
    layer.unmount().unwrap();
}

/// The in-process form, as a test whose writer cannot be killed uses it: the power is cut under an open
/// log with appends acknowledged before the cut. The next sync fails, so nothing is acknowledged after the
/// cut; after closing the log and remounting, every record acknowledged before the cut is there.
#[test]
fn power_cut_under_an_open_log_keeps_what_was_acknowledged_and_acknowledges_nothing_after() {
    if let Err(why) = raftmq_powerfail::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (backing, mnt) = (root.path().join("backing"), root.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let dir = mnt.join("log");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let layer = PowerFailFs::mount(&backing, &mnt).unwrap();
    let log = CommitLog::open(config(&dir, 1024, SLOTS_PER_INDEX_FILE)).unwrap();
    let batch = |i: u64| {
        let mut b = RecordBatch::new();
        b.push(crash_meta(i), &crash_body(i));
        b
    };
    for i in 1..=20 {
        rt.block_on(log.append_durable(batch(i))).unwrap();
    }
    let report = layer.cut();
    assert!(report.failed.is_empty(), "{report:?}");
    match rt.block_on(log.append_durable(batch(21))) {
        Ok(locs) => panic!("append 21 acknowledged after the power cut: {locs:?}"),
        Err(e) => eprintln!("append after the cut failed as it must: {e}"),
    }
    log.close();
    layer.unmount().unwrap();
    let layer = PowerFailFs::mount(&backing, &mnt).unwrap();
    let (last, _, _) = verify(&dir, 1024, 20, &format!("after the cut ({report:?})"));
    assert!(last <= 21, "{last}");
    layer.unmount().unwrap();
}
