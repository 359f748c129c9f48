//! The push consumer (RocketMQ's `DefaultMQPushConsumer`): long-polling pulls underneath, one pull task per
//! assigned queue, a process queue per queue holding what was pulled and not yet consumed, and listeners
//! called concurrently (a bounded worker pool) or orderly (one batch of a queue at a time, under a broker
//! queue lock).
//!
//! Offsets: a queue's consumed offset is the smallest offset still in its process queue (or one past the
//! largest pulled when it is empty), so a crash redelivers rather than skips. Offsets are persisted every
//! `persist_offset_interval`, when a queue moves to another consumer, and on shutdown — to the broker group
//! in clustering mode, to a local file in broadcasting mode.
//!
//! Rebalancing: every `rebalance_interval`, at start, and when a broker sends NOTIFY_CONSUMER_IDS_CHANGED.
//! Each consumer sorts the group's consumer ids and the topic's queues and runs the same allocation strategy,
//! so the group agrees on a split without talking to each other.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use raftmq_remoting::body::{
    encode_json_body, ConsumeFromWhere, ConsumeType, ConsumerData, LockBatchRequestBody, LockBatchResponseBody,
    MessageModel as WireMessageModel,
};
use raftmq_remoting::header::ConsumerSendMsgBackRequestHeader;
use raftmq_remoting::{RemotingCommand, RequestCode};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::allocate::{AllocateStrategy, Averagely};
use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::filter::{MessageSelector, Subscription, SUBSCRIBE_ALL};
use crate::instance::{check_success, ClientInstance, ConsumerHook};
use crate::message::{MessageExt, MessageQueue};
use crate::offset_store::{Backend, OffsetStore};
use crate::pull::{consumer_ids, max_offset, pull_queue, query_consumer_offset, read_queues, search_offset, PullSpec, PullStatus};

/// How a group shares messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MessageModel {
    /// The group's consumers split the queues; each message goes to one of them (the default).
    #[default]
    Clustering,
    /// Every consumer gets every message; progress is kept per consumer in a local file.
    Broadcasting,
}

/// Where a group with no committed offset starts on a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConsumeFrom {
    /// At the queue's end: only new messages (the default).
    #[default]
    LastOffset,
    /// At the queue's start.
    FirstOffset,
    /// At the first message stored at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// What a concurrent listener says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumeConcurrentlyStatus {
    /// Consumed; the offset may move past it.
    ConsumeSuccess,
    /// Deliver again later (through the group's retry topic; in broadcasting mode the batch is dropped, as in
    /// RocketMQ).
    ReconsumeLater,
}

/// What an orderly listener says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumeOrderlyStatus {
    /// Consumed; the offset moves past it.
    Success,
    /// Pause this queue and deliver the same batch again after `suspend_current_queue_time`.
    SuspendCurrentQueueAMoment,
}

/// What a listener is told about its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeContext {
    /// The queue the batch came from.
    pub queue: MessageQueue,
}

/// A boxed listener future.
pub type ListenerFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Called with batches of messages, many at once. A panic counts as `ReconsumeLater`.
pub trait ConcurrentListener: Send + Sync + 'static {
    /// Consumes a batch.
    fn consume(&self, msgs: Vec<MessageExt>, ctx: ConsumeContext) -> ListenerFuture<ConsumeConcurrentlyStatus>;
}

impl<F, Fut> ConcurrentListener for F
where
    F: Fn(Vec<MessageExt>, ConsumeContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ConsumeConcurrentlyStatus> + Send + 'static,
{
    fn consume(&self, msgs: Vec<MessageExt>, ctx: ConsumeContext) -> ListenerFuture<ConsumeConcurrentlyStatus> {
        Box::pin(self(msgs, ctx))
    }
}

/// Called with the batches of one queue in queue order, never two of one queue at once. A panic counts as
/// `SuspendCurrentQueueAMoment`.
pub trait OrderlyListener: Send + Sync + 'static {
    /// Consumes a batch.
    fn consume(&self, msgs: Vec<MessageExt>, ctx: ConsumeContext) -> ListenerFuture<ConsumeOrderlyStatus>;
}

