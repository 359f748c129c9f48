//! The anomaly checks. Each one walks the shared [`Index`] once (plus sorting), so the whole checker stays
//! O(n log n).
//!
//! Dense indices: a poll's read `(offset, value)` is placed by the dense index of its *offset*; a sent message by the
//! index of its own offset when the version order holds it there, otherwise by the first index where its value
//! appears (Jepsen's `by-value`). Without duplicates or conflicting offsets this is exactly Jepsen's value index; with
//! them it avoids follow-on skip/nonmonotonic reports for what `duplicate`/`inconsistent-offsets` already report.
//! Whenever an index is unknown the delta is taken as 1, as in Jepsen.
//!
//! Scheduled sends are left out of every check that rests on a send's acknowledged offset or on the order sends
//! land in (their offset is a staging offset, and they land after their delay): `unseen`, `ack-beyond-end`,
//! `realtime-send-order`, `nonmonotonic-send` and the in-batch send checks, `stale-read`; a scheduled value read at
//! two offsets is `scheduled-duplicate`, not `duplicate`. Their own checks are in `scheduled.rs`. Transactional
//! (half) sends are left out of the same checks, for the same reasons; a transactional value at two offsets is
//! `txn-duplicate`, and one read although its half send failed is `txn-aborted-visible`, not `G1a` (`txn.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value as Json};

use super::index::{pair_json, Index, Kind, POp};
use crate::history::{Key, Offset, OpType, Seek, Value};

/// Maximum number of values listed in a `skipped` field of an example.
const MAX_LISTED: usize = 16;

/// Counts and first examples per anomaly name.
pub(crate) struct Findings {
    max_examples: usize,
    found: HashMap<&'static str, (u64, Vec<Json>)>,
}

impl Findings {
    pub fn new(max_examples: usize) -> Findings {
        Findings { max_examples, found: HashMap::new() }
    }

    /// Records one case; the example is only built while fewer than `max_examples` are kept.
    pub fn add(&mut self, name: &'static str, example: impl FnOnce() -> Json) {
        let e = self.found.entry(name).or_default();
        e.0 += 1;
        if e.1.len() < self.max_examples {
            e.1.push(example());
        }
    }

    /// Count and examples of an anomaly.
    pub fn take(&mut self, name: &str) -> (u64, Vec<Json>) {
        self.found.remove(name).unwrap_or_default()
    }
}

/// `inconsistent-offsets` and `duplicate`, from the version orders.
pub(crate) fn version_order(ix: &Index, out: &mut Findings) {
    for (&k, log) in &ix.logs {
        for (i, vs) in log.values.iter().enumerate() {
            if vs.len() >= 2 {
                out.add("inconsistent-offsets", || json!({"key": k, "offset": log.offsets[i], "index": i, "values": vs}));
            }
        }
        let mut dups: Vec<(usize, Value)> = log
            .first_index
            .iter()
            .filter(|(v, &fi)| {
                log.last_index.get(v).is_some_and(|&li| li != fi) && !ix.scheduled.contains_key(v) && !ix.txn.contains_key(v)
            })
            .map(|(&v, &fi)| (fi, v))
            .collect();
        if dups.is_empty() {
            continue;
        }
        dups.sort_unstable();
        let wanted: HashSet<Value> = dups.iter().map(|&(_, v)| v).collect();
        let mut offsets: HashMap<Value, Vec<Offset>> = HashMap::new();
        for (i, vs) in log.values.iter().enumerate() {
            for v in vs {
                if wanted.contains(v) {
                    offsets.entry(*v).or_default().push(log.offsets[i]);
                }
            }
        }
        for (_, v) in dups {
            let offs = offsets.get(&v).cloned().unwrap_or_default();
            let writer = ix.writer_of.get(&(k, v)).map(|&w| ix.ops[w].reference());
            out.add("duplicate", || json!({"key": k, "value": v, "count": offs.len(), "offsets": offs, "writer": writer}));
        }
    }
}

