"""Side-by-side report of finished runs, from their saved files alone (no training, no GPU).

    python -m transfer.report runs/compare        # what scripts/compare.sh calls at the end

Reads OUT/<arm>/metrics.json (or OUT/<arm>/seed<N>/metrics.json for several seeds) and each
run's config.yaml, and writes OUT/comparison.png, OUT/report.md and OUT/summary.json. For a sweep
(OUT/sweep.json, see sweep_report.py) it does so for the last swept point and adds OUT/sweep.png
and the sweep's table and curve. For a suite (OUT/suite.json, see suite_report.py) it does all of
that in each dataset's folder, then writes the table over datasets: OUT/report.md, OUT/suite.png
and OUT/summary.json ("suite").
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import RunError
from ..files import write_atomic
from . import suite_report, sweep_report
from .figures import plot_comparison
from .grid import setting_args, value_text
from .intervals import MIN_SEEDS, crossed_of, seeds_for, span
from .spec import DEFAULT_TARGET_HALF_WIDTH
from .layout import read_suite, read_sweep
from .records import FRACTIONS, ArmSummary, Gain, SeedsForTarget, Summary, SuiteSummary, write_summary
from .summary import summarize
from .tuning import grid_edges


def build(out: Path, target_half_width: float = DEFAULT_TARGET_HALF_WIDTH) -> Summary | SuiteSummary:
    """The report files in `out` (a comparison, a sweep or a suite); the summary. RunError (exit 2)
    when `out` holds no finished run. `target_half_width`: the gain's interval half-width (points)
    for which the report says how many seeds it would take (TARGET_HALF_WIDTH)."""
    out = Path(out)
    if not out.is_dir():
        raise RunError(f"{out} does not exist; give the OUT folder of a comparison (scripts/compare.sh)")
    meta = read_suite(out)
    if meta is None:
        return build_one(out, target_half_width)
    parts = {}
    for name in meta["datasets"]:
        try:
            parts[name] = build_one(out / name, target_half_width)
        except RunError:  # none of its runs finished: the table names it
            parts[name] = None
    if not any(parts.values()):
        raise RunError(f"no finished runs (metrics.json) under {out}; run scripts/compare.sh with OUT={out} first")
    summary = SuiteSummary(suite_report.build(out, meta, parts))
    write_summary(out, summary)
    write_atomic(out / "report.md", markdown(summary))
    return summary


def build_one(out: Path, target_half_width: float = DEFAULT_TARGET_HALF_WIDTH) -> Summary:
    """summary.json, report.md and comparison.png (and sweep.png) of one comparison or sweep."""
    out = Path(out)
    meta = read_sweep(out) if out.is_dir() else None
    if meta is None:
        runs, summary = summarize(out) if out.is_dir() else ({}, None)
    else:  # the top level describes the last swept point that has runs, as a plain comparison would
        sweep = sweep_report.build(out, meta)
        shown = sweep.with_runs()
        runs, summary = summarize(Path(shown[-1].folder)) if shown else ({}, None)
        summary = summary and dataclasses.replace(summary, sweep=sweep)
    if not runs:
        raise RunError(f"no finished runs (metrics.json) under {out}; run scripts/compare.sh with OUT={out} first")
    gains = [dataclasses.replace(g, seeds_for_target=seeds_for(crossed_of(g), target_half_width)) for g in summary.gains]
    summary = dataclasses.replace(summary, gains=gains, gain=gains[0] if gains else None)
    write_summary(out, summary)
    write_atomic(out / "report.md", markdown(summary))
    plot_comparison({arm: [r.metrics.history for r in found] for arm, found in runs.items()}, out / "comparison.png")
    return summary


def headlines(summary: Summary | SuiteSummary) -> list[str]:
    """What compare.sh prints last: each gain's line, or the suite's line over datasets."""
    if isinstance(summary, SuiteSummary):
        return [suite_report.aggregate_line(summary.suite.aggregate)]
    return [gain.headline for gain in summary.gains]


def files(summary: Summary | SuiteSummary) -> list[str]:
    """The report's files in OUT."""
    if isinstance(summary, SuiteSummary):
        return ["report.md", suite_report.SUITE_PLOT, "summary.json"]
    return ["report.md", "comparison.png", *(["sweep.png"] if summary.sweep else []), "summary.json"]


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if std else "")


