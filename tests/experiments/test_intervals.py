"""The gain's statistics on hand-made runs: an interval only from 3 paired seeds (contains 0 for a
null comparison, excludes it for a real difference), each seed's over its images below that, said
to be conditional; unpaired arms; the unseen-by-ImageNet gain, log loss, Brier score and calibration
error with intervals; the sweep's verdicts and trend; the suite's two intervals and Holm counts.
(The coverage of the interval: test_coverage.py.)"""
import csv
import json

import numpy as np
import pytest

from transfer.config import dump_yaml, load_config
from transfer.experiments.intervals import MIN_SEEDS, aggregate, headline
from transfer.experiments.records import Gain, SweepPoint
from transfer.experiments.report import build
from transfer.experiments.summary import summarize
from transfer.training.metrics import calibration_error

IMAGES = 400


def fake_run(folder, correct, seed: int, pretrained: bool = True, confidence: float = 0.9, unseen: int = 0):
    """A finished run whose val_predictions.csv gets `correct` (a 0/1 per image) right, with
    `confidence` on its prediction (the true class's probability: that, or the rest when wrong);
    the first `unseen` images are named as ImageNet's own validation images."""
    folder.mkdir(parents=True)
    labels = ["a" if i % 2 else "b" for i in range(len(correct))]
    with open(folder / "val_predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "predicted", "confidence", "true_probability", "squared_probabilities"])
        for i, (label, right) in enumerate(zip(labels, correct)):
            name = f"ILSVRC2012_val_{i:08d}.JPEG" if i < unseen else f"n0_{i}.JPEG"
            true = confidence if right else 1 - confidence
            writer.writerow([f"val/{label}/{name}", label, label if right else ("b" if label == "a" else "a"),
                             confidence, true, confidence ** 2 + (1 - confidence) ** 2])
    acc = float(np.mean(correct))
    history = [{"epoch": 1, "lr": 1e-3, "train_loss": 1.0, "val_loss": 1.0, "val_acc": acc, "epoch_seconds": 1.0,
                "train_images_per_s": 10.0}]
    (folder / "metrics.json").write_text(json.dumps({
        "history": history, "best_val_acc": acc, "best_epoch": 1, "final_val_acc": acc, "final_val_loss": 1.0,
        "val_samples": len(correct), "train_seconds": 1.0, "final_val_ece": 0.1, "train_samples": 100}))
    cfg = load_config("configs/pretrained.yaml" if pretrained else "configs/scratch.yaml", [f"train.seed={seed}"])
    (folder / "config.yaml").write_text(dump_yaml(cfg))


def comparison(tmp_path, accuracy_p: float, accuracy_s: float, seeds=(0, 1, 2), rng_seed=0, report=False,
               **kwargs) -> Gain:
    """The gain of fake runs; with `report`, report.md and the figures are written too (build)."""
    rng = np.random.default_rng(rng_seed)
    for seed in seeds:
        fake_run(tmp_path / "pretrained" / f"seed{seed}", rng.random(IMAGES) < accuracy_p, seed, **kwargs)
        fake_run(tmp_path / "scratch" / f"seed{seed}", rng.random(IMAGES) < accuracy_s, seed, pretrained=False,
                 **kwargs)
    return build(tmp_path).gain if report else summarize(tmp_path)[1].gain


def test_a_null_comparison_gives_an_interval_around_zero(tmp_path):
    # the same arm twice (both draw from one 60% model): whatever the gain, the interval holds 0
    gain = comparison(tmp_path, 0.6, 0.6)
    low, high = gain.final_val_acc_ci95
    assert low < 0 < high and gain.paired and gain.paired_seeds == [0, 1, 2] and gain.interval == "seeds and images"
    assert len(gain.per_seed_final_val_acc_points) == 3 and len(gain.mcnemar_p) == 3
    assert gain.final_val_acc_points == pytest.approx(np.mean(gain.per_seed_final_val_acc_points))


def test_a_large_difference_gives_an_interval_that_excludes_zero_and_mcnemar_stays_out_of_the_headline(tmp_path):
    gain = comparison(tmp_path, 0.8, 0.4, report=True)
    low, high = gain.final_val_acc_ci95
    assert 0 < low < 40 < high and gain.seeds_better == 3
    assert max(gain.mcnemar_p) < 1e-6
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2] == f"**{gain.headline}**"
    assert gain.headline.startswith("gain of pretraining +") and "(95% CI +" in gain.headline
    assert f"over training runs and validation images; 3 seeds x {IMAGES} images; pretrained better on 3/3 seeds)" \
        in gain.headline
    assert "McNemar" not in report.split("\n\n")[1] and "Do these two trained networks differ" in report


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_below_three_seeds_there_is_no_bare_interval_only_each_seeds_over_its_images(tmp_path, seeds):
    gain = comparison(tmp_path, 0.8, 0.4, seeds=seeds, report=True)
    assert gain.final_val_acc_ci95 is None and gain.interval == "per seed, images only"
    assert len(gain.per_seed_image_ci95) == len(seeds)
    for value, (low, high) in zip(gain.per_seed_final_val_acc_points, gain.per_seed_image_ci95):
        assert low < value < high and 0 < low  # 40 points over 400 images: clear for those networks
    assert "95% CI" not in gain.headline and "conditional on these trained networks" in gain.headline
    assert f"training randomness is not bounded below {MIN_SEEDS} seeds" in gain.headline
    assert "95% CI" not in (tmp_path / "report.md").read_text().split("\n\n")[1]


