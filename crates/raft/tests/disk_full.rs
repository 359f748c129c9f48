//! A full disk, on a small tmpfs or loop-mounted ext4 image each test mounts (root only; without it the
//! tests print why and pass):
//!
//! - a consume-queue file created on a full disk fails with `ENOSPC` instead of being mapped sparse and
//!   raising SIGBUS on the first unit written through the mapping;
//! - a single-node group that fills its disk with produce requests reports the failure (kind, errno,
//!   file) through `RaftNode::failed`, refuses further writes as "not stored", and after the filesystem
//!   is grown and the node restarted, every acknowledged message is read back at its acknowledged offset;
//! - a checkpoint that cannot be written (no tmpfs needed: its temporary file's name is taken by a
//!   directory) stops the node with the cause, instead of only being logged while the node goes on.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Shell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_raft::consume_queue::{ConsumeQueue, CqUnit};
use raftmq_raft::node::{NodeConfig, RaftNode, Role, WriteError};
use raftmq_raft::types::{Command, Message, QueueAppend, QueueAppendResult, TopicConfig};

const TOPIC: &str = "TopicTest";

/// A small filesystem mounted on a fresh temporary directory (a tmpfs, or an ext4 image on a loop
/// device); unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
    /// The ext4 image's directory (outside the mount).
    image: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a fresh ext4 image of `mib` MiB (no reserved blocks) through a loop device, or prints why
    /// it cannot and returns `None`.
    fn ext4(mib: u64) -> Option<Tmpfs> {
        let image = tempfile::tempdir().expect("tempdir");
        let img = image.path().join("fs.img");
        std::fs::File::create(&img).and_then(|f| f.set_len(mib << 20)).expect("image file");
        match Shell::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&img).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!("SKIPPED: mkfs.ext4 failed: {}", String::from_utf8_lossy(&o.stderr).trim());
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED: no mkfs.ext4: {e}");
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        match Shell::new("mount").args(["-o", "loop"]).arg(&img).arg(dir.path()).output() {
            Ok(o) if o.status.success() => Some(Tmpfs { dir, image: Some(image) }),
            Ok(o) => {
                eprintln!("SKIPPED: cannot loop-mount an ext4 image (needs root): {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    /// Mounts a tmpfs of `size` (`mount -o size=`), or prints why it cannot and returns `None`.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Shell::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir, image: None }),
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
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily only if busy (threads of a stopped node may still hold mappings): a loop device is
        // detached once its filesystem is really unmounted.
        let quiet = || std::process::Stdio::null();
        if !Shell::new("umount").arg(self.dir.path()).stderr(quiet()).status().is_ok_and(|s| s.success()) {
            let _ = Shell::new("umount").arg("-l").arg(self.dir.path()).status();
        }
        let _ = self.image.take();
    }
}

/// Writes zeros into `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 4096];
    let mut n = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filler stops at ENOSPC: {e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
    n
}

#[test]
fn consume_queue_file_on_a_full_disk_fails_with_enospc_not_sigbus() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let qdir = fs.path().join("consumequeue").join(TOPIC).join("0");
    let q = ConsumeQueue::open(qdir.clone(), 1024, 0, 0).expect("open queue");
    let filler = fs.path().join("filler");
    assert!(fill(&filler) > 0);
    // The old code made the 20 KiB file sparse and wrote through the mapping: SIGBUS killed the process.
    let unit = CqUnit { phys_offset: 4096, size: 100, tags_code: 7 };
    let Err(err) = q.write(0, &unit) else { panic!("a unit was written with no room for its file") };
    assert!(err.is_disk_full(), "{err:?}");
    assert_eq!(err.errno, Some(libc::ENOSPC), "{err}");
    assert!(err.path.starts_with(&qdir), "names the file: {err}");
    assert_eq!(std::fs::read_dir(&qdir).expect("read dir").count(), 0, "the unallocatable file is removed again");
    assert_eq!(q.get(0), None);

    // Space freed: the same write succeeds, flushes (msync + fsync of the new file and its directories)
    // and survives reopening.
    std::fs::remove_file(&filler).expect("free space");
    let f = q.write(0, &unit).expect("write after freeing space").expect("a newly dirty file");
    q.publish(1);
    f.flush().expect("flush");
    drop(q);
    let q = ConsumeQueue::open(qdir, 1024, 0, 1).expect("reopen");
    assert_eq!(q.get(0), Some(unit));
}

