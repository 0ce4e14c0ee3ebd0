"""The epochs: train, evaluate, record, checkpoint. One `Accelerator` owns device, precision,
processes and accumulation (accel.py); the step is step.py's; the schedule is optim.py's."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..config import Config
from ..data.transforms import Normalize
from .checkpoint import TrainerState
from ..records import EpochRecord
from .metrics import Evaluation, accuracy
from .setup import Setup
from .step import Loop

LOG_EVERY = 10  # optimizer steps between syncs: tracker, progress bar, stop/NaN/budget checks
PROCESS_STRIDE = 1_000_003  # the seeds of two processes lie this far apart: no (process, epoch) pair shares one


def epoch_seed(seed: int, epoch: int, process_index: int) -> int:
    """What one process's epoch draws its augmentation from (crops, flips, mixing, the loader
    workers' seeds): each process its own, so N processes see N times the variety per global
    batch, and process 0 draws as a one-process run does. The shuffle is not drawn from it:
    accelerate's seedable sampler seeds itself with train.seed + epoch on every process alike, so
    the shards still split one permutation."""
    return seed + epoch + PROCESS_STRIDE * process_index


def check_due(steps: int) -> bool:
    """Sync after these optimizer steps: early ones give the time budget a first time per step."""
    return steps % LOG_EVERY == 0 or steps in (1, 2, 4, 8)


def epoch_line(record: EpochRecord) -> str:
    """The article's per-epoch line."""
    return (f"Epoch [{record.epoch}], last_lr: {record.lr:.5f}, train_loss: {record.train_loss:.4f}, "
            f"val_loss: {record.val_loss:.4f}, val_acc: {record.val_acc:.4f}")


def train_one_epoch(loop: Loop, loader, epoch: int, batches_done: int = 0, partial=(0.0, 0)) -> dict:
    """Train until the loader ends or the watch says stop; `batches_done`/`partial` continue a
    half-finished epoch. Returns the epoch's mean loss and where it stopped.

    A half-finished epoch is continued by passing over its first `batches_done` batches without
    reading, decoding or training on them (the loader's `skip_first`): the pass draws its crops and
    flips at its start as the first time did, and the objective draws each skipped batch's mixing
    numbers again, so the rest of the epoch sees exactly the same batches."""
    trainer, scheduler, watch = loop.trainer, loop.scheduler, loop.watch
    accelerator = trainer.accelerator
    trainer.objective.set_epoch(epoch)
    # the rate the last optimizer step used (the article's last_lr); a resume after the epoch's last batch takes none
    lr = loop.lrs[-1] if batches_done and loop.lrs else scheduler.last_lr
    mine = accelerator.is_main_process  # a half epoch's global totals restart on one process only
    loss_sum = torch.tensor(float(partial[0]) if mine else 0.0, device=accelerator.device)
    seen = torch.tensor(float(partial[1]) if mine else 0.0, device=accelerator.device)
    batch_index, stop = 0, None
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    for batch in bar:
        if started is not None:  # loader start to the first batch (phase_seconds: epoch_start)
            loop.epoch_start_seconds += time.perf_counter() - started
            started = None
        if batch_index < batches_done:  # skipped, undecoded (see above)
            trainer.objective.replay(batch)
            batch_index += 1
            continue
        loss = trainer.step(batch)
        batch_index += 1
        watch.observe(loss, batch_index)
        loss_sum += loss.detach().float() * len(batch["labels"])
        seen += len(batch["labels"])
        if accelerator.sync_gradients:
            lr = scheduler.last_lr  # the (head's) rate this optimizer step used (the article's last_lr)
            loop.lrs.append(lr)
            scheduler.step()
            if loop.ema is not None:  # with timm's warm-up: early steps weigh the latest weights more
                loop.ema.update(trainer.module, step=scheduler.steps)
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
def evaluate(model, loader, accelerator, normalize: Normalize,
             stop: Callable[[], bool] | None = None) -> Evaluation | None:
    """Every validation image exactly once across processes; loss averaged per image. Results stay
    on the device until the end: no host sync per batch. None when `stop()` (asked every LOG_EVERY
    batches, the same batches on every process) says so."""
    model.eval()
    gathered = []
    for index, batch in enumerate(tqdm(loader, desc="eval", leave=False,
                                       disable=not accelerator.is_local_main_process)):
        if stop is not None and index % LOG_EVERY == 0 and index and stop():
            return None
        logits = model(normalize(batch["pixel_values"])).float()
        loss = F.cross_entropy(logits, batch["labels"], reduction="none")  # plain, whatever training optimises
        probabilities = logits.softmax(dim=1)
        confidence, prediction = probabilities.max(dim=1)
        true = probabilities.gather(1, batch["labels"].view(-1, 1)).view(-1)
        # gather_for_metrics drops the samples duplicated to even out the last batch across processes
        gathered.append(accelerator.gather_for_metrics((prediction, batch["labels"], loss, confidence, true,
                                                        probabilities.square().sum(dim=1))))
    preds, labels, losses, confidence, true, squared = (torch.cat(ts).cpu().numpy() for ts in zip(*gathered))
    return Evaluation(val_loss=float(losses.mean()), val_acc=accuracy(preds, labels), val_samples=len(labels),
                      predictions=preds, references=labels, confidence=confidence, true_probability=true,
                      squared_probabilities=squared)


