//! Who is connected: consumer groups with their clients and subscriptions (from HEART_BEAT), producer
//! groups with their connections (transaction check-backs go to one of them), and expiry of idle clients. Membership changes of a consumer group are pushed to the group's
//! clients (NOTIFY_CONSUMER_IDS_CHANGED) so they rebalance at once.
//!
//! Every table is bounded ([`ClientLimits`]): a heartbeat that would add a group, a client or subscriptions
//! past a limit is refused as a whole (nothing of it is recorded) with a remark naming the limit, while
//! heartbeats of clients already known are always accepted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client's connection, as far as this module needs it.
pub trait ClientLink: Send + Sync {
    /// Tells the client that the membership of `group` changed (oneway; best effort).
    fn notify_consumer_ids_changed(&self, group: &str);
    /// Queues a server-initiated oneway request (e.g. CHECK_TRANSACTION_STATE); false when it could not be
    /// queued (connection gone or its queue full).
    fn send_oneway(&self, cmd: raftmq_remoting::frame::RemotingCommand) -> bool;
    /// True once the connection is gone.
    fn is_closed(&self) -> bool;
    /// Where the client connects from and what it said it is, for the connection lists (203, 204).
    fn info(&self) -> ClientInfo {
        ClientInfo::default()
    }
}

/// A client connection as GET_CONSUMER_CONNECTION_LIST and GET_PRODUCER_CONNECTION_LIST report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// `ip:port` the client connects from.
    pub addr: String,
    /// Its `LanguageCode` name (from its heartbeat).
    pub language: String,
    /// Its `MQVersion` ordinal (from its heartbeat).
    pub version: i32,
}

/// A consumer group's live clients and what they registered, for GET_CONSUMER_CONNECTION_LIST.
#[derive(Debug, Clone)]
pub struct ConsumerGroupView {
    /// Clustering or broadcasting.
    pub model: MessageModel,
    /// Push or pull, as the last heartbeat said.
    pub consume_type: raftmq_remoting::body::ConsumeType,
    /// Where a new consumer starts, as the last heartbeat said.
    pub consume_from_where: raftmq_remoting::body::ConsumeFromWhere,
    /// Client id and connection of each live client, by client id.
    pub clients: Vec<(String, ClientInfo)>,
    /// Topic → subscription, by topic.
    pub subscriptions: Vec<(String, Subscription)>,
}

/// RocketMQ's Java `String.hashCode` of a tag: the consume queue's `tagsCode`.
pub fn tag_hash(tag: &str) -> i64 {
    i64::from(raftmq_remoting::message::java_string_hash(tag))
}

/// A parsed subscription expression: a TAG expression (`*`, or tags joined by `||`) or a SQL92 selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The expression as sent.
    pub expression: String,
    /// Tag hashes accepted; `None` means every message (also for SQL92, whose filter is [`Subscription::sql`]).
    pub codes: Option<Vec<i64>>,
    /// Subscription version sent by the client.
    pub version: i64,
    /// For a non-TAG expression type: its compiled SQL92 selector, or why it was refused. `Ok(None)` for a
    /// SQL92 subscription to everything (`*` or empty, as the Rust client sends for `by_sql("*")`).
    pub sql: Option<SqlFilter>,
}

/// A SQL92 subscription: the compiled selector (`None`: every message) or why it could not be compiled.
pub type SqlFilter = Result<Option<Arc<raftmq_filter::Selector>>, SqlRefusal>;

/// Why a non-TAG subscription cannot be used; answered with SUBSCRIPTION_PARSE_FAILED (23).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlRefusal(pub String);

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
        Subscription { expression: e.to_string(), codes, version, sql: None }
    }

    /// Parses an expression of `expression_type` (none, empty or `TAG`: a tag expression; `SQL92`: a
    /// selector). A SQL92 expression that does not compile, or another type, is kept with its refusal.
    pub fn parse_typed(expression: &str, expression_type: Option<&str>, version: i64) -> Subscription {
        if raftmq_remoting::body::is_tag_type(expression_type) {
            return Subscription::parse(expression, version);
        }
        let e = expression.trim();
        let sql = match expression_type {
            Some(raftmq_filter::EXPRESSION_TYPE_SQL92) if e.is_empty() || e == "*" => Ok(None),
            Some(raftmq_filter::EXPRESSION_TYPE_SQL92) => raftmq_filter::Selector::parse(expression)
                .map(|s| Some(Arc::new(s)))
                .map_err(|err| SqlRefusal(format!("SQL92 expression {} is invalid {err}", quoted_prefix(expression)))),
            other => Err(SqlRefusal(format!("unknown expression type {:?} (TAG or SQL92)", other.unwrap_or_default()))),
        };
        Subscription { expression: e.to_string(), codes: None, version, sql: Some(sql) }
    }

    /// True for a non-TAG (SQL92) subscription.
    pub fn is_sql(&self) -> bool {
        self.sql.is_some()
    }

    /// True when a message with tag hash `code` matches (SQL92 subscriptions pass every hash: their
    /// filter needs the message's properties).
    pub fn matches(&self, code: i64) -> bool {
        self.codes.as_ref().is_none_or(|c| c.binary_search(&code).is_ok())
    }
}

