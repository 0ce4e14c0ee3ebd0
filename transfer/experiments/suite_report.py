"""The report of a suite (`SUITE=suites/natural.yaml scripts/compare.sh`): one row per dataset, the
gain of pretraining with its interval on each, and the gain summed up over datasets.

Reads OUT/suite.json ({"file", "datasets", "arms", "seeds", "sweep"}) and each dataset's own
summary (report.build_one on OUT/<dataset>/, a comparison or a sweep of its own); writes
OUT/suite.png and returns the "suite" part of summary.json and the text of OUT/report.md. A
dataset without a finished run is named and counted, never silently dropped.
"""
from __future__ import annotations

from pathlib import Path

from .figures import plot_suite, value_label
from .intervals import MIN_SEEDS, aggregate
from .grid import Grid, setting_args, setting_text
from .records import Aggregate, DatasetResult, Suite, SuitePoint, Summary
from .sweep_report import arm_cell, gain_cell, missing_runs

SUITE_PLOT = "suite.png"


def _cells(meta: dict, name: str, part: Summary | None, settings: list[dict]) -> list[DatasetResult]:
    """One dataset's result at each point of the sweep (one point without a sweep)."""
    entry, report = meta["datasets"][name], f"{name}/report.md" if part else None
    if part is None:  # no finished run at all
        return [DatasetResult(entry, s, {}, None, missing_runs(meta, {}), report) for s in settings]
    if meta["sweep"] is None:
        return [DatasetResult(entry, {}, part.arms, part.gain, missing_runs(meta, part.arms), report)]
    return [DatasetResult(entry, p.setting, p.arms, p.gain, p.missing, report) for p in part.sweep.points]


def build(out: Path, meta: dict, parts: dict[str, Summary | None]) -> Suite:
    """The "suite" part of summary.json, from each dataset's summary (None: no finished run); draws
    suite.png."""
    settings = Grid.from_json(meta["sweep"]).points() if meta["sweep"] else [{}]
    cells = {name: _cells(meta, name, parts.get(name), settings) for name in meta["datasets"]}
    points = []
    for i, setting in enumerate(settings):
        datasets = {name: cells[name][i] for name in meta["datasets"]}
        points.append(SuitePoint(setting, datasets, aggregate({n: d.gain for n, d in datasets.items()})))
    shown = next((p for p in reversed(points) if any(d.arms for d in p.datasets.values())), points[-1])
    suite = Suite(file=meta["file"], arms=meta["arms"], seeds=meta["seeds"], axes=meta["sweep"],
                  datasets=shown.datasets, aggregate=shown.aggregate, at=shown.setting,
                  points=points if meta["sweep"] else None)
    plot_suite(_plot_rows(suite, points), Path(out) / SUITE_PLOT, meta["sweep"][0][0] if meta["sweep"] else None,
               SUMMARY_ROWS)
    return suite


def _plot_rows(suite: Suite, points: list[SuitePoint]) -> list[dict]:
    """plot_suite's rows: a dataset (with the other swept keys' values), its gains and intervals."""
    first = suite.axes[0][0] if suite.axes else None
    rows: dict = {}

    def add(label: str, x, value: float | None, ci) -> None:
        row = rows.setdefault(label, {"dataset": label, "points": []})
        if value is not None:
            row["points"].append({"x": x, "gain": value, "low": ci[0] if ci else None, "high": ci[1] if ci else None})
    for point in points:
        others = {k: v for k, v in point.setting.items() if k != first}
        where = f" ({', '.join(setting_args(others))})" if others else ""
        for name, d in point.datasets.items():
            add(name + where, point.setting.get(first), d.gain and d.gain.final_val_acc_points,
                d.gain and d.gain.final_val_acc_ci95)
        agg = point.aggregate
        add(MEAN_THESE + where, point.setting.get(first), agg.mean_gain_points, agg.fixed_effects_ci95)
        add(MEAN_LIKE + where, point.setting.get(first), agg.random_effects_ci95 and agg.mean_gain_points,
            agg.random_effects_ci95)
        if agg.prediction_interval95:  # drawn around the mean it is centred on (before the cut at +-100)
            add(NEW_DATASET + where, point.setting.get(first), agg.mean_gain_points, agg.prediction_interval95)
    return list(rows.values())


MEAN_THESE, MEAN_LIKE = "mean of these datasets", "mean over datasets like these"
NEW_DATASET = "a new dataset (95% prediction)"
SUMMARY_ROWS = (MEAN_THESE, MEAN_LIKE, NEW_DATASET)  # suite.png draws them apart, in black


