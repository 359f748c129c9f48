#!/usr/bin/env bash
# Chaos tests of a 3-node raftmq group in network namespaces (see docs/jepsen.md).
#
#   scripts/jepsen.sh --quick                 CI suite: fixed seeds, several nemesis families, ~5 minutes;
#                                             exits non-zero unless the normal runs are VALID? YES and the
#                                             injected-bug runs are caught (VALID? NO with the expected anomaly)
#   scripts/jepsen.sh --suite [SEED [FAMILY...]]  the full suite: every nemesis family alone, then all combined
#                                             (or only the FAMILYs named), 5 minutes of faults each, producer
#                                             retries on and a fifth of the sends transactional (~55 minutes;
#                                             release build)
#   scripts/jepsen.sh [run options]           one run, e.g. --nemesis all --time-limit 300 --seed 3
#                                             (options of `raftmq-jepsen run`; release build)
#   scripts/jepsen.sh cleanup                 remove namespaces, bridge, rules and processes of a crashed run
#
# Needs root. Installs iproute2, nftables and faketime from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/jepsen.sh needs root (network namespaces, nftables, tc)" >&2
  exit 2
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

mode=full
if [ "${1:-}" = "--quick" ]; then mode=quick; shift; fi
if [ "${1:-}" = "--suite" ]; then mode=suite; shift; fi
if [ "${1:-}" = "cleanup" ]; then mode=cleanup; shift; fi

# One run at a time per machine: every run uses the same namespaces, addresses and bridge, and starts by
# cleaning them up, so a second run would tear down or talk to the first one's cluster (and both would report
# the other's messages as anomalies). A second run waits for the lock.
if [ "$mode" != cleanup ]; then
  exec 9>/var/lock/raftmq-jepsen.lock
  if ! flock -n 9; then
    echo "another raftmq jepsen run holds /var/lock/raftmq-jepsen.lock; waiting for it to finish"
    flock 9
  fi
fi

# Quick runs use the debug build the test suite already made; full runs use release binaries.
if [ "$mode" = full ] || [ "$mode" = suite ]; then profile=release; flag=--release; else profile=debug; flag=; fi
BIN="$CARGO_TARGET_DIR/$profile/raftmq"
JEPSEN="$CARGO_TARGET_DIR/$profile/raftmq-jepsen"
# "Testing the tester" needs a broker that acknowledges before a quorum (`unsafeAckBeforeQuorum`), delivers
# scheduled messages early (`unsafeScheduleEarlyMs`) or shows half messages (`unsafeTxnVisibleAtHalf`): all exist
# only in builds with the cargo feature
# `unsafe-ack-before-quorum`. Built first and copied aside, because the feature changes the binary at the same
# path; the ordinary build below then restores the safe `raftmq`.
BIN_UNSAFE="$CARGO_TARGET_DIR/$profile/raftmq-unsafe-ack"
wants_unsafe=no
if [ "$mode" = quick ]; then wants_unsafe=yes; fi
for a in "$@"; do case "$a" in *unsafeAckBeforeQuorum* | *unsafeScheduleEarlyMs* | *unsafeTxnVisibleAtHalf*) wants_unsafe=yes ;; esac; done
if [ "$mode" != cleanup ] && [ "$wants_unsafe" = yes ]; then
  cargo build -q $flag -p raftmq-cli --features unsafe-ack-before-quorum
  cp "$BIN" "$BIN_UNSAFE"
fi
cargo build -q $flag -p raftmq-cli -p raftmq-jepsen

if [ "$mode" = cleanup ]; then
  exec "$JEPSEN" cleanup
fi
# A run killed half-way leaves namespaces behind: always start clean.
"$JEPSEN" cleanup >/dev/null

if [ "$mode" = full ]; then
  if [ "$wants_unsafe" = yes ]; then BIN="$BIN_UNSAFE"; fi
  exec "$JEPSEN" run --bin "$BIN" "$@"
