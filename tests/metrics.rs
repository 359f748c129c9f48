//! Metrics of a real cluster (a nameserver and three `raftmq broker` processes on loopback, each serving
//! `/metrics` on its own port): the values move with traffic — sends and stored messages counted per topic,
//! consumer lag falling to 0 once the group commits its offsets, the Raft role moving to another node after
//! the leader is killed — and every metric the Grafana dashboard (cluster/monitoring) queries exists in a
//! real scrape, as does every job of the Prometheus scrape config.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::ResponseCode;

const TOPIC: &str = "MetricsTopic";
const GROUP: &str = "metrics-group";

/// The body of `GET /metrics` from `addr`.
async fn scrape(addr: &str) -> String {
    let (status, body) =
        raftmq_metrics::server::http_get(addr, "/metrics", 16 << 20).await.unwrap_or_else(|e| panic!("scrape {addr}: {e}"));
    assert_eq!(status, 200, "scrape {addr}: {body}");
    assert!(body.trim_end().ends_with("# EOF"), "{addr}: not OpenMetrics text: {body}");
    body
}

/// Sample lines as (series with labels, value).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of exactly the series `series` (name and labels as written), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    samples(text).get(series).copied()
}

/// Metric names that have at least one sample (a histogram `x` shows as `x_bucket`, `x_sum`, `x_count`).
fn names(text: &str) -> BTreeSet<String> {
    samples(text).keys().map(|s| s.split('{').next().unwrap_or(s).to_string()).collect()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_with_traffic_lag_and_failover() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    // Every node serves its own metrics; exactly one says it is the leader.
    let mut leaders = Vec::new();
    for n in &cluster.nodes {
        let text = scrape(&n.metrics_addr).await;
        assert!(value(&text, "raftmq_raft_term").unwrap_or(0.0) >= 1.0, "node {}: {text}", n.id);
        assert!(value(&text, "raftmq_process_resident_memory_bytes").unwrap_or(0.0) > 1e6, "node {}", n.id);
        if value(&text, "raftmq_raft_role{role=\"leader\"}") == Some(1.0) {
            leaders.push(n.id);
        }
    }
    assert_eq!(leaders, vec![leader]);
    let before = scrape(&cluster.node(leader).metrics_addr).await;
    let sends_ok = |t: &str| {
        ["SEND_MESSAGE", "SEND_MESSAGE_V2", "SEND_BATCH_MESSAGE"]
            .iter()
            .map(|code| value(t, &format!("raftmq_requests_total{{request=\"{code}\",response=\"SUCCESS\"}}")).unwrap_or(0.0))
            .sum::<f64>()
    };
    let sent_before = sends_ok(&before);

    // Traffic: 30 sends to two queues, all counted.
    let c = client(&cluster.node(leader).client_addr).await.expect("leader");
    for i in 0..30 {
        send(&c, TOPIC, i % 2, format!("metrics-{i}").as_bytes()).await.expect("send");
    }
    let after = scrape(&cluster.node(leader).metrics_addr).await;
    assert_eq!(sends_ok(&after) - sent_before, 30.0, "{after}");
    assert_eq!(value(&after, &format!("raftmq_topic_messages_in_total{{topic=\"{TOPIC}\"}}")), Some(30.0), "{after}");
    assert!(value(&after, &format!("raftmq_topic_bytes_in_total{{topic=\"{TOPIC}\"}}")).unwrap_or(0.0) > 30.0 * 9.0);
    assert!(value(&after, "raftmq_request_latency_seconds_count{op=\"send\"}").unwrap_or(0.0) >= 30.0, "{after}");
    assert!(value(&after, "raftmq_raft_entry_requests_count").unwrap_or(0.0) >= 1.0, "{after}");
    assert!(value(&after, "raftmq_fsync_latency_seconds_count").unwrap_or(0.0) >= 1.0, "{after}");
    assert!(value(&after, "raftmq_raft_commit_index").unwrap_or(0.0) > value(&before, "raftmq_raft_commit_index").unwrap_or(0.0));
    assert!(value(&after, "raftmq_connections").unwrap_or(0.0) >= 1.0, "{after}");
    // The nameserver counted the brokers' registrations.
    let ns = scrape(&cluster.namesrv_metrics).await;
    assert!(value(&ns, "raftmq_requests_total{request=\"REGISTER_BROKER\",response=\"SUCCESS\"}").unwrap_or(0.0) >= 3.0, "{ns}");
    assert_eq!(value(&ns, "raftmq_namesrv_brokers"), Some(3.0), "{ns}");
    assert_eq!(value(&ns, "raftmq_namesrv_broker_groups_with_master"), Some(1.0), "{ns}");

    // Consumption: pulls count messages out; lag is what is left after the committed offset, and reaches 0.
    for q in 0..2 {
        assert_eq!(pull_all(&c, TOPIC, q).await.len(), 15);
        assert_eq!(commit_offset(&c, GROUP, TOPIC, q, 5).await, ResponseCode::SUCCESS.0);
    }
    let lag = |q: u32| format!("raftmq_consumer_lag{{group=\"{GROUP}\",topic=\"{TOPIC}\",queue=\"{q}\"}}");
    let mid = scrape(&cluster.node(leader).metrics_addr).await;
    assert_eq!(value(&mid, &lag(0)), Some(10.0), "{mid}");
    assert_eq!(value(&mid, &format!("raftmq_consumer_group_lag{{group=\"{GROUP}\"}}")), Some(20.0), "{mid}");
    assert_eq!(value(&mid, &format!("raftmq_topic_messages_out_total{{topic=\"{TOPIC}\"}}")), Some(30.0), "{mid}");
    assert!(value(&mid, "raftmq_request_latency_seconds_count{op=\"commit\"}").unwrap_or(0.0) >= 2.0, "{mid}");
    for q in 0..2 {
        assert_eq!(commit_offset(&c, GROUP, TOPIC, q, 15).await, ResponseCode::SUCCESS.0);
    }
    // Every member applies the commits: lag is 0 on each of them.
    for n in &cluster.nodes {
        let addr = n.metrics_addr.clone();
        wait_for(&format!("lag 0 on node {}", n.id), Duration::from_secs(10), async || {
            let t = scrape(&addr).await;
            value(&t, &lag(0)) == Some(0.0) && value(&t, &lag(1)) == Some(0.0)
        })
        .await;
    }

    // Failover: after a kill -9 of the leader another node reports the leader role, in a higher term.
    let term = value(&after, "raftmq_raft_term").unwrap_or(0.0);
    cluster.kill(leader);
    let new = cluster.leader(Duration::from_secs(20)).await;
    assert_ne!(new, leader);
    let addr = cluster.node(new).metrics_addr.clone();
    wait_for("the new leader's role in its metrics", Duration::from_secs(10), async || {
        let t = scrape(&addr).await;
        value(&t, "raftmq_raft_role{role=\"leader\"}") == Some(1.0)
            && value(&t, "raftmq_raft_role{role=\"follower\"}") == Some(0.0)
            && value(&t, "raftmq_raft_term").unwrap_or(0.0) > term
    })
    .await;
    let other = cluster.nodes.iter().find(|n| n.id != new && n.id != leader).expect("third node").metrics_addr.clone();
    let t = scrape(&other).await;
    assert_eq!(value(&t, "raftmq_raft_role{role=\"follower\"}"), Some(1.0), "{t}");
    assert_eq!(value(&t, "raftmq_raft_leader_id"), Some(new as f64), "{t}");
}

