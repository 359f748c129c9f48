#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine, then runs formatting,
# lints and every test of the workspace. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }

# A persistent target dir outside the clone keeps CI incremental across fresh clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# fusermount3 for the power-cut tests (crates/powerfail); they skip, saying why, where FUSE is unavailable.
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# Headless Chromium for the web console test (tests/console.rs); it skips, saying why, without one.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need_apt+=(chromium)
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The chaos harness's unsafe broker variant (feature-gated code the line above does not compile).
cargo clippy -p raftmq-broker --features unsafe-ack-before-quorum --lib -- -D warnings

log "cargo test"
set +e
cargo test --workspace 2>&1 | tee "${CARGO_TARGET_DIR}/last-test.log"
status=${PIPESTATUS[0]}
set -e
# Sums field N of the lines matching a pattern (0 when nothing matches; grep's "no match" is not an error).
sum_field() { { grep -Eo "$1" "$3" || true; } | awk -v n="$2" '{s+=$n} END {print s+0}'; }
passed=$(sum_field '^test result: ok\. [0-9]+ passed' 4 "${CARGO_TARGET_DIR}/last-test.log")
failed=$(sum_field '[0-9]+ failed' 1 "${CARGO_TARGET_DIR}/last-test.log")

# Runs a test suite given as a command, logs its output to last-<name>.log and adds its counts to the totals:
# run_suite NAME PASS_RE PASS_FIELD FAIL_RE FAIL_FIELD COMMAND...
run_suite() {
  local name=$1 pass_re=$2 pass_field=$3 fail_re=$4 fail_field=$5
  shift 5
  local logf="${CARGO_TARGET_DIR}/last-${name}.log" rc p f
  set +e
  "$@" 2>&1 | tee "$logf"
  rc=${PIPESTATUS[0]}
  set -e
  p=$(sum_field "$pass_re" "$pass_field" "$logf")
  f=$(sum_field "$fail_re" "$fail_field" "$logf")
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$rc" -ne 0 ]; then status=$rc; [ "$f" -gt 0 ] || failed=$((failed + 1)); fi
}

if [ "$status" -eq 0 ]; then
  # Interop with an unmodified RocketMQ client: PyPI rocketmq 0.4.4 (bundled C++ client) in a venv.
  log "interop: PyPI rocketmq 0.4.4 against a 3-node cluster"
  VENV="${RAFTMQ_VENV:-/var/tmp/raftmq-venv}"
  if ! [ -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv python3-pip
      rm -rf "$VENV"
      python3 -m venv "$VENV"
    fi
  fi
  "$VENV/bin/pip" install -q rocketmq==0.4.4 pytest
  repo=$(pwd)
  run_suite interop-python '[0-9]+ passed' 1 '[0-9]+ failed' 1 \
    bash -c "cd \"\${TMPDIR:-/tmp}\" && RAFTMQ_BIN='${CARGO_TARGET_DIR}/debug/raftmq' '$VENV/bin/pytest' -q -p no:cacheprovider '$repo/tests/interop'"

  # Interop with the unmodified crates.io rocketmq-client-rust =1.0.0 (a separate crate: ~280 dependencies,
  # built once into its own persistent target dir).
  log "interop: crates.io rocketmq-client-rust 1.0.0 against a 3-node cluster"
  run_suite interop-rust '^[0-9]+ passed, [0-9]+ failed' 1 '^[0-9]+ passed, [0-9]+ failed' 3 \
    scripts/interop-rust.sh "${CARGO_TARGET_DIR}/debug/raftmq"

  # Chaos: the quick Jepsen-style suite (network namespaces, nemeses, queue checker); fails on any anomaly
  # or an incomplete final drain.
  log "jepsen quick: partitions, kills, pauses, clocks, loss, slow links, leader transfers"
  if [ "$(id -u)" -eq 0 ]; then
    run_suite jepsen '^jepsen quick: [0-9]+ passed' 3 '^jepsen quick: [0-9]+ passed, [0-9]+ failed' 5 scripts/jepsen.sh --quick
  else
    echo "skipped: scripts/jepsen.sh needs root (network namespaces)"
  fi
fi

echo
echo "${passed} passed, ${failed} failed"
exit "$status"
