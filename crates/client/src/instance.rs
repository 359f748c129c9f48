//! The per-process client instance (RocketMQ's `MQClientInstance`): one connection per broker address with
//! requests multiplexed by `opaque`, nameserver failover, the route cache with leader hints, heartbeats to
//! every broker, periodic route refresh, and the hand-off of server-initiated requests: NOTIFY_CONSUMER_IDS_CHANGED
//! to consumers, CHECK_TRANSACTION_STATE to the transaction producer of the message's group (`transaction.rs`).
//!
//! Producers and consumers built with equal [`ClientConfig`]s share one instance; the background tasks stop
//! when the last of them shuts down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use raftmq_net::client::ServerRequestCallback;
use raftmq_net::RemotingClient;
use raftmq_remoting::body::{decode_json_body, encode_json_body, ConsumerData, HeartbeatData, ProducerData, TopicRouteData};
use raftmq_remoting::header::{ConsumerGroupHeader, GetRouteInfoRequestHeader, UnregisterClientRequestHeader};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::transaction::{parse_check_request, CheckInbox};

/// What the instance needs from a registered consumer.
pub(crate) trait ConsumerHook: Send + Sync {
    /// The consumer's heartbeat entry.
    fn consumer_data(&self) -> ConsumerData;
    /// Asks the consumer to rebalance soon (a broker said the group changed).
    fn trigger_rebalance(&self);
}

/// How long a leader learnt from a broker's remark overrides the nameserver's route.
const LEADER_HINT_TTL: Duration = Duration::from_secs(30);

/// Failure-triggered refreshes of one topic's route are at least this far apart.
const ROUTE_REFRESH_MIN_GAP: Duration = Duration::from_millis(100);

struct LeaderHint {
    addr: String,
    since: Instant,
}

