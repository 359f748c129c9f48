//! Memory, descriptors and mappings of a real broker process holding 100 k queues (25 k topics × 4 queues,
//! one message each, by default): measured after the writes, after reading every queue once, and after a
//! restart. Not run in CI (`#[ignore]`, minutes of work); run it with
//!
//! ```text
//! cargo test -p raftmq-cli --test scale -- --ignored --nocapture
//! RAFTMQ_BIN=/path/to/other/raftmq RAFTMQ_SCALE_TOPICS=25000 cargo test -p raftmq-cli --test scale -- --ignored --nocapture
//! ```
//!
//! `RAFTMQ_BIN` measures another build (for example the one before a change). The figures are printed
//! (`SCALE …` lines) before the assertions, which check that mappings and descriptors stay bounded by
//! `mappedFilesMax` rather than growing with the number of queues.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_net::RemotingClient;
use raftmq_remoting::header::{CreateTopicRequestHeader, PullMessageRequestHeader, SendMessageRequestHeader};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};
use tokio::sync::Semaphore;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAPPED_FILES_MAX: usize = 4096;

#[path = "../crates/broker/tests/support/ports.rs"]
mod ports;
use ports::free_port;

fn bin() -> String {
    std::env::var("RAFTMQ_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_raftmq").to_string())
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    fds: usize,
    maps: usize,
}

fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> { status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok() };
    let (rss_kib, anon_kib, file_kib) = (kib("VmRSS:")?, kib("RssAnon:")?, kib("RssFile:")?);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?.lines().count();
    Some(Usage { rss_kib, anon_kib, file_kib, fds, maps })
}

