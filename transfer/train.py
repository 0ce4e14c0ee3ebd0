"""The experiment: one `Accelerator` owns device, mixed precision, processes and gradient
accumulation; everything else is a plain function of data (see data, model, optim, report)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from . import checkpoint, report, rundir
from .config import Config, to_dict
from .cache import CachedBatches, DecodedImages, IndexDataset
from .data import build_datasets, class_display_names, make_loaders, samples, splits_line
from .errors import ConfigError, OutputError
from .drawer import Drawer
from .metrics import accuracy
from .objective import Objective
from .step import Loop, train_step
from .model import build_model, data_config, set_backbone_frozen, state_bytes, train_mode
from .optim import PCT_START, OneCycle, build_optimizer
from .transforms import normalize
from .outputs import check_space
from .phases import Phases
from . import lr_find, speed
from .watch import Watch

LOG_EVERY = 10  # optimizer steps between syncs: tracker, progress bar, stop/NaN/budget checks


def check_due(steps: int) -> bool:
    """Sync after these optimizer steps: early ones give the time budget a first time per step."""
    return steps % LOG_EVERY == 0 or steps in (1, 2, 4, 8)


def use_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")


def resolve_precision(requested: str) -> str:
    """`auto`: bf16 on a GPU that has it, else fp16 on a GPU, else fp32 (bf16 is slow on most CPUs)."""
    cuda = use_cuda()
    if requested == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if requested == "fp16" and not cuda:
        raise ConfigError("train.mixed_precision='fp16' needs a GPU; on a CPU use 'no' (or 'auto')")
    return requested


def train_one_epoch(loop: Loop, loader, epoch: int, frozen: bool, batches_done: int = 0, partial=(0.0, 0)) -> dict:
    """Train until the loader ends or the watch says stop; `batches_done`/`partial` continue a
    half-finished epoch. Returns the epoch's mean loss and where it stopped.

    A half-finished epoch is continued by replaying its first `batches_done` batches through the
    loader without training on them: loading draws the same random numbers as the first time
    (crops, flips, worker seeds, mixing), so the rest of the epoch sees exactly the same batches."""
    accelerator, scheduler, watch = loop.accelerator, loop.scheduler, loop.watch
    train_mode(accelerator.unwrap_model(loop.model), frozen)
    loop.objective.set_epoch(epoch)
    lr = scheduler.get_last_lr()[0]
    mine = accelerator.is_main_process  # a half epoch's global totals restart on one process only
    loss_sum = torch.tensor(float(partial[0]) if mine else 0.0, device=accelerator.device)
    seen = torch.tensor(float(partial[1]) if mine else 0.0, device=accelerator.device)
    batch_index, stop = 0, None
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not accelerator.is_local_main_process)
    for batch in bar:
        if batch_index < batches_done:  # replay (see above)
            loop.objective.replay(batch)
            batch_index += 1
            continue
        loss = train_step(loop, batch)
        batch_index += 1
        watch.observe(loss, batch_index)
        loss_sum += loss.detach().float() * len(batch["labels"])
        seen += len(batch["labels"])
        if accelerator.sync_gradients:
            lr = scheduler.get_last_lr()[0]  # the rate this optimizer step used (the article's last_lr)
            loop.lrs.append(lr)
            scheduler.step()
            if check_due(scheduler.steps):
                stop = watch.check(epoch)  # raises NonFiniteLoss; one sync across processes
                scheduler.plan(watch.elapsed)  # the budget's remaining steps, from the synced clock
                step_loss = loss.item()
                accelerator.log({"train/loss": step_loss, "train/lr": lr}, step=scheduler.steps)
                bar.set_postfix(loss=f"{step_loss:.3f}")
            if scheduler.finished and loop.time_budget:
                stop = stop or "budget"  # the step at the schedule's final value is done
            if stop:
                break
    if stop != "budget":
        stop = watch.check(epoch) or stop
        scheduler.plan(watch.elapsed)
    totals = accelerator.reduce(torch.stack([loss_sum, seen]), "sum")
    return {"train_loss": (totals[0] / totals[1].clamp(min=1)).item(), "train_images": int(totals[1].item()),
            "lr": lr, "stop": stop, "batches_done": batch_index, "partial": (totals[0].item(), int(totals[1].item()))}


@torch.inference_mode()
def evaluate(model, loader, accelerator, mean, std) -> dict:
    """Every validation image exactly once across processes; loss averaged per image. Results stay
    on the device until the end: no host sync per batch."""
    model.eval()
    gathered = []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process):
        logits = model(normalize(batch["pixel_values"], mean, std)).float()
        loss = F.cross_entropy(logits, batch["labels"], reduction="none")  # plain, whatever training optimises
        confidence, prediction = logits.softmax(dim=1).max(dim=1)
        # gather_for_metrics drops the samples duplicated to even out the last batch across processes
        gathered.append(accelerator.gather_for_metrics((prediction, batch["labels"], loss, confidence)))
    preds, labels, losses, confidence = (torch.cat(ts).cpu().numpy() for ts in zip(*gathered))
    return {"val_loss": float(losses.mean()), "val_acc": accuracy(preds, labels), "val_samples": len(labels),
            "predictions": preds, "references": labels, "confidence": confidence}


def decode(ds, cfg: Config, accelerator, workers: int) -> DecodedImages:
    start = time.perf_counter()
    _, stored, labels = samples(ds)
    images = DecodedImages(stored, labels, cfg.data.image_size, accelerator.device, workers)
    accelerator.print(f"decoded {len(ds)} images into {images.nbytes / 2**30:.2f} GiB on {accelerator.device} "
                      f"in {time.perf_counter() - start:.1f} s")
    return images


def make_accelerator(cfg: Config, out: Path | None, precision: str) -> Accelerator:
    return Accelerator(
        cpu=not use_cuda() and not torch.backends.mps.is_available(),  # lets torchrun on CPUs use gloo
        mixed_precision=precision, gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=None if cfg.train.log_with == "none" else cfg.train.log_with,
        project_dir=None if out is None else str(out),
        dynamo_backend="inductor" if cfg.train.compile else None,  # None: accelerate launch's setting
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))  # DDP: see fit_ddp


@dataclass
class Setup:
    """A run's data, model, optimizer and loaders, prepared by the accelerator."""
    train_ds: object
    val_ds: object
    source: object
    skipped: dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_dl: object
    val_dl: object
    mean: tuple
    std: tuple
    cached: bool
    checkpoint_size: int
    grad_accum_steps: int
    speed_settings: dict

    @property
    def steps_per_epoch(self) -> int:  # per process, after sharding
        return math.ceil(len(self.train_dl) / self.grad_accum_steps)


