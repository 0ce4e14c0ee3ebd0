#!/usr/bin/env python
"""Measure this project against the article's code, side by side in one run, and print ratios.

    python scripts/benchmark.py                                 # ResNet50, 160 px, batch 64 (a GPU job)
    python scripts/benchmark.py --model resnet18 --batch 32 --train-images 640 --device cpu
    python scripts/benchmark.py --data /path/to/imagewoof2-160 --json bench.json

1. input pipeline, images/s: our training loader (datasets + uint8 transforms) vs the article's
   (torchvision ImageFolder + RandomCrop/flip/ToTensor/Normalize + DataLoader), same files,
   batch and workers, after a warm-up;
2. training step, images/s (forward, backward, clip, optimizer and schedule step): our loop
   (`transfer.training.loop.train_one_epoch`) vs a plain PyTorch loop, same model, batch and precision;
3. evaluation, images/s: `transfer.training.loop.evaluate` vs a plain `torch.no_grad()` loop;
4. one whole epoch (train + eval) wall time, time from launch to the training loop, and peak
   memory: `transfer.run.run` vs the article's loop, each in a fresh process.
Without --data it generates an Imagewoof-shaped folder (10 classes of JPEGs, shortest side 160,
aspect 1.0-1.6, about 7-10 KB each).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------- data

def _make_class(job) -> None:
    from PIL import Image, ImageFilter

    folder, split, c, count, seed = job
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        long = int(160 * rng.uniform(1.0, 1.6))
        w, h = (long, 160) if rng.random() < 0.6 else (160, long)
        base = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8))
        pixels = np.asarray(base.resize((w, h), Image.BICUBIC)).astype(np.int16)
        pixels += rng.integers(-12, 12, (h, w, 3), dtype=np.int16)
        img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)
        img.save(folder / f"{split}_{c}_{i:05d}.JPEG", quality=int(rng.integers(70, 90)))


def make_imagewoof_like(root: Path, train_images: int, val_images: int, seed: int = 0) -> Path:
    """10 classes of smooth-noise JPEGs sized like imagewoof2-160 (shortest side 160 px, aspect
    1.0-1.6, 7-10 KB), exactly `train_images` + `val_images` files, written in parallel."""
    from multiprocessing import Pool

    jobs = [(root / split / f"n{c:08d}", split, c, count // 10 + (c < count % 10), seed * 1000 + 10 * s + c)
            for s, (split, count) in enumerate((("train", train_images), ("val", val_images))) for c in range(10)]
    with Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        pool.map(_make_class, jobs)
    return root


def article_loaders(root: Path, batch: int, workers: int, size: int):
    from torchvision import datasets, transforms as T

    train_tf = T.Compose([T.RandomCrop(size, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                          T.ToTensor(), T.Normalize(MEAN, STD)])
    val_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(MEAN, STD)])  # the article squashes
    train = torch.utils.data.DataLoader(datasets.ImageFolder(root / "train", train_tf), batch_size=batch,
                                        shuffle=True, num_workers=workers, pin_memory=torch.cuda.is_available())
    val = torch.utils.data.DataLoader(datasets.ImageFolder(root / "val", val_tf), batch_size=batch * 2,
                                      num_workers=workers, pin_memory=torch.cuda.is_available())
    return train, val


def our_loaders(root: Path, batch: int, workers: int, size: int):
    from transfer.config import DataConfig
    from transfer.data.loaders import build_datasets, make_loaders

    train, val, _, _ = build_datasets(DataConfig(root=str(root), image_size=size, num_workers=workers))
    return make_loaders(train, val, batch, workers, 1)


def loader_rate(loader, warmup: int = 2) -> float:
    it, count = iter(loader), 0
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for batch in it:
        count += len(batch[1]) if isinstance(batch, (list, tuple)) else len(batch["labels"])
    return count / (time.perf_counter() - start)


# ---------------------------------------------------------------------------- steps

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, images: int, device) -> float:
    """images/s of one call of fn."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return images / (time.perf_counter() - start)


