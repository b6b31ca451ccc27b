#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ (through cargo-afl, on the stable toolchain): the same
# properties as the bounded run in the test suite (`cargo test --test fuzz`), for longer.
# A benchmark-style target, not part of CI.
#
#   benches/fuzz.sh [SECONDS] [TARGET...]     (from anywhere)
#
# SECONDS per target (default 300). Targets (fuzz/targets/, default all):
#   dns_diff     one DNS packet: no panic, the UDP fast path's answer equals the general path's
#   oci_token    OCI request paths, upload tokens, query strings, Location values, manifests
#   config_zone  mutated config and zone files: no panic, every error names the file
# Seeds are generated from the demo config and zone (fuzz/targets/seeds.rs), dictionaries are
# in fuzz/dict/. Findings go to
# target/fuzz/<target>/default/{crashes,hangs}/; a run resumes the previous one's queue.
# Prints one line per target: executions, executions/s, corpus size, crashes, hangs, and
# how to replay each crash. Exit 1 when something crashed.
#
# Measured on the 2-core development machine (shared with other builds), 240 s each:
# dns_diff 7.7k execs/s, oci_token 13k/s, config_zone 1.3k/s; nothing found.
#
# Needs cargo-afl for AFL++ itself (afl-fuzz and its runtime; `cargo install cargo-afl --locked`
# builds them with cc and make, no clang): installed here when missing. The targets are built
# by plain cargo through fuzz/rustc-afl.sh, which instruments Berth's own code only; the
# dependencies are an ordinary debug build (fuzz/target/debug: copy target/debug there to
# reuse it), so the first build takes minutes rather than the hour an instrumented release
# build of every dependency (`cargo afl build`) takes on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dns_diff oci_token config_zone)

if ! cargo afl --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-afl (builds AFL++)" >&2
  cargo install cargo-afl --locked
fi
release=$(rustc -vV | awk '/^release:/ { print $2 }')
commit=$(rustc -vV | awk '/^commit-hash:/ { print substr($2, 1, 7) }')
AFL_RUNTIME=$(ls "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-"$release-$commit"/afl.rs-*/afl-llvm/afl-compiler-rt.o 2>/dev/null | tail -1)
[ -n "$AFL_RUNTIME" ] || { echo "fuzz: no AFL++ runtime for rustc $release: cargo afl config --build" >&2; exit 2; }
export AFL_RUNTIME
(cd "$here/fuzz" && RUSTC_WRAPPER="$here/fuzz/rustc-afl.sh" cargo build --bins)
bin=$here/fuzz/target/debug
work=$here/target/fuzz
rm -rf "$work/seeds"
"$bin/seeds" "$work/seeds" >/dev/null

# The DNS target's config and state files live here (not in a temporary directory per run).
export BERTH_FUZZ_WORK=$work/state
# A shared machine: no CPU pinning or frequency checks; crashes are read from AFL's own
# directory, not the kernel's core handler; no curses screen.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_AUTORESUME=1 AFL_SKIP_CRASHES=1

status=0
for t in "${targets[@]}"; do
  [ -x "$bin/$t" ] || { echo "fuzz: no target $t" >&2; exit 2; }
  out=$work/$t
  mkdir -p "$out"
  cargo afl fuzz -V "$secs" -x "$here/fuzz/dict/$t.dict" -i "$work/seeds/$t" -o "$out" \
    "$bin/$t" >"$out.log" 2>&1 || {
    echo "fuzz: afl-fuzz failed for $t, see $out.log" >&2
    tail -20 "$out.log" >&2
    exit 2
  }
  stats=$out/default/fuzzer_stats
  val() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  printf '%-12s %10s execs  %7s execs/s  corpus %5s  crashes %s  hangs %s  (%ss)\n' \
    "$t" "$(val execs_done)" "$(val execs_per_sec)" "$(val corpus_count)" \
    "$(val saved_crashes)" "$(val saved_hangs)" "$secs"
  for c in "$out"/default/crashes/id:*; do
    [ -e "$c" ] || continue
    status=1
    echo "  crash: $bin/$t < '$c'   (input: $(xxd -p "$c" | tr -d '\n' | head -c 400))"
  done
done
exit $status
