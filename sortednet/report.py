"""Tables of sub-models: printed with rich, written as CSV and Markdown; the Pareto frontier and its plot."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key in ("params", "flops"):
        return human(value)
    if key in ("accuracy", "accuracy_uncalibrated"):
        return f"{100 * value:.2f}%"
    if key == "latency_ms":
        return f"{value:.3g}"
    if key == "latency_ok":  # measured while the machine was free enough (sortednet.measure.Timing)
        return "yes" if value else "BUSY"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_table(rows: Sequence[dict[str, Any]], folder: str | Path, name: str = "table") -> None:
    if not rows:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with open(folder / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(_cell(k, r[k]) for k in keys) + " |" for r in rows]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")


def print_table(
    rows: Sequence[dict[str, Any]],
    title: str = "",
    metric: str | None = None,
    highlight: Sequence[str] = (),
    console: Any = None,
) -> None:
    """A rich table; the `metric` column in bold, the rows whose subnet is in `highlight` in green."""
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title)
    keys = list(rows[0])
    for key in keys:
        table.add_column(
            key,
            justify="left" if key == "subnet" else "right",
            style="bold" if key == metric else None,
            no_wrap=True,  # never cut a subnet's name or a header
            min_width=max(len(key), *(len(_cell(key, r[key])) for r in rows)),
        )
    for row in rows:
        table.add_row(
            *(_cell(k, row[k]) for k in keys), style="green" if row.get("subnet") in highlight else None
        )
    if console is None:  # wide enough for the whole table (a pipe gets 80 columns otherwise)
        widths = [max(len(k), *(len(_cell(k, r[k])) for r in rows)) for k in keys]
        console = Console()
        console = Console(width=max(console.width, sum(widths) + 3 * len(keys) + 1))
    console.print(table)


def pareto_front(
    rows: Sequence[Mapping[str, Any]], cost: str, metric: str, higher_is_better: bool
) -> list[int]:
    """Indices of the rows no other row beats (cheaper or as cheap, and strictly better metric; or strictly
    cheaper and as good), cheapest first."""
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(rows)), key=lambda i: (rows[i][cost], -sign * rows[i][metric]))
    front, best = [], float("-inf")
    for i in order:
        score = sign * rows[i][metric]
        if score > best:
            front.append(i)
            best = score
    return front


def short_name(subnet: str) -> str:
    """'depth=2,heads=4,ffn=0.25' -> 'd2 h4 f0.25' (plot labels)."""
    return " ".join(part[0] + part.partition("=")[2] for part in subnet.split(","))


def _legend(subnet: str) -> str:
    """'depth=2,heads=4,ffn=0.25' -> 'd=depth, h=heads, f=ffn'."""
    return ", ".join(f"{dim[0]}={dim}" for dim in (part.partition("=")[0] for part in subnet.split(",")))


def _tick(value: float, cost: str) -> str:
    if cost == "latency_ms":
        return f"{value:g}"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


_AXIS = {"params": "parameters", "flops": "FLOPs per sample", "latency_ms": "latency (ms)"}


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    metric: str,
    higher_is_better: bool,
    costs: Sequence[str] = ("params", "latency_ms"),
    title: str = "",
) -> Path:
    """`metric` against each cost (one panel each, the costs the rows have): every subnet a grey dot, the
    Pareto frontier a coloured line whose points are labelled with their subnets (d=depth, h=heads, f=ffn,
    ...)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    costs = [c for c in costs if rows and c in rows[0]]
    if not costs:
        raise ValueError(f"the table has none of the costs {list(costs)}; nothing to plot")
    scale = 100.0 if metric == "accuracy" else 1.0
    fig = Figure(figsize=(5.2 * len(costs), 3.9), dpi=100)
    axes = fig.subplots(1, len(costs), squeeze=False)
    for ax, cost in zip(axes[0], costs, strict=True):
        x = [r[cost] for r in rows]
        y = [scale * r[metric] for r in rows]
        front = pareto_front(rows, cost, metric, higher_is_better)
        ax.scatter(x, y, s=18, color="0.65", label="sub-model", zorder=2)
        ax.plot(
            [x[i] for i in front],
            [y[i] for i in front],
            "-o",
            color="tab:red",
            markersize=5,
            label=f"Pareto frontier ({_legend(str(rows[0]['subnet']))})",
            zorder=3,
        )
        for i in front:
            ax.annotate(
                short_name(str(rows[i]["subnet"])),
                (x[i], y[i]),
                textcoords="offset points",
                xytext=(4, -9 if higher_is_better else 4),
                fontsize=7,
                color="tab:red",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _, c=cost: _tick(v, c)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(_AXIS.get(cost, cost) + " (log)")
        ax.set_ylabel(f"{metric} (%)" if metric == "accuracy" else metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if higher_is_better else "upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
