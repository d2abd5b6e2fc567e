"""sortednet-search: the best member of a checkpoint under each budget, found by evolutionary search over its space
(per-layer members included where the space allows them), scored by a cheap proxy first and, for the finalists,
by the real metric on the run's validation data.

    sortednet-search runs/digits_vit/<time> --max-params 60K,100K,150K
    sortednet-search run.safetensors --max-flops 2G --population 32 --generations 20 --export small/

Per budget: the uniform members that fit and random members start the population (sortednet.search); the proxy is
the KL divergence of a member's predictions from the largest member's on `--proxy-batches` validation batches.
The `--finalists` best by proxy and every uniform member that fits are evaluated for real; the best of them is the
budget's slice. Output in `--out` (default: <run>/search): search.md / search.csv (each budget: the searched
member against the best uniform member that fits, the evaluations it took), pareto.png, slices.csv (Gemma 3n's
slicing-config format, sortednet.slicing); the slices are also stored in the checkpoint (`--no-store`: not).
`search_state.json` after every generation: the same command resumes where a run stopped, and a seed gives the
same search.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .tools import Parser, check_out_dir, command, open_checkpoint, parse_amount, parse_ms, refuse_diverged

PROG = "sortednet-search"
KINDS = {"--max-params": "params", "--max-flops": "flops", "--max-latency-ms": "latency_ms"}


def parse_budgets(args: Any) -> tuple[str, list[float]]:
    given = [(flag, getattr(args, flag[2:].replace("-", "_"))) for flag in KINDS]
    given = [(flag, text) for flag, text in given if text is not None]
    if len(given) != 1:
        raise ValueError("give one budget kind: --max-params, --max-flops or --max-latency-ms (a comma list)")
    flag, text = given[0]
    parse = parse_ms if flag == "--max-latency-ms" else parse_amount
    return KINDS[flag], sorted(parse(flag, part) for part in str(text).split(",") if part.strip())


class Scorer:
    """Costs, proxy and real metric of members, each measured once (cached), on the run's validation batches."""

    def __init__(self, model: Any, task: Any, batches: list[dict], proxy_batches: int, kind: str) -> None:
        import torch

        from ..measure import one_sample

        self.model, self.task, self.batches, self.kind = model, task, batches, kind
        self.proxy_batches = batches[:proxy_batches]
        self.sample = one_sample(batches[0])
        with torch.no_grad(), model.use(model.space.largest):
            self.targets = [model(**_inputs(b)).logits for b in self.proxy_batches]
        self.costs: dict[str, float] = {}
        self.proxies: dict[str, float] = {}
        self.real: dict[str, dict[str, Any]] = {}

    def cost(self, member: Any) -> float:
        from ..measure import count_flops, measure_latency

        key = str(member)
        if key not in self.costs:
            if self.kind == "params":
                self.costs[key] = float(self.model.num_params(member))
            elif self.kind == "flops":
                self.costs[key] = float(count_flops(self.model, member, self.sample))
            else:
                self.costs[key] = measure_latency(self.model, member, self.sample, repeats=10)
        return self.costs[key]

    def proxy(self, member: Any) -> float:
        key = str(member)
        if key not in self.proxies:
            self.proxies[key] = self._proxy(member)
        return self.proxies[key]

    def _proxy(self, member: Any) -> float:
        import torch

        total = 0.0
        with torch.no_grad(), self.model.use(member):
            for batch, target in zip(self.proxy_batches, self.targets, strict=True):
                logits = self.model(**_inputs(batch)).logits
                total += float(self.task.distill(logits, target, batch["labels"], 1.0))
        return total / len(self.proxy_batches)

    def evaluate(self, members: Sequence[Any]) -> None:
        from ..evaluate import evaluate_subnets

        todo = [m for m in dict.fromkeys(str(m) for m in members) if m not in self.real]
        if todo:
            for row in evaluate_subnets(self.model, self.batches, self.task, todo):
                self.real[row["subnet"]] = {**row, self.kind: self.cost(row["subnet"])}


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def search(args: Any) -> dict[str, Any]:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..api import load
    from ..evaluate import headline_metric
    from ..search import Evolution, SearchOptions, spearman
    from ..tasks import task_for
    from .eval import pick_device
    from .run_data import build_data

    kind, limits = parse_budgets(args)
    options = SearchOptions(args.population, args.generations, args.mutation, args.finalists, args.seed)
    path, meta = open_checkpoint(args.ckpt)
    refuse_diverged(path, meta)
    out = Path(
        args.out or (path.parent.parent if path.parent.name == "checkpoints" else path.parent) / "search"
    )
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "search_state.json"
    settings = {"ckpt": str(path.resolve()), "kind": kind, "limits": limits, "options": vars(options),
                "proxy_batches": args.proxy_batches, "eval_batches": args.eval_batches}  # fmt: skip
    saved = json.loads(state_file.read_text()) if state_file.is_file() else {}
    state = saved.get("budgets", {}) if saved.get("settings") == settings else {}
    device = pick_device(args.device)
    model = load(path).to(device).eval()
    data, _ = build_data(meta)
    task = task_for(data.task)
    batches = [
        {k: v.to(device) for k, v in b.items()}
        for b in itertools.islice(data.val_dataloader(), args.eval_batches)
    ]
    if len(batches) < args.proxy_batches:
        raise ValueError(
            f"--proxy-batches {args.proxy_batches}: the validation data has {len(batches)} batches; allowed: fewer"
        )
    scorer = Scorer(model, task, batches, args.proxy_batches, kind)
    start = time.perf_counter()
    results = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with torch.no_grad(), Progress(*columns, transient=True) as bar:
        task_id = bar.add_task("search", total=len(limits) * (options.generations + 1))
        for limit in limits:
            key = f"{limit:g}"
            evolution = Evolution(model.space, scorer.cost, limit, scorer.proxy, options, state.get(key))
            bar.update(task_id, description=f"{kind} <= {key}: generation {evolution.generation}")
            evolution.start()
            while evolution.generation < options.generations:
                evolution.step()
                state[key] = evolution.state()
                state_file.write_text(json.dumps({"settings": settings, "budgets": state}))
                bar.update(
                    task_id, advance=1, description=f"{kind} <= {key}: generation {evolution.generation}"
                )
            finalists = evolution.finalists(options.finalists)
            uniform = [m for m in model.space.subnets() if scorer.cost(m) <= limit]
            scorer.evaluate([*finalists, *uniform])
            bar.update(task_id, advance=1 + options.generations - evolution.generation)
            results.append((limit, finalists, uniform, evolution))
    metric, higher = headline_metric(list(scorer.real.values()))
    sign = 1 if higher else -1
    rows = []
    for limit, finalists, uniform, evolution in results:
        best_uniform = max(
            (scorer.real[str(m)] for m in uniform), key=lambda r: sign * r[metric], default=None
        )
        candidates = [scorer.real[str(m)] for m in [*finalists, *uniform]]
        best = max(candidates, key=lambda r: (sign * r[metric], -r[kind]))
        rows.append({"limit": limit, "best": best, "uniform": best_uniform, "proxy_evaluations": evolution.evaluations,
                     "real_evaluations": len({str(m) for m in [*finalists, *uniform]})})  # fmt: skip
    measured = list(scorer.real.values())  # every member evaluated for real, each with its proxy too
    rho = spearman([-scorer.proxy(r["subnet"]) for r in measured], [sign * r[metric] for r in measured])
    return {"kind": kind, "metric": metric, "higher": higher, "rows": rows, "spearman": rho, "measured": len(measured),
            "seconds": time.perf_counter() - start, "out": out, "path": path, "model": model,
            "real": list(scorer.real.values())}  # fmt: skip


