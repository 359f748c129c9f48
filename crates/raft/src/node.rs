//! One member of a broker group: opens the commitlog and state machine, runs openraft and its TCP
//! transport, and offers what the broker layer needs — batched produce writes, metadata writes, a role
//! watch, membership changes, leader transfer and log compaction at the retention boundary.
//!
//! openraft 0.9 fsyncs every entry serially and turns each `client_write` into one entry, so produce
//! requests are coalesced here: a batcher drains whatever is queued (up to `batch_bytes_max`) into one
//! entry, with at most `batch_inflight_max` entries awaiting commit (default 1). Batches grow with load;
//! no linger timer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use raftmq_commitlog::{CommitLog, CommitLogConfig, CommitLogReader, FlushPolicy};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{info, warn};

use crate::log_store::{LogStore, StoreLink};
use crate::network::{control_call, ControlRequest, RaftControl, RaftServer, TcpNetworkFactory};
use crate::state_machine::{SmShared, StateMachine, StateMachineConfig};
use crate::types::{Command, CommandResponse, Node, NodeId, QueueAppend, QueueAppendResult, Raft};

/// Configuration of one group member.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's id; never reused for a wiped node.
    pub id: NodeId,
    /// Address the Raft transport listens on and that peers dial (`host:port`).
    pub raft_addr: String,
    /// Data directory: `commitlog/` and `state/` below it.
    pub data_dir: PathBuf,
    /// Commitlog segment size (identical on every member).
    pub segment_bytes: u64,
    /// Zero-fill ahead of the commitlog write position when idle (see `CommitLogConfig::prefill_ahead_bytes`).
    pub prefill_ahead_bytes: u64,
    /// Dense-index slots per index file.
    pub index_slots_per_file: u64,
    /// Flush policy of the commitlog.
    pub flush: FlushPolicy,
    /// Checkpoint interval in log indexes (identical on every member).
    pub checkpoint_every: u64,
    /// Units per consume-queue file.
    pub cq_units_per_file: u64,
    /// Consume-queue files mapped at once (an LRU over all queues).
    pub mapped_files_max: usize,
    /// Leader heartbeat (also openraft 0.9's AppendEntries timeout), ms.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms.
    pub election_min_ms: u64,
    /// Election timeout upper bound, ms.
    pub election_max_ms: u64,
    /// Bytes of produce requests coalesced into one entry at most (plus one request).
    pub batch_bytes_max: usize,
    /// Produce entries awaiting commit at once. 1 is best on openraft 0.9, whose appends and replication
    /// run serially: a second entry in flight only halves the batches (see docs/benchmarks.md).
    pub batch_inflight_max: usize,
}

impl NodeConfig {
    /// Defaults: 1 GiB segments, sync flush, heartbeat 100 ms, election 300–600 ms, 1 MiB batches.
    pub fn new(id: NodeId, raft_addr: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id,
            raft_addr: raft_addr.into(),
            data_dir: data_dir.into(),
            segment_bytes: 1 << 30,
            prefill_ahead_bytes: 8 << 20,
            index_slots_per_file: 1 << 20,
            flush: FlushPolicy::Sync,
            checkpoint_every: 1024,
            cq_units_per_file: 300_000,
            mapped_files_max: 4096,
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            batch_bytes_max: 1 << 20,
            batch_inflight_max: 1,
        }
    }
}

/// Errors of node operations.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Startup failed.
    #[error("start: {0}")]
    Start(String),
    /// A Raft operation failed.
    #[error("raft: {0}")]
    Raft(String),
    /// The operation needs the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// A wait ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; retry at the leader if known. Nothing was appended.
    #[error("not leader; leader is {leader_id:?} at {leader_addr:?}")]
    NotLeader {
        /// Leader id, if known.
        leader_id: Option<NodeId>,
        /// Leader's Raft address, if known.
        leader_addr: Option<String>,
    },
    /// Leadership is moving to `target`; writes are fenced. Nothing was appended.
    #[error("leader transfer to {target} in progress")]
    Transferring {
        /// The new leader-to-be.
        target: NodeId,
    },
    /// The outcome is unknown (the node stopped or leadership changed while the entry was in flight).
    #[error("write outcome unknown: {0}")]
    Unknown(String),
}

