//! Indexes every check shares: the history's logical operations with their parsed payloads, who wrote and who read
//! each message, which indeterminate sends must have committed, the per-key version order (Jepsen's
//! `version-orders`), and the final drain.
//!
//! Version order of key k: every `(offset, value)` pair returned by any poll of k (of any type: a broker must never
//! return unsafe data) plus the known-offset sends of *must-have-committed* operations (ok, or info with at least one
//! of its values read by an ok poll). Offsets with at least one value get consecutive *dense indices*; holes in the
//! raw offsets are skipped, as in Jepsen.
//!
//! Scheduled sends (`extra.delay_ms`, see [`crate::history`]) are marked ([`POp::delay`]): the offset their
//! acknowledgement carries is one in the broker's staging queue, so it never enters the version order; only the
//! offsets polls return them at do. Transactional sends (`extra.txn`) likewise ([`POp::txn`]): the ok offset is
//! one in the broker's half queue, and a committed value lands in its queue at a new offset when the commit is
//! stored.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value as Json};

use crate::history::{
    pair_ops, Assign, Commit, Key, Mop, Offset, Op, OpType, Operation, PollExtra, Process, TxnCheck, TxnEnd, Value, FINAL_DRAIN,
};

/// One message of a send operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SendRec {
    pub key: Key,
    pub value: Value,
    pub offset: Option<Offset>,
}

/// The parsed payload of a logical operation.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// The messages of a `send` (from the completion, or the invocation if that is all there is).
    Send(Vec<SendRec>),
    /// A `poll`: per key the pairs read, concatenated over its mops in order, and its `extra`.
    Poll { reads: Vec<(Key, Vec<(Offset, Value)>)>, extra: PollExtra },
    /// An `assign`, with the committed offsets it read (`extra.committed`) if recorded.
    Assign { assign: Assign, committed: Option<Vec<(Key, Offset)>> },
    /// A consumer group's offset commit.
    Commit(Commit),
    /// An END_TRANSACTION for one transactional value.
    TxnEnd(TxnEnd),
    /// A check-back the producer received, and its answer.
    TxnCheck(TxnCheck),
    /// A drain worker's wrapper op.
    FinalDrain,
    /// Nemesis, crash, malformed, or anything else.
    Other,
}

/// A logical operation with its parsed payload.
pub(crate) struct POp<'a> {
    pub op: Operation<'a>,
    pub ty: OpType,
    pub kind: Kind,
    /// For a scheduled send, its delay in ms (0 when `delay_ms` was malformed: scheduled, delay unknown).
    pub delay: Option<u64>,
    /// For a transactional (half) send, its plan (`extra.txn`; informational).
    pub txn: Option<String>,
}

impl<'a> POp<'a> {
    /// The process.
    pub fn process(&self) -> Process {
        self.op.process()
    }

    /// Is this a scheduled send?
    pub fn is_scheduled(&self) -> bool {
        self.delay.is_some()
    }

    /// Is this a transactional (half) send?
    pub fn is_txn(&self) -> bool {
        self.txn.is_some()
    }

    /// Does its acknowledgement carry an offset of another queue than its key (scheduled or transactional), and
    /// its message land in its key later, if ever?
    pub fn is_staged(&self) -> bool {
        self.is_scheduled() || self.is_txn()
    }

    /// The messages sent, grouped per key in order of first appearance.
    pub fn sends_by_key(&self) -> Vec<(Key, Vec<SendRec>)> {
        let mut out: Vec<(Key, Vec<SendRec>)> = Vec::new();
        if let Kind::Send(sends) = &self.kind {
            for s in sends {
                match out.iter_mut().find(|(k, _)| *k == s.key) {
                    Some((_, v)) => v.push(*s),
                    None => out.push((s.key, vec![*s])),
                }
            }
        }
        out
    }

    /// The poll reads per key (empty for other ops).
    pub fn reads(&self) -> &[(Key, Vec<(Offset, Value)>)] {
        match &self.kind {
            Kind::Poll { reads, .. } => reads,
            _ => &[],
        }
    }

