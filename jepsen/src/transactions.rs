//! The transactional part of the workload: half sends, END_TRANSACTION and answers to check-backs, spoken in
//! RocketMQ's raw protocol (the native client has no transactional producer yet).
//!
//! One [`TxnClient`] per run holds a connection to every broker node, each announced with HEART_BEAT as a
//! member of the producer group [`TXN_GROUP`], so the leader's CHECK_TRANSACTION_STATE (39) reaches it
//! whichever node leads; a heartbeat task remakes broken connections. Producers call [`transact`] for a share
//! of their operations: it picks a [`Plan`] for a fresh value, registers it (check-backs are answered from
//! this table, by any worker, so every answer for a value agrees with the producer's own END), sends the half
//! message, and then — after a short "local transaction" — commits, rolls back, or "crashes" (sends no END).
//! A responder task answers check-backs from the table (or not at all, plan `crash-silent`, so that the
//! broker parks the transaction).
//!
//! History (see `history.rs`): the half send is a `send` with `extra.txn` = the plan; every END is a
//! `txn-end` op, invoked before the request is written (the checker's "commit attempt"), completed `ok` only
//! on SUCCESS, `fail` only when the broker certainly changed nothing, `info` otherwise (oneway ENDs always);
//! every check-back a `txn-check` op. Error mapping for the half send follows the workload's: `fail` only when
//! nothing was written or the broker refused before proposing; SYSTEM_ERROR and lost answers are `info`. With
//! producer retries, an uncertain half send is retried on another node with the same `UNIQ_KEY`, which the
//! broker's de-duplication window must answer with the original (a half stored twice would be checked back
//! and committed twice: `txn-duplicate`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_net::client::ServerRequestCallback;
use raftmq_net::{NetError, RemotingClient};
use raftmq_remoting::body::{encode_json_body, HeartbeatData, ProducerData};
use raftmq_remoting::header::{
    transaction_type, CheckTransactionStateRequestHeader, EndTransactionRequestHeader, SendMessageRequestHeader, SendMessageResponseHeader,
};
use raftmq_remoting::message::{decode_offset_msg_id, encode_properties, property, sys_flag, StoredMessages};
use raftmq_remoting::{CommandHeader, RemotingCommand, RequestCode, ResponseCode};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::workload::{parse_value, Progress, Recorder, WorkloadConfig};

/// The producer group of every transactional send.
pub const TXN_GROUP: &str = "jepsen-txn";
/// `transactionTimeOut` the harness gives its brokers when transactions are on (ms): the first check-back.
pub const TXN_TIMEOUT_MS: u64 = 2_000;
/// `transactionCheckInterval` (ms).
pub const TXN_CHECK_INTERVAL_MS: u64 = 2_000;
/// `transactionCheckMax`: an unanswered transaction is parked about 6 s after its half message.
pub const TXN_CHECK_MAX: u32 = 2;
/// How long the consumers keep polling after the last half send, so that the check-backs of the last
/// transactions are answered within the run.
pub const TXN_TAIL: Duration = Duration::from_millis(TXN_TIMEOUT_MS + 2_000);
/// Check-backs waiting for the responder; more are dropped (the broker checks again).
const CHECKS_QUEUED_MAX: usize = 1_024;
/// Timeout of one request (half send attempt, END, heartbeat).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The broker TOML the harness adds when transactions are on (keys the run's `--broker-extra` sets win).
pub fn broker_settings(extra: &str) -> String {
    let mut out = String::new();
    for (key, value) in [
        ("transactionTimeOut", TXN_TIMEOUT_MS),
        ("transactionCheckInterval", TXN_CHECK_INTERVAL_MS),
        ("transactionCheckMax", TXN_CHECK_MAX as u64),
    ] {
        if !extra.contains(key) {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out
}

/// What the producer does with a transactional value. Every END and every check-back answer for the value
/// follows it, so a value is never both committed and rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    /// END commit after the local transaction; check-backs answered commit.
    Commit,
    /// END rollback; check-backs answered rollback.
    Rollback,
    /// No END (the producer "crashed"); check-backs answered commit.
    CrashCommit,
    /// No END; check-backs answered rollback.
    CrashRollback,
    /// No END and no answer: the broker parks it after `transactionCheckMax` check-backs.
    CrashSilent,
}

impl Plan {
    /// The name recorded in the send's `extra.txn`.
    pub fn name(self) -> &'static str {
        match self {
            Plan::Commit => "commit",
            Plan::Rollback => "rollback",
            Plan::CrashCommit => "crash-commit",
            Plan::CrashRollback => "crash-rollback",
            Plan::CrashSilent => "crash-silent",
        }
    }

    /// The answer to a check-back: 8 (commit), 12 (rollback) or none.
    fn answer(self) -> Option<i32> {
        match self {
            Plan::Commit | Plan::CrashCommit => Some(transaction_type::COMMIT),
            Plan::Rollback | Plan::CrashRollback => Some(transaction_type::ROLLBACK),
            Plan::CrashSilent => None,
        }
    }

    /// The generator's choice: commit 40 %, rollback 20 %, crash-commit 15 %, crash-rollback 10 %,
    /// crash-silent 15 %.
    pub fn pick(rng: &mut ChaCha8Rng) -> Plan {
        match rng.gen_range(0..100) {
            0..=39 => Plan::Commit,
            40..=59 => Plan::Rollback,
            60..=74 => Plan::CrashCommit,
            75..=84 => Plan::CrashRollback,
            _ => Plan::CrashSilent,
        }
    }
}

