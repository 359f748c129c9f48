//! Queue locks of orderly consumers (LOCK_BATCH_MQ 41 / UNLOCK_BATCH_MQ 42) as replicated state.
//!
//! At most one client of a consumer group holds a queue. A holder keeps it while it renews: each grant or
//! renewal gives a **lease** that ends `ttl_ms` after the stamp of the entry that granted it (RocketMQ's
//! `lockMaxLiveTime`, 60 s; clients renew every 20 s). Time is the replicated clock ([`crate::clock`]):
//! a [`LockRequest`] or [`UnlockRequest`] carries the leader's stamp, apply advances the clock with it and
//! decides expiry against the clock, never against a local timer. Every replica therefore holds the same
//! table, and a new leader after a failover serves 41/42 from it at once: the holder keeps its lease, and a
//! different client gets the queue only once the lease has ended by the log's time.
//!
//! The limit on leases held at once (`locksMax`) and the lease length travel in each lock entry (the
//! leader's configuration when it proposed it), so apply reads no local configuration. Expired leases are
//! dropped at apply (by the expiry index, oldest first) before a lock or unlock acts.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A message queue as clients name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueKey {
    /// Topic.
    pub topic: String,
    /// Broker group name.
    pub broker_name: String,
    /// Queue id.
    pub queue_id: u32,
}

/// A lock (or renewal) of queues by one client of a group (log tag 11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    /// Consumer group.
    pub group: String,
    /// The client (`ip@instance`).
    pub client_id: String,
    /// The queues it asks for.
    pub queues: Vec<QueueKey>,
    /// The leader's store clock when it proposed the entry (ms): the time this lock is decided at.
    pub stamp_ms: i64,
    /// Lease length from the decision (the leader's `lockTtlMs`).
    pub ttl_ms: i64,
    /// Most leases held at once, over all groups (the leader's `locksMax`).
    pub locks_max: u64,
}

/// Releases of queues by one client of a group (log tag 12). Only the client's own leases end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockRequest {
    /// Consumer group.
    pub group: String,
    /// The client.
    pub client_id: String,
    /// The queues it releases.
    pub queues: Vec<QueueKey>,
    /// The leader's store clock when it proposed the entry (ms).
    pub stamp_ms: i64,
}

/// One held queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder.
    pub client_id: String,
    /// Replicated time of the last grant or renewal (ms).
    pub renewed_ms: i64,
    /// Replicated time the lease ends at unless renewed (ms).
    pub expires_ms: i64,
}

/// The replicated lock table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLocks {
    /// Leases by group, then queue.
    groups: BTreeMap<String, BTreeMap<QueueKey, Lease>>,
    /// (expires_ms, group, queue) of every lease: expiry in time order; its size is the number held.
    expiry: BTreeSet<(i64, String, QueueKey)>,
}

impl QueueLocks {
    /// Leases held (expired ones count until an entry drops them).
    pub fn len(&self) -> usize {
        self.expiry.len()
    }