impl<F, Fut> OrderlyListener for F
where
    F: Fn(Vec<MessageExt>, ConsumeContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ConsumeOrderlyStatus> + Send + 'static,
{
    fn consume(&self, msgs: Vec<MessageExt>, ctx: ConsumeContext) -> ListenerFuture<ConsumeOrderlyStatus> {
        Box::pin(self(msgs, ctx))
    }
}

/// Push consumer settings; defaults are RocketMQ's.
#[derive(Debug, Clone)]
pub struct PushConsumerOptions {
    /// Consumer group.
    pub group: String,
    /// (topic, selector) pairs.
    pub subscriptions: Vec<(String, MessageSelector)>,
    /// Clustering (default) or broadcasting.
    pub model: MessageModel,
    /// Where a group without an offset starts.
    pub consume_from: ConsumeFrom,
    /// How the group splits queues (default [`Averagely`]).
    pub allocate: Arc<dyn AllocateStrategy>,
    /// Listener calls running at once across all queues (20).
    pub consume_concurrency: usize,
    /// Messages per listener call (1).
    pub consume_batch_size: usize,
    /// Messages per pull (32).
    pub pull_batch_size: i32,
    /// Stop pulling a queue while it holds this many unconsumed messages (1000).
    pub pull_threshold_for_queue: usize,
    /// Stop pulling a queue while it holds this many MiB of unconsumed bodies (100).
    pub pull_threshold_size_for_queue_mib: usize,
    /// Concurrent mode: stop pulling a queue while the offsets it holds span more than this (2000).
    pub consume_concurrently_max_span: i64,
    /// Redeliveries before a message goes to the dead-letter topic. `None`: 16 for concurrent listeners,
    /// unlimited for orderly ones (RocketMQ's `-1`).
    pub max_reconsume_times: Option<i32>,
    /// Orderly mode: pause after `SuspendCurrentQueueAMoment` (1 s).
    pub suspend_current_queue_time: Duration,
    /// Rebalance period (20 s).
    pub rebalance_interval: Duration,
    /// Offset persistence period (5 s).
    pub persist_offset_interval: Duration,
    /// How long a broker may hold a pull that found nothing (15 s).
    pub long_polling_suspend: Duration,
    /// Pause after a failed pull (1 s; RocketMQ waits 3 s).
    pub pull_error_backoff: Duration,
    /// Broadcasting offsets directory; see [`PushConsumerOptions::broadcast_offset_dir`].
    pub broadcast_offset_dir: Option<PathBuf>,
    /// Longest `shutdown` waits for listener calls in flight (60 s).
    pub shutdown_await: Duration,
}

impl PushConsumerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> PushConsumerOptions {
        PushConsumerOptions {
            group: group.into(),
            subscriptions: Vec::new(),
            model: MessageModel::Clustering,
            consume_from: ConsumeFrom::LastOffset,
            allocate: Arc::new(Averagely),
            consume_concurrency: 20,
            consume_batch_size: 1,
            pull_batch_size: 32,
            pull_threshold_for_queue: 1000,
            pull_threshold_size_for_queue_mib: 100,
            consume_concurrently_max_span: 2000,
            max_reconsume_times: None,
            suspend_current_queue_time: Duration::from_secs(1),
            rebalance_interval: Duration::from_secs(20),
            persist_offset_interval: Duration::from_secs(5),
            long_polling_suspend: Duration::from_secs(15),
            pull_error_backoff: Duration::from_secs(1),
            broadcast_offset_dir: None,
            shutdown_await: Duration::from_secs(60),
        }
    }

    /// Adds a subscription: `topic` with a tag expression (`*` or `TagA || TagB`, as a string) or a
    /// [`MessageSelector`] (e.g. `MessageSelector::sql("a > 5 AND TAGS IN ('x')")`).
    pub fn subscribe(mut self, topic: impl Into<String>, selector: impl Into<MessageSelector>) -> PushConsumerOptions {
        self.subscriptions.push((topic.into(), selector.into()));
        self
    }

    /// Sets the message model.
    pub fn with_model(mut self, model: MessageModel) -> PushConsumerOptions {
        self.model = model;
        self
    }

    /// Sets where a new group starts.
    pub fn with_consume_from(mut self, from: ConsumeFrom) -> PushConsumerOptions {
        self.consume_from = from;
        self
    }

    /// Sets the allocation strategy.
    pub fn with_allocate(mut self, strategy: impl AllocateStrategy + 'static) -> PushConsumerOptions {
        self.allocate = Arc::new(strategy);
        self
    }

    /// The broadcasting offsets directory: the configured one, else `$RAFTMQ_OFFSETS_DIR`, else
    /// `~/.rocketmq_offsets`. The file is `<dir>/<clientId>/<group>/offsets.json`.
    pub fn broadcast_offset_dir(&self) -> PathBuf {
        self.broadcast_offset_dir.clone().unwrap_or_else(OffsetStore::default_dir)
    }
}

/// The `%RETRY%<group>` topic RocketMQ redelivers a group's failed messages through.
pub fn retry_topic(group: &str) -> String {
    format!("%RETRY%{group}")
}

#[derive(Clone)]
enum Listener {
    Concurrent(Arc<dyn ConcurrentListener>),
    Orderly(Arc<dyn OrderlyListener>),
}

/// Pulled, not yet consumed messages of one queue.
#[derive(Default)]
struct PqState {
    msgs: BTreeMap<i64, MessageExt>,
    /// Orderly mode: the batch handed to the listener.
    consuming: BTreeMap<i64, MessageExt>,
    bytes: usize,
    /// Largest offset ever put here.
    max_offset: i64,
}

struct ProcessQueue {
    queue: MessageQueue,
    state: Mutex<PqState>,
    dropped: AtomicBool,
    locked: AtomicBool,
    last_locked: Mutex<Option<Instant>>,
    /// Wakes the orderly worker when messages arrive or the queue is dropped.
    wake: Notify,
    /// Orderly mode: held while the listener consumes a batch of this queue, so that a queue moving to
    /// another consumer is unlocked only between batches.
    consume_lock: tokio::sync::Mutex<()>,
    /// The pull task. (Listener calls are never aborted: they finish and see the queue dropped.)
    pull_task: Mutex<Option<JoinHandle<()>>>,
}

/// RocketMQ's `REBALANCE_LOCK_MAX_LIVE_TIME`: a lock not renewed this long is not trusted (the broker's lasts 60 s).
const LOCK_TRUSTED_FOR: Duration = Duration::from_secs(30);
/// Lock renewal period (RocketMQ: 20 s).
const LOCK_RENEW_EVERY: Duration = Duration::from_secs(20);
/// RocketMQ's default delay-level table in seconds (`messageDelayLevel`), for retries the client schedules
/// itself.
const DEFAULT_LEVEL_SECS: [u64; 18] = [1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200];