def plain_steps(model, x, y, steps, device, precision, lr=1e-4):
    """A textbook loop (float NCHW input, autocast only if ours uses it): (train, eval) callables
    that each run `steps` batches."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=100 * steps)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.1)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    def train():
        model.train()
        for _ in range(steps):
            step()

    def evaluate():
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for _ in range(steps):
                model(x).float().argmax(1).cpu()

    return train, evaluate


def our_steps(model, pixels, y, steps, precision, device_name):
    """Our train_one_epoch and evaluate over in-memory batches (no loading cost): (train, eval)
    callables that each run `steps` batches."""
    from accelerate import Accelerator

    from transfer.config import Config
    from transfer.data.transforms import Normalize
    from transfer.training.loop import evaluate, train_one_epoch
    from transfer.training.objective import Objective
    from transfer.training.optim import OneCycle, build_optimizer
    from transfer.training.step import Loop, Trainer
    from transfer.training.watch import Watch

    from transfer.training.accel import apply_backend_settings, backend_settings, fuse_optimizer

    accelerator = Accelerator(cpu=device_name == "cpu", mixed_precision=precision)
    model = model.to(accelerator.device, memory_format=torch.channels_last)
    cfg = Config()
    settings = backend_settings(accelerator.device.type == "cuda")  # what a run uses: autotuning, TF32, fused
    apply_backend_settings(settings)
    optimizer = build_optimizer(cfg.optim, model.parameters(), fused=fuse_optimizer(settings, cfg.optim.name, precision))
    model, optimizer = accelerator.prepare(model, optimizer)
    normalize = Normalize(MEAN, STD)
    trainer = Trainer(model, optimizer, accelerator, Objective(cfg.train.label_smoothing, cfg.data, 10, normalize),
                      cfg.optim.grad_clip)
    loop = Loop(trainer, OneCycle(optimizer.optimizer, 1e-4, 100 * steps), Watch(accelerator))
    batch = {"pixel_values": pixels.to(accelerator.device), "labels": y.to(accelerator.device)}

    def train():
        train_one_epoch(loop, [batch] * steps, 0)

    return train, lambda: evaluate(model, [batch] * steps, accelerator, normalize)


def compare_steps(ours, plain, images: int, device, rounds: int = 3) -> dict:
    """Warm up both, then alternate timed rounds (a noisy machine slows both alike); medians."""
    ours(), plain()
    rates = {"ours": [], "plain": []}
    for _ in range(rounds):
        rates["ours"].append(timed(ours, images, device))
        rates["plain"].append(timed(plain, images, device))
    return {k: float(np.median(v)) for k, v in rates.items()}


# ---------------------------------------------------------------------------- whole epochs (child processes)

def peak_memory_mb(device) -> float:
    """GPU: peak allocated. CPU: this process's peak resident memory (VmHWM; ru_maxrss would
    carry the parent's peak across exec). Loader worker processes are not counted, for either."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epoch_ours(args, launched):
    from transfer.config import load_config
    from transfer.run import run

    scratch = Path(tempfile.mkdtemp(prefix="bench-run-"))
    out = scratch / "run"
    cfg = load_config("configs/pretrained.yaml", [
        f"data.root={args.data}", "data.url=null", f"data.image_size={args.size}",
        f"data.num_workers={args.workers}", f"model.name={args.model}", "model.pretrained=false",
        f"train.epochs={args.epochs}", "train.freeze_epochs=0", f"train.batch_size={args.batch}", f"output_dir={out}"])
    try:
        metrics = run(cfg)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"epoch_seconds": sum(h.epoch_seconds for h in metrics.history),  # every epoch: train + eval
            "startup_seconds": metrics.startup_seconds,
            "peak_memory_mb": peak_memory_mb(torch.device(metrics.device.split(":")[0])),
            "val_acc": metrics.history[-1].val_acc, "mixed_precision": metrics.mixed_precision,
            "phase_seconds": metrics.phase_seconds}


def epoch_article(args, launched):
    """The article's loop: ImageFolder loaders, .to(device), fp32, one-cycle Adam, clip by value."""
    import timm

    device = torch.device(args.device)
    train_dl, val_dl = article_loaders(Path(args.data), args.batch, args.workers, args.size)
    model = timm.create_model(args.model, num_classes=10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-4, epochs=args.epochs, steps_per_epoch=len(train_dl))
    startup = time.perf_counter() - launched
    start = time.perf_counter()
    for _ in range(args.epochs):  # the article's fit(): train, then evaluate, each epoch
        model.train()
        for images, labels in train_dl:
            loss = torch.nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.1)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in val_dl:
                correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
                total += len(labels)
    sync(device)
    return {"epoch_seconds": time.perf_counter() - start, "startup_seconds": startup,
            "peak_memory_mb": peak_memory_mb(device), "val_acc": correct / total, "mixed_precision": "no"}


