#!/usr/bin/env bash
# Flame graphs of the produce path (docs/benchmarks.md, "Where the time goes"): on a fresh local 3-node
# cluster of scripts/cluster.sh (release build, SYNC_FLUSH, loopback), `raftmq bench produce` pipelined
# (4 producers x 256 in flight, SIZE-byte bodies, client auto-batching on) runs for SECONDS + 8 s; after 4 s
# of warm-up, `perf record` samples the Raft leader and the bench client for SECONDS (DWARF call graphs,
# FREQ Hz each), and inferno folds the stacks into two SVGs:
#   OUT_DIR/flame-leader.svg   the leader broker process (every thread)
#   OUT_DIR/flame-client.svg   the bench client (`raftmq bench produce`)
# The bench's own summary (msgs/s, CPU per message) is printed, so each graph is read against its load.
#
#   scripts/flamegraph.sh [SECONDS] [SIZE] [OUT_DIR] [FREQ]      defaults: 10 128 docs 199
#
# Needs perf (Debian linux-perf, installed if missing) and inferno (`cargo install inferno`, installed if
# missing). A benchmark, not a test: run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
size=${2:-128}
out=${3:-docs}
freq=${4:-199}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="$CARGO_TARGET_DIR/release/raftmq"
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
cargo build --release -q -p raftmq-cli
work=$(mktemp -d /var/tmp/raftmq-flame.XXXXXX)
export RAFTMQ_DATA_DIR="$work/cluster"
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
scripts/cluster.sh up >/dev/null
leader=$(scripts/cluster.sh leader)
leader_pid=$(cat "$RAFTMQ_DATA_DIR/pids/$leader.pid")
"$BIN" admin --namesrv 127.0.0.1:9876 topic create Flame --queues 8 >/dev/null
"$BIN" bench produce --namesrv 127.0.0.1:9876 --topic Flame --producers 4 --inflight 256 --size "$size" \
  --duration $((secs + 8)) --quiet > "$work/bench.out" 2>&1 &
bench=$!
sleep 4
perf record -q -F "$freq" --call-graph dwarf,32768 -p "$leader_pid" -o "$work/leader.data" -- sleep "$secs" 2>/dev/null &
p1=$!
perf record -q -F "$freq" --call-graph dwarf,32768 -p "$bench" -o "$work/client.data" -- sleep "$secs" 2>/dev/null &
p2=$!
wait "$p1" "$p2"
wait "$bench"
grep -E '^(produce|cpu per)' "$work/bench.out" || cat "$work/bench.out"
mkdir -p "$out"
for who in leader client; do
  perf script -i "$work/$who.data" 2>/dev/null | inferno-collapse-perf > "$work/$who.folded"
  inferno-flamegraph --title "raftmq $who, bench produce 4x256 in flight, ${size} B, ${secs} s at ${freq} Hz" \
    < "$work/$who.folded" > "$out/flame-$who.svg"
  echo "$out/flame-$who.svg: $(wc -l < "$work/$who.folded") distinct stacks"
  # Shares by thread (the stack's first frame) and the heaviest leaf functions (self time).
  python3 - "$work/$who.folded" <<'PY'
import collections, sys
threads, leaves, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n); total += n
    frames = stack.split(";")
    threads[frames[0]] += n
    leaves[frames[-1]] += n
print("  threads: " + ", ".join(f"{t} {100 * c / total:.1f}%" for t, c in threads.most_common(8)))
print("  heaviest leaf functions (self time):")
for f, c in leaves.most_common(15):
    print(f"    {100 * c / total:5.1f}%  {f[:120]}")
PY
done
