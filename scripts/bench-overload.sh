#!/usr/bin/env bash
# Overload benchmark of flow control (docs/benchmarks.md, "Overload"): on a fresh local 3-node cluster of
# scripts/cluster.sh (release build, SYNC_FLUSH, loopback),
#   1. the unloaded maximum: `raftmq bench produce`, closed loop with the same window (PRODUCERS × WINDOW
#      sends in flight), MAX_SECS seconds;
#   2. overload: open loop at FACTOR × that maximum for OVER_SECS seconds on a fresh topic, each producer with
#      a window of WINDOW sends; a send whose time comes while its producer's window is full is shed by the
#      generator (`--shed`: counted, not made late), so latency is that of the cluster, not of a backlog in the
#      generator. Every broker's anonymous memory (RssAnon: heap, not the mapped commitlog) and mapped file
#      pages (RssFile) are sampled once a second;
#   3. the count: the topic's stored messages (sum of its queues' next offsets) against the acknowledged ones.
# Prints the two runs, acknowledged throughput under overload as a share of the maximum, p99 of acknowledged
# sends, SYSTEM_BUSY refusals (raftmq_send_queue_refused_total of each broker), memory at the start/middle/end of the overload,
# and whether anything acknowledged is missing.
#
#   scripts/bench-overload.sh [FACTOR] [OVER_SECS] [SIZE] [PRODUCERS] [MAX_SECS] [WINDOW] [BATCHING]
#   defaults: 3 60 1024 4 OVER_SECS 1024 on (BATCHING off: --no-auto-batch, every send its own request).
#   The maximum runs as long as the overload by default: both then fill the de-duplication window
#   (dedupKeysMax, reached after ~15 s at these rates) and grow the log alike, so the ratio compares like with like.
set -euo pipefail
cd "$(dirname "$0")/.."
factor=${1:-3}
over_secs=${2:-60}
size=${3:-1024}
producers=${4:-4}
max_secs=${5:-$over_secs}
window=${6:-1024}
batching=${7:-on}
nobatch=()
[ "$batching" = off ] && nobatch=(--no-auto-batch)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="$CARGO_TARGET_DIR/release/raftmq"
NAMESRV=127.0.0.1:9876
base=$(mktemp -d /var/tmp/raftmq-bench-overload.XXXXXX)
export RAFTMQ_DATA_DIR="$base/cluster"
sampler=
stop_sampler() { if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=; fi; }
trap 'stop_sampler; scripts/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$base"' EXIT

scripts/cluster.sh up >/dev/null
pids=()
for f in "$RAFTMQ_DATA_DIR"/pids/n[0-9]*.pid; do pids+=("$(cat "$f")"); done

# RssAnon and RssFile (KiB) of every broker, one line per second: "<seconds> <anon1> <file1> <anon2> <file2> ...".
sample_rss() {
  local t=0
  while true; do
    local line="$t"
    for p in "${pids[@]}"; do line="$line $(awk '/^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} END {print a+0, f+0}' "/proc/$p/status" 2>/dev/null || echo 0 0)"; done
    echo "$line" >>"$1"
    sleep 1
    t=$((t + 1))
  done
}

echo "== unloaded maximum: closed loop, $producers producers x $window in flight, ${size} B, ${max_secs} s"
"$BIN" bench produce --namesrv "$NAMESRV" --topic OverloadMax --producers "$producers" --inflight "$window" "${nobatch[@]}" \
  --size "$size" --duration "$max_secs" --quiet --json "$base/max.json"
max=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['msgs_per_s'])" "$base/max.json")
rate=$(python3 -c "import sys; print(round(float(sys.argv[1]) * float(sys.argv[2])))" "$max" "$factor")

echo "== overload: open loop at $rate msg/s (${factor}x), $producers producers x $window window, auto-batching $batching, ${over_secs} s"
sample_rss "$base/rss.txt" &
sampler=$!
"$BIN" bench produce --namesrv "$NAMESRV" --topic OverloadRun --producers "$producers" --inflight "$window" --shed "${nobatch[@]}" \
  --size "$size" --rate "$rate" --duration "$over_secs" --quiet --verify-stored --json "$base/over.json"
stop_sampler

python3 - "$base" "$factor" <<'PY'
import json, os, sys
base, factor = sys.argv[1], float(sys.argv[2])
mx, ov = (json.load(open(f"{base}/{n}.json")) for n in ("max", "over"))
rss = [list(map(int, l.split())) for l in open(f"{base}/rss.txt") if l.strip()]
print(f"unloaded: {mx['msgs_per_s']:.0f} msg/s acknowledged, p99 {mx['latency']['p99_us']} µs, errors {mx['errors']}")
print(f"overload ({factor:g}x offered, open loop): {ov['msgs_per_s']:.0f} msg/s acknowledged = "
      f"{100 * ov['msgs_per_s'] / mx['msgs_per_s']:.1f} % of the unloaded maximum; p50 {ov['latency']['p50_us']} µs, "
      f"p99 {ov['latency']['p99_us']} µs, p99.9 {ov['latency']['p999_us']} µs of acknowledged sends")
print(f"  sends failed: {ov['errors']} (after the producer's retries), of them with an unknown outcome: {ov['errors_unknown_outcome']}; "
      f"shed by the generator (window full): {ov['shed']}")
for kind, count in sorted(ov.get('error_kinds', {}).items(), key=lambda kv: -kv[1]):
    print(f"    {count:>9}  {kind}")
print(f"  stored {ov['stored']}, acknowledged {ov['acked']}: acknowledged missing {ov['acked_missing']}, stored unacknowledged {ov['stored_unacknowledged']}")
if rss:
    mid = rss[len(rss) // 2]
    n = (len(rss[0]) - 1) // 2
    for name, off in (("RssAnon (heap)", 1), ("RssFile (mapped files)", 2)):
        cols = [off + 2 * i for i in range(n)]
        fmt = lambda r: "/".join(f"{r[c] // 1024}" for c in cols)
        print(f"  broker {name} MiB (n1/n2/n3): start {fmt(rss[0])}, middle {fmt(mid)}, end {fmt(rss[-1])}; "
              f"max {'/'.join(str(max(r[c] for r in rss) // 1024) for c in cols)}")
    # The series, every 10 s: flat or not is read off this, not off three points.
    for i in range(n):
        print(f"  n{i + 1} RssAnon MiB every 10 s: " + " ".join(str(r[1 + 2 * i] // 1024) for r in rss[::10]))
PY
echo "== SYSTEM_BUSY refusals by flow control (each broker's /metrics; the leader's count)"
for port in 10913 10923 10933; do
  echo "127.0.0.1:$port $(curl -sf --max-time 2 "http://127.0.0.1:$port/metrics" | grep '^raftmq_send_queue_refused_total' | tr '\n' ' ')"
done
