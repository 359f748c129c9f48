//! The queue checker: Jepsen's `jepsen.tests.kafka` analysis re-implemented for raftmq's single-queue appends, plus
//! raftmq's own anomalies, availability and realtime lag.
//!
//! [`check`] takes a history (see [`crate::history`]) and returns a [`CheckResult`], which serializes to
//! `results.json` and renders as a plain-text table with [`CheckResult::summary_table`].
//!
//! # Anomalies
//!
//! | name | verdict | meaning |
//! | --- | --- | --- |
//! | `inconsistent-offsets` | bad | two or more values at one offset of a key's version order |
//! | `duplicate` | bad | one value at two or more offsets of a key |
//! | `G1a` | bad | an ok poll returned a value whose send failed (counted per message) |
//! | `phantom-read` | bad | a poll returned a value no send ever attempted (per message) |
//! | `wrong-key` | bad | a poll returned a value from a key it was not sent to (per message) |
//! | `lost-write` | bad | a must-have-committed message below the highest index some ok poll reached was never read by an ok poll |
//! | `unseen` | bad after a complete final drain, info otherwise | a message of an ok send that no ok poll returned |
//! | `ack-beyond-end` | bad | an ok send's offset ≥ its queue's final high watermark |
//! | `poll-skip` / `nonmonotonic-poll` | bad | per consumer process across polls: the next read skipped / went back (assign and seek aware) |
//! | `int-poll-skip` / `int-nonmonotonic-poll` | bad | within one poll |
//! | `nonmonotonic-send` | bad | per producer process, a later send landed at or before an earlier one |
//! | `int-nonmonotonic-send` | bad | within one batch |
//! | `int-send-skip` | bad with atomic batches (default), allowed otherwise | another message landed inside a batch |
//! | `realtime-send-order` | bad | A completed before B was invoked but A's offset is above B's |
//! | `offset-gap` | bad with dense offsets (default), info otherwise | non-consecutive offsets in one poll; offsets below the final high watermark no ok poll returned (after a complete drain) |
//! | `committed-offset-regression` | bad | a group's committed offset read lower than one already committed or read |
//! | `stale-read` | info (bad with `linearizable_polls`) | an empty poll reported a high watermark ≤ an offset already acknowledged |
//! | `scheduled-lost` | bad after a complete final drain, info otherwise | an ok scheduled send's value no ok poll returned, though a drain poll of its key began after its horizon |
//! | `scheduled-pending` | info (makes the result unknown) | the same, but the drain ended before its horizon |
//! | `scheduled-duplicate` | bad | a scheduled value (ok, info or fail send) read at two or more offsets of its key |
//! | `scheduled-early` | bad | a scheduled value first observed (poll completion) before its send's invocation + delay − allowance |
//! | `txn-aborted-visible` | bad | a transactional value read that no commit was ever attempted for (rolled back, parked, half send failed) |
//! | `txn-half-visible` | bad | a transactional value observed (poll completion) before its earliest commit attempt was invoked |
//! | `txn-duplicate` | bad | a transactional value read at two or more offsets of its key |
//! | `txn-committed-lost` | bad after a complete final drain, info otherwise | an acknowledged commit's value no ok poll returned, though a drain poll of its key began after its horizon |
//! | `txn-commit-pending` | info (makes the result unknown) | the same, but the drain ended before its horizon |
//!
//! # Definitions
//!
//! * **Operations.** Invocations are paired with completions ([`crate::history::pair_ops`]); an invocation without
//!   completion counts as `info`. Operations are processed in the order they ended.
//! * **Must have committed.** A send that is ok, or info with at least one of its messages returned by an ok poll.
//! * **Version order** of a key: every `(offset, value)` any poll returned (ok, info or fail: a broker must never
//!   return unsafe data) plus the known-offset messages of must-have-committed sends. Offsets holding at least one
//!   value get consecutive *dense indices* (holes are skipped, as in Jepsen).
//! * **Dense index of a message.** A polled message: the index of the offset it was returned at. A sent message: the
//!   index of its own offset if the version order holds it there, else the first index its value appears at. This is
//!   Jepsen's value index whenever a value sits at one offset; with duplicates it avoids follow-on skip reports. An
//!   unknown index makes a delta count as 1.
//! * **Poll skip / nonmonotonic poll**, per worker process: the first message an op (of any type) reads from k is
//!   compared with the last message the process's previous ok poll read from k (delta > 1: skip; < 1:
//!   nonmonotonic). Only ok polls move the position. An ok `assign` forgets keys it does not list; `seek: keep` keeps
//!   the position; `seek: beginning` expects the next read at the first index of the key; `seek: committed` with the
//!   committed offset c read (`extra.committed`; a key missing there means c = 0) expects it at the first known
//!   offset ≥ c; `seek: committed` without `extra.committed` forgets the key. An info or fail assign forgets every
//!   key it does not list and every key it lists with a seek other than `keep`.
//! * **Nonmonotonic send**, per worker process over ok/info sends (Jepsen): the first message a send puts on k
//!   must come after the last message of the process's previous send to k; ok/info assigns forget other keys.
//! * **Final drain.** `final-drain` ops; it is complete when there is at least one and all ended ok. Drain polls are
//!   ok polls invoked at or after the first `final-drain` invocation.
//! * **Final high watermark** of k (for `ack-beyond-end` and the final half of `offset-gap`): the larger of the
//!   highest `extra.max` any drain poll reported for k and one past the highest offset drain polls returned; sends
//!   completed before the last such drain poll was invoked are held to it. If the drain completed but no drain poll
//!   mentioned k: one past the highest offset any ok poll returned, for sends completed before the drain started.
//!   Without a final drain there is none (no check).
//! * **Scheduled sends** (`extra.delay_ms`): their acknowledged offset is a staging offset and they land after their
//!   delay, so they take no part in the version order through their sends, nor in `unseen`, `ack-beyond-end`,
//!   `realtime-send-order`, `nonmonotonic-send`, the in-batch send checks, `stale-read`, realtime lag or the
//!   `unseen` series; a scheduled value at two offsets is `scheduled-duplicate`, not `duplicate`. Their polls take
//!   part in everything. Due time, observation, the early allowance under clock faults and the horizon are defined
//!   in [`scheduled`](self::scheduled) (module docs).
//! * **Transactional sends** (`extra.txn`): their acknowledged offset is one in the broker's half queue and they land
//!   in their key only when committed, so they are left out of the same checks as scheduled sends; their value at two
//!   offsets is `txn-duplicate`, and read after a failed half send `txn-aborted-visible` (not `duplicate`, `G1a`).
//!   Commit attempts, acknowledged commits and the horizon are defined in [`txn`](self::txn) (module docs).
//! * **Counting.** `phantom-read`, `wrong-key` and `G1a` count distinct (key, value) pairs; `unseen` and `lost-write`
//!   messages; `realtime-send-order` the later send of each violating pair (one per send); `offset-gap` each
//!   in-poll gap and each never-polled range; `committed-offset-regression` each (assign, key); the others each
//!   case as in Jepsen.
//!
//! # Verdict
//!
//! [`Validity::Invalid`] iff some anomaly with verdict bad has a non-zero count; otherwise [`Validity::Unknown`] if
//! there was no `final-drain` op, a `final-drain` op did not end ok, there was no ok send or no ok poll, or some
//! `scheduled-pending` or `txn-commit-pending` case; otherwise [`Validity::Valid`].

