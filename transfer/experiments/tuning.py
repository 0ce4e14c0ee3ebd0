"""Tuning every arm the same way (`TUNE='optim.lr=1e-4,3e-4,1e-3,3e-3' scripts/compare.sh`),
on images that are not the scored ones.

Every arm runs every point of the grid on the first seed (SEEDS' first, or the config's seed),
with the same settings as its reported runs. Each is scored by its final accuracy on the selection
split (data.select_fraction: training images held out from training, never validation images);
the best point per arm (ties: the lower selection loss, then the earlier point) is what that arm's
reported runs, every seed, train with. The protocol of VTAB and of Kornblith et al. 2019: the same
grid for every arm, chosen on held-out training data. Choosing on the first seed only keeps the
cost at one run per point and arm; the reported seeds then measure the chosen recipe's spread.

    <base>/tune/grid.json                                  {"axes", "arms", "seed"}
    <base>/tune/<key>=<value>[/<key2>=<value2>]/<arm>[/seed<N>]    one tuning run per point and arm

The choice is a function of the saved runs (`choices`), so the report and the runner agree and a
scheduler that ran the printed commands gets the same choice.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..files import write_json
from ..records import is_finished, read_metrics
from .plan import Base, Grid, Job, make_job, point_folder, run_args, run_folder, setting_args, value_text
from .records import ArmTuning, TuningPoint

TUNE_DIR = "tune"
GRID_FILE = "grid.json"


def tune_folder(base: Path, point: dict) -> Path:
    """<base>/tune/<key>=<value>/...: where a tuning point's runs live."""
    return point_folder(Path(base) / TUNE_DIR, point)


def plan_tuning(bases_: list[Base], arms: list[str], seeds: list[int], overrides: list[str], grid: Grid) -> list[Job]:
    """The tuning runs: every point of the grid, every arm, the first seed, in every base folder."""
    given = {o.partition("=")[0] for o in overrides} | {k for b in bases_ for k in b.point} | {
        a.partition("=")[0] for b in bases_ for a in b.entry}
    taken = sorted(set(grid.keys) & given)
    if taken:
        raise ConfigError(f"TUNE's {', '.join(taken)} is also set by SWEEP, SUITE or a key=value; tune it, or set it, "
                          f"not both")
    seed = seeds[0] if seeds else None
    jobs = []
    for base in bases_:
        for point in grid.points():
            for arm in arms:
                job = make_job(arm, base, seed, run_folder(tune_folder(base.folder, point), arm, seed),
                               run_args(base, overrides, setting_args(point)), point)
                if job.settings["data"]["select_fraction"] is None:
                    raise ConfigError(f"TUNE needs a selection split to choose on, and arm {arm} has none: set "
                                      f"data.select_fraction (e.g. data.select_fraction=0.1) so the choice is never "
                                      f"made on the validation images it is scored on")
                jobs.append(job)
    return jobs


def write_grids(bases_: list[Base], arms: list[str], seeds: list[int], grid: Grid) -> None:
    for base in bases_:
        write_json(base.folder / TUNE_DIR / GRID_FILE, {"axes": grid.to_json(), "arms": list(arms),
                                                        "seed": seeds[0] if seeds else None})


def read_grid(base: Path) -> dict | None:
    path = Path(base) / TUNE_DIR / GRID_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _score(folder: Path) -> tuple[float | None, float | None] | None:
    """(selection accuracy, selection loss) of a finished tuning run, None when it did not finish."""
    if not is_finished(folder):
        return None
    last = read_metrics(folder).history[-1]
    return last.select_acc, last.select_loss


def choices(base: Path) -> dict[str, ArmTuning] | None:
    """Per arm: every point of the grid with its score, and the chosen setting (None when no point
    of the arm finished). None when `base` was not tuned."""
    meta = read_grid(base)
    if meta is None:
        return None
    grid = Grid.from_json(meta["axes"])
    result = {}
    for arm in meta["arms"]:
        rows = []
        for point in grid.points():
            folder = run_folder(tune_folder(base, point), arm, meta["seed"])
            score = _score(folder)
            acc, loss = score or (None, None)
            rows.append(TuningPoint(setting=point, select_acc=acc, select_loss=loss,
                                    run=str(folder) if score else None))
        scored = [(i, r) for i, r in enumerate(rows) if r.select_acc is not None]
        best = max(scored, key=lambda ir: (ir[1].select_acc, -(ir[1].select_loss or 0.0), -ir[0]), default=None)
        result[arm] = ArmTuning(seed=meta["seed"], keys=grid.keys, points=rows,
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