def build(cfg: Config, accelerator: Accelerator, phases: Phases, out: Path | None = None,
          resume_from: Path | None = None) -> Setup:
    """Data (checked), model, optimizer and loaders, prepared. With `out`: a resumed run's data
    must be the checkpoint's, and a checkpoint and the final model must fit on the disk."""
    set_seed(cfg.train.seed)  # before the model's random init
    with phases("data"), accelerator.main_process_first():  # one download / cache build, the others reuse it
        train_ds, val_ds, source, skipped = build_datasets(cfg.data)
    for note in source.notes:
        accelerator.print(note)
    accelerator.print(splits_line(len(train_ds), len(val_ds), len(source.classes), skipped))
    if resume_from is not None:
        rundir.check_records(out, source.records())
    with phases("model"):
        model, head_note = build_model(cfg.model, source.classes)
        model = model.to(memory_format=torch.channels_last)
    if head_note:
        accelerator.print(head_note)
    mean, std = data_config(model).values()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    needed = 0
    if cfg.data.cache == "auto" and use_cuda():  # from the headers, before anything is decoded
        # a lazy column: only the sampled rows are read (bytes-stored sources are not loaded whole)
        needed = sum(speed.estimate_decoded_bytes(ds.with_format(None)["image"], cfg.data.image_size)
                     for ds in (train_ds, val_ds))
    cached, why = speed.choose_cache(cfg.data.cache, use_cuda(), needed, *speed.free_memory(accelerator.device),
                                     local_processes)
    if why:
        accelerator.print(why)
    if cached:  # loaders of indices, kept on the host; the images are cropped on the device (see cache.py)
        train_dl, val_dl = make_loaders(IndexDataset(len(train_ds)), IndexDataset(len(val_ds)), cfg.train.batch_size,
                                        0, accelerator.num_processes, collate_fn=None)
    else:
        train_dl, val_dl = make_loaders(train_ds, val_ds, cfg.train.batch_size, cfg.data.num_workers,
                                        accelerator.num_processes)
    settings = speed.backend_settings(accelerator.device.type == "cuda")
    speed.apply_backend_settings(settings)
    optimizer = build_optimizer(cfg.optim, model.parameters(), fused=settings["fused_optimizer"])
    checkpoint_size = checkpoint.checkpoint_bytes(model, cfg.optim.name)
    if out is not None and accelerator.is_main_process and cfg.train.epochs:
        check_space(out, checkpoint_size + state_bytes(model))  # a new checkpoint lands before the old goes; then model/
    model, optimizer = accelerator.prepare(model, optimizer)
    # index loaders stay on the host (device_placement=False): the crops are drawn there and sent
    # in one non-blocking copy, with no host-device sync per step
    train_dl, val_dl = (accelerator.prepare_data_loader(dl, device_placement=not cached) for dl in (train_dl, val_dl))
    if cached:
        workers = speed.decode_workers(cfg.data.num_workers, local_processes)
        with phases("cache_decode"):
            train_dl, val_dl = (CachedBatches(loader, decode(ds, cfg, accelerator, workers), train, cfg.data.hflip)
                                for loader, ds, train in ((train_dl, train_ds, True), (val_dl, val_ds, False)))
    return Setup(train_ds, val_ds, source, skipped, model, optimizer, train_dl, val_dl, mean, std, cached,
                 checkpoint_size, cfg.train.grad_accum_steps, settings)