    /// A compact reference for anomaly examples.
    pub fn reference(&self) -> Json {
        let mut m = Map::new();
        m.insert("index".into(), self.op.index().into());
        m.insert("process".into(), serde_json::to_value(self.process()).unwrap_or(Json::Null));
        m.insert("type".into(), self.ty.as_str().into());
        m.insert("f".into(), self.op.f().into());
        if let Some(t) = self.op.complete_time().or(self.op.invoke_time()) {
            m.insert("time".into(), t.into());
        }
        if let Some(n) = self.op.node() {
            m.insert("node".into(), n.into());
        }
        Json::Object(m)
    }
}

/// The version order of one key.
#[derive(Debug, Default)]
pub(crate) struct KeyLog {
    /// Distinct offsets with at least one value, ascending; position = dense index.
    pub offsets: Vec<Offset>,
    /// The distinct values seen at each offset, ascending (parallel to `offsets`).
    pub values: Vec<Vec<Value>>,
    /// Each value's first dense index.
    pub first_index: HashMap<Value, usize>,
    /// Each value's last dense index.
    pub last_index: HashMap<Value, usize>,
}

impl KeyLog {
    /// The dense index of an offset, if it is in the log.
    pub fn index_of_offset(&self, o: Offset) -> Option<usize> {
        self.offsets.binary_search(&o).ok()
    }

    /// How many known offsets are below `o`.
    pub fn insertion_index(&self, o: Offset) -> usize {
        self.offsets.partition_point(|&x| x < o)
    }

    /// The value representing dense index `i` (the smallest one when an offset holds several).
    pub fn representative(&self, i: usize) -> Option<Value> {
        self.values.get(i).and_then(|vs| vs.first().copied())
    }

    /// The dense index of a sent message: its own offset if the log holds it there, else its first appearance.
    pub fn send_index(&self, s: &SendRec) -> Option<usize> {
        if let Some(o) = s.offset {
            if let Some(i) = self.index_of_offset(o) {
                if self.values[i].binary_search(&s.value).is_ok() {
                    return Some(i);
                }
            }
        }
        self.first_index.get(&s.value).copied()
    }

    /// Representatives of dense indices `from..to`, at most `limit` of them.
    pub fn values_between(&self, from: usize, to: usize, limit: usize) -> Vec<Value> {
        (from..to).take(limit).filter_map(|i| self.representative(i)).collect()
    }
}

/// The final drain: `final-drain` wrapper ops.
#[derive(Debug, Default, Clone)]
pub(crate) struct Drain {
    /// Number of `final-drain` operations.
    pub ops: u64,
    /// How many ended ok.
    pub ok: u64,
    /// When the first one was invoked.
    pub start: Option<u64>,
}

impl Drain {
    /// True if there was a final drain and every drain worker reached the end.
    pub fn complete(&self) -> bool {
        self.ops > 0 && self.ok == self.ops
    }
}

/// Counted problems with examples.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notes {
    /// How many.
    pub count: u64,
    /// The first 16.
    pub examples: Vec<String>,
}

impl Notes {
    pub(crate) fn add(&mut self, msg: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < 16 {
            self.examples.push(msg());
        }
    }
}

/// Who attempted to send a value.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// Keys it was sent to (normally one).
    pub keys: Vec<Key>,
    /// The first operation that sent it.
    pub op: usize,
}

/// Everything the checks share.
pub(crate) struct Index<'a> {
    pub history: &'a [Op],
    pub ops: Vec<POp<'a>>,
    /// Worker processes' operation ids in order.
    pub by_process: BTreeMap<Process, Vec<usize>>,
    /// Every value any send attempted (invocation or completion), to which keys.
    pub attempted: HashMap<Value, Attempt>,
    /// Values of scheduled sends (invocation or completion), with the first such operation.
    pub scheduled: HashMap<Value, usize>,
    /// Values of transactional sends (invocation or completion), with the first such operation.
    pub txn: HashMap<Value, usize>,
    /// The completion-side operation that sent (k, v).
    pub writer_of: HashMap<(Key, Value), usize>,
    /// The first ok poll that read (k, v).
    pub ok_reader: HashMap<(Key, Value), usize>,
    /// Per operation: is it a send that must have committed?
    pub mhc: Vec<bool>,
    /// Version orders.
    pub logs: BTreeMap<Key, KeyLog>,
    pub drain: Drain,
    /// Ops whose payload could not be parsed.
    pub malformed: Notes,
    /// Pairing problems.
    pub pairing: Notes,
}

