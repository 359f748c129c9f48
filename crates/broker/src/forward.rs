//! Write routing on members that are not the ready leader: forwarding to the leader and the election wait.
//!
//! A client with a stale route (after a leader transfer, a restart, a failover) sends writes to a member
//! that is no longer the leader. Instead of answering 14 SERVICE_NOT_AVAILABLE, that member relays the
//! request to the current leader over its kept leader connection and answers with the leader's response,
//! unchanged (queue id, offset, msgId naming the leader as store host), so an unmodified client sees success.
//!
//! - One hop: a forwarded request carries ext field `raftmqForwardedBy` and is never forwarded again.
//! - Bounded: at most `forwardInflightMax` requests and `forwardInflightBytesMax` bytes are being forwarded
//!   at once, each waits at most `forwardTimeoutMs` for the leader's answer. A request over a bound gets the
//!   14 naming the leader, as without forwarding.
//! - No duplicates from forwarding: a forwarded request is sent to the leader again only when that cannot
//!   store it twice — a failed connect (nothing was sent), or a leader's own not-leader 14 (nothing was
//!   applied) — with the one exception below, which the de-duplication window makes safe. Any other forwarded
//!   request whose answer is lost gets 1 SYSTEM_ERROR "outcome unknown", exactly like a leader whose Raft write
//!   timed out; a client retry of a message carrying UNIQ_KEY is then answered from the replicated
//!   de-duplication window, one without UNIQ_KEY is at-least-once, as it is without forwarding.
//! - The exception, a send that cannot be stored twice: when every message of a send carries UNIQ_KEY and
//!   de-duplication is on, a forwarded send whose answer was lost (the leader was killed with the request on
//!   the wire, a timeout) is routed again, within `leaderWaitMs`, to the leader then known. Should the first
//!   copy have been stored after all, the replicated window answers the second with the first's msgId, queue
//!   and offset (before proposing, or in `apply` when the two race), so the client gets one success and the
//!   topic holds the message once.
//! - Election wait: while no leader is known (or this member is a leader still applying earlier entries) a
//!   write waits up to `leaderWaitMs` for the Raft role to change (watching the role channel, no polling),
//!   then is served here, forwarded, or answered 14.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use raftmq_raft::node::{Role, RoleState};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::{RequestCode, ResponseCode};
use tracing::debug;

use crate::broker::BrokerInner;
use crate::processor::{reply, Reply, FORWARDED_FIELD, NOT_LEADER_FIELD};

/// Ext field with the original client's address (`ip:port`) a member adds to a send it forwards, so that
/// the leader stores the client, not the forwarding member, as the message's born host.
pub(crate) const BORN_HOST_FIELD: &str = "raftmqBornHost";

/// The address a send's message records as its born host: the client's, carried by a forwarding member in
/// [`BORN_HOST_FIELD`], else the connection's peer.
pub(crate) fn born_host(peer: SocketAddr, req: &RemotingCommand) -> SocketAddr {
    if !req.ext_fields.contains_key(FORWARDED_FIELD) {
        return peer;
    }
    req.ext_fields.get(BORN_HOST_FIELD).and_then(|a| a.parse().ok()).unwrap_or(peer)
}

/// Most times one write is served here and refused because leadership moved meanwhile (then routed again).
pub(crate) const LOCAL_ATTEMPTS_MAX: u32 = 4;

/// How often a write waiting out a leader transfer's fence (or a leader's refusal) looks at the role again
/// when the role channel stays quiet (a transfer that failed lifts the fence without a role change).
const RECHECK: Duration = Duration::from_millis(50);

/// Longest wait for the connection to the leader (its TLS handshake included).
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(1);
/// How long after a failed connect to the leader no request tries that address again.
const CONNECT_RETRY: Duration = Duration::from_millis(200);

/// True for the 14 a member answers because it is not the ready leader (ext field `raftmqNotLeader`):
/// the request was certainly not applied.
pub(crate) fn is_leadership_refusal(r: &Reply) -> bool {
    r.as_ref().is_some_and(|r| r.cmd.code == ResponseCode::SERVICE_NOT_AVAILABLE.0 && r.cmd.ext_fields.contains_key(NOT_LEADER_FIELD))
}

