//! One member of a broker group: opens the commitlog and state machine, runs openraft and its TCP
//! transport, and offers what the broker layer needs — batched produce writes, metadata writes, a role
//! watch, membership changes, leader transfer and log compaction at the retention boundary.
//!
//! openraft 0.9 turns each `client_write` into one entry (and fsyncs each one; raftmq's patched openraft
//! overlaps the leader's fsync with replication, docs/architecture.md), so produce
//! requests are coalesced here: a batcher drains whatever is queued (up to `batch_bytes_max`) into one
//! entry, with at most `batch_inflight_max` entries awaiting commit (default 1). Batches grow with load;
//! no linger timer.
//!
//! Flow control (RocketMQ's "broker fast failure"): the requests waiting for the batcher are bounded by
//! `send_queue_max` (count) and `send_queue_bytes_max` (encoded bytes); a write past either bound is refused at
//! once ([`WriteError::Busy`], [`BusyKind::Overload`]) rather than waiting, and a request that waited in the
//! queue longer than `send_queue_wait_ms_max` when the batcher reaches it is refused unproposed
//! ([`BusyKind::Expired`]). Both are certainly not appended, so a client may retry anywhere; memory stays
//! bounded and acknowledged latency stays near the queue's wait bound whatever load is offered.
//!
//! Every entry is at most `entry_bytes_max` encoded bytes: a write that alone would be larger is refused
//! ([`WriteError::EntryTooLarge`]) before anything is proposed, and the batcher leaves a request that would
//! push its entry over the limit for the next entry. The limit keeps an entry inside one commitlog segment
//! (a larger record is a storage error, which stops openraft) and inside one Raft transport frame.
//!
//! A storage failure — the commitlog's IO thread poisoned, the state machine unable to write a consume
//! queue or a checkpoint, openraft's core stopped on an error — is reported once, with its cause (kind,
//! errno, file), through [`RaftNode::failed`]; writes are refused from then on as [`WriteError::Stopped`]
//! (nothing appended). The node cannot recover in place: its owner exits and is restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use raftmq_commitlog::{CommitLog, CommitLogConfig, CommitLogReader, FlushPolicy, HEADER_LEN};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{info, warn};

use crate::error::{FailureCell, StoreFailure};
use crate::handshake::RaftAuth;
use crate::log_store::{LogStore, StoreLink};
use crate::member::MemberAddr;
use crate::message_index::{MessageIndex, MessageIndexConfig};
use crate::network::{
    control_call, ControlRequest, Isolation, LinkWatch, RaftControl, RaftServer, TcpNetworkFactory, TransferClock, FRAME_BYTES_MAX,
};
use crate::prevote::{ElectionTiming, PreVote};
use crate::stall::{Progress, StallDetector};
use crate::state_machine::{SmShared, StateMachine, StateMachineConfig};
use crate::types::{
    Action, Command, CommandResponse, Delivery, Node, NodeId, Op, Produce, QueueAppend, QueueAppendResult, Raft, OPS_HEADER_BYTES,
    PRODUCE_HEADER_BYTES,
};

/// The largest `entry_bytes_max` a node accepts: 16 MiB, the RocketMQ remoting frame cap, so no single request
/// is refused for the entry limit alone. On the Raft wire an entry takes at most twice its encoded size plus a
/// few bytes (bincode's lengths are 8 bytes where the log body's are 2 or 4), so one entry of this size,
/// together with up to `REPLICATION_BYTES_MAX` of smaller entries before it, fits one transport frame.
pub const ENTRY_BYTES_LIMIT: usize = 16 << 20;

const _: () = assert!(2 * (ENTRY_BYTES_LIMIT + crate::log_store::REPLICATION_BYTES_MAX) + (1 << 20) <= FRAME_BYTES_MAX);

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
    /// Leader heartbeat (also openraft 0.9's AppendEntries timeout; the transport lets a transfer of entries
    /// run longer, see [`crate::network::append_timeout`]), ms.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms.
    pub election_min_ms: u64,
    /// Election timeout upper bound, ms.
    pub election_max_ms: u64,
    /// Bytes of produce requests the batcher aims for per entry: it stops draining once an entry holds this
    /// much. At most `entry_bytes_max`.
    pub batch_bytes_max: usize,
    /// Largest entry, in encoded bytes ([`Command::encoded_len`]): larger writes are refused with
    /// [`WriteError::EntryTooLarge`], and batches never exceed it. Must fit a commitlog segment with its record
    /// header, and be at most [`ENTRY_BYTES_LIMIT`].
    pub entry_bytes_max: usize,
    /// Produce entries awaiting commit at once. 1 was best on unpatched openraft 0.9, whose leader appends
    /// and replication ran serially: a second entry in flight only halved the batches (see docs/benchmarks.md,
    /// also for figures with the leader-fsync patch).
    pub batch_inflight_max: usize,
    /// Produce requests waiting for the batcher at most (flow control); 1..=[`SEND_QUEUE_MAX_LIMIT`].
    pub send_queue_max: usize,
    /// Encoded bytes of the produce requests waiting for the batcher at most (flow control); at least
    /// `entry_bytes_max` (any admissible request fits an empty queue), at most [`SEND_QUEUE_BYTES_MAX_LIMIT`].
    pub send_queue_bytes_max: usize,
    /// Longest a produce request may wait for the batcher before it is refused unproposed (RocketMQ's
    /// `waitTimeMillsInSendQueue`), ms; 1..=[`SEND_QUEUE_WAIT_MS_MAX_LIMIT`].
    pub send_queue_wait_ms_max: u64,
    /// The message index (`<data_dir>/index`, local to this node); `None` = no index.
    pub message_index: Option<MessageIndexConfig>,
    /// The cluster secrets every Raft-port connection is authenticated with ([`crate::handshake`]); `None`:
    /// the Raft port is open to anyone who can reach it. `Debug` shows no secret.
    pub cluster_secrets: Option<raftmq_remoting::cluster_auth::ClusterSecrets>,
    /// Least time between two leader transfers this node takes part in (as the leader handing over, or as
    /// the target told to campaign), ms; 0 = no minimum. At most [`TRANSFER_INTERVAL_MIN_MS_MAX`].
    pub transfer_interval_min_ms: u64,
    /// A leader whose quorum match index has not moved for this long while entries wait above it hands
    /// leadership to its most caught-up follower (see [`RaftNode::start`], "stalled leader"), ms; 0 = never.
    /// Either 0 or within `2 × election_max_ms ..=` [`STALL_HANDOFF_MS_MAX`].
    pub stall_handoff_ms: u64,
}

/// Default [`NodeConfig::send_queue_max`].
pub const SEND_QUEUE_MAX_DEFAULT: usize = 4096;
/// Largest [`NodeConfig::send_queue_max`].
pub const SEND_QUEUE_MAX_LIMIT: usize = 1 << 20;
/// Default [`NodeConfig::send_queue_bytes_max`]: 64 MiB.
pub const SEND_QUEUE_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Largest [`NodeConfig::send_queue_bytes_max`]: 4 GiB.
pub const SEND_QUEUE_BYTES_MAX_LIMIT: usize = 4 << 30;
/// Default [`NodeConfig::send_queue_wait_ms_max`]: 200 ms, RocketMQ's `waitTimeMillsInSendQueue`.
pub const SEND_QUEUE_WAIT_MS_DEFAULT: u64 = 200;
/// Largest [`NodeConfig::send_queue_wait_ms_max`]: one minute.
pub const SEND_QUEUE_WAIT_MS_MAX_LIMIT: u64 = 60_000;

/// Default [`NodeConfig::stall_handoff_ms`]: 2 s — four election timeouts (500 ms by default), and
/// more than the largest frame of the default 6 MiB entries (about 12 MiB on the wire) takes at the transport's
/// assumed 8 MiB/s, so that a busy but healthy leader is not mistaken for a stalled one. Groups with larger
/// entries on slower links should raise it.
pub const STALL_HANDOFF_MS_DEFAULT: u64 = 2_000;

/// Largest [`NodeConfig::stall_handoff_ms`]: ten minutes.
pub const STALL_HANDOFF_MS_MAX: u64 = 600_000;

/// Default [`NodeConfig::transfer_interval_min_ms`]: 3 s. A transfer fences writes for at most about
/// `election_min_ms + heartbeat_ms` (the lease, 0.35 s by default) plus the target's campaign, so a loop of transfers fences at most about a fifth
/// of the time.
pub const TRANSFER_INTERVAL_MIN_MS_DEFAULT: u64 = 3_000;

/// Largest [`NodeConfig::transfer_interval_min_ms`]: one hour.
pub const TRANSFER_INTERVAL_MIN_MS_MAX: u64 = 3_600_000;

impl NodeConfig {
    /// Defaults: 1 GiB segments, sync flush, heartbeat 100 ms, election 250–500 ms, 1 MiB batches, 6 MiB
    /// entries at most.
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
            election_min_ms: 250,
            election_max_ms: 500,
            batch_bytes_max: 1 << 20,
            entry_bytes_max: ENTRY_BYTES_MAX_DEFAULT,
            batch_inflight_max: 1,
            send_queue_max: SEND_QUEUE_MAX_DEFAULT,
            send_queue_bytes_max: SEND_QUEUE_BYTES_MAX_DEFAULT,
            send_queue_wait_ms_max: SEND_QUEUE_WAIT_MS_DEFAULT,
            message_index: None,
            cluster_secrets: None,
            transfer_interval_min_ms: TRANSFER_INTERVAL_MIN_MS_DEFAULT,
            stall_handoff_ms: STALL_HANDOFF_MS_DEFAULT,
        }
    }

    /// Checks the rules between fields.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming the rule broken.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |m: String| Err(NodeError::Config(m));
        if let Some(ix) = &self.message_index {
            ix.validate().map_err(NodeError::Config)?;
        }
        if self.entry_bytes_max == 0 || self.entry_bytes_max > ENTRY_BYTES_LIMIT {
            return bad(format!("entry_bytes_max {} must be within 1..={ENTRY_BYTES_LIMIT}", self.entry_bytes_max));
        }
        if self.entry_bytes_max as u64 + HEADER_LEN as u64 > self.segment_bytes.min(u64::from(u32::MAX)) {
            return bad(format!(
                "entry_bytes_max {} plus the {HEADER_LEN}-byte record header must fit a commitlog segment of {} bytes",
                self.entry_bytes_max, self.segment_bytes
            ));
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > self.entry_bytes_max {
            return bad(format!("batch_bytes_max {} must be within 1..=entry_bytes_max ({})", self.batch_bytes_max, self.entry_bytes_max));
        }
        if !(1..=SEND_QUEUE_MAX_LIMIT).contains(&self.send_queue_max) {
            return bad(format!("send_queue_max {} must be within 1..={SEND_QUEUE_MAX_LIMIT}", self.send_queue_max));
        }
        if !(self.entry_bytes_max..=SEND_QUEUE_BYTES_MAX_LIMIT).contains(&self.send_queue_bytes_max) {
            return bad(format!(
                "send_queue_bytes_max {} must be within entry_bytes_max ({})..={SEND_QUEUE_BYTES_MAX_LIMIT}",
                self.send_queue_bytes_max, self.entry_bytes_max
            ));
        }
        if !(1..=SEND_QUEUE_WAIT_MS_MAX_LIMIT).contains(&self.send_queue_wait_ms_max) {
            return bad(format!(
                "send_queue_wait_ms_max {} must be within 1..={SEND_QUEUE_WAIT_MS_MAX_LIMIT}",
                self.send_queue_wait_ms_max
            ));
        }
        if self.batch_inflight_max == 0 {
            return bad("batch_inflight_max must be at least 1".into());
        }
        if self.transfer_interval_min_ms > TRANSFER_INTERVAL_MIN_MS_MAX {
            return bad(format!(
                "transfer_interval_min_ms {} must be at most {TRANSFER_INTERVAL_MIN_MS_MAX}",
                self.transfer_interval_min_ms
            ));
        }
        let stall_min = 2 * self.election_max_ms;
        if self.stall_handoff_ms != 0 && !(stall_min..=STALL_HANDOFF_MS_MAX).contains(&self.stall_handoff_ms) {
            return bad(format!(
                "stall_handoff_ms {} must be 0 (never hand off) or within {stall_min}..={STALL_HANDOFF_MS_MAX} \
                 (at least twice election_max_ms)",
                self.stall_handoff_ms
            ));
        }
        Ok(())
    }
}

