//! The checker's result (`results.json`) and its plain-text summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value as Json;

use super::{Availability, CheckOptions, LagSummary, Notes, ScheduledSummary, TxnSummary, Validity, Verdict};
use crate::history::{Key, Offset, OpType};

/// One anomaly's outcome. Every anomaly of [`super::ANOMALIES`] is present, count 0 included.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnomalyReport {
    /// e.g. `lost-write`.
    pub name: String,
    /// Number of cases.
    pub count: u64,
    /// How it affects the result.
    pub verdict: Verdict,
    /// The first cases (at most [`CheckOptions::max_examples`]), as JSON objects. Operations appear as
    /// `{"index","process","type","f","time","node"}` references into the history.
    pub examples: Vec<Json>,
}

/// A distinct error of `fail`/`info` worker operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorCause {
    /// The operation's `f`.
    pub f: String,
    /// `fail` or `info`.
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// The `error` string (`never completed` for an invocation without completion).
    pub error: String,
    /// How many operations.
    pub count: u64,
}

/// The final drain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainSummary {
    /// `final-drain` operations (one per drain worker).
    pub ops: u64,
    /// How many ended ok.
    pub ok: u64,
    /// True if there was at least one and all ended ok.
    pub complete: bool,
    /// When the first was invoked (ns).
    pub start: Option<u64>,
}

/// Sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Lines in the history.
    pub history_ops: u64,
    /// Logical operations (invocation + completion pairs, standalone ops).
    pub operations: u64,
    /// Distinct keys sent to or polled.
    pub keys: u64,
    /// Ok send operations.
    pub ok_sends: u64,
    /// Ok poll operations.
    pub ok_polls: u64,
    /// Distinct messages acknowledged by ok sends.
    pub messages_acked: u64,
    /// Messages returned by ok polls (with repeats).
    pub messages_polled: u64,
}

/// Everything the checker found; serializes to `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckResult {
    /// `valid`, `invalid` or `unknown`.
    pub validity: Validity,
    /// Names of the bad anomalies that occurred.
    pub bad: Vec<String>,
    /// Why the result is unknown (also filled when invalid, for information).
    pub unknown_reasons: Vec<String>,
    /// Every anomaly, in [`super::ANOMALIES`] order.
    pub anomalies: Vec<AnomalyReport>,
    /// Logical operations by `f` and effective type (`ok`/`fail`/`info`; an invocation without completion is `info`).
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    /// Distinct errors of fail/info worker operations, most frequent first.
    pub error_causes: Vec<ErrorCause>,
    /// The final drain.
    pub final_drain: DrainSummary,
    /// Unseen messages per key (keys with none omitted).
    pub unseen_by_key: BTreeMap<Key, u64>,
    /// Final high watermark per key, as used by `ack-beyond-end` and `offset-gap`.
    pub high_watermarks: BTreeMap<Key, Offset>,
    /// Write availability and recovery after faults.
    pub availability: Availability,
    /// Realtime lag before the final drain.
    pub lag: LagSummary,
    /// Scheduled sends: counts, the early allowance and lateness figures.
    pub scheduled: ScheduledSummary,
    /// Transactional sends: counts of half sends, ENDs, check-backs and commits.
    pub txn: TxnSummary,
    /// Sizes.
    pub stats: Stats,
    /// Operations whose payload could not be parsed (skipped by the checks).
    pub malformed: Notes,
    /// Invocation/completion pairing problems.
    pub pairing: Notes,
    /// The options used.
    pub options: CheckOptions,
}

impl CheckResult {
    /// The report of one anomaly.
    pub fn anomaly(&self, name: &str) -> Option<&AnomalyReport> {
        self.anomalies.iter().find(|a| a.name == name)
    }

    /// The count of one anomaly (0 if unknown).
    pub fn count(&self, name: &str) -> u64 {
        self.anomaly(name).map_or(0, |a| a.count)
    }

