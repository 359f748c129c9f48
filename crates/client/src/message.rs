//! Messages as applications see them: [`Message`] to send, [`MessageExt`] as received (decoded in place from
//! a pull response, the body a zero-copy slice of it), and [`SendResult`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use raftmq_remoting::message::{property, sys_flag, DecodedMessage};

pub use raftmq_remoting::body::MessageQueue;

use crate::error::{ClientError, Result};

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Destination topic.
    pub topic: String,
    /// Payload.
    pub body: Bytes,
    /// Application flag, stored and delivered unchanged.
    pub flag: i32,
    properties: BTreeMap<String, String>,
}

impl Message {
    /// A message for `topic`; `waitStoreMsgOK` defaults to true, as in RocketMQ.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Message {
        let mut properties = BTreeMap::new();
        properties.insert(property::WAIT_STORE_MSG_OK.to_string(), "true".to_string());
        Message { topic: topic.into(), body: body.into(), flag: 0, properties }
    }

    /// Sets the tag (one tag; consumers filter on it).
    pub fn with_tags(mut self, tags: impl Into<String>) -> Message {
        self.properties.insert(property::TAGS.to_string(), tags.into());
        self
    }

    /// Sets the keys (indexed by RocketMQ for lookups; stored space-separated).
    pub fn with_keys<I, S>(mut self, keys: I) -> Message
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined = keys.into_iter().map(|k| k.as_ref().to_string()).collect::<Vec<_>>().join(" ");
        self.properties.insert(property::KEYS.to_string(), joined);
        self
    }

    /// Sets the application flag.
    pub fn with_flag(mut self, flag: i32) -> Message {
        self.flag = flag;
        self
    }

    /// Sets a user property. Names RocketMQ reserves (see [`raftmq_remoting::message::property`]) are allowed
    /// but change behaviour.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Sets RocketMQ's delay level (1 = 1 s … 18 = 2 h with the default table; a level above the broker's
    /// table means its last level); 0 clears it. Stored as the `DELAY` property: the broker stages the
    /// message and delivers it to its topic once the level's delay has passed (docs/protocol.md).
    pub fn with_delay_level(mut self, level: u32) -> Message {
        self.clear_schedule();
        if level == 0 {
            self.properties.remove(property::DELAY_TIME_LEVEL);
        } else {
            self.properties.insert(property::DELAY_TIME_LEVEL.to_string(), level.to_string());
        }
        self
    }

    /// Delivers the message `delay` after the broker receives it (RocketMQ 5's `TIMER_DELAY_MS`; raftmq
    /// takes delays up to `timerMaxDelaySec`, 40 days by default, at millisecond precision). Clears any
    /// delay level or delivery time set before.
    pub fn with_delay(mut self, delay: std::time::Duration) -> Message {
        self.clear_schedule();
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.properties.insert(property::TIMER_DELAY_MS.to_string(), ms.to_string());
        self
    }

    /// Delivers the message at `at` (RocketMQ 5's `TIMER_DELIVER_MS`, by this machine's clock; the broker
    /// refuses a time more than `timerPastToleranceMs` in the past or beyond `timerMaxDelaySec`). A time
    /// before the epoch means "now". Clears any delay level or delay set before.
    pub fn with_delivery_time(mut self, at: std::time::SystemTime) -> Message {
        self.clear_schedule();
        let ms = at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        self.properties.insert(property::TIMER_DELIVER_MS.to_string(), ms.to_string());
        self
    }

    fn clear_schedule(&mut self) {
        for p in [property::DELAY_TIME_LEVEL, property::TIMER_DELAY_MS, property::TIMER_DELAY_SEC, property::TIMER_DELIVER_MS] {
            self.properties.remove(p);
        }
    }

    /// Sets `waitStoreMsgOK`: whether the broker should answer only after the message is stored.
    pub fn with_wait_store_msg_ok(mut self, wait: bool) -> Message {
        self.properties.insert(property::WAIT_STORE_MSG_OK.to_string(), wait.to_string());
        self
    }

    /// The tag.
    pub fn tags(&self) -> Option<&str> {
        self.property(property::TAGS)
    }

    /// The keys.
    pub fn keys(&self) -> Vec<&str> {
        self.property(property::KEYS).map(|k| k.split(' ').filter(|s| !s.is_empty()).collect()).unwrap_or_default()
    }

    /// Whether the message asks for scheduled delivery (a delay level, a delay or a delivery time).
    pub fn is_scheduled(&self) -> bool {
        self.delay_level() > 0
            || [property::TIMER_DELAY_MS, property::TIMER_DELAY_SEC, property::TIMER_DELIVER_MS].iter().any(|p| self.property(p).is_some())
    }

    /// The delay level, 0 when none.
    pub fn delay_level(&self) -> u32 {
        self.property(property::DELAY_TIME_LEVEL).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The message id (`UNIQ_KEY`) a producer gave it, once it was handed to one (a transaction listener
    /// sees it; so does a message re-sent after a failed send, which keeps its id).
    pub fn msg_id(&self) -> Option<&str> {
        self.property(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX)
    }

    /// `waitStoreMsgOK`.
    pub fn wait_store_msg_ok(&self) -> bool {
        self.property(property::WAIT_STORE_MSG_OK) != Some("false")
    }

    /// A property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    /// All properties, user and system.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    pub(crate) fn properties_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.properties
    }
}

