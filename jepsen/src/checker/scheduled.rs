//! Scheduled sends: `scheduled-lost`, `scheduled-pending`, `scheduled-duplicate`, `scheduled-early`, and the
//! lateness figures.
//!
//! A scheduled send (`extra.delay_ms` = d > 0) is acknowledged once stored in the broker's staging queue and becomes
//! readable in its queue only when due; the broker then appends a copy at a new offset. Its acknowledged offset says
//! nothing about its queue (the other checks ignore it, see `anomalies.rs`), and it lands after later plain sends.
//!
//! # Bounds
//!
//! Times are the history's (the harness's monotonic clock). For a scheduled value v sent with delay d:
//!
//! * **Due** = the send's invocation time + d. The broker computes the due time from its own receipt (timer) or
//!   store stamp (level), both at or after the invocation when clocks are right.
//! * **Observed** = the earliest *completion* time of an ok poll that returned v. The copy was readable before the
//!   poll answered, so the completion is an upper bound on the moment the broker made it readable. The invocation
//!   would not be: a pull is a long poll (up to 500 ms in the workload) that may be answered with a message
//!   delivered after it was invoked, so "invoked before due" proves nothing. With the completion, an early verdict
//!   is never wrong (the message was certainly readable at the completion) — at the price of missing earliness
//!   smaller than the poll's latency.
//! * **Early allowance** A(v) = ahead(v) + behind(v) + `schedule_jitter_ms` (default 200 ms). The broker delivers
//!   when its store clock — `max(wall clock, last stamp)` — reaches the due time it computed at receipt from its
//!   wall clock (docs/architecture.md, "Time"). So a clock set back by N while v is received makes its due N early
//!   (`behind`), and a clock set ahead by P makes the store clock, and every stamp, up to P ahead of real time from
//!   the fault's start until P after its end (stamps never go back), delivering up to P early (`ahead`). Hence a
//!   correct broker delivers v no earlier than invocation + d − ahead(v) − behind(v), where, over the clock
//!   faults of the history (*windows*: from the `bump-clock`/`strobe-clock` op, less 1 s of slack, to the
//!   `reset-clock` or `heal` that ends it):
//!   - behind(v) = the largest offset set back by a window overlapping v's receipt, [send invocation, min(send
//!     completion, observation)];
//!   - ahead(v) = the largest offset set ahead (a strobe's delta) by a window that, extended by that offset,
//!     overlaps [send invocation, observation], when the delivery happened.
//!
//!   A window's offsets are the largest of any of its nodes (which node led is not known). A `clock-failed` op, or
//!   a clock record that cannot be read, opens a window of [`crate::clock::MAX_SKEW_MS`] (300 s, the largest the
//!   nemesis injects) both ways that only `heal` ends (the harness resets a failed fault's nodes only then).
//!   Outside clock faults A is the jitter alone, which covers millisecond truncation of store timestamps and the
//!   drift between the broker's wall clock and the harness's monotonic clock over a run. Values whose allowance a
//!   window widened are counted (`widened`): their early check is weaker.
//! * **Horizon** of an acknowledged v = max(its send's completion + d, the last `heal`) + ahead + behind (here the
//!   largest offsets of the whole history) +
//!   `schedule_late_margin_ms` (default 10 s): by then a correct broker has delivered it (a clock set behind holds
//!   deliveries back by as much, one set ahead leaves the stamped clock ahead after the reset and pushes later due
//!   times by as much; faults are all healed at `heal`; the margin covers the delivery loop, the commit and
//!   follower lag). The final drain waits for missing scheduled values up to the same bound.
//!
//! # Anomalies
//!
//! * `scheduled-early` (bad): observed < due − A. Any send type (a value read is a value stored).
//! * `scheduled-duplicate` (bad): a scheduled value (any send type: ok, info or fail) read at two or more offsets of
//!   its key. (Read at another key: `wrong-key`; an info send's value may appear or not, but at most once.)
//! * `scheduled-lost` (bad after a complete final drain, info otherwise): an ok scheduled send's value that no ok
//!   poll returned, where some ok drain poll of its key was invoked at or after its horizon.
//! * `scheduled-pending` (info; the result is unknown): the same, but no drain poll of its key was invoked after
//!   its horizon (the drain ended before the value had to be delivered), or its delay is unknown.
//!
//! Lateness (observed − due, ns, signed) is a figure, not an anomaly: over values first observed by a consumer
//! before the final drain; values first observed by the drain are counted apart (their lateness mostly measures
//! when the drain ran).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::json;

use super::anomalies::Findings;
use super::index::{Index, Kind};
use super::CheckOptions;
use crate::clock::SkewBounds;
use crate::history::{OpType, Process, Value};

/// Default of [`CheckOptions::schedule_jitter_ms`].
pub const SCHEDULE_JITTER_MS: u64 = 200;
/// Default of [`CheckOptions::schedule_late_margin_ms`]; the harness's drain uses it too.
pub const SCHEDULE_LATE_MARGIN_MS: u64 = 10_000;