fi

if [ "$mode" = suite ]; then
  seed="${1:-1}"
  shift || true
  families="${*:-partition kill pause clock loss slow transfer all}"
  summary="${RAFTMQ_JEPSEN_STORE:-jepsen/store}/suite-$seed.txt"
  mkdir -p "$(dirname "$summary")"
  : > "$summary"
  bad=0
  # Producers retry (the client's default: the broker de-duplicates by UNIQ_KEY) and a fifth of the sends are
  # transactional: duplicate, txn-* and every other anomaly must stay at zero under every family.
  for nemesis in $families; do
    echo "=== suite: $nemesis (seed $seed)"
    set +e
    "$JEPSEN" run --bin "$BIN" --nemesis "$nemesis" --seed "$seed" --time-limit 300 --txn-share 0.2 \
      --store "${RAFTMQ_JEPSEN_STORE:-jepsen/store}" 2>&1 | tee "$summary.$nemesis.log"
    rc=${PIPESTATUS[0]}
    set -e
    echo "$nemesis seed=$seed $(tail -1 "$summary.$nemesis.log") $(sed -n 's/^results in //p' "$summary.$nemesis.log")" >> "$summary"
    [ "$rc" -eq 0 ] || bad=$((bad + 1))
  done
  cat "$summary"
  exit $(( bad > 0 ? 1 : 0 ))
fi

