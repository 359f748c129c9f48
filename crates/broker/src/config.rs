//! Broker node configuration: one commented TOML file per node (see `cluster/local/*.toml`), with
//! RocketMQ's key names where RocketMQ has the setting. The CLI applies flag and `RAFTMQ_*` environment
//! overrides on top before [`BrokerConfig::validate`].

use std::path::PathBuf;
use std::time::Duration;

use raftmq_raft::node::{ENTRY_BYTES_LIMIT, ENTRY_BYTES_MAX_DEFAULT};
use raftmq_raft::types::{produce_queue_len, PRODUCE_HEADER_BYTES};
use raftmq_remoting::cluster_auth::{ClusterSecrets, SecretString};
use raftmq_remoting::message::{PROPERTIES_BYTES_MAX, STORED_MESSAGE_FIXED_LEN, TOPIC_BYTES_MAX};
use serde::{Deserialize, Serialize};

/// One member of the broker group's Raft group. Unknown keys are refused, as in [`BrokerConfig`]: a broker
/// key written after the last `[[peers]]` table belongs to that table in TOML, and must not be ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Raft node id; never reused for a wiped node.
    pub id: u64,
    /// Raft transport address (`host:port`).
    pub raft_addr: String,
    /// RocketMQ client address (`host:port`) that producers and consumers use.
    pub client_addr: String,
}

/// How appended messages become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlushDiskType {
    /// fdatasync before acknowledging (default).
    SyncFlush,
    /// Acknowledge from the page cache, fdatasync every `flushIntervalCommitLog` ms. Weaker: acknowledged
    /// messages can be lost if a majority of nodes loses power together.
    AsyncFlush,
}

