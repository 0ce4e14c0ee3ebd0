#!/usr/bin/env bash
# The experiment, offline, in about two minutes on a laptop CPU: pretrain a small model on a
# generated source task (the stand-in for ImageNet), then pretrained vs scratch on a target task
# with few labelled images per class, three seeds (the fewest whose gain has an interval), and the
# report. See transfer/experiments/demo.py.
#
#   scripts/demo.sh                  # -> runs/demo/compare/report.md, comparison.png
#   SWEEP=1 scripts/demo.sh          # + the curve: gain vs labelled images per class (sweep.png)
#   OUT=/tmp/demo SEEDS="0 1 2 3 4" scripts/demo.sh   # five seeds: a narrower interval
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/find_python.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PYTHON" -m transfer.cli demo
