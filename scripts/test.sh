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

log "cargo test"
set +e
cargo test --workspace 2>&1 | tee "${CARGO_TARGET_DIR}/last-test.log"
status=${PIPESTATUS[0]}
set -e
# Sums field N of the lines matching a pattern (0 when nothing matches; grep's "no match" is not an error).
sum_field() { { grep -Eo "$1" "$3" || true; } | awk -v n="$2" '{s+=$n} END {print s+0}'; }
passed=$(sum_field '^test result: ok\. [0-9]+ passed' 4 "${CARGO_TARGET_DIR}/last-test.log")
failed=$(sum_field '[0-9]+ failed' 1 "${CARGO_TARGET_DIR}/last-test.log")

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
  set +e
  (cd "${TMPDIR:-/tmp}" && RAFTMQ_BIN="${CARGO_TARGET_DIR}/debug/raftmq" "$VENV/bin/pytest" -q -p no:cacheprovider "$OLDPWD/tests/interop") 2>&1 | tee "${CARGO_TARGET_DIR}/last-interop.log"
  pystatus=${PIPESTATUS[0]}
  set -e
  p=$(sum_field '[0-9]+ passed' 1 "${CARGO_TARGET_DIR}/last-interop.log")
  f=$(sum_field '[0-9]+ failed' 1 "${CARGO_TARGET_DIR}/last-interop.log")
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$pystatus" -ne 0 ]; then status=$pystatus; [ "$f" -gt 0 ] || failed=$((failed + 1)); fi

  # Interop with the unmodified crates.io rocketmq-client-rust =1.0.0 (a separate crate: ~280 dependencies,
  # built once into its own persistent target dir).
  log "interop: crates.io rocketmq-client-rust 1.0.0 against a 3-node cluster"
  set +e
  scripts/interop-rust.sh "${CARGO_TARGET_DIR}/debug/raftmq" 2>&1 | tee "${CARGO_TARGET_DIR}/last-interop-rust.log"
  rsstatus=${PIPESTATUS[0]}
  set -e
  p=$(sum_field '^[0-9]+ passed, [0-9]+ failed' 1 "${CARGO_TARGET_DIR}/last-interop-rust.log")
  f=$(sum_field '^[0-9]+ passed, [0-9]+ failed' 3 "${CARGO_TARGET_DIR}/last-interop-rust.log")
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$rsstatus" -ne 0 ]; then status=$rsstatus; [ "$f" -gt 0 ] || failed=$((failed + 1)); fi
fi

echo
echo "${passed} passed, ${failed} failed"
exit "$status"
