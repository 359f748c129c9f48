//! Transactional messages: the replicated table of pending half messages.
//!
//! A half message is stored once, in [`TRANS_HALF_TOPIC`] queue 0, by a produce entry that also carries an
//! [`Op::Prepare`](crate::command::Op::Prepare); indexing it adds it here, keyed by its commitlog offset.
//! It is never visible in its real topic until an [`Op::Resolve`](crate::command::Op::Resolve) commits it:
//! the leader builds the final message and proposes it with the resolve, and `apply` indexes that copy
//! only if the transaction is still pending, then removes it. A second commit (the producer's own END and
//! its answer to a check-back), a commit after a rollback, or a resolve re-proposed by a new leader finds
//! nothing pending and indexes nothing: a committed message is visible exactly once. Within one entry,
//! rollbacks and check rounds take effect before any copy is indexed.
//!
//! Check-backs are decided by the leader from this table (times here are entry stamps, not client clocks)
//! and counted through the log ([`Op::Checked`](crate::command::Op::Checked)) so that a new leader resumes
//! them where the old one stopped. A transaction never decided is parked by a discard: its copy goes to
//! [`TRANS_CHECK_MAX_TIME_TOPIC`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::HalfMessage;

/// The topic half messages are stored in (queue 0), as in RocketMQ.
pub const TRANS_HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// Where transactions nobody decided within `transactionCheckMax` check-backs are parked.
pub const TRANS_CHECK_MAX_TIME_TOPIC: &str = "TRANS_CHECK_MAX_TIME_TOPIC";

/// One pending transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTxn {
    /// What the half send said.
    pub half: HalfMessage,
    /// The half message's offset in [`TRANS_HALF_TOPIC`] queue 0.
    pub half_queue_offset: u64,
    /// Its stored size in the commitlog.
    pub size: u32,
    /// The stamp of the entry that stored it.
    pub stamped_ms: i64,
    /// Check-back rounds made so far.
    pub checks: u32,
    /// The stamp of the last check-back round (0 before the first).
    pub last_check_ms: i64,
}

/// Pending transactions by the commitlog offset of their half message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transactions {
    pending: BTreeMap<u64, PendingTxn>,
}

impl Transactions {
    /// The pending transaction whose half message is at `half_phys`.
    pub fn get(&self, half_phys: u64) -> Option<&PendingTxn> {
        self.pending.get(&half_phys)
    }

    /// True while the transaction at `half_phys` is pending.
    pub fn contains(&self, half_phys: u64) -> bool {
        self.pending.contains_key(&half_phys)
    }

    /// Pending transactions.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when none is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Pending transactions in log order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &PendingTxn)> {
        self.pending.iter().map(|(k, v)| (*k, v))
    }

    /// The commitlog offset of the oldest pending half message: retention must keep the log from there.
    pub fn oldest_phys(&self) -> Option<u64> {
        self.pending.keys().next().copied()
    }

    pub(crate) fn prepare(&mut self, half_phys: u64, txn: PendingTxn) {
        self.pending.insert(half_phys, txn);
    }

    pub(crate) fn remove(&mut self, half_phys: u64) -> bool {
        self.pending.remove(&half_phys).is_some()
    }

    pub(crate) fn checked(&mut self, half_phys: u64, now_ms: i64) {
        if let Some(t) = self.pending.get_mut(&half_phys) {
            t.checks = t.checks.saturating_add(1);
            t.last_check_ms = now_ms;
        }
    }
}