/// Configuration of one broker node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerConfig {
    /// Cluster name (RocketMQ `brokerClusterName`).
    #[serde(default = "default_cluster")]
    pub broker_cluster_name: String,
    /// Broker group name, shared by all members of the Raft group (RocketMQ `brokerName`).
    pub broker_name: String,
    /// This node's Raft id; must appear in `peers`.
    pub node_id: u64,
    /// Nameserver addresses separated by `;` (RocketMQ `namesrvAddr`).
    #[serde(default)]
    pub namesrv_addr: String,
    /// Data directory (RocketMQ `storePathRootDir`).
    pub store_path_root_dir: PathBuf,
    /// Durability mode (RocketMQ `flushDiskType`).
    #[serde(default = "default_flush")]
    pub flush_disk_type: FlushDiskType,
    /// Async flush interval in ms (RocketMQ `flushIntervalCommitLog`).
    #[serde(default = "default_flush_interval")]
    pub flush_interval_commit_log: u64,
    /// Commitlog segment size in bytes (RocketMQ `mappedFileSizeCommitLog`); identical on all members.
    #[serde(default = "default_segment")]
    pub mapped_file_size_commit_log: u64,
    /// Bytes of the active commitlog segment zero-filled ahead of the write position while the IO thread is
    /// idle (sync flush only; 0 = off). Appends into written blocks fdatasync faster on ext4/XFS than into
    /// preallocated (unwritten) ones; costs extra disk writes when the disk is the bottleneck.
    #[serde(default = "default_prefill")]
    pub commit_log_prefill_ahead_bytes: u64,
    /// Largest message body accepted, in bytes (RocketMQ `maxMessageSize`).
    #[serde(default = "default_max_message")]
    pub max_message_size: usize,
    /// Largest Raft entry, in bytes: the messages of one send request (a batch included) in the stored layout
    /// go into one entry, and a request that would make a larger one is refused with MESSAGE_ILLEGAL (13).
    /// At least what one message of `maxMessageSize` needs, at most 16 MiB, and with its record header within
    /// a commitlog segment.
    #[serde(default = "default_entry_bytes_max")]
    pub entry_bytes_max: usize,
    /// Create unknown topics on first send from the `TBW102` defaults (RocketMQ `autoCreateTopicEnable`).
    #[serde(default = "default_true")]
    pub auto_create_topic_enable: bool,
    /// Queues of an auto-created topic (RocketMQ `defaultTopicQueueNums`).
    #[serde(default = "default_queue_nums")]
    pub default_topic_queue_nums: u32,
    /// Longest a pull may be held, ms (RocketMQ clients ask for 15000).
    #[serde(default = "default_suspend")]
    pub long_polling_max_ms: u64,
    /// Long-polled pulls one client connection may have parked at once (`pullParkedPerConnMax`, 1..
    /// `connInflightRequestsMax`, so a connection always has slots left for its sends); one more is answered
    /// 2 SYSTEM_BUSY `[PARKED_PULLS]` at once instead of waiting (parked.rs).
    #[serde(default = "default_pull_parked_per_conn_max")]
    pub pull_parked_per_conn_max: usize,
    /// Long-polled pulls parked at once over all connections (`pullParkedMax`, 1..=1048576).
    #[serde(default = "default_pull_parked_max")]
    pub pull_parked_max: usize,
    /// Raft heartbeat interval, ms.
    #[serde(default = "default_heartbeat")]
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout lower bound, ms.
    #[serde(default = "default_election_min")]
    pub raft_election_min_ms: u64,
    /// Raft election timeout upper bound, ms.
    #[serde(default = "default_election_max")]
    pub raft_election_max_ms: u64,
    /// Initialize the Raft group from this node when it is pristine (set on exactly one member).
    #[serde(default)]
    pub bootstrap: bool,
    /// **UNSAFE, for testing the chaos checker only**: the leader answers SEND_OK before the Raft group has
    /// committed the message, with a guessed queue offset. Acknowledged messages are then lost when the
    /// leader dies or is cut off; `raftmq-jepsen` must report that. Logged loudly at start-up. Only builds
    /// with the `unsafe-ack-before-quorum` cargo feature accept `true`; [`BrokerConfig::validate`] refuses it
    /// everywhere else.
    #[serde(default)]
    pub unsafe_ack_before_quorum: bool,
    /// **UNSAFE, for testing the chaos checker only**: the leader delivers scheduled messages (delay levels
    /// and timers) this many ms before they are due, and writes delivery records that hide it from the
    /// replicated state's check. `raftmq-jepsen` must report `scheduled-early`. Only builds with the
    /// `unsafe-ack-before-quorum` cargo feature accept a non-zero value.
    #[serde(default)]
    pub unsafe_schedule_early_ms: u64,
    /// **UNSAFE, for testing the chaos checker only**: the leader also stores every transactional half
    /// message in its real queue as soon as it is stored, so it is visible before (and without) a commit,
    /// and a commit makes it visible a second time. `raftmq-jepsen` must report `txn-half-visible` /
    /// `txn-aborted-visible`. Only builds with the `unsafe-ack-before-quorum` cargo feature accept `true`.
    #[serde(default)]
    pub unsafe_txn_visible_at_half: bool,
    /// Client connections served at once; one more is accepted and closed at once (raftmq; RocketMQ has
    /// no cap).
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
    /// Requests of one connection received and not yet answered; past it that connection is not read.
    #[serde(default = "default_conn_inflight_requests_max")]
    pub conn_inflight_requests_max: usize,
    /// Frame bytes of one connection's requests received and not yet answered; past it that connection is
    /// not read. At least one maximal frame (16 MiB).
    #[serde(default = "default_conn_inflight_bytes_max")]
    pub conn_inflight_bytes_max: usize,
    /// Frame bytes of all connections' requests received and not yet answered; past it the connection whose
    /// request would exceed it is not read. At least `connInflightBytesMax`.
    #[serde(default = "default_server_inflight_bytes_max")]
    pub server_inflight_bytes_max: usize,
    /// A client connection with no frame received and no request in flight for this long is closed
    /// (RocketMQ `serverChannelMaxIdleTimeSeconds` × 1000; clients heartbeat every 30 s).
    #[serde(default = "default_conn_idle_ms_max")]
    pub conn_idle_ms_max: u64,
    /// TLS on the client port (RocketMQ `tls.server.mode`): `disabled` (plain only), `permissive` (TLS and
    /// plain on the one port, told apart by the first byte) or `enforcing` (TLS only).
    #[serde(default = "default_tls_server_mode")]
    pub tls_server_mode: String,
    /// PEM certificate chain of the client port, leaf first (`tls.server.certPath`); required unless
    /// `tlsServerMode` is `disabled`. Re-read every `tlsReloadIntervalMs`.
    #[serde(default)]
    pub tls_server_cert_path: Option<PathBuf>,
    /// PEM private key of that certificate (`tls.server.keyPath`; PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[serde(default)]
    pub tls_server_key_path: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates (`tls.server.trustCertPath`).
    #[serde(default)]
    pub tls_server_trust_cert_path: Option<PathBuf>,
    /// Clients must present a certificate signed by `tlsServerTrustCertPath` (`tls.server.need.client.auth`
    /// = `require`; `false` is `optional` when a trust file is set, `none` otherwise).
    #[serde(default)]
    pub tls_server_need_client_auth: bool,
    /// A TLS handshake on the client port not finished within this is abandoned.
    #[serde(default = "default_tls_handshake_timeout_ms")]
    pub tls_handshake_timeout_ms: u64,
    /// TLS handshakes running at once on the client port; a connection past it is closed at once.
    #[serde(default = "default_tls_handshakes_inflight_max")]
    pub tls_handshakes_inflight_max: usize,
    /// Largest certificate, key or trust file read (server and client side).
    #[serde(default = "default_tls_cert_file_bytes_max")]
    pub tls_cert_file_bytes_max: u64,
    /// How often the server's certificate files are re-read; a changed set serves new connections (0: never).
    #[serde(default = "default_tls_reload_interval_ms")]
    pub tls_reload_interval_ms: u64,
    /// This broker's own client connections — registration with the nameservers, requests forwarded to the
    /// Raft leader, membership probes — use TLS (RocketMQ `tls.enable`). Needed when those ports enforce TLS.
    #[serde(default)]
    pub tls_client_enable: bool,
    /// PEM CA certificates this broker trusts as a TLS client (`tls.client.trustCertPath`); required with
    /// `tlsClientEnable`. The name checked is the host of the address connected to.
    #[serde(default)]
    pub tls_client_trust_cert_path: Option<PathBuf>,
    /// Client certificate chain presented to ports that require one (`tls.client.certPath`).
    #[serde(default)]
    pub tls_client_cert_path: Option<PathBuf>,
    /// Its private key (`tls.client.keyPath`).
    #[serde(default)]
    pub tls_client_key_path: Option<PathBuf>,
    /// Most topics, retry and dead-letter topics included (checked before a topic is proposed; at most
    /// [`TOPICS_MAX_LIMIT`], so that the nameserver registration carrying the whole topic table stays
    /// within the 16 MiB frame limit).
    #[serde(default = "default_topics_max")]
    pub topics_max: usize,
    /// Most consumer groups with committed offsets (per group, offsets exist only for existing queues).
    #[serde(default = "default_groups_max")]
    pub offset_groups_max: usize,
    /// Most consumer groups with live clients (heartbeats).
    #[serde(default = "default_groups_max")]
    pub consumer_groups_max: usize,
    /// Most producer groups with live clients (heartbeats).
    #[serde(default = "default_groups_max")]
    pub producer_groups_max: usize,
    /// Most clients per consumer or producer group.
    #[serde(default = "default_per_group_max")]
    pub clients_per_group_max: usize,
    /// Most subscribed topics per consumer group.
    #[serde(default = "default_per_group_max")]
    pub subscriptions_per_group_max: usize,
    /// Serve SQL92 property filters (`MessageSelector.bySql`) to consumers (RocketMQ
    /// `enablePropertyFilter`, whose default is false). Default true: raftmq evaluates a selector only at
    /// pull time, only for SQL92 subscriptions, within bounded expressions and [`BrokerConfig::pull_filter_scan_max`],
    /// so it costs nothing to other consumers. When false, SQL92 pulls and CHECK_CLIENT_CONFIG are refused
    /// with RocketMQ's SYSTEM_ERROR "The broker does not support consumer to filter message by SQL92".
    #[serde(default = "default_true")]
    pub enable_property_filter: bool,
    /// Most messages one SQL92-filtered pull reads and evaluates (`pullFilterScanMax`); a pull that finds
    /// no match among them answers PULL_RETRY_IMMEDIATELY with `nextBeginOffset` past them.
    #[serde(default = "default_pull_filter_scan_max")]
    pub pull_filter_scan_max: usize,
    /// Most queue locks held at once (orderly consumers), over all groups; replicated state, enforced at
    /// apply with the value the leader puts into each lock entry.
    #[serde(default = "default_locks_max")]
    pub locks_max: usize,
    /// Lease of a queue lock from its grant or last renewal, by the replicated clock (ms; RocketMQ's
    /// `rocketmq.broker.rebalance.lockMaxLiveTime`, 60 s). Clients renew every 20 s.
    #[serde(default = "default_lock_ttl_ms")]
    pub lock_ttl_ms: u64,
    /// Most consume-queue files mapped at once; colder ones are unmapped and mapped again on use.
    #[serde(default = "default_mapped_files_max")]
    pub mapped_files_max: usize,
    /// Delay of each level (RocketMQ `messageDelayLevel`, e.g. `"1s 5s 10s 30s 1m … 2h"`; units ms, s, m, h,
    /// d). It changes the meaning of stored messages, so the group's table is replicated state: the first
    /// leader of a group whose state holds no table proposes this one; later a differing value here is
    /// only logged, and `raftmq admin delay-levels set` changes the replicated table.
    #[serde(default = "default_delay_levels")]
    pub message_delay_level: String,
    /// A new leader whose first store-clock stamp is more than this many ms past the group's last stamped
    /// time logs a warning (its clock may be wrong; scheduled messages due in between are delivered at once).
    #[serde(default = "default_clock_jump_warn_ms")]
    pub clock_jump_warn_ms: u64,
    /// Longest timer delay accepted, seconds (RocketMQ 5 `timerMaxDelaySec`; its default is 3 days). At
    /// most [`TIMER_MAX_DELAY_SEC_LIMIT`] (49 days, within the longest timer line).
    #[serde(default = "default_timer_max_delay_sec")]
    pub timer_max_delay_sec: u64,
    /// A `TIMER_DELIVER_MS` this many ms in the past or less is delivered at once; further in the past it
    /// is refused with 13 MESSAGE_ILLEGAL (a wrong client clock, or a stale resend).
    #[serde(default = "default_timer_past_tolerance_ms")]
    pub timer_past_tolerance_ms: u64,
    /// Most timer messages pending at once; a timer send beyond it gets 14 SERVICE_NOT_AVAILABLE
    /// (`timerMessagesMax`; RocketMQ's nearest is `timerCongestNumEachSlot`).
    #[serde(default = "default_timer_messages_max")]
    pub timer_messages_max: u64,
    /// Most scheduled messages one delivery entry carries (`scheduleDeliverBatchMax`).
    #[serde(default = "default_schedule_deliver_batch_max")]
    pub schedule_deliver_batch_max: usize,
    /// A pending transaction is first checked back this many ms after its half message was stored
    /// (RocketMQ `transactionTimeOut`), or after the producer's `CHECK_IMMUNITY_TIME_IN_SECONDS` if longer.
    #[serde(default = "default_transaction_timeout")]
    pub transaction_time_out: u64,
    /// Then again every this many ms (RocketMQ `transactionCheckInterval`).
    #[serde(default = "default_transaction_check_interval")]
    pub transaction_check_interval: u64,
    /// Check-backs before an undecided transaction is parked in `TRANS_CHECK_MAX_TIME_TOPIC`
    /// (RocketMQ `transactionCheckMax`).
    #[serde(default = "default_transaction_check_max")]
    pub transaction_check_max: u32,
    /// Most transactions pending at once; a half message beyond it gets 14 SERVICE_NOT_AVAILABLE
    /// (`transactionPendingMax`).
    #[serde(default = "default_transaction_pending_max")]
    pub transaction_pending_max: usize,
    /// Most check-backs (and parkings) one pass of the leader's check service makes
    /// (`transactionCheckBatchMax`); the rest wait for the next pass, a second later.
    #[serde(default = "default_transaction_check_batch_max")]
    pub transaction_check_batch_max: usize,
    /// How long a client message id (`UNIQ_KEY`) is remembered for de-duplicating retried sends, ms
    /// (`dedupWindowMs`; 0 turns de-duplication off). Replicated: the leader proposes its value when the
    /// group's differs, so set the same value on every node.
    #[serde(default = "default_dedup_window_ms")]
    pub dedup_window_ms: u64,
    /// Flow control: most produce requests waiting for the leader's Raft log at once (`sendQueueMax`,
    /// 1..=1048576); a send past it gets 2 SYSTEM_BUSY `[OVERLOAD]` at once.
    #[serde(default = "default_send_queue_max")]
    pub send_queue_max: usize,
    /// Flow control: most encoded bytes of those requests (`sendQueueBytesMax`, entryBytesMax..=4 GiB); a send
    /// past it gets 2 SYSTEM_BUSY `[OVERLOAD]` at once.
    #[serde(default = "default_send_queue_bytes_max")]
    pub send_queue_bytes_max: usize,
    /// Flow control: a send that waited longer than this for the Raft log is answered 2 SYSTEM_BUSY
    /// `[TIMEOUT_CLEAN_QUEUE]` unproposed, ms (`waitTimeMillsInSendQueue`, RocketMQ's key and default 200;
    /// 1..=60000).
    #[serde(default = "default_wait_time_mills_in_send_queue")]
    pub wait_time_mills_in_send_queue: u64,
    /// Most requests a member that is not the leader forwards to the leader at once (`forwardInflightMax`,
    /// 1..=65536); one more gets 14 SERVICE_NOT_AVAILABLE naming the leader, as without forwarding.
    #[serde(default = "default_forward_inflight_max")]
    pub forward_inflight_max: usize,
    /// Most bytes (bodies and ext fields) of requests being forwarded at once (`forwardInflightBytesMax`,
    /// 1..=1 GiB); a request over it gets 14 naming the leader.
    #[serde(default = "default_forward_inflight_bytes_max")]
    pub forward_inflight_bytes_max: usize,
    /// How long a forwarded request waits for the leader's connection and answer, ms (`forwardTimeoutMs`,
    /// 1..=60000); a lost answer is 1 SYSTEM_ERROR "outcome unknown".
    #[serde(default = "default_forward_timeout_ms")]
    pub forward_timeout_ms: u64,
    /// How long a write waits for a leader while none is known (an election) or this member is a leader still
    /// applying earlier entries, ms (`leaderWaitMs`, 0..=60000; 0: answer 14 at once).
    #[serde(default = "default_leader_wait_ms")]
    pub leader_wait_ms: u64,
    /// On SIGTERM, how long the leader tries to hand leadership to a follower before it stops as leader anyway,
    /// ms (`shutdownHandoffTimeoutMs`, 1000..=60000). See leave.rs.
    #[serde(default = "default_shutdown_handoff_timeout_ms")]
    pub shutdown_handoff_timeout_ms: u64,
    /// On SIGTERM, after the hand-off: the drain ends once no client request (heartbeats aside) arrived for
    /// this long and no forwarded request is in flight, ms (`shutdownDrainQuietMs`, 0..=60000).
    #[serde(default = "default_shutdown_drain_quiet_ms")]
    pub shutdown_drain_quiet_ms: u64,
    /// On SIGTERM: the longest drain, ms (`shutdownDrainMaxMs`, 0..=300000; 0: no drain). Clients with a stale
    /// route keep sending here until they poll the nameserver (RocketMQ clients every 30 s), and are forwarded
    /// meanwhile; the default 35000 outlasts one poll.
    #[serde(default = "default_shutdown_drain_max_ms")]
    pub shutdown_drain_max_ms: u64,
    /// Most message ids the de-duplication window holds (`dedupKeysMax`); the oldest are forgotten first.
    #[serde(default = "default_dedup_keys_max")]
    pub dedup_keys_max: u64,
    /// Keep messages at least this many hours (RocketMQ `fileReservedTime`, 72): a commitlog segment whose
    /// newest message is older may be deleted, during `deleteWhen` hours.
    #[serde(default = "default_file_reserved_time")]
    pub file_reserved_time: u64,
    /// The same in ms, overriding `fileReservedTime` when set (short retention for tests and soak runs).
    #[serde(default)]
    pub file_reserved_time_ms: Option<u64>,
    /// Hours of the day (local time, `;`-separated, RocketMQ `deleteWhen`, "04") when expired segments are
    /// deleted; `*` = any hour. Above `diskMaxUsedSpaceRatio` they are deleted at any hour.
    #[serde(default = "default_delete_when")]
    pub delete_when: String,
    /// Used fraction of the store's filesystem above which the leader refuses sends with 14 "disk full"
    /// (cleared 0.05 below it) and expired segments go at any hour (`diskMaxUsedSpaceRatio`, 0.75; a value
    /// above 1 is read as percent, as RocketMQ writes it).
    #[serde(default = "default_disk_max_used_space_ratio")]
    pub disk_max_used_space_ratio: f64,
    /// Used fraction above which the oldest segments are deleted whatever their age
    /// (`diskSpaceCleanForciblyRatio`, 0.85).
    #[serde(default = "default_disk_space_clean_forcibly_ratio")]
    pub disk_space_clean_forcibly_ratio: f64,
    /// Size cap of the group's retained commitlog in bytes; older segments go whatever their age
    /// (`retentionBytesMax`; 0 = no cap). Replicas decide through the leader, so one value counts: the leader's.
    #[serde(default)]
    pub retention_bytes_max: u64,
    /// How often retention runs, ms (RocketMQ `cleanResourceInterval`, 10 000).
    #[serde(default = "default_clean_resource_interval")]
    pub clean_resource_interval: u64,
    /// Most segments one retention decision deletes (RocketMQ `deleteFileBatchMax`, 10).
    #[serde(default = "default_delete_file_batch_max")]
    pub delete_file_batch_max: u64,
    /// Keep the node-local message index that answers QUERY_MESSAGE (`messageIndexEnable`, as RocketMQ).
    #[serde(default = "default_true")]
    pub message_index_enable: bool,
    /// Hash slots per index file (`indexSlotsMax`; RocketMQ `maxHashSlotNum`): 4 bytes each.
    #[serde(default = "default_index_slots_max")]
    pub index_slots_max: u32,
    /// Units (keys of messages) per index file (`indexUnitsMax`; RocketMQ `maxIndexNum`): 24 bytes each.
    #[serde(default = "default_index_units_max")]
    pub index_units_max: u32,
    /// Index files kept (`indexFilesMax`); the oldest is deleted beyond it.
    #[serde(default = "default_index_files_max")]
    pub index_files_max: usize,
    /// File holding the cluster secret (`clusterSecretFile`): one secret per line, the one this node signs with
    /// first, any one accepted (rotation). It authenticates the Raft port (every peer connection) and this
    /// broker's registrations with the nameservers. Recommended over `clusterSecret`. Neither set: both are
    /// unauthenticated (a warning at start-up).
    #[serde(default)]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster secret inline (`clusterSecret`; several comma-separated); prefer `clusterSecretFile`, which
    /// keeps the secret out of the config file. Never printed (`Debug` shows `<redacted>`).
    #[serde(default)]
    pub cluster_secret: Option<SecretString>,
    /// Least time between two leader transfers this node takes part in, as leader or as target
    /// (`leaderTransferIntervalMinMs`); 0 = none. A transfer fences writes for about
    /// `raftElectionMinMs + raftHeartbeatMs` (the lease voters keep).
    #[serde(default = "default_leader_transfer_interval_min_ms")]
    pub leader_transfer_interval_min_ms: u64,
    /// A leader that cannot replicate — entries waiting while the index a quorum has matched stands still for
    /// this long — hands leadership to its most caught-up follower (`leaderStallHandoffMs`); 0 = never. 0 or
    /// within `2 × raftElectionMaxMs ..= 600000`. Hand-offs share `leaderTransferIntervalMinMs` with transfers.
    #[serde(default = "default_leader_stall_handoff_ms")]
    pub leader_stall_handoff_ms: u64,
    /// A member that is not the leader and has more than this many committed log entries still to apply
    /// (`followerReadLagMaxEntries`) answers a pull it has nothing for with PULL_RETRY_IMMEDIATELY,
    /// `suggestWhichBrokerId` 0 and the same offset at once, instead of holding it, so the consumer pulls from
    /// the leader (or another member) rather than wait on a member that is far behind; 0 = never. At most
    /// [`FOLLOWER_READ_LAG_MAX_ENTRIES_MAX`].
    #[serde(default = "default_follower_read_lag_max_entries")]
    pub follower_read_lag_max_entries: u64,
    /// Check every client request against the ACL in `aclFile` (RocketMQ `aclEnable`; see docs/security.md).
    #[serde(default)]
    pub acl_enable: bool,
    /// The ACL file (TOML form of RocketMQ's `plain_acl.yml`); required with `aclEnable`, re-read when it
    /// changes. Relative paths are relative to the broker's working directory.
    #[serde(default)]
    pub acl_file: Option<PathBuf>,
    /// Where `/metrics` is served over HTTP, `host:port` (`metricsListen`); absent or empty: no metrics
    /// server (see docs/operations.md, "Watching a cluster").
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Topics with their own `topic` label in the per-topic metrics (`metricsTopicsMax`, 1..=100000); the
    /// rest are counted under `topic="_other"`.
    #[serde(default = "default_metrics_topics_max")]
    pub metrics_topics_max: usize,
    /// Most `consumer_lag` (group, topic, queue) and `consumer_group_lag` series one scrape exports
    /// (`metricsLagSeriesMax`, 1..=1000000); the rest are counted in `consumer_lag_series_dropped`.
    #[serde(default = "default_metrics_lag_series_max")]
    pub metrics_lag_series_max: usize,
    /// Members of the Raft group.
    pub peers: Vec<Peer>,
}

