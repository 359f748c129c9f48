//! Pre-vote (Raft thesis §9.6) around openraft 0.9, which has none.
//!
//! Without it, a member cut off from its group campaigns on every election timeout and raises its term each
//! time; once the partition heals, its higher term reaches the healthy leader (in the answer to the leader's
//! next heartbeat, or in its vote request) and deposes it: an election and a write outage caused by the one
//! node that was away. openraft 0.9's own leader lease makes followers refuse such a vote request, but the
//! term has been raised all the same, and the leader steps down when it sees it.
//!
//! So raftmq runs the election timer itself (openraft's is switched off, `Config::enable_elect = false`):
//! when a voter has not heard from a leader for a random `election_min_ms..=election_max_ms`, it first asks
//! every other voter whether it would vote, without changing any term ([`PreVoteRequest`], a control RPC).
//! A voter answers yes only when it is not the leader, has not heard from a leader within the lease (the
//! same rule openraft applies to real vote requests), and the candidate's log is at least as up to date as
//! its own and its next term above the voter's. Only with a yes from a quorum (of each configuration of a
//! joint membership) does the node start openraft's election, which raises its term. A node that no quorum
//! answers — one cut off, or one the others still hear a leader over — never raises its term, so it rejoins
//! as a follower and the leader keeps leading.
//!
//! The lease is the *minimum* election timeout, `election_min_ms` (Raft thesis §4.2.3: a server that heard
//! from a current leader within the minimum election timeout neither grants a vote nor raises its term). No
//! voter can time out sooner, so a longer lease only delays failover: openraft 0.9 uses `election_timeout_max`
//! and, before raftmq 2026-12-08, a follower waited out that lease *and then* its random timeout (about
//! 1.1 s to fail over with 300/600 ms). The node hands openraft `election_timeout_max = election_min_ms + 1`
//! for this reason (see `RaftNode::start`); safety does not rest on the lease — linearizable reads confirm
//! leadership with a heartbeat round (`ensure_linearizable`), not with a lease.
//!
//! A leader transfer bypasses the pre-vote: the target is told to campaign directly
//! ([`crate::network::ControlRequest::TriggerElect`]) once the leader stopped its heartbeats, and the voters
//! judge that real vote by openraft's rules as before. The transfer's election pauses switch this timer
//! ([`PreVote::set_elect`]), not openraft's.
//!
//! A pre-vote is refused by a member that is cut off by fault injection ([`crate::network::Isolation`]) like
//! any Raft RPC, and counts as a no when a peer does not answer within `election_min_ms` — also when the peer
//! runs a release without pre-votes (it cannot decode the request and closes the connection): in a rolling
//! upgrade, a node with pre-votes wins elections only once a quorum runs it too.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{ServerState, Vote};
use raftmq_commitlog::CommitLogReader;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::handshake::RaftAuth;
use crate::member::MemberAddr;
use crate::network::{control_call, ControlRequest, ControlResponse, Isolation};
use crate::types::{LogId, NodeId, Raft};

/// A pre-vote request: "would you vote for `candidate` at `term` with this log?". Changes nothing on the
/// receiver.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PreVoteRequest {
    /// The node asking.
    pub candidate: NodeId,
    /// The term it would campaign for: its current term plus one.
    pub term: u64,
    /// The last entry of its log.
    pub last_log_id: Option<LogId>,
}

/// Election timing (the node's `election_min_ms`, `election_max_ms`).
#[derive(Debug, Clone, Copy)]
pub struct ElectionTiming {
    /// Lower bound of the random election timeout; also the leader lease (a voter that heard from a leader
    /// within it grants no vote) and the pre-vote RPC timeout.
    pub min: Duration,
    /// Upper bound of the random election timeout.
    pub max: Duration,
}

impl ElectionTiming {
    /// How often, at most, the timer looks at the node's state while no timeout is near: a tenth of `min`,
    /// within 5..=50 ms. It sleeps exactly to a deadline that is nearer, so that two followers' timeouts are
    /// not rounded to the same tick (which would split their votes).
    fn tick(&self) -> Duration {
        (self.min / 10).clamp(Duration::from_millis(5), Duration::from_millis(50))
    }

