//! Fault windows (from the nemesis ops), write availability (the longest stretch without an acknowledged send) and
//! recovery after each fault ends.
//!
//! A fault window opens at a `start-*` (`start-partition` → family `partition`, `start-loss` → `loss`, ...), `kill`,
//! `pause`, `bump-clock` or `strobe-clock` (family `clock`) op and closes at the matching `stop-*`, `start` (after a
//! kill), `resume` or `reset-clock`, or at a `heal`, which closes every open window. A second start of an already open
//! family is ignored; windows still open at the end have no end. Other nemesis functions (`transfer-leader`,
//! `truncate`, ...) are instantaneous and open no window. Nemesis `invoke` ops are ignored (only the `info` that
//! records the fault taking effect counts).

use serde::Serialize;
use serde_json::Value as Json;

use super::anomalies::is_ok_send;
use super::index::{Index, Kind};
use crate::history::{Op, OpType, Process};

/// A period during which one fault family was active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultWindow {
    /// `partition`, `kill`, `pause`, `clock`, `loss`, `slow`, ...
    pub family: String,
    /// The family plus the fault's target as recorded in the start op's value (`spec`, `target`, `node(s)`,
    /// `leader`), e.g. `partition leader n1`.
    pub label: String,
    /// The `f` that opened it.
    pub start_f: String,
    /// When it opened (ns).
    pub start: u64,
    /// The `f` that closed it, if any.
    pub end_f: Option<String>,
    /// When it closed (ns), if it did.
    pub end: Option<u64>,
}

/// The fault family a nemesis `f` opens, if it opens one.
fn opens(f: &str) -> Option<String> {
    match f {
        "kill" => Some("kill".into()),
        "pause" => Some("pause".into()),
        "bump-clock" | "strobe-clock" => Some("clock".into()),
        "start" => None,
        _ => f.strip_prefix("start-").map(str::to_owned),
    }
}

/// What a nemesis `f` closes: `Some(None)` = everything (heal), `Some(Some(family))` = that family.
fn closes(f: &str) -> Option<Option<String>> {
    match f {
        "heal" => Some(None),
        "start" => Some(Some("kill".into())),
        "resume" => Some(Some("pause".into())),
        "reset-clock" => Some(Some("clock".into())),
        _ => f.strip_prefix("stop-").map(|fam| Some(fam.to_owned())),
    }
}

fn label(family: &str, value: &Json) -> String {
    let mut parts = vec![family.to_owned()];
    let text = |v: &Json| -> Option<String> {
        match v {
            Json::String(s) => Some(s.clone()),
            Json::Array(a) => {
                let s: Vec<String> = a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect();
                (!s.is_empty()).then(|| s.join(","))
            }
            _ => None,
        }
    };
    match value {
        Json::Object(m) => {
            for key in ["spec", "target", "targets", "leader", "node", "nodes"] {
                if let Some(t) = m.get(key).and_then(text) {
                    if !parts.contains(&t) {
                        parts.push(t);
                    }
                }
            }
        }
        other => {
            if let Some(t) = text(other) {
                parts.push(t);
            }
        }
    }
    parts.join(" ")
}

/// The fault windows of a history, in order of their start.
pub fn fault_windows(history: &[Op]) -> Vec<FaultWindow> {
    let mut windows: Vec<FaultWindow> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for op in history {
        if op.process != Process::Nemesis || op.op_type == OpType::Invoke {
            continue;
        }
        if let Some(what) = closes(&op.f) {
            open.retain(|&i| {
                let w = &mut windows[i];
                if what.as_deref().is_none_or(|fam| fam == w.family) {
                    w.end = Some(op.time);
                    w.end_f = Some(op.f.clone());
                    false
                } else {
                    true
                }
            });
        } else if let Some(family) = opens(&op.f) {
            if open.iter().any(|&i| windows[i].family == family) {
                continue;
            }
            let value = op.value.to_value().unwrap_or(Json::Null);
            open.push(windows.len());
            windows.push(FaultWindow {
                label: label(&family, &value),
                family,
                start_f: op.f.clone(),
                start: op.time,
                end_f: None,
                end: None,
            });
        }
    }
    windows
}

