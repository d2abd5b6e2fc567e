"""BatchNorm calibration for the CLI tools: the subnets a tool evaluates or exports get their statistics from the
run's own training data (its train_config.data) unless the checkpoint already stores them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bn_calibration import calibrate_subnets, needs_calibration
from ..checkpoint import run_metadata
from ..spec import Subnet
from .run_data import build_data


def calibrate_missing(
    nested: Any,
    subnets: Sequence[Subnet | str],
    meta: Mapping[str, Any],
    batches: int,
    data: Any = None,
) -> list[Subnet]:
    """Calibrate the subnets whose statistics the checkpoint lacks; returns them (empty: nothing to do)."""
    if not needs_calibration(nested):
        return []
    missing = [s for s in (nested.space.normalize(x) for x in subnets) if s not in nested.bn_stats]
    if not missing:
        return []
    if data is None:
        data, _ = build_data(meta)
    data.setup("fit")
    calibrate_subnets(nested, missing, data.train_dataloader(), batches)
    return missing


def store(nested: Any, path: str | Path, **extra: Any) -> None:
    """Rewrite the one-file checkpoint with the nested model's calibrated statistics (weights unchanged)."""
    nested.to("cpu")
    nested.save(path, metadata={**run_metadata(path), **extra})
