"""The costs a sampler draws by when they are not parameter counts (`sampler.cost`: flops or latency), measured
once the model is built, before training: every member on one training example, the same on every rank for
FLOPs (a count, not a timing)."""

from __future__ import annotations

import time
from typing import Any

from ..data.loader import first_batches
from ..many import ManyInOne
from ..measure import count_flops, measure_latencies, one_sample
from ..report import human
from ..sampling import Sampler
from .console import say


def measure_costs(nested: ManyInOne, sampler: Sampler, data: Any) -> None:
    """`sampler.set_costs(...)` with every member's FLOPs per sample or median latency (ms, one example, on the
    device the model is on when built); nothing for `cost=params`."""
    if sampler.cost == "params":
        return
    start = time.perf_counter()
    sample = one_sample(first_batches(data, 1)[0])
    members = nested.space.subnets()
    was_training = nested.training
    nested.eval()
    try:
        if sampler.cost == "flops":
            values = [float(count_flops(nested, m, sample)) for m in members]
        else:
            values = measure_latencies(nested, members, sample, warmup=2, repeats=5)
    finally:
        nested.train(was_training)
    sampler.set_costs(dict(zip(members, values, strict=True)))
    show = (lambda v: f"{human(v)} FLOPs") if sampler.cost == "flops" else (lambda v: f"{v:.3g} ms")
    groups = getattr(sampler, "grouped", None) or getattr(sampler, "strata", None) or []
    say(
        f"sampler.cost={sampler.cost}: {show(min(values))} to {show(max(values))} over "
        f"{len(members)} members, {len(groups)} groups, measured in {time.perf_counter() - start:.1f} s"
    )
