//! The producer: sync, async (future or callback), oneway, batch and ordered (selector) sends, with
//! RocketMQ's retry rules, leader-hint redirects and optional latency fault tolerance.
//!
//! Retries: a send makes up to `1 + retries` attempts within `send_timeout` in total. An attempt is a
//! request to the broker believed to lead its group. A reply "not the leader; the leader is at X" is not an
//! attempt: it certainly stored nothing, so the client follows the hint at once. When the presumed leader
//! cannot be reached the next attempt goes to it via another member of the group, whose reply names the new
//! leader (or says an election is in progress, which is waited out with a short backoff).
//!
//! Auto-batching (on by default, [`ProducerOptions::auto_batch`]): a send that finds its lane's request
//! slots all busy waits, and leaves with everything else that waited as one SEND_BATCH_MESSAGE when a slot
//! frees; a send that finds a free slot goes at once. See `accumulator.rs`. The batch is stored all
//! or nothing; each send still gets its own [`SendResult`] (its own id, offset id and queue offset) or its
//! own copy of the batch's error.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use raftmq_remoting::body::TopicRouteData;
use raftmq_remoting::header::{perm, SendMessageRequestHeader, SendMessageResponseHeader, DEFAULT_TOPIC};
use raftmq_remoting::message::{
    compress_body_zlib, encode_batch_message, properties_to_string, property, sys_flag, BatchMessage, UniqIdGenerator,
    BATCH_RECORD_FIXED_LEN, ZLIB_LEVEL_DEFAULT,
};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::accumulator::{LaneKey, LaneLimits, Lanes};
use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::instance::ClientInstance;
use crate::latency::LatencyFaultTolerance;
use crate::message::{Message, MessageQueue, SendResult, SendStatus};
use crate::selector::MessageQueueSelector;

/// RocketMQ's default maximum message size (4 MiB).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;

/// First pause while a broker group has no leader; doubles up to [`ELECTION_BACKOFF_MAX`]. Asking a live
/// member every 100 ms costs it little and finds the new leader within 100 ms of its election.
const ELECTION_BACKOFF_MIN: Duration = Duration::from_millis(25);
const ELECTION_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// First pause after a broker answered 2 SYSTEM_BUSY (flow control); doubles per busy answer of the same send
/// up to [`BUSY_BACKOFF_MAX`], each pause drawn at random from half to all of it so that producers refused
/// together do not come back together. RocketMQ's Java producer retries at once on another broker group; with
/// one group (or all busy) that only adds load to a broker that said it has too much.
const BUSY_BACKOFF_MIN: Duration = Duration::from_millis(20);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The pause after the `n`-th (1-based) SYSTEM_BUSY answer of one send, before jitter.
fn busy_backoff(n: u32) -> Duration {
    BUSY_BACKOFF_MIN.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(BUSY_BACKOFF_MAX)
}

/// Producer settings (RocketMQ's `DefaultMQProducer` fields of the same meaning).
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Producer group.
    pub group: String,
    /// Total time budget of one send, retries included (3 s).
    pub send_timeout: Duration,
    /// Retries after a failed attempt, for sync and async sends (2). Oneway sends never retry.
    pub retries: u32,
    /// Bodies longer than this are zlib-compressed (4096 bytes); `usize::MAX` turns compression off.
    pub compress_over: usize,
    /// zlib level (5, as Java producers).
    pub compress_level: u32,
    /// Largest body (or batch) accepted, checked before sending (4 MiB).
    pub max_message_size: usize,
    /// RocketMQ's latency fault tolerance: avoid broker groups whose sends were slow or failed (off).
    pub latency_fault_tolerance: bool,
    /// Async sends allowed in flight before `send_async` fails fast (10000).
    pub max_async_in_flight: usize,
    /// Queues a topic gets when it is created on first send from the TBW102 template (4).
    pub default_topic_queue_nums: i32,
    /// Combine sends queued behind busy request slots into one batch request (true). Sends that are
    /// compressed, delayed, batches already, or for a retry topic always go alone.
    pub auto_batch: bool,
    /// Requests outstanding per lane (a topic, or one explicit queue) before sends start to wait (4).
    pub auto_batch_in_flight_max: usize,
    /// Most bytes one automatic batch carries (256 KiB; never more than `max_message_size`).
    pub auto_batch_bytes_max: usize,
    /// Most messages one automatic batch carries (1000).
    pub auto_batch_count_max: usize,
}

impl ProducerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> ProducerOptions {
        ProducerOptions {
            group: group.into(),
            send_timeout: Duration::from_secs(3),
            retries: 2,
            compress_over: 4096,
            compress_level: ZLIB_LEVEL_DEFAULT,
            max_message_size: MESSAGE_BYTES_MAX_DEFAULT,
            latency_fault_tolerance: false,
            max_async_in_flight: 10_000,
            default_topic_queue_nums: 4,
            auto_batch: true,
            auto_batch_in_flight_max: 4,
            auto_batch_bytes_max: 256 * 1024,
            auto_batch_count_max: 1000,
        }
    }
}

/// A started producer. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ProducerInner>,
}

struct ProducerInner {
    opts: ProducerOptions,
    client: ClientInstance,
    ids: Mutex<UniqIdGenerator>,
    round_robin: AtomicUsize,
    faults: LatencyFaultTolerance,
    async_permits: Arc<Semaphore>,
    running: AtomicBool,
    /// Per topic: the route version the queues were computed from, and the writable queues.
    publish_cache: Mutex<HashMap<String, PublishQueues>>,
    /// Auto-batch lanes.
    lanes: Lanes<Waiting>,
}

