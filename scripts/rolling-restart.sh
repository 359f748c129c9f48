#!/usr/bin/env bash
# Rolling restart of one broker group of the local cluster (`scripts/cluster.sh up`): every node in turn,
# followers first and the leader last, each stopped gracefully and started again, and the next one only once
# the restarted node holds and has applied everything the group had committed (docs/operations.md, "Rolling
# restarts").
#
#   scripts/rolling-restart.sh [GROUP]     GROUP: broker-a (default), broker-b, …
#
# Stopping a node sends SIGTERM: a leader first hands leadership to its most caught-up follower (the new leader
# registers as brokerId 0 at once); every node then leaves the nameserver's routes and keeps forwarding the
# writes of clients that still hold the old route until they go quiet (`shutdownDrainQuietMs`, at most
# `shutdownDrainMaxMs`). Clients see no failed send. Uses $RAFTMQ_DATA_DIR and $RAFTMQ_BIN like cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
group=${1:-broker-a}
[[ $group =~ ^broker-[a-i]$ ]] || { echo "usage: scripts/rolling-restart.sh [broker-a|broker-b|…]" >&2; exit 2; }
cs=scripts/cluster.sh
ms() { echo $(( $(date +%s%N) / 1000000 )); }

mapfile -t nodes < <("$cs" nodes "$group")
[ "${#nodes[@]}" -gt 0 ] || { echo "rolling-restart: no running node of $group (scripts/cluster.sh up first)" >&2; exit 1; }
leader=$("$cs" leader "$group")
echo "rolling restart of $group: nodes ${nodes[*]}, leader $leader (restarted last)"
order=()
for n in "${nodes[@]}"; do [ "$n" = "$leader" ] || order+=("$n"); done
order+=("$leader")

t_all=$(ms)
for n in "${order[@]}"; do
  t0=$(ms)
  role=follower; [ "$n" = "$leader" ] && role=leader
  echo "== $n ($role): stopping"
  "$cs" stop "$n"
  t1=$(ms)
  "$cs" start "$n"
  "$cs" wait "$n"
  t2=$(ms)
  echo "== $n: stopped in $((t1 - t0)) ms, back and caught up in $((t2 - t1)) ms; leader now $("$cs" leader "$group" || echo '?')"
done
echo "rolling restart of $group done in $(($(ms) - t_all)) ms"