/// Largest `forwardInflightMax`.
pub const FORWARD_INFLIGHT_MAX_LIMIT: usize = 65_536;
/// Largest `forwardInflightBytesMax` (1 GiB).
pub const FORWARD_INFLIGHT_BYTES_MAX_LIMIT: usize = 1 << 30;
/// Largest `forwardTimeoutMs` and `leaderWaitMs` (one minute).
pub const FORWARD_WAIT_MS_MAX: u64 = 60_000;

/// The write codes a member that is not the leader forwards (36 CONSUMER_SEND_MSG_BACK and 37 END_TRANSACTION
/// are forwarded by their processors, which have always done so).
pub(crate) fn is_routed_write(code: RequestCode) -> bool {
    matches!(
        code,
        RequestCode::SEND_MESSAGE
            | RequestCode::SEND_MESSAGE_V2
            | RequestCode::SEND_BATCH_MESSAGE
            | RequestCode::UPDATE_CONSUMER_OFFSET
            | RequestCode::UPDATE_AND_CREATE_TOPIC
            | RequestCode::INVOKE_BROKER_TO_RESET_OFFSET
            | RequestCode::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP
            | RequestCode::DELETE_SUBSCRIPTIONGROUP
            | RequestCode::DELETE_TOPIC_IN_BROKER
    )
}

/// Bytes a request occupies while it is forwarded (body and ext fields).
pub(crate) fn request_bytes(req: &RemotingCommand) -> usize {
    req.body.len() + req.ext_fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// The forwarding bounds and counters of one member.
pub(crate) struct Forwarding {
    inflight_max: usize,
    bytes_max: usize,
    inflight: AtomicUsize,
    bytes: AtomicUsize,
    /// Requests relayed to the leader (answered by it or not).
    pub(crate) forwarded: AtomicU64,
    /// Requests refused with 14 because a bound was reached.
    pub(crate) refused: AtomicU64,
    /// Forwarded requests whose answer did not arrive in time (or whose connection broke): outcome unknown.
    pub(crate) unanswered: AtomicU64,
    /// Of those, sends routed again (served here or forwarded to the next leader) because the de-duplication
    /// window makes a second copy harmless.
    pub(crate) resent: AtomicU64,
    /// Writes that waited for a leader, and for how long in total (ms).
    pub(crate) waits: AtomicU64,
    pub(crate) waited_ms: AtomicU64,
    /// Writes that waited `leaderWaitMs` and still found no leader (answered 14).
    pub(crate) wait_expired: AtomicU64,
    /// The leader address a connect last failed to, and when: requests in that window are not sent there
    /// again (a host that does not answer would otherwise hold every waiting write in its connect in turn).
    connect_failed: std::sync::Mutex<Option<(String, Instant)>>,
}

/// One forwarding slot; released when dropped.
pub(crate) struct Slot<'a> {
    f: &'a Forwarding,
    bytes: usize,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.f.inflight.fetch_sub(1, Ordering::AcqRel);
        self.f.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Forwarding {
    /// Requests being forwarded now.
    pub(crate) fn inflight_now(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub(crate) fn new(inflight_max: usize, bytes_max: usize) -> Forwarding {
        Forwarding {
            inflight_max,
            bytes_max,
            inflight: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            waited_ms: AtomicU64::new(0),
            wait_expired: AtomicU64::new(0),
            connect_failed: std::sync::Mutex::new(None),
        }
    }

    /// A slot for a request of `bytes`, or why not (the bound that is reached).
    pub(crate) fn try_acquire(&self, bytes: usize) -> Result<Slot<'_>, String> {
        let n = self.inflight.fetch_add(1, Ordering::AcqRel);
        let b = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        let slot = Slot { f: self, bytes };
        if n >= self.inflight_max {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(format!("{n} requests are being forwarded to the leader (forwardInflightMax {})", self.inflight_max));
        }
        if b.saturating_add(bytes) > self.bytes_max {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "{b} bytes are being forwarded to the leader and this request has {bytes} (forwardInflightBytesMax {})",
                self.bytes_max
            ));
        }
        Ok(slot)
    }

    /// The counters for `raftmq admin status`.
    pub(crate) fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "inflight": self.inflight.load(Ordering::Relaxed),
            "inflightBytes": self.bytes.load(Ordering::Relaxed),
            "forwarded": self.forwarded.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
            "unanswered": self.unanswered.load(Ordering::Relaxed),
            "resent": self.resent.load(Ordering::Relaxed),
            "leaderWaits": self.waits.load(Ordering::Relaxed),
            "leaderWaitedMs": self.waited_ms.load(Ordering::Relaxed),
            "leaderWaitsExpired": self.wait_expired.load(Ordering::Relaxed),
        })
    }
}

