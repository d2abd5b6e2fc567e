"""Is every sub-model as good as the same shape trained alone?

    python -m bench.quality                      # every offline recipe, the recipes' own steps (an hour or more)
    python -m bench.quality --quick              # fewer shapes and steps: minutes on 2 cores (`make quality`)
    python -m bench.quality --only digits_vit --set sampler.k=4 --nested-set train.distill.enabled=true
    python -m bench.quality --only digits_vit --nested-steps 1200     # how many steps nested training needs

For each recipe the nested model is trained once with `sortednet-train`'s own code path, then every chosen
shape is trained alone: the same config, data order, optimizer, schedule and number of optimizer steps, with
a nesting space of that one shape, so the twin starts from the same weights cut to its shape (pretrained
recipes: the pretrained weights; the others: the same random init). A recipe may train its twins in several
variants (the pretrained encoder with its own [CLS] head and with mean pooling): a sub-model is judged against
the best of them. Targets: accuracy >= 0.98 x alone, loss (bits per character) <= 1.02 x alone.

Alone results are cached in bench/out/quality/cache/ by their resolved config; the nested run always trains.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

OUT = Path(__file__).parent / "out" / "quality"
ACCURACY_TARGET, LOSS_TARGET = 0.98, 1.02
# every benchmark run: no progress bar, no logger, no per-validation subnet table
COMMON = ["callbacks.progress=null", "logger=none", "callbacks.eval.enabled=false"]


@dataclass
class Case:
    recipe: str
    shapes: list[str]  # full run
    quick_shapes: list[str]
    quick: list[str]  # overrides of the quick run (fewer steps, smaller data)
    full: list[str] = field(default_factory=list)
    alone_variants: dict[str, list[str]] = field(default_factory=lambda: {"": []})


CASES = {
    "digits_vit": Case(
        "digits_vit",
        shapes=[
            "depth=2,ffn=0.25,heads=2",
            "depth=2,ffn=1.0,heads=4",
            "depth=4,ffn=0.25,heads=4",
            "depth=4,ffn=0.5,heads=2",
            "depth=6,ffn=0.5,heads=4",
            "depth=6,ffn=1.0,heads=4",
        ],
        quick_shapes=["depth=2,ffn=0.25,heads=2", "depth=4,ffn=0.5,heads=4", "depth=6,ffn=1.0,heads=4"],
        quick=["trainer.max_steps=200", "trainer.val_check_interval=200"],
    ),
    "swin_digits": Case(
        "swin_digits",
        shapes=["depth=1,ffn=0.25", "depth=1,ffn=1.0", "depth=2,ffn=0.25", "depth=2,ffn=1.0"],
        quick_shapes=["depth=1,ffn=0.25", "depth=2,ffn=1.0"],
        quick=["trainer.max_steps=200", "trainer.val_check_interval=200"],
    ),
    "maestro_digits": Case(
        "maestro_digits",
        shapes=[
            "depth=2,hidden=32,ffn=0.5,rank=0.25",
            "depth=2,hidden=64,ffn=1.0,rank=1.0",
            "depth=4,hidden=48,ffn=0.5,rank=0.5",
            "depth=6,hidden=32,ffn=1.0,rank=0.25",
            "depth=6,hidden=64,ffn=1.0,rank=1.0",
        ],
        quick_shapes=["depth=2,hidden=32,ffn=0.5,rank=0.25", "depth=6,hidden=64,ffn=1.0,rank=1.0"],
        quick=["trainer.max_steps=200", "trainer.val_check_interval=200", "train.rank.shrink_every=50"],
    ),
    "shakespeare_gpt2": Case(
        "shakespeare_gpt2",
        shapes=[
            "depth=2,ffn=0.25,heads=2",
            "depth=2,ffn=1.0,heads=4",
            "depth=4,ffn=0.5,heads=4",
            "depth=6,ffn=0.25,heads=4",
            "depth=6,ffn=1.0,heads=2",
            "depth=6,ffn=1.0,heads=4",
        ],
        quick_shapes=["depth=2,ffn=0.25,heads=2", "depth=6,ffn=1.0,heads=4"],
        quick=[
            "trainer.max_steps=300",
            "trainer.val_check_interval=300",
            "data.max_chars=1000000",
            "trainer.limit_val_batches=10",
            "eval_table.max_batches=20",
        ],
    ),
    "minilm_nested": Case(
        "minilm_nested",
        shapes=[
            "depth=2,ffn=0.25",
            "depth=2,ffn=1.0",
            "depth=4,ffn=0.5",
            "depth=6,ffn=0.25",
            "depth=6,ffn=1.0",
        ],
        quick_shapes=["depth=2,ffn=0.25", "depth=6,ffn=1.0"],
        quick=[
            "trainer.max_steps=150",
            "trainer.val_check_interval=150",
            "data.max_length=64",
            "data.batch_size=32",
        ],  # the whole validation set: it is ordered by play, so its first batches hold one genre
        alone_variants={"cls": ["model.pooling=cls"], "mean": ["model.pooling=mean"]},
    ),
}


# ---- config ---------------------------------------------------------------------------------------
def compose(recipe: str, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sortednet.cli.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=[f"experiment={recipe}", *COMMON, *overrides])


def alone_config(cfg: Any, shape: str) -> Any:
    """The recipe's config training one shape: a nesting space of that shape only, nothing nested-only."""
    from omegaconf import OmegaConf

    nesting = OmegaConf.to_container(cfg.nesting, resolve=True)
    point = nested_cfg_space(cfg).normalize(shape)
    single: dict[str, Any] = {"_target_": nesting["_target_"], **{d: [v] for d, v in point.items()}}
    single.update({k: nesting[k] for k in ("reorder", "reorder_batches") if k in nesting})  # the same start
    if "rank_targets" in nesting:
        single["rank_targets"] = nesting["rank_targets"]
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.nesting = single
    cfg.model.head = "shared"  # a head per depth of a one-depth space is the shared head
    cfg.sampler = {"_target_": "sortednet.sampling.AllSampler", "_partial_": True}
    cfg.train.distill.enabled = False
    cfg.train.subnet_weights = None
    cfg.train.rank = {**cfg.train.rank, "sampling": "per_model", "group_lasso": 0.0, "shrink_every": 0}
    cfg.val.subnets = None
    return cfg


