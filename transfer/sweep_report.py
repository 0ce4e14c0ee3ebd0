"""The report of a sweep (`SWEEP='key=v1,v2,...' scripts/compare.sh`): how the gain of pretraining
changes with one setting, from the saved runs alone.

Reads OUT/sweep.json ({"key", "values", "arms", "seeds"}) and OUT/<key>=<value>/<arm>/[seed<N>/]
runs; writes OUT/sweep.png, and returns the "sweep" part of summary.json and of report.md.
A run that is not finished is reported missing, never silently left out of a mean.
"""
from __future__ import annotations

import json
from pathlib import Path

SWEEP_FILE = "sweep.json"
CATCH_UP_POINTS = 1.0  # "scratch comes within 1 point of pretrained"


def value_text(value) -> str:
    return "null" if value is None else str(value)


def value_folder(out: Path, key: str, value) -> Path:
    return Path(out) / f"{key}={value_text(value)}"


def read_sweep(out: Path) -> dict | None:
    path = Path(out) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def missing_runs(meta: dict, arms: dict[str, list[Path]]) -> list[str]:
    """'arm seed N' (or 'arm') for each planned run without a finished metrics.json."""
    missing = []
    for arm in meta["arms"]:
        found = {p.name for p in arms.get(arm, [])}
        if meta["seeds"]:
            missing += [f"{arm} seed {s}" for s in meta["seeds"] if f"seed{s}" not in found]
        elif arm not in arms:
            missing.append(arm)
    return missing


def best_range(runs: list[Path]) -> tuple[float, float]:
    best = [json.loads((r / "metrics.json").read_text())["best_val_acc"] for r in runs]
    return min(best), max(best)


def points(out: Path, meta: dict, summarize) -> list[dict]:
    """One point per swept value: `summarize(folder)` -> {"arms", "gain", ...} of that value's runs."""
    result = []
    for value in meta["values"]:
        folder = value_folder(out, meta["key"], value)
        found, part = summarize(folder) if folder.is_dir() else ({}, {"arms": {}})
        for arm, runs in found.items():
            part["arms"][arm]["best_val_acc_min"], part["arms"][arm]["best_val_acc_max"] = best_range(runs)
        result.append({"value": value, "arms": part["arms"], "gain": part.get("gain"),
                       "missing": missing_runs(meta, found)})
    return result


def values_with_runs(sweep: dict) -> list:
    """The swept values that have at least one finished run, in sweep order."""
    return [p["value"] for p in sweep["points"] if p["arms"]]


def catch_up_value(points_: list[dict]):
    """The smallest swept value (in sweep order) at which scratch is within 1 point of pretrained."""
    for point in points_:
        gain = point.get("gain")
        if gain is not None and gain["best_val_acc_points"] <= CATCH_UP_POINTS:
            return point["value"]
    return None


def markdown(sweep: dict) -> str:
    key, pts = sweep["key"], sweep["points"]
    arms = list(dict.fromkeys(a for p in pts for a in p["arms"]))
    lines = [f"## Sweep over `{key}`", "", f"Best validation accuracy, mean ± std over seeds, per value of `{key}`.", "",
             f"| `{key}` | " + " | ".join(arms) + " | gain of pretraining | missing runs |",
             "|---" * (len(arms) + 3) + "|"]
    for p in pts:
        cells = []
        for arm in arms:
            a = p["arms"].get(arm)
            cells.append("missing" if a is None else
                         f"{100 * a['best_val_acc']:.1f}%" + (f" ± {100 * a['best_val_acc_std']:.1f}" if a["seeds"] > 1 else ""))
        gain = p["gain"]["best_val_acc_points"] if p.get("gain") else None
        lines.append(f"| {_label(p['value'])} | " + " | ".join(cells) + f" | {'—' if gain is None else f'{gain:+.1f} points'} | "
                     + (", ".join(p["missing"]) or "none") + " |")
    lines.append("")
    if any(p.get("gain") for p in pts):
        at = sweep["scratch_within_1_point_at"]
        lines.append(f"Scratch comes within {CATCH_UP_POINTS:g} point of pretrained at `{key}={_label(at)}`." if at is not None
                     else f"Scratch does not come within {CATCH_UP_POINTS:g} point of pretrained at any swept value.")
        lines.append("")
    return "\n".join(lines)


def _label(value) -> str:
    return "all" if value is None else str(value)


def _positions(values: list) -> tuple[list[float], list[str], bool]:
    """x positions, tick labels and whether to use a log axis. Numbers sit at their value (null,
    'all', to the right of the largest); a log axis when they span more than 10x; anything else
    is categorical."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) + values.count(None) == len(values) and min(numbers) > 0:
        log = max(numbers) / min(numbers) > 10
        right = max(numbers) * (2 if log else 1) + (0 if log else max(1.0, (max(numbers) - min(numbers)) / 4))
        return [right if v is None else float(v) for v in values], [_label(v) for v in values], log
    return list(range(len(values))), [_label(v) for v in values], False


def plot(sweep: dict, path: Path) -> None:
    """Best validation accuracy of each arm (mean, min-max band over seeds) and the gain of
    pretraining in points, against the swept value."""
    from . import plots  # noqa: F401  (selects the file-only backend)
    import matplotlib.pyplot as plt

    from .outputs import save_figure

    pts = sweep["points"]
    x, labels, log = _positions([p["value"] for p in pts])
    fig, (acc_ax, gain_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    arms = list(dict.fromkeys(a for p in pts for a in p["arms"]))
    for arm in arms:
        have = [(xi, p["arms"][arm]) for xi, p in zip(x, pts) if arm in p["arms"]]
        if not have:
            continue
        xs = [h[0] for h in have]
        (line,) = acc_ax.plot(xs, [100 * a["best_val_acc"] for _, a in have], "-o", ms=4, label=arm)
        acc_ax.fill_between(xs, [100 * a["best_val_acc_min"] for _, a in have],
                            [100 * a["best_val_acc_max"] for _, a in have], color=line.get_color(), alpha=0.2)
    gains = [(xi, p["gain"]["best_val_acc_points"]) for xi, p in zip(x, pts) if p.get("gain")]
    if gains:
        gain_ax.plot([g[0] for g in gains], [g[1] for g in gains], "-o", ms=4, color="tab:green")
        gain_ax.axhline(0, color="grey", lw=0.8)
    for ax, ylabel in ((acc_ax, "best validation accuracy (%)"), (gain_ax, "gain of pretraining (points)")):
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(x, labels)
        ax.set(xlabel=sweep["key"], ylabel=ylabel)
        ax.grid(alpha=0.3)
    if arms:
        acc_ax.legend()
    seeds = max((a["seeds"] for p in pts for a in p["arms"].values()), default=0)
    fig.suptitle(f"Pretrained vs scratch against {sweep['key']} (mean of {seeds} seed(s), band: min-max)")
    fig.tight_layout()
    save_figure(fig, path)


def build(out: Path, meta: dict, summarize) -> dict:
    """The sweep part of summary.json; draws sweep.png."""
    pts = points(out, meta, summarize)
    sweep = {"key": meta["key"], "values": meta["values"], "points": pts,
             "scratch_within_1_point_at": catch_up_value(pts)}
    plot(sweep, Path(out) / "sweep.png")
    return sweep
