#!/usr/bin/env python
"""The Python steps of scripts/gpu_check.sh (each writes OUT/<step>.json), and its table.

    gpu_check_steps.py --data D --out O [--model ...] resume    resumed runs against uninterrupted ones
    gpu_check_steps.py ... syncs                                host-device syncs per step and per evaluation
    gpu_check_steps.py ... cpu-run                              a CPU run on a GPU host creates no CUDA context
    gpu_check_steps.py ... report                               the table of everything measured
    gpu_check_steps.py launch [--stop-group-at N] [--kill-at N --after PATH] run_transfer.py ARGS...

`launch` runs run_transfer.py deterministically (cuDNN's deterministic algorithms, no autotuning,
torch's deterministic mode where it has one), so that two runs of the same settings can be
compared weight for weight; it can send SIGTERM to its whole process group at the N-th training
batch, or kill itself (-9) at the N-th batch once PATH exists.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESUME_EPOCHS = 3


def launch(argv: list[str]) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS
    parser = argparse.ArgumentParser(prog="launch")
    parser.add_argument("--stop-group-at", type=int)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--after", type=Path)
    args, rest = parser.parse_known_args(argv)
    import runpy

    import torch

    from transfer.training import accel
    from transfer.training.watch import Watch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    settings = accel.backend_settings
    accel.backend_settings = lambda cuda: {**settings(cuda), "cudnn_benchmark": False}
    observe, seen = Watch.observe, [0]

    def observe_then_act(self, loss, batch_index):
        observe(self, loss, batch_index)
        seen[0] += 1
        if seen[0] == args.stop_group_at:
            os.killpg(os.getpgid(0), signal.SIGTERM)  # the whole group: the run, its workers, its drawer
        if seen[0] == args.kill_at:
            deadline = time.monotonic() + 120
            while not args.after.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
    Watch.observe = observe_then_act
    sys.argv = rest
    runpy.run_path(rest[0], run_name="__main__")


def run_command(opts, out: Path, *extra: str, launcher: tuple[str, ...] = ()) -> tuple[int, str]:
    """A deterministic run of the resume check's settings into `out`, in its own process group."""
    args = [sys.executable, __file__, "launch", *launcher, str(ROOT / "run_transfer.py"), "--config",
            str(ROOT / "configs" / "scratch.yaml"), f"data.root={opts.data}", "data.url=null",
            f"model.name={opts.model}", f"data.image_size={opts.size}", f"train.batch_size={opts.batch}",
            f"train.epochs={RESUME_EPOCHS}", f"data.train_samples={opts.resume_images}", "data.check_images=false",
            "train.keep_checkpoints=5", f"output_dir={out}", *extra]
    process = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT)
    log, _ = process.communicate(timeout=600)
    (out.parent / f"{out.name}.log").write_text(log)
    return process.returncode, log


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "model.safetensors"))


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].numel() else 0.0 for k in wa)


