#!/usr/bin/env bash
# Local raftmq cluster: a nameserver on 127.0.0.1:9876 and broker groups of 3 nodes: "broker-a" (client ports
# 10911/10921/10931, Raft ports 10912/10922/10932, configured by cluster/local/*.toml) and, with --groups N,
# broker-b, broker-c, … (group g's node k: client port 10911 + 100·g + 10·(k-1), Raft port one above; configs
# generated under $RAFTMQ_DATA_DIR/conf). Nodes are named n1, n2, … in broker-a and b-n1, c-n2, … elsewhere.
# Every node serves Prometheus metrics at http://127.0.0.1:PORT/metrics, PORT = its client port + 2 (10913,
# 10923, 10933 for broker-a), the nameserver at 127.0.0.1:9877 (cluster/monitoring/prometheus.yml scrapes them).
# The nameserver's port also serves the web console: http://127.0.0.1:9877/ (docs/operations.md, Web console).
# RAFTMQ_METRICS=off starts nodes without metrics (no metrics port, nothing counted; scripts/bench-metrics.sh).
#
#   scripts/cluster.sh up [--groups N] [--acl] [--tls]
#                                        build (release) if needed, start everything, wait for each group's leader;
#                                        --acl: brokers check RocketMQ plain ACL from cluster/local/acl.toml
#                                        (RocketMQ's sample accounts; kept for later start/add-node until an up
#                                        without --acl); the script's own admin calls sign as rocketmq2
#                                        --tls: a local CA and a server certificate for 127.0.0.1/localhost
#                                        (openssl, under $RAFTMQ_DATA_DIR/tls), every client port in `enforcing`
#                                        mode, the brokers' own connections over TLS; later commands keep TLS
#                                        until the next `up` without --tls
#   scripts/cluster.sh down              stop everything at once (SIGINT: a clean stop without hand-off; SIGKILL
#                                        after 10 s)
#   scripts/cluster.sh stop NODE         stop one node gracefully (SIGTERM: a leader hands leadership over, the
#                                        node leaves the routes and drains stale-route clients; up to 2 minutes)
#   scripts/cluster.sh status            processes, and each node's Raft role, term, commit and applied index
#   scripts/cluster.sh kill NODE         kill -9 a node (n1, b-n2, … or namesrv)
#   scripts/cluster.sh start NODE        start one node again
#   scripts/cluster.sh leader [GROUP]    print the group's leader node (n1, n2, …; default broker-a)
#   scripts/cluster.sh nodes [GROUP]     print the group's nodes that have a pid file (default broker-a)
#   scripts/cluster.sh wait NODE         wait until NODE holds and applied what its group had committed
#   (scripts/rolling-restart.sh restarts a group node by node with stop, start and wait)
#   scripts/cluster.sh add-node [GROUP]  start a fresh node with the next id and add it (raftmq admin node add)
#   scripts/cluster.sh replace NODE      start a fresh node with a new id and replace the dead NODE with it
#
# Data and logs go to $RAFTMQ_DATA_DIR (default ./data). $CARGO_TARGET_DIR is honoured for the build;
# $RAFTMQ_BIN names a raftmq binary to use instead of building one (the test suite passes its debug build).
# The first start generates a cluster secret, $RAFTMQ_DATA_DIR/cluster-secret (mode 0600); every broker and
# the nameserver get it (RAFTMQ_CLUSTER_SECRET_FILE), so the Raft ports and nameserver registrations are
# authenticated (docs/security.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DATA=${RAFTMQ_DATA_DIR:-$ROOT/data}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BIN="${RAFTMQ_BIN:-$CARGO_TARGET_DIR/release/raftmq}"
NAMESRV=127.0.0.1:9876
NAMESRV_METRICS=127.0.0.1:9877
LETTERS=(a b c d e f g h i)
# Node ids per group stay below 10 so that the port scheme above never collides with the next group.
NODE_ID_MAX=9

die() { echo "cluster.sh: $*" >&2; exit 1; }

# ACL mode (`up --acl`) is remembered in $DATA/acl-on so that start, add-node and replace keep it.
ACL_FILE=$ROOT/cluster/local/acl.toml
acl_on() { [ -e "$DATA/acl-on" ]; }
# The script's admin calls (status, leader, node add) use the sample admin account when ACL is on.
acl_env() {
  if acl_on; then export RAFTMQ_ACCESS_KEY=rocketmq2 RAFTMQ_SECRET_KEY=12345678; fi
}