/// Lateness of scheduled deliveries: first observation − due, in ns (negative = observed before due).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lateness {
    /// Values first observed by a consumer before the final drain (the figures below are over these).
    pub measurements: u64,
    /// Median (ns).
    pub p50: i64,
    /// 99th percentile (ns).
    pub p99: i64,
    /// Largest (ns).
    pub max: i64,
    /// Smallest (ns).
    pub min: i64,
    /// The value with the largest lateness.
    pub worst_value: Option<Value>,
    /// Values first observed by the final drain.
    pub first_seen_by_drain: u64,
    /// The largest lateness among those (ns).
    pub drain_max: Option<i64>,
}

/// What the scheduled-message checks used and measured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScheduledSummary {
    /// Scheduled send operations by type (`ok`, `info`, `fail`).
    pub sends: BTreeMap<String, u64>,
    /// Distinct scheduled values some ok poll returned.
    pub values_read: u64,
    /// Clock offsets the history's clock nemesis applied (largest over the run).
    pub skew: SkewBounds,
    /// Clock-fault windows.
    pub clock_windows: u64,
    /// The early allowance outside clock faults (ms): the jitter.
    pub early_allowance_ms: u64,
    /// The largest early allowance applied to a value read (ms).
    pub early_allowance_max_ms: u64,
    /// Values read whose allowance a clock fault widened.
    pub widened: u64,
    /// What the horizon adds to the due time (ms): ahead + behind + late margin.
    pub late_bound_ms: u64,
    /// Lateness figures.
    pub lateness: Lateness,
}

/// Slack before a clock fault's recorded start (the harness of earlier versions recorded it after applying it).
const WINDOW_SLACK_NS: u64 = 1_000_000_000;

/// A clock fault as the history records it.
#[derive(Clone, Copy, Debug)]
struct ClockWindow {
    /// Its start op's time less [`WINDOW_SLACK_NS`].
    start: u64,
    /// The `reset-clock` (or `heal`) that ended it; `None` = never.
    end: Option<u64>,
    /// Its offsets (ms).
    skew: SkewBounds,
}

/// The clock-fault windows of the history and the largest offsets over all of them. `bump-clock`
/// `{"offsets-ms": {node: ms}}` and `strobe-clock` `{"delta-ms": ms}` (strobing between 0 and delta) open a
/// window that the next `reset-clock` or `heal` closes; `clock-failed`, or a record that cannot be read, opens one
/// with unknown offsets that only `heal` closes.
fn clock_windows(ix: &Index) -> (Vec<ClockWindow>, SkewBounds) {
    let mut windows: Vec<ClockWindow> = Vec::new();
    let mut run = SkewBounds::default();
    for op in ix.history {
        if op.process != Process::Nemesis || op.op_type == OpType::Invoke {
            continue;
        }
        let value = op.value.to_value().unwrap_or(serde_json::Value::Null);
        let mut skew = SkewBounds::default();
        match op.f.as_str() {
            "bump-clock" => match value.get("offsets-ms").and_then(|o| o.as_object()) {
                Some(offsets) => {
                    for ms in offsets.values() {
                        match ms.as_i64() {
                            Some(ms) => skew.note(ms),
                            None => skew.unknown = true,
                        }
                    }
                }
                None => skew.unknown = true,
            },
            "strobe-clock" => match value.get("delta-ms").and_then(|d| d.as_i64()) {
                Some(d) => skew.note(d),
                None => skew.unknown = true,
            },
            "clock-failed" => skew.unknown = true,
            "reset-clock" | "heal" => {
                let all = op.f == "heal";
                for w in windows.iter_mut().filter(|w| w.end.is_none() && (all || !w.skew.unknown)) {
                    w.end = Some(op.time);
                }
                continue;
            }
            _ => continue,
        }
        run.ahead_ms = run.ahead_ms.max(skew.ahead_ms);
        run.behind_ms = run.behind_ms.max(skew.behind_ms);
        run.unknown |= skew.unknown;
        windows.push(ClockWindow { start: op.time.saturating_sub(WINDOW_SLACK_NS), end: None, skew });
    }
    (windows, run)
}

/// ahead(v) + behind(v) (ms) for a value invoked at `invoked`, received by `received_by`, observed at `seen` (see the
/// module docs).
fn clock_allowance_ms(windows: &[ClockWindow], invoked: u64, received_by: u64, seen: u64) -> u64 {
    let (mut ahead, mut behind) = (0u64, 0u64);
    for w in windows {
        let end = w.end.unwrap_or(u64::MAX);
        if w.start <= received_by && end >= invoked {
            behind = behind.max(w.skew.behind());
        }
        if w.start <= seen && end.saturating_add(w.skew.ahead().saturating_mul(1_000_000)) >= invoked {
            ahead = ahead.max(w.skew.ahead());
        }
    }
    ahead + behind
}

