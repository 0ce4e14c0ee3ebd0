"""The report of a sweep (`SWEEP='key=v1,v2,...[;key2=...]' scripts/compare.sh`): how the gain of
pretraining changes with one setting (or a grid of several), from the saved runs alone.

Reads <root>/sweep.json ({"axes", "arms", "seeds"}) and <root>/<key>=<value>[/<key2>=<value2>]/
<arm>/[seed<N>/] runs; writes <root>/sweep.png, and returns the "sweep" part of summary.json and
of report.md. A run that is not finished is reported missing, never silently left out of a mean.
The first key is the curve's x axis; every combination of the others is one line of it.
"""
from __future__ import annotations

from pathlib import Path

from .figures import plot_sweep, value_label
from .plan import Grid, point_folder, setting_args
from .records import ArmSummary, CatchUp, Gain, Sweep, SweepPoint
from .summary import summarize

CATCH_UP_POINTS = 1.0  # "scratch comes within 1 point of pretrained"


def missing_runs(meta: dict, arms: dict[str, ArmSummary]) -> list[str]:
    """'arm seed N' (or 'arm') for each planned run (meta: {"arms", "seeds"}) without a finished
    run among `arms` (arm -> its summary, whose `runs` are the finished folders)."""
    missing = []
    for arm in meta["arms"]:
        found = {Path(r).name for r in (arms[arm].runs if arm in arms else [])}
        if meta["seeds"]:
            missing += [f"{arm} seed {s}" for s in meta["seeds"] if f"seed{s}" not in found]
        elif arm not in arms:
            missing.append(arm)
    return missing


def points(root: Path, meta: dict) -> list[SweepPoint]:
    """One point per combination of the swept values, with the summary of its runs."""
    grid = Grid.from_json(meta["axes"])
    result = []
    for setting in grid.points():
        folder = point_folder(root, setting)
        _, part = summarize(folder)
        result.append(SweepPoint(setting=setting, value=setting[grid.keys[0]], folder=str(folder), arms=part.arms,
                                 gain=part.gain, missing=missing_runs(meta, part.arms)))
    return result


def catch_up_value(points_: list[SweepPoint]):
    """The first swept value (in sweep order) at which scratch has caught up: the gain's 95%
    interval lies below 1 point (a mean alone, read off two noisy arms, does not decide it)."""
    for point in points_:
        interval = point.gain.final_val_acc_ci95 if point.gain else None
        if interval is not None and interval[1] < CATCH_UP_POINTS:
            return point.value
    return None


def gain_cell(gain: Gain | None) -> str:
    if gain is None:
        return "—"
    interval = gain.final_val_acc_ci95
    return f"{gain.final_val_acc_points:+.1f} points" + (f" ({interval[0]:+.1f} to {interval[1]:+.1f})" if interval else "")


def arm_cell(a: ArmSummary | None) -> str:
    return "missing" if a is None else (
        f"{100 * a.final_val_acc:.1f}%" + (f" ± {100 * a.final_val_acc_std:.1f}" if a.seeds > 1 else ""))


def markdown(sweep: Sweep) -> str:
    keys, pts = [k for k, _ in sweep.axes], sweep.points
    arms = list(dict.fromkeys(a for p in pts for a in p.arms))
    over = " x ".join(f"`{k}`" for k in keys)
    lines = [f"## Sweep over {over}", "", f"Final validation accuracy, mean ± std over seeds, per value of {over}; "
             f"the gain with its 95% interval.", "",
             "| " + " | ".join(f"`{k}`" for k in keys) + " | " + " | ".join(arms)
             + " | gain of pretraining (95% CI) | missing runs |",
             "|---" * (len(keys) + len(arms) + 2) + "|"]
    for p in pts:
        lines.append("| " + " | ".join(value_label(p.setting[k]) for k in keys) + " | "
                     + " | ".join(arm_cell(p.arms.get(arm)) for arm in arms)
                     + f" | {gain_cell(p.gain)} | " + (", ".join(p.missing) or "none") + " |")
    lines.append("")
    if any(p.gain for p in pts):
        for line in sweep.catch_up:
            where = f" (at {', '.join(setting_args(line.others))})" if line.others else ""
            lines.append(f"Scratch has caught up{where} (the gain's 95% interval below {CATCH_UP_POINTS:g} point) at "
                         f"`{keys[0]}={value_label(line.at)}`." if line.at is not None
                         else f"Scratch has not caught up{where} within this sweep (no value of `{keys[0]}` where the "
                              f"gain's 95% interval lies below {CATCH_UP_POINTS:g} point).")
        lines.append("")
    return "\n".join(lines)


def build(root: Path, meta: dict) -> Sweep:
    """The sweep part of summary.json; draws sweep.png."""
    pts = points(root, meta)
    partial = Sweep(key=meta["axes"][0][0], values=meta["axes"][0][1], axes=meta["axes"], points=pts, catch_up=[])
    catch_up = [CatchUp(others=others, at=catch_up_value(line)) for others, line in partial.lines()]
    sweep = Sweep(key=partial.key, values=partial.values, axes=partial.axes, points=pts, catch_up=catch_up,
                  scratch_within_1_point_at=catch_up[0].at if len(meta["axes"]) == 1 else None)
    plot_sweep(sweep, Path(root) / "sweep.png")
    return sweep