build() {
  if [ -n "${RAFTMQ_BIN:-}" ]; then [ -x "$RAFTMQ_BIN" ] || die "RAFTMQ_BIN=$RAFTMQ_BIN is not executable"; return 0; fi
  if ! command -v cargo >/dev/null 2>&1; then die "cargo not found: install a Rust toolchain (rustup) first"; fi
  if ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential;
    else die "a C compiler is needed: apt-get install build-essential"; fi
  fi
  # Cargo rebuilds only what changed; a no-op build takes a second.
  cargo build --release -q -p raftmq-cli
}

pidfile() { echo "$DATA/pids/$1.pid"; }

# The cluster secret file, created once (32 random bytes, base64) with mode 0600.
SECRET_FILE="$DATA/cluster-secret"
ensure_secret() {
  [ -s "$SECRET_FILE" ] && return 0
  mkdir -p "$DATA"
  (umask 077 && head -c 32 /dev/urandom | base64 >"$SECRET_FILE.tmp" && mv "$SECRET_FILE.tmp" "$SECRET_FILE")
  echo "generated the cluster secret $SECRET_FILE"
}
# The CLI signs raftmq's control requests (status, leader, node …) with it: the nodes refuse them unsigned.
if [ -s "$SECRET_FILE" ]; then export RAFTMQ_CLUSTER_SECRET_FILE="$SECRET_FILE"; fi

TLS_DIR="$DATA/tls"
CLI_TLS=()
NAMESRV_TLS=()

# Makes a local CA and a server certificate for 127.0.0.1 and localhost (kept across runs), and marks the
# cluster as TLS.
make_tls() {
  if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl;
    else die "openssl is needed for --tls: apt-get install openssl"; fi
  fi
  mkdir -p "$TLS_DIR"
  if [ ! -f "$TLS_DIR/server.pem" ]; then
    (
      cd "$TLS_DIR"
      openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=raftmq local CA" \
        -keyout ca.key -out ca.pem 2>/dev/null
      openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
      printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth,clientAuth" >server.ext
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -sha256 \
        -extfile server.ext -out server.pem 2>/dev/null
      chmod 600 ca.key server.key
      rm -f server.csr server.ext
    ) || die "openssl could not make the certificates in $TLS_DIR"
    echo "made a local CA ($TLS_DIR/ca.pem) and a server certificate for 127.0.0.1/localhost"
  fi
  touch "$TLS_DIR/enabled"
}

# TLS flags of the CLI and the nameserver when the cluster was started with --tls.
load_tls() {
  [ -f "$TLS_DIR/enabled" ] || return 0
  CLI_TLS=(--tls --tls-ca-file "$TLS_DIR/ca.pem")
  NAMESRV_TLS=(--tls-server-mode enforcing --tls-server-cert-path "$TLS_DIR/server.pem" --tls-server-key-path "$TLS_DIR/server.key")
}

# The config to start a broker with: $1 itself, or with TLS a copy of it with the TLS keys added.
with_tls_keys() {
  local cfg=$1
  [ -f "$TLS_DIR/enabled" ] || { echo "$cfg"; return; }
  local out; out="$DATA/conf/tls-$(basename "$cfg")"
  mkdir -p "$DATA/conf"
  {
    # The TLS keys go first: they must come before the [[peers]] tables of the copied file.
    echo "# Added by scripts/cluster.sh up --tls (see docs/security.md, TLS)."
    echo "tlsServerMode = \"enforcing\""
    echo "tlsServerCertPath = \"$TLS_DIR/server.pem\""
    echo "tlsServerKeyPath = \"$TLS_DIR/server.key\""
    echo "tlsClientEnable = true"
    echo "tlsClientTrustCertPath = \"$TLS_DIR/ca.pem\""
    echo
    cat "$cfg"
  } >"$out"
  echo "$out"
}

# With RAFTMQ_METRICS=off: a copy of config $1 without its metricsListen line.
without_metrics() {
  local cfg=$1
  [ "${RAFTMQ_METRICS:-on}" = off ] || { echo "$cfg"; return; }
  local out; out="$DATA/conf/nometrics-$(basename "$cfg")"
  mkdir -p "$DATA/conf"
  grep -v '^metricsListen' "$cfg" >"$out"
  echo "$out"
}

