"""Does the gain's 95% interval cover the true gain 95% of the time? On synthetic predictions, no
training: each simulated comparison draws a validation set from a population of images and, per
seed, two trained networks whose accuracy varies with the seed; the true gain is known in closed
form. Three regimes: seed-dominated (networks vary a lot between seeds), image-dominated (the arms
differ image by image: which images the set holds matters most) and pure churn (only per-image
coin flips). The table for the docs: `python tests/experiments/test_coverage.py`.
"""
import numpy as np
import pytest
from scipy import stats

from transfer.experiments.intervals import crossed

IMAGES = 300
# (the seed's spread of network quality, the spread of the per-image advantage of pretraining)
SCENARIOS = {"seed-dominated": (0.25, 0.1), "image-dominated": (0.02, 0.6), "pure churn": (0.0, 0.0)}
QUALITY = (0.6, 0.2)  # pretrained, scratch: P(right) = Phi(quality + seed effect - difficulty [+ advantage])


def true_gain(scenario: str) -> float:
    """Over seeds and the image population: E Phi(q + e - z + u) = Phi(q / sqrt(2 + var e + var u))."""
    seed_sd, advantage_sd = SCENARIOS[scenario]
    return 100 * (stats.norm.cdf(QUALITY[0] / np.sqrt(2 + seed_sd ** 2 + advantage_sd ** 2))
                  - stats.norm.cdf(QUALITY[1] / np.sqrt(2 + seed_sd ** 2)))


def table(scenario: str, seeds: int, rng) -> np.ndarray:
    """One comparison's seeds x images table of paired differences, in points."""
    seed_sd, advantage_sd = SCENARIOS[scenario]
    difficulty, advantage = rng.normal(0, 1, IMAGES), rng.normal(0, advantage_sd, IMAGES)
    pretrained = rng.random((seeds, IMAGES)) < stats.norm.cdf(
        QUALITY[0] + seed_sd * rng.normal(0, 1, (seeds, 1)) - difficulty + advantage)
    scratch = rng.random((seeds, IMAGES)) < stats.norm.cdf(QUALITY[1] + seed_sd * rng.normal(0, 1, (seeds, 1)) - difficulty)
    return 100 * (pretrained.astype(np.float64) - scratch)


def coverage(scenario: str, seeds: int, repeats: int = 2000, seed: int = 0) -> float:
    rng, truth = np.random.default_rng(seed), true_gain(scenario)
    hits = 0
    for _ in range(repeats):
        low, high = crossed(table(scenario, seeds, rng)).interval()
        hits += low <= truth <= high
    return hits / repeats


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_interval_covers_the_true_gain_95_percent_of_the_time_at_5_seeds(scenario):
    assert 0.93 <= coverage(scenario, seeds=5) <= 0.97


def test_one_seed_is_the_paired_t_over_images():
    d = table("pure churn", 1, np.random.default_rng(1))
    result = crossed(d)
    assert result.degrees_of_freedom == IMAGES - 1
    assert result.standard_error == pytest.approx(d[0].std(ddof=1) / np.sqrt(IMAGES))


def test_the_standard_error_by_hand():
    # rows (seeds) mean 1 and 1/3: seed part var/n = (2/9)/2 = 1/9. Columns 1, 0, 1: image mean square
    # 2 x 1/3 = 2/3; residuals +-2/3, -+1/3, -+1/3: residual mean square (4/3)/2 = 2/3, equal to the
    # image mean square, so the images add nothing beyond what the seeds' spread already holds (the
    # seed x image interaction is counted once): SE^2 = 1/9, with the seed part's 1 degree of freedom
    result = crossed(np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    assert result.mean == pytest.approx(2 / 3) and result.standard_error == pytest.approx(1 / 3)
    assert result.degrees_of_freedom == pytest.approx(1.0)


if __name__ == "__main__":  # the table of docs/experiments.md
    print("| scenario | 2 seeds | 3 seeds | 5 seeds |\n|---|---|---|---|")
    for name in SCENARIOS:
        print(f"| {name} | " + " | ".join(f"{coverage(name, n):.3f}" for n in (2, 3, 5)) + " |")
