//! Checker test vectors: Jepsen's `kafka_test.clj` scenarios re-expressed for raftmq's history format (keys x = 1,
//! y = 2; values a, b, c, ... = 101, 102, 103, ...), one triggering history and one valid counterpart for every
//! anomaly, verdict rules, availability, the history round trip, and properties over randomly generated valid
//! histories (plus mutations that must be caught), also for scheduled sends (lost, duplicated, delivered early) and
//! for transactional sends (visible although never committed, visible before the commit was sent, committed twice,
//! acknowledged commit never read; each with a valid counterpart, and a generated model of runs with one bug
//! injected).
//!
//! Jepsen's transaction vectors (`g0-test`, `g1c-*`, `precommitted-read-test`) have no counterpart: raftmq has no
//! multi-queue transactions.

use std::time::Instant;

use proptest::prelude::*;
use raftmq_jepsen::checker::{check, realtime_lag, unseen_series, CheckOptions, CheckResult, LagPoint, Validity, Verdict, ANOMALIES};
use raftmq_jepsen::history::{
    pair_ops, parse_history, read_history, read_history_lenient, Assign, Commit, HistoryError, HistoryWriter, Mop, Op, OpType, PollExtra,
    Process, Seek,
};
use serde_json::{json, Value as Json};

const X: u32 = 1;
const Y: u32 = 2;
const A: u64 = 101;
const B: u64 = 102;
const C: u64 = 103;
const D: u64 = 104;
const F: u64 = 106;
const G: u64 = 107;

/// A history under construction; every op's time is its index plus `t0` (moved on by [`H::sleep_ms`]).
#[derive(Default)]
struct H {
    ops: Vec<Op>,
    t0: u64,
}

fn sends(k: u32, vs: &[u64]) -> Json {
    json!(vs.iter().map(|v| json!(["send", k, v])).collect::<Vec<_>>())
}

fn sends_at(k: u32, ovs: &[(u64, u64)]) -> Json {
    json!(ovs.iter().map(|(o, v)| json!(["send", k, [o, v]])).collect::<Vec<_>>())
}

fn poll_value(reads: &[(u32, &[(u64, u64)])]) -> Json {
    let per_key: Vec<Json> =
        reads.iter().map(|(k, pairs)| json!([k, pairs.iter().map(|(o, v)| json!([o, v])).collect::<Vec<_>>()])).collect();
    json!([["poll", per_key]])
}

impl H {
    fn push(&mut self, process: Process, ty: OpType, f: &str, value: Json) -> &mut Op {
        let i = self.ops.len() as u64;
        self.ops.push(Op::new(i, self.t0 + i, process, ty, f, value));
        self.ops.last_mut().unwrap()
    }
    /// Lets `ms` milliseconds pass before the next op.
    fn sleep_ms(&mut self, ms: u64) -> &mut Self {
        self.t0 += ms * 1_000_000;
        self
    }
    /// Invoke + completion of a scheduled send of `v` to `k` with delay `delay_ms`; an ok completion acknowledges the
    /// staging offset `staged` (recorded both as `extra.staged_offset` and, to prove it is ignored, as the offset).
    fn sched_send(&mut self, p: u64, ty: OpType, k: u32, v: u64, delay_ms: u64, staged: u64) -> &mut Self {
        self.op(p, OpType::Invoke, "send", sends(k, &[v])).extra = Some(json!({"delay_ms": delay_ms, "via": "timer"}).into());
        let value = if ty == OpType::Ok { sends_at(k, &[(staged, v)]) } else { sends(k, &[v]) };
        let extra = if ty == OpType::Ok {
            json!({"delay_ms": delay_ms, "via": "timer", "staged_offset": staged})
        } else {
            json!({"delay_ms": delay_ms, "via": "timer"})
        };
        self.op(p, ty, "send", value).extra = Some(extra.into());
        self
    }
    fn op(&mut self, p: u64, ty: OpType, f: &str, value: Json) -> &mut Op {
        self.push(Process::Worker(p), ty, f, value)
    }
    fn inv(&mut self, p: u64, f: &str, value: Json) -> &mut Self {
        self.op(p, OpType::Invoke, f, value);
        self
    }
    fn send_inv(&mut self, p: u64, k: u32, vs: &[u64]) -> &mut Self {
        self.inv(p, "send", sends(k, vs))
    }
    fn send_ok(&mut self, p: u64, k: u32, ovs: &[(u64, u64)]) -> &mut Self {
        self.op(p, OpType::Ok, "send", sends_at(k, ovs));
        self
    }
    fn send_done(&mut self, p: u64, ty: OpType, k: u32, vs: &[u64]) -> &mut Self {
        self.op(p, ty, "send", sends(k, vs));
        self
    }
    /// Invoke + ok.
    fn send(&mut self, p: u64, k: u32, ovs: &[(u64, u64)]) -> &mut Self {
        let vs: Vec<u64> = ovs.iter().map(|&(_, v)| v).collect();
        self.send_inv(p, k, &vs).send_ok(p, k, ovs)
    }
    fn poll_inv(&mut self, p: u64) -> &mut Self {
        self.inv(p, "poll", json!([["poll"]]))
    }
    fn poll_done(&mut self, p: u64, ty: OpType, reads: &[(u32, &[(u64, u64)])]) -> &mut Self {
        self.op(p, ty, "poll", poll_value(reads));
        self
    }
    /// Invoke + ok poll.
    fn poll(&mut self, p: u64, reads: &[(u32, &[(u64, u64)])]) -> &mut Self {
        self.poll_inv(p).poll_done(p, OpType::Ok, reads)
    }
    /// Invoke + ok poll with `extra.max`.
    fn poll_max(&mut self, p: u64, reads: &[(u32, &[(u64, u64)])], max: &[(u32, u64)]) -> &mut Self {
        self.poll_inv(p);
        let next: Vec<(u32, u64)> = max.to_vec();
        self.op(p, OpType::Ok, "poll", poll_value(reads)).extra = Some(PollExtra { next, max: max.to_vec() }.to_json().into());
        self
    }
    fn assign(&mut self, p: u64, ty: OpType, keys: &[u32], seek: Seek, committed: Option<&[(u32, u64)]>) -> &mut Self {
        let a = Assign { keys: keys.to_vec(), seek, group: Some("g".into()) };
        self.inv(p, "assign", a.to_json());
        let op = self.op(p, ty, "assign", a.to_json());
        if let Some(c) = committed {
            op.extra = Some(json!({"committed": c}).into());
        }
        self
    }
    fn commit(&mut self, p: u64, offsets: &[(u32, u64)]) -> &mut Self {
        let c = Commit { group: "g".into(), offsets: offsets.to_vec() };
        self.inv(p, "commit", c.to_json());
        self.op(p, OpType::Ok, "commit", c.to_json());
        self
    }
    /// A complete final drain by process `p`: assign everything from the beginning, one poll with `max`.
    fn drain(&mut self, p: u64, reads: &[(u32, &[(u64, u64)])], max: &[(u32, u64)]) -> &mut Self {
        self.inv(p, "final-drain", Json::Null);
        let keys: Vec<u32> = max.iter().map(|&(k, _)| k).collect();
        self.assign(p, OpType::Ok, &keys, Seek::Beginning, None);
        self.poll_max(p, reads, max);
        self.op(p, OpType::Ok, "final-drain", Json::Null);
        self
    }
    fn nemesis(&mut self, f: &str, value: Json) -> &mut Self {
        self.push(Process::Nemesis, OpType::Info, f, value);
        self
    }
    fn check(&self) -> CheckResult {
        check(&self.ops, &CheckOptions::default())
    }
    fn check_with(&self, opts: CheckOptions) -> CheckResult {
        check(&self.ops, &opts)
    }
}

fn examples<'a>(r: &'a CheckResult, name: &str) -> &'a [Json] {
    &r.anomaly(name).unwrap_or_else(|| panic!("no anomaly {name}")).examples
}

/// Selected fields of every example of an anomaly.
fn fields(r: &CheckResult, name: &str, keys: &[&str]) -> Vec<Json> {
    examples(r, name).iter().map(|e| Json::Object(keys.iter().map(|k| (k.to_string(), e[*k].clone())).collect())).collect()
}

fn op_index(e: &Json) -> u64 {
    e["index"].as_u64().unwrap()
}

fn assert_only_bad(r: &CheckResult, names: &[&str]) {
    let mut bad = r.bad.clone();
    bad.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(bad, want, "{}", r.summary_table());
}

// ---------------------------------------------------------------------------------------------------------------
// Jepsen kafka_test.clj, re-expressed.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn jepsen_version_orders_conflict_at_offset_1() {
    // An ok poll reads a, b at offsets 0, 1; an info send reports c at 1, b at 3, d at 4. Because b was read, the info
    // send must have committed, so its offsets count: offset 1 holds both b and c.
    let mut h = H::default();
    h.poll(0, &[(X, &[(0, A), (1, B)])]);
    h.send_inv(1, X, &[C, B, D]);
    h.op(1, OpType::Info, "send", sends_at(X, &[(1, C), (3, B), (4, D)]));
    let r = h.check();
    assert_eq!(
        fields(&r, "inconsistent-offsets", &["key", "offset", "index", "values"]),
        vec![json!({"key": X, "offset": 1, "index": 1, "values": [B, C]})]
    );
    // b also sits at two offsets.
    assert_eq!(fields(&r, "duplicate", &["key", "value", "offsets"]), vec![json!({"key": X, "value": B, "offsets": [1, 3]})]);
}

#[test]
fn jepsen_version_orders_real_world_537() {
    let mut h = H::default();
    h.send_inv(379, 11, &[641]).send_ok(379, 11, &[(537, 641)]);
    h.send_inv(363, 11, &[645]).send_ok(363, 11, &[(537, 645)]);
    let r = h.check();
    assert_eq!(
        fields(&r, "inconsistent-offsets", &["key", "offset", "index", "values"]),
        vec![json!({"key": 11, "offset": 537, "index": 0, "values": [641, 645]})]
    );
    assert_eq!(r.validity, Validity::Invalid);
}

