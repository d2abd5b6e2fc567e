"""Data-parallel gradients for nested training: one bucketed all-reduce per optimizer step, whatever ran.

An optimizer step runs `accumulate` micro-batches x K subnets, each with its own backward, and a depth subnet
leaves the layers it skips without gradient. DDP's reducer fits neither: it reduces after every backward
(K x accumulate reductions), and a backward that leaves parameters unused either fails
(`find_unused_parameters=False`), or costs a graph traversal per backward and, under `no_sync`
accumulation, reduces only what the *last* backward used, silently leaving the rest unsynchronised.

So the module keeps DDP's reducer off for its backwards (`reducer_off`) and calls `allreduce_gradients` once
per optimizer step, before clipping: every trainable parameter has a fixed place in a few flat buckets (the
layout depends on the parameter list only, so it is the same on every rank and no rank can wait for a
bucket another rank skips); a parameter without gradient sends zeros; each bucket carries one presence count
per parameter, so that a parameter that got no gradient on any rank (a layer every subnet of the step
skipped) gets `grad = None` back, and AdamW leaves it alone, exactly as in a single-process run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

BUCKET_BYTES = 32 * 2**20
reductions = 0  # all-reduce calls made by allreduce_gradients in this process (read by tests and benches)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_sharded(p: torch.Tensor) -> bool:
    """A DTensor parameter (FSDP2 / tensor parallel): its gradient is reduced by its own sharding."""
    return type(p).__name__ == "DTensor"


def needs_allreduce(strategy_model: Any) -> bool:
    """True when the strategy wraps the model in DDP (more than one process): its reducer is kept off and
    `allreduce_gradients` does the reduction instead.

    Sharded strategies (FSDP, FSDP2 via ModelParallelStrategy, DeepSpeed) reduce-scatter in each backward;
    their gradients must not be all-reduced again.
    """
    return isinstance(strategy_model, DistributedDataParallel) and world_size() > 1


@contextmanager
def reducer_off(strategy_model: Any) -> Iterator[None]:
    """DDP's reducer off for the backwards inside (`DistributedDataParallel.no_sync`); a no-op otherwise.

    Lightning runs a manual-optimization `training_step` inside the DDP wrapper's forward and sets
    `require_backward_grad_sync = True` again after each one, so switching it off once is not enough:
    `SortedNetModule.manual_backward` enters this around every backward.
    """
    with strategy_model.no_sync() if isinstance(strategy_model, DistributedDataParallel) else nullcontext():
        yield


def _buckets(params: list[torch.nn.Parameter], limit: int) -> Iterator[list[torch.nn.Parameter]]:
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if bucket and (size + nbytes > limit or p.dtype != bucket[0].dtype or p.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += nbytes
    if bucket:
        yield bucket


def allreduce_gradients(
    params: Iterable[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES, extra: torch.Tensor | None = None
) -> int:
    """Average the gradients of `params` over all ranks, one all_reduce per bucket; returns the calls made.

    Every rank must pass the same parameters in the same order (the model's `parameters()`). Parameters
    that no rank has a gradient for come back with `grad = None`; the others with the mean over ranks of
    their gradient (zero where a rank had none, as DDP does for unused parameters). `extra` (a small float
    tensor, e.g. the step's loss for logging) is averaged in place, in one of the buckets.
    """
    global reductions
    n = world_size()
    if n == 1:
        return 0
    params = [p for p in params if p.requires_grad and not is_sharded(p)]
    buckets = list(_buckets(params, bucket_bytes))
    # `extra` rides in the bucket of the widest float dtype (converted there and back): no call of its own
    carrier = max(range(len(buckets)), key=lambda i: buckets[i][0].element_size(), default=None)
    if extra is not None and carrier is None:
        buckets, carrier = [[]], 0
    for index, bucket in enumerate(buckets):
        sizes = [p.numel() for p in bucket]
        total, count = sum(sizes), len(bucket)
        ride = extra.numel() if extra is not None and index == carrier else 0
        like = bucket[0] if bucket else extra
        flat = torch.empty(total + count + ride, dtype=like.dtype, device=like.device)
        grads, present = flat[:total].split(sizes), flat[total : total + count]
        for i, (p, g) in enumerate(zip(bucket, grads, strict=True)):
            if p.grad is None:
                g.zero_()
                present[i] = 0
            else:
                g.copy_(p.grad.reshape(-1))
                present[i] = 1
        if ride:
            flat[total + count :].copy_(extra.reshape(-1))
        dist.all_reduce(flat)
        flat.div_(n)
        for p, g, used in zip(bucket, flat[:total].split(sizes), present.tolist(), strict=True):
            p.grad = g.view_as(p) if used > 0 else None
        if ride:
            extra.copy_(flat[total + count :].view_as(extra))
    reductions += len(buckets)
    return len(buckets)
