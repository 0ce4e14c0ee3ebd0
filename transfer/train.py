"""The experiment: one `Accelerator` owns device, mixed precision, processes and gradient
accumulation; everything else is a plain function of data (see data, model, optim, report)."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint, report
from .config import Config, ConfigError, to_dict
from .data import build_datasets, class_display_names, collate, normalize, resolve_root
from .metrics import accuracy
from .model import build_model, data_config, set_backbone_frozen, train_mode
from .optim import build_optimizer, build_scheduler

LOG_EVERY = 10  # optimizer steps between tracker/progress-bar updates (each costs a device sync)


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


def make_loaders(cfg: Config, train_ds, val_ds, num_processes: int) -> tuple[DataLoader, DataLoader]:
    workers = cfg.data.num_workers
    common = dict(num_workers=workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                  persistent_workers=workers > 0)
    # Drop the ragged last batch (a batch of one breaks batch norm) unless that is all there is.
    drop_last = len(train_ds) >= cfg.train.batch_size * num_processes
    train_dl = DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=drop_last, **common)
    val_dl = DataLoader(val_ds, batch_size=cfg.train.batch_size * 2, shuffle=False, **common)
    return train_dl, val_dl


def train_one_epoch(model, loader, optimizer, scheduler, accelerator, cfg: Config, mean, std, frozen: bool,
                    step: int) -> dict:
    train_mode(accelerator.unwrap_model(model), frozen)
    lr = scheduler.get_last_lr()[0]
    loss_sum = torch.zeros((), device=accelerator.device)
    seen = torch.zeros((), device=accelerator.device)
    bar = tqdm(loader, desc="train", leave=False, disable=not accelerator.is_local_main_process)
    for batch in bar:
        with accelerator.accumulate(model):
            labels = batch["labels"]
            loss = F.cross_entropy(model(normalize(batch["pixel_values"], mean, std)), labels)  # logits, no sigmoid
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.optim.grad_clip is not None:
                accelerator.clip_grad_value_(model.parameters(), cfg.optim.grad_clip)  # unscales fp16 first
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            lr = scheduler.get_last_lr()[0]  # the rate this optimizer step used (the article's last_lr)
            scheduler.step()
            step += 1
            if step % LOG_EVERY == 0:
                stats = {"train/loss": loss.item(), "train/lr": lr}
                accelerator.log(stats, step=step)
                bar.set_postfix(loss=f"{stats['train/loss']:.3f}")
        loss_sum += loss.detach().float() * len(labels)
        seen += len(labels)
    loss_sum, seen = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(seen, "sum")
    return {"train_loss": (loss_sum / seen.clamp(min=1)).item(), "train_images": int(seen.item()), "step": step,
            "lr": lr}


@torch.inference_mode()
def evaluate(model, loader, accelerator, mean, std) -> dict:
    """Every validation image exactly once across processes; loss averaged per image."""
    model.eval()
    gathered = []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process):
        logits = model(normalize(batch["pixel_values"], mean, std)).float()
        loss = F.cross_entropy(logits, batch["labels"], reduction="none")
        confidence, prediction = logits.softmax(dim=1).max(dim=1)
        # gather_for_metrics drops the samples duplicated to even out the last batch across processes
        gathered.append([t.cpu() for t in accelerator.gather_for_metrics((prediction, batch["labels"], loss,
                                                                           confidence))])
    preds, labels, losses, confidence = (torch.cat(ts).numpy() for ts in zip(*gathered))
    return {"val_loss": float(losses.mean()), "val_acc": accuracy(preds, labels), "val_samples": len(labels),
            "predictions": preds, "references": labels, "confidence": confidence}


def run(cfg: Config) -> dict:
    """Train and evaluate as `cfg` says; write every output into `cfg.output_dir`; return metrics."""
    out = Path(cfg.output_dir)
    precision = resolve_precision(cfg.train.mixed_precision)
    accelerator = Accelerator(
        cpu=not use_cuda() and not torch.backends.mps.is_available(),  # lets torchrun on CPUs use gloo
        mixed_precision=precision, gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=None if cfg.train.log_with == "none" else cfg.train.log_with, project_dir=str(out),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # DDP must tolerate parameters that get no gradient while the backbone is frozen.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.train.freeze_epochs > 0)])
    resume_from = checkpoint.resolve_resume(cfg.train.resume, out)
    if resume_from is None:
        report.check_fresh_output_dir(out, resumable=cfg.train.resume == "auto")
    elif (out / "metrics.json").is_file() and cfg.train.resume == "auto":
        accelerator.print(f"{out} holds a finished run; nothing to resume (delete metrics.json to redo the end)")
        return report.read_metrics(out)

    set_seed(cfg.train.seed)  # before the model's random init
    with accelerator.main_process_first():  # one download / cache build, then the others reuse it
        root = resolve_root(cfg.data)
        train_ds, val_ds, classes = build_datasets(cfg.data, root)
    model = build_model(cfg.model, len(classes)).to(memory_format=torch.channels_last)
    mean, std = data_config(model).values()
    train_dl, val_dl = make_loaders(cfg, train_ds, val_ds, accelerator.num_processes)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)
    steps_per_epoch = math.ceil(len(train_dl) / cfg.train.grad_accum_steps)  # per process, after sharding
    scheduler = build_scheduler(optimizer.optimizer, cfg.optim.lr, cfg.train.epochs * steps_per_epoch)
    accelerator.register_for_checkpointing(scheduler)

    history, start_epoch, train_seconds = [], 0, 0.0
    if resume_from is not None:
        state = checkpoint.load_checkpoint(accelerator, resume_from)
        history, start_epoch, train_seconds = state["history"], state["epoch"], state["train_seconds"]
        accelerator.print(f"resumed from {resume_from} (epoch {start_epoch} done)")
    if accelerator.is_main_process:
        report.write_start(out, cfg, train_ds, classes)
    accelerator.init_trackers("logs", config=report.flat_config(to_dict(cfg)))

    final = None
    for epoch in range(start_epoch, cfg.train.epochs):
        set_seed(cfg.train.seed + epoch)  # shuffling and augmentation depend on the epoch alone: exact resume
        train_dl.set_epoch(epoch)
        frozen = epoch < cfg.train.freeze_epochs
        set_backbone_frozen(accelerator.unwrap_model(model), frozen)
        start = time.perf_counter()
        result = train_one_epoch(model, train_dl, optimizer, scheduler, accelerator, cfg, mean, std, frozen,
                                 step=epoch * steps_per_epoch)
        train_time = time.perf_counter() - start
        final = evaluate(model, val_dl, accelerator, mean, std)
        record = {"epoch": epoch + 1, "lr": result["lr"], "train_loss": result["train_loss"],
                  "val_loss": final["val_loss"], "val_acc": final["val_acc"], "frozen": frozen,
                  "epoch_seconds": time.perf_counter() - start,
                  "train_images_per_s": result["train_images"] / train_time}
        history.append(record)
        train_seconds += record["epoch_seconds"]
        accelerator.log({f"epoch/{k}": record[k] for k in ("train_loss", "val_loss", "val_acc", "lr")},
                        step=result["step"])
        accelerator.print(report.epoch_line(record))
        checkpoint.save_checkpoint(accelerator, out, epoch + 1,
                                   {"history": history, "train_seconds": train_seconds},
                                   keep=cfg.train.keep_checkpoints)
    if final is None:  # evaluate-only run, or resumed after the last epoch
        final = evaluate(model, val_dl, accelerator, mean, std)

    metrics = report.metrics(history, final, classes, train_seconds,
                             {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
                              "mixed_precision": precision, "steps_per_epoch": steps_per_epoch})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        report.write_final(out, metrics, final, accelerator.unwrap_model(model), classes,
                           class_display_names(classes), cfg, val_ds, steps_per_epoch)
    accelerator.end_training()
    return metrics