/// What one forwarding attempt came to.
pub(crate) enum Forwarded {
    /// The leader's answer, or the refusal/unknown outcome to give the client.
    Answer(Reply),
    /// Nothing was sent (the leader could not be reached): the caller may try again.
    NotSent(Reply),
    /// The request was sent but its answer did not arrive (connection closed, timeout): the outcome is
    /// unknown. The reply says so; only a request that cannot be applied twice may be sent again.
    Lost(Reply),
}

/// True when sending `req` again cannot store anything twice: a send (10, 310, 320) all of whose messages
/// carry a client id (UNIQ_KEY) while the replicated de-duplication window is on (`dedup_on`).
pub(crate) fn is_idempotent_send(req: &RemotingCommand, dedup_on: bool) -> bool {
    use raftmq_remoting::header::SendMessageRequestHeader;
    use raftmq_remoting::message::{decode_batch, get_property, property};
    let has_id = |props: &str| get_property(props, property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).is_some_and(|k| !k.is_empty());
    let code = req.request_code();
    if !dedup_on || !matches!(code, RequestCode::SEND_MESSAGE | RequestCode::SEND_MESSAGE_V2 | RequestCode::SEND_BATCH_MESSAGE) {
        return false;
    }
    if code == RequestCode::SEND_BATCH_MESSAGE {
        return match decode_batch(&req.body, crate::send::BATCH_MESSAGES_MAX) {
            Ok(b) => !b.is_empty() && b.iter().all(|m| has_id(m.properties)),
            Err(_) => false,
        };
    }
    SendMessageRequestHeader::decode_for(code, &req.ext_fields).is_ok_and(|h| has_id(h.properties.as_deref().unwrap_or("")))
}

/// Where a write goes, from the role as this member sees it.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// This member is the ready leader.
    Here,
    /// Another member is the leader: forward to it.
    Leader(u64),
    /// No usable leader yet: wait for a role change.
    Wait,
}

fn route(role: &RoleState, me: u64, fenced: bool) -> Route {
    match (role.role, role.leader) {
        (Role::Leader, _) if role.ready && !fenced => Route::Here,
        (Role::Leader, _) => Route::Wait,
        (_, Some(id)) if id != me => Route::Leader(id),
        _ => Route::Wait,
    }
}

impl BrokerInner {
    /// The 14 a member that is not the ready leader answers, naming the leader when it knows one.
    pub(crate) fn not_leader_reply(&self, req: &RemotingCommand) -> Reply {
        let role = self.node.role().borrow().clone();
        self.refusal(&role, req)
    }