mod anomalies;
mod availability;
mod index;
mod lag;
mod report;
mod scheduled;
mod txn;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub use availability::{fault_windows, Availability, FaultWindow, Outage, Recovery};
pub use index::Notes;
pub use lag::{realtime_lag, LagPoint, LagSummary};
pub use report::{AnomalyReport, CheckResult, DrainSummary, ErrorCause, Stats};
pub use scheduled::{Lateness, ScheduledSummary, SCHEDULE_JITTER_MS, SCHEDULE_LATE_MARGIN_MS};
pub use txn::{TxnSummary, TXN_LATE_MARGIN_MS};

use crate::history::{Key, Op, OpType, Process, Value};
use anomalies::Findings;
use index::{Index, Kind};

/// Every anomaly the checker reports, in report order.
pub const ANOMALIES: &[&str] = &[
    "inconsistent-offsets",
    "duplicate",
    "G1a",
    "phantom-read",
    "wrong-key",
    "lost-write",
    "unseen",
    "ack-beyond-end",
    "poll-skip",
    "nonmonotonic-poll",
    "int-poll-skip",
    "int-nonmonotonic-poll",
    "nonmonotonic-send",
    "int-nonmonotonic-send",
    "int-send-skip",
    "realtime-send-order",
    "offset-gap",
    "committed-offset-regression",
    "stale-read",
    "scheduled-lost",
    "scheduled-pending",
    "scheduled-duplicate",
    "scheduled-early",
    "txn-aborted-visible",
    "txn-half-visible",
    "txn-duplicate",
    "txn-committed-lost",
    "txn-commit-pending",
];

