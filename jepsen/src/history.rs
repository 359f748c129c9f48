//! The Jepsen-shaped operation history: one [`Op`] per line of a JSON Lines file.
//!
//! # Format
//!
//! Every line is one JSON object with the fields, in this order:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `index` | u64 | dense, in write order |
//! | `time` | u64 | nanoseconds since the test started (monotonic clock) |
//! | `process` | integer or `"nemesis"` | the logical process; a worker gets a new id after an indeterminate result |
//! | `type` | `invoke` \| `ok` \| `fail` \| `info` | Jepsen's op types |
//! | `f` | string | `send`, `poll`, `assign`, `commit`, `crash`, `txn-end`, `txn-check`, `final-drain`, or a nemesis function |
//! | `value` | JSON | the payload, see below |
//! | `node` | string, optional | the broker endpoint used |
//! | `error` | string, optional | why an op failed or is indeterminate |
//! | `extra` | JSON, optional | side information, e.g. the `next`/`max` offsets of a poll |
//!
//! `value` and `extra` are kept as the exact JSON text that was read ([`JsonText`]), so reading a line and writing
//! it back reproduces it byte for byte (as long as the line itself has no whitespace between fields: the writer emits
//! compact JSON).
//!
//! # Payloads of the workload's functions
//!
//! Keys ([`Key`]) are `u32` queue ids, values ([`Value`]) unique `u64`s, offsets ([`Offset`]) `u64` consume-queue
//! offsets.
//!
//! * `send`: a list of micro-operations ([`Mop`]), all to one key (an atomic batch). Invoke: `[["send",k,v], ...]`;
//!   ok: `[["send",k,[offset,v]], ...]`; info/fail: the invoke form (`[null, v]` is accepted as "offset unknown").
//!   A *scheduled* send (delivered to its queue only after a delay) has `extra` = `{"delay_ms":d, ...}` on its
//!   invocation and completion ([`Op::delay_ms`]; the workload adds `"via":"timer"|"level"`, `"level"`, and on ok
//!   `"staged_offset"`, the offset the broker acknowledged in its internal staging queue); its ok value gives the
//!   offset as unknown (`[null, v]`), and an offset given there is ignored by the checker.
//! * transactional `send` (a half message, visible in its queue only once committed): `extra` = `{"txn":plan, ...}`
//!   ([`Op::txn_plan`]) on its invocation and completion, where the plan (`commit`, `rollback`, `crash-commit`,
//!   `crash-rollback`, `crash-silent`) is what the producer meant to do and is informational only: the checker
//!   judges by the `txn-end` ops. Its ok value gives the offset as unknown (`[null, v]`; the broker acknowledged an
//!   offset in its half queue, recorded as `extra.half_offset`, and `extra.commit_log_offset`); an offset given there
//!   is ignored by the checker.
//! * `txn-end`: an END_TRANSACTION for one transactional value ([`TxnEnd`]): `{"key":k,"value":v,
//!   "decision":"commit"|"rollback","oneway":bool,"check":bool}` (`check`: answering a check-back). Invoked before
//!   the request is written; ok = the broker answered SUCCESS (a commit is then stored in the real queue), fail =
//!   the broker certainly changed nothing with this request, info = unknown (oneway, timeout, "outcome unknown").
//! * `txn-check`: a single `info` op when the broker checked a transaction back ([`TxnCheck`]):
//!   `{"key":k,"value":v,"answer":"commit"|"rollback"|"none"}`; an answer other than `none` is followed by a
//!   `txn-end` with `check: true`.
//! * `poll`: invoke `[["poll"]]`; ok `[["poll",[[k,[[o,v],...]],...]]]`; `extra` = `{"next":[[k,o]...],
//!   "max":[[k,o]...]}` ([`PollExtra`]). A Jepsen-style object `{"k":[[o,v]...]}` is accepted in place of the list.
//! * `assign`: `{"keys":[k...],"seek":"keep"|"committed"|"beginning","group":"..."}` ([`Assign`]); a bare key list
//!   `[k...]` is accepted as `seek: keep`. On ok, `extra` may carry `{"committed":[[k,o]...]}`.
//! * `commit`: `{"group":"...","offsets":[[k,o]...]}` ([`Commit`]).
//! * `crash`: a single `info` op; the worker continues with a fresh client under a new process id.
//! * `final-drain`: one per drain worker, invoke then `ok` (reached every queue's end) or `info` (gave up). It is a
//!   wrapper: the drain worker's own polls may sit between its invocation and completion.
//! * nemesis ops: `process: "nemesis"`, type `info`, free-form `value`.
//!
//! # Pairing
//!
//! [`pair_ops`] matches each invocation with its completion (same process, same `f`). A process has at most one
//! outstanding op, except that a `final-drain` may enclose other ops of the same process (pairing per `f` also
//! tolerates other overlapping helper ops). An invocation that never completes counts as `info`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value as Json;

