#!/usr/bin/env bash
# Issue 4's searches on Fashion-MNIST (docs/results.md#planner-search): SAFENet (BTPBT) and
# Delphi's planner at the same latency budgets, for ResNet-20 (`default`) and ResNet-32
# (trained here first). Budgets are predicted online seconds under this machine's calibration
# (`safenet bench --calibrate`, run first on an idle machine); each is a fraction of the
# all-ReLU model's prediction, printed by `safenet cost`.
#
#   scripts/planner_runs.sh r20     # ResNet-20 searches (~15 min each on one core)
#   scripts/planner_runs.sh r32     # ResNet-32 teacher (8 epochs) and its searches
#
# The two queues use one core each (OMP_NUM_THREADS=1) and can run side by side. A finished
# run (report.json present) is skipped; an interrupted one resumes from its search.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() {  # run OUT ARGS...: one search, skipped when finished
    local out=$1
    shift
    if [[ -f $out/report.json ]]; then echo "done: $out"; return; fi
    mkdir -p "$out"
    $BIN/safenet approximate --runner sequential --out "$out" "$@" 2>&1 | tee "$out.log"
}
case ${1:?r20 or r32} in
r20)
    # all-ReLU predicted online: 1.374 s (2026-12-02 calibration); budgets 0.5x, 0.4x, 0.3x
    for b in 0.69 0.55 0.41; do
        run runs/r20/safenet-b$b --model default --method safenet --latency-budget $b
        run runs/r20/delphi-b$b --model default --method delphi --latency-budget $b
    done
    ;;
r32)
    mkdir -p runs/r32
    $BIN/safenet train --arch resnet32 --dataset fashion-mnist --epochs 8 \
        --out runs/r32/teacher.pt --resume
    # all-ReLU predicted online: 2.214 s; budgets 0.5x, 0.4x
    for b in 1.10 0.89; do
        run runs/r32/safenet-b$b --model runs/r32/teacher.pt --method safenet --latency-budget $b
        run runs/r32/delphi-b$b --model runs/r32/teacher.pt --method delphi --latency-budget $b
    done
    ;;
esac