#[test]
fn an_existing_sparse_consume_queue_file_is_allocated_when_opened() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let qdir = fs.path().join("q");
    std::fs::create_dir_all(&qdir).expect("mkdir");
    // A file as the old code left it: full length, no blocks.
    let path = qdir.join(format!("{:020}", 0));
    std::fs::File::create(&path).and_then(|f| f.set_len(20 * 8192)).expect("sparse file");
    let filler = qdir.parent().expect("parent").join("filler");
    fill(&filler);
    let err = match ConsumeQueue::open(qdir.clone(), 8192, 0, 0) {
        Ok(_) => panic!("opened a sparse file on a full disk: the first write would fault"),
        Err(e) => e,
    };
    assert!(err.is_disk_full(), "{err:?}");
    assert!(path.exists(), "an existing file is never removed");
    std::fs::remove_file(&filler).expect("free space");
    let q = ConsumeQueue::open(qdir, 8192, 0, 0).expect("open with room");
    q.write(8191, &CqUnit { phys_offset: 1, size: 2, tags_code: 3 }).expect("write the last unit");
}

fn node_cfg(dir: &Path) -> NodeConfig {
    let mut c = NodeConfig::new(1, "127.0.0.1:0", dir.to_path_buf());
    c.segment_bytes = 512 * 1024;
    c.prefill_ahead_bytes = 0;
    c.index_slots_per_file = 4096;
    c.checkpoint_every = 16;
    c.cq_units_per_file = 1024;
    // Entries must fit the small segments (NodeConfig::validate); the messages here are 16 KiB.
    c.entry_bytes_max = 128 * 1024;
    c.batch_bytes_max = 128 * 1024;
    c
}

async fn wait_ready(node: &RaftNode) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = node.role().borrow().clone();
        if r.role == Role::Leader && r.ready {
            return;
        }
        assert!(Instant::now() < deadline, "node never became a ready leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(i: u64) -> Bytes {
    let mut b = format!("message-{i:08}-").into_bytes();
    b.resize(16 * 1024, b'x');
    Bytes::from(b)
}

async fn produce(node: &RaftNode, i: u64) -> Result<u64, WriteError> {
    let q = QueueAppend { topic: TOPIC.into(), queue_id: 0, messages: vec![Message { tags_code: 0, data: body(i), phys_offset: None }] };
    match node.produce(vec![q]).await?.pop() {
        Some(QueueAppendResult::Stored(p)) => Ok(p[0].queue_offset),
        other => panic!("unexpected result {other:?}"),
    }
}

