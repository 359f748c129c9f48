//! Pulling: the one-request pull with its four outcomes, the queue-offset queries (consumer offset, min, max,
//! by timestamp), and [`PullConsumer`], which gives applications those operations directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use raftmq_remoting::body::{decode_json_body, GetConsumerListByGroupResponseBody, TopicRouteData};
use raftmq_remoting::header::{
    perm, pull_sys_flag, BoundaryType, ConsumerGroupHeader, GetMaxOffsetRequestHeader, OffsetResponseHeader, PullMessageRequestHeader,
    PullMessageResponseHeader, QueryConsumerOffsetRequestHeader, QueueRequestHeader, SearchOffsetRequestHeader,
    UpdateConsumerOffsetRequestHeader,
};
use raftmq_remoting::message::StoredMessages;
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::filter::{MessageSelector, Subscription};
use crate::instance::{check_success, ClientInstance};
use crate::message::{MessageExt, MessageQueue};
use crate::producer::MESSAGE_BYTES_MAX_DEFAULT;

/// How a pull ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullStatus {
    /// Messages were returned (possibly none after client-side tag filtering).
    Found,
    /// The queue has nothing at or after the offset yet.
    NoNewMsg,
    /// Messages exist but none matched the subscription; continue at `next_begin_offset`.
    NoMatchedMsg,
    /// The offset is outside the queue; continue at `next_begin_offset`.
    OffsetIllegal,
}

/// The result of one pull.
#[derive(Debug, Clone)]
pub struct PullResult {
    /// Outcome.
    pub status: PullStatus,
    /// Where the next pull should start.
    pub next_begin_offset: i64,
    /// The queue's smallest offset.
    pub min_offset: i64,
    /// The queue's next offset to be written.
    pub max_offset: i64,
    /// Messages, in queue order, already filtered by tag.
    pub messages: Vec<MessageExt>,
}

/// The parameters of one pull request.
#[derive(Debug, Clone)]
pub(crate) struct PullSpec<'a> {
    pub group: &'a str,
    pub queue: &'a MessageQueue,
    pub subscription: &'a Subscription,
    pub offset: i64,
    pub max_nums: i32,
    /// Long polling: the broker holds the request this long when nothing is there yet.
    pub suspend: Option<Duration>,
    /// Piggy-backed consumer offset commit (clustering consumers).
    pub commit_offset: Option<i64>,
}

/// Pulls once from any member of the queue's broker group (followers serve committed messages too).
pub(crate) async fn pull_queue(client: &ClientInstance, spec: &PullSpec<'_>, timeout: Duration) -> Result<PullResult> {
    let mut sys_flag = pull_sys_flag::SUBSCRIPTION;
    if spec.suspend.is_some() {
        sys_flag |= pull_sys_flag::SUSPEND;
    }
    if spec.commit_offset.is_some() {
        sys_flag |= pull_sys_flag::COMMIT_OFFSET;
    }
    let h = PullMessageRequestHeader {
        consumer_group: spec.group.to_string(),
        topic: spec.queue.topic.clone(),
        queue_id: spec.queue.queue_id,
        queue_offset: spec.offset,
        max_msg_nums: spec.max_nums,
        sys_flag,
        commit_offset: spec.commit_offset.unwrap_or(0),
        suspend_timeout_millis: spec.suspend.map_or(0, |d| d.as_millis() as i64),
        subscription: Some(spec.subscription.expression.clone()),
        sub_version: spec.subscription.version,
        expression_type: Some(spec.subscription.expression_type().into()),
        ..Default::default()
    };
    let cmd = RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h);
    // A member that cannot serve this offset yet — far behind the leader (`followerReadLagMaxEntries`), or not
    // the confirmed leader for an offset outside its queue — answers PULL_RETRY_IMMEDIATELY at the same offset
    // with suggestWhichBrokerId 0: another member is asked instead.
    let offset = spec.offset;
    let elsewhere = |r: &RemotingCommand| {
        r.code == ResponseCode::PULL_RETRY_IMMEDIATELY.0
            && r.decode_header::<PullMessageResponseHeader>().is_ok_and(|h| h.suggest_which_broker_id == 0 && h.next_begin_offset == offset)
    };
    let resp = client.invoke_on_any_member_unless(&spec.queue.broker_name, cmd, timeout, elsewhere).await?;
    let status = match ResponseCode(resp.code) {
        ResponseCode::SUCCESS => PullStatus::Found,
        ResponseCode::PULL_NOT_FOUND => PullStatus::NoNewMsg,
        ResponseCode::PULL_RETRY_IMMEDIATELY => PullStatus::NoMatchedMsg,
        ResponseCode::PULL_OFFSET_MOVED => PullStatus::OffsetIllegal,
        _ => return Err(check_success(&spec.queue.broker_name, resp).err().unwrap_or(ClientError::Protocol("pull".into()))),
    };
    let rh: PullMessageResponseHeader = resp.decode_header()?;
    let messages =
        if status == PullStatus::Found { decode_messages(&resp.body, &spec.queue.broker_name, spec.subscription)? } else { Vec::new() };
    Ok(PullResult { status, next_begin_offset: rh.next_begin_offset, min_offset: rh.min_offset, max_offset: rh.max_offset, messages })
}

