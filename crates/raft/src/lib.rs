//! openraft glue for raftmq: a broker group is one Raft group whose log is the commitlog.
//!
//! - [`types`]: the type configuration and the entry payload ([`types::Command`]).
//! - [`log_store`]: `RaftLogStorage` implemented by the commitlog itself (no second log).
//! - [`state_machine`]: consume queues (20-byte units pointing into the log), topics, consumer offsets,
//!   checkpoints and metadata-only snapshots at the retention boundary.
//! - [`message_index`]: the node-local index of messages by key (QUERY_MESSAGE), tailing applied entries.
//! - [`network`]: Raft RPCs over TCP with bincode frames, plus control RPCs for leader transfer.
//! - [`prevote`]: the election timer with a pre-vote round (openraft 0.9 has no PreVote).
//! - [`handshake`]: the mutual cluster-secret handshake that opens every Raft-port connection.
//! - [`member`]: a member's Raft and client addresses as the membership records them.
//! - [`node`]: starting a member, membership changes, leader transfer, the role watch, write batching, the
//!   hand-off of a leader that cannot replicate.
//! - `stall`: when a leader counts as stalled, and which follower it hands off to.
//! - [`error`]: payload errors and [`error::StoreFailure`], the storage failure that stops a node.
//!
//! openraft types stay behind this crate: the broker uses [`node::RaftNode`] and the types re-exported here.

// openraft's storage traits return its `StorageError` (over 200 bytes); helpers share that signature.
#![allow(clippy::result_large_err)]

pub mod consume_queue;
pub mod error;
pub mod handshake;
pub mod log_store;
pub mod member;
pub mod message_index;
pub mod network;
pub mod node;
pub mod prevote;
pub mod retention;
mod stall;
pub mod state_machine;
pub mod types;
