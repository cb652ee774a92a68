#!/usr/bin/env bash
# Builds krust (release) and installs it as /usr/local/bin/krust. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# protoc builds the CRI and etcd clients; containerd, runc and the CNI plugins run pods.
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null || need_apt+=(iptables)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
cargo build --release --locked -p krust
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/krust" /usr/local/bin/krust
