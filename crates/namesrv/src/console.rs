//! The nameserver's web console, on the port of `/metrics` (`raftmq namesrv --metrics-listen`): a static page
//! (`GET /`, `GET /console.js`, embedded; no external resources) over a JSON API the page polls:
//!
//! - `GET /api/cluster`: the route table's clusters and broker groups, and for each registered node its Raft
//!   status (RAFTMQ_NODE_STATUS 10900, signed with the cluster secret when one is configured) or why it
//!   could not be asked;
//! - `GET /api/topics`: per topic and broker group the queue counts and permission (GET_ALL_TOPIC_CONFIG 21)
//!   and each queue's min/max offset (GET_TOPIC_STATS_INFO 202), asked of the group's leader;
//! - `GET /api/groups[?group=G]`: the consumer groups the leaders know (GET_ALL_SUBSCRIPTIONGROUP_CONFIG 201;
//!   a broker that answers 3 "not supported" contributes none) plus `G`, with their committed offsets and
//!   lag per queue (GET_CONSUME_STATS 208);
//! - `GET /api/message?id=` (a message id, `UNIQ_KEY`, or an offsetMsgId; `&topic=` narrows the search),
//!   `?topic=&key=` (QUERY_MESSAGE 12) or `?topic=&queue=&offset=[&broker=]` (PULL_MESSAGE 11): properties
//!   and a bounded body preview;
//! - `GET /api/rates`: stored messages, commitlog bytes and committed consumer offsets per second, computed
//!   by this nameserver from two successive samples (see [`Console::rates`]).
//!
//! Every broker call has a timeout ([`CONSOLE_CALL_TIMEOUT`]); an address that failed once is not asked again
//! within the same API request, and the whole request has a deadline ([`CONSOLE_REQUEST_TIMEOUT`]), so a dead
//! or stopped broker shows as unreachable instead of holding the page. Everything listed is bounded (the
//! `CONSOLE_*_MAX` constants; what was left out is counted in `…Omitted`). Broker-supplied strings reach the
//! page only as JSON strings with `<`, `>` and `&` written as `\u003c`… escapes, and the page puts them into
//! the document with `textContent` only, so a topic name, key or body cannot become markup. The cluster
//! secret is used to sign requests and never appears in an answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use raftmq_net::RemotingClient;
use raftmq_remoting::body::{decode_json_body, ClusterInfo, TopicConfigSerializeWrapper, TopicRouteData, MASTER_ID};
use raftmq_remoting::cluster_auth::{sign_command, ClusterSecrets};
use raftmq_remoting::codes::{is_raftmq_admin, RAFTMQ_NODE_STATUS};
use raftmq_remoting::header::{
    GetConsumeStatsRequestHeader, GetTopicStatsInfoRequestHeader, PullMessageRequestHeader, QueryMessageRequestHeader,
    ViewMessageRequestHeader, UNIQUE_KEY_QUERY_FIELD,
};
use raftmq_remoting::message::{decode_offset_msg_id, property, DecodedMessage, StoredMessages};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::RouteTable;

/// Console API requests served at once; more are answered 503 at once.
pub const CONSOLE_API_REQUESTS_MAX: usize = 4;
/// Nodes (registered broker addresses) `/api/cluster` asks and lists.
pub const CONSOLE_NODES_MAX: usize = 64;
/// Topics `/api/topics` (and a message-id search without a topic) looks at, by name order.
pub const CONSOLE_TOPICS_MAX: usize = 256;
/// Queue rows one `/api/topics` or `/api/groups` answer lists in all.
pub const CONSOLE_QUEUE_ROWS_MAX: usize = 4096;
/// Consumer groups `/api/groups` lists.
pub const CONSOLE_GROUPS_MAX: usize = 64;
/// Messages one lookup lists.
pub const CONSOLE_MESSAGES_MAX: usize = 16;
/// Bytes of a message body shown (the rest is counted, not sent).
pub const CONSOLE_BODY_PREVIEW_BYTES_MAX: usize = 4096;
/// A compressed body is inflated up to this size for its preview; a larger one shows no preview.
pub const CONSOLE_BODY_INFLATE_BYTES_MAX: usize = 4 << 20;
/// Bytes of a query-string parameter (topic, key, id, group).
pub const CONSOLE_PARAM_BYTES_MAX: usize = 512;
/// Timeout of one broker call (connect, and request to answer).
pub const CONSOLE_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one console API request, all its broker calls included (answered 504 past it).
pub const CONSOLE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `/api/rates` compares against a sample at least this old (younger ones are not replaced).
pub const CONSOLE_RATE_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// The consumer group the console's PULL_MESSAGE lookups name (nothing is committed for it).
const CONSOLE_PULL_GROUP: &str = "raftmq_console";

const PAGE: &str = include_str!("console.html");
const SCRIPT: &str = include_str!("console.js");
const PAGE_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'";

/// The console's state: what it reads, the request slots, the last rate sample.
pub struct Console {
    routes: Arc<RouteTable>,
    /// Signs the control codes (10900) the console sends; never shown.
    secrets: Option<ClusterSecrets>,
    slots: Arc<Semaphore>,
    rates: Mutex<Option<Sample>>,
}

/// An answer of the API: a JSON value, or a status and why.
type ApiResult = Result<Value, (StatusCode, String)>;

impl Console {
    /// A console over `routes`, signing control requests with `secrets` when given.
    pub fn new(routes: Arc<RouteTable>, secrets: Option<ClusterSecrets>) -> Console {
        Console { routes, secrets, slots: Arc::new(Semaphore::new(CONSOLE_API_REQUESTS_MAX)), rates: Mutex::new(None) }
    }

