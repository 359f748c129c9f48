//! Transactional messages on the broker: half sends, END_TRANSACTION (37), the leader's check-back
//! service (CHECK_TRANSACTION_STATE, 39) and the replicated de-duplication window's settings.
//!
//! The replicated half lives in `raftmq_state::txn`: a half message is stored once in
//! `RMQ_SYS_TRANS_HALF_TOPIC` queue 0 together with its pending-transaction record, and nothing of it is
//! visible. A commit is a produce entry holding the final message for the real queue plus a resolve op;
//! `apply` indexes it only while the transaction is pending, so a commit that arrives twice (the
//! producer's own END and its answer to a check-back, or a resolve re-proposed after a failover) is visible
//! once. Rollbacks and check rounds are entries of ops alone.
//!
//! Check-backs are leader-only and decided from replicated times: first `max(transactionTimeOut,
//! CHECK_IMMUNITY_TIME_IN_SECONDS)` after the half entry's stamp, then every `transactionCheckInterval`
//! after the last round; each round is counted through the log (so a new leader resumes the schedule), and
//! after `transactionCheckMax` rounds an undecided transaction is parked: its copy goes to
//! `TRANS_CHECK_MAX_TIME_TOPIC` and it stops being pending. The 39 request goes oneway to a live
//! connection of the producer group (heartbeats tell which); a round with no live producer still counts,
//! so a half message whose producer never comes back is parked, not stuck. 39 carries the original half
//! message's offsets every time (no copy is re-appended per check, unlike RocketMQ).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftmq_raft::types::{
    Command, CommandResponse, DedupSettings, HalfMessage, Op, PendingTxn, Resolution, TRANS_CHECK_MAX_TIME_TOPIC, TRANS_HALF_TOPIC,
};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::{transaction_type, CheckTransactionStateRequestHeader, EndTransactionRequestHeader};
use raftmq_remoting::message::{
    decode_properties, encode_offset_msg_id, encode_stored_message, get_property, properties_to_string, property, sys_flag, tags_code,
    MessageToStore,
};
use raftmq_remoting::{decode_stored_message, CommandHeader, RequestCode, ResponseCode};
use tracing::{debug, info, warn};

use crate::broker::BrokerInner;
use crate::processor::{reply, Reply};
use crate::schedule::staged_properties;
use crate::topics::validate_group;

/// How often the leader's check service looks for due transactions.
const CHECK_TICK: Duration = Duration::from_secs(1);
/// Longest `CHECK_IMMUNITY_TIME_IN_SECONDS` honoured (RocketMQ's proxy caps recovery time at one hour).
pub(crate) const CHECK_IMMUNITY_SECS_MAX: i64 = 3600;

/// What the leader decided about a half send before storing it.
pub(crate) struct HalfPlan {
    /// The half message's properties: the producer's plus `REAL_TOPIC`, `REAL_QID`, `__transactionId__`.
    pub properties: String,
    /// The pending-transaction record `apply` adds.
    pub half: HalfMessage,
    /// The transaction id the producer is answered with (its `UNIQ_KEY`).
    pub transaction_id: String,
}

impl HalfPlan {
    /// The op that makes the stored half message a pending transaction (part 0, message 0).
    pub fn op(&self) -> Op {
        Op::Prepare { part: 0, index: 0, half: self.half.clone() }
    }
}

/// The message a transaction makes visible, parks, or shows a producer in a check-back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// The committed message, for the real queue.
    Commit,
    /// The parked message, for `TRANS_CHECK_MAX_TIME_TOPIC` queue 0.
    Park,
    /// The body of CHECK_TRANSACTION_STATE: the half message as the producer sent it, at its real
    /// topic and queue, with the half message's offsets.
    Check,
}