#[test]
fn jepsen_inconsistent_offsets_info_conflicts() {
    // An info send claims offset 0 of x, which an ok send also holds. Ignored unless the info send is proven
    // committed, here by a poll of its other message (to y).
    let mut h = H::default();
    h.inv(0, "send", json!([["send", X, 1], ["send", Y, 1]]));
    h.op(0, OpType::Info, "send", json!([["send", X, [0, 1]], ["send", Y, 1]]));
    h.send_inv(1, X, &[2]).send_ok(1, X, &[(0, 2)]);
    assert_eq!(h.check().count("inconsistent-offsets"), 0);
    h.poll(2, &[(Y, &[(5, 1)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "inconsistent-offsets", &["key", "offset", "index", "values"]),
        vec![json!({"key": X, "offset": 0, "index": 0, "values": [1, 2]})]
    );
}

#[test]
fn jepsen_g1a() {
    let mut h = H::default();
    h.inv(0, "send", json!([["send", X, 2], ["send", Y, 3]]));
    h.op(0, OpType::Fail, "send", json!([["send", X, 2], ["send", Y, 3]]));
    h.poll(1, &[(X, &[(0, 2)])]);
    let r = h.check();
    let ex = examples(&r, "G1a");
    assert_eq!(ex.len(), 1);
    assert_eq!((ex[0]["key"].clone(), ex[0]["value"].clone()), (json!(X), json!(2)));
    assert_eq!(op_index(&ex[0]["writer"]), 1);
    assert_eq!(op_index(&ex[0]["reader"]), 3);
}

#[test]
fn jepsen_lost_write_consistent() {
    // a at 0, b at 1 and d at 3 are acknowledged; a poll reads c at 2, so a and b should have been read.
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.send(0, X, &[(1, B), (3, D)]);
    h.send_inv(1, X, &[C]).send_done(1, OpType::Info, X, &[C]);
    h.poll(0, &[(X, &[(2, C)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "lost-write", &["key", "value", "index", "max-read-index"]),
        vec![
            json!({"key": X, "value": A, "index": 0, "max-read-index": 2}),
            json!({"key": X, "value": B, "index": 1, "max-read-index": 2})
        ]
    );
    let ex = examples(&r, "lost-write");
    assert_eq!(op_index(&ex[0]["writer"]), 1);
    assert_eq!(op_index(&ex[1]["writer"]), 3);
    assert_eq!(op_index(&ex[0]["max-read"]), 7);
}

#[test]
fn jepsen_lost_write_inconsistent() {
    // a at 0 is overwritten by b at 0; c at 2. Reading b and c means a should also have been read.
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.send(0, X, &[(0, B), (2, C)]);
    h.poll(0, &[(X, &[(0, B), (2, C)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "lost-write", &["key", "value", "index", "max-read-index"]),
        vec![json!({"key": X, "value": A, "index": 0, "max-read-index": 1})]
    );
}

#[test]
fn jepsen_lost_write_atomic() {
    // An info send of a (to x) and b (to y at 0). c lands at 1 of y and is read. Only once a is read is the info send
    // proven committed, and b becomes a lost write.
    let build = |with_poll_a: bool| {
        let mut h = H::default();
        h.inv(0, "send", json!([["send", X, A], ["send", Y, B]]));
        h.op(0, OpType::Info, "send", json!([["send", X, A], ["send", Y, [0, B]]]));
        h.send_inv(1, Y, &[C]).send_done(1, OpType::Info, Y, &[C]);
        if with_poll_a {
            h.poll(2, &[(X, &[(0, A)])]);
        }
        h.poll(3, &[(Y, &[(1, C)])]);
        h.check()
    };
    assert_eq!(build(false).count("lost-write"), 0);
    let r = build(true);
    assert_eq!(
        fields(&r, "lost-write", &["key", "value", "index", "max-read-index"]),
        vec![json!({"key": Y, "value": B, "index": 0, "max-read-index": 1})]
    );
}

/// Jepsen's poll-skip history; `between_3_4` and `between_4_7` are inserted before the polls of d and g.
fn poll_skip_history(between_3_4: &dyn Fn(&mut H), between_4_7: &dyn Fn(&mut H)) -> CheckResult {
    let mut h = H::default();
    h.poll(0, &[(X, &[(1, A), (2, B)])]);
    h.poll(1, &[(X, &[(3, C)])]);
    between_3_4(&mut h);
    h.poll(0, &[(X, &[(4, D)])]);
    between_4_7(&mut h);
    h.send(2, X, &[(6, F)]);
    h.poll(0, &[(X, &[(7, G)])]);
    h.send_inv(3, X, &[A, B, C, D, G]).send_done(3, OpType::Info, X, &[A, B, C, D, G]);
    h.check()
}

#[test]
fn jepsen_poll_skip() {
    let want = vec![json!({"key": X, "delta": 2, "skipped": [C]}), json!({"key": X, "delta": 2, "skipped": [F]})];
    let r = poll_skip_history(&|_| {}, &|_| {});
    assert_eq!(fields(&r, "poll-skip", &["key", "delta", "skipped"]), want);
    let ops: Vec<Vec<u64>> =
        examples(&r, "poll-skip").iter().map(|e| e["ops"].as_array().unwrap().iter().map(op_index).collect()).collect();
    assert_eq!(ops, vec![vec![1, 5], vec![5, 9]]);

    // Assigning a set without x forgets x (ok assign, then an info one): no skips.
    let r = poll_skip_history(
        &|h| {
            h.assign(0, OpType::Ok, &[Y], Seek::Keep, None);
        },
        &|h| {
            h.assign(0, OpType::Info, &[Y], Seek::Keep, None);
        },
    );
    assert_eq!(r.count("poll-skip"), 0);
    // Assignments that keep x keep its position.
    let keep = |h: &mut H| {
        h.assign(0, OpType::Ok, &[X, Y], Seek::Keep, None);
    };
    let r = poll_skip_history(&keep, &keep);
    assert_eq!(fields(&r, "poll-skip", &["key", "delta", "skipped"]), want);
}

fn five_sends(h: &mut H) {
    let ovs: Vec<(u64, u64)> = (0..6).map(|i| (i, 100 + i)).collect();
    h.send(0, X, &ovs);
}

#[test]
fn jepsen_poll_skip_aborted_polls() {
    // good: fail and info polls re-read 1, 2 after an ok poll of 0; then an ok poll reads 1, 2.
    let mut h = H::default();
    h.send(0, X, &[(0, 100), (1, 101), (2, 102)]);
    h.poll(1, &[(X, &[(0, 100)])]);
    h.poll_inv(1).poll_done(1, OpType::Fail, &[(X, &[(1, 101), (2, 102)])]);
    h.poll_inv(1).poll_done(1, OpType::Info, &[(X, &[(1, 101), (2, 102)])]);
    h.poll(1, &[(X, &[(1, 101), (2, 102)])]);
    assert!(h.check().bad.is_empty(), "{}", h.check().summary_table());

    // A failed poll does not move the position: reading 3, 4 and then 5 skips.
    let mut h = H::default();
    five_sends(&mut h);
    h.poll(1, &[(X, &[(0, 100)])]);
    h.poll_inv(1).poll_done(1, OpType::Fail, &[(X, &[(1, 101), (2, 102)])]);
    h.poll_inv(1).poll_done(1, OpType::Fail, &[(X, &[(3, 103), (4, 104)])]);
    h.poll(1, &[(X, &[(5, 105)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "poll-skip", &["key", "delta", "skipped"]),
        vec![json!({"key": X, "delta": 3, "skipped": [101, 102]}), json!({"key": X, "delta": 5, "skipped": [101, 102, 103, 104]})]
    );

    // An info poll can be a poll skip.
    let mut h = H::default();
    five_sends(&mut h);
    h.poll(1, &[(X, &[(0, 100)])]);
    h.poll_inv(1).poll_done(1, OpType::Fail, &[(X, &[(1, 101), (2, 102)])]);
    h.poll_inv(1).poll_done(1, OpType::Info, &[(X, &[(3, 103), (4, 104)])]);
    let r = h.check();
    assert_eq!(fields(&r, "poll-skip", &["key", "delta", "skipped"]), vec![json!({"key": X, "delta": 3, "skipped": [101, 102]})]);
}

#[test]
fn jepsen_nonmonotonic_poll() {
    let run = |between: &dyn Fn(&mut H)| {
        let mut h = H::default();
        h.send_inv(0, X, &[A, B, C, D]).send_done(0, OpType::Ok, X, &[A, B, C, D]);
        h.poll(0, &[(X, &[(1, A), (2, B), (3, C)])]);
        between(&mut h);
        h.poll(0, &[(X, &[(2, B), (3, C), (4, D)])]);
        h.check()
    };
    let want = vec![json!({"key": X, "values": [C, B], "delta": -1})];
    assert_eq!(fields(&run(&|_| {}), "nonmonotonic-poll", &["key", "values", "delta"]), want);
    assert_eq!(
        run(&|h| {
            h.assign(0, OpType::Ok, &[Y], Seek::Keep, None);
        })
        .count("nonmonotonic-poll"),
        0
    );
    assert_eq!(
        fields(
            &run(&|h| {
                h.assign(0, OpType::Ok, &[X, Y], Seek::Keep, None);
            }),
            "nonmonotonic-poll",
            &["key", "values", "delta"]
        ),
        want
    );
}

#[test]
fn jepsen_nonmonotonic_send() {
    let run = |between: &dyn Fn(&mut H)| {
        let mut h = H::default();
        h.send(0, X, &[(3, C), (4, D)]);
        between(&mut h);
        h.send(0, X, &[(1, A), (2, B)]);
        h.check()
    };
    let want = vec![json!({"key": X, "values": [D, A], "delta": -3})];
    let r = run(&|_| {});
    assert_eq!(fields(&r, "nonmonotonic-send", &["key", "values", "delta"]), want);
    let ops: Vec<u64> = examples(&r, "nonmonotonic-send")[0]["ops"].as_array().unwrap().iter().map(op_index).collect();
    assert_eq!(ops, vec![1, 3]);
    assert_eq!(
        run(&|h| {
            h.assign(0, OpType::Ok, &[Y], Seek::Keep, None);
        })
        .count("nonmonotonic-send"),
        0
    );
    assert_eq!(
        run(&|h| {
            h.assign(0, OpType::Info, &[Y], Seek::Keep, None);
        })
        .count("nonmonotonic-send"),
        0
    );
    assert_eq!(
        fields(
            &run(&|h| {
                h.assign(0, OpType::Ok, &[X, Y], Seek::Keep, None);
            }),
            "nonmonotonic-send",
            &["key", "values", "delta"]
        ),
        want
    );
}

#[test]
fn jepsen_int_poll_skip() {
    let mut h = H::default();
    h.send_inv(1, X, &[A, B, D]).send_done(1, OpType::Info, X, &[A, B, D]);
    h.poll(0, &[(X, &[(1, A), (4, D)])]);
    h.poll_inv(0);
    h.op(0, OpType::Ok, "poll", json!([["poll", [[X, [[1, A]]]]], ["poll", [[X, [[4, D]]]]]]));
    h.poll(0, &[(X, &[(2, B)])]);
    let r = h.check();
    let want = json!({"key": X, "values": [A, D], "skipped": [B], "delta": 2});
    assert_eq!(fields(&r, "int-poll-skip", &["key", "values", "skipped", "delta"]), vec![want.clone(), want]);
    let ops: Vec<u64> = examples(&r, "int-poll-skip").iter().map(|e| op_index(&e["op"])).collect();
    assert_eq!(ops, vec![3, 5]);
}

#[test]
fn jepsen_int_send_skip() {
    // a at 1 and c (offset unknown) in one op; a poll shows b at 2 and c at 3.
    let mut h = H::default();
    h.send_inv(0, X, &[A, C]);
    h.op(0, OpType::Ok, "send", json!([["send", X, [1, A]], ["send", X, C]]));
    h.send_inv(1, X, &[B]).send_done(1, OpType::Info, X, &[B]);
    h.poll(2, &[(X, &[(2, B), (3, C)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "int-send-skip", &["key", "values", "skipped", "delta"]),
        vec![json!({"key": X, "values": [A, C], "skipped": [B], "delta": 2})]
    );
    assert_eq!(op_index(&examples(&r, "int-send-skip")[0]["op"]), 1);
}

#[test]
fn jepsen_int_nonmonotonic_poll() {
    let mut h = H::default();
    h.send_inv(0, X, &[A, B, C]).send_done(0, OpType::Info, X, &[A, B, C]);
    h.poll(0, &[(X, &[(3, C), (1, A)])]);
    h.poll_inv(0);
    h.op(0, OpType::Ok, "poll", json!([["poll", [[X, [[2, B], [3, C]]]]], ["poll", [[X, [[3, C]]]]]]));
    let r = h.check();
    assert_eq!(
        fields(&r, "int-nonmonotonic-poll", &["key", "values", "delta"]),
        vec![json!({"key": X, "values": [C, A], "delta": -2}), json!({"key": X, "values": [C, C], "delta": 0})]
    );
}

#[test]
fn jepsen_int_nonmonotonic_send() {
    let mut h = H::default();
    h.send(0, X, &[(3, C), (1, A)]);
    h.send_inv(0, Y, &[D, B]).send_done(0, OpType::Info, Y, &[D, B]);
    h.send_inv(1, Y, &[C]).send_done(1, OpType::Info, Y, &[C]);
    h.poll(0, &[(Y, &[(2, B), (3, C), (4, D)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "int-nonmonotonic-send", &["key", "values", "delta"]),
        vec![json!({"key": X, "values": [C, A], "delta": -1}), json!({"key": Y, "values": [D, B], "delta": -2})]
    );
}

#[test]
fn jepsen_duplicate_basic() {
    let mut h = H::default();
    h.send(0, X, &[(1, A)]);
    h.send_inv(1, X, &[B]).send_done(1, OpType::Info, X, &[B]);
    h.poll(2, &[(X, &[(2, B), (3, A)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "duplicate", &["key", "value", "count", "offsets"]),
        vec![json!({"key": X, "value": A, "count": 2, "offsets": [1, 3]})]
    );
}

#[test]
fn jepsen_duplicate_hash_insensitive() {
    // Ten values each acknowledged at offset 0 and polled at offset 1: all are duplicates, and both offsets conflict.
    let mut h = H::default();
    for v in 0..10u64 {
        h.send(0, X, &[(0, 200 + v)]);
        h.poll(1, &[(X, &[(1, 200 + v)])]);
    }
    let r = h.check_with(CheckOptions { max_examples: 100, ..CheckOptions::default() });
    let values: Vec<u64> = (200..210).collect();
    let mut dups: Vec<u64> = examples(&r, "duplicate").iter().map(|e| e["value"].as_u64().unwrap()).collect();
    dups.sort();
    assert_eq!(dups, values);
    assert_eq!(
        fields(&r, "inconsistent-offsets", &["key", "offset", "index", "values"]),
        vec![json!({"key": X, "offset": 0, "index": 0, "values": values}), json!({"key": X, "offset": 1, "index": 1, "values": values})]
    );
}

#[test]
fn jepsen_duplicate_aborted_polls() {
    // 500 acknowledged at 1; 501 failed (with an offset). A failed poll returns both at higher offsets: a duplicate of
    // 500 only (501's failed send does not enter the version order).
    let mut h = H::default();
    h.send(0, X, &[(1, 500)]);
    h.send_inv(0, X, &[501]);
    h.op(0, OpType::Fail, "send", sends_at(X, &[(2, 501)]));
    h.poll_inv(1).poll_done(1, OpType::Fail, &[(X, &[(11, 500), (12, 501)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "duplicate", &["key", "value", "count", "offsets"]),
        vec![json!({"key": X, "value": 500, "count": 2, "offsets": [1, 11]})]
    );
}

#[test]
fn jepsen_realtime_lag() {
    let mut h = H::default();
    h.assign(0, OpType::Ok, &[X], Seek::Keep, None); // 0, 1
    h.poll(0, &[(X, &[])]); // 2, 3
    h.send(0, X, &[(0, A)]); // 4, 5
    h.poll(0, &[(X, &[])]); // 6, 7: lag 6 - 5 = 1
    h.send(1, X, &[(2, C), (3, D)]); // 8, 9
    h.poll_inv(0); // 10
    h.op(0, OpType::Ok, "poll", json!([["poll"]])); // 11: lag 10 - 5 = 5
    h.poll(0, &[(X, &[(0, A), (1, B)])]); // 12, 13: lag 12 - 9 = 3
    h.assign(0, OpType::Ok, &[X, Y], Seek::Keep, None); // 14, 15
    h.poll(0, &[]); // 16, 17: x 16 - 9 = 7, y 0
    h.assign(0, OpType::Ok, &[Y], Seek::Keep, None); // 18, 19
    h.assign(0, OpType::Ok, &[X], Seek::Keep, None); // 20, 21
    h.poll(0, &[]); // 22, 23: x rewound, 22 - 5 = 17
    h.poll_inv(0); // 24
    h.op(0, OpType::Ok, "poll", json!([["poll", [[X, [[0, A], [1, B]]]]], ["poll", [[X, [[2, C], [3, D]]]]]])); // 25: 0
    h.send_inv(1, X, &[B]).send_done(1, OpType::Info, X, &[B]); // 26, 27
    let l = |time, key, lag| LagPoint { time, process: Process::Worker(0), key, lag };
    assert_eq!(
        realtime_lag(&h.ops),
        vec![l(2, X, 0), l(6, X, 1), l(10, X, 5), l(12, X, 3), l(16, X, 7), l(16, Y, 0), l(22, X, 17), l(24, X, 0)]
    );
    assert_eq!(h.check().lag.worst, Some(l(22, X, 17)));
}

#[test]
fn jepsen_unseen() {
    let mut h = H::default();
    h.poll(0, &[]);
    h.send(0, X, &[(0, A), (1, B)]);
    h.poll(0, &[(X, &[(0, A)])]);
    h.poll(0, &[(X, &[(1, B)])]);
    let series: Vec<(u64, Vec<(u32, u64)>)> = unseen_series(&h.ops).into_iter().map(|p| (p.time, p.unseen.into_iter().collect())).collect();
    assert_eq!(series, vec![(1, vec![]), (3, vec![(X, 2)]), (5, vec![(X, 1)]), (7, vec![(X, 0)])]);
    assert_eq!(h.check().count("unseen"), 0);
}

#[test]
fn jepsen_empty_history_is_not_valid() {
    let mut h = H::default();
    h.assign(0, OpType::Ok, &[X], Seek::Keep, None);
    let r = h.check();
    assert_eq!(r.validity, Validity::Unknown);
    assert_eq!(r.exit_code(), 2);
}

// ---------------------------------------------------------------------------------------------------------------
// Every anomaly: a triggering history and a valid counterpart.
// ---------------------------------------------------------------------------------------------------------------

/// A valid history: x gets a@0, b@1, c@2 (one producer), one consumer reads them in two polls, a complete drain.
fn valid_base() -> H {
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.send(0, X, &[(1, B), (2, C)]);
    h.assign(10, OpType::Ok, &[X], Seek::Beginning, None);
    h.poll(10, &[(X, &[(0, A), (1, B)])]);
    h.poll(10, &[(X, &[(2, C)])]);
    h
}

fn full_drain(h: &mut H) {
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C)])], &[(X, 3)]);
}

#[test]
fn valid_history_is_valid() {
    let mut h = valid_base();
    full_drain(&mut h);
    let r = h.check();
    assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
    assert_eq!(r.exit_code(), 0);
    assert!(r.anomalies.iter().all(|a| a.count == 0), "{}", r.summary_table());
    assert_eq!(r.high_watermarks.get(&X), Some(&3));
    assert_eq!(r.stats.ok_sends, 2);
    assert_eq!(r.ops["send"]["ok"], 2);
}

#[test]
fn duplicate_vs_same_value_polled_twice_at_one_offset() {
    let mut h = valid_base();
    h.poll(11, &[(X, &[(1, B)])]); // another consumer re-reads b at the same offset: fine
    full_drain(&mut h);
    assert_eq!(h.check().validity, Validity::Valid);

    let mut h = valid_base();
    h.poll(11, &[(X, &[(3, B)])]); // b at another offset: duplicate
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, B)])], &[(X, 4)]);
    let r = h.check();
    assert_only_bad(&r, &["duplicate"]);
    assert_eq!(fields(&r, "duplicate", &["key", "value", "offsets"]), vec![json!({"key": X, "value": B, "offsets": [1, 3]})]);
}

#[test]
fn lost_write_vs_unread_value_above_the_bound() {
    // d@3 acknowledged but never read, and nothing above it was read: not lost (maybe just late).
    let mut h = valid_base();
    h.send(1, X, &[(3, D)]);
    let r = h.check();
    assert_eq!(r.count("lost-write"), 0);
    assert_eq!(r.count("unseen"), 1);
    assert_eq!(r.anomaly("unseen").unwrap().verdict, Verdict::Info); // no drain: not bad
    assert!(r.bad.is_empty());
    assert_eq!(r.validity, Validity::Unknown);

    // b@1 never read although c@2 was: lost.
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.send(1, X, &[(1, B)]);
    h.send(0, X, &[(2, C)]);
    h.poll(10, &[(X, &[(0, A)])]);
    h.poll(11, &[(X, &[(2, C)])]);
    let r = h.check();
    assert_eq!(fields(&r, "lost-write", &["key", "value", "offset"]), vec![json!({"key": X, "value": B, "offset": 1})]);
    assert_eq!(r.validity, Validity::Invalid);
}

#[test]
fn poll_skip_vs_assign_resets() {
    // Skip: 0, 1 then 3.
    let mut h = valid_base();
    h.send(0, X, &[(3, D)]);
    h.poll(11, &[(X, &[(0, A), (1, B)])]);
    h.poll(11, &[(X, &[(3, D)])]);
    let r = h.check();
    assert_eq!(fields(&r, "poll-skip", &["key", "delta", "skipped"]), vec![json!({"key": X, "delta": 2, "skipped": [C]})]);

    // Seek to the beginning between: going back to 0 is expected, not nonmonotonic.
    let mut h = valid_base();
    h.assign(10, OpType::Ok, &[X], Seek::Beginning, None);
    h.poll(10, &[(X, &[(0, A), (1, B), (2, C)])]);
    full_drain(&mut h);
    assert_eq!(h.check().validity, Validity::Valid, "{}", h.check().summary_table());

    // ... but after a seek to the beginning the next read must start at the first offset.
    let mut h = valid_base();
    h.assign(10, OpType::Ok, &[X], Seek::Beginning, None);
    h.poll(10, &[(X, &[(2, C)])]);
    let r = h.check();
    assert_eq!(fields(&r, "poll-skip", &["key", "delta", "skipped"]), vec![json!({"key": X, "delta": 3, "skipped": [A, B]})]);

    // Seek to the committed offset 1: reading from 1 is right, from 2 skips, from 0 goes back.
    for (start, skip, back) in [(1u64, 0u64, 0u64), (2, 1, 0), (0, 0, 1)] {
        let mut h = valid_base();
        h.assign(10, OpType::Ok, &[X], Seek::Committed, Some(&[(X, 1)]));
        let reads: Vec<(u64, u64)> = [(0, A), (1, B), (2, C)].into_iter().filter(|&(o, _)| o >= start).collect();
        h.poll(10, &[(X, &reads)]);
        let r = h.check();
        assert_eq!((r.count("poll-skip"), r.count("nonmonotonic-poll")), (skip, back), "start {start}");
    }
    // A committed seek whose group had no offset for the key starts at 0.
    let mut h = valid_base();
    h.assign(10, OpType::Ok, &[X], Seek::Committed, Some(&[]));
    h.poll(10, &[(X, &[(0, A)])]);
    assert!(h.check().bad.is_empty());
    // An info assign forgets the key (it may or may not have taken effect).
    let mut h = valid_base();
    h.assign(10, OpType::Info, &[X], Seek::Beginning, None);
    h.poll(10, &[(X, &[(2, C)])]);
    assert!(h.check().bad.is_empty());
}

#[test]
fn int_send_skip_vs_contiguous_batch() {
    let mut h = valid_base(); // the batch b@1, c@2 is contiguous
    full_drain(&mut h);
    assert_eq!(h.check().count("int-send-skip"), 0);

    // A batch a@0, c@2 with another producer's b@1 in between.
    let mut h = H::default();
    h.send_inv(0, X, &[A, C]).send_inv(1, X, &[B]);
    h.send_ok(0, X, &[(0, A), (2, C)]).send_ok(1, X, &[(1, B)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C)])], &[(X, 3)]);
    let r = h.check();
    assert_only_bad(&r, &["int-send-skip"]);
    assert_eq!(fields(&r, "int-send-skip", &["values", "skipped"]), vec![json!({"values": [A, C], "skipped": [B]})]);
    // Allowed when batches are not atomic.
    let r = h.check_with(CheckOptions { atomic_batches: false, ..CheckOptions::default() });
    assert_eq!(r.anomaly("int-send-skip").unwrap().verdict, Verdict::Allowed);
    assert_eq!(r.count("int-send-skip"), 1);
    assert_eq!(r.validity, Validity::Valid);
}

#[test]
fn g1a_vs_failed_send_never_read() {
    let mut h = valid_base();
    h.send_inv(1, X, &[D]).send_done(1, OpType::Fail, X, &[D]);
    full_drain(&mut h);
    assert_eq!(h.check().validity, Validity::Valid);

    let mut h = valid_base();
    h.send_inv(1, X, &[D]).send_done(1, OpType::Fail, X, &[D]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, D)])], &[(X, 4)]);
    let r = h.check();
    assert_only_bad(&r, &["G1a"]);
    assert_eq!(fields(&r, "G1a", &["key", "value", "offset"]), vec![json!({"key": X, "value": D, "offset": 3})]);
}

