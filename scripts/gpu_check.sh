#!/usr/bin/env bash
# One GPU, no network, about 6 minutes on an H200: an Imagewoof-sized data set (generated), then,
# most important first, each step on its own (a failed step is named, the others still run):
#   resume     ResNet50 with the fused Adam, killed (-9) after an epoch and resumed, and stopped
#              mid-epoch by a SIGTERM to its whole process group and resumed: both against an
#              uninterrupted run and against a second uninterrupted run (the GPU's own noise)
#   cached     10 epochs of 9,025 train + 3,929 val images from the decoded cache, timed
#   syncs      host-device synchronisations per training step and per evaluation pass
#   cpu_run    a CPU run on this GPU host (ACCELERATE_USE_CPU=1): no CUDA context
#   ema        the weight average's cost per step (scripts/benchmark.py --ema)
#   jpeg       the same 10 epochs decoding the JPEG files in loader workers (data.cache=none)
#   benchmark  scripts/benchmark.py: loader, steps and a whole epoch against the article's code
#   graphs     the cached 10 epochs again with train.compile=true train.compile_mode=reduce-overhead
#              (forward, backward and the Adam update as CUDA graphs), against the eager `cached`
#   graph_seeds  SEED_RUNS (3) seeds each of eager and graphed (reduce-overhead) runs of SEED_EPOCHS (3)
#              epochs on a learnable generated set (12 shapes): the graphed runs' final accuracy against
#              the eager ones', with the gain's interval (seeds crossed with images, as the report's)
#   startup    two one-epoch runs of the same data: the first decodes the images (and keeps them), the
#              second reads them back; each one's start-up phases (metrics.json phase_seconds)
#   per_gpu    a comparison of 1, 2, 4 and 6 one-epoch runs at once on one GPU (RUNS_PER_GPU, MPS when
#              it starts): wall time and the aggregate training images/s against one run at a time
# and one table of what it measured ($OUT/summary.md).
#   scripts/gpu_wheels.sh                  # first, on a machine with network: fetches .whl/
#   scripts/gpu_check.sh                   # then on the GPU machine, from this checkout; results in runs/gpu_check/
#   REHEARSAL=1 scripts/gpu_check.sh       # every step on this CPU, tiny: checks the script itself
# Targets (issue W, one H100 or H200): >= 8,000 training images/s from the cache (ResNet50, 160 px,
# bf16, batch 64), the whole 10-epoch command < 30 s, 2 arms x 3 seeds of it < 2 minutes, graphed
# accuracy within seed noise of eager. All the steps take longer than one 10-minute command: run them
# as ONLY="graphs startup per_gpu graph_seeds", then ONLY="resume cached syncs cpu_run ema jpeg benchmark".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: steps run from other folders
WHEELS=${WHEELS:-.whl}  # what scripts/gpu_wheels.sh fetched
REHEARSAL=${REHEARSAL:-0}
if [ "$REHEARSAL" = 1 ]; then
  MODEL=resnet10t BATCH=16 EPOCHS=2 TRAIN=240 VAL=60 SIZE=64 WORKERS=2 DEVICE=cpu RESUME_IMAGES=96
  export CUDA_VISIBLE_DEVICES=""
else
  MODEL=resnet50 BATCH=${BATCH:-64} EPOCHS=10 TRAIN=9025 VAL=3929 SIZE=160 DEVICE=cuda RESUME_IMAGES=1024
  CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc alone honours OMP_NUM_THREADS
  WORKERS=${WORKERS:-$(( CORES < 16 ? CORES : 16 ))}
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=${HF_HOME:-$OUT/hf} PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, not installed there
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
: > "$OUT/steps.tsv"

step() {  # step NAME command...: stdout to $OUT/NAME.out, stderr to $OUT/NAME.err; a failure is named
  local name=$1; shift
  local start; start=$(date +%s)
  "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local code=$?
  printf '%s\t%s\t%s\n' "$name" "$code" "$(( $(date +%s) - start ))" >> "$OUT/steps.tsv"
  if [ "$code" != 0 ]; then
    echo "error: step '$name' failed; the end of $OUT/$name.err:" >&2
    tail -n 25 "$OUT/$name.err" >&2
  else
    echo "step '$name' done in $(( $(date +%s) - start )) s"
  fi
  return "$code"
}

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  step wheels "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$OUT/site" \
      "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$OUT/site"
fi
# everything a run imports, matplotlib included (a run without it would train and then fail drawing)
step preflight "$PYTHON" -c "
import torch, torchvision, timm, datasets, evaluate, accelerate, matplotlib, safetensors, yaml, pyarrow, transfer.run
print(f'torch {torch.__version__}, timm {timm.__version__}, accelerate {accelerate.__version__}, '
      f'datasets {datasets.__version__}, pyarrow {pyarrow.__version__}')
