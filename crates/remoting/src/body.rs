//! JSON command bodies (reference §5.8, §5.9, §5.13, §5.14, §7): heartbeats, queue locks, consumer lists,
//! topic routes, cluster info and broker registration. Pure serde types plus [`decode_json_body`] and
//! [`encode_json_body`]; no broker rules. Field names are the ones Java's fastjson reads and writes.
//!
//! Reading is lenient, because real clients differ:
//! - enums arrive as names (Java, Rust clients) or ordinals (C++) — both are accepted ([`ConsumeType`],
//!   [`MessageModel`], [`ConsumeFromWhere`]); an unknown value is kept, not rejected;
//! - integers (`subVersion`, `queueId`, …) may be JSON numbers or numeric strings, booleans may be `0`/`1`
//!   or strings, and `null` where a list or string is expected means empty;
//! - absent fields take their defaults and unknown fields are ignored;
//! - fastjson writes maps with non-string keys unquoted (`"brokerAddrs":{0:"addr"}`) when talking to old
//!   clients; [`decode_json_body`] retries such input after quoting bare object keys.
//!
//! Writing is strict and standard: [`TopicRouteData`] always emits every field, `null`s included, with quoted
//! keys (interop rule 6); the mxsm Rust client rejects a route without `enableActingMaster`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{RemotingError, Result};

/// Parses a JSON body of type `T`, named `what` in errors. Input that standard JSON rejects is retried once
/// with fastjson's unquoted object keys quoted (see [`quote_bare_keys`]).
///
/// # Errors
/// [`RemotingError::BodyJson`] with the first parse error.
pub fn decode_json_body<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T> {
    match serde_json::from_slice::<T>(body) {
        Ok(v) => Ok(v),
        Err(first) => match quote_bare_keys(body) {
            Some(fixed) => serde_json::from_slice::<T>(&fixed).map_err(|_| RemotingError::BodyJson { what, source: first }),
            None => Err(RemotingError::BodyJson { what, source: first }),
        },
    }
}

/// Serialises a body as standard JSON.
///
/// # Errors
/// [`RemotingError::Unencodable`] if serde fails (not expected for the types of this module).
pub fn encode_json_body<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| RemotingError::Unencodable { field: "body", reason: e.to_string() })
}

/// Rewrites fastjson output whose object keys are bare tokens (`{0:"a",1:"b"}`) into standard JSON by
/// quoting every bare key. Returns `None` when there was nothing to quote. Strings, arrays and values are
/// left alone; the result is not validated (the JSON parser does that).
pub fn quote_bare_keys(input: &[u8]) -> Option<Vec<u8>> {
    // Containers currently open: true for an object.
    let mut stack: Vec<bool> = Vec::new();
    let mut expect_key = false;
    let mut in_string = false;
    let mut escaped = false;
    let mut changed = false;
    let mut out = Vec::with_capacity(input.len() + 16);
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                expect_key = false;
                out.push(c);
            }
            b'{' => {
                stack.push(true);
                expect_key = true;
                out.push(c);
            }
            b'[' => {
                stack.push(false);
                expect_key = false;
                out.push(c);
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
                out.push(c);
            }
            b',' => {
                expect_key = stack.last().copied().unwrap_or(false);
                out.push(c);
            }
            b':' => {
                expect_key = false;
                out.push(c);
            }
            c if c.is_ascii_whitespace() => out.push(c),
            _ if expect_key => {
                let start = i;
                while i < input.len() && !matches!(input[i], b':' | b',' | b'}' | b'"') && !input[i].is_ascii_whitespace() {
                    i += 1;
                }
                out.push(b'"');
                out.extend_from_slice(&input[start..i]);
                out.push(b'"');
                changed = true;
                expect_key = false;
                continue;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    changed.then_some(out)
}

// ---------------------------------------------------------------------------------------------------------
// Lenient scalar readers
// ---------------------------------------------------------------------------------------------------------

/// Any JSON scalar, as received.
enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or null")
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Int(i128::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Int(i128::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Text(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    fn int<E: de::Error>(self, what: &str) -> std::result::Result<Option<i128>, E> {
        match self {
            Scalar::Null => Ok(None),
            Scalar::Int(v) => Ok(Some(v)),
            Scalar::Bool(b) => Ok(Some(i128::from(b))),
            Scalar::Float(f) if f.fract() == 0.0 && f.abs() < 9.3e18 => Ok(Some(f as i128)),
            Scalar::Text(s) if s.trim().is_empty() => Ok(None),
            Scalar::Text(s) => s.trim().parse::<i128>().map(Some).map_err(|_| E::custom(format!("{what}: {s:?} is not an integer"))),
            Scalar::Float(f) => Err(E::custom(format!("{what}: {f} is not an integer"))),
        }
    }
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    let v = Scalar::deserialize(d)?.int::<D::Error>("integer")?.unwrap_or(0);
    i64::try_from(v).map_err(|_| de::Error::custom(format!("{v} out of 64-bit range")))
}

fn lenient_i32<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i32, D::Error> {
    let v = Scalar::deserialize(d)?.int::<D::Error>("integer")?.unwrap_or(0);
    i32::try_from(v).map_err(|_| de::Error::custom(format!("{v} out of 32-bit range")))
}

fn lenient_opt_i64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<i64>, D::Error> {
    match Scalar::deserialize(d)?.int::<D::Error>("integer")? {
        None => Ok(None),
        Some(v) => i64::try_from(v).map(Some).map_err(|_| de::Error::custom(format!("{v} out of 64-bit range"))),
    }
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(lenient_opt_bool(d)?.unwrap_or(false))
}

fn lenient_opt_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<bool>, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Null => Ok(None),
        Scalar::Bool(b) => Ok(Some(b)),
        Scalar::Int(v) => Ok(Some(v != 0)),
        Scalar::Float(f) => Ok(Some(f != 0.0)),
        Scalar::Text(s) if s.trim().is_empty() => Ok(None),
        Scalar::Text(s) => crate::header::parse_bool(&s).map(Some).ok_or_else(|| de::Error::custom(format!("{s:?} is not a boolean"))),
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(lenient_opt_string(d)?.unwrap_or_default())
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Scalar::deserialize(d)? {
        Scalar::Null => None,
        Scalar::Bool(b) => Some(b.to_string()),
        Scalar::Int(v) => Some(v.to_string()),
        Scalar::Float(f) => Some(f.to_string()),
        Scalar::Text(s) => Some(s),
    })
}

/// A list where `null` means empty.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A map where `null` means empty.
fn null_as_empty_map<'de, D, K, V>(d: D) -> std::result::Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    Ok(Option::<BTreeMap<K, V>>::deserialize(d)?.unwrap_or_default())
}

