//! Typed custom headers (reference §5): each request or response header is a struct built from, and written
//! to, a command's `extFields`. No I/O and no broker rules; the broker's processors call
//! [`RemotingCommand::decode_header`](crate::RemotingCommand::decode_header) and
//! [`RemotingCommand::with_header`](crate::RemotingCommand::with_header).
//!
//! Parsing is lenient in the way real clients need (interop rule 3): values were already normalised to
//! strings by the frame decoder; integers may carry surrounding spaces; booleans accept
//! `true`/`false`/`1`/`0` in any case; an empty string in an optional field counts as absent. Keys this crate
//! does not know (`ns`, `nsd`, `bname`, `oway`, `lo`, `AccessKey`, `Signature`, `OnsChannel`, …) are ignored
//! (rule 12).
//!
//! Required fields follow Java's `@CFNotNull` where the broker cannot do without the value. Where Java
//! requires a field that has a neutral value (`defaultTopic`, `commitOffset`, `subVersion`, …) this crate
//! defaults it instead and says so on the field: that only admits more clients. Every error names the wire
//! key and the Java field.
//!
//! Writing always produces strings (interop rule 2).

use crate::error::{quote, RemotingError, Result};
use crate::frame::ExtFields;
use crate::RequestCode;

/// A custom header carried in `extFields`.
pub trait CommandHeader: Sized {
    /// Parses the header from `extFields`.
    ///
    /// # Errors
    /// [`RemotingError::MissingField`] for an absent required key, [`RemotingError::InvalidField`] for a value
    /// of the wrong type.
    fn from_ext_fields(fields: &ExtFields) -> Result<Self>;

    /// Writes every present field into `out` as strings (keeping other entries).
    fn write_ext_fields(&self, out: &mut ExtFields);

    /// The header as a fresh map.
    fn to_ext_fields(&self) -> ExtFields {
        let mut out = ExtFields::new();
        self.write_ext_fields(&mut out);
        out
    }
}

