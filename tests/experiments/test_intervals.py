"""The gain's statistics on hand-made runs: an interval only from 3 paired seeds (contains 0 for a
null comparison, excludes it for a real difference), each seed's over its images below that, said
to be conditional; unpaired arms; the unseen-by-ImageNet gain, log loss, Brier score and calibration
error; the sweep's verdicts and trend; the suite's three intervals and Holm counts; how many seeds a
target half-width needs.
(The coverage of the interval: test_coverage.py.)"""
import csv
import json

import numpy as np
import pytest
from scipy import stats

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
    assert c.nll_ci95[0] < c.nll_difference < c.nll_ci95[1] and np.isfinite(c.ece_difference)
    report = (tmp_path / "report.md").read_text()
    assert "on the validation images ImageNet's training set does not contain" in report and "log loss" in report
    assert "expected calibration error (15 equal-mass bins) " in report and "(no interval: not a mean over images" in report


def test_identical_arms_give_no_zero_width_interval(tmp_path):
    correct = np.random.default_rng(0).random(IMAGES) < 0.6
    for seed in (0, 1, 2):  # both arms right on the same images, every seed: every paired difference is 0
        fake_run(tmp_path / "pretrained" / f"seed{seed}", correct, seed)
        fake_run(tmp_path / "scratch" / f"seed{seed}", correct, seed, pretrained=False)
    gain = build(tmp_path).gain
    assert gain.final_val_acc_points == 0 and gain.final_val_acc_ci95 is None
    assert "no variation to estimate one from" in gain.ci_method and "95% CI" not in gain.headline
    assert "no interval" in gain.headline and "below 3 seeds" not in gain.headline


def test_the_report_says_how_many_seeds_a_target_half_width_needs(tmp_path):
    from transfer.experiments.intervals import crossed_of, seeds_for

    gain = comparison(tmp_path, 0.7, 0.5, report=True)
    plan = gain.seeds_for_target
    assert plan.half_width_points == 2.0 and plan.current_seeds == 3
    assert plan.current_half_width_points == pytest.approx(gain.final_val_acc_ci95[1] - gain.final_val_acc_points)
    report = (tmp_path / "report.md").read_text()
    assert "Seeds for a ±2-point interval" in report
    # by hand: the fewest seeds m whose t x sqrt(seed variance / m + image variance) is at most the target
    c = crossed_of(gain)
    wide = seeds_for(c, (plan.image_floor_points + plan.current_half_width_points) / 2)  # between: reachable
    m = wide.seeds
    from scipy import stats
    from transfer.experiments.intervals import _satterthwaite

    def half(k):  # the image part's degrees of freedom from its mean squares' expectations at k seeds
        s_img, s_res = c.image_variance * IMAGES, c.residual_variance * IMAGES
        df_image = (k * s_img) ** 2 / ((s_res + k * s_img) ** 2 / (IMAGES - 1) + s_res ** 2 / ((k - 1) * (IMAGES - 1)))
        df = _satterthwaite(c.seed_variance / k, k - 1, c.image_variance, df_image)
        return stats.t.ppf(0.975, df) * np.sqrt(c.seed_variance / k + c.image_variance)
    assert half(3) == pytest.approx(plan.current_half_width_points)  # at the seeds it has: the interval it gave
    assert m > 3 and half(m) <= wide.half_width_points < half(m - 1)
    assert seeds_for(c, 0.9 * wide.image_floor_points).seeds is None  # the images alone leave more than that
    assert seeds_for(c, 100.0).seeds == 3


@pytest.mark.parametrize("text", ["x", "0", "-1", "nan", "150"])
def test_a_bad_target_half_width_is_one_line_naming_it(text):
    from transfer.errors import ConfigError
    from transfer.experiments.spec import target_half_width

    with pytest.raises(ConfigError, match="TARGET_HALF_WIDTH="):
        target_half_width({"TARGET_HALF_WIDTH": text})
    assert target_half_width({}) == 2.0 and target_half_width({"TARGET_HALF_WIDTH": "0.5"}) == 0.5


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