def _secs(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def _lrs(arm: ArmSummary) -> str:
    text = ", ".join(f"{lr:.3g}" for lr in arm.peak_lr)
    return f"{text} (found)" if arm.lr_found else text


def _interval(ci) -> str:
    return f" (95% CI {ci[0]:+.3g} to {ci[1]:+.3g})" if ci else ""


def gain_lines(g: Gain) -> list[str]:
    """The gain of pretraining, explained: per seed, calibration, the tests per seed, the method."""
    pair = "" if g.arms == ["pretrained", "scratch"] else f" ({g.arms[0]} vs {g.arms[1]})"
    lines = [f"**Gain of pretraining{pair}**: {g.final_val_acc_points:+.1f} points of final validation accuracy"
             + (f", {g.unseen_by_imagenet_val_acc_points:+.1f}{_interval(g.unseen_by_imagenet_ci95)} on the validation "
                f"images ImageNet's training set does not contain" if g.unseen_by_imagenet_val_acc_points is not None
                else "")
             + f"; {g.best_val_acc_points:+.1f} points at each run's best epoch (not the headline: unless the "
               f"runs chose it on a selection split, data.select_fraction, it was picked on the images it is scored on)."]
    if g.paired:
        seeds = ", ".join(f"seed {s}: {v:+.1f} ({span(ci)})" for s, v, ci in
                          zip(g.paired_seeds, g.per_seed_final_val_acc_points, g.per_seed_image_ci95))
        lines.append(f"Per seed (same images for both arms; each seed's 95% interval over its images alone, "
                     f"conditional on its trained networks): {seeds}.")
    if g.calibration:
        c = g.calibration
        lines.append(f"Calibration, pretrained minus scratch (negative: pretrained better): log loss "
                     f"{c.nll_difference:+.3f} nats{_interval(c.nll_ci95)}, Brier score "
                     f"{c.brier_difference:+.4f}{_interval(c.brier_ci95)}, expected calibration error (15 equal-mass "
                     f"bins) {c.ece_difference:+.3f} (no interval: not a mean over images; a bootstrap over 3 seeds "
                     f"covers 75-83%).")
    if g.paired:
        tests = ", ".join(f"{p:.2g}" for p in g.mcnemar_p)
        lines.append(f"Do these two trained networks differ on these images (McNemar's exact test per seed, on the "
                     f"images exactly one arm gets right)? p = {tests}. This is about the networks at hand, not about "
                     f"pretraining in general: the interval above is.")
    if g.seeds_for_target:
        lines.append(seeds_line(g.seeds_for_target))
    lines += [f"Interval: {g.ci_method}. Tuning (TUNE) is outside it: the choice of settings is taken as given.", ""]
    return lines


def seeds_line(plan: SeedsForTarget) -> str:
    """How many seeds would bring the interval to the target half-width, in one line."""
    now = (f"now ±{plan.current_half_width_points:.1f} with {plan.current_seeds} seeds" if plan.current_seeds >= MIN_SEEDS
           else f"{plan.current_seeds} seeds now")
    if plan.seeds is None:
        return (f"Seeds for a ±{plan.half_width_points:g}-point interval ({now}): no number of seeds would do at these "
                f"images: the validation images alone leave ±{plan.image_floor_points:.1f}; more validation images "
                f"would (TARGET_HALF_WIDTH sets the target).")
    if plan.seeds <= plan.current_seeds:
        return f"Seeds for a ±{plan.half_width_points:g}-point interval: these {plan.current_seeds} suffice ({now})."
    seeds = ' '.join(map(str, range(plan.seeds))) if plan.seeds <= 12 else f"$(seq -s ' ' 0 {plan.seeds - 1})"
    return (f"Seeds for a ±{plan.half_width_points:g}-point interval ({now}): about {plan.seeds} at these images, "
            f"from the spread measured here (rough with few seeds): SEEDS=\"{seeds}\" reuses the finished ones "
            f"(TARGET_HALF_WIDTH sets the target).")


def tuning_lines(arms: dict[str, ArmSummary]) -> list[str]:
    """TUNE: per arm, each grid point's selection accuracy, the chosen one in bold."""
    tuned = {n: a.tuned for n, a in arms.items() if a.tuned}
    if not tuned:
        return []
    names = list(tuned)
    first = next(iter(tuned.values()))
    keys, seeds = first.keys, first.seeds or [first.seed]
    lines = ["", "## Tuning, on the selection split", "",
             f"Each arm trained every point of the grid on tuning seed{'s' * (len(seeds) != 1)} "
             f"{', '.join(map(str, seeds))} (not reported: the reported seeds are fresh draws) and was scored by its "
             f"final accuracy on the selection split (training images held out by `data.select_fraction`, never the "
             f"validation images), ± its standard error; its reported runs use the point in bold, and points marked "
             f"≈ are within a standard error of it: the data cannot tell them apart. The gain's interval takes the "
             f"choice as given: the tuning's own variance is not in it.", "",
             "| " + ", ".join(f"`{k}`" for k in keys) + " | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for i, row in enumerate(first.points):
        cells = []
        for n in names:
            r = tuned[n].points[i]
            text = "failed or not run" if r.select_acc is None else f"{100 * r.select_acc:.1f}%" + (
                f" ± {100 * r.standard_error:.1f}" if r.standard_error else "") + (" ≈" if r.indistinguishable else "")
            cells.append(f"**{text}**" if r.setting == tuned[n].chosen else text)
        lines.append(f"| {', '.join(value_text(v) for v in row.setting.values())} | " + " | ".join(cells) + " |")
    lines += ["", "Chosen: " + "; ".join(f"{n} {', '.join(setting_args(t.chosen)) if t.chosen else 'nothing'}"
                                         for n, t in tuned.items()) + "."]
    edges = grid_edges(tuned)
    if edges:
        lines += ["", "**Warning**: chosen at the edge of the grid, so its best may lie beyond it: "
                  + "; ".join(edges) + ". Extend the grid past it (TUNE) before trusting the gain."]
    return lines


def markdown(summary: Summary | SuiteSummary) -> str:
    if isinstance(summary, SuiteSummary):
        return suite_report.markdown(summary.suite)
    arms = summary.arms
    names = list(arms)
    rows = [("runs (seeds)", lambda a: str(a.seeds)),
            ("started from", lambda a: ", ".join(f"`{w}`" for w in a.weights) or "—"),
            ("**final val accuracy** (after the fixed schedule)", lambda a: _pct(a.final_val_acc, a.final_val_acc_std)),
            ("best val accuracy (at the best epoch)",
             lambda a: _pct(a.best_val_acc, a.best_val_acc_std) + (
                 " (chosen on the selection split)" if a.best_chosen_on == ["select"]
                 else " (chosen on the val images: optimistic)")),
            ("calibration error (ECE, 15 equal-mass bins)",
             lambda a: "—" if a.final_val_ece is None else f"{a.final_val_ece:.3f}"
             + (f" ± {a.final_val_ece_std:.3f}" if a.final_val_ece_std else "")),
            ("val accuracy on images unseen by ImageNet",
             lambda a: _pct(a.unseen_by_imagenet_val_acc, a.unseen_by_imagenet_val_acc_std)
             + (f" (n={a.unseen_by_imagenet_samples})" if a.unseen_by_imagenet_samples is not None else "")),
            ("epochs", lambda a: f"{a.epochs:g}"),
            ("train time (train + eval)", lambda a: _secs(a.train_seconds)),
            ("training images/s", lambda a: "—" if a.train_images_per_s is None else f"{a.train_images_per_s:.0f}")]
    rows += [(f"time to {int(f * 100)}% of best accuracy", lambda a, f=f: _secs(a.seconds_to(f))) for f in FRACTIONS]
    lines = ["# Pretrained vs scratch", ""]
    for gain in summary.gains:
        lines += [f"**{gain.headline}**", ""]
    seed_sets = {n: tuple(arms[n].seed_values) for n in names}
    if len(set(seed_sets.values())) > 1:
        lines += ["**Warning**: the arms ran different seeds ("
                  + "; ".join(f"{n}: {', '.join(map(str, v)) or 'none recorded'}" for n, v in seed_sets.items())
                  + "): runs pair up only by a common seed, and what has no partner is left out of the paired gain.",
                  ""]
    ran_on = {n: arms[n].executions for n in names}
    if len({e for found in ran_on.values() for e in found}) > 1:  # a mixed cluster partition, a resumed run elsewhere
        lines += ["**Warning**: the runs ran on different hardware, precision or process counts ("
                  + "; ".join(f"{n}: {' / '.join(v) or 'not recorded'}" for n, v in ran_on.items())
                  + "): times are not comparable between them, and the precision can move accuracy by a little; "
                    "pin it (`train.mixed_precision`) and the GPU type (CLUSTER's `constraint`) to compare like "
                    "with like.", ""]
    lines += ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(fn(arms[n]) for n in names) + " |" for label, fn in rows]
    lines.append("")
    for gain in summary.gains:
        lines += gain_lines(gain)
    lines += ["Mean ± standard deviation over seeds. Times to X% are measured against each arm's own mean best "
              "accuracy.", "", "## Settings that differ between the arms", ""]
    diff = dict(summary.differing_settings)
    if any(a.lr_found for a in arms.values()):  # what `optim.lr: find` picked, per arm (and seed)
        diff["optim.lr (used)"] = {n: _lrs(arms[n]) for n in names}
    if diff:
        lines += ["| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| `{k}` | " + " | ".join(f"`{v.get(n)}`" for n in names) + " |" for k, v in diff.items()]
        if "optim.lr (used)" in diff:
            lines += ["", "`optim.lr (used)`: the one-cycle peak each run trained with, one per seed; \"(found)\": "
                      "picked by the run's LR range test (`optim.lr=find`, see its `plots/lr_find.png`)."]
    else:
        lines.append("None besides the output folder and seed.")
    lines += tuning_lines(arms)
    if summary.sweep:
        last = summary.sweep.with_runs()[-1].setting
        lines[0] += f" (at {', '.join(f'`{a}`' for a in setting_args(last))}, the last point of the sweep)"
        lines += ["", sweep_report.markdown(summary.sweep)]
    return "\n".join(lines) + "\n"