#[test]
fn phantom_read_vs_attempted_value() {
    // An info send's value read later is fine.
    let mut h = valid_base();
    h.send_inv(1, X, &[D]).send_done(1, OpType::Info, X, &[D]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, D)])], &[(X, 4)]);
    assert_eq!(h.check().validity, Validity::Valid);

    let mut h = valid_base();
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, 999)])], &[(X, 4)]);
    let r = h.check();
    assert_only_bad(&r, &["phantom-read"]);
    assert_eq!(fields(&r, "phantom-read", &["key", "value", "offset"]), vec![json!({"key": X, "value": 999, "offset": 3})]);
}

#[test]
fn wrong_key_vs_right_key() {
    let mut h = valid_base();
    h.send(1, Y, &[(0, D)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C)]), (Y, &[(0, D)])], &[(X, 3), (Y, 1)]);
    assert_eq!(h.check().validity, Validity::Valid);

    let mut h = valid_base();
    h.send(1, Y, &[(0, D)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, D)]), (Y, &[(0, D)])], &[(X, 4), (Y, 1)]);
    let r = h.check();
    assert_only_bad(&r, &["wrong-key"]);
    assert_eq!(fields(&r, "wrong-key", &["key", "value", "sent-to"]), vec![json!({"key": X, "value": D, "sent-to": [Y]})]);
}

#[test]
fn ack_beyond_end_vs_tail_present() {
    // d acknowledged at 3 but the queue ends at 3 after the drain: truncated tail.
    let mut h = valid_base();
    h.send(1, X, &[(3, D)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C)])], &[(X, 3)]);
    let r = h.check();
    assert!(r.bad.contains(&"ack-beyond-end".to_owned()), "{}", r.summary_table());
    assert!(r.bad.contains(&"unseen".to_owned()));
    assert_eq!(
        fields(&r, "ack-beyond-end", &["key", "value", "offset", "high-watermark"]),
        vec![json!({"key": X, "value": D, "offset": 3, "high-watermark": 3})]
    );

    let mut h = valid_base();
    h.send(1, X, &[(3, D)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, D)])], &[(X, 4)]);
    assert_eq!(h.check().validity, Validity::Valid);

    // Without extra.max the high watermark is one past the highest offset polled.
    let mut h = valid_base();
    h.send(1, X, &[(3, D)]);
    h.inv(90, "final-drain", Json::Null);
    h.poll(90, &[(X, &[(0, A), (1, B), (2, C)])]);
    h.op(90, OpType::Ok, "final-drain", Json::Null);
    let r = h.check();
    assert_eq!(r.count("ack-beyond-end"), 1);
    assert_eq!(r.high_watermarks.get(&X), Some(&3));
}

#[test]
fn realtime_send_order_vs_concurrent_sends() {
    // A (d@4) completes before B (e@3) is invoked.
    let mut h = valid_base();
    h.send(1, X, &[(4, D)]);
    h.send(2, X, &[(3, 105)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, 105), (4, D)])], &[(X, 5)]);
    let r = h.check();
    assert_only_bad(&r, &["realtime-send-order"]);
    let e = &examples(&r, "realtime-send-order")[0];
    assert_eq!((e["earlier"]["offset"].clone(), e["later"]["offset"].clone()), (json!(4), json!(3)));

    // Concurrent: both invoked before either completed; any order is fine.
    let mut h = valid_base();
    h.send_inv(1, X, &[D]).send_inv(2, X, &[105]);
    h.send_ok(1, X, &[(4, D)]).send_ok(2, X, &[(3, 105)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, 105), (4, D)])], &[(X, 5)]);
    assert_eq!(h.check().validity, Validity::Valid);
}

#[test]
fn offset_gap_in_batch_and_after_drain() {
    // A poll returning 0 then 2 with nothing known at 1.
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.send(0, X, &[(2, C)]);
    h.poll(10, &[(X, &[(0, A), (2, C)])]);
    let r = h.check();
    assert_eq!(
        fields(&r, "offset-gap", &["kind", "offsets", "missing"]),
        vec![json!({"kind": "poll-batch", "offsets": [0, 2], "missing": 1})]
    );

    // After a complete drain: offset 1 below the high watermark 3 was never returned.
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.send(0, X, &[(2, C)]);
    h.inv(90, "final-drain", Json::Null);
    h.poll(90, &[(X, &[(0, A)])]);
    h.poll_max(90, &[(X, &[(2, C)])], &[(X, 3)]);
    h.op(90, OpType::Ok, "final-drain", Json::Null);
    let r = h.check();
    // (Dense indices skip the hole, so this is no poll-skip.)
    assert_only_bad(&r, &["offset-gap"]);
    assert_eq!(fields(&r, "offset-gap", &["kind", "from", "to"]), vec![json!({"kind": "never-polled", "from": 1, "to": 2})]);
    // Sparse offsets allowed: info only.
    let r = h.check_with(CheckOptions { dense_offsets: false, ..CheckOptions::default() });
    assert_eq!(r.anomaly("offset-gap").unwrap().verdict, Verdict::Info);
    assert_eq!(r.validity, Validity::Valid);

    let mut h = valid_base();
    full_drain(&mut h);
    assert_eq!(h.check().count("offset-gap"), 0);
}

#[test]
fn committed_offset_regression() {
    // Commit of 2 completes; a later committed seek reads 1.
    let mut h = valid_base();
    h.commit(10, &[(X, 2)]);
    h.assign(11, OpType::Ok, &[X], Seek::Committed, Some(&[(X, 1)]));
    h.poll(11, &[(X, &[(1, B), (2, C)])]);
    full_drain(&mut h);
    let r = h.check();
    assert_only_bad(&r, &["committed-offset-regression"]);
    assert_eq!(
        fields(&r, "committed-offset-regression", &["key", "read", "committed-before"]),
        vec![json!({"key": X, "read": 1, "committed-before": 2})]
    );

    // Reading the committed offset, or an older one while the commit is still in flight, is fine.
    let mut h = valid_base();
    h.commit(10, &[(X, 2)]);
    h.assign(11, OpType::Ok, &[X], Seek::Committed, Some(&[(X, 2)]));
    h.inv(10, "commit", Commit { group: "g".into(), offsets: vec![(X, 3)] }.to_json());
    h.assign(12, OpType::Ok, &[X], Seek::Committed, Some(&[(X, 2)]));
    h.op(10, OpType::Ok, "commit", Commit { group: "g".into(), offsets: vec![(X, 3)] }.to_json());
    h.poll(11, &[(X, &[(2, C)])]);
    full_drain(&mut h);
    assert_eq!(h.check().validity, Validity::Valid, "{}", h.check().summary_table());

    // Two reads out of order: 2 (completed) then 1, with the commit itself indeterminate.
    let mut h = valid_base();
    h.inv(10, "commit", Commit { group: "g".into(), offsets: vec![(X, 2)] }.to_json());
    h.op(10, OpType::Info, "commit", Commit { group: "g".into(), offsets: vec![(X, 2)] }.to_json());
    h.assign(11, OpType::Ok, &[X], Seek::Committed, Some(&[(X, 2)]));
    h.assign(12, OpType::Ok, &[X], Seek::Committed, Some(&[(X, 1)]));
    full_drain(&mut h);
    let r = h.check();
    assert_only_bad(&r, &["committed-offset-regression"]);
    assert_eq!(fields(&r, "committed-offset-regression", &["read", "read-before"]), vec![json!({"read": 1, "read-before": 2})]);
}

#[test]
fn stale_read_is_info_unless_polls_are_linearizable() {
    let mut h = valid_base();
    h.send(1, X, &[(3, D)]);
    h.poll_max(11, &[(X, &[])], &[(X, 3)]); // invoked after d@3 was acknowledged, claims the queue ends at 3
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, D)])], &[(X, 4)]);
    let r = h.check();
    assert_eq!(r.count("stale-read"), 1);
    assert_eq!(r.anomaly("stale-read").unwrap().verdict, Verdict::Info);
    assert_eq!(r.validity, Validity::Valid);
    let r = h.check_with(CheckOptions { linearizable_polls: true, ..CheckOptions::default() });
    assert_only_bad(&r, &["stale-read"]);

    // A poll invoked before the send completed may legitimately miss it.
    let mut h = valid_base();
    h.send_inv(1, X, &[D]);
    h.poll_max(11, &[(X, &[])], &[(X, 3)]);
    h.send_ok(1, X, &[(3, D)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, D)])], &[(X, 4)]);
    assert_eq!(h.check().count("stale-read"), 0);
}

