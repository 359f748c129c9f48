#!/usr/bin/env bash
# Soak benchmark (not a test): a 3-node group with short retention under steady produce + consume load for
# HOURS, sampling every node's disk use and RSS. Disk use and RSS must level off; throughput must hold.
#
#   scripts/soak.sh HOURS [RATE]      e.g. scripts/soak.sh 0.5          (RATE msgs/s, default 2000; 1 KiB bodies)
#
# Own ports (31000+) and data under $SOAK_DIR (default /var/tmp/raftmq-soak, wiped at start). Retention:
# 64 MiB segments, fileReservedTimeMs 120000, deleteWhen "*", cleanResourceInterval 5000. Every SLICE seconds
# (default 300) one `raftmq bench e2e` run ends and reports its throughput; samples every 30 s.
# Output: $SOAK_DIR/samples.csv, $SOAK_DIR/slices.csv, $SOAK_DIR/report.md (tables, and the Raft terms: with no
# faults injected every node's term must stay what it was at the first sample — no election) and
# $SOAK_DIR/soak.svg. The nodes' logs are $SOAK_DIR/n*.log ("pre-vote won" marks each campaign).
set -euo pipefail
cd "$(dirname "$0")/.."
HOURS=${1:?usage: scripts/soak.sh HOURS [RATE]}
RATE=${2:-2000}
SLICE=${SLICE:-300}
DIR=${SOAK_DIR:-/var/tmp/raftmq-soak}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="$CARGO_TARGET_DIR/release/raftmq"
NAMESRV=127.0.0.1:31876
TOTAL=$(python3 -c "print(int(float('$HOURS') * 3600))")

cargo build --release -q -p raftmq-cli
rm -rf "$DIR"; mkdir -p "$DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$BIN" namesrv --listen "$NAMESRV" --log-file "$DIR/namesrv.log" & pids+=($!)
for id in 1 2 3; do
  {
    echo "brokerName = \"broker-soak\""
    echo "nodeId = $id"
    echo "namesrvAddr = \"$NAMESRV\""
    echo "storePathRootDir = \"$DIR/n$id\""
    echo "mappedFileSizeCommitLog = 67108864"
    echo "fileReservedTimeMs = 120000"
    echo "deleteWhen = \"*\""
    echo "cleanResourceInterval = 5000"
    # The soak measures retention, not the host's disk: refuse sends only when the disk is really full.
    echo "diskMaxUsedSpaceRatio = 0.97"
    echo "bootstrap = $([ "$id" = 1 ] && echo true || echo false)"
    for p in 1 2 3; do
      echo "[[peers]]"; echo "id = $p"; echo "raftAddr = \"127.0.0.1:310${p}2\""; echo "clientAddr = \"127.0.0.1:310${p}1\""
    done
  } > "$DIR/n$id.toml"
  "$BIN" broker --config "$DIR/n$id.toml" --log-file "$DIR/n$id.log" & pids+=($!)
  eval "pid_n$id=$!"
done
for _ in $(seq 1 60); do
  "$BIN" admin --namesrv "$NAMESRV" leader >/dev/null 2>&1 && break
  sleep 1
done
"$BIN" admin --namesrv "$NAMESRV" topic create SoakTopic --queues 8 >/dev/null

echo "t_s,node,store_bytes,rss_kb,floor_index,term" > "$DIR/samples.csv"
echo "slice,start_s,sent,received,send_rate,recv_rate,p99_us" > "$DIR/slices.csv"
start=$(date +%s)
sampler() {
  while true; do
    local t=$(( $(date +%s) - start ))
    for id in 1 2 3; do
      local pid; pid=$(eval echo "\$pid_n$id")
      local bytes rss floor term status
      bytes=$(du -sb "$DIR/n$id" 2>/dev/null | cut -f1)
      rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
      status=$("$BIN" admin --namesrv "$NAMESRV" status 2>/dev/null || true)
      floor=$(awk -v n="n$id" '$2 == n && NF >= 7 && $3 ~ /^[0-9]+$/ {print $3; exit}' <<<"$status")
      # The Raft term (first table: group node address role ready term ...): any election during the soak
      # raises it; with no faults it must not move.
      term=$(awk -v n="n$id" '$2 == n && $3 ~ /:/ && $6 ~ /^[0-9]+$/ {print $6; exit}' <<<"$status")
      echo "$t,n$id,${bytes:-0},${rss:-0},${floor:-0},${term:-}" >> "$DIR/samples.csv"
    done
    sleep 30
  done
}
sampler & pids+=($!)

slice=0
while [ $(( $(date +%s) - start )) -lt "$TOTAL" ]; do
  left=$(( TOTAL - ($(date +%s) - start) ))
  d=$(( left < SLICE ? left : SLICE ))
  [ "$d" -ge 10 ] || break
  s0=$(( $(date +%s) - start ))
  "$BIN" bench e2e --namesrv "$NAMESRV" --topic SoakTopic --duration "$d" --rate "$RATE" --size 1024 \
    --producers 2 --inflight 8 --group soak --quiet --json "$DIR/slice-$slice.json" > "$DIR/slice-$slice.out" 2>&1 || {
    echo "soak.sh: slice $slice failed:" >&2; head -5 "$DIR/slice-$slice.out" >&2; exit 1; }
  python3 scripts/soak_report.py --slice "$DIR/slice-$slice.json" "$slice" "$s0" >> "$DIR/slices.csv"
  slice=$((slice + 1))
done

python3 scripts/soak_report.py "$DIR" > "$DIR/report.md"
cat "$DIR/report.md"
echo "plot: $DIR/soak.svg"
