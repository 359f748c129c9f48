//! Per-topic message and byte counters, bounded by a named limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// The `topic` label value counting every topic past the table's limit.
pub const OTHER_TOPIC: &str = "_other";

/// Messages and bytes in (stored by sends) and out (returned by pulls) of one topic.
#[derive(Debug, Default)]
pub struct TopicCounters {
    /// Messages stored.
    pub messages_in: AtomicU64,
    /// Body bytes stored.
    pub bytes_in: AtomicU64,
    /// Messages returned to consumers.
    pub messages_out: AtomicU64,
    /// Body bytes returned to consumers.
    pub bytes_out: AtomicU64,
}

impl TopicCounters {
    /// Counts `messages` stored with `bytes` of bodies.
    #[inline]
    pub fn add_in(&self, messages: u64, bytes: u64) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `messages` returned with `bytes` of bodies.
    #[inline]
    pub fn add_out(&self, messages: u64, bytes: u64) {
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `(messages_in, bytes_in, messages_out, bytes_out)`.
    pub fn snapshot(&self) -> [u64; 4] {
        [&self.messages_in, &self.bytes_in, &self.messages_out, &self.bytes_out].map(|c| c.load(Ordering::Relaxed))
    }
}

/// Counters of at most `topics_max` named topics plus [`OTHER_TOPIC`]. A topic takes a slot the first time it
/// is counted (one allocation, under the write lock); afterwards counting is a read-locked hash lookup
/// without allocation and two relaxed atomic adds. Slots are never given back while the node runs, so a
/// series never changes meaning; deleted topics keep theirs.
#[derive(Debug)]
pub struct TopicTable {
    topics_max: usize,
    named: RwLock<HashMap<Box<str>, TopicCounters>>,
    other: TopicCounters,
}

impl TopicTable {
    /// A table of at most `topics_max` named topics.
    pub fn new(topics_max: usize) -> TopicTable {
        TopicTable { topics_max, named: RwLock::new(HashMap::new()), other: TopicCounters::default() }
    }

    /// The limit on named topics.
    pub fn topics_max(&self) -> usize {
        self.topics_max
    }

    /// Calls `f` with the counters of `topic` (or of [`OTHER_TOPIC`] once the table is full).
    #[inline]
    pub fn with<R>(&self, topic: &str, f: impl Fn(&TopicCounters) -> R) -> R {
        {
            let named = self.named.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = named.get(topic) {
                return f(c);
            }
            if named.len() >= self.topics_max {
                return f(&self.other);
            }
        }
        let mut named = self.named.write().unwrap_or_else(|e| e.into_inner());
        if !named.contains_key(topic) && named.len() >= self.topics_max {
            return f(&self.other);
        }
        f(named.entry(Box::from(topic)).or_default())
    }

    /// Every series: named topics sorted by name, then [`OTHER_TOPIC`] when it counted anything.
    pub fn snapshot(&self) -> Vec<(String, [u64; 4])> {
        let mut v: Vec<(String, [u64; 4])> = {
            let named = self.named.read().unwrap_or_else(|e| e.into_inner());
            named.iter().map(|(k, c)| (k.to_string(), c.snapshot())).collect()
        };
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let other = self.other.snapshot();
        if other.iter().any(|x| *x != 0) {
            v.push((OTHER_TOPIC.to_string(), other));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_past_the_limit_are_counted_under_other() {
        let t = TopicTable::new(3);
        for i in 0..3 {
            t.with(&format!("t{i}"), |c| c.add_in(1, 10));
        }
        // At the limit: named topics keep their own series...
        t.with("t0", |c| c.add_in(1, 10));
        // ...and new ones share `_other`.
        t.with("t3", |c| c.add_in(2, 20));
        t.with("t4", |c| c.add_out(5, 50));
        let s = t.snapshot();
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0], ("t0".to_string(), [2, 20, 0, 0]));
        assert_eq!(s[3], (OTHER_TOPIC.to_string(), [2, 20, 5, 50]));
        assert!(!s.iter().any(|(k, _)| k == "t3" || k == "t4"));
    }

    #[test]
    fn an_unused_other_series_is_not_exported() {
        let t = TopicTable::new(2);
        t.with("a", |c| c.add_out(1, 1));
        assert_eq!(t.snapshot(), vec![("a".to_string(), [0, 0, 1, 1])]);
    }
}