/// A list of integers, each a number or a numeric string; `null` means empty.
fn lenient_i32_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<i32>, D::Error> {
    struct Item(i32);
    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            lenient_i32(d).map(Item)
        }
    }
    Ok(Option::<Vec<Item>>::deserialize(d)?.unwrap_or_default().into_iter().map(|i| i.0).collect())
}

/// A list of strings; elements may be numbers; `null` means empty.
fn lenient_string_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    struct Item(String);
    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            lenient_string(d).map(Item)
        }
    }
    Ok(Option::<Vec<Item>>::deserialize(d)?.unwrap_or_default().into_iter().map(|i| i.0).collect())
}

// ---------------------------------------------------------------------------------------------------------
// Name-or-ordinal enums
// ---------------------------------------------------------------------------------------------------------

macro_rules! name_or_ordinal_enum {
    ($(#[$meta:meta])* $ty:ident { $($(#[$vmeta:meta])* $variant:ident = ($name:literal, $ord:literal),)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub enum $ty {
            $( $(#[$vmeta])* $variant, )*
            /// A name or ordinal this crate does not know, kept as received (ordinals in decimal).
            Unknown(String),
        }

        impl $ty {
            /// The Java enum name.
            pub fn name(&self) -> &str {
                match self {
                    $( $ty::$variant => $name, )*
                    $ty::Unknown(s) => s,
                }
            }

            /// The Java ordinal, if known.
            pub fn ordinal(&self) -> Option<i64> {
                match self {
                    $( $ty::$variant => Some($ord), )*
                    $ty::Unknown(_) => None,
                }
            }

            /// Parses a name (case-sensitive, as Java) or a decimal ordinal; never fails.
            pub fn parse(s: &str) -> Self {
                match s.trim() {
                    $( $name => $ty::$variant, )*
                    t => match t.parse::<i64>() {
                        Ok(n) => Self::from_ordinal(n),
                        Err(_) => $ty::Unknown(s.to_owned()),
                    },
                }
            }

            /// Maps an ordinal; never fails.
            pub fn from_ordinal(n: i64) -> Self {
                match n {
                    $( $ord => $ty::$variant, )*
                    other => $ty::Unknown(other.to_string()),
                }
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok(match Scalar::deserialize(d)? {
                    Scalar::Text(s) => $ty::parse(&s),
                    Scalar::Int(n) => i64::try_from(n).map($ty::from_ordinal).unwrap_or_else(|_| $ty::Unknown(n.to_string())),
                    Scalar::Null => $ty::Unknown(String::new()),
                    Scalar::Bool(b) => $ty::Unknown(b.to_string()),
                    Scalar::Float(f) => $ty::Unknown(f.to_string()),
                })
            }
        }
    };
}

name_or_ordinal_enum! {
    /// `ConsumeType`.
    ConsumeType {
        /// Pull consumer.
        ConsumeActively = ("CONSUME_ACTIVELY", 0),
        /// Push consumer (the default).
        #[default]
        ConsumePassively = ("CONSUME_PASSIVELY", 1),
        /// POP consumer (5.x).
        ConsumePop = ("CONSUME_POP", 2),
    }
}

name_or_ordinal_enum! {
    /// `MessageModel`.
    MessageModel {
        /// Every consumer gets every message.
        Broadcasting = ("BROADCASTING", 0),
        /// The group shares the queues (the default).
        #[default]
        Clustering = ("CLUSTERING", 1),
    }
}

name_or_ordinal_enum! {
    /// `ConsumeFromWhere`: where a new group starts (decided client-side).
    ConsumeFromWhere {
        /// Last offset (the default).
        #[default]
        ConsumeFromLastOffset = ("CONSUME_FROM_LAST_OFFSET", 0),
        /// Deprecated.
        ConsumeFromLastOffsetAndFromMinWhenBootFirst = ("CONSUME_FROM_LAST_OFFSET_AND_FROM_MIN_WHEN_BOOT_FIRST", 1),
        /// Deprecated.
        ConsumeFromMinOffset = ("CONSUME_FROM_MIN_OFFSET", 2),
        /// Deprecated.
        ConsumeFromMaxOffset = ("CONSUME_FROM_MAX_OFFSET", 3),
        /// First offset.
        ConsumeFromFirstOffset = ("CONSUME_FROM_FIRST_OFFSET", 4),
        /// By timestamp.
        ConsumeFromTimestamp = ("CONSUME_FROM_TIMESTAMP", 5),
    }
}

// ---------------------------------------------------------------------------------------------------------
// HEART_BEAT
// ---------------------------------------------------------------------------------------------------------

/// HEART_BEAT (34) body (reference §5.8).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatData {
    /// `clientID`.
    #[serde(rename = "clientID", default, deserialize_with = "lenient_string")]
    pub client_id: String,
    /// `producerDataSet`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub producer_data_set: Vec<ProducerData>,
    /// `consumerDataSet`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub consumer_data_set: Vec<ConsumerData>,
    /// `heartbeatFingerprint` (5.x).
    #[serde(default, deserialize_with = "lenient_opt_i64", skip_serializing_if = "Option::is_none")]
    pub heartbeat_fingerprint: Option<i64>,
    /// `isWithoutSub` (5.x; fastjson may also spell it `withoutSub`).
    #[serde(
        rename = "isWithoutSub",
        alias = "withoutSub",
        default,
        deserialize_with = "lenient_opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_without_sub: Option<bool>,
}

/// One producer group of a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerData {
    /// `groupName`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub group_name: String,
}

/// One consumer group of a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerData {
    /// `groupName`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub group_name: String,
    /// `consumeType`.
    #[serde(default)]
    pub consume_type: ConsumeType,
    /// `messageModel`.
    #[serde(default)]
    pub message_model: MessageModel,
    /// `consumeFromWhere`.
    #[serde(default)]
    pub consume_from_where: ConsumeFromWhere,
    /// `subscriptionDataSet`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub subscription_data_set: Vec<SubscriptionData>,
    /// `unitMode`.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub unit_mode: bool,
}

/// The expression type of plain tag subscriptions.
pub const EXPRESSION_TYPE_TAG: &str = "TAG";

fn expression_type_tag() -> String {
    EXPRESSION_TYPE_TAG.to_owned()
}

/// One subscription of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionData {
    /// `classFilterMode`.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub class_filter_mode: bool,
    /// `topic`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub topic: String,
    /// `subString`: the expression (`*`, `TagA || TagB`, or SQL92).
    #[serde(default, deserialize_with = "lenient_string")]
    pub sub_string: String,
    /// `tagsSet`.
    #[serde(default, deserialize_with = "lenient_string_list")]
    pub tags_set: Vec<String>,
    /// `codeSet`: Java `String.hashCode` of each tag.
    #[serde(default, deserialize_with = "lenient_i32_list")]
    pub code_set: Vec<i32>,
    /// `subVersion`: a number or a numeric string on the wire.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub sub_version: i64,
    /// `expressionType`: `TAG` (default) or `SQL92`.
    #[serde(default = "expression_type_tag", deserialize_with = "lenient_string")]
    pub expression_type: String,
}

