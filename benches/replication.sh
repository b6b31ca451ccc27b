#!/usr/bin/env bash
# Replication benchmark, in one run on this machine, with real docker-registry replicas:
#   1. throughput: a set of images (4 images, 9 layers, ~45 MiB of distinct blobs) in one
#      source replica, copied to three destination replicas by Berth (POST
#      /api/v1/replication/sync: list, compare, copy) vs by skopeo (`skopeo copy` of each image,
#      the three destinations in parallel, as Berth copies them), each on fresh destinations,
#      alternating, ROUNDS times; the ratio of medians is the figure.
#   2. lag: LAG_N images of one distinct 10 MiB layer each, pushed through Berth's proxy one
#      after the other; Berth's own push-to-present lag per destination (p50, p99).
#   3. memory: Berth's RSS sampled every 50 ms while one BIG_MIB MiB blob of random bytes
#      replicates to one destination (streamed: RSS must stay flat); the script checks that
#      the destination did not hold it before and that Berth streamed all of its bytes.
#   4. reconcile: one image under RECONCILE_TAGS (1000) tags in all four replicas; how long a
#      sync pass takes that finds nothing to copy (Berth's "reconcile: pass done" log line).
#
# usage: benches/replication.sh        env: ROUNDS=3 LAG_N=20 BIG_MIB=1024 RECONCILE_TAGS=1000 PHASES="1 2 3 4"
#   BERTH_BIN=path   use this berth binary instead of `cargo build --release`
# Needs: docker-registry skopeo umoci jq curl python3. 127.0.0.1 only; temp files removed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBED=$REPO/../shared/testbed
ROUNDS=${ROUNDS:-3}
LAG_N=${LAG_N:-20}
BIG_MIB=${BIG_MIB:-1024}
PHASES=${PHASES:-"1 2 3 4"}
has_phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
TOKEN=bench-token-0123456789
die() { echo "replication-bench: error: $*" >&2; exit 1; }
log() { echo "replication-bench: $*" >&2; }
for t in docker-registry skopeo umoci jq curl python3; do
  command -v "$t" >/dev/null || die "$t not found (scripts/setup --test)"
done

