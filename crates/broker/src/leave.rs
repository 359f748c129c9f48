//! Leaving the group on SIGTERM without failing a client: hand leadership over, move the route, drain, stop.
//!
//! What `raftmq broker` does between SIGTERM and its clean shutdown ([`crate::Broker::leave`]):
//!
//! 1. **Hand-off** (a leader with at least one other voter): leadership goes to the most caught-up voter that
//!    acknowledged entries ([`RaftNode::transfer_candidates`]), the next one when a transfer fails, within
//!    `shutdownHandoffTimeoutMs`. A transfer is fenced: a write either committed before it or is served by the
//!    new leader (forwarded from here), never both.
//! 2. **Route**: waits (at most [`ROUTE_SWITCH_WAIT`]) until every nameserver names another member as the
//!    group's brokerId 0 (the new leader registers on its role change), then stops registering and sends
//!    UNREGISTER_BROKER for this address, so route lookups stop naming this node.
//! 3. **Drain**: clients that still hold the old route keep sending here until they poll the nameserver
//!    again (RocketMQ clients every 30 s); this member forwards their writes to the leader
//!    (forward.rs) and serves their reads, until no client request (heartbeats aside) arrived for
//!    `shutdownDrainQuietMs` and no forwarded request is in flight, or `shutdownDrainMaxMs` passed.
//!
//! A follower skips step 1. A leader alone in its group, or one whose hand-off failed, stops at once: nobody
//! else could serve its clients, and the remaining voters elect a leader as after a crash. A second SIGTERM
//! or a SIGINT skips whatever is left (see the binary).

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftmq_raft::node::{NodeError, Role};
use raftmq_remoting::body::{decode_json_body, ClusterInfo, MASTER_ID};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::UnregisterBrokerRequestHeader;
use raftmq_remoting::{RequestCode, ResponseCode};
use tracing::{info, warn};

use crate::broker::BrokerInner;

/// Bounds of `shutdownHandoffTimeoutMs`.
pub const HANDOFF_TIMEOUT_MS_LIMITS: RangeInclusive<u64> = 1_000..=60_000;
/// Largest `shutdownDrainQuietMs` (one minute).
pub const DRAIN_QUIET_MS_LIMIT: u64 = 60_000;
/// Largest `shutdownDrainMaxMs` (five minutes).
pub const DRAIN_MAX_MS_LIMIT: u64 = 300_000;
/// Longest wait for the nameservers to name the new leader before this node unregisters anyway.
pub const ROUTE_SWITCH_WAIT: Duration = Duration::from_secs(5);
/// The longest a SIGTERM leave takes with the default settings (`shutdownHandoffTimeoutMs` 10 s,
/// [`ROUTE_SWITCH_WAIT`], `shutdownDrainMaxMs` 35 s): supervisors must wait longer than this plus
/// [`crate::SHUTDOWN_MAX`] before they kill (tests/deploy.rs checks the systemd unit).
pub const LEAVE_MAX_DEFAULT: Duration = Duration::from_millis(10_000 + 5_000 + 35_000);
/// How often the drain and the route wait look again.
const TICK: Duration = Duration::from_millis(50);

/// When the last client request arrived (milliseconds since this broker started).
pub(crate) struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity { epoch: Instant::now(), last_ms: AtomicU64::new(0) }
    }
}