/// The expression type of SQL92 property selectors (`MessageSelector.bySql`).
pub const EXPRESSION_TYPE_SQL92: &str = "SQL92";

/// True for the expression types RocketMQ's `ExpressionType.isTagType` accepts: none, empty or `TAG`.
pub fn is_tag_type(expression_type: Option<&str>) -> bool {
    expression_type.is_none_or(|t| t.is_empty() || t == EXPRESSION_TYPE_TAG)
}

/// CHECK_CLIENT_CONFIG (46) request body: a consumer asks whether the broker accepts a subscription
/// before it starts (Java and Rust clients send it for each non-TAG subscription).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckClientRequestBody {
    /// `clientId`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub client_id: String,
    /// `group`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub group: String,
    /// `subscriptionData`.
    #[serde(default)]
    pub subscription_data: Option<SubscriptionData>,
}

// ---------------------------------------------------------------------------------------------------------
// Connection lists (GET_CONSUMER_CONNECTION_LIST 203, GET_PRODUCER_CONNECTION_LIST 204)
// ---------------------------------------------------------------------------------------------------------

/// One client connection as RocketMQ's `Connection` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// `clientId`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub client_id: String,
    /// `clientAddr`: `ip:port` the client connects from.
    #[serde(default, deserialize_with = "lenient_string")]
    pub client_addr: String,
    /// `language`: the client's `LanguageCode` name.
    #[serde(default, deserialize_with = "lenient_string")]
    pub language: String,
    /// `version`: the client's `MQVersion` ordinal.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub version: i64,
}

/// GET_CONSUMER_CONNECTION_LIST (203) response body: Java `ConsumerConnection`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerConnection {
    /// `connectionSet`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub connection_set: Vec<Connection>,
    /// `subscriptionTable`: topic → subscription.
    #[serde(default)]
    pub subscription_table: BTreeMap<String, SubscriptionData>,
    /// `consumeType`.
    #[serde(default)]
    pub consume_type: ConsumeType,
    /// `messageModel`.
    #[serde(default)]
    pub message_model: MessageModel,
    /// `consumeFromWhere`.
    #[serde(default)]
    pub consume_from_where: ConsumeFromWhere,
}

/// GET_PRODUCER_CONNECTION_LIST (204) response body: Java `ProducerConnection`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerConnection {
    /// `connectionSet`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub connection_set: Vec<Connection>,
}

// ---------------------------------------------------------------------------------------------------------
// Queues, locks, consumer lists
// ---------------------------------------------------------------------------------------------------------

/// A message queue: topic, broker group and queue id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueue {
    /// `topic`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub topic: String,
    /// `brokerName`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub broker_name: String,
    /// `queueId`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub queue_id: i32,
}

/// LOCK_BATCH_MQ (41) and UNLOCK_BATCH_MQ (42) request body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockBatchRequestBody {
    /// `consumerGroup`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub consumer_group: String,
    /// `clientId`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub client_id: String,
    /// `onlyThisBroker`.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub only_this_broker: bool,
    /// `mqSet`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub mq_set: Vec<MessageQueue>,
}

/// UNLOCK_BATCH_MQ request body: the same shape as the lock request.
pub type UnlockBatchRequestBody = LockBatchRequestBody;

/// LOCK_BATCH_MQ response body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LockBatchResponseBody {
    /// `lockOKMQSet`: the queues now locked by the requester.
    #[serde(rename = "lockOKMQSet", default, deserialize_with = "null_as_empty")]
    pub lock_ok_mq_set: Vec<MessageQueue>,
}

/// GET_CONSUMER_LIST_BY_GROUP (38) response body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetConsumerListByGroupResponseBody {
    /// `consumerIdList`: client ids of the group's live consumers.
    #[serde(default, deserialize_with = "lenient_string_list")]
    pub consumer_id_list: Vec<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Routes and clusters
// ---------------------------------------------------------------------------------------------------------

/// The broker id a group's writable member is published under (`MixAll.MASTER_ID`); raftmq publishes each
/// group's current Raft leader with it.
pub const MASTER_ID: i64 = 0;

/// Per broker group: how many queues a topic has there and with what permission.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueData {
    /// `brokerName`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub broker_name: String,
    /// `readQueueNums`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub read_queue_nums: i32,
    /// `writeQueueNums`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub write_queue_nums: i32,
    /// `perm` ([`crate::header::perm`]).
    #[serde(default, deserialize_with = "lenient_i32")]
    pub perm: i32,
    /// `topicSysFlag`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub topic_sys_flag: i32,
}

/// Per broker group: its cluster and the addresses of its members by broker id.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerData {
    /// `cluster`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub cluster: String,
    /// `brokerName`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub broker_name: String,
    /// `brokerAddrs`: broker id → `ip:port`; [`MASTER_ID`] is the one producers write to. Written with quoted
    /// keys (`{"0":"…"}`).
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub broker_addrs: BTreeMap<i64, String>,
    /// `zoneName`; written as `null` when absent.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub zone_name: Option<String>,
    /// `enableActingMaster`; always written (the mxsm client requires it).
    #[serde(default, deserialize_with = "lenient_bool")]
    pub enable_acting_master: bool,
}

impl BrokerData {
    /// The address of the member with id [`MASTER_ID`].
    pub fn master_addr(&self) -> Option<&str> {
        self.broker_addrs.get(&MASTER_ID).map(String::as_str)
    }
}

/// GET_ROUTEINFO_BY_TOPIC (105) response body (reference §7). Serialises every field, `null`s included.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicRouteData {
    /// `orderTopicConf`; usually `null`.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub order_topic_conf: Option<String>,
    /// `queueDatas`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub queue_datas: Vec<QueueData>,
    /// `brokerDatas`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub broker_datas: Vec<BrokerData>,
    /// `filterServerTable`: broker address → filter servers; raftmq emits `{}`.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub filter_server_table: BTreeMap<String, Vec<String>>,
    /// `topicQueueMappingByBroker` (static topics); raftmq emits `null`. Kept as raw JSON when read.
    #[serde(default)]
    pub topic_queue_mapping_by_broker: Option<serde_json::Value>,
}

/// GET_BROKER_CLUSTER_INFO (106) response body (reference §5.14).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// `brokerAddrTable`: broker name → broker data.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    /// `clusterAddrTable`: cluster name → broker names.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub cluster_addr_table: BTreeMap<String, BTreeSet<String>>,
}

