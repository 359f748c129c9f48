//! Transactional messages: half sends, END_TRANSACTION and check-backs (see [`crate::history`] for the ops).
//!
//! A transactional value v is sent as a *half message* (a `send` with `extra.txn`), stored invisible; it
//! becomes visible in its real queue k, at a new offset, only when a commit is stored. Commits come from an
//! END_TRANSACTION — the producer's own, or its answer to a check-back — recorded as `txn-end` ops. The producer
//! keeps one decision per value (commit or not) for its own END and every check-back answer, and records each END's
//! invocation *before* writing it, so the broker cannot have committed v before the earliest such invocation.
//!
//! # Definitions
//!
//! * **Commit attempt** of v: a `txn-end` with decision `commit` for v whose type is not `fail` (`fail` means the
//!   broker certainly changed nothing with that request). Its time is its invocation (0 when it has none: it could
//!   have been sent at any time).
//! * **Acknowledged commit** of v: a `txn-end` commit for v that is `ok` (the broker answered SUCCESS, which it
//!   does only after the committed copy was stored by a quorum and indexed). A oneway END is never `ok`: its
//!   outcome is unknown, and v may be visible or not.
//! * **Observed**: the earliest completion of a poll that returned v (any key). The value was readable before that
//!   poll answered, so the completion bounds the moment it became visible from above.
//! * **Horizon** of an acknowledged commit: max(its completion, the last `heal`) + `txn_late_margin_ms` (default
//!   [`TXN_LATE_MARGIN_MS`]): by then every member a drain poll may reach has applied it.
//!
//! # Anomalies
//!
//! * `txn-aborted-visible` (bad): a poll (any type) returned a transactional value that no commit was ever
//!   attempted for: rolled back, never answered and parked, or its half send failed. Counted per value.
//! * `txn-half-visible` (bad): a value with a commit attempt observed before the earliest one was invoked: it was
//!   readable while still a half message. Counted per value.
//! * `txn-duplicate` (bad): a transactional value (any send type) at two or more offsets of its key.
//! * `txn-committed-lost` (bad after a complete final drain, info otherwise): a value with an acknowledged commit
//!   that no ok poll returned at its key, though an ok drain poll of the key began after the horizon.
//! * `txn-commit-pending` (info; the result is unknown): the same, but no drain poll of its key began after the
//!   horizon.
//!
//! Values whose commit is only attempted (oneway, timed out, "outcome unknown") may appear or not, but at most
//! once and not before the attempt. A `txn-end` for a value never sent transactionally is counted and ignored.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::json;

use super::anomalies::Findings;
use super::index::{Index, Kind};
use super::CheckOptions;
use crate::history::{Key, Offset, OpType, TxnDecision, Value};

/// Default of [`CheckOptions::txn_late_margin_ms`]; the harness's drain waits as long for a missing value.
pub const TXN_LATE_MARGIN_MS: u64 = 5_000;

/// What the transactional checks counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnSummary {
    /// Transactional (half) send operations by type (`ok`, `info`, `fail`).
    pub sends: BTreeMap<String, u64>,
    /// The producer's plans for them (`extra.txn`), by plan.
    pub plans: BTreeMap<String, u64>,
    /// END_TRANSACTION operations by `<decision> <type>`, with ` check` for answers to check-backs and
    /// ` oneway` for oneway ones (e.g. `commit ok check`).
    pub ends: BTreeMap<String, u64>,
    /// Check-backs received, by answer (`commit`, `rollback`, `none`).
    pub checks: BTreeMap<String, u64>,
    /// Distinct values with a commit attempt.
    pub commit_attempted: u64,
    /// Distinct values with an acknowledged commit.
    pub commit_acked: u64,
    /// Distinct transactional values some poll returned.
    pub values_read: u64,
    /// `txn-end` ops for values never sent transactionally (ignored).
    pub stray_ends: u64,
}

/// When a value was first observed: (poll completion, op id, key, offset).
type FirstSeen = (u64, usize, Key, Offset);

/// Per value: what the `txn-end` ops say.
#[derive(Default)]
struct Ends {
    /// Earliest commit attempt: (invocation time, op id).
    attempt: Option<(u64, usize)>,
    /// Earliest acknowledged commit: (completion time, op id, key).
    acked: Option<(u64, usize, Key)>,
    /// Decisions seen (for examples).
    decisions: Vec<&'static str>,
}