/// A route version and the writable queues computed from it.
type PublishQueues = (Arc<TopicRouteData>, Arc<Vec<MessageQueue>>);

/// A send the broker accepted: the result, the broker address that accepted it and the response's
/// `transactionId` (set for half messages). Transaction producers need the address and id for
/// END_TRANSACTION; other callers keep only the result.
pub(crate) struct Sent {
    pub(crate) result: SendResult,
    pub(crate) addr: String,
    pub(crate) transaction_id: Option<String>,
}

/// A message encoded once and re-sent unchanged by every attempt.
struct Prepared {
    topic: String,
    body: Bytes,
    sys_flag: i32,
    flag: i32,
    properties: String,
    batch: bool,
    /// May travel inside an automatic batch.
    batchable: bool,
    msg_id: String,
}

impl Prepared {
    /// Bytes this message takes inside a batch body.
    fn batch_record_len(&self) -> usize {
        BATCH_RECORD_FIXED_LEN + self.body.len() + self.properties.len()
    }
}

/// Refuses a send to `queue` of a message of another topic.
fn check_queue_topic(queue: &MessageQueue, msg: &Message) -> Result<()> {
    if queue.topic != msg.topic {
        return Err(ClientError::InvalidMessage(format!("queue of topic {} for a message of topic {}", queue.topic, msg.topic)));
    }
    Ok(())
}

/// A send waiting in an auto-batch lane for a request slot.
struct Waiting {
    prepared: Prepared,
    /// When its own send timeout runs out, counted from when it was submitted.
    deadline: Instant,
    done: Done,
    /// An async send's place among `max_async_in_flight`, held until its outcome is delivered.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Where a send's outcome goes.
enum Done {
    /// To the future that awaits it (a sync send, or [`Producer::send_async`]'s [`SendFuture`]).
    Wait(oneshot::Sender<Result<SendResult>>),
    /// To [`Producer::send_with_callback`]'s callback, called on the task that sent the request.
    Call(Box<dyn FnOnce(Result<SendResult>) + Send>),
}

impl Done {
    fn send(self, r: Result<SendResult>) {
        match self {
            Done::Wait(tx) => {
                let _ = tx.send(r);
            }
            Done::Call(f) => {
                // The callback runs on a lane's task: a panic in it must not end the task, which still owns
                // a request slot and the sends waiting for it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r))).is_err() {
                    tracing::error!("a send callback panicked; the producer carries on");
                }
            }
        }
    }
}

/// Where a send may go.
#[derive(Clone)]
enum Target {
    /// Any writable queue, round-robin (avoiding the broker that just failed).
    Any,
    /// This queue only (ordered sends and explicit queues).
    Queue(MessageQueue),
}

impl Target {
    /// The auto-batch lane's queue part: one lane per explicit queue, one for "any queue".
    fn lane(&self) -> Option<(String, i32)> {
        match self {
            Target::Any => None,
            Target::Queue(q) => Some((q.broker_name.clone(), q.queue_id)),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// RocketMQ's topic rules: 1–127 characters of `[%|a-zA-Z0-9_-]`, not the auto-create template.
pub(crate) fn validate_topic(topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(ClientError::InvalidMessage("topic is empty".into()));
    }
    if topic.len() > 127 {
        return Err(ClientError::InvalidMessage(format!("topic is {} characters long; the maximum is 127", topic.len())));
    }
    if let Some(c) = topic.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-'))) {
        return Err(ClientError::InvalidMessage(format!("topic {topic:?} contains {c:?}; allowed are [%|a-zA-Z0-9_-]")));
    }
    if topic == DEFAULT_TOPIC {
        return Err(ClientError::InvalidMessage(format!("{DEFAULT_TOPIC} is the auto-create template; it cannot take messages")));
    }
    Ok(())
}

/// Writable queues of `topic` in route order (brokers by name, queue ids ascending) — the order selectors see.
fn writable_queues(topic: &str, route: &TopicRouteData, cap_per_broker: Option<i32>) -> Vec<MessageQueue> {
    let mut datas = route.queue_datas.clone();
    datas.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
    let mut out = Vec::new();
    for q in datas.iter().filter(|q| q.perm & perm::WRITE != 0) {
        let has_broker = route.broker_datas.iter().any(|b| b.broker_name == q.broker_name && !b.broker_addrs.is_empty());
        if !has_broker {
            continue;
        }
        let n = cap_per_broker.map_or(q.write_queue_nums, |cap| q.write_queue_nums.min(cap));
        out.extend((0..n).map(|queue_id| MessageQueue { topic: topic.to_string(), broker_name: q.broker_name.clone(), queue_id }));
    }
    out
}

fn send_status(code: i32) -> Option<SendStatus> {
    match ResponseCode(code) {
        ResponseCode::SUCCESS => Some(SendStatus::SendOk),
        ResponseCode::FLUSH_DISK_TIMEOUT => Some(SendStatus::FlushDiskTimeout),
        ResponseCode::FLUSH_SLAVE_TIMEOUT => Some(SendStatus::FlushSlaveTimeout),
        ResponseCode::SLAVE_NOT_AVAILABLE => Some(SendStatus::SlaveNotAvailable),
        _ => None,
    }
}

/// Broker codes after which RocketMQ's producer tries again (possibly elsewhere).
fn retryable_code(code: i32) -> bool {
    matches!(
        ResponseCode(code),
        ResponseCode::TOPIC_NOT_EXIST | ResponseCode::SERVICE_NOT_AVAILABLE | ResponseCode::SYSTEM_ERROR | ResponseCode::NO_PERMISSION
    ) || code == ResponseCode::SYSTEM_BUSY.0
}

impl Producer {
    /// Starts a producer of `opts.group` on the shared client instance for `config`.
    pub async fn start(config: ClientConfig, opts: ProducerOptions) -> Result<Producer> {
        if opts.group.is_empty() {
            return Err(ClientError::State("producer group is empty".into()));
        }
        let client = ClientInstance::get_or_create(&config)?;
        client.register_producer(&opts.group)?;
        client.acquire();
        let ip = config.resolve_client_ip();
        let seed = rand::random::<i32>();
        let lane_limits = LaneLimits {
            in_flight_max: opts.auto_batch_in_flight_max.max(1),
            batch_bytes_max: opts.auto_batch_bytes_max.min(opts.max_message_size),
            batch_count_max: opts.auto_batch_count_max.max(1),
        };
        Ok(Producer {
            inner: Arc::new(ProducerInner {
                ids: Mutex::new(UniqIdGenerator::new(ip, std::process::id(), seed)),
                round_robin: AtomicUsize::new(rand::random::<u16>() as usize),
                faults: LatencyFaultTolerance::new(),
                async_permits: Arc::new(Semaphore::new(opts.max_async_in_flight)),
                running: AtomicBool::new(true),
                publish_cache: Mutex::default(),
                lanes: Lanes::new(lane_limits),
                opts,
                client,
            }),
        })
    }