/// What the broker promises, which decides some verdicts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckOptions {
    /// Batches are appended atomically at consecutive offsets, so `int-send-skip` is bad (default true).
    pub atomic_batches: bool,
    /// Offsets of a queue are dense (RocketMQ consume queues), so `offset-gap` is bad (default true).
    pub dense_offsets: bool,
    /// Polls promise leader-linearizable reads, so `stale-read` is bad (default false).
    pub linearizable_polls: bool,
    /// Examples kept per anomaly (default 8).
    pub max_examples: usize,
    /// How much earlier than due a scheduled message may be observed without clock faults (ms, default
    /// [`SCHEDULE_JITTER_MS`]); the clock faults of the history are added (see `scheduled`).
    pub schedule_jitter_ms: u64,
    /// How long past its due time (plus the clock faults' offsets) a scheduled message must have been delivered
    /// (ms, default [`SCHEDULE_LATE_MARGIN_MS`]).
    pub schedule_late_margin_ms: u64,
    /// How long after an acknowledged commit (or the last heal) a drain poll must begin for the value's absence to be
    /// `txn-committed-lost` rather than `txn-commit-pending` (ms, default [`TXN_LATE_MARGIN_MS`]).
    pub txn_late_margin_ms: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            atomic_batches: true,
            dense_offsets: true,
            linearizable_polls: false,
            max_examples: 8,
            schedule_jitter_ms: SCHEDULE_JITTER_MS,
            schedule_late_margin_ms: SCHEDULE_LATE_MARGIN_MS,
            txn_late_margin_ms: TXN_LATE_MARGIN_MS,
        }
    }
}

/// The overall result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    /// No bad anomaly, and the history was complete enough to tell.
    Valid,
    /// At least one bad anomaly.
    Invalid,
    /// No bad anomaly, but the final drain was missing or incomplete, or nothing was sent or polled.
    Unknown,
}

impl Validity {
    /// Process exit code: 0 valid, 1 invalid, 2 unknown.
    pub fn exit_code(self) -> i32 {
        match self {
            Validity::Valid => 0,
            Validity::Invalid => 1,
            Validity::Unknown => 2,
        }
    }

    /// `YES`, `NO` or `UNKNOWN`, for the final `VALID?` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Validity::Valid => "YES",
            Validity::Invalid => "NO",
            Validity::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for Validity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an anomaly affects the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Any occurrence makes the run invalid.
    Bad,
    /// Reported only.
    Info,
    /// Permitted by the system's contract (reported only).
    Allowed,
}

