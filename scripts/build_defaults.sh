#!/usr/bin/env bash
# Rebuild the built-in models shipped in src/safenet/models/ (about 35 min of CPU on 2 cores):
#   default          ResNet-20 trained on Fashion-MNIST with `safenet train`
#   default-approx   default with half of every layer's channels on degree-2 polynomials,
#                    fine-tuned with `safenet finetune` (hand-chosen ratios until the search lands)
# and then measures both on the full test set with `safenet eval` (numbers go to docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
mkdir -p runs/default
$BIN/safenet data fetch fashion-mnist
$BIN/safenet train --arch resnet20 --dataset fashion-mnist --epochs 15 \
    --out runs/default/resnet20-fmnist.pt --resume
$BIN/python scripts/ship_checkpoint.py runs/default/resnet20-fmnist.pt src/safenet/models/default.pt
$BIN/safenet finetune --model default --ratio 0.5 --degree 2 --criterion taylor --epochs 4 \
    --blend-epochs 1.5 --out runs/default/resnet20-fmnist-approx.pt
$BIN/python scripts/ship_checkpoint.py runs/default/resnet20-fmnist-approx.pt \
    src/safenet/models/default-approx.pt
for m in default default-approx; do
    $BIN/safenet eval --model $m --dataset fashion-mnist --split test --json | tee runs/default/eval-$m.json
done