    /// Waits for async sends in flight (up to the send timeout), then unregisters. Further sends fail.
    pub async fn shutdown(&self) {
        if !self.inner.running.swap(false, Ordering::AcqRel) {
            return;
        }
        let all = self.inner.opts.max_async_in_flight as u32;
        let _ = tokio::time::timeout(self.inner.opts.send_timeout, self.inner.async_permits.acquire_many(all)).await;
        self.inner.client.unregister_producer(&self.inner.opts.group);
        self.inner.client.release();
    }

    /// The settings.
    pub fn options(&self) -> &ProducerOptions {
        &self.inner.opts
    }

    /// The shared client instance.
    pub fn client(&self) -> &ClientInstance {
        &self.inner.client
    }

    /// Sends and waits for the broker's answer, retrying as the options say.
    pub async fn send(&self, msg: Message) -> Result<SendResult> {
        let prepared = self.inner.prepare(msg)?;
        self.inner.send_laned(prepared, Target::Any).await
    }

    /// Sends to one queue; retries stay on that queue.
    pub async fn send_to_queue(&self, msg: Message, queue: MessageQueue) -> Result<SendResult> {
        check_queue_topic(&queue, &msg)?;
        let prepared = self.inner.prepare(msg)?;
        self.inner.send_laned(prepared, Target::Queue(queue)).await
    }

    /// Sends to the queue `selector` picks for `arg` (e.g. a sharding key), so that messages with the same
    /// key keep their order. Retries stay on the selected queue.
    pub async fn send_with_selector<A: ?Sized>(&self, msg: Message, selector: &dyn MessageQueueSelector<A>, arg: &A) -> Result<SendResult> {
        let prepared = self.inner.prepare(msg.clone())?;
        let queues = self.inner.queues_for(&msg.topic).await?;
        let idx = selector.select(&queues, &msg, arg);
        let queue = queues
            .get(idx)
            .cloned()
            .ok_or_else(|| ClientError::InvalidMessage(format!("selector chose queue index {idx} of {}", queues.len())))?;
        self.inner.send_laned(prepared, Target::Queue(queue)).await
    }

    /// The writable queues of `topic` as a selector sees them.
    pub async fn fetch_publish_queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        Ok(self.inner.queues_for(topic).await?.to_vec())
    }

    /// Starts a send in the background and returns its future at once; the send proceeds even if the future
    /// is dropped. Fails fast (in the future) when `max_async_in_flight` sends are already running.
    ///
    /// With auto-batching no task is spawned per send: the send joins its lane, and the task sending the
    /// lane's requests (one per request, started when a slot frees up) delivers its outcome.
    pub fn send_async(&self, msg: Message) -> SendFuture {
        let (tx, rx) = oneshot::channel();
        match self.start_async(msg, Target::Any, Done::Wait(tx)) {
            Ok(()) => SendFuture { state: SendFutureState::Waiting(rx) },
            Err((e, _)) => SendFuture::ready(Err(e)),
        }
    }

    /// Like [`Producer::send_async`], calling `callback` with the outcome on a runtime worker: the task that
    /// sent the request (no task of its own per send). A callback should not block; one that panics is
    /// logged and the producer carries on.
    pub fn send_with_callback<F>(&self, msg: Message, callback: F)
    where
        F: FnOnce(Result<SendResult>) + Send + 'static,
    {
        self.callback_async(msg, Target::Any, callback);
    }

    /// Like [`Producer::send_with_callback`], to `queue` only (retries stay on it), as
    /// [`Producer::send_to_queue`] does.
    pub fn send_to_queue_with_callback<F>(&self, msg: Message, queue: MessageQueue, callback: F)
    where
        F: FnOnce(Result<SendResult>) + Send + 'static,
    {
        self.callback_async(msg, Target::Queue(queue), callback);
    }