#[test]
fn unseen_bad_only_after_a_complete_drain() {
    // d acknowledged, the drain completes without it (and the high watermark includes it): unseen is bad.
    let mut h = valid_base();
    h.send(1, X, &[(3, D)]);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C)])], &[(X, 4)]);
    let r = h.check();
    assert!(r.bad.contains(&"unseen".to_owned()), "{}", r.summary_table());
    assert_eq!(r.validity, Validity::Invalid);
    assert_eq!(r.unseen_by_key.get(&X), Some(&1));

    // The drain gave up: unknown, not invalid.
    let mut h = valid_base();
    h.send(1, X, &[(3, D)]);
    h.inv(90, "final-drain", Json::Null);
    h.poll_max(90, &[(X, &[(0, A), (1, B), (2, C)])], &[(X, 4)]);
    h.op(90, OpType::Info, "final-drain", Json::Null).error = Some("gave up after 60s".into());
    let r = h.check();
    assert_eq!(r.count("unseen"), 1);
    assert_eq!(r.anomaly("unseen").unwrap().verdict, Verdict::Info);
    assert_eq!(r.validity, Validity::Unknown);
    assert_eq!(r.exit_code(), 2);
    assert!(r.unknown_reasons.iter().any(|s| s.contains("final drain incomplete")));

    // A drain worker that never completed counts as incomplete too.
    let mut h = valid_base();
    full_drain(&mut h);
    h.inv(91, "final-drain", Json::Null);
    assert_eq!(h.check().validity, Validity::Unknown);
}

#[test]
fn empty_history_is_unknown() {
    let r = check(&[], &CheckOptions::default());
    assert_eq!(r.validity, Validity::Unknown);
    assert_eq!(r.validity.as_str(), "UNKNOWN");
    assert_eq!(r.anomalies.len(), ANOMALIES.len());
    assert!(r.summary_table().contains("lost-write"));
    // No ok send or poll, even with a complete drain: unknown.
    let mut h = H::default();
    h.drain(90, &[], &[(X, 0)]);
    let r = h.check();
    assert_eq!(r.validity, Validity::Unknown);
    assert!(r.unknown_reasons.contains(&"no ok send".to_owned()));
}

#[test]
fn malformed_ops_are_counted_not_fatal() {
    let mut h = valid_base();
    h.inv(5, "send", json!("garbage"));
    h.op(5, OpType::Ok, "send", json!([["send", "x", 1]]));
    h.inv(6, "poll", json!([["poll"]]));
    h.op(6, OpType::Ok, "poll", json!([["poll", [[1, [[1]]]]]]));
    h.op(7, OpType::Ok, "assign", json!({"seek": "keep"}));
    h.op(8, OpType::Ok, "commit", json!(42));
    h.op(9, OpType::Ok, "send", json!(null)); // completion without invocation
    full_drain(&mut h);
    let r = h.check();
    assert!(r.malformed.count >= 4, "{:?}", r.malformed);
    assert!(r.pairing.count >= 1);
    assert!(r.summary_table().contains("malformed"));
    assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
}

#[test]
fn results_json_and_summary_table() {
    let mut h = valid_base();
    h.send(0, X, &[(3, D)]);
    h.send_inv(1, X, &[105]).send_done(1, OpType::Info, X, &[105]);
    h.ops.last_mut().unwrap().error = Some("timeout after 5s".into());
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C)])], &[(X, 4)]);
    let r = h.check();
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["validity"], "invalid");
    let names: Vec<&str> = j["anomalies"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ANOMALIES);
    for a in j["anomalies"].as_array().unwrap() {
        assert!(a["count"].is_u64() && a["examples"].is_array() && ["bad", "info", "allowed"].contains(&a["verdict"].as_str().unwrap()));
    }
    assert_eq!(j["error_causes"][0], json!({"f": "send", "type": "info", "error": "timeout after 5s", "count": 1}));
    let table = r.summary_table();
    for name in ANOMALIES {
        assert!(table.lines().any(|l| l.starts_with(name)), "{name} missing:\n{table}");
    }
    assert!(!table.contains("VALID?"));
    assert!(table.lines().any(|l| l.starts_with("unseen") && l.contains("BAD") && l.contains("v=104")), "{table}");
    assert_eq!(r.bad, vec!["unseen".to_owned(), "offset-gap".to_owned()]); // the missing offset 3 is also a hole
    assert!(table.contains("timeout after 5s"));
    assert_eq!(r.validity.as_str(), "NO");
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn availability_and_recovery() {
    let mut h = H::default();
    h.send(0, X, &[(0, A)]); // ok at 1
    h.nemesis("start-partition", json!({"spec": "leader", "leader": "n1"})); // 2
    for v in 0..6 {
        h.send_inv(0, X, &[200 + v]).send_done(0, OpType::Fail, X, &[200 + v]); // 3..14
    }
    h.nemesis("stop-partition", Json::Null); // 15
    h.nemesis("kill", json!({"nodes": ["n2"]})); // 16
    h.send(0, X, &[(1, B)]); // ok at 18
    h.nemesis("heal", Json::Null); // 19
    h.send(0, X, &[(2, C)]); // ok at 21
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C)])], &[(X, 3)]); // invoked at 22
    let r = h.check();
    let av = &r.availability;
    let o = av.longest_outage.as_ref().unwrap();
    assert_eq!((o.start, o.end, o.duration), (1, 18, 17));
    assert_eq!(o.faults, vec!["partition leader n1".to_owned(), "kill n2".to_owned()]);
    let rec: Vec<(String, u64, Option<u64>)> = av.recoveries.iter().map(|r| (r.fault.clone(), r.healed_at, r.recovery)).collect();
    assert_eq!(rec, vec![("partition leader n1".to_owned(), 15, Some(3)), ("kill n2".to_owned(), 19, Some(2))]);
    // The kill started before the partition's first ok send: that time is not the partition's recovery.
    assert_eq!(av.recoveries.iter().map(|r| r.overlapped).collect::<Vec<_>>(), vec![true, false]);
    assert_eq!((av.mean_recovery, av.max_recovery), (Some(2), Some(2)));
    assert_eq!(av.fault_windows.len(), 2);
    assert_eq!(r.ops["send"]["fail"], 6);
    assert!(r.summary_table().contains("longest send outage"));
    assert_eq!(r.validity, Validity::Valid);
}

// ---------------------------------------------------------------------------------------------------------------
// Scheduled sends: a triggering history and a valid counterpart for each scheduled anomaly, and the bounds.
// ---------------------------------------------------------------------------------------------------------------

/// x: plain a@0; then c scheduled with a 1 s delay (acknowledged at staging offset 0, which a holds in x); then
/// plain b@1 from the same producer; a consumer reads a, b, and `read_after_ms` later c, delivered at offset 2.
/// c's invocation is at t = 2 ns, the poll that returns it completes at t = read_after_ms + 11 ns.
fn sched_base(read_after_ms: u64) -> H {
    let mut h = H::default();
    sched_ops(&mut h, read_after_ms);
    h
}

/// The ops of [`sched_base`], appended to `h`.
fn sched_ops(h: &mut H, read_after_ms: u64) {
    h.send(0, X, &[(0, A)]);
    h.sched_send(0, OpType::Ok, X, C, 1000, 0);
    h.send(0, X, &[(1, B)]);
    h.assign(10, OpType::Ok, &[X], Seek::Beginning, None);
    h.poll(10, &[(X, &[(0, A), (1, B)])]);
    h.sleep_ms(read_after_ms);
    h.poll(10, &[(X, &[(2, C)])]);
}

/// A complete drain of x = a, b, c, `after_ms` later.
fn sched_drain(h: &mut H, after_ms: u64) {
    h.sleep_ms(after_ms);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C)])], &[(X, 3)]);
}

#[test]
fn scheduled_send_is_valid_and_its_staging_offset_is_ignored() {
    let mut h = sched_base(1200);
    sched_drain(&mut h, 12_000);
    let r = h.check();
    assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
    assert!(r.anomalies.iter().all(|a| a.count == 0), "{}", r.summary_table());
    let sc = &r.scheduled;
    assert_eq!(sc.sends.get("ok"), Some(&1));
    assert_eq!(sc.values_read, 1);
    assert_eq!(sc.early_allowance_ms, 200);
    assert_eq!(sc.late_bound_ms, 10_000);
    // Observed at 1.2 s + 11 ns, due at 2 ns + 1 s.
    assert_eq!((sc.lateness.measurements, sc.lateness.max, sc.lateness.p50), (1, 200_000_009, 200_000_009));
    assert_eq!(sc.lateness.worst_value, Some(C));
    assert!(r.summary_table().contains("lateness      p50 200.0ms"), "{}", r.summary_table());
    assert_eq!(r.stats.messages_acked, 3);
    // The 13 s between the last send and the drain (waiting for deliveries) is no send outage.
    assert!(r.availability.longest_outage.as_ref().unwrap().duration < 1_000, "{:?}", r.availability.longest_outage);

    // The same history with the delay left out of the record: c's staging offset is taken for a claim about x.
    let mut plain = sched_base(1200);
    sched_drain(&mut plain, 12_000);
    for op in &mut plain.ops {
        if op.f == "send" {
            op.extra = None;
        }
    }
    let r = plain.check();
    assert_eq!(r.validity, Validity::Invalid);
    for name in ["inconsistent-offsets", "duplicate", "nonmonotonic-send"] {
        assert!(r.count(name) >= 1, "{name}: {}", r.summary_table());
    }
}

#[test]
fn scheduled_early_is_bounded_by_the_allowance_and_the_clock_faults() {
    // Read 0.7 s after the send of a 1 s delay: 300 ms early, above the 200 ms allowance.
    let mut h = sched_base(700);
    sched_drain(&mut h, 12_000);
    let r = h.check();
    assert_only_bad(&r, &["scheduled-early"]);
    let e = &examples(&r, "scheduled-early")[0];
    assert_eq!((e["key"].clone(), e["value"].clone(), e["delay_ms"].clone()), (json!(X), json!(C), json!(1000)));
    assert_eq!(e["allowance_ms"], json!(200));
    assert!((e["early_ms"].as_f64().unwrap() - 300.0).abs() < 0.001, "{e}");
    assert_eq!(op_index(&e["reader"]), 11);

    // 100 ms early: within the allowance.
    let mut h = sched_base(900);
    sched_drain(&mut h, 12_000);
    assert_eq!(h.check().validity, Validity::Valid);

    // A clock fault in force during the send widens the allowance by its largest offsets ahead and behind.
    let with_nemesis = |faults: &[(&str, Json)], then_sleep_ms: u64| {
        let mut h = H::default();
        for (f, v) in faults {
            h.nemesis(f, v.clone());
        }
        h.sleep_ms(then_sleep_ms);
        sched_ops(&mut h, 700);
        sched_drain(&mut h, 20_000);
        h.check()
    };
    let allowance = |r: &CheckResult| (r.count("scheduled-early"), r.scheduled.early_allowance_max_ms, r.scheduled.widened);
    let r = with_nemesis(&[("bump-clock", json!({"offsets-ms": {"2": 50}}))], 0);
    assert_eq!(allowance(&r), (1, 250, 1));
    let r = with_nemesis(&[("bump-clock", json!({"offsets-ms": {"1": -60, "3": 90}})), ("strobe-clock", json!({"delta-ms": 40}))], 0);
    assert_eq!(allowance(&r), (0, 350, 1), "{}", r.summary_table());
    assert_eq!((r.scheduled.skew.ahead_ms, r.scheduled.skew.behind_ms, r.scheduled.clock_windows), (90, 60, 2));
    assert!(r.summary_table().contains("early allowance 200ms (up to 350ms for 1 values near 2 clock faults"), "{}", r.summary_table());
    let r = with_nemesis(&[("clock-failed", json!({"error": "faketime file"}))], 0);
    assert_eq!(allowance(&r), (0, 600_200, 1));
    assert!(r.summary_table().contains("±300s assumed"), "{}", r.summary_table());
    // A clock set back and reset before the send: no effect. One set ahead leaves the stamps ahead for as long as its
    // offset after the reset: 5 s, so a send 1 s after the reset is covered, one 6 s after it is not.
    let reset = ("reset-clock", json!({"nodes": [1, 2, 3]}));
    assert_eq!(allowance(&with_nemesis(&[("bump-clock", json!({"offsets-ms": {"1": -5000}})), reset.clone()], 0)), (1, 200, 0));
    assert_eq!(allowance(&with_nemesis(&[("bump-clock", json!({"offsets-ms": {"1": 5000}})), reset.clone()], 1000)), (0, 5200, 1));
    assert_eq!(allowance(&with_nemesis(&[("bump-clock", json!({"offsets-ms": {"1": 5000}})), reset.clone()], 6000)), (1, 200, 0));
    // A failed clock fault stays in force until the heal, and its unknown offset (300 s) ahead after it.
    let failed = ("clock-failed", json!({"error": "x"}));
    let heal = ("heal", Json::Null);
    assert_eq!(allowance(&with_nemesis(&[failed.clone(), reset, heal.clone()], 200_000)), (0, 300_200, 1));
    assert_eq!(allowance(&with_nemesis(&[failed, heal], 301_000)), (1, 200, 0));
    // A fault that starts after the value was observed (1 s of slack before its record) does not widen it.
    let mut h = sched_base(700);
    h.sleep_ms(1100).nemesis("bump-clock", json!({"offsets-ms": {"1": -5000}}));
    sched_drain(&mut h, 12_000);
    assert_eq!(allowance(&h.check()), (1, 200, 0));

    // The bound is the poll's completion, not its invocation: a long poll invoked 0.5 s after the send and answered
    // at 1.1 s returned a message that may have been delivered at 1 s.
    let mut h = H::default();
    h.sched_send(0, OpType::Ok, X, C, 1000, 0);
    h.sleep_ms(500).poll_inv(10).sleep_ms(600).poll_done(10, OpType::Ok, &[(X, &[(0, C)])]);
    h.sleep_ms(12_000);
    h.drain(90, &[(X, &[(0, C)])], &[(X, 1)]);
    assert_eq!(h.check().validity, Validity::Valid, "{}", h.check().summary_table());

    // Unacknowledged sends are held to it too: a value that is read was stored.
    let mut h = H::default();
    h.sched_send(0, OpType::Info, X, C, 5000, 0);
    h.sleep_ms(1000).poll(10, &[(X, &[(0, C)])]);
    h.sleep_ms(12_000);
    h.drain(90, &[(X, &[(0, C)])], &[(X, 1)]);
    assert_only_bad(&h.check(), &["scheduled-early"]);
}

