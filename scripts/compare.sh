#!/usr/bin/env bash
# Pretrained vs scratch, side by side: train each arm (and seed, and swept value), then write the report.
#
#   scripts/compare.sh                                          # both arms on Imagewoof, 3 seeds -> runs/compare/
#   OUT=runs/cmp scripts/compare.sh train.epochs=5 data.root=/my/folder model.name=resnet18
#   SEEDS="0 1 2 3 4" scripts/compare.sh                        # each arm once per seed (5: for a claim)
#   ARMS="pretrained scratch probe" scripts/compare.sh          # + linear probe (backbone frozen throughout)
#   scripts/compare.sh train.time_budget_s=300                  # equal time instead of equal epochs
#   SWEEP='data.train_per_class=5,20,100,null' SEEDS="0 1 2" JOBS=2 scripts/compare.sh   # a curve, 2 runs at a time
#   TUNE='optim.lr=1e-4,3e-4,1e-3,3e-3' scripts/compare.sh data.select_fraction=0.1  # each arm tuned the same way
#   SUITE=suites/natural.yaml SEEDS="0 1 2" scripts/compare.sh       # every dataset of a suite, one table
#
# Every key=value goes to every run. Finished runs are reused, not retrained (OVERWRITE=1 retrains
# them); interrupted ones resume. The report is rebuilt from the saved runs alone:
#   python -m transfer.report "$OUT"
# Environment: OUT (runs/compare), ARMS ("pretrained scratch"), SEEDS ("0 1 2": the fewest with an interval;
# set but empty: each arm once, its config's seed, no interval), SWEEP (key=v1,v2,...[;key2=...]: a grid), SUITE
# (a suite file: datasets by name, each with its settings; OUT/<dataset>/ each), TUNE (key=v1,v2,...[;key2=...]:
# a grid every arm runs on TUNE_SEEDS ("1000": never one of SEEDS), chosen per arm on the selection split,
# data.select_fraction; the reported runs use the choice), JOBS (1: runs at a time), GPUS ("0 1 ...": one run per GPU), RUNS_PER_GPU (1: runs at a time on each GPU of GPUS, through MPS), PRINT_JOBS
# (1: print the runs as shell commands instead), OVERWRITE (0), PYTHON (the python that has this
# project installed: python3 on PATH), LAUNCH ("$PYTHON -m accelerate.commands.launch --quiet", i.e.
# `accelerate launch`: your accelerate config picks GPUs and processes), TARGET_HALF_WIDTH (2: the report says how
# many seeds would bring the gain's interval to +- this many points), EXECUTOR (local, or slurm with CLUSTER: see
# docs/experiments.md), ACTION (run; with EXECUTOR=slurm also status or cancel: the jobs of OUT's runs).
# See transfer/experiments/ (spec.py, plan.py, runner.py).
set -euo pipefail
if [ -n "${SUITE:-}" ] && [ -f "$SUITE" ]; then  # a suite file of yours, named from where you are
  SUITE="$(cd "$(dirname "$SUITE")" && pwd)/$(basename "$SUITE")"
  export SUITE
fi
cd "$(dirname "$0")/.."                          # (else suites/<name>.yaml, from the repository)

source scripts/find_python.sh
if [ -n "${LAUNCH:-}" ]; then
  read -r -a launcher <<< "$LAUNCH"
  if ! command -v "${launcher[0]}" >/dev/null; then
    echo "error: launcher '${launcher[0]}' (LAUNCH=$LAUNCH) not found; install it or leave LAUNCH unset for \"$PYTHON -m accelerate.commands.launch\"" >&2
    exit 2
  fi
fi
PYTHON="$PYTHON" exec "$PYTHON" -m transfer.cli compare "$@"