running() {
  local f; f=$(pidfile "$1")
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# Parses a node name: sets G (group index), L (letter), ID, GROUP (broker-x).
parse_node() {
  local name=$1
  if [[ $name =~ ^n([0-9]+)$ ]]; then L=a; ID=${BASH_REMATCH[1]};
  elif [[ $name =~ ^([a-i])-n([0-9]+)$ ]]; then L=${BASH_REMATCH[1]}; ID=${BASH_REMATCH[2]};
  else die "unknown node $name (n1, n2, …, b-n1, …, or namesrv)"; fi
  [ "$ID" -ge 1 ] && [ "$ID" -le "$NODE_ID_MAX" ] || die "node ids run 1..$NODE_ID_MAX in this local cluster"
  G=0; while [ "${LETTERS[$G]}" != "$L" ]; do G=$((G + 1)); done
  GROUP=broker-$L
}

node_name() { if [ "$1" = a ]; then echo "n$2"; else echo "$1-n$2"; fi; }
client_port() { echo $((10911 + 100 * $1 + 10 * ($2 - 1))); }
metrics_port() { echo $(( $(client_port "$1" "$2") + 2 )); }

# Config of group index $1 (letter $2) node $3. broker-a's first three use cluster/local; others are generated:
# the first three of a group list each other and node 1 bootstraps; a node added later lists only itself
# (the Raft membership tells it the others' addresses, and them its).
config_of() {
  local g=$1 l=$2 id=$3
  if [ "$l" = a ] && [ "$id" -le 3 ]; then echo "cluster/local/broker-a-n$id.toml"; return; fi
  local f="$DATA/conf/broker-$l-n$id.toml"
  if [ ! -f "$f" ]; then
    mkdir -p "$DATA/conf"
    local peers="" k bootstrap=false
    if [ "$id" -le 3 ]; then
      for k in 1 2 3; do peers+="[[peers]]\nid = $k\nraftAddr = \"127.0.0.1:$(( $(client_port "$g" "$k") + 1 ))\"\nclientAddr = \"127.0.0.1:$(client_port "$g" "$k")\"\n\n"; done
      [ "$id" -eq 1 ] && bootstrap=true
    else
      peers="[[peers]]\nid = $id\nraftAddr = \"127.0.0.1:$(( $(client_port "$g" "$id") + 1 ))\"\nclientAddr = \"127.0.0.1:$(client_port "$g" "$id")\"\n"
    fi
    {
      echo "# Broker group \"broker-$l\", node $id (generated by scripts/cluster.sh; see cluster/local/broker-a-n1.toml)."
      echo "brokerClusterName = \"DefaultCluster\""
      echo "brokerName = \"broker-$l\""
      echo "nodeId = $id"
      echo "namesrvAddr = \"$NAMESRV\""
      echo "storePathRootDir = \"$DATA/broker-$l-n$id\""
      echo "# A local cluster shares the machine's disk: refuse sends above 95 % use (production: 0.75)."
      echo "diskMaxUsedSpaceRatio = 0.95"
      echo "diskSpaceCleanForciblyRatio = 0.97"
      echo "# Prometheus metrics (docs/operations.md, Watching a cluster): client port + 2."
      echo "metricsListen = \"127.0.0.1:$(metrics_port "$g" "$id")\""
      echo "bootstrap = $bootstrap"
      echo
      printf '%b' "$peers"
    } >"$f"
  fi
  echo "$f"
}

start_node() {
  local node=$1
  running "$node" && { echo "$node already running (pid $(cat "$(pidfile "$node")"))"; return; }
  mkdir -p "$DATA/pids" "$DATA/logs"
  ensure_secret
  export RAFTMQ_CLUSTER_SECRET_FILE="$SECRET_FILE"
  if [ "$node" = namesrv ]; then
    local metrics=(--metrics-listen "$NAMESRV_METRICS")
    [ "${RAFTMQ_METRICS:-on}" = off ] && metrics=()
    nohup "$BIN" namesrv --listen "$NAMESRV" ${metrics[@]+"${metrics[@]}"} --log-file "$DATA/logs/namesrv.log" ${NAMESRV_TLS[@]+"${NAMESRV_TLS[@]}"} \
      >"$DATA/logs/namesrv.out" 2>&1 &
  else
    parse_node "$node"
    local cfg; cfg=$(config_of "$G" "$L" "$ID")
    local acl=()
    if acl_on; then acl=(--acl-file "$ACL_FILE"); fi
    cfg=$(with_tls_keys "$cfg")
    cfg=$(without_metrics "$cfg")
    nohup "$BIN" broker --config "$cfg" --store-dir "$DATA/$GROUP-n$ID" "${acl[@]}" \
      --log-file "$DATA/logs/$GROUP-n$ID.log" >"$DATA/logs/$GROUP-n$ID.out" 2>&1 &
  fi
  echo $! >"$(pidfile "$node")"
  echo "started $node (pid $!)"
}

# stop_node NODE [SIGNAL [SECONDS]]: sends SIGNAL (default INT), waits up to SECONDS (default 10) for the exit,
# then SIGKILL.
stop_node() {
  local node=$1 sig=${2:-INT} wait=${3:-10}
  local f; f=$(pidfile "$node")
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true
    if [ "$sig" != KILL ]; then
      for _ in $(seq $((wait * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "$node did not stop within $wait s after SIG$sig; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    # Until it is gone: a `start` right after a `kill` must not find the node's ports still bound.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f"
}

# Every broker node with a pid file.
known_nodes() {
  local f
  for f in "$DATA"/pids/*.pid; do
    [ -e "$f" ] || continue
    f=$(basename "$f" .pid)
    [ "$f" = namesrv ] || echo "$f"
  done
}

leader() { "$BIN" admin ${CLI_TLS[@]+"${CLI_TLS[@]}"} --namesrv "$NAMESRV" leader --broker "${1:-broker-a}" 2>/dev/null; }

# The name of a group's leader in this script's naming.
leader_node() {
  local l; l=$(leader "$1") || return 1
  local letter=${1#broker-}
  node_name "$letter" "${l#n}"
}

# Waits until the node's client port accepts connections.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on 127.0.0.1:$1 after 10 s; see $DATA/logs"
}

# The next unused node id of group letter $1: above every id with a config, a data directory or a pid file
# (ids are never reused).
next_id() {
  local l=$1 max=0 f id
  for f in "$DATA"/broker-"$l"-n* "$DATA"/conf/broker-"$l"-n*.toml; do
    [ -e "$f" ] || continue
    id=$(basename "$f" .toml); id=${id##*-n}
    [[ $id =~ ^[0-9]+$ ]] && [ "$id" -gt "$max" ] && max=$id
  done
  [ "$l" = a ] && [ "$max" -lt 3 ] && max=3
  [ $((max + 1)) -le "$NODE_ID_MAX" ] || die "group broker-$l has used every node id up to $NODE_ID_MAX"
  echo $((max + 1))
}

# Starts a fresh node in group letter $1; prints its id.
fresh_node() {
  local l=$1 g=0 id
  while [ "${LETTERS[$g]}" != "$l" ]; do g=$((g + 1)); done
  id=$(next_id "$l")
  start_node "$(node_name "$l" "$id")" >&2
  wait_port "$(client_port "$g" "$id")"
  echo "$id"
}

acl_env
# Every command but `up` (which decides it) keeps the TLS of the last `up`.
[ "${1:-}" = up ] || load_tls

case "${1:-}" in
  up)
    n=1 acl= tls=
    shift
    while [ $# -gt 0 ]; do
      case "$1" in
        --groups) n=${2:-}; [[ $n =~ ^[1-9]$ ]] || die "--groups takes 1..9"; shift 2 ;;
        --acl) acl=1; shift ;;
        --tls) tls=1; shift ;;
        *) die "up takes [--groups N] [--acl] [--tls], not $1" ;;
      esac
    done
    build
    mkdir -p "$DATA"
    if [ -n "$acl" ]; then touch "$DATA/acl-on"; else rm -f "$DATA/acl-on"; fi
    acl_env
    if [ -n "$tls" ]; then make_tls; else rm -f "$TLS_DIR/enabled"; fi
    load_tls
    start_node namesrv
    for ((g = 0; g < n; g++)); do
      for k in 1 2 3; do start_node "$(node_name "${LETTERS[$g]}" "$k")"; done
    done
    echo "waiting for each group's leader to register with the nameserver..."
    for ((g = 0; g < n; g++)); do
      ok=
      for _ in $(seq 150); do
        if l=$(leader "broker-${LETTERS[$g]}") && [ -n "$l" ]; then ok=1; break; fi
        sleep 0.2
      done
      [ -n "$ok" ] || die "no leader of broker-${LETTERS[$g]} registered after 30 s; see $DATA/logs"
    done
    "$BIN" admin ${CLI_TLS[@]+"${CLI_TLS[@]}"} --namesrv "$NAMESRV" status
    echo
    t=${CLI_TLS[*]+" ${CLI_TLS[*]}"}
    [ -n "$tls" ] && echo "TLS (enforcing) on every client port; clients need$t (or RAFTMQ_TLS=1 RAFTMQ_TLS_CA_FILE=$TLS_DIR/ca.pem)"
    echo "Metrics: http://127.0.0.1:10913/metrics (n1; n2 :10923, n3 :10933; group g node k: client port + 2),"
    echo "  nameserver http://$NAMESRV_METRICS/metrics; Prometheus: cluster/monitoring/prometheus.yml"
    echo "Control commands (admin status, leader, transfer-leader, node …) need the cluster secret:"
    echo "  export RAFTMQ_CLUSTER_SECRET_FILE=$SECRET_FILE"
    echo "Try:"
    if acl_on; then
      echo "  (ACL on, accounts in $ACL_FILE: RocketMQ may PUB|SUB topicB with groupB; rocketmq2 is admin)"
      echo "  $BIN admin$t --namesrv $NAMESRV --access-key rocketmq2 --secret-key 12345678 topic create topicB"
      echo "  $BIN produce$t --namesrv $NAMESRV --access-key RocketMQ --secret-key 12345678 --topic topicB --count 10"
      echo "  $BIN consume$t --namesrv $NAMESRV --access-key RocketMQ --secret-key 12345678 --topic topicB --group groupB --count 10"
      echo "  (refused with NO_PERMISSION: --topic topicA, or a wrong --secret-key)"
    else
      echo "  $BIN admin$t --namesrv $NAMESRV topic create TopicTest"
      echo "  $BIN produce$t --namesrv $NAMESRV --topic TopicTest --count 10"
      echo "  $BIN consume$t --namesrv $NAMESRV --topic TopicTest --group demo --count 10"
    fi
    ;;
  down)
    for n in $(known_nodes) namesrv; do stop_node "$n"; done
    echo "stopped"
    ;;
  status)
    for n in namesrv $(known_nodes); do
      if running "$n"; then echo "$n: running (pid $(cat "$(pidfile "$n")"))"; else echo "$n: stopped"; fi
    done
    [ -x "$BIN" ] && "$BIN" admin ${CLI_TLS[@]+"${CLI_TLS[@]}"} --namesrv "$NAMESRV" status || true
    ;;
  stop)
    [ -n "${2:-}" ] || die "usage: cluster.sh stop NODE"
    running "$2" || die "$2 is not running"
    t0=$(date +%s%N)
    # Hand-off (10 s at most) + route switch (5 s) + drain (35 s at most) + shutdown (20 s at most).
    stop_node "$2" TERM 120
    echo "stopped $2 in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
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
  nodes)
    group=${2:-broker-a}
    [[ $group =~ ^broker-([a-i])$ ]] || die "usage: cluster.sh nodes [broker-a|broker-b|…]"
    letter=${BASH_REMATCH[1]}
    for n in $(known_nodes); do
      parse_node "$n"
      [ "$L" = "$letter" ] && echo "$n"
    done
    ;;
  wait)
    [ -n "${2:-}" ] || die "usage: cluster.sh wait NODE"
    parse_node "$2"
    "$BIN" admin ${CLI_TLS[@]+"${CLI_TLS[@]}"} --namesrv "$NAMESRV" node wait "n$ID" --broker "$GROUP" --timeout-secs 120
    ;;
  leader)
    leader_node "${2:-broker-a}" || die "no leader of ${2:-broker-a} known to the nameserver"
    ;;
  add-node)
    group=${2:-broker-a}
    [[ $group =~ ^broker-([a-i])$ ]] || die "usage: cluster.sh add-node [broker-a|broker-b|…]"
    l=${BASH_REMATCH[1]}
    [ -x "$BIN" ] || build
    id=$(fresh_node "$l")
    g=0; while [ "${LETTERS[$g]}" != "$l" ]; do g=$((g + 1)); done
    "$BIN" admin ${CLI_TLS[@]+"${CLI_TLS[@]}"} --namesrv "$NAMESRV" node add --broker "$group" --addr "127.0.0.1:$(client_port "$g" "$id")"
    ;;
  replace)
    [ -n "${2:-}" ] || die "usage: cluster.sh replace NODE"
    parse_node "$2"
    running "$2" && die "$2 is running: replace is for a dead node (kill it first, or use raftmq admin node remove)"
    [ -x "$BIN" ] || build
    id=$(fresh_node "$L")
    "$BIN" admin ${CLI_TLS[@]+"${CLI_TLS[@]}"} --namesrv "$NAMESRV" node replace "n$ID" --broker "$GROUP" --addr "127.0.0.1:$(client_port "$G" "$id")"
    echo "$2 is no longer a member; its data directory $DATA/$GROUP-n$ID can be deleted"
    ;;
  *)
    sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
