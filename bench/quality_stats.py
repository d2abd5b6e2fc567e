"""The arithmetic of bench.quality, free of training: spreads over seeds, ratios and verdicts, the
equal-compute step count, passes to reach a target from validation curves, and whether the validation set
resolves the band."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

EQUAL_STEPS = {"accuracy": 0.98, "loss": 1.02}  # nested / alone at equal optimizer steps
EQUAL_COMPUTE = {"accuracy": 1.00, "loss": 1.00}  # nested / alone at equal forward/backward passes
BAND = 0.02  # the equal-step band, as a fraction of the alone metric
Z = 3.0  # the band must be at least Z standard errors of the metric


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation over seeds (std is None with one seed)."""

    mean: float
    std: float | None
    n: int


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("spread of no values")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Spread(statistics.fmean(values), std, len(values))


def higher_is_better(metric: str) -> bool:
    return metric == "accuracy"


def better(metric: str, a: float, b: float) -> bool:
    """Whether `a` is strictly better than `b`."""
    return a > b if higher_is_better(metric) else a < b


def ratio_of_means(nested: Spread, alone: Spread) -> float:
    return nested.mean / alone.mean


def meets(metric: str, ratio: float, target: float) -> bool:
    """accuracy: ratio >= target; loss (lower is better): ratio <= target."""
    return ratio >= target if higher_is_better(metric) else ratio <= target


TEACHER_FORWARD = 1 / 3  # a frozen teacher's forward on a nested step, in passes (no backward)


def equal_compute_steps(steps: int, n_twins: int, k: int, teacher_steps: int = 0) -> int:
    """Nested steps with as many forward/backward passes as all twins together: a twin step is 1 pass, a
    nested step k (its sampler's subnets per step); steps x n_twins / k, rounded, at least 1. A teacher
    phase (`train.distill.teacher=finetune`: the full model alone first, 1 pass a step) is paid first, and
    its frozen forward adds a third of a pass to every nested step: (steps x n_twins - teacher_steps) /
    (k + 1/3)."""
    if not teacher_steps:
        return max(1, round(steps * n_twins / k))
    return max(1, round((steps * n_twins - teacher_steps) / (k + TEACHER_FORWARD)))


# ---- validation curves ---------------------------------------------------------------------------------
Curve = list[tuple[int, float]]  # (training batches done, metric); passes = batches x subnets per step


def read_curves(text: str, metric: str, subnets: Iterable[str]) -> dict[str, Curve]:
    """Validation curves of `subnets` from Lightning's metrics.csv: columns `val/<metric>/<subnet>`. Lightning
    logs a validation at the index of the last training batch: a row's step + 1 is the batches done."""
    rows = list(csv.DictReader(io.StringIO(text)))
    curves: dict[str, Curve] = {}
    for subnet in subnets:
        key = f"val/{metric}/{subnet}"
        curves[subnet] = [(int(r["step"]) + 1, float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return curves


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """The mean over seeds at the steps every curve has."""
    common = set.intersection(*(set(s for s, _ in c) for c in curves)) if curves else set()
    by_step = [dict(c) for c in curves]
    return [(s, statistics.fmean(c[s] for c in by_step)) for s in sorted(common)]


def first_reach(curve: Curve, target: float, metric: str) -> int | None:
    """Batches done at the first point of `curve` at or better than `target`; None if none is."""
    for step, value in curve:
        if value >= target if higher_is_better(metric) else value <= target:
            return step
    return None


# ---- is the validation set large enough? -----------------------------------------------------------------
@dataclass(frozen=True)
class Resolution:
    """The equal-step band (BAND x the alone metric) against Z standard errors of the metric."""

    band: float
    se: float | None  # None: not computed
    needed: int | None = None  # validation size at which Z SE fit in the band (accuracy)

    @property
    def enough(self) -> bool | None:
        return None if self.se is None else self.band >= Z * self.se


def binomial_resolution(accuracy: float, n: int) -> Resolution:
    """Accuracy on n examples: SE = sqrt(p(1-p)/n) at the observed p."""
    p = min(max(accuracy, 1e-9), 1 - 1e-9)
    band = BAND * accuracy
    needed = math.ceil(Z**2 * p * (1 - p) / band**2)
    return Resolution(band, math.sqrt(p * (1 - p) / n), needed)


def batch_resolution(loss: float, batch_means: Sequence[float]) -> Resolution:
    """A loss from per-batch means: SE = their standard deviation / sqrt(batches) (an estimate: batches of
    contiguous text are not independent); not computed below 2 batches."""
    if len(batch_means) < 2:
        return Resolution(BAND * loss, None)
    return Resolution(BAND * loss, statistics.stdev(batch_means) / math.sqrt(len(batch_means)))