def median_run(runs: list[dict]) -> dict:
    """Each number the median over rounds (phase_seconds too); other fields from the first round."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = float(np.median([r[key] for r in runs]))
        elif key == "phase_seconds":
            merged[key] = {k: float(np.median([r[key].get(k, 0.0) for r in runs])) for k in value}
    merged["rounds"] = len(runs)
    return merged


def run_child(args, phase: str) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--data", str(args.data), "--model", args.model,
               "--size", str(args.size), "--batch", str(args.batch), "--workers", str(args.workers),
               "--device", args.device, "--epochs", str(args.epochs)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"benchmark phase {phase} failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    # the whole process, launch to exit, and what of it is not the training/evaluation loop
    return {**measured, "process_seconds": wall, "outside_loop_seconds": wall - measured["epoch_seconds"]}


# ---------------------------------------------------------------------------- main

def main(argv=None) -> int:
    launched = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", type=Path, help="an image folder with train/ and val/ (default: generate one)")
    parser.add_argument("--train-images", type=int, default=2000, help="images to generate for train/ (val: a third)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--steps", type=int, default=10, help="timed steps in the training and evaluation phases")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--make-data", type=Path, metavar="DIR", help="only generate the data set into DIR "
                        "(--train-images train + --val-images val) and exit")
    parser.add_argument("--val-images", type=int, help="images to generate for val/ (default: a third of train)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternating rounds of the whole-process comparison (medians; default %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each whole-process run (default %(default)s)")
    parser.add_argument("--whole-only", action="store_true",
                        help="only the whole-process comparison (4.): launch to exit, time outside the loop")
    parser.add_argument("--ema", action="store_true",
                        help="only the weight average's cost per optimizer step (train.ema_decay): timm's ModelEmaV3 "
                             "as it is vs transfer's, whole update and its Python part")
    parser.add_argument("--phase", choices=["epoch-ours", "epoch-article"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    if args.phase:  # a child process: one whole epoch, fresh memory counters
        print(json.dumps((epoch_ours if args.phase == "epoch-ours" else epoch_article)(args, launched)))
        if args.phase == "epoch-ours":  # ends as run_transfer.py does
            from transfer.cli import exit_now

            exit_now(0)
        return 0

    if args.ema:
        return ema_cost(args)
    val_images = args.val_images if args.val_images is not None else args.train_images // 3
    if args.make_data:
        print(make_imagewoof_like(args.make_data, args.train_images, val_images))
        return 0
    made = None
    if args.data is None:
        made = Path(tempfile.mkdtemp(prefix="bench-data-"))
        args.data = make_imagewoof_like(made / "woof", args.train_images, val_images)
    try:
        return measure(args)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def measure(args) -> int:
    """Every comparison on `args.data`; prints the table (and writes --json)."""
    import timm

    from transfer.training.accel import resolve_precision

    device = torch.device(args.device)
    precision = "no" if device.type == "cpu" else resolve_precision("auto")
    results = {"setting": {"model": args.model, "size": args.size, "batch": args.batch, "workers": args.workers,
                           "epochs": args.epochs,
                           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           "cpus": os.cpu_count(), "precision": precision, "torch": torch.__version__}}

    ratios = {}
    if not args.whole_only:
        ours_dl, _ = our_loaders(args.data, args.batch, args.workers, args.size)
        article_dl, _ = article_loaders(args.data, args.batch, args.workers, args.size)
        results["pipeline"] = {"ours": loader_rate(ours_dl), "article": loader_rate(article_dl)}

        torch.manual_seed(0)
        model = timm.create_model(args.model, num_classes=10)
        pixels = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8)
        y = torch.randint(0, 10, (args.batch,))
        x = ((pixels.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1))
             / torch.tensor(STD).view(1, 3, 1, 1)).contiguous().to(device)
        plain_model = timm.create_model(args.model, num_classes=10)
        plain_model.load_state_dict(model.state_dict())
        plain_train, plain_eval = plain_steps(plain_model.to(device), x, y.to(device), args.steps, device, precision)
        ours_train, ours_eval = our_steps(model, pixels, y, args.steps, precision, device.type)
        images = args.steps * args.batch
        results["train_step"] = compare_steps(ours_train, plain_train, images, device)
        results["eval_step"] = compare_steps(ours_eval, plain_eval, images, device)
        ratios = {"pipeline (ours / article)": results["pipeline"]["ours"] / results["pipeline"]["article"],
                  "train step (ours / plain)": results["train_step"]["ours"] / results["train_step"]["plain"],
                  "eval step (ours / plain)": results["eval_step"]["ours"] / results["eval_step"]["plain"]}

    rounds = {"ours": [], "article": []}
    for _ in range(args.rounds):  # alternating, so that a noisy machine slows both alike; medians
        rounds["ours"].append(run_child(args, "epoch-ours"))
        rounds["article"].append(run_child(args, "epoch-article"))
    results["epoch"] = {k: median_run(v) for k, v in rounds.items()}
    o, a = results["epoch"]["ours"], results["epoch"]["article"]
    ratios.update({"epoch speed (article time / ours)": a["epoch_seconds"] / o["epoch_seconds"],
                   "whole process (article time / ours)": a["process_seconds"] / o["process_seconds"],
                   "outside the loop (ours / article)": o["outside_loop_seconds"] / a["outside_loop_seconds"]})
    results["ratios"] = ratios
    print(table(results))
    if args.json:
        from transfer.files import write_json

        write_json(args.json, results)
    return 0


def ema_cost(args) -> int:
    """Milliseconds per update of the weight average on `args.model`: the whole update (device
    synchronised), and its Python part alone (the tensor arithmetic replaced by nothing)."""
    import timm
    from timm.utils import ModelEmaV3

    from transfer.training.average import WeightAverage

    device = torch.device(args.device)
    model = timm.create_model(args.model, num_classes=10).to(device, memory_format=torch.channels_last)
    kinds = {"timm ModelEmaV3 (state_dict() twice a step)": ModelEmaV3, "transfer WeightAverage": WeightAverage}

    def per_update(make) -> float:
        average = make()
        average.update(model, step=1)
        best = float("inf")
        for _ in range(5):  # best of 5 rounds of 20
            sync(device)
            start = time.perf_counter()
            for step in range(20):
                average.update(model, step=step + 2)
            sync(device)
            best = min(best, (time.perf_counter() - start) / 20)
        return 1000 * best

    results = {"setting": {"model": args.model, "device": str(device)}, "ms_per_update": {}}
    for name, cls in kinds.items():
        make = (lambda cls=cls: cls(model, decay=0.999, use_warmup=True)) if cls is ModelEmaV3 else (
            lambda: WeightAverage(model, 0.999))
        whole = per_update(make)
        lerp = cls._foreach_lerp_
        cls._foreach_lerp_ = lambda self, ema, values, weight: None
        try:
            python = per_update(make)
        finally:
            cls._foreach_lerp_ = lerp
        results["ms_per_update"][name] = {"whole": whole, "python": python}
    lines = [f"weight average, {args.model} on {device}: ms per optimizer step (best of 5 x 20)", "",
             "| average | whole update | Python part (arithmetic left out) |", "|---|---|---|"]
    lines += [f"| {k} | {v['whole']:.2f} | {v['python']:.3f} |" for k, v in results["ms_per_update"].items()]
    print("\n".join(lines))
    if args.json:
        from transfer.files import write_json

        write_json(args.json, results)
    return 0


def table(r: dict) -> str:
    s = r["setting"]
    lines = [f"{s['model']} @ {s['size']} px, batch {s['batch']}, {s['workers']} workers, {s['device']} "
             f"({s['cpus']} CPUs), precision {s['precision']}, torch {s['torch']}; whole processes: medians of "
             f"{r['epoch']['ours']['rounds']} alternating round(s)", "",
             "| measure | ours | baseline | ratio |", "|---|---|---|---|"]
    if "pipeline" in r:
        lines += [
             f"| input pipeline, images/s (baseline: article's loader) | {r['pipeline']['ours']:.0f} | "
             f"{r['pipeline']['article']:.0f} | {r['ratios']['pipeline (ours / article)']:.2f}x |",
             f"| training step, images/s (baseline: plain PyTorch) | {r['train_step']['ours']:.1f} | "
             f"{r['train_step']['plain']:.1f} | {r['ratios']['train step (ours / plain)']:.2f}x |",
             f"| evaluation, images/s (baseline: plain PyTorch) | {r['eval_step']['ours']:.1f} | "
             f"{r['eval_step']['plain']:.1f} | {r['ratios']['eval step (ours / plain)']:.2f}x |"]
    o, a = r["epoch"]["ours"], r["epoch"]["article"]
    lines += [f"| {s.get('epochs', 1)} epoch(s) train + eval, s (baseline: article's loop) | {o['epoch_seconds']:.1f} | "
              f"{a['epoch_seconds']:.1f} | {r['ratios']['epoch speed (article time / ours)']:.2f}x faster |",
              f"| whole process, launch to exit, s | {o['process_seconds']:.1f} | {a['process_seconds']:.1f} | "
              f"{r['ratios']['whole process (article time / ours)']:.2f}x faster |",
              f"| outside the loop (process - train/eval loop), s | {o['outside_loop_seconds']:.1f} | "
              f"{a['outside_loop_seconds']:.1f} | {o['outside_loop_seconds'] - a['outside_loop_seconds']:+.1f} s |",
              f"| launch to training loop, s | {o['startup_seconds']:.1f} | {a['startup_seconds']:.1f} | |",
              f"| peak memory, MB ({'GPU' if s['device'] != 'cpu' else 'process RSS'}) | {o['peak_memory_mb']:.0f} | "
              f"{a['peak_memory_mb']:.0f} | |"]
    lines += ["", "ours, outside the loop (metrics.json phase_seconds): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in o["phase_seconds"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
