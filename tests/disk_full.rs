//! A real `raftmq broker` process whose store fills up: its store lives on a small tmpfs the test mounts
//! (root only; otherwise the test prints why and passes).
//!
//! 1. Filling the commitlog until a segment roll cannot allocate: the process exits by itself with
//!    `EXIT_STORE_FAILED` (not a signal, not hanging on in Shutdown role) after logging the file and errno.
//! 2. After the filesystem is grown and the broker restarted, every acknowledged message is served at its
//!    acknowledged offset.
//! 3. With the disk full again, the first message to a new queue needs a new consume-queue file: apply
//!    fails with ENOSPC and the process exits with the same status. (The old code mapped the file sparse
//!    and acknowledged the message; a later write to a page the disk could not back raised SIGBUS, at
//!    every replay too — `crates/raft/tests/disk_full.rs` shows that signal.) After freeing space the
//!    restarted broker serves that message. Restarted before space is freed, it waits for space (saying
//!    so) instead of failing again while re-applying that entry, and starts once space is freed.
//!
//! (Those run with `diskMaxUsedSpaceRatio` 0.99, so the ENOSPC paths are reached.) And the guard before
//! them: three nodes on one tmpfs with `diskMaxUsedSpaceRatio` 0.5 — above it the leader refuses sends with
//! 14 "disk full" and the figures while reads and offset commits work; below 0.45 sends resume. And a
//! follower whose own disk fills: it exits 74, the other two keep acknowledging, restarted while full it
//! waits, and given room it catches up with every acknowledged message.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use raftmq_remoting::ResponseCode;

const TOPIC: &str = "TopicFull";

struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        match Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).output() {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(self.path()).status().expect("remount");
        assert!(st.success(), "remount {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem of `path` completely, then gives back `leave` bytes.
fn fill_leaving(path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    f.set_len(n.saturating_sub(leave)).expect("shrink filler");
}

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("full-{i:06}-").into_bytes();
    b.resize(64 * 1024, b'z');
    b
}

/// The broker exited with `EXIT_STORE_FAILED` and its last error line names `op`, a file under `store`
/// and ENOSPC.
fn assert_store_failure_exit(st: Option<std::process::ExitStatus>, cluster: &Cluster, store: &Path, op: &str, what: &str) {
    let st = st.unwrap_or_else(|| panic!("{what}: the broker did not exit by itself\n{}", cluster.log_tails(30)));
    assert_eq!(st.signal(), None, "{what}: killed by a signal ({st:?}), not a clean exit\n{}", cluster.log_tails(30));
    assert_eq!(st.code(), Some(raftmq_broker::EXIT_STORE_FAILED), "{what}: exit status\n{}", cluster.log_tails(30));
    let log = std::fs::read_to_string(cluster.dir.path().join("n1.log")).expect("broker log");
    let line = log.lines().rev().find(|l| l.contains("store failed, exiting")).unwrap_or_else(|| panic!("{what}: no exit line\n{log}"));
    assert!(line.contains("errno=28") && line.contains("No space left on device"), "{what}: names the errno: {line}");
    assert!(line.contains(&format!("path={}", store.display())), "{what}: names the file: {line}");
    assert!(line.contains(op), "{what}: names the operation {op}: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_disk_fills_exits_with_the_store_failure_status_and_loses_nothing_acknowledged() {
    // 32 MiB dense index + 8 MiB segments + 6 MiB consume-queue files: the fourth segment does not fit.
    let Some(fs) = Tmpfs::mount("64m") else { return };
    let mut cluster = Cluster::start_with_stores(1, Some(fs.path())).await;
    let addr = cluster.node(1).client_addr.clone();
    let c = client(&addr).await.expect("broker reachable");

    // 1. Fill the commitlog: sends succeed until a segment roll cannot allocate.
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        match send(&c, TOPIC, 0, &body(i)).await {
            Ok(off) => acked.push((off, i)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let (code, remark) = refused.expect("the disk filled up");
    println!("acked {} messages of 64 KiB; refused with {code}: {remark}", acked.len());
    assert!(acked.len() > 100, "the store took messages before it filled");
    assert!(code == ResponseCode::SYSTEM_ERROR.0 || code == ResponseCode::SERVICE_NOT_AVAILABLE.0 || code < 0, "{code}: {remark}");
    assert_store_failure_exit(cluster.wait_exit(1, Duration::from_secs(20)), &cluster, fs.path(), "commitlog fallocate", "segment roll");

    // 2. Room again: everything acknowledged is there, at its offset.
    fs.resize("80m");
    cluster.start_node(1);
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&addr).await.expect("broker reachable after restart");
    let got = pull_all(&c, TOPIC, 0).await;
    for (off, i) in &acked {
        let m = got.iter().find(|(o, _)| o == off).unwrap_or_else(|| panic!("acknowledged message {i} at offset {off} is lost"));
        assert!(m.1 == body(*i), "message {i} at offset {off}");
    }

    // 3. Full again, with room for small files only: a new queue's consume-queue file cannot be allocated.
    fill_leaving(&fs.path().join("filler"), 1 << 20);
    let r = send(&c, TOPIC, 1, b"needs a new consume-queue file").await;
    println!("send to a new queue on a full disk: {r:?}");
    assert!(r.is_err(), "not acknowledged: {r:?}");
    assert_store_failure_exit(
        cluster.wait_exit(1, Duration::from_secs(20)),
        &cluster,
        fs.path(),
        "fallocate consume queue",
        "consume-queue file",
    );

    // Restarted (as a supervisor would) on the still-full disk, it waits for space instead of failing again
    // while re-applying the committed entry: no crash loop.
    cluster.start_node(1);
    assert_eq!(cluster.wait_exit(1, Duration::from_secs(4)), None, "waits, does not exit\n{}", cluster.log_tails(10));
    let log = std::fs::read_to_string(cluster.dir.path().join("n1.log")).expect("broker log");
    assert!(log.lines().last().is_some_and(|l| l.contains("waiting for disk space")), "says why it waits:\n{}", cluster.log_tails(5));

    // Space freed: the waiting node starts and applies the committed message.
    std::fs::remove_file(fs.path().join("filler")).expect("free space");
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&addr).await.expect("broker reachable after the second restart");
    assert_eq!(pull_all(&c, TOPIC, 1).await, vec![(0, b"needs a new consume-queue file".to_vec())]);
    assert_eq!(pull_all(&c, TOPIC, 0).await.len(), got.len(), "queue 0 intact");
}

/// Writes a file of `bytes` bytes (zeros; tmpfs allocates the pages).
fn filler(path: &Path, bytes: u64) {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).expect("write filler");
        left -= n as u64;
    }
}

