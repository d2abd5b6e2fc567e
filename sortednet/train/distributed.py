"""One gradient reduction per optimizer step, whatever subnets ran.

Every rank trains the same subnets (samplers are seeded by step, never by rank), so the parameters that
got no gradient (layers a depth subnet skipped) are the same everywhere and are left out. The rest are
flattened into buckets and all-reduced (averaged) once per optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

BUCKET_BYTES = 32 * 2**20
reductions = 0  # all-reduce calls made by this process (read by the tests)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _buckets(grads: list[torch.Tensor], limit: int) -> Iterable[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        if bucket and (size + g.numel() * g.element_size() > limit or g.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    if bucket:
        yield bucket


def allreduce_gradients(params: Iterable[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
    global reductions
    n = world_size()
    if n == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads, bucket_bytes):
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        reductions += 1
        flat /= n
        for g, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
            g.copy_(reduced)