impl Activity {
    /// Records a client request now.
    pub(crate) fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long no client request arrived.
    pub(crate) fn quiet_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// True for requests that keep a draining member alive: everything clients send but heartbeats and client
/// unregistrations (sent to every broker a client knows, route current or not) and raftmq's control codes
/// (operators and other members).
pub(crate) fn is_client_activity(code: i32) -> bool {
    code != RequestCode::HEART_BEAT.0 && code != RequestCode::UNREGISTER_CLIENT.0 && !raftmq_remoting::codes::is_raftmq_admin(code)
}

/// What leaving did, for the log and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaveReport {
    /// Whether this node led when it began to leave.
    pub was_leader: bool,
    /// The member leadership went to.
    pub handed_to: Option<u64>,
    /// How long the hand-off took (the transfers tried), ms.
    pub handoff_ms: u64,
    /// How long until the nameservers named the new leader, ms (`None`: not within [`ROUTE_SWITCH_WAIT`]).
    pub route_ms: Option<u64>,
    /// How long the drain lasted, ms.
    pub drain_ms: u64,
    /// Requests forwarded to the leader during the drain.
    pub forwarded: u64,
}

impl BrokerInner {
    /// Steps 1–3 of the module doc. Never fails: whatever cannot be done is logged and skipped.
    pub(crate) async fn leave(&self) -> LeaveReport {
        let mut report = LeaveReport::default();
        let role = self.node.role().borrow().clone();
        report.was_leader = role.role == Role::Leader;
        if report.was_leader {
            let started = Instant::now();
            report.handed_to = self.hand_off().await;
            report.handoff_ms = started.elapsed().as_millis() as u64;
            if report.handed_to.is_none() {
                self.stop_registering().await;
                info!(?report, "leaving: no hand-off, stopping as the leader");
                return report;
            }
            let started = Instant::now();
            if self.route_switched(started + ROUTE_SWITCH_WAIT).await {
                report.route_ms = Some(started.elapsed().as_millis() as u64);
            } else {
                warn!(wait = ?ROUTE_SWITCH_WAIT, "leaving: the nameservers do not name the new leader yet; unregistering anyway");
            }
        }
        self.stop_registering().await;
        self.unregister_all().await;
        let forwarded_before = self.forwarding.forwarded.load(Ordering::Relaxed);
        let started = Instant::now();
        let quiet = Duration::from_millis(self.cfg.shutdown_drain_quiet_ms);
        let max = Duration::from_millis(self.cfg.shutdown_drain_max_ms);
        while started.elapsed() < max {
            if self.activity.quiet_for() >= quiet && self.forwarding.inflight_now() == 0 {
                break;
            }
            tokio::time::sleep(TICK.min(max.saturating_sub(started.elapsed()))).await;
        }
        report.drain_ms = started.elapsed().as_millis() as u64;
        report.forwarded = self.forwarding.forwarded.load(Ordering::Relaxed).saturating_sub(forwarded_before);
        info!(?report, "left the group's routes; stopping");
        report
    }

