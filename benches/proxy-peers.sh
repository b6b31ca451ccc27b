#!/usr/bin/env bash
# Proxy benchmark, in one run on this machine, against one docker-registry replica:
#   1. skopeo push and pull of the test image (../shared/testbed/make-images.sh, app-1.0, ~10 MiB,
#      3 layers) through Berth's proxy vs straight to the replica: wall time, medians of RUNS,
#      the two paths alternating within each run, a fresh private blob-info cache for each copy.
#   2. blob download throughput with wrk (GET of the 4 MiB base layer) through Berth vs through
#      nginx as a reverse proxy in front of the same replica (and the replica alone, for scale),
#      medians of ROUNDS, the order rotating per round.
#
# usage: benches/proxy-peers.sh [RUNS] [WRK_SECONDS]      (defaults 7 and 10)
# env:
#   ROUNDS=3            wrk rounds
#   WRK_THREADS=2 WRK_CONNS=16
#   PROXY_THREADS=2     worker threads of Berth's proxy and of nginx (worker_processes)
#   BERTH_BIN=path      use this berth binary instead of `cargo build --release`
#   RESULTS_DIR=path    default /tmp/proxy-peers-results/<timestamp>
#   KEEP_WORK=1         keep the temp dir (configs, logs)
# Needs: docker-registry skopeo umoci jq curl nginx wrk (scripts/setup --test). 127.0.0.1 only.
#
# nginx is configured as one would front a registry: HTTP/1.1 keep-alive pool to the replica,
# `proxy_buffering off` and `proxy_request_buffering off` (streams both ways, as Berth does),
# access log off (Berth logs requests at debug level only), the client's Host passed through.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBED=$REPO/../shared/testbed
RUNS=${1:-7}
WRK_SECONDS=${2:-10}
ROUNDS=${ROUNDS:-3}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-16}
PROXY_THREADS=${PROXY_THREADS:-2}
RESULTS_DIR=${RESULTS_DIR:-/tmp/proxy-peers-results/$(date -u +%Y%m%dT%H%M%SZ)}

die() { echo "proxy-peers: error: $*" >&2; exit 1; }
log() { echo "proxy-peers: $*" >&2; }
for t in docker-registry skopeo umoci jq curl nginx wrk python3; do
  command -v "$t" >/dev/null || die "$t not found (scripts/setup --test)"
done
[ -d "$TESTBED" ] || die "test bed not found at $TESTBED"

if [ -z "${BERTH_BIN:-}" ]; then
  (cd "$REPO" && cargo build --release --bin berth -q)
  BERTH_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/berth
fi
[ -x "$BERTH_BIN" ] || die "no berth binary at $BERTH_BIN"

WORK=$(mktemp -d /tmp/proxy-peers.XXXXXX)
mkdir -p "$RESULTS_DIR"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$(cat "$WORK/nginx.pid" 2>/dev/null)" 2>/dev/null || true
  OCI_TESTBED_DIR=$WORK REG_SET=bench "$TESTBED/registries.sh" stop >/dev/null 2>&1 || true
  [ -n "${KEEP_WORK:-}" ] && log "work dir kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL
  for _ in $(seq 1 200); do
    c=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)
    [ -n "$c" ] && [ "$c" != 000 ] && return 0
    sleep 0.05
  done
  die "$1 did not answer"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# ---- the replica, the image --------------------------------------------------------------------
REG_PORT=$(free_port)
OCI_TESTBED_DIR=$WORK REG_SET=bench REG_BASE_PORT=$REG_PORT REG_N=1 REG_LOG_LEVEL=error \
  "$TESTBED/registries.sh" start >/dev/null 2>&1 || die "registry did not start"
REG=127.0.0.1:$REG_PORT
LAYOUT=$WORK/layout
OCI_TESTBED_DIR=$WORK IMG_LAYOUT=$LAYOUT "$TESTBED/make-images.sh" >/dev/null 2>&1 || die "make-images.sh failed"

# skopeo with a private, empty blob-info cache for every copy (as root the cache is a fixed path:
# a private mount namespace with a tmpfs over it, as the test bed's lib.sh does).
sk() {
  if [ "$(id -u)" = 0 ]; then
    unshare -m --propagation private sh -c \
      'mkdir -p /var/lib/containers && mount -t tmpfs bic /var/lib/containers && exec skopeo --insecure-policy "$@"' sh "$@"
  else
    XDG_DATA_HOME=$(mktemp -d "$WORK/xdg.XXXXXX") skopeo --insecure-policy "$@"
  fi
}

# ---- Berth -------------------------------------------------------------------------------------
BERTH_PORT=$(free_port); DNS_PORT=$(free_port); ADMIN_PORT=$(free_port)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secret"
cat >"$WORK/berth.toml" <<EOF
[dns]
listen = ["127.0.0.1:$DNS_PORT"]
[[zone]]
origin = "example.test"
file = "$REPO/zones/example.test.zone"
[[region]]
name = "westus"
latitude = 47.6
longitude = -122.3
a = ["192.0.2.10"]
upstream = "http://$REG"
[[routed_name]]
name = "registry.example.test"
regions = ["westus"]
[proxy]
listen = "127.0.0.1:$BERTH_PORT"
secret_file = "secret"
threads = $PROXY_THREADS
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
EOF
BERTH_LOG=warn "$BERTH_BIN" serve --config "$WORK/berth.toml" >"$WORK/berth.log" 2>&1 &
PIDS+=($!)
BERTH=127.0.0.1:$BERTH_PORT
wait_http "http://$BERTH/v2/"

