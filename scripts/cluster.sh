#!/usr/bin/env bash
# Local raftmq cluster: a nameserver on 127.0.0.1:9876 and the 3-node broker group "broker-a"
# (client ports 10911/10921/10931, Raft ports 10912/10922/10932), configured by cluster/local/*.toml.
#
#   scripts/cluster.sh up            build (release) if needed, start everything, wait for a leader
#   scripts/cluster.sh down          stop everything (SIGTERM, then SIGKILL)
#   scripts/cluster.sh status        processes, and each node's Raft role, term, commit and applied index
#   scripts/cluster.sh kill NODE     kill -9 a node (n1, n2, n3 or namesrv)
#   scripts/cluster.sh start NODE    start one node again
#   scripts/cluster.sh leader        print the leader's node name (n1, n2 or n3)
#
# Data and logs go to $RAFTMQ_DATA_DIR (default ./data). $CARGO_TARGET_DIR is honoured for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DATA=${RAFTMQ_DATA_DIR:-$ROOT/data}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="$CARGO_TARGET_DIR/release/raftmq"
NAMESRV=127.0.0.1:9876
NODES=(n1 n2 n3)

die() { echo "cluster.sh: $*" >&2; exit 1; }

build() {
  if ! command -v cargo >/dev/null 2>&1; then die "cargo not found: install a Rust toolchain (rustup) first"; fi
  if ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential;
    else die "a C compiler is needed: apt-get install build-essential"; fi
  fi
  # Cargo rebuilds only what changed; a no-op build takes a second.
  cargo build --release -q -p raftmq-cli
}

pidfile() { echo "$DATA/pids/$1.pid"; }

running() {
  local f; f=$(pidfile "$1")
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

start_node() {
  local node=$1
  running "$node" && { echo "$node already running (pid $(cat "$(pidfile "$node")"))"; return; }
  mkdir -p "$DATA/pids" "$DATA/logs"
  case "$node" in
    namesrv)
      nohup "$BIN" namesrv --listen "$NAMESRV" --log-file "$DATA/logs/namesrv.log" >"$DATA/logs/namesrv.out" 2>&1 &
      ;;
    n1|n2|n3)
      local n=${node#n}
      nohup "$BIN" broker --config "cluster/local/broker-a-n$n.toml" --store-dir "$DATA/broker-a-n$n" \
        --log-file "$DATA/logs/broker-a-n$n.log" >"$DATA/logs/broker-a-n$n.out" 2>&1 &
      ;;
    *) die "unknown node $node (n1, n2, n3, namesrv)" ;;
  esac
  echo $! >"$(pidfile "$node")"
  echo "started $node (pid $!)"
}

stop_node() {
  local node=$1 sig=${2:-TERM}
  local f; f=$(pidfile "$node")
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true
    if [ "$sig" = TERM ]; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    # Until it is gone: a `start` right after a `kill` must not find the node's ports still bound.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f"
}

leader() { "$BIN" admin --namesrv "$NAMESRV" leader 2>/dev/null; }

case "${1:-}" in
  up)
    build
    start_node namesrv
    for n in "${NODES[@]}"; do start_node "$n"; done
    echo "waiting for a leader to register with the nameserver..."
    for _ in $(seq 150); do
      if l=$(leader) && [ -n "$l" ]; then
        "$BIN" admin --namesrv "$NAMESRV" status
        echo
        echo "leader: $l. Try:"
        echo "  $BIN produce --namesrv $NAMESRV --topic TopicTest --count 10"
        echo "  $BIN consume --namesrv $NAMESRV --topic TopicTest --group demo --count 10"
        exit 0
      fi
      sleep 0.2
    done
    die "no leader registered after 30 s; see $DATA/logs"
    ;;
  down)
    for n in "${NODES[@]}" namesrv; do stop_node "$n"; done
    echo "stopped"
    ;;
  status)
    for n in namesrv "${NODES[@]}"; do
      if running "$n"; then echo "$n: running (pid $(cat "$(pidfile "$n")"))"; else echo "$n: stopped"; fi
    done
    [ -x "$BIN" ] && "$BIN" admin --namesrv "$NAMESRV" status || true
    ;;
  kill)
    [ -n "${2:-}" ] || die "usage: cluster.sh kill NODE"
    stop_node "$2" KILL
    echo "killed $2"
    ;;
  start)
    [ -n "${2:-}" ] || die "usage: cluster.sh start NODE"
    [ -x "$BIN" ] || build
    start_node "$2"
    ;;
  leader)
    leader || die "no leader known to the nameserver"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