fn default_metrics_topics_max() -> usize {
    crate::metrics::METRICS_TOPICS_MAX_DEFAULT
}
fn default_metrics_lag_series_max() -> usize {
    crate::metrics::METRICS_LAG_SERIES_MAX_DEFAULT
}

/// Largest accepted `timerMaxDelaySec`: 49 days.
pub const TIMER_MAX_DELAY_SEC_LIMIT: u64 = 49 * 24 * 3600;

fn default_timer_max_delay_sec() -> u64 {
    40 * 24 * 3600
}
fn default_timer_past_tolerance_ms() -> u64 {
    60_000
}
fn default_timer_messages_max() -> u64 {
    100_000_000
}
fn default_delay_levels() -> String {
    raftmq_raft::types::DEFAULT_DELAY_LEVELS.into()
}
fn default_clock_jump_warn_ms() -> u64 {
    60_000
}
fn default_schedule_deliver_batch_max() -> usize {
    1_024
}
fn default_transaction_timeout() -> u64 {
    6_000
}
fn default_transaction_check_interval() -> u64 {
    60_000
}
fn default_transaction_check_max() -> u32 {
    15
}
fn default_transaction_pending_max() -> usize {
    100_000
}
fn default_transaction_check_batch_max() -> usize {
    1_000
}
fn default_dedup_window_ms() -> u64 {
    120_000
}
fn default_send_queue_max() -> usize {
    raftmq_raft::node::SEND_QUEUE_MAX_DEFAULT
}
fn default_send_queue_bytes_max() -> usize {
    raftmq_raft::node::SEND_QUEUE_BYTES_MAX_DEFAULT
}
fn default_wait_time_mills_in_send_queue() -> u64 {
    raftmq_raft::node::SEND_QUEUE_WAIT_MS_DEFAULT
}
fn default_forward_inflight_max() -> usize {
    1024
}
fn default_forward_inflight_bytes_max() -> usize {
    64 << 20
}
fn default_forward_timeout_ms() -> u64 {
    5_000
}
fn default_leader_wait_ms() -> u64 {
    3_000
}
fn default_shutdown_handoff_timeout_ms() -> u64 {
    10_000
}
fn default_shutdown_drain_quiet_ms() -> u64 {
    2_000
}
fn default_shutdown_drain_max_ms() -> u64 {
    35_000
}
fn default_dedup_keys_max() -> u64 {
    1_000_000
}
fn default_file_reserved_time() -> u64 {
    72
}
fn default_delete_when() -> String {
    "04".into()
}
fn default_disk_max_used_space_ratio() -> f64 {
    0.75
}
fn default_disk_space_clean_forcibly_ratio() -> f64 {
    0.85
}
fn default_clean_resource_interval() -> u64 {
    10_000
}
fn default_delete_file_batch_max() -> u64 {
    10
}

/// A ratio as configured: a fraction, or a percent above 1 (RocketMQ writes `diskMaxUsedSpaceRatio=75`).
pub fn ratio(v: f64) -> f64 {
    if v > 1.0 {
        v / 100.0
    } else {
        v
    }
}

/// Parses `deleteWhen`: `*`, or hours 0..=23 separated by `;`.
pub fn parse_delete_when(s: &str) -> Result<Option<Vec<u32>>, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(None);
    }
    let mut hours = Vec::new();
    for h in s.split(';').map(str::trim).filter(|h| !h.is_empty()) {
        match h.parse::<u32>() {
            Ok(n) if n < 24 => hours.push(n),
            _ => return Err(format!("deleteWhen: {h:?} is not an hour 0..23 (use e.g. \"04\" or \"04;16\" or \"*\")")),
        }
    }
    if hours.is_empty() {
        return Err("deleteWhen: no hour given (use e.g. \"04\" or \"*\")".into());
    }
    Ok(Some(hours))
}

fn default_index_slots_max() -> u32 {
    raftmq_raft::message_index::INDEX_SLOTS_MAX_DEFAULT
}
fn default_index_units_max() -> u32 {
    raftmq_raft::message_index::INDEX_UNITS_MAX_DEFAULT
}
fn default_index_files_max() -> usize {
    raftmq_raft::message_index::INDEX_FILES_MAX_DEFAULT
}

/// Largest accepted `topicsMax`: a registration of this many topics with 127-byte names encodes to less
/// than the 16 MiB remoting frame limit (tested in `broker.rs`).
pub const TOPICS_MAX_LIMIT: usize = 32_768;