    /// `GET /api/cluster`.
    pub async fn cluster(&self) -> Value {
        let info = self.routes.cluster_info();
        let mut budget = CONSOLE_NODES_MAX;
        let mut omitted = 0usize;
        // (cluster, group, registered id, address), in route-table order, at most CONSOLE_NODES_MAX.
        let mut asked: Vec<(String, String, i64, String)> = Vec::new();
        for (cluster, names) in &info.cluster_addr_table {
            for name in names {
                let Some(b) = info.broker_addr_table.get(name) else { continue };
                for (id, addr) in &b.broker_addrs {
                    if budget == 0 {
                        omitted += 1;
                        continue;
                    }
                    budget -= 1;
                    asked.push((cluster.clone(), name.clone(), *id, addr.clone()));
                }
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (_, _, _, addr)) in asked.iter().enumerate() {
            let (addr, secrets) = (addr.clone(), self.secrets.clone());
            tasks.spawn(async move {
                let mut calls = Calls::new(secrets.as_ref());
                let r = calls.call(&addr, RemotingCommand::request(RequestCode(RAFTMQ_NODE_STATUS), 0)).await;
                calls.close();
                let status = r.and_then(|resp| {
                    serde_json::from_slice::<Value>(&resp.body).map_err(|e| format!("undecodable node status from {addr}: {e}"))
                });
                (i, status)
            });
        }
        let mut statuses: Vec<Option<Result<Value, String>>> = vec![None; asked.len()];
        while let Some(done) = tasks.join_next().await {
            if let Ok((i, s)) = done {
                statuses[i] = Some(s);
            }
        }
        let mut clusters: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
        for ((cluster, group, id, addr), status) in asked.into_iter().zip(statuses) {
            let status = status.unwrap_or_else(|| Err("the status task failed".into()));
            clusters.entry(cluster).or_default().entry(group).or_default().push(node_view(id, &addr, status));
        }
        let clusters: Vec<Value> = clusters
            .into_iter()
            .map(|(name, groups)| {
                let groups: Vec<Value> = groups
                    .into_iter()
                    .map(|(g, nodes)| {
                        let leader = info.broker_addr_table.get(&g).and_then(|b| b.master_addr()).map(String::from);
                        json!({"brokerName": g, "registeredLeader": leader, "nodes": nodes})
                    })
                    .collect();
                json!({"name": name, "groups": groups})
            })
            .collect();
        json!({"clusters": clusters, "nodesOmitted": omitted, "nodesMax": CONSOLE_NODES_MAX})
    }

    /// `GET /api/topics`.
    pub async fn topics(&self) -> Value {
        let info = self.routes.cluster_info();
        let mut calls = Calls::new(self.secrets.as_ref());
        let v = topics_view(&self.routes, &info, &mut calls).await;
        calls.close();
        v
    }

    /// `GET /api/groups[?group=G]`.
    pub async fn groups(&self, named: Option<&str>) -> Value {
        let info = self.routes.cluster_info();
        let mut calls = Calls::new(self.secrets.as_ref());
        let v = groups_view(&info, named, &mut calls).await;
        calls.close();
        v
    }

    /// `GET /api/rates`: a sample of, per broker group, the messages stored (the sum of the queues' max
    /// offsets, 202) and the commitlog write position (`commitLogMaxOffset` of GET_BROKER_RUNTIME_INFO 28),
    /// and per consumer group the sum of its committed offsets (208); the rates are the differences to the
    /// previous sample over the time between them. The previous sample is replaced only when it is at least
    /// [`CONSOLE_RATE_INTERVAL_MIN`] old, so polls close together still compare against a useful base. The
    /// first call has no base and answers `null` rates. A rate is computed only where both samples have the
    /// figure (a group unreachable in either shows `null`); a negative difference (a leader change to a node
    /// whose figures lag, a deleted topic) counts as 0.
    pub async fn rates(&self) -> Value {
        let info = self.routes.cluster_info();
        let mut calls = Calls::new(self.secrets.as_ref());
        let topics = topics_view(&self.routes, &info, &mut calls).await;
        let groups = groups_view(&info, None, &mut calls).await;
        let mut bytes = BTreeMap::new();
        for (name, b) in &info.broker_addr_table {
            let Some(addr) = b.master_addr() else { continue };
            if let Ok(resp) = calls.call(addr, RemotingCommand::request(RequestCode::GET_BROKER_RUNTIME_INFO, 0)).await {
                let kv: Result<raftmq_remoting::body::KvTable, _> = decode_json_body("runtime info", &resp.body);
                if let Some(pos) = kv.ok().and_then(|kv| kv.table.get("commitLogMaxOffset").and_then(|v| v.parse::<u64>().ok())) {
                    bytes.insert(name.clone(), pos);
                }
            }
        }
        calls.close();
        let now = Instant::now();
        let sample = Sample::from_views(&topics, &groups, bytes, now);
        let mut last = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let answer = sample.rates_since(last.as_ref());
        if last.as_ref().is_none_or(|l| now.duration_since(l.at) >= CONSOLE_RATE_INTERVAL_MIN) {
            *last = Some(sample);
        }
        answer
    }

    /// `GET /api/message`: the lookup `params` ask for.
    ///
    /// # Errors
    /// 400 with the reason for a query naming no lookup or a malformed one.
    pub async fn message(&self, params: &BTreeMap<String, String>) -> ApiResult {
        let info = self.routes.cluster_info();
        let mut calls = Calls::new(self.secrets.as_ref());
        let r = lookup(&self.routes, &info, params, &mut calls).await;
        calls.close();
        r
    }
}

/// A node's row: its registration and its status (or why it has none).
fn node_view(registered_id: i64, addr: &str, status: Result<Value, String>) -> Value {
    match status {
        Ok(s) => {
            let pick = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
            json!({
                "addr": addr,
                "registeredId": registered_id,
                "reachable": true,
                "nodeId": pick("nodeId"),
                "role": pick("role"),
                "ready": pick("ready"),
                "term": pick("term"),
                "leader": pick("leader"),
                "lastLogIndex": pick("lastLogIndex"),
                "commitIndex": pick("commitIndex"),
                "appliedIndex": pick("appliedIndex"),
                "purgedIndex": pick("purgedIndex"),
                "diskFull": s.pointer("/retention/diskFull").cloned().unwrap_or(Value::Null),
            })
        }
        Err(e) => json!({"addr": addr, "registeredId": registered_id, "reachable": false, "error": e}),
    }
}

/// The leader address of each broker group (brokerId 0), or any member when none is registered as leader.
fn group_addr(info: &ClusterInfo, group: &str) -> Option<String> {
    let b = info.broker_addr_table.get(group)?;
    b.broker_addrs.get(&MASTER_ID).or_else(|| b.broker_addrs.values().next()).cloned()
}

/// Broker groups serving `route`'s topic, by name.
fn serving_groups(route: &TopicRouteData) -> BTreeSet<String> {
    route.queue_datas.iter().map(|q| q.broker_name.clone()).collect()
}

async fn topics_view(routes: &RouteTable, info: &ClusterInfo, calls: &mut Calls<'_>) -> Value {
    let names = routes.topics();
    let omitted = names.len().saturating_sub(CONSOLE_TOPICS_MAX);
    let mut rows_left = CONSOLE_QUEUE_ROWS_MAX;
    let mut rows_omitted = 0usize;
    // The topic table of each group, asked once (21).
    let mut configs: HashMap<String, Result<TopicConfigSerializeWrapper, String>> = HashMap::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut unreachable: BTreeSet<String> = BTreeSet::new();
    let mut topics = Vec::new();
    for topic in names.iter().take(CONSOLE_TOPICS_MAX) {
        let Some(route) = routes.route(topic) else { continue };
        let mut groups = Vec::new();
        for group in serving_groups(&route) {
            let Some(addr) = group_addr(info, &group) else {
                groups.push(json!({"brokerName": group, "error": "no registered member"}));
                continue;
            };
            if !configs.contains_key(&group) {
                let c = match calls.call(&addr, RemotingCommand::request(RequestCode::GET_ALL_TOPIC_CONFIG, 0)).await {
                    Ok(resp) => decode_json_body::<TopicConfigSerializeWrapper>("topic config", &resp.body).map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                configs.insert(group.clone(), c);
            }
            let config = match configs.get(&group) {
                Some(Ok(w)) => w
                    .topic_config_table
                    .get(topic)
                    .map(|c| json!({"readQueues": c.read_queue_nums, "writeQueues": c.write_queue_nums, "perm": c.perm})),
                _ => None,
            };
            let h = GetTopicStatsInfoRequestHeader { topic: topic.clone() };
            let stats = calls.call(&addr, RemotingCommand::request(RequestCode::GET_TOPIC_STATS_INFO, 0).with_header(&h)).await;
            let mut entry = json!({"brokerName": group, "addr": addr, "config": config});
            match stats.and_then(|r| parse_queue_map(&r.body)) {
                Ok(map) => {
                    let mut queues = Vec::new();
                    let mut messages = 0i64;
                    for (q, v) in map {
                        let (min, max) = (int(&v, "minOffset"), int(&v, "maxOffset"));
                        messages = messages.saturating_add((max - min).max(0));
                        *totals.entry(group.clone()).or_default() += max.max(0);
                        if rows_left == 0 {
                            rows_omitted += 1;
                            continue;
                        }
                        rows_left -= 1;
                        queues.push(json!({"queueId": q.queue_id, "minOffset": min, "maxOffset": max, "lastUpdateTimestamp": int(&v, "lastUpdateTimestamp")}));
                    }
                    entry["queues"] = Value::Array(queues);
                    entry["messages"] = json!(messages);
                }
                Err(e) => {
                    unreachable.insert(group.clone());
                    entry["error"] = Value::String(e);
                }
            }
            groups.push(entry);
        }
        topics.push(json!({"name": topic, "groups": groups}));
    }
    // Groups some topic could not be read from have no trustworthy total.
    for g in &unreachable {
        totals.remove(g);
    }
    json!({
        "topics": topics,
        "topicsOmitted": omitted,
        "topicsMax": CONSOLE_TOPICS_MAX,
        "queueRowsOmitted": rows_omitted,
        "queueRowsMax": CONSOLE_QUEUE_ROWS_MAX,
        "storedByGroup": totals,
    })
}

async fn groups_view(info: &ClusterInfo, named: Option<&str>, calls: &mut Calls<'_>) -> Value {
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut notes: Vec<String> = Vec::new();
    let mut listed = false;
    for group in info.broker_addr_table.keys() {
        let Some(addr) = group_addr(info, group) else { continue };
        match calls.call_raw(&addr, RemotingCommand::request(RequestCode::GET_ALL_SUBSCRIPTIONGROUP_CONFIG, 0)).await {
            Ok(resp) if resp.code == ResponseCode::SUCCESS.0 => match serde_json::from_slice::<Value>(&resp.body) {
                Ok(v) => match v.get("subscriptionGroupTable").and_then(Value::as_object) {
                    Some(t) => {
                        listed = true;
                        names.extend(t.keys().cloned());
                    }
                    None => notes.push(format!("{group}: subscription groups answer without a subscriptionGroupTable map")),
                },
                Err(e) => notes.push(format!("{group}: undecodable subscription groups: {e}")),
            },
            Ok(resp) if resp.code == ResponseCode::REQUEST_CODE_NOT_SUPPORTED.0 => {
                notes.push(format!("{group} does not list consumer groups (GET_ALL_SUBSCRIPTIONGROUP_CONFIG not supported); name one"))
            }
            Ok(resp) => notes.push(format!("{group}: subscription groups: code {} {}", resp.code, resp.remark.unwrap_or_default())),
            Err(e) => notes.push(format!("{group}: {e}")),
        }
    }
    if let Some(n) = named {
        names.insert(n.to_string());
    }
    // The named group first, then the others by name, at most CONSOLE_GROUPS_MAX.
    let mut ordered: Vec<String> = named.map(String::from).into_iter().collect();
    ordered.extend(names.into_iter().filter(|n| Some(n.as_str()) != named));
    let omitted = ordered.len().saturating_sub(CONSOLE_GROUPS_MAX);
    ordered.truncate(CONSOLE_GROUPS_MAX);
    let mut rows_left = CONSOLE_QUEUE_ROWS_MAX;
    let mut rows_omitted = 0usize;
    let mut out = Vec::new();
    for cg in ordered {
        let mut queues = Vec::new();
        let mut errors = Vec::new();
        let (mut lag, mut committed, mut tps) = (0i64, 0i64, 0f64);
        let mut complete = true;
        for group in info.broker_addr_table.keys() {
            let Some(addr) = group_addr(info, group) else { continue };
            let h = GetConsumeStatsRequestHeader { consumer_group: cg.clone(), topic: None };
            let r = calls.call(&addr, RemotingCommand::request(RequestCode::GET_CONSUME_STATS, 0).with_header(&h)).await;
            match r.and_then(|resp| {
                let text = std::str::from_utf8(&resp.body).map_err(|e| e.to_string())?;
                tps += consume_tps(text);
                parse_queue_map(&resp.body)
            }) {
                Ok(map) => {
                    for (q, v) in map {
                        let (broker, consumer) = (int(&v, "brokerOffset"), int(&v, "consumerOffset"));
                        let l = (broker - consumer).max(0);
                        lag = lag.saturating_add(l);
                        committed = committed.saturating_add(consumer.max(0));
                        if rows_left == 0 {
                            rows_omitted += 1;
                            continue;
                        }
                        rows_left -= 1;
                        queues.push(json!({"topic": q.topic, "brokerName": q.broker_name, "queueId": q.queue_id, "brokerOffset": broker, "consumerOffset": consumer, "lag": l}));
                    }
                }
                Err(e) => {
                    complete = false;
                    errors.push(format!("{group}: {e}"));
                }
            }
        }
        let committed = if complete { json!(committed) } else { Value::Null };
        out.push(json!({"name": cg, "lag": lag, "committed": committed, "consumeTps": tps, "queues": queues, "errors": errors}));
    }
    json!({
        "groups": out,
        "listed": listed,
        "notes": notes,
        "groupsOmitted": omitted,
        "groupsMax": CONSOLE_GROUPS_MAX,
        "queueRowsOmitted": rows_omitted,
    })
}

/// The `consumeTps` field at the end of a ConsumeStats body (0 when absent).
fn consume_tps(text: &str) -> f64 {
    text.rsplit_once("\"consumeTps\":")
        .and_then(|(_, t)| t.trim_end_matches('}').trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

fn int(v: &Value, k: &str) -> i64 {
    v.get(k).and_then(Value::as_i64).unwrap_or(0)
}

/// A queue named in a fastjson object-keyed map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct QueueKey {
    topic: String,
    broker_name: String,
    queue_id: i64,
}

/// Parses the `offsetTable` of a TopicStatsTable or ConsumeStats body: fastjson writes `Map<MessageQueue, V>`
/// with the queue objects as keys (`{"offsetTable":{{"brokerName":…,"queueId":…,"topic":…}:{…},…}}`), which
/// is not JSON; each key and value is read with serde_json's stream reader. Sorted by topic, group, queue.
fn parse_queue_map(body: &[u8]) -> Result<Vec<(QueueKey, Value)>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let start = text.find("\"offsetTable\"").ok_or("no offsetTable in the answer")?;
    let mut rest = text[start + "\"offsetTable\"".len()..].trim_start();
    rest = rest.strip_prefix(':').ok_or("no ':' after offsetTable")?.trim_start();
    rest = rest.strip_prefix('{').ok_or("offsetTable is not a map")?.trim_start();
    let mut out = Vec::new();
    fn one(rest: &str) -> Result<(Value, &str), String> {
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = it.next().ok_or("truncated offsetTable")?.map_err(|e| format!("bad offsetTable: {e}"))?;
        let used = it.byte_offset();
        Ok((v, rest[used..].trim_start()))
    }
    while !rest.starts_with('}') {
        let (key, r) = one(rest)?;
        let r = r.strip_prefix(':').ok_or("no ':' after a queue key")?.trim_start();
        let (value, r) = one(r)?;
        let q = QueueKey {
            topic: key.get("topic").and_then(Value::as_str).unwrap_or_default().to_string(),
            broker_name: key.get("brokerName").and_then(Value::as_str).unwrap_or_default().to_string(),
            queue_id: key.get("queueId").and_then(Value::as_i64).unwrap_or(-1),
        };
        out.push((q, value));
        rest = match r.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None => r,
        };
        if rest.is_empty() {
            return Err("truncated offsetTable".into());
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One `/api/rates` sample.
struct Sample {
    at: Instant,
    stored: BTreeMap<String, i64>,
    bytes: BTreeMap<String, u64>,
    committed: BTreeMap<String, i64>,
}

impl Sample {
    fn from_views(topics: &Value, groups: &Value, bytes: BTreeMap<String, u64>, at: Instant) -> Sample {
        let stored = topics
            .get("storedByGroup")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_i64()?))).collect())
            .unwrap_or_default();
        let committed = groups
            .get("groups")
            .and_then(Value::as_array)
            .map(|gs| gs.iter().filter_map(|g| Some((g.get("name")?.as_str()?.to_string(), g.get("committed")?.as_i64()?))).collect())
            .unwrap_or_default();
        Sample { at, stored, bytes, committed }
    }

