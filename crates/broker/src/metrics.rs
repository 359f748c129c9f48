//! The broker's metrics (`metricsListen`): counters the request path updates, and the scrape-time source
//! that reads everything else (Raft, disk, sizes, lag, pending messages, connections) when `/metrics` is
//! fetched. See docs/operations.md, "Watching a cluster", for the list.
//!
//! Without `metricsListen` nothing is counted (the hooks find no counters). Hot-path cost with it: one [`RequestTimer`] per request (an `Arc` clone, two atomic adds for the in-flight
//! gauge, and on completion a binary search in the code matrix, one atomic add and a histogram
//! observation); per stored or pulled batch one read-locked lookup in the bounded topic table.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use raftmq_metrics::export::{Labels, Scrape, Source};
use raftmq_metrics::{CodeMatrix, Histogram, TopicTable};
use raftmq_net::server::ServerStats;
use raftmq_net::Response;
use raftmq_raft::node::Role;
use raftmq_remoting::{RequestCode, ResponseCode};

use crate::broker::BrokerInner;

/// Default `metricsTopicsMax`: topics with their own `topic` label; the rest count under `_other`.
pub const METRICS_TOPICS_MAX_DEFAULT: usize = 1_000;
/// Largest `metricsTopicsMax`.
pub const METRICS_TOPICS_MAX_LIMIT: usize = 100_000;
/// Default `metricsLagSeriesMax`: `consumer_lag` series (group, topic, queue) exported per scrape.
pub const METRICS_LAG_SERIES_MAX_DEFAULT: usize = 10_000;
/// Largest `metricsLagSeriesMax`.
pub const METRICS_LAG_SERIES_MAX_LIMIT: usize = 1_000_000;

/// The operation a request's latency is recorded under.
#[derive(Clone, Copy)]
enum Op {
    Send,
    Pull,
    Commit,
    Other,
}

/// Counters and histograms the request path updates.
#[derive(Debug)]
pub struct BrokerMetrics {
    requests: CodeMatrix,
    inflight: AtomicI64,
    send: Histogram,
    pull: Histogram,
    commit: Histogram,
    other: Histogram,
    /// Messages and bytes in and out per topic (`metricsTopicsMax`).
    pub(crate) topics: TopicTable,
    lag_series_max: usize,
}

/// raftmq's own request codes (not in RocketMQ's table), named for the `request` label.
const RAFTMQ_CODES: &[(i32, &str)] = &[
    (raftmq_remoting::codes::RAFTMQ_NODE_STATUS, "RAFTMQ_NODE_STATUS"),
    (raftmq_remoting::codes::RAFTMQ_TRANSFER_LEADER, "RAFTMQ_TRANSFER_LEADER"),
    (raftmq_remoting::codes::RAFTMQ_SET_DELAY_LEVELS, "RAFTMQ_SET_DELAY_LEVELS"),
    (raftmq_remoting::codes::RAFTMQ_MEMBERS, "RAFTMQ_MEMBERS"),
    (raftmq_remoting::codes::RAFTMQ_ADD_NODE, "RAFTMQ_ADD_NODE"),
    (raftmq_remoting::codes::RAFTMQ_PROMOTE_NODE, "RAFTMQ_PROMOTE_NODE"),
    (raftmq_remoting::codes::RAFTMQ_REMOVE_NODE, "RAFTMQ_REMOVE_NODE"),
];

/// The code matrix of a remoting server: RocketMQ's named request codes plus raftmq's, by their names.
pub fn code_matrix() -> CodeMatrix {
    let named = |c: RequestCode| c.name().map(|n| (c.0, n));
    let requests = RequestCode::KNOWN.iter().filter_map(|c| named(*c)).chain(RAFTMQ_CODES.iter().copied());
    let responses = ResponseCode::KNOWN.iter().filter_map(|c| c.name().map(|n| (c.0, n)));
    CodeMatrix::new(requests, responses)
}

impl BrokerMetrics {
    /// Empty counters with the given limits.
    pub fn new(topics_max: usize, lag_series_max: usize) -> BrokerMetrics {
        BrokerMetrics {
            requests: code_matrix(),
            inflight: AtomicI64::new(0),
            send: Histogram::latency(),
            pull: Histogram::latency(),
            commit: Histogram::latency(),
            other: Histogram::latency(),
            topics: TopicTable::new(topics_max),
            lag_series_max,
        }
    }

