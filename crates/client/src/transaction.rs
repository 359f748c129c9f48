//! The transaction producer (RocketMQ's `TransactionMQProducer`): a half message, the local transaction,
//! then END_TRANSACTION; and the answers to the broker's CHECK_TRANSACTION_STATE check-backs.
//!
//! [`TransactionProducer::send_in_transaction`] sends the message as a *half message* (properties
//! `TRAN_MSG` = `true` and `PGROUP` = the producer group, sys flag PREPARED), which the broker stores out of
//! consumers' sight. Only when that send succeeded does it run the listener's
//! [`TransactionListener::execute_local`], then it tells the broker the outcome with a oneway
//! END_TRANSACTION (37) to the address that took the half message: commit (8) makes the message visible in
//! its topic, rollback (12) discards it, unknown (0) leaves it to the check-back.
//!
//! Check-back: a broker holding an undecided half message sends CHECK_TRANSACTION_STATE (39) on a connection
//! of the producer group (known from heartbeats). The client instance (`instance.rs`) parses it with
//! [`parse_check_request`], finds the producer by the message's `PGROUP` and queues it on that producer's
//! bounded check queue ([`TransactionProducerOptions::check_requests_max`]); one worker per producer runs
//! [`TransactionListener::check_local`] on a blocking thread, one check at a time, and answers with a
//! oneway END_TRANSACTION (`fromTransactionCheck` = true) to the address the check came from.
//!
//! Not here: the send path and retries (`producer.rs`), connections and heartbeats (`instance.rs`), what the
//! broker does with 37 (crates/broker).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use raftmq_remoting::header::{transaction_type, CheckTransactionStateRequestHeader, EndTransactionRequestHeader};
use raftmq_remoting::message::{decode_offset_msg_id, decode_stored_message, property};
use raftmq_remoting::{RemotingCommand, RequestCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::instance::ClientInstance;
use crate::message::{Message, MessageExt, SendResult, SendStatus};
use crate::producer::{Producer, ProducerOptions};

/// Default [`TransactionProducerOptions::check_requests_max`]: Java's `checkRequestHoldMax`.
pub const CHECK_REQUESTS_MAX_DEFAULT: usize = 2000;

/// The properties that schedule a message. A transactional message cannot carry one: the broker would
/// stage the half message instead of holding it, and the transaction would silently vanish.
const SCHEDULE_PROPERTIES: [&str; 4] =
    [property::DELAY_TIME_LEVEL, property::TIMER_DELIVER_MS, property::TIMER_DELAY_SEC, property::TIMER_DELAY_MS];

/// The outcome of a local transaction (RocketMQ's `LocalTransactionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// Deliver the message.
    Commit,
    /// Discard the message.
    Rollback,
    /// Not known yet: the broker asks [`TransactionListener::check_local`] later.
    Unknown,
}

impl TxnState {
    /// The END_TRANSACTION `commitOrRollback` value: 8 commit, 12 rollback, 0 unknown.
    pub fn commit_or_rollback(self) -> i32 {
        match self {
            TxnState::Commit => transaction_type::COMMIT,
            TxnState::Rollback => transaction_type::ROLLBACK,
            TxnState::Unknown => transaction_type::NOT_TYPE,
        }
    }
}

impl fmt::Display for TxnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TxnState::Commit => "commit",
            TxnState::Rollback => "rollback",
            TxnState::Unknown => "unknown",
        })
    }
}

