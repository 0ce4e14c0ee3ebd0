"""One arm, end to end: settings -> data -> model -> epochs -> outputs.

    run(load_config("configs/pretrained.yaml"))      # what `run_transfer.py` calls

The folder is locked for the run's lifetime (a second run into it is refused); a fresh run
never trains over another, and a resumed one only continues with its own settings.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from accelerate import Accelerator

from .config import Config, flat_config, to_dict
from .data.loaders import class_display_names, samples
from .errors import OutputError
from .files import versions
from .records import LrFindRecord, RunMetrics, is_finished, read_metrics, write_metrics
from .results import outputs
from .results.drawer import Drawer
from .training import checkpoint, rundir
from .training.accel import device_name, make_accelerator, peak_memory_mb, resolve_precision
from .training.checkpoint import TrainerState
from .training.loop import evaluate, train_epochs
from .training.metrics import Evaluation, brier_score, calibration_error, log_loss, per_class_accuracy
from .training.lr_find import find_lr
from .training.lr_find import line as lr_find_line
from .training.optim import OneCycle, group_scales
from .training.phases import Phases
from .training.setup import Setup, build
from .training.step import Loop
from .training.watch import Watch


def run(cfg: Config, phases: Phases | None = None) -> RunMetrics:
    """Train and evaluate as `cfg` says; write every output into `cfg.output_dir`; its metrics."""
    phases = phases or Phases()
    out = Path(cfg.output_dir)
    precision = resolve_precision(cfg.train.mixed_precision)
    accelerator = make_accelerator(cfg, out, precision)
    with rundir.locked(out, hold=accelerator.is_main_process):
        if is_finished(out) and cfg.train.resume is not None:
            accelerator.print(f"{out} holds a finished run; nothing to resume")
            return read_metrics(out)
        resume_from, state = starting_state(cfg, out, accelerator, precision)
        setup = build(cfg, accelerator, phases, out, resume_from)
        peak_lr = learning_rate(cfg, setup, state, phases)
        scheduler = OneCycle(setup.trainer.optimizer.optimizer, peak_lr or 0.0,  # None: evaluate-only, nothing found
                             cfg.train.epochs * setup.steps_per_epoch, cfg.train.time_budget_s)
        # the weight average too: a resume continues it exactly
        saved = checkpoint.Checkpointed(setup.trainer, tuple(o for o in (scheduler, setup.ema) if o is not None))
        saved.register()
        if resume_from is not None:
            checkpoint.load_checkpoint(accelerator, resume_from)  # weights, optimizer, schedule, RNGs
        loop = Loop(setup.trainer, scheduler, Watch(accelerator), bool(cfg.train.time_budget_s), state.lrs, setup.ema)
        write_start(cfg, accelerator, out, setup, phases)
        # figures are drawn in a child process while training runs, forked before the epochs start
        # their loader workers (with optim.lr=find the range test has started them already: the
        # child inherits their pipes and never uses them)
        with Drawer(accelerator.is_main_process, out=out, train_ds=setup.train_ds, val_ds=setup.val_ds,
                    classes=setup.source.classes) as drawer, checkpoint.Writer() as writer:
            if accelerator.is_main_process:
                drawer.submit("samples")
            accelerator.init_trackers("logs", config=flat_config(to_dict(cfg)))
            startup_seconds = phases.since_launch()  # data checked, model built, loaders ready
            final, stop = train_epochs(cfg, loop, setup, state,
                                       functools.partial(save, cfg, saved, setup, phases, writer),
                                       functools.partial(checkpoint.restate_checkpoint, accelerator, writer=writer))
            writer.wait()  # the last checkpoint is complete before model/ and metrics.json
            phases.add("checkpoint_wait", writer.waited)
            phases.add("epoch_start", loop.epoch_start_seconds)
            if loop.watch.first_check_seconds is not None:
                phases.add("first_step", loop.watch.first_check_seconds)
            if final is None or cfg.model.export == "ema":  # evaluate-only, resumed after the end, or the average's
                with phases("final_evaluation"):
                    final = evaluate(exported(cfg, setup), setup.val_dl, accelerator, setup.trainer.objective.normalize)
            metrics = record(setup, state, loop, final, peak_lr, precision, startup_seconds, stop, phases)
            return finish(cfg, accelerator, setup, final, metrics, phases, drawer)


def record(setup: Setup, state: TrainerState, loop: Loop, final: Evaluation, peak_lr: float | None,
           precision: str, startup_seconds: float, stop: str | None, phases: Phases) -> RunMetrics:
    """The finished run's metrics.json record: every field, here."""
    accelerator, optimizer, history = setup.trainer.accelerator, setup.trainer.optimizer, state.history
    classes = setup.source.classes
    best, chosen_on = outputs.best_epoch(history)
    return RunMetrics(
        history=history, best_val_acc=best.val_acc if best else final.val_acc, best_epoch=best.epoch if best else 0,
        best_chosen_on=chosen_on, final_val_acc=final.val_acc, final_val_loss=final.val_loss,
        final_val_ece=calibration_error(final.confidence, final.predictions, final.references),
        final_val_nll=log_loss(final.true_probability),
        final_val_brier=brier_score(final.true_probability, final.squared_probabilities),
        final_ema_val_acc=history[-1].ema_val_acc if history else None, val_samples=final.val_samples,
        train_seconds=state.train_seconds,
        per_class_val_acc=dict(zip(classes, per_class_accuracy(final.predictions, final.references, len(classes)))),
        val_subsets=outputs.subset_scores(samples(setup.val_ds)[0], final),
        num_processes=accelerator.num_processes, device=str(accelerator.device),
        device_name=device_name(accelerator.device), peak_device_memory_mb=peak_memory_mb(accelerator.device),
        mixed_precision=precision,
        steps_per_epoch=setup.steps_per_epoch, optimizer_steps=loop.scheduler.steps,
        startup_seconds=startup_seconds, decoded_cache=setup.cached, stopped_by_time_budget=stop == "budget",
        skipped_images=sum(setup.skipped.values()), train_samples=len(setup.train_ds), resumes=state.resumes,
        lr_per_step=loop.lrs, weights=setup.weights, peak_lr=peak_lr,
        peak_lr_per_group={name: (peak_lr or 0.0) * scale for name, scale in group_scales(optimizer).items()},
        lr_find=state.lr_find, objective=setup.trainer.objective.describe, speed_settings=setup.speed_settings,
        phase_seconds=phases.seconds, versions=versions())