    fn rates_since(&self, base: Option<&Sample>) -> Value {
        let secs = base.map(|b| self.at.duration_since(b.at).as_secs_f64()).filter(|s| *s > 0.0);
        let floats = |m: &BTreeMap<String, i64>| m.iter().map(|(k, v)| (k.clone(), *v as f64)).collect::<BTreeMap<_, _>>();
        let bytes = |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| (k.clone(), *v as f64)).collect::<BTreeMap<_, _>>();
        json!({
            "intervalSeconds": secs,
            "storedMessagesPerSec": rate(&floats(&self.stored), base.map(|b| floats(&b.stored)).as_ref(), secs),
            "commitlogBytesPerSec": rate(&bytes(&self.bytes), base.map(|b| bytes(&b.bytes)).as_ref(), secs),
            "committedPerSec": rate(&floats(&self.committed), base.map(|b| floats(&b.committed)).as_ref(), secs),
            "storedMessages": self.stored,
            "committed": self.committed,
        })
    }
}

/// Per name: `(now − base) / secs`, at least 0; `null` where the base lacks the name or there is no interval.
fn rate(now: &BTreeMap<String, f64>, base: Option<&BTreeMap<String, f64>>, secs: Option<f64>) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in now {
        let r = match (base.and_then(|b| b.get(k)), secs) {
            (Some(old), Some(s)) => json!(((v - old) / s).max(0.0)),
            _ => Value::Null,
        };
        out.insert(k.clone(), r);
    }
    Value::Object(out)
}