def find_lr(cfg: Config, setup: Setup, loop: Loop) -> dict:
    """The LR range test, on the model as it trains when the one-cycle schedule peaks (after the
    warm-up, 30% into the run): the whole model when only the first epoch or so freezes the
    backbone, the head alone for a linear probe (frozen throughout)."""
    frozen = int(PCT_START * cfg.train.epochs) < cfg.train.freeze_epochs
    set_backbone_frozen(loop.accelerator.unwrap_model(loop.model), frozen)
    train_mode(loop.accelerator.unwrap_model(loop.model), frozen)
    loop.model = setup.model = fit_ddp(loop.accelerator, loop.model, frozen)
    loop.objective.set_epoch(0)
    found = lr_find.range_test(loop, setup.train_dl, cfg.optim.name)
    loop.accelerator.print(lr_find.line(found))
    return found


def lr_range_test(cfg: Config, plot: Path) -> dict:
    """`scripts/lr_find.py`: only the LR range test, its plot written to `plot`; no run folder."""
    from .plots import plot_lr_find

    accelerator = make_accelerator(cfg, None, resolve_precision(cfg.train.mixed_precision))
    setup = build(cfg, accelerator, Phases())
    loop = Loop(setup.model, setup.optimizer, accelerator,
                Objective(cfg, len(setup.source.classes), setup.mean, setup.std), cfg.optim.grad_clip)
    found = find_lr(cfg, setup, loop)
    if accelerator.is_main_process:
        plot_lr_find(found, plot)
    return found


def run(cfg: Config) -> dict:
    """Train and evaluate as `cfg` says; write every output into `cfg.output_dir`; return metrics.
    The folder is locked for the run's lifetime: a second run into it is refused."""
    phases = Phases()
    out = Path(cfg.output_dir)
    precision = resolve_precision(cfg.train.mixed_precision)
    accelerator = make_accelerator(cfg, out, precision)
    with rundir.locked(out, hold=accelerator.is_main_process):
        return _run(cfg, accelerator, out, precision, phases)


