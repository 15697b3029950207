#!/usr/bin/env bash
# Rebuild the built-in models shipped in src/safenet/models/ (about 35 min of CPU on 2 cores):
#   default          ResNet-20 trained on Fashion-MNIST with `safenet train`
#   default-approx   the fastest SAFENet search result within 0.5 point of `default` in
#                    expected secure accuracy (float accuracy less the truncation failure
#                    rate; docs/results.md#planner-search): `safenet approximate` under a
#                    0.129 s predicted-online budget (0.5x all-ReLU under the protocol-5
#                    calibration, docs/results/calibration-2026-12-06-protocol5.json), then
#                    its final fine-tune
# and then measures both on the full test set with `safenet eval` (numbers go to docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
mkdir -p runs/default
$BIN/safenet data fetch fashion-mnist
$BIN/safenet train --arch resnet20 --dataset fashion-mnist --epochs 15 \
    --out runs/default/resnet20-fmnist.pt --resume
$BIN/python scripts/ship_checkpoint.py runs/default/resnet20-fmnist.pt src/safenet/models/default.pt
OMP_NUM_THREADS=1 $BIN/safenet approximate --model default --method safenet --latency-budget 0.129 \
    --runner sequential --calibration docs/results/calibration-2026-12-06-protocol5.json \
    --out runs/default/search
$BIN/python scripts/ship_checkpoint.py runs/default/search/best.pt src/safenet/models/default-approx.pt
for m in default default-approx; do
    $BIN/safenet eval --model $m --dataset fashion-mnist --split test --json | tee runs/default/eval-$m.json
done