/// When a message whose send-back failed is consumed again locally: the broker's retry schedule (level
/// 3 + reconsumeTimes before this failure, on the default table), so a broker that cannot take the
/// send-back changes where the retry happens, not when. `reconsume_times` is the count after this failure.
pub(crate) fn local_retry_delay(reconsume_times: i32) -> Duration {
    let level = (2 + reconsume_times.max(1) as usize).min(DEFAULT_LEVEL_SECS.len());
    Duration::from_secs(DEFAULT_LEVEL_SECS[level - 1])
}

impl ProcessQueue {
    fn new(queue: MessageQueue) -> ProcessQueue {
        ProcessQueue {
            queue,
            state: Mutex::default(),
            dropped: AtomicBool::new(false),
            locked: AtomicBool::new(false),
            last_locked: Mutex::new(None),
            wake: Notify::new(),
            consume_lock: tokio::sync::Mutex::new(()),
            pull_task: Mutex::new(None),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, PqState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    fn drop_queue(&self) {
        self.dropped.store(true, Ordering::Release);
        self.wake.notify_one();
        self.stop_pulling();
    }

    fn stop_pulling(&self) {
        if let Some(t) = self.pull_task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }

    fn put(&self, msgs: &[MessageExt]) {
        let mut st = self.st();
        for m in msgs {
            if st.msgs.insert(m.queue_offset, m.clone()).is_none() {
                st.bytes += m.body.len();
            }
            st.max_offset = st.max_offset.max(m.queue_offset);
        }
    }

    /// Removes consumed messages; returns the queue's new consumed offset.
    fn remove(&self, offsets: &[i64]) -> i64 {
        let mut st = self.st();
        for o in offsets {
            if let Some(m) = st.msgs.remove(o) {
                st.bytes -= m.body.len();
            }
        }
        st.msgs.keys().next().copied().unwrap_or(st.max_offset + 1)
    }

    /// (count, bytes, span) for flow control.
    fn load(&self) -> (usize, usize, i64) {
        let st = self.st();
        let span = match (st.msgs.keys().next(), st.msgs.keys().next_back()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        };
        (st.msgs.len() + st.consuming.len(), st.bytes, span)
    }

    /// Orderly: moves the first `n` messages to the consuming batch.
    fn take(&self, n: usize) -> Vec<MessageExt> {
        let mut st = self.st();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some((o, m)) = st.msgs.pop_first() else { break };
            st.consuming.insert(o, m.clone());
            out.push(m);
        }
        out
    }

    /// Orderly: the batch is consumed; returns the new consumed offset.
    fn commit(&self) -> Option<i64> {
        let mut st = self.st();
        let last = st.consuming.keys().next_back().copied();
        let freed: usize = st.consuming.values().map(|m| m.body.len()).sum();
        st.bytes -= freed;
        st.consuming.clear();
        last.map(|o| o + 1)
    }

    /// Orderly: the batch goes back to be consumed again, with its redelivery count raised.
    fn rollback(&self) {
        let mut st = self.st();
        let batch = std::mem::take(&mut st.consuming);
        for (o, mut m) in batch {
            m.reconsume_times += 1;
            st.msgs.insert(o, m);
        }
    }

    fn lock_is_fresh(&self) -> bool {
        self.locked.load(Ordering::Acquire)
            && self.last_locked.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t.elapsed() < LOCK_TRUSTED_FOR)
    }

    fn set_locked(&self, locked: bool) {
        self.locked.store(locked, Ordering::Release);
        if locked {
            *self.last_locked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.wake.notify_one();
        }
    }
}

struct PushInner {
    opts: PushConsumerOptions,
    client: ClientInstance,
    subscriptions: Vec<Subscription>,
    listener: Listener,
    offsets: OffsetStore,
    table: Mutex<BTreeMap<MessageQueue, Arc<ProcessQueue>>>,
    rebalance_wake: Notify,
    running: AtomicBool,
    permits: Arc<Semaphore>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    consumed: AtomicUsize,
}

/// A started push consumer. Cheap to clone.
#[derive(Clone)]
pub struct PushConsumer {
    inner: Arc<PushInner>,
}

struct Hook(Weak<PushInner>);

impl ConsumerHook for Hook {
    fn consumer_data(&self) -> ConsumerData {
        match self.0.upgrade() {
            Some(inner) => inner.consumer_data(),
            None => ConsumerData::default(),
        }
    }

    fn trigger_rebalance(&self) {
        if let Some(inner) = self.0.upgrade() {
            inner.rebalance_wake.notify_one();
        }
    }
}

impl PushConsumer {
    /// Starts a consumer whose listener handles batches concurrently.
    pub async fn start_concurrently(config: ClientConfig, opts: PushConsumerOptions, listener: impl ConcurrentListener) -> Result<Self> {
        Self::start(config, opts, Listener::Concurrent(Arc::new(listener))).await
    }

    /// Starts a consumer whose listener handles each queue in order, one batch at a time.
    pub async fn start_orderly(config: ClientConfig, opts: PushConsumerOptions, listener: impl OrderlyListener) -> Result<Self> {
        Self::start(config, opts, Listener::Orderly(Arc::new(listener))).await
    }

