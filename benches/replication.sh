#!/usr/bin/env bash
# Replication benchmark, in one run on this machine, with real docker-registry replicas:
#   1. throughput: a set of images (4 images, 9 layers, ~45 MiB of distinct blobs) in one
#      source replica, copied to three destination replicas by Berth (POST
#      /api/v1/replication/sync: list, compare, copy) vs by skopeo (`skopeo copy` of each image,
#      the three destinations in parallel, as Berth copies them), each on fresh destinations,
#      alternating, ROUNDS times; the ratio of medians is the figure.
#   2. lag: LAG_N images of one distinct 10 MiB layer each, pushed through Berth's proxy one
#      after the other; Berth's own push-to-present lag per destination (p50, p99).
#   3. memory: Berth's RSS sampled every 100 ms while one BIG_MIB MiB blob replicates to one
#      destination (streamed: RSS must stay flat).
#
# usage: benches/replication.sh                     env: ROUNDS=3 LAG_N=20 BIG_MIB=1024
#   BERTH_BIN=path   use this berth binary instead of `cargo build --release`
# Needs: docker-registry skopeo umoci jq curl python3. 127.0.0.1 only; temp files removed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBED=$REPO/../shared/testbed
ROUNDS=${ROUNDS:-3}
LAG_N=${LAG_N:-20}
BIG_MIB=${BIG_MIB:-1024}
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

# Images: the test bed's app-1.0 and tool-1.0, and the same build with three times the sizes.
log "building images"
IMG_LAYOUT=$WORK/l1 OCI_TESTBED_DIR=$WORK/tb1 bash "$TESTBED/make-images.sh" >/dev/null
IMG_LAYOUT=$WORK/l2 OCI_TESTBED_DIR=$WORK/tb2 IMG_BASE_KB=12288 IMG_APP_A_KB=9216 IMG_APP_B_KB=9000 IMG_TOOL_KB=3000 \
  bash "$TESTBED/make-images.sh" >/dev/null
SET=("l1:app-1.0:set/app1" "l1:tool-1.0:set/tool1" "l2:app-1.0:set/app2" "l2:tool-1.0:set/tool2")

sk() { skopeo --insecure-policy "$@"; }

start_registry src; SRC=$REG_PORT
for s in "${SET[@]}"; do
  IFS=: read -r l tag repo <<<"$s"
  sk copy --dest-tls-verify=false "oci:$WORK/$l:$tag" "docker://127.0.0.1:$SRC/$repo:1" >/dev/null
done
SET_BYTES=$(du -sb "$WORK/src/storage/docker/registry/v2/blobs" | cut -f1)
log "source replica holds $SET_BYTES bytes of blobs"

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

# 2. Lag: LAG_N distinct 10 MiB single-layer images pushed through the proxy.
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

# 3. Memory while one BIG_MIB blob replicates.
python3 - "$WORK/big" "$BIG_MIB" <<'PY'
import hashlib, json, os, sys
root, mib = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(root, "blobs", "sha256"); os.makedirs(blobs, exist_ok=True)
h = hashlib.sha256(); tmp = os.path.join(root, "tmp")
with open(tmp, "wb") as f:
    chunk = os.urandom(1 << 20)
    for i in range(mib):
        c = hashlib.sha256(chunk + i.to_bytes(4, "big")).digest() * 32768
        h.update(c); f.write(c)
d = h.hexdigest(); os.rename(tmp, os.path.join(blobs, d))
def put(data):
    x = hashlib.sha256(data).hexdigest(); open(os.path.join(blobs, x), "wb").write(data)
    return {"digest": "sha256:" + x, "size": len(data)}
layer = {"digest": "sha256:" + d, "size": mib << 20}
cfg = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
m = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": dict(cfg, mediaType="application/vnd.oci.image.config.v1+json"),
    "layers": [dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar")]}).encode())
open(os.path.join(root, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
open(os.path.join(root, "index.json"), "w").write(json.dumps({"schemaVersion": 2, "manifests": [dict(m, mediaType="application/vnd.oci.image.manifest.v1+json", annotations={"org.opencontainers.image.ref.name": "big"})]}))
PY
start_registry big-0; M0=$REG_PORT; start_registry big-1; M1=$REG_PORT
sk copy --dest-tls-verify=false "oci:$WORK/big:big" "docker://127.0.0.1:$M0/big/blob:1" >/dev/null
rm -rf "$WORK/big"
# Only one destination: the other two regions point at a port nothing listens on.
DEAD=$(free_port)
start_berth "$WORK/berth-big" "$M0" "$M1" "$DEAD" "$DEAD"
rss() { awk '/VmRSS/ {print $2}' "/proc/$BERTH_PID/status"; }
BEFORE=$(rss); MAX=$BEFORE; SAMPLES=0
curl -fs -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/api/v1/replication/sync" >/dev/null
t0=$(now)
until curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$M1/v2/big/blob/manifests/1" >/dev/null; do
  r=$(rss); SAMPLES=$((SAMPLES + 1)); [ "$r" -gt "$MAX" ] && MAX=$r
  sleep 0.1
done
t1=$(now)
printf 'memory: %d MiB blob replicated in %.1f s; berth RSS before %d KiB, max during %d KiB (+%d KiB) over %d samples\n' \
  "$BIG_MIB" "$(awk "BEGIN {print $t1 - $t0}")" "$BEFORE" "$MAX" "$((MAX - BEFORE))" "$SAMPLES"