    /// The counters of a node with `metricsListen` set; `None` otherwise.
    pub(crate) fn for_config(cfg: &crate::config::BrokerConfig) -> Option<Arc<BrokerMetrics>> {
        cfg.metrics_listen
            .as_deref()
            .filter(|l| !l.is_empty())
            .map(|_| Arc::new(BrokerMetrics::new(cfg.metrics_topics_max, cfg.metrics_lag_series_max)))
    }

    fn histogram(&self, op: Op) -> &Histogram {
        match op {
            Op::Send => &self.send,
            Op::Pull => &self.pull,
            Op::Commit => &self.commit,
            Op::Other => &self.other,
        }
    }

    /// Counts `messages` stored in `topic` with `bytes` (stored message bytes).
    #[inline]
    pub(crate) fn stored(&self, topic: &str, messages: usize, bytes: u64) {
        self.topics.with(topic, |c| c.add_in(messages as u64, bytes));
    }

    /// Counts `messages` pulled from `topic` with `bytes`.
    #[inline]
    pub(crate) fn pulled(&self, topic: &str, messages: usize, bytes: u64) {
        if messages > 0 {
            self.topics.with(topic, |c| c.add_out(messages as u64, bytes));
        }
    }
}

/// One request being served: in flight until dropped, counted with its response code by [`RequestTimer::wrap`].
pub(crate) struct RequestTimer {
    m: Arc<BrokerMetrics>,
    row: usize,
    op: Op,
    started: Instant,
}

impl RequestTimer {
    /// Starts timing a request of `code`.
    pub(crate) fn start(m: &Arc<BrokerMetrics>, code: i32) -> RequestTimer {
        m.inflight.fetch_add(1, Ordering::Relaxed);
        let op = match RequestCode(code) {
            RequestCode::SEND_MESSAGE | RequestCode::SEND_MESSAGE_V2 | RequestCode::SEND_BATCH_MESSAGE => Op::Send,
            RequestCode::PULL_MESSAGE => Op::Pull,
            RequestCode::UPDATE_CONSUMER_OFFSET => Op::Commit,
            _ => Op::Other,
        };
        RequestTimer { row: m.requests.row(code), m: Arc::clone(m), op, started: Instant::now() }
    }

