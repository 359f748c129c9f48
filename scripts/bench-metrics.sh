#!/usr/bin/env bash
# Send throughput with metrics off and on, in one run (docs/benchmarks.md, "Metrics cost"): the local 3-node
# cluster of scripts/cluster.sh, alternately started with RAFTMQ_METRICS=off (no metricsListen, no
# --metrics-listen: nothing counted, no HTTP server) and with metrics on while every node's /metrics and the
# nameserver's are scraped once a second (five times Prometheus' usual rate in cluster/monitoring), each time
# fresh, and `raftmq bench produce` against it. Rounds alternate so that a noisy machine hits both modes alike.
#
#   scripts/bench-metrics.sh [ROUNDS] [COUNT] [SIZE]     defaults: 3 rounds, 30000 messages of 1024 bytes
#
# Prints one line per run and a summary: median msg/s per mode, and the nodes' CPU per acknowledged message
# (user + system time of every node process of the cluster, from /proc/PID/stat, over the bench run, divided
# by the messages acknowledged). CPU per message is the figure to read on a busy machine: other work on the
# machine slows both modes' throughput unevenly, but hardly changes the CPU each message costs.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${2:-30000}
size=${3:-1024}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="$CARGO_TARGET_DIR/release/raftmq"
NAMESRV=127.0.0.1:9876
TARGETS=(127.0.0.1:10913 127.0.0.1:10923 127.0.0.1:10933 127.0.0.1:9877)
base=$(mktemp -d /var/tmp/raftmq-bench-metrics.XXXXXX)
scraper=
ticks_per_s=$(getconf CLK_TCK)
# user + system clock ticks of the node processes of the cluster in $1 (its pid files).
node_ticks() {
  local t=0 f v
  for f in "$1"/pids/*.pid; do
    v=$(awk '{print $14 + $15}' "/proc/$(cat "$f")/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}
down() { RAFTMQ_METRICS=$1 RAFTMQ_DATA_DIR="$base/$1" scripts/cluster.sh down >/dev/null 2>&1 || true; }
stop_scraper() { if [ -n "$scraper" ]; then kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; scraper=; fi; }
trap 'stop_scraper; down off; down on; rm -rf "$base"' EXIT

# Scrapes every target once a second until killed; counts successful scrapes in $1.
scrape_loop() {
  local ok=0
  while true; do
    for t in "${TARGETS[@]}"; do
      if curl -sf --max-time 2 "http://$t/metrics" -o /dev/null; then ok=$((ok + 1)); echo "$ok" >"$1"; fi
    done
    sleep 1
  done
}

run() {
  local mode=$1 r=$2 dir="$base/$1" topic=BenchMetrics
  rm -rf "$dir"
  RAFTMQ_METRICS=$mode RAFTMQ_DATA_DIR="$dir" scripts/cluster.sh up >/dev/null
  if [ "$mode" = on ]; then
    scrape_loop "$base/scrapes-$r" &
    scraper=$!
  elif curl -sf --max-time 2 "http://${TARGETS[0]}/metrics" -o /dev/null; then
    echo "metrics off, yet ${TARGETS[0]} serves /metrics" >&2
    exit 1
  fi
  local t0; t0=$(node_ticks "$dir")
  "$BIN" bench produce --namesrv "$NAMESRV" --topic "$topic" --producers 2 --inflight 16 \
    --size "$size" --count "$count" --duration 300 --quiet --json "$base/$mode-$r.json" | sed "s/^/$mode round $r: /"
  echo "$(( $(node_ticks "$dir") - t0 )) $ticks_per_s" >"$base/$mode-$r.cpu"
  if [ "$mode" = on ]; then
    stop_scraper
    echo "on round $r: $(cat "$base/scrapes-$r" 2>/dev/null || echo 0) scrapes during the run"
  fi
  down "$mode"
}

for ((r = 1; r <= rounds; r++)); do
  run off "$r"
  run on "$r"
done
python3 - "$base" "$rounds" <<'PY'
import json, statistics, sys
base, rounds = sys.argv[1], int(sys.argv[2])
res = {m: [json.load(open(f"{base}/{m}-{r}.json")) for r in range(1, rounds + 1)] for m in ("off", "on")}
def cpu_us(m, r):
    ticks, hz = map(int, open(f"{base}/{m}-{r}.cpu").read().split())
    return ticks / hz * 1e6 / max(1, res[m][r - 1]["acked"])
cpu = {m: [cpu_us(m, r) for r in range(1, rounds + 1)] for m in ("off", "on")}
med = {m: statistics.median(x["msgs_per_s"] for x in v) for m, v in res.items()}
cmed = {m: statistics.median(v) for m, v in cpu.items()}
for m, v in res.items():
    print(f"{m:>3}: msg/s " + ", ".join(f'{x["msgs_per_s"]:.0f}' for x in v)
          + "; node CPU µs/msg " + ", ".join(f"{c:.1f}" for c in cpu[m])
          + "; p99 µs " + ", ".join(str(x["latency"]["p99_us"]) for x in v)
          + "; errors " + ", ".join(str(x["errors"]) for x in v))
print(f"median msg/s: off {med['off']:.0f}, on (metrics, scraped every second) {med['on']:.0f}; cost {100 * (1 - med['on'] / med['off']):.1f} %")
print(f"median node CPU per message: off {cmed['off']:.1f} µs, on {cmed['on']:.1f} µs; cost {100 * (cmed['on'] / cmed['off'] - 1):.1f} %")
PY
