"""Run every benchmark, print a summary table and write it to bench/out/results.md.

python -m bench.run_all            # the real run (`make bench`): 5-10 minutes on 2 cores for 1-12, plus
                                   # compiling (12) and the end-to-end training runs of 13 (an hour or more)
python -m bench.run_all --quick    # tiny sizes and few repeats: only checks that the scripts run
python -m bench.run_all --only switching enumeration
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
from pathlib import Path

from .common import BUSY, THREADS, Result, setup

BENCHMARKS = {
    "nesting_tax": "1. nesting tax (full-size nested train step / un-nested)",
    "subnet_train": "2. subnet train step / dense model of that shape",
    "subnet_forward": "3. subnet forward under use() / extracted model",
    "switching": "4. activate(): time and allocations",
    "enumeration": "5. space enumeration and sampling",
    "checkpoint_size": "6. one-file checkpoint size / save_pretrained",
    "submodel_memory": "7. load_submodel peak memory / subnet weights",
    "rank": "8. rank-r subnet forward / two-layer model; params and latency across ranks",
    "bench_ddp": "9. data parallel: nested DDP step / plain Lightning DDP (2 processes)",
    "grad_slices": "10. subnet train step / dense: autograd slices + AdamW vs slice-aware grads + fused AdamW",
    "sandwich_step": "11. sandwich step (largest + smallest + random, one optimizer step) / three dense steps",
    "compiled_step": "12. train.compile: compiled / eager step, graphs compiled over 100 sandwich steps",
    "time_to_quality": "13. end to end: time to every shape's alone accuracy, nested / alone one after another",
    "cnn": "14. ResNet: nesting tax of a train step; 0.5-width subnet forward / extracted model",
    "stitch_forward": "15. stitch forward under use() / the same blocks as one plain model",
    "api_step": "16. Python API: subnet train step with sn.optimizer / dense model with fused AdamW",
}
OUT = Path(__file__).parent / "out" / "results.md"


def table(results: list[Result]) -> list[list[str]]:
    return [[r.benchmark, r.measured(), r.target_text(), r.status] for r in results]


def print_table(rows: list[list[str]]) -> None:
    head = ["benchmark", "measured", "target", "result"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for row in [head, None, *rows]:
        print(line if row is None else "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(line)


def markdown(results: list[Result], header: str) -> str:
    lines = [
        f"# sortednet benchmarks\n\n{header}\n",
        "| benchmark | measured | target | result |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in table(results)]
    if any(r.busy for r in results):
        lines += [
            "",
            f"NOT MEASURED (busy): CPU utilisation under {BUSY:.0%} while timed, twice: other processes took "
            "the cores; the figure is not a measurement.",
        ]
    lines += ["", "## Details", ""]
    lines += [
        f"- **{r.benchmark}**: {r.detail.replace(chr(10) + '     ', '; ')}" for r in results if r.detail
    ]
    return "\n".join(lines) + "\n"


def run_one(name: str, title: str, quick: bool) -> list[Result]:
    print(title, flush=True)
    t0 = time.perf_counter()
    results = []
    for result in importlib.import_module(f".{name}", __package__).run(quick):
        result.module = name
        print(result.line(), flush=True)
        results.append(result)
    print(f"  ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, few repeats (checks the scripts run)"
    )
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    setup()

    import torch
    import transformers

    header = (
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {'QUICK (not meaningful)' if args.quick else 'full run'}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python "
        f"{platform.python_version()}, {THREADS} threads, {platform.processor() or platform.machine()}"
    )
    print(f"sortednet benchmarks: {header}\n", flush=True)
    results: list[Result] = []
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    for name, title in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        results += run_one(name, title, args.quick)
    busy = list(dict.fromkeys(r.module for r in results if r.busy))
    for name in busy:  # timed while other processes took the cores: once more, at the end
        print(f"re-timing {name}: the machine was busy the first time", flush=True)
        again = run_one(name, BENCHMARKS[name], args.quick)
        results = [r for r in results if r.module != name] + again
    load = f"1-min load average at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f}"
    header += f"; {load}"
    print(f"summary ({time.perf_counter() - start:.0f} s in all; {load})")
    print_table(table(results))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(markdown(results, header))
    print(f"written to {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    if any(r.busy for r in results):
        print(
            f"NOT MEASURED (busy): CPU utilisation under {BUSY:.0%} while timed, twice; rerun when the machine is idle"
        )
    misses = [r for r in results if r.status == "MISS"]
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "MISS", "info", "NOT MEASURED (busy)")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" ({len(results)} rows)")
    return 1 if args.strict and misses else 0


if __name__ == "__main__":
    sys.exit(main())
