//! A blocking facade for code without an async runtime: the same producer, pull consumer and push consumer,
//! driven by a runtime the client owns (two worker threads, created on first use). Calling these from inside
//! an async runtime is refused with [`ClientError::State`] instead of deadlocking; use the async API there.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::{ClientError, Result};
use crate::message::{Message, MessageExt, MessageQueue, SendResult};
use crate::pull::PullResult;
use crate::push::{ConsumeConcurrentlyStatus, ConsumeContext, PushConsumerOptions};
use crate::{ClientConfig, ProducerOptions};

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("raftmq-client")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ClientError::State(format!("cannot start the client runtime: {e}")))
}

fn block_on<F: Future>(f: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(ClientError::State("the blocking API was called inside an async runtime; use the async API".into()));
    }
    Ok(runtime()?.block_on(f))
}

/// Blocking [`crate::Producer`].
pub struct Producer {
    inner: crate::Producer,
}

impl Producer {
    /// Starts a producer.
    pub fn start(config: ClientConfig, opts: ProducerOptions) -> Result<Producer> {
        let inner = block_on(async { crate::Producer::start(config, opts).await })??;
        Ok(Producer { inner })
    }

    /// Sends and waits for the answer.
    pub fn send(&self, msg: Message) -> Result<SendResult> {
        block_on(self.inner.send(msg))?
    }

    /// Sends one batch (same topic, stored all or nothing).
    pub fn send_batch(&self, msgs: Vec<Message>) -> Result<SendResult> {
        block_on(self.inner.send_batch(msgs))?
    }

    /// Sends to the queue the hash of `key` selects, keeping per-key order.
    pub fn send_ordered(&self, msg: Message, key: &str) -> Result<SendResult> {
        block_on(self.inner.send_with_selector(msg, &crate::SelectByHash, key))?
    }

    /// Sends without waiting for an answer.
    pub fn send_oneway(&self, msg: Message) -> Result<()> {
        block_on(self.inner.send_oneway(msg))?
    }

    /// Stops the producer.
    pub fn shutdown(&self) {
        let _ = block_on(self.inner.shutdown());
    }
}

/// Blocking [`crate::PullConsumer`].
pub struct PullConsumer {
    inner: crate::PullConsumer,
}

impl PullConsumer {
    /// Starts a pull consumer of `group`.
    pub fn start(config: ClientConfig, group: &str) -> Result<PullConsumer> {
        let inner = block_on(crate::PullConsumer::start(config, group.to_string()))??;
        Ok(PullConsumer { inner })
    }

    /// The readable queues of `topic`.
    pub fn fetch_subscribe_queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        block_on(self.inner.fetch_subscribe_queues(topic))?
    }

    /// Pulls up to `max_nums` messages from `offset`, waiting up to `wait` for new ones.
    pub fn pull(
        &self,
        queue: &MessageQueue,
        selector: impl Into<crate::MessageSelector>,
        offset: i64,
        max_nums: i32,
        wait: Duration,
    ) -> Result<PullResult> {
        let selector = selector.into();
        if wait.is_zero() {
            block_on(self.inner.pull(queue, selector, offset, max_nums))?
        } else {
            block_on(self.inner.pull_blocking(queue, selector, offset, max_nums, wait))?
        }
    }

    /// The group's committed offset.
    pub fn fetch_consume_offset(&self, queue: &MessageQueue) -> Result<Option<i64>> {
        block_on(self.inner.fetch_consume_offset(queue))?
    }

    /// Commits the group's offset.
    pub fn update_consume_offset(&self, queue: &MessageQueue, offset: i64) -> Result<()> {
        block_on(self.inner.update_consume_offset(queue, offset))?
    }

    /// Stops the consumer.
    pub fn shutdown(&self) {
        let _ = block_on(self.inner.shutdown());
    }
}

/// Blocking [`crate::PushConsumer`] whose listener is a plain function, run on the runtime's blocking pool.
pub struct PushConsumer {
    inner: crate::PushConsumer,
}

impl PushConsumer {
    /// Starts a concurrent push consumer calling `listener` for each batch.
    pub fn start<F>(config: ClientConfig, opts: PushConsumerOptions, listener: F) -> Result<PushConsumer>
    where
        F: Fn(&[MessageExt], &ConsumeContext) -> ConsumeConcurrentlyStatus + Send + Sync + 'static,
    {
        let listener = Arc::new(listener);
        let inner = block_on(crate::PushConsumer::start_concurrently(config, opts, move |msgs: Vec<MessageExt>, ctx: ConsumeContext| {
            let listener = Arc::clone(&listener);
            async move { tokio::task::spawn_blocking(move || listener(&msgs, &ctx)).await.unwrap_or(ConsumeConcurrentlyStatus::ReconsumeLater) }
        }))??;
        Ok(PushConsumer { inner })
    }

    /// The queues this consumer holds.
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        self.inner.assigned_queues()
    }

    /// Stops the consumer, waiting for listener calls in flight and persisting offsets.
    pub fn shutdown(&self) {
        let _ = block_on(self.inner.shutdown());
    }
}
