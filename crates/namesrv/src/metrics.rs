//! The nameserver's metrics (`raftmq namesrv --metrics-listen`): requests by code and response code,
//! request latency, requests in flight, connections, and at scrape time the route table's size (broker
//! groups, registered brokers, groups with a master, topics) plus the process figures.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use raftmq_metrics::export::{Scrape, Source};
use raftmq_metrics::{CodeMatrix, Histogram};
use raftmq_net::server::ServerStats;
use raftmq_remoting::{RequestCode, ResponseCode};

use crate::RouteTable;

/// Counters the request path updates.
#[derive(Debug)]
pub struct NamesrvMetrics {
    requests: CodeMatrix,
    latency: Histogram,
    inflight: AtomicI64,
}

impl Default for NamesrvMetrics {
    fn default() -> Self {
        let named = |c: RequestCode| c.name().map(|n| (c.0, n));
        let responses = ResponseCode::KNOWN.iter().filter_map(|c| c.name().map(|n| (c.0, n)));
        NamesrvMetrics {
            requests: CodeMatrix::new(RequestCode::KNOWN.iter().filter_map(|c| named(*c)), responses),
            latency: Histogram::latency(),
            inflight: AtomicI64::new(0),
        }
    }
}

impl NamesrvMetrics {
    /// Counts one request of `code` answered (`None`: no answer) after `started`.
    pub(crate) fn served(&self, code: i32, response: Option<i32>, started: Instant) {
        self.requests.count(code, response.unwrap_or(i32::MIN));
        self.latency.observe_duration(started.elapsed());
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub(crate) fn in_flight(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.inflight)
    }
}

/// A request being served.
pub(crate) struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a scrape of the nameserver reads.
pub(crate) struct NamesrvSource {
    pub(crate) metrics: Arc<NamesrvMetrics>,
    pub(crate) server: Arc<ServerStats>,
    pub(crate) routes: Arc<RouteTable>,
}

impl Source for NamesrvSource {
    fn collect(&self, out: &mut Scrape<'_>) -> fmt::Result {
        let m = &self.metrics;
        out.counters(
            "requests",
            "Requests served, by request code and response code (OTHER: codes raftmq does not name, or no response).",
            m.requests.snapshot().into_iter().map(|(req, resp, n)| (vec![("request", req.to_string()), ("response", resp.to_string())], n)),
        )?;
        out.histogram("namesrv_request_latency_seconds", "Time from a request's arrival to its response.", &m.latency)?;
        out.gauge("requests_inflight", "Requests received and not yet answered.", m.inflight.load(Ordering::Relaxed) as f64)?;
        out.gauge("connections", "Open client connections.", self.server.connections_open() as f64)?;
        out.counter("connections_accepted", "Client connections accepted.", self.server.connections_accepted_total())?;
        out.counter(
            "connections_refused",
            "Client connections closed at once at connectionsMax.",
            self.server.connections_refused_total(),
        )?;
        let info = self.routes.cluster_info();
        let brokers: usize = info.broker_addr_table.values().map(|b| b.broker_addrs.len()).sum();
        let mastered = info.broker_addr_table.values().filter(|b| b.broker_addrs.contains_key(&0)).count();
        out.gauge("namesrv_broker_groups", "Broker groups (broker names) with a live registration.", info.broker_addr_table.len() as f64)?;
        out.gauge("namesrv_brokers", "Live broker registrations (group members).", brokers as f64)?;
        out.gauge("namesrv_broker_groups_with_master", "Broker groups whose leader is registered as brokerId 0.", mastered as f64)?;
        out.gauge("namesrv_topics", "Topics some live broker group serves.", self.routes.topics().len() as f64)?;
        Ok(())
    }
}
