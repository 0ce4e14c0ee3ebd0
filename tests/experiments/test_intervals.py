"""The gain's interval: paired by seed and by image, contains 0 for a null comparison, excludes it
for a real difference, is narrower than an unpaired one where the arms agree on most images;
McNemar per seed; calibration error against a hand count."""
import csv
import json

import numpy as np
import pytest

from transfer.config import dump_yaml, load_config
from transfer.experiments.intervals import _unpaired, aggregate, correct_by_image, headline
from transfer.experiments.report import build
from transfer.training.metrics import calibration_error

IMAGES = 400


def fake_run(folder, correct, seed: int, pretrained: bool = True):
    """A finished run whose val_predictions.csv gets `correct` (a 0/1 per image) right."""
    folder.mkdir(parents=True)
    labels = ["a" if i % 2 else "b" for i in range(len(correct))]
    with open(folder / "val_predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "predicted", "confidence"])
        for i, (label, right) in enumerate(zip(labels, correct)):
            writer.writerow([f"val/{label}/{i}.png", label, label if right else ("b" if label == "a" else "a"), "0.9"])
    acc = float(np.mean(correct))
    history = [{"epoch": 1, "lr": 1e-3, "train_loss": 1.0, "val_loss": 1.0, "val_acc": acc, "epoch_seconds": 1.0,
                "train_images_per_s": 10.0}]
    (folder / "metrics.json").write_text(json.dumps({
        "history": history, "best_val_acc": acc, "best_epoch": 1, "final_val_acc": acc, "final_val_loss": 1.0,
        "val_samples": len(correct), "train_seconds": 1.0, "final_val_ece": 0.1}))
    cfg = load_config("configs/pretrained.yaml" if pretrained else "configs/scratch.yaml", [f"train.seed={seed}"])
    (folder / "config.yaml").write_text(dump_yaml(cfg))


def comparison(tmp_path, accuracy_p: float, accuracy_s: float, seeds=(0, 1, 2), rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    for seed in seeds:
        fake_run(tmp_path / "pretrained" / f"seed{seed}", rng.random(IMAGES) < accuracy_p, seed)
        fake_run(tmp_path / "scratch" / f"seed{seed}", rng.random(IMAGES) < accuracy_s, seed, pretrained=False)
    return build(tmp_path).gain


def test_a_null_comparison_gives_an_interval_around_zero(tmp_path):
    # the same arm twice (both draw from one 60% model): whatever the gain, the interval holds 0
    gain = comparison(tmp_path, 0.6, 0.6)
    low, high = gain.final_val_acc_ci95
    assert low < 0 < high and gain.paired and gain.paired_seeds == [0, 1, 2]
    assert len(gain.per_seed_final_val_acc_points) == 3 and len(gain.mcnemar_p) == 3
    assert gain.final_val_acc_points == pytest.approx(np.mean(gain.per_seed_final_val_acc_points))


def test_a_large_difference_gives_an_interval_that_excludes_zero(tmp_path):
    gain = comparison(tmp_path, 0.8, 0.4)
    low, high = gain.final_val_acc_ci95
    assert 0 < low < 40 < high and gain.seeds_better == 3
    assert max(gain.mcnemar_p) < 1e-6
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2] == f"**{gain.headline}**"
    assert gain.headline.startswith("gain of pretraining +") and "(95% CI +" in gain.headline
    assert f"3 seeds x {IMAGES} images; pretrained better on 3/3 seeds)" in gain.headline


def test_the_image_bootstrap_is_paired(tmp_path):
    # the arms agree on every image but 12, which only pretrained gets right: +3 points, for sure
    rng = np.random.default_rng(1)
    scratch = rng.random(IMAGES) < 0.5
    pretrained = scratch.copy()
    pretrained[np.flatnonzero(~scratch)[:12]] = True
    fake_run(tmp_path / "pretrained", pretrained, 0)
    fake_run(tmp_path / "scratch", scratch, 0, pretrained=False)
    gain = build(tmp_path).gain
    low, high = gain.final_val_acc_ci95
    assert gain.final_val_acc_points == pytest.approx(3.0) and 0 < low < 3.0 < high
    assert gain.mcnemar_p == [pytest.approx(2 * 0.5**12)]  # 12 discordant images, all one way
    assert "one seed, so training randomness is not in it" in gain.ci_method
    unpaired = _unpaired(3.0, [correct_by_image(tmp_path / "pretrained")], [correct_by_image(tmp_path / "scratch")])
    assert unpaired.final_val_acc_ci95[0] < 0  # treated as independent samples, the same runs look unsure
    assert high - low < (unpaired.final_val_acc_ci95[1] - unpaired.final_val_acc_ci95[0]) / 3


def test_arms_without_common_seeds_are_compared_unpaired_and_the_report_says_so(tmp_path):
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        fake_run(tmp_path / "pretrained" / f"seed{seed}", rng.random(IMAGES) < 0.7, seed)
    for seed in (5, 6):
        fake_run(tmp_path / "scratch" / f"seed{seed}", rng.random(IMAGES) < 0.5, seed, pretrained=False)
    gain = build(tmp_path).gain
    assert not gain.paired and gain.final_val_acc_ci95[0] < gain.final_val_acc_points
    assert "unpaired" in gain.ci_method and "unpaired" in gain.headline
    assert "**Warning**: the arms ran different seeds" in (tmp_path / "report.md").read_text()


def test_a_sweep_point_has_caught_up_only_when_its_interval_says_so():
    from transfer.experiments.sweep_report import catch_up_value

    from transfer.experiments.records import Gain, SweepPoint

    points = [SweepPoint({}, value, "", {}, Gain(mean, "", final_val_acc_ci95=ci), [])
              for value, mean, ci in ((5, 0.5, [-3.0, 4.0]), (20, 0.2, [-0.5, 0.9]), (None, 0.1, [-0.4, 0.6]))]  # 5: mean < 1
    assert catch_up_value(points) == 20
    assert catch_up_value(points[:1]) is None


def test_calibration_error_by_hand():
    # 15 bins of width 1/15: 0.95 and 0.97 share the last bin (accuracy 1/2, confidence 0.96),
    # 0.5 sits alone in bin 8 (accuracy 1, confidence 0.5), 0.05 alone in bin 1 (accuracy 0, 0.05)
    confidence = [0.95, 0.97, 0.5, 0.05]
    predictions, references = [1, 1, 2, 0], [1, 0, 2, 1]
    expected = 2 / 4 * abs(0.5 - 0.96) + 1 / 4 * abs(1 - 0.5) + 1 / 4 * abs(0 - 0.05)
    assert calibration_error(confidence, predictions, references) == pytest.approx(expected)
    assert calibration_error([1.0, 1.0], [0, 1], [0, 1]) == 0.0


def test_headline_without_predictions_says_why():
    from transfer.experiments.records import Gain

    gain = Gain(4.0, ci_method="none: a run has no val_predictions.csv to pair images with")
    assert headline(gain, {}) == ("gain of pretraining +4.0 points of final validation accuracy (no interval: a run "
                                  "has no val_predictions.csv to pair images with)")


def test_the_aggregate_over_one_dataset_is_that_dataset_and_over_several_widens_with_them(tmp_path):
    gains = {name: comparison(tmp_path / name, p, s, seeds=(0, 1), rng_seed=i)
             for i, (name, p, s) in enumerate([("a", 0.8, 0.4), ("b", 0.6, 0.55), ("c", 0.5, 0.5)])}
    one = aggregate({"a": gains["a"]})
    assert one.mean_gain_points == pytest.approx(gains["a"].final_val_acc_points)
    assert one.mean_gain_ci95 == pytest.approx(gains["a"].final_val_acc_ci95)  # the same two-level interval
    every = aggregate(gains)
    assert every.mean_gain_points == pytest.approx(np.mean([g.final_val_acc_points for g in gains.values()]))
    low, high = every.mean_gain_ci95
    widths = [g.final_val_acc_ci95[1] - g.final_val_acc_ci95[0] for g in gains.values()]
    assert low < every.mean_gain_points < high and high - low < max(widths)  # averaging narrows, but
    assert high - low > min(widths) / 3  # never below what the datasets' own spread allows
    iqm_low, iqm_high = every.iqm_gain_ci95
    assert iqm_low <= every.iqm_gain_points <= iqm_high and "too narrow with 2 seeds" in every.ci_method
    assert aggregate({"a": gains["a"], "x": None}).datasets_without_gain == ["x"]
