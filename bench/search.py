"""Does searching per-layer sub-models beat the best uniform one within the same budget?

    python -m bench.search                          # digits_vit and minilm_nested (an hour or more on 2 cores)
    python -m bench.search --only digits_vit --quick

For a recipe: train it with a space that allows FFN widths and heads per layer (`nesting.per_layer`), twice — with
the recipe's own sampler (uniform members: MatFormer mixes at inference) and with `sampler.per_layer=true` (the
middle members drawn per layer: Flextron, OFA) — then `sortednet-search` each run at three parameter budgets between
the smallest and the largest uniform member. Printed per run and budget: the searched member's metric against the
best uniform member within the same budget (both evaluated on the same validation set), the proxy and real
evaluations the search used, its wall time, and the proxy's Spearman with the real metric. Same seed, data, steps
and optimizer on both runs; one seed (the search's real evaluations are on the full validation set).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

RECIPES = {
    "digits_vit": {
        "per_layer": "[ffn,heads]",
        "quick": ["trainer.max_steps=150"],
        "fractions": (0.3, 0.5, 0.7),
    },
    "minilm_nested": {
        "per_layer": "[ffn]",
        "quick": ["trainer.max_steps=100", "data.max_length=64"],
        "full": ["data.max_length=64"],
        "fractions": (0.3, 0.5, 0.7),
    },
}
COMMON = ["callbacks.progress=null", "logger=none", "callbacks.eval.enabled=false"]


def train(recipe: str, overrides: list[str], folder: Path) -> float:
    from hydra import compose, initialize_config_dir

    from sortednet.cli.train import CONF_DIR, run

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={recipe}", f"run_dir={folder}", *COMMON, *overrides])
    start = time.perf_counter()
    run(cfg)
    return time.perf_counter() - start


def budgets(folder: Path, fractions: tuple[float, ...]) -> list[float]:
    """Parameter budgets between the smallest and the largest uniform member (on a log scale)."""
    import sortednet as sn

    costs = sn.read_metadata(folder)["eval_table"]
    low, high = min(r["params"] for r in costs), max(r["params"] for r in costs)
    return [float(low * (high / low) ** f) for f in fractions]


def search(folder: Path, limits: list[float], quick: bool) -> dict[str, Any]:
    from sortednet.cli.search import search as run_search

    args = SimpleNamespace(
        ckpt=str(folder), max_params=",".join(f"{x:.0f}" for x in limits), max_flops=None, max_latency_ms=None,
        population=12 if quick else 24, generations=3 if quick else 10, mutation=0.25, finalists=3 if quick else 5,
        proxy_batches=4, eval_batches=None, seed=0, out=str(folder / "search"), device="cpu",
    )  # fmt: skip
    return run_search(args)


def rows(recipe: str, sampler: str, result: dict[str, Any], train_s: float) -> list[str]:
    from sortednet.report import human

    metric, sign = result["metric"], 1 if result["higher"] else -1
    out = []
    for row in result["rows"]:
        best, uniform = row["best"], row["uniform"]
        shown = (lambda v: f"{100 * v:.2f}%") if metric == "accuracy" else (lambda v: f"{v:.4f}")
        gain = sign * (best[metric] - uniform[metric]) * (100 if metric == "accuracy" else 1)
        unit = " pts" if metric == "accuracy" else ""
        out.append(
            f"| {recipe} | {sampler} | {human(row['limit'])} | {best['subnet']} ({human(best['params'])}) | "
            f"{shown(best[metric])} | {uniform['subnet']} ({human(uniform['params'])}) | {shown(uniform[metric])} | "
            f"{gain:+.2f}{unit} | {row['proxy_evaluations']} | {row['real_evaluations']} |"
        )
    out.append(
        f"| {recipe} | {sampler} | search wall {result['seconds']:.0f} s, training {train_s:.0f} s; proxy "
        f"Spearman {result['spearman']:.3f} over {result['measured']} members evaluated for real | | | | | | | |"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(RECIPES))
    parser.add_argument("--quick", action="store_true", help="fewer steps, a smaller search (minutes)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    lines = [
        f"`python -m bench.search{' --quick' if args.quick else ''}`",
        "",
        "| recipe | training sampler | budget | searched | metric | best uniform within budget | metric | "
        "searched - uniform | proxy evals | real evals |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for recipe, case in RECIPES.items():
            if args.only and recipe not in args.only:
                continue
            base = [
                f"nesting.per_layer={case['per_layer']}",
                *case.get("quick" if args.quick else "full", []),
            ]
            for sampler, extra in (
                ("uniform members", []),
                ("per-layer members", ["sampler.per_layer=true"]),
            ):
                folder = Path(tmp) / f"{recipe}-{len(extra)}"
                seconds = train(recipe, [*base, *extra], folder)
                result = search(folder, budgets(folder, case["fractions"]), args.quick)
                lines += rows(recipe, sampler, result, seconds)
                print("\n".join(lines[-4:]), flush=True)
    text = "\n".join(lines)
    out = Path(__file__).parent / "out" / f"search{'-quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\n{text}\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