    /// Routes a write (see [`is_routed_write`]) that arrived at `started`: `Ok` when this member serves it
    /// (the ready leader), else the answer — the leader's, relayed, or 14 — after waiting until `leaderWaitMs`
    /// after `started` for a leader if none is known, this leader's writes are fenced by a leader transfer,
    /// or the leader answered that it no longer leads (nothing was applied: the request is routed again).
    pub(crate) async fn route_write(&self, peer: SocketAddr, req: &RemotingCommand, started: Instant) -> Result<(), Reply> {
        let forwarded = req.ext_fields.contains_key(FORWARDED_FIELD);
        let mut rx = self.node.role();
        let deadline = started + Duration::from_millis(self.cfg.leader_wait_ms);
        let mut waited = false;
        // The leader a resendable send's answer was lost from, and that answer ("outcome unknown", what the
        // client gets if no later leader answers in time): the send is not sent there again (a stopped or
        // overloaded leader would only queue more copies), only to the next leader.
        let mut lost: Option<(u64, Reply)> = None;
        let done = |waited: bool| {
            if waited {
                let ms = started.elapsed().as_millis() as u64;
                self.forwarding.waits.fetch_add(1, Ordering::Relaxed);
                self.forwarding.waited_ms.fetch_add(ms, Ordering::Relaxed);
                debug!(code = req.code, waited_ms = ms, "a write waited for a leader");
            }
        };
        loop {
            let role = rx.borrow_and_update().clone();
            let fenced = self.node.transferring_to().is_some();
            let mut last = None;
            match route(&role, self.cfg.node_id, fenced) {
                Route::Here => {
                    done(waited);
                    return Ok(());
                }
                // One hop: a request another member forwarded is not passed on again.
                Route::Leader(_) if forwarded => return Err(self.refusal(&role, req)),
                Route::Leader(id) if lost.as_ref().is_some_and(|(at, _)| *at == id) => {}
                Route::Leader(id) => {
                    if let Some(addr) = self.client_addr_of(id) {
                        match self.forward_write(peer, req, &addr).await {
                            // The leader answered that it does not lead (a transfer or election under way):
                            // nothing was applied; route again once the role changes.
                            Forwarded::Answer(r) if is_leadership_refusal(&r) && Instant::now() < deadline => last = Some(r),
                            Forwarded::Answer(r) => {
                                done(waited);
                                return Err(r);
                            }
                            // Sent, answer lost: a send the window de-duplicates is routed again (see the
                            // module comment); anything else reports the unknown outcome.
                            Forwarded::Lost(r) if Instant::now() < deadline && is_idempotent_send(req, self.cfg.dedup_window_ms > 0) => {
                                self.forwarding.resent.fetch_add(1, Ordering::Relaxed);
                                lost = Some((id, r));
                            }
                            Forwarded::Lost(r) => {
                                done(waited);
                                return Err(r);
                            }
                            // The leader as known cannot be reached (killed, restarting): wait for the role
                            // to change, then try the leader then known.
                            Forwarded::NotSent(r) => last = Some(r),
                        }
                    }
                }
                Route::Wait => {}
            }
            let now = Instant::now();
            if now >= deadline {
                if self.cfg.leader_wait_ms > 0 {
                    self.forwarding.wait_expired.fetch_add(1, Ordering::Relaxed);
                }
                // A send whose first copy may be stored keeps its "outcome unknown".
                return Err(lost.map(|(_, r)| r).or(last).unwrap_or_else(|| self.refusal(&role, req)));
            }
            waited = true;
            // A fence (or a leader that refused) may end without a role change (a failed transfer): look again
            // after a short while then; otherwise the role channel wakes the wait.
            let mut wait = deadline - now;
            if fenced || last.is_some() {
                wait = wait.min(RECHECK);
            }
            match tokio::time::timeout(wait, rx.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                // The node stopped.
                Ok(Err(_)) => return Err(self.not_leader_reply(req)),
            }
        }
    }

    /// Forwards one write to the leader at `addr`; a send carries the client's address as its born host.
    async fn forward_write(&self, peer: SocketAddr, req: &RemotingCommand, addr: &str) -> Forwarded {
        let mut fwd = req.clone();
        if matches!(req.request_code(), RequestCode::SEND_MESSAGE | RequestCode::SEND_MESSAGE_V2 | RequestCode::SEND_BATCH_MESSAGE) {
            fwd.ext_fields.insert(BORN_HOST_FIELD.into(), peer.to_string());
        }
        let not_leader = self.not_leader_reply(req);
        self.forward_once(req, fwd, addr, not_leader, self.cfg.forward_timeout()).await
    }