def aggregate_line(agg: Aggregate) -> str:
    """The gain over datasets in one line: each interval beside the number it is centred on, labelled
    with what it is an interval of."""
    n = agg.datasets_with_gain
    if not n:
        return f"over {agg.datasets} datasets: no gain to sum up (no dataset has finished runs of both arms)"
    text = f"over {n} dataset{'s' * (n != 1)}: mean gain of pretraining {agg.mean_gain_points:+.1f} points"
    if agg.fixed_effects_ci95:
        low, high = agg.fixed_effects_ci95
        text += f" (95% CI {low:+.1f} to {high:+.1f} of these datasets"
        if agg.random_effects_ci95:
            low, high = agg.random_effects_ci95
            text += f", {low:+.1f} to {high:+.1f} over datasets like these"
        text += ")"
        if agg.random_effects_ci95:
            text += f"; spread between datasets {agg.between_datasets_sd_points:.1f}"
        if agg.prediction_interval95:
            low, high = agg.prediction_interval95
            text += f"; a new dataset's gain: {low:+.1f} to {high:+.1f} (95% prediction interval)"
        text += (f"; interquartile mean {agg.iqm_gain_points:+.1f}, median {agg.median_gain_points:+.1f}; above 0 on "
                 f"{agg.datasets_above_0_holm} of {n} datasets and below on {agg.datasets_below_0_holm} (each "
                 f"dataset's test, Holm-corrected)")
    else:
        text += (f" (no interval: a dataset's gain has none; {MIN_SEEDS} seeds a dataset are needed to bound training "
                 f"randomness), interquartile mean {agg.iqm_gain_points:+.1f}, median {agg.median_gain_points:+.1f}")
    if agg.datasets_without_gain:
        text += f"; no gain on {', '.join(agg.datasets_without_gain)} (runs missing)"
    return text


def _table(meta_arms: list[str], datasets: dict[str, DatasetResult]) -> list[str]:
    arms = [a for a in meta_arms if any(a in d.arms for d in datasets.values())] or list(meta_arms)
    lines = ["| dataset | " + " | ".join(arms) + " | gain of pretraining (95% CI) | pretrained better on | missing runs |",
             "|---" * (len(arms) + 4) + "|"]
    for name, d in datasets.items():
        better = f"{d.gain.seeds_better}/{len(d.gain.paired_seeds)} seeds" if d.gain and d.gain.paired else "—"
        link = f"[{name}]({d.report})" if d.report else name
        lines.append(f"| {link} | " + " | ".join(arm_cell(d.arms.get(a)) for a in arms)
                     + f" | {gain_cell(d.gain)} | {better} | " + (", ".join(d.missing) or "none") + " |")
    return lines


def markdown(suite: Suite) -> str:
    names = list(suite.datasets)
    lines = [f"# Pretrained vs scratch over {len(names)} datasets (`SUITE={suite.file}`)", ""]
    for point in suite.points or [SuitePoint({}, suite.datasets, suite.aggregate)]:
        if point.setting:
            lines += [f"## At {', '.join(f'`{k}={value_label(v)}`' for k, v in point.setting.items())}", ""]
        line = aggregate_line(point.aggregate)
        lines += [f"**{line[0].upper() + line[1:]}.**", ""]
        lines += _table(suite.arms, point.datasets) + [""]
    lines += ["Final validation accuracy, mean ± std over seeds. Each dataset's gain is the difference of the two arms' "
              "final accuracies with its own 95% interval over its training runs and validation images (paired by "
              "seed on the same images; below 3 seeds each seed's, over images alone). Over datasets: the mean of "
              "these datasets' gains with its interval (it takes the datasets as given); the mean over datasets like "
              "these with its own interval (it also covers which datasets were drawn: wide with few); from 3 "
              "datasets, where a new dataset's gain would fall (a prediction interval); the interquartile mean of "
              "every seed's gain pooled over datasets and the median dataset (rliable's aggregates, Agarwal et al. "
              f"2021). How: {suite.aggregate.ci_method.removeprefix('none: ')}.", "",
              "Each dataset's own report (every arm's numbers, curves, settings): "
              + ", ".join(f"[{n}]({d.report})" if d.report else f"{n} (no finished run)"
                          for n, d in suite.datasets.items()) + ".", "",
              "## Settings per dataset", "", "| dataset | settings |", "|---|---|"]
    for name, d in suite.datasets.items():
        given = ", ".join(f"`{k}={setting_text(v)}`" for k, v in d.settings.items())
        lines.append(f"| {name} | {given or 'the arms’ defaults'} |")
    return "\n".join(lines) + "\n"