    /// Transfers leadership to the best candidate, the next on failure, retrying a busy transfer slot, until
    /// `shutdownHandoffTimeoutMs`. The member that took over, if any.
    async fn hand_off(&self) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.shutdown_handoff_timeout_ms);
        let mut tried = Vec::new();
        loop {
            let candidates = self.node.transfer_candidates();
            if candidates.is_empty() {
                info!("leaving: no other voter to hand leadership to");
                return None;
            }
            let Some(target) = candidates.iter().copied().find(|c| !tried.contains(c)) else {
                warn!(?tried, "leaving: no voter took over leadership");
                return None;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(?tried, "leaving: shutdownHandoffTimeoutMs passed without a hand-off");
                return None;
            }
            match self.node.transfer_leader(target, left).await {
                Ok(()) => {
                    info!(target, "leaving: leadership handed over");
                    self.registration_now();
                    return Some(target);
                }
                Err(NodeError::Busy(why)) => {
                    info!(target, why, "leaving: transfer slot busy; retrying");
                    tokio::time::sleep(Duration::from_millis(100).min(left)).await;
                }
                Err(NodeError::NotLeader { leader }) => {
                    // Leadership moved meanwhile (an election): nothing to hand over.
                    info!(?leader, "leaving: no longer the leader");
                    return leader;
                }
                Err(e) => {
                    warn!(target, error = %e, "leaving: leader transfer failed; trying the next voter");
                    tried.push(target);
                }
            }
        }
    }

    /// Waits until every nameserver's cluster table names another address as this group's brokerId 0, or
    /// `deadline`. True when they all do (also with no nameserver configured).
    async fn route_switched(&self, deadline: Instant) -> bool {
        let Ok(me) = self.cfg.me() else { return true };
        let me = me.client_addr.clone();
        loop {
            let mut all = true;
            for addr in self.cfg.namesrv_addrs() {
                let master = self.namesrv_master(&addr).await;
                all &= master.is_some_and(|m| m != me);
            }
            if all {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// The address nameserver `addr` routes this group's writes to.
    async fn namesrv_master(&self, addr: &str) -> Option<String> {
        let c = raftmq_net::RemotingClient::connect_with(addr, Duration::from_secs(1), None, self.client_tls.as_ref()).await.ok()?;
        let resp = c.invoke(RemotingCommand::request(RequestCode::GET_BROKER_CLUSTER_INFO, 0), Duration::from_secs(1)).await.ok()?;
        if resp.code != ResponseCode::SUCCESS.0 {
            return None;
        }
        let info: ClusterInfo = decode_json_body("cluster info", &resp.body).ok()?;
        info.broker_addr_table.get(&self.cfg.broker_name)?.broker_addrs.get(&MASTER_ID).cloned()
    }

    /// Ends the registration loop (after a registration in progress) so that nothing re-registers this node.
    async fn stop_registering(&self) {
        self.leaving.store(true, Ordering::Release);
        drop(self.registration_lock.lock().await);
    }

    /// UNREGISTER_BROKER for this node's client address at every nameserver (signed with the cluster secret).
    async fn unregister_all(&self) {
        let Ok(me) = self.cfg.me() else { return };
        let h = UnregisterBrokerRequestHeader {
            broker_name: self.cfg.broker_name.clone(),
            broker_addr: me.client_addr.clone(),
            cluster_name: self.cfg.broker_cluster_name.clone(),
            broker_id: self.cfg.node_id as i64,
        };
        for addr in self.cfg.namesrv_addrs() {
            let mut cmd = RemotingCommand::request(RequestCode::UNREGISTER_BROKER, 0).with_header(&h);
            if let Some(secrets) = &self.cluster_secrets {
                raftmq_remoting::cluster_auth::sign_command(secrets, &mut cmd);
            }
            let r = async {
                let c = raftmq_net::RemotingClient::connect_with(&addr, Duration::from_secs(2), None, self.client_tls.as_ref()).await?;
                c.invoke(cmd, Duration::from_secs(2)).await
            }
            .await;
            match r {
                Ok(resp) if resp.code == ResponseCode::SUCCESS.0 => info!(namesrv = %addr, "unregistered"),
                Ok(resp) => warn!(namesrv = %addr, code = resp.code, remark = ?resp.remark, "unregistration refused"),
                Err(e) => warn!(namesrv = %addr, error = %e, "unregistration failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_and_control_requests_do_not_keep_a_drain_going() {
        for code in
            [RequestCode::SEND_MESSAGE_V2, RequestCode::PULL_MESSAGE, RequestCode::UPDATE_CONSUMER_OFFSET, RequestCode::LOCK_BATCH_MQ]
        {
            assert!(is_client_activity(code.0), "{code:?}");
        }
        for code in [RequestCode::HEART_BEAT.0, RequestCode::UNREGISTER_CLIENT.0, crate::RAFTMQ_NODE_STATUS] {
            assert!(!is_client_activity(code), "{code}");
        }
    }

    #[test]
    fn the_activity_clock_measures_quiet_from_the_last_request() {
        let a = Activity::default();
        std::thread::sleep(Duration::from_millis(30));
        assert!(a.quiet_for() >= Duration::from_millis(30));
        a.touch();
        assert!(a.quiet_for() < Duration::from_millis(30));
    }
}