def test_arms_without_common_seeds_are_unpaired_and_need_three_runs_each(tmp_path):
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        fake_run(tmp_path / "pretrained" / f"seed{seed}", rng.random(IMAGES) < 0.7, seed)
    for seed in (5, 6):
        fake_run(tmp_path / "scratch" / f"seed{seed}", rng.random(IMAGES) < 0.5, seed, pretrained=False)
    gain = build(tmp_path).gain
    assert not gain.paired and gain.final_val_acc_ci95 is None and "run both arms with the same SEEDS" in gain.headline
    assert "**Warning**: the arms ran different seeds" in (tmp_path / "report.md").read_text()
    fake_run(tmp_path / "pretrained" / "seed3", rng.random(IMAGES) < 0.7, 3)
    fake_run(tmp_path / "scratch" / "seed7", rng.random(IMAGES) < 0.5, 7, pretrained=False)
    gain = build(tmp_path).gain
    assert gain.interval == "runs" and gain.final_val_acc_ci95[0] < gain.final_val_acc_points
    assert "unpaired" in gain.headline and "not which images" in gain.ci_method


def test_the_unseen_gain_and_calibration_have_their_own_intervals(tmp_path):
    # pretrained is right more often and confident (0.9), scratch less often and unsure (0.6)
    rng = np.random.default_rng(3)
    for seed in (0, 1, 2):
        fake_run(tmp_path / "pretrained" / f"seed{seed}", rng.random(IMAGES) < 0.8, seed, confidence=0.9, unseen=200)
        fake_run(tmp_path / "scratch" / f"seed{seed}", rng.random(IMAGES) < 0.5, seed, pretrained=False,
                 confidence=0.6, unseen=200)
    gain = build(tmp_path).gain
    low, high = gain.unseen_by_imagenet_ci95
    assert low < gain.unseen_by_imagenet_val_acc_points < high and 0 < low
    c = gain.calibration
    assert c.nll_ci95[1] < 0 and c.brier_ci95[1] < 0  # pretrained's log loss and Brier score are lower
    assert c.nll_ci95[0] < c.nll_difference < c.nll_ci95[1] and c.ece_ci95[0] <= c.ece_difference <= c.ece_ci95[1]
    report = (tmp_path / "report.md").read_text()
    assert "on the validation images ImageNet's training set does not contain" in report and "log loss" in report


def test_calibration_error_over_equal_mass_bins_by_hand():
    # 4 images, 2 bins of 2 by confidence: (0.05 wrong, 0.5 right) and (0.95 right, 0.97 wrong)
    confidence = [0.95, 0.97, 0.5, 0.05]
    predictions, references = [1, 1, 2, 0], [1, 0, 2, 1]
    expected = 2 / 4 * abs(0.5 - (0.05 + 0.5) / 2) + 2 / 4 * abs(0.5 - (0.95 + 0.97) / 2)
    assert calibration_error(confidence, predictions, references, bins=2) == pytest.approx(expected)
    assert calibration_error([1.0, 1.0], [0, 1], [0, 1]) == 0.0


def test_headline_without_predictions_says_why():
    gain = Gain(4.0, ci_method="none: a run has no val_predictions.csv to pair images with")
    assert headline(gain, {}) == ("gain of pretraining +4.0 points of final validation accuracy (no interval: a run "
                                  "has no val_predictions.csv to pair images with)")


