#!/usr/bin/env bash
# One GPU, no network, under 8 minutes: make an Imagewoof-sized data set, run the benchmark on
# the GPU, then a timed 10-epoch ResNet50 run, and print the numbers.
#   scripts/gpu_check.sh                   # results in runs/gpu_check/
# Targets (issue "Performance"): >= 5,000 training images/s end to end from JPEG files (ResNet50,
# 160 px, bf16), and 10 epochs of 9,025 train + 3,929 val images with evaluation in < 60 s wall.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-$(( $(nproc) < 16 ? $(nproc) : 16 ))}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=${HF_HOME:-$OUT/hf} PYTHONUNBUFFERED=1
python -c "import torch, timm, datasets, evaluate, accelerate; assert torch.cuda.is_available(), 'no GPU'"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

start=$(date +%s)
[ -d "$OUT/woof/val" ] || python scripts/benchmark.py --make-data "$OUT/woof" --train-images 9025 --val-images 3929
echo "data ready after $(( $(date +%s) - start )) s"

python scripts/benchmark.py --data "$OUT/woof" --model resnet50 --batch "$BATCH" --workers "$WORKERS" \
    --steps 30 --json "$OUT/benchmark.json" 2> "$OUT/benchmark.err" | tee "$OUT/benchmark.md"

rm -rf "$OUT/run"
t0=$(date +%s.%N)
python run_transfer.py --config configs/scratch.yaml data.root="$OUT/woof" data.url=null \
    data.num_workers="$WORKERS" train.batch_size="$BATCH" output_dir="$OUT/run" 2> "$OUT/run.err"
wall=$(python -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
python - "$OUT/run/metrics.json" "$wall" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
rates = [h["train_images_per_s"] for h in m["history"]]
print(f"10-epoch run: {sys.argv[2]} s wall including start-up; {m['train_seconds']:.1f} s in epochs "
      f"(train + eval); start-up {m['startup_seconds']:.1f} s; training images/s per epoch: "
      f"first {rates[0]:.0f}, median {sorted(rates)[len(rates) // 2]:.0f}, best {max(rates):.0f}; "
      f"precision {m['mixed_precision']}, decoded cache {m['decoded_cache']}")
print("outside the loop (phase_seconds): " + ", ".join(f"{k} {v:.2f} s" for k, v in m["phase_seconds"].items()))
print(f"speed settings: {m['speed_settings']}")
PY

# the cached path must not wait for the GPU on any step: count host-device synchronisations
python - "$OUT/woof" <<'PY'
import sys, warnings
import torch
from accelerate import Accelerator
from transfer.config import load_config
from transfer.training.phases import Phases
from transfer.training.setup import build
cfg = load_config("configs/scratch.yaml", [f"data.root={sys.argv[1]}", "data.url=null", "data.cache=memory"])
setup = build(cfg, Accelerator(mixed_precision="bf16"), Phases())
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _, batch in zip(range(20), setup.train_dl):
        pass
torch.cuda.set_sync_debug_mode(0)
print(f"host-device synchronisations in 20 cached training batches: {len(caught)} (expected 0)")
PY
echo "total $(( $(date +%s) - start )) s"
