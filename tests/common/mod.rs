//! Harness for multi-process tests: starts the real `raftmq` binary as a nameserver and a 3-node broker
//! group on free loopback ports, kills nodes with SIGKILL, restarts them, and offers minimal remoting
//! calls (send, pull, offsets) so tests observe exactly what clients see.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raftmq_net::RemotingClient;
use raftmq_remoting::body::{decode_json_body, TopicRouteData};
use raftmq_remoting::header::{
    GetMaxOffsetRequestHeader, GetRouteInfoRequestHeader, OffsetResponseHeader, PullMessageRequestHeader, PullMessageResponseHeader,
    QueryConsumerOffsetRequestHeader, SendMessageRequestHeader, SendMessageResponseHeader, UpdateConsumerOffsetRequestHeader,
};
use raftmq_remoting::message::{decode_properties, encode_properties, property, StoredMessages};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// First port and count of the range child processes are given to listen on: below the kernel's
/// ephemeral range (32768–60999 by default).
const PORTS_FROM: u32 = 20_000;
const PORTS_COUNT: u32 = 12_000;

/// A loopback port for a child process to listen on. Not one from port 0: a port the kernel chose and this
/// process released is in the ephemeral range, where any outgoing connection (the brokers' Raft and client
/// connections) may take it as its source port before the child binds it; the child then fails to start
/// and the group has no quorum. Ports come from a fixed range outside it instead, from a start that
/// differs per process, each checked by binding it, and none is handed out twice by this process.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..PORTS_COUNT {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (PORTS_FROM + start.wrapping_add(n) % PORTS_COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS_FROM}..{}", PORTS_FROM + PORTS_COUNT)
}

pub struct Node {
    pub id: u64,
    pub client_addr: String,
    pub raft_addr: String,
    /// Where the node serves `/metrics` (`metricsListen`; every harness node has its own port).
    pub metrics_addr: String,
    config: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub namesrv: String,
    /// Where the nameserver serves `/metrics` (`--metrics-listen`).
    pub namesrv_metrics: String,
    namesrv_child: Child,
    pub nodes: Vec<Node>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_raftmq")
}

impl Cluster {
    /// Starts a nameserver and a broker group of `n` nodes; waits until a leader is registered.
    pub async fn start(n: u64) -> Cluster {
        Cluster::start_with_stores(n, None).await
    }

    /// Like [`Cluster::start`], with node `id`'s store in `stores.join(format!("n{id}"))` when given
    /// (for example on a filesystem the test mounted) instead of the cluster's temporary directory.
    pub async fn start_with_stores(n: u64, stores: Option<&std::path::Path>) -> Cluster {
        let mut c = Cluster::prepare_with_stores(n, "", stores);
        for id in 1..=n {
            c.start_node(id);
        }
        c.wait_registered_leader(Duration::from_secs(30)).await;
        c
    }

    /// Like [`Cluster::start_with_stores`], with `extra` TOML lines in every node's config.
    pub async fn start_with(n: u64, stores: Option<&std::path::Path>, extra: &str) -> Cluster {
        let mut c = Cluster::prepare_with_stores(n, extra, stores);
        for id in 1..=n {
            c.start_node(id);
        }
        c.wait_registered_leader(Duration::from_secs(30)).await;
        c
    }

    /// Starts the nameserver and writes the configs of `n` nodes (each with `extra` TOML lines; store in
    /// [`Cluster::store_dir`]), without starting the nodes: for tests that prepare each node's store first.
    pub fn prepare(n: u64, extra: &str) -> Cluster {
        Cluster::prepare_with_stores(n, extra, None)
    }

    fn prepare_with_stores(n: u64, extra: &str, stores: Option<&std::path::Path>) -> Cluster {
        Cluster::prepare_with_namesrv_args(n, extra, stores, &[])
    }

