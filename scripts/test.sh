#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need (idempotent), then lint,
# unit and integration tests, and the end-to-end tier with the real kubectl, etcd and krust.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# A CI build is made once and thrown away: incremental state would only cost disk (gigabytes for
# the test binaries), and CI machines have run out of it.
if [[ "${CI:-}" == "true" ]]; then export CARGO_INCREMENTAL=0; fi
./scripts/install-test-tools.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast
