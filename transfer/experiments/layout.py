"""Where each run of an experiment lives, which the runner writes and the report reads, and the
files that say what kind of experiment a folder holds:

    OUT/<arm>[/seed<N>]                                  a plain comparison
    OUT/<key>=<value>[/<key2>=<value2>]/<arm>[/seed<N>]   with SWEEP='key=v1,v2,...[;key2=...]', plus OUT/sweep.json
    OUT/<dataset>/...                                    with SUITE=suites/<name>.yaml: each dataset's folder is one
                                                         of the above (its own sweep.json), plus OUT/suite.json
    <base>/tune/<k>=<v>[/<k2>=<v2>]/<arm>/seed<N>         with TUNE (tuning.py), in each base folder above

A base folder is where one set of arms runs: OUT, or one dataset, or one point of the sweep (of
one dataset).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..records import is_finished
from .arms import ARMS
from .grid import Grid, value_text

SWEEP_FILE = "sweep.json"
SUITE_FILE = "suite.json"


def value_folder(out: Path, key: str, value) -> Path:
    return Path(out) / f"{key}={value_text(value)}"

def point_folder(root: Path, point: dict) -> Path:
    """root/<key>=<value>/<key2>=<value2>/...: where a grid point's runs live under `root`."""
    folder = Path(root)
    for key, value in point.items():
        folder = value_folder(folder, key, value)
    return folder

def run_folder(base: Path, arm: str, seed: int | None) -> Path:
    return base / arm / f"seed{seed}" if seed is not None else base / arm

def find_runs(folder: Path) -> dict[str, list[Path]]:
    """arm -> finished run folders (one per seed), shipped arms first, then by name."""
    arms = {}
    for arm_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        runs = [arm_dir] if is_finished(arm_dir) else sorted(
            (p for p in arm_dir.glob("seed*") if is_finished(p) and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
        if runs:
            arms[arm_dir.name] = runs
    order = {name: i for i, name in enumerate(ARMS)}
    return dict(sorted(arms.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))

def read_sweep(out: Path) -> dict | None:
    """OUT/sweep.json: {"axes": [[key, values], ...], "key", "values" (the first axis), "arms",
    "seeds"}, or None for a plain comparison. A file from before grids (no "axes") reads as one axis."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    meta.setdefault("axes", [[meta["key"], meta["values"]]])
    return meta

def sweep_meta(grid: Grid, arms: list[str], seeds: list[int]) -> dict:
    return {"axes": grid.to_json(), "key": grid.keys[0], "values": list(grid.axes[0][1]), "arms": list(arms),
            "seeds": list(seeds)}

def read_suite(out: Path) -> dict | None:
    """OUT/suite.json: {"file", "datasets": {name: {key: value}}, "arms", "seeds", "sweep": axes or
    null}, or None when OUT is not a suite."""
    path = Path(out) / SUITE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