/// Default [`NodeConfig::entry_bytes_max`]: 6 MiB. Room for any request a RocketMQ client sends with the
/// default `maxMessageSize` of 4 MiB (a body, or a whole batch, of at most 4 MiB) in the stored layout, and
/// small enough for the 8 MiB segments the multi-process tests use.
pub const ENTRY_BYTES_MAX_DEFAULT: usize = 6 << 20;

/// Errors of node operations.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration breaks a rule ([`NodeConfig::validate`]).
    #[error("invalid node config: {0}")]
    Config(String),
    /// Startup failed.
    #[error("start: {0}")]
    Start(String),
    /// The store failed (at start-up or since): the node must stop. Keeps the IO error's kind and errno.
    #[error("storage failed: {0}")]
    Store(StoreFailure),
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
    /// Reading the local log failed (its kind says whether IO or corruption).
    #[error("read: {0}")]
    Read(#[from] crate::error::ReadError),
    /// A membership change was refused: the sentence names the rule (ids never reused, a safe group size,
    /// a quorum that must remain).
    #[error("{0}")]
    Membership(String),
    /// Refused for now: another leader transfer is in progress, or the last one was too recent. Retry later.
    #[error("{0}")]
    Busy(String),
}

/// Most members (voters and learners) a group may have: every member is one more replication stream on the
/// leader, and a majority of voters must acknowledge every write.
pub const MEMBERS_MAX: usize = 9;

/// Voters a group keeps unless a removal is forced: three tolerate one failure.
pub const VOTERS_SAFE_MIN: usize = 3;

/// Longest a membership change waits to commit before it is reported as timed out (it may still commit).
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// One member of the group, as [`RaftNode::members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node id.
    pub id: NodeId,
    /// Raft address and, when recorded, client address.
    pub addr: MemberAddr,
    /// Voter (else learner).
    pub voter: bool,
    /// Leader only: the last log index known replicated to it.
    pub matched: Option<u64>,
}

/// The membership as one member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipView {
    /// The known leader.
    pub leader: Option<NodeId>,
    /// This member's last log index.
    pub last_log_index: Option<u64>,
    /// A joint (two-configuration) change is in progress.
    pub joint: bool,
    /// Voters and learners, by id.
    pub members: Vec<MemberInfo>,
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
    /// The write alone would make an entry of `bytes` encoded bytes, above `entry_bytes_max`. Nothing was
    /// appended.
    #[error("an entry of {bytes} bytes exceeds the entry limit of {max} bytes")]
    EntryTooLarge {
        /// Encoded size of the entry the write would make.
        bytes: usize,
        /// The node's `entry_bytes_max`.
        max: usize,
    },
    /// This node's Raft core has stopped (its store failed, or it is shutting down) before the write
    /// reached it. Nothing was appended: retrying elsewhere cannot duplicate it.
    #[error("not stored: this node has stopped{}", failure.as_ref().map(|f| format!(" after a storage failure: {f}")).unwrap_or_default())]
    Stopped {
        /// The storage failure that stopped it, if that was the reason.
        failure: Option<StoreFailure>,
    },
    /// The leader's send queue is over a bound (flow control): refused before it was proposed; nothing was
    /// appended, so a retry (here after a pause, or on another broker group) cannot duplicate it.
    #[error("{}", match kind {
        BusyKind::Overload => format!("send queue full: {queued} requests ({queued_bytes} bytes) wait for the Raft log"),
        BusyKind::Expired => format!("waited {waited_ms} ms in the send queue (longer than its limit); {queued} requests wait"),
    })]
    Busy {
        /// Which bound.
        kind: BusyKind,
        /// Requests waiting when it was refused.
        queued: usize,
        /// Their encoded bytes.
        queued_bytes: usize,
        /// How long this request waited (0 for [`BusyKind::Overload`]).
        waited_ms: u64,
    },
    /// The outcome is unknown (the node stopped or leadership changed while the entry was in flight).
    #[error("write outcome unknown: {why}{}", failure.as_ref().map(|f| format!(" (storage failed: {f})")).unwrap_or_default())]
    Unknown {
        /// What happened.
        why: String,
        /// The storage failure that stopped this node meanwhile, if any.
        failure: Option<StoreFailure>,
    },
}

/// Which flow-control bound refused a write ([`WriteError::Busy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyKind {
    /// The queue holds `send_queue_max` requests or the write would take it over `send_queue_bytes_max`.
    Overload,
    /// The request waited longer than `send_queue_wait_ms_max` before the batcher reached it.
    Expired,
}

impl WriteError {
    /// An unknown outcome with no storage failure involved.
    pub fn unknown(why: impl Into<String>) -> Self {
        WriteError::Unknown { why: why.into(), failure: None }
    }
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
    /// The leader's client address, when the membership records it ([`MemberAddr`]; members bootstrapped
    /// by earlier releases have none, and the broker takes theirs from its static peer list).
    pub leader_client_addr: Option<String>,
    /// Leader only: true once it applied an entry of its own term and everything its log held when it
    /// became leader (see [`leader_ready`]). A broker advertises itself as master only when ready.
    pub ready: bool,
}

/// Whether a leader may serve reads and advertise itself: it has applied every entry its log held when
/// it became leader of `term`, and one of its own term. `barrier` remembers `(term, log tail)` from the
/// first time this leadership was observed.
///
/// The log tail matters beyond the term check: openraft 0.9 restores a restarted node whose saved vote is
/// committed for itself straight back to leader of the same term, without a new blank entry. Its last
/// applied entry is then already of the current term while entries it had committed (and acknowledged)
/// before the crash still wait to be re-committed and applied; serving reads then would answer from a
/// state that lacks acknowledged messages.
pub(crate) fn leader_ready(
    is_leader: bool,
    term: u64,
    last_log_index: Option<u64>,
    last_applied: Option<(u64, u64)>,
    barrier: &mut Option<(u64, u64)>,
) -> bool {
    if !is_leader {
        *barrier = None;
        return false;
    }
    let tail = match *barrier {
        Some((t, tail)) if t == term => tail,
        _ => {
            let tail = last_log_index.unwrap_or(0);
            *barrier = Some((term, tail));
            tail
        }
    };
    last_applied.is_some_and(|(t, index)| t == term && index >= tail)
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

/// A queued produce request; await it for the per-queue positions once committed and applied.
pub struct ProduceTicket(oneshot::Receiver<Result<Vec<QueueAppendResult>, WriteError>>, Failures);

impl std::future::Future for ProduceTicket {
    type Output = Result<Vec<QueueAppendResult>, WriteError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(WriteError::Unknown { why: "node stopped".into(), failure: self.1.get() })))
    }
}

struct ProduceRequest {
    /// The proposer's store clock (see [`RaftNode::submit_produce_at`]).
    time_ms: i64,
    queues: Vec<QueueAppend>,
    /// Deliveries of scheduled messages, copies' `part` relative to `queues`.
    deliveries: Vec<Delivery>,
    /// Transaction and de-duplication ops, `part` relative to `queues`.
    ops: Vec<Op>,
    /// Encoded bytes of the queues, deliveries and ops (with the op count when there are ops).
    bytes: usize,
    /// When it entered the send queue.
    queued_at: Instant,
    reply: oneshot::Sender<Result<Vec<QueueAppendResult>, WriteError>>,
}

/// What waits for the produce batcher (flow control): requests and their bytes, reserved by
/// [`RaftNode::submit_produce_at`] before a request enters the channel and released when the batcher takes
/// it out.
#[derive(Debug, Default)]
pub struct SendQueue {
    requests: AtomicUsize,
    bytes: AtomicUsize,
    /// Writes refused because the queue was full ([`BusyKind::Overload`]).
    refused_overload: AtomicU64,
    /// Writes refused unproposed because they waited too long ([`BusyKind::Expired`]).
    refused_expired: AtomicU64,
}

impl SendQueue {
    /// Requests waiting now.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Their encoded bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Writes refused so far because the queue was full ([`BusyKind::Overload`]).
    pub fn refused_overload(&self) -> u64 {
        self.refused_overload.load(Ordering::Relaxed)
    }

    /// Writes refused so far unproposed because they waited too long ([`BusyKind::Expired`]).
    pub fn refused_expired(&self) -> u64 {
        self.refused_expired.load(Ordering::Relaxed)
    }

    /// The figures for `raftmq admin status` (`sendQueue`).
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests(),
            "bytes": self.bytes(),
            "refusedOverload": self.refused_overload(),
            "refusedExpired": self.refused_expired(),
        })
    }

    /// Reserves room for one request of `bytes`, or the refusal when a bound is reached.
    fn reserve(&self, bytes: usize, count_max: usize, bytes_max: usize) -> Result<(), WriteError> {
        let n = self.requests.fetch_add(1, Ordering::AcqRel);
        let b = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if n >= count_max || b.saturating_add(bytes) > bytes_max {
            self.release(bytes);
            self.refused_overload.fetch_add(1, Ordering::Relaxed);
            return Err(WriteError::Busy { kind: BusyKind::Overload, queued: n, queued_bytes: b, waited_ms: 0 });
        }
        Ok(())
    }

    fn release(&self, bytes: usize) {
        let n = self.requests.fetch_sub(1, Ordering::AcqRel);
        let b = self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(n >= 1 && b >= bytes, "released more than was reserved: {n} requests, {b} bytes, releasing {bytes}");
    }

    /// Takes `r` out of the queue's accounting; `Some(r)` to propose, `None` when it waited longer than
    /// `wait_max` (then it has been answered [`BusyKind::Expired`]).
    fn take(&self, r: ProduceRequest, wait_max: Duration) -> Option<ProduceRequest> {
        self.release(r.bytes);
        let waited = r.queued_at.elapsed();
        if waited <= wait_max {
            return Some(r);
        }
        self.refused_expired.fetch_add(1, Ordering::Relaxed);
        let _ = r.reply.send(Err(WriteError::Busy {
            kind: BusyKind::Expired,
            queued: self.requests(),
            queued_bytes: self.bytes(),
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
        }));
        None
    }
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
    isolation: Isolation,
    /// Holds back this node's flush notices to openraft (fault injection for tests).
    flush_hold: crate::log_store::FlushHold,
    /// The election timer (with its pre-vote round) and the switch leader transfers act on.
    pre_vote: Arc<PreVote>,
    /// This node's proof on control connections it opens (leader transfer).
    auth: Option<RaftAuth>,
    /// When this node last took part in a leader transfer.
    transfers: Arc<TransferClock>,
    /// The target of the leader transfer (or stalled-leader hand-off) in progress on this node, if any: one at a
    /// time.
    transferring: Arc<std::sync::Mutex<Option<NodeId>>>,
    failure: FailureCell,
    failures: Failures,
    /// The message index and its thread, when configured and opened.
    index: Option<Arc<MessageIndex>>,
    index_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// What the produce batcher packed into each entry it proposed.
    batch_stats: Arc<BatchStats>,
    send_queue: Arc<SendQueue>,
}