def train_epochs(cfg: Config, loop: Loop, setup: Setup, state: TrainerState,
                 save: Callable[[str, TrainerState], object],
                 restate: Callable[[object, TrainerState], None]) -> tuple[Evaluation | None, str | None]:
    """The epochs still to run: train, checkpoint, evaluate, record. (last evaluation, stop reason)
    `state` is updated in place (history, lrs, seconds); `save(name, state)` writes a checkpoint and
    returns its folder, `restate(folder, state)` replaces the trainer state in one written before.

    An epoch's checkpoint is written when its training ends, before the evaluation (which a stop
    signal interrupts: on a slow machine it takes minutes, more than a cluster's grace time), as
    "trained, not evaluated"; the evaluated state replaces that once the evaluation is done. A run
    resumed from the first evaluates the epoch and goes on, as the uninterrupted run did."""
    trainer, watch, train_dl = loop.trainer, loop.watch, setup.train_dl
    accelerator = trainer.accelerator
    final, stop, first_epoch = None, None, state.epoch
    with watch.signals():
        if watch.signal_name is not None:  # heard during start-up (stops.listening): nothing trained to save
            watch.raise_stopped_in_startup(state.resumes[-1]["from"] if state.resumes else None)
        for epoch in range(first_epoch, cfg.train.epochs):
            batches_done = state.batches_done if epoch == first_epoch else 0
            set_seed(epoch_seed(cfg.train.seed, epoch, accelerator.process_index))  # seed, epoch and process alone
            train_dl.set_epoch(epoch)
            if batches_done:
                train_dl.skip_first(batches_done)
            frozen = epoch < cfg.train.frozen_epochs
            trainer.set_phase(frozen)
            watch.start(state.train_seconds)
            result = train_one_epoch(loop, train_dl, epoch, batches_done, state.partial if batches_done else (0.0, 0))
            train_time, stop, done = watch.seconds(), result["stop"], result["batches_done"]
            trained = dataclasses.replace(state.at(epoch, done, result["partial"]),
                                          train_seconds=state.train_seconds + train_time)
            if stop == "signal":  # preempted: save where we are, finish nothing else
                watch.raise_stopped(save(f"epoch_{epoch:03d}_batch_{done:06d}", trained))
            due = (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs
            # a time budget's last epoch is saved once evaluated: resumed unevaluated, it would train on
            early = due and done == len(train_dl) and stop != "budget"
            saved = save(f"epoch_{epoch + 1:03d}", trained) if early else None
            evaluations = evaluate_all(loop, setup)
            if evaluations is None:  # a stop signal during the evaluation
                watch.raise_stopped(saved or save(f"epoch_{epoch:03d}_batch_{done:06d}", trained))
            final, chooser, averaged = evaluations
            epoch_seconds = watch.seconds()
            state.train_seconds += epoch_seconds
            record = EpochRecord(
                epoch=epoch + 1 if done == len(train_dl) else round(epoch + done / len(train_dl), 3), lr=result["lr"],
                train_loss=result["train_loss"], val_loss=final.val_loss, val_acc=final.val_acc, frozen=frozen,
                epoch_seconds=epoch_seconds, train_images_per_s=result["train_images"] / train_time,
                select_acc=None if chooser is None else chooser.val_acc,
                select_loss=None if chooser is None else chooser.val_loss,
                ema_val_acc=None if averaged is None else averaged.val_acc,
                ema_val_loss=None if averaged is None else averaged.val_loss)
            state.history.append(record)
            accelerator.log({f"epoch/{k}": getattr(record, k) for k in ("train_loss", "val_loss", "val_acc", "lr")},
                            step=loop.scheduler.steps)
            accelerator.print(epoch_line(record))
            if saved is not None:
                restate(saved, state.at(epoch + 1))
            elif due or stop == "budget":
                save(f"epoch_{epoch + 1:03d}", state.at(epoch + 1))
            if stop == "budget":
                accelerator.print(f"time budget of {cfg.train.time_budget_s:g} s spent: the schedule ended after "
                                  f"{record.epoch:.2f} epochs ({loop.scheduler.steps} optimizer steps)")
                break
    return final, stop


def evaluate_all(loop: Loop, setup: Setup) -> tuple[Evaluation, Evaluation | None, Evaluation | None] | None:
    """The epoch's evaluations: validation, the selection split's, the weight average's; None when
    a stop signal came during them."""
    trainer = loop.trainer
    model = trainer.evaluation_model
    wanted = ((model, setup.val_dl), (model, setup.select_dl),
              (None if loop.ema is None else loop.ema.module, setup.val_dl))
    found = []
    for model, loader in wanted:
        if model is None or loader is None:
            found.append(None)
            continue
        found.append(evaluate(model, loader, trainer.accelerator, trainer.objective.normalize, loop.watch.stop_requested))
        if found[-1] is None:
            return None
    return tuple(found)