def point(value, mean, se=None, images=None, df=10.0):
    from transfer.experiments.records import ArmSummary

    arms = {} if images is None else {"pretrained": ArmSummary(
        [], 3, [0, 1, 2], *[0.5] * 8, 1.0, 0.0, 1.0, [], [], None, None, [], False, None, None, None, None,
        train_samples=images)}
    ci = None if se is None else [mean - stats.t.ppf(0.975, df) * se, mean + stats.t.ppf(0.975, df) * se]
    return SweepPoint({"data.train_per_class": value}, value, "", arms,
                      Gain(mean, "", final_val_acc_ci95=ci, standard_error_points=se, degrees_of_freedom=df), [])


def test_the_sweep_verdicts_stop_caught_up_at_the_first_value_not_shown_and_test_behind_at_every_value():
    from transfer.experiments.sweep_report import verdicts

    # from the most data down: all of it caught up (0.1 +- 0.2); 100 behind (clearly above 0), which
    # ends the caught-up sequence; 20 and 5 are still tested for "behind" (Holm): 5 is, 20 is not
    points = [point(5, 8.0, 1.0), point(20, 4.0, 3.0), point(100, 3.0, 0.5), point(None, 0.1, 0.2)]
    found = {v.value: v.verdict for v in verdicts(points)}
    assert found == {None: "caught up", 100: "behind", 20: "not tested", 5: "behind"}
    assert [v.value for v in verdicts(points)] == [None, 100, 20, 5]  # the order tested
    margins = {v.value: v.smallest_margin_points for v in verdicts(points)}
    assert margins[None] == pytest.approx(0.1 + stats.t.ppf(1 - 0.025, 10) * 0.2)  # at the family's level
    # a line of a grid of two: each family at half the level, so a borderline "behind" is no longer shown
    edge = [point(None, 2.3 * 1.0, 1.0)]  # t = 2.3: p = 0.022 one-sided, below 0.025 and above 0.0125
    assert verdicts(edge)[0].verdict == "behind" and verdicts(edge, lines=2)[0].verdict == "undetermined"
    # a value without an interval (fewer than 3 seeds) ends the sequence and is not tested
    assert [v.verdict for v in verdicts([point(5, 0.0, 0.1), point(None, 0.0)])] == ["not tested", "not tested"]


def test_the_trend_is_the_slope_through_the_points_gains_with_their_errors():
    from transfer.experiments.sweep_report import trend

    # the gain falls 6 points per tenfold images
    points = [point(v, 30 - 6 * np.log10(n), 1.0, images=n) for v, n in ((5, 50), (50, 500), (None, 5000))]
    t = trend(points, "data.train_per_class")
    assert t.slope_points_per_decade == pytest.approx(-6.0) and t.x == "log10 training images" and t.observations == 3
    # by hand: x = -1, 0, 1 around the mean; the slope's variance sum c_i^2 SE_i^2 = 2 x (1/2)^2 = 1/2, 10 df each
    # part, Satterthwaite: (1/2)^2 / (2 x (1/4)^2 / 10) = 20 degrees of freedom
    half = stats.t.ppf(0.975, 20) * np.sqrt(0.5)
    assert t.ci95 == pytest.approx([-6.0 - half, -6.0 + half])
    assert trend([*points[:2], point(None, 0.0, images=5000)], "data.train_per_class").ci95 is None  # < 3 seeds


# ---------------------------------------------------------------------------- suites