@command(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(prog=PROG, description="The best member of a checkpoint under each budget, by search.")
    parser.add_argument("ckpt", help="a sortednet .safetensors checkpoint or a run folder")
    parser.add_argument("--max-params", metavar="N[,N...]", help="parameter budgets, e.g. 60K,100K")
    parser.add_argument("--max-flops", metavar="N[,N...]", help="FLOPs per sample, e.g. 2G")
    parser.add_argument("--max-latency-ms", metavar="MS[,MS...]", help="measured latency budgets, e.g. 5")
    parser.add_argument("--population", type=int, default=24)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument(
        "--mutation", type=float, default=0.25, help="chance a size is redrawn (default 0.25)"
    )
    parser.add_argument("--finalists", type=int, default=5, help="evaluated for real per budget (default 5)")
    parser.add_argument("--proxy-batches", type=int, default=4, help="validation batches of the proxy")
    parser.add_argument("--eval-batches", type=int, default=None, help="validation batches (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--names", help="names of the slices, one per budget (default S-<budget>)")
    parser.add_argument("--out", help="output folder (default: <run>/search)")
    parser.add_argument("--no-store", action="store_true", help="do not store the slices in the checkpoint")
    parser.add_argument("--export", metavar="DIR", help="export each budget's member to DIR/<slice name>/")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.proxy_batches < 1:
        raise ValueError(f"--proxy-batches {args.proxy_batches} is below 1; allowed: an int >= 1")
    if args.export:
        check_out_dir(args.export)
    from .search_report import report

    report(search(args), args)


if __name__ == "__main__":
    main()