/// Read access to `extFields` that turns absent or malformed values into errors naming the field.
struct Fields<'a> {
    map: &'a ExtFields,
    /// Maps a wire key to its Java field name (identity except for the V2 send header).
    name_of: fn(&'static str) -> &'static str,
    /// For the V2 send header, the values of the one-letter keys `a`..=`n`, gathered in one pass over `map`
    /// (a send request is decoded per message; one pass is cheaper than a map search per field).
    letters: Option<[Option<&'a str>; V2_LETTERS]>,
}

/// The V2 send header's keys: `a` to `n`.
const V2_LETTERS: usize = 14;

fn same_name(key: &'static str) -> &'static str {
    key
}

/// The slot of a one-letter V2 key.
fn letter_slot(key: &str) -> Option<usize> {
    match key.as_bytes() {
        [c @ b'a'..=b'n'] => Some(usize::from(c - b'a')),
        _ => None,
    }
}

impl<'a> Fields<'a> {
    fn new(map: &'a ExtFields) -> Self {
        Fields { map, name_of: same_name, letters: None }
    }

    /// Fields keyed by one letter (the V2 send header), read in one pass.
    fn letters(map: &'a ExtFields, name_of: fn(&'static str) -> &'static str) -> Self {
        let mut letters = [None; V2_LETTERS];
        for (key, value) in map {
            if let Some(slot) = letter_slot(key) {
                letters[slot] = Some(value.as_str());
            }
        }
        Fields { map, name_of, letters: Some(letters) }
    }

    fn invalid(&self, key: &'static str, value: &str, expected: &'static str) -> RemotingError {
        RemotingError::InvalidField { key, name: (self.name_of)(key), value: quote(value), expected }
    }

    fn opt_str(&self, key: &'static str) -> Option<&'a str> {
        if let (Some(letters), Some(slot)) = (&self.letters, letter_slot(key)) {
            return letters[slot];
        }
        self.map.get(key).map(String::as_str)
    }

    fn opt_string(&self, key: &'static str) -> Option<String> {
        self.opt_str(key).map(str::to_owned)
    }

    fn string(&self, key: &'static str) -> Result<String> {
        self.opt_string(key).ok_or(RemotingError::MissingField { key, name: (self.name_of)(key) })
    }

    /// A non-empty value, or `None` when absent or empty (optional numbers and booleans).
    fn opt_nonempty(&self, key: &'static str) -> Option<&'a str> {
        self.opt_str(key).map(str::trim).filter(|s| !s.is_empty())
    }

    fn opt_int<T: std::str::FromStr>(&self, key: &'static str, expected: &'static str) -> Result<Option<T>> {
        match self.opt_nonempty(key) {
            None => Ok(None),
            Some(s) => s.parse::<T>().map(Some).map_err(|_| self.invalid(key, s, expected)),
        }
    }

    fn int<T: std::str::FromStr>(&self, key: &'static str, expected: &'static str) -> Result<T> {
        match self.opt_str(key) {
            None => Err(RemotingError::MissingField { key, name: (self.name_of)(key) }),
            Some(s) => s.trim().parse::<T>().map_err(|_| self.invalid(key, s, expected)),
        }
    }

    fn opt_i32(&self, key: &'static str) -> Result<Option<i32>> {
        self.opt_int(key, "a 32-bit integer")
    }

    fn i32(&self, key: &'static str) -> Result<i32> {
        self.int(key, "a 32-bit integer")
    }

    fn opt_i64(&self, key: &'static str) -> Result<Option<i64>> {
        self.opt_int(key, "a 64-bit integer")
    }

    fn i64(&self, key: &'static str) -> Result<i64> {
        self.int(key, "a 64-bit integer")
    }

    fn opt_bool(&self, key: &'static str) -> Result<Option<bool>> {
        match self.opt_nonempty(key) {
            None => Ok(None),
            Some(s) => parse_bool(s).map(Some).ok_or_else(|| self.invalid(key, s, "true, false, 1 or 0")),
        }
    }

    fn bool_or(&self, key: &'static str, default: bool) -> Result<bool> {
        Ok(self.opt_bool(key)?.unwrap_or(default))
    }
}

/// Parses a header boolean: `true`/`false` in any case (Java), or `1`/`0` (C++ 2.x).
pub fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("true") || s == "1" {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") || s == "0" {
        Some(false)
    } else {
        None
    }
}

/// A header field's value as the text written to `extFields`. Strings are copied as they are rather than
/// through `Display` formatting (responses write a header per message).
trait WireText {
    fn wire_text(&self) -> String;
}

impl WireText for str {
    fn wire_text(&self) -> String {
        self.to_owned()
    }
}

impl WireText for String {
    fn wire_text(&self) -> String {
        self.clone()
    }
}

macro_rules! wire_text_via_display {
    ($($ty:ty),*) => {
        $(impl WireText for $ty {
            fn wire_text(&self) -> String {
                self.to_string()
            }
        })*
    };
}

wire_text_via_display!(i32, i64, bool);

impl<T: WireText + ?Sized> WireText for &T {
    fn wire_text(&self) -> String {
        (**self).wire_text()
    }
}

fn put(out: &mut ExtFields, key: &str, value: impl WireText) {
    out.insert(key.to_owned(), value.wire_text());
}

fn put_opt(out: &mut ExtFields, key: &str, value: Option<impl WireText>) {
    if let Some(v) = value {
        put(out, key, v);
    }
}

/// The template topic producers name in `defaultTopic` (`AUTO_CREATE_TOPIC_KEY_TOPIC`).
pub const DEFAULT_TOPIC: &str = "TBW102";
/// The queue count producers name in `defaultTopicQueueNums`.
pub const DEFAULT_TOPIC_QUEUE_NUMS: i32 = 4;

// ---------------------------------------------------------------------------------------------------------
// Send
// ---------------------------------------------------------------------------------------------------------

/// SEND_MESSAGE (10) header, and the same fields under one-letter keys for SEND_MESSAGE_V2 (310),
/// SEND_BATCH_MESSAGE (320) and SEND_REPLY_MESSAGE_V2 (325) (reference §5.2, §5.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendMessageRequestHeader {
    /// `producerGroup` / `a`; required.
    pub producer_group: String,
    /// `topic` / `b`; required.
    pub topic: String,
    /// `defaultTopic` / `c`; Java requires it, defaulted here to [`DEFAULT_TOPIC`].
    pub default_topic: String,
    /// `defaultTopicQueueNums` / `d`; Java requires it, defaulted here to [`DEFAULT_TOPIC_QUEUE_NUMS`].
    pub default_topic_queue_nums: i32,
    /// `queueId` / `e`; required.
    pub queue_id: i32,
    /// `sysFlag` / `f` (MessageSysFlag bits); required.
    pub sys_flag: i32,
    /// `bornTimestamp` / `g` (ms); required.
    pub born_timestamp: i64,
    /// `flag` / `h` (user flag); required.
    pub flag: i32,
    /// `properties` / `i`: the encoded property block (for a batch: the batch-level properties).
    pub properties: Option<String>,
    /// `reconsumeTimes` / `j`.
    pub reconsume_times: Option<i32>,
    /// `unitMode` / `k`.
    pub unit_mode: Option<bool>,
    /// `batch` / `m`.
    pub batch: Option<bool>,
    /// `maxReconsumeTimes` / `l`.
    pub max_reconsume_times: Option<i32>,
    /// `bname` (RPC base header, V1) / `n` (V2): the broker name the client aimed at.
    pub broker_name: Option<String>,
}

/// V2 one-letter key → V1 (Java) field name.
const SEND_V2_KEYS: &[(&str, &str)] = &[
    ("a", "producerGroup"),
    ("b", "topic"),
    ("c", "defaultTopic"),
    ("d", "defaultTopicQueueNums"),
    ("e", "queueId"),
    ("f", "sysFlag"),
    ("g", "bornTimestamp"),
    ("h", "flag"),
    ("i", "properties"),
    ("j", "reconsumeTimes"),
    ("k", "unitMode"),
    ("l", "maxReconsumeTimes"),
    ("m", "batch"),
    ("n", "brokerName"),
];

fn send_v2_name(key: &'static str) -> &'static str {
    SEND_V2_KEYS.iter().find(|(k, _)| *k == key).map(|(_, n)| *n).unwrap_or(key)
}

impl SendMessageRequestHeader {
    /// True when requests with `code` carry the V2 (one-letter) header.
    pub fn is_v2_code(code: RequestCode) -> bool {
        matches!(code, RequestCode::SEND_MESSAGE_V2 | RequestCode::SEND_BATCH_MESSAGE | RequestCode::SEND_REPLY_MESSAGE_V2)
    }

    /// Parses the header of a send request with `code`: the V2 form for 310/320/325, else the V1 form.
    ///
    /// # Errors
    /// As [`CommandHeader::from_ext_fields`].
    pub fn decode_for(code: RequestCode, fields: &ExtFields) -> Result<Self> {
        if Self::is_v2_code(code) {
            Self::from_ext_fields_v2(fields)
        } else {
            Self::from_ext_fields(fields)
        }
    }

    /// Parses the V2 (one-letter) form. Errors name the letter and the Java field.
    ///
    /// # Errors
    /// As [`CommandHeader::from_ext_fields`].
    pub fn from_ext_fields_v2(fields: &ExtFields) -> Result<Self> {
        let f = Fields::letters(fields, send_v2_name);
        Ok(SendMessageRequestHeader {
            producer_group: f.string("a")?,
            topic: f.string("b")?,
            default_topic: f.opt_string("c").unwrap_or_else(|| DEFAULT_TOPIC.to_owned()),
            default_topic_queue_nums: f.opt_i32("d")?.unwrap_or(DEFAULT_TOPIC_QUEUE_NUMS),
            queue_id: f.i32("e")?,
            sys_flag: f.i32("f")?,
            born_timestamp: f.i64("g")?,
            flag: f.i32("h")?,
            properties: f.opt_string("i"),
            reconsume_times: f.opt_i32("j")?,
            unit_mode: f.opt_bool("k")?,
            max_reconsume_times: f.opt_i32("l")?,
            batch: f.opt_bool("m")?,
            broker_name: f.opt_string("n"),
        })
    }

    /// Writes the V2 (one-letter) form.
    pub fn write_ext_fields_v2(&self, out: &mut ExtFields) {
        put(out, "a", &self.producer_group);
        put(out, "b", &self.topic);
        put(out, "c", &self.default_topic);
        put(out, "d", self.default_topic_queue_nums);
        put(out, "e", self.queue_id);
        put(out, "f", self.sys_flag);
        put(out, "g", self.born_timestamp);
        put(out, "h", self.flag);
        put_opt(out, "i", self.properties.as_ref());
        put_opt(out, "j", self.reconsume_times);
        put_opt(out, "k", self.unit_mode);
        put_opt(out, "l", self.max_reconsume_times);
        put_opt(out, "m", self.batch);
        put_opt(out, "n", self.broker_name.as_ref());
    }
}

impl CommandHeader for SendMessageRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(SendMessageRequestHeader {
            producer_group: f.string("producerGroup")?,
            topic: f.string("topic")?,
            default_topic: f.opt_string("defaultTopic").unwrap_or_else(|| DEFAULT_TOPIC.to_owned()),
            default_topic_queue_nums: f.opt_i32("defaultTopicQueueNums")?.unwrap_or(DEFAULT_TOPIC_QUEUE_NUMS),
            queue_id: f.i32("queueId")?,
            sys_flag: f.i32("sysFlag")?,
            born_timestamp: f.i64("bornTimestamp")?,
            flag: f.i32("flag")?,
            properties: f.opt_string("properties"),
            reconsume_times: f.opt_i32("reconsumeTimes")?,
            unit_mode: f.opt_bool("unitMode")?,
            batch: f.opt_bool("batch")?,
            max_reconsume_times: f.opt_i32("maxReconsumeTimes")?,
            broker_name: f.opt_string("bname"),
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "producerGroup", &self.producer_group);
        put(out, "topic", &self.topic);
        put(out, "defaultTopic", &self.default_topic);
        put(out, "defaultTopicQueueNums", self.default_topic_queue_nums);
        put(out, "queueId", self.queue_id);
        put(out, "sysFlag", self.sys_flag);
        put(out, "bornTimestamp", self.born_timestamp);
        put(out, "flag", self.flag);
        put_opt(out, "properties", self.properties.as_ref());
        put_opt(out, "reconsumeTimes", self.reconsume_times);
        put_opt(out, "unitMode", self.unit_mode);
        put_opt(out, "batch", self.batch);
        put_opt(out, "maxReconsumeTimes", self.max_reconsume_times);
        put_opt(out, "bname", self.broker_name.as_ref());
    }
}

/// The region Java brokers report by default in `MSG_REGION`.
pub const MSG_REGION_DEFAULT: &str = "DefaultRegion";

/// Response header of the send requests (reference §5.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendMessageResponseHeader {
    /// `msgId`: the offsetMsgId (comma-joined for a batch); required.
    pub msg_id: String,
    /// `queueId`; required.
    pub queue_id: i32,
    /// `queueOffset` (for a batch: the first message's); required.
    pub queue_offset: i64,
    /// `transactionId`.
    pub transaction_id: Option<String>,
    /// `batchUniqId`.
    pub batch_uniq_id: Option<String>,
    /// `recallHandle` (5.x).
    pub recall_handle: Option<String>,
    /// `MSG_REGION`, read by clients; Java brokers send [`MSG_REGION_DEFAULT`].
    pub msg_region: Option<String>,
    /// `TRACE_ON`, read by clients: when false the Java client skips message tracing for this send.
    pub trace_on: Option<bool>,
}