impl BrokerInner {
    /// Checks a half send (`TRAN_MSG`) for `topic`/`queue_id` and plans how it is stored. `scheduled`:
    /// it also asked for a delay level or a timer, which a transaction cannot have.
    pub(crate) async fn plan_half(
        &self,
        properties: &str,
        topic: &str,
        queue_id: u32,
        scheduled: bool,
    ) -> Result<HalfPlan, (ResponseCode, String)> {
        let illegal = |why: String| Err((ResponseCode::MESSAGE_ILLEGAL, why));
        if scheduled {
            return illegal(
                "a transactional (half) message cannot also be delayed or timed (DELAY, TIMER_DELIVER_MS, TIMER_DELAY_SEC, \
                 TIMER_DELAY_MS): RocketMQ would silently lose it; send it without them"
                    .into(),
            );
        }
        let Some(group) = get_property(properties, property::PRODUCER_GROUP).filter(|g| !g.is_empty()) else {
            return illegal("a transactional (half) message must carry its producer group (property PGROUP)".into());
        };
        if let Err(why) = validate_group(group) {
            return illegal(format!("PGROUP: {why}"));
        }
        let pending = self.node.state().with_metadata(|m| m.state.transactions.len());
        if pending >= self.cfg.transaction_pending_max {
            return Err((
                ResponseCode::SERVICE_NOT_AVAILABLE,
                format!(
                    "not stored: {pending} transactions are pending, the limit (transactionPendingMax {})",
                    self.cfg.transaction_pending_max
                ),
            ));
        }
        let transaction_id = get_property(properties, property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).unwrap_or("").to_string();
        // Java's Long.parseLong on the user property; a value that does not parse means no immunity.
        let immunity_secs = get_property(properties, "CHECK_IMMUNITY_TIME_IN_SECONDS")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
            .clamp(0, CHECK_IMMUNITY_SECS_MAX);
        let properties = staged_properties(properties, topic, queue_id, (property::TRANSACTION_ID, transaction_id.clone()))
            .map_err(|why| (ResponseCode::MESSAGE_ILLEGAL, why))?;
        self.ensure_staging_topic(TRANS_HALF_TOPIC, 1).await?;
        let half = HalfMessage {
            producer_group: group.to_string(),
            real_topic: topic.to_string(),
            real_queue: queue_id,
            transaction_id: transaction_id.clone(),
            immunity_ms: immunity_secs * 1000,
        };
        Ok(HalfPlan { properties, half, transaction_id })
    }