fn spawn(config: &Path, log: &Path) -> Child {
    Command::new(bin())
        .args(["broker", "--config"])
        .arg(config)
        .arg("--log-file")
        .arg(log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn broker")
}

async fn wait_ready(addr: &str) -> RemotingClient {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(c) = RemotingClient::connect(addr, Duration::from_secs(1), None).await {
            // A write-only request answers SERVICE_NOT_AVAILABLE until the node is the ready leader.
            let h =
                CreateTopicRequestHeader { topic: "ready".into(), read_queue_nums: 1, write_queue_nums: 1, perm: 6, ..Default::default() };
            let r = c.invoke(RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 0).with_header(&h), TIMEOUT).await;
            if r.is_ok_and(|r| r.code == ResponseCode::SUCCESS.0) {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "broker at {addr} not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `f(i)` for i in 0..n with `concurrency` in flight; returns how many failed (first failure printed).
async fn run_all<F, Fut>(n: usize, concurrency: usize, f: F) -> usize
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let f = Arc::new(f);
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = Arc::clone(&sem).acquire_owned().await.expect("semaphore");
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let r = f(i).await;
            drop(permit);
            r
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if let Err(e) = t.await.expect("task") {
            if failed == 0 {
                eprintln!("SCALE first failure: {e}");
            }
            failed += 1;
        }
    }
    failed
}

fn report(stage: &str, pid: u32) -> Option<Usage> {
    let u = usage(pid);
    match u {
        Some(u) => eprintln!(
            "SCALE {stage}: VmRSS {} KiB (RssAnon {}, RssFile {}), fds {}, maps {}",
            u.rss_kib, u.anon_kib, u.file_kib, u.fds, u.maps
        ),
        None => eprintln!("SCALE {stage}: the broker process is gone"),
    }
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale measurement: minutes of work and about 1 GiB of sparse files; run by hand"]
async fn memory_descriptors_and_mappings_with_100k_queues() {
    let topics = env_usize("RAFTMQ_SCALE_TOPICS", 25_000);
    let queues = env_usize("RAFTMQ_SCALE_QUEUES", 4);
    let dir = tempfile::tempdir_in(std::env::var("RAFTMQ_SCALE_DIR").unwrap_or_else(|_| "/var/tmp".into())).expect("tempdir");
    let client_addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "brokerName = \"broker-a\"\nnodeId = 1\nstorePathRootDir = \"{}\"\nmappedFileSizeCommitLog = 67108864\ndiskMaxUsedSpaceRatio = 0.99\nbootstrap = true\n\
             [[peers]]\nid = 1\nraftAddr = \"127.0.0.1:{}\"\nclientAddr = \"{client_addr}\"\n",
            dir.path().join("data").display(),
            free_port()
        ),
    )
    .expect("config");
    let log = dir.path().join("broker.log");
    let mut child = spawn(&config, &log);
    let pid = child.id();
    let c = wait_ready(&client_addr).await;
    report("idle", pid);

    let started = Instant::now();
    let cc = c.clone();
    let failed_creates = run_all(topics, 64, move |i| {
        let c = cc.clone();
        async move {
            let h = CreateTopicRequestHeader {
                topic: format!("scale-{i:06}"),
                read_queue_nums: queues as i32,
                write_queue_nums: queues as i32,
                perm: 6,
                ..Default::default()
            };
            let r = c.invoke(RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 0).with_header(&h), TIMEOUT).await;
            match r {
                Ok(r) if r.code == ResponseCode::SUCCESS.0 => Ok(()),
                Ok(r) => Err(format!("create topic {i}: code {} {:?}", r.code, r.remark)),
                Err(e) => Err(format!("create topic {i}: {e}")),
            }
        }
    })
    .await;
    eprintln!("SCALE created {topics} topics × {queues} queues in {:?}, {failed_creates} failed", started.elapsed());
    report("after creating topics", pid);

    let started = Instant::now();
    let cc = c.clone();
    let failed_sends = run_all(topics * queues, 256, move |i| {
        let c = cc.clone();
        async move {
            let h = SendMessageRequestHeader {
                producer_group: "scale".into(),
                topic: format!("scale-{:06}", i / queues),
                default_topic: "TBW102".into(),
                default_topic_queue_nums: 4,
                queue_id: (i % queues) as i32,
                properties: Some(String::new()),
                ..Default::default()
            };
            let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(vec![b'm'; 100]);
            h.write_ext_fields_v2(&mut cmd.ext_fields);
            match c.invoke(cmd, TIMEOUT).await {
                Ok(r) if r.code == ResponseCode::SUCCESS.0 => Ok(()),
                Ok(r) => Err(format!("send {i}: code {} {:?}", r.code, r.remark)),
                Err(e) => Err(format!("send {i}: {e}")),
            }
        }
    })
    .await;
    eprintln!("SCALE sent {} messages in {:?}, {failed_sends} failed", topics * queues, started.elapsed());
    let after_writes = report("after one message per queue", pid);

    let cc = c.clone();
    let failed_pulls = run_all(topics * queues, 256, move |i| {
        let c = cc.clone();
        async move {
            let h = PullMessageRequestHeader {
                consumer_group: "scale".into(),
                topic: format!("scale-{:06}", i / queues),
                queue_id: (i % queues) as i32,
                queue_offset: 0,
                max_msg_nums: 32,
                subscription: Some("*".into()),
                ..Default::default()
            };
            match c.invoke(RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h), TIMEOUT).await {
                Ok(r) if r.code == ResponseCode::SUCCESS.0 => Ok(()),
                Ok(r) => Err(format!("pull {i}: code {} {:?}", r.code, r.remark)),
                Err(e) => Err(format!("pull {i}: {e}")),
            }
        }
    })
    .await;
    eprintln!("SCALE pulled every queue once, {failed_pulls} failed");
    let after_reads = report("after reading every queue", pid);

    let _ = child.kill();
    let _ = child.wait();
    let started = Instant::now();
    let mut child = spawn(&config, &log);
    let pid = child.id();
    let _c = wait_ready(&client_addr).await;
    eprintln!("SCALE restarted in {:?}", started.elapsed());
    let after_restart = report("after a restart", pid);
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!((failed_creates, failed_sends, failed_pulls), (0, 0, 0), "every request succeeded");
    for (stage, u) in [("writes", after_writes), ("reads", after_reads), ("restart", after_restart)] {
        let u = u.unwrap_or_else(|| panic!("the broker died during the {stage}"));
        // Mappings: the consume-queue cache, plus commitlog segments and index files, libraries and stacks.
        assert!(u.maps < MAPPED_FILES_MAX + 2_000, "{stage}: {} mappings", u.maps);
        assert!(u.fds < 1_000, "{stage}: {} descriptors", u.fds);
    }
}
