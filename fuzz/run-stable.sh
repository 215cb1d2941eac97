#!/usr/bin/env bash
# Runs a fuzz target for N seconds (default 30) on a STABLE toolchain: libFuzzer with
# SanitizerCoverage instrumentation, no AddressSanitizer (that, and `cargo fuzz`, need
# nightly). Overflow checks and debug assertions are on, so arithmetic bugs still crash.
# Usage: fuzz/run-stable.sh [seconds] [target]. Needs a C++ compiler (libfuzzer-sys builds
# libFuzzer). Artifacts of crashes land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
target=${2:-pipe_decoder}
triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# `--target` keeps the instrumentation off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
    cargo build --release --target "$triple" --bin "$target"
mkdir -p "corpus/$target" artifacts
"$CARGO_TARGET_DIR/$triple/release/$target" "corpus/$target" -artifact_prefix=artifacts/ \
    -max_total_time="$secs" -max_len=4096 -print_final_stats=1