/// Bytes of an expression quoted in a refusal's remark (the rest is elided): remarks stay small whatever a
/// client sends.
pub const REMARK_EXPRESSION_BYTES_MAX: usize = 256;

/// `expression` quoted, cut to at most [`REMARK_EXPRESSION_BYTES_MAX`] bytes (at a character boundary).
fn quoted_prefix(expression: &str) -> String {
    if expression.len() <= REMARK_EXPRESSION_BYTES_MAX {
        return format!("{expression:?}");
    }
    let mut end = REMARK_EXPRESSION_BYTES_MAX;
    while !expression.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &expression[..end], expression.len())
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
    consume_type: raftmq_remoting::body::ConsumeType,
    consume_from_where: raftmq_remoting::body::ConsumeFromWhere,
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
    /// Push or pull (reported by GET_CONSUMER_CONNECTION_LIST).
    pub consume_type: raftmq_remoting::body::ConsumeType,
    /// Where a new consumer starts (reported by GET_CONSUMER_CONNECTION_LIST).
    pub consume_from_where: raftmq_remoting::body::ConsumeFromWhere,
}

/// Bounds of the client registry (broker config keys in parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Consumer groups with live clients (`consumerGroupsMax`).
    pub consumer_groups_max: usize,
    /// Producer groups with live clients (`producerGroupsMax`).
    pub producer_groups_max: usize,
    /// Clients per consumer or producer group (`clientsPerGroupMax`).
    pub clients_per_group_max: usize,
    /// Subscribed topics per consumer group (`subscriptionsPerGroupMax`).
    pub subscriptions_per_group_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            consumer_groups_max: 10_000,
            producer_groups_max: 10_000,
            clients_per_group_max: 1_024,
            subscriptions_per_group_max: 1_024,
        }
    }
}

/// Consumer and producer registry.
#[derive(Default)]
pub struct ClientManager {
    limits: ClientLimits,
    consumers: Mutex<HashMap<String, GroupEntry>>,
    producers: Mutex<HashMap<String, BTreeMap<String, ClientEntry>>>,
    /// Round-robin position for [`ClientManager::producer_link`].
    next_producer: std::sync::atomic::AtomicUsize,
}

impl ClientManager {
    /// An empty registry bounded by `limits`.
    pub fn new(limits: ClientLimits) -> Self {
        ClientManager { limits, ..ClientManager::default() }
    }

    /// Whether `group` has live consumers (the broker's notion of an existing subscription group).
    pub fn has_consumer_group(&self, group: &str) -> bool {
        self.lock_consumers().contains_key(group)
    }