    /// Relays `fwd` (the request `req`, possibly with extra fields) to the member whose client port is `addr`
    /// on the kept leader connection, marked as forwarded, within the forwarding bounds; answers with its
    /// response (waiting up to `timeout`). `refused` is the answer when a bound is reached or nothing could be
    /// sent.
    pub(crate) async fn forward_once(
        &self,
        req: &RemotingCommand,
        mut fwd: RemotingCommand,
        addr: &str,
        refused: Reply,
        timeout: Duration,
    ) -> Forwarded {
        let _slot = match self.forwarding.try_acquire(request_bytes(req)) {
            Ok(s) => s,
            Err(why) => {
                debug!(code = req.code, leader = %addr, why, "a request was not forwarded");
                // Answered at once, without the mark that would make it routed again: the bound holds.
                return Forwarded::Answer(refused.map(|mut r| {
                    let remark = r.cmd.remark.take().unwrap_or_default();
                    r.cmd.remark = Some(format!("{remark} (not forwarded: {why})"));
                    r.cmd.ext_fields.remove(NOT_LEADER_FIELD);
                    r
                }));
            }
        };
        let recently_failed = |addr: &str| {
            let failed = self.forwarding.connect_failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.as_ref().is_some_and(|(a, at)| a == addr && at.elapsed() < CONNECT_RETRY)
        };
        if recently_failed(addr) {
            return Forwarded::NotSent(refused);
        }
        let client = {
            let mut link = self.leader_link.lock().await;
            match link.as_ref() {
                Some((a, c)) if a == addr && !c.is_closed() => c.clone(),
                // Another request may have just failed to connect while this one waited for the lock.
                _ if recently_failed(addr) => return Forwarded::NotSent(refused),
                _ => match raftmq_net::RemotingClient::connect_with(addr, timeout.min(CONNECT_TIMEOUT_MAX), None, self.client_tls.as_ref())
                    .await
                {
                    Ok(c) => {
                        *link = Some((addr.to_string(), c.clone()));
                        c
                    }
                    Err(e) => {
                        *self.forwarding.connect_failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((addr.to_string(), Instant::now()));
                        tracing::warn!(leader = %addr, error = %e, "cannot reach the leader to forward a request");
                        return Forwarded::NotSent(refused);
                    }
                },
            }
        };
        fwd.ext_fields.insert(FORWARDED_FIELD.into(), self.cfg.node_id.to_string());
        // A control request this node accepted under the cluster secret is signed afresh, the forwarding mark
        // included (the secret's signature covers every ext field).
        if let Some(secrets) =
            self.cluster_secrets.as_ref().filter(|_| fwd.ext_fields.contains_key(raftmq_remoting::cluster_auth::AUTH_FIELD))
        {
            raftmq_remoting::cluster_auth::sign_command(secrets, &mut fwd);
        }
        self.forwarding.forwarded.fetch_add(1, Ordering::Relaxed);
        if req.is_oneway() {
            // Nobody waits for an answer (END_TRANSACTION is oneway): pass it on and return.
            if let Err(e) = client.invoke_oneway(fwd).await {
                tracing::warn!(leader = %addr, error = %e, "could not forward a oneway request to the leader");
            }
            return Forwarded::Answer(None);
        }
        match client.invoke(fwd, timeout).await {
            Ok(resp) => {
                let mut out = RemotingCommand::response_to(req, ResponseCode(resp.code), resp.remark);
                out.ext_fields = resp.ext_fields;
                out.body = resp.body;
                Forwarded::Answer(Some(out.into()))
            }
            Err(e) => {
                self.forwarding.unanswered.fetch_add(1, Ordering::Relaxed);
                Forwarded::Lost(reply(
                    req,
                    ResponseCode::SYSTEM_ERROR,
                    format!("forwarded to the leader at {addr}, whose answer did not arrive ({e}); the outcome is unknown"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(role: Role, ready: bool, leader: Option<u64>) -> RoleState {
        RoleState { role, term: 1, leader, leader_addr: None, leader_client_addr: None, ready }
    }

    #[test]
    fn routes_by_role() {
        assert_eq!(route(&role(Role::Leader, true, Some(1)), 1, false), Route::Here);
        assert_eq!(route(&role(Role::Leader, true, Some(1)), 1, true), Route::Wait, "a leader handing over waits");
        assert_eq!(route(&role(Role::Leader, false, Some(1)), 1, false), Route::Wait, "a leader still applying waits");
        assert_eq!(route(&role(Role::Follower, false, Some(2)), 1, false), Route::Leader(2));
        assert_eq!(route(&role(Role::Follower, false, None), 1, false), Route::Wait, "no leader known: wait");
        assert_eq!(route(&role(Role::Candidate, false, None), 1, false), Route::Wait);
        assert_eq!(route(&role(Role::Follower, false, Some(1)), 1, false), Route::Wait, "never forward to itself");
    }

    #[test]
    fn forwarding_slots_stop_at_the_count_limit() {
        let f = Forwarding::new(2, 1 << 20);
        let a = f.try_acquire(10).expect("first");
        let b = f.try_acquire(10).expect("second, at the limit");
        let e = f.try_acquire(10).err().expect("third is over forwardInflightMax");
        assert!(e.contains("forwardInflightMax 2"), "{e}");
        assert_eq!(f.refused.load(Ordering::Relaxed), 1);
        drop(a);
        let c = f.try_acquire(10).expect("a released slot is free again");
        drop((b, c));
        assert_eq!((f.inflight.load(Ordering::Relaxed), f.bytes.load(Ordering::Relaxed)), (0, 0), "all released");
    }

    #[test]
    fn forwarding_slots_stop_at_the_byte_limit() {
        let f = Forwarding::new(100, 1000);
        let a = f.try_acquire(600).expect("600 of 1000");
        let b = f.try_acquire(400).expect("exactly at the byte limit");
        let e = f.try_acquire(1).err().expect("one byte over");
        assert!(e.contains("forwardInflightBytesMax 1000"), "{e}");
        drop((a, b));
        assert!(f.try_acquire(1001).is_err(), "a request larger than the cap is never forwarded");
        assert!(f.try_acquire(1000).is_ok());
        assert_eq!(f.inflight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn born_host_is_the_forwarded_client_only_on_forwarded_requests() {
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let mut req = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0);
        req.ext_fields.insert(BORN_HOST_FIELD.into(), "192.168.1.7:40000".into());
        assert_eq!(born_host(peer, &req), peer, "a client cannot name another born host");
        req.ext_fields.insert(FORWARDED_FIELD.into(), "2".into());
        assert_eq!(born_host(peer, &req), "192.168.1.7:40000".parse::<SocketAddr>().unwrap());
        req.ext_fields.insert(BORN_HOST_FIELD.into(), "garbage".into());
        assert_eq!(born_host(peer, &req), peer, "an unreadable address is ignored");
    }

    fn send_with(props: &[(&str, &str)]) -> RemotingCommand {
        use raftmq_remoting::header::SendMessageRequestHeader;
        let mut encoded = String::new();
        raftmq_remoting::message::encode_properties(props.iter().copied(), &mut encoded).unwrap();
        let h = SendMessageRequestHeader { producer_group: "p".into(), topic: "T".into(), properties: Some(encoded), ..Default::default() };
        let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(b"x".to_vec());
        h.write_ext_fields_v2(&mut cmd.ext_fields);
        cmd
    }

    fn batch_of(ids: &[Option<&str>]) -> RemotingCommand {
        use raftmq_remoting::message::{encode_batch_message, encode_properties, property, BatchMessage};
        let mut body = Vec::new();
        for id in ids {
            let mut props = String::new();
            encode_properties(id.map(|k| (property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, k)), &mut props).unwrap();
            encode_batch_message(&BatchMessage { flag: 0, body: b"m", properties: &props }, &mut body).unwrap();
        }
        let mut cmd = send_with(&[]);
        cmd.code = RequestCode::SEND_BATCH_MESSAGE.0;
        cmd.body = body.into();
        cmd
    }

    #[test]
    fn only_sends_the_window_de_duplicates_are_idempotent() {
        use raftmq_remoting::message::property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX as UNIQ;
        assert!(is_idempotent_send(&send_with(&[(UNIQ, "A1")]), true));
        assert!(!is_idempotent_send(&send_with(&[(UNIQ, "A1")]), false), "de-duplication off");
        assert!(!is_idempotent_send(&send_with(&[]), true), "no client id");
        assert!(!is_idempotent_send(&send_with(&[(UNIQ, "")]), true), "an empty client id is not de-duplicated");
        assert!(is_idempotent_send(&batch_of(&[Some("B1"), Some("B2")]), true));
        assert!(!is_idempotent_send(&batch_of(&[Some("B1"), None]), true), "one message without an id");
        assert!(!is_idempotent_send(&batch_of(&[]), true), "an empty batch");
        let mut offsets = send_with(&[(UNIQ, "A1")]);
        offsets.code = RequestCode::UPDATE_CONSUMER_OFFSET.0;
        assert!(!is_idempotent_send(&offsets, true), "only sends");
    }

    #[test]
    fn routed_writes() {
        for c in
            [RequestCode::SEND_MESSAGE, RequestCode::SEND_MESSAGE_V2, RequestCode::SEND_BATCH_MESSAGE, RequestCode::UPDATE_CONSUMER_OFFSET]
        {
            assert!(is_routed_write(c), "{c:?}");
        }
        assert!(!is_routed_write(RequestCode::PULL_MESSAGE) && !is_routed_write(RequestCode::HEART_BEAT));
    }
}