struct Inner {
    config: ClientConfig,
    client_id: String,
    namesrv_index: Mutex<usize>,
    connections: Mutex<HashMap<String, RemotingClient>>,
    /// Routes by topic; an `Arc` so the send path shares them instead of cloning (a new `Arc` = a new route).
    routes: RwLock<HashMap<String, Arc<TopicRouteData>>>,
    leader_hints: Mutex<HashMap<String, LeaderHint>>,
    /// When each topic's route was last refreshed because of a failure (throttles refresh storms).
    refreshed_after_failure: Mutex<HashMap<String, Instant>>,
    producers: Mutex<BTreeSet<String>>,
    consumers: Mutex<BTreeMap<String, Arc<dyn ConsumerHook>>>,
    /// Transaction producers by group: where CHECK_TRANSACTION_STATE requests for that group go.
    transaction_checks: Mutex<BTreeMap<String, CheckInbox>>,
    /// The connection each broker address last got a heartbeat on (see [`ClientInstance::heartbeat_unknown_brokers`]).
    heartbeated: Mutex<HashMap<String, RemotingClient>>,
    /// A `heartbeat_unknown_brokers` pass is running.
    heartbeat_pass_running: AtomicBool,
    users: Mutex<usize>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

/// A shared client instance. Cheap to clone.
#[derive(Clone)]
pub struct ClientInstance {
    inner: Arc<Inner>,
}

type Registry = Mutex<HashMap<(Vec<String>, String), Weak<Inner>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl ClientInstance {
    /// The instance for `config` (nameservers + instance name), created on first use. Must be called inside a
    /// tokio runtime; the background tasks run on it.
    pub fn get_or_create(config: &ClientConfig) -> Result<ClientInstance> {
        if config.namesrv_addrs.is_empty() {
            return Err(ClientError::State("no nameserver address configured".into()));
        }
        let key = (config.namesrv_addrs.clone(), config.instance_name.clone());
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(inner) = reg.get(&key).and_then(Weak::upgrade).filter(|i| !i.closed.load(Ordering::Acquire)) {
            if inner.config != *config {
                return Err(ClientError::State(format!(
                    "instance {} already exists with other settings; give this client another instance name",
                    inner.client_id
                )));
            }
            return Ok(ClientInstance { inner });
        }
        let inner = Arc::new(Inner {
            client_id: config.client_id(),
            config: config.clone(),
            namesrv_index: Mutex::new(0),
            connections: Mutex::default(),
            routes: RwLock::default(),
            leader_hints: Mutex::default(),
            refreshed_after_failure: Mutex::default(),
            producers: Mutex::default(),
            consumers: Mutex::default(),
            transaction_checks: Mutex::default(),
            heartbeated: Mutex::default(),
            heartbeat_pass_running: AtomicBool::new(false),
            users: Mutex::new(0),
            tasks: Mutex::default(),
            closed: AtomicBool::new(false),
        });
        reg.insert(key, Arc::downgrade(&inner));
        let instance = ClientInstance { inner };
        instance.spawn_background();
        Ok(instance)
    }

    fn spawn_background(&self) {
        let weak = Arc::downgrade(&self.inner);
        let routes_every = self.inner.config.poll_name_server_interval;
        let refresh = tokio::spawn(async move {
            let mut tick = tokio::time::interval(routes_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                ClientInstance { inner }.refresh_all_routes().await;
            }
        });
        let weak = Arc::downgrade(&self.inner);
        let heartbeat_every = self.inner.config.heartbeat_broker_interval;
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                ClientInstance { inner }.heartbeat_all().await;
            }
        });
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend([refresh, heartbeat]);
    }

    /// `ip@instance_name`.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub(crate) fn acquire(&self) {
        *self.inner.users.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    /// Drops one user; the last one stops the background tasks and closes the connections.
    pub(crate) fn release(&self) {
        let mut users = self.inner.users.lock().unwrap_or_else(|e| e.into_inner());
        *users = users.saturating_sub(1);
        if *users == 0 {
            self.inner.closed.store(true, Ordering::Release);
            for t in self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                t.abort();
            }
            self.inner.connections.lock().unwrap_or_else(|e| e.into_inner()).clear();
            self.inner.heartbeated.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    // ---- connections -------------------------------------------------------------------------------

    /// The connection to `addr`, made on first use and remade after it broke.
    pub(crate) async fn connection(&self, addr: &str) -> Result<RemotingClient> {
        if let Some(c) = self.inner.connections.lock().unwrap_or_else(|e| e.into_inner()).get(addr).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ClientError::State("client instance is shut down".into()));
        }
        let weak = Arc::downgrade(&self.inner);
        let from = addr.to_string();
        let on_request: ServerRequestCallback = Arc::new(move |cmd| {
            if let Some(inner) = weak.upgrade() {
                ClientInstance { inner }.on_server_request(&from, cmd);
            }
        });
        let c = RemotingClient::connect_with(addr, self.inner.config.connect_timeout, Some(on_request), self.inner.config.tls.as_ref())
            .await
            .map_err(|e| ClientError::net(addr, e))?;
        let mut conns = self.inner.connections.lock().unwrap_or_else(|e| e.into_inner());
        // Another task may have connected meanwhile; keep one connection per address.
        match conns.get(addr).filter(|c| !c.is_closed()) {
            Some(existing) => Ok(existing.clone()),
            None => {
                conns.insert(addr.to_string(), c.clone());
                Ok(c)
            }
        }
    }

    /// Sends a request to `addr` and waits for the response (any response code).
    pub(crate) async fn invoke(&self, addr: &str, mut cmd: RemotingCommand, timeout: Duration) -> Result<RemotingCommand> {
        self.sign(&mut cmd);
        let c = self.connection(addr).await?;
        match c.invoke(cmd, timeout).await {
            Ok(resp) => Ok(resp),
            Err(e @ raftmq_net::NetError::Timeout(_)) => {
                // A silent peer: the socket may sit in TCP retransmission backoff long after the network heals.
                // Start over with a fresh connection on the next request.
                self.drop_connection(addr, &c);
                Err(ClientError::net(addr, e))
            }
            Err(e) => Err(ClientError::net(addr, e)),
        }
    }

    /// Signs `cmd` with the configured ACL credentials (the last change before it is sent: the signature
    /// covers every ext field and the body). A request retried on another address is signed afresh.
    /// raftmq's control requests are signed with the cluster secret instead when the config has it.
    fn sign(&self, cmd: &mut RemotingCommand) {
        let config = &self.inner.config;
        match &config.cluster_secrets {
            // DELETE_TOPIC_IN_NAMESRV is signed like a registration: nameservers with a secret require it.
            Some(secrets) if raftmq_remoting::codes::is_raftmq_admin(cmd.code) || cmd.code == RequestCode::DELETE_TOPIC_IN_NAMESRV.0 => {
                raftmq_remoting::cluster_auth::sign_command(secrets, cmd);
            }
            _ => {
                if let Some(c) = &config.credentials {
                    c.sign(cmd);
                }
            }
        }
    }

    fn drop_connection(&self, addr: &str, c: &RemotingClient) {
        let mut conns = self.inner.connections.lock().unwrap_or_else(|e| e.into_inner());
        if conns.get(addr).is_some_and(|cur| cur.same_connection(c)) {
            conns.remove(addr);
        }
        drop(conns);
        c.close();
    }

    /// Sends a request and turns any code but SUCCESS into [`ClientError::Broker`].
    pub(crate) async fn invoke_ok(&self, addr: &str, cmd: RemotingCommand, timeout: Duration) -> Result<RemotingCommand> {
        let resp = self.invoke(addr, cmd, timeout).await?;
        check_success(addr, resp)
    }

    /// Sends a oneway request to `addr`.
    pub(crate) async fn invoke_oneway(&self, addr: &str, mut cmd: RemotingCommand) -> Result<()> {
        self.sign(&mut cmd);
        let c = self.connection(addr).await?;
        c.invoke_oneway(cmd).await.map_err(|e| ClientError::net(addr, e))
    }

    /// Sends a request to the nameservers, starting with the one that last answered and failing over to the
    /// others on connection errors and timeouts.
    pub(crate) async fn invoke_namesrv(&self, cmd: RemotingCommand) -> Result<RemotingCommand> {
        let addrs = &self.inner.config.namesrv_addrs;
        let start = *self.inner.namesrv_index.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = None;
        for i in 0..addrs.len() {
            let idx = (start + i) % addrs.len();
            match self.invoke(&addrs[idx], cmd.clone(), self.inner.config.request_timeout).await {
                Ok(resp) => {
                    *self.inner.namesrv_index.lock().unwrap_or_else(|e| e.into_inner()) = idx;
                    return Ok(resp);
                }
                Err(e) => {
                    debug!(namesrv = %addrs[idx], error = %e, "nameserver request failed; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::State("no nameserver address configured".into())))
    }

    /// Sends a request that only the group's leader may serve (offset commits, send-back, locks): to the
    /// leader the route or a hint names, following "the leader is at X" replies, and trying the other members
    /// when the presumed leader cannot be reached (they answer with the new leader). Returns the final
    /// response, whatever its code.
    pub(crate) async fn invoke_on_leader(&self, broker_name: &str, cmd: RemotingCommand, timeout: Duration) -> Result<RemotingCommand> {
        let deadline = Instant::now() + timeout;
        let members: Vec<String> = self.member_addrs(broker_name).into_iter().map(|(_, a)| a).collect();
        let mut addr =
            self.leader_addr(broker_name).or_else(|| members.first().cloned()).ok_or_else(|| ClientError::NoRoute(broker_name.into()))?;
        let mut last = None;
        for hop in 0..(members.len() + 3) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.invoke(&addr, cmd.clone(), remaining).await {
                Ok(resp) if resp.code == ResponseCode::SERVICE_NOT_AVAILABLE.0 => {
                    match resp.remark.as_deref().and_then(|r| self.note_leader_hint(broker_name, r)).filter(|h| *h != addr) {
                        Some(leader) => addr = leader,
                        None => return Ok(resp),
                    }
                }
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_definite() => {
                    self.forget_leader_hint(broker_name, &addr);
                    match members.iter().filter(|a| **a != addr).nth(hop % members.len().max(1)) {
                        Some(next) => addr = next.clone(),
                        None => return Err(e),
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClientError::Timeout { addr, timeout }))
    }

    /// Sends a read request any member can serve (pulls, offsets, consumer lists): the leader first, then the
    /// other members when a member cannot be reached.
    pub(crate) async fn invoke_on_any_member(&self, broker_name: &str, cmd: RemotingCommand, timeout: Duration) -> Result<RemotingCommand> {
        self.invoke_on_any_member_unless(broker_name, cmd, timeout, |_| false).await
    }

    /// Like [`ClientInstance::invoke_on_any_member`], but an answer for which `elsewhere` is true — a member
    /// sending the client on, as one far behind the leader answers a pull it has nothing for — makes it try the
    /// next member too (remembering a leader the answer names); that answer is returned only when no other
    /// member gives a better one.
    pub(crate) async fn invoke_on_any_member_unless(
        &self,
        broker_name: &str,
        cmd: RemotingCommand,
        timeout: Duration,
        elsewhere: impl Fn(&RemotingCommand) -> bool,
    ) -> Result<RemotingCommand> {
        let mut addrs: Vec<String> = self.leader_addr(broker_name).into_iter().collect();
        for (_, a) in self.member_addrs(broker_name) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let mut last = None;
        let mut sent_on = None;
        for addr in addrs {
            // Reads are idempotent, so a broken or silent member is simply skipped.
            match self.invoke(&addr, cmd.clone(), timeout).await {
                Ok(resp) if elsewhere(&resp) => {
                    if let Some(remark) = resp.remark.as_deref() {
                        self.note_leader_hint(broker_name, remark);
                    }
                    sent_on = Some(resp);
                }
                Ok(resp) => return Ok(resp),
                Err(e @ (ClientError::Connection { .. } | ClientError::Timeout { .. })) => {
                    // The presumed leader is gone: forget what named it, so the next request asks the others.
                    self.forget_leader_hint(broker_name, &addr);
                    self.refresh_routes_naming(broker_name);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(resp) = sent_on {
            return Ok(resp);
        }
        Err(last.unwrap_or_else(|| ClientError::NoRoute(broker_name.into())))
    }

    // ---- routes ------------------------------------------------------------------------------------

    /// Fetches the route of `topic` from the nameservers and caches it; `None` when no broker serves it.
    pub async fn update_route(&self, topic: &str) -> Result<Option<TopicRouteData>> {
        let h = GetRouteInfoRequestHeader { topic: topic.to_string(), ..Default::default() };
        let resp = self.invoke_namesrv(RemotingCommand::request(RequestCode::GET_ROUTEINFO_BY_TOPIC, 0).with_header(&h)).await?;
        if resp.code == ResponseCode::TOPIC_NOT_EXIST.0 {
            return Ok(None);
        }
        let resp = check_success("nameserver", resp)?;
        let route: TopicRouteData = decode_json_body("TopicRouteData", &resp.body)?;
        self.expire_hints(&route);
        self.inner.routes.write().unwrap_or_else(|e| e.into_inner()).insert(topic.to_string(), Arc::new(route.clone()));
        Ok(Some(route))
    }

    /// The cached route of `topic`.
    pub fn cached_route(&self, topic: &str) -> Option<TopicRouteData> {
        self.cached_route_shared(topic).map(|r| (*r).clone())
    }

    /// The cached route of `topic`, shared (no copy): for the send path.
    pub(crate) fn cached_route_shared(&self, topic: &str) -> Option<Arc<TopicRouteData>> {
        self.inner.routes.read().unwrap_or_else(|e| e.into_inner()).get(topic).cloned()
    }

    /// The cached route, shared, fetched when absent.
    pub(crate) async fn route_shared(&self, topic: &str) -> Result<Option<Arc<TopicRouteData>>> {
        if let Some(r) = self.cached_route_shared(topic) {
            return Ok(Some(r));
        }
        self.update_route(topic).await?;
        Ok(self.cached_route_shared(topic))
    }

    /// Refreshes, in the background, every cached route that names `broker_name`.
    pub(crate) fn refresh_routes_naming(&self, broker_name: &str) {
        let topics: Vec<String> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, r)| r.broker_datas.iter().any(|b| b.broker_name == broker_name))
            .map(|(t, _)| t.clone())
            .collect();
        for t in topics {
            self.refresh_route_soon(&t);
        }
    }

    /// The cached route, fetched when absent.
    pub async fn route(&self, topic: &str) -> Result<Option<TopicRouteData>> {
        match self.cached_route(topic) {
            Some(r) => Ok(Some(r)),
            None => self.update_route(topic).await,
        }
    }

    /// Refreshes `topic`'s route in the background (after a failure that suggests the route is stale).
    pub(crate) fn refresh_route_soon(&self, topic: &str) {
        {
            let mut last = self.inner.refreshed_after_failure.lock().unwrap_or_else(|e| e.into_inner());
            if last.get(topic).is_some_and(|t| t.elapsed() < ROUTE_REFRESH_MIN_GAP) {
                return;
            }
            last.insert(topic.to_string(), Instant::now());
        }
        let (client, topic) = (self.clone(), topic.to_string());
        tokio::spawn(async move {
            if let Err(e) = client.update_route(&topic).await {
                debug!(%topic, error = %e, "route refresh failed");
            }
        });
    }

    async fn refresh_all_routes(&self) {
        let topics: Vec<String> = self.inner.routes.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        for t in topics {
            if let Err(e) = self.update_route(&t).await {
                debug!(topic = %t, error = %e, "route refresh failed");
            }
        }
    }

    /// The address to write to for `broker_name`: a fresh leader hint, else the route's brokerId 0.
    pub(crate) fn leader_addr(&self, broker_name: &str) -> Option<String> {
        if let Some(h) = self.inner.leader_hints.lock().unwrap_or_else(|e| e.into_inner()).get(broker_name) {
            if h.since.elapsed() < LEADER_HINT_TTL {
                return Some(h.addr.clone());
            }
        }
        self.member_addrs(broker_name).into_iter().find(|(id, _)| *id == 0).map(|(_, a)| a)
    }

    /// Every member address the cached routes list for `broker_name`, by broker id.
    pub(crate) fn member_addrs(&self, broker_name: &str) -> Vec<(i64, String)> {
        let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<i64, String> = BTreeMap::new();
        for r in routes.values() {
            for b in r.broker_datas.iter().filter(|b| b.broker_name == broker_name) {
                for (id, addr) in &b.broker_addrs {
                    out.entry(*id).or_insert_with(|| addr.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Every broker address in the cached routes.
    pub(crate) fn all_broker_addrs(&self) -> BTreeSet<String> {
        let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeSet<String> =
            routes.values().flat_map(|r| r.broker_datas.iter()).flat_map(|b| b.broker_addrs.values().cloned()).collect();
        out.extend(self.inner.leader_hints.lock().unwrap_or_else(|e| e.into_inner()).values().map(|h| h.addr.clone()));
        out
    }

    /// Remembers the leader a broker named in a not-leader remark. Returns the address when the remark had one.
    pub(crate) fn note_leader_hint(&self, broker_name: &str, remark: &str) -> Option<String> {
        let addr = parse_leader_hint(remark)?;
        self.inner
            .leader_hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(broker_name.to_string(), LeaderHint { addr: addr.clone(), since: Instant::now() });
        Some(addr)
    }

    /// Forgets a hint that turned out wrong (its address failed).
    pub(crate) fn forget_leader_hint(&self, broker_name: &str, addr: &str) {
        let mut hints = self.inner.leader_hints.lock().unwrap_or_else(|e| e.into_inner());
        if hints.get(broker_name).is_some_and(|h| h.addr == addr) {
            hints.remove(broker_name);
        }
    }

    /// A hint is dropped once the nameserver publishes the same leader, or after [`LEADER_HINT_TTL`].
    fn expire_hints(&self, route: &TopicRouteData) {
        let mut hints = self.inner.leader_hints.lock().unwrap_or_else(|e| e.into_inner());
        hints.retain(|name, h| {
            let published = route.broker_datas.iter().find(|b| &b.broker_name == name).and_then(|b| b.master_addr());
            published != Some(h.addr.as_str()) && h.since.elapsed() < LEADER_HINT_TTL
        });
    }

    // ---- heartbeats and registration ---------------------------------------------------------------

    pub(crate) fn register_producer(&self, group: &str) -> Result<()> {
        if !self.inner.producers.lock().unwrap_or_else(|e| e.into_inner()).insert(group.to_string()) {
            return Err(ClientError::State(format!(
                "producer group {group} is already registered in instance {}; use another instance name",
                self.client_id()
            )));
        }
        Ok(())
    }

    pub(crate) fn unregister_producer(&self, group: &str) {
        self.inner.producers.lock().unwrap_or_else(|e| e.into_inner()).remove(group);
    }

    /// Routes CHECK_TRANSACTION_STATE requests for `group` to `inbox`. The group must already be registered
    /// as a producer (so that heartbeats carry it).
    pub(crate) fn register_transaction_checks(&self, group: &str, inbox: CheckInbox) {
        self.inner.transaction_checks.lock().unwrap_or_else(|e| e.into_inner()).insert(group.to_string(), inbox);
    }

    pub(crate) fn unregister_transaction_checks(&self, group: &str) {
        self.inner.transaction_checks.lock().unwrap_or_else(|e| e.into_inner()).remove(group);
    }

    /// The broker group `addr` belongs to, by the cached routes.
    pub(crate) fn broker_name_of(&self, addr: &str) -> Option<String> {
        let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
        routes
            .values()
            .flat_map(|r| r.broker_datas.iter())
            .find(|b| b.broker_addrs.values().any(|a| a == addr))
            .map(|b| b.broker_name.clone())
    }

    pub(crate) fn register_consumer(&self, group: &str, hook: Arc<dyn ConsumerHook>) -> Result<()> {
        let mut consumers = self.inner.consumers.lock().unwrap_or_else(|e| e.into_inner());
        if consumers.contains_key(group) {
            return Err(ClientError::State(format!(
                "consumer group {group} is already registered in instance {}; use another instance name",
                self.client_id()
            )));
        }
        consumers.insert(group.to_string(), hook);
        Ok(())
    }

    /// Removes the consumer and tells every broker, so the rest of the group rebalances at once.
    pub(crate) async fn unregister_consumer(&self, group: &str) {
        self.inner.consumers.lock().unwrap_or_else(|e| e.into_inner()).remove(group);
        let h = UnregisterClientRequestHeader {
            client_id: self.client_id().to_string(),
            producer_group: None,
            consumer_group: Some(group.to_string()),
        };
        for addr in self.all_broker_addrs() {
            let cmd = RemotingCommand::request(RequestCode::UNREGISTER_CLIENT, 0).with_header(&h);
            if let Err(e) = self.invoke(&addr, cmd, self.inner.config.request_timeout).await {
                debug!(broker = %addr, error = %e, "unregister failed");
            }
        }
    }

    fn heartbeat_data(&self) -> HeartbeatData {
        let producers = self.inner.producers.lock().unwrap_or_else(|e| e.into_inner());
        let consumers: Vec<Arc<dyn ConsumerHook>> =
            self.inner.consumers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        HeartbeatData {
            client_id: self.client_id().to_string(),
            producer_data_set: producers.iter().map(|g| ProducerData { group_name: g.clone() }).collect(),
            consumer_data_set: consumers.iter().map(|c| c.consumer_data()).collect(),
            ..Default::default()
        }
    }

    /// Sends a heartbeat to every broker of every cached route (all members, so that any of them can answer
    /// GET_CONSUMER_LIST_BY_GROUP after a failover).
    pub async fn heartbeat_all(&self) {
        let hb = self.heartbeat_data();
        if hb.producer_data_set.is_empty() && hb.consumer_data_set.is_empty() {
            return;
        }
        let body = match encode_json_body(&hb) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "heartbeat not encodable");
                return;
            }
        };
        self.heartbeat(self.all_broker_addrs(), &body).await;
    }

    /// Sends the heartbeat `body` to each of `addrs` at once, remembering the connection each one went on.
    async fn heartbeat(&self, addrs: impl IntoIterator<Item = String>, body: &bytes::Bytes) {
        let calls = addrs.into_iter().map(|addr| {
            let cmd = RemotingCommand::request(RequestCode::HEART_BEAT, 0).with_body(body.clone());
            async move {
                let sent = async {
                    let conn = self.connection(&addr).await?;
                    self.invoke_ok(&addr, cmd, self.inner.config.request_timeout).await?;
                    Ok::<_, ClientError>(conn)
                };
                match sent.await {
                    Ok(conn) => {
                        self.inner.heartbeated.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, conn);
                    }
                    Err(e) => debug!(broker = %addr, error = %e, "heartbeat failed"),
                }
            }
        });
        join_all(calls).await;
    }

    /// Heartbeats, in the background, every broker of the cached routes whose current connection (if any)
    /// has not carried a heartbeat yet: brokers a send just made known, and brokers reconnected since.
    /// A broker sends CHECK_TRANSACTION_STATE only on a connection it knows from a heartbeat of the
    /// producer's group, so a transaction producer calls this after each half message instead of waiting
    /// up to `heartbeat_broker_interval`. Cheap when nothing is missing; one pass runs at a time.
    pub(crate) fn heartbeat_unknown_brokers(&self) {
        let known = self.all_broker_addrs();
        let missing: Vec<String> = {
            let conns = self.inner.connections.lock().unwrap_or_else(|e| e.into_inner());
            let done = self.inner.heartbeated.lock().unwrap_or_else(|e| e.into_inner());
            known
                .into_iter()
                .filter(|a| match (done.get(a), conns.get(a)) {
                    (Some(hb), Some(cur)) => !cur.same_connection(hb) || cur.is_closed(),
                    _ => true,
                })
                .collect()
        };
        if missing.is_empty() || self.inner.heartbeat_pass_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            match encode_json_body(&client.heartbeat_data()) {
                Ok(body) => client.heartbeat(missing, &body).await,
                Err(e) => warn!(error = %e, "heartbeat not encodable"),
            }
            client.inner.heartbeat_pass_running.store(false, Ordering::Release);
        });
    }

    /// Handles a request a broker sent on the connection to `from`. Runs on that connection's reader task,
    /// so it only parses and hands over; it never blocks and never panics on what the broker sent.
    fn on_server_request(&self, from: &str, cmd: RemotingCommand) {
        if cmd.code == RequestCode::CHECK_TRANSACTION_STATE.0 {
            self.on_check_transaction_state(from, cmd);
        } else if cmd.code == RequestCode::NOTIFY_CONSUMER_IDS_CHANGED.0 {
            if let Ok(h) = cmd.decode_header::<ConsumerGroupHeader>() {
                let hook = self.inner.consumers.lock().unwrap_or_else(|e| e.into_inner()).get(&h.consumer_group).cloned();
                if let Some(hook) = hook {
                    debug!(group = %h.consumer_group, "consumer ids changed; rebalancing");
                    hook.trigger_rebalance();
                }
            }
        } else {
            debug!(code = cmd.code, "ignoring server request");
        }
    }

    /// CHECK_TRANSACTION_STATE: finds the transaction producer by the message's `PGROUP` (any connection
    /// of the process may carry it) and queues the check on that producer's bounded worker. A malformed
    /// request, an unknown group or a full queue is logged and dropped: the broker checks again later.
    fn on_check_transaction_state(&self, from: &str, cmd: RemotingCommand) {
        let req = match parse_check_request(from, &cmd) {
            Ok(r) => r,
            Err(e) => {
                warn!(broker = %from, error = %e, "ignoring a malformed CHECK_TRANSACTION_STATE");
                return;
            }
        };
        let inbox = self.inner.transaction_checks.lock().unwrap_or_else(|e| e.into_inner()).get(&req.group).cloned();
        match inbox {
            Some(inbox) => inbox.submit(req),
            None => warn!(
                broker = %from,
                group = %req.group,
                offset = req.header.commit_log_offset,
                "CHECK_TRANSACTION_STATE for a group with no transaction producer here; ignored"
            ),
        }
    }
}

/// Turns a non-SUCCESS response into [`ClientError::Broker`].
pub(crate) fn check_success(addr: &str, resp: RemotingCommand) -> Result<RemotingCommand> {
    if resp.code == ResponseCode::SUCCESS.0 {
        Ok(resp)
    } else {
        Err(ClientError::Broker { addr: addr.to_string(), code: resp.code, remark: resp.remark.unwrap_or_default() })
    }
}

/// The leader address in a raftmq not-leader remark (`… the leader is at 10.0.0.2:10911`).
pub(crate) fn parse_leader_hint(remark: &str) -> Option<String> {
    let rest = remark.split("the leader is at ").nth(1)?;
    let addr: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != ',' && *c != ';').collect();
    addr.contains(':').then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hint_is_parsed_from_the_brokers_remark() {
        let r = "broker broker-a node 2 is not the Raft leader; the leader is at 127.0.0.1:10911";
        assert_eq!(parse_leader_hint(r).as_deref(), Some("127.0.0.1:10911"));
        assert_eq!(parse_leader_hint("broker broker-a node 2 is not the Raft leader and no leader is known (election in progress)"), None);
        assert_eq!(parse_leader_hint("the leader is at nowhere"), None);
    }
}