/// Used fraction of the filesystem holding `path`.
fn used_ratio(path: &Path) -> f64 {
    raftmq_commitlog::disk_usage(path).expect("statvfs").used_ratio()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_disk_ratio_the_leader_refuses_sends_with_14_and_keeps_serving_reads_and_commits() {
    // Three nodes on one 400 MiB tmpfs; sends are refused above half of it.
    let Some(fs) = Tmpfs::mount("400m") else { return };
    let cluster = Cluster::start_with(3, Some(fs.path()), "diskMaxUsedSpaceRatio = 0.5\n").await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let c = client(&cluster.node(leader).client_addr).await.expect("leader reachable");
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push((send(&c, TOPIC, 0, &body(i)).await.expect("send before the disk fills"), i));
    }

    // Push the filesystem to 60 % used.
    let total = raftmq_commitlog::disk_usage(fs.path()).expect("statvfs").total;
    let need = ((0.60 - used_ratio(fs.path())) * total as f64).max(0.0) as u64;
    filler(&fs.path().join("filler"), need);
    println!("filesystem {:.3} used", used_ratio(fs.path()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (code, remark) = loop {
        match send(&c, TOPIC, 0, &body(100)).await {
            Ok(off) => {
                acked.push((off, 100));
                assert!(std::time::Instant::now() < deadline, "sends still accepted 10 s after the disk passed the ratio");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => break e,
        }
    };
    println!("refused: {code} {remark}");
    assert_eq!(code, ResponseCode::SERVICE_NOT_AVAILABLE.0, "{remark}");
    assert!(remark.contains("disk is full") && remark.contains("diskMaxUsedSpaceRatio 0.50"), "{remark}");
    // Reads and offset commits keep working.
    let got = pull_all(&c, TOPIC, 0).await;
    for (off, i) in &acked {
        assert!(got.iter().any(|(o, b)| o == off && *b == body(*i)), "acked message {i} at {off} readable on a full disk");
    }
    assert_eq!(commit_offset(&c, "g", TOPIC, 0, 3).await, ResponseCode::SUCCESS.0, "offset commit on a full disk");
    assert_eq!(query_offset(&c, "g", TOPIC, 0).await, Some(3));
    let status = node_status(&cluster.node(leader).client_addr).await.expect("status");
    assert_eq!(status["retention"]["diskFull"], serde_json::json!(true), "{}", status["retention"]);

    // Space back (below 0.45): sends resume.
    std::fs::remove_file(fs.path().join("filler")).expect("free space");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match send(&c, TOPIC, 0, &body(200)).await {
            Ok(_) => break,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "sends still refused 10 s after space was freed: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_stops_acknowledging_loses_nothing_and_rejoins_when_space_returns() {
    // Node 3's store on its own 56 MiB tmpfs (32 MiB dense index + 8 MiB segments + 6 MiB consume-queue
    // file: its third segment does not fit); nodes 1 and 2 on the ordinary disk.
    let Some(fs) = Tmpfs::mount("56m") else { return };
    let mut cluster = Cluster::prepare(3, "");
    let cfg = cluster.dir.path().join("n3.toml");
    let text = std::fs::read_to_string(&cfg).expect("n3 config");
    let old = format!("storePathRootDir = \"{}\"", cluster.store_dir(3).display());
    assert!(text.contains(&old), "{text}");
    std::fs::write(&cfg, text.replace(&old, &format!("storePathRootDir = \"{}\"", fs.path().join("n3").display()))).expect("write");
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let mut leader = cluster.leader(Duration::from_secs(20)).await;
    if leader == 3 {
        let st = Command::new(env!("CARGO_BIN_EXE_raftmq"))
            .args(["admin", "--namesrv", &cluster.namesrv, "transfer-leader", "--to", "1"])
            .status()
            .expect("transfer");
        assert!(st.success(), "leadership moved off the node whose disk will fill");
        leader = cluster.leader(Duration::from_secs(20)).await;
    }
    let c = client(&cluster.node(leader).client_addr).await.expect("leader reachable");

    // 400 × 64 KiB: far more than node 3 can hold. Every send is acknowledged by the other two.
    let mut acked = Vec::new();
    for i in 0..400 {
        let off = send(&c, TOPIC, 0, &body(i)).await.unwrap_or_else(|e| panic!("send {i} with one follower's disk full: {e:?}"));
        acked.push((off, i));
    }
    let st = cluster.wait_exit(3, Duration::from_secs(30));
    let st = st.unwrap_or_else(|| panic!("node 3 did not stop on ENOSPC\n{}", cluster.log_tails(20)));
    assert_eq!(st.code(), Some(raftmq_broker::EXIT_STORE_FAILED), "node 3 exit status\n{}", cluster.log_tails(20));

    // Restarted while still full, it waits; given room, it catches up and holds every acknowledged message.
    cluster.start_node(3);
    assert_eq!(cluster.wait_exit(3, Duration::from_secs(3)), None, "waits for space\n{}", cluster.log_tails(10));
    fs.resize("256m");
    let n3 = cluster.node(3).client_addr.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let want = max_offset(&c, TOPIC, 0).await;
    loop {
        if let Some(c3) = client(&n3).await {
            if max_offset(&c3, TOPIC, 0).await == want {
                let got = pull_all(&c3, TOPIC, 0).await;
                for (off, i) in &acked {
                    assert!(got.iter().any(|(o, b)| o == off && *b == body(*i)), "node 3 has acked message {i} at {off}");
                }
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "node 3 did not catch up\n{}", cluster.log_tails(20));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
