"""Slicing configs: named sub-models for deployment, in the format of Gemma 3n's (google/gemma3n-slicing-configs,
read by the MatFormer Lab notebook and by mistral.rs `--matformer-config-path ... --matformer-slice-name`).

A CSV file, one row per slice: `name`, `# Layers`, `# Effective Params (B)`, the metric, `FFN Hidden Dims` (the FFN
width of every kept layer), `Layers Skipped` (indices of the full model), then sortednet's own columns `subnet` (its
exact spelling, heads and ranks included) and `params`. The same slices go into the checkpoint's header (`slices`),
so that `sortednet-export RUN --slice NAME` and `sn.load_submodel(path, NAME)` find them in the one file. A file
without the `subnet` column (Gemma's own) is read from its FFN widths and skipped layers.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .subnet import Subnet, shown

BASE = ["name", "# Layers", "# Effective Params (B)"]
TAIL = ["FFN Hidden Dims", "Layers Skipped", "subnet", "params"]


def slice_row(space: Any, name: str, member: Subnet | str, params: int, metric: str, value: float) -> dict:
    """One slice as the header stores it (and the CSV writes it)."""
    plan = space.plan(member)
    full = space.full["depth"]
    ffn = [layer.get("ffn", space.full.get("ffn")) for layer in plan.layers] or [space.full.get("ffn")] * full
    return {
        "name": name,
        "layers": len(plan.kept),
        "params": int(params),
        "metric": metric,
        "value": float(value),
        "ffn": [int(f) for f in ffn],
        "skipped": [i for i in range(full) if i not in plan.kept],
        "subnet": str(space.normalize(member)),
    }


def write_slices(path: str | Path, slices: Sequence[Mapping[str, Any]]) -> None:
    if not slices:
        raise ValueError("no slices to write")
    metric = slices[0]["metric"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow([*BASE, metric, *TAIL])
        for s in slices:
            value = f"{100 * s['value']:.2f}%" if metric == "accuracy" else f"{s['value']:.4g}"
            out.writerow(
                [s["name"], s["layers"], f"{s['params'] / 1e9:.6g}", value, json.dumps(s["ffn"]),
                 json.dumps(s["skipped"]) if s["skipped"] else "", s["subnet"], s["params"]]
            )  # fmt: skip


def _ints(text: str) -> list[int]:
    """'[2_048 * 4, 8192]' -> [8192, 8192]: Gemma's files write products."""
    out = []
    for part in filter(None, (p.strip() for p in text.strip().strip("[]").split(","))):
        value = 1
        for factor in part.split("*"):
            factor = factor.strip().replace("_", "")
            if not re.fullmatch(r"\d+", factor):
                raise ValueError(f"slicing config: {shown(text)} is not a list of integers")
            value *= int(factor)
        out.append(value)
    return out


def read_slices(path: str | Path) -> list[dict[str, str]]:
    """(name, subnet) of each row of a slicing-config CSV: sortednet's `subnet` column, or (Gemma's files) the
    FFN widths of the kept layers and the skipped layers, as absolute sizes."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"slicing config {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        name = (row.get("name") or "").strip()
        if row.get("subnet"):
            out.append({"name": name, "subnet": row["subnet"]})
            continue
        ffn, skipped = _ints(row.get("FFN Hidden Dims") or ""), set(_ints(row.get("Layers Skipped") or ""))
        layers = [i for i in range(len(ffn) + len(skipped)) if i not in skipped]
        out.append({"name": name, "subnet": str(Subnet(ffn=ffn, layers=layers))})
    return out


def find(slices: Iterable[Mapping[str, Any]], name: str) -> str:
    """The subnet of the slice called `name`; one line naming the slices otherwise."""
    slices = list(slices)
    for s in slices:
        if s["name"] == name:
            return str(s["subnet"])
    names = ", ".join(repr(s["name"]) for s in slices) or "none (run sortednet-search)"
    raise ValueError(f"slice {shown(name)} is not in the slicing config; its slices: {names}")
