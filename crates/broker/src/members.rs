//! Membership requests (`raftmq admin node list|add|replace|remove`): list the group's members, add a fresh
//! node as a learner, promote it (or swap it for a dead voter), and remove a member — the leader's only
//! after handing leadership on. Also where a member's client address is looked up: the membership records
//! it for nodes added at run time, the static `[[peers]]` for members bootstrapped by earlier releases.
//!
//! The Raft rules (ids never reused, safe size, quorum) live in `raftmq_raft::node`; this module checks the
//! request, probes the node being added over its client port, and answers with a code and a remark.

use std::time::{Duration, Instant};

use raftmq_net::RemotingClient;
use raftmq_raft::member::MemberAddr;
use raftmq_raft::node::NodeError;
use raftmq_remoting::codes::RAFTMQ_NODE_STATUS;
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::{RequestCode, ResponseCode};
use tracing::info;

use crate::broker::BrokerInner;
use crate::processor::{ok, reply, Reply};

/// How long the leader waits for the node being added to answer its status request (connect + answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a promotion waits for the learner to hold the leader's whole log. The CLI asks only once the
/// learner is close (see `raftmq admin node add`), so this covers the last entries under load.
pub(crate) const PROMOTE_CATCH_UP_WAIT: Duration = Duration::from_secs(10);
/// How long a removal waits for the remaining voters to acknowledge a probe entry.
const REMOVE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leader transfer before removing the leader may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old leader keeps offering the removal to a new leader that is not ready yet.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// How long the removal forwarded to the new leader may take: its quorum probe and the membership change.
const HANDOVER_REMOVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A member id from an ext field: `4` or `n4`.
fn node_id(req: &RemotingCommand, field: &str) -> Result<u64, Reply> {
    match req.ext_fields.get(field).map(|t| t.trim().trim_start_matches('n').parse::<u64>()) {
        Some(Ok(id)) if id > 0 => Ok(id),
        _ => Err(reply(req, ResponseCode::SYSTEM_ERROR, format!("ext field `{field}` must name a node id ≥ 1 (e.g. 4 or n4)"))),
    }
}

/// The response for a refused or failed membership change: refusals by rule and "not the leader" are
/// answered so that a client can act (fix the request, go to the leader); anything else is a system error.
fn refused(req: &RemotingCommand, what: &str, e: NodeError) -> Reply {
    let code = match e {
        NodeError::NotLeader { .. } => ResponseCode::SERVICE_NOT_AVAILABLE,
        _ => ResponseCode::SYSTEM_ERROR,
    };
    reply(req, code, format!("{what}: {e}"))
}

impl BrokerInner {
    /// The client address of member `id`: recorded in the membership (nodes added at run time), else this
    /// node's static `[[peers]]` entry (members bootstrapped before the membership carried it).
    pub(crate) fn client_addr_of(&self, id: u64) -> Option<String> {
        self.node.member_client_addr(id).or_else(|| self.cfg.client_addr_of(id).map(String::from))
    }

