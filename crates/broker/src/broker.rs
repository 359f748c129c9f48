//! A running broker node: starts its Raft member and remoting server, registers with the nameservers
//! (every 30 s and at once on a role change, with its Raft term; as brokerId 0 only the ready leader whose
//! leadership a quorum has just confirmed; never again once the Raft core has stopped), batches
//! consumer-offset commits into Raft entries, expires idle clients, and dispatches requests to the
//! processors. A storage failure is reported through [`Broker::failed`]; the binary then exits with
//! [`exit_status`]: [`EXIT_STORE_CORRUPT`] for damaged data, [`EXIT_STORE_FAILED`] otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftmq_commitlog::FlushPolicy;
use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingClient, RemotingServer, RequestHandler};
use raftmq_raft::error::StoreFailure;
use raftmq_raft::member::MemberAddr;
use raftmq_raft::node::{NodeConfig, NodeError, RaftNode, Role, WriteError};
use raftmq_raft::types::{OffsetCommit, TopicConfig};
use raftmq_remoting::body::{encode_json_body, RegisterBrokerBody, TopicConfig as WireTopicConfig, TopicConfigSerializeWrapper};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::RegisterBrokerRequestHeader;
use raftmq_remoting::{RequestCode, ResponseCode, FRAME_BYTES_MAX_DEFAULT};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use crate::config::{BrokerConfig, FlushDiskType};
use crate::consumers::{ClientLimits, ClientManager};
use crate::processor::{
    reply, RAFTMQ_ADD_NODE, RAFTMQ_MEMBERS, RAFTMQ_NODE_STATUS, RAFTMQ_PROMOTE_NODE, RAFTMQ_REMOVE_NODE, RAFTMQ_SET_DELAY_LEVELS,
    RAFTMQ_TRANSFER_LEADER,
};
use crate::store::MessageStore;
use crate::topics::{validate_group, validate_topic, AUTO_CREATE_TOPIC, PERM_READ_WRITE};

/// Registration period (RocketMQ `registerNameServerPeriod`).
pub const REGISTER_INTERVAL: Duration = Duration::from_secs(30);
/// First delay before a failed registration or template-topic creation is tried again; it doubles up to
/// [`REGISTER_INTERVAL`].
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// How long a nameserver keeps a silent broker (sent with every registration).
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a registration waits for a quorum to confirm this node's leadership before it registers as a
/// slave instead.
pub const LEADERSHIP_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle client expiry (RocketMQ `channelExpiredTimeout`).
pub const CLIENT_EXPIRY: Duration = Duration::from_secs(120);
/// Exit status of a broker process whose store failed in a way a restart can cure (a full disk, a failed
/// read, write or fsync, the Raft core stopped on an error): sysexits' `EX_IOERR`. The node cannot recover
/// in place; a supervisor should restart it once the cause (free space, a broken disk) is dealt with.
/// Documented in docs/operations.md.
pub const EXIT_STORE_FAILED: i32 = 74;
/// Exit status of a broker process whose stored data failed verification ([`StoreFailure::is_corrupt`]:
/// a checksum mismatch in a sealed segment, a checkpoint or snapshot that does not decode): sysexits'
/// `EX_DATAERR`. Restarting fails the same way, so a supervisor must not restart it (systemd:
/// `RestartPreventExitStatus=65`); an operator replaces the node's data and node id.
pub const EXIT_STORE_CORRUPT: i32 = 65;
/// Longest the binary waits for a clean shutdown after a storage failure before it exits anyway.
pub const SHUTDOWN_AFTER_FAILURE_MAX: Duration = Duration::from_secs(5);
/// Longest the binary waits for a clean shutdown after SIGTERM before it exits anyway. Stopping the Raft
/// core, the final commitlog flush and checkpoint take well under a second; past this something hangs,
/// and exiting is as safe as a kill -9 (recovery runs at the next start). Supervisors should allow more
/// (the systemd units' `TimeoutStopSec=30`).
pub const SHUTDOWN_MAX: Duration = Duration::from_secs(20);

