#!/usr/bin/env bash
# Rebuild the embedded base checkpoint (src/vlmr1/assets/base) with vlmr1's own SFT recipe.
# Three stages (single shapes; 1-4 shapes; two shapes of different kinds, where the query's shape
# word decides); see docs/base-checkpoint.md for time and curve.
set -euo pipefail
out=${1:-runs/base}
vlmr1 sft configs/base/stage1.yaml train.output_dir="$out/stage1"
vlmr1 sft configs/base/stage2.yaml model.path="$out/stage1/final" train.output_dir="$out/stage2"
data="$out/stage3-data"
vlmr1 data rec --out "$data" --n 40000 --split in --seed 0 --min-objects 2 --max-objects 2 --distinct-kinds --name train
vlmr1 data rec --out "$data" --n 300 --split in --seed 77 --min-objects 2 --max-objects 2 --distinct-kinds --name two_dk
vlmr1 sft configs/base/stage3.yaml model.path="$out/stage2/final" train.output_dir="$out/stage3" \
  data.train_files="$data/train.jsonl" data.eval_files="$data/two_dk.jsonl"
rm -rf src/vlmr1/assets/base
mkdir -p src/vlmr1/assets
# The shipped base is stage 3's step-1,500 checkpoint, its weights and processor files only.
cp -r "$out/stage3/checkpoint-1500" src/vlmr1/assets/base
rm -f src/vlmr1/assets/base/optimizer.pt src/vlmr1/assets/base/trainer_state.json