    /// Like [`Cluster::prepare`], with `namesrv_args` added to the nameserver's command line (e.g. its TLS
    /// flags); tests/tls.rs.
    pub fn prepare_with_namesrv_args(n: u64, extra: &str, stores: Option<&std::path::Path>, namesrv_args: &[String]) -> Cluster {
        // RAFTMQ_KEEP_TEST_DIRS=1 keeps every cluster's directory (logs, stores) for a post-mortem.
        let dir = tempfile::Builder::new().disable_cleanup(std::env::var_os("RAFTMQ_KEEP_TEST_DIRS").is_some()).tempdir().expect("tempdir");
        let store_root = stores.map(PathBuf::from).unwrap_or_else(|| dir.path().to_path_buf());
        let namesrv = format!("127.0.0.1:{}", free_port());
        // A cluster whose brokers have a `clusterSecretFile` line in `extra` gets a nameserver with the same file.
        let secret_file = extra.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "clusterSecretFile").then(|| v.trim().trim_matches('"').to_string())
        });
        let namesrv_metrics = format!("127.0.0.1:{}", free_port());
        let mut namesrv_cmd =
            vec!["namesrv".to_string(), "--listen".into(), namesrv.clone(), "--metrics-listen".into(), namesrv_metrics.clone()];
        if let Some(f) = secret_file {
            // The harness's own control requests (node status) are signed with it: the brokers refuse them unsigned.
            if let Ok(text) = std::fs::read_to_string(&f) {
                let _ =
                    HARNESS_CLUSTER_SECRETS.set(raftmq_remoting::cluster_auth::ClusterSecrets::parse(&text).expect("cluster secret file"));
            }
            namesrv_cmd.extend(["--cluster-secret-file".into(), f]);
        }
        let namesrv_child = Command::new(bin())
            .args(&namesrv_cmd)
            .arg("--log-file")
            .arg(dir.path().join("namesrv.log"))
            .args(namesrv_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn namesrv");
        let peers: Vec<(u64, String, String)> =
            (1..=n).map(|id| (id, format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()))).collect();
        let mut nodes = Vec::new();
        for (id, client, raft) in &peers {
            let mut toml = format!(
                "brokerName = \"broker-a\"\nnodeId = {id}\nnamesrvAddr = \"{namesrv}\"\nstorePathRootDir = \"{}\"\nbootstrap = {}\n",
                store_root.join(format!("n{id}")).display(),
                *id == 1
            );
            // Defaults of the harness unless `extra` sets them: 8 MiB segments, and sends refused only on a
            // disk 99 % full (the default 0.75 would make every test depend on the host's disk).
            let metrics_addr = format!("127.0.0.1:{}", free_port());
            let metrics_line = format!("metricsListen = \"{metrics_addr}\"\n");
            for (key, line) in [
                ("mappedFileSizeCommitLog", "mappedFileSizeCommitLog = 8388608\n"),
                ("diskMaxUsedSpaceRatio", "diskMaxUsedSpaceRatio = 0.99\n"),
                ("metricsListen", metrics_line.as_str()),
            ] {
                if !extra.contains(key) {
                    toml.push_str(line);
                }
            }
            toml.push_str(extra);
            for (pid, pc, pr) in &peers {
                toml.push_str(&format!("[[peers]]\nid = {pid}\nraftAddr = \"{pr}\"\nclientAddr = \"{pc}\"\n"));
            }
            let config = dir.path().join(format!("n{id}.toml"));
            std::fs::write(&config, toml).expect("write config");
            nodes.push(Node { id: *id, client_addr: client.clone(), raft_addr: raft.clone(), metrics_addr, config, child: None });
        }
        Cluster { dir, namesrv, namesrv_metrics, namesrv_child, nodes }
    }

    /// Starts another broker group `broker_name` of `n` nodes (ids `first_id`.., which must not collide with
    /// nodes already in the cluster) registering with the same nameserver; waits until it has a ready leader.
    pub async fn add_group(&mut self, broker_name: &str, first_id: u64, n: u64) {
        let peers: Vec<(u64, String, String)> =
            (first_id..first_id + n).map(|id| (id, format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()))).collect();
        for (id, client, raft) in &peers {
            assert!(self.nodes.iter().all(|x| x.id != *id), "node id {id} is taken");
            let metrics_addr = format!("127.0.0.1:{}", free_port());
            let mut toml = format!(
                "brokerName = \"{broker_name}\"\nnodeId = {id}\nnamesrvAddr = \"{}\"\nstorePathRootDir = \"{}\"\nmappedFileSizeCommitLog = 8388608\ndiskMaxUsedSpaceRatio = 0.99\nmetricsListen = \"{metrics_addr}\"\nbootstrap = {}\n",
                self.namesrv,
                self.dir.path().join(format!("n{id}")).display(),
                *id == first_id
            );
            for (pid, pc, pr) in &peers {
                toml.push_str(&format!("[[peers]]\nid = {pid}\nraftAddr = \"{pr}\"\nclientAddr = \"{pc}\"\n"));
            }
            let config = self.dir.path().join(format!("n{id}.toml"));
            std::fs::write(&config, toml).expect("write config");
            self.nodes.push(Node { id: *id, client_addr: client.clone(), raft_addr: raft.clone(), metrics_addr, config, child: None });
            self.start_node(*id);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        'wait: loop {
            for (id, client, _) in &peers {
                if let Some(s) = node_status(client).await {
                    if s["role"] == "Leader" && s["ready"] == true {
                        let _ = id;
                        break 'wait;
                    }
                }
            }
            assert!(Instant::now() < deadline, "group {broker_name} elected no leader\n{}", self.log_tails(30));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the config of a fresh node for a run-time `raftmq admin node add`/`replace`: the next unused id,
    /// new ports, `bootstrap = false`, an empty store, and a `[[peers]]` list naming only itself (so what it
    /// knows of the others' client addresses comes from the Raft membership). Starts it; returns its id.
    pub fn start_fresh_node(&mut self) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let (client, raft) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let toml = format!(
            "brokerName = \"broker-a\"\nnodeId = {id}\nnamesrvAddr = \"{}\"\nstorePathRootDir = \"{}\"\nmappedFileSizeCommitLog = 8388608\ndiskMaxUsedSpaceRatio = 0.99\nmetricsListen = \"{metrics_addr}\"\nbootstrap = false\n[[peers]]\nid = {id}\nraftAddr = \"{raft}\"\nclientAddr = \"{client}\"\n",
            self.namesrv,
            self.dir.path().join(format!("n{id}")).display()
        );
        let config = self.dir.path().join(format!("n{id}.toml"));
        std::fs::write(&config, toml).expect("write config");
        self.nodes.push(Node { id, client_addr: client, raft_addr: raft, metrics_addr, config, child: None });
        self.start_node(id);
        id
    }

    /// The store directory of node `id` (`storePathRootDir`) of a cluster made without `stores`.
    pub fn store_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    pub fn start_node(&mut self, id: u64) {
        let log = self.dir.path().join(format!("n{id}.log"));
        // A start-up error (a port that cannot be bound, a bad config) goes to stderr, not the log file.
        let stderr =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(format!("n{id}.stderr"))).expect("stderr file");
        let node = self.nodes.iter_mut().find(|n| n.id == id).expect("node");
        assert!(node.child.is_none(), "node {id} already running");
        let child = Command::new(bin())
            .args(["broker", "--config"])
            .arg(&node.config)
            .arg("--log-file")
            .arg(log)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn broker");
        node.child = Some(child);
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.iter_mut().find(|n| n.id == id).expect("node");
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process ids of the running nodes (for `raftmq bench --server-pids`).
    #[allow(dead_code)]
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(|c| c.id())).collect()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to node `id`'s process.
    pub fn signal(&self, id: u64, signal: &str) {
        let pid = self.node(id).child.as_ref().expect("node running").id();
        let st = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("run kill");
        assert!(st.success(), "kill -{signal} {pid}");
    }

    /// Waits until every thread of node `id`'s process is stopped (after `signal(id, "STOP")`: the kernel
    /// stops a multi-threaded process thread by thread, and one still running can answer a request meanwhile).
    pub fn wait_stopped(&self, id: u64, timeout: Duration) {
        let pid = self.node(id).child.as_ref().expect("node running").id();
        let deadline = Instant::now() + timeout;
        loop {
            let states: Vec<char> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                        .filter_map(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
                        .collect()
                })
                .unwrap_or_default();
            if !states.is_empty() && states.iter().all(|s| matches!(s, 'T' | 't')) {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} (pid {pid}) not stopped: thread states {states:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM (what `systemctl stop` sends): the broker's clean shutdown runs. Returns the exit status
    /// and how long the process took to exit, or None if it was still running after `timeout`.
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let pid = self.nodes.iter().find(|n| n.id == id).and_then(|n| n.child.as_ref()).expect("node running").id();
        let started = Instant::now();
        let st = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
        assert!(st.success(), "kill -TERM {pid}");
        self.wait_exit(id, timeout).map(|st| (st, started.elapsed()))
    }

    /// Waits until node `id`'s process exits by itself and returns its status (None on timeout).
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let node = self.nodes.iter_mut().find(|n| n.id == id).expect("node");
        let deadline = Instant::now() + timeout;
        loop {
            let child = node.child.as_mut().expect("node running");
            if let Some(st) = child.try_wait().expect("try_wait") {
                node.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("node")
    }

    /// The node the nameserver publishes as brokerId 0, once that node also reports itself leader.
    pub async fn wait_registered_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(route)) = route(&self.namesrv, "TBW102").await {
                if let Some(addr) = route.broker_datas.first().and_then(|b| b.master_addr()) {
                    if let Some(n) = self.nodes.iter().find(|n| n.client_addr == addr && n.child.is_some()) {
                        if node_role(addr).await.as_deref() == Some("Leader") {
                            return n.id;
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                // The directory (and its logs) is deleted when the panic unwinds: put the logs' tails in the message.
                panic!("no leader registered with the nameserver\n{}", self.log_tails(40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of the nameserver's and every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let names = std::iter::once("namesrv".to_string()).chain(self.nodes.iter().map(|n| format!("n{}", n.id)));
        for name in names {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name}.log (last {} of {} lines)\n", lines.min(all.len()), all.len()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
            let stderr = std::fs::read_to_string(self.dir.path().join(format!("{name}.stderr"))).unwrap_or_default();
            if !stderr.trim().is_empty() {
                out.push_str(&format!("--- {name}.stderr\n{stderr}\n"));
            }
        }
        out
    }

    /// The node that reports itself ready leader (asking nodes directly).
    pub async fn leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Some(s) = node_status(&n.client_addr).await {
                    if s["role"] == "Leader" && s["ready"] == true {
                        return n.id;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader; logs in {}\n{}", self.dir.path().display(), self.log_tails(40));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn keep_logs(self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = self.namesrv_child.kill();
        let _ = self.namesrv_child.wait();
    }
}

pub async fn client(addr: &str) -> Option<RemotingClient> {
    RemotingClient::connect(addr, Duration::from_secs(1), None).await.ok()
}

/// ACL credentials the harness signs its own admin requests (node status) with: set by tests whose brokers
/// run with `aclEnable` (node status is admin-only then).
pub static HARNESS_CREDENTIALS: std::sync::OnceLock<raftmq_remoting::acl::Credentials> = std::sync::OnceLock::new();

/// The cluster secret the harness signs its control requests with: set by the first cluster prepared with a
/// `clusterSecretFile` (brokers with a secret refuse unsigned control requests).
pub static HARNESS_CLUSTER_SECRETS: std::sync::OnceLock<raftmq_remoting::cluster_auth::ClusterSecrets> = std::sync::OnceLock::new();

pub async fn node_status(addr: &str) -> Option<serde_json::Value> {
    let c = client(addr).await?;
    let mut req = RemotingCommand::request(RequestCode(raftmq_broker::RAFTMQ_NODE_STATUS), 0);
    if let Some(secrets) = HARNESS_CLUSTER_SECRETS.get() {
        raftmq_remoting::cluster_auth::sign_command(secrets, &mut req);
    } else if let Some(creds) = HARNESS_CREDENTIALS.get() {
        creds.sign(&mut req);
    }
    let r = c.invoke(req, Duration::from_secs(1)).await.ok()?;
    serde_json::from_slice(&r.body).ok()
}

async fn node_role(addr: &str) -> Option<String> {
    node_status(addr).await.and_then(|s| s["role"].as_str().map(String::from))
}

pub async fn route(namesrv: &str, topic: &str) -> Result<Option<TopicRouteData>, String> {
    let c = client(namesrv).await.ok_or("namesrv unreachable")?;
    let h = GetRouteInfoRequestHeader { topic: topic.into(), ..Default::default() };
    let r = c
        .invoke(RemotingCommand::request(RequestCode::GET_ROUTEINFO_BY_TOPIC, 0).with_header(&h), TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if r.code != ResponseCode::SUCCESS.0 {
        return Ok(None);
    }
    decode_json_body("route", &r.body).map(Some).map_err(|e| e.to_string())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A SEND_MESSAGE_V2 request.
pub fn send_request(topic: &str, queue_id: i32, body: &[u8], tag: Option<&str>) -> RemotingCommand {
    match tag {
        Some(t) => send_request_with(topic, queue_id, body, &[(property::TAGS, t)]),
        None => send_request_with(topic, queue_id, body, &[]),
    }
}

/// A SEND_MESSAGE_V2 request carrying `props` (a delay level, a timer, tags) besides WAIT.
pub fn send_request_with(topic: &str, queue_id: i32, body: &[u8], props: &[(&str, &str)]) -> RemotingCommand {
    let mut encoded = String::new();
    let list = std::iter::once((property::WAIT_STORE_MSG_OK, "true")).chain(props.iter().copied());
    encode_properties(list, &mut encoded).expect("properties");
    let h = SendMessageRequestHeader {
        producer_group: "test_producer".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id,
        born_timestamp: now_ms(),
        properties: Some(encoded),
        ..Default::default()
    };
    let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(body.to_vec());
    h.write_ext_fields_v2(&mut cmd.ext_fields);
    cmd
}

/// Sends one message; `Ok(queue offset)` on SEND_OK, `Err((code, remark))` otherwise.
pub async fn send(c: &RemotingClient, topic: &str, queue_id: i32, body: &[u8]) -> Result<i64, (i32, String)> {
    send_cmd(c, send_request(topic, queue_id, body, None)).await
}

/// Sends a prepared SEND_MESSAGE_V2 request; `Ok(queue offset)` on SEND_OK (for a delayed or timed message,
/// its offset in the staging queue), `Err((code, remark))` otherwise.
pub async fn send_cmd(c: &RemotingClient, cmd: RemotingCommand) -> Result<i64, (i32, String)> {
    let r = c.invoke(cmd, TIMEOUT).await.map_err(|e| (-1, e.to_string()))?;
    if r.code != ResponseCode::SUCCESS.0 {
        return Err((r.code, r.remark.unwrap_or_default()));
    }
    let h: SendMessageResponseHeader = r.decode_header().map_err(|e| (-2, e.to_string()))?;
    Ok(h.queue_offset)
}

/// A pulled message: what the tests look at.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub offset: i64,
    pub body: Vec<u8>,
    pub store_timestamp: i64,
    pub properties: BTreeMap<String, String>,
}

/// Pulls up to 32 messages from `offset` (no long polling); returns (code, next offset, [(offset, body)]).
pub async fn pull(c: &RemotingClient, topic: &str, queue_id: i32, offset: i64) -> (i32, i64, Vec<(i64, Vec<u8>)>) {
    let (code, next, msgs) = pull_messages(c, topic, queue_id, offset).await;
    (code, next, msgs.into_iter().map(|m| (m.offset, m.body)).collect())
}

/// Like [`pull`], with each message's store timestamp and properties.
pub async fn pull_messages(c: &RemotingClient, topic: &str, queue_id: i32, offset: i64) -> (i32, i64, Vec<Pulled>) {
    let h = PullMessageRequestHeader {
        consumer_group: "test_consumer".into(),
        topic: topic.into(),
        queue_id,
        queue_offset: offset,
        max_msg_nums: 32,
        subscription: Some("*".into()),
        ..Default::default()
    };
    let r = c.invoke(RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h), TIMEOUT).await.expect("pull");
    // Error answers (TOPIC_NOT_EXIST on a member that has not caught up, …) carry no pull header: -1.
    let next = r.decode_header::<PullMessageResponseHeader>().map(|h| h.next_begin_offset).unwrap_or(-1);
    let msgs = StoredMessages::new(&r.body)
        .map(|m| m.expect("stored message"))
        .map(|m| Pulled {
            offset: m.queue_offset,
            body: m.body.to_vec(),
            store_timestamp: m.store_timestamp,
            properties: decode_properties(m.properties),
        })
        .collect();
    (r.code, next, msgs)
}

/// Every message of a queue from offset 0.
pub async fn pull_all(c: &RemotingClient, topic: &str, queue_id: i32) -> Vec<(i64, Vec<u8>)> {
    pull_all_messages(c, topic, queue_id).await.into_iter().map(|m| (m.offset, m.body)).collect()
}

/// Like [`pull_all`], with each message's store timestamp and properties.
pub async fn pull_all_messages(c: &RemotingClient, topic: &str, queue_id: i32) -> Vec<Pulled> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (code, next, msgs) = pull_messages(c, topic, queue_id, offset).await;
        if code != ResponseCode::SUCCESS.0 || msgs.is_empty() {
            return out;
        }
        out.extend(msgs);
        offset = next;
    }
}

pub async fn max_offset(c: &RemotingClient, topic: &str, queue_id: i32) -> i64 {
    let h = GetMaxOffsetRequestHeader { topic: topic.into(), queue_id, ..Default::default() };
    let r = c.invoke(RemotingCommand::request(RequestCode::GET_MAX_OFFSET, 0).with_header(&h), TIMEOUT).await.expect("max offset");
    r.decode_header::<OffsetResponseHeader>().expect("offset").offset
}

pub async fn commit_offset(c: &RemotingClient, group: &str, topic: &str, queue_id: i32, offset: i64) -> i32 {
    let h = UpdateConsumerOffsetRequestHeader { consumer_group: group.into(), topic: topic.into(), queue_id, commit_offset: offset };
    c.invoke(RemotingCommand::request(RequestCode::UPDATE_CONSUMER_OFFSET, 0).with_header(&h), TIMEOUT).await.expect("commit").code
}

pub async fn query_offset(c: &RemotingClient, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
    let h = QueryConsumerOffsetRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id,
        set_zero_if_not_found: Some(false),
    };
    let r = c.invoke(RemotingCommand::request(RequestCode::QUERY_CONSUMER_OFFSET, 0).with_header(&h), TIMEOUT).await.expect("query");
    (r.code == ResponseCode::SUCCESS.0).then(|| r.decode_header::<OffsetResponseHeader>().expect("offset").offset)
}

pub fn addr_of(c: &Cluster, id: u64) -> SocketAddr {
    c.node(id).client_addr.parse().expect("addr")
}

/// An acknowledged send of [`steady_sender`]: queue, offset, body, when the acknowledgement arrived.
pub type Ack = (i32, i64, String, Instant);

/// Sends `<prefix>-<n>` to `topic` with `producer`, one message at a time every 5 ms, until `stop` is set;
/// returns the acknowledged sends and the failures (body and error).
pub fn steady_sender(
    producer: raftmq_client::Producer,
    topic: &'static str,
    prefix: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Ack>, Vec<String>)> {
    tokio::spawn(async move {
        let mut acks: Vec<Ack> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            seq += 1;
            let body = format!("{prefix}-{seq}");
            match producer.send(raftmq_client::Message::new(topic, body.clone())).await {
                Ok(r) => acks.push((r.queue.queue_id, r.queue_offset, body, Instant::now())),
                Err(e) => failures.push(format!("{body}: {e}")),
            }
        }
        (acks, failures)
    })
}

/// Creates `topic` with one read and one write queue through the member at `addr` (the leader, or a member
/// that forwards it).
pub async fn create_one_queue_topic(addr: &str, topic: &str) {
    let c = client(addr).await.expect("connect");
    let h = raftmq_remoting::header::CreateTopicRequestHeader {
        topic: topic.into(),
        read_queue_nums: 1,
        write_queue_nums: 1,
        perm: 6,
        ..Default::default()
    };
    let r = c.invoke(RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 0).with_header(&h), TIMEOUT).await.expect("create");
    assert_eq!(r.code, 0, "create topic: {:?}", r.remark);
}

/// Every message of `topic` queue 0 as read from `addr`, by UNIQ_KEY, with how often each is stored.
pub async fn stored_ids(addr: &str, topic: &str) -> BTreeMap<String, usize> {
    let c = client(addr).await.expect("connect");
    let mut ids = BTreeMap::new();
    for m in pull_all_messages(&c, topic, 0).await {
        *ids.entry(m.properties.get(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).cloned().unwrap_or_default()).or_insert(0) += 1;
    }
    ids
}