/// Batching efficiency of the produce batcher: per proposed entry, the produce requests it coalesced and
/// their encoded bytes (exported by the broker's metrics; the count of either is the entries proposed).
#[derive(Debug)]
pub struct BatchStats {
    /// Produce requests per entry.
    pub requests_per_entry: raftmq_metrics::Histogram,
    /// Encoded bytes per entry.
    pub bytes_per_entry: raftmq_metrics::Histogram,
}

impl Default for BatchStats {
    fn default() -> Self {
        BatchStats {
            requests_per_entry: raftmq_metrics::Histogram::new(raftmq_metrics::BATCH_BOUNDS, 1.0),
            bytes_per_entry: raftmq_metrics::Histogram::new(raftmq_metrics::BYTES_BOUNDS, 1.0),
        }
    }
}

impl BatchStats {
    fn record(&self, reqs: &[ProduceRequest]) {
        self.requests_per_entry.observe(reqs.len() as u64);
        self.bytes_per_entry.observe(reqs.iter().map(|r| r.bytes as u64).sum());
    }
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

/// Holds a node's transfer slot; frees it when dropped, and records the end of the transfer if it got as far
/// as fencing writes (a transfer refused before, e.g. for a lagging target, does not delay the next one).
struct TransferSlot<'a> {
    slot: &'a std::sync::Mutex<Option<NodeId>>,
    clock: &'a TransferClock,
    fenced: bool,
}

impl Drop for TransferSlot<'_> {
    fn drop(&mut self) {
        if self.fenced {
            self.clock.touch();
        }
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Takes a node's single transfer slot (shared by leader transfers and stalled-leader hand-offs), or says why
/// not ([`NodeError::Busy`]): another one runs, or this node took part in one less than `min` ago.
fn claim_transfer<'a>(
    slot: &'a std::sync::Mutex<Option<NodeId>>,
    clock: &'a TransferClock,
    min: Duration,
    me: NodeId,
    target: NodeId,
) -> Result<TransferSlot<'a>, NodeError> {
    let mut held = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = *held {
        return Err(NodeError::Busy(format!("a leader transfer to node {t} is in progress; retry when it has finished")));
    }
    if let Some(since) = clock.since_last().filter(|d| *d < min) {
        return Err(NodeError::Busy(format!(
            "node {me} took part in a leader transfer {} ms ago; transfers are at least {} ms apart \
             (leaderTransferIntervalMinMs): retry in {} ms",
            since.as_millis(),
            min.as_millis(),
            (min - since).as_millis().max(1)
        )));
    }
    *held = Some(target);
    Ok(TransferSlot { slot, clock, fenced: false })
}

/// Asks `others` to resume elections at once (their pause would end by itself).
async fn resume_elections(others: &[(NodeId, String)], rpc_timeout: Duration, auth: Option<&RaftAuth>) {
    for (id, addr) in others {
        if let Err(e) = control_call(addr, ControlRequest::SetElect(true), rpc_timeout, auth).await {
            warn!(node = id, error = %e, "leader transfer: could not resume elections (they resume when the pause expires)");
        }
    }
}

/// Undoes what a leader transfer switched off: this node's heartbeats, elections and write fence, and the
/// other voters' election pause. [`TransferRestore::run`] does it in order; dropping the guard without it
/// (the transfer's future dropped midway) restores this node at once and resumes the others from a task.
struct TransferRestore<'a> {
    raft: &'a Raft,
    pre_vote: &'a PreVote,
    fence: &'a Fence,
    auth: Option<RaftAuth>,
    others: Vec<(NodeId, String)>,
    rpc_timeout: Duration,
    done: bool,
}

impl TransferRestore<'_> {
    fn restore_local(&self) {
        self.raft.runtime_config().heartbeat(true);
        self.pre_vote.set_elect(true);
        self.fence.active.store(false, Ordering::Release);
    }

    async fn run(mut self) {
        self.restore_local();
        resume_elections(&self.others, self.rpc_timeout, self.auth.as_ref()).await;
        self.done = true;
    }
}

impl Drop for TransferRestore<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.restore_local();
        let (others, timeout, auth) = (std::mem::take(&mut self.others), self.rpc_timeout, self.auth.take());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { resume_elections(&others, timeout, auth.as_ref()).await });
        }
        warn!("leader transfer abandoned midway: heartbeats, elections and writes restored here");
    }
}

/// Where a storage failure is looked up: the node's recorded cause, else the commitlog's or the state
/// machine's directly (the node's cell is filled by a task, which may not have run yet when a write
/// fails because of it).
#[derive(Clone)]
struct Failures {
    node: FailureCell,
    log: CommitLogReader,
    log_dir: PathBuf,
    sm: FailureCell,
}

impl Failures {
    fn get(&self) -> Option<StoreFailure> {
        self.node.get().or_else(|| self.log.failure().map(|e| StoreFailure::from_commitlog(&e, &self.log_dir))).or_else(|| self.sm.get())
    }
}

fn map_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>, failure: &Failures) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            WriteError::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| MemberAddr::raft_of(&n.addr).to_string()) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => WriteError::unknown(e.to_string()),
        RaftError::Fatal(f) => WriteError::Unknown { why: f.to_string(), failure: failure.get() },
    }
}

/// The storage failure that stopped the node, once known: the commitlog's IO thread or the state
/// machine recorded one, or openraft's core stopped with an error (it then reads the recorded cause,
/// which both record before openraft can see the error). Ends after the first failure, or when the core
/// stops cleanly (shutdown).
async fn watch_failures(raft: Raft, log: CommitLogReader, sm: FailureCell, node: FailureCell, data_dir: PathBuf) {
    let mut log_rx = log.watch_failure();
    let mut sm_rx = sm.subscribe();
    let mut metrics = raft.metrics();
    let cause =
        |log: &CommitLogReader| log.failure().map(|e| StoreFailure::from_commitlog(&e, &data_dir.join("commitlog"))).or_else(|| sm.get());
    loop {
        if let Some(f) = cause(&log) {
            node.set(f);
            return;
        }
        let running = metrics.borrow_and_update().running_state.clone();
        match running {
            Ok(()) => {}
            Err(openraft::error::Fatal::Stopped) => return,
            Err(fatal) => {
                let f = cause(&log).unwrap_or_else(|| StoreFailure {
                    op: "raft core stopped".into(),
                    path: data_dir.clone(),
                    kind: std::io::ErrorKind::Other,
                    errno: None,
                    message: fatal.to_string(),
                });
                node.set(f);
                return;
            }
        }
        tokio::select! {
            r = log_rx.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = sm_rx.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = metrics.changed() => if r.is_err() {
                // The core task ended without saying why (a panic): treat it as a failure.
                let f = cause(&log).unwrap_or_else(|| StoreFailure {
                    op: "raft core ended".into(),
                    path: data_dir.clone(),
                    kind: std::io::ErrorKind::Other,
                    errno: None,
                    message: "the Raft core task ended unexpectedly".into(),
                });
                node.set(f);
                return;
            },
        }
    }
}

/// How long a stalled leader that handed off stays muted waiting for the new leader's first AppendEntries, in
/// election timeouts (`election_max_ms`) after the target was told to campaign: the followers' lease and
/// election timeout, the longer timeout of a candidate that saw a longer log, and what a throttled link still
/// had queued from this leader.
const HANDOFF_HOLD_ELECTIONS: u64 = 6;

/// What the stall monitor of a leader needs from its node (shared with [`RaftNode`]).
struct Handoff {
    id: NodeId,
    raft: Raft,
    fence: Arc<Fence>,
    link: Arc<LinkWatch>,
    /// The election switch (pre-vote's timer: openraft's own stays off, see prevote.rs).
    pre_vote: Arc<PreVote>,
    transferring: Arc<std::sync::Mutex<Option<NodeId>>>,
    transfers: Arc<TransferClock>,
    auth: Option<RaftAuth>,
    stall: Duration,
    heartbeat: Duration,
    /// The lease voters keep from a leader's last frame: `election_min_ms` (prevote.rs).
    lease: Duration,
    election_max: Duration,
    transfer_interval_min: Duration,
}

/// Restores a muted, fenced leader (also when the hand-off's future is dropped midway).
struct HandoffRestore<'a>(&'a Handoff);

impl Drop for HandoffRestore<'_> {
    fn drop(&mut self) {
        let h = self.0;
        h.link.set_muted(false);
        h.raft.runtime_config().heartbeat(true);
        h.pre_vote.set_elect(true);
        h.fence.active.store(false, Ordering::Release);
    }
}

/// One tick's figures: the detector's input, the voters and each voter's matched index (the leader's own is
/// its last log index). `None` once the node has stopped.
fn stall_figures(m: &openraft::RaftMetrics<NodeId, Node>) -> Option<(Progress, Vec<NodeId>, BTreeMap<NodeId, u64>)> {
    if m.state == ServerState::Shutdown || m.running_state.is_err() {
        return None;
    }
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let mut matched: BTreeMap<NodeId, u64> = BTreeMap::new();
    if let Some(rep) = &m.replication {
        for (id, l) in rep.iter() {
            matched.insert(*id, l.map(|l| l.index).unwrap_or(0));
        }
    }
    let last_log = m.last_log_index.unwrap_or(0);
    matched.insert(m.id, last_log);
    let leading = m.state == ServerState::Leader && m.replication.is_some() && membership.get_joint_config().len() <= 1;
    let quorum = crate::stall::quorum_matched(&voters, &matched).unwrap_or(0);
    Some((Progress { leading, last_log, quorum_matched: quorum }, voters, matched))
}

/// Watches this node's replication while it leads: when the quorum match index stands still for
/// `stall_handoff_ms` while entries wait ([`StallDetector`]), hands leadership to the most caught-up follower
/// ([`Handoff::run`]). Ends when the node stops.
async fn stall_monitor(h: Handoff) {
    let mut metrics = h.raft.metrics();
    let mut detector = StallDetector::new(h.stall);
    let mut tick = tokio::time::interval(h.heartbeat.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if metrics.has_changed().is_err() {
            return;
        }
        let Some((progress, voters, matched)) = stall_figures(&metrics.borrow_and_update()) else { return };
        if !detector.observe(Instant::now(), progress) {
            continue;
        }
        if let Some(target) = crate::stall::handoff_target(h.id, &voters, &matched) {
            warn!(
                target,
                last_log = progress.last_log,
                quorum_matched = progress.quorum_matched,
                stalled_ms = h.stall.as_millis() as u64,
                "this leader cannot replicate: entries wait while the quorum's match index stands still; handing leadership off"
            );
            h.run(target).await;
        }
        detector.reset();
    }
}

