#!/usr/bin/env bash
# Interop test with the unmodified crates.io client rocketmq-client-rust =1.0.0: builds the separate
# tests/interop-rust crate (not a workspace member; ~280 crates, Rust >= 1.95) in a persistent target dir and
# runs it against a real 3-node cluster started from the raftmq binary given as the first argument.
# Usage: scripts/interop-rust.sh /abs/path/to/raftmq   (env RAFTMQ_INTEROP_TARGET overrides the target dir;
# RAFTMQ_INTEROP_PROFILE=debug builds without --release; RAFTMQ_INTEROP_CLIENT_LOG=debug shows client logs;
# RAFTMQ_INTEROP_KEEP=1 keeps the cluster's temp dir and logs even on success).
# Prints one line per check and a final "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -lt 1 ]; then
  echo "usage: $0 /absolute/path/to/raftmq" >&2
  exit 2
fi
bin="$1"
case "$bin" in
  /*) ;;
  *) bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")" ;;
esac
if ! [ -x "$bin" ]; then
  echo "raftmq binary not found or not executable: $bin" >&2
  exit 2
fi

export CARGO_TARGET_DIR="${RAFTMQ_INTEROP_TARGET:-/var/tmp/raftmq-interop-target}"
profile="${RAFTMQ_INTEROP_PROFILE:-release}"
if [ "$profile" = "release" ]; then
  cargo build --release --locked --manifest-path tests/interop-rust/Cargo.toml
else
  cargo build --locked --manifest-path tests/interop-rust/Cargo.toml
fi
RAFTMQ_BIN="$bin" "${CARGO_TARGET_DIR}/${profile}/raftmq-interop-rust"