/// The verdict of an anomaly under `opts`; `drain_complete` decides `unseen`.
pub fn verdict_of(name: &str, opts: &CheckOptions, drain_complete: bool) -> Verdict {
    match name {
        "unseen" | "scheduled-lost" | "txn-committed-lost" if !drain_complete => Verdict::Info,
        "scheduled-pending" | "txn-commit-pending" => Verdict::Info,
        "int-send-skip" if !opts.atomic_batches => Verdict::Allowed,
        "offset-gap" if !opts.dense_offsets => Verdict::Info,
        "stale-read" if !opts.linearizable_polls => Verdict::Info,
        _ => Verdict::Bad,
    }
}

/// Checks a history. Never panics on malformed input: ops whose payload cannot be parsed are skipped and counted in
/// [`CheckResult::malformed`], pairing problems in [`CheckResult::pairing`].
pub fn check(history: &[Op], opts: &CheckOptions) -> CheckResult {
    let ix = Index::build(history);
    let mut found = Findings::new(opts.max_examples);
    anomalies::version_order(&ix, &mut found);
    anomalies::reads(&ix, &mut found);
    anomalies::lost_write(&ix, &mut found);
    let unseen_by_key = anomalies::unseen(&ix, &mut found);
    anomalies::poll_skip(&ix, &mut found);
    anomalies::int_poll(&ix, &mut found);
    anomalies::sends(&ix, &mut found);
    anomalies::realtime_send_order(&ix, &mut found);
    let hws = anomalies::final_high_watermarks(&ix);
    anomalies::ack_beyond_end(&ix, &hws, &mut found);
    anomalies::final_holes(&ix, &hws, &mut found);
    anomalies::committed_regression(&ix, &mut found);
    anomalies::stale_read(&ix, &mut found);
    let scheduled = scheduled::check(&ix, opts, &mut found);
    let txn = txn::check(&ix, opts, &mut found);

    let drain_complete = ix.drain.complete();
    let anomalies: Vec<AnomalyReport> = ANOMALIES
        .iter()
        .map(|&name| {
            let (count, examples) = found.take(name);
            AnomalyReport { name: name.to_owned(), count, verdict: verdict_of(name, opts, drain_complete), examples }
        })
        .collect();
    let bad: Vec<String> = anomalies.iter().filter(|a| a.count > 0 && a.verdict == Verdict::Bad).map(|a| a.name.clone()).collect();

    // Counts.
    let mut ops: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut causes: HashMap<(String, OpType, String), u64> = HashMap::new();
    let (mut ok_sends, mut ok_polls) = (0u64, 0u64);
    let (mut acked, mut polled): (HashSet<(Key, Value)>, u64) = (HashSet::new(), 0);
    for p in &ix.ops {
        *ops.entry(p.op.f().to_owned()).or_default().entry(p.ty.as_str().to_owned()).or_default() += 1;
        // Check-backs are events, not failures, and a oneway END is never answered: neither is an error.
        let event = matches!(&p.kind, Kind::TxnCheck(_)) || matches!(&p.kind, Kind::TxnEnd(e) if e.oneway);
        if matches!(p.ty, OpType::Fail | OpType::Info) && p.process() != Process::Nemesis && !event {
            let err = match (p.op.error(), p.op.completion()) {
                (Some(e), _) => e.to_owned(),
                (None, None) => "never completed".to_owned(),
                (None, Some(_)) => "(no error given)".to_owned(),
            };
            *causes.entry((p.op.f().to_owned(), p.ty, err)).or_default() += 1;
        }
        if anomalies::is_ok_send(p) {
            ok_sends += 1;
            if let Kind::Send(s) = &p.kind {
                acked.extend(s.iter().map(|s| (s.key, s.value)));
            }
        }
        if anomalies::is_ok_poll(p) {
            ok_polls += 1;
            polled += p.reads().iter().map(|(_, pairs)| pairs.len() as u64).sum::<u64>();
        }
    }
    let mut error_causes: Vec<ErrorCause> =
        causes.into_iter().map(|((f, ty, error), count)| ErrorCause { f, op_type: ty, error, count }).collect();
    error_causes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (&a.f, a.op_type, &a.error).cmp(&(&b.f, b.op_type, &b.error))));

    let mut unknown_reasons = Vec::new();
    if ix.drain.ops == 0 {
        unknown_reasons.push("no final-drain op".to_owned());
    } else if !drain_complete {
        unknown_reasons.push(format!(
            "final drain incomplete: {} of {} drain workers did not reach the end",
            ix.drain.ops - ix.drain.ok,
            ix.drain.ops
        ));
    }
    if ok_sends == 0 {
        unknown_reasons.push("no ok send".to_owned());
    }
    if ok_polls == 0 {
        unknown_reasons.push("no ok poll".to_owned());
    }
    let pending = anomalies.iter().find(|a| a.name == "scheduled-pending").map_or(0, |a| a.count);
    if pending > 0 {
        unknown_reasons
            .push(format!("{pending} acknowledged scheduled messages unread, but the final drain ended before they had to be delivered"));
    }
    let txn_pending = anomalies.iter().find(|a| a.name == "txn-commit-pending").map_or(0, |a| a.count);
    if txn_pending > 0 {
        unknown_reasons.push(format!(
            "{txn_pending} transactional messages with an acknowledged commit unread, but the final drain ended before their horizon"
        ));
    }
    let validity = if !bad.is_empty() {
        Validity::Invalid
    } else if !unknown_reasons.is_empty() {
        Validity::Unknown
    } else {
        Validity::Valid
    };

    let lags = lag::compute(&ix);
    CheckResult {
        validity,
        bad,
        unknown_reasons,
        anomalies,
        ops,
        error_causes,
        final_drain: DrainSummary { ops: ix.drain.ops, ok: ix.drain.ok, complete: drain_complete, start: ix.drain.start },
        unseen_by_key,
        high_watermarks: hws.iter().map(|(&k, h)| (k, h.hw)).collect(),
        availability: availability::compute(&ix),
        lag: lag::summarize(&lags),
        scheduled,
        txn,
        stats: Stats {
            history_ops: history.len() as u64,
            operations: ix.ops.len() as u64,
            keys: ix.keys().len() as u64,
            ok_sends,
            ok_polls,
            messages_acked: acked.len() as u64,
            messages_polled: polled,
        },
        malformed: ix.malformed.clone(),
        pairing: ix.pairing.clone(),
        options: opts.clone(),
    }
}

