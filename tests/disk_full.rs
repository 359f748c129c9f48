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
//!    restarted broker serves that message. Restarted before space is freed, it exits the same way again
//!    while re-applying that entry.

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

    // Restarted on the still-full disk, re-applying the committed entry fails the same way: a clean exit
    // again, not a crash loop of SIGBUS.
    cluster.start_node(1);
    assert_store_failure_exit(cluster.wait_exit(1, Duration::from_secs(30)), &cluster, fs.path(), "fallocate consume queue", "replay");

    // Space freed: the committed message is applied on restart.
    std::fs::remove_file(fs.path().join("filler")).expect("free space");
    cluster.start_node(1);
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&addr).await.expect("broker reachable after the second restart");
    assert_eq!(pull_all(&c, TOPIC, 1).await, vec![(0, b"needs a new consume-queue file".to_vec())]);
    assert_eq!(pull_all(&c, TOPIC, 0).await.len(), got.len(), "queue 0 intact");
}
