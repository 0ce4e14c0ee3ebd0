"""A fair scratch arm: the LR range test (optim.lr=find), label smoothing, mixup and cutmix."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import sigterm_at_batch, tiny_config
from transfer.training import lr_find
from transfer.cli import main
from transfer.config import load_config
from transfer.data.transforms import Normalize
from transfer.errors import RunError
from transfer.training.objective import Objective
from transfer.run import run

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def objective(*overrides):
    cfg = load_config("configs/smoke.yaml", list(overrides))
    return Objective(cfg.train.label_smoothing, cfg.data, 3, Normalize(MEAN, STD))


def batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=g),
            "labels": torch.tensor([0, 1, 2, 1, 0, 2, 2][:n])}


def normalised(b):
    x = b["pixel_values"].permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 1.0, 4.0]])
    labels = torch.tensor([0, 2, 1])
    eps, log_p = 0.1, logits.log_softmax(1)
    # by hand: -( (1 - eps) log p_y + eps / C * sum_c log p_c ), averaged over the batch
    expected = -((1 - eps) * log_p[torch.arange(3), labels] + eps / 3 * log_p.sum(1)).mean()
    o = objective("train.label_smoothing=0.1")
    x, targets = o.inputs({"pixel_values": torch.zeros(3, 4, 4, 3, dtype=torch.uint8), "labels": labels})
    assert torch.equal(targets, labels)  # no mixing: class indices
    assert torch.allclose(o.loss(logits, targets), expected)
    assert torch.allclose(objective().loss(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("n", [6, 5])
def test_mixup_mixes_images_and_targets_as_defined(n):
    o = objective("data.mixup=0.4", "train.label_smoothing=0.1")
    b = batch(n)
    np.random.seed(3)
    x, targets = o.inputs(b)
    np.random.seed(3)  # the same draws by hand: mixed at all (prob 1), then lambda ~ Beta(0.4, 0.4)
    assert np.random.rand() < 1.0
    lam = float(np.random.beta(0.4, 0.4))
    even = n - n % 2
    plain = normalised(b)
    expected = plain.clone()
    expected[:even] = lam * plain[:even] + (1 - lam) * plain[:even].flip(0)  # each with its mirror in the batch
    assert torch.allclose(x, expected, atol=1e-5)  # an odd batch's last image stays whole
    smooth = torch.full((n, 3), 0.1 / 3).scatter_(1, b["labels"][:, None], 1 - 0.1 + 0.1 / 3)
    soft = smooth.clone()
    soft[:even] = lam * smooth[:even] + (1 - lam) * smooth[:even].flip(0)
    assert torch.allclose(targets, soft)
    logits = torch.randn(n, 3)
    expected_loss = -(soft * logits.log_softmax(1)).sum(1).mean()  # the soft-target loss, by hand
    assert torch.allclose(o.loss(logits, targets), expected_loss)


def test_cutmix_pastes_a_box_from_the_mirror_image_and_weights_targets_by_its_area():
    o = objective("data.cutmix=1.0")
    b = {"pixel_values": torch.arange(10, 190, 30, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 8, 8, 3).clone(),
         "labels": torch.tensor([0, 1, 2, 1, 0, 2])}  # six flat images, each its own grey
    np.random.seed(0)
    x, targets = o.inputs(b)
    plain = normalised(b)
    from_mirror = (x == plain.flip(0)) & (x != plain)
    pasted = from_mirror[0, 0].float().mean().item()  # share of image 0's pixels taken from image 5
    assert 0 < pasted < 1
    assert torch.allclose(targets[0, b["labels"][5]], torch.tensor(pasted), atol=1e-6)  # lambda = unpasted area
    assert torch.allclose(targets.sum(1), torch.ones(6))


def test_mixing_stops_at_mixup_off_epoch_and_prob_zero_never_mixes():
    o = objective("data.mixup=0.4", "data.mixup_off_epoch=2")
    o.set_epoch(1)
    assert o.mixing
    o.set_epoch(2)
    assert not o.mixing and torch.equal(o.inputs(batch())[1], batch()["labels"])
    never = objective("data.mixup=0.4", "data.mixup_prob=0.0")
    assert torch.allclose(never.inputs(batch())[0], normalised(batch()))


# ---------------------------------------------------------------------------- the LR range test

def test_suggestion_rule_picks_inside_the_falling_stretch():
    steps = 60
    lrs = lr_find.schedule(steps)
    # flat, then falling between lr 1e-4 and 1e-1, then diverging
    losses = [2.0 if lr < 1e-4 else max(0.5, 2.0 - 0.5 * math.log10(lr / 1e-4)) if lr < 1e-1 else 0.5 * (lr / 1e-1) ** 2
              for lr in lrs]
    found = lr_find.suggest(lrs, losses, steps, "adam", "valley")
    assert 1e-4 < found.suggested_lr < 1e-1
    smoothed = found.smoothed_losses
    pick = lrs.index(found.suggested_lr)
    assert smoothed[pick + 1] < smoothed[pick] < smoothed[pick - 1]  # still falling there
    assert found.rule == lr_find.RULES["valley"] and found.picks["valley"] == found.suggested_lr


def test_steep_and_minimum_rules_read_the_trimmed_curve():
    # loss falls slowly, then fastest over one decade (1e-4 to 1e-3), bottoms out at 1e-2, then rises
    steps = 100
    lrs = lr_find.schedule(steps)
    def loss(lr):
        x = math.log10(lr)
        if x < -4:
            return 3.0 - 0.02 * (x + 7)
        if x < -3:
            return 2.94 - 1.5 * (x + 4)
        if x < -2:
            return 1.44 - 0.2 * (x + 3)
        return 1.24 + 2.0 * (x + 2)
    losses = [loss(lr) for lr in lrs]
    found = {rule: lr_find.suggest(lrs, losses, steps, "adam", rule) for rule in lr_find.RULES}
    assert found["steep"].rule == lr_find.RULES["steep"]
    assert found["valley"].picks == found["steep"].picks == found["minimum"].picks  # every rule recorded
    assert 1e-4 <= found["steep"].suggested_lr <= 1.2e-3  # the steepest decade (smoothing lags it a little)
    assert 1e-3 / 1.5 <= found["minimum"].suggested_lr <= 1e-2 / 10 * 3  # a tenth of the smoothed minimum
    assert {r: f.suggested_lr for r, f in found.items()} == found["valley"].picks


def test_suggestion_is_a_third_plus_a_sixth_down_the_valley():
    # strictly falling for 40 steps (so is its moving average), then far above: the valley is steps 0..39
    steps = 60
    lrs = lr_find.schedule(steps)
    losses = [3.0 - 0.05 * i for i in range(40)] + [10.0] * 20
    found = lr_find.suggest(lrs, losses, steps, "adam", "valley")
    assert found.valley_lrs == [lrs[0], lrs[39]]
    assert found.suggested_lr == lrs[39 // 3 + 39 // 6]  # index 19


@pytest.mark.parametrize("losses, why", [([float("nan")] * 3, "not finite from the first step"),
                                         ([1.0] * 50, "did not fall")])
def test_an_unreadable_curve_is_an_error_that_says_what_to_set(losses, why):
    with pytest.raises(RunError) as e:
        lr_find.suggest(lr_find.schedule(50), losses, 50, "sgd")
    assert why in str(e.value) and "optim.lr=0.1" in str(e.value)


@pytest.fixture(scope="module")
def found_run(image_folder, tmp_path_factory):
    """optim.lr=find with label smoothing, mixup and cutmix (the second epoch unmixed): 2 epochs."""
    out = tmp_path_factory.mktemp("find") / "run"
    metrics = run(tiny_config(image_folder, out, "optim.lr=find", "train.label_smoothing=0.1", "data.mixup=0.4",
                              "data.cutmix=1.0", "data.mixup_off_epoch=1"))
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    return out, metrics


def same_weights(a, b):
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow  # two whole runs and an LR range test: the full tier
def test_found_lr_is_recorded_plotted_and_equals_typing_it_in(found_run, image_folder, tmp_path):
    out, metrics = found_run
    found = metrics.lr_find
    assert found.rule == lr_find.RULES["minimum"] and found.suggested_lr == found.picks["minimum"] and metrics.peak_lr == found.suggested_lr
    assert found.valley_lrs[0] < found.suggested_lr < found.valley_lrs[1]
    assert json.loads((out / "metrics.json").read_text())["lr_find"]["suggested_lr"] == found.suggested_lr
    assert (out / "plots" / "lr_find.png").stat().st_size > 0
    assert f"`optim.lr=find` (found {found.suggested_lr:.3g})" in (out / "model" / "README.md").read_text()
    assert 0.9 * found.suggested_lr < max(metrics.lr_per_step) <= found.suggested_lr  # the cycle's peak
    assert metrics.phase_seconds["lr_find"] > 0
    # model, optimizer, scaler and random state restored: the run equals one with the value typed in
    typed = tmp_path / "typed"
    run(tiny_config(image_folder, typed, f"optim.lr={found.suggested_lr!r}", "train.label_smoothing=0.1",
                    "data.mixup=0.4", "data.cutmix=1.0", "data.mixup_off_epoch=1"))
    assert same_weights(out, typed)


@pytest.mark.slow
def test_mid_epoch_resume_with_mixup_reuses_the_found_lr_and_is_exact(found_run, image_folder, tmp_path, monkeypatch):
    reference, _ = found_run
    from transfer.errors import Preempted

    sigterm_at_batch(monkeypatch, 3)  # in epoch 1, which mixes; seen at the check after step 4
    out = tmp_path / "run"  # the reference's settings from scratch, stopped by a SIGTERM in epoch 1
    with pytest.raises(Preempted):
        run(load_config(reference / "config.yaml", [f"output_dir={out}"]))
    monkeypatch.undo()
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)

    def no_second_search(*args, **kwargs):
        raise AssertionError("a resumed run searched for its learning rate again")
    monkeypatch.setattr(lr_find, "range_test", no_second_search)
    metrics = run(load_config(reference / "config.yaml", [f"output_dir={out}", "train.resume=auto"]))
    assert metrics.lr_find.suggested_lr == json.loads((reference / "metrics.json").read_text())[
        "lr_find"]["suggested_lr"]
    assert same_weights(out, reference)  # mixing draws replayed with the skipped batches


def test_a_curve_that_never_falls_ends_in_one_line(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Objective, "loss", lambda self, logits, targets: logits.sum() * float("nan"))
    code = main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={tmp_path / 'x'}",
                 "optim.lr=find"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "inconclusive" in err and "optim.lr=0.001" in err, err
    assert not (tmp_path / "x" / "checkpoints").exists()


@pytest.mark.slow
def test_lr_find_script_prints_the_pick_and_writes_only_its_plot(image_folder, tmp_path, capsys):
    plot = tmp_path / "curve.png"
    out = tmp_path / "never"
    code = main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}",
                 "--plot", str(plot)], lr_find=True)
    printed = capsys.readouterr().out
    assert code == 0 and "lr range test: " in printed and "suggested optim.lr=" in printed, printed
    assert plot.stat().st_size > 0 and not out.exists()  # no run folder


@pytest.mark.parametrize("freeze, trainable", [(1, "all"), (4, "head")])
def test_the_range_test_trains_what_the_schedule_peak_trains(image_folder, tmp_path, monkeypatch, freeze, trainable):
    seen = {}

    def spy(trainer, loader, optimizer_name, rule):  # stop before any step: only the model's state matters
        model = trainer.module
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        seen["all"] = {n for n, _ in model.named_parameters()}
        raise RunError("enough")
    monkeypatch.setattr(lr_find, "range_test", spy)
    with pytest.raises(RunError, match="enough"):  # 4 epochs: the one-cycle peak is in the second
        run(tiny_config(image_folder, tmp_path / "r", "optim.lr=find", "train.epochs=4",
                        f"train.freeze_epochs={freeze}"))
    head = {n for n in seen["all"] if n.startswith("fc.")}
    assert seen["trainable"] == (seen["all"] if trainable == "all" else head) and head


@pytest.mark.slow  # whole runs (the fast tier stays under 2 minutes on a busy machine)
def test_mixup_prob_and_off_epoch_in_a_real_run(image_folder, tmp_path, monkeypatch):
    # 6 batches an epoch: with mixup_prob=0.5 some batches of epochs 1-2 are mixed and some are not;
    # from mixup_off_epoch=2 (the third epoch) none is
    seen = []
    inputs, set_epoch = Objective.inputs, Objective.set_epoch

    def recording_inputs(self, batch):
        plain = self.normalize(batch["pixel_values"])
        x, targets = inputs(self, batch)
        seen.append((self.epoch, not torch.equal(x, plain)))
        return x, targets

    def recording_set_epoch(self, epoch):
        self.epoch = epoch
        set_epoch(self, epoch)
    monkeypatch.setattr(Objective, "inputs", recording_inputs)
    monkeypatch.setattr(Objective, "set_epoch", recording_set_epoch)
    run(tiny_config(image_folder, tmp_path / "r", "train.epochs=3", "data.mixup=0.4", "data.mixup_prob=0.5",
                    "data.mixup_off_epoch=2"))
    mixed = {epoch: [m for e, m in seen if e == epoch] for epoch in (0, 1, 2)}
    assert all(len(v) == 6 for v in mixed.values())
    assert 0 < sum(mixed[0] + mixed[1]) < 12  # some, not all
    assert not any(mixed[2])