    /// Exit code of the validity: 0 valid, 1 invalid, 2 unknown.
    pub fn exit_code(&self) -> i32 {
        self.validity.exit_code()
    }

    /// The plain-text summary: ops by type, drain, each anomaly with count, verdict and first example, error causes,
    /// availability and lag. It does not include the final `VALID?` line.
    pub fn summary_table(&self) -> String {
        let mut s = String::new();
        // Ops.
        let worker_fs = ["send", "poll", "assign", "commit", "crash", "final-drain"];
        let mut parts = Vec::new();
        for f in worker_fs {
            if let Some(types) = self.ops.get(f) {
                parts.push(format!("{f} {}", types_text(types)));
            }
        }
        let mut nemesis = 0;
        for (f, types) in &self.ops {
            if worker_fs.contains(&f.as_str()) {
                continue;
            }
            if is_nemesis_f(f) {
                nemesis += types.values().sum::<u64>();
            } else {
                parts.push(format!("{f} {}", types_text(types)));
            }
        }
        if nemesis > 0 {
            parts.push(format!("nemesis {}", group(nemesis)));
        }
        let _ = writeln!(s, "ops           {}", if parts.is_empty() { "none".to_owned() } else { parts.join("   ") });
        let drain = if self.final_drain.ops == 0 {
            "none".to_owned()
        } else if self.final_drain.complete {
            format!("complete ({} workers)", self.final_drain.ops)
        } else {
            format!("INCOMPLETE ({} of {} workers reached the end)", self.final_drain.ok, self.final_drain.ops)
        };
        let _ = writeln!(s, "final drain   {drain}");
        if self.malformed.count > 0 || self.pairing.count > 0 {
            let _ = writeln!(s, "input         {} malformed ops skipped, {} pairing problems", self.malformed.count, self.pairing.count);
        }

        // Anomalies.
        let _ = writeln!(s, "{:<28} {:>7}  {:<8} first example", "anomaly", "count", "verdict");
        for a in &self.anomalies {
            let verdict = if a.count == 0 {
                "ok"
            } else {
                match a.verdict {
                    Verdict::Bad => "BAD",
                    Verdict::Info => "info",
                    Verdict::Allowed => "allowed",
                }
            };
            let example = a.examples.first().map(render_example).unwrap_or_default();
            let line = format!("{:<28} {:>7}  {:<8} {}", a.name, group(a.count), verdict, example);
            let _ = writeln!(s, "{}", line.trim_end());
        }

        // Errors.
        if !self.error_causes.is_empty() {
            let shown: Vec<String> = self
                .error_causes
                .iter()
                .take(5)
                .map(|c| format!("{} {} \"{}\" x{}", c.f, c.op_type, clip(&c.error, 60), group(c.count)))
                .collect();
            let more = self.error_causes.len().saturating_sub(5);
            let _ = writeln!(s, "errors        {}{}", shown.join("; "), if more > 0 { format!("; {more} more") } else { String::new() });
        }

        // Availability.
        let av = &self.availability;
        let mut line = match &av.longest_outage {
            Some(o) => {
                let faults = if o.faults.is_empty() { String::new() } else { format!(" ({})", o.faults.join(", ")) };
                format!("longest send outage {} @ t={}{}", dur(o.duration), secs(o.start), faults)
            }
            None => "no ops".to_owned(),
        };
        let recovered = av.recoveries.iter().filter(|r| r.recovery.is_some()).count();
        if !av.recoveries.is_empty() {
            match (av.mean_recovery, av.max_recovery) {
                (Some(mean), Some(max)) => {
                    let _ = write!(
                        line,
                        "; mean recovery after heal {} (max {}, {} of {} faults)",
                        dur(mean),
                        dur(max),
                        group(recovered as u64),
                        group(av.recoveries.len() as u64)
                    );
                }
                _ => {
                    let _ = write!(line, "; no ok send after any of {} heals", av.recoveries.len());
                }
            }
        }
        let _ = writeln!(s, "availability  {line}");

        // Lag.
        let lag = match &self.lag.worst {
            Some(w) => format!(
                "worst realtime lag {} (proc {}, key {}, t={}); p50 {} p95 {} p99 {}",
                dur(w.lag),
                w.process,
                w.key,
                secs(w.time),
                dur(self.lag.p50),
                dur(self.lag.p95),
                dur(self.lag.p99)
            ),
            None => "no measurements".to_owned(),
        };
        let _ = writeln!(s, "lag           {lag}");

        // Scheduled sends.
        let sc = &self.scheduled;
        if !sc.sends.is_empty() {
            let clock = if sc.clock_windows == 0 {
                "no clock faults".to_owned()
            } else {
                let skew = if sc.skew.unknown {
                    "offsets unknown: ±300s assumed".to_owned()
                } else {
                    format!("offsets +{}ms/-{}ms", group(sc.skew.ahead_ms), group(sc.skew.behind_ms))
                };
                format!(
                    "up to {}ms for {} values near {} clock faults, {skew}",
                    group(sc.early_allowance_max_ms),
                    group(sc.widened),
                    group(sc.clock_windows)
                )
            };
            let _ = writeln!(
                s,
                "scheduled     sends {}; {} values read; early allowance {}ms ({clock})",
                types_text(&sc.sends),
                group(sc.values_read),
                group(sc.early_allowance_ms)
            );
            let l = &sc.lateness;
            let mut line = if l.measurements > 0 {
                format!(
                    "p50 {} p99 {} max {} (min {}) over {} values first read by consumers",
                    sdur(l.p50),
                    sdur(l.p99),
                    sdur(l.max),
                    sdur(l.min),
                    group(l.measurements)
                )
            } else {
                "no scheduled value read by consumers".to_owned()
            };
            if l.first_seen_by_drain > 0 {
                let _ = write!(line, "; {} first read by the drain (max {})", group(l.first_seen_by_drain), sdur(l.drain_max.unwrap_or(0)));
            }
            let _ = writeln!(s, "lateness      {line}");
        }
        let tx = &self.txn;
        if !tx.sends.is_empty() {
            let plans: Vec<String> = tx.plans.iter().map(|(p, n)| format!("{p} {}", group(*n))).collect();
            let _ = writeln!(
                s,
                "txn           half sends {} (plans: {}); commits attempted for {} values, acknowledged for {}; {} values read",
                types_text(&tx.sends),
                plans.join(", "),
                group(tx.commit_attempted),
                group(tx.commit_acked),
                group(tx.values_read)
            );
            let ends: Vec<String> = tx.ends.iter().map(|(e, n)| format!("{e} {}", group(*n))).collect();
            let checks: Vec<String> = tx.checks.iter().map(|(a, n)| format!("{a} {}", group(*n))).collect();
            let _ = writeln!(
                s,
                "txn ends      {}; check-backs answered {}",
                if ends.is_empty() { "none".to_owned() } else { ends.join(", ") },
                if checks.is_empty() { "none".to_owned() } else { checks.join(", ") }
            );
        }
        if !self.unknown_reasons.is_empty() {
            let _ = writeln!(s, "unknown       {}", self.unknown_reasons.join("; "));
        }
        s
    }
}