impl Handoff {
    /// Hands leadership to `target` from a leader that cannot replicate. Unlike [`RaftNode::transfer_leader`]
    /// it cannot wait for the target to catch up (that is what does not happen): it fences writes, switches off
    /// its heartbeats and elections and mutes its outgoing Raft RPCs ([`LinkWatch::set_muted`]), so the
    /// followers stop hearing from it and their lease runs out. The target must answer a ping within
    /// `stall_handoff_ms` — a follower that does not may be down, and with a quorum down nobody can lead: this
    /// leader then resumes at once. It is then told to campaign; Raft's vote rule keeps the election safe (a
    /// candidate lacking committed entries cannot win), and if it fails the followers' own timers elect one.
    /// This node keeps receiving Raft RPCs, so the new leader's first AppendEntries makes it a follower, which
    /// ends the wait; after [`HANDOFF_HOLD_ELECTIONS`] election timeouts without one it resumes as leader.
    /// Shares the transfer slot and `transfer_interval_min_ms` with leader transfers.
    async fn run(&self, target: NodeId) {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let Some(target_addr) = membership.membership().get_node(&target).map(|n| MemberAddr::raft_of(&n.addr).to_string()) else {
            return;
        };
        let mut slot = match claim_transfer(&self.transferring, &self.transfers, self.transfer_interval_min, self.id, target) {
            Ok(s) => s,
            Err(e) => {
                info!(target, error = %e, "stalled leader: no hand-off now");
                return;
            }
        };
        let started = Instant::now();
        slot.fenced = true;
        self.fence.target.store(target, Ordering::Release);
        self.fence.active.store(true, Ordering::Release);
        self.raft.runtime_config().heartbeat(false);
        self.pre_vote.set_elect(false);
        self.link.set_muted(true);
        let _restore = HandoffRestore(self);
        if let Err(e) = control_call(&target_addr, ControlRequest::Ping, self.stall, self.auth.as_ref()).await {
            warn!(target, error = %e, "stalled leader: the hand-off target does not answer (a quorum may be down); leading on");
            return;
        }
        // Followers honour this leader's lease (election_min) after the last frame they had from it.
        tokio::time::sleep_until((started + self.lease + self.heartbeat).into()).await;
        let rpc_timeout = 2 * self.election_max;
        if let Err(e) = control_call(&target_addr, ControlRequest::TriggerElect, rpc_timeout, self.auth.as_ref()).await {
            warn!(target, error = %e, "stalled leader: could not make the target campaign; the followers' election timers will");
        }
        let hold = self.election_max * HANDOFF_HOLD_ELECTIONS as u32 + self.heartbeat;
        let outcome = self.raft.wait(Some(hold)).metrics(|m| m.state != ServerState::Leader, "another leader").await;
        let leader = outcome.as_ref().ok().and_then(|m| m.current_leader);
        info!(
            target,
            stepped_down = outcome.is_ok(),
            new_leader = ?leader,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stalled leader hand-off"
        );
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
        cfg.validate()?;
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
        let log_dir = log_cfg.dir.clone();
        let log = tokio::task::spawn_blocking(move || CommitLog::open(log_cfg)).await.map_err(|e| start_err(&e))?.map_err(|e| match e {
            // IO errors (a full disk while recovery allocates) stop the node with their kind and file.
            raftmq_commitlog::CommitLogError::Io { .. } | raftmq_commitlog::CommitLogError::Corrupt { .. } => {
                NodeError::Store(StoreFailure::from_commitlog(&e, &log_dir))
            }
            e => start_err(&e),
        })?;
        let link = StoreLink::default();
        let mut sm_cfg = StateMachineConfig::new(cfg.data_dir.join("state"));
        sm_cfg.checkpoint_every = cfg.checkpoint_every;
        sm_cfg.cq_units_per_file = cfg.cq_units_per_file;
        sm_cfg.mapped_files_max = cfg.mapped_files_max;
        let sm_failure = sm_cfg.failure.clone();
        // A start-up error caused by storage (re-applying onto a full disk) carries the recorded cause.
        let stored_cause = |log: &CommitLog, e: &dyn std::fmt::Display| match log.reader().failure() {
            Some(f) => NodeError::Store(StoreFailure::from_commitlog(&f, log.dir())),
            None => match sm_failure.get() {
                Some(f) => NodeError::Store(f),
                None => start_err(e),
            },
        };
        let (reader, link2) = (log.reader(), link.clone());
        let sm = tokio::task::spawn_blocking(move || StateMachine::open(sm_cfg, reader, link2))
            .await
            .map_err(|e| start_err(&e))?
            .map_err(|e| stored_cause(&log, &e))?;
        let shared = sm.shared();
        let (index, index_thread) = match cfg.message_index.clone() {
            Some(ic) => open_message_index(cfg.data_dir.join("index"), ic, log.reader(), Arc::clone(&shared)).await,
            None => (None, None),
        };
        if let Some(p) = log.reader().state().purged {
            shared.set_snapshot_boundary(p.point.index);
        }
        let config = Config {
            cluster_name: "raftmq".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            // openraft's election timer is off (prevote.rs runs raftmq's, with the full min..max range); its
            // `election_timeout_max` then only sets the leader lease a voter honours before it grants a vote
            // (openraft's engine_config.rs). The lease is the minimum election timeout (Raft thesis §4.2.3,
            // prevote.rs), hence min + 1.
            election_timeout_min: cfg.election_min_ms,
            election_timeout_max: cfg.election_min_ms + 1,
            install_snapshot_timeout: 2000,
            max_payload_entries: 256,
            replication_lag_threshold: 1000,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            purge_batch_size: 1,
            // The election timer is raftmq's, with a pre-vote round first (crate::prevote).
            enable_elect: false,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| start_err(&e))?);
        let isolation = Isolation::default();
        let auth = cfg.cluster_secrets.clone().map(|s| RaftAuth::new(s, cfg.id));
        let network = TcpNetworkFactory::with_isolation(isolation.clone()).with_auth(auth.clone());
        let log_store = LogStore::new(log.clone(), link);
        let flush_hold = log_store.flush_hold();
        let raft = Raft::new(cfg.id, config, network, log_store, sm).await.map_err(|e| stored_cause(&log, &e))?;
        let failure = FailureCell::default();
        let failures =
            Failures { node: failure.clone(), log: log.reader(), log_dir: cfg.data_dir.join("commitlog"), sm: sm_failure.clone() };
        tokio::spawn(watch_failures(raft.clone(), log.reader(), sm_failure.clone(), failure.clone(), cfg.data_dir.clone()));
        let transfers = Arc::new(TransferClock::default());
        let timing = ElectionTiming { min: Duration::from_millis(cfg.election_min_ms), max: Duration::from_millis(cfg.election_max_ms) };
        let pre_vote = PreVote::new(cfg.id, raft.clone(), log.reader(), auth.clone(), isolation.clone(), timing);
        pre_vote.spawn();
        let control = Arc::new(RaftControl::with_clock(raft.clone(), Arc::clone(&transfers)).with_pre_vote(Arc::clone(&pre_vote)));
        let server = RaftServer::start_authenticated(listener, Arc::new(raft.clone()), control, isolation.clone(), auth.clone());

        let (role_tx, role_rx) = watch::channel(RoleState {
            role: Role::Learner,
            term: 0,
            leader: None,
            leader_addr: None,
            leader_client_addr: None,
            ready: false,
        });
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            let mut barrier = None;
            loop {
                let state = {
                    let m = metrics.borrow_and_update();
                    let leader =
                        m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| MemberAddr::parse(&n.addr)));
                    let (leader_addr, leader_client_addr) = match leader {
                        Some(a) => (Some(a.raft), a.client),
                        None => (None, None),
                    };
                    let ready = leader_ready(
                        m.state == ServerState::Leader,
                        m.current_term,
                        m.last_log_index,
                        m.last_applied.map(|a| (a.leader_id.term, a.index)),
                        &mut barrier,
                    );
                    RoleState {
                        role: role_of(m.state),
                        term: m.current_term,
                        leader: m.current_leader,
                        leader_addr,
                        leader_client_addr,
                        ready,
                    }
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