/// Metric names in a PromQL expression: identifiers starting `raftmq_` (the dashboard only queries raftmq's
/// own metrics), with a histogram's `_bucket`/`_sum`/`_count` and a counter's `_total` kept as written.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("raftmq_") {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every `expr` string anywhere in the dashboard JSON.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_queries_only_metrics_a_cluster_serves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("cluster/monitoring/grafana-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array(), "a Grafana dashboard has a title and panels");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let queried: BTreeSet<String> = all.iter().flat_map(|e| promql_metrics(e)).collect();
    assert!(queried.len() >= 20, "the dashboard queries {} metrics: {queried:?}", queried.len());
    // Panel ids are unique (Grafana keys panel state by them).
    let ids: Vec<i64> = dashboard["panels"].as_array().unwrap().iter().filter_map(|p| p["id"].as_i64()).collect();
    assert_eq!(ids.len(), ids.iter().collect::<BTreeSet<_>>().len(), "duplicate panel ids: {ids:?}");

    // A real scrape, after enough traffic for every family to have samples (lag needs a committed group).
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_registered_leader(Duration::from_secs(10)).await;
    let c = client(&cluster.node(leader).client_addr).await.expect("leader");
    send(&c, TOPIC, 0, b"dashboard").await.expect("send");
    assert_eq!(pull_all(&c, TOPIC, 0).await.len(), 1);
    assert_eq!(commit_offset(&c, GROUP, TOPIC, 0, 1).await, ResponseCode::SUCCESS.0);
    let mut served = names(&scrape(&cluster.node(leader).metrics_addr).await);
    served.extend(names(&scrape(&cluster.namesrv_metrics).await));
    let missing: Vec<&String> = queried.iter().filter(|m| !served.contains(*m)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics no node serves: {missing:?}\nserved: {served:?}");

    // The Prometheus scrape config names the local cluster's metrics ports.
    let prom = std::fs::read_to_string(root.join("cluster/monitoring/prometheus.yml")).expect("prometheus.yml");
    for target in ["127.0.0.1:10913", "127.0.0.1:10923", "127.0.0.1:10933", "127.0.0.1:9877"] {
        assert!(prom.contains(target), "prometheus.yml does not scrape {target}");
    }
}

#[test]
fn promql_metric_names_are_extracted() {
    let got = promql_metrics("sum by (topic) (rate(raftmq_topic_messages_in_total{job=\"x\"}[1m])) / raftmq_x_count + foo_raftmq_y");
    assert_eq!(got, BTreeSet::from(["raftmq_topic_messages_in_total".to_string(), "raftmq_x_count".to_string()]));
}
