//! Queue locks for orderly consumers (LOCK_BATCH_MQ 41 / UNLOCK_BATCH_MQ 42): at most one client of a
//! group holds a queue, until it unlocks or stops renewing for `lock_ttl` (RocketMQ's
//! `rocketmq.broker.rebalance.lockMaxLiveTime`, 60 s). Clients renew every 20 s.
//!
//! Locks are leader-local and not replicated (like RocketMQ's `RebalanceLockManager`): a new leader starts
//! with an empty table and clients re-lock within one renewal period. Time therefore comes from this
//! node's monotonic clock. The table is bounded: expired holders are evicted by [`QueueLocks::sweep`]
//! (the broker's housekeeping tick) and whenever their group locks, and at most `locks_max` queues are held
//! at once; a lock beyond that is simply not granted (the client sees the queue as not locked and retries).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A message queue as clients name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    /// Topic.
    pub topic: String,
    /// Broker group name.
    pub broker_name: String,
    /// Queue id.
    pub queue_id: u32,
}

struct Holder {
    client_id: String,
    renewed: Instant,
}

#[derive(Default)]
struct Table {
    groups: HashMap<String, HashMap<QueueKey, Holder>>,
    /// Locks held, over all groups.
    held: usize,
}

impl Table {
    /// Drops the expired holders of `group` (and the group once empty).
    fn evict_group(&mut self, group: &str, now: Instant, ttl: Duration) {
        if let Some(t) = self.groups.get_mut(group) {
            let before = t.len();
            t.retain(|_, h| now.duration_since(h.renewed) <= ttl);
            self.held -= before - t.len();
            if t.is_empty() {
                self.groups.remove(group);
            }
        }
    }
}

/// Lock table per consumer group.
pub struct QueueLocks {
    ttl: Duration,
    locks_max: usize,
    table: Mutex<Table>,
}

impl QueueLocks {
    /// A table whose locks expire after `ttl` without renewal and that holds at most `locks_max` locks.
    pub fn new(ttl: Duration, locks_max: usize) -> Self {
        QueueLocks { ttl, locks_max, table: Mutex::new(Table::default()) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks (or renews) every queue of `queues` that is free, expired, or already held by `client_id`,
    /// while fewer than `locks_max` locks are held; returns the queues the client now holds.
    pub fn lock(&self, group: &str, client_id: &str, queues: &[QueueKey]) -> Vec<QueueKey> {
        self.lock_at(Instant::now(), group, client_id, queues)
    }

    fn lock_at(&self, now: Instant, group: &str, client_id: &str, queues: &[QueueKey]) -> Vec<QueueKey> {
        let mut guard = self.table();
        let t: &mut Table = &mut guard;
        t.evict_group(group, now, self.ttl);
        let mut locked = Vec::new();
        let table = t.groups.entry(group.to_string()).or_default();
        for q in queues {
            match table.get_mut(q) {
                Some(h) if h.client_id == client_id => h.renewed = now,
                // Expired holders were evicted above: a present holder is a live one.
                Some(_) => continue,
                None if t.held >= self.locks_max => continue,
                None => {
                    table.insert(q.clone(), Holder { client_id: client_id.to_string(), renewed: now });
                    t.held += 1;
                }
            }
            locked.push(q.clone());
        }
        if table.is_empty() {
            t.groups.remove(group);
        }
        locked
    }

    /// Releases the queues `client_id` holds among `queues`.
    pub fn unlock(&self, group: &str, client_id: &str, queues: &[QueueKey]) {
        let mut guard = self.table();
        let t: &mut Table = &mut guard;
        let Some(table) = t.groups.get_mut(group) else { return };
        let before = table.len();
        for q in queues {
            if table.get(q).is_some_and(|h| h.client_id == client_id) {
                table.remove(q);
            }
        }
        let (removed, empty) = (before - table.len(), table.is_empty());
        t.held -= removed;
        if empty {
            t.groups.remove(group);
        }
    }

    /// Evicts every expired holder.
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    fn sweep_at(&self, now: Instant) {
        let mut t = self.table();
        let groups: Vec<String> = t.groups.keys().cloned().collect();
        for g in groups {
            t.evict_group(&g, now, self.ttl);
        }
    }

    /// Locks currently held (expired ones count until evicted).
    pub fn len(&self) -> usize {
        self.table().held
    }

    /// True when no lock is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: u32) -> QueueKey {
        QueueKey { topic: "T".into(), broker_name: "broker-a".into(), queue_id: id }
    }

    #[test]
    fn one_holder_per_queue_until_unlock_or_expiry() {
        let ttl = Duration::from_secs(60);
        let locks = QueueLocks::new(ttl, 100);
        let t0 = Instant::now();
        assert_eq!(locks.lock_at(t0, "g", "c1", &[q(0), q(1)]), vec![q(0), q(1)]);
        assert_eq!(locks.lock_at(t0, "g", "c2", &[q(1), q(2)]), vec![q(2)], "q1 is held by c1");
        assert_eq!(locks.lock_at(t0, "other", "c2", &[q(1)]), vec![q(1)], "groups are independent");
        locks.unlock("g", "c2", &[q(0)]);
        assert!(locks.lock_at(t0, "g", "c2", &[q(0)]).is_empty(), "c2 cannot unlock c1's queue");
        locks.unlock("g", "c1", &[q(0)]);
        assert_eq!(locks.lock_at(t0, "g", "c2", &[q(0)]), vec![q(0)]);
        let later = t0 + ttl + Duration::from_secs(1);
        assert_eq!(locks.lock_at(later, "g", "c2", &[q(1)]), vec![q(1)], "c1's lock expired");
        assert_eq!(locks.lock_at(later, "g", "c1", &[q(1)]), Vec::<QueueKey>::new(), "c2 holds q1 now");
    }

    #[test]
    fn expired_holders_are_evicted() {
        let ttl = Duration::from_secs(60);
        let locks = QueueLocks::new(ttl, 100);
        let t0 = Instant::now();
        for g in 0..10 {
            locks.lock_at(t0, &format!("g{g}"), "gone", &[q(0), q(1), q(2)]);
        }
        assert_eq!(locks.len(), 30);
        locks.lock_at(t0 + Duration::from_secs(30), "g0", "live", &[q(7)]);
        locks.sweep_at(t0 + ttl + Duration::from_secs(1));
        assert_eq!(locks.len(), 1, "only the live holder's lock remains");
        assert_eq!(locks.table().groups.len(), 1, "groups without holders are dropped");
        locks.unlock("g0", "live", &[q(7)]);
        assert!(locks.is_empty());
        assert!(locks.table().groups.is_empty());
    }

    #[test]
    fn at_locks_max_new_locks_are_refused_and_renewals_still_work() {
        let locks = QueueLocks::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        assert_eq!(locks.lock_at(t0, "g", "c1", &[q(0), q(1), q(2), q(3)]), vec![q(0), q(1), q(2)]);
        assert_eq!(locks.len(), 3);
        assert!(locks.lock_at(t0, "h", "c2", &[q(0)]).is_empty(), "the table is full");
        assert_eq!(locks.lock_at(t0, "g", "c1", &[q(1), q(3)]), vec![q(1)], "renewal at the limit");
        locks.unlock("g", "c1", &[q(0)]);
        assert_eq!(locks.lock_at(t0, "h", "c2", &[q(0)]), vec![q(0)], "room again after an unlock");
        assert_eq!(locks.len(), 3);
    }
}
