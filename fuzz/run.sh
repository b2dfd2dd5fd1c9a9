#!/usr/bin/env bash
# Builds the fuzz targets on the STABLE toolchain and runs each for a bounded
# time on the committed seeds; exits non-zero on the first crash, timeout or
# OOM. Used by .ci/run; no nightly and no cargo-fuzz install needed.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 60 s, every target; 0 = build only)
#
# The build uses exactly the flags `cargo fuzz build --sanitizer none` uses
# (libFuzzer's coverage instrumentation, --cfg fuzzing, debug assertions and
# overflow checks, one codegen unit), so `cargo fuzz run --sanitizer none`
# (with RUSTC_BOOTSTRAP=1 on stable) reuses the same build in fuzz/target.
# New corpus units go to a scratch directory; the committed seeds in
# corpus/<target>/ are only read. A crash leaves its input in
# artifacts/<target>/ (replay: target/x86_64-unknown-linux-gnu/release/<target> FILE).
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(query_parser answer roundtrip snapshot_decode config_parser)
fi
triple=$(rustc -vV | sed -n 's/^host: //p')

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Ccodegen-units=1"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
echo "== fuzz: building ${targets[*]} ($(rustc --version))"
cargo build --manifest-path Cargo.toml --target "$triple" --release \
    --config 'profile.release.debug="line-tables-only"' "${bins[@]}"

[ "$secs" != 0 ] || { echo "== fuzz: built (0 s: nothing run)"; exit 0; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "artifacts/$t" "$scratch/$t"
    echo "== fuzz: $t for ${secs}s"
    log="$scratch/$t.log"
    if ! "target/$triple/release/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" "$scratch/$t" "corpus/$t" >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz target $t failed; input saved under fuzz/artifacts/$t/"
        exit 1
    fi
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || tail -n 3 "$log"
done
echo "== fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
