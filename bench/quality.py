"""Is every sub-model as good as the same shape trained alone (its alone twin)?

    python -m bench.quality                 # every offline recipe, the recipes' own steps, 3 seeds (hours)
    python -m bench.quality --quick         # 3 shapes and fewer steps per recipe (`make quality`)
    python -m bench.quality --quick --only digits_vit --nested-set train.distill.enabled=true  # a lever
    python -m bench.quality --only digits_vit --nested-steps 1200   # nested at other steps (labelled so)

On 2 CPU cores shared with other jobs (1 torch thread), estimated from smoke runs: --quick takes a few minutes
per digits recipe, about 30 min for shakespeare_gpt2 and 45 min for minilm_nested (2 seeds); the full run
minutes to an hour per digits recipe, about 12 h for shakespeare_gpt2 and a day for minilm_nested.

Per recipe and seed: the nested model trains once with `sortednet-train`'s own code path, and every chosen
shape trains alone (bench/quality_cases.py says what a twin is). Seeds 0..N-1 on both sides (`seed` sets
the init, data order, dropout, sampler draws and what each recipe's note says); per shape the report gives
mean and standard deviation over seeds on both sides and the ratio of the means, in two columns:
  (a) equal optimizer steps: nested and twin at the recipe's steps (target: accuracy >= 0.98 x alone, bits per
      character <= 1.02 x alone);
  (b) equal compute: the nested run given as many forward/backward passes as all its twins together, steps x
      n_twins / k (k: subnets per nested step; a twin step is 1 pass), target >= 1.00 x / <= 1.00 x;
plus the passes the nested run needs until the mean of its validation curves first reaches the twin's mean.
Seeds vary the train/validation split where the recipe's data module seeds it (the digits recipes: data.seed
is the seed), on purpose: a split's luck is part of the spread a user meets; one seed's split is the same on
both sides. A recipe with variants of its twins (minilm_nested: [CLS] and mean pooling) is judged against
the variant with the better mean. Results go to bench/out/quality/results-<tag>.md (ready to paste) and .json;
runs are cached in bench/out/quality/cache (bench/quality_runs.py says by what).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


from . import quality_cases as C  # noqa: E402
from . import quality_stats as S  # noqa: E402
from .quality_report import markdown, write  # noqa: E402
from .quality_runs import Plan, Runner, Trained, code_state  # noqa: E402

OUT = Path(__file__).parent / "out" / "quality"


def seeds_for(case: C.Case, args: argparse.Namespace) -> tuple[list[int], str]:
    if args.seeds is not None:
        n, note = args.seeds, ""
    elif args.quick:
        n = case.quick_seeds
        note = (
            ""
            if n >= 3
            else f"{n} seeds in --quick: 3 do not fit in minutes for this recipe (--seeds 3 runs them)"
        )
    else:
        n, note = 3, ""
    if n < 3 and not note:
        note = f"{n} seed{'s' if n > 1 else ''}: below the 3 seeds a comparison needs"
    return list(range(n)), note


def plan(case: C.Case, args: argparse.Namespace, runner: Runner) -> Plan:
    from sortednet.train.config import check

    if args.variants:
        unknown = sorted(set(args.variants) - set(case.variants))
        if unknown:
            raise SystemExit(
                f"--variants {unknown} not twins of {case.recipe}; allowed: {list(case.variants)}"
            )
        case = dataclasses.replace(case, variants={v: case.variants[v] for v in args.variants})
    overrides = [*(case.quick if args.quick else case.full), *args.set]
    base = C.compose(case.recipe, overrides)
    nested = C.compose(case.recipe, [*overrides, *args.nested_set])
    sizing = runner.get(C.sizing_config(base), f"{case.recipe}-sizing", case.metric)
    by_params = sorted(sizing.rows, key=lambda r: r["params"])
    shapes = C.pick_shapes(
        [r["subnet"] for r in by_params], case.quick_shapes if args.quick else case.full_shapes
    )
    checked = check(nested)
    k, steps = checked.sampler.k, int(base.trainer.max_steps)
    distill = checked.train.distill
    teacher = distill.teacher_steps if distill.enabled else 0  # > 0 only with a teacher phase
    seeds, note = seeds_for(case, args)
    return Plan(
        case,
        overrides,
        nested,
        shapes,
        {r["subnet"]: int(r["params"]) for r in by_params},
        len(by_params),
        seeds,
        steps,
        args.nested_steps or steps,
        S.equal_compute_steps(steps, len(shapes), k, teacher) if args.equal_compute else None,
        k,
        checked.train.accumulate,
        teacher,
        max(1, steps // case.curve_points),
        note,
        sizing,
    )


def train_twins(p: Plan, runner: Runner) -> dict[str, dict[str, list[Trained]]]:
    """shape -> variant -> one run per seed."""
    out: dict[str, dict[str, list[Trained]]] = {s: {} for s in p.shapes}
    for variant, extra in p.case.variants.items():
        cfg = C.ending(C.compose(p.case.recipe, [*p.overrides, *extra]), p.steps)
        for shape in p.shapes:
            twin = C.twin_config(cfg, shape, p.case.metric)
            for seed in p.seeds:
                label = f"{p.case.recipe}-alone{'-' + variant if variant else ''}-s{seed}"
                run = runner.get(C.with_seed(twin, seed), label, p.case.metric)
                out[shape].setdefault(variant, []).append(run)
                name = f"{shape} {variant}".strip()
                say(f"  alone {name} seed {seed}: {shown(p.case.metric, run.rows[0])}", run)
    return out


def train_nested(p: Plan, runner: Runner, steps: int, column: str) -> list[Trained]:
    cfg = C.nested_config(C.ending(p.nested, steps), p.shapes, p.every)
    runs = []
    for seed in p.seeds:
        run = runner.get(C.with_seed(cfg, seed), f"{p.case.recipe}-nested-{steps}-s{seed}", p.case.metric)
        runs.append(run)
        values = ", ".join(shown(p.case.metric, run.row(s)) for s in p.shapes)
        say(f"  nested {column} ({steps} steps) seed {seed}: {values}", run)
    return runs


def shown(metric: str, row: dict[str, Any]) -> str:
    import math

    value = row[metric]
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value / math.log(2):.4f} bpc"


def say(text: str, run: Trained) -> None:
    print(f"{text} ({'cached' if run.cached else f'{run.wall_s:.0f} s'})", flush=True)


def run_recipe(case: C.Case, args: argparse.Namespace, runner: Runner) -> dict[str, Any]:
    from .quality_summary import summarize

    p = plan(case, args, runner)
    print(
        f"\n{case.recipe}: {len(p.shapes)} of {p.space_size} shapes, seeds {p.seeds}, twins {p.steps} steps, "
        f"nested {p.nested_steps} steps"
        + (f" and {p.compute_steps} steps (equal compute)" if p.compute_steps else ""),
        flush=True,
    )
    twins = train_twins(p, runner)
    at_steps = train_nested(p, runner, p.nested_steps, "(a)")
    at_compute = None
    if p.compute_steps is not None:
        same = p.compute_steps == p.nested_steps
        at_compute = at_steps if same else train_nested(p, runner, p.compute_steps, "(b)")
    return summarize(p, twins, at_steps, at_compute, args)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 shapes (minilm: 2), fewer steps: minutes")
    parser.add_argument("--only", nargs="+", choices=list(C.CASES), help="run only these recipes")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 on both sides (default 3; see --quick)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides of the nested and alone runs")
    parser.add_argument("--nested-set", nargs="*", default=[], help="config overrides of the nested run only")
    parser.add_argument("--nested-steps", type=int, help="column (a) trains the nested model this many steps")
    parser.add_argument(
        "--equal-compute",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="column (b): the nested run at as many passes as all twins together (the longer column)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="train every run again (results still cached)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 on a machine shared with jobs)"
    )
    parser.add_argument(
        "--variants", nargs="+", help="only these twin variants (minilm_nested: cls, mean; default: all)"
    )
    parser.add_argument("--tag", default="", help="results-<tag>.md/json (default: quick or full)")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    return args


def quiet(threads: int) -> None:
    """Torch threads, Lightning's info lines off, the output folder made: before any training."""
    import logging

    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # its load reports bypass the runs' redirected stderr
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    OUT.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    quiet(args.threads)
    import sortednet

    runner = Runner(OUT, code_state(Path(sortednet.__file__).parents[1]), use_cache=not args.no_cache)
    started = datetime.now(timezone.utc)
    results = [
        run_recipe(case, args, runner) for name, case in C.CASES.items() if not args.only or name in args.only
    ]
    header = {
        "command": "python -m bench.quality " + shlex.join(argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "code": runner.code,
        "versions": runner.libraries,
    }
    text = markdown(header, results)
    print("\n" + text)
    path = write(OUT, args.tag or ("quick" if args.quick else "full"), header, results, text)
    print(f"written to {path}")
    return 0 if all(r["equal_steps_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