    /// END_TRANSACTION (37), usually oneway: commit (8) or roll back (12) a pending transaction; 0
    /// (unknown) leaves it to the check-back. A follower forwards it to the leader. Anything that does not
    /// match a pending transaction — unknown or already ended, another producer group, another half-queue
    /// offset — is refused with SYSTEM_ERROR and a remark, and changes nothing.
    pub(crate) async fn end_transaction(&self, req: &RemotingCommand) -> Reply {
        let h = match EndTransactionRequestHeader::from_ext_fields(&req.ext_fields) {
            Ok(h) => h,
            Err(e) => {
                debug!(error = %e, "bad END_TRANSACTION header");
                return reply(req, ResponseCode::SYSTEM_ERROR, format!("bad END_TRANSACTION header: {e}"));
            }
        };
        let how = match h.commit_or_rollback {
            transaction_type::COMMIT => "commit",
            transaction_type::ROLLBACK => "rollback",
            transaction_type::NOT_TYPE => {
                debug!(msg_id = %h.msg_id, "END_TRANSACTION unknown: left to the check-back");
                return reply(req, ResponseCode::SUCCESS, "state unknown: the transaction stays pending until a check-back decides");
            }
            other => {
                return reply(
                    req,
                    ResponseCode::SYSTEM_ERROR,
                    format!("commitOrRollback {other} is none of 8 (commit), 12 (rollback), 0 (unknown)"),
                )
            }
        };
        if let Err(r) = self.check_leader(req) {
            return self.forward_to_leader(req, r).await;
        }
        let found = u64::try_from(h.commit_log_offset)
            .ok()
            .and_then(|phys| self.node.state().with_metadata(|m| m.state.transactions.get(phys).cloned()).map(|t| (phys, t)));
        let Some((half_phys, txn)) = found else {
            debug!(msg_id = %h.msg_id, commit_log_offset = h.commit_log_offset, how, "END_TRANSACTION for no pending transaction");
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!(
                    "Find prepared transaction message failed: no transaction is pending at commitLogOffset {} (msgId {}); \
                     it is unknown, or was already committed, rolled back or parked",
                    h.commit_log_offset, h.msg_id
                ),
            );
        };
        if txn.half.producer_group != h.producer_group {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!("The producer group wrong: the transaction belongs to {}, not {}", txn.half.producer_group, h.producer_group),
            );
        }
        if i64::try_from(txn.half_queue_offset).ok() != Some(h.tran_state_table_offset) {
            return reply(
                req,
                ResponseCode::SYSTEM_ERROR,
                format!(
                    "The transaction state table offset wrong: the half message is at {}, not {}",
                    txn.half_queue_offset, h.tran_state_table_offset
                ),
            );
        }
        let outcome = if h.commit_or_rollback == transaction_type::ROLLBACK {
            self.store.put_ops_only(vec![Op::Resolve { half_phys, how: Resolution::Rollback }]).await.map(|()| true)
        } else {
            let (tags, copy) = match self.txn_message(half_phys, &txn, Copy::Commit) {
                Ok(c) => c,
                Err(why) => return reply(req, ResponseCode::SYSTEM_ERROR, why),
            };
            let op = Op::Resolve { half_phys, how: Resolution::Commit { part: 0, index: 0 } };
            self.store.put_ops(&txn.half.real_topic, txn.half.real_queue, vec![(tags, copy)], vec![op]).await.map(|p| !p.is_empty())
        };
        match outcome {
            Ok(true) => {
                debug!(msg_id = %h.msg_id, how, from_check = h.from_transaction_check, "transaction ended");
                Some(RemotingCommand::success_to(req).into())
            }
            // Ended by another END (or a parking) between our look-up and the commit: nothing changed.
            Ok(false) => reply(req, ResponseCode::SYSTEM_ERROR, format!("the transaction {} was ended concurrently", h.msg_id)),
            Err(e) => {
                warn!(msg_id = %h.msg_id, how, error = %e, "END_TRANSACTION not stored; the transaction stays pending");
                self.put_error_reply(req, e)
            }
        }
    }

    /// The stored half message at `half_phys` rewritten as `kind` needs it, with its tag code.
    fn txn_message(&self, half_phys: u64, txn: &PendingTxn, kind: Copy) -> Result<(i64, Bytes), String> {
        let raw = match self.store.message_by_phys_offset(half_phys) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Err(format!("the half message at commitLogOffset {half_phys} is no longer in the log")),
            Err(e) => return Err(format!("the half message at commitLogOffset {half_phys} is unreadable: {e}")),
        };
        let m = decode_stored_message(&raw).map_err(|e| format!("the half message at commitLogOffset {half_phys} is unreadable: {e}"))?;
        let mut props = decode_properties(m.properties);
        let (topic, queue_id, tran) = match kind {
            Copy::Commit => {
                for p in [property::TRANSACTION_PREPARED, property::REAL_TOPIC, property::REAL_QUEUE_ID] {
                    props.remove(p);
                }
                (txn.half.real_topic.as_str(), txn.half.real_queue, sys_flag::TRANSACTION_COMMIT_TYPE)
            }
            Copy::Park => (TRANS_CHECK_MAX_TIME_TOPIC, 0, sys_flag::TRANSACTION_NOT_TYPE),
            Copy::Check => {
                props.insert("TRANSACTION_CHECK_TIMES".into(), (txn.checks + 1).to_string());
                (txn.half.real_topic.as_str(), txn.half.real_queue, sys_flag::TRANSACTION_PREPARED_TYPE)
            }
        };
        let properties = properties_to_string(&props).map_err(|e| e.to_string())?;
        let check = kind == Copy::Check;
        let out = MessageToStore {
            topic,
            queue_id: queue_id as i32,
            flag: m.flag,
            queue_offset: if check { txn.half_queue_offset as i64 } else { 0 },
            physical_offset: if check { half_phys as i64 } else { 0 },
            sys_flag: sys_flag::with_transaction_value(m.sys_flag & !(sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6), tran),
            born_timestamp: m.born_timestamp,
            born_host: crate::send::v4(m.born_host),
            store_timestamp: m.store_timestamp,
            store_host: crate::send::v4(m.store_host),
            reconsume_times: m.reconsume_times,
            prepared_transaction_offset: if kind == Copy::Commit { half_phys as i64 } else { 0 },
            body: m.body,
            properties: &properties,
        };
        let mut buf = Vec::with_capacity(raw.len() + 64);
        encode_stored_message(&out, &mut buf).map_err(|e| e.to_string())?;
        Ok((tags_code(get_property(&properties, property::TAGS)), Bytes::from(buf)))
    }

    /// `unsafeTxnVisibleAtHalf` (chaos-checker tests only): stores the commit copy of the just-stored half
    /// message at `half_phys` in its real queue **without** resolving the transaction, so it is visible before
    /// any commit, stays visible after a rollback or parking, and a commit shows it a second time. Compiled
    /// only with the `unsafe-ack-before-quorum` feature.
    #[cfg(feature = "unsafe-ack-before-quorum")]
    pub(crate) async fn unsafe_txn_visible_at_half(&self, half_phys: u64) {
        let Some(txn) = self.node.state().with_metadata(|m| m.state.transactions.get(half_phys).cloned()) else { return };
        match self.txn_message(half_phys, &txn, Copy::Commit) {
            Ok((tags, copy)) => {
                if let Err(e) = self.store.put(&txn.half.real_topic, txn.half.real_queue, vec![(tags, copy)]).await {
                    warn!(half_phys, error = %e, "unsafeTxnVisibleAtHalf: the visible copy was not stored");
                }
            }
            Err(why) => warn!(half_phys, why, "unsafeTxnVisibleAtHalf: no visible copy"),
        }
    }

    /// When the pending transaction is next checked back (replicated times only).
    fn check_due_ms(&self, t: &PendingTxn) -> i64 {
        let timeout = i64::try_from(self.cfg.transaction_time_out).unwrap_or(i64::MAX);
        let interval = i64::try_from(self.cfg.transaction_check_interval).unwrap_or(i64::MAX);
        if t.checks == 0 {
            t.stamped_ms.saturating_add(timeout.max(t.half.immunity_ms))
        } else {
            t.last_check_ms.saturating_add(interval)
        }
    }

    /// One pass of the check service (leader only): up to `transactionCheckBatchMax` due transactions
    /// are checked back or, after `transactionCheckMax` rounds, parked. Returns how many it handled.
    pub(crate) async fn check_pass(&self) -> Result<usize, String> {
        let now = crate::store::wall_ms().max(self.store.replicated_now_ms());
        let due: Vec<(u64, PendingTxn)> = self.node.state().with_metadata(|m| {
            m.state
                .transactions
                .iter()
                .filter(|(_, t)| self.check_due_ms(t) <= now)
                .take(self.cfg.transaction_check_batch_max)
                .map(|(p, t)| (p, t.clone()))
                .collect()
        });
        let mut rounds = Vec::new();
        for (half_phys, txn) in &due {
            if txn.checks >= self.cfg.transaction_check_max {
                self.park(*half_phys, txn).await?;
                continue;
            }
            self.send_check(*half_phys, txn);
            rounds.push(Op::Checked { half_phys: *half_phys });
        }
        if !rounds.is_empty() {
            self.store.put_ops_only(rounds).await.map_err(|e| format!("check-back rounds not recorded: {e}"))?;
        }
        Ok(due.len())
    }

    /// Sends CHECK_TRANSACTION_STATE for the pending transaction to a live producer of its group.
    fn send_check(&self, half_phys: u64, txn: &PendingTxn) {
        let Some(link) = self.clients.producer_link(&txn.half.producer_group) else {
            debug!(group = %txn.half.producer_group, half_phys, "no live producer of the group to check the transaction with");
            return;
        };
        let body = match self.txn_message(half_phys, txn, Copy::Check) {
            Ok((_, b)) => b,
            Err(why) => {
                warn!(half_phys, why, "cannot build a check-back");
                return;
            }
        };
        let offset_msg_id = encode_offset_msg_id(SocketAddr::V4(self.store_host()), half_phys as i64);
        let id = if txn.half.transaction_id.is_empty() { offset_msg_id.clone() } else { txn.half.transaction_id.clone() };
        let h = CheckTransactionStateRequestHeader {
            topic: Some(TRANS_HALF_TOPIC.to_string()),
            tran_state_table_offset: txn.half_queue_offset as i64,
            commit_log_offset: half_phys as i64,
            msg_id: Some(id.clone()),
            transaction_id: Some(id),
            offset_msg_id: Some(offset_msg_id),
        };
        let cmd = RemotingCommand::request(RequestCode::CHECK_TRANSACTION_STATE, 0).with_header(&h).with_body(body).mark_oneway();
        if !link.send_oneway(cmd) {
            debug!(group = %txn.half.producer_group, half_phys, "check-back could not be queued");
        }
    }

    /// Parks an undecided transaction in `TRANS_CHECK_MAX_TIME_TOPIC` (queue 0) and ends it.
    async fn park(&self, half_phys: u64, txn: &PendingTxn) -> Result<(), String> {
        self.ensure_staging_topic(TRANS_CHECK_MAX_TIME_TOPIC, 1).await.map_err(|(_, why)| why)?;
        let (tags, copy) = self.txn_message(half_phys, txn, Copy::Park)?;
        let op = Op::Resolve { half_phys, how: Resolution::Discard { part: 0, index: 0 } };
        self.store.put_ops(TRANS_CHECK_MAX_TIME_TOPIC, 0, vec![(tags, copy)], vec![op]).await.map_err(|e| e.to_string())?;
        warn!(
            group = %txn.half.producer_group,
            topic = %txn.half.real_topic,
            transaction_id = %txn.half.transaction_id,
            checks = txn.checks,
            "transaction undecided after transactionCheckMax check-backs: parked in TRANS_CHECK_MAX_TIME_TOPIC"
        );
        Ok(())
    }

    /// Pending transactions, the oldest one's age, and the de-duplication window, for `raftmq admin`.
    pub(crate) fn transaction_status(&self) -> serde_json::Value {
        let now = self.store.replicated_now_ms();
        let (pending, oldest_ms, checked, dedup, keys) = self.node.state().with_metadata(|m| {
            let t = &m.state.transactions;
            let oldest = t.iter().map(|(_, p)| p.stamped_ms).min();
            let checked = t.iter().filter(|(_, p)| p.checks > 0).count();
            (t.len(), oldest, checked, m.state.dedup.settings(), m.state.dedup.len())
        });
        serde_json::json!({
            "pending": pending,
            "pendingChecked": checked,
            "oldestPendingAgeMs": oldest_ms.map(|t| (now - t).max(0)),
            "dedupWindowMs": dedup.window_ms,
            "dedupKeysMax": dedup.keys_max,
            "dedupKeys": keys,
            "duplicatesAnswered": self.duplicates_answered.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Proposes this node's `dedupWindowMs` / `dedupKeysMax` when the group's replicated settings differ.
    async fn seed_dedup_window(&self) {
        let configured = DedupSettings {
            window_ms: i64::try_from(self.cfg.dedup_window_ms).unwrap_or(i64::MAX),
            keys_max: if self.cfg.dedup_window_ms == 0 { 0 } else { self.cfg.dedup_keys_max },
        };
        let replicated = self.node.state().with_metadata(|m| m.state.dedup.settings());
        if replicated == configured {
            return;
        }
        match self.node.write(Command::SetDedupWindow(configured)).await {
            Ok(CommandResponse::Refused(why)) => warn!(why, "the group refused dedupWindowMs/dedupKeysMax"),
            Ok(_) => info!(window_ms = configured.window_ms, keys_max = configured.keys_max, "de-duplication window set"),
            Err(e) => warn!(error = %e, "could not propose the de-duplication window; retried at the next leadership"),
        }
    }
}

/// The leader's transaction service: on every new leadership the de-duplication settings are seeded;
/// then, every [`CHECK_TICK`], due transactions are checked back or parked.
pub(crate) async fn check_loop(inner: Arc<BrokerInner>) {
    let mut leader = crate::broker::LeaderWatch::new(&inner);
    while let Some(new_term) = leader.leading().await {
        if new_term {
            inner.seed_dedup_window().await;
        }
        match inner.check_pass().await {
            Ok(n) if n >= inner.cfg.transaction_check_batch_max => continue,
            Ok(_) => {}
            Err(why) => warn!(why, "transaction check-back pass failed; retrying"),
        }
        leader.pause(CHECK_TICK).await;
    }
}