/// A queue id (Jepsen's key): one totally ordered, append-only log.
pub type Key = u32;
/// A message value; unique across the whole test.
pub type Value = u64;
/// A consume-queue offset.
pub type Offset = u64;
/// What a poll returned: per key, the `(offset, value)` pairs in order.
pub type PollReads = Vec<(Key, Vec<(Offset, Value)>)>;

/// Errors while reading, writing or interpreting a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The history file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a valid op.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The history file (`<memory>` when parsing a string).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// An op's `value` or `extra` does not have the shape its `f` requires.
    #[error("op {index} ({f}): {message}")]
    Payload {
        /// The op's `index`.
        index: u64,
        /// The op's `f`.
        f: String,
        /// What is wrong with it.
        message: String,
    },
    /// An op could not be serialized.
    #[error("serializing op {index}: {message}")]
    Serialize {
        /// The op's `index`.
        index: u64,
        /// The serializer's message.
        message: String,
    },
}

/// Jepsen's op types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The operation started.
    Invoke,
    /// It definitely happened.
    Ok,
    /// It definitely did not happen.
    Fail,
    /// Indeterminate: it may or may not have happened.
    Info,
}

impl OpType {
    /// The JSON spelling: `invoke`, `ok`, `fail` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpType::Invoke => "invoke",
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            OpType::Info => "info",
        }
    }
}

impl fmt::Display for OpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The process that performed an op: a numbered worker, or the nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    /// A client worker's logical process id (JSON integer).
    Worker(u64),
    /// The fault injector (JSON string `"nemesis"`).
    Nemesis,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Worker(p) => write!(f, "{p}"),
            Process::Nemesis => f.write_str("nemesis"),
        }
    }
}

impl Serialize for Process {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Process::Worker(p) => s.serialize_u64(*p),
            Process::Nemesis => s.serialize_str("nemesis"),
        }
    }
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Json::deserialize(d)? {
            Json::Number(n) => n.as_u64().map(Process::Worker).ok_or_else(|| D::Error::custom(format!("bad process id {n}"))),
            Json::String(s) if s == "nemesis" => Ok(Process::Nemesis),
            other => Err(D::Error::custom(format!("process must be an integer or \"nemesis\", got {other}"))),
        }
    }
}

/// A JSON value kept as its exact text, so histories round-trip byte for byte (object key order included).
#[derive(Clone)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// The JSON `null`.
    pub fn null() -> Self {
        JsonText(RawValue::NULL.to_owned())
    }

    /// Serializes any value (compact; a struct keeps its field order, a `serde_json::Value` object its map's order).
    /// A value that cannot be serialized (e.g. a map with non-string keys) becomes `null`.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Self {
        serde_json::value::to_raw_value(value).map(JsonText).unwrap_or_else(|_| JsonText::null())
    }

    /// Wraps JSON text after checking that it is one valid JSON value.
    pub fn from_text(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(JsonText)
    }

    /// The exact text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// True if this is JSON `null`.
    pub fn is_null(&self) -> bool {
        self.0.get().trim() == "null"
    }

    /// Parses the text into a JSON tree.
    pub fn to_value(&self) -> Result<Json, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl Default for JsonText {
    fn default() -> Self {
        JsonText::null()
    }
}

impl From<Json> for JsonText {
    fn from(value: Json) -> Self {
        JsonText::of(&value)
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for JsonText {}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(JsonText)
    }
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Dense position in write order.
    pub index: u64,
    /// Nanoseconds since the test started.
    pub time: u64,
    /// Who performed it.
    pub process: Process,
    /// invoke / ok / fail / info.
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// The function (`send`, `poll`, ... or a nemesis function).
    pub f: String,
    /// The payload (exact JSON text).
    #[serde(default)]
    pub value: JsonText,
    /// The broker endpoint used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The error of a `fail`/`info` op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Side information, e.g. a poll's `next`/`max` offsets. An explicit `"extra":null` is kept as `Some(null)`, so
    /// it round-trips.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_json")]
    pub extra: Option<JsonText>,
}

/// Deserializes a field that is present (even as `null`) into `Some`.
fn present_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JsonText>, D::Error> {
    JsonText::deserialize(d).map(Some)
}

impl Op {
    /// Builds an op without `node`, `error` or `extra`. `value` is anything serializable: a `serde_json::Value`
    /// (e.g. from `json!`), [`mops_json`], an [`Assign`], a [`Commit`], ...
    pub fn new(index: u64, time: u64, process: Process, op_type: OpType, f: impl Into<String>, value: impl Serialize) -> Op {
        Op { index, time, process, op_type, f: f.into(), value: JsonText::of(&value), node: None, error: None, extra: None }
    }

