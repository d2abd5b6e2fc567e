"""13. End to end, the headline of nested training: the training time `sortednet-train` needs until every chosen
sub-model reaches the validation accuracy its shape reaches trained alone / the training time of those shapes
trained alone one after another (each until it reaches its own final accuracy).

    python -m bench.time_to_quality --quick     # digits_vit, 3 shapes, 200 alone steps: minutes on an idle 2-core CPU
    python -m bench.time_to_quality             # the 6 shapes and the recipe's 600 steps

Configs come from bench/quality_cases.py (the recipe composed the same way, the same alone twins: same data order,
optimizer, schedule, steps and start), and both sides run `sortednet-train`'s own code in this process. The alone
runs go first: their final accuracies are the targets, and the nested run (allowed `--nested-factor` times the
alone steps, with the schedule of that length) stops at the first validation where every shape has reached its
target. Time is training time: validation (every `--every` steps on both sides) is left out of it. Nothing is
cached: the ratio is of two timings made under the same machine load.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import lightning as L

from . import quality as Q
from . import quality_cases as C
from .common import Result
from .quality_runs import train

RECIPE = "digits_vit"
SHAPES = [
    "depth=2,ffn=0.25,heads=2",
    "depth=2,ffn=1.0,heads=4",
    "depth=4,ffn=0.25,heads=4",
    "depth=4,ffn=0.5,heads=2",
    "depth=6,ffn=0.5,heads=4",
    "depth=6,ffn=1.0,heads=4",
]
QUICK_SHAPES = ["depth=2,ffn=0.25,heads=2", "depth=4,ffn=0.5,heads=4", "depth=6,ffn=1.0,heads=4"]
OUT = Q.OUT.parent / "time_to_quality"


class ValClock(L.Callback):
    """Training seconds (validation left out) and validation accuracies at each validation; with `targets`
    (subnet -> accuracy) it stops training once every subnet has reached its target."""

    runs: ClassVar[list[ValClock]] = []  # instances made by sortednet-train from the config, newest last
    targets: ClassVar[dict[str, float]] = {}

    def __init__(self) -> None:
        self.points: list[tuple[int, float, dict[str, float]]] = []
        self.train_s = 0.0
        ValClock.runs.append(self)

    def on_train_start(self, trainer, module) -> None:
        self._mark = time.perf_counter()

    def on_validation_start(self, trainer, module) -> None:
        self.train_s += time.perf_counter() - self._mark

    def on_validation_end(self, trainer, module) -> None:
        prefix = "val/accuracy/"
        accuracy = {
            k[len(prefix) :]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)
        }
        self.points.append((trainer.global_step, self.train_s, accuracy))
        if self.targets and all(accuracy.get(s, -1.0) >= t for s, t in self.targets.items()):
            trainer.should_stop = True
        self._mark = time.perf_counter()


def _timed_run(cfg: Any, every: int, log: Path) -> ValClock:
    cfg = C.edited(cfg)
    cfg.trainer.val_check_interval = every
    cfg.trainer.limit_val_batches = 1.0  # a twin of bench.quality validates only at the end
    cfg.callbacks.checkpoint.every_n_train_steps = int(cfg.trainer.max_steps)  # one checkpoint, at the end
    cfg.callbacks.clock = {"_target_": f"{__name__}.ValClock"}
    cfg.eval_table.enabled = False
    train(cfg, OUT, log, "accuracy")
    return ValClock.runs[-1]


def first_reach(points, subnet: str, target: float) -> tuple[float | None, int | None]:
    """Training seconds and step of the first validation at which `subnet` reached `target`."""
    for step, seconds, accuracy in points:
        if accuracy.get(subnet, -1.0) >= target:
            return seconds, step
    return None, None


def measure(quick: bool, every: int, nested_factor: float, steps: int | None) -> tuple[Result, list[str]]:
    from sortednet.train.config import check as check_config

    case = C.CASES[RECIPE]
    shapes = QUICK_SHAPES if quick else SHAPES
    base = C.compose(RECIPE, case.quick if quick else case.full)
    if steps:
        base.trainer.max_steps = steps
    alone_steps = int(base.trainer.max_steps)
    space = check_config(base).space
    subnets = [str(space.normalize(s)) for s in shapes]
    lines, targets, alone_s = [], {}, 0.0
    ValClock.targets = {}
    for shape, subnet in zip(shapes, subnets, strict=True):
        cfg = C.twin_config(base, shape, "accuracy")
        clock = _timed_run(cfg, every, OUT / "logs" / f"alone-{subnet}.log")
        final = clock.points[-1][2]
        (key,) = final  # the one subnet of the alone run's space
        targets[subnet] = final[key]
        seconds, step = first_reach(clock.points, key, final[key])
        alone_s += seconds
        lines.append(
            f"alone {subnet}: final accuracy {final[key]:.2%}, first reached at step {step}, {seconds:.1f} s of "
            f"{clock.train_s:.1f} s training"
        )
    nested_cfg = C.edited(base)
    nested_cfg.trainer.max_steps = int(math.ceil(nested_factor * alone_steps))
    nested_cfg.val.subnets = subnets
    ValClock.targets = targets
    try:
        clock = _timed_run(nested_cfg, every, OUT / "logs" / "nested.log")
    finally:
        ValClock.targets = {}
    reached = {s: first_reach(clock.points, s, t) for s, t in targets.items()}
    for subnet, (seconds, step) in reached.items():
        best = max(p[2].get(subnet, 0.0) for p in clock.points)
        text = (
            f"reached at step {step}, {seconds:.1f} s"
            if seconds is not None
            else f"not reached (best {best:.2%})"
        )
        lines.append(f"nested {subnet}: target {targets[subnet]:.2%}, {text}")
    missing = [s for s, (seconds, _) in reached.items() if seconds is None]
    nested_s = math.inf if missing else max(seconds for seconds, _ in reached.values())
    detail = (
        f"{RECIPE}, {len(shapes)} shapes, alone {alone_steps} steps each, nested up to {nested_cfg.trainer.max_steps} "
        f"steps ({len(space)} sub-models), validation every {every} steps (not timed); nested {nested_s:.1f} s "
        f"(stopped at step {clock.points[-1][0]}), alone one after another {alone_s:.1f} s"
    )
    ratio = nested_s / alone_s if alone_s else math.inf
    name = f"time to alone accuracy for every shape, nested / alone one after another ({RECIPE})"
    return Result(name, ratio, 1.0, detail=detail), lines


def run(quick: bool) -> list[Result]:
    Q.quiet(2)
    result, lines = measure(quick, every=20 if quick else 50, nested_factor=2.0, steps=None)
    result.detail += "; " + "; ".join(lines)
    return [result]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 shapes, 200 alone steps (minutes)")
    parser.add_argument("--every", type=int, default=20, help="validate every N training steps (both sides)")
    parser.add_argument("--nested-factor", type=float, default=2.0, help="nested step budget / alone steps")
    parser.add_argument("--steps", type=int, help="alone steps (default: the recipe's, or 200 with --quick)")
    args = parser.parse_args(argv)
    Q.quiet(2)
    result, lines = measure(args.quick, args.every, args.nested_factor, args.steps)
    print("\n".join(lines))
    print(result.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
