"""The strong pretrained recipe: layer-wise LR decay through the whole (time-budget) schedule,
batch norm frozen or training with a frozen backbone, and the weight average (timm's ModelEmaV3)
computed as its formula says, exported on request and exact across a mid-epoch resume."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import sigterm_at_batch, tiny_config
from transfer.config import OptimConfig, load_config
from transfer.run import run
from transfer.training.loop import check_due
from transfer.training.optim import OneCycle, build_optimizer, one_cycle, parameter_groups


@pytest.mark.parametrize("budget", [None, 3.0], ids=["steps", "time-budget"])
def test_every_group_follows_the_cycle_scaled_by_its_layer_decay(budget):
    import timm

    model = timm.create_model("resnet10t", num_classes=3)
    optimizer = build_optimizer(OptimConfig(name="adam", lr=1e-3, layer_decay=0.5),
                                parameter_groups(model, OptimConfig(layer_decay=0.5)))
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    assert max(scales) == 1.0 and min(scales) == 0.5 ** 5  # head, and the stem 5 groups below it
    schedule = OneCycle(optimizer, 1e-3, total_steps=200, time_budget_s=budget)
    clock = 0.0
    for _ in range(60):
        position = schedule.position()
        expected = one_cycle(position, schedule.total_steps, 1e-3)[0]
        for group in optimizer.param_groups:  # warm-up start, peak and annealing: all scaled alike
            assert group["lr"] == pytest.approx(expected * group["lr_scale"], rel=1e-12)
        assert schedule.last_lr == pytest.approx(expected, rel=1e-12)
        schedule.step()
        clock += 0.1  # 30 steps fit the 3 s budget: the cycle is squeezed, every group with it
        if check_due(schedule.steps):
            schedule.plan(clock)
        if schedule.finished:
            break
    if budget:
        assert schedule.finished and schedule.steps <= 31
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(1e-3 / 25 / 1e4 * group["lr_scale"], rel=1e-9)


def test_a_run_records_each_groups_peak(image_folder, tmp_path):
    metrics = run(tiny_config(image_folder, tmp_path / "r", "train.epochs=1", "optim.layer_decay=0.5"))
    peaks = metrics.peak_lr_per_group
    assert peaks["head"] == pytest.approx(3e-3) and peaks["layer_0"] == pytest.approx(3e-3 * 0.5 ** 5)
    assert len(peaks) == 6 and (tmp_path / "r" / "plots" / "lr.png").is_file()


@pytest.mark.parametrize("policy, moves", [("eval", False), ("train", True)])
def test_frozen_batch_norm_policy(image_folder, tmp_path, policy, moves):
    import timm

    weights = tmp_path / "w.safetensors"
    initial = timm.create_model("resnet10t", num_classes=3).state_dict()
    save_file(initial, str(weights))
    out = tmp_path / "run"
    run(tiny_config(image_folder, out, "train.epochs=1", "train.freeze_epochs=1", f"train.frozen_bn={policy}",
                    "model.pretrained=true", f"model.weights_file={weights}", "model.head=keep"))
    trained = load_file(out / "model" / "model.safetensors")
    stats = [k for k in initial if k.endswith("running_mean")]
    bn_weights = [k for k in initial if k.endswith("bn1.weight")]
    assert stats and bn_weights
    assert any(not torch.equal(initial[k], trained[k]) for k in stats) is moves
    assert any(not torch.equal(initial[k], trained[k]) for k in bn_weights) is moves  # fastai's train_bn
    assert torch.equal(initial["conv1.0.weight"], trained["conv1.0.weight"])  # the rest of the backbone held


def decay_at(step: int, decay: float) -> float:
    """timm's ModelEmaV3 warm-up, by hand: 1 - (1 + n)^(-2/3) for the n-th update after the first, capped."""
    n = step - 1
    return 0.0 if n <= 0 else min(decay, 1 - (1 + n) ** (-2 / 3))


def test_the_weight_average_is_the_formulas_and_is_what_model_holds(image_folder, tmp_path, monkeypatch):
    from timm.utils import ModelEmaV3

    seen = []
    update = ModelEmaV3.update

    def recording(self, model, step=None):
        if not seen:
            seen.append((None, {k: v.detach().clone() for k, v in self.module.state_dict().items()}))
        seen.append((step, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        update(self, model, step)
    monkeypatch.setattr(ModelEmaV3, "update", recording)
    out = tmp_path / "ema"
    metrics = run(tiny_config(image_folder, out, "train.epochs=1", "train.ema_decay=0.9", "model.export=ema"))
    average = {k: v.float() for k, v in seen[0][1].items() if v.is_floating_point()}
    for step, weights in seen[1:]:
        d = decay_at(step, 0.9)
        average = {k: d * average[k] + (1 - d) * weights[k].float() for k in average}
    exported = load_file(out / "model" / "model.safetensors")
    assert len(seen) == 7  # the start, and 6 optimizer steps
    for k in average:
        torch.testing.assert_close(exported[k].float(), average[k], rtol=1e-5, atol=1e-6, msg=k)
    assert metrics.final_ema_val_acc == metrics.history[-1].ema_val_acc == metrics.final_val_acc


@pytest.mark.slow
def test_the_weight_average_survives_a_mid_epoch_resume(image_folder, tmp_path, monkeypatch, capsys):
    from accelerate.state import AcceleratorState

    from transfer.errors import Preempted

    settings = ("train.epochs=3", "train.ema_decay=0.9", "model.export=ema", "train.keep_checkpoints=5")
    run(tiny_config(image_folder, tmp_path / "reference", *settings))
    AcceleratorState._reset_state(reset_partial_state=True)
    sigterm_at_batch(monkeypatch, 9)
    out = tmp_path / "run"
    with pytest.raises(Preempted):
        run(tiny_config(image_folder, out, *settings))
    monkeypatch.undo()
    AcceleratorState._reset_state(reset_partial_state=True)
    run(load_config(out / "config.yaml", ["train.resume=auto"]))
    assert "resumed from" in capsys.readouterr().out
    a, b = (load_file(folder / "model" / "model.safetensors") for folder in (tmp_path / "reference", out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert all(h["ema_val_acc"] is not None for h in history)


def test_export_ema_needs_an_average():
    from transfer.errors import ConfigError

    with pytest.raises(ConfigError, match="model.export='ema' is invalid: expected raw unless train.ema_decay"):
        load_config("configs/smoke.yaml", ["model.export=ema"])
