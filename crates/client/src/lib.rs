//! `raftmq-client`: the Rust client of raftmq. It speaks RocketMQ's remoting protocol, so it works against
//! raftmq broker groups (whose Raft leader is published as brokerId 0) and against Apache RocketMQ 4.x brokers.
//!
//! - [`Producer`]: sync, async, oneway, batch and ordered sends with RocketMQ's retry rules; concurrent sends
//!   are combined into batch requests automatically (`ProducerOptions::auto_batch`).
//! - [`PullConsumer`]: pull by queue and offset, store offsets yourself.
//! - [`PushConsumer`]: long-polling consumer groups (clustering or broadcasting), rebalancing, concurrent or
//!   orderly listeners, retries through the group's retry topic, offsets committed every 5 s.
//! - [`TransactionProducer`]: transactional messages — a half message, the local transaction, then commit
//!   or rollback; answers the broker's check-backs through a [`TransactionListener`].
//! - [`Admin`]: topics, cluster, consumer-group progress and offset resets.
//! - [`blocking`]: the same for code without an async runtime.
//!
//! ```no_run
//! use raftmq_client::{ClientConfig, Message, Producer, ProducerOptions};
//! # async fn demo() -> raftmq_client::Result<()> {
//! let producer = Producer::start(ClientConfig::new("127.0.0.1:9876"), ProducerOptions::new("my-producers")).await?;
//! let result = producer.send(Message::new("orders", "hello").with_tags("created")).await?;
//! println!("{result}");
//! producer.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod accumulator;
pub mod admin;
pub mod allocate;
pub mod blocking;
pub mod config;
pub mod error;
pub mod filter;
pub mod instance;
pub mod latency;
pub mod message;
mod offset_store;
pub mod producer;
pub mod pull;
pub mod push;
pub mod selector;
pub mod transaction;

pub use admin::{Admin, QueueProgress, ResetTo};
pub use allocate::{AllocateStrategy, Averagely, AveragelyByCircle, ByConfig, ByMachineRoom, ConsistentHash};
pub use config::{ClientConfig, Credentials};
pub use error::{ClientError, Result};
pub use filter::{MessageSelector, Subscription};
pub use instance::ClientInstance;
pub use message::{Message, MessageExt, MessageQueue, SendResult, SendStatus};
pub use producer::{Producer, ProducerOptions, SendFuture};
pub use pull::{PullConsumer, PullResult, PullStatus};
pub use push::{
    ConcurrentListener, ConsumeConcurrentlyStatus, ConsumeContext, ConsumeFrom, ConsumeOrderlyStatus, MessageModel, OrderlyListener,
    PushConsumer, PushConsumerOptions,
};
pub use raftmq_remoting::body::{SubscriptionGroupConfig, SubscriptionGroupWrapper};
pub use selector::{MessageQueueSelector, SelectByHash, SelectByRandom};
pub use transaction::{CheckCounts, TransactionListener, TransactionProducer, TransactionProducerOptions, TransactionSendResult, TxnState};