    /// Sets `node`.
    pub fn with_node(mut self, node: impl Into<String>) -> Op {
        self.node = Some(node.into());
        self
    }

    /// Sets `error`.
    pub fn with_error(mut self, error: impl Into<String>) -> Op {
        self.error = Some(error.into());
        self
    }

    /// Sets `extra` (e.g. a [`PollExtra`], or `json!({"committed": [[k, o]]})`).
    pub fn with_extra(mut self, extra: impl Serialize) -> Op {
        self.extra = Some(JsonText::of(&extra));
        self
    }

    /// Parses one JSON line.
    pub fn from_json_line(line: &str) -> Result<Op, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// The compact JSON line (without the newline).
    pub fn to_json_line(&self) -> Result<String, HistoryError> {
        serde_json::to_string(self).map_err(|e| HistoryError::Serialize { index: self.index, message: e.to_string() })
    }

    /// True for the nemesis process.
    pub fn is_nemesis(&self) -> bool {
        self.process == Process::Nemesis
    }

    fn payload_error(&self, message: impl Into<String>) -> HistoryError {
        HistoryError::Payload { index: self.index, f: self.f.clone(), message: message.into() }
    }

    fn value_json(&self) -> Result<Json, HistoryError> {
        self.value.to_value().map_err(|e| self.payload_error(format!("value is not JSON: {e}")))
    }

    fn extra_json(&self) -> Result<Option<Json>, HistoryError> {
        match &self.extra {
            None => Ok(None),
            Some(t) => t.to_value().map(Some).map_err(|e| self.payload_error(format!("extra is not JSON: {e}"))),
        }
    }

    /// The micro-operations of a `send` or `poll` op.
    pub fn mops(&self) -> Result<Vec<Mop>, HistoryError> {
        let v = self.value_json()?;
        parse_mops(&v).map_err(|m| self.payload_error(m))
    }

    /// The payload of an `assign` op.
    pub fn assign(&self) -> Result<Assign, HistoryError> {
        let v = self.value_json()?;
        Assign::from_json(&v).map_err(|m| self.payload_error(m))
    }

    /// The committed offsets an `assign` read (`extra.committed`), if recorded.
    pub fn assign_committed(&self) -> Result<Option<Vec<(Key, Offset)>>, HistoryError> {
        match self.extra_json()? {
            None => Ok(None),
            Some(Json::Object(m)) => match m.get("committed") {
                None | Some(Json::Null) => Ok(None),
                Some(c) => parse_pairs(c).map(Some).map_err(|e| self.payload_error(format!("extra.committed: {e}"))),
            },
            Some(Json::Null) => Ok(None),
            Some(other) => Err(self.payload_error(format!("extra must be an object, got {other}"))),
        }
    }

    /// The payload of a `commit` op.
    pub fn commit(&self) -> Result<Commit, HistoryError> {
        let v = self.value_json()?;
        Commit::from_json(&v).map_err(|m| self.payload_error(m))
    }

    /// The delay of a scheduled `send` (`extra.delay_ms`); `None` when `extra` has no `delay_ms`.
    pub fn delay_ms(&self) -> Result<Option<u64>, HistoryError> {
        match self.extra_json()? {
            Some(Json::Object(m)) => match m.get("delay_ms") {
                None | Some(Json::Null) => Ok(None),
                Some(d) => d
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| self.payload_error(format!("extra.delay_ms must be a non-negative integer, got {d}"))),
            },
            _ => Ok(None),
        }
    }

    /// The plan of a transactional `send` (`extra.txn`); `None` when `extra` has no `txn`. A `txn` that is not a
    /// string still marks the send transactional (plan `"?"`).
    pub fn txn_plan(&self) -> Result<Option<String>, HistoryError> {
        match self.extra_json()? {
            Some(Json::Object(m)) => match m.get("txn") {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(p)) => Ok(Some(p.clone())),
                Some(_) => Ok(Some("?".to_owned())),
            },
            _ => Ok(None),
        }
    }

    /// The payload of a `txn-end` op.
    pub fn txn_end(&self) -> Result<TxnEnd, HistoryError> {
        let v = self.value_json()?;
        TxnEnd::from_json(&v).map_err(|m| self.payload_error(m))
    }

    /// The payload of a `txn-check` op.
    pub fn txn_check(&self) -> Result<TxnCheck, HistoryError> {
        let v = self.value_json()?;
        TxnCheck::from_json(&v).map_err(|m| self.payload_error(m))
    }

    /// The `next`/`max` offsets of a `poll` (empty when `extra` is absent).
    pub fn poll_extra(&self) -> Result<PollExtra, HistoryError> {
        match self.extra_json()? {
            None | Some(Json::Null) => Ok(PollExtra::default()),
            Some(v) => PollExtra::from_json(&v).map_err(|m| self.payload_error(m)),
        }
    }
}