#[test]
fn scheduled_lost_pending_and_incomplete_drain() {
    // d: acknowledged, delay 1 s, never read. A drain 12 s later (past the 1 s + 10 s horizon) decides it.
    let lost = |drain_after_ms: u64, faults: &[(&str, Json)]| {
        let mut h = sched_base(1200);
        for (f, v) in faults {
            h.nemesis(f, v.clone());
        }
        h.sched_send(1, OpType::Ok, X, D, 1000, 1);
        sched_drain(&mut h, drain_after_ms);
        h.check()
    };
    let r = lost(12_000, &[]);
    assert_only_bad(&r, &["scheduled-lost"]);
    assert_eq!(fields(&r, "scheduled-lost", &["key", "value", "delay_ms"]), vec![json!({"key": X, "value": D, "delay_ms": 1000})]);
    assert_eq!(r.count("unseen"), 0, "scheduled values are not `unseen`");

    // A drain 5 s later ended before d had to be delivered: pending, and the result is unknown.
    let r = lost(5_000, &[]);
    assert_eq!((r.count("scheduled-lost"), r.count("scheduled-pending")), (0, 1));
    assert_eq!(r.anomaly("scheduled-pending").unwrap().verdict, Verdict::Info);
    assert_eq!(r.validity, Validity::Unknown);
    assert!(r.unknown_reasons.iter().any(|u| u.contains("scheduled")), "{:?}", r.unknown_reasons);

    // A clock set ahead by 5 s moves the horizon by as much; so does the last heal.
    assert_eq!(lost(12_000, &[("bump-clock", json!({"offsets-ms": {"1": 5000}}))]).count("scheduled-pending"), 1);
    assert_eq!(lost(17_000, &[("bump-clock", json!({"offsets-ms": {"1": 5000}}))]).count("scheduled-lost"), 1);
    let mut h = sched_base(1200);
    h.sched_send(1, OpType::Ok, X, D, 1000, 1);
    h.sleep_ms(20_000).nemesis("heal", Json::Null);
    sched_drain(&mut h, 5_000);
    assert_eq!(h.check().count("scheduled-pending"), 1);

    // Without a complete drain, an unread scheduled value is reported as info.
    let mut h = sched_base(1200);
    h.sched_send(1, OpType::Ok, X, D, 1000, 1);
    h.sleep_ms(12_000).inv(90, "final-drain", Json::Null).op(90, OpType::Info, "final-drain", Json::Null);
    let r = h.check();
    assert_eq!(r.anomaly("scheduled-lost").unwrap().verdict, Verdict::Info);
    assert_eq!((r.count("scheduled-lost"), r.validity), (1, Validity::Unknown));

    // Unacknowledged (info) or failed scheduled sends that never appear are fine.
    let mut h = sched_base(1200);
    h.sched_send(1, OpType::Info, X, D, 1000, 1);
    h.sched_send(2, OpType::Fail, X, F, 1000, 1);
    sched_drain(&mut h, 12_000);
    assert_eq!(h.check().validity, Validity::Valid, "{}", h.check().summary_table());
}

#[test]
fn scheduled_duplicate_vs_one_offset() {
    // c read at offsets 2 and 3 (its staging offset 0 plays no part).
    let mut h = sched_base(1200);
    h.poll(11, &[(X, &[(2, C), (3, C)])]);
    h.sleep_ms(12_000);
    h.drain(90, &[(X, &[(0, A), (1, B), (2, C), (3, C)])], &[(X, 4)]);
    let r = h.check();
    assert_only_bad(&r, &["scheduled-duplicate"]);
    assert_eq!(fields(&r, "scheduled-duplicate", &["key", "value", "offsets"]), vec![json!({"key": X, "value": C, "offsets": [2, 3]})]);
    assert_eq!(r.count("duplicate"), 0);

    // Re-read at the same offset by two consumers: fine.
    let mut h = sched_base(1200);
    h.poll(11, &[(X, &[(2, C)])]);
    sched_drain(&mut h, 12_000);
    assert_eq!(h.check().validity, Validity::Valid);

    // An unacknowledged scheduled send may appear once, not twice.
    let info_send = |reads: &[(u64, u64)]| {
        let mut h = H::default();
        h.sched_send(0, OpType::Info, Y, G, 1000, 0);
        h.sleep_ms(1500).poll(10, &[(Y, reads)]);
        h.sleep_ms(12_000);
        let max = reads.len() as u64;
        h.drain(90, &[(Y, reads)], &[(Y, max)]);
        h.check()
    };
    let r = info_send(&[(0, G)]);
    assert!(r.bad.is_empty(), "{}", r.summary_table());
    assert_eq!(r.unknown_reasons, vec!["no ok send".to_owned()], "only because nothing was acknowledged");
    assert_only_bad(&info_send(&[(0, G), (1, G)]), &["scheduled-duplicate"]);
}

#[test]
fn scheduled_values_still_count_for_plain_checks() {
    // b (plain, acknowledged at 1) is never read, while c, delivered above it at 2, is: b is a lost write.
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.sched_send(0, OpType::Ok, X, C, 1000, 0);
    h.send(0, X, &[(1, B)]);
    h.sleep_ms(1200).poll(10, &[(X, &[(0, A)])]).poll(10, &[(X, &[(2, C)])]);
    h.sleep_ms(12_000);
    h.drain(90, &[(X, &[(0, A), (2, C)])], &[(X, 3)]);
    let r = h.check();
    assert!(r.count("lost-write") == 1 && r.count("unseen") == 1, "{}", r.summary_table());
    assert_eq!(r.count("scheduled-lost") + r.count("scheduled-early"), 0);
    // A failed scheduled send that is read is G1a.
    let mut h = H::default();
    h.sched_send(0, OpType::Fail, X, C, 1000, 0);
    h.sleep_ms(1200).poll(10, &[(X, &[(0, C)])]);
    h.sleep_ms(12_000);
    h.drain(90, &[(X, &[(0, C)])], &[(X, 1)]);
    assert_only_bad(&h.check(), &["G1a"]);
}

// ---------------------------------------------------------------------------------------------------------------
// Transactional sends (half message, END_TRANSACTION, check-backs).
// ---------------------------------------------------------------------------------------------------------------

impl H {
    /// Invoke + completion of a transactional (half) send of `v` to `k` with plan `plan`; an ok completion
    /// acknowledges the half-queue offset `half` (recorded as `extra.half_offset` and, to prove it is ignored, as the
    /// offset).
    fn txn_send(&mut self, p: u64, ty: OpType, k: u32, v: u64, plan: &str, half: u64) -> &mut Self {
        self.op(p, OpType::Invoke, "send", sends(k, &[v])).extra = Some(json!({"txn": plan}).into());
        let (value, extra) = if ty == OpType::Ok {
            (sends_at(k, &[(half, v)]), json!({"txn": plan, "half_offset": half, "commit_log_offset": 1000 + half}))
        } else {
            (sends(k, &[v]), json!({"txn": plan}))
        };
        self.op(p, ty, "send", value).extra = Some(extra.into());
        self
    }
    /// An END_TRANSACTION for `v`: invoke, then a completion of type `ty` (`None`: it never completes).
    fn txn_end(&mut self, p: u64, ty: Option<OpType>, k: u32, v: u64, decision: &str, check: bool) -> &mut Self {
        let oneway = ty == Some(OpType::Info) && !check;
        let value = json!({"key": k, "value": v, "decision": decision, "oneway": oneway, "check": check});
        self.op(p, OpType::Invoke, "txn-end", value.clone());
        if let Some(ty) = ty {
            self.op(p, ty, "txn-end", value);
        }
        self
    }
    /// A check-back for `v` and the producer's answer.
    fn txn_check(&mut self, p: u64, k: u32, v: u64, answer: &str) -> &mut Self {
        self.op(p, OpType::Info, "txn-check", json!({"key": k, "value": v, "answer": answer}));
        self
    }
}

/// Plain a at x/0; transactional b committed (END ok) and read at x/1; c rolled back, never read; d never answered
/// (parked), never read; f (crash-commit) committed by its check-back answer and read at y/0; then a complete drain.
fn txn_base(h: &mut H) {
    h.send(0, X, &[(0, A)]);
    h.txn_send(1, OpType::Ok, X, B, "commit", 0).txn_end(1, Some(OpType::Ok), X, B, "commit", false);
    h.txn_send(1, OpType::Ok, X, C, "rollback", 1).txn_end(1, Some(OpType::Ok), X, C, "rollback", false);
    h.txn_send(2, OpType::Ok, Y, D, "crash-silent", 2);
    h.txn_send(2, OpType::Ok, Y, F, "crash-commit", 3);
    h.assign(10, OpType::Ok, &[X, Y], Seek::Beginning, None);
    h.poll(10, &[(X, &[(0, A), (1, B)])]);
    h.sleep_ms(2000).txn_check(50, Y, D, "none").txn_check(50, Y, F, "commit").txn_end(50, Some(OpType::Ok), Y, F, "commit", true);
    h.poll(10, &[(Y, &[(0, F)])]);
}

fn txn_drain(h: &mut H, after_ms: u64, x: &[(u64, u64)], y: &[(u64, u64)]) {
    h.sleep_ms(after_ms);
    h.drain(90, &[(X, x), (Y, y)], &[(X, x.len() as u64), (Y, y.len() as u64)]);
}

const TXN: [&str; 5] = ["txn-aborted-visible", "txn-half-visible", "txn-duplicate", "txn-committed-lost", "txn-commit-pending"];

#[test]
fn transactional_sends_are_valid_and_their_half_offsets_are_ignored() {
    let mut h = H::default();
    txn_base(&mut h);
    txn_drain(&mut h, 6000, &[(0, A), (1, B)], &[(0, F)]);
    let r = h.check();
    assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
    assert!(r.anomalies.iter().all(|a| a.count == 0), "{}", r.summary_table());
    let t = &r.txn;
    assert_eq!((t.sends.get("ok"), t.commit_attempted, t.commit_acked, t.values_read), (Some(&4), 2, 2, 2));
    assert_eq!(t.plans.get("crash-silent"), Some(&1));
    assert_eq!(t.ends.get("commit ok check"), Some(&1));
    assert_eq!((t.checks.get("none"), t.checks.get("commit")), (Some(&1), Some(&1)));
    assert!(r.summary_table().contains("txn           half sends 4"), "{}", r.summary_table());
    // Half offsets 0-3 collide with real offsets of x and y: without `extra.txn` they are taken for claims about x
    // and y, and the checker rightly complains.
    let mut plain = H::default();
    txn_base(&mut plain);
    txn_drain(&mut plain, 6000, &[(0, A), (1, B)], &[(0, F)]);
    for op in &mut plain.ops {
        if op.f == "send" {
            op.extra = None;
        }
    }
    let r = plain.check();
    assert_eq!(r.validity, Validity::Invalid);
    assert!(r.count("inconsistent-offsets") >= 1 && r.count("unseen") >= 1, "{}", r.summary_table());
}

#[test]
fn txn_aborted_visible_vs_never_read_or_uncertain_commit() {
    // The rolled-back c is read.
    let mut h = H::default();
    txn_base(&mut h);
    h.poll(11, &[(X, &[(2, C)])]);
    txn_drain(&mut h, 6000, &[(0, A), (1, B), (2, C)], &[(0, F)]);
    let r = h.check();
    assert_only_bad(&r, &["txn-aborted-visible"]);
    assert_eq!(
        fields(&r, "txn-aborted-visible", &["key", "value", "offset", "plan", "ends"]),
        vec![json!({"key": X, "value": C, "offset": 2, "plan": "rollback", "ends": ["rollback"]})]
    );
    // The parked d (never answered) is read.
    let mut h = H::default();
    txn_base(&mut h);
    txn_drain(&mut h, 6000, &[(0, A), (1, B)], &[(0, F), (1, D)]);
    assert_only_bad(&h.check(), &["txn-aborted-visible"]);
    // A failed half send read: txn-aborted-visible, not G1a.
    let failed = |commit: Option<OpType>| {
        let mut h = H::default();
        h.send(0, X, &[(0, A)]);
        h.txn_send(1, OpType::Fail, Y, G, "commit", 0);
        if let Some(ty) = commit {
            h.txn_end(1, Some(ty), Y, G, "commit", false);
        }
        h.sleep_ms(100).poll(10, &[(Y, &[(0, G)])]);
        txn_drain(&mut h, 6000, &[(0, A)], &[(0, G)]);
        h.check()
    };
    assert_only_bad(&failed(None), &["txn-aborted-visible"]);
    assert_eq!(failed(None).count("G1a"), 0);
    // Only a certainly refused commit: still no commit attempt.
    assert_only_bad(&failed(Some(OpType::Fail)), &["txn-aborted-visible"]);
    // A commit whose outcome is unknown (oneway) may have made it visible.
    let r = failed(Some(OpType::Info));
    assert!(r.bad.is_empty(), "{}", r.summary_table());
    // Valid counterpart: the same runs without the reads.
    let mut h = H::default();
    txn_base(&mut h);
    txn_drain(&mut h, 6000, &[(0, A), (1, B)], &[(0, F)]);
    assert_eq!(h.check().count("txn-aborted-visible"), 0);
}

#[test]
fn txn_half_visible_vs_read_after_the_commit_was_sent() {
    // g read (poll completed) before its END commit was invoked.
    let run = |read_first: bool, via_check: bool| {
        let mut h = H::default();
        h.send(0, X, &[(0, A)]);
        h.txn_send(1, OpType::Ok, X, G, if via_check { "crash-commit" } else { "commit" }, 0);
        h.assign(10, OpType::Ok, &[X], Seek::Beginning, None);
        if read_first {
            h.poll(10, &[(X, &[(0, A), (1, G)])]);
        } else {
            // The poll is invoked before the END, but completes after the END was invoked: fine.
            h.poll_inv(10);
        }
        if via_check {
            h.txn_check(50, X, G, "commit");
        }
        let p = if via_check { 50 } else { 1 };
        h.txn_end(p, None, X, G, "commit", via_check);
        if !read_first {
            h.poll_done(10, OpType::Ok, &[(X, &[(0, A), (1, G)])]);
        }
        h.op(p, OpType::Ok, "txn-end", json!({"key": X, "value": G, "decision": "commit", "oneway": false, "check": via_check}));
        txn_drain(&mut h, 6000, &[(0, A), (1, G)], &[]);
        h.check()
    };
    for via_check in [false, true] {
        let r = run(true, via_check);
        assert_only_bad(&r, &["txn-half-visible"]);
        assert_eq!(fields(&r, "txn-half-visible", &["key", "value", "offset"]), vec![json!({"key": X, "value": G, "offset": 1})]);
        assert!(examples(&r, "txn-half-visible")[0]["before-commit-ms"].as_f64().unwrap() > 0.0);
        let r = run(false, via_check);
        assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
    }
}