fn default_cluster() -> String {
    "DefaultCluster".into()
}
fn default_flush() -> FlushDiskType {
    FlushDiskType::SyncFlush
}
fn default_flush_interval() -> u64 {
    500
}
fn default_segment() -> u64 {
    1 << 30
}
fn default_prefill() -> u64 {
    8 << 20
}
fn default_max_message() -> usize {
    4 << 20
}
fn default_entry_bytes_max() -> usize {
    ENTRY_BYTES_MAX_DEFAULT
}
fn default_true() -> bool {
    true
}
/// Default of `pullFilterScanMax`.
pub const PULL_FILTER_SCAN_MAX_DEFAULT: usize = 1024;
/// Largest `pullFilterScanMax` accepted.
pub const PULL_FILTER_SCAN_MAX_LIMIT: usize = 65_536;
fn default_pull_filter_scan_max() -> usize {
    PULL_FILTER_SCAN_MAX_DEFAULT
}
fn default_queue_nums() -> u32 {
    4
}
fn default_suspend() -> u64 {
    15_000
}
fn default_pull_parked_per_conn_max() -> usize {
    crate::parked::PULL_PARKED_PER_CONN_MAX_DEFAULT
}
fn default_pull_parked_max() -> usize {
    crate::parked::PULL_PARKED_MAX_DEFAULT
}
fn default_topics_max() -> usize {
    TOPICS_MAX_LIMIT
}
fn default_groups_max() -> usize {
    10_000
}
fn default_per_group_max() -> usize {
    1_024
}
fn default_locks_max() -> usize {
    100_000
}
fn default_lock_ttl_ms() -> u64 {
    60_000
}

/// Range of `lockTtlMs`: at least one client renewal period (20 s) is needed for a holder to keep its
/// queues; the lower bound only refuses nonsense, the upper bounds how long a dead client blocks a queue.
pub const LOCK_TTL_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=600_000;
fn default_mapped_files_max() -> usize {
    4_096
}
fn default_heartbeat() -> u64 {
    100
}
// 250/500 rather than openraft's 150/300: a leader's frames can stall behind a busy scheduler on a small
// host, and pre-vote (raftmq-raft's prevote.rs) only keeps a lone follower's timeout from deposing the leader,
// not both followers'. Failover ≈ U[min, max] + a vote round; the lease voters honour is `min` (thesis
// §4.2.3), so nothing is added to it (docs/benchmarks.md, "Failover").
fn default_election_min() -> u64 {
    250
}
fn default_leader_transfer_interval_min_ms() -> u64 {
    raftmq_raft::node::TRANSFER_INTERVAL_MIN_MS_DEFAULT
}
fn default_leader_stall_handoff_ms() -> u64 {
    raftmq_raft::node::STALL_HANDOFF_MS_DEFAULT
}

/// Default `followerReadLagMaxEntries`: 64 entries. A healthy follower applies within an entry or two of the
/// leader's commit (one produce entry is in flight at a time); 64 is far behind, yet small against a backlog
/// that takes seconds to replicate.
pub const FOLLOWER_READ_LAG_MAX_ENTRIES_DEFAULT: u64 = 64;

/// Largest `followerReadLagMaxEntries`: 2^32.
pub const FOLLOWER_READ_LAG_MAX_ENTRIES_MAX: u64 = 1 << 32;

fn default_follower_read_lag_max_entries() -> u64 {
    FOLLOWER_READ_LAG_MAX_ENTRIES_DEFAULT
}

fn default_election_max() -> u64 {
    500
}

/// Bytes of the Raft entry of one message with a body of `body_bytes`, the longest topic and the longest
/// properties, in the stored layout.
pub fn single_message_entry_bytes(body_bytes: usize) -> usize {
    let stored = STORED_MESSAGE_FIXED_LEN + TOPIC_BYTES_MAX + PROPERTIES_BYTES_MAX + body_bytes;
    PRODUCE_HEADER_BYTES + produce_queue_len(TOPIC_BYTES_MAX, [stored])
}

fn default_connections_max() -> usize {
    raftmq_net::server::CONNECTIONS_MAX_DEFAULT
}
fn default_conn_inflight_requests_max() -> usize {
    raftmq_net::server::CONN_INFLIGHT_REQUESTS_MAX_DEFAULT
}
fn default_conn_inflight_bytes_max() -> usize {
    raftmq_net::server::CONN_INFLIGHT_BYTES_MAX_DEFAULT
}
fn default_server_inflight_bytes_max() -> usize {
    raftmq_net::server::SERVER_INFLIGHT_BYTES_MAX_DEFAULT
}
fn default_conn_idle_ms_max() -> u64 {
    raftmq_net::server::CONN_IDLE_MS_MAX_DEFAULT
}
fn default_tls_server_mode() -> String {
    raftmq_net::TlsMode::Disabled.name().to_string()
}
fn default_tls_handshake_timeout_ms() -> u64 {
    raftmq_net::tls::TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT
}
fn default_tls_handshakes_inflight_max() -> usize {
    raftmq_net::tls::TLS_HANDSHAKES_INFLIGHT_MAX_DEFAULT
}
fn default_tls_cert_file_bytes_max() -> u64 {
    raftmq_net::tls::TLS_CERT_FILE_BYTES_MAX_DEFAULT
}
fn default_tls_reload_interval_ms() -> u64 {
    raftmq_net::tls::TLS_RELOAD_INTERVAL_MS_DEFAULT
}

/// A configuration that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid broker config: {0}")]
pub struct ConfigError(pub String);