/// The broker calls of one API request: one connection per address, closed at the end; an address whose
/// connection or call failed is not asked again (its error is repeated), so a dead node costs at most one
/// [`CONSOLE_CALL_TIMEOUT`] per request.
struct Calls<'a> {
    secrets: Option<&'a ClusterSecrets>,
    conns: HashMap<String, Result<RemotingClient, String>>,
}

impl<'a> Calls<'a> {
    fn new(secrets: Option<&'a ClusterSecrets>) -> Self {
        Calls { secrets, conns: HashMap::new() }
    }

    /// `cmd` to `addr`, any answer (transport failures as `Err`).
    async fn call_raw(&mut self, addr: &str, mut cmd: RemotingCommand) -> Result<RemotingCommand, String> {
        if let Some(Err(e)) = self.conns.get(addr) {
            return Err(e.clone());
        }
        if !self.conns.contains_key(addr) {
            let c = RemotingClient::connect(addr, CONSOLE_CALL_TIMEOUT, None).await.map_err(|e| format!("{addr} unreachable: {e}"));
            self.conns.insert(addr.to_string(), c);
        }
        let client = match self.conns.get(addr) {
            Some(Ok(c)) => c.clone(),
            Some(Err(e)) => return Err(e.clone()),
            None => return Err(format!("{addr} unreachable")),
        };
        if let Some(s) = self.secrets.filter(|_| is_raftmq_admin(cmd.code)) {
            sign_command(s, &mut cmd);
        }
        match client.invoke(cmd, CONSOLE_CALL_TIMEOUT).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let e = format!("{addr} unreachable: {e}");
                client.close();
                self.conns.insert(addr.to_string(), Err(e.clone()));
                Err(e)
            }
        }
    }

    /// `cmd` to `addr`; answers other than SUCCESS are `Err` with the code and remark.
    async fn call(&mut self, addr: &str, cmd: RemotingCommand) -> Result<RemotingCommand, String> {
        let r = self.call_raw(addr, cmd).await?;
        if r.code == ResponseCode::SUCCESS.0 {
            Ok(r)
        } else {
            Err(format!("{addr} answered {} {}", r.code, r.remark.unwrap_or_default()))
        }
    }

    fn close(&mut self) {
        for c in self.conns.drain().filter_map(|(_, c)| c.ok()) {
            c.close();
        }
    }
}