#[test]
fn txn_duplicate_vs_one_offset() {
    let mut h = H::default();
    txn_base(&mut h);
    h.poll(10, &[(X, &[(2, B)])]);
    txn_drain(&mut h, 6000, &[(0, A), (1, B), (2, B)], &[(0, F)]);
    let r = h.check();
    assert_only_bad(&r, &["txn-duplicate"]);
    assert_eq!(fields(&r, "txn-duplicate", &["key", "value", "offsets"]), vec![json!({"key": X, "value": B, "offsets": [1, 2]})]);
    assert_eq!(r.count("duplicate"), 0, "reported once, as txn-duplicate");
    // Re-read at the same offset: fine.
    let mut h = H::default();
    txn_base(&mut h);
    h.poll(11, &[(X, &[(1, B)])]);
    txn_drain(&mut h, 6000, &[(0, A), (1, B)], &[(0, F)]);
    assert_eq!(h.check().validity, Validity::Valid);
}

#[test]
fn txn_committed_lost_pending_and_uncertain_commits() {
    // b's commit was acknowledged, but no poll ever returns it.
    let lost = |drain_after_ms: u64, end: Option<OpType>| {
        let mut h = H::default();
        h.send(0, X, &[(0, A)]);
        h.txn_send(1, OpType::Ok, X, B, "commit", 0).txn_end(1, end, X, B, "commit", false);
        h.poll(10, &[(X, &[(0, A)])]);
        txn_drain(&mut h, drain_after_ms, &[(0, A)], &[]);
        h
    };
    let r = lost(6000, Some(OpType::Ok)).check();
    assert_only_bad(&r, &["txn-committed-lost"]);
    assert_eq!(fields(&r, "txn-committed-lost", &["key", "value"]), vec![json!({"key": X, "value": B})]);
    // The drain polled before the horizon (commit + 5 s): pending, and the result unknown.
    let r = lost(1000, Some(OpType::Ok)).check();
    assert!(r.bad.is_empty(), "{}", r.summary_table());
    assert_eq!((r.count("txn-commit-pending"), r.validity), (1, Validity::Unknown));
    assert!(r.unknown_reasons.iter().any(|u| u.contains("transactional")), "{:?}", r.unknown_reasons);
    // A shorter margin decides it.
    let r = lost(1000, Some(OpType::Ok)).check_with(CheckOptions { txn_late_margin_ms: 500, ..CheckOptions::default() });
    assert_only_bad(&r, &["txn-committed-lost"]);
    // An incomplete drain: info, unknown.
    let mut h = lost(6000, Some(OpType::Ok));
    let last = h.ops.len() - 1;
    h.ops[last].op_type = OpType::Info;
    let r = h.check();
    assert!(r.bad.is_empty() && r.validity == Validity::Unknown, "{}", r.summary_table());
    assert_eq!(r.anomaly("txn-committed-lost").unwrap().verdict, Verdict::Info);
    // Commits whose outcome is unknown (oneway, no answer) or that were refused may be absent.
    for end in [Some(OpType::Info), Some(OpType::Fail), None] {
        let r = lost(6000, end).check();
        assert_eq!(r.validity, Validity::Valid, "{end:?}: {}", r.summary_table());
        assert!(TXN.iter().all(|n| r.count(n) == 0), "{}", r.summary_table());
    }
    // Valid counterpart: read by the drain.
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.txn_send(1, OpType::Ok, X, B, "commit", 0).txn_end(1, Some(OpType::Ok), X, B, "commit", false);
    txn_drain(&mut h, 6000, &[(0, A), (1, B)], &[]);
    assert_eq!(h.check().validity, Validity::Valid);
}

#[test]
fn txn_values_take_part_in_plain_poll_checks() {
    // The committed b sits at x/1 between plain a and c: a consumer that reads a then c skipped it.
    let mut h = H::default();
    h.send(0, X, &[(0, A)]);
    h.txn_send(1, OpType::Ok, X, B, "commit", 0).txn_end(1, Some(OpType::Ok), X, B, "commit", false);
    h.send(0, X, &[(2, C)]);
    h.assign(10, OpType::Ok, &[X], Seek::Beginning, None);
    h.poll(10, &[(X, &[(0, A)])]).poll(10, &[(X, &[(2, C)])]);
    txn_drain(&mut h, 6000, &[(0, A), (1, B), (2, C)], &[]);
    assert_only_bad(&h.check(), &["poll-skip"]);
    // A value read at a key it was not sent to: wrong-key.
    let mut h = H::default();
    h.txn_send(1, OpType::Ok, X, B, "commit", 0).txn_end(1, Some(OpType::Ok), X, B, "commit", false);
    h.send(0, Y, &[(0, A)]);
    txn_drain(&mut h, 6000, &[(0, B)], &[(0, A), (1, B)]);
    assert!(h.check().count("wrong-key") == 1, "{}", h.check().summary_table());
}

/// What the generated transactional run does wrong with its victim (the `victim`-th transactional send whose plan
/// the bug needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxnBug {
    None,
    /// A committed value is visible (and read) before its END commit was sent.
    HalfVisible,
    /// A rolled-back value is visible.
    AbortedVisible,
    /// A committed value is stored twice.
    Duplicate,
    /// An acknowledged commit stores nothing.
    CommittedLost,
}

/// A random run in ticks of 100 ms: each tick, the commits due are appended to their key, then one action: a plain
/// send, a transactional send (half ok, info or fail; plan commit, rollback, crash-commit, crash-silent; a commit END
/// 1-3 ticks later that is ok, oneway (stored or not) or refused; a crash-commit check-back answered 20 ticks
/// later), or a poll of one key to its end. A complete drain follows 11 s after the last action.
struct TxnModel {
    ops: Vec<Op>,
    applied: bool,
}

fn txn_model(decisions: &[u32], bug: TxnBug, victim: usize) -> TxnModel {
    const TICK: u64 = 100_000_000;
    let mut d = Decisions { d: decisions, i: 0 };
    let mut ops: Vec<Op> = Vec::new();
    let mut push = |t: u64, p: u64, ty: OpType, f: &str, value: Json, extra: Option<Json>| {
        let mut op = Op::new(ops.len() as u64, t, Process::Worker(p), ty, f, value);
        op.extra = extra.map(Into::into);
        ops.push(op);
    };
    let mut logs: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut next = [0u64; 2];
    // (tick, kind, key, value, decision): kind 0 = an END by producer 1, 1 = a check-back answered by process 50.
    let mut later: Vec<(u64, u8, u32, u64, bool)> = Vec::new();
    let (mut value, mut seen, mut applied) = (1u64, 0usize, false);
    let mut force_poll: Option<u32> = None;
    let mut victim_bug: Option<(u64, TxnBug)> = None;
    let poll = |p: u64, t: u64, k: u32, logs: &[Vec<u64>; 2], next: &mut [u64; 2], push: &mut PushOp| {
        let log = &logs[k as usize];
        let from = next[k as usize];
        let pairs: Vec<Json> = (from..log.len() as u64).map(|o| json!([o, log[o as usize]])).collect();
        next[k as usize] = log.len() as u64;
        push(t, p, OpType::Invoke, "poll", json!([["poll"]]), None);
        let extra = json!({"next": [[k, log.len()]], "max": [[k, log.len()]]});
        push(t + 1, p, OpType::Ok, "poll", json!([["poll", [[k, pairs]]]]), Some(extra));
    };
    let mut tick = 0u64;
    for step in 0..decisions.len() + 40 {
        if step >= decisions.len() && later.is_empty() && force_poll.is_none() {
            break;
        }
        tick += 1;
        let t = tick * TICK;
        later.sort_unstable();
        let mut sub = 0;
        while later.first().is_some_and(|e| e.0 <= tick) {
            let (_, kind, k, v, commit) = later.remove(0);
            let (p, check) = if kind == 0 { (1, false) } else { (50, true) };
            let bugged = victim_bug.filter(|(bv, _)| *bv == v).map(|(_, b)| b);
            let decision = if commit { "commit" } else { "rollback" };
            sub += 3;
            if check {
                push(t + sub, p, OpType::Info, "txn-check", json!({"key": k, "value": v, "answer": decision}), None);
            }
            let end = |oneway: bool| json!({"key": k, "value": v, "decision": decision, "oneway": oneway, "check": check});
            push(t + sub + 1, p, OpType::Invoke, "txn-end", end(false), None);
            let (ty, stored) = match (bugged, commit) {
                (Some(TxnBug::CommittedLost), _) => (OpType::Ok, false),
                (Some(TxnBug::HalfVisible), _) => (OpType::Ok, false),
                (Some(_), _) => (OpType::Ok, true),
                (None, _) if check => (OpType::Ok, true),
                (None, _) => match d.next(4) {
                    0 => (OpType::Info, d.next(2) == 0),
                    1 => (OpType::Fail, false),
                    _ => (OpType::Ok, true),
                },
            };
            if commit && stored {
                logs[k as usize].push(v);
                if bugged == Some(TxnBug::Duplicate) {
                    logs[k as usize].push(v);
                }
            }
            let oneway = ty == OpType::Info && !check;
            push(t + sub + 2, p, ty, "txn-end", end(oneway), None);
            // A commit END that failed or was lost is followed by a check-back (answered commit, stored).
            if commit && !check && !stored && bugged.is_none() {
                later.push((tick + 20, 1, k, v, true));
            }
            continue;
        }
        if let Some(k) = force_poll.take() {
            poll(100, t + 10_000, k, &logs, &mut next, &mut push);
            continue;
        }
        if step >= decisions.len() {
            continue;
        }
        let k = d.next(2);
        match d.next(4) {
            0 => {
                push(t + 10_000, 0, OpType::Invoke, "send", sends(k, &[value]), None);
                push(t + 10_001, 0, OpType::Ok, "send", sends_at(k, &[(logs[k as usize].len() as u64, value)]), None);
                logs[k as usize].push(value);
                value += 1;
            }
            1 => {
                let plan = ["commit", "rollback", "crash-commit", "crash-silent"][d.next(4) as usize];
                let wants = match bug {
                    TxnBug::AbortedVisible => plan == "rollback",
                    TxnBug::None => false,
                    _ => plan == "commit",
                };
                let is_victim = wants && seen == victim;
                seen += usize::from(wants);
                let ty = match d.next(6) {
                    _ if is_victim => OpType::Ok,
                    0 => OpType::Fail,
                    1 => OpType::Info,
                    _ => OpType::Ok,
                };
                let extra = json!({"txn": plan});
                push(t + 10_000, 2, OpType::Invoke, "send", sends(k, &[value]), Some(extra.clone()));
                let done = if ty == OpType::Ok { json!([["send", k, [null, value]]]) } else { sends(k, &[value]) };
                push(t + 10_001, 2, ty, "send", done, Some(extra));
                // An info half may have been stored: its check-backs come then.
                let stored = ty == OpType::Ok || (ty == OpType::Info && d.next(2) == 0);
                if is_victim {
                    applied = true;
                    victim_bug = Some((value, bug));
                    match bug {
                        TxnBug::HalfVisible | TxnBug::AbortedVisible => {
                            logs[k as usize].push(value);
                            force_poll = Some(k);
                        }
                        _ => {}
                    }
                }
                match plan {
                    // The END comes after the next tick, where a half message made visible is polled.
                    "commit" | "rollback" if ty == OpType::Ok => later.push((tick + 2 + d.next(3) as u64, 0, k, value, plan == "commit")),
                    "commit" | "crash-commit" if stored => later.push((tick + 20, 1, k, value, true)),
                    "rollback" if stored => later.push((tick + 20, 1, k, value, false)),
                    _ => {}
                }
                value += 1;
            }
            _ => poll(100, t + 10_000, k, &logs, &mut next, &mut push),
        }
    }
    let t = (tick + 110) * TICK;
    push(t, 200, OpType::Invoke, "final-drain", Json::Null, None);
    let a = Assign { keys: vec![0, 1], seek: Seek::Beginning, group: None };
    push(t + 1, 200, OpType::Invoke, "assign", a.to_json(), None);
    push(t + 2, 200, OpType::Ok, "assign", a.to_json(), None);
    let mut from_zero = [0u64; 2];
    for k in 0..2 {
        poll(200, t + 3 + 2 * k as u64, k, &logs, &mut from_zero, &mut push);
    }
    push(t + 10, 200, OpType::Ok, "final-drain", Json::Null, None);
    TxnModel { ops, applied }
}