/// The exit status for a broker stopped by `f`: [`EXIT_STORE_CORRUPT`] when stored data failed
/// verification, else [`EXIT_STORE_FAILED`].
pub fn exit_status(f: &StoreFailure) -> i32 {
    if f.is_corrupt() {
        EXIT_STORE_CORRUPT
    } else {
        EXIT_STORE_FAILED
    }
}
/// Broker start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Configuration rule broken.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `aclEnable` is on and the ACL file did not load.
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
    /// The Raft member could not start (a storage cause is [`NodeError::Store`]).
    #[error("raft: {0}")]
    Node(#[from] NodeError),
    /// TLS certificate, key or trust files that do not load.
    #[error("tls: {0}")]
    Tls(#[from] raftmq_net::TlsError),
    /// The client port could not be bound.
    #[error("listen {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// One offset commit and, when the caller waits, where to report the outcome.
type CommitRequest = (OffsetCommit, Option<oneshot::Sender<Result<(), WriteError>>>);

/// Batches consumer-offset commits: whatever is queued when an entry is proposed goes into it.
pub(crate) struct OffsetCommitter {
    tx: mpsc::Sender<CommitRequest>,
}

impl OffsetCommitter {
    fn start(store: MessageStore) -> Self {
        let (tx, mut rx) = mpsc::channel::<CommitRequest>(8192);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 4096 {
                    match rx.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                // Last commit per queue wins within a batch.
                let mut latest: BTreeMap<(String, String, u32), u64> = BTreeMap::new();
                let mut waiters = Vec::new();
                for (c, w) in batch {
                    latest.insert((c.group, c.topic, c.queue_id), c.offset);
                    waiters.extend(w);
                }
                let commits =
                    latest.into_iter().map(|((group, topic, queue_id), offset)| OffsetCommit { group, topic, queue_id, offset }).collect();
                let r = store.commit_offsets(commits).await;
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            }
        });
        OffsetCommitter { tx }
    }

    /// Commits and waits until replicated.
    pub(crate) async fn commit(&self, c: OffsetCommit) -> Result<(), WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((c, Some(tx))).await.map_err(|_| WriteError::Stopped { failure: None })?;
        rx.await.map_err(|_| WriteError::unknown("committer stopped"))?
    }

    /// Commits in the background (offsets piggybacked on pulls).
    pub(crate) fn commit_detached(&self, c: OffsetCommit) {
        let _ = self.tx.try_send((c, None));
    }
}

/// State shared by the processors.
pub struct BrokerInner {
    pub(crate) cfg: BrokerConfig,
    pub(crate) node: Arc<RaftNode>,
    pub(crate) store: MessageStore,
    pub(crate) clients: ClientManager,
    pub(crate) offsets: OffsetCommitter,
    /// Woken when this leader applied an offset reset: long-polled pulls re-check their queue's marker.
    pub(crate) resets_applied: Notify,
    register_now: Notify,
    /// Held while registering; set `leaving` and take it to end the registration loop (leave.rs).
    pub(crate) registration_lock: tokio::sync::Mutex<()>,
    /// Set once this node is leaving the group (SIGTERM): it registers no more.
    pub(crate) leaving: std::sync::atomic::AtomicBool,
    /// When the last client request arrived (the drain on leaving waits for quiet).
    pub(crate) activity: crate::leave::Activity,
    /// Signs registrations with the nameservers; `None`: unsigned.
    pub(crate) cluster_secrets: Option<raftmq_remoting::cluster_auth::ClusterSecrets>,
    /// The connection requests are forwarded to the leader on (followers only), by leader address.
    pub(crate) leader_link: tokio::sync::Mutex<Option<(String, raftmq_net::RemotingClient)>>,
    /// Forwarding bounds and counters (`forwardInflightMax`, `forwardInflightBytesMax`; forward.rs).
    pub(crate) forwarding: crate::forward::Forwarding,
    /// Long-polled pulls parked now, per connection and in total (`pullParkedPerConnMax`, `pullParkedMax`).
    pub(crate) parked_pulls: crate::parked::ParkedPulls,
    /// TLS for this broker's own client connections (`tlsClientEnable`).
    pub(crate) client_tls: Option<raftmq_net::ClientTls>,
    /// Sends answered from the de-duplication window instead of being stored again.
    pub(crate) duplicates_answered: std::sync::atomic::AtomicU64,
    /// The store's filesystem: full or not, and where retention stopped.
    pub(crate) disk: crate::retention::DiskGuard,
    /// The ACL in force when `aclEnable` is on.
    pub(crate) acl: Option<Arc<crate::acl::AclHolder>>,
    /// Request counters, latency histograms and per-topic traffic (metrics.rs); `None` without
    /// `metricsListen`, so a node without metrics does not count either.
    pub(crate) metrics: Option<Arc<crate::metrics::BrokerMetrics>>,
    /// `unsafeAckBeforeQuorum` only: offsets handed out and acknowledged writes not yet proposed.
    #[cfg(feature = "unsafe-ack-before-quorum")]
    pub(crate) unsafe_acks: std::sync::Mutex<crate::send::UnsafeAcks>,
}

