//! Queue locks for orderly consumers (LOCK_BATCH_MQ 41 / UNLOCK_BATCH_MQ 42): at most one client of a
//! group holds a queue, until it unlocks or stops renewing for `lock_ttl` (RocketMQ's
//! `rocketmq.broker.rebalance.lockMaxLiveTime`, 60 s). Clients renew every 20 s.

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

/// Lock table per consumer group.
pub struct QueueLocks {
    ttl: Duration,
    groups: Mutex<HashMap<String, HashMap<QueueKey, Holder>>>,
}

impl QueueLocks {
    /// A table whose locks expire after `ttl` without renewal.
    pub fn new(ttl: Duration) -> Self {
        QueueLocks { ttl, groups: Mutex::new(HashMap::new()) }
    }

    /// Locks (or renews) every queue of `queues` that is free, expired, or already held by `client_id`;
    /// returns the queues the client now holds.
    pub fn lock(&self, group: &str, client_id: &str, queues: &[QueueKey]) -> Vec<QueueKey> {
        let now = Instant::now();
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let table = groups.entry(group.to_string()).or_default();
        let mut locked = Vec::new();
        for q in queues {
            let free = match table.get(q) {
                None => true,
                Some(h) => h.client_id == client_id || now.duration_since(h.renewed) > self.ttl,
            };
            if free {
                table.insert(q.clone(), Holder { client_id: client_id.to_string(), renewed: now });
                locked.push(q.clone());
            }
        }
        locked
    }

    /// Releases the queues `client_id` holds among `queues`.
    pub fn unlock(&self, group: &str, client_id: &str, queues: &[QueueKey]) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(table) = groups.get_mut(group) {
            for q in queues {
                if table.get(q).is_some_and(|h| h.client_id == client_id) {
                    table.remove(q);
                }
            }
        }
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
        let locks = QueueLocks::new(Duration::from_millis(50));
        assert_eq!(locks.lock("g", "c1", &[q(0), q(1)]), vec![q(0), q(1)]);
        assert_eq!(locks.lock("g", "c2", &[q(1), q(2)]), vec![q(2)], "q1 is held by c1");
        assert_eq!(locks.lock("other", "c2", &[q(1)]), vec![q(1)], "groups are independent");
        locks.unlock("g", "c2", &[q(0)]);
        assert!(locks.lock("g", "c2", &[q(0)]).is_empty(), "c2 cannot unlock c1's queue");
        locks.unlock("g", "c1", &[q(0)]);
        assert_eq!(locks.lock("g", "c2", &[q(0)]), vec![q(0)]);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(locks.lock("g", "c2", &[q(1)]), vec![q(1)], "c1's lock expired");
    }
}