    async fn start(config: ClientConfig, opts: PushConsumerOptions, listener: Listener) -> Result<Self> {
        if opts.group.is_empty() {
            return Err(ClientError::State("consumer group is empty".into()));
        }
        if opts.subscriptions.is_empty() {
            return Err(ClientError::State(format!("consumer {} subscribes to nothing", opts.group)));
        }
        let mut subscriptions = Vec::new();
        for (topic, expr) in &opts.subscriptions {
            crate::producer::validate_topic(topic)?;
            subscriptions.push(Subscription::with_selector(topic, expr)?);
        }
        if opts.model == MessageModel::Clustering {
            subscriptions.push(Subscription::parse(&retry_topic(&opts.group), SUBSCRIBE_ALL)?);
        }
        let client = ClientInstance::get_or_create(&config)?;
        let backend = match opts.model {
            MessageModel::Clustering => Backend::Remote,
            MessageModel::Broadcasting => {
                Backend::LocalFile(opts.broadcast_offset_dir().join(client.client_id()).join(&opts.group).join("offsets.json"))
            }
        };
        let inner = Arc::new(PushInner {
            offsets: OffsetStore::new(&opts.group, backend),
            permits: Arc::new(Semaphore::new(opts.consume_concurrency.max(1))),
            client: client.clone(),
            subscriptions,
            listener,
            table: Mutex::default(),
            rebalance_wake: Notify::new(),
            running: AtomicBool::new(true),
            tasks: Mutex::default(),
            consumed: AtomicUsize::new(0),
            opts,
        });
        client.register_consumer(&inner.opts.group, Arc::new(Hook(Arc::downgrade(&inner))))?;
        client.acquire();
        // Routes first (so heartbeats know the brokers), then a heartbeat (so brokers list us), then the split.
        for s in &inner.subscriptions {
            if let Err(e) = client.update_route(&s.topic).await {
                warn!(topic = %s.topic, error = %e, "no route yet; will retry at the next rebalance");
            }
        }
        client.heartbeat_all().await;
        inner.rebalance().await;
        inner.spawn_background();
        info!(group = %inner.opts.group, client = %client.client_id(), "push consumer started");
        Ok(PushConsumer { inner })
    }

    /// The queues this consumer currently holds.
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// The client id the group knows this consumer by.
    pub fn client_id(&self) -> &str {
        self.inner.client.client_id()
    }

    /// Messages handed to the listener and acknowledged so far.
    pub fn consumed_count(&self) -> usize {
        self.inner.consumed.load(Ordering::Relaxed)
    }

    /// Rebalances now instead of at the next period.
    pub async fn rebalance_now(&self) {
        self.inner.client.heartbeat_all().await;
        self.inner.rebalance().await;
    }

    /// Persists the consumed offsets now.
    pub async fn persist_offsets(&self) {
        self.inner.persist_all().await;
    }

    /// Stops pulling, waits for listener calls in flight (up to `shutdown_await`), persists offsets, releases
    /// orderly queue locks and leaves the group (the others rebalance at once).
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if !inner.running.swap(false, Ordering::AcqRel) {
            return;
        }
        for t in inner.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        let pqs: Vec<Arc<ProcessQueue>> = inner.table.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        // Stop pulling; queued listener calls see `running == false` and return without consuming.
        for pq in &pqs {
            pq.stop_pulling();
            pq.wake.notify_one();
        }
        let all = inner.opts.consume_concurrency.max(1) as u32;
        if tokio::time::timeout(inner.opts.shutdown_await, inner.permits.acquire_many(all)).await.is_err() {
            warn!(group = %inner.opts.group, "listener calls still running after {:?}; shutting down anyway", inner.opts.shutdown_await);
        }
        inner.permits.close();
        for pq in &pqs {
            pq.drop_queue();
        }
        inner.persist_all().await;
        if matches!(inner.listener, Listener::Orderly(_)) && inner.opts.model == MessageModel::Clustering {
            let queues: Vec<MessageQueue> = pqs.iter().map(|p| p.queue.clone()).collect();
            inner.unlock(&queues).await;
        }
        inner.client.unregister_consumer(&inner.opts.group).await;
        inner.client.release();
        info!(group = %inner.opts.group, "push consumer stopped");
    }
}

impl PushInner {
    fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    fn is_orderly(&self) -> bool {
        matches!(self.listener, Listener::Orderly(_))
    }

    fn needs_locks(&self) -> bool {
        self.is_orderly() && self.opts.model == MessageModel::Clustering
    }

    fn max_reconsume_times(&self) -> i32 {
        match (self.opts.max_reconsume_times, self.is_orderly()) {
            (Some(n), _) => n,
            (None, false) => 16,
            (None, true) => i32::MAX,
        }
    }