/// A running broker node.
pub struct Broker {
    inner: Arc<BrokerInner>,
    server: RemotingServer,
    /// The `/metrics` server (`metricsListen`).
    metrics_server: Option<raftmq_metrics::server::MetricsServer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Broker {
    /// Starts the node: Raft member, remoting server, registration and housekeeping tasks.
    pub async fn start(cfg: BrokerConfig) -> Result<Broker, BrokerError> {
        cfg.validate()?;
        if cfg.unsafe_ack_before_quorum {
            tracing::error!(
                "UNSAFE: unsafeAckBeforeQuorum is on; acknowledged messages WILL be lost on failover (chaos-checker tests only)"
            );
        }
        if cfg.unsafe_txn_visible_at_half {
            tracing::error!(
                "UNSAFE: unsafeTxnVisibleAtHalf is on; transactional half messages are visible before any commit (chaos-checker tests only)"
            );
        }
        let me = cfg.me()?.clone();
        let cluster_secrets = cfg.cluster_secrets()?;
        match (&cluster_secrets, &cfg.cluster_secret_file) {
            (None, _) => warn!(
                "no cluster secret (clusterSecretFile): the Raft port and nameserver registrations are unauthenticated; \
                 anyone who can reach them can join the Raft protocol or register a fake master (see docs/security.md)"
            ),
            (Some(s), file) => {
                info!(secrets = s.len(), "Raft port and nameserver registrations authenticated with the cluster secret");
                if let Some(w) = file.as_deref().and_then(crate::config::secret_file_mode_warning) {
                    warn!("{w}");
                }
            }
        }
        let acl = match (&cfg.acl_enable, &cfg.acl_file) {
            (true, Some(path)) => Some(Arc::new(crate::acl::AclHolder::load(path)?)),
            _ => None,
        };
        // Certificate files are checked before the Raft member starts: a bad file is a start-up error.
        let client_tls = cfg.client_tls()?;
        let server_options = cfg.server_options();
        if server_options.tls.mode != raftmq_net::TlsMode::Disabled {
            raftmq_net::tls::ServerTls::load(&server_options.tls)?;
        }
        let mut nc = NodeConfig::new(cfg.node_id, me.raft_addr.clone(), cfg.store_path_root_dir.clone());
        nc.cluster_secrets = cluster_secrets.clone();
        nc.transfer_interval_min_ms = cfg.leader_transfer_interval_min_ms;
        nc.stall_handoff_ms = cfg.leader_stall_handoff_ms;
        nc.segment_bytes = cfg.mapped_file_size_commit_log;
        nc.prefill_ahead_bytes = cfg.commit_log_prefill_ahead_bytes;
        nc.flush = match cfg.flush_disk_type {
            FlushDiskType::SyncFlush => FlushPolicy::Sync,
            FlushDiskType::AsyncFlush => FlushPolicy::Async { interval: Duration::from_millis(cfg.flush_interval_commit_log) },
        };
        nc.mapped_files_max = cfg.mapped_files_max;
        nc.heartbeat_ms = cfg.raft_heartbeat_ms;
        nc.entry_bytes_max = cfg.entry_bytes_max;
        nc.batch_bytes_max = nc.batch_bytes_max.min(cfg.entry_bytes_max);
        nc.send_queue_max = cfg.send_queue_max;
        nc.send_queue_bytes_max = cfg.send_queue_bytes_max;
        nc.send_queue_wait_ms_max = cfg.wait_time_mills_in_send_queue;
        nc.election_min_ms = cfg.raft_election_min_ms;
        nc.election_max_ms = cfg.raft_election_max_ms;
        crate::retention::wait_for_disk_space(&cfg.store_path_root_dir, cfg.mapped_file_size_commit_log).await;
        if cfg.message_index_enable {
            nc.message_index = Some(raftmq_raft::message_index::MessageIndexConfig {
                slots_max: cfg.index_slots_max,
                units_max: cfg.index_units_max,
                files_max: cfg.index_files_max,
                extractor: Arc::new(crate::query::index_keys),
            });
        }
        let node = Arc::new(RaftNode::start(nc).await?);
        if cfg.bootstrap {
            // The membership records each member's client address too, so members added later learn it.
            let members =
                cfg.peers.iter().map(|p| (p.id, MemberAddr::new(p.raft_addr.clone(), p.client_addr.clone()).to_string())).collect();
            node.initialize(members).await?;
        }
        let store = MessageStore::new(Arc::clone(&node), cfg.clock_jump_warn_ms.min(i64::MAX as u64) as i64);
        let limits = ClientLimits {
            consumer_groups_max: cfg.consumer_groups_max,
            producer_groups_max: cfg.producer_groups_max,
            clients_per_group_max: cfg.clients_per_group_max,
            subscriptions_per_group_max: cfg.subscriptions_per_group_max,
        };
        let inner = Arc::new(BrokerInner {
            metrics: crate::metrics::BrokerMetrics::for_config(&cfg),
            offsets: OffsetCommitter::start(store.clone()),
            resets_applied: Notify::new(),
            clients: ClientManager::new(limits),
            forwarding: crate::forward::Forwarding::new(cfg.forward_inflight_max, cfg.forward_inflight_bytes_max),
            parked_pulls: crate::parked::ParkedPulls::new(cfg.pull_parked_per_conn_max, cfg.pull_parked_max),
            cfg,
            node,
            store,
            register_now: Notify::new(),
            registration_lock: tokio::sync::Mutex::new(()),
            leaving: std::sync::atomic::AtomicBool::new(false),
            activity: crate::leave::Activity::default(),
            cluster_secrets,
            leader_link: tokio::sync::Mutex::new(None),
            client_tls,
            duplicates_answered: std::sync::atomic::AtomicU64::new(0),
            disk: crate::retention::DiskGuard::default(),
            acl,
            #[cfg(feature = "unsafe-ack-before-quorum")]
            unsafe_acks: std::sync::Mutex::default(),
        });
        let server = RemotingServer::bind(&me.client_addr, Arc::new(Handler(Arc::clone(&inner))), server_options)
            .await
            .map_err(|source| BrokerError::Listen { addr: me.client_addr.clone(), source })?;
        let metrics_server = crate::metrics::serve(&inner, server.stats()).await?;
        let i = Arc::clone(&inner);
        let tasks = vec![
            tokio::spawn(role_watch(Arc::clone(&inner))),
            tokio::spawn(registration_loop(Arc::clone(&inner))),
            tokio::spawn(crate::schedule::delivery_loop(Arc::clone(&inner))),
            tokio::spawn(crate::txn::check_loop(Arc::clone(&inner))),
            tokio::spawn(crate::retention::disk_loop(Arc::clone(&inner))),
            tokio::spawn(crate::retention::retention_loop(Arc::clone(&inner))),
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    i.clients.expire(CLIENT_EXPIRY);
                }
            }),
        ];
        let tasks = {
            let mut tasks = tasks;
            if let Some(h) = &inner.acl {
                tasks.push(tokio::spawn(crate::acl::reload_loop(Arc::clone(h))));
            }
            tasks
        };
        #[cfg(feature = "unsafe-ack-before-quorum")]
        let tasks = {
            let mut tasks = tasks;
            if inner.cfg.unsafe_ack_before_quorum {
                tasks.push(tokio::spawn(crate::send::unsafe_ack_drain_loop(Arc::clone(&inner))));
            }
            tasks
        };
        info!(broker = %inner.cfg.broker_name, node = inner.cfg.node_id, client = %server.local_addr(), raft = %me.raft_addr, "broker started");
        Ok(Broker { inner, server, metrics_server, tasks })
    }

    /// The Raft member.
    pub fn node(&self) -> &Arc<RaftNode> {
        &self.inner.node
    }

    /// The client address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The address `/metrics` is served on, when `metricsListen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(|s| s.local_addr())
    }

    /// Registers with every nameserver now and waits for the answers (the broker also does this every 30 s
    /// and on every role change). Returns the brokerId it registered as.
    pub async fn register_now(&self) -> i64 {
        self.inner.register_all().await
    }

    /// Resolves with the storage failure that stops this node (see [`RaftNode::failed`]). The process
    /// should then exit with [`exit_status`]; the registration loop stops by itself at the same moment.
    pub async fn failed(&self) -> StoreFailure {
        self.inner.node.failed().await
    }

    /// Leaves the group gracefully before [`Broker::shutdown`] (SIGTERM): hands leadership to a follower,
    /// waits for the nameservers to route to it, unregisters this node and drains clients that still hold the
    /// old route (their writes are forwarded). See leave.rs; bounded by `shutdownHandoffTimeoutMs` + 5 s +
    /// `shutdownDrainMaxMs`.
    pub async fn leave(&self) -> crate::leave::LeaveReport {
        self.inner.leave().await
    }

    /// Stops serving and shuts the Raft member down.
    pub async fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(m) = &self.metrics_server {
            m.stop();
        }
        self.server.shutdown();
        self.inner.node.shutdown().await;
    }
}