/// A micro-operation of a `send` or `poll` op, serialized as Jepsen's array form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mop {
    /// `["send",k,v]` (offset unknown) or `["send",k,[offset,v]]`.
    Send {
        /// The queue.
        key: Key,
        /// The message value.
        value: Value,
        /// The offset the broker reported, if known.
        offset: Option<Offset>,
    },
    /// `["poll"]` (invocation, `reads: None`) or `["poll",[[k,[[o,v],...]],...]]`.
    Poll {
        /// Per key, the `(offset, value)` pairs returned, in order.
        reads: Option<PollReads>,
    },
}

impl Mop {
    /// Parses the array form.
    pub fn from_json(j: &Json) -> Result<Mop, String> {
        let arr = j.as_array().ok_or_else(|| format!("mop must be an array, got {j}"))?;
        match arr.first().and_then(Json::as_str) {
            Some("send") => {
                if arr.len() != 3 {
                    return Err(format!("send mop needs 3 elements: {j}"));
                }
                let key = parse_key(&arr[1])?;
                match &arr[2] {
                    Json::Array(pair) => {
                        if pair.len() != 2 {
                            return Err(format!("send result must be [offset, value]: {j}"));
                        }
                        let offset = match &pair[0] {
                            Json::Null => None,
                            o => Some(parse_u64(o, "offset")?),
                        };
                        Ok(Mop::Send { key, value: parse_u64(&pair[1], "value")?, offset })
                    }
                    v => Ok(Mop::Send { key, value: parse_u64(v, "value")?, offset: None }),
                }
            }
            Some("poll") => match arr.len() {
                1 => Ok(Mop::Poll { reads: None }),
                2 => {
                    let reads = match &arr[1] {
                        Json::Null => return Ok(Mop::Poll { reads: None }),
                        Json::Array(per_key) => {
                            let mut out = Vec::with_capacity(per_key.len());
                            for entry in per_key {
                                let e = entry
                                    .as_array()
                                    .filter(|e| e.len() == 2)
                                    .ok_or_else(|| format!("poll entry must be [k, pairs]: {entry}"))?;
                                out.push((parse_key(&e[0])?, parse_read_pairs(&e[1])?));
                            }
                            out
                        }
                        Json::Object(m) => {
                            let mut out = Vec::with_capacity(m.len());
                            for (k, pairs) in m {
                                let key = k.parse::<Key>().map_err(|_| format!("poll key {k:?} is not a u32"))?;
                                out.push((key, parse_read_pairs(pairs)?));
                            }
                            out
                        }
                        other => return Err(format!("poll result must be a list: {other}")),
                    };
                    Ok(Mop::Poll { reads: Some(reads) })
                }
                _ => Err(format!("poll mop has too many elements: {j}")),
            },
            _ => Err(format!("unknown mop {j}")),
        }
    }

    /// The array form.
    pub fn to_json(&self) -> Json {
        match self {
            Mop::Send { key, value, offset: None } => Json::Array(vec!["send".into(), (*key).into(), (*value).into()]),
            Mop::Send { key, value, offset: Some(o) } => {
                Json::Array(vec!["send".into(), (*key).into(), Json::Array(vec![(*o).into(), (*value).into()])])
            }
            Mop::Poll { reads: None } => Json::Array(vec!["poll".into()]),
            Mop::Poll { reads: Some(reads) } => {
                let per_key = reads
                    .iter()
                    .map(|(k, pairs)| {
                        let pairs = pairs.iter().map(|(o, v)| Json::Array(vec![(*o).into(), (*v).into()])).collect();
                        Json::Array(vec![(*k).into(), Json::Array(pairs)])
                    })
                    .collect();
                Json::Array(vec!["poll".into(), Json::Array(per_key)])
            }
        }
    }
}

impl Serialize for Mop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Mop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = Json::deserialize(d)?;
        Mop::from_json(&j).map_err(D::Error::custom)
    }
}

/// Parses a list of mops (`[[...], ...]`).
pub fn parse_mops(j: &Json) -> Result<Vec<Mop>, String> {
    j.as_array().ok_or_else(|| format!("value must be a list of mops, got {j}"))?.iter().map(Mop::from_json).collect()
}

/// The JSON list of mops.
pub fn mops_json(mops: &[Mop]) -> Json {
    Json::Array(mops.iter().map(Mop::to_json).collect())
}

/// Where an `assign` positions the consumer on its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seek {
    /// Continue from the consumer's local position.
    Keep,
    /// Start at the group's committed offset (0 if none).
    Committed,
    /// Start at offset 0.
    Beginning,
}