impl SendMessageResponseHeader {
    /// A header with region [`MSG_REGION_DEFAULT`] and `TRACE_ON = false` (raftmq hosts no trace topic).
    pub fn new(msg_id: String, queue_id: i32, queue_offset: i64) -> Self {
        SendMessageResponseHeader {
            msg_id,
            queue_id,
            queue_offset,
            msg_region: Some(MSG_REGION_DEFAULT.to_owned()),
            trace_on: Some(false),
            ..Default::default()
        }
    }
}

impl CommandHeader for SendMessageResponseHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(SendMessageResponseHeader {
            msg_id: f.string("msgId")?,
            queue_id: f.i32("queueId")?,
            queue_offset: f.i64("queueOffset")?,
            transaction_id: f.opt_string("transactionId"),
            batch_uniq_id: f.opt_string("batchUniqId"),
            recall_handle: f.opt_string("recallHandle"),
            msg_region: f.opt_string("MSG_REGION"),
            trace_on: f.opt_bool("TRACE_ON")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "msgId", &self.msg_id);
        put(out, "queueId", self.queue_id);
        put(out, "queueOffset", self.queue_offset);
        put_opt(out, "transactionId", self.transaction_id.as_ref());
        put_opt(out, "batchUniqId", self.batch_uniq_id.as_ref());
        put_opt(out, "recallHandle", self.recall_handle.as_ref());
        put_opt(out, "MSG_REGION", self.msg_region.as_ref());
        put_opt(out, "TRACE_ON", self.trace_on);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Pull
// ---------------------------------------------------------------------------------------------------------

/// PullSysFlag bits of [`PullMessageRequestHeader::sys_flag`].
pub mod pull_sys_flag {
    /// `commitOffset` is valid.
    pub const COMMIT_OFFSET: i32 = 1;
    /// Long polling allowed.
    pub const SUSPEND: i32 = 2;
    /// Use the request's `subscription`.
    pub const SUBSCRIPTION: i32 = 4;
    /// Class filter.
    pub const CLASS_FILTER: i32 = 8;
    /// Lite pull.
    pub const LITE_PULL: i32 = 16;
}

/// PULL_MESSAGE (11) request header (reference §5.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullMessageRequestHeader {
    /// `consumerGroup`; required.
    pub consumer_group: String,
    /// `topic`; required.
    pub topic: String,
    /// `queueId`; required.
    pub queue_id: i32,
    /// `queueOffset`; required.
    pub queue_offset: i64,
    /// `maxMsgNums`; required.
    pub max_msg_nums: i32,
    /// `sysFlag` ([`pull_sys_flag`]); required.
    pub sys_flag: i32,
    /// `commitOffset`; Java requires it, defaulted here to 0 (only read when sysFlag bit 0 is set).
    pub commit_offset: i64,
    /// `suspendTimeoutMillis`; Java requires it, defaulted here to 0 (no long polling).
    pub suspend_timeout_millis: i64,
    /// `subscription`: the expression, when sysFlag bit 2 is set and it is non-empty.
    pub subscription: Option<String>,
    /// `subVersion`; Java requires it, defaulted here to 0.
    pub sub_version: i64,
    /// `expressionType`: `TAG` or `SQL92`.
    pub expression_type: Option<String>,
    /// `maxMsgBytes`.
    pub max_msg_bytes: Option<i32>,
    /// `requestSource`.
    pub request_source: Option<i32>,
    /// `proxyFrowardClientId` (sic).
    pub proxy_forward_client_id: Option<String>,
}

impl PullMessageRequestHeader {
    /// The subscription this request carries, if it carries one: sysFlag bit 2 set and a non-empty string
    /// (the mxsm client sends sysFlag 2 with `subscription = ""`; interop rule 8).
    pub fn carried_subscription(&self) -> Option<&str> {
        if self.sys_flag & pull_sys_flag::SUBSCRIPTION == 0 {
            return None;
        }
        self.subscription.as_deref().filter(|s| !s.trim().is_empty())
    }

    /// The commit offset, when sysFlag bit 0 says it is valid.
    pub fn carried_commit_offset(&self) -> Option<i64> {
        (self.sys_flag & pull_sys_flag::COMMIT_OFFSET != 0).then_some(self.commit_offset)
    }
}

impl CommandHeader for PullMessageRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(PullMessageRequestHeader {
            consumer_group: f.string("consumerGroup")?,
            topic: f.string("topic")?,
            queue_id: f.i32("queueId")?,
            queue_offset: f.i64("queueOffset")?,
            max_msg_nums: f.i32("maxMsgNums")?,
            sys_flag: f.i32("sysFlag")?,
            commit_offset: f.opt_i64("commitOffset")?.unwrap_or(0),
            suspend_timeout_millis: f.opt_i64("suspendTimeoutMillis")?.unwrap_or(0),
            subscription: f.opt_string("subscription"),
            sub_version: f.opt_i64("subVersion")?.unwrap_or(0),
            expression_type: f.opt_string("expressionType"),
            max_msg_bytes: f.opt_i32("maxMsgBytes")?,
            request_source: f.opt_i32("requestSource")?,
            proxy_forward_client_id: f.opt_string("proxyFrowardClientId"),
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "consumerGroup", &self.consumer_group);
        put(out, "topic", &self.topic);
        put(out, "queueId", self.queue_id);
        put(out, "queueOffset", self.queue_offset);
        put(out, "maxMsgNums", self.max_msg_nums);
        put(out, "sysFlag", self.sys_flag);
        put(out, "commitOffset", self.commit_offset);
        put(out, "suspendTimeoutMillis", self.suspend_timeout_millis);
        put_opt(out, "subscription", self.subscription.as_ref());
        put(out, "subVersion", self.sub_version);
        put_opt(out, "expressionType", self.expression_type.as_ref());
        put_opt(out, "maxMsgBytes", self.max_msg_bytes);
        put_opt(out, "requestSource", self.request_source);
        put_opt(out, "proxyFrowardClientId", self.proxy_forward_client_id.as_ref());
    }
}