def resume(opts) -> dict:
    """Uninterrupted (decoded cache) vs killed -9 in epoch 2 after epoch 1's background checkpoint
    and resumed (decoded cache), and vs stopped by a SIGTERM to the process group in epoch 2 with
    loader workers (data.cache=none: the same pixels) and resumed."""
    root = opts.out / "resume"
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    steps = opts.resume_images // opts.batch
    result = {"train_images": opts.resume_images, "epochs": RESUME_EPOCHS, "steps_per_epoch": steps}
    code, _ = run_command(opts, root / "uninterrupted", "data.cache=memory")
    assert code == 0, "the uninterrupted run failed: see resume/uninterrupted.log"
    killed = root / "killed"
    code, _ = run_command(opts, killed, "data.cache=memory", launcher=(
        "--kill-at", str(steps + steps // 2), "--after", str(killed / "checkpoints" / "epoch_001" / "trainer_state.json")))
    result["killed_exit"] = code
    code, log = run_command(opts, killed, "data.cache=memory", "train.resume=auto")
    result["killed_resumed_exit"], result["killed_resumed_from"] = code, _resumed_from(log)
    stopped = root / "stopped"
    workers = ("data.cache=none", f"data.num_workers={opts.workers}")
    code, log = run_command(opts, stopped, *workers, launcher=("--stop-group-at", str(steps + steps // 4)))
    result["stopped_exit"] = code
    code, log = run_command(opts, stopped, *workers, "train.resume=auto")
    result["stopped_resumed_exit"], result["stopped_resumed_from"] = code, _resumed_from(log)
    for name in ("killed", "stopped"):
        if result[f"{name}_resumed_exit"] == 0:
            result[f"{name}_max_weight_difference"] = max_difference(root / "uninterrupted", root / name)
    if any(result.get(f"{n}_max_weight_difference", 1.0) != 0.0 for n in ("killed", "stopped")):
        code, _ = run_command(opts, root / "again", "data.cache=memory")  # what two identical runs differ by here
        result["noise_floor_max_weight_difference"] = max_difference(root / "uninterrupted", root / "again")
    return result


def _resumed_from(log: str) -> str | None:
    line = next((line for line in log.splitlines() if line.startswith("resumed from ")), None)
    return None if line is None else Path(line.split()[2].rstrip(";")).name


def syncs(opts) -> dict:
    """Host-device synchronisations in 20 training steps and one evaluation pass from the decoded
    cache, after warm-up steps (which make the normalisation constants and tune cuDNN); and the
    evaluation pass's time."""
    import warnings

    import torch
    from accelerate import Accelerator

    from transfer.config import load_config
    from transfer.training.accel import resolve_precision
    from transfer.training.loop import evaluate
    from transfer.training.phases import Phases
    from transfer.training.setup import build

    cfg = load_config(str(ROOT / "configs" / "scratch.yaml"), [
        f"data.root={opts.data}", "data.url=null", "data.cache=memory", f"model.name={opts.model}",
        f"data.image_size={opts.size}", f"train.batch_size={opts.batch}"])
    setup = build(cfg, Accelerator(mixed_precision=resolve_precision("auto")), Phases())
    trainer = setup.trainer
    trainer.set_phase(False)
    cuda = trainer.accelerator.device.type == "cuda"

    def synchronising(run) -> int:
        if not cuda:
            run()
            return 0
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
        torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    def steps(n):
        def go():
            for _, batch in zip(range(n), setup.train_dl):
                trainer.step(batch)
        return go

    def evaluation():
        return evaluate(trainer.model, setup.val_dl, trainer.accelerator, trainer.objective.normalize)

    steps(3)()  # warm-up: constants, autotuning
    evaluation()
    counted = synchronising(steps(20))
    passes = synchronising(evaluation)
    start = time.perf_counter()
    evaluation()
    if cuda:
        torch.cuda.synchronize()
    return {"train_steps": 20, "syncs_in_train_steps": counted, "syncs_in_evaluation": passes,
            "evaluation_batches": len(setup.val_dl), "evaluation_seconds": time.perf_counter() - start,
            "validation_images": len(setup.val_ds)}


def cpu_run(opts) -> dict:
    """`accelerate launch --cpu` on this host (ACCELERATE_USE_CPU=1), loader workers and a
    checkpoint included: does this process end with a CUDA context?"""
    os.environ["ACCELERATE_USE_CPU"] = "1"
    from transfer.cli import main

    import torch

    out = opts.out / "cpu_run"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    code = main(["--config", str(ROOT / "configs" / "smoke.yaml"), f"data.root={opts.data}", "data.url=null",
                 f"output_dir={out}", "train.epochs=1", "data.train_samples=64", "data.num_workers=2",
                 "data.check_images=false"])
    metrics = json.loads((out / "metrics.json").read_text()) if code == 0 else {}
    return {"exit": code, "device": metrics.get("device"), "cuda_initialized": torch.cuda.is_initialized()}


def gpu_memory_mb(path: Path) -> float | None:
    """The memory of nvidia-smi's "name, memory.total, driver" line ("NVIDIA H100 80GB HBM3, 81559 MiB, 570.1")."""
    try:
        return float(path.read_text().splitlines()[0].split(",")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def report(opts) -> str:
    out = opts.out

    def read(name):
        path = out / name
        return json.loads(path.read_text()) if path.is_file() else None

    steps = {}
    if (out / "steps.tsv").is_file():
        for line in (out / "steps.tsv").read_text().splitlines():
            name, code, seconds = line.split("\t")
            steps[name] = (int(code), int(seconds))
    rows = []
    for cache, label in (("auto", "decoded cache"), ("graphs", "decoded cache, CUDA graphs (reduce-overhead)"),
                         ("none", "JPEG files, loader workers")):
        m = read(f"run_{cache}/metrics.json")
        if m:
            rates = sorted(h["train_images_per_s"] for h in m["history"])
            wall = steps.get({"auto": "cached", "none": "jpeg"}.get(cache, cache), (0, 0))[1]
            rows.append((f"{len(m['history'])} epochs, {label}: training images/s (median epoch; best)",
                         f"{rates[len(rates) // 2]:,.0f}; {rates[-1]:,.0f}"))
            rows.append((f"{len(m['history'])} epochs, {label}: seconds in epochs (train + eval) / start-up / "
                         f"whole command", f"{m['train_seconds']:.1f} / {m['startup_seconds']:.1f} / {wall}"))
            rows.append((f"{len(m['history'])} epochs, {label}: precision, final val_acc (generated data), "
                         f"optimizer step compiled", f"{m['mixed_precision']}, {m['final_val_acc']:.3f}, "
                         f"{m['speed_settings'].get('compiled_optimizer', False)}"))
    s = read("syncs.json")
    if s:
        rows.append(("host-device syncs: in 20 training steps / in one evaluation pass (its batches)",
                     f"{s['syncs_in_train_steps']} / {s['syncs_in_evaluation']} ({s['evaluation_batches']})"))
        rows.append((f"one evaluation pass of {s['validation_images']:,} images, s", f"{s['evaluation_seconds']:.2f}"))
    r = read("resume.json")
    if r:
        floor = r.get("noise_floor_max_weight_difference")
        for name, how in (("killed", "kill -9 in epoch 2, resumed from epoch 1's background checkpoint"),
                          ("stopped", "SIGTERM to the process group in epoch 2 (loader workers), resumed")):
            diff = r.get(f"{name}_max_weight_difference")
            rows.append((f"{how}: exits, resumed from; max weight difference to the uninterrupted run",
                         f"{r[f'{name}_exit']} then {r[f'{name}_resumed_exit']}, {r[f'{name}_resumed_from']}; "
                         + ("not resumed" if diff is None else f"{diff:.3g}")
                         + ("" if floor is None else f" (two uninterrupted runs: {floor:.3g})")))
    c = read("cpu_run.json")
    if c:
        rows.append(("CPU run on this GPU host (ACCELERATE_USE_CPU=1): exit, device, CUDA context created",
                     f"{c['exit']}, {c['device']}, {c['cuda_initialized']}"))
    e = read("ema.json")
    if e:
        rows.append(("weight average, ms per step: timm as it is / ours (Python part alone)",
                     " / ".join(f"{v['whole']:.2f} ({v['python']:.3f})" for v in e["ms_per_update"].values())))
    starts = [read(f"startup_{n}/metrics.json") for n in (1, 2)]
    if all(starts):
        for n, m in enumerate(starts, 1):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in m["phase_seconds"].items() if v >= 0.05)
            rows.append((f"start-up of run {n} of the same data ({'decoded, kept' if n == 1 else 'read back'}), s; "
                         f"its phases", f"{m['startup_seconds']:.1f}; {phases}"))
    if (out / "per_gpu.txt").is_file():
        single = None
        total_mb = gpu_memory_mb(out / "gpu.txt")
        for line in (out / "per_gpu.txt").read_text().splitlines():
            n, start, end = line.split()
            n, wall = int(n), float(end) - float(start)
            runs = [read(f"per_gpu_{n}/scratch/seed{s}/metrics.json") for s in range(n)]
            images = sum(m["train_samples"] * len(m["history"]) for m in runs if m)
            single = single or wall / n
            peaks = [m["peak_device_memory_mb"] for m in runs if m and m.get("peak_device_memory_mb")]
            peak = f"{max(peaks):,.0f}" if peaks else "-"
            rows.append((f"{n} run(s) at once on one GPU: wall s; training images/s, all runs together; against "
                         f"one at a time; peak GPU memory a run, MB",
                         f"{wall:.1f}; {images / wall:,.0f}; {single * n / wall:.2f}x; {peak}"))
            if n == 1 and peaks and total_mb:  # what RUNS_PER_GPU's default would be, from memory alone
                rows.append(("runs of this size that fit the GPU's memory (90% of it / one run's peak)",
                             f"{int(0.9 * total_mb // max(peaks))} of {total_mb:,.0f} MB"))
    graphed, eager = (sorted(out.glob(f"seeds_{mode}_*/metrics.json")) for mode in ("graphed", "eager"))
    if graphed and eager:
        from transfer.experiments.intervals import paired_gain, span
        from transfer.records import load_run

        runs = [[load_run(m.parent) for m in found] for found in (graphed, eager)]
        accs = [", ".join(f"{r.metrics.final_val_acc:.3f}" for r in arm) for arm in runs]
        gain = paired_gain(*runs)
        rows.append((f"final val_acc, graphed (reduce-overhead) / eager, {len(runs[0])} / {len(runs[1])} seeds",
                     f"{accs[0]} / {accs[1]}"))
        rows.append(("graphed - eager, points (95% interval, seeds crossed with images)",
                     f"{gain.final_val_acc_points:+.1f} ({span(gain.final_val_acc_ci95)})"))
    b = read("benchmark.json")
    if b:
        rows += [(f"benchmark: {k}", f"{v:.2f}x") for k, v in b["ratios"].items()]
    failed = [f"{n} (exit {c})" for n, (c, _) in steps.items() if c]
    rows.append(("steps failed", ", ".join(failed) or "none"))
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else "no GPU (rehearsal)"
    lines = [f"gpu_check on {gpu}; {opts.model} at {opts.size} px, batch {opts.batch}", "",
             "| measured | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "launch":
        launch(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resume-images", type=int, default=1024, help="training images of the resume check's runs")
    parser.add_argument("what", choices=["resume", "syncs", "cpu-run", "report"])
    opts = parser.parse_args(argv)
    if opts.what == "report":
        print(report(opts))
        return 0
    result = {"resume": resume, "syncs": syncs, "cpu-run": cpu_run}[opts.what](opts)
    (opts.out / f"{opts.what.replace('-', '_')}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