/// `G1a`, `phantom-read` and `wrong-key`: what polls returned versus what was sent. Each is counted once per
/// distinct (key, value); the example names the first poll that returned it.
pub(crate) fn reads(ix: &Index, out: &mut Findings) {
    let mut seen: HashSet<(Key, Value)> = HashSet::new();
    for p in &ix.ops {
        for (k, pairs) in p.reads() {
            for &(o, v) in pairs {
                let k = *k;
                match ix.attempted.get(&v) {
                    None => {
                        if seen.insert((k, v)) {
                            out.add("phantom-read", || json!({"key": k, "offset": o, "value": v, "reader": p.reference()}));
                        }
                    }
                    Some(a) if !a.keys.contains(&k) => {
                        if seen.insert((k, v)) {
                            out.add("wrong-key", || {
                                json!({"key": k, "offset": o, "value": v, "sent-to": a.keys, "writer": ix.ops[a.op].reference(), "reader": p.reference()})
                            });
                        }
                    }
                    // A transactional value has its own checks (`txn.rs`): a failed half send read is
                    // `txn-aborted-visible`.
                    Some(_) if ix.txn.contains_key(&v) => {}
                    Some(_) => {
                        if p.ty == OpType::Ok {
                            if let Some(&w) = ix.writer_of.get(&(k, v)) {
                                if ix.ops[w].ty == OpType::Fail && seen.insert((k, v)) {
                                    out.add("G1a", || {
                                        json!({"key": k, "offset": o, "value": v, "writer": ix.ops[w].reference(), "reader": p.reference()})
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `lost-write` (Jepsen's first/last-index bound): some ok poll of k reached dense index b, so every
/// must-have-committed message whose last appearance is at or below b should have been read by some ok poll.
pub(crate) fn lost_write(ix: &Index, out: &mut Findings) {
    // Per key: the highest first-index among values read by ok polls, and that value.
    let mut bound: BTreeMap<Key, (usize, Value)> = BTreeMap::new();
    for &(k, v) in ix.ok_reader.keys() {
        if let Some(&fi) = ix.logs.get(&k).and_then(|l| l.first_index.get(&v)) {
            let b = bound.entry(k).or_insert((fi, v));
            if (fi, v) > *b {
                *b = (fi, v);
            }
        }
    }
    for (k, (b, bv)) in bound {
        let log = &ix.logs[&k];
        let mut lost: Vec<(usize, Value, usize)> = log
            .last_index
            .iter()
            .filter(|(&v, &li)| li <= b && !ix.ok_reader.contains_key(&(k, v)))
            .filter_map(|(&v, _)| ix.writer_of.get(&(k, v)).filter(|&&w| ix.mhc[w]).map(|&w| (log.first_index[&v], v, w)))
            .collect();
        lost.sort_unstable();
        let max_read = ix.ok_reader.get(&(k, bv)).map(|&r| ix.ops[r].reference());
        for (i, v, w) in lost {
            out.add("lost-write", || {
                json!({"key": k, "value": v, "index": i, "offset": log.offsets[i], "max-read-index": b, "writer": ix.ops[w].reference(), "max-read": max_read})
            });
        }
    }
}

/// `unseen`: messages of ok sends that no ok poll ever returned. Returns the count per key.
pub(crate) fn unseen(ix: &Index, out: &mut Findings) -> BTreeMap<Key, u64> {
    let mut msgs: Vec<(Key, Option<Offset>, Value, usize)> = Vec::new();
    let mut seen = HashSet::new();
    for (id, s) in ix.ok_send_messages() {
        if !ix.ok_reader.contains_key(&(s.key, s.value)) && seen.insert((s.key, s.value)) {
            msgs.push((s.key, s.offset, s.value, id));
        }
    }
    msgs.sort_unstable();
    let mut per_key = BTreeMap::new();
    for (k, o, v, w) in msgs {
        *per_key.entry(k).or_insert(0) += 1;
        out.add("unseen", || json!({"key": k, "offset": o, "value": v, "writer": ix.ops[w].reference()}));
    }
    per_key
}

/// Where a consumer process stands on a key: the dense index of the last thing it read (or a virtual index set by a
/// seek), for the cross-op poll checks.
#[derive(Clone, Copy)]
struct Last {
    index: i64,
    offset: Option<Offset>,
    value: Option<Value>,
    op: usize,
    seek: Option<Seek>,
}

/// `poll-skip` and `nonmonotonic-poll`: per process, the first value an op reads from k must directly follow the last
/// value the process's previous ok poll read from k. Assign semantics: keys not in an ok assign are forgotten;
/// `keep` keeps the position; `beginning` expects the next read at the first index of the log; `committed` (with
/// the committed offset c recorded in `extra.committed`, absent = 0) expects it at the first known offset ≥ c. An
/// info/fail assign forgets every key it does not keep with `keep` (it may or may not have happened). Polls of any
/// type are checked; only ok polls move the position.
pub(crate) fn poll_skip(ix: &Index, out: &mut Findings) {
    for ids in ix.by_process.values() {
        let mut last: HashMap<Key, Last> = HashMap::new();
        for &id in ids {
            let p = &ix.ops[id];
            match &p.kind {
                Kind::Assign { assign, committed } => {
                    last.retain(|k, _| assign.keys.contains(k));
                    for &k in &assign.keys {
                        if p.ty != OpType::Ok {
                            if assign.seek != Seek::Keep {
                                last.remove(&k);
                            }
                            continue;
                        }
                        let log = ix.logs.get(&k);
                        match (assign.seek, committed) {
                            (Seek::Keep, _) => {}
                            (Seek::Beginning, _) => {
                                last.insert(k, Last { index: -1, offset: None, value: None, op: id, seek: Some(Seek::Beginning) });
                            }
                            (Seek::Committed, Some(c)) => {
                                let off = c.iter().find(|(ck, _)| *ck == k).map(|&(_, o)| o).unwrap_or(0);
                                let at = log.map(|l| l.insertion_index(off)).unwrap_or(0) as i64;
                                last.insert(k, Last { index: at - 1, offset: Some(off), value: None, op: id, seek: Some(Seek::Committed) });
                            }
                            (Seek::Committed, None) => {
                                last.remove(&k);
                            }
                        }
                    }
                }
                Kind::Poll { reads, .. } => {
                    for (k, pairs) in reads {
                        let (Some(&(o1, v1)), Some(&(ol, vl)), Some(log)) = (pairs.first(), pairs.last(), ix.logs.get(k)) else { continue };
                        let Some(i1) = log.index_of_offset(o1) else { continue };
                        if let Some(prev) = last.get(k) {
                            let delta = i1 as i64 - prev.index;
                            let prev_op = ix.ops[prev.op].reference();
                            let after = prev.seek.map(|s| format!("seek {}", seek_name(s)));
                            if delta > 1 {
                                let from = (prev.index + 1).max(0) as usize;
                                out.add("poll-skip", || {
                                    json!({"key": *k, "delta": delta, "skipped": log.values_between(from, i1, MAX_LISTED),
                                           "from": pair_json(prev.offset, prev.value), "to": pair_json(Some(o1), Some(v1)),
                                           "after": after, "ops": [prev_op, p.reference()]})
                                });
                            } else if delta < 1 {
                                out.add("nonmonotonic-poll", || {
                                    json!({"key": *k, "delta": delta, "values": [prev.value, v1], "offsets": [prev.offset, o1],
                                           "after": after, "ops": [prev_op, p.reference()]})
                                });
                            }
                        }
                        if p.ty == OpType::Ok {
                            if let Some(il) = log.index_of_offset(ol) {
                                last.insert(*k, Last { index: il as i64, offset: Some(ol), value: Some(vl), op: id, seek: None });
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn seek_name(s: Seek) -> &'static str {
    match s {
        Seek::Keep => "keep",
        Seek::Committed => "committed",
        Seek::Beginning => "beginning",
    }
}

/// `int-poll-skip`, `int-nonmonotonic-poll` (dense indices of consecutive reads of one key within one poll op) and
/// the in-batch half of `offset-gap` (consecutive raw offsets more than 1 apart).
pub(crate) fn int_poll(ix: &Index, out: &mut Findings) {
    for p in &ix.ops {
        for (k, pairs) in p.reads() {
            let Some(log) = ix.logs.get(k) else { continue };
            for w in pairs.windows(2) {
                let ((o1, v1), (o2, v2)) = (w[0], w[1]);
                if let (Some(i1), Some(i2)) = (log.index_of_offset(o1), log.index_of_offset(o2)) {
                    let delta = i2 as i64 - i1 as i64;
                    if delta > 1 {
                        out.add("int-poll-skip", || {
                            json!({"key": *k, "values": [v1, v2], "offsets": [o1, o2], "delta": delta,
                                   "skipped": log.values_between(i1 + 1, i2, MAX_LISTED), "op": p.reference()})
                        });
                    } else if delta < 1 {
                        out.add(
                            "int-nonmonotonic-poll",
                            || json!({"key": *k, "values": [v1, v2], "offsets": [o1, o2], "delta": delta, "op": p.reference()}),
                        );
                    }
                }
                if o2 > o1.saturating_add(1) {
                    out.add(
                        "offset-gap",
                        || json!({"kind": "poll-batch", "key": *k, "offsets": [o1, o2], "missing": o2 - o1 - 1, "op": p.reference()}),
                    );
                }
            }
        }
    }
}

/// `int-send-skip` and `int-nonmonotonic-send` (consecutive messages to one key within one send op, any completion
/// type) and `nonmonotonic-send` (per process over ok/info sends: the first message an op sends to k must come
/// after the last message the process's previous send to k; ok/info assigns forget keys they do not list).
pub(crate) fn sends(ix: &Index, out: &mut Findings) {
    for p in &ix.ops {
        if !matches!(p.kind, Kind::Send(_)) || p.is_staged() {
            continue;
        }
        for (k, recs) in p.sends_by_key() {
            let Some(log) = ix.logs.get(&k) else { continue };
            for w in recs.windows(2) {
                let (Some(i1), Some(i2)) = (log.send_index(&w[0]), log.send_index(&w[1])) else { continue };
                let delta = i2 as i64 - i1 as i64;
                if delta > 1 {
                    out.add("int-send-skip", || {
                        json!({"key": k, "values": [w[0].value, w[1].value], "offsets": [w[0].offset, w[1].offset], "delta": delta,
                               "skipped": log.values_between(i1 + 1, i2, MAX_LISTED), "op": p.reference()})
                    });
                } else if delta < 1 {
                    out.add("int-nonmonotonic-send", || {
                        json!({"key": k, "values": [w[0].value, w[1].value], "offsets": [w[0].offset, w[1].offset], "delta": delta, "op": p.reference()})
                    });
                }
            }
        }
    }

    for ids in ix.by_process.values() {
        // Key -> (dense index of the last message sent by the previous sending op, that message, op id).
        let mut last: HashMap<Key, (Option<usize>, Value, usize)> = HashMap::new();
        for &id in ids {
            let p = &ix.ops[id];
            if !matches!(p.ty, OpType::Ok | OpType::Info) || p.is_staged() {
                continue;
            }
            match &p.kind {
                Kind::Assign { assign, .. } => last.retain(|k, _| assign.keys.contains(k)),
                Kind::Send(_) => {
                    for (k, recs) in p.sends_by_key() {
                        let log = ix.logs.get(&k);
                        let (first, lastrec) = (recs[0], recs[recs.len() - 1]);
                        if let Some(&(Some(i), v, prev)) = last.get(&k) {
                            if let Some(i2) = log.and_then(|l| l.send_index(&first)) {
                                let delta = i2 as i64 - i as i64;
                                if delta < 1 {
                                    out.add("nonmonotonic-send", || {
                                        json!({"key": k, "values": [v, first.value], "delta": delta, "ops": [ix.ops[prev].reference(), p.reference()]})
                                    });
                                }
                            }
                        }
                        last.insert(k, (log.and_then(|l| l.send_index(&lastrec)), lastrec.value, id));
                    }
                }
                _ => {}
            }
        }
    }
}

/// `realtime-send-order`: ok sends A, B to one key with A completed before B was invoked, but A's highest offset
/// above B's lowest. Counted once per B (the example names the A with the highest offset).
pub(crate) fn realtime_send_order(ix: &Index, out: &mut Findings) {
    /// (min offset, max offset, invoke time, complete time, op)
    type Sent = (Offset, Offset, Option<u64>, u64, usize);
    let mut per_key: BTreeMap<Key, Vec<Sent>> = BTreeMap::new();
    for (id, p) in ix.ops.iter().enumerate() {
        if p.ty != OpType::Ok || !matches!(p.kind, Kind::Send(_)) || p.is_staged() {
            continue;
        }
        let Some(done) = p.op.complete_time() else { continue };
        for (k, recs) in p.sends_by_key() {
            let offs: Vec<Offset> = recs.iter().filter_map(|r| r.offset).collect();
            if let (Some(&lo), Some(&hi)) = (offs.iter().min(), offs.iter().max()) {
                per_key.entry(k).or_default().push((lo, hi, p.op.invoke_time(), done, id));
            }
        }
    }
    for (k, mut sends) in per_key {
        let mut by_invoke: Vec<(u64, Offset, usize)> = sends.iter().filter_map(|s| s.2.map(|t| (t, s.0, s.4))).collect();
        by_invoke.sort_unstable();
        sends.sort_unstable_by_key(|s| (s.3, s.4));
        let mut next = 0;
        let mut best: Option<(Offset, usize)> = None;
        for (t, lo, b) in by_invoke {
            while next < sends.len() && sends[next].3 < t {
                if best.is_none_or(|(hi, _)| sends[next].1 > hi) {
                    best = Some((sends[next].1, sends[next].4));
                }
                next += 1;
            }
            if let Some((hi, a)) = best {
                if hi > lo {
                    out.add("realtime-send-order", || {
                        json!({"key": k, "earlier": {"offset": hi, "op": ix.ops[a].reference()}, "later": {"offset": lo, "op": ix.ops[b].reference()}})
                    });
                }
            }
        }
    }
}

/// The final high watermark of a key and the time before which acknowledged sends are held to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hw {
    /// One past the last offset the queue holds at the end.
    pub hw: Offset,
    /// Sends completed before this time must lie below `hw`.
    pub before: u64,
}

/// Final high watermarks. For a key some ok poll of the final drain (an ok poll invoked at or after the first
/// `final-drain` invocation) saw: the larger of the highest `extra.max` such polls reported and one past the highest
/// offset they returned; sends completed before the last such poll was invoked are held to it. If the drain completed
/// but none of its polls mentioned a key: one past the highest offset any ok poll returned, for sends completed
/// before the drain started. Without a drain there are none.
pub(crate) fn final_high_watermarks(ix: &Index) -> BTreeMap<Key, Hw> {
    let mut hws: BTreeMap<Key, Hw> = BTreeMap::new();
    let Some(start) = ix.drain.start else { return hws };
    let mut bump = |k: Key, hw: Offset, t: u64| {
        let e = hws.entry(k).or_insert(Hw { hw, before: t });
        e.hw = e.hw.max(hw);
        e.before = e.before.max(t);
    };
    for p in &ix.ops {
        if p.ty != OpType::Ok || !ix.is_drain_op(p) {
            continue;
        }
        let Kind::Poll { reads, extra } = &p.kind else { continue };
        let t = p.op.invoke_time().or(p.op.complete_time()).unwrap_or(start);
        for &(k, m) in &extra.max {
            bump(k, m, t);
        }
        for (k, pairs) in reads {
            if let Some(o) = pairs.iter().map(|&(o, _)| o).max() {
                bump(*k, o.saturating_add(1), t);
            }
        }
    }
    if ix.drain.complete() {
        let mut fallback: BTreeMap<Key, Offset> = BTreeMap::new();
        for p in &ix.ops {
            if p.ty != OpType::Ok {
                continue;
            }
            for (k, pairs) in p.reads() {
                if let Some(o) = pairs.iter().map(|&(o, _)| o).max() {
                    let e = fallback.entry(*k).or_insert(0);
                    *e = (*e).max(o.saturating_add(1));
                }
            }
        }
        for (k, hw) in fallback {
            hws.entry(k).or_insert(Hw { hw, before: start });
        }
    }
    hws
}

/// `ack-beyond-end`: an ok send's offset at or above its queue's final high watermark (see
/// [`final_high_watermarks`]): the broker acknowledged a message the log no longer holds at the end.
pub(crate) fn ack_beyond_end(ix: &Index, hws: &BTreeMap<Key, Hw>, out: &mut Findings) {
    for (id, s) in ix.ok_send_messages() {
        let (Some(o), Some(hw)) = (s.offset, hws.get(&s.key)) else { continue };
        let Some(done) = ix.ops[id].op.complete_time() else { continue };
        if done < hw.before && o >= hw.hw {
            out.add(
                "ack-beyond-end",
                || json!({"key": s.key, "value": s.value, "offset": o, "high-watermark": hw.hw, "writer": ix.ops[id].reference()}),
            );
        }
    }
}

/// The final-drain half of `offset-gap`: after a complete drain, offsets in `[0, high watermark)` that no ok poll
/// ever returned, reported as ranges (one case per range).
pub(crate) fn final_holes(ix: &Index, hws: &BTreeMap<Key, Hw>, out: &mut Findings) {
    if !ix.drain.complete() {
        return;
    }
    let mut polled: BTreeMap<Key, Vec<Offset>> = BTreeMap::new();
    for p in &ix.ops {
        if p.ty == OpType::Ok {
            for (k, pairs) in p.reads() {
                polled.entry(*k).or_default().extend(pairs.iter().map(|&(o, _)| o));
            }
        }
    }
    for (&k, hw) in hws {
        let mut offs = polled.remove(&k).unwrap_or_default();
        offs.sort_unstable();
        offs.dedup();
        let mut expect: Offset = 0;
        for o in offs.into_iter().take_while(|&o| o < hw.hw).chain(std::iter::once(hw.hw)) {
            if o > expect {
                let (from, to) = (expect, o);
                out.add(
                    "offset-gap",
                    || json!({"kind": "never-polled", "key": k, "from": from, "to": to, "missing": to - from, "high-watermark": hw.hw}),
                );
            }
            expect = o.saturating_add(1);
        }
    }
}

/// `committed-offset-regression`, per consumer group and key: (1) an ok `assign` with `seek: committed`, invoked after
/// an ok commit of offset m had completed, read a committed offset c < m; (2) two such assigns, the first completed
/// before the second was invoked, read c1 then c2 < c1 (committed offsets observed out of order). Counted once per
/// (assign, key).
pub(crate) fn committed_regression(ix: &Index, out: &mut Findings) {
    type GK = (String, Key);
    let mut commits: BTreeMap<GK, Vec<(u64, Offset, usize)>> = BTreeMap::new();
    /// (invoke time, complete time, committed offset read, op)
    type Read = (Option<u64>, u64, Offset, usize);
    let mut reads: BTreeMap<GK, Vec<Read>> = BTreeMap::new();
    for (id, p) in ix.ops.iter().enumerate() {
        if p.ty != OpType::Ok {
            continue;
        }
        match &p.kind {
            Kind::Commit(c) => {
                let Some(t) = p.op.complete_time() else { continue };
                for &(k, o) in &c.offsets {
                    commits.entry((c.group.clone(), k)).or_default().push((t, o, id));
                }
            }
            Kind::Assign { assign, committed: Some(cs) } if assign.seek == Seek::Committed => {
                let Some(t) = p.op.complete_time() else { continue };
                let group = assign.group.clone().unwrap_or_default();
                for &k in &assign.keys {
                    let c = cs.iter().find(|(ck, _)| *ck == k).map(|&(_, o)| o).unwrap_or(0);
                    reads.entry((group.clone(), k)).or_default().push((p.op.invoke_time(), t, c, id));
                }
            }
            _ => {}
        }
    }
    for ((group, k), mut rs) in reads {
        let mut cs = commits.remove(&(group.clone(), k)).unwrap_or_default();
        cs.sort_unstable();
        // Prefix maximum of committed offsets by completion time.
        let mut prefix: Vec<(u64, Offset, usize)> = Vec::with_capacity(cs.len());
        for (t, o, id) in cs {
            match prefix.last() {
                Some(&(_, m, mid)) if m >= o => prefix.push((t, m, mid)),
                _ => prefix.push((t, o, id)),
            }
        }
        let mut by_done = rs.clone();
        by_done.sort_unstable_by_key(|r| (r.1, r.3));
        let mut read_prefix: Vec<(u64, Offset, usize)> = Vec::with_capacity(by_done.len());
        for &(_, t, c, id) in &by_done {
            match read_prefix.last() {
                Some(&(_, m, mid)) if m >= c => read_prefix.push((t, m, mid)),
                _ => read_prefix.push((t, c, id)),
            }
        }
        rs.sort_unstable_by_key(|r| (r.0, r.3));
        for (inv, _, c, id) in rs {
            let Some(inv) = inv else { continue };
            let n = prefix.partition_point(|&(t, _, _)| t < inv);
            if n > 0 && prefix[n - 1].1 > c {
                let (_, m, cid) = prefix[n - 1];
                out.add("committed-offset-regression", || {
                    json!({"group": group, "key": k, "read": c, "committed-before": m, "commit": ix.ops[cid].reference(), "assign": ix.ops[id].reference()})
                });
                continue;
            }
            let n = read_prefix.partition_point(|&(t, _, _)| t < inv);
            if n > 0 && read_prefix[n - 1].1 > c {
                let (_, m, rid) = read_prefix[n - 1];
                out.add("committed-offset-regression", || {
                    json!({"group": group, "key": k, "read": c, "read-before": m, "earlier-assign": ix.ops[rid].reference(), "assign": ix.ops[id].reference()})
                });
            }
        }
    }
}

/// `stale-read`: an ok poll that returned nothing for key k while reporting a high watermark `max` ≤ o, where o is
/// the offset of an ok send to k that completed before the poll was invoked.
pub(crate) fn stale_read(ix: &Index, out: &mut Findings) {
    // key -> prefix maximum of acked offsets by completion time
    let mut acked: BTreeMap<Key, Vec<(u64, Offset, usize)>> = BTreeMap::new();
    for (id, s) in ix.ok_send_messages() {
        if let (Some(o), Some(t)) = (s.offset, ix.ops[id].op.complete_time()) {
            acked.entry(s.key).or_default().push((t, o, id));
        }
    }
    for v in acked.values_mut() {
        v.sort_unstable();
        for i in 1..v.len() {
            if v[i - 1].1 > v[i].1 {
                v[i].1 = v[i - 1].1;
                v[i].2 = v[i - 1].2;
            }
        }
    }
    for p in &ix.ops {
        if p.ty != OpType::Ok {
            continue;
        }
        let Kind::Poll { reads, extra } = &p.kind else { continue };
        let Some(inv) = p.op.invoke_time() else { continue };
        for &(k, m) in &extra.max {
            if reads.iter().any(|(rk, pairs)| *rk == k && !pairs.is_empty()) {
                continue;
            }
            let Some(v) = acked.get(&k) else { continue };
            let n = v.partition_point(|&(t, _, _)| t < inv);
            if n > 0 && v[n - 1].1 >= m {
                let (_, o, w) = v[n - 1];
                out.add(
                    "stale-read",
                    || json!({"key": k, "max": m, "acked-offset": o, "send": ix.ops[w].reference(), "poll": p.reference()}),
                );
            }
        }
    }
}

/// The operations of one kind, for counting.
pub(crate) fn is_ok_send(p: &POp) -> bool {
    p.ty == OpType::Ok && matches!(p.kind, Kind::Send(_))
}

/// An ok poll.
pub(crate) fn is_ok_poll(p: &POp) -> bool {
    p.ty == OpType::Ok && matches!(p.kind, Kind::Poll { .. })
}