/// Decodes a pull body; bodies stay slices of `body`. Drops messages whose tag the subscription excludes.
pub(crate) fn decode_messages(body: &Bytes, broker_name: &str, sub: &Subscription) -> Result<Vec<MessageExt>> {
    let mut out = Vec::new();
    for m in StoredMessages::new(body) {
        let m = m?;
        if !sub.matches(m.tags()) {
            continue;
        }
        out.push(MessageExt::from_decoded(&m, body, broker_name, MESSAGE_BYTES_MAX_DEFAULT * 4)?);
    }
    Ok(out)
}

fn offset_of(resp: RemotingCommand, addr: &str) -> Result<i64> {
    let resp = check_success(addr, resp)?;
    Ok(resp.decode_header::<OffsetResponseHeader>()?.offset)
}

/// The group's committed offset of `queue`; `None` when the group has none there.
pub(crate) async fn query_consumer_offset(client: &ClientInstance, group: &str, queue: &MessageQueue) -> Result<Option<i64>> {
    let h = QueryConsumerOffsetRequestHeader {
        consumer_group: group.to_string(),
        topic: queue.topic.clone(),
        queue_id: queue.queue_id,
        // Ask for the truth: the consumer's own consume-from setting decides where a new group starts.
        set_zero_if_not_found: Some(false),
    };
    let cmd = RemotingCommand::request(RequestCode::QUERY_CONSUMER_OFFSET, 0).with_header(&h);
    let resp = client.invoke_on_leader(&queue.broker_name, cmd, client.config().request_timeout).await?;
    if resp.code == ResponseCode::QUERY_NOT_FOUND.0 {
        return Ok(None);
    }
    offset_of(resp, &queue.broker_name).map(Some)
}

/// Commits the group's offset of `queue` (replicated by the broker group before it answers).
pub(crate) async fn update_consumer_offset(client: &ClientInstance, group: &str, queue: &MessageQueue, offset: i64) -> Result<()> {
    let h = UpdateConsumerOffsetRequestHeader {
        consumer_group: group.to_string(),
        topic: queue.topic.clone(),
        queue_id: queue.queue_id,
        commit_offset: offset,
    };
    let cmd = RemotingCommand::request(RequestCode::UPDATE_CONSUMER_OFFSET, 0).with_header(&h);
    let resp = client.invoke_on_leader(&queue.broker_name, cmd, client.config().request_timeout).await?;
    check_success(&queue.broker_name, resp).map(|_| ())
}

/// The queue's next offset to be written.
pub(crate) async fn max_offset(client: &ClientInstance, queue: &MessageQueue) -> Result<i64> {
    let h = GetMaxOffsetRequestHeader { topic: queue.topic.clone(), queue_id: queue.queue_id, ..Default::default() };
    let cmd = RemotingCommand::request(RequestCode::GET_MAX_OFFSET, 0).with_header(&h);
    offset_of(client.invoke_on_leader(&queue.broker_name, cmd, client.config().request_timeout).await?, &queue.broker_name)
}

/// The queue's smallest retained offset.
pub(crate) async fn min_offset(client: &ClientInstance, queue: &MessageQueue) -> Result<i64> {
    let h = QueueRequestHeader { topic: queue.topic.clone(), queue_id: queue.queue_id };
    let cmd = RemotingCommand::request(RequestCode::GET_MIN_OFFSET, 0).with_header(&h);
    offset_of(client.invoke_on_leader(&queue.broker_name, cmd, client.config().request_timeout).await?, &queue.broker_name)
}

/// The first offset whose message was stored at or after `timestamp_ms`.
pub(crate) async fn search_offset(client: &ClientInstance, queue: &MessageQueue, timestamp_ms: i64) -> Result<i64> {
    let h = SearchOffsetRequestHeader {
        topic: queue.topic.clone(),
        queue_id: queue.queue_id,
        timestamp: timestamp_ms,
        boundary_type: BoundaryType::Lower,
    };
    let cmd = RemotingCommand::request(RequestCode::SEARCH_OFFSET_BY_TIMESTAMP, 0).with_header(&h);
    offset_of(client.invoke_on_leader(&queue.broker_name, cmd, client.config().request_timeout).await?, &queue.broker_name)
}

/// The readable queues of `topic` from a fresh route, sorted.
pub(crate) async fn read_queues(client: &ClientInstance, topic: &str) -> Result<Vec<MessageQueue>> {
    let route = client.update_route(topic).await?.ok_or_else(|| ClientError::NoRoute(topic.to_string()))?;
    Ok(readable_queues(topic, &route))
}

pub(crate) fn readable_queues(topic: &str, route: &TopicRouteData) -> Vec<MessageQueue> {
    let mut out: Vec<MessageQueue> = route
        .queue_datas
        .iter()
        .filter(|q| q.perm & perm::READ != 0)
        .flat_map(|q| {
            (0..q.read_queue_nums).map(|queue_id| MessageQueue { topic: topic.into(), broker_name: q.broker_name.clone(), queue_id })
        })
        .collect();
    out.sort();
    out
}

