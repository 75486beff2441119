#!/usr/bin/env bash
# Times inceptc executables against ONNX Runtime and OpenVINO on the same seeded Inception-v4 and
# Inception-ResNet-v2 (f32, or with --precision bf16 inceptc's bf16 against OpenVINO's; same thread
# count), interleaved in one run, after checking that every engine agrees with PyTorch. Not part of CI: it installs torch, timm, onnx, onnxruntime and
# openvino into the git-ignored virtual environment .venv/ on first use.
#
#   benches/peers.sh [--models inception_v4,inception_resnet_v2] [--batches 1,8] [--threads 2 | 1,2]
#                    [--rounds 5] [--runs 3] [--target-cpu native|x86-64-v4|x86-64-v3] [--work DIR]
#                    [--precision f32|bf16|int8] [--compile-threads N]
set -euo pipefail
[ -x /usr/bin/time ] || { echo "GNU time is needed for peak RSS (Debian: apt-get install time)" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, timm, safetensors, onnx, onnxruntime, openvino" 2>/dev/null; then
  echo "setting up $venv (torch, timm, onnx, onnxruntime, openvino) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q torch timm safetensors numpy onnx onnxruntime openvino
fi
cargo build --release -p inceptc --manifest-path "$root/Cargo.toml" >&2
exec "$venv/bin/python" "$root/benches/peers.py" --inceptc "$root/target/release/inceptc" "$@"
