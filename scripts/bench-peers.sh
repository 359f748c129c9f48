#!/usr/bin/env bash
# raftmq side by side with NATS JetStream and RabbitMQ on this machine, in one run.
#
#   scripts/bench-peers.sh [--json FILE] [--duration S] [--systems LIST] [--e2e-rates LIST] [--no-build]
#                          [--install-only] [-- EXTRA bench-peers OPTIONS]
#
# Starts each system fresh in its own temporary directory, one at a time, drives the same workloads from
# the Rust bench crate in bench/ (binary bench-peers), stops it and deletes its data:
#   raftmq-sync   3-node raftmq group from cluster/local/*.toml, flushDiskType SYNC_FLUSH (the default)
#   raftmq-async  the same with flushDiskType ASYNC_FLUSH
#   raftmq-sync-unbatched  raftmq-sync with the client's auto-batching off (one request per send)
#   nats          3 nats-server -js processes (Debian nats-server), R3 file stream
#   rabbitmq      3 RabbitMQ nodes (Debian rabbitmq-server) joined into one cluster, quorum queue, confirms
# Cases per system (--duration seconds each): sync send 1 producer 128 B; pipelined send 4 producers x 256
# in flight, 128 B and 1 KiB; then consume everything back; then one end-to-end case per --e2e-rates rate
# (1 producer sends 128 B messages at that rate, open loop, while a consumer reads them: produce-to-consume
# latency from each message's due time, acknowledged messages never received, duplicates). Prints one table
# (msgs/s, MB/s, p50/p99/p99.9 latency, server and client CPU per message, lost/dup, fsync before ack,
# raftmq's ratio to each peer); --json FILE also writes it as a JSON list.
# CPU per message: user + system time over the case of the three server processes (raftmq: the three
# brokers, nameserver excluded; NATS: the three nats-server; RabbitMQ: the three beam.smp, epmd and the
# Erlang helper processes excluded), from /proc/PID/stat, and of bench-peers itself (getrusage), divided by
# the messages acknowledged (produce), read (consume) or received (e2e). On a busy machine msgs/s depends on
# the neighbours; CPU per message much less.
#
#   --systems LIST  comma-separated subset of raftmq-sync,raftmq-sync-unbatched,raftmq-async,nats,rabbitmq
#                   (default: all five)
#   --e2e-rates LIST  comma-separated end-to-end rates in msgs/s (default 1000,10000,50000; "none": no
#                   end-to-end cases); each runs --duration seconds, then reads on until every
#                   acknowledged message arrived (at most 10 s without a new one)
#   --no-build      use the existing raftmq and bench-peers binaries
#   --install-only  install the missing Debian packages and exit
#   -- ARGS         passed to every `bench-peers raftmq|nats|rabbitmq` (e.g. -- --producers 8 --inflight 64)
#
# Environment: CARGO_TARGET_DIR (raftmq build, default /var/tmp/raftmq-target), BENCH_TARGET_DIR (bench
# crate, default /var/tmp/raftmq-bench-target), BENCH_TMPDIR (parent of the data directory, default
# /var/tmp; it must be a real disk, not tmpfs, or fsync means nothing), RABBITMQ_ERL_ARGS (extra Erlang
# VM flags for the RabbitMQ nodes; default "+sbwt none +sbwtdcpu none +sbwtdio none", i.e. no busy-waiting
# schedulers, RabbitMQ's advice when nodes share CPUs, as three nodes on one host do).
# Ports used: raftmq 9876, 10911-10932; NATS 4222-4224, 6222-6224, 8222-8224; RabbitMQ 5672-5674,
# 25672-25674, a private epmd on 4371. Needs root only to install packages.
set -euo pipefail
CALLER_PWD=$(pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)

JSON=""
DURATION=10
SYSTEMS="raftmq-sync,raftmq-sync-unbatched,raftmq-async,nats,rabbitmq"
E2E_RATES="1000,10000,50000"
BUILD=1
INSTALL_ONLY=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --json) JSON=$2; shift 2 ;;
    --json=*) JSON=${1#*=}; shift ;;
    --duration) DURATION=$2; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --systems=*) SYSTEMS=${1#*=}; shift ;;
    --e2e-rates) E2E_RATES=$2; shift 2 ;;
    --e2e-rates=*) E2E_RATES=${1#*=}; shift ;;
    --no-build) BUILD=0; shift ;;
    --install-only) INSTALL_ONLY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench-peers.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DURATION" in ''|*[!0-9]*) echo "bench-peers.sh: --duration takes whole seconds" >&2; exit 2 ;; esac
