"""What sortednet-search writes and prints: the table of budgets, the Pareto plot, the slicing config (and the
slices in the checkpoint's header), exports."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..report import human


def _shown(metric: str, value: float) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4g}"


def table(result: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    metric, kind, higher = result["metric"], result["kind"], result["higher"]
    rows = []
    for name, row in zip(names, result["rows"], strict=True):
        best, uniform = row["best"], row["uniform"]
        gain = (best[metric] - uniform[metric]) * (1 if higher else -1) if uniform else None
        rows.append({
            "slice": name,
            f"{kind} budget": human(row["limit"]) if kind != "latency_ms" else f"{row['limit']:.3g} ms",
            "searched": best["subnet"],
            f"searched {kind}": human(best[kind]),
            f"searched {metric}": _shown(metric, best[metric]),
            "best uniform": uniform["subnet"] if uniform else "none fits",
            f"uniform {metric}": _shown(metric, uniform[metric]) if uniform else "-",
            "gain": "-" if gain is None else (f"{100 * gain:+.2f} pts" if metric == "accuracy" else f"{gain:+.4g}"),
            "proxy evals": row["proxy_evaluations"],
            "real evals": row["real_evaluations"],
        })  # fmt: skip
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, kind = result["metric"], result["kind"]
    uniform = [r for r in result["real"] if "[" not in r["subnet"] and "layers=" not in r["subnet"]]
    mixed = [r for r in result["real"] if r not in uniform]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r[kind] for r in uniform], [r[metric] for r in uniform], s=14, c="grey", label="uniform")
    ax.scatter([r[kind] for r in mixed], [r[metric] for r in mixed], s=14, c="tab:blue", label="per layer")
    best = [row["best"] for row in result["rows"]]
    ax.scatter(
        [r[kind] for r in best], [r[metric] for r in best], s=60, c="tab:red", marker="*", label="searched"
    )
    for row in result["rows"]:
        ax.axvline(row["limit"], color="tab:red", lw=0.5, ls=":")
    ax.set_xlabel(kind)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(result: dict[str, Any], args: Any) -> None:
    from ..checkpoint import update_metadata
    from ..report import print_table
    from ..slicing import slice_row, write_slices
    from .export import export_subnet
    from .export import report as export_report

    out, path, model = result["out"], result["path"], result["model"]
    names = args.names.split(",") if args.names else [f"S-{human(r['limit'])}" for r in result["rows"]]
    if len(names) != len(result["rows"]):
        raise ValueError(
            f"--names gives {len(names)} names for {len(result['rows'])} budgets; give one per budget"
        )
    rows = table(result, names)
    print_table(rows, title=f"best member per {result['kind']} budget", metric="searched " + result["metric"])
    print(
        f"proxy (KL to the largest) vs {result['metric']}: Spearman {result['spearman']:.3f} over the "
        f"{result['measured']} members evaluated for real; {result['seconds']:.0f} s"
    )
    with open(out / "search.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    (out / "search.md").write_text(
        head + "".join("| " + " | ".join(map(str, r.values())) + " |\n" for r in rows)
    )
    plot(result, out / "pareto.png")
    slices = [
        slice_row(model.space, name, row["best"]["subnet"], model.num_params(row["best"]["subnet"]),
                  result["metric"], row["best"][result["metric"]])
        for name, row in zip(names, result["rows"], strict=True)
    ]  # fmt: skip
    write_slices(out / "slices.csv", slices)
    if not args.no_store:
        update_metadata(path, slices=slices)
    print(f"written to {out}/: search.md, search.csv, pareto.png, slices.csv" + ("" if args.no_store else
          f"; the slices are in {path.name} (sortednet-export {path} --slice {names[0]})"))  # fmt: skip
    for name, row in zip(names, result["rows"], strict=True) if args.export else []:
        try:
            info = export_subnet(path, row["best"]["subnet"], Path(args.export) / name)
            export_report(info, Path(args.export) / name)
        except ValueError as err:
            print(f"{name}: not exported: {err}")
