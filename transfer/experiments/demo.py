"""The whole experiment, offline, in about two minutes on a laptop CPU (`scripts/demo.sh`).

1. Generate two tasks of flat shapes on noise (synthetic.py): a *source* task of 6 shapes with
   plenty of images, standing in for ImageNet, and a *target* task of 6 other shapes.
2. Train a small timm model (resnet10t, 32 px) on the source task: the demo's "ImageNet weights".
3. `compare.sh` on the target task with few labelled images per class: the source-pretrained arm
   (model.weights_file = the source run's model/ folder, a fresh head: model.head=auto) against
   scratch, over several seeds, through the same code as the real experiment.
4. Print the headline: each arm's accuracy (mean ± std) and the gain of pretraining.

Environment: OUT (runs/demo), SEEDS ("0 1 2": the fewest with a valid interval), PER_CLASS (8 labelled target images per class),
EPOCHS (12, target), SOURCE_IMAGES (50 per class), SOURCE_EPOCHS (5), SWEEP (1: the curve over
data.train_per_class=4,8,16,null; or any key=v1,v2,...), JOBS (1). Finished steps are reused.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..config import load_config
from ..data.synthetic import make_demo_tasks
from ..errors import ConfigError
from ..records import is_finished
from ..run import run
from .arms import arm_config
from .grid import Grid
from .spec import DEFAULT_SEEDS, CompareSpec
from .records import SUMMARY_FILE, Summary, read_summary
from .runner import compare

DEFAULT_SWEEP = "data.train_per_class=4,8,16,null"
MODEL = ["model.name=resnet10t", "data.image_size=32", "train.batch_size=16", "data.num_workers=0", "data.url=null",
         "data.cache=none"]


def headline(summary: Summary, per_class, seeds: int) -> str:
    lines = [f"demo: resnet10t pretrained on the source shapes vs from scratch, on 6 new shapes with {per_class} "
             f"labelled images per class, {seeds} seed(s); final validation accuracy (mean ± std):"]
    for arm, label in (("pretrained", "pretrained on the source task"), ("scratch", "from scratch")):
        if arm in summary.arms:
            a = summary.arms[arm]
            lines.append(f"  {label:<30} {100 * a.final_val_acc:5.1f}% ± {100 * a.final_val_acc_std:.1f}")
    if summary.gain:
        lines.append(f"  {summary.gain.headline}")
    return "\n".join(lines)


def _count(env: dict, name: str, default: str) -> int:
    text = env.get(name, default)
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"{name}={text!r} is invalid; expected a whole number >= 1")
    return int(text)


DEMO_THREADS = "1"  # each run's CPU threads unless OMP_NUM_THREADS is set: the numbers then do not depend on the cores


def main(env: dict = os.environ) -> int:
    """The demo's steps, each reused when it is done; its exit code is compare.sh's.

    Every run (the source model here, the target runs in their processes) uses DEMO_THREADS CPU
    threads unless OMP_NUM_THREADS says otherwise: a convolution summed over 1 or 2 threads rounds
    differently, so a source model trained with each host's core count gave another model and the
    gain moved by 4 points between a 1- and a 2-thread run (docs/performance.md). One thread costs
    nothing here (the runs are small). What still differs between hosts is the CPU's kernels."""
    if not env.get("OMP_NUM_THREADS"):
        import torch

        os.environ["OMP_NUM_THREADS"] = DEMO_THREADS  # the target runs' processes inherit it
        torch.set_num_threads(int(DEMO_THREADS))
    out = Path(env.get("OUT", "runs/demo")).absolute()
    seeds_text = env.get("SEEDS", " ".join(map(str, DEFAULT_SEEDS)))
    base = CompareSpec.from_environ({"SEEDS": seeds_text, "JOBS": env.get("JOBS", "1")}, sys.executable)
    seeds = base.seeds
    per_class = env.get("PER_CLASS", "8")
    epochs, source_images = _count(env, "EPOCHS", "12"), _count(env, "SOURCE_IMAGES", "50")
    source_epochs = _count(env, "SOURCE_EPOCHS", "5")
    sweep_text = env.get("SWEEP", "")
    sweep = Grid.parse(DEFAULT_SWEEP if sweep_text == "1" else sweep_text, "SWEEP", DEFAULT_SWEEP) if sweep_text else None
    data = out / "data"
    if not (data / "target").is_dir():
        print(f"== 1/3 generating the source and target tasks in {data}", flush=True)
        make_demo_tasks(data, source_per_class=source_images)
    source = out / "source"
    if is_finished(source):
        print(f"== 2/3 {source}: the source model is trained; reusing it", flush=True)
    else:
        print("== 2/3 training resnet10t on the source task (the demo's stand-in for ImageNet)", flush=True)
        run(load_config(arm_config("scratch"), MODEL + [f"data.root={data / 'source'}", f"output_dir={source}",
                                                        "optim.lr=3e-3", f"train.epochs={source_epochs}",
                                                        "train.resume=auto"]))
    print(f"== 3/3 pretrained vs scratch on the target task ({len(seeds)} seeds"
          + (f", sweep over {'; '.join(sweep.keys)}" if sweep else "") + ")", flush=True)
    target = MODEL + [f"data.root={data / 'target'}", f"model.weights_file={source / 'model'}",
                      f"data.train_per_class={per_class}", f"train.epochs={epochs}",
                      "optim.lr=2e-3"]  # both arms: a small model, a few dozen steps
    folder = out / ("sweep" if sweep else "compare")
    spec = CompareSpec(folder, ("pretrained", "scratch"), seeds, sweep, jobs=base.jobs, launch=base.launch)
    code = compare(spec, target)
    if (folder / SUMMARY_FILE).is_file():
        summary = read_summary(folder)
        shown = summary.sweep.points[-1].value if sweep else per_class
        print("\n" + headline(summary, "all" if shown is None else shown, len(seeds)))
        print(f"report: {folder / 'report.md'}, {folder / 'comparison.png'}"
              + (f", {folder / 'sweep.png'}" if sweep else ""))
    return code

