//! Realtime lag, Jepsen's definition (`realtime-lag` in `jepsen.tests.kafka`): a lower bound on how stale a
//! consumer's view of a queue is.
//!
//! `expired(k, i)` is the earliest completion time of any ok/info operation proving that offset ≥ i of k existed (a
//! send acknowledged at that offset or a poll returning it). Each consumer process tracks, per assigned key, the
//! highest offset it has read (−1 after assigning; an ok `assign` keeps the offsets of keys it keeps with `seek:
//! keep`, sets `c − 1` for `seek: committed` with a recorded committed offset c, and −1 otherwise). For every ok poll
//! and every key the process tracks, `lag = max(0, poll invocation time − expired(k, offset + 1))`, or 0 when offset
//! + 1 was never proven to exist.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::index::{Index, Kind};
use crate::history::{Key, Offset, Op, OpType, Process, Seek};

/// One lag measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LagPoint {
    /// The poll's invocation time (ns).
    pub time: u64,
    /// The polling process.
    pub process: Process,
    /// The key.
    pub key: Key,
    /// The lag (ns).
    pub lag: u64,
}

/// Lag statistics over the polls before the final drain (the drain restarts every queue from offset 0, so its lags
/// only measure the replay).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LagSummary {
    /// Measurements counted.
    pub measurements: u64,
    /// The largest one.
    pub worst: Option<LagPoint>,
    /// Median lag (ns).
    pub p50: u64,
    /// 95th percentile (ns).
    pub p95: u64,
    /// 99th percentile (ns).
    pub p99: u64,
}

/// Every realtime-lag measurement of a history, in the order of the polls' completions (keys ascending within a poll).
pub fn realtime_lag(history: &[Op]) -> Vec<LagPoint> {
    compute(&Index::build(history)).into_iter().map(|(p, _)| p).collect()
}

/// Measurements with a flag: was the poll part of the final drain?
pub(crate) fn compute(ix: &Index) -> Vec<(LagPoint, bool)> {
    // key -> (offset, time) proofs, then sorted by offset with suffix minimum of time.
    let mut proofs: HashMap<Key, Vec<(Offset, u64)>> = HashMap::new();
    for p in &ix.ops {
        if !matches!(p.ty, OpType::Ok | OpType::Info) {
            continue;
        }
        let Some(t) = p.op.complete_time() else { continue };
        match &p.kind {
            // A scheduled or transactional send's offset is in a staging queue: no proof about k.
            Kind::Send(_) if !p.is_staged() => {
                for (k, recs) in p.sends_by_key() {
                    if let Some(o) = recs.iter().filter_map(|r| r.offset).max() {
                        proofs.entry(k).or_default().push((o, t));
                    }
                }
            }
            Kind::Poll { reads, .. } => {
                for (k, pairs) in reads {
                    if let Some(o) = pairs.iter().map(|&(o, _)| o).max() {
                        proofs.entry(*k).or_default().push((o, t));
                    }
                }
            }
            _ => {}
        }
    }
    for v in proofs.values_mut() {
        v.sort_unstable();
        for i in (0..v.len().saturating_sub(1)).rev() {
            v[i].1 = v[i].1.min(v[i + 1].1);
        }
    }
    let expired = |k: Key, i: i64| -> Option<u64> {
        let v = proofs.get(&k)?;
        let pos = v.partition_point(|&(o, _)| (o as i128) < i as i128);
        v.get(pos).map(|&(_, t)| t)
    };

    let mut state: HashMap<Process, BTreeMap<Key, i64>> = HashMap::new();
    let mut out = Vec::new();
    for p in &ix.ops {
        if p.ty != OpType::Ok {
            continue;
        }
        match &p.kind {
            Kind::Assign { assign, committed } => {
                let old = state.remove(&p.process()).unwrap_or_default();
                let new = assign
                    .keys
                    .iter()
                    .map(|&k| {
                        let at = match (assign.seek, committed) {
                            (Seek::Keep, _) => old.get(&k).copied().unwrap_or(-1),
                            (Seek::Committed, Some(c)) => c.iter().find(|(ck, _)| *ck == k).map(|&(_, o)| o as i64 - 1).unwrap_or(-1),
                            _ => -1,
                        };
                        (k, at)
                    })
                    .collect();
                state.insert(p.process(), new);
            }
            Kind::Poll { reads, .. } => {
                let offsets = state.entry(p.process()).or_default();
                for (k, pairs) in reads {
                    if let Some(o) = pairs.iter().map(|&(o, _)| o as i64).max() {
                        let e = offsets.entry(*k).or_insert(-1);
                        *e = (*e).max(o);
                    }
                }
                let Some(inv) = p.op.invoke_time() else { continue };
                let drain = ix.is_drain_op(p);
                for (&k, &off) in offsets.iter() {
                    let lag = expired(k, off.saturating_add(1)).map(|t| inv.saturating_sub(t)).unwrap_or(0);
                    out.push((LagPoint { time: inv, process: p.process(), key: k, lag }, drain));
                }
            }
            _ => {}
        }
    }
    out
}

pub(crate) fn summarize(points: &[(LagPoint, bool)]) -> LagSummary {
    let mut lags: Vec<&LagPoint> = points.iter().filter(|(_, d)| !d).map(|(p, _)| p).collect();
    if lags.is_empty() {
        return LagSummary::default();
    }
    // The earliest of the worst, for a stable example.
    let worst = lags.iter().copied().fold(None::<&LagPoint>, |best, p| if best.is_none_or(|b| p.lag > b.lag) { Some(p) } else { best });
    lags.sort_unstable_by_key(|p| p.lag);
    let q = |f: f64| lags[((lags.len() - 1) as f64 * f).round() as usize].lag;
    LagSummary { measurements: lags.len() as u64, worst: worst.copied(), p50: q(0.5), p95: q(0.95), p99: q(0.99) }
}