// ---------------------------------------------------------------------------------------------------------
// Broker registration (only for mixing with Java components)
// ---------------------------------------------------------------------------------------------------------

/// A topic's configuration as brokers register it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicConfig {
    /// `topicName`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub topic_name: String,
    /// `readQueueNums`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub read_queue_nums: i32,
    /// `writeQueueNums`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub write_queue_nums: i32,
    /// `perm`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub perm: i32,
    /// `topicFilterType` (`SINGLE_TAG`).
    #[serde(default, deserialize_with = "lenient_string")]
    pub topic_filter_type: String,
    /// `topicSysFlag`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub topic_sys_flag: i32,
    /// `order`.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub order: bool,
    /// `attributes`.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub attributes: BTreeMap<String, String>,
}

/// `topicConfigSerializeWrapper` of a registration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicConfigSerializeWrapper {
    /// `topicConfigTable`: topic → config.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub topic_config_table: BTreeMap<String, TopicConfig>,
    /// `dataVersion`, kept as raw JSON (`{"timestamp":…,"counter":…,"stateVersion":…}`).
    #[serde(default)]
    pub data_version: Option<serde_json::Value>,
    /// `topicQueueMappingInfoMap`, kept as raw JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_queue_mapping_info_map: Option<serde_json::Value>,
}

/// REGISTER_BROKER (103) body in its JSON form (`compressed = false`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBrokerBody {
    /// `topicConfigSerializeWrapper`.
    #[serde(default)]
    pub topic_config_serialize_wrapper: TopicConfigSerializeWrapper,
    /// `filterServerList`.
    #[serde(default, deserialize_with = "lenient_string_list")]
    pub filter_server_list: Vec<String>,
}

/// A `KVTable` body (`{"table":{…}}`), as the REGISTER_BROKER response carries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KvTable {
    /// `table`.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub table: BTreeMap<String, String>,
}

/// Writes `{"<field>":{<MessageQueue>:<value>,…}<tail>}` as fastjson does for a `Map<MessageQueue, V>`: the
/// queue **objects as map keys**, fields in fastjson's alphabetical order (`brokerName`, `queueId`, `topic`).
/// `tail` is appended inside the outer object (e.g. `,"consumeTps":0.0`).
///
/// # Errors
/// [`RemotingError::Unencodable`] if a name or value cannot be written as JSON (not expected).
pub fn encode_queue_map<'a, V: Serialize + 'a>(
    field: &'static str,
    entries: impl Iterator<Item = (&'a MessageQueue, &'a V)>,
    tail: &str,
) -> Result<String> {
    let json = |v: &dyn erased::Json| v.to_json().map_err(|e| RemotingError::Unencodable { field, reason: e.to_string() });
    let mut out = format!("{{\"{field}\":{{");
    for (i, (q, value)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"brokerName\":{},\"queueId\":{},\"topic\":{}}}:{}",
            json(&q.broker_name)?,
            q.queue_id,
            json(&q.topic)?,
            json(value)?
        ));
    }
    out.push('}');
    out.push_str(tail);
    out.push('}');
    Ok(out)
}

mod erased {
    /// Object-safe JSON writing, so that [`super::encode_queue_map`] takes names and values alike.
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Admin statistics (GET_TOPIC_STATS_INFO 202, GET_CONSUME_STATS 208)
// ---------------------------------------------------------------------------------------------------------

/// One queue of a `TopicStatsTable` (Java `TopicOffset`; fields in fastjson's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicOffset {
    /// `lastUpdateTimestamp`: store time of the newest message, 0 when the queue is empty.
    pub last_update_timestamp: i64,
    /// `maxOffset`: the next offset to be assigned.
    pub max_offset: i64,
    /// `minOffset`: the oldest retained offset.
    pub min_offset: i64,
}

/// GET_TOPIC_STATS_INFO (202) response body: Java `TopicStatsTable`, a `Map<MessageQueue, TopicOffset>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicStatsTable {
    /// `offsetTable`.
    pub offset_table: BTreeMap<MessageQueue, TopicOffset>,
}

impl TopicStatsTable {
    /// The fastjson form (see [`encode_queue_map`]).
    ///
    /// # Errors
    /// [`RemotingError::Unencodable`] (not expected).
    pub fn encode(&self) -> Result<Bytes> {
        encode_queue_map("offsetTable", self.offset_table.iter(), "").map(Bytes::from)
    }
}

/// One queue of a `ConsumeStats` (Java `OffsetWrapper`; fields in fastjson's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetWrapper {
    /// `brokerOffset`: the queue's max offset.
    pub broker_offset: i64,
    /// `consumerOffset`: the group's committed offset (0 when it has none).
    pub consumer_offset: i64,
    /// `lastTimestamp`: store time of the last consumed message (at `consumerOffset - 1`), 0 when none.
    pub last_timestamp: i64,
}

/// GET_CONSUME_STATS (208) response body: Java `ConsumeStats`, a `Map<MessageQueue, OffsetWrapper>` and the
/// group's consume rate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsumeStats {
    /// `offsetTable`.
    pub offset_table: BTreeMap<MessageQueue, OffsetWrapper>,
    /// `consumeTps`: messages per second (raftmq: committed-offset progress over the last minute, 0 unknown).
    pub consume_tps: f64,
}

impl ConsumeStats {
    /// Parses the fastjson form [`ConsumeStats::encode`] writes (what admin tools read); `consumeTps` is not
    /// read (0).
    ///
    /// # Errors
    /// [`RemotingError::BodyJson`] when the body is not in that form or names more than
    /// [`RESET_OFFSET_QUEUES_MAX`] queues (the decoder's bound on object-keyed maps).
    pub fn decode(body: &[u8]) -> Result<ConsumeStats> {
        let bad = |why: String| RemotingError::BodyJson { what: "ConsumeStats", source: serde::de::Error::custom(why) };
        let table: BTreeMap<MessageQueue, OffsetWrapper> =
            decode_object_keyed(body).ok_or_else(|| bad("not a fastjson offsetTable of queue objects".into()))?;
        if table.len() > RESET_OFFSET_QUEUES_MAX {
            return Err(bad(format!("more than {RESET_OFFSET_QUEUES_MAX} queues (RESET_OFFSET_QUEUES_MAX)")));
        }
        Ok(ConsumeStats { offset_table: table, consume_tps: 0.0 })
    }

