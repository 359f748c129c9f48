//! A raftmq broker node: one member of a broker group's Raft group plus a RocketMQ remoting server on its
//! client port.
//!
//! - [`config`]: the node's TOML configuration.
//! - [`acl`]: RocketMQ plain ACL on the client port (accounts, permissions, white lists, reload).
//! - [`store`]: RocketMQ message-store semantics (put, get, offsets, long polling) over the Raft member.
//! - [`topics`]: topic validation and reserved names.
//! - [`consumers`]: consumer and producer groups from heartbeats, subscriptions, expiry.
//! - `sql_filter.rs`: SQL92 property filters at pull time (`raftmq_filter` selectors), CHECK_CLIENT_CONFIG.
//! - [`broker`]: the running node — startup, nameserver registration, request dispatch; the processors
//!   live in `processor.rs` (pull, offsets, clients, topics), `send.rs` (sends and send-back), `schedule.rs`
//!   (delayed and timer delivery), `txn.rs` (transactions and the de-duplication window), `members.rs`
//!   (membership: node list, add, replace, remove), `reset.rs` (server-side consumer offset resets) and
//!   [`query`] (finding messages by key, message id or offset).
//! - `parked.rs`: bounds on long-polled pulls held per connection and per broker.
//! - `forward.rs`: members that are not the leader forward writes to it and wait out elections.
//! - [`groups`]: subscription groups (200, 201, 207); `deletion.rs`: topic deletion (215).
//! - [`retention`]: deleting old segments through the log, and refusing sends on a full disk.
//! - [`metrics`]: Prometheus metrics on `metricsListen` (request counters, latency, per-topic traffic, Raft,
//!   disk, lag), read at scrape time where they cost nothing on the request path.

// Processors return `Result<_, Reply>` where the error *is* the response to send: built once per failed
// request, so its size does not matter.
#![allow(clippy::result_large_err)]

pub use broker::{exit_status, Broker, BrokerError, EXIT_STORE_CORRUPT, EXIT_STORE_FAILED, SHUTDOWN_AFTER_FAILURE_MAX, SHUTDOWN_MAX};
pub use processor::RAFTMQ_NODE_STATUS;
pub use raftmq_raft::error::StoreFailure;
pub use raftmq_raft::node::NodeError;

pub mod acl;
pub mod admin;
pub mod broker;
pub mod config;
pub mod consumers;
mod deletion;
mod forward;
pub mod groups;
pub mod leave;
mod members;
pub mod metrics;
mod parked;
mod processor;
pub mod query;
mod reset;
pub mod retention;
mod schedule;
mod send;
mod sql_filter;
pub mod store;
pub mod topics;
mod txn;