def fingerprint(cfg: Any) -> str:
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("run_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- running --------------------------------------------------------------------------------------
def train(cfg: Any, log: Path) -> tuple[list[dict[str, Any]], float]:
    """Train with sortednet-train's own code path in this process; the eval table and the wall seconds."""
    from omegaconf import OmegaConf

    from sortednet.cli.train import run

    folder = Path(tempfile.mkdtemp(prefix="quality-", dir=OUT))
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(folder)
    start = time.perf_counter()
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            rows = run(cfg)
    finally:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(buffer.getvalue())
        shutil.rmtree(folder, ignore_errors=True)
    return rows, time.perf_counter() - start


def alone_row(cfg: Any, shape: str, variant: str, recipe: str) -> dict[str, Any]:
    key = fingerprint(cfg)
    cached = OUT / "cache" / f"{recipe}-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    rows, wall = train(cfg, OUT / "logs" / f"{recipe}-alone-{key}.log")
    row = {**rows[0], "shape": shape, "variant": variant, "wall_s": wall}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(row))
    return row


def metric_of(rows: list[dict[str, Any]]) -> str:
    return "accuracy" if "accuracy" in rows[0] and "perplexity" not in rows[0] else "loss"


def ratio(metric: str, nested: float, alone: float) -> tuple[float, bool]:
    r = nested / alone
    return r, (r >= ACCURACY_TARGET) if metric == "accuracy" else (r <= LOSS_TARGET)