    /// The fastjson form (see [`encode_queue_map`]), `consumeTps` after the table.
    ///
    /// # Errors
    /// [`RemotingError::Unencodable`] (not expected).
    pub fn encode(&self) -> Result<Bytes> {
        let tps = if self.consume_tps.is_finite() { self.consume_tps } else { 0.0 };
        encode_queue_map("offsetTable", self.offset_table.iter(), &format!(",\"consumeTps\":{tps:?}")).map(Bytes::from)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Subscription groups (UPDATE_AND_CREATE_SUBSCRIPTIONGROUP 200, GET_ALL_SUBSCRIPTIONGROUP_CONFIG 201)
// ---------------------------------------------------------------------------------------------------------

fn yes() -> bool {
    true
}

fn one() -> i32 {
    1
}

fn sixteen() -> i32 {
    16
}

fn fifteen() -> i32 {
    15
}

fn one_i64() -> i64 {
    1
}

/// Java `SubscriptionGroupConfig`, the body of UPDATE_AND_CREATE_SUBSCRIPTIONGROUP (200) and the values of
/// GET_ALL_SUBSCRIPTIONGROUP_CONFIG (201). Fields in fastjson's (alphabetical) order; absent fields take
/// RocketMQ's defaults; fields of other versions (`attributes`, `groupRetryPolicy`, `subscriptionDataSet`,
/// `consumeMessageOrderly`) are ignored on reading and not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionGroupConfig {
    /// `brokerId`.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub broker_id: i64,
    /// `consumeBroadcastEnable`.
    #[serde(default = "yes", deserialize_with = "lenient_bool")]
    pub consume_broadcast_enable: bool,
    /// `consumeEnable`.
    #[serde(default = "yes", deserialize_with = "lenient_bool")]
    pub consume_enable: bool,
    /// `consumeFromMinEnable`.
    #[serde(default = "yes", deserialize_with = "lenient_bool")]
    pub consume_from_min_enable: bool,
    /// `consumeTimeoutMinute` (RocketMQ 5; 4.x tools ignore it).
    #[serde(default = "fifteen", deserialize_with = "lenient_i32")]
    pub consume_timeout_minute: i32,
    /// `groupName`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub group_name: String,
    /// `groupSysFlag`.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub group_sys_flag: i32,
    /// `notifyConsumerIdsChangedEnable`.
    #[serde(default = "yes", deserialize_with = "lenient_bool")]
    pub notify_consumer_ids_changed_enable: bool,
    /// raftmq only: true for a group listed because it has committed offsets or registered consumers but was
    /// never created with 200 (RocketMQ would have auto-created it); not written when false. Java's fastjson
    /// ignores the unknown field.
    #[serde(default, rename = "raftmqImplicit", skip_serializing_if = "std::ops::Not::not")]
    pub raftmq_implicit: bool,
    /// `retryMaxTimes`.
    #[serde(default = "sixteen", deserialize_with = "lenient_i32")]
    pub retry_max_times: i32,
    /// `retryQueueNums`.
    #[serde(default = "one", deserialize_with = "lenient_i32")]
    pub retry_queue_nums: i32,
    /// `whichBrokerWhenConsumeSlowly`.
    #[serde(default = "one_i64", deserialize_with = "lenient_i64")]
    pub which_broker_when_consume_slowly: i64,
}

impl SubscriptionGroupConfig {
    /// RocketMQ's defaults for a group named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        SubscriptionGroupConfig {
            broker_id: 0,
            consume_broadcast_enable: true,
            consume_enable: true,
            consume_from_min_enable: true,
            consume_timeout_minute: 15,
            group_name: name.into(),
            group_sys_flag: 0,
            notify_consumer_ids_changed_enable: true,
            raftmq_implicit: false,
            retry_max_times: 16,
            retry_queue_nums: 1,
            which_broker_when_consume_slowly: 1,
        }
    }
}

/// Java `DataVersion` (`{"counter":…,"timestamp":…}`; fastjson's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataVersion {
    /// `counter`.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub counter: i64,
    /// `timestamp`.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: i64,
}

/// GET_ALL_SUBSCRIPTIONGROUP_CONFIG (201) response body: Java `SubscriptionGroupWrapper`, a
/// `subscriptionGroupTable` keyed by group name and its `dataVersion` (fastjson's order: `dataVersion` first).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionGroupWrapper {
    /// `dataVersion`.
    #[serde(default)]
    pub data_version: DataVersion,
    /// `subscriptionGroupTable`: group name → config.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub subscription_group_table: BTreeMap<String, SubscriptionGroupConfig>,
}

// ---------------------------------------------------------------------------------------------------------
// Offset reset
// ---------------------------------------------------------------------------------------------------------

/// Most queues a [`ResetOffsetBody`] is decoded with: a body naming more is refused (a topic has at most
/// 1024 queues per broker group; this leaves room for several groups' answers merged by a caller).
pub const RESET_OFFSET_QUEUES_MAX: usize = 65_536;

/// One queue of the C++ clients' reset body (`ResetOffsetBodyForC`, `MessageQueueForC`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueueOffsetForC {
    #[serde(default, deserialize_with = "lenient_string")]
    topic: String,
    #[serde(default, deserialize_with = "lenient_string")]
    broker_name: String,
    #[serde(default, deserialize_with = "lenient_i32")]
    queue_id: i32,
    #[serde(default)]
    offset: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResetOffsetBodyForC {
    #[serde(default)]
    offset_table: Vec<QueueOffsetForC>,
}

/// INVOKE_BROKER_TO_RESET_OFFSET (222) response body (and RESET_CONSUMER_CLIENT_OFFSET's, 220): the new
/// offset of each queue. Java's `ResetOffsetBody` is a `Map<MessageQueue, Long>`, which fastjson writes with
/// the queue **objects as map keys** — `{"offsetTable":{{"brokerName":"b","queueId":0,"topic":"T"}:5}}`,
/// not standard JSON — and that is what Java's admin tools parse, so [`ResetOffsetBody::encode`] writes it
/// the same way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetOffsetBody {
    /// `offsetTable`: queue → new offset.
    pub offset_table: BTreeMap<MessageQueue, i64>,
}

impl ResetOffsetBody {
    /// The fastjson form (object keys with fields in fastjson's alphabetical order).
    ///
    /// # Errors
    /// [`RemotingError::Unencodable`] if a name cannot be written as a JSON string (not expected).
    pub fn encode(&self) -> Result<Bytes> {
        encode_queue_map("offsetTable", self.offset_table.iter(), "").map(Bytes::from)
    }