[ "$DURATION" -ge 1 ] || { echo "bench-peers.sh: --duration must be at least 1" >&2; exit 2; }
E2E_ARGS=()
case "$E2E_RATES" in
  none|"") ;;
  *[!0-9,]*|,*|*,|*,,*) echo "bench-peers.sh: --e2e-rates takes comma-separated whole msgs/s, e.g. 1000,10000, or none" >&2; exit 2 ;;
  *) E2E_ARGS=(--e2e-rates "$E2E_RATES") ;;  # bench-peers checks the bounds (1..1000000 msgs/s, at most 8 rates)
esac
if [ -n "$JSON" ]; then
  case "$JSON" in /*) ;; *) JSON="$CALLER_PWD/$JSON" ;; esac
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
BENCH_TARGET_DIR="${BENCH_TARGET_DIR:-/var/tmp/raftmq-bench-target}"
RAFTMQ_BIN="$CARGO_TARGET_DIR/release/raftmq"
BENCH_BIN="$BENCH_TARGET_DIR/release/bench-peers"
RABBITMQ_ERL_ARGS="${RABBITMQ_ERL_ARGS-+sbwt none +sbwtdcpu none +sbwtdio none}"
EPMD_PORT=4371

log() { printf '\n=== %s  %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { echo "bench-peers.sh: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- cleanup: every process this script starts runs in its own session (setsid) and is stopped as a group --
TMP=""
POLICY_SAVED=""
POLICY_INSTALLED=0

# Stops everything spawned so far: SIGTERM to every process group (newest first), up to 15 s to exit, then
# SIGKILL. The pids are kept in a file because the systems are started in subshells.
stop_all() {
  [ -n "$TMP" ] && [ -f "$TMP/pids" ] || return 0
  local pid pids alive
  pids=$(tac "$TMP/pids")
  for pid in $pids; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 150); do
    alive=0
    for pid in $pids; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in $pids; do
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  : >"$TMP/pids"
  : >"$TMP/names"
}

restore_policy() {
  [ "$POLICY_INSTALLED" = 1 ] || return 0
  if [ -n "$POLICY_SAVED" ]; then mv -f "$POLICY_SAVED" /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi
  POLICY_INSTALLED=0
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  restore_policy
  [ -n "$TMP" ] && rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn NAME LOGFILE CMD...: start CMD in a new session; its pid is also its process group id.
spawn() {
  local name=$1 logfile=$2
  shift 2
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  echo "$!" >>"$TMP/pids"
  echo "$name $!" >>"$TMP/names"
  echo "  started $name (pid $!)" >&2
}

# port_busy PORT: something listens on PORT on loopback or on every address (other addresses do not clash).
port_busy() { ss -Htln "sport = :$1" 2>/dev/null | awk '{ print $4 }' | grep -Eq '^(127\.0\.0\.1|0\.0\.0\.0|\*|\[::\]|\[::1\]):'; }

check_ports_free() {
  local p
  for p in "$@"; do
    port_busy "$p" && die "port $p is already in use (another instance of this system running?); stop it first"
  done
  return 0
}

# wait_for SECONDS WHAT CMD...: retry CMD until it succeeds.
wait_for() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "bench-peers.sh: timed out after ${secs}s waiting for $what" >&2; return 1; }
    sleep 0.5
  done
}

# --- install ------------------------------------------------------------------------------------------------
RABBITMQ_SERVER=""
find_rabbitmq() {
  local c
  # The upstream script, not Debian's wrapper in /usr/sbin that switches to the rabbitmq user.
  for c in /usr/lib/rabbitmq/bin/rabbitmq-server /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server; do
    [ -x "$c" ] && { RABBITMQ_SERVER=$c; RABBITMQ_SBIN=$(dirname "$(readlink -f "$c")"); return 0; }
  done
  return 1
}

install_packages() {
  local missing=() systemd=0 had_erlang=0 units
  command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
  find_rabbitmq || missing+=(rabbitmq-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root, or apt-get install -y ${missing[*]} first"
  dpkg-query -W -f='${Status}' erlang-base 2>/dev/null | grep -q "ok installed" && had_erlang=1
  log "installing ${missing[*]} (their system services are kept from starting)"
  # invoke-rc.d and deb-systemd-invoke ask policy-rc.d; 101 = "action forbidden", so postinst starts nothing.
  if [ -e /usr/sbin/policy-rc.d ]; then
    POLICY_SAVED=$(mktemp /usr/sbin/policy-rc.d.bench-saved.XXXXXX)
    cp -p /usr/sbin/policy-rc.d "$POLICY_SAVED"
  fi
  POLICY_INSTALLED=1
  printf '#!/bin/sh\n# installed by raftmq scripts/bench-peers.sh during apt-get install\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
  restore_policy
  # On a systemd host the new units are enabled (not started); make sure none runs and none starts at boot.
  # (epmd only if this install brought Erlang; the nodes here use a private epmd anyway.)
  [ -d /run/systemd/system ] && systemd=1
  if [ "$systemd" = 1 ]; then
    local u
    units="rabbitmq-server.service nats-server.service"
    [ "$had_erlang" = 1 ] || units="$units epmd.socket epmd.service"
    for u in $units; do
      if systemctl list-unit-files "$u" >/dev/null 2>&1; then
        systemctl disable --now "$u" >/dev/null 2>&1 || true
      fi
    done
  fi
  find_rabbitmq || die "rabbitmq-server installed but its server script was not found under /usr/lib/rabbitmq"
  command -v nats-server >/dev/null 2>&1 || die "nats-server installed but not on PATH"
}

install_packages
find_rabbitmq || true
[ "$INSTALL_ONLY" = 1 ] && { echo "nats-server: $(nats-server --version 2>&1)"; echo "rabbitmq-server: $RABBITMQ_SERVER"; exit 0; }

# --- build --------------------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  log "building raftmq (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  cargo build --release -q -p raftmq-cli
  log "building bench-peers (release, CARGO_TARGET_DIR=$BENCH_TARGET_DIR)"
  (cd bench && CARGO_TARGET_DIR="$BENCH_TARGET_DIR" cargo build --release -q)
fi
[ -x "$RAFTMQ_BIN" ] || die "$RAFTMQ_BIN not found (drop --no-build)"
[ -x "$BENCH_BIN" ] || die "$BENCH_BIN not found (drop --no-build)"

TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/raftmq-bench.XXXXXX")
RESULTS=()
SUMMARY=()
FAILED=()

# --- raftmq ---------------------------------------------------------------------------------------------------
RAFTMQ_NAMESRV=127.0.0.1:9876
raftmq_leader() { "$RAFTMQ_BIN" admin --namesrv "$RAFTMQ_NAMESRV" leader; }

start_raftmq() {
  local dir=$1 flush=$2 n
  check_ports_free 9876 10911 10912 10921 10922 10931 10932
  for n in 1 2 3; do
    sed -e "s|^flushDiskType = .*|flushDiskType = \"$flush\"|" -e "s|^storePathRootDir = .*|storePathRootDir = \"$dir/n$n\"|" \
      "cluster/local/broker-a-n$n.toml" >"$dir/n$n.toml"
    grep -q "^flushDiskType = \"$flush\"$" "$dir/n$n.toml" || die "could not set flushDiskType in $dir/n$n.toml"
  done
  spawn raftmq-namesrv "$dir/namesrv.out" "$RAFTMQ_BIN" namesrv --listen "$RAFTMQ_NAMESRV" --log-file "$dir/namesrv.log"
  for n in 1 2 3; do
    spawn "raftmq-n$n" "$dir/n$n.out" "$RAFTMQ_BIN" broker --config "$dir/n$n.toml" --store-dir "$dir/n$n" --log-file "$dir/n$n.log"
  done
  wait_for 60 "a raftmq leader to register with the nameserver" raftmq_leader
  echo "  leader: $(raftmq_leader)" >&2
}

bench_raftmq() {
  local flags=()
  [ "$1" = raftmq-sync-unbatched ] && flags+=(--no-auto-batch)
  "$BENCH_BIN" raftmq --namesrv "$RAFTMQ_NAMESRV" --label "$1" --duration "$DURATION" --out "$2" --server-pids "$3" \
    ${E2E_ARGS[@]+"${E2E_ARGS[@]}"} ${flags[@]+"${flags[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
}

# --- NATS -----------------------------------------------------------------------------------------------------
NATS_URLS=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224

# Every server names the JetStream meta leader (monitoring port 8222 + i).
nats_meta_leader() {
  local i
  for i in 0 1 2; do
    curl -fsS "http://127.0.0.1:$((8222 + i))/jsz" 2>/dev/null | grep -q '"leader": *"[^"]' || return 1
  done
}

start_nats() {
  local dir=$1 i n routes
  check_ports_free 4222 4223 4224 6222 6223 6224 8222 8223 8224
  routes=nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224
  for i in 0 1 2; do
    n=n$((i + 1))
    mkdir -p "$dir/$n"
    # Server i: clients on 4222 + i, routes on 6222 + i, monitoring on 8222 + i.
    spawn "nats-$n" "$dir/$n.out" nats-server -js -sd "$dir/$n" -n "$n" -a 127.0.0.1 -p $((4222 + i)) -m $((8222 + i)) \
      --cluster_name bench --cluster "nats://127.0.0.1:$((6222 + i))" --routes "$routes" -l "$dir/$n.log"
  done
  # Streams can be created once every server knows the JetStream meta leader.
  wait_for 60 "the NATS JetStream meta leader" nats_meta_leader
  echo "  $(nats-server --version 2>&1); meta leader: $(curl -fsS http://127.0.0.1:8222/jsz | grep -o '"leader": *"[^"]*"' | head -1 | cut -d'"' -f4)" >&2
  for i in 0 1 2; do port_busy $((4222 + i)) || die "nats server $((i + 1)) does not listen on $((4222 + i))"; done
}

bench_nats() {
  "$BENCH_BIN" nats --urls "$NATS_URLS" --label "$1" --duration "$DURATION" --out "$2" --server-pids "$3" \
    ${E2E_ARGS[@]+"${E2E_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
}

# --- RabbitMQ -------------------------------------------------------------------------------------------------
RABBIT_URIS=amqp://guest:guest@127.0.0.1:5672/%2f,amqp://guest:guest@127.0.0.1:5673/%2f,amqp://guest:guest@127.0.0.1:5674/%2f
RABBIT_DIR=""

# rabbit_env I: node I's environment in RV (private HOME for the shared cookie, private epmd, own ports/dirs).
rabbit_env() {
  local i=$1
  RV=(HOME="$RABBIT_DIR/home" ERL_EPMD_PORT=$EPMD_PORT
    RABBITMQ_NODENAME="rabbit$i@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$((5671 + i))
    RABBITMQ_DIST_PORT=$((25671 + i)) RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia$i" RABBITMQ_LOG_BASE="$RABBIT_DIR/log$i"
    RABBITMQ_PID_FILE="$RABBIT_DIR/rabbit$i.pid" RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
    RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
    RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins" RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$RABBITMQ_ERL_ARGS")
}

rmqctl() {
  local i=$1 RV
  shift
  rabbit_env "$i"
  env "${RV[@]}" "$RABBITMQ_SBIN/rabbitmqctl" -q -n "rabbit$i@localhost" "$@"
}
rabbit_up() { rmqctl "$1" await_startup --timeout 5; }
rabbit_running_nodes() { rmqctl 1 cluster_status --formatter json | grep -o '"running_nodes":\[[^]]*\]' | grep -o 'rabbit[0-9]@localhost'; }
rabbit_three_nodes() { [ "$(rabbit_running_nodes | sort -u | wc -l)" -eq 3 ]; }

start_rabbitmq() {
  local dir=$1 i RV
  RABBIT_DIR=$dir
  check_ports_free 5672 5673 5674 25672 25673 25674 $EPMD_PORT
  mkdir -p "$dir/home"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie"
  chmod 400 "$dir/home/.erlang.cookie"
  echo "[]." >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  : >"$dir/rabbitmq.conf"
  # A private epmd (distribution port registry), so that no system epmd is used or left behind.
  spawn epmd "$dir/epmd.out" epmd -port $EPMD_PORT -address 127.0.0.1
  wait_for 10 "epmd" port_busy $EPMD_PORT
  for i in 1 2 3; do
    mkdir -p "$dir/mnesia$i" "$dir/log$i"
    rabbit_env "$i"
    spawn "rabbit$i" "$dir/rabbit$i.out" env "${RV[@]}" "$RABBITMQ_SERVER"
  done
  for i in 1 2 3; do wait_for 180 "RabbitMQ node rabbit$i to boot" rabbit_up "$i"; done
  # Nodes 2 and 3 join node 1. The CLI's chatter (harmless errors about tracking tables of nodes still
  # booting) goes to a file that is shown only if something fails.
  for i in 2 3; do
    {
      rmqctl "$i" stop_app
      rmqctl "$i" join_cluster rabbit1@localhost
      rmqctl "$i" start_app
    } >>"$dir/cluster-join.out" 2>&1
  done
  wait_for 120 "the RabbitMQ cluster to run three nodes" rabbit_three_nodes
  echo "  RabbitMQ $(rmqctl 1 status --formatter json | grep -o '"rabbitmq_version":"[^"]*"' | cut -d'"' -f4), running nodes:" \
    "$(rabbit_running_nodes | sort | tr '\n' ' ')" >&2
}

bench_rabbitmq() {
  "$BENCH_BIN" rabbitmq --uris "$RABBIT_URIS" --label "$1" --duration "$DURATION" --out "$2" --server-pids "$3" \
    ${E2E_ARGS[@]+"${E2E_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
}

# --- server processes whose CPU is measured ------------------------------------------------------------------
# server_pids SYSTEM: the comma-separated pids of the system's three server processes. Each was spawned as
# the leader of its own process group; the server is the process named COMM in that group (the group leader
# itself for raftmq and nats-server; for RabbitMQ the Erlang VM, beam.smp, under the rabbitmq-server script).
server_pids() {
  local prefix comm name pgid pid out=()
  case "$1" in
    raftmq-*) prefix=raftmq-n; comm=raftmq ;;
    nats) prefix=nats-n; comm=nats-server ;;
    rabbitmq) prefix=rabbit; comm=beam.smp ;;
    *) die "server_pids: unknown system $1" ;;
  esac
  while read -r name pgid; do
    case "$name" in "$prefix"[0-9]) ;; *) continue ;; esac
    pid=$(pgrep -g "$pgid" -x "$comm" || true)
    [ "$(printf '%s\n' "$pid" | grep -c .)" = 1 ] || die "$name: expected one $comm process in process group $pgid, found: ${pid:-none}"
    out+=("$pid")
  done <"$TMP/names"
  [ ${#out[@]} = 3 ] || die "$1: found ${#out[@]} server processes instead of 3"
  (IFS=,; echo "${out[*]}")
}

# --- one system at a time -------------------------------------------------------------------------------------
show_logs() {
  local dir=$1 f
  for f in $(find "$dir" -maxdepth 3 \( -name '*.log' -o -name '*.out' \) -type f 2>/dev/null | sort); do
    echo "--- last lines of ${f#"$dir"/}" >&2
    tail -n 15 "$f" >&2
  done
}

# run_system NAME: start the system fresh, run the cases, stop it, delete its data. A failure is reported and
# the run goes on with the next system. (Steps run in subshells with errexit on; `cmd || x` would disable it.)
run_system() {
  local sys=$1 dir="$TMP/$1" out="$TMP/$1.json" t0 setup_s bench_s=0 stop_s rc pids=""
  mkdir -p "$dir"
  log "$sys: starting"
  t0=$(now)
  set +e
  (
    set -e
    case "$sys" in
      raftmq-sync|raftmq-sync-unbatched) start_raftmq "$dir" SYNC_FLUSH ;;
      raftmq-async) start_raftmq "$dir" ASYNC_FLUSH ;;
      nats) start_nats "$dir" ;;
      rabbitmq) start_rabbitmq "$dir" ;;
    esac
  )
  rc=$?
  set -e
  setup_s=$(since "$t0")
  if [ "$rc" = 0 ]; then
    pids=$(server_pids "$sys") || rc=1
  fi
  if [ "$rc" = 0 ]; then
    log "$sys: ready after ${setup_s}s (server pids $pids); running the cases (${DURATION}s each), consuming, end-to-end"
    t0=$(now)
    set +e
    case "$sys" in
      raftmq-*) bench_raftmq "$sys" "$out" "$pids" ;;
      nats) bench_nats "$sys" "$out" "$pids" ;;
      rabbitmq) bench_rabbitmq "$sys" "$out" "$pids" ;;
    esac
    rc=$?
    set -e
    bench_s=$(since "$t0")
  fi
  [ "$rc" = 0 ] || show_logs "$dir"
  t0=$(now)
  stop_all
  stop_s=$(since "$t0")
  rm -rf "$dir"
  [ -s "$out" ] && RESULTS+=("$out")
  [ "$rc" = 0 ] || FAILED+=("$sys")
  SUMMARY+=("$(printf '%-13s setup %6ss   cases+consume %6ss   stop %5ss   %s' "$sys" "$setup_s" "$bench_s" "$stop_s" \
    "$([ "$rc" = 0 ] && echo ok || echo FAILED)")")
}

IFS=, read -r -a WANT <<<"$SYSTEMS"
for sys in "${WANT[@]}"; do
  case "$sys" in
    raftmq-sync|raftmq-sync-unbatched|raftmq-async|nats|rabbitmq) run_system "$sys" ;;
    *) die "unknown system $sys (raftmq-sync, raftmq-sync-unbatched, raftmq-async, nats, rabbitmq)" ;;
  esac
done

log "results"
printf '%s\n' "${SUMMARY[@]}" >&2
echo >&2
[ ${#RESULTS[@]} -gt 0 ] || die "no system produced results"
TABLE_ARGS=()
[ -n "$JSON" ] && TABLE_ARGS+=(--json "$JSON")
"$BENCH_BIN" table "${TABLE_ARGS[@]}" "${RESULTS[@]}"
[ ${#FAILED[@]} -eq 0 ] || die "failed: ${FAILED[*]}"
