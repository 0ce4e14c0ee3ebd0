"""The report of a sweep (`SWEEP='key=v1,v2,...' scripts/compare.sh`): how the gain of pretraining
changes with one setting, from the saved runs alone.

Reads OUT/sweep.json ({"key", "values", "arms", "seeds"}) and OUT/<key>=<value>/<arm>/[seed<N>/]
runs; writes OUT/sweep.png, and returns the "sweep" part of summary.json and of report.md.
A run that is not finished is reported missing, never silently left out of a mean.
"""
from __future__ import annotations

from pathlib import Path

from ..results.plots import plot_sweep, value_label
from .plan import value_folder
from .summary import summarize

CATCH_UP_POINTS = 1.0  # "scratch comes within 1 point of pretrained"


def missing_runs(meta: dict, arms: dict[str, list]) -> list[str]:
    """'arm seed N' (or 'arm') for each planned run without a finished metrics.json."""
    missing = []
    for arm in meta["arms"]:
        found = {r.folder.name for r in arms.get(arm, [])}
        if meta["seeds"]:
            missing += [f"{arm} seed {s}" for s in meta["seeds"] if f"seed{s}" not in found]
        elif arm not in arms:
            missing.append(arm)
    return missing


def points(out: Path, meta: dict) -> list[dict]:
    """One point per swept value: the summary ({"arms", "gain", ...}) of that value's runs."""
    result = []
    for value in meta["values"]:
        found, part = summarize(value_folder(out, meta["key"], value))
        result.append({"value": value, "arms": part["arms"], "gain": part.get("gain"),
                       "missing": missing_runs(meta, found)})
    return result


def values_with_runs(sweep: dict) -> list:
    """The swept values that have at least one finished run, in sweep order."""
    return [p["value"] for p in sweep["points"] if p["arms"]]


def catch_up_value(points_: list[dict]):
    """The first swept value (in sweep order) at which scratch has caught up: the gain's 95%
    interval lies below 1 point (a mean alone, read off two noisy arms, does not decide it)."""
    for point in points_:
        interval = (point.get("gain") or {}).get("final_val_acc_ci95")
        if interval is not None and interval[1] < CATCH_UP_POINTS:
            return point["value"]
    return None


def _gain_cell(gain: dict | None) -> str:
    if gain is None:
        return "—"
    interval = gain.get("final_val_acc_ci95")
    return f"{gain['final_val_acc_points']:+.1f} points" + (
        f" ({interval[0]:+.1f} to {interval[1]:+.1f})" if interval else "")


def markdown(sweep: dict) -> str:
    key, pts = sweep["key"], sweep["points"]
    arms = list(dict.fromkeys(a for p in pts for a in p["arms"]))
    lines = [f"## Sweep over `{key}`", "", f"Final validation accuracy, mean ± std over seeds, per value of `{key}`; "
             f"the gain with its 95% interval.", "",
             f"| `{key}` | " + " | ".join(arms) + " | gain of pretraining (95% CI) | missing runs |",
             "|---" * (len(arms) + 3) + "|"]
    for p in pts:
        cells = []
        for arm in arms:
            a = p["arms"].get(arm)
            cells.append("missing" if a is None else
                         f"{100 * a['final_val_acc']:.1f}%" + (f" ± {100 * a['final_val_acc_std']:.1f}" if a["seeds"] > 1 else ""))
        lines.append(f"| {value_label(p['value'])} | " + " | ".join(cells) + f" | {_gain_cell(p.get('gain'))} | "
                     + (", ".join(p["missing"]) or "none") + " |")
    lines.append("")
    if any(p.get("gain") for p in pts):
        at = sweep["scratch_within_1_point_at"]
        lines.append(f"Scratch has caught up (the gain's 95% interval below {CATCH_UP_POINTS:g} point) at "
                     f"`{key}={value_label(at)}`." if at is not None
                     else f"Scratch has not caught up within this sweep (no value where the gain's 95% interval lies "
                          f"below {CATCH_UP_POINTS:g} point).")
        lines.append("")
    return "\n".join(lines)


def build(out: Path, meta: dict) -> dict:
    """The sweep part of summary.json; draws sweep.png."""
    pts = points(out, meta)
    sweep = {"key": meta["key"], "values": meta["values"], "points": pts,
             "scratch_within_1_point_at": catch_up_value(pts)}
    plot_sweep(sweep, Path(out) / "sweep.png")
    return sweep