/// The payload of an `assign` op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    /// The keys the consumer reads from now on (all others are dropped).
    pub keys: Vec<Key>,
    /// Where to start on them.
    pub seek: Seek,
    /// The consumer group whose committed offsets `seek: committed` uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Assign {
    /// Parses `{"keys":[...],"seek":...,"group":...}` or a bare key list (seek `keep`).
    pub fn from_json(j: &Json) -> Result<Assign, String> {
        match j {
            Json::Array(_) => Ok(Assign { keys: parse_keys(j)?, seek: Seek::Keep, group: None }),
            Json::Object(m) => {
                let keys = parse_keys(m.get("keys").ok_or("assign without keys")?)?;
                let seek = match m.get("seek") {
                    None | Some(Json::Null) => Seek::Keep,
                    Some(s) => serde_json::from_value(s.clone()).map_err(|_| format!("bad seek {s}"))?,
                };
                let group = match m.get("group") {
                    None | Some(Json::Null) => None,
                    Some(Json::String(g)) => Some(g.clone()),
                    Some(g) => return Err(format!("bad group {g}")),
                };
                Ok(Assign { keys, seek, group })
            }
            other => Err(format!("assign value must be an object, got {other}")),
        }
    }

    /// The object form (keys sorted, as a `serde_json::Value`); pass the struct itself to [`Op::new`] to keep the
    /// field order `keys`, `seek`, `group`.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// The payload of a `commit` op: a consumer group's "next offset to consume" per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The consumer group.
    pub group: String,
    /// `[[k, offset], ...]`.
    pub offsets: Vec<(Key, Offset)>,
}

impl Commit {
    /// Parses `{"group":...,"offsets":[[k,o]...]}`.
    pub fn from_json(j: &Json) -> Result<Commit, String> {
        let m = j.as_object().ok_or_else(|| format!("commit value must be an object, got {j}"))?;
        let group = m.get("group").and_then(Json::as_str).ok_or("commit without group")?.to_owned();
        let offsets = parse_pairs(m.get("offsets").ok_or("commit without offsets")?)?;
        Ok(Commit { group, offsets })
    }

    /// The object form (as a `serde_json::Value`).
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// What an END_TRANSACTION asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxnDecision {
    /// Make the message visible in its real queue (8).
    Commit,
    /// Drop it (12).
    Rollback,
}

/// The payload of a `txn-end` op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnEnd {
    /// The real queue of the transactional message.
    pub key: Key,
    /// Its value.
    pub value: Value,
    /// Commit or roll back.
    pub decision: TxnDecision,
    /// Sent oneway (its outcome is never observed).
    #[serde(default)]
    pub oneway: bool,
    /// An answer to a check-back.
    #[serde(default)]
    pub check: bool,
}

impl TxnEnd {
    /// Parses `{"key":k,"value":v,"decision":"commit"|"rollback","oneway":b,"check":b}`.
    pub fn from_json(j: &Json) -> Result<TxnEnd, String> {
        serde_json::from_value(j.clone()).map_err(|e| format!("txn-end value {j}: {e}"))
    }

    /// The object form.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// The payload of a `txn-check` op: the broker asked about a transaction, and what the producer answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnCheck {
    /// The real queue (from the check-back's message).
    pub key: Key,
    /// The value.
    pub value: Value,
    /// `commit`, `rollback` or `none` (not answered).
    pub answer: String,
}

impl TxnCheck {
    /// Parses `{"key":k,"value":v,"answer":...}`.
    pub fn from_json(j: &Json) -> Result<TxnCheck, String> {
        serde_json::from_value(j.clone()).map_err(|e| format!("txn-check value {j}: {e}"))
    }
}

/// A poll's `extra`: the broker's next offset and high watermark per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollExtra {
    /// `[[k, next_offset], ...]` (RocketMQ `nextBeginOffset`).
    #[serde(default)]
    pub next: Vec<(Key, Offset)>,
    /// `[[k, high_watermark], ...]` (the queue's max offset: one past the last message).
    #[serde(default)]
    pub max: Vec<(Key, Offset)>,
}

impl PollExtra {
    /// Parses `{"next":[[k,o]...],"max":[[k,o]...]}` (both optional).
    pub fn from_json(j: &Json) -> Result<PollExtra, String> {
        let m = j.as_object().ok_or_else(|| format!("poll extra must be an object, got {j}"))?;
        let get = |name: &str| match m.get(name) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(v) => parse_pairs(v).map_err(|e| format!("extra.{name}: {e}")),
        };
        Ok(PollExtra { next: get("next")?, max: get("max")? })
    }

    /// The object form (keys sorted, as a `serde_json::Value`); pass the struct itself to [`Op::with_extra`] to keep
    /// the field order `next`, `max`.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