/// The client ids of `group`'s consumers, as a member of `broker_name` knows them from heartbeats.
pub(crate) async fn consumer_ids(client: &ClientInstance, group: &str, broker_name: &str) -> Result<Vec<String>> {
    let h = ConsumerGroupHeader { consumer_group: group.to_string() };
    let cmd = RemotingCommand::request(RequestCode::GET_CONSUMER_LIST_BY_GROUP, 0).with_header(&h);
    let resp = check_success(broker_name, client.invoke_on_any_member(broker_name, cmd, client.config().request_timeout).await?)?;
    let body: GetConsumerListByGroupResponseBody = decode_json_body("GetConsumerListByGroupResponseBody", &resp.body)?;
    let mut ids = body.consumer_id_list;
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// A pull consumer: the application chooses queues and offsets and stores offsets when it likes.
pub struct PullConsumer {
    client: ClientInstance,
    group: String,
    running: AtomicBool,
}

impl PullConsumer {
    /// Starts a pull consumer of `group`.
    pub async fn start(config: ClientConfig, group: impl Into<String>) -> Result<PullConsumer> {
        let group = group.into();
        if group.is_empty() {
            return Err(ClientError::State("consumer group is empty".into()));
        }
        let client = ClientInstance::get_or_create(&config)?;
        client.acquire();
        Ok(PullConsumer { client, group, running: AtomicBool::new(true) })
    }

    fn check(&self) -> Result<()> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ClientError::State(format!("pull consumer {} is shut down", self.group)))
        }
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The readable queues of `topic`.
    pub async fn fetch_subscribe_queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        self.check()?;
        read_queues(&self.client, topic).await
    }

    /// Pulls up to `max_nums` messages matching `selector` from `offset`; returns at once. A `&str` is a
    /// tag expression (`*` or `A || B`); [`MessageSelector::sql`] selects by properties on the broker.
    pub async fn pull(&self, queue: &MessageQueue, selector: impl Into<MessageSelector>, offset: i64, max_nums: i32) -> Result<PullResult> {
        self.pull_inner(queue, &selector.into(), offset, max_nums, None).await
    }

    /// Like [`PullConsumer::pull`], but the broker holds the request up to `wait` until a message arrives.
    pub async fn pull_blocking(
        &self,
        queue: &MessageQueue,
        selector: impl Into<MessageSelector>,
        offset: i64,
        max_nums: i32,
        wait: Duration,
    ) -> Result<PullResult> {
        self.pull_inner(queue, &selector.into(), offset, max_nums, Some(wait)).await
    }

    /// Checks the consumer runs and the queue's route is cached (leader lookups need it).
    async fn ready_for(&self, queue: &MessageQueue) -> Result<()> {
        self.check()?;
        if self.client.cached_route(&queue.topic).is_none() {
            self.client.update_route(&queue.topic).await?.ok_or_else(|| ClientError::NoRoute(queue.topic.clone()))?;
        }
        Ok(())
    }

    async fn pull_inner(
        &self,
        queue: &MessageQueue,
        selector: &MessageSelector,
        offset: i64,
        max_nums: i32,
        wait: Option<Duration>,
    ) -> Result<PullResult> {
        self.ready_for(queue).await?;
        let sub = Subscription::with_selector(&queue.topic, selector)?;
        let spec = PullSpec {
            group: &self.group,
            queue,
            subscription: &sub,
            offset,
            max_nums: max_nums.max(1),
            suspend: wait,
            commit_offset: None,
        };
        let timeout = self.client.config().request_timeout + wait.unwrap_or_default();
        pull_queue(&self.client, &spec, timeout).await
    }

    /// The group's committed offset for `queue`, `None` when it has none.
    pub async fn fetch_consume_offset(&self, queue: &MessageQueue) -> Result<Option<i64>> {
        self.ready_for(queue).await?;
        query_consumer_offset(&self.client, &self.group, queue).await
    }

    /// Commits the group's offset for `queue` (the next offset to consume).
    pub async fn update_consume_offset(&self, queue: &MessageQueue, offset: i64) -> Result<()> {
        self.ready_for(queue).await?;
        update_consumer_offset(&self.client, &self.group, queue, offset).await
    }

    /// The queue's smallest offset.
    pub async fn min_offset(&self, queue: &MessageQueue) -> Result<i64> {
        self.ready_for(queue).await?;
        min_offset(&self.client, queue).await
    }

    /// The queue's next offset to be written.
    pub async fn max_offset(&self, queue: &MessageQueue) -> Result<i64> {
        self.ready_for(queue).await?;
        max_offset(&self.client, queue).await
    }

    /// The first offset stored at or after `timestamp_ms`.
    pub async fn search_offset(&self, queue: &MessageQueue, timestamp_ms: i64) -> Result<i64> {
        self.ready_for(queue).await?;
        search_offset(&self.client, queue, timestamp_ms).await
    }

    /// Stops the consumer.
    pub async fn shutdown(&self) {
        if self.running.swap(false, Ordering::AcqRel) {
            self.client.release();
        }
    }
}