    fn random_timeout(&self) -> Duration {
        let (lo, hi) = (self.min.as_millis() as u64, self.max.as_millis().max(self.min.as_millis()) as u64);
        Duration::from_millis(rand::thread_rng().gen_range(lo..=hi))
    }
}

/// What the timer and the answer need of openraft's state, read in one call.
struct Seen {
    state: ServerState,
    vote: Vote<NodeId>,
    /// Time since the vote was last set or confirmed (a leader's heartbeat confirms it); `None`: not since start.
    vote_age: Option<Duration>,
    /// Each configuration of the (possibly joint) membership.
    configs: Vec<BTreeSet<NodeId>>,
    /// Raft addresses of the voters.
    addrs: Vec<(NodeId, String)>,
}

/// A node's pre-vote: its election timer and its answer to other nodes' pre-votes.
pub struct PreVote {
    id: NodeId,
    raft: Raft,
    log: CommitLogReader,
    auth: Option<RaftAuth>,
    isolation: Isolation,
    timing: ElectionTiming,
    /// Elections switched on (a leader transfer switches them off for a while).
    elect: AtomicBool,
    started: Instant,
}

impl PreVote {
    /// The pre-vote of node `id`. Its timer runs once [`PreVote::spawn`] is called; openraft's own election
    /// timer must be off (`Config::enable_elect = false`).
    pub fn new(
        id: NodeId,
        raft: Raft,
        log: CommitLogReader,
        auth: Option<RaftAuth>,
        isolation: Isolation,
        timing: ElectionTiming,
    ) -> Arc<PreVote> {
        Arc::new(PreVote { id, raft, log, auth, isolation, timing, elect: AtomicBool::new(true), started: Instant::now() })
    }

    /// Switches this node's elections on or off (a pre-vote already under way finishes).
    pub fn set_elect(&self, on: bool) {
        self.elect.store(on, Ordering::Release);
    }

    /// True while elections are switched on.
    pub fn elect_on(&self) -> bool {
        self.elect.load(Ordering::Acquire)
    }

    /// The last entry of this node's log (the purge mark when the log is empty).
    fn last_log_id(&self) -> Option<LogId> {
        let s = self.log.state();
        let p = s.last.or(s.purged.map(|m| m.point))?;
        Some(LogId::new(openraft::CommittedLeaderId::new(p.term, p.node), p.index))
    }

    async fn seen(&self) -> Option<Seen> {
        self.raft
            .with_raft_state(|st| {
                let m = st.membership_state.effective().membership();
                Seen {
                    state: st.server_state,
                    vote: *st.vote_ref(),
                    vote_age: st.vote_last_modified().map(|t| t.elapsed()),
                    configs: m.get_joint_config().clone(),
                    addrs: m.voter_ids().filter_map(|id| m.get_node(&id).map(|n| (id, MemberAddr::raft_of(&n.addr).to_string()))).collect(),
                }
            })
            .await
            .ok()
    }

    /// The answer to another node's pre-vote: `true` when this node would grant it the vote now.
    pub async fn answer(&self, req: &PreVoteRequest) -> bool {
        let Some(s) = self.seen().await else { return false };
        let mine = self.last_log_id();
        let leader_heard = s.state == ServerState::Leader || (s.vote.committed && s.vote_age.is_some_and(|a| a <= self.timing.min));
        let log_ok = req.last_log_id >= mine;
        let term_ok = req.term > s.vote.leader_id.term
            || (req.term == s.vote.leader_id.term && !s.vote.committed && s.vote.leader_id.node_id == req.candidate);
        let granted = !leader_heard && log_ok && term_ok;
        debug!(candidate = req.candidate, term = req.term, granted, leader_heard, log_ok, term_ok, "pre-vote answered");
        granted
    }