    fn lock_consumers(&self) -> std::sync::MutexGuard<'_, HashMap<String, GroupEntry>> {
        self.consumers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a consumer heartbeat; notifies the group's clients when a client joined. The heartbeat's
    /// subscriptions replace the group's (RocketMQ's `ConsumerGroupInfo.updateSubscription`).
    ///
    /// # Errors
    /// The remark for the client when the heartbeat would exceed a limit; nothing was recorded.
    pub fn consumer_heartbeat(&self, client_id: &str, link: Arc<dyn ClientLink>, hb: ConsumerHeartbeat) -> Result<(), String> {
        let l = self.limits;
        let mut joined = None;
        {
            let mut groups = self.lock_consumers();
            if !groups.contains_key(&hb.group) && groups.len() >= l.consumer_groups_max {
                return Err(format!("the broker already tracks {} consumer groups (consumerGroupsMax)", groups.len()));
            }
            let subscriptions: HashMap<String, Subscription> = hb.subscriptions.into_iter().collect();
            if subscriptions.len() > l.subscriptions_per_group_max {
                return Err(format!(
                    "the heartbeat subscribes group {} to {} topics; at most {} (subscriptionsPerGroupMax)",
                    hb.group,
                    subscriptions.len(),
                    l.subscriptions_per_group_max
                ));
            }
            let clients = groups.get(&hb.group).map_or(0, |g| g.clients.len());
            let is_new = groups.get(&hb.group).is_none_or(|g| !g.clients.contains_key(client_id));
            if is_new && clients >= l.clients_per_group_max {
                return Err(format!("consumer group {} already has {clients} clients (clientsPerGroupMax)", hb.group));
            }
            let g = groups.entry(hb.group.clone()).or_insert_with(|| GroupEntry {
                model: hb.model,
                consume_type: hb.consume_type.clone(),
                consume_from_where: hb.consume_from_where.clone(),
                clients: BTreeMap::new(),
                subscriptions: HashMap::new(),
            });
            g.model = hb.model;
            g.consume_type = hb.consume_type;
            g.consume_from_where = hb.consume_from_where;
            g.clients.insert(client_id.to_string(), ClientEntry { link, last_seen: Instant::now() });
            g.subscriptions = subscriptions;
            if is_new {
                joined = Some(g.clients.values().map(|c| Arc::clone(&c.link)).collect::<Vec<_>>());
            }
        }
        if let Some(links) = joined {
            for l in links {
                l.notify_consumer_ids_changed(&hb.group);
            }
        }
        Ok(())
    }

    /// Records a producer heartbeat.
    ///
    /// # Errors
    /// The remark for the client when the heartbeat would exceed a limit; nothing was recorded.
    pub fn producer_heartbeat(&self, client_id: &str, group: &str, link: Arc<dyn ClientLink>) -> Result<(), String> {
        let l = self.limits;
        let mut p = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        if !p.contains_key(group) && p.len() >= l.producer_groups_max {
            return Err(format!("the broker already tracks {} producer groups (producerGroupsMax)", p.len()));
        }
        let clients = p.entry(group.to_string()).or_default();
        if !clients.contains_key(client_id) && clients.len() >= l.clients_per_group_max {
            return Err(format!("producer group {group} already has {} clients (clientsPerGroupMax)", clients.len()));
        }
        clients.insert(client_id.to_string(), ClientEntry { link, last_seen: Instant::now() });
        Ok(())
    }

    /// A live connection of producer group `group`, round-robin over its clients (RocketMQ's
    /// `ProducerManager.getAvailableChannel`), for a transaction check-back.
    pub fn producer_link(&self, group: &str) -> Option<Arc<dyn ClientLink>> {
        let p = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<&ClientEntry> = p.get(group)?.values().filter(|c| !c.link.is_closed()).collect();
        if live.is_empty() {
            return None;
        }
        let i = self.next_producer.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % live.len();
        Some(Arc::clone(&live[i].link))
    }

    /// The live clients of consumer group `group` and what they registered; `None` when none is live.
    pub fn consumer_group_view(&self, group: &str) -> Option<ConsumerGroupView> {
        let groups = self.lock_consumers();
        let g = groups.get(group)?;
        let clients: Vec<(String, ClientInfo)> =
            g.clients.iter().filter(|(_, c)| !c.link.is_closed()).map(|(id, c)| (id.clone(), c.link.info())).collect();
        if clients.is_empty() {
            return None;
        }
        let mut subscriptions: Vec<(String, Subscription)> = g.subscriptions.iter().map(|(t, s)| (t.clone(), s.clone())).collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        Some(ConsumerGroupView {
            model: g.model,
            consume_type: g.consume_type.clone(),
            consume_from_where: g.consume_from_where.clone(),
            clients,
            subscriptions,
        })
    }

    /// The live clients of producer group `group`, by client id (empty when none is live).
    pub fn producer_group_view(&self, group: &str) -> Vec<(String, ClientInfo)> {
        let p = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        p.get(group)
            .map(|g| g.iter().filter(|(_, c)| !c.link.is_closed()).map(|(id, c)| (id.clone(), c.link.info())).collect())
            .unwrap_or_default()
    }

    /// Producer groups currently known.
    pub fn producer_group_count(&self) -> usize {
        self.producers.lock().unwrap_or_else(|p| p.into_inner()).len()
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
            g.retain(|_, c| now.duration_since(c.last_seen) < timeout && !c.link.is_closed());
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
        fn send_oneway(&self, _cmd: raftmq_remoting::frame::RemotingCommand) -> bool {
            self.notified.fetch_add(100, Ordering::SeqCst);
            true
        }
    }