    fn callback_async<F>(&self, msg: Message, target: Target, callback: F)
    where
        F: FnOnce(Result<SendResult>) + Send + 'static,
    {
        if let Err((e, done)) = self.start_async(msg, target, Done::Call(Box::new(callback))) {
            // Refused before it started (too many in flight, or an invalid message): still on a worker, never
            // inside this call, which may hold the caller's locks.
            tokio::spawn(async move { done.send(Err(e)) });
        }
    }

    /// Starts an async send whose outcome goes to `done`; gives `done` back with the error when the send is
    /// refused before it starts.
    fn start_async(&self, msg: Message, target: Target, done: Done) -> std::result::Result<(), (ClientError, Done)> {
        if let Target::Queue(q) = &target {
            if let Err(e) = check_queue_topic(q, &msg) {
                return Err((e, done));
            }
        }
        let permit = match Arc::clone(&self.inner.async_permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let n = self.inner.opts.max_async_in_flight;
                return Err((ClientError::State(format!("{n} async sends already in flight")), done));
            }
        };
        let prepared = match self.inner.prepare(msg) {
            Ok(p) => p,
            Err(e) => return Err((e, done)),
        };
        let inner = Arc::clone(&self.inner);
        let deadline = Instant::now() + inner.opts.send_timeout;
        if inner.opts.auto_batch && prepared.batchable {
            let key = LaneKey { topic: prepared.topic.clone(), queue: target.lane() };
            let bytes = prepared.batch_record_len();
            let w = Waiting { prepared, deadline, done, _permit: Some(permit) };
            if let Err(own) = inner.lanes.admit(&key, w, bytes) {
                // A free slot, now this send's: a task sends it, then whatever queued behind it meanwhile.
                tokio::spawn(run_lane(inner, key, target, vec![own]));
            }
        } else {
            tokio::spawn(async move {
                let r = inner.send_until(&prepared, &target, deadline).await;
                done.send(r);
                drop(permit);
            });
        }
        Ok(())
    }

    /// Sends without waiting for (or receiving) an answer; no retries. Returns once the request is queued on
    /// the connection.
    pub async fn send_oneway(&self, msg: Message) -> Result<()> {
        let prepared = self.inner.prepare(msg)?;
        let queue = self.inner.select_queue(&prepared.topic, None).await?;
        let addr = self.inner.client.leader_addr(&queue.broker_name).ok_or_else(|| ClientError::NoQueue(prepared.topic.clone()))?;
        let cmd = self.inner.request(&prepared, &queue).mark_oneway();
        self.inner.client.invoke_oneway(&addr, cmd).await
    }

    /// Sends a transaction half message (`transaction.rs`): `msg` must already carry `TRAN_MSG` and `PGROUP`.
    /// Gives it its UNIQ_KEY first (kept in `msg`, so the local transaction sees the id every attempt
    /// carried), sets the PREPARED sys flag, never batches it, and retries like [`Producer::send`].
    pub(crate) async fn send_half(&self, msg: &mut Message) -> Result<Sent> {
        self.inner.check_running()?;
        if msg.property(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX).is_none() {
            let id = self.inner.next_id();
            msg.properties_mut().insert(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX.to_string(), id);
        }
        let mut prepared = self.inner.prepare(msg.clone())?;
        prepared.sys_flag |= sys_flag::TRANSACTION_PREPARED_TYPE;
        prepared.batchable = false;
        let deadline = Instant::now() + self.inner.opts.send_timeout;
        Box::pin(self.inner.send_until_inline(&prepared, &Target::Any, deadline)).await
    }

    /// Sends messages of one topic as one batch: the broker stores all or none. Returns one result whose
    /// `msg_id` lists the messages' ids comma-separated and whose `queue_offset` is the first message's.
    pub async fn send_batch(&self, msgs: Vec<Message>) -> Result<SendResult> {
        let prepared = self.inner.prepare_batch(msgs)?;
        self.inner.send_with_retries(&prepared, Target::Any).await
    }

    /// Like [`Producer::send_batch`] to one queue.
    pub async fn send_batch_to_queue(&self, msgs: Vec<Message>, queue: MessageQueue) -> Result<SendResult> {
        let prepared = self.inner.prepare_batch(msgs)?;
        if queue.topic != prepared.topic {
            return Err(ClientError::InvalidMessage(format!("queue of topic {} for a batch of topic {}", queue.topic, prepared.topic)));
        }
        self.inner.send_with_retries(&prepared, Target::Queue(queue)).await
    }
}