/// The application's side of a transaction (RocketMQ's `TransactionListener`).
///
/// # Correctness
/// - `execute_local` runs only after the broker stored the half message, on the task that called
///   [`TransactionProducer::send_in_transaction`] (as Java runs it on the sending thread): keep it short,
///   or move blocking work off the async runtime (`tokio::task::block_in_place` on a multi-threaded
///   runtime). A panic counts as [`TxnState::Unknown`].
/// - `check_local` must answer from durable state: it may be called in another process than the one that
///   ran `execute_local` (any producer of the group can be asked), long after it, more than once, and for a
///   message whose END_TRANSACTION was lost. It runs on a blocking thread, one check at a time per producer.
///   A panic counts as [`TxnState::Unknown`].
pub trait TransactionListener: Send + Sync + 'static {
    /// What [`TransactionProducer::send_in_transaction`] passes through to `execute_local` (Java's `arg`).
    type Arg: ?Sized;

    /// Runs the local transaction for `msg` (its `UNIQ_KEY` and `__transactionId__` properties are set).
    fn execute_local(&self, msg: &Message, arg: &Self::Arg) -> TxnState;

    /// Tells the broker what became of the local transaction of `msg`, a half message the broker still
    /// holds (topic and queue are the real ones; `msg_id` is the transaction id).
    fn check_local(&self, msg: &MessageExt) -> TxnState;
}

/// Settings of a [`TransactionProducer`].
#[derive(Debug, Clone)]
pub struct TransactionProducerOptions {
    /// The producer's settings (group, send timeout, retries …). Half messages are never auto-batched.
    pub producer: ProducerOptions,
    /// Check-backs queued for `check_local` before further ones are logged and dropped (2000). A dropped
    /// check is harmless: the broker asks again at its next check interval.
    pub check_requests_max: usize,
}

impl TransactionProducerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> TransactionProducerOptions {
        TransactionProducerOptions { producer: ProducerOptions::new(group), check_requests_max: CHECK_REQUESTS_MAX_DEFAULT }
    }
}

/// What [`TransactionProducer::send_in_transaction`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSendResult {
    /// The half message's send result: `msg_id` is the client id (UNIQ_KEY), `offset_msg_id` the half
    /// record's, `queue_offset` its offset in the broker's half queue, `queue` the real topic's queue.
    pub send: SendResult,
    /// The transaction id (the broker's `transactionId`, which is the UNIQ_KEY).
    pub transaction_id: String,
    /// What the local transaction decided (`Rollback` without running it when the broker stored the half
    /// message with a flush or replica status other than SEND_OK, as Java does).
    pub local_state: TxnState,
    /// Whether END_TRANSACTION was handed to the connection. When false the broker resolves the
    /// transaction by checking back.
    pub end_sent: bool,
}

impl fmt::Display for TransactionSendResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} queue={} halfOffset={} transactionId={} local={}",
            self.send.status,
            self.send.queue.broker_name,
            self.send.queue.queue_id,
            self.send.queue_offset,
            self.transaction_id,
            self.local_state
        )
    }
}

/// Counters of one transaction producer's check-backs.
#[derive(Debug, Default)]
pub(crate) struct CheckStats {
    received: AtomicU64,
    dropped: AtomicU64,
    answered: AtomicU64,
}

/// A snapshot of a transaction producer's check-back counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckCounts {
    /// CHECK_TRANSACTION_STATE requests for this producer's group that parsed.
    pub received: u64,
    /// Of those, dropped because the check queue was full (or the producer shut down).
    pub dropped: u64,
    /// Answers (END_TRANSACTION from a check) handed to a connection.
    pub answered: u64,
}

/// A parsed CHECK_TRANSACTION_STATE, waiting for its producer's check worker.
#[derive(Debug, Clone)]
pub(crate) struct CheckRequest {
    /// The broker address the check came from; the answer goes there.
    pub(crate) addr: String,
    pub(crate) header: CheckTransactionStateRequestHeader,
    /// The message's `PGROUP`.
    pub(crate) group: String,
    /// The message's `UNIQ_KEY`, if any.
    pub(crate) uniq_key: Option<String>,
    /// The stored-message encoding of the half message.
    pub(crate) body: Bytes,
}