        let fence = Arc::new(Fence::default());
        let transferring = Arc::new(std::sync::Mutex::new(None));
        if cfg.stall_handoff_ms > 0 {
            tokio::spawn(stall_monitor(Handoff {
                id: cfg.id,
                raft: raft.clone(),
                fence: Arc::clone(&fence),
                link: Arc::clone(isolation.link()),
                pre_vote: Arc::clone(&pre_vote),
                transferring: Arc::clone(&transferring),
                transfers: Arc::clone(&transfers),
                auth: auth.clone(),
                stall: Duration::from_millis(cfg.stall_handoff_ms),
                heartbeat: Duration::from_millis(cfg.heartbeat_ms),
                lease: Duration::from_millis(cfg.election_min_ms),
                election_max: Duration::from_millis(cfg.election_max_ms),
                transfer_interval_min: Duration::from_millis(cfg.transfer_interval_min_ms),
            }));
        }
        let (produce_tx, produce_rx) = mpsc::channel(cfg.send_queue_max);
        let batch_stats = Arc::new(BatchStats::default());
        let send_queue = Arc::new(SendQueue::default());
        tokio::spawn(produce_batcher(
            raft.clone(),
            produce_rx,
            BatchLimits {
                bytes_target: cfg.batch_bytes_max,
                bytes_max: cfg.entry_bytes_max,
                inflight_max: cfg.batch_inflight_max,
                wait_max: Duration::from_millis(cfg.send_queue_wait_ms_max),
            },
            BatcherShared {
                stats: Arc::clone(&batch_stats),
                failure: failures.clone(),
                fence: Arc::clone(&fence),
                queue: Arc::clone(&send_queue),
            },
        ));
        info!(id = cfg.id, addr = %cfg.raft_addr, "raft node started");
        Ok(RaftNode {
            id: cfg.id,
            cfg,
            raft,
            sm: shared,
            log,
            server,
            role_rx,
            produce_tx,
            fence,
            isolation,
            flush_hold,
            auth,
            transfers,
            pre_vote,
            transferring,
            failure,
            failures,
            index,
            index_thread: std::sync::Mutex::new(index_thread),
            batch_stats,
            send_queue,
        })
    }

    /// What the produce batcher packed into each Raft entry (requests, bytes).
    pub fn batch_stats(&self) -> &BatchStats {
        &self.batch_stats
    }

    /// The produce requests waiting for the batcher, and the flow-control refusals so far.
    pub fn send_queue(&self) -> &SendQueue {
        &self.send_queue
    }

    /// The message index, if configured and opened (derived, node-local data: see [`MessageIndex`]).
    pub fn message_index(&self) -> Option<&Arc<MessageIndex>> {
        self.index.as_ref()
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

    /// The member leadership is being transferred to while a transfer fences this leader's writes
    /// ([`Self::transfer_leader`]); `None` when writes are not fenced.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.fence.active.load(Ordering::Acquire).then(|| self.fence.target.load(Ordering::Acquire))
    }

    /// Watch of role, term, leader and readiness.
    pub fn role(&self) -> watch::Receiver<RoleState> {
        self.role_rx.clone()
    }

    /// The storage failure that stopped this node, if one did.
    pub fn failure(&self) -> Option<StoreFailure> {
        self.failures.get()
    }

    /// Resolves with the storage failure that stops this node: the commitlog's IO thread failed (a
    /// segment that cannot be allocated, a failed write or fsync), the state machine could not write a
    /// consume queue or a checkpoint, or openraft's core stopped with an error. The node cannot recover
    /// by itself; its owner should exit so that a supervisor restarts it. Never resolves after a clean
    /// [`RaftNode::shutdown`].
    pub async fn failed(&self) -> StoreFailure {
        self.failure.wait().await
    }

    /// An openraft error as a node error: the recorded storage failure when there is one (openraft's
    /// own errors keep only text), else the error's text.
    fn raft_err(&self, e: impl std::fmt::Display) -> NodeError {
        match self.failures.get() {
            Some(f) => NodeError::Store(f),
            None => NodeError::Raft(e.to_string()),
        }
    }

    /// Refuses writes once the store has failed: nothing is proposed, so nothing is appended.
    fn check_store(&self) -> Result<(), WriteError> {
        match self.failures.get() {
            Some(f) => Err(WriteError::Stopped { failure: Some(f) }),
            None => Ok(()),
        }
    }

    /// Bootstraps the group on this (pristine) node with `members` (id → Raft address). A no-op when the
    /// node is already initialized. Call on exactly one node.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), NodeError> {
        if self.raft.is_initialized().await.map_err(|e| self.raft_err(e))? {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, Node> = members.into_iter().map(|(id, addr)| (id, Node { addr })).collect();
        self.raft.initialize(nodes).await.map_err(|e| self.raft_err(e))
    }

    /// Proposes messages for one or more topic-queues; resolves with per-queue positions once committed
    /// and applied. Concurrent calls are coalesced into one entry; the messages of one call always share an
    /// entry (all or nothing). Carries no time of its own (stamp 0 never moves the replicated clock); the
    /// broker stamps its writes through [`RaftNode::submit_produce_at`].
    ///
    /// # Errors
    /// [`WriteError::EntryTooLarge`] when the call alone would make an entry above `entry_bytes_max`; the
    /// others as documented on [`WriteError`].
    pub async fn produce(&self, queues: Vec<QueueAppend>) -> Result<Vec<QueueAppendResult>, WriteError> {
        self.submit_produce_at(0, queues, Vec::new(), Vec::new()).await?.await
    }

    /// The first half of [`RaftNode::produce`], stamped and with deliveries: queues the request for the
    /// batcher and returns once it is queued. Requests enter the log in the order their submissions
    /// return, so a caller that must order writes (the broker's store clock) submits under its own lock and
    /// awaits the outcome outside it. `time_ms` is the caller's store clock: the entry carries the largest
    /// time of the requests it holds, and it is the replicated state's only source of time. `deliveries`
    /// name copies of scheduled messages among `queues`, `ops` the transaction and de-duplication records
    /// of its messages (`part` indexes `queues` in both).
    pub async fn submit_produce_at(
        &self,
        time_ms: i64,
        queues: Vec<QueueAppend>,
        deliveries: Vec<Delivery>,
        ops: Vec<Op>,
    ) -> Result<ProduceTicket, WriteError> {
        self.check_store()?;
        self.fence.check()?;
        let ops_bytes = if ops.is_empty() { 0 } else { OPS_HEADER_BYTES + ops.iter().map(Op::encoded_len).sum::<usize>() };
        let bytes = queues.iter().map(QueueAppend::encoded_len).sum::<usize>()
            + deliveries.iter().map(Delivery::encoded_len).sum::<usize>()
            + ops_bytes;
        let entry_bytes = PRODUCE_HEADER_BYTES + bytes;
        if entry_bytes > self.cfg.entry_bytes_max {
            return Err(WriteError::EntryTooLarge { bytes: entry_bytes, max: self.cfg.entry_bytes_max });
        }
        self.send_queue.reserve(bytes, self.cfg.send_queue_max, self.cfg.send_queue_bytes_max)?;
        let (reply, rx) = oneshot::channel();
        // The reservation keeps the channel (capacity send_queue_max) below full: try_send fails only when the
        // batcher has stopped.
        let queued_at = Instant::now();
        if let Err(e) = self.produce_tx.try_send(ProduceRequest { time_ms, queues, deliveries, ops, bytes, queued_at, reply }) {
            self.send_queue.release(bytes);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Busy {
                    kind: BusyKind::Overload,
                    queued: self.send_queue.requests(),
                    queued_bytes: self.send_queue.bytes(),
                    waited_ms: 0,
                },
                mpsc::error::TrySendError::Closed(_) => WriteError::Stopped { failure: self.failures.get() },
            });
        }
        Ok(ProduceTicket(rx, self.failures.clone()))
    }

    /// Proposes one command (topics, offsets) as its own entry and waits until applied.
    ///
    /// # Errors
    /// [`WriteError::EntryTooLarge`] when the command's entry would exceed `entry_bytes_max`; the others as
    /// documented on [`WriteError`].
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        self.check_store()?;
        self.fence.check()?;
        let bytes = cmd.encoded_len();
        if bytes > self.cfg.entry_bytes_max {
            return Err(WriteError::EntryTooLarge { bytes, max: self.cfg.entry_bytes_max });
        }
        self.raft.client_write(cmd).await.map(|r| r.data).map_err(|e| map_write_error(e, &self.failures))
    }

    /// A read barrier: confirms with a quorum that this node still leads and waits until everything committed
    /// before the call is applied here. Reads of replicated state (consumer offsets, topics) made after it
    /// return succeeds are linearizable; a deposed leader on the minority side of a partition fails it.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        self.fence.check()?;
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(WriteError::NotLeader {
                leader_id: f.leader_id,
                leader_addr: f.leader_node.map(|n| MemberAddr::raft_of(&n.addr).to_string()),
            }),
            Err(e) => Err(WriteError::Unknown { why: e.to_string(), failure: self.failures.get() }),
        }
    }

    /// Fault injection for tests: while `on`, every Raft RPC this member sends or receives fails, as if a
    /// partition cut its Raft port off (control RPCs still pass). A leader cut off keeps believing it leads
    /// (openraft 0.9 has no step-down on quorum loss) — exactly the deposed leader the broker must not trust.
    pub fn set_isolated(&self, on: bool) {
        warn!(node = self.id, isolated = on, "raft isolation switched (fault injection)");
        self.isolation.set(on);
    }

    /// Fault injection for tests: while `on`, AppendEntries carrying entries that this member sends are held and
    /// never delivered, while heartbeats pass — a leader that keeps its followers from electing but cannot
    /// replicate, as a throttled egress does ([`LinkWatch::set_entries_stalled`]).
    pub fn set_entries_stalled(&self, on: bool) {
        warn!(node = self.id, stalled = on, "raft entry sends stalled (fault injection)");
        self.isolation.link().set_entries_stalled(on);
    }

    /// Fault injection for tests: while `on`, openraft hears of none of this member's log flushes (fdatasync
    /// completions); they are delivered, in order, when switched off — as if this node's disk took that long
    /// to sync. The commitlog itself keeps syncing ([`crate::log_store::FlushHold`]).
    pub fn set_local_flush_held(&self, on: bool) {
        warn!(node = self.id, held = on, "local log flush notices held (fault injection)");
        self.flush_hold.set(on);
    }

    /// How many log entries this member has still to apply of what the leader has committed: the highest
    /// commit index a leader's AppendEntries told it, less its applied index. `None` on the leader itself and
    /// before any leader's commit index reached it (a member cut off from its leader learns nothing new: its
    /// lag is then the one it last knew).
    pub fn leader_commit_lag(&self) -> Option<u64> {
        if self.role_rx.borrow().role == Role::Leader {
            return None;
        }
        let commit = self.isolation.link().leader_commit()?;
        Some(commit.saturating_sub(self.sm.last_applied_index().unwrap_or(0)))
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
            None => self.raft_err(e),
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

    /// Waits until member `id` holds this leader's whole log and the log stopped growing: the target of a
    /// leader transfer must pass every voter's log check, and writes admitted just before the fence can still
    /// reach the log for a few milliseconds (the produce batcher checks the fence again before proposing).
    async fn wait_log_held_by(&self, id: NodeId, timeout: Duration) -> Result<(), NodeError> {
        const SETTLE: Duration = Duration::from_millis(20);
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.raft.metrics().borrow().last_log_index;
            self.wait_caught_up(id, deadline.saturating_duration_since(Instant::now())).await?;
            tokio::time::sleep(SETTLE).await;
            let now = self.raft.metrics().borrow().clone();
            let matched = now.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|l| l.index);
            if now.last_log_index == last && matched >= last {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout(format!("node {id} did not catch up with a log that kept growing")));
            }
        }
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), NodeError> {
        let ids: BTreeSet<NodeId> = [id].into();
        self.raft.change_membership(ChangeMembers::AddVoterIds(ids), false).await.map(|_| ()).map_err(|e| self.raft_err(e))
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
        self.raft.change_membership(ChangeMembers::ReplaceAllVoters(next), false).await.map(|_| ()).map_err(|e| self.raft_err(e))
    }

    /// The group's membership with each member's addresses and, on the leader, how far its log is
    /// replicated there (`matched`; the leader's own is its last log index). On another member `matched`
    /// is `None`: only the leader tracks replication.
    pub fn members(&self) -> MembershipView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leading = m.state == ServerState::Leader;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = if !leading {
                    None
                } else if *id == m.id {
                    m.last_log_index
                } else {
                    m.replication.as_ref().and_then(|r| r.get(id).copied().flatten()).map(|l| l.index)
                };
                MemberInfo { id: *id, addr: MemberAddr::parse(&node.addr), voter: voters.contains(id), matched }
            })
            .collect();
        MembershipView {
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            joint: membership.get_joint_config().len() > 1,
            members,
        }
    }

    /// The client address the membership records for member `id` (see [`MemberAddr`]).
    pub fn member_client_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).and_then(|n| MemberAddr::parse(&n.addr).client)
    }

    /// Leader only: the membership view, or [`NodeError::NotLeader`].
    fn leader_members(&self) -> Result<MembershipView, NodeError> {
        let view = self.members();
        if view.leader != Some(self.id) || self.role_rx.borrow().role != Role::Leader {
            return Err(NodeError::NotLeader { leader: view.leader });
        }
        if view.joint {
            return Err(NodeError::Membership("a membership change is in progress; retry when it has finished".into()));
        }
        Ok(view)
    }

    /// Adds member `id` at `addr` as a learner; replication (snapshot if needed, then the log) starts at
    /// once, and [`RaftNode::members`] shows its progress. Adding a learner that is already one at the same
    /// Raft address is a no-op (an interrupted `node add` resumes).
    ///
    /// # Errors
    /// [`NodeError::Membership`] when `id` is already a voter, a learner elsewhere, or `addr` is malformed or
    /// already another member's, or the group has [`MEMBERS_MAX`] members; [`NodeError::NotLeader`] off the
    /// leader.
    pub async fn add_member(&self, id: NodeId, addr: MemberAddr) -> Result<(), NodeError> {
        let view = self.leader_members()?;
        if !check_add(&view, id, &addr).map_err(NodeError::Membership)? {
            return Ok(());
        }
        info!(node = id, addr = %addr, "adding a learner");
        self.add_learner(id, addr.to_string()).await
    }

    /// Makes learner `id` a voter once the leader's log (as of the call) is replicated to it.
    ///
    /// # Errors
    /// [`NodeError::Membership`] when `id` is not a learner; [`NodeError::Timeout`] when it does not catch
    /// up within `timeout`; [`NodeError::NotLeader`] off the leader.
    pub async fn promote_member(&self, id: NodeId, timeout: Duration) -> Result<(), NodeError> {
        let view = self.leader_members()?;
        match view.members.iter().find(|m| m.id == id) {
            Some(m) if !m.voter => {}
            Some(_) => return Err(NodeError::Membership(format!("n{id} is already a voter"))),
            None => return Err(NodeError::Membership(format!("n{id} is not a learner of this group; add it first"))),
        }
        self.wait_caught_up(id, timeout).await?;
        info!(node = id, "promoting a learner");
        self.change_members(ChangeMembers::AddVoterIds([id].into()), timeout).await
    }

    /// Replaces voter `dead` by learner `new_id` in one joint change, once the leader's log is replicated
    /// to the learner. `dead` leaves the membership entirely; its id is never used again.
    ///
    /// # Errors
    /// [`NodeError::Membership`] when `dead` is not a voter or is this leader (transfer leadership first),
    /// or `new_id` is not a learner; [`NodeError::Timeout`]; [`NodeError::NotLeader`].
    pub async fn replace_member(&self, dead: NodeId, new_id: NodeId, timeout: Duration) -> Result<(), NodeError> {
        let view = self.leader_members()?;
        if dead == self.id {
            return Err(NodeError::Membership(format!("n{dead} is the leader and alive; transfer leadership first or remove it")));
        }
        let voters: BTreeSet<NodeId> = view.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        if !voters.contains(&dead) {
            return Err(NodeError::Membership(format!("n{dead} is not a voter of this group")));
        }
        if !view.members.iter().any(|m| m.id == new_id && !m.voter) {
            return Err(NodeError::Membership(format!("n{new_id} is not a learner of this group; add it first")));
        }
        self.wait_caught_up(new_id, timeout).await?;
        let mut next = voters;
        next.remove(&dead);
        next.insert(new_id);
        info!(dead, node = new_id, "replacing a voter");
        self.change_members(ChangeMembers::ReplaceAllVoters(next), timeout).await
    }

    /// Removes member `id` (a learner, or a voter other than this leader). A voter is removed only if at
    /// least [`VOTERS_SAFE_MIN`] voters remain and a majority of them acknowledge a fresh entry within
    /// `probe_timeout` (else the change could not commit); `force` skips both checks, never the rule that one
    /// voter must remain.
    ///
    /// # Errors
    /// [`NodeError::Membership`] naming the rule; [`NodeError::Timeout`]; [`NodeError::NotLeader`].
    pub async fn remove_member(&self, id: NodeId, force: bool, probe_timeout: Duration) -> Result<(), NodeError> {
        let view = self.leader_members()?;
        let Some(target) = view.members.iter().find(|m| m.id == id) else {
            return Err(NodeError::Membership(format!("n{id} is not a member of this group")));
        };
        if !target.voter {
            info!(node = id, "removing a learner");
            return self.change_members(ChangeMembers::RemoveNodes([id].into()), probe_timeout.max(MEMBERSHIP_CHANGE_TIMEOUT)).await;
        }
        if id == self.id {
            return Err(NodeError::Membership(format!("n{id} is the leader; transfer leadership before removing it")));
        }
        let remaining: BTreeSet<NodeId> = view.members.iter().filter(|m| m.voter && m.id != id).map(|m| m.id).collect();
        if remaining.is_empty() {
            return Err(NodeError::Membership(format!("n{id} is the only voter; a group keeps at least one")));
        }
        if !force {
            if remaining.len() < VOTERS_SAFE_MIN {
                return Err(NodeError::Membership(format!(
                    "removing n{id} would leave {} voter(s), below the safe size of {VOTERS_SAFE_MIN} (no failure tolerated); \
                     replace it instead, or force the removal",
                    remaining.len()
                )));
            }
            let alive = self.probe_voters(probe_timeout).await?;
            let up: Vec<NodeId> = remaining.iter().copied().filter(|v| alive.contains(v)).collect();
            if up.len() <= remaining.len() / 2 {
                let down: Vec<String> = remaining.iter().filter(|v| !alive.contains(v)).map(|v| format!("n{v}")).collect();
                return Err(NodeError::Membership(format!(
                    "after removing n{id} only {} of {} voters answer ({} did not within {probe_timeout:?}): the group would have no quorum",
                    up.len(),
                    remaining.len(),
                    down.join(", ")
                )));
            }
        }
        info!(node = id, force, "removing a voter");
        self.change_members(ChangeMembers::RemoveVoters([id].into()), probe_timeout.max(MEMBERSHIP_CHANGE_TIMEOUT)).await
    }

    /// The voters that replicate a fresh (empty) entry within `timeout`: this leader and the followers whose
    /// matched index reaches it. A follower can be idle and dead at once; only a new entry tells.
    async fn probe_voters(&self, timeout: Duration) -> Result<BTreeSet<NodeId>, NodeError> {
        let started = Instant::now();
        let index = match tokio::time::timeout(timeout, self.raft.client_write(Command::CommitOffsets(Vec::new()))).await {
            Ok(Ok(r)) => r.log_id.index,
            Ok(Err(e)) => return Err(self.raft_err(e)),
            Err(_) => return Err(NodeError::Timeout(format!("a probe entry did not commit within {timeout:?}: the group has no quorum"))),
        };
        let mut metrics = self.raft.metrics();
        loop {
            let (voters, reached) = {
                let m = metrics.borrow_and_update();
                let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
                let reached: BTreeSet<NodeId> = voters
                    .iter()
                    .copied()
                    .filter(|v| {
                        *v == self.id || m.replication.as_ref().and_then(|r| r.get(v).copied().flatten()).is_some_and(|l| l.index >= index)
                    })
                    .collect();
                (voters, reached)
            };
            let left = timeout.saturating_sub(started.elapsed());
            if reached.len() == voters.len() || left.is_zero() {
                return Ok(reached);
            }
            if tokio::time::timeout(left, metrics.changed()).await.is_ok_and(|r| r.is_err()) {
                return Ok(reached);
            }
        }
    }

    /// Proposes a membership change and waits (up to `timeout`) until it is committed.
    async fn change_members(&self, change: ChangeMembers<NodeId, Node>, timeout: Duration) -> Result<(), NodeError> {
        match tokio::time::timeout(timeout, self.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(match e.forward_to_leader() {
                Some(f) => NodeError::NotLeader { leader: f.leader_id },
                None => self.raft_err(e),
            }),
            Err(_) => Err(NodeError::Timeout(format!("the membership change did not commit within {timeout:?}"))),
        }
    }

    /// Moves leadership to `target` (openraft 0.9 has no API for it): fence writes here, wait until the
    /// target holds the whole log, stop this leader's heartbeats, pause every other voter's elections for a
    /// bounded time ([`Self::election_pause`], [`ControlRequest::PauseElect`]), make the target campaign at
    /// once (this leader grants it; when that is not enough, wait out the leader lease the other voters keep
    /// and make it campaign again), and restore
    /// everything afterwards — also when the target does not win within `timeout`, and also when this future
    /// is dropped midway (a guard restores this node's switches and asks the others to resume). A leader that
    /// dies or is cut off midway cannot leave elections paused: the other voters resume by themselves when
    /// their pause expires.
    ///
    /// One transfer at a time: another while one runs is refused with [`NodeError::Busy`], and so is a
    /// transfer within [`NodeConfig::transfer_interval_min_ms`] of the last transfer this node took part in
    /// (as the old leader or as the target), which bounds how much of the time a loop of transfers fences.
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
        let addr_of = |id: NodeId| membership.get_node(&id).map(|n| MemberAddr::raft_of(&n.addr).to_string());
        let Some(target_addr) = addr_of(target) else { return Err(NodeError::Raft(format!("no address for {target}"))) };
        let mut slot = self.claim_transfer(target)?;
        let rpc_timeout = Duration::from_millis(self.cfg.election_max_ms);
        let others: Vec<(NodeId, String)> =
            voters.iter().filter(|v| **v != target && **v != self.id).filter_map(|v| addr_of(*v).map(|a| (*v, a))).collect();

        let restore = TransferRestore {
            raft: &self.raft,
            pre_vote: &self.pre_vote,
            fence: &self.fence,
            auth: self.auth.clone(),
            others: others.clone(),
            rpc_timeout,
            done: false,
        };
        let started = Instant::now();
        // Fence writes first, so that the log stops growing, then wait until the target holds all of it: its
        // campaign then passes every voter's log check, this node's included.
        slot.fenced = true;
        self.fence.target.store(target, Ordering::Release);
        self.fence.active.store(true, Ordering::Release);
        if let Err(e) = self.wait_log_held_by(target, timeout).await {
            restore.run().await;
            return Err(e);
        }
        self.raft.runtime_config().heartbeat(false);
        self.pre_vote.set_elect(false);
        let pause = self.election_pause();
        for (id, addr) in &others {
            let req = ControlRequest::PauseElect { ms: pause.as_millis() as u64 };
            if let Err(e) = control_call(addr, req, rpc_timeout, self.auth.as_ref()).await {
                warn!(node = id, error = %e, "leader transfer: could not pause elections");
            }
        }
        let quiet_since = Instant::now();
        // Fast path: campaign at once. This leader's own vote is granted as soon as it has led for longer than
        // the lease (openraft 0.9 keeps the lease on the time the vote last changed, and a leader's does not
        // change while it leads), so in a group of three the target wins without waiting; the other voters
        // still honour this leader's lease. Slow path (a leader younger than its lease, larger groups): wait out
        // the lease every voter keeps from this leader's last heartbeat, and campaign again.
        let leads = |wait: Duration| async move {
            self.raft.wait(Some(wait)).metrics(|m| m.current_leader == Some(target) && m.state != ServerState::Leader, "target leads").await
        };
        let mut result = match control_call(&target_addr, ControlRequest::TriggerElect, rpc_timeout, self.auth.as_ref()).await {
            Ok(_) => {
                leads(Duration::from_millis(self.cfg.election_max_ms)).await.map(|_| ()).map_err(|e| NodeError::Timeout(e.to_string()))
            }
            Err(e) => Err(NodeError::Raft(format!("trigger election on {target}: {e}"))),
        };
        let mut path = "fast";
        let target_leads = |m: &openraft::RaftMetrics<NodeId, Node>| m.current_leader == Some(target) && m.state != ServerState::Leader;
        if result.is_err() && !target_leads(&self.raft.metrics().borrow()) {
            path = "after the lease";
            // Voters honour the old leader's lease (election_min_ms, prevote.rs) after its last heartbeat.
            let lease = Duration::from_millis(self.cfg.election_min_ms + self.cfg.heartbeat_ms);
            tokio::time::sleep(lease.saturating_sub(quiet_since.elapsed())).await;
            result = match control_call(&target_addr, ControlRequest::TriggerElect, rpc_timeout, self.auth.as_ref()).await {
                Ok(_) => leads(timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(100)))
                    .await
                    .map(|_| ())
                    .map_err(|e| NodeError::Timeout(e.to_string())),
                Err(e) => Err(NodeError::Raft(format!("trigger election on {target}: {e}"))),
            };
        }
        restore.run().await;
        info!(target, ok = result.is_ok(), path, elapsed_ms = started.elapsed().as_millis() as u64, "leader transfer");
        result
    }

    /// The voters this leader could hand leadership to, most caught-up first (highest matched log index, then
    /// the lower id): every voter but this node that has acknowledged at least one entry. Empty on a
    /// non-leader and in a group of one.
    pub fn transfer_candidates(&self) -> Vec<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Vec::new();
        }
        let matched = |id: &NodeId| m.replication.as_ref().and_then(|r| r.get(id).copied().flatten()).map(|l| l.index);
        let mut c: Vec<(u64, NodeId)> =
            m.membership_config.membership().voter_ids().filter(|v| *v != self.id).filter_map(|v| matched(&v).map(|i| (i, v))).collect();
        c.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        c.into_iter().map(|(_, v)| v).collect()
    }

    /// How long a leader transfer pauses the other voters' elections: the leader lease it waits out
    /// (`election_min_ms + heartbeat_ms`), the call that makes the target campaign (`election_max_ms` at most)
    /// and the target's campaign (`election_max_ms`); at most [`crate::network::ELECTION_PAUSE_MS_MAX`]. 1.35 s by default.
    pub fn election_pause(&self) -> Duration {
        let ms = self.cfg.election_min_ms + self.cfg.heartbeat_ms + 2 * self.cfg.election_max_ms;
        crate::network::clamp_pause(Duration::from_millis(ms))
    }

    /// Takes the single transfer slot, or says why not ([`NodeError::Busy`]).
    fn claim_transfer(&self, target: NodeId) -> Result<TransferSlot<'_>, NodeError> {
        claim_transfer(&self.transferring, &self.transfers, Duration::from_millis(self.cfg.transfer_interval_min_ms), self.id, target)
    }

    /// Compacts the log through `upto` (at most the applied index and the newest checkpoint): builds the
    /// metadata snapshot at the newest checkpoint, purges the log through `upto` and raises consume-queue
    /// min offsets. Returns
    /// the purge index, or `None` when no checkpoint is old enough. Never purges an entry holding a
    /// scheduled message that is not delivered yet ([`SmShared::retention_pin_index`]).
    pub async fn compact(&self, upto: u64, timeout: Duration) -> Result<Option<u64>, NodeError> {
        let applied = self.sm.last_applied_index().unwrap_or(0);
        let pin = self.sm.retention_pin_index().unwrap_or(u64::MAX);
        let limit = upto.min(applied).min(pin);
        // The snapshot is the newest checkpoint (at or below the applied index): it may lie above the purge
        // point, which only needs to be covered by it. Retention's replicated state does not depend on
        // what a replica that installs it holds below (see `raftmq_state::retention`).
        let Some(p) = self.sm.checkpoint_indexes().into_iter().next_back().filter(|i| *i <= applied) else { return Ok(None) };
        let purge_to = limit.min(p);
        if purge_to == 0 || self.log.reader().state().purged.is_some_and(|m| m.point.index >= purge_to) {
            return Ok(None);
        }
        self.sm.set_snapshot_boundary(p);
        self.raft.trigger().snapshot().await.map_err(|e| self.raft_err(e))?;
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= p), "snapshot at boundary")
            .await
            .map_err(|e| NodeError::Timeout(e.to_string()))?;
        let snap = m.snapshot.map(|s| s.index).unwrap_or(p).min(purge_to);
        self.raft.trigger().purge_log(snap).await.map_err(|e| self.raft_err(e))?;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.purged.is_some_and(|l| l.index >= snap), "purged")
            .await
            .map_err(|e| NodeError::Timeout(e.to_string()))?;
        if let Some(mark) = self.log.reader().state().purged {
            let sm = Arc::clone(&self.sm);
            // The replicated floor may lie above the purge point (the nearest checkpoint below it): files
            // wholly below the floor's offsets go too.
            let floor = sm.retention_floor().pos.max(mark.next_pos);
            tokio::task::spawn_blocking(move || sm.advance_min_offsets(floor))
                .await
                .map_err(|e| self.raft_err(e))?
                .map_err(NodeError::Store)?;
            // The message index is derived data: its files wholly below the purge point go too (a failure
            // only leaves files that name purged records, which queries skip).
            if let Some(ix) = self.index.clone() {
                let below = mark.next_pos;
                match tokio::task::spawn_blocking(move || ix.purge_below(below)).await {
                    Ok(Ok(n)) if n > 0 => info!(files = n, below, "message index files purged"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "message index purge failed"),
                    Err(e) => warn!(error = %e, "message index purge task failed"),
                }
            }
        }
        info!(index = snap, "log compacted");
        Ok(Some(snap))
    }

    /// Decides the next retention purge point from the local log and applied state (see
    /// [`crate::retention`]); the leader proposes it with [`RaftNode::write`] of `Command::Retain`.
    pub async fn plan_retention(&self, policy: crate::retention::RetentionPolicy) -> Result<crate::retention::RetentionPlan, NodeError> {
        let sm = Arc::clone(&self.sm);
        let log = self.log.reader();
        tokio::task::spawn_blocking(move || {
            let inputs = crate::retention::PlanInputs {
                floor: sm.retention_floor(),
                applied: sm.last_applied_index().unwrap_or(0),
                pin: sm.retention_pin_index(),
            };
            let mut plan = crate::retention::plan(&log, inputs, &policy)?;
            if let Some(p) = plan.point {
                plan.queues = sm.queue_firsts_at(p.pos);
            }
            Ok(plan)
        })
        .await
        .map_err(|e| self.raft_err(e))?
        .map_err(NodeError::Read)
    }

    /// Stops openraft and the transport, then waits until everything written is durable. The commitlog's
    /// IO thread exits when the last handle is dropped.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
        self.server.shutdown();
        if let Some(ix) = &self.index {
            ix.stop();
            let thread = self.index_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(t) = thread {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
        if let Err(e) = self.log.flush().await {
            warn!(error = %e, "final commitlog flush");
        }
    }
}