impl BrokerConfig {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }

    /// This node's peer entry.
    pub fn me(&self) -> Result<&Peer, ConfigError> {
        self.peers.iter().find(|p| p.id == self.node_id).ok_or_else(|| ConfigError(format!("nodeId {} is not in peers", self.node_id)))
    }

    /// Nameserver addresses.
    pub fn namesrv_addrs(&self) -> Vec<String> {
        self.namesrv_addr.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }

    /// The client address of the member whose Raft address is `raft_addr`.
    pub fn client_addr_of_raft(&self, raft_addr: &str) -> Option<&str> {
        self.peers.iter().find(|p| p.raft_addr == raft_addr).map(|p| p.client_addr.as_str())
    }

    /// The client address of member `id`.
    pub fn client_addr_of(&self, id: u64) -> Option<&str> {
        self.peers.iter().find(|p| p.id == id).map(|p| p.client_addr.as_str())
    }

    /// The cluster secrets from `clusterSecretFile` or `clusterSecret`; `None` when neither is set.
    ///
    /// # Errors
    /// Both set, an unreadable file, or secrets that break a rule of [`ClusterSecrets::parse`] (the message
    /// never holds a secret).
    pub fn cluster_secrets(&self) -> Result<Option<ClusterSecrets>, ConfigError> {
        let text = match (&self.cluster_secret_file, &self.cluster_secret) {
            (Some(_), Some(_)) => return Err(ConfigError("set clusterSecretFile or clusterSecret, not both".into())),
            (None, None) => return Ok(None),
            (Some(path), None) => {
                std::fs::read_to_string(path).map_err(|e| ConfigError(format!("clusterSecretFile {}: {e}", path.display())))?
            }
            (None, Some(s)) => s.expose().to_string(),
        };
        ClusterSecrets::parse(&text).map(Some).map_err(|why| match &self.cluster_secret_file {
            Some(path) => ConfigError(format!("clusterSecretFile {}: {why}", path.display())),
            None => ConfigError(format!("clusterSecret: {why}")),
        })
    }

    /// Long-poll limit.
    /// `forwardTimeoutMs` as a duration.
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }

    pub fn long_polling_max(&self) -> Duration {
        Duration::from_millis(self.long_polling_max_ms)
    }

    /// The client-facing remoting server's limits.
    pub fn server_options(&self) -> raftmq_net::ServerOptions {
        raftmq_net::ServerOptions {
            connections_max: self.connections_max,
            conn_inflight_requests_max: self.conn_inflight_requests_max,
            conn_inflight_bytes_max: self.conn_inflight_bytes_max,
            server_inflight_bytes_max: self.server_inflight_bytes_max,
            conn_idle_ms_max: self.conn_idle_ms_max,
            tls: raftmq_net::ServerTlsOptions {
                // An unknown mode is refused by `validate`; here it stays `disabled`.
                mode: self.tls_server_mode.parse().unwrap_or_default(),
                cert_path: self.tls_server_cert_path.clone(),
                key_path: self.tls_server_key_path.clone(),
                trust_cert_path: self.tls_server_trust_cert_path.clone(),
                need_client_auth: self.tls_server_need_client_auth,
                handshake_timeout_ms: self.tls_handshake_timeout_ms,
                handshakes_inflight_max: self.tls_handshakes_inflight_max,
                cert_file_bytes_max: self.tls_cert_file_bytes_max,
                reload_interval_ms: self.tls_reload_interval_ms,
            },
            ..raftmq_net::ServerOptions::default()
        }
    }

    /// The TLS settings of this broker's own client connections, loaded from their files; `None` unless
    /// `tlsClientEnable`.
    ///
    /// # Errors
    /// [`raftmq_net::TlsError`] naming the file and what is wrong with it.
    pub fn client_tls(&self) -> Result<Option<raftmq_net::ClientTls>, raftmq_net::TlsError> {
        if !self.tls_client_enable {
            return Ok(None);
        }
        raftmq_net::ClientTls::load(&raftmq_net::ClientTlsOptions {
            trust_cert_path: self.tls_client_trust_cert_path.clone(),
            server_name: None,
            cert_path: self.tls_client_cert_path.clone(),
            key_path: self.tls_client_key_path.clone(),
        })
        .map(Some)
    }

    /// Checks cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.leader_transfer_interval_min_ms > raftmq_raft::node::TRANSFER_INTERVAL_MIN_MS_MAX {
            return bad(format!(
                "leaderTransferIntervalMinMs {} must be at most {}",
                self.leader_transfer_interval_min_ms,
                raftmq_raft::node::TRANSFER_INTERVAL_MIN_MS_MAX
            ));
        }
        let stall_min = 2 * self.raft_election_max_ms;
        if self.leader_stall_handoff_ms != 0
            && !(stall_min..=raftmq_raft::node::STALL_HANDOFF_MS_MAX).contains(&self.leader_stall_handoff_ms)
        {
            return bad(format!(
                "leaderStallHandoffMs {} must be 0 (never) or within {stall_min}..={} (at least twice raftElectionMaxMs)",
                self.leader_stall_handoff_ms,
                raftmq_raft::node::STALL_HANDOFF_MS_MAX
            ));
        }
        if self.follower_read_lag_max_entries > FOLLOWER_READ_LAG_MAX_ENTRIES_MAX {
            return bad(format!(
                "followerReadLagMaxEntries {} must be at most {FOLLOWER_READ_LAG_MAX_ENTRIES_MAX} (0 = never redirect)",
                self.follower_read_lag_max_entries
            ));
        }
        if self.cluster_secret_file.is_some() && self.cluster_secret.is_some() {
            return bad("set clusterSecretFile or clusterSecret, not both".into());
        }
        if self.acl_enable && self.acl_file.is_none() {
            return bad("aclEnable needs aclFile, the ACL file's path".into());
        }
        if let Err(why) = raftmq_raft::types::parse_delay_levels(&self.message_delay_level) {
            return bad(format!("messageDelayLevel: {why}"));
        }
        if self.schedule_deliver_batch_max == 0 || self.schedule_deliver_batch_max > 65_536 {
            return bad("scheduleDeliverBatchMax must be 1..=65536".into());
        }
        if let Err(why) = parse_delete_when(&self.delete_when) {
            return bad(why);
        }
        let (full, force) = (ratio(self.disk_max_used_space_ratio), ratio(self.disk_space_clean_forcibly_ratio));
        if !(0.1..=0.99).contains(&full) || !(0.1..=0.99).contains(&force) {
            return bad(format!(
                "diskMaxUsedSpaceRatio ({full}) and diskSpaceCleanForciblyRatio ({force}) must be fractions in 0.10..=0.99 (or percent 10..=99)"
            ));
        }
        if self.clean_resource_interval == 0 || self.delete_file_batch_max == 0 {
            return bad("cleanResourceInterval and deleteFileBatchMax must be at least 1".into());
        }
        if self.transaction_check_interval == 0 || self.transaction_check_batch_max == 0 {
            return bad("transactionCheckInterval and transactionCheckBatchMax must be at least 1".into());
        }
        {
            use raftmq_raft::node::{SEND_QUEUE_BYTES_MAX_LIMIT, SEND_QUEUE_MAX_LIMIT, SEND_QUEUE_WAIT_MS_MAX_LIMIT};
            if !(1..=SEND_QUEUE_MAX_LIMIT).contains(&self.send_queue_max) {
                return bad(format!("sendQueueMax must be 1..={SEND_QUEUE_MAX_LIMIT}"));
            }
            if !(self.entry_bytes_max..=SEND_QUEUE_BYTES_MAX_LIMIT).contains(&self.send_queue_bytes_max) {
                return bad(format!("sendQueueBytesMax must be entryBytesMax ({})..={SEND_QUEUE_BYTES_MAX_LIMIT}", self.entry_bytes_max));
            }
            if !(1..=SEND_QUEUE_WAIT_MS_MAX_LIMIT).contains(&self.wait_time_mills_in_send_queue) {
                return bad(format!("waitTimeMillsInSendQueue must be 1..={SEND_QUEUE_WAIT_MS_MAX_LIMIT}"));
            }
        }
        {
            use crate::forward::{FORWARD_INFLIGHT_BYTES_MAX_LIMIT, FORWARD_INFLIGHT_MAX_LIMIT, FORWARD_WAIT_MS_MAX};
            if !(1..=FORWARD_INFLIGHT_MAX_LIMIT).contains(&self.forward_inflight_max) {
                return bad(format!("forwardInflightMax must be 1..={FORWARD_INFLIGHT_MAX_LIMIT}"));
            }
            if !(1..=FORWARD_INFLIGHT_BYTES_MAX_LIMIT).contains(&self.forward_inflight_bytes_max) {
                return bad(format!("forwardInflightBytesMax must be 1..={FORWARD_INFLIGHT_BYTES_MAX_LIMIT}"));
            }
            if !(1..=FORWARD_WAIT_MS_MAX).contains(&self.forward_timeout_ms) {
                return bad(format!("forwardTimeoutMs must be 1..={FORWARD_WAIT_MS_MAX}"));
            }
            if self.leader_wait_ms > FORWARD_WAIT_MS_MAX {
                return bad(format!("leaderWaitMs must be at most {FORWARD_WAIT_MS_MAX}"));
            }
        }
        {
            use crate::leave::{DRAIN_MAX_MS_LIMIT, DRAIN_QUIET_MS_LIMIT, HANDOFF_TIMEOUT_MS_LIMITS};
            if !HANDOFF_TIMEOUT_MS_LIMITS.contains(&self.shutdown_handoff_timeout_ms) {
                return bad(format!(
                    "shutdownHandoffTimeoutMs must be {}..={}",
                    HANDOFF_TIMEOUT_MS_LIMITS.start(),
                    HANDOFF_TIMEOUT_MS_LIMITS.end()
                ));
            }
            if self.shutdown_drain_quiet_ms > DRAIN_QUIET_MS_LIMIT {
                return bad(format!("shutdownDrainQuietMs must be at most {DRAIN_QUIET_MS_LIMIT}"));
            }
            if self.shutdown_drain_max_ms > DRAIN_MAX_MS_LIMIT {
                return bad(format!("shutdownDrainMaxMs must be at most {DRAIN_MAX_MS_LIMIT}"));
            }
        }
        if self.dedup_window_ms > raftmq_raft::types::DEDUP_WINDOW_MS_MAX as u64 {
            return bad(format!("dedupWindowMs must be at most {} (one day)", raftmq_raft::types::DEDUP_WINDOW_MS_MAX));
        }
        if self.dedup_window_ms > 0 && !(1..=raftmq_raft::types::DEDUP_KEYS_MAX).contains(&self.dedup_keys_max) {
            return bad(format!("dedupKeysMax must be 1..={}", raftmq_raft::types::DEDUP_KEYS_MAX));
        }
        {
            use raftmq_raft::message_index::{INDEX_FILES_LIMIT, INDEX_SLOTS_LIMIT, INDEX_UNITS_LIMIT, INDEX_UNITS_MIN};
            if !(1..=INDEX_SLOTS_LIMIT).contains(&self.index_slots_max) {
                return bad(format!("indexSlotsMax must be 1..={INDEX_SLOTS_LIMIT}"));
            }
            if !(INDEX_UNITS_MIN..=INDEX_UNITS_LIMIT).contains(&self.index_units_max) {
                return bad(format!("indexUnitsMax must be {INDEX_UNITS_MIN}..={INDEX_UNITS_LIMIT}"));
            }
            if !(1..=INDEX_FILES_LIMIT).contains(&self.index_files_max) {
                return bad(format!("indexFilesMax must be 1..={INDEX_FILES_LIMIT}"));
            }
        }
        if self.timer_max_delay_sec == 0 || self.timer_max_delay_sec > TIMER_MAX_DELAY_SEC_LIMIT {
            return bad(format!("timerMaxDelaySec must be 1..={TIMER_MAX_DELAY_SEC_LIMIT} (49 days)"));
        }
        if self.broker_name.is_empty() || self.broker_name.len() > 127 {
            return bad("brokerName must be 1..=127 bytes".into());
        }
        self.me()?;
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() {
            return bad("peer ids must be unique".into());
        }
        if ids.contains(&0) {
            return bad("peer id 0 is reserved (brokerId 0 means the leader in routes)".into());
        }
        for p in &self.peers {
            for (what, a) in [("raftAddr", &p.raft_addr), ("clientAddr", &p.client_addr)] {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return bad(format!("peer {} {what} {a:?} is not ip:port", p.id));
                }
            }
        }
        if self.raft_election_min_ms <= self.raft_heartbeat_ms || self.raft_election_max_ms <= self.raft_election_min_ms {
            return bad("need raftHeartbeatMs < raftElectionMinMs < raftElectionMaxMs".into());
        }
        if self.max_message_size == 0 || self.max_message_size as u64 + 4096 > self.mapped_file_size_commit_log {
            return bad("maxMessageSize must be positive and fit a commitlog segment with room to spare".into());
        }
        let one_message = single_message_entry_bytes(self.max_message_size);
        if self.entry_bytes_max < one_message || self.entry_bytes_max > ENTRY_BYTES_LIMIT {
            return bad(format!(
                "entryBytesMax {} must be within {one_message}..={ENTRY_BYTES_LIMIT}: at least the entry of one message of \
                 maxMessageSize {} with the longest topic and properties",
                self.entry_bytes_max, self.max_message_size
            ));
        }
        if self.entry_bytes_max as u64 + raftmq_commitlog::HEADER_LEN as u64 > self.mapped_file_size_commit_log {
            return bad(format!(
                "entryBytesMax {} plus the {}-byte record header must fit a commitlog segment (mappedFileSizeCommitLog {})",
                self.entry_bytes_max,
                raftmq_commitlog::HEADER_LEN,
                self.mapped_file_size_commit_log
            ));
        }
        if self.default_topic_queue_nums == 0 || self.default_topic_queue_nums > 1024 {
            return bad("defaultTopicQueueNums must be within 1..=1024".into());
        }
        if self.topics_max == 0 || self.topics_max > TOPICS_MAX_LIMIT {
            return bad(format!("topicsMax must be within 1..={TOPICS_MAX_LIMIT} (the nameserver registration must fit one frame)"));
        }
        for (key, v) in [
            ("offsetGroupsMax", self.offset_groups_max),
            ("consumerGroupsMax", self.consumer_groups_max),
            ("producerGroupsMax", self.producer_groups_max),
            ("clientsPerGroupMax", self.clients_per_group_max),
            ("subscriptionsPerGroupMax", self.subscriptions_per_group_max),
            ("locksMax", self.locks_max),
            ("mappedFilesMax", self.mapped_files_max),
        ] {
            if v == 0 {
                return bad(format!("{key} must be positive"));
            }
        }
        if self.pull_filter_scan_max == 0 || self.pull_filter_scan_max > PULL_FILTER_SCAN_MAX_LIMIT {
            return bad(format!("pullFilterScanMax must be within 1..={PULL_FILTER_SCAN_MAX_LIMIT}"));
        }
        if !LOCK_TTL_MS_RANGE.contains(&self.lock_ttl_ms) {
            return bad(format!(
                "lockTtlMs must be within {}..={} (clients renew locks every 20000 ms)",
                LOCK_TTL_MS_RANGE.start(),
                LOCK_TTL_MS_RANGE.end()
            ));
        }
        if self.flush_disk_type == FlushDiskType::AsyncFlush && self.flush_interval_commit_log == 0 {
            return bad("flushIntervalCommitLog must be positive".into());
        }
        if self.unsafe_ack_before_quorum && !cfg!(feature = "unsafe-ack-before-quorum") {
            return bad("unsafeAckBeforeQuorum loses acknowledged messages and exists only in chaos-test builds \
                        (cargo feature `unsafe-ack-before-quorum`, built by scripts/jepsen.sh); remove the key"
                .into());
        }
        if self.unsafe_schedule_early_ms != 0 && !cfg!(feature = "unsafe-ack-before-quorum") {
            return bad("unsafeScheduleEarlyMs delivers scheduled messages early and exists only in chaos-test builds \
                        (cargo feature `unsafe-ack-before-quorum`, built by scripts/jepsen.sh); remove the key"
                .into());
        }
        if self.unsafe_txn_visible_at_half && !cfg!(feature = "unsafe-ack-before-quorum") {
            return bad("unsafeTxnVisibleAtHalf makes uncommitted transactional messages visible and exists only in chaos-test \
                        builds (cargo feature `unsafe-ack-before-quorum`, built by scripts/jepsen.sh); remove the key"
                .into());
        }
        if let Err(e) = self.tls_server_mode.parse::<raftmq_net::TlsMode>() {
            return bad(format!("tlsServerMode: {e}"));
        }
        if self.tls_client_enable && self.tls_client_trust_cert_path.is_none() {
            return bad("tlsClientEnable needs tlsClientTrustCertPath (the CA certificates that sign the servers' certificates)".into());
        }
        if self.tls_client_cert_path.is_some() != self.tls_client_key_path.is_some() {
            return bad("tlsClientCertPath and tlsClientKeyPath go together".into());
        }
        if let Err(e) = self.server_options().tls.validate() {
            return bad(format!("TLS (tlsServerMode, tlsServerCertPath, tlsServerKeyPath, tlsServerTrustCertPath, tlsServerNeedClientAuth, tlsHandshakeTimeoutMs, tlsHandshakesInflightMax, tlsCertFileBytesMax): {e}"));
        }
        if !(1..self.conn_inflight_requests_max).contains(&self.pull_parked_per_conn_max) {
            return bad(format!(
                "pullParkedPerConnMax must be 1..connInflightRequestsMax ({}), so a connection keeps slots for its sends",
                self.conn_inflight_requests_max
            ));
        }
        if !(1..=crate::parked::PULL_PARKED_MAX_LIMIT).contains(&self.pull_parked_max) {
            return bad(format!("pullParkedMax must be 1..={}", crate::parked::PULL_PARKED_MAX_LIMIT));
        }
        if let Err(e) = self.server_options().validate() {
            return bad(format!("connection limits (connectionsMax, connInflightRequestsMax, connInflightBytesMax, serverInflightBytesMax, connIdleMsMax): {e}"));
        }
        {
            use crate::metrics::{METRICS_LAG_SERIES_MAX_LIMIT, METRICS_TOPICS_MAX_LIMIT};
            if !(1..=METRICS_TOPICS_MAX_LIMIT).contains(&self.metrics_topics_max) {
                return bad(format!("metricsTopicsMax must be 1..={METRICS_TOPICS_MAX_LIMIT}"));
            }
            if !(1..=METRICS_LAG_SERIES_MAX_LIMIT).contains(&self.metrics_lag_series_max) {
                return bad(format!("metricsLagSeriesMax must be 1..={METRICS_LAG_SERIES_MAX_LIMIT}"));
            }
        }
        Ok(())
    }
}

