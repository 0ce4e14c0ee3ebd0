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
from .intervals import holm, span
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


ALPHA = 0.05  # the chance of any false verdict in the whole sweep


def _p_values(gain: Gain, margin: float) -> tuple[float, float]:
    """One-sided p-values from the gain's t: (caught up: the gain is below `margin`, behind: above 0)."""
    t = stats.t(gain.degrees_of_freedom)
    return (float(t.cdf((gain.final_val_acc_points - margin) / gain.standard_error_points)),
            float(t.sf(gain.final_val_acc_points / gain.standard_error_points)))


def verdicts(points_: list[SweepPoint], margin: float = CATCH_UP_POINTS, lines: int = 1) -> list[Verdict]:
    """Has scratch caught up, value by value? Two families of one-sided claims, each at ALPHA / 2 /
    `lines` (Bonferroni over the two families and the sweep's lines), so that the chance of any
    false verdict in the whole sweep is at most ALPHA:

    - "caught up" (the gain is below `margin`): a fixed sequence from the largest resource down
      (null, all of the data, is the largest), each value tested at the family's full level, and
      the first value not shown caught up ends the sequence (the smaller ones are "not tested");
    - "behind" (the gain is above 0): every value tested, Holm's step-down over the values.

    A value is "undetermined" where neither claim is made. A value's test needs its gain's interval
    (3 seeds); one without it ends the caught-up sequence. `smallest_margin_points`: the smallest
    margin "caught up" could have been shown within, at the family's level."""
    ordered = sorted(points_, key=lambda p: (p.value is None, p.value if p.value is not None else 0), reverse=True)
    level = ALPHA / 2 / lines
    testable = [p.gain is not None and p.gain.final_val_acc_ci95 is not None for p in ordered]
    p_values = [_p_values(p.gain, margin) if ok else (1.0, 1.0) for p, ok in zip(ordered, testable)]
    behind = holm([b for _, b in p_values], level) & np.array(testable, dtype=bool) if ordered else []
    result, reached = [], True
    for point, ok, (p_caught, _), is_behind in zip(ordered, testable, p_values, behind):
        smallest = None
        if ok:
            g = point.gain
            smallest = max(0.0, g.final_val_acc_points + float(stats.t.ppf(1 - level, g.degrees_of_freedom))
                           * g.standard_error_points)
        caught = reached and ok and p_caught <= level
        verdict = ("caught up" if caught else "behind" if is_behind else
                   "undetermined" if reached and ok else "not tested")
        result.append(Verdict(point.value, verdict, smallest))
        reached = caught
    return result


def trend(points_: list[SweepPoint], key: str) -> Trend | None:
    """The gain against log10 of the resource (the mean of each point's runs' training images on a
    data axis, the value itself on a time axis): the least-squares slope through the points' gains
    (points a decade), with the variance sum c_i^2 SE_i^2 of their own standard errors (each gain's
    crossed seeds x images one) and Satterthwaite's degrees of freedom over theirs. The seeds of one
    point share its validation images, so they are not independent observations (a fit over the
    per-seed gains covered 81-88%, by the statistics review of 2026-12-07; this one 95.5%,
    tests/experiments/test_coverage.py). No interval unless every point has one (3 seeds)."""
    xs, gains = [], []
    for p in points_:
        if not p.gain:
            continue
        if key in DATA_KEYS:
            sizes = [a.train_samples for a in p.arms.values() if a.train_samples]
            x = np.log10(np.mean(sizes)) if sizes else None
        else:
            x = np.log10(p.value) if isinstance(p.value, (int, float)) and p.value > 0 else None
        if x is not None:
            xs.append(x)
            gains.append(p.gain)
    if len(set(xs)) < 2:
        return None
    x = np.array(xs) - np.mean(xs)
    c = x / float((x ** 2).sum())  # the slope is sum c_i y_i
    slope = float(c @ np.array([g.final_val_acc_points for g in gains]))
    ci = None
    if all(g.final_val_acc_ci95 is not None for g in gains):
        parts = (c ** 2) * np.array([g.standard_error_points ** 2 for g in gains])
        df = float(parts.sum() ** 2 / (parts ** 2 / np.array([g.degrees_of_freedom for g in gains])).sum())
        half = float(stats.t.ppf(0.975, df)) * float(np.sqrt(parts.sum()))
        ci = [slope - half, slope + half]
    return Trend(x="log10 training images" if key in DATA_KEYS else f"log10 {key}",
                 slope_points_per_decade=slope, ci95=ci, observations=len(xs))


def gain_cell(gain: Gain | None) -> str:
    """The gain with its 95% interval; below 3 seeds each seed's over its images, said so."""
    if gain is None:
        return "—"
    interval = gain.final_val_acc_ci95
    if interval:
        return f"{gain.final_val_acc_points:+.1f} points ({interval[0]:+.1f} to {interval[1]:+.1f})"
    if gain.paired and gain.per_seed_image_ci95:
        return (f"{gain.final_val_acc_points:+.1f} points (no interval with {len(gain.paired_seeds)} seed(s); per seed, "
                f"images only: " + ", ".join(span(ci) for ci in gain.per_seed_image_ci95) + ")")
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
    lines = len(sweep.lines)
    split = f", and over the sweep's {lines} lines" if lines > 1 else ""
    text = [f"**Has scratch caught up{where}?** " + "; ".join(told) + f". (Margin {sweep.margin_points:g} point; "
            f"\"caught up\" tested from the most data or time down, stopping at the first value not shown; \"behind\" "
            f"tested at every value, Holm-corrected; the 5% chance of any false verdict split between the two{split}.)"]
    if line.trend:
        t = line.trend
        ci = (f"95% CI {t.ci95[0]:+.1f} to {t.ci95[1]:+.1f}" if t.ci95 else
              "no interval: a point has fewer than 3 seeds")
        text.append(f"Trend: the gain changes by {t.slope_points_per_decade:+.1f} points per tenfold "
                    f"{t.x.split(' ', 1)[1]} ({ci}; least squares through {t.observations} points' gains).")
    return text + [""]


def build(root: Path, meta: dict) -> Sweep:
    """The sweep part of summary.json; draws sweep.png."""
    pts = points(root, meta)
    sweep = Sweep(key=meta["axes"][0][0], values=meta["axes"][0][1], axes=meta["axes"], points=pts,
                  margin_points=CATCH_UP_POINTS)
    if sweep.key in DATA_KEYS + TIME_KEYS:
        curves = sweep.curves()
        sweep = dataclasses.replace(sweep, lines=[SweepLine(others, verdicts(line, lines=len(curves)),
                                                            trend(line, sweep.key)) for others, line in curves])
    plot_sweep(sweep, Path(root) / "sweep.png")
    return sweep
