#!/usr/bin/env bash
# Runs the fuzz targets with libFuzzer through cargo fuzz (stable toolchain, no sanitizer: the
# readers are safe Rust; a panic or a failed assertion is a crash).
#
#   fuzz/run.sh                 # every target for 10 s (the CI smoke)
#   fuzz/run.sh 600             # every target for 10 minutes
#   fuzz/run.sh 600 npy image   # some targets
#
# New inputs go to fuzz/work/<target> (git-ignored); the committed seeds in fuzz/corpus/<target>
# are read, not written. A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
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
    cargo fuzz build -s none -O "$t" 2>&1 | grep -v '^ *Compiling' || true
done
for t in "${targets[@]}"; do
    mkdir -p "work/$t"
    echo "== $t: ${seconds} s"
    cargo fuzz run -s none -O "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=262144 -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss|==|.*(panicked|ERROR|SUMMARY))' || true
    if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
        echo "fuzz target $t crashed: see fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