/// A warning when the secret file at `path` can be read or written by others than its owner and group (it
/// should be 0600 owned by the service user, or 0640 root:raftmq as packaged); `None` when it cannot, or
/// when the mode cannot be read.
pub fn secret_file_mode_warning(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o007 != 0 || mode & 0o020 != 0).then(|| {
        format!("cluster secret file {} has mode {mode:03o}: accessible beyond its owner and group; chmod 600 (or 640) it", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
brokerName = "broker-a"
nodeId = 2
namesrvAddr = "127.0.0.1:9876; 127.0.0.1:9877"
storePathRootDir = "/tmp/x"
[[peers]]
id = 1
raftAddr = "127.0.0.1:10912"
clientAddr = "127.0.0.1:10911"
[[peers]]
id = 2
raftAddr = "127.0.0.1:10922"
clientAddr = "127.0.0.1:10921"
"#;

    #[test]
    fn a_key_after_the_last_peers_table_is_refused_not_ignored() {
        // In TOML the line belongs to the last [[peers]] table; silently dropping it turned a setting off
        // without a word (found with `dedupWindowMs = 0` appended to cluster/local/*.toml).
        let e = BrokerConfig::from_toml(&format!("{SAMPLE}\ndedupWindowMs = 0\n")).unwrap_err();
        assert!(e.0.contains("unknown field `dedupWindowMs`"), "{}", e.0);
        let top = SAMPLE.replacen("brokerName", "dedupWindowMs = 0\nbrokerName", 1);
        assert_eq!(BrokerConfig::from_toml(&top).unwrap().dedup_window_ms, 0);
    }

    #[test]
    fn parses_with_rocketmq_defaults() {
        let c = BrokerConfig::from_toml(SAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.broker_cluster_name, "DefaultCluster");
        assert_eq!(c.flush_disk_type, FlushDiskType::SyncFlush);
        assert_eq!(c.max_message_size, 4 << 20);
        assert_eq!(c.namesrv_addrs(), vec!["127.0.0.1:9876", "127.0.0.1:9877"]);
        assert_eq!(c.me().unwrap().client_addr, "127.0.0.1:10921");
        assert_eq!(c.client_addr_of_raft("127.0.0.1:10912"), Some("127.0.0.1:10911"));
    }

    #[test]
    fn metrics_keys_default_off_and_their_limits_are_checked() {
        use crate::metrics::{METRICS_LAG_SERIES_MAX_LIMIT, METRICS_TOPICS_MAX_LIMIT};
        let d = BrokerConfig::from_toml(SAMPLE).unwrap();
        assert_eq!((d.metrics_listen.as_deref(), d.metrics_topics_max, d.metrics_lag_series_max), (None, 1_000, 10_000));
        let c = BrokerConfig::from_toml(&format!("metricsListen = \"127.0.0.1:10913\"\n{SAMPLE}")).unwrap();
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:10913"));
        let mut c = d.clone();
        (c.metrics_topics_max, c.metrics_lag_series_max) = (METRICS_TOPICS_MAX_LIMIT, METRICS_LAG_SERIES_MAX_LIMIT);
        c.validate().expect("at the limits");
        for (topics, lag, key) in [
            (METRICS_TOPICS_MAX_LIMIT + 1, 1, "metricsTopicsMax"),
            (0, 1, "metricsTopicsMax"),
            (1, METRICS_LAG_SERIES_MAX_LIMIT + 1, "metricsLagSeriesMax"),
            (1, 0, "metricsLagSeriesMax"),
        ] {
            let mut c = d.clone();
            (c.metrics_topics_max, c.metrics_lag_series_max) = (topics, lag);
            assert!(c.validate().unwrap_err().0.contains(key), "{key}");
        }
    }

    #[test]
    fn property_filter_defaults_on_and_the_scan_limit_is_checked() {
        let d = BrokerConfig::from_toml(SAMPLE).unwrap();
        assert_eq!((d.enable_property_filter, d.pull_filter_scan_max), (true, PULL_FILTER_SCAN_MAX_DEFAULT));
        let c = BrokerConfig::from_toml(&format!("enablePropertyFilter = false\npullFilterScanMax = 64\n{SAMPLE}")).unwrap();
        assert_eq!((c.enable_property_filter, c.pull_filter_scan_max), (false, 64));
        let mut c = d.clone();
        c.pull_filter_scan_max = PULL_FILTER_SCAN_MAX_LIMIT;
        c.validate().expect("at the limit");
        for v in [0, PULL_FILTER_SCAN_MAX_LIMIT + 1] {
            c.pull_filter_scan_max = v;
            assert!(c.validate().unwrap_err().0.contains("pullFilterScanMax must be within 1..=65536"), "{v}");
        }
    }

    #[test]
    fn rejects_bad_configs_with_a_reason() {
        assert!(BrokerConfig::from_toml(&SAMPLE.replace("nodeId = 2", "nodeId = 3"))
            .unwrap()
            .validate()
            .unwrap_err()
            .0
            .contains("nodeId 3"));
        assert!(BrokerConfig::from_toml(&format!("typo = 1\n{SAMPLE}")).is_err(), "unknown keys are errors");
        let mut c = BrokerConfig::from_toml(SAMPLE).unwrap();
        c.raft_election_min_ms = 50;
        assert!(c.validate().is_err());
        let mut c = BrokerConfig::from_toml(SAMPLE).unwrap();
        assert_eq!((c.topics_max, c.locks_max, c.mapped_files_max), (TOPICS_MAX_LIMIT, 100_000, 4_096));
        c.topics_max = TOPICS_MAX_LIMIT + 1;
        assert!(c.validate().unwrap_err().0.contains("topicsMax"));
        let mut c = BrokerConfig::from_toml(SAMPLE).unwrap();
        c.locks_max = 0;
        assert!(c.validate().unwrap_err().0.contains("locksMax must be positive"));
        c.locks_max = 1;
        assert_eq!(c.lock_ttl_ms, 60_000);
        c.lock_ttl_ms = 999;
        assert!(c.validate().unwrap_err().0.contains("lockTtlMs must be within 1000..=600000"));
        c.lock_ttl_ms = 600_000;
        assert!(c.validate().is_ok());
        // The SIGTERM hand-off and drain: defaults, and each bound at and past its limit.
        {
            use crate::leave::{DRAIN_MAX_MS_LIMIT, DRAIN_QUIET_MS_LIMIT, HANDOFF_TIMEOUT_MS_LIMITS};
            let d = BrokerConfig::from_toml(SAMPLE).unwrap();
            assert_eq!((d.shutdown_handoff_timeout_ms, d.shutdown_drain_quiet_ms, d.shutdown_drain_max_ms), (10_000, 2_000, 35_000));
            assert_eq!(
                crate::leave::LEAVE_MAX_DEFAULT,
                Duration::from_millis(d.shutdown_handoff_timeout_ms + d.shutdown_drain_max_ms) + crate::leave::ROUTE_SWITCH_WAIT
            );
            let mut c = d.clone();
            (c.shutdown_handoff_timeout_ms, c.shutdown_drain_quiet_ms, c.shutdown_drain_max_ms) =
                (*HANDOFF_TIMEOUT_MS_LIMITS.end(), DRAIN_QUIET_MS_LIMIT, DRAIN_MAX_MS_LIMIT);
            c.validate().unwrap();
            (c.shutdown_handoff_timeout_ms, c.shutdown_drain_quiet_ms, c.shutdown_drain_max_ms) =
                (*HANDOFF_TIMEOUT_MS_LIMITS.start(), 0, 0);
            c.validate().expect("no drain");
            type Edit = fn(&mut BrokerConfig);
            let cases: [(Edit, &str); 4] = [
                (|c| c.shutdown_handoff_timeout_ms = HANDOFF_TIMEOUT_MS_LIMITS.end() + 1, "shutdownHandoffTimeoutMs"),
                (|c| c.shutdown_handoff_timeout_ms = HANDOFF_TIMEOUT_MS_LIMITS.start() - 1, "shutdownHandoffTimeoutMs"),
                (|c| c.shutdown_drain_quiet_ms = DRAIN_QUIET_MS_LIMIT + 1, "shutdownDrainQuietMs"),
                (|c| c.shutdown_drain_max_ms = DRAIN_MAX_MS_LIMIT + 1, "shutdownDrainMaxMs"),
            ];
            for (edit, key) in cases {
                let mut c = d.clone();
                edit(&mut c);
                assert!(c.validate().unwrap_err().0.contains(key), "{key}");
            }
        }
        // Flow control: defaults, and each bound at and past its limit.
        {
            use raftmq_raft::node::{SEND_QUEUE_BYTES_MAX_LIMIT, SEND_QUEUE_MAX_LIMIT, SEND_QUEUE_WAIT_MS_MAX_LIMIT};
            let d = BrokerConfig::from_toml(SAMPLE).unwrap();
            assert_eq!((d.send_queue_max, d.send_queue_bytes_max, d.wait_time_mills_in_send_queue), (4096, 64 << 20, 200));
            let mut c = d.clone();
            (c.send_queue_max, c.send_queue_bytes_max, c.wait_time_mills_in_send_queue) =
                (SEND_QUEUE_MAX_LIMIT, SEND_QUEUE_BYTES_MAX_LIMIT, SEND_QUEUE_WAIT_MS_MAX_LIMIT);
            c.validate().unwrap();
            c.send_queue_bytes_max = c.entry_bytes_max;
            c.validate().expect("room for one largest entry");
            type Edit = fn(&mut BrokerConfig);
            let cases: [(Edit, &str); 6] = [
                (|c| c.send_queue_max = 0, "sendQueueMax"),
                (|c| c.send_queue_max = SEND_QUEUE_MAX_LIMIT + 1, "sendQueueMax"),
                (|c| c.send_queue_bytes_max = c.entry_bytes_max - 1, "sendQueueBytesMax"),
                (|c| c.send_queue_bytes_max = SEND_QUEUE_BYTES_MAX_LIMIT + 1, "sendQueueBytesMax"),
                (|c| c.wait_time_mills_in_send_queue = 0, "waitTimeMillsInSendQueue"),
                (|c| c.wait_time_mills_in_send_queue = SEND_QUEUE_WAIT_MS_MAX_LIMIT + 1, "waitTimeMillsInSendQueue"),
            ];
            for (edit, key) in cases {
                let mut c = d.clone();
                edit(&mut c);
                assert!(c.validate().unwrap_err().0.contains(key), "{key}");
            }
        }
        // Parked pulls: defaults, and each bound at and past its limit.
        {
            use crate::parked::PULL_PARKED_MAX_LIMIT;
            let d = BrokerConfig::from_toml(SAMPLE).unwrap();
            assert_eq!((d.pull_parked_per_conn_max, d.pull_parked_max), (512, 65_536));
            let mut c = d.clone();
            (c.pull_parked_per_conn_max, c.pull_parked_max) = (c.conn_inflight_requests_max - 1, PULL_PARKED_MAX_LIMIT);
            c.validate().unwrap();
            type Edit = fn(&mut BrokerConfig);
            let cases: [(Edit, &str); 4] = [
                (|c| c.pull_parked_per_conn_max = 0, "pullParkedPerConnMax"),
                (|c| c.pull_parked_per_conn_max = c.conn_inflight_requests_max, "pullParkedPerConnMax"),
                (|c| c.pull_parked_max = 0, "pullParkedMax"),
                (|c| c.pull_parked_max = PULL_PARKED_MAX_LIMIT + 1, "pullParkedMax"),
            ];
            for (edit, key) in cases {
                let mut c = d.clone();
                edit(&mut c);
                assert!(c.validate().unwrap_err().0.contains(key), "{key}");
            }
        }
        // Forwarding and the election wait: defaults, and each bound at and past its limit.
        {
            use crate::forward::{FORWARD_INFLIGHT_BYTES_MAX_LIMIT, FORWARD_INFLIGHT_MAX_LIMIT, FORWARD_WAIT_MS_MAX};
            let d = BrokerConfig::from_toml(SAMPLE).unwrap();
            assert_eq!(
                (d.forward_inflight_max, d.forward_inflight_bytes_max, d.forward_timeout_ms, d.leader_wait_ms),
                (1024, 64 << 20, 5_000, 3_000)
            );
            let mut c = d.clone();
            (c.forward_inflight_max, c.forward_inflight_bytes_max, c.forward_timeout_ms, c.leader_wait_ms) =
                (FORWARD_INFLIGHT_MAX_LIMIT, FORWARD_INFLIGHT_BYTES_MAX_LIMIT, FORWARD_WAIT_MS_MAX, FORWARD_WAIT_MS_MAX);
            c.validate().unwrap();
            c.leader_wait_ms = 0;
            c.validate().expect("leaderWaitMs 0 turns the wait off");
            type Edit = fn(&mut BrokerConfig);
            let cases: [(Edit, &str); 6] = [
                (|c| c.forward_inflight_max = FORWARD_INFLIGHT_MAX_LIMIT + 1, "forwardInflightMax"),
                (|c| c.forward_inflight_max = 0, "forwardInflightMax"),
                (|c| c.forward_inflight_bytes_max = FORWARD_INFLIGHT_BYTES_MAX_LIMIT + 1, "forwardInflightBytesMax"),
                (|c| c.forward_timeout_ms = 0, "forwardTimeoutMs"),
                (|c| c.forward_timeout_ms = FORWARD_WAIT_MS_MAX + 1, "forwardTimeoutMs"),
                (|c| c.leader_wait_ms = FORWARD_WAIT_MS_MAX + 1, "leaderWaitMs"),
            ];
            for (edit, key) in cases {
                let mut c = d.clone();
                edit(&mut c);
                assert!(c.validate().unwrap_err().0.contains(key), "{key}");
            }
        }
        // Scheduling: the level table and the delivery batch, at and past their limits.
        let mut c = BrokerConfig::from_toml(SAMPLE).unwrap();
        assert_eq!((c.schedule_deliver_batch_max, c.clock_jump_warn_ms), (1024, 60_000));
        c.schedule_deliver_batch_max = 65_536;
        c.validate().unwrap();
        c.schedule_deliver_batch_max = 65_537;
        assert!(c.validate().unwrap_err().0.contains("scheduleDeliverBatchMax"));
        let mut c = BrokerConfig::from_toml(SAMPLE).unwrap();
        c.message_delay_level = "1s 5x".into();
        assert!(c.validate().unwrap_err().0.contains("messageDelayLevel: delay level \"5x\""));
        c.message_delay_level = vec!["1s"; 64].join(" ");
        c.validate().unwrap();
        c.message_delay_level = vec!["1s"; 65].join(" ");
        assert!(c.validate().unwrap_err().0.contains("65 delay levels"));
        let mut c = BrokerConfig::from_toml(SAMPLE).unwrap();
        assert_eq!(c.timer_max_delay_sec, 3_456_000, "40 days");
        c.timer_max_delay_sec = TIMER_MAX_DELAY_SEC_LIMIT;
        c.validate().unwrap();
        c.timer_max_delay_sec = TIMER_MAX_DELAY_SEC_LIMIT + 1;
        assert!(c.validate().unwrap_err().0.contains("timerMaxDelaySec"));
    }

    #[test]
    fn tls_keys_map_to_the_server_options_and_are_checked() {
        let c = BrokerConfig::from_toml(SAMPLE).unwrap();
        assert_eq!(c.server_options().tls, raftmq_net::ServerTlsOptions::default(), "disabled by default");
        assert!(c.client_tls().unwrap().is_none());
        let c = BrokerConfig::from_toml(&format!(
            "tlsServerMode = \"enforcing\"\ntlsServerCertPath = \"/etc/s.pem\"\ntlsServerKeyPath = \"/etc/s.key\"\n\
             tlsServerTrustCertPath = \"/etc/ca.pem\"\ntlsServerNeedClientAuth = true\ntlsHandshakeTimeoutMs = 500\n\
             tlsHandshakesInflightMax = 3\ntlsCertFileBytesMax = 4096\ntlsReloadIntervalMs = 0\n{SAMPLE}"
        ))
        .unwrap();
        c.validate().unwrap();
        let t = c.server_options().tls;
        assert_eq!(t.mode, raftmq_net::TlsMode::Enforcing);
        assert_eq!((t.cert_path.unwrap(), t.key_path.unwrap()), (PathBuf::from("/etc/s.pem"), PathBuf::from("/etc/s.key")));
        assert_eq!((t.trust_cert_path.unwrap(), t.need_client_auth), (PathBuf::from("/etc/ca.pem"), true));
        assert_eq!((t.handshake_timeout_ms, t.handshakes_inflight_max, t.cert_file_bytes_max, t.reload_interval_ms), (500, 3, 4096, 0));
        let complaint = |text: &str| BrokerConfig::from_toml(&format!("{text}\n{SAMPLE}")).unwrap().validate().unwrap_err().0;
        assert!(complaint("tlsServerMode = \"strict\"").contains("tlsServerMode"));
        assert!(complaint("tlsServerMode = \"permissive\"").contains("certificate path"));
        assert!(complaint("tlsClientEnable = true").contains("tlsClientTrustCertPath"));
        assert!(complaint("tlsClientCertPath = \"/c.pem\"").contains("go together"));
        let c = BrokerConfig::from_toml(&format!("tlsClientEnable = true\ntlsClientTrustCertPath = \"/nonexistent/ca.pem\"\n{SAMPLE}"))
            .unwrap();
        c.validate().unwrap();
        assert!(c.client_tls().unwrap_err().to_string().contains("/nonexistent/ca.pem"), "a missing trust file is named");
    }

    #[test]
    fn entry_limit_is_checked_against_message_size_segment_and_frame() {
        let base = BrokerConfig::from_toml(SAMPLE).unwrap();
        assert_eq!(base.entry_bytes_max, ENTRY_BYTES_MAX_DEFAULT);
        // The multi-process tests' 8 MiB segments take the defaults.
        let mut c = base.clone();
        c.mapped_file_size_commit_log = 8 << 20;
        c.validate().unwrap();
        let complaint = |c: &BrokerConfig| c.validate().unwrap_err().0;
        // One message of maxMessageSize must fit: exactly at the bound is fine, a byte less is not.
        let mut c = base.clone();
        c.entry_bytes_max = single_message_entry_bytes(c.max_message_size);
        c.validate().unwrap();
        c.entry_bytes_max -= 1;
        assert!(complaint(&c).contains("maxMessageSize"), "{}", complaint(&c));
        let mut c = base.clone();
        c.max_message_size = 6 << 20;
        assert!(complaint(&c).contains("entryBytesMax"), "a larger maxMessageSize needs a larger entry limit");
        c.entry_bytes_max = 7 << 20;
        c.validate().unwrap();
        // At most the limit a Raft frame allows.
        let mut c = base.clone();
        c.entry_bytes_max = ENTRY_BYTES_LIMIT;
        c.validate().unwrap();
        c.entry_bytes_max = ENTRY_BYTES_LIMIT + 1;
        assert!(complaint(&c).contains("entryBytesMax"));
        // Within a segment, record header included.
        let mut c = base.clone();
        c.mapped_file_size_commit_log = c.entry_bytes_max as u64 + raftmq_commitlog::HEADER_LEN as u64;
        c.validate().unwrap();
        c.mapped_file_size_commit_log -= 1;
        assert!(complaint(&c).contains("mappedFileSizeCommitLog"), "{}", complaint(&c));
        let parsed = BrokerConfig::from_toml(&format!("entryBytesMax = 5000000\n{SAMPLE}")).unwrap();
        assert_eq!(parsed.entry_bytes_max, 5_000_000);
    }

    #[test]
    fn the_unsafe_ack_switch_exists_only_in_chaos_test_builds() {
        let c = BrokerConfig::from_toml(&format!("unsafeAckBeforeQuorum = true\n{SAMPLE}")).unwrap();
        if cfg!(feature = "unsafe-ack-before-quorum") {
            c.validate().unwrap();
        } else {
            let e = c.validate().unwrap_err();
            assert!(e.0.contains("unsafe-ack-before-quorum"), "{e}");
        }
        let off = BrokerConfig::from_toml(&format!("unsafeAckBeforeQuorum = false\n{SAMPLE}")).unwrap();
        off.validate().unwrap();
    }

    #[test]
    fn the_unsafe_txn_switch_exists_only_in_chaos_test_builds() {
        let c = BrokerConfig::from_toml(&format!("unsafeTxnVisibleAtHalf = true\n{SAMPLE}")).unwrap();
        assert!(c.unsafe_txn_visible_at_half);
        if cfg!(feature = "unsafe-ack-before-quorum") {
            c.validate().unwrap();
        } else {
            let e = c.validate().unwrap_err();
            assert!(e.0.contains("unsafeTxnVisibleAtHalf") && e.0.contains("unsafe-ack-before-quorum"), "{e}");
        }
        let off = BrokerConfig::from_toml(&format!("unsafeTxnVisibleAtHalf = false\n{SAMPLE}")).unwrap();
        off.validate().unwrap();
        assert!(!BrokerConfig::from_toml(SAMPLE).unwrap().unsafe_txn_visible_at_half, "off by default");
    }

    #[test]
    fn connection_limits_default_to_the_servers_and_are_checked() {
        let c = BrokerConfig::from_toml(SAMPLE).unwrap();
        assert_eq!(c.server_options(), raftmq_net::ServerOptions::default());
        assert_eq!(c.conn_idle_ms_max, 120_000, "RocketMQ's serverChannelMaxIdleTimeSeconds");
        let c = BrokerConfig::from_toml(&format!("connectionsMax = 50\nconnIdleMsMax = 30000\n{SAMPLE}")).unwrap();
        c.validate().unwrap();
        assert_eq!((c.server_options().connections_max, c.server_options().conn_idle_ms_max), (50, 30_000));
        // A per-connection byte budget below one frame could never admit a maximal frame.
        let c = BrokerConfig::from_toml(&format!("connInflightBytesMax = 1048576\n{SAMPLE}")).unwrap();
        assert!(c.validate().unwrap_err().0.contains("conn_inflight_bytes_max"));
        let c = BrokerConfig::from_toml(&format!("connectionsMax = 0\n{SAMPLE}")).unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_cluster_secret_comes_from_one_place_and_never_shows() {
        let base = "brokerName = \"b\"\nnodeId = 1\nstorePathRootDir = \"/tmp/x\"\n[[peers]]\nid = 1\nraftAddr = \"127.0.0.1:1\"\nclientAddr = \"127.0.0.1:2\"\n";
        let c = BrokerConfig::from_toml(base).unwrap();
        assert_eq!(c.cluster_secrets().unwrap(), None);
        assert_eq!(c.leader_transfer_interval_min_ms, 3000);
        let inline = format!("clusterSecret = \"inline-secret-0123456789\"\n{base}");
        let c = BrokerConfig::from_toml(&inline).unwrap();
        assert_eq!(c.cluster_secrets().unwrap().map(|s| s.len()), Some(1));
        assert!(!format!("{c:?}").contains("inline-secret"), "Debug redacts the secret");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "file-secret-0123456789\nolder-secret-0123456789\n").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        assert!(secret_file_mode_warning(&file).unwrap().contains("mode 644"));
        for ok in [0o600, 0o640, 0o400] {
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(ok)).unwrap();
            assert_eq!(secret_file_mode_warning(&file), None, "{ok:o}");
        }
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o660)).unwrap();
        assert!(secret_file_mode_warning(&file).is_some(), "group-writable");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let from_file = format!("clusterSecretFile = \"{}\"\n{base}", file.display());
        assert_eq!(BrokerConfig::from_toml(&from_file).unwrap().cluster_secrets().unwrap().map(|s| s.len()), Some(2));
        let both = format!("clusterSecret = \"inline-secret-0123456789\"\n{from_file}");
        let c = BrokerConfig::from_toml(&both).unwrap();
        assert!(c.validate().unwrap_err().0.contains("not both"));
        std::fs::write(&file, "short\n").unwrap();
        let e = BrokerConfig::from_toml(&from_file).unwrap().cluster_secrets().unwrap_err();
        assert!(e.0.contains("5 bytes") && !e.0.contains("short"), "{e}");
        let missing = format!("clusterSecretFile = \"{}/none\"\n{base}", dir.path().display());
        assert!(BrokerConfig::from_toml(&missing).unwrap().cluster_secrets().unwrap_err().0.contains("clusterSecretFile"));
        let at_limit = format!("leaderTransferIntervalMinMs = 3600000\n{base}");
        BrokerConfig::from_toml(&at_limit).unwrap().validate().expect("at the limit");
        let far = format!("leaderTransferIntervalMinMs = 3600001\n{base}");
        assert!(BrokerConfig::from_toml(&far).unwrap().validate().unwrap_err().0.contains("leaderTransferIntervalMinMs"));
    }

    #[test]
    fn gray_failure_bounds_default_and_are_checked_at_their_limits() {
        let base = "brokerName = \"b\"\nnodeId = 1\nstorePathRootDir = \"/tmp/x\"\n[[peers]]\nid = 1\nraftAddr = \"127.0.0.1:1\"\nclientAddr = \"127.0.0.1:2\"\n";
        let c = BrokerConfig::from_toml(base).unwrap();
        c.validate().unwrap();
        assert_eq!(c.leader_stall_handoff_ms, 2000);
        assert_eq!(c.follower_read_lag_max_entries, FOLLOWER_READ_LAG_MAX_ENTRIES_DEFAULT);
        let check = |extra: &str| BrokerConfig::from_toml(&format!("{extra}\n{base}")).unwrap().validate();
        // leaderStallHandoffMs: 0 (off), or 2 × raftElectionMaxMs (1000 by default) ..= 600000.
        check("leaderStallHandoffMs = 0").expect("off");
        check("leaderStallHandoffMs = 1000").expect("at the lower limit");
        check("leaderStallHandoffMs = 600000").expect("at the upper limit");
        for bad in ["leaderStallHandoffMs = 999", "leaderStallHandoffMs = 600001", "leaderStallHandoffMs = 1"] {
            assert!(check(bad).unwrap_err().0.contains("leaderStallHandoffMs"), "{bad}");
        }
        // The lower limit follows the election timeout.
        check("leaderStallHandoffMs = 1600\nraftElectionMaxMs = 800").expect("2 × 800");
        assert!(check("leaderStallHandoffMs = 1599\nraftElectionMaxMs = 800").unwrap_err().0.contains("leaderStallHandoffMs"));
        // followerReadLagMaxEntries: 0 (off) ..= 2^32.
        check("followerReadLagMaxEntries = 0").expect("off");
        check("followerReadLagMaxEntries = 4294967296").expect("at the limit");
        assert!(check("followerReadLagMaxEntries = 4294967297").unwrap_err().0.contains("followerReadLagMaxEntries"));
    }
}