impl ProducerInner {
    fn check_running(&self) -> Result<()> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ClientError::State(format!("producer {} is shut down", self.opts.group)))
        }
    }

    fn next_id(&self) -> String {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).next_id(now_ms())
    }

    fn check_size(&self, what: &str, len: usize) -> Result<()> {
        if len == 0 {
            return Err(ClientError::InvalidMessage(format!("{what} is empty")));
        }
        if len > self.opts.max_message_size {
            return Err(ClientError::InvalidMessage(format!(
                "{what} is {len} bytes; the maximum message size is {} bytes",
                self.opts.max_message_size
            )));
        }
        Ok(())
    }

    fn prepare(&self, mut msg: Message) -> Result<Prepared> {
        self.check_running()?;
        validate_topic(&msg.topic)?;
        self.check_size("message body", msg.body.len())?;
        // The id is fixed before the first attempt so that every retry carries the same one.
        let msg_id = match msg.property(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX) {
            Some(id) => id.to_string(),
            None => {
                let id = self.next_id();
                msg.properties_mut().insert(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX.to_string(), id.clone());
                id
            }
        };
        let mut flags = 0;
        let mut body = msg.body.clone();
        if body.len() > self.opts.compress_over {
            let compressed = compress_body_zlib(&body, self.opts.compress_level);
            if compressed.len() < body.len() {
                body = Bytes::from(compressed);
                flags |= sys_flag::COMPRESSED | sys_flag::COMPRESSION_ZLIB;
            }
        }
        let properties = properties_to_string(msg.properties())?;
        // What a broker refuses inside a batch: compressed bodies (no per-message sys flag), delay levels and
        // timers, retry topics, transaction half messages.
        let batchable = flags == 0
            && !msg.is_scheduled()
            && !msg.topic.starts_with("%RETRY%")
            && msg.property(property::TRANSACTION_PREPARED).is_none();
        Ok(Prepared { topic: msg.topic, body, sys_flag: flags, flag: msg.flag, properties, batch: false, batchable, msg_id })
    }

    fn prepare_batch(&self, msgs: Vec<Message>) -> Result<Prepared> {
        self.check_running()?;
        let first = msgs.first().ok_or_else(|| ClientError::InvalidMessage("batch is empty".into()))?;
        let topic = first.topic.clone();
        validate_topic(&topic)?;
        if topic.starts_with("%RETRY%") {
            return Err(ClientError::InvalidMessage("retry topics do not take batches".into()));
        }
        let mut body = Vec::new();
        let mut ids = Vec::with_capacity(msgs.len());
        for (i, mut m) in msgs.into_iter().enumerate() {
            if m.topic != topic {
                return Err(ClientError::InvalidMessage(format!("batch message {i} is for topic {}, the batch for {topic}", m.topic)));
            }
            if m.is_scheduled() {
                return Err(ClientError::InvalidMessage(format!(
                    "batch message {i} has a delay level or a delivery time; batches cannot be scheduled"
                )));
            }
            if m.body.is_empty() {
                return Err(ClientError::InvalidMessage(format!("batch message {i} has an empty body")));
            }
            let id = match m.property(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX) {
                Some(id) => id.to_string(),
                None => {
                    let id = self.next_id();
                    m.properties_mut().insert(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX.to_string(), id.clone());
                    id
                }
            };
            ids.push(id);
            let props = properties_to_string(m.properties())?;
            encode_batch_message(&BatchMessage { flag: m.flag, body: &m.body, properties: &props }, &mut body)?;
        }
        self.check_size("batch", body.len())?;
        Ok(Prepared {
            topic,
            body: Bytes::from(body),
            sys_flag: 0,
            flag: 0,
            properties: String::new(),
            batch: true,
            batchable: false,
            msg_id: ids.join(","),
        })
    }

    fn request(&self, p: &Prepared, queue: &MessageQueue) -> RemotingCommand {
        let h = SendMessageRequestHeader {
            producer_group: self.opts.group.clone(),
            topic: p.topic.clone(),
            default_topic: DEFAULT_TOPIC.to_string(),
            default_topic_queue_nums: self.opts.default_topic_queue_nums,
            queue_id: queue.queue_id,
            sys_flag: p.sys_flag,
            born_timestamp: now_ms(),
            flag: p.flag,
            properties: Some(p.properties.clone()),
            reconsume_times: Some(0),
            unit_mode: Some(false),
            batch: Some(p.batch),
            max_reconsume_times: None,
            broker_name: None,
        };
        let code = if p.batch { RequestCode::SEND_BATCH_MESSAGE } else { RequestCode::SEND_MESSAGE_V2 };
        let mut cmd = RemotingCommand::request(code, 0).with_body(p.body.clone());
        h.write_ext_fields_v2(&mut cmd.ext_fields);
        cmd
    }

    /// The topic's writable queues; for a topic no broker has yet, the TBW102 template's (the broker creates
    /// the topic on the first send).
    async fn queues_for(&self, topic: &str) -> Result<Arc<Vec<MessageQueue>>> {
        if let Some(route) = self.client.route_shared(topic).await? {
            let queues = self.publish_queues(topic, &route, None);
            if !queues.is_empty() {
                return Ok(queues);
            }
        }
        let template = self.client.route_shared(DEFAULT_TOPIC).await?.ok_or_else(|| ClientError::NoRoute(topic.to_string()))?;
        let queues = self.publish_queues(topic, &template, Some(self.opts.default_topic_queue_nums));
        if queues.is_empty() {
            return Err(ClientError::NoQueue(topic.to_string()));
        }
        Ok(queues)
    }

    /// `writable_queues`, computed once per route version (the route's `Arc`) and shared by every send.
    fn publish_queues(&self, topic: &str, route: &Arc<TopicRouteData>, cap: Option<i32>) -> Arc<Vec<MessageQueue>> {
        let mut cache = self.publish_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, q)) = cache.get(topic) {
            if Arc::ptr_eq(r, route) {
                return Arc::clone(q);
            }
        }
        let queues = Arc::new(writable_queues(topic, route, cap));
        cache.insert(topic.to_string(), (Arc::clone(route), Arc::clone(&queues)));
        queues
    }

    /// Round-robin over the writable queues, skipping `avoid` (the group that just failed) and, with latency
    /// fault tolerance, groups set aside; falls back to any queue rather than failing.
    async fn select_queue(&self, topic: &str, avoid: Option<&str>) -> Result<MessageQueue> {
        let queues = self.queues_for(topic).await?;
        let n = queues.len();
        for _ in 0..n {
            let q = &queues[self.round_robin.fetch_add(1, Ordering::Relaxed) % n];
            let avoided = avoid == Some(q.broker_name.as_str());
            let set_aside = self.opts.latency_fault_tolerance && !self.faults.is_available(&q.broker_name);
            if !avoided && !set_aside {
                return Ok(q.clone());
            }
        }
        if self.opts.latency_fault_tolerance {
            if let Some(b) = self.faults.least_bad(queues.iter().map(|q| q.broker_name.as_str())) {
                let on_b: Vec<&MessageQueue> = queues.iter().filter(|q| q.broker_name == b).collect();
                return Ok(on_b[self.round_robin.fetch_add(1, Ordering::Relaxed) % on_b.len()].clone());
            }
        }
        Ok(queues[self.round_robin.fetch_add(1, Ordering::Relaxed) % n].clone())
    }

    /// Another member of `broker_name` than `not`, to ask who leads now.
    fn other_member(&self, broker_name: &str, not: &str, turn: usize) -> Option<String> {
        let others: Vec<String> = self.client.member_addrs(broker_name).into_iter().map(|(_, a)| a).filter(|a| a != not).collect();
        (!others.is_empty()).then(|| others[turn % others.len()].clone())
    }

    async fn send_with_retries(&self, p: &Prepared, target: Target) -> Result<SendResult> {
        self.send_until(p, &target, Instant::now() + self.opts.send_timeout).await
    }

    /// Sends `p` through its lane (see the module doc), or straight away when auto-batching is off or `p`
    /// cannot travel in a batch.
    async fn send_laned(self: &Arc<Self>, p: Prepared, target: Target) -> Result<SendResult> {
        let deadline = Instant::now() + self.opts.send_timeout;
        if !self.opts.auto_batch || !p.batchable {
            return self.send_until(&p, &target, deadline).await;
        }
        let key = LaneKey { topic: p.topic.clone(), queue: target.lane() };
        let bytes = p.batch_record_len();
        let (done, outcome) = oneshot::channel();
        match self.lanes.admit(&key, Waiting { prepared: p, deadline, done: Done::Wait(done), _permit: None }, bytes) {
            Ok(()) => outcome.await.unwrap_or_else(|_| Err(ClientError::State("the send was dropped before it completed".into()))),
            Err(own) => {
                // A free slot: send alone now. The guard hands the slot to whatever queued meanwhile, even if
                // this future is dropped mid-send.
                let _slot = LaneSlot { inner: Arc::clone(self), key, target: target.clone() };
                self.send_until(&own.prepared, &target, deadline).await
            }
        }
    }

    /// Sends the sends that waited in a lane: alone if there is one, else as one batch request whose result
    /// is split per message. A batch the broker refuses for its content is re-sent message by message, so
    /// that only the offending message fails (the refusal stored nothing: batches are all or nothing).
    async fn send_waiting(&self, mut batch: Vec<Waiting>, target: &Target) {
        if batch.len() == 1 {
            if let Some(w) = batch.pop() {
                let r = self.send_until(&w.prepared, target, w.deadline).await;
                w.done.send(r);
            }
            return;
        }
        let deadline = batch.iter().map(|w| w.deadline).min().unwrap_or_else(Instant::now);
        let combined = match combine(&batch) {
            Ok(p) => p,
            Err(e) => {
                for w in batch {
                    w.done.send(Err(e.duplicate()));
                }
                return;
            }
        };
        match self.send_until(&combined, target, deadline).await {
            Ok(res) => {
                let offset_ids: Vec<&str> = res.offset_msg_id.split(',').collect();
                let whole = offset_ids.len() != batch.len();
                for (i, w) in batch.into_iter().enumerate() {
                    let offset_msg_id = if whole { res.offset_msg_id.clone() } else { offset_ids[i].to_string() };
                    w.done.send(Ok(SendResult {
                        status: res.status,
                        msg_id: w.prepared.msg_id,
                        offset_msg_id,
                        queue: res.queue.clone(),
                        queue_offset: res.queue_offset + i as i64,
                    }));
                }
            }
            Err(e)
                if matches!(&e, ClientError::Broker { code, .. } if !retryable_code(*code))
                    || matches!(e, ClientError::InvalidMessage(_)) =>
            {
                debug!(topic = %combined.topic, error = %e, n = batch.len(), "automatic batch refused; sending its messages one by one");
                for w in batch {
                    let r = self.send_until(&w.prepared, target, w.deadline).await;
                    w.done.send(r);
                }
            }
            Err(e) => {
                for w in batch {
                    w.done.send(Err(e.duplicate()));
                }
            }
        }
    }

    /// [`ProducerInner::send_until_inline`], boxed: the retry loop's state is over 3 KiB, and every future
    /// awaiting it inline (and every task spawned with one) would copy that around by value — a profile of
    /// a pipelined load had a quarter of the client's CPU in such memcpys.
    fn send_until<'a>(
        &'a self,
        p: &'a Prepared,
        target: &'a Target,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<SendResult>> + Send + 'a>> {
        Box::pin(async move { self.send_until_inline(p, target, deadline).await.map(|s| s.result) })
    }

    async fn send_until_inline(&self, p: &Prepared, target: &Target, deadline: Instant) -> Result<Sent> {
        let start = Instant::now();
        let mut attempts_left = self.opts.retries + 1;
        let mut attempts = 0u32;
        let mut definite = true;
        let mut last_err: Option<ClientError> = None;
        let mut avoid: Option<String> = None;
        let mut redirect: Option<String> = None;
        let mut backoff = ELECTION_BACKOFF_MIN;
        let mut busy = 0u32;
        let mut hops = 0usize;
        // Addresses that could not be reached during this send: a hint naming one of them is stale (the
        // followers have not noticed the leader's death yet), so it is treated as "election in progress".
        let mut unreachable: Vec<String> = Vec::new();
        while attempts_left > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let queue = match target {
                Target::Queue(q) => q.clone(),
                Target::Any => match self.select_queue(&p.topic, avoid.as_deref()).await {
                    Ok(q) => q,
                    Err(e) => return Err(e),
                },
            };
            let Some(addr) = redirect.take().or_else(|| self.client.leader_addr(&queue.broker_name)) else {
                // The route names no leader (yet): refresh and wait a little.
                self.client.refresh_route_soon(&p.topic);
                tokio::time::sleep(backoff.min(remaining)).await;
                backoff = (backoff * 2).min(ELECTION_BACKOFF_MAX);
                last_err.get_or_insert_with(|| ClientError::NoQueue(p.topic.clone()));
                continue;
            };
            let cmd = self.request(p, &queue);
            let t0 = Instant::now();
            let outcome = self.client.invoke(&addr, cmd, remaining).await;
            let err = match outcome {
                Ok(resp) => match send_status(resp.code) {
                    Some(status) => {
                        self.faults.record(&queue.broker_name, t0.elapsed(), false);
                        return self.result(p, &queue, &addr, status, &resp);
                    }
                    None => ClientError::Broker { addr: addr.clone(), code: resp.code, remark: resp.remark.unwrap_or_default() },
                },
                Err(e) => e,
            };
            hops += 1;
            match &err {
                ClientError::Broker { code, remark, .. } if *code == ResponseCode::SERVICE_NOT_AVAILABLE.0 => {
                    // Not (or not yet) the leader: nothing was stored. Follow a hint, else wait out the election.
                    let hint = self.client.note_leader_hint(&queue.broker_name, remark);
                    if let Some(stale) = hint.as_ref().filter(|h| unreachable.contains(h)) {
                        self.client.forget_leader_hint(&queue.broker_name, stale);
                    }
                    match hint.filter(|h| *h != addr && !unreachable.contains(h)) {
                        Some(leader) if hops <= 4 => redirect = Some(leader),
                        hint => {
                            // Ask again after the backoff: the hinted leader, or this member, which is alive and
                            // learns the new leader when the election ends (the route may still name a dead one).
                            redirect = hint.or_else(|| Some(addr.clone()));
                            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
                            backoff = (backoff * 2).min(ELECTION_BACKOFF_MAX);
                        }
                    }
                    self.client.refresh_route_soon(&p.topic);
                }
                ClientError::Broker { code, .. } if retryable_code(*code) => {
                    attempts += 1;
                    attempts_left -= 1;
                    definite &= err.is_definite();
                    self.faults.record(&queue.broker_name, t0.elapsed(), true);
                    avoid = Some(queue.broker_name.clone());
                    self.client.refresh_route_soon(&p.topic);
                    // Flow control: nothing was stored; give the broker room before the next attempt.
                    if *code == ResponseCode::SYSTEM_BUSY.0 && attempts_left > 0 {
                        busy += 1;
                        let full = busy_backoff(busy);
                        let pause = full.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.5..=1.0));
                        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
                    }
                }
                ClientError::Broker { .. } | ClientError::InvalidMessage(_) | ClientError::Protocol(_) | ClientError::State(_) => {
                    return Err(err);
                }
                _ => {
                    // Unreachable or silent leader. Ask another member next; it names the new leader.
                    attempts += 1;
                    attempts_left -= 1;
                    definite &= err.is_definite();
                    self.faults.record(&queue.broker_name, t0.elapsed(), true);
                    self.client.forget_leader_hint(&queue.broker_name, &addr);
                    unreachable.push(addr.clone());
                    redirect = self.other_member(&queue.broker_name, &addr, attempts.saturating_sub(1) as usize);
                    avoid = Some(queue.broker_name.clone());
                    self.client.refresh_route_soon(&p.topic);
                }
            }
            debug!(topic = %p.topic, broker = %addr, error = %err, "send attempt failed");
            last_err = Some(err);
        }
        Err(ClientError::RetriesExhausted {
            attempts,
            elapsed: start.elapsed(),
            definite,
            last: Box::new(last_err.unwrap_or_else(|| ClientError::Timeout { addr: p.topic.clone(), timeout: self.opts.send_timeout })),
        })
    }

    fn result(&self, p: &Prepared, queue: &MessageQueue, addr: &str, status: SendStatus, resp: &RemotingCommand) -> Result<Sent> {
        let h: SendMessageResponseHeader =
            resp.decode_header().map_err(|e| ClientError::Protocol(format!("send response from {addr}: {e}")))?;
        let mut queue = queue.clone();
        queue.queue_id = h.queue_id;
        Ok(Sent {
            result: SendResult { status, msg_id: p.msg_id.clone(), offset_msg_id: h.msg_id, queue, queue_offset: h.queue_offset },
            addr: addr.to_string(),
            transaction_id: h.transaction_id,
        })
    }
}

