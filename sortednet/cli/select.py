"""sortednet-select: the best sub-model under a budget, from the checkpoint's evaluation table.

    sortednet-select runs/digits_vit/<time> --max-params 100K
    sortednet-select run.safetensors --max-flops 2G --metric loss --export small/
    sortednet-select run.safetensors --max-latency-ms 5

Without a stored evaluation that has the needed columns, it runs sortednet-eval's evaluation (the run's own
data, the current device) and stores it in the checkpoint. Several budgets may be given: all must hold.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .tools import (
    Parser,
    Refusal,
    check_out_dir,
    command,
    open_checkpoint,
    parse_amount,
    parse_ms,
    refuse_diverged,
)

PROG = "sortednet-select"
UNITS = {"params": "params", "flops": "FLOPs", "latency_ms": "ms"}


def budget_text(key: str, value: float) -> str:
    """'60K params', '2G FLOPs', '5 ms' (3 significant digits)."""
    if key == "latency_ms":
        return f"{value:.3g} ms"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3), ("", 1.0)):
        if value >= scale or not unit:
            return f"{value / scale:.4g}{unit} {UNITS[key]}"
    raise AssertionError  # unreachable


def choose(
    rows: Sequence[Mapping[str, Any]], budgets: Mapping[str, float], metric: str, higher_is_better: bool
) -> Mapping[str, Any]:
    """The row with the best metric among those within every budget (ties: fewer params). Raises Refusal
    naming the cheapest subnet's cost when no row fits."""
    fits = [r for r in rows if all(r[k] <= v for k, v in budgets.items())]
    if not fits:
        parts = []
        for key, limit in budgets.items():
            cheapest = min(rows, key=lambda r: r[key])
            if cheapest[key] > limit:
                parts.append(
                    f"--max-{key.replace('_', '-')} {budget_text(key, limit)}: the smallest, "
                    f"{cheapest['subnet']}, has {budget_text(key, cheapest[key])}"
                )
        if not parts:  # each budget alone is met by some subnet, but no subnet meets all of them
            parts.append("no subnet meets all the budgets at once")
        raise Refusal("no subnet fits " + "; ".join(parts))
    sign = 1.0 if higher_is_better else -1.0
    return max(fits, key=lambda r: (sign * r[metric], -r["params"]))


def searched_rows(
    meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], metric: str, budgets: Mapping[str, float]
) -> list[dict[str, Any]]:
    """The slices sortednet-search stored (per-layer members the evaluation table does not list), as rows: they
    count where they have the metric and every budgeted cost."""
    listed = {str(r["subnet"]) for r in rows}
    out = []
    for s in meta.get("slices") or []:
        row = {"subnet": s["subnet"], "params": s["params"], s["metric"]: s["value"]}
        if s["subnet"] not in listed and metric in row and all(k in row for k in budgets):
            out.append(row)
    return out


def evaluation(
    path: Any, meta: Mapping[str, Any], needed: Sequence[str], device: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(table, info): the stored ones if the table has the `needed` columns, else a fresh evaluation (stored
    in the checkpoint)."""
    from rich.console import Console

    rows = meta.get("eval_table") or []
    missing = [k for k in needed if not rows or k not in rows[0]]
    if not missing:
        return list(rows), dict(meta.get("eval_info") or {})
    from .eval import evaluate_checkpoint

    console = Console(stderr=True)
    why = "no evaluation" if not rows else f"an evaluation without {', '.join(missing)}"
    console.print(f"{PROG}: the checkpoint has {why}; evaluating its sub-models (stored in the checkpoint)")
    rows, info = evaluate_checkpoint(path, {"device": device, "progress": True}, console=console)
    console.print(f"{len(rows)} subnets in {info['seconds']:.1f} s on {info['device_name']}")
    return rows, info


@command(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(prog=PROG, description="The best sub-model of a checkpoint under a budget.")
    parser.add_argument("ckpt", help="a sortednet .safetensors checkpoint or a run folder")
    parser.add_argument("--max-params", metavar="N", help="e.g. 30M, 500K, 1.5e6")
    parser.add_argument("--max-flops", metavar="N", help="FLOPs per sample, e.g. 2G")
    parser.add_argument("--max-latency-ms", metavar="MS", help="measured latency, e.g. 5")
    parser.add_argument("--metric", help="rank by this metric (default: accuracy, or perplexity for LMs)")
    parser.add_argument("--export", metavar="DIR", help="also export the chosen sub-model to DIR")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="of --export")
    parser.add_argument(
        "--device", default="auto", help="device of an evaluation that has to run (default: auto)"
    )
    parser.add_argument(
        "--busy-latency",
        action="store_true",
        help="choose by latencies measured while the machine was busy (refused otherwise)",
    )
    args = parser.parse_args(argv)
    budgets: dict[str, float] = {}
    if args.max_params is not None:
        budgets["params"] = parse_amount("--max-params", args.max_params)
    if args.max_flops is not None:
        budgets["flops"] = parse_amount("--max-flops", args.max_flops)
    if args.max_latency_ms is not None:
        budgets["latency_ms"] = parse_ms("--max-latency-ms", args.max_latency_ms)
    path, meta = open_checkpoint(args.ckpt)
    refuse_diverged(path, meta)
    if args.export:
        check_out_dir(args.export)
    if args.metric is not None and args.metric not in ("accuracy", "loss", "perplexity"):
        raise ValueError(f"--metric {args.metric!r} is unknown; allowed: accuracy, loss, perplexity")

    from ..evaluate import headline_metric
    from ..report import print_table
    from .eval import busy_latencies, busy_line

    rows, info = evaluation(
        path, meta, list(budgets), args.device
    )  # a metric the table lacks: the task has none
    busy = busy_latencies(rows) if "latency_ms" in budgets else []
    if busy and not args.busy_latency:
        raise Refusal(
            f"--max-latency-ms: the latency of {len(busy)} of {len(rows)} subnets was measured while the machine "
            f"was busy (latency_ok=BUSY), so it cannot be trusted against a budget; measure again on an idle "
            f"machine (sortednet-eval ckpt={args.ckpt}) or give --busy-latency to choose by it anyway"
        )
    if busy:
        print(f"{PROG}: warning: {busy_line(rows)}; chosen by them anyway (--busy-latency)", file=sys.stderr)
    metric, higher = headline_metric(rows, args.metric)
    rows = [*rows, *searched_rows(meta, rows, metric, budgets)]
    best = choose(rows, budgets, metric, higher)
    fits = sum(all(r[k] <= v for k, v in budgets.items()) for r in rows)
    names = {"params": "params", "flops": "FLOPs", "latency_ms": "latency"}
    under = ", ".join(
        f"{names[k]} <= {budget_text(k, v) if k == 'latency_ms' else budget_text(k, v).rsplit(' ', 1)[0]}"
        for k, v in budgets.items()
    )
    print(
        f"best by {metric} ({'higher' if higher else 'lower'} is better)"
        + (f" under {under}: {fits} of {len(rows)} subnets fit" if budgets else f" of {len(rows)} subnets")
    )
    if "latency_ms" in budgets and info.get("device_name"):
        print(
            f"latency measured on {info['device']} ({info['device_name']}), "
            f"batch {info.get('latency_batch_size')}, {info.get('latency_threads')} thread(s)"
        )
    print_table([dict(best)], metric=metric)
    print(best["subnet"])
    if args.export:
        from .export import export_subnet, report

        report(export_subnet(path, str(best["subnet"]), args.export, args.dtype), args.export)


if __name__ == "__main__":
    main()
