#!/usr/bin/env bash
# The planner searches on Fashion-MNIST (docs/results.md#planner-search): SAFENet (BTPBT,
# degrees 2 and 3) and Delphi's planner at the same latency budgets, for ResNet-20 (`default`)
# and ResNet-32 (trained here first, 8 epochs). Budgets are predicted online seconds under the
# calibration passed to every search (`safenet bench --calibrate` on an idle machine; the one
# used since exact truncation, protocol 5, 2026-12-06, is
# docs/results/calibration-2026-12-06-protocol5.json); each is a fraction of the all-ReLU
# model's prediction under it (`safenet cost --model default --calibration ...`: ResNet-20
# 0.258 s, ResNet-32 0.418 s).
#
#   scripts/planner_runs.sh r20 [BUDGET...]   # default: 0.129 0.103 0.077 (0.5x, 0.4x, 0.3x)
#   scripts/planner_runs.sh r32 [BUDGET...]   # default: 0.209 0.126 (0.5x, 0.3x)
#   METHODS=delphi scripts/planner_runs.sh r32 0.126   # one method only
#
# Each search takes about 17 min (ResNet-20) or 30 min (ResNet-32) on one core
# (OMP_NUM_THREADS=1, so two queues can run side by side). A finished run (report.json
# present) is skipped; an interrupted one resumes from its search.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
METHODS=${METHODS:-safenet delphi}
# the unit costs the budgets were set under; CALIBRATION=~/.cache/safenet/calibration.json
# prices with this machine's own (then rescale the budgets from `safenet cost`)
CALIBRATION=${CALIBRATION:-docs/results/calibration-2026-12-06-protocol5.json}
run() {  # run OUT ARGS...: one search, skipped when finished
    local out=$1
    shift
    if [[ -f $out/report.json ]]; then echo "done: $out"; return; fi
    mkdir -p "$out"
    $BIN/safenet approximate --runner sequential --calibration "$CALIBRATION" --out "$out" "$@" \
        2>&1 | tee "$out.log"
}
arch=${1:?r20 or r32}
shift
case $arch in
r20) teacher=default; budgets=${*:-0.129 0.103 0.077} ;;
r32)
    teacher=runs/r32/teacher.pt
    budgets=${*:-0.209 0.126}
    mkdir -p runs/r32
    $BIN/safenet train --arch resnet32 --dataset fashion-mnist --epochs 8 --out $teacher --resume
    ;;
*) echo "unknown: $arch (r20 or r32)" >&2; exit 2 ;;
esac
for b in $budgets; do
    for m in $METHODS; do
        run runs/$arch/$m-b$b --model $teacher --method $m --latency-budget $b
    done
done