fn parse_u64(j: &Json, what: &str) -> Result<u64, String> {
    j.as_u64().ok_or_else(|| format!("{what} must be a non-negative integer, got {j}"))
}

fn parse_key(j: &Json) -> Result<Key, String> {
    let k = parse_u64(j, "key")?;
    Key::try_from(k).map_err(|_| format!("key {k} does not fit u32"))
}

fn parse_keys(j: &Json) -> Result<Vec<Key>, String> {
    j.as_array().ok_or_else(|| format!("keys must be a list, got {j}"))?.iter().map(parse_key).collect()
}

fn parse_pairs(j: &Json) -> Result<Vec<(Key, Offset)>, String> {
    let arr = j.as_array().ok_or_else(|| format!("expected [[k, offset], ...], got {j}"))?;
    arr.iter()
        .map(|e| match e.as_array() {
            Some(p) if p.len() == 2 => Ok((parse_key(&p[0])?, parse_u64(&p[1], "offset")?)),
            _ => Err(format!("expected [k, offset], got {e}")),
        })
        .collect()
}

fn parse_read_pairs(j: &Json) -> Result<Vec<(Offset, Value)>, String> {
    let arr = j.as_array().ok_or_else(|| format!("expected [[offset, value], ...], got {j}"))?;
    arr.iter()
        .map(|e| match e.as_array() {
            Some(p) if p.len() == 2 => Ok((parse_u64(&p[0], "offset")?, parse_u64(&p[1], "value")?)),
            _ => Err(format!("expected [offset, value], got {e}")),
        })
        .collect()
}

/// Parses JSON Lines text (blank lines are skipped); errors name the 1-based line.
pub fn parse_history(text: &str) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let op = Op::from_json_line(line).map_err(|e| HistoryError::Line {
            path: PathBuf::from("<memory>"),
            line: n + 1,
            message: e.to_string(),
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// Reads a JSON Lines history file. Blank lines are skipped; the first bad line is an error naming it.
pub fn read_history(path: impl AsRef<Path>) -> Result<Vec<Op>, HistoryError> {
    let (ops, bad) = read_lines(path.as_ref(), true)?;
    debug_assert!(bad.is_empty());
    Ok(ops)
}

/// Like [`read_history`], but skips bad lines (e.g. a line cut short when the harness was killed) and returns one
/// [`HistoryError::Line`] per skipped line. I/O errors are still fatal.
pub fn read_history_lenient(path: impl AsRef<Path>) -> Result<(Vec<Op>, Vec<HistoryError>), HistoryError> {
    read_lines(path.as_ref(), false)
}

fn read_lines(path: &Path, strict: bool) -> Result<(Vec<Op>, Vec<HistoryError>), HistoryError> {
    let io = |source| HistoryError::Io { path: path.to_path_buf(), source };
    let reader = BufReader::new(File::open(path).map_err(io)?);
    let mut ops = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            // Invalid UTF-8 is a bad line, not an I/O failure.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let err = HistoryError::Line { path: path.to_path_buf(), line: n + 1, message: e.to_string() };
                if strict {
                    return Err(err);
                }
                bad.push(err);
                continue;
            }
            Err(e) => return Err(io(e)),
        };
        if line.trim().is_empty() {
            continue;
        }
        match Op::from_json_line(&line) {
            Ok(op) => ops.push(op),
            Err(e) => {
                let err = HistoryError::Line { path: path.to_path_buf(), line: n + 1, message: e.to_string() };
                if strict {
                    return Err(err);
                }
                bad.push(err);
            }
        }
    }
    Ok((ops, bad))
}

/// Appends ops to a history file as JSON Lines, buffered. Call [`HistoryWriter::flush`] to push them to the file
/// (dropping the writer also flushes, ignoring errors).
pub struct HistoryWriter {
    out: BufWriter<File>,
    path: PathBuf,
    written: u64,
}

impl HistoryWriter {
    /// Creates (or truncates) the file.
    pub fn create(path: impl AsRef<Path>) -> Result<HistoryWriter, HistoryError> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).map_err(|source| HistoryError::Io { path: path.clone(), source })?;
        Ok(HistoryWriter { out: BufWriter::new(file), path, written: 0 })
    }

    /// Opens the file for appending, creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> Result<HistoryWriter, HistoryError> {
        let path = path.as_ref().to_path_buf();
        let file =
            OpenOptions::new().create(true).append(true).open(&path).map_err(|source| HistoryError::Io { path: path.clone(), source })?;
        Ok(HistoryWriter { out: BufWriter::new(file), path, written: 0 })
    }

    /// Writes one op as a line.
    pub fn write(&mut self, op: &Op) -> Result<(), HistoryError> {
        let line = op.to_json_line()?;
        self.out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|source| HistoryError::Io { path: self.path.clone(), source })?;
        self.written += 1;
        Ok(())
    }

    /// Flushes buffered lines to the file.
    pub fn flush(&mut self) -> Result<(), HistoryError> {
        self.out.flush().map_err(|source| HistoryError::Io { path: self.path.clone(), source })
    }

    /// Ops written through this writer.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes a whole history to a new file.