fn decision_name(how: i32) -> &'static str {
    if how == transaction_type::COMMIT {
        "commit"
    } else {
        "rollback"
    }
}

/// What a half send was answered with.
#[derive(Debug, Clone)]
struct HalfAck {
    node: usize,
    queue_offset: i64,
    commit_log_offset: i64,
}

/// Why a request did not succeed, and whether it may have taken effect.
#[derive(Debug)]
struct Failure {
    /// True when the broker certainly did nothing (nothing was written, or it refused before proposing).
    definite: bool,
    error: String,
}

/// A value registered with its plan and where it was sent.
#[derive(Debug, Clone)]
struct Registered {
    plan: Plan,
    key: u32,
}

/// The run's transactional producer: connections to every node, the plan table and the check-back responder.
pub struct TxnClient {
    brokers: Vec<String>,
    topic: String,
    conns: Mutex<Vec<Option<RemotingClient>>>,
    leader: AtomicUsize,
    /// Value → plan. Bounded by the run: one entry per transactional operation.
    plans: Mutex<HashMap<u64, Registered>>,
    checks: mpsc::Sender<(usize, RemotingCommand)>,
    dropped_checks: Arc<AtomicUsize>,
    stopped: AtomicBool,
    client_id: String,
    uniq_prefix: String,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl TxnClient {
    /// Starts the client: the heartbeat task and the check-back responder (worker `w`, process ids `w + n ×
    /// workers`).
    pub fn start(cfg: &WorkloadConfig, rec: Recorder, progress: Arc<Progress>, w: usize, workers: usize) -> Arc<TxnClient> {
        let (tx, rx) = mpsc::channel(CHECKS_QUEUED_MAX);
        let salt = (cfg.seed as u32) ^ std::process::id();
        let c = Arc::new(TxnClient {
            brokers: cfg.brokers.clone(),
            topic: cfg.topic.clone(),
            conns: Mutex::new(vec![None; cfg.brokers.len()]),
            leader: AtomicUsize::new(0),
            plans: Mutex::default(),
            checks: tx,
            dropped_checks: Arc::default(),
            stopped: AtomicBool::new(false),
            client_id: format!("{}@jepsen-txn-{}", crate::cluster::HOST_IP, std::process::id()),
            uniq_prefix: format!("0A6300FE{salt:08X}"),
            tasks: Mutex::default(),
        });
        let hb = tokio::spawn(heartbeat_loop(Arc::clone(&c)));
        let responder = tokio::spawn(responder(Arc::clone(&c), rx, rec, progress, w, workers));
        c.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend([hb, responder]);
        c
    }

    /// Stops answering check-backs and closes every connection (before the final drain, so no commit lands
    /// during it).
    pub async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        let tasks: Vec<_> = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            if let Some(c) = c.take() {
                c.close();
            }
        }
        let dropped = self.dropped_checks.load(Ordering::Relaxed);
        if dropped > 0 {
            eprintln!("transactions: {dropped} check-backs dropped (responder queue full)");
        }
    }

    /// The `UNIQ_KEY` (and transaction id) of value `v`: unique in the run, 32 hex characters.
    fn uniq_key(&self, v: u64) -> String {
        format!("{}{v:016X}", self.uniq_prefix)
    }

    fn cached(&self, i: usize) -> Option<RemotingClient> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).get(i).cloned().flatten().filter(|c| !c.is_closed())
    }

    fn drop_conn(&self, i: usize, c: &RemotingClient) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = conns.get_mut(i) {
            if slot.as_ref().is_some_and(|cur| cur.same_connection(c)) {
                *slot = None;
            }
        }
        drop(conns);
        c.close();
    }

    /// The connection to node `i`, made (and announced with a heartbeat) when missing. An error means
    /// nothing was written for the caller.
    async fn conn(&self, i: usize) -> Result<RemotingClient, String> {
        if let Some(c) = self.cached(i) {
            return Ok(c);
        }
        if self.stopped.load(Ordering::Acquire) {
            return Err("stopped".into());
        }
        let addr = self.brokers.get(i).ok_or("no such broker")?.clone();
        let tx = self.checks.clone();
        let d = Arc::clone(&self.dropped_checks);
        let on_request: ServerRequestCallback = Arc::new(move |cmd: RemotingCommand| {
            if cmd.code == RequestCode::CHECK_TRANSACTION_STATE.0 && tx.try_send((i, cmd)).is_err() {
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        let c = RemotingClient::connect(&addr, CONNECT_TIMEOUT, Some(on_request)).await.map_err(|e| format!("connect {addr}: {e}"))?;
        if let Err(e) = self.heartbeat(&c).await {
            c.close();
            return Err(format!("heartbeat {addr}: {e}"));
        }
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get(i).cloned().flatten().filter(|x| !x.is_closed()) {
            Some(existing) => {
                c.close();
                Ok(existing)
            }
            None => {
                if let Some(slot) = conns.get_mut(i) {
                    *slot = Some(c.clone());
                }
                Ok(c)
            }
        }
    }

    async fn heartbeat(&self, c: &RemotingClient) -> Result<(), String> {
        let hb = HeartbeatData {
            client_id: self.client_id.clone(),
            producer_data_set: vec![ProducerData { group_name: TXN_GROUP.into() }],
            ..Default::default()
        };
        let body = encode_json_body(&hb).map_err(|e| e.to_string())?;
        let r = c
            .invoke(RemotingCommand::request(RequestCode::HEART_BEAT, 0).with_body(body), REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if r.code != ResponseCode::SUCCESS.0 {
            return Err(format!("code {}: {}", r.code, r.remark.unwrap_or_default()));
        }
        Ok(())
    }

    /// The node a "not the leader; the leader is at X" remark names.
    fn hinted(&self, remark: &str) -> Option<usize> {
        let at = remark.split("the leader is at ").nth(1)?;
        let addr = at.split_whitespace().next()?.trim_end_matches([';', ',', '.']);
        self.brokers.iter().position(|b| b == addr)
    }

    fn half_request(&self, k: u32, v: u64, body: &str, producer: usize) -> Result<RemotingCommand, String> {
        let uniq = self.uniq_key(v);
        let producer = producer.to_string();
        let mut props = String::new();
        encode_properties(
            [
                (property::WAIT_STORE_MSG_OK, "true"),
                (property::TRANSACTION_PREPARED, "true"),
                (property::PRODUCER_GROUP, TXN_GROUP),
                (property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, uniq.as_str()),
                ("jepsen_producer", producer.as_str()),
            ],
            &mut props,
        )
        .map_err(|e| e.to_string())?;
        let h = SendMessageRequestHeader {
            producer_group: TXN_GROUP.into(),
            topic: self.topic.clone(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: k as i32,
            sys_flag: sys_flag::TRANSACTION_PREPARED_TYPE,
            born_timestamp: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            properties: Some(props),
            ..Default::default()
        };
        let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(body.as_bytes().to_vec());
        h.write_ext_fields_v2(&mut cmd.ext_fields);
        Ok(cmd)
    }

    /// Sends the half message of `v` to queue `k` within `budget`, following "not the leader" answers, and
    /// retrying an uncertain attempt (on another node, same `UNIQ_KEY`) up to `retries` times.
    async fn send_half(&self, k: u32, v: u64, body: &str, producer: usize, retries: u32, budget: Duration) -> Result<HalfAck, Failure> {
        let cmd = self.half_request(k, v, body, producer).map_err(|error| Failure { definite: true, error })?;
        let deadline = Instant::now() + budget;
        let n = self.brokers.len().max(1);
        let mut node = self.leader.load(Ordering::Relaxed) % n;
        let mut attempts_left = retries + 1;
        let mut definite = true;
        let mut last = String::from("no attempt within the send budget");
        let mut backoff = Duration::from_millis(25);
        while attempts_left > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let c = match self.conn(node).await {
                Ok(c) => c,
                Err(e) => {
                    // Nothing written: try the next node.
                    last = e;
                    node = (node + 1) % n;
                    tokio::time::sleep(backoff.min(remaining)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    continue;
                }
            };
            match c.invoke(cmd.clone(), remaining.min(REQUEST_TIMEOUT)).await {
                Ok(r) if r.code == ResponseCode::SUCCESS.0 => {
                    let h: SendMessageResponseHeader =
                        r.decode_header().map_err(|e| Failure { definite: false, error: format!("half send answer: {e}") })?;
                    let id =
                        decode_offset_msg_id(&h.msg_id).map_err(|e| Failure { definite: false, error: format!("half send msgId: {e}") })?;
                    self.leader.store(node, Ordering::Relaxed);
                    return Ok(HalfAck { node, queue_offset: h.queue_offset, commit_log_offset: id.commit_log_offset });
                }
                Ok(r) if r.code == ResponseCode::SERVICE_NOT_AVAILABLE.0 => {
                    // Not (or not yet) the leader, or "not stored": certainly nothing stored. Follow a hint.
                    let remark = r.remark.unwrap_or_default();
                    node = self.hinted(&remark).filter(|&h| h != node).unwrap_or((node + 1) % n);
                    last = format!("code 14: {remark}");
                    tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Ok(r) if r.code == ResponseCode::SYSTEM_ERROR.0 => {
                    // Maybe stored ("store outcome unknown").
                    definite = false;
                    attempts_left -= 1;
                    last = format!("code 1: {}", r.remark.unwrap_or_default());
                    node = (node + 1) % n;
                }
                Ok(r) => {
                    // Refused before proposing.
                    return Err(Failure { definite, error: format!("code {}: {}", r.code, r.remark.unwrap_or_default()) });
                }
                Err(e) => {
                    if matches!(e, NetError::Timeout(_)) {
                        self.drop_conn(node, &c);
                    }
                    definite = false;
                    attempts_left -= 1;
                    last = format!("{}: {e}", self.brokers[node]);
                    node = (node + 1) % n;
                }
            }
        }
        Err(Failure { definite, error: last })
    }

    /// Sends END_TRANSACTION for `v`. `node`: where to send it first (any node accepts it; followers forward);
    /// the others are tried only while nothing could be written. `Ok(true)`: SUCCESS; `Ok(false)`: oneway,
    /// written; `Err`: see [`Failure`].
    async fn end(&self, node: usize, h: &EndTransactionRequestHeader, oneway: bool) -> Result<bool, Failure> {
        let n = self.brokers.len().max(1);
        let mut last = String::new();
        for i in 0..n {
            let node = (node + i) % n;
            let c = match self.conn(node).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let cmd = RemotingCommand::request(RequestCode::END_TRANSACTION, 0).with_header(h);
            if oneway {
                return match c.invoke_oneway(cmd).await {
                    Ok(()) => Ok(false),
                    // The request was not queued on the connection.
                    Err(e) => Err(Failure { definite: true, error: format!("{}: {e}", self.brokers[node]) }),
                };
            }
            return match c.invoke(cmd, REQUEST_TIMEOUT).await {
                Ok(r) if r.code == ResponseCode::SUCCESS.0 => Ok(true),
                Ok(r) => {
                    let remark = r.remark.unwrap_or_default();
                    Err(Failure { definite: end_refusal_is_definite(r.code, &remark), error: format!("code {}: {remark}", r.code) })
                }
                Err(e) => {
                    if matches!(e, NetError::Timeout(_)) {
                        self.drop_conn(node, &c);
                    }
                    Err(Failure { definite: false, error: format!("{}: {e}", self.brokers[node]) })
                }
            };
        }
        Err(Failure { definite: true, error: last })
    }
}

/// Did a non-SUCCESS answer to END_TRANSACTION certainly change nothing? Only the broker's refusals before it
/// proposes anything (and "not stored"); everything else, "store outcome unknown" and a forward whose answer
/// was lost included, may have committed.
fn end_refusal_is_definite(code: i32, remark: &str) -> bool {
    if code == ResponseCode::SERVICE_NOT_AVAILABLE.0 {
        return true;
    }
    code == ResponseCode::SYSTEM_ERROR.0
        && [
            "Find prepared transaction message failed",
            "The producer group wrong",
            "The transaction state table offset wrong",
            "was ended concurrently",
            "bad END_TRANSACTION header",
        ]
        .iter()
        .any(|m| remark.contains(m))
}

/// Keeps a heartbeated connection to every node, so whichever node leads can check transactions back.
async fn heartbeat_loop(c: Arc<TxnClient>) {
    while !c.stopped.load(Ordering::Acquire) {
        for i in 0..c.brokers.len() {
            match c.cached(i) {
                Some(conn) => {
                    if c.heartbeat(&conn).await.is_err() {
                        c.drop_conn(i, &conn);
                    }
                }
                None => {
                    let _ = c.conn(i).await;
                }
            }
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

/// Records an END's invocation, sends it and records its completion; returns the op type.
#[allow(clippy::too_many_arguments)]
async fn recorded_end(
    c: &TxnClient,
    rec: &Recorder,
    process: u64,
    node: usize,
    k: u32,
    v: u64,
    h: &EndTransactionRequestHeader,
    oneway: bool,
) -> &'static str {
    let value = json!({"key": k, "value": v, "decision": decision_name(h.commit_or_rollback), "oneway": oneway,
                       "check": h.from_transaction_check});
    rec.record(json!({"process": process, "type": "invoke", "f": "txn-end", "value": value}));
    let (ty, error) = match c.end(node, h, oneway).await {
        Ok(true) => ("ok", None),
        Ok(false) => ("info", Some("oneway: outcome not observed".to_owned())),
        Err(f) => (if f.definite { "fail" } else { "info" }, Some(f.error)),
    };
    let mut op = json!({"process": process, "type": ty, "f": "txn-end", "value": value, "node": c.brokers.get(node)});
    if let Some(e) = error {
        op["error"] = json!(e);
    }
    rec.record(op);
    ty
}

/// Answers check-backs, one at a time, from the plan table.
async fn responder(
    c: Arc<TxnClient>,
    mut rx: mpsc::Receiver<(usize, RemotingCommand)>,
    rec: Recorder,
    progress: Arc<Progress>,
    w: usize,
    workers: usize,
) {
    let mut process = w as u64;
    while let Some((node, cmd)) = rx.recv().await {
        if c.stopped.load(Ordering::Acquire) {
            return;
        }
        let addr = c.brokers.get(node).cloned().unwrap_or_default();
        let h = match CheckTransactionStateRequestHeader::from_ext_fields(&cmd.ext_fields) {
            Ok(h) => h,
            Err(e) => {
                rec.record(json!({"process": process, "type": "info", "f": "txn-check", "value": null, "node": addr,
                                  "error": format!("bad check-back header: {e}")}));
                continue;
            }
        };
        // The body is the half message at its real topic and queue.
        let msg = StoredMessages::new(&cmd.body).next().and_then(|m| m.ok()).map(|m| (m.queue_id, parse_value(m.body)));
        let Some((queue, Some(v))) = msg else {
            rec.record(json!({"process": process, "type": "info", "f": "txn-check", "value": null, "node": addr,
                              "error": "check-back body holds no workload value"}));
            continue;
        };
        let registered = c.plans.lock().unwrap_or_else(|e| e.into_inner()).get(&v).cloned();
        let k = registered.as_ref().map_or(queue.max(0) as u32, |r| r.key);
        let answer = registered.as_ref().and_then(|r| r.plan.answer());
        let answer_name = answer.map_or("none", decision_name);
        rec.record(json!({"process": process, "type": "info", "f": "txn-check", "value": {"key": k, "value": v, "answer": answer_name},
                          "node": addr}));
        let Some(how) = answer else { continue };
        let uniq = h.transaction_id.clone().or(h.msg_id.clone()).unwrap_or_else(|| c.uniq_key(v));
        let end = EndTransactionRequestHeader {
            topic: Some(c.topic.clone()),
            producer_group: TXN_GROUP.into(),
            tran_state_table_offset: h.tran_state_table_offset,
            commit_log_offset: h.commit_log_offset,
            commit_or_rollback: how,
            from_transaction_check: true,
            msg_id: uniq.clone(),
            transaction_id: Some(uniq),
        };
        // Answered as a request (clients send it oneway), so that an acknowledged commit is known.
        let ty = recorded_end(&c, &rec, process, node, k, v, &end, false).await;
        if ty == "ok" && how == transaction_type::COMMIT {
            progress.note_txn_commit(v, rec.now());
        }
        if ty == "info" {
            process += workers as u64;
        }
    }
}

/// One transactional operation of producer worker `w` (process `*process`): value `v` to queue `k`.
#[allow(clippy::too_many_arguments)]
pub async fn transact(
    c: &TxnClient,
    rng: &mut ChaCha8Rng,
    cfg: &WorkloadConfig,
    rec: &Recorder,
    progress: &Progress,
    process: &mut u64,
    workers: usize,
    w: usize,
    k: u32,
    v: u64,
    retries: u32,
    budget: Duration,
) {
    let plan = Plan::pick(rng);
    let local_txn = Duration::from_millis(rng.gen_range(50..=500));
    let oneway = rng.gen_bool(0.5);
    c.plans.lock().unwrap_or_else(|e| e.into_inner()).insert(v, Registered { plan, key: k });
    let mut body = v.to_string();
    body.push(' ');
    while body.len() < cfg.body_bytes {
        body.push('.');
    }
    let invoke: Value = json!([["send", k, v]]);
    rec.record(json!({"process": *process, "type": "invoke", "f": "send", "value": invoke, "extra": {"txn": plan.name()}}));
    progress.note_txn_half(rec.now());
    let ack = match c.send_half(k, v, &body, w, retries, budget).await {
        Ok(ack) => {
            rec.record(json!({"process": *process, "type": "ok", "f": "send", "value": [["send", k, [null, v]]],
                              "node": c.brokers.get(ack.node),
                              "extra": {"txn": plan.name(), "half_offset": ack.queue_offset, "commit_log_offset": ack.commit_log_offset}}));
            ack
        }
        Err(f) => {
            let ty = if f.definite { "fail" } else { "info" };
            rec.record(
                json!({"process": *process, "type": ty, "f": "send", "value": invoke, "error": f.error, "extra": {"txn": plan.name()}}),
            );
            if ty == "info" {
                *process += workers as u64;
            }
            return;
        }
    };
    let how = match plan {
        Plan::Commit => transaction_type::COMMIT,
        Plan::Rollback => transaction_type::ROLLBACK,
        Plan::CrashCommit | Plan::CrashRollback | Plan::CrashSilent => return,
    };
    tokio::time::sleep(local_txn).await;
    let uniq = c.uniq_key(v);
    let h = EndTransactionRequestHeader {
        topic: Some(c.topic.clone()),
        producer_group: TXN_GROUP.into(),
        tran_state_table_offset: ack.queue_offset,
        commit_log_offset: ack.commit_log_offset,
        commit_or_rollback: how,
        from_transaction_check: false,
        msg_id: uniq.clone(),
        transaction_id: Some(uniq),
    };
    let node = c.leader.load(Ordering::Relaxed);
    let ty = recorded_end(c, rec, *process, node, k, v, &h, oneway).await;
    if ty == "ok" && how == transaction_type::COMMIT {
        progress.note_txn_commit(v, rec.now());
    }
    if ty == "info" && !oneway {
        *process += workers as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn only_refusals_before_proposing_are_definite() {
        let sys = ResponseCode::SYSTEM_ERROR.0;
        assert!(end_refusal_is_definite(sys, "Find prepared transaction message failed: no transaction is pending at …"));
        assert!(end_refusal_is_definite(sys, "The producer group wrong: the transaction belongs to a, not b"));
        assert!(end_refusal_is_definite(ResponseCode::SERVICE_NOT_AVAILABLE.0, "not stored: …"));
        assert!(!end_refusal_is_definite(sys, "store outcome unknown: raft dropped the write"));
        assert!(!end_refusal_is_definite(sys, "forwarded to the leader at x, whose answer did not arrive (t); the outcome is unknown"));
        assert!(!end_refusal_is_definite(17, "something new"));
    }

    #[test]
    fn plans_cover_every_kind_and_answers_follow_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            seen.insert(Plan::pick(&mut rng));
        }
        assert_eq!(seen.len(), 5);
        assert_eq!(Plan::Commit.answer(), Some(transaction_type::COMMIT));
        assert_eq!(Plan::CrashCommit.answer(), Some(transaction_type::COMMIT));
        assert_eq!(Plan::Rollback.answer(), Some(transaction_type::ROLLBACK));
        assert_eq!(Plan::CrashSilent.answer(), None);
    }

    #[test]
    fn broker_settings_leave_keys_the_run_sets_alone() {
        let s = broker_settings("");
        assert!(s.contains("transactionTimeOut = 2000") && s.contains("transactionCheckMax = 2"), "{s}");
        let s = broker_settings("transactionCheckMax = 5\n");
        assert!(!s.contains("transactionCheckMax") && s.contains("transactionCheckInterval"), "{s}");
    }

    #[test]
    fn leader_hints_name_a_node() {
        let (tx, _rx) = mpsc::channel(1);
        let c = TxnClient {
            brokers: vec!["10.99.0.1:10911".into(), "10.99.0.2:10911".into()],
            topic: "jt".into(),
            conns: Mutex::new(vec![None, None]),
            leader: AtomicUsize::new(0),
            plans: Mutex::default(),
            checks: tx,
            dropped_checks: Arc::default(),
            stopped: AtomicBool::new(false),
            client_id: "x".into(),
            uniq_prefix: "0A6300FE00000000".into(),
            tasks: Mutex::default(),
        };
        assert_eq!(c.hinted("broker broker-a node 1 is not the Raft leader; the leader is at 10.99.0.2:10911"), Some(1));
        assert_eq!(c.hinted("no leader is known (election in progress)"), None);
        assert_eq!(c.uniq_key(255).len(), 32);
    }
}
