"""SN-Net's curve on an offline task: accuracy rising with FLOPs between anchors of clearly different quality.

    python -m bench.stitch_curve                # the experiment: ~15 min of one CPU core (see below)
    python -m bench.stitch_curve --smoke        # a few steps of everything: the script runs (~1 min)

What runs is `sortednet-train experiment=snnet_digits` (three ViTs of widths 16, 32, 64 and 6 blocks, each trained
alone on scikit-learn digits, then SN-Net's paired stitching, one stitching layer per window position, one
member per step drawn uniformly: 35 networks) with half of digits held out for validation (898 images: the
anchors' accuracies differ by more than their standard errors), longer anchor training and more stitched steps.
Then every member's FLOPs per sample are counted (torch.utils.flop_counter) and this prints the per-member table
(FLOPs, params, accuracy, loss), Spearman's rank correlation of FLOPs against accuracy (and against -loss) over
the stitches, and which stitches fall outside their two anchors' accuracies (by more than a binomial standard
error), and writes the figure (FLOPs against accuracy, anchors marked) to docs/stitch_curve.png.

Target (SN-Net's Fig. 5 at toy size): every stitch between its anchors, Spearman(FLOPs, accuracy) >= 0.8.

CPU time, estimated from timings on a loaded 2-core machine (one core each): anchors alone 3 x --pretrain steps
(~0.03 / 0.05 / 0.09 s a step for widths 16 / 32 / 64: ~100 s at 600), stitched training --steps at ~0.08 s a
step with validation (~250 s at 3000), the table (35 members on 898 images) and FLOPs ~60 s, Lightning's start
~20 s: about 7 minutes idle, 15 minutes under the load this was estimated on.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import setup

RECIPE = "snnet_digits"
PNG = Path(__file__).parents[1] / "docs" / "stitch_curve.png"
OUT = Path(__file__).parent / "out" / "stitch_curve"


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties share their mean rank)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties: their mean rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    every = max(1, args.steps // 3)
    out = [
        f"experiment={RECIPE}",
        f"run_dir={run_dir}",
        f"seed={args.seed}",
        "data.val_fraction=0.5",
        f"stitch.pretrain_steps={args.pretrain}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={every}",
        f"callbacks.checkpoint.every_n_train_steps={every}",
        "callbacks.progress=null",
    ]
    if args.smoke:
        out += ["eval_table.max_batches=1", "trainer.limit_val_batches=1"]
    return out


def flops_of(path: Path, data: Any) -> dict[str, int]:
    import sortednet as sn
    from sortednet.measure import count_flops, one_sample

    model = sn.load(path).eval()
    sample = one_sample(next(iter(data.val_dataloader())))
    return {str(m): count_flops(model, m, sample) for m in model.space.subnets()}


def rows_with_flops(rows: list[dict[str, Any]], flops: dict[str, int]) -> list[dict[str, Any]]:
    out = [{**r, "flops": flops[r["subnet"]]} for r in rows]
    return sorted(out, key=lambda r: r["flops"])


def anchors_of(member: str) -> list[str]:
    """The anchors a member runs, in the order it runs them (each once)."""
    from sortednet.stitch.member import Stitch

    return list(dict.fromkeys(name for name, _, _ in Stitch.parse(member).segments))


def check(rows: list[dict[str, Any]], n_val: int) -> dict[str, Any]:
    """Spearman over the stitches, and the stitches outside their anchors' accuracies (beyond one standard error)."""
    by_name = {r["subnet"]: r for r in rows}
    stitches = [r for r in rows if ">" in r["subnet"]]
    flops = np.array([r["flops"] for r in stitches], float)
    outside = []
    for r in stitches:
        accs = [by_name[a]["accuracy"] for a in anchors_of(r["subnet"]) if a in by_name]
        se = math.sqrt(max(r["accuracy"] * (1 - r["accuracy"]), 1e-4) / n_val)
        if accs and not (min(accs) - se <= r["accuracy"] <= max(accs) + se):
            outside.append(r["subnet"])
    return {
        "spearman_accuracy": spearman(flops, np.array([r["accuracy"] for r in stitches])),
        "spearman_neg_loss": spearman(flops, -np.array([r["loss"] for r in stitches])),
        "spearman_all_members": spearman(
            np.array([r["flops"] for r in rows], float), np.array([r["accuracy"] for r in rows])
        ),
        "stitches": len(stitches),
        "outside": outside,
    }


def table(rows: list[dict[str, Any]]) -> str:
    from sortednet.report import human

    lines = [f"{'member':<22} {'FLOPs':>8} {'params':>8} {'accuracy':>9} {'loss':>7}"]
    for r in rows:
        mark = "  (anchor)" if ">" not in r["subnet"] else ""
        lines.append(
            f"{r['subnet']:<22} {human(r['flops']):>8} {human(r['params']):>8} {r['accuracy']:>9.4f} "
            f"{r['loss']:>7.4f}{mark}"
        )
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pairs: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if ">" in r["subnet"]:
            pairs.setdefault(" > ".join(anchors_of(r["subnet"])), []).append(r)
    for pair, members in sorted(pairs.items()):
        ax.scatter(
            [m["flops"] / 1e6 for m in members], [100 * m["accuracy"] for m in members], s=14, label=pair
        )
    anchors = [r for r in rows if ">" not in r["subnet"]]
    ax.scatter(
        [a["flops"] / 1e6 for a in anchors], [100 * a["accuracy"] for a in anchors], marker="*", s=140, c="k"
    )
    for a in anchors:
        ax.annotate(
            a["subnet"], (a["flops"] / 1e6, 100 * a["accuracy"]), textcoords="offset points", xytext=(4, -10)
        )
    ax.set_xlabel("MFLOPs per image")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"SN-Net on digits: Spearman(FLOPs, acc) = {summary['spearman_accuracy']:.2f}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=int, default=600, help="steps each anchor trains alone")
    parser.add_argument("--steps", type=int, default=3000, help="stitched training steps (one member each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, default=PNG)
    parser.add_argument("--smoke", action="store_true", help="4 steps of everything, figure under bench/out")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pretrain, args.steps = 4, 4
        args.png = OUT / "smoke.png" if args.png == PNG else args.png
    setup()
    from hydra import compose, initialize_config_dir

    from sortednet.cli.train import CONF_DIR, run
    from sortednet.train.config import make

    run_dir = OUT / time.strftime("%Y-%m-%d_%H-%M-%S")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides(args, run_dir))
    start = time.perf_counter()
    rows = run(cfg)
    data = make(cfg.data)
    data.setup("fit")
    flops = flops_of(run_dir / "checkpoints" / "last.safetensors", data)
    rows = rows_with_flops(rows, flops)
    summary = check(rows, len(data.val_set))
    print(table(rows))
    print(
        f"\nSpearman(FLOPs, accuracy) over {summary['stitches']} stitches: {summary['spearman_accuracy']:.3f} "
        f"(target >= 0.8); Spearman(FLOPs, -loss): {summary['spearman_neg_loss']:.3f}; over every member: "
        f"{summary['spearman_all_members']:.3f}"
    )
    outside = summary["outside"]
    print(
        f"stitches outside their anchors' accuracies (beyond one standard error): {len(outside)} of "
        f"{summary['stitches']}{': ' + ', '.join(outside) if outside else ''}"
    )
    figure(rows, summary, args.png)
    print(f"figure: {args.png}\nrun folder: {run_dir}\ntook {time.perf_counter() - start:.0f} s")
    return summary


if __name__ == "__main__":
    main()