impl BrokerInner {
    /// Asks the registration loop to register with every nameserver now.
    pub(crate) fn registration_now(&self) {
        self.register_now.notify_one();
    }

    /// Ok when the topic table has room for one more topic (`topicsMax`); checked before proposing, so
    /// concurrent creations can overshoot by at most the number in flight.
    pub(crate) fn check_topic_room(&self, topic: &str) -> Result<(), (ResponseCode, String)> {
        let n = self.store.topic_count();
        if n >= self.cfg.topics_max {
            return Err((
                ResponseCode::SYSTEM_ERROR,
                format!("cannot create topic {topic}: the broker already holds {n} topics (topicsMax {})", self.cfg.topics_max),
            ));
        }
        Ok(())
    }

    /// Ok when `group` may have its retry and dead-letter topics created: a valid name, and, with
    /// `autoCreateTopicEnable` off, a group with live consumers (a subscription group this broker knows from
    /// heartbeats; that registry is bounded by `consumerGroupsMax`).
    pub(crate) fn check_group_may_own_topics(&self, group: &str) -> Result<(), (ResponseCode, String)> {
        validate_group(group).map_err(|why| (ResponseCode::SYSTEM_ERROR, why))?;
        if !self.cfg.auto_create_topic_enable && !self.clients.has_consumer_group(group) {
            return Err((
                ResponseCode::SUBSCRIPTION_GROUP_NOT_EXIST,
                format!(
                    "subscription group [{group}] does not exist: no consumer of it sent a heartbeat to this broker and \
                     autoCreateTopicEnable is off"
                ),
            ));
        }
        Ok(())
    }

    /// Creates `topic` with `queues` queues through the log if it does not exist (leader only), after
    /// checking its name and `topicsMax`; returns its configuration, or the code and remark for the client.
    pub(crate) async fn ensure_topic(&self, topic: &str, queues: u32) -> Result<TopicConfig, (ResponseCode, String)> {
        if let Some(t) = self.store.topic(topic) {
            return Ok(t);
        }
        validate_topic(topic).map_err(|why| (ResponseCode::SYSTEM_ERROR, why))?;
        self.check_topic_room(topic)?;
        let t = TopicConfig { name: topic.to_string(), read_queues: queues, write_queues: queues, perm: PERM_READ_WRITE };
        match self.store.upsert_topic(t.clone()).await {
            Ok(()) => {
                info!(topic, queues, "topic created");
                self.registration_now();
                Ok(self.store.topic(topic).unwrap_or(t))
            }
            Err(e) => {
                warn!(topic, error = %e, "topic creation failed");
                Err((ResponseCode::SERVICE_NOT_AVAILABLE, format!("could not create topic {topic}: {e}; retry")))
            }
        }
    }