# ---- nginx -------------------------------------------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx-tmp"
cat >"$WORK/nginx.conf" <<EOF
worker_processes $PROXY_THREADS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-tmp/body;
  proxy_temp_path $WORK/nginx-tmp/proxy;
  upstream registry { server $REG; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    client_max_body_size 0;
    location / {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 900;
    }
  }
}
EOF
nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.out" 2>&1 &
PIDS+=($!)
NGINX=127.0.0.1:$NGINX_PORT
wait_http "http://$NGINX/v2/"

log "replica $REG, berth $BERTH, nginx $NGINX; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "berth: $BERTH_BIN ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo "nginx: $(nginx -v 2>&1 | sed 's/.*: //'); wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
  echo "skopeo: $(skopeo --version | cut -d' ' -f3); registry: $(docker-registry --version 2>/dev/null | cut -d' ' -f3)"
  echo "cpus: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RESULTS_DIR/env.txt"

# ---- 1. skopeo push and pull ---------------------------------------------------------------------
secs() { python3 -c 'import sys,time; print(f"{time.time():.6f}")'; }
timed() { # LABEL cmd...   prints seconds; fails the script if the copy fails
  local label=$1; shift
  local t0 t1; t0=$(secs)
  "$@" >"$WORK/$label.out" 2>&1 || { cat "$WORK/$label.out" >&2; die "$label failed"; }
  t1=$(secs)
  python3 -c "print(f'{$t1-$t0:.3f}')"
}
: >"$RESULTS_DIR/copies.tsv"
for i in $(seq 1 "$RUNS"); do
  order="direct berth"; [ $((i % 2)) = 0 ] && order="berth direct"
  for path in $order; do
    target=$REG; [ "$path" = berth ] && target=$BERTH
    p=$(timed "push-$path-$i" sk copy --dest-tls-verify=false "oci:$LAYOUT:app-1.0" "docker://$target/bench/$path-$i:1.0")
    rm -rf "$WORK/pull"
    q=$(timed "pull-$path-$i" sk copy --src-tls-verify=false "docker://$target/bench/$path-$i:1.0" "oci:$WORK/pull:x")
    printf '%s\t%s\t%s\t%s\n' "$i" "$path" "$p" "$q" >>"$RESULTS_DIR/copies.tsv"
  done
done
for what in push pull; do
  col=3; [ "$what" = pull ] && col=4
  d=$(awk -F'\t' -v c=$col '$2=="direct"{print $c}' "$RESULTS_DIR/copies.tsv" | median)
  b=$(awk -F'\t' -v c=$col '$2=="berth"{print $c}' "$RESULTS_DIR/copies.tsv" | median)
  printf '%s\tdirect %s s\tberth %s s\tberth/direct %s\n' "$what" "$d" "$b" \
    "$(python3 -c "print(f'{$b/$d:.3f}')")" | tee -a "$RESULTS_DIR/summary.txt"
done

# ---- 2. wrk blob download ------------------------------------------------------------------------
BLOB=$(jq -r '.layers[0].digest' "$LAYOUT/blobs/sha256/$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]=="app-1.0") | .digest' "$LAYOUT/index.json" | cut -d: -f2)")
PATH_BLOB=/v2/bench/direct-1/blobs/$BLOB
for t in $REG $BERTH $NGINX; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$t$PATH_BLOB")" = 200 ] || die "blob not served by $t"
done
to_mib() { # wrk's "Transfer/sec: 1.23GB" -> MiB/s
  awk '{v=$2; u=substr(v,length(v)-1); n=substr(v,1,length(v)-2); if(u=="GB")n*=1024; else if(u=="KB")n/=1024; else if(u!="MB")n=0; printf "%.1f", n}'
}
: >"$RESULTS_DIR/wrk.tsv"
for r in $(seq 1 "$ROUNDS"); do
  case $((r % 3)) in
    1) order="nginx berth direct" ;; 2) order="berth direct nginx" ;; 0) order="direct nginx berth" ;;
  esac
  for who in $order; do
    case $who in direct) t=$REG ;; berth) t=$BERTH ;; nginx) t=$NGINX ;; esac
    out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WRK_SECONDS}s" --latency "http://$t$PATH_BLOB")
    echo "$out" >"$RESULTS_DIR/wrk-$who-$r.txt"
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    mib=$(echo "$out" | grep 'Transfer/sec' | to_mib)
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    errs=$(echo "$out" | grep -c 'Non-2xx\|Socket errors' || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$who" "$rps" "$mib" "$p50" "$p99" "$errs" >>"$RESULTS_DIR/wrk.tsv"
    log "wrk round $r $who: $rps req/s, $mib MiB/s, p50 $p50, p99 $p99"
  done
done
for who in direct nginx berth; do
  rps=$(awk -F'\t' -v w=$who '$2==w{print $3}' "$RESULTS_DIR/wrk.tsv" | median)
  mib=$(awk -F'\t' -v w=$who '$2==w{print $4}' "$RESULTS_DIR/wrk.tsv" | median)
  printf 'wrk\t%s\t%s req/s\t%s MiB/s\n' "$who" "$rps" "$mib" | tee -a "$RESULTS_DIR/summary.txt"
done
b=$(awk -F'\t' '$2=="berth"{print $3}' "$RESULTS_DIR/wrk.tsv" | median)
n=$(awk -F'\t' '$2=="nginx"{print $3}' "$RESULTS_DIR/wrk.tsv" | median)
printf 'wrk\tberth/nginx %s\n' "$(python3 -c "print(f'{$b/$n:.3f}')")" | tee -a "$RESULTS_DIR/summary.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS_DIR/env.txt"
log "results in $RESULTS_DIR"
