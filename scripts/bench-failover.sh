#!/usr/bin/env bash
# Failover as a client sees it: a producer sends at a steady rate (raftmq bench produce --rate) to a fresh
# 3-node cluster (scripts/cluster.sh, release build), the Raft leader is killed with SIGKILL after 4 s, and
# the longest gap between two acknowledged sends is the failover time. Repeats N times (default 5) and prints
# every figure, the median and the max.
#   scripts/bench-failover.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="$CARGO_TARGET_DIR/release/raftmq"
work=$(mktemp -d /var/tmp/raftmq-failover.XXXXXX)
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
gaps=()
for i in $(seq "$runs"); do
  export RAFTMQ_DATA_DIR="$work/run$i"
  scripts/cluster.sh up >/dev/null
  "$BIN" bench produce --topic Failover --producers 1 --inflight 32 --size 128 --rate 500 --duration 12 --quiet \
    --json "$work/run$i.json" > "$work/run$i.out" 2>&1 &
  bench=$!
  sleep 4
  leader=$(scripts/cluster.sh leader)
  scripts/cluster.sh kill "$leader" >/dev/null
  wait "$bench"
  gap=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['longest_ack_gap_ms']))" "$work/run$i.json")
  echo "run $i: killed $leader; longest gap between acknowledged sends ${gap} ms ($(grep '^produce:' "$work/run$i.out" | sed 's/.*= //; s/;.*//'))"
  gaps+=("$gap")
  scripts/cluster.sh down >/dev/null
  # Each run preallocates a 1 GiB segment per node: free it before the next run.
  rm -rf "$RAFTMQ_DATA_DIR"
done
printf '%s\n' "${gaps[@]}" | sort -n | awk '{a[NR]=$1} END {printf "failover over %d runs: median %d ms, max %d ms\n", NR, (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'
