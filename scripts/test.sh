#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need (idempotent), then lint,
# unit and integration tests, and the end-to-end tier with the real kubectl, etcd and krust.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/install-test-tools.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast
