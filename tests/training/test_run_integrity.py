"""A run's record is how it was made: equal-time schedules that finish, resumes that cannot mix
settings, one run per folder, and the promises of the README that only a real run can break."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import free_port, run_command, sigterm_at_batch, start_command, tiny_config
from transfer.cli import main
from transfer.config import OptimConfig, load_config
from transfer.training.optim import OneCycle, build_optimizer, one_cycle
from transfer.run import run
from transfer.training.loop import LOG_EVERY, check_due

FINAL_LR = 3e-3 / 25 / 1e4  # the smoke config's one-cycle end: peak / 25 / 1e4


# ---------------------------------------------------------------------------- equal time

def simulate(step_seconds, budget, total_steps=100_000, eval_seconds=0.0, steps_per_epoch=None, warmup_seconds=0.0):
    """Drive the schedule as the loop does: a synced check (and re-plan) when `check_due`, on a
    clock that advances by `step_seconds` (plus an evaluation per epoch, and `warmup_seconds` for
    the first step)."""
    optimizer = build_optimizer(OptimConfig(lr=1e-3), [torch.zeros(1, requires_grad=True)])
    schedule = OneCycle(optimizer, 1e-3, total_steps, budget)
    clock, lrs = 0.0, []
    while not schedule.finished:
        lrs.append(schedule.get_last_lr()[0])
        clock += step_seconds + (warmup_seconds if schedule.steps == 0 else 0.0)
        schedule.step()
        if steps_per_epoch and schedule.steps % steps_per_epoch == 0:
            clock += eval_seconds
        if check_due(schedule.steps):
            schedule.plan(clock)
    return lrs, clock


@pytest.mark.parametrize("step_seconds", [0.01, 0.7, 15.0, 45.0])
def test_budget_schedule_ends_with_the_budget_at_any_step_time(step_seconds):
    lrs, clock = simulate(step_seconds, budget=60.0)
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1e4, rel=1e-9)  # the last step used the final value
    if len(lrs) >= 3:  # (two 45 s steps: the first, unplanned, and the last)
        assert max(lrs) > 0.3e-3  # the cycle was squeezed, not cut: it passed near its peak
    assert abs(clock - 60.0) <= step_seconds + 1e-9  # ends when the budget does, within one step


def test_budget_schedule_with_evaluations_stays_within_a_check_interval():
    lrs, clock = simulate(0.05, budget=30.0, eval_seconds=2.0, steps_per_epoch=37)
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1e4, rel=1e-9)
    assert clock <= 30.0 + LOG_EVERY * 0.05 + 2.0


def test_a_slow_first_step_does_not_squeeze_the_cycle():
    # a first step of 2 s (compilation, DDP set-up) and then 0.1 s steps: about 40 steps fit 6 s
    lrs, clock = simulate(0.1, budget=6.0, warmup_seconds=1.9)
    assert len(lrs) >= 35 and max(lrs) > 0.9e-3 and lrs[-1] == pytest.approx(1e-3 / 25 / 1e4, rel=1e-9)
    assert clock <= 6.0 + 0.1 + 1e-9


def test_a_generous_budget_leaves_the_step_schedule_alone():
    lrs, _ = simulate(0.01, budget=1e6, total_steps=50)
    assert lrs == pytest.approx([one_cycle(i, 50, 1e-3)[0] for i in range(50)], rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_equal_time_run_anneals_fully_with_slow_steps(image_folder, tmp_path, processes):
    # every step takes 0.5 s on the budget clock (tests/fake_clock.py), at any machine speed: one
    # check interval (10 steps) is most of the 6 s budget, where the old schedule stopped unannealed
    # at the first check past it. 12 steps fit; the cycle must fit them and end at its final value.
    out = tmp_path / "budget"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(free_port()), "tests/fake_clock.py", "0.5", "run_transfer.py",
               "--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}",
               "train.epochs=100", "train.time_budget_s=6", "train.batch_size=4"]
    result = run_command(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": str(2 // processes)})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_by_time_budget"] and metrics["num_processes"] == processes
    lrs = metrics["lr_per_step"]
    assert lrs[-1] == pytest.approx(FINAL_LR, rel=1e-6) and max(lrs) > 0.9 * 3e-3  # warmed up, then annealed
    assert 11 <= metrics["optimizer_steps"] <= 13  # the budget used, not less: 6 s / 0.5 s
    assert 6 - 0.5 <= metrics["train_seconds"] <= 6 + 0.5


# ---------------------------------------------------------------------------- resume

@pytest.fixture(scope="module")
def reference(image_folder, tmp_path_factory):
    """3 uninterrupted epochs, every checkpoint kept."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run(tiny_config(image_folder, out, "train.epochs=3", "train.keep_checkpoints=5"))
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    return out