def shown(metric: str, value: float) -> str:
    if metric == "accuracy":
        return f"{100 * value:.2f}%"
    return f"{value / math.log(2):.4f} bpc"


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    from sortednet.spec import Subnet

    mode = case.quick if args.quick else case.full
    shapes = case.quick_shapes if args.quick else case.shapes
    base = [*mode, *args.set]
    nested_cfg = compose(case.recipe, [*base, *args.nested_set])
    if args.nested_steps:
        nested_cfg.trainer.max_steps = args.nested_steps
    print(f"\n{case.recipe}: nested run ({nested_cfg.trainer.max_steps} steps)", flush=True)
    rows, nested_wall = train(nested_cfg, OUT / "logs" / f"{case.recipe}-nested.log")
    by_subnet = {Subnet.parse(r["subnet"]): r for r in rows}
    metric = metric_of(rows)
    results, alone_wall = [], 0.0
    for shape in shapes:
        best = None
        for variant, extra in case.alone_variants.items():
            cfg = alone_config(compose(case.recipe, [*base, *extra]), shape)
            row = alone_row(cfg, shape, variant, case.recipe)
            alone_wall += row["wall_s"]
            better = best is None or (
                row[metric] > best[metric] if metric == "accuracy" else row[metric] < best[metric]
            )
            best = row if better else best
            print(f"  alone {shape} {variant}: {shown(metric, row[metric])}", flush=True)
        subnet = nested_cfg_space(nested_cfg).normalize(shape)
        nested_row = by_subnet[subnet]
        r, ok = ratio(metric, nested_row[metric], best[metric])
        results.append(
            {
                "shape": str(subnet),
                "params": nested_row["params"],
                "alone": best[metric],
                "alone_variant": best["variant"],
                "nested": nested_row[metric],
                "ratio": r,
                "pass": ok,
            }
        )
    return {
        "recipe": case.recipe,
        "metric": metric,
        "steps": int(nested_cfg.trainer.max_steps),
        "nested_wall_s": nested_wall,
        "alone_wall_s": alone_wall,
        "rows": results,
        "all_nested": rows,
        "settings": {"set": args.set, "nested_set": args.nested_set, "quick": args.quick},
    }


def nested_cfg_space(cfg: Any):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sortednet.train.config import split_nesting

    node, _ = split_nesting(OmegaConf.to_container(cfg.nesting, resolve=True))
    return instantiate(node, _convert_="all")


def quiet() -> None:
    """Two threads, Lightning's info lines off, the output folder made: before any `train()`."""
    import logging

    import torch

    torch.set_num_threads(2)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    OUT.mkdir(parents=True, exist_ok=True)


# ---- report ---------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    metric = result["metric"]
    target = f">= {ACCURACY_TARGET}" if metric == "accuracy" else f"<= {LOSS_TARGET}"
    what = "accuracy" if metric == "accuracy" else "bits per character"
    lines = [
        f"**{result['recipe']}** ({result['steps']} optimizer steps each; {what}; target ratio {target}; "
        f"nested run {result['nested_wall_s']:.0f} s, all alone runs {result['alone_wall_s']:.0f} s)",
        "",
        "| shape | params | alone | nested | nested / alone | |",
        "|---|---|---|---|---|---|",
    ]
    from sortednet.report import human

    for row in result["rows"]:
        variant = f" ({row['alone_variant']})" if row["alone_variant"] else ""
        lines.append(
            f"| {row['shape']} | {human(row['params'])} | {shown(metric, row['alone'])}{variant} | "
            f"{shown(metric, row['nested'])} | {row['ratio']:.3f} | {'PASS' if row['pass'] else 'MISS'} |"
        )
    worst = (
        min(r["ratio"] for r in result["rows"])
        if metric == "accuracy"
        else max(r["ratio"] for r in result["rows"])
    )
    passed = sum(r["pass"] for r in result["rows"])
    lines += ["", f"{passed} of {len(result['rows'])} within target; worst ratio {worst:.3f}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer shapes and steps (minutes)")
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="run only these recipes")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for nested and alone runs")
    parser.add_argument("--nested-set", nargs="*", default=[], help="config overrides of the nested run only")
    parser.add_argument("--nested-steps", type=int, help="train the nested model this many steps instead")
    parser.add_argument("--tag", default="", help="name of this run's result file")
    args = parser.parse_args(argv)
    quiet()
    results, failed = [], 0
    for name, case in CASES.items():
        if args.only and name not in args.only:
            continue
        result = run_case(case, args)
        results.append(result)
        text = markdown(result)
        print("\n" + text, flush=True)
        failed += sum(not r["pass"] for r in result["rows"])
    tag = args.tag or ("quick" if args.quick else "full")
    (OUT / f"results-{tag}.json").write_text(json.dumps(results, indent=1, default=str))
    (OUT / f"results-{tag}.md").write_text("\n".join(markdown(r) for r in results))
    print(f"written to {OUT / f'results-{tag}.md'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