/// Runs the scheduled checks; returns the summary.
pub(crate) fn check(ix: &Index, opts: &CheckOptions, out: &mut Findings) -> ScheduledSummary {
    let (windows, skew) = clock_windows(ix);
    let late_bound_ms = skew.ahead() + skew.behind() + opts.schedule_late_margin_ms;
    let mut summary = ScheduledSummary {
        skew,
        clock_windows: windows.len() as u64,
        early_allowance_ms: opts.schedule_jitter_ms,
        late_bound_ms,
        ..Default::default()
    };
    if ix.scheduled.is_empty() {
        return summary;
    }

    // First observation of each scheduled value: (completion time, op id), over ok polls.
    let mut first: HashMap<Value, (u64, usize)> = HashMap::new();
    for (id, p) in ix.ops.iter().enumerate() {
        if p.ty != OpType::Ok {
            continue;
        }
        let Some(done) = p.op.complete_time() else { continue };
        for (_, pairs) in p.reads() {
            for &(_, v) in pairs {
                if ix.scheduled.contains_key(&v) {
                    let e = first.entry(v).or_insert((done, id));
                    if done < e.0 {
                        *e = (done, id);
                    }
                }
            }
        }
    }
    summary.values_read = first.len() as u64;

    // scheduled-duplicate: from the version orders (which hold only polled offsets for scheduled values).
    for (k, v, offsets, send) in ix.read_twice(&ix.scheduled) {
        let writer = ix.ops[send].reference();
        out.add("scheduled-duplicate", || json!({"key": k, "value": v, "count": offsets.len(), "offsets": offsets, "writer": writer}));
    }

    // The last heal, and per key the last invocation of an ok drain poll that read or reported on it.
    let last_heal = ix.last_heal();
    let drain_polled = ix.last_drain_polls();

    let mut late: Vec<(i64, Value)> = Vec::new();
    let mut drain_late: Vec<i64> = Vec::new();
    let mut ops: Vec<usize> = ix.scheduled.values().copied().collect();
    ops.sort_unstable();
    ops.dedup();
    for id in ops {
        let p = &ix.ops[id];
        *summary.sends.entry(p.ty.as_str().to_owned()).or_default() += 1;
        let Kind::Send(sends) = &p.kind else { continue };
        let d = p.delay.unwrap_or(0);
        let d_ns = d.saturating_mul(1_000_000);
        for s in sends {
            match (first.get(&s.value), p.op.invoke_time()) {
                (Some(&(seen, reader)), Some(inv)) if d > 0 => {
                    let due = inv.saturating_add(d_ns);
                    let received_by = p.op.complete_time().map_or(seen, |c| c.min(seen));
                    let clock = clock_allowance_ms(&windows, inv, received_by, seen);
                    let allowance_ms = clock + opts.schedule_jitter_ms;
                    summary.early_allowance_max_ms = summary.early_allowance_max_ms.max(allowance_ms);
                    summary.widened += u64::from(clock > 0);
                    if seen.saturating_add(allowance_ms.saturating_mul(1_000_000)) < due {
                        let early_ms = (due - seen) as f64 / 1e6;
                        out.add("scheduled-early", || {
                            json!({"key": s.key, "value": s.value, "delay_ms": d, "early_ms": early_ms, "allowance_ms": allowance_ms,
                                   "writer": p.reference(), "reader": ix.ops[reader].reference()})
                        });
                    }
                    let l = seen as i64 - due as i64;
                    if ix.is_drain_op(&ix.ops[reader]) {
                        drain_late.push(l);
                    } else {
                        late.push((l, s.value));
                    }
                }
                (Some(_), _) => {}
                (None, _) if p.ty == OpType::Ok => {
                    let horizon =
                        p.op.complete_time()
                            .map(|c| c.saturating_add(d_ns).max(last_heal).saturating_add(late_bound_ms.saturating_mul(1_000_000)));
                    let polled = drain_polled.get(&s.key).copied();
                    let decided = !ix.drain.complete() || matches!((horizon, polled), (Some(h), Some(t)) if d > 0 && t >= h);
                    let name = if decided { "scheduled-lost" } else { "scheduled-pending" };
                    out.add(name, || {
                        json!({"key": s.key, "value": s.value, "delay_ms": d, "horizon": horizon, "last-drain-poll": polled,
                               "writer": p.reference()})
                    });
                }
                (None, _) => {}
            }
        }
    }

    late.sort_unstable();
    if let (Some(&(min, _)), Some(&(max, worst))) = (late.first(), late.last()) {
        let q = |f: f64| late[((late.len() - 1) as f64 * f).round() as usize].0;
        summary.lateness = Lateness {
            measurements: late.len() as u64,
            p50: q(0.5),
            p99: q(0.99),
            max,
            min,
            worst_value: Some(worst),
            ..Default::default()
        };
    }
    summary.lateness.first_seen_by_drain = drain_late.len() as u64;
    summary.lateness.drain_max = drain_late.iter().copied().max();
    summary
}