/// The rules for adding member `id` at `addr` to `view`: `Ok(true)` to add it, `Ok(false)` when it is already a
/// learner at that address (nothing to do), `Err` naming the rule broken.
fn check_add(view: &MembershipView, id: NodeId, addr: &MemberAddr) -> Result<bool, String> {
    addr.validate()?;
    if id == 0 {
        return Err("node id 0 is reserved (brokerId 0 means the leader in routes)".into());
    }
    if let Some(m) = view.members.iter().find(|m| m.id == id) {
        if m.voter {
            return Err(format!("n{id} is already a voter of this group; node ids are never reused"));
        }
        if m.addr.raft != addr.raft {
            return Err(format!("n{id} is already a learner at {}, not {}", m.addr.raft, addr.raft));
        }
        return Ok(false);
    }
    if let Some(m) = view.members.iter().find(|m| m.addr.raft == addr.raft) {
        return Err(format!("raft address {} is already member n{}'s", addr.raft, m.id));
    }
    if view.members.len() >= MEMBERS_MAX {
        return Err(format!("the group already has {} members (MEMBERS_MAX {MEMBERS_MAX}); remove one first", view.members.len()));
    }
    Ok(true)
}

/// Opens the message index and starts its thread. The index is derived data: when it cannot be opened the
/// node runs without one (queries are then refused), logged at error level.
async fn open_message_index(
    dir: PathBuf,
    cfg: MessageIndexConfig,
    log: CommitLogReader,
    sm: Arc<SmShared>,
) -> (Option<Arc<MessageIndex>>, Option<std::thread::JoinHandle<()>>) {
    let opened = tokio::task::spawn_blocking(move || MessageIndex::open(dir, cfg)).await;
    let ix = match opened {
        Ok(Ok(ix)) => Arc::new(ix),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "message index cannot be opened; this node answers no message queries");
            return (None, None);
        }
        Err(e) => {
            tracing::error!(error = %e, "message index open panicked; this node answers no message queries");
            return (None, None);
        }
    };
    match ix.start(log, move || sm.last_applied_index()) {
        Ok(t) => (Some(ix), Some(t)),
        Err(e) => {
            tracing::error!(error = %e, "message index thread cannot start; this node answers no message queries");
            (None, None)
        }
    }
}