impl Drop for Calls<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A found message as the page shows it.
fn message_view(m: &DecodedMessage<'_>, broker_name: &str) -> Value {
    let (preview, truncated, note) = match m.uncompressed_body(CONSOLE_BODY_INFLATE_BYTES_MAX) {
        Ok(body) => {
            let cut = body.len().min(CONSOLE_BODY_PREVIEW_BYTES_MAX);
            (Some(String::from_utf8_lossy(&body[..cut]).into_owned()), body.len() > cut, None)
        }
        Err(e) => (None, false, Some(format!("no preview: {e}"))),
    };
    json!({
        "topic": m.topic,
        "brokerName": broker_name,
        "queueId": m.queue_id,
        "queueOffset": m.queue_offset,
        "msgId": m.uniq_key(),
        "offsetMsgId": m.offset_msg_id().to_string(),
        "keys": m.property(property::KEYS),
        "tags": m.tags(),
        "bornTimestamp": m.born_timestamp,
        "storeTimestamp": m.store_timestamp,
        "bornHost": m.born_host.to_string(),
        "storeHost": m.store_host.to_string(),
        "reconsumeTimes": m.reconsume_times,
        "properties": m.properties_map(),
        "storedBodyBytes": m.body.len(),
        "bodyPreview": preview,
        "bodyTruncated": truncated,
        "bodyNote": note,
    })
}

fn bad(why: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, why.into())
}

/// A topic name as brokers accept it (RocketMQ's rule: `[%|a-zA-Z0-9_-]`, at most 127 characters).
fn check_topic(t: &str) -> Result<(), (StatusCode, String)> {
    if t.is_empty() || t.len() > 127 || !t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-')) {
        return Err(bad("topic must be 1-127 characters of [%|a-zA-Z0-9_-]"));
    }
    Ok(())
}

async fn lookup(routes: &RouteTable, info: &ClusterInfo, p: &BTreeMap<String, String>, calls: &mut Calls<'_>) -> ApiResult {
    let get = |k: &str| p.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let topic = get("topic");
    if let Some(t) = topic {
        check_topic(t)?;
    }
    let mut notes: Vec<String> = Vec::new();
    let mut found: Vec<Value> = Vec::new();
    let how;
    if let Some(id) = get("id") {
        how = "id";
        // An offsetMsgId names its store host: ask that group directly.
        if let Ok(o) = decode_offset_msg_id(id) {
            let host = o.store_host.to_string();
            if let Some((name, b)) = info.broker_addr_table.iter().find(|(_, b)| b.broker_addrs.values().any(|a| *a == host)) {
                let mut addrs = vec![host.clone()];
                addrs.extend(b.broker_addrs.values().filter(|a| **a != host).cloned());
                for addr in addrs {
                    let h = ViewMessageRequestHeader { topic: topic.map(String::from), offset: o.commit_log_offset };
                    match calls.call(&addr, RemotingCommand::request(RequestCode::VIEW_MESSAGE_BY_ID, 0).with_header(&h)).await {
                        Ok(resp) => {
                            collect(&resp.body, name, |_| true, &mut found, &mut notes);
                            break;
                        }
                        Err(e) => notes.push(e),
                    }
                }
            }
        }
        if found.is_empty() {
            let candidates: Vec<String> = match topic {
                Some(t) => vec![t.to_string()],
                None => routes.topics().into_iter().take(CONSOLE_TOPICS_MAX).collect(),
            };
            for t in candidates {
                query_key(routes, info, &t, id, true, calls, &mut found, &mut notes).await;
                if !found.is_empty() {
                    break;
                }
            }
        }
    } else if let (Some(t), Some(key)) = (topic, get("key")) {
        how = "key";
        query_key(routes, info, t, key, false, calls, &mut found, &mut notes).await;
    } else if let (Some(t), Some(q), Some(off)) = (topic, get("queue"), get("offset")) {
        how = "offset";
        let queue: i32 = q.parse().map_err(|_| bad("queue must be a queue id (a number)"))?;
        let offset: i64 = off.parse().map_err(|_| bad("offset must be a queue offset (a number)"))?;
        let route = routes.route(t).ok_or_else(|| (StatusCode::NOT_FOUND, format!("no broker group serves topic {t}")))?;
        let groups = serving_groups(&route);
        let group = match get("broker") {
            Some(b) if groups.contains(b) => b.to_string(),
            Some(b) => return Err((StatusCode::NOT_FOUND, format!("broker group {b} does not serve topic {t}"))),
            None if groups.len() == 1 => groups.into_iter().next().unwrap_or_default(),
            None => return Err(bad(format!("topic {t} is served by {} broker groups: name one with broker=", groups.len()))),
        };
        let addr =
            group_addr(info, &group).ok_or_else(|| (StatusCode::NOT_FOUND, format!("broker group {group} has no registered member")))?;
        let h = PullMessageRequestHeader {
            consumer_group: CONSOLE_PULL_GROUP.into(),
            topic: t.to_string(),
            queue_id: queue,
            queue_offset: offset,
            max_msg_nums: 1,
            sys_flag: 0,
            commit_offset: 0,
            suspend_timeout_millis: 0,
            subscription: None,
            sub_version: 0,
            expression_type: None,
            max_msg_bytes: None,
            request_source: None,
            proxy_forward_client_id: None,
        };
        match calls.call_raw(&addr, RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h)).await {
            Ok(resp) if resp.code == ResponseCode::SUCCESS.0 => {
                collect(&resp.body, &group, |m| m.queue_offset == offset && m.queue_id == queue, &mut found, &mut notes)
            }
            Ok(resp) => notes.push(format!("{addr} answered {} {}", resp.code, resp.remark.unwrap_or_default())),
            Err(e) => notes.push(e),
        }
    } else {
        return Err(bad("name a lookup: id=ID[&topic=T], topic=T&key=K, or topic=T&queue=Q&offset=O[&broker=B]"));
    }
    let omitted = found.len().saturating_sub(CONSOLE_MESSAGES_MAX);
    found.truncate(CONSOLE_MESSAGES_MAX);
    // A dead group answers every topic of a search alike: each reason once.
    let mut seen = BTreeSet::new();
    notes.retain(|n| seen.insert(n.clone()));
    Ok(json!({"lookup": how, "messages": found, "messagesOmitted": omitted, "notes": notes}))
}