pub fn write_history(path: impl AsRef<Path>, ops: &[Op]) -> Result<(), HistoryError> {
    let mut w = HistoryWriter::create(path)?;
    for op in ops {
        w.write(op)?;
    }
    w.flush()
}

/// One logical operation: an invocation and its completion, either of which may be missing (never both).
#[derive(Clone, Copy, Debug)]
pub struct Operation<'a> {
    invoke: Option<&'a Op>,
    completion: Option<&'a Op>,
    /// The completion, else the invocation.
    result: &'a Op,
}

impl<'a> Operation<'a> {
    /// Builds an operation; `None` if both sides are missing.
    pub fn new(invoke: Option<&'a Op>, completion: Option<&'a Op>) -> Option<Operation<'a>> {
        let result = completion.or(invoke)?;
        Some(Operation { invoke, completion, result })
    }

    /// The `invoke` op, if there was one (nemesis ops and `crash` have none).
    pub fn invoke(&self) -> Option<&'a Op> {
        self.invoke
    }

    /// The completion, if there was one (`None`: never completed, counts as `info`).
    pub fn completion(&self) -> Option<&'a Op> {
        self.completion
    }

    /// The effective type: the completion's, or `info` if the invocation never completed.
    pub fn op_type(&self) -> OpType {
        match self.completion {
            Some(c) if c.op_type != OpType::Invoke => c.op_type,
            _ => OpType::Info,
        }
    }

    /// The process.
    pub fn process(&self) -> Process {
        self.result.process
    }

    /// The function.
    pub fn f(&self) -> &'a str {
        &self.result.f
    }

    /// The op carrying the result: the completion if present, else the invocation.
    pub fn result(&self) -> &'a Op {
        self.result
    }

    /// When it was invoked (`None` for a completion without invocation).
    pub fn invoke_time(&self) -> Option<u64> {
        self.invoke.map(|o| o.time)
    }

    /// When it completed (`None` if it never did).
    pub fn complete_time(&self) -> Option<u64> {
        self.completion.map(|o| o.time)
    }

    /// The history `index` of the result op (completion, else invocation).
    pub fn index(&self) -> u64 {
        self.result.index
    }

    /// The `node` of the completion, else of the invocation.
    pub fn node(&self) -> Option<&'a str> {
        self.completion.and_then(|c| c.node.as_deref()).or_else(|| self.invoke.and_then(|i| i.node.as_deref()))
    }

    /// The `error` of the completion.
    pub fn error(&self) -> Option<&'a str> {
        self.completion.and_then(|c| c.error.as_deref())
    }
}

/// Invocations paired with completions, as positions in the history slice.
#[derive(Clone, Debug, Default)]
pub struct Pairing {
    /// One entry per logical operation `(invoke position, completion position)`, ordered by when the operation ended:
    /// its completion, or the point where it was abandoned (a new invocation of its process, or the end of the
    /// history).
    pub pairs: Vec<(Option<usize>, Option<usize>)>,
    /// Problems found (first 32): ok/fail completions without invocation, invocations overtaken by another of the
    /// same process and `f`.
    pub notes: Vec<String>,
    /// Total number of problems.
    pub note_count: usize,
}

impl Pairing {
    /// The logical operations as views into `history` (which must be the slice given to [`pair_ops`]).
    pub fn operations<'a>(&self, history: &'a [Op]) -> Vec<Operation<'a>> {
        self.pairs
            .iter()
            .filter_map(|&(i, c)| {
                let invoke = i.and_then(|i| history.get(i));
                let completion = c.and_then(|c| history.get(c));
                Operation::new(invoke, completion)
            })
            .collect()
    }

    fn note(&mut self, msg: String) {
        self.note_count += 1;
        if self.notes.len() < 32 {
            self.notes.push(msg);
        }
    }
}

/// The `f` of the drain wrapper op, which may enclose other ops of its process.
pub const FINAL_DRAIN: &str = "final-drain";

