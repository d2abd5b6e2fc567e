"""bench.quality's markdown (ready to paste into BENCHMARKS.md) and JSON, from the summaries alone."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from . import quality_stats as S

EQUAL_ON_BOTH_SIDES = (
    "Equal on both sides, per seed: the recipe's config (model, data, batch size, optimizer, schedule, "
    "precision), the data split and order, the start (the same random init or pretrained weights cut to the "
    "shape; stitches and anchors: the same pretrained anchors and least-squares init) and the eval table's "
    "validation batches. A twin differs only in its space (that one member, trained on every step: 1 "
    "forward/backward pass per step), no distillation, no per-subnet loss weights, Maestro's rank fixed "
    "(no rank sampling, group lasso or shrinking) and one shared head."
)


def human(n: float) -> str:
    from sortednet.report import human as sortednet_human

    return sortednet_human(n)


def value(metric: str, x: float) -> str:
    return f"{100 * x:.2f}%" if metric == "accuracy" else f"{x / math.log(2):.4f}"


def spread_text(metric: str, s: S.Spread, cached: int = 0) -> str:
    scale = 100 if metric == "accuracy" else 1 / math.log(2)
    text = value(metric, s.mean) + (
        f" ± {s.std * scale:.{2 if metric == 'accuracy' else 4}f}" if s.std is not None else ""
    )
    return text + (f" (cached {cached}/{s.n})" if cached else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def verdict(ok: bool, equal: bool) -> str:
    if equal:
        return "PASS" if ok else "MISS"
    return "in band" if ok else "out of band"


def reach_text(r: dict[str, Any], twin_passes: int) -> str:
    if r["passes"] is None:
        return f"not reached within {r['within']:,}"
    return f"{r['passes']:,} ({r['passes'] / twin_passes:.1f} x a twin)"


def resolution_text(metric: str, res: S.Resolution) -> str:
    if res.se is None:
        return "not computed (fewer than 2 batches)"
    scale, unit = (100, " pts") if metric == "accuracy" else (1 / math.log(2), " bpc")
    digits = 2 if metric == "accuracy" else 4
    three, band = S.Z * res.se * scale, res.band * scale
    if res.enough:
        return f"yes: 3 SE {three:.{digits}f} <= band {band:.{digits}f}{unit}"
    need = f"; needs n >= {res.needed:,}" if res.needed else ""
    return f"**no**: 3 SE {three:.{digits}f} > band {band:.{digits}f}{unit}{need}"


def plan_lines(r: dict[str, Any]) -> list[str]:
    metric, k, acc = r["metric"], r["k"], r["accumulate"]
    sign = ">=" if metric == "accuracy" else "<="
    twin, n = r["steps"] * acc, r["n_shapes"]
    subset = "every sub-model"
    if n < r["space_size"]:
        more = f", and {n - 3} more at evenly spaced ranks" if n > 3 else ""
        ends = "the smallest and the largest" if n < 3 else f"the smallest, the middle and the largest{more}"
        subset = f"by parameter count {ends}"
    seeds = ", ".join(map(str, r["seeds"]))
    a_passes = r["nested_steps"] * acc * k
    lines = [
        f"- Shapes: {n} of {r['space_size']} sub-models ({subset}).",
        f"- Seeds {seeds} on both sides; the seed sets the init, data order, dropout, sampler draws and "
        f"{r['seeds_vary']}." + (f" **{r['seeds_note']}.**" if r["seeds_note"] else ""),
        f"- Each twin: {r['steps']} optimizer steps = {twin:,} forward/backward passes; the {n} twins "
        "together "
        f"{n * twin:,} passes."
        + (
            f" Twin variants {', '.join(r['variants'])}: the better mean per shape is the "
            "alone figure (its variant in brackets)."
            if r["variants"]
            else ""
        ),
    ]
    if r["equal_steps"]:
        lines.append(
            f"- (a) equal optimizer steps: nested {r['nested_steps']} steps = {a_passes:,} passes ({k} "
            f"subnets per step); target {sign} {S.EQUAL_STEPS[metric]:.2f} x alone."
        )
    else:
        lines.append(
            f"- (a) **not equal steps** (--nested-steps): nested {r['nested_steps']} steps = {a_passes:,} "
            f"passes against twins of {r['steps']} steps; the ratio is set against the "
            f"{S.EQUAL_STEPS[metric]:.2f} band ('in band'), which is not a pass at equal steps."
        )
    extra = r.get("teacher_passes", 0)
    if r["compute_steps"] is not None and extra:
        lines.append(
            f"- (b) equal compute, the teacher counted: the nested run first fine-tunes the full model alone "
            f"(`train.distill.teacher=finetune`, {extra:,} passes) and runs the frozen teacher forward on every "
            f"step (a third of a pass); nested steps = (steps x n_twins - teacher steps) / (k + 1/3) = "
            f"({r['steps']} x {n} - {extra // acc}) / ({k} + 1/3) = {r['compute_steps']} (rounded) = "
            f"{r['compute_steps'] * acc * k:,} passes + {r['compute_steps'] * acc:,} teacher forwards; target "
            f"{sign} {S.EQUAL_COMPUTE[metric]:.2f} x alone."
        )
    elif r["compute_steps"] is not None:
        same = " (the same runs as (a))" if r["compute_is_steps_run"] else ""
        lines.append(
            f"- (b) equal compute: nested steps = steps x n_twins / k = {r['steps']} x {n} / {k} = "
            f"{r['compute_steps']} (rounded) = {r['compute_steps'] * acc * k:,} passes{same}; target "
            f"{sign} {S.EQUAL_COMPUTE[metric]:.2f} x alone."
        )
    if extra:
        lines.append(
            f"- **(a) does not count the teacher:** {extra:,} passes and {r['nested_steps'] * acc:,} teacher "
            "forwards more than its passes say."
        )
    lines.append(
        f"- Passes to reach: the nested run's passes until the mean over seeds of its validation curve "
        f"({r['reach_column']}; every {plural(r['every'], 'step')} = "
        f"{r['every'] * acc * k:,} passes, the last point the eval table) first reaches the twin's mean."
    )
    return lines


def table(r: dict[str, Any]) -> list[str]:
    metric, compute = r["metric"], r["compute_steps"] is not None
    unit = "accuracy" if metric == "accuracy" else "bits per character"
    head = f"| shape | params | alone ({unit}) | nested (a) | (a) ratio | |"
    head += " nested (b) | (b) ratio | |" if compute else ""
    head += " passes to reach | 2% band >= 3 SE? |"
    lines = [head, "|" + "---|" * head.count(" |")]
    twin_passes = r["steps"] * r["accumulate"]
    for row in r["rows"]:
        variant = f" ({row['variant']})" if row["variant"] else ""
        a = row["steps"]
        cells = [
            row["shape"],
            human(row["params"]),
            spread_text(metric, row["alone"], row["alone_cached"]) + variant,
            spread_text(metric, a["nested"], row["nested_cached"]),
            f"{a['ratio']:.3f}",
            verdict(a["ok"], r["equal_steps"]),
        ]
        if compute:
            b = row["compute"]
            cells += [
                spread_text(metric, b["nested"], row["compute_cached"]),
                f"{b['ratio']:.3f}",
                verdict(b["ok"], True),
            ]
        cells += [reach_text(row["reach"], twin_passes), resolution_text(metric, row["resolution"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_lines(r: dict[str, Any]) -> list[str]:
    rows, metric = r["rows"], r["metric"]
    worst = (min if metric == "accuracy" else max)(row["steps"]["ratio"] for row in rows)
    a_ok = sum(row["steps"]["ok"] for row in rows)
    within = "within target" if r["equal_steps"] else "in band"
    text = f"(a): {a_ok} of {len(rows)} {within}, worst ratio {worst:.3f}."
    extra = r.get("teacher_passes", 0)
    if r["compute_steps"] is not None:
        b_ok = sum(row["compute"]["ok"] for row in rows)
        counted = " (the teacher phase counted)" if extra else ""
        text += f" (b){counted}: {b_ok} of {len(rows)} within target."
    reached = [row["reach"]["passes"] for row in rows]
    n_twin = r["steps"] * r["accumulate"] * len(rows)
    if all(p is not None for p in reached):
        text += (
            f" Every shape reached its twin's mean by {max(reached):,} nested passes"
            + (f" after the teacher's {extra:,}" if extra else "")
            + f"; its {len(rows)} twins took {n_twin:,} together ({(max(reached) + extra) / n_twin:.2f} x)."
        )
    else:
        text += f" {sum(p is None for p in reached)} shape(s) did not reach their twin's mean."
    n = rows[0]["val_count"]
    size = f" Validation: {n:,} {'examples' if metric == 'accuracy' else 'predicted characters'}"
    short = sum(row["resolution"].enough is False for row in rows)
    text += size + (
        f"; the 2% band is under 3 standard errors for {short} of {len(rows)} shapes." if short else "."
    )
    wall = r["wall"]
    text += " Wall: " + "; ".join(
        f"{side} {w['measured']:.0f} s measured ({plural(w['measured_runs'], 'run')}), "
        f"{w['cached']:.0f} s cached ({plural(w['cached_runs'], 'run')}, not added)"
        for side, w in (("nested", wall["nested"]), ("alone", wall["alone"]), ("sizing", wall["sizing"]))
    )
    return [text + "."]


def recipe_markdown(r: dict[str, Any]) -> str:
    mode = "--quick" if r["quick"] else "full"
    settings = " ".join(
        f"{flag} {' '.join(v) if isinstance(v, list) else v}"
        for flag, v in (("--set", r["settings"]["set"]), ("--nested-set", r["settings"]["nested_set"]))
        if v
    )
    title = f"**{r['recipe']}, {mode}**" + (f" (`{settings}`)" if settings else "")
    return "\n".join([title, "", *plan_lines(r), "", *table(r), "", *summary_lines(r), ""])


def markdown(header: dict[str, Any], results: list[dict[str, Any]]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in header["versions"].items())
    lines = [
        f"`{header['command']}`",
        "",
        f"{header['date']}; code {header['code']} (the tree of sortednet/ + hash of uncommitted changes to it); "
        f"{versions}.",
        "",
        EQUAL_ON_BOTH_SIDES,
        "Every figure below is computed by bench/quality.py: means and sample standard deviations over "
        "seeds, ratio = nested mean / alone mean.",
        "",
    ]
    return "\n".join(lines + [recipe_markdown(r) for r in results])


def plain(o: Any) -> Any:
    if isinstance(o, S.Resolution):
        return {**dataclasses.asdict(o), "enough": o.enough}
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def write(folder: Path, tag: str, header: dict[str, Any], results: list[dict[str, Any]], text: str) -> Path:
    (folder / f"results-{tag}.json").write_text(
        json.dumps({**header, "results": results}, indent=1, default=plain)
    )
    path = folder / f"results-{tag}.md"
    path.write_text(text)
    return path
