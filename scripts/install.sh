#!/usr/bin/env bash
# Builds krust (release) and installs it as /usr/local/bin/krust. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v protoc >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi
cargo build --release --locked -p krust
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/krust" /usr/local/bin/krust
