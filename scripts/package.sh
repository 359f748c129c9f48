#!/usr/bin/env bash
# Builds the Debian package of raftmq (binary, systemd units, /etc/raftmq examples, maintainer scripts:
# crates/cli/Cargo.toml [package.metadata.deb], cluster/systemd, cluster/etc, cluster/debian) and, when
# podman or docker can build images here, the container image (cluster/container/Containerfile).
#
#   scripts/package.sh            .deb (installs cargo-deb from crates.io when missing), then the image
#   scripts/package.sh --deb      only the .deb
#   scripts/package.sh --image    only the image
#
# Prints the path of the .deb and its contents (dpkg-deb -I, -c). $CARGO_TARGET_DIR is honoured (default
# /var/tmp/raftmq-target); the .deb lands in $CARGO_TARGET_DIR/debian/. The image is tagged raftmq:VERSION
# and raftmq:latest. The image build needs its base images (rust:1-bookworm, debian:bookworm-slim) from a
# container registry; without one it fails and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftmq-target}"
CARGO_DEB_VERSION=3.8.0

want_deb=1 want_image=1
case "${1:-}" in
  "") ;;
  --deb) want_image=0 ;;
  --image) want_deb=0 ;;
  *) echo "usage: scripts/package.sh [--deb|--image]" >&2; exit 2 ;;
esac

die() { echo "package.sh: $*" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || die "no workspace version in Cargo.toml"

if [ "$want_deb" = 1 ]; then
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian/Ubuntu only)"
  if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb $CARGO_DEB_VERSION from crates.io" >&2
    cargo install --locked --version "$CARGO_DEB_VERSION" cargo-deb
  fi
  out=$(cargo deb -p raftmq-cli --dbgsym 2>&1 | tee /dev/stderr | grep "\.deb$" | tail -n 1)
  [ -f "$out" ] || die "cargo deb did not name a package file (last line: $out)"
  echo "== $out"
  dpkg-deb -I "$out"
  dpkg-deb -c "$out"
fi

if [ "$want_image" = 1 ]; then
  engine=""
  for e in podman docker; do
    if command -v "$e" >/dev/null 2>&1 && "$e" info >/dev/null 2>&1; then engine=$e; break; fi
  done
  if [ -z "$engine" ]; then
    why="no usable podman or docker (not installed, or no daemon): container image not built"
    [ "$want_deb" = 1 ] || die "$why"
    echo "package.sh: $why" >&2
  else
    "$engine" build -f cluster/container/Containerfile -t "raftmq:$version" -t raftmq:latest . \
      || die "$engine build failed (its base images come from a container registry: is one reachable?)"
    echo "== image raftmq:$version ($engine)"
  fi
fi
