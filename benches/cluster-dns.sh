#!/usr/bin/env bash
# DNS answers per server CPU-second with [cluster] off and on, in one run (dns-peers.sh style:
# the figure is queries answered during a saturating dnsperf run / the server's utime+stime).
# "on" is the same config plus a [cluster] section pointing at a one-member etcd this script
# starts on loopback; the hot path reads the same snapshot either way, so the target is no
# measurable difference. Rounds alternate the order (off first in odd rounds).
#
# Figures from its first runs: BENCHMARKS.md ("Cluster").
#
# usage: benches/cluster-dns.sh [SECONDS]      (SECONDS per dnsperf run, default 10)
# env:   ROUNDS=3, BERTH_BIN=path (default: cargo build --release), KEEP_WORK=1
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
die() { echo "cluster-dns: error: $*" >&2; exit 1; }
for t in etcd dnsperf dig; do command -v $t >/dev/null || die "$t not found (scripts/setup --test)"; done

if [ -z "${BERTH_BIN:-}" ]; then
  (cd "$REPO" && cargo build --release --bin berth >&2)
  BERTH_BIN=$REPO/target/release/berth
fi

WORK=$(mktemp -d /tmp/cluster-dns.XXXXXX)
cleanup() {
  [ -n "${ETCD_PID:-}" ] && kill "$ETCD_PID" 2>/dev/null || true
  [ -n "${BERTH_PID:-}" ] && kill "$BERTH_PID" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EC=$(free_port); EP=$(free_port); DNS=$(free_port)
etcd --name b --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
  --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
  --initial-cluster "b=http://127.0.0.1:$EP" >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!

# benches/peers.toml with the demo GeoIP file and absolute paths.
sed -e "s|^database = .*|database = \"$REPO/geoip/demo.mmdb\"|" \
    -e "s|^file = \"peers-example.test.zone\"|file = \"$REPO/benches/peers-example.test.zone\"|" \
    -e "s|127.0.0.1:5303|127.0.0.1:$DNS|" "$REPO/benches/peers.toml" >"$WORK/off.toml"
cp "$WORK/off.toml" "$WORK/on.toml"
printf '\n[cluster]\netcd = ["http://127.0.0.1:%s"]\ninstance = "bench"\n' "$EC" >>"$WORK/on.toml"

# Tokyo clients (ECS 198.51.100.0/24): option 8, family 1, source /24.
for i in $(seq 1 1000); do echo "registry.example.test A"; done >"$WORK/queries"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # mode -> "answers_per_cpu_s qps"
  local mode=$1
  "$BERTH_BIN" serve --config "$WORK/$mode.toml" >"$WORK/berth-$mode.log" 2>&1 &
  BERTH_PID=$!
  for _ in $(seq 1 300); do
    dig @127.0.0.1 -p "$DNS" +short +time=1 +tries=1 registry.example.test A >/dev/null 2>&1 && break
    sleep 0.1
  done
  local t0; t0=$(cpu_ticks $BERTH_PID)
  local out; out=$(dnsperf -s 127.0.0.1 -p "$DNS" -d "$WORK/queries" -l "$DURATION" -c 4 -q 200 \
    -E 8:00011800c63364 2>&1)
  local t1; t1=$(cpu_ticks $BERTH_PID)
  kill $BERTH_PID; wait $BERTH_PID 2>/dev/null || true; BERTH_PID=
  local done_q; done_q=$(echo "$out" | awk '/Queries completed:/ {print $3}')
  local qps; qps=$(echo "$out" | awk '/Queries per second:/ {print $4}')
  local hz; hz=$(getconf CLK_TCK)
  python3 -c "print(f'{$done_q / (($t1 - $t0) / $hz):.0f} {float($qps):.0f}')"
}

declare -A per_cpu qps
for r in $(seq 1 "$ROUNDS"); do
  order="off on"; [ $((r % 2)) -eq 0 ] && order="on off"
  for m in $order; do
    read -r a q < <(run "$m")
    per_cpu[$m]="${per_cpu[$m]:-} $a"; qps[$m]="${qps[$m]:-} $q"
    echo "cluster-dns: round $r $m: $a answers/CPU-s, $q qps" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
off=$(echo "${per_cpu[off]}" | median); on=$(echo "${per_cpu[on]}" | median)
echo "answers per server CPU-second (median of $ROUNDS): [cluster] off $off, on $on, on/off $(python3 -c "print(f'{$on/$off:.3f}')")"
echo "qps (secondary): off $(echo "${qps[off]}" | median), on $(echo "${qps[on]}" | median)"