/// PULL_MESSAGE response header. The four offsets are required by Java clients, so they are always written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullMessageResponseHeader {
    /// `suggestWhichBrokerId` (0 = master).
    pub suggest_which_broker_id: i64,
    /// `nextBeginOffset`.
    pub next_begin_offset: i64,
    /// `minOffset`.
    pub min_offset: i64,
    /// `maxOffset`.
    pub max_offset: i64,
    /// `offsetDelta`.
    pub offset_delta: Option<i64>,
    /// `topicSysFlag`.
    pub topic_sys_flag: Option<i32>,
    /// `groupSysFlag`.
    pub group_sys_flag: Option<i32>,
    /// `forbiddenType`.
    pub forbidden_type: Option<i32>,
}

impl CommandHeader for PullMessageResponseHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(PullMessageResponseHeader {
            suggest_which_broker_id: f.i64("suggestWhichBrokerId")?,
            next_begin_offset: f.i64("nextBeginOffset")?,
            min_offset: f.i64("minOffset")?,
            max_offset: f.i64("maxOffset")?,
            offset_delta: f.opt_i64("offsetDelta")?,
            topic_sys_flag: f.opt_i32("topicSysFlag")?,
            group_sys_flag: f.opt_i32("groupSysFlag")?,
            forbidden_type: f.opt_i32("forbiddenType")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "suggestWhichBrokerId", self.suggest_which_broker_id);
        put(out, "nextBeginOffset", self.next_begin_offset);
        put(out, "minOffset", self.min_offset);
        put(out, "maxOffset", self.max_offset);
        put_opt(out, "offsetDelta", self.offset_delta);
        put_opt(out, "topicSysFlag", self.topic_sys_flag);
        put_opt(out, "groupSysFlag", self.group_sys_flag);
        put_opt(out, "forbiddenType", self.forbidden_type);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Offsets
// ---------------------------------------------------------------------------------------------------------

/// QUERY_CONSUMER_OFFSET (14) request header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryConsumerOffsetRequestHeader {
    /// `consumerGroup`; required.
    pub consumer_group: String,
    /// `topic`; required.
    pub topic: String,
    /// `queueId`; required.
    pub queue_id: i32,
    /// `setZeroIfNotFound`; absent means true, as in Java (see the "no offset yet" rule, §5.6).
    pub set_zero_if_not_found: Option<bool>,
}

impl CommandHeader for QueryConsumerOffsetRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(QueryConsumerOffsetRequestHeader {
            consumer_group: f.string("consumerGroup")?,
            topic: f.string("topic")?,
            queue_id: f.i32("queueId")?,
            set_zero_if_not_found: f.opt_bool("setZeroIfNotFound")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "consumerGroup", &self.consumer_group);
        put(out, "topic", &self.topic);
        put(out, "queueId", self.queue_id);
        put_opt(out, "setZeroIfNotFound", self.set_zero_if_not_found);
    }
}

/// A response header holding only `offset`: the answer to QUERY_CONSUMER_OFFSET (14),
/// SEARCH_OFFSET_BY_TIMESTAMP (29), GET_MAX_OFFSET (30) and GET_MIN_OFFSET (31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OffsetResponseHeader {
    /// `offset`; required.
    pub offset: i64,
}

/// QUERY_CONSUMER_OFFSET response header.
pub type QueryConsumerOffsetResponseHeader = OffsetResponseHeader;
/// GET_MAX_OFFSET response header.
pub type GetMaxOffsetResponseHeader = OffsetResponseHeader;
/// GET_MIN_OFFSET response header.
pub type GetMinOffsetResponseHeader = OffsetResponseHeader;
/// SEARCH_OFFSET_BY_TIMESTAMP response header.
pub type SearchOffsetResponseHeader = OffsetResponseHeader;

impl CommandHeader for OffsetResponseHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        Ok(OffsetResponseHeader { offset: Fields::new(fields).i64("offset")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "offset", self.offset);
    }
}

/// UPDATE_CONSUMER_OFFSET (15) request header; the response is an empty SUCCESS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateConsumerOffsetRequestHeader {
    /// `consumerGroup`; required.
    pub consumer_group: String,
    /// `topic`; required.
    pub topic: String,
    /// `queueId`; required.
    pub queue_id: i32,
    /// `commitOffset`; required.
    pub commit_offset: i64,
}

impl CommandHeader for UpdateConsumerOffsetRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(UpdateConsumerOffsetRequestHeader {
            consumer_group: f.string("consumerGroup")?,
            topic: f.string("topic")?,
            queue_id: f.i32("queueId")?,
            commit_offset: f.i64("commitOffset")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "consumerGroup", &self.consumer_group);
        put(out, "topic", &self.topic);
        put(out, "queueId", self.queue_id);
        put(out, "commitOffset", self.commit_offset);
    }
}

/// GET_MAX_OFFSET (30) request header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetMaxOffsetRequestHeader {
    /// `topic`; required.
    pub topic: String,
    /// `queueId`; required.
    pub queue_id: i32,
    /// `committed`; absent means true.
    pub committed: Option<bool>,
}

impl CommandHeader for GetMaxOffsetRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(GetMaxOffsetRequestHeader { topic: f.string("topic")?, queue_id: f.i32("queueId")?, committed: f.opt_bool("committed")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "topic", &self.topic);
        put(out, "queueId", self.queue_id);
        put_opt(out, "committed", self.committed);
    }
}

/// A request header naming one queue: GET_MIN_OFFSET (31) and GET_EARLIEST_MSG_STORETIME (32).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueRequestHeader {
    /// `topic`; required.
    pub topic: String,
    /// `queueId`; required.
    pub queue_id: i32,
}

/// GET_MIN_OFFSET request header.
pub type GetMinOffsetRequestHeader = QueueRequestHeader;
/// GET_EARLIEST_MSG_STORETIME request header (Java marks neither field required; the broker needs both).
pub type GetEarliestMsgStoretimeRequestHeader = QueueRequestHeader;

impl CommandHeader for QueueRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(QueueRequestHeader { topic: f.string("topic")?, queue_id: f.i32("queueId")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "topic", &self.topic);
        put(out, "queueId", self.queue_id);
    }
}

/// Which side of equal timestamps SEARCH_OFFSET_BY_TIMESTAMP returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoundaryType {
    /// The first matching offset (Java's default).
    #[default]
    Lower,
    /// The last matching offset.
    Upper,
}

impl BoundaryType {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            BoundaryType::Lower => "LOWER",
            BoundaryType::Upper => "UPPER",
        }
    }
}

/// SEARCH_OFFSET_BY_TIMESTAMP (29) request header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchOffsetRequestHeader {
    /// `topic`; required.
    pub topic: String,
    /// `queueId`; required.
    pub queue_id: i32,
    /// `timestamp` (ms); required.
    pub timestamp: i64,
    /// `boundaryType`; absent means LOWER.
    pub boundary_type: BoundaryType,
}

