"""Post-training BatchNorm calibration (US-Nets): a subnet's running statistics recomputed on training batches.

BatchNorm's running statistics are gathered while many subnets train; they fit none of them. `calibrate`
runs a subnet on N training batches with every BatchNorm normalising by the batch's statistics and folding
them into a cumulative average (BatchNorm's `momentum=None`), and keeps the result for that subnet in
`nested.bn_stats`: `use(subnet)` in eval reads them, `extract`, `save` and `load_submodel` carry them. The
weights and the shared running statistics are not changed.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .measure import model_inputs, to_device
from .spec import Subnet

DEFAULT_BATCHES = 20


def needs_calibration(nested: Any) -> bool:
    """True for a nested model with BatchNorm (its subnets need calibrated statistics to be evaluated)."""
    return bool(getattr(nested, "batch_norms", None))


@torch.no_grad()
def calibrate(
    nested: Any, subnet: Subnet | str, loader: Iterable[Mapping[str, Any]], batches: int = DEFAULT_BATCHES
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Recompute the BatchNorm statistics of `subnet` on the first `batches` batches of `loader` (labels are
    ignored); returns them and keeps them in `nested.bn_stats[subnet]`. A model without BatchNorm (ConvNeXt,
    Swin, any transformer) has nothing to calibrate: it is left as it is, said once per model, as torch's
    `update_bn` does quietly."""
    if not needs_calibration(nested):
        if not getattr(nested, "_said_no_batchnorm", False):
            warnings.warn(
                f"calibrate(): {type(getattr(nested, 'model', nested)).__name__} has no BatchNorm; nothing to "
                "calibrate, the model is unchanged",
                stacklevel=2,
            )
            nested.__dict__["_said_no_batchnorm"] = True
        return {}
    if batches < 1:
        raise ValueError(f"calibration batches={batches} is below 1; allowed: an int >= 1")
    normal = nested.space.normalize(Subnet.parse(subnet))
    device = next(nested.parameters()).device
    was_training = nested.model.training
    nested.eval()
    norms = [bn for _, bn in nested.batch_norms]
    for bn in norms:
        bn.calibrating = [None, None, 0]
    seen = 0
    try:
        with nested.use(normal):
            for batch in itertools.islice(loader, batches):
                nested(**to_device(model_inputs(batch), device))
                seen += 1
        if seen == 0:
            raise ValueError("calibrate(): the loader gave no batches")
        stats = {
            name: (bn.calibrating[0], bn.calibrating[1])
            for name, bn in nested.batch_norms
            if bn.calibrating[0] is not None
        }
    finally:
        for bn in norms:
            bn.calibrating = None
        nested.train(was_training)
    nested.bn_stats[normal] = stats
    nested.activate(nested.active)
    return stats


def calibrate_subnets(
    nested: Any,
    subnets: Sequence[Subnet | str],
    loader: Any,
    batches: int = DEFAULT_BATCHES,
    progress: Callable[[int], None] | None = None,
) -> None:
    """`calibrate` each subnet on the same first `batches` batches of `loader` (read once); `progress(1)` after
    each."""
    cached = list(itertools.islice(loader, batches))
    for subnet in subnets:
        calibrate(nested, subnet, cached, batches)
        if progress:
            progress(1)


def with_uncalibrated(
    rows: Sequence[Mapping[str, Any]], uncalibrated: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The calibrated table with each metric before calibration beside it (`<metric>_uncalibrated`)."""
    before = {r["subnet"]: r for r in uncalibrated}
    out = []
    for row in rows:
        extra = {
            f"{k}_uncalibrated": v
            for k, v in before[row["subnet"]].items()
            if k not in ("subnet", "params") and isinstance(v, (int, float))
        }
        out.append({**row, **extra})
    return out
