"""SUITE and grid SWEEPs: many datasets in one table, with the gain's interval per dataset and
rliable's aggregates over them. A stand-in launcher (LAUNCH) writes each run's records with a
known accuracy per dataset and arm, so the table's numbers are known and nothing trains here; the
slow test trains a real suite over the three source kinds."""
import csv
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import run_command, shapes_dataset, stand_in_launcher
from transfer.errors import ConfigError
from transfer.records import load_run
from transfer.experiments.grid import Grid
from transfer.experiments.plan import bases, check_overrides, plan
from transfer.experiments.spec import CompareSpec
from transfer.experiments.suites import Suite
IMAGES = 200  # the stand-in's validation images
# final accuracy per dataset (the basename of data.root) and arm; seed s adds s/100 to pretrained
ACCURACY = {"alpha": {"pretrained": 0.80, "scratch": 0.40}, "beta": {"pretrained": 0.60, "scratch": 0.55},
            "gamma": {"pretrained": 0.50, "scratch": 0.52}}


@pytest.fixture
def launcher(tmp_path):
    """A LAUNCH that 'trains' a run: config.yaml, metrics.json and val_predictions.csv with the
    ACCURACY of its dataset and arm; a dataset named 'broken' fails with a one-line error."""
    return stand_in_launcher(tmp_path, f"""
        dataset = Path(cfg.data.root).name
        with open(CALLS, "a") as f:
            f.write(json.dumps({{"out": str(out), "dataset": dataset, "args": args[1:]}}) + "\\n")
        if dataset == "broken":
            print(f"error: data.root {{cfg.data.root}} does not exist (stand-in)")
            sys.exit(2)
        right = round(({ACCURACY!r}[dataset][arm] + (cfg.train.seed / 100 if arm == "pretrained" else 0)) * {IMAGES})
        with open(out / "val_predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "predicted"])
            for i in range({IMAGES}):
                w.writerow([f"val[{{i}}]", "a", "a" if i < right else "b"])
        finish(right / {IMAGES})
    """)


def suite_file(tmp_path, names=("alpha", "beta", "gamma"), extra=""):
    path = tmp_path / "suite.yaml"
    entries = "\n".join(f"  {n}: {{data.root: {tmp_path / 'data' / n}, data.image_size: 48}}" for n in names)
    path.write_text(f"settings: {{train.epochs: 1}}\ndatasets:\n{entries}\n{extra}")
    return path


def compare_sh(tmp_path, *args, **env):
    return run_command(["scripts/compare.sh", *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env})