/// The number of acknowledged-but-not-yet-polled messages per key after an ok send or poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnseenPoint {
    /// The op's completion time (ns).
    pub time: u64,
    /// Per key that has had an ok send: messages acknowledged by ok sends that no ok poll has returned so far.
    pub unseen: BTreeMap<Key, u64>,
}

/// Jepsen's `unseen` series, for plotting: one point per ok send or ok poll, in completion order.
pub fn unseen_series(history: &[Op]) -> Vec<UnseenPoint> {
    let ix = Index::build(history);
    let mut unseen: HashSet<(Key, Value)> = HashSet::new();
    let mut polled: HashSet<(Key, Value)> = HashSet::new();
    let mut counts: BTreeMap<Key, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for p in &ix.ops {
        if p.ty != OpType::Ok {
            continue;
        }
        let Some(time) = p.op.complete_time() else { continue };
        match &p.kind {
            // Scheduled sends are not due at once, transactional ones visible only once committed: they would count
            // as unseen until delivered.
            Kind::Send(_) if p.is_staged() => continue,
            Kind::Send(sends) => {
                for s in sends {
                    counts.entry(s.key).or_insert(0);
                    if !polled.contains(&(s.key, s.value)) && unseen.insert((s.key, s.value)) {
                        *counts.entry(s.key).or_insert(0) += 1;
                    }
                }
            }
            Kind::Poll { reads, .. } => {
                for (k, pairs) in reads {
                    for &(_, v) in pairs {
                        polled.insert((*k, v));
                        if unseen.remove(&(*k, v)) {
                            if let Some(c) = counts.get_mut(k) {
                                *c -= 1;
                            }
                        }
                    }
                }
            }
            _ => continue,
        }
        out.push(UnseenPoint { time, unseen: counts.clone() });
    }
    out
}
