#!/usr/bin/env bash
# Rebuild the embedded base checkpoint (src/vlmr1/assets/base) with vlmr1's own SFT recipe.
# Two stages (single shapes, then 1-4 shapes); see docs/base-checkpoint.md for time and curve.
set -euo pipefail
out=${1:-runs/base}
vlmr1 sft configs/base/stage1.yaml train.output_dir="$out/stage1"
vlmr1 sft configs/base/stage2.yaml model.path="$out/stage1/final" train.output_dir="$out/stage2"
rm -rf src/vlmr1/assets/base
mkdir -p src/vlmr1/assets
cp -r "$out/stage2/final" src/vlmr1/assets/base
