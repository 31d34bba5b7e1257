#!/usr/bin/env bash
# Side-by-side datapath benchmark in a 2-node lab: Pod-to-Pod iperf3 (1 TCP stream and 4) and
# ping RTT over raw veth (BGP routes, no encryption), weft, wireguard-go and boringtun-cli.
# Prints one Markdown table. Usage: sudo scripts/bench.sh [SECONDS per iperf3 run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
export WEFT_LAB=wtbench
LAB=$WEFT_LAB
RUN=/run/$LAB

[ "$(id -u)" -eq 0 ] || { echo "bench.sh must run as root" >&2; exit 1; }
missing=()
for cmd in iperf3:iperf3 wireguard-go:wireguard-go wg:wireguard-tools python3:python3; do
    command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v boringtun-cli >/dev/null || cargo install --locked boringtun-cli
cargo build --release --bin weft
WEFT=$PWD/target/release/weft

cleanup() {
    scripts/lab.sh down >/dev/null 2>&1 || true
    rm -f /var/run/wireguard/wgg[12].sock /var/run/wireguard/wgb[12].sock
}
trap cleanup EXIT

gbps() {
    python3 -c "import json,sys; d=json.load(sys.stdin); print('%.2f' % (d['end']['sum_received']['bits_per_second'] / 1e9))"
}

pod_ip() { awk 'NR==1 {print $2}' "$RUN/n$1/pods"; }

# A userspace WireGuard implementation between n1 and n2, replacing the clear BGP routes.
plain_wireguard() {
    local impl=$1 k j key dir
    dir=$(mktemp -d)
    for k in 1 2; do wg genkey > "$dir/k$k"; wg pubkey < "$dir/k$k" > "$dir/p$k"; done
    for k in 1 2; do
        j=$((3 - k))
        local ifname="wg${impl:0:1}$k"
        case $impl in
            go) ip netns exec "$LAB-n$k" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$ifname" >/dev/null 2>&1 & disown ;;
            boringtun) ip netns exec "$LAB-n$k" boringtun-cli "$ifname" --foreground --disable-drop-privileges >/dev/null 2>&1 & disown ;;
        esac
        for _ in $(seq 50); do ip -n "$LAB-n$k" link show "$ifname" >/dev/null 2>&1 && break; sleep 0.1; done
        key=$(cat "$dir/p$j")
        ip netns exec "$LAB-n$k" wg set "$ifname" private-key "$dir/k$k" listen-port 51821 \
            peer "$key" endpoint "198.18.0.$j:51821" allowed-ips "10.244.$j.0/24"
        ip -n "$LAB-n$k" link set "$ifname" mtu 1420 up
        ip -n "$LAB-n$k" route replace "10.244.$j.0/24" dev "$ifname"
        # BIRD would put its route back; stop it for the run.
        scripts/lab.sh stop-bird "$k" >/dev/null
    done
    rm -rf "$dir"
}

measure() {
    local name=$1 server client one four rtt
    server=$(pod_ip 2)
    client="$LAB-n1-p1"
    ip netns exec "$LAB-n2-p1" iperf3 -s -D -1 >/dev/null
    sleep 0.5
    ping_ok=0
    for _ in $(seq 30); do ip netns exec "$client" ping -c1 -W1 "$server" >/dev/null 2>&1 && { ping_ok=1; break; }; done
    [ $ping_ok -eq 1 ] || { echo "| $name | unreachable | | |"; return; }
    one=$(ip netns exec "$client" iperf3 -c "$server" -t "$SECONDS_PER_RUN" -J | gbps)
    ip netns exec "$LAB-n2-p1" iperf3 -s -D -1 >/dev/null
    sleep 0.5
    four=$(ip netns exec "$client" iperf3 -c "$server" -t "$SECONDS_PER_RUN" -P 4 -J | gbps)
    rtt=$(ip netns exec "$client" ping -q -c 50 -i 0.02 "$server" | awk -F/ '/^rtt/ {print $5}')
    echo "| $name | $one | $four | $rtt |"
}

results=()
WEFT_LAB_NO_AGENT=1 scripts/lab.sh up 2 >/dev/null; sleep 6
results+=("$(measure "raw veth (BGP, clear)")"); cleanup

WEFT_BIN=$WEFT scripts/lab.sh up 2 >/dev/null; sleep 6
results+=("$(measure "weft")"); cleanup

WEFT_LAB_NO_AGENT=1 scripts/lab.sh up 2 >/dev/null; sleep 6; plain_wireguard go
results+=("$(measure "wireguard-go")"); cleanup

WEFT_LAB_NO_AGENT=1 scripts/lab.sh up 2 >/dev/null; sleep 6; plain_wireguard boringtun
results+=("$(measure "boringtun-cli")"); cleanup

echo
echo "Pod-to-Pod across two lab nodes, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), ${SECONDS_PER_RUN}s per iperf3 run"
echo
echo "| path | 1 TCP stream (Gbit/s) | 4 TCP streams (Gbit/s) | ping RTT avg (ms) |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${results[@]}"