impl CommandHeader for SearchOffsetRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        let boundary_type = match f.opt_nonempty("boundaryType") {
            None => BoundaryType::Lower,
            Some(s) if s.eq_ignore_ascii_case("LOWER") => BoundaryType::Lower,
            Some(s) if s.eq_ignore_ascii_case("UPPER") => BoundaryType::Upper,
            Some(s) => return Err(f.invalid("boundaryType", s, "LOWER or UPPER")),
        };
        Ok(SearchOffsetRequestHeader {
            topic: f.string("topic")?,
            queue_id: f.i32("queueId")?,
            timestamp: f.i64("timestamp")?,
            boundary_type,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "topic", &self.topic);
        put(out, "queueId", self.queue_id);
        put(out, "timestamp", self.timestamp);
        put(out, "boundaryType", self.boundary_type.name());
    }
}

/// GET_EARLIEST_MSG_STORETIME response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetEarliestMsgStoretimeResponseHeader {
    /// `timestamp` (ms); required.
    pub timestamp: i64,
}

impl CommandHeader for GetEarliestMsgStoretimeResponseHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        Ok(GetEarliestMsgStoretimeResponseHeader { timestamp: Fields::new(fields).i64("timestamp")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "timestamp", self.timestamp);
    }
}

/// Extension field of QUERY_MESSAGE (12) that makes it a message-id (`UNIQ_KEY`) lookup (Java
/// `MixAll.UNIQUE_MSG_QUERY_FLAG`); value `true`.
pub const UNIQUE_KEY_QUERY_FIELD: &str = "_UNIQUE_KEY_QUERY";

/// QUERY_MESSAGE (12) request header (reference: rocketmq-scheduled-transactional-ops.md §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryMessageRequestHeader {
    /// `topic`; required.
    pub topic: String,
    /// `key`; required: a `KEYS` token, or with [`UNIQUE_KEY_QUERY_FIELD`] a `UNIQ_KEY`.
    pub key: String,
    /// `maxNum`; required.
    pub max_num: i32,
    /// `beginTimestamp` (store time, ms); required.
    pub begin_timestamp: i64,
    /// `endTimestamp` (store time, ms); required.
    pub end_timestamp: i64,
}

impl CommandHeader for QueryMessageRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(QueryMessageRequestHeader {
            topic: f.string("topic")?,
            key: f.string("key")?,
            max_num: f.i32("maxNum")?,
            begin_timestamp: f.i64("beginTimestamp")?,
            end_timestamp: f.i64("endTimestamp")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "topic", &self.topic);
        put(out, "key", &self.key);
        put(out, "maxNum", self.max_num);
        put(out, "beginTimestamp", self.begin_timestamp);
        put(out, "endTimestamp", self.end_timestamp);
    }
}

/// QUERY_MESSAGE (12) response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryMessageResponseHeader {
    /// `indexLastUpdateTimestamp`: newest store time indexed (ms); required.
    pub index_last_update_timestamp: i64,
    /// `indexLastUpdatePhyoffset`: commitlog position indexed up to; required.
    pub index_last_update_phyoffset: i64,
}

impl CommandHeader for QueryMessageResponseHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(QueryMessageResponseHeader {
            index_last_update_timestamp: f.i64("indexLastUpdateTimestamp")?,
            index_last_update_phyoffset: f.i64("indexLastUpdatePhyoffset")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "indexLastUpdateTimestamp", self.index_last_update_timestamp);
        put(out, "indexLastUpdatePhyoffset", self.index_last_update_phyoffset);
    }
}

/// VIEW_MESSAGE_BY_ID (33) request header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ViewMessageRequestHeader {
    /// `topic` (5.x clients send it; unused by the broker).
    pub topic: Option<String>,
    /// `offset`: the commitlog offset decoded from an offsetMsgId; required.
    pub offset: i64,
}

impl CommandHeader for ViewMessageRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(ViewMessageRequestHeader { topic: f.opt_string("topic"), offset: f.i64("offset")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put_opt(out, "topic", self.topic.as_ref());
        put(out, "offset", self.offset);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Nameserver
// ---------------------------------------------------------------------------------------------------------

/// GET_ROUTEINFO_BY_TOPIC (105) request header. The answer's body is a
/// [`TopicRouteData`](crate::body::TopicRouteData), always with standard JSON keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetRouteInfoRequestHeader {
    /// `topic`; required.
    pub topic: String,
    /// `acceptStandardJsonOnly`.
    pub accept_standard_json_only: Option<bool>,
}

impl CommandHeader for GetRouteInfoRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(GetRouteInfoRequestHeader { topic: f.string("topic")?, accept_standard_json_only: f.opt_bool("acceptStandardJsonOnly")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "topic", &self.topic);
        put_opt(out, "acceptStandardJsonOnly", self.accept_standard_json_only);
    }
}

/// REGISTER_BROKER (103) request header (reference §5.13).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterBrokerRequestHeader {
    /// `brokerName`; required.
    pub broker_name: String,
    /// `brokerAddr`; required.
    pub broker_addr: String,
    /// `clusterName`; required.
    pub cluster_name: String,
    /// `haServerAddr`; required.
    pub ha_server_addr: String,
    /// `brokerId`; required.
    pub broker_id: i64,
    /// `heartbeatTimeoutMillis`.
    pub heartbeat_timeout_millis: Option<i64>,
    /// `enableActingMaster`.
    pub enable_acting_master: Option<bool>,
    /// `compressed`: the body is Java's custom compressed form rather than JSON. Default false.
    pub compressed: bool,
    /// `bodyCrc32`. Default 0.
    pub body_crc32: i32,
    /// `raftTerm` (raftmq extension; Java nameservers ignore unknown keys): the Raft term in which the
    /// broker registers. A raftmq nameserver keeps the brokerId-0 registration of the highest term while it
    /// is alive, so a deposed leader cannot take the route back. Absent from non-raftmq brokers.
    pub raft_term: Option<i64>,
}

impl CommandHeader for RegisterBrokerRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(RegisterBrokerRequestHeader {
            broker_name: f.string("brokerName")?,
            broker_addr: f.string("brokerAddr")?,
            cluster_name: f.string("clusterName")?,
            ha_server_addr: f.string("haServerAddr")?,
            broker_id: f.i64("brokerId")?,
            heartbeat_timeout_millis: f.opt_i64("heartbeatTimeoutMillis")?,
            enable_acting_master: f.opt_bool("enableActingMaster")?,
            compressed: f.bool_or("compressed", false)?,
            body_crc32: f.opt_i32("bodyCrc32")?.unwrap_or(0),
            raft_term: f.opt_i64("raftTerm")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "brokerName", &self.broker_name);
        put(out, "brokerAddr", &self.broker_addr);
        put(out, "clusterName", &self.cluster_name);
        put(out, "haServerAddr", &self.ha_server_addr);
        put(out, "brokerId", self.broker_id);
        put_opt(out, "heartbeatTimeoutMillis", self.heartbeat_timeout_millis);
        put_opt(out, "enableActingMaster", self.enable_acting_master);
        put(out, "compressed", self.compressed);
        put(out, "bodyCrc32", self.body_crc32);
        put_opt(out, "raftTerm", self.raft_term);
    }
}