    #[test]
    fn a_check_back_goes_round_robin_to_live_producers_of_the_group() {
        let m = ClientManager::default();
        let (a, b) = (Arc::new(Link::default()), Arc::new(Link::default()));
        m.producer_heartbeat("a", "pg", a.clone()).unwrap();
        m.producer_heartbeat("b", "pg", b.clone()).unwrap();
        assert!(m.producer_link("other").is_none());
        for _ in 0..4 {
            m.producer_link("pg")
                .unwrap()
                .send_oneway(raftmq_remoting::frame::RemotingCommand::oneway(raftmq_remoting::RequestCode::CHECK_TRANSACTION_STATE, 0));
        }
        assert_eq!((a.notified.load(Ordering::SeqCst), b.notified.load(Ordering::SeqCst)), (200, 200));
        b.closed.store(true, Ordering::SeqCst);
        for _ in 0..2 {
            m.producer_link("pg")
                .unwrap()
                .send_oneway(raftmq_remoting::frame::RemotingCommand::oneway(raftmq_remoting::RequestCode::CHECK_TRANSACTION_STATE, 0));
        }
        assert_eq!(a.notified.load(Ordering::SeqCst), 400, "a closed connection is never chosen");
        a.closed.store(true, Ordering::SeqCst);
        assert!(m.producer_link("pg").is_none());
    }

