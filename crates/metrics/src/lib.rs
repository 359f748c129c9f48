//! raftmq's metrics: what the hot paths update, and (feature `export`) how a node serves it to Prometheus.
//!
//! - [`Histogram`]: a fixed-bucket histogram of atomics. `observe` is a binary search over a static bucket
//!   list and two relaxed atomic adds: no lock and no allocation, so it can sit on the send path and in the
//!   commitlog's IO thread.
//! - [`TopicTable`]: per-topic counters bounded by a named limit (`metricsTopicsMax`); topics past it are
//!   counted under [`OTHER_TOPIC`], so the exported series never grow with the number of topics.
//! - [`CodeMatrix`]: requests counted by request code and response code in a fixed matrix resolved once at
//!   start-up; codes outside the known lists are counted under `OTHER`.
//! - `export` (feature): [`export::Scrape`], the writer scrape-time collectors use (on top of the
//!   `prometheus-client` text encoder); [`export::process_source`], process RSS/CPU/threads/descriptors from
//!   `/proc/self`; and [`server::MetricsServer`], the HTTP server of `GET /metrics` (axum), bounded by
//!   [`server::METRICS_HTTP_CONNECTIONS_MAX`] connections of at most [`server::METRICS_HTTP_CONN_LIFETIME`].
//!
//! Storage crates depend on this crate without `export` (atomics only); the broker and the nameserver
//! enable it.

mod codes;
mod hist;
mod topics;

pub use codes::{CodeMatrix, OTHER_CODE};
pub use hist::{Histogram, BATCH_BOUNDS, BYTES_BOUNDS, LATENCY_BOUNDS_US};
pub use topics::{TopicCounters, TopicTable, OTHER_TOPIC};

#[cfg(feature = "export")]
pub mod export;
#[cfg(feature = "export")]
pub mod server;