    /// Starts the election timer; it ends when openraft stops.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.run().await })
    }

    async fn run(&self) {
        let mut timeout = self.timing.random_timeout();
        let mut last_round: Option<Instant> = None;
        let mut nap = self.timing.tick();
        loop {
            tokio::time::sleep(nap).await;
            nap = self.timing.tick();
            let Some(s) = self.seen().await else {
                debug!("raft stopped: election timer ends");
                return;
            };
            let voter = s.configs.iter().any(|c| c.contains(&self.id));
            if !self.elect_on() || s.state == ServerState::Leader || !voter {
                continue;
            }
            // Quiet for the random timeout since the leader (or this node's own vote) was last heard, and a
            // timeout since this node's last round.
            let quiet = s.vote_age.unwrap_or_else(|| self.started.elapsed());
            let since_round = last_round.map_or(Duration::MAX, |t| t.elapsed());
            let left = timeout.saturating_sub(quiet).max(timeout.saturating_sub(since_round));
            if !left.is_zero() {
                nap = nap.min(left);
                continue;
            }
            last_round = Some(Instant::now());
            timeout = self.timing.random_timeout();
            let term = s.vote.leader_id.term + 1;
            if self.round(term, &s).await {
                info!(term, "pre-vote won by a quorum: campaigning");
                if let Err(e) = self.raft.trigger().elect().await {
                    warn!(error = %e, "could not start the election after the pre-vote");
                }
            }
        }
    }

    /// Asks every other voter; true when those granting, with this node, are a quorum of every configuration.
    async fn round(&self, term: u64, s: &Seen) -> bool {
        let req = PreVoteRequest { candidate: self.id, term, last_log_id: self.last_log_id() };
        let mut granted = BTreeSet::from([self.id]);
        if !self.isolation.is_on() {
            let mut calls = JoinSet::new();
            for (id, addr) in s.addrs.iter().filter(|(id, _)| *id != self.id).cloned() {
                let (req, auth, timeout) = (ControlRequest::PreVote(req.clone()), self.auth.clone(), self.timing.min);
                calls.spawn(async move { (id, control_call(&addr, req, timeout, auth.as_ref()).await) });
            }
            while let Some(done) = calls.join_next().await {
                match done {
                    Ok((id, Ok(ControlResponse::PreVote { granted: true }))) => {
                        granted.insert(id);
                    }
                    Ok((id, Ok(_))) => debug!(node = id, term, "pre-vote refused"),
                    Ok((id, Err(e))) => debug!(node = id, term, error = %e, "pre-vote not answered"),
                    Err(e) => debug!(error = %e, "pre-vote call task failed"),
                }
            }
        }
        let won = quorum(&s.configs, &granted);
        debug!(term, granted = ?granted, won, "pre-vote round");
        won
    }
}

/// True when `granted` holds a majority of every configuration in `configs` (a joint membership has two).
pub fn quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !configs.is_empty() && configs.iter().all(|c| 2 * c.intersection(granted).count() > c.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_needs_a_majority_of_every_configuration() {
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<_>>();
        let one = vec![set(&[1, 2, 3])];
        assert!(!quorum(&one, &set(&[1])));
        assert!(quorum(&one, &set(&[1, 2])));
        assert!(!quorum(&one, &set(&[1, 9])), "a non-member's grant does not count");
        let joint = vec![set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!quorum(&joint, &set(&[1, 2])), "no majority of the new configuration");
        assert!(quorum(&joint, &set(&[1, 3, 4])));
        assert!(!quorum(&[], &set(&[1])), "no membership, no election");
        assert!(quorum(&[set(&[1])], &set(&[1])), "a single voter elects itself");
    }

    #[test]
    fn random_timeouts_stay_within_the_range() {
        let t = ElectionTiming { min: Duration::from_millis(300), max: Duration::from_millis(600) };
        for _ in 0..1000 {
            let d = t.random_timeout();
            assert!(d >= t.min && d <= t.max, "{d:?}");
        }
        assert_eq!(t.tick(), Duration::from_millis(30));
    }
}
