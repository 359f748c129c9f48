//! A broker whose store fails stops registering with its nameservers at once (before this it kept
//! registering from the Shutdown role, so routes kept pointing clients at a node that can serve nothing).
//! The store lives on a small tmpfs the test mounts (root only; otherwise it prints why and passes); a
//! stub nameserver counts REGISTER_BROKER requests.

use std::io::Write;
use std::path::Path;
use std::process::Command as Shell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_broker::config::BrokerConfig;
use raftmq_broker::Broker;
use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingServer, RequestHandler, ServerOptions};
use raftmq_raft::node::{Role, WriteError};
use raftmq_raft::types::{Command, Message, QueueAppend, TopicConfig};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::RegisterBrokerRequestHeader;
use raftmq_remoting::RequestCode;

struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        match Shell::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).output() {
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
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Shell::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem of `path`, then gives back `leave` bytes.
fn fill_leaving(path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    while let Ok(k) = f.write(&chunk) {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    f.set_len(n.saturating_sub(leave)).expect("shrink filler");
}

/// A nameserver that records the brokerId of every REGISTER_BROKER and answers SUCCESS.
#[derive(Default)]
struct StubNamesrv {
    registrations: Mutex<Vec<(Instant, i64)>>,
}

struct Handler(Arc<StubNamesrv>);

impl RequestHandler for Handler {
    fn handle(&self, _conn: Conn, req: RemotingCommand) -> HandlerFuture {
        let ns = Arc::clone(&self.0);
        Box::pin(async move {
            if req.request_code() == RequestCode::REGISTER_BROKER {
                if let Ok(h) = req.decode_header::<RegisterBrokerRequestHeader>() {
                    ns.registrations.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), h.broker_id));
                }
            }
            Some(RemotingCommand::success_to(&req).into())
        })
    }
}

#[path = "support/ports.rs"]
mod ports;
use ports::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_store_failed_stops_registering() {
    // Default 32 MiB dense index + one 8 MiB segment + small files.
    let Some(fs) = Tmpfs::mount("64m") else { return };
    let ns = Arc::new(StubNamesrv::default());
    let server = RemotingServer::bind("127.0.0.1:0", Arc::new(Handler(Arc::clone(&ns))), ServerOptions::default()).await.expect("stub");
    let toml = format!(
        "brokerName = \"broker-a\"\nnodeId = 1\nnamesrvAddr = \"{}\"\nstorePathRootDir = \"{}\"\nmappedFileSizeCommitLog = 8388608\ndiskMaxUsedSpaceRatio = 0.99\nbootstrap = true\nautoCreateTopicEnable = false\n[[peers]]\nid = 1\nraftAddr = \"127.0.0.1:{}\"\nclientAddr = \"127.0.0.1:{}\"\n",
        server.local_addr(),
        fs.path().join("n1").display(),
        free_port(),
        free_port()
    );
    let broker = Broker::start(BrokerConfig::from_toml(&toml).expect("config")).await.expect("start broker");
    let node = Arc::clone(broker.node());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ns.registrations.lock().unwrap().iter().any(|(_, id)| *id == 0) {
        assert!(Instant::now() < deadline, "never registered as master");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.write(Command::UpsertTopic(TopicConfig { name: "T".into(), read_queues: 2, write_queues: 2, perm: 6 }))
        .await
        .expect("create topic");
    // Let registrations triggered by start-up and the topic finish.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The first message to a queue needs a 6 MB consume-queue file; leave 1 MiB.
    fill_leaving(&fs.path().join("filler"), 1 << 20);
    let q = QueueAppend {
        topic: "T".into(),
        queue_id: 1,
        messages: vec![Message { tags_code: 0, data: Bytes::from_static(b"m"), phys_offset: None }],
    };
    let r = node.produce(vec![q.clone()]).await;
    assert!(matches!(r, Err(WriteError::Unknown { .. })), "applied entry failed: {r:?}");
    let failure = tokio::time::timeout(Duration::from_secs(10), broker.failed()).await.expect("failure reported");
    assert!(failure.is_disk_full(), "{failure:?}");
    let at_failure = ns.registrations.lock().unwrap().len();
    // The core stops (role Shutdown); before the fix that role change triggered one more registration.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.role().borrow().role != Role::Shutdown {
        assert!(Instant::now() < deadline, "the Raft core stops");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let regs: Vec<i64> = ns.registrations.lock().unwrap().iter().map(|(_, id)| *id).collect();
    // Once master, this single node only ever registers as brokerId 0 while it runs; the one registration
    // the Shutdown role used to trigger advertised it as a slave (brokerId 1) of a group with no master.
    let first_master = regs.iter().position(|id| *id == 0).expect("registered as master");
    assert!(regs[first_master..].iter().all(|id| *id == 0), "registered after the store failed: {regs:?}");
    assert_eq!(regs.len(), at_failure, "registrations after the store failed: {regs:?}");
    match node.produce(vec![q]).await {
        Err(WriteError::Stopped { failure: Some(f) }) => assert!(f.is_disk_full()),
        other => panic!("not stored, with the cause: {other:?}"),
    }
    broker.shutdown().await;
    server.shutdown();
}
