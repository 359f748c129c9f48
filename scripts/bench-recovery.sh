#!/usr/bin/env bash
# Recovery time of a node holding a large log: fill a fresh 3-node cluster with at least SIZE_GIB (default 2)
# GiB of 1 KiB messages, SIGKILL a follower, restart it, and time (a) until it answers requests again (its
# commitlog and state were recovered and the server is up) and (b) until it has applied everything the group
# had committed when it was killed.
#   scripts/bench-recovery.sh [SIZE_GIB]
set -euo pipefail
cd "$(dirname "$0")/.."
gib=${1:-2}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="$CARGO_TARGET_DIR/release/raftmq"
export RAFTMQ_DATA_DIR=$(mktemp -d /var/tmp/raftmq-recovery.XXXXXX)
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$RAFTMQ_DATA_DIR"' EXIT
scripts/cluster.sh up >/dev/null
# `admin status` below is a control request: signed with the cluster secret cluster.sh generated.
export RAFTMQ_CLUSTER_SECRET_FILE="$RAFTMQ_DATA_DIR/cluster-secret"
count=$(( gib * 1024 * 1024 * 1024 / 1024 ))
echo "filling: $count messages of 1 KiB"
"$BIN" bench produce --topic Recovery --producers 4 --inflight 256 --size 1024 --count "$count" --duration 3600 --quiet
leader=$(scripts/cluster.sh leader)
victim=n1; [ "$leader" = n1 ] && victim=n2
du -sh "$RAFTMQ_DATA_DIR/$victim" 2>/dev/null || du -sh "$RAFTMQ_DATA_DIR"
# admin status columns: group node address role ready term last commit applied
commit=$("$BIN" admin status | awk -v l="$leader" '$2 == l {print $8}')
scripts/cluster.sh kill "$victim" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
start=$(date +%s.%N)
scripts/cluster.sh start "$victim" >/dev/null
served=""
while true; do
  line=$("$BIN" admin status 2>/dev/null | awk -v v="$victim" '$2 == v' || true)
  now=$(date +%s.%N)
  elapsed=$(awk -v a="$now" -v b="$start" 'BEGIN {printf "%.3f", a - b}')
  if [ -n "$line" ] && [ -z "$served" ]; then served=$elapsed; fi
  applied=$(echo "$line" | awk '{print $9}')
  if [ -n "$applied" ] && [ "$applied" -ge "$commit" ] 2>/dev/null; then caught=$elapsed; break; fi
  if awk -v e="$elapsed" 'BEGIN {exit !(e > 120)}'; then echo "gave up after 120 s"; exit 1; fi
  sleep 0.05
done
echo "recovery of $victim (page cache dropped): serving after ${served} s, caught up to commit index $commit after ${caught} s"