    fn hb(group: &str) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group: group.into(),
            model: MessageModel::Clustering,
            subscriptions: vec![("T".into(), Subscription::parse("a || b", 1))],
            consume_type: Default::default(),
            consume_from_where: Default::default(),
        }
    }

    struct Described(ClientInfo);
    impl ClientLink for Described {
        fn notify_consumer_ids_changed(&self, _group: &str) {}
        fn is_closed(&self) -> bool {
            self.0.version < 0
        }
        fn send_oneway(&self, _cmd: raftmq_remoting::frame::RemotingCommand) -> bool {
            true
        }
        fn info(&self) -> ClientInfo {
            self.0.clone()
        }
    }

    #[test]
    fn connection_views_list_live_clients_with_what_they_registered() {
        use raftmq_remoting::body::{ConsumeFromWhere, ConsumeType};
        let m = ClientManager::default();
        let info = |addr: &str, version: i32| ClientInfo { addr: addr.into(), language: "JAVA".into(), version };
        assert!(m.consumer_group_view("cg").is_none(), "no such group");
        let mut h = hb("cg");
        h.consume_type = ConsumeType::ConsumeActively;
        h.consume_from_where = ConsumeFromWhere::ConsumeFromFirstOffset;
        h.subscriptions.push(("A".into(), Subscription::parse("*", 2)));
        m.consumer_heartbeat("c2", Arc::new(Described(info("10.0.0.2:2", 453))), h.clone()).unwrap();
        m.consumer_heartbeat("c1", Arc::new(Described(info("10.0.0.1:1", 453))), h).unwrap();
        m.consumer_heartbeat("gone", Arc::new(Described(info("10.0.0.3:3", -1))), hb("cg")).unwrap();
        let v = m.consumer_group_view("cg").expect("live clients");
        let ids: Vec<&str> = v.clients.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2"], "sorted, closed connections left out");
        assert_eq!(v.clients[0].1, info("10.0.0.1:1", 453));
        assert_eq!(
            (v.consume_type, v.consume_from_where),
            (ConsumeType::ConsumePassively, ConsumeFromWhere::ConsumeFromLastOffset),
            "the last heartbeat's settings"
        );
        assert_eq!(v.subscriptions.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["T"], "the last heartbeat's subscriptions");

        assert!(m.producer_group_view("pg").is_empty());
        m.producer_heartbeat("p1", "pg", Arc::new(Described(info("10.0.0.9:9", 400)))).unwrap();
        m.producer_heartbeat("p0", "pg", Arc::new(Described(info("10.0.0.9:8", -1)))).unwrap();
        assert_eq!(m.producer_group_view("pg"), vec![("p1".to_string(), info("10.0.0.9:9", 400))]);
    }

    #[test]
    fn tag_hash_is_java_string_hash_code() {
        assert_eq!(tag_hash(""), 0);
        assert_eq!(tag_hash("TagA"), 2598919);
        assert_eq!(tag_hash("hello world"), 1794106052);
        assert_eq!(tag_hash("€"), 8364);
    }

    #[test]
    fn sql92_refusals_quote_at_most_a_prefix_of_the_expression() {
        let long = format!("a = '{}", "é".repeat(10_000));
        let Some(Err(why)) = Subscription::parse_typed(&long, Some("SQL92"), 1).sql else { panic!("refused") };
        assert!(why.0.len() < REMARK_EXPRESSION_BYTES_MAX + 200, "{} bytes", why.0.len());
        assert!(why.0.contains("(20005 bytes)") && why.0.contains("at byte 4096"), "{}", why.0);
        let Some(Err(why)) = Subscription::parse_typed("a >", Some("SQL92"), 1).sql else { panic!("refused") };
        assert_eq!(
            why.0,
            "SQL92 expression \"a >\" is invalid at byte 3: unexpected end of expression, expected a literal, a property or '('"
        );
        assert_eq!(
            Subscription::parse_typed("a > 1", Some("SQL92"), 7).sql.map(|r| r.map(|s| s.map(|s| s.source().to_string()))),
            Some(Ok(Some("a > 1".into())))
        );
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
        m.consumer_heartbeat("a", a.clone(), hb("g")).unwrap();
        m.consumer_heartbeat("a", a.clone(), hb("g")).unwrap();
        assert_eq!(a.notified.load(Ordering::SeqCst), 1, "a repeated heartbeat is not a change");
        m.consumer_heartbeat("b", b.clone(), hb("g")).unwrap();
        assert_eq!(m.consumer_ids("g"), vec!["a", "b"]);
        assert_eq!(a.notified.load(Ordering::SeqCst), 2);
        assert!(m.subscription("g", "T").unwrap().matches(tag_hash("b")));
        m.unregister_consumer("g", "a");
        assert_eq!(b.notified.load(Ordering::SeqCst), 2);
        b.closed.store(true, Ordering::SeqCst);
        m.expire(Duration::from_secs(120));
        assert!(m.consumer_ids("g").is_empty());
    }

    #[test]
    fn tables_stop_at_their_limits_and_known_clients_still_get_in() {
        let limits =
            ClientLimits { consumer_groups_max: 2, producer_groups_max: 2, clients_per_group_max: 2, subscriptions_per_group_max: 3 };
        let m = ClientManager::new(limits);
        let link = || -> Arc<dyn ClientLink> { Arc::new(Link::default()) };
        m.consumer_heartbeat("a", link(), hb("g1")).unwrap();
        m.consumer_heartbeat("a", link(), hb("g2")).unwrap();
        let e = m.consumer_heartbeat("a", link(), hb("g3")).unwrap_err();
        assert!(e.contains("2 consumer groups (consumerGroupsMax)"), "{e}");
        assert!(!m.has_consumer_group("g3"));
        m.consumer_heartbeat("b", link(), hb("g1")).unwrap();
        let e = m.consumer_heartbeat("c", link(), hb("g1")).unwrap_err();
        assert!(e.contains("already has 2 clients (clientsPerGroupMax)"), "{e}");
        m.consumer_heartbeat("b", link(), hb("g1")).expect("a known client at the limit renews");
        let mut many = hb("g1");
        many.subscriptions = (0..4).map(|i| (format!("T{i}"), Subscription::parse("*", 0))).collect();
        let e = m.consumer_heartbeat("a", link(), many.clone()).unwrap_err();
        assert!(e.contains("to 4 topics; at most 3 (subscriptionsPerGroupMax)"), "{e}");
        many.subscriptions.truncate(3);
        m.consumer_heartbeat("a", link(), many).unwrap();
        assert!(m.subscription("g1", "T").is_none(), "a heartbeat's subscriptions replace the group's");
        assert!(m.subscription("g1", "T2").is_some());

        m.producer_heartbeat("p", "pg1", link()).unwrap();
        m.producer_heartbeat("p", "pg2", link()).unwrap();
        assert!(m.producer_heartbeat("p", "pg3", link()).unwrap_err().contains("producerGroupsMax"));
        m.producer_heartbeat("q", "pg1", link()).unwrap();
        assert!(m.producer_heartbeat("r", "pg1", link()).unwrap_err().contains("clientsPerGroupMax"));
        m.producer_heartbeat("q", "pg1", link()).unwrap();
        assert_eq!(m.producer_group_count(), 2);
    }
}