    /// The brokerId and Raft term to register with. openraft 0.9 does not step down a leader that lost its
    /// quorum, so "I am the ready leader" is confirmed by a read barrier (a heartbeat round a quorum must
    /// answer) before claiming brokerId 0; a deposed leader registers as a slave under its node id.
    /// The third value is false when this node is the ready leader but registers as a slave because its
    /// leadership was not confirmed.
    async fn registration_identity(&self) -> (i64, u64, bool) {
        let r = self.node.role().borrow().clone();
        let slave = (self.cfg.node_id as i64, r.term);
        if r.role != Role::Leader || !r.ready {
            return (slave.0, slave.1, true);
        }
        match tokio::time::timeout(LEADERSHIP_CONFIRM_TIMEOUT, self.node.read_barrier()).await {
            Ok(Ok(())) => (0, r.term, true),
            Ok(Err(e)) => {
                warn!(term = r.term, error = %e, "leadership not confirmed by a quorum; registering as a slave");
                (slave.0, slave.1, false)
            }
            Err(_) => {
                warn!(term = r.term, "leadership confirmation timed out; registering as a slave");
                (slave.0, slave.1, false)
            }
        }
    }

    async fn register_all(&self) -> i64 {
        self.register_everywhere().await.broker_id
    }

    async fn register_everywhere(&self) -> Registration {
        let (broker_id, term, confirmed) = self.registration_identity().await;
        let mut done = Registration { broker_id, complete: false };
        let Ok(me) = self.cfg.me() else { return done };
        let body = match registration_body(self.store.topics()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot register with the nameservers: lower the topic count");
                return done;
            }
        };
        let h = RegisterBrokerRequestHeader {
            broker_name: self.cfg.broker_name.clone(),
            broker_addr: me.client_addr.clone(),
            cluster_name: self.cfg.broker_cluster_name.clone(),
            ha_server_addr: me.raft_addr.clone(),
            broker_id,
            heartbeat_timeout_millis: Some(REGISTRATION_TIMEOUT.as_millis() as i64),
            enable_acting_master: Some(false),
            compressed: false,
            body_crc32: crc32(&body),
            raft_term: i64::try_from(term).ok(),
        };
        let mut accepted = 0;
        let addrs = self.cfg.namesrv_addrs();
        for addr in &addrs {
            let mut cmd = RemotingCommand::request(RequestCode::REGISTER_BROKER, 0).with_header(&h).with_body(body.clone());
            if let Some(secrets) = &self.cluster_secrets {
                raftmq_remoting::cluster_auth::sign_command(secrets, &mut cmd);
            }
            let r = async {
                let c = RemotingClient::connect_with(addr, Duration::from_secs(3), None, self.client_tls.as_ref()).await?;
                c.invoke(cmd, Duration::from_secs(3)).await
            }
            .await;
            match r {
                Ok(resp) if resp.code == ResponseCode::SUCCESS.0 => {
                    accepted += 1;
                    debug!(namesrv = %addr, broker_id = h.broker_id, "registered")
                }
                Ok(resp) => warn!(namesrv = %addr, code = resp.code, remark = ?resp.remark, "registration refused"),
                Err(e) => warn!(namesrv = %addr, error = %e, "registration failed"),
            }
        }
        done.complete = confirmed && accepted == addrs.len();
        done
    }
}

/// What one round of registrations achieved.
struct Registration {
    /// The brokerId registered as.
    broker_id: i64,
    /// Every nameserver accepted it, and a ready leader registered as the master.
    complete: bool,
}

/// Largest registration body sent: the 16 MiB remoting frame limit less room for the header.
pub const REGISTRATION_BODY_BYTES_MAX: usize = FRAME_BYTES_MAX_DEFAULT - (64 << 10);

/// The REGISTER_BROKER body carrying the whole topic table (JSON, as Java brokers send with
/// `compressed = false`). `topicsMax` keeps it below [`REGISTRATION_BODY_BYTES_MAX`] (see the test); a
/// table that still outgrows it (topics created concurrently at the limit) is an error, not a frame the
/// nameserver would drop.
fn registration_body(topics: Vec<TopicConfig>) -> Result<bytes::Bytes, String> {
    let wrapper = topic_config_wrapper(topics);
    let n = wrapper.topic_config_table.len();
    let body = encode_json_body(&RegisterBrokerBody { topic_config_serialize_wrapper: wrapper, filter_server_list: Vec::new() })
        .map_err(|e| e.to_string())?;
    if body.len() > REGISTRATION_BODY_BYTES_MAX {
        return Err(format!(
            "the registration of {n} topics is {} bytes, more than {REGISTRATION_BODY_BYTES_MAX} (the remoting frame limit)",
            body.len()
        ));
    }
    Ok(body)
}