def calls(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # 24 stand-in runs
def test_a_suite_gives_the_table_the_aggregate_suite_png_and_summary(tmp_path, launcher):
    """...and a dataset whose runs fail is named, the others go on, exit 1 at the end."""
    launch, log = launcher
    suite = suite_file(tmp_path, names=("alpha", "beta", "broken", "gamma"))
    result = compare_sh(tmp_path, "train.batch_size=4", SUITE=str(suite), SEEDS="0 1 2", LAUNCH=launch)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    assert "error: run broken, pretrained, seed 0 failed (error: data.root" in result.stderr
    assert "error: 6 of 24 runs failed" in result.stderr
    out = tmp_path / "out"
    made = [c for c in calls(log) if c["dataset"] != "broken"]
    assert len(made) == 3 * 2 * 3
    assert {c["out"] for c in made} == {str(out / d / a / f"seed{s}") for d in ACCURACY
                                        for a in ("pretrained", "scratch") for s in (0, 1, 2)}
    first = next(c for c in made if c["dataset"] == "alpha")
    # the suite's settings, the dataset's, then the command line's
    assert first["args"].index("train.epochs=1") < first["args"].index("data.image_size=48") < first["args"].index(
        "train.batch_size=4")
    suite = json.loads((out / "summary.json").read_text())["suite"]
    expected = {d: 100 * (a["pretrained"] + 0.01 - a["scratch"]) for d, a in ACCURACY.items()}  # seeds 0-2: +0.01
    for name, gain in expected.items():
        got = suite["datasets"][name]
        assert got["gain"]["final_val_acc_points"] == pytest.approx(gain, abs=1e-6)
        assert got["arms"]["pretrained"]["seeds"] == 3 and got["missing"] == []
        assert (out / name / "report.md").is_file() and (out / name / "comparison.png").is_file()
    per_seed = [100 * (a["pretrained"] + s / 100 - a["scratch"]) for a in ACCURACY.values() for s in (0, 1, 2)]
    agg = suite["aggregate"]
    assert agg["mean_gain_points"] == pytest.approx(np.mean(list(expected.values())))
    assert agg["iqm_gain_points"] == pytest.approx(stats.trim_mean(per_seed, 0.25))
    fixed, random = agg["fixed_effects_ci95"], agg["random_effects_ci95"]
    assert fixed[0] <= agg["mean_gain_points"] <= fixed[1] and random[0] < fixed[0] and fixed[1] < random[1]
    intervals = [suite["datasets"][n]["gain"]["final_val_acc_ci95"] for n in ACCURACY]
    # Holm's correction is stricter than each interval alone: alpha's +41 points passes it
    assert 1 <= agg["datasets_above_0_holm"] <= sum(low > 0 for low, _ in intervals)
    assert agg["datasets_below_0_holm"] <= sum(high < 0 for _, high in intervals)
    report = (out / "report.md").read_text()
    assert report.startswith("# Pretrained vs scratch over 4 datasets")
    new = agg["prediction_interval95"]
    assert new[0] < random[0] and random[1] < new[1]
    assert f"mean gain of pretraining {agg['mean_gain_points']:+.1f} points (95% CI {fixed[0]:+.1f} to " \
           f"{fixed[1]:+.1f} of these datasets, {random[0]:+.1f} to {random[1]:+.1f} over datasets like these); spread " \
           f"between datasets {agg['between_datasets_sd_points']:.1f}; a new dataset's gain: " \
           f"{new[0]:+.1f} to {new[1]:+.1f} (95% prediction interval)" in report
    assert "| [alpha](alpha/report.md) | 81.0% ± 1.0 | 40.0% ± 0.0 | +41.0 points (" in report
    assert suite["datasets"]["broken"]["gain"] is None and agg["datasets_without_gain"] == ["broken"]
    assert suite["datasets"]["broken"]["missing"] == [f"{a} seed {s}" for a in ("pretrained", "scratch") for s in (0, 1, 2)]
    assert "| broken | missing | missing | — | — | pretrained seed 0, pretrained seed 1," in report
    assert "broken (no finished run)" in report
    holm = f"above 0 on {agg['datasets_above_0_holm']} of 3 datasets"  # of the 3 with a gain
    assert holm in report
    assert (out / "suite.png").stat().st_size > 10_000
    assert holm in result.stdout and str(out / "suite.png") in result.stdout
    rebuilt = run_command([sys.executable, "-m", "transfer.report", str(out)], capture_output=True, text=True)
    assert rebuilt.returncode == 0 and json.loads((out / "summary.json").read_text())["suite"] == suite


def test_print_jobs_lists_every_run_of_a_suite(tmp_path, launcher):
    launch, log = launcher
    suite_file(tmp_path)
    script = Path(__file__).resolve().parents[2] / "scripts" / "compare.sh"
    result = run_command([str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,  # SUITE from here
                         env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
                              "SUITE": "suite.yaml", "SEEDS": "0 1", "PRINT_JOBS": "1", "LAUNCH": launch})
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 12, result.stderr
    for name in ACCURACY:
        assert sum(f"data.root={tmp_path / 'data' / name}" in line for line in lines) == 4
    assert not log.exists()  # printed, not run
    assert json.loads((tmp_path / "out" / "suite.json").read_text())["datasets"]["beta"]["data.image_size"] == 48


@pytest.mark.slow  # 8 stand-in runs
def test_a_grid_sweep_runs_every_combination_in_its_own_folder(tmp_path, launcher):
    launch, log = launcher
    (tmp_path / "data" / "alpha").mkdir(parents=True)
    result = compare_sh(tmp_path, f"data.root={tmp_path / 'data' / 'alpha'}", LAUNCH=launch, SEEDS="0",
                        SWEEP="data.train_per_class=10,100;model.name=resnet18,resnet50")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    folders = {c["out"] for c in calls(log)}
    assert folders == {str(out / f"data.train_per_class={n}" / f"model.name={m}" / arm / "seed0")
                       for n in (10, 100) for m in ("resnet18", "resnet50") for arm in ("pretrained", "scratch")}
    for c in calls(log):  # each run is given the values its folder names
        assert [a for a in c["args"] if a.startswith(("data.train_per_class=", "model.name="))] == [
            part for part in c["out"].split("/") if "=" in part]
    sweep = json.loads((out / "summary.json").read_text())["sweep"]
    assert [p["setting"] for p in sweep["points"]] == [
        {"data.train_per_class": n, "model.name": m} for n in (10, 100) for m in ("resnet18", "resnet50")]
    assert len(sweep["lines"]) == 2 and sweep["lines"][0]["others"] == {"model.name": "resnet18"}
    # one seed: no interval, so nothing is tested
    assert [v["verdict"] for v in sweep["lines"][0]["verdicts"]] == ["not tested", "not tested"]
    report = (out / "report.md").read_text()
    assert "## Sweep over `data.train_per_class` x `model.name`" in report
    assert "| 100 | resnet50 | 80.0% | 40.0% | +40.0 points" in report
    assert (out / "sweep.png").stat().st_size > 10_000


@pytest.mark.slow  # 8 stand-in runs
def test_a_suite_with_a_sweep_reports_each_point(tmp_path, launcher):
    launch, log = launcher
    result = compare_sh(tmp_path, SUITE=str(suite_file(tmp_path, names=("alpha", "beta"))), SEEDS="0",
                        SWEEP="data.train_per_class=10,null", LAUNCH=launch)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert {c["out"] for c in calls(log)} == {str(out / d / f"data.train_per_class={v}" / a / "seed0")
                                              for d in ("alpha", "beta") for v in (10, "null")
                                              for a in ("pretrained", "scratch")}
    suite = json.loads((out / "summary.json").read_text())["suite"]
    assert [p["setting"] for p in suite["points"]] == [{"data.train_per_class": 10}, {"data.train_per_class": None}]
    assert suite["at"] == {"data.train_per_class": None}
    report = (out / "report.md").read_text()
    assert "## At `data.train_per_class=10`" in report and "## At `data.train_per_class=all`" in report
    assert (out / "alpha" / "sweep.png").is_file() and (out / "suite.png").is_file()


@pytest.mark.parametrize("text, says", [
    ("datasets: {}\n", "must be a mapping with `datasets:`"),
    ("datasets:\n  a b: {data.root: x}\n", "dataset name 'a b' is not usable"),
    ("datasets:\n  pets: {data.rot: x}\n", "dataset pets (SUITE): unknown key 'data.rot'"),
    ("datasets:\n  pets: {data.image_size: big}\n", "dataset pets (SUITE): data.image_size='big' has the wrong type"),
    ("datasets:\n  pets: [data.root]\n", "dataset pets must be a mapping"),
    ("datasets:\n  pets: {data.root: x}\nextras: 1\n", "unknown top-level key 'extras'"),
    ("datasets: [\n", "is not valid YAML at line"),
])
def test_a_bad_suite_is_named_with_the_dataset_and_key(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        spec = CompareSpec.from_environ({"SUITE": str(path), "OUT": str(tmp_path / "out")}, sys.executable)
        plan(spec.bases(), list(spec.arms), [], [])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_bad_suite_is_one_line_and_exit_2_before_any_run(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("datasets:\n  pets: {data.rot: x}\n")
    result = compare_sh(tmp_path, SUITE=str(path))
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr == "error: dataset pets (SUITE): unknown key 'data.rot'; valid keys in data: " + \
        result.stderr.split("valid keys in data: ")[1] and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_key_set_per_dataset_is_refused_on_the_command_line_and_in_the_sweep(tmp_path):
    suite = Suite.load(suite_file(tmp_path))
    with pytest.raises(ConfigError, match="data.root is set per dataset by SUITE"):
        check_overrides(suite, None, ["data.root=/elsewhere"])
    with pytest.raises(ConfigError, match="SWEEP's data.image_size is also set by dataset alpha"):
        check_overrides(suite, Grid.parse("data.image_size=32,64", "SWEEP"), [])
    check_overrides(suite, Grid.parse("data.train_per_class=5,null", "SWEEP"), ["model.name=resnet18"])
    with pytest.raises(ConfigError, match="does not exist"):
        Suite.load(tmp_path / "nowhere.yaml")


def test_the_shipped_suites_plan(tmp_path):
    """Every shipped suite's every dataset loads as settings for both arms (nothing downloads)."""
    files = sorted((Path(__file__).resolve().parents[2] / "suites").glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        suite = Suite.load(path)
        jobs = plan(bases(tmp_path, None, suite), ["pretrained", "scratch"], [0], [])
        assert len(jobs) == 2 * len(suite.datasets)
        for job in jobs:
            data = job.settings["data"]
            assert data["dataset"] or data["url"], f"{path.name}: {job.label()} names no source"


@pytest.mark.slow
def test_a_real_suite_over_the_three_source_kinds(image_folder, weights, tmp_path):
    """An image folder, a parquet folder (train only, validation held out) and a save_to_disk folder,
    two arms, two seeds: trained runs give the table, the aggregate line, suite.png and summary.json."""
    parquet = tmp_path / "parquet"  # a train split only: validation is held out of it, the same for every run
    (parquet / "data").mkdir(parents=True)
    shapes_dataset(image_folder)["train"].to_parquet(str(parquet / "data" / "train-00000-of-00001.parquet"))
    disk = tmp_path / "disk"
    shapes_dataset(image_folder, ("train", "val"), label_kind="string").save_to_disk(str(disk))
    suite = tmp_path / "three.yaml"
    suite.write_text(textwrap.dedent(f"""
        settings: {{model.name: resnet10t, data.image_size: 32, train.batch_size: 8, data.num_workers: 0,
                    train.epochs: 1, data.url: null, data.check_images: false, model.weights_file: {weights}}}
        datasets:
          folder: {{data.root: {image_folder}}}
          parquet: {{data.dataset: {parquet}, data.val_fraction: 0.25}}
          disk: {{data.dataset: {disk}, data.label_column: shape, data.hflip: false}}
    """))
    result = compare_sh(tmp_path, SUITE=str(suite), SEEDS="0 1", JOBS="2", LAUNCH=sys.executable,
                        OMP_NUM_THREADS="1")  # two runs at a time on two cores: one thread each
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())["suite"]
    assert list(summary["datasets"]) == ["folder", "parquet", "disk"]
    for name, d in summary["datasets"].items():
        assert d["arms"]["pretrained"]["seeds"] == d["arms"]["scratch"]["seeds"] == 2, name
        assert d["gain"]["paired"] and d["gain"]["images"] == (12 if name == "parquet" else 18)
        assert d["gain"]["final_val_acc_ci95"] is None and len(d["gain"]["per_seed_image_ci95"]) == 2  # 2 seeds
        assert d["missing"] == [] and (out / name / "report.md").is_file()
    scored = []  # every arm and seed scores the same held-out images of the parquet source
    for run_dir in [out / "parquet" / arm / f"seed{s}" for arm in ("pretrained", "scratch") for s in (0, 1)]:
        with open(run_dir / "val_predictions.csv", newline="") as f:
            scored.append(sorted(row["id"] for row in csv.DictReader(f)))
    assert all(s == scored[0] for s in scored) and len(scored[0]) == 12
    assert load_run(out / "disk" / "scratch" / "seed1").settings["data"]["hflip"] is False
    assert load_run(out / "folder" / "scratch" / "seed1").settings["data"]["hflip"] is True
    agg = summary["aggregate"]
    assert agg["datasets_with_gain"] == 3 and agg["fixed_effects_ci95"] is None and agg["seeds_per_dataset"] == 2
    report = (out / "report.md").read_text()
    assert "| [folder](folder/report.md) |" in report and "mean gain of pretraining" in report
    assert (out / "suite.png").stat().st_size > 10_000
    assert "over 3 datasets: mean gain of pretraining" in result.stdout


def test_a_bad_command_line_value_with_a_suite_is_not_blamed_on_a_dataset(tmp_path):
    spec = CompareSpec.from_environ({"SUITE": str(suite_file(tmp_path)), "OUT": str(tmp_path / "out")}, sys.executable)
    with pytest.raises(ConfigError) as e:
        plan(spec.bases(), list(spec.arms), [], ["train.epochs=-1"])
    assert str(e.value).startswith("train.epochs=-1 is invalid") and "dataset" not in str(e.value)