/// A member's role as the broker layer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Leader (see [`RoleState::ready`]).
    Leader,
    /// Voter following a leader.
    Follower,
    /// Campaigning.
    Candidate,
    /// Non-voting member.
    Learner,
    /// Stopped.
    Shutdown,
}

/// Role, term and leader of this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    /// This member's role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// The leader's Raft address.
    pub leader_addr: Option<String>,
    /// Leader only: true once it applied an entry of its own term, i.e. everything committed before it
    /// was elected. A broker advertises itself as master only when ready.
    pub ready: bool,
}

/// Progress figures for admin output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Member id.
    pub id: NodeId,
    /// Role.
    pub role: Role,
    /// Term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub applied_index: Option<u64>,
    /// Committed index as far as this member knows (leader: quorum-acked; others: applied).
    pub commit_index: Option<u64>,
    /// Voters.
    pub voters: BTreeSet<NodeId>,
    /// Purged up to.
    pub purged_index: Option<u64>,
}

struct ProduceRequest {
    queues: Vec<QueueAppend>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<QueueAppendResult>, WriteError>>,
}

/// A running group member.
pub struct RaftNode {
    id: NodeId,
    cfg: NodeConfig,
    raft: Raft,
    sm: Arc<SmShared>,
    log: CommitLog,
    server: RaftServer,
    role_rx: watch::Receiver<RoleState>,
    produce_tx: mpsc::Sender<ProduceRequest>,
    fence: Arc<Fence>,
}

#[derive(Default)]
struct Fence {
    active: AtomicBool,
    target: AtomicU64,
}

impl Fence {
    fn check(&self) -> Result<(), WriteError> {
        if self.active.load(Ordering::Acquire) {
            return Err(WriteError::Transferring { target: self.target.load(Ordering::Acquire) });
        }
        Ok(())
    }
}

fn map_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            WriteError::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => WriteError::Unknown(e.to_string()),
        RaftError::Fatal(f) => WriteError::Unknown(f.to_string()),
    }
}