/// QUERY_MESSAGE for `key` (with `uniq`: a `UNIQ_KEY`) on every group serving `topic`.
#[allow(clippy::too_many_arguments)]
async fn query_key(
    routes: &RouteTable,
    info: &ClusterInfo,
    topic: &str,
    key: &str,
    uniq: bool,
    calls: &mut Calls<'_>,
    found: &mut Vec<Value>,
    notes: &mut Vec<String>,
) {
    let Some(route) = routes.route(topic) else {
        notes.push(format!("no broker group serves topic {topic}"));
        return;
    };
    let h = QueryMessageRequestHeader {
        topic: topic.to_string(),
        key: key.to_string(),
        max_num: CONSOLE_MESSAGES_MAX as i32,
        begin_timestamp: 0,
        end_timestamp: i64::MAX,
    };
    for group in serving_groups(&route) {
        let Some(addr) = group_addr(info, &group) else { continue };
        let mut cmd = RemotingCommand::request(RequestCode::QUERY_MESSAGE, 0).with_header(&h);
        if uniq {
            cmd = cmd.with_ext(UNIQUE_KEY_QUERY_FIELD, "true");
        }
        match calls.call_raw(&addr, cmd).await {
            Ok(resp) if resp.code == ResponseCode::SUCCESS.0 => collect(
                &resp.body,
                &group,
                |m| {
                    m.topic == topic
                        && if uniq {
                            m.uniq_key() == Some(key)
                        } else {
                            m.property(property::KEYS).is_some_and(|ks| ks.split(' ').any(|k| k == key))
                        }
                },
                found,
                notes,
            ),
            Ok(resp) if resp.code == ResponseCode::QUERY_NOT_FOUND.0 => {}
            Ok(resp) => notes.push(format!("{addr} answered {} {}", resp.code, resp.remark.unwrap_or_default())),
            Err(e) => notes.push(e),
        }
    }
}

/// Decodes the stored messages of `body` and keeps those `keep` accepts.
fn collect(body: &[u8], group: &str, keep: impl Fn(&DecodedMessage<'_>) -> bool, found: &mut Vec<Value>, notes: &mut Vec<String>) {
    for m in StoredMessages::new(body) {
        match m {
            Ok(m) if keep(&m) => {
                if found.len() <= CONSOLE_MESSAGES_MAX {
                    found.push(message_view(&m, group));
                }
            }
            Ok(_) => {}
            Err(e) => notes.push(format!("{group}: undecodable message: {e}")),
        }
    }
}

/// JSON text safe to embed anywhere: `<`, `>` and `&` (which serde_json leaves as they are; in JSON text they
/// occur only inside strings) become `\u003c`, `\u003e`, `\u0026`.
pub fn safe_json(v: &Value) -> String {
    let text = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, "application/json; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
        ],
        safe_json(v),
    )
        .into_response()
}

/// Decodes an `application/x-www-form-urlencoded` query; each name and value at most
/// [`CONSOLE_PARAM_BYTES_MAX`] bytes decoded.
fn parse_query(q: Option<&str>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        out.insert(k, v);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    if s.len() > 3 * CONSOLE_PARAM_BYTES_MAX {
        return Err(format!("a query parameter is longer than {CONSOLE_PARAM_BYTES_MAX} bytes"));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or("bad %-escape in the query")?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    if out.len() > CONSOLE_PARAM_BYTES_MAX {
        return Err(format!("a query parameter is longer than {CONSOLE_PARAM_BYTES_MAX} bytes"));
    }
    String::from_utf8(out).map_err(|_| "a query parameter is not UTF-8".into())
}

/// Runs one API request under a slot and the request deadline.
async fn api<F, Fut>(console: Arc<Console>, query: Option<String>, f: F) -> Response
where
    F: FnOnce(Arc<Console>, BTreeMap<String, String>) -> Fut,
    Fut: std::future::Future<Output = ApiResult>,
{
    let Ok(_slot) = Arc::clone(&console.slots).try_acquire_owned() else {
        let why = format!("busy: {CONSOLE_API_REQUESTS_MAX} console requests in flight; retry");
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": why}));
    };
    let params = match parse_query(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, &json!({"error": e})),
    };
    match tokio::time::timeout(CONSOLE_REQUEST_TIMEOUT, f(console, params)).await {
        Ok(Ok(v)) => json_response(StatusCode::OK, &v),
        Ok(Err((status, why))) => json_response(status, &json!({"error": why})),
        Err(_) => {
            let why = format!("the brokers did not answer within {} s", CONSOLE_REQUEST_TIMEOUT.as_secs());
            json_response(StatusCode::GATEWAY_TIMEOUT, &json!({"error": why}))
        }
    }
}

