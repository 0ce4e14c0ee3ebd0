#!/usr/bin/env bash
# One GPU, no network, under 8 minutes: an Imagewoof-sized data set, the benchmark on the GPU,
# a timed 10-epoch ResNet50 run from the decoded cache and one from the JPEG files, the
# host-device synchronisations of training steps and evaluation, and the numbers printed.
#   scripts/gpu_wheels.sh                  # first, on a machine with network: fetches .whl/
#   scripts/gpu_check.sh                   # then on the GPU machine, from this checkout; results in runs/gpu_check/
# Targets: >= 5,000 training images/s (ResNet50, 160 px, bf16) and 10 epochs of 9,025 train +
# 3,929 val images with evaluation in < 60 s wall, on one H200. The cached run measures the
# first, the JPEG run (data.cache=none) what decoding files costs; both are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-$(( $(nproc) < 16 ? $(nproc) : 16 ))}
WHEELS=${WHEELS:-.whl}  # what scripts/gpu_wheels.sh fetched
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=${HF_HOME:-$OUT/hf} PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, not installed there
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}

step() {  # step NAME command...: its stderr to $OUT/NAME.err; on failure, say which and show the end of it
  local name=$1; shift
  if ! "$@" 2> "$OUT/$name.err"; then
    echo "error: step '$name' failed; the end of $OUT/$name.err:" >&2
    tail -n 25 "$OUT/$name.err" >&2
    exit 1
  fi
}

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  step wheels "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$OUT/site" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$PWD/$OUT/site"
fi
# everything a run imports, matplotlib included (a run without it would train and then fail drawing)
step preflight "$PYTHON" -c "
import torch, torchvision, timm, datasets, evaluate, accelerate, matplotlib, safetensors, yaml, transfer.run
assert torch.cuda.is_available(), 'torch sees no GPU'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PYTHON" -c "import torch, accelerate; print(f'torch {torch.__version__}, accelerate {accelerate.__version__}')"

start=$(date +%s)
[ -d "$OUT/woof/val" ] || step make_data "$PYTHON" scripts/benchmark.py --make-data "$OUT/woof" --train-images 9025 --val-images 3929
echo "data ready after $(( $(date +%s) - start )) s"

step benchmark "$PYTHON" scripts/benchmark.py --data "$OUT/woof" --model resnet50 --batch "$BATCH" --workers "$WORKERS" \
    --steps 30 --json "$OUT/benchmark.json" | tee "$OUT/benchmark.md"

for cache in auto none; do
  rm -rf "$OUT/run_$cache"
  t0=$(date +%s.%N)
  step "run_$cache" "$PYTHON" run_transfer.py --config configs/scratch.yaml data.root="$OUT/woof" data.url=null \
      data.num_workers="$WORKERS" train.batch_size="$BATCH" data.cache="$cache" output_dir="$OUT/run_$cache"
  wall=$("$PYTHON" -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
  "$PYTHON" - "$OUT/run_$cache/metrics.json" "$wall" "$cache" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
rates = [h["train_images_per_s"] for h in m["history"]]
print(f"10-epoch run, data.cache={sys.argv[3]} (decoded cache used: {m['decoded_cache']}): {sys.argv[2]} s wall "
      f"including start-up; {m['train_seconds']:.1f} s in epochs (train + eval); start-up {m['startup_seconds']:.1f} s; "
      f"training images/s per epoch: first {rates[0]:.0f}, median {sorted(rates)[len(rates) // 2]:.0f}, "
      f"best {max(rates):.0f}; precision {m['mixed_precision']}; final val_acc {m['final_val_acc']:.3f}")
print("  outside the loop (phase_seconds): " + ", ".join(f"{k} {v:.2f} s" for k, v in m["phase_seconds"].items()))
print(f"  speed settings: {m['speed_settings']}")
PY
done

# host-device synchronisations: training steps and an evaluation pass on the cached path
step syncs "$PYTHON" - "$OUT/woof" <<'PY'
import sys, warnings
import torch
from accelerate import Accelerator
from transfer.config import load_config
from transfer.training.loop import evaluate
from transfer.training.phases import Phases
from transfer.training.setup import build

cfg = load_config("configs/scratch.yaml", [f"data.root={sys.argv[1]}", "data.url=null", "data.cache=memory"])
setup = build(cfg, Accelerator(mixed_precision="bf16"), Phases())
trainer = setup.trainer
trainer.set_phase(False)


def synchronising(run) -> int:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def train_steps():
    for _, batch in zip(range(20), setup.train_dl):
        trainer.step(batch)


steps = synchronising(train_steps)
passes = synchronising(lambda: evaluate(trainer.model, setup.val_dl, trainer.accelerator, trainer.objective.normalize))
print(f"host-device synchronisations: {steps} in 20 cached training steps (expected 0), {passes} in one evaluation "
      f"pass of {len(setup.val_dl)} batches (expected a few at its end, where the results come to the host)")
PY
echo "total $(( $(date +%s) - start )) s"