/// A message as delivered to consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageExt {
    /// Topic. For messages redelivered through the group's retry topic this is the original topic.
    pub topic: String,
    /// Broker group the message was pulled from.
    pub broker_name: String,
    /// Queue id.
    pub queue_id: i32,
    /// Offset in the consume queue.
    pub queue_offset: i64,
    /// Byte offset in the broker's commitlog.
    pub commit_log_offset: i64,
    /// The message id: the producer's unique key when set, else the offset message id.
    pub msg_id: String,
    /// The broker-assigned id (store host + commitlog offset).
    pub offset_msg_id: String,
    /// Application flag.
    pub flag: i32,
    /// RocketMQ system flag bits.
    pub sys_flag: i32,
    /// When the producer created it (ms since the epoch).
    pub born_timestamp: i64,
    /// Producer address.
    pub born_host: SocketAddr,
    /// When the broker stored it (ms since the epoch).
    pub store_timestamp: i64,
    /// Broker address.
    pub store_host: SocketAddr,
    /// How many times it was redelivered after RECONSUME_LATER.
    pub reconsume_times: i32,
    /// Bytes the message takes in the store.
    pub store_size: i32,
    /// Properties, user and system.
    pub properties: BTreeMap<String, String>,
    /// Payload (decompressed when the producer compressed it).
    pub body: Bytes,
}

impl MessageExt {
    /// Decodes one message of a pull response. `frame` is the response body `m` was decoded from, so an
    /// uncompressed body is a slice of it rather than a copy.
    pub(crate) fn from_decoded(m: &DecodedMessage<'_>, frame: &Bytes, broker_name: &str, body_bytes_max: usize) -> Result<MessageExt> {
        let body = if m.sys_flag & sys_flag::COMPRESSED != 0 || sys_flag::compression_type(m.sys_flag) != 0 {
            Bytes::from(m.uncompressed_body(body_bytes_max).map_err(ClientError::from)?.into_owned())
        } else {
            frame.slice_ref(m.body)
        };
        let properties = m.properties_map();
        let offset_msg_id = m.offset_msg_id().to_string();
        let msg_id = m.uniq_key().map(String::from).unwrap_or_else(|| offset_msg_id.clone());
        // A redelivery from %RETRY%<group> names the original topic; applications see that one.
        let topic = match properties.get(property::RETRY_TOPIC) {
            Some(t) if m.topic.starts_with("%RETRY%") => t.clone(),
            _ => m.topic.to_string(),
        };
        Ok(MessageExt {
            topic,
            broker_name: broker_name.to_string(),
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            commit_log_offset: m.physical_offset,
            msg_id,
            offset_msg_id,
            flag: m.flag,
            sys_flag: m.sys_flag,
            born_timestamp: m.born_timestamp,
            born_host: m.born_host,
            store_timestamp: m.store_timestamp,
            store_host: m.store_host,
            reconsume_times: m.reconsume_times,
            store_size: m.store_size,
            properties,
            body,
        })
    }

    /// The tag.
    pub fn tags(&self) -> Option<&str> {
        self.property(property::TAGS)
    }

    /// The keys.
    pub fn keys(&self) -> Vec<&str> {
        self.property(property::KEYS).map(|k| k.split(' ').filter(|s| !s.is_empty()).collect()).unwrap_or_default()
    }

    /// A property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }
}

/// Outcome of a send the broker accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendStatus {
    /// Stored as requested (on raftmq: on a quorum's disks).
    SendOk,
    /// Stored, but the broker's flush did not finish in time (RocketMQ code 10).
    FlushDiskTimeout,
    /// Stored, but the replica did not confirm in time (code 12).
    FlushSlaveTimeout,
    /// Stored, but no replica is available (code 11).
    SlaveNotAvailable,
}

impl fmt::Display for SendStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendStatus::SendOk => "SEND_OK",
            SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
            SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
            SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
        })
    }
}

/// What the broker answered to an accepted send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// Status.
    pub status: SendStatus,
    /// The producer-assigned unique id (UNIQ_KEY); for a batch, the ids joined with commas.
    pub msg_id: String,
    /// The broker-assigned offset message id(s).
    pub offset_msg_id: String,
    /// The queue the message went to.
    pub queue: MessageQueue,
    /// Its offset in that queue (for a batch: the first message's).
    pub queue_offset: i64,
}

impl fmt::Display for SendResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} queue={} offset={} msgId={}",
            self.status, self.queue.broker_name, self.queue.queue_id, self.queue_offset, self.msg_id
        )
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn one_schedule_at_a_time() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_800_000_000_123);
        let m = Message::new("T", "b").with_delay_level(3).with_delay(std::time::Duration::from_millis(1500));
        assert_eq!((m.property(property::TIMER_DELAY_MS), m.delay_level()), (Some("1500"), 0));
        let m = m.with_delivery_time(at);
        assert_eq!(m.property(property::TIMER_DELIVER_MS), Some("1800000000123"));
        assert_eq!(m.property(property::TIMER_DELAY_MS), None);
        let m = m.with_delay_level(2);
        assert_eq!((m.delay_level(), m.property(property::TIMER_DELIVER_MS)), (2, None));
    }
}