fn role_of(s: ServerState) -> Role {
    match s {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

impl RaftNode {
    /// Starts a member: binds the Raft port, opens and recovers storage, starts openraft.
    pub async fn start(cfg: NodeConfig) -> Result<RaftNode, NodeError> {
        let start_err = |e: &dyn std::fmt::Display| NodeError::Start(e.to_string());
        let mut cfg = cfg;
        let listener =
            tokio::net::TcpListener::bind(&cfg.raft_addr).await.map_err(|e| start_err(&format!("bind {}: {e}", cfg.raft_addr)))?;
        // Port 0 picks a free port; peers must dial the real one.
        cfg.raft_addr = listener.local_addr().map_err(|e| start_err(&e))?.to_string();
        let mut log_cfg = CommitLogConfig::new(cfg.data_dir.join("commitlog"));
        log_cfg.segment_bytes = cfg.segment_bytes;
        log_cfg.prefill_ahead_bytes = cfg.prefill_ahead_bytes;
        log_cfg.index_slots_per_file = cfg.index_slots_per_file;
        log_cfg.flush = cfg.flush;
        let log =
            tokio::task::spawn_blocking(move || CommitLog::open(log_cfg)).await.map_err(|e| start_err(&e))?.map_err(|e| start_err(&e))?;
        let link = StoreLink::default();
        let mut sm_cfg = StateMachineConfig::new(cfg.data_dir.join("state"));
        sm_cfg.checkpoint_every = cfg.checkpoint_every;
        sm_cfg.cq_units_per_file = cfg.cq_units_per_file;
        sm_cfg.mapped_files_max = cfg.mapped_files_max;
        let (reader, link2) = (log.reader(), link.clone());
        let sm = tokio::task::spawn_blocking(move || StateMachine::open(sm_cfg, reader, link2))
            .await
            .map_err(|e| start_err(&e))?
            .map_err(|e| start_err(&e))?;
        let shared = sm.shared();
        if let Some(p) = log.reader().state().purged {
            shared.set_snapshot_boundary(p.point.index);
        }
        let config = Config {
            cluster_name: "raftmq".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_min_ms,
            election_timeout_max: cfg.election_max_ms,
            install_snapshot_timeout: 2000,
            max_payload_entries: 256,
            replication_lag_threshold: 1000,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            purge_batch_size: 1,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| start_err(&e))?);
        let raft = Raft::new(cfg.id, config, TcpNetworkFactory, LogStore::new(log.clone(), link), sm).await.map_err(|e| start_err(&e))?;
        let server = RaftServer::start(listener, raft.clone(), Arc::new(RaftControl::new(raft.clone())));

        let (role_tx, role_rx) = watch::channel(RoleState { role: Role::Learner, term: 0, leader: None, leader_addr: None, ready: false });
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            loop {
                let state = {
                    let m = metrics.borrow_and_update();
                    let leader_addr = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
                    let ready = m.state == ServerState::Leader && m.last_applied.is_some_and(|a| a.leader_id.term == m.current_term);
                    RoleState { role: role_of(m.state), term: m.current_term, leader: m.current_leader, leader_addr, ready }
                };
                role_tx.send_if_modified(|cur| {
                    if *cur != state {
                        info!(role = ?state.role, term = state.term, leader = ?state.leader, ready = state.ready, "raft role");
                        *cur = state;
                        true
                    } else {
                        false
                    }
                });
                if metrics.changed().await.is_err() {
                    role_tx.send_modify(|s| s.role = Role::Shutdown);
                    break;
                }
            }
        });

        let (produce_tx, produce_rx) = mpsc::channel(4096);
        tokio::spawn(produce_batcher(raft.clone(), produce_rx, cfg.batch_bytes_max, cfg.batch_inflight_max.max(1)));
        info!(id = cfg.id, addr = %cfg.raft_addr, "raft node started");
        Ok(RaftNode { id: cfg.id, cfg, raft, sm: shared, log, server, role_rx, produce_tx, fence: Arc::new(Fence::default()) })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address peers dial (the bound one when the configured port was 0).
    pub fn raft_addr(&self) -> &str {
        &self.cfg.raft_addr
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The openraft handle (for metrics and tests; brokers use the methods here).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Replicated metadata and consume queues.
    pub fn state(&self) -> &Arc<SmShared> {
        &self.sm
    }

    /// The commitlog reader (message bytes by physical offset).
    pub fn commitlog(&self) -> CommitLogReader {
        self.log.reader()
    }

    /// Watch of role, term, leader and readiness.
    pub fn role(&self) -> watch::Receiver<RoleState> {
        self.role_rx.clone()
    }

    /// Bootstraps the group on this (pristine) node with `members` (id → Raft address). A no-op when the
    /// node is already initialized. Call on exactly one node.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), NodeError> {
        if self.raft.is_initialized().await.map_err(|e| NodeError::Raft(e.to_string()))? {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, Node> = members.into_iter().map(|(id, addr)| (id, Node { addr })).collect();
        self.raft.initialize(nodes).await.map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Proposes messages for one or more topic-queues; resolves with per-queue positions once committed
    /// and applied. Concurrent calls are coalesced into one entry.
    pub async fn produce(&self, queues: Vec<QueueAppend>) -> Result<Vec<QueueAppendResult>, WriteError> {
        self.fence.check()?;
        let bytes = queues.iter().map(|q| q.topic.len() + 10 + q.messages.iter().map(|m| m.data.len() + 12).sum::<usize>()).sum();
        let (reply, rx) = oneshot::channel();
        self.produce_tx.send(ProduceRequest { queues, bytes, reply }).await.map_err(|_| WriteError::Unknown("node stopped".into()))?;
        rx.await.map_err(|_| WriteError::Unknown("node stopped".into()))?
    }

    /// Proposes one command (topics, offsets) as its own entry and waits until applied.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        self.fence.check()?;
        self.raft.client_write(cmd).await.map(|r| r.data).map_err(map_write_error)
    }

    /// A read barrier: confirms with a quorum that this node still leads and waits until everything committed
    /// before the call is applied here. Reads of replicated state (consumer offsets, topics) made after it
    /// return succeeds are linearizable; a deposed leader on the minority side of a partition fails it.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        self.fence.check()?;
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) })
            }
            Err(e) => Err(WriteError::Unknown(e.to_string())),
        }
    }

    /// Current status figures.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let commit_index = match &m.replication {
            Some(rep) => {
                // The quorum-acked index: the median of voters' matched indexes.
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                let mut matched: Vec<u64> = voters
                    .iter()
                    .map(|v| {
                        if *v == m.id {
                            m.last_log_index.unwrap_or(0)
                        } else {
                            rep.get(v).copied().flatten().map(|l| l.index).unwrap_or(0)
                        }
                    })
                    .collect();
                matched.sort_unstable();
                matched.get(matched.len().saturating_sub(1) / 2).copied()
            }
            None => m.last_applied.map(|l| l.index),
        };
        NodeStatus {
            id: m.id,
            role: role_of(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            commit_index,
            voters: m.membership_config.membership().voter_ids().collect(),
            purged_index: m.purged.map(|l| l.index),
        }
    }

    /// Adds `id` as a learner; replication (snapshot if needed, then the log) starts at once.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), NodeError> {
        self.raft.add_learner(id, Node { addr }, false).await.map(|_| ()).map_err(|e| match e.forward_to_leader() {
            Some(f) => NodeError::NotLeader { leader: f.leader_id },
            None => NodeError::Raft(e.to_string()),
        })
    }

    /// Waits until the leader has replicated its whole log (as of the call) to `id`.
    pub async fn wait_caught_up(&self, id: NodeId, timeout: Duration) -> Result<(), NodeError> {
        let target = self.raft.metrics().borrow().last_log_index;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|l| l.index) >= target, "learner caught up")
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Timeout(e.to_string()))
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), NodeError> {
        let ids: BTreeSet<NodeId> = [id].into();
        self.raft.change_membership(ChangeMembers::AddVoterIds(ids), false).await.map(|_| ()).map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Replaces voter `dead` by a new member `new_id` (a fresh id, never a reused one): adds it as a
    /// learner, waits for catch-up, then swaps the voter sets in one joint change.
    pub async fn replace_voter(&self, dead: NodeId, new_id: NodeId, addr: String, timeout: Duration) -> Result<(), NodeError> {
        let voters: BTreeSet<NodeId> = self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if voters.contains(&new_id) {
            return Err(NodeError::Raft(format!("{new_id} is already a voter; ids are never reused")));
        }
        self.add_learner(new_id, addr).await?;
        self.wait_caught_up(new_id, timeout).await?;
        let mut next = voters;
        next.remove(&dead);
        next.insert(new_id);
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(next), false)
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Moves leadership to `target` (openraft 0.9 has no API for it): fence writes here, stop this
    /// leader's heartbeats and every other voter's elections, wait out the leader lease, make the target
    /// campaign, and restore everything afterwards — also when the target does not win within `timeout`.
    pub async fn transfer_leader(&self, target: NodeId, timeout: Duration) -> Result<(), NodeError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(NodeError::NotLeader { leader: m.current_leader });
        }
        if target == self.id {
            return Ok(());
        }
        let membership = m.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&target) {
            return Err(NodeError::Raft(format!("{target} is not a voter")));
        }
        let addr_of = |id: NodeId| membership.get_node(&id).map(|n| n.addr.clone());
        let Some(target_addr) = addr_of(target) else { return Err(NodeError::Raft(format!("no address for {target}"))) };
        self.wait_caught_up(target, timeout).await?;
        let rpc_timeout = Duration::from_millis(self.cfg.election_max_ms);
        let others: Vec<(NodeId, String)> =
            voters.iter().filter(|v| **v != target && **v != self.id).filter_map(|v| addr_of(*v).map(|a| (*v, a))).collect();

        self.fence.target.store(target, Ordering::Release);
        self.fence.active.store(true, Ordering::Release);
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().elect(false);
        for (id, addr) in &others {
            if let Err(e) = control_call(addr, ControlRequest::SetElect(false), rpc_timeout).await {
                warn!(node = id, error = %e, "leader transfer: could not pause elections");
            }
        }
        let started = Instant::now();
        // Voters honour the old leader's lease for election_timeout_max after its last heartbeat.
        tokio::time::sleep(Duration::from_millis(self.cfg.election_max_ms + self.cfg.heartbeat_ms)).await;
        let result = match control_call(&target_addr, ControlRequest::TriggerElect, rpc_timeout).await {
            Ok(_) => self
                .raft
                .wait(Some(timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(100))))
                .metrics(|m| m.current_leader == Some(target) && m.state != ServerState::Leader, "target leads")
                .await
                .map(|_| ())
                .map_err(|e| NodeError::Timeout(e.to_string())),
            Err(e) => Err(NodeError::Raft(format!("trigger election on {target}: {e}"))),
        };
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(true);
        for (id, addr) in &others {
            if let Err(e) = control_call(addr, ControlRequest::SetElect(true), rpc_timeout).await {
                warn!(node = id, error = %e, "leader transfer: could not resume elections");
            }
        }
        self.fence.active.store(false, Ordering::Release);
        info!(target, ok = result.is_ok(), elapsed_ms = started.elapsed().as_millis() as u64, "leader transfer");
        result
    }

    /// Compacts the log up to the newest checkpoint at or below `upto` (and the applied index): builds the
    /// metadata snapshot there, purges the log through it and raises consume-queue min offsets. Returns
    /// the purge index, or `None` when no checkpoint is old enough.
    pub async fn compact(&self, upto: u64, timeout: Duration) -> Result<Option<u64>, NodeError> {
        let applied = self.sm.last_applied_index().unwrap_or(0);
        let limit = upto.min(applied);
        let Some(p) = self.sm.checkpoint_indexes().into_iter().rev().find(|i| *i <= limit) else { return Ok(None) };
        self.sm.set_snapshot_boundary(p);
        self.raft.trigger().snapshot().await.map_err(|e| NodeError::Raft(e.to_string()))?;
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= p), "snapshot at boundary")
            .await
            .map_err(|e| NodeError::Timeout(e.to_string()))?;
        let snap = m.snapshot.map(|s| s.index).unwrap_or(p);
        self.raft.trigger().purge_log(snap).await.map_err(|e| NodeError::Raft(e.to_string()))?;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.purged.is_some_and(|l| l.index >= snap), "purged")
            .await
            .map_err(|e| NodeError::Timeout(e.to_string()))?;
        if let Some(mark) = self.log.reader().state().purged {
            let sm = Arc::clone(&self.sm);
            tokio::task::spawn_blocking(move || sm.advance_min_offsets(mark.next_pos))
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?
                .map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        info!(index = snap, "log compacted");
        Ok(Some(snap))
    }

    /// Stops openraft and the transport, then waits until everything written is durable. The commitlog's
    /// IO thread exits when the last handle is dropped.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
        self.server.shutdown();
        if let Err(e) = self.log.flush().await {
            warn!(error = %e, "final commitlog flush");
        }
    }
}