fn is_nemesis_f(f: &str) -> bool {
    f.starts_with("start-")
        || f.starts_with("stop-")
        || matches!(
            f,
            "kill"
                | "start"
                | "pause"
                | "resume"
                | "bump-clock"
                | "strobe-clock"
                | "reset-clock"
                | "heal"
                | "transfer-leader"
                | "truncate"
                | "bitflip"
        )
}

fn types_text(types: &BTreeMap<String, u64>) -> String {
    let total: u64 = types.values().sum();
    let get = |t: &str| types.get(t).copied().unwrap_or(0);
    if get("ok") == total {
        return group(total);
    }
    let parts: Vec<String> = ["ok", "info", "fail"].iter().filter(|t| get(t) > 0).map(|t| format!("{t} {}", group(get(t)))).collect();
    format!("{} ({})", group(total), parts.join(" | "))
}

/// `24012` → `24 012`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits.as_bytes().rchunks(3).rev().map(|c| std::str::from_utf8(c).unwrap_or("?")).collect();
    groups.join(" ")
}

/// Nanoseconds as a short duration.
fn dur(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.1}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1}µs", ns as f64 / 1e3)
    } else {
        format!("{ns}ns")
    }
}

/// Signed nanoseconds as a short duration.
fn sdur(ns: i64) -> String {
    if ns < 0 {
        format!("-{}", dur(ns.unsigned_abs()))
    } else {
        dur(ns as u64)
    }
}