/// The longest stretch without an acknowledged send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outage {
    /// Start (ns): the previous ok send's completion, or the first op of the history.
    pub start: u64,
    /// End (ns): the next ok send's completion, or the end of the last send (completion, else invocation) or the
    /// start of the final drain, whichever is earlier (the end of the history without either). Sends stop before
    /// the drain when the workload waits for scheduled messages to come due; that wait is no outage.
    pub end: u64,
    /// `end - start` (ns).
    pub duration: u64,
    /// Distinct labels of the fault windows overlapping it.
    pub faults: Vec<String>,
}

/// Time from the end of a fault window to the first ok send that completed after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// The window's label.
    pub fault: String,
    /// When the window closed (ns).
    pub healed_at: u64,
    /// When the first ok send completed at or after that (ns), if any did.
    pub first_ok_send: Option<u64>,
    /// `first_ok_send - healed_at` (ns).
    pub recovery: Option<u64>,
    /// Another fault started (or was still running) between the heal and that first ok send, so the time is
    /// not this fault's recovery; such entries are left out of the mean and the max.
    pub overlapped: bool,
}

/// Availability of writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Availability {
    /// Ok sends completed before the final drain (whole history without one).
    pub ok_sends: u64,
    /// The longest stretch without an ok send, over [first op, the end of the last send or the drain start].
    pub longest_outage: Option<Outage>,
    /// One entry per closed fault window.
    pub recoveries: Vec<Recovery>,
    /// Mean of the recoveries that happened, overlapped ones left out (ns).
    pub mean_recovery: Option<u64>,
    /// Largest recovery, overlapped ones left out (ns).
    pub max_recovery: Option<u64>,
    /// All fault windows.
    pub fault_windows: Vec<FaultWindow>,
}

pub(crate) fn compute(ix: &Index) -> Availability {
    let windows = fault_windows(ix.history);
    let (Some(first), Some(last)) = (ix.history.iter().map(|o| o.time).min(), ix.history.iter().map(|o| o.time).max()) else {
        return Availability { fault_windows: windows, ..Availability::default() };
    };
    let last_send =
        ix.ops.iter().filter(|p| matches!(p.kind, Kind::Send(_))).filter_map(|p| p.op.complete_time().or(p.op.invoke_time())).max();
    let end = ix.drain.start.unwrap_or(last).min(last_send.unwrap_or(last)).max(first);
    let mut all_oks: Vec<u64> = ix.ops.iter().filter(|p| is_ok_send(p)).filter_map(|p| p.op.complete_time()).collect();
    all_oks.sort_unstable();
    let oks: Vec<u64> = all_oks.iter().copied().filter(|&t| t >= first && t <= end).collect();

    let mut best: Option<(u64, u64)> = None;
    let mut prev = first;
    for &t in oks.iter().chain(std::iter::once(&end)) {
        if best.is_none_or(|(s, e)| t - prev > e - s) {
            best = Some((prev, t));
        }
        prev = t;
    }
    let longest_outage = best.map(|(s, e)| Outage {
        start: s,
        end: e,
        duration: e - s,
        faults: windows.iter().filter(|w| w.start < e && w.end.is_none_or(|we| we > s)).fold(Vec::new(), |mut acc, w| {
            if !acc.contains(&w.label) {
                acc.push(w.label.clone());
            }
            acc
        }),
    });

    let recoveries: Vec<Recovery> = windows
        .iter()
        .filter_map(|w| w.end.map(|healed| (w, healed)))
        .map(|(w, healed)| {
            let i = all_oks.partition_point(|&t| t < healed);
            let first_ok = all_oks.get(i).copied();
            let until = first_ok.unwrap_or(end);
            let overlapped = windows.iter().any(|o| !std::ptr::eq(o, w) && o.start < until && o.end.is_none_or(|oe| oe > healed));
            Recovery {
                fault: w.label.clone(),
                healed_at: healed,
                first_ok_send: first_ok,
                recovery: first_ok.map(|t| t - healed),
                overlapped,
            }
        })
        .collect();
    let done: Vec<u64> = recoveries.iter().filter(|r| !r.overlapped).filter_map(|r| r.recovery).collect();
    let mean_recovery = (!done.is_empty()).then(|| (done.iter().map(|&d| u128::from(d)).sum::<u128>() / done.len() as u128) as u64);
    Availability {
        ok_sends: oks.len() as u64,
        longest_outage,
        recoveries,
        mean_recovery,
        max_recovery: done.iter().copied().max(),
        fault_windows: windows,
    }
}
