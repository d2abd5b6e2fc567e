"""Slice-aware gradients: the gradient of a sliced weight `W[o0:o1, :i]` is added into `W.grad[o0:o1, :i]`.

Through autograd, a slice's gradient (`SliceBackward`) is a full-size tensor of zeros with the slice's gradient
copied in, made at every backward and then added to `.grad` (a second full-size pass). Here the sliced
projections (`linear`) and embeddings (`embedding`) run as custom autograd functions that compute the slice's
gradient and add it into `param.grad[slice]` in place. The first backward of an optimizer step that reaches a
parameter allocates `param.grad` once, at full size (AdamW, clipping and the all-reduce read full tensors): the
slice is written straight into it (`addmm_` with beta 0) and only the rest is zeroed. Later backwards of the
step (more subnets, more micro-batches) add into the same tensor, so accumulation costs no full-size pass.

A parameter no subnet touched keeps `grad=None`. The functions return no gradient for the parameter, so
autograd's own accumulation and the hooks on it do not run for sliced weights: sortednet's DDP reduction reads
`.grad` once per step, and FSDP2 reads the unsharded parameter's `.grad` after each unit's backward, so both
see these gradients (tests/test_ddp.py, tests/test_fsdp.py). The autograd path is kept, and taken, for a weight
that is not a trainable leaf (frozen, computed, or a DTensor as under tensor parallelism), under double
backward, and everywhere while `slice_aware_grads(False)` is on (tests and benchmarks compare the two).
Under torch.compile (`train.compile`) the autograd path is taken too: writing `param.grad` from a backward is a
side effect dynamo refuses to trace ("HOP: Unsafe side effect"), and inside a compiled graph inductor fuses the
slice gradient's zero fill with its neighbours instead.

Under autocast the functions cast as autocast would (floating inputs but float64 to the autocast dtype), compute
in that dtype, and add the result into the parameter's own-dtype gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_enabled = True


def set_slice_aware_grads(enabled: bool) -> bool:
    """Turn the in-place slice gradients on or off (off: autograd's own path); returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


@contextmanager
def slice_aware_grads(enabled: bool = True) -> Iterator[None]:
    """`with slice_aware_grads(False):` runs the plain autograd path (for comparisons)."""
    previous = set_slice_aware_grads(enabled)
    try:
        yield
    finally:
        set_slice_aware_grads(previous)


def _custom(weight: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """The in-place path applies: on, grad mode, not under torch.compile, and every parameter a plain trainable
    (or frozen) leaf."""
    if not (_enabled and torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling():
        return False
    return all(
        t is None or (t.is_leaf and type(t) in (torch.Tensor, torch.nn.Parameter)) for t in (weight, *others)
    )


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    if t is None or dtype is None or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
        return t
    return t.to(dtype)


def _complement_zero(grad: torch.Tensor, box: tuple[slice, ...]) -> None:
    """Zero everything of `grad` outside `box` (a slice per leading dimension, one or two)."""
    rows = box[0]
    grad[: rows.start].zero_()
    grad[rows.stop :].zero_()
    if len(box) == 2:
        cols = box[1]
        grad[rows, : cols.start].zero_()
        grad[rows, cols.stop :].zero_()


def _fresh_grad(param: torch.Tensor, box: tuple[slice, ...]) -> torch.Tensor:
    grad = torch.empty_like(param, memory_format=torch.preserve_format)
    _complement_zero(grad, box)
    param.grad = grad
    return grad


def add_matmul(param: torch.Tensor, box: tuple[slice, slice], a: torch.Tensor, b: torch.Tensor) -> None:
    """`param.grad[box] += a @ b`, allocating `param.grad` (full size) on the first call of a step."""
    grad = param.grad
    fresh = grad is None
    if fresh:
        grad = _fresh_grad(param, box)
    target = grad[box]
    if a.dtype == grad.dtype:
        target.addmm_(a, b, beta=0 if fresh else 1)
    elif fresh:
        target.copy_(a @ b)
    else:
        target.add_(a @ b)


def add_into(param: torch.Tensor, box: tuple[slice, ...], value: torch.Tensor) -> None:
    """`param.grad[box] += value`, allocating `param.grad` (full size) on the first call of a step."""
    if param.grad is None:
        _fresh_grad(param, box)[box].copy_(value)
    else:
        param.grad[box].add_(value)


def _weight_box(start: int, stop: int, width: int, transposed: bool) -> tuple[slice, slice]:
    """Where the used weight lies: rows start:stop, columns :width (Conv1D stores (in, out): transposed)."""
    return (slice(0, width), slice(start, stop)) if transposed else (slice(start, stop), slice(0, width))


def reference_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, stop: int, transposed: bool
) -> torch.Tensor:
    """The autograd path: `x W[start:stop, :i]^T + b[start:stop]` on views (Conv1D: `x W[:i, start:stop] + b`)."""
    width, out = x.shape[-1], stop - start
    b = None if bias is None else bias[start:stop]
    w = weight[_weight_box(start, stop, width, transposed)]
    if transposed:
        flat = x.reshape(-1, width)
        y = flat @ w if b is None else torch.addmm(b, flat, w)
        return y.view(*x.shape[:-1], out)
    return F.linear(x, w, b)


class _SlicedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, start: int, stop: int, transposed: bool):  # type: ignore[override]
        dtype, width = _autocast_dtype(x), x.shape[-1]
        ctx.weight, ctx.bias, ctx.range, ctx.transposed = weight, bias, (start, stop), transposed
        x_c = _cast(x, dtype)
        w_c = _cast(weight[_weight_box(start, stop, width, transposed)], dtype)
        b_c = None if bias is None else _cast(bias[start:stop], dtype)
        ctx.save_for_backward(x_c, w_c)
        with torch.autocast(x.device.type, enabled=False):
            if not transposed:
                return F.linear(x_c, w_c, b_c)
            flat = x_c.reshape(-1, width)
            y = flat @ w_c if b_c is None else torch.addmm(b_c, flat, w_c)
            return y.view(*x.shape[:-1], stop - start)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w = ctx.saved_tensors
        start, stop = ctx.range
        width = x.shape[-1]
        with torch.autocast(grad_out.device.type, enabled=False):
            gy = grad_out.reshape(-1, stop - start).to(w.dtype)
            flat = x.reshape(-1, width)
            gx = None
            if ctx.needs_input_grad[0]:
                gx = (gy @ w.t() if ctx.transposed else gy @ w).view(x.shape)
            if ctx.needs_input_grad[1]:
                box = _weight_box(start, stop, width, ctx.transposed)
                a, b = (flat.t(), gy) if ctx.transposed else (gy.t(), flat)
                add_matmul(ctx.weight, box, a, b)
            if ctx.bias is not None and ctx.needs_input_grad[2]:
                add_into(ctx.bias, (slice(start, stop),), gy.sum(0))
        return gx, None, None, None, None, None


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    start: int,
    stop: int,
    transposed: bool = False,
) -> torch.Tensor:
    """`x W[start:stop, :i]^T + b[start:stop]` with `i = x.shape[-1]` (`transposed`: GPT-2's Conv1D layout,
    `x W[:i, start:stop] + b[start:stop]`); the weight's gradient goes into `weight.grad[start:stop, :i]`."""
    if _custom(weight, bias):
        return _SlicedLinear.apply(x, weight, bias, start, stop, transposed)
    return reference_linear(x, weight, bias, start, stop, transposed)