assert torch.cuda.is_available() or '$REHEARSAL' == '1', 'torch sees no GPU'" || exit 1
cat "$OUT/preflight.out"
[ "$REHEARSAL" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

[ -d "$OUT/woof/val" ] || step make_data "$PYTHON" scripts/benchmark.py --make-data "$OUT/woof" \
    --train-images "$TRAIN" --val-images "$VAL" || exit 1
STEPS="$PYTHON scripts/gpu_check_steps.py --data $OUT/woof --out $OUT --model $MODEL --size $SIZE --batch $BATCH"
STEPS="$STEPS --workers $WORKERS --device $DEVICE --resume-images $RESUME_IMAGES"

epochs() {  # epochs CACHE [NAME SETTING...]: the timed run of EPOCHS epochs, from the decoded cache (auto) or
  # the JPEGs (none), into run_NAME (default: run_CACHE)
  local cache=$1 name=${2:-$1}; shift; shift || true
  rm -rf "$OUT/run_$name"
  "$PYTHON" run_transfer.py --config configs/scratch.yaml data.root="$OUT/woof" data.url=null \
      model.name="$MODEL" data.image_size="$SIZE" train.epochs="$EPOCHS" data.num_workers="$WORKERS" \
      train.batch_size="$BATCH" data.cache="$cache" output_dir="$OUT/run_$name" "$@"
}

startup() {  # the same data twice: decoded and kept, then read back (data.keep_decoded)
  rm -rf "$OUT/startup_1" "$OUT/startup_2" "$HF_HOME/datasets/transfer-decoded"
  for n in 1 2; do
    "$PYTHON" run_transfer.py --config configs/scratch.yaml data.root="$OUT/woof" data.url=null model.name="$MODEL" \
        data.image_size="$SIZE" train.epochs=1 data.num_workers="$WORKERS" train.batch_size="$BATCH" data.cache=memory \
        output_dir="$OUT/startup_$n" || return 1
  done
}

graph_seeds() {  # the same runs eager and as CUDA graphs, seed by seed (report: the difference's interval), on
  # a learnable set (the 12 shapes of transfer/data/synthetic.py, 100 + 50 a class; the JPEGs above are noise)
  local seed mode extra
  [ -d "$OUT/shapes/val" ] || "$PYTHON" -c "
from transfer.data.synthetic import SOURCE_SHAPES, TARGET_SHAPES, draw_any, make_image_folder
make_image_folder('$OUT/shapes', 100, 50, $SIZE, SOURCE_SHAPES + TARGET_SHAPES, draw=draw_any)" || return 1
  for seed in $(seq 0 $(( ${SEED_RUNS:-3} - 1 ))); do
    for mode in eager graphed; do
      extra=(); [ "$mode" = graphed ] && extra=(train.compile=true train.compile_mode=reduce-overhead)
      rm -rf "$OUT/seeds_${mode}_$seed"
      "$PYTHON" run_transfer.py --config configs/scratch.yaml data.root="$OUT/shapes" data.url=null model.name="$MODEL" \
          data.image_size="$SIZE" train.epochs="${SEED_EPOCHS:-3}" data.num_workers="$WORKERS" \
          train.batch_size="$BATCH" train.seed="$seed" output_dir="$OUT/seeds_${mode}_$seed" "${extra[@]}" || return 1
    done
  done
}

per_gpu() {  # N one-epoch runs at once on one GPU, N = 1 2 4 6 (rehearsal: N runs at a time on the CPU)
  local n
  for n in ${PER_GPU:-1 2 4 6}; do
    rm -rf "$OUT/per_gpu_$n"
    local start; start=$(date +%s.%N)
    if [ "$REHEARSAL" = 1 ]; then placing=(JOBS="$n"); else placing=(GPUS=0 RUNS_PER_GPU="$n"); fi
    env "${placing[@]}" OUT="$OUT/per_gpu_$n" ARMS=scratch SEEDS="$(seq -s ' ' 0 $(( n - 1 )))" PYTHON="$PYTHON" \
        scripts/compare.sh data.root="$OUT/woof" data.url=null model.name="$MODEL" data.image_size="$SIZE" \
        train.epochs=1 train.batch_size="$BATCH" data.num_workers="$WORKERS" || return 1
    echo "$n $start $(date +%s.%N)" >> "$OUT/per_gpu.txt"  # runs, start, end
  done
}

ONLY=${ONLY:-resume cached graphs syncs cpu_run ema jpeg benchmark startup per_gpu graph_seeds}  # the steps to run (a rerun of some)
want() { [[ " $ONLY " == *" $1 "* ]]; }
want resume && step resume $STEPS resume
want cached && step cached epochs auto
want graphs && step graphs epochs auto graphs train.compile=true train.compile_mode=reduce-overhead
want syncs && step syncs $STEPS syncs
want cpu_run && step cpu_run $STEPS cpu-run
want ema && step ema "$PYTHON" scripts/benchmark.py --ema --model "$MODEL" --device "$DEVICE" --json "$OUT/ema.json"
want jpeg && step jpeg epochs none
want benchmark && step benchmark "$PYTHON" scripts/benchmark.py --data "$OUT/woof" --model "$MODEL" --size "$SIZE" --batch "$BATCH" \
    --workers "$WORKERS" --steps 30 --device "$DEVICE" --json "$OUT/benchmark.json"
want startup && step startup startup
want per_gpu && { : > "$OUT/per_gpu.txt"; step per_gpu per_gpu; }
want graph_seeds && step graph_seeds graph_seeds
$STEPS report | tee "$OUT/summary.md"