def test_the_suite_has_an_interval_on_these_datasets_one_over_datasets_like_these_and_a_prediction(tmp_path):
    gains = {name: comparison(tmp_path / name, p, s, rng_seed=i)
             for i, (name, p, s) in enumerate([("a", 0.8, 0.4), ("b", 0.6, 0.55), ("c", 0.5, 0.5)])}
    one = aggregate({"a": gains["a"]})
    assert one.mean_gain_points == pytest.approx(gains["a"].final_val_acc_points)
    assert one.fixed_effects_ci95 == pytest.approx(gains["a"].final_val_acc_ci95)  # one dataset: its own interval
    assert one.random_effects_ci95 is None and one.prediction_interval95 is None  # nothing to say from one
    every = aggregate(gains)
    values = [g.final_val_acc_points for g in gains.values()]
    assert every.mean_gain_points == pytest.approx(np.mean(values))
    fixed, random = every.fixed_effects_ci95, every.random_effects_ci95
    assert fixed[0] < every.mean_gain_points < fixed[1] and random[0] < fixed[0] and fixed[1] < random[1]
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)  # over datasets like these: t over the gains
    assert random == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    assert every.between_datasets_sd_points > 5  # +40, about +5, about 0: the datasets differ
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) * np.sqrt(1 + 1 / 3)
    assert np.mean(values) + half > 100  # past what a gain can be: cut there
    assert every.prediction_interval95 == pytest.approx([np.mean(values) - half, 100.0])
    assert every.datasets_above_0_holm == 1 and every.datasets_below_0_holm == 0  # only a's is clear after Holm
    assert "interquartile mean and the median: no interval" in every.ci_method
    assert aggregate({"a": gains["a"], "x": None}).datasets_without_gain == ["x"]
    two = aggregate({"a": gains["a"], "b": gains["b"]})
    assert two.random_effects_ci95 and two.prediction_interval95 is None and "needs 3 datasets" in two.ci_method


def hand_gain(mean: float, se: float, df: float = 30.0) -> Gain:
    """A paired 3-seed gain with standard error `se`, all of it from the seeds."""
    half = stats.t.ppf(0.975, df) * se
    return Gain(mean, "", final_val_acc_ci95=[mean - half, mean + half], standard_error_points=se,
                degrees_of_freedom=df, seed_variance_points2=3 * se ** 2, residual_variance_points2=0.0,
                image_variance_points2=0.0, image_degrees_of_freedom=1.0, per_seed_final_val_acc_points=[mean] * 3,
                paired_seeds=[0, 1, 2], paired=True)


@pytest.mark.parametrize("values", [(5.0, 5.2), (5.0, 5.2, 4.4)])
def test_datasets_that_agree_give_finite_numbers_each_inside_its_interval(values, tmp_path):
    # statsmodels' DerSimonian-Laird gave tau^2 = -2.08 here, and the report "+nan to +nan" (2 datasets) or an
    # interval beside a mean outside it (3)
    from dataclasses import asdict
    from statsmodels.stats.meta_analysis import combine_effects

    from transfer.files import write_json

    ses = (1.5, 1.4, 1.2)[:len(values)]
    agg = aggregate({str(i): hand_gain(v, se) for i, (v, se) in enumerate(zip(values, ses))})
    assert agg.between_datasets_sd_points == 0.0
    with np.errstate(invalid="ignore"):  # its own NaN standard errors
        assert combine_effects(np.array(values), np.array(ses) ** 2, method_re="dl").tau2 < 0  # what NaN came from
    for interval in (agg.random_effects_ci95, agg.fixed_effects_ci95, agg.prediction_interval95 or [-99, 99]):
        assert np.isfinite(interval).all() and interval[0] <= agg.mean_gain_points <= interval[1]
    write_json(tmp_path / "agg.json", asdict(agg), allow_nan=False)  # nothing JSON cannot hold
    from transfer.experiments.suite_report import aggregate_line
    assert "nan" not in aggregate_line(agg)


def test_holm_agrees_with_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from transfer.experiments.intervals import holm

    rng = np.random.default_rng(0)  # few draws: each multipletests call collects the garbage (0.3 s in a full run)
    for p in [[0.01, 0.02, 0.03, 0.04], [0.2, 0.001, 0.013, 0.5], *(rng.random(6) ** 4 for _ in range(6))]:
        assert list(holm(p)) == list(multipletests(p, alpha=0.05, method="holm")[0])


def test_a_suite_with_fewer_than_three_seeds_a_dataset_gives_no_interval_and_says_why(tmp_path):
    gains = {name: comparison(tmp_path / name, 0.7, 0.5, seeds=(0,), rng_seed=i) for i, name in enumerate("ab")}
    agg = aggregate(gains)
    assert agg.fixed_effects_ci95 is None and agg.random_effects_ci95 is None and agg.datasets_above_0_holm is None
    assert "1 paired seed(s) at the fewest" in agg.ci_method and agg.seeds_per_dataset == 1