impl<'a> Index<'a> {
    /// Builds the index.
    pub fn build(history: &'a [Op]) -> Index<'a> {
        let pairing = pair_ops(history);
        let pairing_notes = Notes { count: pairing.note_count as u64, examples: pairing.notes.iter().take(16).cloned().collect() };
        let mut malformed = Notes::default();
        let ops: Vec<POp<'a>> = pairing.operations(history).into_iter().map(|op| parse_op(op, &mut malformed)).collect();

        let mut by_process: BTreeMap<Process, Vec<usize>> = BTreeMap::new();
        let mut attempted: HashMap<Value, Attempt> = HashMap::new();
        let mut scheduled: HashMap<Value, usize> = HashMap::new();
        let mut txn: HashMap<Value, usize> = HashMap::new();
        let mut writer_of = HashMap::new();
        let mut ok_reader = HashMap::new();
        let mut drain = Drain::default();
        for (id, p) in ops.iter().enumerate() {
            if let Process::Worker(_) = p.process() {
                by_process.entry(p.process()).or_default().push(id);
            }
            match &p.kind {
                Kind::Send(sends) => {
                    for s in sends {
                        writer_of.entry((s.key, s.value)).or_insert(id);
                    }
                    // Values attempted: the invocation's and the completion's (they normally agree).
                    let mut note = |k: Key, v: Value| {
                        let a = attempted.entry(v).or_insert_with(|| Attempt { keys: Vec::new(), op: id });
                        if !a.keys.contains(&k) {
                            a.keys.push(k);
                        }
                    };
                    let mut values: Vec<Value> = Vec::new();
                    for s in sends {
                        note(s.key, s.value);
                        values.push(s.value);
                    }
                    if let Some(inv) = p.op.invoke() {
                        if let Ok(mops) = inv.mops() {
                            for m in mops {
                                if let Mop::Send { key, value, .. } = m {
                                    note(key, value);
                                    values.push(value);
                                }
                            }
                        }
                    }
                    if p.is_scheduled() {
                        for &v in &values {
                            scheduled.entry(v).or_insert(id);
                        }
                    }
                    if p.is_txn() {
                        for v in values {
                            txn.entry(v).or_insert(id);
                        }
                    }
                }
                Kind::Poll { reads, .. } if p.ty == OpType::Ok => {
                    for (k, pairs) in reads {
                        for &(_, v) in pairs {
                            ok_reader.entry((*k, v)).or_insert(id);
                        }
                    }
                }
                Kind::FinalDrain => {
                    drain.ops += 1;
                    if p.ty == OpType::Ok {
                        drain.ok += 1;
                    }
                    let t = p.op.invoke_time().or(p.op.complete_time());
                    drain.start = match (drain.start, t) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                _ => {}
            }
        }

        let mhc: Vec<bool> = ops
            .iter()
            .map(|p| match (&p.kind, p.ty) {
                (Kind::Send(_), OpType::Ok) => true,
                (Kind::Send(sends), OpType::Info) => sends.iter().any(|s| ok_reader.contains_key(&(s.key, s.value))),
                _ => false,
            })
            .collect();

        // Version orders.
        let mut entries: Vec<(Key, Offset, Value)> = Vec::new();
        for (id, p) in ops.iter().enumerate() {
            match &p.kind {
                Kind::Poll { reads, .. } => {
                    for (k, pairs) in reads {
                        entries.extend(pairs.iter().map(|&(o, v)| (*k, o, v)));
                    }
                }
                // A scheduled or transactional send's acknowledged offset is a staging offset, not one of key k.
                Kind::Send(sends) if mhc[id] && !p.is_staged() => {
                    entries.extend(sends.iter().filter_map(|s| s.offset.map(|o| (s.key, o, s.value))));
                }
                _ => {}
            }
        }
        entries.sort_unstable();
        entries.dedup();
        let mut logs: BTreeMap<Key, KeyLog> = BTreeMap::new();
        let mut i = 0;
        while i < entries.len() {
            let k = entries[i].0;
            let mut log = KeyLog::default();
            while i < entries.len() && entries[i].0 == k {
                let (_, o, v) = entries[i];
                if log.offsets.last() != Some(&o) {
                    log.offsets.push(o);
                    log.values.push(Vec::new());
                }
                let idx = log.offsets.len() - 1;
                log.values[idx].push(v);
                log.first_index.entry(v).or_insert(idx);
                log.last_index.insert(v, idx);
                i += 1;
            }
            logs.insert(k, log);
        }

        Index {
            history,
            ops,
            by_process,
            attempted,
            scheduled,
            txn,
            writer_of,
            ok_reader,
            mhc,
            logs,
            drain,
            malformed,
            pairing: pairing_notes,
        }
    }

    /// Is this ok poll part of the final drain (invoked at or after the first `final-drain` invocation)?
    pub fn is_drain_op(&self, p: &POp) -> bool {
        match (self.drain.start, p.op.invoke_time().or(p.op.complete_time())) {
            (Some(start), Some(t)) => t >= start,
            _ => false,
        }
    }

    /// When the last `heal` of the nemesis happened (0 without one).
    pub fn last_heal(&self) -> u64 {
        self.history.iter().filter(|o| o.process == Process::Nemesis && o.f == "heal").map(|o| o.time).max().unwrap_or(0)
    }

    /// Values of `sent` (value → its send op) that polls returned at two or more offsets of a key, per key
    /// in the order of their first read: (key, value, offsets, send op). The version orders hold only polled
    /// offsets for such values (scheduled and transactional ones), so this is what `*-duplicate` report.
    pub fn read_twice(&self, sent: &HashMap<Value, usize>) -> Vec<(Key, Value, Vec<u64>, usize)> {
        let mut out = Vec::new();
        for (&k, log) in &self.logs {
            let mut dups: Vec<(usize, Value)> = log
                .first_index
                .iter()
                .filter(|(v, &fi)| sent.contains_key(v) && log.last_index.get(v).is_some_and(|&li| li != fi))
                .map(|(&v, &fi)| (fi, v))
                .collect();
            dups.sort_unstable();
            for (_, v) in dups {
                let offsets =
                    log.values.iter().enumerate().filter(|(_, vs)| vs.binary_search(&v).is_ok()).map(|(i, _)| log.offsets[i]).collect();
                out.push((k, v, offsets, sent[&v]));
            }
        }
        out
    }

    /// Per key, the latest invocation of an ok drain poll that read from it or reported its high watermark.
    pub fn last_drain_polls(&self) -> HashMap<Key, u64> {
        let mut drain_polled: HashMap<Key, u64> = HashMap::new();
        for p in &self.ops {
            if p.ty != OpType::Ok || !self.is_drain_op(p) {
                continue;
            }
            let Kind::Poll { reads, extra } = &p.kind else { continue };
            let Some(t) = p.op.invoke_time() else { continue };
            for k in reads.iter().map(|(k, _)| *k).chain(extra.max.iter().map(|&(k, _)| k)) {
                let e = drain_polled.entry(k).or_insert(t);
                *e = (*e).max(t);
            }
        }
        drain_polled
    }

    /// The messages of ok sends that are neither scheduled nor transactional, as `(op id, message)` (the offset may
    /// be unknown).
    pub fn ok_send_messages(&self) -> impl Iterator<Item = (usize, SendRec)> + '_ {
        self.ops.iter().enumerate().filter(|(_, p)| p.ty == OpType::Ok && !p.is_staged()).flat_map(|(id, p)| match &p.kind {
            Kind::Send(sends) => sends.iter().map(move |s| (id, *s)).collect::<Vec<_>>(),
            _ => Vec::new(),
        })
    }

    /// The set of keys anything touched.
    pub fn keys(&self) -> HashSet<Key> {
        let mut keys: HashSet<Key> = self.logs.keys().copied().collect();
        for p in &self.ops {
            if let Kind::Send(s) = &p.kind {
                keys.extend(s.iter().map(|s| s.key));
            }
        }
        keys
    }
}

fn parse_op<'a>(op: Operation<'a>, malformed: &mut Notes) -> POp<'a> {
    let ty = op.op_type();
    let result = op.result();
    let kind = if result.process == Process::Nemesis {
        Kind::Other
    } else {
        match result.f.as_str() {
            "send" => parse_send(&op, malformed),
            "poll" => match result.mops() {
                Ok(mops) => {
                    let mut reads: Vec<(Key, Vec<(Offset, Value)>)> = Vec::new();
                    for m in mops {
                        if let Mop::Poll { reads: Some(rs) } = m {
                            for (k, pairs) in rs {
                                match reads.iter_mut().find(|(k2, _)| *k2 == k) {
                                    Some((_, v)) => v.extend(pairs),
                                    None => reads.push((k, pairs)),
                                }
                            }
                        }
                    }
                    let extra = if ty == OpType::Ok {
                        result.poll_extra().unwrap_or_else(|e| {
                            malformed.add(|| e.to_string());
                            PollExtra::default()
                        })
                    } else {
                        PollExtra::default()
                    };
                    Kind::Poll { reads, extra }
                }
                Err(e) => {
                    malformed.add(|| e.to_string());
                    Kind::Other
                }
            },
            "assign" => {
                // The invocation carries the request; the completion usually repeats it.
                let parsed = result.assign().or_else(|e| op.invoke().map(|i| i.assign()).unwrap_or(Err(e)));
                match parsed {
                    Ok(assign) => {
                        let committed = match op.completion().map(|c| c.assign_committed()) {
                            Some(Ok(c)) => c,
                            Some(Err(e)) => {
                                malformed.add(|| e.to_string());
                                None
                            }
                            None => None,
                        };
                        Kind::Assign { assign, committed }
                    }
                    Err(e) => {
                        malformed.add(|| e.to_string());
                        Kind::Other
                    }
                }
            }
            "commit" => match result.commit().or_else(|e| op.invoke().map(|i| i.commit()).unwrap_or(Err(e))) {
                Ok(c) => Kind::Commit(c),
                Err(e) => {
                    malformed.add(|| e.to_string());
                    Kind::Other
                }
            },
            "txn-end" => match result.txn_end().or_else(|e| op.invoke().map(|i| i.txn_end()).unwrap_or(Err(e))) {
                Ok(t) => Kind::TxnEnd(t),
                Err(e) => {
                    malformed.add(|| e.to_string());
                    Kind::Other
                }
            },
            "txn-check" => match result.txn_check() {
                Ok(t) => Kind::TxnCheck(t),
                Err(e) => {
                    malformed.add(|| e.to_string());
                    Kind::Other
                }
            },
            FINAL_DRAIN => Kind::FinalDrain,
            _ => Kind::Other,
        }
    };
    let (delay, txn) = if matches!(kind, Kind::Send(_)) { (send_delay(&op, malformed), send_txn(&op, malformed)) } else { (None, None) };
    POp { op, ty, kind, delay, txn }
}

