#!/usr/bin/env bash
# Send throughput with security off and on, in one run (docs/benchmarks.md, "Security cost"): the local
# 3-node cluster of scripts/cluster.sh, alternately started plain (cluster secret only, as `up` always has)
# and with `up --acl --tls` (every request ACL-signed and verified, every client connection TLS), each time
# fresh, and `raftmq bench produce` against it. Rounds alternate so that a noisy machine hits both modes alike.
#
#   scripts/bench-security.sh [ROUNDS] [COUNT] [SIZE]     defaults: 2 rounds, 30000 messages of 1024 bytes
#
# Prints one line per run and a summary (median msg/s per mode, and the cost of ACL + TLS in percent).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
count=${2:-30000}
size=${3:-1024}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="$CARGO_TARGET_DIR/release/raftmq"
NAMESRV=127.0.0.1:9876
base=$(mktemp -d /var/tmp/raftmq-bench-security.XXXXXX)
down() { RAFTMQ_DATA_DIR="$base/$1" scripts/cluster.sh down >/dev/null 2>&1 || true; }
trap 'down off; down on; rm -rf "$base"' EXIT

run() {
  local mode=$1 r=$2 dir="$base/$1" up=() client=() topic=BenchSecurity
  rm -rf "$dir"
  if [ "$mode" = on ]; then
    up=(--acl --tls)
    topic=topicB # RocketMQ's sample account `RocketMQ` may PUB|SUB it (cluster/local/acl.toml)
  fi
  RAFTMQ_DATA_DIR="$dir" scripts/cluster.sh up ${up[@]+"${up[@]}"} >/dev/null
  if [ "$mode" = on ]; then
    local tls=(--tls --tls-ca-file "$dir/tls/ca.pem")
    "$BIN" admin --namesrv "$NAMESRV" "${tls[@]}" --access-key rocketmq2 --secret-key 12345678 topic create "$topic" >/dev/null
    client=("${tls[@]}" --access-key RocketMQ --secret-key 12345678)
  fi
  "$BIN" bench produce --namesrv "$NAMESRV" ${client[@]+"${client[@]}"} --topic "$topic" --producers 2 --inflight 16 \
    --size "$size" --count "$count" --duration 300 --quiet --json "$base/$mode-$r.json" | sed "s/^/$mode round $r: /"
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
med = {m: statistics.median(x["msgs_per_s"] for x in v) for m, v in res.items()}
for m, v in res.items():
    print(f"{m:>3}: msg/s " + ", ".join(f'{x["msgs_per_s"]:.0f}' for x in v)
          + "; p99 µs " + ", ".join(str(x["latency"]["p99_us"]) for x in v)
          + "; errors " + ", ".join(str(x["errors"]) for x in v))
print(f"median msg/s: off {med['off']:.0f}, on (ACL + TLS) {med['on']:.0f}; cost {100 * (1 - med['on'] / med['off']):.1f} %")
PY