/// A time since the start, in seconds.
fn secs(ns: u64) -> String {
    format!("{:.1}s", ns as f64 / 1e9)
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Is this JSON object an operation reference?
fn as_op_ref(v: &Json) -> Option<String> {
    let m = v.as_object()?;
    let index = m.get("index")?.as_u64()?;
    let ty = m.get("type")?.as_str()?;
    m.get("f")?;
    let node = m.get("node").and_then(Json::as_str).map(|n| format!(", {n}")).unwrap_or_default();
    Some(format!("#{index} ({ty}{node})"))
}

fn render_value(v: &Json) -> String {
    if let Some(r) = as_op_ref(v) {
        return r;
    }
    match v {
        Json::String(s) => s.clone(),
        Json::Array(a) if a.iter().all(|x| as_op_ref(x).is_some()) && !a.is_empty() => {
            format!("[{}]", a.iter().filter_map(as_op_ref).collect::<Vec<_>>().join(" "))
        }
        Json::Object(m) if m.contains_key("op") => {
            // {"offset": o, "op": ref}
            let rest: Vec<String> =
                m.iter().filter(|(k, _)| k.as_str() != "op").map(|(k, v)| format!("{}={}", short(k), render_value(v))).collect();
            format!("{} {}", m.get("op").map(render_value).unwrap_or_default(), rest.join(" "))
        }
        other => other.to_string(),
    }
}

fn short(k: &str) -> &str {
    match k {
        "key" => "k",
        "value" => "v",
        other => other,
    }
}

/// One line for an example: scalar fields first (key, value, offset...), operation references last.
fn render_example(e: &Json) -> String {
    let Some(m) = e.as_object() else { return clip(&e.to_string(), 110) };
    let priority = ["kind", "group", "key", "value", "values", "offset", "offsets", "count", "delta", "from", "to", "missing"];
    let mut fields: Vec<(usize, &String, &Json)> = m
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let is_ref = as_op_ref(v).is_some() || matches!(v, Json::Array(a) if !a.is_empty() && a.iter().all(|x| as_op_ref(x).is_some()));
            let rank = if is_ref { 1000 } else { priority.iter().position(|p| p == k).unwrap_or(100) };
            (rank, k, v)
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let parts: Vec<String> = fields.iter().map(|(_, k, v)| format!("{}={}", short(k), render_value(v))).collect();
    clip(&parts.join(" "), 140)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_helpers() {
        assert_eq!(group(24012), "24 012");
        assert_eq!(group(7), "7");
        assert_eq!(group(1_000_000), "1 000 000");
        assert_eq!(dur(7_200_000_000), "7.2s");
        assert_eq!(dur(1_500_000), "1.5ms");
        let e = serde_json::json!({"key": 2, "value": 1047, "offsets": [88, 91], "count": 2,
            "writer": {"index": 12345, "process": 3, "type": "info", "f": "send", "node": "n1"}});
        assert_eq!(render_example(&e), "k=2 v=1047 offsets=[88,91] count=2 writer=#12345 (info, n1)");
    }
}
