#!/usr/bin/env bash
# Pretrained vs scratch, side by side: train each arm (and seed), then write the report.
#
#   scripts/compare.sh                                          # both arms on Imagewoof -> runs/compare/
#   OUT=runs/cmp scripts/compare.sh train.epochs=5 data.root=/my/folder model.name=resnet18
#   SEEDS="0 1 2" scripts/compare.sh                            # each arm once per seed
#   ARMS="pretrained scratch probe" scripts/compare.sh          # + linear probe (backbone frozen throughout)
#   scripts/compare.sh train.time_budget_s=300                  # equal time instead of equal epochs
#
# Every key=value goes to every arm. Finished arms are reused, not retrained (OVERWRITE=1 retrains
# them); interrupted ones resume. The report is rebuilt from the saved runs alone:
#   python -m transfer.compare "$OUT"
# Environment: OUT (runs/compare), ARMS ("pretrained scratch"), SEEDS (empty: the config's seed),
# OVERWRITE (0), PYTHON (the python that has this project installed: python3 on PATH),
# LAUNCH ("$PYTHON -m accelerate.commands.launch", i.e. `accelerate launch`: your accelerate
# config picks GPUs and processes).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/compare}
ARMS=${ARMS:-pretrained scratch}
SEEDS=${SEEDS:-}
OVERWRITE=${OVERWRITE:-0}
PYTHON=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
if ! "$PYTHON" -c 'import transfer, accelerate' 2>/dev/null; then
  echo "error: PYTHON=$PYTHON cannot import this project (transfer, accelerate); activate its environment or set PYTHON=/path/to/venv/bin/python" >&2
  exit 2
fi
read -r -a LAUNCH <<< "${LAUNCH:-$PYTHON -m accelerate.commands.launch}"
if ! command -v "${LAUNCH[0]}" >/dev/null; then
  echo "error: launcher '${LAUNCH[0]}' (LAUNCH=${LAUNCH[*]}) not found; install it or set LAUNCH, e.g. LAUNCH=\"$PYTHON -m accelerate.commands.launch\"" >&2
  exit 2
fi

config_of() {  # arm -> config file (the probe is the pretrained arm with the backbone always frozen)
  case "$1" in
    pretrained|probe) echo configs/pretrained.yaml ;;
    scratch) echo configs/scratch.yaml ;;
    *) echo "error: unknown arm '$1' in ARMS; choose from: pretrained scratch probe" >&2; return 2 ;;
  esac
}

for arm in $ARMS; do
  config=$(config_of "$arm")
  extra=()
  if [ "$arm" = probe ]; then  # freeze for all epochs, however many the overrides ask for
    epochs=$("$PYTHON" run_transfer.py --config "$config" "$@" --print-config |
             "$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["train"]["epochs"])')
    extra=("train.freeze_epochs=$epochs")
  fi
  for seed in ${SEEDS:-default}; do
    dir="$OUT/$arm"
    seed_args=()
    if [ "$seed" != default ]; then dir="$OUT/$arm/seed$seed"; seed_args=("train.seed=$seed"); fi
    if [ -f "$dir/metrics.json" ]; then
      if [ "$OVERWRITE" = 1 ]; then
        echo "== $dir: finished before; OVERWRITE=1, training it again"
        rm -rf "$dir"
      else
        echo "== $dir: finished before; reusing it (OVERWRITE=1 to retrain)"
        continue
      fi
    fi
    echo "== $arm${seed_args:+ (seed $seed)} -> $dir"
    mkdir -p "$dir"
    if ! "${LAUNCH[@]}" run_transfer.py --config "$config" "$@" "${extra[@]}" "${seed_args[@]}" \
           "output_dir=$dir" train.resume=auto 2>&1 | tee "$dir/train.log"; then
      reason=$(grep -E '^(error|stopped): ' "$dir/train.log" | tail -n 1 || true)
      echo "error: arm '$arm'${seed_args:+ (seed $seed)} failed${reason:+ (${reason})}; its log is $dir/train.log" >&2
      exit 1
    fi
  done
done

"$PYTHON" -m transfer.compare "$OUT"
echo "report: $OUT/report.md, $OUT/comparison.png, $OUT/summary.json"