    /// True when no lease is held.
    pub fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }

    /// The lease on `queue` of `group`, if any (it may have expired by now; see [`QueueLocks::holder_at`]).
    pub fn lease(&self, group: &str, queue: &QueueKey) -> Option<&Lease> {
        self.groups.get(group).and_then(|g| g.get(queue))
    }

    /// The client holding `queue` of `group` at replicated time `now_ms`, if its lease has not ended.
    pub fn holder_at(&self, group: &str, queue: &QueueKey, now_ms: i64) -> Option<&str> {
        self.lease(group, queue).filter(|l| now_ms < l.expires_ms).map(|l| l.client_id.as_str())
    }

    /// Drops every lease that has ended at `now_ms` (oldest first).
    pub(crate) fn expire(&mut self, now_ms: i64) {
        while let Some(first) = self.expiry.first() {
            if first.0 > now_ms {
                break;
            }
            let Some((_, group, queue)) = self.expiry.pop_first() else { break };
            if let Some(g) = self.groups.get_mut(&group) {
                g.remove(&queue);
                if g.is_empty() {
                    self.groups.remove(&group);
                }
            }
        }
    }

    /// Applies a lock at replicated time `now_ms` (the clock after this entry's stamp): grants or renews
    /// each named queue that is free or held by the same client, while fewer than `locks_max` leases are
    /// held (a renewal needs no room); returns the queues the client now holds, in request order, each once.
    pub(crate) fn lock(&mut self, r: &LockRequest, now_ms: i64) -> Vec<QueueKey> {
        self.expire(now_ms);
        let expires_ms = now_ms.saturating_add(r.ttl_ms.max(0));
        let mut locked = Vec::new();
        let mut seen = BTreeSet::new();
        for q in &r.queues {
            if !seen.insert(q) {
                continue;
            }
            let held = self.expiry.len() as u64;
            let table = self.groups.entry(r.group.clone()).or_default();
            match table.get_mut(q) {
                Some(l) if l.client_id == r.client_id => {
                    self.expiry.remove(&(l.expires_ms, r.group.clone(), q.clone()));
                    // A lease never shortens (a later entry may carry a shorter ttl).
                    l.expires_ms = l.expires_ms.max(expires_ms);
                    l.renewed_ms = now_ms;
                    self.expiry.insert((l.expires_ms, r.group.clone(), q.clone()));
                }
                // Expired leases were dropped above: a lease present is live.
                Some(_) => continue,
                None if held >= r.locks_max => continue,
                None => {
                    table.insert(q.clone(), Lease { client_id: r.client_id.clone(), renewed_ms: now_ms, expires_ms });
                    self.expiry.insert((expires_ms, r.group.clone(), q.clone()));
                }
            }
            locked.push(q.clone());
        }
        if self.groups.get(&r.group).is_some_and(BTreeMap::is_empty) {
            self.groups.remove(&r.group);
        }
        locked
    }

    /// Applies an unlock at `now_ms`: ends the leases the client holds among the named queues; returns how
    /// many ended.
    pub(crate) fn unlock(&mut self, r: &UnlockRequest, now_ms: i64) -> usize {
        self.expire(now_ms);
        let Some(table) = self.groups.get_mut(&r.group) else { return 0 };
        let mut ended = 0;
        for q in &r.queues {
            if table.get(q).is_some_and(|l| l.client_id == r.client_id) {
                if let Some(l) = table.remove(q) {
                    self.expiry.remove(&(l.expires_ms, r.group.clone(), q.clone()));
                    ended += 1;
                }
            }
        }
        if table.is_empty() {
            self.groups.remove(&r.group);
        }
        ended
    }

    /// Ends every lease on a queue of `topic` (the topic was deleted).
    pub(crate) fn drop_topic(&mut self, topic: &str) {
        self.expiry.retain(|(_, _, q)| q.topic != topic);
        for qs in self.groups.values_mut() {
            qs.retain(|q, _| q.topic != topic);
        }
        self.groups.retain(|_, qs| !qs.is_empty());
    }

    /// Structural checks (debug builds, after every apply).
    ///
    /// # Panics
    /// When the expiry index and the table disagree (an `apply` bug).
    pub fn check_invariants(&self) {
        let mut n = 0;
        for (g, qs) in &self.groups {
            assert!(!qs.is_empty(), "group {g} kept without leases");
            for (q, l) in qs {
                assert!(self.expiry.contains(&(l.expires_ms, g.clone(), q.clone())), "lease {g}/{q:?} missing from the expiry index");
                n += 1;
            }
        }
        assert_eq!(n, self.expiry.len(), "expiry index holds leases the table does not");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 60_000;

    fn q(id: u32) -> QueueKey {
        QueueKey { topic: "T".into(), broker_name: "broker-a".into(), queue_id: id }
    }

    fn lock(t: &mut QueueLocks, at: i64, group: &str, client: &str, ids: &[u32], max: u64) -> Vec<u32> {
        let r = LockRequest {
            group: group.into(),
            client_id: client.into(),
            queues: ids.iter().map(|i| q(*i)).collect(),
            stamp_ms: at,
            ttl_ms: TTL,
            locks_max: max,
        };
        let got = t.lock(&r, at).into_iter().map(|k| k.queue_id).collect();
        t.check_invariants();
        got
    }

    fn unlock(t: &mut QueueLocks, at: i64, group: &str, client: &str, ids: &[u32]) -> usize {
        let r = UnlockRequest { group: group.into(), client_id: client.into(), queues: ids.iter().map(|i| q(*i)).collect(), stamp_ms: at };
        let n = t.unlock(&r, at);
        t.check_invariants();
        n
    }

    #[test]
    fn one_holder_per_queue_until_unlock_or_expiry_by_stamp() {
        let mut t = QueueLocks::default();
        assert_eq!(lock(&mut t, 1000, "g", "c1", &[0, 1], 100), vec![0, 1]);
        assert_eq!(lock(&mut t, 1000, "g", "c2", &[1, 2], 100), vec![2], "q1 is held by c1");
        assert_eq!(lock(&mut t, 1000, "other", "c2", &[1], 100), vec![1], "groups are independent");
        assert_eq!(unlock(&mut t, 1000, "g", "c2", &[0]), 0, "c2 cannot unlock c1's queue");
        assert!(lock(&mut t, 1000, "g", "c2", &[0], 100).is_empty());
        assert_eq!(unlock(&mut t, 1000, "g", "c1", &[0]), 1);
        assert_eq!(lock(&mut t, 1000, "g", "c2", &[0], 100), vec![0]);
        // c1's lease on q1 (granted at 1000) ends at 61000 by the log's time, not before.
        assert!(lock(&mut t, 1000 + TTL - 1, "g", "c2", &[1], 100).is_empty(), "one ms before the lease ends");
        assert_eq!(t.holder_at("g", &q(1), 1000 + TTL - 1), Some("c1"));
        assert_eq!(lock(&mut t, 1000 + TTL, "g", "c2", &[1], 100), vec![1], "c1's lease ended");
        assert!(lock(&mut t, 1000 + TTL, "g", "c1", &[1], 100).is_empty(), "c2 holds q1 now");
    }

    #[test]
    fn a_renewal_extends_the_lease_from_its_own_stamp() {
        let mut t = QueueLocks::default();
        lock(&mut t, 0, "g", "c1", &[0], 100);
        assert_eq!(lock(&mut t, 20_000, "g", "c1", &[0], 100), vec![0], "renewal");
        assert_eq!(t.lease("g", &q(0)).map(|l| (l.renewed_ms, l.expires_ms)), Some((20_000, 20_000 + TTL)));
        assert!(lock(&mut t, TTL + 1, "g", "c2", &[0], 100).is_empty(), "the renewal holds past the first lease");
        assert_eq!(lock(&mut t, 20_000 + TTL, "g", "c2", &[0], 100), vec![0]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn expired_leases_are_dropped_at_apply_and_empty_groups_go() {
        let mut t = QueueLocks::default();
        for g in 0..10 {
            lock(&mut t, 0, &format!("g{g}"), "gone", &[0, 1, 2], 100);
        }
        assert_eq!(t.len(), 30);
        lock(&mut t, 30_000, "g0", "live", &[7], 100);
        assert_eq!(t.len(), 31);
        unlock(&mut t, TTL + 1, "nobody", "x", &[]);
        assert_eq!(t.len(), 1, "only the live lease remains");
        assert_eq!(t.groups.len(), 1, "groups without leases are dropped");
        assert_eq!(unlock(&mut t, TTL + 1, "g0", "live", &[7]), 1);
        assert!(t.is_empty() && t.groups.is_empty());
    }

    #[test]
    fn at_locks_max_new_leases_are_refused_and_renewals_still_work() {
        let mut t = QueueLocks::default();
        assert_eq!(lock(&mut t, 0, "g", "c1", &[0, 1, 2, 3], 3), vec![0, 1, 2], "exactly locks_max");
        assert_eq!(t.len(), 3);
        assert!(lock(&mut t, 0, "h", "c2", &[0], 3).is_empty(), "the table is full");
        assert_eq!(lock(&mut t, 1, "g", "c1", &[1, 3], 3), vec![1], "renewal at the limit");
        unlock(&mut t, 1, "g", "c1", &[0]);
        assert_eq!(lock(&mut t, 1, "h", "c2", &[0], 3), vec![0], "room again after an unlock");
        assert_eq!(t.len(), 3);
        // Once leases expire there is room again, without any unlock.
        assert_eq!(lock(&mut t, 1 + TTL, "k", "c3", &[5, 6], 3), vec![5, 6]);
    }

    #[test]
    fn a_queue_named_twice_is_granted_once_and_listed_once() {
        let mut t = QueueLocks::default();
        assert_eq!(lock(&mut t, 0, "g", "c1", &[4, 4, 5], 100), vec![4, 5]);
        assert_eq!(t.len(), 2);
    }
}
