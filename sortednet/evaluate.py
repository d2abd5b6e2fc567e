"""Evaluate sub-models: the task metrics of each subnet on a dataloader, with its exact parameter count, and
(for `evaluate`) its FLOPs per sample and measured latency; the table kept in the checkpoint's metadata."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .many import ManyInOne
from .measure import batch_of, count_flops, one_sample, time_subnets, to_device
from .spec import Subnet
from .tasks import Task

# the direction of every metric a table can hold: True when higher is better
HIGHER_IS_BETTER = {"accuracy": True, "loss": False, "perplexity": False}
COST_KEYS = ("params", "flops", "latency_ms")


@torch.no_grad()
def evaluate_subnets(
    nested: ManyInOne,
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


def _device_of(nested: ManyInOne) -> torch.device:
    return next(nested.parameters()).device


@torch.no_grad()
def evaluate(
    nested: ManyInOne,
    batches: Sequence[Mapping[str, torch.Tensor]],
    task: Task,
    subnets: Sequence[Subnet | str],
    *,
    flops: bool = True,
    latency: bool = True,
    latency_batch_size: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    latency_threads: int | None = None,
    progress: Callable[[Subnet], None] | None = None,
    latency_progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per subnet, in the order given: subnet, params (exact), flops (per sample, one forward pass of
    the first validation example, counted by FlopCounterMode), latency_ms (median forward time of a batch of
    `latency_batch_size` on the model's device after `warmup` passes, `repeats` rounds interleaved over the
    subnets, with `latency_threads` CPU threads if given), and the task's metrics over `batches`.
    `batches` is read once per subnet (a list, or a re-iterable loader); they move to the model's device.
    `progress(subnet)` after each subnet's metrics, `latency_progress(round)` after each timing round."""
    if latency_batch_size < 1:
        raise ValueError(f"latency.batch_size={latency_batch_size} is below 1; allowed: an int >= 1")
    device = _device_of(nested)
    was_training = nested.training
    nested.eval()
    subnets = [nested.space.normalize(s) for s in subnets]
    rows: list[dict[str, Any]] = []
    first: dict[str, torch.Tensor] | None = None
    try:
        for subnet in subnets:
            sums: torch.Tensor | int = 0
            with nested.use(subnet):
                for batch in batches:
                    batch = to_device(batch, device)
                    first = first if first is not None else batch
                    sums = sums + task.stats(nested(**batch).logits, batch["labels"])
            if first is None:
                raise ValueError("the validation set gave no batches; nothing to evaluate")
            row: dict[str, Any] = {"subnet": str(subnet), "params": nested.num_params(subnet)}
            if flops:
                row["flops"] = count_flops(nested, subnet, one_sample(first))
            if latency:  # measured below, interleaved over all subnets
                row["latency_ms"] = row["latency_ok"] = None
            row.update(task.summarize(sums))  # type: ignore[arg-type]
            rows.append(row)
            if progress:
                progress(subnet)
        if latency and first is not None:
            inputs = batch_of(first, latency_batch_size)
            timings = time_subnets(
                nested, subnets, inputs, warmup, repeats, latency_threads, on_round=latency_progress
            )
            for row, timing in zip(rows, timings, strict=True):
                row["latency_ms"] = timing.ms
                row["latency_ok"] = timing.reliable
    finally:
        nested.train(was_training)
    return rows


def headline_metric(rows: Sequence[Mapping[str, Any]], metric: str | None = None) -> tuple[str, bool]:
    """The metric to rank by and whether higher is better: `metric` if given, else perplexity for language
    models (the tables that have it), else accuracy."""
    keys = set(rows[0]) if rows else set()
    if metric is None:
        metric = "perplexity" if "perplexity" in keys else "accuracy" if "accuracy" in keys else "loss"
    if metric not in keys or metric in ("subnet", "latency_ok", *COST_KEYS):
        allowed = [k for k in (rows[0] if rows else []) if k in HIGHER_IS_BETTER]
        raise ValueError(f"metric {metric!r} is not in the evaluation table; allowed: {', '.join(allowed)}")
    return metric, HIGHER_IS_BETTER.get(metric, False)
