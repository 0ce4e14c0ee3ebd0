"""Tuning every arm the same way (`TUNE='optim.lr=1e-4,3e-4,1e-3,3e-3' scripts/compare.sh`),
on images that are not the scored ones, with seeds that are not the reported ones.

Every arm runs every point of the grid on the tuning seeds (TUNE_SEEDS, by default 1000: never one
of SEEDS), with the same settings as its reported runs. Each is scored by its final accuracy on the
selection split (data.select_fraction: training images held out from training, never validation
images), averaged over the tuning seeds; the best point per arm (ties: the lower selection loss,
then the earlier point) is what that arm's reported runs, every seed, train with. The protocol of
VTAB and of Kornblith et al. 2019: the same grid for every arm, chosen on held-out training data.
The reported seeds are fresh draws: a choice made on a seed that is also reported would report
that seed's winning run, flattering the noisier arm most (the winner's curse). Each point's score
has a standard error (over the tuning seeds, or, with one, the binomial one of its selection
images), and points within one of the best are marked indistinguishable. The interval of the gain
takes the chosen settings as given: the tuning's own variance is not in it.

    <base>/tune/grid.json                                  {"axes", "arms", "seeds"}
    <base>/tune/<key>=<value>[/<key2>=<value2>]/<arm>/seed<N>      one tuning run per point, arm and seed

The choice is a function of the saved runs (`choices`), so the report and the runner agree and a
scheduler that ran the printed commands gets the same choice.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..files import write_json
from ..records import is_finished, read_metrics
from .grid import Grid, setting_args, value_text
from .layout import point_folder, run_folder
from .plan import Base, Job, make_job, run_args
from .records import ArmTuning, TuningPoint

TUNE_DIR = "tune"
GRID_FILE = "grid.json"


def tune_folder(base: Path, point: dict) -> Path:
    """<base>/tune/<key>=<value>/...: where a tuning point's runs live."""
    return point_folder(Path(base) / TUNE_DIR, point)


def plan_tuning(bases_: list[Base], arms: list[str], tune_seeds: list[int], overrides: list[str],
                grid: Grid) -> list[Job]:
    """The tuning runs: every point of the grid, every arm, every tuning seed, in every base folder."""
    given = {o.partition("=")[0] for o in overrides} | {k for b in bases_ for k in b.point} | {
        a.partition("=")[0] for b in bases_ for a in b.entry}
    taken = sorted(set(grid.keys) & given)
    if taken:
        raise ConfigError(f"TUNE's {', '.join(taken)} is also set by SWEEP, SUITE or a key=value; tune it, or set it, "
                          f"not both")
    jobs = []
    for base in bases_:
        for point in grid.points():
            for arm in arms:
                for seed in tune_seeds:
                    job = make_job(arm, base, seed, run_folder(tune_folder(base.folder, point), arm, seed),
                                   run_args(base, overrides, setting_args(point)), point)
                    if job.settings["data"]["select_fraction"] is None:
                        raise ConfigError(f"TUNE needs a selection split to choose on, and arm {arm} has none: set "
                                          f"data.select_fraction (e.g. data.select_fraction=0.1) so the choice is "
                                          f"never made on the validation images it is scored on")
                    jobs.append(job)
    return jobs


def write_grids(bases_: list[Base], arms: list[str], tune_seeds: list[int], grid: Grid) -> None:
    for base in bases_:
        write_json(base.folder / TUNE_DIR / GRID_FILE, {"axes": grid.to_json(), "arms": list(arms),
                                                        "seeds": list(tune_seeds)})


def read_grid(base: Path) -> dict | None:
    path = Path(base) / TUNE_DIR / GRID_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _score(folder: Path) -> tuple[float, float | None, int] | None:
    """(selection accuracy, selection loss, selection images) of a finished tuning run, None when it
    did not finish (or recorded no selection score)."""
    if not is_finished(folder):
        return None
    last = read_metrics(folder).history[-1]
    split = folder / "select_split.json"
    images = len(json.loads(split.read_text())["select"]) if split.is_file() else 0
    return None if last.select_acc is None else (last.select_acc, last.select_loss, images)


def _point(setting: dict, scores: list[tuple[float, float | None, int]], runs: list[str]) -> TuningPoint:
    """A point's mean score over its finished tuning seeds, with the score's standard error."""
    if not scores:
        return TuningPoint(setting=setting, select_acc=None, select_loss=None, run=None)
    accs = np.array([a for a, _, _ in scores])
    losses = [loss for _, loss, _ in scores if loss is not None]
    acc = float(accs.mean())
    if len(scores) > 1:
        se = float(accs.std(ddof=1) / np.sqrt(len(scores)))
    else:
        images = scores[0][2]
        se = float(np.sqrt(acc * (1 - acc) / images)) if images else None
    return TuningPoint(setting=setting, select_acc=acc, select_loss=float(np.mean(losses)) if losses else None,
                       run=runs[0], runs=runs, standard_error=se)


def choices(base: Path) -> dict[str, ArmTuning] | None:
    """Per arm: every point of the grid with its score (the mean over the tuning seeds that
    finished), the chosen setting (None when no point of the arm finished), and which points are
    within a standard error of the best. None when `base` was not tuned."""
    meta = read_grid(base)
    if meta is None:
        return None
    grid = Grid.from_json(meta["axes"])
    seeds = meta["seeds"] if "seeds" in meta else [meta.get("seed")]  # (grid.json before TUNE_SEEDS: "seed")
    result = {}
    for arm in meta["arms"]:
        rows = []
        for point in grid.points():
            scored = [(s, run_folder(tune_folder(base, point), arm, s)) for s in seeds]
            found = [(score, str(folder)) for _, folder in scored if (score := _score(folder)) is not None]
            rows.append(_point(point, [f[0] for f in found], [f[1] for f in found]))
        scored = [(i, r) for i, r in enumerate(rows) if r.select_acc is not None]
        best = max(scored, key=lambda ir: (ir[1].select_acc, -(ir[1].select_loss or 0.0), -ir[0]), default=None)
        if best is not None:
            top, se = best[1].select_acc, best[1].standard_error or 0.0
            rows = [dataclasses.replace(r, indistinguishable=r.select_acc is not None and r is not best[1]
                                        and top - r.select_acc <= se) for r in rows]
        result[arm] = ArmTuning(seed=seeds[0], seeds=list(seeds), keys=grid.keys, points=rows,
                                chosen=None if best is None else best[1].setting)
    return result


def grid_edges(tuned: dict[str, ArmTuning]) -> list[str]:
    """'scratch: optim.lr=0.01 (the last value tried)' for each arm whose choice sits at an end of
    a key with three or more values: its best may lie beyond."""
    edges = []
    for name, t in tuned.items():
        if not t.chosen:
            continue
        for key, value in t.chosen.items():
            values = list(dict.fromkeys(p.setting[key] for p in t.points))
            if len(values) >= 3 and value in (values[0], values[-1]):
                which = "first" if value == values[0] else "last"
                edges.append(f"{name}: {key}={value_text(value)} (the {which} value tried)")
    return edges