store="${RAFTMQ_JEPSEN_STORE:-${TMPDIR:-/tmp}/raftmq-jepsen-quick}"
failures=0
runs=0
# Runs one quick test with broker binary $run_bin (default: the safe one); sets rc to its exit code and dir
# to its results folder.
run_one() {
  runs=$((runs + 1))
  set +e
  "$JEPSEN" run --bin "${run_bin:-$BIN}" --quick --store "$store" "$@" 2>&1 | tee "$store.last.log"
  rc=${PIPESTATUS[0]}
  set -e
  dir=$(sed -n 's/^results in //p' "$store.last.log" | tail -1)
}
quick_run() {
  echo "=== jepsen quick: $*"
  run_one "$@"
  if [ "$rc" -ne 0 ]; then failures=$((failures + 1)); echo "FAILED: $* (exit $rc)"; else echo "ok - jepsen $*"; fi
}
mkdir -p "$store"
# A fifth of the sends are scheduled (1-20 s) and a fifth transactional (half message, then commit, rollback or a
# crash answered by check-backs), and producers retry (the client's default; the broker de-duplicates by
# UNIQ_KEY): duplicate and the checker's scheduled-* and txn-* anomalies must stay at zero too.
quick_run --name quick-crash --nemesis partition,kill,pause,clock --seed 11 --time-limit 60 --interval 4 --scheduled-share 0.2 --txn-share 0.2
quick_run --name quick-net --nemesis loss,slow,transfer,partition --seed 12 --time-limit 40 --interval 4 --scheduled-share 0.2 --txn-share 0.2
# Testing the tester: with the broker acknowledging before a quorum has the message, leader kills must make
# the checker report lost acknowledged messages (VALID? NO, exit code 1). The unsafe leader holds acknowledged
# writes for 1 s before proposing them, so every leader kill loses some (seeds 13-15 each lost 172-262 on
# 2026-12-07, docs/jepsen.md); the run is still repeated with the next seed, up to three schedules, should one
# schedule never kill a leader; the checker's verdict is not relaxed.
unsafe_run() {
  local seed found="" attempt
  for attempt in 1 2 3; do
    seed=$((12 + attempt))
    echo "=== jepsen quick (must be INVALID, schedule $attempt of 3): --seed $seed $*"
    run_bin="$BIN_UNSAFE" run_one --seed "$seed" "$@"
    runs=$((runs - 1))
    found=$(python3 - "$dir/results.json" <<'PY' 2>/dev/null || echo ""
import json, sys
r = json.load(open(sys.argv[1]))
hits = [a["name"] for a in r["anomalies"] if a["count"] > 0 and a["name"] in ("lost-write", "unseen", "ack-beyond-end", "inconsistent-offsets")]
print(",".join(hits))
PY
)
    if [ "$rc" -eq 1 ] && [ -n "$found" ]; then
      runs=$((runs + 1))
      echo "ok - the checker caught unsafeAckBeforeQuorum (schedule $attempt, seed $seed): $found"
      return
    fi
    echo "not caught with seed $seed (exit $rc, anomalies '$found')"
  done
  runs=$((runs + 1))
  failures=$((failures + 1)); echo "FAILED: three unsafe runs exited without lost acknowledged messages (expected exit 1)"
}
# Retries off, as before de-duplication existed: this run's catch rate was measured that way.
unsafe_run --name quick-unsafe-ack --nemesis kill --time-limit 30 --interval 3 --producer-retries 0 --broker-extra 'unsafeAckBeforeQuorum = true'
# Testing the tester, scheduled messages: the leader delivers every scheduled message 3 s before it is due. With
# no faults (so the early allowance is the 200 ms jitter) and half the sends scheduled, the checker must report
# scheduled-early (VALID? NO). Delays of 1-20 s and consumers polling all the time make this certain, not timing.
early_run() {
  echo "=== jepsen quick (must be INVALID with scheduled-early): $*"
  run_bin="$BIN_UNSAFE" run_one "$@"
  found=$(python3 - "$dir/results.json" <<'PY' 2>/dev/null || echo ""
import json, sys
r = json.load(open(sys.argv[1]))
print(",".join(f'{a["name"]} {a["count"]}' for a in r["anomalies"] if a["count"] > 0 and a["verdict"] == "bad"))
PY
)
  case "$found" in
    *scheduled-early*)
      if [ "$rc" -eq 1 ]; then echo "ok - the checker caught unsafeScheduleEarlyMs: $found"; return; fi ;;
  esac
  failures=$((failures + 1)); echo "FAILED: unsafeScheduleEarlyMs not caught as scheduled-early (exit $rc, bad anomalies '$found')"
}
early_run --name quick-unsafe-early --nemesis none --seed 16 --time-limit 20 --scheduled-share 0.5 --broker-extra 'unsafeScheduleEarlyMs = 3000'
# Testing the tester, transactions: the leader also stores every half message in its real queue at once. Half the
# sends transactional and a watcher on every queue: committed values are read before their commit was sent
# (txn-half-visible), rolled-back and parked ones at all (txn-aborted-visible), committed ones twice
# (txn-duplicate). No faults, so the catch does not depend on timing.
txn_unsafe_run() {
  echo "=== jepsen quick (must be INVALID with txn-half-visible or txn-aborted-visible): $*"
  run_bin="$BIN_UNSAFE" run_one "$@"
  found=$(python3 - "$dir/results.json" <<'PY' 2>/dev/null || echo ""
import json, sys
r = json.load(open(sys.argv[1]))
print(",".join(f'{a["name"]} {a["count"]}' for a in r["anomalies"] if a["count"] > 0 and a["verdict"] == "bad"))
PY
)
  case "$found" in
    *txn-half-visible* | *txn-aborted-visible*)
      if [ "$rc" -eq 1 ]; then echo "ok - the checker caught unsafeTxnVisibleAtHalf: $found"; return; fi ;;
  esac
  failures=$((failures + 1)); echo "FAILED: unsafeTxnVisibleAtHalf not caught as txn-half-visible/txn-aborted-visible (exit $rc, bad anomalies '$found')"
}
txn_unsafe_run --name quick-unsafe-txn --nemesis none --seed 17 --time-limit 20 --txn-share 0.5 --broker-extra 'unsafeTxnVisibleAtHalf = true'
echo "jepsen quick: $((runs - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
