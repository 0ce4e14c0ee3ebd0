"""TUNE: every arm over the same grid on the selection split, the reported runs with each arm's
choice. A stand-in launcher (LAUNCH) writes a run's records with a selection accuracy that peaks
at a known learning rate per arm, so the choice is known and nothing trains here; the slow test
tunes real runs."""
import json
import os
import sys

import pytest

from conftest import run_command, stand_in_launcher
from transfer.errors import ConfigError
from transfer.experiments.grid import Grid
from transfer.experiments.spec import CompareSpec
BEST_LR = {"pretrained": 1e-4, "scratch": 1e-3}  # where the stand-in's selection accuracy peaks


@pytest.fixture
def scoring_launcher(tmp_path):
    """A LAUNCH that 'trains' a run: config.yaml as a run writes it, and metrics.json whose
    select_acc is 0.9 at the arm's BEST_LR, 0.1 less per decade away; val_acc records the LR."""
    return stand_in_launcher(tmp_path, f"""
        lr = float(cfg.optim.lr)
        with open(CALLS, "a") as f:
            f.write(str(out) + "\\n")
        if lr > 0.005:
            print("stopped: the loss is not finite (stand-in)")
            sys.exit(3)
        finish(lr, select_acc=0.9 - 0.1 * abs(math.log10(lr) - math.log10({BEST_LR!r}[arm])), peak_lr=lr,
               chosen_on="select")
    """)


def compare_sh(tmp_path, *args, **env):
    return run_command(["scripts/compare.sh", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env})


GRID = "optim.lr=1e-4,1e-3,1e-2"


@pytest.mark.slow  # a whole tuned comparison: the full tier
def test_each_arm_gets_its_own_choice_and_its_reported_runs_use_it(tmp_path, scoring_launcher):
    launch, calls = scoring_launcher
    result = compare_sh(tmp_path, "data.select_fraction=0.2", TUNE=GRID, SEEDS="3 4", LAUNCH=launch)
    out = tmp_path / "out"
    # 1e-2 "diverged" for both arms: named, the choice made among the rest, exit 1 at the end
    assert result.returncode == 1 and "2 of 10 runs failed" in result.stderr, result.stdout + result.stderr
    assert "tuned pretrained: optim.lr=1e-4 (selection accuracy optim.lr=1e-4: 0.9000, optim.lr=1e-3: 0.8000, " \
           "optim.lr=1e-2: failed)" in result.stdout
    ran = calls.read_text().splitlines()
    assert ran[:6] == [str(out / "tune" / f"optim.lr={v}" / arm / "seed1000")  # tuning first, on an unreported seed
                       for v in ("1e-4", "1e-3", "1e-2") for arm in ("pretrained", "scratch")]
    assert sorted(ran[6:]) == sorted(str(out / arm / f"seed{s}") for arm in BEST_LR for s in (3, 4))
    for arm, lr in BEST_LR.items():
        for seed in (3, 4):
            metrics = json.loads((out / arm / f"seed{seed}" / "metrics.json").read_text())
            assert metrics["final_val_acc"] == pytest.approx(lr)  # trained with the arm's choice
    summary = json.loads((out / "summary.json").read_text())
    tuned = summary["arms"]["scratch"]["tuned"]
    assert tuned["chosen"] == {"optim.lr": "1e-3"} and tuned["seeds"] == [1000] and tuned["keys"] == ["optim.lr"]
    assert [r["select_acc"] for r in tuned["points"]] == [pytest.approx(0.8), pytest.approx(0.9), None]
    report = (out / "report.md").read_text()
    assert "## Tuning, on the selection split" in report
    assert "| 1e-4 | **90.0%** | 80.0% |" in report and "| 1e-2 | failed or not run | failed or not run |" in report
    # pretrained's best is the smallest rate tried: said, in the report and on the console; scratch's is inside
    assert "chosen at the edge of the grid" in report and "pretrained: optim.lr=1e-4 (the first value tried)" in report
    assert "scratch: optim.lr" not in report.split("**Warning**: chosen at the edge")[1]
    assert "warning: pretrained: optim.lr=1e-4 (the first value tried) is at the edge of the grid" in result.stdout
    # a second call reuses all of it and chooses the same
    again = compare_sh(tmp_path, "data.select_fraction=0.2", TUNE=GRID, SEEDS="3 4", LAUNCH=launch)
    assert len(calls.read_text().splitlines()) == len(ran) + 2  # only the two failed points, tried again
    assert again.stdout.count("reusing it") == 8


def test_the_tuning_seeds_are_never_reported_ones():
    with pytest.raises(ConfigError, match="TUNE_SEEDS='3' repeats a seed or shares one with SEEDS='3 4'"):
        CompareSpec.from_environ({"SEEDS": "3 4", "TUNE_SEEDS": "3", "TUNE": GRID}, sys.executable)
    spec = CompareSpec.from_environ({"SEEDS": "3 4", "TUNE_SEEDS": "7 8", "TUNE": GRID}, sys.executable)
    assert spec.tune_seeds == (7, 8) and CompareSpec.from_environ({}, sys.executable).tune_seeds == (1000,)