/// REGISTER_BROKER response header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterBrokerResponseHeader {
    /// `haServerAddr`.
    pub ha_server_addr: Option<String>,
    /// `masterAddr`.
    pub master_addr: Option<String>,
}

impl CommandHeader for RegisterBrokerResponseHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(RegisterBrokerResponseHeader { ha_server_addr: f.opt_string("haServerAddr"), master_addr: f.opt_string("masterAddr") })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put_opt(out, "haServerAddr", self.ha_server_addr.as_ref());
        put_opt(out, "masterAddr", self.master_addr.as_ref());
    }
}

/// UNREGISTER_BROKER (104) request header. Java marks every field required.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnregisterBrokerRequestHeader {
    /// `brokerName`.
    pub broker_name: String,
    /// `brokerAddr`.
    pub broker_addr: String,
    /// `clusterName`.
    pub cluster_name: String,
    /// `brokerId`.
    pub broker_id: i64,
}

impl CommandHeader for UnregisterBrokerRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(UnregisterBrokerRequestHeader {
            broker_name: f.string("brokerName")?,
            broker_addr: f.string("brokerAddr")?,
            cluster_name: f.string("clusterName")?,
            broker_id: f.i64("brokerId")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "brokerName", &self.broker_name);
        put(out, "brokerAddr", &self.broker_addr);
        put(out, "clusterName", &self.cluster_name);
        put(out, "brokerId", self.broker_id);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Client membership, retries, transactions, admin
// ---------------------------------------------------------------------------------------------------------

/// A header holding only `consumerGroup`: GET_CONSUMER_LIST_BY_GROUP (38) and, broker → client,
/// NOTIFY_CONSUMER_IDS_CHANGED (40).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerGroupHeader {
    /// `consumerGroup`; required.
    pub consumer_group: String,
}

/// GET_CONSUMER_LIST_BY_GROUP request header.
pub type GetConsumerListByGroupRequestHeader = ConsumerGroupHeader;
/// NOTIFY_CONSUMER_IDS_CHANGED request header.
pub type NotifyConsumerIdsChangedRequestHeader = ConsumerGroupHeader;

impl CommandHeader for ConsumerGroupHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        Ok(ConsumerGroupHeader { consumer_group: Fields::new(fields).string("consumerGroup")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "consumerGroup", &self.consumer_group);
    }
}

/// GET_PRODUCER_CONNECTION_LIST (204) request header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetProducerConnectionListRequestHeader {
    /// `producerGroup`; required.
    pub producer_group: String,
}

impl CommandHeader for GetProducerConnectionListRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        Ok(GetProducerConnectionListRequestHeader { producer_group: Fields::new(fields).string("producerGroup")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "producerGroup", &self.producer_group);
    }
}

/// GET_TOPIC_STATS_INFO (202) request header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetTopicStatsInfoRequestHeader {
    /// `topic`; required.
    pub topic: String,
}

impl CommandHeader for GetTopicStatsInfoRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        Ok(GetTopicStatsInfoRequestHeader { topic: Fields::new(fields).string("topic")? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "topic", &self.topic);
    }
}

/// GET_CONSUME_STATS (208) request header: `consumerGroup` required, `topic` optional (every topic the group
/// has offsets on when absent or empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetConsumeStatsRequestHeader {
    /// `consumerGroup`.
    pub consumer_group: String,
    /// `topic`.
    pub topic: Option<String>,
}

impl CommandHeader for GetConsumeStatsRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(GetConsumeStatsRequestHeader {
            consumer_group: f.string("consumerGroup")?,
            topic: f.opt_string("topic").filter(|t| !t.is_empty()),
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "consumerGroup", &self.consumer_group);
        put_opt(out, "topic", self.topic.as_deref());
    }
}

/// DELETE_SUBSCRIPTIONGROUP (207) request header: `groupName` required, `cleanOffset` optional (false).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteSubscriptionGroupRequestHeader {
    /// `groupName`.
    pub group_name: String,
    /// `cleanOffset`: also delete the group's committed offsets.
    pub clean_offset: bool,
}

impl CommandHeader for DeleteSubscriptionGroupRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(DeleteSubscriptionGroupRequestHeader { group_name: f.string("groupName")?, clean_offset: f.bool_or("cleanOffset", false)? })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "groupName", &self.group_name);
        put(out, "cleanOffset", self.clean_offset);
    }
}

/// DELETE_TOPIC_IN_BROKER (215) and DELETE_TOPIC_IN_NAMESRV (216) request header: `topic` required;
/// `clusterName` (216, RocketMQ 5) optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteTopicRequestHeader {
    /// `topic`.
    pub topic: String,
    /// `clusterName`: only this cluster's brokers lose the topic (216).
    pub cluster_name: Option<String>,
}

impl CommandHeader for DeleteTopicRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(DeleteTopicRequestHeader { topic: f.string("topic")?, cluster_name: f.opt_string("clusterName").filter(|c| !c.is_empty()) })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "topic", &self.topic);
        put_opt(out, "clusterName", self.cluster_name.as_deref());
    }
}

/// UNREGISTER_CLIENT (35) request header. Java marks `clientID` required; the others are optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnregisterClientRequestHeader {
    /// `clientID`.
    pub client_id: String,
    /// `producerGroup`.
    pub producer_group: Option<String>,
    /// `consumerGroup`.
    pub consumer_group: Option<String>,
}

impl CommandHeader for UnregisterClientRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(UnregisterClientRequestHeader {
            client_id: f.string("clientID")?,
            producer_group: f.opt_string("producerGroup"),
            consumer_group: f.opt_string("consumerGroup"),
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "clientID", &self.client_id);
        put_opt(out, "producerGroup", self.producer_group.as_ref());
        put_opt(out, "consumerGroup", self.consumer_group.as_ref());
    }
}

/// CONSUMER_SEND_MSG_BACK (36) request header (reference §5.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerSendMsgBackRequestHeader {
    /// `offset`: commitlog offset of the original message; required.
    pub offset: i64,
    /// `group`; required.
    pub group: String,
    /// `delayLevel`; required.
    pub delay_level: i32,
    /// `originMsgId`.
    pub origin_msg_id: Option<String>,
    /// `originTopic`.
    pub origin_topic: Option<String>,
    /// `unitMode`; default false.
    pub unit_mode: bool,
    /// `maxReconsumeTimes`.
    pub max_reconsume_times: Option<i32>,
}

impl CommandHeader for ConsumerSendMsgBackRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(ConsumerSendMsgBackRequestHeader {
            offset: f.i64("offset")?,
            group: f.string("group")?,
            delay_level: f.i32("delayLevel")?,
            origin_msg_id: f.opt_string("originMsgId"),
            origin_topic: f.opt_string("originTopic"),
            unit_mode: f.bool_or("unitMode", false)?,
            max_reconsume_times: f.opt_i32("maxReconsumeTimes")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "offset", self.offset);
        put(out, "group", &self.group);
        put(out, "delayLevel", self.delay_level);
        put_opt(out, "originMsgId", self.origin_msg_id.as_ref());
        put_opt(out, "originTopic", self.origin_topic.as_ref());
        put(out, "unitMode", self.unit_mode);
        put_opt(out, "maxReconsumeTimes", self.max_reconsume_times);
    }
}

