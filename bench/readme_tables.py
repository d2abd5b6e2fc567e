"""Regenerate the README's tables from one run of the default job, so that every figure there is this output.

    python -m bench.readme_tables            # about 3 minutes on 2 cores: train, evaluate, select, rewrite README.md
    python -m bench.readme_tables --check    # the same run, README.md left as it is: print what would change

One run of `sortednet-train` (the default job, as `make train` runs it), `sortednet-eval` on its checkpoint
(batch-1 latency on one thread, 30 repeats) and `sortednet-select --max-params 60K`; the blocks between the
README's `<!-- readme:NAME -->` and `<!-- /readme:NAME -->` markers are replaced by what they printed, and
docs/pareto_digits_vit.png by the run's plot.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "COLUMNS": "120"}
EVAL = ["latency.threads=1", "latency.repeats=30"]
BUDGET = "60K"


def command(name: str, *args: str) -> tuple[str, float]:
    """Run a sortednet command; its stdout and wall seconds (a failure stops the script with its stderr)."""
    start = time.perf_counter()
    result = subprocess.run([str(BIN / name), *args], env=ENV, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{name} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout, time.perf_counter() - start


def table_of(output: str) -> str:
    """The rich table `sortednet-train` prints at the end of a run (title line to bottom border)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "every sub-model on the validation set" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    return "\n".join(lines[start : end + 1])


def accuracy_range(table: str) -> tuple[float, float]:
    values = [float(v) for v in re.findall(r"([\d.]+)%", table)]
    return min(values), max(values)


def blocks(run_dir: Path) -> dict[str, str]:
    """Every README block, from one training run and the tools run on it."""
    today = f"{datetime.date.today():%Y-%m-%d}"
    out, wall = command("sortednet-train", f"hydra.run.dir={run_dir}")
    train_table = table_of(out)
    low, high = accuracy_range(train_table)
    _, eval_wall = command("sortednet-eval", f"ckpt={run_dir}", *EVAL)
    eval_table = (run_dir / "eval" / "table.md").read_text().strip()
    picked, _ = command("sortednet-select", str(run_dir), "--max-params", BUDGET)
    lines = picked.strip().splitlines()
    choice = f"{lines[-1]} ({lines[0]})"
    return {
        "train": (
            f"### `make train` (its output on {today}, 2 CPU cores, {wall:.0f} s wall including start-up; "
            "`python -m bench.readme_tables` reruns it and rewrites this section)\n\n"
            f"```\n{train_table}\n```\n\n"
            f"Every sub-model of one model classifies the held-out digit images at {low:.1f}-{high:.1f}%."
        ),
        "eval": (
            f"On that checkpoint, `sortednet-eval ckpt=<run> {' '.join(EVAL)}` (batch 1, 2 CPU cores, "
            f"{eval_wall:.0f} s for all of them):\n\n{eval_table}\n\n"
            "![accuracy against parameters and latency, Pareto frontier in red](docs/pareto_digits_vit.png)\n\n"
            f"`sortednet-select <run> --max-params {BUDGET}`: {choice}"
        ),
    }


def rewrite(text: str, new: dict[str, str]) -> str:
    for name, body in new.items():
        pattern = re.compile(rf"(<!-- readme:{name} -->\n).*?(\n<!-- /readme:{name} -->)", re.S)
        if not pattern.search(text):
            sys.exit(f"README.md has no <!-- readme:{name} --> ... <!-- /readme:{name} --> block")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="print the new blocks, leave README.md as it is")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        new = blocks(Path(tmp) / "run")
        if args.check:
            print("\n\n".join(f"[{name}]\n{body}" for name, body in new.items()))
            return 0
        shutil.copyfile(Path(tmp) / "run" / "eval" / "pareto.png", ROOT / "docs" / "pareto_digits_vit.png")
    README.write_text(rewrite(README.read_text(), new))
    print(f"rewrote {', '.join(new)} in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
