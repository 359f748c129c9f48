//! Who is connected: consumer groups with their clients and subscriptions (from HEART_BEAT), producer
//! groups, and expiry of idle clients. Membership changes of a consumer group are pushed to the group's
//! clients (NOTIFY_CONSUMER_IDS_CHANGED) so they rebalance at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client's connection, as far as this module needs it.
pub trait ClientLink: Send + Sync {
    /// Tells the client that the membership of `group` changed (oneway; best effort).
    fn notify_consumer_ids_changed(&self, group: &str);
    /// True once the connection is gone.
    fn is_closed(&self) -> bool;
}

/// RocketMQ's Java `String.hashCode` of a tag: the consume queue's `tagsCode`.
pub fn tag_hash(tag: &str) -> i64 {
    i64::from(raftmq_remoting::message::java_string_hash(tag))
}

/// A parsed subscription expression (`*`, or tags joined by `||`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The expression as sent.
    pub expression: String,
    /// Tag hashes accepted; `None` means every message.
    pub codes: Option<Vec<i64>>,
    /// Subscription version sent by the client.
    pub version: i64,
}

impl Subscription {
    /// Parses a TAG expression. Empty or `*` matches everything.
    pub fn parse(expression: &str, version: i64) -> Subscription {
        let e = expression.trim();
        let codes = if e.is_empty() || e == "*" {
            None
        } else {
            let mut c: Vec<i64> = e.split("||").map(str::trim).filter(|t| !t.is_empty()).map(tag_hash).collect();
            c.sort_unstable();
            c.dedup();
            Some(c)
        };
        Subscription { expression: e.to_string(), codes, version }
    }

    /// True when a message with tag hash `code` matches.
    pub fn matches(&self, code: i64) -> bool {
        self.codes.as_ref().is_none_or(|c| c.binary_search(&code).is_ok())
    }
}

/// How a consumer group consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageModel {
    /// Each message to one consumer of the group.
    Clustering,
    /// Each message to every consumer.
    Broadcasting,
}

struct ClientEntry {
    link: Arc<dyn ClientLink>,
    last_seen: Instant,
}

struct GroupEntry {
    model: MessageModel,
    clients: BTreeMap<String, ClientEntry>,
    subscriptions: HashMap<String, Subscription>,
}

/// What a heartbeat says about one consumer group.
#[derive(Debug, Clone)]
pub struct ConsumerHeartbeat {
    /// Group name.
    pub group: String,
    /// Clustering or broadcasting.
    pub model: MessageModel,
    /// Topic → subscription.
    pub subscriptions: Vec<(String, Subscription)>,
}

/// Consumer and producer registry.
#[derive(Default)]
pub struct ClientManager {
    consumers: Mutex<HashMap<String, GroupEntry>>,
    producers: Mutex<HashMap<String, BTreeMap<String, Instant>>>,
}

impl ClientManager {
    fn lock_consumers(&self) -> std::sync::MutexGuard<'_, HashMap<String, GroupEntry>> {
        self.consumers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a consumer heartbeat; notifies the group's clients when a client joined.
    pub fn consumer_heartbeat(&self, client_id: &str, link: Arc<dyn ClientLink>, hb: ConsumerHeartbeat) {
        let mut joined = None;
        {
            let mut groups = self.lock_consumers();
            let g = groups.entry(hb.group.clone()).or_insert_with(|| GroupEntry {
                model: hb.model,
                clients: BTreeMap::new(),
                subscriptions: HashMap::new(),
            });
            g.model = hb.model;
            let is_new = !g.clients.contains_key(client_id);
            g.clients.insert(client_id.to_string(), ClientEntry { link, last_seen: Instant::now() });
            for (topic, sub) in hb.subscriptions {
                g.subscriptions.insert(topic, sub);
            }
            if is_new {
                joined = Some(g.clients.values().map(|c| Arc::clone(&c.link)).collect::<Vec<_>>());
            }
        }
        if let Some(links) = joined {
            for l in links {
                l.notify_consumer_ids_changed(&hb.group);
            }
        }
    }