    /// RAFTMQ_MEMBERS: the membership as this node sees it, with the leader's replication progress.
    pub(crate) fn members(&self, req: &RemotingCommand) -> Reply {
        let view = self.node.members();
        let last = view.last_log_index;
        let members: Vec<serde_json::Value> = view
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "nodeId": m.id,
                    "raftAddr": m.addr.raft,
                    "clientAddr": m.addr.client.clone().or_else(|| self.cfg.client_addr_of(m.id).map(String::from)),
                    "role": if m.voter { "voter" } else { "learner" },
                    "matched": m.matched,
                    "lag": m.matched.map(|x| last.unwrap_or(0).saturating_sub(x)),
                })
            })
            .collect();
        let value = serde_json::json!({
            "brokerName": self.cfg.broker_name,
            "nodeId": self.cfg.node_id,
            "leader": view.leader,
            "lastLogIndex": last,
            "joint": view.joint,
            "members": members,
        });
        match raftmq_remoting::body::encode_json_body(&value) {
            Ok(body) => Some(ok(req).with_body(body).into()),
            Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
        }
    }

    /// RAFTMQ_ADD_NODE: asks the node at client address `addr` who it is, checks it is a fresh node of this
    /// broker group (or the learner being added already), and adds it as a learner.
    pub(crate) async fn add_node(&self, req: &RemotingCommand) -> Reply {
        let Some(addr) = req.ext_fields.get("addr").map(|a| a.trim().to_string()) else {
            return reply(req, ResponseCode::SYSTEM_ERROR, "ext field `addr` must hold the new node's client address (host:port)");
        };
        if let Err(why) = MemberAddr::new("0.0.0.0:1", addr.clone()).validate() {
            return reply(req, ResponseCode::SYSTEM_ERROR, why);
        }
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        // With ACL on, the fresh node checks the probe too: sign it as the account that asked for the add
        // (this request passed the ACL, so that account exists and is admin).
        let creds = self.acl.as_ref().and_then(|h| h.acl().credentials_for(req));
        let status = match probe_status(&addr, self.cluster_secrets.as_ref(), creds.as_ref(), self.client_tls.as_ref()).await {
            Ok(s) => s,
            Err(why) => return reply(req, ResponseCode::SYSTEM_ERROR, format!("cannot add the node at {addr}: {why}")),
        };
        let (Some(id), Some(raft)) = (status["nodeId"].as_u64(), status["raftAddr"].as_str()) else {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("the node at {addr} did not report its nodeId and raftAddr"));
        };
        let group = status["brokerName"].as_str().unwrap_or("");
        if group != self.cfg.broker_name {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!("the node at {addr} (n{id}) belongs to broker group {group:?}, not {:?}", self.cfg.broker_name),
            );
        }
        let already_learner = self.node.members().members.iter().any(|m| m.id == id && !m.voter && m.addr.raft == raft);
        let term = status["term"].as_u64().unwrap_or(0);
        let fresh = term == 0 && status["lastLogIndex"].is_null() && status["voters"].as_array().is_none_or(|v| v.is_empty());
        if !already_learner && !fresh {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!(
                    "the node at {addr} (n{id}) already holds Raft state (term {term}, last log index {}): a node joins with an \
                     empty store and a node id never used in this group",
                    status["lastLogIndex"]
                ),
            );
        }
        let member = MemberAddr::new(raft, addr.clone());
        match self.node.add_member(id, member).await {
            Ok(()) => {
                info!(node = id, raft, client = %addr, resumed = already_learner, "learner added");
                let value = serde_json::json!({ "nodeId": id, "raftAddr": raft, "clientAddr": addr, "resumed": already_learner });
                match raftmq_remoting::body::encode_json_body(&value) {
                    Ok(body) => Some(ok(req).with_body(body).into()),
                    Err(e) => reply(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
                }
            }
            Err(e) => refused(req, &format!("n{id} was not added"), e),
        }
    }

    /// RAFTMQ_PROMOTE_NODE: makes learner `node` a voter, or with `replaces`, swaps it for that voter.
    pub(crate) async fn promote_node(&self, req: &RemotingCommand) -> Reply {
        let id = match node_id(req, "node") {
            Ok(id) => id,
            Err(r) => return r,
        };
        let replaces = match req.ext_fields.contains_key("replaces") {
            true => match node_id(req, "replaces") {
                Ok(d) => Some(d),
                Err(r) => return r,
            },
            false => None,
        };
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        let result = match replaces {
            Some(dead) => self.node.replace_member(dead, id, PROMOTE_CATCH_UP_WAIT).await,
            None => self.node.promote_member(id, PROMOTE_CATCH_UP_WAIT).await,
        };
        match result {
            Ok(()) => {
                self.registration_now();
                Some(ok(req).into())
            }
            Err(e @ NodeError::Timeout(_)) => {
                reply(req, ResponseCode::SYSTEM_BUSY, format!("n{id} has not caught up yet ({e}); it stays a learner, retry"))
            }
            Err(e) => refused(req, &format!("n{id} was not promoted"), e),
        }
    }

    /// RAFTMQ_REMOVE_NODE: removes member `node`. The leader removing itself first hands leadership to the
    /// most caught-up other voter, then passes the request to it.
    pub(crate) async fn remove_node(&self, req: &RemotingCommand) -> Reply {
        let id = match node_id(req, "node") {
            Ok(id) => id,
            Err(r) => return r,
        };
        let force = req.ext_fields.get("force").is_some_and(|f| f == "true");
        if let Err(r) = self.check_leader(req) {
            return r;
        }
        if id == self.cfg.node_id && self.node.members().members.iter().any(|m| m.id == id && m.voter) {
            return self.remove_self(req, id, force).await;
        }
        match self.node.remove_member(id, force, REMOVE_PROBE_TIMEOUT).await {
            Ok(()) => {
                info!(node = id, force, "member removed");
                self.registration_now();
                Some(ok(req).into())
            }
            Err(e) => refused(req, &format!("n{id} was not removed"), e),
        }
    }

    /// The leader removing itself: transfer leadership to the other voter with the highest matched index,
    /// then forward the removal to it (retrying while it becomes ready).
    async fn remove_self(&self, req: &RemotingCommand, id: u64, force: bool) -> Reply {
        if req.ext_fields.contains_key(crate::processor::FORWARDED_FIELD) {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("n{id} leads again after handing leadership on; retry the removal"));
        }
        let view = self.node.members();
        let voters = view.members.iter().filter(|m| m.voter).count();
        if voters <= 1 {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("n{id} is the only voter; a group keeps at least one"));
        }
        if !force && voters - 1 < raftmq_raft::node::VOTERS_SAFE_MIN {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!(
                    "n{id} was not removed: it would leave {} voter(s), below the safe size of {} (no failure tolerated); \
                     replace it instead, or force the removal",
                    voters - 1,
                    raftmq_raft::node::VOTERS_SAFE_MIN
                ),
            );
        }
        let Some(next) = view.members.iter().filter(|m| m.voter && m.id != id).max_by_key(|m| (m.matched, std::cmp::Reverse(m.id))) else {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("n{id} has no other voter to hand leadership to"));
        };
        let next_id = next.id;
        let Some(next_addr) = self.client_addr_of(next_id) else {
            return reply(req, ResponseCode::SYSTEM_ERROR, format!("no client address is known for n{next_id}"));
        };
        info!(node = id, next = next_id, "removing the leader: transferring leadership first");
        let transferred = self.node.transfer_leader(next_id, TRANSFER_TIMEOUT).await;
        self.registration_now();
        if let Err(e) = transferred {
            let code = match e {
                raftmq_raft::node::NodeError::Busy(_) => ResponseCode::SYSTEM_BUSY,
                _ => ResponseCode::SYSTEM_ERROR,
            };
            return reply(req, code, format!("n{id} was not removed: leader transfer to n{next_id} failed: {e}"));
        }
        let deadline = Instant::now() + HANDOVER_WAIT;
        loop {
            let unreachable = reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!("handed leadership to n{next_id} at {next_addr}, which did not answer; retry the removal there"),
            );
            let resp = self.forward_to(req, &next_addr, unreachable, HANDOVER_REMOVE_TIMEOUT).await;
            let busy = resp.as_ref().is_some_and(|r| r.cmd.code == ResponseCode::SERVICE_NOT_AVAILABLE.0);
            if !busy || Instant::now() >= deadline {
                return resp;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The node status (RAFTMQ_NODE_STATUS) of the node answering at `addr`: the request is signed with the cluster secret when there is one (the control codes
/// accept it with or without ACL), else with the ACL account that asked for the add.
async fn probe_status(
    addr: &str,
    secrets: Option<&raftmq_remoting::cluster_auth::ClusterSecrets>,
    creds: Option<&raftmq_remoting::acl::Credentials>,
    tls: Option<&raftmq_net::ClientTls>,
) -> Result<serde_json::Value, String> {
    let c = RemotingClient::connect_with(addr, PROBE_TIMEOUT, None, tls).await.map_err(|e| format!("it does not answer ({e})"))?;
    let mut probe = RemotingCommand::request(RequestCode(RAFTMQ_NODE_STATUS), 0);
    if let Some(secrets) = secrets {
        raftmq_remoting::cluster_auth::sign_command(secrets, &mut probe);
    } else if let Some(creds) = creds {
        creds.sign(&mut probe);
    }
    let resp = c.invoke(probe, PROBE_TIMEOUT).await.map_err(|e| format!("its status request failed ({e})"))?;
    if resp.code != ResponseCode::SUCCESS.0 {
        return Err(format!("its status request was refused ({}: {})", resp.code, resp.remark.unwrap_or_default()));
    }
    serde_json::from_slice(&resp.body).map_err(|e| format!("its status does not decode ({e})"))
}
