"""The report of a sweep (`SWEEP='key=v1,v2,...[;key2=...]' scripts/compare.sh`): how the gain of
pretraining changes with one setting (or a grid of several), from the saved runs alone.

Reads <root>/sweep.json ({"axes", "arms", "seeds"}) and <root>/<key>=<value>[/<key2>=<value2>]/
<arm>/[seed<N>/] runs; writes <root>/sweep.png, and returns the "sweep" part of summary.json and
of report.md. A run that is not finished is reported missing, never silently left out of a mean.
The first key is the curve's x axis; every combination of the others is one line of it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import stats

from .figures import plot_sweep, value_label
from .grid import Grid, setting_args
from .layout import point_folder
from .records import ArmSummary, Gain, Sweep, SweepLine, SweepPoint, Trend, Verdict
from .summary import summarize

CATCH_UP_POINTS = 1.0  # "scratch has caught up": within 1 point of pretrained
DATA_KEYS = ("data.train_per_class", "data.train_samples")  # a resource: the verdicts and the trend make sense
TIME_KEYS = ("train.epochs", "train.time_budget_s")


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


def verdicts(points_: list[SweepPoint], margin: float = CATCH_UP_POINTS) -> list[Verdict]:
    """Has scratch caught up, value by value, from the largest resource down (null, all of the data,
    is the largest): the fixed-sequence procedure, so that "caught up" at several values is one claim
    at the 95% level: each value's two one-sided tests (the gain's 95% interval below `margin`:
    caught up; above 0: behind) are made in turn, and the first value where neither holds ends the
    sequence (the smaller ones are not tested)."""
    ordered = sorted(points_, key=lambda p: (p.value is None, p.value if p.value is not None else 0), reverse=True)
    result, stopped = [], False
    for point in ordered:
        ci = point.gain.final_val_acc_ci95 if point.gain else None
        smallest = None if ci is None else max(ci[1], 0.0)
        if stopped:
            verdict = "not tested"
        elif ci is not None and ci[1] < margin:
            verdict = "caught up"
        elif ci is not None and ci[0] > 0:
            verdict = "behind"
        else:
            verdict, stopped = "undetermined", True
        result.append(Verdict(point.value, verdict, smallest))
    return result


def trend(points_: list[SweepPoint], key: str) -> Trend | None:
    """The per-seed gains against log10 of the resource (each run's training images on a data axis,
    the value itself on a time axis), one observation a value and seed: the slope, points a decade,
    with its 95% interval (an ordinary least squares t interval)."""
    xs, ys = [], []
    for p in points_:
        if not p.gain or not p.gain.per_seed_final_val_acc_points:
            continue
        if key in DATA_KEYS:
            sizes = [a.train_samples for a in p.arms.values() if a.train_samples]
            x = np.log10(np.mean(sizes)) if sizes else None
        else:
            x = np.log10(p.value) if isinstance(p.value, (int, float)) and p.value > 0 else None
        if x is not None:
            xs += [x] * len(p.gain.per_seed_final_val_acc_points)
            ys += list(p.gain.per_seed_final_val_acc_points)
    if len(set(xs)) < 2 or len(xs) < 3:
        return None
    fit = stats.linregress(xs, ys)
    half = float(stats.t.ppf(0.975, len(xs) - 2)) * fit.stderr
    return Trend(x="log10 training images" if key in DATA_KEYS else f"log10 {key}",
                 slope_points_per_decade=float(fit.slope), ci95=[fit.slope - half, fit.slope + half],
                 observations=len(xs))


def gain_cell(gain: Gain | None) -> str:
    """The gain with its 95% interval; below 3 seeds each seed's over its images, said so."""
    if gain is None:
        return "—"
    interval = gain.final_val_acc_ci95
    if interval:
        return f"{gain.final_val_acc_points:+.1f} points ({interval[0]:+.1f} to {interval[1]:+.1f})"
    if gain.paired and gain.per_seed_image_ci95:
        return (f"{gain.final_val_acc_points:+.1f} points (no interval with {len(gain.paired_seeds)} seed(s); per seed, "
                f"images only: " + ", ".join(f"{low:+.1f} to {high:+.1f}" for low, high in gain.per_seed_image_ci95) + ")")
    return f"{gain.final_val_acc_points:+.1f} points (no interval)"


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
    for line in sweep.lines:
        lines += verdict_lines(sweep, line)
    if any(p.gain for p in pts) and sweep.key not in DATA_KEYS + TIME_KEYS:
        lines += [f"`{keys[0]}` is not an amount of data or training time, so there is no verdict on whether scratch "
                  f"has caught up along it.", ""]
    return "\n".join(lines)


def verdict_lines(sweep: Sweep, line: SweepLine) -> list[str]:
    where = f" (at {', '.join(setting_args(line.others))})" if line.others else ""
    told = [f"`{value_label(v.value)}` {v.verdict}" + (
        f" (the smallest margin this could show: {v.smallest_margin_points:.1f} points)"
        if v.verdict in ("behind", "undetermined") and v.smallest_margin_points is not None else "")
        for v in line.verdicts]
    text = [f"**Has scratch caught up{where}?** From the most data or time down, each value's gain interval against "
            f"a margin of {sweep.margin_points:g} point (fixed-sequence testing: one claim at the 95% level; the "
            f"first undetermined value ends it): " + "; ".join(told) + "."]
    if line.trend:
        t = line.trend
        text.append(f"Trend: the gain changes by {t.slope_points_per_decade:+.1f} points per tenfold {t.x.split(' ', 1)[1]} "
                    f"(95% CI {t.ci95[0]:+.1f} to {t.ci95[1]:+.1f}; least squares over {t.observations} per-seed gains).")
    return text + [""]


def build(root: Path, meta: dict) -> Sweep:
    """The sweep part of summary.json; draws sweep.png."""
    pts = points(root, meta)
    sweep = Sweep(key=meta["axes"][0][0], values=meta["axes"][0][1], axes=meta["axes"], points=pts,
                  margin_points=CATCH_UP_POINTS)
    if sweep.key in DATA_KEYS + TIME_KEYS:
        sweep = dataclasses.replace(sweep, lines=[SweepLine(others, verdicts(line), trend(line, sweep.key))
                                                  for others, line in sweep.curves()])
    plot_sweep(sweep, Path(root) / "sweep.png")
    return sweep
