"""From the runs of one recipe to the figures bench.quality reports: every one computed here."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from . import quality_stats as S
from .quality_runs import Plan, Trained


def values(runs: list[Trained], metric: str, shape: str | None = None) -> list[float]:
    """The metric of `shape` in each run (a twin's only row when shape is None)."""
    return [float((r.rows[0] if shape is None else r.row(shape))[metric]) for r in runs]


def best_variant(variants: dict[str, list[Trained]], metric: str) -> str:
    """The variant with the better mean over seeds (not the best seed of each)."""
    means = {v: statistics.fmean(values(runs, metric)) for v, runs in variants.items()}
    best = next(iter(means))
    for variant, mean in means.items():
        best = variant if S.better(metric, mean, means[best]) else best
    return best


def curve_with_end(run: Trained, shape: str, metric: str, batches: int) -> S.Curve:
    """The run's validation curve before its last batch, ending with the eval table's value at `batches` (the
    figure the ratio columns use: after BatchNorm calibration where the recipe calibrates)."""
    early = [(b, v) for b, v in run.curves.get(shape, []) if b < batches]
    return [*early, (batches, float(run.row(shape)[metric]))]


def reach(p: Plan, runs: list[Trained], shape: str, target: float, steps: int) -> dict[str, Any]:
    batches = steps * p.accumulate
    curve = S.mean_curve([curve_with_end(r, shape, p.case.metric, batches) for r in runs])
    done = S.first_reach(curve, target, p.case.metric)
    return {"passes": None if done is None else done * p.k, "within": batches * p.k, "steps": steps}


def resolution(metric: str, alone: S.Spread, runs: list[Trained]) -> S.Resolution:
    if metric == "accuracy":
        return S.binomial_resolution(alone.mean, min(r.val_count for r in runs))
    per_seed = [S.batch_resolution(alone.mean, next(iter(r.batch_losses.values()), [])) for r in runs]
    errors = [r.se for r in per_seed if r.se is not None]
    return S.Resolution(per_seed[0].band, statistics.fmean(errors) if errors else None)


def compare(metric: str, nested: list[float], alone: S.Spread, target: float) -> dict[str, Any]:
    spread = S.spread(nested)
    ratio = S.ratio_of_means(spread, alone)
    return {"nested": spread, "values": nested, "ratio": ratio, "ok": S.meets(metric, ratio, target)}


def shape_row(
    p: Plan,
    shape: str,
    variants: dict[str, list[Trained]],
    at_steps: list[Trained],
    at_compute: list[Trained] | None,
) -> dict[str, Any]:
    metric = p.case.metric
    variant = best_variant(variants, metric)
    twins = variants[variant]
    alone = S.spread(values(twins, metric))
    row: dict[str, Any] = {
        "shape": shape,
        "params": p.params[shape],
        "variant": variant,
        "variant_means": {v: statistics.fmean(values(r, metric)) for v, r in variants.items()},
        "alone": alone,
        "alone_values": values(twins, metric),
        "alone_cached": sum(r.cached for r in twins),
        "steps": compare(metric, values(at_steps, metric, shape), alone, S.EQUAL_STEPS[metric]),
        "nested_cached": sum(r.cached for r in at_steps),
        "resolution": resolution(metric, alone, twins),
        "val_count": min(r.val_count for r in twins),
    }
    if at_compute is not None:
        row["compute"] = compare(metric, values(at_compute, metric, shape), alone, S.EQUAL_COMPUTE[metric])
        row["compute_cached"] = sum(r.cached for r in at_compute)
    curves, steps = (at_compute, p.compute_steps) if reach_column(p) == "(b)" else (at_steps, p.nested_steps)
    row["reach"] = reach(p, curves, shape, alone.mean, steps)  # type: ignore[arg-type]
    return row


def reach_column(p: Plan) -> str:
    """The longer nested run's curves give the passes to reach."""
    return "(b)" if p.compute_steps is not None and p.compute_steps > p.nested_steps else "(a)"


def wall(runs: list[Trained]) -> dict[str, float]:
    return {
        "measured": sum(r.wall_s for r in runs if not r.cached),
        "cached": sum(r.wall_s for r in runs if r.cached),
        "measured_runs": sum(not r.cached for r in runs),
        "cached_runs": sum(r.cached for r in runs),
    }


def teacher_passes(p: Plan) -> int:
    """Passes of a `train.distill.teacher=finetune` phase (the full model alone, before nesting)."""
    return p.teacher_steps * p.accumulate


def summarize(
    p: Plan,
    twins: dict[str, dict[str, list[Trained]]],
    at_steps: list[Trained],
    at_compute: list[Trained] | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    rows = [shape_row(p, s, twins[s], at_steps, at_compute) for s in p.shapes]
    equal_steps = p.nested_steps == p.steps
    all_twins = [r for variants in twins.values() for runs in variants.values() for r in runs]
    nested_runs = at_steps + (at_compute if at_compute is not None and at_compute is not at_steps else [])
    return {
        "recipe": p.case.recipe,
        "metric": p.case.metric,
        "quick": args.quick,
        "settings": {"set": args.set, "nested_set": args.nested_set, "nested_steps": args.nested_steps},
        "space_size": p.space_size,
        "n_shapes": len(p.shapes),
        "variants": [v for v in p.case.variants if v],
        "seeds": p.seeds,
        "seeds_note": p.seeds_note,
        "seeds_vary": p.case.seeds_vary,
        "steps": p.steps,
        "nested_steps": p.nested_steps,
        "compute_steps": p.compute_steps,
        "compute_is_steps_run": at_compute is not None and at_compute is at_steps,
        "k": p.k,
        "accumulate": p.accumulate,
        "every": p.every,
        "reach_column": reach_column(p),
        "equal_steps": equal_steps,
        "equal_steps_ok": not equal_steps or all(r["steps"]["ok"] for r in rows),
        "rows": rows,
        "teacher_passes": teacher_passes(p),
        "wall": {"alone": wall(all_twins), "nested": wall(nested_runs), "sizing": wall([p.sizing])},
    }