def _run(cfg: Config, accelerator: Accelerator, out: Path, precision: str, phases: Phases) -> dict:
    resume_from = checkpoint.resolve_resume(cfg.train.resume, out)
    if (out / "metrics.json").is_file() and cfg.train.resume is not None:
        accelerator.print(f"{out} holds a finished run; nothing to resume")
        return report.read_metrics(out)
    changed, saved = {}, {}
    if resume_from is None:
        rundir.check_fresh(out, resumable=cfg.train.resume == "auto")
    else:  # before any work: a run resumed with other settings would be a run that never existed
        changed = rundir.check_resume(checkpoint.saved_config(resume_from, out), to_dict(cfg), out)
        saved = checkpoint.read_state(resume_from)

    setup = build(cfg, accelerator, phases, out, resume_from)
    model, val_dl, mean, std = setup.model, setup.val_dl, setup.mean, setup.std
    classes = setup.source.classes
    loop = Loop(model, setup.optimizer, accelerator, Objective(cfg, len(classes), mean, std), cfg.optim.grad_clip,
                time_budget=bool(cfg.train.time_budget_s))
    found = saved.get("lr_find")  # a resumed run keeps the learning rate found before the interruption
    if cfg.optim.lr == "find" and found is None and cfg.train.epochs:
        with phases("lr_find"):
            found = find_lr(cfg, setup, loop)
    peak_lr = found["suggested_lr"] if found else (None if cfg.optim.lr == "find" else cfg.optim.lr)
    loop.scheduler = OneCycle(setup.optimizer.optimizer, peak_lr or 0.0,  # None: evaluate-only, nothing found
                              cfg.train.epochs * setup.steps_per_epoch, cfg.train.time_budget_s)
    accelerator.register_for_checkpointing(loop.scheduler)

    # What a checkpoint holds besides accelerate's states; the settings travel with it so that a
    # resume can be checked against them, and each resume is recorded with what it changed.
    state = {"epoch": 0, "history": [], "lrs": [], "train_seconds": 0.0, "batches_done": 0, "partial": (0.0, 0),
             "resumes": [], "config": to_dict(cfg), "lr_find": found}
    if resume_from is not None:
        state.update(checkpoint.load_checkpoint(accelerator, resume_from), config=to_dict(cfg))
        state["resumes"] = [*state.get("resumes", []),
                            {"from": str(resume_from), "changed": {k: list(v) for k, v in changed.items()}}]
        accelerator.print(f"resumed from {resume_from}" + "".join(f"; {k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    loop.lrs = state["lrs"]

    def save(name: str, **position) -> Path:
        with phases("checkpoints"):
            return checkpoint.save_checkpoint(accelerator, out, name, {**state, **position},
                                              keep=cfg.train.keep_checkpoints, size=setup.checkpoint_size)

    if accelerator.is_main_process:
        try:
            with phases("start_outputs"):
                report.write_start(out, cfg, setup.source.records())
        except OutputError as e:  # nothing trained yet: a setting to change, like a bad key
            e.exit_code = 2
            raise
    # figures are drawn in a child process while training runs (drawer.py), forked before any loader worker
    drawer = Drawer(accelerator.is_main_process, out=out, train_ds=setup.train_ds, val_ds=setup.val_ds,
                    classes=classes)
    try:
        if accelerator.is_main_process:
            drawer.submit("samples")
        accelerator.init_trackers("logs", config=report.flat_config(to_dict(cfg)))
        loop.watch = Watch(accelerator)
        startup_seconds = phases.since_launch()  # data checked, model built, loaders ready
        final, stop = _train_epochs(cfg, loop, setup, state, save)
        if loop.watch.first_check_seconds is not None:
            phases.add("first_step", loop.watch.first_check_seconds)
        if final is None:  # evaluate-only run, or resumed after the last epoch
            with phases("final_evaluation"):
                final = evaluate(model, val_dl, accelerator, mean, std)
        run_info = {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
                    "mixed_precision": precision, "steps_per_epoch": setup.steps_per_epoch,
                    "optimizer_steps": loop.scheduler.steps, "startup_seconds": startup_seconds,
                    "decoded_cache": setup.cached, "stopped_by_time_budget": stop == "budget",
                    "skipped_images": sum(setup.skipped.values()), "train_samples": len(setup.train_ds),
                    "resumes": state["resumes"], "lr_per_step": loop.lrs,
                    "peak_lr": peak_lr, "lr_find": found,
                    "objective": loop.objective.describe, "speed_settings": setup.speed_settings,
                    "phase_seconds": phases.seconds}
        return _finish(cfg, accelerator, setup, final, state, run_info, phases, drawer)
    finally:
        drawer.close()


def fit_ddp(accelerator: Accelerator, model, frozen: bool):
    """DDP syncs the parameters that required a gradient when it was built. The first epochs may
    freeze the backbone: build it for the phase at hand (a parameter broadcast) instead of one
    wrapper with find_unused_parameters=True, whose search for parameters without a gradient costs
    an autograd traversal every step of the run (and a warning each time it finds none)."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel) or getattr(model, "built_frozen", False) == frozen:
        return model  # accelerate's wrapper is built before anything is frozen
    kwargs = accelerator.ddp_handler.to_kwargs() if accelerator.ddp_handler is not None else {}
    rebuilt = torch.nn.parallel.DistributedDataParallel(model.module, device_ids=model.device_ids,
                                                        output_device=model.output_device, **kwargs)
    rebuilt.built_frozen = frozen
    # what save_state/load_state see: the wrapper on GPUs; on CPUs accelerate keeps the inner module
    accelerator._models = [rebuilt if m is model else m for m in accelerator._models]
    return rebuilt


def _train_epochs(cfg: Config, loop: Loop, setup: Setup, state: dict, save) -> tuple[dict | None, str | None]:
    """The epochs still to run: train, evaluate, record, checkpoint. (final evaluation, stop reason)"""
    accelerator, watch, train_dl = loop.accelerator, loop.watch, setup.train_dl
    final, stop, first_epoch, history = None, None, state["epoch"], state["history"]
    with watch.signals():
        for epoch in range(first_epoch, cfg.train.epochs):
            batches_done = state["batches_done"] if epoch == first_epoch else 0
            set_seed(cfg.train.seed + epoch)  # shuffling and augmentation depend on seed and epoch alone
            train_dl.set_epoch(epoch)
            frozen = epoch < cfg.train.freeze_epochs
            set_backbone_frozen(accelerator.unwrap_model(loop.model), frozen)
            loop.model = setup.model = fit_ddp(accelerator, loop.model, frozen)
            watch.start(state["train_seconds"])
            result = train_one_epoch(loop, train_dl, epoch, frozen, batches_done,
                                     state["partial"] if batches_done else (0.0, 0))
            train_time, stop = watch.seconds(), result["stop"]
            if stop == "signal":  # preempted: save where we are, finish nothing else
                state["train_seconds"] += train_time
                watch.raise_stopped(save(f"epoch_{epoch:03d}_batch_{result['batches_done']:06d}", epoch=epoch,
                                         batches_done=result["batches_done"], partial=result["partial"]))
            final = evaluate(loop.model, setup.val_dl, accelerator, setup.mean, setup.std)
            epoch_seconds = watch.seconds()
            state["train_seconds"] += epoch_seconds
            done = result["batches_done"]
            record = {"epoch": epoch + 1 if done == len(train_dl) else round(epoch + done / len(train_dl), 3),
                      "lr": result["lr"], "train_loss": result["train_loss"], "val_loss": final["val_loss"],
                      "val_acc": final["val_acc"], "frozen": frozen, "epoch_seconds": epoch_seconds,
                      "train_images_per_s": result["train_images"] / train_time}
            history.append(record)
            accelerator.log({f"epoch/{k}": record[k] for k in ("train_loss", "val_loss", "val_acc", "lr")},
                            step=loop.scheduler.steps)
            accelerator.print(report.epoch_line(record))
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs or stop == "budget":
                save(f"epoch_{epoch + 1:03d}", epoch=epoch + 1, batches_done=0, partial=(0.0, 0))
            if stop == "budget":
                accelerator.print(f"time budget of {cfg.train.time_budget_s:g} s spent: the schedule ended after "
                                  f"{record['epoch']:.2f} epochs ({loop.scheduler.steps} optimizer steps)")
                break
    return final, stop


def _finish(cfg: Config, accelerator: Accelerator, setup: Setup, final: dict, state: dict, run_info: dict,
            phases: Phases, drawer: Drawer) -> dict:
    """Every output of a finished run: figures (in the drawer), predictions, model/, then metrics.json."""
    classes, names = setup.source.classes, class_display_names(setup.source.classes)
    ids = samples(setup.val_ds)[0]
    metrics = report.metrics(state["history"], final, classes, state["train_seconds"], run_info, ids)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(cfg.output_dir)
        with phases("final_outputs"):
            drawer.submit("final", metrics=metrics, final=final, names=names)
            report.write_final(out, metrics, final, accelerator.unwrap_model(setup.model), classes, names, cfg, ids)
            drawer.wait()
        report.write_metrics(out, metrics)  # last: a run is finished when its metrics.json exists
    accelerator.end_training()
    return metrics