/// The console's routes (to be merged with the metrics router of the same port).
pub fn router(console: Arc<Console>) -> Router {
    let c = console;
    let (c1, c2, c3, c4, c5) = (Arc::clone(&c), Arc::clone(&c), Arc::clone(&c), Arc::clone(&c), Arc::clone(&c));
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [
                        (CONTENT_TYPE, "text/html; charset=utf-8"),
                        (HeaderName::from_static("content-security-policy"), PAGE_CSP),
                        (HeaderName::from_static("x-content-type-options"), "nosniff"),
                    ],
                    PAGE,
                )
            }),
        )
        .route(
            "/console.js",
            get(|| async {
                ([(CONTENT_TYPE, "text/javascript; charset=utf-8"), (HeaderName::from_static("x-content-type-options"), "nosniff")], SCRIPT)
            }),
        )
        .route("/api/cluster", get(move |RawQuery(q): RawQuery| api(c1, q, |c, _| async move { Ok(c.cluster().await) })))
        .route("/api/topics", get(move |RawQuery(q): RawQuery| api(c2, q, |c, _| async move { Ok(c.topics().await) })))
        .route(
            "/api/groups",
            get(move |RawQuery(q): RawQuery| {
                api(c3, q, |c, p| async move {
                    let named = p.get("group").map(|g| g.trim().to_string()).filter(|g| !g.is_empty());
                    Ok(c.groups(named.as_deref()).await)
                })
            }),
        )
        .route("/api/message", get(move |RawQuery(q): RawQuery| api(c4, q, |c, p| async move { c.message(&p).await })))
        .route("/api/rates", get(move |RawQuery(q): RawQuery| api(c5, q, |c, _| async move { Ok(c.rates().await) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastjson_queue_maps_are_read() {
        let body = br#"{"offsetTable":{{"brokerName":"b","queueId":1,"topic":"T"}:{"brokerOffset":5,"consumerOffset":3,"lastTimestamp":9},{"brokerName":"b","queueId":0,"topic":"T"}:{"brokerOffset":0,"consumerOffset":0,"lastTimestamp":0}},"consumeTps":1.5}"#;
        let m = parse_queue_map(body).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0.queue_id, 0, "sorted by queue");
        assert_eq!(int(&m[1].1, "consumerOffset"), 3);
        assert_eq!(consume_tps(std::str::from_utf8(body).unwrap()), 1.5);
        assert_eq!(parse_queue_map(br#"{"offsetTable":{}}"#).unwrap().len(), 0);
        for bad in [&b"{}"[..], br#"{"offsetTable":{{"topic":"T"}"#, br#"{"offsetTable":{{"topic":"T"}:{"#, br#"{"offsetTable":[1]}"#] {
            assert!(parse_queue_map(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn json_answers_carry_no_markup() {
        let v = json!({"body": "<script>alert(1)</script> & </b>"});
        let text = safe_json(&v);
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v, "the escapes decode to the same strings");
    }

    #[test]
    fn query_strings_are_decoded_and_bounded() {
        let p = parse_query(Some("topic=T&key=a%20b+c&id=%3Cx%3E")).unwrap();
        assert_eq!(p["key"], "a b c");
        assert_eq!(p["id"], "<x>");
        let at_limit = "k".repeat(CONSOLE_PARAM_BYTES_MAX);
        assert_eq!(parse_query(Some(&format!("key={at_limit}"))).unwrap()["key"].len(), CONSOLE_PARAM_BYTES_MAX);
        assert!(parse_query(Some(&format!("key={at_limit}k"))).unwrap_err().contains("longer than"));
        assert!(parse_query(Some("key=%zz")).is_err());
        assert!(parse_query(Some("key=%ff")).is_err(), "not UTF-8");
    }

    #[test]
    fn topics_are_checked_before_any_broker_is_asked() {
        assert!(check_topic("Good_Topic-1").is_ok());
        assert!(check_topic("%RETRY%g").is_ok());
        assert!(check_topic("<script>").is_err());
        assert!(check_topic(&"t".repeat(128)).is_err());
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let t0 = Instant::now();
        let s0 = Sample {
            at: t0,
            stored: [("a".to_string(), 10)].into(),
            bytes: [("a".to_string(), 1000)].into(),
            committed: [("g".to_string(), 4)].into(),
        };
        let first = s0.rates_since(None);
        assert_eq!(first["storedMessagesPerSec"]["a"], Value::Null, "no base yet");
        let s1 = Sample {
            at: t0 + Duration::from_secs(2),
            stored: [("a".to_string(), 30), ("b".to_string(), 5)].into(),
            bytes: [("a".to_string(), 900)].into(),
            committed: [("g".to_string(), 8)].into(),
        };
        let r = s1.rates_since(Some(&s0));
        assert_eq!(r["storedMessagesPerSec"]["a"], json!(10.0));
        assert_eq!(r["storedMessagesPerSec"]["b"], Value::Null, "not in the base");
        assert_eq!(r["commitlogBytesPerSec"]["a"], json!(0.0), "a negative difference counts as 0");
        assert_eq!(r["committedPerSec"]["g"], json!(2.0));
    }

    #[tokio::test]
    async fn a_dead_broker_is_unreachable_not_a_hang() {
        // A port nothing listens on: refused at once; the second call does not try again.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut calls = Calls::new(None);
        let started = Instant::now();
        let e = calls.call(&addr, RemotingCommand::request(RequestCode::GET_ALL_TOPIC_CONFIG, 0)).await.unwrap_err();
        assert!(e.contains("unreachable"), "{e}");
        let e2 = calls.call(&addr, RemotingCommand::request(RequestCode::GET_ALL_TOPIC_CONFIG, 0)).await.unwrap_err();
        assert_eq!(e, e2);
        assert!(started.elapsed() < CONSOLE_CALL_TIMEOUT * 2);
        // A listener that accepts and never answers: the call times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let saddr = silent.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let started = Instant::now();
        let e = calls.call(&saddr, RemotingCommand::request(RequestCode::GET_ALL_TOPIC_CONFIG, 0)).await.unwrap_err();
        assert!(e.contains("unreachable"), "{e}");
        assert!(started.elapsed() >= CONSOLE_CALL_TIMEOUT && started.elapsed() < CONSOLE_CALL_TIMEOUT * 2, "{:?}", started.elapsed());
        hold.abort();
    }

    /// A port nothing listens on.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    fn register(routes: &RouteTable, group: &str, addr: &str, topics: impl IntoIterator<Item = String>) {
        use raftmq_remoting::body::{RegisterBrokerBody, TopicConfig};
        use raftmq_remoting::header::RegisterBrokerRequestHeader;
        let h = RegisterBrokerRequestHeader {
            broker_name: group.into(),
            broker_addr: addr.into(),
            cluster_name: "DefaultCluster".into(),
            broker_id: 0,
            ..Default::default()
        };
        let mut body = RegisterBrokerBody::default();
        for t in topics {
            let c = TopicConfig { topic_name: t.clone(), read_queue_nums: 4, write_queue_nums: 4, perm: 6, ..Default::default() };
            body.topic_config_serialize_wrapper.topic_config_table.insert(t, c);
        }
        routes.register(&h, &body).unwrap();
    }

    #[tokio::test]
    async fn at_most_the_node_limit_is_asked_and_dead_nodes_show_unreachable() {
        let routes = Arc::new(RouteTable::default());
        for i in 0..=CONSOLE_NODES_MAX {
            register(&routes, &format!("group-{i:03}"), &closed_port(), []);
        }
        let console = Console::new(Arc::clone(&routes), None);
        let started = Instant::now();
        let v = console.cluster().await;
        assert!(started.elapsed() < CONSOLE_CALL_TIMEOUT * 2, "{:?}", started.elapsed());
        assert_eq!(v["nodesOmitted"], 1);
        let listed: Vec<&Value> =
            v["clusters"][0]["groups"].as_array().unwrap().iter().flat_map(|g| g["nodes"].as_array().unwrap()).collect();
        assert_eq!(listed.len(), CONSOLE_NODES_MAX);
        assert!(listed.iter().all(|n| n["reachable"] == false && n["error"].as_str().unwrap().contains("unreachable")));
    }

    #[tokio::test]
    async fn at_most_the_topic_limit_is_listed() {
        let routes = Arc::new(RouteTable::default());
        let dead = closed_port();
        register(&routes, "broker-a", &dead, (0..=CONSOLE_TOPICS_MAX).map(|i| format!("T{i:04}")));
        let console = Console::new(Arc::clone(&routes), None);
        let v = console.topics().await;
        let topics = v["topics"].as_array().unwrap();
        // TBW102 is routed too (the template every group serves): it sorts first.
        let total = routes.topics().len();
        assert_eq!(topics.len(), CONSOLE_TOPICS_MAX);
        assert_eq!(v["topicsOmitted"], total - CONSOLE_TOPICS_MAX);
        assert!(topics.iter().all(|t| t["groups"][0]["error"].as_str().unwrap().contains("unreachable")), "{v:#}");
        assert_eq!(v["storedByGroup"], json!({}), "no total for an unreadable group");
        // The message search without a topic stops at the same limit and says why it found nothing.
        let r = console.message(&[("id".to_string(), "7F0000010000A1B2C3D4E5F600000001".to_string())].into()).await.unwrap();
        assert_eq!(r["messages"], json!([]));
        assert!(r["notes"][0].as_str().unwrap().contains("unreachable"), "{r:#}");
    }

    /// A broker stand-in: lists `groups` on 201 (or answers 3 when `None`), and on 208 one queue of topic T
    /// with max offset 10 and the group's committed offset 4.
    struct FakeBroker {
        name: &'static str,
        groups: Option<Vec<String>>,
    }

    impl raftmq_net::RequestHandler for FakeBroker {
        fn handle(&self, _conn: raftmq_net::Conn, req: RemotingCommand) -> raftmq_net::server::HandlerFuture {
            let resp = match (req.request_code(), &self.groups) {
                (RequestCode::GET_ALL_SUBSCRIPTIONGROUP_CONFIG, Some(gs)) => {
                    let table: serde_json::Map<String, Value> = gs.iter().map(|g| (g.clone(), json!({"groupName": g}))).collect();
                    RemotingCommand::success_to(&req).with_body(json!({"subscriptionGroupTable": table}).to_string())
                }
                (RequestCode::GET_CONSUME_STATS, _) => {
                    let body = format!(
                        r#"{{"offsetTable":{{{{"brokerName":"{}","queueId":0,"topic":"T"}}:{{"brokerOffset":10,"consumerOffset":4,"lastTimestamp":1}}}},"consumeTps":0.0}}"#,
                        self.name
                    );
                    RemotingCommand::success_to(&req).with_body(body)
                }
                (RequestCode::GET_ALL_TOPIC_CONFIG, _) => RemotingCommand::success_to(&req).with_body(r#"{"topicConfigTable":{}}"#),
                (RequestCode::GET_TOPIC_STATS_INFO, _) => {
                    // One message in each of one more queues than a topics answer lists.
                    let entries: Vec<String> = (0..=CONSOLE_QUEUE_ROWS_MAX)
                        .map(|q| {
                            format!(
                                r#"{{"brokerName":"{}","queueId":{q},"topic":"T"}}:{{"lastUpdateTimestamp":1,"maxOffset":1,"minOffset":0}}"#,
                                self.name
                            )
                        })
                        .collect();
                    RemotingCommand::success_to(&req).with_body(format!(r#"{{"offsetTable":{{{}}}}}"#, entries.join(",")))
                }
                _ => RemotingCommand::response_to(&req, ResponseCode::REQUEST_CODE_NOT_SUPPORTED, Some("not supported".into())),
            };
            Box::pin(async move { Some(resp.into()) })
        }
    }

    async fn fake(name: &'static str, groups: Option<Vec<String>>) -> raftmq_net::RemotingServer {
        let h = Arc::new(FakeBroker { name, groups });
        raftmq_net::RemotingServer::bind("127.0.0.1:0", h, raftmq_net::ServerOptions::default()).await.unwrap()
    }

    #[tokio::test]
    async fn groups_are_listed_where_brokers_list_them_and_bounded() {
        let routes = Arc::new(RouteTable::default());
        let listing = fake("broker-a", Some((0..=CONSOLE_GROUPS_MAX).map(|i| format!("g{i:03}")).collect())).await;
        let silent = fake("broker-b", None).await;
        register(&routes, "broker-a", &listing.local_addr().to_string(), []);
        register(&routes, "broker-b", &silent.local_addr().to_string(), []);
        let console = Console::new(Arc::clone(&routes), None);
        let v = console.groups(Some("named")).await;
        assert_eq!(v["listed"], true, "{v:#}");
        assert_eq!(v["groupsOmitted"], 2, "65 listed + the named one, 64 shown: {v:#}");
        let groups = v["groups"].as_array().unwrap();
        assert_eq!(groups.len(), CONSOLE_GROUPS_MAX);
        assert_eq!(groups[0]["name"], "named", "the named group comes first");
        assert_eq!(groups[1]["name"], "g000");
        // Each group's lag over both broker groups: 6 on each.
        assert_eq!(groups[1]["lag"], 12, "{:#}", groups[1]);
        assert_eq!(groups[1]["committed"], 8);
        assert_eq!(groups[1]["queues"].as_array().unwrap().len(), 2);
        let notes = v["notes"].to_string();
        assert!(notes.contains("broker-b does not list consumer groups"), "{notes}");
        // Only brokers that answer 3: nothing listed, the named group still shown.
        let routes = Arc::new(RouteTable::default());
        register(&routes, "broker-b", &silent.local_addr().to_string(), []);
        let v = Console::new(routes, None).groups(Some("named")).await;
        assert_eq!(v["listed"], false);
        assert_eq!(v["groups"].as_array().unwrap().len(), 1);
        assert_eq!(v["groups"][0]["lag"], 6);
    }

    #[tokio::test]
    async fn at_most_the_queue_row_limit_is_listed_and_totals_count_all() {
        let routes = Arc::new(RouteTable::default());
        let broker = fake("broker-a", None).await;
        register(&routes, "broker-a", &broker.local_addr().to_string(), ["T".to_string()]);
        let v = Console::new(routes, None).topics().await;
        let t = v["topics"].as_array().unwrap().iter().find(|t| t["name"] == "T").expect("topic T");
        assert_eq!(t["groups"][0]["queues"].as_array().unwrap().len(), CONSOLE_QUEUE_ROWS_MAX, "{:#}", t["groups"][0]["error"]);
        assert_eq!(t["groups"][0]["messages"], CONSOLE_QUEUE_ROWS_MAX + 1);
        // Every routed topic gets the same answer from the stand-in: the rows past the limit are counted, and the
        // group's total covers them all.
        let topics = v["topics"].as_array().unwrap().len();
        let all = topics * (CONSOLE_QUEUE_ROWS_MAX + 1);
        assert_eq!(v["queueRowsOmitted"].as_u64().unwrap() as usize, all - CONSOLE_QUEUE_ROWS_MAX, "{topics} topics");
        assert_eq!(v["storedByGroup"]["broker-a"].as_u64().unwrap() as usize, all);
    }

    #[tokio::test]
    async fn api_requests_past_the_limit_are_refused_at_once() {
        let console = Arc::new(Console::new(Arc::new(RouteTable::default()), None));
        let held: Vec<_> = (0..CONSOLE_API_REQUESTS_MAX).map(|_| Arc::clone(&console.slots).try_acquire_owned().unwrap()).collect();
        let r = api(Arc::clone(&console), None, |c, _| async move { Ok(c.cluster().await) }).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        let r = api(Arc::clone(&console), None, |c, _| async move { Ok(c.cluster().await) }).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = api(console, Some("x=%zz".into()), |c, _| async move { Ok(c.cluster().await) }).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