if [ -z "${BERTH_BIN:-}" ]; then
  (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
  BERTH_BIN=$REPO/target/release/berth
fi

WORK=$(mktemp -d /tmp/berth-repl-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_registry NAME: sets REG_PORT; storage under $WORK/NAME (not in a subshell, so the
# process is ours to stop)
start_registry() {
  local name=$1 port; port=$(free_port)
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/$name/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
  docker-registry serve "$WORK/$name/config.yml" > "$WORK/$name/log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.05; done
  REG_PORT=$port
}

sk() { skopeo --insecure-policy "$@"; }

# Images: the test bed's app-1.0 and tool-1.0, and the same build with three times the sizes.
if has_phase 1; then
log "building images"
IMG_LAYOUT=$WORK/l1 OCI_TESTBED_DIR=$WORK/tb1 bash "$TESTBED/make-images.sh" >/dev/null
IMG_LAYOUT=$WORK/l2 OCI_TESTBED_DIR=$WORK/tb2 IMG_BASE_KB=12288 IMG_APP_A_KB=9216 IMG_APP_B_KB=9000 IMG_TOOL_KB=3000 \
  bash "$TESTBED/make-images.sh" >/dev/null
SET=("l1:app-1.0:set/app1" "l1:tool-1.0:set/tool1" "l2:app-1.0:set/app2" "l2:tool-1.0:set/tool2")

start_registry src; SRC=$REG_PORT
for s in "${SET[@]}"; do
  IFS=: read -r l tag repo <<<"$s"
  sk copy --dest-tls-verify=false "oci:$WORK/$l:$tag" "docker://127.0.0.1:$SRC/$repo:1" >/dev/null
done
SET_BYTES=$(du -sb "$WORK/src/storage/docker/registry/v2/blobs" | cut -f1)
log "source replica holds $SET_BYTES bytes of blobs"
fi

# berth_config FILE SRC D1 D2 D3 ADMIN PROXY
berth_config() {
  cat > "$1" <<TOML
[admin]
listen = "127.0.0.1:$6"
token_file = "token"
[[region]]
name = "westus"
latitude = 47.6
longitude = -122.3
a = ["192.0.2.10"]
upstream = "http://127.0.0.1:$2"
[[region]]
name = "eastus"
latitude = 37.4
longitude = -79.0
a = ["192.0.2.20"]
upstream = "http://127.0.0.1:$3"
[[region]]
name = "westeurope"
latitude = 52.4
longitude = 4.9
a = ["192.0.2.30"]
upstream = "http://127.0.0.1:$4"
[[region]]
name = "southeastasia"
latitude = 1.3
longitude = 103.8
a = ["192.0.2.40"]
upstream = "http://127.0.0.1:$5"
[dns]
listen = ["127.0.0.1:$(free_port)"]
[[zone]]
origin = "example.test"
file = "$REPO/zones/example.test.zone"
[[routed_name]]
name = "registry.example.test"
policy = "performance"
regions = ["westus", "eastus", "westeurope", "southeastasia"]
[proxy]
listen = "127.0.0.1:$7"
[replication]
reconcile_every = "1h"
[[replication.rule]]
name = "all"
to = ["westus", "eastus", "westeurope", "southeastasia"]
TOML
  echo "$TOKEN" > "$(dirname "$1")/token"
}

start_berth() { # DIR SRC D1 D2 D3 -> sets BERTH_PID ADMIN PROXY
  local dir=$1; mkdir -p "$dir"
  ADMIN=$(free_port); PROXY=$(free_port)
  berth_config "$dir/berth.toml" "$2" "$3" "$4" "$5" "$ADMIN" "$PROXY"
  "$BERTH_BIN" serve --config "$dir/berth.toml" > "$dir/log" 2>&1 &
  BERTH_PID=$!; PIDS+=($BERTH_PID)
  for _ in $(seq 400); do curl -fs "http://127.0.0.1:$ADMIN/readyz" >/dev/null && return; sleep 0.05; done
  die "berth did not start: $(tail -5 "$dir/log")"
}

complete_in() { # PORT: does the replica hold every image of the set (manifest by tag)?
  for s in "${SET[@]}"; do
    IFS=: read -r _ _ repo <<<"$s"
    curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$1/v2/$repo/manifests/1" >/dev/null || return 1
  done
}

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

BERTH_T=(); SKOPEO_T=(); COPIES=()
if has_phase 1; then
for round in $(seq "$ROUNDS"); do
  # Berth: fresh destinations, one sync.
  start_registry "b$round-1"; D1=$REG_PORT; start_registry "b$round-2"; D2=$REG_PORT; start_registry "b$round-3"; D3=$REG_PORT
  start_berth "$WORK/berth-$round" "$SRC" "$D1" "$D2" "$D3"
  t0=$(now)
  curl -fs -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/api/v1/replication/sync" >/dev/null
  until complete_in "$D1" && complete_in "$D2" && complete_in "$D3"; do sleep 0.02; done
  t1=$(now); BERTH_T+=("$(awk "BEGIN {print $t1 - $t0}")")
  kill "$BERTH_PID"; wait "$BERTH_PID" 2>/dev/null || true
  # skopeo: fresh destinations, each image copied, the three destinations in parallel.
  start_registry "s$round-1"; E1=$REG_PORT; start_registry "s$round-2"; E2=$REG_PORT; start_registry "s$round-3"; E3=$REG_PORT
  t0=$(now)
  for d in "$E1" "$E2" "$E3"; do
    ( for s in "${SET[@]}"; do
        IFS=: read -r _ _ repo <<<"$s"
        sk copy --src-tls-verify=false --dest-tls-verify=false "docker://127.0.0.1:$SRC/$repo:1" "docker://127.0.0.1:$d/$repo:1" >/dev/null
      done ) &
    COPIES+=($!)
  done
  for p in "${COPIES[@]}"; do wait "$p"; done; COPIES=()
  t1=$(now); SKOPEO_T+=("$(awk "BEGIN {print $t1 - $t0}")")
  complete_in "$E1" && complete_in "$E2" && complete_in "$E3" || die "skopeo copies incomplete"
  log "round $round: berth ${BERTH_T[-1]} s, skopeo ${SKOPEO_T[-1]} s"
  rm -rf "$WORK"/b$round-*/storage "$WORK"/s$round-*/storage
done
B=$(printf '%s\n' "${BERTH_T[@]}" | median); S=$(printf '%s\n' "${SKOPEO_T[@]}" | median)
MIB=$(awk "BEGIN {print $SET_BYTES * 3 / 1048576}")
printf 'throughput: %.1f MiB to 3 destinations; berth median %.2f s (%.1f MiB/s), skopeo median %.2f s (%.1f MiB/s); berth/skopeo throughput %.2fx\n' \
  "$MIB" "$B" "$(awk "BEGIN {print $MIB / $B}")" "$S" "$(awk "BEGIN {print $MIB / $S}")" "$(awk "BEGIN {print $S / $B}")"
fi

# 2. Lag: LAG_N distinct 10 MiB single-layer images pushed through the proxy.
if has_phase 2; then
python3 - "$WORK/lag" "$LAG_N" <<'PY'
import hashlib, json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(root, "blobs", "sha256"); os.makedirs(blobs, exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
index = []
for i in range(n):
    layer = put(os.urandom(10 << 20))
    cfg = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": dict(cfg, mediaType="application/vnd.oci.image.config.v1+json"),
         "layers": [dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar")]}
    md = put(json.dumps(m).encode())
    index.append(dict(md, mediaType="application/vnd.oci.image.manifest.v1+json",
                      annotations={"org.opencontainers.image.ref.name": f"lag-{i}"}))
open(os.path.join(root, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
open(os.path.join(root, "index.json"), "w").write(json.dumps({"schemaVersion": 2, "manifests": index}))
PY
start_registry lag-0; L0=$REG_PORT; start_registry lag-1; L1=$REG_PORT; start_registry lag-2; L2=$REG_PORT; start_registry lag-3; L3=$REG_PORT
start_berth "$WORK/berth-lag" "$L0" "$L1" "$L2" "$L3"
for i in $(seq 0 $((LAG_N - 1))); do
  sk copy --dest-tls-verify=false "oci:$WORK/lag:lag-$i" "docker://127.0.0.1:$PROXY/lag/img$i:1" >/dev/null
  # One at a time: the lag of a push, not of a queue of them.
  until [ "$(curl -fs "http://127.0.0.1:$ADMIN/api/v1/replication" | jq .queued_jobs)" = 0 ]; do sleep 0.02; done
done
curl -fs "http://127.0.0.1:$ADMIN/api/v1/replication" | jq -r '.regions | to_entries[] | select(.value.lag_p50_seconds != null) |
  "lag \(.key): p50 \(.value.lag_p50_seconds) s, p99 \(.value.lag_p99_seconds) s over \(.value.present) images"'
kill "$BERTH_PID"; wait "$BERTH_PID" 2>/dev/null || true
rm -rf "$WORK"/lag-*/storage "$WORK/lag"
fi

# 3. Memory while one BIG_MIB blob replicates. The blob is random (incompressible) and put
# into the source replica with the registry API as is: skopeo would gzip an uncompressed layer
# on its way to a registry, and an earlier version of this phase, whose blob was a repeated
# pattern pushed with skopeo, timed a few compressed MiB instead of 1 GiB.
if has_phase 3; then
start_registry big-0; M0=$REG_PORT; start_registry big-1; M1=$REG_PORT
BIG=$WORK/big.bin; BIG_BYTES=$((BIG_MIB << 20))
head -c "$BIG_BYTES" /dev/urandom > "$BIG"
LAYER=sha256:$(sha256sum "$BIG" | cut -d' ' -f1)
put_blob() { # PORT REPO FILE DIGEST
  local loc; loc=$(curl -fsi -X POST "http://127.0.0.1:$1/v2/$2/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  case $loc in http*) ;; *) loc=http://127.0.0.1:$1$loc ;; esac
  case $loc in *\?*) loc="$loc&digest=$4" ;; *) loc="$loc?digest=$4" ;; esac
  curl -fs -X PUT -H 'Content-Type: application/octet-stream' -T "$3" "$loc" >/dev/null
}
put_blob "$M0" big/blob "$BIG" "$LAYER"
rm -f "$BIG"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' "$LAYER" > "$WORK/big-config.json"
CFG=sha256:$(sha256sum "$WORK/big-config.json" | cut -d' ' -f1)
put_blob "$M0" big/blob "$WORK/big-config.json" "$CFG"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}' \
  "$CFG" "$(stat -c %s "$WORK/big-config.json")" "$LAYER" "$BIG_BYTES" > "$WORK/big-manifest.json"
curl -fs -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$WORK/big-manifest.json" \
  "http://127.0.0.1:$M0/v2/big/blob/manifests/1" >/dev/null
# The checks that make the figure mean something: the source holds BIG_MIB MiB under that
# digest, the destination does not hold it yet.
SRC_LEN=$(curl -fsI "http://127.0.0.1:$M0/v2/big/blob/blobs/$LAYER" | tr -d '\r' | awk 'tolower($1)=="content-length:" {print $2}')
[ "$SRC_LEN" = "$BIG_BYTES" ] || die "the source holds $SRC_LEN bytes for the big blob, not $BIG_BYTES"
[ "$(curl -s -o /dev/null -w '%{http_code}' -I "http://127.0.0.1:$M1/v2/big/blob/blobs/$LAYER")" = 404 ] || die "the destination already holds the big blob"
# Only one destination: the other two regions point at a port nothing listens on.
DEAD=$(free_port)
start_berth "$WORK/berth-big" "$M0" "$M1" "$DEAD" "$DEAD"
rss() { awk '/VmRSS/ {print $2}' "/proc/$BERTH_PID/status"; }
copied() { curl -fs "http://127.0.0.1:$ADMIN/api/v1/replication" | jq .copied_bytes; }
sleep 1 # idle Berth: the "before" figure is its resting RSS
BEFORE=$(rss); COPIED0=$(copied)
# Sampled every 50 ms by a loop of its own, from before the sync until the manifest is there.
( while [ ! -e "$WORK/big-done" ]; do rss >> "$WORK/big-rss"; sleep 0.05; done ) &
SAMPLER=$!
t0=$(now)
curl -fs -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/api/v1/replication/sync" >/dev/null
until curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$M1/v2/big/blob/manifests/1" >/dev/null; do
  sleep 0.1
done
t1=$(now)
touch "$WORK/big-done"; wait "$SAMPLER" 2>/dev/null || true
COPIED=$(( $(copied) - COPIED0 ))
[ "$COPIED" -ge "$BIG_BYTES" ] || die "berth streamed $COPIED bytes, not the $BIG_BYTES of the big blob"
DST_LEN=$(curl -fsI "http://127.0.0.1:$M1/v2/big/blob/blobs/$LAYER" | tr -d '\r' | awk 'tolower($1)=="content-length:" {print $2}')
[ "$DST_LEN" = "$BIG_BYTES" ] || die "the destination holds $DST_LEN bytes for the big blob"
MAX=$(sort -n "$WORK/big-rss" | tail -1); SAMPLES=$(wc -l < "$WORK/big-rss")
printf 'memory: %d MiB blob (random, %d bytes streamed) replicated in %.1f s; berth RSS before %d KiB, peak during %d KiB (+%d KiB) over %d samples\n' \
  "$BIG_MIB" "$COPIED" "$(awk "BEGIN {print $t1 - $t0}")" "$BEFORE" "$MAX" "$((MAX - BEFORE))" "$SAMPLES"
kill "$BERTH_PID"; wait "$BERTH_PID" 2>/dev/null || true
rm -rf "$WORK"/big-*/storage
fi

# 4. Reconcile: one image under RECONCILE_TAGS tags, already in all four replicas; the length
#    of a sync pass that finds nothing to copy (list, then every tag's digest in every
#    region), from Berth's "reconcile: pass done" log line, ROUNDS passes, the median.
if has_phase 4; then
IMG_LAYOUT=$WORK/l4 OCI_TESTBED_DIR=$WORK/tb4 bash "$TESTBED/make-images.sh" >/dev/null
R4=()
for i in 0 1 2 3; do start_registry "rec-$i"; R4+=("$REG_PORT"); done
for p in "${R4[@]}"; do
  sk copy --dest-tls-verify=false "oci:$WORK/l4:app-1.0" "docker://127.0.0.1:$p/many/app:0" >/dev/null
done
# The same manifest under every tag, in every replica (kept-alive PUTs: seconds, not minutes).
python3 - "${RECONCILE_TAGS:=1000}" "${R4[@]}" <<'PY'
import http.client, sys
n, ports = int(sys.argv[1]), sys.argv[2:]
mt = "application/vnd.oci.image.manifest.v1+json"
for port in ports:
    c = http.client.HTTPConnection("127.0.0.1", int(port))
    c.request("GET", "/v2/many/app/manifests/0", headers={"Accept": mt})
    r = c.getresponse(); body = r.read()
    assert r.status == 200, r.status
    for i in range(1, n):
        c.request("PUT", f"/v2/many/app/manifests/{i}", body=body, headers={"Content-Type": mt})
        r = c.getresponse(); r.read()
        assert r.status == 201, (port, i, r.status)
PY
start_berth "$WORK/berth-rec" "${R4[@]}"
PASSES=()
for round in $(seq "$ROUNDS"); do
  before=$(grep -c "reconcile: pass done" "$WORK/berth-rec/log" || true)
  curl -fs -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/api/v1/replication/sync" >/dev/null
  until [ "$(grep -c "reconcile: pass done" "$WORK/berth-rec/log" || true)" -gt "$before" ]; do sleep 0.1; done
  line=$(grep "reconcile: pass done" "$WORK/berth-rec/log" | tail -1)
  grep -q "jobs=0" <<<"$line" || die "the pass planned copies: $line"
  PASSES+=("$(grep -o 'ms=[0-9]*' <<<"$line" | cut -d= -f2)")
  log "reconcile round $round: $(grep -o 'tags=[0-9]*' <<<"$line"), ${PASSES[-1]} ms"
done
printf 'reconcile: %d tags in 4 regions, nothing to copy; pass median %s ms over %d passes\n' \
  "$RECONCILE_TAGS" "$(printf '%s\n' "${PASSES[@]}" | median)" "$ROUNDS"
kill "$BERTH_PID"; wait "$BERTH_PID" 2>/dev/null || true
fi