    /// Records a producer heartbeat.
    pub fn producer_heartbeat(&self, client_id: &str, group: &str) {
        self.producers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group.to_string())
            .or_default()
            .insert(client_id.to_string(), Instant::now());
    }

    /// Removes a client from a consumer group (UNREGISTER_CLIENT or connection close) and notifies the rest.
    pub fn unregister_consumer(&self, group: &str, client_id: &str) {
        let remaining = {
            let mut groups = self.lock_consumers();
            let Some(g) = groups.get_mut(group) else { return };
            if g.clients.remove(client_id).is_none() {
                return;
            }
            let links: Vec<Arc<dyn ClientLink>> = g.clients.values().map(|c| Arc::clone(&c.link)).collect();
            if g.clients.is_empty() {
                groups.remove(group);
            }
            links
        };
        for l in remaining {
            l.notify_consumer_ids_changed(group);
        }
    }

    /// Removes a producer.
    pub fn unregister_producer(&self, group: &str, client_id: &str) {
        let mut p = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = p.get_mut(group) {
            g.remove(client_id);
            if g.is_empty() {
                p.remove(group);
            }
        }
    }

    /// Client ids of a consumer group, sorted.
    pub fn consumer_ids(&self, group: &str) -> Vec<String> {
        self.lock_consumers().get(group).map(|g| g.clients.keys().cloned().collect()).unwrap_or_default()
    }

    /// The subscription a group registered for a topic.
    pub fn subscription(&self, group: &str, topic: &str) -> Option<Subscription> {
        self.lock_consumers().get(group).and_then(|g| g.subscriptions.get(topic).cloned())
    }

    /// Consumer groups currently known, with their model and client count.
    pub fn groups(&self) -> Vec<(String, MessageModel, usize)> {
        let mut v: Vec<_> = self.lock_consumers().iter().map(|(n, g)| (n.clone(), g.model, g.clients.len())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Drops clients silent for longer than `timeout` or whose connection closed; notifies their groups.
    pub fn expire(&self, timeout: Duration) {
        let now = Instant::now();
        let mut changed: Vec<(String, Vec<Arc<dyn ClientLink>>)> = Vec::new();
        {
            let mut groups = self.lock_consumers();
            for (name, g) in groups.iter_mut() {
                let before = g.clients.len();
                g.clients.retain(|_, c| now.duration_since(c.last_seen) < timeout && !c.link.is_closed());
                if g.clients.len() != before {
                    changed.push((name.clone(), g.clients.values().map(|c| Arc::clone(&c.link)).collect()));
                }
            }
            groups.retain(|_, g| !g.clients.is_empty());
        }
        for (group, links) in changed {
            for l in links {
                l.notify_consumer_ids_changed(&group);
            }
        }
        let mut p = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        for g in p.values_mut() {
            g.retain(|_, seen| now.duration_since(*seen) < timeout);
        }
        p.retain(|_, g| !g.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Link {
        notified: AtomicUsize,
        closed: AtomicBool,
    }
    impl ClientLink for Link {
        fn notify_consumer_ids_changed(&self, _group: &str) {
            self.notified.fetch_add(1, Ordering::SeqCst);
        }
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::SeqCst)
        }
    }

    fn hb(group: &str) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group: group.into(),
            model: MessageModel::Clustering,
            subscriptions: vec![("T".into(), Subscription::parse("a || b", 1))],
        }
    }

    #[test]
    fn tag_hash_is_java_string_hash_code() {
        assert_eq!(tag_hash(""), 0);
        assert_eq!(tag_hash("TagA"), 2598919);
        assert_eq!(tag_hash("hello world"), 1794106052);
        assert_eq!(tag_hash("€"), 8364);
    }

    #[test]
    fn subscriptions_filter_by_tag_hash() {
        let s = Subscription::parse("TagA || TagB", 0);
        assert!(s.matches(tag_hash("TagA")) && s.matches(tag_hash("TagB")) && !s.matches(tag_hash("TagC")));
        assert!(Subscription::parse("*", 0).matches(12345));
        assert!(Subscription::parse("", 0).matches(12345));
    }

    #[test]
    fn joins_and_leaves_notify_the_group() {
        let m = ClientManager::default();
        let (a, b) = (Arc::new(Link::default()), Arc::new(Link::default()));
        m.consumer_heartbeat("a", a.clone(), hb("g"));
        m.consumer_heartbeat("a", a.clone(), hb("g"));
        assert_eq!(a.notified.load(Ordering::SeqCst), 1, "a repeated heartbeat is not a change");
        m.consumer_heartbeat("b", b.clone(), hb("g"));
        assert_eq!(m.consumer_ids("g"), vec!["a", "b"]);
        assert_eq!(a.notified.load(Ordering::SeqCst), 2);
        assert!(m.subscription("g", "T").unwrap().matches(tag_hash("b")));
        m.unregister_consumer("g", "a");
        assert_eq!(b.notified.load(Ordering::SeqCst), 2);
        b.closed.store(true, Ordering::SeqCst);
        m.expire(Duration::from_secs(120));
        assert!(m.consumer_ids("g").is_empty());
    }
}