/// Pairs invocations with completions per process and `f`. A completion matches the outstanding invocation of its
/// process with the same `f`; a completion with no such invocation stands alone (normal for nemesis ops and `crash`).
/// An invocation overtaken by another invocation of the same process and `f`, or still outstanding at the end,
/// becomes an operation without completion (type `info`).
///
/// A well-formed history has at most one outstanding op per process; keying on `f` as well lets a `final-drain`
/// wrapper (or an asynchronous helper op such as a `commit`) overlap the process's other ops without disturbing them.
pub fn pair_ops(history: &[Op]) -> Pairing {
    let mut pairing = Pairing::default();
    // Outstanding invocation position per (process, f).
    let mut outstanding: HashMap<(Process, &str), usize> = HashMap::new();
    // (end position, tiebreak, invoke, completion)
    let mut ended: Vec<(usize, usize, Option<usize>, Option<usize>)> = Vec::with_capacity(history.len() / 2 + 1);
    for (pos, op) in history.iter().enumerate() {
        let key = (op.process, op.f.as_str());
        if op.op_type == OpType::Invoke {
            if let Some(prev) = outstanding.insert(key, pos) {
                ended.push((pos, prev, Some(prev), None));
                pairing.note(format!(
                    "op {} (process {}, {}) invoked while op {} was outstanding; the latter counts as info",
                    op.index, op.process, op.f, history[prev].index
                ));
            }
            continue;
        }
        match outstanding.remove(&key) {
            Some(inv) => ended.push((pos, inv, Some(inv), Some(pos))),
            None => {
                if op.op_type != OpType::Info && op.process != Process::Nemesis {
                    pairing.note(format!(
                        "op {} (process {}, {} {}) completes nothing that was invoked",
                        op.index, op.process, op.op_type, op.f
                    ));
                }
                ended.push((pos, pos, None, Some(pos)));
            }
        }
    }
    let end = history.len();
    ended.extend(outstanding.into_values().map(|inv| (end, inv, Some(inv), None)));
    ended.sort_unstable_by_key(|&(e, t, _, _)| (e, t));
    pairing.pairs = ended.into_iter().map(|(_, _, i, c)| (i, c)).collect();
    pairing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_round_trip_byte_for_byte() {
        let lines = [
            r#"{"index":0,"time":1203344,"process":0,"type":"invoke","f":"send","value":[["send",2,1047]]}"#,
            r#"{"index":3,"time":10455007,"process":4,"type":"ok","f":"poll","value":[["poll",[[2,[[87,1046],[88,1047]]]]]],"extra":{"next":[[2,89]],"max":[[2,89]]}}"#,
            r#"{"index":4,"time":15000000000,"process":"nemesis","type":"info","f":"start-partition","value":{"spec":"leader","leader":"n1","grudge":{"n1":["n2","n3"],"n2":["n1"],"n3":["n1"]}}}"#,
            r#"{"index":5,"time":16000441000,"process":1,"type":"info","f":"send","value":[["send",3,2001]],"error":"timeout after 5s"}"#,
        ];
        for line in lines {
            let op = Op::from_json_line(line).unwrap();
            assert_eq!(op.to_json_line().unwrap(), line);
        }
    }

    #[test]
    fn mops_parse_and_print() {
        let op =
            Op::from_json_line(r#"{"index":2,"time":9,"process":0,"type":"ok","f":"send","value":[["send",2,[88,1047]]],"node":"n1"}"#)
                .unwrap();
        assert_eq!(op.mops().unwrap(), vec![Mop::Send { key: 2, value: 1047, offset: Some(88) }]);
        let poll = Mop::Poll { reads: Some(vec![(2, vec![(87, 1046), (88, 1047)])]) };
        assert_eq!(Mop::from_json(&poll.to_json()).unwrap(), poll);
        assert!(Mop::from_json(&serde_json::json!(["send", 1])).is_err());
        assert!(Mop::from_json(&serde_json::json!(["send", 5_000_000_000u64, 1])).is_err());
    }

    #[test]
    fn pairing_handles_wrappers_and_abandoned_invokes() {
        let w = Process::Worker;
        let h = vec![
            Op::new(0, 0, w(1), OpType::Invoke, "final-drain", Json::Null),
            Op::new(1, 1, w(1), OpType::Invoke, "poll", serde_json::json!([["poll"]])),
            Op::new(2, 2, w(1), OpType::Ok, "poll", serde_json::json!([["poll", []]])),
            Op::new(3, 3, w(2), OpType::Invoke, "send", serde_json::json!([["send", 1, 5]])),
            Op::new(4, 4, w(2), OpType::Invoke, "send", serde_json::json!([["send", 1, 6]])),
            Op::new(5, 5, w(1), OpType::Ok, "final-drain", Json::Null),
            Op::new(6, 6, Process::Nemesis, OpType::Info, "kill", Json::Null),
        ];
        let p = pair_ops(&h);
        assert_eq!(p.pairs, vec![(Some(1), Some(2)), (Some(3), None), (Some(0), Some(5)), (None, Some(6)), (Some(4), None)]);
        assert_eq!(p.note_count, 1);
        let ops = p.operations(&h);
        assert_eq!(ops[1].op_type(), OpType::Info);
        assert_eq!(ops[2].f(), "final-drain");
    }
}