/// Runs the transactional checks; returns the summary.
pub(crate) fn check(ix: &Index, opts: &CheckOptions, out: &mut Findings) -> TxnSummary {
    let mut summary = TxnSummary::default();
    let mut ends: HashMap<Value, Ends> = HashMap::new();
    for (id, p) in ix.ops.iter().enumerate() {
        match &p.kind {
            Kind::Send(_) if p.is_txn() => {
                *summary.sends.entry(p.ty.as_str().to_owned()).or_default() += 1;
                *summary.plans.entry(p.txn.clone().unwrap_or_default()).or_default() += 1;
            }
            Kind::TxnCheck(c) => *summary.checks.entry(c.answer.clone()).or_default() += 1,
            Kind::TxnEnd(e) => {
                let decision = match e.decision {
                    TxnDecision::Commit => "commit",
                    TxnDecision::Rollback => "rollback",
                };
                let mut label = format!("{decision} {}", p.ty.as_str());
                if e.check {
                    label.push_str(" check");
                }
                if e.oneway {
                    label.push_str(" oneway");
                }
                *summary.ends.entry(label).or_default() += 1;
                if !ix.txn.contains_key(&e.value) {
                    summary.stray_ends += 1;
                    continue;
                }
                let entry = ends.entry(e.value).or_default();
                if !entry.decisions.contains(&decision) {
                    entry.decisions.push(decision);
                }
                if e.decision != TxnDecision::Commit || p.ty == OpType::Fail {
                    continue;
                }
                let t = p.op.invoke_time().unwrap_or(0);
                if entry.attempt.is_none_or(|(a, _)| t < a) {
                    entry.attempt = Some((t, id));
                }
                if p.ty == OpType::Ok {
                    if let Some(done) = p.op.complete_time() {
                        if entry.acked.is_none_or(|(a, _, _)| done < a) {
                            entry.acked = Some((done, id, e.key));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    summary.commit_attempted = ends.values().filter(|e| e.attempt.is_some()).count() as u64;
    summary.commit_acked = ends.values().filter(|e| e.acked.is_some()).count() as u64;
    if ix.txn.is_empty() {
        return summary;
    }

    // First observation of each transactional value: (poll completion, op id, key, offset).
    let mut first: HashMap<Value, FirstSeen> = HashMap::new();
    for (id, p) in ix.ops.iter().enumerate() {
        let Some(done) = p.op.complete_time() else { continue };
        for (k, pairs) in p.reads() {
            for &(o, v) in pairs {
                if ix.txn.contains_key(&v) && first.get(&v).is_none_or(|f| done < f.0) {
                    first.insert(v, (done, id, *k, o));
                }
            }
        }
    }
    summary.values_read = first.len() as u64;

    let mut read: Vec<(&Value, &FirstSeen)> = first.iter().collect();
    read.sort_unstable_by_key(|(v, f)| (f.0, **v));
    for (&v, &(seen, reader, k, o)) in read {
        let writer = ix.ops[ix.txn[&v]].reference();
        let plan = ix.ops[ix.txn[&v]].txn.clone();
        let e = ends.get(&v);
        match e.and_then(|e| e.attempt) {
            None => {
                let decisions = e.map(|e| e.decisions.clone()).unwrap_or_default();
                out.add("txn-aborted-visible", || {
                    json!({"key": k, "value": v, "offset": o, "plan": plan, "ends": decisions, "writer": writer,
                           "reader": ix.ops[reader].reference()})
                });
            }
            Some((attempt, end)) if seen < attempt => {
                let early_ms = (attempt - seen) as f64 / 1e6;
                out.add("txn-half-visible", || {
                    json!({"key": k, "value": v, "offset": o, "plan": plan, "before-commit-ms": early_ms, "writer": writer,
                           "reader": ix.ops[reader].reference(), "commit": ix.ops[end].reference()})
                });
            }
            Some(_) => {}
        }
    }

    // txn-duplicate: from the version orders (which hold only polled offsets for transactional values).
    for (k, v, offsets, send) in ix.read_twice(&ix.txn) {
        let writer = ix.ops[send].reference();
        out.add("txn-duplicate", || json!({"key": k, "value": v, "count": offsets.len(), "offsets": offsets, "writer": writer}));
    }

    // txn-committed-lost / txn-commit-pending.
    let last_heal = ix.last_heal();
    let drain_polled = ix.last_drain_polls();
    let margin_ns = opts.txn_late_margin_ms.saturating_mul(1_000_000);
    let mut acked: Vec<(u64, Value, usize, Key)> =
        ends.iter().filter_map(|(&v, e)| e.acked.map(|(done, id, k)| (done, v, id, k))).collect();
    acked.sort_unstable();
    for (done, v, end, k) in acked {
        if ix.ok_reader.contains_key(&(k, v)) {
            continue;
        }
        let horizon = done.max(last_heal).saturating_add(margin_ns);
        let polled = drain_polled.get(&k).copied();
        let decided = !ix.drain.complete() || polled.is_some_and(|t| t >= horizon);
        let name = if decided { "txn-committed-lost" } else { "txn-commit-pending" };
        out.add(name, || {
            json!({"key": k, "value": v, "horizon": horizon, "last-drain-poll": polled, "writer": ix.ops[ix.txn[&v]].reference(),
                   "commit": ix.ops[end].reference()})
        });
    }
    summary
}