/// The requests of one entry: `first`, then whatever is queued, in order, until the entry holds `bytes_target`
/// or the next request would take it over `bytes_max`; that request is left in `carry` to open the next entry.
/// The entry's encoded size (`PRODUCE_HEADER_BYTES` + the requests' bytes) is at most `bytes_max` whenever
/// `first` alone fits, which [`RaftNode::produce`] ensures.
/// Requests that waited longer than the limit's `wait_max` are answered busy and left out.
fn fill_entry(
    first: ProduceRequest,
    rx: &mut mpsc::Receiver<ProduceRequest>,
    carry: &mut Option<ProduceRequest>,
    limits: &BatchLimits,
    queue: &SendQueue,
) -> Vec<ProduceRequest> {
    let (bytes_target, bytes_max) = (limits.bytes_target, limits.bytes_max);
    let mut bytes = PRODUCE_HEADER_BYTES + first.bytes;
    debug_assert!(bytes <= bytes_max, "produce() admitted a request of {bytes} bytes over the entry limit {bytes_max}");
    let mut reqs = vec![first];
    while bytes < bytes_target {
        let Ok(r) = rx.try_recv() else { break };
        let Some(r) = queue.take(r, limits.wait_max) else { continue };
        if bytes + r.bytes > bytes_max {
            *carry = Some(r);
            break;
        }
        bytes += r.bytes;
        reqs.push(r);
    }
    reqs
}

/// The produce batcher's limits (`batch_bytes_max`, `entry_bytes_max`, `batch_inflight_max`,
/// `send_queue_wait_ms_max`).
struct BatchLimits {
    bytes_target: usize,
    bytes_max: usize,
    inflight_max: usize,
    wait_max: Duration,
}

/// What the produce batcher shares with its node: batching figures, storage failures, the transfer fence,
/// the send queue's accounting.
struct BatcherShared {
    stats: Arc<BatchStats>,
    failure: Failures,
    fence: Arc<Fence>,
    queue: Arc<SendQueue>,
}