# ---------------------------------------------------------------------------- sweeps

def point(value, mean, ci, per_seed=None, images=None):
    from transfer.experiments.records import ArmSummary

    arms = {} if images is None else {"pretrained": ArmSummary(
        [], 3, [0, 1, 2], *[0.5] * 8, 1.0, 0.0, 1.0, [], [], None, None, [], False, None, None, None, None,
        train_samples=images)}
    return SweepPoint({"data.train_per_class": value}, value, "", arms,
                      Gain(mean, "", final_val_acc_ci95=ci, per_seed_final_val_acc_points=per_seed), [])


def test_the_sweep_verdicts_go_from_the_most_data_down_and_stop_at_the_first_undetermined():
    from transfer.experiments.sweep_report import verdicts

    points = [point(5, 8.0, [-3.0, 19.0]), point(20, 4.0, [-0.5, 8.5]), point(100, 3.0, [1.0, 5.0]),
              point(None, 0.1, [-0.4, 0.6])]
    found = {v.value: (v.verdict, v.smallest_margin_points) for v in verdicts(points)}
    assert found == {None: ("caught up", 0.6), 100: ("behind", 5.0), 20: ("undetermined", 8.5),
                     5: ("not tested", 19.0)}
    assert [v.value for v in verdicts(points)] == [None, 100, 20, 5]  # the order tested


def test_the_trend_is_the_slope_of_per_seed_gains_on_log_images():
    from transfer.experiments.sweep_report import trend

    # the gain falls 6 points per tenfold images, plus noise per seed
    points = [point(v, 0, None, per_seed=[30 - 6 * np.log10(n) + e for e in (-1.0, 0.0, 1.0)], images=n)
              for v, n in ((5, 50), (50, 500), (None, 5000))]
    t = trend(points, "data.train_per_class")
    assert t.slope_points_per_decade == pytest.approx(-6.0) and t.ci95[0] < -6.0 < t.ci95[1] < 0
    assert t.x == "log10 training images" and t.observations == 9


# ---------------------------------------------------------------------------- suites

def test_the_suite_has_an_interval_on_these_datasets_and_one_for_a_new_dataset(tmp_path):
    gains = {name: comparison(tmp_path / name, p, s, rng_seed=i)
             for i, (name, p, s) in enumerate([("a", 0.8, 0.4), ("b", 0.6, 0.55), ("c", 0.5, 0.5)])}
    one = aggregate({"a": gains["a"]})
    assert one.mean_gain_points == pytest.approx(gains["a"].final_val_acc_points)
    assert one.fixed_effects_ci95 == pytest.approx(gains["a"].final_val_acc_ci95)  # one dataset: its own interval
    assert one.random_effects_ci95 is None  # nothing to say about other datasets from one
    every = aggregate(gains)
    assert every.mean_gain_points == pytest.approx(np.mean([g.final_val_acc_points for g in gains.values()]))
    fixed, random = every.fixed_effects_ci95, every.random_effects_ci95
    assert fixed[0] < every.mean_gain_points < fixed[1] and random[0] < fixed[0] and fixed[1] < random[1]
    assert every.between_datasets_sd_points > 5  # +40, about +5, about 0: the datasets differ
    assert every.datasets_above_0_holm == 1 and every.datasets_below_0_holm == 0  # only a's is clear after Holm
    assert every.iqm_gain_ci95 is None and "not given below 5 seeds" in every.ci_method
    assert aggregate({"a": gains["a"], "x": None}).datasets_without_gain == ["x"]


def test_a_suite_with_fewer_than_three_seeds_a_dataset_gives_no_interval_and_says_why(tmp_path):
    gains = {name: comparison(tmp_path / name, 0.7, 0.5, seeds=(0,), rng_seed=i) for i, name in enumerate("ab")}
    agg = aggregate(gains)
    assert agg.fixed_effects_ci95 is None and agg.random_effects_ci95 is None and agg.datasets_above_0_holm is None
    assert "a dataset has 1 paired seed(s)" in agg.ci_method and agg.seeds_per_dataset == 1


def test_the_iqm_interval_is_given_from_five_seeds(tmp_path):
    gains = {name: comparison(tmp_path / name, 0.7, 0.5, seeds=range(5), rng_seed=i) for i, name in enumerate("ab")}
    agg = aggregate(gains)
    assert agg.iqm_gain_ci95[0] <= agg.iqm_gain_points <= agg.iqm_gain_ci95[1]