    /// Serves `fut`, then counts its response code and latency. A request without a response (oneway, or
    /// answered later) is counted under the response `OTHER`.
    pub(crate) async fn wrap(self, fut: impl Future<Output = Option<Response>>) -> Option<Response> {
        let answer = fut.await;
        let code = answer.as_ref().map_or(i32::MIN, |r| r.cmd.code);
        self.m.requests.count_row(self.row, code);
        self.m.histogram(self.op).observe_duration(self.started.elapsed());
        answer
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.m.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the `/metrics` server when `metricsListen` is set.
pub(crate) async fn serve(
    inner: &Arc<BrokerInner>,
    server: &Arc<ServerStats>,
) -> Result<Option<raftmq_metrics::server::MetricsServer>, crate::broker::BrokerError> {
    let (Some(listen), Some(metrics)) = (inner.cfg.metrics_listen.as_deref().filter(|l| !l.is_empty()), &inner.metrics) else {
        return Ok(None);
    };
    let source = BrokerSource { inner: Arc::clone(inner), metrics: Arc::clone(metrics), server: Arc::clone(server) };
    let metrics = Arc::new(raftmq_metrics::export::Metrics::new([Arc::new(source) as Arc<dyn Source>]));
    raftmq_metrics::server::MetricsServer::start(listen, raftmq_metrics::server::router(metrics))
        .await
        .map(Some)
        .map_err(|source| crate::broker::BrokerError::Listen { addr: listen.to_string(), source })
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
    }
}

/// What a scrape of a broker reads.
struct BrokerSource {
    inner: Arc<BrokerInner>,
    metrics: Arc<BrokerMetrics>,
    server: Arc<ServerStats>,
}

/// Figures read from the replicated state under one read lock.
struct StateFigures {
    queues: u64,
    units: u64,
    schedule_pending: u64,
    timer_pending: u64,
    transactions_pending: u64,
    /// Lag per (group, topic, queue), at most `lag_series_max`.
    lag: Vec<(String, String, u32, u64)>,
    lag_dropped: u64,
    /// Total lag per group (groups are bounded by `offsetGroupsMax`; capped by `lag_series_max` too).
    group_lag: Vec<(String, u64)>,
}

fn state_figures(inner: &BrokerInner, lag_series_max: usize) -> StateFigures {
    inner.node.state().with_metadata(|m| figures_of(&m.state, lag_series_max))
}

fn figures_of(s: &raftmq_state::BrokerState, lag_series_max: usize) -> StateFigures {
    use raftmq_raft::types::{SCHEDULE_TOPIC, TIMER_TOPIC};
    let mut f = StateFigures {
        queues: 0,
        units: 0,
        schedule_pending: 0,
        timer_pending: 0,
        transactions_pending: s.transactions.len() as u64,
        lag: Vec::new(),
        lag_dropped: 0,
        group_lag: Vec::new(),
    };
    for qs in s.queues.values() {
        for q in qs.values() {
            f.queues += 1;
            f.units += q.next_offset.saturating_sub(q.min_offset);
        }
    }
    let pending = |topic: &str, cursor: &dyn Fn(u32) -> u64| {
        s.queues.get(topic).map_or(0, |qs| qs.iter().map(|(id, q)| q.next_offset.saturating_sub(cursor(*id))).sum::<u64>())
    };
    f.schedule_pending = pending(SCHEDULE_TOPIC, &|q| s.schedule.cursor(q));
    f.timer_pending = pending(TIMER_TOPIC, &|q| s.schedule.timer_cursor(q));
    for (group, topics) in &s.consumer_offsets {
        let mut total = 0u64;
        for (topic, queues) in topics {
            for (qid, committed) in queues {
                let next = s.queues.get(topic).and_then(|qs| qs.get(qid)).map_or(0, |q| q.next_offset);
                let lag = next.saturating_sub(*committed);
                total += lag;
                if f.lag.len() < lag_series_max {
                    f.lag.push((group.clone(), topic.clone(), *qid, lag));
                } else {
                    f.lag_dropped += 1;
                }
            }
        }
        if f.group_lag.len() < lag_series_max {
            f.group_lag.push((group.clone(), total));
        }
    }
    f
}

impl Source for BrokerSource {
    fn collect(&self, out: &mut Scrape<'_>) -> fmt::Result {
        let b = &self.inner;
        let m = &self.metrics;
        // Requests.
        out.counters(
            "requests",
            "Requests served, by request code and response code (OTHER: codes raftmq does not name, or no response).",
            m.requests.snapshot().into_iter().map(|(req, resp, n)| (l(&[("request", req), ("response", resp)]), n)),
        )?;
        out.histograms(
            "request_latency_seconds",
            "Time from a request's arrival to its response, by operation (pull includes the long-poll wait).",
            [("send", &m.send), ("pull", &m.pull), ("commit", &m.commit), ("other", &m.other)].map(|(op, h)| (l(&[("op", op)]), h)),
        )?;
        out.gauge("requests_inflight", "Requests received and not yet answered.", m.inflight.load(Ordering::Relaxed) as f64)?;
        out.gauge("connections", "Open client connections.", self.server.connections_open() as f64)?;
        out.counter("connections_accepted", "Client connections accepted.", self.server.connections_accepted_total())?;
        out.counter(
            "connections_refused",
            "Client connections closed at once at connectionsMax.",
            self.server.connections_refused_total(),
        )?;
        out.gauge(
            "requests_inflight_bytes",
            "Frame bytes of requests received and not yet answered.",
            self.server.inflight_bytes() as f64,
        )?;
        // Topics.
        let topics = m.topics.snapshot();
        let per = |i: usize| topics.iter().map(move |(t, v)| (l(&[("topic", t)]), v[i]));
        out.counters("topic_messages_in", "Messages stored, by topic (topics past metricsTopicsMax: _other).", per(0))?;
        out.counters("topic_bytes_in", "Stored message bytes, by topic.", per(1))?;
        out.counters("topic_messages_out", "Messages returned to pulls, by topic.", per(2))?;
        out.counters("topic_bytes_out", "Message bytes returned to pulls, by topic.", per(3))?;
        // Raft.
        let st = b.node.status();
        out.gauge("raft_term", "Current Raft term.", st.term as f64)?;
        out.gauges(
            "raft_role",
            "1 for this member's current Raft role, 0 for the others.",
            [Role::Leader, Role::Follower, Role::Candidate, Role::Learner, Role::Shutdown]
                .map(|r| (l(&[("role", role_name(r))]), f64::from(u8::from(r == st.role)))),
        )?;
        out.gauge("raft_leader_id", "Node id of the known leader (-1: none).", st.leader.map_or(-1.0, |id| id as f64))?;
        out.gauge("raft_last_log_index", "Index of the last Raft log entry.", st.last_log_index.unwrap_or(0) as f64)?;
        out.gauge(
            "raft_commit_index",
            "Committed index as this member knows it (leader: quorum-acknowledged).",
            st.commit_index.unwrap_or(0) as f64,
        )?;
        out.gauge("raft_applied_index", "Last applied index.", st.applied_index.unwrap_or(0) as f64)?;
        out.gauge("raft_purged_index", "Index up to which the log was purged by retention.", st.purged_index.unwrap_or(0) as f64)?;
        out.gauge("raft_voters", "Voters of the group.", st.voters.len() as f64)?;
        let batch = b.node.batch_stats();
        out.histogram(
            "raft_entry_requests",
            "Produce requests coalesced into each Raft entry this member proposed (batching).",
            &batch.requests_per_entry,
        )?;
        out.histogram("raft_entry_bytes", "Encoded bytes of each produce entry this member proposed.", &batch.bytes_per_entry)?;
        let q = b.node.send_queue();
        out.gauge("send_queue_requests", "Produce requests waiting for the Raft log (flow control: sendQueueMax).", q.requests() as f64)?;
        out.gauge("send_queue_bytes", "Encoded bytes of those requests (flow control: sendQueueBytesMax).", q.bytes() as f64)?;
        out.counters(
            "send_queue_refused",
            "Sends answered 2 SYSTEM_BUSY by flow control: queue full (overload) or waited too long (expired).",
            [(l(&[("reason", "overload")]), q.refused_overload()), (l(&[("reason", "expired")]), q.refused_expired())],
        )?;
        out.gauge(
            "pull_parked",
            "Long-polled pulls held for new messages now (pullParkedMax, pullParkedPerConnMax).",
            b.parked_pulls.parked() as f64,
        )?;
        out.counter(
            "pull_parked_refused",
            "Pulls answered 2 SYSTEM_BUSY [PARKED_PULLS] instead of being held: their connection or the broker held the most.",
            b.parked_pulls.refused(),
        )?;
        // Storage.
        let log = b.node.commitlog();
        out.histogram(
            "fsync_latency_seconds",
            "Latency of each commitlog segment fdatasync of a group flush.",
            &log.stats().fsync_latency,
        )?;
        let ls = log.state();
        let base = ls.purged.map_or(0, |p| p.next_pos);
        out.gauge(
            "commitlog_bytes",
            "Commitlog bytes between the purge point and the write position.",
            ls.write_pos.saturating_sub(base) as f64,
        )?;
        out.gauge("commitlog_write_position_bytes", "Byte position of the next commitlog record.", ls.write_pos as f64)?;
        let du = b.disk.usage();
        out.gauge("disk_total_bytes", "Size of the store's filesystem (last measurement).", du.total as f64)?;
        out.gauge("disk_free_bytes", "Free bytes of the store's filesystem.", du.free as f64)?;
        let ratio = if du.total == 0 { 0.0 } else { du.free as f64 / du.total as f64 };
        out.gauge("disk_free_ratio", "Free fraction of the store's filesystem.", ratio)?;
        out.gauge(
            "disk_used_ratio",
            "Used fraction of the store's filesystem (sends stop above diskMaxUsedSpaceRatio).",
            if du.total == 0 { 0.0 } else { 1.0 - ratio },
        )?;
        out.gauge("disk_full", "1 while sends are refused because the disk is full.", f64::from(u8::from(b.disk.is_full())))?;
        // Replicated state.
        let f = state_figures(b, m.lag_series_max);
        out.gauge("consume_queues", "Consume queues (topic, queue id).", f.queues as f64)?;
        out.gauge("consume_queue_units", "Consume-queue units (messages) retained over all queues.", f.units as f64)?;
        out.gauge("scheduled_pending", "Delayed messages staged and not yet delivered (delay levels).", f.schedule_pending as f64)?;
        out.gauge("timer_pending", "Timer messages staged and not yet delivered.", f.timer_pending as f64)?;
        out.gauge("transactions_pending", "Transactional half messages neither committed nor rolled back.", f.transactions_pending as f64)?;
        out.gauges(
            "consumer_lag",
            "Messages of a queue after the group's committed offset (series past metricsLagSeriesMax are dropped).",
            f.lag.iter().map(|(g, t, q, lag)| (l(&[("group", g), ("topic", t), ("queue", &q.to_string())]), *lag as f64)),
        )?;
        out.gauges(
            "consumer_group_lag",
            "Messages after the group's committed offsets, over all its queues.",
            f.group_lag.iter().map(|(g, lag)| (l(&[("group", g)]), *lag as f64)),
        )?;
        out.gauge("consumer_lag_series_dropped", "consumer_lag series left out at metricsLagSeriesMax.", f.lag_dropped as f64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_matrix_names_rocketmq_and_raftmq_codes() {
        let m = code_matrix();
        m.count(RequestCode::SEND_MESSAGE.0, ResponseCode::SUCCESS.0);
        m.count(raftmq_remoting::codes::RAFTMQ_NODE_STATUS, ResponseCode::SYSTEM_ERROR.0);
        m.count(424_242, 999_999);
        let mut s = m.snapshot();
        s.sort();
        assert_eq!(s, vec![("OTHER", "OTHER", 1), ("RAFTMQ_NODE_STATUS", "SYSTEM_ERROR", 1), ("SEND_MESSAGE", "SUCCESS", 1)]);
    }

    #[test]
    fn lag_is_next_offset_minus_committed_and_series_stop_at_the_limit() {
        let mut s = raftmq_state::BrokerState::default();
        let q = |next_offset| raftmq_state::QueueState { next_offset, min_offset: 0 };
        s.queues.insert("t".into(), [(0, q(10)), (1, q(4)), (2, q(7))].into_iter().collect());
        s.queues.insert(raftmq_raft::types::SCHEDULE_TOPIC.into(), [(0, q(5))].into_iter().collect());
        s.schedule.cursors.insert(0, 2);
        for g in ["g1", "g2"] {
            s.consumer_offsets.entry(g.into()).or_default().insert("t".into(), [(0, 3), (1, 4), (2, 9)].into_iter().collect());
        }
        // Under the limit: every series, a committed offset past the end counts 0.
        let f = figures_of(&s, 10);
        assert_eq!((f.queues, f.units, f.schedule_pending), (4, 26, 3));
        assert_eq!(f.lag.iter().map(|x| x.3).collect::<Vec<_>>(), vec![7, 0, 0, 7, 0, 0]);
        assert_eq!(f.group_lag, vec![("g1".to_string(), 7), ("g2".to_string(), 7)]);
        assert_eq!(f.lag_dropped, 0);
        // At the limit: the first series are kept, the rest counted as dropped; group totals stay whole.
        let f = figures_of(&s, 4);
        assert_eq!(f.lag.len(), 4);
        assert_eq!(f.lag_dropped, 2);
        assert_eq!(f.group_lag, vec![("g1".to_string(), 7), ("g2".to_string(), 7)]);
        let f = figures_of(&s, 1);
        assert_eq!((f.lag.len(), f.lag_dropped, f.group_lag.len()), (1, 5, 1));
    }

    #[tokio::test]
    async fn a_request_is_in_flight_until_answered_and_then_counted_with_its_latency() {
        let m = Arc::new(BrokerMetrics::new(10, 10));
        let t = RequestTimer::start(&m, RequestCode::PULL_MESSAGE.0);
        assert_eq!(m.inflight.load(Ordering::Relaxed), 1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(t.wrap(async move {
            let _ = rx.await;
            None
        }));
        tokio::task::yield_now().await;
        assert_eq!(m.inflight.load(Ordering::Relaxed), 1);
        tx.send(()).unwrap();
        assert!(served.await.unwrap().is_none());
        assert_eq!(m.inflight.load(Ordering::Relaxed), 0);
        assert_eq!(m.pull.count(), 1);
        assert_eq!(m.requests.snapshot(), vec![("PULL_MESSAGE", "OTHER", 1)]);
        // A request dropped before its answer (connection closed) leaves the in-flight gauge too.
        drop(RequestTimer::start(&m, RequestCode::SEND_MESSAGE.0));
        assert_eq!(m.inflight.load(Ordering::Relaxed), 0);
    }
}