/// `commitOrRollback` values of END_TRANSACTION (sysFlag transaction bits).
pub mod transaction_type {
    /// Unknown (the producer could not tell).
    pub const NOT_TYPE: i32 = 0;
    /// Commit.
    pub const COMMIT: i32 = 8;
    /// Roll back.
    pub const ROLLBACK: i32 = 12;
}

/// END_TRANSACTION (37) request header (reference §5.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndTransactionRequestHeader {
    /// `topic`.
    pub topic: Option<String>,
    /// `producerGroup`; required.
    pub producer_group: String,
    /// `tranStateTableOffset`: the half message's queue offset; required.
    pub tran_state_table_offset: i64,
    /// `commitLogOffset`: the half message's commitlog offset; required.
    pub commit_log_offset: i64,
    /// `commitOrRollback` ([`transaction_type`]); required.
    pub commit_or_rollback: i32,
    /// `fromTransactionCheck`; default false.
    pub from_transaction_check: bool,
    /// `msgId`; required.
    pub msg_id: String,
    /// `transactionId`.
    pub transaction_id: Option<String>,
}

impl CommandHeader for EndTransactionRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(EndTransactionRequestHeader {
            topic: f.opt_string("topic"),
            producer_group: f.string("producerGroup")?,
            tran_state_table_offset: f.i64("tranStateTableOffset")?,
            commit_log_offset: f.i64("commitLogOffset")?,
            commit_or_rollback: f.i32("commitOrRollback")?,
            from_transaction_check: f.bool_or("fromTransactionCheck", false)?,
            msg_id: f.string("msgId")?,
            transaction_id: f.opt_string("transactionId"),
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put_opt(out, "topic", self.topic.as_ref());
        put(out, "producerGroup", &self.producer_group);
        put(out, "tranStateTableOffset", self.tran_state_table_offset);
        put(out, "commitLogOffset", self.commit_log_offset);
        put(out, "commitOrRollback", self.commit_or_rollback);
        put(out, "fromTransactionCheck", self.from_transaction_check);
        put(out, "msgId", &self.msg_id);
        put_opt(out, "transactionId", self.transaction_id.as_ref());
    }
}

/// CHECK_TRANSACTION_STATE (39) header, broker → client; the body is the stored half message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckTransactionStateRequestHeader {
    /// `topic`.
    pub topic: Option<String>,
    /// `tranStateTableOffset`; required.
    pub tran_state_table_offset: i64,
    /// `commitLogOffset`; required.
    pub commit_log_offset: i64,
    /// `msgId`: the client id (UNIQ_KEY).
    pub msg_id: Option<String>,
    /// `transactionId`.
    pub transaction_id: Option<String>,
    /// `offsetMsgId`.
    pub offset_msg_id: Option<String>,
}

impl CommandHeader for CheckTransactionStateRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(CheckTransactionStateRequestHeader {
            topic: f.opt_string("topic"),
            tran_state_table_offset: f.i64("tranStateTableOffset")?,
            commit_log_offset: f.i64("commitLogOffset")?,
            msg_id: f.opt_string("msgId"),
            transaction_id: f.opt_string("transactionId"),
            offset_msg_id: f.opt_string("offsetMsgId"),
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put_opt(out, "topic", self.topic.as_ref());
        put(out, "tranStateTableOffset", self.tran_state_table_offset);
        put(out, "commitLogOffset", self.commit_log_offset);
        put_opt(out, "msgId", self.msg_id.as_ref());
        put_opt(out, "transactionId", self.transaction_id.as_ref());
        put_opt(out, "offsetMsgId", self.offset_msg_id.as_ref());
    }
}

/// Topic permission bits (`PermName`), used by topic configs and routes.
pub mod perm {
    /// Priority.
    pub const PRIORITY: i32 = 8;
    /// Readable.
    pub const READ: i32 = 4;
    /// Writable.
    pub const WRITE: i32 = 2;
    /// Inherit.
    pub const INHERIT: i32 = 1;
    /// Read and write: what routes normally carry.
    pub const READ_WRITE: i32 = READ | WRITE;
}

/// UPDATE_AND_CREATE_TOPIC (17) request header (reference §5.12).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateTopicRequestHeader {
    /// `topic`; required.
    pub topic: String,
    /// `defaultTopic`; Java requires it, defaulted here to [`DEFAULT_TOPIC`].
    pub default_topic: String,
    /// `readQueueNums`; required.
    pub read_queue_nums: i32,
    /// `writeQueueNums`; required.
    pub write_queue_nums: i32,
    /// `perm` ([`perm`]); required.
    pub perm: i32,
    /// `topicFilterType`; Java requires it, defaulted here to `SINGLE_TAG`.
    pub topic_filter_type: String,
    /// `topicSysFlag`.
    pub topic_sys_flag: Option<i32>,
    /// `order`; Java requires it, defaulted here to false.
    pub order: bool,
    /// `attributes`.
    pub attributes: Option<String>,
    /// `force`.
    pub force: Option<bool>,
}

impl CommandHeader for CreateTopicRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(CreateTopicRequestHeader {
            topic: f.string("topic")?,
            default_topic: f.opt_string("defaultTopic").unwrap_or_else(|| DEFAULT_TOPIC.to_owned()),
            read_queue_nums: f.i32("readQueueNums")?,
            write_queue_nums: f.i32("writeQueueNums")?,
            perm: f.i32("perm")?,
            topic_filter_type: f.opt_string("topicFilterType").unwrap_or_else(|| "SINGLE_TAG".to_owned()),
            topic_sys_flag: f.opt_i32("topicSysFlag")?,
            order: f.bool_or("order", false)?,
            attributes: f.opt_string("attributes"),
            force: f.opt_bool("force")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "topic", &self.topic);
        put(out, "defaultTopic", &self.default_topic);
        put(out, "readQueueNums", self.read_queue_nums);
        put(out, "writeQueueNums", self.write_queue_nums);
        put(out, "perm", self.perm);
        put(out, "topicFilterType", &self.topic_filter_type);
        put_opt(out, "topicSysFlag", self.topic_sys_flag);
        put(out, "order", self.order);
        put_opt(out, "attributes", self.attributes.as_ref());
        put_opt(out, "force", self.force);
    }
}

/// INVOKE_BROKER_TO_RESET_OFFSET (222) request header, and RESET_CONSUMER_CLIENT_OFFSET (220) (reference
/// §4.3; Java `ResetOffsetRequestHeader`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetOffsetRequestHeader {
    /// `group`; required.
    pub group: String,
    /// `topic`; required.
    pub topic: String,
    /// `timestamp` (ms; −1 = the max offset); required.
    pub timestamp: i64,
    /// `isForce`; required by Java, defaulted here to true. False moves only offsets that go back.
    pub is_force: bool,
    /// `queueId` (5.x); absent or −1 = every queue.
    pub queue_id: Option<i32>,
    /// `offset` (5.x): with a `queueId`, set that queue to this offset instead of searching by time.
    pub offset: Option<i64>,
}