/// The topic table in the wire form registrations and GET_ALL_TOPIC_CONFIG (21) carry.
pub(crate) fn topic_config_wrapper(topics: Vec<TopicConfig>) -> TopicConfigSerializeWrapper {
    let mut wrapper = TopicConfigSerializeWrapper::default();
    for t in topics {
        wrapper.topic_config_table.insert(
            t.name.clone(),
            WireTopicConfig {
                topic_name: t.name,
                read_queue_nums: t.read_queues as i32,
                write_queue_nums: t.write_queues as i32,
                perm: t.perm as i32,
                topic_filter_type: "SINGLE_TAG".into(),
                ..Default::default()
            },
        );
    }
    wrapper
}

fn crc32(b: &[u8]) -> i32 {
    crc32fast::hash(b) as i32
}

/// Registers every `REGISTER_INTERVAL` and on request, until the Raft core stops: a node whose store
/// failed must not be advertised (the nameserver then drops it after `REGISTRATION_TIMEOUT`). A registration
/// that did not fully succeed — a nameserver did not accept it, or this ready leader could not get its
/// leadership confirmed in time and registered as a slave — is repeated after [`RETRY_MIN`], doubling up to
/// `REGISTER_INTERVAL`, instead of leaving the group without a master route for a whole period.
async fn registration_loop(inner: Arc<BrokerInner>) {
    let stopped = |inner: &BrokerInner| inner.node.role().borrow().role == Role::Shutdown || inner.node.failure().is_some();
    let mut retry = RETRY_MIN;
    loop {
        if stopped(&inner) {
            info!("raft core stopped: no longer registering with the nameservers");
            return;
        }
        let complete = {
            let _registering = inner.registration_lock.lock().await;
            if inner.leaving.load(std::sync::atomic::Ordering::Acquire) {
                info!("leaving the group: no longer registering with the nameservers");
                return;
            }
            inner.register_everywhere().await.complete
        };
        if complete {
            retry = RETRY_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(if complete { REGISTER_INTERVAL } else { retry }) => {
                // Only retries on the timer back off; an event (role change, new topic) starts afresh.
                if !complete {
                    retry = (retry * 2).min(REGISTER_INTERVAL);
                }
            }
            _ = inner.register_now.notified() => retry = RETRY_MIN,
            _ = inner.node.failed() => {}
        }
    }
}

/// Follows this node's role for a leader-only service loop (scheduled delivery, transaction check-backs).
pub(crate) struct LeaderWatch {
    role: tokio::sync::watch::Receiver<raftmq_raft::node::RoleState>,
    term: u64,
}

impl LeaderWatch {
    pub(crate) fn new(inner: &BrokerInner) -> LeaderWatch {
        LeaderWatch { role: inner.node.role(), term: 0 }
    }

    /// Waits until this node is the ready leader. `Some(true)` the first time in a term (for per-term
    /// work), `Some(false)` after that; `None` once the node is gone.
    pub(crate) async fn leading(&mut self) -> Option<bool> {
        loop {
            let (leading, term) = {
                let r = self.role.borrow_and_update();
                (r.role == Role::Leader && r.ready, r.term)
            };
            if leading {
                let new_term = term != self.term;
                self.term = term;
                return Some(new_term);
            }
            self.role.changed().await.ok()?;
        }
    }

    /// Sleeps `d`, or less when the role changes.
    pub(crate) async fn pause(&mut self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.role.changed() => {}
        }
    }
}

