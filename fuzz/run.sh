#!/usr/bin/env bash
# Runs the fuzz targets with libFuzzer through cargo fuzz (stable toolchain, no sanitizer: the
# readers are safe Rust; a panic, a failed assertion, a slow unit or running out of memory is a
# crash).
#
#   fuzz/run.sh                 # every target for 10 s (the CI smoke)
#   fuzz/run.sh 600             # every target for 10 minutes
#   fuzz/run.sh 600 npy image   # some targets
#
# New inputs go to fuzz/work/<target> (git-ignored); the committed seeds in fuzz/corpus/<target>
# are read, not written. A crash leaves its input in fuzz/artifacts/<target>/ and fails the run;
# reduce it (cargo fuzz tmin), fix the bug, and commit it to fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-10}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors npy image ir_text)
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --version '^0.13'
fi
export RUSTC_BOOTSTRAP=1  # cargo fuzz passes -Z flags; this lets the stable toolchain take them
for t in "${targets[@]}"; do
    cargo fuzz build -s none -O "$t"
done
mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "work/$t"
    rm -rf "artifacts/$t"
    log="logs/$t.log"
    status=0
    cargo fuzz run -s none -O "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=262144 -timeout=30 -report_slow_units=30 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    echo "$t: ${seconds} s, ${runs:-0} executions, ${cov:-no coverage line}, exit $status"
    if [ "$status" -ne 0 ] || [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ] || [ "${runs:-0}" -eq 0 ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" >&2 || tail -20 "$log" >&2
        echo "fuzz target $t failed: see fuzz/$log and fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