impl CommandHeader for ResetOffsetRequestHeader {
    fn from_ext_fields(fields: &ExtFields) -> Result<Self> {
        let f = Fields::new(fields);
        Ok(ResetOffsetRequestHeader {
            group: f.string("group")?,
            topic: f.string("topic")?,
            timestamp: f.i64("timestamp")?,
            is_force: f.bool_or("isForce", true)?,
            queue_id: f.opt_i32("queueId")?,
            offset: f.opt_i64("offset")?,
        })
    }

    fn write_ext_fields(&self, out: &mut ExtFields) {
        put(out, "group", &self.group);
        put(out, "topic", &self.topic);
        put(out, "timestamp", self.timestamp);
        put(out, "isForce", self.is_force);
        put_opt(out, "queueId", self.queue_id);
        put_opt(out, "offset", self.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(pairs: &[(&str, &str)]) -> ExtFields {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reset_offset_header_round_trips_and_defaults_like_rocketmq() {
        let h = ResetOffsetRequestHeader::from_ext_fields(&ext(&[("group", "G"), ("topic", "T"), ("timestamp", "-1")])).unwrap();
        assert_eq!((h.timestamp, h.is_force, h.queue_id, h.offset), (-1, true, None, None));
        let full = ResetOffsetRequestHeader {
            group: "G".into(),
            topic: "T".into(),
            timestamp: 1_700_000_000_000,
            is_force: false,
            queue_id: Some(2),
            offset: Some(40),
        };
        assert_eq!(ResetOffsetRequestHeader::from_ext_fields(&full.to_ext_fields()).unwrap(), full);
        let e = ResetOffsetRequestHeader::from_ext_fields(&ext(&[("group", "G"), ("topic", "T")])).unwrap_err();
        assert!(e.to_string().contains("timestamp"), "{e}");
    }

    #[test]
    fn v2_send_header_maps_letters_to_fields() {
        let f = ext(&[
            ("a", "PID"),
            ("b", "TopicTest"),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", "3"),
            ("f", "0"),
            ("g", "1700000000000"),
            ("h", "0"),
            ("i", "TAGS\u{1}TagA\u{2}"),
            ("j", "0"),
            ("k", "false"),
            ("m", "false"),
            ("n", "broker-a"),
        ]);
        let h = SendMessageRequestHeader::decode_for(RequestCode::SEND_MESSAGE_V2, &f).unwrap();
        assert_eq!(h.producer_group, "PID");
        assert_eq!(h.topic, "TopicTest");
        assert_eq!(h.queue_id, 3);
        assert_eq!(h.born_timestamp, 1_700_000_000_000);
        assert_eq!(h.unit_mode, Some(false));
        assert_eq!(h.broker_name.as_deref(), Some("broker-a"));
        let mut back = ExtFields::new();
        h.write_ext_fields_v2(&mut back);
        assert_eq!(back, f);
        // The same header in V1 form parses to the same struct.
        let v1 = h.to_ext_fields();
        assert_eq!(SendMessageRequestHeader::decode_for(RequestCode::SEND_MESSAGE, &v1).unwrap(), h);
    }

    #[test]
    fn errors_name_the_wire_key_and_the_java_field() {
        let f = ext(&[("a", "PID"), ("e", "0"), ("f", "0"), ("g", "1"), ("h", "0")]);
        let err = SendMessageRequestHeader::from_ext_fields_v2(&f).unwrap_err();
        assert!(matches!(err, RemotingError::MissingField { key: "b", name: "topic" }), "{err}");
        let f = ext(&[("a", "PID"), ("b", "T"), ("e", "zero"), ("f", "0"), ("g", "1"), ("h", "0")]);
        let err = SendMessageRequestHeader::from_ext_fields_v2(&f).unwrap_err();
        assert!(matches!(&err, RemotingError::InvalidField { key: "e", name: "queueId", value, .. } if value == "zero"), "{err}");
        assert!(err.to_string().contains("queueId"));
        let err = PullMessageRequestHeader::from_ext_fields(&ext(&[("topic", "T")])).unwrap_err();
        assert!(matches!(err, RemotingError::MissingField { key: "consumerGroup", .. }));
    }

    #[test]
    fn lenient_values() {
        let f = ext(&[
            ("consumerGroup", "G"),
            ("topic", "T"),
            ("queueId", " 1 "),
            ("queueOffset", "0"),
            ("maxMsgNums", "32"),
            ("sysFlag", "2"),
            ("subscription", ""),
            ("maxMsgBytes", ""),
        ]);
        let h = PullMessageRequestHeader::from_ext_fields(&f).unwrap();
        assert_eq!(h.queue_id, 1);
        assert_eq!(h.sub_version, 0);
        assert_eq!(h.max_msg_bytes, None);
        assert_eq!(h.carried_subscription(), None);
        assert_eq!(h.carried_commit_offset(), None);
        for (s, b) in [("true", true), ("TRUE", true), ("1", true), ("false", false), ("0", false), ("False", false)] {
            let h = QueryConsumerOffsetRequestHeader::from_ext_fields(&ext(&[
                ("consumerGroup", "G"),
                ("topic", "T"),
                ("queueId", "0"),
                ("setZeroIfNotFound", s),
            ]))
            .unwrap();
            assert_eq!(h.set_zero_if_not_found, Some(b), "{s}");
        }
        let err = QueryConsumerOffsetRequestHeader::from_ext_fields(&ext(&[
            ("consumerGroup", "G"),
            ("topic", "T"),
            ("queueId", "0"),
            ("setZeroIfNotFound", "maybe"),
        ]))
        .unwrap_err();
        assert!(matches!(err, RemotingError::InvalidField { key: "setZeroIfNotFound", .. }));
    }

    #[test]
    fn search_offset_boundary() {
        let mut f = ext(&[("topic", "T"), ("queueId", "0"), ("timestamp", "5")]);
        assert_eq!(SearchOffsetRequestHeader::from_ext_fields(&f).unwrap().boundary_type, BoundaryType::Lower);
        f.insert("boundaryType".into(), "UPPER".into());
        let h = SearchOffsetRequestHeader::from_ext_fields(&f).unwrap();
        assert_eq!(h.boundary_type, BoundaryType::Upper);
        assert_eq!(h.to_ext_fields(), f);
        f.insert("boundaryType".into(), "MIDDLE".into());
        assert!(SearchOffsetRequestHeader::from_ext_fields(&f).is_err());
    }

    #[test]
    fn send_response_header_writes_client_keys() {
        let h = SendMessageResponseHeader::new("0A0000010000297A0000000000000000".into(), 1, 7);
        let m = h.to_ext_fields();
        assert_eq!(m["msgId"], "0A0000010000297A0000000000000000");
        assert_eq!(m["queueId"], "1");
        assert_eq!(m["queueOffset"], "7");
        assert_eq!(m["MSG_REGION"], "DefaultRegion");
        assert_eq!(m["TRACE_ON"], "false");
        assert_eq!(SendMessageResponseHeader::from_ext_fields(&m).unwrap(), h);
    }
}