fn read_back(node: &RaftNode, offset: u64) -> Option<Bytes> {
    let u = node.state().queue(TOPIC, 0)?.get(offset)?;
    node.commitlog().read_at(u.phys_offset, u.size as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fills_its_tmpfs_reports_enospc_and_loses_nothing_acknowledged() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    fill_disk_and_recover(&fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fills_its_ext4_reports_enospc_and_loses_nothing_acknowledged() {
    let Some(fs) = Tmpfs::ext4(16) else { return };
    fill_disk_and_recover(&fs).await;
}

/// Produces 16 KiB messages on a single-node group until its store fails; then frees a 1 MiB ballast
/// file, restarts, and reads every acknowledged message back.
async fn fill_disk_and_recover(fs: &Tmpfs) {
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 1 << 20]).expect("ballast");
    let dir: PathBuf = fs.path().join("n1");
    let node = Arc::new(RaftNode::start(node_cfg(&dir)).await.expect("start"));
    node.initialize(BTreeMap::from([(1, node.raft_addr().to_string())])).await.expect("initialize");
    wait_ready(&node).await;
    node.write(Command::UpsertTopic(TopicConfig { name: TOPIC.into(), read_queues: 1, write_queues: 1, perm: 6 }))
        .await
        .expect("create topic");

    // Produce until the store fails: 16 KiB messages, 512 KiB segments on a 3 MiB filesystem.
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut refused = None;
    for i in 0..1000u64 {
        match produce(&node, i).await {
            Ok(off) => acked.push((i, off)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the disk filled up within 1000 messages");
    let failure = tokio::time::timeout(Duration::from_secs(10), node.failed()).await.expect("the node reports its failure");
    println!("acked {} messages; write error: {refused}; failure: {failure}", acked.len());
    assert!(failure.is_disk_full(), "{failure:?}");
    assert_eq!(failure.errno, Some(libc::ENOSPC));
    assert!(failure.path.starts_with(&dir), "names a file of the store: {failure}");
    match &refused {
        WriteError::Unknown { failure: Some(f), .. } | WriteError::Stopped { failure: Some(f) } => assert!(f.is_disk_full(), "{f:?}"),
        other => panic!("the write error carries the storage failure: {other:?}"),
    }
    // Later writes are refused before they are proposed: certainly not stored.
    match produce(&node, 5000).await {
        Err(WriteError::Stopped { failure: Some(f) }) => assert!(f.is_disk_full()),
        other => panic!("expected Stopped, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.role().borrow().role != Role::Shutdown {
        assert!(Instant::now() < deadline, "the Raft core stops");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await;
    drop(node);

    // Space freed: the node recovers and serves every acknowledged message at its acknowledged offset.
    std::fs::remove_file(&ballast).expect("free space");
    let node = RaftNode::start(node_cfg(&dir)).await.expect("restart with room");
    wait_ready(&node).await;
    for (i, off) in &acked {
        let got = read_back(&node, *off).unwrap_or_else(|| panic!("acknowledged message {i} at offset {off} is lost"));
        assert!(got == body(*i), "message {i} at offset {off}");
    }
    let next = produce(&node, 9999).await.expect("writes resume");
    assert!(next >= acked.len() as u64);
    assert!(node.failure().is_none());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_written_stops_the_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("n1");
    let node = RaftNode::start(node_cfg(&dir)).await.expect("start");
    node.initialize(BTreeMap::from([(1, node.raft_addr().to_string())])).await.expect("initialize");
    wait_ready(&node).await;
    node.write(Command::UpsertTopic(TopicConfig { name: TOPIC.into(), read_queues: 1, write_queues: 1, perm: 6 }))
        .await
        .expect("create topic");
    // The checkpoint is written to `checkpoint.tmp` and renamed: a directory of that name makes it fail.
    std::fs::create_dir(dir.join("state").join("checkpoint.tmp")).expect("block the checkpoint");
    // checkpoint_every = 16: enough entries for at least one checkpoint.
    for i in 0..40u64 {
        if produce(&node, i).await.is_err() {
            break;
        }
    }
    let failure = tokio::time::timeout(Duration::from_secs(10), node.failed()).await.expect("the failed checkpoint stops the node");
    println!("failure: {failure}");
    assert_eq!(failure.op, "write checkpoint");
    assert_eq!(failure.path, dir.join("state").join("checkpoint"));
    assert_eq!(failure.kind, std::io::ErrorKind::IsADirectory, "{failure:?}");
    match produce(&node, 1000).await {
        Err(WriteError::Stopped { failure: Some(f) }) => assert_eq!(f, failure),
        other => panic!("writes are refused once the state machine failed: {other:?}"),
    }
    node.shutdown().await;
}