/// Coalesces produce requests into entries: waits for a request, drains what is queued up to
/// `bytes_max`, proposes one entry, and answers each request from its slice of the result.
async fn produce_batcher(raft: Raft, mut rx: mpsc::Receiver<ProduceRequest>, bytes_max: usize, inflight_max: usize) {
    let permits = Arc::new(Semaphore::new(inflight_max));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        let Some(first) = rx.recv().await else { break };
        let mut bytes = first.bytes;
        let mut reqs = vec![first];
        while bytes < bytes_max {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.bytes;
                    reqs.push(r);
                }
                Err(_) => break,
            }
        }
        let mut all = Vec::new();
        let mut waiters = Vec::with_capacity(reqs.len());
        for r in reqs {
            waiters.push((r.queues.len(), r.reply));
            all.extend(r.queues);
        }
        match raft.client_write_ff(Command::Produce(all)).await {
            Ok(resp) => {
                tokio::spawn(async move {
                    let outcome = match resp.await {
                        Ok(Ok(r)) => match r.data {
                            CommandResponse::Produced(results) => Ok(results),
                            other => Err(WriteError::Unknown(format!("unexpected response {other:?}"))),
                        },
                        Ok(Err(e)) => Err(map_write_error(RaftError::APIError(e))),
                        Err(_) => Err(WriteError::Unknown("raft dropped the write".into())),
                    };
                    drop(permit);
                    match outcome {
                        Ok(results) => {
                            let mut it = results.into_iter();
                            for (n, reply) in waiters {
                                let _ = reply.send(Ok(it.by_ref().take(n).collect()));
                            }
                        }
                        Err(e) => {
                            for (_, reply) in waiters {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
            Err(fatal) => {
                for (_, reply) in waiters {
                    let _ = reply.send(Err(WriteError::Unknown(fatal.to_string())));
                }
            }
        }
    }
}