#[test]
fn the_generated_transactional_runs_exercise_every_path() {
    let mut x: u32 = 777;
    let decisions: Vec<u32> = (0..2_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect();
    let m = txn_model(&decisions, TxnBug::None, 0);
    let r = check(&m.ops, &CheckOptions::default());
    assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
    let t = &r.txn;
    for ty in ["ok", "info", "fail"] {
        assert!(t.sends.get(ty).copied().unwrap_or(0) > 10, "{ty}: {}", r.summary_table());
    }
    for end in ["commit ok", "commit info oneway", "commit fail", "rollback ok", "commit ok check", "rollback ok check"] {
        assert!(t.ends.get(end).copied().unwrap_or(0) > 0, "{end}: {}", r.summary_table());
    }
    assert!(t.commit_acked > 50 && t.values_read >= t.commit_acked, "{}", r.summary_table());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_transactional_runs_are_valid(decisions in prop::collection::vec(any::<u32>(), 10..400)) {
        let m = txn_model(&decisions, TxnBug::None, 0);
        let r = check(&m.ops, &CheckOptions::default());
        prop_assert!(r.bad.is_empty(), "{}", r.summary_table());
        prop_assert_eq!(r.count("txn-commit-pending"), 0);
        prop_assert_eq!(r.malformed.count + r.pairing.count, 0, "{}", r.summary_table());
        if r.stats.ok_sends > 0 {
            prop_assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
        }
    }

    #[test]
    fn transactional_bugs_are_caught(
        decisions in prop::collection::vec(any::<u32>(), 10..400), victim in 0usize..4,
        bug in prop_oneof![Just(TxnBug::HalfVisible), Just(TxnBug::AbortedVisible), Just(TxnBug::Duplicate), Just(TxnBug::CommittedLost)],
    ) {
        let m = txn_model(&decisions, bug, victim);
        prop_assume!(m.applied);
        let r = check(&m.ops, &CheckOptions::default());
        let name = match bug {
            TxnBug::HalfVisible => "txn-half-visible",
            TxnBug::AbortedVisible => "txn-aborted-visible",
            TxnBug::Duplicate => "txn-duplicate",
            _ => "txn-committed-lost",
        };
        prop_assert_eq!(r.validity, Validity::Invalid);
        prop_assert_eq!(&r.bad, &vec![name.to_owned()], "{}", r.summary_table());
        prop_assert_eq!(r.count(name), 1, "{}", r.summary_table());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// History format.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn history_round_trip_through_writer_and_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let mut h = valid_base();
    h.nemesis("start-partition", json!({"spec": "leader", "grudge": {"n1": ["n2", "n3"]}}));
    h.commit(10, &[(X, 3)]);
    h.ops[1].node = Some("n1".into());
    h.send_inv(1, X, &[D]).send_done(1, OpType::Info, X, &[D]);
    h.ops.last_mut().unwrap().error = Some("timeout after 5s".into());
    full_drain(&mut h);
    let mut w = HistoryWriter::create(&path).unwrap();
    for op in &h.ops[..5] {
        w.write(op).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let mut w = HistoryWriter::append(&path).unwrap();
    for op in &h.ops[5..] {
        w.write(op).unwrap();
    }
    assert_eq!(w.written() as usize, h.ops.len() - 5);
    w.flush().unwrap();
    let back = read_history(&path).unwrap();
    assert_eq!(back, h.ops);
    // Byte for byte, including the field order of Jepsen's format.
    let text = std::fs::read_to_string(&path).unwrap();
    let rewritten: String = back.iter().map(|o| o.to_json_line().unwrap() + "\n").collect();
    assert_eq!(text, rewritten);
    assert!(text.starts_with(r#"{"index":0,"time":0,"process":0,"type":"invoke","f":"send","value":[["send",1,101]]}"#));
    assert!(text.contains(r#""type":"ok","f":"send","value":[["send",1,[0,101]]],"node":"n1"}"#));
    // Typed access.
    assert_eq!(back[1].mops().unwrap(), vec![Mop::Send { key: X, value: A, offset: Some(0) }]);
    let drain_poll = back.iter().rev().find(|o| o.f == "poll" && o.op_type == OpType::Ok).unwrap();
    assert_eq!(drain_poll.poll_extra().unwrap().max, vec![(X, 3)]);
    assert_eq!(back.iter().find(|o| o.f == "assign").unwrap().assign().unwrap().seek, Seek::Beginning);
    assert_eq!(back.iter().find(|o| o.f == "commit").unwrap().commit().unwrap().offsets, vec![(X, 3)]);
}

#[test]
fn reader_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"index":0,"time":1,"process":0,"type":"invoke","f":"send","value":[["send",2,1047]]}"#,
            "\n\n",
            r#"{"index":1,"time":2,"process":"nobody","type":"ok","f":"send","value":[]}"#,
            "\n",
            r#"{"index":2,"time":3,"process":0,"ty"#,
            "\n"
        ),
    )
    .unwrap();
    match read_history(&path) {
        Err(HistoryError::Line { line, message, .. }) => {
            assert_eq!(line, 3);
            assert!(message.contains("process"), "{message}");
        }
        other => panic!("expected a line error, got {other:?}"),
    }
    let (ops, bad) = read_history_lenient(&path).unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(bad.len(), 2);
    assert!(bad[1].to_string().contains(":4:"), "{}", bad[1]);
    assert!(matches!(read_history(dir.path().join("missing.jsonl")), Err(HistoryError::Io { .. })));
    assert!(parse_history("{}\n").is_err());
}

#[test]
fn unmatched_invocations_count_as_info() {
    let mut h = valid_base();
    h.send_inv(1, X, &[D]);
    let pairs = pair_ops(&h.ops);
    assert_eq!(pairs.pairs.last(), Some(&(Some(h.ops.len() - 1), None)));
    let r = h.check();
    assert_eq!(r.ops["send"]["info"], 1);
    assert!(r.error_causes.iter().any(|c| c.error == "never completed"));
}

// ---------------------------------------------------------------------------------------------------------------
// Properties over generated histories.
// ---------------------------------------------------------------------------------------------------------------

/// A random but correct run: producers append unique values (single messages or atomic batches) to a few keys at
/// dense offsets, some sends fail (not appended) or time out (appended or not); consumers assign, seek, poll
/// contiguous ranges and commit; the nemesis injects faults; then a complete final drain reads every queue.
struct Model {
    ops: Vec<Op>,
    logs: Vec<Vec<u64>>,
    t: u64,
    next_value: u64,
}

struct Decisions<'a> {
    d: &'a [u32],
    i: usize,
}

impl Decisions<'_> {
    fn next(&mut self, n: u32) -> u32 {
        let v = self.d.get(self.i).copied().unwrap_or((self.i as u32).wrapping_mul(2654435761));
        self.i += 1;
        v % n.max(1)
    }
}

impl Model {
    fn push(&mut self, process: Process, ty: OpType, f: &str, value: Json, extra: Option<Json>) {
        self.t += 1 + self.ops.len() as u64 % 3;
        let mut op = Op::new(self.ops.len() as u64, self.t * 1000, process, ty, f, value);
        op.extra = extra.map(Into::into);
        self.ops.push(op);
    }

    fn poll_reads(&self, next: &mut std::collections::BTreeMap<u32, u64>, keys: &[u32], max: u64) -> (Json, Json) {
        let mut per_key = Vec::new();
        let (mut nexts, mut maxes) = (Vec::new(), Vec::new());
        for &k in keys {
            let log = &self.logs[k as usize];
            let from = *next.get(&k).unwrap_or(&0);
            let to = (from + max).min(log.len() as u64);
            let pairs: Vec<Json> = (from..to).map(|o| json!([o, log[o as usize]])).collect();
            per_key.push(json!([k, pairs]));
            next.insert(k, to);
            nexts.push(json!([k, to]));
            maxes.push(json!([k, log.len()]));
        }
        (json!([["poll", per_key]]), json!({"next": nexts, "max": maxes}))
    }

    fn generate(decisions: &[u32], keys: u32, producers: u32, consumers: u32) -> Model {
        let mut m = Model { ops: Vec::new(), logs: vec![Vec::new(); keys as usize], t: 0, next_value: 1 };
        let mut d = Decisions { d: decisions, i: 0 };
        // Producer: (process id, outstanding (key, values)).
        // Process ids: producers p, p + 10, p + 20, ... (a new id after each info); consumers 1_000_000 + c, + 10, ...
        /// A producer: its process id and its outstanding send (key, values).
        type Producer = (u64, Option<(u32, Vec<u64>)>);
        let mut prods: Vec<Producer> = (0..producers).map(|p| (p as u64, None)).collect();
        struct Cons {
            pid: u64,
            assigned: Vec<u32>,
            next: std::collections::BTreeMap<u32, u64>,
            group: String,
        }
        let mut cons: Vec<Cons> = (0..consumers)
            .map(|c| Cons { pid: 1_000_000 + c as u64, assigned: Vec::new(), next: Default::default(), group: format!("g{c}") })
            .collect();
        let mut committed: std::collections::BTreeMap<(String, u32), u64> = Default::default();
        let steps = decisions.len();
        for _ in 0..steps {
            let actor = d.next(producers + consumers + 1);
            if actor < producers {
                let p = &mut prods[actor as usize];
                let pid = p.0;
                match p.1.take() {
                    None => {
                        let k = d.next(keys);
                        let n = 1 + d.next(3) as u64;
                        let vs: Vec<u64> = (0..n).map(|i| m.next_value + i).collect();
                        m.next_value += n;
                        m.push(Process::Worker(pid), OpType::Invoke, "send", sends(k, &vs), None);
                        prods[actor as usize].1 = Some((k, vs));
                    }
                    Some((k, vs)) => {
                        let outcome = d.next(10);
                        let log = &mut m.logs[k as usize];
                        let base = log.len() as u64;
                        match outcome {
                            0 => m.push(Process::Worker(pid), OpType::Fail, "send", sends(k, &vs), None),
                            1 | 2 => {
                                if outcome == 1 {
                                    log.extend(&vs);
                                }
                                m.push(Process::Worker(pid), OpType::Info, "send", sends(k, &vs), None);
                                prods[actor as usize].0 += 10;
                            }
                            _ => {
                                log.extend(&vs);
                                let ovs: Vec<(u64, u64)> = vs.iter().enumerate().map(|(i, &v)| (base + i as u64, v)).collect();
                                m.push(Process::Worker(pid), OpType::Ok, "send", sends_at(k, &ovs), None);
                            }
                        }
                    }
                }
            } else if actor < producers + consumers {
                let c = &mut cons[(actor - producers) as usize];
                let pid = c.pid;
                match d.next(8) {
                    0 => {
                        let mut ks: Vec<u32> = (0..keys).filter(|_| d.next(2) == 0).collect();
                        if ks.is_empty() {
                            ks.push(d.next(keys));
                        }
                        let seek = [Seek::Keep, Seek::Beginning, Seek::Committed][d.next(3) as usize];
                        let a = Assign { keys: ks.clone(), seek, group: Some(c.group.clone()) };
                        let mut extra = None;
                        for &k in &ks {
                            match seek {
                                Seek::Keep => {}
                                Seek::Beginning => drop(c.next.insert(k, 0)),
                                Seek::Committed => drop(c.next.insert(k, *committed.get(&(c.group.clone(), k)).unwrap_or(&0))),
                            }
                        }
                        if seek == Seek::Committed {
                            let cs: Vec<Json> =
                                ks.iter().filter_map(|&k| committed.get(&(c.group.clone(), k)).map(|o| json!([k, o]))).collect();
                            extra = Some(json!({ "committed": cs }));
                        }
                        c.assigned = ks;
                        m.push(Process::Worker(pid), OpType::Invoke, "assign", a.to_json(), None);
                        m.push(Process::Worker(pid), OpType::Ok, "assign", a.to_json(), extra);
                    }
                    1 => {
                        let offs: Vec<(u32, u64)> = c
                            .assigned
                            .iter()
                            .filter_map(|&k| {
                                let n = *c.next.get(&k)?;
                                (n > *committed.get(&(c.group.clone(), k)).unwrap_or(&0)).then_some((k, n))
                            })
                            .collect();
                        if offs.is_empty() {
                            continue;
                        }
                        let cm = Commit { group: c.group.clone(), offsets: offs.clone() };
                        m.push(Process::Worker(pid), OpType::Invoke, "commit", cm.to_json(), None);
                        for &(k, o) in &offs {
                            committed.insert((c.group.clone(), k), o);
                        }
                        m.push(Process::Worker(pid), OpType::Ok, "commit", cm.to_json(), None);
                    }
                    2 => {
                        m.push(Process::Worker(pid), OpType::Invoke, "poll", json!([["poll"]]), None);
                        m.push(Process::Worker(pid), OpType::Info, "poll", json!([["poll"]]), None);
                        c.pid += 10;
                    }
                    _ => {
                        if c.assigned.is_empty() {
                            continue;
                        }
                        let ks = c.assigned.clone();
                        let max = 1 + d.next(4) as u64;
                        m.push(Process::Worker(pid), OpType::Invoke, "poll", json!([["poll"]]), None);
                        let mut next = std::mem::take(&mut cons[(actor - producers) as usize].next);
                        let (value, extra) = m.poll_reads(&mut next, &ks, max);
                        cons[(actor - producers) as usize].next = next;
                        m.push(Process::Worker(pid), OpType::Ok, "poll", value, Some(extra));
                    }
                }
            } else {
                let f = ["start-partition", "stop-partition", "kill", "start", "heal"][d.next(5) as usize];
                m.push(Process::Nemesis, OpType::Info, f, json!({"spec": "one"}), None);
            }
        }
        // Finish outstanding sends.
        for p in prods.iter_mut() {
            if let Some((k, vs)) = p.1.take() {
                let log = &mut m.logs[k as usize];
                let base = log.len() as u64;
                log.extend(&vs);
                let ovs: Vec<(u64, u64)> = vs.iter().enumerate().map(|(i, &v)| (base + i as u64, v)).collect();
                m.push(Process::Worker(p.0), OpType::Ok, "send", sends_at(k, &ovs), None);
            }
        }
        // Final drain.
        let pid = 1 << 40;
        let all: Vec<u32> = (0..keys).collect();
        m.push(Process::Worker(pid), OpType::Invoke, "final-drain", Json::Null, None);
        let a = Assign { keys: all.clone(), seek: Seek::Beginning, group: None };
        m.push(Process::Worker(pid), OpType::Invoke, "assign", a.to_json(), None);
        m.push(Process::Worker(pid), OpType::Ok, "assign", a.to_json(), None);
        let mut next = std::collections::BTreeMap::new();
        loop {
            m.push(Process::Worker(pid), OpType::Invoke, "poll", json!([["poll"]]), None);
            let (value, extra) = m.poll_reads(&mut next, &all, 8);
            m.push(Process::Worker(pid), OpType::Ok, "poll", value, Some(extra));
            if all.iter().all(|&k| next[&k] == m.logs[k as usize].len() as u64) {
                break;
            }
        }
        m.push(Process::Worker(pid), OpType::Ok, "final-drain", Json::Null, None);
        m
    }
}

/// A deliberate fault in a generated scheduled-send run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SchedBug {
    None,
    /// The victim is delivered one tick after its send, and a consumer reads it at once.
    Early,
    /// The victim (acknowledged) is never delivered.
    Lost,
    /// The victim is delivered twice.
    Duplicate,
}

/// A random run of plain and scheduled sends, in ticks of 100 ms: each tick, first the scheduled messages due are
/// appended to their key, then one action: a plain send (appended at once), a scheduled send (delay 1-20 s; ok,
/// info or fail; an info one is stored or not; delivered 0-2 ticks after it is due), or a poll of one key that reads
/// from the consumer's position to the end. A complete drain follows 11 s after the last send is due. The `victim`-th
/// scheduled send (forced ok) gets `bug`; `applied` says whether there was one.
struct SchedModel {
    ops: Vec<Op>,
    applied: bool,
}

/// Appends an op: (time, process, type, f, value, extra).
type PushOp<'a> = dyn FnMut(u64, u64, OpType, &str, Json, Option<Json>) + 'a;