class _SlicedEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, width: int, padding_idx: int | None):  # type: ignore[override]
        ctx.weight, ctx.width, ctx.padding_idx = weight, width, padding_idx
        ctx.save_for_backward(ids)
        return F.embedding(ids, weight[:, :width], padding_idx)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        weight, width = ctx.weight, ctx.width
        pad = -1 if ctx.padding_idx is None else ctx.padding_idx
        # the kernel autograd runs for F.embedding, at the used width: (vocab, width), no full-size fill
        g = torch.ops.aten.embedding_dense_backward(grad_out, ids, weight.shape[0], pad, False)
        add_into(weight, (slice(0, weight.shape[0]), slice(0, width)), g)
        return None, None, None, None


def embedding(ids: torch.Tensor, base: torch.nn.Embedding, width: int) -> torch.Tensor:
    """`base(ids)[..., :width]` reading only `base.weight[:, :width]`; its gradient goes into `.grad[:, :width]`."""
    weight = base.weight
    if _custom(weight) and base.max_norm is None and not base.scale_grad_by_freq and not base.sparse:
        return _SlicedEmbedding.apply(ids, weight, width, base.padding_idx)
    return F.embedding(
        ids,
        weight[:, :width],
        base.padding_idx,
        base.max_norm,
        base.norm_type,
        base.scale_grad_by_freq,
        base.sparse,
    )