def exported(cfg: Config, setup: Setup):
    """What model/ holds and the final scores are of: the trained weights, or their average."""
    return setup.ema.module if cfg.model.export == "ema" else setup.trainer.module


def starting_state(cfg: Config, out: Path, accelerator: Accelerator,
                   precision: str) -> tuple[Path | None, TrainerState]:
    """The checkpoint to resume from (None: a fresh run) and the trainer state to start with.
    Checked before any work: a run resumed with other settings, another process count or another
    precision would be a run that never existed."""
    resume_from = checkpoint.resolve_resume(cfg.train.resume, out)
    execution = {"num_processes": accelerator.num_processes, "mixed_precision": precision}
    if resume_from is None:
        rundir.check_fresh(out, resumable=cfg.train.resume == "auto")
        return None, TrainerState(config=to_dict(cfg), **execution)
    changed = rundir.check_resume(checkpoint.saved_config(resume_from, out), to_dict(cfg), out)
    saved = TrainerState.read(resume_from)
    checkpoint.check_same_execution(saved, resume_from, accelerator.num_processes, precision)
    resumes = [*saved.resumes, {"from": str(resume_from), "changed": {k: list(v) for k, v in changed.items()}}]
    accelerator.print(f"resumed from {resume_from}" + "".join(f"; {k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    return resume_from, dataclasses.replace(saved, config=to_dict(cfg), resumes=resumes, **execution)


def learning_rate(cfg: Config, setup: Setup, state: TrainerState, phases: Phases) -> float | None:
    """The one-cycle peak: `optim.lr`, or found by the LR range test (kept in `state`, so that a
    resumed run reuses it); None for an evaluate-only run that was to find it."""
    if cfg.optim.lr != "find":
        return cfg.optim.lr
    if state.lr_find is None and cfg.train.epochs:
        with phases("lr_find"):
            state.lr_find = find_lr(setup.trainer, setup.train_dl, cfg.train.epochs, cfg.train.frozen_epochs,
                                    cfg.optim.name, cfg.optim.lr_find_rule)
        setup.trainer.accelerator.print(lr_find_line(state.lr_find))
    return state.lr_find.suggested_lr if state.lr_find else None


def save(cfg: Config, saved: checkpoint.Checkpointed, setup: Setup, phases: Phases, writer: checkpoint.Writer,
         name: str, state: TrainerState) -> Path:
    """A checkpoint named `name` holding `state` (train_epochs calls it with those two): an
    epoch's in the background, a stop signal's (`_batch_` in its name) inline, after the write in
    flight, before the run stops."""
    with phases("checkpoints"):
        background = "_batch_" not in name
        if not background:
            writer.wait()
        return checkpoint.save_checkpoint(saved, Path(cfg.output_dir), name, state,
                                          keep=cfg.train.keep_checkpoints, size=setup.checkpoint_size,
                                          writer=writer if background else None)


def write_start(cfg: Config, accelerator: Accelerator, out: Path, setup: Setup, phases: Phases) -> None:
    """config.yaml and the records of which images are used, before the first step."""
    if not accelerator.is_main_process:
        return
    try:
        with phases("start_outputs"):
            outputs.write_start(out, cfg, setup.source.records())
    except OutputError as e:  # nothing trained yet: a setting to change, like a bad key
        raise OutputError(str(e), exit_code=2) from None


def finish(cfg: Config, accelerator: Accelerator, setup: Setup, final: Evaluation, metrics: RunMetrics, phases: Phases,
           drawer: Drawer) -> RunMetrics:
    """Every output of a finished run: figures (in the drawer), predictions, model/, then metrics.json."""
    classes, names = setup.source.classes, class_display_names(setup.source.classes)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(cfg.output_dir)
        with phases("final_outputs"):
            drawer.submit("final", metrics=metrics, final=final, names=names)
            outputs.write_final(out, metrics, final, exported(cfg, setup), classes, names, cfg,
                                samples(setup.val_ds)[0])
            drawer.wait()
        write_metrics(out, metrics)  # last: a run is finished when its metrics.json exists
    accelerator.end_training()
    return metrics


def lr_range_test(cfg: Config, plot: Path) -> LrFindRecord:
    """`scripts/lr_find.py`: only the LR range test, its plot written to `plot`; no run folder."""
    from .results.plots import plot_lr_find  # matplotlib: the run itself draws in the drawer process

    accelerator = make_accelerator(cfg, None, resolve_precision(cfg.train.mixed_precision))
    setup = build(cfg, accelerator, Phases())
    found = find_lr(setup.trainer, setup.train_dl, cfg.train.epochs, cfg.train.frozen_epochs, cfg.optim.name,
                    cfg.optim.lr_find_rule)
    accelerator.print(lr_find_line(found))
    if accelerator.is_main_process:
        plot_lr_find(found, plot)
    return found