    fn subscription(&self, topic: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| s.topic == topic)
    }

    fn consumer_data(&self) -> ConsumerData {
        ConsumerData {
            group_name: self.opts.group.clone(),
            consume_type: ConsumeType::ConsumePassively,
            message_model: match self.opts.model {
                MessageModel::Clustering => WireMessageModel::Clustering,
                MessageModel::Broadcasting => WireMessageModel::Broadcasting,
            },
            consume_from_where: match self.opts.consume_from {
                ConsumeFrom::LastOffset => ConsumeFromWhere::ConsumeFromLastOffset,
                ConsumeFrom::FirstOffset => ConsumeFromWhere::ConsumeFromFirstOffset,
                ConsumeFrom::Timestamp(_) => ConsumeFromWhere::ConsumeFromTimestamp,
            },
            subscription_data_set: self.subscriptions.iter().map(Subscription::to_data).collect(),
            unit_mode: false,
        }
    }

    fn spawn_background(self: &Arc<Self>) {
        let mut tasks = Vec::new();
        let weak = Arc::downgrade(self);
        let every = self.opts.rebalance_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let woken = tokio::select! {
                    _ = tokio::time::sleep(every) => false,
                    _ = inner.rebalance_wake.notified() => true,
                };
                if !inner.running() {
                    return;
                }
                if woken {
                    // Let the rest of the group's heartbeats land before recomputing the split.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                inner.rebalance().await;
            }
        }));
        let weak = Arc::downgrade(self);
        let every = self.opts.persist_offset_interval;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.persist_all().await;
            }
        }));
        if self.needs_locks() {
            let weak = Arc::downgrade(self);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(LOCK_RENEW_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let queues: Vec<MessageQueue> = inner.table.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    inner.lock(&queues).await;
                }
            }));
        }
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend(tasks);
    }

    fn queues_of(&self) -> Vec<MessageQueue> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    async fn persist_all(&self) {
        let queues = self.queues_of();
        self.offsets.persist(&self.client, &queues).await;
    }

    // ---- rebalancing -------------------------------------------------------------------------------

    async fn rebalance(self: &Arc<Self>) {
        for sub in self.subscriptions.clone() {
            if !self.running() {
                return;
            }
            let queues = match read_queues(&self.client, &sub.topic).await {
                Ok(q) => q,
                Err(e) => {
                    debug!(topic = %sub.topic, error = %e, "rebalance: no route");
                    continue;
                }
            };
            let mine = match self.opts.model {
                MessageModel::Broadcasting => queues,
                MessageModel::Clustering => {
                    let Some(broker) = queues.first().map(|q| q.broker_name.clone()) else {
                        self.update_assignment(&sub.topic, Vec::new()).await;
                        continue;
                    };
                    let ids = match consumer_ids(&self.client, &self.opts.group, &broker).await {
                        Ok(ids) => ids,
                        Err(e) => {
                            debug!(topic = %sub.topic, error = %e, "rebalance: consumer list unavailable");
                            continue;
                        }
                    };
                    if !ids.iter().any(|i| i == self.client.client_id()) {
                        // The broker has not seen our heartbeat yet; keep what we hold until it has.
                        self.client.heartbeat_all().await;
                        continue;
                    }
                    self.opts.allocate.allocate(&self.opts.group, self.client.client_id(), &queues, &ids)
                }
            };
            self.update_assignment(&sub.topic, mine).await;
        }
    }

    async fn update_assignment(self: &Arc<Self>, topic: &str, mine: Vec<MessageQueue>) {
        let mine: BTreeSet<MessageQueue> = mine.into_iter().collect();
        let current: Vec<MessageQueue> =
            self.table.lock().unwrap_or_else(|e| e.into_inner()).keys().filter(|q| q.topic == topic).cloned().collect();
        let removed: Vec<MessageQueue> = current.iter().filter(|q| !mine.contains(*q)).cloned().collect();
        for q in &removed {
            let pq = self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(q);
            if let Some(pq) = pq {
                pq.drop_queue();
                if self.is_orderly() {
                    // Let a batch in progress finish (and commit its offset) before the lock is given up;
                    // RocketMQ waits up to 1 s the same way.
                    let _ = tokio::time::timeout(Duration::from_secs(1), pq.consume_lock.lock()).await;
                }
            }
            self.offsets.persist(&self.client, std::slice::from_ref(q)).await;
            self.offsets.remove(q);
            info!(group = %self.opts.group, queue = ?q, "queue released");
        }
        if !removed.is_empty() && self.needs_locks() {
            self.unlock(&removed).await;
        }
        let added: Vec<MessageQueue> = mine.iter().filter(|q| !current.contains(q)).cloned().collect();
        if added.is_empty() {
            return;
        }
        let locked: BTreeSet<MessageQueue> = if self.needs_locks() { self.lock(&added).await } else { added.iter().cloned().collect() };
        for q in added {
            if !locked.contains(&q) {
                debug!(group = %self.opts.group, queue = ?q, "queue still locked by another consumer; retrying at the next rebalance");
                continue;
            }
            let start = match self.pull_start(&q).await {
                Ok(o) => o,
                Err(e) => {
                    warn!(group = %self.opts.group, queue = ?q, error = %e, "cannot find where to start; retrying at the next rebalance");
                    continue;
                }
            };
            let pq = Arc::new(ProcessQueue::new(q.clone()));
            pq.set_locked(self.needs_locks());
            self.table.lock().unwrap_or_else(|e| e.into_inner()).insert(q.clone(), Arc::clone(&pq));
            *pq.pull_task.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(tokio::spawn(Arc::clone(self).pull_loop(Arc::clone(&pq), start)));
            if self.is_orderly() {
                tokio::spawn(Arc::clone(self).orderly_worker(Arc::clone(&pq)));
            }
            info!(group = %self.opts.group, queue = ?q, offset = start, "queue assigned");
        }
    }

    /// Where to start pulling `q`: the committed offset, else the consume-from setting.
    async fn pull_start(&self, q: &MessageQueue) -> Result<i64> {
        if let Some(o) = self.offsets.read_persisted(&self.client, q).await?.filter(|o| *o >= 0) {
            return Ok(o);
        }
        let retry = q.topic.starts_with("%RETRY%");
        let start = match self.opts.consume_from {
            _ if retry => 0,
            ConsumeFrom::LastOffset => max_offset(&self.client, q).await?,
            ConsumeFrom::FirstOffset => 0,
            ConsumeFrom::Timestamp(ts) => search_offset(&self.client, q, ts).await?,
        };
        self.offsets.update(q, start, false);
        Ok(start)
    }

    /// Locks `queues` on their brokers' leaders; returns those now held.
    async fn lock(&self, queues: &[MessageQueue]) -> BTreeSet<MessageQueue> {
        let mut by_broker: BTreeMap<&str, Vec<MessageQueue>> = BTreeMap::new();
        for q in queues {
            by_broker.entry(q.broker_name.as_str()).or_default().push(q.clone());
        }
        let mut held = BTreeSet::new();
        for (broker, qs) in by_broker {
            let body = LockBatchRequestBody {
                consumer_group: self.opts.group.clone(),
                client_id: self.client.client_id().to_string(),
                only_this_broker: false,
                mq_set: qs.clone(),
            };
            let result = async {
                let cmd = RemotingCommand::request(RequestCode::LOCK_BATCH_MQ, 0).with_body(encode_json_body(&body)?);
                let resp = check_success(broker, self.client.invoke_on_leader(broker, cmd, self.client.config().request_timeout).await?)?;
                let r: LockBatchResponseBody = raftmq_remoting::body::decode_json_body("LockBatchResponseBody", &resp.body)?;
                Ok::<_, ClientError>(r.lock_ok_mq_set)
            }
            .await;
            let ok: BTreeSet<MessageQueue> = match result {
                Ok(set) => set.into_iter().collect(),
                Err(e) => {
                    debug!(%broker, error = %e, "lock request failed");
                    BTreeSet::new()
                }
            };
            for q in &qs {
                if let Some(pq) = self.table.lock().unwrap_or_else(|e| e.into_inner()).get(q) {
                    pq.set_locked(ok.contains(q));
                }
            }
            held.extend(ok);
        }
        held
    }

    async fn unlock(&self, queues: &[MessageQueue]) {
        let mut by_broker: BTreeMap<&str, Vec<MessageQueue>> = BTreeMap::new();
        for q in queues {
            by_broker.entry(q.broker_name.as_str()).or_default().push(q.clone());
        }
        for (broker, qs) in by_broker {
            let body = LockBatchRequestBody {
                consumer_group: self.opts.group.clone(),
                client_id: self.client.client_id().to_string(),
                only_this_broker: false,
                mq_set: qs,
            };
            let Ok(body) = encode_json_body(&body) else { continue };
            let cmd = RemotingCommand::request(RequestCode::UNLOCK_BATCH_MQ, 0).with_body(body);
            if let Err(e) = self.client.invoke_on_leader(broker, cmd, self.client.config().request_timeout).await {
                debug!(%broker, error = %e, "unlock failed; the broker's lock expires by itself");
            }
        }
    }

    // ---- pulling -----------------------------------------------------------------------------------

    async fn pull_loop(self: Arc<Self>, pq: Arc<ProcessQueue>, mut offset: i64) {
        let Some(sub) = self.subscription(&pq.queue.topic).cloned() else { return };
        let size_max = self.opts.pull_threshold_size_for_queue_mib << 20;
        while self.running() && !pq.is_dropped() {
            let (count, bytes, span) = pq.load();
            let over_span = !self.is_orderly() && span > self.opts.consume_concurrently_max_span;
            if count >= self.opts.pull_threshold_for_queue || bytes >= size_max || over_span {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if self.needs_locks() && !pq.lock_is_fresh() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let spec = PullSpec {
                group: &self.opts.group,
                queue: &pq.queue,
                subscription: &sub,
                offset,
                max_nums: self.opts.pull_batch_size,
                suspend: Some(self.opts.long_polling_suspend),
                commit_offset: None,
            };
            let timeout = self.opts.long_polling_suspend + self.client.config().request_timeout;
            match pull_queue(&self.client, &spec, timeout).await {
                Ok(r) => {
                    if pq.is_dropped() {
                        return;
                    }
                    match r.status {
                        PullStatus::Found if !r.messages.is_empty() => {
                            pq.put(&r.messages);
                            self.dispatch(&pq, r.messages);
                        }
                        PullStatus::NoMatchedMsg if r.next_begin_offset == offset => {
                            // "Retry" without progress: a member that is behind (e.g. just restarted) answered.
                            // Pause briefly and look the leader up again instead of spinning on it.
                            self.client.refresh_route_soon(&pq.queue.topic);
                            tokio::time::sleep(self.opts.pull_error_backoff / 10).await;
                        }
                        PullStatus::Found | PullStatus::NoMatchedMsg => {
                            // Everything in range was filtered out: move the consumed offset along if idle.
                            if pq.load().0 == 0 {
                                self.offsets.update(&pq.queue, r.next_begin_offset, true);
                            }
                        }
                        PullStatus::NoNewMsg => {}
                        PullStatus::OffsetIllegal => {
                            if !self.offset_really_moved(&pq.queue, offset, r.next_begin_offset).await {
                                tokio::time::sleep(self.opts.pull_error_backoff).await;
                                continue;
                            }
                            warn!(queue = ?pq.queue, offset, next = r.next_begin_offset, "pull offset illegal; correcting");
                            self.offsets.update(&pq.queue, r.next_begin_offset, false);
                            self.offsets.persist(&self.client, std::slice::from_ref(&pq.queue)).await;
                            // Messages pulled before the move (a reset may rewind into them, or skip past them)
                            // must not move the offset again when their listener calls finish: the queue
                            // starts over from the new offset, as RocketMQ drops its process queue.
                            self.restart_queue(&pq, r.next_begin_offset);
                            return;
                        }
                    }
                    offset = r.next_begin_offset;
                }
                Err(e) => {
                    debug!(queue = ?pq.queue, error = %e, "pull failed");
                    tokio::time::sleep(self.opts.pull_error_backoff).await;
                }
            }
        }
    }

    /// Whether an OFFSET_MOVED answer may move this queue's offset. Moving forward (messages expired, or a
    /// reset to a later time) is taken as is; moving backward is only believed when the group leader
    /// confirms that `offset` lies past the queue's end, or that the group's committed offset there is
    /// `next` (a server-side offset reset rewound the group), because a member that is behind would
    /// otherwise rewind the consumer (and its committed offset) and replay the queue.
    async fn offset_really_moved(&self, q: &MessageQueue, offset: i64, next: i64) -> bool {
        if next >= offset {
            return true;
        }
        match max_offset(&self.client, q).await {
            Ok(max) if max >= offset => match query_consumer_offset(&self.client, &self.opts.group, q).await {
                Ok(Some(committed)) if committed == next => {
                    info!(group = %self.opts.group, queue = ?q, offset, next, "the group's offset was reset: rewinding");
                    true
                }
                _ => {
                    debug!(queue = ?q, offset, next, leader_max = max, "ignoring OFFSET_MOVED from a member that is behind");
                    self.client.refresh_route_soon(&q.topic);
                    false
                }
            },
            Ok(_) => true,
            Err(e) => {
                debug!(queue = ?q, error = %e, "cannot confirm OFFSET_MOVED with the leader; keeping the offset");
                false
            }
        }
    }

    /// Replaces `old` (still this consumer's) by a fresh process queue for the same queue that pulls from
    /// `start`; `old` is marked dropped, so its pulled messages no longer move the offset. An orderly
    /// consumer keeps its lock and starts the new queue's worker once a batch in progress has finished.
    fn restart_queue(self: &Arc<Self>, old: &Arc<ProcessQueue>, start: i64) {
        let pq = Arc::new(ProcessQueue::new(old.queue.clone()));
        pq.locked.store(old.locked.load(Ordering::Acquire), Ordering::Release);
        *pq.last_locked.lock().unwrap_or_else(|e| e.into_inner()) = *old.last_locked.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            match table.get(&old.queue) {
                Some(current) if Arc::ptr_eq(current, old) => {}
                // Released or replaced meanwhile: its new owner starts from the committed offset.
                _ => return,
            }
            table.insert(old.queue.clone(), Arc::clone(&pq));
        }
        old.dropped.store(true, Ordering::Release);
        old.wake.notify_one();
        *pq.pull_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::spawn(Arc::clone(self).pull_loop(Arc::clone(&pq), start)));
        if self.is_orderly() {
            let (inner, old, pq) = (Arc::clone(self), Arc::clone(old), Arc::clone(&pq));
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), old.consume_lock.lock()).await;
                inner.orderly_worker(pq).await;
            });
        }
        info!(group = %self.opts.group, queue = ?old.queue, offset = start, "queue restarted at the moved offset");
    }

    fn dispatch(self: &Arc<Self>, pq: &Arc<ProcessQueue>, msgs: Vec<MessageExt>) {
        match &self.listener {
            Listener::Orderly(_) => pq.wake.notify_one(),
            Listener::Concurrent(l) => {
                for chunk in msgs.chunks(self.opts.consume_batch_size.max(1)) {
                    let (inner, pq, l, chunk) = (Arc::clone(self), Arc::clone(pq), Arc::clone(l), chunk.to_vec());
                    tokio::spawn(async move { inner.consume_concurrently(l, pq, chunk).await });
                }
            }
        }
    }

    // ---- consuming ---------------------------------------------------------------------------------

    async fn consume_concurrently(self: Arc<Self>, l: Arc<dyn ConcurrentListener>, pq: Arc<ProcessQueue>, msgs: Vec<MessageExt>) {
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else { return };
        if !self.running() || pq.is_dropped() {
            // The queue's new owner (or the next start) consumes these from the committed offset.
            return;
        }
        let ctx = ConsumeContext { queue: pq.queue.clone() };
        let status = match AssertUnwindSafe(l.consume(msgs.clone(), ctx)).catch_unwind().await {
            Ok(s) => s,
            Err(_) => {
                warn!(queue = ?pq.queue, "listener panicked; treating as RECONSUME_LATER");
                ConsumeConcurrentlyStatus::ReconsumeLater
            }
        };
        let mut done: Vec<i64> = msgs.iter().map(|m| m.queue_offset).collect();
        let mut again = Vec::new();
        if status == ConsumeConcurrentlyStatus::ReconsumeLater {
            if self.opts.model == MessageModel::Broadcasting {
                warn!(queue = ?pq.queue, count = msgs.len(), "RECONSUME_LATER in broadcasting mode: dropped, as RocketMQ does");
            } else {
                for m in &msgs {
                    if let Err(e) = self.send_back(m, 0).await {
                        let mut m = m.clone();
                        m.reconsume_times += 1;
                        let after = local_retry_delay(m.reconsume_times);
                        warn!(msg_id = %m.msg_id, error = %e, after_ms = after.as_millis() as u64, "send-back failed; consuming again locally on the retry schedule");
                        done.retain(|o| *o != m.queue_offset);
                        again.push(m);
                    }
                }
            }
        } else {
            self.consumed.fetch_add(msgs.len(), Ordering::Relaxed);
        }
        if !pq.is_dropped() {
            let offset = pq.remove(&done);
            self.offsets.update(&pq.queue, offset, true);
        }
        // One timer per distinct delay (messages of one batch usually share their reconsume count).
        let mut by_delay: std::collections::BTreeMap<Duration, Vec<MessageExt>> = std::collections::BTreeMap::new();
        for m in again {
            by_delay.entry(local_retry_delay(m.reconsume_times)).or_default().push(m);
        }
        for (after, msgs) in by_delay {
            let (inner, l, pq) = (Arc::clone(&self), Arc::clone(&l), Arc::clone(&pq));
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                inner.consume_concurrently_later(l, pq, msgs).await;
            });
        }
    }

    /// The same, boxed with an explicit `Send` type: the retry path calls it from inside itself.
    fn consume_concurrently_later(
        self: Arc<Self>,
        l: Arc<dyn ConcurrentListener>,
        pq: Arc<ProcessQueue>,
        msgs: Vec<MessageExt>,
    ) -> ListenerFuture<()> {
        Box::pin(self.consume_concurrently(l, pq, msgs))
    }

    async fn orderly_worker(self: Arc<Self>, pq: Arc<ProcessQueue>) {
        let Listener::Orderly(l) = self.listener.clone() else { return };
        let batch_size = self.opts.consume_batch_size.max(1);
        loop {
            if !self.running() || pq.is_dropped() {
                return;
            }
            if self.needs_locks() && !pq.lock_is_fresh() {
                let _ = tokio::time::timeout(Duration::from_secs(1), pq.wake.notified()).await;
                continue;
            }
            let batch = pq.take(batch_size);
            if batch.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), pq.wake.notified()).await;
                continue;
            }
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                pq.rollback();
                return;
            };
            let consuming = pq.consume_lock.lock().await;
            if !self.running() || pq.is_dropped() {
                pq.rollback();
                return;
            }
            let ctx = ConsumeContext { queue: pq.queue.clone() };
            let status = match AssertUnwindSafe(l.consume(batch.clone(), ctx)).catch_unwind().await {
                Ok(s) => s,
                Err(_) => {
                    warn!(queue = ?pq.queue, "orderly listener panicked; suspending the queue");
                    ConsumeOrderlyStatus::SuspendCurrentQueueAMoment
                }
            };
            match status {
                ConsumeOrderlyStatus::Success => {
                    self.consumed.fetch_add(batch.len(), Ordering::Relaxed);
                    if let Some(o) = pq.commit() {
                        self.offsets.update(&pq.queue, o, false);
                    }
                    drop((consuming, permit));
                }
                ConsumeOrderlyStatus::SuspendCurrentQueueAMoment => {
                    let max = self.max_reconsume_times();
                    if self.opts.model == MessageModel::Clustering && batch.iter().any(|m| m.reconsume_times >= max) {
                        // Give up on the batch: park it in the dead-letter topic and move on.
                        let mut parked = true;
                        for m in &batch {
                            if let Err(e) = self.send_back(m, -1).await {
                                warn!(msg_id = %m.msg_id, error = %e, "could not move message to the dead-letter topic");
                                parked = false;
                                break;
                            }
                        }
                        if parked {
                            if let Some(o) = pq.commit() {
                                self.offsets.update(&pq.queue, o, false);
                            }
                            drop((consuming, permit));
                            continue;
                        }
                    }
                    pq.rollback();
                    drop((consuming, permit));
                    tokio::time::sleep(self.opts.suspend_current_queue_time).await;
                }
            }
        }
    }

    /// CONSUMER_SEND_MSG_BACK: the broker stores the message in the group's retry topic (or, past the
    /// maximum or with a negative delay level, its dead-letter topic).
    async fn send_back(&self, m: &MessageExt, delay_level: i32) -> Result<()> {
        let h = ConsumerSendMsgBackRequestHeader {
            offset: m.commit_log_offset,
            group: self.opts.group.clone(),
            delay_level,
            origin_msg_id: Some(m.msg_id.clone()),
            origin_topic: Some(m.topic.clone()),
            unit_mode: false,
            max_reconsume_times: Some(self.max_reconsume_times()),
        };
        let cmd = RemotingCommand::request(RequestCode::CONSUMER_SEND_MSG_BACK, 0).with_header(&h);
        let resp = self.client.invoke_on_leader(&m.broker_name, cmd, self.client.config().request_timeout).await?;
        check_success(&m.broker_name, resp).map(|_| ())
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn local_retries_follow_the_broker_schedule() {
        // reconsumeTimes after the failure 1 → level 3 (10 s), 2 → 30 s, 3 → 1 min, 16 → 2 h, beyond → 2 h.
        assert_eq!(local_retry_delay(1), Duration::from_secs(10));
        assert_eq!(local_retry_delay(2), Duration::from_secs(30));
        assert_eq!(local_retry_delay(3), Duration::from_secs(60));
        assert_eq!(local_retry_delay(16), Duration::from_secs(7200));
        assert_eq!(local_retry_delay(40), Duration::from_secs(7200));
    }
}