/// The plan of a transactional send: `extra.txn` of the completion, else of the invocation.
fn send_txn(op: &Operation, malformed: &mut Notes) -> Option<String> {
    for o in [op.completion(), op.invoke()].into_iter().flatten() {
        match o.txn_plan() {
            Ok(Some(p)) => return Some(p),
            Ok(None) => {}
            Err(e) => malformed.add(|| e.to_string()),
        }
    }
    None
}

/// The delay of a scheduled send: `extra.delay_ms` of the completion, else of the invocation. A `delay_ms` that is
/// not a number still marks the send scheduled (its offset must not be trusted), with delay 0 = unknown.
fn send_delay(op: &Operation, malformed: &mut Notes) -> Option<u64> {
    let mut found = None;
    for o in [op.completion(), op.invoke()].into_iter().flatten() {
        match o.delay_ms() {
            Ok(Some(d)) => return Some(d),
            Ok(None) => {}
            Err(e) => {
                malformed.add(|| e.to_string());
                found = Some(0);
            }
        }
    }
    found
}

fn parse_send(op: &Operation, malformed: &mut Notes) -> Kind {
    let to_recs = |mops: Vec<Mop>| -> Vec<SendRec> {
        mops.into_iter()
            .filter_map(|m| match m {
                Mop::Send { key, value, offset } => Some(SendRec { key, value, offset }),
                Mop::Poll { .. } => None,
            })
            .collect()
    };
    match op.result().mops() {
        Ok(m) => Kind::Send(to_recs(m)),
        Err(e) => {
            malformed.add(|| e.to_string());
            // Fall back on the invocation (offsets unknown).
            match op.invoke().filter(|_| op.completion().is_some()).map(|i| i.mops()) {
                Some(Ok(m)) => Kind::Send(to_recs(m).into_iter().map(|s| SendRec { offset: None, ..s }).collect()),
                _ => Kind::Other,
            }
        }
    }
}

/// `{"offset": o, "value": v}` for examples.
pub(crate) fn pair_json(o: Option<Offset>, v: Option<Value>) -> Json {
    json!({"offset": o, "value": v})
}