/// Coalesces produce requests into entries: waits for a request, drains what is queued ([`fill_entry`]),
/// proposes one entry, and answers each request from its slice of the result.
async fn produce_batcher(raft: Raft, mut rx: mpsc::Receiver<ProduceRequest>, limits: BatchLimits, shared: BatcherShared) {
    let BatcherShared { stats, failure, fence, queue } = shared;
    let permits = Arc::new(Semaphore::new(limits.inflight_max));
    let mut carry = None;
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        // The carried request was taken out of the queue (and judged) already.
        let first = match carry.take() {
            Some(r) => r,
            None => loop {
                match rx.recv().await {
                    Some(r) => match queue.take(r, limits.wait_max) {
                        Some(r) => break r,
                        None => continue,
                    },
                    None => return,
                }
            },
        };
        let reqs = fill_entry(first, &mut rx, &mut carry, &limits, &queue);
        stats.record(&reqs);
        let mut entry = Produce::default();
        let mut waiters = Vec::with_capacity(reqs.len());
        for r in reqs {
            let base = entry.queues.len() as u32;
            entry.time_ms = entry.time_ms.max(r.time_ms);
            entry.deliveries.extend(r.deliveries.into_iter().map(|d| match d.action {
                Action::Copy { part, index } => Delivery { action: Action::Copy { part: part + base, index }, ..d },
                Action::Move { .. } => d,
            }));
            entry.ops.extend(r.ops.into_iter().map(|op| op.rebased(base)));
            waiters.push((r.queues.len(), r.reply));
            entry.queues.extend(r.queues);
        }
        // Requests admitted before a leader transfer fenced writes may still be queued here: they are refused
        // unproposed, so the log stops growing once the fence is up (the transfer waits for the target to hold
        // all of it).
        if let Err(e) = fence.check() {
            for (_, reply) in waiters {
                let _ = reply.send(Err(e.clone()));
            }
            continue;
        }
        match raft.client_write_ff(Command::ProduceAt(entry)).await {
            Ok(resp) => {
                let failure = failure.clone();
                tokio::spawn(async move {
                    let outcome = match resp.await {
                        Ok(Ok(r)) => match r.data {
                            CommandResponse::Produced(results) => Ok(results),
                            other => Err(WriteError::unknown(format!("unexpected response {other:?}"))),
                        },
                        Ok(Err(e)) => Err(map_write_error(RaftError::APIError(e), &failure)),
                        Err(_) => Err(WriteError::Unknown { why: "raft dropped the write".into(), failure: failure.get() }),
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
            // The core did not take the entry (it has stopped): nothing was appended.
            Err(fatal) => {
                let failure = failure.get();
                if failure.is_none() {
                    warn!(error = %fatal, "raft core stopped; produce refused");
                }
                for (_, reply) in waiters {
                    let _ = reply.send(Err(WriteError::Stopped { failure: failure.clone() }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued request of `bytes` encoded bytes (its content does not matter to batching).
    fn req(bytes: usize) -> ProduceRequest {
        req_queued(bytes, Instant::now()).0
    }

    /// A request of `bytes` that entered the queue at `queued_at`, and where its answer arrives.
    fn req_queued(bytes: usize, queued_at: Instant) -> (ProduceRequest, oneshot::Receiver<Result<Vec<QueueAppendResult>, WriteError>>) {
        let (reply, rx) = oneshot::channel();
        (ProduceRequest { time_ms: 0, queues: Vec::new(), deliveries: Vec::new(), ops: Vec::new(), bytes, queued_at, reply }, rx)
    }

    /// A queue whose accounting holds more than the tests take out of it.
    fn busy_queue() -> SendQueue {
        SendQueue { requests: AtomicUsize::new(1 << 20), bytes: AtomicUsize::new(1 << 30), ..SendQueue::default() }
    }

    fn limits(bytes_target: usize, bytes_max: usize) -> BatchLimits {
        BatchLimits { bytes_target, bytes_max, inflight_max: 1, wait_max: Duration::from_secs(60) }
    }

    #[test]
    fn the_send_queue_refuses_past_its_count_and_byte_bounds_and_frees_what_is_taken() {
        let q = SendQueue::default();
        q.reserve(100, 2, 1000).expect("first");
        q.reserve(900, 2, 1000).expect("second: exactly at both bounds");
        let e = q.reserve(1, 2, 10_000).expect_err("a third request is over the count bound");
        assert_eq!(e, WriteError::Busy { kind: BusyKind::Overload, queued: 2, queued_bytes: 1000, waited_ms: 0 });
        let e = q.reserve(1, 3, 1000).expect_err("one byte over the byte bound");
        assert!(matches!(e, WriteError::Busy { kind: BusyKind::Overload, .. }), "{e:?}");
        assert_eq!((q.requests(), q.bytes(), q.refused_overload()), (2, 1000, 2), "refusals reserve nothing");
        let taken = q.take(req(900), Duration::from_secs(1));
        assert!(taken.is_some(), "a fresh request is proposed");
        assert_eq!((q.requests(), q.bytes()), (1, 100));
        q.reserve(900, 2, 1000).expect("room again");
    }

    #[test]
    fn a_request_that_waited_too_long_is_answered_busy_and_never_proposed() {
        let q = SendQueue::default();
        let (tx, mut rx) = mpsc::channel(16);
        let old = Instant::now().checked_sub(Duration::from_millis(300)).expect("a past instant");
        let mut answers = Vec::new();
        for (bytes, at) in [(100, Instant::now()), (200, old), (300, Instant::now())] {
            q.reserve(bytes, 16, 1 << 20).unwrap();
            let (r, a) = req_queued(bytes, at);
            tx.try_send(r).unwrap();
            answers.push(a);
        }
        let first = q.take(rx.try_recv().unwrap(), Duration::from_millis(200)).expect("fresh");
        let mut carry = None;
        let lim = BatchLimits { wait_max: Duration::from_millis(200), ..limits(10_000, 10_000) };
        let e = fill_entry(first, &mut rx, &mut carry, &lim, &q);
        assert_eq!(sizes(&e), [100, 300], "the stale request is left out");
        assert_eq!((q.requests(), q.bytes(), q.refused_expired()), (0, 0, 1));
        match answers[1].try_recv() {
            Ok(Err(WriteError::Busy { kind: BusyKind::Expired, waited_ms, .. })) => assert!(waited_ms >= 300, "{waited_ms}"),
            other => panic!("the stale request is answered busy: {other:?}"),
        }
        assert!(answers[0].try_recv().is_err() && answers[2].try_recv().is_err(), "the others wait for their entry");
    }

    fn sizes(reqs: &[ProduceRequest]) -> Vec<usize> {
        reqs.iter().map(|r| r.bytes).collect()
    }

    #[test]
    fn a_leader_restored_after_restart_waits_for_its_committed_tail() {
        // Restart as leader of term 5: applied up to 7842 (term 5), log holds 7844 (acked before the crash).
        let mut barrier = None;
        assert!(!leader_ready(true, 5, Some(7844), Some((5, 7842)), &mut barrier));
        // Appends after becoming leader do not move the barrier.
        assert!(!leader_ready(true, 5, Some(7850), Some((5, 7843)), &mut barrier));
        assert!(leader_ready(true, 5, Some(7850), Some((5, 7844)), &mut barrier));
        // Deposed, then elected in term 6 with a blank entry at 7851: the old term's entries do not count.
        assert!(!leader_ready(false, 6, Some(7850), Some((5, 7850)), &mut barrier));
        assert_eq!(barrier, None);
        assert!(!leader_ready(true, 6, Some(7851), Some((5, 7850)), &mut barrier));
        assert!(leader_ready(true, 6, Some(7851), Some((6, 7851)), &mut barrier));
        // A fresh cluster: nothing applied yet is never ready.
        let mut fresh = None;
        assert!(!leader_ready(true, 1, None, None, &mut fresh));
    }

    #[test]
    fn an_entry_never_exceeds_the_limit_and_the_overflow_opens_the_next() {
        let (tx, mut rx) = mpsc::channel(16);
        for b in [400, 400, 400, 95] {
            tx.try_send(req(b)).unwrap();
        }
        let mut carry = None;
        // Target 1000, limit 1000: the third 400 would make 17 + 1200 bytes.
        let first = rx.try_recv().unwrap();
        let e1 = fill_entry(first, &mut rx, &mut carry, &limits(1000, 1000), &busy_queue());
        assert_eq!(sizes(&e1), [400, 400]);
        assert_eq!(carry.as_ref().map(|r| r.bytes), Some(400), "the request that did not fit waits, first in line");
        let e2 = fill_entry(carry.take().unwrap(), &mut rx, &mut carry, &limits(1000, 1000), &busy_queue());
        assert_eq!(sizes(&e2), [400, 95], "17 + 495 bytes");
        assert!(carry.is_none());
    }

    #[test]
    fn an_entry_may_fill_exactly_to_the_limit_and_stops_at_the_target() {
        let (tx, mut rx) = mpsc::channel(16);
        assert_eq!(PRODUCE_HEADER_BYTES, 17);
        for b in [500, 483, 1] {
            tx.try_send(req(b)).unwrap();
        }
        let mut carry = None;
        let e = fill_entry(rx.try_recv().unwrap(), &mut rx, &mut carry, &limits(2000, 1000), &busy_queue());
        assert_eq!(sizes(&e), [500, 483], "17 + 983 = the limit");
        assert_eq!(carry.as_ref().map(|r| r.bytes), Some(1));
        // The target stops draining even where the limit would allow more.
        let (tx, mut rx) = mpsc::channel(16);
        for b in [300, 300, 300] {
            tx.try_send(req(b)).unwrap();
        }
        let e = fill_entry(rx.try_recv().unwrap(), &mut rx, &mut carry, &limits(500, 1000), &busy_queue());
        assert_eq!(sizes(&e), [300, 300]);
        assert_eq!(rx.try_recv().map(|r| r.bytes).ok(), Some(300), "left queued, not carried");
    }

    fn view(n: u64) -> MembershipView {
        let members = (1..=n)
            .map(|id| MemberInfo {
                id,
                addr: MemberAddr::new(format!("127.0.0.1:{}", 10_000 + id), "127.0.0.1:1"),
                voter: id <= 3,
                matched: None,
            })
            .collect();
        MembershipView { leader: Some(1), last_log_index: Some(10), joint: false, members }
    }

    #[test]
    fn adding_a_member_follows_the_rules_up_to_the_member_limit() {
        let fresh = |id: u64| MemberAddr::new(format!("127.0.0.1:{}", 20_000 + id), "127.0.0.1:2");
        let three = view(3);
        assert_eq!(check_add(&three, 4, &fresh(4)), Ok(true));
        let e = check_add(&three, 2, &fresh(2)).unwrap_err();
        assert!(e.contains("already a voter") && e.contains("never reused"), "{e}");
        let e = check_add(&three, 9, &MemberAddr::new("127.0.0.1:10002", "127.0.0.1:2")).unwrap_err();
        assert!(e.contains("already member n2's"), "{e}");
        assert!(check_add(&three, 0, &fresh(0)).unwrap_err().contains("reserved"));
        // A learner at the same address: resume, nothing to add; elsewhere: refused.
        let five = view(5);
        assert_eq!(check_add(&five, 5, &MemberAddr::new("127.0.0.1:10005", "127.0.0.1:1")), Ok(false));
        assert!(check_add(&five, 5, &fresh(5)).unwrap_err().contains("already a learner"));
        // The member limit: one below it may add, at it may not.
        assert_eq!(check_add(&view(MEMBERS_MAX as u64 - 1), 99, &fresh(99)), Ok(true));
        let e = check_add(&view(MEMBERS_MAX as u64), 99, &fresh(99)).unwrap_err();
        assert!(e.contains("MEMBERS_MAX"), "{e}");
    }

    #[test]
    fn config_rules_name_what_is_wrong() {
        let base = NodeConfig::new(1, "127.0.0.1:0", "/nonexistent");
        base.validate().unwrap();
        let broken = |f: &dyn Fn(&mut NodeConfig), needle: &str| {
            let mut c = base.clone();
            f(&mut c);
            match c.validate() {
                Err(NodeError::Config(m)) => assert!(m.contains(needle), "{m:?} does not mention {needle:?}"),
                other => panic!("accepted ({other:?}); expected a complaint about {needle}"),
            }
        };
        broken(&|c| c.entry_bytes_max = ENTRY_BYTES_LIMIT + 1, "entry_bytes_max");
        broken(&|c| c.entry_bytes_max = 0, "entry_bytes_max");
        broken(&|c| c.segment_bytes = c.entry_bytes_max as u64, "segment");
        broken(&|c| c.batch_bytes_max = c.entry_bytes_max + 1, "batch_bytes_max");
        broken(&|c| c.batch_inflight_max = 0, "batch_inflight_max");
        // The stall hand-off: 0 (off) or 2 × election_max_ms ..= STALL_HANDOFF_MS_MAX.
        broken(&|c| c.stall_handoff_ms = 2 * c.election_max_ms - 1, "stall_handoff_ms");
        broken(&|c| c.stall_handoff_ms = STALL_HANDOFF_MS_MAX + 1, "stall_handoff_ms");
        for ok in [0, 2 * base.election_max_ms, STALL_HANDOFF_MS_MAX] {
            let mut c = base.clone();
            c.stall_handoff_ms = ok;
            c.validate().unwrap_or_else(|e| panic!("stall_handoff_ms {ok}: {e}"));
        }
        // At the limits.
        let mut c = base.clone();
        c.entry_bytes_max = ENTRY_BYTES_LIMIT;
        c.segment_bytes = (ENTRY_BYTES_LIMIT + HEADER_LEN) as u64;
        c.batch_bytes_max = ENTRY_BYTES_LIMIT;
        c.validate().unwrap();
    }
}
