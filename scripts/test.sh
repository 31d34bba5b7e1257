#!/usr/bin/env bash
# The test command (README, .ci/run): installs the Debian packages the tests need, then runs
# the format check, clippy with warnings as errors, and every unit, property and lab test.
# Must run as root: the lab tests create network namespaces, BIRD daemons and CNI Pods.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh must run as root (the lab tests create network namespaces); try: sudo scripts/test.sh" >&2
    exit 1
fi

packages=(bird2 containernetworking-plugins iproute2 iputils-ping procps ca-certificates
          wireguard-tools wireguard-go tcpdump nftables python3)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (install Rust with rustup)" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