fn sched_model(decisions: &[u32], bug: SchedBug, victim: usize) -> SchedModel {
    const TICK: u64 = 100_000_000;
    let mut d = Decisions { d: decisions, i: 0 };
    let mut ops: Vec<Op> = Vec::new();
    let mut push = |t: u64, p: u64, ty: OpType, f: &str, value: Json, extra: Option<Json>| {
        let mut op = Op::new(ops.len() as u64, t, Process::Worker(p), ty, f, value);
        op.extra = extra.map(Into::into);
        ops.push(op);
    };
    let mut logs: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut next = [0u64; 2];
    let mut pending: Vec<(u64, u32, u64)> = Vec::new();
    let (mut value, mut scheduled, mut applied) = (1u64, 0usize, false);
    let mut force_poll: Option<u32> = None;
    let mut last_due = 0u64;
    let poll = |p: u64, t: u64, k: u32, logs: &[Vec<u64>; 2], next: &mut [u64; 2], push: &mut PushOp| {
        let log = &logs[k as usize];
        let from = next[k as usize];
        let pairs: Vec<Json> = (from..log.len() as u64).map(|o| json!([o, log[o as usize]])).collect();
        next[k as usize] = log.len() as u64;
        push(t, p, OpType::Invoke, "poll", json!([["poll"]]), None);
        let extra = json!({"next": [[k, log.len()]], "max": [[k, log.len()]]});
        push(t + 1, p, OpType::Ok, "poll", json!([["poll", [[k, pairs]]]]), Some(extra));
    };
    let mut tick = 0u64;
    // One more tick when the last action asked for a poll.
    for step in 0..decisions.len() + 1 {
        if step == decisions.len() && force_poll.is_none() {
            break;
        }
        tick += 1;
        let t = tick * TICK;
        pending.sort_unstable();
        while pending.first().is_some_and(|&(due, _, _)| due <= tick) {
            let (_, k, v) = pending.remove(0);
            logs[k as usize].push(v);
        }
        if let Some(k) = force_poll.take() {
            poll(100, t + 10, k, &logs, &mut next, &mut push);
            continue;
        }
        let k = d.next(2);
        match d.next(5) {
            0 => {
                push(t + 10, 0, OpType::Invoke, "send", sends(k, &[value]), None);
                push(t + 11, 0, OpType::Ok, "send", sends_at(k, &[(logs[k as usize].len() as u64, value)]), None);
                logs[k as usize].push(value);
                value += 1;
            }
            1 => {
                let delay_ms = 1000 + 100 * d.next(191) as u64;
                let is_victim = scheduled == victim && bug != SchedBug::None;
                scheduled += 1;
                let ty = match d.next(6) {
                    _ if is_victim => OpType::Ok,
                    0 => OpType::Fail,
                    1 => OpType::Info,
                    _ => OpType::Ok,
                };
                let extra = json!({"delay_ms": delay_ms, "via": "timer"});
                push(t + 10, 1, OpType::Invoke, "send", sends(k, &[value]), Some(extra.clone()));
                let done = if ty == OpType::Ok { json!([["send", k, [null, value]]]) } else { sends(k, &[value]) };
                push(t + 11, 1, ty, "send", done, Some(extra));
                let stored = ty == OpType::Ok || (ty == OpType::Info && d.next(2) == 0);
                let due = tick + delay_ms / 100 + 1 + d.next(3) as u64;
                last_due = last_due.max(due + 2);
                match (is_victim, bug) {
                    (true, SchedBug::Early) => {
                        pending.push((tick + 1, k, value));
                        force_poll = Some(k);
                    }
                    (true, SchedBug::Lost) => {}
                    (true, SchedBug::Duplicate) => {
                        pending.push((due, k, value));
                        pending.push((due + 2, k, value));
                    }
                    _ if stored => pending.push((due, k, value)),
                    _ => {}
                }
                applied |= is_victim;
                value += 1;
            }
            _ => poll(100, t + 10, k, &logs, &mut next, &mut push),
        }
    }
    pending.sort_unstable();
    for (due, k, v) in pending.drain(..) {
        tick = tick.max(due);
        logs[k as usize].push(v);
    }
    let t = (tick.max(last_due) + 110) * TICK;
    push(t, 200, OpType::Invoke, "final-drain", Json::Null, None);
    let a = Assign { keys: vec![0, 1], seek: Seek::Beginning, group: None };
    push(t + 1, 200, OpType::Invoke, "assign", a.to_json(), None);
    push(t + 2, 200, OpType::Ok, "assign", a.to_json(), None);
    let mut from_zero = [0u64; 2];
    for k in 0..2 {
        poll(200, t + 3 + 2 * k as u64, k, &logs, &mut from_zero, &mut push);
    }
    push(t + 10, 200, OpType::Ok, "final-drain", Json::Null, None);
    SchedModel { ops, applied }
}

fn ok_sent_messages(ops: &[Op]) -> Vec<(u32, u64, u64)> {
    ops.iter()
        .filter(|o| o.f == "send" && o.op_type == OpType::Ok)
        .flat_map(|o| o.mops().unwrap())
        .filter_map(|m| match m {
            Mop::Send { key, value, offset: Some(o) } => Some((key, o, value)),
            _ => None,
        })
        .collect()
}

fn map_polls(ops: &mut [Op], mut f: impl FnMut(u32, Vec<(u64, u64)>) -> Vec<(u64, u64)>) {
    for op in ops.iter_mut().filter(|o| o.f == "poll") {
        let mops = op.mops().unwrap();
        let mops: Vec<Mop> = mops
            .into_iter()
            .map(|m| match m {
                Mop::Poll { reads: Some(rs) } => Mop::Poll { reads: Some(rs.into_iter().map(|(k, pairs)| (k, f(k, pairs))).collect()) },
                other => other,
            })
            .collect();
        op.value = raftmq_jepsen::history::mops_json(&mops).into();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_valid_histories_are_valid(
        decisions in prop::collection::vec(any::<u32>(), 10..250),
        keys in 1u32..4, producers in 1u32..4, consumers in 1u32..3,
    ) {
        let m = Model::generate(&decisions, keys, producers, consumers);
        let r = check(&m.ops, &CheckOptions::default());
        prop_assert!(r.bad.is_empty(), "{}", r.summary_table());
        prop_assert_eq!(r.malformed.count, 0);
        prop_assert_eq!(r.pairing.count, 0);
        if r.stats.ok_sends > 0 {
            prop_assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
        } else {
            prop_assert_eq!(r.validity, Validity::Unknown);
        }
        // Round trip through the text format changes nothing.
        let text: String = m.ops.iter().map(|o| o.to_json_line().unwrap() + "\n").collect();
        prop_assert_eq!(&parse_history(&text).unwrap(), &m.ops);
    }

    #[test]
    fn deleting_an_acknowledged_value_from_every_poll_is_caught(
        decisions in prop::collection::vec(any::<u32>(), 10..250),
        keys in 1u32..4, producers in 1u32..4, consumers in 1u32..3, pick in any::<prop::sample::Index>(),
    ) {
        let mut m = Model::generate(&decisions, keys, producers, consumers);
        let acked = ok_sent_messages(&m.ops);
        prop_assume!(!acked.is_empty());
        let (k, o, v) = acked[pick.index(acked.len())];
        map_polls(&mut m.ops, |pk, pairs| pairs.into_iter().filter(|&(po, pv)| !(pk == k && po == o && pv == v)).collect());
        let r = check(&m.ops, &CheckOptions::default());
        prop_assert_eq!(r.validity, Validity::Invalid);
        prop_assert!(r.count("unseen") >= 1, "{}", r.summary_table());
        // Anything above it in the same queue was read, so it is also a lost write.
        if (o + 1) < m.logs[k as usize].len() as u64 {
            prop_assert!(r.count("lost-write") >= 1, "{}", r.summary_table());
        }
    }

    #[test]
    fn duplicating_an_acknowledged_value_at_another_offset_is_caught(
        decisions in prop::collection::vec(any::<u32>(), 10..250),
        keys in 1u32..4, producers in 1u32..4, consumers in 1u32..3, pick in any::<prop::sample::Index>(),
    ) {
        let mut m = Model::generate(&decisions, keys, producers, consumers);
        let acked = ok_sent_messages(&m.ops);
        prop_assume!(!acked.is_empty());
        let (k, o, v) = acked[pick.index(acked.len())];
        // The drain's last poll also returns v one past the end of its queue.
        let end = m.logs[k as usize].len() as u64;
        let last_poll = m.ops.iter().rposition(|op| op.f == "poll" && op.op_type == OpType::Ok).unwrap();
        let mut done = false;
        map_polls(&mut m.ops[last_poll..=last_poll], |pk, mut pairs| {
            if pk == k && !done {
                pairs.push((end, v));
                done = true;
            }
            pairs
        });
        prop_assert!(done);
        let r = check(&m.ops, &CheckOptions::default());
        prop_assert_eq!(r.validity, Validity::Invalid);
        let dup = r.anomaly("duplicate").unwrap();
        prop_assert_eq!(dup.count, 1, "{}", r.summary_table());
        prop_assert_eq!(&dup.examples[0]["offsets"], &json!([o, end]));
    }

    #[test]
    fn generated_scheduled_runs_are_valid(decisions in prop::collection::vec(any::<u32>(), 10..400)) {
        let m = sched_model(&decisions, SchedBug::None, 0);
        let r = check(&m.ops, &CheckOptions::default());
        prop_assert!(r.bad.is_empty(), "{}", r.summary_table());
        prop_assert_eq!(r.count("scheduled-pending"), 0);
        prop_assert_eq!(r.malformed.count + r.pairing.count, 0);
        if r.stats.ok_sends > 0 {
            prop_assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
        }
        prop_assert!(r.scheduled.lateness.min >= 0, "{}", r.summary_table());
    }

    #[test]
    fn scheduled_bugs_are_caught(
        decisions in prop::collection::vec(any::<u32>(), 10..400), victim in 0usize..6,
        bug in prop_oneof![Just(SchedBug::Early), Just(SchedBug::Lost), Just(SchedBug::Duplicate)],
    ) {
        let m = sched_model(&decisions, bug, victim);
        prop_assume!(m.applied);
        let r = check(&m.ops, &CheckOptions::default());
        let name = match bug {
            SchedBug::Early => "scheduled-early",
            SchedBug::Lost => "scheduled-lost",
            _ => "scheduled-duplicate",
        };
        prop_assert_eq!(r.validity, Validity::Invalid);
        prop_assert_eq!(&r.bad, &vec![name.to_owned()], "{}", r.summary_table());
        prop_assert_eq!(r.count(name), 1, "{}", r.summary_table());
    }
}

fn arb_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<u64>().prop_map(Json::from),
        (0u64..6).prop_map(Json::from),
        (-3i64..0).prop_map(Json::from),
        prop::sample::select(vec!["send", "poll", "keep", "committed", "beginning", "g", "x"]).prop_map(Json::from),
    ];
    let txn = (0u32..3, prop_oneof![0u64..4, Just(u64::MAX)], prop::sample::select(vec!["commit", "rollback", "none", "x"]))
        .prop_map(|(k, v, d)| json!({"key": k, "value": v, "decision": d, "answer": d, "oneway": false, "check": true}));
    let leaf = prop_oneof![4 => leaf, 1 => txn];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::vec(
                (prop::sample::select(vec!["keys", "seek", "group", "offsets", "next", "max", "committed"]), inner),
                0..3
            )
            .prop_map(|kv| Json::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// Well-formed mops with extreme numbers, or arbitrary JSON.
fn arb_value() -> impl Strategy<Value = Json> {
    let big = prop_oneof![0u64..4, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()];
    prop_oneof![
        (0u32..3, big.clone(), big.clone()).prop_map(|(k, o, v)| json!([["send", k, [o, v]]])),
        (0u32..3, big.clone()).prop_map(|(k, v)| json!([["send", k, v]])),
        (0u32..3, prop::collection::vec((big.clone(), big), 0..4)).prop_map(|(k, pairs)| json!([["poll", [[k, pairs]]]])),
        arb_json(),
    ]
}

fn arb_op() -> impl Strategy<Value = (Option<u64>, OpType, &'static str, Json, Option<Json>, u64)> {
    (
        prop_oneof![Just(None), (0u64..3).prop_map(Some)],
        prop::sample::select(vec![OpType::Invoke, OpType::Ok, OpType::Fail, OpType::Info]),
        prop::sample::select(vec![
            "send",
            "poll",
            "assign",
            "commit",
            "crash",
            "final-drain",
            "txn-end",
            "txn-check",
            "start-partition",
            "heal",
            "kill",
            "start",
        ]),
        arb_value(),
        prop::option::of(prop_oneof![
            (0u32..3, prop_oneof![0u64..4, Just(u64::MAX)]).prop_map(|(k, m)| json!({"next": [[k, m]], "max": [[k, m]]})),
            (0u32..3, prop_oneof![0u64..4, Just(u64::MAX)]).prop_map(|(k, c)| json!({"committed": [[k, c]]})),
            prop::sample::select(vec![json!({"txn": "commit"}), json!({"txn": 7}), json!({"txn": null, "delay_ms": 5})]),
            arb_json(),
        ]),
        prop_oneof![0u64..50, Just(u64::MAX), any::<u64>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_ops_never_panic(raw in prop::collection::vec(arb_op(), 0..40)) {
        let ops: Vec<Op> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (p, ty, f, value, extra, time))| {
                let process = p.map_or(Process::Nemesis, Process::Worker);
                let mut op = Op::new(i as u64, time, process, ty, f, value);
                op.extra = extra.map(Into::into);
                op
            })
            .collect();
        for opts in [CheckOptions::default(), CheckOptions { atomic_batches: false, dense_offsets: false, linearizable_polls: true, max_examples: 1, ..CheckOptions::default() }] {
            let r = check(&ops, &opts);
            let _ = r.summary_table();
            prop_assert!(serde_json::to_string(&r).is_ok());
        }
        let _ = realtime_lag(&ops);
        let _ = unseen_series(&ops);
        let text: String = ops.iter().map(|o| o.to_json_line().unwrap() + "\n").collect();
        prop_assert_eq!(parse_history(&text).unwrap(), ops);
    }
}

#[test]
fn fifty_thousand_ops_check_quickly() {
    // A long deterministic decision stream → a model history of ~50k ops.
    let mut x: u32 = 12345;
    let decisions: Vec<u32> = (0..40_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect();
    let m = Model::generate(&decisions, 4, 4, 2);
    assert!(m.ops.len() > 40_000, "{}", m.ops.len());
    let t0 = Instant::now();
    let r = check(&m.ops, &CheckOptions::default());
    let took = t0.elapsed();
    eprintln!("checked {} ops in {took:?}\n{}", m.ops.len(), r.summary_table());
    assert_eq!(r.validity, Validity::Valid, "{}", r.summary_table());
    // Generous for unoptimized test builds; a release build takes well under a second.
    assert!(took.as_secs() < 20, "{took:?}");
}
