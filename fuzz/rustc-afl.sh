#!/bin/sh
# RUSTC_WRAPPER used by benches/fuzz.sh: AFL++ edge coverage (SanitizerCoverage trace-pc-guard
# and compare tracing, the flags cargo-afl sets) for Berth's own code only, optimized, with
# debug assertions and overflow checks; every dependency stays as an ordinary debug build
# compiles it, so `target/debug` can be reused and nothing else needs rebuilding. Binaries
# that link Berth get AFL++'s runtime (afl-compiler-rt.o, built by cargo-afl), which the
# fuzz targets need and the seed generator tolerates.
rustc=$1
shift
sancov="-C opt-level=2 -C codegen-units=1 -C debug-assertions -C overflow-checks
  -C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3
  -C llvm-args=-sanitizer-coverage-trace-pc-guard
  -C llvm-args=-sanitizer-coverage-prune-blocks=0
  -C llvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
case " $* " in
  *" --crate-name berth "*)
    exec "$rustc" "$@" $sancov ;;
  *" --crate-name dns_diff "* | *" --crate-name oci_token "* | *" --crate-name config_zone "* \
    | *" --crate-name seeds "*)
    exec "$rustc" "$@" $sancov "-Clink-arg=${AFL_RUNTIME:?set by benches/fuzz.sh}" ;;
  *)
    exec "$rustc" "$@" ;;
esac