/// Parses a CHECK_TRANSACTION_STATE request received from `from`: the header's required offsets and a body
/// holding one stored message with a `PGROUP` property.
///
/// # Errors
/// [`ClientError::Protocol`] naming what is missing or malformed. Never panics, whatever the input.
pub(crate) fn parse_check_request(from: &str, cmd: &RemotingCommand) -> Result<CheckRequest> {
    let header: CheckTransactionStateRequestHeader =
        cmd.decode_header().map_err(|e| ClientError::Protocol(format!("CHECK_TRANSACTION_STATE header: {e}")))?;
    let m = decode_stored_message(&cmd.body).map_err(|e| ClientError::Protocol(format!("CHECK_TRANSACTION_STATE body: {e}")))?;
    let group = m
        .property(property::PRODUCER_GROUP)
        .filter(|g| !g.is_empty())
        .ok_or_else(|| ClientError::Protocol("CHECK_TRANSACTION_STATE body: the message has no PGROUP property".into()))?;
    let uniq_key = m.uniq_key().filter(|k| !k.is_empty()).map(String::from);
    Ok(CheckRequest { addr: from.to_string(), header, group: group.to_string(), uniq_key, body: cmd.body.clone() })
}

/// Where the client instance hands a producer group's check-backs: a bounded queue to its worker.
#[derive(Clone)]
pub(crate) struct CheckInbox {
    tx: mpsc::Sender<CheckRequest>,
    stats: Arc<CheckStats>,
}

impl CheckInbox {
    /// Queues `req`, or logs and counts it as dropped when the queue is full. Never blocks.
    pub(crate) fn submit(&self, req: CheckRequest) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(req) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            let (why, req) = match e {
                mpsc::error::TrySendError::Full(r) => ("check queue full (check_requests_max)", r),
                mpsc::error::TrySendError::Closed(r) => ("producer shut down", r),
            };
            warn!(
                group = %req.group,
                broker = %req.addr,
                commit_log_offset = req.header.commit_log_offset,
                dropped_total = self.stats.dropped.load(Ordering::Relaxed),
                "transaction check dropped: {why}; the broker will ask again"
            );
        }
    }
}

/// The END_TRANSACTION header after a half send: offsets from the send result (the commitlog offset decoded
/// from the half record's offsetMsgId), `msgId` = the UNIQ_KEY, `fromTransactionCheck` = false.
///
/// # Errors
/// [`ClientError::Protocol`] when the broker's offsetMsgId does not decode.
pub(crate) fn end_header_after_send(
    group: &str,
    send: &SendResult,
    transaction_id: &str,
    state: TxnState,
) -> Result<EndTransactionRequestHeader> {
    let id = decode_offset_msg_id(&send.offset_msg_id)
        .map_err(|e| ClientError::Protocol(format!("half message send result: offsetMsgId {:?}: {e}", send.offset_msg_id)))?;
    Ok(EndTransactionRequestHeader {
        topic: Some(send.queue.topic.clone()),
        producer_group: group.to_string(),
        tran_state_table_offset: send.queue_offset,
        commit_log_offset: id.commit_log_offset,
        commit_or_rollback: state.commit_or_rollback(),
        from_transaction_check: false,
        msg_id: send.msg_id.clone(),
        transaction_id: Some(transaction_id.to_string()),
    })
}

/// The END_TRANSACTION header answering a check: both offsets copied from the check, `msgId` and
/// `transactionId` from its header (falling back to the message's UNIQ_KEY, then its offsetMsgId).
pub(crate) fn end_header_for_check(req: &CheckRequest, topic: Option<&str>, state: TxnState) -> EndTransactionRequestHeader {
    let h = &req.header;
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let msg_id = nonempty(&h.msg_id)
        .or_else(|| req.uniq_key.clone())
        .or_else(|| nonempty(&h.offset_msg_id))
        .or_else(|| nonempty(&h.transaction_id))
        .unwrap_or_default();
    EndTransactionRequestHeader {
        topic: topic.map(String::from),
        producer_group: req.group.clone(),
        tran_state_table_offset: h.tran_state_table_offset,
        commit_log_offset: h.commit_log_offset,
        commit_or_rollback: state.commit_or_rollback(),
        from_transaction_check: true,
        msg_id,
        transaction_id: nonempty(&h.transaction_id).or_else(|| req.uniq_key.clone()),
    }
}

