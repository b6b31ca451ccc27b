#!/usr/bin/env bash
# The soak: Berth under everything an operator's worst day brings at once, for N minutes.
#
#   benches/soak.sh [MINUTES]        (default 10; from anywhere)
#
# - DNS load: dnsperf replaying 400k queries, each with a different ECS subnet (-B raw input),
#   at QPS (default 15000) for the whole run, with a small sticky table (capacity 20000) so
#   eviction runs all the time;
# - a reload every second, alternating a config with all four regions and one without
#   southeastasia and in another order, by SIGHUP and by the admin API in turn;
# - a flag toggle (eastus disabled / enabled) every second;
# - a checker: every second, queries from six cities over UDP and TCP; an answer is wrong if
#   it names a region the serving config lacks or the operator disabled, or is not NOERROR;
# - pushes and pulls with skopeo through Berth's proxy, one after the other;
# - a replica killed and restarted every 45 s (round robin), while all of that goes on;
# - replication of every push to every region of the config in force (reconcile every 20 s),
#   and at the end, with all regions back: every image pushed must be in every replica
#   (asked straight, not through Berth) within 5 minutes.
#
# Prints a report (Markdown) with: wrong answers, panics in Berth's log, dnsperf's lost
# queries, resident memory at start / end / peak, pushes and pulls ok / failed with each
# failure's reason, images missing from a region after the catch-up. Exit 1 when a wrong
# answer, a panic or a missing image was seen.
#
# Needs: dnsperf, skopeo, umoci, docker-registry, curl, python3 (scripts/setup --test) and the
# shared test bed (../shared/testbed beside the checkout).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
MINUTES=${1:-10}
testbed=${TESTBED:-$here/../shared/testbed}
[ -x "$testbed/registries.sh" ] || { echo "soak: no test bed at $testbed (set TESTBED)" >&2; exit 2; }
for t in dnsperf skopeo umoci docker-registry curl python3 unshare; do
  command -v "$t" >/dev/null || { echo "soak: $t missing: run scripts/setup --test" >&2; exit 2; }
done

cd "$here"
cargo build --release --locked -q
work=$(mktemp -d /tmp/berth-soak.XXXXXX)
export OCI_TESTBED_DIR="$work/testbed"
cleanup() {
  REG_SET=soak REG_BASE_PORT=5101 "$testbed/registries.sh" stop 4 >/dev/null 2>&1 || true
}
trap cleanup EXIT

REG_SET=soak REG_BASE_PORT=5101 "$testbed/registries.sh" start 4 >"$work/registries.log" 2>&1
IMG_LAYOUT="$work/images" "$testbed/make-images.sh" >"$work/images.log" 2>&1

python3 "$here/benches/soak.py" --minutes "$MINUTES" --work "$work" \
  --berth "$here/target/release/berth" --root "$here" --testbed "$testbed" \
  --images "$work/images"