/// One batch request carrying every waiting send, in order.
fn combine(batch: &[Waiting]) -> Result<Prepared> {
    let mut body = Vec::with_capacity(batch.iter().map(|w| w.prepared.batch_record_len()).sum());
    for w in batch {
        let p = &w.prepared;
        encode_batch_message(&BatchMessage { flag: p.flag, body: &p.body, properties: &p.properties }, &mut body)?;
    }
    let topic = batch.first().map(|w| w.prepared.topic.clone()).unwrap_or_default();
    // No joined id: every waiting send keeps its own, and the combined result's id is never read.
    Ok(Prepared {
        topic,
        body: Bytes::from(body),
        sys_flag: 0,
        flag: 0,
        properties: String::new(),
        batch: true,
        batchable: false,
        msg_id: String::new(),
    })
}

/// A lane's request slot, held while a send is outstanding. Released on drop: the lane's next batch (if
/// any sends waited) starts on it in a task of its own.
struct LaneSlot {
    inner: Arc<ProducerInner>,
    key: LaneKey,
    target: Target,
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        let Some(batch) = self.inner.lanes.finish(&self.key) else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(run_lane(Arc::clone(&self.inner), self.key.clone(), self.target.clone(), batch));
            }
            Err(_) => {
                // No runtime left to send with (the application is shutting down): fail what waited.
                for w in batch.into_iter().chain(self.inner.lanes.drain_all()) {
                    w.done.send(Err(ClientError::State("no runtime left to send with".into())));
                }
            }
        }
    }
}

