//! `bench-peers`: raftmq side by side with NATS JetStream and RabbitMQ quorum queues, driven by identical
//! workloads from one binary (scripts/bench-peers.sh starts each system and runs this against it).
//!
//! ```text
//! bench-peers raftmq   --namesrv 127.0.0.1:9876 --label raftmq-sync --out raftmq-sync.json
//! bench-peers nats     --urls nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 --out nats.json
//! bench-peers rabbitmq --uris amqp://guest:guest@127.0.0.1:5672/%2f,... --out rabbitmq.json
//! bench-peers table    --json all.json raftmq-sync.json nats.json rabbitmq.json
//! ```
//!
//! Each system subcommand runs, for `--duration` seconds each: sync send (1 producer, 1 in flight, 128 B),
//! pipelined send (`--producers` × `--inflight`, 128 B and 1 KiB), then consumes back everything the run
//! produced, and writes its rows to `--out`. With `--e2e-rates R1,R2,…` it then runs one end-to-end case per
//! rate (open-loop produce at the rate while a consumer reads; produce-to-consume latency, lost and duplicated
//! messages). With `--server-pids` every row also has the server processes' CPU per message; the load
//! generator's own CPU per message is always there.

// CPU per message and the end-to-end body header, shared with `raftmq bench` (crates/cli) so that both read
// /proc and stamp messages the same way; some of its items only `raftmq bench` uses.
#[allow(dead_code)]
#[path = "../../crates/cli/src/benchkit.rs"]
mod benchkit;
mod common;
mod nats;
mod rabbitmq;
mod raftmq;
mod table;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "bench-peers", about = "raftmq vs NATS JetStream vs RabbitMQ quorum queues: identical workloads, one table")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmark a raftmq cluster with raftmq-client.
    Raftmq(raftmq::Opts),
    /// Benchmark a NATS JetStream cluster (R3 file stream) with async-nats.
    Nats(nats::Opts),
    /// Benchmark a RabbitMQ cluster (quorum queue, publisher confirms) with lapin.
    Rabbitmq(rabbitmq::Opts),
    /// Merge per-system JSON files into one table (and one JSON list).
    Table(table::Opts),
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Raftmq(o) => raftmq::run(o).await,
        Cmd::Nats(o) => nats::run(o).await,
        Cmd::Rabbitmq(o) => rabbitmq::run(o).await,
        Cmd::Table(o) => table::run(o),
    }
}
