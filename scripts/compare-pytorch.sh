#!/usr/bin/env bash
# Compares `inceptc interpret` and executables from `inceptc compile` with PyTorch on random-weight checkpoints of the three public layouts
# (timm inception_v4, timm inception_resnet_v2, facenet-pytorch InceptionResnetV1), batch 1 and 2,
# f32 and bf16 checkpoints. Not part of CI: it installs torch, timm and facenet-pytorch into the
# git-ignored virtual environment .venv/ on first use (several GB).
#
#   scripts/compare-pytorch.sh [--work DIR] [--models inception_v4,...] [--backends interpret,exe,exe-bf16]
#                              [--target-cpu native|x86-64-v4|x86-64-v3|sapphirerapids]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, timm, safetensors, facenet_pytorch" 2>/dev/null; then
  echo "setting up $venv (torch, timm, facenet-pytorch) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q torch torchvision timm safetensors numpy requests
  # facenet-pytorch pins an old torch; its model code runs on current torch, so skip its pins.
  "$venv/bin/pip" install -q --no-deps facenet-pytorch
fi
cargo build --release -p inceptc --manifest-path "$root/Cargo.toml" >&2
exec "$venv/bin/python" "$root/scripts/compare_pytorch.py" --inceptc "$root/target/release/inceptc" "$@"
