"""Tables of sub-models: printed with rich, written as CSV and Markdown."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _cell(key: str, value: Any) -> str:
    if key == "params":
        return human(value)
    if key == "accuracy":
        return f"{100 * value:.2f}%"
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


def print_table(rows: Sequence[dict[str, Any]], title: str = "", metric: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title)
    keys = list(rows[0])
    for key in keys:
        table.add_column(
            key, justify="left" if key == "subnet" else "right", style="bold" if key == metric else None
        )
    for row in rows:
        table.add_row(*(_cell(k, row[k]) for k in keys))
    Console().print(table)
