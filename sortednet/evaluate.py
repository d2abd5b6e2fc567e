"""Evaluate sub-models: the task metrics of each subnet on a dataloader, with its exact parameter count."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from .nest import NestedModel
from .spec import Subnet
from .train.tasks import Task


@torch.no_grad()
def evaluate_subnets(
    nested: NestedModel,
    batches: Iterable[dict[str, torch.Tensor]],
    task: Task,
    subnets: Sequence[Subnet | str] | None = None,
    progress: Callable[[Subnet], None] | None = None,
) -> list[dict[str, object]]:
    """One row per subnet: subnet, params and the task's metrics. Each batch runs every subnet once."""
    subnets = [nested.space.normalize(s) for s in (subnets or nested.space.subnets())]
    was_training = nested.training
    nested.eval()
    sums: dict[Subnet, torch.Tensor] = {}
    try:
        for batch in batches:
            labels = batch["labels"]
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            for subnet in subnets:
                with nested.use(subnet):
                    stats = task.stats(nested(**inputs).logits, labels)
                sums[subnet] = sums.get(subnet, 0) + stats
    finally:
        nested.train(was_training)
    rows = []
    for subnet in subnets:
        rows.append(
            {"subnet": str(subnet), "params": nested.num_params(subnet), **task.summarize(sums[subnet])}
        )
        if progress:
            progress(subnet)
    return rows