def killed_after_epoch_1(reference, folder):
    shutil.copytree(reference, folder)
    for name in ("epoch_002", "epoch_003"):
        shutil.rmtree(folder / "checkpoints" / name)
    shutil.rmtree(folder / "model")
    (folder / "metrics.json").unlink()
    return folder


def same_weights(a, b):
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_result_changing_settings_is_refused(reference, tmp_path, capsys):
    out = killed_after_epoch_1(reference, tmp_path / "run")
    before = (out / "config.yaml").read_text()
    code = main(["--config", str(out / "config.yaml"), f"output_dir={out}", "train.resume=auto", "optim.lr=0.05",
                 "train.batch_size=32"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "optim.lr 0.003 -> 0.05" in err and "train.batch_size 8 -> 32" in err
    assert "start a fresh run in another output_dir" in err
    assert (out / "config.yaml").read_text() == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_001"]


def test_resume_may_change_what_cannot_change_the_result(reference, tmp_path, capsys):
    out = killed_after_epoch_1(reference, tmp_path / "run")
    checkpoint = out / "checkpoints" / "epoch_001"
    code = main(["--config", str(out / "config.yaml"), f"output_dir={out}", f"train.resume={checkpoint}",
                 "train.keep_checkpoints=1",
                 "data.num_workers=1", "data.cache=memory"])
    assert code == 0
    assert f"resumed from {checkpoint}" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    (resume,) = metrics["resumes"]
    assert resume["from"] == str(checkpoint) and resume["changed"] == {
        "data.cache": ["auto", "memory"], "data.num_workers": [0, 1], "train.keep_checkpoints": [5, 1]}
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_003"]  # keep_checkpoints=1 deletes
    assert same_weights(out, reference)


def test_sigterm_mid_epoch_checkpoints_there_and_the_replay_is_exact(reference, image_folder, tmp_path, capsys,
                                                                    monkeypatch):
    from transfer.errors import Preempted

    sigterm_at_batch(monkeypatch, 9)  # 6 batches an epoch: the 9th is epoch 2, batch 3
    out = tmp_path / "run"
    cfg = tiny_config(image_folder, out, "train.epochs=3", "train.keep_checkpoints=5")
    with pytest.raises(Preempted):
        run(cfg)
    # the check after optimizer step 10 (epoch 2, batch 4) saw the signal
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_001", "epoch_001_batch_000004"]
    monkeypatch.undo()
    from accelerate.state import AcceleratorState
    from transfer.data.transforms import TrainTransform
    AcceleratorState._reset_state(reset_partial_state=True)
    decoded, transform = [], TrainTransform.__call__
    monkeypatch.setattr(TrainTransform, "__call__", lambda self, *a: (decoded.append(1), transform(self, *a))[1])
    run(load_config(out / "config.yaml", ["train.resume=auto"]))  # (its own output_dir)
    assert "resumed from" in capsys.readouterr().out
    assert same_weights(out, reference)  # batches 1-4 of epoch 2 passed over without training, 5-6 trained
    assert len(decoded) == (2 + 6) * 8  # and without decoding: epoch 2's last 2 batches and epoch 3's 6, of 8


def test_an_epoch_is_saved_before_its_evaluation_which_a_stop_signal_interrupts(reference, image_folder, tmp_path,
                                                                                 monkeypatch):
    from transfer.errors import Preempted
    from transfer.training import loop
    from transfer.training.checkpoint import TrainerState
    from transfer.training.watch import Watch

    monkeypatch.setattr(loop, "LOG_EVERY", 1)  # 2 validation batches: asked once an evaluation, after the 1st
    asked, stop_requested = [], Watch.stop_requested

    def signal_in_epoch_2_s_evaluation(self):
        asked.append(1)
        if len(asked) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return stop_requested(self)
    monkeypatch.setattr(Watch, "stop_requested", signal_in_epoch_2_s_evaluation)
    out = tmp_path / "run"
    with pytest.raises(Preempted, match="epoch_002"):
        run(tiny_config(image_folder, out, "train.epochs=3", "train.keep_checkpoints=5"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_001", "epoch_002"]
    evaluated, trained = (TrainerState.read(out / "checkpoints" / n) for n in ("epoch_001", "epoch_002"))
    assert (evaluated.epoch, evaluated.batches_done, len(evaluated.history)) == (1, 0, 1)  # restated once evaluated
    assert (trained.epoch, trained.batches_done, len(trained.history)) == (1, 6, 1)  # all trained, not evaluated
    monkeypatch.undo()
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    run(load_config(out / "config.yaml", ["train.resume=auto"]))
    assert same_weights(out, reference)
    ours, theirs = (json.loads((folder / "metrics.json").read_text())["history"] for folder in (out, reference))
    keys = ("epoch", "lr", "train_loss", "val_loss", "val_acc")
    assert [[h[k] for k in keys] for h in ours] == [[h[k] for k in keys] for h in theirs]


def test_a_stop_signal_during_start_up_stops_before_the_first_step(image_folder, tmp_path, monkeypatch, capsys):
    import transfer.run as run_module

    build = run_module.build
    monkeypatch.setattr(run_module, "build", lambda *a, **k: (os.kill(os.getpid(), signal.SIGUSR2), build(*a, **k))[1])
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    out = tmp_path / "run"
    try:
        code = main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}"])
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    err = capsys.readouterr().err
    assert code == 143 and err.splitlines()[-1].startswith(
        "stopped: stopped during start-up by SIGUSR2, before the first step: nothing to save (no checkpoint exists"), err
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_a_fused_optimizer_run_resumed_from_a_background_checkpoint_is_exact(image_folder, tmp_path, monkeypatch,
                                                                            name):
    # What a GPU run gets, on the CPU: the fused kernels over channels_last weights, and epoch
    # checkpoints staged to the host by the same code as from a GPU (checkpoint.to_host). A moment
    # staged contiguous for a channels_last weight is misread by the fused kernel after the resume.
    from accelerate.state import AcceleratorState
    from transfer.training import accel

    monkeypatch.setattr(accel, "backend_settings", lambda cuda: {"cudnn_benchmark": False, "tf32_matmul": False,
                                                                 "fused_optimizer": True})
    settings = ("train.epochs=2", "train.keep_checkpoints=5", f"optim.name={name}",
                *(("optim.lr=0.05",) if name == "sgd" else ()))
    reference = run(tiny_config(image_folder, tmp_path / "reference", *settings))
    assert reference.speed_settings["fused_optimizer"]
    AcceleratorState._reset_state(reset_partial_state=True)
    out = shutil.copytree(tmp_path / "reference", tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "epoch_002")
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    resumed = run(load_config(out / "config.yaml", ["train.resume=auto", f"output_dir={out}"]))
    assert [r["from"] for r in resumed.resumes] == [str(out / "checkpoints" / "epoch_001")]
    assert same_weights(out, tmp_path / "reference")


# ---------------------------------------------------------------------------- one run per folder

@pytest.mark.slow
def test_one_run_per_output_dir_and_the_lock_dies_with_its_run(image_folder, tmp_path, capsys):
    out = tmp_path / "busy"
    args = [f"data.root={image_folder}", f"output_dir={out}", "train.epochs=30"]
    first = start_command([sys.executable, "run_transfer.py", "--config", "configs/smoke.yaml", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    while not (out / "checkpoints" / "epoch_001").is_dir():
        assert first.poll() is None and time.monotonic() - start < 300, first.stderr.read()[-2000:]
        time.sleep(0.05)
    assert main(["--config", "configs/smoke.yaml", *args, "train.resume=auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"output_dir {out} is in use by another run (pid {first.pid} on " in err, err
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert main(["--config", "configs/smoke.yaml", *args, "train.resume=auto", "train.epochs=30"]) == 0


# ---------------------------------------------------------------------------- promises of the README

@pytest.mark.parametrize("epochs, freeze", [(1, 1), (2, 2)], ids=["frozen-epoch", "probe"])
def test_frozen_backbone_in_a_real_run(image_folder, tmp_path, epochs, freeze):
    import timm

    torch.manual_seed(5)
    weights = tmp_path / "w.safetensors"
    initial = timm.create_model("resnet10t", num_classes=3).state_dict()
    save_file(initial, str(weights))
    out = tmp_path / "run"
    run(tiny_config(image_folder, out, f"train.epochs={epochs}", f"train.freeze_epochs={freeze}",
                    "model.pretrained=true", f"model.weights_file={weights}", "model.head=keep"))
    trained = load_file(out / "model" / "model.safetensors")
    moved = sorted(k for k in initial if not torch.equal(initial[k], trained[k]))
    assert moved == ["fc.bias", "fc.weight"]  # weights, running means/vars and batch counts of the backbone held


def test_gradient_accumulation_takes_the_right_number_of_optimizer_steps(image_folder, tmp_path):
    # 48 images / batch 8 = 6 batches an epoch; 4 per optimizer step -> 2 steps (the last one short)
    metrics = run(tiny_config(image_folder, tmp_path / "accum", "train.grad_accum_steps=4"))
    assert metrics.steps_per_epoch == 2 and metrics.optimizer_steps == 4 == len(metrics.lr_per_step)
    assert metrics.lr_per_step[-1] == pytest.approx(FINAL_LR, rel=1e-6)


def test_breed_names_in_plots_and_model_config(image_folder, tmp_path, monkeypatch):
    root = tmp_path / "woof"
    for split in ("train", "val"):
        for shape, wnid in (("circle", "n02086240"), ("square", "n02087394")):
            shutil.copytree(image_folder / split / shape, root / split / wnid)
    from transfer.results.drawer import Drawer

    drawn, submit = {}, Drawer.submit  # the figures are drawn in a child process: catch what it is sent
    monkeypatch.setattr(Drawer, "submit", lambda self, name, **kw: (drawn.update(kw), submit(self, name, **kw)))
    run(tiny_config(root, tmp_path / "run", "train.epochs=0"))
    assert drawn["names"] == ["Shih-Tzu", "Rhodesian ridgeback"]
    assert (tmp_path / "run" / "plots" / "confusion.png").stat().st_size > 0
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["label_names"] == ["n02086240", "n02087394"]
    assert config["label_descriptions"] == {"n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback"}


def test_a_second_ctrl_c_quits_at_once():
    from types import SimpleNamespace

    from transfer.training.watch import Watch

    printed = []
    watch = Watch(SimpleNamespace(device="cpu", print=printed.append))
    with watch.signals():
        os.kill(os.getpid(), signal.SIGINT)
        assert watch.signal_name == "SIGINT" and "saving a checkpoint" in printed[0]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGUSR2"])
def test_a_cluster_s_warning_signals_ask_for_a_checkpoint_like_sigterm(name):
    # SLURM's --signal and submitit send SIGUSR1/SIGUSR2 ahead of a time limit or a preemption
    from types import SimpleNamespace

    from transfer.training.watch import Watch

    printed, before = [], signal.getsignal(getattr(signal, name))
    watch = Watch(SimpleNamespace(device="cpu", print=printed.append))
    with watch.signals():
        os.kill(os.getpid(), getattr(signal, name))
        assert watch.signal_name == name and "saving a checkpoint" in printed[0]
    assert signal.getsignal(getattr(signal, name)) == before  # put back as it was


# ---------------------------------------------------------------------------- resumes that the data or the clock could break

@pytest.mark.parametrize("setting, record", [("data.val_fraction=0.25", "val_split.json"),
                                             ("data.train_per_class=8", "train_subset.json")])
def test_resume_is_refused_when_the_images_used_changed(image_folder, tmp_path, capsys, setting, record):
    root = tmp_path / "data"
    shutil.copytree(image_folder / "train", root / "train")
    if "val_fraction" not in setting:
        shutil.copytree(image_folder / "val", root / "val")
    out = tmp_path / "run"
    run(tiny_config(root, out, "train.epochs=2", "train.keep_checkpoints=5", setting))
    (out / "metrics.json").unlink()  # as if killed after epoch 1
    shutil.rmtree(out / "checkpoints" / "epoch_002")
    saved = json.loads((out / record).read_text())
    used = saved["val"] if record == "val_split.json" else saved["train"]
    os.remove(used[0])  # the source changed: an image the run used is gone
    code = main(["--config", str(out / "config.yaml"), "train.resume=auto"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"the images listed in {out / record} differ from the ones the source gives now" in err
    assert json.loads((out / record).read_text()) == saved  # the record of what the run used is kept


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])  # 2: persistent loader workers, resumed mid-epoch
def test_a_time_budget_run_resumed_mid_epoch_ends_as_the_uninterrupted_one(image_folder, tmp_path, monkeypatch, workers,
                                                                          capsys):
    import fake_clock
    from transfer.errors import Preempted

    settings = ("train.epochs=50", "train.time_budget_s=6", "train.keep_checkpoints=5", f"data.num_workers={workers}")
    fake_clock.install(0.25, monkeypatch.setattr)  # 24 steps fit, on a clock no machine's load can move
    reference = run(tiny_config(image_folder, tmp_path / "reference", *settings))
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    sigterm_at_batch(monkeypatch, 9)  # epoch 2, batch 3: the checkpoint lands at the check after step 10
    out = tmp_path / "run"
    with pytest.raises(Preempted):
        run(tiny_config(image_folder, out, *settings))
    monkeypatch.undo()
    AcceleratorState._reset_state(reset_partial_state=True)
    fake_clock.install(0.25, monkeypatch.setattr)
    resumed = run(load_config(out / "config.yaml", ["train.resume=auto"]))
    assert "resumed from" in capsys.readouterr().out
    assert reference.stopped_by_time_budget and resumed.stopped_by_time_budget
    assert resumed.lr_per_step == pytest.approx(reference.lr_per_step, rel=1e-12)  # the same planned cycle
    assert resumed.lr_per_step[-1] == pytest.approx(FINAL_LR, rel=1e-6)
    assert resumed.train_seconds == pytest.approx(reference.train_seconds)
    assert same_weights(out, tmp_path / "reference")


@pytest.mark.parametrize("key, value, says", [
    ("num_processes", 2, "was written by a run on 2 processes and this one has 1"),
    ("mixed_precision", "bf16", "was trained with mixed precision 'bf16' and this run would continue in 'no'")])
def test_resume_on_another_process_count_or_precision_is_refused(reference, tmp_path, capsys, key, value, says):
    # a preempted 2-GPU bf16 job rescheduled on one CPU: its schedule counts the other run's steps
    out = killed_after_epoch_1(reference, tmp_path / "run")
    state_file = out / "checkpoints" / "epoch_001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1 and state["mixed_precision"] == "no"  # recorded with every checkpoint
    state_file.write_text(json.dumps({**state, key: value}))
    code = main(["--config", str(out / "config.yaml"), f"output_dir={out}", "train.resume=auto"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err and "start a fresh run" in err, err
    assert not (out / "metrics.json").exists()