/// On every role change: re-register at once; a newly ready leader creates the TBW102 template topic.
async fn role_watch(inner: Arc<BrokerInner>) {
    let mut rx = inner.node.role();
    let mut retry = RETRY_MIN;
    loop {
        let r = rx.borrow_and_update().clone();
        let ready_leader = r.role == Role::Leader && r.ready;
        // Whenever this node is the ready leader and the template topic is missing — not only on the first
        // sight of leadership: a creation that failed because leadership moved away and came back while it
        // ran (the watch then never shows this node as anything but leader) is tried again, and so is any
        // failed creation, while this node leads.
        let mut missing = false;
        if ready_leader && inner.cfg.auto_create_topic_enable {
            if let Err((_, why)) = inner.ensure_topic(AUTO_CREATE_TOPIC, inner.cfg.default_topic_queue_nums.max(8)).await {
                warn!(topic = AUTO_CREATE_TOPIC, why, retry_ms = retry.as_millis() as u64, "template topic not created; retrying");
                missing = true;
            }
        }
        inner.registration_now();
        if missing {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    retry = RETRY_MIN;
                }
                _ = tokio::time::sleep(retry) => retry = (retry * 2).min(REGISTER_INTERVAL),
            }
        } else {
            retry = RETRY_MIN;
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

struct Handler(Arc<BrokerInner>);

impl RequestHandler for Handler {
    fn handle(&self, conn: Conn, req: RemotingCommand) -> HandlerFuture {
        let inner = Arc::clone(&self.0);
        let timer = inner.metrics.as_ref().map(|m| crate::metrics::RequestTimer::start(m, req.code));
        let served = Box::pin(async move {
            let b = &inner;
            // The ACL rule table is the gate: a code without a rule is not served, ACL on or off.
            if crate::acl::rule(req.request_code()).is_none() {
                let code = req.request_code();
                return reply(
                    &req,
                    ResponseCode::REQUEST_CODE_NOT_SUPPORTED,
                    format!("request code {} is not supported by raftmq", code.0),
                );
            }
            // raftmq's control codes: with a cluster secret, a request signed with it is authorised (nodes and
            // operators holding the secret); otherwise only an ACL admin account (ACL on) gets through.
            let cluster_signed = match &b.cluster_secrets {
                Some(secrets) if raftmq_remoting::codes::is_raftmq_admin(req.code) => {
                    match raftmq_remoting::cluster_auth::verify_request(
                        secrets,
                        req.code,
                        &req.ext_fields,
                        &req.body,
                        raftmq_remoting::cluster_auth::unix_ms(),
                    ) {
                        Ok(_) => true,
                        Err(e) if b.acl.is_none() => {
                            warn!(peer = %conn.peer(), code = req.code, refusal = %e, "a control request without a valid cluster-secret signature was refused");
                            return reply(
                                &req,
                                ResponseCode::NO_PERMISSION,
                                format!(
                                    "request code {} is a raftmq control request and this cluster has a cluster secret: {e} \
                                     (the CLI signs with the secret file named by RAFTMQ_CLUSTER_SECRET_FILE)",
                                    req.code
                                ),
                            );
                        }
                        Err(_) => false,
                    }
                }
                _ => false,
            };
            if let Some(holder) = b.acl.as_ref().filter(|_| !cluster_signed) {
                if let Err(remark) = holder.acl().check(&req, conn.peer().ip()) {
                    warn!(peer = %conn.peer(), code = %req.request_code(), refusal = %remark, "ACL refused a request");
                    return reply(&req, ResponseCode::NO_PERMISSION, remark);
                }
            }
            if crate::leave::is_client_activity(req.code) {
                b.activity.touch();
            }
            // Writes reaching a member that is not the ready leader are forwarded to the leader, or wait
            // (`leaderWaitMs`) for one (forward.rs). A write this member took as leader and then refused
            // because leadership moved meanwhile (nothing applied) is routed again, within the same wait.
            if !crate::forward::is_routed_write(req.request_code()) {
                return dispatch(b, &conn, &req).await;
            }
            let started = std::time::Instant::now();
            let mut attempts = 0;
            loop {
                if let Err(answer) = b.route_write(conn.peer(), &req, started).await {
                    return answer;
                }
                let answer = dispatch(b, &conn, &req).await;
                attempts += 1;
                let again = crate::forward::is_leadership_refusal(&answer)
                    && attempts < crate::forward::LOCAL_ATTEMPTS_MAX
                    && started.elapsed() < Duration::from_millis(b.cfg.leader_wait_ms);
                if !again {
                    return answer;
                }
            }
        });
        match timer {
            Some(t) => Box::pin(t.wrap(served)),
            None => served,
        }
    }
}

/// Serves one request this member accepted (after the ACL, and routing for writes).
async fn dispatch(b: &Arc<BrokerInner>, conn: &Conn, req: &RemotingCommand) -> crate::processor::Reply {
    match req.request_code() {
        RequestCode::SEND_MESSAGE | RequestCode::SEND_MESSAGE_V2 | RequestCode::SEND_BATCH_MESSAGE => {
            b.send(crate::forward::born_host(conn.peer(), req), req).await
        }
        RequestCode::CONSUMER_SEND_MSG_BACK => b.send_back(req).await,
        RequestCode::END_TRANSACTION => b.end_transaction(req).await,
        RequestCode::PULL_MESSAGE => b.pull(conn, req).await,
        RequestCode::QUERY_CONSUMER_OFFSET => b.query_consumer_offset(req).await,
        RequestCode::UPDATE_CONSUMER_OFFSET => b.update_consumer_offset(req).await,
        RequestCode::GET_MAX_OFFSET => b.max_offset(req),
        RequestCode::GET_MIN_OFFSET => b.min_offset(req),
        RequestCode::SEARCH_OFFSET_BY_TIMESTAMP => b.search_offset(req),
        RequestCode::GET_EARLIEST_MSG_STORETIME => b.earliest_store_time(req),
        RequestCode::HEART_BEAT => b.heartbeat(conn, req).await,
        RequestCode::CHECK_CLIENT_CONFIG => b.check_client_config(req),
        RequestCode::UNREGISTER_CLIENT => b.unregister_client(req),
        RequestCode::GET_CONSUMER_LIST_BY_GROUP => b.consumer_list(req),
        RequestCode::LOCK_BATCH_MQ => b.lock_batch(req).await,
        RequestCode::UNLOCK_BATCH_MQ => b.unlock_batch(req).await,
        RequestCode::UPDATE_AND_CREATE_TOPIC => b.create_topic(req).await,
        RequestCode::QUERY_MESSAGE => b.query_message(req).await,
        RequestCode::VIEW_MESSAGE_BY_ID => b.view_message_by_id(req).await,
        RequestCode::INVOKE_BROKER_TO_RESET_OFFSET => b.reset_offset(req).await,
        RequestCode::GET_TOPIC_STATS_INFO => b.topic_stats(req),
        RequestCode::GET_CONSUME_STATS => b.consume_stats(req),
        RequestCode::GET_BROKER_RUNTIME_INFO => b.broker_runtime_info(req),
        RequestCode::GET_ALL_TOPIC_CONFIG => b.all_topic_config(req),
        RequestCode::GET_CONSUMER_CONNECTION_LIST => b.consumer_connections(req),
        RequestCode::GET_PRODUCER_CONNECTION_LIST => b.producer_connections(req),
        RequestCode::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP => b.update_subscription_group(req).await,
        RequestCode::GET_ALL_SUBSCRIPTIONGROUP_CONFIG => b.all_subscription_groups(req),
        RequestCode::DELETE_SUBSCRIPTIONGROUP => b.delete_subscription_group(req).await,
        RequestCode::DELETE_TOPIC_IN_BROKER => b.delete_topic(req).await,
        code if code.0 == RAFTMQ_NODE_STATUS => b.node_status(req),
        code if code.0 == RAFTMQ_SET_DELAY_LEVELS => b.set_delay_levels(req).await,
        code if code.0 == RAFTMQ_TRANSFER_LEADER => b.transfer_leader(req).await,
        code if code.0 == RAFTMQ_MEMBERS => b.members(req),
        code if code.0 == RAFTMQ_ADD_NODE => b.add_node(req).await,
        code if code.0 == RAFTMQ_PROMOTE_NODE => b.promote_node(req).await,
        code if code.0 == RAFTMQ_REMOVE_NODE => b.remove_node(req).await,
        code => reply(req, ResponseCode::REQUEST_CODE_NOT_SUPPORTED, format!("request code {} is not supported by raftmq", code.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TOPICS_MAX_LIMIT;
    use crate::topics::TOPIC_BYTES_MAX;

    fn topic(i: usize, name_bytes: usize) -> TopicConfig {
        let mut name = format!("{i:08}");
        name.push_str(&"x".repeat(name_bytes - name.len()));
        TopicConfig { name, read_queues: 1024, write_queues: 1024, perm: PERM_READ_WRITE }
    }

    #[test]
    fn the_largest_allowed_topic_table_fits_one_registration() {
        // The worst case topicsMax allows: every topic with a 127-byte name and 1024 queues.
        let worst: Vec<TopicConfig> = (0..TOPICS_MAX_LIMIT).map(|i| topic(i, TOPIC_BYTES_MAX)).collect();
        let body = registration_body(worst).expect("fits");
        assert!(body.len() <= REGISTRATION_BODY_BYTES_MAX, "{} bytes", body.len());
        // Without the bound the body outgrows the frame limit, and is refused here instead of being sent.
        let beyond: Vec<TopicConfig> = (0..TOPICS_MAX_LIMIT * 13 / 10).map(|i| topic(i, TOPIC_BYTES_MAX)).collect();
        let e = registration_body(beyond).unwrap_err();
        assert!(e.contains("the registration of 42598 topics is") && e.contains("frame limit"), "{e}");
    }

    #[test]
    fn damaged_data_exits_with_its_own_status_and_io_failures_with_the_restartable_one() {
        let dir = std::path::Path::new("/data/commitlog");
        let enospc = StoreFailure::io("commitlog fallocate", dir, &std::io::Error::from_raw_os_error(28) /* ENOSPC */);
        let eio = StoreFailure::io("commitlog fdatasync", dir, &std::io::Error::from_raw_os_error(5) /* EIO */);
        let stopped = StoreFailure {
            op: "raft core stopped".into(),
            path: dir.into(),
            kind: std::io::ErrorKind::Other,
            errno: None,
            message: "x".into(),
        };
        for f in [&enospc, &eio, &stopped] {
            assert!(!f.is_corrupt(), "{f}");
            assert_eq!(exit_status(f), EXIT_STORE_FAILED, "{f}");
        }
        let crc = raftmq_commitlog::CommitLogError::Corrupt { file: dir.join("data/0"), offset: 40, reason: "crc mismatch".into() };
        let sealed = StoreFailure::from_commitlog(&crc, dir);
        // A checkpoint whose frame fails its CRC reads back as an `InvalidData` IO error.
        let ckpt = StoreFailure::io("read checkpoint", dir, &std::io::Error::new(std::io::ErrorKind::InvalidData, "crc mismatch"));
        for f in [&sealed, &ckpt, &StoreFailure::corrupt("decode snapshot", dir, "bad tag")] {
            assert!(f.is_corrupt() && !f.is_disk_full(), "{f}");
            assert_eq!(exit_status(f), EXIT_STORE_CORRUPT, "{f}");
        }
        assert_ne!(EXIT_STORE_CORRUPT, EXIT_STORE_FAILED);
    }
}