/// Sends a lane's batches until nothing waits, then releases the slot.
async fn run_lane(inner: Arc<ProducerInner>, key: LaneKey, target: Target, first: Vec<Waiting>) {
    let mut batch = first;
    loop {
        inner.send_waiting(batch, &target).await;
        match inner.lanes.finish(&key) {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// The outcome of [`Producer::send_async`]. The send runs whether or not this is awaited.
pub struct SendFuture {
    state: SendFutureState,
}

enum SendFutureState {
    Ready(Option<Result<SendResult>>),
    /// Delivered by whichever task sends the request carrying it.
    Waiting(oneshot::Receiver<Result<SendResult>>),
}

impl SendFuture {
    fn ready(r: Result<SendResult>) -> SendFuture {
        SendFuture { state: SendFutureState::Ready(Some(r)) }
    }
}

impl Future for SendFuture {
    type Output = Result<SendResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            SendFutureState::Ready(r) => {
                Poll::Ready(r.take().unwrap_or_else(|| Err(ClientError::State("send future polled after completion".into()))))
            }
            SendFutureState::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(ClientError::State("the send was dropped before it completed".into())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_remoting::body::{BrokerData, QueueData};

    #[test]
    fn topic_names_follow_rocketmq_rules() {
        assert!(validate_topic("orders_2026-11").is_ok());
        assert!(validate_topic("%RETRY%group").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic(&"t".repeat(128)).is_err());
        assert!(validate_topic("a b").is_err());
        assert!(validate_topic("TBW102").is_err());
    }

    #[test]
    fn writable_queues_skip_read_only_groups_and_groups_without_brokers() {
        let route = TopicRouteData {
            queue_datas: vec![
                QueueData { broker_name: "b".into(), read_queue_nums: 2, write_queue_nums: 2, perm: 6, topic_sys_flag: 0 },
                QueueData { broker_name: "a".into(), read_queue_nums: 8, write_queue_nums: 8, perm: 6, topic_sys_flag: 0 },
                QueueData { broker_name: "ro".into(), read_queue_nums: 2, write_queue_nums: 2, perm: 4, topic_sys_flag: 0 },
                QueueData { broker_name: "gone".into(), read_queue_nums: 2, write_queue_nums: 2, perm: 6, topic_sys_flag: 0 },
            ],
            broker_datas: ["a", "b", "ro"]
                .iter()
                .map(|n| BrokerData {
                    broker_name: n.to_string(),
                    broker_addrs: [(0, format!("{n}:1"))].into_iter().collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let q = writable_queues("t", &route, Some(4));
        let names: Vec<(String, i32)> = q.iter().map(|q| (q.broker_name.clone(), q.queue_id)).collect();
        assert_eq!(names, vec![("a".into(), 0), ("a".into(), 1), ("a".into(), 2), ("a".into(), 3), ("b".into(), 0), ("b".into(), 1)]);
    }

    #[test]
    fn only_accepting_codes_are_send_statuses() {
        assert_eq!(send_status(0), Some(SendStatus::SendOk));
        assert_eq!(send_status(10), Some(SendStatus::FlushDiskTimeout));
        assert_eq!(send_status(14), None);
        assert!(retryable_code(17) && retryable_code(1) && !retryable_code(13));
        assert!(retryable_code(2), "SYSTEM_BUSY: flow control, nothing stored");
        let pauses: Vec<u128> = (1..=7).map(|n| busy_backoff(n).as_millis()).collect();
        assert_eq!(pauses, [20, 40, 80, 160, 320, 500, 500], "doubling up to the cap");
        assert_eq!(busy_backoff(u32::MAX), BUSY_BACKOFF_MAX, "no overflow");
    }
}