/// A oneway END_TRANSACTION request; `remark` says why the state is unknown when the listener failed.
pub(crate) fn end_transaction_request(h: &EndTransactionRequestHeader, remark: Option<String>) -> RemotingCommand {
    let mut cmd = RemotingCommand::request(RequestCode::END_TRANSACTION, 0).with_header(h).mark_oneway();
    cmd.remark = remark;
    cmd
}

/// Refuses messages a transaction cannot carry.
///
/// # Errors
/// [`ClientError::InvalidMessage`] naming the scheduling property.
pub(crate) fn check_transactional(msg: &Message) -> Result<()> {
    if let Some(p) = SCHEDULE_PROPERTIES.iter().find(|p| msg.property(p).is_some()) {
        return Err(ClientError::InvalidMessage(format!(
            "a transactional message cannot be scheduled, but this one carries {p}; remove the delay level, delay or delivery time"
        )));
    }
    Ok(())
}

/// The text of a panic payload.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into())
}

/// A started transaction producer. Cheap to clone; clones share everything.
pub struct TransactionProducer<L: TransactionListener> {
    inner: Arc<TxnInner<L>>,
}

impl<L: TransactionListener> Clone for TransactionProducer<L> {
    fn clone(&self) -> Self {
        TransactionProducer { inner: Arc::clone(&self.inner) }
    }
}

struct TxnInner<L> {
    producer: Producer,
    listener: Arc<L>,
    stats: Arc<CheckStats>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<L: TransactionListener> TransactionProducer<L> {
    /// Starts a producer of `opts.producer.group` whose transactions `listener` runs and checks. Its group
    /// is carried in the instance's heartbeats to every broker of its routes, so that any of them (a new
    /// Raft leader too) can check back.
    ///
    /// # Errors
    /// As [`Producer::start`]; [`ClientError::State`] when `check_requests_max` is 0.
    pub async fn start(config: ClientConfig, opts: TransactionProducerOptions, listener: L) -> Result<TransactionProducer<L>> {
        if opts.check_requests_max == 0 {
            return Err(ClientError::State("check_requests_max must be at least 1".into()));
        }
        let producer = Producer::start(config, opts.producer).await?;
        let group = producer.options().group.clone();
        let listener = Arc::new(listener);
        let stats = Arc::new(CheckStats::default());
        let (tx, rx) = mpsc::channel(opts.check_requests_max);
        let max_message_size = producer.options().max_message_size;
        let worker = tokio::spawn(check_worker(rx, producer.client().clone(), Arc::clone(&listener), Arc::clone(&stats), max_message_size));
        producer.client().register_transaction_checks(&group, CheckInbox { tx, stats: Arc::clone(&stats) });
        producer.client().heartbeat_unknown_brokers();
        Ok(TransactionProducer { inner: Arc::new(TxnInner { producer, listener, stats, worker: Mutex::new(Some(worker)) }) })
    }

    /// Sends `msg` as a half message; when the broker stored it, runs the local transaction with `arg` and
    /// ends the transaction with its outcome (oneway END_TRANSACTION to the broker that took the half).
    ///
    /// # Errors
    /// [`ClientError::InvalidMessage`] for a message with a delay level, delay or delivery time (or any
    /// check [`Producer::send`] makes); any error of the half send (the local transaction did not run);
    /// [`ClientError::Protocol`] when the broker's answer has no decodable offsetMsgId (the local transaction
    /// did not run; the broker will check back and `check_local` must say rollback).
    pub async fn send_in_transaction(&self, msg: Message, arg: &L::Arg) -> Result<TransactionSendResult> {
        check_transactional(&msg)?;
        let group = self.inner.producer.options().group.clone();
        let mut msg = msg.with_property(property::TRANSACTION_PREPARED, "true").with_property(property::PRODUCER_GROUP, group.clone());
        let sent = self.inner.producer.send_half(&mut msg).await?;
        let client = self.inner.producer.client();
        // The broker checks back only on a connection it knows from a heartbeat of this group.
        client.heartbeat_unknown_brokers();
        let send = sent.result;
        let transaction_id = sent.transaction_id.filter(|t| !t.is_empty()).unwrap_or_else(|| send.msg_id.clone());
        // Decoded before the local transaction runs: without the half record's offset it could not be ended.
        end_header_after_send(&group, &send, &transaction_id, TxnState::Unknown)?;
        let (local_state, remark) = if send.status != SendStatus::SendOk {
            debug!(%group, status = %send.status, "half message not stored cleanly; rolling back without running the local transaction");
            (TxnState::Rollback, None)
        } else {
            let msg = msg.with_property(property::TRANSACTION_ID, transaction_id.clone());
            match catch_unwind(AssertUnwindSafe(|| self.inner.listener.execute_local(&msg, arg))) {
                Ok(state) => (state, None),
                Err(p) => {
                    let text = panic_text(p.as_ref());
                    warn!(%group, %transaction_id, panic = %text, "execute_local panicked; the transaction stays unknown until checked");
                    (TxnState::Unknown, Some(format!("executeLocalTransaction panicked: {text}")))
                }
            }
        };
        let header = end_header_after_send(&group, &send, &transaction_id, local_state)?;
        let end_sent = match client.invoke_oneway(&sent.addr, end_transaction_request(&header, remark)).await {
            Ok(()) => true,
            Err(e) => {
                warn!(%group, %transaction_id, broker = %sent.addr, error = %e, "END_TRANSACTION not sent; the broker will check back");
                false
            }
        };
        Ok(TransactionSendResult { send, transaction_id, local_state, end_sent })
    }

    /// The underlying producer, for ordinary sends of the same group.
    pub fn producer(&self) -> &Producer {
        &self.inner.producer
    }

    /// The listener.
    pub fn listener(&self) -> &L {
        &self.inner.listener
    }

    /// The check-back counters so far.
    pub fn check_counts(&self) -> CheckCounts {
        let s = &self.inner.stats;
        CheckCounts {
            received: s.received.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            answered: s.answered.load(Ordering::Relaxed),
        }
    }

    /// Stops answering check-backs (queued ones are dropped; the broker asks again, possibly another
    /// producer of the group) and shuts the producer down.
    pub async fn shutdown(&self) {
        let p = &self.inner.producer;
        p.client().unregister_transaction_checks(&p.options().group);
        if let Some(w) = self.inner.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.abort();
        }
        p.shutdown().await;
    }
}