    /// Parses the fastjson form, the same map with string-encoded keys (C++ 3.x), or the C++ clients'
    /// list form (`{"offsetTable":[{"topic","brokerName","queueId","offset"}]}`).
    ///
    /// # Errors
    /// [`RemotingError::BodyJson`] when the body is none of them, or names more than
    /// [`RESET_OFFSET_QUEUES_MAX`] queues.
    pub fn decode(body: &[u8]) -> Result<ResetOffsetBody> {
        const WHAT: &str = "ResetOffsetBody";
        let too_many = || RemotingError::BodyJson {
            what: WHAT,
            source: serde::de::Error::custom(format!("more than {RESET_OFFSET_QUEUES_MAX} queues (RESET_OFFSET_QUEUES_MAX)")),
        };
        if let Some(table) = decode_object_keyed(body) {
            if table.len() > RESET_OFFSET_QUEUES_MAX {
                return Err(too_many());
            }
            return Ok(ResetOffsetBody { offset_table: table });
        }
        if let Ok(c) = serde_json::from_slice::<ResetOffsetBodyForC>(body) {
            if c.offset_table.len() > RESET_OFFSET_QUEUES_MAX {
                return Err(too_many());
            }
            let offset_table = c
                .offset_table
                .into_iter()
                .map(|q| (MessageQueue { topic: q.topic, broker_name: q.broker_name, queue_id: q.queue_id }, q.offset))
                .collect();
            return Ok(ResetOffsetBody { offset_table });
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct StringKeyed {
            #[serde(default)]
            offset_table: BTreeMap<String, i64>,
        }
        let keyed: StringKeyed = serde_json::from_slice(body).map_err(|source| RemotingError::BodyJson { what: WHAT, source })?;
        if keyed.offset_table.len() > RESET_OFFSET_QUEUES_MAX {
            return Err(too_many());
        }
        let mut offset_table = BTreeMap::new();
        for (k, v) in keyed.offset_table {
            let q: MessageQueue = serde_json::from_str(&k).map_err(|source| RemotingError::BodyJson { what: WHAT, source })?;
            offset_table.insert(q, v);
        }
        Ok(ResetOffsetBody { offset_table })
    }
}

/// The fastjson object-keyed form: `{"offsetTable":{<MessageQueue>:<value>,…}}` (other top-level fields
/// are skipped); `None` when the body is not in that form.
fn decode_object_keyed<V: DeserializeOwned>(body: &[u8]) -> Option<BTreeMap<MessageQueue, V>> {
    fn ws(b: &[u8], mut i: usize) -> usize {
        while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        i
    }
    /// One JSON value at `b[i..]`: the value and the index after it.
    fn value<T: DeserializeOwned>(b: &[u8], i: usize) -> Option<(T, usize)> {
        let mut it = serde_json::Deserializer::from_slice(b.get(i..)?).into_iter::<T>();
        let v = it.next()?.ok()?;
        Some((v, i + it.byte_offset()))
    }
    let mut table = None;
    let mut i = ws(body, 0);
    (body.get(i) == Some(&b'{')).then_some(())?;
    i = ws(body, i + 1);
    while body.get(i) != Some(&b'}') {
        let (key, j) = value::<String>(body, i)?;
        i = ws(body, j);
        (body.get(i) == Some(&b':')).then_some(())?;
        i = ws(body, i + 1);
        if key == "offsetTable" && body.get(i) == Some(&b'{') {
            let mut t = BTreeMap::new();
            i = ws(body, i + 1);
            while body.get(i) != Some(&b'}') {
                // Keys that are strings are the C++ 3.x form: leave it to the string-keyed parser.
                (body.get(i) == Some(&b'{')).then_some(())?;
                let (q, j) = value::<MessageQueue>(body, i)?;
                i = ws(body, j);
                (body.get(i) == Some(&b':')).then_some(())?;
                let (offset, j) = value::<V>(body, ws(body, i + 1))?;
                t.insert(q, offset);
                if t.len() > RESET_OFFSET_QUEUES_MAX {
                    // Reported as too many by the caller; no need to read on.
                    return Some(t);
                }
                i = ws(body, j);
                match body.get(i) {
                    Some(b',') => i = ws(body, i + 1),
                    Some(b'}') => {}
                    _ => return None,
                }
            }
            table = Some(t);
            i += 1;
        } else {
            let (_, j) = value::<serde::de::IgnoredAny>(body, i)?;
            i = j;
        }
        i = ws(body, i);
        match body.get(i) {
            Some(b',') => i = ws(body, i + 1),
            Some(b'}') => {}
            _ => return None,
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_stats_read_back_what_they_write() {
        let mut c = ConsumeStats { consume_tps: 2.5, ..Default::default() };
        let q = |topic: &str, id| MessageQueue { topic: topic.into(), broker_name: "b".into(), queue_id: id };
        c.offset_table.insert(q("T", 0), OffsetWrapper { broker_offset: 10, consumer_offset: 4, last_timestamp: 7 });
        c.offset_table.insert(q("%RETRY%g", 1), OffsetWrapper { broker_offset: 1, consumer_offset: 0, last_timestamp: 0 });
        let back = ConsumeStats::decode(&c.encode().unwrap()).unwrap();
        assert_eq!(back.offset_table, c.offset_table);
        assert!(ConsumeStats::decode(b"{\"offsetTable\":[1]}").is_err());
    }

    /// The 201 body, byte for byte as fastjson writes RocketMQ 4.9's `SubscriptionGroupWrapper` (fields in
    /// alphabetical order), plus the RocketMQ 5 field `consumeTimeoutMinute`; an implicit group carries
    /// `raftmqImplicit`.
    #[test]
    fn the_subscription_group_wrapper_is_written_as_rocketmq_writes_it() {
        let mut w =
            SubscriptionGroupWrapper { data_version: DataVersion { counter: 7, timestamp: 1_700_000_000_000 }, ..Default::default() };
        w.subscription_group_table.insert("g1".into(), SubscriptionGroupConfig::new("g1"));
        let mut auto = SubscriptionGroupConfig::new("g2");
        auto.raftmq_implicit = true;
        w.subscription_group_table.insert("g2".into(), auto);
        let json = String::from_utf8(encode_json_body(&w).unwrap().to_vec()).unwrap();
        let g = |name: &str, tail: &str| {
            format!(
                "{{\"brokerId\":0,\"consumeBroadcastEnable\":true,\"consumeEnable\":true,\"consumeFromMinEnable\":true,\
                 \"consumeTimeoutMinute\":15,\"groupName\":\"{name}\",\"groupSysFlag\":0,\"notifyConsumerIdsChangedEnable\":true,{tail}\
                 \"retryMaxTimes\":16,\"retryQueueNums\":1,\"whichBrokerWhenConsumeSlowly\":1}}"
            )
        };
        let expect = format!(
            "{{\"dataVersion\":{{\"counter\":7,\"timestamp\":1700000000000}},\"subscriptionGroupTable\":{{\"g1\":{},\"g2\":{}}}}}",
            g("g1", ""),
            g("g2", "\"raftmqImplicit\":true,")
        );
        assert_eq!(json, expect);
        assert_eq!(decode_json_body::<SubscriptionGroupWrapper>("w", json.as_bytes()).unwrap(), w);
    }

    /// What `mqadmin updateSubGroup` sends (RocketMQ 5: extra fields, numbers as strings from some tools);
    /// absent fields take RocketMQ's defaults.
    #[test]
    fn a_subscription_group_body_reads_leniently_with_rocketmq_defaults() {
        let body = br#"{"attributes":{},"brokerId":0,"consumeBroadcastEnable":false,"consumeEnable":"false","groupName":"G",
            "groupRetryPolicy":{"type":"CUSTOMIZED"},"retryMaxTimes":"3","subscriptionDataSet":null}"#;
        let c: SubscriptionGroupConfig = decode_json_body("group", body).unwrap();
        let mut expect = SubscriptionGroupConfig::new("G");
        expect.consume_broadcast_enable = false;
        expect.consume_enable = false;
        expect.retry_max_times = 3;
        assert_eq!(c, expect);
    }

    fn mq(topic: &str, queue_id: i32) -> MessageQueue {
        MessageQueue { topic: topic.into(), broker_name: "broker-a".into(), queue_id }
    }

    #[test]
    fn admin_statistics_are_written_as_fastjson_writes_them() {
        let q = |i: i32| MessageQueue { topic: "T".into(), broker_name: "broker-a".into(), queue_id: i };
        let mut t = TopicStatsTable::default();
        t.offset_table.insert(q(1), TopicOffset { last_update_timestamp: 7, max_offset: 3, min_offset: 1 });
        t.offset_table.insert(q(0), TopicOffset::default());
        assert_eq!(
            std::str::from_utf8(&t.encode().unwrap()).unwrap(),
            r#"{"offsetTable":{{"brokerName":"broker-a","queueId":0,"topic":"T"}:{"lastUpdateTimestamp":0,"maxOffset":0,"minOffset":0},{"brokerName":"broker-a","queueId":1,"topic":"T"}:{"lastUpdateTimestamp":7,"maxOffset":3,"minOffset":1}}}"#
        );
        let mut c = ConsumeStats::default();
        c.offset_table.insert(q(0), OffsetWrapper { broker_offset: 9, consumer_offset: 4, last_timestamp: 5 });
        assert_eq!(
            std::str::from_utf8(&c.encode().unwrap()).unwrap(),
            r#"{"offsetTable":{{"brokerName":"broker-a","queueId":0,"topic":"T"}:{"brokerOffset":9,"consumerOffset":4,"lastTimestamp":5}},"consumeTps":0.0}"#
        );
        // Names are JSON strings (escaped), and an empty table is an empty object.
        let mut odd = ConsumeStats { consume_tps: f64::NAN, ..Default::default() };
        assert_eq!(std::str::from_utf8(&odd.encode().unwrap()).unwrap(), r#"{"offsetTable":{},"consumeTps":0.0}"#);
        odd.offset_table.insert(MessageQueue { topic: "a\"b".into(), broker_name: "b".into(), queue_id: 0 }, OffsetWrapper::default());
        assert!(std::str::from_utf8(&odd.encode().unwrap()).unwrap().contains(r#""topic":"a\"b"}"#));
    }

    #[test]
    fn reset_offset_body_is_written_as_fastjson_does_and_read_in_every_form() {
        let body = ResetOffsetBody { offset_table: [(mq("T", 0), 5), (mq("T", 1), 0)].into_iter().collect() };
        let bytes = body.encode().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"offsetTable":{{"brokerName":"broker-a","queueId":0,"topic":"T"}:5,{"brokerName":"broker-a","queueId":1,"topic":"T"}:0}}"#
        );
        assert_eq!(ResetOffsetBody::decode(&bytes).unwrap(), body);
        // fastjson's spacing and field order vary; other top-level fields are skipped.
        let spaced = br#" { "x" : [1,{"a":2}] , "offsetTable" : { {"topic":"T","queueId":1,"brokerName":"broker-a"} : 0 , {"queueId":"0","topic":"T","brokerName":"broker-a"}:5 } } "#;
        assert_eq!(ResetOffsetBody::decode(spaced).unwrap(), body);
        let for_c = br#"{"offsetTable":[{"topic":"T","brokerName":"broker-a","queueId":0,"offset":5},{"topic":"T","brokerName":"broker-a","queueId":1,"offset":0}]}"#;
        assert_eq!(ResetOffsetBody::decode(for_c).unwrap(), body);
        let string_keyed = br#"{"offsetTable":{"{\"topic\":\"T\",\"brokerName\":\"broker-a\",\"queueId\":0}":5,"{\"topic\":\"T\",\"brokerName\":\"broker-a\",\"queueId\":1}":0}}"#;
        assert_eq!(ResetOffsetBody::decode(string_keyed).unwrap(), body);
        assert_eq!(ResetOffsetBody::decode(b"{}").unwrap(), ResetOffsetBody::default());
        for bad in [&b"{"[..], b"{\"offsetTable\":{{\"topic\":\"T\"}5}}", b"[1]", b""] {
            assert!(ResetOffsetBody::decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_reset_offset_body_over_the_queue_limit_is_refused() {
        let at_limit = ResetOffsetBody { offset_table: (0..RESET_OFFSET_QUEUES_MAX as i32).map(|q| (mq("T", q), 1)).collect() };
        assert_eq!(ResetOffsetBody::decode(&at_limit.encode().unwrap()).unwrap().offset_table.len(), RESET_OFFSET_QUEUES_MAX);
        let over = ResetOffsetBody { offset_table: (0..=RESET_OFFSET_QUEUES_MAX as i32).map(|q| (mq("T", q), 1)).collect() };
        let e = ResetOffsetBody::decode(&over.encode().unwrap()).unwrap_err();
        assert!(e.to_string().contains("RESET_OFFSET_QUEUES_MAX") || format!("{e:?}").contains("RESET_OFFSET_QUEUES_MAX"), "{e:?}");
    }

    #[test]
    fn route_emits_every_field_with_quoted_keys() {
        let route = TopicRouteData {
            queue_datas: vec![QueueData {
                broker_name: "broker-a".into(),
                read_queue_nums: 4,
                write_queue_nums: 4,
                perm: 6,
                topic_sys_flag: 0,
            }],
            broker_datas: vec![BrokerData {
                cluster: "DefaultCluster".into(),
                broker_name: "broker-a".into(),
                broker_addrs: [(0, "10.0.0.1:10911".to_string()), (1, "10.0.0.2:10911".to_string())].into_iter().collect(),
                zone_name: None,
                enable_acting_master: false,
            }],
            ..Default::default()
        };
        let json = String::from_utf8(encode_json_body(&route).unwrap().to_vec()).unwrap();
        assert_eq!(
            json,
            r#"{"orderTopicConf":null,"queueDatas":[{"brokerName":"broker-a","readQueueNums":4,"writeQueueNums":4,"perm":6,"topicSysFlag":0}],"brokerDatas":[{"cluster":"DefaultCluster","brokerName":"broker-a","brokerAddrs":{"0":"10.0.0.1:10911","1":"10.0.0.2:10911"},"zoneName":null,"enableActingMaster":false}],"filterServerTable":{},"topicQueueMappingByBroker":null}"#
        );
        let back: TopicRouteData = decode_json_body("TopicRouteData", json.as_bytes()).unwrap();
        assert_eq!(back, route);
        assert_eq!(back.broker_datas[0].master_addr(), Some("10.0.0.1:10911"));
    }

    #[test]
    fn fastjson_unquoted_numeric_keys_are_accepted() {
        let java = br#"{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911",1:"10.0.0.2:10911"},"brokerName":"broker-a","cluster":"c"}],"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}"#;
        let route: TopicRouteData = decode_json_body("TopicRouteData", java).unwrap();
        assert_eq!(route.broker_datas[0].broker_addrs[&1], "10.0.0.2:10911");
        assert!(!route.broker_datas[0].enable_acting_master);
        // Values in arrays and strings containing ':' or ',' are untouched.
        let fixed = quote_bare_keys(br#"{1:[1,2,{3:"a,b:c"}],"x":{ -1 : 2}}"#).unwrap();
        assert_eq!(fixed, br#"{"1":[1,2,{"3":"a,b:c"}],"x":{ "-1" : 2}}"#);
        assert_eq!(quote_bare_keys(br#"{"a":[1,2]}"#), None);
    }

    #[test]
    fn heartbeat_java_and_cpp_forms() {
        let java = br#"{"clientID":"10.0.0.5@123","consumerDataSet":[{"consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"G","messageModel":"CLUSTERING","subscriptionDataSet":[{"classFilterMode":false,"codeSet":[2598919],"expressionType":"TAG","subString":"TagA","subVersion":1700000000000,"tagsSet":["TagA"],"topic":"T"}],"unitMode":false}],"heartbeatFingerprint":0,"producerDataSet":[{"groupName":"CLIENT_INNER_PRODUCER"}],"withoutSub":false}"#;
        let hb: HeartbeatData = decode_json_body("HeartbeatData", java).unwrap();
        let c = &hb.consumer_data_set[0];
        assert_eq!(c.consume_type, ConsumeType::ConsumePassively);
        assert_eq!(c.consume_from_where, ConsumeFromWhere::ConsumeFromFirstOffset);
        assert_eq!(c.subscription_data_set[0].sub_version, 1_700_000_000_000);
        assert_eq!(hb.is_without_sub, Some(false));

        let cpp = br#"{"clientID":"x","consumerDataSet":[{"consumeFromWhere":4,"consumeType":1,"groupName":"G","messageModel":1,"subscriptionDataSet":[{"classFilterMode":false,"codeSet":["2598919"],"subString":"*","subVersion":"1700000000000","tagsSet":null,"topic":"T"}],"unitMode":"0"}],"producerDataSet":null}"#;
        let hb2: HeartbeatData = decode_json_body("HeartbeatData", cpp).unwrap();
        let c2 = &hb2.consumer_data_set[0];
        assert_eq!(c2.consume_type, ConsumeType::ConsumePassively);
        assert_eq!(c2.message_model, MessageModel::Clustering);
        assert_eq!(c2.consume_from_where, ConsumeFromWhere::ConsumeFromFirstOffset);
        let s = &c2.subscription_data_set[0];
        assert_eq!(s.sub_version, 1_700_000_000_000);
        assert_eq!(s.code_set, vec![2_598_919]);
        assert_eq!(s.expression_type, "TAG");
        assert!(hb2.producer_data_set.is_empty());

        // Unknown enum values are kept, and the output uses Java names.
        let odd: ConsumerData = serde_json::from_str(r#"{"consumeType":"CONSUME_SOMEHOW","messageModel":7}"#).unwrap();
        assert_eq!(odd.consume_type, ConsumeType::Unknown("CONSUME_SOMEHOW".into()));
        assert_eq!(odd.message_model, MessageModel::Unknown("7".into()));
        let out = serde_json::to_string(&c2).unwrap();
        assert!(out.contains(r#""consumeType":"CONSUME_PASSIVELY""#), "{out}");
    }

    #[test]
    fn locks_and_lists() {
        let body = br#"{"consumerGroup":"G","clientId":"c1","onlyThisBroker":false,"mqSet":[{"topic":"T","brokerName":"b","queueId":1},{"topic":"T","brokerName":"b","queueId":"2"}]}"#;
        let req: LockBatchRequestBody = decode_json_body("LockBatchRequestBody", body).unwrap();
        assert_eq!(req.mq_set[1].queue_id, 2);
        let resp = LockBatchResponseBody { lock_ok_mq_set: req.mq_set.clone() };
        let json = encode_json_body(&resp).unwrap();
        assert!(json.starts_with(br#"{"lockOKMQSet":[{"topic":"T","brokerName":"b","queueId":1}"#));
        let list = GetConsumerListByGroupResponseBody { consumer_id_list: vec!["a".into(), "b".into()] };
        assert_eq!(&encode_json_body(&list).unwrap()[..], br#"{"consumerIdList":["a","b"]}"#);
    }

    #[test]
    fn cluster_info_round_trip() {
        let mut info = ClusterInfo::default();
        info.broker_addr_table.insert(
            "broker-a".into(),
            BrokerData {
                cluster: "C".into(),
                broker_name: "broker-a".into(),
                broker_addrs: [(0, "h:1".into())].into(),
                ..Default::default()
            },
        );
        info.cluster_addr_table.insert("C".into(), ["broker-a".to_string()].into());
        let json = encode_json_body(&info).unwrap();
        assert_eq!(decode_json_body::<ClusterInfo>("ClusterInfo", &json).unwrap(), info);
    }

    #[test]
    fn register_broker_body_from_java() {
        let java = br#"{"filterServerList":[],"topicConfigSerializeWrapper":{"dataVersion":{"counter":3,"stateVersion":0,"timestamp":1700000000000},"topicConfigTable":{"T":{"attributes":{},"order":false,"perm":6,"readQueueNums":4,"topicFilterType":"SINGLE_TAG","topicName":"T","topicSysFlag":0,"writeQueueNums":4}}}}"#;
        let b: RegisterBrokerBody = decode_json_body("RegisterBrokerBody", java).unwrap();
        assert_eq!(b.topic_config_serialize_wrapper.topic_config_table["T"].write_queue_nums, 4);
    }
}