def test_points_within_a_standard_error_of_the_best_are_marked_indistinguishable(tmp_path):
    from transfer.experiments.tuning import choices

    base = tmp_path / "base"  # 100 selection images: the binomial standard error of 0.8 is 0.04
    (base / "tune").mkdir(parents=True)
    (base / "tune" / "grid.json").write_text(json.dumps({"axes": [["optim.lr", [1, 2, 3]]], "arms": ["scratch"],
                                                          "seeds": [1000]}))
    for lr, acc in ((1, 0.80), (2, 0.77), (3, 0.70)):
        run = base / "tune" / f"optim.lr={lr}" / "scratch" / "seed1000"
        run.mkdir(parents=True)
        (run / "select_split.json").write_text(json.dumps({"select": [f"i{k}" for k in range(100)]}))
        (run / "metrics.json").write_text(json.dumps({
            "history": [{"epoch": 1, "lr": 0.1, "train_loss": 1, "val_loss": 1, "val_acc": 0.5, "epoch_seconds": 1,
                         "train_images_per_s": 1, "select_acc": acc, "select_loss": 1 - acc}],
            "best_val_acc": 0.5, "best_epoch": 1, "final_val_acc": 0.5, "final_val_loss": 1, "val_samples": 10,
            "train_seconds": 1}))
    points = choices(base)["scratch"].points
    assert [p.indistinguishable for p in points] == [False, True, False]  # 0.77 is within 0.04 of 0.80; 0.70 is not
    assert points[0].standard_error == pytest.approx(0.04)


def test_tuning_needs_a_selection_split(tmp_path, scoring_launcher):
    launch, calls = scoring_launcher
    result = compare_sh(tmp_path, TUNE=GRID, LAUNCH=launch)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "set data.select_fraction" in result.stderr and not calls.exists()


@pytest.mark.slow  # a tuned comparison by hand: three compare.sh calls: the full tier
def test_print_jobs_prints_the_tuning_runs_then_the_reported_ones(tmp_path, scoring_launcher):
    launch, _ = scoring_launcher
    first = compare_sh(tmp_path, "data.select_fraction=0.2", TUNE="optim.lr=1e-4,1e-3", PRINT_JOBS="1", LAUNCH=launch)
    lines = first.stdout.strip().splitlines()
    assert first.returncode == 0 and len(lines) == 4 and all("/tune/optim.lr=" in line for line in lines)
    assert "then PRINT_JOBS=1 again prints the reported runs" in first.stderr
    for line in lines:  # the scheduler runs them
        run_command(["bash", "-c", line], check=True)
    second = compare_sh(tmp_path, "data.select_fraction=0.2", TUNE="optim.lr=1e-4,1e-3", PRINT_JOBS="1", LAUNCH=launch)
    lines = second.stdout.strip().splitlines()
    assert len(lines) == 6 and "optim.lr=1e-4" in lines[4] and "configs/pretrained.yaml" in lines[4]
    assert "optim.lr=1e-3" in lines[5] and "configs/scratch.yaml" in lines[5]


@pytest.mark.slow  # a whole tuned comparison: the full tier
def test_a_reused_run_with_other_settings_is_refused(tmp_path, scoring_launcher):
    launch, _ = scoring_launcher
    assert compare_sh(tmp_path, "optim.lr=1e-4", ARMS="scratch", LAUNCH=launch).returncode == 0
    changed = compare_sh(tmp_path, "optim.lr=1e-3", ARMS="scratch", LAUNCH=launch)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "finished with other settings than planned now (optim.lr 0.0001 -> 0.001)" in changed.stderr


@pytest.mark.parametrize("text, says", [("optim.lr", "not of the form key=v1,v2"),
                                        ("optim.lr=1,1", "repeats a value"),
                                        ("optim.lr=1;optim.lr=2", "names a key twice")])
def test_a_bad_grid_is_named(text, says):
    with pytest.raises(ConfigError, match=says):
        CompareSpec.from_environ({"TUNE": text}, sys.executable)


def test_a_grid_is_every_combination():
    grid = Grid.parse("optim.lr=1e-4,1e-3; train.label_smoothing=0,0.1")
    assert grid.keys == ["optim.lr", "train.label_smoothing"]
    assert grid.points() == [{"optim.lr": "1e-4", "train.label_smoothing": 0},
                             {"optim.lr": "1e-4", "train.label_smoothing": 0.1},
                             {"optim.lr": "1e-3", "train.label_smoothing": 0},
                             {"optim.lr": "1e-3", "train.label_smoothing": 0.1}]


def test_tuning_a_key_that_is_also_set_is_refused(tmp_path):
    result = compare_sh(tmp_path, "data.select_fraction=0.2", "optim.lr=1e-3", TUNE=GRID, PRINT_JOBS="1")
    assert result.returncode == 2 and "TUNE's optim.lr is also set" in result.stderr


def test_a_choice_at_the_grid_s_edge_is_named():
    from transfer.experiments.records import ArmTuning, TuningPoint
    from transfer.experiments.tuning import grid_edges

    def arm(chosen, values=(1e-4, 1e-3, 1e-2)):
        return ArmTuning(0, ["optim.lr"], [TuningPoint({"optim.lr": v}, 0.5, 1.0, "") for v in values],
                         {"optim.lr": chosen})

    assert grid_edges({"a": arm(1e-2), "b": arm(1e-3), "c": arm(1e-4)}) == [
        "a: optim.lr=0.01 (the last value tried)", "c: optim.lr=0.0001 (the first value tried)"]
    assert grid_edges({"two": arm(1e-2, values=(1e-3, 1e-2))}) == []  # two values have no inside
    assert grid_edges({"none": ArmTuning(0, ["optim.lr"], [], None)}) == []