/// Runs the check-backs of one producer, one at a time, until the producer shuts down.
async fn check_worker<L: TransactionListener>(
    mut rx: mpsc::Receiver<CheckRequest>,
    client: ClientInstance,
    listener: Arc<L>,
    stats: Arc<CheckStats>,
    body_bytes_max: usize,
) {
    while let Some(req) = rx.recv().await {
        let broker_name = client.broker_name_of(&req.addr).unwrap_or_default();
        let msg = match decode_stored_message(&req.body)
            .map_err(ClientError::from)
            .and_then(|m| MessageExt::from_decoded(&m, &req.body, &broker_name, body_bytes_max))
        {
            Ok(m) => m,
            Err(e) => {
                warn!(group = %req.group, broker = %req.addr, error = %e, "transaction check ignored: its message does not decode");
                continue;
            }
        };
        let topic = msg.topic.clone();
        let l = Arc::clone(&listener);
        let (state, remark) = match tokio::task::spawn_blocking(move || l.check_local(&msg)).await {
            Ok(state) => (state, None),
            Err(e) => {
                let text = if e.is_panic() { panic_text(e.into_panic().as_ref()) } else { e.to_string() };
                warn!(group = %req.group, panic = %text, "check_local failed; answering unknown");
                (TxnState::Unknown, Some(format!("checkLocalTransaction failed: {text}")))
            }
        };
        let header = end_header_for_check(&req, Some(&topic), state);
        match client.invoke_oneway(&req.addr, end_transaction_request(&header, remark)).await {
            Ok(()) => {
                stats.answered.fetch_add(1, Ordering::Relaxed);
                info!(
                    group = %req.group,
                    broker = %req.addr,
                    transaction_id = header.transaction_id.as_deref().unwrap_or(""),
                    %state,
                    "answered a transaction check"
                );
            }
            Err(e) => warn!(group = %req.group, broker = %req.addr, error = %e, "transaction check answer not sent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use raftmq_remoting::header::CommandHeader;
    use raftmq_remoting::message::{encode_offset_msg_id, encode_stored_message, MessageToStore};

    use crate::message::MessageQueue;

    use super::*;

    fn send_result(offset_msg_id: &str) -> SendResult {
        SendResult {
            status: SendStatus::SendOk,
            msg_id: "UNIQ1".into(),
            offset_msg_id: offset_msg_id.into(),
            queue: MessageQueue { topic: "Orders".into(), broker_name: "broker-a".into(), queue_id: 2 },
            queue_offset: 17,
        }
    }

    #[test]
    fn the_end_header_after_a_send_carries_the_half_records_offsets() {
        let id = encode_offset_msg_id("10.0.0.7:10911".parse().unwrap(), 123_456_789);
        for (state, code) in [(TxnState::Commit, 8), (TxnState::Rollback, 12), (TxnState::Unknown, 0)] {
            let h = end_header_after_send("pg", &send_result(&id), "UNIQ1", state).expect("header");
            assert_eq!(h.producer_group, "pg");
            assert_eq!(h.tran_state_table_offset, 17, "the half queue offset");
            assert_eq!(h.commit_log_offset, 123_456_789, "decoded from the offsetMsgId");
            assert_eq!(h.commit_or_rollback, code);
            assert!(!h.from_transaction_check);
            assert_eq!((h.msg_id.as_str(), h.transaction_id.as_deref()), ("UNIQ1", Some("UNIQ1")));
            let cmd = end_transaction_request(&h, None);
            assert_eq!(cmd.code, RequestCode::END_TRANSACTION.0);
            assert!(cmd.is_oneway());
            let f = &cmd.ext_fields;
            assert_eq!(f["commitOrRollback"], code.to_string());
            assert_eq!(f["tranStateTableOffset"], "17");
            assert_eq!(f["commitLogOffset"], "123456789");
            assert_eq!(f["fromTransactionCheck"], "false");
            assert_eq!(f["producerGroup"], "pg");
            assert_eq!(f["msgId"], "UNIQ1");
            assert_eq!(EndTransactionRequestHeader::from_ext_fields(f).expect("round trip"), h);
        }
        let e = end_header_after_send("pg", &send_result("not-an-id"), "UNIQ1", TxnState::Commit).expect_err("bad id");
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
    }

    fn stored(properties: &str) -> Bytes {
        let mut out = Vec::new();
        let host: SocketAddrV4 = "127.0.0.1:10911".parse().unwrap();
        encode_stored_message(
            &MessageToStore {
                topic: "Orders",
                queue_id: 1,
                flag: 0,
                queue_offset: 5,
                physical_offset: 4096,
                sys_flag: 0,
                born_timestamp: 1,
                born_host: host,
                store_timestamp: 2,
                store_host: host,
                reconsume_times: 0,
                prepared_transaction_offset: 0,
                body: b"payload",
                properties,
            },
            &mut out,
        )
        .unwrap();
        Bytes::from(out)
    }

    fn check_cmd(fields: &[(&str, &str)], body: Bytes) -> RemotingCommand {
        let mut cmd = RemotingCommand::request(RequestCode::CHECK_TRANSACTION_STATE, 9).with_body(body).mark_oneway();
        for (k, v) in fields {
            cmd.ext_fields.insert(k.to_string(), v.to_string());
        }
        cmd
    }

    const PROPS: &str = "PGROUP\u{1}pg\u{2}UNIQ_KEY\u{1}UNIQ9\u{2}TRAN_MSG\u{1}true\u{2}";

    #[test]
    fn a_check_is_parsed_and_answered_with_its_own_offsets() {
        let cmd = check_cmd(
            &[("tranStateTableOffset", "33"), ("commitLogOffset", "8192"), ("msgId", "UNIQ9"), ("transactionId", "UNIQ9")],
            stored(PROPS),
        );
        let req = parse_check_request("10.0.0.1:10911", &cmd).expect("parses");
        assert_eq!((req.group.as_str(), req.addr.as_str(), req.uniq_key.as_deref()), ("pg", "10.0.0.1:10911", Some("UNIQ9")));
        let h = end_header_for_check(&req, Some("Orders"), TxnState::Rollback);
        assert_eq!((h.tran_state_table_offset, h.commit_log_offset), (33, 8192), "copied from the check, not the body (5, 4096)");
        assert!(h.from_transaction_check);
        assert_eq!((h.commit_or_rollback, h.msg_id.as_str(), h.transaction_id.as_deref()), (12, "UNIQ9", Some("UNIQ9")));
        assert_eq!(h.producer_group, "pg");
        // Without msgId/transactionId in the header the message's UNIQ_KEY stands in.
        let bare = check_cmd(&[("tranStateTableOffset", "33"), ("commitLogOffset", "8192")], stored(PROPS));
        let h = end_header_for_check(&parse_check_request("b:1", &bare).unwrap(), None, TxnState::Commit);
        assert_eq!((h.msg_id.as_str(), h.transaction_id.as_deref(), h.commit_or_rollback), ("UNIQ9", Some("UNIQ9"), 8));
    }

    #[test]
    fn malformed_checks_are_errors_not_panics() {
        let offsets = [("tranStateTableOffset", "33"), ("commitLogOffset", "8192")];
        let cases: Vec<(&str, RemotingCommand)> = vec![
            ("no tranStateTableOffset", check_cmd(&[("commitLogOffset", "8192")], stored(PROPS))),
            ("no commitLogOffset", check_cmd(&[("tranStateTableOffset", "33")], stored(PROPS))),
            ("offset not a number", check_cmd(&[("tranStateTableOffset", "x"), ("commitLogOffset", "8192")], stored(PROPS))),
            ("empty body", check_cmd(&offsets, Bytes::new())),
            ("garbage body", check_cmd(&offsets, Bytes::from_static(b"\x00\x00\x00\x10garbage garbage"))),
            ("truncated body", check_cmd(&offsets, stored(PROPS).slice(..40))),
            ("no PGROUP", check_cmd(&offsets, stored("UNIQ_KEY\u{1}UNIQ9\u{2}"))),
            ("empty PGROUP", check_cmd(&offsets, stored("PGROUP\u{1}\u{2}"))),
        ];
        for (what, cmd) in cases {
            match parse_check_request("b:1", &cmd) {
                Err(ClientError::Protocol(_)) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        // Arbitrary bytes never panic.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..300 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = parse_check_request("b:1", &check_cmd(&offsets, Bytes::from(body)));
        }
    }

    #[test]
    fn scheduled_messages_cannot_be_transactional() {
        assert!(check_transactional(&Message::new("T", "x").with_tags("a")).is_ok());
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
        let refused = [
            ("DELAY", Message::new("T", "x").with_delay_level(3)),
            ("TIMER_DELAY_MS", Message::new("T", "x").with_delay(std::time::Duration::from_secs(5))),
            ("TIMER_DELIVER_MS", Message::new("T", "x").with_delivery_time(at)),
            ("TIMER_DELAY_SEC", Message::new("T", "x").with_property("TIMER_DELAY_SEC", "5")),
        ];
        for (prop, m) in refused {
            match check_transactional(&m) {
                Err(ClientError::InvalidMessage(s)) => assert!(s.contains(prop), "{s}"),
                other => panic!("{prop}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_full_check_queue_drops_and_counts() {
        let (tx, mut rx) = mpsc::channel(2);
        let stats = Arc::new(CheckStats::default());
        let inbox = CheckInbox { tx, stats: Arc::clone(&stats) };
        let cmd = check_cmd(&[("tranStateTableOffset", "1"), ("commitLogOffset", "2")], stored(PROPS));
        let req = parse_check_request("b:1", &cmd).unwrap();
        for _ in 0..5 {
            inbox.submit(req.clone());
        }
        assert_eq!((stats.received.load(Ordering::Relaxed), stats.dropped.load(Ordering::Relaxed)), (5, 3));
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
    }
}
